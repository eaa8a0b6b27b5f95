//! OAuth 2.0 client credentials for the `okta_group` provider: a service app's
//! `private_key_jwt` assertion, signed with the app's private key (RS256 for an RSA key, ES256
//! for a P-256 one; PEM, PKCS#8, or PKCS#1 for RSA), is exchanged at the org's
//! `/oauth2/v1/token` for an access token with the scopes jit needs ([`SCOPES`]). The token is
//! kept until a minute before it expires, or until Okta refuses it.
//!
//! The key and the tokens are secrets: they never reach logs, `Debug` output or error texts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, RsaKeyPair};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::super::ProviderError;

/// What jit asks for: add and remove group members, look up users.
pub const SCOPES: &str = "okta.groups.manage okta.users.read";
/// How long a client assertion is valid (Okta accepts at most an hour).
const ASSERTION_LIFETIME: u64 = 300;
/// A token is renewed this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(60);

enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// A service app's client ID and private key, and the access token they got last.
pub struct ClientKey {
    client_id: String,
    key_id: Option<String>,
    signer: Signer,
    token_url: String,
    /// Variable the key came from, for error texts.
    key_env: String,
    rng: SystemRandom,
    cached: tokio::sync::Mutex<Option<(SecretString, SystemTime)>>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize, Default)]
struct TokenError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl ClientKey {
    /// `pem`: the private key as PEM. The error names `key_env`, never the key.
    pub fn new(
        client_id: &str,
        key_id: Option<&str>,
        pem: &SecretString,
        org_url: &str,
        key_env: &str,
    ) -> Result<Self, ProviderError> {
        let bad = || {
            ProviderError::Fatal(format!(
                "{key_env} does not hold a PEM private key jit can use (PKCS#8 RSA or P-256, or PKCS#1 RSA)"
            ))
        };
        let text = pem.expose_secret();
        let body: String = text
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::trim)
            .collect();
        let der = STANDARD.decode(body).map_err(|_| bad())?;
        let rng = SystemRandom::new();
        let signer = if text.contains("BEGIN RSA PRIVATE KEY") {
            Signer::Rsa(RsaKeyPair::from_der(&der).map_err(|_| bad())?)
        } else if let Ok(key) = RsaKeyPair::from_pkcs8(&der) {
            Signer::Rsa(key)
        } else {
            Signer::Ec(
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
                    .map_err(|_| bad())?,
            )
        };
        Ok(Self {
            client_id: client_id.to_owned(),
            key_id: key_id.map(str::to_owned),
            signer,
            token_url: format!("{}/oauth2/v1/token", org_url.trim_end_matches('/')),
            key_env: key_env.to_owned(),
            rng,
            cached: tokio::sync::Mutex::new(None),
        })
    }

    /// The signed client assertion (a JWT).
    fn assertion(&self) -> Result<SecretString, ProviderError> {
        let alg = match self.signer {
            Signer::Rsa(_) => "RS256",
            Signer::Ec(_) => "ES256",
        };
        let mut header = serde_json::json!({"alg": alg, "typ": "JWT"});
        if let Some(kid) = &self.key_id {
            header["kid"] = serde_json::Value::String(kid.clone());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = serde_json::json!({
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.token_url,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
            "jti": format!("{:032x}", rand::random::<u128>()),
        });
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let failed = || {
            ProviderError::Fatal(format!(
                "cannot sign the client assertion with the key in {}",
                self.key_env
            ))
        };
        let signature = match &self.signer {
            Signer::Rsa(key) => {
                let mut out = vec![0; key.public().modulus_len()];
                key.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &self.rng,
                    signing_input.as_bytes(),
                    &mut out,
                )
                .map_err(|_| failed())?;
                out
            }
            Signer::Ec(key) => key
                .sign(&self.rng, signing_input.as_bytes())
                .map_err(|_| failed())?
                .as_ref()
                .to_vec(),
        };
        Ok(SecretString::from(format!(
            "{signing_input}.{}",
            b64(&signature)
        )))
    }

    /// An access token: the one kept, or a new one.
    pub async fn access_token(
        &self,
        http: &reqwest::Client,
    ) -> Result<SecretString, ProviderError> {
        let mut cached = self.cached.lock().await;
        if let Some((token, until)) = cached.as_ref()
            && SystemTime::now() < *until
        {
            return Ok(token.clone());
        }
        let assertion = self.assertion()?;
        let form = [
            ("grant_type", "client_credentials"),
            ("scope", SCOPES),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion.expose_secret()),
        ];
        let response = http
            .post(&self.token_url)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| {
                ProviderError::Retryable(format!(
                    "cannot get an access token from {}: {}",
                    self.token_url,
                    e.without_url()
                ))
            })?;
        let status = response.status();
        if !status.is_success() {
            let body: TokenError = response.json().await.unwrap_or_default();
            let text = format!(
                "Okta refused jit's OAuth client {} at {} ({status}{}{}): check that the service app uses private_key_jwt with the public key of {}, does not require DPoP, and was granted the scopes {SCOPES}",
                self.client_id,
                self.token_url,
                if body.error.is_empty() { "" } else { " " },
                super::cut(&format!("{} {}", body.error, body.error_description)).trim(),
                self.key_env,
            );
            return Err(if status.is_server_error() || status.as_u16() == 429 {
                ProviderError::Retryable(text)
            } else {
                ProviderError::Refused(text)
            });
        }
        let answer: TokenAnswer = response.json().await.map_err(|e| {
            ProviderError::Retryable(format!("Okta's token answer was not understood: {e}"))
        })?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(300));
        let token = SecretString::from(answer.access_token);
        *cached = Some((
            token.clone(),
            SystemTime::now() + lifetime.saturating_sub(RENEW_BEFORE),
        ));
        Ok(token)
    }

    /// Okta refused the kept token: the next call gets a new one.
    pub async fn forget(&self) {
        *self.cached.lock().await = None;
    }
}
