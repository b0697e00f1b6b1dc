//! The daemon's HTTP server: its router on hyper's HTTP/1 connections,
//! each bounded in time, and at most so many open at once. `axum::serve`
//! sets no timer (so hyper's header timeout never fires) and no cap: a
//! client on the LAN could hold connections, and the file descriptors
//! they take, until nothing else could connect. HTTP/1 only: nothing the
//! daemon serves asks for HTTP/2, and a prior-knowledge HTTP/2 client is
//! refused instead of half answered.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::logging::Summarized;

/// A request's head must arrive within this, and a kept-alive connection
/// that sends nothing for this long is closed: Plex and browsers send a
/// head at once, and open a new connection when an idle one is gone.
pub(crate) const HEAD_WITHIN: Duration = Duration::from_secs(10);
/// A request is over (its body read, its answer made) within this: the
/// provider answers within 30 s even when Stash does not, and a body is at
/// most 64 KB.
pub(crate) const REQUEST_WITHIN: Duration = Duration::from_secs(45);
/// Connections open at once at most, whatever the file limit: more than
/// Plex and a few browsers ever open together.
const CONNECTIONS_MAX: usize = 512;

/// Connections refused (the cap, or the process out of files): a client
/// can cause one per attempt, so the log says them once per 10 s.
static REFUSED: Summarized = Summarized::new(Duration::from_secs(10));

/// How many connections may be open, and the process's file limit: half
/// the files it may open (the rest are the queue, the log, SQLite's
/// temporary files and requests to Stash and Plex), 16 to
/// [`CONNECTIONS_MAX`].
pub(crate) fn connection_cap() -> (usize, Option<u64>) {
    let files = open_file_limit();
    let half = files.map_or(CONNECTIONS_MAX, |n| usize::try_from(n / 2).unwrap_or(usize::MAX));
    (half.clamp(16, CONNECTIONS_MAX), files)
}

/// The soft limit on open files (`ulimit -n`), when there is one.
#[cfg(unix)]
fn open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes into the struct it is given.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    (read && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

#[cfg(not(unix))]
fn open_file_limit() -> Option<u64> {
    None
}

/// Serves `app` on `listener` until `stopped` ends.
pub(crate) async fn serve(listener: TcpListener, app: Router, stopped: impl Future<Output = ()>) {
    let (cap, files) = connection_cap();
    match files {
        Some(n) => tracing::info!("at most {cap} connections open at once (the process may open {n} files)"),
        None => tracing::info!("at most {cap} connections open at once"),
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(cap));
    tokio::pin!(stopped);
    loop {
        let accepted = tokio::select! {
            () = &mut stopped => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: wait for some to
                // close instead of spinning on the listener.
                REFUSED.warn(|| format!("cannot accept a connection: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            REFUSED.warn(|| format!("{cap} connections are open, the most allowed: a new one was closed"));
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let mut connection = http1::Builder::new();
            connection.timer(TokioTimer::new()).header_read_timeout(HEAD_WITHIN);
            // A connection's end (closed, timed out, malformed) is no error
            // of the daemon's.
            let _ = connection.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
