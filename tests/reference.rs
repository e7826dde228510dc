//! Independent checks of the CPU reference: small hand-computed cases and finite differences of
//! the forward (in f64) against the backward.

use sigmoid_attn::cpu::reference;
use sigmoid_attn::{attention, Bias, DType, HostTensor, Layout, Lengths, Problem};

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn f32_tensor(v: &[f64]) -> HostTensor {
    HostTensor::from_f64(DType::F32, v)
}

/// Runs the reference forward in f64 on f64 inputs.
fn forward_f64(problem: &Problem, q: &[f64], k: &[f64], v: &[f64]) -> Vec<f64> {
    let plan = problem.plan().unwrap();
    let mut o = vec![f64::NAN; plan.o_elems()];
    reference::forward(&plan, q, k, v, o.as_mut_slice());
    o
}

#[test]
fn hand_case_two_keys() {
    // q = [1, 0], K = [[1, 0], [0, 1]]: logits [1, 0]; O = σ(1)·[1, 2] + σ(0)·[3, 4].
    let p = Problem::new(1, 1, 1, 2)
        .with_seq_k(2)
        .with_scale(1.0)
        .with_bias(Bias::None)
        .with_dtype(DType::F32);
    let o = forward_f64(
        &p,
        &[1.0, 0.0],
        &[1.0, 0.0, 0.0, 1.0],
        &[1.0, 2.0, 3.0, 4.0],
    );
    let s1 = sigmoid(1.0);
    assert!((o[0] - (s1 + 1.5)).abs() < 1e-15, "{o:?}");
    assert!((o[1] - (2.0 * s1 + 2.0)).abs() < 1e-15, "{o:?}");
}

#[test]
fn hand_case_default_bias_is_minus_log_valid_keys() {
    // Zero query: the logit is the bias −ln 2 (two valid keys of three), so P = 1/3 on the
    // two valid keys and the padded third key is ignored.
    let p = Problem::new(1, 3, 1, 1)
        .with_lengths(Lengths::padded(&[2]))
        .with_dtype(DType::F32);
    let q = [0.0, 0.0, 0.0];
    let k = [5.0, -7.0, 11.0];
    let v = [3.0, 6.0, 1000.0];
    let o = forward_f64(&p, &q, &k, &v);
    // The bias is stored as f32 (as kernels use it), hence 1e-7 rather than 1e-15.
    assert!((o[0] - 3.0).abs() < 1e-7, "{o:?}");
    assert!((o[1] - 3.0).abs() < 1e-7, "{o:?}");
    assert_eq!(o[2], 0.0, "padded query row must be zero");
}

#[test]
fn hand_case_causal() {
    // Row 0 sees key 0 only; row 1 sees keys 0 and 1.
    let p = Problem::new(1, 2, 1, 1)
        .with_scale(1.0)
        .with_bias(Bias::None)
        .with_causal(true)
        .with_dtype(DType::F32);
    let o = forward_f64(&p, &[1.0, 1.0], &[1.0, 2.0], &[10.0, 20.0]);
    assert!((o[0] - 10.0 * sigmoid(1.0)).abs() < 1e-13);
    assert!((o[1] - (10.0 * sigmoid(1.0) + 20.0 * sigmoid(2.0))).abs() < 1e-13);
}

#[test]
fn hand_case_sequence_without_keys() {
    // Sequence 0 has queries but no keys: its output rows and every gradient are zeros.
    let p = Problem::new(2, 3, 1, 2)
        .with_lengths(Lengths::Padded {
            q: vec![3, 2],
            k: vec![0, 3],
        })
        .with_dtype(DType::F32);
    let plan = p.plan().unwrap();
    let x = f32_tensor(
        &(0..plan.q_elems())
            .map(|i| i as f64 * 0.1 - 0.5)
            .collect::<Vec<_>>(),
    );
    let out = attention(&p, &x, &x, &x).unwrap();
    let o = out.o.to_f64();
    assert!(o[..6].iter().all(|&v| v == 0.0), "{o:?}");
    assert!(o[6..10].iter().all(|&v| v != 0.0), "{o:?}");
    assert!(
        o[10..].iter().all(|&v| v == 0.0),
        "padded row of sequence 1: {o:?}"
    );
    let g = sigmoid_attn::attention_backward(&p, &x, &x, &x, &x, true).unwrap();
    assert!(g.dq.to_f64()[..6].iter().all(|&v| v == 0.0));
    assert!(g.dk.to_f64()[..6].iter().all(|&v| v == 0.0));
    assert_eq!(g.d_bias.unwrap()[0], 0.0);
}

#[test]
fn reference_sigmoid_is_accurate_where_the_tanh_form_is_not() {
    for x in [-800.0, -30.0, -5.0, -1e-3, 0.0, 2.5, 40.0] {
        let r = reference::sigmoid(x);
        let naive = 1.0 / (1.0 + (-x).exp());
        assert!(
            (r - naive).abs() <= 4.0 * f64::EPSILON * r + 1e-300,
            "{x}: {r} vs {naive}"
        );
    }
    // The tanh form loses relative precision for very negative logits (the documented reason
    // the fast mode's error is stated in absolute terms).
    let tanh_form = 0.5 * (0.5f64 * -30.0).tanh() + 0.5;
    let rel = (tanh_form - reference::sigmoid(-30.0)).abs() / reference::sigmoid(-30.0);
    assert!(rel > 1e-6, "{rel}");
}

/// Deterministic pseudo-random values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

/// L = Σ O ⊙ G; checks dL/dQ, dL/dK, dL/dV and dL/d_bias from the backward against central
/// differences of the f64 forward.
fn finite_difference_check(p: Problem) {
    let p = p.with_dtype(DType::F32).with_bias(Bias::Constant(-0.75));
    let plan = p.plan().unwrap();
    let q = values(plan.q_elems(), 1);
    let k = values(plan.k_elems(), 2);
    let v = values(plan.v_elems(), 3);
    let g = values(plan.o_elems(), 4);
    let mut dq = vec![f64::NAN; plan.q_elems()];
    let mut dk = vec![f64::NAN; plan.k_elems()];
    let mut dv = vec![f64::NAN; plan.v_elems()];
    let mut db = vec![f64::NAN; plan.batch()];
    reference::backward(
        &plan,
        q.as_slice(),
        &k,
        &v,
        &g,
        dq.as_mut_slice(),
        &mut dk,
        &mut dv,
        Some(&mut db),
    );
    let loss = |p: &Problem, q: &[f64], k: &[f64], v: &[f64]| -> f64 {
        forward_f64(p, q, k, v)
            .iter()
            .zip(&g)
            .map(|(o, g)| o * g)
            .sum()
    };
    let h = 1e-5;
    let mut worst: f64 = 0.0;
    for (which, grad) in [(0, &dq), (1, &dk), (2, &dv)] {
        for idx in 0..grad.len() {
            let mut t = [q.clone(), k.clone(), v.clone()];
            t[which][idx] += h;
            let up = loss(&p, &t[0], &t[1], &t[2]);
            t[which][idx] -= 2.0 * h;
            let down = loss(&p, &t[0], &t[1], &t[2]);
            let fd = (up - down) / (2.0 * h);
            let err = (fd - grad[idx]).abs();
            worst = worst.max(err);
            assert!(
                err < 1e-7 * (1.0 + fd.abs()),
                "tensor {which}[{idx}]: fd {fd} vs {}",
                grad[idx]
            );
        }
    }
    // The bias is an f32 constant: step by an exactly representable amount.
    let hb = 1.0 / 1024.0;
    let at = |c: f64| loss(&p.clone().with_bias(Bias::Constant(c as f32)), &q, &k, &v);
    let fd = (at(-0.75 + hb) - at(-0.75 - hb)) / (2.0 * hb);
    let total: f64 = db.iter().sum();
    assert!(
        (fd - total).abs() < 1e-5 * (1.0 + fd.abs()),
        "d_bias: fd {fd} vs {total}"
    );
    println!("worst finite-difference error {worst:.2e}");
}

#[test]
fn finite_differences_dense() {
    finite_difference_check(Problem::new(1, 5, 2, 3));
}

#[test]
fn finite_differences_padded_causal_gqa() {
    finite_difference_check(
        Problem::new(2, 6, 4, 3)
            .with_kv_heads(2)
            .with_causal(true)
            .with_lengths(Lengths::padded(&[4, 6])),
    );
}

#[test]
fn finite_differences_packed_cross_bhnd() {
    finite_difference_check(
        Problem::new(2, 7, 2, 4)
            .with_seq_k(5)
            .with_layout(Layout::Bhnd)
            .with_lengths(Lengths::Packed {
                cu_seqlens_q: vec![0, 3, 7],
                cu_seqlens_k: vec![0, 4, 5],
            }),
    );
}

#[test]
fn dtype_round_trip_is_exact_for_representable_values() {
    let v = [0.0, 1.0, -2.5, 0.375, 256.0];
    for dt in DType::ALL {
        let t = HostTensor::from_f64(dt, &v);
        assert_eq!(t.to_f64(), v, "{dt}");
        assert_eq!(HostTensor::from_bytes(dt, t.as_bytes()), t);
    }
}

#[test]
fn spot_check_rows_match_the_full_reference() {
    let p = Problem::new(2, 9, 4, 5)
        .with_kv_heads(2)
        .with_causal(true)
        .with_lengths(Lengths::padded(&[7, 9]))
        .with_dtype(DType::F32);
    let plan = p.plan().unwrap();
    let (q, k, v, g) = (
        values(plan.q_elems(), 5),
        values(plan.k_elems(), 6),
        values(plan.v_elems(), 7),
        values(plan.o_elems(), 8),
    );
    let o = forward_f64(&p, &q, &k, &v);
    let mut dq = vec![f64::NAN; plan.q_elems()];
    let mut dk = vec![f64::NAN; plan.k_elems()];
    let mut dv = vec![f64::NAN; plan.v_elems()];
    reference::backward(
        &plan,
        q.as_slice(),
        &k,
        &v,
        &g,
        dq.as_mut_slice(),
        &mut dk,
        &mut dv,
        None,
    );
    let st = plan.strides();
    let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12);
    for b in 0..2 {
        for h in 0..4 {
            for i in 0..9 {
                let oo = sigmoid_attn::Plan::row_offset(&st.o, b, 0, i, h);
                let row = reference::rows::output(&plan, q.as_slice(), &k, &v, b, h, i);
                assert!(close(&row, &o[oo..oo + 5]), "o b{b} h{h} i{i}");
                let qo = sigmoid_attn::Plan::row_offset(&st.q, b, 0, i, h);
                let row = reference::rows::dq(&plan, q.as_slice(), &k, &v, &g, b, h, i);
                assert!(close(&row, &dq[qo..qo + 5]), "dq b{b} h{h} i{i}");
            }
        }
        for hk in 0..2 {
            for j in 0..9 {
                let ko = sigmoid_attn::Plan::row_offset(&st.k, b, 0, j, hk);
                let (rk, rv) = reference::rows::dk_dv(&plan, q.as_slice(), &k, &v, &g, b, hk, j);
                assert!(close(&rk, &dk[ko..ko + 5]), "dk b{b} hk{hk} j{j}");
                assert!(close(&rv, &dv[ko..ko + 5]), "dv b{b} hk{hk} j{j}");
            }
        }
    }
}
