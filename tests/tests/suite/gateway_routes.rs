//! On AWS a request reaches a function only through a route of API Gateway's HTTP API
//! (`template.yaml`'s `HttpApi` events); local mode serves every route on one router, so
//! nothing else would notice a route missing there. Every rule of the access table must
//! be routed, by the route API Gateway would choose, to a function whose router serves it.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use kirim::http::access::ROUTES;
use kirim::wiring::Function;
use serde_yaml::Value;
use tower::ServiceExt;

const TEMPLATE: &str = include_str!("../../../template.yaml");

/// One `HttpApi` event: the function's logical id, the method (`ANY` too) and path.
#[derive(Debug, Clone)]
struct GatewayRoute {
    function: String,
    method: String,
    path: String,
}

fn gateway_routes() -> Vec<GatewayRoute> {
    let doc: Value = serde_yaml::from_str(TEMPLATE).expect("template.yaml parses");
    let mut out = Vec::new();
    let resources = doc["Resources"].as_mapping().expect("Resources");
    for (id, r) in resources {
        let Some(events) = r["Properties"]["Events"].as_mapping() else {
            continue;
        };
        for (_, e) in events {
            if e["Type"].as_str() != Some("HttpApi") {
                continue;
            }
            out.push(GatewayRoute {
                function: id.as_str().unwrap_or_default().to_owned(),
                method: e["Properties"]["Method"]
                    .as_str()
                    .unwrap_or("ANY")
                    .to_uppercase(),
                path: e["Properties"]["Path"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            });
        }
    }
    out
}

/// How specifically an HTTP API route's path matches `path`, if it does: API Gateway
/// prefers the most literal segments, then a `{param}` over a greedy `{proxy+}`.
fn specificity(route: &str, path: &str) -> Option<(usize, usize)> {
    let r: Vec<&str> = route.trim_start_matches('/').split('/').collect();
    let p: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (mut literal, mut params) = (0, 0);
    for (i, seg) in r.iter().enumerate() {
        if seg.starts_with('{') && seg.ends_with("+}") {
            return (p.len() > i).then_some((literal, params));
        }
        let got = p.get(i)?;
        if seg.starts_with('{') {
            params += 1;
        } else if seg == got {
            literal += 1;
        } else {
            return None;
        }
    }
    (r.len() == p.len()).then_some((literal, params + 1))
}

/// The route API Gateway would pick for `method path`, if any.
fn chosen<'a>(routes: &'a [GatewayRoute], method: &str, path: &str) -> Option<&'a GatewayRoute> {
    routes
        .iter()
        .filter(|r| r.method == method || r.method == "ANY")
        .filter_map(|r| specificity(&r.path, path).map(|s| (s, r.method == method, r)))
        .max_by_key(|(s, exact, _)| (*s, *exact))
        .map(|(_, _, r)| r)
}

#[test]
fn the_gateway_s_route_choice_is_modelled_as_aws_documents_it() {
    let routes = vec![
        GatewayRoute {
            function: "A".into(),
            method: "ANY".into(),
            path: "/v1/{proxy+}".into(),
        },
        GatewayRoute {
            function: "B".into(),
            method: "GET".into(),
            path: "/v1/things/{id}".into(),
        },
        GatewayRoute {
            function: "C".into(),
            method: "GET".into(),
            path: "/v1/things/mine".into(),
        },
    ];
    let pick = |m: &str, p: &str| chosen(&routes, m, p).map(|r| r.function.as_str());
    assert_eq!(pick("GET", "/v1/things/mine"), Some("C"));
    assert_eq!(pick("GET", "/v1/things/x"), Some("B"));
    assert_eq!(pick("POST", "/v1/things/x"), Some("A"));
    assert_eq!(pick("GET", "/v1/things/x/pause"), Some("A"));
    assert_eq!(pick("GET", "/v1"), None);
    assert_eq!(pick("GET", "/v2/things"), None);
}

#[tokio::test]
async fn every_route_of_the_access_table_reaches_a_function_that_serves_it_on_aws() {
    let routes = gateway_routes();
    assert!(
        routes.len() > 10,
        "the template's HttpApi events: {routes:?}"
    );
    let deps = || {
        kirim::wiring::memory_deps(
            kirim_tests::test_settings(),
            Arc::new(kirim::ports::SystemClock),
        )
        .expect("memory deps")
    };
    let mut missing = Vec::new();
    for rule in ROUTES {
        // A path as a client would send it: each `{param}` a plausible value.
        let path: String = rule
            .path
            .split('/')
            .map(|s| {
                if s.starts_with('{') {
                    "01J9Z8Q4S7YF2K3M5N6P7R8T9W"
                } else {
                    s
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        // `HEAD` on a `GET` route answers as the `GET` does (README): API Gateway routes by
        // exact method, so it takes an `ANY` route or the `$default` one, admin_api's.
        // (Meta's subscription handshake is a `GET`; the webhook serves no `HEAD`.)
        if rule.method == "GET" && rule.path != "/webhooks/meta" {
            let to = chosen(&routes, "HEAD", &path)
                .map_or(Function::AdminApi.logical_id(), |r| r.function.as_str());
            if to != Function::AdminApi.logical_id() {
                missing.push(format!("HEAD {}: routed to {to}", rule.path));
            } else {
                let status = kirim::http::admin_api_router(deps())
                    .oneshot(
                        Request::builder()
                            .method(Method::HEAD)
                            .uri(&path)
                            .body(Body::empty())
                            .expect("request"),
                    )
                    .await
                    .expect("infallible")
                    .status();
                if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED {
                    missing.push(format!("HEAD {}: admin_api answers {status}", rule.path));
                }
            }
        }
        let Some(route) = chosen(&routes, rule.method, &path) else {
            missing.push(format!(
                "{} {}: no API Gateway route",
                rule.method, rule.path
            ));
            continue;
        };
        let req = || {
            Request::builder()
                .method(Method::from_bytes(rule.method.as_bytes()).expect("method"))
                .uri(&path)
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .expect("request")
        };
        let status = if route.function == Function::SendApi.logical_id() {
            kirim::http::send_api_router(deps()).oneshot(req()).await
        } else if route.function == Function::AdminApi.logical_id() {
            kirim::http::admin_api_router(deps()).oneshot(req()).await
        } else if route.function == Function::Webhook.logical_id() {
            kirim::http::webhook_router(deps()).oneshot(req()).await
        } else {
            missing.push(format!(
                "{} {}: routed to {}, which serves no API route",
                rule.method, rule.path, route.function
            ));
            continue;
        }
        .expect("infallible")
        .status();
        if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED {
            missing.push(format!(
                "{} {}: routed by {} {} to {}, whose router answers {status}",
                rule.method, rule.path, route.method, route.path, route.function
            ));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// On AWS a request no route of the API takes (an unknown path, or a method its path does
/// not have) goes to the API's `$default` route, admin_api: answered `404 not_found` or
/// `405`, in the API's error shape with its `x-request-id`, as local mode answers them,
/// not API Gateway's own bare `{"message":"Not Found"}`.
#[tokio::test]
async fn a_request_no_route_takes_reaches_admin_api_and_answers_in_the_api_s_shape() {
    let doc: Value = serde_yaml::from_str(TEMPLATE).expect("template.yaml parses");
    let events = &doc["Resources"][Function::AdminApi.logical_id()]["Properties"]["Events"];
    let default = events
        .as_mapping()
        .into_iter()
        .flatten()
        .filter(|(_, e)| e["Type"].as_str() == Some("HttpApi"))
        .filter(|(_, e)| e["Properties"]["Path"].is_null() && e["Properties"]["Method"].is_null())
        .count();
    assert_eq!(default, 1, "admin_api holds the $default route");
    let deps = kirim::wiring::memory_deps(
        kirim_tests::test_settings(),
        Arc::new(kirim::ports::SystemClock),
    )
    .expect("memory deps");
    for (method, path, status, code) in [
        ("PATCH", "/v1/account", 405, "method_not_allowed"),
        (
            "PUT",
            "/v1/messages/01J9Z8Q4S7YF2K3M5N6P7R8T9W",
            405,
            "method_not_allowed",
        ),
        ("GET", "/v1/nope", 404, "not_found"),
        ("GET", "/v1/account/", 404, "not_found"),
    ] {
        let res = kirim::http::admin_api_router(deps.clone())
            .oneshot(
                Request::builder()
                    .method(Method::from_bytes(method.as_bytes()).expect("method"))
                    .uri(path)
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible");
        assert_eq!(res.status().as_u16(), status, "{method} {path}");
        assert!(
            res.headers().contains_key("x-request-id"),
            "{method} {path}"
        );
        let body = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .expect("body");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["error"]["code"], code, "{method} {path}: {v}");
    }
}

/// The template cannot deploy a value the functions refuse at start (every function would
/// then fail its configuration check on its cold start): each numeric parameter that feeds
/// their environment takes only whole numbers in the range the functions accept (a
/// `Number` parameter would take `7.5`, and `"7.5d"` is no duration). The parameters'
/// patterns are checked here with a JSON Schema `pattern` (ECMA regex, as CloudFormation's
/// are Java's: these use only what both read alike), then through the functions' own
/// configuration reader.
#[test]
fn the_templates_numeric_parameters_allow_only_what_the_functions_accept() {
    let doc: Value = serde_yaml::from_str(TEMPLATE).expect("template.yaml parses");
    let params = &doc["Parameters"];
    let takes = |name: &str, v: &str| {
        let pattern = params[name]["AllowedPattern"].as_str().expect("a pattern");
        assert_eq!(params[name]["Type"], "String", "{name}");
        let schema = serde_json::json!({"type": "string", "pattern": pattern});
        jsonschema::validator_for(&schema)
            .expect("a schema")
            .is_valid(&serde_json::json!(v))
    };
    let starts = |var: &str, v: String| {
        let mut r = kirim::config::EnvReader::new(|k| (k == var).then(|| v.clone()));
        let _ = r.settings();
        r.finish().is_ok()
    };
    let cases = [
        ("RetentionMessagesDays", "KIRIM_RETENTION_MESSAGES", "d"),
        ("RetentionAuditDays", "KIRIM_RETENTION_AUDIT", "d"),
        ("RetentionBillingDays", "KIRIM_RETENTION_BILLING", "d"),
        ("DispatchMaxAttempts", "KIRIM_DISPATCH_MAX_ATTEMPTS", ""),
    ];
    for (param, var, unit) in cases {
        let default = params[param]["Default"].as_str().expect("a default");
        assert!(takes(param, default), "{param}'s default");
        for v in [
            "0", "6", "7", "9", "10", "13", "14", "730", "2557", "99999", "7.5", "8.0", "-1",
            "1e3", " 7", "",
        ] {
            if takes(param, v) {
                assert!(
                    starts(var, format!("{v}{unit}")),
                    "{param}={v} deploys functions that refuse {var}={v}{unit}"
                );
            }
        }
        assert!(!takes(param, "7.5") && !takes(param, "8.0"), "{param}");
    }
    assert!(!takes("RetentionMessagesDays", "13") && takes("RetentionMessagesDays", "14"));
    assert!(takes("DispatchMaxAttempts", "9") && !takes("DispatchMaxAttempts", "10"));
}

/// The retention function runs what each of its schedules asks for: the daily run from
/// EventBridge's own scheduled event (no input), the owed-callback drain every minute from
/// its schedule's input; the same code reads both (`queue_handlers::scheduled_task`).
#[test]
fn the_retention_functions_schedules_run_the_daily_sweep_and_the_minutes_callback_drain() {
    use kirim::queue_handlers::{scheduled_task, ScheduledTask};
    let doc: Value = serde_yaml::from_str(TEMPLATE).expect("template.yaml parses");
    let events = &doc["Resources"]["RetentionFunction"]["Properties"]["Events"];
    let daily = &events["Daily"]["Properties"];
    assert_eq!(daily["Schedule"], "rate(1 day)");
    assert!(daily.get("Input").is_none(), "{daily:?}");
    // What EventBridge delivers for a schedule without an input.
    let scheduled_event = serde_json::json!({
        "version": "0", "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
        "detail-type": "Scheduled Event", "source": "aws.events",
        "account": "123456789012", "time": "2026-12-03T00:00:00Z", "region": "ap-southeast-1",
        "resources": ["arn:aws:events:ap-southeast-1:123456789012:rule/daily"], "detail": {}
    });
    assert_eq!(scheduled_task(&scheduled_event), ScheduledTask::Retention);
    let owed = &events["OwedCallbacks"]["Properties"];
    assert_eq!(owed["Schedule"], "rate(1 minute)");
    let input: serde_json::Value =
        serde_json::from_str(owed["Input"].as_str().expect("an input")).expect("JSON input");
    assert_eq!(scheduled_task(&input), ScheduledTask::OwedCallbacks);
}
