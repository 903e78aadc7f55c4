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
use raft::state::export;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use storage::Db;

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
    let summary = each_record(db, |k, v| {
        buf.push(1);
        buf.extend_from_slice(&(k.len() as u32).to_be_bytes());
        buf.extend_from_slice(k);
        buf.extend_from_slice(&(v.len() as u32).to_be_bytes());
        buf.extend_from_slice(v);
        if buf.len() >= CHUNK {
            flush(&mut buf, &mut hasher, &mut stopped);
        }
        !stopped
    })?;
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

/// The SHA-256 of every state record of `db` (key and value, length-prefixed, in key order),
/// read from one RocksDB snapshot, with the figures of that point. Nodes at the same applied
/// index hold the same state, so they answer the same digest.
pub fn digest(db: &Db) -> anyhow::Result<(Summary, [u8; 32])> {
    let mut hasher = Sha256::new();
    let summary = each_record(db, |k, v| {
        hasher.update((k.len() as u32).to_be_bytes());
        hasher.update(k);
        hasher.update((v.len() as u32).to_be_bytes());
        hasher.update(v);
        true
    })?;
    Ok((summary, hasher.finalize().into()))
}

/// Hands every state record of `db`, from one RocksDB snapshot, to `f` (which returns `false`
/// to stop), and answers the record count and the figures of that point.
fn each_record(db: &Db, mut f: impl FnMut(&[u8], &[u8]) -> bool) -> anyhow::Result<Summary> {
    let mut summary = Summary::default();
    let mut figures = export::Figures::default();
    let mut failed: Option<anyhow::Error> = None;
    db.sm_export_each(|k, v| {
        if let Err(e) = figures.observe(k, v) {
            failed = Some(e.into());
            return false;
        }
        summary.records += 1;
        f(k, v)
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    summary.last_applied_index = figures.last_applied_index;
    summary.revision = figures.revision;
    summary.compact_revision = figures.compact_revision;
    Ok(summary)
}

fn put_json<T: Serialize>(buf: &mut Vec<u8>, value: &T) -> anyhow::Result<()> {
    let json = serde_json::to_vec(value)?;
    buf.extend_from_slice(&(json.len() as u32).to_be_bytes());
    buf.extend_from_slice(&json);
    Ok(())
}

/// A backup read back whole and verified (for inspection and tests; restoring streams instead).
pub struct Backup {
    pub header: Header,
    pub records: Vec<(Vec<u8>, Vec<u8>)>,
    pub summary: Summary,
}

/// Reads and verifies a whole backup into memory: magic, structure, record count and checksum.
pub fn read(r: impl Read) -> anyhow::Result<Backup> {
    let mut records = Vec::new();
    let (header, summary) = read_each(r, |k, v| {
        records.push((k.to_vec(), v.to_vec()));
        Ok(())
    })?;
    Ok(Backup {
        header,
        records,
        summary,
    })
}

/// Reads a backup record by record, handing each (in key order) to `each`, and verifies it:
/// magic, structure, record count and the checksum at the end. Nothing `each` did may be
/// trusted until this returns `Ok`, since only then is the whole stream known to be intact.
pub fn read_each(
    r: impl Read,
    mut each: impl FnMut(&[u8], &[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<(Header, Summary)> {
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
    let mut records = 0u64;
    let mut k = Vec::new();
    let mut v = Vec::new();
    let trailer = loop {
        let mut tag = [0u8; 1];
        r.read_exact(&mut tag).context("the backup is truncated")?;
        match tag[0] {
            1 => {
                read_field_into(&mut r, &mut k)?;
                read_field_into(&mut r, &mut v)?;
                each(&k, &v)?;
                records += 1;
            }
            0 => {
                let mut trailer = Vec::new();
                read_field_into(&mut r, &mut trailer)?;
                break trailer;
            }
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
    // Parsed only once the checksum holds, so damage is reported as such.
    let summary: Summary =
        serde_json::from_slice(&trailer).context("reading the backup trailer")?;
    if summary.records != records {
        bail!(
            "the backup says it holds {} records but has {records}",
            summary.records
        );
    }
    Ok((header, summary))
}

/// Verifies a backup without keeping it in memory; returns its header, summary and key-value
/// digest (see [`kv_digest`]).
pub fn verify(r: impl Read) -> anyhow::Result<(Header, Summary, String)> {
    let mut digest = KvDigest::default();
    let (header, summary) = read_each(r, |k, v| digest.add_record(k, v))?;
    Ok((header, summary, digest.finish()))
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

/// Reads one length-prefixed field into `buf` (reused across records).
fn read_field_into(r: &mut impl Read, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    let len = read_len(r)?;
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf).context("the backup is truncated")?;
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(r: &mut impl Read) -> anyhow::Result<T> {
    let mut buf = Vec::new();
    read_field_into(r, &mut buf)?;
    Ok(serde_json::from_slice(&buf)?)
}

/// SHA-256 over every live key-value entry (key, value, revision) in key order: two states
/// with the same digest hold the same keys, values and revisions.
pub fn kv_digest<'a>(entries: impl IntoIterator<Item = (&'a str, &'a [u8], u64)>) -> String {
    let mut d = KvDigest::default();
    for (k, v, rev) in entries {
        d.add(k, v, rev);
    }
    d.finish()
}

/// [`kv_digest`] computed entry by entry.
#[derive(Default)]
pub struct KvDigest {
    hasher: Sha256,
    entries: u64,
}

impl KvDigest {
    pub fn add(&mut self, key: &str, value: &[u8], revision: u64) {
        let h = &mut self.hasher;
        h.update((key.len() as u64).to_be_bytes());
        h.update(key.as_bytes());
        h.update((value.len() as u64).to_be_bytes());
        h.update(value);
        h.update(revision.to_be_bytes());
        self.entries += 1;
    }

    /// Adds a state-machine record if it is a key-value entry (records come in key order).
    pub fn add_record(&mut self, k: &[u8], v: &[u8]) -> anyhow::Result<()> {
        if let Some(e) = export::kv_entry(k, v)? {
            let key = std::str::from_utf8(&e.key).context("a key that is not UTF-8")?;
            self.add(key, &e.value, e.revision);
        }
        Ok(())
    }

    pub fn finish(mut self) -> String {
        self.hasher.update(self.entries.to_be_bytes());
        hex::encode(self.hasher.finalize())
    }
}

/// The key-value digest of a backup's records (see [`kv_digest`]).
pub fn backup_kv_digest(backup: &Backup) -> anyhow::Result<String> {
    let mut d = KvDigest::default();
    for (k, v) in &backup.records {
        d.add_record(k, v)?;
    }
    Ok(d.finish())
}

/// Bytes of records written to RocksDB per batch while restoring.
const RESTORE_BATCH: usize = 4 << 20;

/// Streams a backup from `r` into the empty data dir `data_dir`, verifying it on the way. The
/// state keeps its data, revisions and counters, and forgets the old cluster (its id, join
/// tokens, removed node ids, membership and log position), so `stackd serve` on this dir
/// starts a new cluster.
///
/// Memory stays bounded by one batch whatever the backup's size. Until the checksum at the end
/// has been verified the dir holds [`RESTORE_INCOMPLETE`], which a start refuses; a failed
/// restore removes what it wrote.
pub fn restore_from(r: impl Read, data_dir: &Path) -> anyhow::Result<(Header, Summary)> {
    let existed = data_dir.exists();
    if existed
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
    let result = load(r, data_dir);
    if result.is_err() {
        // Leave the dir as it was: empty (or absent).
        let _ = std::fs::remove_dir_all(data_dir);
        if existed {
            let _ = std::fs::create_dir_all(data_dir);
        }
    }
    result
}

/// Marks a data dir whose restore has not finished (see [`restore_from`]).
pub const RESTORE_INCOMPLETE: &str = "restore-incomplete";

fn load(r: impl Read, data_dir: &Path) -> anyhow::Result<(Header, Summary)> {
    let incomplete = data_dir.join(RESTORE_INCOMPLETE);
    std::fs::write(
        &incomplete,
        "a restore into this dir did not finish; delete the dir and restore again\n",
    )?;
    let db = Db::open(&data_dir.join("db")).context("opening RocksDB")?;
    let mut batch = storage::SmBatch::default();
    let mut batch_bytes = 0usize;
    let (header, summary) = read_each(r, |k, v| {
        // Join tokens and removed node ids belong to the old cluster.
        let Some(v) = export::import(k, v)? else {
            return Ok(());
        };
        batch_bytes += k.len() + v.len();
        batch.put(k.to_vec(), v);
        if batch_bytes >= RESTORE_BATCH {
            db.sm_write(std::mem::take(&mut batch))?;
            batch_bytes = 0;
        }
        Ok(())
    })?;
    db.sm_write(batch)?;
    db.sync_wal()?;
    drop(db);
    std::fs::write(
        data_dir.join(RESTORED_MARKER),
        serde_json::to_vec_pretty(&serde_json::json!({
            "from_cluster_id": header.cluster_id,
            "summary": summary,
        }))?,
    )?;
    std::fs::remove_file(&incomplete)?;
    Ok((header, summary))
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::codec;
    use raft::state::{Meta, META_KEY};

    #[test]
    fn equal_states_have_equal_digests_and_any_difference_changes_it() {
        let open = |records: &[(&str, &str)]| {
            let dir = tempfile::tempdir().unwrap();
            let db = Db::open(dir.path()).unwrap();
            let mut batch = storage::SmBatch::default();
            for (k, v) in records {
                batch.put(k.as_bytes().to_vec(), v.as_bytes().to_vec());
            }
            db.sm_write(batch).unwrap();
            (dir, db)
        };
        let base = [("k:a", "1"), ("q:job", "x"), ("s:sess", "y")];
        let (_d1, one) = open(&base);
        let (_d2, two) = open(&base);
        let (summary, d) = digest(&one).unwrap();
        assert_eq!(summary.records, 3);
        assert_eq!(
            d,
            digest(&two).unwrap().1,
            "the same records, the same digest"
        );
        for changed in [
            [("k:a", "1"), ("q:job", "x"), ("s:sess", "z")],
            [("k:a", "1"), ("q:job", "x"), ("s:sesS", "y")],
            [("k:a", "1"), ("q:jo", "bx"), ("s:sess", "y")],
        ] {
            let (_d, other) = open(&changed);
            assert_ne!(d, digest(&other).unwrap().1, "{changed:?}");
        }
        let (_d, fewer) = open(&base[..2]);
        assert_ne!(d, digest(&fewer).unwrap().1, "a missing record");
    }

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

    type Records = Vec<(Vec<u8>, Vec<u8>)>;

    /// A backup with a meta record, a security record and `n` key-value entries, and the
    /// records it was made from.
    fn sample_backup(n: u32) -> (Vec<u8>, Records) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let mut batch = storage::SmBatch::default();
        let meta = Meta {
            revision: n as u64,
            next_node_id: 4,
            cluster_id: Some("old".into()),
            join_token_sha256: Some("digest".into()),
            ..Meta::default()
        };
        batch.put(META_KEY.to_vec(), codec::encode(&meta).unwrap());
        batch.put(
            raft::state::SECURITY_KEY.to_vec(),
            b"old cluster's tokens".to_vec(),
        );
        for i in 0..n {
            batch.put(format!("k:key{i:06}").into_bytes(), vec![i as u8; 1000]);
        }
        db.sm_write(batch).unwrap();
        let header = Header {
            format: 1,
            cluster_id: Some("old".into()),
            node_id: 1,
            created_ms: 5,
        };
        let mut chunks = Vec::new();
        write(&db, &header, |c| {
            chunks.push(c);
            true
        })
        .unwrap();
        (chunks.concat(), db.sm_export().unwrap())
    }

    #[test]
    fn a_restore_streams_the_records_and_forgets_the_old_cluster() {
        // 10,000 records of 1 KB: more than two restore batches.
        let (bytes, exported) = sample_backup(10_000);
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("restored");
        let (header, summary) = restore_from(&bytes[..], &data_dir).unwrap();
        assert_eq!(header.cluster_id.as_deref(), Some("old"));
        assert_eq!(summary.records, 10_002);
        assert!(data_dir.join(RESTORED_MARKER).exists());
        assert!(!data_dir.join(RESTORE_INCOMPLETE).exists());

        let db = Db::open(&data_dir.join("db")).unwrap();
        let loaded = db.sm_export().unwrap();
        let kv = |records: &[(Vec<u8>, Vec<u8>)]| -> Records {
            records
                .iter()
                .filter(|(k, _)| k.starts_with(b"k:"))
                .cloned()
                .collect()
        };
        assert_eq!(kv(&loaded), kv(&exported));
        assert!(
            loaded.iter().all(|(k, _)| k != raft::state::SECURITY_KEY),
            "the old cluster's tokens and removed ids are dropped"
        );
        let meta: Meta = codec::decode(&db.sm_get(META_KEY).unwrap().unwrap()).unwrap();
        assert_eq!(meta.revision, 10_000, "revisions go on from the backup's");
        assert_eq!(meta.next_node_id, 4, "node ids are still never reused");
        assert_eq!(meta.cluster_id, None);
        assert_eq!(meta.join_token_sha256, None);
        drop(db);

        let err = restore_from(&bytes[..], &data_dir).unwrap_err().to_string();
        assert!(err.contains("not empty"), "{err}");
    }

    #[test]
    fn a_damaged_backup_restores_nothing_and_leaves_the_dir_empty() {
        let (bytes, _) = sample_backup(10_000);
        let dir = tempfile::tempdir().unwrap();
        // A bit flipped near the end: several batches are written before the checksum fails.
        let mut damaged = bytes.clone();
        let at = bytes.len() - 2000;
        damaged[at] ^= 1;
        let err = restore_from(&damaged[..], dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("checksum"), "{err}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "an empty dir stays empty"
        );
        let fresh = dir.path().join("new");
        assert!(restore_from(&bytes[..bytes.len() - 7], &fresh).is_err());
        assert!(!fresh.exists(), "a dir the restore made is removed again");
    }
}
