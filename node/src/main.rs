//! `stackd`: one binary for the server and its command-line client.

#![forbid(unsafe_code)]

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use node::config::{document_flags, Config, ServeArgs};
use tracing_subscriber::EnvFilter;

/// mimalloc: per-thread free lists make the many small, short-lived allocations of request
/// handling (headers, bodies, futures) cheaper than glibc's malloc (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Access control is on: every API route but /health, /ready, the API reference and the
    /// browser client needs a token. The first node writes a management token to
    /// DATA_DIR/bootstrap-token (mode 0600) and prints it once; `stackd acl` makes more.
    /// --insecure-no-auth turns access control off (tests and experiments only).
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
    /// The client subcommands (`kv`, `lock`, ..., `token`).
    #[command(flatten)]
    Client(Box<node::client::Command>),
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
            Cmd::Client(cmd) => node::client::run(*cmd).await,
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
    let stopped_by = tokio::select! {
        _ = wait_for_signal() => None,
        why = node.removed() => Some(why),
        why = node.raft_failed() => Some(why),
    };
    node.shutdown().await;
    match stopped_by {
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
