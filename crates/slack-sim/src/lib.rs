//! A stateful fake of the Slack Web API, served over real HTTP on `127.0.0.1`.
//!
//! [`FakeSlack`] answers the Web API methods jit uses, in the shapes slack-morphism 2.31
//! deserializes, and keeps what a workspace would show: channel messages and thread replies (with
//! their edits), DMs, ephemeral messages, opened modals and published App Home views. The
//! integration tests inspect that state; `jit demo` replays [`FakeSlack::events_since`] to print
//! what each person would see.
//!
//! # Simulated
//!
//! - `chat.postMessage` (thread replies with `thread_ts`), `chat.update`, `chat.postEphemeral`;
//! - `conversations.open` for a one-to-one DM, whose channel id is [`FakeSlack::dm_channel_for`];
//!   `chat.postMessage` and `chat.update` in a `D…` channel no `conversations.open` opened are
//!   `channel_not_found`;
//! - `users.info`, `users.list` (paged with `limit` and `cursor`) and `usergroups.users.list`,
//!   from what the test registered with [`FakeSlack::set_user`] (or
//!   [`FakeSlack::set_user_kind`], and [`FakeSlack::deactivate_user`]) and
//!   [`FakeSlack::set_group_members`];
//! - `conversations.history`: a channel's top-level messages newest first, as Slack pages them
//!   (`limit` 1 to 999, default 100; `oldest`/`latest` exclusive unless `inclusive`; an opaque
//!   `cursor` in `response_metadata.next_cursor` while `has_more`), each message with its author
//!   (`user`, and `bot_id` for the bot's own) and, for a thread parent, its `reply_count`;
//!   `channel_not_found` and `not_in_channel` as for posting, `invalid_cursor`,
//!   `invalid_ts_oldest` and `invalid_ts_latest`. Messages people typed are added with
//!   [`FakeSlack::post_as_user`];
//! - `views.open`, `views.update` (by `view_id` or `external_id`, honouring `hash`) and
//!   `views.publish`;
//! - `auth.test`, answering as the bot [`BOT_USER_ID`] of team [`TEAM_ID`];
//! - `conversations.info`: a channel's name ([`FakeSlack::set_channel`]), whether it is private,
//!   archived, and whether the bot is a member ([`FakeSlack::set_channel_state`]); a private
//!   channel the bot is not in, like one that does not exist, is `channel_not_found`;
//! - authentication: every call needs `Authorization: Bearer <bot token>`; without one the answer
//!   is `not_authed`, with another token `invalid_auth` (HTTP 200, as Slack does);
//! - scopes: the token has the scopes of `slack-app.yaml` ([`jit_core::slack::scopes::SCOPES`]) unless a test
//!   sets others with [`FakeSlack::set_scopes`]. Every authenticated answer lists them in the
//!   `x-oauth-scopes` header, and a method whose scope the token lacks is answered as Slack
//!   does: `{"ok":false,"error":"missing_scope","needed":"chat:write","provided":"…"}`
//!   (`chat:write` for `chat.*`, `im:write` for `conversations.open`, `users:read` for
//!   `users.info`, `usergroups:read` for `usergroups.users.list`, `channels:read` or
//!   `groups:read` for `conversations.info` of a public or private channel). Without
//!   `users:read.email`, `users.info` leaves out the email;
//! - Slack's limits, checked by the same validator jit's builders are tested with
//!   ([`limits::check_message`], [`limits::check_view`]): 50 blocks in a message
//!   and 100 in a view, 3,000 characters of section text, 150 of header text, 75 of option and
//!   button text, 2,000 of button value, 255 of ids, 100 options per select, 24 characters of
//!   modal title and buttons, 3,000 of `private_metadata`, 40,000 of message text, and more. A
//!   violation is answered as Slack does: `{"ok":false,"error":"invalid_blocks"}` (or
//!   `msg_too_long` for the text) for `chat.*`, `"invalid_arguments"` for `views.*`, with one line
//!   per violation in `response_metadata.messages`, such as
//!   `[ERROR] must be less than 3001 characters [json-pointer:/blocks/0/text/text]`, and for
//!   `invalid_blocks` the same lines without `[ERROR] ` in a top-level `errors` array, as real
//!   Slack sends them. `chat.postMessage`, `chat.update`, `chat.postEphemeral`, `views.open`,
//!   `views.update` and `views.publish` are all checked;
//! - channels that refuse posts ([`FakeSlack::set_channel_state`]): `not_in_channel` (or
//!   `channel_not_found` for a private channel), `is_archived` or `channel_not_found` for
//!   `chat.postMessage`, `chat.update` and `chat.postEphemeral`;
//! - injected faults ([`Fault`]): HTTP 429 with `Retry-After`, 5xx, slow answers, API errors, and
//!   successful answers with fields and shapes jit has never seen ([`Fault::OddAnswer`]);
//! - Slack's posting pace, when switched on with [`FakeSlack::set_post_pace`]: `chat.postMessage`
//!   beyond N messages per second per channel (after a burst) is answered as Slack does, HTTP 429
//!   with `Retry-After: <seconds>` and `{"ok":false,"error":"ratelimited"}`, and posts nothing.
//!   Off by default.
//!
//! Requests may be JSON bodies (what slack-morphism sends for POST methods), form-encoded bodies
//! (JSON-valued fields such as `blocks` or `view` are decoded) or query strings (what it sends for
//! GET methods such as `users.info`); the three are merged into one JSON object, which is also what
//! [`FakeSlack::calls`] records.
//!
//! # Not simulated
//!
//! Channel membership and permissions beyond [`FakeSlack::set_channel_state`] (any other
//! well-formed channel id exists as a public channel the bot is in; channel names such as `#general` and user ids as `channel` are refused with
//! `channel_not_found`, so jit must use ids and `conversations.open`), multi-person DMs, `trigger_id` expiry (inject `Fault::ApiError("expired_trigger_id")`
//! instead), rate limits other than the posting pace (inject [`Fault::RateLimited`]), Events API callbacks to the bot,
//! `response_url`s, and every method not listed above, which answers `unknown_method`.
//! Timestamps and ids are deterministic counters, not the wall clock.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::any;
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::Notify;

use jit_core::slack::limits;

/// Team id of the simulated workspace.
pub const TEAM_ID: &str = "T0JITSIM";
/// User id of the bot, as `auth.test` reports it and as the author of every posted message.
pub const BOT_USER_ID: &str = "U0JITBOT";
/// Bot id of the bot.
pub const BOT_ID: &str = "B0JITBOT";
/// App id of the bot's app.
pub const APP_ID: &str = "A0JITAPP";

/// Seconds part of the first message timestamp; later ones count up from it.
const TS_EPOCH: u64 = 1_700_000_000;

/// A failure to inject into upcoming calls with [`FakeSlack::inject`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 429 with a `Retry-After: <secs>` header and `{"ok":false,"error":"ratelimited"}`.
    RateLimited {
        /// Seconds announced in `Retry-After`.
        retry_after_secs: u64,
    },
    /// This HTTP status (for example 500 or 503) with `{"ok":false,"error":"internal_error"}`.
    /// A value that is not a valid status code is answered as 500.
    ServerError(u16),
    /// Waits this long, then answers normally. A call whose client gives up first (a timeout
    /// dropping the connection) is not recorded in [`FakeSlack::calls`] and changes nothing.
    Hang(Duration),
    /// HTTP 200 with `{"ok":false,"error":<code>}`.
    ApiError(String),
    /// HTTP 200 with `{"ok":false,"error":<code>,"response_metadata":{"messages":[…]}}`, the
    /// shape of a refusal that explains itself (for example `invalid_arguments` with
    /// `[ERROR] … [json-pointer:…]` lines).
    Refused { code: String, messages: Vec<String> },
    /// The call takes effect and is answered `ok: true`, but the answer also carries fields Slack
    /// may add one day and odd shapes in the fields jit does not read (a `message` whose
    /// `blocks` is a string, a `view` whose `state` is not an object, a `warning`, …).
    OddAnswer,
    /// The call takes effect (the message is posted), but its answer is lost on the way: jit
    /// gets HTTP 502, as from a proxy whose connection to Slack dropped. What a process killed
    /// between Slack's answer and recording it looks like to the next attempt.
    AnswerLost,
}

/// Whether the bot may post in a channel ([`FakeSlack::set_channel_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelState {
    /// The default: the bot may post.
    Member,
    /// The bot was never invited: `not_in_channel` (`channel_not_found` if the channel is
    /// private, which the bot then cannot see).
    NotInChannel,
    /// The channel was archived: `is_archived`.
    Archived,
    /// The channel was deleted (or never existed): `channel_not_found`.
    NotFound,
}

/// A message in a channel or thread, as it currently stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Message {
    /// Channel id (`C…`, `G…` or `D…`).
    pub channel: String,
    /// Timestamp Slack assigned, which identifies the message in its channel.
    pub ts: String,
    /// Parent message's `ts` for a thread reply, `None` for a top-level message.
    pub thread_ts: Option<String>,
    /// The `text` field (empty when only blocks were sent).
    pub text: String,
    /// The Block Kit `blocks` array, or `Null` when the message has none.
    pub blocks: Value,
    /// Number of `chat.update` calls applied to this message.
    pub edits: usize,
    /// The message's `metadata` (`event_type` and `event_payload`), or `Null`.
    pub metadata: Value,
}

impl Message {
    /// What a person would read: the rendered blocks, or the text when there are none.
    pub fn rendered(&self) -> String {
        render_content(&self.text, &self.blocks)
    }
}

/// A message sent with `chat.postEphemeral`: visible to one user only, never updated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ephemeral {
    /// Channel the message was shown in.
    pub channel: String,
    /// The only user who sees it.
    pub user: String,
    /// The `text` field (empty when only blocks were sent).
    pub text: String,
    /// The Block Kit `blocks` array, or `Null`.
    pub blocks: Value,
}

impl Ephemeral {
    /// What the user would read: the rendered blocks, or the text when there are none.
    pub fn rendered(&self) -> String {
        render_content(&self.text, &self.blocks)
    }
}

/// A modal opened with `views.open`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpenedView {
    /// The `trigger_id` it was opened with.
    pub trigger_id: String,
    /// The view as opened (later `views.update` calls are in `updates`).
    pub view: Value,
    /// The id Slack assigned (`V…`).
    pub view_id: String,
    /// Every view this modal was replaced with by `views.update`, in order.
    pub updates: Vec<Value>,
}

impl OpenedView {
    /// The view as the user currently sees it: the last update, or the view as opened.
    pub fn current(&self) -> &Value {
        self.updates.last().unwrap_or(&self.view)
    }
}

/// One Web API call the fake answered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Call {
    /// Method name, for example `chat.postMessage`.
    pub method: String,
    /// Query string and body parameters merged into one JSON object.
    pub body: Value,
    /// HTTP status answered.
    pub status: u16,
    /// The `ok` flag answered (false for errors and injected faults).
    pub ok: bool,
}

/// A change a person could see, in the order the fake applied them.
#[allow(clippy::large_enum_variant)] // a test double: kept by value for easy matching
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SlackEvent {
    /// A new message or thread reply.
    Posted {
        /// The message as posted.
        message: Message,
    },
    /// A message was edited with `chat.update`.
    Updated {
        /// The message after the edit.
        message: Message,
        /// The message before the edit.
        before: Message,
    },
    /// An ephemeral message was shown to one user.
    Ephemeral {
        /// The ephemeral message.
        ephemeral: Ephemeral,
    },
    /// A modal was opened.
    ViewOpened {
        /// The modal, as opened.
        view: OpenedView,
    },
    /// A modal or App Home view was replaced with `views.update`.
    ViewUpdated {
        /// Id of the replaced view.
        view_id: String,
        /// The new view.
        view: Value,
    },
    /// A user's App Home was published with `views.publish`.
    ViewPublished {
        /// The user whose App Home it is.
        user: String,
        /// The published view.
        view: Value,
    },
}

/// A fake Slack Web API on `127.0.0.1`, shared by cheap clones.
///
/// The server stops when the last clone is dropped.
#[derive(Clone)]
pub struct FakeSlack {
    shared: Arc<Shared>,
    addr: SocketAddr,
    _shutdown: Arc<ShutdownOnDrop>,
}

impl fmt::Debug for FakeSlack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeSlack")
            .field("api_url", &self.api_url())
            .finish_non_exhaustive()
    }
}

impl FakeSlack {
    /// Binds `127.0.0.1:0` and serves in a background tokio task.
    ///
    /// Requests must carry `Authorization: Bearer <bot_token>`; otherwise they are answered
    /// `{"ok":false,"error":"not_authed"}` (no token) or `"invalid_auth"` (another token).
    pub async fn start(bot_token: &str) -> anyhow::Result<FakeSlack> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the fake Slack API to 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            bot_token: bot_token.to_owned(),
            state: Mutex::new(SimState {
                scopes: jit_core::slack::scopes::SCOPES
                    .iter()
                    .map(|s| s.name.to_owned())
                    .collect(),
                ..SimState::default()
            }),
        });
        let router = Router::new()
            .route("/api/{method}", any(handle))
            .with_state(Arc::clone(&shared));
        let stop = Arc::new(Notify::new());
        let stopped = Arc::clone(&stop);
        tokio::spawn(async move {
            let server = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stopped.notified().await });
            if let Err(err) = server.await {
                tracing::warn!(error = %err, "fake Slack API server failed");
            }
        });
        Ok(FakeSlack {
            shared,
            addr,
            _shutdown: Arc::new(ShutdownOnDrop(stop)),
        })
    }

    /// Base URL for `SlackClientHyperConnector::with_slack_api_url`:
    /// `http://127.0.0.1:PORT/api`, without a trailing slash.
    pub fn api_url(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    /// Registers (or replaces) a user for `users.info`. `name` is used as the handle, the real
    /// name and the display name. Unregistered users are answered `user_not_found`.
    pub fn set_user(&self, id: &str, name: &str, email: Option<&str>) {
        self.set_user_kind(id, name, email, UserKind::Member);
    }

    /// Registers a user of the given kind (a guest, a member of another workspace).
    /// A user registered again keeps the time zone [`FakeSlack::set_user_tz`] gave them.
    pub fn set_user_kind(&self, id: &str, name: &str, email: Option<&str>, kind: UserKind) {
        let mut shared = self.shared.lock();
        let tz_offset = shared.users.get(id).map_or(0, |u| u.tz_offset);
        shared.users.insert(
            id.to_owned(),
            FakeUser {
                name: name.to_owned(),
                email: email.map(str::to_owned),
                kind,
                deleted: false,
                tz_offset,
            },
        );
    }

    /// Sets a registered user's time zone: `users.info` and `users.list` then answer with this
    /// `tz_offset` (seconds east of UTC, as Slack gives it) and a matching `tz` and `tz_label`.
    pub fn set_user_tz(&self, id: &str, tz_offset: i32) {
        if let Some(user) = self.shared.lock().users.get_mut(id) {
            user.tz_offset = tz_offset;
        }
    }

    /// Deactivates a registered user: `users.info` still answers, with `deleted: true`.
    pub fn deactivate_user(&self, id: &str) {
        if let Some(user) = self.shared.lock().users.get_mut(id) {
            user.deleted = true;
        }
    }

    /// Sets the members of a user group for `usergroups.users.list`. Unknown groups are answered
    /// `no_such_subteam`.
    pub fn set_group_members(&self, group: &str, members: &[&str]) {
        self.shared.lock().groups.insert(
            group.to_owned(),
            members.iter().map(|m| (*m).to_owned()).collect(),
        );
    }

    /// The DM channel id `conversations.open` returns for `user`: `D` followed by the user id
    /// without its first character, upper-cased (`U01ALICE` → `D01ALICE`).
    pub fn dm_channel_for(&self, user: &str) -> String {
        dm_channel_id(user)
    }

    /// The user whose DM channel `channel` is, if a `conversations.open` call opened it.
    pub fn dm_owner(&self, channel: &str) -> Option<String> {
        self.shared.lock().dm_owners.get(channel).cloned()
    }

    /// A top-level message typed by a person (`user`), not the bot: it shows in
    /// `conversations.history` with that author. Returns its ts.
    pub fn post_as_user(&self, channel: &str, user: &str, text: &str) -> String {
        let mut state = self.shared.lock();
        let message = Message {
            channel: channel.to_owned(),
            ts: state.next_ts(),
            thread_ts: None,
            text: text.to_owned(),
            blocks: Value::Null,
            edits: 0,
            metadata: Value::Null,
        };
        state.authors.insert(message.ts.clone(), user.to_owned());
        state.messages.push(message.clone());
        message.ts
    }

    /// Top-level messages of `channel` as they currently stand, in post order.
    pub fn messages(&self, channel: &str) -> Vec<Message> {
        self.shared
            .lock()
            .messages
            .iter()
            .filter(|m| m.channel == channel && m.thread_ts.is_none())
            .cloned()
            .collect()
    }

    /// Replies in the thread under the message `thread_ts` of `channel`, in post order.
    pub fn thread(&self, channel: &str, thread_ts: &str) -> Vec<Message> {
        self.shared
            .lock()
            .messages
            .iter()
            .filter(|m| m.channel == channel && m.thread_ts.as_deref() == Some(thread_ts))
            .cloned()
            .collect()
    }

    /// Top-level messages in `user`'s DM channel ([`FakeSlack::dm_channel_for`]).
    pub fn dms(&self, user: &str) -> Vec<Message> {
        self.messages(&dm_channel_id(user))
    }

    /// Ephemeral messages shown to `user`, in order.
    pub fn ephemerals(&self, user: &str) -> Vec<Ephemeral> {
        self.shared
            .lock()
            .ephemerals
            .iter()
            .filter(|e| e.user == user)
            .cloned()
            .collect()
    }

    /// Every modal opened with `views.open`, in order, with its `views.update` history.
    pub fn opened_views(&self) -> Vec<OpenedView> {
        self.shared.lock().opened.clone()
    }

    /// The App Home view `user` currently sees: the last `views.publish` for that user (or a
    /// later `views.update` of it).
    pub fn published_view(&self, user: &str) -> Option<Value> {
        let state = self.shared.lock();
        let id = state.home_views.get(user)?;
        state.views.get(id).map(|slot| slot.current.clone())
    }

    /// Every API call answered so far, including refused and faulted ones, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.lock().calls.clone()
    }

    /// How many messages (top-level and replies, in every channel) carry each metadata key
    /// jit tags its posts with (`event_payload.key`): a key counted twice is a message posted
    /// twice.
    pub fn posts_by_key(&self) -> std::collections::BTreeMap<String, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for message in &self.shared.lock().messages {
            if let Some(key) = message
                .metadata
                .pointer("/event_payload/key")
                .and_then(Value::as_str)
            {
                *counts.entry(key.to_owned()).or_insert(0) += 1;
            }
        }
        counts
    }

    /// How many calls of `method` were answered so far (whatever the outcome).
    pub fn call_count(&self, method: &str) -> usize {
        self.shared
            .lock()
            .calls
            .iter()
            .filter(|c| c.method == method)
            .count()
    }

    /// Makes the next `times` calls of `method` (`"*"`: of any method; `"method@C123"`: of
    /// `method` with `channel` C123) fail with `fault`.
    ///
    /// Faults are consumed in the order they were injected; a call takes at most one fault.
    pub fn inject(&self, method: &str, fault: Fault, times: usize) {
        if times > 0 {
            self.shared.lock().faults.push(PendingFault {
                method: method.to_owned(),
                fault,
                remaining: times,
            });
        }
    }

    /// Makes `chat.postMessage`, `chat.update` and `chat.postEphemeral` in `channel` answer as
    /// Slack does for a channel in `state` (until set back to [`ChannelState::Member`]).
    pub fn set_channel_state(&self, channel: &str, state: ChannelState) {
        let mut shared = self.shared.lock();
        if state == ChannelState::Member {
            shared.channel_states.remove(channel);
        } else {
            shared.channel_states.insert(channel.to_owned(), state);
        }
    }

    /// Names a channel for `conversations.info`, public or private. Unnamed channels are public
    /// and named after their id in lower case.
    pub fn set_channel(&self, id: &str, name: &str, private: bool) {
        self.shared.lock().channels.insert(
            id.to_owned(),
            FakeChannel {
                name: name.to_owned(),
                private,
            },
        );
    }

    /// The scopes the bot token has from now on (default: those of `slack-app.yaml`).
    pub fn set_scopes(&self, scopes: &[&str]) {
        self.shared.lock().scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
    }

    /// Paces `chat.postMessage` per channel as Slack does: `per_second` messages a second, after
    /// a burst of `burst`; a post beyond it is answered HTTP 429 with `Retry-After` (whole
    /// seconds, at least 1) and is not posted. `None` (the default): no pace.
    pub fn set_post_pace(&self, pace: Option<(u32, u32)>) {
        let mut state = self.shared.lock();
        state.pace = pace.map(|(per_second, burst)| Pace {
            per_second: f64::from(per_second.max(1)),
            burst: f64::from(burst.max(1)),
        });
        state.buckets.clear();
    }

    /// `chat.postMessage` calls answered 429 by the posting pace so far.
    pub fn paced_posts(&self) -> usize {
        self.shared.lock().paced
    }

    /// Answers every call only after `latency` (benchmarks model Slack's round trip with it).
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// How many injected answers are still to be given.
    pub fn faults_left(&self) -> usize {
        self.shared.lock().faults.iter().map(|f| f.remaining).sum()
    }

    /// Drops every fault not consumed yet.
    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Visible changes since `cursor` (start with 0), and the cursor to pass next time.
    pub fn events_since(&self, cursor: usize) -> (Vec<SlackEvent>, usize) {
        let state = self.shared.lock();
        let events = state.events.get(cursor..).unwrap_or_default().to_vec();
        (events, state.events.len())
    }
}

/// Wakes the server's graceful shutdown when the last [`FakeSlack`] clone goes away.
struct ShutdownOnDrop(Arc<Notify>);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

struct Shared {
    bot_token: String,
    state: Mutex<SimState>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panicking test thread must not hide the state from the others.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct FakeUser {
    name: String,
    email: Option<String>,
    kind: UserKind,
    deleted: bool,
    /// Seconds east of UTC (Slack's `tz_offset`).
    tz_offset: i32,
}

struct FakeChannel {
    name: String,
    private: bool,
}

/// Who a registered user is to the simulated workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UserKind {
    /// A full member of [`TEAM_ID`].
    #[default]
    Member,
    /// A multi-channel guest (`is_restricted`).
    Guest,
    /// A single-channel guest (`is_ultra_restricted`).
    SingleChannelGuest,
    /// A member of another workspace, seen through Slack Connect: `users.info` knows them (with
    /// their own `team_id`), `users.list` does not list them.
    External,
}

struct PendingFault {
    method: String,
    fault: Fault,
    remaining: usize,
}

/// A modal or App Home view that `views.update` can address.
struct ViewSlot {
    hash: String,
    external_id: Option<String>,
    current: Value,
    origin: ViewOrigin,
}

enum ViewOrigin {
    /// Index into `SimState::opened`.
    Modal(usize),
    /// An App Home (`SimState::home_views` says whose).
    Home,
}

#[derive(Default)]
struct SimState {
    ts_counter: u64,
    view_counter: u64,
    revision: u64,
    users: HashMap<String, FakeUser>,
    groups: HashMap<String, Vec<String>>,
    dm_owners: HashMap<String, String>,
    channel_states: HashMap<String, ChannelState>,
    channels: HashMap<String, FakeChannel>,
    /// The bot token's scopes.
    scopes: Vec<String>,
    messages: Vec<Message>,
    /// Authors of messages people typed ([`FakeSlack::post_as_user`]), by ts; every other
    /// message is the bot's.
    authors: HashMap<String, String>,
    ephemerals: Vec<Ephemeral>,
    opened: Vec<OpenedView>,
    views: HashMap<String, ViewSlot>,
    home_views: HashMap<String, String>,
    calls: Vec<Call>,
    faults: Vec<PendingFault>,
    /// Added to every answer.
    latency: Duration,
    events: Vec<SlackEvent>,
    /// Slack's posting pace ([`FakeSlack::set_post_pace`]), and each channel's token bucket:
    /// tokens left and when they were counted.
    pace: Option<Pace>,
    buckets: HashMap<String, (f64, std::time::Instant)>,
    paced: usize,
}

#[derive(Debug, Clone, Copy)]
struct Pace {
    per_second: f64,
    burst: f64,
}

/// An HTTP answer before it becomes an axum response.
struct Reply {
    status: StatusCode,
    retry_after: Option<u64>,
    body: Value,
    /// The `x-oauth-scopes` header (answers to an authenticated call).
    scopes: Option<String>,
}

impl Reply {
    fn ok(mut fields: Value) -> Reply {
        if let Value::Object(map) = &mut fields {
            map.insert("ok".into(), Value::Bool(true));
        }
        Reply {
            status: StatusCode::OK,
            retry_after: None,
            body: fields,
            scopes: None,
        }
    }

    fn error(code: &str) -> Reply {
        Reply {
            status: StatusCode::OK,
            retry_after: None,
            body: json!({ "ok": false, "error": code }),
            scopes: None,
        }
    }

    fn is_ok(&self) -> bool {
        self.body.get("ok") == Some(&Value::Bool(true))
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(scopes) = self.scopes.and_then(|s| HeaderValue::from_str(&s).ok()) {
            response.headers_mut().insert("x-oauth-scopes", scopes);
        }
        response
    }
}

/// A refused call: Slack's error code, and why, for `response_metadata.messages`.
#[derive(Debug)]
struct Failure {
    code: &'static str,
    messages: Vec<String>,
    /// Further top-level fields of the answer (`needed` and `provided` of `missing_scope`).
    fields: Map<String, Value>,
}

impl Failure {
    fn because(code: &'static str, detail: impl Into<String>) -> Failure {
        Failure {
            code,
            messages: vec![format!("[ERROR] {}", detail.into())],
            fields: Map::new(),
        }
    }

    /// Slack's answer to a call the token lacks the scope for.
    fn missing_scope(needed: &str, provided: &[String]) -> Failure {
        let mut fields = Map::new();
        fields.insert("needed".into(), json!(needed));
        fields.insert("provided".into(), json!(provided.join(",")));
        Failure {
            code: "missing_scope",
            messages: Vec::new(),
            fields,
        }
    }

    /// Slack's answer to a broken limit: one `[ERROR] … [json-pointer:…]` line per violation
    /// in `response_metadata.messages`. For `invalid_blocks` (the `chat.*` methods) Slack also
    /// repeats each line, without its `[ERROR] ` prefix, in a top-level `errors` array.
    fn violations(code: &'static str, found: Vec<limits::Violation>) -> Failure {
        let mut fields = Map::new();
        if code == "invalid_blocks" {
            let errors: Vec<String> = found
                .iter()
                .map(|v| format!("{} [json-pointer:{}]", v.message, v.pointer))
                .collect();
            fields.insert("errors".into(), json!(errors));
        }
        Failure {
            code,
            messages: found.iter().map(ToString::to_string).collect(),
            fields,
        }
    }
}

impl From<&'static str> for Failure {
    fn from(code: &'static str) -> Failure {
        Failure {
            code,
            messages: Vec::new(),
            fields: Map::new(),
        }
    }
}

impl From<Failure> for Reply {
    fn from(err: Failure) -> Reply {
        let mut reply = Reply::error(err.code);
        if !err.messages.is_empty() {
            reply.body["response_metadata"] = json!({ "messages": err.messages });
        }
        if let Value::Object(body) = &mut reply.body {
            body.extend(err.fields);
        }
        reply
    }
}

type ApiResult = Result<Value, Failure>;

async fn handle(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path(method): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let params = parse_params(&headers, query.as_deref(), &body);
    let recorded = match &params {
        Ok(params) => Value::Object(params.clone()),
        Err(_) => Value::String(String::from_utf8_lossy(&body).into_owned()),
    };
    // Bound first: the guard must be released before a delay is awaited.
    let (fault, latency) = {
        let mut state = shared.lock();
        let channel = params
            .as_ref()
            .ok()
            .and_then(|p| str_param(p, "channel"))
            .map(str::to_owned);
        (state.take_fault(&method, channel.as_deref()), state.latency)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let odd = fault == Some(Fault::OddAnswer);
    let lost = fault == Some(Fault::AnswerLost);
    let faulted = match fault {
        Some(fault) => fault_reply(fault).await,
        None => None,
    };

    let mut state = shared.lock();
    let mut reply = faulted.unwrap_or_else(|| {
        let authed = check_auth(&headers, &shared.bot_token);
        let scoped = authed.is_ok();
        let checked = authed.map_err(Failure::from).and(params);
        if let Ok(params) = &checked
            && let Some(paced) = state.pace(&method, params)
        {
            return paced;
        }
        let mut reply = checked
            .and_then(|params| state.dispatch(&method, &params))
            .map_or_else(Reply::from, Reply::ok);
        if scoped {
            reply.scopes = Some(state.scopes.join(","));
        }
        reply
    });
    if odd && reply.is_ok() {
        oddify(&mut reply.body);
    }
    if lost {
        reply = Reply {
            status: StatusCode::BAD_GATEWAY,
            retry_after: None,
            body: json!({ "ok": false, "error": "bad_gateway" }),
            scopes: None,
        };
    }
    state.calls.push(Call {
        method,
        body: recorded,
        status: reply.status.as_u16(),
        ok: reply.is_ok(),
    });
    reply
}

/// The answer an injected fault forces, or `None` to answer normally (after a hang's delay).
async fn fault_reply(fault: Fault) -> Option<Reply> {
    let reply = match fault {
        Fault::RateLimited { retry_after_secs } => Reply {
            status: StatusCode::TOO_MANY_REQUESTS,
            retry_after: Some(retry_after_secs),
            body: json!({ "ok": false, "error": "ratelimited" }),
            scopes: None,
        },
        Fault::ServerError(code) => Reply {
            status: StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            retry_after: None,
            body: json!({ "ok": false, "error": "internal_error" }),
            scopes: None,
        },
        Fault::ApiError(code) => Reply::error(&code),
        Fault::Refused { code, messages } => {
            let mut reply = Reply::error(&code);
            reply.body["response_metadata"] = json!({ "messages": messages });
            reply
        }
        Fault::Hang(delay) => {
            tokio::time::sleep(delay).await;
            return None;
        }
        Fault::OddAnswer | Fault::AnswerLost => return None,
    };
    Some(reply)
}

/// A successful answer as a future Slack might send it: extra fields everywhere, and odd shapes
/// in the fields jit does not read. The fields jit reads (`ts`, `channel`, `view.id`,
/// `user.profile.email`, `users`) keep their meaning.
fn oddify(body: &mut Value) {
    body["warning"] = json!("superfluous_charset");
    body["response_metadata"] = json!({
        "warnings": ["superfluous_charset"],
        "messages": [{"unexpected": "shape"}],
        "next_cursor": 7,
    });
    body["added_in_2031"] = json!({"nested": [1, "two", null, {"deep": true}]});
    if let Some(message) = body.get_mut("message").filter(|m| m.is_object()) {
        message["blocks"] = json!("blocks as a string");
        message["metadata"] = json!(["event_type", 42]);
        message["bot_profile"] = json!({"icons": "none", "deleted": "no"});
    }
    if let Some(channel) = body.get_mut("channel").filter(|c| c.is_object()) {
        channel["created"] = json!("yesterday");
        channel["is_im"] = json!("yes");
        channel["properties"] = json!([1, 2, 3]);
    }
    if let Some(view) = body.get_mut("view").filter(|v| v.is_object()) {
        view["state"] = json!({"values": "none yet"});
        view["type"] = json!("modal_v2");
        view["previous_view_id"] = json!(17);
    }
    if let Some(user) = body.get_mut("user").filter(|u| u.is_object()) {
        user["is_bot"] = json!("sometimes");
        user["tz_offset"] = json!("+00:00");
        if let Some(profile) = user.get_mut("profile").filter(|p| p.is_object()) {
            profile["fields"] = json!(["odd"]);
            profile["status_emoji_display_info"] = json!("none");
        }
    }
}

fn check_auth(headers: &HeaderMap, bot_token: &str) -> Result<(), &'static str> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match value.and_then(|v| v.strip_prefix("Bearer ")) {
        None | Some("") => Err("not_authed"),
        Some(token) if token == bot_token => Ok(()),
        Some(_) => Err("invalid_auth"),
    }
}

/// Form fields whose values Slack decodes as JSON.
const JSON_FORM_FIELDS: [&str; 5] = ["blocks", "attachments", "view", "metadata", "users"];

/// Merges the query string and the body (JSON or form-encoded) into one JSON object.
fn parse_params(
    headers: &HeaderMap,
    query: Option<&str>,
    body: &[u8],
) -> Result<Map<String, Value>, Failure> {
    let mut params = Map::new();
    if let Some(query) = query {
        insert_form(&mut params, query.as_bytes());
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(params);
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type.starts_with("application/json") {
        match serde_json::from_slice(body) {
            Ok(Value::Object(fields)) => params.extend(fields),
            Ok(_) => return Err(Failure::because("invalid_json", "body is not an object")),
            Err(err) => return Err(Failure::because("invalid_json", err.to_string())),
        }
    } else {
        insert_form(&mut params, body);
    }
    Ok(params)
}

fn insert_form(params: &mut Map<String, Value>, encoded: &[u8]) {
    for (key, value) in url::form_urlencoded::parse(encoded) {
        let decoded = if JSON_FORM_FIELDS.contains(&key.as_ref())
            && (value.starts_with('[') || value.starts_with('{'))
        {
            serde_json::from_str(&value).unwrap_or_else(|_| Value::String(value.to_string()))
        } else {
            Value::String(value.into_owned())
        };
        params.insert(key.into_owned(), decoded);
    }
}

fn dm_channel_id(user: &str) -> String {
    let rest: String = user
        .chars()
        .skip(1)
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect();
    format!("D{rest}")
}

fn is_slack_id(id: &str, prefixes: &[char]) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| prefixes.contains(&c))
        && id.len() > 1
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

fn str_param<'a>(params: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    params
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn channel_param(params: &Map<String, Value>) -> Result<String, Failure> {
    match str_param(params, "channel") {
        Some(channel) if is_slack_id(channel, &['C', 'G', 'D']) => Ok(channel.to_owned()),
        Some(channel) => Err(Failure::because(
            "channel_not_found",
            format!("{channel:?} is not a channel id"),
        )),
        None => Err(Failure::because("channel_not_found", "channel is missing")),
    }
}

/// The text (or `markdown_text`) and blocks of a message, validated with
/// [`limits::check_message`]: text over the limit is `msg_too_long`, a broken block limit
/// `invalid_blocks`, as Slack answers.
fn message_content(
    params: &Map<String, Value>,
) -> Result<(Option<String>, Option<Value>), Failure> {
    let text = str_param(params, "text")
        .or_else(|| str_param(params, "markdown_text"))
        .map(str::to_owned);
    let blocks = params.get("blocks").filter(|b| !b.is_null()).cloned();
    if blocks.as_ref().is_some_and(|b| !b.is_array()) {
        return Err(Failure::because(
            "invalid_blocks_format",
            "must be an array [json-pointer:/blocks]",
        ));
    }
    let found = limits::check_message(text.as_deref(), blocks.as_ref());
    if found.iter().any(|v| v.pointer == "/text") {
        return Err(Failure::violations("msg_too_long", found));
    }
    if !found.is_empty() {
        return Err(Failure::violations("invalid_blocks", found));
    }
    Ok((text, blocks))
}

/// Normalizes a blocks array: an empty array means no blocks.
fn stored_blocks(blocks: Option<Value>) -> Value {
    match blocks {
        Some(Value::Array(list)) if list.is_empty() => Value::Null,
        Some(blocks) => blocks,
        None => Value::Null,
    }
}

impl SimState {
    /// The 429 a post beyond its channel's pace gets, or `None` when it may go (taking a token).
    fn pace(&mut self, method: &str, params: &Map<String, Value>) -> Option<Reply> {
        let pace = self.pace?;
        if method != "chat.postMessage" {
            return None;
        }
        let channel = str_param(params, "channel")?.to_owned();
        let now = std::time::Instant::now();
        let (tokens, at) = self.buckets.entry(channel).or_insert((pace.burst, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * pace.per_second).min(pace.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return None;
        }
        self.paced += 1;
        let wait = (1.0 - *tokens) / pace.per_second;
        Some(Reply {
            status: StatusCode::TOO_MANY_REQUESTS,
            retry_after: Some((wait.ceil() as u64).max(1)),
            body: json!({ "ok": false, "error": "ratelimited" }),
            scopes: None,
        })
    }

    fn take_fault(&mut self, method: &str, channel: Option<&str>) -> Option<Fault> {
        let targeted = channel.map(|c| format!("{method}@{c}"));
        let index = self.faults.iter().position(|f| {
            f.method == method || f.method == "*" || Some(&f.method) == targeted.as_ref()
        })?;
        let pending = &mut self.faults[index];
        pending.remaining -= 1;
        let fault = pending.fault.clone();
        if pending.remaining == 0 {
            self.faults.remove(index);
        }
        Some(fault)
    }

    fn dispatch(&mut self, method: &str, params: &Map<String, Value>) -> ApiResult {
        let needed = match method {
            "chat.postMessage" | "chat.update" | "chat.postEphemeral" => Some("chat:write"),
            "conversations.open" => Some("im:write"),
            "users.info" => Some("users:read"),
            "usergroups.users.list" => Some("usergroups:read"),
            _ => None,
        };
        if let Some(needed) = needed {
            self.require_scope(needed)?;
        }
        match method {
            "auth.test" => Ok(auth_test()),
            "conversations.info" => self.conversation_info(params),
            "chat.postMessage" => self.post_message(params),
            "chat.update" => self.update_message(params),
            "chat.postEphemeral" => self.post_ephemeral(params),
            "conversations.open" => self.open_conversation(params),
            "conversations.history" => self.history(params),
            "conversations.replies" => self.replies(params),
            "users.info" => self.user_info(params),
            "users.list" => self.users_list(params),
            "usergroups.users.list" => self.group_members(params),
            "views.open" => self.open_view(params),
            "views.update" => self.update_view(params),
            "views.publish" => self.publish_view(params),
            _ => Err(Failure::because(
                "unknown_method",
                format!("{method} is not simulated"),
            )),
        }
    }

    fn next_ts(&mut self) -> String {
        self.ts_counter += 1;
        let micros = self.ts_counter * 100;
        format!(
            "{}.{:06}",
            TS_EPOCH + micros / 1_000_000,
            micros % 1_000_000
        )
    }

    fn next_hash(&mut self) -> String {
        self.revision += 1;
        format!("{TS_EPOCH}.{:08x}", self.revision)
    }

    fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    fn require_scope(&self, scope: &str) -> Result<(), Failure> {
        if self.has_scope(scope) {
            Ok(())
        } else {
            Err(Failure::missing_scope(scope, &self.scopes))
        }
    }

    fn is_private(&self, channel: &str) -> bool {
        channel.starts_with('G') || self.channels.get(channel).is_some_and(|c| c.private)
    }

    /// Slack's answer when the bot may not post in `channel`.
    fn check_channel(&self, channel: &str) -> Result<(), Failure> {
        match self.channel_states.get(channel) {
            None | Some(ChannelState::Member) => Ok(()),
            // The bot cannot see a private channel it is not in.
            Some(ChannelState::NotInChannel) if self.is_private(channel) => {
                Err("channel_not_found".into())
            }
            Some(ChannelState::NotInChannel) => Err("not_in_channel".into()),
            Some(ChannelState::Archived) => Err("is_archived".into()),
            Some(ChannelState::NotFound) => Err("channel_not_found".into()),
        }
    }

    /// `conversations.history`, as Slack answers it.
    fn history(&self, params: &Map<String, Value>) -> ApiResult {
        let channel = channel_param(params)?;
        match self.channel_states.get(&channel) {
            Some(ChannelState::NotFound) => return Err("channel_not_found".into()),
            Some(ChannelState::NotInChannel) => return Err("not_in_channel".into()),
            // An archived channel keeps its history.
            _ => {}
        }
        let limit = match params.get("limit") {
            Some(Value::Number(n)) => n.as_u64().unwrap_or(100),
            Some(Value::String(s)) => s.trim().parse().unwrap_or(100),
            _ => 100,
        }
        .clamp(1, 999) as usize;
        let inclusive = match params.get("inclusive") {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s == "true" || s == "1",
            Some(Value::Number(n)) => n.as_u64() == Some(1),
            _ => false,
        };
        let bound = |key: &str, code: &'static str| -> Result<Option<(u64, u64)>, Failure> {
            match str_param(params, key) {
                None => Ok(None),
                Some(text) => parse_ts(text)
                    .map(Some)
                    .ok_or_else(|| Failure::because(code, format!("{key} is not a timestamp"))),
            }
        };
        let oldest = bound("oldest", "invalid_ts_oldest")?;
        let latest = bound("latest", "invalid_ts_latest")?;
        // The cursor names the newest message of the next page.
        let from = match str_param(params, "cursor") {
            None => None,
            Some(cursor) => Some(
                decode_cursor(cursor)
                    .ok_or_else(|| Failure::because("invalid_cursor", "cursor is not valid"))?,
            ),
        };
        let mut found: Vec<&Message> = self
            .messages
            .iter()
            .filter(|m| m.channel == channel && m.thread_ts.is_none())
            .filter(|m| {
                let ts = parse_ts(&m.ts).unwrap_or_default();
                let after_oldest = oldest.is_none_or(|o| ts > o || (inclusive && ts == o));
                let before_latest = latest.is_none_or(|l| ts < l || (inclusive && ts == l));
                after_oldest && before_latest && from.is_none_or(|f| ts <= f)
            })
            .collect();
        found.sort_by_key(|m| std::cmp::Reverse(parse_ts(&m.ts).unwrap_or_default()));
        let has_more = found.len() > limit;
        let next = found.get(limit).map(|m| encode_cursor(&m.ts));
        let metadata = flag_param(params, "include_all_metadata");
        let messages: Vec<Value> = found
            .into_iter()
            .take(limit)
            .map(|m| with_metadata(self.history_json(m), m, metadata))
            .collect();
        let mut answer = json!({
            "messages": messages,
            "has_more": has_more,
            "pin_count": 0,
            "channel_actions_ts": null,
            "channel_actions_count": 0,
        });
        if let Some(next) = next {
            answer["response_metadata"] = json!({ "next_cursor": next });
        }
        Ok(answer)
    }

    /// A thread (`conversations.replies`): its parent, then its replies, oldest first. Like
    /// Slack, a message's `metadata` is shown only with `include_all_metadata`.
    fn replies(&self, params: &Map<String, Value>) -> ApiResult {
        let channel = channel_param(params)?;
        match self.channel_states.get(&channel) {
            Some(ChannelState::NotFound) => return Err("channel_not_found".into()),
            Some(ChannelState::NotInChannel) => return Err("not_in_channel".into()),
            _ => {}
        }
        let ts = str_param(params, "ts")
            .ok_or_else(|| Failure::because("invalid_arguments", "ts is required"))?;
        let parent = self
            .messages
            .iter()
            .find(|m| m.channel == channel && m.ts == ts && m.thread_ts.is_none())
            .ok_or_else(|| Failure::because("thread_not_found", format!("no thread {ts}")))?;
        let metadata = flag_param(params, "include_all_metadata");
        let mut thread: Vec<&Message> = self
            .messages
            .iter()
            .filter(|m| m.channel == channel && m.thread_ts.as_deref() == Some(ts))
            .collect();
        thread.sort_by_key(|m| parse_ts(&m.ts).unwrap_or_default());
        let messages: Vec<Value> = std::iter::once(parent)
            .chain(thread)
            .map(|m| with_metadata(self.history_json(m), m, metadata))
            .collect();
        Ok(json!({ "messages": messages, "has_more": false }))
    }

    /// A message as `conversations.history` shows it: with its author and its thread's size.
    fn history_json(&self, message: &Message) -> Value {
        let mut json = match self.authors.get(&message.ts) {
            Some(user) => json!({
                "type": "message",
                "user": user,
                "team": TEAM_ID,
                "text": message.text,
                "ts": message.ts,
            }),
            None => message_json(message),
        };
        let replies: Vec<&Message> = self
            .messages
            .iter()
            .filter(|m| m.channel == message.channel && m.thread_ts.as_ref() == Some(&message.ts))
            .collect();
        if let Some(last) = replies.last() {
            json["thread_ts"] = json!(message.ts);
            json["reply_count"] = json!(replies.len());
            json["reply_users_count"] = json!(1);
            json["reply_users"] = json!([BOT_USER_ID]);
            json["latest_reply"] = json!(last.ts);
        }
        json
    }

    /// A DM exists for the bot once `conversations.open` opened it: a `D…` id jit made up or
    /// kept from elsewhere is not a conversation the bot can post in or update.
    fn check_dm_opened(&self, channel: &str) -> Result<(), Failure> {
        if channel.starts_with('D') && !self.dm_owners.contains_key(channel) {
            return Err(Failure::because(
                "channel_not_found",
                format!("{channel} is not a DM conversations.open opened"),
            ));
        }
        Ok(())
    }

    fn post_message(&mut self, params: &Map<String, Value>) -> ApiResult {
        let channel = channel_param(params)?;
        self.check_dm_opened(&channel)?;
        self.check_channel(&channel)?;
        let (text, blocks) = message_content(params)?;
        if text.is_none() && blocks.is_none() && !params.contains_key("attachments") {
            return Err("no_text".into());
        }
        let thread_ts = str_param(params, "thread_ts").map(str::to_owned);
        if let Some(parent) = &thread_ts {
            let exists = self
                .messages
                .iter()
                .any(|m| m.channel == channel && &m.ts == parent && m.thread_ts.is_none());
            if !exists {
                return Err(Failure::because(
                    "thread_not_found",
                    format!("no message {parent} in {channel}"),
                ));
            }
        }
        let metadata = match params.get("metadata") {
            None | Some(Value::Null) => Value::Null,
            // Slack takes the metadata as an object, or as its JSON text (form encoding).
            Some(Value::String(text)) => serde_json::from_str(text)
                .map_err(|_| Failure::because("invalid_metadata_format", "metadata is not JSON"))?,
            Some(other) => other.clone(),
        };
        let well_formed =
            metadata["event_type"].is_string() && metadata["event_payload"].is_object();
        if !(metadata.is_null() || well_formed) {
            return Err(Failure::because(
                "invalid_metadata_schema",
                "metadata needs a string event_type and an object event_payload",
            ));
        }
        let message = Message {
            channel,
            ts: self.next_ts(),
            thread_ts,
            text: text.unwrap_or_default(),
            blocks: stored_blocks(blocks),
            edits: 0,
            metadata,
        };
        self.messages.push(message.clone());
        self.events.push(SlackEvent::Posted {
            message: message.clone(),
        });
        Ok(json!({
            "channel": message.channel,
            "ts": message.ts,
            "message": message_json(&message),
        }))
    }

    fn update_message(&mut self, params: &Map<String, Value>) -> ApiResult {
        let channel = channel_param(params)?;
        self.check_dm_opened(&channel)?;
        self.check_channel(&channel)?;
        let ts = str_param(params, "ts").unwrap_or_default();
        let index = self
            .messages
            .iter()
            .position(|m| m.channel == channel && m.ts == ts)
            .ok_or_else(|| {
                Failure::because(
                    "message_not_found",
                    format!("no message {ts:?} in {channel}"),
                )
            })?;
        let (text, blocks) = message_content(params)?;
        if text.is_none() && blocks.is_none() && !params.contains_key("attachments") {
            return Err("no_text".into());
        }
        let before = self.messages[index].clone();
        let message = &mut self.messages[index];
        if let Some(text) = text {
            message.text = text;
        }
        if blocks.is_some() {
            message.blocks = stored_blocks(blocks);
        }
        message.edits += 1;
        let message = message.clone();
        self.events.push(SlackEvent::Updated {
            message: message.clone(),
            before,
        });
        let mut answer = json!({
            "channel": message.channel,
            "ts": message.ts,
            "text": message.text,
            "message": message_json(&message),
        });
        if let Some(thread_ts) = &message.thread_ts {
            answer["thread_ts"] = json!(thread_ts);
        }
        Ok(answer)
    }

    fn post_ephemeral(&mut self, params: &Map<String, Value>) -> ApiResult {
        let channel = channel_param(params)?;
        self.check_channel(&channel)?;
        let user = str_param(params, "user")
            .filter(|u| is_slack_id(u, &['U', 'W']))
            .ok_or("user_not_found")?
            .to_owned();
        let (text, blocks) = message_content(params)?;
        if text.is_none() && blocks.is_none() && !params.contains_key("attachments") {
            return Err("no_text".into());
        }
        let ephemeral = Ephemeral {
            channel,
            user,
            text: text.unwrap_or_default(),
            blocks: stored_blocks(blocks),
        };
        self.ephemerals.push(ephemeral.clone());
        self.events.push(SlackEvent::Ephemeral { ephemeral });
        Ok(json!({ "message_ts": self.next_ts() }))
    }

    fn open_conversation(&mut self, params: &Map<String, Value>) -> ApiResult {
        let users: Vec<String> = match params.get("users") {
            Some(Value::Array(users)) => users
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(users)) => users
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        let user = match users.as_slice() {
            [] => {
                // Resuming a conversation by its id.
                let channel = channel_param(params).map_err(|_| "users_list_not_supplied")?;
                return Ok(json!({ "channel": { "id": channel, "created": TS_EPOCH } }));
            }
            [user] => user,
            _ => {
                return Err(Failure::because(
                    "simulator_mpim_not_supported",
                    "the simulator opens one-to-one DMs only",
                ));
            }
        };
        if !is_slack_id(user, &['U', 'W']) {
            return Err(Failure::because(
                "user_not_found",
                format!("{user:?} is not a user id"),
            ));
        }
        let channel = dm_channel_id(user);
        let already_open = self
            .dm_owners
            .insert(channel.clone(), user.clone())
            .is_some();
        let mut answer = json!({
            "channel": {
                "id": channel,
                "created": TS_EPOCH,
                "is_im": true,
                "is_open": true,
                "is_org_shared": false,
                "user": user,
                "last_read": "0000000000.000000",
                "priority": 0,
            },
        });
        if already_open {
            answer["already_open"] = json!(true);
            answer["no_op"] = json!(true);
        }
        Ok(answer)
    }

    fn conversation_info(&self, params: &Map<String, Value>) -> ApiResult {
        let channel = channel_param(params)?;
        if channel.starts_with('D') {
            self.require_scope("im:read")?;
            let user = self.dm_owners.get(&channel).ok_or("channel_not_found")?;
            return Ok(json!({
                "channel": {
                    "id": channel,
                    "created": TS_EPOCH,
                    "is_im": true,
                    "is_org_shared": false,
                    "user": user,
                    "is_user_deleted": false,
                    "priority": 0,
                },
            }));
        }
        let state = self
            .channel_states
            .get(&channel)
            .copied()
            .unwrap_or(ChannelState::Member);
        if state == ChannelState::NotFound {
            return Err("channel_not_found".into());
        }
        let private = self.is_private(&channel);
        self.require_scope(if private {
            "groups:read"
        } else {
            "channels:read"
        })?;
        if private && state == ChannelState::NotInChannel {
            return Err("channel_not_found".into());
        }
        let name = self
            .channels
            .get(&channel)
            .map(|c| c.name.clone())
            .unwrap_or_else(|| channel.to_lowercase());
        Ok(json!({
            "channel": {
                "id": channel,
                "name": name,
                "is_channel": !private,
                "is_group": false,
                "is_im": false,
                "is_mpim": false,
                "is_private": private,
                "created": TS_EPOCH,
                "is_archived": state == ChannelState::Archived,
                "is_general": false,
                "unlinked": 0,
                "name_normalized": name,
                "is_shared": false,
                "is_org_shared": false,
                "is_pending_ext_shared": false,
                "pending_shared": [],
                "context_team_id": TEAM_ID,
                "updated": TS_EPOCH,
                "parent_conversation": null,
                "creator": "U0CREATOR",
                "is_ext_shared": false,
                "shared_team_ids": [TEAM_ID],
                "pending_connected_team_ids": [],
                "is_member": state == ChannelState::Member,
                "last_read": "0000000000.000000",
                "topic": {"value": "", "creator": "", "last_set": 0},
                "purpose": {"value": "", "creator": "", "last_set": 0},
                "previous_names": [],
            },
        }))
    }

    fn user_info(&self, params: &Map<String, Value>) -> ApiResult {
        let id = str_param(params, "user").ok_or("user_not_found")?;
        let user = self.users.get(id).ok_or("user_not_found")?;
        Ok(json!({ "user": user_json(id, user, self.has_scope("users:read.email")) }))
    }

    /// `users.list`: the workspace's own users (not those of other workspaces), one page of
    /// `limit` (default 100, Slack's maximum 1000) after `cursor`, in id order.
    fn users_list(&self, params: &Map<String, Value>) -> ApiResult {
        let limit = str_param(params, "limit")
            .and_then(|l| l.parse::<usize>().ok())
            .unwrap_or(100)
            .clamp(1, 1000);
        let after = str_param(params, "cursor").unwrap_or("");
        let mut ids: Vec<&String> = self
            .users
            .iter()
            .filter(|(_, u)| u.kind != UserKind::External)
            .map(|(id, _)| id)
            .filter(|id| id.as_str() > after)
            .collect();
        ids.sort();
        let page: Vec<Value> = ids
            .iter()
            .take(limit)
            .map(|id| {
                user_json(
                    id,
                    &self.users[id.as_str()],
                    self.has_scope("users:read.email"),
                )
            })
            .collect();
        let next = if ids.len() > limit {
            ids[limit - 1].clone()
        } else {
            String::new()
        };
        Ok(
            json!({ "members": page, "cache_ts": TS_EPOCH, "response_metadata": { "next_cursor": next } }),
        )
    }

    fn group_members(&self, params: &Map<String, Value>) -> ApiResult {
        let group = str_param(params, "usergroup").ok_or("no_such_subteam")?;
        let members = self.groups.get(group).ok_or("no_such_subteam")?;
        Ok(json!({ "users": members }))
    }

    fn open_view(&mut self, params: &Map<String, Value>) -> ApiResult {
        let trigger_id = str_param(params, "trigger_id")
            .ok_or_else(|| Failure::because("invalid_arguments", "trigger_id is missing"))?
            .to_owned();
        let view = view_param(params, "modal")?;
        self.view_counter += 1;
        let view_id = format!("V{:08}", self.view_counter);
        let opened = OpenedView {
            trigger_id,
            view: view.clone(),
            view_id: view_id.clone(),
            updates: Vec::new(),
        };
        self.opened.push(opened.clone());
        let hash = self.next_hash();
        let answer = stateful_view_json(&view, &view_id, &hash);
        self.views.insert(
            view_id,
            ViewSlot {
                hash,
                external_id: external_id(&view),
                current: view,
                origin: ViewOrigin::Modal(self.opened.len() - 1),
            },
        );
        self.events.push(SlackEvent::ViewOpened { view: opened });
        Ok(json!({ "view": answer }))
    }

    fn update_view(&mut self, params: &Map<String, Value>) -> ApiResult {
        let view_id = match (
            str_param(params, "view_id"),
            str_param(params, "external_id"),
        ) {
            (Some(id), _) => id.to_owned(),
            (None, Some(external)) => self
                .views
                .iter()
                .find(|(_, slot)| slot.external_id.as_deref() == Some(external))
                .map(|(id, _)| id.clone())
                .ok_or("not_found")?,
            (None, None) => {
                return Err(Failure::because(
                    "invalid_arguments",
                    "view_id or external_id is required",
                ));
            }
        };
        let slot = self.views.get(&view_id).ok_or("not_found")?;
        if let Some(expected) = str_param(params, "hash")
            && expected != slot.hash
        {
            return Err("hash_conflict".into());
        }
        let kind = match slot.origin {
            ViewOrigin::Modal(_) => "modal",
            ViewOrigin::Home => "home",
        };
        let view = view_param(params, kind)?;
        let hash = self.next_hash();
        let Some(slot) = self.views.get_mut(&view_id) else {
            return Err("not_found".into());
        };
        slot.hash.clone_from(&hash);
        slot.current = view.clone();
        if let Some(external) = external_id(&view) {
            slot.external_id = Some(external);
        }
        if let ViewOrigin::Modal(index) = slot.origin {
            self.opened[index].updates.push(view.clone());
        }
        let answer = stateful_view_json(&view, &view_id, &hash);
        self.events.push(SlackEvent::ViewUpdated { view_id, view });
        Ok(json!({ "view": answer }))
    }

    fn publish_view(&mut self, params: &Map<String, Value>) -> ApiResult {
        let user = str_param(params, "user_id")
            .ok_or_else(|| Failure::because("invalid_arguments", "user_id is missing"))?;
        if !is_slack_id(user, &['U', 'W']) {
            return Err("user_not_found".into());
        }
        let user = user.to_owned();
        let view = view_param(params, "home")?;
        let hash = self.next_hash();
        let view_id = match self.home_views.get(&user) {
            Some(id) => id.clone(),
            None => {
                self.view_counter += 1;
                format!("V{:08}", self.view_counter)
            }
        };
        if let (Some(expected), Some(slot)) = (str_param(params, "hash"), self.views.get(&view_id))
            && expected != slot.hash
        {
            return Err("hash_conflict".into());
        }
        self.home_views.insert(user.clone(), view_id.clone());
        self.views.insert(
            view_id.clone(),
            ViewSlot {
                hash: hash.clone(),
                external_id: external_id(&view),
                current: view.clone(),
                origin: ViewOrigin::Home,
            },
        );
        let answer = stateful_view_json(&view, &view_id, &hash);
        self.events.push(SlackEvent::ViewPublished { user, view });
        Ok(json!({ "view": answer }))
    }
}

/// A user object as `users.info` and `users.list` give it.
fn user_json(id: &str, user: &FakeUser, with_email: bool) -> Value {
    let team = if user.kind == UserKind::External {
        "T0OTHERORG"
    } else {
        TEAM_ID
    };
    let mut profile = json!({
        "real_name": user.name,
        "real_name_normalized": user.name,
        "display_name": user.name,
        "display_name_normalized": user.name,
        "team": team,
    });
    if let Some(email) = &user.email
        && with_email
    {
        profile["email"] = json!(email);
    }
    json!({
        "id": id,
        "team_id": team,
        "name": user.name,
        "real_name": user.name,
        "deleted": user.deleted,
        "is_bot": false,
        "is_app_user": false,
        "is_admin": false,
        "is_owner": false,
        "is_restricted": matches!(user.kind, UserKind::Guest | UserKind::SingleChannelGuest),
        "is_ultra_restricted": user.kind == UserKind::SingleChannelGuest,
        "is_stranger": user.kind == UserKind::External,
        "tz": tz_name(user.tz_offset),
        "tz_label": tz_label(user.tz_offset),
        "tz_offset": user.tz_offset,
        "updated": TS_EPOCH,
        "profile": profile,
    })
}

/// An IANA name for a fixed offset, as Slack would give for someone in such a zone (`Etc/GMT+8`
/// is UTC-8: the `Etc` names count the other way).
fn tz_name(offset: i32) -> String {
    match offset {
        0 => "Etc/UTC".into(),
        o if o % 3600 == 0 => format!("Etc/GMT{:+}", -o / 3600),
        o => format!("Etc/UTC{}", offset_text(o)),
    }
}

fn tz_label(offset: i32) -> String {
    match offset {
        0 => "Coordinated Universal Time".into(),
        o => format!("UTC{}", offset_text(o)),
    }
}

fn offset_text(offset: i32) -> String {
    let sign = if offset < 0 { '-' } else { '+' };
    let abs = offset.unsigned_abs();
    format!("{sign}{:02}:{:02}", abs / 3600, abs % 3600 / 60)
}

/// A message ts (`1700000000.000100`) as (seconds, microseconds).
fn parse_ts(ts: &str) -> Option<(u64, u64)> {
    let (secs, micros) = ts.split_once('.').unwrap_or((ts, "0"));
    if secs.is_empty() || micros.len() > 6 {
        return None;
    }
    let micros: u64 = format!("{micros:0<6}").parse().ok()?;
    Some((secs.parse().ok()?, micros))
}

/// Slack's cursors are opaque base64: `next_ts:` and the ts without its dot.
fn encode_cursor(ts: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("next_ts:{}", ts.replace('.', "")))
}

fn decode_cursor(cursor: &str) -> Option<(u64, u64)> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(cursor)
        .ok()?;
    let digits = String::from_utf8(bytes).ok()?;
    let digits = digits.strip_prefix("next_ts:")?;
    if digits.len() <= 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (secs, micros) = digits.split_at(digits.len() - 6);
    Some((secs.parse().ok()?, micros.parse().ok()?))
}

fn auth_test() -> Value {
    json!({
        "url": "https://jit-simulator.slack.com/",
        "team": "jit simulator",
        "user": "jit",
        "team_id": TEAM_ID,
        "user_id": BOT_USER_ID,
        "bot_id": BOT_ID,
    })
}

/// The `message` object Slack returns for a posted or updated message.
/// A boolean parameter, as Slack reads one from JSON or a form (`true`, `1`).
fn flag_param(params: &Map<String, Value>, key: &str) -> bool {
    match params.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true" || s == "1",
        Some(Value::Number(n)) => n.as_u64() == Some(1),
        _ => false,
    }
}

/// `json` with the message's metadata when it has some and it was asked for.
fn with_metadata(mut json: Value, message: &Message, asked: bool) -> Value {
    if asked && !message.metadata.is_null() {
        json["metadata"] = message.metadata.clone();
    }
    json
}

fn message_json(message: &Message) -> Value {
    let mut json = json!({
        "type": "message",
        "user": BOT_USER_ID,
        "bot_id": BOT_ID,
        "app_id": APP_ID,
        "team": TEAM_ID,
        "text": message.text,
        "ts": message.ts,
    });
    if !message.blocks.is_null() {
        json["blocks"] = message.blocks.clone();
    }
    if let Some(thread_ts) = &message.thread_ts {
        json["thread_ts"] = json!(thread_ts);
    }
    if message.edits > 0 {
        json["edited"] = json!({ "user": BOT_USER_ID, "ts": message.ts });
    }
    json
}

/// The `view` object Slack returns: the view plus its id, hash and (empty) state.
fn stateful_view_json(view: &Value, view_id: &str, hash: &str) -> Value {
    let mut json = view.clone();
    json["id"] = json!(view_id);
    json["team_id"] = json!(TEAM_ID);
    json["hash"] = json!(hash);
    json["state"] = json!({ "values": {} });
    json["root_view_id"] = json!(view_id);
    json["app_id"] = json!(APP_ID);
    json["bot_id"] = json!(BOT_ID);
    json
}

fn external_id(view: &Value) -> Option<String> {
    view.get("external_id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// The `view` parameter, checked with [`limits::check_view`]. `kind` is the required `type`:
/// `"modal"` or `"home"`. Anything refused is `invalid_arguments`, as Slack answers.
fn view_param(params: &Map<String, Value>, kind: &str) -> Result<Value, Failure> {
    let view = params
        .get("view")
        .filter(|v| v.is_object())
        .ok_or_else(|| {
            Failure::because(
                "invalid_arguments",
                "must be an object [json-pointer:/view]",
            )
        })?;
    let view_type = view.get("type").and_then(Value::as_str).unwrap_or_default();
    if view_type != kind {
        return Err(Failure::because(
            "invalid_arguments",
            format!("must be {kind:?} here [json-pointer:/view/type]"),
        ));
    }
    let found = limits::check_view(view);
    if !found.is_empty() {
        return Err(Failure::violations("invalid_arguments", found));
    }
    Ok(view.clone())
}

fn render_content(text: &str, blocks: &Value) -> String {
    if blocks.is_null() {
        text.to_owned()
    } else {
        render_blocks(blocks)
    }
}

/// Renders Block Kit JSON as readable plain text, for the demo transcript and test snapshots.
///
/// Accepts a blocks array, a message or view object (`{"blocks": [...]}`, a modal or an App Home
/// view) or a single block; `Null` renders as an empty string. One line per element:
///
/// - header: `# <text>`; section: its text, then its fields, accessory at the end of the text;
/// - context: its text elements and `(image: <alt>)`, separated by `  ·  `;
/// - divider: `---`;
/// - actions: `[Approve] [Deny]`, a danger button as `[Deny!]`, the primary one as `[Approve*]`;
/// - input: `<label>: [<kind>: <placeholder>]`, `[<kind> = <initial value>]`, selects with
///   their options (`[select: 1 hour | 4 hours | …+3 more]`), ` (optional)` when optional;
/// - a modal gets `== <title> ==` above and `[<close>] [<submit>]` below, App Home `== Home ==`;
/// - unknown block types: `(<type>)`.
pub fn render_blocks(blocks: &Value) -> String {
    let mut lines = Vec::new();
    match blocks {
        Value::Null => {}
        Value::Array(list) => render_block_list(list, &mut lines),
        Value::Object(object) => match object.get("type").and_then(Value::as_str) {
            Some("modal") => {
                let title = object.get("title").map(text_of).unwrap_or_default();
                lines.push(format!("== {title} =="));
                render_view_blocks(object, &mut lines);
                let mut buttons = Vec::new();
                if let Some(submit) = object.get("submit") {
                    let close = object
                        .get("close")
                        .map(text_of)
                        .unwrap_or_else(|| "Cancel".into());
                    buttons.push(format!("[{close}]"));
                    buttons.push(format!("[{}]", text_of(submit)));
                } else if let Some(close) = object.get("close") {
                    buttons.push(format!("[{}]", text_of(close)));
                }
                if !buttons.is_empty() {
                    lines.push(buttons.join(" "));
                }
            }
            Some("home") => {
                lines.push("== Home ==".into());
                render_view_blocks(object, &mut lines);
            }
            Some(_) => render_block(blocks, &mut lines),
            None => render_view_blocks(object, &mut lines),
        },
        other => lines.push(text_of(other)),
    }
    lines.join("\n")
}

fn render_view_blocks(object: &Map<String, Value>, lines: &mut Vec<String>) {
    if let Some(list) = object.get("blocks").and_then(Value::as_array) {
        render_block_list(list, lines);
    }
}

fn render_block_list(list: &[Value], lines: &mut Vec<String>) {
    for block in list {
        render_block(block, lines);
    }
}

fn render_block(block: &Value, lines: &mut Vec<String>) {
    let block_type = block.get("type").and_then(Value::as_str).unwrap_or("?");
    match block_type {
        "header" => lines.push(format!(
            "# {}",
            block.get("text").map(text_of).unwrap_or_default()
        )),
        "section" => {
            let mut section: Vec<String> = block
                .get("text")
                .map(text_of)
                .map(|text| text.lines().map(str::to_owned).collect())
                .unwrap_or_default();
            if let Some(fields) = block.get("fields").and_then(Value::as_array) {
                section.extend(fields.iter().map(text_of));
            }
            if let Some(accessory) = block.get("accessory") {
                let rendered = render_element(accessory);
                match section.last_mut() {
                    Some(last) => {
                        last.push_str("  ");
                        last.push_str(&rendered);
                    }
                    None => section.push(rendered),
                }
            }
            lines.extend(section);
        }
        "divider" => lines.push("---".into()),
        "context" => {
            let parts: Vec<String> = elements(block).iter().map(render_element).collect();
            lines.push(parts.join("  ·  "));
        }
        "actions" => {
            let parts: Vec<String> = elements(block).iter().map(render_element).collect();
            lines.push(parts.join(" "));
        }
        "input" => {
            let label = block.get("label").map(text_of).unwrap_or_default();
            let element = block.get("element").map(render_element).unwrap_or_default();
            let optional = if block.get("optional") == Some(&Value::Bool(true)) {
                " (optional)"
            } else {
                ""
            };
            lines.push(format!("{label}{optional}: {element}"));
            if let Some(hint) = block.get("hint") {
                lines.push(format!("  ({})", text_of(hint)));
            }
        }
        "image" => lines.push(render_element(block)),
        "markdown" => lines.extend(
            block
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .lines()
                .map(str::to_owned),
        ),
        "rich_text" => {
            let mut text = String::new();
            collect_rich_text(block, &mut text);
            lines.extend(text.lines().map(str::to_owned));
        }
        other => lines.push(format!("({other})")),
    }
}

fn elements(block: &Value) -> &[Value] {
    block
        .get("elements")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn collect_rich_text(value: &Value, out: &mut String) {
    match value {
        Value::Object(object) => {
            match object.get("type").and_then(Value::as_str) {
                Some("text") | Some("link") => {
                    let text = object
                        .get("text")
                        .or_else(|| object.get("url"))
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    out.push_str(text);
                }
                Some("user") => {
                    let id = object.get("user_id").and_then(Value::as_str);
                    out.push_str(&format!("<@{}>", id.unwrap_or_default()));
                }
                Some("emoji") => {
                    let name = object.get("name").and_then(Value::as_str);
                    out.push_str(&format!(":{}:", name.unwrap_or_default()));
                }
                _ => {}
            }
            if let Some(children) = object.get("elements") {
                collect_rich_text(children, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_rich_text(item, out)),
        _ => {}
    }
}

/// The text of a composition object (`{"type":"plain_text","text":..}`), a string, or an
/// option's text.
fn text_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Object(object) => object.get("text").map(text_of).unwrap_or_default(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn render_element(element: &Value) -> String {
    let element_type = element.get("type").and_then(Value::as_str).unwrap_or("?");
    match element_type {
        "plain_text" | "mrkdwn" => text_of(element),
        "image" => format!(
            "(image: {})",
            element
                .get("alt_text")
                .and_then(Value::as_str)
                .unwrap_or_default()
        ),
        "button" => {
            let marker = match element.get("style").and_then(Value::as_str) {
                Some("primary") => "*",
                Some("danger") => "!",
                _ => "",
            };
            format!(
                "[{}{marker}]",
                element.get("text").map(text_of).unwrap_or_default()
            )
        }
        "overflow" => "[…]".into(),
        "static_select" | "multi_static_select" | "radio_buttons" | "checkboxes" => {
            let kind = match element_type {
                "static_select" => "select",
                "multi_static_select" => "multi-select",
                "radio_buttons" => "radio",
                _ => "checkboxes",
            };
            format!("[{kind}: {}]", render_options(element))
        }
        _ => {
            let kind = match element_type {
                "plain_text_input" if element.get("multiline") == Some(&Value::Bool(true)) => {
                    "multiline text"
                }
                "plain_text_input" => "text",
                "number_input" => "number",
                "email_text_input" => "email",
                "url_text_input" => "url",
                "datepicker" => "date",
                "timepicker" => "time",
                "datetimepicker" => "date and time",
                "users_select" => "user",
                "multi_users_select" => "users",
                "conversations_select" | "channels_select" => "channel",
                "multi_conversations_select" | "multi_channels_select" => "channels",
                "external_select" => "search",
                "multi_external_select" => "multi-search",
                other => return format!("({other})"),
            };
            let initial = [
                "initial_value",
                "initial_date",
                "initial_time",
                "initial_user",
            ]
            .iter()
            .find_map(|key| element.get(*key).and_then(Value::as_str));
            match (initial, element.get("placeholder")) {
                (Some(initial), _) => format!("[{kind} = {initial}]"),
                (None, Some(placeholder)) => format!("[{kind}: {}]", text_of(placeholder)),
                (None, None) => format!("[{kind}]"),
            }
        }
    }
}

/// Lists a select's options briefly: the first five labels (the initial one marked `(selected)`)
/// and how many more.
fn render_options(element: &Value) -> String {
    const SHOWN: usize = 5;
    let mut options: Vec<&Value> = element
        .get("options")
        .and_then(Value::as_array)
        .map(|list| list.iter().collect())
        .unwrap_or_default();
    if let Some(groups) = element.get("option_groups").and_then(Value::as_array) {
        for group in groups {
            options.extend(
                group
                    .get("options")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten(),
            );
        }
    }
    let initial: Vec<&Value> = match (
        element.get("initial_option"),
        element.get("initial_options"),
    ) {
        (Some(option), _) => vec![option],
        (None, Some(Value::Array(list))) => list.iter().collect(),
        _ => Vec::new(),
    };
    let mut labels: Vec<String> = options
        .iter()
        .take(SHOWN)
        .map(|option| {
            let label = option.get("text").map(text_of).unwrap_or_default();
            let selected = initial
                .iter()
                .any(|chosen| chosen.get("value") == option.get("value"));
            if selected {
                format!("{label} (selected)")
            } else {
                label
            }
        })
        .collect();
    if options.len() > SHOWN {
        labels.push(format!("…+{} more", options.len() - SHOWN));
    }
    if labels.is_empty() {
        element
            .get("placeholder")
            .map(text_of)
            .unwrap_or_else(|| "no options".into())
    } else {
        labels.join(" | ")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use slack_morphism::errors::SlackClientError;
    use slack_morphism::prelude::{
        SlackApiChatPostEphemeralRequest, SlackApiChatPostMessageRequest,
        SlackApiChatUpdateRequest, SlackApiConversationsOpenRequest, SlackApiToken,
        SlackApiTokenValue, SlackApiUserGroupsUsersListRequest, SlackApiUsersInfoRequest,
        SlackApiViewsOpenRequest, SlackApiViewsPublishRequest, SlackApiViewsUpdateRequest,
        SlackBlock, SlackClient, SlackClientHyperConnector, SlackClientHyperHttpsConnector,
        SlackMessageContent, SlackView,
    };

    use super::*;

    const TOKEN: &str = "xoxb-simulator-test";
    const CHANNEL: &str = "C0REQUESTS";
    const ALICE: &str = "U01ALICE";
    const BOB: &str = "U02BOB";

    type Client = SlackClient<SlackClientHyperHttpsConnector>;

    /// slack-morphism's client, built the way jit builds it, pointed at the fake.
    fn client(fake: &FakeSlack) -> Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .expect("native root certificates")
            .https_or_http()
            .enable_http1()
            .build();
        SlackClient::new(
            SlackClientHyperConnector::with_connector(https).with_slack_api_url(&fake.api_url()),
        )
    }

    fn token(value: &str) -> SlackApiToken {
        SlackApiToken::new(SlackApiTokenValue::new(value.into()))
    }

    async fn start() -> (FakeSlack, Client, SlackApiToken) {
        let fake = FakeSlack::start(TOKEN).await.expect("fake Slack starts");
        let client = client(&fake);
        (fake, client, token(TOKEN))
    }

    fn text(text: &str) -> SlackMessageContent {
        SlackMessageContent::new().with_text(text.into())
    }

    fn with_blocks(fallback: &str, blocks: Value) -> SlackMessageContent {
        let blocks: Vec<SlackBlock> = serde_json::from_value(blocks).expect("valid blocks");
        text(fallback).with_blocks(blocks)
    }

    fn view(json: Value) -> SlackView {
        serde_json::from_value(json).expect("valid view")
    }

    fn post(channel: &str, content: SlackMessageContent) -> SlackApiChatPostMessageRequest {
        SlackApiChatPostMessageRequest::new(channel.into(), content)
    }

    fn api_error<T: fmt::Debug>(result: Result<T, SlackClientError>) -> String {
        match result {
            Err(SlackClientError::ApiError(err)) => err.code,
            other => panic!("expected a Slack API error, got {other:?}"),
        }
    }

    fn approval_blocks() -> Value {
        json!([
            { "type": "header", "text": { "type": "plain_text", "text": "Access request" } },
            {
                "type": "section",
                "text": { "type": "mrkdwn", "text": "<@U01ALICE> requests *admin* on *prod-db* for 1 hour" },
                "fields": [
                    { "type": "mrkdwn", "text": "*Reason*\nINC-42 database failover" },
                    { "type": "mrkdwn", "text": "*Expires*\n14:00 UTC" }
                ]
            },
            {
                "type": "context",
                "elements": [
                    { "type": "mrkdwn", "text": "Request `r-7`" },
                    { "type": "image", "image_url": "https://example.com/aws.png", "alt_text": "aws" }
                ]
            },
            { "type": "divider" },
            {
                "type": "actions",
                "block_id": "decide",
                "elements": [
                    {
                        "type": "button", "action_id": "approve", "value": "r-7", "style": "primary",
                        "text": { "type": "plain_text", "text": "Approve" }
                    },
                    {
                        "type": "button", "action_id": "deny", "value": "r-7", "style": "danger",
                        "text": { "type": "plain_text", "text": "Deny" }
                    }
                ]
            }
        ])
    }

    fn option(label: &str) -> Value {
        json!({ "text": { "type": "plain_text", "text": label }, "value": label })
    }

    fn request_modal(title: &str) -> Value {
        json!({
            "type": "modal",
            "callback_id": "request",
            "private_metadata": "C0REQUESTS",
            "title": { "type": "plain_text", "text": title },
            "submit": { "type": "plain_text", "text": "Request" },
            "close": { "type": "plain_text", "text": "Cancel" },
            "blocks": [
                {
                    "type": "input",
                    "block_id": "role",
                    "label": { "type": "plain_text", "text": "Role" },
                    "element": {
                        "type": "static_select",
                        "action_id": "role",
                        "placeholder": { "type": "plain_text", "text": "Pick a role" },
                        "options": [
                            option("prod-admin"), option("prod-read"), option("stage-admin"),
                            option("stage-read"), option("billing"), option("audit")
                        ],
                        "initial_option": option("prod-read")
                    }
                },
                {
                    "type": "input",
                    "block_id": "reason",
                    "label": { "type": "plain_text", "text": "Justification" },
                    "element": {
                        "type": "plain_text_input",
                        "action_id": "reason",
                        "multiline": true,
                        "placeholder": { "type": "plain_text", "text": "Why do you need it?" }
                    }
                },
                {
                    "type": "input",
                    "block_id": "ticket",
                    "optional": true,
                    "label": { "type": "plain_text", "text": "Ticket" },
                    "hint": { "type": "plain_text", "text": "e.g. INC-42" },
                    "element": { "type": "plain_text_input", "action_id": "ticket" }
                }
            ]
        })
    }

    fn home_view(line: &str) -> Value {
        json!({
            "type": "home",
            "blocks": [{ "type": "section", "text": { "type": "mrkdwn", "text": line } }]
        })
    }

    #[tokio::test]
    async fn posts_replies_and_updates_messages() {
        let (fake, client, token) = start().await;
        let session = client.open_session(&token);

        let posted = session
            .chat_post_message(&post(
                CHANNEL,
                with_blocks("Access request", approval_blocks()),
            ))
            .await
            .unwrap();
        assert_eq!(posted.channel.0, CHANNEL);
        assert_eq!(posted.ts.0, "1700000000.000100");
        assert_eq!(posted.message.sender.user.unwrap().0, BOT_USER_ID);
        assert_eq!(
            posted.message.content.blocks.map(|b| b.len()),
            Some(5),
            "the blocks come back in the response"
        );

        let reply = session
            .chat_post_message(
                &post(CHANNEL, text("Approved by <@U02BOB>")).with_thread_ts(posted.ts.clone()),
            )
            .await
            .unwrap();
        assert_eq!(reply.message.origin.thread_ts, Some(posted.ts.clone()));
        assert!(reply.ts.0 > posted.ts.0, "timestamps increase");

        let decided = json!([{ "type": "section", "text": { "type": "mrkdwn", "text": "Approved by <@U02BOB>" } }]);
        let updated = session
            .chat_update(&SlackApiChatUpdateRequest::new(
                CHANNEL.into(),
                with_blocks("Approved", decided.clone()),
                posted.ts.clone(),
            ))
            .await
            .unwrap();
        assert_eq!(updated.ts, posted.ts);
        // A text-only edit keeps the blocks, as Slack does.
        session
            .chat_update(&SlackApiChatUpdateRequest::new(
                CHANNEL.into(),
                text("Approved (expired)"),
                posted.ts.clone(),
            ))
            .await
            .unwrap();

        let messages = fake.messages(CHANNEL);
        assert_eq!(messages.len(), 1, "a reply is not a top-level message");
        assert_eq!(messages[0].ts, posted.ts.0);
        assert_eq!(messages[0].text, "Approved (expired)");
        assert_eq!(messages[0].blocks, decided);
        assert_eq!(messages[0].edits, 2);
        assert_eq!(messages[0].rendered(), "Approved by <@U02BOB>");

        let thread = fake.thread(CHANNEL, &posted.ts.0);
        assert_eq!(thread.len(), 1);
        assert_eq!(thread[0].text, "Approved by <@U02BOB>");
        assert_eq!(thread[0].thread_ts.as_deref(), Some(posted.ts.0.as_str()));
        assert_eq!(thread[0].blocks, Value::Null);

        let orphan = post(CHANNEL, text("lost")).with_thread_ts("1600000000.000100".into());
        assert_eq!(
            api_error(session.chat_post_message(&orphan).await),
            "thread_not_found"
        );
        let reply_to_reply = post(CHANNEL, text("nested")).with_thread_ts(reply.ts.clone());
        assert_eq!(
            api_error(session.chat_post_message(&reply_to_reply).await),
            "thread_not_found"
        );
        assert_eq!(
            api_error(
                session
                    .chat_post_message(&post("general", text("hi")))
                    .await
            ),
            "channel_not_found"
        );
        assert_eq!(
            api_error(
                session
                    .chat_post_message(&post(CHANNEL, SlackMessageContent::new()))
                    .await
            ),
            "no_text"
        );
        let missing = SlackApiChatUpdateRequest::new(CHANNEL.into(), text("x"), "1.000001".into());
        assert_eq!(
            api_error(session.chat_update(&missing).await),
            "message_not_found"
        );
        let elsewhere =
            SlackApiChatUpdateRequest::new("C0OTHER".into(), text("x"), posted.ts.clone());
        assert_eq!(
            api_error(session.chat_update(&elsewhere).await),
            "message_not_found"
        );
        assert_eq!(
            fake.messages(CHANNEL)[0].edits,
            2,
            "failed calls change nothing"
        );
        assert_eq!(fake.messages("C0OTHER"), Vec::new());
    }

    #[tokio::test]
    async fn ephemeral_messages_reach_one_user_only() {
        let (fake, client, token) = start().await;
        let session = client.open_session(&token);
        session
            .chat_post_ephemeral(&SlackApiChatPostEphemeralRequest::new(
                CHANNEL.into(),
                ALICE.into(),
                text("Only approvers may approve"),
            ))
            .await
            .unwrap();

        assert_eq!(
            fake.ephemerals(ALICE),
            vec![Ephemeral {
                channel: CHANNEL.into(),
                user: ALICE.into(),
                text: "Only approvers may approve".into(),
                blocks: Value::Null,
            }]
        );
        assert!(fake.ephemerals(BOB).is_empty());
        assert!(
            fake.messages(CHANNEL).is_empty(),
            "ephemerals are not channel messages"
        );

        let nobody =
            SlackApiChatPostEphemeralRequest::new(CHANNEL.into(), "alice".into(), text("x"));
        assert_eq!(
            api_error(session.chat_post_ephemeral(&nobody).await),
            "user_not_found"
        );
    }

    #[tokio::test]
    async fn conversations_open_gives_a_dm_channel() {
        let (fake, client, token) = start().await;
        let session = client.open_session(&token);
        let dm = fake.dm_channel_for(ALICE);
        assert_eq!(dm, "D01ALICE");
        assert_eq!(fake.dm_owner(&dm), None, "not opened yet");

        // A DM nobody opened is no conversation of the bot's, as in Slack.
        assert_eq!(
            api_error(
                session
                    .chat_post_message(&post(&dm, text("too early")))
                    .await
            ),
            "channel_not_found"
        );
        assert!(fake.dms(ALICE).is_empty());

        let open = SlackApiConversationsOpenRequest::new().with_users(vec![ALICE.into()]);
        let opened = session.conversations_open(&open).await.unwrap();
        assert_eq!(opened.channel.id.0, dm);
        assert_eq!(opened.already_open, None);
        let again = session.conversations_open_full(&open).await.unwrap();
        assert_eq!(again.channel.id.0, dm);
        assert_eq!(again.channel.flags.is_im, Some(true));
        assert_eq!(again.already_open, Some(true));
        assert_eq!(fake.dm_owner(&dm).as_deref(), Some(ALICE));

        session
            .chat_post_message(&post(&dm, text("Your access to prod-db was approved")))
            .await
            .unwrap();
        let dms = fake.dms(ALICE);
        assert_eq!(dms.len(), 1);
        assert_eq!(dms[0].channel, dm);
        assert_eq!(dms[0].text, "Your access to prod-db was approved");
        assert!(fake.dms(BOB).is_empty());

        let stranger = SlackApiConversationsOpenRequest::new().with_users(vec!["bob".into()]);
        assert_eq!(
            api_error(session.conversations_open(&stranger).await),
            "user_not_found"
        );
        let nobody = SlackApiConversationsOpenRequest::new();
        assert_eq!(
            api_error(session.conversations_open(&nobody).await),
            "users_list_not_supplied"
        );
    }

    #[tokio::test]
    async fn users_info_answers_registered_users() {
        let (fake, client, token) = start().await;
        let session = client.open_session(&token);
        fake.set_user(ALICE, "alice", Some("alice@example.com"));
        fake.set_user(BOB, "bob", None);

        let alice = session
            .users_info(&SlackApiUsersInfoRequest::new(ALICE.into()))
            .await
            .unwrap()
            .user;
        assert_eq!(alice.id.0, ALICE);
        assert_eq!(alice.name.as_deref(), Some("alice"));
        assert_eq!(alice.real_name.as_deref(), Some("alice"));
        assert_eq!(alice.deleted, Some(false));
        assert_eq!(alice.flags.is_bot, Some(false));
        let profile = alice.profile.expect("a profile");
        assert_eq!(
            profile.email.map(|e| e.0).as_deref(),
            Some("alice@example.com")
        );
        assert_eq!(profile.display_name.as_deref(), Some("alice"));

        let bob = session
            .users_info(&SlackApiUsersInfoRequest::new(BOB.into()))
            .await
            .unwrap()
            .user;
        assert_eq!(bob.profile.and_then(|p| p.email), None);

        let unknown = SlackApiUsersInfoRequest::new("U09NOBODY".into());
        assert_eq!(
            api_error(session.users_info(&unknown).await),
            "user_not_found"
        );
        // users.info is a GET: the parameters arrive in the query string.
        assert_eq!(fake.calls()[0].body, json!({ "user": ALICE }));
    }

    #[tokio::test]
    async fn usergroups_users_list_answers_registered_groups() {
        let (fake, client, token) = start().await;
        let session = client.open_session(&token);
        fake.set_group_members("S0APPROVERS", &[BOB, "U03CAROL"]);

        let members = session
            .usergroups_users_list(&SlackApiUserGroupsUsersListRequest::new(
                "S0APPROVERS".into(),
            ))
            .await
            .unwrap();
        let ids: Vec<String> = members.users.into_iter().map(|u| u.0).collect();
        assert_eq!(ids, vec![BOB.to_owned(), "U03CAROL".to_owned()]);

        let unknown = SlackApiUserGroupsUsersListRequest::new("S0NOBODY".into());
        assert_eq!(
            api_error(session.usergroups_users_list(&unknown).await),
            "no_such_subteam"
        );
    }

    #[tokio::test]
    async fn views_open_update_and_publish() {
        let (fake, client, token) = start().await;
        let session = client.open_session(&token);

        let opened = session
            .views_open(&SlackApiViewsOpenRequest::new(
                "1337.42.abcdef".into(),
                view(request_modal("Request access")),
            ))
            .await
            .unwrap();
        let view_id = opened.view.state_params.id.0.clone();
        let views = fake.opened_views();
        assert_eq!(views.len(), 1);
        assert_eq!(views[0].trigger_id, "1337.42.abcdef");
        assert_eq!(views[0].view_id, view_id);
        assert_eq!(views[0].view["title"]["text"], "Request access");
        assert!(
            is_slack_id(&view_id, &['V']),
            "{view_id} looks like a view id"
        );

        let confirm = json!({
            "type": "modal",
            "title": { "type": "plain_text", "text": "Requested" },
            "blocks": [{ "type": "section", "text": { "type": "mrkdwn", "text": "Waiting for approval" } }]
        });
        let stale_hash = opened.view.state_params.hash.clone();
        let updated = session
            .views_update(
                &SlackApiViewsUpdateRequest::new(view(confirm.clone()))
                    .with_view_id(view_id.clone().into())
                    .with_hash(stale_hash.clone()),
            )
            .await
            .unwrap();
        assert_eq!(updated.view.state_params.id.0, view_id);
        assert_ne!(updated.view.state_params.hash, stale_hash);
        let conflict = SlackApiViewsUpdateRequest::new(view(confirm.clone()))
            .with_view_id(view_id.clone().into())
            .with_hash(stale_hash);
        assert_eq!(
            api_error(session.views_update(&conflict).await),
            "hash_conflict"
        );
        let unknown =
            SlackApiViewsUpdateRequest::new(view(confirm.clone())).with_view_id("V404".into());
        assert_eq!(api_error(session.views_update(&unknown).await), "not_found");

        let views = fake.opened_views();
        assert_eq!(views[0].updates.len(), 1);
        assert_eq!(views[0].current()["title"]["text"], "Requested");
        assert_eq!(
            views[0].view["title"]["text"], "Request access",
            "as opened"
        );

        let too_long = request_modal("Request privileged access");
        let refused = session
            .views_open(&SlackApiViewsOpenRequest::new(
                "1337.43.x".into(),
                view(too_long),
            ))
            .await;
        assert_eq!(api_error(refused), "invalid_arguments");
        assert_eq!(fake.opened_views().len(), 1);

        assert_eq!(fake.published_view(ALICE), None);
        let first = session
            .views_publish(&SlackApiViewsPublishRequest::new(
                ALICE.into(),
                view(home_view("No requests")),
            ))
            .await
            .unwrap();
        let second = session
            .views_publish(&SlackApiViewsPublishRequest::new(
                ALICE.into(),
                view(home_view("1 pending request")),
            ))
            .await
            .unwrap();
        assert_eq!(
            first.view.state_params.id, second.view.state_params.id,
            "one App Home per user"
        );
        let home = fake.published_view(ALICE).expect("published");
        assert_eq!(render_blocks(&home), "== Home ==\n1 pending request");
        assert_eq!(fake.published_view(BOB), None);

        let modal_as_home =
            SlackApiViewsPublishRequest::new(BOB.into(), view(request_modal("Nope")));
        assert_eq!(
            api_error(session.views_publish(&modal_as_home).await),
            "invalid_arguments"
        );
    }

    #[tokio::test]
    async fn auth_test_names_the_bot() {
        let (_fake, client, token) = start().await;
        let auth = client.open_session(&token).auth_test().await.unwrap();
        assert_eq!(auth.user_id.0, BOT_USER_ID);
        assert_eq!(auth.team_id.0, TEAM_ID);
        assert_eq!(auth.bot_id.map(|b| b.0).as_deref(), Some(BOT_ID));
    }

    #[tokio::test]
    async fn requests_without_the_bot_token_are_refused() {
        let (fake, client, _token) = start().await;
        let wrong = token("xoxb-somebody-else");
        let session = client.open_session(&wrong);
        let refused = session.chat_post_message(&post(CHANNEL, text("hi"))).await;
        assert_eq!(api_error(refused), "invalid_auth");
        assert!(fake.messages(CHANNEL).is_empty());

        let anonymous: Value = reqwest::Client::new()
            .post(format!("{}/chat.postMessage", fake.api_url()))
            .json(&json!({ "channel": CHANNEL, "text": "hi" }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(anonymous, json!({ "ok": false, "error": "not_authed" }));
        assert!(fake.messages(CHANNEL).is_empty());

        let calls = fake.calls();
        assert_eq!(calls.len(), 2);
        assert!(calls.iter().all(|c| !c.ok && c.status == 200));
        assert_eq!(calls[1].body, json!({ "channel": CHANNEL, "text": "hi" }));
    }

    #[tokio::test]
    async fn rate_limit_fault_surfaces_as_rate_limit_error() {
        let (fake, client, token) = start().await;
        let session = client.open_session(&token);
        fake.inject(
            "chat.postMessage",
            Fault::RateLimited {
                retry_after_secs: 7,
            },
            2,
        );

        for _ in 0..2 {
            match session.chat_post_message(&post(CHANNEL, text("hi"))).await {
                Err(SlackClientError::RateLimitError(err)) => {
                    assert_eq!(err.retry_after, Some(Duration::from_secs(7)));
                    assert_eq!(err.code.as_deref(), Some("ratelimited"));
                }
                other => panic!("expected a rate limit error, got {other:?}"),
            }
        }
        // Other methods are not affected.
        session.auth_test().await.unwrap();
        session
            .chat_post_message(&post(CHANNEL, text("hi")))
            .await
            .unwrap();

        assert_eq!(
            fake.messages(CHANNEL).len(),
            1,
            "rate-limited posts are not delivered"
        );
        assert_eq!(fake.call_count("chat.postMessage"), 3);
        let statuses: Vec<(u16, bool)> = fake.calls().iter().map(|c| (c.status, c.ok)).collect();
        assert_eq!(
            statuses,
            vec![(429, false), (429, false), (200, true), (200, true)]
        );
    }

    /// With a pace set, posts beyond the burst in one channel are answered as Slack does (429,
    /// `Retry-After`, `ratelimited`) and not posted; other channels and methods are unaffected.
    #[tokio::test]
    async fn the_posting_pace_answers_429_with_retry_after_per_channel() {
        let fake = FakeSlack::start(TOKEN).await.unwrap();
        fake.set_post_pace(Some((1, 2)));
        let started = std::time::Instant::now();
        let mut answers = Vec::new();
        for n in 0..6 {
            let response = reqwest::Client::new()
                .post(format!("{}/chat.postMessage", fake.api_url()))
                .bearer_auth(TOKEN)
                .json(&json!({"channel": CHANNEL, "text": format!("post {n}")}))
                .send()
                .await
                .unwrap();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            answers.push((status, retry_after, body));
        }
        // Two at once (the burst), then one a second: however slow this machine, at most
        // 2 + elapsed seconds went through.
        let allowed = 2 + started.elapsed().as_secs() as usize;
        let posted = answers.iter().filter(|(s, _, _)| *s == 200).count();
        assert!(posted >= 2 && posted <= allowed.min(6), "{answers:?}");
        assert_eq!(answers[0].0, 200);
        assert_eq!(answers[1].0, 200);
        for (status, retry_after, body) in &answers {
            if *status == 429 {
                assert!(retry_after.is_some_and(|s| s >= 1), "{answers:?}");
                assert_eq!(body, &json!({"ok": false, "error": "ratelimited"}));
            }
        }
        assert_eq!(
            fake.messages(CHANNEL).len(),
            posted,
            "a paced post is not posted"
        );
        assert_eq!(fake.paced_posts(), 6 - posted);
        // Another channel has its own pace; other methods have none.
        let other = raw(
            &fake,
            "chat.postMessage",
            json!({"channel": "C0OTHER", "text": "hi"}),
        )
        .await;
        assert_eq!(other["ok"], true);
        assert_eq!(raw(&fake, "auth.test", json!({})).await["ok"], true);
        fake.set_post_pace(None);
        for _ in 0..5 {
            assert_eq!(
                raw(
                    &fake,
                    "chat.postMessage",
                    json!({"channel": CHANNEL, "text": "x"})
                )
                .await["ok"],
                true
            );
        }
    }

    #[tokio::test]
    async fn server_error_fault_surfaces_as_http_error() {
        let (fake, client, token) = start().await;
        let session = client.open_session(&token);
        fake.set_user(ALICE, "alice", None);
        fake.inject("users.info", Fault::ServerError(503), 1);

        match session
            .users_info(&SlackApiUsersInfoRequest::new(ALICE.into()))
            .await
        {
            Err(SlackClientError::HttpError(err)) => assert_eq!(err.status_code.as_u16(), 503),
            other => panic!("expected an HTTP error, got {other:?}"),
        }
        session
            .users_info(&SlackApiUsersInfoRequest::new(ALICE.into()))
            .await
            .unwrap();
        assert_eq!(fake.calls()[0].status, 503);
    }

    #[tokio::test]
    async fn api_error_fault_applies_to_any_method_with_a_wildcard() {
        let (fake, client, token) = start().await;
        let session = client.open_session(&token);
        fake.inject("*", Fault::ApiError("fatal_error".into()), 1);

        let open = SlackApiConversationsOpenRequest::new().with_users(vec![ALICE.into()]);
        assert_eq!(
            api_error(session.conversations_open(&open).await),
            "fatal_error"
        );
        assert_eq!(fake.dm_owner(&fake.dm_channel_for(ALICE)), None);
        session.conversations_open(&open).await.unwrap();

        fake.inject("*", Fault::ServerError(500), 5);
        fake.clear_faults();
        session
            .chat_post_message(&post(CHANNEL, text("hi")))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn hang_fault_delays_the_answer() {
        let (fake, client, token) = start().await;
        let session = client.open_session(&token);
        fake.inject(
            "chat.postMessage",
            Fault::Hang(Duration::from_millis(300)),
            1,
        );
        assert_eq!(fake.faults_left(), 1);

        let started = Instant::now();
        session
            .chat_post_message(&post(CHANNEL, text("slow")))
            .await
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(
            fake.messages(CHANNEL).len(),
            1,
            "answered normally after the delay"
        );
        assert_eq!(fake.faults_left(), 0, "the hang applies once");
    }

    #[tokio::test]
    async fn a_set_latency_delays_every_answer() {
        let (fake, client, token) = start().await;
        let session = client.open_session(&token);
        fake.set_latency(Duration::from_millis(200));
        for n in 0..2 {
            let started = Instant::now();
            session
                .chat_post_message(&post(CHANNEL, text(&format!("slow {n}"))))
                .await
                .unwrap();
            // A lower bound only: a sleep never ends early.
            assert!(started.elapsed() >= Duration::from_millis(200));
        }
        assert_eq!(fake.messages(CHANNEL).len(), 2, "both answered normally");
    }

    #[tokio::test]
    async fn form_and_query_requests_are_understood_and_recorded() {
        let (fake, _client, _token) = start().await;
        let http = reqwest::Client::new();
        let bearer = format!("Bearer {TOKEN}");
        let form = serde_urlencoded::to_string([
            ("channel", CHANNEL),
            ("text", "fallback"),
            ("blocks", r#"[{"type":"divider"}]"#),
        ])
        .unwrap();
        let answer: Value = http
            .post(format!("{}/chat.postMessage", fake.api_url()))
            .header(header::AUTHORIZATION, &bearer)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["ok"], true);
        assert_eq!(
            fake.messages(CHANNEL)[0].blocks,
            json!([{ "type": "divider" }])
        );

        let unknown = http
            .get(format!("{}/reactions.add?name=thumbsup", fake.api_url()))
            .header(header::AUTHORIZATION, &bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status(), 200);
        let unknown: Value = unknown.json().await.unwrap();
        assert_eq!(unknown["error"], "unknown_method");

        let calls = fake.calls();
        assert_eq!(
            calls[0].body,
            json!({ "channel": CHANNEL, "text": "fallback", "blocks": [{ "type": "divider" }] })
        );
        assert_eq!(
            calls[1],
            Call {
                method: "reactions.add".into(),
                body: json!({ "name": "thumbsup" }),
                status: 200,
                ok: false,
            }
        );
        assert_eq!(fake.call_count("reactions.add"), 1);
        assert_eq!(fake.call_count("chat.update"), 0);
    }

    #[tokio::test]
    async fn block_kit_limits_are_enforced() {
        let (fake, client, token) = start().await;
        let session = client.open_session(&token);
        let divider = json!({ "type": "divider" });

        let too_many = Value::Array(vec![divider.clone(); 51]);
        let refused = session
            .chat_post_message(&post(CHANNEL, with_blocks("x", too_many)))
            .await;
        assert_eq!(api_error(refused), "invalid_blocks");
        let fifty = Value::Array(vec![divider; 50]);
        session
            .chat_post_message(&post(CHANNEL, with_blocks("x", fifty)))
            .await
            .unwrap();

        let long_section =
            json!([{ "type": "section", "text": { "type": "mrkdwn", "text": "a".repeat(3001) } }]);
        let refused = session
            .chat_post_message(&post(CHANNEL, with_blocks("x", long_section)))
            .await;
        assert_eq!(api_error(refused), "invalid_blocks");

        let long_option = json!([{ "type": "actions", "elements": [{
            "type": "static_select", "action_id": "pick",
            "placeholder": { "type": "plain_text", "text": "Pick" },
            "options": [option(&"o".repeat(76))]
        }]}]);
        let refused = session
            .chat_post_message(&post(CHANNEL, with_blocks("x", long_option)))
            .await;
        assert_eq!(api_error(refused), "invalid_blocks");
        assert_eq!(fake.messages(CHANNEL).len(), 1);
    }

    /// A raw JSON call, to see the answer exactly as Slack's shape has it.
    async fn raw(fake: &FakeSlack, method: &str, body: Value) -> Value {
        reqwest::Client::new()
            .post(format!("{}/{method}", fake.api_url()))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .expect("the fake answers")
            .json()
            .await
            .expect("a JSON answer")
    }

    #[tokio::test]
    async fn refusals_name_every_broken_limit_by_json_pointer() {
        let fake = FakeSlack::start(TOKEN).await.unwrap();
        let answer = raw(
            &fake,
            "chat.postMessage",
            json!({
                "channel": CHANNEL,
                "text": "fallback",
                "blocks": [
                    {"type": "section", "text": {"type": "mrkdwn", "text": "a".repeat(3001)}},
                    {"type": "context", "elements": [{"type": "mrkdwn", "text": ""}]},
                ],
            }),
        )
        .await;
        assert_eq!(
            answer,
            json!({"ok": false, "error": "invalid_blocks",
            "errors": [
                "must be less than 3001 characters [json-pointer:/blocks/0/text/text]",
                "must be more than 0 characters [json-pointer:/blocks/1/elements/0/text]",
            ],
            "response_metadata": {"messages": [
                "[ERROR] must be less than 3001 characters [json-pointer:/blocks/0/text/text]",
                "[ERROR] must be more than 0 characters [json-pointer:/blocks/1/elements/0/text]",
            ]}})
        );
        let answer = raw(
            &fake,
            "chat.postMessage",
            json!({"channel": CHANNEL, "text": "x".repeat(40_001)}),
        )
        .await;
        assert_eq!(answer["error"], "msg_too_long");
        let answer = raw(
            &fake,
            "views.open",
            json!({"trigger_id": "1.2.3", "view": {
                "type": "modal",
                "title": {"type": "plain_text", "text": "Your credentials"},
                "blocks": (0..101).map(|_| json!({"type": "divider"})).collect::<Vec<_>>(),
            }}),
        )
        .await;
        assert_eq!(
            answer,
            json!({"ok": false, "error": "invalid_arguments", "response_metadata": {"messages": [
                "[ERROR] must be less than 101 items [json-pointer:/view/blocks]",
            ]}})
        );
        let answer = raw(
            &fake,
            "views.publish",
            json!({"user_id": ALICE, "view": {
                "type": "home",
                "blocks": [{"type": "header", "text": {"type": "mrkdwn", "text": "h"}}],
            }}),
        )
        .await;
        assert_eq!(answer["error"], "invalid_arguments");
        assert_eq!(
            answer["response_metadata"]["messages"][0],
            "[ERROR] must be plain_text here, not mrkdwn [json-pointer:/view/blocks/0/text/type]"
        );
        assert!(fake.messages(CHANNEL).is_empty());
        assert!(fake.opened_views().is_empty());
    }

    /// `chat.update`, `chat.postEphemeral` and `views.update` are held to the same limits as
    /// the calls that create messages and views, with Slack's answer shapes, and a refused
    /// call changes nothing.
    #[tokio::test]
    async fn updates_and_ephemerals_are_refused_over_the_limits_as_slack_does() {
        let fake = FakeSlack::start(TOKEN).await.unwrap();
        let posted = raw(
            &fake,
            "chat.postMessage",
            json!({"channel": CHANNEL, "text": "before"}),
        )
        .await;
        let ts = posted["ts"].as_str().unwrap().to_owned();
        let dividers = |n: usize| {
            (0..n)
                .map(|_| json!({"type": "divider"}))
                .collect::<Vec<_>>()
        };

        let answer = raw(
            &fake,
            "chat.update",
            json!({"channel": CHANNEL, "ts": ts, "text": "after", "blocks": dividers(51)}),
        )
        .await;
        assert_eq!(
            answer,
            json!({"ok": false, "error": "invalid_blocks",
            "errors": ["must be less than 51 items [json-pointer:/blocks]"],
            "response_metadata": {"messages": [
                "[ERROR] must be less than 51 items [json-pointer:/blocks]",
            ]}})
        );
        let kept = &fake.messages(CHANNEL)[0];
        assert_eq!((kept.text.as_str(), kept.edits), ("before", 0));

        let long_section = json!([
            {"type": "section", "text": {"type": "mrkdwn", "text": "ok"}},
            {"type": "section", "text": {"type": "mrkdwn", "text": "é".repeat(3001)}},
        ]);
        let answer = raw(
            &fake,
            "chat.postEphemeral",
            json!({"channel": CHANNEL, "user": ALICE, "text": "x", "blocks": long_section}),
        )
        .await;
        assert_eq!(
            answer,
            json!({"ok": false, "error": "invalid_blocks",
            "errors": ["must be less than 3001 characters [json-pointer:/blocks/1/text/text]"],
            "response_metadata": {"messages": [
                "[ERROR] must be less than 3001 characters [json-pointer:/blocks/1/text/text]",
            ]}})
        );
        assert!(fake.ephemerals(ALICE).is_empty());

        let modal = |blocks: Vec<Value>| {
            json!({"type": "modal", "title": {"type": "plain_text", "text": "Credentials"},
                "blocks": blocks})
        };
        let opened = raw(
            &fake,
            "views.open",
            json!({"trigger_id": "1.2.3", "view": modal(dividers(1))}),
        )
        .await;
        let view_id = opened["view"]["id"].as_str().unwrap().to_owned();
        let answer = raw(
            &fake,
            "views.update",
            json!({"view_id": view_id, "view": modal(dividers(101))}),
        )
        .await;
        assert_eq!(
            answer,
            json!({"ok": false, "error": "invalid_arguments", "response_metadata": {"messages": [
                "[ERROR] must be less than 101 items [json-pointer:/view/blocks]",
            ]}})
        );
        assert!(fake.opened_views()[0].updates.is_empty());
        // Within the limits, the same calls go through.
        let answer = raw(
            &fake,
            "views.update",
            json!({"view_id": view_id, "view": modal(dividers(100))}),
        )
        .await;
        assert_eq!(answer["ok"], true, "{answer}");
        let answer = raw(
            &fake,
            "chat.update",
            json!({"channel": CHANNEL, "ts": ts, "text": "after", "blocks": dividers(50)}),
        )
        .await;
        assert_eq!(answer["ok"], true, "{answer}");
    }

    /// A static select holds at most 100 options, in a message and in a modal.
    #[tokio::test]
    async fn a_static_select_with_101_options_is_refused() {
        let fake = FakeSlack::start(TOKEN).await.unwrap();
        let select = |n: usize| {
            json!({"type": "static_select", "action_id": "pick",
                "placeholder": {"type": "plain_text", "text": "Pick"},
                "options": (0..n).map(|i| option(&format!("resource-{i}"))).collect::<Vec<_>>()})
        };
        let answer = raw(
            &fake,
            "chat.postMessage",
            json!({"channel": CHANNEL, "text": "x",
                "blocks": [{"type": "actions", "elements": [select(101)]}]}),
        )
        .await;
        assert_eq!(
            answer,
            json!({"ok": false, "error": "invalid_blocks",
            "errors": ["must be less than 101 items [json-pointer:/blocks/0/elements/0/options]"],
            "response_metadata": {"messages": [
                "[ERROR] must be less than 101 items [json-pointer:/blocks/0/elements/0/options]",
            ]}})
        );
        let modal = |n: usize| {
            json!({"type": "modal", "title": {"type": "plain_text", "text": "Request access"},
                "submit": {"type": "plain_text", "text": "Request"},
                "blocks": [{"type": "input", "block_id": "resource",
                    "label": {"type": "plain_text", "text": "Resource"}, "element": select(n)}]})
        };
        let answer = raw(
            &fake,
            "views.open",
            json!({"trigger_id": "1.2.3", "view": modal(101)}),
        )
        .await;
        assert_eq!(
            answer,
            json!({"ok": false, "error": "invalid_arguments", "response_metadata": {"messages": [
                "[ERROR] must be less than 101 items [json-pointer:/view/blocks/0/element/options]",
            ]}})
        );
        assert!(fake.messages(CHANNEL).is_empty());
        assert!(fake.opened_views().is_empty());
        let answer = raw(
            &fake,
            "views.open",
            json!({"trigger_id": "1.2.4", "view": modal(100)}),
        )
        .await;
        assert_eq!(answer["ok"], true, "{answer}");
    }

    #[tokio::test]
    async fn a_channel_can_refuse_posts_as_slack_does() {
        let fake = FakeSlack::start(TOKEN).await.unwrap();
        let message = json!({"channel": CHANNEL, "text": "hello"});
        for (state, code) in [
            (ChannelState::NotInChannel, "not_in_channel"),
            (ChannelState::Archived, "is_archived"),
            (ChannelState::NotFound, "channel_not_found"),
        ] {
            fake.set_channel_state(CHANNEL, state);
            let answer = raw(&fake, "chat.postMessage", message.clone()).await;
            assert_eq!(answer, json!({"ok": false, "error": code}));
            let answer = raw(
                &fake,
                "chat.postEphemeral",
                json!({"channel": CHANNEL, "user": ALICE, "text": "x"}),
            )
            .await;
            assert_eq!(answer["error"], code);
        }
        assert!(fake.messages(CHANNEL).is_empty());
        // Other channels are not affected, and the channel recovers.
        assert_eq!(
            raw(
                &fake,
                "chat.postMessage",
                json!({"channel": "C0OTHER", "text": "hi"})
            )
            .await["ok"],
            true
        );
        fake.set_channel_state(CHANNEL, ChannelState::Member);
        assert_eq!(raw(&fake, "chat.postMessage", message).await["ok"], true);
        assert_eq!(fake.messages(CHANNEL).len(), 1);
    }

    #[tokio::test]
    async fn conversations_info_tells_membership_as_slack_does() {
        let fake = FakeSlack::start(TOKEN).await.unwrap();
        fake.set_channel(CHANNEL, "approvals", false);
        fake.set_channel("C0SECRET", "incident", true);
        let info = |channel: &str| {
            let fake = fake.clone();
            let channel = channel.to_owned();
            async move { raw(&fake, "conversations.info", json!({ "channel": channel })).await }
        };
        let answer = info(CHANNEL).await;
        assert_eq!(answer["ok"], true);
        assert_eq!(answer["channel"]["name"], "approvals");
        assert_eq!(answer["channel"]["is_member"], true);
        assert_eq!(answer["channel"]["is_private"], false);
        assert_eq!(info("C0SECRET").await["channel"]["is_private"], true);
        // Any other well-formed id is a public channel the bot is in, named after its id.
        assert_eq!(info("C0ELSE").await["channel"]["name"], "c0else");

        fake.set_channel_state(CHANNEL, ChannelState::NotInChannel);
        let answer = info(CHANNEL).await;
        assert_eq!(answer["channel"]["is_member"], false);
        fake.set_channel_state(CHANNEL, ChannelState::Archived);
        assert_eq!(info(CHANNEL).await["channel"]["is_archived"], true);
        fake.set_channel_state(CHANNEL, ChannelState::NotFound);
        assert_eq!(
            info(CHANNEL).await,
            json!({"ok": false, "error": "channel_not_found"})
        );
        assert_eq!(info("#approvals").await["error"], "channel_not_found");

        // The bot cannot see a private channel it is not in: not found, for reading and posting.
        fake.set_channel_state("C0SECRET", ChannelState::NotInChannel);
        assert_eq!(info("C0SECRET").await["error"], "channel_not_found");
        let post = raw(
            &fake,
            "chat.postMessage",
            json!({"channel": "C0SECRET", "text": "hi"}),
        )
        .await;
        assert_eq!(post["error"], "channel_not_found");
    }

    #[tokio::test]
    async fn scopes_are_listed_and_enforced_as_slack_does() {
        let fake = FakeSlack::start(TOKEN).await.unwrap();
        fake.set_user(ALICE, "alice", Some("alice@example.com"));
        let answer = reqwest::Client::new()
            .post(format!("{}/auth.test", fake.api_url()))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let listed = answer.headers()["x-oauth-scopes"]
            .to_str()
            .unwrap()
            .to_owned();
        let manifest: Vec<&str> = jit_core::slack::scopes::SCOPES
            .iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(listed, manifest.join(","));
        // A refused token learns nothing about the scopes.
        let refused = reqwest::Client::new()
            .post(format!("{}/auth.test", fake.api_url()))
            .bearer_auth("xoxb-other")
            .send()
            .await
            .unwrap();
        assert!(refused.headers().get("x-oauth-scopes").is_none());

        fake.set_scopes(&["commands", "users:read"]);
        let post = raw(
            &fake,
            "chat.postMessage",
            json!({"channel": CHANNEL, "text": "hi"}),
        )
        .await;
        assert_eq!(
            post,
            json!({"ok": false, "error": "missing_scope", "needed": "chat:write", "provided": "commands,users:read"})
        );
        assert!(fake.messages(CHANNEL).is_empty());
        assert_eq!(
            raw(&fake, "conversations.info", json!({"channel": CHANNEL})).await["needed"],
            "channels:read"
        );
        assert_eq!(
            raw(&fake, "usergroups.users.list", json!({"usergroup": "S0X"})).await["needed"],
            "usergroups:read"
        );
        assert_eq!(
            raw(&fake, "conversations.open", json!({"users": ALICE})).await["needed"],
            "im:write"
        );
        // users:read without users:read.email: the user, without the email.
        let user = raw(&fake, "users.info", json!({"user": ALICE})).await;
        assert_eq!(user["user"]["name"], "alice");
        assert!(user["user"]["profile"].get("email").is_none(), "{user}");
        fake.set_scopes(&["users:read", "users:read.email"]);
        let user = raw(&fake, "users.info", json!({"user": ALICE})).await;
        assert_eq!(user["user"]["profile"]["email"], "alice@example.com");
    }

    #[tokio::test]
    async fn an_odd_answer_still_takes_effect_and_keeps_the_fields_jit_reads() {
        let fake = FakeSlack::start(TOKEN).await.unwrap();
        fake.inject("*", Fault::OddAnswer, 2);
        let posted = raw(
            &fake,
            "chat.postMessage",
            json!({"channel": CHANNEL, "text": "hello"}),
        )
        .await;
        assert_eq!(posted["ok"], true);
        assert_eq!(posted["channel"], CHANNEL);
        assert_eq!(posted["ts"], fake.messages(CHANNEL)[0].ts);
        assert_eq!(posted["message"]["blocks"], "blocks as a string");
        assert_eq!(posted["warning"], "superfluous_charset");
        let opened = raw(
            &fake,
            "views.open",
            json!({"trigger_id": "1.2.3", "view": {
                "type": "modal", "title": {"type": "plain_text", "text": "T"}, "blocks": [],
            }}),
        )
        .await;
        assert_eq!(opened["view"]["id"], fake.opened_views()[0].view_id);
        assert_eq!(opened["view"]["state"]["values"], "none yet");
        assert_eq!(fake.faults_left(), 0);
        // The next answer is plain again.
        let plain = raw(
            &fake,
            "chat.postMessage",
            json!({"channel": CHANNEL, "text": "again"}),
        )
        .await;
        assert!(plain.get("warning").is_none());
    }

    #[tokio::test]
    async fn events_are_logged_in_order() {
        let (fake, client, token) = start().await;
        let session = client.open_session(&token);
        let posted = session
            .chat_post_message(&post(CHANNEL, text("Access request")))
            .await
            .unwrap();
        session
            .chat_update(&SlackApiChatUpdateRequest::new(
                CHANNEL.into(),
                text("Approved"),
                posted.ts,
            ))
            .await
            .unwrap();
        session
            .chat_post_ephemeral(&SlackApiChatPostEphemeralRequest::new(
                CHANNEL.into(),
                BOB.into(),
                text("Done"),
            ))
            .await
            .unwrap();
        session
            .views_open(&SlackApiViewsOpenRequest::new(
                "1.2.3".into(),
                view(request_modal("Request")),
            ))
            .await
            .unwrap();
        session
            .views_publish(&SlackApiViewsPublishRequest::new(
                ALICE.into(),
                view(home_view("Hi")),
            ))
            .await
            .unwrap();

        let (events, cursor) = fake.events_since(0);
        assert_eq!(cursor, 5);
        match &events[..] {
            [
                SlackEvent::Posted { message: posted },
                SlackEvent::Updated {
                    message: updated,
                    before,
                },
                SlackEvent::Ephemeral { ephemeral },
                SlackEvent::ViewOpened { view: opened },
                SlackEvent::ViewPublished { user, view: home },
            ] => {
                assert_eq!(posted.text, "Access request");
                assert_eq!(before, posted);
                assert_eq!((updated.text.as_str(), updated.edits), ("Approved", 1));
                assert_eq!(ephemeral.user, BOB);
                assert_eq!(opened.trigger_id, "1.2.3");
                assert_eq!(
                    (user.as_str(), render_blocks(home).as_str()),
                    (ALICE, "== Home ==\nHi")
                );
            }
            other => panic!("unexpected events {other:#?}"),
        }

        assert_eq!(fake.events_since(cursor), (Vec::new(), 5));
        session
            .chat_post_message(&post(CHANNEL, text("Next")))
            .await
            .unwrap();
        let (events, cursor) = fake.events_since(cursor);
        assert_eq!(cursor, 6);
        assert!(matches!(&events[..], [SlackEvent::Posted { message }] if message.text == "Next"));
        assert_eq!(fake.events_since(99), (Vec::new(), 6));
    }

    #[tokio::test]
    async fn the_server_stops_when_the_last_handle_is_dropped() {
        let fake = FakeSlack::start(TOKEN).await.unwrap();
        let url = format!("{}/auth.test", fake.api_url());
        let clone = fake.clone();
        drop(fake);
        let http = reqwest::Client::new();
        assert!(
            http.get(&url).send().await.is_ok(),
            "a clone keeps it running"
        );
        drop(clone);
        let deadline = Instant::now() + Duration::from_secs(5);
        while reqwest::Client::new().get(&url).send().await.is_ok() {
            assert!(Instant::now() < deadline, "still answering after the drop");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn renders_an_approval_message() {
        assert_eq!(
            render_blocks(&approval_blocks()),
            "# Access request\n\
             <@U01ALICE> requests *admin* on *prod-db* for 1 hour\n\
             *Reason*\nINC-42 database failover\n\
             *Expires*\n14:00 UTC\n\
             Request `r-7`  ·  (image: aws)\n\
             ---\n\
             [Approve*] [Deny!]"
        );
    }

    #[test]
    fn renders_a_modal_with_inputs() {
        assert_eq!(
            render_blocks(&request_modal("Request access")),
            "== Request access ==\n\
             Role: [select: prod-admin | prod-read (selected) | stage-admin | stage-read | billing | …+1 more]\n\
             Justification: [multiline text: Why do you need it?]\n\
             Ticket (optional): [text]\n  (e.g. INC-42)\n\
             [Cancel] [Request]"
        );
    }

    #[test]
    fn renders_accessories_unknown_blocks_and_nothing() {
        let blocks = json!([
            {
                "type": "section",
                "text": { "type": "mrkdwn", "text": "prod-db admin, 1 hour" },
                "accessory": { "type": "button", "text": { "type": "plain_text", "text": "Revoke" }, "action_id": "revoke" }
            },
            { "type": "video", "title": { "type": "plain_text", "text": "x" } },
            { "type": "input", "label": { "type": "plain_text", "text": "Until" },
              "element": { "type": "datepicker", "initial_date": "2026-11-30" } }
        ]);
        assert_eq!(
            render_blocks(&blocks),
            "prod-db admin, 1 hour  [Revoke]\n(video)\nUntil: [date = 2026-11-30]"
        );
        assert_eq!(
            render_blocks(&json!({ "blocks": [{ "type": "divider" }] })),
            "---"
        );
        assert_eq!(render_blocks(&Value::Null), "");
    }

    #[tokio::test]
    async fn conversations_history_pages_newest_first_with_authors() {
        use slack_morphism::prelude::SlackApiConversationsHistoryRequest;
        let (fake, client, token) = start().await;
        let session = client.open_session(&token);
        let mut posted = Vec::new();
        for i in 1..=5 {
            let answer = session
                .chat_post_message(&post(CHANNEL, text(&format!("message {i}"))))
                .await
                .expect("posted");
            posted.push(answer.ts.0);
        }
        // A reply stays out of the channel's history; its parent shows the thread.
        session
            .chat_post_message(
                &post(CHANNEL, text("a reply")).with_thread_ts(posted[0].clone().into()),
            )
            .await
            .expect("replied");
        let typed = fake.post_as_user(CHANNEL, ALICE, "message 6");
        session
            .chat_post_message(&post("C0ELSEWHERE", text("elsewhere")))
            .await
            .expect("posted");

        // slack-morphism's own types read every page: the shapes are Slack's.
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let mut request = SlackApiConversationsHistoryRequest::new()
                .with_channel(CHANNEL.into())
                .with_limit(4);
            if let Some(c) = cursor.take() {
                request = request.with_cursor(c);
            }
            let page = session
                .conversations_history(&request)
                .await
                .expect("history");
            seen.extend(page.messages.iter().map(|m| {
                (
                    m.content.text.clone().unwrap_or_default(),
                    m.sender.user.as_ref().map(|u| u.0.clone()),
                    m.sender.bot_id.is_some(),
                )
            }));
            match page.has_more {
                Some(true) => {
                    cursor = page
                        .response_metadata
                        .and_then(|r| r.next_cursor)
                        .filter(|c| !c.0.is_empty());
                    assert!(cursor.is_some(), "has_more comes with a cursor");
                }
                _ => break,
            }
        }
        let texts: Vec<&str> = seen.iter().map(|(t, _, _)| t.as_str()).collect();
        assert_eq!(
            texts,
            [
                "message 6",
                "message 5",
                "message 4",
                "message 3",
                "message 2",
                "message 1"
            ]
        );
        assert_eq!(seen[0].1.as_deref(), Some(ALICE));
        assert!(!seen[0].2, "a person's message has no bot_id");
        assert_eq!(seen[1].1.as_deref(), Some(BOT_USER_ID));
        assert!(seen[1].2);

        // Raw answers: oldest/latest are exclusive unless inclusive; the thread parent says so.
        let raw = |query: String| {
            let url = format!("{}/conversations.history?{query}", fake.api_url());
            async move {
                reqwest::Client::new()
                    .get(url)
                    .bearer_auth(TOKEN)
                    .send()
                    .await
                    .unwrap()
                    .json::<Value>()
                    .await
                    .unwrap()
            }
        };
        let from = &posted[3];
        let exclusive = raw(format!("channel={CHANNEL}&oldest={from}")).await;
        let texts: Vec<&str> = exclusive["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["text"].as_str().unwrap())
            .collect();
        assert_eq!(texts, ["message 6", "message 5"]);
        assert_eq!(exclusive["has_more"], false);
        assert!(exclusive.get("response_metadata").is_none());
        let inclusive = raw(format!("channel={CHANNEL}&oldest={from}&inclusive=true")).await;
        assert_eq!(inclusive["messages"].as_array().unwrap().len(), 3);
        let window = raw(format!(
            "channel={CHANNEL}&oldest={}&latest={typed}",
            posted[0]
        ))
        .await;
        let oldest = window["messages"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert_eq!(oldest["text"], "message 2");
        let all = raw(format!("channel={CHANNEL}")).await;
        let parent = all["messages"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(parent["reply_count"], 1);
        assert_eq!(parent["thread_ts"], posted[0].as_str());
        for (query, code) in [
            (
                format!("channel={CHANNEL}&cursor=bm9wZQ=="),
                "invalid_cursor",
            ),
            (
                format!("channel={CHANNEL}&oldest=yesterday"),
                "invalid_ts_oldest",
            ),
            (
                format!("channel={CHANNEL}&latest=1.2.3"),
                "invalid_ts_latest",
            ),
            ("channel=general".to_owned(), "channel_not_found"),
        ] {
            let answer = raw(query).await;
            assert_eq!(answer["ok"], false);
            assert_eq!(answer["error"], code);
        }
        fake.set_channel_state(CHANNEL, ChannelState::NotInChannel);
        assert_eq!(
            raw(format!("channel={CHANNEL}")).await["error"],
            "not_in_channel"
        );
    }
}
