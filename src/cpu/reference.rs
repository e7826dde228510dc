//! The f64 reference: every spec feature, blocked and parallel so it doubles as the fallback.
//!
//! Each (sequence, head) is gathered into contiguous f64 rows, then processed in blocks of
//! `BLOCK_Q` queries × `BLOCK_K` keys so that the tiles stay in cache. All arithmetic is f64;
//! results are rounded to the storage dtype only when written.

#[cfg(doc)]
use crate::SigmoidMode;
use crate::{HostTensor, Plan, SeqInfo, Strides};
use rayon::prelude::*;

/// Query rows per task tile.
const BLOCK_Q: usize = 64;
/// Key rows per inner tile.
const BLOCK_K: usize = 64;

/// The sigmoid in f64, stable over the whole range. Both [`SigmoidMode`]s name this same
/// function; the reference evaluates it exactly for either. (The tanh form that fast kernels use,
/// `0.5·tanh(0.5x) + 0.5`, cancels catastrophically for very negative x even in f64: at
/// x = −30 it is off by 2e-4 relative.)
#[inline]
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Element access to a flat tensor, so that the reference runs on stored dtypes and on plain
/// f64 slices (for finite-difference checks) alike.
pub trait Store: Sync {
    /// Element `i` as f64.
    fn get(&self, i: usize) -> f64;
}

/// A flat tensor the reference writes into.
pub trait StoreMut: Store {
    /// Stores `x` (rounded to the storage type) at element `i`.
    fn set(&mut self, i: usize, x: f64);
}

impl Store for HostTensor {
    fn get(&self, i: usize) -> f64 {
        HostTensor::get(self, i)
    }
}

impl StoreMut for HostTensor {
    fn set(&mut self, i: usize, x: f64) {
        HostTensor::set(self, i, x)
    }
}

impl Store for [f64] {
    fn get(&self, i: usize) -> f64 {
        self[i]
    }
}

impl StoreMut for [f64] {
    fn set(&mut self, i: usize, x: f64) {
        self[i] = x
    }
}

/// Dot product with four independent accumulators so that it vectorises.
#[inline]
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let (ac, ar) = a.split_at(a.len() / 4 * 4);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(4).zip(bc.chunks_exact(4)) {
        for l in 0..4 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f64 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// `y += a · x`.
#[inline]
fn axpy(y: &mut [f64], a: f64, x: &[f64]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// Copies rows `first..first + count` of head `h` of sequence `b` into a contiguous f64 block.
#[allow(clippy::too_many_arguments)]
fn gather<T: Store + ?Sized>(
    t: &T,
    s: &Strides,
    b: usize,
    start: usize,
    first: usize,
    count: usize,
    h: usize,
    d: usize,
) -> Vec<f64> {
    let mut out = Vec::with_capacity(count * d);
    for i in first..first + count {
        let base = Plan::row_offset(s, b, start, i, h);
        out.extend((0..d).map(|c| t.get(base + c)));
    }
    out
}

/// Writes contiguous rows back through the strides, rounding to the dtype; rows past
/// `values.len() / d` up to `first + total` are written as zeros.
#[allow(clippy::too_many_arguments)]
fn scatter<T: StoreMut + ?Sized>(
    t: &mut T,
    s: &Strides,
    b: usize,
    start: usize,
    first: usize,
    total: usize,
    h: usize,
    d: usize,
    values: &[f64],
) {
    for r in 0..total {
        let base = Plan::row_offset(s, b, start, first + r, h);
        for c in 0..d {
            let x = values.get(r * d + c).copied().unwrap_or(0.0);
            t.set(base + c, x);
        }
    }
}

/// Keys that query row `i` may see: `0..key_end(i)`.
#[inline]
fn key_end(plan: &Plan, seq: &SeqInfo, i: usize) -> usize {
    if plan.causal() {
        seq.len_k.min(i + 1)
    } else {
        seq.len_k
    }
}

/// One tile of logits turned into probabilities: `p[r][j] = σ(scale·q_r·k_j + bias)` for the
/// visible keys of rows `i0..i0+rows` against keys `j0..j0+cols` (masked entries are 0).
#[allow(clippy::too_many_arguments)]
fn probabilities(
    plan: &Plan,
    seq: &SeqInfo,
    bias: f64,
    q: &[f64],
    k: &[f64],
    i0: usize,
    rows: usize,
    j0: usize,
    cols: usize,
    p: &mut [f64],
) {
    let d = plan.head_dim();
    let scale = plan.scale() as f64;
    products(q, k, d, rows, j0, cols, p);
    for r in 0..rows {
        let end = key_end(plan, seq, i0 + r);
        for (c, x) in p[r * cols..(r + 1) * cols].iter_mut().enumerate() {
            *x = if j0 + c < end {
                sigmoid(scale * *x + bias)
            } else {
                0.0
            };
        }
    }
}

/// `out[r][c] = a_r · b_(j0+c)` for `rows` rows of `a` against `cols` rows of `b` from `j0`.
/// `b`'s tile is transposed first, so each output row accumulates as contiguous axpys
/// (vectorised, no horizontal sums).
fn products(a: &[f64], b: &[f64], d: usize, rows: usize, j0: usize, cols: usize, out: &mut [f64]) {
    let mut bt = vec![0.0; d * cols];
    for c in 0..cols {
        for (e, x) in b[(j0 + c) * d..(j0 + c + 1) * d].iter().enumerate() {
            bt[e * cols + c] = *x;
        }
    }
    for r in 0..rows {
        let row = &mut out[r * cols..(r + 1) * cols];
        row.fill(0.0);
        for (e, &ae) in a[r * d..(r + 1) * d].iter().enumerate() {
            axpy(row, ae, &bt[e * cols..(e + 1) * cols]);
        }
    }
}

/// One unit of parallel work: a block of query rows of one (sequence, query head).
#[derive(Clone, Copy)]
struct Tile {
    b: usize,
    h: usize,
    i0: usize,
    rows: usize,
}

fn query_tiles(plan: &Plan) -> Vec<Tile> {
    let mut tiles = Vec::new();
    for (b, seq) in plan.seqs().iter().enumerate() {
        for h in 0..plan.heads() {
            for i0 in (0..seq.len_q).step_by(BLOCK_Q) {
                tiles.push(Tile {
                    b,
                    h,
                    i0,
                    rows: BLOCK_Q.min(seq.len_q - i0),
                });
            }
        }
    }
    tiles
}

/// Forward pass in f64; writes every covered row of `o` (rows past a sequence's valid length
/// as zeros). Inputs may be stored tensors or f64 slices.
pub fn forward<T: Store + ?Sized, U: StoreMut + ?Sized>(
    plan: &Plan,
    q: &T,
    k: &T,
    v: &T,
    o: &mut U,
) {
    let d = plan.head_dim();
    let st = plan.strides();
    let tiles = query_tiles(plan);
    let results: Vec<Vec<f64>> = tiles
        .par_iter()
        .map(|t| {
            let seq = &plan.seqs()[t.b];
            let hk = t.h / plan.group_size();
            let kv_len = key_end(plan, seq, t.i0 + t.rows - 1);
            let qb = gather(q, &st.q, t.b, seq.q_start, t.i0, t.rows, t.h, d);
            let kb = gather(k, &st.k, t.b, seq.k_start, 0, kv_len, hk, d);
            let vb = gather(v, &st.v, t.b, seq.k_start, 0, kv_len, hk, d);
            let bias = plan.bias()[t.b] as f64;
            let mut out = vec![0.0; t.rows * d];
            let mut p = vec![0.0; t.rows * BLOCK_K];
            for j0 in (0..kv_len).step_by(BLOCK_K) {
                let cols = BLOCK_K.min(kv_len - j0);
                probabilities(plan, seq, bias, &qb, &kb, t.i0, t.rows, j0, cols, &mut p);
                for r in 0..t.rows {
                    let orow = &mut out[r * d..(r + 1) * d];
                    for c in 0..cols {
                        let pv = p[r * cols + c];
                        if pv != 0.0 {
                            let j = j0 + c;
                            axpy(orow, pv, &vb[j * d..(j + 1) * d]);
                        }
                    }
                }
            }
            out
        })
        .collect();
    for (t, out) in tiles.iter().zip(&results) {
        let seq = &plan.seqs()[t.b];
        scatter(o, &st.o, t.b, seq.q_start, t.i0, t.rows, t.h, d, out);
    }
    // Rows past each sequence's valid length are zeros.
    for (b, seq) in plan.seqs().iter().enumerate() {
        for h in 0..plan.heads() {
            let pad = seq.rows_q - seq.len_q;
            scatter(o, &st.o, b, seq.q_start, seq.len_q, pad, h, d, &[]);
        }
    }
}

/// Backward outputs of one parallel task: a query tile's dQ, and its contributions to the
/// (sequence, kv head)'s dK, dV and the sequence's d_bias.
struct TileGrads {
    dq: Vec<f64>,
    dk: Vec<f64>,
    dv: Vec<f64>,
    dbias: f64,
}

/// Gradients in f64. `d_bias`, when given, receives one value per sequence.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Store + ?Sized, U: StoreMut + ?Sized>(
    plan: &Plan,
    q: &T,
    k: &T,
    v: &T,
    d_o: &T,
    dq: &mut U,
    dk: &mut U,
    dv: &mut U,
    d_bias: Option<&mut U>,
) {
    let d = plan.head_dim();
    let st = plan.strides();
    let scale = plan.scale() as f64;
    let tiles = query_tiles(plan);
    let grads: Vec<TileGrads> = tiles
        .par_iter()
        .map(|t| {
            let seq = &plan.seqs()[t.b];
            let hk = t.h / plan.group_size();
            let kv_len = key_end(plan, seq, t.i0 + t.rows - 1);
            let qb = gather(q, &st.q, t.b, seq.q_start, t.i0, t.rows, t.h, d);
            let dob = gather(d_o, &st.o, t.b, seq.q_start, t.i0, t.rows, t.h, d);
            let kb = gather(k, &st.k, t.b, seq.k_start, 0, kv_len, hk, d);
            let vb = gather(v, &st.v, t.b, seq.k_start, 0, kv_len, hk, d);
            let bias = plan.bias()[t.b] as f64;
            let mut g = TileGrads {
                dq: vec![0.0; t.rows * d],
                dk: vec![0.0; kv_len * d],
                dv: vec![0.0; kv_len * d],
                dbias: 0.0,
            };
            let mut p = vec![0.0; t.rows * BLOCK_K];
            let mut dp = vec![0.0; t.rows * BLOCK_K];
            for j0 in (0..kv_len).step_by(BLOCK_K) {
                let cols = BLOCK_K.min(kv_len - j0);
                probabilities(plan, seq, bias, &qb, &kb, t.i0, t.rows, j0, cols, &mut p);
                products(&dob, &vb, d, t.rows, j0, cols, &mut dp);
                for r in 0..t.rows {
                    let (qr, dor) = (&qb[r * d..(r + 1) * d], &dob[r * d..(r + 1) * d]);
                    for c in 0..cols {
                        let pv = p[r * cols + c];
                        if pv == 0.0 {
                            continue;
                        }
                        let j = j0 + c;
                        let krow = &kb[j * d..(j + 1) * d];
                        let ds = dp[r * cols + c] * pv * (1.0 - pv);
                        g.dbias += ds;
                        axpy(&mut g.dq[r * d..(r + 1) * d], scale * ds, krow);
                        axpy(&mut g.dk[j * d..(j + 1) * d], scale * ds, qr);
                        axpy(&mut g.dv[j * d..(j + 1) * d], pv, dor);
                    }
                }
            }
            g
        })
        .collect();

    // dQ: each tile owns its rows.
    for (t, g) in tiles.iter().zip(&grads) {
        let seq = &plan.seqs()[t.b];
        scatter(dq, &st.q, t.b, seq.q_start, t.i0, t.rows, t.h, d, &g.dq);
    }
    // dK, dV: sum the tiles of each (sequence, kv head) in a fixed order (deterministic).
    let g_size = plan.group_size();
    let mut tiles_of = vec![Vec::new(); plan.batch() * plan.kv_heads()];
    for (idx, t) in tiles.iter().enumerate() {
        tiles_of[t.b * plan.kv_heads() + t.h / g_size].push(idx);
    }
    for (b, seq) in plan.seqs().iter().enumerate() {
        for h in 0..plan.heads() {
            scatter(
                dq,
                &st.q,
                b,
                seq.q_start,
                seq.len_q,
                seq.rows_q - seq.len_q,
                h,
                d,
                &[],
            );
        }
        for hk in 0..plan.kv_heads() {
            let mut dk_acc = vec![0.0; seq.len_k * d];
            let mut dv_acc = vec![0.0; seq.len_k * d];
            for &idx in &tiles_of[b * plan.kv_heads() + hk] {
                let g = &grads[idx];
                for (a, x) in dk_acc.iter_mut().zip(&g.dk) {
                    *a += x;
                }
                for (a, x) in dv_acc.iter_mut().zip(&g.dv) {
                    *a += x;
                }
            }
            scatter(dk, &st.k, b, seq.k_start, 0, seq.rows_k, hk, d, &dk_acc);
            scatter(dv, &st.v, b, seq.k_start, 0, seq.rows_k, hk, d, &dv_acc);
        }
    }
    if let Some(db) = d_bias {
        let mut sums = vec![0.0f64; plan.batch()];
        for (t, g) in tiles.iter().zip(&grads) {
            sums[t.b] += g.dbias;
        }
        for (b, s) in sums.iter().enumerate() {
            db.set(b, *s);
        }
    }
}

/// Spot checks of problems too large for the full reference: single rows by the definition.
pub mod rows {
    use super::{dot, key_end, sigmoid, Store};
    use crate::Plan;

    fn row<T: Store + ?Sized>(t: &T, base: usize, d: usize) -> Vec<f64> {
        (0..d).map(|c| t.get(base + c)).collect()
    }

    /// Row `i` of O for sequence `b`, query head `h` (zeros for a padded row).
    pub fn output<T: Store + ?Sized>(
        plan: &Plan,
        q: &T,
        k: &T,
        v: &T,
        b: usize,
        h: usize,
        i: usize,
    ) -> Vec<f64> {
        let (st, d, seq) = (plan.strides(), plan.head_dim(), plan.seqs()[b]);
        let hk = h / plan.group_size();
        let mut out = vec![0.0; d];
        if i >= seq.len_q {
            return out;
        }
        let qi = row(q, Plan::row_offset(&st.q, b, seq.q_start, i, h), d);
        for j in 0..key_end(plan, &seq, i) {
            let kj = row(k, Plan::row_offset(&st.k, b, seq.k_start, j, hk), d);
            let vj = row(v, Plan::row_offset(&st.v, b, seq.k_start, j, hk), d);
            let p = sigmoid(plan.scale() as f64 * dot(&qi, &kj) + plan.bias()[b] as f64);
            for (o, x) in out.iter_mut().zip(&vj) {
                *o += p * x;
            }
        }
        out
    }

    /// Row `i` of dQ for sequence `b`, query head `h`.
    #[allow(clippy::too_many_arguments)]
    pub fn dq<T: Store + ?Sized>(
        plan: &Plan,
        q: &T,
        k: &T,
        v: &T,
        d_o: &T,
        b: usize,
        h: usize,
        i: usize,
    ) -> Vec<f64> {
        let (st, d, seq) = (plan.strides(), plan.head_dim(), plan.seqs()[b]);
        let hk = h / plan.group_size();
        let scale = plan.scale() as f64;
        let mut out = vec![0.0; d];
        if i >= seq.len_q {
            return out;
        }
        let qi = row(q, Plan::row_offset(&st.q, b, seq.q_start, i, h), d);
        let doi = row(d_o, Plan::row_offset(&st.o, b, seq.q_start, i, h), d);
        for j in 0..key_end(plan, &seq, i) {
            let kj = row(k, Plan::row_offset(&st.k, b, seq.k_start, j, hk), d);
            let vj = row(v, Plan::row_offset(&st.v, b, seq.k_start, j, hk), d);
            let p = sigmoid(scale * dot(&qi, &kj) + plan.bias()[b] as f64);
            let ds = dot(&doi, &vj) * p * (1.0 - p);
            for (o, x) in out.iter_mut().zip(&kj) {
                *o += scale * ds * x;
            }
        }
        out
    }

    /// Rows `j` of dK and dV for sequence `b`, key/value head `hk` (summed over its group).
    #[allow(clippy::too_many_arguments)]
    pub fn dk_dv<T: Store + ?Sized>(
        plan: &Plan,
        q: &T,
        k: &T,
        v: &T,
        d_o: &T,
        b: usize,
        hk: usize,
        j: usize,
    ) -> (Vec<f64>, Vec<f64>) {
        let (st, d, seq) = (plan.strides(), plan.head_dim(), plan.seqs()[b]);
        let scale = plan.scale() as f64;
        let (mut dk, mut dv) = (vec![0.0; d], vec![0.0; d]);
        if j >= seq.len_k {
            return (dk, dv);
        }
        let kj = row(k, Plan::row_offset(&st.k, b, seq.k_start, j, hk), d);
        let vj = row(v, Plan::row_offset(&st.v, b, seq.k_start, j, hk), d);
        for h in hk * plan.group_size()..(hk + 1) * plan.group_size() {
            for i in 0..seq.len_q {
                if j >= key_end(plan, &seq, i) {
                    continue;
                }
                let qi = row(q, Plan::row_offset(&st.q, b, seq.q_start, i, h), d);
                let doi = row(d_o, Plan::row_offset(&st.o, b, seq.q_start, i, h), d);
                let p = sigmoid(scale * dot(&qi, &kj) + plan.bias()[b] as f64);
                let ds = dot(&doi, &vj) * p * (1.0 - p);
                for c in 0..d {
                    dk[c] += scale * ds * qi[c];
                    dv[c] += p * doi[c];
                }
            }
        }
        (dk, dv)
    }
}
