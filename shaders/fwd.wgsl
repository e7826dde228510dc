// Forward: O = σ(scale·Q Kᵀ + bias) V with the plan's masks.
//
// One workgroup per (query tile of BQ rows, query head, sequence). For each tile of BK keys:
//   1. S = Q Kᵀ over head-dim chunks of DC staged transposed in workgroup memory; every
//      invocation owns a TM×TN block of S in registers.
//   2. P = σ(scale·S + bias), zero where masked, written to workgroup memory.
//   3. O += P V over key chunks of KC staged in workgroup memory; every invocation owns TM rows
//      × OCN quads of O in registers (f32).
// Key tiles past the sequence's valid length, or above the diagonal when causal, are skipped;
// query tiles past the valid length only write zeros.

override D: u32 = 64u;        // head dim (multiple of 4)
override BQ: u32 = 64u;       // query rows per workgroup (multiple of TM)
override BK: u32 = 64u;       // keys per tile (multiple of TN and of KC)
override TM: u32 = 8u;        // query rows per invocation (multiple of 4)
override TN: u32 = 4u;        // keys per invocation in S (multiple of 4)
override DC: u32 = 16u;       // head-dim chunk of Q Kᵀ (multiple of 4)
override KC: u32 = 16u;       // key chunk of P V
override CAUSAL: bool = false;
override WG: u32 = 128u;      // (BQ / TM) * (BK / TN)
override SMEM4: u32 = 1536u;  // BK*BQ/4 + max(DC*(BQ+BK)/4, KC*D/4)

// Register arrays need constant sizes: these bound what the host may choose.
const MAX_S: u32 = 16u;       // quads of S per invocation: TN * TM / 4
const MAX_O: u32 = 32u;       // quads of O per invocation: TM * OCN

@group(0) @binding(0) var<uniform> prm: Params;
@group(0) @binding(1) var<storage, read> seqs: array<Seq>;
@group(0) @binding(2) var<storage, read> q: array<Quad>;
@group(0) @binding(3) var<storage, read> k: array<Quad>;
@group(0) @binding(4) var<storage, read> v: array<Quad>;
@group(0) @binding(5) var<storage, read_write> o: array<Quad>;

var<workgroup> sm: array<vec4<f32>, SMEM4>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let D4 = D / 4u;
    let BQ4 = BQ / 4u;
    let BK4 = BK / 4u;
    let TM4 = TM / 4u;
    let DC4 = DC / 4u;
    let NCG = BK / TN;                 // column groups (keys in S, quads of D in O)
    let OCN = (D4 + NCG - 1u) / NCG;   // quads of a row of O per invocation
    let FULL = (D4 % NCG) == 0u;
    let PS = 0u;                       // P, [BK][BQ/4]
    let QS = BK * BQ4;                 // Q chunk, [DC][BQ/4] (transposed)
    let KS = QS + DC * BQ4;            // K chunk, [DC][BK/4] (transposed)
    let VS = QS;                       // V chunk, [KC][D/4] (aliases Q and K chunks)

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
    let rs = tid / NCG;   // row group
    let cs = tid % NCG;   // column group
    let r0 = rs * TM;
    let scale = prm.scale;
    let bias = sq.bias;

    var acc: array<vec4<f32>, MAX_O>;
    let n_kt = (kend + BK - 1u) / BK;
    for (var kt = 0u; kt < n_kt; kt++) {
        let k0 = kt * BK;
        // 1. S = Q Kᵀ
        var s: array<vec4<f32>, MAX_S>;
        for (var d0 = 0u; d0 < D4; d0 += DC4) {
            for (var e = tid; e < BQ * DC4; e += WG) {
                // Quad-fastest: coalesced loads (row-fastest, conflict-free stores, was slower).
                let r = e / DC4;
                let c4 = e % DC4;
                var x = vec4<f32>(0.0);
                if (q0 + r < sq.len_q && d0 + c4 < D4) {
                    x = load_quad(q[qbase + (q0 + r) * prm.q_str.y + d0 + c4]);
                }
                let at = QS + c4 * 4u * BQ4 + r / 4u;
                sm[at][r % 4u] = x.x;
                sm[at + BQ4][r % 4u] = x.y;
                sm[at + 2u * BQ4][r % 4u] = x.z;
                sm[at + 3u * BQ4][r % 4u] = x.w;
            }
            for (var e = tid; e < BK * DC4; e += WG) {
                let r = e / DC4;
                let c4 = e % DC4;
                var x = vec4<f32>(0.0);
                if (k0 + r < kend && d0 + c4 < D4) {
                    x = load_quad(k[kbase + (k0 + r) * prm.k_str.y + d0 + c4]);
                }
                let at = KS + c4 * 4u * BK4 + r / 4u;
                sm[at][r % 4u] = x.x;
                sm[at + BK4][r % 4u] = x.y;
                sm[at + 2u * BK4][r % 4u] = x.z;
                sm[at + 3u * BK4][r % 4u] = x.w;
            }
            workgroupBarrier();
            for (var dd = 0u; dd < DC; dd++) {
                var qv: array<vec4<f32>, 2>;
                for (var m = 0u; m < TM4; m++) {
                    qv[m] = sm[QS + dd * BQ4 + rs * TM4 + m];
                }
                for (var n4 = 0u; n4 < TN / 4u; n4++) {
                    let kv = sm[KS + dd * BK4 + cs * (TN / 4u) + n4];
                    for (var m = 0u; m < TM4; m++) {
                        s[(n4 * 4u) * TM4 + m] = fma(qv[m], vec4<f32>(kv.x), s[(n4 * 4u) * TM4 + m]);
                        s[(n4 * 4u + 1u) * TM4 + m] = fma(qv[m], vec4<f32>(kv.y), s[(n4 * 4u + 1u) * TM4 + m]);
                        s[(n4 * 4u + 2u) * TM4 + m] = fma(qv[m], vec4<f32>(kv.z), s[(n4 * 4u + 2u) * TM4 + m]);
                        s[(n4 * 4u + 3u) * TM4 + m] = fma(qv[m], vec4<f32>(kv.w), s[(n4 * 4u + 3u) * TM4 + m]);
                    }
                }
            }
            workgroupBarrier();
        }
        // 2. P = σ(scale·S + bias), masked, to workgroup memory as [key][row].
        for (var n = 0u; n < TN; n++) {
            let j = k0 + cs * TN + n;
            for (var m = 0u; m < TM4; m++) {
                let iv = vec4<u32>(q0 + r0 + m * 4u) + vec4<u32>(0u, 1u, 2u, 3u);
                var ok = (vec4<u32>(j) < vec4<u32>(sq.len_k)) & (iv < vec4<u32>(sq.len_q));
                if (CAUSAL) {
                    ok = ok & (vec4<u32>(j) <= iv);
                }
                let p = sigmoid4_of(s[n * TM4 + m], scale, bias);
                sm[PS + (cs * TN + n) * BQ4 + rs * TM4 + m] = select(vec4<f32>(0.0), p, ok);
            }
        }
        // 3. O += P V, over the key chunks that hold visible keys.
        let kc_end = min(BK, kend - k0);
        for (var kc = 0u; kc < kc_end; kc += KC) {
            for (var e = tid; e < KC * D4; e += WG) {
                let r = e / D4;
                let c = e % D4;
                var x = vec4<f32>(0.0);
                if (k0 + kc + r < kend) {
                    x = load_quad(v[vbase + (k0 + kc + r) * prm.v_str.y + c]);
                }
                sm[VS + e] = x;
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
                        let vv = sm[VS + kk * D4 + c];
                        for (var m = 0u; m < TM; m++) {
                            acc[m * OCN + jj] = fma(vec4<f32>(pv[m / 4u][m % 4u]), vv, acc[m * OCN + jj]);
                        }
                    }
                }
            }
            workgroupBarrier();
        }
    }
    // Rows past the valid length hold zeros (P was masked); rows past rows_q are not ours.
    for (var m = 0u; m < TM; m++) {
        let i = q0 + r0 + m;
        if (i < sq.rows_q) {
            for (var jj = 0u; jj < OCN; jj++) {
                let c = cs + jj * NCG;
                if (FULL || c < D4) {
                    o[obase + i * prm.o_str.y + c] = store_quad(acc[m * OCN + jj]);
                }
            }
        }
    }
}
