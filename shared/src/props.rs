//! Shared pieces of the property tests (issue 14): one configuration and the generators
//! more than one parser's tests use. Each parser's properties live beside it.

use proptest::prelude::*;
use proptest::test_runner::RngAlgorithm;
use serde_json::{Map, Value};

/// `cases` cases with a cheap RNG: the dev profile does not optimise dependencies, and
/// there ChaCha takes a third of a property's time. Failures still persist and shrink,
/// for at most half a minute (big generated bodies can shrink for many minutes).
pub fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        rng_algorithm: RngAlgorithm::XorShift,
        max_shrink_time: 30_000,
        ..ProptestConfig::with_cases(cases)
    }
}

/// A string matching `pattern`. (A `&str` strategy compiles its regex for every value;
/// this compiles it once.)
/// A valid number's digits (no `+`), as a pattern: 8 to 15, the first not 0, and not
/// Malaysia's `60` followed by a trunk `0` (`domain::PhoneNumber`).
pub const VALID_DIGITS: &str = "(?:[1-57-9][0-9]{7,14}|6[1-9][0-9]{6,13}|60[1-9][0-9]{5,12})";

pub fn re(pattern: &str) -> BoxedStrategy<String> {
    proptest::string::string_regex(pattern).unwrap().boxed()
}

/// A long string (up to a few thousand characters, often multi-byte).
pub fn huge() -> BoxedStrategy<String> {
    (re("\\PC{1,3}"), 100usize..1_500)
        .prop_map(|(s, n)| s.repeat(n))
        .boxed()
}

/// Any number JSON can hold (NaN and infinities become null).
pub fn number() -> BoxedStrategy<Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
    ]
    .boxed()
}

/// JSON values up to `depth` levels and about `size` nodes, whose strings come from
/// `text` and whose object keys from `key` (so a parser's own words turn up).
pub fn json_of(
    depth: u32,
    size: u32,
    text: BoxedStrategy<String>,
    key: BoxedStrategy<String>,
) -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text.prop_map(Value::String),
    ];
    leaf.prop_recursive(depth, size, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
    .boxed()
}

/// Any JSON value, with any strings and keys.
pub fn any_json() -> BoxedStrategy<Value> {
    json_of(4, 64, re("\\PC{0,16}"), re("\\PC{0,8}"))
}
