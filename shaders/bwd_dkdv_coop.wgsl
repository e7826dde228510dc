// Backward on cooperative matrices, key side: dV = Pᵀ dO and dK = scale · dSᵀ Q, summed over
// the query heads of the key/value head's group (GQA), plus one partial sum of dS per workgroup
// for d_bias (bwd_dbias.wgsl adds them up). P and dS are recomputed from Q and K: sigmoid
// attention needs no saved row statistics.
//
// pipelines.rs assembles `enable f16; enable wgpu_cooperative_matrix;` + storage path +
// sigmoid.wgsl + this file. f16 operands, f32 accumulation, bf16 storage converted on load (as
// fwd_coop.wgsl; the host runs the scalar kernels for f32 storage).
//
// One workgroup of NSG subgroups per (key tile of BKK = 16·NSG keys, key/value head, sequence);
// each subgroup owns 16 keys, whose K and V rows stay in registers as D/16 A-matrices each, and
// accumulates their dK and dV in 2·D/16 f32 C-matrices. Per query head of the group and tile of
// BQ queries (causal: only queries at or after the tile's first key):
//   1. Q and dO (f16) to workgroup memory from registers, where they were loaded during the
//      tile before; those of the next tile (or the next query head's first) into registers.
//   2. Sᵀ = K Qᵀ and dPᵀ = V dOᵀ (16×16×16 multiply-adds), stored (f32) to `ss`.
//   3. P = σ(scale·S + bias) and dS = dP·P·(1−P), zero where masked, rounded to f16 into `pt`
//      as [key][query], each subgroup on its own keys between subgroup barriers; the dS sum of
//      each invocation goes to d_bias.
//   4. dV += Pᵀ dO and dK += dSᵀ Q over the 16-query blocks that hold valid queries.
// dK and dV go out through `ss` in column chunks of BQ; rows past rows_k are not written (rows
// past len_k hold zeros: their keys are masked).
//
// Subgroup i is taken to be invocations [i·SGS, (i+1)·SGS): the host runs this kernel only on
// adapters whose subgroup size is fixed.

override D: u32 = 64u;        // head dim (multiple of 16, at most 16 · 8)
override BQ: u32 = 32u;       // queries per tile (multiple of 16)
override NSG: u32 = 4u;       // subgroups per workgroup; BKK = 16 · NSG keys
override SGS: u32 = 32u;      // subgroup size
override CAUSAL: bool = false;
override WG: u32 = 128u;      // NSG · SGS
override QO_LEN: u32 = 1152u; // max(2·BQ, BKK) · (D + 8) / 4   f16 quads
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

// Q (rows 0..BQ) and dO (rows BQ..2·BQ) of the query tile, rows of D + 8; K, then V of the key
// tile at the start.
var<workgroup> qo: array<vec4<f16>, QO_LEN>;
// Sᵀ (rows 0..BKK) and dPᵀ (rows BKK..2·BKK), f32, rows of BQ + 8; dK/dV staging at the end.
var<workgroup> ss: array<vec4<f32>, S_LEN>;
// Pᵀ (rows 0..BKK) and dSᵀ (rows BKK..2·BKK), f16, rows of BQ + 8.
var<workgroup> pt: array<vec4<f16>, P_LEN>;

// Rows [row0, row0 + BKK) of a key tensor (t: 1 k, 2 v) to qo as f16, zeros at or past `valid`.
fn stage_kv(t: u32, tid: u32, base: u32, rstride: u32, row0: u32, valid: u32) {
    let D4 = D / 4u;
    let LDQ = D4 + 2u;
    for (var e = tid; e < NSG * 16u * D4; e += WG) {
        let r = e / D4;
        let c4 = e % D4;
        var x = vec4<f16>(0.0);
        if (row0 + r < valid) {
            let idx = base + (row0 + r) * rstride + c4;
            if (t == 1u) {
                x = half_quad(k[idx]);
            } else {
                x = half_quad(v[idx]);
            }
        }
        qo[r * LDQ + c4] = x;
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
    let r0 = sg * 16u;
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

    // K and V rows to registers, through workgroup memory.
    var ka0 = AM();
    var ka1 = AM();
    var ka2 = AM();
    var ka3 = AM();
    var ka4 = AM();
    var ka5 = AM();
    var ka6 = AM();
    var ka7 = AM();
    var va0 = AM();
    var va1 = AM();
    var va2 = AM();
    var va3 = AM();
    var va4 = AM();
    var va5 = AM();
    var va6 = AM();
    var va7 = AM();
    stage_kv(1u, tid, kbase, prm.k_str.y, k0, sq.len_k);
    workgroupBarrier();
    if (DT > 0u) {
        ka0 = coopLoadT<AM>(&qo[r0 * LDQ + 0u], LDQ);
    }
    if (DT > 1u) {
        ka1 = coopLoadT<AM>(&qo[r0 * LDQ + 4u], LDQ);
    }
    if (DT > 2u) {
        ka2 = coopLoadT<AM>(&qo[r0 * LDQ + 8u], LDQ);
    }
    if (DT > 3u) {
        ka3 = coopLoadT<AM>(&qo[r0 * LDQ + 12u], LDQ);
    }
    if (DT > 4u) {
        ka4 = coopLoadT<AM>(&qo[r0 * LDQ + 16u], LDQ);
    }
    if (DT > 5u) {
        ka5 = coopLoadT<AM>(&qo[r0 * LDQ + 20u], LDQ);
    }
    if (DT > 6u) {
        ka6 = coopLoadT<AM>(&qo[r0 * LDQ + 24u], LDQ);
    }
    if (DT > 7u) {
        ka7 = coopLoadT<AM>(&qo[r0 * LDQ + 28u], LDQ);
    }
    workgroupBarrier();
    stage_kv(2u, tid, vbase, prm.v_str.y, k0, sq.len_k);
    workgroupBarrier();
    if (DT > 0u) {
        va0 = coopLoadT<AM>(&qo[r0 * LDQ + 0u], LDQ);
    }
    if (DT > 1u) {
        va1 = coopLoadT<AM>(&qo[r0 * LDQ + 4u], LDQ);
    }
    if (DT > 2u) {
        va2 = coopLoadT<AM>(&qo[r0 * LDQ + 8u], LDQ);
    }
    if (DT > 3u) {
        va3 = coopLoadT<AM>(&qo[r0 * LDQ + 12u], LDQ);
    }
    if (DT > 4u) {
        va4 = coopLoadT<AM>(&qo[r0 * LDQ + 16u], LDQ);
    }
    if (DT > 5u) {
        va5 = coopLoadT<AM>(&qo[r0 * LDQ + 20u], LDQ);
    }
    if (DT > 6u) {
        va6 = coopLoadT<AM>(&qo[r0 * LDQ + 24u], LDQ);
    }
    if (DT > 7u) {
        va7 = coopLoadT<AM>(&qo[r0 * LDQ + 28u], LDQ);
    }

    var gk0 = CM();
    var gk1 = CM();
    var gk2 = CM();
    var gk3 = CM();
    var gk4 = CM();
    var gk5 = CM();
    var gk6 = CM();
    var gk7 = CM();
    var gv0 = CM();
    var gv1 = CM();
    var gv2 = CM();
    var gv3 = CM();
    var gv4 = CM();
    var gv5 = CM();
    var gv6 = CM();
    var gv7 = CM();
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
    for (var ti = 0u; ti < n_tiles; ti++) {
        {
            let qt = ti % n_qt;
            let i0 = qlo + qt * BQ;
            let qn = min(BQ, sq.len_q - i0);     // valid queries in this tile
            let n_qb = (qn + 15u) / 16u;
            workgroupBarrier();                  // K/V, or the last tile's Q and dO, fully read
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
            // 2. Sᵀ = K Qᵀ and dPᵀ = V dOᵀ, one block of 16 queries at a time.
            for (var j = 0u; j < n_qb; j++) {
                var s = CM();
                var t = CM();
                let qb = j * 16u * LDQ;
                if (DT > 0u) {
                    let bq = coopLoad<BM>(&qo[qb + 0u], LDQ);
                    s = coopMultiplyAdd(ka0, bq, s);
                    let bo = coopLoad<BM>(&qo[OO + qb + 0u], LDQ);
                    t = coopMultiplyAdd(va0, bo, t);
                }
                if (DT > 1u) {
                    let bq = coopLoad<BM>(&qo[qb + 4u], LDQ);
                    s = coopMultiplyAdd(ka1, bq, s);
                    let bo = coopLoad<BM>(&qo[OO + qb + 4u], LDQ);
                    t = coopMultiplyAdd(va1, bo, t);
                }
                if (DT > 2u) {
                    let bq = coopLoad<BM>(&qo[qb + 8u], LDQ);
                    s = coopMultiplyAdd(ka2, bq, s);
                    let bo = coopLoad<BM>(&qo[OO + qb + 8u], LDQ);
                    t = coopMultiplyAdd(va2, bo, t);
                }
                if (DT > 3u) {
                    let bq = coopLoad<BM>(&qo[qb + 12u], LDQ);
                    s = coopMultiplyAdd(ka3, bq, s);
                    let bo = coopLoad<BM>(&qo[OO + qb + 12u], LDQ);
                    t = coopMultiplyAdd(va3, bo, t);
                }
                if (DT > 4u) {
                    let bq = coopLoad<BM>(&qo[qb + 16u], LDQ);
                    s = coopMultiplyAdd(ka4, bq, s);
                    let bo = coopLoad<BM>(&qo[OO + qb + 16u], LDQ);
                    t = coopMultiplyAdd(va4, bo, t);
                }
                if (DT > 5u) {
                    let bq = coopLoad<BM>(&qo[qb + 20u], LDQ);
                    s = coopMultiplyAdd(ka5, bq, s);
                    let bo = coopLoad<BM>(&qo[OO + qb + 20u], LDQ);
                    t = coopMultiplyAdd(va5, bo, t);
                }
                if (DT > 6u) {
                    let bq = coopLoad<BM>(&qo[qb + 24u], LDQ);
                    s = coopMultiplyAdd(ka6, bq, s);
                    let bo = coopLoad<BM>(&qo[OO + qb + 24u], LDQ);
                    t = coopMultiplyAdd(va6, bo, t);
                }
                if (DT > 7u) {
                    let bq = coopLoad<BM>(&qo[qb + 28u], LDQ);
                    s = coopMultiplyAdd(ka7, bq, s);
                    let bo = coopLoad<BM>(&qo[OO + qb + 28u], LDQ);
                    t = coopMultiplyAdd(va7, bo, t);
                }
                // (Pointer and matrix bound by `let` first: naga 30's WGSL front end does not
                // emit a coopStore's argument expressions before the store itself.)
                let sp = &ss[r0 * LDS + j * 4u];
                let sv = s;
                coopStoreT(sv, sp, LDS);
                let tp = &ss[SO + r0 * LDS + j * 4u];
                let tv = t;
                coopStoreT(tv, tp, LDS);
            }
            subgroupBarrier();                   // this subgroup's Sᵀ and dPᵀ rows written
            // 3. Pᵀ and dSᵀ as f16 on this subgroup's rows, for key j = k0 + r and queries
            // i0 + 4·c4 .. +3.
            for (var e = tid % SGS; e < 16u * BQ4; e += SGS) {
                let r = r0 + e / BQ4;
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
            subgroupBarrier();                   // this subgroup's Pᵀ and dSᵀ rows written
            // 4. dV += Pᵀ dO and dK += dSᵀ Q.
            for (var kk = 0u; kk < n_qb; kk++) {
                let pa = coopLoadT<AM>(&pt[r0 * LDP + kk * 4u], LDP);
                let da = coopLoadT<AM>(&pt[PO + r0 * LDP + kk * 4u], LDP);
                let qb = kk * 16u * LDQ;
                if (DT > 0u) {
                    let bo = coopLoadT<BM>(&qo[OO + qb + 0u], LDQ);
                    gv0 = coopMultiplyAdd(pa, bo, gv0);
                    let bq = coopLoadT<BM>(&qo[qb + 0u], LDQ);
                    gk0 = coopMultiplyAdd(da, bq, gk0);
                }
                if (DT > 1u) {
                    let bo = coopLoadT<BM>(&qo[OO + qb + 4u], LDQ);
                    gv1 = coopMultiplyAdd(pa, bo, gv1);
                    let bq = coopLoadT<BM>(&qo[qb + 4u], LDQ);
                    gk1 = coopMultiplyAdd(da, bq, gk1);
                }
                if (DT > 2u) {
                    let bo = coopLoadT<BM>(&qo[OO + qb + 8u], LDQ);
                    gv2 = coopMultiplyAdd(pa, bo, gv2);
                    let bq = coopLoadT<BM>(&qo[qb + 8u], LDQ);
                    gk2 = coopMultiplyAdd(da, bq, gk2);
                }
                if (DT > 3u) {
                    let bo = coopLoadT<BM>(&qo[OO + qb + 12u], LDQ);
                    gv3 = coopMultiplyAdd(pa, bo, gv3);
                    let bq = coopLoadT<BM>(&qo[qb + 12u], LDQ);
                    gk3 = coopMultiplyAdd(da, bq, gk3);
                }
                if (DT > 4u) {
                    let bo = coopLoadT<BM>(&qo[OO + qb + 16u], LDQ);
                    gv4 = coopMultiplyAdd(pa, bo, gv4);
                    let bq = coopLoadT<BM>(&qo[qb + 16u], LDQ);
                    gk4 = coopMultiplyAdd(da, bq, gk4);
                }
                if (DT > 5u) {
                    let bo = coopLoadT<BM>(&qo[OO + qb + 20u], LDQ);
                    gv5 = coopMultiplyAdd(pa, bo, gv5);
                    let bq = coopLoadT<BM>(&qo[qb + 20u], LDQ);
                    gk5 = coopMultiplyAdd(da, bq, gk5);
                }
                if (DT > 6u) {
                    let bo = coopLoadT<BM>(&qo[OO + qb + 24u], LDQ);
                    gv6 = coopMultiplyAdd(pa, bo, gv6);
                    let bq = coopLoadT<BM>(&qo[qb + 24u], LDQ);
                    gk6 = coopMultiplyAdd(da, bq, gk6);
                }
                if (DT > 7u) {
                    let bo = coopLoadT<BM>(&qo[OO + qb + 28u], LDQ);
                    gv7 = coopMultiplyAdd(pa, bo, gv7);
                    let bq = coopLoadT<BM>(&qo[qb + 28u], LDQ);
                    gk7 = coopMultiplyAdd(da, bq, gk7);
                }
            }
        }
    }
    // dK (scaled) and dV through workgroup memory, CW columns at a time: dK in the first half
    // of `ss`, dV in the second.
    let CW = BQ;
    for (var c0 = 0u; c0 < D; c0 += CW) {
        workgroupBarrier();
        if (DT > 0u && 0u >= c0 && 0u < c0 + CW) {
            let sp = &ss[r0 * LDS + 0u - c0 / 4u];
            let sv = gk0;
            coopStoreT(sv, sp, LDS);
        }
        if (DT > 1u && 16u >= c0 && 16u < c0 + CW) {
            let sp = &ss[r0 * LDS + 4u - c0 / 4u];
            let sv = gk1;
            coopStoreT(sv, sp, LDS);
        }
        if (DT > 2u && 32u >= c0 && 32u < c0 + CW) {
            let sp = &ss[r0 * LDS + 8u - c0 / 4u];
            let sv = gk2;
            coopStoreT(sv, sp, LDS);
        }
        if (DT > 3u && 48u >= c0 && 48u < c0 + CW) {
            let sp = &ss[r0 * LDS + 12u - c0 / 4u];
            let sv = gk3;
            coopStoreT(sv, sp, LDS);
        }
        if (DT > 4u && 64u >= c0 && 64u < c0 + CW) {
            let sp = &ss[r0 * LDS + 16u - c0 / 4u];
            let sv = gk4;
            coopStoreT(sv, sp, LDS);
        }
        if (DT > 5u && 80u >= c0 && 80u < c0 + CW) {
            let sp = &ss[r0 * LDS + 20u - c0 / 4u];
            let sv = gk5;
            coopStoreT(sv, sp, LDS);
        }
        if (DT > 6u && 96u >= c0 && 96u < c0 + CW) {
            let sp = &ss[r0 * LDS + 24u - c0 / 4u];
            let sv = gk6;
            coopStoreT(sv, sp, LDS);
        }
        if (DT > 7u && 112u >= c0 && 112u < c0 + CW) {
            let sp = &ss[r0 * LDS + 28u - c0 / 4u];
            let sv = gk7;
            coopStoreT(sv, sp, LDS);
        }
        if (DT > 0u && 0u >= c0 && 0u < c0 + CW) {
            let sp = &ss[SO + r0 * LDS + 0u - c0 / 4u];
            let sv = gv0;
            coopStoreT(sv, sp, LDS);
        }
        if (DT > 1u && 16u >= c0 && 16u < c0 + CW) {
            let sp = &ss[SO + r0 * LDS + 4u - c0 / 4u];
            let sv = gv1;
            coopStoreT(sv, sp, LDS);
        }
        if (DT > 2u && 32u >= c0 && 32u < c0 + CW) {
            let sp = &ss[SO + r0 * LDS + 8u - c0 / 4u];
            let sv = gv2;
            coopStoreT(sv, sp, LDS);
        }
        if (DT > 3u && 48u >= c0 && 48u < c0 + CW) {
            let sp = &ss[SO + r0 * LDS + 12u - c0 / 4u];
            let sv = gv3;
            coopStoreT(sv, sp, LDS);
        }
        if (DT > 4u && 64u >= c0 && 64u < c0 + CW) {
            let sp = &ss[SO + r0 * LDS + 16u - c0 / 4u];
            let sv = gv4;
            coopStoreT(sv, sp, LDS);
        }
        if (DT > 5u && 80u >= c0 && 80u < c0 + CW) {
            let sp = &ss[SO + r0 * LDS + 20u - c0 / 4u];
            let sv = gv5;
            coopStoreT(sv, sp, LDS);
        }
        if (DT > 6u && 96u >= c0 && 96u < c0 + CW) {
            let sp = &ss[SO + r0 * LDS + 24u - c0 / 4u];
            let sv = gv6;
            coopStoreT(sv, sp, LDS);
        }
        if (DT > 7u && 112u >= c0 && 112u < c0 + CW) {
            let sp = &ss[SO + r0 * LDS + 28u - c0 / 4u];
            let sv = gv7;
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
