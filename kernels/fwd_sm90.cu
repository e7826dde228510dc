// Sigmoid attention forward for Hopper (sm_90a).
//
//   O[i, :] = sum_j P[i, j] V[j, :],  P[i, j] = sigmoid(scale * Q[i] . K[j] + bias_b)
//   with P = 0 for keys j >= len_k[b] and, when causal, j > i; rows i >= len_q[b] of O are 0.
//
// CTA c computes the units c, c + gridDim.x, ... of (query tile, head, batch element) tiles (one
// tile per unit; causal: a pair of a long and a short one; plans whose units differ in work:
// positions in a work order, heaviest first, through the entry sigmoid_attn_fwd_ordered;
// for_each_tile), one kBlockM x D tile at a time; the ring positions, barrier phases and turns
// carry over from one tile to the next, so that the next tile's Q and K/V loads overlap the
// current tile's last products and O stores. The grid is persistent: at most one CTA per SM
// (ForwardLaunch::launch_grid in src/cuda/launch.rs).
// Warpgroup 0 is the producer: one thread issues TMA loads of the Q tile and of a kStages-deep
// ring of K/V tiles (128-byte swizzle, completing on mbarriers). Warpgroups 1..kConsumers each own
// 64 query rows: S = Q K^T by wgmma with both operands in shared memory, P = sigmoid(S) masked in
// registers, then O += P V by wgmma with P straight from registers. Sigmoid needs no row maximum,
// no rescaling of O and no final normalisation, so O only ever accumulates.
//
// Lengths: query tiles past a sequence's rows are skipped, tiles past len_q only write zeros;
// K/V tiles past len_k (and, when causal, above the diagonal) are never loaded; the one tail tile
// is masked in registers and its V rows past len_k are zeroed in shared memory (padding may hold
// anything, NaN included). Packed input uses per-sequence start rows (SeqInfo).
//
// Variant macros (set by build_cubins.py / src/cuda/nvrtc.rs):
//   SA_HEAD_DIM = 64 | 128, SA_F16 (else bf16), SA_ACCURATE (else fast tanh sigmoid).
// Experiment macros (never in shipped cubins): SA_NO_V_ZERO, and SA_BLOCK_M + SA_BLOCK_N +
// SA_STAGES (tile override, config.cuh).
#include "ptx.cuh"
#include "params.cuh"
#include "config.cuh"
#include "sigmoid.cuh"

#ifndef SA_HEAD_DIM
#define SA_HEAD_DIM 128
#endif

namespace sa {

constexpr int kD = SA_HEAD_DIM;
typedef SA_CONFIG<kD> Cfg;
typedef FwdShape<kD> Shape;
constexpr int kBlockM = Cfg::kBlockM;
constexpr int kBlockN = Cfg::kBlockN;
constexpr int kStages = Cfg::kStages;
// The accurate sigmoid (two MUFU and more temporaries per element) spills with two copies of the
// element loop on the persistent grid (40 bytes at D = 128, 88 at D = 64), so it keeps one.
#if defined(SA_ACCURATE)
constexpr bool kSplitMaskLoops = false;
#else
constexpr bool kSplitMaskLoops = true;
#endif
#if defined(SA_NO_V_ZERO)
constexpr bool kZeroVTail = false;  // experiment: padding rows of V must then be finite
#else
constexpr bool kZeroVTail = true;
#endif
// Named barriers: 0 is __syncthreads, 1..kConsumers the turns of the consumer warpgroups on
// the tensor cores, then this one.
constexpr u32 kBarrierVTail = 1 + Shape::kConsumers;
static_assert(kD == 64 || kD == 128, "head dims with a tuned config: 64, 128");
static_assert(kBlockN == 64 || kBlockN == 128 || kBlockN == 176, "S wgmma shapes: m64n{64,128,176}");

// Register budgets after the warpgroups specialise (setmaxnreg); the sum over the CTA stays
// within the 64K registers of an SM.
constexpr int kProducerRegs = Shape::kConsumers == 2 ? 24 : 32;
constexpr int kConsumerRegs = Shape::kConsumers == 2 ? 240 : 160;
static_assert(128 * kProducerRegs + 128 * Shape::kConsumers * kConsumerRegs <= 65536,
              "register budget of one SM");

/// The sequence of batch element b: from the per-sequence table, or the uniform description.
__device__ __forceinline__ SeqInfo load_seq(const FwdParams& p, int b) {
    if (p.seq_ptr == 0) return p.uniform;
    return reinterpret_cast<const SeqInfo*>(p.seq_ptr)[b];
}

/// K/V tiles visited by query tile m_block: [0, n_end). Tiles past len_k and, when causal,
/// tiles entirely above the diagonal are skipped. `has_work` is false for a tile whose rows
/// are all padding, or when no key is visible.
struct TileRange {
    int n_end;
    bool has_work;
};

__device__ __forceinline__ TileRange kv_tile_range(const SeqInfo& s, int m_block, int causal) {
    const int q0 = m_block * kBlockM;
    int n_end = (s.len_k + kBlockN - 1) / kBlockN;
    if (causal) {
        const int q_last = min(q0 + kBlockM, s.len_q) - 1;
        n_end = min(n_end, q_last / kBlockN + 1);
    }
    TileRange r;
    r.n_end = n_end;
    r.has_work = q0 < s.len_q && n_end > 0;
    return r;
}

/// Tile t of the list. Query tiles of one (head, batch element) are adjacent, so that the CTAs
/// running at the same time share K/V tiles in L2. Causal tiles alternate between the longest
/// and the shortest left (query tiles m_tiles - 1, 0, m_tiles - 2, 1, ...): every pair of
/// tiles t = 2u, 2u + 1 then has about the same number of keys, and a CTA walks pairs.
struct TileCoord {
    int m_block, h, b;
};

__device__ __forceinline__ TileCoord tile_coord(const FwdParams& p, int t) {
    const int j = t % p.m_tiles, hb = t / p.m_tiles;
    const int m = !p.causal ? j : (j & 1) ? j >> 1 : p.m_tiles - 1 - (j >> 1);
    return TileCoord{m, hb % p.heads, hb / p.heads};
}

/// Calls f(tile, sequence, key range) for tile t if it has rows (both walks below).
template <typename F>
__device__ __forceinline__ void visit_tile(const FwdParams& p, int t, F&& f) {
    const TileCoord tc = tile_coord(p, t);
    const SeqInfo seq = load_seq(p, tc.b);
    if (tc.m_block * kBlockM >= seq.rows) return;
    f(tc, seq, kv_tile_range(seq, tc.m_block, p.causal));
}

/// The units blockIdx.x, blockIdx.x + gridDim.x, ... in their natural order (see for_each_tile).
template <typename F>
__device__ __forceinline__ void walk_units(const FwdParams& p, F&& f) {
    const int n_tiles = p.m_tiles * p.heads * p.batch;
    const int group = p.causal ? 2 : 1;
    // One induction variable (a nested loop over the unit's tiles spilled at D = 64): after the
    // last tile of a unit, t jumps to the first of the CTA's next unit.
    const int jump = (static_cast<int>(gridDim.x) - 1) * group;
    for (int t = blockIdx.x * group; t < n_tiles; t += (t + 1) % group == 0 ? 1 + jump : 1) {
        visit_tile(p, t, f);
    }
}

/// The slots blockIdx.x, blockIdx.x + gridDim.x, ... of the plan's work order: p.order_units
/// unit indices after the sequence table at seq_ptr (without one, the units in their natural
/// order; written that way, not as the order alone, because that form spilled 40 bytes at
/// D = 64 where this one does not).
template <typename F>
__device__ __forceinline__ void walk_order(const FwdParams& p, F&& f) {
    const int n_tiles = p.m_tiles * p.heads * p.batch;
    const int shift = p.causal ? 1 : 0;  // tiles per unit: 1 << shift
    const int group = 1 << shift;
    const unsigned* order = reinterpret_cast<const unsigned*>(p.seq_ptr + p.batch * sizeof(SeqInfo));
    const int n_slots = p.order_units ? p.order_units * group : n_tiles;
    // One induction variable, as in walk_units: slot s is tile s % group of the unit in
    // position s / group; after the last tile of a unit, s jumps to the CTA's next unit.
    const int jump = (static_cast<int>(gridDim.x) - 1) * group;
    for (int s = blockIdx.x * group; s < n_slots; s += ((s + 1) & (group - 1)) == 0 ? 1 + jump : 1) {
        const int t = p.order_units ? (static_cast<int>(order[s >> shift]) << shift) + (s & (group - 1)) : s;
        if (t >= n_tiles) continue;  // an empty slot, or the second tile of an odd count's last pair
        visit_tile(p, t, f);
    }
}

/// Calls f(tile, sequence, key range) for this CTA's tiles with rows: units of one tile each,
/// or of two when causal (a long and a short one). Plans whose units differ in work (padding,
/// varlen) launch the kOrdered entry with a work order: the host deals the units out so that
/// every CTA gets about the same work and lays each CTA's list, heaviest first, into the slots
/// c, c + gridDim.x, ... (src/cuda/schedule.rs; a slot without a unit holds an index past the
/// last, whose tiles are skipped); even plans walk units in their natural order. Two
/// entries, not one walk that reads an order when there is one: at D = 128 that walk cost even
/// plans 2-3% (H200), and an instance of both walks in one kernel spilled at D = 64.
template <bool kOrdered, typename F>
__device__ __forceinline__ void for_each_tile(const FwdParams& p, F&& f) {
    if constexpr (kOrdered)
        walk_order(p, f);
    else
        walk_units(p, f);
}

/// Where a CTA stands in its barrier phases, carried from one tile to the next: `kv` counts the
/// K/V tiles streamed so far (ring slot kv % kStages, phase (kv / kStages) & 1), `q` the tiles
/// with work (Q buffer q % 2, phase (q / 2) & 1 of its q_full and q_empty).
static_assert(Shape::kQBuffers == 2, "RingPos::q picks Q buffer q & 1, phase (q >> 1) & 1");
struct RingPos {
    int kv = 0;
    int q = 0;
};

/// Shared memory: Q tile, K ring, V ring, then the barriers. Every tile is a sequence of
/// 64-column sub-tiles (rows of 128 bytes, 128-byte swizzle, 1024-byte aligned).
struct Smem {
    u32 q, k, v, bars;
    __device__ __forceinline__ explicit Smem(u32 base) {
        q = base;
        k = q + Shape::kQBuffers * Shape::kQBytes;
        v = k + kStages * Shape::kKVBytes;
        bars = v + kStages * Shape::kKVBytes;
    }
    // Barriers: q_full per Q buffer, then k_full, v_full, k_empty, v_empty per stage, then
    // q_empty per Q buffer.
    static constexpr int kQB = Shape::kQBuffers;
    __device__ __forceinline__ u32 q_tile(int i) const { return q + i * Shape::kQBytes; }
    __device__ __forceinline__ u32 q_full(int i) const { return bars + 8 * i; }
    __device__ __forceinline__ u32 k_full(int s) const { return bars + 8 * (kQB + s); }
    __device__ __forceinline__ u32 v_full(int s) const { return bars + 8 * (kQB + kStages + s); }
    __device__ __forceinline__ u32 k_empty(int s) const { return bars + 8 * (kQB + 2 * kStages + s); }
    __device__ __forceinline__ u32 v_empty(int s) const { return bars + 8 * (kQB + 3 * kStages + s); }
    /// Q buffer i may be overwritten: every consumer warp has its tile's last S product.
    __device__ __forceinline__ u32 q_empty(int i) const { return bars + 8 * (kQB + 4 * kStages + i); }
    __device__ __forceinline__ u32 k_tile(int s) const { return k + s * Shape::kKVBytes; }
    __device__ __forceinline__ u32 v_tile(int s) const { return v + s * Shape::kKVBytes; }
};

/// Producer: one thread streams a tile's Q once and its K/V tiles into the ring.
__device__ __forceinline__ void produce(const TensorMap& tm_q, const TensorMap& tm_k,
                                        const TensorMap& tm_v, const FwdParams& p, const Smem& sm,
                                        const SeqInfo& seq, TileRange tr, TileCoord tc, RingPos& pos) {
    const int kvh = tc.h / p.kv_group;
    const int bq = tc.b * p.map_batch;
    // Q buffer qb is free once every consumer warp has the last S product of the tile before
    // the previous one: this tile's Q loads while the previous tile still runs.
    const int qb = pos.q & 1;
    mbar_wait(sm.q_empty(qb), ((pos.q >> 1) & 1) ^ 1);
    mbar_arrive_expect_tx(sm.q_full(qb), Shape::kQBytes);
#pragma unroll
    for (int c = 0; c < Shape::kSub; ++c)
        tma_load_4d(sm.q_tile(qb) + c * Shape::kQSubBytes, &tm_q, sm.q_full(qb), c * 64,
                    seq.q_start + tc.m_block * kBlockM, tc.h, bq);
    ++pos.q;

    for (int n = 0; n < tr.n_end; ++n, ++pos.kv) {
        const int s = pos.kv % kStages;
        const u32 phase = (pos.kv / kStages) & 1;
        const int row = seq.k_start + n * kBlockN;
        // K and V of a stage are released separately: K once every consumer has its S tile,
        // V once the P V product is done, so the next K load starts a GEMM earlier.
        mbar_wait(sm.k_empty(s), phase ^ 1);
        mbar_arrive_expect_tx(sm.k_full(s), Shape::kKVBytes);
#pragma unroll
        for (int c = 0; c < Shape::kSub; ++c)
            tma_load_4d(sm.k_tile(s) + c * Shape::kKVSubBytes, &tm_k, sm.k_full(s), c * 64, row, kvh, bq);
        mbar_wait(sm.v_empty(s), phase ^ 1);
        mbar_arrive_expect_tx(sm.v_full(s), Shape::kKVBytes);
#pragma unroll
        for (int c = 0; c < Shape::kSub; ++c)
            tma_load_4d(sm.v_tile(s) + c * Shape::kKVSubBytes, &tm_v, sm.v_full(s), c * 64, row, kvh, bq);
    }
}

/// S = Q K^T for this warpgroup's 64 rows: kD/16 wgmma steps of k16, both operands K-major.
template <int N>
__device__ __forceinline__ void gemm_qk(float (&s_acc)[N / 2], const Smem& sm, int qb, int stage, int cw) {
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
        const int c = kk / 4, w = kk % 4;
        const u64 da = wgmma_desc_sw128(sm.q_tile(qb) + c * Shape::kQSubBytes + cw * 64 * 128 + w * 32, 16, 1024);
        const u64 db = wgmma_desc_sw128(sm.k_tile(stage) + c * Shape::kKVSubBytes + w * 32, 16, 1024);
        if constexpr (N == 128) {
            wgmma_ss_n128<0>(s_acc, da, db, kk > 0 ? 1 : 0);
        } else if constexpr (N == 176) {
            wgmma_ss_n176<0>(s_acc, da, db, kk > 0 ? 1 : 0);
        } else {
            wgmma_ss_n64<0>(s_acc, da, db, kk > 0 ? 1 : 0);
        }
    }
    wgmma_commit();
}

/// O += P V: kBlockN/16 wgmma steps, P from registers, V read N-major (the head dim contiguous);
/// the two 64-column halves of V (D = 128) are kKVSubBytes apart (leading byte offset).
template <int D>
__device__ __forceinline__ void gemm_pv(float (&o)[D / 2], const u32 (&pf)[kBlockN / 16][4],
                                        const Smem& sm, int stage) {
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
        const u64 db = wgmma_desc_sw128(sm.v_tile(stage) + kk * 16 * 128, Shape::kKVSubBytes, 1024);
        if constexpr (D == 128) {
            wgmma_rs_n128<1>(o, pf[kk], db, 1);
        } else {
            wgmma_rs_n64<1>(o, pf[kk], db, 1);
        }
    }
    wgmma_commit();
}

/// P = sigmoid(scale * S + bias) in place, with the masks applied.
/// Accumulator element 4j + r of a thread sits at row (lane/4 + 8*(r/2)) and column
/// (8j + 2*(lane%4) + r%2) of the warp's 16 x kBlockN slice.
__device__ __forceinline__ void sigmoid_mask(float (&s_acc)[kBlockN / 2], SigmoidCoef coef, bool masked,
                                             int row0, int col0, int len_k, int causal) {
    // Fast mode: one loop per case. With the test inside one element loop the compiler
    // if-converts it, and every tile issues the mask arithmetic predicated off (40% of the D = 64
    // forward's instructions, which is issue-bound; 511 -> 551 TFLOPS at N = 16k, sixth session).
    if (kSplitMaskLoops && !masked) {
#pragma unroll
        for (int e = 0; e < kBlockN / 2; ++e) s_acc[e] = sigmoid_from_qk(s_acc[e], coef);
        return;
    }
#pragma unroll
    for (int e = 0; e < kBlockN / 2; ++e) {
        float v = sigmoid_from_qk(s_acc[e], coef);
        if (masked) {
            const int col = col0 + 8 * (e / 4) + (e & 1);
            const int row = row0 + 8 * ((e >> 1) & 1);
            const bool keep = col < len_k && (!causal || col <= row);
            v = keep ? v : 0.0f;
        }
        s_acc[e] = v;
    }
}

/// Zeroes the V rows of a tail tile past the sequence's last key (rows >= `valid`), so that
/// NaN or Inf in padding memory cannot reach O through 0 * NaN. All consumer threads share
/// the work and meet at a named barrier before any of them reads the tile.
__device__ __forceinline__ void zero_v_tail(const Smem& sm, int stage, int valid) {
    constexpr int kConsumerThreads = 128 * Shape::kConsumers;
    const int t = threadIdx.x - 128;  // consumer threads are 128 .. 128 * (1 + kConsumers)
    const int rows = kBlockN - valid;
    const int chunks = rows * 8;  // 16-byte chunks per sub-tile (a whole row is zeroed, so the
                                  // swizzle that permutes chunks within a row does not matter)
    for (int c = t; c < chunks * Shape::kSub; c += kConsumerThreads) {
        const int sub = c / chunks, rem = c % chunks;
        const u32 addr = sm.v_tile(stage) + sub * Shape::kKVSubBytes + (valid + rem / 8) * 128 + (rem % 8) * 16;
        st_shared_zero16(addr);
    }
    fence_proxy_async();  // the zeros are read next by wgmma (async proxy)
    named_barrier_sync(kBarrierVTail, kConsumerThreads);
}

/// Writes this thread's rows of O (predicated: rows < seq.rows; zeros for rows >= len_q).
__device__ __forceinline__ void store_o(const float (&o)[kD / 2], const FwdParams& p, const SeqInfo& seq,
                                        int row0, int lane, int h, int b) {
    unsigned char* base = reinterpret_cast<unsigned char*>(p.o_ptr) +
                          2 * (static_cast<long long>(b) * p.o_stride_batch +
                               static_cast<long long>(h) * p.o_stride_head);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int i = row0 + 8 * half;
        if (i < seq.rows) {
            const bool zero = i >= seq.len_q;
            unsigned char* row = base + 2 * (static_cast<long long>(seq.q_start + i) * p.o_stride_seq);
#pragma unroll
            for (int j = 0; j < kD / 8; ++j) {
                const int col = 8 * j + 2 * (lane % 4);
                const u32 v = zero ? 0u : pack2(o[4 * j + 2 * half], o[4 * j + 2 * half + 1]);
                st_global_b32(row + 2 * col, v);
            }
        }
    }
}

/// Consumer warpgroup cw (0-based): 64 query rows of one tile through its whole K/V range.
__device__ __forceinline__ void consume(const FwdParams& p, const Smem& sm, const SeqInfo& seq,
                                        TileRange tr, TileCoord tc, int cw, RingPos& pos) {
    const int m_block = tc.m_block;
    const int t = threadIdx.x % 128;
    const int lane = t % 32;
    const int warp = t / 32;
    // Row (within the sequence) of this thread's accumulator elements with r/2 == 0.
    const int row0 = m_block * kBlockM + cw * 64 + warp * 16 + lane / 4;
    const int wg_first_row = m_block * kBlockM + cw * 64;

    float o[kD / 2];
#pragma unroll
    for (int i = 0; i < kD / 2; ++i) o[i] = 0.0f;

    if (tr.has_work) {
        const SigmoidCoef coef = sigmoid_coef(p.scale, seq.bias);
        const int col_lane = 2 * (lane % 4);
        // Masking is needed on the tail tile and on tiles crossing this warpgroup's diagonal.
        auto needs_mask = [&](int n) {
            const int key_end = (n + 1) * kBlockN;
            return key_end > seq.len_k || (p.causal && key_end - 1 > wg_first_row);
        };
        float s_acc[kBlockN / 2];
        u32 pf[kBlockN / 16][4];
        const int qb = pos.q & 1;
        mbar_wait(sm.q_full(qb), (pos.q >> 1) & 1);
        // Schedule: S(n+1) = Q K(n+1)^T and O += P(n) V(n) are issued together, then the
        // sigmoid of S(n+1) runs while P(n) V(n) is still on the tensor cores (nothing else waits
        // for O: sigmoid needs no rescaling). The consumer warpgroups take turns to issue their
        // pairs (named barriers 1..C; the first S and the last P V are turns of their own), so
        // that one warpgroup's pair runs whole on the tensor cores while the others compute
        // their sigmoid; without turns the pairs of all warpgroups interleave, finish together
        // and leave the tensor cores idle during everyone's sigmoid.
        // The turns run on across tiles (see the kernel entry for the first and the last).
        const u32 my_turn = 1 + cw, next_turn = 1 + (cw + 1) % Shape::kConsumers;
        auto turn_begin = [&]() { named_barrier_sync(my_turn, 128 * 2); };
        auto turn_end = [&]() { named_barrier_arrive(next_turn, 128 * 2); };
        // P(n) from S(n): release K(n)'s slot (and Q after the tile's last S), sigmoid and
        // masks in place.
        auto sigmoid_of_s = [&](int n, int stage) {
            reg_fence(s_acc);
            if (lane == 0) mbar_arrive(sm.k_empty(stage));
            if (lane == 0 && n == tr.n_end - 1) mbar_arrive(sm.q_empty(qb));
            sigmoid_mask(s_acc, coef, needs_mask(n), row0, n * kBlockN + col_lane, seq.len_k, p.causal);
        };
        auto slot = [&](int n) { return (pos.kv + n) % kStages; };
        auto phase = [&](int n) { return static_cast<u32>(((pos.kv + n) / kStages) & 1); };

        mbar_wait(sm.k_full(slot(0)), phase(0));
        turn_begin();
        gemm_qk<kBlockN>(s_acc, sm, qb, slot(0), cw);
        turn_end();
        wgmma_wait<0>();
        sigmoid_of_s(0, slot(0));
        pack_fragments<kBlockN>(s_acc, pf);
        // Key tiles before the last never need the V tail zeroed: (n + 1) * kBlockN < len_k.
        for (int n = 0; n + 1 < tr.n_end; ++n) {
            const int s = slot(n), s1 = slot(n + 1);
            mbar_wait(sm.k_full(s1), phase(n + 1));
            mbar_wait(sm.v_full(s), phase(n));
            turn_begin();
            gemm_qk<kBlockN>(s_acc, sm, qb, s1, cw);
            gemm_pv<kD>(o, pf, sm, s);
            turn_end();
            wgmma_wait<1>();  // S(n+1) is done; P(n) V(n) may still run
            sigmoid_of_s(n + 1, s1);
            wgmma_wait<0>();  // the P registers are free again
            reg_fence(o);
            if (lane == 0) mbar_arrive(sm.v_empty(s));
            pack_fragments<kBlockN>(s_acc, pf);
        }
        const int n = tr.n_end - 1, s = slot(n);
        mbar_wait(sm.v_full(s), phase(n));
        if (kZeroVTail && (n + 1) * kBlockN > seq.len_k) zero_v_tail(sm, s, seq.len_k - n * kBlockN);
        turn_begin();
        gemm_pv<kD>(o, pf, sm, s);
        turn_end();
        wgmma_wait<0>();
        reg_fence(o);
        if (lane == 0) mbar_arrive(sm.v_empty(s));
        pos.kv += tr.n_end;
        ++pos.q;
    }
    store_o(o, p, seq, row0, lane, tc.h, tc.b);
}

}  // namespace sa

using namespace sa;

/// One CTA of either entry below (for_each_tile<kOrdered>).
template <bool kOrdered>
__device__ __forceinline__ void forward_cta(const TensorMap& tm_q, const TensorMap& tm_k, const TensorMap& tm_v,
                                            const FwdParams& p) {
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const Smem sm((smem_addr(smem_raw) + 1023u) & ~1023u);

    if (threadIdx.x == 0) {
        for (int i = 0; i < Shape::kQBuffers; ++i) {
            mbar_init(sm.q_full(i), 1);
            mbar_init(sm.q_empty(i), 4 * Shape::kConsumers);  // one arrival per consumer warp
        }
        for (int s = 0; s < kStages; ++s) {
            mbar_init(sm.k_full(s), 1);
            mbar_init(sm.v_full(s), 1);
            mbar_init(sm.k_empty(s), 4 * Shape::kConsumers);
            mbar_init(sm.v_empty(s), 4 * Shape::kConsumers);
        }
        fence_barrier_init();
    }
    __syncthreads();

    // Producer and consumers walk the same tiles and skip the same ones (rows past the sequence:
    // nothing to write; no visible key: zeros without loads), so their phases stay in step.
    RingPos pos;
    const int wg = threadIdx.x / 128;
    if (wg == 0) {
        regs_decrease<kProducerRegs>();
        if (threadIdx.x != 0) return;
        tma_prefetch_desc(&tm_q);
        tma_prefetch_desc(&tm_k);
        tma_prefetch_desc(&tm_v);
        for_each_tile<kOrdered>(p, [&](TileCoord tc, const SeqInfo& seq, TileRange tr) {
            if (tr.has_work) produce(tm_q, tm_k, tm_v, p, sm, seq, tr, tc, pos);
        });
        return;
    }
    regs_increase<kConsumerRegs>();
    const int cw = wg - 1;
    // Turns: the last warpgroup opens the first one; every turn hands over to the next
    // warpgroup, and warpgroup 0 takes the hand-over left after the CTA's last turn, so that
    // every named-barrier phase completes.
    if (cw == Shape::kConsumers - 1) named_barrier_arrive(1, 128 * 2);
    for_each_tile<kOrdered>(p, [&](TileCoord tc, const SeqInfo& seq, TileRange tr) {
        consume(p, sm, seq, tr, tc, cw, pos);
    });
    if (cw == 0) named_barrier_sync(1, 128 * 2);
}

/// Grid: (CTAs, 1, 1), at most one per SM (src/cuda/launch.rs, ForwardLaunch::launch_grid).
/// Block: Shape::kThreads. Dynamic shared memory: Shape::kSmemBytes.
/// Plans whose units all have the same work: units c, c + gridDim.x, ... in their natural order
/// (FwdParams::m_tiles x heads x batch tiles, in pairs when causal).
extern "C" __global__ void __launch_bounds__(Shape::kThreads, 1)
    sigmoid_attn_fwd(const __grid_constant__ TensorMap tm_q, const __grid_constant__ TensorMap tm_k,
                     const __grid_constant__ TensorMap tm_v, const __grid_constant__ FwdParams p) {
    forward_cta<false>(tm_q, tm_k, tm_v, p);
}

/// The same for plans with a work order (FwdParams::order_units > 0): positions c, c + gridDim.x,
/// ... of the order.
extern "C" __global__ void __launch_bounds__(Shape::kThreads, 1)
    sigmoid_attn_fwd_ordered(const __grid_constant__ TensorMap tm_q, const __grid_constant__ TensorMap tm_k,
                             const __grid_constant__ TensorMap tm_v, const __grid_constant__ FwdParams p) {
    forward_cta<true>(tm_q, tm_k, tm_v, p);
}
