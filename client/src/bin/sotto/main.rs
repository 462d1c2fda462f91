//! `sotto`: the desktop app.
//!
//! ```text
//! sotto [--data-dir DIR]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sotto_client::gui::{self, Options};

/// sotto: end-to-end encrypted chat.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Where your identity, contacts and history live (default:
    /// $XDG_DATA_HOME/sotto or ~/.local/share/sotto).
    #[arg(long, value_name = "DIR", env = "SOTTO_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let options = Options {
        data_dir: args.data_dir,
        ..Options::default()
    };
    match gui::run(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sotto: {e}");
            ExitCode::FAILURE
        }
    }
}
