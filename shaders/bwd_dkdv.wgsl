// Backward, key side: dV = Pᵀ dO and dK = scale · dSᵀ Q, summed over the query heads of the
// key/value head's group (GQA), plus per-workgroup partial sums of dS for d_bias.
//
// One workgroup per (key tile of BK rows, key/value head, sequence). For each query head of
// the group and each tile of BQ queries (causal: only queries at or after the tile's first key):
//   1. Sᵀ = K Qᵀ and dPᵀ = V dOᵀ over head-dim chunks of DC; every invocation owns TM keys ×
//      TN queries of each.
//   2. P and dS, zero where masked, to workgroup memory as [query][key].
//   3. dV += Pᵀ dO and dK += dSᵀ Q over query chunks of QC; every invocation owns TM keys ×
//      OCN quads of each (f32).

override D: u32 = 64u;
override BK: u32 = 32u;       // key rows per workgroup (multiple of TM)
override BQ: u32 = 64u;       // queries per tile (multiple of TN and of QC)
override TM: u32 = 4u;        // keys per invocation (multiple of 4)
override TN: u32 = 4u;        // queries per invocation in Sᵀ (multiple of 4)
override DC: u32 = 16u;
override QC: u32 = 8u;
override CAUSAL: bool = false;
override WG: u32 = 128u;      // (BK / TM) * (BQ / TN)
override SMEM4: u32 = 2048u;  // 2*BQ*BK/4 + max(DC*(BQ+BK)/2, 2*QC*D/4)

const MAX_S: u32 = 16u;
const MAX_O: u32 = 32u;

@group(0) @binding(0) var<uniform> prm: Params;
@group(0) @binding(1) var<storage, read> seqs: array<Seq>;
@group(0) @binding(2) var<storage, read> q: array<Quad>;
@group(0) @binding(3) var<storage, read> k: array<Quad>;
@group(0) @binding(4) var<storage, read> v: array<Quad>;
@group(0) @binding(5) var<storage, read> d_o: array<Quad>;
@group(0) @binding(6) var<storage, read_write> dk: array<Quad>;
@group(0) @binding(7) var<storage, read_write> dv: array<Quad>;
@group(0) @binding(8) var<storage, read_write> dbias_part: array<f32>;

var<workgroup> sm: array<vec4<f32>, SMEM4>;

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
) {
    let D4 = D / 4u;
    let BQ4 = BQ / 4u;
    let BK4 = BK / 4u;
    let TM4 = TM / 4u;
    let DC4 = DC / 4u;
    let NCG = BQ / TN;
    let OCN = (D4 + NCG - 1u) / NCG;
    let FULL = (D4 % NCG) == 0u;
    let PS = 0u;                      // P,  [BQ][BK/4]
    let SS = BQ * BK4;                // dS, [BQ][BK/4]
    let KS = 2u * BQ * BK4;           // K chunk  [DC][BK/4]
    let VS = KS + DC * BK4;           // V chunk  [DC][BK/4]
    let QS = VS + DC * BK4;           // Q chunk  [DC][BQ/4]
    let OS = QS + DC * BQ4;           // dO chunk [DC][BQ/4]
    let XO = KS;                      // dO rows [QC][D/4] for step 3
    let XQ = KS + QC * D4;            // Q rows  [QC][D/4] for step 3

    let b = wid.z;
    let kvh = wid.y;
    let sq = seqs[b];
    let k0 = wid.x * BK;
    let part = b * prm.n_part + kvh * nwg.x + wid.x;
    if (k0 >= sq.rows_k) {
        if (tid == 0u) {
            dbias_part[part] = 0.0;
        }
        return;
    }
    let kbase = head_base(prm.k_str, b, sq.k_start, kvh);
    let vbase = head_base(prm.v_str, b, sq.k_start, kvh);
    let kvalid = min(sq.len_k, k0 + BK);

    // Queries that can see a key of this tile.
    var qlo = 0u;
    if (CAUSAL) {
        qlo = k0;
    }
    var n_qt = 0u;
    if (k0 < sq.len_k && qlo < sq.len_q) {
        n_qt = (sq.len_q - qlo + BQ - 1u) / BQ;
    }
    let rs = tid / NCG;
    let cs = tid % NCG;
    let r0 = rs * TM;
    let scale = prm.scale;
    let bias = sq.bias;

    var acc_k: array<vec4<f32>, MAX_O>;
    var acc_v: array<vec4<f32>, MAX_O>;
    var dbias = 0.0;
    for (var g = 0u; g < prm.group; g++) {
        let h = kvh * prm.group + g;
        let qbase = head_base(prm.q_str, b, sq.q_start, h);
        let obase = head_base(prm.o_str, b, sq.q_start, h);
        for (var qt = 0u; qt < n_qt; qt++) {
            let i0 = qlo + qt * BQ;
            var s: array<vec4<f32>, MAX_S>;
            var dp: array<vec4<f32>, MAX_S>;
            for (var d0 = 0u; d0 < D4; d0 += DC4) {
                stage_t(1u, tid, KS, BK4, BK, kbase, prm.k_str.y, k0, kvalid, d0);
                stage_t(2u, tid, VS, BK4, BK, vbase, prm.v_str.y, k0, kvalid, d0);
                stage_t(0u, tid, QS, BQ4, BQ, qbase, prm.q_str.y, i0, sq.len_q, d0);
                stage_t(3u, tid, OS, BQ4, BQ, obase, prm.o_str.y, i0, sq.len_q, d0);
                workgroupBarrier();
                for (var dd = 0u; dd < DC; dd++) {
                    var kv: array<vec4<f32>, 2>;
                    var vv: array<vec4<f32>, 2>;
                    for (var m = 0u; m < TM4; m++) {
                        kv[m] = sm[KS + dd * BK4 + rs * TM4 + m];
                        vv[m] = sm[VS + dd * BK4 + rs * TM4 + m];
                    }
                    for (var n4 = 0u; n4 < TN / 4u; n4++) {
                        let qv = sm[QS + dd * BQ4 + cs * (TN / 4u) + n4];
                        let ov = sm[OS + dd * BQ4 + cs * (TN / 4u) + n4];
                        for (var c = 0u; c < 4u; c++) {
                            let n = n4 * 4u + c;
                            for (var m = 0u; m < TM4; m++) {
                                s[n * TM4 + m] = fma(kv[m], vec4<f32>(qv[c]), s[n * TM4 + m]);
                                dp[n * TM4 + m] = fma(vv[m], vec4<f32>(ov[c]), dp[n * TM4 + m]);
                            }
                        }
                    }
                }
                workgroupBarrier();
            }
            // P and dS for query i = i0 + cs*TN + n and keys j = k0 + r0 + (4m .. 4m+3).
            for (var n = 0u; n < TN; n++) {
                let i = i0 + cs * TN + n;
                for (var m = 0u; m < TM4; m++) {
                    let jv = vec4<u32>(k0 + r0 + m * 4u) + vec4<u32>(0u, 1u, 2u, 3u);
                    var ok = (jv < vec4<u32>(sq.len_k)) & (vec4<u32>(i) < vec4<u32>(sq.len_q));
                    if (CAUSAL) {
                        ok = ok & (jv <= vec4<u32>(i));
                    }
                    let p = select(vec4<f32>(0.0), sigmoid4_of(s[n * TM4 + m], scale, bias), ok);
                    let ds = dp[n * TM4 + m] * p * (1.0 - p);
                    dbias += (ds.x + ds.y) + (ds.z + ds.w);
                    sm[PS + (cs * TN + n) * BK4 + rs * TM4 + m] = p;
                    sm[SS + (cs * TN + n) * BK4 + rs * TM4 + m] = ds;
                }
            }
            let qc_end = min(BQ, sq.len_q - i0);
            for (var qc = 0u; qc < qc_end; qc += QC) {
                for (var e = tid; e < QC * D4; e += WG) {
                    let r = e / D4;
                    let c = e % D4;
                    var xo = vec4<f32>(0.0);
                    var xq = vec4<f32>(0.0);
                    if (i0 + qc + r < sq.len_q) {
                        xo = load_quad(d_o[obase + (i0 + qc + r) * prm.o_str.y + c]);
                        xq = load_quad(q[qbase + (i0 + qc + r) * prm.q_str.y + c]);
                    }
                    sm[XO + e] = xo;
                    sm[XQ + e] = xq;
                }
                workgroupBarrier();
                for (var qq = 0u; qq < QC; qq++) {
                    var pv: array<vec4<f32>, 2>;
                    var sv: array<vec4<f32>, 2>;
                    for (var m = 0u; m < TM4; m++) {
                        pv[m] = sm[PS + (qc + qq) * BK4 + rs * TM4 + m];
                        sv[m] = sm[SS + (qc + qq) * BK4 + rs * TM4 + m];
                    }
                    for (var jj = 0u; jj < OCN; jj++) {
                        let c = cs + jj * NCG;
                        if (FULL || c < D4) {
                            let xo = sm[XO + qq * D4 + c];
                            let xq = sm[XQ + qq * D4 + c];
                            for (var m = 0u; m < TM; m++) {
                                acc_v[m * OCN + jj] = fma(vec4<f32>(pv[m / 4u][m % 4u]), xo, acc_v[m * OCN + jj]);
                                acc_k[m * OCN + jj] = fma(vec4<f32>(sv[m / 4u][m % 4u]), xq, acc_k[m * OCN + jj]);
                            }
                        }
                    }
                }
                workgroupBarrier();
            }
        }
    }
    for (var m = 0u; m < TM; m++) {
        let j = k0 + r0 + m;
        if (j < sq.rows_k) {
            for (var jj = 0u; jj < OCN; jj++) {
                let c = cs + jj * NCG;
                if (FULL || c < D4) {
                    dk[kbase + j * prm.k_str.y + c] = store_quad(scale * acc_k[m * OCN + jj]);
                    dv[vbase + j * prm.v_str.y + c] = store_quad(acc_v[m * OCN + jj]);
                }
            }
        }
    }
    // d_bias partial: tree sum of the invocations' dS sums (WG is a power of two).
    workgroupBarrier();
    sm[tid] = vec4<f32>(dbias, 0.0, 0.0, 0.0);
    workgroupBarrier();
    for (var w = WG / 2u; w > 0u; w /= 2u) {
        if (tid < w) {
            sm[tid].x += sm[tid + w].x;
        }
        workgroupBarrier();
    }
    if (tid == 0u) {
        dbias_part[part] = sm[0].x;
    }
}
