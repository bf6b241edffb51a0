//! In-memory adapters: one process, no persistence. They honour the same contract as the
//! AWS adapters (conditional writes become checks under one lock).

mod data_keys;
mod queue;
mod secrets;
mod store;
mod users;

pub use data_keys::LocalDataKeys;
pub use queue::MemoryQueue;
pub use secrets::MemorySecrets;
pub use store::MemoryStore;
