//! Production connections use TLS: `amqps://` URLs and PostgreSQL `sslmode=require`
//! must start a real TLS handshake (rustls), not fail as unsupported or fall back
//! to plain text (a fake server reads what the client sends first). And whole
//! sessions work against services whose certificates come from a private CA: the
//! broker trusted through `amqp.ca_file`, PostgreSQL through `sslmode=verify-full`
//! and `sslrootcert=` in its URL. TLS endpoints made for the test forward the
//! decrypted streams to the local services.
use hookfleet_testkit as common;

use std::time::Duration;

use common::pki::Pki;
use hookfleet::amqp::{AmqpError, publish};
use hookfleet::config::{Config, SecretUrl};
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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

/// How a service starts TLS: at once (amqps), or after PostgreSQL's SSLRequest
/// (length 8, code 80877103), which the server answers with `S`.
#[derive(Clone, Copy)]
enum StartTls {
    AtOnce,
    PostgresRequest,
}

/// A TLS endpoint on 127.0.0.1 presenting `pki`'s `localhost` certificate that
/// forwards each decrypted connection to the local service at `target` (as a
/// plain connection, which the local services accept); returns its port.
async fn tls_endpoint(pki: &Pki, start: StartTls, target: &'static str) -> u16 {
    let acceptor = pki.acceptor();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let StartTls::PostgresRequest = start {
                    let mut req = [0u8; 8];
                    if tcp.read_exact(&mut req).await.is_err()
                        || req != [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]
                        || tcp.write_all(b"S").await.is_err()
                    {
                        return;
                    }
                }
                // A refused handshake (an untrusted CA) ends here.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut service) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut service).await;
            });
        }
    });
    port
}

fn amqps_config(port: u16, ca_file: &str) -> Config {
    let mut cfg = common::test_config("postgres://unused@127.0.0.1/x", "tls");
    cfg.amqp.url = SecretUrl::new(format!("amqps://guest:guest@localhost:{port}/%2f"));
    cfg.amqp.ca_file = ca_file.to_string();
    cfg.amqp.connect_timeout = Duration::from_secs(10);
    cfg
}

#[tokio::test]
async fn amqps_to_a_broker_of_the_private_ca_in_amqp_ca_file_publishes_and_consumes() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let port = tls_endpoint(&pki, StartTls::AtOnce, "127.0.0.1:5672").await;
    let cfg = amqps_config(port, &pki.write_ca(dir.path()));

    let conn = hookfleet::amqp::connect(&cfg.amqp, "tls-test")
        .await
        .expect("amqps connection through the private CA");
    let ch = publish::confirm_channel(&conn).await.unwrap();
    let queue = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let confirm = publish::send(
        &ch,
        "",
        queue.name().as_str(),
        b"over tls",
        Default::default(),
        false,
    )
    .await
    .unwrap();
    publish::confirmed(confirm, Duration::from_secs(10))
        .await
        .expect("the broker confirmed over TLS");
    let got = ch
        .basic_get(
            queue.name().as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("the message is in the queue");
    assert_eq!(got.delivery.data, b"over tls");
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn amqps_to_a_broker_of_an_untrusted_ca_is_refused() {
    let pki = Pki::new();
    let port = tls_endpoint(&pki, StartTls::AtOnce, "127.0.0.1:5672").await;
    // The platform's roots only: the test CA is in none of them.
    let cfg = amqps_config(port, "");

    let err = hookfleet::amqp::connect(&cfg.amqp, "tls-test")
        .await
        .expect_err("an unknown issuer must not be trusted");
    assert!(matches!(err, AmqpError::Connect { .. }), "{err}");
}

#[test]
fn a_ca_file_that_is_missing_or_not_pem_is_a_config_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem").display().to_string();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let garbage = garbage.display().to_string();
    let valid = Pki::new().write_ca(dir.path());
    let default = Config::load_from(None, Vec::new()).unwrap();

    for key in ["amqp.ca_file", "webhook.ca_file"] {
        let with = |file: &str| {
            let mut c = default.clone();
            match key {
                "amqp.ca_file" => c.amqp.ca_file = file.to_string(),
                _ => c.webhook.ca_file = file.to_string(),
            }
            c.validate().map_err(|e| e.to_string())
        };
        let err = with(&missing).expect_err("missing file");
        assert!(err.starts_with(&format!("{key} cannot read")), "{err}");
        assert!(err.contains("missing.pem"), "{err}");
        let err = with(&garbage).expect_err("no certificate");
        assert!(err.starts_with(key), "{err}");
        assert!(err.contains("holds no PEM certificate"), "{err}");
        with(&valid).expect("a CA certificate is accepted");
        with("").expect("empty means none");
    }
}

#[tokio::test]
async fn postgres_verify_full_with_sslrootcert_of_a_private_ca_runs_queries() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let ca = pki.write_ca(dir.path());
    let port = tls_endpoint(&pki, StartTls::PostgresRequest, "127.0.0.1:5432").await;
    let mut cfg = common::test_config("postgres://unused@127.0.0.1/x", "tls");
    cfg.database.connect_timeout = Duration::from_secs(10);

    cfg.database.url = SecretUrl::new(format!(
        "postgres://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={ca}"
    ));
    let pool = hookfleet::db::connect(&cfg.database)
        .await
        .expect("TLS verified against the private CA");
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(one, 1);
    pool.close().await;

    // Without the CA the same server is not trusted.
    cfg.database.url = SecretUrl::new(format!(
        "postgres://postgres@localhost:{port}/postgres?sslmode=verify-full"
    ));
    assert!(
        hookfleet::db::connect(&cfg.database).await.is_err(),
        "an unknown issuer must not be trusted"
    );
}
