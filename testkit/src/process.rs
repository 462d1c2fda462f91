//! A relay as a process of its own, which a test kills with SIGKILL: the
//! test binary run again with only one of its tests selected (one that
//! does nothing unless the environment this sets names its data), which
//! starts a relay, prints [`ADDRESS_LINE`] and its address, and runs
//! until killed or until its standard input closes (the test is gone).

use std::ffi::OsStr;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};

use sotto_proto::RelayAddress;

/// What the relay process prints before its address.
pub const ADDRESS_LINE: &str = "relay-process-address: ";

/// The relay process.
pub struct RelayProcess {
    /// Its standard input stays open while this lives (and the process).
    child: Child,
    pub address: RelayAddress,
}

impl RelayProcess {
    /// Runs this test binary's test `test` (its full path, run alone) with
    /// `env`, and waits for the address it prints.
    pub fn start(test: &str, env: &[(&str, &OsStr)]) -> RelayProcess {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // A relay process killed with SIGKILL must not take a NATS
            // cluster of its own with it ([`crate::nats::CLUSTER_MODE`]):
            // it is a single relay, or joins the cluster `env` names.
            .env_remove(crate::nats::CLUSTER_MODE);
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let address = loop {
            let line = lines.next().expect("the relay process prints its address");
            // The harness may have begun the line ("test ... ").
            if let Some((_, address)) = line.unwrap().split_once(ADDRESS_LINE) {
                break address.parse().unwrap();
            }
        };
        // Keep reading what it prints, so that it never blocks on it.
        std::thread::spawn(move || lines.for_each(drop));
        RelayProcess { child, address }
    }

    /// SIGKILL: no goodbye, nothing flushed, nothing closed.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
