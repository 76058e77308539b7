//! Several nodes on one database: a limit is the tenant's, not each node's, and a revocation
//! on one node holds on every node.

use std::time::{Duration, Instant};

use genrt_tests::{reply, token, Db, PgCluster, TempDir, TestServer};
use reqwest::Method;
use serde_json::json;

async fn node(url: &str, adjust: impl FnOnce(&mut genrt_runtime::Config)) -> TestServer {
    let data = TempDir::new("genrt-node");
    let mut config = TestServer::config(&Db::Postgres(url.to_owned()), &data);
    config.tenancy.sync_interval_ms = 200;
    adjust(&mut config);
    let backend = std::sync::Arc::new(genrt_actors::testing::FakeBackend::default());
    TestServer::start_with_backend(config, data, backend).await
}

async fn until_nodes(s: &TestServer, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while s.server().state().tenancy.limits.nodes() != n {
        assert!(Instant::now() < deadline, "never counted {n} nodes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_do_not_allow_twice_a_tenants_limit_and_revocations_hold_everywhere() {
    let cluster = PgCluster::start();
    let url = cluster.create_database("genrt");
    // A burst of 4 and a trickle after it: 4 requests pass in all, whichever node they reach.
    let limited = |c: &mut genrt_runtime::Config| {
        c.tenancy.rate_limit_rps = 0.01;
        c.tenancy.rate_limit_burst = 4;
    };
    let a = node(&url, limited).await;
    let b = node(&url, limited).await;
    until_nodes(&a, 2).await;
    until_nodes(&b, 2).await;
    let t = token("acme");
    let mut passed = 0;
    for i in 0..8 {
        let s = if i % 2 == 0 { &a } else { &b };
        let got = reply(s.build(Method::GET, "/v1/functions", &t)).await;
        match got.status {
            200 => passed += 1,
            429 => assert_eq!(got.code(), "rate_limited"),
            other => panic!("{other}: {:?}", got.body),
        }
    }
    assert_eq!(passed, 4, "each of two nodes takes half the burst");

    // A key used on B, then revoked on A: refused on B within a couple of sync intervals,
    // not after the cache's lifetime.
    let admin_like = token("keys");
    let (status, key) = a
        .call(
            Method::POST,
            "/v1/api-keys",
            &admin_like,
            Some(json!({"name": "ci"})),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let secret = key["secret"].as_str().unwrap().to_owned();
    let id = key["id"].as_str().unwrap().to_owned();
    let got = reply(b.build(Method::GET, "/v1/functions", &secret)).await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    let (status, _) = a
        .call(
            Method::DELETE,
            &format!("/v1/api-keys/{id}"),
            &admin_like,
            None,
        )
        .await;
    assert_eq!(status, 204);
    let revoked = Instant::now();
    loop {
        let got = reply(b.build(Method::GET, "/v1/functions", &secret)).await;
        if got.status == 401 {
            break;
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(2),
            "B still accepts a key revoked on A"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // One node leaves: the other takes the whole limit again.
    b.stop().await;
    until_nodes(&a, 1).await;
    a.stop().await;
    drop(cluster);
}
