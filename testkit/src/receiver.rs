//! A webhook receiver for tests: an HTTP server on 127.0.0.1 that records every
//! request (headers, body, arrival) and answers from a script.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;

use super::eventually;

/// How long [`Receiver::wait_for`] waits.
const WAIT: Duration = Duration::from_secs(30);

/// What the receiver answers to one request.
#[derive(Clone, Copy, Debug)]
pub enum Reply {
    /// This status.
    Status(u16),
    /// This status with `Retry-After: <seconds>`.
    StatusRetryAfter(u16, u64),
    /// No answer for 30 s (a receiver that hangs), then 200.
    Hang,
}

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Got {
    /// Header names (lowercase) and values.
    pub headers: HashMap<String, String>,
    /// The body as received.
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
}

struct RecvState {
    got: Vec<Got>,
    script: VecDeque<Reply>,
    default: Reply,
}

/// A webhook receiver on 127.0.0.1 that records every request and answers from a script.
#[derive(Clone)]
pub struct Receiver {
    state: Arc<Mutex<RecvState>>,
    /// The port it listens on.
    pub port: u16,
}

impl Receiver {
    /// Answers the replies of `script` in turn, then `default`.
    pub async fn start(script: Vec<Reply>, default: Reply) -> Receiver {
        let state = Arc::new(Mutex::new(RecvState {
            got: Vec::new(),
            script: script.into(),
            default,
        }));
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { state, port }
    }
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }
    pub fn got(&self) -> Vec<Got> {
        self.state.lock().unwrap().got.clone()
    }
    pub fn set_default(&self, r: Reply) {
        self.state.lock().unwrap().default = r;
    }
    pub async fn wait_for(&self, n: usize) -> Vec<Got> {
        eventually(WAIT, &format!("{n} requests at the receiver"), || {
            let got = self.got();
            async move { (got.len() >= n).then_some(got) }
        })
        .await
    }
}

async fn receive(
    State(state): State<Arc<Mutex<RecvState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let reply = {
        let mut s = state.lock().unwrap();
        s.got.push(Got {
            headers: headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap().to_string()))
                .collect(),
            body,
            at: Instant::now(),
        });
        let d = s.default;
        s.script.pop_front().unwrap_or(d)
    };
    let builder = axum::response::Response::builder();
    let builder = match reply {
        Reply::Status(s) => builder.status(s),
        Reply::StatusRetryAfter(s, secs) => {
            builder.status(s).header("retry-after", secs.to_string())
        }
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            builder.status(200)
        }
    };
    builder
        .header("x-receiver", "hookfleet-test")
        .body(axum::body::Body::from("receiver says hi"))
        .unwrap()
}
