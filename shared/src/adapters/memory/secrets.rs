//! The secret store in memory (local mode, tests): a current and a previous version per
//! name, like Secrets Manager's AWSCURRENT and AWSPREVIOUS.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::ports::SecretStore;
use crate::secret::Secret;
use crate::store_error::StoreError;

#[derive(Default)]
pub struct MemorySecrets {
    // name -> (current, previous)
    inner: Mutex<HashMap<String, (Secret, Option<Secret>)>>,
}

fn poisoned<T>(_: T) -> StoreError {
    StoreError::Unavailable("memory secrets lock poisoned".into())
}

#[async_trait]
impl SecretStore for MemorySecrets {
    async fn put_secret(&self, name: &str, value: &Secret) -> Result<(), StoreError> {
        let mut map = self.inner.lock().map_err(poisoned)?;
        let previous = map.remove(name).map(|(cur, _)| cur);
        map.insert(name.to_owned(), (value.clone(), previous));
        Ok(())
    }

    async fn get_secret(&self, name: &str) -> Result<Option<Secret>, StoreError> {
        let map = self.inner.lock().map_err(poisoned)?;
        Ok(map.get(name).map(|(cur, _)| cur.clone()))
    }

    async fn get_previous_secret(&self, name: &str) -> Result<Option<Secret>, StoreError> {
        let map = self.inner.lock().map_err(poisoned)?;
        Ok(map.get(name).and_then(|(_, prev)| prev.clone()))
    }

    async fn delete_secret(&self, name: &str) -> Result<(), StoreError> {
        self.inner.lock().map_err(poisoned)?.remove(name);
        Ok(())
    }
}
