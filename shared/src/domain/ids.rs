//! Kirim's own ids: ULIDs, validated wherever they are parsed or deserialised.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A fresh, time-ordered, opaque id (ULID).
pub fn new_id() -> String {
    ulid::Ulid::new().to_string()
}

/// A ULID of the millisecond of `at` that sorts after every other one this process made
/// for the same millisecond: ids made one after another in a process list in the order they
/// were made ("newest first" is exact within an instance; a bare ULID's random part would
/// order two ids of one millisecond at random). Another millisecond gets a fresh random
/// ULID, so an id's time is always `at`'s, whatever clock a caller runs on.
pub fn ulid_at(at: chrono::DateTime<chrono::Utc>) -> ulid::Ulid {
    static LAST: std::sync::Mutex<Option<ulid::Ulid>> = std::sync::Mutex::new(None);
    let fresh = ulid::Ulid::from_datetime(at.into());
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    let id = following(*last, fresh);
    *last = Some(id);
    id
}

/// The id after `prev` for a `fresh` ULID: `prev`'s successor when both are of one
/// millisecond, else `fresh`.
fn following(prev: Option<ulid::Ulid>, fresh: ulid::Ulid) -> ulid::Ulid {
    match prev {
        // 80 random bits: the increment fails only past 2^80 ids in a millisecond.
        Some(p) if p.timestamp_ms() == fresh.timestamp_ms() => p.increment().unwrap_or(fresh),
        _ => fresh,
    }
}

/// Whether `b` is a ULID's text: 26 Crockford base32 characters in any case (no aliases:
/// `I`, `L`, `O`, `U` are not among them), the first at most `7` (more would be over 128
/// bits). What decoding with the ulid crate and encoding again gives back up to case,
/// without the round trip through a `u128` and the formatter (a webhook parses its message
/// id on every status; issue #13).
fn is_ulid_text(b: &[u8]) -> bool {
    /// Crockford base32's characters, either case, by byte.
    const CROCKFORD: [bool; 256] = {
        let mut table = [false; 256];
        let alphabet = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
        let mut i = 0;
        while i < alphabet.len() {
            table[alphabet[i] as usize] = true;
            table[alphabet[i].to_ascii_lowercase() as usize] = true;
            i += 1;
        }
        table
    };
    let ulid = b.len() == 26 && b.first().is_some_and(|c| (b'0'..=b'7').contains(c));
    // Every byte looked up (no early exit: 26 table reads, no branch each).
    ulid && b.iter().fold(true, |ok, c| {
        ok & CROCKFORD.get(usize::from(*c)).copied().unwrap_or(false)
    })
}

/// `s` in upper case if it is a ULID's text ([`is_ulid_text`]).
fn canonical_ulid(s: &str) -> Option<String> {
    is_ulid_text(s.as_bytes()).then(|| s.to_ascii_uppercase())
}

/// A ULID's text in upper case, held in place (no allocation): an id read on a hot path
/// (the tenant in a status's callback data, `meta::Callback`) and made an owned id only
/// when it is needed ([`TenantId::from_text`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct UlidText([u8; 26]);

impl UlidText {
    /// As [`TenantId::parse`] reads it: a ULID's text in any case, else `None`.
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if !is_ulid_text(b) {
            return None;
        }
        let mut text = [0; 26];
        text.copy_from_slice(b);
        text.make_ascii_uppercase();
        Some(Self(text))
    }

    pub fn as_str(&self) -> &str {
        // Crockford base32 only (checked in `parse`): always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for UlidText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for UlidText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! id_type {
    ($name:ident) => {
        /// Deserialises through [`Self::parse`]: a value that is not a ULID is refused
        /// wherever it comes from (a request, a queue message, a stored item).
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
                Self::parse(&s).ok_or_else(|| {
                    serde::de::Error::custom(concat!("not a valid ", stringify!($name)))
                })
            }
        }

        impl $name {
            pub fn generate() -> Self {
                Self(new_id())
            }
            /// Ids are ULIDs we minted; anything else cannot name a resource of ours.
            /// Case is ignored (Crockford base32). A first character over `7` is more
            /// than 128 bits and is refused: the ulid crate drops the excess bits, which
            /// made `8…` another name for `0…`.
            pub fn parse(s: &str) -> Option<Self> {
                canonical_ulid(s).map(Self)
            }
            /// For values read back from our own storage.
            pub fn from_trusted(s: impl Into<String>) -> Self {
                Self(s.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
            /// The id a [`UlidText`] holds (parsed already: the same id `parse` gives).
            pub fn from_text(text: UlidText) -> Self {
                Self(text.as_str().to_owned())
            }
            /// Whether this is the id `text` holds (no allocation).
            pub fn is(&self, text: &UlidText) -> bool {
                self.0 == text.as_str()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(TenantId);
id_type!(MessageId);

#[cfg(test)]
mod tests {
    #[test]
    fn ids_made_in_one_millisecond_sort_in_the_order_they_were_made() {
        let at = chrono::Utc::now();
        let mut prev = None;
        let mut ids = Vec::new();
        for _ in 0..1000 {
            let id = super::following(prev, ulid::Ulid::from_datetime(at.into()));
            ids.push(id);
            prev = Some(id);
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
        assert!(ids
            .iter()
            .all(|id| id.timestamp_ms() == at.timestamp_millis() as u64));
        // Another millisecond, earlier or later, gets a fresh id of its own time.
        for ms in [-5, 5] {
            let other = at + chrono::Duration::milliseconds(ms);
            let fresh = ulid::Ulid::from_datetime(other.into());
            assert_eq!(super::following(prev, fresh), fresh);
        }
        // And the process-wide one keeps an id's time whatever came before.
        assert_eq!(
            super::ulid_at(at).timestamp_ms(),
            at.timestamp_millis() as u64
        );
    }

    use super::*;

    #[test]
    fn ids_that_are_not_ulids_name_nothing() {
        assert!(TenantId::parse("../../etc").is_none());
        assert!(MessageId::parse("").is_none());
        let id = MessageId::generate();
        assert_eq!(MessageId::parse(id.as_str()), Some(id));
    }

    #[test]
    fn an_id_is_the_text_it_was_given_up_to_case_never_an_alias() {
        let id = MessageId::generate();
        assert!(id.as_str().starts_with('0'));
        // 130 bits of text: the two excess bits were dropped, naming `id`.
        let alias = format!("8{}", &id.as_str()[1..]);
        assert_eq!(MessageId::parse(&alias), None);
        assert!(TenantId::parse("ZZZZZZZZZZZZZZZZZZZZZZZZZZ").is_none());
        assert!(serde_json::from_str::<MessageId>(&format!("\"{alias}\"")).is_err());
        assert_eq!(
            TenantId::parse("7zzzzzzzzzzzzzzzzzzzzzzzzz")
                .unwrap()
                .as_str(),
            "7ZZZZZZZZZZZZZZZZZZZZZZZZZ"
        );
        assert_eq!(MessageId::parse(&id.as_str().to_lowercase()), Some(id));
    }

    #[test]
    fn ids_are_validated_when_deserialised() {
        assert!(serde_json::from_str::<TenantId>("\"t1\"").is_err());
        assert!(serde_json::from_str::<MessageId>("\"../x\"").is_err());
        let id = TenantId::generate();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<TenantId>(&json).unwrap(), id);
    }

    // ---- properties (issue 14): ids arrive in paths, bodies, queue messages ----

    use proptest::prelude::*;

    const CROCKFORD: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

    /// The rule, written out a second way: 26 Crockford base32 characters in any case,
    /// the first at most `7` (128 bits).
    fn is_ulid_text(s: &str) -> bool {
        s.chars().count() == 26
            && s.chars()
                .all(|c| CROCKFORD.contains(c.to_ascii_uppercase()) && c.is_ascii())
            && s.starts_with(|c: char| ('0'..='7').contains(&c))
    }

    /// A text with each letter's case flipped where `flips` says.
    fn flip(s: &str, flips: &[bool]) -> String {
        s.chars()
            .zip(flips.iter().cycle())
            .map(|(c, f)| if *f { c.to_ascii_lowercase() } else { c })
            .collect()
    }

    fn near_ulid() -> BoxedStrategy<String> {
        prop_oneof![
            (any::<u128>(), prop::collection::vec(any::<bool>(), 1..26))
                .prop_map(|(u, f)| flip(&ulid::Ulid(u).to_string(), &f)),
            crate::props::re("[0-9A-Za-z]{26}"),
            crate::props::re("[0-9A-HJKMNP-TV-Z]{24,28}"),
            crate::props::re("[0-9A-HJKMNP-TV-Z]{26}"),
            crate::props::re("\\PC{0,30}"),
        ]
        .boxed()
    }

    proptest! {
        #![proptest_config(crate::props::config(5_000))]

        #[test]
        fn any_text_names_an_id_only_if_it_is_a_ulid_and_then_names_that_very_text(
            s in near_ulid()
        ) {
            let tenant = TenantId::parse(&s);
            let message = MessageId::parse(&s);
            prop_assert_eq!(tenant.is_some(), is_ulid_text(&s), "{:?}", s);
            prop_assert_eq!(tenant.as_ref().map(TenantId::as_str), message.as_ref().map(MessageId::as_str));
            // Held in place, it is the same text, and makes the same id.
            let text = UlidText::parse(&s);
            prop_assert_eq!(text.as_ref().map(UlidText::as_str), tenant.as_ref().map(TenantId::as_str));
            prop_assert_eq!(text.map(TenantId::from_text), tenant.clone());
            prop_assert!(text.as_ref().is_none_or(|t| tenant.as_ref().is_some_and(|id| id.is(t))));
            if let Some(id) = tenant {
                prop_assert!(id.as_str().eq_ignore_ascii_case(&s), "{} read as {}", s, id);
                prop_assert!(id.as_str().chars().all(|c| CROCKFORD.contains(c)));
                prop_assert_eq!(TenantId::parse(id.as_str()), Some(id));
            }
        }

        #[test]
        fn every_ulid_round_trips_through_text_any_case_and_serde(
            u in any::<u128>(), flips in prop::collection::vec(any::<bool>(), 1..26)
        ) {
            let text = ulid::Ulid(u).to_string();
            let id = MessageId::parse(&text).unwrap();
            prop_assert_eq!(id.as_str(), text.as_str());
            let flipped = MessageId::parse(&flip(&text, &flips));
            prop_assert_eq!(flipped.as_ref(), Some(&id));
            let json = serde_json::to_string(&id).unwrap();
            prop_assert_eq!(&json, &format!("\"{text}\""));
            prop_assert_eq!(serde_json::from_str::<MessageId>(&json).unwrap(), id);
        }

        #[test]
        fn an_id_is_read_as_the_ulid_crate_reads_and_writes_it(s in near_ulid()) {
            let round_trip = ulid::Ulid::from_string(&s)
                .ok()
                .map(|u| u.to_string())
                .filter(|canonical| canonical.eq_ignore_ascii_case(&s));
            prop_assert_eq!(MessageId::parse(&s).map(|id| id.0), round_trip);
        }

        #[test]
        fn deserialising_an_id_agrees_with_parsing_it(s in near_ulid(), other in crate::props::number()) {
            let json = serde_json::to_string(&s).unwrap();
            let read = serde_json::from_str::<TenantId>(&json).ok();
            prop_assert_eq!(read, TenantId::parse(&s));
            prop_assert!(serde_json::from_value::<MessageId>(other).is_err());
        }
    }
}
