// Kernel parameters: the twin of `FwdParams` and `SeqInfo` in src/cuda/launch.rs.
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
};
static_assert(sizeof(FwdParams) == 88, "FwdParams layout must match src/cuda/launch.rs");

/// A CUtensorMap as the kernel sees it: 128 opaque bytes, 64-byte aligned.
struct alignas(64) TensorMap {
    unsigned long long opaque[16];
};

}  // namespace sa
