//! Meta's webhook: the signature over the raw bytes, the subscription handshake, and a
//! verified body read once into typed events (`domain::meta`) and routed: statuses to
//! `status`, STOP/START requests to `optouts`, account-level stops to `accounts`, template
//! changes to `templates`, `user_preferences` to `optouts`. A phone and a user id given
//! together are remembered as a pairing, and every inbound message records when its user
//! last wrote to the number (`contacts`); phone numbers' quality updates go to `numbers`.
//! Pieces Kirim does not understand are skipped alone and counted.

use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use tracing::Instrument;

use crate::domain::meta::{self, AccountUpdate, MetaEvent, StatusReport};
use crate::domain::signature::{parse_signature_header, signed_by_secret};
use crate::domain::{OptOutKey, PhoneNumber, TenantId, UserId};

use super::errors::ServiceError;
use super::Deps;
use crate::store_error::StoreError;

/// Checks `X-Hub-Signature-256: sha256=<hex>` against the current and the previous app
/// secret (for `rotation_grace` after a rotation), in constant time.
pub async fn verify_signature<H: AsRef<[u8]> + ?Sized>(
    deps: &Deps,
    raw: &[u8],
    header: Option<&H>,
) -> Result<bool, ServiceError> {
    let Some(sig) = parse_signature_header(header) else {
        return Ok(false);
    };
    let name = &deps.settings.meta_app_secret;
    let signed = |secret: Option<crate::secret::Secret>| {
        secret.is_some_and(|s| signed_by_secret(&s, raw, &sig))
    };
    // The previous secret is looked up only when the current one does not sign it.
    if signed(deps.secrets.current(name).await?) {
        return Ok(true);
    }
    if signed(
        deps.secrets
            .previous_within(
                name,
                deps.settings.rotation_grace.min(APP_SECRET_GRACE),
                deps.clock.now(),
            )
            .await?,
    ) {
        return Ok(true);
    }
    // Neither: the secret may have been rotated since this process cached it (reset at
    // Meta, then stored), so read it afresh, at most every `SECRET_REFRESH_EVERY`.
    Ok(signed(
        deps.secrets
            .refresh_current(name, SECRET_REFRESH_EVERY)
            .await?
            .flatten(),
    ))
}

/// How long the previous app secret is still taken after a rotation, at most (less if
/// `rotation_grace` is shorter). The runbook resets the secret at Meta first and then stores
/// it, so Meta signs nothing with the previous one after the store; the grace only covers
/// the other order (stored first, reset at Meta minutes later). Not the operator token's
/// day: the usual reason to rotate an app secret is a leak, and a leaked secret taken for a
/// day would let anyone forge statuses, opt-outs and account bans that long.
pub const APP_SECRET_GRACE: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// How often a process reads the app secret afresh for a signature its cached copy
/// refused (a forged one costs no more than this).
pub const SECRET_REFRESH_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The subscription handshake: the challenge back if the verify token matches. A token
/// the cached copy refuses is checked against the secret read afresh (at most once every
/// [`SECRET_REFRESH_EVERY`]): the runbook changes it here and then in Meta, whose "Verify
/// and save" would otherwise meet a warm instance's old copy for up to its cache's 5 minutes.
pub async fn verify_subscription(
    deps: &Deps,
    mode: Option<&str>,
    token: Option<&str>,
) -> Result<bool, ServiceError> {
    if mode != Some("subscribe") {
        return Ok(false);
    }
    let Some(token) = token else {
        return Ok(false);
    };
    let name = &deps.settings.meta_verify_token_secret;
    if deps
        .secrets
        .current(name)
        .await?
        .is_some_and(|e| e.matches(token))
    {
        return Ok(true);
    }
    Ok(deps
        .secrets
        .refresh_current(name, SECRET_REFRESH_EVERY)
        .await?
        .flatten()
        .is_some_and(|e| e.matches(token)))
}

#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct WebhookSummary {
    /// Items that changed something.
    pub applied: usize,
    /// Items understood that changed nothing (duplicates, not keywords, no action).
    pub ignored: usize,
    /// Statuses of messages Kirim does not know (kept for a while, in case).
    pub unknown: usize,
    /// Pieces Kirim does not understand, skipped.
    pub skipped: usize,
    /// Items that failed (storage).
    pub errors: usize,
}

impl WebhookSummary {
    /// The webhook's answer, `{"received":true,"summary":{...}}`: the bytes
    /// `serde_json` makes of it (a test holds them equal), written directly, since the
    /// serialiser's generic path was 3% of a notification's instructions (BENCHMARKS.md
    /// "Webhook side by side").
    pub fn received_body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        out.extend_from_slice(br#"{"received":true,"summary":{"applied":"#);
        let mut n = itoa::Buffer::new();
        for (name, value) in [
            ("", self.applied),
            (r#","ignored":"#, self.ignored),
            (r#","unknown":"#, self.unknown),
            (r#","skipped":"#, self.skipped),
            (r#","errors":"#, self.errors),
        ] {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(n.format(value).as_bytes());
        }
        out.extend_from_slice(b"}}");
        out
    }
}

/// Tenants by the phone number id a change names, looked up once per body whatever the
/// answer: a lookup that failed is not made again by the body's next events naming the
/// number, each of which fails with it (an error each, as when each looked it up; the body
/// is answered 500 and sent again). A body names one number or a few: a list, borrowing
/// the ids from the body's events.
struct Owners<'a, 'e> {
    deps: &'a Deps,
    known: Vec<(&'e str, Result<Option<TenantId>, StoreError>)>,
}

impl<'e> Owners<'_, 'e> {
    /// The owner of `phone_number_id`, looked up once per notification (lent, not cloned).
    async fn of(
        &mut self,
        phone_number_id: Option<&'e str>,
    ) -> Result<Option<&TenantId>, ServiceError> {
        let Some(pnid) = phone_number_id else {
            return Ok(None);
        };
        let at = match self.known.iter().position(|(p, _)| *p == pnid) {
            Some(at) => at,
            None => {
                let t = self.deps.tenants.tenant_by_phone_number_id(pnid).await;
                self.known.push((pnid, t));
                self.known.len() - 1
            }
        };
        match self.known.get(at) {
            Some((_, Ok(t))) => Ok(t.as_ref()),
            Some((_, Err(e))) => Err(e.clone().into()),
            None => Ok(None),
        }
    }

    /// The owner of `phone_number_id` as looked up already, or the lookup's failure
    /// (`None`: not looked up), without looking it up: for statuses applied concurrently,
    /// which share the owners looked up before them.
    fn looked_up(&self, phone_number_id: &str) -> Option<Result<Option<&TenantId>, ServiceError>> {
        self.known
            .iter()
            .find(|(p, _)| *p == phone_number_id)
            .map(|(_, t)| match t {
                Ok(t) => Ok(t.as_ref()),
                Err(e) => Err(e.clone().into()),
            })
    }

    /// [`Self::of`], unless that tenant is closed: a closed tenant takes no more opt-outs,
    /// pairings or inbound times (its items were given, or are about to be given, their
    /// last TTL by the close-out, and a whole-item write after it would keep one for good).
    /// Only for the rare inbound paths: the tenant's status is the warm-cached read.
    async fn open(
        &mut self,
        phone_number_id: Option<&'e str>,
    ) -> Result<Option<&TenantId>, ServiceError> {
        let deps = self.deps;
        match self.of(phone_number_id).await? {
            Some(t) if deps.tenant_is_open(t).await? => Ok(Some(t)),
            _ => Ok(None),
        }
    }
}

/// Applies every event of a verified notification. One bad item never drops the rest.
pub async fn apply(deps: &Deps, raw: &[u8]) -> Result<WebhookSummary, ServiceError> {
    let mut events = meta::parse_notification(raw)
        .map_err(|_| ServiceError::InvalidRequest("the body is not a Meta notification".into()))?;
    // Inbound STOP/START requests in the order of Meta's timestamps (stable: equal times
    // keep the order Meta listed them; a missing time counts as now, the latest).
    events.sort_by_key(|e| match e {
        MetaEvent::Inbound(m) => m.timestamp.unwrap_or(i64::MAX),
        MetaEvent::UserPreference(p) => p.timestamp.unwrap_or(i64::MAX),
        _ => i64::MIN,
    });
    let single = events.len() == 1;
    let mut summary = WebhookSummary::default();
    let mut owners = Owners {
        deps,
        known: Vec::new(),
    };
    let mut pairs = Pairs::default();
    // Numbers whose display this body offered to learn already (once per body).
    let mut learnt_display: HashSet<&str> = HashSet::new();
    // Account-level stops first, as before: a body that also carries statuses sees the
    // tenant suspended already.
    for event in &events {
        if let MetaEvent::AccountUpdate(update) = event {
            // Boxed, as each rare path below: held in place, its future (some kilobytes)
            // would make every notification's as large, and the caller boxes that one,
            // copying all of it into memory not yet cached (BENCHMARKS.md "Webhook side by
            // side", stop 27).
            match Box::pin(account_update(deps, update)).await {
                Ok(0) => summary.ignored += 1,
                Ok(_) => summary.applied += 1,
                Err(e) => {
                    tracing::error!(error = %e, "account update not applied");
                    summary.errors += 1;
                }
            }
        }
    }
    // A body of several events: its statuses next, concurrently (`apply_statuses`), before
    // the inbound messages and preferences as when they were applied one by one (a pairing
    // a status teaches is known to a STOP of the same body). Boxed, as the rare paths below:
    // a body of one status (Meta's usual) never makes it.
    if !single {
        Box::pin(apply_statuses(
            deps,
            &events,
            &mut owners,
            &mut pairs,
            &mut summary,
        ))
        .await;
    }
    for event in &events {
        match event {
            MetaEvent::AccountUpdate(_) => {}
            MetaEvent::Template(update) => {
                let span = tracing::info_span!("template", waba_id = %update.waba_id);
                match super::templates::apply(deps, update).instrument(span).await {
                    Ok(super::templates::Applied::Yes) => summary.applied += 1,
                    Ok(_) => summary.ignored += 1,
                    Err(e) => {
                        tracing::error!(error = %e, "template change not applied");
                        summary.errors += 1;
                    }
                }
            }
            MetaEvent::NumberQuality(update) => {
                let span = tracing::info_span!("number_quality", waba_id = %update.waba_id);
                match Box::pin(super::numbers::apply_quality(deps, update).instrument(span)).await {
                    Ok(super::numbers::Applied::Yes) => summary.applied += 1,
                    Ok(_) => summary.ignored += 1,
                    Err(e) => {
                        tracing::error!(error = %e, "number quality update not applied");
                        summary.errors += 1;
                    }
                }
            }
            MetaEvent::Unknown(u) => {
                summary.skipped += 1;
                crate::metrics::webhook_skipped(u.piece);
                tracing::debug!(piece = u.piece, field = %u.field, "webhook piece not understood; skipped");
            }
            // Several: applied above.
            MetaEvent::Status(_) if !single => {}
            MetaEvent::Status(report) => {
                // A body of one status (Meta's usual) records its ids on the request's
                // span (several get a span each, `apply_statuses`). Spans cost (a span was
                // 3% of the webhook's CPU; BENCHMARKS.md "Webhook side by side").
                // (The request's span is the current one already: nothing to enter again.)
                let span = tracing::Span::none();
                let result = async {
                    let tenant = owners.of(report.phone_number_id.as_deref()).await;
                    // The request's span gets the wamid with the tenant, in one record
                    // (lines logged while the owner is looked up carry neither yet).
                    let wamid = report.wamid.for_logs();
                    match &tenant {
                        Ok(Some(t)) => crate::telemetry::record_ids([
                            ("wamid", wamid),
                            ("tenant_id", t.as_str()),
                        ]),
                        _ => crate::telemetry::record_ids([("wamid", wamid)]),
                    }
                    let tenant = tenant?;
                    let (applied, owner) =
                        super::status::apply_owned(deps, tenant, report, None).await?;
                    // The pairing is the message's tenant's: a number moved to another
                    // tenant still brings statuses of its former owner's messages, whose
                    // customers are not the new owner's. A status of no known message
                    // teaches the number's owner.
                    if let Some(t) = owner.as_ref().or(tenant) {
                        pairs
                            .learn(deps, t, &report.recipient, &report.recipient_user_id)
                            .await?;
                    }
                    Ok::<_, ServiceError>(applied)
                }
                .instrument(span)
                .await;
                match result {
                    Ok(super::status::Applied::Yes) => summary.applied += 1,
                    Ok(super::status::Applied::NoChange) => summary.ignored += 1,
                    Ok(super::status::Applied::UnknownMessage) => summary.unknown += 1,
                    Err(e) => {
                        tracing::error!(error = %e, "status not applied");
                        summary.errors += 1;
                    }
                }
            }
            MetaEvent::UserPreference(pref) => {
                let span =
                    tracing::info_span!("user_preference", tenant_id = tracing::field::Empty);
                let result = async {
                    let tenant = owners.open(pref.phone_number_id.as_deref()).await?;
                    if let Some(t) = tenant {
                        crate::telemetry::record_tenant(t.as_str());
                        pairs.learn(deps, t, &pref.phone, &pref.user_id).await?;
                    }
                    super::optouts::apply_preference(deps, tenant, pref).await
                }
                .instrument(span)
                .await;
                match result {
                    Ok(super::optouts::Inbound::Nothing) => summary.ignored += 1,
                    Ok(_) => summary.applied += 1,
                    Err(e) => {
                        tracing::error!(error = %e, "user preference not applied");
                        summary.errors += 1;
                    }
                }
            }
            MetaEvent::Inbound(message) => {
                let span = tracing::info_span!("inbound", tenant_id = tracing::field::Empty);
                let result = async {
                    let tenant = owners.open(message.phone_number_id.as_deref()).await?;
                    if let (Some(t), Some(pnid)) = (tenant, &message.phone_number_id) {
                        crate::telemetry::record_tenant(t.as_str());
                        if let Some(display) = &message.display_phone_number {
                            if learnt_display.insert(pnid.as_str()) {
                                // Boxed: rare, and its future kept out of every
                                // notification's (see the account update's note above).
                                Box::pin(super::numbers::learn_display(deps, t, pnid, display))
                                    .await;
                            }
                        }
                        pairs
                            .learn(deps, t, &message.from, &message.from_user_id)
                            .await?;
                        let keys: Vec<OptOutKey> = super::optouts::Recipient {
                            phone: message.from.clone(),
                            user_id: message.from_user_id.clone(),
                        }
                        .keys();
                        super::contacts::user_wrote(deps, t, pnid, &keys, message.timestamp)
                            .await?;
                    }
                    super::optouts::apply_inbound(deps, tenant, message).await
                }
                .instrument(span)
                .await;
                match result {
                    Ok(super::optouts::Inbound::Nothing) => summary.ignored += 1,
                    Ok(_) => summary.applied += 1,
                    Err(e) => {
                        tracing::error!(error = %e, "inbound message not applied");
                        summary.errors += 1;
                    }
                }
            }
        }
    }
    Ok(summary)
}

/// How many of a body's statuses are applied at once (one wamid's at a time each). Each
/// status is a few DynamoDB calls of 5–10 ms one after another, so applied one by one a body
/// of a few thousand outlasted the function's 29 s and Meta sent all of it again. All of
/// a tenant's messages share one partition (`TENANT#{t}`), whose writes DynamoDB takes up
/// to 1,000 units a second: 8 statuses in flight, each about 40 ms of calls and up to ~6
/// write units (a priced move's transaction of two items and its index move), stay within
/// it (16 could reach it), and keep a webhook's connections and memory small.
///
/// A day's first priced statuses of one category all wrote one usage row (`USAGE#…`) in
/// their transactions, which DynamoDB cancels as conflicts when they overlap; the adapter
/// tries each 7 times in ~0.2–0.3 s. That budget does not absorb 8 writers of one row: in a
/// simulation of 1,000 such statuses (a transaction holding the row 10–25 ms, a cancelled
/// one answered in 4–8 ms, the adapter's backoff), 16% of them spent every try at 8 in
/// flight, 3.9% at 4, 0.6% at 2 (each an error, the body answered 500 and sent again). So a
/// body's pricing writes of one item take turns ([`UsageTurns`](super::usage::UsageTurns)):
/// none of the body's own overlap, the rest of each status stays 8 at a time. One item
/// commits one transaction at a time (~40–60 priced statuses a second, in that model), so
/// since stop 64 a row is 16 items, a message adding to the one its id names (data model
/// A79): a body's writes of different parts go at once, and the single-status bodies of
/// other requests meet one part in 16 (`scripts/model-usage-conflicts`: none of 200 a
/// second ran out of tries). Not measured against DynamoDB (moto has no transaction
/// conflicts): 200 unpriced statuses a second at 40 ms, a body of 1,000 in ~5 s; before the
/// parts, 1,000 first-priced of one category took ~18 s in that model, at one item's pace.
pub const STATUSES_IN_FLIGHT: usize = 8;

/// The statuses of a body of several events, concurrently ([`STATUSES_IN_FLIGHT`] at a
/// time) but one wamid's in the order listed, one after another: the store's conditional
/// writes keep every invariant between bodies applied at once (monotonic status, pricing
/// counted once), and the one order they do not decide, a wamid's own statuses, is kept
/// (its `delivered` then its `read` make one move each). The numbers' owners are looked
/// up first, once each (a body names one number or a few); the pairings are learnt once
/// per body, as before; the pricing writes of a usage row take turns (see
/// [`STATUSES_IN_FLIGHT`]).
async fn apply_statuses<'e>(
    deps: &Deps,
    events: &'e [MetaEvent],
    owners: &mut Owners<'_, 'e>,
    pairs: &mut Pairs,
    summary: &mut WebhookSummary,
) {
    let mut groups: Vec<Vec<&'e StatusReport>> = Vec::new();
    let mut group_of: HashMap<&'e str, usize> = HashMap::new();
    for event in events {
        if let MetaEvent::Status(report) = event {
            let at = *group_of.entry(report.wamid.as_str()).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            if let Some(group) = groups.get_mut(at) {
                group.push(report);
            }
        }
    }
    if groups.is_empty() {
        return;
    }
    for report in groups.iter().flatten() {
        // Once per number, whatever the answer: a failed lookup fails each of its statuses
        // (`one_of_many`), as it did when each looked it up again.
        let _ = owners.of(report.phone_number_id.as_deref()).await;
    }
    let owners = &*owners;
    let shared = SharedPairs(std::sync::Mutex::new(std::mem::take(&mut pairs.0)));
    let turns = super::usage::UsageTurns::default();
    // (`FuturesUnordered` filled by hand: a stream mapped by a closure over these borrows
    // is not `Send` to the compiler, rust-lang/rust#102211.)
    let mut groups = groups.into_iter();
    let mut in_flight = futures::stream::FuturesUnordered::new();
    loop {
        while in_flight.len() < STATUSES_IN_FLIGHT {
            let Some(group) = groups.next() else { break };
            in_flight.push(apply_group(deps, owners, &shared, &turns, group));
        }
        let Some(counts) = in_flight.next().await else {
            break;
        };
        summary.applied += counts.applied;
        summary.ignored += counts.ignored;
        summary.unknown += counts.unknown;
        summary.errors += counts.errors;
    }
    drop(in_flight);
    pairs.0 = shared.into_inner();
}

/// One wamid's statuses, one after another in the order listed, counted.
async fn apply_group(
    deps: &Deps,
    owners: &Owners<'_, '_>,
    pairs: &SharedPairs,
    turns: &super::usage::UsageTurns,
    group: Vec<&StatusReport>,
) -> WebhookSummary {
    let mut counts = WebhookSummary::default();
    for report in group {
        tally(
            &mut counts,
            one_of_many(deps, owners, pairs, turns, report).await,
        );
    }
    counts
}

/// One status of a body of several, in a span of its own.
async fn one_of_many(
    deps: &Deps,
    owners: &Owners<'_, '_>,
    pairs: &SharedPairs,
    turns: &super::usage::UsageTurns,
    report: &StatusReport,
) -> Result<super::status::Applied, ServiceError> {
    let span = tracing::info_span!(
        "status",
        wamid = %report.wamid.for_logs(),
        tenant_id = tracing::field::Empty,
        message_id = tracing::field::Empty,
    );
    async {
        let looked_up;
        let tenant = match report.phone_number_id.as_deref() {
            None => None,
            Some(pnid) => match owners.looked_up(pnid) {
                Some(t) => t?,
                // (Every status's number is looked up before: not reached.)
                None => {
                    looked_up = deps.tenants.tenant_by_phone_number_id(pnid).await?;
                    looked_up.as_ref()
                }
            },
        };
        if let Some(t) = tenant {
            crate::telemetry::record_tenant(t.as_str());
        }
        let (applied, owner) =
            super::status::apply_owned(deps, tenant, report, Some(turns)).await?;
        // The message's tenant's pairing (see the single status's path in `apply`).
        if let Some(t) = owner.as_ref().or(tenant) {
            pairs
                .learn(deps, t, &report.recipient, &report.recipient_user_id)
                .await?;
        }
        Ok(applied)
    }
    .instrument(span)
    .await
}

/// A status's result counted in `summary`.
fn tally(summary: &mut WebhookSummary, result: Result<super::status::Applied, ServiceError>) {
    match result {
        Ok(super::status::Applied::Yes) => summary.applied += 1,
        Ok(super::status::Applied::NoChange) => summary.ignored += 1,
        Ok(super::status::Applied::UnknownMessage) => summary.unknown += 1,
        Err(e) => {
            tracing::error!(error = %e, "status not applied");
            summary.errors += 1;
        }
    }
}

/// A phone ↔ user-id pairing of one tenant, as a body teaches it.
type Pair = (TenantId, PhoneNumber, UserId);

/// Where a body marks the pairings it wrote: its own set, for the events applied one at a
/// time ([`Pairs`]), or one set shared by the statuses in flight ([`SharedPairs`]). Marking
/// and unmarking never wait: a shared set's lock is held only for the call, never across a
/// write.
trait PairMarks {
    /// Marks `pair` as written; `false` when it was marked already.
    fn mark(&mut self, pair: Pair) -> bool;
    /// Takes back a mark whose pairing was not written after all.
    fn unmark(&mut self, pair: &Pair);
}

impl PairMarks for HashSet<Pair> {
    fn mark(&mut self, pair: Pair) -> bool {
        self.insert(pair)
    }

    fn unmark(&mut self, pair: &Pair) {
        self.remove(pair);
    }
}

impl PairMarks for &SharedPairs {
    fn mark(&mut self, pair: Pair) -> bool {
        self.set().insert(pair)
    }

    fn unmark(&mut self, pair: &Pair) {
        self.set().remove(pair);
    }
}

/// Writes the pairing of `phone` and `user_id` for `tenant` once per body (Meta repeats it on
/// every status of a message): marked before it is written, so two statuses in flight of
/// the same user write it once, and unmarked again when it is not written, so the next event
/// naming it tries again. A closed tenant learns no more pairings (a status of its messages
/// may still come until the close-out): a pairing written now would outlive its retention;
/// its status is read only when a pairing is about to be written (the warm-cached access
/// read). A failure is the event's, which then counts as an error (Meta sends the body
/// again).
async fn learn_pairing_once(
    marks: &mut impl PairMarks,
    deps: &Deps,
    tenant: &TenantId,
    phone: &Option<PhoneNumber>,
    user_id: &Option<UserId>,
) -> Result<(), ServiceError> {
    let (Some(p), Some(u)) = (phone, user_id) else {
        return Ok(());
    };
    if !marks.mark((tenant.clone(), p.clone(), u.clone())) {
        return Ok(());
    }
    let written = async {
        if !deps.tenant_is_open(tenant).await? {
            return Ok(false);
        }
        super::contacts::learn_pairing(deps, tenant, p, u).await?;
        Ok::<_, ServiceError>(true)
    }
    .await;
    if !matches!(written, Ok(true)) {
        // Rare (a closed tenant, a failure): the pair made again rather than kept.
        marks.unmark(&(tenant.clone(), p.clone(), u.clone()));
    }
    written.map(|_| ())
}

/// [`Pairs`] shared by statuses applied at once ([`learn_pairing_once`] on one locked set).
struct SharedPairs(std::sync::Mutex<HashSet<Pair>>);

impl SharedPairs {
    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<Pair>> {
        // A panic while it was held left a set of pairings still true.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn into_inner(self) -> HashSet<Pair> {
        self.0
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn learn(
        &self,
        deps: &Deps,
        tenant: &TenantId,
        phone: &Option<PhoneNumber>,
        user_id: &Option<UserId>,
    ) -> Result<(), ServiceError> {
        learn_pairing_once(&mut { self }, deps, tenant, phone, user_id).await
    }
}

/// Phone ↔ user-id pairings already written for this body ([`learn_pairing_once`]).
#[derive(Default)]
struct Pairs(HashSet<Pair>);

impl Pairs {
    async fn learn(
        &mut self,
        deps: &Deps,
        tenant: &TenantId,
        phone: &Option<PhoneNumber>,
        user_id: &Option<UserId>,
    ) -> Result<(), ServiceError> {
        learn_pairing_once(&mut self.0, deps, tenant, phone, user_id).await
    }
}

/// Meta restricted the account's business-initiated messages, or disabled or banned the
/// account (or is about to): pause every tenant on that WABA, as Meta would refuse their
/// sends anyway. A restriction of something else (customer-initiated messages, adding
/// numbers) is logged, and pauses nothing. A reinstatement is left to the operator (who
/// resumes the tenant). Answers how many tenants were paused.
async fn account_update(deps: &Deps, update: &AccountUpdate) -> Result<usize, ServiceError> {
    let restrictions = || {
        update
            .restrictions
            .iter()
            .map(|r| match &r.expiration {
                Some(until) => format!("{} until {until}", r.kind),
                None => r.kind.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !update.stops_sending() || update.waba_id.is_empty() {
        if update.restrictions.is_empty() {
            tracing::debug!(event = %update.event, "account update needs no action");
        } else {
            tracing::warn!(
                waba_id = %update.waba_id, event = %update.event, restrictions = %restrictions(),
                "meta restricted the account, not its business-initiated messages: no tenant paused"
            );
        }
        return Ok(0);
    }
    let tenants = deps.tenants.tenants_by_waba(&update.waba_id).await?;
    let reason = match &update.ban_state {
        Some(b) => format!("meta account_update: {} ({b})", update.event),
        None if update.restrictions.is_empty() => format!("meta account_update: {}", update.event),
        None => format!("meta account_update: {} ({})", update.event, restrictions()),
    };
    // Each written before the webhook is acknowledged: a failure answers 500, so Meta
    // delivers it again. A tenant suspended already is left as it is (no second
    // suspension, no second audit event), and one whose status changed after Meta's event
    // (the operator resumed it, having fixed the cause) is not suspended again by the
    // event delivered late or again.
    let mut paused = 0;
    for t in &tenants {
        // Read, decide and suspend on the status as read (a conditional write); a status
        // changed between the read and the write is read again and decided again, so a
        // resume older than Meta's event does not make its ban be dropped.
        for _ in 0..3 {
            let Some(tenant) = deps.tenants.get_tenant(t).await? else {
                break;
            };
            let resumed_since = matches!(
                (update.meta_time, tenant.status_changed_at),
                (Some(at), Some(changed)) if changed.timestamp() > at
            );
            if tenant.status != crate::ports::TenantStatus::Active || resumed_since {
                break;
            }
            if super::accounts::try_suspend_for_meta(
                deps,
                t,
                &reason,
                "webhook",
                tenant.status_changed_at,
            )
            .await?
            {
                paused += 1;
                break;
            }
        }
    }
    Ok(paused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the webhook answered before its body was written by hand.
    fn serde_body(summary: &WebhookSummary) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct Received<'a> {
            received: bool,
            summary: &'a WebhookSummary,
        }
        serde_json::to_vec(&Received {
            received: true,
            summary,
        })
        .unwrap()
    }

    #[test]
    fn the_usual_answer_is_the_documented_json() {
        let one = WebhookSummary {
            applied: 1,
            ..Default::default()
        };
        assert_eq!(
            String::from_utf8(one.received_body()).unwrap(),
            r#"{"received":true,"summary":{"applied":1,"ignored":0,"unknown":0,"skipped":0,"errors":0}}"#
        );
    }

    proptest! {
        #[test]
        fn the_hand_written_answer_is_byte_for_byte_what_serde_json_writes(
            applied in any::<usize>(),
            ignored in any::<usize>(),
            unknown in 0usize..1000,
            skipped in any::<usize>(),
            errors in 0usize..3,
        ) {
            let s = WebhookSummary { applied, ignored, unknown, skipped, errors };
            prop_assert_eq!(s.received_body(), serde_body(&s));
        }
    }
}

#[cfg(test)]
mod future_size {
    /// The webhook boxes the applying future, which copies all of it, whatever state it is
    /// in, into memory not yet cached: each rare path's future is boxed where it is awaited
    /// so that a notification's stays the size of a status's (3.6 KB before, 1.4 KB after,
    /// in a debug build; BENCHMARKS.md "Webhook side by side", stop 27). Bytes, not time:
    /// the same on every machine with this toolchain.
    #[test]
    fn a_notification_s_future_is_not_made_as_large_as_its_rarest_path() {
        let deps = crate::wiring::memory_deps(
            crate::config::Settings::default(),
            std::sync::Arc::new(crate::ports::SystemClock),
        )
        .expect("memory deps");
        let size = std::mem::size_of_val(&super::apply(&deps, b""));
        assert!(size <= 2048, "webhook::apply's future is {size} bytes");
    }
}
