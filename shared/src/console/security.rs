//! The console's browser security: cookies, CSRF tokens and the response headers every
//! console answer carries.
//!
//! CSRF: a form's token is `hex(HMAC-SHA256(key, purpose ":" value))`, where `value` is
//! the session token (or, on the sign-in form, a random pre-session cookie) and `key`
//! a secret from the secret store (`{prefix}console-csrf-key`). It is checked in
//! constant time; nothing about it is stored.
//!
//! Pending sign-in: between the password step and the TOTP step the API needs both
//! again (its login checks them at once), so the console keeps them in a sealed cookie
//! ([`PENDING_COOKIE`], ChaCha20-Poly1305 under a key derived from the CSRF key, bound to
//! the browser's sign-in cookie, valid [`PENDING_SECS`] seconds), never in the page.
//!
//! Pending 2FA enrolment: the API shows a new TOTP key once, in its enrolment answer; the
//! page that shows it carries it back in its confirmation form sealed the same way (another
//! derived key, bound to the session token, valid [`ENROLMENT_SECS`] seconds), so that a
//! wrong code shows the same QR code again rather than a page without it.

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Settings;
use crate::secret::Secret;
use crate::service::Deps;

/// The session cookie: the service's session token itself. Every console cookie's name is
/// as here in local mode's plain http, and has the `__Host-` prefix when the console is
/// served with secure cookies ([`cookie_name`]).
pub const SESSION_COOKIE: &str = "kirim_session";
/// A random value set by the sign-in page; the sign-in form's CSRF token is bound to it.
pub const LOGIN_COOKIE: &str = "kirim_login";

/// The sealed email and password between the sign-in steps.
pub const PENDING_COOKIE: &str = "kirim_pending";
/// How long a pending sign-in lasts, in seconds.
pub const PENDING_SECS: i64 = 300;

pub const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
script-src 'none'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The secret store name of the CSRF key (`template.yaml`: `ConsoleCsrfKeySecret`).
pub fn csrf_key_name(settings: &Settings) -> String {
    format!("{}console-csrf-key", settings.secret_prefix)
}

/// The CSRF key, or `None` (logged) when the secret store has none or cannot be read.
pub async fn csrf_key(deps: &Deps) -> Option<Secret> {
    let name = csrf_key_name(&deps.settings);
    match deps.secrets.current(&name).await {
        Ok(Some(k)) if !k.expose().is_empty() => Some(k),
        Ok(_) => {
            tracing::error!(secret = %name, "the console's CSRF key is missing");
            None
        }
        Err(e) => {
            tracing::error!(error = %e, "the console's CSRF key cannot be read");
            None
        }
    }
}

fn mac(key: &Secret, purpose: &str, value: &str) -> Hmac<Sha256> {
    // HMAC takes keys of any length: this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key.expose().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    m.update(purpose.as_bytes());
    m.update(b":");
    m.update(value.as_bytes());
    m
}

/// The token a form bound to `value` (a session token, or the sign-in cookie) carries.
pub fn csrf_token(key: &Secret, purpose: &str, value: &str) -> String {
    hex::encode(mac(key, purpose, value).finalize().into_bytes())
}

/// Whether `given` is the token for `value`, compared in constant time.
pub fn csrf_ok(key: &Secret, purpose: &str, value: &str, given: Option<&str>) -> bool {
    let Some(bytes) = given.and_then(|g| hex::decode(g).ok()) else {
        return false;
    };
    mac(key, purpose, value).verify_slice(&bytes).is_ok()
}

/// The AEAD key of one purpose, derived from the CSRF key: a value sealed for one
/// purpose never opens as another's.
fn sealing_key(key: &Secret, purpose: &str) -> ring::aead::LessSafeKey {
    let derived = mac(key, purpose, "v1").finalize().into_bytes();
    // A 32-byte HMAC output is a valid ChaCha20-Poly1305 key: this cannot fail.
    let unbound = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &derived)
        .unwrap_or_else(|_| unreachable!("32-byte key"));
    ring::aead::LessSafeKey::new(unbound)
}

/// `plain` (a JSON object, given its expiry `x` here) sealed for `purpose`, bound to
/// `bound_to`: `base64url(nonce || ciphertext)`.
fn seal(
    key: &Secret,
    purpose: &str,
    bound_to: &str,
    mut plain: serde_json::Value,
    expires_at: i64,
) -> Option<String> {
    use base64::Engine;
    plain["x"] = serde_json::json!(expires_at);
    let mut buf = plain.to_string().into_bytes();
    let nonce_bytes: [u8; 12] = rand::random();
    let nonce = ring::aead::Nonce::assume_unique_for_key(nonce_bytes);
    sealing_key(key, purpose)
        .seal_in_place_append_tag(nonce, ring::aead::Aad::from(bound_to.as_bytes()), &mut buf)
        .ok()?;
    let mut out = nonce_bytes.to_vec();
    out.extend_from_slice(&buf);
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out))
}

/// What [`seal`] sealed for `purpose` and `bound_to`, unless it has expired at `now`.
fn open(
    key: &Secret,
    purpose: &str,
    bound_to: &str,
    sealed: &str,
    now: i64,
) -> Option<serde_json::Value> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sealed)
        .ok()?;
    if bytes.len() < 12 {
        return None;
    }
    let (nonce, sealed) = bytes.split_at(12);
    let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buf = sealed.to_vec();
    let plain = sealing_key(key, purpose)
        .open_in_place(nonce, ring::aead::Aad::from(bound_to.as_bytes()), &mut buf)
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(plain).ok()?;
    if v["x"].as_i64()? < now {
        return None;
    }
    Some(v)
}

/// Seals an email and password for the TOTP step: `base64url(nonce || ciphertext)`,
/// bound to `login_nonce` (the sign-in cookie) and expiring `PENDING_SECS` after `now`.
pub fn seal_pending(
    key: &Secret,
    login_nonce: &str,
    email: &str,
    password: &str,
    now: i64,
) -> Option<String> {
    let plain = serde_json::json!({"e": email, "p": password});
    seal(
        key,
        "pending-login-key",
        login_nonce,
        plain,
        now + PENDING_SECS,
    )
}

/// Opens a pending sign-in: its email and password, if it was sealed by this key for
/// this sign-in cookie and has not expired.
pub fn open_pending(
    key: &Secret,
    login_nonce: &str,
    sealed: &str,
    now: i64,
) -> Option<(String, Secret)> {
    let v = open(key, "pending-login-key", login_nonce, sealed, now)?;
    Some((v["e"].as_str()?.to_owned(), Secret::new(v["p"].as_str()?)))
}

/// How long a 2FA enrolment's QR code can be shown again after a wrong code, in seconds
/// (as long as a session may start one: `users::ENROLL_SIGNED_IN_WITHIN`).
pub const ENROLMENT_SECS: i64 = 15 * 60;

/// Seals the key and set-up link of a 2FA enrolment (the API's answer, which it shows once) for
/// the confirmation form of the page that showed it, bound to `session` (the session
/// token) and expiring [`ENROLMENT_SECS`] after `now`: a wrong code shows the same QR
/// code and key again, to the same session only, without asking the API for the secret
/// again. Only the console's key opens it; it is never in a URL or a log.
pub fn seal_enrolment(
    key: &Secret,
    session: &str,
    secret: &str,
    otpauth_uri: &str,
    now: i64,
) -> Option<String> {
    let plain = serde_json::json!({"s": secret, "u": otpauth_uri});
    seal(
        key,
        "pending-enrolment-key",
        session,
        plain,
        now + ENROLMENT_SECS,
    )
}

/// The key and set-up link [`seal_enrolment`] sealed for this session, unless it has
/// expired.
pub fn open_enrolment(
    key: &Secret,
    session: &str,
    sealed: &str,
    now: i64,
) -> Option<(Secret, Secret)> {
    let v = open(key, "pending-enrolment-key", session, sealed, now)?;
    Some((Secret::new(v["s"].as_str()?), Secret::new(v["u"].as_str()?)))
}

/// The prefix browsers keep for cookies set by this very host, over HTTPS, for `Path=/`,
/// without a `Domain`: no other host (a sibling subdomain that was taken over) can set or
/// shadow one, where it could plant `kirim_session=…; Domain=example.com; Path=/console`
/// that the browser sends first (signing the victim into the attacker's account).
const HOST_PREFIX: &str = "__Host-";

/// Console cookie `name` as the browser holds it: `__Host-{name}` when the console is
/// served with secure cookies (HTTPS: `ConsoleOptions::secure_cookies`); as it is over local
/// mode's plain http, where browsers refuse a `__Host-` cookie (it must be `Secure`).
pub fn cookie_name(name: &str, secure: bool) -> String {
    if secure {
        format!("{HOST_PREFIX}{name}")
    } else {
        name.to_owned()
    }
}

/// The values the request carries for the cookie named `name` as held ([`cookie_name`]).
fn cookie_values<'h>(
    headers: &'h HeaderMap,
    name: &str,
    secure: bool,
) -> impl Iterator<Item = &'h str> {
    let name = cookie_name(name, secure);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .filter(move |(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// The value of console cookie `name` (named as [`cookie_name`] says), if the request has it
/// exactly once. Twice is nobody's: a cookie of the same name set for a parent domain or
/// another path (planted) comes with ours, in an order the page cannot trust, so neither
/// is used (for the session cookie: signed out).
pub fn cookie(headers: &HeaderMap, name: &str, secure: bool) -> Option<String> {
    let mut values = cookie_values(headers, name, secure);
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    Some(first.to_owned()).filter(|v| !v.is_empty())
}

/// Whether the request carries console cookie `name` at all (once, or more).
pub fn has_cookie(headers: &HeaderMap, name: &str, secure: bool) -> bool {
    cookie_values(headers, name, secure).next().is_some()
}

/// A `Set-Cookie` value for console cookie `name` (named as [`cookie_name`] says):
/// `HttpOnly; SameSite=Strict`, and with secure cookies `Path=/; Secure` (what `__Host-`
/// requires; the API, served from the same host, never reads a cookie), over local mode's
/// plain http `Path=/console`; `max_age` 0 removes it, `None` makes it last as long as the
/// browser.
pub fn set_cookie(name: &str, value: &str, secure: bool, max_age: Option<i64>) -> HeaderValue {
    let name = cookie_name(name, secure);
    let path = if secure { "/" } else { "/console" };
    let mut c = format!("{name}={value}; HttpOnly; SameSite=Strict; Path={path}");
    if secure {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static("kirim_invalid=1"))
}

/// The console's cookies as they were named over HTTPS before they became `__Host-` cookies
/// (set `HttpOnly; SameSite=Strict; Path=/console; Secure`): a browser signed in before the
/// rename still sends them, and a secure console no longer reads them.
pub const RETIRED_COOKIES: [&str; 3] = [SESSION_COOKIE, LOGIN_COOKIE, PENDING_COOKIE];

/// A `Set-Cookie` value that removes console cookie `name` as it was set over HTTPS before
/// the `__Host-` prefix (its path and attributes: a removal must name the same path).
pub fn retired_cookie_removal(name: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}=; Path=/console; Secure; HttpOnly; SameSite=Strict; Max-Age=0"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("kirim_invalid=1"))
}

/// The old-named session tokens this instance ended already, by digest, the newest
/// [`RETIRED_HERE_MAX`] of them.
static RETIRED_HERE: std::sync::Mutex<std::collections::VecDeque<[u8; 32]>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());
const RETIRED_HERE_MAX: usize = 1024;

/// Whether `token` is an old-named session token this instance has not ended yet (and,
/// if so, remembers it as ended).
fn first_retired_here(token: &str) -> bool {
    use sha2::Digest;
    let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
    let Ok(mut seen) = RETIRED_HERE.lock() else {
        return true;
    };
    if seen.contains(&digest) {
        return false;
    }
    if seen.len() >= RETIRED_HERE_MAX {
        seen.pop_front();
    }
    seen.push_back(digest);
    true
}

/// Over HTTPS, a request that carries a console cookie of the old name ([`RETIRED_COOKIES`])
/// is answered with a `Set-Cookie` that removes each; an old `kirim_session` that comes once
/// with a session token also ends that session server-side, as a sign-out does (one
/// conditional write, only for such a request: after the removal the browser sends it no
/// more). Without this the old cookie stayed until the browser closed, and its session
/// valid until it idled out. The old session is ended whatever its state (a failure to
/// end it is logged, the request goes on): the cookie is no longer read, so nothing signs
/// in with it here.
pub async fn retire_old_cookies(
    axum::extract::State(deps): axum::extract::State<std::sync::Arc<Deps>>,
    req: Request,
    next: Next,
) -> Response {
    let headers = req.headers();
    let retired: Vec<&str> = RETIRED_COOKIES
        .into_iter()
        .filter(|name| has_cookie(headers, name, false))
        .collect();
    if retired.is_empty() {
        return next.run(req).await;
    }
    // Once only (a cookie planted for the parent domain, which this host cannot remove,
    // would otherwise cost a write for every value on every request).
    // And once per instance for a token (the same planted cookie, sent again with every
    // request because this host's removal cannot reach it, ends nothing more after its
    // first write: `RETIRED_HERE`).
    let old_session = cookie(headers, SESSION_COOKIE, false)
        .filter(|t| t.starts_with(crate::service::users::SESSION_PREFIX))
        .filter(|t| first_retired_here(t));
    if let Some(token) = old_session {
        match crate::service::users::logout(&deps, &token).await {
            Ok(()) => tracing::info!("console: a session under the old cookie name ended"),
            Err(e) => {
                tracing::warn!(error = %e, "console: a session under the old cookie name could not be ended")
            }
        }
    }
    let mut res = next.run(req).await;
    for name in retired {
        res.headers_mut()
            .append(header::SET_COOKIE, retired_cookie_removal(name));
    }
    res
}

/// `Strict-Transport-Security` for a year on every answer of a console served over HTTPS
/// (`ConsoleOptions::secure_cookies`).
pub async fn strict_transport(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    res.headers_mut().insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    res
}

/// Adds the console's security headers to every answer.
pub async fn headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_session_token_is_ended_once_per_instance() {
        let token = format!("{}retired-once-test", crate::service::users::SESSION_PREFIX);
        assert!(first_retired_here(&token));
        assert!(
            !first_retired_here(&token),
            "not a second write for the same token"
        );
        assert!(first_retired_here(&format!("{token}-other")));
    }

    #[test]
    fn a_csrf_token_is_accepted_for_its_own_session_only() {
        let key = Secret::new("k".repeat(32));
        let t = csrf_token(&key, "session", "kirimsess_a");
        assert!(csrf_ok(&key, "session", "kirimsess_a", Some(&t)));
        assert!(!csrf_ok(&key, "session", "kirimsess_b", Some(&t)));
        assert!(!csrf_ok(&key, "login", "kirimsess_a", Some(&t)));
        assert!(!csrf_ok(
            &Secret::new("other"),
            "session",
            "kirimsess_a",
            Some(&t)
        ));
        assert!(!csrf_ok(&key, "session", "kirimsess_a", None));
        assert!(!csrf_ok(&key, "session", "kirimsess_a", Some("not hex")));
        assert!(!csrf_ok(&key, "session", "kirimsess_a", Some(&t[..10])));
    }

    #[test]
    fn a_pending_sign_in_opens_only_for_its_own_sign_in_cookie_and_until_it_expires() {
        let key = Secret::new("k".repeat(32));
        let sealed =
            seal_pending(&key, "nonce-a", "a@example.com", "pw 123", 1_000).unwrap_or_default();
        // Neither in clear (an `@` or a space cannot appear in base64url).
        assert!(!sealed.is_empty() && !sealed.contains('@') && !sealed.contains(' '));
        let raw =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &sealed)
                .unwrap_or_default();
        assert!(!String::from_utf8_lossy(&raw).contains("example.com"));
        let (email, pw) = open_pending(&key, "nonce-a", &sealed, 1_000 + PENDING_SECS)
            .unwrap_or_else(|| panic!("opens"));
        assert_eq!((email.as_str(), pw.expose()), ("a@example.com", "pw 123"));
        assert!(open_pending(&key, "nonce-b", &sealed, 1_000).is_none());
        assert!(open_pending(&key, "nonce-a", &sealed, 1_001 + PENDING_SECS).is_none());
        assert!(open_pending(&Secret::new("other"), "nonce-a", &sealed, 1_000).is_none());
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap_or_default();
        assert!(open_pending(&key, "nonce-a", &tampered, 1_000).is_none());
        assert!(open_pending(&key, "nonce-a", "", 1_000).is_none());
    }

    #[test]
    fn an_enrolment_opens_only_for_its_own_session_until_it_expires_and_never_as_a_sign_in() {
        let key = Secret::new("k".repeat(32));
        let uri = "otpauth://totp/Kirim:a%40example.com?secret=JBSWY3DPEHPK3PXP&issuer=Kirim";
        let sealed =
            seal_enrolment(&key, "kirimsess_a", "JBSWY3DPEHPK3PXP", uri, 1_000).unwrap_or_default();
        assert!(!sealed.is_empty() && !sealed.contains("JBSWY3DP"));
        let (secret, link) = open_enrolment(&key, "kirimsess_a", &sealed, 1_000 + ENROLMENT_SECS)
            .unwrap_or_else(|| panic!("opens"));
        assert_eq!((secret.expose(), link.expose()), ("JBSWY3DPEHPK3PXP", uri));
        assert!(open_enrolment(&key, "kirimsess_b", &sealed, 1_000).is_none());
        assert!(open_enrolment(&key, "kirimsess_a", &sealed, 1_001 + ENROLMENT_SECS).is_none());
        assert!(open_enrolment(&Secret::new("other"), "kirimsess_a", &sealed, 1_000).is_none());
        // Another purpose's key: a pending sign-in does not open as an enrolment, nor the
        // other way round.
        assert!(open_pending(&key, "kirimsess_a", &sealed, 1_000).is_none());
        let pending =
            seal_pending(&key, "kirimsess_a", "a@example.com", "pw", 1_000).unwrap_or_default();
        assert!(open_enrolment(&key, "kirimsess_a", &pending, 1_000).is_none());
    }

    fn cookies(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn cookies_are_read_by_exact_name_among_several() {
        let h = cookies("a=1; kirim_session_x=2; kirim_session=tok");
        assert_eq!(cookie(&h, SESSION_COOKIE, false).as_deref(), Some("tok"));
        assert_eq!(cookie(&h, LOGIN_COOKIE, false), None);
        let h = cookies("a=1; kirim_session=planted; __Host-kirim_session=tok");
        assert_eq!(cookie(&h, SESSION_COOKIE, true).as_deref(), Some("tok"));
    }

    #[test]
    fn over_https_every_console_cookie_is_a_host_cookie_for_the_whole_host() {
        for name in [SESSION_COOKIE, LOGIN_COOKIE, PENDING_COOKIE] {
            for age in [None, Some(0), Some(PENDING_SECS)] {
                let c = set_cookie(name, "t", true, age);
                let c = c.to_str().unwrap_or_default();
                assert!(c.starts_with(&format!("__Host-{name}=t; ")), "{c}");
                let attrs: Vec<&str> = c.split("; ").skip(1).collect();
                for a in ["HttpOnly", "SameSite=Strict", "Path=/", "Secure"] {
                    assert!(attrs.contains(&a), "{a} in {c}");
                }
                assert!(!c.contains("Domain") && !c.contains("/console"), "{c}");
            }
        }
        assert_eq!(cookie_name(SESSION_COOKIE, true), "__Host-kirim_session");
    }

    #[test]
    fn a_cookie_of_the_old_name_is_removed_at_the_path_and_with_the_attributes_it_was_set_with() {
        for name in RETIRED_COOKIES {
            let c = retired_cookie_removal(name);
            assert_eq!(
                c.to_str().unwrap_or_default(),
                format!("{name}=; Path=/console; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
            );
        }
        assert_eq!(
            RETIRED_COOKIES,
            ["kirim_session", "kirim_login", "kirim_pending"]
        );
    }

    #[test]
    fn over_local_plain_http_console_cookies_keep_their_names_and_the_console_path() {
        for name in [SESSION_COOKIE, LOGIN_COOKIE, PENDING_COOKIE] {
            let c = set_cookie(name, "t", false, None);
            let c = c.to_str().unwrap_or_default();
            assert!(c.starts_with(&format!("{name}=t; ")), "{c}");
            assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict"));
            assert!(c.contains("Path=/console") && !c.contains("Secure"), "{c}");
            assert!(!c.contains("__Host-"), "{c}");
        }
        assert_eq!(cookie_name(SESSION_COOKIE, false), "kirim_session");
    }

    #[test]
    fn a_cookie_that_comes_twice_is_not_read_and_the_other_modes_name_is_not_read() {
        let twice = cookies("kirim_session=mine; a=1; kirim_session=planted");
        assert_eq!(cookie(&twice, SESSION_COOKIE, false), None);
        assert!(has_cookie(&twice, SESSION_COOKIE, false));
        let twice = cookies("__Host-kirim_session=a; __Host-kirim_session=b");
        assert_eq!(cookie(&twice, SESSION_COOKIE, true), None);
        // A secure console reads only the prefixed name; local mode only the plain one.
        let plain = cookies("kirim_session=tok");
        assert_eq!(cookie(&plain, SESSION_COOKIE, true), None);
        assert!(!has_cookie(&plain, SESSION_COOKIE, true));
        let host = cookies("__Host-kirim_session=tok");
        assert_eq!(cookie(&host, SESSION_COOKIE, false), None);
    }
}
