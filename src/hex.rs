//! Lowercase hex, for hashes in key files and signatures in headers.

pub fn encode(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// 64 lowercase hex characters as 32 bytes, such as a SHA-256 digest. Strict, so a
/// stored hash has one spelling.
pub fn decode32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip_and_rejects() {
        let bytes: [u8; 32] = std::array::from_fn(|i| (i * 37) as u8);
        let text = super::encode(&bytes);
        assert_eq!(text.len(), 64);
        assert_eq!(super::decode32(&text), Some(bytes));
        assert_eq!(super::decode32(&text.to_uppercase()), None);
        assert_eq!(super::decode32(&text[1..]), None);
        assert_eq!(super::decode32(&format!("{}g", &text[1..])), None);
    }
}
