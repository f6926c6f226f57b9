//! Signals: SIGTERM or Ctrl-C cancels the token every long-running loop
//! selects on. Which loops exist is not this module's business.

use tokio_util::sync::CancellationToken;

pub async fn on_signal(shutdown: CancellationToken) {
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(error) => {
            tracing::warn!(message = "cannot watch SIGTERM; only Ctrl-C stops the server", %error);
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
            return;
        }
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!(message = "SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!(message = "interrupt: shutting down"),
    }
    shutdown.cancel();
}
