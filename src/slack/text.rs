//! Slack mrkdwn helpers. Text that came from people (justifications, reasons, resource names
//! they typed) is escaped before it is put in a message, so it cannot mention `@channel`,
//! forge a link, or break the formatting of jit's own text.

use chrono::{DateTime, Utc};

use crate::domain::ids::{SlackChannelId, SlackGroupId, SlackUserId};
use crate::domain::policy::{Principals, Requester};

/// Escapes `&`, `<` and `>` as Slack requires.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes and shortens to at most `max` characters.
pub fn escape_truncated(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return escape(text);
    }
    let cut: String = text.chars().take(max.saturating_sub(1)).collect();
    format!("{}…", escape(&cut))
}

/// Inline code of user text: escaped, backticks replaced so the span cannot be broken.
/// A ticket, linked to its tracker when the resource's `ticket.url` says where (Slack's
/// `<url|label>`, both escaped); plain otherwise.
pub fn ticket(ticket: &str, rule: Option<&crate::domain::policy::TicketRule>) -> String {
    let label = escape_truncated(ticket, 200);
    match rule.and_then(|r| r.link(ticket)) {
        Some(url) if url.len() <= 1000 => format!("<{}|{label}>", escape(&url)),
        _ => label,
    }
}

pub fn code(text: &str) -> String {
    format!("`{}`", escape(&text.replace('`', "'")))
}

/// Names (identities, actors) are shown up to this many characters.
const MAX_NAME: usize = 80;

/// [`code`] of a name, shortened with "…" past [`MAX_NAME`] characters.
pub fn name(text: &str) -> String {
    code(&super::limits::truncate_plain(text, MAX_NAME))
}

/// A block quote of user text.
pub fn quote(text: &str, max: usize) -> String {
    escape_truncated(text.trim(), max)
        .lines()
        .map(|line| format!(">{line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn user(id: &SlackUserId) -> String {
    format!("<@{id}>")
}

pub fn group(id: &SlackGroupId) -> String {
    format!("<!subteam^{id}>")
}

pub fn channel(id: &SlackChannelId) -> String {
    format!("<#{id}>")
}

/// `<@U1>` for people, the identity's name for non-human requesters.
pub fn requester(who: &Requester) -> String {
    match who {
        Requester::User(u) => user(u),
        Requester::Identity(id) => format!("identity {}", name(id)),
    }
}

/// An actor column value for people: a mention where it is a user.
pub fn actor(actor: &str) -> String {
    match SlackUserId::parse(actor) {
        Ok(u) => user(&u),
        Err(_) => match actor {
            "policy" => "policy".into(),
            "jit" => "jit".into(),
            other => name(other),
        },
    }
}

/// Users and groups as mentions, e.g. "<@U1>, <!subteam^S1>".
pub fn principals(p: &Principals) -> String {
    let mut parts: Vec<String> = p.users.iter().map(user).collect();
    parts.extend(p.groups.iter().map(group));
    parts.extend(p.identities.iter().map(|i| format!("identity {}", name(i))));
    if parts.is_empty() {
        "nobody".into()
    } else {
        parts.join(", ")
    }
}

/// A time each reader sees in their own time zone, with a UTC fallback.
pub fn time(at: DateTime<Utc>) -> String {
    format!(
        "<!date^{}^{{date_short_pretty}} {{time}}|{}>",
        at.timestamp(),
        at.format("%Y-%m-%d %H:%M UTC")
    )
}

/// Plain UTC time, for places where Slack does not render `<!date>` (modal inputs, plain text).
pub fn utc(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_text_cannot_mention_or_link() {
        assert_eq!(
            escape("<!channel> & <@U1|x>"),
            "&lt;!channel&gt; &amp; &lt;@U1|x&gt;"
        );
        assert_eq!(code("a`b<c"), "`a'b&lt;c`");
        assert_eq!(quote("line one\n<!here>", 100), ">line one\n>&lt;!here&gt;");
        assert_eq!(escape_truncated("abcdef", 4), "abc…");
        assert_eq!(escape_truncated("ab", 4), "ab");
    }

    #[test]
    fn mentions_and_times() {
        let u = SlackUserId::parse("U0ALICE").unwrap();
        assert_eq!(user(&u), "<@U0ALICE>");
        assert_eq!(actor("U0ALICE"), "<@U0ALICE>");
        assert_eq!(actor("cli:root"), "`cli:root`");
        let at = DateTime::parse_from_rfc3339("2026-11-23T14:03:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            time(at),
            "<!date^1795442580^{date_short_pretty} {time}|2026-11-23 14:03 UTC>"
        );
    }
}
