//! [`LinkSource`]: a factory of fresh links, used by whatever reconnects (the stable session
//! client, the `StableSession` actor).
//!
//! * An [`Endpoint`] is a source: every `connect` dials it again.
//! * [`FnSource`] turns any closure returning a future of a link into a source.
//! * [`FaultySource`](super::fault::FaultySource) wraps a source to inject faults into every
//!   link it makes.

use std::future::Future;
use std::io;
use std::sync::Arc;

use super::{AnyLink, Link, LinkError};
use crate::endpoint::{self, Endpoint, EndpointError};

/// A factory of fresh links to the same peer.
pub trait LinkSource: Send + 'static {
    /// The links it makes.
    type Link: Link;

    /// Makes a new link (dials, opens, ...). Errors are reported as [`LinkError`]s.
    fn connect(&mut self) -> impl Future<Output = Result<Self::Link, LinkError>> + Send;
}

impl From<EndpointError> for LinkError {
    fn from(e: EndpointError) -> Self {
        match e {
            EndpointError::Io { source, .. } => LinkError::Io(source),
            other => LinkError::Io(Arc::new(io::Error::new(
                io::ErrorKind::InvalidInput,
                other.to_string(),
            ))),
        }
    }
}

impl LinkSource for Endpoint {
    type Link = AnyLink;

    async fn connect(&mut self) -> Result<AnyLink, LinkError> {
        Ok(endpoint::connect(self).await?)
    }
}

/// A [`LinkSource`] from a closure: `FnSource(|| async { ... Ok(link) })`.
#[derive(Debug, Clone)]
pub struct FnSource<F>(pub F);

impl<F, Fut, L> LinkSource for FnSource<F>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<L, LinkError>> + Send,
    L: Link,
{
    type Link = L;

    fn connect(&mut self) -> impl Future<Output = Result<L, LinkError>> + Send {
        (self.0)()
    }
}
