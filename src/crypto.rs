//! Secrets at rest: AES-256-GCM with a random 96-bit nonce per message.
//!
//! The key comes from `JIT_ENCRYPTION_KEY` (32 bytes, written as standard base64 or 64 hex
//! digits; `jit` can print a fresh one with [`generate_key`]). A sealed message is
//! `nonce (12 bytes) || ciphertext || tag (16 bytes)`. Callers pass associated data (AAD) that
//! binds the ciphertext to its row, such as `request:42`, so a ciphertext copied to another row
//! fails to open.
//!
//! The audit chain's key ([`AuditKey`]) lives here too: 32 bytes from `JIT_AUDIT_KEY`, or
//! derived from `JIT_ENCRYPTION_KEY` with HKDF-SHA-256 and the fixed info string
//! [`AUDIT_KEY_INFO`], so a separate key is optional. It is never stored in the database.

use std::fmt;
use std::sync::Arc;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use hmac::{Hmac, Mac};
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretBox, SecretString};

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
        "the key is empty; set it to 32 random bytes in base64 (for example from `openssl rand -base64 32` or `jit keygen`)"
    )]
    Empty,
    #[error(
        "the key is neither base64 nor hex; set it to 32 random bytes in base64 (44 characters) or hex (64 characters)"
    )]
    NotEncoded,
    #[error(
        "the key decodes to {0} bytes; it must be exactly 32 (44 base64 characters or 64 hex characters)"
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
        Ok(Self::from_bytes(&*decode_key(key)?))
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

/// 32 key bytes written as standard base64 (padded or not) or as 64 hex digits. Surrounding
/// whitespace (a trailing newline from a key file) is ignored.
fn decode_key(key: &SecretString) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyError> {
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
    let array: [u8; KEY_LEN] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::WrongLength(bytes.len()))?;
    Ok(Zeroizing::new(array))
}

/// The HKDF-SHA-256 `info` that derives the audit key from `JIT_ENCRYPTION_KEY` (no salt).
/// Fixed: changing it changes every derived key, and so breaks every keyed chain.
pub const AUDIT_KEY_INFO: &[u8] = b"jit audit chain HMAC-SHA-256 key v1";

/// The key of the audit chain: each row's hash is an HMAC-SHA-256 under it, so recomputing the
/// chain after an edit needs this key, which is never stored in the database. `Debug` never
/// shows it; clones share one zeroized-on-drop buffer.
#[derive(Clone)]
pub struct AuditKey {
    key: Arc<SecretBox<[u8; KEY_LEN]>>,
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKey(HMAC-SHA-256, key: [REDACTED])")
    }
}

impl AuditKey {
    pub fn from_bytes(key: [u8; KEY_LEN]) -> Self {
        Self {
            key: Arc::new(SecretBox::new(Box::new(key))),
        }
    }

    /// A fresh random key, for throwaway databases (benchmarks).
    pub fn random() -> Self {
        let mut key = [0u8; KEY_LEN];
        rand::fill(&mut key);
        let audit = Self::from_bytes(key);
        secrecy::zeroize::Zeroize::zeroize(&mut key);
        audit
    }

    /// `JIT_AUDIT_KEY`: 32 bytes in base64 or hex, like `JIT_ENCRYPTION_KEY`.
    pub fn from_base64_or_hex(key: &SecretString) -> Result<Self, KeyError> {
        Ok(Self::from_bytes(*decode_key(key)?))
    }

    /// Derived from `JIT_ENCRYPTION_KEY`: HKDF-SHA-256 with no salt and [`AUDIT_KEY_INFO`].
    pub fn derive_from_encryption_key(encryption_key: &SecretString) -> Result<Self, KeyError> {
        let ikm = decode_key(encryption_key)?;
        let mut okm = Zeroizing::new([0u8; KEY_LEN]);
        hkdf::Hkdf::<sha2_hkdf::Sha256>::new(None, ikm.as_slice())
            .expand(AUDIT_KEY_INFO, okm.as_mut_slice())
            .expect("32 bytes is a valid HKDF-SHA-256 output length");
        Ok(Self::from_bytes(*okm))
    }

    /// The audit key from `JIT_AUDIT_KEY` when given, else derived from `JIT_ENCRYPTION_KEY`.
    /// Errors name the variable and never show the key.
    pub fn from_settings(
        audit_key: Option<&SecretString>,
        encryption_key: Option<&SecretString>,
    ) -> Result<Self, String> {
        match (audit_key, encryption_key) {
            (Some(key), _) => Self::from_base64_or_hex(key).map_err(|e| format!("JIT_AUDIT_KEY: {e}")),
            (None, Some(key)) => Self::derive_from_encryption_key(key)
                .map_err(|e| format!("JIT_ENCRYPTION_KEY: {e}")),
            (None, None) => Err(
                "the audit key is not set: set JIT_AUDIT_KEY (or JIT_AUDIT_KEY_FILE), or JIT_ENCRYPTION_KEY (or JIT_ENCRYPTION_KEY_FILE) to derive it from"
                    .into(),
            ),
        }
    }

    /// Hex HMAC-SHA-256 under the key of `parts`, each followed by a newline.
    pub fn mac_hex(&self, parts: &[&[u8]]) -> String {
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(self.key.expose_secret())
            .expect("HMAC takes a key of any length");
        for part in parts {
            mac.update(part);
            mac.update(b"\n");
        }
        hex::encode(mac.finalize().into_bytes())
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
    fn audit_keys_come_from_their_own_variable_or_are_derived() {
        let encryption = SecretString::from(STANDARD.encode([1u8; 32]));
        let derived = AuditKey::derive_from_encryption_key(&encryption).unwrap();
        // HKDF-SHA-256(ikm = 32 bytes of 0x01, no salt, info = AUDIT_KEY_INFO), then the MAC of
        // "row\n", computed independently with Python's hmac module (RFC 5869 by hand): the
        // derivation can never change unnoticed, and every keyed chain depends on it.
        assert_eq!(
            derived.mac_hex(&[b"row"]),
            "fcc4dfb065c46c43bbe06e14b1909d56029fcf538f673c9d859d15b1a32d75de"
        );
        // Not the encryption key itself.
        assert_ne!(
            derived.mac_hex(&[b"row"]),
            AuditKey::from_bytes([1u8; 32]).mac_hex(&[b"row"])
        );
        let own = SecretString::from(hex::encode([2u8; 32]));
        let chosen = AuditKey::from_settings(Some(&own), Some(&encryption)).unwrap();
        assert_eq!(
            chosen.mac_hex(&[b"x"]),
            AuditKey::from_bytes([2u8; 32]).mac_hex(&[b"x"])
        );
        let fallback = AuditKey::from_settings(None, Some(&encryption)).unwrap();
        assert_eq!(fallback.mac_hex(&[b"x"]), derived.mac_hex(&[b"x"]));
        let missing = AuditKey::from_settings(None, None).unwrap_err();
        assert!(missing.contains("JIT_AUDIT_KEY") && missing.contains("JIT_ENCRYPTION_KEY"));
        let bad = SecretString::from("sekrit-but-short");
        let err = AuditKey::from_settings(Some(&bad), None).unwrap_err();
        assert!(err.starts_with("JIT_AUDIT_KEY: "), "{err}");
        assert!(!err.contains("sekrit"), "{err}");
        assert!(!format!("{derived:?}").contains("01"), "{derived:?}");
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
