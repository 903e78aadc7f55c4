//! Length-prefixed frames on QUIC streams: `[u32 big-endian length][encoded message]`.

use quinn::{RecvStream, SendStream};
use raft::codec;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

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

/// Reads one frame's bytes, refusing frames over `limit` before allocating them.
pub async fn read_raw(recv: &mut RecvStream, limit: usize) -> Result<Vec<u8>> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.map_err(read_error)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(Error::FrameTooLarge { size: len, limit });
    }
    let mut buf = vec![0u8; len];
    recv.read_exact(&mut buf).await.map_err(read_error)?;
    Ok(buf)
}

/// Reads and decodes one frame.
pub async fn read_msg<T: DeserializeOwned>(recv: &mut RecvStream, limit: usize) -> Result<T> {
    let bytes = read_raw(recv, limit).await?;
    Ok(codec::decode(&bytes)?)
}

fn read_error(e: quinn::ReadExactError) -> Error {
    match e {
        quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c)) => {
            Error::Read(format!("connection lost: {}", crate::endpoint::explain(&c)))
        }
        other => Error::Read(other.to_string()),
    }
}
