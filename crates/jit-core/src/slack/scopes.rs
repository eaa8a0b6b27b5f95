//! The bot scopes of jit's Slack app (`slack-app.yaml`): what each is for, and which Web API
//! methods need which. Shared by jit's client (`jit doctor` compares them with the token's) and
//! the Slack simulator (whose token has them by default).

/// A bot scope of jit's Slack app (`slack-app.yaml`), and what it is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    pub name: &'static str,
    pub used_for: &'static str,
    /// Only `jit doctor` needs it (to check channel membership): `jit serve` works without it.
    pub doctor_only: bool,
}

/// Every bot scope `slack-app.yaml` asks for. `tests/manifests.rs` checks that the manifest
/// lists exactly these and that they are the ones [`METHOD_SCOPES`] needs; `jit doctor`
/// compares them with the scopes Slack says the token has.
pub const SCOPES: &[Scope] = &[
    Scope {
        name: "commands",
        used_for: "the /jit slash command",
        doctor_only: false,
    },
    Scope {
        name: "chat:write",
        used_for: "approval messages, audit threads and DMs",
        doctor_only: false,
    },
    Scope {
        name: "im:write",
        used_for: "opening DMs with requesters and approvers",
        doctor_only: false,
    },
    Scope {
        name: "users:read",
        used_for: "users.info and users.list: requesters' profiles, and who is a member, a guest or from another workspace",
        doctor_only: false,
    },
    Scope {
        name: "users:read.email",
        used_for: "requesters' emails, the AWS SourceIdentity of a grant",
        doctor_only: false,
    },
    Scope {
        name: "usergroups:read",
        used_for: "members of requester, approver and admin groups",
        doctor_only: false,
    },
    Scope {
        name: "channels:history",
        used_for: "finding jit's own earlier post after a crash or an unanswered call, so no message is posted twice; and jit audit verify --slack: the audit log's heads jit posted (public channels)",
        doctor_only: false,
    },
    Scope {
        name: "groups:history",
        used_for: "the same in private channels",
        doctor_only: false,
    },
    Scope {
        name: "im:history",
        used_for: "the same in DMs: a DM retried after a crash is not sent twice",
        doctor_only: false,
    },
    Scope {
        name: "channels:read",
        used_for: "jit doctor: whether the bot is in the public audit and approvers' channels",
        doctor_only: true,
    },
    Scope {
        name: "groups:read",
        used_for: "jit doctor: whether the bot is in the private audit and approvers' channels",
        doctor_only: true,
    },
];

/// The bot scopes each Web API method jit calls needs. Every method called below must be listed
/// (`tests/manifests.rs` finds the calls and checks it), so a new call cannot land without a
/// look at the manifest's scopes.
pub const METHOD_SCOPES: &[(&str, &[&str])] = &[
    ("auth.test", &[]),
    ("chat.postMessage", &["chat:write"]),
    ("chat.update", &["chat:write"]),
    ("chat.postEphemeral", &["chat:write"]),
    ("conversations.open", &["im:write"]),
    // Public channels need channels:read, private ones groups:read (jit doctor only).
    ("conversations.info", &["channels:read", "groups:read"]),
    // `jit audit verify --slack` reads the audit channel's anchors (public or private channel).
    (
        "conversations.history",
        &["channels:history", "groups:history", "im:history"],
    ),
    // A retried thread reply looks for itself in the thread (audit threads, nudges).
    (
        "conversations.replies",
        &["channels:history", "groups:history", "im:history"],
    ),
    ("views.open", &[]),
    ("views.publish", &[]),
    // The requester's email becomes the AWS SourceIdentity.
    ("users.info", &["users:read", "users:read.email"]),
    ("usergroups.users.list", &["usergroups:read"]),
    // Who is a member, a guest or from another workspace.
    ("users.list", &["users:read"]),
];
