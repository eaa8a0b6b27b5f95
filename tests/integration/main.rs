//! Integration tests: the real router and worker, driven by signed Slack requests, against the
//! fake Slack Web API over HTTP and real provider processes.

#[macro_use]
#[path = "../support/db.rs"]
mod db;
#[path = "../support/fake_okta.rs"]
mod fake_okta;
mod harness;
#[path = "../support/ic_proxy.rs"]
mod ic_proxy;

mod api;
mod approval_flow;
mod approver_dms;
mod audit_chain;
mod credentials;
mod edge;
mod escalation;
mod flood;
mod hardened_edge;
mod identity_center;
mod lifecycle;
mod limits_props;
mod okta;
mod oncall;
mod postgres;
mod reliability;
mod replicas;
mod rules;
mod scheduled;
mod slack_delivery;
mod teardown_attacks;
mod webhooks;
