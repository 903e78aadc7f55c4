//! `stackd`: one binary for the server and its command-line client.

#![forbid(unsafe_code)]

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use node::client::backup::{BackupCmd, RestoreCmd};
use node::client::cache::CacheCmd;
use node::client::lock::LockCmd;
use node::client::queue::{QueueCmd, WorkerCmd};
use node::client::semaphore::SemaphoreCmd;
use node::client::session::SessionCmd;
use node::client::txn::TxnCmd;
use node::client::{ClusterCmd, KvCmd, TokenCmd};
use node::config::{document_flags, Config, ServeArgs};
use tracing_subscriber::EnvFilter;

/// stackd: a clustered application node (replicated state over Raft: keys, locks, sessions,
/// cache, job queues, channels).
///
/// Start a node with `stackd serve`; start more with `--join` and the token the first node
/// prints. Point apps and the client subcommands at any node.
#[derive(Parser)]
#[command(name = "stackd", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node. With an empty data dir and no --join it starts a new cluster and prints the
    /// command that joins another node; with an existing data dir it restarts that member.
    ///
    /// Security is always on: the first node creates a cluster CA; every node holds a
    /// certificate signed by it that names its id, and every cluster connection is mutual TLS
    /// checking the CA, the cluster and the node id. A joining node proves a join token (the
    /// first node's, or one from `stackd token create`) and receives its certificate. A node
    /// removed with `stackd cluster remove` exits when it learns it ("node N was removed from
    /// cluster C; ..."): wipe its data dir and join again with a token to get a new id.
    ///
    /// Settings come from the flags below, their `STACKD_*` environment variables and a TOML
    /// file (`--config`), in that order of precedence, over the defaults; a bad value stops
    /// the node with an error naming it. `stackd config example` prints a file with every
    /// setting and its default.
    Serve(Box<ServeArgs>),
    /// The settings of `stackd serve`: `config example` prints a commented TOML file with
    /// every setting and its default; `config show [SERVE FLAGS]` prints the settings `serve`
    /// would run with.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Read and write keys on any node.
    #[command(subcommand)]
    Kv(KvCmd),
    /// Locks with leases and fencing tokens; `lock run` holds one while a command runs.
    #[command(subcommand)]
    Lock(LockCmd),
    /// Counting semaphores: N of M permits under fenced leases, waiters served in order.
    #[command(subcommand)]
    Semaphore(SemaphoreCmd),
    /// User sessions with a sliding expiry.
    #[command(subcommand)]
    Session(SessionCmd),
    /// The replicated cache: TTL, tags, invalidation.
    #[command(subcommand)]
    Cache(CacheCmd),
    /// Job queues: enqueue, claim, ack, dead letters, cron schedules.
    #[command(subcommand)]
    Queue(QueueCmd),
    /// Run a shell command for each job of a queue (payload on stdin; exit 0 acks).
    Worker(WorkerCmd),
    /// Apply a transaction (compares, then success or failure writes) given as JSON.
    Txn(TxnCmd),
    /// Inspect and operate the cluster: status, remove, promote, transfer-leader, snapshot.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Stream a consistent, checksummed backup of the cluster's state into a file.
    Backup(BackupCmd),
    /// Load a backup into a new, empty data dir, from which `stackd serve` starts a new
    /// cluster with the same data (keys, revisions, locks, sessions, cache, queues).
    Restore(RestoreCmd),
    /// Join tokens: `token create [--ttl 24h]` prints a new token for `serve --join`;
    /// `token list` and `token revoke ID` show and revoke them.
    #[command(subcommand)]
    Token(TokenCmd),
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print a config file with every setting, its documentation and its default (parsing
    /// it gives exactly the defaults).
    Example,
    /// Print the effective settings after merging the config file, `STACKD_*` environment
    /// variables and flags (the same as `stackd serve`'s), or the errors `serve` would stop
    /// with. The join token is not shown.
    Show(Box<ServeArgs>),
}

/// The command line, with each `serve` flag documented from its config setting.
fn command() -> clap::Command {
    Cli::command()
        .mut_subcommand("serve", document_flags)
        .mut_subcommand("config", |c| c.mut_subcommand("show", document_flags))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve(args) => serve(*args).await,
            Cmd::Config(ConfigCmd::Example) => {
                print!("{}", Config::example());
                Ok(())
            }
            Cmd::Config(ConfigCmd::Show(args)) => {
                let config = args.resolve()?;
                print!("{}", config.to_commented_toml(&["cluster.token"]));
                Ok(())
            }
            Cmd::Kv(cmd) => node::client::kv(cmd).await,
            Cmd::Lock(cmd) => node::client::lock::run(cmd).await,
            Cmd::Semaphore(cmd) => node::client::semaphore::run(cmd).await,
            Cmd::Session(cmd) => node::client::session::run(cmd).await,
            Cmd::Cache(cmd) => node::client::cache::run(cmd).await,
            Cmd::Txn(cmd) => node::client::txn::run(cmd).await,
            Cmd::Queue(cmd) => node::client::queue::run(cmd).await,
            Cmd::Worker(cmd) => node::client::queue::worker(cmd).await,
            Cmd::Cluster(cmd) => node::client::cluster(cmd).await,
            Cmd::Backup(cmd) => node::client::backup::backup(cmd).await,
            Cmd::Restore(cmd) => node::client::backup::restore(cmd),
            Cmd::Token(cmd) => node::client::token(cmd).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stackd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Checked before logging starts, so a bad setting is the only thing printed.
    let config = args.resolve()?;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("STACKD_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn")),
        )
        .with_target(false)
        .init();
    node::install_crypto_provider();
    let node = node::server::Node::start(config).await?;
    let removed = tokio::select! {
        _ = wait_for_signal() => None,
        why = node.removed() => Some(why),
    };
    node.shutdown().await;
    match removed {
        Some(why) => anyhow::bail!("{why}"),
        None => Ok(()),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        super::command().debug_assert();
    }
}
