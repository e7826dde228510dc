//! The Hopper (sm_90a) backend: wgmma + TMA kernels compiled to cubins.
