//! The conformance harness shared by every backend.
//!
//! One table of cases ([`cases`]) runs on any [`Backend`]: fresh random inputs per case, output
//! buffers poisoned with NaN before each run, results compared with the definition evaluated in
//! f64 ([`naive`]). A backend's error must stay within twice the error that the same
//! computation makes at the backend's storage precision (the FlashAttention rule), plus a small
//! absolute term; NaN never passes, and elements outside the plan's view must keep their poison.
//! A backend that cannot run a case says why and the case counts as skipped.
//!
//! A backend gets the whole suite with one line: `conformance!(name, Constructor::new);`.

#![allow(dead_code)]

pub mod naive;

use naive::{Inputs, Precision};
use sigmoid_attn::{
    Backend, BackwardArgs, Bias, DType, Error, HostTensor, Layout, Lengths, Plan, Problem,
    SigmoidMode, Strides, TensorStrides,
};
use std::io::Write as _;

/// splitmix64: small, seedable, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
    pub fn tensor(&mut self, dtype: DType, len: usize) -> HostTensor {
        let v: Vec<f64> = (0..len).map(|_| self.normal()).collect();
        HostTensor::from_f64(dtype, &v)
    }
    /// Q, K, V and dO of `plan`, drawn in that order.
    pub fn attention_inputs(&mut self, plan: &Plan, dtype: DType) -> [HostTensor; 4] {
        [
            plan.q_elems(),
            plan.k_elems(),
            plan.v_elems(),
            plan.o_elems(),
        ]
        .map(|len| self.tensor(dtype, len))
    }
}

/// A seed that differs per case and per run (fresh inputs), printed so that a failure can be
/// replayed: `SIGMOID_ATTN_SEED=<printed seed>` gives every case exactly that seed.
pub fn seed_for(name: &str) -> u64 {
    if let Some(seed) = std::env::var("SIGMOID_ATTN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return seed;
    }
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    name.bytes().fold(base, |h, c| {
        h.wrapping_mul(0x100_0000_01B3).wrapping_add(c as u64)
    })
}

/// One row of the case table: a problem with its dtype left to the suite.
#[derive(Clone)]
pub struct Case {
    pub name: &'static str,
    pub problem: Problem,
    /// Also check the backward on this case.
    pub grads: bool,
}

fn case(name: &'static str, problem: Problem, grads: bool) -> Case {
    Case {
        name,
        problem,
        grads,
    }
}

/// Q, K, V interleaved in one `[B, N, 3, H, D]` buffer (as a fused QKV projection writes them),
/// O in its own buffer with a gap between heads: strides that are neither standard layout.
fn interleaved_qkv(b: usize, n: usize, h: usize, d: usize) -> Layout {
    let qkv = Strides {
        batch: n * 3 * h * d,
        seq: 3 * h * d,
        head: d,
    };
    let _ = b;
    Layout::Strided(TensorStrides {
        q: qkv,
        k: qkv,
        v: qkv,
        o: Strides {
            batch: n * h * (d + 8),
            seq: h * (d + 8),
            head: d + 8,
        },
    })
}

/// The case table. Odd sizes, every head dim, padding with zero-length and full sequences,
/// packed input, causal, GQA, both layouts and arbitrary strides, every bias and sigmoid mode.
pub fn cases() -> Vec<Case> {
    let p = Problem::new;
    let mut v = vec![
        case("one token", p(1, 1, 1, 32), true),
        case("odd 17 tokens d64", p(2, 17, 3, 64), true),
        case(
            "cross 113x203 d128",
            p(1, 113, 2, 128).with_seq_k(203),
            true,
        ),
        case("d16", p(1, 67, 2, 16), false),
        case("d32", p(2, 70, 2, 32), true),
        case("d80", p(1, 65, 2, 80), false),
        case("d96", p(1, 129, 2, 96), true),
        case("d256", p(1, 100, 2, 256), true),
        case(
            "padded: empty, full, one, partial",
            p(4, 130, 2, 64).with_lengths(Lengths::padded(&[0, 130, 1, 77])),
            true,
        ),
        case(
            "padded cross: queries without keys",
            p(3, 40, 2, 64)
                .with_seq_k(90)
                .with_lengths(Lengths::Padded {
                    q: vec![40, 13, 0],
                    k: vec![0, 90, 31],
                }),
            true,
        ),
        case(
            "packed varlen with an empty sequence",
            Problem::packed(&[0, 5, 5, 133, 200], 2, 64),
            true,
        ),
        case(
            "packed cross",
            p(3, 170, 2, 128)
                .with_seq_k(64)
                .with_lengths(Lengths::Packed {
                    cu_seqlens_q: vec![0, 100, 101, 170],
                    cu_seqlens_k: vec![0, 30, 30, 64],
                }),
            true,
        ),
        case("causal", p(2, 150, 2, 64).with_causal(true), true),
        case(
            "causal padded",
            p(3, 97, 2, 128)
                .with_causal(true)
                .with_lengths(Lengths::padded(&[97, 50, 0])),
            true,
        ),
        case(
            "causal packed",
            Problem::packed(&[0, 64, 65, 190], 2, 64).with_causal(true),
            true,
        ),
        case(
            "causal cross (fewer keys than queries)",
            p(1, 80, 2, 64).with_seq_k(33).with_causal(true),
            true,
        ),
        case("gqa 8 heads on 2", p(2, 70, 8, 64).with_kv_heads(2), true),
        case("mqa 4 heads on 1", p(1, 66, 4, 128).with_kv_heads(1), true),
        case(
            "bhnd layout",
            p(2, 90, 3, 64).with_layout(Layout::Bhnd),
            true,
        ),
        case(
            "bhnd packed",
            Problem::packed(&[0, 40, 41, 120], 2, 64).with_layout(Layout::Bhnd),
            true,
        ),
        case(
            "interleaved qkv strides",
            p(2, 45, 2, 64).with_layout(interleaved_qkv(2, 45, 2, 64)),
            true,
        ),
        case(
            "constant bias",
            p(1, 77, 2, 64).with_bias(Bias::Constant(-3.0)),
            true,
        ),
        case("no bias", p(1, 77, 2, 64).with_bias(Bias::None), true),
        case(
            "large logits (scale 1)",
            p(1, 64, 2, 64).with_scale(1.0).with_bias(Bias::None),
            true,
        ),
        case(
            "accurate sigmoid",
            p(2, 120, 2, 64).with_sigmoid(SigmoidMode::Accurate),
            true,
        ),
        case(
            "accurate sigmoid, padded causal",
            p(2, 100, 2, 128)
                .with_sigmoid(SigmoidMode::Accurate)
                .with_causal(true)
                .with_lengths(Lengths::padded(&[100, 31])),
            true,
        ),
        case("many tiles d64", p(1, 777, 1, 64), false),
        // The Hopper forward walks padded plans in a work order: an odd tile count (the
        // last causal pair has one tile) and more pairs than an H200 has SMs (the stride).
        case(
            "causal padded d64, odd tile count",
            p(3, 400, 1, 64)
                .with_causal(true)
                .with_lengths(Lengths::padded(&[400, 250, 9])),
            true,
        ),
        case(
            "causal padded d64, many units",
            p(6, 200, 24, 64)
                .with_causal(true)
                .with_lengths(Lengths::padded(&[200, 7, 150, 0, 199, 64])),
            false,
        ),
        case("many tiles d128", p(1, 515, 2, 128), true),
    ];
    if std::env::var("SIGMOID_ATTN_LARGE").is_ok() {
        v.push(case("large 2048 d128", p(1, 2048, 2, 128), true));
    }
    v
}

/// Which half of the suite a test runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Pass {
    Forward,
    Backward,
}

/// Outcome of one case.
pub enum Outcome {
    Passed(String),
    Failed(String),
    Skipped(String),
}

/// Error of one output tensor against the truth, and the bound it must meet.
struct Check {
    tensor: &'static str,
    err: f64,
    bound: f64,
    failure: Option<String>,
}

/// Per-dtype absolute term, relative to the largest reference value: covers accumulation-order
/// differences (f32) and one rounding of the output beyond what the emulation made (f16/bf16).
fn atol(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-5,
        DType::F16 | DType::BF16 => 2.0 * dtype.unit_roundoff(),
    }
}

/// A systematic error per unit of ∂d_bias/∂t that the emulation (tanh rounded to
/// `fast_sigmoid_bits` bits: errors that change sign and cancel) does not model. Inferred from
/// two d_bias failures (BENCHMARKS.md, third session): ~2.8e-6 for CUDA, ~1e-7 for lavapipe;
/// 2^-17 leaves a margin of ~3. The CUDA tanh.approx curve measured since
/// (`kernels/dev/sigmoid_error.py`, fourth session) drifts by under 1e-6 in t around the failing
/// case's logits, so tanh explains only part of the CUDA figure; the rest has no known cause,
/// and this stays an empirical allowance.
const TANH_DRIFT: f64 = 1.0 / 131_072.0;

/// Extra tolerance of d_bias for a fast-sigmoid backend: a tanh error that is the same for
/// every pair of a sequence moves d_bias by `slope` times that error.
fn d_bias_tanh_allowance<B: Backend>(be: &B, plan: &Plan, slope: &[f64]) -> f64 {
    if plan.sigmoid() != SigmoidMode::Fast || be.fast_sigmoid_bits().is_none() {
        return 0.0;
    }
    slope.iter().fold(0.0, |m: f64, s| m.max(s.abs())) * TANH_DRIFT
}

/// Compares `got` with `truth` over the plan's view; `emulated` sets the tolerance. Positions
/// outside the view (truth is NaN there) must still hold the NaN poison.
fn check(
    tensor: &'static str,
    dtype: DType,
    got: &[f64],
    truth: &[f64],
    emulated: &[f64],
) -> Check {
    check_with(tensor, dtype, got, truth, emulated, 0.0)
}

/// `check` with `allowance` added to the bound.
fn check_with(
    tensor: &'static str,
    dtype: DType,
    got: &[f64],
    truth: &[f64],
    emulated: &[f64],
    allowance: f64,
) -> Check {
    let mut err: f64 = 0.0;
    let mut base: f64 = 0.0;
    let mut scale: f64 = 0.0;
    let mut failure = None;
    for (idx, ((&g, &t), &e)) in got.iter().zip(truth).zip(emulated).enumerate() {
        if t.is_nan() {
            if !g.is_nan() && failure.is_none() {
                failure = Some(format!(
                    "{tensor}[{idx}] outside the view was overwritten with {g}"
                ));
            }
            continue;
        }
        if !g.is_finite() {
            if failure.is_none() {
                failure = Some(format!("{tensor}[{idx}] = {g} (expected {t})"));
            }
            continue;
        }
        err = err.max((g - t).abs());
        base = base.max((e - t).abs());
        scale = scale.max(t.abs());
    }
    let bound = 2.0 * base + atol(dtype) * scale.max(1e-6) + allowance;
    if failure.is_none() && err > bound {
        failure = Some(format!("{tensor}: max error {err:.3e} > bound {bound:.3e} (emulated {base:.3e}, max |ref| {scale:.3e})"));
    }
    Check {
        tensor,
        err,
        bound,
        failure,
    }
}

fn poisoned<B: Backend>(be: &B, dtype: DType, len: usize) -> Result<B::Buffer, Error> {
    be.upload(&HostTensor::filled(dtype, len, f32::NAN))
}

/// Runs one case on `be` and judges it.
pub fn run_case<B: Backend>(be: &B, c: &Case, dtype: DType, pass: Pass) -> Outcome {
    let problem = c.problem.clone().with_dtype(dtype);
    let plan = match problem.plan() {
        Ok(p) => p,
        Err(e) => return Outcome::Failed(format!("plan rejected a valid case: {e}")),
    };
    let support = match pass {
        Pass::Forward => be.supports_forward(&plan),
        Pass::Backward => be.supports_backward(&plan),
    };
    if let Err(e) = support {
        return Outcome::Skipped(e.to_string());
    }
    let seed = seed_for(c.name);
    let [q, k, v, d_o] = Rng::new(seed).attention_inputs(&plan, dtype);
    let result = match pass {
        Pass::Forward => run_forward(be, &plan, &q, &k, &v),
        Pass::Backward => run_backward(be, &plan, &q, &k, &v, &d_o),
    };
    let got = match result {
        Ok(g) => g,
        Err(e) => return Outcome::Failed(format!("seed {seed}: backend error: {e}")),
    };
    let inputs = Inputs::new(&q, &k, &v, &d_o);
    let grads = pass == Pass::Backward;
    let truth = naive::evaluate(&plan, &inputs, Precision::Exact, grads);
    let emulated = naive::evaluate(
        &plan,
        &inputs,
        Precision::Emulate {
            dtype,
            tanh_bits: be.fast_sigmoid_bits(),
        },
        grads,
    );
    let checks: Vec<Check> = match pass {
        Pass::Forward => vec![check("o", dtype, &got[0], &truth.o, &emulated.o)],
        Pass::Backward => vec![
            check("dq", dtype, &got[0], &truth.dq, &emulated.dq),
            check("dk", dtype, &got[1], &truth.dk, &emulated.dk),
            check("dv", dtype, &got[2], &truth.dv, &emulated.dv),
            check_with(
                "d_bias",
                DType::F32,
                &got[3],
                &truth.d_bias,
                &emulated.d_bias,
                d_bias_tanh_allowance(be, &plan, &truth.d_bias_tanh_slope),
            ),
        ],
    };
    let summary: Vec<String> = checks
        .iter()
        .map(|c| format!("{} {:.1e}/{:.1e}", c.tensor, c.err, c.bound))
        .collect();
    match checks.iter().find_map(|c| c.failure.clone()) {
        Some(f) => Outcome::Failed(format!("seed {seed}: {f}")),
        None => Outcome::Passed(summary.join(", ")),
    }
}

fn run_forward<B: Backend>(
    be: &B,
    plan: &Plan,
    q: &HostTensor,
    k: &HostTensor,
    v: &HostTensor,
) -> Result<Vec<Vec<f64>>, Error> {
    let (qd, kd, vd) = (be.upload(q)?, be.upload(k)?, be.upload(v)?);
    let mut od = poisoned(be, plan.dtype(), plan.o_elems())?;
    be.forward(plan, &qd, &kd, &vd, &mut od)?;
    Ok(vec![be.download(&od)?.to_f64()])
}

fn run_backward<B: Backend>(
    be: &B,
    plan: &Plan,
    q: &HostTensor,
    k: &HostTensor,
    v: &HostTensor,
    d_o: &HostTensor,
) -> Result<Vec<Vec<f64>>, Error> {
    let inputs = [q.clone(), k.clone(), v.clone(), d_o.clone()];
    Ok(backward_outputs(be, plan, &inputs)?
        .iter()
        .map(HostTensor::to_f64)
        .collect())
}

/// The backward's device tensors on `be`: Q, K, V, dO uploaded from `inputs`, then dQ, dK, dV
/// and d_bias (f32 × batch) filled with NaN, so that an element a kernel forgets stays NaN.
pub fn backward_buffers<B: Backend>(
    be: &B,
    plan: &Plan,
    inputs: &[HostTensor; 4],
) -> Result<[B::Buffer; 8], Error> {
    let dt = plan.dtype();
    let up = |t: &HostTensor| be.upload(t);
    Ok([
        up(&inputs[0])?,
        up(&inputs[1])?,
        up(&inputs[2])?,
        up(&inputs[3])?,
        poisoned(be, dt, plan.q_elems())?,
        poisoned(be, dt, plan.k_elems())?,
        poisoned(be, dt, plan.v_elems())?,
        poisoned(be, DType::F32, plan.batch())?,
    ])
}

/// One backward of `plan` on `be` from `inputs` (Q, K, V, dO) into NaN-poisoned outputs: dQ,
/// dK, dV and d_bias, downloaded.
pub fn backward_outputs<B: Backend>(
    be: &B,
    plan: &Plan,
    inputs: &[HostTensor; 4],
) -> Result<[HostTensor; 4], Error> {
    let [q, k, v, d_o, mut dq, mut dk, mut dv, mut db] = backward_buffers(be, plan, inputs)?;
    be.backward(
        plan,
        BackwardArgs {
            q: &q,
            k: &k,
            v: &v,
            d_o: &d_o,
            dq: &mut dq,
            dk: &mut dk,
            dv: &mut dv,
            d_bias: Some(&mut db),
        },
    )?;
    Ok([
        be.download(&dq)?,
        be.download(&dk)?,
        be.download(&dv)?,
        be.download(&db)?,
    ])
}

/// True when `SIGMOID_ATTN_REQUIRE` (comma-separated) names this backend: then a missing
/// device fails the suite instead of skipping it (CI sets it for wgpu on lavapipe).
pub fn required(backend: &str) -> bool {
    std::env::var("SIGMOID_ATTN_REQUIRE")
        .map(|v| v.split(',').any(|s| s.trim() == backend))
        .unwrap_or(false)
}

/// Runs every case of one pass and dtype; panics (fails the test) if any case failed.
pub fn run_suite<B: Backend>(
    backend: &str,
    make: impl FnOnce() -> Result<B, Error>,
    pass: Pass,
    dtype: DType,
) {
    let be = match make() {
        Ok(b) => b,
        Err(e @ Error::DeviceUnavailable { .. }) if !required(backend) => {
            let _ = writeln!(
                std::io::stderr(),
                "conformance {backend} {pass:?} {dtype}: skipped: {e}"
            );
            return;
        }
        Err(e) => panic!("conformance {backend}: could not create the backend: {e}"),
    };
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    let mut report = String::new();
    for c in cases() {
        if pass == Pass::Backward && !c.grads {
            continue;
        }
        let started = std::time::Instant::now();
        let outcome = run_case(&be, &c, dtype, pass);
        let ms = started.elapsed().as_millis();
        let (tag, text) = match &outcome {
            Outcome::Passed(s) => {
                passed += 1;
                ("ok", s)
            }
            Outcome::Failed(s) => {
                failed += 1;
                ("FAILED", s)
            }
            Outcome::Skipped(s) => {
                skipped += 1;
                ("skipped", s)
            }
        };
        report.push_str(&format!("  {tag:7} {:40} {ms:6} ms  {text}\n", c.name));
    }
    let summary = format!(
        "conformance {backend} {pass:?} {dtype} on {}: {passed} passed, {failed} failed, {skipped} skipped",
        be.device_name()
    );
    println!("{summary}:\n{report}");
    // The one-line summary bypasses libtest's capture (it only captures the print macros), so
    // CI logs show the counts of every suite without --nocapture.
    let _ = writeln!(std::io::stderr(), "{summary}");
    assert_eq!(
        failed, 0,
        "{failed} conformance case(s) failed on {backend}"
    );
}

/// Defines the conformance tests (forward and backward × f32, f16, bf16) for one backend.
///
/// ```ignore
/// mod common;
/// conformance!(cpu, || Ok(sigmoid_attn::CpuBackend::new()));
/// ```
#[macro_export]
macro_rules! conformance {
    ($backend:ident, $make:expr) => {
        mod conformance {
            use super::common::{run_suite, Pass};
            use sigmoid_attn::DType;
            const NAME: &str = stringify!($backend);
            #[test]
            fn forward_f32() {
                run_suite(NAME, $make, Pass::Forward, DType::F32);
            }
            #[test]
            fn forward_f16() {
                run_suite(NAME, $make, Pass::Forward, DType::F16);
            }
            #[test]
            fn forward_bf16() {
                run_suite(NAME, $make, Pass::Forward, DType::BF16);
            }
            #[test]
            fn backward_f32() {
                run_suite(NAME, $make, Pass::Backward, DType::F32);
            }
            #[test]
            fn backward_f16() {
                run_suite(NAME, $make, Pass::Backward, DType::F16);
            }
            #[test]
            fn backward_bf16() {
                run_suite(NAME, $make, Pass::Backward, DType::BF16);
            }
        }
    };
}
