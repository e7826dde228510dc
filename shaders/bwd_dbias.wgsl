// d_bias of each sequence: the sum of the partial dS sums bwd_dkdv.wgsl left per
// (key tile, key/value head). One workgroup per sequence; fixed order, so deterministic.

override WG: u32 = 64u;   // power of two

@group(0) @binding(0) var<uniform> prm: Params;
@group(0) @binding(1) var<storage, read> dbias_part: array<f32>;
@group(0) @binding(2) var<storage, read_write> d_bias: array<f32>;

var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let b = wid.x;
    var acc = 0.0;
    for (var i = tid; i < prm.n_part; i += WG) {
        acc += dbias_part[b * prm.n_part + i];
    }
    red[tid] = acc;
    workgroupBarrier();
    for (var w = WG / 2u; w > 0u; w /= 2u) {
        if (tid < w) {
            red[tid] += red[tid + w];
        }
        workgroupBarrier();
    }
    if (tid == 0u) {
        d_bias[b] = red[0];
    }
}
