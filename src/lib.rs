//! # sigmoid-attn
//!
//! Sigmoid attention, forward and backward, on the CPU (the f64 reference and fallback), on any
//! GPU through WGSL/wgpu, and on NVIDIA Hopper through tensor-core PTX.
//!
//! ## The function
//!
//! For sequence `b` and query head `h` (GQA: query head `h` reads key/value head
//! `h / (heads / kv_heads)`):
//!
//! ```text
//! S = scale · Q Kᵀ + bias_b                      scale defaults to 1/sqrt(D)
//! P = sigmoid(S), P[i,j] = 0 where j ≥ len_k[b], or (causal) j > i
//! O = P V;  rows i ≥ len_q[b] of O are written as 0
//! ```
//!
//! `bias_b` defaults to `-ln(len_k[b])`. The backward recomputes P from Q, K and the bias:
//! `dV = Pᵀ dO`, `dP = dO Vᵀ`, `dS = dP ⊙ P ⊙ (1 − P)`, `dQ = scale · dS K`,
//! `dK = scale · dSᵀ Q`, `d_bias_b = Σ dS` over the sequence.
//!
//! ## Use
//!
//! ```
//! use sigmoid_attn::{attention, DType, HostTensor, Lengths, Problem};
//!
//! // Two padded sequences of 37 and 50 tokens in a [B=2, N=50, H=4, D=64] bf16 batch.
//! let problem = Problem::new(2, 50, 4, 64)
//!     .with_dtype(DType::BF16)
//!     .with_lengths(Lengths::padded(&[37, 50]));
//! let plan = problem.plan()?;
//! let x: Vec<f64> = (0..plan.q_elems()).map(|i| ((i * 7919) % 101) as f64 / 50.0 - 1.0).collect();
//! let q = HostTensor::from_f64(DType::BF16, &x);
//! let out = attention(&problem, &q, &q, &q)?;
//! assert_eq!(out.o.len(), plan.o_elems());
//! println!("ran on {} ({})", out.backend, out.device);
//! # Ok::<(), sigmoid_attn::Error>(())
//! ```
//!
//! For device-resident buffers, pick a [`Backend`] and call its `forward`/`backward` directly.

#![warn(missing_docs)]

pub mod backend;
pub mod cpu;
mod dtype;
mod error;
pub mod problem;
mod select;

pub use backend::{Backend, BackwardArgs, DeviceBuffer};
pub use cpu::CpuBackend;
pub use dtype::{DType, HostTensor};
pub use error::{Error, Result};
pub use problem::{
    Bias, Layout, Lengths, Plan, Problem, SeqInfo, SigmoidMode, Strides, TensorStrides,
};
pub use select::{attention, attention_backward, Forward, Gradients};

#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "wgpu")]
pub mod wgpu;

/// The README's examples compile and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
