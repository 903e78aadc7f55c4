//! `stackd session …`: create, inspect, touch, update and end user sessions.

use clap::Subcommand;
use serde_json::{json, Value};

use super::{client, key_path, send_json, Target};

#[derive(Subcommand, Debug)]
pub enum SessionCmd {
    /// Create a session for a user; prints its id.
    Create {
        #[arg(long)]
        user: String,
        /// Session data, a JSON object.
        #[arg(long, default_value = "{}")]
        data: String,
        /// Idle lifetime: each touch or update extends the session by this much.
        #[arg(long, default_value_t = 1_800_000)]
        ttl_ms: u64,
        #[command(flatten)]
        target: Target,
    },
    /// Print a session as JSON.
    Get {
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Extend a session's expiry by its TTL from now.
    Touch {
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Merge a JSON object into the session data (null removes a field).
    Update {
        id: String,
        #[arg(long)]
        data: String,
        #[command(flatten)]
        target: Target,
    },
    /// End one session.
    Del {
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// List a user's sessions.
    Ls {
        #[arg(long)]
        user: String,
        #[command(flatten)]
        target: Target,
    },
    /// End every session of a user (log out everywhere).
    Logout {
        #[arg(long)]
        user: String,
        #[command(flatten)]
        target: Target,
    },
}

fn object(text: &str) -> anyhow::Result<Value> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| anyhow::anyhow!("--data must be a JSON object: {e}"))?;
    anyhow::ensure!(v.is_object(), "--data must be a JSON object");
    Ok(v)
}

pub async fn run(cmd: SessionCmd) -> anyhow::Result<()> {
    let http = client();
    let path = |id: &str| format!("/v1/sessions/{}", key_path(id));
    let v = match cmd {
        SessionCmd::Create {
            user,
            data,
            ttl_ms,
            target,
        } => {
            let v = send_json(
                http.post(target.url("/v1/sessions"))
                    .json(&json!({ "user": user, "data": object(&data)?, "ttl_ms": ttl_ms })),
            )
            .await?;
            println!("{}", v["id"].as_str().unwrap_or(""));
            return Ok(());
        }
        SessionCmd::Get { id, target } => send_json(http.get(target.url(&path(&id)))).await?,
        SessionCmd::Touch { id, target } => {
            send_json(http.post(target.url(&format!("{}/touch", path(&id))))).await?
        }
        SessionCmd::Update { id, data, target } => {
            send_json(
                http.patch(target.url(&path(&id)))
                    .json(&json!({ "data": object(&data)? })),
            )
            .await?
        }
        SessionCmd::Del { id, target } => send_json(http.delete(target.url(&path(&id)))).await?,
        SessionCmd::Ls { user, target } => {
            send_json(http.get(target.url(&format!("/v1/sessions?user={}", key_path(&user)))))
                .await?
        }
        SessionCmd::Logout { user, target } => {
            send_json(http.delete(target.url(&format!("/v1/sessions?user={}", key_path(&user)))))
                .await?
        }
    };
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}
