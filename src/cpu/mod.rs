//! The CPU backend: the f64 reference, parallel over query tiles with rayon.
//!
//! Always present; the conformance harness compares every other backend against it. Buffers are
//! host tensors, so `upload`/`download` are copies.

pub mod reference;

use crate::backend::{Backend, BackwardArgs};
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

fn check_inputs(plan: &Plan, q: &HostTensor, k: &HostTensor, v: &HostTensor) -> Result<()> {
    let dt = plan.dtype();
    plan.check_buffer("q", q.dtype(), q.len(), dt, plan.q_elems())?;
    plan.check_buffer("k", k.dtype(), k.len(), dt, plan.k_elems())?;
    plan.check_buffer("v", v.dtype(), v.len(), dt, plan.v_elems())
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
        check_inputs(plan, q, k, v)?;
        plan.check_buffer("o", o.dtype(), o.len(), plan.dtype(), plan.o_elems())?;
        reference::forward(plan, q, k, v, o);
        Ok(())
    }

    fn backward(&self, plan: &Plan, a: BackwardArgs<'_, HostTensor>) -> Result<()> {
        let dt = plan.dtype();
        check_inputs(plan, a.q, a.k, a.v)?;
        plan.check_buffer("d_o", a.d_o.dtype(), a.d_o.len(), dt, plan.o_elems())?;
        plan.check_buffer("dq", a.dq.dtype(), a.dq.len(), dt, plan.q_elems())?;
        plan.check_buffer("dk", a.dk.dtype(), a.dk.len(), dt, plan.k_elems())?;
        plan.check_buffer("dv", a.dv.dtype(), a.dv.len(), dt, plan.v_elems())?;
        if let Some(db) = a.d_bias.as_deref() {
            plan.check_buffer("d_bias", db.dtype(), db.len(), DType::F32, plan.batch())?;
        }
        reference::backward(plan, a.q, a.k, a.v, a.d_o, a.dq, a.dk, a.dv, a.d_bias);
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}
