// Shared by the two backward kernels (bwd_dq.wgsl, bwd_dkdv.wgsl), prepended by
// src/wgpu/pipelines.rs. It uses their module-scope names: the q, k, v, d_o bindings, the
// workgroup array `sm` and the overrides WG, D, DC.

// Stages rows [row0, row0 + rows) × quads [d0, d0 + DC/4) of a tensor (t: 0 q, 1 k, 2 v, 3 dO)
// transposed into sm[at + d * stride4 + r / 4][r % 4]; rows at or past `valid` and quads past D
// read as zero.
fn stage_t(t: u32, tid: u32, at: u32, stride4: u32, rows: u32, base: u32, rstride: u32, row0: u32, valid: u32, d0: u32) {
    let D4 = D / 4u;
    let DC4 = DC / 4u;
    for (var e = tid; e < rows * DC4; e += WG) {
        // Quad-fastest, so global loads are coalesced. (Row-fastest makes these transposed
        // stores conflict-free but the loads uncoalesced: 8% slower on an H200.)
        let r = e / DC4;
        let c4 = e % DC4;
        var x = vec4<f32>(0.0);
        if (row0 + r < valid && d0 + c4 < D4) {
            let idx = base + (row0 + r) * rstride + d0 + c4;
            switch t {
                case 0u: { x = load_quad(q[idx]); }
                case 1u: { x = load_quad(k[idx]); }
                case 2u: { x = load_quad(v[idx]); }
                default: { x = load_quad(d_o[idx]); }
            }
        }
        let a = at + c4 * 4u * stride4 + r / 4u;
        sm[a][r % 4u] = x.x;
        sm[a + stride4][r % 4u] = x.y;
        sm[a + 2u * stride4][r % 4u] = x.z;
        sm[a + 3u * stride4][r % 4u] = x.w;
    }
}
