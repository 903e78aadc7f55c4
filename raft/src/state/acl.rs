//! Access control: tokens and the policies they carry, replicated so that a change takes effect
//! on every node as soon as it applies the entry.
//!
//! # Model
//! A [`Token`] is known by its public `accessor_id`; its secret is held only as a SHA-256
//! digest (secrets are 256 random bits, so a plain digest cannot be searched). A token is
//! either a management token (every right) or carries named [`Policy`]s. A policy is a list of
//! [`Rule`]s, each naming a [`Resource`] kind, an exact name or a name prefix (neither: every
//! name), and an [`Access`].
//!
//! # Deciding
//! For an operation ([`Op`]) on a name, every rule of the token's policies for that resource
//! that matches the name and says something about the operation is a candidate; the most
//! specific candidate wins (an exact name over any prefix, a longer prefix over a shorter one)
//! and, between equally specific ones, a refusal wins. No candidate: refused.
//!
//! A rule speaks to an operation when it denies (`deny`), grants it, or is a plain `read` asked
//! for a write (it then refuses the write). The channel accesses (`publish`, `subscribe`,
//! `history`, `presence`) speak only to their own operation, so a `publish` rule on `chat/`
//! does not hide a broader `read` rule from a subscribe.
//!
//! # Bounds
//! [`MAX_TOKENS`], [`MAX_POLICIES`], [`MAX_RULES_PER_POLICY`], [`MAX_POLICIES_PER_TOKEN`],
//! [`MAX_ACL_NAME_BYTES`] and [`MAX_DESCRIPTION_BYTES`]; past them a command answers
//! [`AclResult::Invalid`] and nothing is applied.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use storage::Db;

use super::prefixed;
use super::primitive::{put_record, records, Cx, Deadlines, Part, Primitive};

/// `acl:t:<accessor id>` → [`Token`].
const TOKEN_PREFIX: &[u8] = b"acl:t:";
/// `acl:p:<name>` → [`Policy`].
const POLICY_PREFIX: &[u8] = b"acl:p:";
/// `acl:j:<name>` → [`JwtProvider`].
const PROVIDER_PREFIX: &[u8] = b"acl:j:";
/// `m:acl` → whether the bootstrap token was made.
pub(crate) const BOOTSTRAP_KEY: &[u8] = b"m:acl";

pub const MAX_TOKENS: usize = 100_000;
pub const MAX_POLICIES: usize = 10_000;
pub const MAX_RULES_PER_POLICY: usize = 256;
pub const MAX_POLICIES_PER_TOKEN: usize = 64;
/// Longest policy name, rule name or prefix, and accessor id.
pub const MAX_ACL_NAME_BYTES: usize = 512;
pub const MAX_DESCRIPTION_BYTES: usize = 1024;
/// Most JWT providers, and keys of one (static keys; a JWKS document counts as its keys).
pub const MAX_JWT_PROVIDERS: usize = 64;
pub const MAX_JWT_KEYS: usize = 32;
/// Largest key (PEM or secret) or JWKS document, in bytes.
pub const MAX_JWT_KEY_BYTES: usize = 64 * 1024;

/// What a rule is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Resource {
    Kv,
    Locks,
    Semaphores,
    /// Sessions, named by their user.
    Sessions,
    Cache,
    /// Queues, their jobs (named by their queue) and schedules.
    Queues,
    Channels,
    /// Cluster status and operations: members, leadership, snapshots, compaction, backups,
    /// join tokens.
    Cluster,
    /// Tokens and policies (the audit log included).
    Acl,
    /// The service registry: instances, named by their service.
    Services,
    /// The gateway's routes.
    Routes,
}

impl Resource {
    pub const ALL: [Resource; 11] = [
        Resource::Kv,
        Resource::Locks,
        Resource::Semaphores,
        Resource::Sessions,
        Resource::Cache,
        Resource::Queues,
        Resource::Channels,
        Resource::Cluster,
        Resource::Acl,
        Resource::Services,
        Resource::Routes,
    ];

    /// The name of the kind in rules and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Kv => "kv",
            Resource::Locks => "locks",
            Resource::Semaphores => "semaphores",
            Resource::Sessions => "sessions",
            Resource::Cache => "cache",
            Resource::Queues => "queues",
            Resource::Channels => "channels",
            Resource::Cluster => "cluster",
            Resource::Acl => "acl",
            Resource::Services => "services",
            Resource::Routes => "routes",
        }
    }

    pub fn parse(s: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// What a rule allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Access {
    /// Refuses every operation.
    Deny,
    /// Reads; on channels: subscribe, history and presence.
    Read,
    /// Reads and writes; on channels: every operation.
    Write,
    /// Channels only: publish.
    Publish,
    /// Channels only: subscribe.
    Subscribe,
    /// Channels only: read the history.
    History,
    /// Channels only: read who is present.
    Presence,
}

impl Access {
    pub const ALL: [Access; 7] = [
        Access::Deny,
        Access::Read,
        Access::Write,
        Access::Publish,
        Access::Subscribe,
        Access::History,
        Access::Presence,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Access::Deny => "deny",
            Access::Read => "read",
            Access::Write => "write",
            Access::Publish => "publish",
            Access::Subscribe => "subscribe",
            Access::History => "history",
            Access::Presence => "presence",
        }
    }

    pub fn parse(s: &str) -> Option<Access> {
        Access::ALL.into_iter().find(|a| a.as_str() == s)
    }

    fn channel_only(self) -> bool {
        matches!(
            self,
            Access::Publish | Access::Subscribe | Access::History | Access::Presence
        )
    }

    /// Whether a rule with this access speaks to `op`, and what it says.
    fn says(self, op: Op) -> Option<bool> {
        match (self, op) {
            (Access::Deny, _) => Some(false),
            (Access::Write, _) => Some(true),
            (Access::Read, Op::Write | Op::Publish) => Some(false),
            (Access::Read, _) => Some(true),
            (Access::Publish, Op::Publish)
            | (Access::Subscribe, Op::Subscribe)
            | (Access::History, Op::History)
            | (Access::Presence, Op::Presence) => Some(true),
            _ => None,
        }
    }
}

/// An operation asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Publish,
    Subscribe,
    History,
    Presence,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Publish => "publish",
            Op::Subscribe => "subscribe",
            Op::History => "history",
            Op::Presence => "presence",
        }
    }
}

/// One rule of a policy. `name` and `prefix` are exclusive; with neither the rule covers
/// every name of the resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub resource: Resource,
    pub name: Option<String>,
    pub prefix: Option<String>,
    pub access: Access,
}

impl Rule {
    /// How specifically the rule matches `name` (higher is more specific), if it does.
    fn matches(&self, name: &str) -> Option<usize> {
        match (&self.name, &self.prefix) {
            (Some(n), _) => (n == name).then_some(usize::MAX),
            (None, Some(p)) => name.starts_with(p.as_str()).then_some(p.len()),
            (None, None) => Some(0),
        }
    }

    /// Whether the rule covers only names under `prefix`, more narrowly than a rule of
    /// prefix `prefix` would.
    fn inside(&self, prefix: &str) -> bool {
        match (&self.name, &self.prefix) {
            (Some(n), _) => n.starts_with(prefix),
            (None, Some(p)) => p.len() > prefix.len() && p.starts_with(prefix),
            (None, None) => false,
        }
    }
}

/// A named set of rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub name: String,
    pub description: String,
    pub rules: Vec<Rule>,
    /// Replicated clock when first made and when last replaced.
    pub created_at_ms: u64,
    pub modified_at_ms: u64,
}

/// A token; its secret is known only by its SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub accessor_id: String,
    pub secret_sha256: String,
    pub description: String,
    /// Every right, policies aside.
    pub management: bool,
    pub policies: Vec<String>,
    /// The token is refused from this time on (ms since the Unix epoch), and forgotten once
    /// the replicated clock passes it.
    pub expires_at_ms: Option<u64>,
    pub created_at_ms: u64,
}

/// A key a JWT provider's tokens may be signed with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtKey {
    /// Matched against the JWT header's `kid`; a key without one matches a JWT without one.
    pub kid: Option<String>,
    /// `HS256`, `RS256`, `ES256` or `EdDSA`: a JWT whose header names another is refused.
    pub alg: String,
    /// HS256: the secret, base64; the others: the public key, PEM.
    pub key: String,
}

/// Who may sign JWTs that act as tokens, and what those tokens may do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtProvider {
    pub name: String,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Required in `aud`, if set.
    pub audience: Option<String>,
    /// Slack on `exp` and `nbf`.
    pub leeway_ms: u64,
    pub keys: Vec<JwtKey>,
    /// A JWKS document (JSON text), its keys used like `keys`.
    pub jwks: Option<String>,
    /// Policies every JWT of this provider carries.
    pub policies: Vec<String>,
    /// A claim listing channels the JWT may subscribe to (and read the history and presence
    /// of), e.g. `channels`; `None`: none from claims.
    pub channels_claim: Option<String>,
    pub created_at_ms: u64,
    pub modified_at_ms: u64,
}

impl Token {
    /// Whether the token is refused at `now_ms` (ms since the Unix epoch) for its age.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }
}

/// A change to tokens and policies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AclCmd {
    /// The cluster's first management token, made once by the founding node.
    Bootstrap {
        accessor_id: String,
        secret_sha256: String,
    },
    TokenCreate(Token),
    /// Changes the given fields of a token.
    TokenUpdate {
        accessor_id: String,
        description: Option<String>,
        policies: Option<Vec<String>>,
        /// `Some(None)` makes the token never expire.
        expires_at_ms: Option<Option<u64>>,
    },
    TokenDelete {
        accessor_id: String,
    },
    /// Makes or replaces a policy (its `created_at_ms` is kept on a replace).
    PolicySet(Policy),
    PolicyDelete {
        name: String,
    },
    /// Makes or replaces a JWT provider (keys rotate by replacing it).
    ProviderSet(JwtProvider),
    ProviderDelete {
        name: String,
    },
}

/// The result of an [`AclCmd`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AclResult {
    Token(Box<Token>),
    Policy(Box<Policy>),
    Provider(Box<JwtProvider>),
    Deleted,
    NotFound,
    /// A token with this accessor id (or secret) already exists.
    Exists,
    AlreadyBootstrapped,
    /// A policy still named by these tokens (accessor ids, at most 10) cannot be deleted.
    InUse(Vec<String>),
    /// The last management token cannot be deleted.
    LastManagement,
    /// A malformed or over-limit command; nothing was applied.
    Invalid(String),
}

/// What a caller holds: a token's, or a JWT's (its provider's policies and the rules its
/// claims give).
#[derive(Clone, Copy, Debug)]
pub struct Grant<'a> {
    pub management: bool,
    pub policies: &'a [String],
    pub rules: &'a [Rule],
}

impl<'a> Grant<'a> {
    pub fn of(token: &'a Token) -> Self {
        Grant {
            management: token.management,
            policies: &token.policies,
            rules: &[],
        }
    }
}

/// Tokens, policies and JWT providers.
#[derive(Debug, Default)]
pub struct Acl {
    /// Shared with the requests that present them (a request holds its token without a copy).
    tokens: BTreeMap<String, Arc<Token>>,
    /// Secret digest → accessor id.
    by_secret: HashMap<String, String>,
    policies: BTreeMap<String, Policy>,
    providers: BTreeMap<String, JwtProvider>,
    expiry: Deadlines<String>,
    bootstrapped: bool,
    /// Counts applied changes (in memory only): a holder of a token checks it again when this
    /// moves. A state loaded anew starts past every version an earlier load of this process
    /// reached, so a version seen before a snapshot install is never seen again after it.
    version: u64,
}

/// Loads of the access-control state in this process (see [`Acl::version`]).
static LOADS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Part for Acl {
    fn load(db: &Db, _now_ms: u64) -> storage::Result<Self> {
        let mut acl = Acl {
            bootstrapped: db.sm_get(BOOTSTRAP_KEY)?.is_some(),
            version: (LOADS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1) << 32,
            ..Acl::default()
        };
        for (_, t) in records::<Token>(db, TOKEN_PREFIX)? {
            acl.index(t);
        }
        for (name, p) in records::<Policy>(db, POLICY_PREFIX)? {
            acl.policies.insert(name, p);
        }
        for (name, p) in records::<JwtProvider>(db, PROVIDER_PREFIX)? {
            acl.providers.insert(name, p);
        }
        Ok(acl)
    }

    fn expire(&mut self, cx: &mut Cx<'_>) {
        while let Some(id) = self.expiry.pop_due(cx.now()) {
            if let Some(t) = self.tokens.remove(&id) {
                self.version += 1;
                self.by_secret.remove(&t.secret_sha256);
                cx.delete(prefixed(TOKEN_PREFIX, &id));
            }
        }
    }

    fn next_deadline(&self) -> Option<u64> {
        self.expiry.next()
    }
}

impl Acl {
    fn index(&mut self, t: Token) {
        if let Some(at) = t.expires_at_ms {
            self.expiry.insert(at, t.accessor_id.clone());
        }
        self.by_secret
            .insert(t.secret_sha256.clone(), t.accessor_id.clone());
        self.tokens.insert(t.accessor_id.clone(), Arc::new(t));
    }

    fn unindex(&mut self, accessor_id: &str) -> Option<Arc<Token>> {
        let t = self.tokens.remove(accessor_id)?;
        self.by_secret.remove(&t.secret_sha256);
        if let Some(at) = t.expires_at_ms {
            self.expiry.remove(at, &t.accessor_id);
        }
        Some(t)
    }

    fn store(&mut self, t: Token, cx: &mut Cx<'_>) -> AclResult {
        cx.put(prefixed(TOKEN_PREFIX, &t.accessor_id), &t);
        self.index(t.clone());
        AclResult::Token(Box::new(t))
    }

    /// Moves whenever tokens or policies may have changed on this replica.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether the bootstrap token was made.
    pub fn bootstrapped(&self) -> bool {
        self.bootstrapped
    }

    /// The token whose secret has this SHA-256 (hex).
    pub fn token_by_secret(&self, secret_sha256: &str) -> Option<&Arc<Token>> {
        self.tokens.get(self.by_secret.get(secret_sha256)?)
    }

    pub fn token(&self, accessor_id: &str) -> Option<&Arc<Token>> {
        self.tokens.get(accessor_id)
    }

    pub(super) fn token_count(&self) -> usize {
        self.tokens.len()
    }

    pub(super) fn has_token(&self, accessor_id: &str) -> bool {
        self.tokens.contains_key(accessor_id)
    }

    pub fn tokens(&self) -> impl Iterator<Item = &Token> {
        self.tokens.values().map(|t| &**t)
    }

    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.policies.get(name)
    }

    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies.values()
    }

    pub fn providers(&self) -> impl Iterator<Item = &JwtProvider> {
        self.providers.values()
    }

    pub fn provider(&self, name: &str) -> Option<&JwtProvider> {
        self.providers.get(name)
    }

    fn rules<'a>(&'a self, grant: Grant<'a>, resource: Resource) -> impl Iterator<Item = &'a Rule> {
        grant
            .policies
            .iter()
            .filter_map(|p| self.policies.get(p))
            .flat_map(|p| p.rules.iter())
            .chain(grant.rules)
            .filter(move |r| r.resource == resource)
    }

    /// Whether `token` may do `op` on `name` of `resource` (see the module docs).
    pub fn allows(&self, token: &Token, resource: Resource, name: &str, op: Op) -> bool {
        self.grants(Grant::of(token), resource, name, op)
    }

    /// [`Acl::allows`] for a [`Grant`].
    pub fn grants(&self, grant: Grant<'_>, resource: Resource, name: &str, op: Op) -> bool {
        if grant.management {
            return true;
        }
        let mut best: Option<(usize, bool)> = None;
        for rule in self.rules(grant, resource) {
            let (Some(spec), Some(says)) = (rule.matches(name), rule.access.says(op)) else {
                continue;
            };
            best = match best {
                Some((s, b)) if s > spec || (s == spec && !b) => Some((s, b)),
                _ => Some((spec, says)),
            };
        }
        best.is_some_and(|(_, allowed)| allowed)
    }

    /// Whether `token` may do `op` on every name under `prefix` (a listing): the decision for
    /// `prefix` itself allows it and no narrower rule inside it refuses it.
    pub fn allows_prefix(&self, token: &Token, resource: Resource, prefix: &str, op: Op) -> bool {
        self.grants_prefix(Grant::of(token), resource, prefix, op)
    }

    /// [`Acl::allows_prefix`] for a [`Grant`].
    pub fn grants_prefix(
        &self,
        grant: Grant<'_>,
        resource: Resource,
        prefix: &str,
        op: Op,
    ) -> bool {
        if grant.management {
            return true;
        }
        self.grants(grant, resource, prefix, op)
            && self
                .rules(grant, resource)
                .filter(|r| r.inside(prefix))
                .all(|r| r.access.says(op) != Some(false))
    }

    fn set_provider(&mut self, p: &JwtProvider, cx: &mut Cx<'_>) -> AclResult {
        if let Err(e) = check_name("a provider name", &p.name)
            .and_then(|()| self.check_policy_names(&p.policies))
        {
            return AclResult::Invalid(e);
        }
        if p.keys.len() > MAX_JWT_KEYS
            || p.keys.iter().any(|k| k.key.len() > MAX_JWT_KEY_BYTES)
            || p.jwks.as_ref().is_some_and(|j| j.len() > MAX_JWT_KEY_BYTES)
        {
            return AclResult::Invalid(format!(
                "a provider has at most {MAX_JWT_KEYS} keys of at most {MAX_JWT_KEY_BYTES} bytes"
            ));
        }
        let existing = self.providers.get(&p.name);
        if existing.is_none() && self.providers.len() >= MAX_JWT_PROVIDERS {
            return AclResult::Invalid(format!("at most {MAX_JWT_PROVIDERS} JWT providers"));
        }
        let mut p = p.clone();
        p.created_at_ms = existing.map_or(cx.now(), |e| e.created_at_ms);
        p.modified_at_ms = cx.now();
        cx.put(prefixed(PROVIDER_PREFIX, &p.name), &p);
        self.providers.insert(p.name.clone(), p.clone());
        AclResult::Provider(Box::new(p))
    }

    fn management_count(&self) -> usize {
        self.tokens.values().filter(|t| t.management).count()
    }

    fn check_token(&self, t: &Token) -> Result<(), String> {
        check_name("accessor id", &t.accessor_id)?;
        check_description(&t.description)?;
        self.check_policy_names(&t.policies)
    }

    fn check_policy_names(&self, names: &[String]) -> Result<(), String> {
        if names.len() > MAX_POLICIES_PER_TOKEN {
            return Err(format!(
                "a token carries at most {MAX_POLICIES_PER_TOKEN} policies"
            ));
        }
        match names.iter().find(|n| !self.policies.contains_key(*n)) {
            Some(n) => Err(format!("no policy is named {n:?}")),
            None => Ok(()),
        }
    }

    fn update(
        &mut self,
        accessor_id: &str,
        description: &Option<String>,
        policies: &Option<Vec<String>>,
        expires_at_ms: &Option<Option<u64>>,
        cx: &mut Cx<'_>,
    ) -> AclResult {
        let Some(mut t) = self.tokens.get(accessor_id).map(|t| Token::clone(t)) else {
            return AclResult::NotFound;
        };
        if let Some(d) = description {
            t.description = d.clone();
        }
        if let Some(p) = policies {
            t.policies = p.clone();
        }
        if let Some(e) = expires_at_ms {
            t.expires_at_ms = *e;
        }
        if let Err(e) = self.check_token(&t) {
            return AclResult::Invalid(e);
        }
        self.unindex(accessor_id);
        self.store(t, cx)
    }

    fn delete_token(&mut self, accessor_id: &str, cx: &mut Cx<'_>) -> AclResult {
        match self.tokens.get(accessor_id) {
            None => AclResult::NotFound,
            Some(t) if t.management && self.management_count() == 1 => AclResult::LastManagement,
            Some(_) => {
                self.unindex(accessor_id);
                cx.delete(prefixed(TOKEN_PREFIX, accessor_id));
                AclResult::Deleted
            }
        }
    }

    fn set_policy(&mut self, p: &Policy, cx: &mut Cx<'_>) -> AclResult {
        if let Err(e) = check_policy(p) {
            return AclResult::Invalid(e);
        }
        let existing = self.policies.get(&p.name);
        if existing.is_none() && self.policies.len() >= MAX_POLICIES {
            return AclResult::Invalid(format!("at most {MAX_POLICIES} policies"));
        }
        let mut p = p.clone();
        p.created_at_ms = existing.map_or(cx.now(), |e| e.created_at_ms);
        p.modified_at_ms = cx.now();
        cx.put(prefixed(POLICY_PREFIX, &p.name), &p);
        self.policies.insert(p.name.clone(), p.clone());
        AclResult::Policy(Box::new(p))
    }

    fn delete_policy(&mut self, name: &str, cx: &mut Cx<'_>) -> AclResult {
        if !self.policies.contains_key(name) {
            return AclResult::NotFound;
        }
        let users: Vec<String> = self
            .tokens
            .values()
            .filter(|t| t.policies.iter().any(|p| p == name))
            .map(|t| t.accessor_id.clone())
            .chain(
                self.providers
                    .values()
                    .filter(|p| p.policies.iter().any(|x| x == name))
                    .map(|p| format!("jwt provider {}", p.name)),
            )
            .take(10)
            .collect();
        if !users.is_empty() {
            return AclResult::InUse(users);
        }
        self.policies.remove(name);
        cx.delete(prefixed(POLICY_PREFIX, name));
        AclResult::Deleted
    }
}

fn check_name(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_ACL_NAME_BYTES || s.chars().any(char::is_control) {
        return Err(format!(
            "{what} must be 1..={MAX_ACL_NAME_BYTES} bytes without control characters"
        ));
    }
    Ok(())
}

fn check_description(s: &str) -> Result<(), String> {
    if s.len() > MAX_DESCRIPTION_BYTES {
        return Err(format!(
            "a description is at most {MAX_DESCRIPTION_BYTES} bytes"
        ));
    }
    Ok(())
}

/// Checks a policy's name, description and rules.
pub fn check_policy(p: &Policy) -> Result<(), String> {
    check_name("a policy name", &p.name)?;
    check_description(&p.description)?;
    if p.rules.len() > MAX_RULES_PER_POLICY {
        return Err(format!("a policy has at most {MAX_RULES_PER_POLICY} rules"));
    }
    for (i, r) in p.rules.iter().enumerate() {
        if r.name.is_some() && r.prefix.is_some() {
            return Err(format!("rule {i}: give a name or a prefix, not both"));
        }
        if let Some(n) = &r.name {
            check_name(&format!("rule {i}: the name"), n)?;
        }
        if r.prefix
            .as_ref()
            .is_some_and(|p| p.len() > MAX_ACL_NAME_BYTES)
        {
            return Err(format!(
                "rule {i}: a prefix is at most {MAX_ACL_NAME_BYTES} bytes"
            ));
        }
        if r.access.channel_only() && r.resource != Resource::Channels {
            return Err(format!(
                "rule {i}: {} applies to channels only",
                r.access.as_str()
            ));
        }
    }
    Ok(())
}

impl Primitive for Acl {
    type Cmd = AclCmd;
    type Output = AclResult;

    fn apply(&mut self, cmd: &AclCmd, cx: &mut Cx<'_>) -> AclResult {
        self.version += 1;
        match cmd {
            AclCmd::Bootstrap {
                accessor_id,
                secret_sha256,
            } => {
                if self.bootstrapped {
                    return AclResult::AlreadyBootstrapped;
                }
                self.bootstrapped = true;
                put_record(cx.batch, BOOTSTRAP_KEY.to_vec(), &true);
                let t = Token {
                    accessor_id: accessor_id.clone(),
                    secret_sha256: secret_sha256.clone(),
                    description: "bootstrap management token".into(),
                    management: true,
                    policies: Vec::new(),
                    expires_at_ms: None,
                    created_at_ms: cx.now(),
                };
                self.store(t, cx)
            }
            AclCmd::TokenCreate(t) => {
                if self.tokens.contains_key(&t.accessor_id)
                    || self.by_secret.contains_key(&t.secret_sha256)
                {
                    return AclResult::Exists;
                }
                if self.tokens.len() >= MAX_TOKENS {
                    return AclResult::Invalid(format!("at most {MAX_TOKENS} tokens"));
                }
                if let Err(e) = self.check_token(t) {
                    return AclResult::Invalid(e);
                }
                let mut t = t.clone();
                t.created_at_ms = cx.now();
                self.store(t, cx)
            }
            AclCmd::TokenUpdate {
                accessor_id,
                description,
                policies,
                expires_at_ms,
            } => self.update(accessor_id, description, policies, expires_at_ms, cx),
            AclCmd::TokenDelete { accessor_id } => self.delete_token(accessor_id, cx),
            AclCmd::PolicySet(p) => self.set_policy(p, cx),
            AclCmd::PolicyDelete { name } => self.delete_policy(name, cx),
            AclCmd::ProviderSet(p) => self.set_provider(p, cx),
            AclCmd::ProviderDelete { name } => {
                if self.providers.remove(name).is_none() {
                    return AclResult::NotFound;
                }
                cx.delete(prefixed(PROVIDER_PREFIX, name));
                AclResult::Deleted
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(resource: Resource, name: Option<&str>, prefix: Option<&str>, access: Access) -> Rule {
        Rule {
            resource,
            name: name.map(Into::into),
            prefix: prefix.map(Into::into),
            access,
        }
    }

    fn acl_with(rules: Vec<Rule>) -> (Acl, Token) {
        let mut acl = Acl::default();
        acl.policies.insert(
            "p".into(),
            Policy {
                name: "p".into(),
                description: String::new(),
                rules,
                created_at_ms: 0,
                modified_at_ms: 0,
            },
        );
        let t = Token {
            accessor_id: "a".into(),
            secret_sha256: "s".into(),
            description: String::new(),
            management: false,
            policies: vec!["p".into()],
            expires_at_ms: None,
            created_at_ms: 0,
        };
        (acl, t)
    }

    #[test]
    fn most_specific_rule_wins_and_deny_wins_ties() {
        use Access::*;
        use Resource::Kv;
        let (acl, t) = acl_with(vec![
            rule(Kv, None, None, Read),
            rule(Kv, None, Some("app/"), Write),
            rule(Kv, None, Some("app/secret/"), Deny),
            rule(Kv, Some("app/secret/shared"), None, Read),
            rule(Kv, None, Some("tie/"), Write),
            rule(Kv, None, Some("tie/"), Deny),
        ]);
        assert!(acl.allows(&t, Kv, "other", Op::Read));
        assert!(!acl.allows(&t, Kv, "other", Op::Write));
        assert!(acl.allows(&t, Kv, "app/x", Op::Write));
        assert!(!acl.allows(&t, Kv, "app/secret/x", Op::Read));
        assert!(acl.allows(&t, Kv, "app/secret/shared", Op::Read));
        assert!(!acl.allows(&t, Kv, "app/secret/shared", Op::Write));
        assert!(!acl.allows(&t, Kv, "tie/x", Op::Read));
        // Another resource has no rules: refused.
        assert!(!acl.allows(&t, Resource::Locks, "app/x", Op::Read));
    }

    #[test]
    fn channel_rights_speak_only_to_their_operation() {
        use Access::*;
        use Resource::Channels;
        let (acl, t) = acl_with(vec![
            rule(Channels, None, None, Read),
            rule(Channels, None, Some("chat/"), Publish),
        ]);
        assert!(acl.allows(&t, Channels, "chat/1", Op::Publish));
        assert!(acl.allows(&t, Channels, "chat/1", Op::Subscribe));
        assert!(!acl.allows(&t, Channels, "news", Op::Publish));
        assert!(acl.allows(&t, Channels, "news", Op::History));
    }

    #[test]
    fn a_listing_needs_every_name_under_its_prefix() {
        use Access::*;
        use Resource::Kv;
        let (acl, t) = acl_with(vec![
            rule(Kv, None, Some("app/"), Read),
            rule(Kv, Some("app/private"), None, Deny),
        ]);
        assert!(acl.allows_prefix(&t, Kv, "app/pub", Op::Read));
        assert!(!acl.allows_prefix(&t, Kv, "app/", Op::Read));
        assert!(!acl.allows_prefix(&t, Kv, "", Op::Read));
        let mut m = t.clone();
        m.management = true;
        assert!(acl.allows_prefix(&m, Kv, "", Op::Write));
    }

    #[test]
    fn bad_policies_are_refused() {
        let mut p = Policy {
            name: "p".into(),
            description: String::new(),
            rules: vec![rule(Resource::Kv, None, None, Access::Publish)],
            created_at_ms: 0,
            modified_at_ms: 0,
        };
        assert!(check_policy(&p).unwrap_err().contains("channels only"));
        p.rules = vec![rule(Resource::Kv, Some("a"), Some("b"), Access::Read)];
        assert!(check_policy(&p).unwrap_err().contains("not both"));
        p.rules = vec![rule(Resource::Kv, Some("a"), None, Access::Read)];
        assert!(check_policy(&p).is_ok());
    }
}
