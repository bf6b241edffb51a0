//! The secret store in memory (local mode, tests): versions by id per name, one of them
//! current, one previous and one staged, like Secrets Manager's AWSCURRENT, AWSPREVIOUS
//! and AWSPENDING.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::ports::{ListedSecret, SecretPage, SecretStore};
use crate::secret::Secret;
use crate::store_error::StoreError;

/// A name's versions and which of them holds each stage.
struct Versions {
    by_id: HashMap<String, Secret>,
    current: String,
    /// When the current version became current.
    current_at: DateTime<Utc>,
    previous: Option<String>,
    /// When the name was created, and when a version was last added or made current
    /// (Secrets Manager's `CreatedDate` and `LastChangedDate`).
    created_at: DateTime<Utc>,
    changed_at: DateTime<Utc>,
}

impl Versions {
    fn get(&self, id: &str) -> Option<Secret> {
        self.by_id.get(id).cloned()
    }

    fn promote(&mut self, id: &str) {
        if self.current != id {
            self.previous = Some(std::mem::replace(&mut self.current, id.to_owned()));
            self.current_at = Utc::now();
            self.changed_at = self.current_at;
        }
    }
}

#[derive(Default)]
pub struct MemorySecrets {
    inner: Mutex<HashMap<String, Versions>>,
}

fn poisoned<T>(_: T) -> StoreError {
    StoreError::Unavailable("memory secrets lock poisoned".into())
}

/// A version id as Secrets Manager's are: unique, 32 to 64 characters.
fn new_version() -> String {
    format!("{:032x}", ulid::Ulid::new().0)
}

impl MemorySecrets {
    /// Stores `value` as a new version of `name` (creating the name as current);
    /// `true` if the name was new.
    fn add(&self, name: &str, value: &Secret) -> Result<(String, bool), StoreError> {
        let mut map = self.inner.lock().map_err(poisoned)?;
        let id = new_version();
        match map.get_mut(name) {
            Some(versions) => {
                versions.by_id.insert(id.clone(), value.clone());
                versions.changed_at = Utc::now();
                Ok((id, false))
            }
            None => {
                let now = Utc::now();
                map.insert(
                    name.to_owned(),
                    Versions {
                        by_id: HashMap::from([(id.clone(), value.clone())]),
                        current: id.clone(),
                        current_at: now,
                        previous: None,
                        created_at: now,
                        changed_at: now,
                    },
                );
                Ok((id, true))
            }
        }
    }
}

#[async_trait]
impl SecretStore for MemorySecrets {
    async fn put_secret(&self, name: &str, value: &Secret) -> Result<(), StoreError> {
        let (id, _) = self.add(name, value)?;
        self.promote_secret(name, &id).await
    }

    async fn get_secret(&self, name: &str) -> Result<Option<Secret>, StoreError> {
        let map = self.inner.lock().map_err(poisoned)?;
        Ok(map.get(name).and_then(|v| v.get(&v.current)))
    }

    async fn get_previous_secret(&self, name: &str) -> Result<Option<Secret>, StoreError> {
        let map = self.inner.lock().map_err(poisoned)?;
        Ok(map
            .get(name)
            .and_then(|v| v.previous.as_deref().and_then(|p| v.get(p))))
    }

    async fn rotated_at(&self, name: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        let map = self.inner.lock().map_err(poisoned)?;
        Ok(map.get(name).map(|v| v.current_at))
    }

    async fn delete_secret(&self, name: &str) -> Result<(), StoreError> {
        self.inner.lock().map_err(poisoned)?.remove(name);
        Ok(())
    }

    /// A deletion here is at once (no recovery window): nothing to restore.
    async fn replace_secret(&self, name: &str, value: &Secret) -> Result<(), StoreError> {
        self.put_secret(name, value).await
    }

    async fn stage_secret(&self, name: &str, value: &Secret) -> Result<String, StoreError> {
        Ok(self.add(name, value)?.0)
    }

    async fn promote_secret(&self, name: &str, version: &str) -> Result<(), StoreError> {
        let mut map = self.inner.lock().map_err(poisoned)?;
        match map.get_mut(name) {
            Some(versions) if versions.by_id.contains_key(version) => {
                versions.promote(version);
                Ok(())
            }
            _ => Err(StoreError::NotFound),
        }
    }

    async fn get_secret_version(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<Secret>, StoreError> {
        let map = self.inner.lock().map_err(poisoned)?;
        Ok(map.get(name).and_then(|v| v.get(version)))
    }

    /// In name order; the token is the last name of the page (a deletion here is at once:
    /// nothing is ever scheduled for deletion).
    async fn list_secrets(
        &self,
        prefix: &str,
        page: Option<&str>,
        limit: usize,
    ) -> Result<SecretPage, StoreError> {
        let map = self.inner.lock().map_err(poisoned)?;
        let mut names: Vec<&String> = map
            .keys()
            .filter(|n| n.starts_with(prefix) && page.is_none_or(|after| n.as_str() > after))
            .collect();
        names.sort();
        let limit = limit.clamp(1, 100);
        let more = names.len() > limit;
        names.truncate(limit);
        let next = more.then(|| names.last().map(|n| (*n).clone())).flatten();
        let secrets = names
            .into_iter()
            .filter_map(|n| {
                map.get(n).map(|v| ListedSecret {
                    name: n.clone(),
                    created_at: Some(v.created_at),
                    changed_at: Some(v.changed_at),
                })
            })
            .collect();
        Ok(SecretPage { secrets, next })
    }
}
