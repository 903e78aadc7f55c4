//! Backups: a consistent copy of the replicated state as one checksummed stream, and restoring
//! it into an empty data dir from which a new cluster starts with the same data.
//!
//! # Format (version 1)
//! ```text
//! magic    "STACKD-BACKUP\n"
//! header   u32 BE length, then JSON {"format": 1, "cluster_id", "node_id", "created_ms"}
//! records  repeated: 0x01, u32 BE key length, key, u32 BE value length, value
//!          (the state machine's RocksDB entries in key order, read from one RocksDB snapshot)
//! trailer  0x00, u32 BE length, JSON {"records", "last_applied_index", "revision",
//!          "compact_revision"}, then the SHA-256 of every byte before it (32 bytes)
//! ```
//! The summary sits in the trailer because it is read from the same snapshot as the records.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};
use raft::state::{Meta, META_KEY};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use storage::{codec, Db};

pub const MAGIC: &[u8] = b"STACKD-BACKUP\n";
/// Left by `stackd restore` in the data dir; the first start takes a snapshot and purges the
/// log behind it so that joining nodes receive the restored state, then removes the marker.
pub const RESTORED_MARKER: &str = "restored.json";
/// Bytes buffered before a chunk of the stream is handed on.
const CHUNK: usize = 256 * 1024;
/// The largest key or value a backup may hold (guards the reader against a corrupt length).
const MAX_FIELD: usize = 64 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Header {
    pub format: u32,
    pub cluster_id: Option<String>,
    pub node_id: u64,
    pub created_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub records: u64,
    pub last_applied_index: Option<u64>,
    pub revision: u64,
    pub compact_revision: u64,
}

/// Writes a backup of `db` as a series of chunks handed to `emit` (which returns `false` to
/// stop early, e.g. when the receiver went away). Blocking: run it in `spawn_blocking`.
pub fn write(
    db: &Db,
    header: &Header,
    mut emit: impl FnMut(Vec<u8>) -> bool,
) -> anyhow::Result<Summary> {
    let mut hasher = Sha256::new();
    let mut buf = Vec::with_capacity(CHUNK + 1024);
    let mut stopped = false;
    let mut flush = |buf: &mut Vec<u8>, hasher: &mut Sha256, stopped: &mut bool| {
        hasher.update(&buf[..]);
        if !*stopped && !emit(std::mem::take(buf)) {
            *stopped = true;
        }
        buf.clear();
    };
    buf.extend_from_slice(MAGIC);
    put_json(&mut buf, header)?;
    let mut summary = Summary::default();
    let mut failed: Option<anyhow::Error> = None;
    db.sm_export_each(|k, v| {
        if let Err(e) = summarize(&mut summary, k, v) {
            failed = Some(e.into());
            return false;
        }
        buf.push(1);
        buf.extend_from_slice(&(k.len() as u32).to_be_bytes());
        buf.extend_from_slice(k);
        buf.extend_from_slice(&(v.len() as u32).to_be_bytes());
        buf.extend_from_slice(v);
        summary.records += 1;
        if buf.len() >= CHUNK {
            flush(&mut buf, &mut hasher, &mut stopped);
        }
        !stopped
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    if stopped {
        bail!("the backup stream was closed before it ended");
    }
    buf.push(0);
    put_json(&mut buf, &summary)?;
    hasher.update(&buf[..]);
    let digest = hasher.finalize_reset();
    buf.extend_from_slice(&digest);
    if !emit(buf) {
        bail!("the backup stream was closed before it ended");
    }
    Ok(summary)
}

/// Takes the summary's figures from the records that hold them, so that they come from the
/// same RocksDB snapshot as every record.
fn summarize(summary: &mut Summary, k: &[u8], v: &[u8]) -> storage::Result<()> {
    if k == META_KEY {
        let meta: Meta = codec::decode(v)?;
        summary.last_applied_index = meta.last_applied.map(|l| l.index);
        summary.revision = meta.revision;
    } else if k == raft::state::COMPACT_KEY {
        summary.compact_revision = codec::decode(v)?;
    }
    Ok(())
}

fn put_json<T: Serialize>(buf: &mut Vec<u8>, value: &T) -> anyhow::Result<()> {
    let json = serde_json::to_vec(value)?;
    buf.extend_from_slice(&(json.len() as u32).to_be_bytes());
    buf.extend_from_slice(&json);
    Ok(())
}

/// A backup read back and verified.
pub struct Backup {
    pub header: Header,
    pub records: Vec<(Vec<u8>, Vec<u8>)>,
    pub summary: Summary,
}

/// Reads and verifies a whole backup: magic, structure, record count and checksum.
pub fn read(r: impl Read) -> anyhow::Result<Backup> {
    let mut r = HashingReader {
        inner: r,
        hasher: Sha256::new(),
    };
    let mut magic = vec![0u8; MAGIC.len()];
    r.read_exact(&mut magic)
        .context("reading the backup's first bytes")?;
    if magic != MAGIC {
        bail!("not a stackd backup (the file does not start with {MAGIC:?})");
    }
    let header: Header = read_json(&mut r).context("reading the backup header")?;
    if header.format != 1 {
        bail!(
            "backup format {} is not supported (this stackd reads format 1)",
            header.format
        );
    }
    let mut records = Vec::new();
    let summary: Summary = loop {
        let mut tag = [0u8; 1];
        r.read_exact(&mut tag).context("the backup is truncated")?;
        match tag[0] {
            1 => {
                let k = read_field(&mut r)?;
                let v = read_field(&mut r)?;
                records.push((k, v));
            }
            0 => break read_json(&mut r).context("reading the backup trailer")?,
            other => bail!("the backup is corrupt (record tag {other})"),
        }
    };
    let expected = r.hasher.finalize_reset();
    let mut digest = [0u8; 32];
    r.inner
        .read_exact(&mut digest)
        .context("the backup is truncated (no checksum)")?;
    if digest[..] != expected[..] {
        bail!("the backup's SHA-256 checksum does not match: the file is damaged");
    }
    if summary.records != records.len() as u64 {
        bail!(
            "the backup says it holds {} records but has {}",
            summary.records,
            records.len()
        );
    }
    Ok(Backup {
        header,
        records,
        summary,
    })
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn read_len(r: &mut impl Read) -> anyhow::Result<usize> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).context("the backup is truncated")?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FIELD {
        bail!("the backup is corrupt (a field of {len} bytes)");
    }
    Ok(len)
}

fn read_field(r: &mut impl Read) -> anyhow::Result<Vec<u8>> {
    let len = read_len(r)?;
    let mut v = vec![0u8; len];
    r.read_exact(&mut v).context("the backup is truncated")?;
    Ok(v)
}

fn read_json<T: serde::de::DeserializeOwned>(r: &mut impl Read) -> anyhow::Result<T> {
    Ok(serde_json::from_slice(&read_field(r)?)?)
}

/// SHA-256 over every live key-value entry (key, value, revision) in key order: two states
/// with the same digest hold the same keys, values and revisions.
pub fn kv_digest<'a>(entries: impl IntoIterator<Item = (&'a str, &'a [u8], u64)>) -> String {
    let mut h = Sha256::new();
    let mut n = 0u64;
    for (k, v, rev) in entries {
        h.update((k.len() as u64).to_be_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_be_bytes());
        h.update(v);
        h.update(rev.to_be_bytes());
        n += 1;
    }
    h.update(n.to_be_bytes());
    hex::encode(h.finalize())
}

/// The key-value digest of a backup's records (see [`kv_digest`]).
pub fn backup_kv_digest(backup: &Backup) -> anyhow::Result<String> {
    let mut entries = Vec::new();
    for (k, v) in &backup.records {
        if let Some(key) = k.strip_prefix(b"k:") {
            let e: raft::state::KvEntry = codec::decode(v)?;
            entries.push((String::from_utf8(key.to_vec())?, e));
        }
    }
    Ok(kv_digest(entries.iter().map(|(k, e)| {
        (k.as_str(), e.value.as_slice(), e.revision)
    })))
}

/// Loads `backup` into the empty data dir `data_dir`. The state keeps its data, revisions and
/// counters, and forgets the old cluster (its id, join tokens, removed node ids, membership and
/// log position), so `stackd serve` on this dir starts a new cluster.
pub fn restore_into(backup: &Backup, data_dir: &Path) -> anyhow::Result<()> {
    if data_dir.exists()
        && std::fs::read_dir(data_dir)
            .with_context(|| format!("reading {}", data_dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} is not empty: restore only into a new, empty data dir",
            data_dir.display()
        );
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let mut records = Vec::with_capacity(backup.records.len());
    for (k, v) in &backup.records {
        if k == raft::state::SECURITY_KEY {
            // Join tokens and removed node ids belong to the old cluster.
            continue;
        }
        if k == META_KEY {
            let mut meta: Meta = codec::decode(v)?;
            meta.cluster_id = None;
            meta.join_token_sha256 = None;
            meta.last_applied = None;
            meta.last_membership = Default::default();
            records.push((k.clone(), codec::encode(&meta)?));
        } else {
            records.push((k.clone(), v.clone()));
        }
    }
    let db = Db::open(&data_dir.join("db")).context("opening RocksDB")?;
    db.sm_replace(records)?;
    drop(db);
    std::fs::write(
        data_dir.join(RESTORED_MARKER),
        serde_json::to_vec_pretty(&serde_json::json!({
            "from_cluster_id": backup.header.cluster_id,
            "summary": backup.summary,
        }))?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_reads_back_and_any_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let mut batch = storage::SmBatch::default();
        for i in 0..2000u32 {
            batch.put(format!("k:key{i:05}").into_bytes(), vec![i as u8; 300]);
        }
        db.sm_write(batch).unwrap();
        let header = Header {
            format: 1,
            cluster_id: Some("c".into()),
            node_id: 1,
            created_ms: 5,
        };
        let mut chunks = Vec::new();
        let summary = write(&db, &header, |c| {
            chunks.push(c);
            true
        })
        .unwrap();
        assert!(
            chunks.len() > 1,
            "a large state is streamed in several chunks"
        );
        assert_eq!(summary.records, 2000);
        let bytes: Vec<u8> = chunks.concat();
        let b = read(&bytes[..]).unwrap();
        assert_eq!(b.header, header);
        assert_eq!(b.records, db.sm_export().unwrap());

        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 1;
        assert!(read(&flipped[..]).is_err(), "a flipped bit is caught");
        let err = read(&bytes[..bytes.len() - 10]).err().unwrap().to_string();
        assert!(err.contains("truncated"), "{err}");
        assert!(read(&b"hello"[..]).is_err());
    }
}
