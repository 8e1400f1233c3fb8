//! [`LinkReader`]: the actor that owns a link's receiving half.

use std::marker::PhantomData;

use actix::prelude::*;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::events::{DownReason, FrameRejected, LinkDown, LinkEvent, Side};
use super::{emit, offer, ActorError, Delivery, LinkId, LinkOptions, Shutdown};
use crate::codec::{Codec, Postcard};
use crate::links::{AnyRx, LinkError, LinkRx};

/// A message received on a link, delivered by [`LinkReader`] to its recipient.
#[derive(Debug)]
pub struct Received<M> {
    /// The link it came from.
    pub link: LinkId,
    /// The decoded message.
    pub msg: M,
}

impl<M: 'static> Message for Received<M> {
    type Result = ();
}

/// The actor that owns a link's receiving half ([`LinkRx`]; an [`AnyRx`] unless you build
/// it yourself), decodes each message as `M` with codec `C`, and delivers it as
/// [`Received<M>`] to a [`Recipient`].
///
/// # Messages
///
/// * Sends [`Received<M>`] to its recipient, in link order.
/// * Sends [`LinkEvent::FrameRejected`] and [`LinkEvent::Down`] to the event subscriber.
/// * Handles [`Shutdown`]: stops reading and drops the receiving half (after a delivery
///   the reader is waiting on, if any).
///
/// # Backpressure
///
/// The link is read through `ctx.add_stream`, one `recv` at a time (no read-ahead queue).
/// Each message is offered to the recipient with `try_send`, which respects the recipient's
/// mailbox capacity. When that mailbox is full, the reader sends the message with `send`
/// and **waits for the recipient to handle it** (`ctx.wait`), which pauses the stream, so
/// the reader stops reading the link and the peer's writes back up through the socket
/// buffers to its `reserve`. A slow application therefore holds at most its mailbox
/// capacity plus one message per reader; nothing buffers without bound. (Waiting for
/// every message's reply instead would cost a round trip per message; `do_send` would not
/// be bounded at all.)
///
/// # Lifecycle and what stops it
///
/// Starts reading when started. It stops, sending exactly one [`LinkEvent::Down`] with
/// [`Side::Reader`], when:
///
/// * the peer closed the link cleanly after its last message ([`DownReason::PeerClosed`]);
/// * the link failed, e.g. an I/O error or a frame cut short ([`DownReason::Error`]);
/// * a frame was rejected — a length prefix above the maximum, or bytes that do not
///   decode as `M` — after a [`LinkEvent::FrameRejected`] ([`DownReason::Error`]). Bad
///   input never panics and never allocates more than the link's maximum frame length;
/// * the recipient stopped ([`DownReason::RecipientGone`]);
/// * it got [`Shutdown`], or the system stops ([`DownReason::Stopped`]).
///
/// Dropping every `Addr` of the reader does **not** stop it: it runs while the link does.
///
/// # Not guaranteed
///
/// * A message already handed to the recipient's mailbox when the reader stops is still
///   delivered; one decoded while the recipient was gone is lost.
/// * The reader does not stop the link's writer: a half-closed link (peer EOF) can still
///   be written to.
pub struct LinkReader<M: std::marker::Send + 'static, C = Postcard, R = AnyRx> {
    rx: Option<Box<R>>,
    codec: C,
    link: LinkId,
    recipient: Recipient<Received<M>>,
    events: Option<Recipient<LinkEvent>>,
    down: Option<DownReason>,
    _msg: PhantomData<fn() -> M>,
}

impl<M, C, R> LinkReader<M, C, R>
where
    M: DeserializeOwned + std::marker::Send + 'static,
    C: Codec,
    R: LinkRx,
{
    /// A reader for `rx`, identified as `link` in its messages and events, delivering to
    /// `recipient`. Start it with `Actor::start`.
    pub fn new(
        rx: R,
        link: LinkId,
        recipient: Recipient<Received<M>>,
        options: &LinkOptions,
    ) -> Self {
        LinkReader {
            rx: Some(Box::new(rx)),
            codec: C::default(),
            link,
            recipient,
            events: options.events.clone(),
            down: None,
            _msg: PhantomData,
        }
    }

    fn stop_with(&mut self, reason: DownReason, ctx: &mut Context<Self>) {
        self.down.get_or_insert(reason);
        ctx.stop();
    }

    fn reject(&mut self, reason: ActorError, ctx: &mut Context<Self>) {
        emit(
            &self.events,
            LinkEvent::FrameRejected(FrameRejected {
                link: self.link,
                reason: reason.clone(),
            }),
        );
        self.stop_with(DownReason::Error(reason), ctx);
    }
}

/// The link's receiving half as a stream: one `recv` per item, ending after a clean close
/// or after the first error (which is yielded).
fn recv_stream<R: LinkRx>(rx: Box<R>) -> impl Stream<Item = Result<Bytes, LinkError>> {
    futures::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Ok(Some(bytes)) => Some((Ok(bytes), Some(rx))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    })
}

impl<M, C, R> Actor for LinkReader<M, C, R>
where
    M: DeserializeOwned + std::marker::Send + 'static,
    C: Codec,
    R: LinkRx,
{
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(rx) = self.rx.take() {
            ctx.add_stream(recv_stream(rx));
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        let reason = self.down.take().unwrap_or(DownReason::Stopped);
        emit(
            &self.events,
            LinkEvent::Down(LinkDown {
                link: self.link,
                side: Side::Reader,
                reason,
            }),
        );
    }
}

impl<M, C, R> StreamHandler<Result<Bytes, LinkError>> for LinkReader<M, C, R>
where
    M: DeserializeOwned + std::marker::Send + 'static,
    C: Codec,
    R: LinkRx,
{
    fn handle(&mut self, item: Result<Bytes, LinkError>, ctx: &mut Context<Self>) {
        match item {
            Ok(bytes) => match self.codec.decode::<M>(&bytes) {
                Ok(msg) => {
                    let msg = Received {
                        link: self.link,
                        msg,
                    };
                    match offer(&self.recipient, msg) {
                        Delivery::Done => {}
                        Delivery::Wait(request) => {
                            ctx.wait(request.into_actor(self).map(|res, act, ctx| {
                                if res.is_err() {
                                    act.stop_with(DownReason::RecipientGone, ctx);
                                }
                            }));
                        }
                        Delivery::Gone => self.stop_with(DownReason::RecipientGone, ctx),
                    }
                }
                Err(e) => self.reject(e.into(), ctx),
            },
            Err(e @ LinkError::FrameTooLarge { .. }) => self.reject(ActorError::Link(e), ctx),
            Err(e) => self.stop_with(DownReason::Error(ActorError::Link(e)), ctx),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        self.stop_with(DownReason::PeerClosed, ctx);
    }
}

impl<M, C, R> Handler<Shutdown> for LinkReader<M, C, R>
where
    M: DeserializeOwned + std::marker::Send + 'static,
    C: Codec,
    R: LinkRx,
{
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) {
        self.stop_with(DownReason::Stopped, ctx);
    }
}
