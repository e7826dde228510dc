// Backward on cooperative matrices, key side: dV = Pᵀ dO and dK = scale · dSᵀ Q, summed over
// the query heads of the key/value head's group (GQA), plus one partial sum of dS per workgroup
// for d_bias (bwd_dbias.wgsl adds them up). P and dS are recomputed from Q and K: sigmoid
// attention needs no saved row statistics.
//
// pipelines.rs assembles `enable f16; enable wgpu_cooperative_matrix;` + storage path +
// sigmoid.wgsl + this file. f16 operands, f32 accumulation, bf16 storage converted on load (as
// fwd_coop.wgsl; the host runs the scalar kernels for f32 storage).
//
// One workgroup of 2·NSG subgroups per (key tile of BKK = 16·NSG keys, key/value head,
// sequence). The subgroups come in pairs, one pair per 16 keys: the first NSG subgroups (the K
// side) hold their keys' K rows in registers as D/16 A-matrices and accumulate dK in D/16 f32
// C-matrices; the other NSG (the V side) hold V and accumulate dV. Split so, a subgroup holds
// half of what one subgroup holding K, V, dK and dV would (at D = 128 that one needs about 200
// registers per invocation, which left too few subgroups resident to hide the loads of Q and
// dO: measured on an H200, those loads took half of the kernel's time). Per query head of the
// group and tile of BQ queries (causal: only queries at or after the tile's first key):
//   1. Q and dO (f16) to workgroup memory from registers, where they were loaded during the
//      tile before; those of the next tile (or the next query head's first) into registers.
//   2. The K side Sᵀ = K Qᵀ, the V side dPᵀ = V dOᵀ (16×16×16 multiply-adds), stored (f32)
//      to `ss`.
//   3. P = σ(scale·S + bias) and dS = dP·P·(1−P), zero where masked, rounded to f16 into `pt`
//      as [key][query] by the whole workgroup; the dS sum of each invocation goes to d_bias.
//   4. The K side dK += dSᵀ Q, the V side dV += Pᵀ dO, over the 16-query blocks that hold
//      valid queries.
// Each side reads the half of `qo` it multiplies (Q or dO) and writes the half of `ss` it
// computes at the same offset, `side · OO` and `side · SO`, so both sides run the same code.
// dK and dV go out through `ss` in column chunks of BQ; rows past rows_k are not written (rows
// past len_k hold zeros: their keys are masked).
//
// Subgroup i is taken to be invocations [i·SGS, (i+1)·SGS): the host runs this kernel only on
// adapters whose subgroup size is fixed.

override D: u32 = 64u;        // head dim (multiple of 16, at most 16 · 8)
override BQ: u32 = 32u;       // queries per tile (multiple of 16)
override NSG: u32 = 4u;       // subgroup pairs per workgroup; BKK = 16 · NSG keys
override SGS: u32 = 32u;      // subgroup size
override CAUSAL: bool = false;
override WG: u32 = 256u;      // 2 · NSG · SGS
override QO_LEN: u32 = 1152u; // max(2·BQ·(D + 8), 2·BKK·24) / 4  f16 quads
override S_LEN: u32 = 1280u;  // 2 · BKK · (BQ + 8) / 4          f32 quads
override P_LEN: u32 = 1280u;  // 2 · BKK · (BQ + 8) / 4          f16 quads

// Quads of one Q or dO tile that an invocation holds in registers (tile quads / WG, at most
// this; the host checks it).
const PRE_MAX: u32 = 16u;

alias AM = coop_mat16x16<f16, A>;
alias BM = coop_mat16x16<f16, B>;
alias CM = coop_mat16x16<f32, C>;

@group(0) @binding(0) var<uniform> prm: Params;
@group(0) @binding(1) var<storage, read> seqs: array<Seq>;
@group(0) @binding(2) var<storage, read> q: array<Quad>;
@group(0) @binding(3) var<storage, read> k: array<Quad>;
@group(0) @binding(4) var<storage, read> v: array<Quad>;
@group(0) @binding(5) var<storage, read> d_o: array<Quad>;
@group(0) @binding(6) var<storage, read_write> dk: array<Quad>;
@group(0) @binding(7) var<storage, read_write> dv: array<Quad>;
@group(0) @binding(8) var<storage, read_write> dbias_part: array<f32>;

// Q (rows 0..BQ) and dO (rows BQ..2·BQ) of the query tile, rows of D + 8; blocks of K and V
// of the key tile at the start.
var<workgroup> qo: array<vec4<f16>, QO_LEN>;
// Sᵀ (rows 0..BKK) and dPᵀ (rows BKK..2·BKK), f32, rows of BQ + 8; dK/dV staging at the end.
var<workgroup> ss: array<vec4<f32>, S_LEN>;
// Pᵀ (rows 0..BKK) and dSᵀ (rows BKK..2·BKK), f16, rows of BQ + 8.
var<workgroup> pt: array<vec4<f16>, P_LEN>;

// Columns [16·c, 16·c + 16) of the key tile's K rows (staged rows 0..BKK) and V rows (rows
// BKK..2·BKK) to qo as f16, rows of 6 quads, zeros at or past `valid`. One 16-column block of
// both tensors at a time lets each subgroup load its side's A-matrix from a pointer (naga
// rejects cooperative-matrix operations under a branch on the subgroup's side).
fn stage_kv_block(c: u32, tid: u32, kbase: u32, vbase: u32, row0: u32, valid: u32) {
    let BKK = NSG * 16u;
    for (var e = tid; e < 2u * BKK * 4u; e += WG) {
        let r = e / 4u;
        let j = row0 + r % BKK;
        let c4 = 4u * c + e % 4u;
        var x = vec4<f16>(0.0);
        if (j < valid) {
            if (r < BKK) {
                x = half_quad(k[kbase + j * prm.k_str.y + c4]);
            } else {
                x = half_quad(v[vbase + j * prm.v_str.y + c4]);
            }
        }
        qo[r * 6u + e % 4u] = x;
    }
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let D4 = D / 4u;
    let DT = D / 16u;
    let BKK = NSG * 16u;
    let BQ4 = BQ / 4u;
    // Row strides in quads, and the offsets of the second halves.
    let LDQ = D4 + 2u;
    let LDS = BQ4 + 2u;
    let LDP = BQ4 + 2u;
    let OO = BQ * LDQ;
    let SO = BKK * LDS;
    let PO = BKK * LDP;

    let b = wid.z;
    let kvh = wid.y;
    let sq = seqs[b];
    let k0 = wid.x * BKK;
    let part = b * prm.n_part + kvh * nwg.x + wid.x;
    if (k0 >= sq.rows_k) {
        if (tid == 0u) {
            dbias_part[part] = 0.0;
        }
        return;
    }
    let kbase = head_base(prm.k_str, b, sq.k_start, kvh);
    let vbase = head_base(prm.v_str, b, sq.k_start, kvh);
    let sg = tid / SGS;
    // 0: the K side, 1: the V side; each subgroup's 16 keys start at row r0 of the tile.
    let side = sg / NSG;
    let r0 = (sg % NSG) * 16u;
    let scale = prm.scale;
    let bias = sq.bias;

    // Queries that can see a key of this tile.
    var qlo = 0u;
    if (CAUSAL) {
        qlo = k0;
    }
    var n_qt = 0u;
    if (k0 < sq.len_k && qlo < sq.len_q) {
        n_qt = (sq.len_q - qlo + BQ - 1u) / BQ;
    }

    // This side's K or V rows to registers, through workgroup memory.
    var xa0 = AM();
    var xa1 = AM();
    var xa2 = AM();
    var xa3 = AM();
    var xa4 = AM();
    var xa5 = AM();
    var xa6 = AM();
    var xa7 = AM();
    if (DT > 0u) {
        stage_kv_block(0u, tid, kbase, vbase, k0, sq.len_k);
        workgroupBarrier();
        xa0 = coopLoadT<AM>(&qo[(side * BKK + r0) * 6u], 6u);
    }
    if (DT > 1u) {
        workgroupBarrier();                  // the block before fully read
        stage_kv_block(1u, tid, kbase, vbase, k0, sq.len_k);
        workgroupBarrier();
        xa1 = coopLoadT<AM>(&qo[(side * BKK + r0) * 6u], 6u);
    }
    if (DT > 2u) {
        workgroupBarrier();                  // the block before fully read
        stage_kv_block(2u, tid, kbase, vbase, k0, sq.len_k);
        workgroupBarrier();
        xa2 = coopLoadT<AM>(&qo[(side * BKK + r0) * 6u], 6u);
    }
    if (DT > 3u) {
        workgroupBarrier();                  // the block before fully read
        stage_kv_block(3u, tid, kbase, vbase, k0, sq.len_k);
        workgroupBarrier();
        xa3 = coopLoadT<AM>(&qo[(side * BKK + r0) * 6u], 6u);
    }
    if (DT > 4u) {
        workgroupBarrier();                  // the block before fully read
        stage_kv_block(4u, tid, kbase, vbase, k0, sq.len_k);
        workgroupBarrier();
        xa4 = coopLoadT<AM>(&qo[(side * BKK + r0) * 6u], 6u);
    }
    if (DT > 5u) {
        workgroupBarrier();                  // the block before fully read
        stage_kv_block(5u, tid, kbase, vbase, k0, sq.len_k);
        workgroupBarrier();
        xa5 = coopLoadT<AM>(&qo[(side * BKK + r0) * 6u], 6u);
    }
    if (DT > 6u) {
        workgroupBarrier();                  // the block before fully read
        stage_kv_block(6u, tid, kbase, vbase, k0, sq.len_k);
        workgroupBarrier();
        xa6 = coopLoadT<AM>(&qo[(side * BKK + r0) * 6u], 6u);
    }
    if (DT > 7u) {
        workgroupBarrier();                  // the block before fully read
        stage_kv_block(7u, tid, kbase, vbase, k0, sq.len_k);
        workgroupBarrier();
        xa7 = coopLoadT<AM>(&qo[(side * BKK + r0) * 6u], 6u);
    }

    var g0 = CM();
    var g1 = CM();
    var g2 = CM();
    var g3 = CM();
    var g4 = CM();
    var g5 = CM();
    var g6 = CM();
    var g7 = CM();
    var dbias = 0.0;
    // The (query head, query tile) pairs in one sequence, ti = g · n_qt + qt. Q and dO of the
    // next pair reach registers while this one is computed (raw storage quads, quad
    // tid + i·WG of the tile in element i, zeros past the valid queries), instead of the
    // workgroup waiting on global memory between two barriers at every tile.
    let n_tiles = prm.group * n_qt;
    let n_pre = min((BQ * D4 + WG - 1u) / WG, PRE_MAX);
    var pq: array<Quad, PRE_MAX>;
    var po: array<Quad, PRE_MAX>;
    if (n_tiles > 0u) {
        let qbase = head_base(prm.q_str, b, sq.q_start, kvh * prm.group);
        let obase = head_base(prm.o_str, b, sq.q_start, kvh * prm.group);
        let qn = min(BQ, sq.len_q - qlo);
        for (var i = 0u; i < n_pre; i++) {
            let e = tid + i * WG;
            var x = Quad();
            var y = Quad();
            if (e < BQ * D4 && e / D4 < qn) {
                x = q[qbase + (qlo + e / D4) * prm.q_str.y + e % D4];
                y = d_o[obase + (qlo + e / D4) * prm.o_str.y + e % D4];
            }
            pq[i] = x;
            po[i] = y;
        }
    }
    // This side's operand in `qo` (Q or dO) and its product's rows in `ss` (Sᵀ or dPᵀ).
    let mine_q = side * OO;
    let mine_s = side * SO + r0 * LDS;
    // The A operand of step 4: dSᵀ for the K side, Pᵀ for the V side.
    let mine_p = (1u - side) * PO + r0 * LDP;
    for (var ti = 0u; ti < n_tiles; ti++) {
        let qt = ti % n_qt;
        let i0 = qlo + qt * BQ;
        let qn = min(BQ, sq.len_q - i0);         // valid queries in this tile
        let n_qb = (qn + 15u) / 16u;
        workgroupBarrier();                      // K/V blocks, or the last tile's Q, dO, Pᵀ, read
        // 1. Q and dO of the tile to workgroup memory; those of the next pair to registers.
        for (var i = 0u; i < n_pre; i++) {
            let e = tid + i * WG;
            if (e < BQ * D4) {
                qo[(e / D4) * LDQ + e % D4] = half_quad(pq[i]);
                qo[OO + (e / D4) * LDQ + e % D4] = half_quad(po[i]);
            }
        }
        if (ti + 1u < n_tiles) {
            let h1 = kvh * prm.group + (ti + 1u) / n_qt;
            let qbase1 = head_base(prm.q_str, b, sq.q_start, h1);
            let obase1 = head_base(prm.o_str, b, sq.q_start, h1);
            let i1 = qlo + ((ti + 1u) % n_qt) * BQ;
            let qn1 = min(BQ, sq.len_q - i1);
            for (var i = 0u; i < n_pre; i++) {
                let e = tid + i * WG;
                var x = Quad();
                var y = Quad();
                if (e < BQ * D4 && e / D4 < qn1) {
                    x = q[qbase1 + (i1 + e / D4) * prm.q_str.y + e % D4];
                    y = d_o[obase1 + (i1 + e / D4) * prm.o_str.y + e % D4];
                }
                pq[i] = x;
                po[i] = y;
            }
        }
        workgroupBarrier();
        // 2. Sᵀ = K Qᵀ or dPᵀ = V dOᵀ, one block of 16 queries at a time.
        for (var j = 0u; j < n_qb; j++) {
            var s = CM();
            let qb = mine_q + j * 16u * LDQ;
            if (DT > 0u) {
                let bm = coopLoad<BM>(&qo[qb + 0u], LDQ);
                s = coopMultiplyAdd(xa0, bm, s);
            }
            if (DT > 1u) {
                let bm = coopLoad<BM>(&qo[qb + 4u], LDQ);
                s = coopMultiplyAdd(xa1, bm, s);
            }
            if (DT > 2u) {
                let bm = coopLoad<BM>(&qo[qb + 8u], LDQ);
                s = coopMultiplyAdd(xa2, bm, s);
            }
            if (DT > 3u) {
                let bm = coopLoad<BM>(&qo[qb + 12u], LDQ);
                s = coopMultiplyAdd(xa3, bm, s);
            }
            if (DT > 4u) {
                let bm = coopLoad<BM>(&qo[qb + 16u], LDQ);
                s = coopMultiplyAdd(xa4, bm, s);
            }
            if (DT > 5u) {
                let bm = coopLoad<BM>(&qo[qb + 20u], LDQ);
                s = coopMultiplyAdd(xa5, bm, s);
            }
            if (DT > 6u) {
                let bm = coopLoad<BM>(&qo[qb + 24u], LDQ);
                s = coopMultiplyAdd(xa6, bm, s);
            }
            if (DT > 7u) {
                let bm = coopLoad<BM>(&qo[qb + 28u], LDQ);
                s = coopMultiplyAdd(xa7, bm, s);
            }
            // (Pointer and matrix bound by `let` first: naga 30's WGSL front end does not
            // emit a coopStore's argument expressions before the store itself.)
            let sp = &ss[mine_s + j * 4u];
            let sv = s;
            coopStoreT(sv, sp, LDS);
        }
        workgroupBarrier();                      // Sᵀ and dPᵀ written
        // 3. Pᵀ and dSᵀ as f16, for key j = k0 + r and queries i0 + 4·c4 .. +3.
        for (var e = tid; e < BKK * BQ4; e += WG) {
            let r = e / BQ4;
            let c4 = e % BQ4;
            let jv = vec4<u32>(k0 + r);
            let iv = vec4<u32>(i0 + c4 * 4u) + vec4<u32>(0u, 1u, 2u, 3u);
            var ok = (jv < vec4<u32>(sq.len_k)) & (iv < vec4<u32>(sq.len_q));
            if (CAUSAL) {
                ok = ok & (jv <= iv);
            }
            // Blocks past n_qb were not computed: `select` keeps their stale values out.
            let p = select(vec4<f32>(0.0), sigmoid4_of(ss[r * LDS + c4], scale, bias), ok);
            let ds = select(vec4<f32>(0.0), ss[SO + r * LDS + c4] * p * (1.0 - p), ok);
            dbias += (ds.x + ds.y) + (ds.z + ds.w);
            pt[r * LDP + c4] = vec4<f16>(p);
            pt[PO + r * LDP + c4] = vec4<f16>(ds);
        }
        workgroupBarrier();                      // Pᵀ and dSᵀ written
        // 4. dK += dSᵀ Q or dV += Pᵀ dO.
        for (var kk = 0u; kk < n_qb; kk++) {
            let a = coopLoadT<AM>(&pt[mine_p + kk * 4u], LDP);
            let qb = mine_q + kk * 16u * LDQ;
            if (DT > 0u) {
                let bm = coopLoadT<BM>(&qo[qb + 0u], LDQ);
                g0 = coopMultiplyAdd(a, bm, g0);
            }
            if (DT > 1u) {
                let bm = coopLoadT<BM>(&qo[qb + 4u], LDQ);
                g1 = coopMultiplyAdd(a, bm, g1);
            }
            if (DT > 2u) {
                let bm = coopLoadT<BM>(&qo[qb + 8u], LDQ);
                g2 = coopMultiplyAdd(a, bm, g2);
            }
            if (DT > 3u) {
                let bm = coopLoadT<BM>(&qo[qb + 12u], LDQ);
                g3 = coopMultiplyAdd(a, bm, g3);
            }
            if (DT > 4u) {
                let bm = coopLoadT<BM>(&qo[qb + 16u], LDQ);
                g4 = coopMultiplyAdd(a, bm, g4);
            }
            if (DT > 5u) {
                let bm = coopLoadT<BM>(&qo[qb + 20u], LDQ);
                g5 = coopMultiplyAdd(a, bm, g5);
            }
            if (DT > 6u) {
                let bm = coopLoadT<BM>(&qo[qb + 24u], LDQ);
                g6 = coopMultiplyAdd(a, bm, g6);
            }
            if (DT > 7u) {
                let bm = coopLoadT<BM>(&qo[qb + 28u], LDQ);
                g7 = coopMultiplyAdd(a, bm, g7);
            }
        }
    }
    // dK (scaled) and dV through workgroup memory, CW columns at a time: dK in the first half
    // of `ss`, dV in the second, each side at its half's offset.
    let CW = BQ;
    for (var c0 = 0u; c0 < D; c0 += CW) {
        workgroupBarrier();
        if (DT > 0u && 0u >= c0 && 0u < c0 + CW) {
            let sp = &ss[mine_s + 0u - c0 / 4u];
            let sv = g0;
            coopStoreT(sv, sp, LDS);
        }
        if (DT > 1u && 16u >= c0 && 16u < c0 + CW) {
            let sp = &ss[mine_s + 4u - c0 / 4u];
            let sv = g1;
            coopStoreT(sv, sp, LDS);
        }
        if (DT > 2u && 32u >= c0 && 32u < c0 + CW) {
            let sp = &ss[mine_s + 8u - c0 / 4u];
            let sv = g2;
            coopStoreT(sv, sp, LDS);
        }
        if (DT > 3u && 48u >= c0 && 48u < c0 + CW) {
            let sp = &ss[mine_s + 12u - c0 / 4u];
            let sv = g3;
            coopStoreT(sv, sp, LDS);
        }
        if (DT > 4u && 64u >= c0 && 64u < c0 + CW) {
            let sp = &ss[mine_s + 16u - c0 / 4u];
            let sv = g4;
            coopStoreT(sv, sp, LDS);
        }
        if (DT > 5u && 80u >= c0 && 80u < c0 + CW) {
            let sp = &ss[mine_s + 20u - c0 / 4u];
            let sv = g5;
            coopStoreT(sv, sp, LDS);
        }
        if (DT > 6u && 96u >= c0 && 96u < c0 + CW) {
            let sp = &ss[mine_s + 24u - c0 / 4u];
            let sv = g6;
            coopStoreT(sv, sp, LDS);
        }
        if (DT > 7u && 112u >= c0 && 112u < c0 + CW) {
            let sp = &ss[mine_s + 28u - c0 / 4u];
            let sv = g7;
            coopStoreT(sv, sp, LDS);
        }
        workgroupBarrier();
        let cw4 = min(CW, D - c0) / 4u;
        for (var e = tid; e < BKK * cw4; e += WG) {
            let r = e / cw4;
            let c4 = e % cw4;
            let j = k0 + r;
            if (j < sq.rows_k) {
                dk[kbase + j * prm.k_str.y + c0 / 4u + c4] = store_quad(scale * ss[r * LDS + c4]);
                dv[vbase + j * prm.v_str.y + c0 / 4u + c4] = store_quad(ss[SO + r * LDS + c4]);
            }
        }
    }
    // d_bias partial: invocation 0 adds the invocations' sums in a fixed order (deterministic).
    workgroupBarrier();
    ss[tid] = vec4<f32>(dbias, 0.0, 0.0, 0.0);
    workgroupBarrier();
    if (tid == 0u) {
        var acc = 0.0;
        for (var i = 0u; i < WG; i++) {
            acc += ss[i].x;
        }
        dbias_part[part] = acc;
    }
}
