//! [`LinkWriter`]: the actor that owns a link's sending half.

use std::fmt;
use std::marker::PhantomData;

use actix::prelude::*;
use futures::FutureExt;
use serde::Serialize;

use super::events::{DownReason, LinkDown, LinkEvent, Side};
use super::{emit, ActorError, LinkId, LinkOptions, WaitResponse};
use crate::codec::{self, Codec, CodecError, Postcard};
use crate::links::{AnyTx, LinkError, LinkTx};

/// Sends one message on the link (handled by [`LinkWriter`]).
///
/// The reply is `Ok(())` once the message is **committed** to the link (it will be written
/// before anything sent later, unless the link fails), or a [`WriteError`] that hands the
/// message back.
///
/// Refer to it as `actors::Send`: importing it by name (or with a glob) shadows the
/// standard `Send` trait in that module.
#[derive(Debug)]
pub struct Send<M>(pub M);

impl<M: 'static> Message for Send<M> {
    type Result = Result<(), WriteError<M>>;
}

/// Flushes everything committed, closes the sending direction, then stops the writer
/// (handled by [`LinkWriter`]). The peer receives every message sent before the `Close`,
/// then a clean end.
///
/// The reply is `Ok(())` when the flush and close succeeded, or the link's error.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<(), ActorError>")]
pub struct Close;

/// A [`Send`] that was not committed: the message is handed back with the reason.
pub struct WriteError<M> {
    /// The message, not sent.
    pub message: M,
    /// Why it was not sent.
    pub error: ActorError,
}

impl<M> WriteError<M> {
    /// The message that was not sent.
    pub fn into_message(self) -> M {
        self.message
    }

    /// `true` if the writer has stopped because of this error (or had stopped before):
    /// later sends will fail too. `false` for per-message errors (too large, not
    /// encodable), after which the writer keeps working.
    pub fn is_fatal(&self) -> bool {
        is_fatal(&self.error)
    }
}

impl<M> fmt::Debug for WriteError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteError")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<M> fmt::Display for WriteError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "message not sent: {}", self.error)
    }
}

impl<M> std::error::Error for WriteError<M> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Sends several messages, in order, with one mailbox round trip (handled by
/// [`LinkWriter`]): much cheaper per message than one [`Send`] each when producing in
/// bulk. The writer waits for room on the link between messages as needed, with its
/// mailbox paused, exactly as for [`Send`].
///
/// The reply is `Ok(())` once every message is committed, or a [`BatchError`]: the
/// messages before the failing one were committed, the failing one and those after it are
/// handed back.
#[derive(Debug)]
pub struct SendAll<M>(pub Vec<M>);

impl<M: 'static> Message for SendAll<M> {
    type Result = Result<(), BatchError<M>>;
}

/// A [`SendAll`] that stopped early.
pub struct BatchError<M> {
    /// How many messages, from the start of the batch, were committed.
    pub committed: usize,
    /// The message that failed, followed by the ones not attempted, in order.
    pub unsent: Vec<M>,
    /// Why the first of `unsent` was not sent.
    pub error: ActorError,
}

impl<M> BatchError<M> {
    /// `true` if the writer has stopped (see [`WriteError::is_fatal`]).
    pub fn is_fatal(&self) -> bool {
        is_fatal(&self.error)
    }
}

impl<M> fmt::Debug for BatchError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchError")
            .field("committed", &self.committed)
            .field("unsent", &self.unsent.len())
            .field("error", &self.error)
            .finish()
    }
}

impl<M> fmt::Display for BatchError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "batch stopped after {} messages ({} not sent): {}",
            self.committed,
            self.unsent.len(),
            self.error
        )
    }
}

impl<M> std::error::Error for BatchError<M> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

fn is_fatal(error: &ActorError) -> bool {
    !matches!(
        error,
        ActorError::Codec(_) | ActorError::Link(LinkError::TooLarge { .. })
    )
}

/// The actor that owns a link's sending half ([`LinkTx`]; an [`AnyTx`] unless you build it
/// yourself) and writes typed messages `M` with codec `C`.
///
/// # Messages
///
/// * [`Send<M>`] → `Result<(), WriteError<M>>`: encodes the message **straight into the
///   link's reserved slot** (no intermediate buffer) and commits it. `Ok` means committed,
///   not delivered: a later link failure can still lose it (the stable session layer
///   exists for that).
/// * [`SendAll<M>`] → `Result<(), BatchError<M>>`: the same for a batch, in order, with
///   one mailbox round trip.
/// * [`Close`] → `Result<(), ActorError>`: flushes, closes, stops.
///
/// # Backpressure
///
/// The writer first tries to reserve room on the link without waiting. If the link is full
/// it waits for room **with the mailbox paused** (`ctx.wait`), so no further message is
/// taken while `reserve` is pending. The mailbox is small
/// ([`ActorConfig::writer_mailbox`](super::ActorConfig::writer_mailbox), default 16), so a
/// producer using `addr.send(..).await` waits, and `addr.try_send(..)` fails with
/// `SendError::Full` handing the message back. Memory held by a writer is thus bounded by
/// the mailbox plus the link's own bound (for stream links about
/// `2 × (write_buffer + max_frame_len)`).
///
/// `do_send` bypasses actix's mailbox capacity: do not use it on a path that must be
/// bounded. Each pending `send()` future also holds one message (actix 0.13 enqueues it
/// even when the mailbox is full), so the bound is per producer, not global.
///
/// # Lifecycle and what stops it
///
/// Started by [`spawn_link`](super::spawn_link), [`connect`](super::connect) or
/// [`Incoming::accept`](super::Incoming::accept) (or [`LinkWriter::new`] +
/// [`LinkWriter::spawn`]). It stops, sending [`LinkEvent::Down`] with
/// [`Side::Writer`], when:
///
/// * a [`Close`] completed ([`DownReason::Closed`], or `Error` if the flush failed);
/// * the link failed at `reserve` ([`DownReason::Error`]); that `Send` gets the error;
/// * every `Addr` was dropped, or the system stops ([`DownReason::Stopped`]). The link's
///   sending half is then dropped, which for stream links still writes what was committed
///   and shuts the direction down, in the background and without any report.
///
/// A message too large for the link, or one that fails to encode, gets its error and the
/// writer keeps going ([`WriteError::is_fatal`] is `false`).
///
/// # Not guaranteed
///
/// * Delivery: `Ok` means committed to the link. If the link later fails, messages
///   committed after its last completed write may be lost without a per-message report.
/// * Messages still queued in the mailbox when the writer stops are dropped; their senders
///   get `MailboxError::Closed` and do **not** get their message back.
/// * The writer does not restart itself; it is not `Supervised`.
pub struct LinkWriter<M, C = Postcard, T = AnyTx> {
    tx: Option<Box<T>>,
    codec: C,
    link: LinkId,
    events: Option<Recipient<LinkEvent>>,
    mailbox: usize,
    down: Option<DownReason>,
    _msg: PhantomData<fn(M)>,
}

impl<M, C, T> LinkWriter<M, C, T>
where
    M: Serialize + std::marker::Send + 'static,
    C: Codec,
    T: LinkTx,
{
    /// A writer for `tx`, identified as `link` in its events. Start it with
    /// [`spawn`](Self::spawn) (or `Actor::start`).
    pub fn new(tx: T, link: LinkId, options: &LinkOptions) -> Self {
        LinkWriter {
            tx: Some(Box::new(tx)),
            codec: C::default(),
            link,
            events: options.events.clone(),
            mailbox: options.config.writer_mailbox.max(1),
            down: None,
            _msg: PhantomData,
        }
    }

    /// Starts the writer on the current Arbiter with its mailbox capacity already set (with
    /// `Actor::start` the capacity is set in `started`, a moment later).
    pub fn spawn(self) -> Addr<Self> {
        let mut ctx = Context::new();
        ctx.set_mailbox_capacity(self.mailbox);
        ctx.run(self)
    }

    /// Outcome of an encode-and-commit; a link error here stops the writer.
    fn after_write(
        &mut self,
        written: Result<(), CodecError>,
        message: M,
        ctx: &mut Context<Self>,
    ) -> Result<(), WriteError<M>> {
        match written {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = WriteError {
                    message,
                    error: e.into(),
                };
                if err.is_fatal() {
                    self.fail(err.error.clone(), ctx);
                }
                Err(err)
            }
        }
    }

    fn fail(&mut self, error: ActorError, ctx: &mut Context<Self>) {
        self.tx = None;
        self.down.get_or_insert(DownReason::Error(error));
        ctx.stop();
    }
}

impl<M, C, T> Actor for LinkWriter<M, C, T>
where
    M: Serialize + std::marker::Send + 'static,
    C: Codec,
    T: LinkTx,
{
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.mailbox);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.tx = None;
        let reason = self.down.take().unwrap_or(DownReason::Stopped);
        emit(
            &self.events,
            LinkEvent::Down(LinkDown {
                link: self.link,
                side: Side::Writer,
                reason,
            }),
        );
    }
}

impl<M, C, T> Handler<Send<M>> for LinkWriter<M, C, T>
where
    M: Serialize + std::marker::Send + 'static,
    C: Codec,
    T: LinkTx,
{
    type Result = WaitResponse<Self, Result<(), WriteError<M>>>;

    fn handle(&mut self, Send(message): Send<M>, ctx: &mut Context<Self>) -> Self::Result {
        // Fast path: room is available now, encode and commit without leaving the handler.
        let fast = match self.tx.as_deref_mut() {
            None => {
                return WaitResponse::ready(Err(WriteError {
                    message,
                    error: ActorError::Closed,
                }))
            }
            Some(tx) => match tx.reserve().now_or_never() {
                Some(Ok(permit)) => Some(Ok(codec::write_permit(permit, &self.codec, &message))),
                Some(Err(e)) => Some(Err(e)),
                None => None,
            },
        };
        match fast {
            Some(Ok(written)) => WaitResponse::ready(self.after_write(written, message, ctx)),
            Some(Err(e)) => {
                let error = ActorError::Link(e);
                self.fail(error.clone(), ctx);
                WaitResponse::ready(Err(WriteError { message, error }))
            }
            None => {
                // The link is full: wait for room with the mailbox paused.
                let Some(mut tx) = self.tx.take() else {
                    return WaitResponse::ready(Err(WriteError {
                        message,
                        error: ActorError::Closed,
                    }));
                };
                let codec = self.codec.clone();
                let wait = async move {
                    let outcome = match tx.reserve().await {
                        Ok(permit) => Ok(codec::write_permit(permit, &codec, &message)),
                        Err(e) => Err(e),
                    };
                    (tx, outcome, message)
                };
                WaitResponse::wait(
                    wait.into_actor(self)
                        .map(|(tx, outcome, message), act, ctx| match outcome {
                            Ok(written) => {
                                act.tx = Some(tx);
                                act.after_write(written, message, ctx)
                            }
                            Err(e) => {
                                let error = ActorError::Link(e);
                                act.fail(error.clone(), ctx);
                                Err(WriteError { message, error })
                            }
                        }),
                )
            }
        }
    }
}

impl<M, C, T> Handler<SendAll<M>> for LinkWriter<M, C, T>
where
    M: Serialize + std::marker::Send + 'static,
    C: Codec,
    T: LinkTx,
{
    type Result = WaitResponse<Self, Result<(), BatchError<M>>>;

    fn handle(&mut self, SendAll(messages): SendAll<M>, _: &mut Context<Self>) -> Self::Result {
        let Some(mut tx) = self.tx.take() else {
            return WaitResponse::ready(Err(BatchError {
                committed: 0,
                unsent: messages,
                error: ActorError::Closed,
            }));
        };
        let codec = self.codec.clone();
        // One future for the whole batch: `reserve` resolves at once while there is room,
        // so the batch only yields when the link is full.
        let batch = async move {
            let mut rest = messages.into_iter();
            let mut committed = 0;
            let mut failure = None;
            for message in rest.by_ref() {
                let written = match tx.reserve().await {
                    Ok(permit) => codec::write_permit(permit, &codec, &message),
                    Err(e) => Err(CodecError::Link(e)),
                };
                match written {
                    Ok(()) => committed += 1,
                    Err(e) => {
                        failure = Some((ActorError::from(e), message));
                        break;
                    }
                }
            }
            let failure = failure.map(|(error, message)| {
                let mut unsent = Vec::with_capacity(1 + rest.len());
                unsent.push(message);
                unsent.extend(rest);
                BatchError {
                    committed,
                    unsent,
                    error,
                }
            });
            (tx, failure)
        };
        WaitResponse::wait(
            batch
                .into_actor(self)
                .map(|(tx, failure), act, ctx| match failure {
                    None => {
                        act.tx = Some(tx);
                        Ok(())
                    }
                    Some(err) => {
                        if err.is_fatal() {
                            drop(tx);
                            act.fail(err.error.clone(), ctx);
                        } else {
                            act.tx = Some(tx);
                        }
                        Err(err)
                    }
                }),
        )
    }
}

impl<M, C, T> Handler<Close> for LinkWriter<M, C, T>
where
    M: Serialize + std::marker::Send + 'static,
    C: Codec,
    T: LinkTx,
{
    type Result = WaitResponse<Self, Result<(), ActorError>>;

    fn handle(&mut self, _: Close, _: &mut Context<Self>) -> Self::Result {
        let Some(tx) = self.tx.take() else {
            return WaitResponse::ready(Err(ActorError::Closed));
        };
        WaitResponse::wait(async move { (*tx).close().await }.into_actor(self).map(
            |res, act, ctx| {
                act.down = Some(match &res {
                    Ok(()) => DownReason::Closed,
                    Err(e) => DownReason::Error(ActorError::Link(e.clone())),
                });
                ctx.stop();
                res.map_err(ActorError::Link)
            },
        ))
    }
}
