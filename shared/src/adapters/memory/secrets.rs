//! The secret store in memory (local mode, tests): a current and a previous version per
//! name, like Secrets Manager's AWSCURRENT and AWSPREVIOUS.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::ports::SecretStore;
use crate::secret::Secret;
use crate::store_error::StoreError;

/// A name's versions: the current one, when it was stored, and the previous one.
type Versions = (Secret, DateTime<Utc>, Option<Secret>);

#[derive(Default)]
pub struct MemorySecrets {
    inner: Mutex<HashMap<String, Versions>>,
}

fn poisoned<T>(_: T) -> StoreError {
    StoreError::Unavailable("memory secrets lock poisoned".into())
}

#[async_trait]
impl SecretStore for MemorySecrets {
    async fn put_secret(&self, name: &str, value: &Secret) -> Result<(), StoreError> {
        let mut map = self.inner.lock().map_err(poisoned)?;
        let previous = map.remove(name).map(|(cur, _, _)| cur);
        map.insert(name.to_owned(), (value.clone(), Utc::now(), previous));
        Ok(())
    }

    async fn get_secret(&self, name: &str) -> Result<Option<Secret>, StoreError> {
        let map = self.inner.lock().map_err(poisoned)?;
        Ok(map.get(name).map(|(cur, _, _)| cur.clone()))
    }

    async fn get_previous_secret(&self, name: &str) -> Result<Option<Secret>, StoreError> {
        let map = self.inner.lock().map_err(poisoned)?;
        Ok(map.get(name).and_then(|(_, _, prev)| prev.clone()))
    }

    async fn rotated_at(&self, name: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        let map = self.inner.lock().map_err(poisoned)?;
        Ok(map.get(name).map(|(_, at, _)| *at))
    }

    async fn delete_secret(&self, name: &str) -> Result<(), StoreError> {
        self.inner.lock().map_err(poisoned)?.remove(name);
        Ok(())
    }
}
