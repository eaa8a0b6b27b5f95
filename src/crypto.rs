//! Secrets at rest: AES-256-GCM with a random 96-bit nonce per message.
//!
//! The key comes from `JIT_ENCRYPTION_KEY` (32 bytes, written as standard base64 or 64 hex
//! digits; `jit` can print a fresh one with [`generate_key`]). A sealed message is
//! `nonce (12 bytes) || ciphertext || tag (16 bytes)`. Callers pass associated data (AAD) that
//! binds the ciphertext to its row, such as `request:42`, so a ciphertext copied to another row
//! fails to open.

use std::fmt;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};

/// Length of the nonce prepended to every sealed message.
pub const NONCE_LEN: usize = 12;
/// Length of the GCM authentication tag appended to the ciphertext.
pub const TAG_LEN: usize = 16;
/// Length of the key in bytes.
pub const KEY_LEN: usize = 32;

/// Why a key was refused. The texts never contain the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "the encryption key is empty; set JIT_ENCRYPTION_KEY to 32 random bytes in base64 (for example from `openssl rand -base64 32`)"
    )]
    Empty,
    #[error(
        "the encryption key is neither base64 nor hex; set JIT_ENCRYPTION_KEY to 32 random bytes in base64 (44 characters) or hex (64 characters)"
    )]
    NotEncoded,
    #[error(
        "the encryption key decodes to {0} bytes; AES-256 needs exactly 32 (44 base64 characters or 64 hex characters)"
    )]
    WrongLength(usize),
}

/// Why a sealed message could not be opened. Deliberately vague: GCM cannot tell a wrong key
/// from a wrong AAD or a tampered byte.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("sealed data is too short to be valid ({0} bytes)")]
    TooShort(usize),
    #[error(
        "sealed data failed authentication (wrong key, wrong associated data, or tampered data)"
    )]
    Authentication,
    #[error("opened data is not valid UTF-8")]
    NotUtf8,
}

/// An AES-256-GCM key. `Debug` never shows the key.
#[derive(Clone)]
pub struct Cipher {
    aead: Aes256Gcm,
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cipher(AES-256-GCM, key: [REDACTED])")
    }
}

impl Cipher {
    /// From the raw 32 key bytes.
    pub fn from_bytes(key: &[u8; KEY_LEN]) -> Self {
        Self {
            aead: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key)),
        }
    }

    /// From 32 bytes written as standard base64 (padded or not) or as 64 hex digits.
    /// Surrounding whitespace (a trailing newline from a key file) is ignored.
    pub fn from_base64_or_hex(key: &SecretString) -> Result<Self, KeyError> {
        let text = key.expose_secret().trim();
        if text.is_empty() {
            return Err(KeyError::Empty);
        }
        let bytes: Zeroizing<Vec<u8>> =
            if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
                Zeroizing::new(hex::decode(text).map_err(|_| KeyError::NotEncoded)?)
            } else {
                let decoded = STANDARD
                    .decode(text)
                    .or_else(|_| STANDARD_NO_PAD.decode(text))
                    .map_err(|_| KeyError::NotEncoded)?;
                Zeroizing::new(decoded)
            };
        let array: &[u8; KEY_LEN] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::WrongLength(bytes.len()))?;
        Ok(Self::from_bytes(array))
    }

    /// Encrypts `plaintext`, authenticating `aad` too. Returns `nonce || ciphertext || tag`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ciphertext = self
            .aead
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Decrypts what [`Cipher::seal`] produced with the same `aad`.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptoError::TooShort(sealed.len()));
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.aead
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Authentication)
    }

    /// Seals a secret string (such as [`crate::providers::Credentials::to_secret_json`]).
    pub fn seal_secret(&self, secret: &SecretString, aad: &[u8]) -> Vec<u8> {
        self.seal(secret.expose_secret().as_bytes(), aad)
    }

    /// Opens a secret string sealed by [`Cipher::seal_secret`].
    pub fn open_secret(&self, sealed: &[u8], aad: &[u8]) -> Result<SecretString, CryptoError> {
        let bytes = self.open(sealed, aad)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| CryptoError::NotUtf8)?;
        Ok(SecretString::from(text))
    }
}

/// A fresh random key in standard base64, suitable for `JIT_ENCRYPTION_KEY`.
pub fn generate_key() -> String {
    let key = Aes256Gcm::generate_key(&mut OsRng);
    STANDARD.encode(key.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher() -> Cipher {
        Cipher::from_base64_or_hex(&SecretString::from(generate_key())).unwrap()
    }

    #[test]
    fn round_trip() {
        let c = cipher();
        let sealed = c.seal(b"hunter2 is not a password", b"request:42");
        assert_eq!(sealed.len(), NONCE_LEN + 25 + TAG_LEN);
        let opened = c.open(&sealed, b"request:42").unwrap();
        assert_eq!(opened.as_slice(), b"hunter2 is not a password");
    }

    #[test]
    fn empty_plaintext_round_trips() {
        let c = cipher();
        let sealed = c.seal(b"", b"");
        assert_eq!(c.open(&sealed, b"").unwrap().as_slice(), b"");
    }

    #[test]
    fn secret_round_trip() {
        let c = cipher();
        let sealed = c.seal_secret(&SecretString::from("{\"K\":\"v\"}"), b"request:7");
        let opened = c.open_secret(&sealed, b"request:7").unwrap();
        assert_eq!(opened.expose_secret(), "{\"K\":\"v\"}");
    }

    #[test]
    fn nonces_differ() {
        let c = cipher();
        let a = c.seal(b"same", b"aad");
        let b = c.seal(b"same", b"aad");
        assert_ne!(a, b);
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN]);
    }

    #[test]
    fn wrong_aad_fails() {
        let c = cipher();
        let sealed = c.seal(b"secret", b"request:42");
        assert_eq!(
            c.open(&sealed, b"request:43").unwrap_err(),
            CryptoError::Authentication
        );
    }

    #[test]
    fn wrong_key_fails() {
        let sealed = cipher().seal(b"secret", b"aad");
        assert_eq!(
            cipher().open(&sealed, b"aad").unwrap_err(),
            CryptoError::Authentication
        );
    }

    #[test]
    fn every_tampered_byte_fails() {
        let c = cipher();
        let sealed = c.seal(b"secret value", b"aad");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                c.open(&bad, b"aad").unwrap_err(),
                CryptoError::Authentication,
                "byte {i}"
            );
        }
        // Truncated and extended forms fail too.
        assert!(c.open(&sealed[..sealed.len() - 1], b"aad").is_err());
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(c.open(&longer, b"aad").is_err());
        assert_eq!(
            c.open(&sealed[..10], b"aad").unwrap_err(),
            CryptoError::TooShort(10)
        );
    }

    #[test]
    fn accepts_base64_padded_unpadded_and_hex() {
        let bytes = [7u8; 32];
        let padded = STANDARD.encode(bytes);
        let unpadded = STANDARD_NO_PAD.encode(bytes);
        let hex = hex::encode(bytes);
        let hex_upper = hex.to_uppercase();
        let a = Cipher::from_base64_or_hex(&SecretString::from(padded.clone())).unwrap();
        let sealed = a.seal(b"x", b"");
        for text in [
            padded,
            unpadded,
            hex,
            hex_upper,
            format!("  {}\n", STANDARD.encode(bytes)),
        ] {
            let c = Cipher::from_base64_or_hex(&SecretString::from(text)).unwrap();
            assert_eq!(c.open(&sealed, b"").unwrap().as_slice(), b"x");
        }
    }

    #[test]
    fn bad_keys_are_rejected_without_echoing_them() {
        let cases = [
            ("", KeyError::Empty),
            ("   \n", KeyError::Empty),
            ("not base64 at all!!", KeyError::NotEncoded),
            ("c2hvcnQ=", KeyError::WrongLength(5)),
            (&*STANDARD.encode([1u8; 16]), KeyError::WrongLength(16)),
            (&*STANDARD.encode([1u8; 33]), KeyError::WrongLength(33)),
            // A mistyped hex key (a `g` among 64 digits) is read as base64 of the wrong length.
            (
                "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdeg",
                KeyError::WrongLength(48),
            ),
        ];
        for (text, expected) in cases {
            let err = Cipher::from_base64_or_hex(&SecretString::from(text)).unwrap_err();
            assert_eq!(err, expected, "{text:?}");
            let message = err.to_string();
            assert!(message.contains("32"), "{message}");
            if text.trim().len() > 3 {
                assert!(!message.contains(text.trim()), "{message} echoes the key");
            }
        }
    }

    #[test]
    fn debug_hides_the_key() {
        let key = STANDARD.encode([0xABu8; 32]);
        let c = Cipher::from_base64_or_hex(&SecretString::from(key.clone())).unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains(&key));
        assert!(!debug.to_lowercase().contains("abab"));
        assert!(debug.contains("REDACTED"));
    }

    #[test]
    fn generated_keys_are_fresh_and_valid() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a, b);
        assert_eq!(a.len(), 44);
        assert!(Cipher::from_base64_or_hex(&SecretString::from(a)).is_ok());
    }
}
