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
        Self::from_digits(digits)
    }

    /// A number as Meta writes it (`to`, `wa_id`, `recipient_id`): the digits without the
    /// `+`, under the same rules as [`Self::parse`].
    pub fn from_digits(digits: &str) -> Result<Self, PhoneNumberError> {
        // No Malaysian number's national part begins with the trunk `0`: `+600…` is the
        // local `012…` written after the country code, which Meta may take and never
        // deliver (and a `failed` status refunds nothing). Other countries are left alone:
        // some (Italy's landlines, +39 06…) do begin with 0.
        if digits.starts_with("600") || !country_code_in_use(digits) {
            return Err(PhoneNumberError);
        }
        Self::from_digits_stored(digits)
    }

    /// A number read back from storage or a queued job: the rules it was accepted under
    /// before `+600…` was refused (stop 52). Opt-outs are kept for good and messages two
    /// years, so one written then must still read (a list page holding it answered 500,
    /// and the opt-out could not be removed). Never for input: use [`Self::parse`].
    pub fn parse_stored(input: &str) -> Result<Self, PhoneNumberError> {
        let digits = input.strip_prefix('+').ok_or(PhoneNumberError)?;
        Self::from_digits_stored(digits)
    }

    fn from_digits_stored(digits: &str) -> Result<Self, PhoneNumberError> {
        let ok = (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if ok {
            let mut e164 = String::with_capacity(digits.len() + 1);
            e164.push('+');
            e164.push_str(digits);
            Ok(Self(e164))
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

    /// `+60****0100`: safe for logs.
    pub fn masked(&self) -> String {
        mask_phone(&self.0)
    }

    /// The other form WhatsApp knows the same mobile subscriber by, in the three countries
    /// where the number a business dials and the `wa_id` Meta's webhooks carry differ:
    /// - Mexico: `+52` and ten digits ↔ `+521` and the same ten (the `1` mobile prefix,
    ///   dropped from dialling in 2019, stayed in WhatsApp's ids);
    /// - Argentina: `+54` and ten digits ↔ `+549` and the same ten (the `9` of mobiles
    ///   dialled from abroad);
    /// - Brazil: `+55`, a two-digit area code, `9` and eight digits ↔ `+55`, the area code
    ///   and the eight digits, when those begin with 6–9 (mobiles before the ninth digit
    ///   was added, 2012–2016, which older WhatsApp accounts keep).
    ///
    /// `None` elsewhere (Malaysia among them: one form). Opt-outs and the 24-hour window
    /// are matched under both forms, so a STOP sent from `521…` blocks a send to `52…`.
    pub fn whatsapp_alias(&self) -> Option<PhoneNumber> {
        let d = self.digits();
        let b = d.as_bytes();
        let other = match (b.len(), d.get(..2)?) {
            (12, "52") if b[2] != b'1' => format!("521{}", &d[2..]),
            (13, "52") if b[2] == b'1' && b[3] != b'1' => format!("52{}", &d[3..]),
            (12, "54") if b[2] != b'9' => format!("549{}", &d[2..]),
            (13, "54") if b[2] == b'9' && b[3] != b'9' => format!("54{}", &d[3..]),
            (12, "55") if b[2] != b'0' && b[3] != b'0' && (b'6'..=b'9').contains(&b[4]) => {
                format!("{}9{}", &d[..4], &d[4..])
            }
            (13, "55")
                if b[2] != b'0'
                    && b[3] != b'0'
                    && b[4] == b'9'
                    && (b'6'..=b'9').contains(&b[5]) =>
            {
                format!("{}{}", &d[..4], &d[5..])
            }
            _ => return None,
        };
        Self::from_digits(&other).ok()
    }
}

/// Masks the middle of anything phone-like, keeping a prefix of up to 3 characters (`+`
/// and two digits: most of a country code) and the last 4, and hiding at least 4 (a short
/// number would otherwise show every digit). A Malaysian mobile keeps 5 of its digits
/// hidden, some 100,000 candidates (it kept 3, a thousand, before stop 50: logs and the
/// audit trail keep it beside the tenant and the time for two years).
/// Country calling codes no country or service has (ITU-T E.164's spare codes): a number
/// beginning with one is not E.164 (`+999…`), and sending to it would only fail at Meta.
/// Country codes are prefix-free, so a spare code is a prefix no assigned number has. Only
/// codes spare for certain are listed (not `388`, `878`, `979`, `991`; `997` is assigned to
/// Kazakhstan's move from `+7`): a wrong entry here would refuse a real customer.
const SPARE_COUNTRY_CODES: &[&str] = &[
    "210", "214", "215", "217", "219", "259", "28", "292", "293", "294", "295", "296", "384",
    "422", "424", "425", "426", "427", "428", "429", "671", "684", "693", "694", "695", "696",
    "697", "698", "699", "801", "802", "803", "804", "805", "806", "807", "809", "83", "851",
    "854", "857", "858", "859", "871", "872", "873", "874", "875", "876", "877", "879", "884",
    "885", "887", "889", "89", "969", "978", "990", "999",
];

/// Whether `digits` (a number without its `+`) begins with a country code in use: not one
/// of the spare codes.
pub fn country_code_in_use(digits: &str) -> bool {
    !SPARE_COUNTRY_CODES.iter().any(|c| digits.starts_with(c))
}

pub fn mask_phone(raw: &str) -> String {
    let chars: Vec<char> = raw.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..3.min(chars.len() - 4 - 4)].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}****{tail}")
}

/// How much of a wamid a log line shows: its end.
const WAMID_LOG_TAIL: usize = 12;

/// The part of a wamid safe for logs: its last 12 characters (nothing of one shorter than
/// 25, or not ASCII). Meta's wamid is base64 of a small structure that begins with the
/// recipient's number (`wamid.HBgLMTY1…` is `1c 18 0b` then `16…`, the number's digits),
/// so a whole wamid in a log line would undo the masking of `to`; its end is the
/// message's own id at Meta, enough to find the wamid the API answers for a message.
pub fn wamid_tail(wamid: &str) -> &str {
    let n = wamid.len();
    if n <= 2 * WAMID_LOG_TAIL || !wamid.is_ascii() {
        return "";
    }
    &wamid[n - WAMID_LOG_TAIL..]
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

/// `#[serde(deserialize_with = "crate::domain::stored_phone")]` on a stored number:
/// read under [`PhoneNumber::parse_stored`]'s rules.
pub fn stored<'de, D: serde::Deserializer<'de>>(d: D) -> Result<PhoneNumber, D::Error> {
    let s = String::deserialize(d)?;
    PhoneNumber::parse_stored(&s).map_err(serde::de::Error::custom)
}

/// [`stored`] for an optional number.
pub fn stored_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<PhoneNumber>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| PhoneNumber::parse_stored(&s).map_err(serde::de::Error::custom))
        .transpose()
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

    #[test]
    fn a_wamid_in_logs_is_its_tail_which_holds_none_of_the_number() {
        // A wamid as Meta mints them: base64 of 1c 18 0b, the 11 digits, then the id.
        let wamid = "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA";
        let tail = super::wamid_tail(wamid);
        assert_eq!(tail, "M0Q0Q2RTY3RTcA".get(2..).unwrap_or_default());
        assert!(!tail.contains("MTY1MDM4Nzk0Mzk"));
        assert_eq!(super::wamid_tail("wamid.short"), "");
        assert_eq!(super::wamid_tail("wamid.ééééééééééééééééééééé"), "");
    }

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_malaysian_mobile_number_parses() {
        let p = PhoneNumber::parse("+60123456789").unwrap();
        assert_eq!(p.digits(), "60123456789");
        // A trunk 0 is refused after Malaysia's code only: Italy's landlines keep theirs.
        assert!(PhoneNumber::parse("+390612345678").is_ok());
        assert!(
            PhoneNumber::parse("+6061234567").is_ok(),
            "+60 6…: Melaka's landlines"
        );
    }

    #[test]
    fn numbers_without_plus_letters_spaces_or_leading_zero_are_refused() {
        for bad in [
            "60123456789",
            "+60 123456789",
            "+6012345678a",
            "+0123456789",
            "+600123456789",
            "+60012345678",
            "+1234567",
            "+1234567890123456",
            "",
            "+",
        ] {
            assert!(PhoneNumber::parse(bad).is_err(), "{bad} should be invalid");
        }
    }

    #[test]
    fn masking_keeps_a_country_prefix_and_the_last_four_digits_and_hides_the_rest() {
        assert_eq!(mask_phone("+60123450100"), "+60****0100");
        assert_eq!(mask_phone("+14155550123"), "+14****0123");
        assert_eq!(
            format!("{:?}", PhoneNumber::parse("+60123450100").unwrap()),
            "PhoneNumber(+60****0100)"
        );
    }

    #[test]
    fn a_short_number_s_masked_form_still_hides_four_digits() {
        // Eight digits (the Cook Islands' +682 and five) once came out whole: +6825****1234.
        assert_eq!(mask_phone("+68251234"), "+****1234");
        assert_eq!(mask_phone("+682512345"), "+6****2345");
        assert_eq!(mask_phone("+6825123456"), "+68****3456");
        assert_eq!(mask_phone("+60123456789"), "+60****6789");
        for raw in ["+68251234", "+682512345", "+6825123456", "+60123456789"] {
            let shown = mask_phone(raw).chars().filter(char::is_ascii_digit).count();
            let digits = raw.chars().filter(char::is_ascii_digit).count();
            assert!(digits - shown >= 4, "{raw}");
        }
    }

    #[test]
    fn a_spare_country_code_is_not_e164_and_its_assigned_neighbours_are() {
        for spare in [
            "+999123456789",
            "+2101234567",
            "+28012345678",
            "+42212345678",
            "+8312345678",
        ] {
            assert_eq!(PhoneNumber::parse(spare), Err(PhoneNumberError), "{spare}");
            assert_eq!(PhoneNumber::from_digits(&spare[1..]), Err(PhoneNumberError));
        }
        // Read back from storage as stored: a number accepted before is still read.
        assert!(PhoneNumber::parse_stored("+999123456789").is_ok());
        for assigned in [
            "+997123456789", // Kazakhstan's new code
            "+998901234567",
            "+211912345678",
            "+38344123456",
            "+88212345678",
            "+8613812345678",
            "+60123456789",
            "+12025550123",
        ] {
            assert!(PhoneNumber::parse(assigned).is_ok(), "{assigned}");
        }
    }

    #[test]
    fn mexican_argentine_and_brazilian_mobiles_have_their_whatsapp_form_and_back() {
        let alias = |s: &str| {
            PhoneNumber::parse(s)
                .unwrap()
                .whatsapp_alias()
                .map(String::from)
        };
        for (dialled, wa) in [
            ("+525512345678", "+5215512345678"),
            ("+541112345678", "+5491112345678"),
            ("+551187654321", "+5511987654321"),
            ("+552196543210", "+5521996543210"),
        ] {
            assert_eq!(alias(dialled).as_deref(), Some(wa), "{dialled}");
            assert_eq!(alias(wa).as_deref(), Some(dialled), "{wa}");
        }
        for single in [
            "+60123456789",    // Malaysia: one form
            "+14155550100",    // North America
            "+551123456789",   // a São Paulo landline (begins 2–5)
            "+5511912345678",  // a mobile issued with its ninth digit (91…)
            "+52155123456",    // Mexico, too short
            "+52155123456789", // Mexico, too long
            "+5401234567890",  // not a ten-digit Argentine number
        ] {
            assert_eq!(alias(single), None, "{single}");
        }
    }

    proptest! {
        #[test]
        fn a_whatsapp_alias_is_another_valid_number_whose_alias_is_the_first(
            s in prop_oneof![valid(), crate::props::re("\\+5[245][0-9]{10,11}")],
        ) {
            let p = PhoneNumber::parse(&s).unwrap();
            if let Some(a) = p.whatsapp_alias() {
                prop_assert_ne!(&a, &p);
                prop_assert_eq!(a.whatsapp_alias(), Some(p.clone()));
                prop_assert_eq!(&a.digits()[a.digits().len() - 8..], &p.digits()[p.digits().len() - 8..]);
            }
        }

        #[test]
        fn every_mexican_ten_digit_mobile_has_its_521_form(n in "[2-9][0-9]{9}") {
            let p = PhoneNumber::parse(&format!("+52{n}")).unwrap();
            prop_assert_eq!(p.whatsapp_alias().map(String::from), Some(format!("+521{n}")));
        }

        #[test]
        fn every_valid_e164_number_round_trips(cc in 1u8..=9, rest in "[0-9]{7,14}") {
            let s = format!("+{cc}{rest}");
            prop_assume!(!s.starts_with("+600"), "Malaysia's trunk 0");
            prop_assume!(country_code_in_use(&s[1..]), "a spare country code");
            let p = PhoneNumber::parse(&s).unwrap();
            prop_assert_eq!(p.as_str(), s.as_str());
            prop_assert!(!p.masked().contains(&rest[..rest.len() - 4]) || rest.len() <= 8);
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(s in ".*") {
            let _ = PhoneNumber::parse(&s);
        }

        #[test]
        fn meta_s_digits_read_as_the_number_with_a_plus_would(
            d in prop_oneof![crate::props::re("[0-9]{0,17}"), crate::props::re("\\PC{0,17}")],
        ) {
            prop_assert_eq!(PhoneNumber::from_digits(&d), PhoneNumber::parse(&format!("+{d}")));
        }
    }

    /// `+`, a digit 1-9, then 7 to 14 digits; not Malaysia's `+60` with a trunk `0`, nor a
    /// spare country code.
    fn valid() -> BoxedStrategy<String> {
        crate::props::re(&format!("\\+{}", crate::props::VALID_DIGITS))
            .prop_filter("a country code in use", |s| country_code_in_use(&s[1..]))
            .boxed()
    }

    /// Near misses of E.164: valid numbers with a character added, removed or changed
    /// (to a space, a letter, another script's digit, a second `+`), and anything else.
    fn near_miss() -> BoxedStrategy<String> {
        let noise = prop::sample::select(vec![
            " ", "-", "+", "0", "9", "a", "(", "\u{0663}", "\u{FF11}", "\u{00B2}", "\n", "",
        ]);
        prop_oneof![
            (valid(), any::<prop::sample::Index>(), noise, any::<bool>()).prop_map(
                |(v, at, c, replace)| {
                    let mut chars: Vec<String> = v.chars().map(String::from).collect();
                    let i = at.index(chars.len());
                    if replace {
                        chars[i] = c.to_owned();
                    } else {
                        chars.insert(i, c.to_owned());
                    }
                    chars.concat()
                }
            ),
            crate::props::re("\\+?[0-9]{0,18}"),
            crate::props::re("\\PC{0,20}"),
        ]
        .boxed()
    }

    /// The rule, written out a second way: `+`, then 8 to 15 ASCII digits, the first not 0,
    /// and not Malaysia's country code followed by a trunk 0.
    fn is_e164(s: &str) -> bool {
        let Some(digits) = s.strip_prefix('+') else {
            return false;
        };
        let count = digits.chars().count();
        digits.chars().all(|c| c.is_ascii_digit())
            && (8..=15).contains(&count)
            && digits.chars().next().is_some_and(|c| c != '0')
            && !digits.starts_with("600")
            && country_code_in_use(digits)
    }

    proptest! {
        #![proptest_config(crate::props::config(5_000))]

        #[test]
        fn text_parses_exactly_when_it_is_e164_and_then_reads_back_as_given(s in near_miss()) {
            match PhoneNumber::parse(&s) {
                Ok(p) => {
                    prop_assert!(is_e164(&s), "{s:?} parsed");
                    prop_assert_eq!(p.as_str(), s.as_str());
                }
                Err(PhoneNumberError) => prop_assert!(!is_e164(&s), "{s:?} refused"),
            }
        }

        #[test]
        fn a_valid_number_round_trips_through_display_digits_and_serde(s in valid()) {
            let p = PhoneNumber::parse(&s).unwrap();
            prop_assert_eq!(&PhoneNumber::parse(&p.to_string()).unwrap(), &p);
            prop_assert_eq!(&PhoneNumber::parse(&format!("+{}", p.digits())).unwrap(), &p);
            prop_assert_eq!(p.digits(), &s[1..]);
            let json = serde_json::to_string(&p).unwrap();
            prop_assert_eq!(&json, &format!("\"{s}\""));
            prop_assert_eq!(serde_json::from_str::<PhoneNumber>(&json).unwrap(), p);
        }

        #[test]
        fn the_masked_form_of_a_number_never_shows_all_its_digits(s in valid()) {
            let p = PhoneNumber::parse(&s).unwrap();
            let masked = p.masked();
            let shown: String = masked.chars().filter(char::is_ascii_digit).collect();
            prop_assert!(!masked.contains(p.digits()), "{masked}");
            prop_assert!(
                shown.len() + 3 <= p.digits().len(),
                "{masked} shows {} of {} digits", shown.len(), p.digits().len()
            );
            let debug = format!("{p:?}");
            prop_assert!(!debug.contains(p.digits()), "{debug}");
            prop_assert_eq!(debug, format!("PhoneNumber({masked})"));
        }

        #[test]
        fn masking_any_text_never_panics_and_hides_its_middle(s in near_miss()) {
            let masked = mask_phone(&s);
            let n = s.chars().count();
            let shown = masked.chars().filter(|c| *c != '*').count();
            prop_assert!(shown + n.min(3) <= n, "{masked:?} shows {shown} of {s:?}");
            if n >= 3 {
                prop_assert!(!masked.contains(s.as_str()), "{masked:?} shows {s:?}");
            }
        }
    }
}
