//! Criterion benches: forward and backward on each backend present, a few shapes each.
//! GPU backends are timed with their own clock (`Backend::time_ms`: CUDA events, wgpu
//! timestamp queries); a backend that is missing or declines a shape is skipped with a note.
//!
//! `cargo bench --bench attention` (add `-- cpu` or `-- wgpu` to filter).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sigmoid_attn::{Backend, BackwardArgs, DType, HostTensor, Lengths, Problem};
use std::time::Duration;

/// Shapes small enough for the CPU and a software Vulkan adapter.
fn shapes() -> Vec<(&'static str, Problem)> {
    vec![
        ("b2_n256_h4_d64", Problem::new(2, 256, 4, 64)),
        (
            "b2_n256_h4_d128_pad25",
            Problem::new(2, 256, 4, 128).with_lengths(Lengths::padded(&[256, 192])),
        ),
        (
            "b1_n512_h2_d64_causal",
            Problem::new(1, 512, 2, 64).with_causal(true),
        ),
    ]
}

fn input(dtype: DType, len: usize, salt: usize) -> HostTensor {
    let v: Vec<f64> = (0..len)
        .map(|i| (((i * 2654435761 + salt * 40503) % 2001) as f64 / 1000.0) - 1.0)
        .collect();
    HostTensor::from_f64(dtype, &v)
}

fn bench_backend<B: Backend>(c: &mut Criterion, be: &B, dtype: DType) {
    let mut group = c.benchmark_group(format!("{}_{dtype}", be.name()));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (name, problem) in shapes() {
        let plan = problem.with_dtype(dtype).plan().expect("valid bench shape");
        let upload = |salt| be.upload(&input(dtype, plan.q_elems(), salt));
        let (Ok(q), Ok(k), Ok(v), Ok(g)) = (upload(1), upload(2), upload(3), upload(4)) else {
            eprintln!("{}: upload failed, skipping {name}", be.name());
            continue;
        };
        let alloc = || be.alloc(dtype, plan.q_elems());
        let (Ok(mut o), Ok(mut dq), Ok(mut dk), Ok(mut dv)) = (alloc(), alloc(), alloc(), alloc())
        else {
            eprintln!("{}: alloc failed, skipping {name}", be.name());
            continue;
        };
        group.throughput(Throughput::Elements(plan.forward_flops() as u64));
        match be.supports_forward(&plan) {
            Err(e) => eprintln!("skipped {name} forward: {e}"),
            Ok(()) => {
                group.bench_function(BenchmarkId::new("forward", name), |bench| {
                    bench.iter_custom(|iters| {
                        let mut total = 0.0;
                        for _ in 0..iters {
                            total += be
                                .time_ms(&mut || be.forward(&plan, &q, &k, &v, &mut o))
                                .expect("forward");
                        }
                        Duration::from_secs_f64(total * 1e-3)
                    })
                });
            }
        }
        group.throughput(Throughput::Elements(plan.backward_flops() as u64));
        match be.supports_backward(&plan) {
            Err(e) => eprintln!("skipped {name} backward: {e}"),
            Ok(()) => {
                group.bench_function(BenchmarkId::new("backward", name), |bench| {
                    bench.iter_custom(|iters| {
                        let mut total = 0.0;
                        for _ in 0..iters {
                            let mut run = || {
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
                                        d_bias: None,
                                    },
                                )
                            };
                            total += be.time_ms(&mut run).expect("backward");
                        }
                        Duration::from_secs_f64(total * 1e-3)
                    })
                });
            }
        }
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    bench_backend(c, &sigmoid_attn::CpuBackend::new(), DType::F32);
    #[cfg(feature = "wgpu")]
    match sigmoid_attn::wgpu::WgpuBackend::new() {
        Ok(be) => bench_backend(c, &be, DType::F32),
        Err(e) => eprintln!("skipped wgpu: {e}"),
    }
    #[cfg(feature = "cuda")]
    match sigmoid_attn::cuda::CudaBackend::new() {
        Ok(be) => bench_backend(c, &be, DType::BF16),
        Err(e) => eprintln!("skipped cuda: {e}"),
    }
}

criterion_group!(attention, benches);
criterion_main!(attention);
