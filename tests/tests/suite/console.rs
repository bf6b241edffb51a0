//! The console over HTTP (local mode, both backends): sign-in, cookie flags, CSRF,
//! security headers, tenant isolation, roles and sign-out.

use std::collections::HashMap;

use kirim::config::Backend;
use kirim::domain::TenantId;
use kirim::store_error::StoreError;
use kirim_tests::{spawn_app, TestApp};
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use serde_json::json;
use totp_rs::{Algorithm, TOTP};

use super::access::call;
use super::users::{new_user, PASSWORD};

/// A client that keeps the console's cookies and never follows redirects.
pub(crate) struct Browser<'a> {
    app: &'a TestApp,
    http: reqwest::Client,
    pub cookies: HashMap<String, String>,
}

pub(crate) struct Page {
    pub status: u16,
    pub headers: HeaderMap,
    pub html: String,
}

impl Page {
    pub fn location(&self) -> &str {
        self.headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    /// The first form's CSRF token on the page.
    pub fn csrf(&self) -> String {
        let marker = r#"name="csrf" value=""#;
        let start = self.html.find(marker).expect("a form with a CSRF token") + marker.len();
        self.html[start..]
            .split('"')
            .next()
            .unwrap_or_default()
            .to_owned()
    }
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect()
    }
}

impl<'a> Browser<'a> {
    pub fn new(app: &'a TestApp) -> Self {
        Self {
            app,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: HashMap::new(),
        }
    }

    async fn finish(&mut self, req: reqwest::RequestBuilder) -> Page {
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let res = req.header("cookie", cookie).send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let html = res.text().await.unwrap_or_default();
        let page = Page {
            status,
            headers,
            html,
        };
        for c in page.set_cookies() {
            let first = c.split(';').next().unwrap_or_default();
            let (k, v) = first.split_once('=').unwrap_or((first, ""));
            if v.is_empty() || c.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), v.to_owned());
            }
        }
        page
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let req = self.http.get(self.app.url(path));
        self.finish(req).await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let req = self.http.post(self.app.url(path)).form(form);
        self.finish(req).await
    }

    /// A `multipart/form-data` POST: text fields, then files (`name`, file name, bytes).
    pub async fn post_multipart(
        &mut self,
        path: &str,
        fields: &[(&str, &str)],
        files: &[(&str, &str, &[u8])],
    ) -> Page {
        let boundary = "----kirim-test-boundary-7c1f";
        let mut body = Vec::new();
        for (k, v) in fields {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
                )
                .as_bytes(),
            );
        }
        for (k, file, bytes) in files {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"; \
                     filename=\"{file}\"\r\nContent-Type: text/csv\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(bytes);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let req = self
            .http
            .post(self.app.url(path))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body);
        self.finish(req).await
    }

    pub fn session(&self) -> String {
        self.cookies
            .get("kirim_session")
            .cloned()
            .unwrap_or_default()
    }
}

/// Signs `email` in (no 2FA) and answers the browser holding the session cookie.
pub(crate) async fn sign_in<'a>(app: &'a TestApp, email: &str) -> Browser<'a> {
    sign_in_to(app, email, "/console/").await
}

/// [`sign_in`], sent on to `landing` (`/console/2fa` where 2FA is required and not set up).
pub(crate) async fn sign_in_to<'a>(app: &'a TestApp, email: &str, landing: &str) -> Browser<'a> {
    let mut b = Browser::new(app);
    let login = b.get("/console/login").await;
    assert_eq!(login.status, 200);
    let csrf = login.csrf();
    let res = b
        .post(
            "/console/login",
            &[("csrf", &csrf), ("email", email), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(res.status, 303, "{}", res.html);
    assert_eq!(res.location(), landing);
    assert!(b.session().starts_with("kirimsess_"));
    b
}

fn header<'h>(h: &'h HeaderMap, name: &str) -> &'h str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn assert_security_headers(p: &Page) {
    let csp = header(&p.headers, "content-security-policy");
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(csp.contains("script-src 'none'"), "{csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("http"),
        "{csp}"
    );
    assert_eq!(header(&p.headers, "x-frame-options"), "DENY");
    assert_eq!(header(&p.headers, "referrer-policy"), "same-origin");
}

/// The console on Lambda (HTTPS only, `Secure` cookies) tells browsers to keep to HTTPS;
/// local mode's plain http does not (a browser would then refuse `localhost` without TLS).
async fn the_console_over_https_sends_strict_transport_security_and_local_mode_does_not(
    b: Backend,
) {
    use tower::ServiceExt;
    let app = spawn_app(b).await;
    for secure in [true, false] {
        let router = kirim::console::console_router(
            app.app.deps.clone(),
            kirim::console::ConsoleOptions {
                secure_cookies: secure,
            },
        );
        let req = axum::http::Request::get("/console/login")
            .body(axum::body::Body::empty())
            .unwrap();
        let res = router.oneshot(req).await.unwrap();
        assert_eq!(res.status(), 200);
        let hsts = res.headers().get("strict-transport-security");
        assert_eq!(
            hsts.and_then(|v| v.to_str().ok()),
            secure.then_some("max-age=31536000"),
            "secure: {secure}"
        );
    }
}

/// One request to a console served as on Lambda (HTTPS: secure cookies): its status, its
/// `Set-Cookie` values and its body.
async fn to_secure_console(
    app: &TestApp,
    method: &str,
    path: &str,
    cookie: &str,
    form: Option<&[(&str, &str)]>,
) -> (u16, Vec<String>, String) {
    use tower::ServiceExt;
    let router = kirim::console::console_router(
        app.app.deps.clone(),
        kirim::console::ConsoleOptions {
            secure_cookies: true,
        },
    );
    let enc = |v: &str| {
        v.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    let body = form.map_or_else(String::new, |f| {
        f.iter()
            .map(|(k, v)| format!("{k}={}", enc(v)))
            .collect::<Vec<_>>()
            .join("&")
    });
    let req = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("cookie", cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(body))
        .unwrap();
    let res = router.oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let set = res
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    let (_, html) = status_and_text(res).await;
    (status, set, html)
}

/// The value a `Set-Cookie` list sets for `name`, and the whole header.
fn set_for(set: &[String], name: &str) -> (String, String) {
    let c = set
        .iter()
        .find(|c| c.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {set:?}"));
    let value = c[name.len() + 1..].split(';').next().unwrap_or_default();
    (value.to_owned(), c.clone())
}

/// Over HTTPS every console cookie is a `__Host-` cookie for the whole host (`Path=/`,
/// `Secure`, no `Domain`): a sibling subdomain taken over cannot plant one the browser
/// sends first. A cookie of the old name is not read, and two session cookies sign nobody
/// in.
async fn over_https_the_console_signs_in_with_host_cookies_and_two_session_cookies_sign_nobody_in(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "admin").await;
    let (status, set, html) = to_secure_console(&app, "GET", "/console/login", "", None).await;
    assert_eq!(status, 200);
    let (nonce, login_cookie) = set_for(&set, "__Host-kirim_login");
    assert!(login_cookie.contains("; Path=/;") && login_cookie.contains("; Secure"));
    let page = Page {
        status,
        headers: HeaderMap::new(),
        html,
    };
    let form = [
        ("csrf", page.csrf()),
        ("email", email.clone()),
        ("password", PASSWORD.to_owned()),
    ];
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // The old name is not the sign-in cookie here: the form's token does not match it.
    let (status, _, _) = to_secure_console(
        &app,
        "POST",
        "/console/login",
        &format!("kirim_login={nonce}"),
        Some(&form),
    )
    .await;
    assert_eq!(status, 403, "kirim_login is not read over HTTPS");
    let (status, set, body) = to_secure_console(
        &app,
        "POST",
        "/console/login",
        &format!("__Host-kirim_login={nonce}"),
        Some(&form),
    )
    .await;
    assert_eq!(status, 303, "{body}");
    let (session, header) = set_for(&set, "__Host-kirim_session");
    assert!(session.starts_with("kirimsess_"), "{header}");
    assert_eq!(
        header,
        format!("__Host-kirim_session={session}; HttpOnly; SameSite=Strict; Path=/; Secure")
    );
    assert!(!set
        .iter()
        .any(|c| c.contains("Domain") || c.contains("Path=/console")));
    let (status, _, _) = to_secure_console(
        &app,
        "GET",
        "/console/",
        &format!("__Host-kirim_session={session}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "signed in");
    // Another valid session (the attacker's own) beside it: nobody is signed in.
    let (other, _) = new_user(&app, &t.key, "admin").await;
    let planted = super::users::login_ok(&app, &other).await;
    for cookie in [
        format!("__Host-kirim_session={planted}; __Host-kirim_session={session}"),
        format!("__Host-kirim_session={session}; __Host-kirim_session={planted}"),
    ] {
        let (status, _, _) = to_secure_console(&app, "GET", "/console/", &cookie, None).await;
        assert_eq!(status, 303, "not signed in: {cookie}");
    }
    let (status, _, _) = to_secure_console(
        &app,
        "GET",
        "/console/",
        &format!("kirim_session={planted}"),
        None,
    )
    .await;
    assert_eq!(status, 303, "the unprefixed name is nobody's over HTTPS");
}

/// A browser signed in before the console's cookies became `__Host-` ones still sends
/// `kirim_session` (`Path=/console`), which a console over HTTPS no longer reads: the answer
/// removes it, and `kirim_login` and `kirim_pending`, at the path they were set for, and ends
/// the old session, whose token then no longer works on the API; a request with only the
/// new cookies is answered with no removal.
async fn over_https_cookies_of_the_old_names_are_removed_and_the_old_session_ended(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "admin").await;
    let old = super::users::login_ok(&app, &email).await;
    let (s, _) = call(&app, "GET", "/v1/users", Some(&old), None).await;
    assert_eq!(s, 200, "the old session works before");
    let removal = |name: &str| {
        format!("{name}=; Path=/console; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
    };
    let (status, set, _) = to_secure_console(
        &app,
        "GET",
        "/console/",
        &format!("kirim_session={old}; kirim_login=n0nce; kirim_pending=sealed"),
        None,
    )
    .await;
    assert_eq!(status, 303, "not signed in by the old name");
    for name in ["kirim_session", "kirim_login", "kirim_pending"] {
        assert!(set.contains(&removal(name)), "{name} removed: {set:?}");
    }
    let (s, body) = call(&app, "GET", "/v1/users", Some(&old), None).await;
    assert_eq!(s, 401, "the old session ended: {body}");
    // Signed in under the new name, the old one beside it: still signed in, the old one
    // removed; with the new one alone, nothing removed.
    let new = super::users::login_ok(&app, &email).await;
    let (status, set, _) = to_secure_console(
        &app,
        "GET",
        "/console/",
        &format!("kirim_session={old}; __Host-kirim_session={new}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "signed in by the new name");
    assert!(set.contains(&removal("kirim_session")), "{set:?}");
    let (status, set, _) = to_secure_console(
        &app,
        "GET",
        "/console/",
        &format!("__Host-kirim_session={new}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(!set.iter().any(|c| c.contains("Path=/console")), "{set:?}");
    let (s, _) = call(&app, "GET", "/v1/users", Some(&new), None).await;
    assert_eq!(s, 200, "the new session is not ended");
}

/// In local mode's plain http too, a request with the session cookie twice is signed out.
async fn a_request_with_two_session_cookies_is_not_signed_in_in_local_mode(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "admin").await;
    let web = sign_in(&app, &email).await;
    let (other, _) = new_user(&app, &t.key, "admin").await;
    let planted = super::users::login_ok(&app, &other).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |cookie: String| {
        let req = http.get(app.url("/console/")).header("cookie", cookie);
        async move { req.send().await.unwrap() }
    };
    let one = get(format!("kirim_session={}", web.session())).await;
    assert_eq!(one.status(), 200);
    let two = get(format!(
        "kirim_session={planted}; kirim_session={}",
        web.session()
    ))
    .await;
    assert_eq!(two.status(), 303);
    assert_eq!(
        two.headers().get(LOCATION).and_then(|v| v.to_str().ok()),
        Some("/console/login")
    );
}

async fn api_keys(app: &TestApp, admin: &str) -> usize {
    let (s, b) = call(app, "GET", "/v1/api-keys", Some(admin), None).await;
    assert_eq!(s, 200);
    b["api_keys"].as_array().map_or(0, Vec::len)
}

async fn the_console_sets_a_strict_http_only_session_cookie_and_its_security_headers(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "admin").await;
    let mut web = Browser::new(&app);
    let login = web.get("/console/login").await;
    assert_security_headers(&login);
    assert!(!login.html.contains("<script"), "no scripts in the console");
    let res = web
        .post(
            "/console/login",
            &[
                ("csrf", &login.csrf()),
                ("email", &email),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(res.status, 303);
    let session = res
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("kirim_session=kirimsess_"))
        .expect("a session cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(session.contains(flag), "{flag} in {session}");
    }
    assert!(!session.contains("Secure"), "local mode is plain http");
    let dash = web.get("/console/").await;
    assert_eq!(dash.status, 200, "{}", dash.html);
    assert_security_headers(&dash);
    assert!(dash.html.contains(r#"id="credits">5<"#), "{}", dash.html);
    // Nothing sent yet: no verdict on a handful of messages.
    assert!(
        dash.html.contains(r#"id="quality">Too few to judge<"#),
        "{}",
        dash.html
    );
    let css = web.get("/console/assets/console.css").await;
    assert_eq!(css.status, 200);
    assert_security_headers(&css);
    // A wrong password: a page that says so, and no session.
    let mut other = Browser::new(&app);
    let login = other.get("/console/login").await;
    let res = other
        .post(
            "/console/login",
            &[
                ("csrf", &login.csrf()),
                ("email", &email),
                ("password", "wrong password!"),
            ],
        )
        .await;
    assert_eq!(res.status, 401);
    assert!(res.html.contains("email or password is wrong"));
    assert!(
        res.html.contains(&format!(r#"value="{email}""#)),
        "the email typed is kept: {}",
        res.html
    );
    assert!(!res.html.contains("wrong password!"), "never the password");
    assert!(other.session().is_empty());
}

async fn a_console_post_without_its_sessions_csrf_token_is_refused_and_changes_nothing(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "admin").await;
    let mut web = sign_in(&app, &email).await;
    let mut other = sign_in(&app, &email).await;
    let others_token = other.get("/console/api-keys").await.csrf();
    let before = api_keys(&app, &t.key).await;
    let none = web
        .post("/console/api-keys", &[("name", "ci"), ("role", "operator")])
        .await;
    assert_eq!(none.status, 403);
    assert_security_headers(&none);
    let wrong = [("csrf", "00ff"), ("name", "ci"), ("role", "operator")];
    assert_eq!(web.post("/console/api-keys", &wrong).await.status, 403);
    let foreign = web
        .post(
            "/console/api-keys",
            &[
                ("csrf", &others_token),
                ("name", "ci"),
                ("role", "operator"),
            ],
        )
        .await;
    assert_eq!(
        foreign.status, 403,
        "another session's token is not this one's"
    );
    assert_eq!(api_keys(&app, &t.key).await, before, "nothing was created");
    // The sign-in form has its own token.
    let mut fresh = Browser::new(&app);
    let _ = fresh.get("/console/login").await;
    let res = fresh
        .post(
            "/console/login",
            &[("email", email.as_str()), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(res.status, 403);
    assert!(fresh.session().is_empty());
    // With the page's own token it works, and the key is shown once.
    let csrf = web.get("/console/api-keys").await.csrf();
    let made = web
        .post(
            "/console/api-keys",
            &[("csrf", &csrf), ("name", "ci"), ("role", "operator")],
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.html);
    assert!(made.html.contains(r#"id="new-key">kirim_"#));
    assert_eq!(api_keys(&app, &t.key).await, before + 1);
    let again = web.get("/console/api-keys").await;
    assert!(!again.html.contains("kirim_"), "the key is not shown again");
    // Each key says who made it: this one the signed-in user, the onboarding's the operator.
    assert!(again.html.contains("by you"), "{}", again.html);
    assert!(again.html.contains("by the operator"), "{}", again.html);
    // A browser counts `maxlength` in UTF-16 units: a name of 100 emoji, which the API
    // takes, fits the field, and the form makes it.
    assert!(
        again.html.contains(r#"name="name" maxlength="200""#),
        "{}",
        again.html
    );
    let emoji = "🛒".repeat(100);
    let made = web
        .post(
            "/console/api-keys",
            &[("csrf", &csrf), ("name", &emoji), ("role", "read_only")],
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.html);
    assert_eq!(api_keys(&app, &t.key).await, before + 2);
    // Bad input: a clear error, nothing changed.
    let bad = web
        .post(
            "/console/api-keys",
            &[("csrf", &csrf), ("name", ""), ("role", "operator")],
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.html);
    assert!(bad.html.contains("Not done:"));
    assert_eq!(api_keys(&app, &t.key).await, before + 2);
}

async fn another_tenants_ids_answer_404_in_the_console(b: Backend) {
    let app = spawn_app(b).await;
    let mine = app.onboard(5).await;
    let theirs = app.onboard(5).await;
    let (email, _) = new_user(&app, &mine.key, "admin").await;
    // A template send: a session text to a number that never wrote is refused (422), and
    // the message page below would then never be opened.
    let their_message = app.send_ok(&theirs.key, "+60123450009").await;
    let (_, keys) = call(&app, "GET", "/v1/api-keys", Some(&theirs.key), None).await;
    let their_key_id = keys["api_keys"][0]["id"].as_str().unwrap().to_owned();
    let mut web = sign_in(&app, &email).await;
    let page = web.get(&format!("/console/messages/{their_message}")).await;
    assert_eq!(page.status, 404);
    let mut own = sign_in(&app, &new_user(&app, &theirs.key, "admin").await.0).await;
    assert_eq!(
        own.get(&format!("/console/messages/{their_message}"))
            .await
            .status,
        200,
        "their own admin sees it"
    );
    assert_eq!(
        web.get("/console/messages/01NOSUCHMESSAGE").await.status,
        404
    );
    let csrf = web.get("/console/api-keys").await.csrf();
    let revoke = web
        .post(
            &format!("/console/api-keys/{their_key_id}/revoke"),
            &[("csrf", &csrf), ("confirm", "yes")],
        )
        .await;
    assert_eq!(revoke.status, 404);
    let (s, _) = call(&app, "GET", "/v1/account", Some(&theirs.key), None).await;
    assert_eq!(s, 200, "their key still works");
}

async fn a_read_only_user_is_offered_no_changes_and_a_forged_post_is_refused(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "read_only").await;
    // An opt-out, so the list has a row an admin could remove.
    let (s, _) = call(
        &app,
        "PUT",
        "/v1/opt-outs/%2B60123459961",
        Some(&t.key),
        None,
    )
    .await;
    assert!(s == 200 || s == 201, "{s}");
    let mut web = sign_in(&app, &email).await;
    let dash = web.get("/console/").await;
    assert_eq!(dash.status, 200);
    for admin_only in ["/console/api-keys", "/console/users", "/console/audit"] {
        assert!(!dash.html.contains(admin_only), "{admin_only} offered");
    }
    let msgs = web.get("/console/messages").await;
    assert_eq!(msgs.status, 200);
    assert!(!msgs.html.contains("Send a template message"));
    let opt = web.get("/console/opt-outs").await;
    assert!(opt.html.contains("+60123459961"), "the row is listed");
    assert!(!opt.html.contains("Add an opt-out") && !opt.html.contains("Remove"));
    assert!(!opt.html.contains("action=\"/console/opt-outs/remove\""));
    assert_eq!(web.get("/console/api-keys").await.status, 403);
    let csrf = dash.csrf();
    let before = api_keys(&app, &t.key).await;
    let forged = web
        .post(
            "/console/api-keys",
            &[("csrf", &csrf), ("name", "x"), ("role", "admin")],
        )
        .await;
    assert_eq!(forged.status, 403);
    assert_eq!(api_keys(&app, &t.key).await, before);
    let send = web
        .post(
            "/console/messages",
            &[
                ("csrf", &csrf),
                ("to", "+60123456789"),
                ("template", "order_update"),
                ("language", "en_US"),
                ("category", "utility"),
            ],
        )
        .await;
    assert_eq!(send.status, 403);
    let (_, list) = call(&app, "GET", "/v1/messages", Some(&t.key), None).await;
    assert_eq!(list["messages"].as_array().map(Vec::len), Some(0));
}

async fn signing_out_of_the_console_ends_the_session(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "operator").await;
    let mut web = sign_in(&app, &email).await;
    let token = web.session();
    let (s, _) = call(&app, "GET", "/v1/account", Some(&token), None).await;
    assert_eq!(s, 200);
    let csrf = web.get("/console/").await.csrf();
    let out = web.post("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, 303);
    assert!(out.location().starts_with("/console/login"));
    assert!(web.session().is_empty(), "the cookie is removed");
    let (s, _) = call(&app, "GET", "/v1/account", Some(&token), None).await;
    assert_eq!(s, 401, "the session token no longer works");
    web.cookies.insert("kirim_session".into(), token);
    let back = web.get("/console/").await;
    assert_eq!(back.status, 303);
    assert_eq!(back.location(), "/console/login?ended=1", "said ended");
}

pub(crate) fn totp_of(secret: &str) -> TOTP {
    let bytes = totp_rs::Secret::Encoded(secret.to_owned())
        .to_bytes()
        .unwrap();
    TOTP::new(Algorithm::SHA1, 6, 1, 30, bytes, None, "console".into()).unwrap()
}

fn secret_on(page: &Page) -> String {
    let marker = r#"id="totp-secret">"#;
    let start = page.html.find(marker).expect("the secret on the page") + marker.len();
    page.html[start..]
        .split('<')
        .next()
        .unwrap_or_default()
        .to_owned()
}

async fn a_user_enrols_two_factor_from_a_qr_code_and_then_signs_in_with_a_code(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "operator").await;
    let mut web = sign_in(&app, &email).await;
    let csrf = web.get("/console/2fa").await.csrf();
    let enrol = web.post("/console/2fa/enroll", &[("csrf", &csrf)]).await;
    assert_eq!(enrol.status, 200, "{}", enrol.html);
    assert!(enrol.html.contains("<svg"), "a QR code as inline SVG");
    let secret = secret_on(&enrol);
    let totp = totp_of(&secret);
    let now = chrono::Utc::now().timestamp() as u64;
    let wrong = web
        .post(
            "/console/2fa/confirm",
            &[("csrf", &csrf), ("totp_code", "12345x")],
        )
        .await;
    assert_eq!(wrong.status, 400);
    let wrong = web
        .post(
            "/console/2fa/confirm",
            &[("csrf", &csrf), ("totp_code", "000000")],
        )
        .await;
    assert_eq!(wrong.status, 400);
    // In the page's words, not the API's field name.
    assert!(
        wrong.html.contains("Not done: that code didn't match"),
        "{}",
        wrong.html
    );
    let ok = web
        .post(
            "/console/2fa/confirm",
            &[("csrf", &csrf), ("totp_code", &totp.generate(now))],
        )
        .await;
    assert_eq!(ok.status, 303, "{}", ok.html);
    let _ = web.post("/console/logout", &[("csrf", &csrf)]).await;

    let mut again = Browser::new(&app);
    let login = again.get("/console/login").await;
    let step1 = again
        .post(
            "/console/login",
            &[
                ("csrf", &login.csrf()),
                ("email", &email),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(step1.status, 200, "the code is asked for next");
    assert!(step1.html.contains("totp_code"));
    assert!(again.session().is_empty());
    // The password waits in a sealed, short-lived, HttpOnly cookie, never in the page.
    assert!(
        !step1.html.contains(PASSWORD),
        "no password in the code page"
    );
    assert!(!step1.html.contains(r#"name="password""#));
    let pending = step1
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("kirim_pending="))
        .expect("a pending sign-in cookie");
    for flag in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/console",
        "Max-Age=300",
    ] {
        assert!(pending.contains(flag), "{flag} in {pending}");
    }
    assert!(!pending.contains(PASSWORD) && !pending.contains(&email));
    // Without it (expired, or another browser), the code alone signs nobody in.
    let sealed = again.cookies.remove("kirim_pending").unwrap_or_default();
    let lost = again
        .post(
            "/console/login",
            &[("csrf", &step1.csrf()), ("totp_code", &totp.generate(now))],
        )
        .await;
    assert_eq!(lost.status, 401, "{}", lost.html);
    assert!(lost.html.contains("enter your email and password again"));
    assert!(again.session().is_empty());
    again.cookies.insert("kirim_pending".into(), sealed);
    let step2 = again
        .post(
            "/console/login",
            &[
                ("csrf", &step1.csrf()),
                ("totp_code", &totp.generate(now + 30)),
            ],
        )
        .await;
    assert_eq!(step2.status, 303, "{}", step2.html);
    assert!(again.session().starts_with("kirimsess_"));
}

/// Removing an opt-out sends messages to that recipient again: the console asks first,
/// naming the number, and removes only on its confirmation; an addition the API refuses
/// keeps the number as typed, to be mended.
async fn an_opt_out_is_removed_only_on_its_confirmation_and_a_refused_one_keeps_its_number(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "admin").await;
    let path = "/v1/opt-outs/%2B60123459962";
    let (s, _) = call(&app, "PUT", path, Some(&t.key), None).await;
    assert!(s == 200 || s == 201, "{s}");
    let mut web = sign_in(&app, &email).await;
    let page = web.get("/console/opt-outs").await;
    let csrf = page.csrf();
    let asked = web
        .post(
            "/console/opt-outs/remove",
            &[("csrf", &csrf), ("phone", "+60123459962")],
        )
        .await;
    assert_eq!(asked.status, 200, "{}", asked.html);
    assert!(
        asked.html.contains("Remove the opt-out of +60123459962?"),
        "{}",
        asked.html
    );
    assert_eq!(
        call(&app, "GET", path, Some(&t.key), None).await.0,
        200,
        "not removed yet"
    );
    let removed = web
        .post(
            "/console/opt-outs/remove",
            &[
                ("csrf", &csrf),
                ("phone", "+60123459962"),
                ("confirm", "yes"),
            ],
        )
        .await;
    assert_eq!(removed.status, 303, "{}", removed.html);
    assert_eq!(call(&app, "GET", path, Some(&t.key), None).await.0, 404);
    let refused = web
        .post(
            "/console/opt-outs",
            &[
                ("csrf", &csrf),
                ("phone", "+60 12 not a number"),
                ("scope", "all"),
            ],
        )
        .await;
    assert_eq!(refused.status, 400, "{}", refused.html);
    assert!(
        refused.html.contains(r#"value="+60 12 not a number""#),
        "kept as typed: {}",
        refused.html
    );
}

/// Every page names whom it is for: the signed-in user's email and role, never only the
/// role (two admins' pages told nothing apart), and never a token.
async fn the_header_names_the_signed_in_users_email_and_role(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    for role in ["admin", "read_only"] {
        let (email, _) = new_user(&app, &t.key, role).await;
        let mut web = sign_in(&app, &email).await;
        let dash = web.get("/console/").await;
        assert_eq!(dash.status, 200, "{}", dash.html);
        let shown = role.replace('_', "-");
        let said = format!(
            r#"Signed in as <span class="who">{}</span> ({shown})"#,
            email.to_lowercase()
        );
        assert!(dash.html.contains(&said), "{said} in {}", dash.html);
        assert!(
            !dash.html.contains(&web.session()),
            "never the session token"
        );
    }
}

/// The signed-in parts of a page: the console's navigation, the user, sign-out.
fn has_frame(p: &Page, email: &str) -> bool {
    p.html.contains(r#"<nav aria-label="Console">"#)
        && p.html.contains(r#"action="/console/logout""#)
        && p.html.contains(&email.to_lowercase())
}

/// An error page (a role's refusal, an item or page that is not there, a form refused for
/// its CSRF token) of a signed-in user comes in the console's frame, with its navigation
/// and sign-out: the user is not stranded. Signed out, it stays a bare page.
async fn a_signed_in_users_error_pages_keep_the_navigation_and_sign_out(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "read_only").await;
    let mut web = sign_in(&app, &email).await;
    let refused = web.get("/console/api-keys").await;
    assert_eq!(refused.status, 403, "{}", refused.html);
    assert!(has_frame(&refused, &email), "{}", refused.html);
    assert!(refused.html.contains("Your role does not allow this"));
    assert!(
        !refused.html.contains(r#"href="/console/api-keys""#),
        "still only what the role may see: {}",
        refused.html
    );
    let no_item = web.get("/console/messages/01NOSUCHMESSAGE").await;
    assert_eq!(no_item.status, 404);
    assert!(has_frame(&no_item, &email), "{}", no_item.html);
    let no_page = web.get("/console/no-such-page").await;
    assert_eq!(no_page.status, 404);
    assert!(has_frame(&no_page, &email), "{}", no_page.html);
    assert!(no_page.html.contains("There is no such page."));
    let forged = web
        .post("/console/opt-outs", &[("phone", "+60123450001")])
        .await;
    assert_eq!(forged.status, 403);
    assert!(has_frame(&forged, &email), "{}", forged.html);
    assert_security_headers(&forged);
    // Its sign-out works from there.
    let out = web
        .post("/console/logout", &[("csrf", &no_page.csrf())])
        .await;
    assert_eq!(out.status, 303, "{}", out.html);
    assert!(web.session().is_empty());
    // Signed out: the bare page, nobody named.
    let bare = Browser::new(&app).get("/console/no-such-page").await;
    assert_eq!(bare.status, 404);
    assert!(!bare.html.contains("<nav") && !bare.html.contains("Signed in as"));
    assert!(bare.html.contains("There is no such page."));
}

/// A request to the console as the `console` Lambda gets it from API Gateway (HTTP API,
/// `ANY /console/{proxy+}`): its status and body.
async fn on_lambda(app: &TestApp, method: &str, path: &str, cookie: &str) -> (u16, String) {
    use tower::ServiceExt;
    let router = kirim::http::lambda::for_lambda(kirim::console::console_router(
        app.app.deps.clone(),
        kirim::console::ConsoleOptions {
            secure_cookies: false,
        },
    ));
    let route = "ANY /console/{proxy+}";
    let cookies: Vec<&str> = cookie.split("; ").filter(|c| !c.is_empty()).collect();
    let event = json!({
        "version": "2.0", "routeKey": route, "rawPath": path, "rawQueryString": "",
        "cookies": cookies, "headers": {},
        "requestContext": {"accountId": "123456789012", "apiId": "api", "domainName": "api.example", "domainPrefix": "api",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "test"},
            "requestId": "req-console", "routeKey": route, "stage": "$default", "time": "05/Dec/2026:00:00:00 +0000", "timeEpoch": 1796428800000i64},
        "isBase64Encoded": false
    })
    .to_string();
    let req = lambda_http::request::from_str(&event).unwrap();
    let req = req.map(|b| axum::body::Body::from(b.to_vec()));
    status_and_text(router.oneshot(req).await.unwrap()).await
}

/// An answer's status and its body as text (up to 1 MiB).
async fn status_and_text(res: axum::response::Response) -> (u16, String) {
    let status = res.status().as_u16();
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A console path that is no page answers the console's own 404 page, whatever the method
/// and whoever asks, in local mode (the console merged into the whole app) and on Lambda
/// (the console function's router alone) alike; a page asked with a method it does not
/// take is a 405 in both.
async fn an_unknown_console_path_answers_the_consoles_404_page_in_local_mode_and_on_lambda_alike(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "admin").await;
    let web = sign_in(&app, &email).await;
    let session = format!("kirim_session={}", web.session());
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for cookie in ["", session.as_str()] {
        for (method, path, status) in [
            ("GET", "/console/no-such-page", 404),
            ("POST", "/console/no-such-page", 404),
            ("PUT", "/console/no-such-page", 404),
            ("DELETE", "/console/a/b/c", 404),
            ("PATCH", "/console/messages/", 404),
            ("DELETE", "/console/users", 405),
            ("GET", "/console/logout", 405),
        ] {
            let local = http
                .request(method.parse().unwrap(), app.url(path))
                .header("cookie", cookie)
                .send()
                .await
                .unwrap();
            let local = (
                local.status().as_u16(),
                local.text().await.unwrap_or_default(),
            );
            let lambda = on_lambda(&app, method, path, cookie).await;
            let what = format!("{method} {path} (signed in: {})", !cookie.is_empty());
            assert_eq!(local.0, status, "{what}: {}", local.1);
            assert_eq!(lambda.0, status, "{what} on Lambda: {}", lambda.1);
            if status == 404 {
                for (host, html) in [("local", &local.1), ("Lambda", &lambda.1)] {
                    assert!(
                        html.contains("There is no such page."),
                        "{what} {host}: {html}"
                    );
                    assert_eq!(
                        html.contains(r#"<nav aria-label="Console">"#),
                        !cookie.is_empty(),
                        "{what} {host}: the frame only when signed in: {html}"
                    );
                }
            }
        }
    }
}

/// A STOP naming a phone and a user id keeps the opt-out under both; once the two are no
/// longer paired, the copy under the user id is removed only by that id. The list names
/// the key each row is kept under, and the console's Remove of that row sends it (both
/// rows sent the phone, and the copy could not be removed from the console).
async fn the_console_removes_a_copy_kept_under_a_user_id_by_that_id(b: Backend) {
    use kirim::domain::{OptOut, OptOutKey, OptOutScope, OptOutSource, PhoneNumber};
    use kirim::domain::{TenantId, UserId};
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "admin").await;
    let both = OptOut {
        tenant_id: TenantId::from_trusted(t.tenant_id.clone()),
        phone: PhoneNumber::parse("+60123459963").ok(),
        user_id: UserId::parse("MY.7000000963"),
        scope: OptOutScope::All,
        source: OptOutSource::Keyword,
        created_by: kirim::domain::BY_META.into(),
        created_at: chrono::Utc::now(),
        meta_timestamp: Some(chrono::Utc::now().timestamp()),
    };
    let opt_outs = &app.app.deps.opt_outs;
    let (stored, _) = opt_outs.put_opt_out(&both).await.unwrap();
    let by_phone = OptOutKey::parse("+60123459963").unwrap();
    assert!(opt_outs.put_opt_out_copy(&stored, &by_phone).await.unwrap());
    // The phone's own opt-out removed (no pairing known): the copy stays, listed by its key.
    assert_eq!(
        call(
            &app,
            "DELETE",
            "/v1/opt-outs/%2B60123459963",
            Some(&t.key),
            None
        )
        .await
        .0,
        204
    );
    let (s, v) = call(&app, "GET", "/v1/opt-outs", Some(&t.key), None).await;
    assert_eq!(s, 200);
    assert_eq!(
        (
            v["opt_outs"][0]["key"].as_str(),
            v["opt_outs"][0]["phone"].as_str()
        ),
        (Some("MY.7000000963"), Some("+60123459963")),
        "{v}"
    );
    let mut web = sign_in(&app, &email).await;
    let page = web.get("/console/opt-outs").await;
    assert!(
        page.html
            .contains(r#"<input type="hidden" name="phone" value="MY.7000000963">"#),
        "{}",
        page.html
    );
    let removed = web
        .post(
            "/console/opt-outs/remove",
            &[
                ("csrf", &page.csrf()),
                ("phone", "MY.7000000963"),
                ("confirm", "yes"),
            ],
        )
        .await;
    assert_eq!(removed.status, 303, "{}", removed.html);
    let (_, v) = call(&app, "GET", "/v1/opt-outs", Some(&t.key), None).await;
    assert_eq!(v["opt_outs"], serde_json::json!([]), "{v}");
}

/// A refused form keeps what was chosen, not only what was typed: sent again as the page
/// showed it, a marketing opt-out would stop every message and an admin would be added
/// read-only.
async fn a_refused_opt_out_or_user_keeps_its_chosen_scope_and_role(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "admin").await;
    let mut web = sign_in(&app, &email).await;
    let csrf = web.get("/console/opt-outs").await.csrf();
    let refused = web
        .post(
            "/console/opt-outs",
            &[
                ("csrf", &csrf),
                ("phone", "+60 12 not a number"),
                ("scope", "marketing"),
            ],
        )
        .await;
    assert_eq!(refused.status, 400, "{}", refused.html);
    assert!(
        refused
            .html
            .contains(r#"<option value="marketing" selected>"#),
        "{}",
        refused.html
    );
    let csrf = web.get("/console/users").await.csrf();
    let refused = web
        .post(
            "/console/users",
            &[
                ("csrf", &csrf),
                ("email", "second-admin@example.com"),
                ("role", "admin"),
                ("password", "too short"),
            ],
        )
        .await;
    assert_eq!(refused.status, 400, "{}", refused.html);
    assert!(
        refused.html.contains(r#"<option value="admin" selected>"#),
        "{}",
        refused.html
    );
    assert!(refused.html.contains("second-admin@example.com"));
    // A key the API refuses (an expiry past its 3650 days) keeps its name, role and expiry.
    let csrf = web.get("/console/api-keys").await.csrf();
    let refused = web
        .post(
            "/console/api-keys",
            &[
                ("csrf", &csrf),
                ("name", "billing service"),
                ("role", "operator"),
                ("expires_in_days", "4000"),
            ],
        )
        .await;
    assert_eq!(refused.status, 400, "{}", refused.html);
    for kept in [
        r#"value="billing service""#,
        r#"<option value="operator" selected>"#,
        r#"value="4000""#,
    ] {
        assert!(refused.html.contains(kept), "{kept}: {}", refused.html);
    }
}

/// The dashboard counts the week's messages over several pages of the list: a later page
/// refused (here the user's request limit) leaves the counts read so far, said to be
/// partial, not an error page where sign-in lands.
async fn a_dashboard_whose_later_page_is_refused_shows_the_counts_so_far(b: Backend) {
    // A clock that stands still: the request limit's bucket never refills between the
    // dashboard's pages, however slowly a loaded machine serves them (on the real clock a
    // page taking over a second earned the next its token, and nothing was refused).
    let clock = kirim_tests::ManualClock::new();
    let mut cfg = kirim_tests::local_config(b).await;
    cfg.clock = kirim_infra::local::LocalClock(clock.clone());
    let app = kirim_tests::spawn_with(cfg).await;
    let t = app.onboard(200).await;
    let (email, _) = new_user(&app, &t.key, "admin").await;
    let tenant = kirim::domain::TenantId::from_trusted(t.tenant_id.clone());
    for _ in 0..101 {
        let (rec, debit) = crate::contract::message_for(&tenant, chrono::Utc::now());
        app.app
            .deps
            .messages
            .insert_with_debit(&rec, &debit)
            .await
            .unwrap();
    }
    let mut web = sign_in(&app, &email).await;
    let (s, v) = call(
        &app,
        "PUT",
        &format!("/v1/platform/tenants/{}/limits", t.tenant_id),
        Some(kirim_tests::OPERATOR_TOKEN),
        Some(serde_json::json!({"requests_per_sec": 1, "burst": 2})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let page = web.get("/console/").await;
    assert_eq!(page.status, 200, "{}", page.html);
    assert!(
        page.html
            .contains("Counted from the most recent 100 messages only"),
        "{}",
        page.html
    );
}

/// A refused settings form shows what was typed, to be mended, not the stored value (a
/// pasted list of networks with one malformed was lost whole).
async fn a_refused_allow_list_or_callback_url_keeps_what_was_typed(b: Backend) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "admin").await;
    let mut web = sign_in(&app, &email).await;
    let csrf = web.get("/console/settings").await.csrf();
    let typed = "203.0.113.0/24\n198.51.100.7\n010.0.0.1/8";
    let refused = web
        .post(
            "/console/settings/ip-allowlist",
            &[("csrf", &csrf), ("cidrs", typed)],
        )
        .await;
    assert_eq!(refused.status, 400, "{}", refused.html);
    assert!(refused.html.contains(typed), "{}", refused.html);
    // The API's message without its backticks (code marks, noise on a page).
    assert!(
        refused.html.contains("Not done: 010.0.0.1/8 is not"),
        "{}",
        refused.html
    );
    let refused = web
        .post(
            "/console/settings/status-callback",
            &[
                ("csrf", &csrf),
                ("op", "save"),
                ("url", "ftp://hooks.example.com/kirim"),
                ("secret", "a-secret-of-sixteen-plus"),
            ],
        )
        .await;
    assert_eq!(refused.status, 400, "{}", refused.html);
    assert!(
        refused
            .html
            .contains(r#"value="ftp://hooks.example.com/kirim""#),
        "{}",
        refused.html
    );
}

/// The "More …" link of a console list page, if it has one.
fn more_link<'p>(p: &'p Page, list: &str) -> Option<&'p str> {
    let marker = format!(r#"href="/console/{list}?cursor="#);
    let start = p.html.find(&marker)? + r#"href=""#.len();
    p.html[start..].split('"').next()
}

/// The API keys and users pages show a page of 100 (one read of the API's list) and a
/// "More" link carrying the cursor to the next: a tenant with more than that is never
/// read whole into one page.
async fn the_keys_and_users_pages_show_a_page_at_a_time_with_a_link_to_the_next(b: Backend) {
    use kirim::domain::Role;
    use kirim::ports::{ApiKeyRecord, UserRecord};
    let app = spawn_app(b).await;
    let t = app.onboard(1).await;
    let (email, _) = new_user(&app, &t.key, "admin").await;
    let deps = &app.app.deps;
    let tenant = kirim::domain::TenantId::from_trusted(t.tenant_id.clone());
    // Stored directly (100 password hashes would only slow the test): with the onboarding
    // key and the signed-in admin, 101 of each.
    let stamp = kirim::domain::new_id().to_lowercase();
    for n in 0..100 {
        deps.api_keys
            .put_api_key(&ApiKeyRecord {
                // In the order made, to the millisecond's random part.
                id: kirim::domain::ulid_at(chrono::Utc::now()).to_string(),
                tenant_id: tenant.clone(),
                name: format!("key {n}"),
                role: Role::ReadOnly,
                key_hash: kirim::secret::token_hash(&kirim::domain::new_id()),
                created_at: chrono::Utc::now(),
                expires_at: None,
                revoked: false,
                revoked_at: None,
                replaced_by: None,
                created_by: None,
            })
            .await
            .unwrap();
        deps.users
            .create_user(&UserRecord {
                id: kirim::domain::new_id(),
                tenant_id: tenant.clone(),
                email: format!("u{n}.{stamp}@example.com"),
                role: Role::ReadOnly,
                password_hash: "x".into(),
                totp_secret: None,
                totp_confirmed: false,
                last_totp_step: 0,
                created_at: chrono::Utc::now(),
                password_version: 0,
            })
            .await
            .unwrap();
    }
    let mut web = sign_in(&app, &email).await;
    for (list, table_row) in [
        ("api-keys", "data-label=\"Name\""),
        ("users", "data-label=\"Email\""),
    ] {
        let first = web.get(&format!("/console/{list}")).await;
        assert_eq!(first.status, 200, "{}", first.html);
        assert_eq!(first.html.matches(table_row).count(), 100, "{list}");
        let next = more_link(&first, list)
            .unwrap_or_else(|| panic!("no link to the next page of {list}"))
            .replace("&amp;", "&");
        let second = web.get(&next).await;
        assert_eq!(second.status, 200, "{}", second.html);
        assert_eq!(second.html.matches(table_row).count(), 1, "{list}");
        assert!(more_link(&second, list).is_none(), "the last page");
        // A later page links back to the first; the first has no such link.
        let back = format!(r#"href="/console/{list}">First page of"#);
        assert!(second.html.contains(&back), "{}", second.html);
        assert!(!first.html.contains(&back), "{list}");
        if list == "api-keys" {
            // Newest first: the key made last is on the first page, the onboarding's
            // (made first) on the second.
            assert!(first.html.contains(">key 99<"), "{}", first.html);
            assert!(!second.html.contains(">key "), "{}", second.html);
        }
    }
    // The audit log names an actor past the first page of users (the newest, last): its
    // names are looked up in every page, not the first alone.
    let (newest, _) = new_user(&app, &t.key, "admin").await;
    let _ = sign_in(&app, &newest).await;
    let audit = web.get("/console/audit").await;
    assert_eq!(audit.status, 200, "{}", audit.html);
    assert!(
        audit
            .html
            .contains(&format!("user {}", newest.to_lowercase())),
        "{}",
        audit.html
    );
}

/// The sealed enrolment a confirmation form carries back (`security::seal_enrolment`).
fn enrolment_on(page: &Page) -> String {
    let marker = r#"name="enrolment" value=""#;
    let start = page.html.find(marker).expect("the sealed enrolment") + marker.len();
    page.html[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A wrong confirmation code keeps the QR code and key on the page (as Google's and
/// GitHub's set-up pages do), so the next code from the app confirms without scanning
/// again; only for the session that was shown them, and never in a URL or a log.
async fn a_wrong_confirmation_code_keeps_the_qr_code_and_the_next_right_code_turns_2fa_on(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "operator").await;
    let mut web = sign_in(&app, &email).await;
    let csrf = web.get("/console/2fa").await.csrf();
    let enrol = web.post("/console/2fa/enroll", &[("csrf", &csrf)]).await;
    assert_eq!(enrol.status, 200, "{}", enrol.html);
    let secret = secret_on(&enrol);
    let sealed = enrolment_on(&enrol);
    assert!(!sealed.contains(&secret), "sealed, not the key in clear");

    // Another session of the same user cannot have the key shown by this form.
    let mut other = sign_in(&app, &email).await;
    let other_csrf = other.get("/console/2fa").await.csrf();
    let elsewhere = other
        .post(
            "/console/2fa/confirm",
            &[
                ("csrf", &other_csrf),
                ("enrolment", &sealed),
                ("totp_code", "000000"),
            ],
        )
        .await;
    assert_eq!(elsewhere.status, 400, "{}", elsewhere.html);
    assert!(!elsewhere.html.contains(&secret), "{}", elsewhere.html);
    assert!(!elsewhere.html.contains("<svg"), "{}", elsewhere.html);
    assert!(
        elsewhere.html.contains("Start again with a new key"),
        "{}",
        elsewhere.html
    );

    let wrong = web
        .post(
            "/console/2fa/confirm",
            &[
                ("csrf", &csrf),
                ("enrolment", &sealed),
                ("totp_code", "000000"),
            ],
        )
        .await;
    assert_eq!(wrong.status, 400, "{}", wrong.html);
    assert!(
        wrong.html.contains("Not done: that code didn't match"),
        "{}",
        wrong.html
    );
    assert_eq!(secret_on(&wrong), secret, "the same key");
    assert!(wrong.html.contains("<svg"), "the QR code again");
    assert!(wrong.location().is_empty());
    // The right code from the app, with the form the wrong code came back with.
    let totp = totp_of(&secret);
    let now = chrono::Utc::now().timestamp() as u64;
    let ok = web
        .post(
            "/console/2fa/confirm",
            &[
                ("csrf", &csrf),
                ("enrolment", &enrolment_on(&wrong)),
                ("totp_code", &totp.generate(now)),
            ],
        )
        .await;
    assert_eq!(ok.status, 303, "{}", ok.html);
    assert_eq!(ok.location(), "/console/?done=two_factor_on");
    let (_, users) = call(&app, "GET", "/v1/users", Some(&t.key), None).await;
    let me = users["users"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|u| u["email"] == email.to_lowercase().as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(me["two_factor"], "enabled", "{users}");
    // Once it is on, the form shows the key no more.
    let after = web
        .post(
            "/console/2fa/confirm",
            &[
                ("csrf", &csrf),
                ("enrolment", &sealed),
                ("totp_code", "000000"),
            ],
        )
        .await;
    assert_eq!(after.status, 409, "{}", after.html);
    assert!(!after.html.contains(&secret), "{}", after.html);
    assert!(
        !kirim_tests::captured_logs().contains(&secret),
        "the key in no log"
    );
}

/// Two tabs of one session each start a 2FA set-up: the second's key replaces the first's.
/// The first tab's code, right for the key it shows, can never confirm it: the page says
/// the set-up was replaced or finished, shows that key no more and offers to start again
/// (a typo there is still a typo); the second tab's code turns 2FA on.
async fn a_right_code_for_a_set_up_replaced_in_another_tab_says_so_and_shows_its_key_no_more(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "operator").await;
    let mut web = sign_in(&app, &email).await;
    let csrf = web.get("/console/2fa").await.csrf();
    let first = web.post("/console/2fa/enroll", &[("csrf", &csrf)]).await;
    assert_eq!(first.status, 200, "{}", first.html);
    let second = web.post("/console/2fa/enroll", &[("csrf", &csrf)]).await;
    assert_eq!(second.status, 200, "{}", second.html);
    let (old_key, old_form) = (secret_on(&first), enrolment_on(&first));
    let (new_key, new_form) = (secret_on(&second), enrolment_on(&second));
    assert_ne!(old_key, new_key);

    // A typo on the first tab: today's answer, its key shown again.
    let now = chrono::Utc::now().timestamp() as u64;
    let valid: Vec<String> = (0..=4)
        .map(|k| totp_of(&old_key).generate(now + k * 30 - 60))
        .collect();
    let typo = (0..1_000_000)
        .map(|n| format!("{n:06}"))
        .find(|c| !valid.contains(c))
        .unwrap_or_default();
    let wrong = web
        .post(
            "/console/2fa/confirm",
            &[
                ("csrf", &csrf),
                ("enrolment", &old_form),
                ("totp_code", &typo),
            ],
        )
        .await;
    assert_eq!(wrong.status, 400, "{}", wrong.html);
    assert!(
        wrong.html.contains("that code didn't match"),
        "{}",
        wrong.html
    );
    assert_eq!(secret_on(&wrong), old_key);

    // The first key's right code: refused by the API, and the page says why.
    let replaced = web
        .post(
            "/console/2fa/confirm",
            &[
                ("csrf", &csrf),
                ("enrolment", &old_form),
                ("totp_code", &totp_of(&old_key).generate(now)),
            ],
        )
        .await;
    assert_eq!(replaced.status, 400, "{}", replaced.html);
    assert!(
        replaced
            .html
            .contains("this set-up was replaced by one started elsewhere"),
        "{}",
        replaced.html
    );
    assert!(!replaced.html.contains(&old_key), "{}", replaced.html);
    assert!(!replaced.html.contains("<svg"), "{}", replaced.html);
    assert!(
        !replaced.html.contains(r#"name="enrolment""#),
        "{}",
        replaced.html
    );
    assert!(!replaced.html.contains("didn't match"), "{}", replaced.html);
    assert!(
        replaced.html.contains("Start again with a new key"),
        "{}",
        replaced.html
    );
    assert!(
        replaced.html.contains(r#"href="/console/2fa""#),
        "{}",
        replaced.html
    );

    // The second tab's key is the pending one: its code turns 2FA on.
    let ok = web
        .post(
            "/console/2fa/confirm",
            &[
                ("csrf", &csrf),
                ("enrolment", &new_form),
                ("totp_code", &totp_of(&new_key).generate(now)),
            ],
        )
        .await;
    assert_eq!(ok.status, 303, "{}", ok.html);
    assert_eq!(ok.location(), "/console/?done=two_factor_on");
    let logs = kirim_tests::captured_logs();
    assert!(
        !logs.contains(&old_key) && !logs.contains(&new_key),
        "no key in a log"
    );
}

/// A user store whose TOTP confirmation lands and then answers an error (its answer lost:
/// a timeout after the write); everything else is the real one's.
struct ConfirmLandsAnswerLost(std::sync::Arc<dyn kirim::ports::UserStore>);

kirim_tests::pass_through! {
    impl UserStore for ConfirmLandsAnswerLost via 0 {
        async fn confirm_totp(
            &self,
            tenant: &TenantId,
            id: &str,
            secret: &str,
            step: i64,
        ) -> Result<bool, StoreError> {
            self.0.confirm_totp(tenant, id, secret, step).await?;
            Err(StoreError::Unavailable("dynamodb: answer lost".into()))
        }
    }
}

/// A right confirmation code whose write lands but whose answer is lost (a `5xx`): the key
/// may be the user's live second factor now (here it is), so the page never shows it
/// again; it says the outcome is unknown and where to see whether 2FA is on.
async fn a_confirmation_answered_with_a_server_error_never_shows_its_key_again(b: Backend) {
    use tower::ServiceExt;
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "operator").await;
    let mut web = sign_in(&app, &email).await;
    let csrf = web.get("/console/2fa").await.csrf();
    let enrol = web.post("/console/2fa/enroll", &[("csrf", &csrf)]).await;
    assert_eq!(enrol.status, 200, "{}", enrol.html);
    let (secret, sealed) = (secret_on(&enrol), enrolment_on(&enrol));

    // The same console over a user store whose confirmation's answer is lost.
    let mut deps = app.app.deps.clone();
    deps.users = std::sync::Arc::new(ConfirmLandsAnswerLost(deps.users.clone()));
    let console = kirim::console::console_router(
        deps,
        kirim::console::ConsoleOptions {
            secure_cookies: false,
        },
    );
    let code = totp_of(&secret).generate(chrono::Utc::now().timestamp() as u64);
    // Hex, base64url and digits: nothing to escape in a form body.
    let body = format!("csrf={csrf}&enrolment={sealed}&totp_code={code}");
    let cookie = web
        .cookies
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    let req = axum::http::Request::post("/console/2fa/confirm")
        .header("cookie", cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(body))
        .unwrap();
    let res = console.oneshot(req).await.unwrap();
    let status = res.status();
    let html = String::from_utf8_lossy(
        &axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap_or_default(),
    )
    .into_owned();
    assert!(status.is_server_error(), "{status}: {html}");
    assert!(!html.contains(&secret), "{html}");
    assert!(!html.contains("<svg"), "{html}");
    assert!(!html.contains(r#"name="enrolment""#), "{html}");
    assert!(html.contains("Outcome unknown"), "{html}");
    assert!(html.contains(r#"href="/console/2fa""#), "{html}");
    // Why: the key is the user's live second factor.
    let (_, users) = call(&app, "GET", "/v1/users", Some(&t.key), None).await;
    let me = users["users"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|u| u["email"] == email.to_lowercase().as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(me["two_factor"], "enabled", "{users}");
}

/// The console's confirmation form, posted by `web`'s session to a console over `deps`:
/// the status and page.
async fn confirm_on(
    deps: kirim::service::Deps,
    web: &Browser<'_>,
    csrf: &str,
    sealed: &str,
    code: &str,
) -> (u16, String) {
    use tower::ServiceExt;
    let console = kirim::console::console_router(
        deps,
        kirim::console::ConsoleOptions {
            secure_cookies: false,
        },
    );
    // Hex, base64url and digits: nothing to escape in a form body.
    let body = format!("csrf={csrf}&enrolment={sealed}&totp_code={code}");
    let cookie = web
        .cookies
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    let req = axum::http::Request::post("/console/2fa/confirm")
        .header("cookie", cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(body))
        .unwrap();
    status_and_text(console.oneshot(req).await.unwrap()).await
}

/// A pending key whose data key KMS refuses (a key policy edited: every set-up at once) is
/// no set-up replaced elsewhere: the right code for the key the page showed gets a page that
/// says something went wrong on our side, not "replaced … or already finished" (whose
/// "start again" made a new key that failed the same way); nothing counted, and once the key
/// opens again the same code confirms.
async fn a_confirmation_whose_pending_key_does_not_open_says_something_went_wrong_not_replaced(
    b: Backend,
) {
    let app = spawn_app(b).await;
    let t = app.onboard(5).await;
    let (email, _) = new_user(&app, &t.key, "operator").await;
    let mut web = sign_in(&app, &email).await;
    let csrf = web.get("/console/2fa").await.csrf();
    let enrol = web.post("/console/2fa/enroll", &[("csrf", &csrf)]).await;
    assert_eq!(enrol.status, 200, "{}", enrol.html);
    let (secret, sealed) = (secret_on(&enrol), enrolment_on(&enrol));
    let mut refused_key = app.app.deps.clone();
    refused_key.data_keys = super::totp_at_rest::another_key(b).await;
    let now = chrono::Utc::now().timestamp() as u64;
    let code = totp_of(&secret).generate(now);
    for _ in 0..6 {
        let (status, html) = confirm_on(refused_key.clone(), &web, &csrf, &sealed, &code).await;
        assert_eq!(status, 503, "{html}");
        assert!(!html.contains("set-up-elsewhere"), "{html}");
        assert!(
            !html.contains("replaced by one started elsewhere"),
            "{html}"
        );
        assert!(!html.contains("didn't match"), "{html}");
        assert!(html.contains("something went wrong on our side"), "{html}");
        assert!(!html.contains("Idempotency-Key"), "{html}");
        assert!(html.contains(r#"href="/console/2fa""#), "{html}");
    }
    // Six wrong codes counted would have locked the confirmation (5 free).
    let (status, html) = confirm_on(app.app.deps.clone(), &web, &csrf, &sealed, &code).await;
    assert_eq!(status, 303, "{html}");
}

on_both_backends!(
    the_keys_and_users_pages_show_a_page_at_a_time_with_a_link_to_the_next,
    a_right_code_for_a_set_up_replaced_in_another_tab_says_so_and_shows_its_key_no_more,
    a_confirmation_answered_with_a_server_error_never_shows_its_key_again,
    a_confirmation_whose_pending_key_does_not_open_says_something_went_wrong_not_replaced,
    a_refused_allow_list_or_callback_url_keeps_what_was_typed,
    a_dashboard_whose_later_page_is_refused_shows_the_counts_so_far,
    a_refused_opt_out_or_user_keeps_its_chosen_scope_and_role,
    the_console_removes_a_copy_kept_under_a_user_id_by_that_id,
    the_console_over_https_sends_strict_transport_security_and_local_mode_does_not,
    over_https_the_console_signs_in_with_host_cookies_and_two_session_cookies_sign_nobody_in,
    over_https_cookies_of_the_old_names_are_removed_and_the_old_session_ended,
    a_request_with_two_session_cookies_is_not_signed_in_in_local_mode,
    an_opt_out_is_removed_only_on_its_confirmation_and_a_refused_one_keeps_its_number,
    the_console_sets_a_strict_http_only_session_cookie_and_its_security_headers,
    a_console_post_without_its_sessions_csrf_token_is_refused_and_changes_nothing,
    another_tenants_ids_answer_404_in_the_console,
    a_read_only_user_is_offered_no_changes_and_a_forged_post_is_refused,
    signing_out_of_the_console_ends_the_session,
    a_user_enrols_two_factor_from_a_qr_code_and_then_signs_in_with_a_code,
    a_wrong_confirmation_code_keeps_the_qr_code_and_the_next_right_code_turns_2fa_on,
    the_header_names_the_signed_in_users_email_and_role,
    a_signed_in_users_error_pages_keep_the_navigation_and_sign_out,
    an_unknown_console_path_answers_the_consoles_404_page_in_local_mode_and_on_lambda_alike,
);
