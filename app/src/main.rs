//! `sotto`: the desktop app.
//!
//! ```text
//! sotto [--data-dir DIR]
//! ```

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sotto_app::Options;

/// The command line (the package's description is the library's, so the
/// app says what it is itself).
#[derive(Debug, Parser)]
#[command(
    name = "sotto",
    version,
    about = "sotto: end-to-end encrypted chat, the desktop app (in a terminal, use sotto-cli)",
    long_about = None
)]
struct Args {
    /// Where your identity, contacts and history live (default:
    /// $XDG_DATA_HOME/sotto or ~/.local/share/sotto).
    #[arg(long, value_name = "DIR", env = "SOTTO_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

/// Why no window can be opened, when that is known before trying.
fn no_display() -> Option<&'static str> {
    let set = |name: &str| std::env::var_os(name).is_some_and(|value| !value.is_empty());
    if set("DISPLAY") || set("WAYLAND_DISPLAY") || set("WAYLAND_SOCKET") {
        return None;
    }
    Some(
        "no display: neither DISPLAY nor WAYLAND_DISPLAY is set. The desktop app needs an \
         X11 or Wayland session; in a terminal, use sotto-cli.",
    )
}

/// The text of a panic, if it is a string.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("")
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(problem) = no_display() {
        eprintln!("sotto: {problem}");
        return ExitCode::FAILURE;
    }
    // iced panics when the display named cannot be opened (no X server
    // on DISPLAY, say): one line for that, not a backtrace. Every other
    // panic is reported as usual.
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = panic_text(info.payload());
        if text.starts_with("Create event loop") {
            eprintln!(
                "sotto: cannot open a window: the display could not be opened ({}). The \
                 desktop app needs a running X11 or Wayland session; in a terminal, use sotto-cli.",
                text.replace('\n', " ")
            );
        } else {
            default(info);
        }
    }));
    let options = Options {
        data_dir: args.data_dir,
        ..Options::default()
    };
    match std::panic::catch_unwind(move || sotto_app::run(options)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("sotto: {e}");
            ExitCode::FAILURE
        }
        // Reported by the hook.
        Err(_) => ExitCode::FAILURE,
    }
}
