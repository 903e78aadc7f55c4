//! `stackd`: one binary for the server and its command-line client.

use clap::{Parser, Subcommand};
use node::client::{ClusterCmd, KvCmd};
use node::config::ServeArgs;
use tracing_subscriber::EnvFilter;

/// stackd: a clustered application node (replicated key-value state over Raft).
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
    Serve(Box<ServeArgs>),
    /// Read and write keys on any node.
    #[command(subcommand)]
    Kv(KvCmd),
    /// Inspect the cluster.
    #[command(subcommand)]
    Cluster(ClusterCmd),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve(args) => serve(*args).await,
            Cmd::Kv(cmd) => node::client::kv(cmd).await,
            Cmd::Cluster(cmd) => node::client::cluster(cmd).await,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("STACKD_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn")),
        )
        .with_target(false)
        .init();
    node::install_crypto_provider();
    let config = args.resolve()?;
    let node = node::server::Node::start(config).await?;
    wait_for_signal().await;
    node.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
