//! Group commit for new requests.
//!
//! Each `/jit request` needs one write transaction, and with `synchronous=FULL` each commit costs
//! an fsync. One task takes every submission waiting at that moment, stores them in a single
//! transaction (each inside its own savepoint, so one failure does not sink the others), commits
//! once, and only then answers each caller. Every ack still follows a durable commit.

use std::sync::{Arc, Weak};

use tokio::sync::{mpsc, oneshot};

use super::request::{Prepared, store};
use super::{HandlerError, HandlerResult};
use crate::app::App;
use crate::domain::request::Request;

/// Most submissions stored in one transaction.
const MAX_BATCH: usize = 128;

type Reply = oneshot::Sender<HandlerResult<Request>>;

#[derive(Clone)]
pub struct Committer {
    queue: mpsc::UnboundedSender<(Prepared, Reply)>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Committer")
    }
}

/// The receiving end, handed to [`start`] once the app exists.
pub struct Inbox(mpsc::UnboundedReceiver<(Prepared, Reply)>);

pub fn channel() -> (Committer, Inbox) {
    let (queue, inbox) = mpsc::unbounded_channel();
    (Committer { queue }, Inbox(inbox))
}

impl Committer {
    /// Stores one submission; returns after the transaction holding it committed.
    pub async fn store(&self, prepared: Prepared) -> HandlerResult<Request> {
        let (reply, answer) = oneshot::channel();
        self.queue.send((prepared, reply)).map_err(|_| {
            HandlerError::Internal(anyhow::anyhow!("the request committer has stopped"))
        })?;
        answer.await.map_err(|_| {
            HandlerError::Internal(anyhow::anyhow!(
                "the request committer dropped a submission"
            ))
        })?
    }
}

/// Runs the committer until the app is gone.
pub fn start(app: &Arc<App>, inbox: Inbox) {
    let app: Weak<App> = Arc::downgrade(app);
    let Inbox(mut inbox) = inbox;
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = inbox.recv().await {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match inbox.try_recv() {
                    Ok(more) => batch.push(more),
                    Err(_) => break,
                }
            }
            let Some(app) = app.upgrade() else { break };
            commit(&app, &mut batch).await;
        }
    });
}

async fn commit(app: &App, batch: &mut Vec<(Prepared, Reply)>) {
    let now = app.clock.now();
    let mut results: Vec<HandlerResult<Request>> = Vec::with_capacity(batch.len());
    let outcome = async {
        let mut tx = app.store.begin_write().await?;
        for (prepared, _) in batch.iter() {
            sqlx::query("SAVEPOINT submission")
                .execute(&mut **tx)
                .await?;
            let result = store(&mut tx, app, prepared, now).await;
            if result.is_err() {
                sqlx::query("ROLLBACK TO submission")
                    .execute(&mut **tx)
                    .await?;
            }
            sqlx::query("RELEASE submission").execute(&mut **tx).await?;
            results.push(result);
        }
        tx.commit().await?;
        anyhow::Ok(())
    }
    .await;
    match outcome {
        Ok(()) => {
            app.waker.wake();
            for ((_, reply), result) in batch.drain(..).zip(results) {
                let _ = reply.send(result);
            }
        }
        Err(err) => {
            let text = format!("{err:#}");
            for (_, reply) in batch.drain(..) {
                let _ = reply.send(Err(HandlerError::Internal(anyhow::anyhow!(
                    "storing the request failed: {text}"
                ))));
            }
        }
    }
}
