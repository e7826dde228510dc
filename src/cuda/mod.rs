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
//! - **Backward.** `kernels/bwd_sm90.cu` computes dQ, dK, dV and d_bias for the same plans
//!   (gradient conformance on an H200; see BENCHMARKS.md). Setting the environment variable
//!   `SIGMOID_ATTN_CUDA_BACKWARD=0` when the backend is created turns it off, so that
//!   [`Backend::supports_backward`] and [`Backend::backward`] return [`Error::Unsupported`]
//!   and callers fall back to wgpu or the CPU. Two modes:
//!   the default adds dQ in fp32 atomics from the KV-block-outer kernel (fast, not bitwise
//!   repeatable); [`CudaBackend::set_deterministic`] (or `SIGMOID_ATTN_CUDA_DETERMINISTIC=1`)
//!   computes dQ in a separate query-outer kernel with no float atomics, so that results are
//!   bitwise repeatable. The fp32 workspaces are allocated on first use and kept (grown when a
//!   larger plan needs more), so repeated calls do not allocate.
//! - **Kernels.** `kernels/fwd_sm90.cu` and `kernels/bwd_sm90.cu`, compiled ahead by `kernels/build_cubins.py` with a
//!   pinned NVRTC and embedded in the crate, so a machine with only the NVIDIA driver runs them.
//!   Variants that are not shipped (or all of them, with `SIGMOID_ATTN_CUDA_JIT=1`) are
//!   compiled at run time by NVRTC and cached on disk (see `nvrtc.rs`). For kernel
//!   development, `SIGMOID_ATTN_CUDA_CUBIN_DIR=<dir>` at creation loads `<dir>/<variant>.cubin`
//!   (e.g. `fwd_bf16_d128_fast.cubin`) where that file exists, so that one binary can time
//!   several builds of a kernel (`kernels/dev/build_experiments.py`); such a cubin must keep
//!   the shipped variant's parameters and shared-memory size.
//! - **Caller-owned memory.** [`CudaBackend::forward_raw`] and [`CudaBackend::backward_raw`]
//!   launch on raw device pointers and a borrowed `CUstream` (PyTorch's, candle's) on the
//!   device's primary context. After [`CudaBackend::warm_up`] (forward) or
//!   [`CudaBackend::warm_up_backward`] (backward) with the same plan they neither allocate
//!   device memory, load modules nor synchronise; `backward_raw` refuses, rather than
//!   allocates, when its workspaces were not sized by a warm-up.
//!
//! Padding may hold anything (NaN included): keys past a sequence's length are masked, the V
//! rows of the tail tile past it are zeroed in shared memory, and O rows past `len_q` are
//! written as zeros.
//!
//! The fast sigmoid is `0.5 * tanh.approx(0.5 x) + 0.5` (one MUFU op per element); its tanh is
//! accurate to about 2^-11 relative, so P has an absolute error of up to ~2.5e-4, large
//! relative to P for very negative logits. `SigmoidMode::Accurate` uses `ex2` and `rcp`
//! (a few ulps of f32 over the whole range) at the price of a second MUFU op.

mod backward;
mod compile;
mod kernels;
mod launch;
mod nvrtc;
mod schedule;

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

use crate::backend::{check_forward, Backend, BackwardArgs, DeviceBuffer};
use crate::{DType, Error, HostTensor, Plan, Result};

use kernels::{Kernel, Variant};
use launch::{
    describe_backward, describe_forward, encode_map, BackwardLaunch, ForwardLaunch, TensorMap,
};

pub use backward::RawGradTensors;
use backward::Workspace;
pub use compile::{compile_backward, compile_forward, KernelBuild};
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
    /// The underlying cudarc slice (bytes), e.g. to share it with other cudarc code.
    pub fn as_slice(&self) -> &CudaSlice<u8> {
        &self.data
    }
}

impl DeviceBuffer for CudaBuffer {
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn len(&self) -> usize {
        self.len
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

/// Environment variable that turns the Hopper backward off (`0`); it is on otherwise.
pub const BACKWARD_ENV: &str = "SIGMOID_ATTN_CUDA_BACKWARD";

/// Environment variable that makes the backward deterministic by default (`1`).
pub const DETERMINISTIC_ENV: &str = "SIGMOID_ATTN_CUDA_DETERMINISTIC";

/// Read when the backend is created: a directory of development cubins that replace the
/// shipped ones of the same name (see the module docs).
pub const CUBIN_DIR_ENV: &str = "SIGMOID_ATTN_CUDA_CUBIN_DIR";

/// The Hopper backend on one device (its primary context).
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    device: String,
    /// Streaming multiprocessors: the forward's persistent grid has at most one CTA on each.
    sm_count: u32,
    jit: bool,
    /// `SIGMOID_ATTN_CUDA_CUBIN_DIR` at creation.
    cubin_dir: Option<std::path::PathBuf>,
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

/// A per-sequence table on the device, its address, and the forward's work-order length.
type SeqTable = (CudaSlice<u8>, u64, i32);

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
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| unavailable(format!("cannot query device {ordinal}: {e}")))?;
        let stream = ctx.default_stream();
        Ok(CudaBackend {
            ctx,
            stream,
            device: format!("{name} (sm_90a, device {ordinal})"),
            sm_count: sm_count.max(1) as u32,
            jit: env_on("SIGMOID_ATTN_CUDA_JIT"),
            cubin_dir: std::env::var_os(CUBIN_DIR_ENV)
                .filter(|dir| !dir.is_empty())
                .map(std::path::PathBuf::from),
            backward_enabled: !env_is(BACKWARD_ENV, "0"),
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
        self.function(l.variant, l.entry())?;
        self.forward_table(&l)?;
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

    /// True unless the backward was switched off (`SIGMOID_ATTN_CUDA_BACKWARD=0` at creation).
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
        let l = self.backward_launch(plan)?;
        for entry in [
            kernels::BWD_DKDV,
            kernels::BWD_DQ,
            kernels::BWD_DQ_CONVERT,
            kernels::BWD_DBIAS,
        ] {
            self.function(l.variant, entry)?;
        }
        self.backward_table(&l)?;
        let mut ws = self.workspace.lock().map_err(|_| poisoned())?;
        self.workspace_ptrs(&mut ws, &l, !self.is_deterministic(), true)?;
        Ok(())
    }

    /// The backward on caller-owned memory and a caller-owned stream: the training-side twin
    /// of [`forward_raw`](Self::forward_raw).
    ///
    /// `ptrs` are device addresses in this backend's context holding Q, K, V, dO (read) and
    /// dQ, dK, dV and optionally d_bias (written) with the plan's element strides and dtype
    /// (d_bias: `batch` f32 values). The kernels are enqueued on `stream` and this returns
    /// without waiting. It never allocates: call
    /// [`warm_up_backward`](Self::warm_up_backward) with this plan (or one that needs at least
    /// as much workspace) in the current dQ mode first; a workspace that is too small is an
    /// `Error::InvalidBuffer`, and nothing is enqueued.
    ///
    /// # Safety
    ///
    /// The addresses must point to device allocations large enough for the plan, valid until
    /// the kernels have run on `stream`; the outputs must not overlap the inputs or each other;
    /// `stream` must be a live stream of this device's primary context (or null for the legacy
    /// default stream). Backward calls on one backend share its fp32 workspaces: they must not
    /// run concurrently on different streams (enqueue them on one stream, or order the streams
    /// with events), and the same holds between this and [`Backend::backward`].
    pub unsafe fn backward_raw(
        &self,
        plan: &Plan,
        ptrs: RawGradTensors,
        stream: CUstream,
    ) -> Result<()> {
        let l = self.backward_launch(plan)?;
        self.launch_backward(plan, &l, ptrs, stream, false)
    }

    /// The launches of the backward of `plan`, or why this backend declines it (switched off,
    /// or a plan the kernels do not cover).
    fn backward_launch(&self, plan: &Plan) -> Result<BackwardLaunch> {
        if !self.backward_enabled {
            return Err(Error::Unsupported {
                backend: BACKEND,
                what: format!("the backward pass (switched off by {BACKWARD_ENV}=0)"),
            });
        }
        describe_backward(plan)
    }

    /// The module of variant `v` (a development cubin, the shipped cubin, or compiled at run
    /// time), loaded once.
    fn module(&self, v: Variant) -> Result<Arc<CudaModule>> {
        let mut map = self.modules.lock().map_err(|_| poisoned())?;
        if let Some(m) = map.get(&v) {
            return Ok(m.clone());
        }
        let dev_cubin = self
            .cubin_dir
            .as_ref()
            .map(|dir| dir.join(format!("{}.cubin", v.name())))
            .filter(|path| path.is_file());
        let cubin = if let Some(path) = dev_cubin {
            std::fs::read(&path).map_err(|e| {
                unavailable(format!(
                    "cannot read {} ({CUBIN_DIR_ENV}): {e}",
                    path.display()
                ))
            })?
        } else {
            match v.shipped_cubin() {
                Some(c) if !self.jit => c.to_vec(),
                _ => {
                    let source = kernels::flatten(v.source())
                        .ok_or_else(|| unavailable("kernel sources missing from the build"))?;
                    nvrtc::compile_cached(&v.name(), v.source(), &source, &v.nvrtc_options())?.cubin
                }
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
                let t = kernels::BwdTiles::for_head_dim(v.head_dim);
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

    /// The device table known by `key` (uploaded once, from what `build` returns: the bytes
    /// and a count kept beside them), its address and that count.
    fn seq_table(&self, key: &[u8], build: impl FnOnce() -> (Vec<u8>, i32)) -> Result<(u64, i32)> {
        let mut map = self.seq_tables.lock().map_err(|_| poisoned())?;
        if let Some((_, ptr, count)) = map.get(key) {
            return Ok((*ptr, *count));
        }
        if map.len() >= MAX_SEQ_TABLES {
            // Kernels may still read old tables: wait for them before freeing.
            self.ctx
                .synchronize()
                .map_err(|e| driver_err("synchronize", e))?;
            map.clear();
        }
        let (bytes, count) = build();
        let slice = self
            .stream
            .clone_htod(&bytes)
            .map_err(|e| driver_err("uploading the sequence table", e))?;
        let ptr = {
            let (p, _sync) = slice.device_ptr(&self.stream);
            p
        };
        // Other streams (forward_raw) must see the table complete.
        self.stream
            .synchronize()
            .map_err(|e| driver_err("synchronize", e))?;
        map.insert(key.to_vec(), (slice, ptr, count));
        Ok((ptr, count))
    }

    /// The forward's table (sequences and work order) on the device: its address and the
    /// number of slots in the order, or (0, 0) when the plan needs none. The order is laid out
    /// for this device's SM count (the key leaves it out: one backend, one device).
    fn forward_table(&self, l: &ForwardLaunch) -> Result<(u64, i32)> {
        match l.table_key() {
            Some(key) => self.seq_table(&key, || l.table(self.sm_count)),
            None => Ok((0, 0)),
        }
    }

    /// The backward's per-sequence table on the device (its bytes are its key), or 0 when the
    /// plan needs none.
    fn backward_table(&self, l: &BackwardLaunch) -> Result<u64> {
        match &l.seq_table {
            Some(t) => Ok(self.seq_table(t, || (t.clone(), 0))?.0),
            None => Ok(0),
        }
    }

    fn launch_forward(&self, plan: &Plan, ptrs: RawTensors, stream: CUstream) -> Result<()> {
        let l = describe_forward(plan)?;
        if l.grid.0 == 0 || l.grid.1 == 0 || l.grid.2 == 0 {
            return Ok(()); // no rows of O to write
        }
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver_err("binding the context", e))?;
        let f = self.function(l.variant, l.entry())?;
        let (seq_ptr, order_units) = self.forward_table(&l)?;
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
        params.order_units = order_units;
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
                l.launch_grid(self.sm_count, order_units),
                (l.tiles.threads(), 1, 1),
                l.tiles.smem_bytes(d),
                stream,
                &mut args,
            )
        }
        .map_err(|e| driver_err("launching the forward kernel", e))
    }
}

fn env_on(name: &str) -> bool {
    env_is(name, "1")
}

fn env_is(name: &str, value: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == value)
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

    /// Declined when `SIGMOID_ATTN_CUDA_BACKWARD=0` was set when the backend was created, and
    /// for plans the kernels do not cover (as for the forward).
    fn supports_backward(&self, plan: &Plan) -> Result<()> {
        self.backward_launch(plan).map(|_| ())
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
        check_forward(plan, q, k, v, o)?;
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
        let l = self.backward_launch(plan)?;
        args.check(plan)?;
        let s = &self.stream;
        let (q, _q_sync) = args.q.data.device_ptr(s);
        let (k, _k_sync) = args.k.data.device_ptr(s);
        let (v, _v_sync) = args.v.data.device_ptr(s);
        let (d_o, _do_sync) = args.d_o.data.device_ptr(s);
        let (dq, _dq_sync) = args.dq.data.device_ptr(s);
        let (dk, _dk_sync) = args.dk.data.device_ptr(s);
        let (dv, _dv_sync) = args.dv.data.device_ptr(s);
        let d_bias = args.d_bias.as_ref().map(|b| b.data.device_ptr(s));
        let ptrs = RawGradTensors {
            q,
            k,
            v,
            d_o,
            dq,
            dk,
            dv,
            d_bias: d_bias.as_ref().map(|(p, _)| *p),
        };
        self.launch_backward(plan, &l, ptrs, s.cu_stream(), true)
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
