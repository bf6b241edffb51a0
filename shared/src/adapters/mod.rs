//! Port implementations: `memory` (local mode and unit tests) and `aws` (DynamoDB, SQS,
//! Secrets Manager), plus the reqwest client for Meta's Graph API.

pub mod aws;
pub mod cache;
pub mod callback_http;
pub mod memory;
pub mod meta_graph;
