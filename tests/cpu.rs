//! The conformance suite on the CPU backend (the blocked f64 reference against the definition).
mod common;
conformance!(cpu, || Ok(sigmoid_attn::CpuBackend::new()));
