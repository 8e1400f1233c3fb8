//! Endpoint addresses (`tcp://host:port`, `unix:///path`) and the `connect` / `listen`
//! functions that turn them into links.
//!
//! ```
//! use actix_tether::endpoint::Endpoint;
//!
//! let ep: Endpoint = "tcp://127.0.0.1:7000".parse().unwrap();
//! assert_eq!(ep.to_string(), "tcp://127.0.0.1:7000");
//! assert!(Endpoint::parse("tcp://127.0.0.1").is_err()); // no port
//! assert!(Endpoint::parse("carrier-pigeon://home").is_err());
//! ```
//!
//! Only schemes whose transport exists are accepted; every malformed input is an
//! [`EndpointError`] that names the input and what is wrong with it.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use crate::links::stream::{StreamConfig, StreamLink};
use crate::links::AnyLink;

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
            .ok_or_else(|| invalid("missing scheme (expected tcp:// or unix://)"))?;
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
            _ => Err(invalid("unknown scheme (expected tcp:// or unix://)")),
        }
    }

    fn io_error(&self, op: &'static str, e: io::Error) -> EndpointError {
        EndpointError::Io {
            op,
            endpoint: self.clone(),
            source: Arc::new(e),
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
        }
    }
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Endpoint::parse(s)
    }
}

/// Connects to `endpoint` with the default [`StreamConfig`].
pub async fn connect(endpoint: &Endpoint) -> Result<AnyLink, EndpointError> {
    connect_with(endpoint, StreamConfig::default()).await
}

/// Connects to `endpoint`. TCP links have `TCP_NODELAY` on.
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

/// Starts listening on `endpoint`; accepted links use `config`.
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
    };
    Ok(Listener {
        kind,
        endpoint: endpoint.clone(),
        config,
    })
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
}

/// A listening endpoint that accepts links.
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
            ListenerKind::Unix { .. } => self.endpoint.clone(),
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
        ] {
            let err = Endpoint::parse(s).unwrap_err();
            assert!(matches!(err, EndpointError::Invalid { .. }), "{s}: {err}");
        }
    }
}
