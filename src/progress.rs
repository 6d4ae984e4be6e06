//! Progress bars for long jobs (indicatif): a rate and an ETA on stderr, drawn only when stderr is a
//! terminal and `--quiet` is off.

use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

static HIDDEN: AtomicBool = AtomicBool::new(false);

/// Called once from `main` with `--quiet`.
pub fn set_hidden(hidden: bool) {
    HIDDEN.store(hidden, Ordering::Relaxed);
}

/// A bar over `total` units (`cells`, `steps`, `rows`), starting at `done`.
pub fn bar(total: u64, done: u64, unit: &str) -> ProgressBar {
    let target = if HIDDEN.load(Ordering::Relaxed) {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    let template = format!("{{bar:30}} {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}}) {{msg}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar.set_position(done);
    bar.reset_eta();
    bar
}
