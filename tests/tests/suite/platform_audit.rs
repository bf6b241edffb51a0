//! The sandbox's webhooks name their number's WABA (and, below, the operator's view of the
//! platform chain). On both backends.

use kirim::config::Backend;
use kirim_tests::{spawn_app, TestApp, OPERATOR_TOKEN};
use serde_json::{json, Value};

use super::access::call;

/// The tenant a number on a second WABA is onboarded for: its id, key and number.
async fn onboarded_on(app: &TestApp, waba: &str) -> (String, String, String) {
    let pnid = format!("{}", 100_000 + kirim_tests::rand_u32() % 900_000);
    let body = json!({
        "name": "Kedai Dua Sdn Bhd",
        "waba_id": waba,
        "phone_number_id": pnid,
        "meta_access_token": "EAAG-second-waba-token",
        "credits": 5,
    });
    let (s, made) = call(
        app,
        "POST",
        "/v1/platform/tenants",
        Some(OPERATOR_TOKEN),
        Some(body),
    )
    .await;
    assert_eq!(s, 201, "{made}");
    (
        made["tenant"]["id"].as_str().unwrap().to_owned(),
        made["admin_api_key"].as_str().unwrap().to_owned(),
        pnid,
    )
}

/// Meta's webhooks name the WABA of the number they are about (`entry[].id`): so do the
/// sandbox's, an inbound STOP's and a status's, for a number on another WABA than its own.
async fn the_sandboxs_webhooks_for_a_number_on_a_second_waba_name_that_waba(b: Backend) {
    let app = spawn_app(b).await;
    const WABA: &str = "200000000000002";
    let (_, key, pnid) = onboarded_on(&app, WABA).await;
    let put = app
        .http
        .put(app.url(&format!("/_sandbox/phone-numbers/{pnid}")))
        .json(&json!({"waba_id": WABA}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let res = app
        .http
        .post(app.url("/_sandbox/inbound"))
        .json(&json!({"phone_number_id": pnid, "from": "+60123450111", "text": "STOP"}))
        .send()
        .await
        .unwrap();
    let inbound: Value = res.json().await.unwrap();
    assert_eq!(inbound["delivered"], true, "{inbound}");
    assert_eq!(inbound["webhook"]["entry"][0]["id"], WABA, "{inbound}");
    // The platform took it: the user is opted out.
    let (s, o) = call(&app, "GET", "/v1/opt-outs/%2B60123450111", Some(&key), None).await;
    assert_eq!(s, 200, "{o}");
    // A send's statuses, caught on their way.
    let (url, caught) = super::callbacks::receiver(0).await;
    app.app.sandbox.set_webhook_url(url);
    let res = app.send_template(&key, "+60123450112").await;
    assert_eq!(res.status(), 202);
    let mut statuses = Vec::new();
    for _ in 0..100 {
        statuses = caught.bodies();
        if !statuses.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!statuses.is_empty(), "a status webhook was sent");
    for hook in statuses {
        let hook: Value = serde_json::from_str(&hook).unwrap();
        assert!(
            hook["entry"][0]["changes"][0]["value"]["statuses"].is_array(),
            "{hook}"
        );
        assert_eq!(hook["entry"][0]["id"], WABA, "{hook}");
    }
}

on_both_backends!(the_sandboxs_webhooks_for_a_number_on_a_second_waba_name_that_waba,);
