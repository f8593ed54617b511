//! Text data: `key=value` pairs each terminated by a NUL (RFC 7143 §6.1), used
//! by Login and Text Requests/Responses.
//!
//! Parsing enforces limits before anything is kept: key names are at most 63
//! bytes (§6.1), values at most [`MAX_VALUE_LEN`] bytes (§6.1: 255 for most
//! values, 8192 for the longest ones, e.g. CHAP challenges), and the text of one
//! request, gathered across continuations (C bit, §11.10.2, §11.12.2), at most
//! [`MAX_TEXT_LEN`].

/// Longest key name (RFC 7143 §6.1).
pub const MAX_KEY_LEN: usize = 63;
/// Longest value we accept (RFC 7143 §6.1: binary values up to 8192 bytes).
pub const MAX_VALUE_LEN: usize = 8192;
/// Longest text gathered across continuation PDUs.
pub const MAX_TEXT_LEN: usize = 64 * 1024;
/// Most pairs in one request: bounds the vector a peer can make us build.
pub const MAX_PAIRS: usize = 1024;

/// Why a text segment could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("text data longer than {MAX_TEXT_LEN} bytes")]
    TooLong,
    #[error("more than {MAX_PAIRS} key=value pairs")]
    TooManyPairs,
    #[error("key longer than {MAX_KEY_LEN} bytes")]
    KeyTooLong,
    #[error("value of {key} longer than {MAX_VALUE_LEN} bytes")]
    ValueTooLong { key: String },
    #[error("key=value pair without '='")]
    MissingEquals,
    #[error("empty key name")]
    EmptyKey,
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    #[error("invalid character in key name")]
    InvalidKeyChar,
}

/// One `key=value` pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// Key names use letters, digits and `.-+@_` (RFC 7143 §6.1), plus the `X-` and
/// `X#` prefixes' characters.
fn valid_key_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'+' | b'@' | b'_' | b'#')
}

/// Parses a complete text segment. Trailing NUL padding is tolerated (§6.1:
/// every pair ends with a NUL; a last pair without NUL is accepted).
pub fn parse(data: &[u8]) -> Result<Vec<KeyValue>, TextError> {
    if data.len() > MAX_TEXT_LEN {
        return Err(TextError::TooLong);
    }
    let mut out = Vec::new();
    for item in data.split(|&b| b == 0) {
        if item.is_empty() {
            continue;
        }
        if out.len() >= MAX_PAIRS {
            return Err(TextError::TooManyPairs);
        }
        let eq = item
            .iter()
            .position(|&b| b == b'=')
            .ok_or(TextError::MissingEquals)?;
        let (k, v) = (&item[..eq], &item[eq + 1..]);
        if k.is_empty() {
            return Err(TextError::EmptyKey);
        }
        if k.len() > MAX_KEY_LEN {
            return Err(TextError::KeyTooLong);
        }
        if !k.iter().all(|&c| valid_key_char(c)) {
            return Err(TextError::InvalidKeyChar);
        }
        let key = std::str::from_utf8(k).map_err(|_| TextError::InvalidUtf8)?;
        if v.len() > MAX_VALUE_LEN {
            return Err(TextError::ValueTooLong {
                key: key.to_string(),
            });
        }
        let value = std::str::from_utf8(v).map_err(|_| TextError::InvalidUtf8)?;
        out.push(KeyValue {
            key: key.to_string(),
            value: value.to_string(),
        });
    }
    Ok(out)
}

/// Appends `key=value\0` (RFC 7143 §6.1).
pub fn encode_pair(out: &mut Vec<u8>, key: &str, value: &str) {
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value.as_bytes());
    out.push(0);
}

/// Encodes a list of pairs.
pub fn encode(pairs: &[KeyValue]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in pairs {
        encode_pair(&mut out, &p.key, &p.value);
    }
    out
}

/// Gathers a text segment across continuation PDUs (C bit) up to a limit.
#[derive(Debug, Default, Clone)]
pub struct TextCollector {
    buf: Vec<u8>,
}

impl TextCollector {
    /// Appends one PDU's data segment. The size is checked before copying.
    pub fn push(&mut self, data: &[u8]) -> Result<(), TextError> {
        if self.buf.len() + data.len() > MAX_TEXT_LEN {
            return Err(TextError::TooLong);
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    /// Takes the gathered text, leaving the collector empty.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
    pub fn clear(&mut self) {
        self.buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let pairs = vec![
            KeyValue {
                key: "InitiatorName".into(),
                value: "iqn.2024-01.org.x:a".into(),
            },
            KeyValue {
                key: "SessionType".into(),
                value: "Normal".into(),
            },
            KeyValue {
                key: "X-com.example.foo".into(),
                value: "".into(),
            },
        ];
        let bytes = encode(&pairs);
        assert_eq!(parse(&bytes).unwrap(), pairs);
    }

    #[test]
    fn limits() {
        let long_key = format!("{}=1\0", "K".repeat(64));
        assert_eq!(parse(long_key.as_bytes()), Err(TextError::KeyTooLong));
        let ok_key = format!("{}=1\0", "K".repeat(63));
        assert!(parse(ok_key.as_bytes()).is_ok());
        let long_val = format!("A={}\0", "v".repeat(8193));
        assert!(matches!(
            parse(long_val.as_bytes()),
            Err(TextError::ValueTooLong { .. })
        ));
        assert_eq!(parse(b"novalue\0"), Err(TextError::MissingEquals));
        assert_eq!(parse(b"=v\0"), Err(TextError::EmptyKey));
        assert_eq!(parse(b"a b=v\0"), Err(TextError::InvalidKeyChar));
        assert_eq!(parse(b"a=\xff\0"), Err(TextError::InvalidUtf8));
        // Last pair without terminator, and NUL padding.
        assert_eq!(parse(b"a=1\0b=2").unwrap().len(), 2);
        assert_eq!(parse(b"a=1\0\0\0\0").unwrap().len(), 1);
        // Value containing '='.
        assert_eq!(parse(b"a=b=c\0").unwrap()[0].value, "b=c");
    }

    #[test]
    fn collector_limit() {
        let mut c = TextCollector::default();
        c.push(&vec![b'a'; MAX_TEXT_LEN - 1]).unwrap();
        assert_eq!(c.push(b"bb"), Err(TextError::TooLong));
        c.push(b"b").unwrap();
        assert_eq!(c.take().len(), MAX_TEXT_LEN);
        assert!(c.is_empty());
    }

    proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok(pairs) = parse(&data) {
                for p in pairs {
                    prop_assert!(p.key.len() <= MAX_KEY_LEN);
                    prop_assert!(p.value.len() <= MAX_VALUE_LEN);
                }
            }
        }

        #[test]
        fn encode_parse_round_trip(
            pairs in proptest::collection::vec(("[A-Za-z][A-Za-z0-9.]{0,20}", "[ -~]{0,40}"), 0..10)
        ) {
            let kv: Vec<KeyValue> = pairs
                .into_iter()
                .map(|(key, value)| KeyValue { key, value })
                .collect();
            prop_assert_eq!(parse(&encode(&kv)).unwrap(), kv);
        }
    }
}
