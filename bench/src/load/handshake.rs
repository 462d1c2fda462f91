//! Handshake storms: full TLS 1.3 handshakes, one after another on
//! `concurrency` connections at once.

use std::time::Duration;

use bytes::BytesMut;
use rustls::pki_types::ServerName;
use sotto_proto::codec::fast::split_frame;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::{Clock, Window, nanos};
use crate::BoxError;
use crate::target::{Target, Usage};

/// What a handshake storm measured.
#[derive(Debug)]
pub(crate) struct Handshakes {
    pub(crate) secs: f64,
    /// Handshakes completed (first frame read) inside the window.
    pub(crate) completed: u64,
    pub(crate) failed: u64,
    pub(crate) target: (Usage, Usage),
    pub(crate) bench: (Usage, Usage),
}

/// `concurrency` loops of: TCP connect, full TLS 1.3 handshake with the
/// client library's pinned connector, read the target's first frame
/// (challenge or hello), reset the connection (no TIME_WAIT left behind).
pub(crate) async fn handshakes(
    target: &Target,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    clock: Clock,
) -> Result<Handshakes, BoxError> {
    let address = target.address_for(0)?;
    let connector = sotto_client::tls::connector(address)?;
    let server_name = ServerName::try_from(address.host.clone())?;
    let addr = (address.host.clone(), address.port);
    let start = clock.now() + nanos(warmup);
    let window = Window {
        start,
        end: start + nanos(duration),
    };
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency.max(1) {
        let connector = connector.clone();
        let server_name = server_name.clone();
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let (mut completed, mut failed) = (0u64, 0u64);
            while clock.now() < window.end {
                let attempt = async {
                    let socket = TcpStream::connect((addr.0.as_str(), addr.1)).await?;
                    socket.set_nodelay(true)?;
                    socket.set_zero_linger()?;
                    let mut tls = connector.connect(server_name.clone(), socket).await?;
                    let mut buf = BytesMut::with_capacity(256);
                    while split_frame(&buf)?.is_none() {
                        if tls.read_buf(&mut buf).await? == 0 {
                            return Err(BoxError::from("closed before the first frame"));
                        }
                    }
                    Ok::<_, BoxError>(())
                };
                match tokio::time::timeout(Duration::from_secs(10), attempt).await {
                    Ok(Ok(())) => completed += u64::from(window.contains(clock.now())),
                    _ => failed += 1,
                }
            }
            (completed, failed)
        }));
    }
    let (target_usage, bench_usage) = window.measure(&clock, target).await?;
    let (mut completed, mut failed) = (0, 0);
    for task in tasks {
        let (c, f) = task.await?;
        completed += c;
        failed += f;
    }
    Ok(Handshakes {
        secs: duration.as_secs_f64(),
        completed,
        failed,
        target: target_usage,
        bench: bench_usage,
    })
}
