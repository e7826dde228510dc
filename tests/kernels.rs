//! The Hopper kernels without a GPU: the shipped cubins against their manifest, and, where an
//! NVRTC library can be loaded, a fresh compile of every variant (no spills, no serialized
//! wgmma; byte-identical to the shipped cubin under the pinned NVRTC 13.5).
#![cfg(feature = "cuda")]

use sigmoid_attn::{DType, Error, SigmoidMode};

const VARIANTS: [(DType, &str); 2] = [(DType::BF16, "bf16"), (DType::F16, "f16")];
const MODES: [(SigmoidMode, &str); 2] = [
    (SigmoidMode::Fast, "fast"),
    (SigmoidMode::Accurate, "accurate"),
];

fn manifest() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/cubin/manifest.json");
    std::fs::read_to_string(path).expect("kernels/cubin/manifest.json")
}

#[test]
fn manifest_lists_every_shipped_cubin_without_spills() {
    let m = manifest();
    for (_, dt) in VARIANTS {
        for d in [64, 128] {
            for (_, mode) in MODES {
                let name = format!("fwd_{dt}_d{d}_{mode}");
                assert!(
                    m.contains(&format!("\"name\": \"{name}\"")),
                    "{name} missing from the manifest"
                );
                let path = format!("{}/kernels/cubin/{name}.cubin", env!("CARGO_MANIFEST_DIR"));
                let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                assert!(len > 1000, "{path} missing or empty");
            }
        }
    }
    assert!(!m.contains("\"spill_bytes\": 1") && m.matches("\"spill_bytes\": 0").count() == 8);
}

#[test]
fn nvrtc_compiles_every_variant_cleanly() {
    let mut compiled = 0;
    for (dtype, _) in VARIANTS {
        for d in [64, 128] {
            for (mode, _) in MODES {
                let build = match sigmoid_attn::cuda::compile_forward(dtype, d, mode) {
                    Ok(b) => b,
                    Err(e @ (Error::DeviceUnavailable { .. } | Error::Unsupported { .. })) => {
                        println!("kernels: skipped: {e}");
                        return;
                    }
                    Err(e) => panic!("{e}"),
                };
                assert!(
                    build.problems.is_empty(),
                    "{}: {:?}",
                    build.name,
                    build.problems
                );
                if build.nvrtc == (13, 5) {
                    assert!(
                        Some(build.cubin.as_slice()) == build.shipped,
                        "{}: the shipped cubin is stale; run python3 kernels/build_cubins.py",
                        build.name
                    );
                }
                compiled += 1;
            }
        }
    }
    println!("kernels: {compiled} variants compiled cleanly");
}
