// Forward on cooperative matrices (tensor cores): O = σ(scale·Q Kᵀ + bias) V with the plan's masks.
// Workgroup memory is held in vec4 elements (8-byte f16 quads, 16-byte f32 quads): staging writes
// one quad per store and the coop loads and stores see vector elements, strides counted in quads.
//
// pipelines.rs assembles `enable f16; enable wgpu_cooperative_matrix;` + storage path + sigmoid.wgsl
// + this file. f16 operands, f32 accumulation; bf16 storage is widened on load and narrowed to f16
// in workgroup memory (exact for |x| in [2^-14, 65504]; smaller magnitudes lose bits as f16
// subnormals, larger overflow), f32 storage is not taken by this kernel (the backend runs the
// scalar kernel for it: an f16 rounding of the inputs would break f32's error bound).
//
// One workgroup of NSG subgroups per (query tile of BQ = 16·RB·NSG rows, query head, sequence);
// each subgroup owns RB blocks of 16 query rows. Its Q rows stay in registers as RB·D/16
// A-matrices. Per tile of BK keys, once K and V (f16) are in workgroup memory (between two
// workgroup barriers), each subgroup on its own rows, with subgroup barriers between the steps
// (no subgroup waits for another inside a tile):
//   1. S = Q Kᵀ by 16×16×16 coop multiply-adds, stored (f32) to `ss`.
//   2. P = σ(scale·S + bias), zero where masked, rounded to f16 into `ps`.
//   3. O += P V into RB·D/16 f32 C-matrices.
// Each B-matrix loaded from workgroup memory (a block of Kᵀ or V) feeds RB multiply-adds; RB = 2
// halves those loads at the cost of registers and subgroups per workgroup (on an H200 it ran
// 1.5–1.7× slower than RB = 1, so the host picks RB = 1 there).
// Each S block is one dependent chain of D/16 multiply-adds; computing the tile's blocks side by
// side (independent accumulators) measured no faster on an H200 (BENCHMARKS.md, sixth session).
// Key tiles past the visible keys (padding, causal) are skipped; partial tiles are masked and
// their K/V rows past the last key are loaded as zeros (NaN in padding cannot reach O). O goes
// out through `ss` in column chunks of BK; rows past rows_q are not written.
//
// Subgroup i is taken to be invocations [i·SGS, (i+1)·SGS): the host runs this kernel only on
// adapters whose subgroup size is fixed (subgroup_min_size == subgroup_max_size == SGS).

override D: u32 = 64u;        // head dim (multiple of 16, at most 16 · 8)
override BK: u32 = 64u;       // keys per tile (multiple of 16)
override NSG: u32 = 4u;       // subgroups per workgroup; BQ = 16 · RB · NSG
override RB: u32 = 1u;        // 16-row blocks per subgroup (1 or 2)
override SGS: u32 = 32u;      // subgroup size
override CAUSAL: bool = false;
override WG: u32 = 128u;      // NSG · SGS
override KV_LEN: u32 = 2304u; // max(2·BK·(D + 8), 24·BQ) / 4  f16 quads
override S_LEN: u32 = 1152u;  // BQ · (BK + 8) / 4           f32 quads
override P_LEN: u32 = 1152u;  // BQ · (BK + 8) / 4           f16 quads

// Quads of one K or V tile that an invocation holds in registers (tile quads / WG, at most this;
// the host checks it).
const PRE_MAX: u32 = 32u;

alias AM = coop_mat16x16<f16, A>;
alias BM = coop_mat16x16<f16, B>;
alias CM = coop_mat16x16<f32, C>;

@group(0) @binding(0) var<uniform> prm: Params;
@group(0) @binding(1) var<storage, read> seqs: array<Seq>;
@group(0) @binding(2) var<storage, read> q: array<Quad>;
@group(0) @binding(3) var<storage, read> k: array<Quad>;
@group(0) @binding(4) var<storage, read> v: array<Quad>;
@group(0) @binding(5) var<storage, read_write> o: array<Quad>;

// Blocks of Q (at the start), then K and V of the current tile (V from BK rows on), row-major
// with a padded row of D + 8.
var<workgroup> kv: array<vec4<f16>, KV_LEN>;
// S (f32) of the tile, row-major with rows of BK + 8 (rows 8 banks apart: the coop store of
// an f32 block writes two floats per invocation on 8 rows at once); O staging at the end.
var<workgroup> ss: array<vec4<f32>, S_LEN>;
// P (f16), row-major with rows of BK + 8.
var<workgroup> ps: array<vec4<f16>, P_LEN>;

// Columns [16·c, 16·c + 16) of the query tile's Q rows to kv as f16, rows of 6 quads, zeros
// past the valid length.
fn stage_q_block(c: u32, tid: u32, qbase: u32, q0: u32, valid: u32) {
    let BQ = NSG * RB * 16u;
    for (var e = tid; e < BQ * 4u; e += WG) {
        let r = e / 4u;
        var x = vec4<f16>(0.0);
        if (q0 + r < valid) {
            x = half_quad(q[qbase + (q0 + r) * prm.q_str.y + 4u * c + e % 4u]);
        }
        kv[r * 6u + e % 4u] = x;
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let D4 = D / 4u;
    let DT = D / 16u;
    let BQ = NSG * RB * 16u;
    // Row strides in quads.
    let LDK = D / 4u + 2u;
    let LDS = BK / 4u + 2u;
    let LDP = BK / 4u + 2u;
    let BK4 = BK / 4u;

    let b = wid.z;
    let h = wid.y;
    let sq = seqs[b];
    let q0 = wid.x * BQ;
    if (q0 >= sq.rows_q) {
        return;
    }
    let kvh = h / prm.group;
    let qbase = head_base(prm.q_str, b, sq.q_start, h);
    let kbase = head_base(prm.k_str, b, sq.k_start, kvh);
    let vbase = head_base(prm.v_str, b, sq.k_start, kvh);
    let obase = head_base(prm.o_str, b, sq.q_start, h);

    let kend = visible_keys(sq, q0, BQ, CAUSAL);
    let sg = tid / SGS;
    let r0 = sg * RB * 16u;    // the subgroup's first row; its second block starts at r1
    let r1 = r0 + 16u;
    let scale = prm.scale;
    let bias = sq.bias;

    // Q rows to registers, through workgroup memory, 16 columns at a time (rows of 6 quads):
    // staged so, a Q row takes 24 halves instead of D + 8, and workgroups of 256 rows fit
    // 48 KiB at D = 128.
    var qa0 = AM();
    var qa1 = AM();
    var qa2 = AM();
    var qa3 = AM();
    var qa4 = AM();
    var qa5 = AM();
    var qa6 = AM();
    var qa7 = AM();
    var qb0 = AM();
    var qb1 = AM();
    var qb2 = AM();
    var qb3 = AM();
    var qb4 = AM();
    var qb5 = AM();
    var qb6 = AM();
    var qb7 = AM();
    if (DT > 0u) {
        stage_q_block(0u, tid, qbase, q0, sq.len_q);
        workgroupBarrier();
        qa0 = coopLoadT<AM>(&kv[r0 * 6u], 6u);
        if (RB > 1u) { qb0 = coopLoadT<AM>(&kv[r1 * 6u], 6u); }
    }
    if (DT > 1u) {
        workgroupBarrier();          // the block before fully read
        stage_q_block(1u, tid, qbase, q0, sq.len_q);
        workgroupBarrier();
        qa1 = coopLoadT<AM>(&kv[r0 * 6u], 6u);
        if (RB > 1u) { qb1 = coopLoadT<AM>(&kv[r1 * 6u], 6u); }
    }
    if (DT > 2u) {
        workgroupBarrier();          // the block before fully read
        stage_q_block(2u, tid, qbase, q0, sq.len_q);
        workgroupBarrier();
        qa2 = coopLoadT<AM>(&kv[r0 * 6u], 6u);
        if (RB > 1u) { qb2 = coopLoadT<AM>(&kv[r1 * 6u], 6u); }
    }
    if (DT > 3u) {
        workgroupBarrier();          // the block before fully read
        stage_q_block(3u, tid, qbase, q0, sq.len_q);
        workgroupBarrier();
        qa3 = coopLoadT<AM>(&kv[r0 * 6u], 6u);
        if (RB > 1u) { qb3 = coopLoadT<AM>(&kv[r1 * 6u], 6u); }
    }
    if (DT > 4u) {
        workgroupBarrier();          // the block before fully read
        stage_q_block(4u, tid, qbase, q0, sq.len_q);
        workgroupBarrier();
        qa4 = coopLoadT<AM>(&kv[r0 * 6u], 6u);
        if (RB > 1u) { qb4 = coopLoadT<AM>(&kv[r1 * 6u], 6u); }
    }
    if (DT > 5u) {
        workgroupBarrier();          // the block before fully read
        stage_q_block(5u, tid, qbase, q0, sq.len_q);
        workgroupBarrier();
        qa5 = coopLoadT<AM>(&kv[r0 * 6u], 6u);
        if (RB > 1u) { qb5 = coopLoadT<AM>(&kv[r1 * 6u], 6u); }
    }
    if (DT > 6u) {
        workgroupBarrier();          // the block before fully read
        stage_q_block(6u, tid, qbase, q0, sq.len_q);
        workgroupBarrier();
        qa6 = coopLoadT<AM>(&kv[r0 * 6u], 6u);
        if (RB > 1u) { qb6 = coopLoadT<AM>(&kv[r1 * 6u], 6u); }
    }
    if (DT > 7u) {
        workgroupBarrier();          // the block before fully read
        stage_q_block(7u, tid, qbase, q0, sq.len_q);
        workgroupBarrier();
        qa7 = coopLoadT<AM>(&kv[r0 * 6u], 6u);
        if (RB > 1u) { qb7 = coopLoadT<AM>(&kv[r1 * 6u], 6u); }
    }
    var o0 = CM();
    var o1 = CM();
    var o2 = CM();
    var o3 = CM();
    var o4 = CM();
    var o5 = CM();
    var o6 = CM();
    var o7 = CM();
    var p0 = CM();
    var p1 = CM();
    var p2 = CM();
    var p3 = CM();
    var p4 = CM();
    var p5 = CM();
    var p6 = CM();
    var p7 = CM();

    let n_kt = (kend + BK - 1u) / BK;
    // K and V of a tile sit side by side in `kv` (V from VOFF), so that one barrier pair per
    // tile suffices: each subgroup then computes S, P and P V on its own rows, synchronising
    // only with itself. K and V of the next tile are loaded into registers (raw storage quads,
    // converted when stored; quad tid + i·WG of the tile in element i, zeros past the visible
    // keys) while this one is computed.
    let VOFF = BK * LDK;
    let n_pre = min((BK * D4 + WG - 1u) / WG, PRE_MAX);
    var pk: array<Quad, PRE_MAX>;
    var pv: array<Quad, PRE_MAX>;
    if (n_kt > 0u) {
        let kn0 = min(BK, kend);
        for (var i = 0u; i < n_pre; i++) {
            let e = tid + i * WG;
            var x = Quad();
            var y = Quad();
            if (e < BK * D4 && e / D4 < kn0) {
                x = k[kbase + (e / D4) * prm.k_str.y + e % D4];
                y = v[vbase + (e / D4) * prm.v_str.y + e % D4];
            }
            pk[i] = x;
            pv[i] = y;
        }
    }
    let lane = tid % SGS;
    for (var kt = 0u; kt < n_kt; kt++) {
        let k0 = kt * BK;
        let kn = min(BK, kend - k0);      // visible keys in this tile
        workgroupBarrier();               // Q / the last tile's K and V fully read
        for (var i = 0u; i < n_pre; i++) {
            let e = tid + i * WG;
            if (e < BK * D4) {
                kv[(e / D4) * LDK + e % D4] = half_quad(pk[i]);
                kv[VOFF + (e / D4) * LDK + e % D4] = half_quad(pv[i]);
            }
        }
        if (kt + 1u < n_kt) {
            let kn1 = min(BK, kend - k0 - BK);
            for (var i = 0u; i < n_pre; i++) {
                let e = tid + i * WG;
                var x = Quad();
                var y = Quad();
                if (e < BK * D4 && e / D4 < kn1) {
                    x = k[kbase + (k0 + BK + e / D4) * prm.k_str.y + e % D4];
                    y = v[vbase + (k0 + BK + e / D4) * prm.v_str.y + e % D4];
                }
                pk[i] = x;
                pv[i] = y;
            }
        }
        workgroupBarrier();               // K and V of this tile written
        // 1. S = Q Kᵀ, one 16×16 block of keys at a time.
        for (var j = 0u; j < BK / 16u; j++) {
            var s = CM();
            var t = CM();
            let kb = j * 16u * LDK;
            if (DT > 0u) {
                let bm = coopLoad<BM>(&kv[kb + 0u], LDK);
                s = coopMultiplyAdd(qa0, bm, s);
                if (RB > 1u) { t = coopMultiplyAdd(qb0, bm, t); }
            }
            if (DT > 1u) {
                let bm = coopLoad<BM>(&kv[kb + 4u], LDK);
                s = coopMultiplyAdd(qa1, bm, s);
                if (RB > 1u) { t = coopMultiplyAdd(qb1, bm, t); }
            }
            if (DT > 2u) {
                let bm = coopLoad<BM>(&kv[kb + 8u], LDK);
                s = coopMultiplyAdd(qa2, bm, s);
                if (RB > 1u) { t = coopMultiplyAdd(qb2, bm, t); }
            }
            if (DT > 3u) {
                let bm = coopLoad<BM>(&kv[kb + 12u], LDK);
                s = coopMultiplyAdd(qa3, bm, s);
                if (RB > 1u) { t = coopMultiplyAdd(qb3, bm, t); }
            }
            if (DT > 4u) {
                let bm = coopLoad<BM>(&kv[kb + 16u], LDK);
                s = coopMultiplyAdd(qa4, bm, s);
                if (RB > 1u) { t = coopMultiplyAdd(qb4, bm, t); }
            }
            if (DT > 5u) {
                let bm = coopLoad<BM>(&kv[kb + 20u], LDK);
                s = coopMultiplyAdd(qa5, bm, s);
                if (RB > 1u) { t = coopMultiplyAdd(qb5, bm, t); }
            }
            if (DT > 6u) {
                let bm = coopLoad<BM>(&kv[kb + 24u], LDK);
                s = coopMultiplyAdd(qa6, bm, s);
                if (RB > 1u) { t = coopMultiplyAdd(qb6, bm, t); }
            }
            if (DT > 7u) {
                let bm = coopLoad<BM>(&kv[kb + 28u], LDK);
                s = coopMultiplyAdd(qa7, bm, s);
                if (RB > 1u) { t = coopMultiplyAdd(qb7, bm, t); }
            }
            // (The pointer and the matrix are bound by `let` first: naga 30's WGSL front end
            // does not emit a coopStore's argument expressions before the store itself.)
            let sp = &ss[r0 * LDS + j * 4u];
            let sv = s;
            coopStoreT(sv, sp, LDS);
            if (RB > 1u) {
                let tp = &ss[r1 * LDS + j * 4u];
                let tv = t;
                coopStoreT(tv, tp, LDS);
            }
        }
        subgroupBarrier();                // this subgroup's S rows written
        // 2. P = σ(scale·S + bias) on this subgroup's rows, masked, as f16 (no masks on a tile
        // whose keys and rows are all valid and visible).
        let whole = k0 + BK <= sq.len_k && q0 + BQ <= sq.len_q && (!CAUSAL || k0 + BK <= q0 + 1u);
        for (var e = lane; whole && e < RB * 16u * BK4; e += SGS) {
            let i = r0 + e / BK4;
            let j4 = e % BK4;
            ps[i * LDP + j4] = vec4<f16>(sigmoid4_of(ss[i * LDS + j4], scale, bias));
        }
        for (var e = lane; !whole && e < RB * 16u * BK4; e += SGS) {
            let i = r0 + e / BK4;
            let j4 = e % BK4;
            let sv = ss[i * LDS + j4];
            let jv = vec4<u32>(k0 + j4 * 4u) + vec4<u32>(0u, 1u, 2u, 3u);
            let iv = vec4<u32>(q0 + i);
            var ok = (jv < vec4<u32>(sq.len_k)) & (iv < vec4<u32>(sq.len_q));
            if (CAUSAL) {
                ok = ok & (jv <= iv);
            }
            let p = select(vec4<f32>(0.0), sigmoid4_of(sv, scale, bias), ok);
            ps[i * LDP + j4] = vec4<f16>(p);
        }
        subgroupBarrier();                // this subgroup's P rows written
        // 3. O += P V over the 16-key blocks that hold visible keys.
        let n_kb = (kn + 15u) / 16u;
        for (var kk = 0u; kk < n_kb; kk++) {
            let a = coopLoadT<AM>(&ps[r0 * LDP + kk * 4u], LDP);
            var a1 = AM();
            if (RB > 1u) {
                a1 = coopLoadT<AM>(&ps[r1 * LDP + kk * 4u], LDP);
            }
            let vb = VOFF + kk * 16u * LDK;
            if (DT > 0u) {
                let bm = coopLoadT<BM>(&kv[vb + 0u], LDK);
                o0 = coopMultiplyAdd(a, bm, o0);
                if (RB > 1u) { p0 = coopMultiplyAdd(a1, bm, p0); }
            }
            if (DT > 1u) {
                let bm = coopLoadT<BM>(&kv[vb + 4u], LDK);
                o1 = coopMultiplyAdd(a, bm, o1);
                if (RB > 1u) { p1 = coopMultiplyAdd(a1, bm, p1); }
            }
            if (DT > 2u) {
                let bm = coopLoadT<BM>(&kv[vb + 8u], LDK);
                o2 = coopMultiplyAdd(a, bm, o2);
                if (RB > 1u) { p2 = coopMultiplyAdd(a1, bm, p2); }
            }
            if (DT > 3u) {
                let bm = coopLoadT<BM>(&kv[vb + 12u], LDK);
                o3 = coopMultiplyAdd(a, bm, o3);
                if (RB > 1u) { p3 = coopMultiplyAdd(a1, bm, p3); }
            }
            if (DT > 4u) {
                let bm = coopLoadT<BM>(&kv[vb + 16u], LDK);
                o4 = coopMultiplyAdd(a, bm, o4);
                if (RB > 1u) { p4 = coopMultiplyAdd(a1, bm, p4); }
            }
            if (DT > 5u) {
                let bm = coopLoadT<BM>(&kv[vb + 20u], LDK);
                o5 = coopMultiplyAdd(a, bm, o5);
                if (RB > 1u) { p5 = coopMultiplyAdd(a1, bm, p5); }
            }
            if (DT > 6u) {
                let bm = coopLoadT<BM>(&kv[vb + 24u], LDK);
                o6 = coopMultiplyAdd(a, bm, o6);
                if (RB > 1u) { p6 = coopMultiplyAdd(a1, bm, p6); }
            }
            if (DT > 7u) {
                let bm = coopLoadT<BM>(&kv[vb + 28u], LDK);
                o7 = coopMultiplyAdd(a, bm, o7);
                if (RB > 1u) { p7 = coopMultiplyAdd(a1, bm, p7); }
            }
        }
    }
    // O through workgroup memory, BK columns at a time. Rows past the valid length hold zeros
    // (P was masked); rows past rows_q are not ours.
    for (var c0 = 0u; c0 < D; c0 += BK) {
        workgroupBarrier();
        if (DT > 0u && 0u >= c0 && 0u < c0 + BK) {
            let op = &ss[r0 * LDS + 0u - c0 / 4u];
            let ov = o0;
            coopStoreT(ov, op, LDS);
            if (RB > 1u) {
                let pp = &ss[r1 * LDS + 0u - c0 / 4u];
                let pv = p0;
                coopStoreT(pv, pp, LDS);
            }
        }
        if (DT > 1u && 16u >= c0 && 16u < c0 + BK) {
            let op = &ss[r0 * LDS + 4u - c0 / 4u];
            let ov = o1;
            coopStoreT(ov, op, LDS);
            if (RB > 1u) {
                let pp = &ss[r1 * LDS + 4u - c0 / 4u];
                let pv = p1;
                coopStoreT(pv, pp, LDS);
            }
        }
        if (DT > 2u && 32u >= c0 && 32u < c0 + BK) {
            let op = &ss[r0 * LDS + 8u - c0 / 4u];
            let ov = o2;
            coopStoreT(ov, op, LDS);
            if (RB > 1u) {
                let pp = &ss[r1 * LDS + 8u - c0 / 4u];
                let pv = p2;
                coopStoreT(pv, pp, LDS);
            }
        }
        if (DT > 3u && 48u >= c0 && 48u < c0 + BK) {
            let op = &ss[r0 * LDS + 12u - c0 / 4u];
            let ov = o3;
            coopStoreT(ov, op, LDS);
            if (RB > 1u) {
                let pp = &ss[r1 * LDS + 12u - c0 / 4u];
                let pv = p3;
                coopStoreT(pv, pp, LDS);
            }
        }
        if (DT > 4u && 64u >= c0 && 64u < c0 + BK) {
            let op = &ss[r0 * LDS + 16u - c0 / 4u];
            let ov = o4;
            coopStoreT(ov, op, LDS);
            if (RB > 1u) {
                let pp = &ss[r1 * LDS + 16u - c0 / 4u];
                let pv = p4;
                coopStoreT(pv, pp, LDS);
            }
        }
        if (DT > 5u && 80u >= c0 && 80u < c0 + BK) {
            let op = &ss[r0 * LDS + 20u - c0 / 4u];
            let ov = o5;
            coopStoreT(ov, op, LDS);
            if (RB > 1u) {
                let pp = &ss[r1 * LDS + 20u - c0 / 4u];
                let pv = p5;
                coopStoreT(pv, pp, LDS);
            }
        }
        if (DT > 6u && 96u >= c0 && 96u < c0 + BK) {
            let op = &ss[r0 * LDS + 24u - c0 / 4u];
            let ov = o6;
            coopStoreT(ov, op, LDS);
            if (RB > 1u) {
                let pp = &ss[r1 * LDS + 24u - c0 / 4u];
                let pv = p6;
                coopStoreT(pv, pp, LDS);
            }
        }
        if (DT > 7u && 112u >= c0 && 112u < c0 + BK) {
            let op = &ss[r0 * LDS + 28u - c0 / 4u];
            let ov = o7;
            coopStoreT(ov, op, LDS);
            if (RB > 1u) {
                let pp = &ss[r1 * LDS + 28u - c0 / 4u];
                let pv = p7;
                coopStoreT(pv, pp, LDS);
            }
        }
        workgroupBarrier();
        let cw4 = min(BK, D - c0) / 4u;
        for (var e = tid; e < BQ * cw4; e += WG) {
            let i = e / cw4;
            let c4 = e % cw4;
            if (q0 + i < sq.rows_q) {
                let x = ss[i * LDS + c4];
                o[obase + (q0 + i) * prm.o_str.y + c0 / 4u + c4] = store_quad(x);
            }
        }
    }
}
