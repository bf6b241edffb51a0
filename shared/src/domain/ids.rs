use std::fmt;

use serde::{Deserialize, Serialize};

/// A fresh, time-ordered, opaque id (ULID).
pub fn new_id() -> String {
    ulid::Ulid::new().to_string()
}

macro_rules! id_type {
    ($name:ident) => {
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn generate() -> Self {
                Self(new_id())
            }
            /// Ids are ULIDs we minted; anything else cannot name a resource of ours.
            pub fn parse(s: &str) -> Option<Self> {
                ulid::Ulid::from_string(s).ok().map(|u| Self(u.to_string()))
            }
            /// For values read back from our own storage.
            pub fn from_trusted(s: impl Into<String>) -> Self {
                Self(s.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
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
    use super::*;

    #[test]
    fn ids_that_are_not_ulids_name_nothing() {
        assert!(TenantId::parse("../../etc").is_none());
        assert!(MessageId::parse("").is_none());
        let id = MessageId::generate();
        assert_eq!(MessageId::parse(id.as_str()), Some(id));
    }
}
