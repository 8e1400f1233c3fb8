//! [`StreamLink`]: a [`Link`] over any byte stream (`AsyncRead + AsyncWrite`), framed as
//! `[len: u32 LE][payload]` (see [`crate::frame`]).
//!
//! Constructors exist for TCP ([`StreamLink::tcp`], `TCP_NODELAY` on), Unix sockets
//! ([`StreamLink::unix`]), stdio ([`StreamLink::stdio`]), an in-memory pair
//! ([`StreamLink::duplex_pair`]) and any split reader/writer ([`StreamLink::new`]).
//!
//! # How sending works
//!
//! Committed messages are appended, prefix and payload, to one write buffer. A writer task
//! (spawned on the current tokio runtime at the first `reserve`) takes the whole buffer at
//! once and writes it with a single `write_all`, so a burst of commits becomes one system
//! call. [`LinkTx::reserve`] waits while the buffer holds `write_buffer` bytes or more, so
//! the memory a sender can pin is bounded by about `2 × (write_buffer + max_frame_len)`
//! (the buffer being filled and the one being written).
//!
//! # When a write fails
//!
//! The error is recorded and reported by the next [`LinkTx::reserve`] and by
//! [`LinkTx::close`]; it is sticky. Messages committed after the last completed write may
//! not have reached the peer: the link does not know which. (Bytes handed to the operating
//! system may also be lost if the peer dies; the [stable session](crate) layer exists to
//! recover from exactly that.)
//!
//! # Receiving
//!
//! Frames are decoded from a read buffer of `read_buffer` bytes that is reused; each message
//! is a [`Bytes`] split off it (no copy, no per-message allocation while messages are
//! dropped promptly). `recv` is cancel-safe: the partial frame stays in the buffer.
//!
//! # Dropping
//!
//! Dropping the [`StreamTx`] without `close` still writes every committed message and then
//! shuts the write direction down, in the background.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::codec::FramedRead;

use super::{Link, LinkError, LinkRx, LinkTx, Permit, WriteSlot};
use crate::frame::{put_prefix, FrameCodec, DEFAULT_MAX_FRAME_LEN, PREFIX_LEN};

/// Configuration of a [`StreamLink`].
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Largest payload accepted in either direction, in bytes. Default 16 MiB; values above
    /// `u32::MAX` are clamped. Larger sends fail at `alloc`; a larger incoming prefix fails
    /// the link before anything is allocated.
    pub max_frame_len: usize,
    /// High-water mark of the write buffer, in bytes. `reserve` waits while at least this
    /// many bytes are queued and not yet handed to the writer. Default 256 KiB; minimum 1.
    pub write_buffer: usize,
    /// Initial capacity of the read buffer, in bytes. Default 64 KiB.
    pub read_buffer: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            write_buffer: 256 * 1024,
            read_buffer: 64 * 1024,
        }
    }
}

/// Boxed reader used by type-erased stream links.
pub type BoxRead = std::pin::Pin<Box<dyn AsyncRead + Send>>;
/// Boxed writer used by type-erased stream links.
pub type BoxWrite = std::pin::Pin<Box<dyn AsyncWrite + Send>>;

/// A framed link over a byte stream. See the [module docs](self).
///
/// ```
/// use actix_tether::links::{stream::StreamLink, Link, LinkRx, send_bytes};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let addr = listener.local_addr()?;
/// let client = StreamLink::tcp(tokio::net::TcpStream::connect(addr).await?, Default::default())?;
/// let server = StreamLink::tcp(listener.accept().await?.0, Default::default())?;
/// let (mut ctx, _crx) = client.split();
/// let (_stx, mut srx) = server.split();
/// send_bytes(&mut ctx, b"ping").await?;
/// assert_eq!(srx.recv().await?.as_deref(), Some(&b"ping"[..]));
/// # Ok(()) }
/// ```
pub struct StreamLink<R, W> {
    reader: R,
    writer: W,
    config: StreamConfig,
}

impl<R, W> StreamLink<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    /// A link over an already split reader and writer.
    pub fn new(reader: R, writer: W, config: StreamConfig) -> Self {
        StreamLink {
            reader,
            writer,
            config,
        }
    }

    /// Erases the reader and writer types (used by [`AnyLink`](super::AnyLink)).
    pub fn boxed(self) -> StreamLink<BoxRead, BoxWrite> {
        StreamLink {
            reader: Box::pin(self.reader),
            writer: Box::pin(self.writer),
            config: self.config,
        }
    }
}

impl StreamLink<tokio::net::tcp::OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf> {
    /// A link over a connected TCP stream. Turns `TCP_NODELAY` on.
    pub fn tcp(stream: tokio::net::TcpStream, config: StreamConfig) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        Ok(StreamLink::new(r, w, config))
    }
}

#[cfg(unix)]
impl StreamLink<tokio::net::unix::OwnedReadHalf, tokio::net::unix::OwnedWriteHalf> {
    /// A link over a connected Unix stream socket.
    pub fn unix(stream: tokio::net::UnixStream, config: StreamConfig) -> Self {
        let (r, w) = stream.into_split();
        StreamLink::new(r, w, config)
    }

    /// Two connected links over a Unix socket pair.
    pub fn unix_pair(config: StreamConfig) -> io::Result<(Self, Self)> {
        let (a, b) = tokio::net::UnixStream::pair()?;
        Ok((
            StreamLink::unix(a, config.clone()),
            StreamLink::unix(b, config),
        ))
    }
}

impl StreamLink<tokio::io::Stdin, tokio::io::Stdout> {
    /// A link over this process's standard input and output (for a child process talking to
    /// its parent through pipes).
    pub fn stdio(config: StreamConfig) -> Self {
        StreamLink::new(tokio::io::stdin(), tokio::io::stdout(), config)
    }
}

type DuplexHalves = StreamLink<
    tokio::io::ReadHalf<tokio::io::DuplexStream>,
    tokio::io::WriteHalf<tokio::io::DuplexStream>,
>;

impl DuplexHalves {
    /// Two connected links over an in-memory byte pipe of `pipe_capacity` bytes each way,
    /// with the default configuration. Useful in tests.
    pub fn duplex_pair(pipe_capacity: usize) -> (Self, Self) {
        let (a, b) = tokio::io::duplex(pipe_capacity.max(1));
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        (
            StreamLink::new(ar, aw, StreamConfig::default()),
            StreamLink::new(br, bw, StreamConfig::default()),
        )
    }
}

impl<R, W> Link for StreamLink<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    type Tx = StreamTx<W>;
    type Rx = StreamRx<R>;

    fn split(self) -> (StreamTx<W>, StreamRx<R>) {
        let codec = FrameCodec::new(self.config.max_frame_len);
        let tx = StreamTx {
            shared: Arc::new(Shared {
                state: Mutex::new(WriteState {
                    buf: BytesMut::new(),
                    writer_waiting: false,
                    closing: false,
                    error: None,
                }),
                data_ready: Notify::new(),
                space: Notify::new(),
            }),
            writer: Some(self.writer),
            task: None,
            max_frame_len: codec.max_frame_len(),
            high_water: self.config.write_buffer.max(1),
        };
        let rx = StreamRx {
            framed: FramedRead::with_capacity(self.reader, codec, self.config.read_buffer),
            done: None,
        };
        (tx, rx)
    }
}

struct WriteState {
    /// Committed frames not yet taken by the writer task.
    buf: BytesMut,
    /// The writer task found nothing to write and waits on `data_ready`.
    writer_waiting: bool,
    /// The sender closed or was dropped: write what is left, then shut down.
    closing: bool,
    /// First write error (sticky).
    error: Option<LinkError>,
}

struct Shared {
    state: Mutex<WriteState>,
    /// Commit/close → writer task.
    data_ready: Notify,
    /// Writer task → `reserve` (a write completed, or the writer failed or stopped).
    space: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, WriteState> {
        // A panic while a slot was held cannot leave the buffer inconsistent in a way that
        // matters more than the panic itself; keep going rather than propagate poison.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the sender closed and wakes the writer.
    fn start_closing(&self) {
        let mut st = self.lock();
        st.closing = true;
        st.writer_waiting = false;
        drop(st);
        self.data_ready.notify_one();
    }
}

/// Sending half of a [`StreamLink`].
pub struct StreamTx<W> {
    shared: Arc<Shared>,
    /// The writer, until the writer task is started.
    writer: Option<W>,
    task: Option<JoinHandle<Result<(), LinkError>>>,
    max_frame_len: usize,
    high_water: usize,
}

impl<W: AsyncWrite + Unpin + Send + 'static> StreamTx<W> {
    fn ensure_started(&mut self) -> Result<(), LinkError> {
        if let Some(writer) = self.writer.take() {
            let handle = tokio::runtime::Handle::try_current().map_err(|_| {
                LinkError::from(io::Error::other(
                    "StreamLink needs a tokio runtime (none is running on this thread)",
                ))
            })?;
            self.task = Some(handle.spawn(writer_task(self.shared.clone(), writer)));
        }
        Ok(())
    }

    /// Bytes committed and not yet handed to the operating system (for diagnostics).
    pub fn queued_bytes(&self) -> usize {
        self.shared.lock().buf.len()
    }
}

impl<W> Drop for StreamTx<W> {
    fn drop(&mut self) {
        self.shared.start_closing();
    }
}

/// Wakes a waiting `reserve` when the writer task ends, however it ends (returned, failed,
/// or dropped because its runtime shut down), so no sender waits forever on a dead writer.
struct WriterExit(Arc<Shared>);

impl Drop for WriterExit {
    fn drop(&mut self) {
        {
            let mut st = self.0.lock();
            if st.error.is_none() {
                st.error = Some(LinkError::Closed);
            }
        }
        self.0.space.notify_one();
    }
}

async fn writer_task<W: AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    mut w: W,
) -> Result<(), LinkError> {
    let _exit = WriterExit(shared.clone());
    let mut unflushed = false;
    let result: Result<(), io::Error> = async {
        loop {
            let notified = shared.data_ready.notified();
            let chunk = {
                let mut st = shared.lock();
                if st.buf.is_empty() {
                    if st.closing {
                        break;
                    }
                    if !unflushed {
                        st.writer_waiting = true;
                    }
                    None
                } else {
                    Some(st.buf.split().freeze())
                }
            };
            match chunk {
                Some(chunk) => {
                    // The buffer is empty again: let a waiting sender fill it while this
                    // chunk is written (double buffering; memory stays within 2 × the
                    // high-water mark plus one frame each).
                    shared.space.notify_one();
                    w.write_all(&chunk).await?;
                    drop(chunk);
                    unflushed = true;
                }
                None if unflushed => {
                    w.flush().await?;
                    unflushed = false;
                }
                None => {
                    notified.await;
                    // Coalescing: one trip through the scheduler before taking the buffer
                    // lets a sender that is still running commit more frames into the same
                    // write (one system call for the burst). Not a polling loop: it happens
                    // once per wake-up, and only after a commit woke the writer.
                    tokio::task::yield_now().await;
                }
            }
        }
        w.flush().await?;
        w.shutdown().await
    }
    .await;
    result.map_err(|e| {
        let e = LinkError::from(e);
        let mut st = shared.lock();
        st.error = Some(e.clone());
        st.buf = BytesMut::new();
        e
    })
}

impl<W: AsyncWrite + Unpin + Send + 'static> LinkTx for StreamTx<W> {
    type Permit<'a> = StreamPermit<'a>;

    async fn reserve(&mut self) -> Result<StreamPermit<'_>, LinkError> {
        self.ensure_started()?;
        loop {
            let space = self.shared.space.notified();
            {
                let st = self.shared.lock();
                if let Some(e) = &st.error {
                    return Err(e.clone());
                }
                if st.closing {
                    return Err(LinkError::Closed);
                }
                if st.buf.len() < self.high_water {
                    break;
                }
            }
            space.await;
        }
        Ok(StreamPermit {
            shared: &self.shared,
            max_frame_len: self.max_frame_len,
        })
    }

    async fn close(mut self) -> Result<(), LinkError> {
        self.ensure_started()?;
        self.shared.start_closing();
        let task = self.task.take();
        let shared = self.shared.clone();
        drop(self);
        match task {
            Some(task) => match task.await {
                Ok(result) => result,
                Err(_) => Err(LinkError::Closed),
            },
            None => {
                let st = shared.lock();
                match &st.error {
                    Some(LinkError::Closed) | None => Ok(()),
                    Some(e) => Err(e.clone()),
                }
            }
        }
    }
}

/// A reservation on a [`StreamTx`].
pub struct StreamPermit<'a> {
    shared: &'a Shared,
    max_frame_len: usize,
}

impl<'a> Permit for StreamPermit<'a> {
    type Slot = StreamSlot<'a>;

    fn alloc(self, len: usize) -> Result<StreamSlot<'a>, LinkError> {
        if len > self.max_frame_len {
            return Err(LinkError::TooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        let mut guard = self.shared.lock();
        let start = guard.buf.len();
        guard.buf.reserve(PREFIX_LEN + len);
        put_prefix(&mut guard.buf, len);
        guard.buf.put_bytes(0, len);
        Ok(StreamSlot {
            guard: Some(guard),
            shared: self.shared,
            start,
        })
    }
}

/// A message being written into a [`StreamTx`]'s buffer. Holds the buffer's lock until it is
/// committed or dropped, so keep it short-lived (fill it, commit it) and never hold it
/// across an `.await`.
pub struct StreamSlot<'a> {
    guard: Option<MutexGuard<'a, WriteState>>,
    shared: &'a Shared,
    start: usize,
}

impl WriteSlot for StreamSlot<'_> {
    fn as_mut_slice(&mut self) -> &mut [u8] {
        match self.guard.as_mut() {
            Some(g) => &mut g.buf[self.start + PREFIX_LEN..],
            None => &mut [],
        }
    }

    fn commit(mut self) {
        if let Some(mut g) = self.guard.take() {
            let wake = std::mem::replace(&mut g.writer_waiting, false);
            drop(g);
            if wake {
                self.shared.data_ready.notify_one();
            }
        }
    }
}

impl Drop for StreamSlot<'_> {
    fn drop(&mut self) {
        if let Some(mut g) = self.guard.take() {
            let start = self.start;
            g.buf.truncate(start);
        }
    }
}

/// Receiving half of a [`StreamLink`].
pub struct StreamRx<R> {
    framed: FramedRead<R, FrameCodec>,
    /// Sticky outcome once the stream ended or failed.
    done: Option<Result<(), LinkError>>,
}

impl<R: AsyncRead + Unpin + Send + 'static> LinkRx for StreamRx<R> {
    async fn recv(&mut self) -> Result<Option<Bytes>, LinkError> {
        if let Some(done) = &self.done {
            return done.clone().map(|()| None);
        }
        match self.framed.next().await {
            Some(Ok(frame)) => Ok(Some(frame)),
            Some(Err(e)) => {
                let e = LinkError::from(e);
                self.done = Some(Err(e.clone()));
                Err(e)
            }
            None => {
                self.done = Some(Ok(()));
                Ok(None)
            }
        }
    }
}
