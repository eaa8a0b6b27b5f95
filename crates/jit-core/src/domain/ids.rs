//! Identifier newtypes. Each is parsed once at the edge and trusted inside.
//!
//! Slack IDs are validated for shape only (an upper-case prefix letter followed by
//! upper-case letters and digits); whether the ID exists is Slack's business.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("`{value}` is not a Slack {kind} ID (expected something like `{example}`)")]
    Slack {
        kind: &'static str,
        example: &'static str,
        value: String,
    },
    #[error("`{0}` is not a request ID (expected a number such as `42` or `#42`)")]
    Request(String),
    #[error(
        "`{0}` is not a valid resource id (use 1-64 characters: lower-case letters, digits, `-`, `_` or `.`)"
    )]
    Resource(String),
}

fn is_slack_id(value: &str, prefixes: &[char]) -> bool {
    let mut chars = value.chars();
    match chars.next() {
        Some(c) if prefixes.contains(&c) => {}
        _ => return false,
    }
    let rest = chars.as_str();
    (2..=20).contains(&rest.len())
        && rest
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

macro_rules! slack_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $example:literal, [$($prefix:literal),+]) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(value: &str) -> Result<Self, IdError> {
                let value = value.trim();
                if is_slack_id(value, &[$($prefix),+]) {
                    Ok(Self(value.to_owned()))
                } else {
                    Err(IdError::Slack { kind: $kind, example: $example, value: value.to_owned() })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

slack_id!(
    /// A Slack user ID such as `U0123ABCD` (or `W…` on Enterprise Grid).
    SlackUserId, "user", "U0123ABCD", ['U', 'W']
);
slack_id!(
    /// A Slack channel ID such as `C0123ABCD` (`G…` for private channels, `D…` for DMs).
    SlackChannelId, "channel", "C0123ABCD", ['C', 'G', 'D']
);
slack_id!(
    /// A Slack user group ID such as `S0123ABCD`.
    SlackGroupId, "user group", "S0123ABCD", ['S']
);

/// A request's number. Shown to people as `#42`; `42` and `#42` are both accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(pub i64);

impl RequestId {
    pub fn parse(value: &str) -> Result<Self, IdError> {
        let trimmed = value.trim();
        let digits = trimmed.strip_prefix('#').unwrap_or(trimmed);
        match digits.parse::<i64>() {
            Ok(n) if n > 0 && digits.chars().all(|c| c.is_ascii_digit()) => Ok(Self(n)),
            _ => Err(IdError::Request(value.to_owned())),
        }
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A resource's id from the policy file, such as `aws-prod-readonly`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ResourceId(String);

impl ResourceId {
    pub fn parse(value: &str) -> Result<Self, IdError> {
        let ok = (1..=64).contains(&value.len())
            && value.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')
            });
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(IdError::Resource(value.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ResourceId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<ResourceId> for String {
    fn from(value: ResourceId) -> String {
        value.0
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_ids_check_their_prefix_and_alphabet() {
        assert!(SlackUserId::parse("U0123ABCD").is_ok());
        assert!(SlackUserId::parse("W0123ABCD").is_ok());
        assert!(SlackUserId::parse("C0123ABCD").is_err());
        assert!(SlackUserId::parse("U01").is_ok());
        assert!(SlackUserId::parse("U0").is_err());
        assert!(SlackUserId::parse("u0123abcd").is_err());
        assert!(SlackUserId::parse("U0123<!channel>").is_err());
        assert!(SlackGroupId::parse("S0SRE").is_ok());
        assert!(SlackChannelId::parse("G8PSS9T3V").is_ok());
    }

    #[test]
    fn request_ids_accept_a_hash_prefix() {
        assert_eq!(RequestId::parse("42").unwrap(), RequestId(42));
        assert_eq!(RequestId::parse("#42").unwrap(), RequestId(42));
        assert_eq!(RequestId(42).to_string(), "#42");
        for bad in [
            "",
            "#",
            "0",
            "-1",
            "+4",
            "4x",
            "##4",
            "99999999999999999999",
        ] {
            assert!(RequestId::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn resource_ids_are_lowercase_slugs() {
        assert!(ResourceId::parse("aws-prod-readonly").is_ok());
        assert!(ResourceId::parse("db.main_v2").is_ok());
        assert!(ResourceId::parse("Prod").is_err());
        assert!(ResourceId::parse("").is_err());
        assert!(ResourceId::parse("a b").is_err());
        assert!(ResourceId::parse(&"a".repeat(65)).is_err());
    }
}
