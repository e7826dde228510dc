//! The conformance suite on the wgpu backend's cooperative-matrix (tensor-core) path, on an
//! adapter that has one (an NVIDIA GPU over Vulkan, say). Where none has it (lavapipe, CI), every
//! test prints `skipped: <reason>` and passes: CI's `SIGMOID_ATTN_REQUIRE=wgpu` names the scalar
//! suite (`tests/wgpu.rs`), not this one (`wgpu_coop`). Cases the path does not take (f32
//! storage, head dims not a multiple of 16 or above 128) run on the scalar kernels inside the
//! same backend, so every case still runs; `coop_takes_the_plans_it_should` checks which path
//! each kind of plan takes, forward and backward, and `harness_cases_take_the_coop_path` that
//! the suite's f16/bf16 cases with a head dim the path takes do run on it.
mod common;
conformance!(wgpu_coop, sigmoid_attn::wgpu::WgpuBackend::new_coop);

use sigmoid_attn::wgpu::coop::{CoopKernel, CoopTiles};
use sigmoid_attn::wgpu::WgpuBackend;
use sigmoid_attn::{Backend, DType, Error, Lengths, Problem};

fn coop_backend(test: &str) -> Option<WgpuBackend> {
    match WgpuBackend::new_coop() {
        Ok(b) => Some(b),
        Err(e @ Error::DeviceUnavailable { .. }) if !common::required("wgpu_coop") => {
            println!("{test}: skipped: {e}");
            None
        }
        Err(e) => panic!("{test}: could not create the wgpu backend: {e}"),
    }
}

#[test]
fn coop_takes_the_plans_it_should() {
    let Some(be) = coop_backend("coop_takes_the_plans_it_should") else {
        return;
    };
    println!("coop path on {}", be.device_name());
    let plan = |d: usize, dt: DType| Problem::new(2, 100, 2, d).with_dtype(dt).plan().unwrap();
    for d in [16, 32, 64, 80, 96, 128] {
        for dt in [DType::F16, DType::BF16] {
            assert!(be.uses_coop(&plan(d, dt)), "d={d} {dt} should run on coop");
            assert!(
                be.uses_coop_backward(&plan(d, dt)),
                "d={d} {dt}: the backward should run on coop"
            );
        }
        assert!(!be.uses_coop(&plan(d, DType::F32)), "f32 must stay scalar");
        assert!(
            !be.uses_coop_backward(&plan(d, DType::F32)),
            "f32 backward must stay scalar"
        );
    }
    for d in [36, 100, 256] {
        assert!(
            !be.uses_coop(&plan(d, DType::F16)),
            "d={d} must stay scalar"
        );
        assert!(
            !be.uses_coop_backward(&plan(d, DType::F16)),
            "d={d} backward must stay scalar"
        );
    }
    let padded = Problem::new(3, 97, 2, 128)
        .with_causal(true)
        .with_lengths(Lengths::padded(&[97, 50, 0]))
        .plan()
        .unwrap();
    assert!(be.uses_coop(&padded));
    assert!(be.uses_coop_backward(&padded));
    let packed_gqa = Problem::packed(&[0, 5, 300], 4, 64)
        .with_kv_heads(1)
        .with_dtype(DType::BF16)
        .plan()
        .unwrap();
    assert!(be.uses_coop_backward(&packed_gqa));
    be.set_coop(false);
    assert!(!be.uses_coop(&padded));
    assert!(!be.uses_coop_backward(&padded));
    assert!(be.set_coop(true));
}

/// Every f16/bf16 case of the conformance table whose head dim the path takes runs on it (so
/// the suite above checks the coop kernels, not the scalar fallback), forward and backward.
#[test]
fn harness_cases_take_the_coop_path() {
    let Some(be) = coop_backend("harness_cases_take_the_coop_path") else {
        return;
    };
    let (mut fwd, mut bwd) = (0, 0);
    for c in common::cases() {
        for dt in [DType::F16, DType::BF16] {
            let plan = c.problem.clone().with_dtype(dt).plan().unwrap();
            let d = plan.head_dim();
            if d % 16 != 0 || d > 128 {
                assert!(!be.uses_coop(&plan) && !be.uses_coop_backward(&plan));
                continue;
            }
            assert!(
                be.uses_coop(&plan),
                "{} ({dt}): forward not on coop",
                c.name
            );
            fwd += 1;
            if c.grads {
                assert!(
                    be.uses_coop_backward(&plan),
                    "{} ({dt}): backward not on coop",
                    c.name
                );
                bwd += 1;
            }
        }
    }
    println!("{fwd} forward and {bwd} backward cases (f16 + bf16) run on the coop path");
    assert!(bwd > 10, "only {bwd} backward cases on the coop path");
}

/// The same f16 forward on both paths of one device agrees to f16 accuracy, for every
/// cooperative-matrix tile shape the backend can pick (the suite runs the default one).
#[test]
fn coop_and_scalar_agree() {
    let Some(be) = coop_backend("coop_and_scalar_agree") else {
        return;
    };
    let mut bad = Vec::new();
    for d in [32, 64, 96, 128] {
        let plan = Problem::packed(&[0, 33, 33, 300, 431], 4, d)
            .with_kv_heads(2)
            .with_causal(true)
            .with_dtype(DType::F16)
            .plan()
            .unwrap();
        let mut rng = common::Rng::new(7);
        let up = |t| be.upload(&t).unwrap();
        let q = up(rng.tensor(DType::F16, plan.q_elems()));
        let k = up(rng.tensor(DType::F16, plan.k_elems()));
        let v = up(rng.tensor(DType::F16, plan.v_elems()));
        let run = |coop: bool| {
            be.set_coop(coop);
            assert_eq!(be.uses_coop(&plan), coop);
            let mut o = be.alloc(DType::F16, plan.o_elems()).unwrap();
            be.forward(&plan, &q, &k, &v, &mut o).unwrap();
            be.download(&o).unwrap().to_f64()
        };
        let want = run(false);
        for t in CoopTiles::all(d as u32, 32) {
            be.set_coop(true);
            be.set_coop_tiles(Some((t.nsg, t.bk, t.rb)));
            let Some(t) = be
                .coop_tiles(&plan)
                .filter(|c| (c.nsg, c.bk, c.rb) == (t.nsg, t.bk, t.rb))
            else {
                println!("d={d} {t:?}: does not fit this device");
                continue;
            };
            agree(&format!("d={d} {t:?} o"), &run(true), &want, &mut bad);
        }
        be.set_coop_tiles(None);
    }
    assert!(
        bad.is_empty(),
        "coop and scalar differ:\n{}",
        bad.join("\n")
    );
}

/// The same f16 backward on both paths of one device agrees to f16 accuracy (dQ, dK, dV, and
/// d_bias), on a packed, causal, GQA plan for each head-dim class, with the automatic shapes
/// and with every candidate shape of each backward kernel that fits the device (forced in
/// pairs: the i-th dQ shape with the i-th dK/dV shape).
#[test]
fn coop_and_scalar_agree_backward() {
    let Some(be) = coop_backend("coop_and_scalar_agree_backward") else {
        return;
    };
    let mut bad = Vec::new();
    for d in [16, 32, 64, 96, 128] {
        let plan = Problem::packed(&[0, 33, 33, 300, 431], 4, d)
            .with_kv_heads(2)
            .with_causal(true)
            .with_dtype(DType::F16)
            .plan()
            .unwrap();
        let inputs = common::Rng::new(11).attention_inputs(&plan, DType::F16);
        let run = |coop: bool| {
            be.set_coop(coop);
            assert_eq!(be.uses_coop_backward(&plan), coop);
            common::backward_outputs(&be, &plan, &inputs)
                .unwrap()
                .map(|t| t.to_f64())
        };
        let want = run(false);
        let dq = CoopTiles::all_for(CoopKernel::BackwardDq, d as u32, 32);
        let dkdv = CoopTiles::all_for(CoopKernel::BackwardDkDv, d as u32, 32);
        let mut forced = vec![None];
        forced.extend((0..dq.len().max(dkdv.len())).map(|i| {
            let (a, b) = (dq[i % dq.len()], dkdv[i % dkdv.len()]);
            Some([(a.nsg, a.bk), (b.nsg, b.bk)])
        }));
        for shapes in forced {
            be.set_coop_backward_tiles(shapes);
            be.set_coop(true);
            let (tq, tk) = be.coop_backward_tiles(&plan).unwrap();
            let label = format!(
                "d={d} dq {}x{} dkdv {}x{}{}",
                tq.nsg,
                tq.bk,
                tk.nsg,
                tk.bk,
                if shapes.is_some() { " (forced)" } else { "" }
            );
            if let Some([a, b]) = shapes {
                if (tq.nsg, tq.bk) != a || (tk.nsg, tk.bk) != b {
                    println!("{label}: {a:?} / {b:?} does not all fit this device");
                }
            }
            let got = run(true);
            for (name, (x, y)) in ["dq", "dk", "dv", "d_bias"]
                .iter()
                .zip(got.iter().zip(&want))
            {
                agree(&format!("{label} {name}"), x, y, &mut bad);
            }
        }
        be.set_coop_backward_tiles(None);
    }
    be.set_coop(true);
    assert!(
        bad.is_empty(),
        "coop and scalar backward differ:\n{}",
        bad.join("\n")
    );
}

/// Coop (`got`) against scalar (`want`) to f16 accuracy relative to the largest |want|; prints
/// the comparison and records a mismatch in `bad`.
fn agree(label: &str, got: &[f64], want: &[f64], bad: &mut Vec<String>) {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let err = max_diff(got, want);
    let ok = err <= 4e-3 * scale.max(1e-3);
    println!(
        "{} {label} coop vs scalar: max |diff| {err:.3e}, max |ref| {scale:.3e}",
        if ok { "agree" } else { "MISMATCH" },
    );
    if !ok {
        bad.push(format!("{label}: differs by {err} (max {scale})"));
    }
}

/// Largest |got − want| over the elements, infinite where `got` is NaN.
fn max_diff(got: &[f64], want: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(x, y)| {
            if x.is_nan() {
                f64::INFINITY
            } else {
                (x - y).abs()
            }
        })
        .fold(0.0f64, f64::max)
}
