//! Tenants an operator has not created yet: a JWT may name any tenant, and such a tenant must
//! be as controllable as one created through the API.

use genrt_tests::{admin_token, reply, token, Db, TestServer};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn a_tenant_can_be_disabled_before_its_first_token_and_after_its_first_use() {
    let s = TestServer::start_fake(Db::Sqlite, |_| {}).await;
    let admin = admin_token();
    // Blocked ahead: created disabled before any token for it was seen.
    let (status, body) = s
        .call(
            Method::POST,
            "/v1/admin/tenants",
            &admin,
            Some(json!({"id": "future", "disabled": true})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let got = reply(s.build(Method::GET, "/v1/functions", &token("future"))).await;
    assert_eq!(
        (got.status, got.code()),
        (403, "tenant_disabled"),
        "{:?}",
        got.body
    );

    // A tenant nobody created: its first request gives it a row, so it is listed and can be
    // disabled like any other.
    let newco = token("newco");
    let got = reply(s.build(Method::GET, "/v1/functions", &newco)).await;
    assert_eq!(got.status, 200, "{:?}", got.body);
    let (status, row) = s
        .call(Method::GET, "/v1/admin/tenants/newco", &admin, None)
        .await;
    assert_eq!((status, &row["disabled"]), (200, &json!(false)), "{row}");
    let (status, body) = s
        .call(
            Method::PATCH,
            "/v1/admin/tenants/newco",
            &admin,
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let got = reply(s.build(Method::GET, "/v1/functions", &newco)).await;
    assert_eq!(
        (got.status, got.code()),
        (403, "tenant_disabled"),
        "{:?}",
        got.body
    );
    s.stop().await;
}
