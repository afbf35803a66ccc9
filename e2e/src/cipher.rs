//! `A256CBC-HS512` (RFC 7518 §5.2.5): AES-256-CBC with PKCS#7 padding, then
//! HMAC-SHA-512 over `AAD ‖ IV ‖ ciphertext ‖ AAD bit length`, truncated to 32 bytes.
//!
//! Decryption checks the tag, in constant time, before it looks at the padding: without
//! the MAC key nobody can reach the padding check, so there is no padding oracle.

use aes::Aes256;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use hmac::{Hmac, Mac};
use sha2::Sha512;
use subtle::ConstantTimeEq;

use crate::OpenError;

/// The content key: the first half keys the MAC, the second the cipher.
pub const KEY_LEN: usize = 64;
pub const IV_LEN: usize = 16;
pub const TAG_LEN: usize = 32;

pub struct Sealed {
    pub ciphertext: Vec<u8>,
    pub tag: [u8; TAG_LEN],
}

pub fn encrypt(key: &[u8; KEY_LEN], iv: &[u8; IV_LEN], aad: &[u8], plaintext: &[u8]) -> Sealed {
    let (mac_key, enc_key) = key.split_at(KEY_LEN / 2);
    let ciphertext = cbc::Encryptor::<Aes256>::new(enc_key.into(), iv.into())
        .encrypt_padded_vec_mut::<Pkcs7>(plaintext);
    let tag = tag(mac_key, aad, iv, &ciphertext);
    Sealed { ciphertext, tag }
}

/// Every failure is the one [`OpenError::Undecryptable`]: which check failed is
/// exactly what an attacker probing with altered envelopes wants to learn.
pub fn decrypt(
    key: &[u8; KEY_LEN],
    iv: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
    tag_given: &[u8],
) -> Result<Vec<u8>, OpenError> {
    let iv: &[u8; IV_LEN] = iv.try_into().map_err(|_| OpenError::Undecryptable)?;
    if tag_given.len() != TAG_LEN {
        return Err(OpenError::Undecryptable);
    }
    let (mac_key, enc_key) = key.split_at(KEY_LEN / 2);
    let expected = tag(mac_key, aad, iv, ciphertext);
    if !bool::from(expected.ct_eq(tag_given)) {
        return Err(OpenError::Undecryptable);
    }
    cbc::Decryptor::<Aes256>::new(enc_key.into(), iv.into())
        .decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
        .map_err(|_| OpenError::Undecryptable)
}

fn tag(mac_key: &[u8], aad: &[u8], iv: &[u8], ciphertext: &[u8]) -> [u8; TAG_LEN] {
    // HMAC takes a key of any length; 32 bytes here, so this cannot fail.
    let mut mac = <Hmac<Sha512> as Mac>::new_from_slice(mac_key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    mac.update(aad);
    mac.update(iv);
    mac.update(ciphertext);
    mac.update(&((aad.len() as u64) * 8).to_be_bytes());
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(&full[..TAG_LEN]);
    out
}
