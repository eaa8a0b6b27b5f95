//! The Events API: the URL handshake and `app_home_opened`.

use serde_json::{Value, json};

use super::payload::EventBody;
use crate::app::App;
use crate::domain::ids::SlackUserId;
use crate::jobs::Job;
use crate::queue::{self, Placement};

/// Answers an event once: Slack's own retries (same `event_id`, new signature) and replays of
/// the same signed body (`delivery`) have no second effect.
pub async fn answer(
    app: &App,
    body: EventBody,
    delivery: Option<&super::deliveries::Delivery>,
) -> Option<Value> {
    if let EventBody::EventCallback { origin, .. } = &body
        && let Err(refused) = app
            .directory
            .serves(origin.team_id.as_deref(), origin.enterprise_id.as_deref())
    {
        super::commands::not_served(app, &refused, "an event");
        return None;
    }
    let by_event = match &body {
        EventBody::EventCallback {
            event_id: Some(id), ..
        } => Some(super::deliveries::Delivery::event(id, app.clock.now())),
        _ => None,
    };
    super::deliveries::once(
        app,
        by_event.as_ref().or(delivery),
        None,
        || None,
        || handle(app, body),
    )
    .await
}

pub async fn handle(app: &App, body: EventBody) -> Option<Value> {
    match body {
        EventBody::UrlVerification { challenge } => Some(json!({ "challenge": challenge })),
        EventBody::EventCallback { event, .. } => {
            let user = event
                .user
                .as_deref()
                .and_then(|u| SlackUserId::parse(u).ok());
            let home =
                event.kind == "app_home_opened" && event.tab.as_deref().unwrap_or("home") == "home";
            if let (true, Some(user)) = (home, user) {
                let now = app.clock.now();
                let queued = async {
                    let mut tx = app.store.begin_write().await?;
                    queue::enqueue(&mut tx, &Job::Home { user }, Placement::none(), now, now)
                        .await?;
                    tx.commit().await?;
                    anyhow::Ok(())
                }
                .await;
                match queued {
                    Ok(()) => app.waker.wake(),
                    Err(err) => tracing::error!(
                        error = format!("{err:#}"),
                        "cannot queue an App Home refresh"
                    ),
                }
            }
            None
        }
        EventBody::Other => None,
    }
}
