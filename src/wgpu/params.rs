//! `#[repr(C)]` twins of the WGSL structs in `shaders/sigmoid.wgsl`. Keep them in step: the
//! sizes are asserted below and the conformance suite checks the values.

use crate::{Plan, Strides};
use bytemuck::{Pod, Zeroable};

/// Per-problem parameters, bound as a uniform (`Params` in `shaders/sigmoid.wgsl`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct Params {
    /// Q strides in quads: batch, seq, head, unused.
    pub q_str: [u32; 4],
    /// K strides in quads.
    pub k_str: [u32; 4],
    /// V strides in quads.
    pub v_str: [u32; 4],
    /// O (and dO) strides in quads.
    pub o_str: [u32; 4],
    /// Query heads per key/value head.
    pub group: u32,
    /// Query heads.
    pub heads: u32,
    /// Logit scale.
    pub scale: f32,
    /// d_bias partial sums per sequence.
    pub n_part: u32,
}

/// One sequence (`Seq` in `shaders/sigmoid.wgsl`), in a read-only storage buffer.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct SeqParams {
    /// First query row.
    pub q_start: u32,
    /// First key row.
    pub k_start: u32,
    /// Valid queries.
    pub len_q: u32,
    /// Valid keys.
    pub len_k: u32,
    /// Query rows the outputs cover.
    pub rows_q: u32,
    /// Key rows the outputs cover.
    pub rows_k: u32,
    /// Logit bias.
    pub bias: f32,
    /// Padding to 32 bytes.
    pub pad: u32,
}

const _: () = assert!(std::mem::size_of::<Params>() == 80);
const _: () = assert!(std::mem::size_of::<SeqParams>() == 32);

/// Strides in quads, or `None` when one is not a multiple of 4 elements or exceeds `u32`.
fn quads(s: &Strides) -> Option<[u32; 4]> {
    let q = |x: usize| -> Option<u32> {
        if x % 4 == 0 {
            u32::try_from(x / 4).ok()
        } else {
            None
        }
    };
    Some([q(s.batch)?, q(s.seq)?, q(s.head)?, 0])
}

impl Params {
    /// The uniform for `plan`; `None` when a stride is not a multiple of 4 elements.
    pub fn new(plan: &Plan, n_part: u32) -> Option<Params> {
        let s = plan.strides();
        Some(Params {
            q_str: quads(&s.q)?,
            k_str: quads(&s.k)?,
            v_str: quads(&s.v)?,
            o_str: quads(&s.o)?,
            group: plan.group_size() as u32,
            heads: plan.heads() as u32,
            scale: plan.scale(),
            n_part,
        })
    }
}

/// The per-sequence table of `plan`.
pub fn seq_table(plan: &Plan) -> Vec<SeqParams> {
    plan.seqs()
        .iter()
        .zip(plan.bias())
        .map(|(s, &bias)| SeqParams {
            q_start: s.q_start as u32,
            k_start: s.k_start as u32,
            len_q: s.len_q as u32,
            len_k: s.len_k as u32,
            rows_q: s.rows_q as u32,
            rows_k: s.rows_k as u32,
            bias,
            pad: 0,
        })
        .collect()
}
