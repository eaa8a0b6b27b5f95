//! Who the requester is at an identity provider (IAM Identity Center, Okta).
//!
//! An explicit `principals` map in the resource wins: its keys are Slack user IDs (`U0ALICE`) or
//! non-human identities (`identity:deploy-bot`), its values the login at the provider. Otherwise
//! the requester's Slack profile email is used, which jit reads when the grant job runs, never in
//! the slash-command ack path. A requester with neither is refused before anything is changed.

use std::collections::BTreeMap;

use super::{GrantSpec, ProviderError};
use crate::domain::policy::Requester;

/// The login (user name or email) to look up at the provider for `spec`'s requester.
pub fn login_for(
    spec: &GrantSpec,
    principals: &BTreeMap<String, String>,
    provider: &str,
) -> Result<String, ProviderError> {
    login_of(
        &spec.requester,
        spec.requester_email.as_deref(),
        principals,
        provider,
    )
}

fn login_of(
    requester: &Requester,
    email: Option<&str>,
    principals: &BTreeMap<String, String>,
    provider: &str,
) -> Result<String, ProviderError> {
    if let Some(login) = principals.get(&requester.key()) {
        return Ok(login.clone());
    }
    match (requester, email) {
        (Requester::User(_), Some(email)) if !email.trim().is_empty() => {
            Ok(email.trim().to_owned())
        }
        (Requester::User(user), _) => Err(ProviderError::Refused(format!(
            "jit cannot tell who {user} is in {provider}: Slack gave no email for them (the app \
             needs the users:read.email scope) and the resource's `principals` map does not name \
             them"
        ))),
        (Requester::Identity(name), _) => Err(ProviderError::Refused(format!(
            "the identity `{name}` has no entry in the resource's `principals` map, so jit cannot \
             tell who it is in {provider}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::SlackUserId;

    fn alice() -> Requester {
        Requester::User(SlackUserId::parse("U0ALICE").unwrap())
    }

    #[test]
    fn the_map_wins_over_the_slack_email() {
        let map = BTreeMap::from([("U0ALICE".to_owned(), "alice@corp.example".to_owned())]);
        let login = login_of(&alice(), Some("alice@other.example"), &map, "Okta").unwrap();
        assert_eq!(login, "alice@corp.example");
    }

    #[test]
    fn the_slack_email_is_used_without_a_map_entry() {
        let login = login_of(
            &alice(),
            Some(" alice@corp.example "),
            &BTreeMap::new(),
            "Okta",
        );
        assert_eq!(login.unwrap(), "alice@corp.example");
    }

    #[test]
    fn nobody_known_is_refused_with_the_reason() {
        let err = login_of(&alice(), None, &BTreeMap::new(), "Okta").unwrap_err();
        assert!(matches!(err, ProviderError::Refused(_)), "{err:?}");
        assert!(err.to_string().contains("users:read.email"), "{err}");
        let bot = Requester::Identity("deploy-bot".into());
        let err = login_of(&bot, None, &BTreeMap::new(), "IAM Identity Center").unwrap_err();
        assert!(err.to_string().contains("`deploy-bot`"), "{err}");
        let map = BTreeMap::from([("identity:deploy-bot".to_owned(), "svc-deploy".to_owned())]);
        assert_eq!(login_of(&bot, None, &map, "Okta").unwrap(), "svc-deploy");
    }
}
