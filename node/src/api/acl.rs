//! Access control: tokens and policies (`/v1/acl/...`).
//!
//! A token's secret is shown once, in the answer that creates it; the cluster keeps only its
//! SHA-256. Reads are linearizable (a token made on any node is listed right after).
//! `write` on `acl` is as good as a management token: it can grant itself anything.

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use raft::command::{AclCmd, AclResult};
use raft::state::acl::{self, Access, JwtKey, JwtProvider, Policy, Resource, Rule, Token};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{JsonBody, PathParams, St};
use crate::audit::Who;
use crate::auth::{new_accessor_id, new_secret, secret_digest, Caller};
use crate::cluster::now_ms;
use crate::error::{ApiError, ApiResult, BadRequest, ErrorBody, NotFound, Unsettled};
use crate::service::propose;
use serde_json::json;

/// The `{id}` of a token's routes, as the API reference lists it.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct AccessorId {
    /// accessor id
    #[allow(dead_code)]
    id: String,
}

/// The `{name}` of a policy's routes, as the API reference lists it.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct PolicyName {
    /// policy name
    #[allow(dead_code)]
    name: String,
}

/// The `{name}` of a JWT provider's routes, as the API reference lists it.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct ProviderName {
    /// provider name
    #[allow(dead_code)]
    name: String,
}

/// Longest lifetime of a token: 10 years.
pub const MAX_TOKEN_TTL_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

/// `POST /v1/acl/tokens` body.
#[derive(Debug, Default, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    #[serde(default)]
    pub description: String,
    /// Names of existing policies.
    #[serde(default)]
    pub policies: Vec<String>,
    /// Every right, policies aside.
    #[serde(default)]
    pub management: bool,
    /// The token expires this long after it is made; absent: never.
    pub ttl_ms: Option<u64>,
}

/// `PATCH /v1/acl/tokens/{id}` body: the fields given change.
#[derive(Debug, Default, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenUpdate {
    pub description: Option<String>,
    pub policies: Option<Vec<String>>,
    /// A new lifetime from now; 0 makes the token never expire.
    pub ttl_ms: Option<u64>,
}

/// A token as listed: everything but its secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    pub accessor_id: String,
    pub description: String,
    pub management: bool,
    pub policies: Vec<String>,
    /// ms since the Unix epoch; absent: never expires.
    pub expires_at_ms: Option<u64>,
    pub created_at_ms: u64,
}

/// A token just made, with its secret (shown this once).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    /// Send as `Authorization: Bearer <secret>`.
    pub secret: String,
    #[serde(flatten)]
    pub token: TokenView,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenView>,
}

/// One rule of a policy.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleView {
    /// kv, locks, semaphores, sessions (named by user), cache, queues (jobs named by their
    /// queue), channels, cluster or acl.
    #[schema(example = "kv")]
    pub resource: String,
    /// Exactly this name (exclusive with prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Every name starting with this (exclusive with name); neither: every name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// deny, read or write; on channels also publish, subscribe, history or presence.
    #[schema(example = "write")]
    pub access: String,
}

/// `PUT /v1/acl/policies/{name}` body.
#[derive(Debug, Default, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySet {
    #[serde(default)]
    pub description: String,
    pub rules: Vec<RuleView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PolicyView {
    pub name: String,
    pub description: String,
    pub rules: Vec<RuleView>,
    pub created_at_ms: u64,
    pub modified_at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PolicyList {
    pub policies: Vec<PolicyView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AclDeleted {
    pub deleted: bool,
}

impl From<&Token> for TokenView {
    fn from(t: &Token) -> Self {
        TokenView {
            accessor_id: t.accessor_id.clone(),
            description: t.description.clone(),
            management: t.management,
            policies: t.policies.clone(),
            expires_at_ms: t.expires_at_ms,
            created_at_ms: t.created_at_ms,
        }
    }
}

impl From<&Policy> for PolicyView {
    fn from(p: &Policy) -> Self {
        PolicyView {
            name: p.name.clone(),
            description: p.description.clone(),
            rules: p
                .rules
                .iter()
                .map(|r| RuleView {
                    resource: r.resource.as_str().into(),
                    name: r.name.clone(),
                    prefix: r.prefix.clone(),
                    access: r.access.as_str().into(),
                })
                .collect(),
            created_at_ms: p.created_at_ms,
            modified_at_ms: p.modified_at_ms,
        }
    }
}

fn rule(i: usize, r: RuleView) -> ApiResult<Rule> {
    let resource = Resource::parse(&r.resource).ok_or_else(|| {
        let all: Vec<&str> = Resource::ALL.iter().map(|r| r.as_str()).collect();
        ApiError::bad_request(format!(
            "rule {i}: resource must be one of {}, not {:?}",
            all.join(", "),
            r.resource
        ))
    })?;
    let access = Access::parse(&r.access).ok_or_else(|| {
        let all: Vec<&str> = Access::ALL.iter().map(|a| a.as_str()).collect();
        ApiError::bad_request(format!(
            "rule {i}: access must be one of {}, not {:?}",
            all.join(", "),
            r.access
        ))
    })?;
    Ok(Rule {
        resource,
        name: r.name,
        prefix: r.prefix,
        access,
    })
}

fn expiry(ttl_ms: u64) -> ApiResult<u64> {
    if ttl_ms == 0 || ttl_ms > MAX_TOKEN_TTL_MS {
        return Err(ApiError::bad_request(format!(
            "ttl_ms must be between 1 and {MAX_TOKEN_TTL_MS}"
        )));
    }
    Ok(now_ms().saturating_add(ttl_ms))
}

/// `conflict` of a token's delete: it is the last management token.
#[derive(utoipa::IntoResponses)]
pub enum LastManagementToken {
    #[response(status = 409, description = "conflict: the last management token")]
    LastManagement(ErrorBody),
}

/// `conflict` of a policy's delete: tokens still carry it.
#[derive(utoipa::IntoResponses)]
pub enum PolicyInUse {
    #[response(
        status = 409,
        description = "conflict: tokens still carry it (tokens lists some)"
    )]
    InUse(ErrorBody),
}

/// The answer of an ACL write that is not the one asked for.
fn refused(r: AclResult) -> ApiError {
    match r {
        AclResult::NotFound => ApiError::not_found("no such token or policy"),
        AclResult::Exists => ApiError::conflict("a token with this id already exists"),
        AclResult::InUse(tokens) => ApiError::conflict(format!(
            "the policy is still given to tokens {}: take it from them first",
            tokens.join(", ")
        ))
        .with("tokens", tokens),
        AclResult::LastManagement => {
            ApiError::conflict("this is the last management token: make another before deleting it")
        }
        AclResult::Invalid(m) => ApiError::bad_request(m),
        other => ApiError::new(
            crate::error::ErrorCode::Internal,
            format!("unexpected answer {other:?}"),
        ),
    }
}

async fn acl_write(st: &super::AppState, cmd: AclCmd) -> ApiResult<AclResult> {
    Ok(propose(&st.cluster, cmd, None).await?)
}

/// Proposes the delete `cmd` and, once applied, records `event` with `detail` in the audit log.
async fn acl_delete(
    st: &super::AppState,
    who: &Who,
    cmd: AclCmd,
    event: &str,
    detail: serde_json::Value,
) -> ApiResult<Json<AclDeleted>> {
    match acl_write(st, cmd).await? {
        AclResult::Deleted => {
            who.record(&st.cluster, event, detail);
            Ok(Json(AclDeleted { deleted: true }))
        }
        other => Err(refused(other)),
    }
}

/// What `read` finds in the access-control state, read after a barrier (linearizable).
async fn acl_read<T>(st: &super::AppState, read: impl FnOnce(&acl::Acl) -> T) -> ApiResult<T> {
    st.cluster.read_barrier().await?;
    Ok(read(st.cluster.state().acl()))
}

/// The one object `find` finds in the access-control state, read as [`acl_read`] reads;
/// 404 `missing` when there is none.
async fn acl_find<T>(
    st: &super::AppState,
    find: impl FnOnce(&acl::Acl) -> Option<T>,
    missing: &str,
) -> ApiResult<Json<T>> {
    let found = acl_read(st, find).await?;
    found.map(Json).ok_or_else(|| ApiError::not_found(missing))
}

/// Make a token (its secret is shown once, in this answer)
#[utoipa::path(
    post,
    path = "/v1/acl/tokens",
    request_body = TokenCreate,
    responses((status = 201, description = "made", body = TokenCreated), BadRequest, Unsettled)
)]
pub async fn create_token(
    State(st): St,
    who: Who,
    JsonBody(body): JsonBody<TokenCreate>,
) -> ApiResult<Response> {
    let expires_at_ms = body.ttl_ms.map(expiry).transpose()?;
    let secret = new_secret();
    let token = Token {
        accessor_id: new_accessor_id(),
        secret_sha256: secret_digest(&secret),
        description: body.description,
        management: body.management,
        policies: body.policies,
        expires_at_ms,
        created_at_ms: 0,
    };
    match acl_write(&st, AclCmd::TokenCreate(token)).await? {
        AclResult::Token(t) => {
            who.record(&st.cluster, "token_created", json!({"accessor_id": t.accessor_id, "management": t.management, "policies": t.policies}));
            Ok((
                StatusCode::CREATED,
                Json(TokenCreated {
                    secret,
                    token: TokenView::from(t.as_ref()),
                }),
            )
                .into_response())
        }
        other => Err(refused(other)),
    }
}

/// Every token, without secrets
#[utoipa::path(
    get,
    path = "/v1/acl/tokens",
    responses((status = 200, description = "the tokens", body = TokenList), Unsettled)
)]
pub async fn list_tokens(State(st): St) -> ApiResult<Json<TokenList>> {
    let tokens = acl_read(&st, |acl| acl.tokens().map(TokenView::from).collect()).await?;
    Ok(Json(TokenList { tokens }))
}

/// The token of the request (with auth off: a management view named anyone)
#[utoipa::path(
    get,
    path = "/v1/acl/tokens/self",
    responses((status = 200, description = "the caller's token", body = TokenView))
)]
pub async fn token_self(Extension(caller): Extension<Caller>) -> Json<TokenView> {
    Json(match caller {
        Caller::Token(t) => TokenView::from(t.as_ref()),
        Caller::Jwt(j) => TokenView {
            accessor_id: j.actor.clone(),
            description: format!("a JWT of provider {}", j.provider),
            management: false,
            policies: j.policies.clone(),
            expires_at_ms: Some(j.expires_at_ms),
            created_at_ms: 0,
        },
        Caller::Anyone => TokenView {
            accessor_id: "anyone".into(),
            description: "authentication is off (api.insecure_no_auth)".into(),
            management: true,
            policies: Vec::new(),
            expires_at_ms: None,
            created_at_ms: 0,
        },
    })
}

/// A token by accessor id, without its secret
#[utoipa::path(
    get,
    path = "/v1/acl/tokens/{id}",
    params(AccessorId),
    responses((status = 200, description = "the token", body = TokenView), NotFound, Unsettled)
)]
pub async fn get_token(
    State(st): St,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<TokenView>> {
    acl_find(
        &st,
        |acl| acl.token(&id).map(|t| TokenView::from(&**t)),
        "no such token",
    )
    .await
}

/// Delete (revoke) a token: it is refused on each node once applied there
#[utoipa::path(
    delete,
    path = "/v1/acl/tokens/{id}",
    params(AccessorId),
    responses((status = 200, description = "deleted", body = AclDeleted), LastManagementToken, NotFound, Unsettled)
)]
pub async fn delete_token(
    State(st): St,
    who: Who,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<AclDeleted>> {
    let detail = json!({"accessor_id": id});
    let cmd = AclCmd::TokenDelete { accessor_id: id };
    acl_delete(&st, &who, cmd, "token_deleted", detail).await
}

/// Change a token's description, policies or lifetime
#[utoipa::path(
    patch,
    path = "/v1/acl/tokens/{id}",
    params(AccessorId),
    request_body = TokenUpdate,
    responses((status = 200, description = "the token as changed", body = TokenView), BadRequest, NotFound, Unsettled)
)]
pub async fn update_token(
    State(st): St,
    who: Who,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody<TokenUpdate>,
) -> ApiResult<Json<TokenView>> {
    let expires_at_ms = match body.ttl_ms {
        None => None,
        Some(0) => Some(None),
        Some(ttl) => Some(Some(expiry(ttl)?)),
    };
    let cmd = AclCmd::TokenUpdate {
        accessor_id: id,
        description: body.description,
        policies: body.policies,
        expires_at_ms,
    };
    match acl_write(&st, cmd).await? {
        AclResult::Token(t) => {
            who.record(
                &st.cluster,
                "token_updated",
                json!({"accessor_id": t.accessor_id, "policies": t.policies}),
            );
            Ok(Json(TokenView::from(t.as_ref())))
        }
        other => Err(refused(other)),
    }
}

/// Every policy
#[utoipa::path(
    get,
    path = "/v1/acl/policies",
    responses((status = 200, description = "the policies", body = PolicyList), Unsettled)
)]
pub async fn list_policies(State(st): St) -> ApiResult<Json<PolicyList>> {
    let policies = acl_read(&st, |acl| acl.policies().map(PolicyView::from).collect()).await?;
    Ok(Json(PolicyList { policies }))
}

/// A policy
#[utoipa::path(
    get,
    path = "/v1/acl/policies/{name}",
    params(PolicyName),
    responses((status = 200, description = "the policy", body = PolicyView), NotFound, Unsettled)
)]
pub async fn get_policy(
    State(st): St,
    PathParams(name): PathParams<String>,
) -> ApiResult<Json<PolicyView>> {
    acl_find(
        &st,
        |acl| acl.policy(&name).map(PolicyView::from),
        "no such policy",
    )
    .await
}

/// Make or replace a policy; tokens that carry it see the change at once
#[utoipa::path(
    put,
    path = "/v1/acl/policies/{name}",
    params(PolicyName),
    request_body = PolicySet,
    responses((status = 200, description = "the policy", body = PolicyView), BadRequest, Unsettled)
)]
pub async fn set_policy(
    State(st): St,
    who: Who,
    PathParams(name): PathParams<String>,
    JsonBody(body): JsonBody<PolicySet>,
) -> ApiResult<Json<PolicyView>> {
    let rules = body
        .rules
        .into_iter()
        .enumerate()
        .map(|(i, r)| rule(i, r))
        .collect::<ApiResult<Vec<_>>>()?;
    let policy = Policy {
        name,
        description: body.description,
        rules,
        created_at_ms: 0,
        modified_at_ms: 0,
    };
    acl::check_policy(&policy).map_err(ApiError::bad_request)?;
    match acl_write(&st, AclCmd::PolicySet(policy)).await? {
        AclResult::Policy(p) => {
            who.record(&st.cluster, "policy_set", json!({"policy": p.name}));
            Ok(Json(PolicyView::from(p.as_ref())))
        }
        other => Err(refused(other)),
    }
}

/// Delete a policy no token carries
#[utoipa::path(
    delete,
    path = "/v1/acl/policies/{name}",
    params(PolicyName),
    responses((status = 200, description = "deleted", body = AclDeleted), PolicyInUse, NotFound, Unsettled)
)]
pub async fn delete_policy(
    State(st): St,
    who: Who,
    PathParams(name): PathParams<String>,
) -> ApiResult<Json<AclDeleted>> {
    let detail = json!({"policy": name});
    let cmd = AclCmd::PolicyDelete { name };
    acl_delete(&st, &who, cmd, "policy_deleted", detail).await
}

/// One event of the audit log, with its place in it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// The event's offset in the stream (`since` for the next page).
    pub offset: u64,
    #[serde(flatten)]
    pub event: crate::audit::AuditEvent,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub events: Vec<AuditEntry>,
    /// The last offset written, 0 when none.
    pub latest_offset: u64,
}

/// Security events after an offset (live: subscribe to the $audit channel on the WebSocket)
#[utoipa::path(
    get,
    path = "/v1/audit",
    description = "Failed authentications and rate-limit trips are counted per source and written every 10 s (count). Kept: the last 100000 events, at most 90 days.",
    params(
        ("since" = Option<u64>, Query, description = "events after this offset (default 0)"),
        ("limit" = Option<u64>, Query, description = "1 to 1000, default 100"),
    ),
    responses((status = 200, description = "the events", body = AuditPage), BadRequest, Unsettled)
)]
pub async fn audit(
    State(st): St,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> ApiResult<Json<AuditPage>> {
    let p = super::params(q, &["since", "limit"])?;
    let since = super::u64_param(&p, "since")?.unwrap_or(0);
    let limit = super::list_limit(&p)?;
    st.cluster.read_barrier().await?;
    let state = st.cluster.state();
    let Some(h) = state.channel_history(crate::audit::AUDIT_CHANNEL, since, limit) else {
        return Ok(Json(AuditPage {
            events: Vec::new(),
            latest_offset: 0,
        }));
    };
    let events = h
        .events
        .iter()
        .filter_map(|e| {
            serde_json::from_str(&e.data).ok().map(|event| AuditEntry {
                offset: e.offset,
                event,
            })
        })
        .collect();
    Ok(Json(AuditPage {
        events,
        latest_offset: h.latest_offset,
    }))
}

/// Default slack on a JWT's `exp` and `nbf`.
pub const JWT_LEEWAY_MS_DEFAULT: u64 = 30_000;
/// Largest slack on a JWT's `exp` and `nbf`.
pub const JWT_LEEWAY_MS_MAX: u64 = 600_000;

/// A key of a JWT provider.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtKeyView {
    /// Matched against the JWT header's kid (a key without one matches a JWT without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// HS256, RS256, ES256 or EdDSA; a JWT whose header names another algorithm is refused.
    #[schema(example = "RS256")]
    pub alg: String,
    /// HS256: the secret in base64 (never shown back); the others: the public key in PEM.
    pub key: String,
}

/// `PUT /v1/acl/jwt/{name}` body.
#[derive(Debug, Default, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtProviderSet {
    /// Required iss.
    pub issuer: Option<String>,
    /// Required in aud.
    pub audience: Option<String>,
    /// Slack on exp and nbf; default 30000, at most 600000.
    pub leeway_ms: Option<u64>,
    #[serde(default)]
    pub keys: Vec<JwtKeyView>,
    /// A JWKS document ({"keys": [...]}), its keys used like keys.
    #[schema(value_type = Option<Object>)]
    pub jwks: Option<serde_json::Value>,
    /// Policies every JWT of this provider carries.
    #[serde(default)]
    pub policies: Vec<String>,
    /// A claim listing channels the JWT may subscribe to (with their history and presence).
    #[schema(example = "channels")]
    pub channels_claim: Option<String>,
}

/// A JWT provider as shown (HS256 secrets hidden).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JwtProviderView {
    pub name: String,
    #[serde(flatten)]
    pub settings: JwtProviderSet,
    pub created_at_ms: u64,
    pub modified_at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JwtProviderList {
    pub providers: Vec<JwtProviderView>,
}

impl From<&JwtProvider> for JwtProviderView {
    fn from(p: &JwtProvider) -> Self {
        JwtProviderView {
            name: p.name.clone(),
            settings: JwtProviderSet {
                issuer: p.issuer.clone(),
                audience: p.audience.clone(),
                leeway_ms: Some(p.leeway_ms),
                keys: p
                    .keys
                    .iter()
                    .map(|k| JwtKeyView {
                        kid: k.kid.clone(),
                        alg: k.alg.clone(),
                        key: if k.alg == "HS256" {
                            "(secret)".into()
                        } else {
                            k.key.clone()
                        },
                    })
                    .collect(),
                jwks: p.jwks.as_ref().and_then(|j| serde_json::from_str(j).ok()),
                policies: p.policies.clone(),
                channels_claim: p.channels_claim.clone(),
            },
            created_at_ms: p.created_at_ms,
            modified_at_ms: p.modified_at_ms,
        }
    }
}

/// Make or replace a JWT provider: JWTs signed by its keys act as tokens
#[utoipa::path(
    put,
    path = "/v1/acl/jwt/{name}",
    description = "A JWT is accepted when a key with its header's kid and alg verifies it, exp is present and not past and nbf not ahead (with leeway_ms), and iss and aud match when set. alg none, and a JWT naming another algorithm than its key, are refused. It carries the provider's policies, and subscribe, history and presence on each channel its channels_claim lists. Replace the provider to rotate keys.",
    params(ProviderName),
    request_body = JwtProviderSet,
    responses((status = 200, description = "the provider", body = JwtProviderView), BadRequest, Unsettled)
)]
pub async fn set_provider(
    State(st): St,
    who: Who,
    PathParams(name): PathParams<String>,
    JsonBody(body): JsonBody<JwtProviderSet>,
) -> ApiResult<Json<JwtProviderView>> {
    let leeway_ms = body.leeway_ms.unwrap_or(JWT_LEEWAY_MS_DEFAULT);
    if leeway_ms > JWT_LEEWAY_MS_MAX {
        return Err(ApiError::bad_request(format!(
            "leeway_ms is at most {JWT_LEEWAY_MS_MAX}"
        )));
    }
    let provider = JwtProvider {
        name,
        issuer: body.issuer,
        audience: body.audience,
        leeway_ms,
        keys: body
            .keys
            .into_iter()
            .map(|k| JwtKey {
                kid: k.kid,
                alg: k.alg,
                key: k.key,
            })
            .collect(),
        jwks: body.jwks.map(|j| j.to_string()),
        policies: body.policies,
        channels_claim: body.channels_claim,
        created_at_ms: 0,
        modified_at_ms: 0,
    };
    crate::jwt::check_provider(&provider).map_err(ApiError::bad_request)?;
    match acl_write(&st, AclCmd::ProviderSet(provider)).await? {
        AclResult::Provider(p) => {
            who.record(&st.cluster, "jwt_provider_set", json!({"provider": p.name}));
            Ok(Json(JwtProviderView::from(p.as_ref())))
        }
        other => Err(refused(other)),
    }
}

/// Every JWT provider (HS256 secrets hidden)
#[utoipa::path(
    get,
    path = "/v1/acl/jwt",
    responses((status = 200, description = "the providers", body = JwtProviderList), Unsettled)
)]
pub async fn list_providers(State(st): St) -> ApiResult<Json<JwtProviderList>> {
    let providers = acl_read(&st, |acl| {
        acl.providers().map(JwtProviderView::from).collect()
    })
    .await?;
    Ok(Json(JwtProviderList { providers }))
}

/// A JWT provider (HS256 secrets hidden)
#[utoipa::path(
    get,
    path = "/v1/acl/jwt/{name}",
    params(ProviderName),
    responses((status = 200, description = "the provider", body = JwtProviderView), NotFound, Unsettled)
)]
pub async fn get_provider(
    State(st): St,
    PathParams(name): PathParams<String>,
) -> ApiResult<Json<JwtProviderView>> {
    let find = |acl: &acl::Acl| acl.provider(&name).map(JwtProviderView::from);
    acl_find(&st, find, "no such JWT provider").await
}

/// Delete a JWT provider: its JWTs are refused from then on
#[utoipa::path(
    delete,
    path = "/v1/acl/jwt/{name}",
    params(ProviderName),
    responses((status = 200, description = "deleted", body = AclDeleted), NotFound, Unsettled)
)]
pub async fn delete_provider(
    State(st): St,
    who: Who,
    PathParams(name): PathParams<String>,
) -> ApiResult<Json<AclDeleted>> {
    let detail = json!({"provider": name});
    let cmd = AclCmd::ProviderDelete { name };
    acl_delete(&st, &who, cmd, "jwt_provider_deleted", detail).await
}

mod typed {
    use reqwest::Method;

    use super::{
        AclDeleted, JwtProviderList, JwtProviderSet, JwtProviderView, PolicyList, PolicySet,
        PolicyView, TokenCreate, TokenCreated, TokenList, TokenUpdate, TokenView,
    };
    use crate::api::client::{segment, ApiResult, Client};

    impl Client {
        pub async fn acl_token_create(&self, req: &TokenCreate) -> ApiResult<TokenCreated> {
            self.post("/v1/acl/tokens", req).await
        }

        pub async fn acl_tokens(&self) -> ApiResult<TokenList> {
            self.get("/v1/acl/tokens").await
        }

        /// The token this client sends.
        pub async fn acl_token_self(&self) -> ApiResult<TokenView> {
            self.get("/v1/acl/tokens/self").await
        }

        pub async fn acl_token(&self, accessor_id: &str) -> ApiResult<TokenView> {
            self.get(&format!("/v1/acl/tokens/{}", segment(accessor_id)))
                .await
        }

        pub async fn acl_token_update(
            &self,
            accessor_id: &str,
            req: &TokenUpdate,
        ) -> ApiResult<TokenView> {
            let path = format!("/v1/acl/tokens/{}", segment(accessor_id));
            self.json(Method::PATCH, &path, req).await
        }

        pub async fn acl_token_delete(&self, accessor_id: &str) -> ApiResult<AclDeleted> {
            self.delete(&format!("/v1/acl/tokens/{}", segment(accessor_id)))
                .await
        }

        pub async fn acl_policies(&self) -> ApiResult<PolicyList> {
            self.get("/v1/acl/policies").await
        }

        pub async fn acl_policy(&self, name: &str) -> ApiResult<PolicyView> {
            self.get(&format!("/v1/acl/policies/{}", segment(name)))
                .await
        }

        pub async fn acl_policy_set(&self, name: &str, req: &PolicySet) -> ApiResult<PolicyView> {
            let path = format!("/v1/acl/policies/{}", segment(name));
            self.json(Method::PUT, &path, req).await
        }

        pub async fn acl_policy_delete(&self, name: &str) -> ApiResult<AclDeleted> {
            self.delete(&format!("/v1/acl/policies/{}", segment(name)))
                .await
        }

        pub async fn acl_jwt_set(
            &self,
            name: &str,
            req: &JwtProviderSet,
        ) -> ApiResult<JwtProviderView> {
            let path = format!("/v1/acl/jwt/{}", segment(name));
            self.json(Method::PUT, &path, req).await
        }

        pub async fn acl_jwt_providers(&self) -> ApiResult<JwtProviderList> {
            self.get("/v1/acl/jwt").await
        }

        pub async fn acl_jwt_delete(&self, name: &str) -> ApiResult<AclDeleted> {
            self.delete(&format!("/v1/acl/jwt/{}", segment(name))).await
        }
    }
}
