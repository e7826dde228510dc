//! The conformance suite on the wgpu backend (lavapipe in CI, any GPU elsewhere).
mod common;
conformance!(wgpu, sigmoid_attn::wgpu::WgpuBackend::new);
