//! Every malformed problem or buffer returns a precise error, never a panic.

use sigmoid_attn::{
    attention, Backend, Bias, CpuBackend, DType, Error, HostTensor, Layout, Lengths, Problem,
    Strides, TensorStrides,
};

fn plan_err(p: Problem) -> Error {
    match p.plan() {
        Ok(_) => panic!("plan accepted an invalid problem: {p:?}"),
        Err(e) => e,
    }
}

#[test]
fn zero_dimensions() {
    for p in [
        Problem::new(0, 8, 1, 64),
        Problem::new(1, 0, 1, 64),
        Problem::new(1, 8, 0, 64),
        Problem::new(1, 8, 1, 0),
        Problem::new(1, 8, 2, 64).with_kv_heads(0),
        Problem::new(1, 8, 1, 64).with_seq_k(0),
    ] {
        let e = plan_err(p);
        assert!(matches!(e, Error::InvalidProblem(_)), "{e}");
        println!("{e}");
    }
}

#[test]
fn absurd_dimensions_and_overflow() {
    let e = plan_err(Problem::new(1, 8, 1, 4096));
    assert!(
        matches!(e, Error::InvalidProblem(ref m) if m.contains("head_dim")),
        "{e}"
    );
    let e = plan_err(Problem::new(1, 8, 1, 64).with_seq_k(usize::MAX));
    assert!(
        matches!(e, Error::InvalidProblem(ref m) if m.contains("seq_k")),
        "{e}"
    );
    let e = plan_err(Problem::new(
        u32::MAX as usize,
        u32::MAX as usize,
        1 << 20,
        1024,
    ));
    assert!(matches!(e, Error::Overflow(_)), "{e}");
    println!("{e}");
}

#[test]
fn heads_not_divisible_by_kv_heads() {
    let e = plan_err(Problem::new(1, 8, 6, 64).with_kv_heads(4));
    assert!(
        matches!(e, Error::InvalidProblem(ref m) if m.contains("multiple")),
        "{e}"
    );
}

#[test]
fn length_above_n() {
    let e = plan_err(Problem::new(2, 8, 1, 64).with_lengths(Lengths::padded(&[8, 9])));
    match e {
        Error::LengthExceedsN { batch, len, n, .. } => assert_eq!((batch, len, n), (1, 9, 8)),
        e => panic!("{e}"),
    }
    let e = plan_err(Problem::new(2, 8, 1, 64).with_lengths(Lengths::padded(&[8])));
    assert!(matches!(e, Error::InvalidProblem(_)), "{e}");
}

#[test]
fn malformed_cu_seqlens() {
    let with = |cu: &[u32]| {
        let mut p = Problem::packed(&[0, 5, 9], 1, 64);
        p.lengths = Lengths::packed(cu);
        p
    };
    let cases = [
        (Problem::packed(&[0, 5, 3, 9], 1, 64), "decreases"),
        (Problem::packed(&[1, 5, 9], 1, 64), "starts"),
        (with(&[0, 5, 10]), "ends"),
        (with(&[0]), "entries"),
    ];
    for (p, what) in cases {
        let e = plan_err(p);
        assert!(
            matches!(e, Error::InvalidCuSeqlens { ref reason, .. } if reason.contains(what)),
            "{what}: {e}"
        );
        println!("{e}");
    }
}

#[test]
fn non_finite_scale_and_bias() {
    for s in [f32::NAN, f32::INFINITY] {
        let e = plan_err(Problem::new(1, 8, 1, 64).with_scale(s));
        assert!(
            matches!(e, Error::InvalidProblem(ref m) if m.contains("scale")),
            "{e}"
        );
        let e = plan_err(Problem::new(1, 8, 1, 64).with_bias(Bias::Constant(s)));
        assert!(
            matches!(e, Error::InvalidProblem(ref m) if m.contains("bias")),
            "{e}"
        );
    }
}

#[test]
fn overlapping_strides() {
    let s = Strides {
        batch: 8 * 64,
        seq: 32,
        head: 64,
    };
    let layout = Layout::Strided(TensorStrides {
        q: s,
        k: s,
        v: s,
        o: s,
    });
    let e = plan_err(Problem::new(1, 8, 1, 64).with_layout(layout));
    assert!(
        matches!(e, Error::InvalidProblem(ref m) if m.contains("overlap")),
        "{e}"
    );
}

#[test]
fn buffers_of_wrong_size_or_dtype() {
    let p = Problem::new(1, 8, 2, 16).with_dtype(DType::F16);
    let plan = p.plan().unwrap();
    let good = HostTensor::filled(DType::F16, plan.q_elems(), 0.5);
    let short = HostTensor::filled(DType::F16, plan.q_elems() - 1, 0.5);
    let wrong = HostTensor::filled(DType::F32, plan.q_elems(), 0.5);
    let e = attention(&p, &short, &good, &good).unwrap_err();
    assert!(matches!(e, Error::InvalidBuffer { tensor: "q", .. }), "{e}");
    println!("{e}");
    let e = attention(&p, &good, &good, &wrong).unwrap_err();
    assert!(matches!(e, Error::InvalidBuffer { tensor: "v", .. }), "{e}");
    let cpu = CpuBackend::new();
    let mut o = HostTensor::filled(DType::F16, plan.o_elems() - 3, 0.0);
    let e = cpu.forward(&plan, &good, &good, &good, &mut o).unwrap_err();
    assert!(matches!(e, Error::InvalidBuffer { tensor: "o", .. }), "{e}");
}
