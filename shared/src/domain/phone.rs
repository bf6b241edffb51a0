//! Phone numbers, parsed at the boundary into E.164 and masked whenever displayed in a
//! log line.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An E.164 phone number: `+`, a non-zero country-code digit, 8 to 15 digits in all.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct PhoneNumber(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("phone numbers must be E.164: '+' then 8 to 15 digits, the first not 0")]
pub struct PhoneNumberError;

impl PhoneNumber {
    pub fn parse(input: &str) -> Result<Self, PhoneNumberError> {
        let digits = input.strip_prefix('+').ok_or(PhoneNumberError)?;
        let ok = (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if ok {
            Ok(Self(input.to_owned()))
        } else {
            Err(PhoneNumberError)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The digits without `+`, as Meta's `to` and `wa_id` carry them.
    pub fn digits(&self) -> &str {
        &self.0[1..]
    }

    /// `+6012****0100`: safe for logs.
    pub fn masked(&self) -> String {
        mask_phone(&self.0)
    }
}

/// Masks the middle of anything phone-like, keeping a prefix of up to 5 and the last 4
/// characters, and hiding at least 3 (a short number would otherwise show every digit).
pub fn mask_phone(raw: &str) -> String {
    let chars: Vec<char> = raw.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..5.min(chars.len() - 4 - 3)].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}****{tail}")
}

impl From<PhoneNumber> for String {
    fn from(p: PhoneNumber) -> Self {
        p.0
    }
}

impl<'de> Deserialize<'de> for PhoneNumber {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PhoneNumber::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Debug never prints the full number, so a stray `{:?}` cannot leak it into a log.
impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneNumber({})", self.masked())
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_malaysian_mobile_number_parses() {
        let p = PhoneNumber::parse("+60123456789").unwrap();
        assert_eq!(p.digits(), "60123456789");
    }

    #[test]
    fn numbers_without_plus_letters_spaces_or_leading_zero_are_refused() {
        for bad in [
            "60123456789",
            "+60 123456789",
            "+6012345678a",
            "+0123456789",
            "+1234567",
            "+1234567890123456",
            "",
            "+",
        ] {
            assert!(PhoneNumber::parse(bad).is_err(), "{bad} should be invalid");
        }
    }

    #[test]
    fn masking_keeps_country_prefix_and_last_four_digits() {
        assert_eq!(mask_phone("+60123450100"), "+6012****0100");
        assert_eq!(
            format!("{:?}", PhoneNumber::parse("+60123450100").unwrap()),
            "PhoneNumber(+6012****0100)"
        );
    }

    #[test]
    fn a_short_number_s_masked_form_still_hides_three_digits() {
        // Eight digits (the Cook Islands' +682 and five) once came out whole: +6825****1234.
        assert_eq!(mask_phone("+68251234"), "+6****1234");
        assert_eq!(mask_phone("+682512345"), "+68****2345");
        assert_eq!(mask_phone("+6825123456"), "+682****3456");
        assert_eq!(mask_phone("+60123456789"), "+6012****6789");
    }

    proptest! {
        #[test]
        fn every_valid_e164_number_round_trips(cc in 1u8..=9, rest in "[0-9]{7,14}") {
            let s = format!("+{cc}{rest}");
            let p = PhoneNumber::parse(&s).unwrap();
            prop_assert_eq!(p.as_str(), s.as_str());
            prop_assert!(!p.masked().contains(&rest[..rest.len() - 4]) || rest.len() <= 8);
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(s in ".*") {
            let _ = PhoneNumber::parse(&s);
        }
    }
}
