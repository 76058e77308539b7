//! Resilience of the real `genrt` binary on a real throwaway Postgres: several nodes sharing
//! one database with one of them killed (SIGKILL) midway, a graceful stop (SIGTERM) in the
//! middle of streams, synchronous and asynchronous work, and a database outage.
//!
//! The binary is `target/release/genrt` as it is (built if missing): after changing the
//! runtime, rebuild it (`cargo build --release --workspace --bins`) or run through
//! `make test`, which builds it first.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use genrt_tests::process::base_config;
use genrt_tests::{token, Db, PgCluster, ServerProcess, TempDir};
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

const FUNCTION: &str = "resilience-probe";
/// Each of these tests loads the model in one to three processes; run together they would
/// only slow each other down.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A function whose every run generates exactly `max_tokens` tokens (end of generation is
/// ignored), so that "the whole text" is a checkable count.
fn probe(max_tokens: u32) -> Value {
    json!({
        "name": FUNCTION,
        "model": genrt_tests::MODEL,
        "prompt": "Count slowly from {{ n }}.",
        "params": {"max_tokens": max_tokens, "temperature": 0, "ignore_eos": true},
        "cache": {"enabled": false},
        "timeout_s": 600
    })
}

async fn deploy(server: &ServerProcess, t: &str, max_tokens: u32) {
    let (status, body) = server
        .call(Method::POST, "/v1/functions", t, Some(probe(max_tokens)))
        .await;
    assert_eq!(status, 201, "{body}");
}

async fn enqueue(server: &ServerProcess, t: &str, n: usize) -> Uuid {
    let (status, body) = server
        .call(
            Method::POST,
            &format!("/v1/functions/{FUNCTION}/invoke"),
            t,
            Some(json!({"input": {"n": n}, "mode": "async"})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    body["invocation_id"].as_str().unwrap().parse().unwrap()
}

/// The rows of the test function, by status, read straight from the database.
fn statuses(cluster: &PgCluster) -> BTreeMap<String, usize> {
    cluster
        .query(
            "genrt",
            &format!(
                "SELECT status, count(*) FROM invocations WHERE function_name = '{FUNCTION}' \
                 GROUP BY status"
            ),
        )
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(s, n)| (s.to_owned(), n.parse().unwrap()))
        .collect()
}

/// Waits until every one of `ids` has succeeded, reading each through `server`; fails on any
/// failed or cancelled one, and after `limit`.
async fn all_succeed(server: &ServerProcess, ids: &[(String, Uuid)], limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut pending: Vec<&(String, Uuid)> = ids.iter().collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for entry in pending {
            let (t, id) = entry;
            let (status, record) = server
                .call(Method::GET, &format!("/v1/invocations/{id}"), t, None)
                .await;
            assert_eq!(status, 200, "{record}");
            match record["status"].as_str().unwrap() {
                "succeeded" => {}
                "failed" | "cancelled" => panic!("{id} ended badly: {record}"),
                _ => still.push(entry),
            }
        }
        pending = still;
        assert!(
            pending.is_empty() || Instant::now() < deadline,
            "{} invocations not done within {limit:?}\n{}",
            pending.len(),
            server.log_tail(30)
        );
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// Acceptance 4: three nodes on one Postgres serve two tenants; async work spreads across
/// them; one is killed with SIGKILL while it holds leases; the others take its work once the
/// leases expire, and every accepted invocation ends `succeeded` exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_one_killed_midway_lose_and_duplicate_nothing() {
    const INVOCATIONS: usize = 60;
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = PgCluster::start();
    let db = Db::Postgres(cluster.create_database("genrt"));
    let dirs: Vec<TempDir> = (0..3).map(|_| TempDir::new("genrt-node")).collect();
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        // Short leases, so that the dead node's work is taken within seconds; each node
        // runs fewer at once than the model's slots, so that the work spreads.
        let config = base_config(&dir.0, &db)
            + &format!(
                "[queue]\nconcurrency = 3\nlease_s = 3\npoll_ms = 200\nnode_id = \"node-{i}\"\n\n\
                 [tenancy]\nrate_limit_rps = 0\n"
            );
        nodes.push(ServerProcess::start(&dir.0, &config).await);
    }
    let tenants = [token("north"), token("south")];
    for t in &tenants {
        deploy(&nodes[0], t, 12).await;
    }
    // Accepted through every node in turn, for both tenants.
    let mut accepted = Vec::new();
    for n in 0..INVOCATIONS {
        let t = &tenants[n % 2];
        let id = enqueue(&nodes[n % 3], t, n).await;
        accepted.push((t.clone(), id));
    }

    // Midway: wait until the victim holds leases and some work is done, noting which nodes
    // run work meanwhile.
    let mut owners = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    let victim_leases = loop {
        let running = cluster.query(
            "genrt",
            "SELECT lease_owner FROM invocations WHERE status = 'running'",
        );
        owners.extend(running.lines().map(str::to_owned));
        let victim = running.lines().filter(|l| *l == "node-2").count();
        let done = statuses(&cluster).get("succeeded").copied().unwrap_or(0);
        assert!(
            done < INVOCATIONS,
            "all done before the kill: nothing to test"
        );
        if victim > 0 && done >= 6 {
            break victim;
        }
        assert!(Instant::now() < deadline, "node-2 never ran work");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    nodes[2].kill_9();
    let killed_at = Instant::now();
    // What the dead node held: read after the kill, since one it ran could have finished
    // between a read before and the kill (and then rightly ran once). Its leases stand for
    // `lease_s` (3 s) before another node takes them back, far longer than this read.
    let victim_ids: BTreeSet<String> = cluster
        .query(
            "genrt",
            "SELECT id FROM invocations WHERE status = 'running' AND lease_owner = 'node-2'",
        )
        .lines()
        .map(str::to_owned)
        .collect();

    all_succeed(&nodes[0], &accepted, Duration::from_secs(600)).await;
    let finished_after = killed_at.elapsed();

    // Exactly the accepted invocations, each once, each succeeded with its whole text.
    let rows = cluster.query(
        "genrt",
        &format!(
            "SELECT id, status, completion_tokens, attempts FROM invocations \
             WHERE function_name = '{FUNCTION}'"
        ),
    );
    let rows: Vec<Vec<&str>> = rows.lines().map(|l| l.split('|').collect()).collect();
    assert_eq!(rows.len(), INVOCATIONS, "extra or missing rows");
    let ids: BTreeSet<Uuid> = rows.iter().map(|r| r[0].parse().unwrap()).collect();
    let expected: BTreeSet<Uuid> = accepted.iter().map(|(_, id)| *id).collect();
    assert_eq!(ids, expected);
    for r in &rows {
        assert_eq!(r[1], "succeeded", "{r:?}");
        assert_eq!(r[2], "12", "the whole text: {r:?}");
    }
    // The victim's leased work was run again by another node.
    for r in rows.iter().filter(|r| victim_ids.contains(r[0])) {
        let attempts: u32 = r[3].parse().unwrap();
        assert!(
            attempts >= 2,
            "a killed node's invocation ran once only: {r:?}"
        );
    }
    assert!(
        owners.len() >= 2,
        "the work did not spread across nodes: only {owners:?} ran any"
    );
    eprintln!(
        "multi-node: {INVOCATIONS} invocations on 3 nodes, run by {owners:?}; node-2 killed \
         with {victim_leases} leases; the rest finished {:.1} s later",
        finished_after.as_secs_f64()
    );
}

/// SIGTERM in the middle of streams, synchronous invocations and leased asynchronous work:
/// new connections are refused at once, the streams and synchronous calls complete with their
/// whole text, the leased work goes back to `queued`, the process exits 0 within the drain
/// deadline, and after a restart every asynchronous invocation succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_work_and_hands_back_leases() {
    const ASYNC: usize = 12;
    const DRAIN_S: u64 = 40;
    const TOKENS: u32 = 24;
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = PgCluster::start();
    let db = Db::Postgres(cluster.create_database("genrt"));
    let dir = TempDir::new("genrt-drain");
    // A long lease: work that was not handed back would stay `running` for the check below.
    let config = base_config(&dir.0, &db).replace(
        "shutdown_timeout_s = 5",
        &format!("shutdown_timeout_s = {DRAIN_S}"),
    ) + "[queue]\nconcurrency = 2\nlease_s = 60\npoll_ms = 200\n\n\
         [tenancy]\nrate_limit_rps = 0\n";
    let mut server = ServerProcess::start(&dir.0, &config).await;
    let t = token("drain");
    deploy(&server, &t, TOKENS).await;
    let mut accepted = Vec::new();
    for n in 0..ASYNC {
        accepted.push((t.clone(), enqueue(&server, &t, n).await));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while statuses(&cluster).get("running").copied().unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "no async work started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Two streams and two synchronous invocations in flight.
    let base = server.base();
    let client = genrt_tests::client();
    let (first_tx, mut first_rx) = tokio::sync::mpsc::channel::<()>(4);
    let streams: Vec<_> = (0..2)
        .map(|i| {
            let (client, base, t, first) =
                (client.clone(), base.clone(), t.clone(), first_tx.clone());
            tokio::spawn(async move {
                let response = client
                    .post(format!("{base}/v1/functions/{FUNCTION}/invoke"))
                    .bearer_auth(&t)
                    .json(&json!({"input": {"n": 100 + i}, "stream": true}))
                    .send()
                    .await
                    .expect("stream opened");
                let status = response.status().as_u16();
                let mut events =
                    eventsource_stream::Eventsource::eventsource(response.bytes_stream());
                let (mut text, mut done) = (String::new(), None);
                while let Some(Ok(event)) = events.next().await {
                    let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
                    match event.event.as_str() {
                        "token" => {
                            if text.is_empty() {
                                let _ = first.send(()).await;
                            }
                            text.push_str(data["text"].as_str().unwrap_or_default());
                        }
                        "done" => done = Some(data),
                        _ => {}
                    }
                }
                (status, text, done)
            })
        })
        .collect();
    let syncs: Vec<_> = (0..2)
        .map(|i| {
            let (client, base, t) = (client.clone(), base.clone(), t.clone());
            tokio::spawn(async move {
                let response = client
                    .post(format!("{base}/v1/functions/{FUNCTION}/invoke"))
                    .bearer_auth(&t)
                    .json(&json!({"input": {"n": 200 + i}}))
                    .send()
                    .await
                    .expect("sync sent");
                genrt_tests::read(response).await
            })
        })
        .collect();
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(120), first_rx.recv())
            .await
            .expect("the streams started");
    }

    server.sigterm();
    let signalled = Instant::now();
    // New connections are refused while the in-flight work drains.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = reqwest::Client::new()
        .get(format!("{base}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        refused.as_ref().is_err_and(|e| e.is_connect()),
        "a new connection was accepted during the drain: {refused:?}"
    );

    for stream in streams {
        let (status, text, done) = stream.await.unwrap();
        assert_eq!(status, 200);
        let done = done.unwrap_or_else(|| panic!("a stream was cut: {text:?}"));
        assert_eq!(done["usage"]["completion_tokens"], TOKENS, "{done}");
        assert!(!text.is_empty());
    }
    for sync in syncs {
        let (status, body) = sync.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["usage"]["completion_tokens"], TOKENS, "{body}");
        assert!(!body["output"]["text"].as_str().unwrap().is_empty());
    }
    let exit = server
        .wait_exit(Duration::from_secs(DRAIN_S + 30))
        .await
        .expect("the process exits within the drain deadline");
    let stopped_after = signalled.elapsed();
    assert!(
        exit.success(),
        "exit status {exit}\n{}",
        server.log_tail(30)
    );

    // Nothing is left leased: what ran was handed back, the rest is still queued.
    let counts = statuses(&cluster);
    assert_eq!(counts.get("running"), None, "{counts:?}");
    assert!(!counts.contains_key("failed"), "{counts:?}");
    let leased = cluster.query(
        "genrt",
        "SELECT count(*) FROM invocations WHERE status = 'queued' AND lease_owner IS NOT NULL",
    );
    assert_eq!(leased, "0");
    let queued = counts.get("queued").copied().unwrap_or(0);
    assert!(
        queued > 0,
        "no async work was left to hand back: {counts:?}"
    );
    // Every async invocation is either done (it finished during the drain) or queued again.
    let async_done: usize = cluster
        .query(
            "genrt",
            "SELECT count(*) FROM invocations WHERE mode = 'async' AND status = 'succeeded'",
        )
        .parse()
        .unwrap();
    assert_eq!(queued + async_done, ASYNC, "{counts:?}");

    // Restarted, the node finishes everything accepted before the stop.
    server.restart().await;
    all_succeed(&server, &accepted, Duration::from_secs(300)).await;
    eprintln!(
        "drain: exited 0 {:.1} s after SIGTERM with {queued} invocations queued ({counts:?})",
        stopped_after.as_secs_f64()
    );
}

/// The database goes away: requests that need it fail fast with 503 `database_unavailable`
/// and Retry-After, `/readyz` says not ready, the process keeps running, and when the database
/// returns it recovers by itself and every asynchronous invocation accepted before the outage
/// succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_fails_fast_and_recovers_by_itself() {
    const ASYNC: usize = 16;
    const ACQUIRE_S: u64 = 2;
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = PgCluster::start();
    let db = Db::Postgres(cluster.create_database("genrt"));
    let dir = TempDir::new("genrt-outage");
    let config = base_config(&dir.0, &db).replace(
        "[database]\n",
        &format!("[database]\nacquire_timeout_s = {ACQUIRE_S}\n"),
    ) + "[queue]\nconcurrency = 2\npoll_ms = 200\n\n[tenancy]\nrate_limit_rps = 0\n";
    let server = ServerProcess::start(&dir.0, &config).await;
    let t = token("outage");
    deploy(&server, &t, 16).await;
    let mut accepted = Vec::new();
    for n in 0..ASYNC {
        accepted.push((t.clone(), enqueue(&server, &t, n).await));
    }

    cluster.stop();
    let fast = Duration::from_secs(ACQUIRE_S + 4);
    // Readiness turns 503 quickly.
    let started = Instant::now();
    let ready = server
        .client
        .get(format!("{}/readyz", server.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    assert!(
        started.elapsed() < fast,
        "/readyz took {:?}",
        started.elapsed()
    );
    // Liveness does not: the process is fine.
    let live = server
        .client
        .get(format!("{}/healthz", server.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status().as_u16(), 200);
    // Requests that need the database fail fast with the clear code and a Retry-After.
    let other = token("outage-other");
    for (method, path, t, body) in [
        (Method::GET, "/v1/invocations".to_owned(), &t, None),
        (
            Method::POST,
            format!("/v1/functions/{FUNCTION}/invoke"),
            &t,
            Some(json!({"input": {"n": 1}, "mode": "async"})),
        ),
        // A tenant not cached yet: its settings must be read.
        (Method::GET, "/v1/functions".to_owned(), &other, None),
    ] {
        let started = Instant::now();
        let mut request = server
            .client
            .request(method, format!("{}{path}", server.base()))
            .bearer_auth(t);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let took = started.elapsed();
        let retry_after = response.headers().get("retry-after").cloned();
        let (status, body) = genrt_tests::read(response).await;
        assert_eq!(status, 503, "{path}: {body}");
        assert_eq!(
            body["error"]["code"], "database_unavailable",
            "{path}: {body}"
        );
        assert!(retry_after.is_some(), "{path}: no Retry-After");
        assert!(took < fast, "{path} took {took:?} to fail");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    cluster.start_again();
    let started = Instant::now();
    loop {
        let ready = server
            .client
            .get(format!("{}/readyz", server.base()))
            .send()
            .await
            .unwrap();
        if ready.status().as_u16() == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not ready again after the database returned\n{}",
            server.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let recovered_after = started.elapsed();
    all_succeed(&server, &accepted, Duration::from_secs(300)).await;
    let counts = statuses(&cluster);
    assert_eq!(counts.get("succeeded").copied(), Some(ASYNC), "{counts:?}");
    let (status, body) = server
        .call(
            Method::POST,
            &format!("/v1/functions/{FUNCTION}/invoke"),
            &t,
            Some(json!({"input": {"n": 7}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    eprintln!(
        "outage: ready again {:.1} s after the database returned; all {ASYNC} async \
         invocations succeeded",
        recovered_after.as_secs_f64()
    );
}
