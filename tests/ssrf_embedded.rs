//! The SSRF guard on IPv6 forms that carry an IPv4 address (IPv4-compatible,
//! 6to4, Teredo, NAT64, IPv4-mapped), through the entry points the webhook sender
//! uses ([`Guard::resolve`] and [`deliver::Client::post`]), and the warnings of
//! `webhook add` for a URL the guard would refuse, against a real database.
use hookfleet_testkit as common;

use bytes::Bytes;
use common::TestDb;
use hookfleet::config::{Config, WebhookConfig};
use hookfleet::webhook::deliver::{Client, DeliverError};
use hookfleet::webhook::manage::{self, AddRequest};
use hookfleet::webhook::ssrf::{Guard, SsrfError, check_url};

fn webhook_config(edit: impl FnOnce(&mut WebhookConfig)) -> WebhookConfig {
    let mut cfg = Config::load_from(None, Vec::<(String, String)>::new())
        .expect("defaults load")
        .webhook;
    edit(&mut cfg);
    cfg
}

/// URLs whose host carries a refused IPv4 address, and what the error must say.
const REFUSED: [(&str, &str); 6] = [
    (
        "http://[::127.0.0.1]:8080/",
        "IPv4-compatible 127.0.0.1: loopback",
    ),
    (
        "http://[::7f00:1]/hook",
        "IPv4-compatible 127.0.0.1: loopback",
    ),
    ("http://[2002:7f00:1::]/", "6to4 127.0.0.1: loopback"),
    (
        "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/",
        "Teredo client 127.0.0.1: loopback",
    ),
    ("https://[64:ff9b::a00:1]/", "NAT64 10.0.0.1: private"),
    (
        "http://[::ffff:192.168.1.1]/",
        "IPv4-mapped 192.168.1.1: private",
    ),
];

#[tokio::test]
async fn guard_refuses_ipv6_forms_carrying_a_refused_ipv4_and_names_it() {
    let guard = Guard::new(&webhook_config(|_| {}));
    for (u, shown) in REFUSED {
        let url = check_url(u).unwrap();
        let e = guard.resolve(&url).await.unwrap_err();
        assert!(matches!(e, SsrfError::Blocked { .. }), "{u}: {e:?}");
        assert!(!e.is_transient(), "{u}");
        let text = e.to_string();
        assert!(
            text.starts_with("refused: ") && text.contains(shown),
            "{u}: {text}"
        );
    }
    // The same forms carrying a public address pass, as themselves.
    for u in [
        "http://[::8.8.8.8]:8080/",
        "http://[2002:808:808::1]/",
        "http://[2001:0:4136:e378:8000:63bf:f7f7:f7f7]/",
        "http://[64:ff9b::808:808]/",
        "http://[::ffff:8.8.8.8]/",
    ] {
        let url = check_url(u).unwrap();
        let got = guard
            .resolve(&url)
            .await
            .unwrap_or_else(|e| panic!("{u}: {e}"));
        assert_eq!(got.len(), 1, "{u}");
        let written = u.split(['[', ']']).nth(1).unwrap();
        assert_eq!(
            got[0].ip(),
            written.parse::<std::net::IpAddr>().unwrap(),
            "{u}: connects to the address as written"
        );
    }
}

#[tokio::test]
async fn the_sender_refuses_them_before_connecting() {
    let client = Client::new(&webhook_config(|_| {}));
    for (u, shown) in REFUSED {
        let url = check_url(u).unwrap();
        let e = client
            .post(&url, &[], Bytes::from_static(b"{}"))
            .await
            .unwrap_err();
        assert!(
            matches!(e, DeliverError::Ssrf(SsrfError::Blocked { .. })),
            "{u}: {e:?}"
        );
        assert!(!e.is_transient(), "{u}");
        assert!(e.to_string().contains(shown), "{u}: {e}");
    }
}

#[tokio::test]
async fn allow_private_and_allowed_hosts_lift_them_but_never_metadata() {
    let lax = Guard::new(&webhook_config(|c| c.allow_private = true));
    for (u, _) in REFUSED {
        assert!(lax.resolve(&check_url(u).unwrap()).await.is_ok(), "{u}");
    }
    let listed = Guard::new(&webhook_config(|c| {
        c.allowed_hosts = vec!["2002:7f00:1::/48".into(), "::7f00:1".into()]
    }));
    for u in ["http://[2002:7f00:1::5]/", "http://[::127.0.0.1]:8080/"] {
        assert!(listed.resolve(&check_url(u).unwrap()).await.is_ok(), "{u}");
    }
    // Still refused: a form not listed.
    let u = check_url("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/").unwrap();
    assert!(listed.resolve(&u).await.is_err());

    // Metadata carried in any form: refused even with allow_private.
    for (u, shown) in [
        (
            "http://[::169.254.169.254]/latest/",
            "IPv4-compatible 169.254.169.254: cloud metadata",
        ),
        (
            "http://[2002:a9fe:a9fe::]/",
            "6to4 169.254.169.254: cloud metadata",
        ),
        (
            "http://[2001:0:4136:e378::5601:5601]/",
            "Teredo client 169.254.169.254: cloud metadata",
        ),
        (
            "http://[64:ff9b::a9fe:a9fe]/",
            "NAT64 169.254.169.254: cloud metadata",
        ),
    ] {
        let e = lax.resolve(&check_url(u).unwrap()).await.unwrap_err();
        assert!(e.to_string().contains(shown), "{u}: {e}");
    }
}

fn request(url: &str) -> AddRequest {
    AddRequest {
        repo: "org/app".into(),
        url: url.into(),
        secret: Some("s3cret".into()),
        events: "push".into(),
        content_type: "json".into(),
        style: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_add_warns_when_the_guard_would_refuse_every_address() {
    let db = TestDb::new().await;
    let strict = webhook_config(|_| {});

    let added = manage::add_checked(&db.pool, &request("http://127.0.0.1:9/hook"), &strict)
        .await
        .unwrap();
    assert_eq!(
        added.warnings,
        vec![
            "http://127.0.0.1:9/hook resolves to 127.0.0.1, which the SSRF guard refuses \
             (loopback); deliveries will fail unless webhook.allowed_hosts or \
             webhook.allow_private allow it"
                .to_string()
        ]
    );
    // Added all the same.
    let subs = hookfleet::webhook::storage::list_subscriptions(&db.pool)
        .await
        .unwrap();
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].id, added.id);
    assert_eq!(subs[0].url, "http://127.0.0.1:9/hook");

    // A carried address is named.
    let added = manage::add_checked(&db.pool, &request("http://[::127.0.0.1]:8080/"), &strict)
        .await
        .unwrap();
    assert_eq!(added.warnings.len(), 1);
    assert!(
        added.warnings[0].contains(
            "resolves to ::7f00:1, which the SSRF guard refuses \
             (IPv4-compatible 127.0.0.1: loopback)"
        ),
        "{:?}",
        added.warnings
    );

    // A name that resolves only to refused addresses.
    let added = manage::add_checked(&db.pool, &request("http://localhost:9/hook"), &strict)
        .await
        .unwrap();
    assert_eq!(added.warnings.len(), 1, "{:?}", added.warnings);
    assert!(
        added.warnings[0].starts_with("http://localhost:9/hook resolves to ")
            && added.warnings[0].contains("loopback"),
        "{:?}",
        added.warnings
    );

    // Secrets in the URL are not repeated.
    let added = manage::add_checked(
        &db.pool,
        &request("http://10.0.0.1/hook?token=t0ps3cret&x=1"),
        &strict,
    )
    .await
    .unwrap();
    assert_eq!(added.warnings.len(), 1);
    assert!(
        !added.warnings[0].contains("t0ps3cret"),
        "{:?}",
        added.warnings
    );
    assert!(
        added.warnings[0].starts_with("http://10.0.0.1/hook?token=***&x=1 resolves to 10.0.0.1"),
        "{:?}",
        added.warnings
    );

    // Metadata: allow_private does not help, and the warning says so.
    let lax = webhook_config(|c| c.allow_private = true);
    let added = manage::add_checked(&db.pool, &request("http://169.254.169.254/latest/"), &lax)
        .await
        .unwrap();
    assert_eq!(added.warnings.len(), 1);
    assert!(
        added.warnings[0].contains("(cloud metadata)")
            && added.warnings[0].contains("unless webhook.allowed_hosts allows it"),
        "{:?}",
        added.warnings
    );

    let subs = hookfleet::webhook::storage::list_subscriptions(&db.pool)
        .await
        .unwrap();
    assert_eq!(subs.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_add_does_not_warn_when_deliveries_can_go_through() {
    let db = TestDb::new().await;
    let strict = webhook_config(|_| {});
    let cases: [(&str, WebhookConfig); 5] = [
        (
            "http://127.0.0.1:9/hook",
            webhook_config(|c| c.allow_private = true),
        ),
        (
            "http://127.0.0.1:9/hook",
            webhook_config(|c| c.allowed_hosts = vec!["127.0.0.0/8".into()]),
        ),
        ("http://93.184.216.34/", strict.clone()),
        ("http://[::8.8.8.8]/", strict.clone()),
        // Resolution failure is not a reason to warn (maybe not resolvable from here).
        ("http://no-such-host.invalid/hook", strict.clone()),
    ];
    for (url, cfg) in &cases {
        let added = manage::add_checked(&db.pool, &request(url), cfg)
            .await
            .unwrap();
        assert!(added.warnings.is_empty(), "{url}: {:?}", added.warnings);
    }
    let subs = hookfleet::webhook::storage::list_subscriptions(&db.pool)
        .await
        .unwrap();
    assert_eq!(subs.len(), cases.len());

    // Invalid input is still an error, not a warning.
    let e = manage::add_checked(&db.pool, &request("ftp://127.0.0.1/"), &strict)
        .await
        .unwrap_err();
    assert!(matches!(e, manage::WebhookManageError::Invalid(_)), "{e:?}");
}

/// A one-shot HTTP receiver on 127.0.0.1 answering 200; its port.
async fn ok_receiver() -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    port
}

#[tokio::test]
async fn the_sender_refuses_a_name_that_resolves_to_loopback() {
    let port = ok_receiver().await;
    let client = Client::new(&webhook_config(|_| {}));
    let url = check_url(&format!("http://localhost:{port}/hook")).unwrap();
    let e = client
        .post(&url, &[], Bytes::from_static(b"{}"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, DeliverError::Ssrf(SsrfError::Blocked { .. })),
        "the client's resolver refuses it: {e:?}"
    );
    assert!(!e.is_transient());
    let text = e.to_string();
    assert!(
        text.starts_with("refused: localhost resolves only to blocked addresses")
            && text.contains("loopback"),
        "{text}"
    );
}

#[tokio::test]
async fn allowed_hosts_entries_pass_the_resolver_and_the_peer_check() {
    let port = ok_receiver().await;
    for (entry, host) in [("localhost", "localhost"), ("127.0.0.1", "127.0.0.1")] {
        let client = Client::new(&webhook_config(|c| c.allowed_hosts = vec![entry.into()]));
        let url = check_url(&format!("http://{host}:{port}/hook")).unwrap();
        let r = client
            .post(&url, &[], Bytes::from_static(b"{}"))
            .await
            .unwrap_or_else(|e| panic!("{entry}: {e}"));
        assert_eq!(r.status, 200, "{entry}");
        assert_eq!(&r.body[..], b"ok", "{entry}");
    }
}
