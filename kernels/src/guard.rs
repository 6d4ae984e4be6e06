//! Is a CUDA GPU usable here? Checked before anything in cudarc runs, because cudarc panics (rather than
//! returning `Err`) when the driver library is missing, and `catch_unwind` does not help under
//! `panic = "abort"`.

use thiserror::Error;

/// Why CUDA cannot be used on this machine.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GpuAbsence {
    #[error("no CUDA driver library (libcuda.so) could be loaded")]
    NoDriverLibrary,
    #[error("the CUDA driver reports no GPU")]
    NoDevice,
    #[error("the CUDA driver failed: {0}")]
    Driver(String),
}

/// Number of usable CUDA devices, or why there are none. Never panics.
pub fn detect_cuda() -> Result<usize, GpuAbsence> {
    // SAFETY: only dlopen/dlclose of well-known library names; no symbol of the library is called.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(GpuAbsence::NoDriverLibrary);
    }
    // The library is present: the result layer returns errors (e.g. CUDA_ERROR_NO_DEVICE) instead of
    // panicking from here on.
    cudarc::driver::result::init().map_err(|e| no_device_or(e.to_string()))?;
    match cudarc::driver::result::device::get_count() {
        Ok(n) if n > 0 => Ok(n as usize),
        Ok(_) => Err(GpuAbsence::NoDevice),
        Err(e) => Err(no_device_or(e.to_string())),
    }
}

/// `Ok` when at least one CUDA GPU is usable; `Err` says why not. Never panics.
pub fn cuda_available() -> Result<(), GpuAbsence> {
    detect_cuda().map(|_| ())
}

/// How a test that cannot run here says so, in the workspace's one format (README, "Skipped tests";
/// `tests/common/skip.rs`): `SKIPPED <test name>: <why>` on its own line of stderr, so that
/// `grep -c '^SKIPPED'` counts it. The name is the running test's (libtest names each test's thread
/// after the test); outside a test (a bench's main thread) it is `fallback`.
pub fn print_skip(fallback: &str, why: &dyn std::fmt::Display) {
    let name = match std::thread::current().name() {
        Some(n) if n != "main" => n.to_string(),
        _ => fallback.to_string(),
    };
    // The leading newline keeps the line countable after libtest's `test name ... `; one write keeps
    // parallel tests' lines whole.
    eprint!("{}", skip_line(&name, why));
}

fn skip_line(name: &str, why: &dyn std::fmt::Display) -> String {
    format!("\nSKIPPED {name}: {why}\n")
}

fn no_device_or(message: String) -> GpuAbsence {
    if message.contains("NO_DEVICE") {
        GpuAbsence::NoDevice
    } else {
        GpuAbsence::Driver(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_is_one_countable_line() {
        let line = skip_line("some_test", &"no GPU");
        assert_eq!(line, "\nSKIPPED some_test: no GPU\n");
        assert_eq!(line.lines().filter(|l| l.starts_with("SKIPPED")).count(), 1);
    }

    #[test]
    fn cuda_check_never_panics_and_agrees_with_the_driver_library() {
        // SAFETY: dlopen/dlclose only.
        let driver_present = unsafe { cudarc::driver::sys::is_culib_present() };
        match cuda_available() {
            Ok(()) => println!("CUDA available: {} device(s)", detect_cuda().unwrap()),
            Err(e) => {
                println!("CUDA unavailable: {e}");
                if !driver_present {
                    assert_eq!(e, GpuAbsence::NoDriverLibrary);
                }
            }
        }
    }
}
