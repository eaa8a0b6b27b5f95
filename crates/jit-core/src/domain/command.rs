//! The `/jit` slash-command grammar.
//!
//! Parsing is pure and syntactic: it never consults the policy. Whether a resource exists or a
//! duration is allowed is decided later by [`crate::domain::policy`]. Usage lines are generated
//! from an exhaustive match over [`Subcommand`], so help text cannot drift from the parser.

use super::duration::{DurationError, GrantDuration};
use super::ids::RequestId;
use super::start::{START_FORMS, StartAt, StartError};

/// A parsed `/jit` invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    /// `/jit`, `/jit request` or `/jit request <resource>`: open the request form.
    OpenForm {
        resource: Option<String>,
    },
    Request {
        resource: String,
        duration: GrantDuration,
        /// `at <time>`: a scheduled start, resolved against the requester's time zone later.
        start: Option<StartAt>,
        justification: String,
    },
    List,
    Cancel {
        id: RequestId,
    },
    Why {
        resource: String,
        duration: Option<GrantDuration>,
    },
    Release {
        id: RequestId,
    },
    Extend {
        id: RequestId,
        duration: GrantDuration,
    },
    Revoke {
        id: RequestId,
        reason: String,
    },
    Breakglass {
        resource: String,
        reason: String,
    },
}

/// The subcommands, in the order `help` lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subcommand {
    Request,
    List,
    Cancel,
    Why,
    Release,
    Extend,
    Revoke,
    Breakglass,
    Help,
}

impl Subcommand {
    pub const ALL: [Subcommand; 9] = [
        Subcommand::Request,
        Subcommand::List,
        Subcommand::Cancel,
        Subcommand::Why,
        Subcommand::Release,
        Subcommand::Extend,
        Subcommand::Revoke,
        Subcommand::Breakglass,
        Subcommand::Help,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Subcommand::Request => "request",
            Subcommand::List => "list",
            Subcommand::Cancel => "cancel",
            Subcommand::Why => "why",
            Subcommand::Release => "release",
            Subcommand::Extend => "extend",
            Subcommand::Revoke => "revoke",
            Subcommand::Breakglass => "breakglass",
            Subcommand::Help => "help",
        }
    }

    /// The argument synopsis shown after `/jit <name>`.
    pub fn synopsis(self) -> &'static str {
        match self {
            Subcommand::Request => "<resource> <duration> [at <time>] <justification…>",
            Subcommand::List => "",
            Subcommand::Cancel => "<id>",
            Subcommand::Why => "<resource> [duration]",
            Subcommand::Release => "<id>",
            Subcommand::Extend => "<id> <duration>",
            Subcommand::Revoke => "<id> <reason…>",
            Subcommand::Breakglass => "<resource> <reason…>",
            Subcommand::Help => "",
        }
    }

    pub fn summary(self) -> &'static str {
        match self {
            Subcommand::Request => {
                "ask for access (without arguments, opens a form); e.g. `/jit request prod-db 2h investigating INC-123`. A ticket in the justification (INC-123) is picked up where the resource asks for one; `/jit why` shows a resource's rules. `at <time>` schedules the start for a maintenance window, e.g. `/jit request prod-db 2h at 23:00 failover drill CHG-7`: it may be approved ahead of time, access is issued at the start and lasts the duration from then; `/jit cancel <id>` withdraws it until it starts"
            }
            Subcommand::List => "your pending and active requests",
            Subcommand::Cancel => "withdraw your own pending request",
            Subcommand::Why => {
                "which rule applies to a resource, who approves, the maximum duration and whether it is auto-approved for you now (on call in PagerDuty included)"
            }
            Subcommand::Release => "give up your access now",
            Subcommand::Extend => "ask for more time on an active grant",
            Subcommand::Revoke => "admins: end someone's access now",
            Subcommand::Breakglass => {
                "emergency access, granted at once where the policy allows it and reviewed afterwards"
            }
            Subcommand::Help => "this text",
        }
    }

    /// `/jit request <resource> <duration> <justification…>`
    pub fn usage(self) -> String {
        let synopsis = self.synopsis();
        if synopsis.is_empty() {
            format!("/jit {}", self.name())
        } else {
            format!("/jit {} {}", self.name(), synopsis)
        }
    }

    fn from_word(word: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(word))
    }
}

/// The full help text, generated from [`Subcommand::ALL`].
pub fn help_text() -> String {
    let mut text = String::from("*jit: just-in-time access*\n");
    for sub in Subcommand::ALL {
        text.push_str(&format!("• `{}`: {}\n", sub.usage(), sub.summary()));
    }
    text.push_str(&format!(
        "Durations are written {}. A start (`at …`) is written {START_FORMS}.\n",
        super::duration::DURATION_FORMS
    ));
    text.push_str(
        "Approvers are asked in their channel, by DM, or both; a request nobody decides is escalated to more approvers as the policy says. `/jit why <resource>` shows who, where and when.",
    );
    text
}

/// What was wrong with a command. Every variant knows which form to show back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("`{0}` is not a jit command.")]
    UnknownSubcommand(String),
    #[error("Which resource? Name one after `{name}`.", name = .0.name())]
    MissingResource(Subcommand),
    #[error("How long? Add a duration after the resource.")]
    MissingDuration(Subcommand),
    #[error("{1}")]
    BadDuration(Subcommand, DurationError),
    #[error("Please say why you need access: the justification is empty.")]
    EmptyJustification,
    #[error("When should access start? Add a time after `at`: {START_FORMS}.")]
    MissingStart,
    #[error("{0}")]
    BadStart(StartError),
    #[error("Which request? Give its number, e.g. `42`.")]
    MissingId(Subcommand),
    #[error("`{1}` is not a request number; use the number shown by `/jit list`, e.g. `42`.")]
    BadId(Subcommand, String),
    #[error("Please give a reason.")]
    MissingReason(Subcommand),
    #[error("`/jit {name}` takes no more arguments, but got `{1}`.", name = .0.name())]
    UnexpectedArguments(Subcommand, String),
}

impl ParseError {
    /// The subcommand whose form should be shown with this error, if any.
    pub fn subcommand(&self) -> Option<Subcommand> {
        match self {
            ParseError::UnknownSubcommand(_) => None,
            ParseError::EmptyJustification | ParseError::MissingStart | ParseError::BadStart(_) => {
                Some(Subcommand::Request)
            }
            ParseError::MissingResource(s)
            | ParseError::MissingDuration(s)
            | ParseError::BadDuration(s, _)
            | ParseError::MissingId(s)
            | ParseError::BadId(s, _)
            | ParseError::MissingReason(s)
            | ParseError::UnexpectedArguments(s, _) => Some(*s),
        }
    }

    /// The whole reply for a person: what was wrong, then the right form (or the help).
    pub fn user_message(&self) -> String {
        match self.subcommand() {
            Some(sub) => format!("{self}\nUsage: `{}`", sub.usage()),
            None => format!("{self}\n\n{}", help_text()),
        }
    }
}

/// Splits off the first whitespace-separated word.
fn next_word(text: &str) -> (Option<&str>, &str) {
    let text = text.trim_start();
    if text.is_empty() {
        return (None, "");
    }
    match text.find(char::is_whitespace) {
        Some(end) => (Some(&text[..end]), text[end..].trim_start()),
        None => (Some(text), ""),
    }
}

fn parse_id(sub: Subcommand, word: Option<&str>) -> Result<RequestId, ParseError> {
    let word = word.ok_or(ParseError::MissingId(sub))?;
    RequestId::parse(word).map_err(|_| ParseError::BadId(sub, word.to_owned()))
}

fn parse_duration(sub: Subcommand, word: Option<&str>) -> Result<GrantDuration, ParseError> {
    let word = word.ok_or(ParseError::MissingDuration(sub))?;
    GrantDuration::parse(word).map_err(|e| ParseError::BadDuration(sub, e))
}

fn no_more(sub: Subcommand, rest: &str) -> Result<(), ParseError> {
    if rest.trim().is_empty() {
        Ok(())
    } else {
        Err(ParseError::UnexpectedArguments(sub, rest.trim().to_owned()))
    }
}

/// `at <time>` after the duration. A justification that merely begins with the word "at" (`at
/// the customer's request…`) is left alone: only `at` followed by something starting with a
/// digit is a start, and then it must be a valid one.
fn parse_start(rest: &str) -> Result<(Option<StartAt>, &str), ParseError> {
    let (word, after) = next_word(rest);
    if !word.is_some_and(|w| w.eq_ignore_ascii_case("at")) {
        return Ok((None, rest));
    }
    let (time, after_time) = next_word(after);
    match time {
        None => Err(ParseError::MissingStart),
        Some(time) if time.starts_with(|c: char| c.is_ascii_digit()) => {
            let start = StartAt::parse(time).map_err(ParseError::BadStart)?;
            Ok((Some(start), after_time))
        }
        Some(_) => Ok((None, rest)),
    }
}

/// Parses the text after `/jit`.
pub fn parse(text: &str) -> Result<Command, ParseError> {
    let (first, rest) = next_word(text);
    let Some(first) = first else {
        return Ok(Command::OpenForm { resource: None });
    };
    let sub = Subcommand::from_word(first)
        .ok_or_else(|| ParseError::UnknownSubcommand(first.to_owned()))?;
    match sub {
        Subcommand::Help => Ok(Command::Help),
        Subcommand::List => no_more(sub, rest).map(|_| Command::List),
        Subcommand::Request => {
            let (resource, rest) = next_word(rest);
            let Some(resource) = resource else {
                return Ok(Command::OpenForm { resource: None });
            };
            let (duration, rest) = next_word(rest);
            if duration.is_none() {
                return Ok(Command::OpenForm {
                    resource: Some(resource.to_owned()),
                });
            }
            let duration = parse_duration(sub, duration)?;
            let (start, rest) = parse_start(rest)?;
            let justification = rest.trim();
            if justification.is_empty() {
                return Err(ParseError::EmptyJustification);
            }
            Ok(Command::Request {
                resource: resource.to_owned(),
                duration,
                start,
                justification: justification.to_owned(),
            })
        }
        Subcommand::Cancel | Subcommand::Release => {
            let (id, rest) = next_word(rest);
            let id = parse_id(sub, id)?;
            no_more(sub, rest)?;
            Ok(if sub == Subcommand::Cancel {
                Command::Cancel { id }
            } else {
                Command::Release { id }
            })
        }
        Subcommand::Why => {
            let (resource, rest) = next_word(rest);
            let resource = resource.ok_or(ParseError::MissingResource(sub))?;
            let (duration, rest) = next_word(rest);
            let duration = duration.map(|d| parse_duration(sub, Some(d))).transpose()?;
            no_more(sub, rest)?;
            Ok(Command::Why {
                resource: resource.to_owned(),
                duration,
            })
        }
        Subcommand::Extend => {
            let (id, rest) = next_word(rest);
            let id = parse_id(sub, id)?;
            let (duration, rest) = next_word(rest);
            let duration = parse_duration(sub, duration)?;
            no_more(sub, rest)?;
            Ok(Command::Extend { id, duration })
        }
        Subcommand::Revoke => {
            let (id, rest) = next_word(rest);
            let id = parse_id(sub, id)?;
            let reason = rest.trim();
            if reason.is_empty() {
                return Err(ParseError::MissingReason(sub));
            }
            Ok(Command::Revoke {
                id,
                reason: reason.to_owned(),
            })
        }
        Subcommand::Breakglass => {
            let (resource, rest) = next_word(rest);
            let resource = resource.ok_or(ParseError::MissingResource(sub))?;
            let reason = rest.trim();
            if reason.is_empty() {
                return Err(ParseError::MissingReason(sub));
            }
            Ok(Command::Breakglass {
                resource: resource.to_owned(),
                reason: reason.to_owned(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(text: &str) -> GrantDuration {
        GrantDuration::parse(text).unwrap()
    }

    #[test]
    fn parses_every_form() {
        let cases = [
            ("", Command::OpenForm { resource: None }),
            ("   ", Command::OpenForm { resource: None }),
            ("request", Command::OpenForm { resource: None }),
            (
                "request prod-db",
                Command::OpenForm {
                    resource: Some("prod-db".into()),
                },
            ),
            (
                "request prod-db 2h investigating INC-123",
                Command::Request {
                    resource: "prod-db".into(),
                    duration: d("2h"),
                    start: None,
                    justification: "investigating INC-123".into(),
                },
            ),
            (
                "request prod-db 2h at 23:00 failover drill CHG-7",
                Command::Request {
                    resource: "prod-db".into(),
                    duration: d("2h"),
                    start: Some(StartAt::parse("23:00").unwrap()),
                    justification: "failover drill CHG-7".into(),
                },
            ),
            (
                "request prod-db 2h AT 2026-12-24T22:00Z xmas window",
                Command::Request {
                    resource: "prod-db".into(),
                    duration: d("2h"),
                    start: Some(StartAt::parse("2026-12-24T22:00Z").unwrap()),
                    justification: "xmas window".into(),
                },
            ),
            (
                "request prod-db 2h at the customer's request",
                Command::Request {
                    resource: "prod-db".into(),
                    duration: d("2h"),
                    start: None,
                    justification: "at the customer's request".into(),
                },
            ),
            (
                "  REQUEST   prod-db\t1h30m  spaces\tinside  kept ",
                Command::Request {
                    resource: "prod-db".into(),
                    duration: d("1h30m"),
                    start: None,
                    justification: "spaces\tinside  kept".into(),
                },
            ),
            ("list", Command::List),
            ("help", Command::Help),
            ("cancel 42", Command::Cancel { id: RequestId(42) }),
            ("cancel #42", Command::Cancel { id: RequestId(42) }),
            ("release 7", Command::Release { id: RequestId(7) }),
            (
                "why prod-db",
                Command::Why {
                    resource: "prod-db".into(),
                    duration: None,
                },
            ),
            (
                "why prod-db 3h",
                Command::Why {
                    resource: "prod-db".into(),
                    duration: Some(d("3h")),
                },
            ),
            (
                "extend 7 30m",
                Command::Extend {
                    id: RequestId(7),
                    duration: d("30m"),
                },
            ),
            (
                "revoke 7 left the company",
                Command::Revoke {
                    id: RequestId(7),
                    reason: "left the company".into(),
                },
            ),
            (
                "breakglass prod-db outage INC-9",
                Command::Breakglass {
                    resource: "prod-db".into(),
                    reason: "outage INC-9".into(),
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse(text), Ok(expected), "{text:?}");
        }
    }

    #[test]
    fn refuses_bad_input_with_the_right_form() {
        let cases: [(&str, &str); 18] = [
            ("frobnicate", "`frobnicate` is not a jit command."),
            ("request prod-db 2x fixing", "`2x` is not a duration"),
            ("request prod-db 0s fixing", "`0s` is zero"),
            ("request prod-db 2h", "justification is empty"),
            ("request prod-db 2h    ", "justification is empty"),
            (
                "request prod-db 2h at 25:00 drill",
                "`25:00` is not a start time",
            ),
            (
                "request prod-db 2h at 2026-12-24 drill",
                "`2026-12-24` is not a start time",
            ),
            ("request prod-db 2h at", "When should access start?"),
            ("request prod-db 2h at 23:00", "justification is empty"),
            ("cancel", "Which request?"),
            ("cancel abc", "`abc` is not a request number"),
            ("cancel 4 5", "takes no more arguments"),
            ("list all", "takes no more arguments"),
            ("why", "Which resource?"),
            ("why prod-db forever", "`forever` is not a duration"),
            ("extend 4", "How long?"),
            ("revoke 4", "Please give a reason."),
            ("breakglass prod-db", "Please give a reason."),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err();
            let message = err.user_message();
            assert!(message.contains(expected), "{text:?} gave {message:?}");
            match err.subcommand() {
                Some(sub) => assert!(message.contains(&sub.usage()), "{message}"),
                None => assert!(message.contains("/jit request"), "{message}"),
            }
        }
    }

    #[test]
    fn help_lists_every_subcommand() {
        let help = help_text();
        for sub in Subcommand::ALL {
            assert!(help.contains(&sub.usage()), "{help}");
        }
        insta::assert_snapshot!(help);
    }

    #[test]
    fn bad_input_replies_are_stable() {
        let replies: Vec<String> = [
            "frobnicate",
            "request prod-db two-hours fixing",
            "request prod-db 2h",
            "request prod-db 2h at 7pm drill",
            "cancel x",
            "revoke 4",
        ]
        .iter()
        .map(|t| format!("{t}\n=> {}", parse(t).unwrap_err().user_message()))
        .collect();
        insta::assert_snapshot!(replies.join("\n\n"));
    }
}
