//! Which of many items of the one table exist, by `BatchGetItem`: 100 keys a call
//! (DynamoDB's limit), [`IN_FLIGHT`] calls at once, read consistently as [`get`] reads (the
//! same read units as a `GetItem` each, in one round trip a hundred). The keys a call leaves
//! unprocessed (throttling, a partial answer) are asked again after each of
//! [`UNPROCESSED_PAUSES`], then read one by one with [`get`]. An error is [`classify`]'s, as
//! a single read's. Expired items are not answered, as [`get`] answers none. Each item found
//! is answered with its key and the attributes the caller names (projected: the units are
//! the whole item's anyway).
//!
//! [`get`]: DynamoStore::get

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use aws_sdk_dynamodb::types::KeysAndAttributes;
use futures::{StreamExt, TryStreamExt};

use super::{classify, keys, DynamoStore, Item, TTL_ATTR};
use crate::store_error::StoreError;

/// DynamoDB's most keys in one `BatchGetItem`.
pub(super) const BATCH_GET_KEYS: usize = 100;
/// `BatchGetItem` calls of one caller in flight at once: 400 items a round trip. (All of a
/// tenant's items are in one partition, whose throughput DynamoDB caps at 3,000 read units a
/// second: a larger burst only meets more throttling, answered as unprocessed keys.)
const IN_FLIGHT: usize = 4;
/// The pauses before each new ask of a call's unprocessed keys, doubling (1.575 s in all:
/// room for a throttled partition to serve them); those still unprocessed after the last
/// are read one by one.
const UNPROCESSED_PAUSES: [Duration; 6] = [
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(400),
    Duration::from_millis(800),
];

/// An item's key as a `BatchGetItem` names it (and answers it, projected).
type Pair = (String, String);

impl DynamoStore {
    /// Of `wanted`, the keys (pk, sk) that hold a live item, each with the item's key and
    /// its attributes named in `also` (those it has). Duplicates are asked once.
    pub(super) async fn existing(
        &self,
        wanted: &[keys::Key],
        also: &[&str],
    ) -> Result<HashMap<Pair, Item>, StoreError> {
        let mut unique: Vec<keys::Key> = Vec::with_capacity(wanted.len());
        let mut seen: HashSet<Pair> = HashSet::with_capacity(wanted.len());
        for k in wanted {
            if seen.insert((k.pk.clone(), k.sk.clone())) {
                unique.push(k.clone());
            }
        }
        let chunks: Vec<Vec<keys::Key>> = unique
            .chunks(BATCH_GET_KEYS)
            .map(<[keys::Key]>::to_vec)
            .collect();
        let found: Vec<HashMap<Pair, Item>> = futures::stream::iter(chunks)
            .map(|chunk| self.existing_in(chunk, also))
            .buffer_unordered(IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().collect())
    }

    /// [`Self::existing`] of at most [`BATCH_GET_KEYS`] keys.
    async fn existing_in(
        &self,
        chunk: Vec<keys::Key>,
        also: &[&str],
    ) -> Result<HashMap<Pair, Item>, StoreError> {
        let (mut found, left) = drain(chunk, &UNPROCESSED_PAUSES, |keys| {
            self.batch_get_once(keys, also)
        })
        .await?;
        if !left.is_empty() {
            tracing::warn!(
                keys = left.len(),
                "BatchGetItem left keys unprocessed after its retries: read one by one"
            );
        }
        for k in left {
            if let Some(item) = self.get(k.clone()).await? {
                found.push(((k.pk, k.sk), item));
            }
        }
        Ok(found.into_iter().collect())
    }

    /// One `BatchGetItem` of `keys` (at most [`BATCH_GET_KEYS`]): the live items it found,
    /// by key (with the attributes named in `also`), and the keys it left unprocessed.
    async fn batch_get_once(
        &self,
        keys: Vec<keys::Key>,
        also: &[&str],
    ) -> Result<(Vec<(Pair, Item)>, Vec<keys::Key>), StoreError> {
        // Only what tells a live item and what the caller reads of it: the read units are
        // the whole item's anyway.
        let mut projection = String::from("#pk, #sk, #ttl");
        let mut asked = KeysAndAttributes::builder()
            .set_keys(Some(keys.iter().map(keys::Key::attrs).collect()))
            .consistent_read(true)
            .expression_attribute_names("#pk", keys::PK)
            .expression_attribute_names("#sk", keys::SK)
            .expression_attribute_names("#ttl", TTL_ATTR);
        for (i, name) in also.iter().enumerate() {
            projection.push_str(&format!(", #a{i}"));
            asked = asked.expression_attribute_names(format!("#a{i}"), *name);
        }
        let asked = asked
            .projection_expression(projection)
            .build()
            .map_err(|e| StoreError::Rejected(format!("dynamodb batch get: {e}")))?;
        let out = self
            .client
            .batch_get_item()
            .request_items(&self.table, asked)
            .send()
            .await
            .map_err(|e| classify("dynamodb batch get", e))?;
        // Answers keyed by another name than the table asked (a table named by its ARN
        // answered by its name, say) would read as "nothing found": every recipient clean,
        // every opt-out skipped. Refused instead: the look-ups fail closed.
        let answered: Vec<&String> = out.responses.iter().flat_map(|r| r.keys()).collect();
        let left: Vec<&String> = out.unprocessed_keys.iter().flat_map(|u| u.keys()).collect();
        if answered_for_another_table(&self.table, answered)
            || answered_for_another_table(&self.table, left)
        {
            return Err(StoreError::Rejected(
                "dynamodb batch get: answered for another table than asked".into(),
            ));
        }
        let items = out
            .responses
            .and_then(|mut r| r.remove(&self.table))
            .unwrap_or_default();
        let found = items
            .into_iter()
            .filter(|i| self.live(i))
            .filter_map(|i| Some((pair_of(&i)?, i)))
            .collect();
        let left = out
            .unprocessed_keys
            .and_then(|mut u| u.remove(&self.table))
            .map(|k| k.keys)
            .unwrap_or_default()
            .iter()
            .filter_map(pair_of)
            .map(|(pk, sk)| keys::Key { pk, sk })
            .collect();
        Ok((found, left))
    }
}

/// Whether an answer's map, keyed by `names`, names another table than `table` (the one
/// asked): an omitted map, an empty one and one keyed by `table` are the answers to expect.
fn answered_for_another_table(table: &str, names: Vec<&String>) -> bool {
    names.iter().any(|name| name.as_str() != table)
}

fn pair_of(item: &Item) -> Option<Pair> {
    let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
    Some((text(keys::PK)?, text(keys::SK)?))
}

/// Asks `call` for `pending`, then for what each answer left unprocessed after the next of
/// `pauses`, until nothing is left or the pauses ran out: answers everything the calls
/// found and what is still unprocessed. A call's error ends it with that error.
pub(super) async fn drain<K, T, F, Fut>(
    mut pending: Vec<K>,
    pauses: &[Duration],
    mut call: F,
) -> Result<(Vec<T>, Vec<K>), StoreError>
where
    F: FnMut(Vec<K>) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, Vec<K>), StoreError>>,
{
    let mut found = Vec::new();
    let mut pauses = pauses.iter();
    loop {
        let (got, left) = call(pending).await?;
        found.extend(got);
        match pauses.next() {
            Some(pause) if !left.is_empty() => {
                tokio::time::sleep(*pause).await;
                pending = left;
            }
            _ => return Ok((found, left)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    const NO_WAIT: [Duration; 3] = [Duration::ZERO; 3];

    #[test]
    fn an_answer_for_another_table_is_told_from_the_answers_to_expect() {
        let t = "kirim-Table".to_owned();
        let other = "arn:aws:dynamodb:us-east-1:123456789012:table/kirim-Table".to_owned();
        assert!(!answered_for_another_table(&t, vec![]), "omitted or empty");
        assert!(!answered_for_another_table(&t, vec![&t]));
        assert!(answered_for_another_table(&t, vec![&other]));
        assert!(answered_for_another_table(&t, vec![&t, &other]));
    }

    /// A store that answers the first `answer` keys of each call and leaves the rest
    /// unprocessed, recording each call's keys.
    async fn partial(
        calls: &Mutex<Vec<Vec<u32>>>,
        keys: Vec<u32>,
        answer: usize,
    ) -> Result<(Vec<u32>, Vec<u32>), StoreError> {
        calls.lock().unwrap().push(keys.clone());
        let cut = answer.min(keys.len());
        Ok((keys[..cut].to_vec(), keys[cut..].to_vec()))
    }

    #[tokio::test]
    async fn unprocessed_keys_are_asked_again_until_none_is_left() {
        let calls = Mutex::new(Vec::new());
        let (found, left) = drain((0..10).collect(), &NO_WAIT, |k| partial(&calls, k, 4))
            .await
            .unwrap();
        assert_eq!(found, (0..10).collect::<Vec<_>>());
        assert!(left.is_empty());
        assert_eq!(
            *calls.lock().unwrap(),
            vec![(0..10).collect::<Vec<_>>(), (4..10).collect(), vec![8, 9]],
            "only the unprocessed keys are asked again"
        );
    }

    #[tokio::test]
    async fn keys_still_unprocessed_when_the_pauses_run_out_are_answered_as_left() {
        let calls = Mutex::new(Vec::new());
        let (found, left) = drain((0..10).collect(), &NO_WAIT, |k| partial(&calls, k, 1))
            .await
            .unwrap();
        assert_eq!(found, vec![0, 1, 2, 3], "one call and one after each pause");
        assert_eq!(left, (4..10).collect::<Vec<_>>());
        assert_eq!(calls.lock().unwrap().len(), 1 + NO_WAIT.len());
    }

    #[tokio::test]
    async fn a_call_that_processes_nothing_is_asked_again_only_as_the_pauses_allow() {
        let calls = Mutex::new(Vec::new());
        let (found, left) = drain((0..3).collect(), &NO_WAIT, |k| partial(&calls, k, 0))
            .await
            .unwrap();
        assert!(found.is_empty());
        assert_eq!(left, vec![0, 1, 2]);
        assert_eq!(calls.lock().unwrap().len(), 1 + NO_WAIT.len());
    }

    #[tokio::test]
    async fn a_failed_call_is_the_answer_whatever_was_found_before() {
        let mut n = 0;
        let res: Result<(Vec<u32>, Vec<u32>), _> =
            drain((0..4).collect(), &NO_WAIT, |k: Vec<u32>| {
                n += 1;
                let first = n == 1;
                async move {
                    if first {
                        Ok((k[..1].to_vec(), k[1..].to_vec()))
                    } else {
                        Err(StoreError::Unavailable(
                            "dynamodb batch get: throttled".into(),
                        ))
                    }
                }
            })
            .await;
        assert!(matches!(res, Err(StoreError::Unavailable(_))), "{res:?}");
    }

    #[tokio::test]
    async fn the_pauses_are_waited_in_turn_and_none_once_nothing_is_left() {
        let calls = Mutex::new(Vec::new());
        let pauses = [
            Duration::from_millis(20),
            Duration::from_millis(40),
            Duration::from_secs(30),
        ];
        let start = std::time::Instant::now();
        let (found, left) = drain((0..3).collect(), &pauses, |k| partial(&calls, k, 1))
            .await
            .unwrap();
        assert_eq!((found.len(), left.len()), (3, 0));
        let took = start.elapsed();
        assert!(
            took >= pauses[0] + pauses[1] && took < pauses[2],
            "two pauses for the two asks again, none after the last: {took:?}"
        );
    }
}
