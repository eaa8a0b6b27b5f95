//! Who is on call now, from PagerDuty, cached (`auto_approve.oncall`).
//!
//! A background task ([`OnCallCache::keep_fresh`], started by `jit serve`) asks PagerDuty's
//! REST API (`GET /oncalls`) for the current on-call people of every schedule the policy names,
//! every [`REFRESH_EVERY`], and keeps schedule → on-call emails. The ack path only reads the
//! cache: PagerDuty is never called while a request waits.
//!
//! **Fail closed.** No answer yet, or an answer older than [`MAX_AGE`] (PagerDuty unreachable
//! or refusing for that long), is [`OnCall::Unknown`]: the on-call rule approves nobody, and the
//! approval message says why. People are matched by the email of their Slack profile
//! (lower-cased) against the email of their PagerDuty user.
//!
//! The token (`PAGERDUTY_TOKEN` or `PAGERDUTY_TOKEN_FILE`) is a [`SecretString`]: it is never
//! logged, and errors never carry it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, anyhow};
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::clock::SharedClock;
use crate::domain::policy::OnCall;

/// How often the on-call people are read from PagerDuty.
pub const REFRESH_EVERY: Duration = Duration::from_secs(60);
/// An answer older than this (three refreshes) counts for nothing.
pub const MAX_AGE: Duration = Duration::from_secs(180);
/// PagerDuty's largest page.
const PAGE: usize = 100;
/// No refresh reads more pages than this (a runaway `more` cannot loop forever).
const MAX_PAGES: usize = 100;

pub const DEFAULT_API_URL: &str = "https://api.pagerduty.com";

/// Where PagerDuty is and how to talk to it (`PAGERDUTY_TOKEN`, `JIT_PAGERDUTY_API_URL`).
#[derive(Clone)]
pub struct PagerDutyConfig {
    pub api_url: String,
    pub token: SecretString,
}

impl std::fmt::Debug for PagerDutyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PagerDutyConfig")
            .field("api_url", &self.api_url)
            .field("token", &"[redacted]")
            .finish()
    }
}

/// A small client of PagerDuty's REST API: the one call jit needs.
#[derive(Clone)]
pub struct PagerDuty {
    http: reqwest::Client,
    config: PagerDutyConfig,
}

#[derive(Deserialize)]
struct OnCallsPage {
    #[serde(default)]
    oncalls: Vec<OnCallEntry>,
    #[serde(default)]
    more: bool,
}

#[derive(Deserialize)]
struct OnCallEntry {
    #[serde(default)]
    user: Option<Reference>,
    /// `null` for people on an escalation rule directly rather than through a schedule.
    #[serde(default)]
    schedule: Option<Reference>,
}

#[derive(Deserialize)]
struct Reference {
    id: String,
    #[serde(default)]
    email: Option<String>,
}

impl PagerDuty {
    pub fn new(config: PagerDutyConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("cannot set up the PagerDuty client")?;
        Ok(Self { http, config })
    }

    /// The emails (lower-cased) of whoever is on call now in each of `schedules`. A schedule
    /// nobody is on call in maps to an empty set.
    pub async fn on_call_now(
        &self,
        schedules: &[String],
    ) -> anyhow::Result<HashMap<String, HashSet<String>>> {
        let mut out: HashMap<String, HashSet<String>> = schedules
            .iter()
            .map(|s| (s.clone(), HashSet::new()))
            .collect();
        let url = format!("{}/oncalls", self.config.api_url.trim_end_matches('/'));
        let mut offset = 0;
        for _ in 0..MAX_PAGES {
            let mut query: Vec<(&str, String)> = schedules
                .iter()
                .map(|s| ("schedule_ids[]", s.clone()))
                .collect();
            query.push(("include[]", "users".into()));
            query.push(("earliest", "true".into()));
            query.push(("limit", PAGE.to_string()));
            query.push(("offset", offset.to_string()));
            let response = self
                .http
                .get(&url)
                .query(&query)
                .header(
                    "Authorization",
                    format!("Token token={}", self.config.token.expose_secret()),
                )
                .header("Accept", "application/vnd.pagerduty+json;version=2")
                .send()
                .await
                // reqwest errors name the URL, never the headers.
                .map_err(|e| anyhow!("PagerDuty could not be reached: {e}"))?;
            let status = response.status();
            if !status.is_success() {
                return Err(anyhow!(
                    "PagerDuty answered {status}{}",
                    match status.as_u16() {
                        401 => " (check PAGERDUTY_TOKEN)",
                        403 => " (the token may not read on-calls)",
                        _ => "",
                    }
                ));
            }
            let page: OnCallsPage = response
                .json()
                .await
                .map_err(|e| anyhow!("PagerDuty's /oncalls answer was not understood: {e}"))?;
            let count = page.oncalls.len();
            for entry in page.oncalls {
                let (Some(schedule), Some(user)) = (entry.schedule, entry.user) else {
                    continue;
                };
                let Some(people) = out.get_mut(&schedule.id) else {
                    continue;
                };
                match user.email {
                    Some(email) if !email.trim().is_empty() => {
                        people.insert(email.trim().to_lowercase());
                    }
                    _ => tracing::warn!(
                        schedule = %schedule.id,
                        pagerduty_user = %user.id,
                        "a PagerDuty on-call user has no email; they cannot be matched to Slack"
                    ),
                }
            }
            if !page.more || count == 0 {
                return Ok(out);
            }
            offset += count;
        }
        Err(anyhow!(
            "PagerDuty kept answering `more` after {MAX_PAGES} pages"
        ))
    }
}

#[derive(Default)]
struct Answer {
    by_schedule: HashMap<String, HashSet<String>>,
    at: Option<DateTime<Utc>>,
    last_error: Option<String>,
}

/// The cached answer, shared by the refresher and the readers.
#[derive(Clone)]
pub struct OnCallCache {
    source: Option<PagerDuty>,
    schedules: Arc<Vec<String>>,
    answer: Arc<RwLock<Answer>>,
    clock: SharedClock,
    metrics: crate::metrics::Metrics,
}

impl std::fmt::Debug for OnCallCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnCallCache")
    }
}

impl OnCallCache {
    /// `source` is `None` when no PagerDuty token is configured: every answer is Unknown.
    pub fn new(
        source: Option<PagerDuty>,
        schedules: Vec<String>,
        clock: SharedClock,
        metrics: crate::metrics::Metrics,
    ) -> Self {
        Self {
            source,
            schedules: Arc::new(schedules),
            answer: Arc::default(),
            clock,
            metrics,
        }
    }

    /// Whether the policy asks about any schedule and a token is configured.
    pub fn configured(&self) -> bool {
        self.source.is_some()
    }

    pub fn schedules(&self) -> &[String] {
        &self.schedules
    }

    /// Reads every schedule from PagerDuty once. A failure keeps the previous answer (which
    /// ages out after [`MAX_AGE`]) and is logged.
    pub async fn refresh(&self) -> bool {
        let Some(source) = &self.source else {
            return false;
        };
        if self.schedules.is_empty() {
            return true;
        }
        match source.on_call_now(&self.schedules).await {
            Ok(by_schedule) => {
                let mut answer = self.answer.write().unwrap_or_else(|e| e.into_inner());
                answer.by_schedule = by_schedule;
                answer.at = Some(self.clock.now());
                answer.last_error = None;
                self.metrics.pagerduty_refresh(true);
                true
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot read who is on call from PagerDuty");
                self.answer
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .last_error = Some(err.to_string());
                self.metrics.pagerduty_refresh(false);
                false
            }
        }
    }

    /// Refreshes now and then every [`REFRESH_EVERY`], until the task is dropped.
    pub async fn keep_fresh(self) {
        if self.source.is_none() || self.schedules.is_empty() {
            return;
        }
        loop {
            self.refresh().await;
            tokio::time::sleep(REFRESH_EVERY).await;
        }
    }

    /// Whether the person with `email` is on call now in one of `schedules`.
    pub fn lookup(&self, email: Option<&str>, schedules: &[String]) -> OnCall {
        if self.source.is_none() {
            return OnCall::Unknown {
                why: "no PagerDuty token is configured (PAGERDUTY_TOKEN)".into(),
            };
        }
        let answer = self.answer.read().unwrap_or_else(|e| e.into_inner());
        let now = self.clock.now();
        let fresh = answer
            .at
            .is_some_and(|at| (now - at).to_std().unwrap_or_default() <= MAX_AGE);
        if !fresh {
            let since = match answer.at {
                None => "jit has no answer from it yet".to_owned(),
                Some(at) => format!(
                    "its last answer is {} minutes old",
                    (now - at).num_minutes()
                ),
            };
            return OnCall::Unknown {
                why: match &answer.last_error {
                    Some(_) => format!("PagerDuty could not be reached ({since})"),
                    None => format!("PagerDuty's on-call data is not fresh ({since})"),
                },
            };
        }
        let Some(email) = email
            .map(|e| e.trim().to_lowercase())
            .filter(|e| !e.is_empty())
        else {
            return OnCall::Unknown {
                why: "your Slack profile shows no email to match in PagerDuty".into(),
            };
        };
        if let Some(schedule) = schedules.iter().find(|s| {
            answer
                .by_schedule
                .get(*s)
                .is_some_and(|people| people.contains(&email))
        }) {
            return OnCall::Yes {
                schedule: schedule.clone(),
            };
        }
        match schedules
            .iter()
            .find(|s| !answer.by_schedule.contains_key(*s))
        {
            Some(unread) => OnCall::Unknown {
                why: format!("schedule {unread} has not been read from PagerDuty"),
            },
            None => OnCall::No,
        }
    }
}
