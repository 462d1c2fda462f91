//! A TCP proxy of the tests' own, between a client and the relay on
//! 127.0.0.1, that a test can make reset, stall, slow or refuse the
//! connections it carries, while traffic flows.
//!
//! It forwards bytes only: a client pinned to the relay (see
//! [`Proxy::relay_address`]) does its TLS handshake end to end through it.
//! Memory is bounded: each direction of a connection holds at most one read
//! buffer ([`CHUNK`] bytes), and a stalled direction reads no more once it
//! holds one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sotto_proto::RelayAddress;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::PATIENCE;

/// The most one direction of a connection reads (and holds) at once.
pub const CHUNK: usize = 16 * 1024;

/// What the proxy has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted and forwarded (refused ones not included).
    pub accepted: u64,
    /// Connections closed at once because the proxy was refusing.
    pub refused: u64,
    /// Connections currently forwarded.
    pub open: u64,
    /// Connections ended by [`Proxy::reset`].
    pub reset: u64,
    /// Bytes written to the upstream (client to relay).
    pub to_upstream: u64,
    /// Bytes written to clients (relay to client).
    pub to_client: u64,
    /// Bytes read but not yet written, in either direction (what a stall
    /// holds).
    pub held: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    open: AtomicU64,
    reset: AtomicU64,
    to_upstream: AtomicU64,
    to_client: AtomicU64,
    held: AtomicU64,
}

struct Shared {
    upstream: SocketAddr,
    refuse: AtomicBool,
    /// The per-chunk delay, in nanoseconds.
    delay: AtomicU64,
    counters: Counters,
}

/// A running proxy; dropping it ends every connection it carries.
pub struct Proxy {
    address: SocketAddr,
    shared: Arc<Shared>,
    /// Bumped by [`Proxy::reset`]; dropped with the proxy, which ends every
    /// connection.
    reset: watch::Sender<u64>,
    stall: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (any free port) and forwards each connection to
    /// `upstream`. Call it inside a tokio runtime: its tasks run there.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let listener = TcpListener::from_std(listener).unwrap();
        let shared = Arc::new(Shared {
            upstream,
            refuse: AtomicBool::new(false),
            delay: AtomicU64::new(0),
            counters: Counters::default(),
        });
        let (reset, _) = watch::channel(0u64);
        let (stall, _) = watch::channel(false);
        // Receivers only: they do not keep the channels open, so dropping
        // the `Proxy` (its senders) ends every connection.
        let accept = tokio::spawn(accept_loop(
            listener,
            shared.clone(),
            reset.subscribe(),
            stall.subscribe(),
        ));
        Proxy {
            address,
            shared,
            reset,
            stall,
            accept,
        }
    }

    /// Where clients connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `relay` (its host name and key pin) at the proxy's port: a client
    /// given it connects through the proxy. The proxy listens on 127.0.0.1,
    /// which `relay`'s host must name too.
    pub fn relay_address(&self, relay: &RelayAddress) -> RelayAddress {
        RelayAddress {
            port: self.address.port(),
            ..relay.clone()
        }
    }

    /// Closes every current connection abruptly: both sockets are dropped
    /// with `SO_LINGER` 0, so each peer sees a reset. Connections accepted
    /// later are not affected.
    pub fn reset(&self) {
        self.reset.send_modify(|generation| *generation += 1);
    }

    /// While `on`, nothing is forwarded in either direction and nothing is
    /// closed: bytes read wait in the proxy (one buffer per direction at
    /// most, then it stops reading), the path looks dead. Off again, they
    /// go on in order.
    pub fn stall(&self, on: bool) {
        self.stall.send_replace(on);
    }

    /// Waits `delay` before forwarding each chunk read (zero: none).
    pub fn delay(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.shared.delay.store(nanos, Ordering::SeqCst);
    }

    /// While `on`, new connections are closed (with a reset) as soon as
    /// they are accepted; current ones go on.
    pub fn refuse(&self, on: bool) {
        self.shared.refuse.store(on, Ordering::SeqCst);
    }

    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        Stats {
            accepted: c.accepted.load(Ordering::SeqCst),
            refused: c.refused.load(Ordering::SeqCst),
            open: c.open.load(Ordering::SeqCst),
            reset: c.reset.load(Ordering::SeqCst),
            to_upstream: c.to_upstream.load(Ordering::SeqCst),
            to_client: c.to_client.load(Ordering::SeqCst),
            held: c.held.load(Ordering::SeqCst),
        }
    }

    /// Waits (up to [`PATIENCE`]) until the stats satisfy `condition`;
    /// returns them. Panics (fails the test) on timeout.
    pub async fn wait_until(&self, condition: impl Fn(&Stats) -> bool) -> Stats {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let stats = self.stats();
            if condition(&stats) {
                return stats;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("proxy: timed out waiting; stats: {stats:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    resets: watch::Receiver<u64>,
    stalls: watch::Receiver<bool>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of descriptors or the like: try again shortly.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if shared.refuse.load(Ordering::SeqCst) {
            shared.counters.refused.fetch_add(1, Ordering::SeqCst);
            let _ = client.set_zero_linger();
            drop(client);
            continue;
        }
        // Resets from now on end this connection, earlier ones do not.
        let mut resets = resets.clone();
        resets.mark_unchanged();
        shared.counters.accepted.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(connection(client, shared.clone(), resets, stalls.clone()));
    }
}

/// Forwards one connection until both sides have closed, either side fails,
/// or a reset.
async fn connection(
    mut client: TcpStream,
    shared: Arc<Shared>,
    mut resets: watch::Receiver<u64>,
    stalls: watch::Receiver<bool>,
) {
    let Ok(mut upstream) = TcpStream::connect(shared.upstream).await else {
        let _ = client.set_zero_linger();
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    shared.counters.open.fetch_add(1, Ordering::SeqCst);
    let abrupt = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        let counters = &shared.counters;
        let up = pump(
            client_read,
            upstream_write,
            &shared,
            stalls.clone(),
            &counters.to_upstream,
        );
        let down = pump(
            upstream_read,
            client_write,
            &shared,
            stalls,
            &counters.to_client,
        );
        tokio::select! {
            ended = async { tokio::try_join!(up, down) } => ended.is_err(),
            _ = resets.changed() => {
                counters.reset.fetch_add(1, Ordering::SeqCst);
                true
            }
        }
    };
    if abrupt {
        // A failure on one side (or a reset) is passed on as a reset.
        let _ = client.set_zero_linger();
        let _ = upstream.set_zero_linger();
    }
    drop((client, upstream));
    shared.counters.open.fetch_sub(1, Ordering::SeqCst);
}

/// Copies `from` to `to` chunk by chunk (holding a chunk while stalled,
/// and the delay before each) until `from` ends, then shuts `to` down.
///
/// It is always reading when it holds nothing, stalled or not, so that
/// the first bytes sent into a stalled path are held (and counted) at
/// once, whenever the stall began: a stalled direction holds at most the
/// one chunk it read and reads no more until the stall ends.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    shared: &Shared,
    mut stalls: watch::Receiver<bool>,
    written: &AtomicU64,
) -> std::io::Result<()> {
    let mut buffer = vec![0u8; CHUNK];
    let gone = || std::io::Error::other("the proxy is gone");
    loop {
        let read = from.read(&mut buffer).await?;
        if read == 0 {
            return to.shutdown().await;
        }
        let held = Held::new(&shared.counters.held, read);
        let forwarded = async {
            let delay = Duration::from_nanos(shared.delay.load(Ordering::SeqCst));
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            stalls
                .wait_for(|stalled| !*stalled)
                .await
                .map_err(|_| gone())?;
            to.write_all(&buffer[..read]).await
        }
        .await;
        forwarded?;
        written.fetch_add(held.bytes, Ordering::SeqCst);
    }
}

/// Bytes counted as held while alive (also when a reset drops the copy).
struct Held<'a> {
    counter: &'a AtomicU64,
    bytes: u64,
}

impl<'a> Held<'a> {
    fn new(counter: &'a AtomicU64, bytes: usize) -> Self {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        counter.fetch_add(bytes, Ordering::SeqCst);
        Held { counter, bytes }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain TCP echo server on 127.0.0.1:0 (each connection echoes what
    /// it reads until EOF, then closes).
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                    let _ = write.shutdown().await;
                });
            }
        });
        address
    }

    async fn read_exactly(stream: &mut TcpStream, len: usize) -> Vec<u8> {
        let mut buffer = vec![0u8; len];
        tokio::time::timeout(PATIENCE, stream.read_exact(&mut buffer))
            .await
            .expect("bytes in time")
            .unwrap();
        buffer
    }

    /// Reads until the stream ends; whether by EOF or an error.
    async fn read_to_end(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
        let mut rest = Vec::new();
        tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest))
            .await
            .expect("the stream ends in time")
            .map(|_| rest)
    }

    #[tokio::test]
    async fn bytes_pass_both_ways_and_are_counted() {
        let proxy = Proxy::start(echo().await);
        let mut client = TcpStream::connect(proxy.address()).await.unwrap();
        let message: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (mut read, mut write) = client.split();
        let (echoed, ()) = tokio::join!(read_all(&mut read, message.len()), async {
            write.write_all(&message).await.unwrap();
        });
        assert_eq!(echoed, message);
        client.shutdown().await.unwrap();
        assert_eq!(read_to_end(&mut client).await.unwrap(), b"");
        let stats = proxy.wait_until(|s| s.open == 0).await;
        assert_eq!(
            stats,
            Stats {
                accepted: 1,
                to_upstream: 100_000,
                to_client: 100_000,
                ..Stats::default()
            }
        );
    }

    async fn read_all(read: &mut (impl AsyncRead + Unpin), len: usize) -> Vec<u8> {
        let mut buffer = vec![0u8; len];
        tokio::time::timeout(PATIENCE, read.read_exact(&mut buffer))
            .await
            .expect("bytes in time")
            .unwrap();
        buffer
    }

    #[tokio::test]
    async fn reset_closes_current_connections_but_not_later_ones() {
        let proxy = Proxy::start(echo().await);
        let mut first = TcpStream::connect(proxy.address()).await.unwrap();
        let mut second = TcpStream::connect(proxy.address()).await.unwrap();
        for stream in [&mut first, &mut second] {
            stream.write_all(b"ping").await.unwrap();
            assert_eq!(read_exactly(stream, 4).await, b"ping");
        }
        proxy.reset();
        for stream in [&mut first, &mut second] {
            match read_to_end(stream).await {
                Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
                Ok(rest) => assert_eq!(rest, b""),
            }
        }
        let stats = proxy.wait_until(|s| s.open == 0).await;
        assert_eq!((stats.accepted, stats.reset), (2, 2));

        let mut later = TcpStream::connect(proxy.address()).await.unwrap();
        later.write_all(b"again").await.unwrap();
        assert_eq!(read_exactly(&mut later, 5).await, b"again");
        assert_eq!(proxy.stats().accepted, 3);
    }

    #[tokio::test]
    async fn a_reset_is_seen_as_a_reset() {
        let proxy = Proxy::start(echo().await);
        let mut client = TcpStream::connect(proxy.address()).await.unwrap();
        client.write_all(b"ping").await.unwrap();
        assert_eq!(read_exactly(&mut client, 4).await, b"ping");
        proxy.reset();
        let ended = read_to_end(&mut client).await;
        assert_eq!(
            ended.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionReset)
        );
    }

    #[tokio::test]
    async fn a_stall_holds_bytes_then_passes_them_in_order() {
        let proxy = Proxy::start(echo().await);
        let mut client = TcpStream::connect(proxy.address()).await.unwrap();
        client.write_all(b"before").await.unwrap();
        assert_eq!(read_exactly(&mut client, 6).await, b"before");

        proxy.stall(true);
        client.write_all(b"during").await.unwrap();
        // The proxy has read them and holds them: none went on.
        let stats = proxy.wait_until(|s| s.held == 6).await;
        assert_eq!((stats.to_upstream, stats.to_client), (6, 6));
        client.write_all(b"-more").await.unwrap();
        // It reads no more while stalled: what is held stays one read.
        assert_eq!(proxy.stats().held, 6);
        assert_eq!(proxy.stats().to_upstream, 6);

        proxy.stall(false);
        assert_eq!(read_exactly(&mut client, 11).await, b"during-more");
        client.shutdown().await.unwrap();
        assert_eq!(read_to_end(&mut client).await.unwrap(), b"");
        let stats = proxy.wait_until(|s| s.open == 0).await;
        assert_eq!(
            (stats.to_upstream, stats.to_client, stats.held, stats.reset),
            (17, 17, 0, 0)
        );
    }

    /// A stall that begins while a chunk is being written on (its
    /// receiver slow) still holds the next bytes that come: the direction
    /// goes back to reading, so whenever a stall began, what is sent into
    /// the stalled path is seen held (the fault suite waits for that).
    #[tokio::test]
    async fn a_stall_begun_during_a_write_holds_what_comes_next() {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let proxy = Proxy::start(listener.local_addr().unwrap());
        let mut client = TcpStream::connect(proxy.address()).await.unwrap();
        let (mut upstream, _) = listener.accept().await.unwrap();
        // More than loopback's buffers take while the upstream reads
        // nothing: the proxy's write on blocks.
        const SENT: usize = 32 << 20;
        let writer = tokio::spawn(async move { client.write_all(&vec![7u8; SENT]).await });
        let mut last = proxy.stats();
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = proxy.stats();
            if now.to_upstream == last.to_upstream && now.held > 0 {
                break;
            }
            last = now;
        }
        proxy.stall(true);
        let blocked = proxy.stats();
        let received = Arc::new(AtomicU64::new(0));
        let counted = received.clone();
        let reader = tokio::spawn(async move {
            let mut buffer = vec![0u8; CHUNK];
            while counted.load(Ordering::SeqCst) < SENT as u64 {
                let read = upstream.read(&mut buffer).await.unwrap();
                assert_ne!(read, 0, "the upstream got everything");
                counted.fetch_add(read as u64, Ordering::SeqCst);
            }
        });
        // The blocked write ends, and the next chunk is read and held.
        let stalled = proxy
            .wait_until(|s| s.to_upstream > blocked.to_upstream && s.held > 0)
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            proxy.stats().to_upstream,
            stalled.to_upstream,
            "nothing more goes on"
        );
        assert_eq!(received.load(Ordering::SeqCst), stalled.to_upstream);

        proxy.stall(false);
        writer.await.unwrap().unwrap();
        tokio::time::timeout(PATIENCE, reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(received.load(Ordering::SeqCst), SENT as u64);
    }

    #[tokio::test]
    async fn a_delay_slows_but_loses_nothing() {
        let proxy = Proxy::start(echo().await);
        proxy.delay(Duration::from_millis(20));
        let mut client = TcpStream::connect(proxy.address()).await.unwrap();
        for i in 0..5u8 {
            client.write_all(&[i; 3]).await.unwrap();
            assert_eq!(read_exactly(&mut client, 3).await, [i; 3]);
        }
        proxy.delay(Duration::ZERO);
        client.write_all(b"fast").await.unwrap();
        assert_eq!(read_exactly(&mut client, 4).await, b"fast");
        assert_eq!(proxy.stats().to_client, 19);
    }

    #[tokio::test]
    async fn refusing_closes_new_connections_only() {
        let proxy = Proxy::start(echo().await);
        let mut current = TcpStream::connect(proxy.address()).await.unwrap();
        current.write_all(b"ping").await.unwrap();
        assert_eq!(read_exactly(&mut current, 4).await, b"ping");

        proxy.refuse(true);
        let mut refused = TcpStream::connect(proxy.address()).await.unwrap();
        // Written before or after the proxy closes it: nothing comes back.
        let _ = refused.write_all(b"hello").await;
        match read_to_end(&mut refused).await {
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
            Ok(rest) => assert_eq!(rest, b""),
        }
        current.write_all(b"still").await.unwrap();
        assert_eq!(read_exactly(&mut current, 5).await, b"still");
        let stats = proxy.stats();
        assert_eq!((stats.accepted, stats.refused), (1, 1));

        proxy.refuse(false);
        let mut later = TcpStream::connect(proxy.address()).await.unwrap();
        later.write_all(b"in").await.unwrap();
        assert_eq!(read_exactly(&mut later, 2).await, b"in");
        assert_eq!(proxy.stats().accepted, 2);
    }

    #[tokio::test]
    async fn an_unreachable_upstream_closes_the_client() {
        // A port nobody listens on (bound, then freed).
        let free = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let upstream = free.local_addr().unwrap();
        drop(free);
        let proxy = Proxy::start(upstream);
        let mut client = TcpStream::connect(proxy.address()).await.unwrap();
        let _ = read_to_end(&mut client).await;
        let stats = proxy.wait_until(|s| s.open == 0).await;
        assert_eq!(stats.accepted, 1);
        // The proxy goes on.
        let mut again = TcpStream::connect(proxy.address()).await.unwrap();
        let _ = read_to_end(&mut again).await;
        assert_eq!(proxy.stats().accepted, 2);
    }

    #[tokio::test]
    async fn the_relay_address_keeps_host_and_pin() {
        let proxy = Proxy::start(echo().await);
        let relay = RelayAddress {
            host: "127.0.0.1".into(),
            port: 1,
            fingerprint: [7; 32],
            alternates: Vec::new(),
        };
        let through = proxy.relay_address(&relay);
        assert_eq!(
            through,
            RelayAddress {
                port: proxy.address().port(),
                ..relay
            }
        );
    }
}
