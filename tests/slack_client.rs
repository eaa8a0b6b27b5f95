//! jit's own Slack client against the Slack simulator (`crates/slack-sim`): what `jit doctor`
//! reads through it (the token's workspace and scopes, channels, users) comes back as Slack
//! would answer it.

use jit::slack::simulator::{BOT_USER_ID, FakeSlack, TEAM_ID};

const TOKEN: &str = "xoxb-test-token";
const CHANNEL: &str = "C0APPROVALS";
const ALICE: &str = "U0ALICE";

#[tokio::test]
async fn jits_client_reads_the_token_channels_and_users() {
    let fake = FakeSlack::start(TOKEN).await.unwrap();
    let api = jit::slack::api::SlackApi::new(
        &fake.api_url(),
        secrecy::SecretString::from(TOKEN),
        std::num::NonZeroU32::new(1).unwrap(),
        jit::metrics::Metrics::new(),
    )
    .unwrap();
    let info = api.auth_test().await.unwrap();
    assert_eq!(info.team_id.as_deref(), Some(TEAM_ID));
    assert_eq!(info.user_id.as_deref(), Some(BOT_USER_ID));
    assert_eq!(info.scopes.unwrap().len(), jit::slack::api::SCOPES.len());
    fake.set_channel(CHANNEL, "approvals", true);
    let channel = api.channel_info(CHANNEL).await.unwrap();
    assert_eq!(channel.name.as_deref(), Some("approvals"));
    assert_eq!(channel.is_member, Some(true));
    assert!(channel.is_private && !channel.is_archived);
    fake.set_user(ALICE, "alice", None);
    assert!(!api.user_info(ALICE).await.unwrap().deleted);
    fake.deactivate_user(ALICE);
    assert!(api.user_info(ALICE).await.unwrap().deleted);
    assert_eq!(
        api.user_info("U0GHOST").await.unwrap_err().code(),
        "user_not_found"
    );
    fake.set_scopes(&["commands"]);
    let err = api.channel_info(CHANNEL).await.unwrap_err();
    assert_eq!(err.code(), "missing_scope");
    assert!(
        err.to_string().contains("needed scope: groups:read"),
        "{err}"
    );
}
