//! What lies above the engine, in-process on the fake engine (`echo: <user text>`, and
//! `PANIC` in the text fails the replica): idempotent replays, retries of retryable failures
//! up to `max_attempts`, and the final state of work that cannot succeed. The real server —
//! HTTP, database, actor tree, queue — with no model, so each runs in well under a second of
//! its own.

use std::time::Duration;

use genrt_tests::{token, Db, TestServer, MODEL};
use reqwest::Method;
use serde_json::{json, Value};

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

async fn server() -> TestServer {
    let s = TestServer::start_fake(Db::Sqlite, |c| {
        c.queue.poll_ms = 20;
        c.queue.retry_base_ms = 10;
        c.queue.retry_max_ms = 20;
        c.queue.max_attempts = 3;
        c.supervision.base_backoff_ms = 1;
    })
    .await;
    let (status, body) = s
        .deploy(
            &token("acme"),
            json!({"name": "echo", "model": MODEL, "prompt": "{{ text }}",
                   "params": {"max_tokens": 64}, "cache": {"enabled": false}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    s
}

async fn until_ended(s: &TestServer, t: &str, id: &str) -> Value {
    let mut record = Value::Null;
    for _ in 0..500 {
        record = s
            .call(Method::GET, &format!("/v1/invocations/{id}"), t, None)
            .await
            .1;
        if ["succeeded", "failed", "cancelled"].contains(&record["status"].as_str().unwrap_or("")) {
            return record;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{id} did not end: {record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_idempotency_key_replays_the_first_answer() {
    let s = server().await;
    let t = token("acme");
    let send = |key: &'static str, text: &'static str| {
        let (s, t) = (&s, &t);
        async move {
            genrt_tests::reply(
                s.build(Method::POST, "/v1/functions/echo/invoke", t)
                    .header("idempotency-key", key)
                    .json(&json!({"input": {"text": text}})),
            )
            .await
        }
    };
    let first = send("k1", "hello").await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(first.body["output"]["text"], "echo: hello");
    assert_eq!(first.header("idempotent-replayed"), None);
    let again = send("k1", "hello").await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body["invocation_id"], first.body["invocation_id"]);
    assert_eq!(again.body["output"], first.body["output"]);
    // The same key for another request is a conflict, and nothing runs.
    let other = send("k1", "goodbye").await;
    assert_eq!(
        (other.status, other.code()),
        (409, "idempotency_key_reused")
    );

    // A refused request frees its key: fixed, it runs.
    let refused = genrt_tests::reply(
        s.build(Method::POST, "/v1/functions/echo/invoke", &t)
            .header("idempotency-key", "k2")
            .json(&json!({"input": {"wrong": "field"}})),
    )
    .await;
    assert_eq!((refused.status, refused.code()), (422, "template_error"));
    let fixed = send("k2", "fixed").await;
    assert_eq!(fixed.status, 200, "{:?}", fixed.body);
    assert_eq!(fixed.header("idempotent-replayed"), None);

    // Asynchronous: the replay is the same queued (or finished) invocation.
    let enqueue = || {
        genrt_tests::reply(
            s.build(Method::POST, "/v1/functions/echo/invoke", &t)
                .header("idempotency-key", "k3")
                .json(&json!({"input": {"text": "later"}, "mode": "async"})),
        )
    };
    let accepted = enqueue().await;
    assert_eq!(accepted.status, 202, "{:?}", accepted.body);
    let id = accepted.body["invocation_id"].as_str().unwrap().to_owned();
    let replayed = enqueue().await;
    assert_eq!(replayed.status, 202);
    assert_eq!(replayed.header("idempotent-replayed"), Some("true"));
    assert_eq!(replayed.body["invocation_id"], json!(id));
    let record = until_ended(&s, &t, &id).await;
    assert_eq!(record["status"], "succeeded", "{record}");
    assert_eq!(record["output"]["text"], "echo: later");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failures_are_retried_up_to_max_attempts_then_fail_once() {
    let s = server().await;
    let t = token("acme");
    // The replica fails on this input every time: retryable (`replica_failed`), so the queue
    // tries it `max_attempts` times, then records one failure.
    let (status, accepted) = s
        .invoke(
            &t,
            "echo",
            json!({"input": {"text": "PANIC"}, "mode": "async"}),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["invocation_id"].as_str().unwrap();
    let record = until_ended(&s, &t, id).await;
    assert_eq!(record["status"], "failed", "{record}");
    assert_eq!(record["error"]["code"], "replica_failed", "{record}");
    assert_eq!(record["attempts"], 3, "{record}");

    // Synchronously the same failure is answered at once, as a retryable 503.
    let (status, body) = s
        .invoke(&t, "echo", json!({"input": {"text": "PANIC"}}))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (503, "replica_failed"),
        "{body}"
    );
    // Work that succeeds takes one attempt.
    let (status, body) = s
        .invoke(
            &t,
            "echo",
            json!({"input": {"text": "fine"}, "mode": "async"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let ok = until_ended(&s, &t, body["invocation_id"].as_str().unwrap()).await;
    assert_eq!(
        (ok["status"].as_str(), ok["attempts"].as_u64()),
        (Some("succeeded"), Some(1)),
        "{ok}"
    );
    s.stop().await;
}

/// The record writer's INSERTs go in chunks of a few fixed sizes (so that their statements stay
/// prepared): a batch of any size is stored whole, and a batch that fails stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocation_records_are_inserted_in_chunks_all_or_nothing() {
    let s = server().await;
    let t = token("acme");
    let (status, out) = s
        .invoke(&t, "echo", json!({"input": {"text": "one"}}))
        .await;
    assert_eq!(status, 200, "{out}");
    let state = s.server().state();
    assert_eq!(state.records.flush(Duration::from_secs(10)).await, 0);
    let tenant = genrt_functions::TenantId::parse("acme").unwrap();
    let id = out["invocation_id"].as_str().unwrap().parse().unwrap();
    let row = state.store.invocation(&tenant, id).await.unwrap().unwrap();
    let count = || state.store.count_invocations(&tenant);
    assert_eq!(count().await.unwrap(), 1);

    // 93 rows: 64 + 16 + 4 + 4 + 4 + 1, in one transaction.
    let copies = |n: usize| {
        (0..n)
            .map(|_| {
                let mut copy = row.clone();
                copy.id = uuid::Uuid::now_v7();
                copy
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(state.store.invocations_insert(&copies(93), false).len(), 6);
    state.store.insert_invocations(copies(93)).await.unwrap();
    assert_eq!(count().await.unwrap(), 94);

    // The last of 70 rows repeats a stored id: the primary key refuses it, and the 69 before
    // it, in statements of their own, are not stored either.
    let mut failing = copies(70);
    failing.last_mut().unwrap().id = row.id;
    assert!(state
        .store
        .insert_invocations(failing.clone())
        .await
        .is_err());
    assert_eq!(count().await.unwrap(), 94, "nothing of the failed batch");

    // The writer's retry skips stored rows: the same batch then stores the 69 others.
    let retry = state.store.invocations_insert(&failing, true);
    state.store.execute_insert(retry).await.unwrap();
    assert_eq!(count().await.unwrap(), 94 + 69);
}

/// A registration job changes its row only while the row is its attempt: after the id was
/// deleted and registered again, the old job's moves, failures and progress touch nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_registration_job_cannot_change_a_new_registration_of_its_id() {
    use genrt_runtime::store::{Attempt, ModelChange, NewModel};
    let s = server().await;
    let store = &s.server().state().store;
    let new = NewModel {
        id: "again".into(),
        kind: "model",
        base: None,
        owner: None,
        state: "registering",
        source_kind: "url",
        source: Some("http://127.0.0.1:1/m.gguf".into()),
        sha256: "ab".repeat(32),
        path: "/nowhere/again.gguf".into(),
        settings: None,
        quantize: None,
        requantize: false,
    };
    assert!(store.insert_model(new.clone()).await.unwrap());
    let old = store.model_row("again").await.unwrap().unwrap();
    assert!(!old.attempt.is_empty());
    // Taken: a second registration of the id is refused while the first stands.
    assert!(!store.insert_model(new.clone()).await.unwrap());
    // Only a row being deleted is deleted.
    store.delete_model_row("again").await.unwrap();
    assert!(store.model_row("again").await.unwrap().is_some());
    let deleting = store.model_transition_any(
        "again",
        None,
        &["registering"],
        "deleting",
        ModelChange::default(),
    );
    assert!(deleting.await.unwrap());
    store.delete_model_row("again").await.unwrap();
    assert!(store.insert_model(new).await.unwrap());
    let current = store.model_row("again").await.unwrap().unwrap();
    assert_ne!(current.attempt, old.attempt);

    let to_validating =
        |at| store.model_transition(at, &["registering"], "validating", ModelChange::default());
    assert!(!to_validating(Attempt::of(&old)).await.unwrap());
    let failed = ModelChange {
        error: Some(("model_truncated".into(), "stale".into())),
        ..Default::default()
    };
    assert!(!store
        .model_transition(Attempt::of(&old), &["registering"], "failed", failed)
        .await
        .unwrap());
    store
        .model_progress(Attempt::of(&old), 123, 456)
        .await
        .unwrap();
    let unchanged = store.model_row("again").await.unwrap().unwrap();
    assert_eq!(unchanged.state, "registering");
    assert_eq!((unchanged.bytes_done, unchanged.size_bytes), (0, 0));

    // The current attempt moves it.
    store
        .model_progress(Attempt::of(&current), 7, 9)
        .await
        .unwrap();
    assert!(to_validating(Attempt::of(&current)).await.unwrap());
    let moved = store.model_row("again").await.unwrap().unwrap();
    assert_eq!((moved.state.as_str(), moved.bytes_done), ("validating", 7));
}

/// Versions are cached by number, and a function deleted and deployed again numbers its
/// versions from 1 again: a pinned `@1` must run the new function's version 1 at once, not
/// the deleted one's for as long as the cache keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_version_after_delete_and_redeploy_is_the_new_one() {
    let s = server().await;
    let t = token("acme");
    let deploy = |prompt: &'static str, max_tokens: u32| {
        let (s, t) = (&s, &t);
        async move {
            let (status, body) = s
                .deploy(
                    t,
                    json!({"name": "pinned", "model": MODEL, "prompt": prompt,
                           "params": {"max_tokens": max_tokens}, "cache": {"enabled": false}}),
                )
                .await;
            assert_eq!(status, 201, "{body}");
        }
    };
    let first_version = || {
        let (s, t) = (&s, &t);
        async move {
            let (status, body) = s
                .call(
                    Method::POST,
                    "/v1/functions/pinned@1/invoke",
                    t,
                    Some(json!({"input": {"text": "hi"}})),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            let tokens = body["usage"]["completion_tokens"].as_u64().expect("usage");
            let text = body["output"]["text"].as_str().unwrap_or_default();
            (text.to_owned(), tokens)
        }
    };
    let delete = || {
        let (s, t) = (&s, &t);
        async move {
            let (status, body) = s
                .call(Method::DELETE, "/v1/functions/pinned", t, None)
                .await;
            assert_eq!(status, 204, "{body}");
        }
    };
    // Two versions, so that `@1` is not the latest (read through the versions' cache).
    deploy("one {{ text }}", 64).await;
    deploy("two {{ text }}", 64).await;
    let (text, tokens) = first_version().await;
    assert_eq!(text, "echo: one hi");
    assert!(
        tokens > 3,
        "{tokens} tokens: too few to tell the limits apart"
    );

    delete().await;
    // The new version 1 renders its own template, and runs with its own parameters (its
    // actor is not the deleted version's, which is still alive and idle).
    deploy("three {{ text }}", 64).await;
    deploy("four {{ text }}", 64).await;
    assert_eq!(first_version().await.0, "echo: three hi");
    delete().await;
    deploy("three {{ text }}", 3).await;
    deploy("four {{ text }}", 3).await;
    let (_, tokens) = first_version().await;
    assert!(
        tokens <= 3,
        "{tokens} tokens past the new version's max_tokens of 3"
    );
    s.stop().await;
}
