//! Snapshot files: how a snapshot is stored, sent, received and installed without ever being
//! held in memory.
//!
//! A snapshot file holds the bytes of `SnapshotFile { meta, data }` encoded whole: the format
//! version, the meta (postcard), the data's length (a varint), then the data. The data is the
//! encoded `sm` column family, `Vec<(key, value)>`: the format version, the count, then each
//! key and value after its length. A file is built in a stream from a RocksDB view
//! ([`crate::StateMachine`]), sent from its file in chunks, received into a file of the same
//! layout ([`SnapshotSink`]) and installed from its file by reading one pair at a time
//! ([`Pairs`]).

use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::AsyncWriteExt;

use crate::codec;
use crate::network::SnapshotMeta;

/// What a received snapshot's temporary file is called, before it is installed.
const RECEIVING_EXTENSION: &str = "receiving";
/// Whether `path` is a received snapshot's temporary file.
fn is_received(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == RECEIVING_EXTENSION)
}

/// The most the header (version, meta, data length) may take: a meta is a membership.
const HEADER_MAX: u64 = 1 << 20;

/// A snapshot's data, in its file: read from there in chunks to be sent, and installed from
/// there. What openraft carries between the state machine and the network.
#[derive(Debug)]
pub struct SnapshotData {
    file: std::fs::File,
    path: PathBuf,
    /// Where the data starts in the file, and its length.
    offset: u64,
    len: u64,
}

impl SnapshotData {
    /// Opens the snapshot file at `path`: its meta and its data. `None` if there is none.
    pub fn open(path: &Path) -> io::Result<Option<(SnapshotMeta, SnapshotData)>> {
        let mut file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let file_len = file.metadata()?.len();
        let mut head = Vec::new();
        (&mut file).take(HEADER_MAX).read_to_end(&mut head)?;
        let bad = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("snapshot file {}: {what}", path.display()),
            )
        };
        let body = match head.split_first() {
            Some((&codec::FORMAT_VERSION, body)) => body,
            _ => return Err(bad("unknown format version")),
        };
        let (meta, rest): (SnapshotMeta, &[u8]) =
            postcard::take_from_bytes(body).map_err(|e| bad(&format!("meta: {e}")))?;
        let (len, rest): (u64, &[u8]) =
            postcard::take_from_bytes(rest).map_err(|e| bad(&format!("data length: {e}")))?;
        let offset = (head.len() - rest.len()) as u64;
        if offset + len != file_len {
            return Err(bad(&format!(
                "{file_len} bytes, where the header announces {}",
                offset + len
            )));
        }
        Ok(Some((
            meta,
            SnapshotData {
                file,
                path: path.to_path_buf(),
                offset,
                len,
            },
        )))
    }

    /// The data's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the data is empty (never, for a snapshot file: it holds at least its count).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The data, to be read from its first byte to its last (and no further).
    pub fn into_reader(self) -> io::Result<impl tokio::io::AsyncRead + Unpin + Send> {
        use tokio::io::AsyncReadExt;
        let mut file = self.file.try_clone()?;
        file.seek(SeekFrom::Start(self.offset))?;
        Ok(tokio::fs::File::from_std(file).take(self.len))
    }

    /// The (key, value) pairs of the data, read one at a time. Blocking.
    pub fn pairs(&self) -> io::Result<Pairs> {
        let mut file = self.file.try_clone()?;
        file.seek(SeekFrom::Start(self.offset))?;
        Pairs::new(BufReader::with_capacity(1 << 20, file.take(self.len)))
    }

    /// Makes this the snapshot file at `path` (its meta `meta`) and answers it there: a
    /// received file is renamed there, any other (another node's, in tests) copied in chunks
    /// to a temporary file that is synced and renamed. Blocking.
    pub fn keep_as(mut self, path: &Path, meta: &SnapshotMeta) -> io::Result<SnapshotData> {
        if self.path == path {
            return Ok(self);
        }
        if is_received(&self.path) && self.path.parent() == path.parent() {
            std::fs::rename(&self.path, path)?;
            sync_dir(path)?;
            // The open file is the renamed one; under its new name, dropping it removes nothing.
            self.path = path.to_path_buf();
            return Ok(self);
        }
        self.file.seek(SeekFrom::Start(self.offset))?;
        let mut data = (&mut self.file).take(self.len);
        write_snapshot_file(path, meta, self.len, |out| {
            let copied = io::copy(&mut data, out)?;
            if copied != self.len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the snapshot file ended early",
                ));
            }
            Ok(())
        })?;
        SnapshotData::open(path)?
            .map(|(_, kept)| kept)
            .ok_or_else(|| io::Error::other("the snapshot file just written is gone"))
    }
}

/// A received snapshot that was not installed (openraft refused it, or the install failed
/// before its file was renamed into place) leaves no file behind.
impl Drop for SnapshotData {
    fn drop(&mut self) {
        if is_received(&self.path) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A snapshot being received from the leader: its chunks are written to a file of the
/// snapshot file's layout beside the node's snapshot, which [`SnapshotSink::finish`] hands
/// over for installing. Dropped unfinished, the file is removed.
pub struct SnapshotSink {
    out: Option<tokio::io::BufWriter<tokio::fs::File>>,
    path: PathBuf,
    /// Data bytes still expected.
    remaining: u64,
}

impl SnapshotSink {
    /// Starts receiving a snapshot of `len` data bytes into the directory `dir`.
    pub async fn create(dir: &Path, meta: &SnapshotMeta, len: u64) -> io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(
            "snapshot-{}-{n}.{RECEIVING_EXTENSION}",
            std::process::id()
        ));
        let file = tokio::fs::File::create(&path).await?;
        let mut sink = SnapshotSink {
            out: Some(tokio::io::BufWriter::with_capacity(1 << 20, file)),
            path,
            remaining: len,
        };
        let head = header(meta, len)?;
        sink.writer().write_all(&head).await?;
        Ok(sink)
    }

    fn writer(&mut self) -> &mut tokio::io::BufWriter<tokio::fs::File> {
        self.out.as_mut().expect("an unfinished sink has its file")
    }

    /// Data bytes still expected.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Appends a chunk of data; refuses one past the announced length.
    pub async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        if chunk.len() as u64 > self.remaining {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "snapshot longer than announced",
            ));
        }
        self.remaining -= chunk.len() as u64;
        self.writer().write_all(chunk).await
    }

    /// The whole snapshot, synced to disk, ready to install.
    pub async fn finish(mut self) -> io::Result<SnapshotData> {
        if self.remaining != 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("snapshot short by {} bytes", self.remaining),
            ));
        }
        let mut out = self.out.take().expect("an unfinished sink has its file");
        out.flush().await?;
        out.into_inner().sync_all().await?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || SnapshotData::open(&path))
            .await
            .map_err(io::Error::other)??
            .map(|(_, data)| data)
            .ok_or_else(|| io::Error::other("the received snapshot file vanished"))
    }
}

impl Drop for SnapshotSink {
    fn drop(&mut self) {
        if self.out.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Removes what unfinished receives left in `dir` (a node stopped while receiving).
pub fn remove_unfinished(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if is_received(&path) {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// The (key, value) pairs of a snapshot's data, read one at a time.
pub struct Pairs {
    input: BufReader<io::Take<std::fs::File>>,
    /// Pairs still to read.
    left: u64,
}

impl Pairs {
    fn new(mut input: BufReader<io::Take<std::fs::File>>) -> io::Result<Self> {
        let mut version = [0u8; 1];
        input.read_exact(&mut version)?;
        if version[0] != codec::FORMAT_VERSION {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("snapshot data of format version {}", version[0]),
            ));
        }
        let left = read_varint(&mut input)?;
        Ok(Pairs { input, left })
    }

    fn read_bytes(&mut self) -> io::Result<Vec<u8>> {
        let len = read_varint(&mut self.input)?;
        let mut buf = Vec::new();
        (&mut self.input).take(len).read_to_end(&mut buf)?;
        if buf.len() as u64 != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "snapshot data ends inside a pair",
            ));
        }
        Ok(buf)
    }
}

impl Iterator for Pairs {
    type Item = io::Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            // Nothing may follow the last pair.
            return match self.input.fill_buf() {
                Ok([]) => None,
                Ok(_) => {
                    self.left = u64::MAX;
                    Some(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "snapshot data goes on past its last pair",
                    )))
                }
                Err(e) => Some(Err(e)),
            };
        }
        if self.left == u64::MAX {
            return None;
        }
        self.left -= 1;
        let pair = self.read_bytes().and_then(|k| Ok((k, self.read_bytes()?)));
        if pair.is_err() {
            self.left = u64::MAX;
        }
        Some(pair)
    }
}

/// Reads a varint as postcard writes it (LEB128, at most 10 bytes for a u64).
fn read_varint(input: &mut impl Read) -> io::Result<u64> {
    let mut n = 0u64;
    for i in 0..10 {
        let mut b = [0u8; 1];
        input.read_exact(&mut b)?;
        let low = u64::from(b[0] & 0x7f);
        if i == 9 && b[0] > 1 {
            break;
        }
        n |= low << (7 * i);
        if b[0] & 0x80 == 0 {
            return Ok(n);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "a length in the snapshot overflows 64 bits",
    ))
}

/// The header of a snapshot file: the format version, the meta, the data's length.
fn header(meta: &SnapshotMeta, data_len: u64) -> io::Result<Vec<u8>> {
    let mut head = vec![codec::FORMAT_VERSION];
    head.extend_from_slice(&postcard::to_allocvec(meta).map_err(io::Error::other)?);
    write_varint(&mut head, data_len)?;
    Ok(head)
}

/// Writes the snapshot file at `path`: its header, then its data (of `data_len` bytes)
/// written by `write_data`, into a temp file that is synced and renamed into place (a crash
/// leaves the old snapshot or the new one, never half of one). Blocking.
pub(crate) fn write_snapshot_file(
    path: &Path,
    meta: &SnapshotMeta,
    data_len: u64,
    write_data: impl FnOnce(&mut io::BufWriter<std::fs::File>) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut out = io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
    out.write_all(&header(meta, data_len)?)?;
    write_data(&mut out)?;
    let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    sync_dir(path)
}

/// Syncs the directory holding `path`, so a rename into it survives a crash.
fn sync_dir(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// `n` as postcard writes a length (a varint), into `buf`.
fn varint(n: u64, buf: &mut [u8; 10]) -> &[u8] {
    postcard::to_slice(&n, buf).expect("a u64 varint fits in 10 bytes")
}

pub(crate) fn varint_len(n: u64) -> u64 {
    varint(n, &mut [0; 10]).len() as u64
}

pub(crate) fn write_varint(out: &mut impl io::Write, n: u64) -> io::Result<()> {
    out.write_all(varint(n, &mut [0; 10]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_read_back_as_postcard_writes_them() {
        for n in [0, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            let mut buf = Vec::new();
            write_varint(&mut buf, n).unwrap();
            assert_eq!(read_varint(&mut buf.as_slice()).unwrap(), n, "{n}");
        }
        let too_long = [0xffu8; 11];
        assert!(read_varint(&mut too_long.as_slice()).is_err());
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    /// A received snapshot reads back as sent; one cut short, refused or never installed
    /// leaves no file behind.
    #[tokio::test]
    async fn a_received_snapshot_leaves_no_file_unless_it_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SnapshotMeta::default();
        // The data of one pair: version, count 1, key "k", value "v".
        let data = [codec::FORMAT_VERSION, 1, 1, b'k', 1, b'v'];

        let mut cut = SnapshotSink::create(dir.path(), &meta, data.len() as u64)
            .await
            .unwrap();
        cut.write(&data[..2]).await.unwrap();
        assert_eq!(files(dir.path()).len(), 1);
        drop(cut);
        assert!(
            files(dir.path()).is_empty(),
            "an unfinished receive is removed"
        );

        let mut long = SnapshotSink::create(dir.path(), &meta, 2).await.unwrap();
        assert!(long.write(&data).await.is_err(), "longer than announced");
        assert!(long.finish().await.is_err(), "short of what was announced");
        assert!(files(dir.path()).is_empty());

        let mut sink = SnapshotSink::create(dir.path(), &meta, data.len() as u64)
            .await
            .unwrap();
        sink.write(&data[..3]).await.unwrap();
        sink.write(&data[3..]).await.unwrap();
        let received = sink.finish().await.unwrap();
        let pairs: Vec<_> = received
            .pairs()
            .unwrap()
            .collect::<io::Result<_>>()
            .unwrap();
        assert_eq!(pairs, [(b"k".to_vec(), b"v".to_vec())]);
        drop(received);
        assert!(
            files(dir.path()).is_empty(),
            "a received snapshot never kept is removed"
        );

        let mut sink = SnapshotSink::create(dir.path(), &meta, data.len() as u64)
            .await
            .unwrap();
        sink.write(&data).await.unwrap();
        let kept = dir.path().join("snapshot.bin");
        let kept_data = sink.finish().await.unwrap().keep_as(&kept, &meta).unwrap();
        assert_eq!(kept_data.pairs().unwrap().count(), 1);
        drop(kept_data);
        assert_eq!(files(dir.path()), ["snapshot.bin"]);
        let (read_meta, read) = SnapshotData::open(&kept).unwrap().unwrap();
        assert_eq!(read_meta, meta);
        assert_eq!(read.pairs().unwrap().count(), 1);
    }
}
