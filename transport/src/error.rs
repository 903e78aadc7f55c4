use thiserror::Error;

/// Errors of the cluster transport.
#[derive(Debug, Error)]
pub enum Error {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("connection lost: {}", crate::endpoint::explain(.0))]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream write failed: {}", write_error(.0))]
    Write(#[from] quinn::WriteError),
    #[error("stream read failed: {0}")]
    Read(String),
    #[error("frame of {size} bytes is over the {limit}-byte limit")]
    FrameTooLarge { size: usize, limit: usize },
    #[error("codec: {0}")]
    Codec(#[from] raft::codec::Error),
    #[error("tls: {0}")]
    Tls(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer refused: {0}")]
    Refused(String),
    #[error("timed out after {0} ms")]
    Timeout(u64),
    #[error("{0}")]
    Removed(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn write_error(e: &quinn::WriteError) -> String {
    match e {
        quinn::WriteError::ConnectionLost(c) => {
            format!("connection lost: {}", crate::endpoint::explain(c))
        }
        other => other.to_string(),
    }
}
