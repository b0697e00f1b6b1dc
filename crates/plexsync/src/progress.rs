//! Progress of long operations (queueing every scene, delivering, a
//! reconcile, the first read of the Plex library). The code doing the work
//! reports here; the face decides how it shows: bars on a terminal, a line
//! every tenth otherwise, nothing in a process nobody watches (the worker,
//! the daemon). Stash's task progress has its own channel (`protocol`).

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Mutex, OnceLock};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

type Sink = Box<dyn Fn(&str, usize, usize) + Send + Sync>;

static SINK: OnceLock<Sink> = OnceLock::new();

/// `done` of `total` for the operation named `what`.
pub(crate) fn report(what: &str, done: usize, total: usize) {
    if let Some(sink) = SINK.get() {
        sink(what, done, total);
    }
}

/// A callback reporting under `what`, for code that takes one.
pub fn reporter(what: &'static str) -> impl FnMut(usize, usize) + Send {
    move |done, total| report(what, done, total)
}

/// Bars drawn in `bars` (which the log writer suspends around its lines).
pub fn show_bars(bars: MultiProgress) {
    let shown: Mutex<HashMap<String, ProgressBar>> = Mutex::default();
    let style = ProgressStyle::with_template("{msg:>24} [{bar:40}] {pos}/{len} ({eta} left)")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    let _ = SINK.set(Box::new(move |what, done, total| {
        let mut shown = shown.lock().unwrap_or_else(|e| e.into_inner());
        let bar = shown.entry(what.to_string()).or_insert_with(|| {
            let bar = bars.add(ProgressBar::new(total as u64));
            bar.set_style(style.clone());
            bar.set_message(what.to_string());
            bar
        });
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        if done >= total {
            bar.finish();
            shown.remove(what);
        }
    }));
}

/// A plain line at each tenth of the way, for logs and pipes.
pub fn show_lines() {
    let shown: Mutex<HashMap<String, usize>> = Mutex::default();
    let _ = SINK.set(Box::new(move |what, done, total| {
        let tenth = done * 10 / total.max(1);
        let mut shown = shown.lock().unwrap_or_else(|e| e.into_inner());
        if shown.insert(what.to_string(), tenth) != Some(tenth) || done >= total {
            // A log that cannot be written (a full disk) loses the line;
            // `eprintln!` would panic and end the process.
            let _ = writeln!(std::io::stderr(), "{what} {done}/{total}");
        }
        if done >= total {
            shown.remove(what);
        }
    }));
}
