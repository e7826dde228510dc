//! The conformance suite on the wgpu backend (lavapipe in CI, any GPU elsewhere), plus the
//! wgpu-only surface: refusals with clear errors, recording into a caller's encoder, backward
//! without d_bias, and timestamp timing. On an adapter with cooperative matrices (NVIDIA over
//! Vulkan) `WgpuBackend::new` runs the f16/bf16 forward on the tensor-core kernel; set
//! `SIGMOID_ATTN_WGPU_COOP=0` to run this suite on the scalar kernels there (`tests/wgpu_coop.rs`
//! is the suite of the tensor-core path).
mod common;
conformance!(wgpu, sigmoid_attn::wgpu::WgpuBackend::new);

use sigmoid_attn::wgpu::{ForwardBuffers, WgpuBackend};
use sigmoid_attn::{
    Backend, BackwardArgs, DType, Error, HostTensor, Layout, Problem, Strides, TensorStrides,
};
use wgpu::util::DeviceExt;

/// The backend, or `None` (test skipped, said so) when no adapter is present and CI does not
/// require one.
fn backend(test: &str) -> Option<WgpuBackend> {
    match WgpuBackend::new() {
        Ok(b) => Some(b),
        Err(e @ Error::DeviceUnavailable { .. }) if !common::required("wgpu") => {
            println!("{test}: skipped: {e}");
            None
        }
        Err(e) => panic!("{test}: could not create the wgpu backend: {e}"),
    }
}

fn is_unsupported(r: sigmoid_attn::Result<()>, what: &str) -> bool {
    match r {
        Err(Error::Unsupported { what: w, .. }) => {
            println!("refused as expected: {w}");
            w.contains(what)
        }
        other => panic!("expected Unsupported({what}), got {other:?}"),
    }
}

#[test]
fn refuses_what_it_cannot_run() {
    let Some(be) = backend("refuses_what_it_cannot_run") else {
        return;
    };
    for d in [6, 260] {
        let plan = Problem::new(1, 8, 1, d).plan().unwrap();
        assert!(is_unsupported(be.supports_forward(&plan), "head_dim"));
        assert!(is_unsupported(be.supports_backward(&plan), "head_dim"));
    }
    let odd = Strides {
        batch: 8 * 66,
        seq: 66,
        head: 33,
    };
    let strided = Layout::Strided(TensorStrides {
        q: odd,
        k: odd,
        v: odd,
        o: odd,
    });
    let plan = Problem::new(1, 8, 2, 32)
        .with_layout(strided)
        .plan()
        .unwrap();
    assert!(is_unsupported(be.supports_forward(&plan), "strides"));
    // A tensor one row larger than the adapter lets one binding see.
    let limit = be.device().limits().max_storage_buffer_binding_size;
    let (heads, d) = (8usize, 32usize);
    let seq = (limit / (heads * d * 4) as u64 + 1) as usize;
    let plan = Problem::new(1, seq, heads, d)
        .with_dtype(DType::F32)
        .plan()
        .unwrap();
    assert!(is_unsupported(
        be.supports_forward(&plan),
        "max_storage_buffer_binding_size"
    ));
}

fn random(dtype: DType, len: usize, seed: u64) -> HostTensor {
    let mut rng = common::Rng::new(seed);
    rng.tensor(dtype, len)
}

#[test]
fn records_into_the_callers_encoder() {
    let Some(be) = backend("records_into_the_callers_encoder") else {
        return;
    };
    let plan = Problem::new(2, 70, 3, 64)
        .with_dtype(DType::F16)
        .with_causal(true)
        .plan()
        .unwrap();
    let (q, k, v) = (
        random(DType::F16, plan.q_elems(), 1),
        random(DType::F16, plan.k_elems(), 2),
        random(DType::F16, plan.v_elems(), 3),
    );
    // The trait path.
    let (qd, kd, vd) = (
        be.upload(&q).unwrap(),
        be.upload(&k).unwrap(),
        be.upload(&v).unwrap(),
    );
    let mut od = be.alloc(DType::F16, plan.o_elems()).unwrap();
    be.forward(&plan, &qd, &kd, &vd, &mut od).unwrap();
    let want = be.download(&od).unwrap();
    // The application's path: its buffers, its encoder, its submit.
    let dev = be.device();
    let init = |t: &HostTensor| {
        dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: t.as_bytes(),
            usage: wgpu::BufferUsages::STORAGE,
        })
    };
    let (qb, kb, vb) = (init(&q), init(&k), init(&v));
    let bytes = (plan.o_elems() * 2) as u64;
    let ob = dev.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: bytes,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let mut enc = dev.create_command_encoder(&Default::default());
    be.encode_forward(
        &mut enc,
        &plan,
        ForwardBuffers {
            q: &qb,
            k: &kb,
            v: &vb,
            o: &ob,
        },
    )
    .unwrap();
    be.queue().submit([enc.finish()]);
    let got = be
        .download(
            &sigmoid_attn::wgpu::WgpuBuffer::from_raw(ob, DType::F16, plan.o_elems()).unwrap(),
        )
        .unwrap();
    assert_eq!(got, want, "encode_forward and Backend::forward differ");
    // A buffer too small for the plan is an error, not a truncated run.
    let small = dev.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 64,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let mut enc = dev.create_command_encoder(&Default::default());
    let err = be
        .encode_forward(
            &mut enc,
            &plan,
            ForwardBuffers {
                q: &small,
                k: &kb,
                v: &vb,
                o: &small,
            },
        )
        .unwrap_err();
    assert!(matches!(err, Error::InvalidBuffer { .. }), "{err}");
}

#[test]
fn backward_without_d_bias_matches_with() {
    let Some(be) = backend("backward_without_d_bias_matches_with") else {
        return;
    };
    let plan = Problem::new(2, 50, 4, 32)
        .with_kv_heads(2)
        .with_dtype(DType::F32)
        .plan()
        .unwrap();
    let dt = DType::F32;
    let up = |len, seed| be.upload(&random(dt, len, seed)).unwrap();
    let (q, k, v, g) = (
        up(plan.q_elems(), 4),
        up(plan.k_elems(), 5),
        up(plan.v_elems(), 6),
        up(plan.o_elems(), 7),
    );
    let run = |with_bias: bool| {
        let mut dq = be.alloc(dt, plan.q_elems()).unwrap();
        let mut dk = be.alloc(dt, plan.k_elems()).unwrap();
        let mut dv = be.alloc(dt, plan.v_elems()).unwrap();
        let mut db = be.alloc(DType::F32, plan.batch()).unwrap();
        be.backward(
            &plan,
            BackwardArgs {
                q: &q,
                k: &k,
                v: &v,
                d_o: &g,
                dq: &mut dq,
                dk: &mut dk,
                dv: &mut dv,
                d_bias: if with_bias { Some(&mut db) } else { None },
            },
        )
        .unwrap();
        [dq, dk, dv].map(|b| be.download(&b).unwrap())
    };
    assert_eq!(run(true), run(false));
}

#[test]
fn times_kernels_with_timestamps() {
    let Some(be) = backend("times_kernels_with_timestamps") else {
        return;
    };
    let plan = Problem::new(1, 64, 2, 32)
        .with_dtype(DType::F32)
        .plan()
        .unwrap();
    let up = |len, seed| be.upload(&random(DType::F32, len, seed)).unwrap();
    let (q, k, v) = (
        up(plan.q_elems(), 8),
        up(plan.k_elems(), 9),
        up(plan.v_elems(), 10),
    );
    let mut o = be.alloc(DType::F32, plan.o_elems()).unwrap();
    let ms = be
        .time_ms(&mut || be.forward(&plan, &q, &k, &v, &mut o))
        .unwrap();
    assert!(ms.is_finite() && ms >= 0.0, "time_ms gave {ms}");
    if be.has_timestamps() {
        let runs = be.time_forward(&plan, &q, &k, &v, &mut o, 3).unwrap();
        assert_eq!(runs.len(), 3);
        assert!(runs.iter().all(|t| t.is_finite() && *t >= 0.0), "{runs:?}");
        println!("forward kernel times (ms): {runs:?}");
    }
}
