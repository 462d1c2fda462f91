//! The composer: what a typed line does (resolved by [`sotto_client::ui::resolve`]),
//! and its keys.

use iced::keyboard;
use iced::widget::text_editor;

use crate::timeline::Tone;
use sotto_client::commands;
use sotto_client::session::{Chat as Conversation, Command};
use sotto_client::ui::{self, Local, Resolved};

use super::files::typed_path;
use super::{Action, Chat, Message};

impl Chat {
    /// What the composer sends or does. The composer is emptied once its
    /// line was understood; a line that was not stays for correcting.
    pub(super) fn submit(&mut self) -> Action {
        if self.is_blocked() {
            return Action::None;
        }
        let line = self.composer.text().replace("\r\n", "\n");
        let resolved = match ui::resolve(&line, &self.view.context) {
            Ok(Resolved::Local(Local::Hold(_))) => {
                Err("you are in no room: /join ROOM first".to_owned())
            }
            resolved => resolved,
        };
        let resolved = match resolved {
            Ok(resolved) => resolved,
            Err(e) => {
                self.status = Some((Tone::Warning, e));
                return Action::None;
            }
        };
        self.composer = text_editor::Content::new();
        self.status = None;
        match resolved {
            Resolved::Nothing => {}
            Resolved::Command(command) => return self.perform(command),
            Resolved::Local(local) => self.local(local),
        }
        Action::None
    }

    /// Hands a typed command to the session, showing at once what it
    /// opens.
    fn perform(&mut self, command: Command) -> Action {
        match command {
            Command::Send { chat, text } => {
                let chat = match &chat {
                    Conversation::Direct(_) => {
                        self.open(&chat);
                        // The conversation keeps the name as the session
                        // knows it (`@bob` for `/msg BOB`), once it has
                        // been named.
                        self.current().cloned().unwrap_or(chat)
                    }
                    Conversation::Room(_) => chat,
                };
                self.send(chat, text);
            }
            // No shell between the composer and the path: `~/` is
            // expanded here; a relative path to save at is in the
            // downloads folder, not wherever the app was started.
            Command::SendFile { chat, path } => {
                self.command(Command::SendFile {
                    chat,
                    path: typed_path(&path.to_string_lossy()),
                });
            }
            Command::SaveFile { chat, message, to } => {
                let to = typed_path(&to.to_string_lossy());
                let to = if to.is_relative() {
                    self.downloads().join(to)
                } else {
                    to
                };
                self.save_at(chat, message, to);
            }
            Command::Join(room) => self.join(room),
            Command::SafetyNumber(user) => self.verify_screen(user),
            Command::Quit => {
                self.quit();
                return Action::Quit;
            }
            other => {
                self.command(other);
            }
        }
        Action::None
    }

    /// Does what a typed line asks of the window alone.
    fn local(&mut self, local: Local) {
        match local {
            Local::Help => self.tell(Tone::Info, commands::HELP.to_owned()),
            Local::Members(room) => {
                let members = self.view.members(&room);
                let names: Vec<String> =
                    members.iter().map(|m| self.view.member_label(m)).collect();
                let text = format!("#{room}: {} members: {}", members.len(), names.join(", "));
                self.tell(Tone::Info, text);
            }
            Local::Switch(room) => self.open(&Conversation::Room(room)),
            Local::Fingerprint(fingerprint) => {
                self.tell(Tone::Info, format!("your key fingerprint: {fingerprint}"));
            }
            // Not asked for (the context does not hold): refused above.
            Local::Hold(_) => {}
        }
    }
}

/// The composer's keys: Enter sends, Shift+Enter breaks the line, Ctrl+V
/// pastes text or sends a pasted image, the window's shortcuts
/// ([`shortcut`]) are the window's, the rest as in any text editor (pasted
/// text keeps its lines).
pub(super) fn composer_keys(press: text_editor::KeyPress) -> Option<text_editor::Binding<Message>> {
    if let Some(message) = shortcut(&press.key, press.modifiers) {
        return Some(text_editor::Binding::Custom(message));
    }
    let enter = matches!(
        press.key.as_ref(),
        keyboard::Key::Named(keyboard::key::Named::Enter)
    );
    let focused = matches!(press.status, text_editor::Status::Focused { .. });
    // Ctrl+V: text pasted as usual, and an image in the clipboard sent.
    if focused
        && press.modifiers.command()
        && matches!(press.key.as_ref(), keyboard::Key::Character("v"))
    {
        return Some(text_editor::Binding::Sequence(vec![
            text_editor::Binding::Paste,
            text_editor::Binding::Custom(Message::Paste),
        ]));
    }
    if enter && focused {
        return Some(if press.modifiers.shift() {
            text_editor::Binding::Enter
        } else {
            text_editor::Binding::Custom(Message::Submit)
        });
    }
    text_editor::Binding::from_key_press(press)
}

/// The chat window's keyboard shortcuts, wherever the focus is: Ctrl+K
/// finds a conversation, Ctrl+Up and Ctrl+Down go to the previous and
/// next one, PageUp and PageDown scroll the timeline.
pub fn shortcut(key: &keyboard::Key, modifiers: keyboard::Modifiers) -> Option<Message> {
    use keyboard::key::Named;
    match key.as_ref() {
        keyboard::Key::Character("k") if modifiers.command() => Some(Message::Find),
        keyboard::Key::Named(Named::ArrowUp) if modifiers.command() => Some(Message::Step(false)),
        keyboard::Key::Named(Named::ArrowDown) if modifiers.command() => Some(Message::Step(true)),
        keyboard::Key::Named(Named::PageUp) if modifiers.is_empty() => Some(Message::Page(true)),
        keyboard::Key::Named(Named::PageDown) if modifiers.is_empty() => Some(Message::Page(false)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use iced::keyboard::{Key, Modifiers, key::Named};

    use super::{Message, shortcut};

    #[test]
    fn the_shortcuts_are_ctrl_k_ctrl_arrows_and_the_page_keys() {
        let found =
            |key: Key, modifiers| shortcut(&key, modifiers).map(|message| format!("{message:?}"));
        let named = |named| Key::Named(named);
        let as_text = |message: Message| Some(format!("{message:?}"));
        assert_eq!(
            found(Key::Character("k".into()), Modifiers::CTRL),
            as_text(Message::Find)
        );
        assert_eq!(found(Key::Character("k".into()), Modifiers::empty()), None);
        assert_eq!(
            found(named(Named::ArrowDown), Modifiers::CTRL),
            as_text(Message::Step(true))
        );
        assert_eq!(
            found(named(Named::ArrowUp), Modifiers::CTRL),
            as_text(Message::Step(false))
        );
        assert_eq!(found(named(Named::ArrowUp), Modifiers::empty()), None);
        assert_eq!(
            found(named(Named::PageUp), Modifiers::empty()),
            as_text(Message::Page(true))
        );
        assert_eq!(
            found(named(Named::PageDown), Modifiers::empty()),
            as_text(Message::Page(false))
        );
        assert_eq!(found(named(Named::PageUp), Modifiers::SHIFT), None);
    }
}
