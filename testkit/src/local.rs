//! A real relay on the caller's own tokio runtime, for tests that drive
//! their peers on that runtime too (the app's simulator, `sotto-cli`
//! processes): started on 127.0.0.1 with a generated certificate in a
//! directory of the test's, stopped gracefully (clients hear
//! `ShuttingDown`) and started again on the same port and data.
//! [`crate::Relay`], on a runtime of its own, is the one to kill.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use sotto_proto::RelayAddress;
use sotto_relay::CertStore;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{PATIENCE, Setup};

/// A relay run until told to stop.
pub struct LocalRelay {
    /// Its address, pinned to its key.
    pub address: RelayAddress,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// What a relay needs to run: its listener, certificate, configuration
/// and shutdown signal.
type Parts = (
    tokio::net::TcpListener,
    Arc<CertStore>,
    sotto_relay::Config,
    Pin<Box<dyn Future<Output = ()> + Send>>,
);

/// A relay running, as `sotto_relay::run` is.
type Running = Pin<Box<dyn Future<Output = Result<(), sotto_relay::RelayError>> + Send>>;

impl LocalRelay {
    /// Starts a relay keeping its certificate and database in `dir`, on
    /// `port` (0: any free port), as a task of the current tokio runtime.
    pub fn start(dir: &Path, port: u16) -> LocalRelay {
        Self::start_with(dir, port, |_| {})
    }

    /// [`LocalRelay::start`], with the relay's configuration changed by
    /// `adjust` first (short keepalive and idle timeouts, say).
    pub fn start_with(
        dir: &Path,
        port: u16,
        adjust: impl FnOnce(&mut sotto_relay::Config),
    ) -> LocalRelay {
        Self::spawn(dir, port, adjust, |(listener, certs, config, shutdown)| {
            Box::pin(sotto_relay::run(listener, certs, config, shutdown))
        })
    }

    /// [`LocalRelay::start`], with the database on `disk`, which the test
    /// can fill and free (`sotto_relay::store::fault`), recovering from
    /// storage failures as `recovery` says. Every delivery is written
    /// before it is sent to anyone (`delivery_hold_ms` 0), so that what
    /// the full disk refuses reaches nobody.
    /// Feature `fault-injection`.
    #[cfg(feature = "fault-injection")]
    pub fn start_on_disk(
        dir: &Path,
        port: u16,
        disk: &sotto_relay::store::fault::Disk,
        recovery: sotto_relay::store::Recovery,
    ) -> LocalRelay {
        let disk = disk.clone();
        Self::spawn(
            dir,
            port,
            |config| config.delivery_hold_ms = 0,
            move |(listener, certs, config, shutdown)| {
                Box::pin(sotto_relay::run_on_disk(
                    listener,
                    certs,
                    config,
                    Arc::default(),
                    disk,
                    recovery,
                    shutdown,
                ))
            },
        )
    }

    fn spawn(
        dir: &Path,
        port: u16,
        adjust: impl FnOnce(&mut sotto_relay::Config),
        run: impl FnOnce(Parts) -> Running,
    ) -> LocalRelay {
        let Setup {
            listener,
            certs,
            mut config,
            address,
        } = Setup::new(dir, port);
        adjust(&mut config);
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = Box::pin(async move {
            let _ = stopped.await;
        });
        let relay = run((listener, certs, config, shutdown));
        // A relay that cannot start (its database still open, say)
        // fails the test here, not as a silent refusal to connect.
        let task = tokio::spawn(async move { relay.await.expect("the relay runs") });
        LocalRelay {
            address,
            stop,
            task,
        }
    }

    /// Stops it gracefully and waits until `run` has returned (its
    /// database closed: it can be started again on the same data).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("the relay stops")
            .unwrap();
    }

    /// Leaves it running until the test's runtime ends; its address.
    pub fn detach(self) -> RelayAddress {
        let address = self.address.clone();
        tokio::spawn(async move {
            let _running = self;
            std::future::pending::<()>().await
        });
        address
    }
}
