//! What every Cairn HTTP service shares at its edge: the TCP listener (below) and Prometheus
//! metrics ([`metrics`]).
//!
//! A server that answers before it has read a request's whole body (a refused upload, an
//! oversized tensor, a missing payment) and then closes the socket makes the kernel reset the
//! connection, because unread bytes are still queued. The reset can reach the client before it
//! has read the answer, so the client reports "broken pipe" instead of the reason. HTTP/1.1
//! (RFC 9112 §9.6) asks servers to close in stages instead: half-close, keep reading (and
//! dropping) what the client still sends, then close. [`LingeringListener`] does that for every
//! connection hyper drops with unread bytes, bounded in time, bytes and number of sockets.
//!
//! A client that stops taking what the server writes (a zero receive window) would hold its
//! connection, and what is queued on it, for as long as it likes: a write that waits
//! [`WRITE_STALL`] with the client acknowledging nothing of the socket's queue fails, and the
//! server resets the connection (its queued bytes are thrown away, not kept for a client that
//! does not read). A slow client that keeps acknowledging is not cut off, even while the kernel
//! holds the writer back (it wakes one only once a third of the send buffer is free); nor is
//! one that takes a trickle.

pub mod metrics;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// How long a closed connection keeps reading what its client still sends.
pub const LINGER_FOR: Duration = Duration::from_secs(5);
/// Most bytes a lingering connection reads (and drops) before it closes anyway.
pub const LINGER_BYTES: u64 = 256 << 20;
/// Most connections lingering at once; beyond it a connection closes at once (a reset).
pub const MAX_LINGERING: usize = 256;
/// Longest a write to a client may wait with the client acknowledging nothing.
pub const WRITE_STALL: Duration = Duration::from_secs(60);

static LINGERING: AtomicUsize = AtomicUsize::new(0);

/// A [`TcpListener`] whose connections linger on close and give up on clients that stop
/// reading; serve it with `axum::serve`.
#[derive(Debug)]
pub struct LingeringListener {
    listener: TcpListener,
    write_stall: Duration,
}

impl LingeringListener {
    /// Wraps a bound listener.
    pub fn new(listener: TcpListener) -> Self {
        Self {
            listener,
            write_stall: WRITE_STALL,
        }
    }

    /// How long a write may wait for a client that takes nothing ([`WRITE_STALL`]).
    pub fn with_write_stall(mut self, stall: Duration) -> Self {
        self.write_stall = stall;
        self
    }
}

impl From<TcpListener> for LingeringListener {
    fn from(listener: TcpListener) -> Self {
        Self::new(listener)
    }
}

impl axum::serve::Listener for LingeringListener {
    type Io = Lingering;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Lingering, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    // Answers that stream (SSE tokens, chunked OHTTP) are many small writes:
                    // with Nagle each waits for the peer's delayed ACK, up to 40 ms.
                    let _ = stream.set_nodelay(true);
                    return (Lingering::new(stream, self.write_stall), addr);
                }
                // The peer gave up before we accepted: nothing to do.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) => {}
                // Out of file descriptors, mostly: wait rather than spin.
                Err(e) => {
                    tracing::error!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// An accepted connection; dropped with unread bytes queued, it lingers, and a write the
/// client takes nothing of for its stall bound fails (see the crate docs).
#[derive(Debug)]
pub struct Lingering {
    stream: Option<TcpStream>,
    write_stall: Duration,
    /// Running while a write waits on the client, with the socket's unacknowledged bytes when
    /// it started.
    stalled: Option<(Pin<Box<tokio::time::Sleep>>, Option<i32>)>,
    /// A write failed at the stall bound: close with a reset.
    stalled_out: bool,
}

impl Lingering {
    fn new(stream: TcpStream, write_stall: Duration) -> Self {
        Self {
            stream: Some(stream),
            write_stall,
            stalled: None,
            stalled_out: false,
        }
    }

    fn stream(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(self.stream.as_mut().expect("present until dropped"))
    }

    /// `r`, a write's outcome; one that has waited past the stall bound fails.
    fn bounded<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let stall = self.write_stall;
        loop {
            if self.stalled.is_none() {
                let queued = self.stream.as_ref().and_then(unacknowledged);
                self.stalled = Some((Box::pin(tokio::time::sleep(stall)), queued));
            }
            let (timer, queued) = self.stalled.as_mut().expect("set above");
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The client took some of the queue meanwhile: slow, not gone. Wait again.
            let now = self.stream.as_ref().and_then(unacknowledged);
            if let (Some(before), Some(now)) = (*queued, now)
                && now < before
            {
                self.stalled = None;
                continue;
            }
            self.stalled = None;
            self.stalled_out = true;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client acknowledged nothing written to it for {stall:?}"),
            )));
        }
    }
}

/// Bytes in `stream`'s send queue the client has not acknowledged (Linux `SIOCOUTQ`).
fn unacknowledged(stream: &TcpStream) -> Option<i32> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let mut n: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ for a socket) writes one int into `n`, which lives for
        // the call; the descriptor is this stream's own.
        let ok = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) } == 0;
        ok.then_some(n)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = stream;
        None
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = self.stream().poll_write(cx, buf);
        self.bounded(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = self.stream().poll_write_vectored(cx, bufs);
        self.bounded(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = self.stream().poll_flush(cx);
        self.bounded(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        if self.stalled_out {
            // What is queued for a client that does not read goes, now, with the socket.
            let _ = stream.set_zero_linger();
            return;
        }
        // Only unread bytes make the close a reset; a drained or idle connection closes now.
        let mut probe = [0u8; 1];
        if !matches!(stream.try_read(&mut probe), Ok(n) if n > 0) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if LINGERING.fetch_add(1, Ordering::AcqRel) >= MAX_LINGERING {
            LINGERING.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        runtime.spawn(async move {
            linger(stream).await;
            LINGERING.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// Half-closes `stream`, then reads and drops until the client closes or a bound is reached.
async fn linger(mut stream: TcpStream) {
    let _ = tokio::time::timeout(LINGER_FOR, async {
        let _ = stream.shutdown().await;
        let mut buf = vec![0u8; 64 << 10];
        let mut read = 0u64;
        while read < LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n as u64,
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that answers a large upload after reading a little of it, then closes: with
    /// a plain listener the client's writes meet a reset (often before it reads the answer);
    /// with a lingering one the client finishes writing and reads the answer every time.
    async fn upload_refused_early(lingering: bool) -> io::Result<Vec<u8>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut conn = Lingering::new(stream, WRITE_STALL);
            let mut head = vec![0u8; 4096];
            let _ = conn.read(&mut head).await.unwrap();
            conn.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbig!")
                .await
                .unwrap();
            conn.shutdown().await.unwrap();
            if !lingering {
                // What a plain TcpStream's drop does: close with unread bytes queued.
                let stream = conn.stream.take().unwrap();
                drop(stream);
            }
        });
        let mut client = TcpStream::connect(addr).await?;
        let body = vec![7u8; 32 << 20];
        client
            .write_all(
                format!("PUT /x HTTP/1.1\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes(),
            )
            .await?;
        // Write the whole body first, as a client that reads only at the end does.
        let written = client.write_all(&body).await;
        server.await.unwrap();
        written?;
        client.shutdown().await?;
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await?;
        Ok(answer)
    }

    #[tokio::test]
    async fn a_client_still_sending_reads_the_answer_instead_of_a_reset() {
        let answer = upload_refused_early(true).await.expect("no reset");
        assert!(answer.starts_with(b"HTTP/1.1 413"), "{answer:?}");
        assert!(answer.ends_with(b"big!"));
        // The lingering task ends at the client's close.
        for _ in 0..100 {
            if LINGERING.load(Ordering::Acquire) == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the lingering connection outlived its client");
    }

    #[tokio::test]
    async fn without_lingering_the_same_client_meets_a_reset() {
        let err = upload_refused_early(false).await.expect_err("a reset");
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ),
            "{err}"
        );
    }

    /// A server writing to its one connection until a write fails (with that error), its
    /// writes bounded by `stall`.
    async fn endless_writer(stall: Duration) -> (SocketAddr, tokio::task::JoinHandle<io::Error>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            // A fixed send buffer: how long a write waits does not follow the kernel's tuning.
            #[cfg(target_os = "linux")]
            {
                use std::os::fd::AsRawFd;
                let size: libc::c_int = 1 << 20;
                // SAFETY: sets one int option on this stream's own socket; `size` lives for
                // the call.
                unsafe {
                    libc::setsockopt(
                        stream.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_SNDBUF,
                        (&size as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
            }
            let mut conn = Lingering::new(stream, stall);
            let chunk = vec![1u8; 64 << 10];
            loop {
                if let Err(e) = conn.write_all(&chunk).await {
                    return e;
                }
            }
        });
        (addr, server)
    }

    /// A client that takes nothing of what is written to it fails the server's write at the
    /// stall bound (the server then drops the connection), however much is queued.
    #[tokio::test]
    async fn a_client_that_stops_reading_fails_the_write_at_the_stall_bound() {
        let (addr, server) = endless_writer(Duration::from_millis(300)).await;
        // Connected, and never reads.
        let mut client = TcpStream::connect(addr).await.unwrap();
        let e = tokio::time::timeout(Duration::from_secs(20), server)
            .await
            .expect("the write never gave up")
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        // The connection was reset, not closed behind what was queued for it.
        let mut buf = vec![0u8; 1 << 20];
        let end = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match client.read(&mut buf).await {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        })
        .await
        .expect("the connection stayed open");
        assert_eq!(
            end.expect_err("closed in order, queued bytes and all")
                .kind(),
            io::ErrorKind::ConnectionReset
        );
    }

    /// A client that reads slowly, but reads, is not cut off at the stall bound even while the
    /// kernel holds the writer back; once it stops, it is.
    #[tokio::test]
    async fn a_slow_client_that_keeps_reading_is_not_cut_off() {
        // A stall bound 20 reads long: a machine busy with other tests may delay a read, not
        // twenty.
        let (addr, server) = endless_writer(Duration::from_secs(2)).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        // It reads 16 KiB every 100 ms for 5 s, far slower than the server writes: the
        // buffers between them stay full, and with the server's send buffer fixed at 1 MiB
        // (2 MiB as Linux counts it) its writes wait over 4 s for a third of it to free up.
        let mut buf = vec![0u8; 16 << 10];
        for _ in 0..50 {
            client.read_exact(&mut buf).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!server.is_finished(), "a client still reading was cut off");
        // Then it stops.
        let e = tokio::time::timeout(Duration::from_secs(20), server)
            .await
            .expect("the write never gave up")
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    }
}
