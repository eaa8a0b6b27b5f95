//! The flood benchmark: a few people send many requests, all within the per-person rate limit,
//! then someone else asks for access. How long until that request's approval message is in the
//! approvers' channel, with Slack's real pace (about one message per second per channel)?
//!
//! `jit serve` runs as a child process against the Slack simulator, whose posting pace answers
//! HTTP 429 with `Retry-After` as Slack does. Two layouts are measured: approvers in their own
//! channel, and approvers in the audit channel (one pace for approval messages and audit
//! posts). The figure is printed next to the bar (≤ 5 s); no test fails on it.

use std::time::{Duration, Instant};

use clap::Args;

use super::ack::{slash, spawn_jit_with};
use super::print_bar;
use crate::slack::simulator::FakeSlack;
use crate::store::Durability;

#[derive(Debug, Clone, Args)]
pub struct FloodArgs {
    /// People flooding.
    #[arg(long, default_value_t = 5)]
    pub users: usize,
    /// Requests each of them sends, as fast as they are answered.
    #[arg(long, default_value_t = 10)]
    pub requests: usize,
    /// Slack's pace in the simulator: messages per second per channel (jit paces itself the same
    /// way, `JIT_SLACK_CHANNEL_RATE`).
    #[arg(long, default_value_t = 1)]
    pub slack_rate: u32,
    /// Messages Slack lets through at once before its pace applies.
    #[arg(long, default_value_t = 3)]
    pub slack_burst: u32,
    /// `limits.max_pending_per_user` for the run (default: the policy default). A large value
    /// shows the delay without the cap.
    #[arg(long)]
    pub max_pending: Option<u32>,
    /// Give up waiting for the approval message after this many seconds.
    #[arg(long, default_value_t = 180)]
    pub timeout: u64,
}

impl Default for FloodArgs {
    fn default() -> Self {
        Self {
            users: 5,
            requests: 10,
            slack_rate: 1,
            slack_burst: 3,
            max_pending: None,
            timeout: 180,
        }
    }
}

const APPROVALS: &str = "C0APPROVALS";
const AUDIT: &str = "C0AUDIT";
const LEGIT: &str = "U0LEGIT";

fn flooder(n: usize) -> String {
    format!("U0FLOOD{n}")
}

fn policy(args: &FloodArgs, approvers_channel: &str) -> String {
    let mut limits = format!("requests_per_user_per_minute = {}\n", args.requests.max(10));
    if let Some(max) = args.max_pending {
        limits.push_str(&format!("max_pending_per_user = {max}\n"));
    }
    format!(
        r#"
[slack]
audit_channel = "{AUDIT}"
admins = {{ users = ["U0ADMIN"] }}

[limits]
{limits}
[[resource]]
id = "flood"
description = "The flood benchmark's resource"
provider = "none"
max_duration = "4h"
approvers = {{ channel = "{approvers_channel}", users = ["U0APPROVER"] }}
"#
    )
}

/// What one layout gave.
struct Outcome {
    accepted: usize,
    refused_pending: usize,
    refused_other: usize,
    /// From sending the new request to its approval message in the channel.
    delay: Option<Duration>,
    /// Top-level messages in the approvers' channel before it.
    ahead: usize,
    paced: usize,
}

async fn scenario(
    args: &FloodArgs,
    durability: Durability,
    approvers_channel: &str,
) -> anyhow::Result<Outcome> {
    let dir = tempfile::Builder::new()
        .prefix("jit-bench-flood-")
        .tempdir()?;
    let slack = FakeSlack::start("xoxb-bench").await?;
    slack.set_post_pace(Some((args.slack_rate, args.slack_burst)));
    // Members of the workspace, known before jit reads the directory: jit refuses people it
    // does not know yet wherever the policy does not name them.
    for u in 0..args.users {
        slack.set_user(&flooder(u), &format!("flood{u}"), None);
    }
    slack.set_user(LEGIT, "legit", None);
    let rate = args.slack_rate.to_string();
    let (mut child, url, _) = spawn_jit_with(
        dir.path(),
        &slack,
        durability,
        &policy(args, approvers_channel),
        &[("JIT_SLACK_CHANNEL_RATE", &rate)],
    )
    .await?;
    let result = async {
        let client = reqwest::Client::new();
        // The flood: every user sends their requests one after the other, all users at once.
        let mut tasks = Vec::new();
        for u in 0..args.users {
            let (client, url, n) = (client.clone(), url.clone(), args.requests);
            tasks.push(tokio::spawn(async move {
                let mut answers = Vec::new();
                for i in 0..n {
                    let text = format!("request flood 1h flood {u}-{i}");
                    answers.push(slash(&client, &url, &flooder(u), &text).await?);
                }
                anyhow::Ok(answers)
            }));
        }
        let (mut accepted, mut refused_pending, mut refused_other) = (0, 0, 0);
        for task in tasks {
            for answer in task.await?? {
                if answer.contains("was sent to") {
                    accepted += 1;
                } else if answer.contains("waiting for approval, the most") {
                    refused_pending += 1;
                } else {
                    refused_other += 1;
                }
            }
        }
        // Then someone else, while the flood's messages still wait for the channel's pace.
        let sent = Instant::now();
        let answer = slash(&client, &url, LEGIT, "request flood 1h the real incident").await?;
        let id = answer
            .split('#')
            .nth(1)
            .map(|rest| {
                rest.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
            })
            .filter(|digits| !digits.is_empty())
            .ok_or_else(|| anyhow::anyhow!("the new request was not accepted: {answer}"))?;
        let prefix = format!("Access request #{id}:");
        let deadline = sent + Duration::from_secs(args.timeout);
        let (mut delay, mut ahead) = (None, 0);
        while Instant::now() < deadline {
            let messages = slack.messages(approvers_channel);
            if let Some(position) = messages.iter().position(|m| m.text.starts_with(&prefix)) {
                delay = Some(sent.elapsed());
                ahead = position;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        anyhow::Ok(Outcome {
            accepted,
            refused_pending,
            refused_other,
            delay,
            ahead,
            paced: slack.paced_posts(),
        })
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

pub async fn run(args: FloodArgs, durability: Durability) -> anyhow::Result<()> {
    let cap = args
        .max_pending
        .unwrap_or(crate::domain::policy::DEFAULT_MAX_PENDING_PER_USER);
    println!(
        "\nflood: {} users × {} requests (within the rate limit), then a new request from someone else; \
         Slack paced at {}/s per channel after a burst of {} (429 + Retry-After beyond), \
         JIT_SLACK_CHANNEL_RATE={}, max_pending_per_user={cap}",
        args.users, args.requests, args.slack_rate, args.slack_burst, args.slack_rate
    );
    for (layout, channel) in [
        ("approvers in their own channel", APPROVALS),
        ("approvers in the audit channel", AUDIT),
    ] {
        let outcome = scenario(&args, durability, channel).await?;
        println!(
            "  {layout}: flood requests accepted {}, refused by the pending cap {}, refused otherwise {}; \
             {} message(s) ahead of it in the channel; {} post(s) answered 429 by Slack",
            outcome.accepted,
            outcome.refused_pending,
            outcome.refused_other,
            outcome.ahead,
            outcome.paced
        );
        match outcome.delay {
            Some(delay) => print_bar(
                "new request's approval message",
                format!("{:.2} s", delay.as_secs_f64()),
                "≤ 5 s under the flood",
                delay <= Duration::from_secs(5),
            ),
            None => print_bar(
                "new request's approval message",
                format!("not posted within {} s", args.timeout),
                "≤ 5 s under the flood",
                false,
            ),
        }
    }
    Ok(())
}
