//! Group commit for new requests.
//!
//! Each `/jit request` needs one write transaction, and with `synchronous=FULL` each commit costs
//! an fsync. One task takes every submission waiting at that moment, stores them in a single
//! transaction with a few multi-row statements, commits once, and only then answers each caller.
//! Every ack still follows a durable commit. If the batch fails, each submission is stored alone,
//! so one bad submission cannot sink the others.
//!
//! `limits.max_pending_per_user` is applied here, inside the transaction, so that submissions
//! of one requester in one batch (or racing batches) cannot pass it together: a submission over
//! the cap is answered with the refusal and the rest of the batch is stored.

use std::sync::{Arc, Weak};

use tokio::sync::{mpsc, oneshot};

use super::request::{Prepared, over_pending_cap, pending_refusal, store, store_for_approval};
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
    match store_batch(app, batch, now).await {
        Ok(results) => {
            app.waker.wake();
            for ((_, reply), result) in batch.drain(..).zip(results) {
                let _ = reply.send(result);
            }
        }
        // Something in the batch failed: store each alone, so one bad submission cannot sink
        // the others, and each caller gets its own answer.
        Err(err) => {
            tracing::warn!(
                error = format!("{err:#}"),
                submissions = batch.len(),
                "storing a batch of requests failed; storing them one by one"
            );
            for (prepared, reply) in batch.drain(..) {
                let one = async {
                    let mut tx = app.store.begin_write().await?;
                    let request = store(&mut tx, app, &prepared, now).await?;
                    tx.commit().await?;
                    Ok::<_, HandlerError>(request)
                }
                .await;
                if one.is_ok() {
                    app.waker.wake();
                }
                let _ = reply.send(one);
            }
        }
    }
}

/// One transaction for the whole batch: requests that go to approvers are stored in bulk, the
/// others (approved by policy, or from identities) one after the other. A submission refused by
/// the pending cap gets its refusal; any other failure fails the batch.
async fn store_batch(
    app: &App,
    batch: &[(Prepared, Reply)],
    now: chrono::DateTime<chrono::Utc>,
) -> HandlerResult<Vec<HandlerResult<Request>>> {
    let prepared: Vec<&Prepared> = batch.iter().map(|(p, _)| p).collect();
    let mut tx = app.store.begin_write().await?;
    // The bulk path skips `store`'s own check, so the cap is applied to the whole batch here.
    let over = over_pending_cap(&mut tx, app, &prepared).await?;
    let bulk: Vec<&Prepared> = prepared
        .iter()
        .zip(&over)
        .filter(|(p, over)| is_bulk(p) && !**over)
        .map(|(p, _)| *p)
        .collect();
    let mut bulk_stored = store_for_approval(&mut tx, &app.policy.audit_channel, &bulk, now)
        .await?
        .into_iter();
    let mut stored = Vec::with_capacity(batch.len());
    for (prepared, over) in prepared.into_iter().zip(over) {
        let result = if over {
            Err(pending_refusal(app, &prepared.requester))
        } else if is_bulk(prepared) {
            Ok(bulk_stored.next().ok_or_else(|| {
                HandlerError::Internal(anyhow::anyhow!("a bulk submission went missing"))
            })?)
        } else {
            match store(&mut tx, app, prepared, now).await {
                Ok(request) => Ok(request),
                // Refused before it wrote anything: the transaction goes on.
                Err(refused @ HandlerError::Limited { .. }) => Err(refused),
                Err(err) => return Err(err),
            }
        };
        stored.push(result);
    }
    tx.commit().await?;
    Ok(stored)
}

fn is_bulk(p: &Prepared) -> bool {
    !p.auto && matches!(p.requester, crate::domain::policy::Requester::User(_))
}
