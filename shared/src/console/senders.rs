//! The account's sending numbers as the console offers them: a "Send from" choice on the
//! send form and the campaign form, and a WABA choice on the templates page, shown only
//! when the account has more than one (`GET /v1/phone-numbers`). With one number (most
//! accounts) nothing changes: sends go from the default, as a send without `from` does.

use maud::{html, Markup};
use serde_json::Value;

use super::pages::{text, Ctx};
use super::usage::PHONE_NUMBERS;
use super::ConsoleState;

/// The account's numbers, in the API's order (by id), or none when they cannot be read
/// (the role may not, or the API has not the route): the forms then send from the default.
/// The second field: the read failed (a `429`, a `5xx`), so whether there is a choice is
/// not known — said on the page rather than shown as an account with one number.
pub(super) struct Senders(Vec<Value>, bool);

impl Senders {
    pub(super) fn empty() -> Senders {
        Senders(Vec::new(), false)
    }

    pub(super) async fn read(s: &ConsoleState, ctx: &Ctx) -> Senders {
        if !ctx.may("GET", PHONE_NUMBERS) {
            return Senders::empty();
        }
        let a = s.api.get(&ctx.who, PHONE_NUMBERS).await;
        if !a.ok() {
            return Senders(Vec::new(), true);
        }
        Senders(
            a.body["phone_numbers"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            false,
        )
    }

    /// The numbers could not be read just now.
    pub(super) fn unread(&self) -> bool {
        self.1
    }

    /// Whether there is a choice to offer.
    pub(super) fn several(&self) -> bool {
        self.0.len() > 1
    }

    /// `from` when it is one of the account's numbers, else empty (the default).
    pub(super) fn known<'a>(&self, from: &'a str) -> &'a str {
        if self.find(from).is_some() {
            from
        } else {
            ""
        }
    }

    fn find(&self, from: &str) -> Option<&Value> {
        self.0
            .iter()
            .find(|n| !from.is_empty() && text(n, "phone_number_id") == from)
    }

    /// The WABA of the number `from` (empty: the default number's, which needs no
    /// `waba_id`).
    pub(super) fn waba_of(&self, from: &str) -> &str {
        self.find(from).map_or("", |n| text(n, "waba_id"))
    }

    /// The account's WABAs, each once, in the numbers' order.
    pub(super) fn wabas(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for n in &self.0 {
            let w = text(n, "waba_id");
            if !w.is_empty() && !out.contains(&w) {
                out.push(w);
            }
        }
        out
    }

    /// A number as a person reads it: its display number (or id), "default", and "held"
    /// when Meta's limit holds it (a send from it is refused until an admin resumes it).
    fn label(n: &Value) -> String {
        let mut shown = Self::shown(n);
        if n["default"].as_bool() == Some(true) {
            shown.push_str(", default");
        }
        if n["hold"].is_object() {
            shown.push_str(", held: sends refused until resumed");
        }
        shown
    }

    /// A `select` of the numbers named `name` (value: the phone number id; the default
    /// selected when `chosen` is none of them), or nothing with one number.
    pub(super) fn select(&self, id: &str, name: &str, chosen: &str) -> Markup {
        if self.unread() && chosen.is_empty() {
            return html! {
                p.hint #sender-unread { "The account's numbers could not be read just now: this form sends from the default number. Reload the page to choose another." }
            };
        }
        if !self.several() {
            return Self::kept(name, chosen);
        }
        let chosen = self.known(chosen);
        html! {
            div {
                label for=(id) { "Send from" }
                select id=(id) name=(name) {
                    @for n in &self.0 {
                        @let value = text(n, "phone_number_id");
                        @let picked = if chosen.is_empty() { n["default"].as_bool() == Some(true) } else { value == chosen };
                        option value=(value) selected[picked] { (Self::label(n)) }
                    }
                }
            }
        }
    }

    /// A form that comes back with a sender chosen (its outcome not known: the same key)
    /// while the numbers cannot be read: the choice is kept as it was, or sending it again
    /// would send from the default, a body its key refuses (or a second message).
    pub(super) fn kept(name: &str, chosen: &str) -> Markup {
        html! {
            @if !chosen.is_empty() {
                input type="hidden" name=(name) value=(chosen);
                p.hint #sender-kept { "Sent from " (chosen) " (as chosen: the account's numbers could not be read just now)." }
            }
        }
    }

    /// The number a message or campaign went from (its view's `from`), as the dashboard
    /// names numbers: its display number and its id. One the account no longer has (an
    /// account always has one: the list is read, so `from` was removed since) is its id
    /// and "(removed)"; with the numbers unread, its id as it is. A record from before
    /// messages kept their number has none: it went from the default number of the time,
    /// which one is not known.
    pub(super) fn sent_from(&self, from: &Value) -> String {
        let Some(id) = from.as_str().filter(|f| !f.is_empty()) else {
            return "The default number (which one was not recorded)".into();
        };
        match self.find(id) {
            Some(n) => Self::shown(n),
            None if self.0.is_empty() => id.to_owned(),
            None => format!("{id} (removed)"),
        }
    }

    /// Whether a list of messages or campaigns needs its "From" column: the account has
    /// several numbers, or one of `records` went from a number other than its one.
    pub(super) fn column_for(&self, records: &[Value]) -> bool {
        self.several()
            || records.iter().any(|r| {
                r["from"]
                    .as_str()
                    .is_some_and(|f| !self.0.is_empty() && self.find(f).is_none())
            })
    }

    /// A number's display number and its id (its id alone without one).
    fn shown(n: &Value) -> String {
        let id = text(n, "phone_number_id");
        n["display_phone_number"]
            .as_str()
            .filter(|d| !d.is_empty())
            .map_or_else(|| id.to_owned(), |d| format!("{d} ({id})"))
    }

    /// The label of the number `from` (the default's when none is chosen).
    pub(super) fn describe(&self, from: &str) -> String {
        let n = self
            .find(from)
            .or_else(|| self.0.iter().find(|n| n["default"].as_bool() == Some(true)));
        n.map(Self::label).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn two() -> Senders {
        Senders(
            vec![
                json!({"phone_number_id": "111", "waba_id": "9", "display_phone_number": "+60 12-345", "default": true}),
                json!({"phone_number_id": "222", "waba_id": "8", "display_phone_number": null, "default": false}),
                json!({"phone_number_id": "333", "waba_id": "9", "display_phone_number": "", "default": false}),
            ],
            false,
        )
    }

    #[test]
    fn a_choice_of_sender_is_offered_only_with_several_numbers_and_names_the_default() {
        let one = Senders(
            vec![json!({"phone_number_id": "111", "waba_id": "9", "default": true})],
            false,
        );
        assert_eq!(one.select("f", "from", "").into_string(), "");
        let html = two().select("f", "from", "").into_string();
        assert!(
            html.contains(r#"<option value="111" selected>+60 12-345 (111), default</option>"#),
            "{html}"
        );
        assert!(
            html.contains(r#"<option value="222">222</option>"#),
            "{html}"
        );
        let html = two().select("f", "from", "222").into_string();
        assert!(html.contains(r#"<option value="222" selected>"#), "{html}");
        assert!(!html.contains(r#"<option value="111" selected>"#), "{html}");
        // Someone else's number (or a typo) is not kept: the default is selected.
        let html = two().select("f", "from", "999").into_string();
        assert!(html.contains(r#"<option value="111" selected>"#), "{html}");
    }

    #[test]
    fn a_held_number_is_offered_marked_held() {
        let mut s = two();
        s.0[1]["hold"] = json!({"code": 131048, "since": "2026-12-05T22:59:00Z", "reason": "spam"});
        let html = s.select("f", "from", "").into_string();
        assert!(
            html.contains(r#"<option value="222">222, held: sends refused until resumed</option>"#),
            "{html}"
        );
        assert!(
            html.contains(r#"<option value="333">333</option>"#),
            "{html}"
        );
    }

    #[test]
    fn a_numbers_waba_is_found_by_its_id_and_each_waba_is_listed_once() {
        let s = two();
        assert_eq!(s.waba_of("222"), "8");
        assert_eq!(s.waba_of(""), "");
        assert_eq!(s.waba_of("999"), "");
        assert_eq!(s.wabas(), vec!["9", "8"]);
        assert_eq!(s.known("999"), "");
        assert_eq!(s.known("333"), "333");
        assert_eq!(s.describe(""), "+60 12-345 (111), default");
        assert_eq!(s.describe("333"), "333");
    }

    #[test]
    fn the_number_a_record_went_from_is_named_by_its_display_an_unknown_one_as_removed() {
        let s = two();
        assert_eq!(s.sent_from(&json!("111")), "+60 12-345 (111)");
        assert_eq!(s.sent_from(&json!("222")), "222");
        assert_eq!(s.sent_from(&json!("999")), "999 (removed)");
        assert_eq!(
            s.sent_from(&Value::Null),
            "The default number (which one was not recorded)"
        );
        // Not read: nothing is called removed.
        assert_eq!(Senders(Vec::new(), true).sent_from(&json!("999")), "999");
        assert_eq!(Senders::empty().sent_from(&json!("999")), "999");
        // A "From" column: with several numbers, or a record from a removed one.
        let one = Senders(
            vec![json!({"phone_number_id": "111", "waba_id": "9", "default": true})],
            false,
        );
        assert!(!one.column_for(&[json!({"from": "111"}), json!({"from": null})]));
        assert!(one.column_for(&[json!({"from": "999"})]));
        assert!(s.column_for(&[]));
        assert!(!Senders::empty().column_for(&[json!({"from": "999"})]));
    }

    /// Numbers that could not be read are said so: never shown as an account with one
    /// number, and a sender asked for is kept as chosen, not quietly the default.
    #[test]
    fn numbers_that_could_not_be_read_are_said_so_and_a_chosen_sender_is_kept() {
        let unread = Senders(Vec::new(), true);
        let html = unread.select("f", "from", "").into_string();
        assert!(html.contains("could not be read just now"), "{html}");
        let html = unread.select("f", "from", "222").into_string();
        assert!(
            html.contains(r#"name="from" value="222""#) && html.contains("as chosen"),
            "{html}"
        );
        assert_eq!(Senders::empty().select("f", "from", "").into_string(), "");
    }
}
