//! Runs the Plex emulator from the command line, for people and real
//! clients (curl, a browser, python-plexapi).

use clap::Parser;
use emulators::{Library, LibrarySpec, PlexEmulator, PlexState};

#[derive(Parser)]
#[command(about = "Emulated Plex Media Server on loopback, with a seeded sample library")]
struct Args {
    /// Port to listen on (Plex's default is 32400).
    #[arg(long, default_value_t = 32400)]
    port: u16,
    /// Address to bind; keep loopback unless you know why not.
    #[arg(long, default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
    /// The token clients must send (X-Plex-Token header or query parameter).
    #[arg(long, env = "PLEX_EMULATOR_TOKEN", default_value = "emulator-token")]
    token: String,
    /// Number of scenes in the generated library.
    #[arg(long, default_value_t = 200)]
    scenes: usize,
    /// Seed of the generated library (same seed, same library as the Stash emulator).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds after which files added through the admin API appear without a scan.
    #[arg(long)]
    auto_scan_secs: Option<f64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let lib = Library::generate(&LibrarySpec { scenes: args.scenes, seed: args.seed, ..LibrarySpec::default() });
    let mut state = PlexState::from_library(&lib);
    state.auto_scan_delay = args.auto_scan_secs.map(std::time::Duration::from_secs_f64);
    let items = state.items.len();
    let emulator = PlexEmulator::start_on((args.bind, args.port).into(), state, &args.token).await?;
    eprintln!(
        "Plex emulator on {} with {items} items (seed {}); admin API under /_emulator/ (faults, down, maintenance, requests, files). Ctrl-C stops.",
        emulator.url(),
        args.seed
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
