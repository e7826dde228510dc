// Kernel parameters: the twins of `FwdParams`, `SeqInfo`, `BwdParams` and `BwdSeqInfo` in
// src/cuda/launch.rs.
// Field order, types and sizes must match exactly; the static_asserts and the Rust
// `const _: () = assert!(size_of::<..>() == ..)` pin the sizes on both sides.
#pragma once

namespace sa {

/// Per-sequence description (one per batch element), in element units.
struct SeqInfo {
    int q_start;  ///< first row of this sequence along the Q/O sequence axis
    int k_start;  ///< first row of this sequence along the K/V sequence axis
    int len_q;    ///< valid query rows
    int len_k;    ///< valid key rows
    int rows;     ///< rows of O owned by the sequence (written; rows >= len_q get zeros)
    float bias;   ///< additive logit bias of the sequence
};
static_assert(sizeof(SeqInfo) == 24, "SeqInfo layout must match src/cuda/launch.rs");

/// Everything the forward kernel needs besides the three tensor maps.
struct FwdParams {
    unsigned long long o_ptr;    ///< device address of O
    unsigned long long seq_ptr;  ///< device address of `batch` SeqInfo, or 0 for `uniform`
    long long o_stride_batch;    ///< elements
    long long o_stride_seq;      ///< elements
    long long o_stride_head;     ///< elements
    int batch;
    int heads;
    int kv_group;     ///< heads / kv_heads (GQA)
    int causal;       ///< 1: key j > query i is masked
    float scale;      ///< multiplies q . k
    SeqInfo uniform;  ///< used for every sequence when seq_ptr == 0 (q_start = k_start = 0)
    int map_batch;    ///< 1: the tensor maps index batch b; 0: packed input (batch coordinate 0)
    int m_tiles;      ///< query tiles per (head, batch element): ceil(longest rows / kBlockM)
    /// Slots of the work order that follows the `batch` SeqInfo at seq_ptr (u32 unit indices,
    /// CTA c's in slots c, c + gridDim.x, ...), or 0: no order, units in their natural order
    /// (fwd_sm90.cu, for_each_tile).
    int order_units;
};
static_assert(sizeof(FwdParams) == 96, "FwdParams layout must match src/cuda/launch.rs");

/// Per-sequence description for the backward kernels (twin of `BwdSeqInfoRaw` in
/// src/cuda/launch.rs): the forward's fields plus the rows of dK/dV the sequence owns.
struct BwdSeqInfo {
    int q_start;  ///< first row along the Q/dO/dQ sequence axis
    int k_start;  ///< first row along the K/V/dK/dV sequence axis
    int len_q;    ///< valid query rows
    int len_k;    ///< valid key rows
    int rows_q;   ///< rows of dQ owned (written; rows >= len_q get zeros)
    int rows_k;   ///< rows of dK/dV owned (written; rows >= len_k get zeros)
    float bias;   ///< additive logit bias
    int accum_tile;  ///< first 64-row tile of the sequence in the dQ workspace (packed input)
};
static_assert(sizeof(BwdSeqInfo) == 32, "BwdSeqInfo layout must match src/cuda/launch.rs");

/// Everything the backward kernels need besides the tensor maps (twin of `BwdParams` in
/// src/cuda/launch.rs). Strides are in elements; dQ, dK, dV share the strides of Q, K, V.
struct BwdParams {
    unsigned long long dq_ptr;             ///< dQ (storage dtype)
    unsigned long long dk_ptr;             ///< dK (storage dtype)
    unsigned long long dv_ptr;             ///< dV (storage dtype)
    unsigned long long dq_accum_ptr;       ///< f32 dQ workspace (atomic mode), else 0
    unsigned long long dbias_partial_ptr;  ///< f32 [batch][kv_heads][key_blocks] partial sums
    unsigned long long dbias_ptr;          ///< f32 [batch], or 0 when d_bias is not wanted
    unsigned long long seq_ptr;            ///< `batch` BwdSeqInfo, or 0 for `uniform`
    long long dq_stride_batch, dq_stride_seq, dq_stride_head;
    long long dk_stride_batch, dk_stride_seq, dk_stride_head;
    long long dv_stride_batch, dv_stride_seq, dv_stride_head;
    long long accum_tiles_batch;  ///< workspace tiles between sequences (padded: ceil(seq_q / 64); packed: 0)
    int batch;
    int heads;
    int kv_heads;
    int kv_group;    ///< heads / kv_heads
    int causal;      ///< 1: key j > query i is masked
    float scale;     ///< multiplies q . k
    int key_blocks;  ///< grid.x of the dK/dV kernel (key blocks per sequence and kv head)
    int map_batch;   ///< 1: the tensor maps index batch b; 0: packed input
    int atomic_dq;   ///< 1: the dK/dV kernel also adds dQ into dq_accum (fp32 atomics)
    int pad0;
    BwdSeqInfo uniform;  ///< used for every sequence when seq_ptr == 0
};
static_assert(sizeof(BwdParams) == 208, "BwdParams layout must match src/cuda/launch.rs");

/// A CUtensorMap as the kernel sees it: 128 opaque bytes, 64-byte aligned.
struct alignas(64) TensorMap {
    unsigned long long opaque[16];
};

}  // namespace sa
