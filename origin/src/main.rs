//! `drops-origin [serve | migrate | seed | token | reconcile | outbox-replay |
//! followers-rebuild | analytics rebuild]` (`--help` for each). Settings come from the environment (see
//! README.md); everything else lives in the library.

use clap::Parser;
use drops_origin::cli::{self, Cli};
use drops_origin::config::Settings;
use drops_origin::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::load()?;
    telemetry::init(&settings);
    cli::run(cli, settings).await
}
