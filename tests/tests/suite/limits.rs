//! Limits on use (API.md "Limits on use") over HTTP on both backends: requests per key and
//! per tenant, the operator's limits route, unsigned webhooks per source address, and
//! login failures per (email, address) and per address.
//!
//! The router is the one every host serves (`http::app`), driven in process with the
//! client address set as the hosts set it (`ClientIp`), over the contract fixture's ports:
//! memory, or DynamoDB and Secrets Manager on moto, with a manual clock, so that every
//! rate is checked at exact instants and no assertion depends on how fast a test runs.

use axum::body::Body;
use axum::http::{HeaderMap, Request};
use axum::Router;
use chrono::Duration;
use kirim::http::extract::ClientIp;
use kirim::secret::Secret;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::contract::{aws, contract, memory, Ports};

const OPERATOR: &str = "op_limits_operator_token";
const APP_SECRET: &str = "limits-app-secret";
const PASSWORD: &str = "correct horse battery staple";
const HOME: &str = "198.51.100.7";
const ELSEWHERE: &str = "203.0.113.20";

struct Http {
    p: Ports,
    router: Router,
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
    fn retry_after(&self) -> Option<u64> {
        self.headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    }
    /// The body without its request id (every answer has its own).
    fn shape(&self) -> Value {
        let mut b = self.body.clone();
        if let Some(m) = b.as_object_mut() {
            m.remove("request_id");
        }
        b
    }
}

impl Http {
    async fn new(p: Ports) -> Self {
        p.secrets
            .put(&p.settings.operator_token_secret, &Secret::new(OPERATOR))
            .await
            .unwrap();
        p.secrets
            .put(&p.settings.meta_app_secret, &Secret::new(APP_SECRET))
            .await
            .unwrap();
        let router = kirim::http::app((*p).clone(), Router::new()).into();
        Http { p, router }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        from: &str,
    ) -> Answer {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = body.map_or_else(String::new, |b| b.to_string());
        self.send(req.body(Body::from(body)).unwrap(), from).await
    }

    async fn send(&self, mut req: Request<Body>, from: &str) -> Answer {
        req.extensions_mut().insert(ClientIp(from.parse().ok()));
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    /// A new tenant: (tenant id, admin API key).
    async fn onboard(&self) -> (String, String) {
        let pnid = format!("{}", 100_000 + kirim_tests::rand_u32() % 900_000);
        let a = self
            .call(
                "POST",
                "/v1/platform/tenants",
                Some(OPERATOR),
                Some(
                    json!({"name": "Kedai", "waba_id": "1", "phone_number_id": pnid,
                    "meta_access_token": "EAAG-test"}),
                ),
                HOME,
            )
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
        (
            a.body["tenant"]["id"].as_str().unwrap().to_owned(),
            a.body["admin_api_key"].as_str().unwrap().to_owned(),
        )
    }

    async fn account(&self, key: &str) -> Answer {
        self.call("GET", "/v1/account", Some(key), None, HOME).await
    }

    fn advance(&self, by: Duration) {
        self.p.clock.advance(by);
    }
}

async fn a_key_over_its_limit_gets_429_with_retry_after_and_another_tenant_is_unaffected(p: Ports) {
    let http = Http::new(p).await;
    let (_, key) = http.onboard().await;
    let (_, other) = http.onboard().await;
    // The default: bursts of 100 a key, at one instant.
    for i in 0..100 {
        assert_eq!(http.account(&key).await.status, 200, "request {i}");
    }
    let over = http.account(&key).await;
    assert_eq!((over.status, over.code()), (429, "rate_limited"));
    assert_eq!(over.retry_after(), Some(1));
    // The limiter's own words, not a heavy route's (no request of another is in flight).
    assert_eq!(
        over.body["error"]["message"],
        "too many requests; retry after the number of seconds in Retry-After"
    );
    assert!(over.body["request_id"].is_string());
    assert_eq!(
        http.account(&other).await.status,
        200,
        "another tenant's key is not slowed"
    );
    // 50 a second: a second later, 50 more.
    http.advance(Duration::seconds(1));
    for _ in 0..50 {
        assert_eq!(http.account(&key).await.status, 200);
    }
    assert_eq!(http.account(&key).await.status, 429);
}

async fn the_operators_limits_route_changes_a_tenants_limit_and_refuses_bad_limits(p: Ports) {
    let http = Http::new(p).await;
    let (tenant, key) = http.onboard().await;
    let path = format!("/v1/platform/tenants/{tenant}/limits");
    for bad in [
        json!({"requests_per_sec": 0, "burst": 1}),
        json!({"requests_per_sec": 5, "burst": 0}),
        json!({"requests_per_sec": 100_000, "burst": 100_000}),
        json!({"requests_per_sec": 10, "burst": 5}),
        json!({"requests_per_sec": -1, "burst": 5}),
        json!({"requests_per_sec": 2}),
        json!({"requests_per_sec": 2, "burst": 2, "per_key": true}),
    ] {
        let a = http
            .call("PUT", &path, Some(OPERATOR), Some(bad.clone()), HOME)
            .await;
        assert_eq!((a.status, a.code()), (400, "invalid_request"), "{bad}");
    }
    let unknown = format!(
        "/v1/platform/tenants/{}/limits",
        kirim::domain::TenantId::generate()
    );
    let a = http
        .call(
            "PUT",
            &unknown,
            Some(OPERATOR),
            Some(json!({"requests_per_sec": 2, "burst": 3})),
            HOME,
        )
        .await;
    assert_eq!((a.status, a.code()), (404, "not_found"));
    let a = http
        .call(
            "PUT",
            &path,
            Some(&key),
            Some(json!({"requests_per_sec": 10_000, "burst": 20_000})),
            HOME,
        )
        .await;
    assert_eq!(a.status, 403, "only the operator sets limits");
    let tid = kirim::domain::TenantId::parse(&tenant).unwrap();
    let stored = http.p.tenants.get_tenant(&tid).await.unwrap().unwrap();
    assert_eq!(
        stored.request_limits, None,
        "refused changes changed nothing"
    );
    // (The refused PUT above counted against the key's default bucket: start afresh.)
    http.advance(Duration::seconds(1));

    let a = http
        .call(
            "PUT",
            &path,
            Some(OPERATOR),
            Some(json!({"requests_per_sec": 2, "burst": 3})),
            HOME,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["requests_per_sec"], 2);
    assert_eq!(a.body["burst"], 3);
    assert_eq!(a.body["tenant_requests_per_sec"], 8);
    let stored = http.p.tenants.get_tenant(&tid).await.unwrap().unwrap();
    assert_eq!(
        stored.request_limits.map(|l| (l.requests_per_sec, l.burst)),
        Some((2, 3)),
        "kept on the tenant record"
    );
    // The key now has a burst of three.
    for _ in 0..3 {
        assert_eq!(http.account(&key).await.status, 200);
    }
    let over = http.account(&key).await;
    assert_eq!((over.status, over.retry_after()), (429, Some(1)));
    http.advance(Duration::milliseconds(500));
    assert_eq!(http.account(&key).await.status, 200, "two a second");
    // Audited like other operator mutations (in the tenant's trail: it acted on it).
    let (events, _) = http
        .p
        .audit
        .list(
            &tenant,
            &kirim::ports::AuditQuery {
                limit: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.action == "PUT /v1/platform/tenants/{id}/limits"
                && e.details.contains("\"requests_per_sec\":2")),
        "{events:?}"
    );
}

fn signed(body: &[u8], secret: &str) -> String {
    kirim_tests::sign_with(secret, body)
}

async fn webhook(http: &Http, body: &Value, signature: Option<&str>, from: &str) -> Answer {
    let raw = body.to_string();
    let mut req = Request::builder()
        .method("POST")
        .uri("/webhooks/meta")
        .header("content-type", "application/json");
    if let Some(s) = signature {
        req = req.header("x-hub-signature-256", s);
    }
    http.send(req.body(Body::from(raw)).unwrap(), from).await
}

async fn a_bad_signature_flood_from_one_address_gets_429_while_signed_notifications_still_get_200(
    p: Ports,
) {
    let http = Http::new(p).await;
    let meta = "173.252.88.1";
    // A STOP for a tenant's number: applied, it writes an opt-out (so a refused one that
    // was applied would show in the items counted below).
    let t = super::contract::onboarded(&http.p, 0).await;
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{
        "field": "messages", "value": {"messaging_product": "whatsapp",
        "metadata": {"phone_number_id": t.phone_number_id},
        "messages": [{"from": "60123450911", "id": "wamid.in.flood", "timestamp": "1764000000",
            "type": "text", "text": {"body": "STOP"}}]}}]}]});
    let raw = body.to_string();
    let good = signed(raw.as_bytes(), APP_SECRET);
    let forged = signed(raw.as_bytes(), "not-the-app-secret");
    let before = http.p.retention.stored_items().await.unwrap().len();
    // Ten bad signatures are refused one by one, as bad signatures...
    for i in 0..10 {
        let sig = if i % 2 == 0 {
            Some(forged.as_str())
        } else {
            None
        };
        let a = webhook(&http, &body, sig, HOME).await;
        assert_eq!(a.status, 401, "bad signature {i}");
    }
    // ...then the address is refused before any signature is checked, even a good one
    // (anyone can put a well-formed header on anything: only loopback, where local mode's
    // sandbox posts from, has its signed requests checked anyway).
    let a = webhook(&http, &body, Some(&forged), HOME).await;
    assert_eq!((a.status, a.code()), (429, "rate_limited"));
    assert!(
        (1..=6).contains(&a.retry_after().unwrap_or(0)),
        "{:?}",
        a.headers
    );
    for sig in [None, Some("sha256=00"), Some(good.as_str())] {
        let a = webhook(&http, &body, sig, HOME).await;
        assert_eq!((a.status, a.code()), (429, "rate_limited"), "{sig:?}");
    }
    assert_eq!(
        http.p.retention.stored_items().await.unwrap().len(),
        before,
        "refused webhooks wrote nothing"
    );
    // Meta's own address is not slowed by another address's flood.
    for _ in 0..3 {
        let a = webhook(&http, &body, Some(&good), meta).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    assert!(
        http.p.retention.stored_items().await.unwrap().len() > before,
        "the signed STOP was applied (the count above could see a write)"
    );
    // Once the address's allowance refills, it is heard again.
    http.advance(Duration::seconds(6));
    assert_eq!(webhook(&http, &body, Some(&good), HOME).await.status, 200);
    // Loopback: past its allowance, a signed request is still checked and taken if it holds.
    let local = "127.0.0.1";
    for _ in 0..11 {
        webhook(&http, &body, Some(&forged), local).await;
    }
    assert_eq!(webhook(&http, &body, None, local).await.status, 429);
    assert_eq!(
        webhook(&http, &body, Some(&forged), local).await.status,
        429
    );
    assert_eq!(webhook(&http, &body, Some(&good), local).await.status, 200);
}

/// A tenant with an admin key and a console user: (admin key, email, user id).
async fn with_user(http: &Http) -> (String, String, String) {
    let (_, key) = http.onboard().await;
    let email = format!("staff.{}@kedai.example", ulid::Ulid::new()).to_lowercase();
    let a = http
        .call(
            "POST",
            "/v1/users",
            Some(&key),
            Some(json!({"email": email, "role": "operator", "password": PASSWORD})),
            HOME,
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let id = a.body["id"].as_str().unwrap().to_owned();
    (key, email, id)
}

async fn login(http: &Http, email: &str, password: &str, from: &str) -> Answer {
    http.call(
        "POST",
        "/v1/auth/login",
        None,
        Some(json!({"email": email, "password": password})),
        from,
    )
    .await
}

async fn an_unknown_email_answers_exactly_like_a_wrong_password_and_is_slowed_alike(p: Ports) {
    let http = Http::new(p).await;
    let (_, email, _) = with_user(&http).await;
    let nobody = format!("nobody.{}@kedai.example", ulid::Ulid::new()).to_lowercase();
    for i in 0..5 {
        let wrong = login(&http, &email, "not the password", HOME).await;
        let unknown = login(&http, &nobody, "not the password", HOME).await;
        assert_eq!(
            (wrong.status, wrong.code()),
            (401, "invalid_credentials"),
            "{i}"
        );
        assert_eq!(wrong.shape(), unknown.shape(), "attempt {i}");
        assert_eq!(wrong.retry_after(), unknown.retry_after());
    }
    // Five failures each: both are slowed the same way, with a Retry-After.
    let wrong = login(&http, &email, PASSWORD, HOME).await;
    let unknown = login(&http, &nobody, PASSWORD, HOME).await;
    assert_eq!((wrong.status, wrong.code()), (429, "rate_limited"));
    assert_eq!(wrong.shape(), unknown.shape());
    assert_eq!(wrong.retry_after(), Some(1));
    assert_eq!(unknown.retry_after(), Some(1));
    // The delay passed, the right password works; the delays grow with each failure.
    http.advance(Duration::seconds(1));
    assert_eq!(login(&http, &email, PASSWORD, HOME).await.status, 200);
    for expected in [2, 4, 8] {
        let a = login(&http, &nobody, "not the password", HOME).await;
        assert_eq!(a.status, 401);
        let slowed = login(&http, &nobody, "not the password", HOME).await;
        assert_eq!(slowed.status, 429);
        assert_eq!(slowed.retry_after(), Some(expected));
        http.advance(Duration::seconds(expected as i64));
    }
}

async fn failures_from_one_address_never_slow_the_same_email_from_another(p: Ports) {
    let http = Http::new(p).await;
    let (_, email, _) = with_user(&http).await;
    for _ in 0..12 {
        login(&http, &email, "not the password", HOME).await;
    }
    let a = login(&http, &email, PASSWORD, HOME).await;
    assert_eq!(a.status, 429, "slowed at the guessing address");
    assert_eq!(
        login(&http, &email, PASSWORD, ELSEWHERE).await.status,
        200,
        "the user from elsewhere"
    );
    // The address's own counter: many emails tried from one address slow it.
    let sprayer = "192.0.2.66";
    let mut refused = None;
    for i in 0..30 {
        let target = format!("u{i}.{}@kedai.example", ulid::Ulid::new()).to_lowercase();
        let a = login(&http, &target, "not the password", sprayer).await;
        if a.status == 429 {
            refused = Some((i, a.retry_after()));
            break;
        }
        assert_eq!(a.status, 401);
    }
    assert_eq!(
        refused,
        Some((20, Some(1))),
        "twenty free failures per address"
    );
    assert_eq!(login(&http, &email, PASSWORD, ELSEWHERE).await.status, 200);
}

/// An IPv6 site's failed logins are counted by its /56, not by each /64 it holds (a tunnel's
/// /48 is 65,536 /64s): wrong passwords from different /64s of one /56 meet one
/// (email, address) counter and one address counter; another /56 is another address.
async fn failures_from_different_64s_of_one_56_accumulate_to_its_lock(p: Ports) {
    let http = Http::new(p).await;
    let (_, email, _) = with_user(&http).await;
    // 2001:db8:56:1a00::/56, one /64 of it for each attempt.
    let in_56 = |i: u16| format!("2001:db8:56:1a{i:02x}::7");
    for i in 0..5 {
        let a = login(&http, &email, "not the password", &in_56(i)).await;
        assert_eq!((a.status, a.code()), (401, "invalid_credentials"), "{i}");
    }
    let a = login(&http, &email, PASSWORD, &in_56(0xff)).await;
    assert_eq!(
        (a.status, a.code()),
        (429, "rate_limited"),
        "the sixth /64 of the /56 is slowed as the same address"
    );
    assert_eq!(
        login(&http, &email, PASSWORD, "2001:db8:56:1b00::7")
            .await
            .status,
        200,
        "the next /56 is another address"
    );
    // The address's own counter, over many emails, from the /64s of another /56.
    let sprayer = |i: u16| format!("2001:db8:57:ab{i:02x}:1::9");
    let mut refused = None;
    for i in 0..30 {
        let target = format!("u{i}.{}@kedai.example", ulid::Ulid::new()).to_lowercase();
        let a = login(&http, &target, "not the password", &sprayer(i)).await;
        if a.status == 429 {
            refused = Some(i);
            break;
        }
        assert_eq!(a.status, 401, "{i}");
    }
    assert_eq!(refused, Some(20), "twenty free failures per /56");
}

async fn a_burst_of_parallel_guesses_gets_no_more_checks_than_guesses_one_by_one(p: Ports) {
    let http = Http::new(p).await;
    let (_, email, _) = with_user(&http).await;
    // Sixteen wrong passwords at once, before any of them has failed: the five free
    // attempts and one past them are checked, the rest are refused unchecked.
    let guesses = (0..16).map(|_| login(&http, &email, "not the password", HOME));
    let answers = futures::future::join_all(guesses).await;
    let checked = answers.iter().filter(|a| a.status == 401).count();
    let refused = answers
        .iter()
        .filter(|a| a.status == 429 && a.code() == "rate_limited")
        .count();
    assert_eq!((checked, refused), (6, 10));
    // Six failures: slowed as six failures one by one would be.
    let a = login(&http, &email, PASSWORD, HOME).await;
    assert_eq!((a.status, a.retry_after()), (429, Some(2)));
    http.advance(Duration::seconds(2));
    assert_eq!(login(&http, &email, PASSWORD, HOME).await.status, 200);
}

async fn an_admin_unlocks_a_user_and_another_tenants_user_is_not_found(p: Ports) {
    let http = Http::new(p).await;
    let (key, email, id) = with_user(&http).await;
    let (other_key, _, other_id) = with_user(&http).await;
    for _ in 0..8 {
        login(&http, &email, "not the password", HOME).await;
    }
    assert_eq!(login(&http, &email, PASSWORD, HOME).await.status, 429);
    let path = format!("/v1/users/{id}/unlock");
    let a = http.call("POST", &path, Some(&other_key), None, HOME).await;
    assert_eq!((a.status, a.code()), (404, "not_found"));
    let a = http
        .call(
            "POST",
            &format!("/v1/users/{other_id}/unlock"),
            Some(&key),
            None,
            HOME,
        )
        .await;
    assert_eq!((a.status, a.code()), (404, "not_found"));
    assert_eq!(
        login(&http, &email, PASSWORD, HOME).await.status,
        429,
        "a refused unlock cleared nothing"
    );
    let a = http.call("POST", &path, Some(&key), None, HOME).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["id"], id.as_str());
    assert_eq!(login(&http, &email, PASSWORD, HOME).await.status, 200);
    // Audited in the tenant's trail.
    let a = http
        .call(
            "GET",
            "/v1/audit?action=POST%20/v1/users/%7Bid%7D/unlock",
            Some(&key),
            None,
            HOME,
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let events = a.body["events"].as_array().unwrap();
    assert_eq!(
        events.len(),
        2,
        "the refused one and the unlock: {events:?}"
    );
    assert_eq!(events[0]["outcome"], "success");
    assert_eq!(events[0]["details"]["user_id"], id.as_str());
    assert_eq!(events[1]["details"]["status"], 404);
}

/// A login needs no credentials: a flood of them from a locked-out address must not become
/// a flood of writes to the tenant's audit chain (or reads to find whose email it named).
/// The failures that locked the address out are audited, each; the refusals after are not.
async fn a_login_flood_from_a_locked_out_address_writes_nothing(p: Ports) {
    let http = Http::new(p).await;
    let (_, email, _) = with_user(&http).await;
    for i in 0..5 {
        let a = login(&http, &email, "not the password", HOME).await;
        assert_eq!(a.status, 401, "{i}");
    }
    let a = login(&http, &email, "not the password", HOME).await;
    assert_eq!((a.status, a.code()), (429, "rate_limited"));
    let before = http.p.retention.stored_items().await.unwrap().len();
    for i in 0..20 {
        let a = login(&http, &email, "not the password", HOME).await;
        assert_eq!(a.status, 429, "{i}");
    }
    assert_eq!(
        http.p.retention.stored_items().await.unwrap().len(),
        before,
        "refused logins wrote nothing"
    );
    // The lock-out's own 429s do not spend the address's allowance of refused credentials,
    // which other clients behind it share: a bad key from it is still a 401 (audited).
    for i in 0..15 {
        let a = login(&http, &email, "not the password", HOME).await;
        assert_eq!(a.status, 429, "{i}");
    }
    let a = http
        .call("GET", "/v1/account", Some("kirim_not_a_key"), None, HOME)
        .await;
    assert_eq!((a.status, a.code()), (401, "unauthenticated"));
}

/// An address whose failed-login counter answered locked is refused by the instance that
/// saw it until the lock passes, without asking the table again (each ask is conditional
/// writes refused, billed: a flood from a locked address could run a provisioned table's
/// write capacity down). Here the table's counter is cleared behind the instance's back:
/// the instance still refuses until the wait it named, then asks the table again.
async fn a_locked_out_address_is_refused_without_asking_the_table_until_its_lock_passes(p: Ports) {
    use kirim::ports::LoginCounter;
    let http = Http::new(p).await;
    let from = "198.51.100.77";
    let mut wait = None;
    for i in 0..40 {
        let a = login(
            &http,
            &format!("nobody{i}@kedai.example"),
            "x-password-x",
            from,
        )
        .await;
        if a.status == 429 {
            wait = a.retry_after();
            break;
        }
        assert_eq!(a.status, 401, "{i}");
    }
    let wait = wait.expect("the address locked out");
    http.p
        .users
        .clear_login_counter(&LoginCounter::Address(from.to_owned()))
        .await
        .unwrap();
    let a = login(&http, "someone@kedai.example", "x-password-x", from).await;
    assert_eq!((a.status, a.code()), (429, "rate_limited"), "refused here");
    assert!(a.retry_after().is_some());
    http.p
        .clock
        .advance(chrono::Duration::seconds(wait as i64 + 1));
    let a = login(&http, "someone@kedai.example", "x-password-x", from).await;
    assert_eq!(a.status, 401, "past the lock, the table is asked again");
}

/// Malformed login bodies (not JSON, unknown fields) need no credentials and never reach
/// the login's own limits: they count against their address as refused credentials do,
/// and once its allowance is spent they are answered as they are (400) without an audit
/// write each. A body declared too large is answered 413 before anything is read or
/// written, from the first (README "Bodies over 256 KiB").
async fn a_flood_of_malformed_login_bodies_from_one_address_stops_writing(p: Ports) {
    let http = Http::new(p).await;
    let before = http.p.retention.stored_items().await.unwrap().len();
    for _ in 0..10 {
        let req = Request::builder()
            .method("POST")
            .uri("/v1/auth/login")
            .header("content-type", "application/json")
            .body(Body::from(vec![b'a'; 300 * 1024]))
            .unwrap();
        assert_eq!(http.send(req, HOME).await.status, 413);
    }
    assert_eq!(
        http.p.retention.stored_items().await.unwrap().len(),
        before,
        "a body declared too large wrote nothing"
    );
    let bad = |n: usize| {
        let http = &http;
        async move {
            let body = match n % 2 {
                0 => Body::from("{not json"),
                _ => Body::from(json!({"email": "x", "password": "y", "extra": 1}).to_string()),
            };
            let req = Request::builder()
                .method("POST")
                .uri("/v1/auth/login")
                .header("content-type", "application/json")
                .body(body)
                .unwrap();
            http.send(req, HOME).await
        }
    };
    // The address's allowance of refused credentials (30 by default), each audited.
    for n in 0..30 {
        let a = bad(n).await;
        assert!(a.status == 400 || a.status == 413, "{n}: {}", a.status);
    }
    let before = http.p.retention.stored_items().await.unwrap().len();
    for n in 0..30 {
        let a = bad(n).await;
        assert!(a.status == 400 || a.status == 413, "{n}: {}", a.status);
    }
    assert_eq!(
        http.p.retention.stored_items().await.unwrap().len(),
        before,
        "past the allowance, malformed logins wrote nothing"
    );
}

/// A webhook signed with another secret than the app's is most likely Meta's after the
/// secret was set or rotated wrongly: it is logged with its sender for the
/// `WebhookBadSignature` alarm (infra/deploy.md). An unsigned or malformed one is anyone's
/// and is not.
/// The line is the HTTP layer's, before any store: one backend shows it.
#[tokio::test]
async fn a_webhook_signed_with_another_secret_is_logged_for_the_alarm_and_an_unsigned_one_is_not() {
    kirim_tests::capture_logs();
    let http = Http::new(memory()).await;
    let forger = "192.0.2.141";
    let stranger = "192.0.2.142";
    let prober = "192.0.2.143";
    let body = json!({"object": "whatsapp_business_account", "entry": []});
    let forged = signed(body.to_string().as_bytes(), "not-the-app-secret");
    assert_eq!(
        webhook(&http, &body, Some(&forged), forger).await.status,
        401
    );
    assert_eq!(webhook(&http, &body, None, stranger).await.status, 401);
    assert_eq!(
        webhook(&http, &body, Some("sha256=00"), prober)
            .await
            .status,
        401
    );
    let logs = kirim_tests::captured_logs();
    let warned = |peer: &str| {
        logs.lines().any(|l| {
            l.contains("webhook signature does not match the Meta app secret")
                && l.contains(peer)
                && l.contains("WARN")
        })
    };
    assert!(warned(forger), "{logs}");
    assert!(!warned(stranger), "{logs}");
    assert!(!warned(prober), "a malformed signature is anyone's: {logs}");
    assert!(!logs.contains("not-the-app-secret"));
    assert!(
        !logs.contains(&forged),
        "the signature itself is not logged"
    );
}

contract!(
    a_flood_of_malformed_login_bodies_from_one_address_stops_writing,
    a_key_over_its_limit_gets_429_with_retry_after_and_another_tenant_is_unaffected,
    a_login_flood_from_a_locked_out_address_writes_nothing,
    a_locked_out_address_is_refused_without_asking_the_table_until_its_lock_passes,
    the_operators_limits_route_changes_a_tenants_limit_and_refuses_bad_limits,
    a_bad_signature_flood_from_one_address_gets_429_while_signed_notifications_still_get_200,
    an_unknown_email_answers_exactly_like_a_wrong_password_and_is_slowed_alike,
    failures_from_one_address_never_slow_the_same_email_from_another,
    failures_from_different_64s_of_one_56_accumulate_to_its_lock,
    a_burst_of_parallel_guesses_gets_no_more_checks_than_guesses_one_by_one,
    an_admin_unlocks_a_user_and_another_tenants_user_is_not_found,
);

/// Local mode over real TCP: the client address is the TCP peer, so a client bound to
/// another loopback address (127.0.0.2) is another source.
async fn in_local_mode_a_flooding_peer_is_refused_while_another_peers_signed_webhook_passes(
    b: kirim::config::Backend,
) {
    let app = kirim_tests::spawn_app(b).await;
    let flooder = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().ok())
        .build()
        .unwrap();
    let body = json!({"object": "whatsapp_business_account", "entry": []}).to_string();
    let mut refused = false;
    // Ten bad signatures in a burst, then 429: at most a few more if the clock moved on.
    for i in 0..30 {
        let res = flooder
            .post(app.url("/webhooks/meta"))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", "sha256=00")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        match res.status().as_u16() {
            401 => continue,
            429 => {
                assert!(res.headers().contains_key("retry-after"), "request {i}");
                refused = true;
                break;
            }
            other => panic!("request {i}: {other}"),
        }
    }
    assert!(refused, "the flooding peer is refused");
    let signed = app
        .post_webhook(&json!({"object": "whatsapp_business_account", "entry": []}))
        .await;
    assert_eq!(signed.status(), 200, "127.0.0.1 is another source");
}

/// Bodies over the webhook's 3 MiB are no signed notification of Meta's: each is counted
/// as a bad signature, so a flood of them is answered `429` (before its bodies are read)
/// like any other unsigned flood, while another address's signed webhook passes.
async fn a_peer_flooding_oversized_webhook_bodies_is_refused_like_bad_signatures(
    b: kirim::config::Backend,
) {
    let app = kirim_tests::spawn_app(b).await;
    let flooder = reqwest::Client::builder()
        .local_address("127.0.0.3".parse::<std::net::IpAddr>().ok())
        .build()
        .unwrap();
    let body = vec![b' '; 3 * 1024 * 1024 + 1];
    let mut answers = Vec::new();
    for _ in 0..30 {
        let res = flooder
            .post(app.url("/webhooks/meta"))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", "sha256=00")
            .body(body.clone())
            .send()
            .await;
        // The server may answer before it has read the whole body and close the
        // connection under the client's feet: that is an answer too, but no status.
        let Ok(res) = res else { continue };
        let status = res.status().as_u16();
        answers.push(status);
        if status == 429 {
            assert!(res.headers().contains_key("retry-after"));
            break;
        }
        assert_eq!(status, 413, "{answers:?}");
    }
    assert_eq!(answers.last(), Some(&429), "{answers:?}");
    assert!(answers.len() <= 12, "ten in a burst: {answers:?}");
    let signed = app
        .post_webhook(&json!({"object": "whatsapp_business_account", "entry": []}))
        .await;
    assert_eq!(signed.status(), 200, "127.0.0.1 is another source");
}

/// A client on loopback that sends forged webhooks (a security test) spends loopback's
/// allowance of bad signatures, which local mode's sandbox shares: the sandbox's signed
/// statuses still go in, and a message sent just after still ends `read`.
async fn forged_webhooks_from_loopback_never_hold_back_the_sandboxs_statuses(
    b: kirim::config::Backend,
) {
    let app = kirim_tests::spawn_app(b).await;
    let t = app.onboard(5).await;
    let body = json!({"object": "whatsapp_business_account", "entry": []}).to_string();
    let forged = signed(body.as_bytes(), "not-the-app-secret");
    let mut limited = false;
    for _ in 0..15 {
        let res = app
            .http
            .post(app.url("/webhooks/meta"))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", &forged)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        limited |= res.status().as_u16() == 429;
    }
    assert!(limited, "loopback's allowance is spent");
    let id = app.send_ok(&t.key, "+60123450977").await;
    let m = app.wait_status(&t.key, &id, "read").await;
    assert_eq!(m["status"], "read", "{m}");
}

on_both_backends!(
    forged_webhooks_from_loopback_never_hold_back_the_sandboxs_statuses,
    in_local_mode_a_flooding_peer_is_refused_while_another_peers_signed_webhook_passes,
    a_peer_flooding_oversized_webhook_bodies_is_refused_like_bad_signatures,
);
