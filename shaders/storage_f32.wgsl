// Storage path: f32. A `Quad` is four consecutive elements of the head dimension as stored.
// Prepended to every kernel compiled for f32 tensors (pipelines.rs).

alias Quad = vec4<f32>;

fn load_quad(x: Quad) -> vec4<f32> {
    return x;
}

fn store_quad(v: vec4<f32>) -> Quad {
    return v;
}
