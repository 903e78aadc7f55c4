//! `stackd session …`: create, inspect, touch, update and end user sessions.

use clap::Subcommand;
use serde_json::{Map, Value};

use super::{print_json, Target};
use crate::api::model::CreateSessionRequest;

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

fn object(text: &str) -> anyhow::Result<Map<String, Value>> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| anyhow::anyhow!("--data must be a JSON object: {e}"))?;
    match v {
        Value::Object(m) => Ok(m),
        _ => anyhow::bail!("--data must be a JSON object"),
    }
}

pub async fn run(cmd: SessionCmd) -> anyhow::Result<()> {
    match cmd {
        SessionCmd::Create {
            user,
            data,
            ttl_ms,
            target,
        } => {
            let req = CreateSessionRequest {
                user,
                data: Some(object(&data)?),
                ttl_ms: Some(ttl_ms),
            };
            outln!("{}", target.client()?.session_create(&req).await?.id);
            Ok(())
        }
        SessionCmd::Get { id, target } => print_json(&target.client()?.session_get(&id).await?),
        SessionCmd::Touch { id, target } => print_json(&target.client()?.session_touch(&id).await?),
        SessionCmd::Update { id, data, target } => {
            let data = object(&data)?;
            print_json(&target.client()?.session_update(&id, data).await?)
        }
        SessionCmd::Del { id, target } => print_json(&target.client()?.session_delete(&id).await?),
        SessionCmd::Ls { user, target } => print_json(&target.client()?.sessions(&user).await?),
        SessionCmd::Logout { user, target } => {
            print_json(&target.client()?.sessions_delete(&user).await?)
        }
    }
}
