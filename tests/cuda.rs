//! The conformance suite on the Hopper (CUDA) backend, the raw-pointer entry point, the
//! deterministic backward, and the standard-workload benchmark (`--ignored standard_workload`).
//! Without the driver library or a Hopper GPU every test prints why it skipped (as do the
//! backward cases when `SIGMOID_ATTN_CUDA_BACKWARD=0` switches the backward off).
mod common;

#[cfg(feature = "cuda")]
conformance!(cuda, sigmoid_attn::cuda::CudaBackend::new);

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_feature_disabled() {
    println!("conformance cuda: skipped: built without the `cuda` feature");
}

/// The backend, or `None` (after saying why) on a machine without a usable Hopper GPU.
#[cfg(feature = "cuda")]
fn backend() -> Option<sigmoid_attn::cuda::CudaBackend> {
    match sigmoid_attn::cuda::CudaBackend::new() {
        Ok(b) => Some(b),
        Err(e @ sigmoid_attn::Error::DeviceUnavailable { .. }) => {
            println!("cuda: skipped: {e}");
            None
        }
        Err(e) => panic!("cuda backend: {e}"),
    }
}

/// One padded backward case in both dQ modes (the case that compute-sanitizer runs in
/// kernels/dev/bwd_h200.sh): lengths 0, full, 1 and partial, NaN-poisoned outputs.
#[cfg(feature = "cuda")]
#[test]
fn backward_padded_case() {
    use common::{cases, run_case, Outcome, Pass};
    use sigmoid_attn::DType;
    let Some(be) = backend() else { return };
    let case = cases()
        .into_iter()
        .find(|c| c.name == "padded: empty, full, one, partial")
        .expect("the padded case of the table");
    for deterministic in [false, true] {
        be.set_deterministic(deterministic);
        match run_case(&be, &case, DType::BF16, Pass::Backward) {
            Outcome::Passed(s) => {
                println!("cuda backward padded case (deterministic {deterministic}): ok {s}")
            }
            Outcome::Skipped(s) => {
                println!("cuda backward padded case: skipped: {s}");
                return;
            }
            Outcome::Failed(s) => panic!("deterministic {deterministic}: {s}"),
        }
    }
}

#[cfg(feature = "cuda")]
mod raw {
    use super::common::Rng;
    use sigmoid_attn::cuda::{CudaBackend, CudaBuffer, RawGradTensors, RawTensors};
    use sigmoid_attn::{Backend, DType, Error, HostTensor, Lengths, Plan, Problem};

    use cudarc::driver::result::stream::{self, StreamKind};
    use cudarc::driver::sys::CUevent_flags;
    use cudarc::driver::DevicePtr;

    use super::backend;

    /// The device address of `b` (its memory stays owned by `b`).
    fn dev_ptr(be: &CudaBackend, b: &CudaBuffer) -> u64 {
        b.as_slice().device_ptr(be.stream()).0
    }

    /// The device addresses of Q, K, V, dO, dQ, dK, dV (and d_bias) for backward_raw.
    fn grad_ptrs(
        be: &CudaBackend,
        b: [&CudaBuffer; 7],
        d_bias: Option<&CudaBuffer>,
    ) -> RawGradTensors {
        let [q, k, v, d_o, dq, dk, dv] = b.map(|b| dev_ptr(be, b));
        RawGradTensors {
            q,
            k,
            v,
            d_o,
            dq,
            dk,
            dv,
            d_bias: d_bias.map(|b| dev_ptr(be, b)),
        }
    }

    /// forward_raw on a caller-created stream gives the same bytes as forward.
    #[test]
    fn forward_raw_on_a_borrowed_stream_matches_forward() {
        let Some(be) = backend() else { return };
        let plan = Problem::new(3, 300, 4, 128)
            .with_kv_heads(2)
            .with_dtype(DType::BF16)
            .with_lengths(Lengths::padded(&[300, 129, 0]))
            .plan()
            .unwrap();
        let mut rng = Rng::new(7);
        let q = be.upload(&rng.tensor(DType::BF16, plan.q_elems())).unwrap();
        let k = be.upload(&rng.tensor(DType::BF16, plan.k_elems())).unwrap();
        let v = be.upload(&rng.tensor(DType::BF16, plan.v_elems())).unwrap();
        let mut o1 = be.alloc(DType::BF16, plan.o_elems()).unwrap();
        let o2 = be
            .upload(&HostTensor::filled(DType::BF16, plan.o_elems(), f32::NAN))
            .unwrap();
        be.forward(&plan, &q, &k, &v, &mut o1).unwrap();
        be.warm_up(&plan).unwrap();
        be.synchronize().unwrap();
        let ptr = |b: &CudaBuffer| dev_ptr(&be, b);
        let ptrs = RawTensors {
            q: ptr(&q),
            k: ptr(&k),
            v: ptr(&v),
            o: ptr(&o2),
        };
        be.context().bind_to_thread().unwrap();
        let raw = stream::create(StreamKind::NonBlocking).unwrap();
        // SAFETY: the buffers hold the plan's elements and outlive the synchronisation below.
        unsafe { be.forward_raw(&plan, ptrs, raw) }.unwrap();
        unsafe { stream::synchronize(raw) }.unwrap();
        unsafe { stream::destroy(raw) }.unwrap();
        let (a, b) = (be.download(&o1).unwrap(), be.download(&o2).unwrap());
        assert_eq!(a.as_bytes(), b.as_bytes());
        println!("cuda: forward_raw on a borrowed stream matches forward");
    }

    /// backward_raw on a caller-created stream gives the same bytes as backward (deterministic
    /// mode, so that bytes can be compared), and refuses, without allocating, a dQ mode whose
    /// workspace its warm-up did not size.
    #[test]
    fn backward_raw_on_a_borrowed_stream_matches_backward() {
        let Some(be) = backend() else { return };
        let plan = Problem::new(2, 300, 4, 128)
            .with_kv_heads(2)
            .with_dtype(DType::BF16)
            .with_lengths(Lengths::padded(&[300, 77]))
            .plan()
            .unwrap();
        if let Err(e) = be.supports_backward(&plan) {
            println!("cuda backward_raw: skipped: {e}");
            return;
        }
        let inputs = Rng::new(5).attention_inputs(&plan, plan.dtype());
        be.set_deterministic(true);
        let expected = backward_bytes(&be, &plan, &inputs).unwrap();

        be.warm_up_backward(&plan).unwrap();
        let [q, k, v, d_o, dq, dk, dv, db] =
            super::common::backward_buffers(&be, &plan, &inputs).unwrap();
        be.synchronize().unwrap();
        let ptrs = grad_ptrs(&be, [&q, &k, &v, &d_o, &dq, &dk, &dv], Some(&db));
        be.context().bind_to_thread().unwrap();
        let raw = stream::create(StreamKind::NonBlocking).unwrap();
        // SAFETY: the buffers hold the plan's elements and outlive the synchronisation below;
        // no other backward runs on this backend meanwhile.
        unsafe { be.backward_raw(&plan, ptrs, raw) }.unwrap();
        unsafe { stream::synchronize(raw) }.unwrap();
        for (name, (buf, want)) in ["dq", "dk", "dv", "d_bias"]
            .iter()
            .zip([&dq, &dk, &dv, &db].into_iter().zip(&expected))
        {
            let got = be.download(buf).unwrap();
            assert!(
                got.as_bytes() == &want[..],
                "{name}: backward_raw differs from backward"
            );
        }

        // The atomic mode needs the fp32 dQ workspace, which no call of this backend has
        // allocated: refused before anything is enqueued.
        be.set_deterministic(false);
        match unsafe { be.backward_raw(&plan, ptrs, raw) } {
            Err(Error::InvalidBuffer { tensor, .. }) => assert_eq!(tensor, "backward workspace"),
            other => panic!("backward_raw without a warm-up for the atomic mode: {other:?}"),
        }
        unsafe { stream::destroy(raw) }.unwrap();
        println!(
            "cuda: backward_raw on a borrowed stream matches backward; unsized workspace refused"
        );
    }

    /// Atomic mode into a dQ that starts 4 bytes past a 16-byte boundary (a view into a larger
    /// buffer: the dQ conversion then stores 4 bytes at a time instead of 16) gives the same dQ
    /// as the backward into its own buffer, up to the order of fp32 additions, and leaves the
    /// elements around the view untouched.
    #[test]
    fn atomic_backward_into_an_unaligned_dq_view() {
        let Some(be) = backend() else { return };
        let plan = Problem::new(2, 200, 2, 64)
            .with_dtype(DType::BF16)
            .with_lengths(Lengths::padded(&[200, 131]))
            .plan()
            .unwrap();
        if let Err(e) = be.supports_backward(&plan) {
            println!("cuda unaligned dQ: skipped: {e}");
            return;
        }
        let inputs = Rng::new(11).attention_inputs(&plan, plan.dtype());
        be.set_deterministic(false);
        let [want, ..] = super::common::backward_outputs(&be, &plan, &inputs).unwrap();

        let [q, k, v, d_o, dq, dk, dv, _] =
            super::common::backward_buffers(&be, &plan, &inputs).unwrap();
        // Two poisoned elements on either side of the view.
        let n = plan.q_elems();
        let outer = be
            .upload(&HostTensor::filled(DType::BF16, n + 4, f32::NAN))
            .unwrap();
        be.synchronize().unwrap();
        let ptrs = RawGradTensors {
            dq: dev_ptr(&be, &outer) + 4,
            ..grad_ptrs(&be, [&q, &k, &v, &d_o, &dq, &dk, &dv], None)
        };
        be.context().bind_to_thread().unwrap();
        // SAFETY: the view holds the plan's dQ elements inside `outer`; every buffer outlives
        // the synchronisation below.
        unsafe { be.backward_raw(&plan, ptrs, be.stream().cu_stream()) }.unwrap();
        be.synchronize().unwrap();
        let got = be.download(&outer).unwrap().to_f64();
        assert!(
            got[..2].iter().chain(&got[n + 2..]).all(|x| x.is_nan()),
            "wrote outside the view"
        );
        let want = want.to_f64();
        let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let worst = got[2..n + 2]
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(
                0.0f64,
                |m, d| if d.is_nan() { f64::INFINITY } else { m.max(d) },
            );
        assert!(
            worst <= 1e-2 * scale,
            "unaligned dQ differs by {worst} (max |dQ| {scale})"
        );
        println!("cuda: atomic backward into an unaligned dQ view: max difference {worst:.3e} of {scale:.3e}");
    }

    /// One backward on fresh NaN-poisoned outputs: the bytes of dQ, dK, dV and d_bias.
    fn backward_bytes(
        be: &CudaBackend,
        plan: &Plan,
        inputs: &[HostTensor; 4],
    ) -> Result<[Vec<u8>; 4], Error> {
        Ok(super::common::backward_outputs(be, plan, inputs)?.map(|t| t.as_bytes().to_vec()))
    }

    /// Deterministic mode: two backward runs give bitwise equal dQ, dK, dV and d_bias; the
    /// atomic mode agrees with it up to the order of fp32 additions.
    #[test]
    fn deterministic_backward_is_bitwise_repeatable() {
        let Some(be) = backend() else { return };
        let plans = [
            Problem::new(3, 333, 8, 128)
                .with_kv_heads(2)
                .with_dtype(DType::BF16)
                .with_lengths(Lengths::padded(&[333, 200, 0])),
            Problem::packed(&[0, 70, 71, 300], 4, 64)
                .with_dtype(DType::F16)
                .with_causal(true),
        ];
        for problem in plans {
            let plan = problem.plan().unwrap();
            if let Err(e) = be.supports_backward(&plan) {
                println!("cuda deterministic backward: skipped: {e}");
                return;
            }
            let dt = plan.dtype();
            let inputs = Rng::new(11).attention_inputs(&plan, dt);
            be.set_deterministic(true);
            let first = backward_bytes(&be, &plan, &inputs).unwrap();
            let second = backward_bytes(&be, &plan, &inputs).unwrap();
            for (name, (a, b)) in ["dq", "dk", "dv", "d_bias"]
                .iter()
                .zip(first.iter().zip(&second))
            {
                assert!(a == b, "{name} differs between two deterministic runs");
            }
            be.set_deterministic(false);
            let atomic = backward_bytes(&be, &plan, &inputs).unwrap();
            for (i, name) in ["dq", "dk", "dv"].iter().enumerate() {
                let x = HostTensor::from_bytes(dt, &first[i]).to_f64();
                let y = HostTensor::from_bytes(dt, &atomic[i]).to_f64();
                let scale = x.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-6);
                // A NaN in one mode only is a difference (f64::max would pass it over); the
                // same NaN in both is the untouched poison of a position outside the view.
                let diff =
                    x.iter()
                        .zip(&y)
                        .fold(0.0f64, |m, (a, b)| match (a.is_nan(), b.is_nan()) {
                            (false, false) => m.max((a - b).abs()),
                            (true, true) => m,
                            _ => f64::INFINITY,
                        });
                assert!(
                    diff <= 2e-2 * scale,
                    "{name}: atomic and deterministic modes differ by {diff:.3e} (max |x| {scale:.3e})"
                );
            }
            println!("cuda: deterministic backward repeatable bit for bit on {problem:?}");
        }
    }

    /// The standard workload of DESIGN.md: bf16, [B, N, H, D], B = 16384/N, H = 2048/D,
    /// N in {1k, 4k, 16k}, D in {64, 128}, 0% and 25% padding; median of timed runs.
    #[test]
    #[ignore]
    fn standard_workload() {
        let Some(be) = backend() else { return };
        let total = 16384 * 2048;
        let mut rng = Rng::new(1);
        let q = be.upload(&rng.tensor(DType::BF16, total)).unwrap();
        let k = be.upload(&rng.tensor(DType::BF16, total)).unwrap();
        let v = be.upload(&rng.tensor(DType::BF16, total)).unwrap();
        let o = be.alloc(DType::BF16, total).unwrap();
        let s = be.stream().clone();
        let ptr = |b: &CudaBuffer| dev_ptr(&be, b);
        let ptrs = RawTensors {
            q: ptr(&q),
            k: ptr(&k),
            v: ptr(&v),
            o: ptr(&o),
        };
        let modes = [
            ("fast", sigmoid_attn::SigmoidMode::Fast),
            ("accurate", sigmoid_attn::SigmoidMode::Accurate),
        ];
        println!("| D | N | padding | mode | ms (median) | TFLOPS |");
        println!("|---|---|---|---|---|---|");
        for d in [64usize, 128] {
            for n in [1024usize, 4096, 16384] {
                for pad in [false, true] {
                    for (mode_name, mode) in modes {
                        let b = 16384 / n;
                        let h = 2048 / d;
                        let mut p = Problem::new(b, n, h, d)
                            .with_dtype(DType::BF16)
                            .with_sigmoid(mode);
                        if pad {
                            let lens: Vec<u32> = (0..b)
                                .map(|_| {
                                    (n / 2 + (rng.uniform() * (n / 2 + 1) as f64) as usize).min(n)
                                        as u32
                                })
                                .collect();
                            p = p.with_lengths(Lengths::padded(&lens));
                        }
                        let plan = p.plan().unwrap();
                        be.warm_up(&plan).unwrap();
                        let cu = s.cu_stream();
                        for _ in 0..3 {
                            unsafe { be.forward_raw(&plan, ptrs, cu) }.unwrap();
                        }
                        let mut times = Vec::new();
                        for _ in 0..30 {
                            let e0 = s
                                .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                                .unwrap();
                            unsafe { be.forward_raw(&plan, ptrs, cu) }.unwrap();
                            let e1 = s
                                .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                                .unwrap();
                            e1.synchronize().unwrap();
                            times.push(e0.elapsed_ms(&e1).unwrap() as f64);
                        }
                        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
                        let ms = times[times.len() / 2];
                        let tflops = plan.forward_flops() / (ms * 1e-3) / 1e12;
                        println!(
                            "| {d} | {n} | {} | {mode_name} | {ms:.3} | {tflops:.1} |",
                            if pad { "25%" } else { "0%" }
                        );
                    }
                }
            }
        }
    }
}
