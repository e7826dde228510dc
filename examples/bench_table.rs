//! The standard workload table (DESIGN.md) on one backend: bf16/f16/f32, `[B,N,H,D]`
//! (non-causal unless `--causal`), `B = tokens/N`, `H = width/D`, padding drawn per sequence as
//! `L ~ U[N(1−p), N]`. Prints TFLOPS and milliseconds for forward and backward (backward counted
//! as 2.5× forward FLOPs, on valid pairs), checks sampled rows of every result against the f64
//! definition, and writes JSON.
//!
//! ```text
//! cargo run --release --example bench_table -- --backend cuda --dtype bf16 --json cuda.json
//! cargo run --release --example bench_table -- --backend cpu --tokens 2048 --n 512,1024 --d 64
//! ```
//!
//! Options: `--backend cpu|wgpu|cuda`, `--dtype bf16|f16|f32`, `--pass fwd,bwd`, `--d 64,128`,
//! `--n 1024,4096,16384`, `--pad 0,25`, `--tokens 16384`, `--width 2048`, `--reps 20`,
//! `--warmup-ms 100` (measured time spent warming up before the timed runs), `--json PATH`,
//! `--no-check`, `--d-bias` (the backward also computes d_bias, as training a learned bias
//! does; off by default, like the anchors, which have no bias gradient), `--causal` (causal
//! masking; FLOPs are counted on the visible pairs, about half), `--calls K` (each timed sample
//! enqueues K calls back to back between its two events and counts a K-th of the time: the
//! host's enqueue work then overlaps the GPU work of the call before, as in a training loop;
//! the default, 1, times a call that starts on an idle GPU, host work included).

use sigmoid_attn::cpu::reference::rows;
use sigmoid_attn::{Backend, BackwardArgs, DType, Error, HostTensor, Lengths, Plan, Problem};
use std::fmt::Write as _;
use std::time::Instant;

struct Opts {
    backend: String,
    dtype: DType,
    passes: Vec<String>,
    dims: Vec<usize>,
    seqs: Vec<usize>,
    pads: Vec<u32>,
    tokens: usize,
    width: usize,
    reps: usize,
    warmup_ms: f64,
    json: Option<String>,
    check: bool,
    d_bias: bool,
    causal: bool,
    calls: usize,
}

fn list<T: std::str::FromStr>(s: &str) -> Result<Vec<T>, String> {
    s.split(',')
        .map(|x| x.trim().parse().map_err(|_| format!("bad list item `{x}`")))
        .collect()
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        backend: "cuda".into(),
        dtype: DType::BF16,
        passes: vec!["fwd".into(), "bwd".into()],
        dims: vec![64, 128],
        seqs: vec![1024, 4096, 16384],
        pads: vec![0, 25],
        tokens: 16384,
        width: 2048,
        reps: 20,
        warmup_ms: 100.0,
        json: None,
        check: true,
        d_bias: false,
        causal: false,
        calls: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--no-check" {
            o.check = false;
            continue;
        }
        if flag == "--d-bias" {
            o.d_bias = true;
            continue;
        }
        if flag == "--causal" {
            o.causal = true;
            continue;
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--backend" => o.backend = value,
            "--dtype" => {
                o.dtype = match value.as_str() {
                    "bf16" => DType::BF16,
                    "f16" => DType::F16,
                    "f32" => DType::F32,
                    _ => return Err(format!("unknown dtype {value}")),
                }
            }
            "--pass" => o.passes = list(&value)?,
            "--d" => o.dims = list(&value)?,
            "--n" => o.seqs = list(&value)?,
            "--pad" => o.pads = list(&value)?,
            "--tokens" => o.tokens = value.parse().map_err(|_| "bad --tokens")?,
            "--width" => o.width = value.parse().map_err(|_| "bad --width")?,
            "--reps" => o.reps = value.parse().map_err(|_| "bad --reps")?,
            "--warmup-ms" => o.warmup_ms = value.parse().map_err(|_| "bad --warmup-ms")?,
            "--calls" => {
                o.calls = value.parse().map_err(|_| "bad --calls")?;
                if o.calls == 0 {
                    return Err("--calls must be at least 1".into());
                }
            }
            "--json" => o.json = Some(value),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(o)
}

/// One line of the table.
#[derive(Default)]
struct Row {
    d: usize,
    n: usize,
    pad: u32,
    batch: usize,
    heads: usize,
    fwd_ms: Option<f64>,
    fwd_tflops: Option<f64>,
    bwd_ms: Option<f64>,
    bwd_tflops: Option<f64>,
    check: String,
}

/// xorshift64*: deterministic inputs, different per tensor.
struct Rng(u64);
impl Rng {
    /// A generator whose first outputs are already well mixed: xorshift's first outputs from a
    /// small seed are not (the seed of D=128 N=16k drew a length of 16384 for its one padded
    /// sequence, so that "25% padding" row was dense until 2026-11-29).
    fn new(seed: u64) -> Self {
        // splitmix64's finaliser.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)).max(1))
    }
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn tensor(&mut self, dtype: DType, len: usize) -> HostTensor {
        let v: Vec<f64> = (0..len).map(|_| self.next() * 2.0 - 1.0).collect();
        HostTensor::from_f64(dtype, &v)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Largest sampled error relative to the largest sampled reference value.
fn sample_error(samples: &[(Vec<f64>, Vec<f64>)]) -> f64 {
    let scale = samples
        .iter()
        .flat_map(|(e, _)| e.iter())
        .fold(1e-6f64, |m, x| m.max(x.abs()));
    let err = samples
        .iter()
        .flat_map(|(e, g)| e.iter().zip(g).map(|(a, b)| (a - b).abs()))
        .fold(
            0.0f64,
            |m, x| if x.is_nan() { f64::INFINITY } else { m.max(x) },
        );
    err / scale
}

fn gather(t: &HostTensor, base: usize, d: usize) -> Vec<f64> {
    (0..d).map(|c| t.get(base + c)).collect()
}

fn threshold(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-3,
        DType::F16 => 2e-2,
        DType::BF16 => 6e-2,
    }
}

/// Median of `reps` timed samples after a warm-up of at least `warmup_ms` of measured time (and
/// at least one sample): short GPU kernels need many runs before clocks and caches settle, the
/// way `triton.testing.do_bench` warms up the anchors. A sample is `calls` runs back to back
/// between two events; the result is per run.
fn time<B: Backend>(
    be: &B,
    reps: usize,
    warmup_ms: f64,
    calls: usize,
    f: &mut dyn FnMut() -> Result<(), Error>,
) -> Result<f64, Error> {
    let mut sample = || -> Result<(), Error> { (0..calls).try_for_each(|_| f()) };
    let mut warm = 0.0;
    while warm < warmup_ms || warm == 0.0 {
        warm += be.time_ms(&mut sample)?.max(1e-6);
    }
    let times = (0..reps)
        .map(|_| be.time_ms(&mut sample).map(|ms| ms / calls as f64))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(median(times))
}

fn run_config<B: Backend>(be: &B, o: &Opts, d: usize, n: usize, pad: u32) -> Result<Row, Error> {
    let (batch, heads) = (o.tokens / n, o.width / d);
    let mut rng = Rng::new((n * 31 + d) as u64);
    let lens: Vec<u32> = (0..batch)
        .map(|_| {
            let lo = n as f64 * (1.0 - pad as f64 / 100.0);
            (lo + rng.next() * (n as f64 - lo))
                .round()
                .clamp(1.0, n as f64) as u32
        })
        .collect();
    let mut problem = Problem::new(batch, n, heads, d)
        .with_dtype(o.dtype)
        .with_causal(o.causal);
    if pad > 0 {
        problem = problem.with_lengths(Lengths::padded(&lens));
    }
    let plan = problem.plan()?;
    let mut row = Row {
        d,
        n,
        pad,
        batch,
        heads,
        check: if o.check {
            "ok".into()
        } else {
            "not checked".into()
        },
        ..Row::default()
    };
    let (q, k, v) = (
        rng.tensor(o.dtype, plan.q_elems()),
        rng.tensor(o.dtype, plan.k_elems()),
        rng.tensor(o.dtype, plan.v_elems()),
    );
    let g = rng.tensor(o.dtype, plan.o_elems());
    let (qd, kd, vd, gd) = (
        be.upload(&q)?,
        be.upload(&k)?,
        be.upload(&v)?,
        be.upload(&g)?,
    );
    let st = plan.strides();
    let mut notes = Vec::new();
    // Sampled rows: a few sequences, heads and positions, including the last valid row.
    let picks: Vec<(usize, usize, usize)> = (0..6)
        .map(|s| {
            let b = (s * 7) % batch;
            let len = plan.seqs()[b].len_q.max(1);
            (
                b,
                (s * 5) % heads,
                if s == 0 { len - 1 } else { (s * 7919) % len },
            )
        })
        .collect();

    if o.passes.iter().any(|p| p == "fwd") {
        match be.supports_forward(&plan) {
            Err(e) => notes.push(format!("fwd: {e}")),
            Ok(()) => {
                let mut od = be.alloc(o.dtype, plan.o_elems())?;
                let ms = time(be, o.reps, o.warmup_ms, o.calls, &mut || {
                    be.forward(&plan, &qd, &kd, &vd, &mut od)
                })?;
                row.fwd_ms = Some(ms);
                row.fwd_tflops = Some(plan.forward_flops() / (ms * 1e-3) / 1e12);
                if o.check {
                    let out = be.download(&od)?;
                    let samples: Vec<_> = picks
                        .iter()
                        .map(|&(b, h, i)| {
                            let base = Plan::row_offset(&st.o, b, 0, i, h);
                            (
                                rows::output(&plan, &q, &k, &v, b, h, i),
                                gather(&out, base, d),
                            )
                        })
                        .collect();
                    let err = sample_error(&samples);
                    if err > threshold(o.dtype) {
                        row.check = format!("FAILED fwd rel err {err:.1e}");
                    }
                }
            }
        }
    }
    if o.passes.iter().any(|p| p == "bwd") {
        match be.supports_backward(&plan) {
            Err(e) => notes.push(format!("bwd: {e}")),
            Ok(()) => {
                let mut dq = be.alloc(o.dtype, plan.q_elems())?;
                let mut dk = be.alloc(o.dtype, plan.k_elems())?;
                let mut dv = be.alloc(o.dtype, plan.v_elems())?;
                let mut db = if o.d_bias {
                    Some(be.alloc(DType::F32, plan.batch())?)
                } else {
                    None
                };
                let mut run = || {
                    be.backward(
                        &plan,
                        BackwardArgs {
                            q: &qd,
                            k: &kd,
                            v: &vd,
                            d_o: &gd,
                            dq: &mut dq,
                            dk: &mut dk,
                            dv: &mut dv,
                            d_bias: db.as_mut(),
                        },
                    )
                };
                let ms = time(be, o.reps, o.warmup_ms, o.calls, &mut run)?;
                row.bwd_ms = Some(ms);
                row.bwd_tflops = Some(plan.backward_flops() / (ms * 1e-3) / 1e12);
                if o.check {
                    let (dqh, dkh, dvh) = (be.download(&dq)?, be.download(&dk)?, be.download(&dv)?);
                    let mut samples = Vec::new();
                    for &(b, h, i) in &picks[..3] {
                        let base = Plan::row_offset(&st.q, b, 0, i, h);
                        samples.push((
                            rows::dq(&plan, &q, &k, &v, &g, b, h, i),
                            gather(&dqh, base, d),
                        ));
                        let hk = h / plan.group_size();
                        let (ek, ev) = rows::dk_dv(&plan, &q, &k, &v, &g, b, hk, i);
                        let base = Plan::row_offset(&st.k, b, 0, i, hk);
                        samples.push((ek, gather(&dkh, base, d)));
                        samples.push((ev, gather(&dvh, base, d)));
                    }
                    let err = sample_error(&samples);
                    if err > threshold(o.dtype) {
                        row.check = format!("FAILED bwd rel err {err:.1e}");
                    }
                    if let Some(db) = &db {
                        // d_bias is a whole-sequence sum: no row sample covers it; the
                        // conformance suite checks its value.
                        if be.download(db)?.to_f64().iter().any(|x| !x.is_finite()) {
                            row.check = "FAILED d_bias not finite".into();
                        }
                    }
                }
            }
        }
    }
    if !notes.is_empty() {
        // Keep the verdict on what did run, then say what could not.
        row.check = format!("{}; {}", row.check, notes.join("; "));
    }
    Ok(row)
}

fn fmt(x: Option<f64>, digits: usize) -> String {
    x.map_or("—".into(), |v| format!("{v:.digits$}"))
}

fn run_all<B: Backend>(be: &B, o: &Opts) -> Result<Vec<Row>, Error> {
    let mut rows = Vec::new();
    let total = o.dims.len() * o.seqs.len() * o.pads.len();
    let started = Instant::now();
    for &d in &o.dims {
        for &n in &o.seqs {
            for &pad in &o.pads {
                let row = run_config(be, o, d, n, pad)?;
                rows.push(row);
                eprintln!(
                    "[{}/{total}] D={d} N={n} pad={pad}% done ({:.0} s)",
                    rows.len(),
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }
    Ok(rows)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let o = parse()?;
    let (rows, backend, device) = match o.backend.as_str() {
        "cpu" => {
            let be = sigmoid_attn::CpuBackend::new();
            (run_all(&be, &o)?, be.name(), be.device_name())
        }
        #[cfg(feature = "wgpu")]
        "wgpu" => {
            let be = sigmoid_attn::wgpu::WgpuBackend::new()?;
            (run_all(&be, &o)?, be.name(), be.device_name())
        }
        #[cfg(feature = "cuda")]
        "cuda" => {
            let be = sigmoid_attn::cuda::CudaBackend::new()?;
            (run_all(&be, &o)?, be.name(), be.device_name())
        }
        other => return Err(format!("backend `{other}` is unknown or not compiled in").into()),
    };
    let mut table = format!(
        "{backend} on {device}, {}{}, tokens {}, width {}, median of {} {}{}\n\n",
        o.dtype,
        if o.causal { ", causal" } else { "" },
        o.tokens,
        o.width,
        o.reps,
        if o.calls > 1 {
            format!("samples of {} calls back to back (per call)", o.calls)
        } else {
            "runs".into()
        },
        if o.d_bias { ", d_bias requested" } else { "" }
    );
    table.push_str("| D | N | pad | B×H | fwd ms | fwd TFLOPS | bwd ms | bwd TFLOPS | check |\n");
    table.push_str("|---|---|---|---|---|---|---|---|---|\n");
    let mut json = String::from("[\n");
    for (i, r) in rows.iter().enumerate() {
        let _ = writeln!(
            table,
            "| {} | {} | {}% | {}×{} | {} | {} | {} | {} | {} |",
            r.d,
            r.n,
            r.pad,
            r.batch,
            r.heads,
            fmt(r.fwd_ms, 3),
            fmt(r.fwd_tflops, 3),
            fmt(r.bwd_ms, 3),
            fmt(r.bwd_tflops, 3),
            r.check
        );
        let num = |x: Option<f64>| x.map_or("null".into(), |v| format!("{v}"));
        let _ = writeln!(
            json,
            "  {{\"backend\": \"{backend}\", \"dtype\": \"{}\", \"d\": {}, \"n\": {}, \"pad\": {}, \"batch\": {}, \"heads\": {}, \"fwd_ms\": {}, \"fwd_tflops\": {}, \"bwd_ms\": {}, \"bwd_tflops\": {}, \"d_bias\": {}, \"causal\": {}, \"check\": \"{}\"}}{}",
            o.dtype,
            r.d,
            r.n,
            r.pad,
            r.batch,
            r.heads,
            num(r.fwd_ms),
            num(r.fwd_tflops),
            num(r.bwd_ms),
            num(r.bwd_tflops),
            o.d_bias,
            o.causal,
            r.check.replace('"', "'"),
            if i + 1 < rows.len() { "," } else { "" }
        );
    }
    json.push_str("]\n");
    println!("{table}");
    if let Some(path) = &o.json {
        std::fs::write(path, json)?;
    }
    if rows.iter().any(|r| r.check.starts_with("FAILED")) {
        return Err("some results differ from the f64 definition".into());
    }
    Ok(())
}
