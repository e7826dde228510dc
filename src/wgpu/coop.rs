//! The tensor-core path: kernels on cooperative matrices (`wgpu_cooperative_matrix`, wgpu's
//! experimental `EXPERIMENTAL_COOPERATIVE_MATRIX`; `VK_KHR_cooperative_matrix` on Vulkan).
//!
//! The path needs, besides that feature, `SHADER_F16`, `SUBGROUP` and `SUBGROUP_BARRIER` (each
//! subgroup computes S, σ and the next products on its own rows between subgroup barriers), the
//! `SHADER_F16_IN_F32` downlevel flag (f16 storage is loaded as words and unpacked), a 16×16×16
//! f16 → f32 configuration among the adapter's
//! [`cooperative_matrix_properties`](wgpu::Adapter::cooperative_matrix_properties) and a fixed
//! subgroup size (the kernels map subgroup `i` to invocations `[i·s, (i+1)·s)`).
//! [`CoopSupport::detect`] decides it from the adapter. Which plans the path takes is
//! [`CoopTiles::choose_for`] plus the checks in `WgpuBackend` (f16 and bf16 storage, head dims
//! that are multiples of 16 up to 128); everything else runs on the scalar kernels. The forward
//! is `fwd_coop.wgsl`; the backward is `bwd_dkdv_coop.wgsl` (dK, dV and d_bias partial sums,
//! key-block outer) and `bwd_dq_coop.wgsl` (dQ, query-block outer), both recomputing P from Q
//! and K, with the scalar `bwd_dbias.wgsl` adding up the d_bias partials.
//!
//! Precision: operands are f16 and products accumulate in f32. f16 storage loses nothing on
//! load; bf16 storage is converted to f16, which is exact for magnitudes in [2⁻¹⁴, 65504] (bf16
//! has fewer mantissa bits than f16), rounds smaller magnitudes to f16 subnormals and overflows
//! larger ones: inputs beyond ±65504 are outside what this path takes. P and dS are rounded to
//! f16 before they are multiplied (finer than bf16's rounding; values below 2⁻¹⁴, such as P at
//! bias −ln n for n above ~16k, keep an absolute error of 2⁻²⁵ as f16 subnormals). f32 storage always runs on the scalar kernels: an f16
//! rounding of f32 inputs would exceed f32's error bound.

use super::pipelines::{StoragePath, SIGMOID};
use crate::DType;

/// Forward kernel on cooperative matrices.
pub const FWD_COOP: &str = include_str!("../../shaders/fwd_coop.wgsl");
/// Backward kernel on cooperative matrices: dQ.
pub const BWD_DQ_COOP: &str = include_str!("../../shaders/bwd_dq_coop.wgsl");
/// Backward kernel on cooperative matrices: dK, dV and the d_bias partial sums.
pub const BWD_DKDV_COOP: &str = include_str!("../../shaders/bwd_dkdv_coop.wgsl");

/// The cooperative-matrix kernels, one per shader file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CoopKernel {
    /// `shaders/fwd_coop.wgsl`.
    Forward,
    /// `shaders/bwd_dq_coop.wgsl`.
    BackwardDq,
    /// `shaders/bwd_dkdv_coop.wgsl`.
    BackwardDkDv,
}

impl CoopKernel {
    /// All cooperative-matrix kernels.
    pub const ALL: [CoopKernel; 3] = [
        CoopKernel::Forward,
        CoopKernel::BackwardDq,
        CoopKernel::BackwardDkDv,
    ];

    /// The kernel's name (its shader file without extension).
    pub fn name(self) -> &'static str {
        match self {
            CoopKernel::Forward => "fwd_coop",
            CoopKernel::BackwardDq => "bwd_dq_coop",
            CoopKernel::BackwardDkDv => "bwd_dkdv_coop",
        }
    }

    /// The kernel's own WGSL (without preludes).
    pub fn body(self) -> &'static str {
        match self {
            CoopKernel::Forward => FWD_COOP,
            CoopKernel::BackwardDq => BWD_DQ_COOP,
            CoopKernel::BackwardDkDv => BWD_DKDV_COOP,
        }
    }
}

/// Storage paths the cooperative-matrix kernels take.
pub const STORAGE: [StoragePath; 2] = [StoragePath::F16, StoragePath::BF16];

/// The storage prelude of the cooperative-matrix kernels for `storage`, with
/// `half_quad(x: Quad) -> vec4<f16>`, the products' operands (narrowed once from f32; the scalar
/// kernels' preludes lack it because they run on adapters without `f16` too). f16 storage takes
/// the packed path's prelude: quads loaded as two 32-bit words and unpacked, not as
/// `vec4<f16>`. On an H200 over Vulkan the forward, which holds the next K and V tiles in
/// registers, ran at 46 TFLOPS (D = 128, N = 16k) with `vec4<f16>` quads and at 106 with words
/// (bf16, whose quads are words too: 104). (naga 30 mistypes `bitcast<vec2<f16>>(u32)`, hence
/// the unpacking through f32, which is exact.)
fn prelude(storage: StoragePath) -> String {
    let words = match storage {
        StoragePath::F16 => StoragePath::F16Packed,
        other => other,
    };
    format!(
        "{}\nfn half_quad(x: Quad) -> vec4<f16> {{\n    return vec4<f16>(load_quad(x));\n}}\n",
        words.prelude().replace("enable f16;", "")
    )
}

/// The complete WGSL of `kernel` for `storage` (one of [`STORAGE`]): the two `enable`
/// directives first (WGSL wants them before any declaration), then the storage prelude (with
/// `half_quad`; f16 storage read as words), the shared prelude and the kernel.
pub fn source(kernel: CoopKernel, storage: StoragePath) -> String {
    let mut s = String::with_capacity(16 * 1024);
    s.push_str("enable f16;\nenable wgpu_cooperative_matrix;\n");
    s.push_str(&prelude(storage));
    s.push('\n');
    s.push_str(SIGMOID);
    s.push('\n');
    s.push_str(kernel.body());
    s
}

/// Largest head dim of the cooperative-matrix kernels (eight 16-wide blocks per subgroup).
pub const MAX_HEAD_DIM: u32 = 128;

/// Quads of one streamed tile each invocation holds in registers, at most (each kernel's
/// `PRE_MAX`; every kernel holds two such tiles: the forward and the dQ kernel K and V, the
/// dK/dV kernel Q and dO).
const FWD_PRE_MAX: u32 = 32;
const DQ_PRE_MAX: u32 = 16;
const DKDV_PRE_MAX: u32 = 16;

/// `kernel`'s `PRE_MAX`.
fn pre_max(kernel: CoopKernel) -> u32 {
    match kernel {
        CoopKernel::Forward => FWD_PRE_MAX,
        CoopKernel::BackwardDq => DQ_PRE_MAX,
        CoopKernel::BackwardDkDv => DKDV_PRE_MAX,
    }
}

/// Tile shape of one cooperative-matrix kernel for one head dim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CoopTiles {
    /// Head dim (multiple of 16, at most [`MAX_HEAD_DIM`]).
    pub d: u32,
    /// Subgroups per workgroup, each owning `16 · rb` rows (queries); for dK/dV, subgroup pairs,
    /// each pair owning 16 keys.
    pub nsg: u32,
    /// Subgroup size of the adapter.
    pub sgs: u32,
    /// Rows streamed per tile (multiple of 16): keys for the forward and dQ, queries for dK/dV.
    pub bk: u32,
    /// 16-row blocks per subgroup (1 or 2; the forward only, the backward kernels take 1): each
    /// B-matrix loaded feeds `rb` multiply-adds.
    pub rb: u32,
}

/// Candidate (subgroups, keys per tile, row blocks per subgroup) of the forward, best first
/// after the head dim's own first choice ([`first_choice`]). Measured on an H200 over Vulkan
/// (`examples/bench_wgpu.rs`, f16): at N = 4096, D = 128: 8×16×2 3.01 ms, 8×32×1 3.41, 16×16×1
/// 4.46, 4×32×1 5.27; D = 64: 16×16×1 4.15, 8×32×1 4.67, 4×32×1 4.76, 8×16×2 5.77. More query
/// rows per workgroup (128 or 256) cut the K/V tiles loaded per query; with Q staged 16 columns
/// at a time these shapes fit 48 KiB (8×16×2 and 16×16×1 exactly, at D = 64 and 128). Two row
/// blocks per subgroup halve the Kᵀ/V loads per multiply-add but cost registers. Before Q was
/// staged in blocks (N = 4096, D = 128): 4×32×1 5.33 ms, 4×16 5.87, 2×32 6.19, 2×64 16.6:
/// shapes that cut the resident subgroups per SM run 2–3× slower. The rest are fallbacks for
/// smaller limits.
const CANDIDATES: [(u32, u32, u32); 10] = [
    (8, 32, 1),
    (4, 32, 1),
    (4, 64, 1),
    (2, 64, 2),
    (2, 32, 2),
    (4, 32, 2),
    (2, 64, 1),
    (2, 32, 1),
    (16, 16, 1),
    (8, 16, 2),
];

/// The first shape `kernel` tries for head dim `d`, ahead of its candidate list (see
/// [`CANDIDATES`], [`DKDV_CANDIDATES`]). Forward: 8×16×2 above D = 64, where the Q block each
/// subgroup holds is wide and a second one saves the most K/V loads, 16×16×1 up to D = 64.
/// dK/dV: 8×16 up to D = 64. Otherwise the list's first.
fn first_choice(kernel: CoopKernel, d: u32) -> Option<(u32, u32, u32)> {
    match kernel {
        CoopKernel::Forward if d > 64 => Some((8, 16, 2)),
        CoopKernel::Forward => Some((16, 16, 1)),
        CoopKernel::BackwardDkDv if d <= 64 => Some((8, 16, 1)),
        _ => None,
    }
}

/// Candidate (subgroups, keys per tile) of the dQ kernel, best first. Measured on an H200 over
/// Vulkan (`examples/bench_wgpu.rs`, f16, N = 16384, backward with the dK/dV kernel at 4×32):
/// 8×16 (43 KiB at D = 128, Q and dO staged 16 columns at a time) 44.3 ms at D = 128 against
/// 49.5 for 4×32 (40 KiB), 67.4 against 73.2 at D = 64: 128 query rows per workgroup halve
/// the K/V tiles loaded per query. The rest are fallbacks for smaller limits.
const DQ_CANDIDATES: [(u32, u32); 5] = [(8, 16), (4, 32), (4, 16), (2, 32), (2, 16)];

/// Candidate (subgroup pairs, queries per tile) of the dK/dV kernel, best first above D = 64
/// ([`first_choice`] takes 8×16 first up to it). Measured as the dQ kernel's (with dQ at 8×16):
/// D = 128: 4×32 (47 KiB) 44.3 ms against 61.0 for 8×16 (48 KiB: 16-query tiles, twice the
/// barriers per query); D = 64: 8×16 66.1 against 67.4 (f16; 4k 17.0 against 17.4, bf16 1–2%
/// too). The rest are fallbacks for smaller limits.
const DKDV_CANDIDATES: [(u32, u32); 5] = [(4, 32), (8, 16), (4, 16), (2, 32), (2, 16)];

impl CoopTiles {
    /// Query rows per workgroup.
    pub fn rows(&self) -> u32 {
        16 * self.nsg * self.rb
    }

    /// Invocations per workgroup of the forward.
    pub fn workgroup_size(&self) -> u32 {
        self.workgroup_size_for(CoopKernel::Forward)
    }

    /// Invocations per workgroup of `kernel`: the dK/dV kernel runs two subgroups per 16 keys
    /// (one holds K and accumulates dK, the other V and dV).
    pub fn workgroup_size_for(&self, kernel: CoopKernel) -> u32 {
        match kernel {
            CoopKernel::BackwardDkDv => 2 * self.nsg * self.sgs,
            _ => self.nsg * self.sgs,
        }
    }

    /// Lengths in elements of `kernel`'s three workgroup arrays: the staged rows (f16), S and
    /// dP (f32), P or dS (f16).
    fn lens(&self, kernel: CoopKernel) -> (u32, u32, u32) {
        let (rows, bk, d) = (self.rows(), self.bk, self.d);
        match kernel {
            // Q at the start (16 columns at a time, rows of 24), then K and V of a key tile side
            // by side; S; P.
            CoopKernel::Forward => (
                (2 * bk * (d + 8)).max(rows * 24),
                rows * (bk + 8),
                rows * (bk + 8),
            ),
            // K and V of a key tile (Q and dO at the start, 16 columns at a time, rows of 24);
            // S and dP; dS.
            CoopKernel::BackwardDq => (
                (2 * bk * (d + 8)).max(2 * rows * 24),
                2 * rows * (bk + 8),
                rows * (bk + 8),
            ),
            // Q and dO of a query tile (at the start, 16 columns of K and V at a time, rows of
            // 24); Sᵀ and dPᵀ; Pᵀ and dSᵀ.
            CoopKernel::BackwardDkDv => (
                (2 * bk * (d + 8)).max(2 * rows * 24),
                2 * rows * (bk + 8),
                2 * rows * (bk + 8),
            ),
        }
    }

    /// Workgroup memory of the forward in bytes.
    pub fn smem_bytes(&self) -> u32 {
        self.smem_bytes_for(CoopKernel::Forward)
    }

    /// Workgroup memory of `kernel` in bytes.
    pub fn smem_bytes_for(&self, kernel: CoopKernel) -> u32 {
        let (kv, s, p) = self.lens(kernel);
        2 * kv + 4 * s + 2 * p
    }

    /// True when the forward's invariants hold and the shape fits `storage` bytes of workgroup
    /// memory and `invocations` per workgroup.
    pub fn fits(&self, storage: u32, invocations: u32) -> bool {
        self.fits_for(CoopKernel::Forward, storage, invocations)
    }

    /// As [`fits`](Self::fits), for `kernel`.
    pub fn fits_for(&self, kernel: CoopKernel, storage: u32, invocations: u32) -> bool {
        let rb_ok = match kernel {
            CoopKernel::Forward => self.rb == 1 || self.rb == 2,
            _ => self.rb == 1,
        };
        self.d % 16 == 0
            && self.d > 0
            && self.d <= MAX_HEAD_DIM
            && self.bk % 16 == 0
            && self.bk > 0
            // The streamed tiles fit the kernel's register arrays.
            && self.bk * self.d / 4 <= pre_max(kernel) * self.workgroup_size_for(kernel)
            && self.nsg > 0
            && rb_ok
            && self.sgs > 0
            && self.smem_bytes_for(kernel) <= storage
            && self.workgroup_size_for(kernel) <= invocations
    }

    /// The best forward shape for head dim `d` on an adapter with subgroup size `sgs`, or
    /// `None`.
    pub fn choose(d: u32, sgs: u32, storage: u32, invocations: u32) -> Option<CoopTiles> {
        Self::choose_for(CoopKernel::Forward, d, sgs, storage, invocations)
    }

    /// As [`choose`](Self::choose), for `kernel`.
    pub fn choose_for(
        kernel: CoopKernel,
        d: u32,
        sgs: u32,
        storage: u32,
        invocations: u32,
    ) -> Option<CoopTiles> {
        Self::all_for(kernel, d, sgs)
            .into_iter()
            .find(|t| t.fits_for(kernel, storage, invocations))
    }

    /// `forced` (subgroups, rows per tile, row blocks) for `kernel` where it fits, else
    /// [`choose_for`](Self::choose_for)'s shape: how a backend applies a shape forced for
    /// tuning.
    pub fn forced_or_chosen(
        kernel: CoopKernel,
        forced: Option<(u32, u32, u32)>,
        d: u32,
        sgs: u32,
        storage: u32,
        invocations: u32,
    ) -> Option<CoopTiles> {
        forced
            .map(|(nsg, bk, rb)| CoopTiles {
                d,
                nsg,
                sgs,
                bk,
                rb,
            })
            .filter(|t| t.fits_for(kernel, storage, invocations))
            .or_else(|| Self::choose_for(kernel, d, sgs, storage, invocations))
    }

    /// Every candidate forward shape for head dim `d` and subgroup size `sgs` (for validation
    /// tests).
    pub fn all(d: u32, sgs: u32) -> Vec<CoopTiles> {
        Self::all_for(CoopKernel::Forward, d, sgs)
    }

    /// As [`all`](Self::all), for `kernel`.
    pub fn all_for(kernel: CoopKernel, d: u32, sgs: u32) -> Vec<CoopTiles> {
        let listed: Vec<(u32, u32, u32)> = match kernel {
            CoopKernel::Forward => CANDIDATES.to_vec(),
            CoopKernel::BackwardDq => DQ_CANDIDATES.iter().map(|&(n, bk)| (n, bk, 1)).collect(),
            CoopKernel::BackwardDkDv => DKDV_CANDIDATES.iter().map(|&(n, bk)| (n, bk, 1)).collect(),
        };
        let first = first_choice(kernel, d);
        first
            .into_iter()
            .chain(listed.into_iter().filter(|&c| Some(c) != first))
            .map(|(nsg, bk, rb)| CoopTiles {
                d,
                nsg,
                sgs,
                bk,
                rb,
            })
            .collect()
    }

    /// Specialisation constants of `kernel` for these tiles.
    pub fn constants(
        &self,
        kernel: CoopKernel,
        causal: bool,
        fast: bool,
    ) -> Vec<(&'static str, f64)> {
        // Array lengths in the kernel's elements (quads).
        let (kv, s, p) = self.lens(kernel);
        let (kv, s, p) = (kv / 4, s / 4, p / 4);
        let mut c = vec![
            ("SIGMOID_FAST", f64::from(u8::from(fast))),
            ("D", f64::from(self.d)),
            ("NSG", f64::from(self.nsg)),
            ("SGS", f64::from(self.sgs)),
            ("CAUSAL", f64::from(u8::from(causal))),
            ("WG", f64::from(self.workgroup_size_for(kernel))),
            ("S_LEN", f64::from(s)),
            ("P_LEN", f64::from(p)),
        ];
        // Each kernel is given only the overrides it declares.
        c.extend(match kernel {
            CoopKernel::Forward => [
                ("BK", f64::from(self.bk)),
                ("RB", f64::from(self.rb)),
                ("KV_LEN", f64::from(kv)),
            ]
            .to_vec(),
            CoopKernel::BackwardDq => {
                [("BK", f64::from(self.bk)), ("KV_LEN", f64::from(kv))].to_vec()
            }
            CoopKernel::BackwardDkDv => {
                [("BQ", f64::from(self.bk)), ("QO_LEN", f64::from(kv))].to_vec()
            }
        });
        c
    }
}

/// Identifies one specialised cooperative-matrix pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CoopKey {
    /// The kernel.
    pub kernel: CoopKernel,
    /// Storage path (one of [`STORAGE`]).
    pub storage: StoragePath,
    /// Tiles.
    pub tiles: CoopTiles,
    /// Causal masking.
    pub causal: bool,
    /// Fast sigmoid.
    pub fast: bool,
}

/// What an adapter offers the cooperative-matrix path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoopSupport {
    /// The adapter's (fixed) subgroup size.
    pub subgroup_size: u32,
}

impl CoopSupport {
    /// The support `adapter` gives the path, or why it gives none.
    pub fn detect(adapter: &wgpu::Adapter) -> std::result::Result<CoopSupport, String> {
        let features = adapter.features();
        if !features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
            return Err("the adapter has no EXPERIMENTAL_COOPERATIVE_MATRIX".into());
        }
        if !features.contains(wgpu::Features::SHADER_F16) {
            return Err("the adapter has no SHADER_F16".into());
        }
        // The f16 storage path unpacks words with unpack2x16float.
        if !adapter
            .get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::SHADER_F16_IN_F32)
        {
            return Err("the adapter has no SHADER_F16_IN_F32".into());
        }
        if !features.contains(wgpu::Features::SUBGROUP | wgpu::Features::SUBGROUP_BARRIER) {
            return Err("the adapter has no SUBGROUP and SUBGROUP_BARRIER".into());
        }
        let f16 = wgpu::CooperativeScalarType::F16;
        let f32 = wgpu::CooperativeScalarType::F32;
        let props = adapter.cooperative_matrix_properties();
        if !props.iter().any(|p| {
            p.m_size == 16
                && p.n_size == 16
                && p.k_size == 16
                && p.ab_type == f16
                && p.cr_type == f32
        }) {
            return Err(format!(
                "no 16x16x16 f16->f32 cooperative-matrix configuration (the adapter has {props:?})"
            ));
        }
        let info = adapter.get_info();
        if info.subgroup_min_size != info.subgroup_max_size || info.subgroup_min_size == 0 {
            return Err(format!(
                "the subgroup size varies ({}..{})",
                info.subgroup_min_size, info.subgroup_max_size
            ));
        }
        Ok(CoopSupport {
            subgroup_size: info.subgroup_min_size,
        })
    }
}

/// True when the cooperative-matrix kernels take tensors of `dtype`.
pub fn takes_dtype(dtype: DType) -> bool {
    matches!(dtype, DType::F16 | DType::BF16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_head_dim_takes_its_first_choice_when_it_fits() {
        let pick = |d, storage, inv| {
            CoopTiles::choose(d, 32, storage, inv).map(|t| (t.nsg, t.bk, t.rb, t.smem_bytes()))
        };
        assert_eq!(pick(128, 48 * 1024, 1024), Some((8, 16, 2, 48 * 1024)));
        assert_eq!(pick(64, 48 * 1024, 1024), Some((16, 16, 1, 48 * 1024)));
        // 256 invocations at most: 16 subgroups no longer fit.
        assert_eq!(
            pick(64, 48 * 1024, 256).map(|t| (t.0, t.1, t.2)),
            Some((8, 32, 1))
        );
        // 32 KiB: the first shape that fits, smaller than the first choice.
        let t = CoopTiles::choose(128, 32, 32 * 1024, 1024).unwrap();
        assert!(t.smem_bytes() <= 32 * 1024 && t.rows() <= 128, "{t:?}");
        let dkdv = |d| CoopTiles::choose_for(CoopKernel::BackwardDkDv, d, 32, 48 * 1024, 1024);
        assert_eq!(dkdv(64).map(|t| (t.nsg, t.bk)), Some((8, 16)));
        assert_eq!(dkdv(128).map(|t| (t.nsg, t.bk)), Some((4, 32)));
        for kernel in CoopKernel::ALL {
            for d in [16, 64, 96, 128] {
                let t = CoopTiles::choose_for(kernel, d, 32, 48 * 1024, 1024).unwrap();
                assert!(t.smem_bytes_for(kernel) <= 48 * 1024, "{kernel:?} {t:?}");
            }
        }
    }

    #[test]
    fn a_forced_shape_is_taken_only_where_it_fits() {
        let pick = |kernel, forced| {
            CoopTiles::forced_or_chosen(kernel, forced, 128, 32, 48 * 1024, 1024)
                .map(|t| (t.nsg, t.bk, t.rb))
        };
        let auto = pick(CoopKernel::Forward, None);
        assert_eq!(
            pick(CoopKernel::Forward, Some((4, 32, 1))),
            Some((4, 32, 1))
        );
        // 4×64×1 needs more than 48 KiB at D = 128.
        assert_eq!(pick(CoopKernel::Forward, Some((4, 64, 1))), auto);
        assert_eq!(
            pick(CoopKernel::BackwardDq, Some((4, 32, 1))),
            Some((4, 32, 1))
        );
    }

    #[test]
    fn register_arrays_match_the_shaders() {
        for (src, n) in [
            (FWD_COOP, FWD_PRE_MAX),
            (BWD_DQ_COOP, DQ_PRE_MAX),
            (BWD_DKDV_COOP, DKDV_PRE_MAX),
        ] {
            assert!(
                src.contains(&format!("const PRE_MAX: u32 = {n}u;")),
                "PRE_MAX {n}"
            );
        }
    }
}
