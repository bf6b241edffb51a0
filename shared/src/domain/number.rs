//! A business phone number as Meta's Graph API describes it (`GET /{version}/
//! {phone_number_id}`), read tolerantly: the daily sync learns each number's quality,
//! throughput and display from it, without waiting for a `phone_number_quality_update`
//! webhook. Services see [`MetaPhoneNumber`], never Meta's JSON.
//!
//! Tolerant: a field missing, of another type, or holding a value Kirim does not know (a
//! new enum value of Meta's) reads as unsaid, never as a failure, so one odd field never
//! costs the others (and what is known of it is left as it is).

use serde_json::Value;

use super::TemplateQuality;

/// Meta's messages a second for a number at `throughput.level` `HIGH`.
pub const HIGH_THROUGHPUT_PER_SEC: u32 = 1000;
/// ...and at `STANDARD`.
pub const STANDARD_THROUGHPUT_PER_SEC: u32 = 80;

/// The most characters of a free-text field kept (verified name, enum values).
const MAX_TEXT: usize = 128;

/// Meta's throughput level (`throughput.level`, in any case) as messages a second: `HIGH`
/// 1000, `STANDARD` 80. `NOT_APPLICABLE`, or a level Kirim does not know: `None` (nothing
/// said; the number keeps what it has).
pub fn throughput_of_level(level: &str) -> Option<u32> {
    match level.to_ascii_uppercase().as_str() {
        "HIGH" => Some(HIGH_THROUGHPUT_PER_SEC),
        "STANDARD" => Some(STANDARD_THROUGHPUT_PER_SEC),
        _ => None,
    }
}

/// Meta's `quality_rating` of a number, in any case: `GREEN`, `YELLOW`, `RED`; `NA` (or
/// `UNKNOWN`, as the WABA's number list words it) is Meta saying it has not rated the
/// number: `unknown`. A value Kirim does not know: `None` (nothing said).
pub fn quality_of_rating(rating: &str) -> Option<TemplateQuality> {
    match rating.to_ascii_uppercase().as_str() {
        "GREEN" => Some(TemplateQuality::Green),
        "YELLOW" => Some(TemplateQuality::Yellow),
        "RED" => Some(TemplateQuality::Red),
        "NA" | "UNKNOWN" => Some(TemplateQuality::Unknown),
        _ => None,
    }
}

/// What Meta's read of one number said (`None`: not said, or not understood).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetaPhoneNumber {
    /// Meta's `id`, when given (the number asked for).
    pub id: Option<String>,
    /// As Meta shows it (`+1 631-555-5555`): digits, spaces and `+-()` only, at most 32.
    pub display_phone_number: Option<String>,
    pub verified_name: Option<String>,
    pub quality: Option<TemplateQuality>,
    /// `throughput.level` as messages a second ([`throughput_of_level`]).
    pub throughput_per_sec: Option<u32>,
    /// Meta's `messaging_limit_tier` (`TIER_1K`...), as Meta words it.
    pub messaging_limit_tier: Option<String>,
    /// Meta's `name_status` (`APPROVED`...), as Meta words it.
    pub name_status: Option<String>,
}

fn text(body: &Value, field: &str) -> Option<String> {
    body.get(field)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.chars().take(MAX_TEXT).collect())
}

/// An enum value of Meta's: letters, digits and `_` only (anything else is not one).
fn word(body: &Value, field: &str) -> Option<String> {
    text(body, field)
        .filter(|s| s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
}

fn display(body: &Value) -> Option<String> {
    text(body, "display_phone_number").filter(|d| {
        d.len() <= 32
            && d.bytes().any(|b| b.is_ascii_digit())
            && d.bytes()
                .all(|b| b.is_ascii_digit() || b" +-()".contains(&b))
    })
}

/// Reads Meta's answer to `GET /{version}/{phone_number_id}`. `None` when the body is not
/// an object at all; any field Kirim cannot read is left unsaid.
pub fn parse_phone_number(body: &Value) -> Option<MetaPhoneNumber> {
    if !body.is_object() {
        return None;
    }
    Some(MetaPhoneNumber {
        id: word(body, "id").filter(|id| id.bytes().all(|b| b.is_ascii_digit())),
        display_phone_number: display(body),
        verified_name: text(body, "verified_name"),
        quality: word(body, "quality_rating").and_then(|r| quality_of_rating(&r)),
        throughput_per_sec: body
            .get("throughput")
            .and_then(|t| t.get("level"))
            .and_then(Value::as_str)
            .and_then(throughput_of_level),
        messaging_limit_tier: word(body, "messaging_limit_tier"),
        name_status: word(body, "name_status"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_numbers_quality_throughput_and_display_are_read_from_metas_answer() {
        let n = parse_phone_number(&json!({
            "id": "106853218861309", "display_phone_number": "+1 555-555-5555",
            "verified_name": "Jaspers Market", "quality_rating": "GREEN",
            "throughput": {"level": "HIGH"}, "messaging_limit_tier": "TIER_10K",
            "name_status": "APPROVED", "code_verification_status": "VERIFIED"
        }))
        .expect("a number");
        assert_eq!(n.id.as_deref(), Some("106853218861309"));
        assert_eq!(n.display_phone_number.as_deref(), Some("+1 555-555-5555"));
        assert_eq!(n.verified_name.as_deref(), Some("Jaspers Market"));
        assert_eq!(n.quality, Some(TemplateQuality::Green));
        assert_eq!(n.throughput_per_sec, Some(1000));
        assert_eq!(n.messaging_limit_tier.as_deref(), Some("TIER_10K"));
        assert_eq!(n.name_status.as_deref(), Some("APPROVED"));
    }

    #[test]
    fn values_meta_may_add_or_send_oddly_read_as_unsaid_never_as_a_failure() {
        let n = parse_phone_number(&json!({
            "quality_rating": "PURPLE", "throughput": {"level": "LUDICROUS"},
            "display_phone_number": "call us", "messaging_limit_tier": 7, "id": "12a"
        }))
        .expect("still a number");
        assert_eq!(n, MetaPhoneNumber::default());
        // Meta saying it has not rated the number, or that throughput does not apply.
        let n = parse_phone_number(&json!({"quality_rating": "NA",
            "throughput": {"level": "NOT_APPLICABLE"}}))
        .expect("a number");
        assert_eq!(n.quality, Some(TemplateQuality::Unknown));
        assert_eq!(n.throughput_per_sec, None);
        assert_eq!(
            parse_phone_number(
                &json!({"quality_rating": "yellow", "throughput": {"level": "standard"}})
            )
            .map(|n| (n.quality, n.throughput_per_sec)),
            Some((Some(TemplateQuality::Yellow), Some(80)))
        );
        assert_eq!(parse_phone_number(&json!(["GREEN"])), None);
        assert_eq!(parse_phone_number(&json!(null)), None);
    }
}
