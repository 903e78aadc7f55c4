//! Length-prefixed frames on QUIC streams: `[u32 big-endian length][encoded message]`.
//!
//! A frame's buffer grows as its bytes arrive, [`READ_CHUNK`] at a time, never from the
//! announced length: a peer that announces a large frame and sends a few bytes makes the
//! reader hold those few bytes (and at most one chunk of spare room), not the announced size.

use quinn::SendStream;
use raft::codec;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{Error, Result};

/// How much room a frame's buffer grows by, at most, before the bytes to fill it arrived.
pub const READ_CHUNK: usize = 64 << 10;

/// Writes one message as a frame.
pub async fn write_msg<T: Serialize>(send: &mut SendStream, msg: &T, limit: usize) -> Result<()> {
    let bytes = codec::encode(msg)?;
    write_raw(send, &bytes, limit).await
}

/// Writes raw bytes as a frame.
pub async fn write_raw(send: &mut SendStream, bytes: &[u8], limit: usize) -> Result<()> {
    if bytes.len() > limit {
        return Err(Error::FrameTooLarge {
            size: bytes.len(),
            limit,
        });
    }
    send.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    send.write_all(bytes).await?;
    Ok(())
}

/// Reads one frame's bytes; refuses a frame announced over `limit` before reading it.
pub async fn read_raw(recv: &mut (impl AsyncRead + Unpin), limit: usize) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    read_into(recv, limit, &mut buf).await?;
    Ok(buf)
}

/// Reads one frame's bytes into `buf` (cleared first), growing it as they arrive.
pub async fn read_into(
    recv: &mut (impl AsyncRead + Unpin),
    limit: usize,
    buf: &mut Vec<u8>,
) -> Result<()> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.map_err(read_error)?;
    read_body(recv, u32::from_be_bytes(len) as usize, limit, buf).await
}

/// Reads a frame's `len` bytes into `buf` (cleared first); refuses a length over `limit`.
async fn read_body(
    recv: &mut (impl AsyncRead + Unpin),
    len: usize,
    limit: usize,
    buf: &mut Vec<u8>,
) -> Result<()> {
    buf.clear();
    if len > limit {
        return Err(Error::FrameTooLarge { size: len, limit });
    }
    while buf.len() < len {
        let missing = len - buf.len();
        if buf.capacity() == buf.len() {
            // Full: grow by what the bytes received so far justify, one chunk at least.
            buf.reserve(missing.min(READ_CHUNK.max(buf.len())));
        }
        let room = (buf.capacity() - buf.len()).min(missing);
        let n = (&mut *recv)
            .take(room as u64)
            .read_buf(buf)
            .await
            .map_err(read_error)?;
        if n == 0 {
            return Err(Error::Read(format!(
                "stream ended after {} of the frame's {len} bytes",
                buf.len()
            )));
        }
    }
    Ok(())
}

/// Reads and decodes the next frame of a stream that carries many, or `None` when the stream
/// ends cleanly before it (the sender finished it after its last frame).
pub async fn next_msg<T: DeserializeOwned>(
    recv: &mut (impl AsyncRead + Unpin),
    limit: usize,
    buf: &mut Vec<u8>,
) -> Result<Option<T>> {
    let mut len = [0u8; 4];
    if recv.read(&mut len[..1]).await.map_err(read_error)? == 0 {
        return Ok(None);
    }
    recv.read_exact(&mut len[1..]).await.map_err(read_error)?;
    read_body(recv, u32::from_be_bytes(len) as usize, limit, buf).await?;
    Ok(Some(codec::decode(buf)?))
}

/// Reads and decodes one frame.
pub async fn read_msg<T: DeserializeOwned>(
    recv: &mut (impl AsyncRead + Unpin),
    limit: usize,
) -> Result<T> {
    let bytes = read_raw(recv, limit).await?;
    Ok(codec::decode(&bytes)?)
}

fn read_error(e: std::io::Error) -> Error {
    if let Some(quinn::ReadError::ConnectionLost(c)) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<quinn::ReadError>())
    {
        return Error::Read(format!("connection lost: {}", crate::endpoint::explain(c)));
    }
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        return Error::Read("stream ended inside a frame".into());
    }
    Error::Read(e.to_string())
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use tokio::io::ReadBuf;

    use super::*;

    /// Hands out `data`, then never anything more (a peer that went quiet), counting what it
    /// was asked for.
    struct Stalling {
        data: Vec<u8>,
        pos: usize,
        asked: usize,
    }

    impl AsyncRead for Stalling {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            self.asked = self.asked.max(buf.remaining());
            if self.pos == self.data.len() {
                return Poll::Pending;
            }
            let n = buf.remaining().min(self.data.len() - self.pos);
            let pos = self.pos;
            buf.put_slice(&self.data[pos..pos + n]);
            self.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    fn announcing(len: u32, body: &[u8]) -> Stalling {
        let mut data = len.to_be_bytes().to_vec();
        data.extend_from_slice(body);
        Stalling {
            data,
            pos: 0,
            asked: 0,
        }
    }

    #[tokio::test]
    async fn an_announced_frame_is_not_allocated_before_its_bytes_arrive() {
        let limit = 64 << 20;
        let mut peer = announcing(limit as u32, b"ten bytes!");
        let mut buf = Vec::new();
        let read = read_into(&mut peer, limit, &mut buf);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), read)
                .await
                .is_err(),
            "the rest of the frame never comes"
        );
        assert_eq!(buf, b"ten bytes!");
        assert!(
            buf.capacity() <= READ_CHUNK,
            "a 64 MiB announcement with 10 bytes sent holds {} bytes",
            buf.capacity()
        );
        assert!(peer.asked <= READ_CHUNK, "asked for {}", peer.asked);
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_is_refused_before_it_is_read() {
        let mut peer = announcing(1025, &[0; 1025]);
        let err = read_raw(&mut peer, 1024).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::FrameTooLarge {
                    size: 1025,
                    limit: 1024
                }
            ),
            "{err}"
        );
        assert_eq!(peer.pos, 4, "only the length prefix was read");
    }

    #[tokio::test]
    async fn frames_of_many_chunks_and_short_streams() {
        let body: Vec<u8> = (0..3 * READ_CHUNK + 17).map(|i| i as u8).collect();
        let mut data = (body.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(&body);
        data.extend_from_slice(&5u32.to_be_bytes());
        data.extend_from_slice(b"hello");
        data.extend_from_slice(&9u32.to_be_bytes());
        data.extend_from_slice(b"cut");
        let mut r: &[u8] = &data;
        assert_eq!(read_raw(&mut r, 1 << 20).await.unwrap(), body);
        assert_eq!(read_raw(&mut r, 1 << 20).await.unwrap(), b"hello");
        let err = read_raw(&mut r, 1 << 20).await.unwrap_err();
        assert!(
            err.to_string().contains("after 3 of the frame's 9 bytes"),
            "{err}"
        );
        let err = read_raw(&mut &[0u8, 0][..], 1 << 20).await.unwrap_err();
        assert!(err.to_string().contains("stream ended"), "{err}");
    }

    #[tokio::test]
    async fn a_stream_of_frames_ends_cleanly_only_between_frames() {
        let mut data = Vec::new();
        for word in ["one", "two"] {
            let bytes = codec::encode(&word.to_string()).unwrap();
            data.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            data.extend_from_slice(&bytes);
        }
        let mut buf = Vec::new();
        let mut r: &[u8] = &data;
        let mut got = Vec::new();
        while let Some(w) = next_msg::<String>(&mut r, 1024, &mut buf).await.unwrap() {
            got.push(w);
        }
        assert_eq!(got, ["one", "two"]);
        // Cut inside the length prefix, or inside the body: an error, not the end.
        for cut in [data.len() - 1, 2] {
            let mut r: &[u8] = &data[..cut];
            let mut result = Ok(None);
            for _ in 0..2 {
                result = next_msg::<String>(&mut r, 1024, &mut buf).await;
                if !matches!(result, Ok(Some(_))) {
                    break;
                }
            }
            assert!(result.is_err(), "cut at {cut}: {result:?}");
        }
    }
}
