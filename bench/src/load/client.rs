//! The clients: connecting and registering (on the relay, a signed
//! registration; on the forwarder, its register frame), joining the bench
//! room, many at once, and the names and destinations they use.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use sotto_crypto::Identity;
use sotto_proto::codec::PREFIX_LEN;
use sotto_proto::codec::fast::{RelayView, peek_relay, split_frame};
use sotto_proto::frame::index;
use sotto_proto::{
    ClientFrame, Destination, RelayAddress, RelayFrame, RoomName, UserName, decode_payload,
    encode_frame,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::Clock;
use crate::BoxError;
use crate::target::Target;
use crate::wire::{Proto, fwd, fwd_frame};

/// The room (relay) or group id (forwarder) of the fan-out scenario.
pub(crate) const ROOM: &str = "bench";
/// Longest a client may take to connect and register.
const SETUP_TIMEOUT: Duration = Duration::from_secs(300);

/// What every client shares: the identity it registers with and the clock.
#[derive(Debug)]
pub(crate) struct Bench {
    pub(crate) identity: Identity,
    pub(crate) public: Bytes,
    pub(crate) clock: Clock,
}

/// The relay name of client `index`.
pub(crate) fn user_name(index: u32) -> Result<UserName, BoxError> {
    Ok(UserName::try_from(format!("bench{index:05}"))?)
}

/// A connected client, registered (and in the room, if asked), with what it
/// has read but not consumed yet.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(super) stream: TlsStream<TcpStream>,
    pub(super) buf: BytesMut,
}

impl Conn {
    /// The next frame's payload (version byte first).
    async fn next_payload(&mut self) -> Result<Bytes, BoxError> {
        loop {
            if let Some((payload, _)) = split_frame(&self.buf)? {
                let len = payload.len();
                let frame = self.buf.split_to(PREFIX_LEN + len).freeze();
                return Ok(frame.slice(PREFIX_LEN..));
            }
            self.buf.reserve(4096);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err("the target closed the connection during setup".into());
            }
        }
    }

    async fn next_relay(&mut self) -> Result<RelayFrame, BoxError> {
        let payload = self.next_payload().await?;
        Ok(decode_payload(&payload)?)
    }

    /// Reads relay frames until one of variant `want` ([`index::relay`]);
    /// an error frame fails. Frames are told apart by their variant only,
    /// as both relays' frames are read (the in-memory relay's `Joined`
    /// does not decode with today's `Member`).
    async fn expect_relay(&mut self, want: u32) -> Result<(), BoxError> {
        loop {
            let payload = self.next_payload().await?;
            let got = match peek_relay(&payload) {
                Some(RelayView::Deliver(_)) => index::relay::DELIVER,
                Some(RelayView::Sent { .. }) => index::relay::SENT,
                Some(RelayView::Other { index }) => index,
                None => return Err("the relay sent a frame that does not parse".into()),
            };
            if got == want {
                return Ok(());
            }
            if got == index::relay::ERROR
                && let Ok(RelayFrame::Error { code, message, .. }) = decode_payload(&payload)
            {
                return Err(format!("relay refused: {code:?}: {message}").into());
            }
        }
    }

    /// Reads forwarder frames until one with `op`.
    async fn expect_fwd(&mut self, op: u8) -> Result<(), BoxError> {
        loop {
            let payload = self.next_payload().await?;
            if payload.get(1) == Some(&op) {
                return Ok(());
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), BoxError> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }
}

/// Connects client `index` to `address` and registers it (as
/// `bench<index>` on the relay), joining the bench room if `join`.
pub(crate) async fn connect(
    bench: &Bench,
    proto: Proto,
    address: &RelayAddress,
    index: u32,
    join: bool,
) -> Result<Conn, BoxError> {
    let stream = sotto_client::tls::connect(address).await?;
    let mut conn = Conn {
        stream,
        buf: BytesMut::with_capacity(4096),
    };
    match proto {
        Proto::Relay | Proto::InMemory | Proto::Cluster => {
            let RelayFrame::Challenge { nonce } = conn.next_relay().await? else {
                return Err("the relay did not open with a challenge".into());
            };
            let name = user_name(index)?;
            let proof = bench.identity.sign_registration(
                &mut rand::rng(),
                &address.fingerprint,
                &nonce,
                name.as_str(),
            )?;
            let register = ClientFrame::Register {
                name,
                identity: bench.public.clone(),
                proof: Bytes::from(proof),
            };
            conn.write(&encode_frame(&register)?).await?;
            conn.expect_relay(index::relay::REGISTERED).await?;
            if join {
                let room = RoomName::try_from(ROOM)?;
                conn.write(&encode_frame(&ClientFrame::Join { room })?)
                    .await?;
                conn.expect_relay(index::relay::JOINED).await?;
            }
        }
        Proto::Forwarder => {
            conn.expect_fwd(fwd::HELLO).await?;
            conn.write(&fwd_frame(fwd::REGISTER, index, &[])).await?;
            conn.expect_fwd(fwd::ACK).await?;
            if join {
                conn.write(&fwd_frame(fwd::JOIN, 0, &[])).await?;
                conn.expect_fwd(fwd::ACK).await?;
            }
        }
    }
    Ok(conn)
}

/// Connects clients `0..count`, `concurrency` at a time, on the runtime's
/// worker threads (registration signs with RSA); client `i` to the
/// target's address for `i` (a cluster's relays in turn).
pub(crate) async fn connect_all(
    bench: &Arc<Bench>,
    target: &Target,
    count: u32,
    join: bool,
    concurrency: usize,
) -> Result<Vec<Conn>, BoxError> {
    let proto = target.proto;
    let mut pending = futures::stream::iter(0..count)
        .map(|index| {
            let bench = Arc::clone(bench);
            let address = target.address_for(index).cloned();
            tokio::spawn(async move {
                let address = address?;
                tokio::time::timeout(SETUP_TIMEOUT, connect(&bench, proto, &address, index, join))
                    .await
                    .map_err(|_| BoxError::from("setup timed out"))
                    .and_then(|r| r)
            })
        })
        .buffered(concurrency.max(1));
    let mut conns = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    while let Some(joined) = pending.next().await {
        let index = conns.len();
        conns.push(joined?.map_err(|e| format!("client {index}: {e}"))?);
    }
    Ok(conns)
}

/// Destination of a relay direct message to client `index`.
pub(crate) fn to_user(index: u32) -> Result<Destination, BoxError> {
    Ok(Destination::User(user_name(index)?))
}

/// Destination of a relay room message.
pub(crate) fn to_room() -> Result<Destination, BoxError> {
    Ok(Destination::Room(RoomName::try_from(ROOM)?))
}
