// Storage path: bf16 (WGSL has no bf16 type). Four values packed in two u32, low half first; a
// bf16 is the high 16 bits of an f32, so widening is a shift and narrowing rounds to nearest even.

alias Quad = vec2<u32>;

fn load_quad(x: Quad) -> vec4<f32> {
    return vec4<f32>(
        bitcast<f32>(x.x << 16u),
        bitcast<f32>(x.x & 0xffff0000u),
        bitcast<f32>(x.y << 16u),
        bitcast<f32>(x.y & 0xffff0000u),
    );
}

// f32 -> bf16 bits, round to nearest even; NaN stays a (quiet) NaN.
fn to_bf16(f: f32) -> u32 {
    let u = bitcast<u32>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (u >> 16u) | 0x40u;
    }
    return (u + 0x7fffu + ((u >> 16u) & 1u)) >> 16u;
}

fn store_quad(v: vec4<f32>) -> Quad {
    return vec2<u32>(
        to_bf16(v.x) | (to_bf16(v.y) << 16u),
        to_bf16(v.z) | (to_bf16(v.w) << 16u),
    );
}
