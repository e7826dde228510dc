//! Run-time compilation of kernel variants to `sm_90a` cubins with NVRTC, cached on disk.
//!
//! The shipped cubins cover every variant the backend accepts today; this path serves variants
//! that are not shipped (and `SIGMOID_ATTN_CUDA_JIT=1`, which compiles everything at run time).
//! The cache key is the flattened source, the options and the NVRTC version; each cache entry
//! stores that key next to the cubin and is used only if the key matches exactly. NVRTC 13.0.x
//! is refused: it crashes on wgmma kernels (notes of the H200 runs).

use std::ffi::{c_char, c_int, CString};
use std::path::{Path, PathBuf};

use cudarc::nvrtc::{result, sys};

use crate::{Error, Result};

const BACKEND: &str = "cuda";

/// The NVRTC library's version, `(major, minor)`, or `DeviceUnavailable` without the library.
pub(crate) fn version() -> Result<(i32, i32)> {
    // SAFETY: probes for the shared library without calling into it.
    if !unsafe { sys::is_culib_present() } {
        return Err(Error::DeviceUnavailable {
            backend: BACKEND,
            reason: "libnvrtc not found (needed only for kernel variants that are not shipped \
                     as cubins)"
                .into(),
        });
    }
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: the library is present; both out-pointers are valid.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| nvrtc_err("nvrtcVersion", e))?;
    Ok((major, minor))
}

/// Refuses NVRTC versions known to miscompile or crash on these kernels.
pub(crate) fn check_version(v: (i32, i32)) -> Result<()> {
    if v.0 == 13 && v.1 == 0 {
        return Err(Error::Unsupported {
            backend: BACKEND,
            what: "run-time compilation with NVRTC 13.0 (it crashes on wgmma kernels); install \
                   NVRTC >= 13.1, e.g. `pip install nvidia-cuda-nvrtc==13.5.37`, and put its \
                   lib folder on LD_LIBRARY_PATH"
                .into(),
        });
    }
    if v.0 < 12 || (v.0 == 12 && v.1 < 3) {
        return Err(Error::Unsupported {
            backend: BACKEND,
            what: format!(
                "run-time compilation with NVRTC {}.{} (sm_90a wgmma needs >= 12.3)",
                v.0, v.1
            ),
        });
    }
    Ok(())
}

fn nvrtc_err(what: &str, e: result::NvrtcError) -> Error {
    Error::Driver {
        backend: BACKEND,
        message: format!("{what}: {e:?}"),
    }
}

/// FNV-1a, 64 bits: a stable hash for cache file names (the full key is compared on load).
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// Where compiled cubins are cached: `$SIGMOID_ATTN_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/sigmoid-attn`, else `$HOME/.cache/sigmoid-attn`; `None` disables caching.
pub(crate) fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("SIGMOID_ATTN_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("sigmoid-attn"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("sigmoid-attn"))
}

/// What a compile produced: the cubin and NVRTC's log (ptxas statistics included).
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    /// The `sm_90a` cubin.
    pub cubin: Vec<u8>,
    /// The compile log (empty when the cubin came from the cache).
    pub log: String,
}

/// Compiles `source` (a single translation unit) to a cubin, through the disk cache.
pub(crate) fn compile_cached(
    kernel: &str,
    program: &str,
    source: &str,
    options: &[String],
) -> Result<Compiled> {
    let ver = version()?;
    check_version(ver)?;
    let key = format!(
        "nvrtc {}.{}\n{}\n{}",
        ver.0,
        ver.1,
        options.join(" "),
        source
    );
    let file = format!("{kernel}-{:016x}", fnv1a(key.as_bytes()));
    let dir = cache_dir();
    if let Some(dir) = &dir {
        if let Some(cubin) = read_cache(dir, &file, &key) {
            return Ok(Compiled {
                cubin,
                log: String::new(),
            });
        }
    }
    let compiled = compile(kernel, program, source, options)?;
    if let Some(dir) = &dir {
        // A cache that cannot be written only costs a recompile next time.
        let _ = write_cache(dir, &file, &key, &compiled.cubin);
    }
    Ok(compiled)
}

fn read_cache(dir: &Path, file: &str, key: &str) -> Option<Vec<u8>> {
    let stored = std::fs::read(dir.join(format!("{file}.key"))).ok()?;
    if stored != key.as_bytes() {
        return None;
    }
    std::fs::read(dir.join(format!("{file}.cubin"))).ok()
}

fn write_cache(dir: &Path, file: &str, key: &str, cubin: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    // Cubin first, key last: a reader that finds the key finds a complete cubin.
    let tmp = dir.join(format!("{file}.cubin.tmp{}", std::process::id()));
    std::fs::write(&tmp, cubin)?;
    std::fs::rename(&tmp, dir.join(format!("{file}.cubin")))?;
    let tmp = dir.join(format!("{file}.key.tmp{}", std::process::id()));
    std::fs::write(&tmp, key)?;
    std::fs::rename(&tmp, dir.join(format!("{file}.key")))
}

/// Owns an `nvrtcProgram` and destroys it on drop.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by create_program and destroyed only here.
        let _ = unsafe { result::destroy_program(self.0) };
    }
}

fn c_string(s: &str, what: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::InvalidProblem(format!("{what} contains a NUL byte")))
}

/// Compiles without the cache. `program` is the source's file name (it is part of the symbol
/// names NVRTC generates, so it must match build_cubins.py for identical cubins). The log is
/// returned with the cubin, or inside `Error::Compile`.
pub(crate) fn compile(
    kernel: &str,
    program: &str,
    source: &str,
    options: &[String],
) -> Result<Compiled> {
    let ver = version()?;
    check_version(ver)?;
    let src = c_string(source, "kernel source")?;
    let name = c_string(program, "program name")?;
    for o in options {
        c_string(o, "an NVRTC option")?;
    }
    let prog = Program(
        result::create_program(&src, Some(&name))
            .map_err(|e| nvrtc_err("nvrtcCreateProgram", e))?,
    );
    // SAFETY: prog is live; the options were checked for NUL bytes above.
    let compiled = unsafe { result::compile_program(prog.0, options) };
    // SAFETY: prog is live.
    let log = unsafe { result::get_program_log(prog.0) }
        .map(|raw| log_to_string(&raw))
        .unwrap_or_default();
    if compiled.is_err() {
        return Err(Error::Compile {
            kernel: kernel.to_string(),
            options: options.to_vec(),
            log,
        });
    }
    let mut size = 0usize;
    // SAFETY: prog compiled successfully; size is a valid out-pointer.
    unsafe { sys::nvrtcGetCUBINSize(prog.0, &mut size) }
        .result()
        .map_err(|e| nvrtc_err("nvrtcGetCUBINSize", e))?;
    let mut cubin = vec![0u8; size];
    // SAFETY: cubin holds `size` bytes as NVRTC asked.
    unsafe { sys::nvrtcGetCUBIN(prog.0, cubin.as_mut_ptr() as *mut c_char) }
        .result()
        .map_err(|e| nvrtc_err("nvrtcGetCUBIN", e))?;
    Ok(Compiled { cubin, log })
}

fn log_to_string(raw: &[c_char]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Register spills or wgmma serialization reported in a compile log (empty if none).
pub(crate) fn ptxas_problems(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| {
            l.contains("Potential Performance Loss")
                || l.contains("C7508")
                || l.contains("C751")
                || (l.contains("spill")
                    && !l.contains(" 0 bytes spill stores, 0 bytes spill loads"))
        })
        .map(|l| l.trim().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_nvrtc_13_0() {
        assert!(matches!(
            check_version((13, 0)),
            Err(Error::Unsupported { .. })
        ));
        assert!(matches!(
            check_version((12, 2)),
            Err(Error::Unsupported { .. })
        ));
        assert!(check_version((13, 5)).is_ok());
        assert!(check_version((12, 8)).is_ok());
    }

    #[test]
    fn ptxas_problems_finds_spills_and_serialization() {
        let ok = "ptxas . 0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads";
        assert!(ptxas_problems(ok).is_empty());
        let bad = "ptxas . 0 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads\n\
                   ptxas info : (C7514) Potential Performance Loss: wgmma.mma_async instructions are serialized";
        assert_eq!(ptxas_problems(bad).len(), 2);
    }

    #[test]
    fn cache_round_trip_checks_the_key() {
        let dir =
            std::env::temp_dir().join(format!("sigmoid-attn-nvrtc-test-{}", std::process::id()));
        write_cache(&dir, "k", "key-a", b"cubin").unwrap();
        assert_eq!(
            read_cache(&dir, "k", "key-a").as_deref(),
            Some(&b"cubin"[..])
        );
        assert_eq!(read_cache(&dir, "k", "key-b"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
