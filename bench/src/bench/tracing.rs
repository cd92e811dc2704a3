//! End to end with tracing off, on (sampling 1.0, a collector that answers)
//! and on with an unreachable collector (connections accepted, never read),
//! alternating in one run: tracing must not slow a push measurably, and a
//! collector that hangs must not either (spans are dropped and counted).
//! [`rows`] runs the rounds and makes the group's rows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;

use crate::e2e;
use crate::opts::Sizes;
use crate::support::{self, Row};

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

/// End to end with tracing off / on / on with an unreachable collector,
/// alternating per round; medians and their ratios to off.
pub async fn rows(
    cfg: &hookfleet::config::Config,
    pool: &sqlx::PgPool,
    (exe, repo): (&std::path::Path, &hookfleet_testkit::gitrepo::TinyRepo),
    s: &Sizes,
    step: &impl Fn(&str),
    rows: &mut Vec<Row>,
    extra: &mut serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<()> {
    let (url, received) = collector().await?;
    // Bound, never accepted: the exporter's requests hang until their timeout.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0")?;
    let unreachable = format!("http://{}", blackhole.local_addr()?);
    let modes = [
        ("off", None),
        ("on", Some(url.as_str())),
        ("unreachable", Some(unreachable.as_str())),
    ];
    let mut rates: [Vec<f64>; 3] = Default::default();
    for round in 1..=s.rounds {
        for (i, (mode, endpoint)) in modes.iter().enumerate() {
            step(&format!(
                "tracing round {round}/{}: end to end, tracing {mode}",
                s.rounds
            ));
            let e =
                e2e::end_to_end_with(exe, cfg, pool, repo, s.e2e_full, 0, None, &env(*endpoint))
                    .await?;
            rates[i].push(e.full_rate);
        }
    }
    extra.insert(
        "tracing_rounds".into(),
        serde_json::json!({
            "off": rates[0].clone(), "on": rates[1].clone(), "unreachable": rates[2].clone(),
            "otlp_bytes_received": received.load(std::sync::atomic::Ordering::Relaxed),
        }),
    );
    let off = support::percentile(&mut rates[0], 50.0);
    for (i, label) in [
        (1, "tracing on, sampling 1.0, OTLP/HTTP collector"),
        (2, "tracing on, collector unreachable (hangs)"),
    ] {
        rows.push(Row::vs(
            &format!("end-to-end pushes/s, {label} (median of {})", s.rounds),
            support::percentile(&mut rates[i], 50.0),
            "same, tracing off",
            off,
            "push/s",
            0.9,
        ));
    }
    drop(blackhole);
    Ok(())
}
