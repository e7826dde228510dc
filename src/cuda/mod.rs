//! The Hopper (sm_90a) backend: wgmma + TMA kernels shipped as cubins, launched through cudarc.
//!
//! - **Present or not.** [`CudaBackend::new`] probes for the driver library first (cudarc with
//!   dynamic loading panics on a missing library otherwise) and returns
//!   [`Error::DeviceUnavailable`] without libcuda, without a device, or on a GPU that is not
//!   compute capability 9.0: the `sm_90a` kernels (wgmma, TMA, `setmaxnreg`) run only there.
//! - **What it runs.** The forward for f16 and bf16 with head dim 64 or 128, every
//!   length/layout/mask combination a [`Plan`] allows whose strides TMA can walk (multiples of
//!   16 bytes). Everything else is declined with [`Error::Unsupported`] so that callers fall
//!   back (wgpu, then the CPU).
//! - **Backward (experimental, unverified).** `kernels/bwd_sm90.cu` implements the backward
//!   (dQ, dK, dV, d_bias) for the same plans, but it has only been compiled, never run on a
//!   GPU. It stays off unless the environment variable `SIGMOID_ATTN_CUDA_BACKWARD=1` is set
//!   when the backend is created; otherwise [`Backend::supports_backward`] and
//!   [`Backend::backward`] return [`Error::Unsupported`] and callers fall back. Two modes:
//!   the default adds dQ in fp32 atomics from the KV-block-outer kernel (fast, not bitwise
//!   repeatable); [`CudaBackend::set_deterministic`] (or `SIGMOID_ATTN_CUDA_DETERMINISTIC=1`)
//!   computes dQ in a separate query-outer kernel with no float atomics, so that results are
//!   bitwise repeatable. The fp32 workspaces are allocated on first use and kept (grown when a
//!   larger plan needs more), so repeated calls do not allocate.
//! - **Kernels.** `kernels/fwd_sm90.cu` and `kernels/bwd_sm90.cu`, compiled ahead by `kernels/build_cubins.py` with a
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::sys::{self, CUfunction_attribute};
use cudarc::driver::{
    result as driver_result, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream,
    DevicePtr,
};
use cudarc::nvrtc::Ptx;

use crate::backend::{Backend, BackwardArgs};
use crate::{DType, Error, HostTensor, Plan, Result};

use kernels::{Kernel, Variant};
use launch::{describe_backward, describe_forward, encode_map, BackwardLaunch, TensorMap};

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

/// Environment variable that turns the experimental backward on (`1`).
pub const BACKWARD_ENV: &str = "SIGMOID_ATTN_CUDA_BACKWARD";

/// Environment variable that makes the backward deterministic by default (`1`).
pub const DETERMINISTIC_ENV: &str = "SIGMOID_ATTN_CUDA_DETERMINISTIC";

/// The fp32 scratch memory of the backward, kept between calls.
#[derive(Default)]
struct Workspace {
    /// dQ accumulated in fp32 (atomic mode).
    accum: Option<CudaSlice<u8>>,
    /// Per-CTA partial sums of d_bias.
    partial: Option<CudaSlice<u8>>,
}

/// The Hopper backend on one device (its primary context).
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    device: String,
    jit: bool,
    backward_enabled: bool,
    deterministic: AtomicBool,
    modules: Mutex<HashMap<Variant, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(Variant, &'static str), CudaFunction>>,
    /// Held while one backward enqueues its kernels, so that the shared workspaces of two
    /// concurrent calls never interleave on the stream.
    workspace: Mutex<Workspace>,
    /// Per-sequence tables already on the device, by their bytes (kept with their address).
    seq_tables: Mutex<HashMap<Vec<u8>, SeqTable>>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("device", &self.device)
            .field("jit", &self.jit)
            .field("backward_enabled", &self.backward_enabled)
            .field("deterministic", &self.is_deterministic())
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
            jit: env_on("SIGMOID_ATTN_CUDA_JIT"),
            backward_enabled: env_on(BACKWARD_ENV),
            deterministic: AtomicBool::new(env_on(DETERMINISTIC_ENV)),
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            workspace: Mutex::new(Workspace::default()),
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
        self.function(l.variant, kernels::FWD_ENTRY)?;
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

    /// True when the experimental backward is switched on (`SIGMOID_ATTN_CUDA_BACKWARD=1` at
    /// creation).
    pub fn backward_enabled(&self) -> bool {
        self.backward_enabled
    }

    /// Selects the deterministic backward: dQ is computed by a separate query-outer kernel
    /// without float atomics (about 40% more tensor work in the backward), so that repeated
    /// runs give bitwise identical dQ, dK, dV and d_bias. Off by default unless
    /// `SIGMOID_ATTN_CUDA_DETERMINISTIC=1`. dK, dV and d_bias are deterministic in both modes.
    pub fn set_deterministic(&self, on: bool) {
        self.deterministic.store(on, Ordering::Relaxed);
    }

    /// Whether the backward runs in deterministic mode.
    pub fn is_deterministic(&self) -> bool {
        self.deterministic.load(Ordering::Relaxed)
    }

    /// Loads the backward kernels and allocates the workspaces and the per-sequence table that
    /// `plan` needs, so that later backward calls with this plan do not allocate or load.
    pub fn warm_up_backward(&self, plan: &Plan) -> Result<()> {
        self.supports_backward(plan)?;
        let l = describe_backward(plan)?;
        for entry in [
            kernels::BWD_DKDV,
            kernels::BWD_DQ,
            kernels::BWD_DQ_CONVERT,
            kernels::BWD_DBIAS,
        ] {
            self.function(l.variant, entry)?;
        }
        if let Some(t) = &l.seq_table {
            self.seq_table(t)?;
        }
        let mut ws = self.workspace.lock().map_err(|_| poisoned())?;
        self.workspace_ptrs(&mut ws, &l, !self.is_deterministic())?;
        Ok(())
    }

    /// The module of variant `v` (shipped cubin, or compiled at run time), loaded once.
    fn module(&self, v: Variant) -> Result<Arc<CudaModule>> {
        let mut map = self.modules.lock().map_err(|_| poisoned())?;
        if let Some(m) = map.get(&v) {
            return Ok(m.clone());
        }
        let cubin = match v.shipped_cubin() {
            Some(c) if !self.jit => c.to_vec(),
            _ => {
                let source = kernels::flatten(v.source())
                    .ok_or_else(|| unavailable("kernel sources missing from the build"))?;
                nvrtc::compile_cached(&v.name(), v.source(), &source, &v.nvrtc_options())?.cubin
            }
        };
        let module = self
            .ctx
            .load_module(Ptx::from_binary(cubin))
            .map_err(|e| driver_err(&format!("loading the {} cubin", v.name()), e))?;
        map.insert(v, module.clone());
        Ok(module)
    }

    /// Entry point `entry` of variant `v`, with its shared-memory limit raised as it needs.
    fn function(&self, v: Variant, entry: &'static str) -> Result<CudaFunction> {
        if let Some(f) = self
            .functions
            .lock()
            .map_err(|_| poisoned())?
            .get(&(v, entry))
        {
            return Ok(f.clone());
        }
        let module = self.module(v)?;
        let f = module
            .load_function(entry)
            .map_err(|e| driver_err(&format!("finding the kernel entry {entry}"), e))?;
        let smem = match v.kernel {
            Kernel::Forward => kernels::TileConfig::for_head_dim(v.head_dim)
                .ok_or_else(|| Error::Unsupported {
                    backend: BACKEND,
                    what: format!("head dim {}", v.head_dim),
                })?
                .smem_bytes(v.head_dim),
            Kernel::Backward => {
                let t = kernels::BwdTiles::get();
                match entry {
                    kernels::BWD_DKDV => t.dkdv_smem_bytes(v.head_dim),
                    kernels::BWD_DQ => t.dq_smem_bytes(v.head_dim),
                    _ => 0,
                }
            }
        };
        if smem > 0 {
            f.set_attribute(
                CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                smem as i32,
            )
            .map_err(|e| driver_err("raising the shared-memory limit", e))?;
        }
        self.functions
            .lock()
            .map_err(|_| poisoned())?
            .insert((v, entry), f.clone());
        Ok(f)
    }

    /// Device addresses of the backward workspaces (dQ accumulator only when `atomic`), grown
    /// when this plan needs more than the last one. Reused across calls on the backend's
    /// stream, which orders them.
    fn workspace_ptrs(
        &self,
        ws: &mut Workspace,
        l: &BackwardLaunch,
        atomic: bool,
    ) -> Result<(u64, u64)> {
        let accum_bytes = if atomic { l.accum_elems * 4 } else { 0 };
        let partial_bytes = (l.partial_elems * 4).max(4);
        let grow = |slot: &mut Option<CudaSlice<u8>>, bytes: usize| -> Result<()> {
            if bytes == 0 || slot.as_ref().is_some_and(|s| s.len() >= bytes) {
                return Ok(());
            }
            // The old buffer may still be in use by queued kernels: its free is ordered on the
            // stream, but wait anyway so that peak memory stays bounded.
            if slot.is_some() {
                self.stream
                    .synchronize()
                    .map_err(|e| driver_err("synchronize", e))?;
            }
            *slot = None;
            // SAFETY: the contents are scratch, written before they are read.
            let s = unsafe { self.stream.alloc::<u8>(bytes) }
                .map_err(|e| driver_err("allocating the backward workspace", e))?;
            *slot = Some(s);
            Ok(())
        };
        grow(&mut ws.accum, accum_bytes)?;
        grow(&mut ws.partial, partial_bytes)?;
        let ptr = |slot: &Option<CudaSlice<u8>>| {
            slot.as_ref()
                .map(|s| s.device_ptr(&self.stream).0)
                .unwrap_or(0)
        };
        Ok((if atomic { ptr(&ws.accum) } else { 0 }, ptr(&ws.partial)))
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
        let f = self.function(l.variant, kernels::FWD_ENTRY)?;
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

    /// Enqueues the backward kernels on the backend's stream (see kernels/bwd_sm90.cu for the
    /// order and what each writes).
    fn launch_backward(&self, plan: &Plan, ptrs: BackwardPtrs) -> Result<()> {
        let l = describe_backward(plan)?;
        let stream = self.stream.cu_stream();
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver_err("binding the context", e))?;
        for (name, p) in [("dq", ptrs.dq), ("dk", ptrs.dk), ("dv", ptrs.dv)] {
            if p % 4 != 0 {
                return Err(Error::Unsupported {
                    backend: BACKEND,
                    what: format!("a {name} address that is not 4-byte aligned"),
                });
            }
        }
        let deterministic = self.is_deterministic();
        let seq_ptr = match &l.seq_table {
            Some(t) => self.seq_table(t)?,
            None => 0,
        };
        // Held until every kernel of this call is enqueued (see `workspace`).
        let mut ws = self.workspace.lock().map_err(|_| poisoned())?;
        let (accum_ptr, partial_ptr) = self.workspace_ptrs(&mut ws, &l, !deterministic)?;
        let mut params = l.params;
        params.dq_ptr = ptrs.dq;
        params.dk_ptr = ptrs.dk;
        params.dv_ptr = ptrs.dv;
        params.dq_accum_ptr = accum_ptr;
        params.dbias_partial_ptr = partial_ptr;
        params.dbias_ptr = ptrs.d_bias.unwrap_or(0);
        params.seq_ptr = seq_ptr;
        params.atomic_dq = i32::from(!deterministic);

        let (dt, d, t) = (plan.dtype(), plan.head_dim(), l.tiles);
        let block = (t.threads(), 1, 1);
        let nonempty = |g: (u32, u32, u32)| g.0 > 0 && g.1 > 0 && g.2 > 0;
        let launch = |entry: &'static str,
                      grid: (u32, u32, u32),
                      block: (u32, u32, u32),
                      smem: u32,
                      maps: Option<[&TensorMap; 4]>,
                      params: &mut launch::BwdParams|
         -> Result<()> {
            if !nonempty(grid) {
                return Ok(());
            }
            let f = self.function(l.variant, entry)?;
            let mut args: Vec<*mut c_void> = Vec::with_capacity(5);
            if let Some(m) = maps {
                for x in m {
                    args.push(x as *const TensorMap as *mut c_void);
                }
            }
            args.push(params as *mut launch::BwdParams as *mut c_void);
            // SAFETY: the argument list matches the entry's signature in bwd_sm90.cu (four
            // tensor maps for dkdv and dq, then the parameter block); maps, grid and pointers
            // were derived from the plan, whose buffers the caller's CudaBuffers cover.
            unsafe {
                driver_result::launch_kernel(f.cu_function(), grid, block, smem, stream, &mut args)
            }
            .map_err(|e| driver_err(&format!("launching {entry}"), e))
        };

        if !deterministic && l.accum_elems > 0 {
            // SAFETY: accum_ptr addresses at least accum_elems * 4 bytes (workspace_ptrs).
            unsafe { driver_result::memset_d8_async(accum_ptr, 0, l.accum_elems * 4, stream) }
                .map_err(|e| driver_err("clearing the dQ workspace", e))?;
        }
        // dK/dV kernel: Q and dO tiles of query_tile rows, K and V blocks of key_block rows.
        {
            let tm_q = encode_map(ptrs.q, dt, d, &l.q_map, t.query_tile)?;
            let tm_k = encode_map(ptrs.k, dt, d, &l.k_map, t.key_block)?;
            let tm_v = encode_map(ptrs.v, dt, d, &l.v_map, t.key_block)?;
            let tm_do = encode_map(ptrs.d_o, dt, d, &l.o_map, t.query_tile)?;
            launch(
                kernels::BWD_DKDV,
                l.dkdv_grid,
                block,
                t.dkdv_smem_bytes(d),
                Some([&tm_q, &tm_k, &tm_v, &tm_do]),
                &mut params,
            )?;
        }
        if deterministic {
            let tm_q = encode_map(ptrs.q, dt, d, &l.q_map, t.query_block)?;
            let tm_k = encode_map(ptrs.k, dt, d, &l.k_map, t.key_tile)?;
            let tm_v = encode_map(ptrs.v, dt, d, &l.v_map, t.key_tile)?;
            let tm_do = encode_map(ptrs.d_o, dt, d, &l.o_map, t.query_block)?;
            launch(
                kernels::BWD_DQ,
                l.dq_grid,
                block,
                t.dq_smem_bytes(d),
                Some([&tm_q, &tm_k, &tm_v, &tm_do]),
                &mut params,
            )?;
        } else {
            launch(
                kernels::BWD_DQ_CONVERT,
                l.convert_grid,
                block,
                0,
                None,
                &mut params,
            )?;
        }
        if ptrs.d_bias.is_some() {
            launch(
                kernels::BWD_DBIAS,
                (plan.batch() as u32, 1, 1),
                (32, 1, 1),
                0,
                None,
                &mut params,
            )?;
        }
        Ok(())
    }

    fn check(&self, plan: &Plan, name: &'static str, b: &CudaBuffer, len: usize) -> Result<()> {
        plan.check_buffer(name, b.dtype, b.len, plan.dtype(), len)
    }
}

/// Device addresses of the backward's tensors (strides as the plan says).
#[derive(Debug, Clone, Copy)]
struct BackwardPtrs {
    q: u64,
    k: u64,
    v: u64,
    d_o: u64,
    dq: u64,
    dk: u64,
    dv: u64,
    d_bias: Option<u64>,
}

fn env_on(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

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

    /// Declined unless `SIGMOID_ATTN_CUDA_BACKWARD=1` was set when the backend was created:
    /// the Hopper backward is experimental and has not been verified on a GPU yet.
    fn supports_backward(&self, plan: &Plan) -> Result<()> {
        if !self.backward_enabled {
            return Err(Error::Unsupported {
                backend: BACKEND,
                what: format!(
                    "the backward pass (experimental and unverified on Hopper; set \
                     {BACKWARD_ENV}=1 to try it)"
                ),
            });
        }
        describe_backward(plan).map(|_| ())
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

    fn backward(&self, plan: &Plan, args: BackwardArgs<'_, CudaBuffer>) -> Result<()> {
        self.supports_backward(plan)?;
        self.check(plan, "q", args.q, plan.q_elems())?;
        self.check(plan, "k", args.k, plan.k_elems())?;
        self.check(plan, "v", args.v, plan.v_elems())?;
        self.check(plan, "d_o", args.d_o, plan.o_elems())?;
        self.check(plan, "dq", args.dq, plan.q_elems())?;
        self.check(plan, "dk", args.dk, plan.k_elems())?;
        self.check(plan, "dv", args.dv, plan.v_elems())?;
        if let Some(db) = &args.d_bias {
            plan.check_buffer("d_bias", db.dtype, db.len, DType::F32, plan.batch())?;
        }
        let s = &self.stream;
        let (q, _q_sync) = args.q.data.device_ptr(s);
        let (k, _k_sync) = args.k.data.device_ptr(s);
        let (v, _v_sync) = args.v.data.device_ptr(s);
        let (d_o, _do_sync) = args.d_o.data.device_ptr(s);
        let (dq, _dq_sync) = args.dq.data.device_ptr(s);
        let (dk, _dk_sync) = args.dk.data.device_ptr(s);
        let (dv, _dv_sync) = args.dv.data.device_ptr(s);
        let d_bias = args.d_bias.as_ref().map(|b| b.data.device_ptr(s));
        let ptrs = BackwardPtrs {
            q,
            k,
            v,
            d_o,
            dq,
            dk,
            dv,
            d_bias: d_bias.as_ref().map(|(p, _)| *p),
        };
        self.launch_backward(plan, ptrs)
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
