//! Meta's Graph API over reqwest (rustls). The one place that knows Meta's wire shapes
//! for a send (the request body itself comes from `Content::to_meta_request`), for a
//! page of templates (read by `domain::template::parse_template_page`), for a business
//! number's description (read by `domain::number::parse_phone_number`) and for the app's
//! subscription to a WABA's webhooks.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use crate::domain::number::{parse_phone_number, MetaPhoneNumber};
use crate::domain::template::{parse_template_page, MetaTemplatePage};
use crate::ports::{MetaAccepted, MetaClient, MetaSendError};
use crate::secret::Secret;

pub struct MetaGraphClient {
    http: reqwest::Client,
    base_url: String,
    version: String,
}

impl MetaGraphClient {
    pub fn new(base_url: &str, version: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(connect_timeout(timeout))
            // Never followed: a 3xx is an answer that took nothing (a redirected POST would
            // be resent as a bodiless GET, without the token on another host, and whatever
            // answered it read as Meta's answer to the send).
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(90))
            .build()?;
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            version: version.to_owned(),
        })
    }
}

/// How long a connection to Meta may take: under the whole request's `timeout`, so that a
/// connection that never opens fails as a connection (it never left: retried, then
/// refunded) before the request's own timeout, which is ambiguous, can fire: at most 5 s,
/// and at most half the request's time.
pub fn connect_timeout(timeout: Duration) -> Duration {
    Duration::from_secs(5).min(timeout / 2)
}

#[derive(Deserialize)]
struct Accepted {
    messages: Vec<AcceptedMessage>,
}

#[derive(Deserialize)]
struct AcceptedMessage {
    id: String,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: MetaErrorBody,
}

#[derive(Deserialize)]
struct MetaErrorBody {
    code: i64,
    #[serde(default)]
    message: String,
    #[serde(default)]
    error_user_title: Option<String>,
    /// A value that is not a boolean reads as unsaid.
    #[serde(default, deserialize_with = "lenient_bool")]
    is_transient: Option<bool>,
}

fn lenient_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Bool(b) => Some(b),
        _ => None,
    })
}

/// The template fields a sync reads (Meta answers only `id`, `name`... without them).
const TEMPLATE_FIELDS: &str = "id,name,language,category,status,components,quality_score";

/// The fields of a number the daily sync asks for. `throughput` and `messaging_limit_tier`
/// are fields of Meta's phone number node that the OpenAPI description of
/// `GET /{phone_number_id}` does not list (it lists `id`, `display_phone_number`,
/// `verified_name`, `quality_rating` and, on request, `name_status` and
/// `code_verification_status`, and shows a 100 "Invalid field requested" for others):
/// should Meta refuse them so, the number is read again with [`NUMBER_FIELDS_DOCUMENTED`].
pub const NUMBER_FIELDS: &str =
    "id,display_phone_number,verified_name,quality_rating,throughput,messaging_limit_tier,name_status";
/// The fields the OpenAPI description of `GET /{phone_number_id}` lists.
pub const NUMBER_FIELDS_DOCUMENTED: &str =
    "id,display_phone_number,verified_name,quality_rating,name_status";

/// The most of a number's description read (Meta's is a few hundred bytes).
pub const MAX_NUMBER_ANSWER: usize = 64 * 1024;

/// A request that could not be made with the tenant's token (it holds characters a header
/// cannot carry): answered as Meta answers an invalid token (190), so the tenant's sends
/// stop and are refunded until the token is replaced.
fn unusable_token() -> MetaSendError {
    MetaSendError::Api {
        http_status: 401,
        code: 190,
        title: "the access token cannot be sent (it holds characters a header cannot carry)".into(),
        is_transient: None,
    }
}

/// The tenant's token as an `Authorization` header (marked sensitive); one a header cannot
/// carry (a line break from a pasted file) is [`unusable_token`]: it never left, and never
/// will with this token, so as Meta's "token invalid" (190), which stops the tenant's sends
/// and refunds, never an ambiguous timeout that would charge for a message never sent.
fn authorization(token: &Secret) -> Result<reqwest::header::HeaderValue, MetaSendError> {
    let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .map_err(|_| unusable_token())?;
    v.set_sensitive(true);
    Ok(v)
}

/// A request that failed before an answer: one that could not even be built (with the
/// token checked first, [`authorization`], only the platform's own URL is left to blame:
/// it never left, retried, and nothing about the tenant), a connection that failed
/// (never left, retried), or anything else (it may have left: ambiguous, never blindly
/// retried).
fn unanswered(e: reqwest::Error) -> MetaSendError {
    if e.is_builder() {
        tracing::error!("a request to Meta could not be built: check KIRIM_META_BASE_URL");
        MetaSendError::Connection("the request could not be built".into())
    } else if e.is_connect() {
        MetaSendError::Connection("connect failed".into())
    } else {
        MetaSendError::Timeout
    }
}

/// The most of a send's answer read (Meta's is a few hundred bytes).
pub const MAX_SEND_ANSWER: usize = 64 * 1024;
/// The most of a template page read (100 templates with their components).
pub const MAX_TEMPLATE_PAGE: usize = 8 * 1024 * 1024;

/// `request` sent with the tenant's token: the answer's status and its body (up to `cap`).
async fn answered(
    request: reqwest::RequestBuilder,
    token: &Secret,
    cap: usize,
) -> Result<(u16, Vec<u8>), MetaSendError> {
    let res = request
        .header(reqwest::header::AUTHORIZATION, authorization(token)?)
        .send()
        .await
        .map_err(unanswered)?;
    let status = res.status().as_u16();
    Ok((status, body_capped(res, cap).await?))
}

/// The answer's body, read up to `cap` bytes: a longer one is not Meta's answer
/// (`Protocol`), and is not read into memory whole. A body that stops arriving is a
/// timeout (the client's) after a 2xx, an unreadable answer (`Protocol`) after anything else.
async fn body_capped(mut res: reqwest::Response, cap: usize) -> Result<Vec<u8>, MetaSendError> {
    let status = res.status().as_u16();
    if res.content_length().is_some_and(|n| n > cap as u64) {
        return Err(MetaSendError::Protocol(status));
    }
    let mut body = Vec::new();
    // A 2xx whose body stops is ambiguous (Meta may have accepted: never blindly retried);
    // any other status already says Meta did not take it: as an answer it could not read.
    let unread = |_| {
        if (200..300).contains(&status) {
            MetaSendError::Timeout
        } else {
            MetaSendError::Protocol(status)
        }
    };
    while let Some(chunk) = res.chunk().await.map_err(unread)? {
        if body.len() + chunk.len() > cap {
            return Err(MetaSendError::Protocol(status));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// What a refused access token's error says, in place of Meta's own text: the Graph API
/// echoes a malformed token in its message ("Malformed access token EAAG…"), and the title
/// is stored on the message, shown by the API and the export, sent in status callbacks,
/// and made the tenant's suspension reason (logged and audited).
pub const TOKEN_REFUSED_TITLE: &str =
    "meta refused the access token (expired, revoked or malformed)";

/// Meta's error answer to a request made with `token`, as a send error. Its text is kept
/// without the token (a refused token's codes get a fixed title; any other that quotes it
/// has it redacted) and without any number ([`crate::domain::error_text::scrub`]: the
/// Graph API echoes request data, the recipient's digits among them), cut to
/// [`crate::domain::error_text::MAX_META_TEXT`] characters: the dispatcher, which knows the message's
/// content, takes that out too and cuts it to
/// [`crate::domain::error_text::MAX_ERROR_TITLE`].
fn api_error(status: u16, bytes: &[u8], token: &Secret) -> MetaSendError {
    api_error_quoting(status, bytes, token, &[])
}

/// [`api_error`] for a request that carried `sent` (the values of a send's body,
/// [`crate::domain::error_text::request_values`]): those are taken out of Meta's text
/// whole, before the 7-digit rule could cut one in two and leave the rest of it.
fn api_error_quoting(status: u16, bytes: &[u8], token: &Secret, sent: &[&str]) -> MetaSendError {
    use crate::domain::error_text;
    match serde_json::from_slice::<ErrorEnvelope>(bytes) {
        Ok(env) => {
            let code = env.error.code;
            let title = if matches!(code, 0 | 102 | 190) {
                TOKEN_REFUSED_TITLE.to_owned()
            } else {
                let text = env.error.error_user_title.unwrap_or(env.error.message);
                let mut quoted: Vec<&str> = sent.to_vec();
                match token.expose().trim() {
                    t if t.len() >= 8 => quoted.push(t),
                    _ => {}
                }
                error_text::scrub(&text, &quoted, error_text::MAX_META_TEXT)
            };
            MetaSendError::Api {
                http_status: status,
                code,
                title,
                is_transient: env.error.is_transient,
            }
        }
        Err(_) => MetaSendError::Protocol(status),
    }
}

#[async_trait]
impl MetaClient for MetaGraphClient {
    async fn send_message(
        &self,
        phone_number_id: &str,
        token: &Secret,
        body: &serde_json::Value,
    ) -> Result<MetaAccepted, MetaSendError> {
        let url = format!(
            "{}/{}/{}/messages",
            self.base_url, self.version, phone_number_id
        );
        let (status, bytes) = self.post_json(url, token, body).await?;
        if (200..300).contains(&status) {
            let ok: Accepted =
                serde_json::from_slice(&bytes).map_err(|_| MetaSendError::Protocol(status))?;
            let wamid = ok
                .messages
                .into_iter()
                .next()
                .map(|m| m.id)
                .ok_or(MetaSendError::Protocol(status))?;
            return Ok(MetaAccepted { wamid });
        }
        let sent = crate::domain::error_text::request_values(body);
        Err(api_error_quoting(status, &bytes, token, &sent))
    }

    async fn list_templates(
        &self,
        waba_id: &str,
        token: &Secret,
        after: Option<&str>,
    ) -> Result<MetaTemplatePage, MetaSendError> {
        self.template_page(waba_id, token, None, after).await
    }

    async fn list_templates_named(
        &self,
        waba_id: &str,
        token: &Secret,
        name: &str,
        after: Option<&str>,
    ) -> Result<MetaTemplatePage, MetaSendError> {
        self.template_page(waba_id, token, Some(name), after).await
    }

    async fn subscribe_app(&self, waba_id: &str, token: &Secret) -> Result<(), MetaSendError> {
        let url = format!(
            "{}/{}/{}/subscribed_apps",
            self.base_url, self.version, waba_id
        );
        let (status, bytes) = self.post_json(url, token, &serde_json::json!({})).await?;
        if (200..300).contains(&status) {
            let body: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|_| MetaSendError::Protocol(status))?;
            // Meta's `{"success": true}`; anything else did not say it subscribed.
            return match body.get("success") {
                Some(serde_json::Value::Bool(true)) => Ok(()),
                _ => Err(MetaSendError::Protocol(status)),
            };
        }
        Err(api_error(status, &bytes, token))
    }

    async fn get_phone_number(
        &self,
        phone_number_id: &str,
        token: &Secret,
    ) -> Result<MetaPhoneNumber, MetaSendError> {
        match self
            .number_with(phone_number_id, token, NUMBER_FIELDS)
            .await
        {
            // Meta's "invalid parameter" to the undocumented fields: the documented ones.
            Err(MetaSendError::Api { code: 100, .. }) => {
                self.number_with(phone_number_id, token, NUMBER_FIELDS_DOCUMENTED)
                    .await
            }
            other => other,
        }
    }
}

impl MetaGraphClient {
    /// `GET /{version}/{phone_number_id}?fields=`: Meta's description of the number.
    async fn number_with(
        &self,
        phone_number_id: &str,
        token: &Secret,
        fields: &str,
    ) -> Result<MetaPhoneNumber, MetaSendError> {
        let url = format!("{}/{}/{}", self.base_url, self.version, phone_number_id);
        self.get_json(
            url,
            token,
            &[("fields", fields)],
            MAX_NUMBER_ANSWER,
            parse_phone_number,
        )
        .await
    }

    /// A `GET` of `url` with `query` and the tenant's token: a 2xx's body (up to `cap`
    /// bytes) read by `parse`, which a body it cannot read makes Meta's protocol error;
    /// any other answer is Meta's error.
    async fn get_json<T>(
        &self,
        url: String,
        token: &Secret,
        query: &[(&str, &str)],
        cap: usize,
        parse: fn(&serde_json::Value) -> Option<T>,
    ) -> Result<T, MetaSendError> {
        let (status, bytes) = answered(self.http.get(url).query(query), token, cap).await?;
        if (200..300).contains(&status) {
            let body: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|_| MetaSendError::Protocol(status))?;
            return parse(&body).ok_or(MetaSendError::Protocol(status));
        }
        Err(api_error(status, &bytes, token))
    }

    /// A `POST` of `body` with the tenant's token: the answer's status and its body (up
    /// to [`MAX_SEND_ANSWER`]).
    async fn post_json(
        &self,
        url: String,
        token: &Secret,
        body: &serde_json::Value,
    ) -> Result<(u16, Vec<u8>), MetaSendError> {
        answered(self.http.post(url).json(body), token, MAX_SEND_ANSWER).await
    }

    /// One page of `GET /{version}/{waba_id}/message_templates`, with Meta's `name`
    /// filter when given.
    async fn template_page(
        &self,
        waba_id: &str,
        token: &Secret,
        name: Option<&str>,
        after: Option<&str>,
    ) -> Result<MetaTemplatePage, MetaSendError> {
        let url = format!(
            "{}/{}/{}/message_templates",
            self.base_url, self.version, waba_id
        );
        let mut query = vec![("fields", TEMPLATE_FIELDS), ("limit", "100")];
        if let Some(n) = name {
            query.push(("name", n));
        }
        if let Some(a) = after {
            query.push(("after", a));
        }
        self.get_json(url, token, &query, MAX_TEMPLATE_PAGE, parse_template_page)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback server answering every request with `status` and `body`.
    async fn answering(status: u16, body: Vec<u8>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("its address");
        let app = axum::Router::new().fallback(move || {
            let body = body.clone();
            async move {
                (
                    axum::http::StatusCode::from_u16(status).expect("a status"),
                    body,
                )
            }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn a_parameter_meta_quotes_back_is_taken_out_whole_though_it_holds_a_long_number() {
        let token = Secret::new("EAAG-test-token");
        let answer = serde_json::json!({"error": {
            "code": 131008,
            "message": "Parameter value is not valid: Order 20250101 for Alice Tan (to 60123450101)",
        }});
        let base = answering(400, serde_json::to_vec(&answer).expect("json")).await;
        let meta = MetaGraphClient::new(&base, "v23.0", Duration::from_secs(5)).expect("a client");
        let body = serde_json::json!({
            "messaging_product": "whatsapp", "to": "60123450101", "type": "template",
            "template": {"name": "order_update", "language": {"code": "en_US"},
                "components": [{"type": "body", "parameters": [
                    {"type": "text", "text": "Order 20250101 for Alice Tan"}]}]},
        });
        let Err(MetaSendError::Api { title, code, .. }) =
            meta.send_message("123", &token, &body).await
        else {
            panic!("a refusal")
        };
        assert_eq!(code, 131008);
        assert_eq!(
            title, "Parameter value is not valid: <redacted> (to <redacted>)",
            "the whole value, not its name left beside a redacted number"
        );
    }

    #[tokio::test]
    async fn an_answer_longer_than_metas_is_not_read_whole_and_is_not_a_send() {
        let token = Secret::new("EAAG");
        let huge = vec![b'x'; MAX_SEND_ANSWER + 1];
        for status in [200, 400] {
            let base = answering(status, huge.clone()).await;
            let meta =
                MetaGraphClient::new(&base, "v23.0", Duration::from_secs(5)).expect("a client");
            let got = meta
                .send_message("123", &token, &serde_json::json!({}))
                .await;
            assert_eq!(got, Err(MetaSendError::Protocol(status)));
        }
        // Meta's own answer, well under the cap, reads as before.
        // A token a header cannot carry (a pasted line break): never sent, never ambiguous.
        let base = answering(200, b"{}".to_vec()).await;
        let meta = MetaGraphClient::new(&base, "v23.0", Duration::from_secs(5)).expect("a client");
        let got = meta
            .send_message("123", &Secret::new("EAAG\n"), &serde_json::json!({}))
            .await;
        assert!(
            matches!(got, Err(MetaSendError::Api { code: 190, .. })),
            "{got:?}"
        );
        let ok = br#"{"messaging_product":"whatsapp","messages":[{"id":"wamid.A"}]}"#.to_vec();
        let base = answering(200, ok).await;
        let meta = MetaGraphClient::new(&base, "v23.0", Duration::from_secs(5)).expect("a client");
        let got = meta
            .send_message("123", &token, &serde_json::json!({}))
            .await
            .expect("accepted");
        assert_eq!(got.wamid, "wamid.A");
    }

    /// The app's subscription to a WABA is done only when Meta says `success: true`; a 2xx
    /// that says otherwise, or Meta's error (its code kept), is not.
    #[tokio::test]
    async fn a_subscription_is_done_only_when_meta_says_success() {
        let token = Secret::new("EAAGtoken0123456789");
        let cases: [(u16, &[u8], Option<MetaSendError>); 4] = [
            (200, br#"{"success":true}"#, None),
            (
                200,
                br#"{"success":false}"#,
                Some(MetaSendError::Protocol(200)),
            ),
            (200, b"not json", Some(MetaSendError::Protocol(200))),
            (
                403,
                br#"{"error":{"message":"no permission","code":200,"fbtrace_id":"A"}}"#,
                Some(MetaSendError::Api {
                    http_status: 403,
                    code: 200,
                    title: "no permission".into(),
                    is_transient: None,
                }),
            ),
        ];
        for (status, body, want) in cases {
            let base = answering(status, body.to_vec()).await;
            let meta =
                MetaGraphClient::new(&base, "v23.0", Duration::from_secs(5)).expect("a client");
            let got = meta.subscribe_app("1000001", &token).await;
            assert_eq!(
                got.err(),
                want,
                "{status} {}",
                String::from_utf8_lossy(body)
            );
        }
    }

    /// Meta's `is_transient` is read from its error (a value not a boolean reads as
    /// unsaid), for the dispatcher to decide on a code it does not know.
    #[tokio::test]
    async fn metas_is_transient_is_read_from_its_error() {
        let token = Secret::new("EAAGtoken0123456789");
        for (given, read) in [
            (serde_json::json!(true), Some(true)),
            (serde_json::json!(false), Some(false)),
            (serde_json::json!("yes"), None),
            (serde_json::Value::Null, None),
        ] {
            let mut error =
                serde_json::json!({"message": "new", "code": 139999, "fbtrace_id": "A"});
            if !given.is_null() {
                error["is_transient"] = given.clone();
            }
            let body = serde_json::json!({ "error": error });
            let base = answering(400, body.to_string().into_bytes()).await;
            let meta =
                MetaGraphClient::new(&base, "v23.0", Duration::from_secs(5)).expect("a client");
            let got = meta
                .send_message("123", &token, &serde_json::json!({}))
                .await;
            let Err(MetaSendError::Api { is_transient, .. }) = got else {
                panic!("{given}: {got:?}");
            };
            assert_eq!(is_transient, read, "{given}");
        }
    }

    /// Meta's text about a refused token never carries the token (the Graph API echoes a
    /// malformed one), nor does any other error text that quotes it; a long text is cut.
    #[tokio::test]
    async fn metas_error_text_never_carries_the_token_and_is_cut() {
        let token = Secret::new("EAAGmalformedtoken0123456789\"");
        let answers = [
            (190, format!("Malformed access token {}", token.expose())),
            (
                100,
                format!("Invalid parameter near {} here", token.expose()),
            ),
            (131000, "x".repeat(5000)),
        ];
        for (code, message) in answers {
            let body = serde_json::json!({"error": {"message": message, "type": "OAuthException",
                "code": code, "fbtrace_id": "A"}});
            let base = answering(400, body.to_string().into_bytes()).await;
            let meta =
                MetaGraphClient::new(&base, "v23.0", Duration::from_secs(5)).expect("a client");
            for got in [
                meta.send_message("123", &token, &serde_json::json!({}))
                    .await
                    .map(|_| ()),
                meta.list_templates("1", &token, None).await.map(|_| ()),
            ] {
                let Err(MetaSendError::Api { title, code: c, .. }) = got else {
                    panic!("{code}: {got:?}");
                };
                assert_eq!(c, code);
                assert!(!title.contains("EAAGmalformed"), "{code}: {title}");
                assert!(
                    title.chars().count() <= crate::domain::error_text::MAX_META_TEXT,
                    "{code}"
                );
            }
        }
    }

    /// Meta's text quoting a number (the recipient's, as Meta's "Parameter value is not
    /// valid" does) keeps its words without the number, on any route; its code is kept.
    #[tokio::test]
    async fn metas_error_text_never_carries_a_phone_number() {
        let token = Secret::new("EAAG-token-0123456789");
        for field in ["message", "error_user_title"] {
            let body = serde_json::json!({"error": {"code": 131009, "type": "OAuthException",
                field: "Parameter value is not valid: +60 12-345 0101 (60123450101)"}});
            let base = answering(400, body.to_string().into_bytes()).await;
            let meta =
                MetaGraphClient::new(&base, "v23.0", Duration::from_secs(5)).expect("a client");
            let got = meta
                .send_message("123", &token, &serde_json::json!({}))
                .await;
            let Err(MetaSendError::Api { title, code, .. }) = got else {
                panic!("{field}: {got:?}");
            };
            assert_eq!(code, 131009);
            assert_eq!(
                title, "Parameter value is not valid: <redacted> (<redacted>)",
                "{field}"
            );
        }
    }

    /// A template read by name asks Meta for that name (its `name` filter) on the WABA's
    /// list, with the fields and page size of the whole list and the cursor it is given;
    /// the unfiltered list sends no `name`.
    #[tokio::test]
    async fn a_template_read_by_name_asks_meta_for_that_name() {
        let seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>> = Default::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("its address");
        let log = seen.clone();
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let log = log.clone();
            async move {
                if let Ok(mut l) = log.lock() {
                    l.push((
                        uri.path().to_owned(),
                        uri.query().unwrap_or_default().to_owned(),
                    ));
                }
                r#"{"data":[],"paging":{"cursors":{"before":"A","after":"B"}}}"#
            }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let meta = MetaGraphClient::new(&format!("http://{addr}"), "v23.0", Duration::from_secs(5))
            .expect("a client");
        let token = Secret::new("EAAGtoken0123456789");
        meta.list_templates_named("1000001", &token, "order_update", Some("C1"))
            .await
            .expect("a page");
        meta.list_templates("1000001", &token, None)
            .await
            .expect("a page");
        let seen = seen.lock().map(|l| l.clone()).unwrap_or_default();
        assert_eq!(seen.len(), 2, "{seen:?}");
        let (path, query) = &seen[0];
        assert_eq!(path, "/v23.0/1000001/message_templates");
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let has = |k: &str, v: &str| pairs.iter().any(|(a, b)| a == k && b == v);
        assert!(has("name", "order_update"), "{query}");
        assert!(has("after", "C1"), "{query}");
        assert!(
            has("limit", "100") && has("fields", TEMPLATE_FIELDS),
            "{query}"
        );
        assert!(!seen[1].1.contains("name="), "{:?}", seen[1]);
    }

    /// A number is read with the fields the sync needs; should Meta refuse the ones its
    /// OpenAPI description does not list (100), it is read again with those it does, and
    /// Meta's other errors are answered as they are (never a number Meta said nothing of).
    #[tokio::test]
    async fn a_number_is_read_with_its_fields_and_again_with_the_documented_ones_if_meta_refuses_them(
    ) {
        let seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>> = Default::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("its address");
        let log = seen.clone();
        let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
            let log = log.clone();
            async move {
                let query = uri.query().unwrap_or_default().to_owned();
                if let Ok(mut l) = log.lock() {
                    l.push((uri.path().to_owned(), query.clone()));
                }
                let path = uri.path().to_owned();
                if path.ends_with("/555") {
                    return (
                        axum::http::StatusCode::BAD_REQUEST,
                        r#"{"error":{"message":"Unsupported get request","code":803,"fbtrace_id":"A"}}"#,
                    );
                }
                if query.contains("throughput") {
                    return (
                        axum::http::StatusCode::BAD_REQUEST,
                        r#"{"error":{"message":"Invalid field requested","code":100,"fbtrace_id":"A"}}"#,
                    );
                }
                (
                    axum::http::StatusCode::OK,
                    r#"{"id":"123","display_phone_number":"+1 555-555-5555","quality_rating":"YELLOW"}"#,
                )
            }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let meta = MetaGraphClient::new(&format!("http://{addr}"), "v23.0", Duration::from_secs(5))
            .expect("a client");
        let token = Secret::new("EAAGtoken0123456789");
        let n = meta.get_phone_number("123", &token).await.expect("read");
        assert_eq!(
            n.quality,
            Some(crate::domain::TemplateQuality::Yellow),
            "{n:?}"
        );
        assert_eq!(n.display_phone_number.as_deref(), Some("+1 555-555-5555"));
        let got = meta.get_phone_number("555", &token).await;
        assert!(
            matches!(got, Err(MetaSendError::Api { code: 803, .. })),
            "{got:?}"
        );
        let seen = seen.lock().map(|l| l.clone()).unwrap_or_default();
        let fields = |q: &str| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .find(|(k, _)| k == "fields")
                .map(|(_, v)| v)
                .unwrap_or_default()
        };
        let asked: Vec<(String, String)> =
            seen.iter().map(|(p, q)| (p.clone(), fields(q))).collect();
        assert_eq!(
            asked,
            [
                ("/v23.0/123".to_owned(), NUMBER_FIELDS.to_owned()),
                ("/v23.0/123".to_owned(), NUMBER_FIELDS_DOCUMENTED.to_owned()),
                ("/v23.0/555".to_owned(), NUMBER_FIELDS.to_owned()),
            ]
        );
    }

    /// A connection that never opens fails as one (never left: retried, then refunded),
    /// before the request's own timeout (ambiguous: charged, never resent) could fire.
    #[test]
    fn a_connection_gives_up_before_the_request_does() {
        for secs in [1, 3, 5, 10, 30] {
            let t = Duration::from_secs(secs);
            assert!(connect_timeout(t) < t, "{secs}s");
            assert!(connect_timeout(t) <= Duration::from_secs(5));
        }
        assert!(connect_timeout(Duration::from_millis(700)) < Duration::from_millis(700));
    }

    /// A redirect is never followed: the send is not resent elsewhere (as a bodiless GET,
    /// without its token), and the 3xx is the answer: one request, refused unread.
    #[tokio::test]
    async fn a_redirect_is_an_answer_not_followed() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = hits.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("its address");
        let app = axum::Router::new().fallback(move || {
            seen.fetch_add(1, Ordering::SeqCst);
            async move {
                (
                    axum::http::StatusCode::FOUND,
                    [(axum::http::header::LOCATION, "/elsewhere")],
                    "",
                )
            }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let meta = MetaGraphClient::new(&format!("http://{addr}"), "v23.0", Duration::from_secs(5))
            .expect("a client");
        let got = meta
            .send_message("123", &Secret::new("EAAG"), &serde_json::json!({}))
            .await;
        assert_eq!(got, Err(MetaSendError::Protocol(302)));
        assert_eq!(hits.load(Ordering::SeqCst), 1, "not followed");
    }

    /// The platform's own URL a request cannot be built on (no scheme) says nothing about
    /// any tenant: a retried connection failure, never Meta's "token invalid" (190), which
    /// would suspend every tenant that sends.
    #[tokio::test]
    async fn a_base_url_no_request_can_be_built_on_is_a_connection_failure_not_metas_190() {
        let meta =
            MetaGraphClient::new("127.0.0.1:9", "v23.0", Duration::from_secs(5)).expect("a client");
        let token = Secret::new("EAAG");
        let got = meta
            .send_message("123", &token, &serde_json::json!({}))
            .await;
        assert!(matches!(got, Err(MetaSendError::Connection(_))), "{got:?}");
        let got = meta.list_templates("456", &token, None).await;
        assert!(matches!(got, Err(MetaSendError::Connection(_))), "{got:?}");
    }

    /// A server that answers `status` with a body it announces but never finishes.
    async fn answering_half(status: u16) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("its address");
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let head = format!("HTTP/1.1 {status} X\r\ncontent-length: 100\r\n\r\n{{\"err");
                let _ = conn.write_all(head.as_bytes()).await;
                // Closed with 94 bytes of the body still to come.
            }
        });
        format!("http://{addr}")
    }

    /// Meta's status line already said no: a body that stops arriving after a 4xx is an
    /// unreadable answer (retried, then failed and refunded), not the ambiguous timeout a
    /// 2xx's would be (left `sending`, charged).
    #[tokio::test]
    async fn a_refusal_whose_body_stops_is_an_unreadable_answer_and_only_a_2xxs_is_a_timeout() {
        let token = Secret::new("EAAG");
        for (status, want) in [
            (400, MetaSendError::Protocol(400)),
            (429, MetaSendError::Protocol(429)),
            (200, MetaSendError::Timeout),
        ] {
            let base = answering_half(status).await;
            let meta =
                MetaGraphClient::new(&base, "v23.0", Duration::from_secs(5)).expect("a client");
            let got = meta
                .send_message("123", &token, &serde_json::json!({}))
                .await;
            assert_eq!(got, Err(want), "{status}");
        }
    }
}
