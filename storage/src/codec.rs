//! The one binary encoding of everything stackd persists or sends between nodes.
//!
//! Every encoded value starts with a format-version byte so that a future format can be told
//! apart from this one instead of being misread. The body is postcard. Persisted types follow
//! the rules in ARCHITECTURE.md (no `flatten`/`untagged`/`skip_serializing_if`, enum variants
//! only appended).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// The format-version byte written in front of every encoded value.
///
/// 2: commands and results are grouped by primitive (`Command::Kv(KvCmd::Put { .. })`).
/// Format 1 data (from earlier builds) is refused rather than misread.
pub const FORMAT_VERSION: u8 = 2;

/// Encodes `value` as `[FORMAT_VERSION] ++ postcard(value)`.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    postcard::to_extend(value, vec![FORMAT_VERSION]).map_err(|e| Error::Codec(e.to_string()))
}

/// Decodes bytes produced by [`encode`]; refuses an unknown format version.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, body)) => {
            postcard::from_bytes(body).map_err(|e| Error::Codec(e.to_string()))
        }
        Some((v, _)) if *v < FORMAT_VERSION => Err(Error::Codec(format!(
            "data of format {v} was written by an earlier stackd; this build reads format \
             {FORMAT_VERSION} (start from an empty data dir and restore a backup made by this build)"
        ))),
        Some((v, _)) => Err(Error::Codec(format!("unknown format version {v}"))),
        None => Err(Error::Codec("empty value".into())),
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
        assert!(decode::<(u64, String, Option<Vec<u8>>)>(&bad).is_err());
        assert!(decode::<u64>(&[]).is_err());
    }
}
