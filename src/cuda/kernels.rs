//! The kernel variants: embedded `sm_90a` cubins (built by `kernels/build_cubins.py`) and the
//! CUDA sources they were built from (for run-time NVRTC compilation of other variants).

use crate::{DType, SigmoidMode};

/// Which kernel source a variant is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kernel {
    /// `kernels/fwd_sm90.cu` (entries `FWD_ENTRY`, `FWD_ORDERED_ENTRY`).
    Forward,
    /// `kernels/bwd_sm90.cu` (entries `BWD_DKDV`, `BWD_DQ`, `BWD_DQ_CONVERT`, `BWD_DBIAS`).
    Backward,
}

/// One compiled form of a kernel: source × storage type × head dim × sigmoid mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Variant {
    /// Forward or backward source.
    pub kernel: Kernel,
    /// f16 or bf16.
    pub dtype: DType,
    /// 64 or 128.
    pub head_dim: usize,
    /// Fast (tanh) or accurate (ex2 + rcp) sigmoid.
    pub sigmoid: SigmoidMode,
}

/// File of the forward kernel (also the NVRTC program name).
pub(crate) const FWD_SOURCE: &str = "fwd_sm90.cu";

/// Forward entry for plans whose units all have the same work: units in their natural order.
pub(crate) const FWD_ENTRY: &str = "sigmoid_attn_fwd";
/// Forward entry for plans with a work order (padding, varlen): units dealt out to the CTAs.
pub(crate) const FWD_ORDERED_ENTRY: &str = "sigmoid_attn_fwd_ordered";

/// File of the backward kernels (also the NVRTC program name).
pub(crate) const BWD_SOURCE: &str = "bwd_sm90.cu";

/// Backward entry: dK, dV (and dQ into the fp32 workspace in atomic mode), KV-block-outer.
pub(crate) const BWD_DKDV: &str = "sigmoid_attn_bwd_dkdv";
/// Backward entry: deterministic dQ, query-outer.
pub(crate) const BWD_DQ: &str = "sigmoid_attn_bwd_dq";
/// Backward entry: dQ = scale · workspace in the storage dtype (atomic mode).
pub(crate) const BWD_DQ_CONVERT: &str = "sigmoid_attn_bwd_dq_convert";
/// Backward entry: d_bias from the per-CTA partial sums.
pub(crate) const BWD_DBIAS: &str = "sigmoid_attn_bwd_dbias";

/// Tile shape of the backward kernels for one head dim; mirrors `BwdConfig<D>` in
/// `kernels/config.cuh` (checked by a test below).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BwdTiles {
    /// dK/dV kernel: keys per CTA.
    pub key_block: usize,
    /// dK/dV kernel: queries per step.
    pub query_tile: usize,
    /// dQ kernel: queries per CTA.
    pub query_block: usize,
    /// dQ kernel: keys per step.
    pub key_tile: usize,
    /// Ring depth of the streamed tiles.
    pub stages: usize,
    /// dK/dV kernel: how dQ is added (`kDqPath`: 2 = warpgroup 0 by bulk reductions, the other
    /// per thread; 3 = the two alternating by step).
    pub dq_path: usize,
}

impl BwdTiles {
    /// The backward tiles of head dim `d` (64 or 128; the dK/dV kernel steps over 128 queries
    /// at D = 64, 64 at D = 128).
    pub fn for_head_dim(d: usize) -> Self {
        BwdTiles {
            key_block: 128,
            query_tile: if d == 64 { 128 } else { 64 },
            query_block: 128,
            key_tile: 64,
            stages: 2,
            dq_path: if d == 64 { 2 } else { 3 },
        }
    }

    /// Threads per CTA of the dQ and conversion kernels (two warpgroups).
    pub fn threads(&self) -> u32 {
        256
    }

    /// Threads per CTA of the dK/dV kernel (`kDkdvThreads`: a producer warpgroup and two
    /// consumer warpgroups).
    pub fn dkdv_threads(&self) -> u32 {
        384
    }

    /// Dynamic shared memory of the dK/dV kernel (`kDkdvSmemBytes` in bwd_sm90.cu).
    pub fn dkdv_smem_bytes(&self, d: usize) -> u32 {
        let kv = self.key_block * d * 2;
        let qdo = self.query_tile * d * 2;
        // Two dS tiles of query_tile x key_block 16-bit values (`2 * 2 * kDsBytes`).
        let ds = self.query_tile * self.key_block * 2;
        // Two staging buffers for the 64 x 64 fp32 dQ share of each consumer warpgroup that
        // adds by bulk reductions (`kDqStagers`).
        let stagers = match self.dq_path {
            1 => 0,
            2 => 1,
            _ => 2,
        };
        let dq_stage = stagers * 2 * 64 * 64 * 4;
        let barriers = 8 * (4 + 2 * self.stages + 4);
        (1024 + 2 * kv + 2 * self.stages * qdo + 2 * ds + dq_stage + barriers) as u32
    }

    /// Dynamic shared memory of the dQ kernel (`kDqSmemBytes` in bwd_sm90.cu).
    pub fn dq_smem_bytes(&self, d: usize) -> u32 {
        let qdo = self.query_block * d * 2;
        let kv = self.key_tile * d * 2;
        (1024 + 2 * qdo + 2 * self.stages * kv + 8 * (1 + self.stages)) as u32
    }
}

/// Tile shape of one head dim; mirrors `FwdConfig<D>` / `FwdShape<D>` in `kernels/config.cuh`
/// (checked by `tests/kernels.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TileConfig {
    /// Query rows per CTA.
    pub block_m: usize,
    /// Keys per K/V tile.
    pub block_n: usize,
    /// K/V ring depth.
    pub stages: usize,
}

impl TileConfig {
    /// The configuration of head dim `d`, if one exists.
    pub fn for_head_dim(d: usize) -> Option<Self> {
        match d {
            64 => Some(TileConfig {
                block_m: 192,
                block_n: 128,
                stages: 4,
            }),
            128 => Some(TileConfig {
                block_m: 128,
                block_n: 128,
                stages: 2,
            }),
            _ => None,
        }
    }

    /// Threads per CTA: one producer warpgroup plus one consumer warpgroup per 64 rows.
    pub fn threads(&self) -> u32 {
        (128 * (1 + self.block_m / 64)) as u32
    }

    /// Dynamic shared memory of a CTA (`FwdShape<D>::kSmemBytes`).
    pub fn smem_bytes(&self, d: usize) -> u32 {
        let q = self.block_m * d * 2;
        let kv = self.block_n * d * 2;
        // Two Q buffers; full/empty barriers for each Q buffer and each K/V stage.
        let barriers = 8 * (4 + 4 * self.stages);
        (1024 + 2 * q + 2 * self.stages * kv + barriers) as u32
    }
}

impl Variant {
    /// The kernel's source file (also the NVRTC program name).
    pub fn source(&self) -> &'static str {
        match self.kernel {
            Kernel::Forward => FWD_SOURCE,
            Kernel::Backward => BWD_SOURCE,
        }
    }

    /// Stem of the cubin file and of the manifest entry, e.g. `fwd_bf16_d128_fast`.
    pub fn name(&self) -> String {
        let kernel = match self.kernel {
            Kernel::Forward => "fwd",
            Kernel::Backward => "bwd",
        };
        let dt = match self.dtype {
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
        };
        let mode = match self.sigmoid {
            SigmoidMode::Fast => "fast",
            SigmoidMode::Accurate => "accurate",
        };
        format!("{kernel}_{dt}_d{}_{mode}", self.head_dim)
    }

    /// NVRTC options; identical to `build_cubins.py` so that both produce the same cubin.
    pub fn nvrtc_options(&self) -> Vec<String> {
        let mut o: Vec<String> = [
            "--gpu-architecture=sm_90a",
            "-std=c++17",
            "--ptxas-options=-v",
            "-default-device",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        o.push(format!("-DSA_HEAD_DIM={}", self.head_dim));
        if self.dtype == DType::F16 {
            o.push("-DSA_F16".into());
        }
        if self.sigmoid == SigmoidMode::Accurate {
            o.push("-DSA_ACCURATE".into());
        }
        o
    }

    /// The cubin shipped with the crate for this variant, if any.
    pub fn shipped_cubin(&self) -> Option<&'static [u8]> {
        SHIPPED
            .iter()
            .find(|(name, _)| *name == self.name())
            .map(|(_, bytes)| *bytes)
    }
}

macro_rules! cubin {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!("../../kernels/cubin/", $name, ".cubin")) as &[u8],
        )
    };
}

/// Every cubin listed in `kernels/cubin/manifest.json`.
pub(crate) const SHIPPED: [(&str, &[u8]); 16] = [
    cubin!("fwd_bf16_d64_fast"),
    cubin!("fwd_bf16_d64_accurate"),
    cubin!("fwd_bf16_d128_fast"),
    cubin!("fwd_bf16_d128_accurate"),
    cubin!("fwd_f16_d64_fast"),
    cubin!("fwd_f16_d64_accurate"),
    cubin!("fwd_f16_d128_fast"),
    cubin!("fwd_f16_d128_accurate"),
    cubin!("bwd_bf16_d64_fast"),
    cubin!("bwd_bf16_d64_accurate"),
    cubin!("bwd_bf16_d128_fast"),
    cubin!("bwd_bf16_d128_accurate"),
    cubin!("bwd_f16_d64_fast"),
    cubin!("bwd_f16_d64_accurate"),
    cubin!("bwd_f16_d128_fast"),
    cubin!("bwd_f16_d128_accurate"),
];

/// The kernel sources, by the file name that `#include` uses.
pub(crate) const SOURCES: [(&str, &str); 7] = [
    ("fwd_sm90.cu", include_str!("../../kernels/fwd_sm90.cu")),
    ("bwd_sm90.cu", include_str!("../../kernels/bwd_sm90.cu")),
    ("ptx.cuh", include_str!("../../kernels/ptx.cuh")),
    ("wgmma.cuh", include_str!("../../kernels/wgmma.cuh")),
    ("params.cuh", include_str!("../../kernels/params.cuh")),
    ("config.cuh", include_str!("../../kernels/config.cuh")),
    ("sigmoid.cuh", include_str!("../../kernels/sigmoid.cuh")),
];

/// `file` with its local `#include "x"` expanded once each and `#pragma once` dropped: the
/// single translation unit that NVRTC compiles. Same algorithm as `flatten` in
/// `kernels/build_cubins.py`, so both hash the same text.
pub(crate) fn flatten(file: &str) -> Option<String> {
    let mut seen = Vec::new();
    let mut out = String::new();
    flatten_into(file, &mut seen, &mut out)?;
    Some(out)
}

fn flatten_into(file: &str, seen: &mut Vec<String>, out: &mut String) -> Option<()> {
    let text = SOURCES.iter().find(|(n, _)| *n == file)?.1;
    for line in text.split_inclusive('\n') {
        if let Some(inc) = include_target(line) {
            if !seen.iter().any(|s| s == inc) {
                seen.push(inc.to_string());
                flatten_into(inc, seen, out)?;
            }
            continue;
        }
        if line.trim() == "#pragma once" {
            continue;
        }
        out.push_str(line);
    }
    Some(())
}

/// `x` for a line `#include "x"`.
fn include_target(line: &str) -> Option<&str> {
    let rest = line.trim().strip_prefix('#')?.trim_start();
    let rest = rest.strip_prefix("include")?.trim();
    let inner = rest.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('"')).then_some(inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatten_expands_every_header_once() {
        let src = flatten("fwd_sm90.cu").expect("all sources embedded");
        assert!(!src.contains("#include \""));
        assert!(!src.contains("#pragma once"));
        assert_eq!(src.matches("struct FwdParams {").count(), 1);
        for entry in [FWD_ENTRY, FWD_ORDERED_ENTRY] {
            assert!(src.contains(entry), "{entry}");
        }
    }

    /// The integer constant `name` of the specialisation `strukt<d>` in config.cuh.
    fn config_value(strukt: &str, d: usize, name: &str) -> usize {
        let text = SOURCES.iter().find(|(n, _)| *n == "config.cuh").unwrap().1;
        let start = text
            .find(&format!("struct {strukt}<{d}> {{"))
            .unwrap_or_else(|| panic!("{strukt}<{d}> specialisation"));
        let body = &text[start..start + text[start..].find("};").unwrap()];
        let at = body.find(&format!("{name} = ")).expect(name) + name.len() + 3;
        body[at..]
            .split(';')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// `TileConfig` mirrors `FwdConfig<D>` in config.cuh: read the numbers back from the header.
    #[test]
    fn tile_config_matches_config_cuh() {
        for d in [64usize, 128] {
            let value = |name| config_value("FwdConfig", d, name);
            let t = TileConfig::for_head_dim(d).unwrap();
            assert_eq!(t.block_m, value("kBlockM"), "d{d}");
            assert_eq!(t.block_n, value("kBlockN"), "d{d}");
            assert_eq!(t.stages, value("kStages"), "d{d}");
        }
    }

    /// `BwdTiles` mirrors `BwdConfig<D>` in config.cuh.
    #[test]
    fn bwd_tiles_match_config_cuh() {
        for d in [64, 128] {
            let value = |name| config_value("BwdConfig", d, name);
            let t = BwdTiles::for_head_dim(d);
            assert_eq!(t.key_block, value("kKeyBlock"), "d{d}");
            assert_eq!(t.query_tile, value("kQueryTile"), "d{d}");
            assert_eq!(t.query_block, value("kQueryBlock"), "d{d}");
            assert_eq!(t.key_tile, value("kKeyTile"), "d{d}");
            assert_eq!(t.stages, value("kStages"), "d{d}");
            assert_eq!(t.dq_path, value("kDqPath"), "d{d}");
        }
        // Shared memory as the kernel computes it (bwd_sm90.cu).
        let (t64, t128) = (BwdTiles::for_head_dim(64), BwdTiles::for_head_dim(128));
        assert_eq!(t128.dkdv_smem_bytes(128), 230_496);
        assert_eq!(t64.dkdv_smem_bytes(64), 197_728);
        assert_eq!(t128.dq_smem_bytes(128), 132_120);
    }

    #[test]
    fn flatten_backward_source() {
        let src = flatten("bwd_sm90.cu").expect("all sources embedded");
        assert!(!src.contains("#include \""));
        assert_eq!(src.matches("struct BwdParams {").count(), 1);
        for entry in [BWD_DKDV, BWD_DQ, BWD_DQ_CONVERT, BWD_DBIAS] {
            assert!(src.contains(entry), "{entry}");
        }
    }

    #[test]
    fn every_supported_variant_is_shipped() {
        for (kernel, dtype) in [Kernel::Forward, Kernel::Backward]
            .into_iter()
            .flat_map(|k| [(k, DType::F16), (k, DType::BF16)])
        {
            for head_dim in [64, 128] {
                for sigmoid in [SigmoidMode::Fast, SigmoidMode::Accurate] {
                    let v = Variant {
                        kernel,
                        dtype,
                        head_dim,
                        sigmoid,
                    };
                    assert!(
                        v.shipped_cubin().is_some_and(|c| c.len() > 1000),
                        "{}",
                        v.name()
                    );
                }
            }
        }
    }
}
