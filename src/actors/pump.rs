//! The link pump used by the stable-session actors: the link's receiving half becomes a
//! stream the actor polls itself (no task, no channel per received message), and its sending
//! half lives in a small tokio task fed through a bounded channel, so the actors are not
//! generic over the link type and never hold a link half across an `.await`.

use std::pin::Pin;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use crate::links::{Link, LinkError, LinkTx, Permit, WriteSlot};
use crate::stable::driver::rx_stream;
use crate::stable::StableError;

/// Messages buffered between an actor and its link's writer task.
pub(crate) const PUMP_QUEUE: usize = 64;

/// What the actor reads: every link message in order, or the error that ended the link
/// (a read error, the peer's close, or a write error reported by the writer task). The
/// stream never ends by itself; errors repeat.
pub(crate) type Incoming = Pin<Box<dyn Stream<Item = Result<Bytes, StableError>> + Send>>;

/// The actor's end of a link: frames to write, messages read. Dropping it aborts the
/// writer task and drops the link (the peer sees it end).
pub(crate) struct Pump {
    pub(crate) out: mpsc::Sender<Bytes>,
    pub(crate) incoming: Option<Incoming>,
    tasks: Vec<AbortHandle>,
}

impl Pump {
    /// Lets the writer flush what was queued and close the link, instead of aborting it.
    pub(crate) fn close_gracefully(mut self) {
        self.tasks.clear();
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Splits `link` and starts its writer task on the current tokio runtime.
pub(crate) fn spawn_pump<L: Link>(link: L) -> Pump {
    let (mut tx, rx) = link.split();
    let (out, mut out_rx) = mpsc::channel::<Bytes>(PUMP_QUEUE);
    let (err_tx, err_rx) = oneshot::channel::<StableError>();
    let writer = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            let result = async {
                let permit = tx.reserve().await?;
                let mut slot = permit.alloc(frame.len())?;
                slot.as_mut_slice().copy_from_slice(&frame);
                slot.commit();
                Ok::<_, LinkError>(())
            }
            .await;
            if let Err(e) = result {
                let _ = err_tx.send(e.into());
                return;
            }
        }
        let _ = tx.close().await;
    });
    let reads = rx_stream(rx).map(|r| r.map_err(StableError::from));
    // A write error, if the writer reports one (a writer that ends cleanly reports none).
    let write_error = futures::stream::once(err_rx)
        .filter_map(|r| std::future::ready(r.ok()))
        .map(Err);
    Pump {
        out,
        incoming: Some(Box::pin(futures::stream::select(reads, write_error))),
        tasks: vec![writer.abort_handle()],
    }
}
