//! The contract every backend implements: buffers on its device, forward and backward.

use crate::{DType, HostTensor, Plan, Result};

/// What a backend's buffer says about itself, so that the plan can check it before a launch.
pub trait DeviceBuffer {
    /// Storage type of the elements.
    fn dtype(&self) -> DType;
    /// Number of elements.
    fn len(&self) -> usize;
    /// True when there are no elements.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl DeviceBuffer for HostTensor {
    fn dtype(&self) -> DType {
        HostTensor::dtype(self)
    }
    fn len(&self) -> usize {
        HostTensor::len(self)
    }
}

/// Checks the forward's buffers against `plan` (dtype and length of each); every backend calls
/// it before it launches anything.
pub fn check_forward<B: DeviceBuffer>(plan: &Plan, q: &B, k: &B, v: &B, o: &B) -> Result<()> {
    let dt = plan.dtype();
    plan.check_buffer("q", q.dtype(), q.len(), dt, plan.q_elems())?;
    plan.check_buffer("k", k.dtype(), k.len(), dt, plan.k_elems())?;
    plan.check_buffer("v", v.dtype(), v.len(), dt, plan.v_elems())?;
    plan.check_buffer("o", o.dtype(), o.len(), dt, plan.o_elems())
}

/// The inputs and outputs of one backward pass, all on the backend's device.
///
/// `dq`, `dk`, `dv` are overwritten (rows past a sequence's valid length with zeros; with GQA,
/// `dk`/`dv` hold the sum over the query heads of each group). `d_bias`, when given, is an f32
/// buffer of `batch` elements receiving `Σ dS` over each sequence's heads and valid pairs.
pub struct BackwardArgs<'a, B> {
    /// Queries.
    pub q: &'a B,
    /// Keys.
    pub k: &'a B,
    /// Values.
    pub v: &'a B,
    /// Gradient of the output (strides of O).
    pub d_o: &'a B,
    /// Gradient of the queries (strides of Q).
    pub dq: &'a mut B,
    /// Gradient of the keys (strides of K).
    pub dk: &'a mut B,
    /// Gradient of the values (strides of V).
    pub dv: &'a mut B,
    /// Optional gradient of the per-sequence bias (f32, `batch` elements).
    pub d_bias: Option<&'a mut B>,
}

impl<B: DeviceBuffer> BackwardArgs<'_, B> {
    /// Checks every buffer against `plan` (dtype and length; d_bias is f32 of `batch`
    /// elements); every backend calls it before it launches anything.
    pub fn check(&self, plan: &Plan) -> Result<()> {
        let dt = plan.dtype();
        plan.check_buffer("q", self.q.dtype(), self.q.len(), dt, plan.q_elems())?;
        plan.check_buffer("k", self.k.dtype(), self.k.len(), dt, plan.k_elems())?;
        plan.check_buffer("v", self.v.dtype(), self.v.len(), dt, plan.v_elems())?;
        plan.check_buffer("d_o", self.d_o.dtype(), self.d_o.len(), dt, plan.o_elems())?;
        plan.check_buffer("dq", self.dq.dtype(), self.dq.len(), dt, plan.q_elems())?;
        plan.check_buffer("dk", self.dk.dtype(), self.dk.len(), dt, plan.k_elems())?;
        plan.check_buffer("dv", self.dv.dtype(), self.dv.len(), dt, plan.v_elems())?;
        if let Some(db) = self.d_bias.as_deref() {
            plan.check_buffer("d_bias", db.dtype(), db.len(), DType::F32, plan.batch())?;
        }
        Ok(())
    }
}

/// A compute backend: where buffers live and how the kernels run.
///
/// The forward writes every row of O that the plan covers (rows past a sequence's valid query
/// length as zeros) and nothing else. Errors leave outputs in an unspecified state but never
/// write outside them.
pub trait Backend {
    /// A buffer on this backend's device.
    type Buffer: DeviceBuffer;

    /// Short backend name (`"cpu"`, `"wgpu"`, `"cuda"`).
    fn name(&self) -> &'static str;

    /// The device this backend runs on, in words.
    fn device_name(&self) -> String;

    /// `Ok(())` when this backend can run the forward of `plan`, else `Error::Unsupported`
    /// naming what it lacks.
    fn supports_forward(&self, plan: &Plan) -> Result<()>;

    /// `Ok(())` when this backend can run the backward of `plan`.
    fn supports_backward(&self, plan: &Plan) -> Result<()>;

    /// Relative precision, in mantissa bits, of this backend's fast sigmoid (the tanh it
    /// uses), or `None` when its fast mode is as accurate as f32. The conformance harness
    /// widens its tolerance for `SigmoidMode::Fast` accordingly.
    fn fast_sigmoid_bits(&self) -> Option<u32> {
        None
    }

    /// A buffer of `len` elements of `dtype`, contents unspecified.
    fn alloc(&self, dtype: DType, len: usize) -> Result<Self::Buffer>;

    /// Copies host data to a new device buffer.
    fn upload(&self, data: &HostTensor) -> Result<Self::Buffer>;

    /// Copies a device buffer back to the host (waits for pending work).
    fn download(&self, buf: &Self::Buffer) -> Result<HostTensor>;

    /// `O = sigmoid(scale · Q Kᵀ + bias) V` with the plan's masks.
    fn forward(
        &self,
        plan: &Plan,
        q: &Self::Buffer,
        k: &Self::Buffer,
        v: &Self::Buffer,
        o: &mut Self::Buffer,
    ) -> Result<()>;

    /// Gradients of Q, K, V (and optionally the bias) given dO; P is recomputed.
    fn backward(&self, plan: &Plan, args: BackwardArgs<'_, Self::Buffer>) -> Result<()>;

    /// Waits until all submitted work has finished.
    fn synchronize(&self) -> Result<()>;

    /// Milliseconds the device spends on the work that `enqueue` submits.
    ///
    /// The default waits for the device, runs `enqueue`, waits again and reads the wall clock;
    /// GPU backends override it with their own clock (CUDA events, wgpu timestamp queries) so
    /// that benchmarks measure kernels, not submission.
    fn time_ms(&self, enqueue: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        self.synchronize()?;
        let start = std::time::Instant::now();
        enqueue()?;
        self.synchronize()?;
        Ok(start.elapsed().as_secs_f64() * 1e3)
    }
}
