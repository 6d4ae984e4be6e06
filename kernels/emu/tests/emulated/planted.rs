//! Planted bugs: build.rs compiles textual mutations of real kernel sources into separate runners; each
//! must fail, by an emulator check or by numbers outside the tolerance the real kernel meets.

use crate::attention::{self, BF16_TOL, F32_TOL};
use crate::common::worst;
use scinterp_kernels_emu::mutant_runner;

fn runner(name: &str) -> std::path::PathBuf {
    mutant_runner(name).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn swapped_mma_fragments_give_wrong_numbers() {
    let c = attention::case(11);
    let want = attention::cpu(&c);
    let ok = attention::run(&c, true, None, None).unwrap();
    assert!(
        worst(&ok, &want, BF16_TOL.0, BF16_TOL.1) <= 1.0,
        "the unmutated kernel must pass"
    );
    match attention::run(&c, true, None, Some(&runner("swapped_fragments"))) {
        Ok(got) => {
            let w = worst(&got, &want, BF16_TOL.0, BF16_TOL.1);
            eprintln!("swapped fragments: {w:.1}× the tolerance");
            assert!(w > 1.0, "swapped Q fragments were not detected");
        }
        Err(e) => panic!("expected wrong numbers, got an emulator failure: {e}"),
    }
}

#[test]
fn a_missing_barrier_is_detected() {
    let c = attention::case(12);
    let want = attention::cpu(&c);
    match attention::run(&c, true, None, Some(&runner("missing_barrier"))) {
        // Reads of shared memory not yet written see the 0xFF fill (NaN).
        Ok(got) => {
            let w = worst(&got, &want, BF16_TOL.0, BF16_TOL.1);
            eprintln!("missing barrier: {w:.1}× the tolerance");
            assert!(w > 1.0, "the missing __syncthreads was not detected");
        }
        Err(e) => assert_eq!(e.status, Some(3), "{e}"),
    }
}

#[test]
fn an_early_return_before_a_shuffle_is_an_emulator_error() {
    let c = attention::case(13);
    let err = attention::run(&c, false, None, Some(&runner("early_return_before_shuffle")))
        .expect_err("a full-mask shuffle with exited lanes must fail");
    assert_eq!(err.status, Some(3), "{err}");
    assert!(err.message.contains("has exited"), "{err}");
    eprintln!("early return: {err}");
    // The unmutated kernel passes the same case.
    let got = attention::run(&c, false, None, None).unwrap();
    crate::common::assert_close(
        "attention_varlen_f32",
        &got,
        &attention::cpu(&c),
        F32_TOL.0,
        F32_TOL.1,
    );
}

#[test]
fn a_barrier_under_a_divergent_condition_is_an_emulator_error() {
    use scinterp_kernels_emu::{Arg, Program};
    let (rows, n, k) = (1usize, 300usize, 8usize);
    let pre: Vec<f32> = (0..n).map(|i| ((i * 37) % 101) as f32).collect();
    let mut p = Program::new();
    let pb = p.upload(&pre);
    let ib = p.zeros::<u32>(rows * k);
    let vb = p.zeros::<f32>(rows * k);
    p.launch(
        "sae_topk_f32",
        (rows as u32, 1, 1),
        (256, 1, 1),
        k * 8,
        &[
            Arg::Buf(pb),
            Arg::Buf(ib),
            Arg::Buf(vb),
            Arg::I32(rows as i32),
            Arg::I32(n as i32),
            Arg::I32(k as i32),
            Arg::I32(k as i32),
        ],
    );
    p.run().expect("the unmutated kernel runs");
    let err = p
        .run_with(&runner("divergent_barrier"))
        .expect_err("a divergent __syncthreads must fail");
    assert_eq!(err.status, Some(3), "{err}");
    eprintln!("divergent barrier: {err}");
}

#[test]
fn a_dense_scatter_without_its_barrier_gives_wrong_gradients() {
    use crate::sae::launch_dense_scatter;
    use scinterp_kernels_emu::Program;
    // 300 latents over 256 threads; slot j is written by thread j, column f zeroed by thread f % 256.
    let (rows, k, d_sae) = (3usize, 8usize, 300usize);
    let idx: Vec<u32> = (0..rows * k)
        .map(|i| (37 * i as u32 + 11) % d_sae as u32)
        .collect();
    let w: Vec<f32> = (0..rows * k).map(|i| 1.0 + i as f32).collect();
    let mut p = Program::new();
    let (ib, wb) = (p.upload(&idx), p.upload(&w));
    let out = p.upload(&vec![f32::NAN; rows * d_sae]);
    launch_dense_scatter(
        &mut p,
        "sae_dense_scatter_f32",
        (ib, wb, k, k, 0, 1.0),
        None,
        out,
        (rows, d_sae),
    );
    let want_nonzero = rows * k;
    let nonzero = |v: Vec<f32>| v.iter().filter(|x| **x != 0.0).count();
    assert_eq!(
        nonzero(p.run().unwrap().read::<f32>(out)),
        want_nonzero,
        "the real kernel"
    );
    match p.run_with(&runner("dense_scatter_missing_barrier")) {
        Ok(mem) => {
            let got = nonzero(mem.read::<f32>(out));
            eprintln!("dense scatter without its barrier: {got} of {want_nonzero} values kept");
            assert_ne!(got, want_nonzero, "the missing __syncthreads was not detected");
        }
        Err(e) => assert_eq!(e.status, Some(3), "{e}"),
    }
}

#[test]
fn code_sums_without_their_barrier_give_wrong_sums() {
    use crate::trace::code_sums_program;
    use scinterp_kernels::gpu::CodeSegments;
    // 40 latents over 32 threads, one segment of two rows: row 0 names latents 6, 8, 10, 12, each zeroed
    // by thread g % 32 after thread j (0–3) has added to it when the zero fill has no barrier.
    let (k, n_targets) = (4usize, 40usize);
    let idx: Vec<u32> = vec![6, 8, 10, 12, 7, 8, 33, 1];
    let val: Vec<f32> = (0..8).map(|i| 1.0 + i as f32).collect();
    let want = CodeSegments::new(0, &[2], n_targets)
        .unwrap()
        .sums_host(&idx, &val, k)
        .unwrap();
    let (p, out) = code_sums_program((&idx, &val, k), &[0, 2], n_targets, 32);
    crate::common::assert_bits_eq("the real kernel", &p.run().unwrap().read::<f32>(out), &want);
    match p.run_with(&runner("code_sums_missing_barrier")) {
        Ok(mem) => {
            let got = mem.read::<f32>(out);
            let wrong = got
                .iter()
                .zip(&want)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            eprintln!("code sums without their barrier: {wrong} of {n_targets} sums wrong");
            assert!(wrong > 0, "the missing __syncthreads was not detected");
        }
        Err(e) => assert_eq!(e.status, Some(3), "{e}"),
    }
}
