//! Production connections use TLS: `amqps://` URLs and PostgreSQL `sslmode=require`
//! must start a real TLS handshake (rustls), not fail as unsupported or fall back
//! to plain text. A fake server reads what the client sends first.
mod common;

use std::time::Duration;

use hookfleet::config::SecretUrl;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// TLS handshake record: content type 22, then major version 3.
fn is_client_hello(bytes: &[u8]) -> bool {
    bytes.len() >= 6 && bytes[0] == 0x16 && bytes[1] == 0x03 && bytes[5] == 0x01
}

#[tokio::test]
async fn amqps_urls_speak_tls() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        buf.truncate(n);
        buf
    });
    let mut cfg = common::test_config("postgres://unused@127.0.0.1/x", "tls");
    cfg.amqp.url = SecretUrl::new(format!("amqps://guest:guest@localhost:{port}/%2f"));
    cfg.amqp.connect_timeout = Duration::from_secs(2);
    let result = hookfleet::amqp::connect(&cfg.amqp, "tls-test").await;
    assert!(
        result.is_err(),
        "the fake server never completes a handshake"
    );
    let first = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    assert!(
        is_client_hello(&first),
        "expected a TLS ClientHello, got {:?}",
        &first[..first.len().min(16)]
    );
}

#[tokio::test]
async fn postgres_sslmode_require_speaks_tls() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        // SSLRequest: length 8, code 80877103.
        let mut req = [0u8; 8];
        s.read_exact(&mut req).await.unwrap();
        assert_eq!(
            req,
            [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f],
            "client asks for SSL first"
        );
        s.write_all(b"S").await.unwrap();
        let mut buf = vec![0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        buf.truncate(n);
        buf
    });
    let mut cfg = common::test_config("postgres://unused@127.0.0.1/x", "tls");
    cfg.database.url = SecretUrl::new(format!(
        "postgres://postgres:pw@localhost:{port}/x?sslmode=require"
    ));
    cfg.database.connect_timeout = Duration::from_secs(2);
    let result = hookfleet::db::connect(&cfg.database).await;
    assert!(result.is_err());
    let first = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    assert!(
        is_client_hello(&first),
        "expected a TLS ClientHello, got {:?}",
        &first[..first.len().min(16)]
    );
}
