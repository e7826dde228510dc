//! What the cooperative-matrix primitives cost on this adapter: a micro-benchmark of
//! `coop_mat16x16` f16→f32 multiply-adds with their operands in registers, in workgroup memory
//! or in a storage buffer, and of the forward's per-tile round trip (S stored to workgroup
//! memory, σ applied by every invocation, P loaded back as an A matrix), each timed alone with
//! timestamp queries. It answers issue 7's question of what limits the coop kernels: how many
//! multiply-adds per second the tensor cores give through the driver, and what each load, store
//! and barrier around them takes.
//!
//! ```text
//! cargo run --release --example coop_probe            # every case, one table
//! cargo run --release --example coop_probe -- --wg 4096 --mma 2048 --reps 5
//! cargo run --release --example coop_probe -- --check  # naga-validate every case, no GPU
//! ```
//!
//! Every case runs `--wg` workgroups of 4 subgroups × 32 invocations; each subgroup does about
//! `--mma` multiply-adds (16×16×16, 8192 FLOPs each). Cases:
//! - `regs MxN`: M A-matrices and N B-matrices held in registers, M·N accumulators: the
//!   multiply-add rate with nothing else in the loop.
//! - `ldsB MxN` / `ldsBT MxN`: A in registers, each of the N B-matrices loaded from workgroup
//!   memory (`coopLoad` / `coopLoadT`) at every k-step, as the forward loads Kᵀ and V.
//! - `ldsAB MxN`: A and B both loaded from workgroup memory at every k-step.
//! - `globalB MxN`: B loaded from a storage buffer (1.1 MB, L2-resident) instead.
//! - `tile …`: the D=128 forward's key tile without global loads: S = Q Kᵀ (8 k-steps × 4
//!   key blocks), S stored, σ, P loaded back, O += P V (4 × 8 products), with parts left out:
//!   `full` (σ as 1 / (1 + e^-x)), `tanh` (σ as 0.5·tanh(x/2) + 0.5), `S+8` (S rows padded
//!   by 8 floats instead of 4), `nobar` (no workgroup barriers: racy, timing only), `noelem` (no σ pass),
//!   `mma+ld` (no S store, σ, barriers or P load: the products and their B loads alone).
//! - `bwd …`: the dK/dV kernel's query tile at D=128 (16 keys per subgroup, 32 queries: Sᵀ and
//!   dPᵀ, the round trip and dS pass, dV += Pᵀ dO and dK += dSᵀ Q), `full` or `mma+ld`, with K
//!   and V held as 16 A-matrices in registers or loaded from workgroup memory at each use: does
//!   holding 32 coop matrices per subgroup (and the occupancy it costs) limit the backward?

use sigmoid_attn::wgpu::WgpuBackend;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Regs,
    LdsB,
    LdsBT,
    LdsAB,
    GlobalB,
    Tile(TileParts),
    /// The dK/dV kernel's query tile (16 keys per subgroup, 32 queries, D = 128): `full` with
    /// the Sᵀ/dPᵀ round trip and the dS pass, else the products and their loads only;
    /// `kv_regs`: K and V held as 16 A-matrices (as the shipped kernel), else loaded from
    /// workgroup memory at each use (64 registers fewer).
    BwdTile {
        full: bool,
        kv_regs: bool,
    },
}

#[derive(Clone, Copy, PartialEq)]
enum TileParts {
    Full,
    Tanh,
    WideS,
    NoBarriers,
    NoElementwise,
    ProductsOnly,
}

#[derive(Clone, Copy)]
struct Case {
    mode: Mode,
    mb: u32,
    nb: u32,
    ks: u32,
}

impl Case {
    fn name(&self) -> String {
        let m = match self.mode {
            Mode::Regs => "regs",
            Mode::LdsB => "ldsB",
            Mode::LdsBT => "ldsBT",
            Mode::LdsAB => "ldsAB",
            Mode::GlobalB => "globalB",
            Mode::Tile(TileParts::Full) => "tile full",
            Mode::Tile(TileParts::Tanh) => "tile tanh",
            Mode::Tile(TileParts::WideS) => "tile S+8",
            Mode::Tile(TileParts::NoBarriers) => "tile nobar",
            Mode::Tile(TileParts::NoElementwise) => "tile noelem",
            Mode::Tile(TileParts::ProductsOnly) => "tile mma+ld",
            Mode::BwdTile { full, kv_regs } => match (full, kv_regs) {
                (true, true) => "bwd full, KV in registers",
                (true, false) => "bwd full, KV from workgroup memory",
                (false, true) => "bwd mma+ld, KV in registers",
                (false, false) => "bwd mma+ld, KV from workgroup memory",
            },
        };
        format!("{m} {}x{}", self.mb, self.nb)
    }

    /// Multiply-adds per subgroup per loop iteration.
    fn mma_per_iter(&self) -> u32 {
        match self.mode {
            // S: ks k-steps × nb key blocks per row block; PV: nb key blocks × 8 head-dim blocks.
            Mode::Tile(_) => self.mb * (self.ks * self.nb + self.nb * 8),
            // Sᵀ and dPᵀ: 2 query blocks × 8 k-steps each; dV and dK: 2 × 8 each.
            Mode::BwdTile { .. } => 64,
            _ => self.ks * self.mb * self.nb,
        }
    }
}

/// Rows of the f16 tile in workgroup memory and its row stride in quads (128 + 8 halves).
const TILE_ROWS: u32 = 64;
const LD: u32 = 34;
/// Rows of the storage buffer that `globalB` reads.
const GLOBAL_ROWS: u32 = 4096;

fn shader(c: &Case) -> String {
    let mut s = String::new();
    let tile = matches!(c.mode, Mode::Tile(_));
    // S rows of 64 + 4 floats; `S+8` pads them to 64 + 8 (rows 8 banks apart instead of 4).
    let lds = if c.mode == Mode::Tile(TileParts::WideS) {
        18
    } else {
        17
    };
    let _ = write!(
        s,
        "enable f16;
enable wgpu_cooperative_matrix;
alias AM = coop_mat16x16<f16, A>;
alias BM = coop_mat16x16<f16, B>;
alias CM = coop_mat16x16<f32, C>;
struct Prm {{ iters: u32, never: u32, rows: u32, pad: u32 }}
@group(0) @binding(0) var<uniform> prm: Prm;
@group(0) @binding(1) var<storage, read> g: array<vec4<f16>>;
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>;
const LD: u32 = {LD}u;
const LDS: u32 = {lds}u;
const LDP: u32 = 18u;
var<workgroup> sh: array<vec4<f16>, {}>;
",
        TILE_ROWS * LD,
        lds = lds
    );
    if let Mode::BwdTile { full: true, .. } = c.mode {
        // Sᵀ and dPᵀ (2 × 64 key rows of 32 + 4 floats), Pᵀ and dSᵀ (rows of 32 + 8 halves).
        s.push_str("var<workgroup> sf: array<vec4<f32>, 1152>;\n");
        s.push_str("var<workgroup> sp: array<vec4<f16>, 1280>;\n");
    }
    if tile && c.mode != Mode::Tile(TileParts::ProductsOnly) {
        let rows = 64 * c.mb;
        let _ = writeln!(s, "var<workgroup> sf: array<vec4<f32>, {}>;", rows * lds);
        let _ = writeln!(s, "var<workgroup> sp: array<vec4<f16>, {}>;", rows * 18);
    }
    s.push_str(
        "
@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    for (var e = tid; e < arrayLength(&g) && e < LD * 64u; e += 128u) {
        sh[e] = g[(e + wid.x * 136u) % arrayLength(&g)];
    }
    workgroupBarrier();
    let sg = tid / 32u;
    let gbase = (wid.x * 64u) % prm.rows;
",
    );
    let nacc = match c.mode {
        Mode::BwdTile { full, kv_regs } => bwd_tile(&mut s, full, kv_regs),
        Mode::Tile(parts) => {
            // Q rows (mb blocks of 16) in registers as 8 A-matrices each; O in 8 accumulators each.
            for i in 0..c.mb {
                for d in 0..8 {
                    let _ = writeln!(
                        s,
                        "    let q{i}_{d} = coopLoadT<AM>(&sh[((sg * {mb} + {i}u) * 16u % 64u) * LD + {d}u * 4u], LD);",
                        mb = c.mb
                    );
                    let _ = writeln!(s, "    var o{i}_{d} = CM();");
                }
            }
            // S accumulates across iterations only where nothing else reads it (`mma+ld`),
            // so that its products stay live.
            let keep_s = parts == TileParts::ProductsOnly;
            for i in 0..c.mb {
                for j in 0..c.nb {
                    if keep_s {
                        let _ = writeln!(s, "    var s{i}_{j} = CM();");
                    }
                }
            }
            s.push_str("    for (var it = 0u; it < prm.iters; it++) {\n");
            for i in 0..c.mb {
                for j in 0..c.nb {
                    if !keep_s {
                        let _ = writeln!(s, "        var s{i}_{j} = CM();");
                    }
                }
            }
            for kk in 0..c.ks {
                for j in 0..c.nb {
                    let _ = writeln!(
                        s,
                        "        {{ let b = coopLoad<BM>(&sh[{}u * LD + {}u], LD);",
                        j * 16,
                        kk * 4
                    );
                    for i in 0..c.mb {
                        let _ = writeln!(
                            s,
                            "          s{i}_{j} = coopMultiplyAdd(q{i}_{kk}, b, s{i}_{j});"
                        );
                    }
                    s.push_str("        }\n");
                }
            }
            let bar = parts != TileParts::NoBarriers;
            if parts != TileParts::ProductsOnly {
                for i in 0..c.mb {
                    for j in 0..c.nb {
                        let _ = writeln!(
                            s,
                            "        {{ let p = &sf[((sg * {mb} + {i}u) * 16u) * LDS + {j}u * 4u]; let v = s{i}_{j}; coopStoreT(v, p, LDS); }}",
                            mb = c.mb
                        );
                    }
                }
                if bar {
                    s.push_str("        workgroupBarrier();\n");
                }
                if parts != TileParts::NoElementwise {
                    let _ = writeln!(
                        s,
                        "        for (var e = tid; e < {}u; e += 128u) {{
            let r = e / {q}u;
            let c4 = e % {q}u;
            let x = sf[r * LDS + c4];
            sp[r * LDP + c4] = vec4<f16>({});
        }}",
                        64 * c.mb * 4 * c.nb,
                        if parts == TileParts::Tanh {
                            "fma(vec4<f32>(0.5), tanh(0.5 * x), vec4<f32>(0.5))"
                        } else {
                            "1.0 / (1.0 + exp(-x))"
                        },
                        q = 4 * c.nb
                    );
                }
                if bar {
                    s.push_str("        workgroupBarrier();\n");
                }
            }
            for kb in 0..c.nb {
                for i in 0..c.mb {
                    if parts == TileParts::ProductsOnly {
                        // P stands in as the first Q block: no store, no load.
                        let _ = writeln!(s, "        let pa{i}_{kb} = q{i}_{kb};");
                    } else {
                        let _ = writeln!(
                            s,
                            "        let pa{i}_{kb} = coopLoadT<AM>(&sp[((sg * {mb} + {i}u) * 16u) * LDP + {kb}u * 4u], LDP);",
                            mb = c.mb
                        );
                    }
                }
                for d in 0..8 {
                    let _ = writeln!(
                        s,
                        "        {{ let b = coopLoadT<BM>(&sh[{}u * LD + {d}u * 4u], LD);",
                        kb * 16
                    );
                    for i in 0..c.mb {
                        let _ = writeln!(
                            s,
                            "          o{i}_{d} = coopMultiplyAdd(pa{i}_{kb}, b, o{i}_{d});"
                        );
                    }
                    s.push_str("        }\n");
                }
            }
            if bar && parts != TileParts::ProductsOnly {
                // The next iteration's S store must not overwrite S before every σ read it.
                s.push_str("        workgroupBarrier();\n");
            }
            s.push_str("    }\n");
            let mut acc = (0..c.mb)
                .flat_map(|i| (0..8).map(move |d| format!("o{i}_{d}")))
                .collect::<Vec<_>>();
            if keep_s {
                acc.extend((0..c.mb).flat_map(|i| (0..c.nb).map(move |j| format!("s{i}_{j}"))));
            }
            acc
        }
        mode => {
            for i in 0..c.mb {
                let _ = writeln!(
                    s,
                    "    let a{i} = coopLoadT<AM>(&sh[{}u * LD], LD);",
                    (i * 16) % TILE_ROWS
                );
            }
            if mode == Mode::Regs {
                for j in 0..c.nb {
                    let _ = writeln!(
                        s,
                        "    let b{j} = coopLoad<BM>(&sh[{}u * LD + {}u], LD);",
                        (j * 16) % TILE_ROWS,
                        (j * 4) % LD
                    );
                }
            }
            for i in 0..c.mb {
                for j in 0..c.nb {
                    let _ = writeln!(s, "    var c{i}_{j} = CM();");
                }
            }
            s.push_str("    for (var it = 0u; it < prm.iters; it++) {\n");
            for kk in 0..c.ks {
                let _ = writeln!(s, "        let ko{kk} = ((it + {kk}u) & 7u) * 4u;");
                let a = |i: u32| {
                    if mode == Mode::LdsAB {
                        format!("la{i}_{kk}")
                    } else {
                        format!("a{i}")
                    }
                };
                if mode == Mode::LdsAB {
                    for i in 0..c.mb {
                        let _ = writeln!(
                            s,
                            "        let la{i}_{kk} = coopLoadT<AM>(&sh[{}u * LD + ko{kk}], LD);",
                            (i * 16) % TILE_ROWS
                        );
                    }
                }
                for j in 0..c.nb {
                    let b = match mode {
                        Mode::Regs => format!("b{j}"),
                        Mode::LdsB | Mode::LdsAB => {
                            let _ = writeln!(
                                s,
                                "        let lb{j}_{kk} = coopLoad<BM>(&sh[{}u * LD + ko{kk}], LD);",
                                (j * 16) % TILE_ROWS
                            );
                            format!("lb{j}_{kk}")
                        }
                        Mode::LdsBT => {
                            let _ = writeln!(
                                s,
                                "        let lb{j}_{kk} = coopLoadT<BM>(&sh[{}u * LD + ko{kk}], LD);",
                                (j * 16) % TILE_ROWS
                            );
                            format!("lb{j}_{kk}")
                        }
                        Mode::GlobalB => {
                            let _ = writeln!(
                                s,
                                "        let lb{j}_{kk} = coopLoad<BM>(&g[((gbase + (it * {ks}u + {kk}u) * 16u + {}u) % prm.rows) * LD + ko{kk}], LD);",
                                j * 16,
                                ks = c.ks
                            );
                            format!("lb{j}_{kk}")
                        }
                        Mode::Tile(_) | Mode::BwdTile { .. } => unreachable!(),
                    };
                    for i in 0..c.mb {
                        let _ = writeln!(
                            s,
                            "        c{i}_{j} = coopMultiplyAdd({}, {b}, c{i}_{j});",
                            a(i)
                        );
                    }
                }
            }
            s.push_str("    }\n");
            (0..c.mb)
                .flat_map(|i| (0..c.nb).map(move |j| format!("c{i}_{j}")))
                .collect::<Vec<_>>()
        }
    };
    // Stores that never happen (prm.never is 0) but that the compiler cannot rule out.
    s.push_str("    if (prm.never == 1u) {\n");
    for (n, acc) in nacc.iter().enumerate() {
        let _ = writeln!(
            s,
            "        {{ let p = &out[{}u]; let v = {acc}; coopStore(v, p, 4u); }}",
            n * 64
        );
    }
    s.push_str("    }\n}\n");
    s
}

/// The body of a `BwdTile` case (after the shared prologue); returns the live accumulators.
/// Rows 0..32 of `sh` stand for Q, rows 32..64 for dO; each subgroup's 16 rows for its K and V.
fn bwd_tile(s: &mut String, full: bool, kv_regs: bool) -> Vec<String> {
    let kv = |which: &str, d: u32| {
        // K from the subgroup's rows, V from the same rows 8 columns on (a stand-in).
        let col = if which == "k" {
            d * 4
        } else {
            (d * 4 + 4) % 32
        };
        format!("coopLoadT<AM>(&sh[(sg * 16u) * LD + {col}u], LD)")
    };
    if kv_regs {
        for d in 0..8 {
            let _ = writeln!(s, "    let k{d} = {};", kv("k", d));
            let _ = writeln!(s, "    let v{d} = {};", kv("v", d));
        }
    }
    for d in 0..8 {
        let _ = writeln!(s, "    var gk{d} = CM();");
        let _ = writeln!(s, "    var gv{d} = CM();");
    }
    if !full {
        // Without the round trip nothing reads Sᵀ and dPᵀ: they accumulate across iterations.
        for j in 0..2 {
            let _ = writeln!(s, "    var s{j} = CM();");
            let _ = writeln!(s, "    var t{j} = CM();");
        }
    }
    s.push_str("    let lane = tid % 32u;\n    for (var it = 0u; it < prm.iters; it++) {\n");
    for j in 0..2 {
        if full {
            let _ = writeln!(s, "        var s{j} = CM();");
            let _ = writeln!(s, "        var t{j} = CM();");
        }
        for d in 0..8 {
            let (ka, va) = if kv_regs {
                (format!("k{d}"), format!("v{d}"))
            } else {
                (kv("k", d), kv("v", d))
            };
            let _ = writeln!(
                s,
                "        {{ let a = {ka}; let b = coopLoad<BM>(&sh[{}u * LD + {d}u * 4u], LD); s{j} = coopMultiplyAdd(a, b, s{j}); }}",
                j * 16
            );
            let _ = writeln!(
                s,
                "        {{ let a = {va}; let b = coopLoad<BM>(&sh[{}u * LD + {d}u * 4u], LD); t{j} = coopMultiplyAdd(a, b, t{j}); }}",
                32 + j * 16
            );
        }
        if full {
            let _ = writeln!(
                s,
                "        {{ let p = &sf[(sg * 16u) * 9u + {j}u * 4u]; let v = s{j}; coopStoreT(v, p, 9u); }}"
            );
            let _ = writeln!(
                s,
                "        {{ let p = &sf[(64u + sg * 16u) * 9u + {j}u * 4u]; let v = t{j}; coopStoreT(v, p, 9u); }}"
            );
        }
    }
    if full {
        s.push_str(
            "        subgroupBarrier();
        for (var e = lane; e < 128u; e += 32u) {
            let r = sg * 16u + e / 8u;
            let c4 = e % 8u;
            let p = 1.0 / (1.0 + exp(-sf[r * 9u + c4]));
            let ds = sf[(64u + r) * 9u + c4] * p * (1.0 - p);
            sp[r * 10u + c4] = vec4<f16>(p);
            sp[(64u + r) * 10u + c4] = vec4<f16>(ds);
        }
        subgroupBarrier();
",
        );
    }
    for j in 0..2 {
        if full {
            let _ = writeln!(
                s,
                "        let pa{j} = coopLoadT<AM>(&sp[(sg * 16u) * 10u + {j}u * 4u], 10u);"
            );
            let _ = writeln!(
                s,
                "        let da{j} = coopLoadT<AM>(&sp[(64u + sg * 16u) * 10u + {j}u * 4u], 10u);"
            );
        } else {
            // Stand-ins for Pᵀ and dSᵀ: no store, no load.
            let a = if kv_regs { format!("k{j}") } else { kv("k", j) };
            let _ = writeln!(s, "        let pa{j} = {a};");
            let _ = writeln!(s, "        let da{j} = pa{j};");
        }
        for d in 0..8 {
            let _ = writeln!(
                s,
                "        {{ let b = coopLoadT<BM>(&sh[{}u * LD + {d}u * 4u], LD); gv{d} = coopMultiplyAdd(pa{j}, b, gv{d}); }}",
                32 + j * 16
            );
            let _ = writeln!(
                s,
                "        {{ let b = coopLoadT<BM>(&sh[{}u * LD + {d}u * 4u], LD); gk{d} = coopMultiplyAdd(da{j}, b, gk{d}); }}",
                j * 16
            );
        }
    }
    s.push_str("    }\n");
    let mut acc: Vec<String> = (0..8)
        .flat_map(|d| [format!("gk{d}"), format!("gv{d}")])
        .collect();
    if !full {
        acc.extend(["s0", "t0", "s1", "t1"].map(String::from));
    }
    acc
}

fn cases() -> Vec<Case> {
    let c = |mode, mb, nb| Case {
        mode,
        mb,
        nb,
        ks: 8,
    };
    let mut v = vec![
        c(Mode::Regs, 1, 4),
        c(Mode::Regs, 2, 4),
        c(Mode::Regs, 4, 4),
    ];
    for (mb, nb) in [(1, 1), (1, 4), (2, 4), (4, 4)] {
        v.push(c(Mode::LdsB, mb, nb));
    }
    for (mb, nb) in [(1, 4), (2, 4)] {
        v.push(c(Mode::LdsBT, mb, nb));
    }
    for (mb, nb) in [(1, 1), (1, 4), (2, 4), (4, 4)] {
        v.push(c(Mode::LdsAB, mb, nb));
    }
    for (mb, nb) in [(1, 4), (2, 4)] {
        v.push(c(Mode::GlobalB, mb, nb));
    }
    for p in [
        TileParts::Full,
        TileParts::Tanh,
        TileParts::WideS,
        TileParts::NoBarriers,
        TileParts::NoElementwise,
        TileParts::ProductsOnly,
    ] {
        v.push(c(Mode::Tile(p), 1, 4));
    }
    // 32-key tiles: the same work in twice as many barrier-separated steps.
    v.push(c(Mode::Tile(TileParts::Full), 1, 2));
    // 32 query rows per subgroup: twice the products per B load (S and P would not fit in
    // 48 KiB beside K/V at this size, so only the products).
    v.push(c(Mode::Tile(TileParts::ProductsOnly), 2, 4));
    for full in [true, false] {
        for kv_regs in [true, false] {
            v.push(c(Mode::BwdTile { full, kv_regs }, 1, 1));
        }
    }
    v
}

struct Opts {
    wg: u32,
    mma: u32,
    reps: usize,
    dump: Option<String>,
    check: bool,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        wg: 4096,
        mma: 2048,
        reps: 5,
        dump: None,
        check: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--wg" => o.wg = val()?.parse().map_err(|_| "bad --wg")?,
            "--mma" => o.mma = val()?.parse().map_err(|_| "bad --mma")?,
            "--reps" => o.reps = val()?.parse().map_err(|_| "bad --reps")?,
            "--dump" => o.dump = Some(val()?),
            "--check" => o.check = true,
            _ => return Err(format!("unknown option {a}")),
        }
    }
    Ok(o)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let opts = parse()?;
    if opts.check {
        return check_all();
    }
    let backend = WgpuBackend::new_coop()?;
    let device = backend.device();
    let queue = backend.queue();
    println!("adapter: {:?}", backend.adapter_info().name);
    if let Some(dir) = &opts.dump {
        std::fs::create_dir_all(dir)?;
    }

    let halves: Vec<half::f16> = (0..GLOBAL_ROWS * LD * 4)
        .map(|i| half::f16::from_f32(((i % 29) as f32 - 14.0) / 64.0))
        .collect();
    let g = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("probe g"),
        size: (halves.len() * 2) as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    queue.write_buffer(&g, 0, bytemuck::cast_slice(&halves));
    let out = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("probe out"),
        size: 64 * 64 * 16,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let prm = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("probe prm"),
        size: 16,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let queries = device.create_query_set(&wgpu::QuerySetDescriptor {
        label: Some("probe timing"),
        ty: wgpu::QueryType::Timestamp,
        count: 2,
    });
    let resolve = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 16,
        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let read = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 16,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let period = f64::from(queue.get_timestamp_period());

    println!(
        "| case | MMA/iter | iters | ms (median of {}) | TFLOPS |",
        opts.reps
    );
    println!("|---|---|---|---|---|");
    for case in cases() {
        let src = shader(&case);
        if let Some(dir) = &opts.dump {
            let file = format!("{dir}/{}.wgsl", case.name().replace([' ', '+'], "_"));
            std::fs::write(file, &src)?;
        }
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some("probe"),
            source: wgpu::ShaderSource::Wgsl(src.into()),
        };
        // SAFETY: every index is reduced modulo its array's length or bounded by a constant
        // below it (as in the shipped kernels, which also run without runtime checks).
        let module = unsafe {
            device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
        };
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("probe"),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: prm.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: g.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: out.as_entire_binding(),
                },
            ],
        });
        let per_iter = case.mma_per_iter();
        let iters = (opts.mma / per_iter).max(1);
        queue.write_buffer(
            &prm,
            0,
            bytemuck::cast_slice(&[iters, 0u32, GLOBAL_ROWS, 0]),
        );
        let mut times = Vec::new();
        for rep in 0..=opts.reps {
            let mut enc = device.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: &queries,
                        beginning_of_pass_write_index: Some(0),
                        end_of_pass_write_index: Some(1),
                    }),
                });
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &bind, &[]);
                pass.dispatch_workgroups(opts.wg, 1, 1);
            }
            enc.resolve_query_set(&queries, 0..2, &resolve, 0);
            enc.copy_buffer_to_buffer(&resolve, 0, &read, 0, 16);
            queue.submit([enc.finish()]);
            let ticks = read_ticks(device, &read)?;
            if rep > 0 {
                // The first run warms the pipeline and the clocks.
                times.push(ticks[1].wrapping_sub(ticks[0]) as f64 * period * 1e-6);
            }
        }
        times.sort_by(f64::total_cmp);
        let ms = times[times.len() / 2];
        let mmas = f64::from(opts.wg) * 4.0 * f64::from(iters) * f64::from(per_iter);
        let tflops = mmas * 8192.0 / (ms * 1e-3) / 1e12;
        println!(
            "| {} | {per_iter} | {iters} | {ms:.3} | {tflops:.1} |",
            case.name()
        );
    }
    Ok(())
}

/// Parses and validates every case's shader with naga (f16 and cooperative matrices on).
fn check_all() -> Result<(), Box<dyn std::error::Error>> {
    let caps = naga::valid::Capabilities::SHADER_FLOAT16
        | naga::valid::Capabilities::COOPERATIVE_MATRIX
        | naga::valid::Capabilities::SUBGROUP
        | naga::valid::Capabilities::SUBGROUP_BARRIER;
    for case in cases() {
        let src = shader(&case);
        let module = naga::front::wgsl::parse_str(&src)
            .map_err(|e| format!("{}: {}", case.name(), e.emit_to_string(&src)))?;
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
            .validate(&module)
            .map_err(|e| format!("{}: {}", case.name(), e.emit_to_string(&src)))?;
        println!("{}: valid", case.name());
    }
    Ok(())
}

fn read_ticks(device: &wgpu::Device, read: &wgpu::Buffer) -> Result<Vec<u64>, String> {
    let slot = Arc::new(Mutex::new(None));
    let sink = slot.clone();
    read.slice(..).map_async(wgpu::MapMode::Read, move |r| {
        *sink.lock().unwrap() = Some(r)
    });
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| format!("poll: {e}"))?;
    match slot.lock().unwrap().take() {
        Some(Ok(())) => {}
        other => return Err(format!("mapping the timestamps: {other:?}")),
    }
    let ticks = {
        let view = read
            .slice(..)
            .get_mapped_range()
            .map_err(|e| format!("mapped range: {e}"))?;
        bytemuck::pod_collect_to_vec::<u8, u64>(&view)
    };
    read.unmap();
    Ok(ticks)
}
