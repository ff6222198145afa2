//! The value codec: one version byte, then the value in postcard (a compact serde format with a
//! stable wire specification).
//!
//! Decoding is strict: an unknown version byte, a value that does not parse, or bytes left over
//! after the value are all errors. The caller turns the error into [`super::StoreError::Corrupt`];
//! it is never read as "nothing stored".

/// The current codec version, the first byte of every encoded value.
pub const VERSION: u8 = 1;

/// Encode a value.
pub fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    let mut out = vec![VERSION];
    out.extend_from_slice(&postcard::to_stdvec(value)?);
    Ok(out)
}

/// Decode a value. The error is a human-readable reason.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (version, body) = bytes.split_first().ok_or_else(|| "empty value".to_string())?;
    if *version != VERSION {
        return Err(format!("unknown codec version {version} (this build reads {VERSION})"));
    }
    let (value, rest) = postcard::take_from_bytes(body).map_err(|e| format!("undecodable value: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes after the value", rest.len()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let v = (7u64, "seven".to_string(), vec![1u8, 2, 3]);
        let bytes = encode(&v).expect("encode");
        assert_eq!(bytes[0], VERSION);
        assert_eq!(decode::<(u64, String, Vec<u8>)>(&bytes), Ok(v));
    }

    #[test]
    fn rejects_garbage() {
        assert!(decode::<u64>(&[]).is_err(), "empty");
        assert!(decode::<u64>(&[9, 1]).is_err(), "unknown version");
        assert!(decode::<String>(&[VERSION, 200]).is_err(), "truncated");
        assert!(decode::<u8>(&[VERSION, 1, 2]).is_err(), "trailing bytes");
    }
}
