//! The scheduled cleanup: removes what is past its TTL and not yet swept by DynamoDB.

use serde::Serialize;

use super::errors::ServiceError;
use super::Deps;

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct RetentionReport {
    pub ran_at: chrono::DateTime<chrono::Utc>,
    pub deleted_expired: usize,
}

/// Items removed per run at most; the next run continues.
pub const BUDGET: usize = 10_000;

pub async fn run(deps: &Deps) -> Result<RetentionReport, ServiceError> {
    let now = deps.clock.now();
    let deleted = deps.expired.delete_expired(now, BUDGET).await?;
    tracing::info!(deleted_expired = deleted, "retention run finished");
    Ok(RetentionReport {
        ran_at: now,
        deleted_expired: deleted,
    })
}
