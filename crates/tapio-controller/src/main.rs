//! The `tapio-controller` binary: parse flags, start the server, stop on SIGTERM/SIGINT.

use std::process::ExitCode;

use clap::Parser;
use tapio_controller::settings::{Cli, TOKEN_ENV};
use tapio_controller::Server;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tapio_util::logger::init(cli.log_level.into());
    let env_token = std::env::var(TOKEN_ENV).ok();
    let settings = match cli.into_settings(env_token) {
        Ok(s) => s,
        Err(e) => {
            log::error!("invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let auth = match (&settings.kubernetes_auth, &settings.auth_token) {
            (Some(_), _) => "kubernetes",
            (None, Some(_)) => "bearer",
            (None, None) => "off",
        };
        let pods = if settings.pod_watch.is_some() { "on" } else { "off" };
        let server = Server::bind(settings).await?;
        let config = server.state().config();
        log::info!(
            "listening on {} (wire tapio-wire/v1, auth {auth}, pod names {pods}, config {} {})",
            server.local_addr()?,
            config.version,
            config.hash
        );
        server.run(shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("controller stopped: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => log::info!("SIGTERM received"),
                _ = int.recv() => log::info!("SIGINT received"),
            }
        }
        _ => {
            log::warn!("cannot install SIGTERM handler; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
