//! Compiling kernel variants at run time with the NVRTC found on the machine, for checks and
//! tooling (the backend itself loads the shipped cubins, or compiles through its disk cache).

use super::*;

/// The result of compiling one kernel variant at run time ([`compile_forward`],
/// [`compile_backward`]).
#[derive(Debug, Clone)]
pub struct KernelBuild {
    /// Variant name, as the shipped cubin's file stem (`fwd_bf16_d128_fast`, `bwd_f16_d64_fast`).
    pub name: String,
    /// NVRTC version that compiled it.
    pub nvrtc: (i32, i32),
    /// The cubin.
    pub cubin: Vec<u8>,
    /// NVRTC's log, ptxas statistics included.
    pub log: String,
    /// Register spills or wgmma serialization found in the log (empty when clean).
    pub problems: Vec<String>,
    /// The cubin shipped with the crate for this variant, if any.
    pub shipped: Option<&'static [u8]>,
}

/// Compiles one forward variant with the NVRTC library found at run time (no cache), for
/// checks and for tooling. `DeviceUnavailable` without libnvrtc; `Unsupported` for variants
/// without a tile configuration or NVRTC versions known to be broken; `Compile` with the log
/// on a failed compile. Needs no GPU.
pub fn compile_forward(
    dtype: DType,
    head_dim: usize,
    sigmoid: crate::SigmoidMode,
) -> Result<KernelBuild> {
    compile_variant(Kernel::Forward, dtype, head_dim, sigmoid)
}

/// Compiles one backward variant (all four entry points of `kernels/bwd_sm90.cu`) like
/// [`compile_forward`]. Needs no GPU.
pub fn compile_backward(
    dtype: DType,
    head_dim: usize,
    sigmoid: crate::SigmoidMode,
) -> Result<KernelBuild> {
    compile_variant(Kernel::Backward, dtype, head_dim, sigmoid)
}

fn compile_variant(
    kernel: Kernel,
    dtype: DType,
    head_dim: usize,
    sigmoid: crate::SigmoidMode,
) -> Result<KernelBuild> {
    if !matches!(dtype, DType::F16 | DType::BF16)
        || kernels::TileConfig::for_head_dim(head_dim).is_none()
    {
        return Err(Error::Unsupported {
            backend: BACKEND,
            what: format!("a {dtype} kernel with head dim {head_dim}"),
        });
    }
    let v = Variant {
        kernel,
        dtype,
        head_dim,
        sigmoid,
    };
    let nvrtc_version = nvrtc::version()?;
    let source = kernels::flatten(v.source())
        .ok_or_else(|| unavailable("kernel sources missing from the build"))?;
    let c = nvrtc::compile(&v.name(), v.source(), &source, &v.nvrtc_options())?;
    Ok(KernelBuild {
        name: v.name(),
        nvrtc: nvrtc_version,
        problems: nvrtc::ptxas_problems(&c.log),
        cubin: c.cubin,
        log: c.log,
        shipped: v.shipped_cubin(),
    })
}
