// One small wrapper per PTX instruction used by the Hopper kernels (sm_90a).
// Compiles under NVRTC with no host headers: only builtin types are used.
#pragma once

#if defined(SA_F16)
#define SA_PTX_DTYPE "f16"
#else
#define SA_PTX_DTYPE "bf16"
#endif

namespace sa {

typedef unsigned int u32;
typedef unsigned long long u64;

/// Shared-memory (CTA window) address of a generic pointer to shared memory.
__device__ __forceinline__ u32 smem_addr(const void* p) {
    return static_cast<u32>(__cvta_generic_to_shared(p));
}

// ---------------------------------------------------------------- registers (setmaxnreg)

/// `setmaxnreg.inc`: raise this warpgroup's register budget to N (all 128 threads execute it).
template <int N>
__device__ __forceinline__ void regs_increase() {
    static_assert(N % 8 == 0 && N >= 24 && N <= 256, "setmaxnreg takes a multiple of 8 in [24, 256]");
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}

/// `setmaxnreg.dec`: lower this warpgroup's register budget to N.
template <int N>
__device__ __forceinline__ void regs_decrease() {
    static_assert(N % 8 == 0 && N >= 24 && N <= 256, "setmaxnreg takes a multiple of 8 in [24, 256]");
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}

// ---------------------------------------------------------------- mbarrier

/// `mbarrier.init`: a barrier expecting `count` arrivals per phase.
__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}

/// `fence.mbarrier_init`: makes initialised barriers visible to the async proxy (TMA).
__device__ __forceinline__ void fence_barrier_init() {
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

/// `mbarrier.arrive.expect_tx`: arrive once and announce `bytes` of incoming TMA traffic.
__device__ __forceinline__ void mbar_arrive_expect_tx(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
                 : "memory");
}

/// `mbarrier.arrive`: one arrival.
__device__ __forceinline__ void mbar_arrive(u32 bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

/// `mbarrier.try_wait.parity`: true once the phase of parity `parity` has completed.
__device__ __forceinline__ bool mbar_try_wait(u32 bar, u32 parity) {
    u32 done;
    asm volatile(
        "{\n.reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
    return done != 0;
}

/// Spins on `mbar_try_wait` (which itself suspends for a while in hardware).
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
    while (!mbar_try_wait(bar, parity)) {
    }
}

// ---------------------------------------------------------------- TMA

/// `cp.async.bulk.tensor.4d` global -> shared, completing `bytes` on barrier `bar`.
/// `tmap` is the generic address of a `__grid_constant__` tensor map.
__device__ __forceinline__ void tma_load_4d(u32 dst, const void* tmap, u32 bar, int c0, int c1, int c2,
                                            int c3) {
    asm volatile(
        "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes"
        " [%0], [%1, {%3, %4, %5, %6}], [%2];\n" ::"r"(dst),
        "l"(reinterpret_cast<u64>(tmap)), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
        : "memory");
}

/// `prefetch.tensormap`: pulls a tensor map into the constant cache ahead of first use.
__device__ __forceinline__ void tma_prefetch_desc(const void* tmap) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<u64>(tmap)) : "memory");
}

/// `fence.proxy.async.shared::cta`: orders generic-proxy shared-memory accesses before later
/// async-proxy (TMA / wgmma) ones.
__device__ __forceinline__ void fence_proxy_async() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// ---------------------------------------------------------------- named barriers

/// `bar.sync id, threads`: a barrier among `threads` threads (a multiple of 32).
__device__ __forceinline__ void named_barrier_sync(u32 id, u32 threads) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

/// `bar.arrive id, threads`: signals barrier `id` without waiting (producer side of a hand-over).
__device__ __forceinline__ void named_barrier_arrive(u32 id, u32 threads) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// ---------------------------------------------------------------- wgmma

/// `wgmma.fence`: orders register accesses before the next wgmma.mma_async.
__device__ __forceinline__ void wgmma_fence() {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}

/// `wgmma.commit_group`: closes the group of wgmma.mma_async issued since the last commit.
__device__ __forceinline__ void wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}

/// `wgmma.wait_group N`: waits until at most N committed groups are still pending.
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    static_assert(N >= 0 && N <= 7, "wgmma.wait_group takes 0..7");
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

/// Keeps the compiler from moving accesses of `x` across wgmma fences and waits.
__device__ __forceinline__ void reg_fence(float& x) { asm volatile("" : "+f"(x)::"memory"); }
__device__ __forceinline__ void reg_fence(u32& x) { asm volatile("" : "+r"(x)::"memory"); }

template <int N>
__device__ __forceinline__ void reg_fence(float (&x)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) reg_fence(x[i]);
}

/// Shared-memory matrix descriptor for a 128-byte-swizzled operand (layout type 1).
/// `lbo`/`sbo` in bytes; the tile must start on a 1024-byte boundary up to the k-offset added
/// into the start address (base offset 0).
__device__ __forceinline__ u64 wgmma_desc_sw128(u32 addr, u32 lbo, u32 sbo) {
    u64 d = 0;
    d |= static_cast<u64>((addr & 0x3FFFF) >> 4);
    d |= static_cast<u64>((lbo >> 4) & 0x3FFF) << 16;
    d |= static_cast<u64>((sbo >> 4) & 0x3FFF) << 32;
    d |= static_cast<u64>(1) << 62;
    return d;
}

// ---------------------------------------------------------------- conversions and math

/// `cvt.rn.{bf16,f16}x2.f32`: packs (lo, hi) into one register, `lo` in the low half.
__device__ __forceinline__ u32 pack2(float lo, float hi) {
    u32 r;
    asm("cvt.rn." SA_PTX_DTYPE "x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

/// Packs a 64 x N f32 wgmma accumulator into 16-bit wgmma A fragments (16 columns each): after
/// pairing neighbours, the accumulator layout is the A-fragment layout, so no data moves
/// between threads. Used for P (and dS) as the register operand of the next product.
template <int N>
__device__ __forceinline__ void pack_fragments(const float (&acc)[N / 2], u32 (&f)[N / 16][4]) {
#pragma unroll
    for (int kk = 0; kk < N / 16; ++kk) {
        f[kk][0] = pack2(acc[8 * kk + 0], acc[8 * kk + 1]);
        f[kk][1] = pack2(acc[8 * kk + 2], acc[8 * kk + 3]);
        f[kk][2] = pack2(acc[8 * kk + 4], acc[8 * kk + 5]);
        f[kk][3] = pack2(acc[8 * kk + 6], acc[8 * kk + 7]);
    }
}

/// `tanh.approx.f32`: one MUFU.TANH.
__device__ __forceinline__ float tanh_approx(float x) {
    float y;
    asm("tanh.approx.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

/// `ex2.approx.ftz.f32`: one MUFU.EX2.
__device__ __forceinline__ float ex2_approx(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

/// `rcp.approx.ftz.f32`: one MUFU.RCP (max error 1 ulp).
__device__ __forceinline__ float rcp_approx(float x) {
    float y;
    asm("rcp.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

/// `st.shared.v4.b32` of zeros: clears 16 bytes of shared memory.
__device__ __forceinline__ void st_shared_zero16(u32 addr) {
    asm volatile("st.shared.v4.b32 [%0], {%1, %1, %1, %1};\n" ::"r"(addr), "r"(0) : "memory");
}

/// `st.global.b32` of a packed pair.
__device__ __forceinline__ void st_global_b32(void* p, u32 v) {
    asm volatile("st.global.b32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
}

/// `st.global.v4.b32`: 16 bytes at a 16-byte aligned global address.
__device__ __forceinline__ void st_global_v4_b32(void* p, uint4 v) {
    asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"l"(p), "r"(v.x), "r"(v.y), "r"(v.z), "r"(v.w)
                 : "memory");
}

/// `st.shared.b32`.
__device__ __forceinline__ void st_shared_b32(u32 addr, u32 v) {
    asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}

/// `ld.shared.v4.b32`: 16 bytes at a 16-byte aligned shared address.
__device__ __forceinline__ uint4 ld_shared_v4_b32(u32 addr) {
    uint4 v;
    asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "r"(addr)
                 : "memory");
    return v;
}

// ---------------------------------------------------------------- backward additions
// (new wrappers only; the forward does not use them)

/// `stmatrix.sync.aligned.m8n8.x4.trans.shared.b16`: stores four 8x8 tiles of 16-bit elements
/// held in the mma fragment layout (register m: this lane's pair of tile m), each transposed.
/// Lane L gives the address of row L % 8 of stored tile L / 8: 16 contiguous bytes.
__device__ __forceinline__ void stmatrix_x4_trans(u32 addr, u32 r0, u32 r1, u32 r2, u32 r3) {
    asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r0),
                 "r"(r1), "r"(r2), "r"(r3)
                 : "memory");
}

/// `red.global.add.v4.f32`: four fp32 reductions into 16 contiguous, 16-byte aligned bytes in
/// one instruction (sm_90).
__device__ __forceinline__ void red_add_v4_f32(float* p, float a, float b, float c, float d) {
    asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"l"(p), "f"(a), "f"(b), "f"(c), "f"(d)
                 : "memory");
}

/// `st.shared.v4.f32`: 16 bytes at a 16-byte aligned shared address.
__device__ __forceinline__ void st_shared_v4_f32(u32 addr, float a, float b, float c, float d) {
    asm volatile("st.shared.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "f"(a), "f"(b), "f"(c), "f"(d)
                 : "memory");
}

// ---------------------------------------------------------------- bulk (non-tensor) async copies

/// `cp.reduce.async.bulk .add.f32`: adds `bytes` (a multiple of 16) of fp32 values from shared
/// memory into global memory, element by element, in the executing thread's current bulk group.
__device__ __forceinline__ void bulk_reduce_add_f32(float* dst, u32 src, u32 bytes) {
    asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;\n" ::"l"(dst),
                 "r"(src), "r"(bytes)
                 : "memory");
}

/// `cp.async.bulk.commit_group`: closes the executing thread's current bulk group.
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }

/// Waits until at most N of the executing thread's bulk groups have not finished reading their
/// shared-memory sources.
template <int N>
__device__ __forceinline__ void bulk_wait_read() {
    asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
}

/// Waits until at most N of the executing thread's bulk groups are incomplete.
template <int N>
__device__ __forceinline__ void bulk_wait() {
    asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(N) : "memory");
}

/// Byte offset of element (row, col) of a tile of 16-bit elements stored as rows of 128 bytes
/// (64 elements) with the 128-byte swizzle that TMA's CU_TENSOR_MAP_SWIZZLE_128B writes and
/// wgmma's layout type 1 reads: the 16-byte chunk index is XORed with (row % 8). The tile must
/// start on a 1024-byte boundary.
__device__ __forceinline__ u32 sw128_offset(int row, int col) {
    return static_cast<u32>(row * 128 + ((((col >> 3) ^ (row & 7)) & 7) << 4) + (col & 7) * 2);
}

}  // namespace sa

#include "wgmma.cuh"
