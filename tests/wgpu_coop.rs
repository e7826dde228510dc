//! The conformance suite on the wgpu backend's cooperative-matrix (tensor-core) path, on an
//! adapter that has one (an NVIDIA GPU over Vulkan, say). Where none has it (lavapipe, CI), every
//! test prints `skipped: <reason>` and passes: CI's `SIGMOID_ATTN_REQUIRE=wgpu` names the scalar
//! suite (`tests/wgpu.rs`), not this one (`wgpu_coop`). Cases the path does not take (f32
//! storage, head dims not a multiple of 16 or above 128, the backward) run on the scalar kernels
//! inside the same backend, so every case still runs; `coop_takes_the_plans_it_should` checks
//! which path each kind of plan takes.
mod common;
conformance!(wgpu_coop, sigmoid_attn::wgpu::WgpuBackend::new_coop);

use sigmoid_attn::wgpu::coop::CoopTiles;
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
        }
        assert!(!be.uses_coop(&plan(d, DType::F32)), "f32 must stay scalar");
    }
    for d in [36, 100, 256] {
        assert!(
            !be.uses_coop(&plan(d, DType::F16)),
            "d={d} must stay scalar"
        );
    }
    let padded = Problem::new(3, 97, 2, 128)
        .with_causal(true)
        .with_lengths(Lengths::padded(&[97, 50, 0]))
        .plan()
        .unwrap();
    assert!(be.uses_coop(&padded));
    assert!(!{
        be.set_coop(false);
        be.uses_coop(&padded)
    });
    assert!(be.set_coop(true));
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
        let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
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
            let got = run(true);
            let err = got
                .iter()
                .zip(&want)
                .map(|(x, y)| {
                    if x.is_nan() {
                        f64::INFINITY
                    } else {
                        (x - y).abs()
                    }
                })
                .fold(0.0f64, f64::max);
            let ok = err <= 4e-3 * scale.max(1e-3);
            println!(
                "{} d={d} {t:?} vs scalar: max |diff| {err:.3e}, max |o| {scale:.3e}",
                if ok { "agree" } else { "MISMATCH" },
            );
            if !ok {
                bad.push(format!("d={d} {t:?}: differs by {err}"));
            }
        }
        be.set_coop_tiles(None);
    }
    assert!(
        bad.is_empty(),
        "coop and scalar differ:\n{}",
        bad.join("\n")
    );
}
