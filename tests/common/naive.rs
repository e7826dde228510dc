//! The definition of sigmoid attention written as plainly as possible, one output element at a
//! time, independent of the crate's blocked reference. With `Precision::Exact` it is the truth
//! every backend is judged against; with `Precision::Emulate` it makes the rounding errors that
//! a kernel storing in a low-precision dtype must make, which sets the tolerance.

// Index loops on purpose: the formula reads like the math, element by element.
#![allow(clippy::needless_range_loop)]

use sigmoid_attn::{DType, HostTensor, Plan, SeqInfo, SigmoidMode};

/// How the naive formula rounds.
#[derive(Clone, Copy, Debug)]
pub enum Precision {
    /// f64 throughout, exact sigmoid.
    Exact,
    /// What a kernel with f32 accumulation and `dtype` storage/tensor-core operands computes:
    /// logits and sums rounded to f32, P and dS rounded to `dtype` before they are multiplied
    /// (as tensor cores take them), outputs rounded to `dtype`. `tanh_bits`, when set, rounds
    /// the tanh of the fast sigmoid to that many mantissa bits (a hardware tanh's precision).
    Emulate {
        dtype: DType,
        tanh_bits: Option<u32>,
    },
}

/// Rounds `x` to `bits` bits of mantissa (relative precision 2^-bits).
fn round_bits(x: f64, bits: u32) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let e = x.abs().log2().floor();
    let q = f64::powf(2.0, e - bits as f64);
    (x / q).round() * q
}

impl Precision {
    fn f32(self, x: f64) -> f64 {
        match self {
            Precision::Exact => x,
            Precision::Emulate { .. } => x as f32 as f64,
        }
    }
    /// Rounding applied to a tensor-core operand (P, dS) and to stored outputs.
    fn store(self, x: f64) -> f64 {
        match self {
            Precision::Exact => x,
            Precision::Emulate { dtype, .. } => dtype.round(x),
        }
    }
    fn sigmoid(self, x: f64, mode: SigmoidMode) -> f64 {
        match (self, mode) {
            (Precision::Exact, _) => 1.0 / (1.0 + (-x).exp()),
            (
                Precision::Emulate {
                    tanh_bits: Some(bits),
                    ..
                },
                SigmoidMode::Fast,
            ) => self.f32(0.5 * round_bits((0.5 * x).tanh(), bits) + 0.5),
            (Precision::Emulate { .. }, _) => self.f32(1.0 / (1.0 + (-x).exp())),
        }
    }
}

/// Host views of the inputs as f64.
pub struct Inputs {
    pub q: Vec<f64>,
    pub k: Vec<f64>,
    pub v: Vec<f64>,
    pub d_o: Vec<f64>,
}

impl Inputs {
    pub fn new(q: &HostTensor, k: &HostTensor, v: &HostTensor, d_o: &HostTensor) -> Self {
        Inputs {
            q: q.to_f64(),
            k: k.to_f64(),
            v: v.to_f64(),
            d_o: d_o.to_f64(),
        }
    }
}

/// Outputs of the naive formula, indexed like the device buffers (positions outside the plan's
/// view are NaN).
pub struct Outputs {
    pub o: Vec<f64>,
    pub dq: Vec<f64>,
    pub dk: Vec<f64>,
    pub dv: Vec<f64>,
    pub d_bias: Vec<f64>,
    /// Per sequence, how much d_bias moves when every tanh value of the fast sigmoid
    /// (P = 0.5 + 0.5 t) is shifted by the same amount: the sum over visible pairs of
    /// 0.5 (dO_i · V_j)(1 − 2 P). d_bias is a small residue of large terms of both signs, so a
    /// tanh error that varies slowly with the logit adds up in it (see `run_case`).
    pub d_bias_tanh_slope: Vec<f64>,
}

struct Ctx<'a> {
    plan: &'a Plan,
    x: &'a Inputs,
    prec: Precision,
}

impl Ctx<'_> {
    fn row(
        &self,
        t: &[f64],
        s: &sigmoid_attn::Strides,
        b: usize,
        start: usize,
        i: usize,
        h: usize,
    ) -> Vec<f64> {
        let base = Plan::row_offset(s, b, start, i, h);
        t[base..base + self.plan.head_dim()].to_vec()
    }

    fn visible(&self, seq: &SeqInfo, i: usize, j: usize) -> bool {
        j < seq.len_k && !(self.plan.causal() && j > i)
    }

    /// P[i][j] (unrounded f32 under emulation) for sequence b, query head h.
    fn probs(&self, b: usize, h: usize) -> Vec<Vec<f64>> {
        let p = self.plan;
        let st = p.strides();
        let seq = &p.seqs()[b];
        let hk = h / p.group_size();
        let scale = p.scale() as f64;
        let bias = p.bias()[b] as f64;
        (0..seq.len_q)
            .map(|i| {
                let qi = self.row(&self.x.q, &st.q, b, seq.q_start, i, h);
                (0..seq.len_k)
                    .map(|j| {
                        if !self.visible(seq, i, j) {
                            return 0.0;
                        }
                        let kj = self.row(&self.x.k, &st.k, b, seq.k_start, j, hk);
                        let s: f64 = qi.iter().zip(&kj).map(|(a, c)| a * c).sum();
                        let logit = self.prec.f32(scale * self.prec.f32(s) + bias);
                        self.prec.sigmoid(logit, p.sigmoid())
                    })
                    .collect()
            })
            .collect()
    }
}

fn nan_buffer(len: usize) -> Vec<f64> {
    vec![f64::NAN; len]
}

/// Evaluates the forward (and, with `grads`, the backward) by the definition.
pub fn evaluate(plan: &Plan, x: &Inputs, prec: Precision, grads: bool) -> Outputs {
    let cx = Ctx { plan, x, prec };
    let d = plan.head_dim();
    let st = plan.strides();
    let scale = plan.scale() as f64;
    let mut out = Outputs {
        o: nan_buffer(plan.o_elems()),
        dq: nan_buffer(plan.q_elems()),
        dk: nan_buffer(plan.k_elems()),
        dv: nan_buffer(plan.v_elems()),
        d_bias: vec![0.0; plan.batch()],
        d_bias_tanh_slope: vec![0.0; plan.batch()],
    };
    for (b, seq) in plan.seqs().iter().enumerate() {
        // Padding rows are zeros in every output.
        for h in 0..plan.heads() {
            for i in 0..seq.rows_q {
                let base = Plan::row_offset(&st.o, b, seq.q_start, i, h);
                out.o[base..base + d].fill(0.0);
                if grads {
                    let base = Plan::row_offset(&st.q, b, seq.q_start, i, h);
                    out.dq[base..base + d].fill(0.0);
                }
            }
        }
        if grads {
            for hk in 0..plan.kv_heads() {
                for j in 0..seq.rows_k {
                    let base = Plan::row_offset(&st.k, b, seq.k_start, j, hk);
                    out.dk[base..base + d].fill(0.0);
                    let base = Plan::row_offset(&st.v, b, seq.k_start, j, hk);
                    out.dv[base..base + d].fill(0.0);
                }
            }
        }
        // dK, dV accumulate over the query heads of a group before rounding.
        let mut dk_acc = vec![vec![0.0; seq.len_k * d]; plan.kv_heads()];
        let mut dv_acc = vec![vec![0.0; seq.len_k * d]; plan.kv_heads()];
        for h in 0..plan.heads() {
            let hk = h / plan.group_size();
            let p = cx.probs(b, h);
            let vj: Vec<Vec<f64>> = (0..seq.len_k)
                .map(|j| cx.row(&x.v, &st.v, b, seq.k_start, j, hk))
                .collect();
            for i in 0..seq.len_q {
                let base = Plan::row_offset(&st.o, b, seq.q_start, i, h);
                for c in 0..d {
                    let s: f64 = (0..seq.len_k).map(|j| prec.store(p[i][j]) * vj[j][c]).sum();
                    out.o[base + c] = prec.store(prec.f32(s));
                }
            }
            if !grads {
                continue;
            }
            let kj: Vec<Vec<f64>> = (0..seq.len_k)
                .map(|j| cx.row(&x.k, &st.k, b, seq.k_start, j, hk))
                .collect();
            let qi: Vec<Vec<f64>> = (0..seq.len_q)
                .map(|i| cx.row(&x.q, &st.q, b, seq.q_start, i, h))
                .collect();
            let doi: Vec<Vec<f64>> = (0..seq.len_q)
                .map(|i| cx.row(&x.d_o, &st.o, b, seq.q_start, i, h))
                .collect();
            // dP[i][j] = dO_i · V_j on visible pairs (0 elsewhere), dS = dP P (1 − P).
            let dp: Vec<Vec<f64>> = (0..seq.len_q)
                .map(|i| {
                    (0..seq.len_k)
                        .map(|j| {
                            if !cx.visible(seq, i, j) {
                                return 0.0;
                            }
                            doi[i].iter().zip(&vj[j]).map(|(a, c)| a * c).sum()
                        })
                        .collect()
                })
                .collect();
            let ds: Vec<Vec<f64>> = (0..seq.len_q)
                .map(|i| {
                    (0..seq.len_k)
                        .map(|j| {
                            let pij = p[i][j];
                            prec.f32(prec.f32(dp[i][j]) * pij * (1.0 - pij))
                        })
                        .collect()
                })
                .collect();
            for i in 0..seq.len_q {
                for j in 0..seq.len_k {
                    out.d_bias_tanh_slope[b] += 0.5 * dp[i][j] * (1.0 - 2.0 * p[i][j]);
                }
            }
            for i in 0..seq.len_q {
                out.d_bias[b] += ds[i].iter().sum::<f64>();
                let base = Plan::row_offset(&st.q, b, seq.q_start, i, h);
                for c in 0..d {
                    let s: f64 = (0..seq.len_k)
                        .map(|j| prec.store(ds[i][j]) * kj[j][c])
                        .sum();
                    out.dq[base + c] = prec.store(prec.f32(scale * s));
                }
            }
            for j in 0..seq.len_k {
                for c in 0..d {
                    let sk: f64 = (0..seq.len_q)
                        .map(|i| prec.store(ds[i][j]) * qi[i][c])
                        .sum();
                    let sv: f64 = (0..seq.len_q)
                        .map(|i| prec.store(p[i][j]) * doi[i][c])
                        .sum();
                    dk_acc[hk][j * d + c] += scale * sk;
                    dv_acc[hk][j * d + c] += sv;
                }
            }
        }
        if grads {
            for hk in 0..plan.kv_heads() {
                for j in 0..seq.len_k {
                    let bk = Plan::row_offset(&st.k, b, seq.k_start, j, hk);
                    let bv = Plan::row_offset(&st.v, b, seq.k_start, j, hk);
                    for c in 0..d {
                        out.dk[bk + c] = prec.store(prec.f32(dk_acc[hk][j * d + c]));
                        out.dv[bv + c] = prec.store(prec.f32(dv_acc[hk][j * d + c]));
                    }
                }
            }
        }
        out.d_bias[b] = prec.f32(out.d_bias[b]);
    }
    out
}
