//! The Hopper (sm_90a) backend: wgmma + TMA kernels shipped as cubins, launched through cudarc.
//!
//! - **Present or not.** [`CudaBackend::new`] probes for the driver library first (cudarc with
//!   dynamic loading panics on a missing library otherwise) and returns
//!   [`Error::DeviceUnavailable`] without libcuda, without a device, or on a GPU that is not
//!   compute capability 9.0: the `sm_90a` kernels (wgmma, TMA, `setmaxnreg`) run only there.
//! - **What it runs.** The forward for f16 and bf16 with head dim 64 or 128, every
//!   length/layout/mask combination a [`Plan`] allows whose strides TMA can walk (multiples of
//!   16 bytes). Everything else is declined with [`Error::Unsupported`] so that callers fall
//!   back (wgpu, then the CPU). The backward is not implemented here yet and is declined.
//! - **Kernels.** `kernels/fwd_sm90.cu`, compiled ahead by `kernels/build_cubins.py` with a
//!   pinned NVRTC and embedded in the crate, so a machine with only the NVIDIA driver runs them.
//!   Variants that are not shipped (or all of them, with `SIGMOID_ATTN_CUDA_JIT=1`) are
//!   compiled at run time by NVRTC and cached on disk (see `nvrtc.rs`).
//! - **Caller-owned memory.** [`CudaBackend::forward_raw`] launches on raw device pointers and
//!   a borrowed `CUstream` (PyTorch's, candle's) on the device's primary context. After
//!   [`CudaBackend::warm_up`] with the same plan it neither allocates device memory, loads
//!   modules nor synchronises.
//!
//! Padding may hold anything (NaN included): keys past a sequence's length are masked, the V
//! rows of the tail tile past it are zeroed in shared memory, and O rows past `len_q` are
//! written as zeros.
//!
//! The fast sigmoid is `0.5 * tanh.approx(0.5 x) + 0.5` (one MUFU op per element); its tanh is
//! accurate to about 2^-11 relative, so P has an absolute error of up to ~2.5e-4, large
//! relative to P for very negative logits. `SigmoidMode::Accurate` uses `ex2` and `rcp`
//! (a few ulps of f32 over the whole range) at the price of a second MUFU op.

mod kernels;
mod launch;
mod nvrtc;

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{self, CUfunction_attribute};
use cudarc::driver::{
    result as driver_result, CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr,
};
use cudarc::nvrtc::Ptx;

use crate::backend::{Backend, BackwardArgs};
use crate::{DType, Error, HostTensor, Plan, Result};

use kernels::Variant;
use launch::{describe_forward, encode_map};

pub use cudarc::driver::sys::CUstream;

const BACKEND: &str = "cuda";

fn driver_err(what: &str, e: driver_result::DriverError) -> Error {
    Error::Driver {
        backend: BACKEND,
        message: format!("{what}: {e}"),
    }
}

fn unavailable(reason: impl Into<String>) -> Error {
    Error::DeviceUnavailable {
        backend: BACKEND,
        reason: reason.into(),
    }
}

/// A device buffer of the CUDA backend: `len` elements of `dtype`.
#[derive(Debug)]
pub struct CudaBuffer {
    data: CudaSlice<u8>,
    dtype: DType,
    len: usize,
}

impl CudaBuffer {
    /// Storage type of the elements.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the buffer holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The underlying cudarc slice (bytes), e.g. to share it with other cudarc code.
    pub fn as_slice(&self) -> &CudaSlice<u8> {
        &self.data
    }
}

/// Device addresses of Q, K, V and O for [`CudaBackend::forward_raw`], laid out as the plan's
/// strides say (element offsets from these addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawTensors {
    /// Queries.
    pub q: u64,
    /// Keys.
    pub k: u64,
    /// Values.
    pub v: u64,
    /// Output.
    pub o: u64,
}

/// The Hopper backend on one device (its primary context).
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    device: String,
    jit: bool,
    functions: Mutex<HashMap<Variant, CudaFunction>>,
    /// Per-sequence tables already on the device, by their bytes (kept with their address).
    seq_tables: Mutex<HashMap<Vec<u8>, SeqTable>>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("device", &self.device)
            .field("jit", &self.jit)
            .finish()
    }
}

/// A per-sequence table on the device and its address.
type SeqTable = (CudaSlice<u8>, u64);

/// Per-sequence tables kept on the device before the cache is flushed.
const MAX_SEQ_TABLES: usize = 64;

impl CudaBackend {
    /// The backend on device 0.
    pub fn new() -> Result<Self> {
        Self::with_device(0)
    }

    /// The backend on device `ordinal`. `DeviceUnavailable` when the driver library or the
    /// device is missing, or the device is not a Hopper GPU (compute capability 9.0).
    pub fn with_device(ordinal: usize) -> Result<Self> {
        // SAFETY: only probes whether the shared library can be loaded.
        if !unsafe { sys::is_culib_present() } {
            return Err(unavailable(
                "the NVIDIA driver library (libcuda) was not found",
            ));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| unavailable(format!("cannot open CUDA device {ordinal}: {e}")))?;
        let cc = ctx
            .compute_capability()
            .map_err(|e| unavailable(format!("cannot query device {ordinal}: {e}")))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        if cc != (9, 0) {
            return Err(unavailable(format!(
                "{name} has compute capability {}.{}; the kernels are built for sm_90a (H100/H200)",
                cc.0, cc.1
            )));
        }
        let stream = ctx.default_stream();
        Ok(CudaBackend {
            ctx,
            stream,
            device: format!("{name} (sm_90a, device {ordinal})"),
            jit: std::env::var("SIGMOID_ATTN_CUDA_JIT").is_ok_and(|v| v == "1"),
            functions: Mutex::new(HashMap::new()),
            seq_tables: Mutex::new(HashMap::new()),
        })
    }

    /// The cudarc context (the device's primary context).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream the [`Backend`] methods run on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Loads the kernel and uploads the per-sequence table that `plan` needs, so that later
    /// [`forward_raw`](Self::forward_raw) calls with this plan do no allocation, module load or
    /// synchronisation.
    pub fn warm_up(&self, plan: &Plan) -> Result<()> {
        let l = describe_forward(plan)?;
        self.function(l.variant)?;
        if let Some(t) = &l.seq_table {
            self.seq_table(t)?;
        }
        Ok(())
    }

    /// The forward on caller-owned memory and a caller-owned stream.
    ///
    /// `ptrs` are device addresses in this backend's context (the primary context of its
    /// device), holding Q, K, V and O with the plan's element strides and dtype. The kernel is
    /// enqueued on `stream` and this returns without waiting.
    ///
    /// # Safety
    ///
    /// The four addresses must point to device allocations large enough for the plan
    /// (`q_elems`, … elements), valid until the kernel has run on `stream`; O must not overlap
    /// Q, K or V; `stream` must be a live stream of this device's primary context (or null for
    /// the legacy default stream).
    pub unsafe fn forward_raw(
        &self,
        plan: &Plan,
        ptrs: RawTensors,
        stream: CUstream,
    ) -> Result<()> {
        self.launch_forward(plan, ptrs, stream)
    }

    fn function(&self, v: Variant) -> Result<CudaFunction> {
        let mut map = self.functions.lock().map_err(|_| poisoned())?;
        if let Some(f) = map.get(&v) {
            return Ok(f.clone());
        }
        let cubin = match v.shipped_cubin() {
            Some(c) if !self.jit => c.to_vec(),
            _ => {
                let source = kernels::flatten(kernels::FWD_SOURCE)
                    .ok_or_else(|| unavailable("kernel sources missing from the build"))?;
                nvrtc::compile_cached(&v.name(), kernels::FWD_SOURCE, &source, &v.nvrtc_options())?
                    .cubin
            }
        };
        let module = self
            .ctx
            .load_module(Ptx::from_binary(cubin))
            .map_err(|e| driver_err(&format!("loading the {} cubin", v.name()), e))?;
        let f = module
            .load_function(kernels::FWD_ENTRY)
            .map_err(|e| driver_err("finding the kernel entry", e))?;
        let tiles =
            kernels::TileConfig::for_head_dim(v.head_dim).ok_or_else(|| Error::Unsupported {
                backend: BACKEND,
                what: format!("head dim {}", v.head_dim),
            })?;
        f.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            tiles.smem_bytes(v.head_dim) as i32,
        )
        .map_err(|e| driver_err("raising the shared-memory limit", e))?;
        map.insert(v, f.clone());
        Ok(f)
    }

    /// Device address of the per-sequence table with these bytes (uploaded once).
    fn seq_table(&self, bytes: &[u8]) -> Result<u64> {
        let mut map = self.seq_tables.lock().map_err(|_| poisoned())?;
        if let Some((_, ptr)) = map.get(bytes) {
            return Ok(*ptr);
        }
        if map.len() >= MAX_SEQ_TABLES {
            // Kernels may still read old tables: wait for them before freeing.
            self.ctx
                .synchronize()
                .map_err(|e| driver_err("synchronize", e))?;
            map.clear();
        }
        let slice = self
            .stream
            .clone_htod(bytes)
            .map_err(|e| driver_err("uploading the sequence table", e))?;
        let ptr = {
            let (p, _sync) = slice.device_ptr(&self.stream);
            p
        };
        // Other streams (forward_raw) must see the table complete.
        self.stream
            .synchronize()
            .map_err(|e| driver_err("synchronize", e))?;
        map.insert(bytes.to_vec(), (slice, ptr));
        Ok(ptr)
    }

    fn launch_forward(&self, plan: &Plan, ptrs: RawTensors, stream: CUstream) -> Result<()> {
        let l = describe_forward(plan)?;
        if l.grid.0 == 0 || l.grid.1 == 0 || l.grid.2 == 0 {
            return Ok(()); // no rows of O to write
        }
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver_err("binding the context", e))?;
        let f = self.function(l.variant)?;
        let seq_ptr = match &l.seq_table {
            Some(t) => self.seq_table(t)?,
            None => 0,
        };
        let (dt, d) = (plan.dtype(), plan.head_dim());
        let tm_q = encode_map(ptrs.q, dt, d, &l.q_map, l.tiles.block_m)?;
        let tm_k = encode_map(ptrs.k, dt, d, &l.k_map, l.tiles.block_n)?;
        let tm_v = encode_map(ptrs.v, dt, d, &l.v_map, l.tiles.block_n)?;
        if ptrs.o % 4 != 0 {
            return Err(Error::Unsupported {
                backend: BACKEND,
                what: "an O address that is not 4-byte aligned".into(),
            });
        }
        let mut params = l.params;
        params.o_ptr = ptrs.o;
        params.seq_ptr = seq_ptr;
        let mut args: [*mut c_void; 4] = [
            &tm_q as *const _ as *mut c_void,
            &tm_k as *const _ as *mut c_void,
            &tm_v as *const _ as *mut c_void,
            &mut params as *mut _ as *mut c_void,
        ];
        // SAFETY: the argument list matches the kernel signature (three tensor maps and the
        // parameter block, kernels/fwd_sm90.cu); the tensor maps and the launch geometry were
        // derived from the plan, whose buffers the caller vouches for.
        unsafe {
            driver_result::launch_kernel(
                f.cu_function(),
                l.grid,
                (l.tiles.threads(), 1, 1),
                l.tiles.smem_bytes(d),
                stream,
                &mut args,
            )
        }
        .map_err(|e| driver_err("launching the forward kernel", e))
    }

    fn check(&self, plan: &Plan, name: &'static str, b: &CudaBuffer, len: usize) -> Result<()> {
        plan.check_buffer(name, b.dtype, b.len, plan.dtype(), len)
    }
}

/// The result of compiling one forward variant at run time ([`compile_forward`]).
#[derive(Debug, Clone)]
pub struct KernelBuild {
    /// Variant name, as the shipped cubin's file stem (`fwd_bf16_d128_fast`).
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
    if !matches!(dtype, DType::F16 | DType::BF16)
        || kernels::TileConfig::for_head_dim(head_dim).is_none()
    {
        return Err(Error::Unsupported {
            backend: BACKEND,
            what: format!("a {dtype} forward with head dim {head_dim}"),
        });
    }
    let v = Variant {
        dtype,
        head_dim,
        sigmoid,
    };
    let nvrtc_version = nvrtc::version()?;
    let source = kernels::flatten(kernels::FWD_SOURCE)
        .ok_or_else(|| unavailable("kernel sources missing from the build"))?;
    let c = nvrtc::compile(&v.name(), kernels::FWD_SOURCE, &source, &v.nvrtc_options())?;
    Ok(KernelBuild {
        name: v.name(),
        nvrtc: nvrtc_version,
        problems: nvrtc::ptxas_problems(&c.log),
        cubin: c.cubin,
        log: c.log,
        shipped: v.shipped_cubin(),
    })
}

fn poisoned() -> Error {
    Error::Driver {
        backend: BACKEND,
        message: "a kernel cache lock was poisoned by a panic".into(),
    }
}

impl Backend for CudaBackend {
    type Buffer = CudaBuffer;

    fn name(&self) -> &'static str {
        BACKEND
    }

    fn device_name(&self) -> String {
        self.device.clone()
    }

    fn supports_forward(&self, plan: &Plan) -> Result<()> {
        describe_forward(plan).map(|_| ())
    }

    fn supports_backward(&self, _plan: &Plan) -> Result<()> {
        Err(Error::Unsupported {
            backend: BACKEND,
            what: "the backward pass (not implemented on Hopper yet)".into(),
        })
    }

    fn fast_sigmoid_bits(&self) -> Option<u32> {
        // tanh.approx.f32: about 2^-11 relative error (PTX ISA).
        Some(11)
    }

    fn alloc(&self, dtype: DType, len: usize) -> Result<CudaBuffer> {
        let bytes = (len * dtype.size_bytes()).max(1);
        // SAFETY: u8 has no invalid bit patterns; the contents are documented as unspecified.
        let data =
            unsafe { self.stream.alloc::<u8>(bytes) }.map_err(|e| driver_err("cuMemAlloc", e))?;
        Ok(CudaBuffer { data, dtype, len })
    }

    fn upload(&self, data: &HostTensor) -> Result<CudaBuffer> {
        let bytes = data.as_bytes();
        let data_dev = if bytes.is_empty() {
            // SAFETY: as in alloc.
            unsafe { self.stream.alloc::<u8>(1) }
        } else {
            self.stream.clone_htod(bytes)
        }
        .map_err(|e| driver_err("uploading", e))?;
        Ok(CudaBuffer {
            data: data_dev,
            dtype: data.dtype(),
            len: data.len(),
        })
    }

    fn download(&self, buf: &CudaBuffer) -> Result<HostTensor> {
        let mut bytes = self
            .stream
            .clone_dtoh(&buf.data)
            .map_err(|e| driver_err("downloading", e))?;
        bytes.truncate(buf.len * buf.dtype.size_bytes());
        Ok(HostTensor::from_bytes(buf.dtype, &bytes))
    }

    fn forward(
        &self,
        plan: &Plan,
        q: &CudaBuffer,
        k: &CudaBuffer,
        v: &CudaBuffer,
        o: &mut CudaBuffer,
    ) -> Result<()> {
        self.check(plan, "q", q, plan.q_elems())?;
        self.check(plan, "k", k, plan.k_elems())?;
        self.check(plan, "v", v, plan.v_elems())?;
        self.check(plan, "o", o, plan.o_elems())?;
        let s = &self.stream;
        let (qp, _q_sync) = q.data.device_ptr(s);
        let (kp, _k_sync) = k.data.device_ptr(s);
        let (vp, _v_sync) = v.data.device_ptr(s);
        let (op, _o_sync) = o.data.device_ptr(s);
        let ptrs = RawTensors {
            q: qp,
            k: kp,
            v: vp,
            o: op,
        };
        self.launch_forward(plan, ptrs, s.cu_stream())
    }

    fn backward(&self, _plan: &Plan, _args: BackwardArgs<'_, CudaBuffer>) -> Result<()> {
        Err(Error::Unsupported {
            backend: BACKEND,
            what: "the backward pass (not implemented on Hopper yet)".into(),
        })
    }

    fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| driver_err("synchronize", e))
    }

    /// Kernel time between two CUDA events recorded on the backend's stream around `enqueue`.
    fn time_ms(&self, enqueue: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self
            .stream
            .record_event(timing)
            .map_err(|e| driver_err("record start event", e))?;
        enqueue()?;
        let end = self
            .stream
            .record_event(timing)
            .map_err(|e| driver_err("record end event", e))?;
        let ms = start
            .elapsed_ms(&end)
            .map_err(|e| driver_err("event elapsed time", e))?;
        Ok(ms as f64)
    }
}
