//! The portable backend: WGSL kernels on wgpu (Vulkan, Metal, DX12).
