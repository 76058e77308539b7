//! Invocation records, written behind the response. A synchronous invocation's answer is
//! already with its client, so its record need not delay it: records go through a bounded
//! queue to one writer that inserts them in batches. Until written, a record is served from
//! memory, so reading an invocation right after it returned always finds it.
//!
//! Overload policy: when the queue is full, `record` waits for room (the request that made the
//! record is held back), so nothing is dropped and memory stays bounded. A database that fails
//! keeps records pending and is retried with backoff; they are lost only if the process dies
//! before the database comes back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use genrt_functions::TenantId;
use sea_orm::DbErr;
use tokio::sync::{mpsc, Notify};
use uuid::Uuid;

use super::{InvocationRow, Store};

/// Records waiting to be written, at most.
const QUEUE: usize = 4096;
/// Records per insert.
const BATCH: usize = 256;

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<InvocationRow>,
    pending: Arc<Mutex<HashMap<Uuid, InvocationRow>>>,
    written: Arc<Notify>,
    store: Store,
}

impl Recorder {
    pub fn start(store: Store) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let recorder = Self {
            tx,
            pending: Arc::new(Mutex::new(HashMap::new())),
            written: Arc::new(Notify::new()),
            store,
        };
        let writer = tokio::spawn(recorder.clone().write(rx));
        (recorder, writer)
    }

    pub async fn record(&self, row: InvocationRow) {
        self.pending
            .lock()
            .expect("pending lock")
            .insert(row.id, row.clone());
        if let Err(err) = self.tx.send(row).await {
            // Shutting down: the writer is gone, so write this one directly.
            let row = err.0;
            if let Err(err) = self.store.insert_invocations(vec![row.clone()]).await {
                tracing::warn!(invocation = %row.id, error = %err, "invocation record lost at shutdown");
            }
            self.pending.lock().expect("pending lock").remove(&row.id);
        }
    }

    /// A record, from memory while it waits to be written, else from the database.
    pub async fn get(&self, tenant: &TenantId, id: Uuid) -> Result<Option<InvocationRow>, DbErr> {
        let pending = self.pending.lock().expect("pending lock").get(&id).cloned();
        match pending {
            Some(row) if row.tenant_id == tenant.as_str() => Ok(Some(row)),
            Some(_) => Ok(None),
            None => self.store.invocation(tenant, id).await,
        }
    }

    /// Waits until every record handed over so far is in the database, or `limit` passed;
    /// returns how many are still unwritten.
    pub async fn flush(&self, limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let written = self.written.notified();
            let left = self.pending.lock().expect("pending lock").len();
            if left == 0 || tokio::time::Instant::now() >= deadline {
                return left;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), written).await;
        }
    }

    async fn write(self, mut rx: mpsc::Receiver<InvocationRow>) {
        let mut batch = Vec::with_capacity(BATCH);
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(row) => batch.push(row),
                    Err(_) => break,
                }
            }
            // Building the INSERTs of a full batch takes milliseconds of CPU: on an async
            // worker it would hold up every request and actor message scheduled behind it,
            // so it runs on the blocking pool.
            let store = self.store.clone();
            let Ok((rows, insert)) = tokio::task::spawn_blocking(move || {
                let insert = store.invocations_insert(&batch, false);
                (batch, insert)
            })
            .await
            else {
                // Building the statement panicked (a bug): the writer stops, as it did when it
                // built the statement itself; the rows stay pending, served by `get`.
                tracing::error!(
                    records = self.pending.lock().expect("pending lock").len(),
                    "building the invocation records' INSERT failed; the record writer stops"
                );
                return;
            };
            batch = rows;
            let mut backoff = Duration::from_millis(50);
            let mut insert = Some(insert);
            loop {
                // A retry (the database failed) builds the statements again, here: rare, and
                // it spares the common path a copy of every value. It skips rows already
                // stored: the failure may have come after the commit.
                let inserts = insert
                    .take()
                    .unwrap_or_else(|| self.store.invocations_insert(&batch, true));
                match self.store.execute_insert(inserts).await {
                    Ok(()) => break,
                    Err(err) => {
                        tracing::warn!(error = %err, records = batch.len(), "writing invocation records failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
            {
                let mut pending = self.pending.lock().expect("pending lock");
                for row in batch.drain(..) {
                    pending.remove(&row.id);
                }
            }
            self.written.notify_waiters();
        }
    }
}
