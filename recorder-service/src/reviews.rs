//! Human approvals and just-in-time grants, hosted by the recorder.
//!
//! - Internal routes (`/internal/v1/...`) answer the gateway's filter, authenticated by the
//!   service token only Envoy and the recorder hold: find or open the review for a
//!   fingerprint, wait for its decision (long poll), tell whether a user has an active grant.
//! - Approver routes (`/v1/reviews`, `/v1/grants`) take OIDC tokens: approvers (one group)
//!   list and decide, nobody decides their own request; anyone with a valid token, even
//!   outside the allowed groups, may ask for a grant and see their own.
//! - Reviews and grants are documents beside the chain; every request, decision and
//!   revocation is also appended to the chain as an event record (who, when, why), so
//!   `verify` covers them and a session's replay shows them in place.
//!
//! Read-modify-write of a document runs under one lock per recorder process; several
//! recorders sharing PostgreSQL could race on the same review (last write wins).

use crate::api::{Api, ApiError, Caller};
use crate::record::{EnvoyFields, StoredRecord};
use crate::store::Document;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use scrim_core::audit::{AuditRecord, AuditUser, Decision};
use scrim_core::review::{ReviewDecision, ReviewRequest, ReviewState};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Shortest grant that may be asked for, in seconds.
const MIN_GRANT_SECONDS: u64 = 60;
/// Longest a long poll waits, in milliseconds.
const MAX_WAIT_MS: u64 = 60_000;

/// A review as stored and answered. `status` is stored as pending, approved or rejected;
/// `expired` is computed when answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Review {
    pub id: String,
    pub status: ReviewState,
    pub fingerprint: String,
    pub rule: String,
    pub rule_message: String,
    pub user: AuditUser,
    pub session_id: String,
    pub exchange_id: String,
    pub excerpt: String,
    pub approvals_required: u32,
    pub ttl_seconds: u64,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub decisions: Vec<ReviewDecision>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantState {
    Pending,
    Active,
    Rejected,
    Revoked,
    Expired,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Grant {
    pub id: String,
    pub status: GrantState,
    pub user: AuditUser,
    pub reason: String,
    pub duration_seconds: u64,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub decisions: Vec<ReviewDecision>,
}

impl Review {
    /// As of `now_ms`: a decided review whose time has run out is expired.
    fn at(mut self, now_ms: i64) -> Review {
        if self.expires_at_ms.is_some_and(|e| e <= now_ms) {
            self.status = ReviewState::Expired;
        }
        self
    }
}

impl Grant {
    fn at(mut self, now_ms: i64) -> Grant {
        if self.status == GrantState::Active && self.expires_at_ms.is_some_and(|e| e <= now_ms) {
            self.status = GrantState::Expired;
        }
        self
    }
}

/// A fresh id: unique, not secret.
fn new_id(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = Sha256::new();
    h.update(std::process::id().to_le_bytes());
    h.update(N.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    h.update(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .to_le_bytes(),
    );
    let hex: String = h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{hex}")
}

fn user_of(caller: &Caller) -> AuditUser {
    AuditUser {
        subject: caller.subject.clone(),
        email: caller.email.clone(),
        issuer: caller.issuer.clone(),
        groups: caller.groups.clone(),
    }
}

fn is_own(caller: &Caller, user: &AuditUser) -> bool {
    caller.subject == user.subject && caller.issuer == user.issuer
}

fn to_document<T: Serialize>(kind: &str, id: &str, key: &str, user: &AuditUser, created_ms: i64, body: &T) -> Document {
    Document {
        kind: kind.into(),
        id: id.into(),
        key: key.into(),
        subject: user.subject.clone(),
        issuer: user.issuer.clone(),
        created_ms,
        body: serde_json::to_string(body).expect("documents serialise"),
    }
}

fn from_document<T: for<'de> Deserialize<'de>>(doc: &Document) -> Result<T, ApiError> {
    serde_json::from_str(&doc.body).map_err(|e| ApiError::Store(crate::store::StoreError::Corrupt(format!("{} {}: {e}", doc.kind, doc.id))))
}

/// The event record appended to the chain for a request or decision.
fn event(kind: &str, actor: AuditUser, session_id: &str, path: &str, detail: serde_json::Value, now_ms: i64) -> StoredRecord {
    let id = new_id("evt");
    StoredRecord {
        record: AuditRecord {
            user: Some(actor),
            reason: Some(kind.into()),
            request: Some(detail),
            ..AuditRecord::new(id.clone(), session_id, "POST", path, Decision::Allowed)
        },
        envoy: EnvoyFields { start_time_ms: Some(now_ms), request_id: Some(id), ..Default::default() },
    }
}

/// Writes the document and its event in one go (event first: a decision is never visible
/// without its trace in the chain).
async fn save(api: &Api, doc: Document, event: StoredRecord) -> Result<(), ApiError> {
    api.pool()
        .run(move |s| {
            s.append(std::slice::from_ref(&event))?;
            s.put_document(&doc)
        })
        .await?;
    api.decided().notify_waiters();
    Ok(())
}

async fn load_review(api: &Api, id: String) -> Result<Option<Review>, ApiError> {
    let doc = api.pool().run(move |s| s.document("review", &id)).await?;
    doc.as_ref().map(from_document).transpose()
}

async fn load_grant(api: &Api, id: String) -> Result<Option<Grant>, ApiError> {
    let doc = api.pool().run(move |s| s.document("grant", &id)).await?;
    doc.as_ref().map(from_document).transpose()
}

/// The internal routes (service token) and the approver routes (OIDC, guarded by the API's
/// query log like every `/v1` route).
pub fn internal_routes() -> Router<Api> {
    Router::new()
        .route("/internal/v1/reviews", post(open_review))
        .route("/internal/v1/reviews/{id}", get(poll_review))
        .route("/internal/v1/grants/active", get(active_grant))
}

pub fn approver_routes() -> Router<Api> {
    Router::new()
        .route("/v1/reviews", get(list::<Review>))
        .route("/v1/reviews/{id}", get(show::<Review>))
        .route("/v1/reviews/{id}/approve", post(approve_review))
        .route("/v1/reviews/{id}/reject", post(reject_review))
        .route("/v1/grants", get(list::<Grant>).post(request_grant))
        .route("/v1/grants/{id}", get(show::<Grant>))
        .route("/v1/grants/{id}/approve", post(approve_grant))
        .route("/v1/grants/{id}/reject", post(reject_grant))
        .route("/v1/grants/{id}/revoke", post(revoke_grant))
}

/// The refusal of an internal call without the service token (404 when none is configured,
/// so the routes do not exist for anyone); `None` lets it through.
fn refuse_unless_service(api: &Api, headers: &HeaderMap) -> Option<Response> {
    let Some(expected) = api.service_token() else {
        return Some(ApiError::NotFound("route").into_response());
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Equal-length comparison of digests: the time taken says nothing about the token.
    let digest = |s: &str| Sha256::digest(s.as_bytes());
    let (a, b) = (digest(given), digest(expected));
    if a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) != 0 {
        return Some(ApiError::Auth(scrim_core::auth::AuthError::BadSignature).into_response());
    }
    None
}

async fn open_review(State(api): State<Api>, headers: HeaderMap, Json(req): Json<ReviewRequest>) -> Response {
    if let Some(refusal) = refuse_unless_service(&api, &headers) {
        return refusal;
    }
    let result: Result<Review, ApiError> = async {
        if req.fingerprint.len() != 64 || req.approvals_required == 0 {
            return Err(ApiError::BadRequest("fingerprint must be 64 hex digits, approvals_required at least 1".into()));
        }
        let _guard = api.write_lock().await;
        let now = crate::time::now_ms();
        let key = req.fingerprint.clone();
        let found = api.pool().run(move |s| s.documents("review", Some(&key), None)).await?;
        if let Some(latest) = found.first() {
            let review: Review = from_document(latest)?;
            let review = review.at(now);
            if review.status != ReviewState::Expired {
                return Ok(review);
            }
        }
        let review = Review {
            id: new_id("rv"),
            status: ReviewState::Pending,
            fingerprint: req.fingerprint,
            rule: req.rule,
            rule_message: req.rule_message,
            user: req.user,
            session_id: req.session_id,
            exchange_id: req.exchange_id,
            excerpt: scrim_core::review::excerpt(&req.excerpt),
            approvals_required: req.approvals_required,
            ttl_seconds: req.ttl_seconds,
            created_at_ms: now,
            expires_at_ms: None,
            decisions: Vec::new(),
        };
        let doc = to_document("review", &review.id, &review.fingerprint, &review.user, now, &review);
        let ev = event(
            "review.requested",
            review.user.clone(),
            &review.session_id,
            "/internal/v1/reviews",
            json!({"review": review.id, "rule": review.rule, "exchange_id": review.exchange_id, "excerpt": review.excerpt}),
            now,
        );
        save(&api, doc, ev).await?;
        if let Some(notifier) = api.notifier() {
            notifier.review_requested(&review);
        }
        Ok(review)
    }
    .await;
    match result {
        Ok(review) => Json(review).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct WaitParams {
    #[serde(default)]
    wait_ms: u64,
}

async fn poll_review(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(p): Query<WaitParams>,
) -> Response {
    if let Some(refusal) = refuse_unless_service(&api, &headers) {
        return refusal;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(p.wait_ms.min(MAX_WAIT_MS));
    loop {
        // Registered before the read, so a decision landing in between still wakes us.
        let decided = api.decided().notified();
        let review = match load_review(&api, id.clone()).await {
            Ok(Some(r)) => r.at(crate::time::now_ms()),
            Ok(None) => return ApiError::NotFound("review").into_response(),
            Err(e) => return e.into_response(),
        };
        if review.status != ReviewState::Pending || tokio::time::Instant::now() >= deadline {
            return Json(review).into_response();
        }
        if tokio::time::timeout_at(deadline, decided).await.is_err() {
            return Json(review).into_response();
        }
    }
}

#[derive(Deserialize)]
struct GrantQuery {
    issuer: String,
    sub: String,
}

async fn active_grant(State(api): State<Api>, headers: HeaderMap, Query(q): Query<GrantQuery>) -> Response {
    if let Some(refusal) = refuse_unless_service(&api, &headers) {
        return refusal;
    }
    let sub = q.sub.clone();
    let found = match api.pool().run(move |s| s.documents("grant", None, Some(&sub))).await {
        Ok(found) => found,
        Err(e) => return ApiError::Store(e).into_response(),
    };
    let now = crate::time::now_ms();
    for doc in found.iter().filter(|d| d.issuer == q.issuer) {
        let Ok(grant) = from_document::<Grant>(doc) else { continue };
        let grant = grant.at(now);
        if grant.status == GrantState::Active {
            return Json(json!({"active": true, "id": grant.id, "expires_at_ms": grant.expires_at_ms})).into_response();
        }
    }
    Json(json!({"active": false})).into_response()
}

#[derive(Deserialize)]
struct ListParams {
    status: Option<String>,
}

/// What listing and showing needs of a review or a grant.
trait Decidable: Serialize + for<'de> Deserialize<'de> + Send + 'static {
    const KIND: &'static str;
    /// As of `now_ms` (expiry applied).
    fn at(self, now_ms: i64) -> Self;
    fn owner(&self) -> &AuditUser;
    fn status_name(&self) -> serde_json::Value;
}

impl Decidable for Review {
    const KIND: &'static str = "review";
    fn at(self, now_ms: i64) -> Self {
        Review::at(self, now_ms)
    }
    fn owner(&self) -> &AuditUser {
        &self.user
    }
    fn status_name(&self) -> serde_json::Value {
        serde_json::to_value(self.status).unwrap_or_default()
    }
}

impl Decidable for Grant {
    const KIND: &'static str = "grant";
    fn at(self, now_ms: i64) -> Self {
        Grant::at(self, now_ms)
    }
    fn owner(&self) -> &AuditUser {
        &self.user
    }
    fn status_name(&self) -> serde_json::Value {
        serde_json::to_value(self.status).unwrap_or_default()
    }
}

/// Newest first; approvers see all, others their own; narrowed to `status` when given.
async fn list<T: Decidable>(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Query(p): Query<ListParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let approver = api.is_approver(&caller);
    let subject = (!approver).then(|| caller.subject.clone());
    let docs = api.pool().run(move |s| s.documents(T::KIND, None, subject.as_deref())).await?;
    let now = crate::time::now_ms();
    let mut data = Vec::new();
    for doc in &docs {
        let item = from_document::<T>(doc)?.at(now);
        let visible = approver || is_own(&caller, item.owner());
        if visible && p.status.as_deref().is_none_or(|s| item.status_name() == s) {
            data.push(item);
        }
    }
    Ok(Json(json!({"data": data})))
}

/// One review or grant; someone else's is "not found" to a non-approver.
async fn show<T: Decidable>(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<T>, ApiError> {
    let doc = api.pool().run(move |s| s.document(T::KIND, &id)).await?;
    let item: T = doc.as_ref().map(from_document).transpose()?.ok_or(ApiError::NotFound(T::KIND))?;
    if !api.is_approver(&caller) && !is_own(&caller, item.owner()) {
        return Err(ApiError::NotFound(T::KIND));
    }
    Ok(Json(item.at(crate::time::now_ms())))
}

#[derive(Deserialize)]
struct ReasonBody {
    reason: String,
}

fn decision_of(caller: &Caller, decision: &str, reason: String, now: i64) -> ReviewDecision {
    ReviewDecision {
        approver: caller.subject.clone(),
        approver_issuer: caller.issuer.clone(),
        decision: decision.into(),
        reason,
        at_ms: now,
    }
}

/// Checks an approver may decide something belonging to `owner` with `reason`.
fn may_decide(api: &Api, caller: &Caller, owner: &AuditUser, reason: &str) -> Result<(), ApiError> {
    if !api.is_approver(caller) {
        return Err(ApiError::Forbidden("only members of the approver group may decide"));
    }
    if is_own(caller, owner) {
        return Err(ApiError::Forbidden("nobody decides their own request"));
    }
    if reason.trim().is_empty() {
        return Err(ApiError::BadRequest("a reason is required".into()));
    }
    Ok(())
}

async fn decide_review(api: Api, caller: Caller, id: String, approve: bool, reason: String) -> Result<Json<Review>, ApiError> {
    let _guard = api.write_lock().await;
    let now = crate::time::now_ms();
    let mut review = load_review(&api, id).await?.ok_or(ApiError::NotFound("review"))?.at(now);
    may_decide(&api, &caller, &review.user, &reason)?;
    if review.status != ReviewState::Pending {
        return Err(ApiError::Conflict(format!("review {} is {:?}, not pending", review.id, review.status).to_lowercase()));
    }
    let already = review
        .decisions
        .iter()
        .any(|d| d.approver == caller.subject && d.approver_issuer == caller.issuer && d.decision == "approve");
    let kind = if approve {
        if !already {
            review.decisions.push(decision_of(&caller, "approve", reason.clone(), now));
        }
        let approvals = review.decisions.iter().filter(|d| d.decision == "approve").count();
        if approvals >= review.approvals_required as usize {
            review.status = ReviewState::Approved;
            review.expires_at_ms = Some(now + review.ttl_seconds as i64 * 1000);
            "review.approved"
        } else {
            "review.approval_added"
        }
    } else {
        review.decisions.push(decision_of(&caller, "reject", reason.clone(), now));
        review.status = ReviewState::Rejected;
        review.expires_at_ms = Some(now + review.ttl_seconds as i64 * 1000);
        "review.rejected"
    };
    let path = format!("/v1/reviews/{}/{}", review.id, if approve { "approve" } else { "reject" });
    let doc = to_document("review", &review.id, &review.fingerprint, &review.user, review.created_at_ms, &review);
    let ev = event(
        kind,
        user_of(&caller),
        &review.session_id,
        &path,
        json!({"review": review.id, "rule": review.rule, "requester": review.user.subject, "reason": reason}),
        now,
    );
    save(&api, doc, ev).await?;
    Ok(Json(review))
}

async fn approve_review(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Json(body): Json<ReasonBody>,
) -> Result<Json<Review>, ApiError> {
    decide_review(api, caller, id, true, body.reason).await
}

async fn reject_review(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Json(body): Json<ReasonBody>,
) -> Result<Json<Review>, ApiError> {
    decide_review(api, caller, id, false, body.reason).await
}

#[derive(Deserialize)]
struct GrantRequest {
    duration_seconds: u64,
    reason: String,
}

/// The session id grant events are filed under, so a user's grants replay together.
fn grant_session(user: &AuditUser) -> String {
    format!("grants:{}", user.subject)
}

async fn request_grant(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Json(req): Json<GrantRequest>,
) -> Result<Json<Grant>, ApiError> {
    let max = api.max_grant_seconds();
    if !(MIN_GRANT_SECONDS..=max).contains(&req.duration_seconds) {
        return Err(ApiError::BadRequest(format!("duration_seconds must be between {MIN_GRANT_SECONDS} and {max}")));
    }
    if req.reason.trim().is_empty() {
        return Err(ApiError::BadRequest("a reason is required".into()));
    }
    let now = crate::time::now_ms();
    let user = user_of(&caller);
    let grant = Grant {
        id: new_id("gr"),
        status: GrantState::Pending,
        user: user.clone(),
        reason: req.reason.clone(),
        duration_seconds: req.duration_seconds,
        created_at_ms: now,
        expires_at_ms: None,
        decisions: Vec::new(),
    };
    let doc = to_document("grant", &grant.id, "", &user, now, &grant);
    let ev = event(
        "grant.requested",
        user.clone(),
        &grant_session(&user),
        "/v1/grants",
        json!({"grant": grant.id, "duration_seconds": grant.duration_seconds, "reason": req.reason}),
        now,
    );
    save(&api, doc, ev).await?;
    if let Some(notifier) = api.notifier() {
        notifier.grant_requested(&grant);
    }
    Ok(Json(grant))
}

#[derive(Clone, Copy)]
enum GrantAction {
    Approve,
    Reject,
    Revoke,
}

async fn decide_grant(api: Api, caller: Caller, id: String, action: GrantAction, reason: String) -> Result<Json<Grant>, ApiError> {
    let _guard = api.write_lock().await;
    let now = crate::time::now_ms();
    let mut grant = load_grant(&api, id).await?.ok_or(ApiError::NotFound("grant"))?.at(now);
    may_decide(&api, &caller, &grant.user, &reason)?;
    let (from, to, word, kind) = match action {
        GrantAction::Approve => (GrantState::Pending, GrantState::Active, "approve", "grant.approved"),
        GrantAction::Reject => (GrantState::Pending, GrantState::Rejected, "reject", "grant.rejected"),
        GrantAction::Revoke => (GrantState::Active, GrantState::Revoked, "revoke", "grant.revoked"),
    };
    if grant.status != from {
        return Err(ApiError::Conflict(format!("grant {} is {:?}", grant.id, grant.status).to_lowercase()));
    }
    grant.status = to;
    grant.decisions.push(decision_of(&caller, word, reason.clone(), now));
    if let GrantAction::Approve = action {
        grant.expires_at_ms = Some(now + grant.duration_seconds as i64 * 1000);
    }
    if let GrantAction::Revoke = action {
        grant.expires_at_ms = Some(now);
    }
    let doc = to_document("grant", &grant.id, "", &grant.user, grant.created_at_ms, &grant);
    let ev = event(
        kind,
        user_of(&caller),
        &grant_session(&grant.user),
        &format!("/v1/grants/{}/{word}", grant.id),
        json!({"grant": grant.id, "grantee": grant.user.subject, "reason": reason, "expires_at_ms": grant.expires_at_ms}),
        now,
    );
    save(&api, doc, ev).await?;
    Ok(Json(grant))
}

async fn approve_grant(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Json(body): Json<ReasonBody>,
) -> Result<Json<Grant>, ApiError> {
    decide_grant(api, caller, id, GrantAction::Approve, body.reason).await
}

async fn reject_grant(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Json(body): Json<ReasonBody>,
) -> Result<Json<Grant>, ApiError> {
    decide_grant(api, caller, id, GrantAction::Reject, body.reason).await
}

async fn revoke_grant(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Json(body): Json<ReasonBody>,
) -> Result<Json<Grant>, ApiError> {
    decide_grant(api, caller, id, GrantAction::Revoke, body.reason).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> AuditUser {
        AuditUser { subject: "frank".into(), email: None, issuer: "iss".into(), groups: vec![] }
    }

    #[test]
    fn an_active_grant_expires_at_its_time_and_other_states_stay() {
        let grant = Grant {
            id: "gr-1".into(),
            status: GrantState::Active,
            user: user(),
            reason: "r".into(),
            duration_seconds: 60,
            created_at_ms: 0,
            expires_at_ms: Some(60_000),
            decisions: vec![],
        };
        assert_eq!(grant.clone().at(59_999).status, GrantState::Active);
        assert_eq!(grant.clone().at(60_000).status, GrantState::Expired);
        let revoked = Grant { status: GrantState::Revoked, ..grant };
        assert_eq!(revoked.at(120_000).status, GrantState::Revoked);
    }

    #[test]
    fn a_decided_review_expires_and_a_pending_one_does_not() {
        let review = Review {
            id: "rv-1".into(),
            status: ReviewState::Approved,
            fingerprint: "f".repeat(64),
            rule: "r".into(),
            rule_message: "m".into(),
            user: user(),
            session_id: "s".into(),
            exchange_id: "x".into(),
            excerpt: "e".into(),
            approvals_required: 1,
            ttl_seconds: 1,
            created_at_ms: 0,
            expires_at_ms: Some(1_000),
            decisions: vec![],
        };
        assert_eq!(review.clone().at(999).status, ReviewState::Approved);
        assert_eq!(review.clone().at(1_000).status, ReviewState::Expired);
        let pending = Review { status: ReviewState::Pending, expires_at_ms: None, ..review };
        assert_eq!(pending.at(i64::MAX).status, ReviewState::Pending);
    }

    #[test]
    fn ids_are_unique() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_id("rv")).collect();
        assert_eq!(ids.len(), 1000);
    }
}
