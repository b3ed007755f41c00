//! `drops-origin [serve | migrate | seed | token --role R [--sub UUID] |
//! reconcile | outbox-replay --from SEQ --to SEQ | followers-rebuild]`. Settings come from the
//! environment (see README.md); everything else lives in the library.

use drops_origin::config::Settings;
use drops_origin::{cli, startup::Application, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    telemetry::init(&settings);
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("serve") => {
            let app = Application::build(settings).await?;
            tracing::info!(port = app.port(), "origin listening");
            app.run_until_stopped(cli::shutdown_signal()).await
        }
        Some("migrate") => cli::migrate(&settings).await,
        Some("seed") => cli::seed(&settings).await,
        Some("token") => cli::token(&settings, &args[1..]),
        Some(other) => {
            anyhow::bail!("unknown command `{other}`; expected serve, migrate, seed or token")
        }
    }
}
