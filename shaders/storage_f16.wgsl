// Storage path: f16, native (adapter has SHADER_F16). Four halves per `Quad`; arithmetic in f32.
enable f16;

alias Quad = vec4<f16>;

fn load_quad(x: Quad) -> vec4<f32> {
    return vec4<f32>(x);
}

fn store_quad(v: vec4<f32>) -> Quad {
    return vec4<f16>(v);
}
