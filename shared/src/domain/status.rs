//! A message's delivery status and the forward-only rule, as the list of statuses each
//! may follow (the stores turn it into a conditional write).

use serde::{Deserialize, Serialize};

/// A message's delivery status. It only ever moves forward:
/// `scheduled → accepted → sending → sent → delivered → read`, and `failed` is terminal
/// unless Meta later reports `delivered` or `read`, which prove it arrived. `scheduled`
/// is where a message with a `send_at` waits; `cancelled` (from `scheduled` or
/// `accepted`, never once handed to the dispatcher's claim) is terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    Scheduled,
    Accepted,
    Sending,
    Sent,
    Delivered,
    Read,
    Failed,
    Cancelled,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown message status")]
pub struct StatusError;

impl MessageStatus {
    pub const ALL: [MessageStatus; 8] = [
        MessageStatus::Scheduled,
        MessageStatus::Accepted,
        MessageStatus::Sending,
        MessageStatus::Sent,
        MessageStatus::Delivered,
        MessageStatus::Read,
        MessageStatus::Failed,
        MessageStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Scheduled => "scheduled",
            MessageStatus::Accepted => "accepted",
            MessageStatus::Sending => "sending",
            MessageStatus::Sent => "sent",
            MessageStatus::Delivered => "delivered",
            MessageStatus::Read => "read",
            MessageStatus::Failed => "failed",
            MessageStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Result<Self, StatusError> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or(StatusError)
    }

    /// Whether a move to `self` (with no error of its own) clears the message's `error`:
    /// once Meta accepted it (`sent`), a retried try's error no longer describes it, and
    /// once it is `delivered` or `read`, neither does a `failed` Meta reported before
    /// delivery proved otherwise (its `events` still show the failure).
    pub fn clears_error(self) -> bool {
        matches!(
            self,
            MessageStatus::Sent | MessageStatus::Delivered | MessageStatus::Read
        )
    }

    /// The statuses from which `self` may be entered. Storage adapters turn this
    /// list into a conditional write (`#status IN (...)`), so the rule is enforced
    /// atomically, never by read-then-write.
    pub fn allowed_predecessors(self) -> &'static [MessageStatus] {
        use MessageStatus::*;
        match self {
            Scheduled => &[],
            Accepted => &[Scheduled],
            Sending => &[Accepted],
            Sent => &[Accepted, Sending],
            Delivered => &[Accepted, Sending, Sent, Failed],
            Read => &[Accepted, Sending, Sent, Delivered, Failed],
            Failed => &[Accepted, Sending, Sent],
            // Only before the dispatcher's claim (`accepted → sending`): a cancel and a
            // claim are conditional on the same status, so at most one of them wins.
            Cancelled => &[Scheduled, Accepted],
        }
    }

    pub fn may_follow(self, current: MessageStatus) -> bool {
        self.allowed_predecessors().contains(&current)
    }

    /// Whether `self` may follow `seen` or any status a message can move on to from
    /// `seen`: what a read that may be a moment behind (`seen` or later) still allows.
    pub fn may_still_follow(self, seen: MessageStatus) -> bool {
        let mut reached = vec![seen];
        let mut i = 0;
        while let Some(&s) = reached.get(i) {
            if self.may_follow(s) {
                return true;
            }
            for next in Self::ALL {
                if next.may_follow(s) && !reached.contains(&next) {
                    reached.push(next);
                }
            }
            i += 1;
        }
        false
    }

    pub fn is_final(self) -> bool {
        matches!(self, MessageStatus::Read)
    }
}

#[cfg(test)]
mod tests {
    use super::MessageStatus::{self, *};
    use proptest::prelude::*;

    #[test]
    fn statuses_never_move_backwards() {
        assert!(!Sent.may_follow(Delivered));
        assert!(!Delivered.may_follow(Read));
        assert!(!Sent.may_follow(Read));
        assert!(!Failed.may_follow(Delivered));
        assert!(!Sent.may_follow(Sent), "duplicates change nothing");
    }

    #[test]
    fn a_read_that_may_be_behind_skips_only_what_no_later_status_allows() {
        // A scheduled message seen a moment ago may be sending by now.
        assert!(!Sent.may_follow(Scheduled));
        assert!(Sent.may_still_follow(Scheduled));
        assert!(Delivered.may_still_follow(Scheduled));
        assert!(Sent.may_still_follow(Accepted));
        // Nothing after these lets the status in: skipped without a write.
        assert!(!Sent.may_still_follow(Sent));
        assert!(!Sent.may_still_follow(Delivered));
        assert!(!Delivered.may_still_follow(Read));
        assert!(!Read.may_still_follow(Read));
        assert!(!Sent.may_still_follow(Cancelled));
        // Where the read is exact, the same as `may_follow` whenever that allows.
        for to in MessageStatus::ALL {
            for seen in MessageStatus::ALL {
                if to.may_follow(seen) {
                    assert!(to.may_still_follow(seen), "{to:?} after {seen:?}");
                }
            }
        }
    }

    #[test]
    fn a_failed_message_moves_only_on_a_later_delivered_or_read() {
        assert!(Delivered.may_follow(Failed));
        assert!(Read.may_follow(Failed));
        assert!(!Sent.may_follow(Failed));
        assert!(!Sending.may_follow(Failed));
    }

    #[test]
    fn a_scheduled_message_is_accepted_or_cancelled_and_a_cancelled_one_never_moves() {
        assert!(Accepted.may_follow(Scheduled));
        assert!(Cancelled.may_follow(Scheduled));
        assert!(Cancelled.may_follow(Accepted));
        assert!(
            !Sending.may_follow(Scheduled),
            "only accepted messages are claimed"
        );
        assert!(
            !Cancelled.may_follow(Sending),
            "a claimed message is never cancelled"
        );
        for s in MessageStatus::ALL {
            assert!(!s.may_follow(Cancelled), "{s:?} after cancelled");
        }
    }

    #[test]
    fn every_status_name_round_trips() {
        for s in MessageStatus::ALL {
            assert_eq!(MessageStatus::parse(s.as_str()), Ok(s));
        }
        assert!(MessageStatus::parse("queued").is_err());
    }

    fn apply(mut current: MessageStatus, events: &[MessageStatus]) -> MessageStatus {
        for e in events {
            if e.may_follow(current) {
                current = *e;
            }
        }
        current
    }

    fn meta_status() -> impl Strategy<Value = MessageStatus> {
        prop_oneof![Just(Sent), Just(Delivered), Just(Read), Just(Failed)]
    }

    proptest! {
        #[test]
        fn any_order_of_webhook_statuses_ends_in_the_furthest_one(
            events in proptest::collection::vec(meta_status(), 1..12)
        ) {
            let end = apply(Sent, &events);
            if events.contains(&Read) {
                prop_assert_eq!(end, Read);
            } else if events.contains(&Delivered) {
                prop_assert_eq!(end, Delivered);
            } else if events.contains(&Failed) {
                prop_assert_eq!(end, Failed);
            } else {
                prop_assert_eq!(end, Sent);
            }
        }

        #[test]
        fn duplicated_events_change_nothing_after_the_first(
            events in proptest::collection::vec(meta_status(), 1..8)
        ) {
            let doubled: Vec<_> = events.iter().flat_map(|e| [*e, *e]).collect();
            prop_assert_eq!(apply(Sending, &events), apply(Sending, &doubled));
        }
    }
}
