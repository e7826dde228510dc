// Backward on cooperative matrices, query side: dQ = scale · dS K, with S = Q Kᵀ and
// dP = dO Vᵀ recomputed and dS = dP·P·(1−P). No pre-pass: sigmoid attention needs no row
// statistics, so this kernel and bwd_dkdv_coop.wgsl are independent.
//
// pipelines.rs assembles `enable f16; enable wgpu_cooperative_matrix;` + storage path +
// sigmoid.wgsl + this file. f16 operands, f32 accumulation, bf16 storage converted on load (as
// fwd_coop.wgsl; the host runs the scalar kernels for f32 storage).
//
// One workgroup of NSG subgroups per (query tile of BQ = 16·NSG rows, query head, sequence);
// each subgroup owns 16 query rows, whose Q and dO stay in registers as D/16 A-matrices each,
// and accumulates their dQ in D/16 f32 C-matrices. Per tile of BK keys:
//   1. K and V (f16) to workgroup memory.
//   2. S = Q Kᵀ and dP = dO Vᵀ (16×16×16 multiply-adds), stored (f32) to `ss`.
//   3. dS = dP·P·(1−P), zero where masked, rounded to f16 into `ps` (each subgroup on its own
//      rows, between subgroup barriers).
//   4. dQ += dS K over the 16-key blocks that hold visible keys.
// Key tiles past the visible keys (padding, causal) are skipped. dQ goes out through `ss` in
// column chunks of BK; rows past rows_q are not written.
//
// Subgroup i is taken to be invocations [i·SGS, (i+1)·SGS): the host runs this kernel only on
// adapters whose subgroup size is fixed.

override D: u32 = 64u;        // head dim (multiple of 16, at most 16 · 8)
override BK: u32 = 32u;       // keys per tile (multiple of 16)
override NSG: u32 = 4u;       // subgroups per workgroup; BQ = 16 · NSG
override SGS: u32 = 32u;      // subgroup size
override CAUSAL: bool = false;
override WG: u32 = 128u;      // NSG · SGS
override KV_LEN: u32 = 1152u; // max(2·BK·(D + 8), 2·BQ·24) / 4  f16 quads
override S_LEN: u32 = 1280u;  // 2 · BQ · (BK + 8) / 4         f32 quads
override P_LEN: u32 = 640u;   // BQ · (BK + 8) / 4             f16 quads

// Quads of one K (and of one V) tile that an invocation holds in registers (tile quads / WG, at
// most this; the host checks it).
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
@group(0) @binding(6) var<storage, read_write> dq: array<Quad>;

// K (rows 0..BK) and V (rows BK..2·BK) of the key tile, rows of D + 8; blocks of Q and dO of
// the query tile at the start.
var<workgroup> kv: array<vec4<f16>, KV_LEN>;
// S (rows 0..BQ) and dP (rows BQ..2·BQ), f32, rows of BK + 8; dQ staging at the end.
var<workgroup> ss: array<vec4<f32>, S_LEN>;
// dS (f16), rows of BK + 8.
var<workgroup> ps: array<vec4<f16>, P_LEN>;

// Columns [16·c, 16·c + 16) of the query tile's Q rows (staged rows 0..BQ) and dO rows (rows
// BQ..2·BQ) to kv as f16, rows of 6 quads, zeros at or past `valid`: 16 columns at a time,
// staging takes little room, and 128 query rows per workgroup fit 48 KiB at D = 128.
fn stage_qo_block(c: u32, tid: u32, qbase: u32, obase: u32, row0: u32, valid: u32) {
    let BQ = NSG * 16u;
    for (var e = tid; e < 2u * BQ * 4u; e += WG) {
        let r = e / 4u;
        let i = row0 + r % BQ;
        let c4 = 4u * c + e % 4u;
        var x = vec4<f16>(0.0);
        if (i < valid) {
            if (r < BQ) {
                x = half_quad(q[qbase + i * prm.q_str.y + c4]);
            } else {
                x = half_quad(d_o[obase + i * prm.o_str.y + c4]);
            }
        }
        kv[r * 6u + e % 4u] = x;
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let D4 = D / 4u;
    let DT = D / 16u;
    let BQ = NSG * 16u;
    let BK4 = BK / 4u;
    // Row strides in quads, and the offsets of the second halves.
    let LDK = D4 + 2u;
    let LDS = BK4 + 2u;
    let LDP = BK4 + 2u;
    let VO = BK * LDK;
    let SO = BQ * LDS;

    let b = wid.z;
    let h = wid.y;
    let sq = seqs[b];
    let q0 = wid.x * BQ;
    if (q0 >= sq.rows_q) {
        return;
    }
    let kvh = h / prm.group;
    let qbase = head_base(prm.q_str, b, sq.q_start, h);
    let obase = head_base(prm.o_str, b, sq.q_start, h);
    let kbase = head_base(prm.k_str, b, sq.k_start, kvh);
    let vbase = head_base(prm.v_str, b, sq.k_start, kvh);

    let kend = visible_keys(sq, q0, BQ, CAUSAL);
    let sg = tid / SGS;
    let r0 = sg * 16u;
    let scale = prm.scale;
    let bias = sq.bias;

    // Q and dO rows to registers, through workgroup memory, 16 columns at a time.
    var qa0 = AM();
    var qa1 = AM();
    var qa2 = AM();
    var qa3 = AM();
    var qa4 = AM();
    var qa5 = AM();
    var qa6 = AM();
    var qa7 = AM();
    var oa0 = AM();
    var oa1 = AM();
    var oa2 = AM();
    var oa3 = AM();
    var oa4 = AM();
    var oa5 = AM();
    var oa6 = AM();
    var oa7 = AM();
    if (DT > 0u) {
        stage_qo_block(0u, tid, qbase, obase, q0, sq.len_q);
        workgroupBarrier();
        qa0 = coopLoadT<AM>(&kv[r0 * 6u], 6u);
        oa0 = coopLoadT<AM>(&kv[(BQ + r0) * 6u], 6u);
    }
    if (DT > 1u) {
        workgroupBarrier();          // the block before fully read
        stage_qo_block(1u, tid, qbase, obase, q0, sq.len_q);
        workgroupBarrier();
        qa1 = coopLoadT<AM>(&kv[r0 * 6u], 6u);
        oa1 = coopLoadT<AM>(&kv[(BQ + r0) * 6u], 6u);
    }
    if (DT > 2u) {
        workgroupBarrier();          // the block before fully read
        stage_qo_block(2u, tid, qbase, obase, q0, sq.len_q);
        workgroupBarrier();
        qa2 = coopLoadT<AM>(&kv[r0 * 6u], 6u);
        oa2 = coopLoadT<AM>(&kv[(BQ + r0) * 6u], 6u);
    }
    if (DT > 3u) {
        workgroupBarrier();          // the block before fully read
        stage_qo_block(3u, tid, qbase, obase, q0, sq.len_q);
        workgroupBarrier();
        qa3 = coopLoadT<AM>(&kv[r0 * 6u], 6u);
        oa3 = coopLoadT<AM>(&kv[(BQ + r0) * 6u], 6u);
    }
    if (DT > 4u) {
        workgroupBarrier();          // the block before fully read
        stage_qo_block(4u, tid, qbase, obase, q0, sq.len_q);
        workgroupBarrier();
        qa4 = coopLoadT<AM>(&kv[r0 * 6u], 6u);
        oa4 = coopLoadT<AM>(&kv[(BQ + r0) * 6u], 6u);
    }
    if (DT > 5u) {
        workgroupBarrier();          // the block before fully read
        stage_qo_block(5u, tid, qbase, obase, q0, sq.len_q);
        workgroupBarrier();
        qa5 = coopLoadT<AM>(&kv[r0 * 6u], 6u);
        oa5 = coopLoadT<AM>(&kv[(BQ + r0) * 6u], 6u);
    }
    if (DT > 6u) {
        workgroupBarrier();          // the block before fully read
        stage_qo_block(6u, tid, qbase, obase, q0, sq.len_q);
        workgroupBarrier();
        qa6 = coopLoadT<AM>(&kv[r0 * 6u], 6u);
        oa6 = coopLoadT<AM>(&kv[(BQ + r0) * 6u], 6u);
    }
    if (DT > 7u) {
        workgroupBarrier();          // the block before fully read
        stage_qo_block(7u, tid, qbase, obase, q0, sq.len_q);
        workgroupBarrier();
        qa7 = coopLoadT<AM>(&kv[r0 * 6u], 6u);
        oa7 = coopLoadT<AM>(&kv[(BQ + r0) * 6u], 6u);
    }

    var gq0 = CM();
    var gq1 = CM();
    var gq2 = CM();
    var gq3 = CM();
    var gq4 = CM();
    var gq5 = CM();
    var gq6 = CM();
    var gq7 = CM();

    let n_kt = (kend + BK - 1u) / BK;
    // K and V reach workgroup memory through registers one tile ahead: the loads of tile kt + 1
    // are in flight during tile kt's products. `pk`/`pv` hold the raw storage quads (quad
    // tid + i·WG of the tile in element i), zeros past the visible keys.
    let n_pre = min((BK * D4 + WG - 1u) / WG, PRE_MAX);
    var pk: array<Quad, PRE_MAX>;
    var pv: array<Quad, PRE_MAX>;
    if (n_kt > 0u) {
        let kn0 = min(BK, kend);
        for (var i = 0u; i < n_pre; i++) {
            let e = tid + i * WG;
            var xk = Quad();
            var xv = Quad();
            if (e < BK * D4 && e / D4 < kn0) {
                xk = k[kbase + (e / D4) * prm.k_str.y + e % D4];
                xv = v[vbase + (e / D4) * prm.v_str.y + e % D4];
            }
            pk[i] = xk;
            pv[i] = xv;
        }
    }
    for (var kt = 0u; kt < n_kt; kt++) {
        let k0 = kt * BK;
        let kn = min(BK, kend - k0);      // visible keys in this tile
        let n_kb = (kn + 15u) / 16u;
        workgroupBarrier();               // dO / the last tile's K fully read
        // 1. K and V of the tile (zeros past the visible keys), then the next tile's loads.
        for (var i = 0u; i < n_pre; i++) {
            let e = tid + i * WG;
            if (e < BK * D4) {
                let at = (e / D4) * LDK + e % D4;
                kv[at] = half_quad(pk[i]);
                kv[VO + at] = half_quad(pv[i]);
            }
        }
        if (kt + 1u < n_kt) {
            let kn1 = min(BK, kend - k0 - BK);
            for (var i = 0u; i < n_pre; i++) {
                let e = tid + i * WG;
                var xk = Quad();
                var xv = Quad();
                if (e < BK * D4 && e / D4 < kn1) {
                    xk = k[kbase + (k0 + BK + e / D4) * prm.k_str.y + e % D4];
                    xv = v[vbase + (k0 + BK + e / D4) * prm.v_str.y + e % D4];
                }
                pk[i] = xk;
                pv[i] = xv;
            }
        }
        workgroupBarrier();
        // 2. S = Q Kᵀ and dP = dO Vᵀ, one block of 16 keys at a time.
        for (var j = 0u; j < n_kb; j++) {
            var s = CM();
            var t = CM();
            let kb = j * 16u * LDK;
            if (DT > 0u) {
                let bk = coopLoad<BM>(&kv[kb + 0u], LDK);
                s = coopMultiplyAdd(qa0, bk, s);
                let bv = coopLoad<BM>(&kv[VO + kb + 0u], LDK);
                t = coopMultiplyAdd(oa0, bv, t);
            }
            if (DT > 1u) {
                let bk = coopLoad<BM>(&kv[kb + 4u], LDK);
                s = coopMultiplyAdd(qa1, bk, s);
                let bv = coopLoad<BM>(&kv[VO + kb + 4u], LDK);
                t = coopMultiplyAdd(oa1, bv, t);
            }
            if (DT > 2u) {
                let bk = coopLoad<BM>(&kv[kb + 8u], LDK);
                s = coopMultiplyAdd(qa2, bk, s);
                let bv = coopLoad<BM>(&kv[VO + kb + 8u], LDK);
                t = coopMultiplyAdd(oa2, bv, t);
            }
            if (DT > 3u) {
                let bk = coopLoad<BM>(&kv[kb + 12u], LDK);
                s = coopMultiplyAdd(qa3, bk, s);
                let bv = coopLoad<BM>(&kv[VO + kb + 12u], LDK);
                t = coopMultiplyAdd(oa3, bv, t);
            }
            if (DT > 4u) {
                let bk = coopLoad<BM>(&kv[kb + 16u], LDK);
                s = coopMultiplyAdd(qa4, bk, s);
                let bv = coopLoad<BM>(&kv[VO + kb + 16u], LDK);
                t = coopMultiplyAdd(oa4, bv, t);
            }
            if (DT > 5u) {
                let bk = coopLoad<BM>(&kv[kb + 20u], LDK);
                s = coopMultiplyAdd(qa5, bk, s);
                let bv = coopLoad<BM>(&kv[VO + kb + 20u], LDK);
                t = coopMultiplyAdd(oa5, bv, t);
            }
            if (DT > 6u) {
                let bk = coopLoad<BM>(&kv[kb + 24u], LDK);
                s = coopMultiplyAdd(qa6, bk, s);
                let bv = coopLoad<BM>(&kv[VO + kb + 24u], LDK);
                t = coopMultiplyAdd(oa6, bv, t);
            }
            if (DT > 7u) {
                let bk = coopLoad<BM>(&kv[kb + 28u], LDK);
                s = coopMultiplyAdd(qa7, bk, s);
                let bv = coopLoad<BM>(&kv[VO + kb + 28u], LDK);
                t = coopMultiplyAdd(oa7, bv, t);
            }
            // (Pointer and matrix bound by `let` first: naga 30's WGSL front end does not emit
            // a coopStore's argument expressions before the store itself.)
            let sp = &ss[r0 * LDS + j * 4u];
            let sv = s;
            coopStoreT(sv, sp, LDS);
            let tp = &ss[SO + r0 * LDS + j * 4u];
            let tv = t;
            coopStoreT(tv, tp, LDS);
        }
        subgroupBarrier();                // this subgroup's S and dP rows written
        // 3. dS as f16 on this subgroup's rows, for query i = q0 + r and keys k0 + 4·c4 .. +3.
        for (var e = tid % SGS; e < 16u * BK4; e += SGS) {
            let r = r0 + e / BK4;
            let c4 = e % BK4;
            let jv = vec4<u32>(k0 + c4 * 4u) + vec4<u32>(0u, 1u, 2u, 3u);
            let iv = vec4<u32>(q0 + r);
            var ok = (jv < vec4<u32>(sq.len_k)) & (iv < vec4<u32>(sq.len_q));
            if (CAUSAL) {
                ok = ok & (jv <= iv);
            }
            // Blocks past n_kb were not computed: `select` keeps their stale values out.
            let p = sigmoid4_of(ss[r * LDS + c4], scale, bias);
            let ds = select(vec4<f32>(0.0), ss[SO + r * LDS + c4] * p * (1.0 - p), ok);
            ps[r * LDP + c4] = vec4<f16>(ds);
        }
        subgroupBarrier();                // this subgroup's dS rows written
        // 4. dQ += dS K.
        for (var kk = 0u; kk < n_kb; kk++) {
            let a = coopLoadT<AM>(&ps[r0 * LDP + kk * 4u], LDP);
            let kb = kk * 16u * LDK;
            if (DT > 0u) {
                let bk = coopLoadT<BM>(&kv[kb + 0u], LDK);
                gq0 = coopMultiplyAdd(a, bk, gq0);
            }
            if (DT > 1u) {
                let bk = coopLoadT<BM>(&kv[kb + 4u], LDK);
                gq1 = coopMultiplyAdd(a, bk, gq1);
            }
            if (DT > 2u) {
                let bk = coopLoadT<BM>(&kv[kb + 8u], LDK);
                gq2 = coopMultiplyAdd(a, bk, gq2);
            }
            if (DT > 3u) {
                let bk = coopLoadT<BM>(&kv[kb + 12u], LDK);
                gq3 = coopMultiplyAdd(a, bk, gq3);
            }
            if (DT > 4u) {
                let bk = coopLoadT<BM>(&kv[kb + 16u], LDK);
                gq4 = coopMultiplyAdd(a, bk, gq4);
            }
            if (DT > 5u) {
                let bk = coopLoadT<BM>(&kv[kb + 20u], LDK);
                gq5 = coopMultiplyAdd(a, bk, gq5);
            }
            if (DT > 6u) {
                let bk = coopLoadT<BM>(&kv[kb + 24u], LDK);
                gq6 = coopMultiplyAdd(a, bk, gq6);
            }
            if (DT > 7u) {
                let bk = coopLoadT<BM>(&kv[kb + 28u], LDK);
                gq7 = coopMultiplyAdd(a, bk, gq7);
            }
        }
    }
    // dQ (scaled) through workgroup memory, CW columns at a time.
    let CW = BK;
    for (var c0 = 0u; c0 < D; c0 += CW) {
        workgroupBarrier();
        if (DT > 0u && 0u >= c0 && 0u < c0 + CW) {
            let sp = &ss[r0 * LDS + 0u - c0 / 4u];
            let sv = gq0;
            coopStoreT(sv, sp, LDS);
        }
        if (DT > 1u && 16u >= c0 && 16u < c0 + CW) {
            let sp = &ss[r0 * LDS + 4u - c0 / 4u];
            let sv = gq1;
            coopStoreT(sv, sp, LDS);
        }
        if (DT > 2u && 32u >= c0 && 32u < c0 + CW) {
            let sp = &ss[r0 * LDS + 8u - c0 / 4u];
            let sv = gq2;
            coopStoreT(sv, sp, LDS);
        }
        if (DT > 3u && 48u >= c0 && 48u < c0 + CW) {
            let sp = &ss[r0 * LDS + 12u - c0 / 4u];
            let sv = gq3;
            coopStoreT(sv, sp, LDS);
        }
        if (DT > 4u && 64u >= c0 && 64u < c0 + CW) {
            let sp = &ss[r0 * LDS + 16u - c0 / 4u];
            let sv = gq4;
            coopStoreT(sv, sp, LDS);
        }
        if (DT > 5u && 80u >= c0 && 80u < c0 + CW) {
            let sp = &ss[r0 * LDS + 20u - c0 / 4u];
            let sv = gq5;
            coopStoreT(sv, sp, LDS);
        }
        if (DT > 6u && 96u >= c0 && 96u < c0 + CW) {
            let sp = &ss[r0 * LDS + 24u - c0 / 4u];
            let sv = gq6;
            coopStoreT(sv, sp, LDS);
        }
        if (DT > 7u && 112u >= c0 && 112u < c0 + CW) {
            let sp = &ss[r0 * LDS + 28u - c0 / 4u];
            let sv = gq7;
            coopStoreT(sv, sp, LDS);
        }
        workgroupBarrier();
        let cw4 = min(CW, D - c0) / 4u;
        for (var e = tid; e < BQ * cw4; e += WG) {
            let r = e / cw4;
            let c4 = e % cw4;
            if (q0 + r < sq.rows_q) {
                dq[qbase + (q0 + r) * prm.q_str.y + c0 / 4u + c4] = store_quad(scale * ss[r * LDS + c4]);
            }
        }
    }
}
