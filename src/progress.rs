//! Progress of long jobs on stderr (indicatif). On a terminal: a bar with rate and ETA. Otherwise
//! (batch jobs, Slurm logs, pipes): one plain line every `SCINTERP_PROGRESS_SECS` seconds (default 10)
//! with the same counts, plus the last state when the job part ends. Nothing with `--quiet`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle, TermLike};
use scinterp_export::steps::Observer;

static HIDDEN: AtomicBool = AtomicBool::new(false);

/// Called once from `main` with `--quiet`.
pub fn set_hidden(hidden: bool) {
    HIDDEN.store(hidden, Ordering::Relaxed);
}

/// Where a new bar or spinner draws.
enum Target {
    Hidden,
    Terminal,
    Log,
}

fn target() -> Target {
    if HIDDEN.load(Ordering::Relaxed) {
        Target::Hidden
    } else if std::io::stderr().is_terminal() {
        Target::Terminal
    } else {
        Target::Log
    }
}

/// Seconds between two log lines when stderr is not a terminal.
fn log_interval() -> Duration {
    let secs = std::env::var("SCINTERP_PROGRESS_SECS")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(10.0);
    Duration::from_secs_f64(secs)
}

fn draw_target(target: &Target) -> ProgressDrawTarget {
    match target {
        Target::Hidden => ProgressDrawTarget::hidden(),
        Target::Terminal => ProgressDrawTarget::stderr(),
        // indicatif renders at most once a second; LogLines keeps one line per interval of those.
        Target::Log => ProgressDrawTarget::term_like_with_hz(Box::new(LogLines::new(log_interval())), 1),
    }
}

/// `ETA` that says `?` until the first unit of this run is done, instead of a meaningless `0s`.
fn eta_key(state: &ProgressState, w: &mut dyn std::fmt::Write) {
    let rate = state.per_sec();
    if !(rate.is_finite() && rate > 0.0) {
        let _ = w.write_str("?");
    } else {
        let _ = write!(w, "{}", indicatif::HumanDuration(state.eta()));
    }
}

/// Units per second with one decimal (indicatif's `per_sec` prints every digit it has).
fn rate_key(state: &ProgressState, w: &mut dyn std::fmt::Write) {
    let _ = write!(w, "{:.1}/s", state.per_sec());
}

fn style(template: &str) -> Option<ProgressStyle> {
    ProgressStyle::with_template(template).ok().map(|s| {
        s.with_key("eta_known", eta_key)
            .with_key("rate", rate_key)
            .progress_chars("=> ")
    })
}

/// A bar over `total` units (`cells`, `steps`, `rows`), starting at `done` (a resumed run).
pub fn bar(total: u64, done: u64, unit: &str) -> ProgressBar {
    bar_with_prefix(total, done, unit, "")
}

/// [`bar`] with a fixed label before the counts (`tokenizing`).
pub fn bar_with_prefix(total: u64, done: u64, unit: &str, prefix: &str) -> ProgressBar {
    let target = target();
    let label = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix} ")
    };
    let template = match target {
        Target::Log => format!(
            "{label}{{pos}}/{{len}} {unit} ({{percent}} %, {{rate}}, elapsed {{elapsed}}, ETA {{eta_known}}) {{msg}}"
        ),
        _ => format!("{label}[{{bar:30}}] {{pos}}/{{len}} {unit} ({{rate}}, ETA {{eta_known}}) {{msg}}"),
    };
    let bar = ProgressBar::with_draw_target(Some(total), draw_target(&target));
    if let Some(style) = style(&template) {
        bar.set_style(style);
    }
    bar.set_position(done);
    bar.reset_eta();
    bar
}

/// Ends a bar whose work completed: cleared from a terminal; in a log, its final count is the last
/// line.
pub fn finish(bar: &ProgressBar) {
    match target() {
        Target::Log => bar.finish(),
        _ => bar.finish_and_clear(),
    }
}

/// A spinner with a message while a step without a count runs (one line in a log).
pub fn spinner(message: String) -> ProgressBar {
    let target = target();
    let bar = ProgressBar::with_draw_target(None, draw_target(&target)).with_message(message);
    if let Target::Terminal = target {
        bar.enable_steady_tick(Duration::from_millis(120));
    } else if let Ok(style) = ProgressStyle::with_template("{msg} (elapsed {elapsed})") {
        bar.set_style(style);
        bar.tick();
    }
    bar
}

/// A draw target for logs: prints the bar's line when at least `every` has passed since the last
/// printed line, keeps the newest otherwise, and prints that one when the bar is dropped, so a log
/// always ends with the final count.
#[derive(Debug)]
struct LogLines {
    every: Duration,
    state: Mutex<LogState>,
}

#[derive(Debug, Default)]
struct LogState {
    last_emit: Option<Instant>,
    last_line: String,
    pending: Option<String>,
}

impl LogLines {
    fn new(every: Duration) -> Self {
        LogLines {
            every,
            state: Mutex::new(LogState::default()),
        }
    }

    fn offer(&self, line: &str) {
        let line = line.trim_end();
        if line.is_empty() {
            return;
        }
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if st.last_line == line {
            return;
        }
        let due = st.last_emit.is_none_or(|t| t.elapsed() >= self.every);
        if due {
            eprintln!("{line}");
            st.last_emit = Some(Instant::now());
            st.last_line = line.to_string();
            st.pending = None;
        } else {
            st.pending = Some(line.to_string());
        }
    }
}

impl Drop for LogLines {
    fn drop(&mut self) {
        if let Ok(st) = self.state.get_mut() {
            if let Some(line) = st.pending.take() {
                eprintln!("{line}");
            }
        }
    }
}

impl TermLike for LogLines {
    fn width(&self) -> u16 {
        // Wide enough that indicatif never wraps a line.
        1000
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.offer(s);
        Ok(())
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.offer(s);
        Ok(())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The CLI's [`Observer`] of library steps: each counted part as a [`bar`] (or a [`spinner`] while
/// something without a count runs), report lines on stdout.
#[derive(Default)]
pub struct Bars {
    bar: Option<ProgressBar>,
}

impl Observer for Bars {
    fn start(&mut self, label: &str, unit: &str, total: u64, done: u64) {
        self.end(true);
        self.bar = Some(bar_with_prefix(total, done, unit, label));
    }
    fn position(&mut self, done: u64) {
        if let Some(b) = &self.bar {
            b.set_position(done);
        }
    }
    fn status(&mut self, text: &str) {
        if let Some(b) = &self.bar {
            b.set_message(text.to_string());
        }
    }
    fn end(&mut self, completed: bool) {
        if let Some(b) = self.bar.take() {
            if completed {
                finish(&b);
            } else {
                b.abandon();
            }
        }
    }
    fn waiting(&mut self, what: &str) {
        self.end(true);
        self.bar = Some(spinner(what.to_string()));
    }
    fn say(&mut self, line: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }
}

impl Drop for Bars {
    /// A part left open (a step that failed midway) stays on screen as it stopped.
    fn drop(&mut self) {
        self.end(false);
    }
}
