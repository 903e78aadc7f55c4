//! `stackd txn`: send a transaction written as JSON.

use anyhow::Context;
use clap::Args;
use serde_json::Value;

use super::{client, send_json, Target};

/// Apply a transaction: compares, then the success or the failure writes, atomically.
///
/// The JSON (from FILE or stdin) is the body of `POST /v1/txn`, for example:
/// {"compare": [{"key": "a", "revision": 3}],
///  "success": [{"put": {"key": "a", "text": "new"}}, {"cache_invalidate": {"tags": ["a"]}}],
///  "failure": []}
#[derive(Args, Debug)]
pub struct TxnCmd {
    /// File with the transaction JSON; stdin when omitted.
    file: Option<std::path::PathBuf>,
    #[command(flatten)]
    target: Target,
}

pub async fn run(cmd: TxnCmd) -> anyhow::Result<()> {
    let text = match &cmd.file {
        Some(f) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        None => String::from_utf8(super::value_or_stdin(None)?)?,
    };
    let body: Value = serde_json::from_str(&text).context("the transaction is not JSON")?;
    let v = send_json(client().post(cmd.target.url("/v1/txn")).json(&body)).await?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    if v["succeeded"] == false {
        std::process::exit(2);
    }
    Ok(())
}
