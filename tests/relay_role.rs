//! The `relay` role (`hookfleet relay`): bounded shutdown. A relay whose broker
//! stops answering in the middle of a batch still stops soon after the shutdown
//! signal (within `role::AFTER_DRAIN_GRACE`), instead of waiting for confirms
//! until `amqp.publish_timeout`, and the unconfirmed rows stay pending for the
//! next relay.

use hookfleet_testkit as common;
use hookfleet_testkit::outbox as outbox_support;

use std::sync::Arc;
use std::time::Duration;

use common::{TcpProxy, TestDb, eventually, test_config, unique_prefix};
use hookfleet::config::SecretUrl;
use hookfleet::health::Health;
use outbox_support::{EventsQueue, commit_events, events, pending};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn relay_role_stops_within_the_grace_period_when_the_broker_hangs() {
    let db = TestDb::new().await;
    let mut cfg = test_config(&db.url, &unique_prefix());
    let q = EventsQueue::bind(&cfg).await;
    let proxy = TcpProxy::rabbitmq().await;
    cfg.amqp.urls = vec![SecretUrl::new(proxy.amqp_url())];
    // Neither a confirm timeout nor missed heartbeats may end the stalled batch
    // before the shutdown deadline does.
    cfg.amqp.publish_timeout = Duration::from_secs(600);
    cfg.amqp.heartbeat = Duration::ZERO;
    cfg.outbox.poll_interval = Duration::from_millis(200);
    cfg.admin.listen = "127.0.0.1:0".parse().unwrap();

    let token = CancellationToken::new();
    let role = tokio::spawn(hookfleet::relay_role::run(
        cfg.clone(),
        Arc::new(Health::new()),
        token.clone(),
    ));

    // Connected and publishing.
    commit_events(&db.pool, &events(&cfg, 1, "warm-up")).await;
    q.receive(1, Duration::from_secs(60)).await;

    // The broker hangs; the next batch is claimed (its rows locked by the relay's
    // transaction) and published into the silence.
    proxy.stall();
    commit_events(&db.pool, &events(&cfg, 3, "stalled")).await;
    eventually(
        Duration::from_secs(60),
        "the relay to claim the batch",
        || async {
            let unlocked: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM (SELECT id FROM outbox_pending FOR UPDATE SKIP LOCKED) p",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            (unlocked == 0 && pending(&db.pool).await == 3).then_some(())
        },
    )
    .await;

    token.cancel();
    let stopped = tokio::time::timeout(
        hookfleet::role::AFTER_DRAIN_GRACE + Duration::from_secs(20),
        role,
    )
    .await;
    let result = stopped.expect("the relay role outlived its shutdown deadline");
    result.unwrap().unwrap();
    // Nothing was confirmed, so nothing is marked published.
    assert_eq!(pending(&db.pool).await, 3);
    proxy.cut();
    q.cleanup().await;
}
