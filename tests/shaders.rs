//! Every WGSL kernel × storage path × override set the backend can pick, validated by naga and
//! translated to SPIR-V (Vulkan), MSL (Metal) and HLSL (DX12). Needs no GPU.
#![cfg(feature = "wgpu")]

use sigmoid_attn::wgpu::pipelines::{
    all_tiles, choose_tiles, source, Kernel, StoragePath, TileLimits, Tiles,
};
use std::collections::BTreeSet;

/// Workgroup limits of the adapters the tiles are chosen for: WebGPU's default (16 KiB),
/// lavapipe (32 KiB), NVIDIA over Vulkan (48 KiB).
const PROFILES: [TileLimits; 3] = [
    TileLimits {
        workgroup_storage: 16384,
        invocations: 256,
        size_x: 256,
    },
    TileLimits {
        workgroup_storage: 32768,
        invocations: 1024,
        size_x: 1024,
    },
    TileLimits {
        workgroup_storage: 49152,
        invocations: 1024,
        size_x: 1024,
    },
];

fn capabilities(storage: StoragePath) -> naga::valid::Capabilities {
    let mut caps = naga::valid::Capabilities::default();
    match storage {
        StoragePath::F16 => caps |= naga::valid::Capabilities::SHADER_FLOAT16,
        // unpack2x16float / pack2x16float: core WGSL; wgpu grants this on every native API.
        StoragePath::F16Packed => caps |= naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32,
        _ => {}
    }
    caps
}

fn validate(
    storage: StoragePath,
    module: &naga::Module,
) -> Result<naga::valid::ModuleInfo, String> {
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities(storage))
        .validate(module)
        .map_err(|e| format!("{e:?}"))
}

/// Specialises one parsed module and translates it to the three native languages.
fn check_variant(
    kernel: Kernel,
    storage: StoragePath,
    module: &naga::Module,
    info: &naga::valid::ModuleInfo,
    constants: &[(&str, f64)],
) -> Result<(), String> {
    let mut pc = naga::back::PipelineConstants::default();
    for (k, v) in constants {
        pc.insert((*k).to_string(), *v);
    }
    let (m, i) = naga::back::pipeline_constants::process_overrides(
        module,
        info,
        Some((naga::ShaderStage::Compute, "main")),
        &pc,
    )
    .map_err(|e| format!("overrides: {e:?}"))?;
    // Re-validate the specialised module: array sizes and workgroup sizes are now concrete.
    let i2 = validate(storage, &m)?;
    let _ = i;
    naga::back::spv::write_vec(&m, &i2, &naga::back::spv::Options::default(), None)
        .map_err(|e| format!("spir-v: {e:?}"))?;
    let msl_opts = naga::back::msl::Options {
        lang_version: (2, 4),
        ..Default::default()
    };
    naga::back::msl::write_string(
        &m,
        &i2,
        &msl_opts,
        &naga::back::msl::PipelineOptions::default(),
    )
    .map_err(|e| format!("msl: {e:?}"))?;
    let hlsl_opts = naga::back::hlsl::Options {
        shader_model: naga::back::hlsl::ShaderModel::V6_2,
        ..Default::default()
    };
    let mut hlsl = String::new();
    naga::back::hlsl::Writer::new(
        &mut hlsl,
        &hlsl_opts,
        &naga::back::hlsl::PipelineOptions::default(),
    )
    .write(&m, &i2, None)
    .map_err(|e| format!("hlsl: {e:?}"))?;
    let _ = kernel;
    Ok(())
}

/// The tile shapes to check for `kernel`: every one the backend picks for a head dim in
/// 4..=256 under each profile, plus every candidate shape at a few head dims.
fn tile_sets(kernel: Kernel) -> BTreeSet<Tiles> {
    let mut set = BTreeSet::new();
    for d in (4..=256).step_by(4) {
        for p in &PROFILES {
            if let Some(t) = choose_tiles(kernel, d, p) {
                set.insert(t);
            }
        }
    }
    for d in [4, 16, 20, 36, 64, 80, 128, 252, 256] {
        set.extend(all_tiles(kernel, d));
    }
    set
}

#[test]
fn every_head_dim_has_tiles_under_the_default_webgpu_limits() {
    for kernel in [Kernel::Forward, Kernel::BackwardDq, Kernel::BackwardDkDv] {
        for d in (4..=256).step_by(4) {
            for p in &PROFILES {
                assert!(
                    choose_tiles(kernel, d, p).is_some(),
                    "{} has no tiles for head dim {d} under {p:?}",
                    kernel.name()
                );
            }
        }
    }
}

#[test]
fn every_shader_variant_validates_and_translates() {
    let mut checked = 0usize;
    let mut failures = Vec::new();
    for kernel in Kernel::ALL {
        for storage in StoragePath::ALL {
            let src = source(kernel, storage);
            let module = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| {
                panic!(
                    "{} ({}) does not parse:\n{}",
                    kernel.name(),
                    storage.name(),
                    e.emit_to_string(&src)
                )
            });
            let info = validate(storage, &module).unwrap_or_else(|e| {
                panic!(
                    "{} ({}) fails validation: {e}",
                    kernel.name(),
                    storage.name()
                )
            });
            let variants: Vec<Vec<(&str, f64)>> = if kernel == Kernel::BackwardDbias {
                let t = all_tiles(Kernel::Forward, 64)[0];
                vec![
                    t.constants(kernel, false, true),
                    t.constants(kernel, false, false),
                ]
            } else {
                let mut v = Vec::new();
                for (i, &t) in tile_sets(kernel).iter().enumerate() {
                    // Causal and sigmoid mode only switch code paths: every combination on
                    // a rotating subset keeps the test quick yet covers each with every tile.
                    for causal in [false, true] {
                        for fast in [false, true] {
                            if (i + usize::from(causal) * 2 + usize::from(fast)) % 2 == 0 {
                                v.push(t.constants(kernel, causal, fast));
                            }
                        }
                    }
                }
                v
            };
            for constants in variants {
                checked += 1;
                if let Err(e) = check_variant(kernel, storage, &module, &info, &constants) {
                    failures.push(format!(
                        "{} ({}) {:?}: {e}",
                        kernel.name(),
                        storage.name(),
                        constants
                    ));
                }
            }
        }
    }
    println!("{checked} shader variants validated and translated to SPIR-V, MSL and HLSL");
    assert!(
        failures.is_empty(),
        "{} of {checked} variants failed:\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n")
    );
}

/// The cooperative-matrix kernels (forward, backward dQ, backward dK/dV): every candidate shape
/// of each × head dim (multiples of 16 up to 128)
/// × subgroup size (32 as NVIDIA, 64 as AMD's wave64, 16 as Intel) × causal × sigmoid mode ×
/// storage path (f16, bf16), validated by naga with the `wgpu_cooperative_matrix` capability and
/// translated to SPIR-V (wgpu's Vulkan path, which runs it on NVIDIA/AMD/Intel) and to MSL
/// (Metal's simdgroup matrices; translation is checked, though Apple adapters report 8×8
/// configurations, so the backend does not pick this 16×16 kernel there). HLSL is tried and its
/// outcome printed: naga 30 has no HLSL form of cooperative matrices (`Unimplemented`), so DX12
/// has no tensor-core path and runs the scalar kernels.
#[test]
fn every_coop_variant_validates_and_translates_to_spirv() {
    use sigmoid_attn::wgpu::coop::{source, CoopKernel, CoopTiles, STORAGE};
    // unpack2x16float (the f16 storage path's loads) needs SHADER_FLOAT16_IN_FLOAT32, which
    // `CoopSupport::detect` requires of the adapter.
    let caps = naga::valid::Capabilities::SHADER_FLOAT16
        | naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32
        | naga::valid::Capabilities::COOPERATIVE_MATRIX
        | naga::valid::Capabilities::SUBGROUP
        | naga::valid::Capabilities::SUBGROUP_BARRIER;
    let validate = |m: &naga::Module| {
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
            .validate(m)
            .map_err(|e| format!("{e:?}"))
    };
    let mut checked = 0usize;
    let mut failures = Vec::new();
    let (mut msl_ok, mut hlsl_ok) = (0, 0);
    let (mut msl_err, mut hlsl_err): (Option<String>, Option<String>) = (None, None);
    for kernel in CoopKernel::ALL {
        for storage in STORAGE {
            let src = source(kernel, storage);
            let module = naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| {
                panic!(
                    "{} ({}) does not parse:\n{}",
                    kernel.name(),
                    storage.name(),
                    e.emit_to_string(&src)
                )
            });
            let info = validate(&module).unwrap_or_else(|e| {
                panic!(
                    "{} ({}) fails validation: {e}",
                    kernel.name(),
                    storage.name()
                )
            });
            for sgs in [32, 64, 16] {
                for d in (16..=128).step_by(16) {
                    for (i, t) in CoopTiles::all_for(kernel, d, sgs).into_iter().enumerate() {
                        if !t.fits_for(kernel, 49152, 1024) {
                            continue;
                        }
                        for causal in [false, true] {
                            let fast = (i + usize::from(causal)) % 2 == 0;
                            checked += 1;
                            let mut pc = naga::back::PipelineConstants::default();
                            for (k, v) in t.constants(kernel, causal, fast) {
                                pc.insert(k.to_string(), v);
                            }
                            let r = naga::back::pipeline_constants::process_overrides(
                                &module,
                                &info,
                                Some((naga::ShaderStage::Compute, "main")),
                                &pc,
                            )
                            .map_err(|e| format!("overrides: {e:?}"))
                            .and_then(|(m, _)| {
                                let i2 = validate(&m)?;
                                Ok((m.into_owned(), i2))
                            });
                            let (m, i2) = match r {
                                Ok(x) => x,
                                Err(e) => {
                                    failures.push(format!(
                                        "{} ({}) {t:?}: {e}",
                                        kernel.name(),
                                        storage.name()
                                    ));
                                    continue;
                                }
                            };
                            if let Err(e) = naga::back::spv::write_vec(
                                &m,
                                &i2,
                                &naga::back::spv::Options::default(),
                                None,
                            ) {
                                failures.push(format!(
                                    "{} ({}) {t:?}: spir-v: {e:?}",
                                    kernel.name(),
                                    storage.name()
                                ));
                            }
                            let msl_opts = naga::back::msl::Options {
                                lang_version: (2, 4),
                                ..Default::default()
                            };
                            match naga::back::msl::write_string(
                                &m,
                                &i2,
                                &msl_opts,
                                &naga::back::msl::PipelineOptions::default(),
                            ) {
                                Ok(_) => msl_ok += 1,
                                Err(e) => msl_err = Some(format!("{e:?}")),
                            }
                            let hlsl_opts = naga::back::hlsl::Options {
                                shader_model: naga::back::hlsl::ShaderModel::V6_2,
                                ..Default::default()
                            };
                            let mut hlsl = String::new();
                            match naga::back::hlsl::Writer::new(
                                &mut hlsl,
                                &hlsl_opts,
                                &naga::back::hlsl::PipelineOptions::default(),
                            )
                            .write(&m, &i2, None)
                            {
                                Ok(_) => hlsl_ok += 1,
                                Err(e) => hlsl_err = Some(format!("{e:?}")),
                            }
                        }
                    }
                }
            }
        }
    }
    println!(
        "{checked} coop shader variants validated and translated to SPIR-V; MSL: {msl_ok} \
         translated ({}); HLSL: {hlsl_ok} translated ({})",
        msl_err.clone().unwrap_or_else(|| "no failures".into()),
        hlsl_err.unwrap_or_else(|| "no failures".into())
    );
    assert!(checked > 100, "only {checked} coop variants checked");
    if let Some(e) = msl_err {
        failures.push(format!("msl: {e}"));
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} coop variants failed:\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n")
    );
}

/// Every head dim the cooperative-matrix path takes has a shape for each of its kernels within
/// 48 KiB of workgroup memory (NVIDIA over Vulkan) at subgroup sizes 32 and 64.
#[test]
fn every_coop_kernel_has_tiles_for_every_head_dim() {
    use sigmoid_attn::wgpu::coop::{CoopKernel, CoopTiles};
    for kernel in CoopKernel::ALL {
        for sgs in [32, 64] {
            for d in (16..=128).step_by(16) {
                let t = CoopTiles::choose_for(kernel, d, sgs, 49152, 1024);
                assert!(
                    t.is_some(),
                    "{} has no tiles for d={d}, sgs={sgs}",
                    kernel.name()
                );
            }
        }
    }
}
