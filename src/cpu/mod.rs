//! The CPU backend: the f64 reference, parallel over query tiles with rayon.
//!
//! Always present; the conformance harness compares every other backend against it. Buffers are
//! host tensors, so `upload`/`download` are copies.

pub mod reference;

use crate::backend::{check_forward, Backend, BackwardArgs};
use crate::{DType, HostTensor, Plan, Result};

/// Runs on the host's cores (rayon's global pool). Supports every valid plan.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuBackend;

impl CpuBackend {
    /// The CPU backend.
    pub fn new() -> Self {
        CpuBackend
    }
}

impl Backend for CpuBackend {
    type Buffer = HostTensor;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn device_name(&self) -> String {
        format!("host CPU ({} threads)", rayon::current_num_threads())
    }

    fn supports_forward(&self, _plan: &Plan) -> Result<()> {
        Ok(())
    }

    fn supports_backward(&self, _plan: &Plan) -> Result<()> {
        Ok(())
    }

    fn alloc(&self, dtype: DType, len: usize) -> Result<HostTensor> {
        Ok(HostTensor::filled(dtype, len, 0.0))
    }

    fn upload(&self, data: &HostTensor) -> Result<HostTensor> {
        Ok(data.clone())
    }

    fn download(&self, buf: &HostTensor) -> Result<HostTensor> {
        Ok(buf.clone())
    }

    fn forward(
        &self,
        plan: &Plan,
        q: &HostTensor,
        k: &HostTensor,
        v: &HostTensor,
        o: &mut HostTensor,
    ) -> Result<()> {
        check_forward(plan, q, k, v, o)?;
        reference::forward(plan, q, k, v, o);
        Ok(())
    }

    fn backward(&self, plan: &Plan, a: BackwardArgs<'_, HostTensor>) -> Result<()> {
        a.check(plan)?;
        reference::backward(plan, a.q, a.k, a.v, a.d_o, a.dq, a.dk, a.dv, a.d_bias);
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}
