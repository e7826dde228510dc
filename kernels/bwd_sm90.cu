// Sigmoid attention backward for Hopper (sm_90a). Gradient conformance, compute-sanitizer and
// bitwise-repeatable deterministic mode checked on an H200 by kernels/dev/bwd_h200.sh.
//
//   P  = sigmoid(scale * Q K^T + bias_b), masked (key j >= len_k, query i >= len_q, causal j > i)
//   dV = P^T dO        dP = dO V^T        dS = dP * P * (1 - P)
//   dK = scale * dS^T Q                   dQ = scale * dS K        d_bias_b = sum dS
//
// Nothing is saved by the forward: P is recomputed from Q, K and the bias, and sigmoid needs no
// log-sum-exp and no rowsum(dO * O) pre-pass.
//
// Entry points (one cubin per dtype x head dim x sigmoid mode holds all four):
//
//   sigmoid_attn_bwd_dkdv     grid (key blocks, kv heads, batch). KV-block-outer: a CTA owns
//                             kKeyBlock keys of one (sequence, kv head), 64 per consumer
//                             warpgroup, and keeps their dK and dV accumulators in registers
//                             while it walks every query tile of every query head of the GQA
//                             group. A producer warp streams Q/dO tiles through a kStages ring
//                             (full/empty mbarriers). Per step, each consumer warpgroup:
//                               S^T  = K Q^T    (wgmma SS, M = keys, N = queries)
//                               dP^T = V dO^T   (wgmma SS)
//                               P, dS in registers (masked by selects, never by multiplying)
//                               dV  += P^T dO   (wgmma RS: P^T is already in the A layout)
//                               dK  += dS^T Q   (wgmma RS)
//                             and with atomic_dq = 1 also dQ_tile = dS K, one step late: both
//                             warpgroups write their dS (stmatrix) into one queries x 128 keys
//                             tile of a double buffer; in the next step each multiplies its
//                             share (D = 128: half of K's columns; D = 64, 128-query steps:
//                             its 64 queries) by K and adds the result into the fp32
//                             workspace dq_accum (tiled in fragment order, see "dQ workspace"):
//                             staged in shared memory and added by one bulk reduction
//                             (cp.reduce.async.bulk .add.f32), or by per-thread red.v4, each
//                             warpgroup and step as BwdConfig::kDqPath says. The delay lets
//                             the warpgroups drift apart by up to a step, so one's elementwise
//                             work overlaps the other's GEMMs.
//                             Each CTA writes its partial sum of dS to dbias_partial.
//   sigmoid_attn_bwd_dq       deterministic mode: grid (query blocks, heads, batch).
//                             Query-outer, no atomics: S = Q K^T, dP = dO V^T, dS, dQ += dS K
//                             (RS), then dQ = scale * dQ written in the storage dtype.
//   sigmoid_attn_bwd_dq_convert  atomic mode: dQ = scale * dq_accum in the storage dtype.
//   sigmoid_attn_bwd_dbias    d_bias[b] = sum of the partials of sequence b, in a fixed order.
//
// Launch order (src/cuda/mod.rs): atomic mode: memset(dq_accum) -> dkdv(atomic_dq = 1) ->
// dq_convert -> dbias; deterministic mode: dkdv(atomic_dq = 0) -> dq -> dbias. Every output
// row the plan covers is written: dQ rows past len_q and dK/dV rows past len_k as zeros.
//
// Padding may hold anything, NaN included: tiles are zeroed in shared memory past the valid
// rows wherever a masked (zero) factor would otherwise multiply them inside a GEMM (Q and dO
// rows past len_q in dkdv, K and V rows past len_k in both kernels).
//
// The deterministic dQ kernel has no warp specialisation: both warpgroups compute, thread 0
// issues the TMA loads, and the load of tile t + kStages is issued after every thread has met
// at a barrier at the end of step t.
//
// Variant macros: SA_HEAD_DIM = 64 | 128, SA_F16 (else bf16), SA_ACCURATE (else fast sigmoid).
// Experiment macro (never in shipped cubins): SA_DQ_PATH (BwdConfig::kDqPath).
#include "ptx.cuh"
#include "params.cuh"
#include "config.cuh"
#include "sigmoid.cuh"

#ifndef SA_HEAD_DIM
#define SA_HEAD_DIM 128
#endif

namespace sa {
namespace bwd {

constexpr int kD = SA_HEAD_DIM;
typedef BwdConfig<kD> Cfg;
static_assert(kD == 64 || kD == 128, "head dims of the backward: 64, 128");

constexpr int kThreads = 256;  // dQ, convert: two warpgroups
constexpr int kDkdvThreads = 384;  // dK/dV: a producer warpgroup and two consumer warpgroups
constexpr int kProducerRegs = 24, kConsumerRegs = 240;  // setmaxnreg budgets of the dK/dV roles
constexpr int kSub = kD / 64;  // 64-column (128-byte) sub-tiles of a row
constexpr int kStages = Cfg::kStages;

// dK/dV kernel
constexpr int kKvN = Cfg::kKeyBlock;    // keys per CTA
constexpr int kKvM = Cfg::kQueryTile;   // queries per step
constexpr int kKvKSub = kKvN * 128;     // bytes of one 64-column sub-tile of the K (or V) block
constexpr int kKvQSub = kKvM * 128;     // bytes of one sub-tile of a Q (or dO) tile
constexpr int kKvKBytes = kKvN * kD * 2;
constexpr int kKvQBytes = kKvM * kD * 2;
constexpr int kDsBytes = kKvM * 128;    // one warpgroup's half of a dS tile: kKvM queries x 64 keys
static_assert(kKvN == 128 && (kKvM == 64 || kKvM == 128), "the dK/dV kernel: 128 keys x 64 or 128 queries");
static_assert(kKvM == 64 || kD == 64, "128-query steps only at D = 64 (registers)");

// dQ kernel
constexpr int kQM = Cfg::kQueryBlock;   // queries per CTA
constexpr int kQN = Cfg::kKeyTile;      // keys per step
constexpr int kQQSub = kQM * 128;
constexpr int kQKSub = kQN * 128;
constexpr int kQQBytes = kQM * kD * 2;
constexpr int kQKBytes = kQN * kD * 2;
static_assert(kQM == 128 && kQN == 64, "the dQ kernel is written for 128 queries x 64 keys");

/// How a warpgroup adds its dQ share: BwdConfig::kDqPath (config.cuh says what 0-3 mean and
/// what each measured); experiments override it with the macro SA_DQ_PATH.
#ifndef SA_DQ_PATH
#define SA_DQ_PATH Cfg::kDqPath
#endif
static_assert(SA_DQ_PATH >= 0 && SA_DQ_PATH <= 3, "SA_DQ_PATH: 0, 1, 2 or 3");

// One warpgroup's dQ share of a step (64 x 64 fp32), staged in shared memory for the bulk
// reduction into the workspace; two (double buffer) per warpgroup that ever adds by bulk
// reductions.
constexpr int kDqStageBytes = 64 * 64 * 4;
constexpr int kDqStagers = SA_DQ_PATH == 1 ? 0 : SA_DQ_PATH == 2 ? 1 : 2;  // warpgroups that stage
constexpr int kDkdvBarriers = 4 + 2 * kStages + 4;  // see DkdvSmem
constexpr int kDkdvSmemBytes = 1024 + 2 * kKvKBytes + 2 * kStages * kKvQBytes + 2 * 2 * kDsBytes +
                               kDqStagers * 2 * kDqStageBytes + 8 * kDkdvBarriers;
constexpr int kDqSmemBytes = 1024 + 2 * kQQBytes + 2 * kStages * kQKBytes + 8 * (1 + kStages);
static_assert(kDkdvSmemBytes <= 227 * 1024 && kDqSmemBytes <= 227 * 1024, "shared memory");

// Named barriers (0 is __syncthreads): all 256 threads of the dQ kernel; the 256 consumer
// threads of the dK/dV kernel; the 128 threads of dK/dV consumer warpgroup cw (kBarDqStage + cw).
constexpr u32 kBarAll = 1;
constexpr u32 kBarConsumers = 2;
constexpr u32 kBarDqStage = 3;

__device__ __forceinline__ BwdSeqInfo load_seq(const BwdParams& p, int b) {
    if (p.seq_ptr == 0) return p.uniform;
    return reinterpret_cast<const BwdSeqInfo*>(p.seq_ptr)[b];
}

/// Zeroes rows [valid, rows) of a tile made of kSub sub-tiles of `rows` x 128 bytes (a whole
/// row is cleared, so the swizzle inside it does not matter). Threads `first`.. `first` +
/// `count` - 1 of the CTA take part; the caller fences and synchronises before wgmma reads it.
__device__ __forceinline__ void zero_rows(u32 tile, int rows, int valid, int first = 0, int count = kThreads) {
    const int chunks = (rows - valid) * 8;  // 16-byte chunks per sub-tile
    for (int c = static_cast<int>(threadIdx.x) - first; c < chunks * kSub; c += count) {
        const int sub = c / chunks, rem = c % chunks;
        st_shared_zero16(tile + sub * rows * 128 + (valid + rem / 8) * 128 + (rem % 8) * 16);
    }
}

/// Sum over the 256 consumer threads of the dK/dV kernel (consumer thread index `ct`) in a
/// fixed order, so deterministic. Consumer thread 0 gets it.
__device__ __forceinline__ float consumer_sum(float x, int ct) {
    __shared__ float partial[8];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    if (ct % 32 == 0) partial[ct / 32] = x;
    named_barrier_sync(kBarConsumers, 256);
    float s = 0.0f;
    if (ct == 0) {
        for (int i = 0; i < 8; ++i) s += partial[i];
    }
    return s;
}

/// acc(64 x N) = A(64 x kD) B(N x kD)^T, both K-major 128-byte-swizzled tiles in shared memory
/// (rows of A from `a` + a_row * 128 within each sub-tile; sub-tiles a_sub / b_sub bytes apart).
/// Used for S^T = K Q^T and dP^T = V dO^T (dkdv) and S = Q K^T, dP = dO V^T (dq).
template <int N>
__device__ __forceinline__ void gemm_nt(float (&acc)[N / 2], u32 a, int a_sub, int a_row, u32 b, int b_sub) {
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
        const int c = kk / 4, w = kk % 4;
        const u64 da = wgmma_desc_sw128(a + c * a_sub + a_row * 128 + w * 32, 16, 1024);
        const u64 db = wgmma_desc_sw128(b + c * b_sub + w * 32, 16, 1024);
        if constexpr (N == 128) {
            wgmma_ss_n128<0>(acc, da, db, kk > 0 ? 1 : 0);
        } else {
            wgmma_ss_n64<0>(acc, da, db, kk > 0 ? 1 : 0);
        }
    }
}

/// acc(64 x kD) += F(64 x K, registers) B(K x kD), B a row-major (N-major) tile in shared
/// memory whose 64-column sub-tiles are `b_sub` bytes apart: dV += P^T dO, dK += dS^T Q (dkdv)
/// and dQ += dS K (dq). The leading byte offset steps between the sub-tiles along N.
template <int D, int K>
__device__ __forceinline__ void gemm_rs_nn(float (&acc)[D / 2], const u32 (&f)[K / 16][4], u32 b, int b_sub) {
#pragma unroll
    for (int kk = 0; kk < K / 16; ++kk) {
        const u64 db = wgmma_desc_sw128(b + kk * 16 * 128, b_sub, 1024);
        if constexpr (D == 128) {
            wgmma_rs_n128<1>(acc, f[kk], db, 1);
        } else {
            wgmma_rs_n64<1>(acc, f[kk], db, 1);
        }
    }
}

/// Writes a 64 x kD accumulator tile (this warpgroup's rows) to a 16-bit tensor, multiplied by
/// `mul`: rows r with first_row + r < rows are written, as zeros where first_row + r >= valid.
__device__ __forceinline__ void store_rows(const float (&acc)[kD / 2], float mul, unsigned char* base,
                                           long long stride_seq, int start, int first_row, int valid,
                                           int rows, int row_in_wg, int lane) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int i = first_row + row_in_wg + 8 * half;
        if (i < rows) {
            const bool zero = i >= valid;
            unsigned char* row = base + 2 * (static_cast<long long>(start + i) * stride_seq);
#pragma unroll
            for (int j = 0; j < kD / 8; ++j) {
                const int col = 8 * j + 2 * (lane % 4);
                const u32 v = zero ? 0u : pack2(mul * acc[4 * j + 2 * half], mul * acc[4 * j + 2 * half + 1]);
                st_global_b32(row + 2 * col, v);
            }
        }
    }
}

/// Bytes per row of a 64 x kD tile of 16-bit values staged in shared memory: padded by 16 so
/// that the 8 rows a warp writes at once start 4 banks apart.
constexpr int kStagePitch = 2 * kD + 16;
constexpr int kStageBytes = 64 * kStagePitch;

/// store_rows through shared memory: this warpgroup (thread t of 128, named barrier `bar`)
/// writes its tile as rows of 16-bit values at `stage` (kStageBytes no one else touches now),
/// then stores whole 16-byte pieces of rows (4-byte ones where the destination rows are not
/// 16-byte aligned): straight from the fragments, a warp's 4-byte stores covered 8 rows of 16
/// bytes each (dq_convert went from ~1.8 to ~4.2 TB/s that way).
__device__ __forceinline__ void store_rows_staged(const float (&acc)[kD / 2], float mul, unsigned char* base,
                                                  long long stride_seq, int start, int first_row, int valid,
                                                  int rows, int t, u32 stage, u32 bar) {
    const int lane = t % 32, row_in_wg = (t / 32) * 16 + lane / 4;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int r = row_in_wg + 8 * half;
        const bool zero = first_row + r >= valid;
#pragma unroll
        for (int j = 0; j < kD / 8; ++j) {
            const int col = 8 * j + 2 * (lane % 4);
            const u32 v = zero ? 0u : pack2(mul * acc[4 * j + 2 * half], mul * acc[4 * j + 2 * half + 1]);
            st_shared_b32(stage + r * kStagePitch + 2 * col, v);
        }
    }
    named_barrier_sync(bar, 128);
    unsigned char* tile = base + 2 * (static_cast<long long>(start + first_row) * stride_seq);
    const bool vec = ((reinterpret_cast<unsigned long long>(tile) | (2ull * stride_seq)) & 15) == 0;
    constexpr int kPieces = kD / 8;  // 16-byte pieces per row
    const int n_rows = min(64, rows - first_row);
    for (int c = t; c < n_rows * kPieces; c += 128) {
        const int r = c / kPieces, k = c % kPieces;
        const uint4 v = ld_shared_v4_b32(stage + r * kStagePitch + 16 * k);
        unsigned char* dst = tile + 2 * (static_cast<long long>(r) * stride_seq + 8 * k);
        if (vec) {
            st_global_v4_b32(dst, v);
        } else {
            st_global_b32(dst, v.x);
            st_global_b32(dst + 4, v.y);
            st_global_b32(dst + 8, v.z);
            st_global_b32(dst + 12, v.w);
        }
    }
}

/// Shared memory of the dK/dV kernel: the CTA's K and V blocks (loaded once), a ring of Q/dO
/// tiles, two dS tiles (kKvM queries x 128 keys: one 64-key half per consumer warpgroup; two so
/// that the dQ product of a step can run a step later), then the barriers:
///   kv_load (TMA) -> kv_full (K, V ready, tail rows zeroed), tail_load (TMA of a stage whose
///   rows the producer must zero), full(s) (stage s ready), empty(s) (stage s consumed, one
///   arrival per consumer warp), ds_ready(i) / ds_free(i) (dS tile i written / read by wgmma:
///   one arrival per consumer thread).
struct DkdvSmem {
    u32 k, v, q, d_o, ds, dq, bars;
    __device__ __forceinline__ explicit DkdvSmem(u32 base) {
        k = base;
        v = k + kKvKBytes;
        q = v + kKvKBytes;
        d_o = q + kStages * kKvQBytes;
        ds = d_o + kStages * kKvQBytes;
        dq = ds + 2 * 2 * kDsBytes;
        bars = dq + kDqStagers * 2 * kDqStageBytes;
    }
    /// Staging buffer `i` (0, 1) of consumer warpgroup `cw`'s dQ share.
    __device__ __forceinline__ u32 dq_stage(int cw, int i) const { return dq + (2 * cw + i) * kDqStageBytes; }
    __device__ __forceinline__ u32 kv_load() const { return bars; }
    __device__ __forceinline__ u32 kv_full() const { return bars + 8; }
    __device__ __forceinline__ u32 tail_load() const { return bars + 16; }
    __device__ __forceinline__ u32 full(int s) const { return bars + 8 * (4 + s); }
    __device__ __forceinline__ u32 empty(int s) const { return bars + 8 * (4 + kStages + s); }
    __device__ __forceinline__ u32 ds_ready(int i) const { return bars + 8 * (4 + 2 * kStages + i); }
    __device__ __forceinline__ u32 ds_free(int i) const { return bars + 8 * (4 + 2 * kStages + 2 + i); }
    __device__ __forceinline__ u32 q_tile(int s) const { return q + s * kKvQBytes; }
    __device__ __forceinline__ u32 do_tile(int s) const { return d_o + s * kKvQBytes; }
    /// Half `half` (keys 64 half ..) of dS tile `i`.
    __device__ __forceinline__ u32 ds_tile(int i, int half) const { return ds + (2 * i + half) * kDsBytes; }
};

// dQ workspace (atomic mode). fp32, whole tiles of 64 query rows per (tile, head), stored in
// the order the dK/dV kernel's dQ fragments come out of wgmma, so that a warpgroup's share of a
// step is 16 KiB in one piece (staged in that order, added by one bulk reduction) and each
// thread's staging store is 4 contiguous floats: group G of 4 accumulator registers
// (columns 8 G .. 8 G + 7) of thread t of a 64-row warpgroup tile lives at (G * 128 + t) * 4.
// With 64-query steps the two warpgroups split a tile by columns (warpgroup wg holds groups
// wg * kDqGroups ..); with 128-query steps each holds all columns of its own 64-row tile.
// sigmoid_attn_bwd_dq_convert inverts it.
constexpr bool kDqSplitRows = kKvM == 128;              // else the warpgroups split columns
constexpr int kDqCols = kDqSplitRows ? kD : kD / 2;     // dQ columns per warpgroup
constexpr int kDqGroups = kDqCols / 8;                  // groups of 4 accumulator registers per thread
constexpr int kDqTileFloats = 64 * kD;                  // one (tile, head) of the workspace

__device__ __forceinline__ long long dq_accum_offset(long long tile, int h, int heads, int first_group, int t) {
    return (tile * heads + h) * kDqTileFloats + (static_cast<long long>(first_group) * 128 + t) * 4;
}

/// dq(64 x 64) = dS(64 queries x 128 keys) K(128 keys x 64 columns): dS from the two swizzled
/// 64-key halves of dS tile `tile`, K read N-major from the resident key block. kRows (D = 64,
/// 128-query steps): this warpgroup's 64 queries, all columns; else (D = 128): all 64 queries,
/// this warpgroup's 64 columns.
template <bool kRows>
__device__ __forceinline__ void gemm_dq_half(float (&dq)[kDqCols / 2], const DkdvSmem& sm, int tile, int wg) {
    const int a_row = kRows ? wg * 64 : 0;
#pragma unroll
    for (int kk = 0; kk < kKvN / 16; ++kk) {
        const u64 da = wgmma_desc_sw128(sm.ds_tile(tile, kk / 4) + a_row * 128 + (kk % 4) * 32, 16, 1024);
        const u64 db = wgmma_desc_sw128(sm.k + (kRows ? 0 : wg * kKvKSub) + kk * 16 * 128, kKvKSub, 1024);
        wgmma_ss_n64<1>(dq, da, db, kk > 0 ? 1 : 0);
    }
}
static_assert(kDqCols == 64, "gemm_dq_half computes 64 columns per warpgroup");

/// Query tiles [m_begin, m_end) that the key block starting at k0 meets: with causal masking
/// only queries i >= k0 see any of its keys.
struct QueryRange {
    int m_begin, m_end;
};

__device__ __forceinline__ QueryRange query_range(const BwdSeqInfo& s, int k0, int causal) {
    QueryRange r;
    r.m_begin = causal ? k0 / kKvM : 0;
    r.m_end = (s.len_q + kKvM - 1) / kKvM;
    if (k0 >= s.len_k || r.m_end < r.m_begin) r.m_end = r.m_begin;  // nothing to do
    return r;
}

}  // namespace bwd
}  // namespace sa

using namespace sa;
using namespace sa::bwd;

namespace sa {
namespace bwd {

/// One step of the dK/dV kernel: query head and first query row (within the sequence) of step
/// `it`, which covers query head kvh * kv_group + it / m_tiles, tile m_begin + it % m_tiles.
struct Step {
    int h, q0;
};

__device__ __forceinline__ Step step_of(const BwdParams& p, const QueryRange& qr, int kvh, int it) {
    const int m_tiles = qr.m_end - qr.m_begin;
    return Step{kvh * p.kv_group + it / m_tiles, (qr.m_begin + it % m_tiles) * kKvM};
}

/// Producer warp of the dK/dV kernel (all 32 lanes; lane 0 issues the TMA): the key block
/// once, then the Q/dO tile of every step into the ring. Rows past len_k (K, V) and past len_q
/// (Q, dO) may hold anything, NaN included, and 0 * NaN would reach dK, dV and dQ through the
/// GEMMs, so the warp zeroes them before it releases the tile.
__device__ __forceinline__ void dkdv_produce(const TensorMap& tm_q, const TensorMap& tm_k, const TensorMap& tm_v,
                                             const TensorMap& tm_do, const BwdParams& p, const DkdvSmem& sm,
                                             const BwdSeqInfo& seq, const QueryRange& qr, int n_tiles, int kvh,
                                             int b, int k0, int lane) {
    const int bq = b * p.map_batch;
    int tails = 0;  // completed phases of tail_load
    // Step it's Q/dO tile into ring stage it % kStages; a tail tile (rows past len_q) is
    // loaded through tail_load, zeroed past len_q, then released through full(s).
    auto load_step = [&](int it) {
        const int s = it % kStages;
        const Step st = step_of(p, qr, kvh, it);
        const bool tail = st.q0 + kKvM > seq.len_q;
        mbar_wait(sm.empty(s), ((it / kStages) & 1) ^ 1);
        const u32 bar = tail ? sm.tail_load() : sm.full(s);
        if (lane == 0) {
            mbar_arrive_expect_tx(bar, 2 * kKvQBytes);
            const int row = seq.q_start + st.q0;
#pragma unroll
            for (int c = 0; c < kSub; ++c) {
                tma_load_4d(sm.q_tile(s) + c * kKvQSub, &tm_q, bar, c * 64, row, st.h, bq);
                tma_load_4d(sm.do_tile(s) + c * kKvQSub, &tm_do, bar, c * 64, row, st.h, bq);
            }
        }
        if (tail) {
            mbar_wait(sm.tail_load(), tails & 1);
            ++tails;
            zero_rows(sm.q_tile(s), kKvM, seq.len_q - st.q0, 0, 32);
            zero_rows(sm.do_tile(s), kKvM, seq.len_q - st.q0, 0, 32);
            fence_proxy_async();
            __syncwarp();
            if (lane == 0) mbar_arrive(sm.full(s));
        }
    };
    if (lane == 0) {
        tma_prefetch_desc(&tm_q);
        tma_prefetch_desc(&tm_do);
        mbar_arrive_expect_tx(sm.kv_load(), 2 * kKvKBytes);
#pragma unroll
        for (int c = 0; c < kSub; ++c) {
            tma_load_4d(sm.k + c * kKvKSub, &tm_k, sm.kv_load(), c * 64, seq.k_start + k0, kvh, bq);
            tma_load_4d(sm.v + c * kKvKSub, &tm_v, sm.kv_load(), c * 64, seq.k_start + k0, kvh, bq);
        }
    }
    mbar_wait(sm.kv_load(), 0);
    if (k0 + kKvN > seq.len_k) {
        zero_rows(sm.k, kKvN, seq.len_k - k0, 0, 32);
        zero_rows(sm.v, kKvN, seq.len_k - k0, 0, 32);
        fence_proxy_async();
    }
    __syncwarp();
    if (lane == 0) mbar_arrive(sm.kv_full());
    for (int it = 0; it < n_tiles; ++it) load_step(it);
}

/// Whether warpgroup `cw` adds its dQ share of step `j` by a bulk reduction (see SA_DQ_PATH).
__device__ __forceinline__ bool dq_by_bulk(int cw, int j) {
    return SA_DQ_PATH == 0 || (SA_DQ_PATH == 2 && cw == 0) || (SA_DQ_PATH == 3 && ((j + cw) & 1) == 0);
}
/// The staging buffer of step `j`: the two alternate over the steps this warpgroup stages.
__device__ __forceinline__ int dq_stage_of(int j) { return SA_DQ_PATH == 3 ? (j >> 1) & 1 : j & 1; }

/// dQ of step `j` (atomic mode), one step late: waits until both consumer warpgroups have
/// written dS tile j % 2, multiplies this warpgroup's share of it by K (gemm_dq_half), frees
/// the tile and adds the result into the fp32 workspace. Also completes every earlier wgmma.
///
/// The addition (dq_by_bulk) is either one bulk reduction of the warpgroup's share
/// (`cp.reduce.async.bulk .add.f32` of 16 KiB, issued by thread 0 from a staging buffer in
/// shared memory) or 8 `red.global.add.v4` per thread; kDqPath mixes the two (config.cuh).
/// The two staging buffers alternate over the steps a warpgroup stages; before the
/// warpgroup's barrier of such a step, thread 0 waits until every earlier reduction has read
/// its buffer, so the buffer written at the next staged step (last read by the reduction of
/// the staged step before this one) is free once this barrier has been passed. Every staged
/// step reaches the barrier (also when nothing is added), which keeps that true.
__device__ __forceinline__ void dkdv_dq_step(const BwdParams& p, const DkdvSmem& sm, const BwdSeqInfo& seq,
                                             int b, int j, Step st, int cw, int t) {
    const int tile = j & 1;
    mbar_wait(sm.ds_ready(tile), (j >> 1) & 1);
    float dq[kDqCols / 2];
    wgmma_fence();
    gemm_dq_half<kDqSplitRows>(dq, sm, tile, cw);
    wgmma_commit();
    wgmma_wait<0>();
    reg_fence(dq);
    mbar_arrive(sm.ds_free(tile));
    // The 64-row workspace tile of these dQ rows; with 128-query steps the second half may lie
    // past the sequence (its dS rows are zero): nothing to add, and no tile to add it to.
    const int row0 = st.q0 + (kDqSplitRows ? 64 * cw : 0);
    const bool add = row0 < seq.len_q;
    // Thread t's first 4 floats in the workspace tile of these rows (thread 0: the warpgroup's
    // whole 16 KiB share starts there).
    auto dst_of = [&](int thread) {
        const long long ws_tile = static_cast<long long>(b) * p.accum_tiles_batch + seq.accum_tile + row0 / 64;
        return reinterpret_cast<float*>(p.dq_accum_ptr) +
               dq_accum_offset(ws_tile, st.h, p.heads, kDqSplitRows ? 0 : cw * kDqGroups, thread);
    };
    if (!dq_by_bulk(cw, j)) {  // per-thread reductions
        if (!add) return;
        float* dst = dst_of(t);
#pragma unroll
        for (int g = 0; g < kDqGroups; ++g)
            red_add_v4_f32(dst + g * 4 * 128, dq[4 * g], dq[4 * g + 1], dq[4 * g + 2], dq[4 * g + 3]);
        return;
    }
    const u32 stage = sm.dq_stage(cw, dq_stage_of(j));
    if (add) {
        // Fragment order, as in the workspace: group g of thread t at (g * 128 + t) * 16 bytes.
#pragma unroll
        for (int g = 0; g < kDqGroups; ++g)
            st_shared_v4_f32(stage + (g * 128 + t) * 16, dq[4 * g], dq[4 * g + 1], dq[4 * g + 2], dq[4 * g + 3]);
        fence_proxy_async();  // read next by the bulk reduction (async proxy)
    }
    if (t == 0) bulk_wait_read<0>();
    named_barrier_sync(kBarDqStage + cw, 128);
    if (add && t == 0) {
        bulk_reduce_add_f32(dst_of(0), stage, kDqStageBytes);
        bulk_commit();
    }
}

/// Consumer warpgroup `cw` of the dK/dV kernel: 64 keys (k0 + 64 cw ..) against every step's
/// 64 queries. Accumulates dK and dV (unscaled) and this thread's share of d_bias.
__device__ __forceinline__ void dkdv_consume(const BwdParams& p, const DkdvSmem& sm, const BwdSeqInfo& seq,
                                             const QueryRange& qr, int n_tiles, int kvh, int b, int k0, int cw,
                                             float (&dk)[kD / 2], float (&dv)[kD / 2], float& dbias) {
    const int t = threadIdx.x % 128;
    const int lane = t % 32;
    const int row_in_wg = (t / 32) * 16 + lane / 4;  // accumulator row of elements e with (e>>1)&1 == 0
    const int col_lane = 2 * (lane % 4);              // accumulator column offset of element 0
    const int key_wg0 = k0 + cw * 64;                 // first key (in the sequence) of this warpgroup
    const SigmoidCoef coef = sigmoid_coef(p.scale, seq.bias);

    mbar_wait(sm.kv_full(), 0);
    Step prev{0, 0};
    for (int it = 0; it < n_tiles; ++it) {
        const int s = it % kStages;
        const Step st = step_of(p, qr, kvh, it);
        const int q0 = st.q0;
        mbar_wait(sm.full(s), (it / kStages) & 1);

        // S^T = K Q^T and dP^T = V dO^T for this warpgroup's 64 keys x kKvM queries.
        float s_acc[kKvM / 2], dp_acc[kKvM / 2];
        wgmma_fence();
        gemm_nt<kKvM>(s_acc, sm.k, kKvKSub, cw * 64, sm.q_tile(s), kKvQSub);
        gemm_nt<kKvM>(dp_acc, sm.v, kKvKSub, cw * 64, sm.do_tile(s), kKvQSub);
        wgmma_commit();
        wgmma_wait<0>();
        reg_fence(s_acc);
        reg_fence(dp_acc);

        // P and dS in place. Element e: key row_in_wg + 8 * ((e >> 1) & 1) of the warpgroup,
        // query 8 * (e / 4) + col_lane + (e & 1) of the tile. Tiles inside every mask (uniform
        // per warpgroup) skip the per-element tests.
        const bool interior = key_wg0 + 64 <= seq.len_k && q0 + kKvM <= seq.len_q &&
                              (!p.causal || key_wg0 + 63 <= q0);
        if (interior) {
#pragma unroll
            for (int e = 0; e < kKvM / 2; ++e) {
                const float pv = sigmoid_from_qk(s_acc[e], coef);
                s_acc[e] = pv;
                dp_acc[e] *= pv * (1.0f - pv);
            }
        } else {
#pragma unroll
            for (int e = 0; e < kKvM / 2; ++e) {
                const int key = key_wg0 + row_in_wg + 8 * ((e >> 1) & 1);
                const int query = q0 + 8 * (e / 4) + col_lane + (e & 1);
                const bool keep = key < seq.len_k && query < seq.len_q && (!p.causal || key <= query);
                const float pv = sigmoid_from_qk(s_acc[e], coef);
                const float ds = dp_acc[e] * pv * (1.0f - pv);
                s_acc[e] = keep ? pv : 0.0f;
                dp_acc[e] = keep ? ds : 0.0f;
            }
        }
        if (p.dbias_ptr != 0) {  // the partial sum of d_bias only when it is wanted
#pragma unroll
            for (int e = 0; e < kKvM / 2; ++e) dbias += dp_acc[e];
        }
        u32 pf[kKvM / 16][4], dsf[kKvM / 16][4];
        pack_fragments<kKvM>(s_acc, pf);
        pack_fragments<kKvM>(dp_acc, dsf);

        // dV += P^T dO, dK += dS^T Q (A from registers; dO and Q read N-major).
        wgmma_fence();
        gemm_rs_nn<kD, kKvM>(dv, pf, sm.do_tile(s), kKvQSub);
        gemm_rs_nn<kD, kKvM>(dk, dsf, sm.q_tile(s), kKvQSub);
        wgmma_commit();

        if (p.atomic_dq) {
            // This warpgroup's half of dS tile it % 2 (queries x keys, K-major, swizzled like
            // a TMA-loaded tile). dsf[kk][m] is this lane's pair of the 8 keys x 8 queries
            // block (queries 16 kk + 8 (m >> 1), keys 8 (m & 1) of the warp's 16): stmatrix
            // .trans writes it as 8 query rows of 8 contiguous keys, one 16-byte chunk each.
            const int cur = it & 1;
            mbar_wait(sm.ds_free(cur), ((it >> 1) & 1) ^ 1);
            const u32 ds_half = sm.ds_tile(cur, cw);
            const int m = lane / 8;
#pragma unroll
            for (int kk = 0; kk < kKvM / 16; ++kk) {
                const int q_local = 16 * kk + 8 * (m >> 1) + lane % 8;
                const int key_local = (t / 32) * 16 + 8 * (m & 1);
                stmatrix_x4_trans(ds_half + sw128_offset(q_local, key_local), dsf[kk][0], dsf[kk][1], dsf[kk][2],
                                  dsf[kk][3]);
            }
            fence_proxy_async();
            mbar_arrive(sm.ds_ready(cur));
            // The previous step's dQ runs now, behind this step's dV and dK products, so
            // that neither warpgroup waits for the other's dS in the same step.
            if (it > 0) {
                dkdv_dq_step(p, sm, seq, b, it - 1, prev, cw, t);
            } else {
                wgmma_wait<0>();
            }
        } else {
            wgmma_wait<0>();
        }
        reg_fence(dv);
        reg_fence(dk);
        __syncwarp();
        if (lane == 0) mbar_arrive(sm.empty(s));  // this warp is done with stage s
        prev = st;
    }
    if (p.atomic_dq && n_tiles > 0) {
        dkdv_dq_step(p, sm, seq, b, n_tiles - 1, prev, cw, t);
        // Only the staging buffer must outlive the CTA: the reduction's writes complete before
        // the grid does (dq_convert reads them after it), so waiting for them here only delayed
        // the next CTA on this SM (H200, D=128 N=4k: +2-3%).
        if (t == 0 && SA_DQ_PATH != 1) bulk_wait_read<0>();
    }
}

}  // namespace bwd
}  // namespace sa

/// dK, dV (and, with p.atomic_dq, dQ into the fp32 workspace) for one block of kKvN keys of one
/// (sequence, kv head). Grid: (key_blocks, kv_heads, batch). Block: kDkdvThreads (a producer
/// warpgroup, of which one warp works, and two consumer warpgroups). Dynamic shared memory:
/// kDkdvSmemBytes.
extern "C" __global__ void __launch_bounds__(kDkdvThreads, 1)
    sigmoid_attn_bwd_dkdv(const __grid_constant__ TensorMap tm_q, const __grid_constant__ TensorMap tm_k,
                          const __grid_constant__ TensorMap tm_v, const __grid_constant__ TensorMap tm_do,
                          const __grid_constant__ BwdParams p) {
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const DkdvSmem sm((smem_addr(smem_raw) + 1023u) & ~1023u);

    const int n_block = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
    const BwdSeqInfo seq = load_seq(p, b);
    const int k0 = n_block * kKvN;
    const QueryRange qr = query_range(seq, k0, p.causal);
    const int n_tiles = k0 < seq.rows_k ? p.kv_group * (qr.m_end - qr.m_begin) : 0;  // query heads x tiles

    if (threadIdx.x == 0) {
        mbar_init(sm.kv_load(), 1);
        mbar_init(sm.kv_full(), 1);
        mbar_init(sm.tail_load(), 1);
        for (int s = 0; s < kStages; ++s) {
            mbar_init(sm.full(s), 1);
            mbar_init(sm.empty(s), 8);  // one arrival per consumer warp
        }
        for (int i = 0; i < 2; ++i) {
            mbar_init(sm.ds_ready(i), 256);  // one arrival per consumer thread
            mbar_init(sm.ds_free(i), 256);
        }
        fence_barrier_init();
    }
    __syncthreads();

    const int wg = threadIdx.x / 128;
    if (wg == 0) {
        regs_decrease<kProducerRegs>();
        if (threadIdx.x < 32 && n_tiles > 0) {
            dkdv_produce(tm_q, tm_k, tm_v, tm_do, p, sm, seq, qr, n_tiles, kvh, b, k0, threadIdx.x);
        }
        return;
    }
    regs_increase<kConsumerRegs>();
    const int cw = wg - 1, ct = threadIdx.x - 128;
    float dk[kD / 2], dv[kD / 2];
#pragma unroll
    for (int i = 0; i < kD / 2; ++i) {
        dk[i] = 0.0f;
        dv[i] = 0.0f;
    }
    float dbias = 0.0f;
    if (n_tiles > 0) dkdv_consume(p, sm, seq, qr, n_tiles, kvh, b, k0, cw, dk, dv, dbias);

    // Partial d_bias of this CTA, written by every CTA (zeros included) so that the reduction
    // reads a complete table.
    const float db = consumer_sum(dbias, ct);
    if (ct == 0) {
        float* partial = reinterpret_cast<float*>(p.dbias_partial_ptr);
        partial[(static_cast<long long>(b) * p.kv_heads + kvh) * p.key_blocks + n_block] = db;
    }

    if (k0 < seq.rows_k) {
        const int t = ct % 128;
        unsigned char* dk_base = reinterpret_cast<unsigned char*>(p.dk_ptr) +
                                 2 * (static_cast<long long>(b) * p.dk_stride_batch +
                                      static_cast<long long>(kvh) * p.dk_stride_head);
        unsigned char* dv_base = reinterpret_cast<unsigned char*>(p.dv_ptr) +
                                 2 * (static_cast<long long>(b) * p.dv_stride_batch +
                                      static_cast<long long>(kvh) * p.dv_stride_head);
        // Past consumer_sum's barrier every consumer is done with K, V and the Q/dO ring (and
        // every load into them has completed): each warpgroup stages dK and dV there.
        static_assert(4 * kStageBytes <= 2 * kKvKBytes + 2 * kStages * kKvQBytes, "staging fits");
        const u32 stage = sm.k + 2 * cw * kStageBytes;
        store_rows_staged(dk, p.scale, dk_base, p.dk_stride_seq, seq.k_start, k0 + cw * 64, seq.len_k,
                          seq.rows_k, t, stage, kBarDqStage + cw);
        store_rows_staged(dv, 1.0f, dv_base, p.dv_stride_seq, seq.k_start, k0 + cw * 64, seq.len_k, seq.rows_k,
                          t, stage + kStageBytes, kBarDqStage + cw);
    }
}

/// Deterministic dQ: one CTA per kQM query rows of one (sequence, query head), walking the key
/// tiles. Grid: (query blocks, heads, batch). Block: 256 threads. Dynamic shared memory:
/// kDqSmemBytes.
extern "C" __global__ void __launch_bounds__(kThreads, 1)
    sigmoid_attn_bwd_dq(const __grid_constant__ TensorMap tm_q, const __grid_constant__ TensorMap tm_k,
                        const __grid_constant__ TensorMap tm_v, const __grid_constant__ TensorMap tm_do,
                        const __grid_constant__ BwdParams p) {
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const u32 base = (smem_addr(smem_raw) + 1023u) & ~1023u;
    const u32 sq = base, sdo = sq + kQQBytes, sk = sdo + kQQBytes, sv = sk + kStages * kQKBytes;
    const u32 bars = sv + kStages * kQKBytes;  // [0]: Q and dO, [1 + s]: K and V of stage s

    const int m_block = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    const BwdSeqInfo seq = load_seq(p, b);
    const int m0 = m_block * kQM;
    if (m0 >= seq.rows_q) return;  // uniform, before any barrier
    const int kvh = h / p.kv_group;
    const int wg = threadIdx.x / 128;
    const int t = threadIdx.x % 128;
    const int lane = t % 32;
    const int row_in_wg = (t / 32) * 16 + lane / 4;
    const int col_lane = 2 * (lane % 4);
    const int query_wg0 = m0 + wg * 64;

    // Key tiles [0, n_end): up to len_k and, when causal, up to the last query's diagonal.
    int n_end = (seq.len_k + kQN - 1) / kQN;
    if (p.causal) n_end = min(n_end, (min(m0 + kQM, seq.len_q) - 1) / kQN + 1);
    const bool has_work = m0 < seq.len_q && n_end > 0;

    float dq[kD / 2];
#pragma unroll
    for (int i = 0; i < kD / 2; ++i) dq[i] = 0.0f;

    if (has_work) {
        const int bq = b * p.map_batch;
        auto load_kv = [&](int n) {
            const int s = n % kStages;
            const u32 bar = bars + 8 * (1 + s);
            const int row = seq.k_start + n * kQN;
            mbar_arrive_expect_tx(bar, 2 * kQKBytes);
#pragma unroll
            for (int c = 0; c < kSub; ++c) {
                tma_load_4d(sk + s * kQKBytes + c * kQKSub, &tm_k, bar, c * 64, row, kvh, bq);
                tma_load_4d(sv + s * kQKBytes + c * kQKSub, &tm_v, bar, c * 64, row, kvh, bq);
            }
        };
        if (threadIdx.x == 0) {
            for (int i = 0; i < 1 + kStages; ++i) mbar_init(bars + 8 * i, 1);
            fence_barrier_init();
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            tma_prefetch_desc(&tm_q);
            tma_prefetch_desc(&tm_k);
            tma_prefetch_desc(&tm_v);
            tma_prefetch_desc(&tm_do);
            mbar_arrive_expect_tx(bars, 2 * kQQBytes);
#pragma unroll
            for (int c = 0; c < kSub; ++c) {
                tma_load_4d(sq + c * kQQSub, &tm_q, bars, c * 64, seq.q_start + m0, h, bq);
                tma_load_4d(sdo + c * kQQSub, &tm_do, bars, c * 64, seq.q_start + m0, h, bq);
            }
            for (int n = 0; n < kStages && n < n_end; ++n) load_kv(n);
        }
        // Q and dO rows past len_q need no zeroing here: every product stays within its row,
        // and those rows of dQ are written as zeros.
        mbar_wait(bars, 0);

        const SigmoidCoef coef = sigmoid_coef(p.scale, seq.bias);
        for (int n = 0; n < n_end; ++n) {
            const int s = n % kStages;
            const u32 k_tile = sk + s * kQKBytes, v_tile = sv + s * kQKBytes;
            mbar_wait(bars + 8 * (1 + s), (n / kStages) & 1);
            // K rows past len_k meet dS = 0 in dS K, and 0 * NaN is NaN: zero them (and V's).
            if ((n + 1) * kQN > seq.len_k) {
                zero_rows(k_tile, kQN, seq.len_k - n * kQN);
                zero_rows(v_tile, kQN, seq.len_k - n * kQN);
                fence_proxy_async();
                named_barrier_sync(kBarAll, kThreads);
            }

            // S = Q K^T and dP = dO V^T for this warpgroup's 64 queries x kQN keys.
            float s_acc[kQN / 2], dp_acc[kQN / 2];
            wgmma_fence();
            gemm_nt<kQN>(s_acc, sq, kQQSub, wg * 64, k_tile, kQKSub);
            gemm_nt<kQN>(dp_acc, sdo, kQQSub, wg * 64, v_tile, kQKSub);
            wgmma_commit();
            wgmma_wait<0>();
            reg_fence(s_acc);
            reg_fence(dp_acc);

            // dS in place. Element e: query row_in_wg + 8 * ((e >> 1) & 1) of the warpgroup,
            // key 8 * (e / 4) + col_lane + (e & 1) of the tile.
            const bool interior = (n + 1) * kQN <= seq.len_k && query_wg0 + 64 <= seq.len_q &&
                                  (!p.causal || (n + 1) * kQN - 1 <= query_wg0);
            if (interior) {
#pragma unroll
                for (int e = 0; e < kQN / 2; ++e) {
                    const float pv = sigmoid_from_qk(s_acc[e], coef);
                    dp_acc[e] *= pv * (1.0f - pv);
                }
            } else {
#pragma unroll
                for (int e = 0; e < kQN / 2; ++e) {
                    const int query = query_wg0 + row_in_wg + 8 * ((e >> 1) & 1);
                    const int key = n * kQN + 8 * (e / 4) + col_lane + (e & 1);
                    const bool keep = key < seq.len_k && query < seq.len_q && (!p.causal || key <= query);
                    const float pv = sigmoid_from_qk(s_acc[e], coef);
                    const float ds = dp_acc[e] * pv * (1.0f - pv);
                    dp_acc[e] = keep ? ds : 0.0f;
                }
            }
            u32 dsf[kQN / 16][4];
            pack_fragments<kQN>(dp_acc, dsf);

            // dQ += dS K (K read N-major).
            wgmma_fence();
            gemm_rs_nn<kD, kQN>(dq, dsf, k_tile, kQKSub);
            wgmma_commit();
            wgmma_wait<0>();
            reg_fence(dq);

            named_barrier_sync(kBarAll, kThreads);
            if (threadIdx.x == 0 && n + kStages < n_end) load_kv(n + kStages);
        }
    }

    unsigned char* dq_base = reinterpret_cast<unsigned char*>(p.dq_ptr) +
                             2 * (static_cast<long long>(b) * p.dq_stride_batch +
                                  static_cast<long long>(h) * p.dq_stride_head);
    store_rows(dq, p.scale, dq_base, p.dq_stride_seq, seq.q_start, query_wg0, seq.len_q, seq.rows_q,
               row_in_wg, lane);
}

/// Atomic mode: dQ = scale * dq_accum in the storage dtype (rows past len_q as zeros). One
/// CTA per 64-row workspace tile: grid (ceil(max rows_q / 64), heads, batch), 256 threads.
/// The tile goes through shared memory as rows of dQ, so that global stores are whole 16-byte
/// pieces of rows (straight from the fragment order, a warp's 4-byte stores covered 8 rows of
/// 16 bytes each; H200, whole backward, one A/B call: D=64 N=1k 349-350 -> 366-368 TFLOPS,
/// the other standard rows within +0-1%).
extern "C" __global__ void __launch_bounds__(kThreads)
    sigmoid_attn_bwd_dq_convert(const __grid_constant__ BwdParams p) {
    // Row pitch padded by 16 bytes: the 8 rows a warp writes at once start 4 banks apart.
    constexpr int kPitch = 2 * kD + 16;
    __shared__ __align__(16) unsigned char rows[64 * kPitch];
    const int h = blockIdx.y, b = blockIdx.z;
    const BwdSeqInfo seq = load_seq(p, b);
    const int i0 = blockIdx.x * 64;
    if (i0 >= seq.rows_q) return;
    const long long tile = static_cast<long long>(b) * p.accum_tiles_batch + seq.accum_tile + blockIdx.x;
    const float4* src =
        reinterpret_cast<const float4*>(reinterpret_cast<const float*>(p.dq_accum_ptr) + dq_accum_offset(tile, h, p.heads, 0, 0));
    // Every load of the thread is issued before its first store (the compiler may not move a
    // load above a store through another pointer), so that kPer loads are in flight instead of
    // one (H200, ncu: D=128 N=4k 125 -> 114 us, N=1k 116 -> 97 us).
    constexpr int kPer = kDqTileFloats / 4 / kThreads;
    static_assert(kDqTileFloats % (4 * kThreads) == 0, "whole float4s per thread");
    float4 vs[kPer];
#pragma unroll
    for (int k = 0; k < kPer; ++k) vs[k] = __ldg(src + threadIdx.x + k * kThreads);
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
        const int f = threadIdx.x + k * kThreads;
        const float4 v = vs[k];
        // Inverse of dq_accum_offset: float4 f is group G of thread t, i.e. (row, col..col+1)
        // and (row + 8, col..col+1) of the tile.
        const int g = f / 128, t = f % 128;
        const int row = (t / 32) * 16 + (t % 32) / 4;
        const int col = 8 * g + 2 * (t % 4);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int r = row + 8 * half;
            const float lo = half ? v.z : v.x, hi = half ? v.w : v.y;
            const u32 bits = i0 + r < seq.len_q ? pack2(p.scale * lo, p.scale * hi) : 0u;
            *reinterpret_cast<u32*>(rows + r * kPitch + 2 * col) = bits;
        }
    }
    __syncthreads();

    unsigned char* dq_base = reinterpret_cast<unsigned char*>(p.dq_ptr) +
                             2 * (static_cast<long long>(b) * p.dq_stride_batch +
                                  static_cast<long long>(h) * p.dq_stride_head +
                                  static_cast<long long>(seq.q_start + i0) * p.dq_stride_seq);
    // dQ is the caller's: 16-byte stores where its rows are 16-byte aligned, else 4-byte ones.
    const bool vec = ((reinterpret_cast<unsigned long long>(dq_base) | (2ull * p.dq_stride_seq)) & 15) == 0;
    constexpr int kPieces = kD / 8;  // 16-byte pieces per row
    const int n_rows = min(64, seq.rows_q - i0);
    for (int c = threadIdx.x; c < n_rows * kPieces; c += kThreads) {
        const int r = c / kPieces, k = c % kPieces;
        const uint4 v = *reinterpret_cast<const uint4*>(rows + r * kPitch + 16 * k);
        unsigned char* dst = dq_base + 2 * (static_cast<long long>(r) * p.dq_stride_seq + 8 * k);
        if (vec) {
            st_global_v4_b32(dst, v);
        } else {
            st_global_b32(dst, v.x);
            st_global_b32(dst + 4, v.y);
            st_global_b32(dst + 8, v.z);
            st_global_b32(dst + 12, v.w);
        }
    }
}

/// d_bias[b] = sum over kv heads and key blocks of the partials, in a fixed order.
/// Grid: (batch). Block: 32 threads.
extern "C" __global__ void __launch_bounds__(32) sigmoid_attn_bwd_dbias(const __grid_constant__ BwdParams p) {
    const int b = blockIdx.x;
    const int n = p.kv_heads * p.key_blocks;
    const float* partial = reinterpret_cast<const float*>(p.dbias_partial_ptr) + static_cast<long long>(b) * n;
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += 32) s += partial[i];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (threadIdx.x == 0) reinterpret_cast<float*>(p.dbias_ptr)[b] = s;
}
