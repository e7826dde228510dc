//! The problem description and the validated plan that every backend consumes.
//!
//! A [`Problem`] is plain data: shapes, layout, lengths, bias, causal flag, scale, sigmoid mode
//! and dtype. [`Problem::plan`] checks it once and resolves everything a kernel needs (per
//! sequence offsets and lengths, per sequence bias, element strides of each tensor, buffer
//! lengths) into a [`Plan`]. Backends only ever see a `Plan`, so they never re-validate.

use crate::{DType, Error, Result};

/// Largest head dimension any backend is asked to consider.
pub const MAX_HEAD_DIM: usize = 1024;

/// Element strides of one tensor; the head dimension is always contiguous (stride 1).
///
/// The element `(b, i, h, d)` of a padded tensor lives at
/// `b * batch + i * seq + h * head + d`; in a packed tensor, token `i` of sequence `b` is row
/// `cu_seqlens[b] + i` and `batch` is unused (0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Strides {
    /// Elements between consecutive sequences of the batch.
    pub batch: usize,
    /// Elements between consecutive tokens.
    pub seq: usize,
    /// Elements between consecutive heads.
    pub head: usize,
}

/// Strides of the four tensors when the caller's memory is neither standard layout.
/// Gradients share the strides of their primal tensor (dQ of Q, dO of O, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TensorStrides {
    /// Strides of Q (and dQ).
    pub q: Strides,
    /// Strides of K (and dK).
    pub k: Strides,
    /// Strides of V (and dV).
    pub v: Strides,
    /// Strides of O (and dO).
    pub o: Strides,
}

/// Memory layout of Q, K, V, O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Layout {
    /// `[batch, seq, heads, head_dim]`, as FlashAttention and TritonSigmoid (the default).
    /// Packed input is `[total_tokens, heads, head_dim]`.
    #[default]
    Bnhd,
    /// `[batch, heads, seq, head_dim]`, as PyTorch SDPA. Packed input is
    /// `[heads, total_tokens, head_dim]`.
    Bhnd,
    /// Any strides with a contiguous last dimension.
    Strided(TensorStrides),
}

/// Which tokens of each sequence are real.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub enum Lengths {
    /// Every sequence fills the whole padded dimension.
    #[default]
    Full,
    /// Padded batch `[B, N, …]` with per-sequence valid lengths (`q.len() == k.len() == B`).
    Padded {
        /// Valid query tokens per sequence.
        q: Vec<u32>,
        /// Valid key/value tokens per sequence.
        k: Vec<u32>,
    },
    /// Packed variable-length input: the tokens of all sequences concatenated, sequence `b`
    /// being rows `cu_seqlens[b]..cu_seqlens[b + 1]` (`B + 1` entries, starting at 0).
    Packed {
        /// Query offsets.
        cu_seqlens_q: Vec<u32>,
        /// Key/value offsets.
        cu_seqlens_k: Vec<u32>,
    },
}

impl Lengths {
    /// Padded self-attention: the same valid length for queries and keys of each sequence.
    pub fn padded(lens: &[u32]) -> Self {
        Lengths::Padded {
            q: lens.to_vec(),
            k: lens.to_vec(),
        }
    }

    /// Packed self-attention: the same offsets for queries and keys.
    pub fn packed(cu_seqlens: &[u32]) -> Self {
        Lengths::Packed {
            cu_seqlens_q: cu_seqlens.to_vec(),
            cu_seqlens_k: cu_seqlens.to_vec(),
        }
    }
}

/// The additive bias of the logits, one value per sequence.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Bias {
    /// `-ln(valid keys of the sequence)` (the sigmoid-attention default; 0 for a sequence with
    /// no keys, where nothing is computed anyway).
    #[default]
    NegLogKeys,
    /// The same constant for every sequence.
    Constant(f32),
    /// No bias.
    None,
}

/// How the sigmoid is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SigmoidMode {
    /// `0.5 * tanh(0.5 x) + 0.5` with the hardware tanh where there is one: one special-function
    /// op per element, about 2^-11 relative error of the tanh (so an absolute error of about
    /// 2.5e-4 on P, large relative to P when logits are very negative). The WGSL kernels
    /// evaluate `1 / (1 + e^-x)` instead (WGSL's tanh is not the hardware one where we
    /// measured: slower than an exponential and a reciprocal), well inside the same bound.
    #[default]
    Fast,
    /// A formulation accurate to a few ulps of f32 over the whole range.
    Accurate,
}

/// Sigmoid attention problem, plain data. Build it with [`Problem::new`] and the `with_*`
/// methods, then call [`Problem::plan`].
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Sequences in the batch (for packed input: the number of sequences).
    pub batch: usize,
    /// Padded query dimension N (for packed input: total query tokens).
    pub seq_q: usize,
    /// Padded key dimension (for packed input: total key tokens).
    pub seq_k: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (GQA: `heads % kv_heads == 0`; query head `h` reads kv head
    /// `h / (heads / kv_heads)`).
    pub kv_heads: usize,
    /// Head dimension D.
    pub head_dim: usize,
    /// Memory layout.
    pub layout: Layout,
    /// Valid lengths (full, padded or packed).
    pub lengths: Lengths,
    /// Mask keys after the query position (`j > i`).
    pub causal: bool,
    /// Logit scale; `None` means `1/sqrt(head_dim)`.
    pub scale: Option<f32>,
    /// Logit bias.
    pub bias: Bias,
    /// Sigmoid evaluation.
    pub sigmoid: SigmoidMode,
    /// Storage type.
    pub dtype: DType,
}

impl Problem {
    /// Self-attention over `[batch, seq, heads, head_dim]`, bf16, full lengths, non-causal,
    /// default scale and bias, fast sigmoid.
    pub fn new(batch: usize, seq: usize, heads: usize, head_dim: usize) -> Self {
        Problem {
            batch,
            seq_q: seq,
            seq_k: seq,
            heads,
            kv_heads: heads,
            head_dim,
            layout: Layout::Bnhd,
            lengths: Lengths::Full,
            causal: false,
            scale: None,
            bias: Bias::NegLogKeys,
            sigmoid: SigmoidMode::Fast,
            dtype: DType::BF16,
        }
    }

    /// Packed variable-length self-attention: `cu_seqlens` has one more entry than there are
    /// sequences; the tensors are `[total_tokens, heads, head_dim]`.
    pub fn packed(cu_seqlens: &[u32], heads: usize, head_dim: usize) -> Self {
        let total = cu_seqlens.last().copied().unwrap_or(0) as usize;
        let mut p = Problem::new(cu_seqlens.len().saturating_sub(1), total, heads, head_dim);
        p.lengths = Lengths::packed(cu_seqlens);
        p
    }

    /// Sets the key/value sequence dimension (cross-attention).
    pub fn with_seq_k(mut self, seq_k: usize) -> Self {
        self.seq_k = seq_k;
        self
    }
    /// Sets the number of key/value heads (GQA/MQA).
    pub fn with_kv_heads(mut self, kv_heads: usize) -> Self {
        self.kv_heads = kv_heads;
        self
    }
    /// Sets the layout.
    pub fn with_layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }
    /// Sets the valid lengths.
    pub fn with_lengths(mut self, lengths: Lengths) -> Self {
        self.lengths = lengths;
        self
    }
    /// Sets causal masking.
    pub fn with_causal(mut self, causal: bool) -> Self {
        self.causal = causal;
        self
    }
    /// Sets the logit scale.
    pub fn with_scale(mut self, scale: f32) -> Self {
        self.scale = Some(scale);
        self
    }
    /// Sets the bias.
    pub fn with_bias(mut self, bias: Bias) -> Self {
        self.bias = bias;
        self
    }
    /// Sets the sigmoid mode.
    pub fn with_sigmoid(mut self, sigmoid: SigmoidMode) -> Self {
        self.sigmoid = sigmoid;
        self
    }
    /// Sets the storage dtype.
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    /// Validates the problem and resolves it into a [`Plan`].
    pub fn plan(&self) -> Result<Plan> {
        Plan::new(self)
    }
}

/// Where one sequence's tokens are and how many are valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeqInfo {
    /// Row of the sequence's first query token in the seq dimension (`cu_seqlens_q[b]`, or 0).
    pub q_start: usize,
    /// Row of the sequence's first key token (`cu_seqlens_k[b]`, or 0).
    pub k_start: usize,
    /// Valid query tokens.
    pub len_q: usize,
    /// Valid key tokens.
    pub len_k: usize,
    /// Query rows the outputs O/dQ cover for this sequence: `seq_q` when padded (rows past
    /// `len_q` are written as zeros), `len_q` when packed.
    pub rows_q: usize,
    /// Key rows dK/dV cover (`seq_k` when padded, rows past `len_k` written as zeros).
    pub rows_k: usize,
}

/// A validated problem. Construct with [`Problem::plan`]; all accessors are cheap.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    problem: Problem,
    scale: f32,
    packed: bool,
    seqs: Vec<SeqInfo>,
    bias: Vec<f32>,
    strides: TensorStrides,
    elems: [usize; 4],
    max_len_q: usize,
    max_len_k: usize,
}

/// Index of each tensor in `Plan::elems`.
const Q: usize = 0;
const K: usize = 1;
const V: usize = 2;
const O: usize = 3;

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidProblem(msg.into())
}

fn overflow(what: &str) -> Error {
    Error::Overflow(format!("{what} does not fit in 64-bit indices"))
}

fn checked_product(factors: &[usize], what: &str) -> Result<usize> {
    factors
        .iter()
        .try_fold(1usize, |acc, &f| acc.checked_mul(f))
        .ok_or_else(|| overflow(what))
}

/// Checks `cu_seqlens` and returns its per-sequence lengths.
fn check_cu_seqlens(
    cu: &[u32],
    batch: usize,
    total: usize,
    which: &'static str,
) -> Result<Vec<usize>> {
    let bad = |reason: String| Error::InvalidCuSeqlens { which, reason };
    if cu.len() != batch + 1 {
        return Err(bad(format!(
            "has {} entries, expected batch + 1 = {}",
            cu.len(),
            batch + 1
        )));
    }
    if cu[0] != 0 {
        return Err(bad(format!("starts at {}, expected 0", cu[0])));
    }
    let mut lens = Vec::with_capacity(batch);
    for (b, w) in cu.windows(2).enumerate() {
        if w[1] < w[0] {
            return Err(bad(format!(
                "decreases from {} to {} at sequence {b}",
                w[0], w[1]
            )));
        }
        lens.push((w[1] - w[0]) as usize);
    }
    if cu[batch] as usize != total {
        return Err(bad(format!(
            "ends at {}, but the tensors hold {total} tokens",
            cu[batch]
        )));
    }
    Ok(lens)
}

/// Checks padded lengths against the padded dimension.
fn check_padded(lens: &[u32], batch: usize, n: usize, which: &'static str) -> Result<Vec<usize>> {
    if lens.len() != batch {
        return Err(invalid(format!(
            "{} {which} lengths given for a batch of {batch}",
            lens.len()
        )));
    }
    lens.iter()
        .enumerate()
        .map(|(b, &len)| {
            let len = len as usize;
            if len > n {
                Err(Error::LengthExceedsN {
                    which,
                    batch: b,
                    len,
                    n,
                })
            } else {
                Ok(len)
            }
        })
        .collect()
}

/// Strides of a standard layout for a tensor with `heads` heads over `rows` rows per sequence.
fn standard_strides(layout: Layout, packed: bool, rows: usize, heads: usize, d: usize) -> Strides {
    match (layout, packed) {
        (Layout::Bhnd, true) => Strides {
            batch: 0,
            seq: d,
            head: rows * d,
        },
        (Layout::Bhnd, false) => Strides {
            batch: heads * rows * d,
            seq: d,
            head: rows * d,
        },
        (_, true) => Strides {
            batch: 0,
            seq: heads * d,
            head: d,
        },
        (_, false) => Strides {
            batch: rows * heads * d,
            seq: heads * d,
            head: d,
        },
    }
}

/// Elements a tensor needs (largest offset + 1), checking that distinct `(b, i, h)` rows do not
/// overlap, since gradients and outputs are written through the same strides.
fn tensor_extent(
    name: &'static str,
    s: Strides,
    batch_extent: usize,
    rows: usize,
    heads: usize,
    d: usize,
) -> Result<usize> {
    let dims = [(s.batch, batch_extent), (s.seq, rows), (s.head, heads)];
    let mut last = 0usize;
    for &(stride, extent) in &dims {
        if extent > 1 {
            let span = stride
                .checked_mul(extent - 1)
                .ok_or_else(|| overflow(name))?;
            last = last.checked_add(span).ok_or_else(|| overflow(name))?;
        }
    }
    let total = last.checked_add(d).ok_or_else(|| overflow(name))?;
    // Non-overlap: sorted by stride, each stride must step over everything inside it.
    let mut used: Vec<(usize, usize)> = dims.iter().copied().filter(|&(_, e)| e > 1).collect();
    used.sort_unstable();
    let mut inner = d;
    for (stride, extent) in used {
        if stride < inner {
            return Err(invalid(format!(
                "strides of `{name}` make distinct rows overlap (stride {stride} < inner span {inner})"
            )));
        }
        inner += stride * (extent - 1);
    }
    Ok(total)
}

impl Plan {
    fn new(p: &Problem) -> Result<Self> {
        for (name, v) in [
            ("batch", p.batch),
            ("seq_q", p.seq_q),
            ("seq_k", p.seq_k),
            ("heads", p.heads),
            ("kv_heads", p.kv_heads),
            ("head_dim", p.head_dim),
        ] {
            if v == 0 && !(name == "seq_q" || name == "seq_k") {
                return Err(invalid(format!("{name} is 0")));
            }
            if v > u32::MAX as usize {
                return Err(invalid(format!("{name} = {v} exceeds 2^32 - 1")));
            }
        }
        let packed = matches!(p.lengths, Lengths::Packed { .. });
        if !packed && (p.seq_q == 0 || p.seq_k == 0) {
            return Err(invalid("seq_q and seq_k must be at least 1"));
        }
        if p.head_dim > MAX_HEAD_DIM {
            return Err(invalid(format!(
                "head_dim {} exceeds the maximum {MAX_HEAD_DIM}",
                p.head_dim
            )));
        }
        if p.heads % p.kv_heads != 0 {
            return Err(invalid(format!(
                "heads ({}) is not a multiple of kv_heads ({})",
                p.heads, p.kv_heads
            )));
        }
        let scale = match p.scale {
            Some(s) if !s.is_finite() => return Err(invalid(format!("scale {s} is not finite"))),
            Some(s) => s,
            None => 1.0 / (p.head_dim as f32).sqrt(),
        };
        if let Bias::Constant(c) = p.bias {
            if !c.is_finite() {
                return Err(invalid(format!("bias {c} is not finite")));
            }
        }

        // Sizes first: they bound everything allocated below.
        let d = p.head_dim;
        let strides = match p.layout {
            Layout::Strided(s) => s,
            l => TensorStrides {
                q: standard_strides(l, packed, p.seq_q, p.heads, d),
                k: standard_strides(l, packed, p.seq_k, p.kv_heads, d),
                v: standard_strides(l, packed, p.seq_k, p.kv_heads, d),
                o: standard_strides(l, packed, p.seq_q, p.heads, d),
            },
        };
        let batch_extent = if packed { 1 } else { p.batch };
        let elems = [
            tensor_extent("q", strides.q, batch_extent, p.seq_q, p.heads, d)?,
            tensor_extent("k", strides.k, batch_extent, p.seq_k, p.kv_heads, d)?,
            tensor_extent("v", strides.v, batch_extent, p.seq_k, p.kv_heads, d)?,
            tensor_extent("o", strides.o, batch_extent, p.seq_q, p.heads, d)?,
        ];
        for (e, name) in elems.iter().zip(["q", "k", "v", "o"]) {
            checked_product(&[*e, p.dtype.size_bytes()], name)?;
            if *e > isize::MAX as usize / 8 {
                return Err(overflow(name));
            }
        }
        let (lens_q, lens_k, starts_q, starts_k) = match &p.lengths {
            Lengths::Full => (
                vec![p.seq_q; p.batch],
                vec![p.seq_k; p.batch],
                vec![0; p.batch],
                vec![0; p.batch],
            ),
            Lengths::Padded { q, k } => (
                check_padded(q, p.batch, p.seq_q, "query")?,
                check_padded(k, p.batch, p.seq_k, "key")?,
                vec![0; p.batch],
                vec![0; p.batch],
            ),
            Lengths::Packed {
                cu_seqlens_q,
                cu_seqlens_k,
            } => (
                check_cu_seqlens(cu_seqlens_q, p.batch, p.seq_q, "q")?,
                check_cu_seqlens(cu_seqlens_k, p.batch, p.seq_k, "k")?,
                cu_seqlens_q[..p.batch]
                    .iter()
                    .map(|&x| x as usize)
                    .collect(),
                cu_seqlens_k[..p.batch]
                    .iter()
                    .map(|&x| x as usize)
                    .collect(),
            ),
        };
        let seqs: Vec<SeqInfo> = (0..p.batch)
            .map(|b| SeqInfo {
                q_start: starts_q[b],
                k_start: starts_k[b],
                len_q: lens_q[b],
                len_k: lens_k[b],
                rows_q: if packed { lens_q[b] } else { p.seq_q },
                rows_k: if packed { lens_k[b] } else { p.seq_k },
            })
            .collect();
        let bias = seqs
            .iter()
            .map(|s| match p.bias {
                Bias::NegLogKeys if s.len_k > 0 => -(s.len_k as f64).ln() as f32,
                Bias::NegLogKeys | Bias::None => 0.0,
                Bias::Constant(c) => c,
            })
            .collect();

        Ok(Plan {
            problem: p.clone(),
            scale,
            packed,
            max_len_q: lens_q.iter().copied().max().unwrap_or(0),
            max_len_k: lens_k.iter().copied().max().unwrap_or(0),
            seqs,
            bias,
            strides,
            elems,
        })
    }

    /// The problem this plan was made from.
    pub fn problem(&self) -> &Problem {
        &self.problem
    }
    /// Sequences in the batch.
    pub fn batch(&self) -> usize {
        self.problem.batch
    }
    /// Query heads.
    pub fn heads(&self) -> usize {
        self.problem.heads
    }
    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.problem.kv_heads
    }
    /// Query heads per key/value head.
    pub fn group_size(&self) -> usize {
        self.problem.heads / self.problem.kv_heads
    }
    /// Head dimension.
    pub fn head_dim(&self) -> usize {
        self.problem.head_dim
    }
    /// Padded query dimension (total query tokens when packed).
    pub fn seq_q(&self) -> usize {
        self.problem.seq_q
    }
    /// Padded key dimension (total key tokens when packed).
    pub fn seq_k(&self) -> usize {
        self.problem.seq_k
    }
    /// Longest valid query length.
    pub fn max_len_q(&self) -> usize {
        self.max_len_q
    }
    /// Longest valid key length.
    pub fn max_len_k(&self) -> usize {
        self.max_len_k
    }
    /// Storage type.
    pub fn dtype(&self) -> DType {
        self.problem.dtype
    }
    /// Causal masking.
    pub fn causal(&self) -> bool {
        self.problem.causal
    }
    /// Resolved logit scale.
    pub fn scale(&self) -> f32 {
        self.scale
    }
    /// Sigmoid mode.
    pub fn sigmoid(&self) -> SigmoidMode {
        self.problem.sigmoid
    }
    /// True for packed variable-length input.
    pub fn is_packed(&self) -> bool {
        self.packed
    }
    /// Per-sequence offsets and lengths.
    pub fn seqs(&self) -> &[SeqInfo] {
        &self.seqs
    }
    /// Resolved per-sequence bias.
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }
    /// Element strides of Q, K, V, O.
    pub fn strides(&self) -> &TensorStrides {
        &self.strides
    }
    /// Elements the Q (and dQ) buffer must hold.
    pub fn q_elems(&self) -> usize {
        self.elems[Q]
    }
    /// Elements the K (and dK) buffer must hold.
    pub fn k_elems(&self) -> usize {
        self.elems[K]
    }
    /// Elements the V (and dV) buffer must hold.
    pub fn v_elems(&self) -> usize {
        self.elems[V]
    }
    /// Elements the O (and dO) buffer must hold.
    pub fn o_elems(&self) -> usize {
        self.elems[O]
    }

    /// Offset of element 0 of row `(b, i, h)` in a tensor with strides `s` (`i` counts from the
    /// sequence's start, `start` is that start row).
    #[inline]
    pub fn row_offset(s: &Strides, b: usize, start: usize, i: usize, h: usize) -> usize {
        b * s.batch + (start + i) * s.seq + h * s.head
    }

    /// Number of unmasked (query, key) pairs, summed over sequences and heads.
    pub fn valid_pairs(&self) -> u64 {
        let per_head: u64 = self
            .seqs
            .iter()
            .map(|s| {
                let (lq, lk) = (s.len_q as u64, s.len_k as u64);
                if self.problem.causal {
                    // Row i sees keys 0..=i, capped at lk.
                    let full = lq.min(lk);
                    let tri = full * (full + 1) / 2;
                    tri + lq.saturating_sub(lk) * lk
                } else {
                    lq * lk
                }
            })
            .sum();
        per_head * self.problem.heads as u64
    }

    /// FLOPs of the forward pass as kernels report them: `4 · D · valid pairs`.
    pub fn forward_flops(&self) -> f64 {
        4.0 * self.problem.head_dim as f64 * self.valid_pairs() as f64
    }

    /// FLOPs of the backward pass by the usual convention: 2.5 × forward.
    pub fn backward_flops(&self) -> f64 {
        2.5 * self.forward_flops()
    }

    /// Checks a buffer's dtype and length against what the plan needs.
    pub fn check_buffer(
        &self,
        tensor: &'static str,
        dtype: DType,
        len: usize,
        expected_dtype: DType,
        expected_len: usize,
    ) -> Result<()> {
        if dtype != expected_dtype || len < expected_len {
            return Err(Error::InvalidBuffer {
                tensor,
                expected: format!("at least {expected_len} elements of {expected_dtype}"),
                got: format!("{len} elements of {dtype}"),
            });
        }
        Ok(())
    }
}
