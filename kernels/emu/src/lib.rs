//! Runs the real CUDA kernel sources of `scinterp-kernels` on the CPU, for tests.
//!
//! The build script compiles a small C++ emulation of the device (kernels/emu/cpp: one fiber per CUDA
//! thread, one block at a time, barriers and warp collectives that check every lane reached the same call
//! site, bit-exact bf16/f16, `mma.sync` and WMMA through register-layout models) together with every kernel
//! of the registry into one executable, built with AddressSanitizer and UBSan where available. A
//! [`Program`] is a set of device buffers and a sequence of launches; [`Program::run`] hands it to that
//! executable and returns the buffers afterwards. Tests in `tests/` drive every kernel at small shapes
//! against the engine's CPU references, and check that planted kernel bugs fail.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A device buffer of a [`Program`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buf(u32);

/// One kernel argument, in the kernel's parameter order.
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    /// The start of a buffer.
    Buf(Buf),
    /// A pointer `bytes` into a buffer.
    At(Buf, usize),
    /// A null pointer.
    Null,
    I32(i32),
    U32(u32),
    F32(f32),
    I64(i64),
    U64(u64),
    F64(f64),
}

/// Device buffers and launches, run in order by the emulator.
#[derive(Debug, Default, Clone)]
pub struct Program {
    buffers: Vec<Vec<u8>>,
    launches: Vec<u8>,
    n_launches: u32,
}

/// A failed run: the runner's exit status and what it printed.
#[derive(Debug, Clone)]
pub struct EmuError {
    /// 2: bad request; 3: an emulator check failed; 4: AddressSanitizer; other: crash or UBSan;
    /// `None`: killed by a signal (SIGALRM after 120 s).
    pub status: Option<i32>,
    pub message: String,
}

impl fmt::Display for EmuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "emulator exit status {:?}: {}", self.status, self.message)
    }
}

impl std::error::Error for EmuError {}

/// Buffers after a run.
#[derive(Debug, Clone)]
pub struct Memory {
    buffers: Vec<Vec<u8>>,
}

impl Memory {
    /// The contents of `b` as `T`s.
    pub fn read<T: bytemuck::Pod>(&self, b: Buf) -> Vec<T> {
        bytemuck::pod_collect_to_vec(&self.buffers[b.0 as usize])
    }
}

impl Program {
    pub fn new() -> Self {
        Self::default()
    }

    /// A buffer holding `data`.
    pub fn upload<T: bytemuck::Pod>(&mut self, data: &[T]) -> Buf {
        self.buffers.push(bytemuck::cast_slice(data).to_vec());
        Buf(self.buffers.len() as u32 - 1)
    }

    /// A buffer of `n` zeroed `T`s.
    pub fn zeros<T: bytemuck::Pod>(&mut self, n: usize) -> Buf {
        self.buffers.push(vec![0u8; n * std::mem::size_of::<T>()]);
        Buf(self.buffers.len() as u32 - 1)
    }

    /// Appends a launch of `entry` (an `extern "C"` kernel of the registry).
    pub fn launch(
        &mut self,
        entry: &str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        dynamic_shared: usize,
        args: &[Arg],
    ) -> &mut Self {
        let l = &mut self.launches;
        l.extend((entry.len() as u32).to_le_bytes());
        l.extend(entry.as_bytes());
        for v in [grid.0, grid.1, grid.2, block.0, block.1, block.2] {
            l.extend(v.to_le_bytes());
        }
        l.extend((dynamic_shared as u64).to_le_bytes());
        l.extend((args.len() as u32).to_le_bytes());
        for a in args {
            let scalar = |l: &mut Vec<u8>, bytes: &[u8]| {
                l.push(2);
                l.extend((bytes.len() as u32).to_le_bytes());
                l.extend(bytes);
            };
            match *a {
                Arg::Null => l.push(0),
                Arg::Buf(b) | Arg::At(b, _) => {
                    let offset = if let Arg::At(_, o) = *a { o } else { 0 };
                    l.push(1);
                    l.extend(b.0.to_le_bytes());
                    l.extend((offset as u64).to_le_bytes());
                }
                Arg::I32(v) => scalar(l, &v.to_le_bytes()),
                Arg::U32(v) => scalar(l, &v.to_le_bytes()),
                Arg::F32(v) => scalar(l, &v.to_le_bytes()),
                Arg::I64(v) => scalar(l, &v.to_le_bytes()),
                Arg::U64(v) => scalar(l, &v.to_le_bytes()),
                Arg::F64(v) => scalar(l, &v.to_le_bytes()),
            }
        }
        self.n_launches += 1;
        self
    }

    /// Runs the launches in the emulator built from the registry's sources.
    pub fn run(&self) -> Result<Memory, EmuError> {
        self.run_with(&runner())
    }

    /// Runs the launches in the given runner executable (e.g. a [`mutant_runner`]).
    pub fn run_with(&self, runner: &Path) -> Result<Memory, EmuError> {
        let io_error = |what: &str, e: std::io::Error| EmuError {
            status: None,
            message: format!("{what}: {e}"),
        };
        let dir = tempfile::tempdir().map_err(|e| io_error("temporary directory", e))?;
        let request = dir.path().join("request");
        let response = dir.path().join("response");
        let mut bytes = b"EMU1".to_vec();
        bytes.extend((self.buffers.len() as u32).to_le_bytes());
        for b in &self.buffers {
            bytes.extend((b.len() as u64).to_le_bytes());
            bytes.extend(b);
        }
        bytes.extend(self.n_launches.to_le_bytes());
        bytes.extend(&self.launches);
        std::fs::File::create(&request)
            .and_then(|mut f| f.write_all(&bytes))
            .map_err(|e| io_error("write the request", e))?;
        let out = Command::new(runner)
            .arg(&request)
            .arg(&response)
            .output()
            .map_err(|e| io_error(&format!("run {}", runner.display()), e))?;
        // ASan's one-line notice about swapcontext is expected; keep everything else.
        let message: String = String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| !l.contains("ASan doesn't fully support makecontext/swapcontext") && !l.is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        if !out.status.success() {
            use std::os::unix::process::ExitStatusExt as _;
            let message = match out.status.signal() {
                Some(14) => format!("{message}\nkilled after 120 s (SIGALRM): a kernel that never finishes?"),
                Some(sig) => format!("{message}\nkilled by signal {sig}"),
                None => message,
            };
            return Err(EmuError {
                status: out.status.code(),
                message,
            });
        }
        let data = std::fs::read(&response).map_err(|e| io_error("read the response", e))?;
        parse_response(&data).ok_or_else(|| EmuError {
            status: Some(0),
            message: "malformed response".into(),
        })
    }
}

fn parse_response(data: &[u8]) -> Option<Memory> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = data.get(at..at.checked_add(n)?)?;
        at += n;
        Some(s)
    };
    let n = u32::from_le_bytes(take(4)?.try_into().ok()?);
    let mut buffers = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len = u64::from_le_bytes(take(8)?.try_into().ok()?) as usize;
        buffers.push(take(len)?.to_vec());
    }
    Some(Memory { buffers })
}

/// The emulator built from the registry's sources.
pub fn runner() -> PathBuf {
    PathBuf::from(env!("SCINTERP_EMU_RUNNER"))
}

/// The sanitizers the runners were built with (empty when the compiler had none).
pub fn sanitizers() -> &'static str {
    env!("SCINTERP_EMU_SANITIZERS")
}

/// Why [`mutant_runner`] has no runner for a planted bug.
#[derive(Debug, Clone)]
pub enum MutantError {
    /// build.rs could not plant the bug (its patch no longer matches the source): build.rs's reason.
    NoLongerApplies { name: String, why: String },
    /// No runner was built for the bug.
    NoRunner { name: String, exe: PathBuf },
}

impl fmt::Display for MutantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MutantError::NoLongerApplies { name, why } => write!(
                f,
                "planted bug {name} no longer applies: {why}; update kernels/emu/build.rs"
            ),
            MutantError::NoRunner { name, exe } => {
                write!(f, "no runner for planted bug {name} at {}", exe.display())
            }
        }
    }
}

impl std::error::Error for MutantError {}

/// The emulator with the planted bug `name` (see build.rs), or why it could not be made.
pub fn mutant_runner(name: &str) -> Result<PathBuf, MutantError> {
    let dir = Path::new(env!("SCINTERP_EMU_MUTANTS"));
    if let Ok(why) = std::fs::read_to_string(dir.join(format!("{name}.missing"))) {
        return Err(MutantError::NoLongerApplies {
            name: name.to_string(),
            why,
        });
    }
    let exe = dir.join(name).join("emu-runner");
    if exe.exists() {
        Ok(exe)
    } else {
        Err(MutantError::NoRunner {
            name: name.to_string(),
            exe,
        })
    }
}
