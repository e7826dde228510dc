//! The standard workload on the wgpu backend, timed with timestamp queries: `[B, N, H, D]`,
//! non-causal, `B = tokens / N`, `H = width / D`, padding drawn per sequence as
//! `L ~ U[N(1−p), N]`. Prints kernel milliseconds (median), TFLOPS (forward `4·D·Σ L²·H`,
//! backward counted as 2.5× forward) and the two floors of each pass: FLOPs over the fp32
//! (non-tensor) peak and bytes over memory bandwidth. Where the device has the cooperative-matrix
//! (tensor-core) path, the forward and the backward are timed on it too, beside the scalar
//! kernels, with the forward's floor over the tensor peak (`--tensor-tflops 790`), in the
//! library's own tile shapes; `--coop-shapes 8x16x2,16x16x1,8x32x1` (subgroups × keys per tile
//! × 16-row blocks per subgroup) are tried at N = 4096 first instead and the fastest kept.
//!
//! ```text
//! cargo run --release --example bench_wgpu -- --dtype f16,f32 --reps 7
//! cargo run --release --example bench_wgpu -- --sweep      # try tile shapes first, keep the best
//! ```
//!
//! Options: `--dtype f16,f32,bf16`, `--d 64,128`, `--n 1024,4096,16384`, `--pad 0,25`,
//! `--tokens 16384`, `--width 2048`, `--reps 7`, `--peak-tflops 67`, `--bandwidth-tbs 4.2`,
//! `--sweep`, `--out PATH` (markdown copy of the table), `--tensor-tflops 790`,
//! `--coop-shapes 8x16x2,16x16x1,8x32x1`, `--coop-bwd 8x16,4x32` (the backward's shapes: dQ
//! subgroups × keys, dK/dV subgroup pairs × queries), `--coop-only` (skip the scalar kernels).

use sigmoid_attn::wgpu::pipelines::{Kernel, Tiles};
use sigmoid_attn::wgpu::{WgpuBackend, WgpuBuffer};
use sigmoid_attn::{Backend, BackwardArgs, DType, HostTensor, Lengths, Plan, Problem};
use std::fmt::Write as _;

struct Opts {
    dtypes: Vec<DType>,
    dims: Vec<usize>,
    seqs: Vec<usize>,
    pads: Vec<u32>,
    tokens: usize,
    width: usize,
    reps: u32,
    peak: f64,
    bandwidth: f64,
    sweep: bool,
    out: Option<String>,
    tensor_peak: f64,
    coop_shapes: Vec<(u32, u32, u32)>,
    coop_bwd: Option<[(u32, u32); 2]>,
    coop_only: bool,
}

fn list<T: std::str::FromStr>(s: &str) -> Result<Vec<T>, String> {
    s.split(',')
        .map(|x| x.trim().parse().map_err(|_| format!("bad list item `{x}`")))
        .collect()
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        dtypes: vec![DType::F16, DType::F32],
        dims: vec![64, 128],
        seqs: vec![1024, 4096, 16384],
        pads: vec![0, 25],
        tokens: 16384,
        width: 2048,
        reps: 7,
        peak: 67.0,
        bandwidth: 4.2,
        sweep: false,
        out: None,
        tensor_peak: 790.0,
        coop_shapes: Vec::new(),
        coop_bwd: None,
        coop_only: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--sweep" {
            o.sweep = true;
            continue;
        }
        if flag == "--coop-only" {
            o.coop_only = true;
            continue;
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--dtype" => {
                o.dtypes = value
                    .split(',')
                    .map(|t| match t.trim() {
                        "f32" => Ok(DType::F32),
                        "f16" => Ok(DType::F16),
                        "bf16" => Ok(DType::BF16),
                        x => Err(format!("unknown dtype {x}")),
                    })
                    .collect::<Result<_, _>>()?
            }
            "--d" => o.dims = list(&value)?,
            "--n" => o.seqs = list(&value)?,
            "--pad" => o.pads = list(&value)?,
            "--tokens" => o.tokens = value.parse().map_err(|_| "bad --tokens")?,
            "--width" => o.width = value.parse().map_err(|_| "bad --width")?,
            "--reps" => o.reps = value.parse().map_err(|_| "bad --reps")?,
            "--peak-tflops" => o.peak = value.parse().map_err(|_| "bad --peak-tflops")?,
            "--bandwidth-tbs" => o.bandwidth = value.parse().map_err(|_| "bad --bandwidth-tbs")?,
            "--out" => o.out = Some(value),
            "--tensor-tflops" => {
                o.tensor_peak = value.parse().map_err(|_| "bad --tensor-tflops")?
            }
            "--coop-shapes" => {
                o.coop_shapes = value
                    .split(',')
                    .map(|x| {
                        let v: Vec<u32> = x
                            .trim()
                            .split('x')
                            .map(|n| n.parse().map_err(|_| "bad --coop-shapes"))
                            .collect::<Result<_, _>>()?;
                        match v[..] {
                            [a, b, c] => Ok::<_, String>((a, b, c)),
                            _ => Err("bad --coop-shapes".into()),
                        }
                    })
                    .collect::<Result<_, _>>()?
            }
            "--coop-bwd" => {
                let v: Vec<u32> = value
                    .split([',', 'x'])
                    .map(|n| n.trim().parse().map_err(|_| "bad --coop-bwd"))
                    .collect::<Result<_, _>>()?;
                o.coop_bwd = match v[..] {
                    [a, b, c, d] => Some([(a, b), (c, d)]),
                    _ => return Err("bad --coop-bwd (e.g. 8x16,4x32)".into()),
                };
            }
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(o)
}

/// splitmix64 for inputs (uniform in [-1, 1), never zeros) and lengths.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
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

/// Device buffers shared by every configuration of one dtype (all hold tokens × width).
struct Buffers {
    q: WgpuBuffer,
    k: WgpuBuffer,
    v: WgpuBuffer,
    g: WgpuBuffer,
    o: WgpuBuffer,
    dq: WgpuBuffer,
    dk: WgpuBuffer,
    dv: WgpuBuffer,
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn plan_for(o: &Opts, dtype: DType, d: usize, n: usize, pad: u32) -> Res<Plan> {
    let (batch, heads) = (o.tokens / n, o.width / d);
    let mut rng = Rng(0x5EED ^ (n * 31 + d) as u64);
    let lens: Vec<u32> = (0..batch)
        .map(|_| {
            let lo = n as f64 * (1.0 - f64::from(pad) / 100.0);
            (lo + rng.next() * (n as f64 - lo))
                .round()
                .clamp(1.0, n as f64) as u32
        })
        .collect();
    let mut p = Problem::new(batch, n, heads, d).with_dtype(dtype);
    if pad > 0 {
        p = p.with_lengths(Lengths::padded(&lens));
    }
    Ok(p.plan()?)
}

fn time_fwd(be: &WgpuBackend, plan: &Plan, b: &mut Buffers, reps: u32) -> Res<f64> {
    be.time_forward(plan, &b.q, &b.k, &b.v, &mut b.o, 1)?;
    Ok(median(
        be.time_forward(plan, &b.q, &b.k, &b.v, &mut b.o, reps)?,
    ))
}

fn time_bwd(be: &WgpuBackend, plan: &Plan, b: &mut Buffers, reps: u32) -> Res<f64> {
    let mut run = |iters: u32| {
        be.time_backward(
            plan,
            BackwardArgs {
                q: &b.q,
                k: &b.k,
                v: &b.v,
                d_o: &b.g,
                dq: &mut b.dq,
                dk: &mut b.dk,
                dv: &mut b.dv,
                d_bias: None,
            },
            iters,
        )
    };
    run(1)?;
    Ok(median(run(reps)?))
}

/// Shapes tried by `--sweep`: (rows, cols, tm, tn, dc, kc).
fn sweep_shapes(kernel: Kernel) -> &'static [(u32, u32, u32, u32, u32, u32)] {
    match kernel {
        Kernel::Forward | Kernel::BackwardDq => &[
            (64, 64, 8, 4, 16, 16),
            (64, 64, 8, 4, 32, 16),
            (128, 64, 8, 4, 16, 16),
            (64, 64, 4, 4, 16, 16),
            (128, 32, 8, 4, 16, 8),
            (64, 64, 8, 8, 16, 16),
            (64, 32, 8, 4, 16, 8),
        ],
        _ => &[
            (32, 64, 4, 4, 16, 8),
            (64, 64, 4, 4, 16, 8),
            (64, 64, 8, 4, 16, 8),
            (32, 64, 8, 4, 16, 8),
            (64, 32, 8, 4, 16, 8),
            (32, 32, 4, 4, 16, 8),
        ],
    }
}

/// Times each shape of each kernel at N = 4096 and forces the fastest for the table.
fn sweep(be: &WgpuBackend, o: &Opts, dtype: DType, b: &mut Buffers, log: &mut String) -> Res<()> {
    let n = 4096.min(o.tokens);
    for &d in &o.dims {
        let plan = plan_for(o, dtype, d, n, 0)?;
        for kernel in [Kernel::Forward, Kernel::BackwardDq, Kernel::BackwardDkDv] {
            let mut best: Option<(f64, Tiles)> = None;
            for &(rows, cols, tm, tn, dc, kc) in sweep_shapes(kernel) {
                let t = Tiles {
                    d: d as u32,
                    rows,
                    cols,
                    tm,
                    tn,
                    dc,
                    kc,
                };
                if be.set_tiles(kernel, Some(t)).is_err() {
                    continue;
                }
                let ms = if kernel == Kernel::Forward {
                    time_fwd(be, &plan, b, 3)
                } else {
                    time_bwd(be, &plan, b, 3)
                };
                let ms = match ms {
                    Ok(ms) => ms,
                    Err(e) => {
                        let _ = writeln!(log, "sweep {dtype} D={d} {}: {t:?}: {e}", kernel.name());
                        continue;
                    }
                };
                let line = format!(
                    "sweep {dtype} D={d} N={n} {:8} rows={rows:3} cols={cols:3} tm={tm} tn={tn} dc={dc:2} kc={kc:2}: {ms:8.3} ms",
                    kernel.name()
                );
                println!("{line}");
                let _ = writeln!(log, "{line}");
                if best.is_none_or(|(b, _)| ms < b) {
                    best = Some((ms, t));
                }
            }
            if let Some((_, t)) = best {
                be.set_tiles(kernel, Some(t))?;
            }
        }
    }
    Ok(())
}

/// Times each cooperative-matrix shape at N = 4096 for head dim `d` and forces the fastest.
fn coop_sweep(
    be: &WgpuBackend,
    o: &Opts,
    dtype: DType,
    d: usize,
    b: &mut Buffers,
    log: &mut String,
) -> Res<()> {
    let plan = plan_for(o, dtype, d, 4096.min(o.tokens), 0)?;
    let mut best: Option<(f64, (u32, u32, u32))> = None;
    for &shape in &o.coop_shapes {
        be.set_coop_tiles(Some(shape));
        match be.coop_tiles(&plan) {
            Some(t) if (t.nsg, t.bk, t.rb) == shape => {}
            _ => continue,
        }
        let line = match time_fwd(be, &plan, b, 3) {
            Ok(ms) => {
                if best.is_none_or(|(b, _)| ms < b) {
                    best = Some((ms, shape));
                }
                format!(
                    "coop sweep {dtype} D={d} N=4096 subgroups={} keys={} row-blocks={}: {ms:8.3} ms",
                    shape.0, shape.1, shape.2
                )
            }
            Err(e) => format!("coop sweep {dtype} D={d} {shape:?}: {e}"),
        };
        println!("{line}");
        let _ = writeln!(log, "{line}");
    }
    be.set_coop_tiles(best.map(|(_, s)| s));
    Ok(())
}

fn main() -> Res<()> {
    let o = parse()?;
    let be = WgpuBackend::new()?;
    let lim = be.device().limits();
    println!(
        "device: {} | workgroup storage {} B | invocations {} | max binding {} B | timestamps {} | shader-f16 {}",
        be.device_name(),
        lim.max_compute_workgroup_storage_size,
        lim.max_compute_invocations_per_workgroup,
        lim.max_storage_buffer_binding_size,
        be.has_timestamps(),
        be.has_shader_f16()
    );
    if !be.has_timestamps() {
        return Err("this device has no TIMESTAMP_QUERY: cannot time kernels".into());
    }
    let mut table = String::new();
    let mut log = String::new();
    let _ = writeln!(
        table,
        "Device: {}. Floors: compute = FLOPs / {} TFLOPS (fp32, non-tensor), memory = bytes / {} TB/s.\n",
        be.device_name(),
        o.peak,
        o.bandwidth
    );
    table.push_str("| dtype | D | N | pad | B×H | fwd ms | fwd TFLOPS | fwd floor ms (compute / memory) | bwd ms | bwd TFLOPS | bwd floor ms (compute / memory) | tiles fwd · dq · dkdv | coop fwd ms | coop fwd TFLOPS | coop floor ms (tensor / memory) | coop bwd ms | coop bwd TFLOPS | coop tiles |\n");
    table.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    println!("cooperative-matrix path: {}", be.has_coop());
    for &dtype in &o.dtypes {
        let elems = o.tokens * o.width;
        let mut rng = Rng(0xC0FFEE ^ dtype.size_bytes() as u64);
        let mut up = || be.upload(&rng.tensor(dtype, elems));
        let mut bufs = Buffers {
            q: up()?,
            k: up()?,
            v: up()?,
            g: up()?,
            o: up()?,
            dq: up()?,
            dk: up()?,
            dv: up()?,
        };
        be.set_tiles(Kernel::Forward, None)?;
        // Bring the clocks up before timing anything: an idle GPU's first milliseconds run
        // slow (seen on an H200: the first configuration timed at a fifth of its speed).
        let warm = plan_for(&o, dtype, o.dims[0], o.seqs[0], 0)?;
        let started = std::time::Instant::now();
        while started.elapsed().as_secs_f64() < 1.5 {
            be.time_forward(&warm, &bufs.q, &bufs.k, &bufs.v, &mut bufs.o, 8)?;
        }
        if o.sweep {
            sweep(&be, &o, dtype, &mut bufs, &mut log)?;
        }
        for &d in &o.dims {
            be.set_coop_tiles(None);
            be.set_coop_backward_tiles(o.coop_bwd);
            if be.has_coop() && !o.coop_shapes.is_empty() {
                be.set_coop(true);
                coop_sweep(&be, &o, dtype, d, &mut bufs, &mut log)?;
            }
            for &n in &o.seqs {
                for &pad in &o.pads {
                    let plan = plan_for(&o, dtype, d, n, pad)?;
                    let fwd_flops = plan.forward_flops();
                    let bwd_flops = plan.backward_flops();
                    let bytes = |tensors: f64| tensors * (elems * dtype.size_bytes()) as f64;
                    let floor = |flops: f64, tensors: f64| {
                        format!(
                            "{:.2} / {:.2}",
                            flops / (o.peak * 1e12) * 1e3,
                            bytes(tensors) / (o.bandwidth * 1e12) * 1e3
                        )
                    };
                    be.set_coop(false);
                    let f = (!o.coop_only).then(|| time_fwd(&be, &plan, &mut bufs, o.reps));
                    let bw = (!o.coop_only).then(|| time_bwd(&be, &plan, &mut bufs, o.reps));
                    let on = be.has_coop() && be.set_coop(true);
                    let cf = (on && be.uses_coop(&plan))
                        .then(|| time_fwd(&be, &plan, &mut bufs, o.reps));
                    let cb = (on && be.uses_coop_backward(&plan))
                        .then(|| time_bwd(&be, &plan, &mut bufs, o.reps));
                    let fwd_tiles = be
                        .coop_tiles(&plan)
                        .map(|t| format!("{}x{} ({}×{} rows)", t.rows(), t.bk, t.nsg, 16 * t.rb))
                        .unwrap_or_else(|| "—".into());
                    let bwd_tiles = be
                        .coop_backward_tiles(&plan)
                        .map(|(q, k)| format!("dq {}x{} · dkdv {}x{}", q.nsg, q.bk, k.nsg, k.bk))
                        .unwrap_or_else(|| "—".into());
                    let coop_tiles = format!("{fwd_tiles} · {bwd_tiles}");
                    let cell = |r: &Res<f64>, flops: f64| match r {
                        Ok(ms) => (
                            format!("{ms:.3}"),
                            format!("{:.1}", flops / (ms * 1e-3) / 1e12),
                        ),
                        Err(e) => (format!("error: {e}"), "—".into()),
                    };
                    let opt_cell = |r: &Option<Res<f64>>, flops: f64| match r {
                        Some(r) => cell(r, flops),
                        None => ("—".into(), "—".into()),
                    };
                    let (fm, ft) = opt_cell(&f, fwd_flops);
                    let (bm, bt) = opt_cell(&bw, bwd_flops);
                    let tiles = [Kernel::Forward, Kernel::BackwardDq, Kernel::BackwardDkDv]
                        .map(|k| {
                            be.tiles(k, d)
                                .map(|t| format!("{}x{}/{}x{}", t.rows, t.cols, t.tm, t.tn))
                                .unwrap_or_else(|_| "—".into())
                        })
                        .join(" · ");
                    let (cm, ct) = opt_cell(&cf, fwd_flops);
                    let (cbm, cbt) = opt_cell(&cb, bwd_flops);
                    let coop_floor = format!(
                        "{:.2} / {:.2}",
                        fwd_flops / (o.tensor_peak * 1e12) * 1e3,
                        bytes(4.0) / (o.bandwidth * 1e12) * 1e3
                    );
                    let row = format!(
                        "| {dtype} | {d} | {n} | {pad}% | {}×{} | {fm} | {ft} | {} | {bm} | {bt} | {} | {tiles} | {cm} | {ct} | {coop_floor} | {cbm} | {cbt} | {coop_tiles} |",
                        plan.batch(),
                        plan.heads(),
                        floor(fwd_flops, 4.0),
                        floor(bwd_flops, 7.0),
                    );
                    println!("{row}");
                    table.push_str(&row);
                    table.push('\n');
                }
            }
        }
    }
    println!("\n{log}\n{table}");
    if let Some(path) = &o.out {
        std::fs::write(path, format!("{table}\n{log}"))?;
    }
    Ok(())
}
