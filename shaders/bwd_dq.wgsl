// Backward, query side: dQ = scale · dS K, with S and dP = dO Vᵀ recomputed and
// dS = dP ⊙ P ⊙ (1 − P). No pre-pass: sigmoid attention needs no row statistics.
//
// One workgroup per (query tile of BQ rows, query head, sequence); same tiling as fwd.wgsl:
//   1. S = Q Kᵀ and dP = dO Vᵀ over head-dim chunks of DC (four chunks staged transposed).
//   2. dS, zero where masked, to workgroup memory as [key][row].
//   3. dQ += dS K over key chunks of KC.

override D: u32 = 64u;
override BQ: u32 = 64u;
override BK: u32 = 64u;
override TM: u32 = 8u;
override TN: u32 = 4u;
override DC: u32 = 16u;
override KC: u32 = 16u;
override CAUSAL: bool = false;
override WG: u32 = 128u;      // (BQ / TM) * (BK / TN)
override SMEM4: u32 = 2048u;  // BK*BQ/4 + max(DC*(BQ+BK)/2, KC*D/4)

const MAX_S: u32 = 16u;
const MAX_O: u32 = 32u;

@group(0) @binding(0) var<uniform> prm: Params;
@group(0) @binding(1) var<storage, read> seqs: array<Seq>;
@group(0) @binding(2) var<storage, read> q: array<Quad>;
@group(0) @binding(3) var<storage, read> k: array<Quad>;
@group(0) @binding(4) var<storage, read> v: array<Quad>;
@group(0) @binding(5) var<storage, read> d_o: array<Quad>;
@group(0) @binding(6) var<storage, read_write> dq: array<Quad>;

var<workgroup> sm: array<vec4<f32>, SMEM4>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let D4 = D / 4u;
    let BQ4 = BQ / 4u;
    let BK4 = BK / 4u;
    let TM4 = TM / 4u;
    let DC4 = DC / 4u;
    let NCG = BK / TN;
    let OCN = (D4 + NCG - 1u) / NCG;
    let FULL = (D4 % NCG) == 0u;
    let PS = 0u;                      // dS, [BK][BQ/4]
    let QS = BK * BQ4;                // Q chunk  [DC][BQ/4]
    let OS = QS + DC * BQ4;           // dO chunk [DC][BQ/4]
    let KS = OS + DC * BQ4;           // K chunk  [DC][BK/4]
    let VS = KS + DC * BK4;           // V chunk  [DC][BK/4]
    let XS = QS;                      // K rows [KC][D/4] for step 3 (aliases the chunks)

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
    let rs = tid / NCG;
    let cs = tid % NCG;
    let r0 = rs * TM;
    let scale = prm.scale;
    let bias = sq.bias;

    var acc: array<vec4<f32>, MAX_O>;
    let n_kt = (kend + BK - 1u) / BK;
    for (var kt = 0u; kt < n_kt; kt++) {
        let k0 = kt * BK;
        var s: array<vec4<f32>, MAX_S>;
        var dp: array<vec4<f32>, MAX_S>;
        for (var d0 = 0u; d0 < D4; d0 += DC4) {
            stage_t(0u, tid, QS, BQ4, BQ, qbase, prm.q_str.y, q0, sq.len_q, d0);
            stage_t(3u, tid, OS, BQ4, BQ, obase, prm.o_str.y, q0, sq.len_q, d0);
            stage_t(1u, tid, KS, BK4, BK, kbase, prm.k_str.y, k0, kend, d0);
            stage_t(2u, tid, VS, BK4, BK, vbase, prm.v_str.y, k0, kend, d0);
            workgroupBarrier();
            for (var dd = 0u; dd < DC; dd++) {
                var qv: array<vec4<f32>, 2>;
                var ov: array<vec4<f32>, 2>;
                for (var m = 0u; m < TM4; m++) {
                    qv[m] = sm[QS + dd * BQ4 + rs * TM4 + m];
                    ov[m] = sm[OS + dd * BQ4 + rs * TM4 + m];
                }
                for (var n4 = 0u; n4 < TN / 4u; n4++) {
                    let kv = sm[KS + dd * BK4 + cs * (TN / 4u) + n4];
                    let vv = sm[VS + dd * BK4 + cs * (TN / 4u) + n4];
                    for (var c = 0u; c < 4u; c++) {
                        let n = n4 * 4u + c;
                        for (var m = 0u; m < TM4; m++) {
                            s[n * TM4 + m] = fma(qv[m], vec4<f32>(kv[c]), s[n * TM4 + m]);
                            dp[n * TM4 + m] = fma(ov[m], vec4<f32>(vv[c]), dp[n * TM4 + m]);
                        }
                    }
                }
            }
            workgroupBarrier();
        }
        for (var n = 0u; n < TN; n++) {
            let j = k0 + cs * TN + n;
            for (var m = 0u; m < TM4; m++) {
                let iv = vec4<u32>(q0 + r0 + m * 4u) + vec4<u32>(0u, 1u, 2u, 3u);
                var ok = (vec4<u32>(j) < vec4<u32>(sq.len_k)) & (iv < vec4<u32>(sq.len_q));
                if (CAUSAL) {
                    ok = ok & (vec4<u32>(j) <= iv);
                }
                let p = sigmoid4_of(s[n * TM4 + m], scale, bias);
                let ds = dp[n * TM4 + m] * p * (1.0 - p);
                sm[PS + (cs * TN + n) * BQ4 + rs * TM4 + m] = select(vec4<f32>(0.0), ds, ok);
            }
        }
        let kc_end = min(BK, kend - k0);
        for (var kc = 0u; kc < kc_end; kc += KC) {
            for (var e = tid; e < KC * D4; e += WG) {
                let r = e / D4;
                let c = e % D4;
                var x = vec4<f32>(0.0);
                if (k0 + kc + r < kend) {
                    x = load_quad(k[kbase + (k0 + kc + r) * prm.k_str.y + c]);
                }
                sm[XS + e] = x;
            }
            workgroupBarrier();
            for (var kk = 0u; kk < KC; kk++) {
                var pv: array<vec4<f32>, 2>;
                for (var m = 0u; m < TM4; m++) {
                    pv[m] = sm[PS + (kc + kk) * BQ4 + rs * TM4 + m];
                }
                for (var jj = 0u; jj < OCN; jj++) {
                    let c = cs + jj * NCG;
                    if (FULL || c < D4) {
                        let xv = sm[XS + kk * D4 + c];
                        for (var m = 0u; m < TM; m++) {
                            acc[m * OCN + jj] = fma(vec4<f32>(pv[m / 4u][m % 4u]), xv, acc[m * OCN + jj]);
                        }
                    }
                }
            }
            workgroupBarrier();
        }
    }
    for (var m = 0u; m < TM; m++) {
        let i = q0 + r0 + m;
        if (i < sq.rows_q) {
            for (var jj = 0u; jj < OCN; jj++) {
                let c = cs + jj * NCG;
                if (FULL || c < D4) {
                    dq[qbase + i * prm.q_str.y + c] = store_quad(scale * acc[m * OCN + jj]);
                }
            }
        }
    }
}
