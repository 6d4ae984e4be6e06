//! Builds the emulator runner: the C++ emulation runtime (cpp/) plus every kernel of the registry
//! (kernels/src/*.cu, the same sources NVRTC compiles), with AddressSanitizer and UBSan where the
//! compiler has them. Also builds one runner per planted bug: a textual mutation of a real kernel source,
//! made here from the current source, that the tests must see fail.
//!
//! Outputs (as compile-time environment of the crate): SCINTERP_EMU_RUNNER (the runner's path),
//! SCINTERP_EMU_MUTANTS (the directory of mutant runners), SCINTERP_EMU_SANITIZERS (the -fsanitize list,
//! empty when unavailable).

#[allow(dead_code)]
#[path = "../src/registry.rs"]
mod registry;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A planted bug: in kernel `kernel`, every (find, replace) pair applied once; the test names it `name`.
struct Mutant {
    name: &'static str,
    kernel: &'static str,
    edits: &'static [(&'static str, &'static str)],
}

const MUTANTS: &[Mutant] = &[
    // Two A-fragment registers of Q exchanged (rows g+8 and columns 8.. swapped).
    Mutant {
        name: "swapped_fragments",
        kernel: "attention_varlen",
        edits: &[
            ("qf[kc][1] = ld_pair(row_hi);", "qf[kc][1] = ld_pair(row_lo + 8);"),
            ("qf[kc][2] = ld_pair(row_lo + 8);", "qf[kc][2] = ld_pair(row_hi);"),
        ],
    },
    // The barrier between the Q tile's stores and its fragment loads deleted.
    Mutant {
        name: "missing_barrier",
        kernel: "attention_varlen",
        edits: &[(
            "*reinterpret_cast<uint4*>(s_q + r * BF_LDS + col) = v;\n    }\n    __syncthreads();",
            "*reinterpret_cast<uint4*>(s_q + r * BF_LDS + col) = v;\n    }",
        )],
    },
    // Threads of query rows past the cell return before the q·k butterfly shuffles of their warp.
    Mutant {
        name: "early_return_before_shuffle",
        kernel: "attention_varlen",
        edits: &[(
            "const bool row_live = q0 + row < end;",
            "const bool row_live = q0 + row < end;\n    if (!row_live) {\n        return;\n    }",
        )],
    },
    // A barrier moved under a condition only thread 0 takes (the others go on to the next barrier or
    // the next ballot).
    Mutant {
        name: "divergent_barrier",
        kernel: "sae_topk",
        edits: &[(
            "    if (tid == 0) {\n        s_gt = 0u;\n    }\n    __syncthreads();",
            "    if (tid == 0) {\n        s_gt = 0u;\n        __syncthreads();\n    }",
        )],
    },
    // The barrier between the dense scatter's zero fill and its writes deleted: a thread's write can be
    // overwritten by another thread's later zero fill of the same column.
    Mutant {
        name: "dense_scatter_missing_barrier",
        kernel: "sae_sparse",
        edits: &[(
            "        o[c] = sae_dense_from_float<T>(0.0f);\n    }\n    __syncthreads();",
            "        o[c] = sae_dense_from_float<T>(0.0f);\n    }",
        )],
    },
    // The barrier between the code sums' zero fill and the first row's adds deleted: an add can be
    // overwritten by another thread's later zero fill of the same latent.
    Mutant {
        name: "code_sums_missing_barrier",
        kernel: "trace",
        edits: &[(
            "        row_out[g] = 0.0f;\n    }\n    __syncthreads();",
            "        row_out[g] = 0.0f;\n    }",
        )],
    },
];

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let cpp = manifest.join("cpp");
    let kernel_src = manifest.join("../src").canonicalize().expect("kernels/src");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=cpp");
    println!("cargo:rerun-if-changed=../src");

    let sanitizers = sanitizers();
    if sanitizers.is_empty() {
        println!("cargo:warning=the C++ compiler has no AddressSanitizer; the emulator runs without it");
    }

    // Wrappers: the runtime header, the kernel source as is, and the table of its entry points.
    let gen = out.join("gen");
    std::fs::create_dir_all(&gen).expect("create OUT_DIR/gen");
    let mut kernel_units = Vec::new();
    for k in registry::KERNELS {
        let src = kernel_src.join(format!("{}.cu", k.name));
        let unit = gen.join(format!("{}.cpp", k.name));
        write_unit(&unit, &src, k.entry_points);
        kernel_units.push((k.name, unit));
    }

    let base = compile(
        &out.join("obj"),
        &sanitizers,
        &[cpp.join("runtime.cpp"), cpp.join("main.cpp")],
        &cpp,
        &kernel_src,
    );
    let kernels = compile(
        &out.join("obj"),
        &sanitizers,
        &kernel_units.iter().map(|(_, u)| u.clone()).collect::<Vec<_>>(),
        &cpp,
        &kernel_src,
    );
    let runner = out.join("emu-runner");
    link(&runner, &sanitizers, base.iter().chain(&kernels));

    // Mutants: the mutated copy sits beside nothing else, so its `#include "common.cuh"` is found through
    // the include path (kernels/src), as NVRTC finds it through the in-memory headers.
    let mutants_dir = out.join("mutants");
    std::fs::create_dir_all(&mutants_dir).expect("create OUT_DIR/mutants");
    for m in MUTANTS {
        let missing = mutants_dir.join(format!("{}.missing", m.name));
        let _ = std::fs::remove_file(&missing);
        let source =
            std::fs::read_to_string(kernel_src.join(format!("{}.cu", m.kernel))).expect("read kernel");
        let mut text = source.clone();
        let mut lost = None;
        for (find, replace) in m.edits {
            if text.matches(find).count() != 1 {
                lost = Some(*find);
                break;
            }
            text = text.replacen(find, replace, 1);
        }
        if let Some(find) = lost {
            // The tests report this: the planted bug no longer applies to the current source.
            std::fs::write(
                &missing,
                format!("the text {find:?} is not exactly once in {}.cu", m.kernel),
            )
            .expect("write marker");
            continue;
        }
        let dir = mutants_dir.join(m.name);
        std::fs::create_dir_all(&dir).expect("create mutant dir");
        let src = dir.join(format!("{}.cu", m.kernel));
        std::fs::write(&src, text).expect("write mutant source");
        let unit = dir.join(format!("{}.cpp", m.kernel));
        let entries = registry::kernel(m.kernel)
            .expect("mutant of a registry kernel")
            .entry_points;
        write_unit(&unit, &src, entries);
        let obj = compile(&dir.join("obj"), &sanitizers, &[unit], &cpp, &kernel_src);
        let others = kernel_units
            .iter()
            .zip(&kernels)
            .filter(|((name, _), _)| *name != m.kernel)
            .map(|(_, o)| o);
        link(
            &mutants_dir.join(m.name).join("emu-runner"),
            &sanitizers,
            base.iter().chain(others).chain(&obj),
        );
    }

    println!("cargo:rustc-env=SCINTERP_EMU_RUNNER={}", runner.display());
    println!("cargo:rustc-env=SCINTERP_EMU_MUTANTS={}", mutants_dir.display());
    println!("cargo:rustc-env=SCINTERP_EMU_SANITIZERS={}", sanitizers.join(","));
}

fn write_unit(unit: &Path, source: &Path, entries: &[&str]) {
    let mut text = String::from(
        "// Generated by kernels/emu/build.rs.\n#define SCINTERP_EMU 1\n#include \"runtime.h\"\n",
    );
    writeln!(text, "#include {:?}", source.display().to_string()).unwrap();
    text.push_str("namespace {\nconst emu::Entry entries[] = {\n");
    for e in entries {
        writeln!(text, "    EMU_ENTRY({e}),").unwrap();
    }
    text.push_str(
        "};\nstruct Register {\n    Register() { emu::register_entries(entries, sizeof entries / sizeof entries[0]); }\n} \
         registered;\n}  // namespace\n",
    );
    std::fs::write(unit, text).expect("write wrapper");
}

fn build(sanitizers: &[&str], cpp: &Path, kernel_src: &Path) -> cc::Build {
    let mut b = cc::Build::new();
    b.cpp(true)
        .std("c++20")
        .opt_level(1)
        .debug(false)
        .cargo_metadata(false)
        .warnings(false)
        .include(cpp)
        .include(cpp.join("include"))
        .include(kernel_src)
        // IEEE f32 as the GPU's explicit arithmetic: no FMA contraction, no fast math.
        .flag("-ffp-contract=off")
        .flag("-fno-strict-aliasing")
        .flag("-fno-omit-frame-pointer");
    if !sanitizers.is_empty() {
        b.flag(format!("-fsanitize={}", sanitizers.join(",")));
        b.flag("-fno-sanitize-recover=all");
    }
    b
}

/// Compiles `files` into `dir`, a few at a time in parallel; returns the objects in order.
fn compile(
    dir: &Path,
    sanitizers: &[&str],
    files: &[PathBuf],
    cpp: &Path,
    kernel_src: &Path,
) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).expect("create object dir");
    let jobs = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 4);
    let chunks: Vec<&[PathBuf]> = files.chunks(files.len().div_ceil(jobs).max(1)).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|chunk| {
                s.spawn(move || {
                    let mut b = build(sanitizers, cpp, kernel_src);
                    b.out_dir(dir).files(chunk.iter());
                    b.compile_intermediates()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("C++ compile thread panicked"))
            .collect()
    })
}

fn link<'a>(exe: &Path, sanitizers: &[&str], objects: impl Iterator<Item = &'a PathBuf>) {
    let tool = cc::Build::new().cpp(true).cargo_metadata(false).get_compiler();
    let mut cmd = tool.to_command();
    // Flags for compiling only (-c and friends are not in to_command); keep -m64 and the like.
    cmd.args(objects).arg("-o").arg(exe);
    if !sanitizers.is_empty() {
        cmd.arg(format!("-fsanitize={}", sanitizers.join(",")));
    }
    cmd.arg("-pthread");
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C++ linker {cmd:?}: {e}"));
    assert!(status.success(), "linking {} failed ({status})", exe.display());
}

/// The sanitizers the C++ compiler can build and run a program with.
fn sanitizers() -> Vec<&'static str> {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("probe");
    std::fs::create_dir_all(&out).expect("create probe dir");
    let src = out.join("probe.cpp");
    std::fs::write(
        &src,
        "#include <vector>\nint main() { std::vector<int> v(100, 1); return v[99] - 1; }\n",
    )
    .expect("write probe");
    for set in [&["address", "undefined"][..], &["address"][..]] {
        let tool = cc::Build::new().cpp(true).cargo_metadata(false).get_compiler();
        let exe = out.join("probe");
        let ok = tool
            .to_command()
            .arg(format!("-fsanitize={}", set.join(",")))
            .arg(&src)
            .arg("-o")
            .arg(&exe)
            .status()
            .is_ok_and(|s| s.success())
            && runs_within(&exe, std::time::Duration::from_secs(20));
        if ok {
            return set.to_vec();
        }
    }
    Vec::new()
}

/// Whether `exe` exits successfully within `limit` (some kernels' address-space layouts make an
/// AddressSanitizer runtime loop forever at start-up instead of failing).
fn runs_within(exe: &Path, limit: std::time::Duration) -> bool {
    let Ok(mut child) = Command::new(exe).spawn() else {
        return false;
    };
    let start = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if start.elapsed() < limit => std::thread::sleep(std::time::Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}
