//! `stackd backup` and `stackd restore`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::Target;
use crate::api::client::ApiError;
use crate::backup;

#[derive(Args, Debug)]
pub struct BackupCmd {
    /// File to write (`-` for stdout). It is written to FILE.partial and renamed once the
    /// stream has ended and its checksum verified, so FILE is never a partial backup.
    #[arg(long, short)]
    pub out: PathBuf,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Args, Debug)]
pub struct RestoreCmd {
    /// Backup file made by `stackd backup` (`-` for stdin).
    #[arg(long, short)]
    pub file: PathBuf,
    /// New, empty data dir; then run `stackd serve --data-dir` on it to start a new cluster
    /// holding the restored data.
    #[arg(long)]
    pub data_dir: PathBuf,
}

/// Streams `GET /v1/cluster/backup` into a file, printing progress, then verifies it.
pub async fn backup(cmd: BackupCmd) -> anyhow::Result<()> {
    let mut resp = cmd.target.client()?.backup().await.map_err(|e| match e {
        ApiError::Transport(_) => {
            anyhow::Error::new(e).context(format!("connecting to {}", cmd.target.addr))
        }
        refused => anyhow::anyhow!("backup refused: {refused}"),
    })?;
    let to_stdout = cmd.out.as_os_str() == "-";
    let partial = cmd.out.with_extension("partial");
    let mut out: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(&partial)
                .with_context(|| format!("creating {}", partial.display()))?,
        ))
    };
    let mut received = Progress::new("stackd backup", "received");
    while let Some(chunk) = resp
        .chunk()
        .await
        .context("the backup stream broke off; nothing was kept")?
    {
        out.write_all(&chunk)?;
        received.add(chunk.len());
    }
    let bytes = received.bytes;
    out.flush()?;
    drop(out);
    if to_stdout {
        return Ok(());
    }
    let file = std::fs::File::open(&partial)?;
    file.sync_all()?;
    let (_, summary, digest) = backup::verify(ProgressReader::new(
        std::io::BufReader::new(file),
        "stackd backup: verifying",
    ))
    .with_context(|| format!("verifying {}", partial.display()))?;
    std::fs::rename(&partial, &cmd.out)?;
    eprintln!(
        "stackd backup: wrote {} ({} bytes, {} records, revision {}, applied index {}, kv digest {})",
        cmd.out.display(),
        bytes,
        summary.records,
        summary.revision,
        summary.last_applied_index.unwrap_or(0),
        digest,
    );
    Ok(())
}

/// Verifies a backup while loading it into a new data dir (streamed: memory stays bounded).
pub fn restore(cmd: RestoreCmd) -> anyhow::Result<()> {
    const LABEL: &str = "stackd restore: loading";
    let (header, summary) = if cmd.file.as_os_str() == "-" {
        backup::restore_from(
            ProgressReader::new(std::io::stdin().lock(), LABEL),
            &cmd.data_dir,
        )?
    } else {
        let f = std::fs::File::open(&cmd.file)
            .with_context(|| format!("opening {}", cmd.file.display()))?;
        backup::restore_from(
            ProgressReader::new(std::io::BufReader::new(f), LABEL),
            &cmd.data_dir,
        )
        .with_context(|| format!("restoring {}", cmd.file.display()))?
    };
    eprintln!(
        "stackd restore: {} records (revision {}) from cluster {} loaded into {}.\nStart the new cluster with:\n  stackd serve --data-dir {} --api-addr <IP:PORT> --cluster-addr <IP:PORT>",
        summary.records,
        summary.revision,
        header.cluster_id.as_deref().unwrap_or("?"),
        cmd.data_dir.display(),
        cmd.data_dir.display(),
    );
    Ok(())
}

/// Counts the bytes of a long transfer and prints the count once a second.
struct Progress {
    label: &'static str,
    verb: &'static str,
    bytes: u64,
    last: std::time::Instant,
}

impl Progress {
    fn new(label: &'static str, verb: &'static str) -> Self {
        Self {
            label,
            verb,
            bytes: 0,
            last: std::time::Instant::now(),
        }
    }

    fn add(&mut self, n: usize) {
        self.bytes += n as u64;
        if self.last.elapsed().as_secs() >= 1 {
            eprintln!(
                "{}: {:.1} MiB {}",
                self.label,
                self.bytes as f64 / 1048576.0,
                self.verb
            );
            self.last = std::time::Instant::now();
        }
    }
}

/// A reader that reports its [`Progress`] (reading a backup file).
struct ProgressReader<R> {
    inner: R,
    progress: Progress,
}

impl<R> ProgressReader<R> {
    fn new(inner: R, label: &'static str) -> Self {
        Self {
            inner,
            progress: Progress::new(label, "read"),
        }
    }
}

impl<R: std::io::Read> std::io::Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.add(n);
        Ok(n)
    }
}
