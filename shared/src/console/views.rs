//! HTML: the page frame, notices, the status chart and the QR code. Plain forms, no
//! scripts, no inline styles (the CSP forbids both); one embedded stylesheet.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::domain::Role;

use super::may;

pub const CSS: &str = include_str!("console.css");

/// A line at the top of a page: what just happened, or why not.
#[derive(Clone, Debug)]
pub enum Notice {
    Done(String),
    /// Refused: nothing was changed.
    Problem(String),
    /// The API answered `5xx`: a write may have landed with its answer lost, so the page
    /// never says "not done".
    Unknown(String),
    /// Something to heed that is neither (the session ended): said as it is.
    Alert(String),
}

/// What the frame needs to know of the signed-in user.
pub struct Chrome<'a> {
    pub role: Role,
    /// Whom the page is for (the user's email: never a token).
    pub email: &'a str,
    pub csrf: &'a str,
    pub current: &'a str,
}

/// A page answer: HTML, never cached.
pub fn page(status: StatusCode, body: Markup) -> Response {
    let mut res = (status, body.into_string()).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Kirim console" }
            link rel="stylesheet" href="/console/assets/console.css";
        }
    }
}

pub fn notice(n: Option<&Notice>) -> Markup {
    html! {
        @match n {
            Some(Notice::Done(t)) => p.notice.done role="status" { (t) },
            Some(Notice::Problem(t)) => p.notice.problem role="alert" { "Not done: " (t) },
            Some(Notice::Unknown(t)) => p.notice.problem role="alert" { "Outcome unknown: " (t) },
            Some(Notice::Alert(t)) => p.notice.problem #notice-alert role="alert" { (t) },
            None => {},
        }
    }
}

/// The hidden CSRF field every form carries.
pub fn csrf(token: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(token); }
}

/// A page of a signed-in user: navigation (only what the role may see), sign-out.
pub fn frame(title: &str, c: &Chrome, n: Option<&Notice>, content: Markup) -> Markup {
    let links: [(&str, &str, bool); 11] = [
        ("/console/", "Dashboard", may(c.role, "GET", "/v1/account")),
        (
            "/console/messages",
            "Messages",
            may(c.role, "GET", "/v1/messages"),
        ),
        (
            "/console/campaigns",
            "Campaigns",
            may(c.role, "GET", "/v1/broadcasts/{id}"),
        ),
        (
            "/console/templates",
            "Templates",
            may(c.role, "GET", "/v1/templates"),
        ),
        (
            "/console/usage",
            "Usage",
            super::usage::usage_available(c.role),
        ),
        (
            "/console/opt-outs",
            "Opt-outs",
            may(c.role, "GET", "/v1/opt-outs"),
        ),
        (
            "/console/api-keys",
            "API keys",
            may(c.role, "GET", "/v1/api-keys"),
        ),
        ("/console/users", "Users", may(c.role, "GET", "/v1/users")),
        (
            "/console/audit",
            "Audit log",
            may(c.role, "GET", "/v1/audit"),
        ),
        (
            "/console/settings",
            "Settings",
            may(c.role, "GET", "/v1/settings/ip-allowlist"),
        ),
        (
            "/console/2fa",
            "Two-factor",
            may(c.role, "POST", "/v1/auth/2fa/enroll"),
        ),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    span.brand { "Kirim" }
                    nav aria-label="Console" {
                        ul {
                            @for (href, label, shown) in links {
                                @if shown {
                                    li {
                                        a href=(href) aria-current=[(href == c.current).then_some("page")] { (label) }
                                    }
                                }
                            }
                        }
                    }
                    form.signout method="post" action="/console/logout" {
                        (csrf(c.csrf))
                        span.role { "Signed in as " span.who { (c.email) } " (" (c.role.as_str().replace('_', "-")) ")" }
                        button type="submit" { "Sign out" }
                    }
                }
                main #main {
                    h1 { (title) }
                    (notice(n))
                    (content)
                }
            }
        }
    }
}

/// A page without navigation (sign-in, errors).
pub fn bare(title: &str, n: Option<&Notice>, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.top { span.brand { "Kirim" } }
                main #main.narrow {
                    h1 { (title) }
                    (notice(n))
                    (content)
                }
            }
        }
    }
}

/// An error page's words, kept on its answer: where the request had a signed-in user, the
/// console's layer (`pages::errors_in_frame`) puts them in that user's frame, with the
/// navigation, instead of the bare page (which knows nothing of the user).
#[derive(Clone, Debug)]
pub struct ErrorWords {
    pub title: &'static str,
    pub text: String,
}

impl ErrorWords {
    pub fn content(&self) -> Markup {
        html! {
            p #error-text { (self.text) }
            p { a href="/console/" { "Back to the console" } }
        }
    }
}

/// An error page that says what to do, never internals.
pub fn error_page(status: StatusCode, text: &str) -> Response {
    let title = match status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::FORBIDDEN => "Not allowed",
        s if s.is_server_error() => "Something went wrong",
        _ => "Cannot do that",
    };
    let words = ErrorWords {
        title,
        text: text.to_owned(),
    };
    let mut res = page(status, bare(title, None, words.content()));
    res.extensions_mut().insert(words);
    res
}

/// The message statuses in their order, with the fill pattern that tells them apart
/// without colour.
pub const STATUSES: [&str; 8] = [
    "scheduled",
    "accepted",
    "sending",
    "sent",
    "delivered",
    "read",
    "failed",
    "cancelled",
];

fn pattern(prefix: &str, status: &str) -> Markup {
    // Its own namespace: a page may use `{prefix}-{status}` for other elements (a count).
    let id = format!("{prefix}-pattern-{status}");
    html! {
        @match status {
            "accepted" => pattern id=(id) width="8" height="8" patternUnits="userSpaceOnUse" {
                rect width="8" height="8" fill="#dbe4ff" {}
                circle cx="4" cy="4" r="1.6" fill="#1b2a6b" {}
            },
            "sending" => pattern id=(id) width="8" height="8" patternUnits="userSpaceOnUse" {
                rect width="8" height="8" fill="#fff3bf" {}
                path d="M0 8 L8 0" stroke="#5c4400" stroke-width="1.5" {}
            },
            "sent" => pattern id=(id) width="8" height="8" patternUnits="userSpaceOnUse" {
                rect width="8" height="8" fill="#d3f9d8" {}
                path d="M0 4 H8" stroke="#1e4620" stroke-width="1.5" {}
            },
            "delivered" => pattern id=(id) width="8" height="8" patternUnits="userSpaceOnUse" {
                rect width="8" height="8" fill="#c5f6fa" {}
                path d="M0 8 L8 0 M0 0 L8 8" stroke="#0b3d42" stroke-width="1.2" {}
            },
            "read" => pattern id=(id) width="8" height="8" patternUnits="userSpaceOnUse" {
                rect width="8" height="8" fill="#2b3a8c" {}
            },
            "failed" => pattern id=(id) width="8" height="8" patternUnits="userSpaceOnUse" {
                rect width="8" height="8" fill="#ffe3e3" {}
                path d="M4 0 V8" stroke="#7a1010" stroke-width="2" {}
            },
            "scheduled" => pattern id=(id) width="8" height="8" patternUnits="userSpaceOnUse" {
                rect width="8" height="8" fill="#f1f3f5" {}
                rect x="2" y="2" width="4" height="4" fill="#343a40" {}
            },
            _ => pattern id=(id) width="8" height="8" patternUnits="userSpaceOnUse" {
                rect width="8" height="8" fill="#e9ecef" {}
                path d="M0 0 L8 8" stroke="#343a40" stroke-width="1" {}
            },
        }
    }
}

/// Horizontal bars, one per status, each labelled with its name and count (readable
/// without colour: the labels carry the numbers, the patterns differ too). A table with
/// the same numbers follows for screen readers and copying.
pub fn status_chart(id: &str, caption: &str, counts: &[(&str, u64)]) -> Markup {
    let max = counts.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    // Drawn 600 units wide and scaled to the page: its text is 20 units, so that at 375 px
    // (about 340 px of chart) a label is still some 11 px.
    let row = 34u64;
    let height = row * counts.len() as u64 + 10;
    let summary: Vec<String> = counts.iter().map(|(s, n)| format!("{s} {n}")).collect();
    html! {
        figure.chart {
            figcaption id=(format!("{id}-caption")) { (caption) }
            svg viewBox=(format!("0 0 600 {height}")) role="img"
                aria-labelledby=(format!("{id}-caption {id}-summary")) xmlns="http://www.w3.org/2000/svg" {
                desc id=(format!("{id}-summary")) { (summary.join(", ")) }
                defs { @for (s, _) in counts { (pattern(id, s)) } }
                @for (i, (s, n)) in counts.iter().enumerate() {
                    @let y = 5 + row * i as u64;
                    @let w = if *n == 0 { 0 } else { (n * 330 / max).max(2) };
                    text x="0" y=(y + 23) font-size="20" fill="#111" { (s) }
                    rect x="140" y=(y + 5) width=(w) height="24" fill=(format!("url(#{id}-pattern-{s})")) stroke="#111" stroke-width="1" {}
                    text x=(150 + w) y=(y + 23) font-size="20" fill="#111" { (n) }
                }
            }
        }
    }
}

/// The otpauth URI as a QR code (inline SVG), or nothing if it cannot be encoded.
pub fn qr_svg(uri: &str) -> Markup {
    match qrcode::QrCode::new(uri.as_bytes()) {
        Ok(code) => {
            let svg = code
                .render::<qrcode::render::svg::Color>()
                .min_dimensions(220, 220)
                .quiet_zone(true)
                .build();
            // Drop the XML declaration: the SVG sits inside HTML.
            let svg = match svg.find("<svg") {
                Some(i) => svg[i..].to_owned(),
                None => svg,
            };
            html! { div.qr role="img" aria-label="QR code of the authenticator set-up link" { (PreEscaped(svg)) } }
        }
        Err(_) => html! {},
    }
}
