//! The Events API: the URL handshake and `app_home_opened`.

use serde_json::{Value, json};

use super::payload::EventBody;
use crate::app::App;
use crate::domain::ids::SlackUserId;
use crate::queue::{self, Job, Placement};

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
