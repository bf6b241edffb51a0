//! Local mode (`kirim-local`), the Meta Cloud API sandbox, and the emulator bootstrap that
//! creates the stack's resources from `template.yaml`.

pub mod bootstrap;
pub mod cost;
pub mod drill;
#[cfg(test)]
mod iam_check;
pub mod local;
pub mod meta_schema;
pub mod sandbox;
