// Tile shapes per head dimension. One place to tune; every kernel derives its sizes from here.
#pragma once

namespace sa {

template <int D>
struct FwdConfig;

/// Both head dims run one schedule (fwd_sm90.cu, consume()): each consumer warpgroup issues
/// S(n+1) = Q K(n+1)^T together with O += P(n) V(n) and computes the sigmoid of S(n+1) while
/// P(n) V(n) runs, and the warpgroups take turns to issue their pairs. Measured on an H200
/// (fifth session, bf16, dense, TFLOPS at N = 16k / 4k, two rounds each, A/B in one call), at
/// D = 128 with 128 x 128 tiles: every product waited for at once, warpgroups interleaving
/// freely (shipped until 7d95cea) 581 / 557; turns for the S products only 604 / 562; separate
/// turns for S and for P V 596 / 552; the pair without turns 559 / 525; the pair with turns
/// 646 / 604. Turns matter because without them the products of all warpgroups interleave on
/// the tensor cores, finish together and leave them idle during everyone's sigmoid.
///
/// D = 64: the sigmoid costs as much SFU time as the two GEMMs take tensor-core time, so three
/// consumer warpgroups share the tensor cores. Fifth session (pair schedule against S-only turns,
/// one call): N = 16k 520 / 510 against 500 / 497, 4k 481 / 476 against 463 / 450. Before that,
/// with S-only turns (bf16, N = 16k, same run): 508 TFLOPS against 424 for 128 rows / two
/// warpgroups without turns, 479 for 192 rows without turns, 453 for 192 x 176 tiles.
template <>
struct FwdConfig<64> {
    static constexpr int kBlockM = 192;  // query rows per CTA: 3 consumer warpgroups x 64
    static constexpr int kBlockN = 128;  // keys per K/V tile
    static constexpr int kStages = 4;    // K/V ring depth
};

/// Both head dims run on a persistent grid (one CTA per SM walking the output tiles; the next
/// tile's Q loads once every consumer warp has the current tile's last S product) with the mask
/// test out of the element loop (sigmoid_mask). Sixth session (bf16, dense, TFLOPS at N = 1k /
/// 4k / 16k, two rounds each, A/B in one call against the one-CTA-per-tile grid of 27873da at
/// 476 / 597-618 / 681 for D = 128 and 370 / 468-472 / 511-512 for D = 64): mask loops alone
/// 474 / 600-616 / 684-687 and 393-396 / 504-508 / 551-552; the persistent grid alone 474-476 /
/// 591-596 / 631-643 and 392-397 / 486-488 / 528-530; both 487-496 / 627-647 / 697-702 and
/// 425-429 / 514-520 / 561-564. (Third session, with the older schedule, the persistent grid
/// alone had been dropped the same way: fwd_persistent.patch against 849cd3a.)
///
/// Seventh session (bf16, TFLOPS at N = 1k / 4k / 16k, two rounds, A/B in one call against
/// 2012462 at 552-544 / 672-679 / 704-710 for D = 128 dense): causal tiles walked in long/short
/// pairs so that causal plans take the persistent grid (causal D = 128 371 / 567 / 687 ->
/// 407 / 605 / 695, D = 64 260 / 440 / 536 -> 289 / 462 / 541; dense 532-539 / 662-669 / 720)
/// and two Q buffers (dense D = 128 542 / 673-674 / 728-736, D = 64 unchanged): both shipped.
/// Dropped: the consumers' pair schedule run on across tile boundaries (the next tile's S(0)
/// issued with this tile's last P V; fwd_cross_tile_pairs.patch against 559621a): 508-523 /
/// 640-645 / 670-685 at D = 128, D = 64 -1 to -3%.
///
/// Eighth session (bf16, padded 25%, TFLOPS at N = 1k / 4k / 16k, two rounds, A/B in one call
/// against 0cc0f20): the ordered walk loading the next unit's index (and at D = 128 its
/// sequence) a unit ahead, fwd_order_prefetch.patch: D = 128 439-442 / 608-612 / 717 ->
/// 428-441 / 617-618 / 710-718, D = 64 364 / 494-495 / 551-552 -> 362-364 / 498-504 / 557:
/// within +1%, dropped.
///
/// Fourth session, measured and dropped (bf16, dense, two rounds each, A/B in one call;
/// patches in kernels/dev/experiments/): Q kept in registers as wgmma A fragments
/// (fwd_q_in_regs.patch; D=128 16k 610/621 against 609/596, D=64 483/485 against 488/489);
/// in fwd_mask_loops_fma_sigmoid.patch (against 043e1d2), the mask test moved out of the
/// element loop into two loops (ncu had shown 38-41% of the issued
/// instructions predicated off; issue-slot use fell from 50% to 31% at D=128 and 71% to 39% at
/// D=64, yet TFLOPS moved by +1% at D=128 and -1.5% at D=64: issue slots were not the limit);
/// every 8th (4th) sigmoid computed on the FMA pipe instead of MUFU, D=64 16k 492/495
/// (448/448) against 498/498, D=128 556/554 (515/517) against 618/610.
/// Fifth session, with the free-interleaving schedule of 7d95cea, dropped: S(n+1) issued right
/// behind P(n) V(n) with one wait for both (fwd_chain.patch, against 857b7d8; D=128 16k
/// 568/564 against 607/612); K and V streamed by two producer threads into rings of their own
/// depth (fwd_split_rings.patch, against 7d95cea; D=128 16k, depths K/V 2/2 616/626, 3/2
/// 609/607, 3/3 609/594, 4/2 612/614 against 611/619 for one producer; D=64 499/496 against
/// 502/505). Nsight Compute put
/// L2 throughput at 33% (D=128) and 20% (D=64) of peak: the K/V re-reads are not a limit.
///
/// D = 128: 2 x Q 32 KiB + 2 x (K 32 KiB + V 32 KiB) = 192 KiB of shared memory. Measured on an
/// H200 with the pair schedule (fifth session, one call, N = 16k / 4k): 128 x 176 tiles 680 /
/// 620 (two rounds: 679 / 614) against 666 / 619 (659 / 618) for 128 x 128 tiles, and 657 / 620
/// for 128 x 128 tiles with a 3-deep ring. (With the earlier schedule, 128 x 176, 192 x 128 and
/// a 3-deep ring were all slower than 128 x 128.) Sixth session, on the persistent grid with the
/// mask loops (one call, two rounds, N = 1k / 4k / 16k): 128 x 128 543-546 / 665-673 / 704
/// against 505-510 / 641-646 / 705-717 for 128 x 176 (whose last key tile of 4096 keys is 27%
/// full: 4096 = 23 x 176 + 48), and 550-555 / 648-677 / 706-712 with a 3-deep ring.
template <>
struct FwdConfig<128> {
    static constexpr int kBlockM = 128;
    static constexpr int kBlockN = 128;
    static constexpr int kStages = 2;
};

// Experiments may override the shape of the compiled head dim (not used by shipped cubins).
#if defined(SA_BLOCK_M) && defined(SA_BLOCK_N) && defined(SA_STAGES) && defined(SA_HEAD_DIM)
template <int D>
struct FwdConfigOverride {
    static constexpr int kBlockM = SA_BLOCK_M;
    static constexpr int kBlockN = SA_BLOCK_N;
    static constexpr int kStages = SA_STAGES;
};
#define SA_CONFIG FwdConfigOverride
#else
#define SA_CONFIG FwdConfig
#endif

/// Backward tiles (both head dims; kernels/bwd_sm90.cu). dK/dV kernel: a producer warp and two
/// consumer warpgroups; dQ kernel: two warpgroups. Tried on an H200 (bf16, N = 16k, A/B in one
/// run) and dropped: consumer warpgroups taking turns on the S^T / dP^T GEMMs (D=64 425 against
/// 438 TFLOPS, D=128 511 against 513); S^T and dP^T as two wgmma groups with P and dV started
/// while dP^T runs (D=64 406 against 429, D=128 504 against 523); each key block starting its
/// walk over the query tiles at its own offset, so that co-resident CTAs add into different dQ
/// rows (third session: D=64 400 against 437, D=128 507 against 496 — noise-level gain at D=128).
/// Sixth session, one call, two rounds each (bf16, dense, TFLOPS at N = 1k / 4k / 16k, against
/// 386-390 / 500-508 / 552-560 at D=128 and 347 / 446-448 / 480-484 at D=64), dropped: the
/// first step's Q/dO load issued with the key block's (SA_EARLY_QDO) 389-390 / 501-510 /
/// 549-554 and 351-353 / 450-452 / 482-486; the rotated walk again 380-389 / 505-507 / 546-547
/// and 340-343 / 444 / 475-479; the dK/dV kernel on a persistent grid (the next item's loads
/// overlapping the current one's tail; kernels/dev/experiments/bwd_persistent.patch, against
/// 748126d) 371-372 / 473-478 / 510-511 and 350-352 / 446-448 / 481.
template <int D>
struct BwdConfig;

/// How the dK/dV kernel adds dQ (kDqPath; bwd_sm90.cu, SA_DQ_PATH): 0 both consumer warpgroups
/// by bulk reductions from shared memory, 1 both by per-thread `red.global.add.v4`, 2 warpgroup 0
/// by bulk reductions and warpgroup 1 per thread, 3 the two paths alternating by step. One
/// path alone loads one resource (shared-memory bandwidth, or L2 atomics and issue slots);
/// splitting them loads both less. Measured on an H200 (fourth session, bf16, dense, TFLOPS,
/// two rounds each, A/B in one call), paths 0 / 1 / 2 / 3: D=64 N=4k 432 / 413 / 445 / 432,
/// N=16k 457 / 435 / 483 / 465; D=128 N=4k 481 / 462 / 509 / 509, N=16k 516 / 492 / 547 / 555.
/// A third Q/dO stage in the shared memory that path 2 frees changed nothing (D=128 16k 550
/// against 547, D=64 482 against 483). Also dropped (same session, A/B in one call, patch
/// kernels/dev/experiments/bwd_one_fence_relaxed_release.patch against 61f7ba3): one
/// fence.proxy.async per step for both the dS tile and the dQ staging (D=128 16k 553 against
/// 557, D=64 471 against 483), and releasing the Q/dO stage by a relaxed arrive without the
/// __syncwarp (D=128 16k 495 against 557: keeping the warps together matters here).
///
/// D = 64: 128 queries per dK/dV step (twice the GEMM work per step's fixed costs; 64 at D =
/// 128, where the accumulators leave no registers for it).
template <>
struct BwdConfig<64> {
    static constexpr int kKeyBlock = 128;    // dK/dV kernel: keys per CTA (64 per warpgroup)
    static constexpr int kQueryTile = 128;   // dK/dV kernel: queries per step (wgmma N)
    static constexpr int kQueryBlock = 128;  // dQ kernel: queries per CTA (64 per warpgroup)
    static constexpr int kKeyTile = 64;      // dQ kernel: keys per step (wgmma N)
    static constexpr int kStages = 2;        // ring depth of the streamed tiles, both kernels
    static constexpr int kDqPath = 2;        // how dQ is added (SA_DQ_PATH in bwd_sm90.cu)
};

template <>
struct BwdConfig<128> {
    static constexpr int kKeyBlock = 128;
    static constexpr int kQueryTile = 64;
    static constexpr int kQueryBlock = 128;
    static constexpr int kKeyTile = 64;
    static constexpr int kStages = 2;
    static constexpr int kDqPath = 3;
};

/// Derived sizes shared by the kernel and the host (the host mirrors them in launch.rs).
template <int D>
struct FwdShape {
    typedef SA_CONFIG<D> C;
    static constexpr int kConsumers = C::kBlockM / 64;       // consumer warpgroups
    static constexpr int kThreads = 128 * (1 + kConsumers);  // + one producer warpgroup
    static constexpr int kSub = D / 64;                      // 64-column (128-byte) sub-tiles
    static constexpr int kQBytes = C::kBlockM * D * 2;
    static constexpr int kKVBytes = C::kBlockN * D * 2;      // one K or one V tile
    static constexpr int kQSubBytes = C::kBlockM * 128;
    static constexpr int kKVSubBytes = C::kBlockN * 128;
    static constexpr int kQBuffers = 2;  // the next tile's Q loads while this one's is in use
    static constexpr int kBarrierBytes = 8 * (2 * kQBuffers + 4 * C::kStages);  // Q, K/V full/empty
    // 1024 bytes of slack to align the dynamic shared-memory base to the swizzle atom.
    static constexpr int kSmemBytes = 1024 + kQBuffers * kQBytes + 2 * C::kStages * kKVBytes + kBarrierBytes;
    static_assert(C::kBlockM % 64 == 0, "kBlockM is a multiple of the wgmma M (64)");
    static_assert(C::kBlockN % 16 == 0 && C::kBlockN <= 256, "kBlockN is a wgmma N");
    static_assert(kSmemBytes <= 227 * 1024, "shared memory per CTA on sm_90");
};

}  // namespace sa
