//! Storage types and host-side tensors.

use half::{bf16, f16};
use std::fmt;

/// Storage type of Q, K, V, O and their gradients. Accumulation is always in f32 or wider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE single precision.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16 (8 exponent bits, 7 mantissa bits).
    BF16,
}

impl DType {
    /// All dtypes, in a fixed order.
    pub const ALL: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

    /// Bytes per element.
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// Unit roundoff (half the distance from 1 to the next representable number).
    pub fn unit_roundoff(self) -> f64 {
        match self {
            DType::F32 => f64::powi(2.0, -24),
            DType::F16 => f64::powi(2.0, -11),
            DType::BF16 => f64::powi(2.0, -8),
        }
    }

    /// Rounds an `f64` to the nearest value of this dtype, returned as `f64`.
    pub fn round(self, x: f64) -> f64 {
        match self {
            DType::F32 => x as f32 as f64,
            DType::F16 => f16::from_f64(x).to_f64(),
            DType::BF16 => bf16::from_f64(x).to_f64(),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        })
    }
}

/// A tensor's elements in host memory, in one of the storage dtypes.
#[derive(Debug, Clone, PartialEq)]
pub enum HostTensor {
    /// f32 elements.
    F32(Vec<f32>),
    /// f16 elements.
    F16(Vec<f16>),
    /// bf16 elements.
    BF16(Vec<bf16>),
}

impl HostTensor {
    /// Rounds `values` to `dtype`.
    pub fn from_f64(dtype: DType, values: &[f64]) -> Self {
        match dtype {
            DType::F32 => HostTensor::F32(values.iter().map(|&x| x as f32).collect()),
            DType::F16 => HostTensor::F16(values.iter().map(|&x| f16::from_f64(x)).collect()),
            DType::BF16 => HostTensor::BF16(values.iter().map(|&x| bf16::from_f64(x)).collect()),
        }
    }

    /// `len` copies of `value` (NaN is a good poison for outputs).
    pub fn filled(dtype: DType, len: usize, value: f32) -> Self {
        match dtype {
            DType::F32 => HostTensor::F32(vec![value; len]),
            DType::F16 => HostTensor::F16(vec![f16::from_f32(value); len]),
            DType::BF16 => HostTensor::BF16(vec![bf16::from_f32(value); len]),
        }
    }

    /// Reinterprets little-endian bytes as elements of `dtype`.
    pub fn from_bytes(dtype: DType, bytes: &[u8]) -> Self {
        match dtype {
            DType::F32 => HostTensor::F32(bytemuck::pod_collect_to_vec(bytes)),
            DType::F16 => HostTensor::F16(bytemuck::pod_collect_to_vec(bytes)),
            DType::BF16 => HostTensor::BF16(bytemuck::pod_collect_to_vec(bytes)),
        }
    }

    /// The elements' dtype.
    pub fn dtype(&self) -> DType {
        match self {
            HostTensor::F32(_) => DType::F32,
            HostTensor::F16(_) => DType::F16,
            HostTensor::BF16(_) => DType::BF16,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            HostTensor::F32(v) => v.len(),
            HostTensor::F16(v) => v.len(),
            HostTensor::BF16(v) => v.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as raw bytes (native little-endian layout).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            HostTensor::F32(v) => bytemuck::cast_slice(v),
            HostTensor::F16(v) => bytemuck::cast_slice(v),
            HostTensor::BF16(v) => bytemuck::cast_slice(v),
        }
    }

    /// Element `i` widened to `f64`.
    #[inline]
    pub fn get(&self, i: usize) -> f64 {
        match self {
            HostTensor::F32(v) => v[i] as f64,
            HostTensor::F16(v) => v[i].to_f64(),
            HostTensor::BF16(v) => v[i].to_f64(),
        }
    }

    /// Stores `x` (rounded to the dtype) at element `i`.
    #[inline]
    pub fn set(&mut self, i: usize, x: f64) {
        match self {
            HostTensor::F32(v) => v[i] = x as f32,
            HostTensor::F16(v) => v[i] = f16::from_f64(x),
            HostTensor::BF16(v) => v[i] = bf16::from_f64(x),
        }
    }

    /// All elements widened to `f64`.
    pub fn to_f64(&self) -> Vec<f64> {
        (0..self.len()).map(|i| self.get(i)).collect()
    }
}
