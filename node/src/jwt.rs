//! JWTs as tokens, for app users (browsers through stackd.js, app back ends): a bearer value
//! shaped like a JWT is verified against the JWT providers of the replicated ACL
//! ([`raft::state::acl::JwtProvider`]) with jsonwebtoken.
//!
//! A JWT is accepted when a key of a provider verifies it: the key's `kid` is the header's (or
//! both have none) and the key's algorithm is the header's (HS256, RS256, ES256 or EdDSA; the
//! algorithm comes from the key, never from the JWT, so `alg: none` and an HS256 JWT signed
//! with an RSA public key as its secret are refused), `exp` is present and not past, `nbf` is
//! not ahead (both with the provider's leeway), and `iss` and `aud` are the provider's when it
//! names them. The JWT then carries the provider's policies, and `subscribe` (with history and
//! presence) on each channel its `channels_claim` lists.

use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use raft::state::acl::{Access, JwtKey, JwtProvider, Resource, Rule};
use serde_json::Value;

/// A verified JWT: who it names and what it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtCaller {
    /// `jwt:<provider>:<sub>`.
    pub actor: String,
    pub provider: String,
    pub policies: Vec<String>,
    /// From the channels claim.
    pub rules: Vec<Rule>,
    /// `exp`, in ms.
    pub expires_at_ms: u64,
    /// The JWT itself, verified again when the providers change.
    pub jwt: String,
}

/// Most channels a JWT's claim may list.
pub const MAX_CLAIMED_CHANNELS: usize = 256;

/// Whether a bearer value is shaped like a JWT (three base64url parts, a JSON header).
pub fn looks_like_jwt(s: &str) -> bool {
    s.starts_with("eyJ") && s.split('.').count() == 3
}

fn algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "HS256" => Some(Algorithm::HS256),
        "RS256" => Some(Algorithm::RS256),
        "ES256" => Some(Algorithm::ES256),
        "EdDSA" => Some(Algorithm::EdDSA),
        _ => None,
    }
}

/// The decoding key of a static key, or why it cannot be one.
pub fn static_key(k: &JwtKey) -> Result<(Algorithm, DecodingKey), String> {
    let alg = algorithm(&k.alg)
        .ok_or_else(|| format!("alg must be HS256, RS256, ES256 or EdDSA, not {:?}", k.alg))?;
    let key = match alg {
        Algorithm::HS256 => DecodingKey::from_base64_secret(&k.key)
            .map_err(|e| format!("an HS256 key is the secret in base64: {e}"))?,
        Algorithm::RS256 => DecodingKey::from_rsa_pem(k.key.as_bytes())
            .map_err(|e| format!("an RS256 key is an RSA public key in PEM: {e}"))?,
        Algorithm::ES256 => DecodingKey::from_ec_pem(k.key.as_bytes())
            .map_err(|e| format!("an ES256 key is a P-256 public key in PEM: {e}"))?,
        _ => DecodingKey::from_ed_pem(k.key.as_bytes())
            .map_err(|e| format!("an EdDSA key is an Ed25519 public key in PEM: {e}"))?,
    };
    Ok((alg, key))
}

/// The keys of a JWKS document as (kid, algorithm, key); keys of other kinds are skipped.
pub fn jwks_keys(doc: &str) -> Result<Vec<(Option<String>, Algorithm, DecodingKey)>, String> {
    let set: JwkSet =
        serde_json::from_str(doc).map_err(|e| format!("jwks is not a JWKS document: {e}"))?;
    let mut out = Vec::new();
    for jwk in &set.keys {
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
            AlgorithmParameters::OctetKey(_) => Algorithm::HS256,
            _ => continue,
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("a JWKS key: {e}"))?;
        out.push((jwk.common.key_id.clone(), alg, key));
    }
    Ok(out)
}

/// Checks every key of a provider (answers the first problem).
pub fn check_provider(p: &JwtProvider) -> Result<(), String> {
    for (i, k) in p.keys.iter().enumerate() {
        static_key(k).map_err(|e| format!("key {i}: {e}"))?;
    }
    if let Some(doc) = &p.jwks {
        jwks_keys(doc)?;
    }
    if p.keys.is_empty() && p.jwks.is_none() {
        return Err("a provider needs keys or a jwks document".into());
    }
    Ok(())
}

/// Verifies `jwt` against `providers` at `now_ms`; the error is the 401 message.
pub fn verify<'a>(
    providers: impl Iterator<Item = &'a JwtProvider>,
    jwt: &str,
    now_ms: u64,
) -> Result<Arc<JwtCaller>, String> {
    let header = jsonwebtoken::decode_header(jwt).map_err(|e| {
        format!("not a JWT this node accepts (alg HS256, RS256, ES256 or EdDSA): {e}")
    })?;
    let mut last = format!(
        "no JWT provider has a {:?} key with kid {:?}",
        header.alg, header.kid
    );
    for p in providers {
        let mut keys: Vec<(Option<String>, Algorithm, DecodingKey)> = p
            .keys
            .iter()
            .filter_map(|k| static_key(k).ok().map(|(a, d)| (k.kid.clone(), a, d)))
            .collect();
        if let Some(doc) = &p.jwks {
            keys.extend(jwks_keys(doc).unwrap_or_default());
        }
        for (kid, alg, key) in keys {
            if alg != header.alg || kid != header.kid {
                continue;
            }
            match decode(p, jwt, alg, &key, now_ms) {
                Ok(c) => return Ok(Arc::new(c)),
                Err(e) => last = e,
            }
        }
    }
    Err(last)
}

/// Why jsonwebtoken refused a JWT, as the 401 says it.
fn refusal(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "the JWT has expired".to_string(),
        ErrorKind::ImmatureSignature => "the JWT is not valid yet (nbf)".to_string(),
        ErrorKind::InvalidAudience => "the JWT is for another audience (aud)".to_string(),
        ErrorKind::InvalidIssuer => "the JWT is from another issuer (iss)".to_string(),
        ErrorKind::InvalidSignature => "the JWT's signature does not verify".to_string(),
        _ => format!("the JWT is refused: {e}"),
    }
}

/// The channels a JWT may read, from the provider's `channels_claim` (at most
/// `MAX_CLAIMED_CHANNELS`).
fn channel_rules(p: &JwtProvider, claims: &serde_json::Map<String, Value>) -> Vec<Rule> {
    let Some(list) = p
        .channels_claim
        .as_ref()
        .and_then(|claim| claims.get(claim))
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    list.iter()
        .filter_map(Value::as_str)
        .take(MAX_CLAIMED_CHANNELS)
        .map(|ch| Rule {
            resource: Resource::Channels,
            name: Some(ch.to_string()),
            prefix: None,
            access: Access::Read,
        })
        .collect()
}

fn decode(
    p: &JwtProvider,
    jwt: &str,
    alg: Algorithm,
    key: &DecodingKey,
    now_ms: u64,
) -> Result<JwtCaller, String> {
    let mut v = Validation::new(alg);
    v.leeway = p.leeway_ms / 1000;
    v.validate_nbf = true;
    v.set_required_spec_claims(&["exp"]);
    match &p.issuer {
        Some(iss) => v.set_issuer(&[iss]),
        None => v.iss = None,
    }
    match &p.audience {
        Some(aud) => v.set_audience(&[aud]),
        None => v.validate_aud = false,
    }
    let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(jwt, key, &v)
        .map_err(|e| refusal(&e))?;
    let claims = data.claims;
    let exp_ms = claims
        .get("exp")
        .and_then(Value::as_u64)
        .unwrap_or_default()
        .saturating_mul(1000);
    // jsonwebtoken checks exp against its own clock; the node's is the one that counts here.
    if exp_ms.saturating_add(p.leeway_ms) <= now_ms {
        return Err("the JWT has expired".into());
    }
    let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("-");
    let rules = channel_rules(p, &claims);
    Ok(JwtCaller {
        actor: format!("jwt:{}:{sub}", p.name),
        provider: p.name.clone(),
        policies: p.policies.clone(),
        rules,
        expires_at_ms: exp_ms,
        jwt: jwt.to_string(),
    })
}
