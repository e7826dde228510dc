//! The portable backend: WGSL kernels on wgpu (Vulkan, Metal, DX12).
//!
//! [`WgpuBackend::new`] opens its own device (preferring a hardware adapter, accepting a
//! software one such as lavapipe); [`WgpuBackend::from_device`] runs on an application's
//! `wgpu::Device` and `Queue`. Besides the [`Backend`] trait (which submits its own command
//! buffers), [`WgpuBackend::encode_forward`] and [`WgpuBackend::encode_backward`] record the
//! kernels into the caller's `CommandEncoder` on the caller's buffers, so attention runs inside
//! an application's frame with no copies and no extra submit.
//!
//! Kernels (`shaders/`): `fwd.wgsl`; backward as `bwd_dkdv.wgsl` (dK, dV and d_bias partial
//! sums per key tile, summing GQA groups without atomics), `bwd_dq.wgsl` (dQ) and
//! `bwd_dbias.wgsl` (the per-sequence d_bias sum). All accumulate in f32; storage is f32, f16
//! (native with `SHADER_F16`, else packed in u32) or bf16 (packed in u32, converted with bit
//! operations). Tile shapes are chosen per adapter from its workgroup-memory and invocation
//! limits ([`pipelines::choose_tiles`]).
//!
//! Supported: head dims that are multiples of 4 up to 256, strides that are multiples of 4
//! elements, every mask, bias, layout and dtype of the spec. Tensors larger than the adapter's
//! `max_storage_buffer_binding_size` are refused with `Error::Unsupported`. Validation,
//! out-of-memory and device-loss errors come back as `Error::Driver` (through error scopes),
//! never as panics.
//!
//! Tensor cores: where the adapter has `EXPERIMENTAL_COOPERATIVE_MATRIX` with a 16×16×16
//! f16 → f32 configuration and subgroup barriers (an NVIDIA GPU over Vulkan, for one; the full
//! list is [`coop::CoopSupport::detect`]), [`WgpuBackend::new`] requests them, and the forward
//! and backward of f16 and bf16 plans with head dims that are multiples of 16 up to 128 run on
//! cooperative matrices ([`coop`]: `fwd_coop.wgsl`; `bwd_dkdv_coop.wgsl` and
//! `bwd_dq_coop.wgsl`); everything else runs the scalar kernels. [`WgpuBackend::new_coop`]
//! insists on an adapter with the path, [`WgpuBackend::set_coop`] turns it off and on, and
//! [`WgpuBackend::uses_coop`] and [`WgpuBackend::uses_coop_backward`] say which path a plan
//! takes.
//!
//! Environment: `WGPU_BACKEND` (e.g. `vulkan`) and `WGPU_ADAPTER_NAME` (substring) narrow the
//! adapter [`WgpuBackend::new`] picks; `SIGMOID_ATTN_WGPU_BOUNDS_CHECKS` (any value) compiles
//! the kernels with wgpu's bounds checks and loop bounding (off by default: the host checks
//! every buffer against the plan, and the checks cost speed); `SIGMOID_ATTN_WGPU_COOP_TILES`
//! (`8x16x2`) forces the forward's cooperative-matrix tile shape; `SIGMOID_ATTN_WGPU_COOP=0`
//! keeps [`WgpuBackend::new`] off the cooperative-matrix path (`=1` makes it insist on one, as
//! [`WgpuBackend::new_coop`]).

pub mod coop;
pub mod params;
pub mod pipelines;
mod record;
mod timing;

pub use record::{BackwardBuffers, ForwardBuffers};
use timing::{timestamp_writes, Session};

use crate::backend::{check_forward, Backend, BackwardArgs, DeviceBuffer};
use crate::{DType, Error, HostTensor, Plan, Result};
use coop::{CoopKernel, CoopKey, CoopSupport, CoopTiles};
use params::{seq_table, Params};
use pipelines::{choose_tiles, Kernel, PipelineCache, PipelineKey, StoragePath, TileLimits, Tiles};
use std::sync::{Arc, Mutex};
use wgpu::util::DeviceExt;

const NAME: &str = "wgpu";

fn driver(message: impl Into<String>) -> Error {
    Error::Driver {
        backend: NAME,
        message: message.into(),
    }
}

fn unsupported(what: impl Into<String>) -> Error {
    Error::Unsupported {
        backend: NAME,
        what: what.into(),
    }
}

/// A tensor in a wgpu storage buffer.
#[derive(Debug, Clone)]
pub struct WgpuBuffer {
    buffer: wgpu::Buffer,
    dtype: DType,
    len: usize,
}

impl WgpuBuffer {
    /// Wraps an application's buffer holding `len` elements of `dtype` (little-endian, as
    /// [`HostTensor::as_bytes`]). It needs `STORAGE` usage, and `COPY_SRC` to be downloaded.
    pub fn from_raw(buffer: wgpu::Buffer, dtype: DType, len: usize) -> Result<Self> {
        if (buffer.size() as u128) < (len as u128) * dtype.size_bytes() as u128 {
            return Err(Error::InvalidBuffer {
                tensor: "wgpu buffer",
                expected: format!("at least {} bytes", len * dtype.size_bytes()),
                got: format!("{} bytes", buffer.size()),
            });
        }
        Ok(WgpuBuffer { buffer, dtype, len })
    }

    /// The underlying wgpu buffer.
    pub fn raw(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl DeviceBuffer for WgpuBuffer {
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn len(&self) -> usize {
        self.len
    }
}

/// Sigmoid attention on a wgpu device.
pub struct WgpuBackend {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    shader_f16: bool,
    timestamps: bool,
    bounds_checks: bool,
    pipelines: PipelineCache,
    /// Set by the device-lost callback.
    lost: Arc<Mutex<Option<String>>>,
    /// Errors no scope caught (own device only).
    uncaptured: Arc<Mutex<Option<String>>>,
    /// Bound in place of zero-length tensors (bindings must not be empty).
    dummy: wgpu::Buffer,
    /// Open `time_ms` session: passes recorded by `forward`/`backward` write timestamps here.
    session: Mutex<Option<Session>>,
    /// Tile shapes forced by [`WgpuBackend::set_tiles`] (tuning).
    forced: Mutex<Vec<(Kernel, Tiles)>>,
    /// The cooperative-matrix path, when the device has it.
    coop: Option<CoopSupport>,
    /// Whether plans may take the cooperative-matrix path ([`WgpuBackend::set_coop`]).
    coop_on: Mutex<bool>,
    /// Cooperative-matrix tiles forced by [`WgpuBackend::set_coop_tiles`] (tuning).
    coop_forced: Mutex<Option<(u32, u32, u32)>>,
    /// Backward cooperative-matrix shapes forced by [`WgpuBackend::set_coop_backward_tiles`].
    coop_bwd_forced: Mutex<Option<[(u32, u32); 2]>>,
}

/// `SIGMOID_ATTN_WGPU_COOP_TILES=8x16x2` (subgroups × keys per tile × row blocks): a forced
/// cooperative-matrix shape, as [`WgpuBackend::set_coop_tiles`].
fn coop_tiles_from_env() -> Option<(u32, u32, u32)> {
    let v = std::env::var("SIGMOID_ATTN_WGPU_COOP_TILES").ok()?;
    let mut it = v.split('x').map(|x| x.trim().parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next()??))
}

/// Whether [`WgpuBackend::open`] takes the cooperative-matrix path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coop {
    Off,
    IfPresent,
    Required,
}

impl std::fmt::Debug for WgpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuBackend")
            .field("adapter", &self.info.name)
            .field("backend", &self.info.backend)
            .field("shader_f16", &self.shader_f16)
            .field("timestamps", &self.timestamps)
            .field("coop", &self.coop)
            .field("pipelines", &self.pipelines)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Preference of an adapter: hardware first, software last; `None` if it cannot compute.
fn adapter_rank(a: &wgpu::Adapter) -> Option<u32> {
    let info = a.get_info();
    if !a
        .get_downlevel_capabilities()
        .flags
        .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
    {
        return None;
    }
    let ty = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    // The GL backend has neither f16 nor subgroups nor fast compute: last resort.
    let api = u32::from(info.backend == wgpu::Backend::Gl);
    Some(api * 10 + ty)
}

impl WgpuBackend {
    /// Opens the best adapter present (hardware before software; `WGPU_BACKEND` and
    /// `WGPU_ADAPTER_NAME` narrow the choice) with its full limits and the optional features
    /// `SHADER_F16`, `TIMESTAMP_QUERY` and, where the adapter offers the tensor-core path
    /// ([`CoopSupport::detect`]), `EXPERIMENTAL_COOPERATIVE_MATRIX`.
    ///
    /// Returns `Error::DeviceUnavailable` when no adapter can run compute shaders.
    pub fn new() -> Result<Self> {
        match std::env::var("SIGMOID_ATTN_WGPU_COOP").as_deref() {
            Ok("0") => Self::open(Coop::Off),
            Ok("1") => Self::open(Coop::Required),
            _ => Self::open(Coop::IfPresent),
        }
    }

    /// Like [`new`](Self::new), but only among adapters that offer the cooperative-matrix path
    /// (which is then on): `Error::DeviceUnavailable`, naming why, when none does. Plans the
    /// path cannot take (f32 storage, head dims not a multiple of 16 or above 128) still run on
    /// the scalar kernels.
    pub fn new_coop() -> Result<Self> {
        Self::open(Coop::Required)
    }

    fn open(coop: Coop) -> Result<Self> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
        let mut adapters = pollster::block_on(instance.enumerate_adapters(backends));
        if let Ok(name) = std::env::var("WGPU_ADAPTER_NAME") {
            let name = name.to_lowercase();
            adapters.retain(|a| a.get_info().name.to_lowercase().contains(&name));
        }
        let mut ranked: Vec<(u32, wgpu::Adapter)> = adapters
            .into_iter()
            .filter_map(|a| adapter_rank(&a).map(|r| (r, a)))
            .collect();
        ranked.sort_by_key(|(r, _)| *r);
        if coop == Coop::Required {
            let mut why = Vec::new();
            ranked.retain(|(_, a)| match CoopSupport::detect(a) {
                Ok(_) => true,
                Err(e) => {
                    why.push(format!("{}: {e}", a.get_info().name));
                    false
                }
            });
            if ranked.is_empty() {
                return Err(Error::DeviceUnavailable {
                    backend: NAME,
                    reason: format!(
                        "no adapter with the cooperative-matrix path ({})",
                        if why.is_empty() {
                            "no adapter with compute shaders".to_string()
                        } else {
                            why.join("; ")
                        }
                    ),
                });
            }
        }
        let Some((_, adapter)) = ranked.into_iter().next() else {
            return Err(Error::DeviceUnavailable {
                backend: NAME,
                reason: "no wgpu adapter with compute shaders (on Linux without a GPU, install \
                         lavapipe: mesa-vulkan-drivers and libvulkan1)"
                    .into(),
            });
        };
        let support = match coop {
            Coop::Off => None,
            _ => CoopSupport::detect(&adapter).ok(),
        };
        let mut wanted = wgpu::Features::SHADER_F16 | wgpu::Features::TIMESTAMP_QUERY;
        if support.is_some() {
            wanted |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
                | wgpu::Features::SUBGROUP
                | wgpu::Features::SUBGROUP_BARRIER;
        }
        let features = adapter.features() & wanted;
        let experimental_features = if support.is_some() {
            // SAFETY: wgpu marks cooperative matrices experimental (API and validation may
            // change). Only `shaders/*_coop.wgsl` use them; those are validated by naga in
            // `tests/shaders.rs` and checked against the reference by `tests/wgpu_coop.rs`.
            unsafe { wgpu::ExperimentalFeatures::enabled() }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("sigmoid-attn"),
            required_features: features,
            required_limits: adapter.limits(),
            experimental_features,
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::DeviceUnavailable {
            backend: NAME,
            reason: format!("request_device on {}: {e}", adapter.get_info().name),
        })?;
        let uncaptured = Arc::new(Mutex::new(None));
        let sink = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            lock(&sink).get_or_insert_with(|| e.to_string());
        }));
        Ok(Self::build(device, queue, uncaptured, support))
    }

    /// Runs on an application's device and queue. The device's features decide the storage
    /// paths (`SHADER_F16`) and timing (`TIMESTAMP_QUERY`); its limits decide the tiles. The
    /// application's uncaptured-error handler is left alone: this backend's own work runs in
    /// error scopes.
    ///
    /// The cooperative-matrix path stays off (a device does not tell its adapter's matrix
    /// configurations): use [`from_device_with_adapter`](Self::from_device_with_adapter) for it.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Result<Self> {
        Ok(Self::build(device, queue, Arc::new(Mutex::new(None)), None))
    }

    /// As [`from_device`](Self::from_device), with the adapter the device came from: when the
    /// device was created with `EXPERIMENTAL_COOPERATIVE_MATRIX` and the adapter offers the
    /// path ([`CoopSupport::detect`]), the forward uses it.
    pub fn from_device_with_adapter(
        device: wgpu::Device,
        queue: wgpu::Queue,
        adapter: &wgpu::Adapter,
    ) -> Result<Self> {
        let support = if device
            .features()
            .contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
        {
            CoopSupport::detect(adapter).ok()
        } else {
            None
        };
        Ok(Self::build(
            device,
            queue,
            Arc::new(Mutex::new(None)),
            support,
        ))
    }

    fn build(
        device: wgpu::Device,
        queue: wgpu::Queue,
        uncaptured: Arc<Mutex<Option<String>>>,
        coop: Option<CoopSupport>,
    ) -> Self {
        let lost = Arc::new(Mutex::new(None));
        let sink = lost.clone();
        device.set_device_lost_callback(move |reason, msg| {
            lock(&sink).get_or_insert_with(|| format!("device lost ({reason:?}): {msg}"));
        });
        let features = device.features();
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("sigmoid-attn empty tensor"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        WgpuBackend {
            info: device.adapter_info(),
            limits: device.limits(),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            bounds_checks: std::env::var_os("SIGMOID_ATTN_WGPU_BOUNDS_CHECKS").is_some(),
            pipelines: PipelineCache::default(),
            lost,
            uncaptured,
            dummy,
            session: Mutex::new(None),
            forced: Mutex::new(Vec::new()),
            coop,
            coop_on: Mutex::new(coop.is_some()),
            coop_forced: Mutex::new(coop_tiles_from_env()),
            coop_bwd_forced: Mutex::new(None),
            device,
            queue,
        }
    }

    /// The device.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The adapter's description.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// True when the device can time kernels (`TIMESTAMP_QUERY`).
    pub fn has_timestamps(&self) -> bool {
        self.timestamps
    }

    /// True when f16 tensors use native `f16` loads (`SHADER_F16`).
    pub fn has_shader_f16(&self) -> bool {
        self.shader_f16
    }

    /// True when the device has the cooperative-matrix (tensor-core) path.
    pub fn has_coop(&self) -> bool {
        self.coop.is_some()
    }

    /// Turns the cooperative-matrix path on (where the device has it) or off; with it off,
    /// every plan runs on the scalar kernels. Returns whether the path is now on.
    pub fn set_coop(&self, on: bool) -> bool {
        let on = on && self.coop.is_some();
        *lock(&self.coop_on) = on;
        on
    }

    /// Forces the cooperative-matrix forward's shape (subgroups per workgroup, keys per tile,
    /// 16-row blocks per subgroup; see [`CoopTiles`]) for tuning, or with `None` returns to the
    /// automatic choice. Shapes that do not fit the device for a plan's head dim leave that
    /// plan on the automatic choice.
    pub fn set_coop_tiles(&self, shape: Option<(u32, u32, u32)>) {
        *lock(&self.coop_forced) = shape;
    }

    /// Forces the cooperative-matrix backward's shapes, `[dq, dkdv]`: (subgroups, keys per
    /// tile) of the dQ kernel and (subgroup pairs, queries per tile) of the dK/dV kernel (see
    /// [`CoopTiles`]), for tuning and tests, or with `None` returns to the automatic choice. A
    /// shape that does not fit the device for a plan's head dim leaves that kernel on the
    /// automatic choice.
    pub fn set_coop_backward_tiles(&self, shapes: Option<[(u32, u32); 2]>) {
        *lock(&self.coop_bwd_forced) = shapes;
    }

    /// The head dim, subgroup size, workgroup memory and invocations the cooperative-matrix
    /// kernels may use for `plan`, or `None` when the path is off or absent or `plan`'s dtype
    /// is not one it takes.
    fn coop_limits(&self, plan: &Plan) -> Option<(u32, u32, u32, u32)> {
        let support = self.coop?;
        if !*lock(&self.coop_on) || !coop::takes_dtype(plan.dtype()) {
            return None;
        }
        let d = u32::try_from(plan.head_dim()).ok()?;
        let storage = self.limits.max_compute_workgroup_storage_size;
        let invocations = self
            .limits
            .max_compute_invocations_per_workgroup
            .min(self.limits.max_compute_workgroup_size_x);
        Some((d, support.subgroup_size, storage, invocations))
    }

    /// The cooperative-matrix tiles the forward of `plan` runs with, or `None` when it runs on
    /// the scalar kernels (path off or absent, f32 storage, a head dim that is not a multiple
    /// of 16 or above 128, or too many tiles for one dispatch).
    pub fn coop_tiles(&self, plan: &Plan) -> Option<CoopTiles> {
        let (d, sgs, storage, invocations) = self.coop_limits(plan)?;
        let forced = *lock(&self.coop_forced);
        let t =
            CoopTiles::forced_or_chosen(CoopKernel::Forward, forced, d, sgs, storage, invocations)?;
        let tiles = max_rows_q(plan).div_ceil(t.rows() as usize);
        (tiles <= self.limits.max_compute_workgroups_per_dimension as usize).then_some(t)
    }

    /// True when the forward of `plan` runs on the cooperative-matrix kernel.
    pub fn uses_coop(&self, plan: &Plan) -> bool {
        self.coop_tiles(plan).is_some()
    }

    /// The cooperative-matrix tiles of the backward of `plan` (dQ kernel, dK/dV kernel), or
    /// `None` when it runs on the scalar kernels (for the same reasons as
    /// [`coop_tiles`](Self::coop_tiles)).
    pub fn coop_backward_tiles(&self, plan: &Plan) -> Option<(CoopTiles, CoopTiles)> {
        let (d, sgs, storage, invocations) = self.coop_limits(plan)?;
        let max_groups = self.limits.max_compute_workgroups_per_dimension as usize;
        let forced = *lock(&self.coop_bwd_forced);
        let pick = |kernel, slot: usize, rows: usize| {
            let shape = forced.map(|shapes| (shapes[slot].0, shapes[slot].1, 1));
            let t = CoopTiles::forced_or_chosen(kernel, shape, d, sgs, storage, invocations)?;
            (rows.div_ceil(t.rows() as usize) <= max_groups).then_some(t)
        };
        Some((
            pick(CoopKernel::BackwardDq, 0, max_rows_q(plan))?,
            pick(CoopKernel::BackwardDkDv, 1, max_rows_k(plan))?,
        ))
    }

    /// True when the backward of `plan` runs on the cooperative-matrix kernels.
    pub fn uses_coop_backward(&self, plan: &Plan) -> bool {
        self.coop_backward_tiles(plan).is_some()
    }

    fn tile_limits(&self) -> TileLimits {
        TileLimits {
            workgroup_storage: self.limits.max_compute_workgroup_storage_size,
            invocations: self.limits.max_compute_invocations_per_workgroup,
            size_x: self.limits.max_compute_workgroup_size_x,
        }
    }

    /// Forces the tile shape of `kernel` for the head dim `tiles.d` (for tuning), or with
    /// `None` returns every kernel to the automatic choice. Shapes the shaders cannot run, or
    /// that exceed this device's limits, are refused.
    pub fn set_tiles(&self, kernel: Kernel, tiles: Option<Tiles>) -> Result<()> {
        let mut forced = lock(&self.forced);
        match tiles {
            None => forced.clear(),
            Some(t) => {
                if !t.fits(kernel, &self.tile_limits()) {
                    return Err(unsupported(format!("{} tiles {t:?}", kernel.name())));
                }
                forced.retain(|(k, f)| !(*k == kernel && f.d == t.d));
                forced.push((kernel, t));
            }
        }
        Ok(())
    }

    /// The tile shape `kernel` uses for head dim `d` on this device.
    pub fn tiles(&self, kernel: Kernel, d: usize) -> Result<Tiles> {
        if let Some((_, t)) = lock(&self.forced)
            .iter()
            .find(|(k, t)| *k == kernel && t.d as usize == d)
        {
            return Ok(*t);
        }
        choose_tiles(kernel, d as u32, &self.tile_limits()).ok_or_else(|| {
            unsupported(format!(
                "head_dim {d}: no {} tile shape fits {} bytes of workgroup memory and {} \
                 invocations",
                kernel.name(),
                self.limits.max_compute_workgroup_storage_size,
                self.limits.max_compute_invocations_per_workgroup
            ))
        })
    }

    fn check_health(&self) -> Result<()> {
        if let Some(m) = lock(&self.lost).clone() {
            return Err(driver(m));
        }
        if let Some(m) = lock(&self.uncaptured).take() {
            return Err(driver(m));
        }
        Ok(())
    }

    /// Records one pass with `record` into a fresh encoder and submits it, in an error scope,
    /// timed into the open `time_ms` session if there is one.
    fn submit_recorded(
        &self,
        record: impl FnOnce(&mut wgpu::CommandEncoder, Option<(&wgpu::QuerySet, u32)>) -> Result<()>,
    ) -> Result<()> {
        self.scoped(|| {
            let mut enc = self.device.create_command_encoder(&Default::default());
            let slot = self.session_slot();
            record(&mut enc, slot.as_ref().map(|(qs, i)| (qs, *i)))?;
            self.queue.submit([enc.finish()]);
            Ok(())
        })
    }

    /// Runs `f` inside validation, out-of-memory and internal error scopes; any error they
    /// catch becomes `Error::Driver`.
    fn scoped<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.check_health()?;
        let internal = self.device.push_error_scope(wgpu::ErrorFilter::Internal);
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let r = f();
        let errors = [
            pollster::block_on(validation.pop()),
            pollster::block_on(oom.pop()),
            pollster::block_on(internal.pop()),
        ];
        let r = r?;
        if let Some(e) = errors.into_iter().flatten().next() {
            return Err(driver(e.to_string()));
        }
        self.check_health()?;
        Ok(r)
    }

    fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| driver(format!("poll: {e}")))?;
        self.check_health()
    }

    /// Checks everything about `plan` that does not depend on the buffers.
    fn check_plan(&self, plan: &Plan, backward: bool) -> Result<()> {
        let d = plan.head_dim();
        if d % 4 != 0 || d > pipelines::MAX_HEAD_DIM {
            return Err(unsupported(format!(
                "head_dim {d} (the WGSL kernels take multiples of 4 up to {})",
                pipelines::MAX_HEAD_DIM
            )));
        }
        if Params::new(plan, 0).is_none() {
            return Err(unsupported(
                "strides that are not multiples of 4 elements (or exceed 2^34 elements)",
            ));
        }
        let kernels: &[Kernel] = if backward {
            &[Kernel::BackwardDq, Kernel::BackwardDkDv]
        } else {
            &[Kernel::Forward]
        };
        let max_groups = self.limits.max_compute_workgroups_per_dimension as usize;
        for &kernel in kernels {
            let t = self.tiles(kernel, d)?;
            let (rows, heads) = if kernel == Kernel::BackwardDkDv {
                (max_rows_k(plan), plan.kv_heads())
            } else {
                (max_rows_q(plan), plan.heads())
            };
            let tiles = rows.div_ceil(t.rows as usize);
            for (what, n) in [
                ("tiles", tiles),
                ("heads", heads),
                ("sequences", plan.batch()),
            ] {
                if n > max_groups {
                    return Err(unsupported(format!(
                        "{n} {what} in one dispatch (the adapter allows {max_groups} \
                         workgroups per dimension)"
                    )));
                }
            }
        }
        let quad_bytes = self.quad_bytes(plan.dtype()) as u64;
        let max_binding = self.limits.max_storage_buffer_binding_size;
        for (name, elems) in [
            ("q", plan.q_elems()),
            ("k", plan.k_elems()),
            ("v", plan.v_elems()),
            ("o", plan.o_elems()),
        ] {
            let bytes = (elems as u64) * plan.dtype().size_bytes() as u64;
            if bytes > max_binding {
                return Err(unsupported(format!(
                    "tensor `{name}` of {bytes} bytes: above the adapter's \
                     max_storage_buffer_binding_size of {max_binding} bytes"
                )));
            }
            if bytes / quad_bytes > u64::from(u32::MAX) {
                return Err(unsupported(format!(
                    "tensor `{name}` of {elems} elements: above 2^32 quads"
                )));
            }
        }
        Ok(())
    }

    fn quad_bytes(&self, dtype: DType) -> usize {
        4 * dtype.size_bytes()
    }

    fn storage(&self, dtype: DType) -> StoragePath {
        StoragePath::for_dtype(dtype, self.shader_f16)
    }

    fn pipeline(&self, kernel: Kernel, plan: &Plan, tiles: Tiles) -> Result<wgpu::ComputePipeline> {
        self.pipelines.get(
            &self.device,
            PipelineKey {
                kernel,
                storage: self.storage(plan.dtype()),
                tiles,
                causal: plan.causal(),
                fast: plan.sigmoid() == crate::SigmoidMode::Fast,
            },
            self.bounds_checks,
        )
    }

    /// Maps a `MAP_READ` buffer after the queue drains and returns its first `bytes`.
    fn read_back<T: bytemuck::Pod>(&self, read: &wgpu::Buffer, bytes: u64) -> Result<Vec<T>> {
        let slot = Arc::new(Mutex::new(None));
        let sink = slot.clone();
        read.slice(..bytes)
            .map_async(wgpu::MapMode::Read, move |r| {
                *lock(&sink) = Some(r);
            });
        self.wait()?;
        match lock(&slot).take() {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(driver(format!("mapping a buffer for reading: {e}"))),
            None => return Err(driver("buffer mapping did not complete")),
        }
        let out = {
            let view = read
                .slice(..bytes)
                .get_mapped_range()
                .map_err(|e| driver(format!("mapped range: {e}")))?;
            bytemuck::pod_collect_to_vec(&view)
        };
        read.unmap();
        Ok(out)
    }
}

fn max_rows_q(plan: &Plan) -> usize {
    plan.seqs().iter().map(|s| s.rows_q).max().unwrap_or(0)
}

fn max_rows_k(plan: &Plan) -> usize {
    plan.seqs().iter().map(|s| s.rows_k).max().unwrap_or(0)
}

impl Backend for WgpuBackend {
    type Buffer = WgpuBuffer;

    fn name(&self) -> &'static str {
        NAME
    }

    fn device_name(&self) -> String {
        format!(
            "{} ({:?}, {} {})",
            self.info.name, self.info.backend, self.info.driver, self.info.driver_info
        )
    }

    fn supports_forward(&self, plan: &Plan) -> Result<()> {
        self.check_plan(plan, false)
    }

    fn supports_backward(&self, plan: &Plan) -> Result<()> {
        self.check_plan(plan, true)
    }

    fn fast_sigmoid_bits(&self) -> Option<u32> {
        // The fast form is 1 / (1 + e^-x) (shaders/sigmoid.wgsl), whose error is that of the
        // platform's exp and division: WGSL (Vulkan) allows 3 + 2·|x| ulps for exp, about 2^-15
        // relative at the |x| ≈ 88 where it saturates, so 11 bits hold with room.
        Some(11)
    }

    fn alloc(&self, dtype: DType, len: usize) -> Result<WgpuBuffer> {
        let bytes = (len as u64)
            .checked_mul(dtype.size_bytes() as u64)
            .ok_or_else(|| unsupported(format!("a buffer of {len} elements")))?;
        let size = bytes.div_ceil(16).max(1) * 16;
        if size > self.limits.max_buffer_size {
            return Err(unsupported(format!(
                "a buffer of {bytes} bytes (the adapter's max_buffer_size is {})",
                self.limits.max_buffer_size
            )));
        }
        let buffer = self.scoped(|| {
            Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("sigmoid-attn tensor"),
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }))
        })?;
        Ok(WgpuBuffer { buffer, dtype, len })
    }

    fn upload(&self, data: &HostTensor) -> Result<WgpuBuffer> {
        let buf = self.alloc(data.dtype(), data.len())?;
        let bytes = data.as_bytes();
        self.scoped(|| {
            let aligned = bytes.len() / 4 * 4;
            if aligned > 0 {
                self.queue.write_buffer(&buf.buffer, 0, &bytes[..aligned]);
            }
            if aligned < bytes.len() {
                let mut tail = [0u8; 4];
                tail[..bytes.len() - aligned].copy_from_slice(&bytes[aligned..]);
                self.queue.write_buffer(&buf.buffer, aligned as u64, &tail);
            }
            Ok(())
        })?;
        Ok(buf)
    }

    fn download(&self, buf: &WgpuBuffer) -> Result<HostTensor> {
        let bytes = (buf.len * buf.dtype.size_bytes()) as u64;
        let size = bytes.div_ceil(4).max(1) * 4;
        let read = self.scoped(|| {
            let read = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("sigmoid-attn readback"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut enc = self.device.create_command_encoder(&Default::default());
            enc.copy_buffer_to_buffer(&buf.buffer, 0, &read, 0, size.min(buf.buffer.size()));
            self.queue.submit([enc.finish()]);
            Ok(read)
        })?;
        let raw: Vec<u8> = self.read_back(&read, size)?;
        Ok(HostTensor::from_bytes(buf.dtype, &raw[..bytes as usize]))
    }

    fn forward(
        &self,
        plan: &Plan,
        q: &WgpuBuffer,
        k: &WgpuBuffer,
        v: &WgpuBuffer,
        o: &mut WgpuBuffer,
    ) -> Result<()> {
        self.supports_forward(plan)?;
        check_forward(plan, q, k, v, o)?;
        let bufs = ForwardBuffers::of(q, k, v, o);
        self.submit_recorded(|enc, timing| self.record_forward(enc, plan, bufs, timing))
    }

    fn backward(&self, plan: &Plan, a: BackwardArgs<'_, WgpuBuffer>) -> Result<()> {
        self.supports_backward(plan)?;
        a.check(plan)?;
        let bufs = BackwardBuffers::of(&a);
        self.submit_recorded(|enc, timing| self.record_backward(enc, plan, bufs, timing))
    }

    fn synchronize(&self) -> Result<()> {
        self.wait()
    }

    /// With `TIMESTAMP_QUERY`: the summed kernel time of the passes that `forward` and
    /// `backward` record while `enqueue` runs (timestamp queries at pass boundaries, so queue
    /// gaps and uploads are not counted). Without it: the wall-clock default.
    fn time_ms(&self, enqueue: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        self.time_session(enqueue)
    }
}
