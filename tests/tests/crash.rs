//! The [tenancy] crash acceptance test: 200 asynchronous invocations are accepted, the server
//! is killed with SIGKILL while it works through them and restarted on the same database, and
//! then every one of the 200 ends `succeeded` exactly once in the API, none is lost, and a
//! webhook receiver that deduplicates by `webhook-id` counts exactly 200 messages, one per
//! invocation.
//!
//! It runs the real `genrt` binary as a child process (a SIGKILL cannot be aimed at an
//! in-process server), once on SQLite, where the restart requeues what the dead process left
//! running, and once on Postgres, where the new node reclaims the dead node's leases when they
//! expire. The binary is `target/release/genrt` as it is (built if missing): after changing
//! the runtime, rebuild it (`make build`) or run through `make test`, which builds it first.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use genrt_tests::process::base_config;
use genrt_tests::receiver::Received;
use genrt_tests::{token, Db, PgCluster, ServerProcess, TempDir, WebhookReceiver, MODEL};
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

const INVOCATIONS: usize = 200;
const ENQUEUE_CONCURRENCY: usize = 16;
/// The kill comes once at least this many have succeeded, so that it lands midway: some work
/// done and announced, some running, most still queued.
const KILL_AFTER: usize = 20;
/// `queue.concurrency`, and the model's slots: how many invocations one node runs at once.
const CONCURRENCY: usize = 8;
/// After the restart, the longest time without a newly succeeded invocation.
const STALL_LIMIT: Duration = Duration::from_secs(120);
/// From the restart until all 200 have succeeded. Generous: the model gets through about seven
/// of these invocations a second on one idle core, far fewer on a machine busy with others.
const FINISH_LIMIT: Duration = Duration::from_secs(600);
/// From then until the receiver has every message: deliveries interrupted by the kill wait for
/// their lease to expire (`webhooks.timeout_s * 2 + 5` s) before they are sent again.
const DELIVERY_LIMIT: Duration = Duration::from_secs(120);
/// How long the receiver is watched after it has every message, for late extra messages.
const SETTLE: Duration = Duration::from_secs(3);
/// How long the receiver takes to answer each delivery.
const RECEIVER_HOLD: Duration = Duration::from_secs(2);
const FUNCTION: &str = "crash-probe";
const TENANT: &str = "crash-tenant";

/// The two runs each load the model and keep it busy; together they would only slow each
/// other down on a small machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sigkill_midway_loses_and_duplicates_nothing() {
    let _serial = ONE_AT_A_TIME.lock().await;
    sigkill_midway(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sigkill_midway_loses_and_duplicates_nothing() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = PgCluster::start();
    let url = cluster.create_database("genrt");
    sigkill_midway(Db::Postgres(url)).await;
    drop(cluster);
}

/// Short leases so that Postgres reclaims the dead node's work within seconds; as many
/// invocations leased at once as the model has slots, so that leased work does not wait in
/// the model's queue; a fast retry schedule for deliveries the kill interrupted; loopback
/// callbacks allowed; no rate limit, since 200 invocations arrive at once.
fn config(data: &TempDir, db: &Db) -> String {
    let base = base_config(&data.0, db);
    assert!(base.contains(&format!("slots = {CONCURRENCY}\n")));
    base + &format!("[queue]\nconcurrency = {CONCURRENCY}\nlease_s = 3\npoll_ms = 200\n\n")
        + "[webhooks]\nallow_private = [\"127.0.0.1\", \"::1\"]\n\
           retry_schedule_s = [1, 1, 2, 2, 5]\ntimeout_s = 5\n\n\
           [tenancy]\nrate_limit_rps = 0\n"
}

async fn sigkill_midway(db: Db) {
    let data = TempDir::new("genrt-crash");
    // A slow receiver keeps deliveries in flight at the kill: they are sent again after the
    // restart, with the same webhook-id, and deduplicating is what keeps the count at 200.
    let receiver = WebhookReceiver::start_with_hold(RECEIVER_HOLD).await;
    let mut server = ServerProcess::start(&data.0, &config(&data, &db)).await;
    let t = token(TENANT);

    let (status, body) = server
        .call(
            Method::POST,
            "/v1/functions",
            &t,
            Some(json!({
                "name": FUNCTION,
                "model": MODEL,
                "system": "You are a concise assistant.",
                "prompt": "Name one fact about the number {{ n }}.",
                "params": {"max_tokens": 8, "temperature": 0},
                // Every invocation must really run, before and after the crash.
                "cache": {"enabled": false},
                // A slow or busy machine must not turn this test into one of timeouts.
                "timeout_s": 600
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    // Accept all 200, 16 requests at a time; each answer means the row is committed.
    let started = Instant::now();
    let hook = receiver.url("/hook");
    let answers: Vec<(u16, Value)> = stream::iter(0..INVOCATIONS)
        .map(|n| {
            let (server, t, hook) = (&server, &t, &hook);
            async move {
                server
                    .call(
                        Method::POST,
                        &format!("/v1/functions/{FUNCTION}/invoke"),
                        t,
                        Some(json!({
                            "input": {"n": n},
                            "mode": "async",
                            "webhook": {"url": hook}
                        })),
                    )
                    .await
            }
        })
        .buffer_unordered(ENQUEUE_CONCURRENCY)
        .collect()
        .await;
    let mut accepted = BTreeSet::new();
    for (status, body) in &answers {
        assert_eq!(*status, 202, "an async invocation was not accepted: {body}");
        assert_eq!(body["status"], "queued", "{body}");
        let id = body["invocation_id"].as_str().expect("invocation_id");
        assert!(
            accepted.insert(id.parse::<Uuid>().expect("a uuid")),
            "id {id} given twice"
        );
    }
    assert_eq!(accepted.len(), INVOCATIONS);
    let accepted_after = started.elapsed();

    // Midway: some succeeded, not all. Meanwhile the node never leases more than its
    // concurrency, and nothing fails.
    let deadline = Instant::now() + FINISH_LIMIT;
    let succeeded_at_kill = loop {
        let counts = status_counts(&server, &t).await;
        let done = counts.get("succeeded").copied().unwrap_or(0);
        assert!(
            done < INVOCATIONS,
            "all {INVOCATIONS} finished before the kill; the crash would test nothing"
        );
        assert!(
            counts.get("running").copied().unwrap_or(0) <= CONCURRENCY,
            "more invocations running than queue.concurrency = {CONCURRENCY}: {counts:?}"
        );
        assert_nothing_failed(&server, &counts);
        if done >= KILL_AFTER {
            break done;
        }
        assert!(
            Instant::now() < deadline,
            "only {counts:?} within {FINISH_LIMIT:?}\n{}",
            server.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let running_at_kill = list(&server, &t, Some("running")).await.len();
    let posts_at_kill = receiver.total();
    let pid = server.pid();
    server.kill_9();
    let killed_after = started.elapsed();

    server.restart().await;
    let ready_after = started.elapsed();

    // Everything ends, and ends well. A failed or cancelled invocation fails the test at once,
    // and so does a queue that stops making progress (say, work left leased by the dead
    // process and never taken back), rather than at the overall limit.
    let deadline = Instant::now() + FINISH_LIMIT;
    let mut last_progress = (0, Instant::now());
    loop {
        let counts = status_counts(&server, &t).await;
        let done = counts.get("succeeded").copied().unwrap_or(0);
        if done == INVOCATIONS {
            break;
        }
        assert_nothing_failed(&server, &counts);
        if done != last_progress.0 {
            last_progress = (done, Instant::now());
        }
        assert!(
            last_progress.1.elapsed() < STALL_LIMIT,
            "no invocation succeeded for {STALL_LIMIT:?} after the restart: {counts:?}\n{}",
            server.log_tail(40)
        );
        assert!(
            Instant::now() < deadline,
            "{counts:?} {FINISH_LIMIT:?} after the restart\n{}",
            server.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let finished_after = started.elapsed();

    // The API: the function has exactly the 200 accepted invocations, each once, each
    // succeeded; those that were running at the kill were run again (a second attempt).
    let all = list(&server, &t, None).await;
    let listed: Vec<Uuid> = all.iter().map(invocation_id).collect();
    let distinct: BTreeSet<Uuid> = listed.iter().copied().collect();
    assert_eq!(
        listed.len(),
        INVOCATIONS,
        "listing has duplicates or extras"
    );
    assert_eq!(
        distinct, accepted,
        "the listing is not the accepted invocations"
    );
    let mut rerun = 0;
    let mut total_ms = Vec::new();
    for id in &accepted {
        let (status, record) = server
            .call(Method::GET, &format!("/v1/invocations/{id}"), &t, None)
            .await;
        assert_eq!(status, 200, "{record}");
        assert_eq!(record["status"], "succeeded", "{record}");
        assert_eq!(record["mode"], "async", "{record}");
        assert!(record["output"]["text"].is_string(), "{record}");
        let attempts = record["attempts"].as_u64().expect("attempts");
        assert!(attempts >= 1, "{record}");
        if attempts >= 2 {
            rerun += 1;
        }
        total_ms.push(record["timings"]["total_ms"].as_f64().unwrap_or_default());
    }
    assert!(
        rerun >= 1,
        "no invocation needed a second attempt: nothing was running when the server was \
         killed ({running_at_kill} listed as running just before)"
    );

    // The webhooks: exactly one message per invocation, however often each was sent.
    let deadline = Instant::now() + DELIVERY_LIMIT;
    while receiver.unique_ids() < INVOCATIONS {
        assert!(
            Instant::now() < deadline,
            "the receiver has {} of {INVOCATIONS} messages {DELIVERY_LIMIT:?} after the last \
             invocation succeeded\n{}",
            receiver.unique_ids(),
            server.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(SETTLE).await;
    let messages = receiver.by_id();
    let total_posts = receiver.total();
    assert_eq!(
        messages.len(),
        INVOCATIONS,
        "distinct webhook-ids after settling"
    );
    let mut message_of: BTreeMap<Uuid, String> = BTreeMap::new();
    for (webhook_id, posts) in &messages {
        let invocation = check_message(webhook_id, posts);
        assert!(
            accepted.contains(&invocation),
            "a message for an invocation never accepted: {invocation}"
        );
        if let Some(other) = message_of.insert(invocation, webhook_id.clone()) {
            panic!("invocation {invocation} announced twice, as {other} and {webhook_id}");
        }
    }
    assert_eq!(
        message_of.len(),
        INVOCATIONS,
        "an invocation was never announced"
    );
    let redelivered = messages.values().filter(|p| p.len() > 1).count();
    assert!(
        redelivered >= 1,
        "no message was sent twice: no delivery was in flight at the kill ({posts_at_kill} \
         POSTs had arrived), so deduplication was not put to the test"
    );
    total_ms.sort_by(f64::total_cmp);

    eprintln!(
        "crash timeline ({}): {INVOCATIONS} accepted after {:.1} s; pid {pid:?} killed at \
         {:.1} s with {succeeded_at_kill} succeeded, {running_at_kill} running and \
         {posts_at_kill} webhook POSTs received; restarted and ready at {:.1} s; all \
         succeeded at {:.1} s ({:.1} s after the restart; {rerun} ran twice; median run \
         {:.0} ms); webhooks: {total_posts} POSTs, {} distinct ids, {redelivered} sent more \
         than once",
        match db {
            Db::Sqlite => "sqlite",
            Db::Postgres(_) => "postgres",
        },
        accepted_after.as_secs_f64(),
        killed_after.as_secs_f64(),
        ready_after.as_secs_f64(),
        finished_after.as_secs_f64(),
        (finished_after - ready_after).as_secs_f64(),
        total_ms[total_ms.len() / 2],
        messages.len(),
    );
    drop(server);
    receiver.stop().await;
}

/// How many invocations of the test function are in each status.
async fn status_counts(server: &ServerProcess, t: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for record in list(server, t, None).await {
        let status = record["status"].as_str().unwrap_or("<none>").to_owned();
        *counts.entry(status).or_default() += 1;
    }
    counts
}

fn assert_nothing_failed(server: &ServerProcess, counts: &BTreeMap<String, usize>) {
    assert!(
        !counts.contains_key("failed") && !counts.contains_key("cancelled"),
        "invocations ended badly: {counts:?}\n{}",
        server.log_tail(40)
    );
}

/// Every invocation of the test function with `status` (any status when `None`), newest
/// first, following the cursor to the last page.
async fn list(server: &ServerProcess, t: &str, status: Option<&str>) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/invocations?function={FUNCTION}&limit=200");
        if let Some(s) = status {
            path.push_str(&format!("&status={s}"));
        }
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (code, page) = server.call(Method::GET, &path, t, None).await;
        assert_eq!(code, 200, "{page}");
        all.extend(page["invocations"].as_array().expect("invocations").clone());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return all,
        }
    }
}

fn invocation_id(record: &Value) -> Uuid {
    record["invocation_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no invocation_id in {record}"))
}

/// Checks every delivery of one message and returns the invocation it announces. Retries of
/// a message carry the same body (only the timestamp and signature change).
fn check_message(webhook_id: &str, posts: &[Received]) -> Uuid {
    assert!(
        webhook_id.starts_with("msg_"),
        "a POST without a proper webhook-id: {:?}",
        posts[0].headers
    );
    for post in posts {
        for header in ["webhook-timestamp", "webhook-signature"] {
            assert!(
                post.header(header).is_some_and(|v| !v.is_empty()),
                "{webhook_id} arrived without {header}: {:?}",
                post.headers
            );
        }
        assert!(
            post.header("webhook-signature")
                .is_some_and(|v| v.split(' ').all(|s| s.starts_with("v1,"))),
            "{webhook_id}: not a Standard Webhooks signature: {:?}",
            post.header("webhook-signature")
        );
        assert_eq!(
            post.body, posts[0].body,
            "{webhook_id} was sent again with another body"
        );
    }
    let event = posts[0].json();
    assert_eq!(event["type"], "invocation.succeeded", "{event}");
    assert_eq!(event["data"]["status"], "succeeded", "{event}");
    event["data"]["invocation_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{webhook_id}: no data.invocation_id in {event}"))
}
