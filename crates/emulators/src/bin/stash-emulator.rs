//! Runs the Stash emulator from the command line, for people and real
//! clients (curl, GraphiQL in a browser, stashapp-tools, a real plugin).

use clap::Parser;
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
    /// API key accepted in the `ApiKey` header; no key and no session means no auth.
    #[arg(long, env = "STASH_EMULATOR_API_KEY")]
    api_key: Option<String>,
    /// Session cookie value accepted as `session=<value>`.
    #[arg(long, env = "STASH_EMULATOR_SESSION")]
    session: Option<String>,
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
    let state = StashState::from_library(&lib);
    let auth = StashAuth { api_key: args.api_key, session: args.session };
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
