//! The crate's one error type. Every failure is a value that names what went wrong.

use crate::DType;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, from a bad shape to a failed kernel compile.
///
/// Variants separate "this request is wrong" (`InvalidProblem`, `LengthExceedsN`,
/// `InvalidBuffer`, …) from "this backend or machine can't" (`Unsupported`,
/// `DeviceUnavailable`), so a caller can fall back on the second kind only.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A dimension is zero, too large, or inconsistent with another one.
    #[error("invalid problem: {0}")]
    InvalidProblem(String),
    /// A per-sequence length is larger than the padded sequence dimension.
    #[error("{which} length {len} of sequence {batch} exceeds the sequence dimension {n}")]
    LengthExceedsN {
        /// `"query"` or `"key"`.
        which: &'static str,
        /// Index of the sequence in the batch.
        batch: usize,
        /// The offending length.
        len: usize,
        /// The padded sequence dimension.
        n: usize,
    },
    /// `cu_seqlens` is malformed (wrong length, not starting at 0, decreasing, or not ending at
    /// the total token count).
    #[error("invalid cu_seqlens_{which}: {reason}")]
    InvalidCuSeqlens {
        /// `"q"` or `"k"`.
        which: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A buffer passed to a kernel has the wrong length or dtype for the plan.
    #[error("buffer `{tensor}`: expected {expected}, got {got}")]
    InvalidBuffer {
        /// Which tensor (`"q"`, `"dk"`, `"d_bias"`, …).
        tensor: &'static str,
        /// What the plan needs.
        expected: String,
        /// What was given.
        got: String,
    },
    /// Index arithmetic for this problem would overflow.
    #[error("index arithmetic overflows: {0}")]
    Overflow(String),
    /// The backend cannot run this (valid) problem; another backend may.
    #[error("{backend} backend does not support {what}")]
    Unsupported {
        /// Backend name.
        backend: &'static str,
        /// What it cannot do (dtype, head dim, feature, size).
        what: String,
    },
    /// The backend's device or driver is not present or could not be opened.
    #[error("{backend} backend unavailable: {reason}")]
    DeviceUnavailable {
        /// Backend name.
        backend: &'static str,
        /// Why (missing library, no adapter, wrong architecture, …).
        reason: String,
    },
    /// A kernel failed to compile; carries the compiler's log and options.
    #[error("compiling kernel `{kernel}` failed (options {options:?}):\n{log}")]
    Compile {
        /// Kernel name.
        kernel: String,
        /// Compiler options used.
        options: Vec<String>,
        /// The compiler's log.
        log: String,
    },
    /// The device driver or API reported an error at run time.
    #[error("{backend} driver error: {message}")]
    Driver {
        /// Backend name.
        backend: &'static str,
        /// The driver's message.
        message: String,
    },
    /// A dtype the operation does not accept.
    #[error("dtype {got} where {expected} was required")]
    DType {
        /// What was required.
        expected: DType,
        /// What was given.
        got: DType,
    },
}
