//! The Hopper kernels without a GPU: the shipped cubins against their manifest, and, where an
//! NVRTC library can be loaded, a fresh compile of every variant, forward and backward (no
//! spills, no serialized wgmma; byte-identical to the shipped cubin under the pinned NVRTC 13.5).
#![cfg(feature = "cuda")]

use sigmoid_attn::cuda::KernelBuild;
use sigmoid_attn::{DType, Error, Result, SigmoidMode};

const VARIANTS: [(DType, &str); 2] = [(DType::BF16, "bf16"), (DType::F16, "f16")];
const MODES: [(SigmoidMode, &str); 2] = [
    (SigmoidMode::Fast, "fast"),
    (SigmoidMode::Accurate, "accurate"),
];
type Compile = fn(DType, usize, SigmoidMode) -> Result<KernelBuild>;
const KERNELS: [(&str, Compile); 2] = [
    ("fwd", sigmoid_attn::cuda::compile_forward),
    ("bwd", sigmoid_attn::cuda::compile_backward),
];

fn manifest() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/cubin/manifest.json");
    std::fs::read_to_string(path).expect("kernels/cubin/manifest.json")
}

/// The `"name"` of every variant in the manifest.
fn manifest_names(m: &str) -> Vec<String> {
    m.split("\"name\": \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next().map(str::to_string))
        .collect()
}

#[test]
fn manifest_lists_every_shipped_cubin_without_spills() {
    let m = manifest();
    let names = manifest_names(&m);
    let mut expected = 0;
    for (kernel, _) in KERNELS {
        for (_, dt) in VARIANTS {
            for d in [64, 128] {
                for (_, mode) in MODES {
                    let name = format!("{kernel}_{dt}_d{d}_{mode}");
                    assert!(names.contains(&name), "{name} missing from the manifest");
                    expected += 1;
                }
            }
        }
    }
    assert_eq!(
        names.len(),
        expected,
        "unexpected manifest entries: {names:?}"
    );
    for name in &names {
        let path = format!("{}/kernels/cubin/{name}.cubin", env!("CARGO_MANIFEST_DIR"));
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(len > 1000, "{path} missing or empty");
    }
    assert_eq!(
        m.matches("\"spill_bytes\": 0").count(),
        names.len(),
        "a shipped variant spills registers"
    );
}

#[test]
fn nvrtc_compiles_every_variant_cleanly() {
    let mut compiled = 0;
    for (_, compile) in KERNELS {
        for (dtype, _) in VARIANTS {
            for d in [64, 128] {
                for (mode, _) in MODES {
                    let build = match compile(dtype, d, mode) {
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
    }
    println!("kernels: {compiled} variants compiled cleanly");
}
