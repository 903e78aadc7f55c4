//! `stackd channel …`: list channels, publish, read the history and presence, delete an idle
//! channel. Live delivery is the WebSocket API's (`/v1/ws`).

use clap::Subcommand;

use super::{print_json, Target};

#[derive(Subcommand, Debug)]
pub enum ChannelCmd {
    /// Channels whose name starts with PREFIX (all by default), with offsets and presence.
    List {
        #[arg(default_value = "")]
        prefix: String,
        /// Start after this channel name (the previous page's last).
        #[arg(long)]
        after: Option<String>,
        #[arg(long)]
        limit: Option<u64>,
        #[command(flatten)]
        target: Target,
    },
    /// Publish DATA (JSON) on a channel; prints its offset.
    Publish {
        channel: String,
        data: String,
        #[command(flatten)]
        target: Target,
    },
    /// The retained events after offset --since.
    History {
        channel: String,
        #[arg(long)]
        since: Option<u64>,
        #[arg(long)]
        limit: Option<u64>,
        #[command(flatten)]
        target: Target,
    },
    /// The clients present on a channel, across the nodes.
    Presence {
        channel: String,
        #[command(flatten)]
        target: Target,
    },
    /// Delete an idle channel (no client present, no event retained), so it no longer counts
    /// against limits.max_channels; a later publish starts it again at offset 1.
    Delete {
        channel: String,
        #[command(flatten)]
        target: Target,
    },
}

pub async fn run(cmd: ChannelCmd) -> anyhow::Result<()> {
    match cmd {
        ChannelCmd::List {
            prefix,
            after,
            limit,
            target,
        } => print_json(
            &target
                .client()?
                .channels(&prefix, after.as_deref(), limit)
                .await?,
        ),
        ChannelCmd::Publish {
            channel,
            data,
            target,
        } => {
            let data: serde_json::Value = serde_json::from_str(&data)
                .map_err(|e| anyhow::anyhow!("DATA is not JSON: {e}"))?;
            print_json(&target.client()?.publish(&channel, data).await?)
        }
        ChannelCmd::History {
            channel,
            since,
            limit,
            target,
        } => print_json(
            &target
                .client()?
                .channel_history(&channel, since, limit)
                .await?,
        ),
        ChannelCmd::Presence { channel, target } => {
            print_json(&target.client()?.presence(&channel).await?)
        }
        ChannelCmd::Delete { channel, target } => {
            print_json(&target.client()?.channel_delete(&channel).await?)
        }
    }
}
