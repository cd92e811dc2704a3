//! End to end with tracing off, on (sampling 1.0, a collector that answers)
//! and on with an unreachable collector (connections accepted, never read),
//! alternating in one run: tracing must not slow a push measurably, and a
//! collector that hangs must not either (spans are dropped and counted).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;

/// An OTLP/HTTP sink that answers 200 and counts the bytes it got.
pub async fn collector() -> anyhow::Result<(String, Arc<AtomicU64>)> {
    let bytes = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let app = Router::new()
        .route(
            "/v1/traces",
            post(|State(n): State<Arc<AtomicU64>>, body: Bytes| async move {
                n.fetch_add(body.len() as u64, Ordering::Relaxed);
                ""
            }),
        )
        .with_state(bytes.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, bytes))
}

/// The worker's variables for one mode: `None` = off.
pub fn env(endpoint: Option<&str>) -> Vec<(String, String)> {
    match endpoint {
        None => vec![("HOOKFLEET_TRACING__ENABLED".into(), "false".into())],
        Some(url) => vec![
            ("HOOKFLEET_TRACING__ENABLED".into(), "true".into()),
            ("HOOKFLEET_TRACING__ENDPOINT".into(), url.into()),
            ("HOOKFLEET_TRACING__SAMPLER_RATIO".into(), "1.0".into()),
        ],
    }
}
