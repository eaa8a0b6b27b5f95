//! Slack request signatures (v0): `v0=` + hex(HMAC-SHA256(secret, `v0:{timestamp}:{body}`)).
//!
//! Requests older or newer than five minutes are refused, the comparison is constant-time, and
//! several secrets may be configured at once so a secret can be rotated without downtime.
//! The clock is injected: Slack's published test vector is from 2018.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use crate::clock::SharedClock;

/// Slack's replay window.
pub const MAX_SKEW_SECS: i64 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing X-Slack-Signature or X-Slack-Request-Timestamp")]
    MissingHeaders,
    #[error("malformed timestamp")]
    BadTimestamp,
    #[error("timestamp outside the five-minute window")]
    Stale,
    #[error("malformed signature")]
    BadSignatureFormat,
    #[error("signature mismatch")]
    Mismatch,
}

#[derive(Clone)]
pub struct Verifier {
    secrets: Vec<SecretString>,
    clock: SharedClock,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Verifier({} secret(s))", self.secrets.len())
    }
}

impl Verifier {
    pub fn new(secrets: Vec<SecretString>, clock: SharedClock) -> Self {
        Self { secrets, clock }
    }

    /// Checks one request. `timestamp` and `signature` are the raw header values.
    pub fn verify(
        &self,
        timestamp: Option<&[u8]>,
        signature: Option<&[u8]>,
        body: &[u8],
    ) -> Result<(), VerifyError> {
        let (Some(timestamp), Some(signature)) = (timestamp, signature) else {
            return Err(VerifyError::MissingHeaders);
        };
        let ts_text = std::str::from_utf8(timestamp).map_err(|_| VerifyError::BadTimestamp)?;
        if ts_text.is_empty() || ts_text.len() > 12 || !ts_text.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(VerifyError::BadTimestamp);
        }
        let ts: i64 = ts_text.parse().map_err(|_| VerifyError::BadTimestamp)?;
        // Slack stamps requests with real time: compare with the wall clock, not the
        // never-backwards one (a corrected forward jump must not lock Slack out).
        let now = self.clock.wall().timestamp();
        if (now - ts).abs() > MAX_SKEW_SECS {
            return Err(VerifyError::Stale);
        }
        let hex_sig = signature
            .strip_prefix(b"v0=")
            .ok_or(VerifyError::BadSignatureFormat)?;
        // Slack writes lower-case hex; anything else is not its signature (no malleability).
        if hex_sig.len() != 64
            || !hex_sig
                .iter()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(VerifyError::BadSignatureFormat);
        }
        let expected = hex::decode(hex_sig).map_err(|_| VerifyError::BadSignatureFormat)?;
        // Every secret is tried, so timing does not tell which one matched.
        let mut matched = false;
        for secret in &self.secrets {
            matched |= mac_for(secret, ts_text, body)
                .verify_slice(&expected)
                .is_ok();
        }
        if matched {
            Ok(())
        } else {
            Err(VerifyError::Mismatch)
        }
    }
}

fn mac_for(secret: &SecretString, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac
}

/// Signs a body the way Slack does: used by the demo, the benchmarks and the tests.
pub fn sign(secret: &SecretString, timestamp: i64, body: &[u8]) -> String {
    let mac = mac_for(secret, &timestamp.to_string(), body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::clock::ManualClock;

    /// Slack's published example, from `tests/fixtures/slack/signature-test-vector.json`.
    struct Vector {
        secret: String,
        timestamp: String,
        body: String,
        signature: String,
    }

    fn vector() -> Vector {
        let json: serde_json::Value = serde_json::from_str(include_str!(
            "../../../../tests/fixtures/slack/signature-test-vector.json"
        ))
        .unwrap();
        let field = |k: &str| json[k].as_str().unwrap().to_owned();
        Vector {
            secret: field("signing_secret"),
            timestamp: field("timestamp"),
            body: field("body"),
            signature: field("expected_signature"),
        }
    }

    fn verifier(at: i64, secrets: &[&str]) -> Verifier {
        let clock = ManualClock::new(Utc.timestamp_opt(at, 0).unwrap());
        Verifier::new(
            secrets.iter().map(|s| SecretString::from(*s)).collect(),
            Arc::new(clock),
        )
    }

    #[test]
    fn slacks_published_vector_passes_near_its_time() {
        let x = vector();
        let at: i64 = x.timestamp.parse().unwrap();
        let v = verifier(at + 10, &[&x.secret]);
        let ts = Some(x.timestamp.as_bytes());
        assert_eq!(
            v.verify(ts, Some(x.signature.as_bytes()), x.body.as_bytes()),
            Ok(())
        );
        assert_eq!(
            sign(&SecretString::from(x.secret.clone()), at, x.body.as_bytes()),
            x.signature
        );
    }

    #[test]
    fn any_changed_byte_fails() {
        let x = vector();
        let at: i64 = x.timestamp.parse().unwrap();
        let v = verifier(at, &[&x.secret]);
        let ts = Some(x.timestamp.as_bytes());
        let body = x.body.as_bytes();
        for i in 0..body.len() {
            let mut tampered = body.to_vec();
            tampered[i] ^= 0x01;
            assert_eq!(
                v.verify(ts, Some(x.signature.as_bytes()), &tampered),
                Err(VerifyError::Mismatch),
                "body byte {i}"
            );
        }
        let sig = x.signature.as_bytes();
        for i in 0..sig.len() {
            let mut tampered = sig.to_vec();
            tampered[i] = if tampered[i] == b'0' { b'1' } else { b'0' };
            assert!(
                v.verify(ts, Some(&tampered), body).is_err(),
                "signature byte {i}"
            );
        }
        let later = (at + 1).to_string();
        assert_eq!(
            v.verify(Some(later.as_bytes()), Some(sig), body),
            Err(VerifyError::Mismatch),
            "the timestamp is signed too"
        );
    }

    #[test]
    fn window_headers_and_rotation() {
        let x = vector();
        let at: i64 = x.timestamp.parse().unwrap();
        let ts = Some(x.timestamp.as_bytes());
        let sig = Some(x.signature.as_bytes());
        let body = x.body.as_bytes();
        let secret = x.secret.as_str();
        assert_eq!(
            verifier(at + 301, &[secret]).verify(ts, sig, body),
            Err(VerifyError::Stale)
        );
        assert_eq!(
            verifier(at - 301, &[secret]).verify(ts, sig, body),
            Err(VerifyError::Stale)
        );
        assert!(verifier(at + 300, &[secret]).verify(ts, sig, body).is_ok());
        assert!(
            verifier(at, &["old-secret", secret])
                .verify(ts, sig, body)
                .is_ok(),
            "any configured secret may match during a rotation"
        );
        let v = verifier(at, &["other"]);
        assert_eq!(v.verify(ts, sig, body), Err(VerifyError::Mismatch));
        assert_eq!(v.verify(None, sig, body), Err(VerifyError::MissingHeaders));
        assert_eq!(v.verify(ts, None, body), Err(VerifyError::MissingHeaders));
        assert_eq!(
            v.verify(Some(b"-5"), sig, body),
            Err(VerifyError::BadTimestamp)
        );
        assert_eq!(
            v.verify(Some(b"abc"), sig, body),
            Err(VerifyError::BadTimestamp)
        );
        assert_eq!(
            v.verify(ts, Some(b"v1=abcd"), body),
            Err(VerifyError::BadSignatureFormat)
        );
        assert_eq!(
            v.verify(ts, Some(&x.signature.as_bytes()[..60]), body),
            Err(VerifyError::BadSignatureFormat)
        );
    }
}
