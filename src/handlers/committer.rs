//! Group commit for new requests.
//!
//! Each `/jit request` needs one write transaction, and with `synchronous=FULL` each commit costs
//! an fsync. One task takes every submission waiting at that moment, stores them in a single
//! transaction with a few multi-row statements, commits once, and only then answers each caller.
//! Every ack still follows a durable commit. If the batch fails, each submission is stored alone,
//! so one bad submission cannot sink the others.
//!
//! A submission may carry its Slack delivery (`crate::slack::deliveries`): the delivery is
//! recorded in the same transaction as the request it creates, and a delivery seen before (a
//! replay, in an earlier batch or earlier in this one) stores nothing and answers with the
//! request the first delivery created.
//!
//! `limits.max_pending_per_user` is applied here, inside the transaction, so that submissions
//! of one requester in one batch (or racing batches) cannot pass it together: a submission over
//! the cap is answered with the refusal and the rest of the batch is stored.

use std::sync::{Arc, Weak};

use tokio::sync::{mpsc, oneshot};

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::request::{
    Prepared, over_pending_cap, pending_cap_requesters, pending_refusal, reload, store,
    store_for_approval,
};
use super::{HandlerError, HandlerResult};
use crate::app::App;
use crate::domain::ids::RequestId;
use crate::domain::request::Request;
use crate::store::{WriteTx, batch, deliveries};

/// Most submissions stored in one transaction.
const MAX_BATCH: usize = 128;

/// A stored submission: the request, and whether it is one stored earlier (a replay).
#[derive(Debug, Clone)]
pub struct Stored {
    pub request: Request,
    pub replay: bool,
}

type Reply = oneshot::Sender<HandlerResult<Stored>>;

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
    pub async fn store(&self, prepared: Prepared) -> HandlerResult<Stored> {
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
        Ok(stored) => {
            app.waker.wake();
            for ((_, reply), stored) in batch.drain(..).zip(stored) {
                let _ = reply.send(stored);
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
                    let stored = store_batch_in(&mut tx, app, &[&prepared], now)
                        .await?
                        .pop()
                        .ok_or_else(|| anyhow::anyhow!("a submission went missing"))??;
                    tx.commit().await?;
                    Ok::<_, HandlerError>(stored)
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

/// One transaction for the whole batch.
async fn store_batch(
    app: &App,
    batch: &[(Prepared, Reply)],
    now: DateTime<Utc>,
) -> HandlerResult<Vec<HandlerResult<Stored>>> {
    let items: Vec<&Prepared> = batch.iter().map(|(p, _)| p).collect();
    let mut tx = app.store.begin_write().await?;
    let stored = store_batch_in(&mut tx, app, &items, now).await?;
    tx.commit().await?;
    Ok(stored)
}

/// What became of one submission of a batch.
enum Slot {
    New,
    /// Seen in an earlier batch: the request that delivery created.
    Replay(Option<i64>),
    /// The same delivery as the submission at this index of the batch.
    SameAs(usize),
}

/// Stores `items` inside `tx`: requests that go to approvers in bulk, the others (approved by
/// policy, or from identities) one after the other; replays store nothing. The result is in
/// the order of `items`.
async fn store_batch_in(
    tx: &mut WriteTx,
    app: &App,
    items: &[&Prepared],
    now: DateTime<Utc>,
) -> HandlerResult<Vec<HandlerResult<Stored>>> {
    let keys: Vec<&str> = items
        .iter()
        .filter_map(|p| p.delivery.as_ref().map(|d| d.key.as_str()))
        .collect();
    // The pending cap, for the submissions that would create a request (replays do not): the
    // bulk path skips `store`'s own check, so the whole batch is checked here. Its counts, the
    // deliveries seen and the audit chain's head are read together, under the write lock:
    // nobody records a delivery or a request between this read and the inserts below.
    let requesters = pending_cap_requesters(items);
    let batch::BatchReads {
        seen,
        pending,
        head,
    } = batch::read(tx, &keys, &requesters).await?;
    let mut first: HashMap<&str, usize> = HashMap::new();
    let slots: Vec<Slot> = items
        .iter()
        .enumerate()
        .map(|(i, p)| match &p.delivery {
            None => Slot::New,
            Some(d) => match seen.get(&d.key) {
                Some(created) => Slot::Replay(*created),
                None => match first.get(d.key.as_str()) {
                    Some(j) => Slot::SameAs(*j),
                    None => {
                        first.insert(d.key.as_str(), i);
                        Slot::New
                    }
                },
            },
        })
        .collect();
    let fresh: Vec<usize> = (0..items.len())
        .filter(|i| matches!(slots[*i], Slot::New))
        .collect();
    let fresh_items: Vec<&Prepared> = fresh.iter().map(|i| items[*i]).collect();
    let mut over = vec![false; items.len()];
    for (i, is_over) in fresh
        .iter()
        .zip(over_pending_cap(app, &fresh_items, pending))
    {
        over[*i] = is_over;
    }
    let new = |i: usize| matches!(slots[i], Slot::New) && !over[i];
    let bulk: Vec<&Prepared> = (0..items.len())
        .filter(|i| new(*i) && is_bulk(items[*i]))
        .map(|i| items[i])
        .collect();
    let mut bulk_stored = store_for_approval(tx, &app.policy.audit_channel, &bulk, head, now)
        .await?
        .into_iter();
    let mut out: Vec<HandlerResult<Stored>> = Vec::with_capacity(items.len());
    let mut claimed = Vec::new();
    for (i, prepared) in items.iter().enumerate() {
        let result = match &slots[i] {
            Slot::New if over[i] => Err(pending_refusal(app, &prepared.requester)),
            Slot::New => {
                let request = if is_bulk(prepared) {
                    bulk_stored.next().ok_or_else(|| {
                        HandlerError::Internal(anyhow::anyhow!("a bulk submission went missing"))
                    })?
                } else {
                    match store(tx, app, prepared, now).await {
                        Ok(request) => request,
                        // Refused before it wrote anything: the transaction goes on.
                        Err(refused @ HandlerError::Limited { .. }) => {
                            out.push(Err(refused));
                            continue;
                        }
                        Err(err) => return Err(err),
                    }
                };
                if let Some(d) = &prepared.delivery {
                    claimed.push((d.key.as_str(), d.expires_at, request.id));
                }
                Ok(Stored {
                    request,
                    replay: false,
                })
            }
            Slot::SameAs(j) => match &out[*j] {
                Ok(stored) => Ok(Stored {
                    request: stored.request.clone(),
                    replay: true,
                }),
                Err(_) => Err(HandlerError::user("jit already received this command.")),
            },
            Slot::Replay(Some(id)) => reload(tx, RequestId(*id)).await.map(|request| Stored {
                request,
                replay: true,
            }),
            Slot::Replay(None) => Err(HandlerError::user("jit already received this command.")),
        };
        out.push(result);
    }
    deliveries::claim_many(tx, &claimed).await?;
    Ok(out)
}

fn is_bulk(p: &Prepared) -> bool {
    !p.auto && matches!(p.requester, crate::domain::policy::Requester::User(_))
}
