//! `sotto-cli`: the headless sotto client.
//!
//! `init` creates an identity, `fingerprint` prints it, `connect` chats
//! through a relay, interactively or (with `--json`) as JSON lines for bots
//! and tests, `relay replace-pin` replaces a relay's pinned key on purpose.
//! docs/cli.md documents every command and the JSON schema.
#![forbid(unsafe_code)]
// A command-line program talks on stdout.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod bot;
mod input;
mod json;
mod marks;
mod text;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use futures::StreamExt;
use sotto_client::account::Account;
use sotto_client::commands;
use sotto_client::profile::Profile;
use sotto_client::safe_text;
use sotto_client::servers::{KnownServers, SERVERS_FILE};
use sotto_client::session::{self, Config, Update};
use sotto_crypto::KdfParams;
use sotto_proto::{RelayAddress, RoomName, UserName, fingerprint_text};
use zeroize::Zeroizing;

/// The headless sotto client: end-to-end encrypted chat through a sotto relay.
#[derive(Debug, Parser)]
#[command(name = "sotto-cli", version)]
struct Args {
    /// The data directory (identity, contacts, history). Default:
    /// $XDG_DATA_HOME/sotto, else ~/.local/share/sotto.
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Read the passphrase from the first line of FILE instead of asking.
    #[arg(long, global = true, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create an identity (two RSA-3072 key pairs) for NAME.
    Init {
        /// The name to register on relays: 1-32 of A-Z a-z 0-9 . _ -,
        /// starting with a letter or digit.
        #[arg(long)]
        name: UserName,
    },
    /// Print your name and key fingerprint.
    Fingerprint,
    /// Change the passphrase of your identity.
    Passphrase,
    /// Connect to a relay and chat.
    Connect {
        /// The relay's address, as its operator gave it:
        /// sotto://<key fingerprint>@host:port
        address: RelayAddress,
        /// Speak JSON lines on stdin and stdout (see docs/cli.md).
        #[arg(long)]
        json: bool,
        /// Rooms to join the first time (later runs rejoin the rooms you
        /// were in). Default: lobby.
        #[arg(long = "room", value_name = "ROOM", value_parser = commands::room)]
        rooms: Vec<RoomName>,
        /// At start, show at most the N newest stored messages of each
        /// conversation (default: all in JSON mode, 20 interactively).
        #[arg(long, value_name = "N", conflicts_with = "no_history")]
        history: Option<usize>,
        /// At start, show no stored messages.
        #[arg(long)]
        no_history: bool,
    },
    /// The relays you know and the keys pinned for them.
    #[command(subcommand)]
    Relay(RelayCmd),
}

#[derive(Debug, Subcommand)]
enum RelayCmd {
    /// Replace the key pinned for a relay with the one ADDRESS carries, on
    /// purpose: only when its operator told you, through a channel you
    /// trust, that the relay's key changed (a rotation signed by the old
    /// key is followed without this). Shows both fingerprints and asks you
    /// to type "yes"; the replacement is recorded in relay-pins.log.
    ReplacePin {
        /// The relay's new address: sotto://<key fingerprint>@host:port
        address: RelayAddress,
        /// Replace without asking (for scripts; there is no undo).
        #[arg(long)]
        yes: bool,
    },
}

/// The environment variable holding the passphrase, for scripts.
const PASSPHRASE_ENV: &str = "SOTTO_PASSPHRASE";

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sotto-cli: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<ExitCode, String> {
    let profile = match &args.data_dir {
        Some(dir) => Profile::open(dir),
        None => Profile::open_default(),
    }
    .map_err(|e| e.to_string())?;
    match args.command {
        Cmd::Init { name } => {
            if profile.has_identity() {
                return Err(format!(
                    "an identity already exists in {}",
                    profile.dir().display()
                ));
            }
            let passphrase = new_passphrase(args.passphrase_file.as_deref())?;
            eprintln!("generating keys (this takes a few seconds)...");
            let account = Account::create(&profile, name, passphrase, KdfParams::DEFAULT)
                .await
                .map_err(|e| e.to_string())?;
            println!("created {} in {}", account.name(), profile.dir().display());
            println!("fingerprint: {}", account.identity().fingerprint());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Fingerprint => {
            let account = unlock(&profile, args.passphrase_file.as_deref()).await?;
            println!("name: {}", account.name());
            println!("fingerprint: {}", account.identity().fingerprint());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Passphrase => {
            let old = passphrase(args.passphrase_file.as_deref(), "current passphrase: ")?;
            let new = ask_new()?;
            profile
                .change_passphrase(old, new, KdfParams::DEFAULT)
                .await
                .map_err(|e| e.to_string())?;
            println!("passphrase changed");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Connect {
            address,
            json,
            rooms,
            history,
            no_history,
        } => {
            let account = unlock(&profile, args.passphrase_file.as_deref()).await?;
            let fingerprint = account.identity().fingerprint();
            let mut config = Config::new(account, address);
            if !rooms.is_empty() {
                config.rooms = rooms;
            }
            let history = if no_history { Some(0) } else { history };
            chat(config, json, fingerprint, history).await
        }
        Cmd::Relay(RelayCmd::ReplacePin { address, yes }) => replace_pin(&profile, &address, yes),
    }
}

/// `relay replace-pin`: shows the pinned and the new key, asks for "yes"
/// (or takes `--yes`), replaces the pin and says where it is recorded.
fn replace_pin(profile: &Profile, address: &RelayAddress, yes: bool) -> Result<ExitCode, String> {
    let path = profile.dir().join(SERVERS_FILE);
    let mut known = KnownServers::load(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let authority = address.authority();
    let new = address.fingerprint_text();
    match known.get(address).map(|pinned| pinned.fingerprint) {
        Some(pinned) if pinned == address.fingerprint => {
            println!("{authority} is already pinned to key {new}; nothing to replace");
            return Ok(ExitCode::SUCCESS);
        }
        Some(pinned) => {
            println!(
                "{authority} is pinned to key   {}",
                fingerprint_text(&pinned)
            );
            println!("this address pins the new key {new}");
        }
        None => println!("{authority} is not known yet; this address pins key {new}"),
    }
    println!(
        "Replace the pin only if the relay's operator told you, through a channel you trust, \
         that its key changed to {new}. Otherwise someone may be impersonating the relay: \
         do not replace it."
    );
    if !yes {
        if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            return Err(
                "not replaced: no terminal to confirm on; run `sotto-cli relay replace-pin ADDRESS --yes` to confirm"
                    .to_owned(),
            );
        }
        print!("type yes to replace the pin: ");
        let _ = std::io::Write::flush(&mut std::io::stdout());
        let mut answer = String::new();
        std::io::stdin()
            .read_line(&mut answer)
            .map_err(|e| e.to_string())?;
        if answer.trim() != "yes" {
            println!("not replaced");
            return Ok(ExitCode::FAILURE);
        }
    }
    let replaced = known
        .replace(address)
        .map_err(|e| format!("cannot save the known relays: {e}"))?;
    println!(
        "replaced: {authority} {} -> {} (recorded in {})",
        replaced
            .old
            .map_or_else(|| "(none)".to_owned(), |old| fingerprint_text(&old)),
        fingerprint_text(&replaced.new),
        known.log_path().display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn unlock(profile: &Profile, file: Option<&std::path::Path>) -> Result<Account, String> {
    if !profile.has_identity() {
        return Err(format!(
            "no identity in {}: create one with `sotto-cli init --name NAME`",
            profile.dir().display()
        ));
    }
    let passphrase = passphrase(file, "passphrase: ")?;
    Account::unlock(profile, passphrase)
        .await
        .map_err(|e| e.to_string())
}

/// The passphrase from `--passphrase-file`, `SOTTO_PASSPHRASE`, or a prompt.
fn passphrase(file: Option<&std::path::Path>, prompt: &str) -> Result<Zeroizing<String>, String> {
    if let Some(file) = file {
        let text = Zeroizing::new(
            std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?,
        );
        let line = text.lines().next().unwrap_or_default();
        return Ok(Zeroizing::new(line.to_owned()));
    }
    if let Ok(value) = std::env::var(PASSPHRASE_ENV) {
        return Ok(Zeroizing::new(value));
    }
    rpassword::prompt_password(prompt)
        .map(Zeroizing::new)
        .map_err(|e| format!("cannot read the passphrase (use --passphrase-file or {PASSPHRASE_ENV} without a terminal): {e}"))
}

/// A new passphrase: from the file or environment, or asked twice.
fn new_passphrase(file: Option<&std::path::Path>) -> Result<Zeroizing<String>, String> {
    if file.is_some() || std::env::var_os(PASSPHRASE_ENV).is_some() {
        let passphrase = passphrase(file, "")?;
        if passphrase.is_empty() {
            return Err("the passphrase must not be empty".to_owned());
        }
        return Ok(passphrase);
    }
    ask_new()
}

fn ask_new() -> Result<Zeroizing<String>, String> {
    let first =
        Zeroizing::new(rpassword::prompt_password("new passphrase: ").map_err(|e| e.to_string())?);
    if first.chars().count() < 8 {
        return Err(
            "choose a passphrase of at least 8 characters (several words are best)".to_owned(),
        );
    }
    let again = Zeroizing::new(
        rpassword::prompt_password("repeat the passphrase: ").map_err(|e| e.to_string())?,
    );
    if first != again {
        return Err("the passphrases differ".to_owned());
    }
    Ok(first)
}

/// Runs a session, reading commands from stdin and printing updates.
async fn chat(
    config: Config,
    json: bool,
    fingerprint: sotto_crypto::Fingerprint,
    history: Option<usize>,
) -> Result<ExitCode, String> {
    let config_relay = config.relay.authority();
    let name = config.account.name().clone();
    let mut updates = Box::pin(session::run(config));
    let Some(Update::Ready(controller)) = updates.next().await else {
        return Err("the session did not start".to_owned());
    };
    let mut view = text::View::new(
        &config_relay,
        Some(fingerprint),
        history.unwrap_or(text::HISTORY_SHOWN),
    )
    .named(name);
    if json {
        println!("{}", json::event(&Update::Ready(controller.clone())));
    }
    // A line editor when a person types at a terminal; plain lines from a
    // pipe or a file (and always in JSON mode), exactly as read.
    let mut input = if json {
        input::Input::plain()
    } else {
        input::Input::start()
    };
    let mut stdin_open = true;
    let mut out = Vec::new();
    let mut bot = bot::Bot::default();
    if !json {
        input.print(vec!["type /help for commands".to_owned()]);
        input.prompt(view.prompt());
    }
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let code = loop {
        // Delivery notices that wait to be coalesced (interactive mode).
        let due = if json { None } else { view.due() };
        let typed = tokio::select! {
            () = tokio::time::sleep_until(due.map_or_else(tokio::time::Instant::now, Into::into)), if due.is_some() => {
                view.tick(std::time::Instant::now(), &mut out);
                input.print(std::mem::take(&mut out));
                continue;
            }
            // Ctrl-C: say goodbye properly (the counters are checkpointed);
            // a second Ctrl-C stops at once.
            _ = &mut interrupted => {
                interrupted.set(tokio::signal::ctrl_c());
                input::Typed::Interrupt
            }
            update = updates.next() => {
                let Some(update) = update else { break ExitCode::SUCCESS };
                let failed = matches!(
                    &update,
                    Update::Connection(session::Connection::Failed { .. })
                );
                if json {
                    if let Some(event) = bot.event(&update, history) {
                        println!("{event}");
                    }
                } else {
                    for command in view.show(&update, &mut out) {
                        let _ = controller.command(command);
                    }
                    input.print(std::mem::take(&mut out));
                }
                if failed {
                    break ExitCode::FAILURE;
                }
                continue;
            }
            line = input.recv(), if stdin_open => match line {
                Some(typed) => typed,
                // End of input: quit, after what is queued is sent.
                None => {
                    stdin_open = false;
                    let _ = controller.quit();
                    continue;
                }
            },
        };
        match typed {
            input::Typed::Interrupt => {
                if !stdin_open {
                    return Ok(ExitCode::from(130));
                }
                stdin_open = false;
                let _ = controller.quit();
            }
            input::Typed::Line(line) => {
                if json {
                    match bot.line(&line) {
                        Ok(Some(bot::Action::Command(command))) => {
                            if controller.command(command).is_err() {
                                break ExitCode::SUCCESS;
                            }
                        }
                        Ok(Some(bot::Action::Print(event))) | Err(event) => println!("{event}"),
                        Ok(None) => {}
                    }
                    continue;
                }
                let parsed = view.command(&line, &mut out);
                match parsed {
                    Ok(Some(command)) => {
                        if controller.command(command).is_err() {
                            break ExitCode::SUCCESS;
                        }
                    }
                    Ok(None) => {}
                    Err(message) => {
                        // It may quote what was typed.
                        out.push(format!("! {}", safe_text::inline(&message)));
                    }
                }
                input.print(std::mem::take(&mut out));
                input.prompt(view.prompt());
            }
        }
    };
    if !json {
        view.abandon(&mut out);
        input.print(out);
    }
    Ok(code)
}
