//! The host-slice entry points: pick the best backend present and run on it.
//!
//! Order: CUDA (Hopper) → wgpu → CPU. A backend that is missing or cannot run the plan
//! (`DeviceUnavailable`, `Unsupported`) is skipped; any other error is returned.

use crate::backend::{Backend, BackwardArgs};
use crate::{CpuBackend, DType, Error, HostTensor, Plan, Problem, Result};

/// What [`attention`] returns.
#[derive(Debug, Clone)]
pub struct Forward {
    /// The output, with the strides of O.
    pub o: HostTensor,
    /// The backend that ran it.
    pub backend: &'static str,
    /// The device it ran on.
    pub device: String,
}

/// What [`attention_backward`] returns.
#[derive(Debug, Clone)]
pub struct Gradients {
    /// Gradient of Q.
    pub dq: HostTensor,
    /// Gradient of K.
    pub dk: HostTensor,
    /// Gradient of V.
    pub dv: HostTensor,
    /// Gradient of the per-sequence bias (f32, one per sequence), when asked for.
    pub d_bias: Option<Vec<f32>>,
    /// The backend that ran it.
    pub backend: &'static str,
    /// The device it ran on.
    pub device: String,
}

/// True for errors after which the next backend should be tried.
fn is_fallback(e: &Error) -> bool {
    matches!(
        e,
        Error::Unsupported { .. } | Error::DeviceUnavailable { .. }
    )
}

fn forward_on<B: Backend>(
    b: &B,
    plan: &Plan,
    q: &HostTensor,
    k: &HostTensor,
    v: &HostTensor,
) -> Result<Forward> {
    b.supports_forward(plan)?;
    let (qd, kd, vd) = (b.upload(q)?, b.upload(k)?, b.upload(v)?);
    let mut od = b.alloc(plan.dtype(), plan.o_elems())?;
    b.forward(plan, &qd, &kd, &vd, &mut od)?;
    Ok(Forward {
        o: b.download(&od)?,
        backend: b.name(),
        device: b.device_name(),
    })
}

#[allow(clippy::too_many_arguments)]
fn backward_on<B: Backend>(
    b: &B,
    plan: &Plan,
    q: &HostTensor,
    k: &HostTensor,
    v: &HostTensor,
    d_o: &HostTensor,
    want_d_bias: bool,
) -> Result<Gradients> {
    b.supports_backward(plan)?;
    let (qd, kd, vd, dod) = (b.upload(q)?, b.upload(k)?, b.upload(v)?, b.upload(d_o)?);
    let mut dq = b.alloc(plan.dtype(), plan.q_elems())?;
    let mut dk = b.alloc(plan.dtype(), plan.k_elems())?;
    let mut dv = b.alloc(plan.dtype(), plan.v_elems())?;
    let mut db = if want_d_bias {
        Some(b.alloc(DType::F32, plan.batch())?)
    } else {
        None
    };
    b.backward(
        plan,
        BackwardArgs {
            q: &qd,
            k: &kd,
            v: &vd,
            d_o: &dod,
            dq: &mut dq,
            dk: &mut dk,
            dv: &mut dv,
            d_bias: db.as_mut(),
        },
    )?;
    let d_bias = match db {
        Some(db) => match b.download(&db)? {
            HostTensor::F32(v) => Some(v),
            other => {
                return Err(Error::DType {
                    expected: DType::F32,
                    got: other.dtype(),
                })
            }
        },
        None => None,
    };
    Ok(Gradients {
        dq: b.download(&dq)?,
        dk: b.download(&dk)?,
        dv: b.download(&dv)?,
        d_bias,
        backend: b.name(),
        device: b.device_name(),
    })
}

/// Host-slice runs on one backend, type-erased so that backends can sit in one list.
trait HostRunner {
    fn forward(
        &self,
        plan: &Plan,
        q: &HostTensor,
        k: &HostTensor,
        v: &HostTensor,
    ) -> Result<Forward>;
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        plan: &Plan,
        q: &HostTensor,
        k: &HostTensor,
        v: &HostTensor,
        d_o: &HostTensor,
        want_d_bias: bool,
    ) -> Result<Gradients>;
}

impl<B: Backend> HostRunner for B {
    fn forward(
        &self,
        plan: &Plan,
        q: &HostTensor,
        k: &HostTensor,
        v: &HostTensor,
    ) -> Result<Forward> {
        forward_on(self, plan, q, k, v)
    }

    fn backward(
        &self,
        plan: &Plan,
        q: &HostTensor,
        k: &HostTensor,
        v: &HostTensor,
        d_o: &HostTensor,
        want_d_bias: bool,
    ) -> Result<Gradients> {
        backward_on(self, plan, q, k, v, d_o, want_d_bias)
    }
}

type Constructor = fn() -> Result<Box<dyn HostRunner>>;

/// Backend constructors in order of preference; each is only called when the ones before it
/// could not run the plan. The CPU comes last and runs everything.
fn candidates() -> Vec<Constructor> {
    vec![
        #[cfg(feature = "cuda")]
        || Ok(Box::new(crate::cuda::CudaBackend::new()?) as Box<dyn HostRunner>),
        #[cfg(feature = "wgpu")]
        || {
            let be = crate::wgpu::WgpuBackend::new()?;
            // A software adapter (lavapipe, WARP) is far slower than the CPU backend.
            if be.adapter_info().device_type == ::wgpu::DeviceType::Cpu {
                return Err(Error::DeviceUnavailable {
                    backend: "wgpu",
                    reason: format!("only a software adapter ({})", be.adapter_info().name),
                });
            }
            Ok(Box::new(be) as Box<dyn HostRunner>)
        },
        || Ok(Box::new(CpuBackend::new()) as Box<dyn HostRunner>),
    ]
}

/// Tries each candidate until one runs (or fails for a reason other than fallback).
fn run_first<T>(mut attempt: impl FnMut(&dyn HostRunner) -> Result<T>) -> Result<T> {
    let mut last = None;
    for make in candidates() {
        let result = make().and_then(|runner| attempt(runner.as_ref()));
        match result {
            Err(e) if is_fallback(&e) => last = Some(e),
            r => return r,
        }
    }
    Err(last.unwrap_or(Error::DeviceUnavailable {
        backend: "any",
        reason: "no backend could run this problem".into(),
    }))
}

/// Forward on host slices, on the best backend present (CUDA → wgpu → CPU).
///
/// `q`, `k`, `v` must have the problem's dtype and hold at least `plan.q_elems()`,
/// `plan.k_elems()`, `plan.v_elems()` elements.
pub fn attention(
    problem: &Problem,
    q: &HostTensor,
    k: &HostTensor,
    v: &HostTensor,
) -> Result<Forward> {
    let plan = problem.plan()?;
    run_first(|b| b.forward(&plan, q, k, v))
}

/// Backward on host slices, on the best backend present. `d_o` has the strides of O.
pub fn attention_backward(
    problem: &Problem,
    q: &HostTensor,
    k: &HostTensor,
    v: &HostTensor,
    d_o: &HostTensor,
    want_d_bias: bool,
) -> Result<Gradients> {
    let plan = problem.plan()?;
    run_first(|b| b.backward(&plan, q, k, v, d_o, want_d_bias))
}
