//! Webhook delivery over https: a real TLS receiver on 127.0.0.1 with a
//! certificate from a private CA made for the test, and the delivery client as the
//! webhook handler builds it. Trusting that CA through `webhook.ca_file` is what
//! lets a deployment reach internal receivers; without it the handshake fails.

use hookfleet_testkit as common;

use std::sync::{Arc, Mutex};

use common::pki::Pki;

use bytes::Bytes;
use hookfleet::config::Config;
use hookfleet::webhook::deliver::{Client, DeliverError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use url::Url;

/// What the receiver got: the request head and body of each request.
type Requests = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An https receiver answering 200 to every request; returns its port.
async fn receiver(pki: &Pki, got: Requests) -> u16 {
    let acceptor = pki.acceptor();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, got) = (acceptor.clone(), got.clone());
            tokio::spawn(async move {
                // A failed handshake (the client refusing the certificate) ends here.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, body_start) = loop {
                    let Ok(n) = tls.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break (String::from_utf8_lossy(&buf[..i]).to_string(), i + 4);
                    }
                };
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while buf.len() < body_start + length {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                got.lock()
                    .expect("requests")
                    .push((head, buf[body_start..body_start + length].to_vec()));
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

/// The default webhook config, loopback allowed (the receiver is on 127.0.0.1).
fn webhook_config(ca_file: &str) -> hookfleet::config::WebhookConfig {
    let mut cfg = Config::load_from(None, Vec::new())
        .expect("default config")
        .webhook;
    cfg.allow_private = true;
    cfg.ca_file = ca_file.to_string();
    cfg
}

#[tokio::test]
async fn https_delivery_trusts_the_private_ca_of_webhook_ca_file() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let ca_file = pki.write_ca(dir.path());
    let got: Requests = Arc::default();
    let port = receiver(&pki, got.clone()).await;

    let client = Client::new(&webhook_config(&ca_file));
    let url = Url::parse(&format!("https://localhost:{port}/hook")).expect("url");
    let headers = vec![("X-Hookfleet-Event".to_string(), "git.push".to_string())];
    let response = client
        .post(
            &url,
            &headers,
            Bytes::from_static(b"{\"ref\":\"refs/heads/main\"}"),
        )
        .await
        .expect("delivered over https");

    assert_eq!(response.status, 200);
    assert_eq!(&response.body[..], b"ok");
    let got = got.lock().expect("requests").clone();
    assert_eq!(got.len(), 1, "one request received");
    let (head, body) = &got[0];
    assert!(head.starts_with("POST /hook HTTP/1.1"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-hookfleet-event: git.push"),
        "{head}"
    );
    assert_eq!(body, b"{\"ref\":\"refs/heads/main\"}");
}

#[tokio::test]
async fn https_delivery_to_a_receiver_of_an_untrusted_ca_fails_the_handshake() {
    let pki = Pki::new();
    let got: Requests = Arc::default();
    let port = receiver(&pki, got.clone()).await;

    // The platform's roots only: the test CA is in none of them.
    let client = Client::new(&webhook_config(""));
    let url = Url::parse(&format!("https://localhost:{port}/hook")).expect("url");
    let err = client
        .post(&url, &[], Bytes::from_static(b"{}"))
        .await
        .expect_err("an unknown issuer must not be trusted");

    assert!(matches!(err, DeliverError::Tls(_)), "{err}");
    assert!(err.is_transient(), "a TLS failure is retried");
    assert!(got.lock().expect("requests").is_empty(), "nothing was sent");
}
