//! Non-human identities: API tokens, and telling an identity's owners what it asked for.
//!
//! A token is `jit_` followed by 43 characters of base64url (256 random bits). Only its SHA-256
//! hash is stored; the token is shown once, at creation. Hash lookups need no constant-time
//! comparison: the hash of an unknown token tells an attacker nothing about a valid one.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::{HandlerError, HandlerResult};
use crate::app::App;
use crate::audit::{self, AuditEvent};
use crate::domain::policy::{Policy, Requester};
use crate::domain::request::Request;
use crate::jobs::Job;
use crate::queue::{self, Placement};
use crate::slack::blocks::Msg;
use crate::store::{WriteTx, tokens};

pub const TOKEN_PREFIX: &str = "jit_";

pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn new_token() -> SecretString {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    SecretString::from(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// Creates a token for `identity`; the caller shows it once.
pub async fn create_token(
    store: &crate::store::Store,
    policy: &Policy,
    identity: &str,
    created_by: &str,
    now: DateTime<Utc>,
) -> HandlerResult<(i64, SecretString)> {
    if policy.identity(identity).is_none() {
        return Err(HandlerError::user(format!(
            "There is no identity `{identity}` in the policy; declare it in an [[identity]] table first."
        )));
    }
    let token = new_token();
    let mut tx = store.begin_write().await?;
    let id = tokens::insert(
        &mut tx,
        identity,
        &hash(token.expose_secret()),
        created_by,
        now,
    )
    .await?;
    audit::record_quietly(
        &mut tx,
        now,
        None,
        created_by,
        &AuditEvent::TokenCreated {
            identity: identity.to_owned(),
            token_id: id,
        },
    )
    .await?;
    tx.commit().await?;
    Ok((id, token))
}

/// What revoking a token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRevoked {
    /// The identity the token belongs to.
    pub identity: String,
    /// The token had been revoked before (nothing changed now).
    pub already: bool,
}

/// Revokes a token. Revoking it again is not an error: the caller still ends the identity's
/// access ([`end_access_of`]), so a run whose second step failed can simply be repeated.
pub async fn revoke_token(
    store: &crate::store::Store,
    token_id: i64,
    revoked_by: &str,
    now: DateTime<Utc>,
) -> HandlerResult<TokenRevoked> {
    let mut tx = store.begin_write().await?;
    let identity = tokens::list(&mut tx, None)
        .await?
        .into_iter()
        .find(|t| t.id == token_id)
        .map(|t| t.identity)
        .ok_or_else(|| HandlerError::user(format!("There is no token {token_id}.")))?;
    if !tokens::revoke(&mut tx, token_id, now).await? {
        return Ok(TokenRevoked {
            identity,
            already: true,
        });
    }
    audit::record_quietly(
        &mut tx,
        now,
        None,
        revoked_by,
        &AuditEvent::TokenRevoked {
            identity: identity.clone(),
            token_id,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(TokenRevoked {
        identity,
        already: false,
    })
}

/// What ending an identity's access did.
#[derive(Debug, Default)]
pub struct Ended {
    /// Pending requests cancelled.
    pub cancelled: Vec<crate::domain::ids::RequestId>,
    /// Approved or active grants revoked (their teardown runs in the server's worker).
    pub revoked: Vec<crate::domain::ids::RequestId>,
}

/// Ends everything `identity` has open, after one of its tokens was revoked: a revoked token
/// usually means a leaked one, and whoever holds it may already have asked for (and been given)
/// access. Pending requests are cancelled and grants revoked through the normal teardown path,
/// audited as `cli:<os_user>` with the token named.
pub async fn end_access_of(
    app: &App,
    identity: &str,
    token_id: i64,
    os_user: &str,
) -> HandlerResult<Ended> {
    let requester = Requester::Identity(identity.to_owned());
    let open = {
        let mut conn = app.store.read().await?;
        crate::store::requests::all_open_for_requester(&mut conn, &requester).await?
    };
    let actor = crate::audit::actor::cli(os_user);
    let reason = format!("API token {token_id} of identity {identity} was revoked");
    let mut ended = Ended::default();
    for stored in open {
        let id = stored.request.id;
        let result = match stored.request.state {
            crate::domain::request::State::Pending => {
                super::request::cancel_as(app, &stored, &actor)
                    .await
                    .map(|_| ended.cancelled.push(id))
            }
            _ => super::access::revoke(app, super::access::Revoker::Cli(os_user), id, &reason)
                .await
                .map(|_| ended.revoked.push(id)),
        };
        match result {
            Ok(()) => {}
            // Decided or ended a moment ago: nothing left to end.
            Err(HandlerError::User(text)) => {
                tracing::info!(request_id = id.0, %text, "not ended after the token revoke")
            }
            Err(err) => return Err(err),
        }
    }
    Ok(ended)
}

/// The identity behind a presented token, if the token is live and the identity still exists.
pub async fn authenticate(app: &App, token: &str) -> anyhow::Result<Option<(i64, String)>> {
    if !token.starts_with(TOKEN_PREFIX) || token.len() > 200 {
        return Ok(None);
    }
    let mut conn = app.store.read().await?;
    let Some(row) = tokens::find_live(&mut conn, &hash(token)).await? else {
        return Ok(None);
    };
    if app.policy.identity(&row.identity).is_none() {
        return Ok(None);
    }
    Ok(Some((row.id, row.identity)))
}

/// DMs the owners (users) of the identity behind `request`, if it is one.
pub async fn notify_owners(
    tx: &mut WriteTx,
    app: &App,
    request: &Request,
    msg: Msg,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    let Requester::Identity(name) = &request.requester else {
        return Ok(());
    };
    let Some(identity) = app.policy.identity(name) else {
        return Ok(());
    };
    for user in &identity.owner.users {
        queue::enqueue(
            tx,
            &Job::Dm {
                user: user.clone(),
                text: msg.text.clone(),
                blocks: Some(msg.blocks.clone()),
            },
            Placement::dm(user),
            now,
            now,
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_hashed() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert!(a.expose_secret().starts_with("jit_"));
        assert_eq!(a.expose_secret().len(), 4 + 43);
        assert_eq!(hash("jit_x").len(), 64);
        assert_ne!(hash(a.expose_secret()), a.expose_secret().to_owned());
    }
}
