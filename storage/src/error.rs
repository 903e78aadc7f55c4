use thiserror::Error;

/// Errors of the storage layer.
#[derive(Debug, Error)]
pub enum Error {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("data dir is corrupt: {0}")]
    Corrupt(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io(e) => e,
            Error::Corrupt(m) => std::io::Error::new(std::io::ErrorKind::InvalidData, m),
            other => std::io::Error::other(other.to_string()),
        }
    }
}
