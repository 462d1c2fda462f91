//! The `relay` binary. Not implemented yet: it says so and exits.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "relay {}: the relay is not implemented yet; this build ships the wire \
         protocol (sotto-proto) and the cryptography (sotto-crypto) it will carry",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::FAILURE
}
