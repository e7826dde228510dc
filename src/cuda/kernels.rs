//! The kernel variants: embedded `sm_90a` cubins (built by `kernels/build_cubins.py`) and the
//! CUDA sources they were built from (for run-time NVRTC compilation of other variants).

use crate::{DType, SigmoidMode};

/// One compiled form of the forward kernel: storage type × head dim × sigmoid mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Variant {
    /// f16 or bf16.
    pub dtype: DType,
    /// 64 or 128.
    pub head_dim: usize,
    /// Fast (tanh) or accurate (ex2 + rcp) sigmoid.
    pub sigmoid: SigmoidMode,
}

/// File of the forward kernel (also the NVRTC program name).
pub(crate) const FWD_SOURCE: &str = "fwd_sm90.cu";

/// Name of the kernel entry point in every forward variant.
pub(crate) const FWD_ENTRY: &str = "sigmoid_attn_fwd";

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
        let barriers = 8 * (1 + 4 * self.stages);
        (1024 + q + 2 * self.stages * kv + barriers) as u32
    }
}

impl Variant {
    /// Stem of the cubin file and of the manifest entry, e.g. `fwd_bf16_d128_fast`.
    pub fn name(&self) -> String {
        let dt = match self.dtype {
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
        };
        let mode = match self.sigmoid {
            SigmoidMode::Fast => "fast",
            SigmoidMode::Accurate => "accurate",
        };
        format!("fwd_{dt}_d{}_{mode}", self.head_dim)
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
pub(crate) const SHIPPED: [(&str, &[u8]); 8] = [
    cubin!("fwd_bf16_d64_fast"),
    cubin!("fwd_bf16_d64_accurate"),
    cubin!("fwd_bf16_d128_fast"),
    cubin!("fwd_bf16_d128_accurate"),
    cubin!("fwd_f16_d64_fast"),
    cubin!("fwd_f16_d64_accurate"),
    cubin!("fwd_f16_d128_fast"),
    cubin!("fwd_f16_d128_accurate"),
];

/// The kernel sources, by the file name that `#include` uses.
pub(crate) const SOURCES: [(&str, &str); 6] = [
    ("fwd_sm90.cu", include_str!("../../kernels/fwd_sm90.cu")),
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
        assert!(src.contains("sigmoid_attn_fwd"));
    }

    /// `TileConfig` mirrors `FwdConfig<D>` in config.cuh: read the numbers back from the header.
    #[test]
    fn tile_config_matches_config_cuh() {
        let text = SOURCES.iter().find(|(n, _)| *n == "config.cuh").unwrap().1;
        for d in [64usize, 128] {
            let start = text
                .find(&format!("struct FwdConfig<{d}> {{"))
                .expect("specialisation");
            let body = &text[start..start + text[start..].find("};").unwrap()];
            let value = |name: &str| -> usize {
                let at = body.find(&format!("{name} = ")).expect(name) + name.len() + 3;
                body[at..]
                    .split(';')
                    .next()
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap()
            };
            let t = TileConfig::for_head_dim(d).unwrap();
            assert_eq!(t.block_m, value("kBlockM"), "d{d}");
            assert_eq!(t.block_n, value("kBlockN"), "d{d}");
            assert_eq!(t.stages, value("kStages"), "d{d}");
        }
    }

    #[test]
    fn every_supported_variant_is_shipped() {
        for dtype in [DType::F16, DType::BF16] {
            for head_dim in [64, 128] {
                for sigmoid in [SigmoidMode::Fast, SigmoidMode::Accurate] {
                    let v = Variant {
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
