// Shared by every kernel (pipelines.rs prepends it after the storage path, since WGSL has no
// include): the per-problem uniform, the per-sequence table, index helpers and the sigmoid.

// Per-problem parameters. Twin of `Params` in src/wgpu/params.rs: keep the two in step.
struct Params {
    // Strides of each tensor in quads (4 elements): (batch, seq, head, unused).
    q_str: vec4<u32>,
    k_str: vec4<u32>,
    v_str: vec4<u32>,
    o_str: vec4<u32>,
    // Query heads per key/value head (GQA).
    group: u32,
    // Query heads.
    heads: u32,
    // Logit scale.
    scale: f32,
    // d_bias partial sums per sequence (bwd_dkdv writes them, bwd_dbias adds them up).
    n_part: u32,
}

// One sequence of the batch. Twin of `SeqParams` in src/wgpu/params.rs.
struct Seq {
    // First query / key row of the sequence in the seq dimension (cu_seqlens, or 0 when padded).
    q_start: u32,
    k_start: u32,
    // Valid query / key tokens.
    len_q: u32,
    len_k: u32,
    // Rows the outputs cover (rows past the valid length are written as zeros).
    rows_q: u32,
    rows_k: u32,
    // The logit bias of this sequence.
    bias: f32,
    pad: u32,
}

// Quad offset of row 0 of head `h` of sequence `b` (whose first row is `start`) in a tensor
// with quad strides `s` (batch, seq, head).
fn head_base(s: vec4<u32>, b: u32, start: u32, h: u32) -> u32 {
    return b * s.x + start * s.y + h * s.z;
}

// Keys that a query tile of `rows` rows from `q0` can see: none when all its rows are padding,
// else the valid keys, and (causal) none past its last row.
fn visible_keys(sq: Seq, q0: u32, rows: u32, causal: bool) -> u32 {
    let kend = select(0u, sq.len_k, q0 < sq.len_q);
    return select(kend, min(kend, q0 + rows), causal);
}

// `true`: 1 / (1 + e^-x), one exponential and one reciprocal per element (e^-x overflows to
// inf for x < -88, where the quotient is the 0 it should be). Not the tanh form of the CUDA fast
// path: WGSL's tanh is no single instruction where we measured it (NVIDIA's Vulkan compiler:
// the σ pass of a coop tile 3.5× slower with tanh, examples/coop_probe.rs), and this form is also
// accurate in relative terms on very negative logits. `false`: the same quotient evaluated so
// that the exponential never overflows (a few ulps over the whole range).
override SIGMOID_FAST: bool = true;

// σ(scale·s + bias). The fast form folds the scale, the bias and log2(e) into one fma that
// feeds exp2, saving the multiply inside exp.
fn sigmoid4_of(s: vec4<f32>, scale: f32, bias: f32) -> vec4<f32> {
    if (SIGMOID_FAST) {
        let l2e = 1.4426950408889634;
        return 1.0 / (1.0 + exp2(fma(s, vec4<f32>(-scale * l2e), vec4<f32>(-bias * l2e))));
    }
    return sigmoid4(fma(s, vec4<f32>(scale), vec4<f32>(bias)));
}

fn sigmoid4(x: vec4<f32>) -> vec4<f32> {
    if (SIGMOID_FAST) {
        return 1.0 / (1.0 + exp(-x));
    }
    let e = exp(-abs(x));
    let r = 1.0 / (1.0 + e);
    return select(e * r, r, x >= vec4<f32>(0.0));
}
