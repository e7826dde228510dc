//! The conformance suite on the Hopper (CUDA) backend, the raw-pointer entry point, and the
//! standard-workload benchmark (`--ignored standard_workload`). Without the driver library or a
//! Hopper GPU every test prints why it skipped.
mod common;

#[cfg(feature = "cuda")]
conformance!(cuda, sigmoid_attn::cuda::CudaBackend::new);

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_feature_disabled() {
    println!("conformance cuda: skipped: built without the `cuda` feature");
}

#[cfg(feature = "cuda")]
mod raw {
    use super::common::Rng;
    use sigmoid_attn::cuda::{CudaBackend, RawTensors};
    use sigmoid_attn::{Backend, DType, Error, HostTensor, Lengths, Problem};

    use cudarc::driver::result::stream::{self, StreamKind};
    use cudarc::driver::sys::CUevent_flags;
    use cudarc::driver::DevicePtr;

    fn backend() -> Option<CudaBackend> {
        match CudaBackend::new() {
            Ok(b) => Some(b),
            Err(e @ Error::DeviceUnavailable { .. }) => {
                println!("cuda: skipped: {e}");
                None
            }
            Err(e) => panic!("cuda backend: {e}"),
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
        let s = be.stream();
        let ptr = |b: &sigmoid_attn::cuda::CudaBuffer| b.as_slice().device_ptr(s).0;
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
        let ptr = |b: &sigmoid_attn::cuda::CudaBuffer| b.as_slice().device_ptr(&s).0;
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
