//! The first screen: create an identity, or unlock the one in the data
//! directory.

use iced::widget::{button, column, container, progress_bar, text, text_input};
use iced::{Element, Fill, Task};
use sotto_crypto::KdfParams;
use sotto_proto::UserName;
use zeroize::Zeroizing;

use sotto_client::account::{Account, AccountError};
use sotto_client::profile::{Profile, ProfileError, normalize_passphrase};

/// Fewest characters accepted for a new passphrase.
pub const MIN_PASSPHRASE_CHARS: usize = 8;

/// The widget ids, for tests and focus.
pub mod ids {
    /// The name field.
    pub const NAME: &str = "onboarding-name";
    /// The passphrase field.
    pub const PASSPHRASE: &str = "onboarding-passphrase";
    /// The confirmation field.
    pub const CONFIRM: &str = "onboarding-confirm";
}

/// Creating or unlocking.
#[derive(Debug)]
enum Mode {
    Create,
    Unlock,
}

/// The onboarding screen.
#[derive(Debug)]
pub struct Onboarding {
    profile: Profile,
    kdf: KdfParams,
    mode: Mode,
    name: String,
    passphrase: Zeroizing<String>,
    confirm: Zeroizing<String>,
    /// Work under way (key generation, unlocking), and the animation step.
    busy: Option<(&'static str, u32)>,
    error: Option<String>,
}

/// What the onboarding screen does.
#[derive(Clone, Debug)]
pub enum Message {
    /// The name field changed.
    Name(String),
    /// The passphrase field changed.
    Passphrase(String),
    /// The confirmation field changed.
    Confirm(String),
    /// Create the identity.
    Create,
    /// Unlock the identity.
    Unlock,
    /// The account is ready (or not).
    Done(Result<Account, String>),
    /// Animation step while busy.
    Tick,
}

/// What the app should do next.
#[derive(Debug)]
pub enum Action {
    /// Nothing more.
    None,
    /// Run this.
    Run(Task<Message>),
    /// The account is unlocked.
    Unlocked(Account),
}

/// How hard a passphrase looks to guess (a hint, not a guarantee).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Strength {
    /// Fewer than [`MIN_PASSPHRASE_CHARS`] characters: refused.
    TooShort,
    /// Easy to guess.
    Weak,
    /// Acceptable.
    Fair,
    /// Hard to guess.
    Strong,
}

/// A rough strength estimate: length times the size of the alphabet used,
/// with repeated characters counted once; several words count for a lot.
pub fn strength(passphrase: &str) -> Strength {
    let chars: Vec<char> = passphrase.chars().collect();
    if chars.len() < MIN_PASSPHRASE_CHARS {
        return Strength::TooShort;
    }
    let mut distinct = chars.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let mut alphabet = 0u32;
    if chars.iter().any(char::is_ascii_lowercase) {
        alphabet += 26;
    }
    if chars.iter().any(char::is_ascii_uppercase) {
        alphabet += 26;
    }
    if chars.iter().any(char::is_ascii_digit) {
        alphabet += 10;
    }
    if chars.iter().any(|c| !c.is_ascii_alphanumeric()) {
        alphabet += 33;
    }
    let effective = distinct.len().min(chars.len()).max(chars.len() / 2);
    let bits = effective as f64 * f64::from(alphabet.max(2)).log2();
    let words = passphrase
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 3)
        .count();
    if words >= 4 || bits >= 75.0 {
        Strength::Strong
    } else if bits >= 50.0 {
        Strength::Fair
    } else {
        Strength::Weak
    }
}

impl Onboarding {
    /// The screen for `profile`: unlock if it holds an identity, else create.
    /// New identities are protected with `kdf`.
    pub fn new(profile: Profile, kdf: KdfParams) -> Self {
        let mode = if profile.has_identity() {
            Mode::Unlock
        } else {
            Mode::Create
        };
        Self {
            profile,
            kdf,
            mode,
            name: String::new(),
            passphrase: Zeroizing::default(),
            confirm: Zeroizing::default(),
            busy: None,
            error: None,
        }
    }

    /// Puts the cursor in the first field.
    pub fn first_field<T: Send + 'static>(&self) -> Task<T> {
        iced::widget::operation::focus(match self.mode {
            Mode::Create => ids::NAME,
            Mode::Unlock => ids::PASSPHRASE,
        })
    }

    /// Whether work is under way (the app animates the progress bar).
    pub fn is_busy(&self) -> bool {
        self.busy.is_some()
    }

    /// Handles a message.
    pub fn update(&mut self, message: Message) -> Action {
        match message {
            Message::Name(name) => self.name = name,
            Message::Passphrase(passphrase) => *self.passphrase = passphrase,
            Message::Confirm(confirm) => *self.confirm = confirm,
            Message::Tick => {
                if let Some((_, step)) = &mut self.busy {
                    *step = step.wrapping_add(1);
                }
            }
            Message::Create => {
                if self.busy.is_some() {
                    return Action::None;
                }
                let name = match self.create_problem() {
                    Ok(name) => name,
                    Err(problem) => {
                        self.error = Some(problem);
                        return Action::None;
                    }
                };
                self.error = None;
                self.busy = Some(("Generating your keys: this takes a few seconds", 0));
                let profile = self.profile.clone();
                let passphrase = normalize_passphrase(&self.passphrase);
                let kdf = self.kdf;
                return Action::Run(Task::perform(
                    async move {
                        Account::create(&profile, name, passphrase, kdf)
                            .await
                            .map_err(|e| format!("could not create the identity: {e}"))
                    },
                    Message::Done,
                ));
            }
            Message::Unlock => {
                if self.busy.is_some() || self.passphrase.is_empty() {
                    return Action::None;
                }
                self.error = None;
                self.busy = Some(("Unlocking", 0));
                let profile = self.profile.clone();
                let passphrase = normalize_passphrase(&self.passphrase);
                return Action::Run(Task::perform(
                    async move {
                        Account::unlock(&profile, passphrase)
                            .await
                            .map_err(|e| match e {
                                AccountError::Profile(ProfileError::Crypto(
                                    sotto_crypto::Error::WrongPassphrase,
                                )) => {
                                    "Wrong passphrase. Try again (letter case matters).".to_owned()
                                }
                                e => format!("could not unlock: {e}"),
                            })
                    },
                    Message::Done,
                ));
            }
            Message::Done(result) => {
                self.busy = None;
                match result {
                    Ok(account) => {
                        self.passphrase = Zeroizing::default();
                        self.confirm = Zeroizing::default();
                        return Action::Unlocked(account);
                    }
                    Err(e) => {
                        self.passphrase = Zeroizing::default();
                        self.confirm = Zeroizing::default();
                        self.error = Some(e);
                    }
                }
            }
        }
        Action::None
    }

    /// Why the create form cannot be submitted yet, or the name.
    fn create_problem(&self) -> Result<UserName, String> {
        let name: UserName = self
            .name
            .trim()
            .parse()
            .map_err(|e| format!("That name cannot be used: {e}"))?;
        if strength(&self.passphrase) == Strength::TooShort {
            return Err(format!(
                "Choose a passphrase of at least {MIN_PASSPHRASE_CHARS} characters."
            ));
        }
        if *self.passphrase != *self.confirm {
            return Err("The two passphrases differ.".to_owned());
        }
        Ok(name)
    }

    /// The screen.
    pub fn view(&self) -> Element<'_, Message> {
        let form = match self.mode {
            Mode::Create => self.create_view(),
            Mode::Unlock => self.unlock_view(),
        };
        let mut content = column![form].spacing(16).max_width(520);
        if let Some((what, step)) = self.busy {
            // No measurable progress: a bar that sweeps while work runs.
            let position = (step % 40) as f32 / 39.0 * 100.0;
            content = content.push(
                column![
                    text(format!("{what}…")),
                    progress_bar(0.0..=100.0, position)
                ]
                .spacing(6),
            );
        }
        if let Some(error) = &self.error {
            content = content.push(text(error).style(text::danger));
        }
        container(content).padding(40).center(Fill).into()
    }

    fn create_view(&self) -> Element<'_, Message> {
        let busy = self.busy.is_some();
        let hint = match strength(&self.passphrase) {
            _ if self.passphrase.is_empty() => text(format!(
                "At least {MIN_PASSPHRASE_CHARS} characters; a few random words are easiest to remember."
            ))
            .style(text::secondary),
            Strength::TooShort => text(format!(
                "Too short: at least {MIN_PASSPHRASE_CHARS} characters."
            ))
            .style(text::danger),
            Strength::Weak => {
                text("Weak: easy to guess. Add words or characters.").style(text::danger)
            }
            Strength::Fair => text("Fair. Longer is better.").style(text::warning),
            Strength::Strong => text("Strong.").style(text::success),
        }
        .size(13);
        let mismatch = !self.confirm.is_empty() && *self.passphrase != *self.confirm;
        let ready = self.create_problem().is_ok() && !busy;
        column![
            text("Welcome to sotto").size(30),
            text(
                "Create your identity: a key pair made on this computer. Its secret half \
                 never leaves it and is stored encrypted under your passphrase. \
                 Your name is how others find you on a relay."
            ),
            text_input("Your name (letters, digits, - and _)", &self.name)
                .id(ids::NAME)
                .on_input_maybe((!busy).then_some(Message::Name))
                .padding(10),
            text_input("Passphrase", &self.passphrase)
                .id(ids::PASSPHRASE)
                .secure(true)
                .on_input_maybe((!busy).then_some(Message::Passphrase))
                .padding(10),
            hint,
            text_input("Passphrase again", &self.confirm)
                .id(ids::CONFIRM)
                .secure(true)
                .on_input_maybe((!busy).then_some(Message::Confirm))
                .on_submit_maybe(ready.then_some(Message::Create))
                .padding(10),
            text(if mismatch {
                "The two passphrases differ."
            } else {
                " "
            })
            .size(13)
            .style(text::danger),
            button(text("Create identity"))
                .padding([8, 16])
                .style(button::primary)
                .on_press_maybe(ready.then_some(Message::Create)),
            text(format!("Data directory: {}", self.profile.dir().display()))
                .size(12)
                .style(text::secondary),
        ]
        .spacing(10)
        .into()
    }

    fn unlock_view(&self) -> Element<'_, Message> {
        let ready = !self.passphrase.is_empty() && self.busy.is_none();
        column![
            text("Unlock sotto").size(30),
            text("Your identity is encrypted under your passphrase."),
            text_input("Passphrase", &self.passphrase)
                .id(ids::PASSPHRASE)
                .secure(true)
                .on_input_maybe(self.busy.is_none().then_some(Message::Passphrase))
                .on_submit_maybe(ready.then_some(Message::Unlock))
                .padding(10),
            button(text("Unlock"))
                .padding([8, 16])
                .style(button::primary)
                .on_press_maybe(ready.then_some(Message::Unlock)),
            text(format!(
                "Identity: {}",
                self.profile.identity_path().display()
            ))
            .size(12)
            .style(text::secondary),
        ]
        .spacing(10)
        .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strength_grows_with_length_and_variety() {
        assert_eq!(strength(""), Strength::TooShort);
        assert_eq!(strength("abcdefg"), Strength::TooShort);
        assert_eq!(strength("aaaaaaaaaaaa"), Strength::Weak);
        assert_eq!(strength("password"), Strength::Weak);
        assert_eq!(strength("Tr0ub4dor&3x"), Strength::Fair);
        assert_eq!(strength("correct horse battery staple"), Strength::Strong);
        assert_eq!(strength("kX9#mQ2$vL7@pR4!"), Strength::Strong);
    }
}
