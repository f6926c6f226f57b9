//! The HTTP API over hyper: accepting connections with limits (connection
//! cap, header and body timeouts), routing, auth, and rendering errors. The
//! only module that knows HTTP; it stores nothing itself.

mod auth;
mod error;
mod params;
mod routes;
mod upload;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use auth::{LOCAL_TENANT, Tenants, tenant_id_of};
pub use error::ApiError;
pub use routes::update_store_gauges;

use crate::app::App;

/// Answer for connections over the cap: a quick 503 beats a silent hang.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 95\r\n\r\n{\"detail\":{\"error\":\"TOO_MANY_CONNECTIONS\",\"message\":\"the server is at its connection limit\"}}\r\n";

/// Serves until `shutdown`, then stops accepting and gives open requests
/// `drain` to finish.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: CancellationToken, drain: Duration) {
    let api = routes::Api {
        tenants: Tenants::new(&app.config.api_keys),
        app: app.clone(),
        operations_only: false,
    };
    accept(listener, Arc::new(api), shutdown, drain).await;
}

/// `/health`, `/ready` and `/metrics` only: what a `dedup2d work` process
/// serves on its metrics address.
pub async fn serve_operations(listener: TcpListener, app: Arc<App>, shutdown: CancellationToken) {
    let api = routes::Api {
        tenants: Tenants::new(&[]),
        app,
        operations_only: true,
    };
    accept(listener, Arc::new(api), shutdown, Duration::from_secs(1)).await;
}

async fn accept(listener: TcpListener, api: Arc<routes::Api>, shutdown: CancellationToken, drain: Duration) {
    let app = api.app.clone();
    // HTTP/1.1 only, as the original served: its header-read timeout also
    // runs while a connection sits idle before (or between) requests, so a
    // silent client cannot hold a connection slot. Cleartext HTTP/2 would
    // need idle limits of its own and no client of ours asks for it.
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(app.config.http_header_timeout);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(app.config.http_max_connections));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(message = "accept failed", %error);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let api = api.clone();
        let service = service_fn(move |request| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.handle(request).await) }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    app.begin_shutdown();
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            message = "open connections cut after the drain period",
            drain_seconds = drain.as_secs()
        );
    }
}

async fn refuse(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(OVER_CAPACITY)).await;
}
