//! The console's pages and form actions. Each handler is thin: it reads the form, makes
//! the API request whose access the action needs, and renders the answer.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use chrono::{Duration, NaiveDate, Utc};
use maud::{html, Markup};
use serde_json::{json, Value};

use super::api::{segment, Answer, Who};
use super::security::{
    cookie, csrf_key, csrf_ok, csrf_token, open_enrolment, open_pending, seal_enrolment,
    seal_pending, set_cookie, LOGIN_COOKIE, PENDING_COOKIE, PENDING_SECS, SESSION_COOKIE,
};
use super::views::{
    bare, csrf, error_page, frame, page, qr_svg, status_chart, Chrome, ErrorWords, Notice, STATUSES,
};
use super::{may, ConsoleState};
use crate::domain::Role;
use crate::http::extract::ClientIp;
use crate::secret::Secret;
use crate::service::auth::{authenticate, authenticate_console_session, Caller};
use crate::service::errors::ServiceError;

type S = State<ConsoleState>;
type Q = Query<HashMap<String, String>>;

pub(super) fn routes() -> Router<ConsoleState> {
    Router::new()
        .route("/console", get(dashboard))
        .route("/console/", get(dashboard))
        .route("/console/assets/console.css", get(css))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/2fa", get(two_factor))
        .route("/console/2fa/enroll", post(enroll))
        .route("/console/2fa/confirm", post(confirm))
        .route("/console/password", post(change_password))
        .route("/console/messages", get(messages).post(send_message))
        .route("/console/messages/{id}", get(message))
        .route("/console/opt-outs", get(opt_outs).post(add_opt_out))
        .route("/console/opt-outs/remove", post(remove_opt_out))
        .route("/console/api-keys", get(api_keys).post(create_key))
        .route("/console/api-keys/{id}/rotate", post(rotate_key))
        .route("/console/api-keys/{id}/revoke", post(revoke_key))
        .route("/console/users", get(users).post(add_user))
        .route("/console/users/{id}/remove", post(remove_user))
        .route("/console/users/{id}/unlock", post(unlock_user))
        .route("/console/users/{id}/reset-2fa", post(reset_two_factor))
        .route("/console/users/{id}/role", post(change_role))
        .route("/console/audit", get(audit))
        .route("/console/settings", get(settings))
        .route("/console/settings/ip-allowlist", post(put_allowlist))
        .route("/console/settings/status-callback", post(put_callback))
        .route("/console/settings/2fa", post(put_two_factor))
        // No such page, whatever the method: the console's own 404 page (a known page with
        // another method is a 405, as axum answers it).
        .route("/console/{*rest}", any(not_found))
}

// ------------------------------------------------------------------ plumbing

pub(super) fn redirect(to: &str) -> Response {
    let mut res = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

/// Where a request whose session has ended goes: the sign-in page, with a fixed notice
/// (`?ended=1`, [`ENDED`]) that the session ended and that a form just sent was not done.
/// Never the form's content, nor a page to return to (no open redirect).
pub(super) const SIGN_IN_AGAIN: &str = "/console/login?ended=1";

/// What the sign-in page says after [`SIGN_IN_AGAIN`].
const ENDED: &str = "Your session has ended (after 30 minutes without use, a sign-out, or a \
     change to your account). If you had just sent a form, it was not done: sign in, then send \
     it again.";

pub(super) fn unavailable() -> Response {
    error_page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "The console is not available right now. Try again later.",
    )
}

/// The signed-in user of a console request (from the session cookie).
pub(super) struct Ctx {
    pub(super) who: Who,
    pub(super) token: String,
    pub(super) role: Role,
    /// The signed-in user's email, named at the top of each page.
    pub(super) email: String,
    /// The signed-in user's id and tenant.
    pub(super) user_id: String,
    pub(super) tenant_id: crate::domain::TenantId,
    pub(super) csrf: String,
    /// The tenant requires 2FA and the user has not set it up: the 2FA page and sign-out
    /// only.
    pub(super) enrollment_only: bool,
}

impl Ctx {
    pub(super) fn chrome<'a>(&'a self, current: &'a str) -> Chrome<'a> {
        Chrome {
            role: self.role,
            email: &self.email,
            csrf: &self.csrf,
            current,
        }
    }
    pub(super) fn may(&self, method: &str, path: &str) -> bool {
        may(self.role, method, path)
    }
}

pub(super) fn client_ip(parts: &Parts) -> Option<std::net::IpAddr> {
    parts.extensions.get::<ClientIp>().and_then(|c| c.0)
}

impl FromRequestParts<ConsoleState> for Ctx {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &ConsoleState) -> Result<Self, Response> {
        // Only console session tokens: anything else in the cookie is not looked up.
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE, s.options.secure_cookies)
            .filter(|t| t.starts_with(crate::service::users::SESSION_PREFIX))
        else {
            return Err(redirect("/console/login"));
        };
        // A session cookie whose session no longer works (idle, signed out elsewhere, its
        // user removed): said so on the sign-in page, whatever the request was.
        let (caller, email) = match authenticate_console_session(&s.deps, &token).await {
            Ok(c) => c,
            Err(ServiceError::Unauthenticated) => return Err(redirect(SIGN_IN_AGAIN)),
            Err(e) => {
                tracing::error!(error = %e, "console session check failed");
                return Err(unavailable());
            }
        };
        let Caller::Session {
            role,
            enrollment_only,
            user_id,
            tenant_id,
            ..
        } = caller
        else {
            return Err(redirect(SIGN_IN_AGAIN));
        };
        let path = parts.uri.path();
        if enrollment_only && !path.starts_with("/console/2fa") && path != "/console/logout" {
            // The tenant requires 2FA: nothing else until it is set up. A notice the page
            // asked for (the requirement just saved by this admin) goes along.
            let notice = parts
                .uri
                .query()
                .and_then(|q| {
                    url::form_urlencoded::parse(q.as_bytes())
                        .find(|(k, _)| k == "done")
                        .map(|(_, v)| v.into_owned())
                })
                .filter(|d| d.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            return Err(redirect(&match notice {
                Some(d) => format!("/console/2fa?done={d}"),
                None => "/console/2fa".to_owned(),
            }));
        }
        let Some(key) = csrf_key(&s.deps).await else {
            return Err(unavailable());
        };
        let csrf = csrf_token(&key, "session", &token);
        if let Some(slot) = parts.extensions.get::<SignedIn>() {
            // For an error page of this request: the frame of this user (`errors_in_frame`).
            let _ = slot.0.set(Signed {
                role,
                email: email.clone(),
                csrf: csrf.clone(),
                enrollment_only,
            });
        }
        Ok(Ctx {
            who: Who {
                token: Some(token.clone()),
                ip: client_ip(parts),
            },
            csrf,
            token,
            role,
            email,
            user_id,
            tenant_id,
            enrollment_only,
        })
    }
}

/// The signed-in user a request's [`Ctx`] found, if it found one: a slot the console's
/// layer puts on each request and reads once the answer is made.
#[derive(Clone, Default)]
pub(super) struct SignedIn(std::sync::Arc<std::sync::OnceLock<Signed>>);

struct Signed {
    role: Role,
    email: String,
    csrf: String,
    enrollment_only: bool,
}

/// An error page (`views::error_page`) of a request whose session was found is shown in
/// that user's frame, with the navigation and sign-out, not stranded on a bare page. The
/// user is the one the handler's own session check found (no other read, no other call);
/// a request without a signed-in user (signed out, or a session confined to setting up
/// 2FA, whose pages are the 2FA page and sign-out only) keeps the bare page.
pub(super) async fn errors_in_frame(
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let slot = SignedIn::default();
    req.extensions_mut().insert(slot.clone());
    let res = next.run(req).await;
    let Some(words) = res.extensions().get::<ErrorWords>().cloned() else {
        return res;
    };
    let Some(who) = slot.0.get().filter(|w| !w.enrollment_only) else {
        return res;
    };
    let chrome = Chrome {
        role: who.role,
        email: &who.email,
        csrf: &who.csrf,
        current: "",
    };
    let (mut parts, _) = res.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let html = frame(words.title, &chrome, None, words.content()).into_string();
    Response::from_parts(parts, axum::body::Body::from(html))
}

pub(super) type Form = HashMap<String, String>;

pub(super) fn parse_form(body: &Bytes) -> Form {
    url::form_urlencoded::parse(body).into_owned().collect()
}

pub(super) fn refused_csrf() -> Response {
    error_page(
        StatusCode::FORBIDDEN,
        "This form has expired or did not come from the console; nothing was changed. \
         Reload the page and try again.",
    )
}

/// The form of a signed-in user's POST, if its CSRF token is this session's.
pub(super) async fn form(s: &ConsoleState, ctx: &Ctx, body: &Bytes) -> Result<Form, Response> {
    checked(s, ctx, parse_form(body)).await
}

/// `f` (read from a urlencoded or multipart body), if its CSRF token is this session's.
pub(super) async fn checked(s: &ConsoleState, ctx: &Ctx, f: Form) -> Result<Form, Response> {
    let Some(key) = csrf_key(&s.deps).await else {
        return Err(unavailable());
    };
    if !csrf_ok(
        &key,
        "session",
        &ctx.token,
        f.get("csrf").map(String::as_str),
    ) {
        tracing::info!(outcome = "denied", reason = "csrf", "console form refused");
        return Err(refused_csrf());
    }
    Ok(f)
}

/// Whether a destructive form was sent from its confirmation page ([`confirm_page`]).
pub(super) fn confirmed(f: &Form) -> bool {
    field(f, "confirm") == "yes"
}

/// What a confirmation page asks: the question (its title), what doing it means, the
/// button that does it, and where "Go back" leads.
pub(super) struct Confirm<'a> {
    pub(super) nav: &'a str,
    pub(super) question: String,
    pub(super) means: &'a str,
    pub(super) button: &'a str,
    pub(super) back: String,
}

/// The page between a destructive button and its action (a revocation, a removal, a
/// campaign's cancel cannot be undone, and sat one click away beside harmless buttons):
/// nothing is done until its form, the same fields (`keep`) with `confirm=yes` and the
/// session's CSRF token, is sent to `action`. Plain HTML, as every console page.
pub(super) fn confirm_page(
    ctx: &Ctx,
    c: Confirm<'_>,
    action: &str,
    keep: &[(&str, &str)],
) -> Response {
    let body = html! {
        p { (c.means) }
        form.stack method="post" action=(action) {
            (csrf(&ctx.csrf))
            @for (name, value) in keep { input type="hidden" name=(name) value=(value); }
            input type="hidden" name="confirm" value="yes";
            div.actions {
                button.danger type="submit" { (c.button) }
                a href=(c.back) { "Go back" }
            }
        }
    };
    page(
        StatusCode::OK,
        frame(&c.question, &ctx.chrome(c.nav), None, body),
    )
}

pub(super) fn field<'a>(f: &'a Form, name: &str) -> &'a str {
    f.get(name).map(|v| v.trim()).unwrap_or("")
}

/// The notice a redirect after a successful action asks for (`?done=`): fixed texts.
pub(super) fn done(q: &HashMap<String, String>) -> Option<Notice> {
    let text = match q.get("done").map(String::as_str)? {
        "sent" => "The message was accepted and queued for sending.",
        "opt_out_added" => "The number is opted out.",
        "opt_out_removed" => "The opt-out was removed.",
        "key_revoked" => "The key was revoked; every server refuses it within 5 seconds.",
        "number_resumed" => "The phone number sends again (every server within about 6 seconds).",
        "user_added" => "The user was added.",
        "user_removed" => "The user was removed; their sessions have ended.",
        "allowlist" => "The IP allow-list was saved.",
        "callback" => "The status callback was saved.",
        "callback_off" => "Status callbacks are off.",
        "two_factor_setting" => "The two-factor requirement was saved.",
        "two_factor_on" => "Two-factor authentication is on for your sign-ins.",
        "signed_out" => "You are signed out.",
        "signed_out_here" => {
            "You are signed out in this browser. The server could not confirm the end of the \
             session just now; it ends by itself after 30 idle minutes."
        }
        "password_changed" => {
            "Your password was changed and you were signed out everywhere: sign in with the new one."
        }
        "user_unlocked" => {
            "The user's failed sign-ins, if they had any, were cleared: if they were slowed \
             down, they can sign in again now."
        }
        "role_changed" => "The user's role was changed; it applies from their next click.",
        "two_factor_reset" => {
            "The user's two-factor authentication is off and they were signed out everywhere: \
             they sign in with their password alone (where two-factor is required, they set \
             it up again first)."
        }
        "campaign_created" => {
            "The campaign was accepted. Its numbers below fill in as messages are sent."
        }
        "campaign_paused" => {
            "The campaign is paused: no new message of it is sent until you resume it."
        }
        "campaign_resumed" => "The campaign is sending again.",
        "campaign_rescheduled" => {
            "The campaign is scheduled again: it starts at its send time."
        }
        // A sending campaign's messages are cancelled and refunded after the answer (a large
        // one for some seconds): said as what is true when the page is shown.
        "campaign_cancelled" => {
            "The campaign is cancelled: its messages not yet sent are being cancelled and \
             refunded (for a large campaign this takes some seconds); the counts below follow \
             when you reload the page. Messages already sent stay sent."
        }
        "campaign_retried" => {
            "A new campaign retries the failed messages that a later try may fix."
        }
        _ => return None,
    };
    Some(Notice::Done(text.into()))
}

/// The page for an API answer that was not a success: sign-in again on 401, a 404 page
/// for what is not there (or another tenant's), else an error page.
pub(super) fn failed(a: &Answer) -> Response {
    match a.status {
        // The session ended between the page's check and its API request.
        StatusCode::UNAUTHORIZED => redirect(SIGN_IN_AGAIN),
        StatusCode::NOT_FOUND => error_page(StatusCode::NOT_FOUND, "There is no such item."),
        // Only the role check's refusal is about the role: a suspended tenant, an address
        // or the 2FA requirement say what they are.
        StatusCode::FORBIDDEN if a.code() == "forbidden" => error_page(
            StatusCode::FORBIDDEN,
            "Your role does not allow this; nothing was changed.",
        ),
        StatusCode::TOO_MANY_REQUESTS => {
            let mut res = error_page(StatusCode::TOO_MANY_REQUESTS, &a.message());
            res.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(a.retry_after.unwrap_or(1)),
            );
            res
        }
        s => error_page(s, &a.message()),
    }
}

pub(super) fn problem(a: &Answer) -> (StatusCode, Option<Notice>) {
    // A `5xx` may have been done, its answer lost: never "not done".
    if a.status.is_server_error() {
        return (a.status, Some(Notice::Unknown(a.message())));
    }
    (a.status, Some(Notice::Problem(page_words(a))))
}

/// The API's refusal in a page's words: backticks, which mark code in the API's words, go
/// (on a page they are only noise), and where the API names its own route, a held number
/// is resumed on the dashboard, not with a call an operator cannot make.
pub(super) fn page_words(a: &Answer) -> String {
    let message = a.message().replace('`', "");
    if a.code() == "sender_held" {
        if let Some(start) = message.find(" (POST /v1/phone-numbers/") {
            if let Some(len) = message[start..].find(')') {
                return format!(
                    "{} on the dashboard{}",
                    &message[..start],
                    &message[start + len + 1..]
                );
            }
        }
    }
    message
}

/// A keyed form the API did not take, as it comes back: with the same idempotency key when
/// the outcome is not known (a `5xx`: it may have been done, its answer lost), so sending
/// it again does it at most once; with a new one otherwise (the API refused it, and keeps
/// no key for a refusal; or the key was used with another body: a new key is a new
/// request). The `csrf` field goes in any case (the page has its own).
pub(super) fn form_again(a: &Answer, mut form: Form) -> Form {
    if !a.status.is_server_error() {
        form.remove("idempotency_key");
    }
    form.remove("csrf");
    form
}

/// The problem line for a keyed form whose outcome is not known (a `5xx`): not "nothing
/// was changed", which may be untrue, but that sending it again is safe.
pub(super) fn unknown_outcome(what: &str) -> Notice {
    Notice::Unknown(format!(
        "Something went wrong on our side, and we cannot tell whether {what} was done. \
         Sending this form again is safe: it is done at most once."
    ))
}

/// The idempotency key a keyed form carries: the one it came back with, else a new one.
pub(super) fn form_key(typed: &Form) -> String {
    typed
        .get("idempotency_key")
        .filter(|k| !k.is_empty())
        .cloned()
        .unwrap_or_else(crate::domain::new_id)
}

/// Who made a key, as the key list says it (`created_by`): "by you", "by {email}" (or "by
/// user {id}" for a key made before emails were kept with it), "by key {id}" or "by the
/// operator"; `None` for a key made before makers were recorded.
fn key_maker(by: &Value, ctx: &Ctx) -> Option<String> {
    let id = by["id"].as_str()?;
    Some(match by["type"].as_str()? {
        "user" if ctx.user_id == id => "by you".to_owned(),
        "user" => match by["email"].as_str() {
            Some(email) => format!("by {email}"),
            None => format!("by user {id}"),
        },
        "api_key" => format!("by key {id}"),
        _ => "by the operator".to_owned(),
    })
}

pub(super) fn text<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

pub(super) fn when(v: &Value) -> String {
    v.as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| {
            t.with_timezone(&Utc)
                .format("%Y-%m-%d %H:%M UTC")
                .to_string()
        })
        .unwrap_or_else(|| "—".into())
}

pub(super) fn day_start(d: NaiveDate) -> String {
    format!("{}T00:00:00Z", d.format("%Y-%m-%d"))
}

/// A form's day, `YYYY-MM-DD` with a four-digit year, as the API's own `day` reads it.
/// chrono alone also takes a signed year of five or more digits, up to its last date, whose
/// next day does not exist: such a day is no day here.
pub(super) fn form_day(v: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(v, "%Y-%m-%d")
        .ok()
        .filter(|_| v.len() == 10)
}

/// The start of the day after `d` (the end of a one-day range), if there is one.
fn next_day_start(d: NaiveDate) -> Option<String> {
    d.succ_opt().map(day_start)
}

pub(super) fn query(pairs: &[(&str, &str)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if !v.is_empty() {
            s.append_pair(k, v);
        }
    }
    s.finish()
}

async fn css() -> Response {
    let mut res = super::views::CSS.into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    res
}

async fn not_found(State(s): S, mut parts: Parts) -> Response {
    // Signed in: the page comes in the user's frame (`errors_in_frame`), found by the
    // session check every page makes; signed out, the bare page (no redirect: a wrong
    // address is said so).
    let _ = Ctx::from_request_parts(&mut parts, &s).await;
    error_page(StatusCode::NOT_FOUND, "There is no such page.")
}

// ------------------------------------------------------------------ sign-in

/// The sign-in page; `email` is what a refused attempt typed (kept, to be mended: never
/// the password).
fn login_form(csrf_value: &str, n: Option<&Notice>, status: StatusCode, email: &str) -> Response {
    page(
        status,
        bare(
            "Sign in",
            n,
            html! {
                form.stack method="post" action="/console/login" {
                    (csrf(csrf_value))
                    div { label for="email" { "Email" } input #email type="email" name="email" value=(email) autocomplete="username" required; }
                    div { label for="password" { "Password" } input #password type="password" name="password" autocomplete="current-password" required; }
                    button type="submit" { "Sign in" }
                }
            },
        ),
    )
}

fn totp_form(csrf_value: &str, email: &str, n: Option<&Notice>) -> Response {
    let status = if n.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    page(
        status,
        bare(
            "Two-factor code",
            n,
            html! {
                p { "Enter the 6-digit code from your authenticator app for " strong { (email) } "." }
                // The email and password wait in a sealed, short-lived cookie
                // (`security::seal_pending`), never in this page.
                form.stack method="post" action="/console/login" {
                    (csrf(csrf_value))
                    div {
                        label for="totp_code" { "Code" }
                        input #totp_code type="text" name="totp_code" inputmode="numeric" pattern="[0-9]{6}" maxlength="6" autocomplete="one-time-code" required autofocus;
                    }
                    button type="submit" { "Sign in" }
                }
                p { a href="/console/login" { "Start again" } }
            },
        ),
    )
}

async fn login_page(State(s): S, q: Q, parts: Parts) -> Response {
    if let Some(t) = cookie(&parts.headers, SESSION_COOKIE, s.options.secure_cookies)
        .filter(|t| t.starts_with(crate::service::users::SESSION_PREFIX))
    {
        if authenticate(&s.deps, Some(&t)).await.is_ok() {
            return redirect("/console/");
        }
    }
    let Some(key) = csrf_key(&s.deps).await else {
        return unavailable();
    };
    let nonce = Secret::generate("");
    let n = match q.0.get("ended").map(String::as_str) {
        Some("1") => Some(Notice::Alert(ENDED.into())),
        _ => done(&q.0),
    };
    let mut res = login_form(
        &csrf_token(&key, "login", nonce.expose()),
        n.as_ref(),
        StatusCode::OK,
        "",
    );
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, nonce.expose(), s.options.secure_cookies, None),
    );
    res
}

async fn login(State(s): S, parts: Parts, body: Bytes) -> Response {
    let f = parse_form(&body);
    let Some(key) = csrf_key(&s.deps).await else {
        return unavailable();
    };
    let nonce = cookie(&parts.headers, LOGIN_COOKIE, s.options.secure_cookies).unwrap_or_default();
    if nonce.is_empty() || !csrf_ok(&key, "login", &nonce, f.get("csrf").map(String::as_str)) {
        return refused_csrf();
    }
    let token = csrf_token(&key, "login", &nonce);
    let now = s.deps.clock.now().timestamp();
    let secure = s.options.secure_cookies;
    let code = field(&f, "totp_code");
    // Step two (the code) takes the email and password from the sealed cookie of step one.
    let (email, password) = if f.contains_key("totp_code") {
        match cookie(&parts.headers, PENDING_COOKIE, secure)
            .and_then(|sealed| open_pending(&key, &nonce, &sealed, now))
        {
            Some((e, p)) => (e, p),
            None => {
                return login_form(
                    &token,
                    Some(&Notice::Problem(
                        "the sign-in took too long; enter your email and password again".into(),
                    )),
                    StatusCode::UNAUTHORIZED,
                    "",
                )
            }
        }
    } else {
        (
            field(&f, "email").to_owned(),
            Secret::new(f.get("password").map(String::as_str).unwrap_or("")),
        )
    };
    let mut req = json!({"email": email, "password": password.expose()});
    if !code.is_empty() {
        req["totp_code"] = json!(code);
    }
    let who = Who {
        token: None,
        ip: client_ip(&parts),
    };
    let a = s
        .api
        .call(&who, Method::POST, "/v1/auth/login", Some(req), None)
        .await;
    if a.ok() {
        let Some(session) = a.body["token"].as_str() else {
            return unavailable();
        };
        let to = if a.body["totp_enrollment_required"].as_bool() == Some(true) {
            "/console/2fa"
        } else {
            "/console/"
        };
        let mut res = redirect(to);
        let h = res.headers_mut();
        h.append(
            header::SET_COOKIE,
            set_cookie(SESSION_COOKIE, session, secure, None),
        );
        for gone in [LOGIN_COOKIE, PENDING_COOKIE] {
            h.append(header::SET_COOKIE, set_cookie(gone, "", secure, Some(0)));
        }
        return res;
    }
    match (a.status, a.code()) {
        (StatusCode::UNAUTHORIZED, "totp_required") => {
            let n = (!code.is_empty())
                .then(|| Notice::Problem("that code is not valid; try the next one".into()));
            let mut res = totp_form(&token, &email, n.as_ref());
            if code.is_empty() {
                let Some(sealed) = seal_pending(&key, &nonce, &email, password.expose(), now)
                else {
                    return unavailable();
                };
                res.headers_mut().append(
                    header::SET_COOKIE,
                    set_cookie(PENDING_COOKIE, &sealed, secure, Some(PENDING_SECS)),
                );
            }
            res
        }
        (StatusCode::UNAUTHORIZED, _) => login_form(
            &token,
            Some(&Notice::Problem("the email or password is wrong".into())),
            StatusCode::UNAUTHORIZED,
            &email,
        ),
        (StatusCode::TOO_MANY_REQUESTS, _) => {
            // The API's words name its header; a person gets the number, and so does the
            // browser (the page's own `Retry-After`).
            let wait = a.retry_after.unwrap_or(1);
            let why = a.message();
            let why = why.split("; try again").next().unwrap_or(&why).to_owned();
            let n = Notice::Problem(format!(
                "{why}; try again in {wait} second{}",
                if wait == 1 { "" } else { "s" }
            ));
            let mut res = login_form(&token, Some(&n), StatusCode::TOO_MANY_REQUESTS, &email);
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait));
            res
        }
        (status, _) => login_form(&token, Some(&Notice::Problem(a.message())), status, &email),
    }
}

async fn logout(
    State(s): S,
    headers: HeaderMap,
    ctx: Result<Ctx, Response>,
    body: Bytes,
) -> Response {
    // The session could not be checked (a storage error reading it, the CSRF key
    // unreadable) or is no longer one: the browser forgets it all the same, so a shared
    // computer is not left signed in until storage recovers. Nothing is asked of the API
    // without the form's CSRF proof; the page says the end was not confirmed (the session
    // still ends after its idle time).
    let ctx = match ctx {
        Ok(ctx) => ctx,
        // No session cookie came with it: nothing to forget (another site's form posting
        // here, whose request the `SameSite=Strict` cookie does not go with, must not
        // sign the user out). One that came twice (unused) is forgotten below.
        Err(_)
            if !super::security::has_cookie(&headers, SESSION_COOKIE, s.options.secure_cookies) =>
        {
            return redirect("/console/login");
        }
        Err(_) => {
            tracing::warn!("sign-out without a checked session; forgotten in this browser");
            return forget_session(&s, "/console/login?done=signed_out_here");
        }
    };
    if let Err(r) = form(&s, &ctx, &body).await {
        return r;
    }
    let a = s
        .api
        .call(&ctx.who, Method::POST, "/v1/auth/logout", None, None)
        .await;
    // The browser forgets the session whatever the server answered: a sign-out refused for
    // a moment (the tenant's request limit, a storage error) must not leave a shared
    // computer signed in. The page says when the server could not confirm the end.
    let to = if a.ok() || a.status == StatusCode::UNAUTHORIZED {
        "/console/login?done=signed_out"
    } else {
        tracing::warn!(
            status = a.status.as_u16(),
            "sign-out not confirmed by the API"
        );
        "/console/login?done=signed_out_here"
    };
    forget_session(&s, to)
}

/// A redirect to `to` that deletes the session cookie.
fn forget_session(s: &ConsoleState, to: &str) -> Response {
    let mut res = redirect(to);
    res.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", s.options.secure_cookies, Some(0)),
    );
    res
}

// ------------------------------------------------------------------ 2FA

async fn two_factor(State(s): S, ctx: Ctx, q: Q) -> Response {
    render_two_factor(&s, &ctx, StatusCode::OK, done(&q.0)).await
}

/// The two-factor page (and the password form on it), with `n` said.
async fn render_two_factor(
    s: &ConsoleState,
    ctx: &Ctx,
    status: StatusCode,
    n: Option<Notice>,
) -> Response {
    let me = match crate::service::users::get(&s.deps, &ctx.tenant_id, &ctx.user_id).await {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(error = %e, "console: the user could not be read");
            return unavailable();
        }
    };
    let body = html! {
        p { "Two-factor authentication asks for a code from an authenticator app (such as
            Google Authenticator, 1Password or Aegis) each time you sign in." }
        @if me.totp_enabled && ctx.enrollment_only {
            p { strong { "It is on for your sign-ins now," } " but this sign-in was made before it
                was (in another session): sign out and sign in again with a code from your app." }
            form method="post" action="/console/logout" {
                (csrf(&ctx.csrf))
                button type="submit" { "Sign out" }
            }
        } @else if me.totp_enabled {
            p { strong { "It is on for your sign-ins." } " It cannot be replaced from here (so a
                stolen session cannot replace it). If you lose your authenticator, an admin can reset it." }
        } @else {
            @if ctx.enrollment_only {
                p #two-factor-required { strong { "Your account requires two-factor authentication
                    for every console user:" } " set it up here to go on. Until then, every other
                    page leads back here." }
            }
            form.stack method="post" action="/console/2fa/enroll" {
                (csrf(&ctx.csrf))
                button type="submit" { "Set up two-factor authentication" }
            }
        }
        @if !ctx.enrollment_only {
        h2 { "Your password" }
        form.stack #change-password method="post" action="/console/password" {
            (csrf(&ctx.csrf))
            div {
                label for="current_password" { "Current password" }
                input #current_password type="password" name="current_password" autocomplete="current-password" required;
            }
            div {
                label for="new_password" { "New password (12 to 128 characters)" }
                input #new_password type="password" name="new_password" autocomplete="new-password" minlength="12" maxlength="256" required;
            }
            p.hint { "Changing it signs you out everywhere, this browser too: sign in again with the new one." }
            button type="submit" { "Change password" }
        }
        }
    };
    page(
        status,
        frame("Two-factor", &ctx.chrome("/console/2fa"), n.as_ref(), body),
    )
}

async fn change_password(State(s): S, ctx: Ctx, body: Bytes) -> Response {
    let f = match form(&s, &ctx, &body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    // Not trimmed: a password is what was typed.
    let typed = |k: &str| f.get(k).map_or("", String::as_str);
    let a = s
        .api
        .call(
            &ctx.who,
            Method::POST,
            "/v1/auth/password",
            Some(json!({
                "current_password": typed("current_password"),
                "new_password": typed("new_password"),
            })),
            None,
        )
        .await;
    if a.ok() {
        // Every session of the user ended, this one too.
        let mut res = redirect("/console/login?done=password_changed");
        res.headers_mut().append(
            header::SET_COOKIE,
            set_cookie(SESSION_COOKIE, "", s.options.secure_cookies, Some(0)),
        );
        return res;
    }
    if a.status == StatusCode::UNAUTHORIZED {
        return failed(&a);
    }
    let (status, n) = problem(&a);
    // The API names its fields; the form's labels say them in words.
    let n = n.map(|n| match n {
        Notice::Problem(m) => Notice::Problem(
            m.replace("current_password", "the current password")
                .replace("new_password", "the new password"),
        ),
        other => other,
    });
    render_two_factor(&s, &ctx, status, n).await
}

/// The confirmation form; `enrolment`, the key this page shows sealed for this session
/// (`security::seal_enrolment`), goes back with the code, so that a wrong code shows
/// the same QR code again.
fn confirm_form(ctx: &Ctx, enrolment: Option<&str>) -> Markup {
    html! {
        form.stack method="post" action="/console/2fa/confirm" {
            (csrf(&ctx.csrf))
            @if let Some(sealed) = enrolment { input type="hidden" name="enrolment" value=(sealed); }
            div {
                label for="totp_code" { "Code from the app" }
                input #totp_code type="text" name="totp_code" inputmode="numeric" pattern="[0-9]{6}" maxlength="6" autocomplete="one-time-code" required;
            }
            button type="submit" { "Turn on two-factor authentication" }
        }
    }
}

/// The QR code and the key of a pending enrolment, and the form that confirms it.
fn enrolment_shown(ctx: &Ctx, secret: &str, uri: &str, sealed: Option<&str>) -> Markup {
    html! {
        p { "Scan this code with your authenticator app, or type the key below into it. It is
            shown on this page only." }
        (qr_svg(uri))
        p { "Key: " span.secret #totp-secret { (secret) } }
        (confirm_form(ctx, sealed))
    }
}

/// "Start again with a new key": a new enrolment, whose key replaces the pending one.
fn start_again(ctx: &Ctx) -> Markup {
    html! {
        form.stack method="post" action="/console/2fa/enroll" {
            (csrf(&ctx.csrf))
            button.quiet type="submit" { "Start again with a new key" }
        }
    }
}

async fn enroll(State(s): S, ctx: Ctx, body: Bytes) -> Response {
    if let Err(r) = form(&s, &ctx, &body).await {
        return r;
    }
    let a = s
        .api
        .call(&ctx.who, Method::POST, "/v1/auth/2fa/enroll", None, None)
        .await;
    let chrome = ctx.chrome("/console/2fa");
    if !a.ok() {
        if a.status == StatusCode::UNAUTHORIZED {
            return failed(&a);
        }
        let (status, n) = problem(&a);
        return page(status, frame("Two-factor", &chrome, n.as_ref(), html! {}));
    }
    let (secret, uri) = (text(&a.body, "secret"), text(&a.body, "otpauth_uri"));
    // Sealed for this session's confirmation form; without the key (the secret store
    // unreadable just now) the form goes without, and a wrong code asks to start again.
    let now = s.deps.clock.now().timestamp();
    let sealed = csrf_key(&s.deps)
        .await
        .and_then(|key| seal_enrolment(&key, &ctx.token, secret, uri, now));
    let body = enrolment_shown(&ctx, secret, uri, sealed.as_deref());
    page(StatusCode::OK, frame("Two-factor", &chrome, None, body))
}

async fn confirm(State(s): S, ctx: Ctx, body: Bytes) -> Response {
    let f = match form(&s, &ctx, &body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let a = s
        .api
        .call(
            &ctx.who,
            Method::POST,
            "/v1/auth/2fa/confirm",
            Some(json!({"totp_code": field(&f, "totp_code")})),
            None,
        )
        .await;
    if a.ok() {
        return redirect("/console/?done=two_factor_on");
    }
    if a.status == StatusCode::UNAUTHORIZED {
        return failed(&a);
    }
    // The key this form's page showed, to show again: only when the API said the code was
    // refused as a code (`400`: wrong or malformed; `429`: too many wrong ones), so the
    // enrolment is still pending — not once it says there is nothing to confirm (2FA
    // already on, none pending: `409`), nor on an answer that says nothing of it (a `5xx`:
    // the key may have become the user's live second factor meanwhile), nor to a form
    // sealed for another session or too long ago.
    let now = s.deps.clock.now();
    let shown = if !matches!(
        a.status,
        StatusCode::BAD_REQUEST | StatusCode::TOO_MANY_REQUESTS
    ) {
        None
    } else {
        match (csrf_key(&s.deps).await, f.get("enrolment")) {
            (Some(key), Some(sealed)) => open_enrolment(&key, &ctx.token, sealed, now.timestamp())
                .map(|(secret, uri)| (secret, uri, sealed.clone())),
            _ => None,
        }
    };
    // A code the API refused as a code (`400`) that is right for the key this page showed:
    // that key is no longer the pending one — another tab or window started a set-up
    // since (its key replaced this one), or this one was finished (confirmed, the code
    // spent). Showing it again would have the user try code after code that can never
    // confirm it. (The API's `429` checked no code: shown again, as before.)
    if a.status == StatusCode::BAD_REQUEST {
        if let Some((secret, _, _)) = &shown {
            if crate::service::users::code_of_key(secret.expose(), field(&f, "totp_code"), now) {
                tracing::info!(
                    user_id = %ctx.user_id,
                    "console: a 2fa confirmation for a set-up no longer pending"
                );
                return set_up_elsewhere(&ctx, a.status);
            }
        }
    }
    let (status, n) = problem(&a);
    let wrong = a.status == StatusCode::BAD_REQUEST && a.message().contains("does not match");
    let n = n.map(|n| match n {
        Notice::Problem(_) if wrong && shown.is_some() => Notice::Problem(
            "that code didn't match. Try the next one your app shows for this key (the QR \
             code and key below are the same)."
                .into(),
        ),
        Notice::Problem(_) if wrong => Notice::Problem(
            "that code didn't match. Try the next one your app shows; if your app has no \
             entry for this key (it is shown only once), choose “Start again with a new \
             key” below, scan the new QR code and enter its code."
                .into(),
        ),
        // The API names its field; the form's label says "code".
        Notice::Problem(m) => Notice::Problem(m.replace("totp_code", "the code")),
        // A `5xx` (storage or KMS unavailable, the stored key not opening): the API's words
        // speak of an Idempotency-Key this form has none of.
        Notice::Unknown(_) => Notice::Unknown(
            "something went wrong on our side, and we cannot tell whether the code turned \
             two-factor authentication on."
                .into(),
        ),
        other => other,
    });
    let body = html! {
        @match &shown {
            Some((secret, uri, sealed)) => (enrolment_shown(&ctx, secret.expose(), uri.expose(), Some(sealed))),
            None => (confirm_form(&ctx, None)),
        }
        @if status.is_server_error() {
            // The code may have turned it on, its answer lost.
            p { "The code may have turned two-factor authentication on. "
                a href="/console/2fa" { "See whether it is on" } " before starting again." }
        }
        (start_again(&ctx))
    };
    page(
        status,
        frame("Two-factor", &ctx.chrome("/console/2fa"), n.as_ref(), body),
    )
}

/// A confirmation whose code is right for the key its page showed, refused by the API:
/// that set-up is no longer the pending one (replaced by one started in another tab or
/// window, or already finished). Its key is not shown again: no code can confirm it.
fn set_up_elsewhere(ctx: &Ctx, status: StatusCode) -> Response {
    let n = Notice::Problem(
        "this set-up was replaced by one started elsewhere (in another tab or window), or it \
         is already finished: its key can no longer be confirmed."
            .into(),
    );
    let body = html! {
        p #set-up-elsewhere { "If you started a new set-up in another tab or window, finish it
            there, with a code for the key shown there. Otherwise, start again: the new key
            replaces any set-up not finished." }
        p { a href="/console/2fa" { "See whether two-factor authentication is on" } }
        (start_again(ctx))
    };
    page(
        status,
        frame("Two-factor", &ctx.chrome("/console/2fa"), Some(&n), body),
    )
}

// ------------------------------------------------------------------ dashboard

/// Messages are counted from the list, at most this many pages of 100.
const DASHBOARD_PAGES: usize = 20;

async fn dashboard(State(s): S, ctx: Ctx, q: Q) -> Response {
    let account = s.api.get(&ctx.who, "/v1/account").await;
    if !account.ok() {
        return failed(&account);
    }
    let today = Utc::now().date_naive();
    let first = today - Duration::days(6);
    let mut today_counts: HashMap<String, u64> = HashMap::new();
    let mut week: HashMap<String, u64> = HashMap::new();
    let mut cursor: Option<String> = None;
    let mut truncated = false;
    let mut partial: Option<usize> = None;
    for i in 0..=DASHBOARD_PAGES {
        if i == DASHBOARD_PAGES {
            truncated = true;
            break;
        }
        let since = day_start(first);
        let qs = query(&[
            ("since", &since),
            ("limit", "100"),
            ("cursor", cursor.as_deref().unwrap_or("")),
        ]);
        let a = s.api.get(&ctx.who, &format!("/v1/messages?{qs}")).await;
        // A later page refused (the user's request limit, a storage error): the counts so
        // far are shown, said to be partial, rather than the page sign-in lands on failing.
        if !a.ok() && i > 0 {
            tracing::warn!(
                status = a.status.as_u16(),
                pages = i,
                "dashboard counted part of the week"
            );
            partial = Some(i * 100);
            break;
        }
        if !a.ok() {
            return failed(&a);
        }
        for m in a.body["messages"].as_array().into_iter().flatten() {
            let status = text(m, "status").to_owned();
            let day = text(m, "created_at").get(..10).unwrap_or("").to_owned();
            if day == today.format("%Y-%m-%d").to_string() {
                *today_counts.entry(status.clone()).or_default() += 1;
            }
            *week.entry(status).or_default() += 1;
        }
        cursor = a.body["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    let counts = |m: &HashMap<String, u64>| -> Vec<(&'static str, u64)> {
        STATUSES
            .iter()
            .map(|s| (*s, m.get(*s).copied().unwrap_or(0)))
            .collect()
    };
    let numbers = super::usage::phone_numbers(&s, &ctx).await;
    let acc = &account.body;
    let quality = &acc["quality"];
    let pct = |v: &Value| format!("{:.1} %", v.as_f64().unwrap_or(0.0) * 100.0);
    let sent_7d = quality["sent_7d"].as_u64().unwrap_or(0);
    let min_volume = s.deps.settings.quality.min_volume;
    let body = html! {
        div.cards {
            div.card { div { "Credits" } div.big #credits { (acc["credits"].as_i64().unwrap_or(0)) } }
            div.card { div { "Account" } div.big { (text(acc, "status")) } }
            div.card { div { "Opt-out rate (7 days)" } div.big { (pct(&quality["opt_out_rate"])) } }
            div.card {
                div { "Quality (7 days)" }
                // Rates of a few messages mislead: below the volume the watch judges from, it
                // says so rather than "Good" beside a high rate.
                div.big #quality {
                    @if quality["flagged"].as_bool() == Some(true) { "Flagged" }
                    @else if sent_7d < min_volume { "Too few to judge" }
                    @else { "Good" }
                }
                div.hint {
                    "Undeliverable: " (pct(&quality["undeliverable_rate"])) ". "
                    (sent_7d) " sent in 7 days; judged from " (min_volume) "."
                }
            }
        }
        (numbers)
        h2 { "Messages by status" }
        @if truncated { p.hint { "Counted from the most recent " (DASHBOARD_PAGES * 100) " messages only." } }
        @if let Some(n) = partial { p.hint { "Counted from the most recent " (n) " messages only: the rest could not be read just now; reload to count them." } }
        (status_chart("today", &format!("Today ({} UTC)", today.format("%Y-%m-%d")), &counts(&today_counts)))
        (status_chart("week", &format!("Last 7 days ({} to {} UTC)", first.format("%Y-%m-%d"), today.format("%Y-%m-%d")), &counts(&week)))
        div.table-wrap {
            table {
                caption { "Messages by status" }
                thead { tr { th scope="col" { "Status" } th scope="col" { "Today (UTC)" } th scope="col" { "Last 7 days (UTC)" } } }
                tbody {
                    @for st in STATUSES {
                        tr { th scope="row" { (st) } td { (today_counts.get(st).copied().unwrap_or(0)) } td { (week.get(st).copied().unwrap_or(0)) } }
                    }
                }
            }
        }
    };
    page(
        StatusCode::OK,
        frame(
            "Dashboard",
            &ctx.chrome("/console/"),
            done(&q.0).as_ref(),
            body,
        ),
    )
}

// ------------------------------------------------------------------ messages

async fn messages(State(s): S, ctx: Ctx, q: Q) -> Response {
    render_messages(&s, &ctx, &q.0, &HashMap::new(), StatusCode::OK, done(&q.0)).await
}

/// Pages of 100 messages searched for a number at once.
const NUMBER_PAGES: usize = 10;

/// The messages page for the filters `q`; the send form shows `sent` (a refused send's
/// form, as typed).
async fn render_messages(
    s: &ConsoleState,
    ctx: &Ctx,
    q: &HashMap<String, String>,
    sent: &Form,
    status: StatusCode,
    n: Option<Notice>,
) -> Response {
    let typed = |k: &str| sent.get(k).map_or("", String::as_str);
    let get = |k: &str| q.get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
    let (st, date, cursor) = (get("status"), get("date"), get("cursor"));
    let mut status = status;
    let mut n = n;
    // A filter the list cannot take (a bad day): the list is not read. Not `status`,
    // which is also a refused send's answer, after which the list is shown as ever.
    let mut bad_filter = false;
    let mut since = String::new();
    let mut until = String::new();
    if !date.is_empty() {
        match form_day(&date).and_then(|d| Some((day_start(d), next_day_start(d)?))) {
            Some((start, end)) => {
                since = start;
                until = end;
            }
            None => {
                status = StatusCode::BAD_REQUEST;
                bad_filter = true;
                n = Some(Notice::Problem(
                    "the date must be a day (YYYY-MM-DD)".into(),
                ));
            }
        }
    }
    let number = get("to");
    let mut list: Vec<Value> = Vec::new();
    let mut next: Option<String> = None;
    let mut searched = false;
    // A send whose outcome is not known comes back with its key (`form_again`): that form
    // is shown whatever the list's read does, or a reload would make a new key and a
    // second message.
    let keyed = sent.contains_key("idempotency_key");
    let mut unlisted = false;
    if !bad_filter {
        // The API lists by status and time; a number is looked for in the pages it
        // answers (at most NUMBER_PAGES of 100), and "Older" goes on from there.
        let (limit, pages) = if number.is_empty() {
            ("50", 1)
        } else {
            ("100", NUMBER_PAGES)
        };
        let mut cursor = cursor.clone();
        for i in 0..pages {
            let qs = query(&[
                ("status", &st),
                ("since", &since),
                ("until", &until),
                ("limit", limit),
                ("cursor", &cursor),
            ]);
            let a = s.api.get(&ctx.who, &format!("/v1/messages?{qs}")).await;
            if a.status == StatusCode::BAD_REQUEST {
                (status, n) = problem(&a);
                break;
            } else if !a.ok() && keyed {
                unlisted = true;
                break;
            } else if !a.ok() {
                return failed(&a);
            }
            list.extend(
                a.body["messages"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|m| number.is_empty() || text(m, "to") == number)
                    .cloned(),
            );
            next = a.body["next_cursor"].as_str().map(str::to_owned);
            match &next {
                Some(c) if list.len() < 50 => cursor = c.clone(),
                _ => break,
            }
            searched = !number.is_empty() && i + 1 == pages;
        }
    }
    let can_send = ctx.may("POST", "/v1/messages");
    // The account's numbers: the sender of the send form, and the list's "From" column
    // (with several numbers, or a message from one removed since).
    let senders = super::senders::Senders::read(s, ctx).await;
    let from_column = senders.column_for(&list);
    // The sender the form is for: a refused form's, else (with several numbers) the one
    // chosen above the form (`?from=`); none is the default number. With one number (or
    // none read) only a refused form's, kept as it was (`Senders::select`).
    let from = if senders.several() {
        let asked = sent
            .get("from")
            .or_else(|| q.get("from"))
            .map_or("", |v| v.trim());
        senders.known(asked).to_owned()
    } else {
        typed("from").trim().to_owned()
    };
    // The approved templates of that sender's WABA (its catalogue: another WABA's are not
    // its own), each with its language, suggested as the name is typed: one read, the
    // first 100 by name. The field stays free (a template past them, or not synced yet); a
    // sender the numbers' read could not confirm, or a catalogue that cannot be read just
    // now, suggests nothing.
    let sender_known = from.is_empty() || !senders.unread();
    let suggested: Vec<Value> = if can_send && sender_known && ctx.may("GET", "/v1/templates") {
        let qs = query(&[
            ("waba_id", senders.waba_of(&from)),
            ("status", "approved"),
            ("limit", "100"),
        ]);
        let a = s.api.get(&ctx.who, &format!("/v1/templates?{qs}")).await;
        a.body["templates"].as_array().cloned().unwrap_or_default()
    } else {
        Vec::new()
    };
    let body = html! {
        form.filters method="get" action="/console/messages" {
            div {
                label for="f-status" { "Status" }
                select #f-status name="status" {
                    option value="" selected[st.is_empty()] { "Any" }
                    @for x in STATUSES { option value=(x) selected[st == x] { (x) } }
                }
            }
            div { label for="f-date" { "Day (UTC)" } input #f-date type="date" name="date" value=(date); }
            div { label for="f-to" { "Number (E.164)" } input #f-to type="tel" name="to" value=(number); }
            @if senders.several() && !from.is_empty() { input type="hidden" name="from" value=(from); }
            button type="submit" { "Filter" }
        }
        @if searched && next.is_some() {
            p.hint { "Searched " (NUMBER_PAGES * 100) " messages for this number; “Older messages” searches on." }
        }
        @if unlisted {
            p.notice #messages-unavailable role="status" { "The list of messages could not be read just now." }
        }
        div.table-wrap {
            table.stack #messages {
                caption { "Messages, newest first" }
                thead { tr { th scope="col" { "Message" } @if from_column { th scope="col" { "From" } } th scope="col" { "To" } th scope="col" { "Template" } th scope="col" { "Status" } th scope="col" { "Created" } } }
                tbody {
                    @for m in &list {
                        tr {
                            td data-label="Message" { a href=(format!("/console/messages/{}", segment(text(m, "id")))) { (text(m, "id")) } }
                            @if from_column { td data-label="From" { (senders.sent_from(&m["from"])) } }
                            td data-label="To" { (text(m, "to")) }
                            td data-label="Template" { (m["template"]["name"].as_str().unwrap_or("(session text)")) }
                            td.status data-label="Status" { (text(m, "status")) }
                            td data-label="Created" { (when(&m["created_at"])) }
                        }
                    }
                    @if list.is_empty() && !unlisted { tr { td colspan=(if from_column { "6" } else { "5" }) { "No messages." } } }
                }
            }
        }
        @if let Some(c) = &next {
            // The sender chosen above the send form goes on with the list (as the filters
            // carry it), or the next page's form would be the default number's again.
            @let sender = if senders.several() { from.as_str() } else { "" };
            p { a href=(format!("/console/messages?{}", query(&[("status", &st), ("date", &date), ("to", &number), ("from", sender), ("cursor", c)]))) { "Older messages" } }
        }
        @if can_send {
            h2 { "Send a template message" }
            @if senders.several() {
                // The templates a message may use are its sender's WABA's: choosing the
                // sender shows them (a page load, no script), as on the campaign form.
                form.filters #send-sender method="get" action="/console/messages" {
                    @for (k, v) in [("status", &st), ("date", &date), ("to", &number)] {
                        @if !v.is_empty() { input type="hidden" name=(k) value=(v); }
                    }
                    (senders.select("from", "from", &from))
                    button type="submit" { "Show its templates" }
                }
            }
            form.stack #send method="post" action="/console/messages" {
                (csrf(&ctx.csrf))
                input type="hidden" name="idempotency_key" value=(form_key(sent));
                @if senders.several() {
                    input type="hidden" name="from" value=(from);
                    p.hint #send-from { "Sent from " (senders.describe(&from)) "." }
                } @else {
                    (senders.select("from", "from", typed("from")))
                }
                div { label for="to" { "To (E.164, e.g. +60123456789)" } input #to type="tel" name="to" value=(typed("to")) required; }
                div {
                    label for="template" { "Template" }
                    input #template type="text" name="template" value=(typed("template")) list="template-names" autocomplete="off" aria-describedby="template-hint" required;
                    datalist #template-names {
                        @for t in &suggested {
                            @let n = t["body_parameters"].as_u64().unwrap_or(0);
                            option value=(suggestion(text(t, "name"), text(t, "language"))) {
                                (text(t, "category")) ", " (n) @if n == 1 { " body parameter" } @else { " body parameters" }
                            }
                        }
                    }
                    p.hint #template-hint {
                        @if !suggested.is_empty() { "The sender's approved templates are suggested as you type, each with its language (“name · language”). " }
                        "Or type a template's name and its language below."
                    }
                }
                div { label for="language" { "Language (when the template above does not name it; en_US if left empty)" } input #language type="text" name="language" value=(typed("language")); }
                div {
                    label for="category" { "Category" }
                    select #category name="category" {
                        // Left out, the catalogue's category applies (the API checks one
                        // that is given against it).
                        option value="" { "as in the catalogue" }
                        @for c in ["utility", "marketing", "authentication"] {
                            option value=(c) selected[typed("category") == c] { (c) }
                        }
                    }
                }
                div {
                    label for="parameters" { "Body parameters, one a line, in order (as many as the template has)" }
                    textarea #parameters name="parameters" rows="2" { (typed("parameters")) }
                }
                div { label for="client_reference" { "Your reference (optional)" } input #client_reference type="text" name="client_reference" value=(typed("client_reference")); }
                button type="submit" { "Send" }
            }
        }
    };
    page(
        status,
        frame(
            "Messages",
            &ctx.chrome("/console/messages"),
            n.as_ref(),
            body,
        ),
    )
}

async fn send_message(State(s): S, ctx: Ctx, body: Bytes) -> Response {
    let f = match form(&s, &ctx, &body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let (name, language) = match template_of(field(&f, "template"), field(&f, "language")) {
        Ok(t) => t,
        Err(why) => {
            let typed = form_again_unsent(f);
            let n = Some(Notice::Problem(why));
            return render_messages(
                &s,
                &ctx,
                &HashMap::new(),
                &typed,
                StatusCode::BAD_REQUEST,
                n,
            )
            .await;
        }
    };
    let mut template = json!({"name": name, "language": language});
    let category = field(&f, "category");
    if !category.is_empty() {
        template["category"] = json!(category);
    }
    let parameters = f.get("parameters").map_or("", String::as_str);
    if let Some(components) = super::campaigns::body_components(parameters) {
        template["components"] = components;
    }
    let mut req = json!({"to": field(&f, "to"), "template": template});
    let from = field(&f, "from");
    if !from.is_empty() {
        req["from"] = json!(from);
    }
    let reference = field(&f, "client_reference");
    if !reference.is_empty() {
        req["client_reference"] = json!(reference);
    }
    let key = Some(field(&f, "idempotency_key")).filter(|k| !k.is_empty());
    let a = s
        .api
        .call(&ctx.who, Method::POST, "/v1/messages", Some(req), key)
        .await;
    if a.ok() {
        return redirect(&format!(
            "/console/messages/{}?done=sent",
            segment(text(&a.body, "id"))
        ));
    }
    if a.status == StatusCode::UNAUTHORIZED {
        return failed(&a);
    }
    let (status, n) = if a.status.is_server_error() {
        (a.status, Some(unknown_outcome("the message")))
    } else if a.code() == "template_not_found" {
        // The API's words name its routes; a person gets where to look.
        (
            a.status,
            Some(Notice::Problem(
                "that template (name and language) is not in the sender's catalogue: pick one \
                 of the suggestions, see the Templates page, or ask an admin to sync it from \
                 Meta"
                    .into(),
            )),
        )
    } else {
        problem(&a)
    };
    // The form comes back as it was typed (the same key if the outcome is not known).
    let typed = form_again(&a, f);
    render_messages(&s, &ctx, &HashMap::new(), &typed, status, n).await
}

/// The separator of a suggestion's name and language: never in a template's name (Meta's
/// are lower-case letters, digits and underscores).
const NAME_LANGUAGE: &str = " · ";

/// A suggestion of the send form: a template with its language, so that choosing it
/// chooses both.
fn suggestion(name: &str, language: &str) -> String {
    format!("{name}{NAME_LANGUAGE}{language}")
}

/// The send form's template and language: a suggestion (`name · language`) names both; a
/// bare name takes the language field (`en_US` when it is empty, as the field's first value
/// was). A suggestion and a language field that say two languages are refused: which one
/// was meant is not known.
fn template_of(template: &str, language: &str) -> Result<(String, String), String> {
    match template.split_once(NAME_LANGUAGE.trim()) {
        Some((name, chosen)) => {
            let (name, chosen) = (name.trim(), chosen.trim());
            if !language.is_empty() && language != chosen {
                return Err(format!(
                    "the template chosen is in {chosen}, but the language says {language}: \
                     empty the language field, or choose the template in {language}"
                ));
            }
            Ok((name.to_owned(), chosen.to_owned()))
        }
        None if language.is_empty() => Ok((template.to_owned(), "en_US".to_owned())),
        None => Ok((template.to_owned(), language.to_owned())),
    }
}

/// A send form refused before any request: it comes back as typed, its key kept (an
/// earlier sending of it may have had an unknown outcome: the same body again with the
/// same key is still done at most once), without its CSRF field (the page has its own).
fn form_again_unsent(mut form: Form) -> Form {
    form.remove("csrf");
    form
}

async fn message(State(s): S, ctx: Ctx, Path(id): Path<String>, q: Q) -> Response {
    let a = s
        .api
        .get(&ctx.who, &format!("/v1/messages/{}", segment(&id)))
        .await;
    if !a.ok() {
        return failed(&a);
    }
    let m = &a.body;
    // The number it went from, named as the dashboard names numbers: one read of the
    // account's numbers per page view.
    let senders = super::senders::Senders::read(&s, &ctx).await;
    let body = html! {
        dl.facts {
            dt { "Id" } dd { (text(m, "id")) }
            dt { "From" } dd #message-from { (senders.sent_from(&m["from"])) }
            dt { "To" } dd { (text(m, "to")) }
            dt { "Status" } dd #message-status { (text(m, "status")) }
            dt { "Template" } dd { (m["template"]["name"].as_str().unwrap_or("(session text)")) " " (m["template"]["language"].as_str().unwrap_or("")) }
            dt { "Your reference" } dd { (m["client_reference"].as_str().unwrap_or("—")) }
            dt { "Created" } dd { (when(&m["created_at"])) }
            dt { "Updated" } dd { (when(&m["updated_at"])) }
            @if !m["error"].is_null() {
                dt { "Failure" }
                dd #message-failure { "Code " (m["error"]["code"].to_string().trim_matches('"')) ": " (text(&m["error"], "title")) }
                @if let Some(hint) = m["error"]["hint"].as_str().filter(|h| !h.is_empty()) {
                    dt { "What to do" }
                    dd #message-hint { (hint) }
                }
            }
        }
        div.table-wrap {
            table {
                caption { "Events" }
                thead { tr { th scope="col" { "Status" } th scope="col" { "At" } } }
                tbody {
                    @for e in m["events"].as_array().into_iter().flatten() {
                        tr { td { (text(e, "status")) } td { (when(&e["at"])) } }
                    }
                }
            }
        }
        p { a href="/console/messages" { "All messages" } }
    };
    page(
        StatusCode::OK,
        frame(
            "Message",
            &ctx.chrome("/console/messages"),
            done(&q.0).as_ref(),
            body,
        ),
    )
}

// ------------------------------------------------------------------ opt-outs

async fn opt_outs(State(s): S, ctx: Ctx, q: Q) -> Response {
    let cursor = q.0.get("cursor").cloned().unwrap_or_default();
    render_opt_outs(&s, &ctx, &cursor, StatusCode::OK, done(&q.0), ("", "")).await
}

/// The opt-outs page; the add form shows `typed` (a refused addition's, as typed).
async fn render_opt_outs(
    s: &ConsoleState,
    ctx: &Ctx,
    cursor: &str,
    status: StatusCode,
    n: Option<Notice>,
    (typed, typed_scope): (&str, &str),
) -> Response {
    let qs = query(&[("limit", "50"), ("cursor", cursor)]);
    let a = s.api.get(&ctx.who, &format!("/v1/opt-outs?{qs}")).await;
    if !a.ok() {
        return failed(&a);
    }
    let list = a.body["opt_outs"].as_array().cloned().unwrap_or_default();
    let can_remove = ctx.may("DELETE", "/v1/opt-outs/{key}");
    let body = html! {
        @if ctx.may("PUT", "/v1/opt-outs/{key}") {
            h2 { "Add an opt-out" }
            form.stack method="post" action="/console/opt-outs" {
                (csrf(&ctx.csrf))
                div { label for="phone" { "Phone (E.164) or WhatsApp user id" } input #phone type="text" name="phone" value=(typed) required; }
                div {
                    label for="scope" { "Scope" }
                    select #scope name="scope" {
                        option value="all" { "all messages" }
                        option value="marketing" selected[typed_scope == "marketing"] { "marketing only" }
                    }
                }
                button type="submit" { "Opt out" }
            }
        }
        div.table-wrap {
            table.stack #opt-outs {
                caption { "Opted-out numbers" }
                thead { tr { th scope="col" { "Phone" } th scope="col" { "User id" } th scope="col" { "Scope" } th scope="col" { "Source" } th scope="col" { "Since" } @if can_remove { th scope="col" { "Action" } } } }
                tbody {
                    @for o in &list {
                        // The key it is kept under: a copy under a user id also names the
                        // phone, and only its own key removes it once the two are unpaired.
                        @let key = text(o, "key");
                        tr {
                            td data-label="Phone" { (text(o, "phone")) } td data-label="User id" { (text(o, "user_id")) } td data-label="Scope" { (text(o, "scope")) } td data-label="Source" { (text(o, "source")) } td data-label="Since" { (when(&o["created_at"])) }
                            @if can_remove {
                                td data-label="Action" {
                                    form.inline method="post" action="/console/opt-outs/remove" {
                                        (csrf(&ctx.csrf))
                                        input type="hidden" name="phone" value=(key);
                                        button.danger type="submit" aria-label=(format!("Remove the opt-out of {key}")) { "Remove" }
                                    }
                                }
                            }
                        }
                    }
                    // As many columns as the head has (the action's only for who may remove).
                    @if list.is_empty() { tr { td colspan=(if can_remove { 6 } else { 5 }) { "No opt-outs." } } }
                }
            }
        }
        @if let Some(c) = a.body["next_cursor"].as_str() {
            p { a href=(format!("/console/opt-outs?{}", query(&[("cursor", c)]))) { "More" } }
        }
    };
    page(
        status,
        frame(
            "Opt-outs",
            &ctx.chrome("/console/opt-outs"),
            n.as_ref(),
            body,
        ),
    )
}

async fn opt_out_action(s: &ConsoleState, ctx: &Ctx, body: &Bytes, method: Method) -> Response {
    let f = match form(s, ctx, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let phone = field(&f, "phone");
    // A role that may not is refused by the API (audited), whatever was typed: never
    // asked to mend the form or to confirm what it may not do.
    let allowed = ctx.may(method.as_str(), "/v1/opt-outs/{key}");
    if phone.is_empty() && allowed {
        let n = Some(Notice::Problem("enter a phone number".into()));
        let scope = field(&f, "scope");
        return render_opt_outs(s, ctx, "", StatusCode::BAD_REQUEST, n, ("", scope)).await;
    }
    let removing = method == Method::DELETE;
    if removing && !confirmed(&f) && allowed {
        let c = Confirm {
            nav: "/console/opt-outs",
            question: format!("Remove the opt-out of {phone}?"),
            means: "Messages to this recipient are sent again, marketing included. Remove an \
                    opt-out only when the recipient asked to hear from you again.",
            button: "Remove the opt-out",
            back: "/console/opt-outs".into(),
        };
        return confirm_page(ctx, c, "/console/opt-outs/remove", &[("phone", phone)]);
    }
    // (A refused role's empty phone still names a route: the API's gate answers first.)
    let uri = format!(
        "/v1/opt-outs/{}",
        segment(if phone.is_empty() { "-" } else { phone })
    );
    let req = (!removing).then(|| json!({"scope": field(&f, "scope")}));
    let a = s.api.call(&ctx.who, method, &uri, req, None).await;
    match a.status {
        st if st.is_success() && removing => redirect("/console/opt-outs?done=opt_out_removed"),
        st if st.is_success() => redirect("/console/opt-outs?done=opt_out_added"),
        StatusCode::UNAUTHORIZED => failed(&a),
        _ => {
            let (status, n) = problem(&a);
            // A refused addition keeps what was typed and chosen, to be mended (its scope
            // too: sent again as "all", a marketing opt-out would stop every message); a
            // removal has none.
            let typed = if removing {
                ("", "")
            } else {
                (phone, field(&f, "scope"))
            };
            render_opt_outs(s, ctx, "", status, n, typed).await
        }
    }
}

async fn add_opt_out(State(s): S, ctx: Ctx, body: Bytes) -> Response {
    opt_out_action(&s, &ctx, &body, Method::PUT).await
}

async fn remove_opt_out(State(s): S, ctx: Ctx, body: Bytes) -> Response {
    opt_out_action(&s, &ctx, &body, Method::DELETE).await
}

// ------------------------------------------------------------------ API keys

/// A role as people read it (the choices' words: `read_only` is "read-only").
fn role_label(role: &str) -> &str {
    match role {
        "read_only" => "read-only",
        other => other,
    }
}

/// The role choice, with `selected` (a role's API name) chosen.
fn role_choice(id: &str, selected: Option<&str>) -> Markup {
    let roles = [
        ("read_only", "read-only"),
        ("operator", "operator"),
        ("admin", "admin"),
    ];
    html! {
        select id=(id) name="role" {
            @for (value, label) in roles {
                option value=(value) selected[selected == Some(value)] { (label) }
            }
        }
    }
}

/// A secret shown once, on the page that created it.
fn shown_once(title: &str, key: &str) -> Markup {
    html! {
        section.notice.done aria-labelledby="once-title" {
            h2 #once-title { (title) }
            p { "Copy it now: it is shown this once and cannot be shown again." }
            p.secret #new-key { (key) }
        }
    }
}

async fn api_keys(State(s): S, ctx: Ctx, q: Q) -> Response {
    let cursor = q.0.get("cursor").map_or("", String::as_str);
    render_keys(&s, &ctx, StatusCode::OK, done(&q.0), None, [""; 3], cursor).await
}

/// The API keys page: the page of keys after `cursor` (`""`: the first), with a link to
/// the next one when there is one.
async fn render_keys(
    s: &ConsoleState,
    ctx: &Ctx,
    status: StatusCode,
    n: Option<Notice>,
    once: Option<Markup>,
    [typed_name, typed_role, typed_expiry]: [&str; 3],
    cursor: &str,
) -> Response {
    let a = s
        .api
        .get(
            &ctx.who,
            &format!("/v1/api-keys?{}", query(&[("cursor", cursor)])),
        )
        .await;
    // A key just made is shown whatever the list's read does: it is shown this once, and
    // an error page in its place would leave a working key nobody has seen.
    let listed = a.ok();
    if !listed && once.is_none() {
        return failed(&a);
    }
    let keys = a.body["api_keys"].as_array().cloned().unwrap_or_default();
    let body = html! {
        @if let Some(o) = once { (o) }
        @if !listed {
            p.notice role="status" { "The list of keys could not be read just now: copy the key above, then reload this page to see the list." }
        }
        h2 { "Create a key" }
        form.stack method="post" action="/console/api-keys" {
            (csrf(&ctx.csrf))
            // A browser counts `maxlength` in UTF-16 units (an emoji is two), the API in
            // characters (100): twice its limit lets every name it takes be typed, and it
            // refuses a longer one in words.
            div { label for="key-name" { "Name" } input #key-name type="text" name="name" maxlength="200" value=(typed_name) required; }
            div { label for="key-role" { "Role" } (role_choice("key-role", Some(typed_role).filter(|r| !r.is_empty()))) }
            div { label for="key-expiry" { "Expires after (days, optional)" } input #key-expiry type="number" name="expires_in_days" min="1" max="3650" value=(typed_expiry); }
            button type="submit" { "Create key" }
        }
        div.table-wrap {
            table.stack #api-keys {
                caption { "API keys" }
                thead { tr { th scope="col" { "Name" } th scope="col" { "Role" } th scope="col" { "Status" } th scope="col" { "Created" } th scope="col" { "Expires" } th scope="col" { "Actions" } } }
                tbody {
                    @for k in &keys {
                        @let id = segment(text(k, "id"));
                        @let name = text(k, "name");
                        tr {
                            td data-label="Name" { (name) } td data-label="Role" { (role_label(text(k, "role"))) } td.status data-label="Status" { (text(k, "status")) }
                            td.wrap data-label="Created" {
                                (when(&k["created_at"]))
                                @if let Some(by) = key_maker(&k["created_by"], ctx) { br; (by) }
                            }
                            td data-label="Expires" { (when(&k["expires_at"])) }
                            td data-label="Actions" {
                                @if text(k, "status") == "active" {
                                    form.inline method="post" action=(format!("/console/api-keys/{id}/rotate")) {
                                        (csrf(&ctx.csrf))
                                        label for=(format!("grace-{id}")) { "Old key works for (hours)" }
                                        input id=(format!("grace-{id}")) type="number" name="grace_period_hours" min="0" max="168" value="24";
                                        button type="submit" aria-label=(format!("Rotate {name}")) { "Rotate" }
                                    }
                                }
                                @if matches!(text(k, "status"), "active" | "expiring") {
                                    form.inline method="post" action=(format!("/console/api-keys/{id}/revoke")) {
                                        (csrf(&ctx.csrf))
                                        input type="hidden" name="name" value=(name);
                                        button.danger type="submit" aria-label=(format!("Revoke {name}")) { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                    @if keys.is_empty() && listed { tr { td colspan="6" { "No keys." } } }
                }
            }
        }
        @if let Some(c) = a.body["next_cursor"].as_str() {
            p { a href=(format!("/console/api-keys?{}", query(&[("cursor", c)]))) { "More keys" } }
        }
        @if !cursor.is_empty() {
            p { a href="/console/api-keys" { "First page of keys" } }
        }
    };
    page(
        status,
        frame(
            "API keys",
            &ctx.chrome("/console/api-keys"),
            n.as_ref(),
            body,
        ),
    )
}

/// A positive number field, absent when empty; `Err` names the field.
fn number(f: &Form, name: &str, label: &str) -> Result<Option<i64>, Notice> {
    let v = field(f, name);
    if v.is_empty() {
        return Ok(None);
    }
    v.parse::<i64>()
        .map(Some)
        .map_err(|_| Notice::Problem(format!("{label} must be a whole number")))
}

async fn create_key(State(s): S, ctx: Ctx, body: Bytes) -> Response {
    let f = match form(&s, &ctx, &body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let mut req = json!({"name": field(&f, "name"), "role": field(&f, "role")});
    // What was typed and chosen, shown again on a refusal to be mended.
    let typed = [
        field(&f, "name"),
        field(&f, "role"),
        field(&f, "expires_in_days"),
    ];
    match number(&f, "expires_in_days", "expiry") {
        Ok(Some(d)) => req["expires_in_days"] = json!(d),
        Ok(None) => {}
        Err(n) => {
            return render_keys(&s, &ctx, StatusCode::BAD_REQUEST, Some(n), None, typed, "").await
        }
    }
    let a = s
        .api
        .call(&ctx.who, Method::POST, "/v1/api-keys", Some(req), None)
        .await;
    if a.ok() {
        let once = shown_once("Your new key", text(&a.body, "key"));
        let name = text(&a.body, "name");
        let twin = twin_of(&s, &ctx, text(&a.body, "id"), name).await;
        let n = Some(Notice::Done(match twin {
            // Most often the form sent twice (a double click, a reload): the first answer's
            // key was shown to no one, and works.
            Some(created) => format!(
                "Key “{name}” created. Another active key of that name was created at \
                 {created}: if nobody copied it, revoke it."
            ),
            None => format!("Key “{name}” created."),
        }));
        return render_keys(&s, &ctx, StatusCode::CREATED, n, Some(once), [""; 3], "").await;
    }
    if a.status == StatusCode::UNAUTHORIZED {
        return failed(&a);
    }
    let (status, n) = problem(&a);
    render_keys(&s, &ctx, status, n, None, typed, "").await
}

async fn rotate_key(State(s): S, ctx: Ctx, Path(id): Path<String>, body: Bytes) -> Response {
    let f = match form(&s, &ctx, &body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let mut req = json!({});
    match number(&f, "grace_period_hours", "the grace period") {
        Ok(Some(h)) => req["grace_period_hours"] = json!(h),
        Ok(None) => {}
        Err(n) => {
            return render_keys(
                &s,
                &ctx,
                StatusCode::BAD_REQUEST,
                Some(n),
                None,
                [""; 3],
                "",
            )
            .await
        }
    }
    let uri = format!("/v1/api-keys/{}/rotate", segment(&id));
    let a = s
        .api
        .call(&ctx.who, Method::POST, &uri, Some(req), None)
        .await;
    if a.ok() {
        let once = shown_once("The rotated key", text(&a.body, "key"));
        let n = Some(Notice::Done(
            "Key rotated; the old key works until its grace period ends.".into(),
        ));
        return render_keys(&s, &ctx, StatusCode::CREATED, n, Some(once), [""; 3], "").await;
    }
    if matches!(a.status, StatusCode::UNAUTHORIZED | StatusCode::NOT_FOUND) {
        return failed(&a);
    }
    let (status, mut n) = problem(&a);
    if a.status == StatusCode::CONFLICT {
        // Most often the form sent twice (a double click, a reload): the first rotation's
        // new key was shown to no one. Say what stands, not just "not done".
        n = already_rotated(&s, &ctx, &id).await.or(n);
    }
    render_keys(&s, &ctx, status, n, None, [""; 3], "").await
}

/// Pages of a list a page looks a record up in, at most: 1,000 records, far above the
/// caps (50 live keys, 200 users) with 90 days of ended keys.
const LOOKUP_PAGES: usize = 10;

/// Every API key of the tenant as the API lists them (all pages): the newest first.
async fn every_key(s: &ConsoleState, ctx: &Ctx) -> Vec<Value> {
    s.api
        .get_every(&ctx.who, "/v1/api-keys", "api_keys", LOOKUP_PAGES)
        .await
}

/// When another active key named `name` than `id` was created in the last minute, if one
/// was (the list as the API answers it).
async fn twin_of(s: &ConsoleState, ctx: &Ctx, id: &str, name: &str) -> Option<String> {
    let keys = every_key(s, ctx).await;
    let recent = Utc::now() - chrono::Duration::minutes(1);
    keys.iter().find_map(|k| {
        let created = k["created_at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())?;
        (text(k, "id") != id
            && text(k, "name") == name
            && text(k, "status") == "active"
            && created.with_timezone(&Utc) > recent)
            .then(|| when(&k["created_at"]))
    })
}

/// What to tell an admin whose rotation was refused because the key was rotated already:
/// when the old key stops working, and which key replaced it (whose secret, if nobody
/// copied it, is gone: rotate or revoke that one).
async fn already_rotated(s: &ConsoleState, ctx: &Ctx, id: &str) -> Option<Notice> {
    let keys = every_key(s, ctx).await;
    let old = keys.iter().find(|k| text(k, "id") == id)?;
    let new_id = old["replaced_by"].as_str()?;
    let new_name = keys
        .iter()
        .find(|k| text(k, "id") == new_id)
        .map_or_else(|| new_id.to_owned(), |k| text(k, "name").to_owned());
    Some(Notice::Problem(format!(
        "This key was already rotated (the form sent twice, or another admin): it stops \
         working at {}. Its replacement is “{new_name}”; if nobody copied that key when it \
         was shown, rotate or revoke the replacement now.",
        when(&old["expires_at"])
    )))
}

async fn revoke_key(State(s): S, ctx: Ctx, Path(id): Path<String>, body: Bytes) -> Response {
    let f = match form(&s, &ctx, &body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    if !confirmed(&f) && ctx.may("DELETE", "/v1/api-keys/{id}") {
        let name = field(&f, "name");
        let c = Confirm {
            nav: "/console/api-keys",
            question: format!("Revoke the key “{name}”?"),
            means: "Requests with this key are refused within 5 seconds, and a revoked key \
                    cannot be turned back on: whatever uses it stops working until it is given \
                    another key.",
            button: "Revoke the key",
            back: "/console/api-keys".into(),
        };
        let action = format!("/console/api-keys/{}/revoke", segment(&id));
        return confirm_page(&ctx, c, &action, &[("name", name)]);
    }
    let uri = format!("/v1/api-keys/{}", segment(&id));
    let a = s.api.call(&ctx.who, Method::DELETE, &uri, None, None).await;
    if a.ok() {
        return redirect("/console/api-keys?done=key_revoked");
    }
    failed(&a)
}

// ------------------------------------------------------------------ users

async fn users(State(s): S, ctx: Ctx, q: Q) -> Response {
    let cursor = q.0.get("cursor").map_or("", String::as_str);
    render_users(&s, &ctx, StatusCode::OK, done(&q.0), ("", ""), cursor).await
}

/// The users page: the page of users after `cursor` (`""`: the first), with a link to the
/// next one when there is one; the add form shows `email` (a refused addition's, as typed).
async fn render_users(
    s: &ConsoleState,
    ctx: &Ctx,
    status: StatusCode,
    n: Option<Notice>,
    (email, role): (&str, &str),
    cursor: &str,
) -> Response {
    let a = s
        .api
        .get(
            &ctx.who,
            &format!("/v1/users?{}", query(&[("cursor", cursor)])),
        )
        .await;
    if !a.ok() {
        return failed(&a);
    }
    let list = a.body["users"].as_array().cloned().unwrap_or_default();
    let can_unlock = ctx.may("POST", "/v1/users/{id}/unlock");
    let can_change_role = ctx.may("PATCH", "/v1/users/{id}");
    let can_reset_2fa = ctx.may("DELETE", RESET_2FA.api);
    let body = html! {
        h2 { "Add a user" }
        p.hint { @if can_change_role { "A user's new role applies from their next click. You
            cannot change your own role or remove yourself: another admin can. " } @if can_unlock { "“Clear failed sign-ins”
            forgets the wrong passwords counted against a user's email, from every address, and
            their wrong two-factor codes: a user slowed down after them can sign in again at
            once. Whether a user is slowed down just now is not shown here; clearing one who is
            not changes nothing." } @if can_reset_2fa { " “Reset 2FA” turns off the two-factor
            authentication of a user who lost their authenticator, and signs them out; not on your
            own row (another admin can)." } }
        form.stack method="post" action="/console/users" {
            (csrf(&ctx.csrf))
            div { label for="user-email" { "Email" } input #user-email type="email" name="email" value=(email) autocomplete="off" required; }
            div { label for="user-role" { "Role" } (role_choice("user-role", Some(role).filter(|r| !r.is_empty()))) }
            div {
                label for="user-password" { "First password (12 to 128 characters)" }
                input #user-password type="password" name="password" minlength="12" maxlength="256" autocomplete="new-password" required;
            }
            button type="submit" { "Add user" }
        }
        div.table-wrap {
            table.stack #users {
                caption { "Users" }
                thead { tr { th scope="col" { "Email" } th scope="col" { "Role" } th scope="col" { "Two-factor" } th scope="col" { "Added" } th scope="col" { "Action" } } }
                tbody {
                    @for u in &list {
                        tr {
                            td data-label="Email" { (text(u, "email")) @if text(u, "id") == ctx.user_id { " (you)" } } td data-label="Role" { (role_label(text(u, "role"))) } td data-label="Two-factor" { (text(u, "two_factor")) } td data-label="Added" { (when(&u["created_at"])) }
                            td data-label="Action" {
                                @if can_change_role && text(u, "id") != ctx.user_id {
                                    @let select_id = format!("role-{}", text(u, "id"));
                                    form.inline method="post" action=(format!("/console/users/{}/role", segment(text(u, "id")))) {
                                        (csrf(&ctx.csrf))
                                        label for=(select_id) { "New role" }
                                        (role_choice(&select_id, Some(text(u, "role"))))
                                        button type="submit" aria-label=(format!("Change the role of {}", text(u, "email"))) { "Change role" }
                                    }
                                }
                                @if can_unlock {
                                    form.inline method="post" action=(format!("/console/users/{}/unlock", segment(text(u, "id")))) {
                                        (csrf(&ctx.csrf))
                                        button type="submit" aria-label=(format!("Clear the failed sign-ins of {}", text(u, "email"))) { "Clear failed sign-ins" }
                                    }
                                }
                                @if can_reset_2fa && text(u, "two_factor") != "none" && text(u, "id") != ctx.user_id {
                                    form.inline method="post" action=(format!("/console/users/{}/reset-2fa", segment(text(u, "id")))) {
                                        (csrf(&ctx.csrf))
                                        input type="hidden" name="email" value=(text(u, "email"));
                                        button.danger type="submit" aria-label=(format!("Reset the two-factor authentication of {}", text(u, "email"))) { "Reset 2FA" }
                                    }
                                }
                                @if text(u, "id") != ctx.user_id {
                                    form.inline method="post" action=(format!("/console/users/{}/remove", segment(text(u, "id")))) {
                                        (csrf(&ctx.csrf))
                                        input type="hidden" name="email" value=(text(u, "email"));
                                        button.danger type="submit" aria-label=(format!("Remove {}", text(u, "email"))) { "Remove" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(c) = a.body["next_cursor"].as_str() {
            p { a href=(format!("/console/users?{}", query(&[("cursor", c)]))) { "More users" } }
        }
        @if !cursor.is_empty() {
            p { a href="/console/users" { "First page of users" } }
        }
    };
    page(
        status,
        frame("Users", &ctx.chrome("/console/users"), n.as_ref(), body),
    )
}

async fn add_user(State(s): S, ctx: Ctx, body: Bytes) -> Response {
    let f = match form(&s, &ctx, &body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let req = json!({
        "email": field(&f, "email"),
        "role": field(&f, "role"),
        "password": f.get("password").map(String::as_str).unwrap_or(""),
    });
    let a = s
        .api
        .call(&ctx.who, Method::POST, "/v1/users", Some(req), None)
        .await;
    if a.ok() {
        return redirect("/console/users?done=user_added");
    }
    if a.status == StatusCode::UNAUTHORIZED {
        return failed(&a);
    }
    let (status, n) = problem(&a);
    // What was typed and chosen is kept, to be mended (a role left to the first choice
    // would add the user read-only when sent again).
    render_users(
        &s,
        &ctx,
        status,
        n,
        (field(&f, "email"), field(&f, "role")),
        "",
    )
    .await
}

async fn unlock_user(State(s): S, ctx: Ctx, Path(id): Path<String>, body: Bytes) -> Response {
    if let Err(r) = form(&s, &ctx, &body).await {
        return r;
    }
    let uri = format!("/v1/users/{}/unlock", segment(&id));
    let a = s.api.call(&ctx.who, Method::POST, &uri, None, None).await;
    if a.ok() {
        return redirect("/console/users?done=user_unlocked");
    }
    failed(&a)
}

async fn change_role(State(s): S, ctx: Ctx, Path(id): Path<String>, body: Bytes) -> Response {
    let f = match form(&s, &ctx, &body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let uri = format!("/v1/users/{}", segment(&id));
    let req = json!({"role": field(&f, "role")});
    let a = s
        .api
        .call(&ctx.who, Method::PATCH, &uri, Some(req), None)
        .await;
    if a.ok() {
        return redirect("/console/users?done=role_changed");
    }
    if a.status == StatusCode::UNAUTHORIZED || a.status == StatusCode::NOT_FOUND {
        return failed(&a);
    }
    let (status, n) = problem(&a);
    render_users(&s, &ctx, status, n, ("", ""), "").await
}

/// A user's removal or 2FA reset, from its button on the users page: the API route (a
/// `DELETE`), the console's own path after the user's id, what its confirmation page says,
/// and the notice after it.
struct UserAction {
    api: &'static str,
    console: &'static str,
    question: &'static str,
    means: &'static str,
    button: &'static str,
    done: &'static str,
}

const REMOVE: UserAction = UserAction {
    api: "/v1/users/{id}",
    console: "remove",
    question: "Remove the user",
    means: "They are signed out at once and can no longer sign in; their entries in the audit \
            log stay. To let them back, add them again. API keys they made are the account's and \
            keep working: the API keys page says who made each key; revoke theirs there.",
    button: "Remove the user",
    done: "user_removed",
};

const RESET_2FA: UserAction = UserAction {
    api: "/v1/users/{id}/2fa",
    console: "reset-2fa",
    question: "Reset the two-factor authentication of",
    means: "Their authenticator app no longer signs them in, and they are signed out at once \
            everywhere. They sign in with their password alone; where two-factor authentication \
            is required, they set it up again first. Their password, role and entries in the \
            audit log stay. Make sure it is them who asks: anyone who has their password can \
            then sign in.",
    button: "Reset two-factor authentication",
    done: "two_factor_reset",
};

async fn remove_user(State(s): S, ctx: Ctx, Path(id): Path<String>, body: Bytes) -> Response {
    user_action(&s, &ctx, &id, &body, &REMOVE).await
}

async fn reset_two_factor(State(s): S, ctx: Ctx, Path(id): Path<String>, body: Bytes) -> Response {
    user_action(&s, &ctx, &id, &body, &RESET_2FA).await
}

/// [`UserAction`] `a` on the user `id`: asked on its confirmation page first (naming the
/// user), then sent to the API; its refusal for one's own row (`409`) shown on the users page.
async fn user_action(
    s: &ConsoleState,
    ctx: &Ctx,
    id: &str,
    body: &Bytes,
    a: &UserAction,
) -> Response {
    let f = match form(s, ctx, body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    if !confirmed(&f) && ctx.may("DELETE", a.api) {
        let email = field(&f, "email");
        let c = Confirm {
            nav: "/console/users",
            question: format!("{} {email}?", a.question),
            means: a.means,
            button: a.button,
            back: "/console/users".into(),
        };
        let action = format!("/console/users/{}/{}", segment(id), a.console);
        return confirm_page(ctx, c, &action, &[("email", email)]);
    }
    let uri = a.api.replace("{id}", &segment(id));
    let res = s.api.call(&ctx.who, Method::DELETE, &uri, None, None).await;
    if res.ok() {
        return redirect(&format!("/console/users?done={}", a.done));
    }
    if res.status == StatusCode::CONFLICT {
        let (status, n) = problem(&res);
        return render_users(s, ctx, status, n, ("", ""), "").await;
    }
    failed(&res)
}

// ------------------------------------------------------------------ audit

/// The tenant's users (by email) and API keys (by name), by id, for the audit log.
async fn actor_names(s: &ConsoleState, ctx: &Ctx) -> HashMap<String, String> {
    let mut names = HashMap::new();
    let users = s
        .api
        .get_every(&ctx.who, "/v1/users", "users", LOOKUP_PAGES)
        .await;
    for u in &users {
        names.insert(
            text(u, "id").to_owned(),
            format!("user {}", text(u, "email")),
        );
    }
    for k in &every_key(s, ctx).await {
        names.insert(
            text(k, "id").to_owned(),
            format!("key “{}”", text(k, "name")),
        );
    }
    names
}

/// An audit event's details as people read them: `name: value` pairs (they hold ids,
/// masked numbers, codes and reasons, never content or secrets: the API's promise).
fn details_text(details: &Value) -> String {
    let Some(map) = details.as_object() else {
        return String::new();
    };
    map.iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}: {s}"),
            other => format!("{k}: {other}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn audit(State(s): S, ctx: Ctx, q: Q) -> Response {
    let get = |k: &str| q.0.get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
    let (action, from, to, cursor) = (get("action"), get("since"), get("until"), get("cursor"));
    let mut n = None;
    let mut status = StatusCode::OK;
    let parse = |d: &str, next: bool| {
        let d = form_day(d)?;
        if next {
            next_day_start(d)
        } else {
            Some(day_start(d))
        }
    };
    let since = if from.is_empty() {
        Some(String::new())
    } else {
        parse(&from, false)
    };
    let until = if to.is_empty() {
        Some(String::new())
    } else {
        parse(&to, true)
    };
    let mut events = Vec::new();
    let mut next = None;
    match (since, until) {
        // Days as `YYYY-MM-DDT00:00:00Z` (four-digit years): in order as text. A window that
        // holds nothing, said in the form's words (the API's `400` names since and until).
        (Some(since), Some(until)) if !since.is_empty() && !until.is_empty() && since >= until => {
            status = StatusCode::BAD_REQUEST;
            n = Some(Notice::Problem(
                "the From day must not be after the To day".into(),
            ));
        }
        (Some(since), Some(until)) => {
            let qs = query(&[
                ("action", &action),
                ("since", &since),
                ("until", &until),
                ("cursor", &cursor),
            ]);
            let a = s.api.get(&ctx.who, &format!("/v1/audit?{qs}")).await;
            if a.status == StatusCode::BAD_REQUEST {
                (status, n) = problem(&a);
            } else if !a.ok() {
                return failed(&a);
            } else {
                events = a.body["events"].as_array().cloned().unwrap_or_default();
                next = a.body["next_cursor"].as_str().map(str::to_owned);
            }
        }
        _ => {
            status = StatusCode::BAD_REQUEST;
            n = Some(Notice::Problem("dates must be days (YYYY-MM-DD)".into()));
        }
    }
    // Who the ids are, as far as the tenant's users and keys still say (a removed user's
    // or an ended key's id stays as it is).
    let names = if events.is_empty() {
        HashMap::new()
    } else {
        actor_names(&s, &ctx).await
    };
    // A long chain is verified over several requests: each page offers to go on.
    let mut verify_next: Option<String> = None;
    if q.0.contains_key("verify") && n.is_none() {
        let path = match q.0.get("verify_cursor") {
            Some(c) => format!("/v1/audit/verify?{}", query(&[("cursor", c)])),
            None => "/v1/audit/verify".to_owned(),
        };
        let v = s.api.get(&ctx.who, &path).await;
        if v.status == StatusCode::BAD_REQUEST {
            (status, n) = problem(&v);
        } else if !v.ok() {
            return failed(&v);
        } else {
            let checked = v.body["checked"].as_i64().unwrap_or(0);
            verify_next = v.body["next_cursor"].as_str().map(str::to_owned);
            n = Some(match v.body["valid"].as_bool() {
                Some(true) if verify_next.is_some() => Notice::Done(format!(
                    "No break in the first {checked} events; the chain is longer than one \
                     check: continue below."
                )),
                Some(true) => Notice::Done(format!(
                    "The audit chain is intact ({checked} events checked)."
                )),
                // Where and why, as the API says: without them a break cannot be found.
                _ => Notice::Problem(format!(
                    "the audit chain does not verify ({checked} events checked){}{}",
                    v.body["broken_at"]
                        .as_i64()
                        .map(|at| format!("; it breaks at event {at}"))
                        .unwrap_or_default(),
                    v.body["reason"]
                        .as_str()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                )),
            });
        }
    }
    let body = html! {
        form.filters method="get" action="/console/audit" {
            div { label for="a-action" { "Action (e.g. POST /v1/api-keys)" } input #a-action type="text" name="action" value=(action); }
            div { label for="a-since" { "From (UTC day)" } input #a-since type="date" name="since" value=(from); }
            div { label for="a-until" { "To (UTC day)" } input #a-until type="date" name="until" value=(to); }
            button type="submit" { "Filter" }
        }
        form.filters method="get" action="/console/audit" {
            input type="hidden" name="verify" value="1";
            @if let Some(c) = &verify_next {
                input type="hidden" name="verify_cursor" value=(c);
                button.quiet #verify-continue type="submit" { "Continue verifying" }
            } @else {
                button.quiet type="submit" { "Verify the chain" }
            }
        }
        div.table-wrap {
            table.stack #audit {
                caption { "Audit events, newest first" }
                thead { tr { th scope="col" { "At" } th scope="col" { "Actor" } th scope="col" { "Action" } th scope="col" { "Outcome" } th scope="col" { "Details" } th scope="col" { "IP" } } }
                tbody {
                    @for e in &events {
                        @let (kind, id) = (text(&e["actor"], "type"), text(&e["actor"], "id"));
                        tr {
                            td data-label="At" { (when(&e["at"])) }
                            td.wrap data-label="Actor" {
                                @match names.get(id) {
                                    Some(name) => { (name) br; span.hint { (id) } }
                                    None => { (kind) " " (id) }
                                }
                            }
                            td data-label="Action" { (text(e, "action")) }
                            td data-label="Outcome" { (text(e, "outcome")) }
                            td.wrap data-label="Details" { (details_text(&e["details"])) }
                            td data-label="IP" { (e["ip"].as_str().unwrap_or("—")) }
                        }
                    }
                    @if events.is_empty() {
                        tr { td colspan="6" {
                            @if next.is_some() {
                                "No matching events on this page; older ones may match (Older events, below)."
                            } @else {
                                "No events."
                            }
                        } }
                    }
                }
            }
        }
        @if let Some(c) = &next {
            p { a href=(format!("/console/audit?{}", query(&[("action", &action), ("since", &from), ("until", &to), ("cursor", c)]))) { "Older events" } }
        }
    };
    page(
        status,
        frame("Audit log", &ctx.chrome("/console/audit"), n.as_ref(), body),
    )
}

// ------------------------------------------------------------------ settings

async fn settings(State(s): S, ctx: Ctx, q: Q) -> Response {
    let typed = TypedSettings {
        failures_cursor: q.0.get("failures_cursor").map(String::as_str),
        ..TypedSettings::default()
    };
    render_settings(&s, &ctx, StatusCode::OK, done(&q.0), typed).await
}

/// How many of the callbacks given up the settings page shows at a time.
const CALLBACK_FAILURES_SHOWN: usize = 20;

/// What a refused settings form had typed, shown again to be mended (not the stored value:
/// fifteen networks pasted, one malformed, were all lost).
#[derive(Default)]
struct TypedSettings<'a> {
    cidrs: Option<&'a str>,
    url: Option<&'a str>,
    /// The page of callbacks given up to show (its "Older" link's cursor).
    failures_cursor: Option<&'a str>,
}

async fn render_settings(
    s: &ConsoleState,
    ctx: &Ctx,
    status: StatusCode,
    n: Option<Notice>,
    typed: TypedSettings<'_>,
) -> Response {
    let allow = s.api.get(&ctx.who, "/v1/settings/ip-allowlist").await;
    if !allow.ok() {
        return failed(&allow);
    }
    let cb = s.api.get(&ctx.who, "/v1/settings/status-callback").await;
    if !cb.ok() {
        return failed(&cb);
    }
    let tf = s.api.get(&ctx.who, "/v1/settings/2fa").await;
    if !tf.ok() {
        return failed(&tf);
    }
    // The latest callbacks given up (one page); unreadable, the rest of the page still shows.
    let limit = CALLBACK_FAILURES_SHOWN.to_string();
    let gave_up = s
        .api
        .get(
            &ctx.who,
            &format!(
                "/v1/settings/status-callback/failures?{}",
                query(&[
                    ("limit", &limit),
                    ("cursor", typed.failures_cursor.unwrap_or(""))
                ])
            ),
        )
        .await;
    let failures: Vec<Value> = if gave_up.ok() {
        gave_up.body["data"].as_array().cloned().unwrap_or_default()
    } else {
        Vec::new()
    };
    let older = gave_up
        .ok()
        .then(|| gave_up.body["next_cursor"].as_str())
        .flatten();
    let cidrs: Vec<&str> = allow.body["cidrs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let stored_url = cb.body["url"].as_str().unwrap_or("");
    let url = typed.url.unwrap_or(stored_url);
    let networks = typed
        .cidrs
        .map(str::to_owned)
        .unwrap_or_else(|| cidrs.join("\n"));
    let required = tf.body["required"].as_bool() == Some(true);
    let body = html! {
        h2 { "IP allow-list" }
        p.hint { "API keys are accepted only from these addresses (one CIDR or address a line;
            empty allows any). Console sign-ins are not limited by it." }
        form.stack method="post" action="/console/settings/ip-allowlist" {
            (csrf(&ctx.csrf))
            div { label for="cidrs" { "Allowed networks" } textarea #cidrs name="cidrs" rows="5" { (networks) } }
            button type="submit" { "Save allow-list" }
        }
        h2 { "Status callback" }
        form.stack method="post" action="/console/settings/status-callback" {
            (csrf(&ctx.csrf))
            div { label for="cb-url" { "URL (https)" } input #cb-url type="url" name="url" value=(url); }
            div {
                label for="cb-secret" { "Signing secret (at least 16 characters; leave empty to keep the current one)" }
                // Not the console password: `off` is ignored for password fields, and a
                // password manager would fill in the user's own.
                input #cb-secret type="password" name="secret" autocomplete="new-password";
            }
            @if cb.body["secret_set"].as_bool() == Some(true) { p.hint { "A secret is set." } }
            button type="submit" name="op" value="save" { "Save callback" }
            @if !stored_url.is_empty() { button.danger type="submit" name="op" value="off" { "Turn callbacks off" } }
        }
        h3 #callback-failures { "Callbacks given up" }
        p.hint { "Status callbacks your receiver did not accept in any of their attempts (or that
            were not tried while it kept failing), kept 14 days, newest first. The platform
            operator can send them again." }
        @if !gave_up.ok() {
            p.hint { "The callbacks given up could not be read just now." }
        } @else {
            div.table-wrap {
                table.stack #callback-failures-list {
                    caption { "Callbacks given up, newest first" }
                    thead { tr { th scope="col" { "Given up" } th scope="col" { "Message" } th scope="col" { "Status" } th scope="col" { "Sequence" } th scope="col" { "Attempts" } th scope="col" { "Last error" } th scope="col" { "Host" } } }
                    tbody {
                        @for f in &failures {
                            tr {
                                td data-label="Given up" { (when(&f["given_up_at"])) }
                                td data-label="Message" { a href=(format!("/console/messages/{}", text(f, "message_id"))) { (text(f, "message_id")) } }
                                td data-label="Status" { (text(f, "status")) }
                                td data-label="Sequence" { (f["sequence"].as_u64().unwrap_or(0)) }
                                td data-label="Attempts" { (f["attempts"].as_u64().unwrap_or(0)) }
                                td data-label="Last error" { (text(f, "last_error")) }
                                td data-label="Host" { (f["host"].as_str().unwrap_or("—")) }
                            }
                        }
                        @if failures.is_empty() {
                            tr { td colspan="7" { "None in the last 14 days." } }
                        }
                    }
                }
            }
            @if let Some(c) = older {
                p { a href=(format!("/console/settings?{}#callback-failures", query(&[("failures_cursor", c)]))) { "Older callbacks given up" } }
            }
        }
        h2 { "Two-factor authentication" }
        form.stack method="post" action="/console/settings/2fa" {
            (csrf(&ctx.csrf))
            div.check {
                input #tf-required type="checkbox" name="required" value="true" checked[required];
                label for="tf-required" { "Every console user must use two-factor authentication" }
            }
            button type="submit" { "Save" }
        }
    };
    page(
        status,
        frame(
            "Settings",
            &ctx.chrome("/console/settings"),
            n.as_ref(),
            body,
        ),
    )
}

async fn settings_result(
    s: &ConsoleState,
    ctx: &Ctx,
    a: Answer,
    ok: &str,
    typed: TypedSettings<'_>,
) -> Response {
    if a.ok() {
        return redirect(&format!("/console/settings?done={ok}"));
    }
    if a.status == StatusCode::UNAUTHORIZED {
        return failed(&a);
    }
    let (status, n) = problem(&a);
    render_settings(s, ctx, status, n, typed).await
}

async fn put_allowlist(State(s): S, ctx: Ctx, body: Bytes) -> Response {
    let f = match form(&s, &ctx, &body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let cidrs: Vec<&str> = field(&f, "cidrs")
        .split(['\n', ',', ' '])
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    let a = s
        .api
        .call(
            &ctx.who,
            Method::PUT,
            "/v1/settings/ip-allowlist",
            Some(json!({"cidrs": cidrs})),
            None,
        )
        .await;
    let typed = TypedSettings {
        cidrs: Some(field(&f, "cidrs")),
        ..TypedSettings::default()
    };
    settings_result(&s, &ctx, a, "allowlist", typed).await
}

async fn put_callback(State(s): S, ctx: Ctx, body: Bytes) -> Response {
    let f = match form(&s, &ctx, &body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let path = "/v1/settings/status-callback";
    if field(&f, "op") == "off" {
        let a = s.api.call(&ctx.who, Method::DELETE, path, None, None).await;
        return settings_result(&s, &ctx, a, "callback_off", TypedSettings::default()).await;
    }
    let mut req = json!({"url": field(&f, "url")});
    let secret = f.get("secret").map(String::as_str).unwrap_or("");
    if !secret.is_empty() {
        req["secret"] = json!(secret);
    }
    let a = s
        .api
        .call(&ctx.who, Method::PUT, path, Some(req), None)
        .await;
    let typed = TypedSettings {
        url: Some(field(&f, "url")),
        ..TypedSettings::default()
    };
    settings_result(&s, &ctx, a, "callback", typed).await
}

async fn put_two_factor(State(s): S, ctx: Ctx, body: Bytes) -> Response {
    let f = match form(&s, &ctx, &body).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let required = field(&f, "required") == "true";
    let a = s
        .api
        .call(
            &ctx.who,
            Method::PUT,
            "/v1/settings/2fa",
            Some(json!({"required": required})),
            None,
        )
        .await;
    settings_result(&s, &ctx, a, "two_factor_setting", TypedSettings::default()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: StatusCode) -> Answer {
        Answer {
            status,
            body: Value::Null,
            retry_after: None,
        }
    }

    /// A 429 on any page says how long to wait in words, and tells the browser too: the
    /// API's text names a header a person does not see.
    #[test]
    fn a_rate_limited_answer_says_the_wait_in_seconds_and_sets_retry_after() {
        let a = Answer {
            status: StatusCode::TOO_MANY_REQUESTS,
            body: json!({"error": {"code": "rate_limited",
                "message": "too many requests; retry after the number of seconds in Retry-After"}}),
            retry_after: Some(7),
        };
        assert_eq!(a.message(), "too many requests; try again in 7 seconds");
        let (status, notice) = problem(&a);
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert!(matches!(notice, Some(Notice::Problem(m)) if m.ends_with("in 7 seconds")));
        let page = failed(&a);
        assert_eq!(page.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            page.headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()),
            Some("7")
        );
    }

    /// A heavy route's refusal keeps its words on what is in flight, and says the wait in
    /// seconds rather than the header's name.
    #[test]
    fn a_heavy_refusal_says_what_is_in_flight_and_the_wait_in_seconds() {
        let a = Answer {
            status: StatusCode::TOO_MANY_REQUESTS,
            body: json!({"error": {"code": "rate_limited",
                "message": "another download of this account's campaign recipients is in progress; retry after the number of seconds in Retry-After"}}),
            retry_after: Some(1),
        };
        assert_eq!(
            a.message(),
            "another download of this account's campaign recipients is in progress; try again in 1 second"
        );
    }

    #[test]
    fn a_keyed_form_comes_back_with_its_key_only_when_the_outcome_is_not_known() {
        let typed: Form = [
            ("idempotency_key", "01KEY"),
            ("csrf", "token"),
            ("to", "+60123450001"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        for unknown in [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::GATEWAY_TIMEOUT,
        ] {
            let again = form_again(&answer(unknown), typed.clone());
            assert_eq!(
                form_key(&again),
                "01KEY",
                "{unknown}: sent again, done once"
            );
            assert!(!again.contains_key("csrf"));
            assert_eq!(again.get("to").map(String::as_str), Some("+60123450001"));
        }
        for refused in [
            StatusCode::BAD_REQUEST,
            StatusCode::PAYMENT_REQUIRED,
            StatusCode::CONFLICT,
            StatusCode::UNPROCESSABLE_ENTITY,
            StatusCode::TOO_MANY_REQUESTS,
        ] {
            let again = form_again(&answer(refused), typed.clone());
            assert_ne!(form_key(&again), "01KEY", "{refused}: a new request");
            assert_eq!(again.get("to").map(String::as_str), Some("+60123450001"));
        }
        assert!(!form_key(&Form::new()).is_empty());
        let Notice::Unknown(said) = unknown_outcome("the campaign") else {
            panic!("an unknown-outcome line, never 'not done'")
        };
        assert!(
            said.contains("safe") && !said.contains("nothing was changed"),
            "{said}"
        );
    }

    async fn text_of(res: Response) -> String {
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn a_refusal_that_is_not_the_role_check_is_not_called_a_role_problem() {
        let answer = |code: &str, message: &str| Answer {
            status: StatusCode::FORBIDDEN,
            body: json!({"error": {"code": code, "message": message}}),
            retry_after: None,
        };
        let suspended = text_of(failed(&answer(
            "tenant_suspended",
            "this account is suspended; contact your provider",
        )))
        .await;
        assert!(
            suspended.contains("this account is suspended"),
            "{suspended}"
        );
        assert!(!suspended.contains("Your role does not allow this"));
        let role = text_of(failed(&answer(
            "forbidden",
            "your role does not allow this",
        )))
        .await;
        assert!(role.contains("Your role does not allow this"), "{role}");
    }
}
