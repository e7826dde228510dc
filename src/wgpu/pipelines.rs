//! WGSL sources, tile configurations per adapter, and the compute-pipeline cache.
//!
//! Each kernel is one file in `shaders/`; WGSL has no include, so a module is assembled as
//! `storage path + sigmoid.wgsl (+ bwd_stage.wgsl) + kernel`, then specialised through `override` constants
//! (head dim, tiles, causal, sigmoid mode). Pipelines are built once per [`PipelineKey`] and
//! cached.

use crate::{DType, Error, Result};
use std::collections::HashMap;
use std::sync::Mutex;

/// The shared prelude (uniform and sequence structs, sigmoid).
pub const SIGMOID: &str = include_str!("../../shaders/sigmoid.wgsl");
/// Forward kernel.
pub const FWD: &str = include_str!("../../shaders/fwd.wgsl");
/// Backward, dQ.
pub const BWD_DQ: &str = include_str!("../../shaders/bwd_dq.wgsl");
/// Backward, dK and dV (and d_bias partial sums).
pub const BWD_DKDV: &str = include_str!("../../shaders/bwd_dkdv.wgsl");
/// Prelude of the two backward kernels that stage tiles (dQ; dK and dV).
pub const BWD_STAGE: &str = include_str!("../../shaders/bwd_stage.wgsl");
/// Backward, d_bias reduction.
pub const BWD_DBIAS: &str = include_str!("../../shaders/bwd_dbias.wgsl");

/// The kernels, one per shader file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// `shaders/fwd.wgsl`.
    Forward,
    /// `shaders/bwd_dq.wgsl`.
    BackwardDq,
    /// `shaders/bwd_dkdv.wgsl`.
    BackwardDkDv,
    /// `shaders/bwd_dbias.wgsl`.
    BackwardDbias,
}

impl Kernel {
    /// All kernels.
    pub const ALL: [Kernel; 4] = [
        Kernel::Forward,
        Kernel::BackwardDq,
        Kernel::BackwardDkDv,
        Kernel::BackwardDbias,
    ];

    /// The kernel's name (its shader file without extension).
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Forward => "fwd",
            Kernel::BackwardDq => "bwd_dq",
            Kernel::BackwardDkDv => "bwd_dkdv",
            Kernel::BackwardDbias => "bwd_dbias",
        }
    }

    /// The kernel's own WGSL (without preludes).
    pub fn body(self) -> &'static str {
        match self {
            Kernel::Forward => FWD,
            Kernel::BackwardDq => BWD_DQ,
            Kernel::BackwardDkDv => BWD_DKDV,
            Kernel::BackwardDbias => BWD_DBIAS,
        }
    }
}

/// How tensors are stored in buffers, i.e. which `shaders/storage_*.wgsl` prelude is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoragePath {
    /// `array<vec4<f32>>`.
    F32,
    /// `array<vec4<f16>>` (needs `SHADER_F16`).
    F16,
    /// f16 as `array<vec2<u32>>`, converted with `unpack2x16float` (any adapter).
    F16Packed,
    /// bf16 as `array<vec2<u32>>`, converted with bit operations.
    BF16,
}

impl StoragePath {
    /// All storage paths.
    pub const ALL: [StoragePath; 4] = [
        StoragePath::F32,
        StoragePath::F16,
        StoragePath::F16Packed,
        StoragePath::BF16,
    ];

    /// The path for `dtype`, given whether the device has `SHADER_F16`.
    pub fn for_dtype(dtype: DType, shader_f16: bool) -> StoragePath {
        match dtype {
            DType::F32 => StoragePath::F32,
            DType::F16 if shader_f16 => StoragePath::F16,
            DType::F16 => StoragePath::F16Packed,
            DType::BF16 => StoragePath::BF16,
        }
    }

    /// The prelude's WGSL.
    pub fn prelude(self) -> &'static str {
        match self {
            StoragePath::F32 => include_str!("../../shaders/storage_f32.wgsl"),
            StoragePath::F16 => include_str!("../../shaders/storage_f16.wgsl"),
            StoragePath::F16Packed => include_str!("../../shaders/storage_f16_packed.wgsl"),
            StoragePath::BF16 => include_str!("../../shaders/storage_bf16.wgsl"),
        }
    }

    /// Short name for labels and errors.
    pub fn name(self) -> &'static str {
        match self {
            StoragePath::F32 => "f32",
            StoragePath::F16 => "f16",
            StoragePath::F16Packed => "f16-packed",
            StoragePath::BF16 => "bf16",
        }
    }
}

/// The complete WGSL of `kernel` for `storage`.
pub fn source(kernel: Kernel, storage: StoragePath) -> String {
    let mut s = String::with_capacity(16 * 1024);
    s.push_str(storage.prelude());
    s.push('\n');
    s.push_str(SIGMOID);
    s.push('\n');
    if matches!(kernel, Kernel::BackwardDq | Kernel::BackwardDkDv) {
        s.push_str(BWD_STAGE);
        s.push('\n');
    }
    s.push_str(kernel.body());
    s
}

/// Largest head dimension the kernels take (bounded by their register arrays).
pub const MAX_HEAD_DIM: usize = 256;

/// Register-array bounds of the shaders (`MAX_S`, `MAX_O`); tiles must respect them.
const MAX_S: u32 = 16;
const MAX_O: u32 = 32;

/// Tile shape of one kernel for one head dim. `rows` are the tile's own rows (queries for the
/// forward and dQ, keys for dK/dV), `cols` the rows it streams through (keys, resp. queries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tiles {
    /// Head dim.
    pub d: u32,
    /// Rows per workgroup.
    pub rows: u32,
    /// Streamed rows per step.
    pub cols: u32,
    /// Rows per invocation.
    pub tm: u32,
    /// Streamed rows per invocation in the logits block.
    pub tn: u32,
    /// Head-dim chunk of the logits product.
    pub dc: u32,
    /// Streamed-row chunk of the accumulation product.
    pub kc: u32,
}

impl Tiles {
    /// Invocations per workgroup.
    pub fn workgroup_size(&self) -> u32 {
        (self.rows / self.tm) * (self.cols / self.tn)
    }

    /// Workgroup memory in `vec4<f32>` units for `kernel`.
    pub fn smem4(&self, kernel: Kernel) -> u32 {
        let (r4, c4, d4) = (self.rows / 4, self.cols / 4, self.d / 4);
        match kernel {
            Kernel::Forward => self.cols * r4 + (self.dc * (r4 + c4)).max(self.kc * d4),
            Kernel::BackwardDq => self.cols * r4 + (2 * self.dc * (r4 + c4)).max(self.kc * d4),
            Kernel::BackwardDkDv => {
                2 * self.cols * r4 + (2 * self.dc * (r4 + c4)).max(2 * self.kc * d4)
            }
            Kernel::BackwardDbias => 0,
        }
    }

    /// True when the shaders' invariants hold for this shape.
    fn valid(&self, kernel: Kernel) -> bool {
        let t = self;
        let ncg = t.cols / t.tn;
        let ocn = (t.d / 4).div_ceil(ncg);
        t.d % 4 == 0
            && t.tm % 4 == 0
            && t.tm <= 8
            && t.tn % 4 == 0
            && t.rows % t.tm == 0
            && t.cols % t.tn == 0
            && t.rows % 4 == 0
            && t.dc % 4 == 0
            && t.cols % t.kc == 0
            && t.tn * t.tm / 4 <= MAX_S
            && t.tm * ocn <= MAX_O
            && t.workgroup_size().is_power_of_two()
            && t.workgroup_size() <= t.smem4(kernel)
    }

    /// Specialisation constants of `kernel` for these tiles.
    pub fn constants(&self, kernel: Kernel, causal: bool, fast: bool) -> Vec<(&'static str, f64)> {
        let mut c = vec![("SIGMOID_FAST", f64::from(u8::from(fast)))];
        if kernel == Kernel::BackwardDbias {
            c.push(("WG", 64.0));
            return c;
        }
        let (rows, cols, chunk) = match kernel {
            Kernel::BackwardDkDv => ("BK", "BQ", "QC"),
            _ => ("BQ", "BK", "KC"),
        };
        c.extend([
            ("D", f64::from(self.d)),
            (rows, f64::from(self.rows)),
            (cols, f64::from(self.cols)),
            ("TM", f64::from(self.tm)),
            ("TN", f64::from(self.tn)),
            ("DC", f64::from(self.dc)),
            (chunk, f64::from(self.kc)),
            ("CAUSAL", f64::from(u8::from(causal))),
            ("WG", f64::from(self.workgroup_size())),
            ("SMEM4", f64::from(self.smem4(kernel))),
        ]);
        c
    }
}

/// What the tile choice depends on: the adapter's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileLimits {
    /// `max_compute_workgroup_storage_size` in bytes.
    pub workgroup_storage: u32,
    /// `max_compute_invocations_per_workgroup`.
    pub invocations: u32,
    /// `max_compute_workgroup_size_x`.
    pub size_x: u32,
}

/// Candidate shapes, best first: (rows, cols, tm, tn, dc, kc). The first of each list won the
/// sweep of `examples/bench_wgpu.rs --sweep` on an H200 over Vulkan (f16 and f32, D = 64 and
/// 128, N = 4096): 256 invocations with 4×4 register blocks beat 128 with 8×4 (register
/// pressure) by 10–20%; the rest are fallbacks for smaller workgroup memory (lavapipe 32 KiB,
/// WebGPU's default 16 KiB).
fn candidates(kernel: Kernel) -> &'static [(u32, u32, u32, u32, u32, u32)] {
    match kernel {
        Kernel::Forward | Kernel::BackwardDq => &[
            (64, 64, 4, 4, 16, 16),
            (64, 64, 8, 4, 16, 16),
            (64, 32, 8, 4, 16, 8),
            (32, 32, 4, 4, 16, 8),
            (32, 32, 4, 4, 8, 4),
            (16, 32, 4, 4, 8, 4),
            (16, 16, 4, 4, 4, 4),
        ],
        Kernel::BackwardDkDv => &[
            (64, 64, 4, 4, 16, 8),
            (32, 64, 4, 4, 16, 8),
            (32, 32, 4, 4, 16, 8),
            (16, 32, 4, 4, 8, 4),
            (16, 16, 4, 4, 8, 4),
            (16, 16, 4, 4, 4, 4),
        ],
        Kernel::BackwardDbias => &[],
    }
}

impl Tiles {
    /// True when the shaders can run this shape for `kernel` within `limits`.
    pub fn fits(&self, kernel: Kernel, limits: &TileLimits) -> bool {
        self.valid(kernel)
            && self.smem4(kernel) * 16 <= limits.workgroup_storage
            && self.workgroup_size() <= limits.invocations
            && self.workgroup_size() <= limits.size_x
    }
}

/// The best tile shape of `kernel` for head dim `d` under `limits`, or `None`.
pub fn choose_tiles(kernel: Kernel, d: u32, limits: &TileLimits) -> Option<Tiles> {
    shapes(kernel, d).find(|t| t.fits(kernel, limits))
}

/// Every shape `choose_tiles` can return for some head dim and limits (for validation tests).
pub fn all_tiles(kernel: Kernel, d: u32) -> Vec<Tiles> {
    shapes(kernel, d).filter(|t| t.valid(kernel)).collect()
}

/// The candidate shapes of `kernel` at head dim `d`, best first.
fn shapes(kernel: Kernel, d: u32) -> impl Iterator<Item = Tiles> {
    candidates(kernel)
        .iter()
        .map(move |&(rows, cols, tm, tn, dc, kc)| Tiles {
            d,
            rows,
            cols,
            tm,
            tn,
            dc,
            kc,
        })
}

/// Identifies one specialised pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PipelineKey {
    /// The kernel.
    pub kernel: Kernel,
    /// Storage path.
    pub storage: StoragePath,
    /// Tiles (ignored for `BackwardDbias`).
    pub tiles: Tiles,
    /// Causal masking.
    pub causal: bool,
    /// Fast sigmoid.
    pub fast: bool,
}

/// Compiled pipelines, built on first use. Shader modules are cached per (kernel, storage).
#[derive(Default)]
pub struct PipelineCache {
    modules: Mutex<HashMap<(&'static str, StoragePath), wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<PipelineKey, wgpu::ComputePipeline>>,
    coop: Mutex<HashMap<super::coop::CoopKey, wgpu::ComputePipeline>>,
}

impl std::fmt::Debug for PipelineCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.pipelines.lock().map(|p| p.len()).unwrap_or(0);
        let c = self.coop.lock().map(|p| p.len()).unwrap_or(0);
        write!(f, "PipelineCache({n} scalar + {c} coop pipelines)")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What one compile needs: the module (by name and storage path, with its source), the
/// specialisation constants and the label.
struct CompileJob<'a> {
    name: &'static str,
    storage: StoragePath,
    source: &'a dyn Fn() -> String,
    constants: Vec<(&'static str, f64)>,
}

impl PipelineCache {
    /// The pipeline for `key`, compiling it on first use. Compile and validation failures come
    /// back as `Error::Compile` with the constants used and wgpu's log.
    pub fn get(
        &self,
        device: &wgpu::Device,
        key: PipelineKey,
        bounds_checks: bool,
    ) -> Result<wgpu::ComputePipeline> {
        self.cached(&self.pipelines, key, || {
            let job = CompileJob {
                name: key.kernel.name(),
                storage: key.storage,
                source: &|| source(key.kernel, key.storage),
                constants: key.tiles.constants(key.kernel, key.causal, key.fast),
            };
            self.compile(device, job, bounds_checks)
        })
    }

    /// The cooperative-matrix pipeline for `key`, compiling it on first use.
    pub fn get_coop(
        &self,
        device: &wgpu::Device,
        key: super::coop::CoopKey,
        bounds_checks: bool,
    ) -> Result<wgpu::ComputePipeline> {
        self.cached(&self.coop, key, || {
            let job = CompileJob {
                name: key.kernel.name(),
                storage: key.storage,
                source: &|| super::coop::source(key.kernel, key.storage),
                constants: key.tiles.constants(key.kernel, key.causal, key.fast),
            };
            self.compile(device, job, bounds_checks)
        })
    }

    /// The pipeline of `key` in `map`, or the one `compile` makes, then kept there. The lock is
    /// not held while compiling.
    fn cached<K: std::hash::Hash + Eq>(
        &self,
        map: &Mutex<HashMap<K, wgpu::ComputePipeline>>,
        key: K,
        compile: impl FnOnce() -> Result<wgpu::ComputePipeline>,
    ) -> Result<wgpu::ComputePipeline> {
        if let Some(p) = lock(map).get(&key) {
            return Ok(p.clone());
        }
        let pipeline = compile()?;
        lock(map).insert(key, pipeline.clone());
        Ok(pipeline)
    }

    fn compile(
        &self,
        device: &wgpu::Device,
        job: CompileJob<'_>,
        bounds_checks: bool,
    ) -> Result<wgpu::ComputePipeline> {
        let constants = job.constants;
        let options: Vec<String> = std::iter::once(format!("storage={}", job.storage.name()))
            .chain(constants.iter().map(|(k, v)| format!("{k}={v}")))
            .collect();
        let label = format!("sigmoid-attn {} {}", job.name, options.join(" "));
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = {
            let mut modules = lock(&self.modules);
            modules
                .entry((job.name, job.storage))
                .or_insert_with(|| {
                    let desc = wgpu::ShaderModuleDescriptor {
                        label: Some(job.name),
                        source: wgpu::ShaderSource::Wgsl((job.source)().into()),
                    };
                    let checks = if bounds_checks {
                        wgpu::ShaderRuntimeChecks::checked()
                    } else {
                        wgpu::ShaderRuntimeChecks::unchecked()
                    };
                    // SAFETY: the kernels index only inside the bound buffers (the host checks
                    // every buffer against the plan before binding it) and every loop is
                    // bounded by a constant or a uniform count; `tests/shaders.rs` validates
                    // every variant and the conformance suite checks that outputs outside a
                    // plan's rows are never written.
                    unsafe { device.create_shader_module_trusted(desc, checks) }
                })
                .clone()
        };
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        if let Some(err) = pollster::block_on(scope.pop()) {
            lock(&self.modules).remove(&(job.name, job.storage));
            return Err(Error::Compile {
                kernel: job.name.to_string(),
                options,
                log: err.to_string(),
            });
        }
        Ok(pipeline)
    }
}
