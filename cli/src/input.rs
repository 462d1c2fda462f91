//! What the user types, and where interactive output goes.
//!
//! At a terminal (standard input and output both a tty, interactive mode)
//! lines are read with a line editor (rustyline): arrows, history (in
//! memory only: a history file would keep in plain text what the database
//! keeps encrypted), and a prompt naming the current room; what the
//! session prints meanwhile appears above the line being typed instead of
//! breaking into it. Otherwise (a pipe, a file, `--json`) lines are read
//! as they come, exactly as before. Either way reading happens on a thread
//! of its own: a read blocked on a terminal or pipe must not keep the
//! runtime from shutting down.

use std::io::{self, IsTerminal as _, Write as _};

use rustyline::error::ReadlineError;
use rustyline::{DefaultEditor, ExternalPrinter};
use tokio::sync::mpsc;

/// Lines of history the editor keeps (in memory).
const HISTORY: usize = 1000;

/// Something typed.
#[derive(Debug)]
pub(crate) enum Typed {
    /// A line, without its line ending.
    Line(String),
    /// Ctrl-C at the editor's prompt (the terminal is in raw mode there,
    /// so it is a key, not a signal).
    Interrupt,
}

/// Standard input, and the way to print without garbling the prompt.
pub(crate) struct Input {
    lines: mpsc::UnboundedReceiver<Typed>,
    editor: Option<Editing>,
}

/// The editor's side: its printer, its prompt and the terminal settings
/// to restore.
struct Editing {
    printer: Box<dyn ExternalPrinter + Send>,
    /// Each prompt sent starts one `readline` on the editor's thread.
    prompts: std::sync::mpsc::Sender<String>,
    /// The terminal as it was before the editor ran: the process may end
    /// while the editor holds it in raw mode.
    saved: Option<nix::sys::termios::Termios>,
}

impl Drop for Editing {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(
                io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
            let _ = writeln!(io::stdout());
        }
    }
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Input")
            .field("editor", &self.editor.is_some())
            .finish_non_exhaustive()
    }
}

impl Input {
    /// Plain lines of standard input, read as they come.
    pub(crate) fn plain() -> Input {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = std::thread::Builder::new()
            .name("stdin".to_owned())
            .spawn(move || {
                for line in io::stdin().lines() {
                    let Ok(line) = line else { break };
                    if tx.send(Typed::Line(line)).is_err() {
                        break;
                    }
                }
            });
        Input {
            lines: rx,
            editor: None,
        }
    }

    /// The line editor at a terminal, plain lines otherwise.
    pub(crate) fn start() -> Input {
        if io::stdin().is_terminal() && io::stdout().is_terminal() {
            match Input::editor() {
                Ok(input) => return input,
                Err(e) => eprintln!("sotto-cli: no line editor ({e}); reading plain lines"),
            }
        }
        Input::plain()
    }

    fn editor() -> Result<Input, ReadlineError> {
        let config = rustyline::Config::builder()
            .max_history_size(HISTORY)?
            .history_ignore_dups(true)?
            .history_ignore_space(true)
            .build();
        let mut editor = DefaultEditor::with_config(config)?;
        let printer = editor.create_external_printer()?;
        let saved = nix::sys::termios::tcgetattr(io::stdin()).ok();
        let (tx, rx) = mpsc::unbounded_channel();
        let (prompts, prompt_rx) = std::sync::mpsc::channel::<String>();
        std::thread::Builder::new()
            .name("editor".to_owned())
            .spawn(move || {
                for prompt in prompt_rx {
                    let typed = match editor.readline(&prompt) {
                        Ok(line) => {
                            if !line.trim().is_empty() {
                                let _ = editor.add_history_entry(line.as_str());
                            }
                            Typed::Line(line)
                        }
                        Err(ReadlineError::Interrupted) => Typed::Interrupt,
                        // Ctrl-D, or the terminal is gone: end of input.
                        Err(_) => break,
                    };
                    if tx.send(typed).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Input {
            lines: rx,
            editor: Some(Editing {
                printer: Box::new(printer),
                prompts,
                saved,
            }),
        })
    }

    /// The next thing typed; `None` at the end of input.
    pub(crate) async fn recv(&mut self) -> Option<Typed> {
        self.lines.recv().await
    }

    /// Shows `prompt` and reads the next line (with the editor; plain
    /// input reads on its own).
    pub(crate) fn prompt(&self, prompt: String) {
        if let Some(editor) = &self.editor {
            let _ = editor.prompts.send(prompt);
        }
    }

    /// Prints `lines` (each already made safe), above the prompt if the
    /// editor shows one.
    pub(crate) fn print(&mut self, lines: Vec<String>) {
        if lines.is_empty() {
            return;
        }
        if let Some(editor) = &mut self.editor {
            let mut text = lines.join("\n");
            text.push('\n');
            if editor.printer.print(text).is_ok() {
                return;
            }
        }
        let mut stdout = io::stdout().lock();
        for line in lines {
            let _ = writeln!(stdout, "{line}");
        }
        let _ = stdout.flush();
    }
}
