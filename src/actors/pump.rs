//! The link pump used by the stable-session actors: two tokio tasks that move whole link
//! messages between a [`Link`] and bounded channels, so the actors are not generic over the
//! link type and never hold a link half across an `.await`.

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::links::{Link, LinkError, LinkRx, LinkTx, Permit, WriteSlot};
use crate::stable::StableError;

/// Messages buffered in each direction between an actor and its link.
pub(crate) const PUMP_QUEUE: usize = 64;

/// The actor's end of a link: frames to write, messages read (or the error that ended the
/// link). Dropping it aborts both tasks, which drops the link (the peer sees it end).
pub(crate) struct Pump {
    pub(crate) out: mpsc::Sender<Bytes>,
    pub(crate) incoming: Option<mpsc::Receiver<Result<Bytes, StableError>>>,
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

/// Splits `link` and starts its two pump tasks on the current tokio runtime.
pub(crate) fn spawn_pump<L: Link>(link: L) -> Pump {
    let (mut tx, mut rx) = link.split();
    let (out, mut out_rx) = mpsc::channel::<Bytes>(PUMP_QUEUE);
    let (in_tx, incoming) = mpsc::channel(PUMP_QUEUE);
    let err_tx = in_tx.clone();
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
                let _ = err_tx.send(Err(e.into())).await;
                return;
            }
        }
        let _ = tx.close().await;
    });
    let reader = tokio::spawn(async move {
        loop {
            let item = match rx.recv().await {
                Ok(Some(msg)) => Ok(msg),
                Ok(None) => Err(StableError::Link(LinkError::Closed)),
                Err(e) => Err(e.into()),
            };
            let end = item.is_err();
            if in_tx.send(item).await.is_err() || end {
                return;
            }
        }
    });
    Pump {
        out,
        incoming: Some(incoming),
        tasks: vec![writer.abort_handle(), reader.abort_handle()],
    }
}
