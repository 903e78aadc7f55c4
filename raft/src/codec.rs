//! The one binary encoding of everything stackd persists or sends between nodes.
//!
//! Every encoded value starts with a format-version byte so that a future format can be told
//! apart from this one instead of being misread. The body is postcard. Persisted types follow
//! the rules in ARCHITECTURE.md (no `flatten`/`untagged`/`skip_serializing_if`, enum variants
//! only appended).

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The format-version byte written in front of every encoded value.
///
/// 2: commands and results are grouped by primitive (`Command::Kv(KvCmd::Put { .. })`).
/// Format 1 data (from earlier builds) is refused rather than misread.
pub const FORMAT_VERSION: u8 = 2;

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot encode: {0}")]
    Encode(postcard::Error),
    #[error("cannot decode: {0}")]
    Decode(postcard::Error),
    #[error(
        "data of format {0} was written by an earlier stackd; this build reads format {FORMAT_VERSION} \
         (start from an empty data dir and restore a backup made by this build)"
    )]
    EarlierVersion(u8),
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

/// How many bytes [`encode`] makes of `value`, counted without building them.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> Result<usize> {
    postcard::serialize_with_flavor(value, postcard::ser_flavors::Size::default())
        .map(|n: usize| n + 1)
        .map_err(Error::Encode)
}

/// Decodes bytes produced by [`encode`]; refuses an unknown format version.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    decode_borrowed(bytes)
}

/// Like [`decode`], for a value that borrows from `bytes` (byte slices, say) instead of
/// copying out of them.
pub fn decode_borrowed<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, body)) => postcard::from_bytes(body).map_err(Error::Decode),
        Some((&v, _)) if v < FORMAT_VERSION => Err(Error::EarlierVersion(v)),
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

    /// Values are encoded as bytes (`serde_bytes`: one copy, not a serializer call per byte);
    /// in postcard that is the very encoding of a plain `Vec<u8>`, so data written either way
    /// reads back either way.
    #[test]
    fn byte_fields_encode_as_plain_vecs_do() {
        #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
        struct Plain {
            value: Vec<u8>,
            n: u64,
        }
        #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
        struct Bytes {
            #[serde(with = "serde_bytes")]
            value: Vec<u8>,
            n: u64,
        }
        let value: Vec<u8> = (0..=255).chain(0..=255).collect();
        let plain = encode(&Plain {
            value: value.clone(),
            n: 9,
        })
        .unwrap();
        let bytes = encode(&Bytes {
            value: value.clone(),
            n: 9,
        })
        .unwrap();
        assert_eq!(plain, bytes);
        assert_eq!(decode::<Bytes>(&plain).unwrap().value, value);
        assert_eq!(decode::<Plain>(&bytes).unwrap().value, value);
        assert_eq!(encoded_len(&Bytes { value, n: 9 }).unwrap(), bytes.len());
    }

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
        // Format 1 is refused with a message that says what to do.
        bad[0] = 1;
        let err = decode::<(u64, String, Option<Vec<u8>>)>(&bad).unwrap_err();
        assert!(matches!(err, Error::EarlierVersion(1)), "{err}");
        assert!(err.to_string().contains("restore a backup"), "{err}");
    }

    #[test]
    fn the_byte_format_is_pinned() {
        // Data dirs and peers hold these exact bytes: a change here needs a new version.
        assert_eq!(encode(&(7u64, "key")).unwrap(), [2, 7, 3, b'k', b'e', b'y']);
        assert_eq!(encode(&Some(300u32)).unwrap(), [2, 1, 0xac, 0x02]);
    }
}
