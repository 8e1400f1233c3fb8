//! [`Acceptor`]: the actor that listens on an endpoint and offers each connection to the
//! application.

use std::fmt;
use std::time::Duration;

use actix::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{
    offer, spawn_link_as, ActorConfig, ActorError, LinkActors, LinkId, LinkOptions, LinkReader,
    LinkWriter, Received, Shutdown,
};
use crate::codec::{Codec, Postcard};
use crate::endpoint::{self, Endpoint, EndpointError, Listener};
use crate::links::AnyLink;

/// A new connection, offered by an [`Acceptor`] to the application.
///
/// Accept it with [`accept`](Incoming::accept) / [`accept_with`](Incoming::accept_with)
/// (which start the link's actors on the current Arbiter), take the raw link with
/// [`into_link`](Incoming::into_link), or refuse it with [`refuse`](Incoming::refuse) or by
/// dropping it, which closes the connection.
pub struct Incoming {
    link: AnyLink,
    id: LinkId,
    local: Endpoint,
}

impl Message for Incoming {
    type Result = ();
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("id", &self.id)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Incoming {
    /// A link ready to be handed to the application (the acceptor and the SHM hub).
    pub(crate) fn new(link: AnyLink, id: LinkId, local: Endpoint) -> Incoming {
        Incoming { link, id, local }
    }

    /// The identity the link will have once accepted.
    pub fn id(&self) -> LinkId {
        self.id
    }

    /// The endpoint the connection was accepted on.
    pub fn local_endpoint(&self) -> &Endpoint {
        &self.local
    }

    /// Accepts with the default codec and options: starts a [`LinkWriter`] for `Out`
    /// messages (returned) and a [`LinkReader`] delivering `In` messages to `recipient`.
    /// Must be called inside an actix system (typically in the `Incoming` handler).
    pub fn accept<Out, In>(self, recipient: Recipient<Received<In>>) -> Addr<LinkWriter<Out>>
    where
        Out: Serialize + std::marker::Send + 'static,
        In: DeserializeOwned + std::marker::Send + 'static,
    {
        self.accept_with::<Out, In, Postcard>(recipient, LinkOptions::default())
            .writer
    }

    /// Accepts with codec `C` and `options` (event subscriber, configuration).
    pub fn accept_with<Out, In, C>(
        self,
        recipient: Recipient<Received<In>>,
        options: LinkOptions,
    ) -> LinkActors<LinkWriter<Out, C>, LinkReader<In, C>>
    where
        Out: Serialize + std::marker::Send + 'static,
        In: DeserializeOwned + std::marker::Send + 'static,
        C: Codec,
    {
        spawn_link_as(self.link, self.id, Some(self.local), recipient, options)
    }

    /// The raw link, for applications that drive it themselves.
    pub fn into_link(self) -> AnyLink {
        self.link
    }

    /// Refuses the connection: the link is dropped and the peer sees it closed.
    pub fn refuse(self) {
        drop(self);
    }
}

/// Accepting a connection failed; the [`Acceptor`] keeps listening (after
/// [`ActorConfig::accept_retry_delay`]).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct AcceptError {
    /// What failed.
    pub error: EndpointError,
}

/// The actor that listens on an [`Endpoint`] and offers each new connection to the
/// application as an [`Incoming`].
///
/// # Messages
///
/// * Sends [`Incoming`] to its `incoming` recipient for each connection.
/// * Sends [`AcceptError`] to its `errors` recipient for each failed accept.
/// * Handles [`Shutdown`]: stops listening (the endpoint is unbound; for `unix://` the
///   socket file is removed).
///
/// # Backpressure
///
/// Connections are offered with `try_send`; when the application's mailbox is full the
/// acceptor waits for it to handle the connection before accepting the next one (further
/// connections wait in the operating system's backlog). Errors are delivered the same way.
///
/// # Lifecycle and what stops it
///
/// Bind first ([`endpoint::listen`], or [`Acceptor::listen`] which does both), so that
/// binding errors are returned to the caller. The acceptor then accepts until:
///
/// * it gets [`Shutdown`];
/// * its `incoming` or `errors` recipient has stopped (nobody to hand connections or
///   errors to);
/// * the system stops.
///
/// Dropping every `Addr` does **not** stop it. An accept error does not stop it either:
/// it is reported and accepting resumes after [`ActorConfig::accept_retry_delay`].
///
/// # Not guaranteed
///
/// * The acceptor does not limit the number of links; the application does, by refusing.
/// * An `Incoming` already in the application's mailbox when the acceptor stops is still
///   delivered and can still be accepted.
pub struct Acceptor {
    listener: Option<Listener>,
    local: Endpoint,
    incoming: Recipient<Incoming>,
    errors: Recipient<AcceptError>,
    retry_delay: Duration,
}

impl fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acceptor")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Acceptor {
    /// An acceptor for an already bound `listener`. Start it with `Actor::start`.
    pub fn new(
        listener: Listener,
        incoming: Recipient<Incoming>,
        errors: Recipient<AcceptError>,
        config: &ActorConfig,
    ) -> Self {
        Acceptor {
            local: listener.local_endpoint(),
            listener: Some(listener),
            incoming,
            errors,
            retry_delay: config.accept_retry_delay,
        }
    }

    /// Binds `endpoint` and starts an acceptor on it. Returns the acceptor and the endpoint
    /// actually bound (for `tcp://…:0`, with the chosen port). Binding errors are returned.
    pub async fn listen(
        endpoint: &Endpoint,
        incoming: Recipient<Incoming>,
        errors: Recipient<AcceptError>,
        config: &ActorConfig,
    ) -> Result<(Addr<Acceptor>, Endpoint), ActorError> {
        let listener = endpoint::listen(endpoint).await?;
        let acceptor = Acceptor::new(listener, incoming, errors, config);
        let local = acceptor.local.clone();
        Ok((acceptor.start(), local))
    }

    /// The endpoint this acceptor listens on.
    pub fn local_endpoint(&self) -> &Endpoint {
        &self.local
    }

    fn hand_over<T>(&mut self, msg: T, to: fn(&Self) -> &Recipient<T>, ctx: &mut Context<Self>)
    where
        T: Message<Result = ()> + std::marker::Send + 'static,
    {
        let delivery = offer(to(self), msg);
        super::wait_or_stop(self, delivery, ctx);
    }
}

/// Accepted links, one per item; after an error the next accept waits `retry_delay`.
fn accept_stream(
    listener: Listener,
    retry_delay: Duration,
) -> impl Stream<Item = Result<AnyLink, EndpointError>> {
    futures::stream::unfold((listener, false), move |(listener, failed)| async move {
        if failed {
            tokio::time::sleep(retry_delay).await;
        }
        let accepted = listener.accept().await;
        let failed = accepted.is_err();
        Some((accepted, (listener, failed)))
    })
}

impl Actor for Acceptor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if let Some(listener) = self.listener.take() {
            ctx.add_stream(accept_stream(listener, self.retry_delay));
        }
    }
}

impl StreamHandler<Result<AnyLink, EndpointError>> for Acceptor {
    fn handle(&mut self, item: Result<AnyLink, EndpointError>, ctx: &mut Context<Self>) {
        match item {
            Ok(link) => {
                let incoming = Incoming {
                    link,
                    id: LinkId::next(),
                    local: self.local.clone(),
                };
                self.hand_over(incoming, |a| &a.incoming, ctx);
            }
            Err(error) => self.hand_over(AcceptError { error }, |a| &a.errors, ctx),
        }
    }
}

impl Handler<Shutdown> for Acceptor {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
