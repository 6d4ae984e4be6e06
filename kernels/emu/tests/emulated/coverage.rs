//! Every entry point of the registry is launched by one of these tests (a new kernel needs its test here),
//! and the runner was built from every registry kernel.

const TESTS: &[&str] = &[
    include_str!("attention.rs"),
    include_str!("elementwise.rs"),
    include_str!("gemm.rs"),
    include_str!("hook_edits.rs"),
    include_str!("sae.rs"),
    include_str!("trace.rs"),
];

#[test]
fn every_registry_entry_point_is_run_by_a_test() {
    let mut missing = Vec::new();
    for k in scinterp_kernels::KERNELS {
        for e in k.entry_points {
            let quoted = format!("\"{e}\"");
            if !TESTS.iter().any(|t| t.contains(&quoted)) {
                missing.push(format!("{}::{e}", k.name));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "entry points without an emulator test: {missing:?}"
    );
}

#[test]
fn an_unknown_entry_point_or_a_wrong_argument_list_is_refused() {
    use scinterp_kernels_emu::{Arg, Program};
    let mut p = Program::new();
    p.launch("no_such_kernel", (1, 1, 1), (32, 1, 1), 0, &[]);
    let e = p.run().unwrap_err();
    assert_eq!(e.status, Some(2), "{e}");
    assert!(e.message.contains("no_such_kernel"), "{e}");
    let mut p = Program::new();
    let b = p.zeros::<f32>(4);
    // bias_relu_f32 takes 5 arguments; a float where an int goes.
    p.launch(
        "bias_relu_f32",
        (1, 1, 1),
        (32, 1, 1),
        0,
        &[Arg::Buf(b), Arg::Buf(b), Arg::Buf(b), Arg::F64(1.0), Arg::I32(4)],
    );
    let e = p.run().unwrap_err();
    assert_eq!(e.status, Some(2), "{e}");
}

#[test]
fn an_out_of_bounds_read_is_caught_by_the_sanitizer() {
    use scinterp_kernels_emu::{sanitizers, Arg, Program};
    if !sanitizers().contains("address") {
        scinterp_kernels::print_skip(
            "an_out_of_bounds_read_is_caught_by_the_sanitizer",
            &"the emulator was built without AddressSanitizer",
        );
        return;
    }
    // bias_relu_f32 over 2 × 8 elements with a bias of 4 instead of 8 values: reads past its end.
    let mut p = Program::new();
    let x = p.zeros::<f32>(16);
    let bias = p.zeros::<f32>(4);
    p.launch(
        "bias_relu_f32",
        (1, 1, 1),
        (32, 1, 1),
        0,
        &[Arg::Buf(x), Arg::Buf(bias), Arg::Buf(x), Arg::I32(2), Arg::I32(8)],
    );
    let e = p.run().unwrap_err();
    assert!(e.message.contains("heap-buffer-overflow"), "{e}");
}
