//! Endpoint addresses (`tcp://host:port`, `unix:///path`, `inproc://name`) and the
//! `connect` / `listen` functions that turn them into links.
//!
//! ```
//! use actix_tether::endpoint::Endpoint;
//!
//! let ep: Endpoint = "tcp://127.0.0.1:7000".parse().unwrap();
//! assert_eq!(ep.to_string(), "tcp://127.0.0.1:7000");
//! assert_eq!(Endpoint::parse("inproc://jobs").unwrap(), Endpoint::Inproc("jobs".into()));
//! assert!(Endpoint::parse("tcp://127.0.0.1").is_err()); // no port
//! assert!(Endpoint::parse("inproc://").is_err()); // no name
//! assert!(Endpoint::parse("carrier-pigeon://home").is_err());
//! ```
//!
//! Accepted forms:
//!
//! * `tcp://host:port` — a host name or IP literal (IPv6 in brackets: `tcp://[::1]:80`) and
//!   a port from 0 to 65535.
//! * `unix:///absolute/path` or `unix://relative/path` — a Unix stream socket.
//! * `inproc://name` — an in-process endpoint of this process (see
//!   [`crate::links::inproc`] for the name rules: 1 to 256 bytes, no control characters, no
//!   `://`). [`connect`] to an unbound name fails at once with
//!   [`io::ErrorKind::NotFound`]; use [`inproc::connect_with`] to wait for it to be bound.
//!   Listening on a bound name fails with [`io::ErrorKind::AddrInUse`]; the name is unbound
//!   when the [`Listener`] is dropped.
//! * `shm:///path/to/hub.sock` (Linux) — a shared-memory hub's bootstrap socket.
//!   [`connect`] joins it as a guest ([`crate::shm::hub::ShmConnector`]) and returns
//!   [`AnyLink::Shm`]; [`listen`] binds a hub ([`crate::shm::hub::Hub`], default
//!   configuration) whose [`Listener::accept`] yields each joining guest's link (a full hub
//!   refuses with [`io::ErrorKind::ConnectionRefused`] at the guest). Departure events and
//!   spawning need the [`crate::shm::hub::Hub`] itself.
//!
//! Only schemes whose transport exists are accepted; every malformed input is an
//! [`EndpointError`] that names the input and what is wrong with it. Failures to connect,
//! listen or accept are [`EndpointError::Io`] with an [`io::Error`] whose
//! [kind](io::Error::kind) is the same for every transport (an `inproc://` error keeps its
//! [`InprocError`](inproc::InprocError) as the source).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use crate::links::inproc::{self, InprocAcceptor, InprocConfig};
use crate::links::stream::{StreamConfig, StreamLink};
use crate::links::AnyLink;
#[cfg(target_os = "linux")]
use crate::shm::hub::{Hub, HubConfig, HubError, ShmConnector};

const EXPECTED_SCHEMES: &str = "missing scheme (expected tcp://, unix://, inproc:// or shm://)";
const UNKNOWN_SCHEME: &str = "unknown scheme (expected tcp://, unix://, inproc:// or shm://)";

/// Errors of the endpoint layer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// The text is not a valid endpoint; `reason` says why.
    #[error("invalid endpoint {input:?}: {reason}")]
    Invalid {
        /// The text that was parsed.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Connecting, binding or accepting failed.
    #[error("{op} {endpoint} failed: {source}")]
    Io {
        /// What was attempted: "connect to", "listen on" or "accept on".
        op: &'static str,
        /// The endpoint it was attempted on.
        endpoint: Endpoint,
        /// The operating system's error.
        #[source]
        source: Arc<io::Error>,
    },
}

/// Where a link goes: a transport and its address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Endpoint {
    /// `tcp://host:port` — a host name or IP literal (IPv6 in brackets) and a port.
    Tcp {
        /// Host name or IP literal, without brackets.
        host: String,
        /// TCP port (0 to let the system choose, when listening).
        port: u16,
    },
    /// `unix:///absolute/path` or `unix://relative/path` — a Unix stream socket path.
    Unix(PathBuf),
    /// `inproc://name` — an in-process endpoint; the name without the scheme.
    Inproc(String),
    /// `shm://<socket path>`: a shared-memory hub (Linux). [`connect`] joins the hub
    /// listening at the path as a guest ([`ShmConnector`]); [`listen`] binds a hub
    /// ([`Hub`], default [`HubConfig`]) whose `accept` yields each guest's link.
    #[cfg(target_os = "linux")]
    Shm(PathBuf),
}

impl Endpoint {
    /// Parses an endpoint. See the [module docs](self) for the accepted forms.
    pub fn parse(input: &str) -> Result<Endpoint, EndpointError> {
        let invalid = |reason| EndpointError::Invalid {
            input: input.to_string(),
            reason,
        };
        let (scheme, rest) = input
            .split_once("://")
            .ok_or_else(|| invalid(EXPECTED_SCHEMES))?;
        if rest.chars().any(|c| c.is_control()) {
            return Err(invalid("control characters are not allowed"));
        }
        match scheme {
            "tcp" => {
                let (host, port) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| invalid("missing :port"))?;
                let port: u16 = port
                    .parse()
                    .map_err(|_| invalid("port is not a number from 0 to 65535"))?;
                let host = if let Some(inner) = host.strip_prefix('[') {
                    inner
                        .strip_suffix(']')
                        .ok_or_else(|| invalid("unclosed '[' in IPv6 host"))?
                } else {
                    if host.contains(':') {
                        return Err(invalid("IPv6 hosts must be written in brackets"));
                    }
                    host
                };
                if host.is_empty() {
                    return Err(invalid("missing host"));
                }
                if host.contains(['/', '[', ']', ' ']) {
                    return Err(invalid("host contains a character not allowed in a host"));
                }
                Ok(Endpoint::Tcp {
                    host: host.to_string(),
                    port,
                })
            }
            "unix" => {
                if rest.is_empty() {
                    return Err(invalid("missing socket path"));
                }
                Ok(Endpoint::Unix(PathBuf::from(rest)))
            }
            "inproc" => {
                inproc::check_name(rest).map_err(invalid)?;
                Ok(Endpoint::Inproc(rest.to_string()))
            }
            #[cfg(target_os = "linux")]
            "shm" => {
                if rest.is_empty() {
                    return Err(invalid("missing hub socket path"));
                }
                Ok(Endpoint::Shm(PathBuf::from(rest)))
            }
            _ => Err(invalid(UNKNOWN_SCHEME)),
        }
    }

    fn io_error(&self, op: &'static str, e: io::Error) -> EndpointError {
        EndpointError::Io {
            op,
            endpoint: self.clone(),
            source: Arc::new(e),
        }
    }

    /// An invalid name is [`EndpointError::Invalid`]; anything else an I/O error of the
    /// corresponding kind.
    fn inproc_error(&self, op: &'static str, e: inproc::InprocError) -> EndpointError {
        match e {
            inproc::InprocError::InvalidName { input, reason } => {
                EndpointError::Invalid { input, reason }
            }
            e => self.io_error(op, e.into()),
        }
    }

    fn host_port(host: &str, port: u16) -> String {
        if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } => write!(f, "tcp://{}", Endpoint::host_port(host, *port)),
            Endpoint::Unix(path) => write!(f, "unix://{}", path.display()),
            Endpoint::Inproc(name) => write!(f, "inproc://{name}"),
            #[cfg(target_os = "linux")]
            Endpoint::Shm(path) => write!(f, "shm://{}", path.display()),
        }
    }
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Endpoint::parse(s)
    }
}

/// Connects to `endpoint` with the default [`StreamConfig`] (for `inproc://`, the default
/// [`InprocConfig`], without waiting for the name to be bound).
pub async fn connect(endpoint: &Endpoint) -> Result<AnyLink, EndpointError> {
    connect_with(endpoint, StreamConfig::default()).await
}

/// Connects to `endpoint`. TCP links have `TCP_NODELAY` on. `config` applies to stream
/// transports; `inproc://` links use the default [`InprocConfig`] (use
/// [`inproc::connect_with`] for another).
pub async fn connect_with(
    endpoint: &Endpoint,
    config: StreamConfig,
) -> Result<AnyLink, EndpointError> {
    let op = "connect to";
    match endpoint {
        Endpoint::Tcp { host, port } => {
            let stream = tokio::net::TcpStream::connect(Endpoint::host_port(host, *port))
                .await
                .map_err(|e| endpoint.io_error(op, e))?;
            let link = StreamLink::tcp(stream, config).map_err(|e| endpoint.io_error(op, e))?;
            Ok(link.into())
        }
        Endpoint::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| endpoint.io_error(op, e))?;
            Ok(StreamLink::unix(stream, config).into())
        }
        Endpoint::Inproc(name) => {
            let link = inproc::connect(name)
                .await
                .map_err(|e| endpoint.inproc_error(op, e))?;
            Ok(link.into())
        }
        #[cfg(target_os = "linux")]
        Endpoint::Shm(path) => {
            let link = ShmConnector::connect(path.clone())
                .await
                .map_err(|e| endpoint.io_error(op, hub_io_error(e)))?;
            Ok(link.into())
        }
    }
}

/// Starts listening on `endpoint` with the default [`StreamConfig`] for accepted links.
///
/// For `unix://` endpoints a stale socket file (one nobody accepts on) is replaced; a live
/// one is [`io::ErrorKind::AddrInUse`]. The socket file is removed when the listener is
/// dropped.
pub async fn listen(endpoint: &Endpoint) -> Result<Listener, EndpointError> {
    listen_with(endpoint, StreamConfig::default()).await
}

/// Starts listening on `endpoint`; accepted links use `config` (stream transports) or the
/// default [`InprocConfig`] (`inproc://`; use [`listen_inproc`] for another).
pub async fn listen_with(
    endpoint: &Endpoint,
    config: StreamConfig,
) -> Result<Listener, EndpointError> {
    let op = "listen on";
    let kind = match endpoint {
        Endpoint::Tcp { host, port } => {
            let l = tokio::net::TcpListener::bind(Endpoint::host_port(host, *port))
                .await
                .map_err(|e| endpoint.io_error(op, e))?;
            let local = l.local_addr().map_err(|e| endpoint.io_error(op, e))?;
            let local = Endpoint::Tcp {
                host: local.ip().to_string(),
                port: local.port(),
            };
            ListenerKind::Tcp(l, local)
        }
        Endpoint::Unix(path) => {
            let l = bind_unix(path)
                .await
                .map_err(|e| endpoint.io_error(op, e))?;
            ListenerKind::Unix {
                listener: l,
                _unlink: UnlinkOnDrop(path.clone()),
            }
        }
        Endpoint::Inproc(name) => {
            let acceptor = inproc::bind(name).map_err(|e| endpoint.inproc_error(op, e))?;
            // Names the canonical (bare) name even if the variant was built with a URL.
            return Ok(Listener::from(acceptor));
        }
        #[cfg(target_os = "linux")]
        Endpoint::Shm(path) => {
            let hub = Hub::bind(path, HubConfig::default())
                .map_err(|e| endpoint.io_error(op, hub_io_error(e)))?;
            ListenerKind::Shm(tokio::sync::Mutex::new(hub))
        }
    };
    Ok(Listener {
        kind,
        endpoint: endpoint.clone(),
        config,
    })
}

/// Binds `name` (bare or `inproc://name`) with `config` and returns it as a [`Listener`], so
/// that code written over [`Listener`] serves in-process clients too.
pub fn listen_inproc(name: &str, config: InprocConfig) -> Result<Listener, EndpointError> {
    // An invalid name becomes `EndpointError::Invalid`, whatever the endpoint.
    let endpoint = Endpoint::Inproc(name.to_string());
    let endpoint = match inproc::parse_name(name) {
        Ok(bare) => Endpoint::Inproc(bare.to_string()),
        Err(e) => return Err(endpoint.inproc_error("listen on", e)),
    };
    let acceptor =
        inproc::bind_with(name, config).map_err(|e| endpoint.inproc_error("listen on", e))?;
    Ok(Listener::from(acceptor))
}

impl From<InprocAcceptor> for Listener {
    fn from(acceptor: InprocAcceptor) -> Listener {
        Listener {
            endpoint: Endpoint::Inproc(acceptor.name().to_string()),
            kind: ListenerKind::Inproc(acceptor),
            config: StreamConfig::default(),
        }
    }
}

async fn bind_unix(path: &Path) -> io::Result<tokio::net::UnixListener> {
    match tokio::net::UnixListener::bind(path) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            // Replace the file only if nothing is listening on it.
            match tokio::net::UnixStream::connect(path).await {
                Err(ce) if ce.kind() == io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path)?;
                    tokio::net::UnixListener::bind(path)
                }
                _ => Err(e),
            }
        }
        other => other,
    }
}

struct UnlinkOnDrop(PathBuf);

impl Drop for UnlinkOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

enum ListenerKind {
    Tcp(tokio::net::TcpListener, Endpoint),
    Unix {
        listener: tokio::net::UnixListener,
        _unlink: UnlinkOnDrop,
    },
    Inproc(InprocAcceptor),
    #[cfg(target_os = "linux")]
    Shm(tokio::sync::Mutex<Hub>),
}

/// An [`io::Error`] for a hub or guest failure, with a kind that says what happened.
#[cfg(target_os = "linux")]
fn hub_io_error(e: HubError) -> io::Error {
    use crate::shm::bootstrap::BootstrapError as B;
    let kind = match &e {
        HubError::Bootstrap(B::Io { source, .. }) => source.kind(),
        HubError::Bootstrap(B::Refused { .. }) | HubError::Full { .. } => {
            io::ErrorKind::ConnectionRefused
        }
        HubError::Bootstrap(B::ResponseTimeout { .. } | B::RequestTimeout { .. }) => {
            io::ErrorKind::TimedOut
        }
        HubError::Bootstrap(B::InvalidPath { .. })
        | HubError::InvalidConfig(_)
        | HubError::Env(_) => io::ErrorKind::InvalidInput,
        HubError::Bootstrap(B::PeerUid { .. }) => io::ErrorKind::PermissionDenied,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

/// A listening endpoint that accepts links: a TCP or Unix listener, or a bound
/// [`InprocAcceptor`].
pub struct Listener {
    kind: ListenerKind,
    endpoint: Endpoint,
    config: StreamConfig,
}

impl Listener {
    /// The endpoint actually bound (for `tcp://…:0`, with the port the system chose).
    pub fn local_endpoint(&self) -> Endpoint {
        match &self.kind {
            ListenerKind::Tcp(_, local) => local.clone(),
            _ => self.endpoint.clone(),
        }
    }

    /// Waits for the next peer and returns its link. Cancel-safe.
    pub async fn accept(&self) -> Result<AnyLink, EndpointError> {
        let op = "accept on";
        match &self.kind {
            ListenerKind::Tcp(l, _) => {
                let (s, _) = l
                    .accept()
                    .await
                    .map_err(|e| self.endpoint.io_error(op, e))?;
                let link = StreamLink::tcp(s, self.config.clone())
                    .map_err(|e| self.endpoint.io_error(op, e))?;
                Ok(link.into())
            }
            ListenerKind::Unix { listener: l, .. } => {
                let (s, _) = l
                    .accept()
                    .await
                    .map_err(|e| self.endpoint.io_error(op, e))?;
                Ok(StreamLink::unix(s, self.config.clone()).into())
            }
            ListenerKind::Inproc(acceptor) => Ok(acceptor.accept().await.into()),
            #[cfg(target_os = "linux")]
            ListenerKind::Shm(hub) => {
                let guest = hub
                    .lock()
                    .await
                    .accept()
                    .await
                    .map_err(|e| self.endpoint.io_error(op, hub_io_error(e)))?;
                Ok(guest.link.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for s in [
            "tcp://127.0.0.1:7000",
            "tcp://localhost:0",
            "tcp://[::1]:80",
            "unix:///run/x.sock",
            "unix://rel/x.sock",
            "inproc://jobs",
            "inproc://svc/a b",
            #[cfg(target_os = "linux")]
            "shm:///run/hub.sock",
        ] {
            assert_eq!(Endpoint::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(
            Endpoint::parse("tcp://[::1]:80").unwrap(),
            Endpoint::Tcp {
                host: "::1".into(),
                port: 80
            }
        );
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "tcp:/x:1",
            "tcp://",
            "tcp://host",
            "tcp://:80",
            "tcp://host:99999",
            "tcp://host:-1",
            "tcp://::1:80",
            "tcp://[::1:80",
            "tcp://a b:80",
            "unix://",
            "unix:///a\nb",
            "http://x:80",
            "inproc://",
            "inproc://a\u{7}b",
            "inproc://a://b",
            "inproc:/x",
            "shm://",
        ] {
            let err = Endpoint::parse(s).unwrap_err();
            assert!(matches!(err, EndpointError::Invalid { .. }), "{s}: {err}");
        }
        let long = format!("inproc://{}", "n".repeat(257));
        assert!(matches!(
            Endpoint::parse(&long),
            Err(EndpointError::Invalid { .. })
        ));
        assert!(Endpoint::parse(&long[..long.len() - 1]).is_ok());
        let err = Endpoint::parse("ipc://x").unwrap_err().to_string();
        assert!(err.contains("inproc://"), "{err}");
    }
}
