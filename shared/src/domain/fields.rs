//! Serde helpers for request fields: what `openapi.yaml` says about `null` and absence.
//!
//! serde reads an `Option` field as `None` both when it is left out and when it is `null`.
//! The contract forbids `null` for optional request fields (the field is left out instead):
//! `#[serde(default, deserialize_with = "crate::domain::fields::non_null")]` refuses it,
//! so a `null` answers `400 invalid_request` naming the field, before anything is written.
//!
//! JSON Schema (and so `openapi.yaml`) counts `90.0` as an integer; serde's integer types
//! refuse it. [`integer`] and [`non_null_integer`] take any JSON number with no fractional
//! part, in the field's range, so every value the schema allows is taken.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};

/// An optional field that, when present, is not `null`. Use with `#[serde(default)]`.
pub fn non_null<'de, D, T>(de: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(de).map(Some)
}

/// A phone number field: whatever JSON it holds is taken, and what is not a string reads
/// as an empty one, so that it is answered as the invalid phone number it is
/// (`invalid_phone_number`, as API.md asks for anything not E.164), not as a malformed body.
pub fn phone_text<'de, D>(de: D) -> Result<String, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(match serde_json::Value::deserialize(de)? {
        serde_json::Value::String(s) => s,
        _ => String::new(),
    })
}

/// A field that must be present and may be `null` (`{"url": null}`). Without `default`,
/// a missing field is an error.
pub fn nullable_required<'de, D, T>(de: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(de)
}

/// The largest integer an `f64` holds exactly (2^53).
const MAX_EXACT: f64 = 9_007_199_254_740_992.0;

struct Integral;

impl Visitor<'_> for Integral {
    type Value = i128;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i128, E> {
        Ok(v.into())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i128, E> {
        Ok(v.into())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i128, E> {
        if v.is_finite() && v.fract() == 0.0 && v.abs() <= MAX_EXACT {
            // Exact: no fractional part and within f64's exact integers.
            Ok(v as i128)
        } else {
            Err(E::invalid_type(de::Unexpected::Float(v), &self))
        }
    }
}

/// An integer field that also takes `90.0` (an integer to JSON Schema), never `90.5`.
pub fn integer<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i128>,
{
    let v = de.deserialize_any(Integral)?;
    T::try_from(v).map_err(|_| de::Error::custom("integer out of range"))
}

/// [`integer`] for an optional field that, when present, is not `null`.
pub fn non_null_integer<'de, D, T>(de: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i128>,
{
    integer(de).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    struct Body {
        #[serde(default, deserialize_with = "non_null")]
        optional: Option<u32>,
        #[serde(deserialize_with = "nullable_required")]
        required: Option<u32>,
    }

    #[test]
    fn an_optional_field_may_be_left_out_but_not_null() {
        let left_out: Body = serde_json::from_str(r#"{"required":1}"#).unwrap();
        assert_eq!(left_out.optional, None);
        let given: Body = serde_json::from_str(r#"{"optional":2,"required":1}"#).unwrap();
        assert_eq!(given.optional, Some(2));
        assert!(serde_json::from_str::<Body>(r#"{"optional":null,"required":1}"#).is_err());
    }

    #[derive(Deserialize, Debug)]
    struct Numbers {
        #[serde(deserialize_with = "integer")]
        count: u32,
        #[serde(default, deserialize_with = "non_null_integer")]
        days: Option<i64>,
    }

    #[test]
    fn an_integer_field_takes_integral_floats_and_refuses_fractions_and_out_of_range() {
        let n: Numbers = serde_json::from_str(r#"{"count":302.0,"days":-3}"#).unwrap();
        assert_eq!((n.count, n.days), (302, Some(-3)));
        let n: Numbers = serde_json::from_str(r#"{"count":1e2}"#).unwrap();
        assert_eq!((n.count, n.days), (100, None));
        for bad in [
            r#"{"count":1.5}"#,
            r#"{"count":-1}"#,
            r#"{"count":4294967296}"#,
            r#"{"count":"1"}"#,
            r#"{"count":1e300}"#,
            r#"{"count":1,"days":null}"#,
        ] {
            assert!(serde_json::from_str::<Numbers>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_nullable_required_field_may_be_null_but_not_left_out() {
        let null: Body = serde_json::from_str(r#"{"required":null}"#).unwrap();
        assert_eq!(null.required, None);
        assert!(serde_json::from_str::<Body>(r#"{}"#).is_err());
    }
}
