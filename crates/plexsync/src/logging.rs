//! Log output for each face: Stash's stderr protocol for the plugin,
//! timestamped lines for the worker's log file, plain lines for the CLI.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Formats each event as one Stash log line: `\x01<level>\x02message`.
struct StashFormat;

impl<S, N> FormatEvent<S, N> for StashFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let level = match *event.metadata().level() {
            Level::TRACE => 't',
            Level::DEBUG => 'd',
            Level::INFO => 'i',
            Level::WARN => 'w',
            Level::ERROR => 'e',
        };
        write!(writer, "\x01{level}\x02")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_env("PLEXSYNC_LOG").unwrap_or_else(|_| EnvFilter::new(default))
}

/// The plugin face: Stash shows these lines in its log at their level.
pub fn init_stash() {
    // A log that cannot be written (a full disk) loses the line; its
    // fallback, a print to stderr, would panic and end the process.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter("plexsync=info"))
        .log_internal_errors(false)
        .with_writer(std::io::stderr)
        .event_format(StashFormat)
        .try_init();
}

/// The worker (stderr is its log file) and the CLI, at `level` unless
/// `PLEXSYNC_LOG` says otherwise; lines go above `bars` when the CLI
/// draws progress bars.
pub fn init_plain(level: &str, timestamps: bool, bars: Option<indicatif::MultiProgress>) {
    use std::io::IsTerminal;
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let writer = match bars {
        Some(bars) => BoxMakeWriter::new(move || AboveBars(bars.clone())),
        None => BoxMakeWriter::new(std::io::stderr),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(&format!("plexsync={level}")))
        .log_internal_errors(false)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = if timestamps { builder.try_init() } else { builder.without_time().try_init() };
}

/// A log line written while progress bars are drawn: the bars step aside
/// for it, so neither garbles the other.
struct AboveBars(indicatif::MultiProgress);

impl std::io::Write for AboveBars {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.suspend(|| std::io::stderr().write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
/// A warning a client can cause as often as it sends requests (a Stash
/// outage under a flood of provider calls), said at most once per
/// interval: the first of an interval in full, and with the next one after
/// it, how many were left unsaid. A log line count is then bounded by the
/// clock, not by the client.
pub(crate) struct Summarized {
    every: std::time::Duration,
    /// When the current interval began, and the warnings left unsaid in it.
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl Summarized {
    pub(crate) const fn new(every: std::time::Duration) -> Self {
        Self { every, state: std::sync::Mutex::new((None, 0)) }
    }

    /// Says `line()` (made only when it is said), or counts it.
    pub(crate) fn warn(&self, line: impl FnOnce() -> String) {
        if let Some(unsaid) = self.take_turn() {
            if unsaid > 0 {
                tracing::warn!("{unsaid} more like the last were not logged in {} s", self.every.as_secs());
            }
            tracing::warn!("{}", line());
        }
    }

    /// The count left unsaid when this warning is to be said; `None` when
    /// it is to be counted.
    fn take_turn(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (began, unsaid) = &mut *state;
        if began.is_some_and(|t| t.elapsed() < self.every) {
            *unsaid += 1;
            return None;
        }
        *began = Some(std::time::Instant::now());
        Some(std::mem::take(unsaid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_warnings_is_one_line_per_interval_and_a_count() {
        let w = Summarized::new(std::time::Duration::from_millis(200));
        assert_eq!(w.take_turn(), Some(0), "the first is said");
        assert_eq!((0..1000).filter_map(|_| w.take_turn()).count(), 0, "the rest of the interval is counted");
        std::thread::sleep(std::time::Duration::from_millis(250));
        assert_eq!(w.take_turn(), Some(1000), "the next interval's first says how many were not");
        assert_eq!(w.take_turn(), None);
    }
}
