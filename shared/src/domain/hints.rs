//! What a failure code means to a person, and what to do about it: ONE table of Meta's
//! error codes Kirim knows and Kirim's own codes, each with a plain-language hint. Every
//! failed message's error carries its hint; the README renders this table (a test keeps
//! them the same).

use super::ErrorCode;

/// A code of the table: Meta's number or Kirim's own word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    Meta(i64),
    Kirim(&'static str),
}

impl Code {
    fn matches(self, code: &ErrorCode) -> bool {
        match (self, code) {
            (Code::Meta(a), ErrorCode::Meta(b)) => a == *b,
            (Code::Kirim(a), ErrorCode::Kirim(b)) => a == b,
            _ => false,
        }
    }

    fn label(self) -> String {
        match self {
            Code::Meta(c) => c.to_string(),
            Code::Kirim(c) => format!("`{c}`"),
        }
    }
}

/// Every code Kirim knows, with its hint.
pub const HINTS: &[(Code, &str)] = &[
    (Code::Meta(130429), "Meta's sending limit for this phone number was reached. A message still “accepted” is being retried: do not send it again. One that failed with it (after Kirim's tries, or reported failed by Meta after accepting it) is not tried again: send it again later, more slowly, or ask Meta for a higher messaging tier."),
    (Code::Meta(130472), "Meta held back this marketing message because the customer is part of a Meta experiment. Nothing to fix; do not resend it."),
    (Code::Meta(131000), "Something went wrong at Meta. A message still “accepted” is being retried: do not send it again. One that failed with it (after Kirim's tries, or reported failed by Meta after accepting it) is not tried again: send it again later."),
    (Code::Meta(131026), "The message could not be delivered: the number may not use WhatsApp, may not have accepted Meta's latest terms, or may run an old WhatsApp version. Check the number with the customer."),
    (Code::Meta(131042), "Meta reported a payment problem on the WhatsApp Business Account, so the account was paused. The account owner must fix the payment method in Meta Business Manager, then ask the provider to resume the account."),
    (Code::Meta(131047), "More than 24 hours have passed since the customer last wrote to you, so a free-text message is not allowed. Send an approved template instead."),
    (Code::Meta(131048), "Meta limited sending from this number because too many messages were blocked or reported as spam. Kirim held the number (its other numbers still send): improve message quality, wait, then an admin resumes it (POST /v1/phone-numbers/{id}/resume, the Resume button on the console's dashboard)."),
    (Code::Meta(131049), "Meta limited marketing messages to this customer for now, to keep engagement healthy. Do not retry right away; try again in a few days or with a different message."),
    (Code::Meta(131050), "The customer turned off marketing messages from you. Kirim will not send marketing templates to them; utility and authentication messages are still allowed."),
    (Code::Meta(131051), "Meta does not support this message type. Check the message's content."),
    (Code::Meta(131056), "Too many messages to the same customer in a short time. A message still “accepted” is being retried later: do not send it again. One that failed with it (after Kirim's tries, or reported failed by Meta after accepting it) is not tried again: space out messages to one customer and send it again later."),
    (Code::Meta(132000), "The number of parameters does not match the approved template. Give exactly one value for each placeholder of the template's body."),
    (Code::Meta(132001), "No approved template has this name and language. Check the template's name and language in Meta Business Manager (or GET /v1/templates)."),
    (Code::Meta(132015), "Meta paused this template because of low quality. Edit the template or use another one."),
    (Code::Meta(132016), "Meta disabled this template after repeated low quality. Create a new template."),
    (Code::Meta(133010), "The sending phone number is not registered with WhatsApp's Cloud API. Ask your provider to register it."),
    (Code::Meta(102), "The Meta access session of this account is invalid or has expired (Meta's code 102), so the account was paused. Ask your provider to update the token and resume the account, then send again."),
    (Code::Meta(190), "The Meta access token of this account is invalid or has expired, so the account was paused. Ask your provider to update the token and resume the account, then send again."),
    (Code::Meta(368), "Meta temporarily blocked the account for policy violations, so it was paused. Review Meta's policy notice in Business Manager."),
    (Code::Kirim("recipient_opted_out"), "The customer asked not to receive messages from you (a STOP reply or an opt-out). Nothing was sent or charged; send again only if they opt back in."),
    (Code::Kirim("outside_customer_service_window"), "The customer has not written to this number in the last 24 hours, so a free-text message would be refused by Meta. Nothing was sent or charged; send an approved template instead."),
    (Code::Kirim("tenant_suspended"), "Your account was suspended before the message was sent. It was refunded; contact your provider, then send again."),
    (Code::Kirim("tenant_closed"), "The account was closed before the message was sent. It was refunded."),
    (Code::Kirim("cancelled"), "The message was cancelled before it was sent. It was refunded."),
    (Code::Kirim("outcome_unknown"), "Meta never confirmed the message before the sending deadline. It may have been delivered, so it was not refunded; check with the customer before sending again."),
    (Code::Kirim("enqueue_failed"), "Kirim could not queue the message. It was not sent and was refunded; send it again."),
    (Code::Kirim("meta_token_missing"), "The account has no Meta access token. It was refunded; ask your provider to set the token."),
    (Code::Kirim("meta_unreachable"), "Kirim could not reach Meta. A message still “accepted” is being retried, and one sent or delivered since got through: do not send it again. One that failed with it (after several tries) was refunded; send it again later."),
    (Code::Kirim("meta_transient_error"), "Meta answered with a temporary error (its code and text are in the title). A message still “accepted” is being retried, and one sent or delivered since got through: do not send it again. One that failed with it (on every try) was refunded; send it again later."),
    (Code::Kirim("meta_unavailable"), "Meta answered that it was unavailable (503). A message still “accepted” is being retried, and one sent or delivered since got through: do not send it again. One that failed with it (after several tries) was refunded; send it again later."),
    (Code::Kirim("meta_refused_unreadable"), "Meta (or a proxy in front of it) refused the request without saying why. A message still “accepted” is being retried, and one sent or delivered since got through: do not send it again. One that failed with it (after several tries) was refunded; send it again later, and tell your provider if it repeats."),
    (Code::Kirim("claim_answer_lost"), "Kirim could not confirm it had taken the message for sending, so it gave it back to try again. Kirim retries automatically; nothing to do."),
    (Code::Kirim("opt_out_check_failed"), "A check before sending failed for a moment. Kirim retries automatically; nothing to do."),
    (Code::Kirim("meta_token_unreadable"), "The account's Meta access token could not be read for a moment. Kirim retries automatically; nothing to do."),
    (Code::Kirim("rate_limiter_unavailable"), "The sending-rate check failed for a moment. Kirim retries automatically; nothing to do."),
    (Code::Kirim("meta_token_replaced"), "Meta refused the account's previous access token, just replaced: the message is being sent again with the new one. Kirim retries automatically; nothing to do."),
    (Code::Kirim("failure_not_recorded"), "Kirim could not record an attempt's outcome for a moment. Kirim retries automatically; nothing to do."),
    (Code::Kirim("release_not_recorded"), "Meta refused an attempt for a moment, and Kirim could not record that it would try again; it records it with the retry. Kirim retries automatically; nothing to do."),
    (Code::Kirim("sender_held"), "The phone number the message was to be sent from was held before it was sent (Meta limited it: 131048). It was refunded; send from another number, or send again once an admin has resumed it."),
    (Code::Kirim("sender_removed"), "The phone number the message was to be sent from was removed from the account before it was sent. It was refunded; send it again from another number (GET /v1/phone-numbers)."),
    (Code::Kirim("template_not_found"), "The template was deleted in Meta (or is no longer in the sender's catalogue) after the campaign was accepted, before this message was queued. It was refunded; send again with a template of the catalogue (GET /v1/templates)."),
    (Code::Kirim("template_not_approved"), "Meta paused, disabled or rejected the template after the campaign was accepted, before this message was queued. It was refunded; send again once the template is approved again, or with another one."),
    (Code::Kirim("template_parameters_mismatch"), "The template was edited in Meta after the campaign was accepted and now takes other body parameters. It was refunded; send again with the parameters it takes now."),
    (Code::Kirim("marketing_paused"), "Marketing templates were paused for this account (its opt-out or undeliverable rate above its limit) after the campaign was accepted, before this message was queued. It was refunded; utility and authentication templates still go."),
    (Code::Kirim("dispatch_lost"), "The message's dispatch job was lost (parked on the dead-letter queue and gone) before it was sent. It was refunded; send it again, and tell your provider."),
    (Code::Kirim("sender_unreadable"), "The sending phone number could not be read for a moment. Kirim retries automatically; nothing to do."),
    (Code::Kirim("unknown"), "Meta reported a failure without a reason. Send again later; if it repeats, contact your provider."),
];

/// The hint for a failure code: the table's, or a pointer to Meta's reference for a
/// Meta code Kirim does not know yet.
pub fn hint(code: &ErrorCode) -> String {
    match HINTS.iter().find(|(c, _)| c.matches(code)) {
        Some((_, h)) => (*h).to_owned(),
        None => match code {
            ErrorCode::Meta(c) => format!(
                "Meta refused the message with error {c}. Look the code up in Meta's WhatsApp Cloud API error codes; if it repeats, contact your provider."
            ),
            ErrorCode::Kirim(_) => {
                "The message failed. Send again later; if it repeats, contact your provider."
                    .to_owned()
            }
        },
    }
}

/// The table as Markdown (the README's copy).
pub fn markdown_table() -> String {
    let mut out = String::from("| code | what it means and what to do |\n|---|---|\n");
    for (code, h) in HINTS {
        out.push_str(&format!("| {} | {} |\n", code.label(), h));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_the_issue_names_has_its_own_hint_and_no_code_is_listed_twice() {
        for c in [
            130429, 130472, 131000, 131026, 131042, 131047, 131048, 131049, 131050, 131051, 131056,
            132000, 132001, 132015, 132016, 133010, 190, 368,
        ] {
            assert!(
                HINTS.iter().any(|(k, _)| *k == Code::Meta(c)),
                "no hint for {c}"
            );
        }
        for c in [
            "recipient_opted_out",
            "tenant_suspended",
            "cancelled",
            "outcome_unknown",
            // A campaign's recipients closed before queueing (`broadcasts::sendable_now`).
            "template_not_found",
            "template_not_approved",
            "template_parameters_mismatch",
            "marketing_paused",
        ] {
            assert!(
                HINTS.iter().any(|(k, _)| *k == Code::Kirim(c)),
                "no hint for {c}"
            );
        }
        for (i, (a, _)) in HINTS.iter().enumerate() {
            assert!(!HINTS[i + 1..].iter().any(|(b, _)| a == b), "{a:?} twice");
        }
    }

    #[test]
    fn the_readme_shows_exactly_this_table() {
        let readme = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
        )
        .expect("README.md");
        assert!(
            readme.contains(&markdown_table()),
            "README's failure-code table differs from domain::hints; paste this:\n{}",
            markdown_table()
        );
    }

    #[test]
    fn a_code_gets_its_hint_and_an_unknown_meta_code_points_to_metas_reference() {
        assert!(hint(&ErrorCode::Meta(131047)).contains("template"));
        assert!(hint(&ErrorCode::from("recipient_opted_out")).contains("STOP"));
        assert!(hint(&ErrorCode::Meta(999_999)).contains("999999"));
        // A Kirim word equal to a Meta number is not that number.
        assert_ne!(
            hint(&ErrorCode::from("131047")),
            hint(&ErrorCode::Meta(131047))
        );
    }
}
