//! The one binary encoding of everything stackd persists or sends between nodes.
//!
//! Every encoded value starts with a format-version byte so that a future format can be told
//! apart from this one instead of being misread. The body is postcard. Persisted types follow
//! the rules in ARCHITECTURE.md (no `flatten`/`untagged`/`skip_serializing_if`, enum variants
//! only appended).

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The format-version byte written in front of every encoded value.
pub const FORMAT_VERSION: u8 = 1;

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot encode: {0}")]
    Encode(postcard::Error),
    #[error("cannot decode: {0}")]
    Decode(postcard::Error),
    #[error("unknown format version {0}")]
    UnknownVersion(u8),
    #[error("empty value")]
    Empty,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Encodes `value` as `[FORMAT_VERSION] ++ postcard(value)`.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    postcard::to_extend(value, vec![FORMAT_VERSION]).map_err(Error::Encode)
}

/// Decodes bytes produced by [`encode`]; refuses an unknown format version.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, body)) => postcard::from_bytes(body).map_err(Error::Decode),
        Some((&v, _)) => Err(Error::UnknownVersion(v)),
        None => Err(Error::Empty),
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

/// A value read from the data dir that does not decode means the data dir is corrupt.
impl From<Error> for storage::Error {
    fn from(e: Error) -> Self {
        storage::Error::Corrupt(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_check() {
        let v = (7u64, "key".to_string(), Some(vec![1u8, 2, 3]));
        let bytes = encode(&v).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        let back: (u64, String, Option<Vec<u8>>) = decode(&bytes).unwrap();
        assert_eq!(back, v);

        let mut bad = bytes.clone();
        bad[0] = 99;
        assert!(matches!(
            decode::<(u64, String, Option<Vec<u8>>)>(&bad),
            Err(Error::UnknownVersion(99))
        ));
        assert!(matches!(decode::<u64>(&[]), Err(Error::Empty)));
    }

    #[test]
    fn the_byte_format_is_unchanged() {
        // Data dirs and peers of earlier builds hold these exact bytes.
        assert_eq!(encode(&(7u64, "key")).unwrap(), [1, 7, 3, b'k', b'e', b'y']);
        assert_eq!(encode(&Some(300u32)).unwrap(), [1, 1, 0xac, 0x02]);
    }
}
