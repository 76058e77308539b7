//! `/metrics` names every tenant and function: it must not be readable by callers, and a
//! flood of names must not grow its series without limit.

use genrt_tests::{token, Db, TestServer};
use reqwest::Method;
use serde_json::json;

const METRICS_TOKEN: &str = "scraper-token-0123456789abcdef";

#[tokio::test]
async fn metrics_are_not_on_the_api_listener_and_demand_their_token() {
    let s = TestServer::start_fake(Db::Sqlite, |c| {
        c.telemetry.metrics_token = Some(METRICS_TOKEN.into());
    })
    .await;
    let response = s.request(Method::GET, "/metrics", None, None).await;
    assert_eq!(
        response.status().as_u16(),
        404,
        "the API listener has no /metrics"
    );
    let t = token("acme");
    let response = s.request(Method::GET, "/metrics", Some(&t), None).await;
    assert_eq!(response.status().as_u16(), 404, "not even for a tenant");
    assert_eq!(s.scrape(None).await.status().as_u16(), 401);
    assert_eq!(
        s.scrape(Some("scraper-token-0123456789abcdeX"))
            .await
            .status()
            .as_u16(),
        401
    );
    assert_eq!(s.scrape(Some(&t)).await.status().as_u16(), 401);
    let response = s.scrape(Some(METRICS_TOKEN)).await;
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.text().await.unwrap().contains("genrt_"));
    s.stop().await;
}

#[test]
fn metrics_on_a_reachable_address_without_a_token_refuse_to_start() {
    let mut config = genrt_runtime::Config::default();
    config.telemetry.metrics_listen = "0.0.0.0:9464".into();
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("metrics_token"), "{err}");
    config.telemetry.metrics_token = Some(METRICS_TOKEN.into());
    config.validate().unwrap();
}

#[tokio::test]
async fn tenant_and_function_labels_are_capped() {
    let s = TestServer::start_fake(Db::Sqlite, |c| {
        c.telemetry.max_tenant_labels = 2;
        c.telemetry.max_function_labels = 3;
        c.tenancy.rate_limit_rps = 0.0;
    })
    .await;
    // Five tenants, two functions each: ten names an attacker controls.
    for tenant in ["t1", "t2", "t3", "t4", "t5"] {
        let t = token(tenant);
        for name in ["fa", "fb"] {
            let (status, body) = s
                .deploy(
                    &t,
                    json!({"name": name, "model": genrt_tests::MODEL,
                           "prompt": "Say hi.", "params": {"max_tokens": 2}}),
                )
                .await;
            assert!(status == 201 || status == 200, "{body}");
            let (status, body) = s.invoke(&t, name, json!({"input": {}})).await;
            assert_eq!(status, 200, "{body}");
        }
    }
    let text = s.scrape(None).await.text().await.unwrap();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("genrt_invocations_total{"))
        .collect();
    let tenants: std::collections::BTreeSet<&str> = series
        .iter()
        .filter_map(|l| l.split("genrt_tenant=\"").nth(1)?.split('"').next())
        .collect();
    let functions: std::collections::BTreeSet<(&str, &str)> = series
        .iter()
        .filter_map(|l| {
            let t = l.split("genrt_tenant=\"").nth(1)?.split('"').next()?;
            let f = l.split("genrt_function=\"").nth(1)?.split('"').next()?;
            Some((t, f))
        })
        .collect();
    assert_eq!(
        tenants,
        ["other", "t1", "t2"].into_iter().collect(),
        "{series:#?}"
    );
    assert_eq!(
        functions.iter().filter(|(_, f)| *f != "other").count(),
        3,
        "{functions:?}"
    );
    // Nothing is lost: the capped names are counted under `other`.
    let total: f64 = series
        .iter()
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(total, 10.0, "{series:#?}");
    s.stop().await;
}
