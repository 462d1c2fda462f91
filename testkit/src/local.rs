//! A real relay on the caller's own tokio runtime, for tests that drive
//! their peers on that runtime too (the app's simulator, `sotto-cli`
//! processes): started on 127.0.0.1 with a generated certificate in a
//! directory of the test's, stopped gracefully (clients hear
//! `ShuttingDown`) and started again on the same port and data.
//! [`crate::Relay`], on a runtime of its own, is the one to kill.

use std::path::Path;

use sotto_proto::RelayAddress;
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

impl LocalRelay {
    /// Starts a relay keeping its certificate and database in `dir`, on
    /// `port` (0: any free port), as a task of the current tokio runtime.
    pub fn start(dir: &Path, port: u16) -> LocalRelay {
        Self::start_with(dir, port, |_| {})
    }

    /// [`LocalRelay::start`] with the configuration changed by `adjust`
    /// (small storage bounds, say).
    pub fn start_with(
        dir: &Path,
        port: u16,
        adjust: impl FnOnce(&mut sotto_relay::Config),
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
        let task = tokio::spawn(async move {
            // A relay that cannot start (its database still open, say)
            // fails the test here, not as a silent refusal to connect.
            sotto_relay::run(listener, certs, config, async move {
                let _ = stopped.await;
            })
            .await
            .expect("the relay runs");
        });
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
