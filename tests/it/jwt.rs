//! JWTs as tokens: a provider's keys for each algorithm, made in the test, and every way a JWT
//! is refused (expired, not yet valid, another audience or issuer, `alg: none`, HS256 signed
//! with the RSA public key, an unknown kid), key rotation, the channels claim, and a JWT on the
//! WebSocket.

use std::time::Duration;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use node::api::ws_protocol::{ClientMessage, ReplyBody};
use node::error::ErrorCode;
use serde_json::{json, Value};
use tests::http;
use tests::inproc::InprocCluster;
use tests::ws::WsClient;

/// A signing key (private) and the provider key (public) that verifies it.
struct Signer {
    alg: Algorithm,
    kid: String,
    encoding: EncodingKey,
    /// `{"kid", "alg", "key"}` for the provider.
    provider_key: Value,
}

fn hs256(kid: &str) -> Signer {
    let secret: [u8; 32] = rand::random();
    Signer {
        alg: Algorithm::HS256,
        kid: kid.into(),
        encoding: EncodingKey::from_secret(&secret),
        provider_key: json!({"kid": kid, "alg": "HS256",
            "key": base64::engine::general_purpose::STANDARD.encode(secret)}),
    }
}

fn rs256(kid: &str) -> (Signer, String) {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let private = rsa::RsaPrivateKey::new(&mut rand_core06::OsRng, 2048).unwrap();
    let public_pem = rsa::RsaPublicKey::from(&private)
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let private_pem = private.to_pkcs8_pem(LineEnding::LF).unwrap();
    let signer = Signer {
        alg: Algorithm::RS256,
        kid: kid.into(),
        encoding: EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap(),
        provider_key: json!({"kid": kid, "alg": "RS256", "key": public_pem}),
    };
    (signer, public_pem)
}

fn rcgen_key(
    kid: &str,
    alg: Algorithm,
    name: &str,
    which: &'static rcgen::SignatureAlgorithm,
) -> Signer {
    let pair = rcgen::KeyPair::generate_for(which).unwrap();
    let private_pem = pair.serialize_pem();
    let encoding = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(private_pem.as_bytes()).unwrap(),
        _ => EncodingKey::from_ed_pem(private_pem.as_bytes()).unwrap(),
    };
    Signer {
        alg,
        kid: kid.into(),
        encoding,
        provider_key: json!({"kid": kid, "alg": name, "key": pair.public_key_pem()}),
    }
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn sign(s: &Signer, claims: Value) -> String {
    let mut h = Header::new(s.alg);
    h.kid = Some(s.kid.clone());
    jsonwebtoken::encode(&h, &claims, &s.encoding).unwrap()
}

fn claims(extra: Value) -> Value {
    let mut c = json!({"sub": "ann", "iss": "https://auth.example", "aud": "stackd",
        "exp": now_s() + 600, "nbf": now_s() - 10});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

fn b64url(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

/// The status and error code of `GET /v1/kv/k` with `jwt`.
async fn read_with(base: &str, jwt: &str) -> (u16, String) {
    let resp = http::client()
        .get(format!("{base}/v1/kv/k"))
        .bearer_auth(jwt)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    let code = v["error"]["code"].as_str().unwrap_or("").to_string();
    let message = v["error"]["message"].as_str().unwrap_or("").to_string();
    (
        status,
        if code.is_empty() {
            "ok".into()
        } else {
            format!("{code}: {message}")
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwts_of_every_algorithm_are_verified_and_every_bad_one_refused() {
    let c = InprocCluster::start_with(1, |c| {
        c.api.insecure_no_auth = false;
        c.rate.auth_failures_per_min = 0;
    })
    .await
    .unwrap();
    let base = c.bases[0].clone();
    let admin = http::api(&base).with_token(c.admin_token().unwrap());
    let put = |path: String, body: Value| {
        let admin_token = c.admin_token().unwrap();
        let base = base.clone();
        async move {
            let resp = http::client()
                .put(format!("{base}{path}"))
                .bearer_auth(admin_token)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let (s, v) = put(
        "/v1/acl/policies/reader".into(),
        json!({"rules": [{"resource": "kv", "access": "read"}]}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    admin.kv_put("k", "v").await.unwrap();

    let hs = hs256("hs-1");
    let (rs, rsa_public_pem) = rs256("rs-1");
    let es = rcgen_key(
        "es-1",
        Algorithm::ES256,
        "ES256",
        &rcgen::PKCS_ECDSA_P256_SHA256,
    );
    let ed = rcgen_key("ed-1", Algorithm::EdDSA, "EdDSA", &rcgen::PKCS_ED25519);
    let provider = |keys: Vec<&Value>| {
        json!({"issuer": "https://auth.example", "audience": "stackd", "leeway_ms": 0,
            "keys": keys, "policies": ["reader"], "channels_claim": "channels"})
    };
    let (s, v) = put(
        "/v1/acl/jwt/app".into(),
        provider(vec![
            &hs.provider_key,
            &rs.provider_key,
            &es.provider_key,
            &ed.provider_key,
        ]),
    )
    .await;
    assert_eq!(s, 200, "{v}");

    // Valid, for each algorithm.
    for signer in [&hs, &rs, &es, &ed] {
        let jwt = sign(signer, claims(json!({})));
        assert_eq!(
            read_with(&base, &jwt).await,
            (200, "ok".into()),
            "{:?}",
            signer.alg
        );
    }

    // Refused: each answers 401 and says why.
    let hs_with_rsa_public_key = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("rs-1".into());
        let key = EncodingKey::from_secret(rsa_public_pem.as_bytes());
        jsonwebtoken::encode(&h, &claims(json!({})), &key).unwrap()
    };
    let alg_none = format!(
        "{}.{}.",
        b64url(&json!({"alg": "none", "typ": "JWT", "kid": "rs-1"})),
        b64url(&claims(json!({})))
    );
    let unknown_kid = {
        let mut other = hs256("hs-unknown");
        other.kid = "hs-unknown".into();
        sign(&other, claims(json!({})))
    };
    for (what, jwt, says) in [
        (
            "expired",
            sign(&rs, claims(json!({"exp": now_s() - 60}))),
            "expired",
        ),
        (
            "not yet valid",
            sign(&es, claims(json!({"nbf": now_s() + 600}))),
            "not valid yet",
        ),
        (
            "another audience",
            sign(&ed, claims(json!({"aud": "other"}))),
            "audience",
        ),
        (
            "another issuer",
            sign(&hs, claims(json!({"iss": "https://evil.example"}))),
            "issuer",
        ),
        ("alg none", alg_none, "alg"),
        (
            "HS256 signed with the RSA public key",
            hs_with_rsa_public_key,
            "no JWT provider",
        ),
        ("an unknown kid", unknown_kid, "no JWT provider"),
    ] {
        let (status, answer) = read_with(&base, &jwt).await;
        assert_eq!(status, 401, "{what}: {answer}");
        assert!(
            answer.starts_with("unauthenticated") && answer.contains(says),
            "{what}: {answer}"
        );
    }

    // The JWT's rights are the provider's policies: reading yes, writing no.
    let jwt = sign(&rs, claims(json!({})));
    let resp = http::client()
        .put(format!("{base}/v1/kv/k"))
        .bearer_auth(&jwt)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);

    // Rotation: the provider replaced with a new RS256 key; the old key's JWTs are refused, the
    // new one's accepted, without a restart.
    let (rs2, _) = rs256("rs-2");
    let (s, v) = put("/v1/acl/jwt/app".into(), provider(vec![&rs2.provider_key])).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(read_with(&base, &jwt).await.0, 401, "the rotated-out key");
    let jwt2 = sign(&rs2, claims(json!({})));
    assert_eq!(read_with(&base, &jwt2).await, (200, "ok".into()));

    // A JWKS document works like static keys.
    let (rs3, _) = rs256("rs-3");
    let jwks = {
        use rsa::traits::PublicKeyParts;
        let _ = &rs3;
        let private = rsa::RsaPrivateKey::new(&mut rand_core06::OsRng, 2048).unwrap();
        let public = rsa::RsaPublicKey::from(&private);
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public.n().to_bytes_be());
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public.e().to_bytes_be());
        use rsa::pkcs8::{EncodePrivateKey, LineEnding};
        let pem = private.to_pkcs8_pem(LineEnding::LF).unwrap();
        let signer = Signer {
            alg: Algorithm::RS256,
            kid: "jwks-1".into(),
            encoding: EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
            provider_key: Value::Null,
        };
        (
            json!({"keys": [{"kty": "RSA", "kid": "jwks-1", "alg": "RS256", "use": "sig", "n": n, "e": e}]}),
            signer,
        )
    };
    let mut p = provider(vec![]);
    p["jwks"] = jwks.0;
    let (s, v) = put("/v1/acl/jwt/app".into(), p).await;
    assert_eq!(s, 200, "{v}");
    let jwt3 = sign(&jwks.1, claims(json!({"channels": ["room-1"]})));
    assert_eq!(
        read_with(&base, &jwt3).await,
        (200, "ok".into()),
        "a JWKS key"
    );

    // On the WebSocket: the channels claim grants subscribe on exactly those channels.
    let mut ws = WsClient::connect(&base, "").await.unwrap();
    match ws
        .request(ClientMessage::Auth {
            token: jwt3.clone(),
        })
        .await
        .unwrap()
    {
        Ok(ReplyBody::Authenticated { accessor_id, .. }) => assert_eq!(accessor_id, "jwt:app:ann"),
        other => panic!("auth with a JWT: {other:?}"),
    }
    ws.subscribe("room-1", None).await.unwrap();
    let refused = ws
        .request(ClientMessage::Subscribe {
            channel: "room-2".into(),
            since: None,
            user: None,
        })
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.code, ErrorCode::Forbidden);
    // Deleting the provider ends the JWT's subscriptions.
    let resp = http::client()
        .delete(format!("{base}/v1/acl/jwt/app"))
        .bearer_auth(c.admin_token().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    match ws.next_msg(Duration::from_secs(1)).await {
        Ok(node::api::ws_protocol::Push::Revoked(_)) => {}
        other => panic!("expected revoked within 1 s, got {other:?}"),
    }
    ws.close().await;
    c.shutdown().await;
}
