//! Runs a realistic sigmoid-attention forward on the best backend present (CUDA → wgpu → CPU),
//! checks a sample of output rows against the definition in f64, and prints backend, device,
//! time and TFLOPS.
//!
//! ```text
//! cargo run --release --example quickstart                # B=2 N=1024 H=8 D=64, 25% padding
//! cargo run --release --example quickstart -- 1 4096 8 64 # B N H D
//! ```

use sigmoid_attn::cpu::reference::rows;
use sigmoid_attn::{attention, DType, HostTensor, Lengths, Plan, Problem};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let [b, n, h, d] = match args.as_slice() {
        [] => [2, 1024, 8, 64],
        [b, n, h, d] => [*b, *n, *h, *d],
        _ => return Err("usage: quickstart [BATCH SEQ HEADS HEAD_DIM]".into()),
    };
    // Padded batch as biological sequence models see it: lengths between 75% and 100% of N.
    let lens: Vec<u32> = (0..b)
        .map(|i| (n - (i * 7919) % (n / 4 + 1)) as u32)
        .collect();
    let problem = Problem::new(b, n, h, d)
        .with_dtype(DType::BF16)
        .with_lengths(Lengths::padded(&lens));
    let plan = problem.plan()?;

    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut random = |len: usize| {
        let v: Vec<f64> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
            })
            .collect();
        HostTensor::from_f64(DType::BF16, &v)
    };
    let (q, k, v) = (
        random(plan.q_elems()),
        random(plan.k_elems()),
        random(plan.v_elems()),
    );

    let start = Instant::now();
    let out = attention(&problem, &q, &k, &v)?;
    let secs = start.elapsed().as_secs_f64();

    let worst = check_sample(&plan, &q, &k, &v, &out.o);
    println!("problem   B={b} N={n} H={h} D={d} bf16, lengths {lens:?}");
    println!("backend   {} on {}", out.backend, out.device);
    println!(
        "time      {:.3} s (host to host, first call) = {:.3} TFLOPS",
        secs,
        plan.forward_flops() / secs / 1e12
    );
    println!("check     max |error| over 16 sampled rows vs f64 definition: {worst:.2e}");
    if worst > 2e-2 {
        return Err(format!("sampled rows differ from the definition by {worst}").into());
    }
    Ok(())
}

/// Largest difference between sampled output rows and the definition evaluated in f64.
fn check_sample(
    plan: &Plan,
    q: &HostTensor,
    k: &HostTensor,
    v: &HostTensor,
    o: &HostTensor,
) -> f64 {
    let st = plan.strides();
    let mut worst: f64 = 0.0;
    for s in 0..16 {
        let b = s % plan.batch();
        let h = (s * 5) % plan.heads();
        let seq = plan.seqs()[b];
        let i = (s * 7727) % seq.rows_q;
        let expected = rows::output(plan, q, k, v, b, h, i);
        let base = Plan::row_offset(&st.o, b, seq.q_start, i, h);
        for (c, e) in expected.iter().enumerate() {
            worst = worst.max((o.get(base + c) - e).abs());
        }
    }
    worst
}
