//! Runs the Stash emulator from the command line, for people and real
//! clients (curl, GraphiQL in a browser, stashapp-tools, a real plugin).

use clap::Parser;
use emulators::stash::Zone;
use emulators::{Library, LibrarySpec, StashAuth, StashEmulator, StashState};

#[derive(Parser)]
#[command(about = "Emulated Stash GraphQL server on loopback, with a seeded sample library")]
struct Args {
    /// Port to listen on (Stash's default is 9999).
    #[arg(long, default_value_t = 9999)]
    port: u16,
    /// Address to bind; keep loopback unless you know why not.
    #[arg(long, default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
    /// Require a login (session cookie or API key), as a Stash with a password.
    #[arg(long)]
    login: bool,
    /// The API key Stash generated (`ApiKey` header or `apikey` query).
    #[arg(long, env = "STASH_EMULATOR_API_KEY")]
    api_key: Option<String>,
    /// Seconds a session cookie stays valid (Stash's max_session_age).
    #[arg(long, default_value_t = 3600)]
    max_session_age: u64,
    /// The server's UTC offset in minutes (stored timestamps carry it).
    #[arg(long, default_value_t = -300, allow_hyphen_values = true)]
    utc_offset_minutes: i32,
    /// Number of scenes in the generated library.
    #[arg(long, default_value_t = 200)]
    scenes: usize,
    /// Seed of the generated library (same seed, same library as the Plex emulator).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let lib = Library::generate(&LibrarySpec { scenes: args.scenes, seed: args.seed, ..LibrarySpec::default() });
    let state = StashState::from_library_in(&lib, Zone::fixed(args.utc_offset_minutes * 60));
    let auth = StashAuth {
        login: args.login,
        api_key: args.api_key,
        max_session_age: std::time::Duration::from_secs(args.max_session_age),
    };
    let emulator = StashEmulator::start_on((args.bind, args.port).into(), state, auth).await?;
    eprintln!(
        "Stash emulator on {}graphql with {} scenes (seed {}). Ctrl-C stops.",
        emulator.url(),
        args.scenes,
        args.seed
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
