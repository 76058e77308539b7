//! A webhook receiver for tests: a real HTTP server (actix-web) on a free loopback port that
//! answers 200 to every POST and records its headers and body, so that a test can count
//! deliveries, deduplicate them by `webhook-id` as a receiver following Standard Webhooks
//! would, and check what each carried. It can be made slow to answer, so that deliveries are
//! in flight when something happens to the sender.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::Value;

/// One POST as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    /// Header names in lower case, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn webhook_id(&self) -> Option<&str> {
        self.header("webhook-id")
    }

    /// The body as JSON, `Null` when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

type Log = Arc<Mutex<Vec<Received>>>;

/// What the handler shares: the log, and how long to wait before answering.
struct Shared {
    log: Log,
    hold: Duration,
}

pub struct WebhookReceiver {
    addr: SocketAddr,
    log: Log,
    handle: ServerHandle,
}

impl WebhookReceiver {
    /// Listens on `127.0.0.1:0` and answers at once. Must be called inside a tokio runtime.
    pub async fn start() -> Self {
        Self::start_with_hold(Duration::ZERO).await
    }

    /// Like [`start`](Self::start), but each POST is recorded when it arrives and answered
    /// only `hold` later, as a slow endpoint would.
    pub async fn start_with_hold(hold: Duration) -> Self {
        let log: Log = Arc::default();
        let data = web::Data::new(Shared {
            log: Arc::clone(&log),
            hold,
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                // Payloads of long outputs exceed actix's 256 KiB default.
                .app_data(web::PayloadConfig::default().limit(8 * 1024 * 1024))
                .default_service(web::to(record))
        })
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .expect("bind the webhook receiver");
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Self { addr, log, handle }
    }

    /// The URL to give as a callback; `path` starts with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every POST so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.log.lock().expect("receiver log").clone()
    }

    /// POSTs received, retries of the same message included.
    pub fn total(&self) -> usize {
        self.log.lock().expect("receiver log").len()
    }

    /// Distinct `webhook-id`s: what a receiver that deduplicates would process.
    pub fn unique_ids(&self) -> usize {
        self.by_id().len()
    }

    /// The POSTs grouped by `webhook-id` (those without one under the empty string).
    pub fn by_id(&self) -> BTreeMap<String, Vec<Received>> {
        let mut groups: BTreeMap<String, Vec<Received>> = BTreeMap::new();
        for r in self.log.lock().expect("receiver log").iter() {
            groups
                .entry(r.webhook_id().unwrap_or_default().to_owned())
                .or_default()
                .push(r.clone());
        }
        groups
    }

    /// Stops listening and waits for the server's threads to end.
    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        // The stop command is sent when `stop` is called; awaiting only waits for completion.
        drop(self.handle.stop(false));
    }
}

async fn record(shared: web::Data<Shared>, request: HttpRequest, body: web::Bytes) -> HttpResponse {
    if request.method() != actix_web::http::Method::POST {
        return HttpResponse::MethodNotAllowed().finish();
    }
    let headers = request
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    shared.log.lock().expect("receiver log").push(Received {
        headers,
        body: body.to_vec(),
        at: Instant::now(),
    });
    if !shared.hold.is_zero() {
        tokio::time::sleep(shared.hold).await;
    }
    HttpResponse::Ok().finish()
}
