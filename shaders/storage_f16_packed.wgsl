// Storage path: f16 on adapters without SHADER_F16. Four halves packed in two u32 (low half
// first, as little-endian memory holds them), converted with the core pack/unpack builtins.

alias Quad = vec2<u32>;

fn load_quad(x: Quad) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(x.x), unpack2x16float(x.y));
}

fn store_quad(v: vec4<f32>) -> Quad {
    return vec2<u32>(pack2x16float(v.xy), pack2x16float(v.zw));
}
