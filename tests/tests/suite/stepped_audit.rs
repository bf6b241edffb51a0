//! One pass-through [`AuditLog`] for the tests that step into an append (a failure, another
//! process between its two writes, a count of head reads): each gives only its [`Steps`],
//! the wrapper passes everything else to the real log. And the audit tests' one event.

use std::sync::Arc;

use async_trait::async_trait;
use kirim::domain::TenantId;
use kirim::ports::{
    AuditEvent, AuditHead, AuditLink, AuditLog, AuditOutcome, AuditQuery, ParkedAudit, StaleIntent,
};
use kirim::service::audit;
use kirim::store_error::StoreError;

/// A successful API-key call `action` on `tenant`'s chain.
pub(crate) fn draft_on(tenant: &TenantId, action: &str) -> audit::Draft {
    audit::Draft {
        tenant: Some(tenant.clone()),
        actor_type: "api_key",
        actor_id: "k".into(),
        action: action.into(),
        ip: None,
        outcome: AuditOutcome::Success,
        details: serde_json::json!({}),
    }
}

/// What a test does at the steps of an append; by default nothing.
#[async_trait]
pub(crate) trait Steps: Send + Sync + 'static {
    /// Before an event is written (`put_event`, and the parked path's `append`): an error
    /// is the write's answer, and nothing is written.
    async fn before_event(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// After an event was written by `put_event`, before its answer: an error is the
    /// answer (the write landed, its answer lost).
    async fn after_event(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Before the head is moved (`advance_head`): an error is the write's answer.
    async fn before_head(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// When the chain's tip (head and parked events) is read before an append.
    fn on_tip(&self) {}
    /// After the chain's head was read (`head`), before its answer is used.
    async fn after_head_read(&self) {}
    /// When an audit intent is written (`put_intent`): an error is the write's answer,
    /// and nothing is written.
    fn on_intent(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Before the intent `id` is promoted to a parked event (`promote_intent`): an error is
    /// the write's answer, and nothing is written.
    fn before_promote(&self, _id: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The real log `inner`, with `steps` run at each step.
pub(crate) struct Stepped<S> {
    pub inner: Arc<dyn AuditLog>,
    pub steps: S,
}

#[async_trait]
impl<S: Steps> AuditLog for Stepped<S> {
    async fn head(&self, chain: &str) -> Result<Option<AuditHead>, StoreError> {
        let head = self.inner.head(chain).await;
        self.steps.after_head_read().await;
        head
    }
    async fn tip(&self, chain: &str) -> Result<(Option<AuditHead>, bool), StoreError> {
        self.steps.on_tip();
        self.inner.tip(chain).await
    }
    async fn append(&self, link: &AuditLink<'_>) -> Result<(), StoreError> {
        self.steps.before_event().await?;
        self.inner.append(link).await
    }
    async fn put_event(&self, event: &AuditEvent) -> Result<(), StoreError> {
        self.steps.before_event().await?;
        self.inner.put_event(event).await?;
        self.steps.after_event().await
    }
    async fn advance_head(
        &self,
        chain: &str,
        from: Option<u64>,
        to: &AuditHead,
    ) -> Result<(), StoreError> {
        self.steps.before_head().await?;
        self.inner.advance_head(chain, from, to).await
    }
    async fn event(&self, chain: &str, seq: u64) -> Result<Option<AuditEvent>, StoreError> {
        self.inner.event(chain, seq).await
    }
    async fn park(&self, event: &ParkedAudit) -> Result<(), StoreError> {
        self.inner.park(event).await
    }
    async fn parked(&self, chain: &str, limit: usize) -> Result<Vec<ParkedAudit>, StoreError> {
        self.inner.parked(chain, limit).await
    }
    async fn parked_chains(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.inner.parked_chains(after, limit).await
    }
    async fn put_intent(&self, intent: &ParkedAudit) -> Result<(), StoreError> {
        self.steps.on_intent()?;
        self.inner.put_intent(intent).await
    }
    async fn delete_intent(&self, id: &str) -> Result<(), StoreError> {
        self.inner.delete_intent(id).await
    }
    async fn stale_intents(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StaleIntent>, StoreError> {
        self.inner.stale_intents(before, after, limit).await
    }
    async fn promote_intent(&self, id: &str, parked: &ParkedAudit) -> Result<(), StoreError> {
        self.steps.before_promote(id)?;
        self.inner.promote_intent(id, parked).await
    }
    async fn list(
        &self,
        chain: &str,
        q: &AuditQuery,
    ) -> Result<(Vec<AuditEvent>, Option<u64>), StoreError> {
        self.inner.list(chain, q).await
    }
    async fn ascending(
        &self,
        chain: &str,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        self.inner.ascending(chain, after_seq, limit).await
    }
}
