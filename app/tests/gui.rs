//! The desktop app, driven as a user drives it: iced_test's simulator
//! clicks and types in the app's real view (rendered headless with
//! tiny-skia, no GPU), its messages go through the app's real `update`, and
//! the tasks `update` returns (key generation, unlocking, the session with
//! a real relay on 127.0.0.1) run here, in place of iced's runtime. Peers
//! are real clients of the library (`sotto_testkit::Peer`, fixture
//! identities), as `sotto-cli` is.
//!
//! One file (about 1,400 lines) on purpose: each test binary links iced,
//! which costs this 2-core machine tens of seconds and hundreds of
//! megabytes per binary.
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unreachable
)] // tests

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::{BoxStream, SelectAll};
use sotto_app::chat::ids as chat_ids;
use sotto_app::connect::ids as connect_ids;
use sotto_app::onboarding::ids as onboarding_ids;
use sotto_app::{App, Message, Options};
use sotto_client::account::Account;
use sotto_client::profile::{IDENTITY_FILE, Profile};
use sotto_client::session::{Command, Problem, ProblemCode, TrustLevel, Update};
use sotto_crypto::KdfParams;
use sotto_proto::RelayAddress;
use sotto_testkit::{LocalRelay, Peer, account, dm, lobby, user};

use iced_test::core::keyboard::key::Named;
use iced_test::core::keyboard::{Key, Modifiers};
use iced_test::runtime::Action;
use iced_test::runtime::task::{Task, into_stream};
use iced_test::selector::{self, Candidate, Target};
use iced_test::{Selector, Simulator, simulator};

/// How long any expected change may take.
const PATIENCE: Duration = Duration::from_secs(30);
/// The passphrase of every identity the tests create.
const PASSPHRASE: &str = "correct horse battery staple";

/// A relay on 127.0.0.1:0 (data and certificate in `dir`) that runs until
/// the test ends.
async fn relay(dir: &Path) -> RelayAddress {
    LocalRelay::start(dir, 0).detach()
}

/// Every text in `view`, in order.
fn texts_of<'a, M: 'a>(
    view: iced_test::core::Element<'a, M, iced::Theme, iced::Renderer>,
) -> Vec<String> {
    texts_in(simulator(view))
}

/// Every text `ui` shows.
fn texts_in<M>(mut ui: Simulator<'_, M>) -> Vec<String> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let _ = ui.find(move |candidate: Candidate<'_>| {
        if let Candidate::Text { content, .. } = candidate {
            sink.lock().unwrap().push(content.to_owned());
        }
        None::<()>
    });
    seen.lock().unwrap().clone()
}

/// The app without a window: its view in a simulator, its tasks here.
struct Gui {
    app: App,
    pending: SelectAll<BoxStream<'static, Action<Message>>>,
}

/// Text containing `needle`.
fn containing(needle: &str) -> impl Selector<Output = String> + Send + use<> {
    let needle = needle.to_owned();
    move |candidate: Candidate<'_>| match candidate {
        Candidate::Text { content, .. } if content.contains(&needle) => Some(content.to_owned()),
        _ => None,
    }
}

impl Gui {
    /// The app on `dir`, once it has opened the data directory.
    async fn start(dir: &Path) -> Gui {
        let (app, task) = App::new(Options {
            data_dir: Some(dir.to_path_buf()),
            kdf: KdfParams::INSECURE_FOR_TESTS,
        });
        let mut gui = Gui {
            app,
            pending: SelectAll::new(),
        };
        assert_eq!(gui.app.screen_name(), "starting");
        gui.run(task);
        gui.until("the data directory", |gui| {
            gui.app.screen_name() != "starting"
        })
        .await;
        gui
    }

    fn run(&mut self, task: Task<Message>) {
        if let Some(stream) = into_stream(task) {
            self.pending.push(stream);
        }
    }

    fn update(&mut self, message: Message) {
        let task = self.app.update(message);
        self.run(task);
    }

    /// Lets `act` use the current view, then applies what it produced.
    fn interact<R>(&mut self, act: impl FnOnce(&mut Simulator<'_, Message>) -> R) -> R {
        self.interact_in(None, act)
    }

    /// The current view in a simulated window of `size` (else the
    /// simulator's default, 1024 by 768).
    fn ui(&self, size: Option<(f32, f32)>) -> Simulator<'_, Message> {
        match size {
            Some(size) => {
                Simulator::with_size(iced_test::core::Settings::default(), size, self.app.view())
            }
            None => simulator(self.app.view()),
        }
    }

    /// [`Gui::interact`] in a window of `size` (else the default).
    fn interact_in<R>(
        &mut self,
        size: Option<(f32, f32)>,
        act: impl FnOnce(&mut Simulator<'_, Message>) -> R,
    ) -> R {
        let (result, messages) = {
            let mut ui = self.ui(size);
            let result = act(&mut ui);
            (result, ui.into_messages().collect::<Vec<_>>())
        };
        for message in messages {
            self.update(message);
        }
        result
    }

    fn click(&mut self, label: &str) {
        self.click_in(None, label);
    }

    /// Clicks `label` in a window of `size` (else the default).
    fn click_in(&mut self, size: Option<(f32, f32)>, label: &str) {
        self.interact_in(size, |ui| {
            ui.click(label)
                .unwrap_or_else(|e| panic!("click {label:?}: {e}"));
        });
    }

    /// Replaces the content of the text field `id` with `text`, as typed.
    fn replace(&mut self, id: &'static str, text: &str) {
        self.interact(|ui| {
            let target = ui
                .click(selector::id(id))
                .unwrap_or_else(|e| panic!("field {id}: {e}"));
            let len = match target {
                Target::TextInput { content, .. } => content.chars().count(),
                _ => 0,
            };
            ui.tap_key(Key::Named(Named::End));
            for _ in 0..len {
                ui.tap_key(Key::Named(Named::Backspace));
            }
            ui.typewrite(text);
        });
    }

    /// Types `text` at the end of the field `id`.
    fn type_into(&mut self, id: &'static str, text: &str) {
        self.interact(|ui| {
            ui.click(selector::id(id))
                .unwrap_or_else(|e| panic!("field {id}: {e}"));
            ui.tap_key(Key::Named(Named::End));
            ui.typewrite(text);
        });
    }

    /// Presses `key` with `modifiers` in the field `id`.
    fn press(&mut self, id: &'static str, key: Key, modifiers: Modifiers) {
        use iced_test::core::keyboard::{self, Location, key::NativeCode, key::Physical};
        self.interact(|ui| {
            ui.click(selector::id(id))
                .unwrap_or_else(|e| panic!("field {id}: {e}"));
            ui.simulate([
                iced_test::core::Event::Keyboard(keyboard::Event::KeyPressed {
                    key: key.clone(),
                    modified_key: key.clone(),
                    physical_key: Physical::Unidentified(NativeCode::Unidentified),
                    location: Location::Standard,
                    modifiers,
                    repeat: false,
                    text: None,
                }),
                iced_test::core::Event::Keyboard(keyboard::Event::KeyReleased {
                    key: key.clone(),
                    modified_key: key,
                    physical_key: Physical::Unidentified(NativeCode::Unidentified),
                    location: Location::Standard,
                    modifiers,
                }),
            ]);
        });
    }

    /// Every text on screen in a window of `width` by 720.
    fn texts_at(&self, width: f32) -> Vec<String> {
        texts_in(self.ui(Some((width, 720.0))))
    }

    /// Clicks `label` in a window of `width` by 720.
    fn click_at(&mut self, width: f32, label: &str) {
        self.click_in(Some((width, 720.0)), label);
    }

    /// The conversation on screen, as the window names it.
    fn current(&self) -> String {
        self.app
            .chat()
            .unwrap()
            .current()
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    /// Presses Enter in the field `id`.
    fn enter(&mut self, id: &'static str) {
        self.interact(|ui| {
            ui.click(selector::id(id))
                .unwrap_or_else(|e| panic!("field {id}: {e}"));
            ui.tap_key(Key::Named(Named::Enter));
        });
    }

    /// Whether some text on screen contains `needle`.
    fn shows(&self, needle: &str) -> bool {
        simulator(self.app.view()).find(containing(needle)).is_ok()
    }

    /// Every text on screen, for failure messages.
    fn texts(&self) -> Vec<String> {
        texts_of(self.app.view())
    }

    /// What the connect screen's address field holds.
    fn address_field(&self) -> String {
        match simulator(self.app.view()).find(selector::id(connect_ids::ADDRESS)) {
            Ok(Target::TextInput { content, .. }) => content,
            other => panic!("no address field: {other:?}"),
        }
    }

    /// Whether the widget `id` is on screen.
    fn has(&self, id: &'static str) -> bool {
        simulator(self.app.view()).find(selector::id(id)).is_ok()
    }

    /// Runs the app's tasks until `done`.
    async fn until(&mut self, what: &str, done: impl Fn(&Gui) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.pending.next()).await {
                Ok(Some(Action::Output(message))) => self.update(message),
                Ok(Some(_)) => {}
                Ok(None) => panic!(
                    "waiting for {what}: nothing left to run on screen {}: {:#?}",
                    self.app.screen_name(),
                    self.texts()
                ),
                Err(_) => panic!(
                    "waiting for {what}: timed out on screen {}: {:#?}",
                    self.app.screen_name(),
                    self.texts()
                ),
            }
        }
    }

    async fn until_shows(&mut self, needle: &str) {
        self.until(needle, |gui| gui.shows(needle)).await;
    }

    async fn until_screen(&mut self, screen: &str) {
        self.until(screen, |gui| gui.app.screen_name() == screen)
            .await;
    }
}

/// An identity made by the library (fast test costs), unlocked in the app.
async fn unlocked(dir: &Path, name: &str) -> Gui {
    let profile = Profile::open(dir).unwrap();
    Account::create(
        &profile,
        name.parse().unwrap(),
        PASSPHRASE.to_owned().into(),
        KdfParams::INSECURE_FOR_TESTS,
    )
    .await
    .unwrap();
    let mut gui = Gui::start(dir).await;
    assert!(gui.shows("Unlock sotto"));
    gui.type_into(onboarding_ids::PASSPHRASE, PASSPHRASE);
    gui.enter(onboarding_ids::PASSPHRASE);
    gui.until_screen("connect").await;
    gui
}

/// Connects the app to `relay` from the connect screen.
async fn connect(gui: &mut Gui, relay: &RelayAddress, name: &str) {
    gui.replace(connect_ids::ADDRESS, &relay.to_string());
    gui.click("Connect");
    assert_eq!(gui.app.screen_name(), "chat");
    gui.until_shows(&format!("Connected to {} as {name}", relay.authority()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_an_identity_then_unlock_it() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("alice");
    let mut gui = Gui::start(&dir).await;
    assert!(gui.shows("Welcome to sotto"));

    // The button does nothing until the form is complete.
    gui.click("Create identity");
    assert_eq!(gui.app.screen_name(), "onboarding");
    gui.type_into(onboarding_ids::NAME, "alice");
    gui.type_into(onboarding_ids::PASSPHRASE, "short");
    assert!(gui.shows("Too short"));
    gui.type_into(onboarding_ids::PASSPHRASE, " but now long");
    assert!(gui.shows("Weak") || gui.shows("Fair") || gui.shows("Strong"));
    gui.type_into(onboarding_ids::CONFIRM, "short but");
    assert!(gui.shows("The two passphrases differ."));
    gui.click("Create identity");
    assert_eq!(gui.app.screen_name(), "onboarding");
    gui.type_into(onboarding_ids::CONFIRM, " now long");
    assert!(!gui.shows("The two passphrases differ."));

    gui.click("Create identity");
    // Key generation runs off the UI thread: the click returned at once,
    // the screen shows progress, and the identity is not written yet.
    assert!(gui.shows("Generating your keys"));
    assert!(!dir.join(IDENTITY_FILE).exists());
    gui.until_screen("connect").await;
    assert!(dir.join(IDENTITY_FILE).exists());
    assert!(gui.shows("Signed in as alice"));

    // Next start: unlock. A wrong passphrase is a clear error.
    drop(gui);
    let mut gui = Gui::start(&dir).await;
    assert!(gui.shows("Unlock sotto"));
    gui.type_into(onboarding_ids::PASSPHRASE, "not the passphrase");
    gui.enter(onboarding_ids::PASSPHRASE);
    gui.until_shows("Wrong passphrase").await;
    assert_eq!(gui.app.screen_name(), "onboarding");
    gui.type_into(onboarding_ids::PASSPHRASE, "short but now long");
    gui.click("Unlock");
    gui.until_screen("connect").await;
    assert!(gui.shows("Signed in as alice"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_that_cannot_be_opened_is_explained() {
    let temp = tempfile::tempdir().unwrap();
    let not_a_directory = temp.path().join("file");
    std::fs::write(&not_a_directory, b"").unwrap();
    let gui = Gui::start(&not_a_directory.join("sotto")).await;
    assert_eq!(gui.app.screen_name(), "broken");
    assert!(gui.shows("sotto cannot start"), "{:#?}", gui.texts());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_shows_the_pinned_certificate_and_the_connection_state() {
    let temp = tempfile::tempdir().unwrap();
    let relay = relay(&temp.path().join("relay")).await;
    let mut gui = unlocked(&temp.path().join("alice"), "alice").await;
    assert!(gui.shows("None yet: relays are saved on the first connection."));

    gui.replace(connect_ids::ADDRESS, "sotto://not-an-address");
    assert!(gui.shows("Not a relay address"));
    gui.click("Connect");
    assert_eq!(gui.app.screen_name(), "connect");

    // A relay presenting another certificate than its address pins: the
    // session fails, and the connect screen says why, naming both, that it
    // may be an attack, and keeps the address typed.
    let mut impostor = relay.clone();
    impostor.fingerprint = [9; 32];
    gui.replace(connect_ids::ADDRESS, &impostor.to_string());
    gui.click("Connect");
    gui.until_screen("connect").await;
    assert!(gui.shows("This may be an attack"), "{:#?}", gui.texts());
    assert!(gui.shows(&relay.fingerprint_text()), "{:#?}", gui.texts());
    assert!(
        gui.shows(&impostor.fingerprint_text()),
        "{:#?}",
        gui.texts()
    );
    assert_eq!(gui.address_field(), impostor.to_string());

    gui.replace(connect_ids::ADDRESS, &relay.to_string());
    assert!(gui.shows("Key fingerprint (SHA-256 of the relay's public key):"));
    assert!(gui.shows(&relay.fingerprint_text()));
    assert!(gui.shows("First connection to this relay"));
    gui.click("Connect");
    assert!(gui.shows(&format!("Connecting to {}", relay.authority())));
    gui.until_shows(&format!("Connected to {} as alice", relay.authority()))
        .await;
    gui.until_shows("You joined #lobby").await;

    gui.click("Disconnect");
    assert_eq!(gui.app.screen_name(), "connect");
    // The relay is saved, with its certificate.
    let mut other = relay.clone();
    other.fingerprint = [7; 32];
    gui.replace(connect_ids::ADDRESS, &other.to_string());
    assert!(gui.shows("Refusing to connect"));
    assert!(gui.shows(&relay.fingerprint_text()));
    gui.click("Connect");
    assert_eq!(gui.app.screen_name(), "connect");
    gui.click(&relay.authority());
    assert!(gui.shows("You have connected to this relay before"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_relay_key_is_refused_and_replaced_only_on_purpose() {
    let temp = tempfile::tempdir().unwrap();
    let relay = relay(&temp.path().join("relay")).await;
    let alice_dir = temp.path().join("alice");
    let mut gui = unlocked(&alice_dir, "alice").await;
    connect(&mut gui, &relay, "alice").await;
    gui.click("Disconnect");
    assert_eq!(gui.app.screen_name(), "connect");
    let servers = || std::fs::read_to_string(alice_dir.join("servers.txt")).unwrap();
    let log = alice_dir.join("relay-pins.log");
    assert!(servers().contains(&relay.to_string()));

    // An address for the same relay with another key, and no hand-over:
    // refused, naming both keys; Connect does nothing.
    let mut other = relay.clone();
    other.fingerprint = [7; 32];
    gui.replace(connect_ids::ADDRESS, &other.to_string());
    assert!(gui.shows("Refusing to connect"), "{:#?}", gui.texts());
    assert!(gui.shows(&relay.fingerprint_text()));
    assert!(gui.shows(&other.fingerprint_text()));
    gui.click("Connect");
    assert_eq!(gui.app.screen_name(), "connect");

    // Replacing asks again; keeping the saved key changes nothing.
    gui.click("Replace the saved key…");
    assert!(gui.shows("Do this only if the operator confirmed this key"));
    gui.click("Keep the saved key");
    assert!(!gui.shows("Do this only if the operator confirmed this key"));
    assert!(servers().contains(&relay.to_string()));
    assert!(!log.exists());

    // Confirmed: the saved key is replaced and the change recorded.
    gui.click("Replace the saved key…");
    gui.click("Yes, replace the saved key");
    assert!(gui.shows("The saved key of"), "{:#?}", gui.texts());
    let saved = servers();
    assert!(saved.contains(&other.to_string()), "{saved}");
    assert!(!saved.contains(&relay.to_string()), "{saved}");
    let recorded = std::fs::read_to_string(&log).unwrap();
    assert_eq!(recorded.lines().count(), 1, "{recorded}");
    assert!(recorded.contains("replaced-by-user"), "{recorded}");
    assert!(recorded.contains(&relay.fingerprint_text()), "{recorded}");
    assert!(recorded.contains(&other.fingerprint_text()), "{recorded}");

    // The real relay does not hold the new key: refused when connecting,
    // the address kept.
    gui.click("Connect");
    gui.until_screen("connect").await;
    assert!(gui.shows("This may be an attack"), "{:#?}", gui.texts());
    assert_eq!(gui.address_field(), other.to_string());

    // Back to the real key, on purpose again: it connects.
    gui.replace(connect_ids::ADDRESS, &relay.to_string());
    assert!(gui.shows("Refusing to connect"));
    gui.click("Replace the saved key…");
    gui.click("Yes, replace the saved key");
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 2);
    connect(&mut gui, &relay, "alice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_with_a_peer_then_verify_them_by_safety_number() {
    let temp = tempfile::tempdir().unwrap();
    let relay = relay(&temp.path().join("relay")).await;
    let mut gui = unlocked(&temp.path().join("alice"), "alice").await;
    connect(&mut gui, &relay, "alice").await;
    let mut bob = Peer::join(temp.path(), "bob", &relay).await;
    gui.until_shows("bob joined #lobby").await;
    // The member list, live, with trust badges; the new contact's key.
    gui.until_shows("Members · 2").await;
    gui.until_shows("New contact bob: key").await;
    assert!(gui.shows("alice (you)"));
    assert!(gui.shows("unverified"));

    // Enter sends.
    gui.type_into(chat_ids::COMPOSER, "hello bob, from the app");
    gui.enter(chat_ids::COMPOSER);
    let got = bob
        .expect_message(&lobby(), "hello bob, from the app")
        .await;
    assert_eq!(got.from, "alice");
    gui.until_shows("hello bob, from the app").await;

    bob.send(lobby(), "hi alice, from a peer");
    gui.until_shows("hi alice, from a peer").await;

    // The composer understands the CLI's commands.
    gui.type_into(chat_ids::COMPOSER, "/msg bob just for you");
    gui.enter(chat_ids::COMPOSER);
    let direct = bob.expect_message(&dm("alice"), "just for you").await;
    assert_eq!(direct.from, "alice");
    assert!(gui.shows("@bob"));
    gui.type_into(chat_ids::COMPOSER, "/frobnicate");
    gui.enter(chat_ids::COMPOSER);
    assert!(gui.shows("unknown command"));

    // Verification: the app shows the same number bob's client shows.
    bob.command(Command::SafetyNumber(user("alice")));
    let Update::SafetyNumber { safety_number, .. } = bob
        .expect(|u| matches!(u, Update::SafetyNumber { .. }))
        .await
    else {
        unreachable!()
    };
    let digits = safety_number.digits().to_owned();
    gui.click("Verify");
    gui.until_shows("Your safety number").await;
    let groups: Vec<&str> = (0..12).map(|i| &digits[i * 5..i * 5 + 5]).collect();
    for line in groups.chunks(4) {
        assert!(gui.shows(&line.join("  ")), "missing {line:?}");
    }
    gui.click("Mark as verified");
    gui.until_shows("bob is verified.").await;
    gui.click("Close");
    gui.until_shows("You verified bob").await;
    assert!(gui.shows("verified"));
    assert!(!gui.shows("unverified"));

    // And bob verifies alice with the digits.
    bob.command(Command::Verify {
        name: user("alice"),
        safety_number: digits,
    });
    bob.expect(
        |u| matches!(u, Update::Trust { name, trust: TrustLevel::Verified } if name == "alice"),
    )
    .await;
}

/// A verified contact's changed key blocks their conversation (a banner
/// with both keys, no composer) and puts a banner in the rooms shared
/// with them, until the user decides; everything else goes on: the room
/// is written in (they are left out), Disconnect is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_key_blocks_only_that_contacts_conversation_until_the_user_decides() {
    let temp = tempfile::tempdir().unwrap();
    let first = relay(&temp.path().join("relay-1")).await;
    let mut gui = unlocked(&temp.path().join("alice"), "alice").await;
    connect(&mut gui, &first, "alice").await;
    let mut bob = Peer::join(temp.path(), "bob", &first).await;
    gui.until_shows("bob joined #lobby").await;
    // Verify bob from the composer: /verify opens the screen.
    gui.type_into(chat_ids::COMPOSER, "/verify bob");
    gui.enter(chat_ids::COMPOSER);
    gui.until_shows("Your safety number").await;
    gui.click("Mark as verified");
    gui.until_shows("bob is verified.").await;
    gui.click("Close");
    gui.type_into(chat_ids::COMPOSER, "/msg bob before");
    gui.enter(chat_ids::COMPOSER);
    bob.expect_message(&dm("alice"), "before").await;
    drop(bob);
    gui.click("Disconnect");

    // On another relay, someone else holds the name "bob".
    let second = relay(&temp.path().join("relay-2")).await;
    let mallory_dir = temp.path().join("mallory");
    let mut mallory = Peer::connect(account(&mallory_dir, "bob", "mallory").await, &second).await;
    let mut carol = Peer::join(temp.path(), "carol", &second).await;
    connect(&mut gui, &second, "alice").await;
    gui.update(Message::Chat(sotto_app::chat::Message::Select(lobby())));
    gui.until_shows("bob's key has changed").await;
    let chat = gui.app.chat().unwrap();
    assert_eq!(chat.key_changes().len(), 1);
    assert!(!chat.is_blocked(), "the room is not blocked");
    assert!(gui.shows("what you write here is not sent to bob"));
    assert!(gui.has(chat_ids::COMPOSER));
    assert!(gui.shows("Disconnect"));
    carol
        .expect_members("lobby", &["alice", "bob", "carol"])
        .await;
    gui.type_into(chat_ids::COMPOSER, "the room goes on");
    gui.enter(chat_ids::COMPOSER);
    carol.expect_message(&lobby(), "the room goes on").await;

    // bob's own conversation: blocked, with both keys.
    gui.update(Message::Chat(sotto_app::chat::Message::Select(dm("bob"))));
    assert!(gui.app.chat().unwrap().is_blocked());
    assert!(!gui.has(chat_ids::COMPOSER), "the composer is blocked");
    assert!(gui.shows("New key") && gui.shows("Verified key"));
    assert!(gui.shows("before"), "its history stays readable");
    assert!(gui.shows("Disconnect"));

    // Accepting needs explicit consent.
    gui.click("Accept the new key without verifying");
    assert!(gui.app.chat().unwrap().is_blocked());
    // "Verify the new key" shows the number with the new key, and back.
    gui.click("Verify the new key");
    gui.until_shows("NEW key").await;
    gui.click("Close");
    assert!(gui.shows("bob's key has changed"));
    gui.click("I understand that I have not verified bob's new key");
    gui.click("Accept the new key without verifying");
    gui.until("the decision", |gui| !gui.app.chat().unwrap().is_blocked())
        .await;
    assert!(gui.has(chat_ids::COMPOSER));
    assert!(gui.app.chat().unwrap().key_changes().is_empty());
    gui.until_shows("You accepted bob's new key without verifying it")
        .await;
    assert!(!gui.shows("bob's key has changed"), "the banner is gone");

    // Now messages reach the new key.
    gui.type_into(chat_ids::COMPOSER, "after consent");
    gui.enter(chat_ids::COMPOSER);
    mallory.expect_message(&dm("alice"), "after consent").await;
}

/// A chat window on a fake relay address, fed a session's updates by hand.
async fn offline_chat(dir: &Path) -> sotto_app::chat::Chat {
    let profile = Profile::open(dir).unwrap();
    let account = Account::create(
        &profile,
        "alice".parse().unwrap(),
        PASSPHRASE.to_owned().into(),
        KdfParams::INSECURE_FOR_TESTS,
    )
    .await
    .unwrap();
    let relay = RelayAddress {
        host: "127.0.0.1".into(),
        port: 7447,
        fingerprint: [1; 32],
        alternates: Vec::new(),
    };
    sotto_app::chat::Chat::new(account, relay, OFFLINE_SESSION)
}

/// The session generation of [`offline_chat`].
const OFFLINE_SESSION: u64 = 7;

/// Hands `update` to `chat` as its session would.
fn feed(chat: &mut sotto_app::chat::Chat, update: Update) -> sotto_app::chat::Action {
    use sotto_app::chat::Message as ChatMessage;
    chat.update(ChatMessage::Session(OFFLINE_SESSION, Box::new(update)))
}

/// Scrolls the timeline of `view` all the way up; returns the messages.
fn scroll_to_the_top<M: Clone>(
    view: iced_test::core::Element<'_, M, iced::Theme, iced::Renderer>,
) -> Vec<M> {
    let mut ui = simulator(view);
    let timeline = ui.find(selector::id(chat_ids::TIMELINE)).unwrap();
    ui.point_at(timeline.visible_bounds().unwrap().center());
    ui.simulate([iced_test::core::Event::Mouse(
        iced_test::core::mouse::Event::WheelScrolled {
            delta: iced_test::core::mouse::ScrollDelta::Pixels { x: 0.0, y: 1e6 },
        },
    )]);
    ui.into_messages().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_history_pages_back_and_jumps_to_the_newest() {
    use sotto_client::session::{self, Chat as Conversation, TrustLevel, Update};
    use sotto_crypto::Fingerprint;
    use sotto_proto::RoomName;

    let temp = tempfile::tempdir().unwrap();
    let mut chat = offline_chat(temp.path()).await;
    let history = (1..=1000u64)
        .map(|i| session::Message {
            chat: Conversation::Room(RoomName::lobby()),
            from: "bob".parse().unwrap(),
            fingerprint: Fingerprint([2; 32]),
            trust: TrustLevel::Unverified,
            outgoing: false,
            seq: i,
            sent_at_ms: 0,
            received_at_ms: 0,
            late: false,
            position: (i, 1 << 31),
            text: format!("history line {i}"),
            delivery: None,
            expires_at_ms: None,
            file: None,
        })
        .collect();
    for update in [
        Update::Joined {
            room: RoomName::lobby(),
        },
        Update::History {
            chat: Conversation::Room(RoomName::lobby()),
            messages: history,
        },
    ] {
        let _ = feed(&mut chat, update);
    }
    let shown =
        |chat: &sotto_app::chat::Chat, line: &str| texts_of(chat.view()).iter().any(|t| t == line);
    // The newest page, not the whole history.
    assert!(shown(&chat, "history line 1000") && shown(&chat, "history line 901"));
    assert!(!shown(&chat, "history line 900"));
    // Scrolling to the top of the window shows older messages, a page at a
    // time; the window never holds more than 200.
    for message in scroll_to_the_top(chat.view()) {
        let _ = chat.update(message);
    }
    assert!(shown(&chat, "history line 801") && shown(&chat, "history line 1000"));
    for message in scroll_to_the_top(chat.view()) {
        let _ = chat.update(message);
    }
    assert!(shown(&chat, "history line 701"));
    assert!(!shown(&chat, "history line 1000"));
    assert!(
        texts_of(chat.view())
            .iter()
            .filter(|t| t.starts_with("history line"))
            .count()
            <= 200
    );
    // Back to the present in one click.
    let messages = {
        let mut ui = simulator(chat.view());
        ui.click("Jump to the newest messages").unwrap();
        ui.into_messages().collect::<Vec<_>>()
    };
    for message in messages {
        let _ = chat.update(message);
    }
    assert!(shown(&chat, "history line 1000"));
    assert!(!shown(&chat, "Jump to the newest messages"));
}

/// The chat window fed a session's updates directly: what each warning
/// looks like, and messages in their sender's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_forgeries_and_late_messages_are_shown_as_they_are() {
    use sotto_app::chat::Message as ChatMessage;
    use sotto_client::session::{self, Chat as Conversation, Member, TrustLevel, Update};
    use sotto_crypto::Fingerprint;
    use sotto_proto::RoomName;

    let temp = tempfile::tempdir().unwrap();
    let mut chat = offline_chat(temp.path()).await;
    let lobby = Conversation::Room(RoomName::lobby());
    let bob = Fingerprint([2; 32]);
    let mut feed = |generation: u64, update: Update| {
        let _ = chat.update(ChatMessage::Session(generation, Box::new(update)));
    };
    let message = |seq: u64, position: (u64, u32), text: &str| {
        Update::Message(session::Message {
            chat: Conversation::Room(RoomName::lobby()),
            from: "bob".parse().unwrap(),
            fingerprint: bob,
            trust: TrustLevel::Unverified,
            outgoing: false,
            seq,
            sent_at_ms: 0,
            received_at_ms: 0,
            late: position.1 != 1 << 31,
            position,
            text: text.into(),
            delivery: None,
            expires_at_ms: None,
            file: None,
        })
    };
    feed(
        7,
        Update::Joined {
            room: RoomName::lobby(),
        },
    );
    feed(
        7,
        Update::Members {
            room: RoomName::lobby(),
            members: vec![Member {
                name: "bob".parse().unwrap(),
                fingerprint: Some(bob),
                trust: TrustLevel::Unverified,
                online: true,
            }],
        },
    );
    feed(7, message(1, (1, 1 << 31), "first"));
    feed(7, message(3, (2, 1 << 31), "third"));
    feed(
        7,
        Update::Missing {
            chat: lobby.clone(),
            from: "bob".parse().unwrap(),
            count: 1,
        },
    );
    // The missing one arrives late: it goes before "third".
    feed(7, message(2, (2, (1 << 31) - 1), "second"));
    feed(
        7,
        Update::Rejected {
            chat: Some(lobby.clone()),
            from: "bob".parse().unwrap(),
        },
    );
    feed(
        7,
        Update::NotForYou {
            chat: lobby.clone(),
            from: "carol".parse().unwrap(),
        },
    );
    feed(
        7,
        Update::RosterMismatch {
            room: RoomName::lobby(),
            from: "bob".parse().unwrap(),
        },
    );
    // An update from an earlier session of the window is ignored.
    feed(6, message(9, (9, 1 << 31), "from an old session"));

    let texts = texts_of(chat.view());
    let at = |needle: &str| {
        texts
            .iter()
            .position(|t| t.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} not shown in {texts:#?}"))
    };
    assert!(at("first") < at("second") && at("second") < at("third"));
    assert!(texts.iter().any(|t| t == "arrived late"));
    assert!(at("1 message from bob missing") > at("third"));
    at("A message claiming to be from bob was dropped: it failed its checks");
    at("carol sent a message you cannot read");
    at("bob encrypted for another set of members than you see in #lobby");
    assert!(!texts.iter().any(|t| t.contains("from an old session")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apps_chat_and_verify_each_other_by_number_and_by_qr_payload() {
    let temp = tempfile::tempdir().unwrap();
    let relay = relay(&temp.path().join("relay")).await;
    let (alice_dir, bob_dir) = (temp.path().join("alice"), temp.path().join("bob"));
    let mut alice = unlocked(&alice_dir, "alice").await;
    let mut bob = unlocked(&bob_dir, "bob").await;
    connect(&mut alice, &relay, "alice").await;
    connect(&mut bob, &relay, "bob").await;
    alice.until_shows("bob joined #lobby").await;

    alice.type_into(chat_ids::COMPOSER, "hello from one app");
    alice.enter(chat_ids::COMPOSER);
    bob.until_shows("hello from one app").await;

    // Verified members only: bob is not verified, so nothing is sent to
    // him, and alice is told.
    alice.click("Verified members only");
    alice
        .until_shows("#lobby: your messages go to verified members only")
        .await;
    alice.type_into(chat_ids::COMPOSER, "for verified eyes");
    alice.enter(chat_ids::COMPOSER);
    alice
        .until_shows("Not sent to bob: not verified, and this room sends to verified members only")
        .await;
    alice.click("Verified members only");
    alice
        .until_shows("#lobby: your messages go to every member with a known key")
        .await;

    // A direct message lands in its own conversation, counted as unread.
    bob.type_into(chat_ids::COMPOSER, "/msg alice and hello back");
    bob.enter(chat_ids::COMPOSER);
    alice
        .until("an unread direct message", |gui| {
            gui.app.chat().unwrap().unread() == 1
        })
        .await;
    assert!(!alice.shows("and hello back"));
    assert!(alice.app.title().starts_with("(1) "));
    alice.click("bob"); // the sidebar comes first
    assert!(alice.shows("and hello back"));
    assert_eq!(alice.app.chat().unwrap().unread(), 0);

    // Alice compares the numbers and marks bob verified...
    alice.click("Verify");
    alice.until_shows("Your safety number").await;
    alice.click("Mark as verified");
    alice.until_shows("bob is verified.").await;
    // ...and bob checks the text scanned from her QR code.
    let identity = |dir: &Path| {
        let profile = Profile::open(dir).unwrap();
        async move { profile.unlock(PASSPHRASE.to_owned().into()).await.unwrap() }
    };
    let (alice_id, bob_id) = (identity(&alice_dir).await, identity(&bob_dir).await);
    let scanned = alice_id.public().safety_number(bob_id.public());
    bob.type_into(
        chat_ids::COMPOSER,
        &format!("/verify alice {}", scanned.qr_payload()),
    );
    bob.enter(chat_ids::COMPOSER);
    bob.until_shows("You verified alice").await;
    assert!(!bob.shows("for verified eyes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_change_the_theme_and_notifications_and_are_kept() {
    use sotto_app::settings::{SETTINGS_FILE, ThemeChoice};

    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("alice");
    let mut gui = unlocked(&dir, "alice").await;
    assert_eq!(gui.app.settings().theme, ThemeChoice::Light);
    assert!(gui.app.settings().notifications, "on by default");

    gui.click("Settings");
    assert_eq!(gui.app.screen_name(), "settings");
    gui.click("Dark");
    assert_eq!(gui.app.theme(), ThemeChoice::Dark.theme());
    assert_eq!(
        gui.app.theme().palette().background,
        iced::Theme::Dark.palette().background
    );
    gui.click("Notify me of new messages while sotto is in the background");
    assert!(!gui.app.settings().notifications);
    gui.until("the settings file", |_| {
        std::fs::read_to_string(dir.join(SETTINGS_FILE))
            .is_ok_and(|json| json.contains("Dark") && json.contains("false"))
    })
    .await;
    gui.click("Done");
    assert_eq!(gui.app.screen_name(), "connect");

    drop(gui);
    let gui = Gui::start(&dir).await;
    assert_eq!(gui.app.settings().theme, ThemeChoice::Dark);
    assert!(!gui.app.settings().notifications);
}

/// The bidi controls that reorder text (embeddings, overrides, isolates,
/// marks), written out here independently of the app's own list.
const BIDI: &[char] = &[
    '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}', '\u{2068}',
    '\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}',
];

/// An incoming message from `from` in the lobby.
fn lobby_message(from: &str, key: [u8; 32], seq: u64, text: &str) -> Update {
    use sotto_client::session::{self, Chat as Conversation, TrustLevel, Update};
    Update::Message(session::Message {
        chat: Conversation::Room(sotto_proto::RoomName::lobby()),
        from: from.parse().unwrap(),
        fingerprint: sotto_crypto::Fingerprint(key),
        trust: TrustLevel::Unverified,
        outgoing: false,
        seq,
        sent_at_ms: 0,
        received_at_ms: 0,
        late: false,
        position: (seq, 1 << 31),
        text: text.into(),
        delivery: None,
        expires_at_ms: None,
        file: None,
    })
}

/// Peer text with bidi controls cannot reorder the sender, badge and time
/// around it: it is a text of its own, its controls shown as escapes; and
/// the desktop notification carries the sender's name, never the text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidi_controls_in_peer_text_are_escaped_and_notifications_carry_no_text() {
    use sotto_app::app::notification;
    use sotto_app::chat::Action as ChatAction;
    use sotto_client::session::{Chat as Conversation, Connection, Update};
    use sotto_proto::RoomName;

    let temp = tempfile::tempdir().unwrap();
    let mut chat = offline_chat(temp.path()).await;
    feed(
        &mut chat,
        Update::Joined {
            room: RoomName::lobby(),
        },
    );
    // "evil" would read "live" and swallow what follows; the isolate and
    // marks try to pull the header into the text's direction.
    let nasty = "\u{202E}evil\u{2066} [12:00] carol [verified]\u{2069}\u{200F}\u{061C}\u{200E}\u{202A}\u{202B}\u{202C}\u{202D}\u{2067}\u{2068} send the passphrase";
    let action = feed(&mut chat, lobby_message("bob", [2; 32], 1, nasty));
    let ChatAction::Notify { from, chat: where_ } = action else {
        panic!("no notification for a message: {action:?}");
    };
    feed(
        &mut chat,
        Update::Error(Problem::new(
            ProblemCode::Relay(sotto_proto::ErrorCode::Internal),
            format!("the relay refused: \u{202E}detsurt{nasty}"),
        )),
    );
    feed(
        &mut chat,
        Update::Connection(Connection::Reconnecting {
            after: Duration::from_secs(5),
            reason: format!("the relay said \u{2067}{nasty}"),
        }),
    );

    let texts = texts_of(chat.view());
    for text in &texts {
        assert!(
            !text.chars().any(|c| BIDI.contains(&c)),
            "raw bidi control in {text:?}"
        );
    }
    // The header's pieces are texts of their own, apart from the text.
    assert!(texts.iter().any(|t| t == "bob"), "{texts:#?}");
    // The message's text is one text, exactly the message, escaped.
    let body = concat!(
        r"\u{202e}evil\u{2066} [12:00] carol [verified]\u{2069}\u{200f}\u{61c}\u{200e}",
        r"\u{202a}\u{202b}\u{202c}\u{202d}\u{2067}\u{2068} send the passphrase"
    );
    assert!(texts.iter().any(|t| t == body), "{texts:#?}");
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with(r"the relay refused: \u{202e}detsurt")),
        "{texts:#?}"
    );
    assert!(
        texts.iter().any(|t| t.contains(r"the relay said \u{2067}")),
        "{texts:#?}"
    );

    // The notification: who and where, nothing of what.
    assert_eq!(where_, Conversation::Room(RoomName::lobby()));
    assert_eq!(
        notification(&from, &where_),
        "New message from bob in #lobby"
    );
    assert_eq!(
        notification("bob", &Conversation::Direct("bob".parse().unwrap())),
        "New direct message from bob"
    );
}

/// A new contact whose name looks like a known one's is a warning, and
/// both names carry the start of their key's fingerprint wherever shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookalike_name_is_warned_about_and_shown_with_its_key() {
    use sotto_client::contacts::KeyEvent;
    use sotto_client::session::{Member, TrustLevel, Update};
    use sotto_crypto::Fingerprint;
    use sotto_proto::RoomName;

    let temp = tempfile::tempdir().unwrap();
    let mut chat = offline_chat(temp.path()).await;
    let (real, fake) = (Fingerprint([0x11; 32]), Fingerprint([0xbe; 32]));
    let member = |name: &str, key| Member {
        name: name.parse().unwrap(),
        fingerprint: Some(key),
        trust: TrustLevel::Unverified,
        online: true,
    };
    for update in [
        Update::Joined {
            room: RoomName::lobby(),
        },
        Update::Key(KeyEvent::Pinned {
            name: "bob".parse().unwrap(),
            fingerprint: real,
            lookalikes: Vec::new(),
        }),
        Update::Members {
            room: RoomName::lobby(),
            members: vec![member("bob", real)],
        },
    ] {
        let _ = feed(&mut chat, update);
    }
    let texts = texts_of(chat.view());
    assert!(
        texts.iter().any(|t| t.starts_with("New contact bob: key")),
        "{texts:#?}"
    );
    assert!(
        !texts.iter().any(|t| t.starts_with("key 1111")),
        "{texts:#?}"
    );

    for update in [
        Update::Key(KeyEvent::Pinned {
            name: "b0b".parse().unwrap(),
            fingerprint: fake,
            lookalikes: vec!["bob".parse().unwrap()],
        }),
        Update::Members {
            room: RoomName::lobby(),
            members: vec![member("bob", real), member("b0b", fake)],
        },
        lobby_message("b0b", [0xbe; 32], 1, "it's me, bob"),
    ] {
        let _ = feed(&mut chat, update);
    }
    let texts = texts_of(chat.view());
    assert!(
        texts.iter().any(|t| t.starts_with(
            "Careful: the new contact b0b has a name that looks like bob, whom you already know"
        ) && t.contains(&fake.to_string())),
        "{texts:#?}"
    );
    let shown = |prefix: &str| texts.iter().filter(|t| *t == prefix).count();
    // The member list shows both keys; the message header b0b's.
    assert_eq!(shown("key 1111 1111 1111 1111…"), 1, "{texts:#?}");
    assert_eq!(shown("key bebe bebe bebe bebe…"), 2, "{texts:#?}");
}

/// `/msg BOB` and bob's answer are one conversation, filed under the
/// folded name, shown under the name the relay registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_conversation_is_one_whatever_the_case_of_the_name() {
    use sotto_client::session::Chat as Conversation;

    let temp = tempfile::tempdir().unwrap();
    let relay = relay(&temp.path().join("relay")).await;
    let mut gui = unlocked(&temp.path().join("alice"), "alice").await;
    connect(&mut gui, &relay, "alice").await;
    let mut bob = Peer::join(temp.path(), "bob", &relay).await;
    gui.until_shows("bob joined #lobby").await;

    gui.type_into(chat_ids::COMPOSER, "/msg BOB hi in capitals");
    gui.enter(chat_ids::COMPOSER);
    bob.expect_message(&dm("alice"), "hi in capitals").await;
    bob.send(dm("alice"), "hi back in lower case");
    gui.until_shows("hi back in lower case").await;
    assert!(gui.shows("hi in capitals"), "{:#?}", gui.texts());
    let direct: Vec<Conversation> = gui
        .app
        .chat()
        .unwrap()
        .conversations()
        .into_iter()
        .filter(|chat| matches!(chat, Conversation::Direct(_)))
        .collect();
    assert_eq!(direct, [Conversation::Direct("bob".parse().unwrap())]);
    assert_eq!(gui.app.chat().unwrap().unread(), 0, "it is on screen");
}

/// A message to a name nobody owns shows as not sent, with why: the
/// session's error says which sends it answers (not its wording).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_to_nobody_shows_as_not_sent_with_why() {
    let temp = tempfile::tempdir().unwrap();
    let relay = relay(&temp.path().join("relay")).await;
    let mut gui = unlocked(&temp.path().join("alice"), "alice").await;
    connect(&mut gui, &relay, "alice").await;
    gui.until_shows("You joined #lobby").await;

    gui.type_into(chat_ids::COMPOSER, "/msg nobody are you there?");
    gui.enter(chat_ids::COMPOSER);
    gui.until_shows("not sent: there is no user called nobody on this relay")
        .await;
    // Marked not sent, with why, over the message.
    let texts = gui.texts();
    let at = texts.iter().position(|t| t == "are you there?").unwrap();
    assert_eq!(
        texts[at - 3..at],
        [
            "alice",
            "✗",
            "not sent: there is no user called nobody on this relay"
        ],
        "{texts:#?}"
    );
}

/// What `ui` draws in `theme` (tiny-skia, as in the real window): its
/// width, height and RGBA pixels, by way of a PNG in `dir`.
fn pixels<M>(mut ui: Simulator<'_, M>, theme: &iced::Theme, dir: &Path) -> (usize, usize, Vec<u8>) {
    let snapshot = ui.snapshot(theme).unwrap();
    // iced_test writes the frame as a PNG where none is yet (its name
    // carries the renderer's): the one file of a new directory.
    std::fs::create_dir(dir).unwrap();
    assert!(snapshot.matches_image(dir.join("frame.png")).unwrap());
    let file = std::fs::read_dir(dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(file).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut rgba = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut rgba).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgba);
    (info.width as usize, info.height as usize, rgba)
}

/// The verification screen drawn to pixels (tiny-skia, as in the real
/// window) in both themes: a real QR decoder reads the safety-number
/// payload back from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_qr_code_is_dark_on_light_and_decodes_in_both_themes() {
    use sotto_app::verify::{self, Shown};
    use sotto_client::session::TrustLevel;

    let temp = tempfile::tempdir().unwrap();
    let alice = Account::create(
        &Profile::open(temp.path().join("alice")).unwrap(),
        "alice".parse().unwrap(),
        PASSPHRASE.to_owned().into(),
        KdfParams::INSECURE_FOR_TESTS,
    )
    .await
    .unwrap();
    let bob = Account::create(
        &Profile::open(temp.path().join("bob")).unwrap(),
        "bob".parse().unwrap(),
        PASSPHRASE.to_owned().into(),
        KdfParams::INSECURE_FOR_TESTS,
    )
    .await
    .unwrap();
    let number = alice
        .identity()
        .public()
        .safety_number(bob.identity().public());
    let payload = number.qr_payload().to_owned();
    let shown = Shown::new(
        "bob".parse().unwrap(),
        bob.identity().fingerprint(),
        number,
        TrustLevel::Unverified,
    );
    use sotto_app::settings::ThemeChoice;
    for (theme, name) in [
        (ThemeChoice::Light.theme(), "light"),
        (ThemeChoice::Dark.theme(), "dark"),
    ] {
        let bob_name = "bob".parse().unwrap();
        let ui = simulator(verify::view(Some(&shown), &bob_name, &alice));
        let (width, height, rgba) = pixels(ui, &theme, &temp.path().join(name));
        let grey: Vec<u8> = rgba
            .chunks_exact(4)
            .map(|p| {
                u8::try_from((u16::from(p[0]) * 3 + u16::from(p[1]) * 6 + u16::from(p[2])) / 10)
                    .unwrap()
            })
            .collect();
        let mut image =
            rqrr::PreparedImage::prepare_from_greyscale(width, height, |x, y| grey[y * width + x]);
        let grids = image.detect_grids();
        assert_eq!(
            grids.len(),
            1,
            "{name} theme: {} QR codes found",
            grids.len()
        );
        let (_, content) = grids[0]
            .decode()
            .unwrap_or_else(|e| panic!("{name} theme: {e}"));
        assert_eq!(content, payload, "{name} theme");
    }
}

/// A message written while the relay is down shows at once, greyed and
/// marked pending (◷) as waiting, and as sent (✓) once the relay has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_written_while_disconnected_shows_as_pending_then_as_sent() {
    let temp = tempfile::tempdir().unwrap();
    let relay_dir = temp.path().join("relay");
    let running = LocalRelay::start(&relay_dir, 0);
    let address = running.address.clone();
    let mut gui = unlocked(&temp.path().join("alice"), "alice").await;
    connect(&mut gui, &address, "alice").await;
    gui.until_shows("You joined #lobby").await;
    running.stop().await;
    gui.until_shows("Connection lost").await;

    gui.type_into(chat_ids::COMPOSER, "written while offline");
    gui.enter(chat_ids::COMPOSER);
    // At once, before the session has done anything with it.
    assert_eq!(gui.app.chat().unwrap().composer(), "");
    assert!(gui.shows("written while offline"), "{:#?}", gui.texts());
    assert!(
        gui.shows("not sent yet: waiting for the connection"),
        "{:#?}",
        gui.texts()
    );
    // Marked pending, as a message the relay has not accepted yet is.
    let texts = gui.texts();
    let at = texts
        .iter()
        .position(|t| t == "written while offline")
        .unwrap();
    assert_eq!(
        texts[at - 3..at],
        ["alice", "◷", "not sent yet: waiting for the connection"],
        "{texts:#?}"
    );

    let _running = LocalRelay::start(&relay_dir, address.port);
    // However long the relay was away (on a loaded machine the delay may
    // have grown past the patience of this test), Retry now tries at once.
    assert!(gui.shows("Connection lost"), "{:#?}", gui.texts());
    gui.click("Retry now");
    gui.until_shows(&format!("Connected to {} as alice", address.authority()))
        .await;
    assert!(!gui.shows("Retry now"), "{:#?}", gui.texts());
    gui.until("the message sent", |gui| {
        !gui.shows("not sent yet") && mark_of(&gui.texts(), "written while offline") == "✓"
    })
    .await;
    let texts = gui.texts();
    assert_eq!(
        texts
            .iter()
            .filter(|t| *t == "written while offline")
            .count(),
        1,
        "shown once: {texts:#?}"
    );
    // Rejoined without a second "You joined" (the header said it all).
    assert_eq!(
        texts.iter().filter(|t| *t == "You joined #lobby").count(),
        1,
        "{texts:#?}"
    );
}

/// A new address whose relay cannot be reached: the app stays on the
/// connect screen, says why, and keeps the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_new_relay_keeps_the_user_on_the_connect_screen() {
    let temp = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = RelayAddress {
        host: "127.0.0.1".into(),
        port: closed.local_addr().unwrap().port(),
        fingerprint: [5; 32],
        alternates: Vec::new(),
    };
    drop(closed);
    let mut gui = unlocked(&temp.path().join("alice"), "alice").await;
    gui.replace(connect_ids::ADDRESS, &address.to_string());
    gui.click("Connect");
    gui.until_screen("connect").await;
    assert!(
        gui.shows(&format!(
            "Could not reach the relay at {}",
            address.authority()
        )),
        "{:#?}",
        gui.texts()
    );
    assert!(gui.shows("Check the address"), "{:#?}", gui.texts());
    assert_eq!(gui.address_field(), address.to_string());
    // Nothing was saved for it.
    assert!(gui.shows("None yet: relays are saved on the first connection."));
}

/// Pasted lines keep their line breaks, Shift+Enter adds one, Enter sends
/// the whole text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pasted_lines_and_shift_enter_keep_newlines_and_enter_sends() {
    use iced_test::core::keyboard::{Event as KeyEvent, Location, Modifiers, key::NativeCode};
    use iced_test::core::{Event, input_method};

    let temp = tempfile::tempdir().unwrap();
    let relay = relay(&temp.path().join("relay")).await;
    let mut gui = unlocked(&temp.path().join("alice"), "alice").await;
    connect(&mut gui, &relay, "alice").await;
    let mut bob = Peer::join(temp.path(), "bob", &relay).await;
    gui.until_shows("bob joined #lobby").await;

    let shift_enter = Event::Keyboard(KeyEvent::KeyPressed {
        key: Key::Named(Named::Enter),
        modified_key: Key::Named(Named::Enter),
        physical_key: iced_test::core::keyboard::key::Physical::Unidentified(
            NativeCode::Unidentified,
        ),
        location: Location::Standard,
        modifiers: Modifiers::SHIFT,
        repeat: false,
        text: None,
    });
    gui.interact(|ui| {
        ui.click(selector::id(chat_ids::COMPOSER)).unwrap();
        // What a paste (or an input method) hands the composer.
        ui.simulate([Event::InputMethod(input_method::Event::Commit(
            "line one\nline two".into(),
        ))]);
        ui.simulate([shift_enter]);
        ui.typewrite("line three");
    });
    assert_eq!(
        gui.app.chat().unwrap().composer(),
        "line one\nline two\nline three"
    );
    gui.enter(chat_ids::COMPOSER);
    bob.expect_message(&lobby(), "line one\nline two\nline three")
        .await;
    assert_eq!(gui.app.chat().unwrap().composer(), "");
}

/// The `sotto` binary: its help and version name the app, and without a
/// display it says so in one line and fails, without a panic.
#[test]
fn the_binary_names_itself_and_explains_a_missing_display() {
    const SOTTO: &str = env!("CARGO_BIN_EXE_sotto");
    let run = |args: &[&str]| {
        std::process::Command::new(SOTTO)
            .args(args)
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("WAYLAND_SOCKET")
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap()
    };
    let help = run(&["--help"]);
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(
        help.starts_with("sotto: end-to-end encrypted chat, the desktop app"),
        "{help}"
    );
    assert!(!help.contains("library"), "{help}");
    let version = run(&["--version"]);
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8(version.stdout).unwrap(),
        format!("sotto {}\n", env!("CARGO_PKG_VERSION"))
    );

    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    let headless = run(&["--data-dir", dir.to_str().unwrap()]);
    assert!(!headless.status.success());
    let stderr = String::from_utf8(headless.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("sotto: no display"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A flood of presence changes is one notice per run of one kind, counting
/// the names, not a notice each; a message between two runs splits them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presence_flood_is_one_notice_that_counts() {
    use sotto_client::session::{PresenceChange, Update};
    use sotto_proto::RoomName;

    let temp = tempfile::tempdir().unwrap();
    let mut chat = offline_chat(temp.path()).await;
    feed(
        &mut chat,
        Update::Joined {
            room: RoomName::lobby(),
        },
    );
    let presence = |name: String, change| Update::Presence {
        room: RoomName::lobby(),
        name: name.parse().unwrap(),
        change,
    };
    for n in 0..5_000 {
        feed(
            &mut chat,
            presence(format!("user{n}"), PresenceChange::Joined),
        );
    }
    feed(
        &mut chat,
        presence("user7".to_owned(), PresenceChange::Left),
    );
    feed(
        &mut chat,
        presence("user8".to_owned(), PresenceChange::Left),
    );
    feed(&mut chat, lobby_message("bob", [2; 32], 1, "hello"));
    feed(
        &mut chat,
        presence("user9".to_owned(), PresenceChange::Left),
    );

    let texts = texts_of(chat.view());
    let presence_lines: Vec<&String> = texts
        .iter()
        .filter(|t| t.starts_with("user") && (t.contains(" joined #") || t.contains(" left #")))
        .collect();
    assert_eq!(
        presence_lines,
        [
            "user0, user1, 4997 others and user4999 joined #lobby",
            "user7 and user8 left #lobby",
            "user9 left #lobby",
        ],
        "{texts:#?}"
    );
}

/// A member who went offline stays in the member list, marked offline,
/// and going offline and coming back are notices in the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_member_stays_listed_marked_offline() {
    use sotto_client::session::{Member, PresenceChange, TrustLevel, Update};
    use sotto_crypto::Fingerprint;
    use sotto_proto::RoomName;

    let temp = tempfile::tempdir().unwrap();
    let mut chat = offline_chat(temp.path()).await;
    let members = |online| Update::Members {
        room: RoomName::lobby(),
        members: vec![Member {
            name: "bob".parse().unwrap(),
            fingerprint: Some(Fingerprint([0x22; 32])),
            trust: TrustLevel::Unverified,
            online,
        }],
    };
    let presence = |change| Update::Presence {
        room: RoomName::lobby(),
        name: "bob".parse().unwrap(),
        change,
    };
    feed(
        &mut chat,
        Update::Joined {
            room: RoomName::lobby(),
        },
    );
    feed(&mut chat, members(true));
    let texts = texts_of(chat.view());
    assert!(texts.iter().any(|t| t == "bob"), "{texts:#?}");
    assert!(!texts.iter().any(|t| t == "(offline)"), "{texts:#?}");

    feed(&mut chat, presence(PresenceChange::Disconnected));
    feed(&mut chat, members(false));
    let texts = texts_of(chat.view());
    assert!(texts.iter().any(|t| t == "bob"), "{texts:#?}");
    assert_eq!(
        texts.iter().filter(|t| *t == "(offline)").count(),
        1,
        "{texts:#?}"
    );
    assert!(
        texts.iter().any(|t| t == "bob went offline in #lobby"),
        "{texts:#?}"
    );

    feed(&mut chat, presence(PresenceChange::Connected));
    feed(&mut chat, members(true));
    let texts = texts_of(chat.view());
    assert!(!texts.iter().any(|t| t == "(offline)"), "{texts:#?}");
    assert!(
        texts.iter().any(|t| t == "bob is back in #lobby"),
        "{texts:#?}"
    );
}

/// The mark beside the time of the message of yours showing `text` (the
/// text just before it: sender, time, mark, then the message).
fn mark_of(texts: &[String], text: &str) -> String {
    let at = texts
        .iter()
        .rposition(|t| t == text)
        .unwrap_or_else(|| panic!("no {text:?} in {texts:#?}"));
    texts[at - 1].clone()
}

/// The line under the message showing `text`.
fn line_under(texts: &[String], text: &str) -> Option<String> {
    let at = texts.iter().rposition(|t| t == text)?;
    texts.get(at + 1).cloned()
}

/// A direct message to bob while he is offline: pending (◷) until the
/// relay accepts it, sent (✓) once it has, and delivered (✓✓) when bob,
/// back, has stored it and his receipt comes; a click on the mark shows
/// who has it and who not yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_to_bob_shows_pending_then_sent_then_delivered() {
    let temp = tempfile::tempdir().unwrap();
    let relay = relay(&temp.path().join("relay")).await;
    let mut gui = unlocked(&temp.path().join("alice"), "alice").await;
    connect(&mut gui, &relay, "alice").await;
    let bob = Peer::join(temp.path(), "bob", &relay).await;
    gui.until_shows("New contact bob: key").await;
    let bob_account = bob.account.clone();
    bob.quit().await;
    gui.until_shows("bob went offline in #lobby").await;

    let text = "while you were away";
    gui.type_into(chat_ids::COMPOSER, &format!("/msg bob {text}"));
    gui.enter(chat_ids::COMPOSER);
    // Each state is on screen before the next update is applied: the
    // marks seen, each once.
    let marks = std::cell::RefCell::new(Vec::<String>::new());
    let seen = |gui: &Gui, last: &str| {
        let mark = mark_of(&gui.texts(), text);
        let mut marks = marks.borrow_mut();
        if marks.last() != Some(&mark) {
            marks.push(mark.clone());
        }
        mark == last
    };
    gui.until("sent", |gui| seen(gui, "✓")).await;
    assert_eq!(*marks.borrow(), ["◷", "✓"], "pending, then sent");
    let texts = gui.texts();
    assert_eq!(
        line_under(&texts, text).as_deref(),
        Some("Attach"),
        "nothing under it: {texts:#?}"
    );
    gui.click("✓");
    assert_eq!(
        line_under(&gui.texts(), text).as_deref(),
        Some("Accepted by the relay · not yet delivered to bob")
    );

    let mut bob = Peer::connect(bob_account, &relay).await;
    bob.expect_message(&dm("alice"), text).await;
    gui.until("delivered", |gui| seen(gui, "✓✓")).await;
    assert_eq!(*marks.borrow(), ["◷", "✓", "✓✓"]);
    assert_eq!(
        line_under(&gui.texts(), text).as_deref(),
        Some("Accepted by the relay · delivered to bob")
    );
    // A click again hides the details.
    gui.click("✓✓");
    assert!(!gui.shows("Accepted by the relay"), "{:#?}", gui.texts());
}

/// Through a relay that keeps at most 3 messages for a user: carol is
/// offline and her stored messages reach the bound. A direct message to
/// her is then refused: marked ✗, and why is said under it. A room
/// message is kept for bob but not for her: delivered to 1 of 2 (✓✓ 1/2),
/// and under it that she will not get it; the details name both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_relay_will_not_keep_shows_as_not_sent_or_not_for_everyone() {
    let temp = tempfile::tempdir().unwrap();
    let relay = LocalRelay::start_with(&temp.path().join("relay"), 0, |config| {
        config.offline_max_messages = 3;
    })
    .detach();
    let mut gui = unlocked(&temp.path().join("alice"), "alice").await;
    connect(&mut gui, &relay, "alice").await;
    let mut bob = Peer::join(temp.path(), "bob", &relay).await;
    let carol = Peer::join(temp.path(), "carol", &relay).await;
    gui.until_shows("Members · 3").await;
    gui.until_shows("New contact carol: key").await;
    carol.quit().await;
    gui.until_shows("carol went offline in #lobby").await;

    // Until her stored messages are at the bound (the announcement of
    // alice's session with her counts too), each is sent.
    let mut refused = None;
    for n in 1..=6 {
        let text = format!("note {n}");
        gui.type_into(chat_ids::COMPOSER, &format!("/msg carol {text}"));
        gui.enter(chat_ids::COMPOSER);
        gui.until("an answer from the relay", |gui| {
            let texts = gui.texts();
            texts.contains(&text) && ["✓", "✗"].contains(&&*mark_of(&texts, &text))
        })
        .await;
        if mark_of(&gui.texts(), &text) == "✗" {
            refused = Some(text);
            break;
        }
    }
    let refused = refused.expect("the relay refused one");
    assert_ne!(refused, "note 1", "the bound holds a message at least");
    let texts = gui.texts();
    let under = line_under(&texts, &refused).unwrap();
    assert!(under.starts_with("not sent: "), "{texts:#?}");
    gui.click("✗");
    assert!(
        gui.texts().iter().any(|t| t.starts_with("Not sent: ")),
        "{:#?}",
        gui.texts()
    );

    // In the room: stored for bob, who has it; not for carol.
    gui.click("# lobby");
    let text = "for the whole room";
    gui.type_into(chat_ids::COMPOSER, text);
    gui.enter(chat_ids::COMPOSER);
    bob.expect_message(&lobby(), text).await;
    let warning = "carol will not get it: the relay would not keep it for them";
    gui.until("delivered to bob, not kept for carol", |gui| {
        let texts = gui.texts();
        texts.iter().any(|t| t == text)
            && mark_of(&texts, text) == "✓✓ 1/2"
            && line_under(&texts, text).as_deref() == Some(warning)
    })
    .await;
    gui.click("✓✓ 1/2");
    // Bob's receipt can come before the relay's `Sent`: the relay hands a
    // message to a connected member before it stores it for the others
    // (protocol.md 9.7), so "not yet accepted" may show for a moment.
    gui.until("accepted by the relay", |gui| {
        gui.shows("Accepted by the relay · delivered to bob · will not get it: carol")
    })
    .await;
}

/// Messages of yours in the stored history carry the state they reached
/// (each mark as drawn); a delivery change for one of them, deep in a
/// long history, changes its mark; one naming another conversation does
/// not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_messages_show_their_delivery_state_and_follow_its_changes() {
    use sotto_client::session::{
        self, Chat as Conversation, Delivery, DeliveryState, TrustLevel, Update,
    };
    use sotto_crypto::Fingerprint;
    use sotto_proto::RoomName;

    let temp = tempfile::tempdir().unwrap();
    let mut chat = offline_chat(temp.path()).await;
    let me = Fingerprint([7; 32]);
    let room = Conversation::Room(RoomName::lobby());
    let names = |list: &[&str]| -> Vec<sotto_proto::UserName> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    };
    let delivery = |state, delivered: &[&str], refused: &[&str]| Delivery {
        state,
        recipients: names(&["bob", "carol"]),
        delivered: names(delivered),
        refused: names(refused),
    };
    let states = [
        delivery(DeliveryState::Pending, &[], &[]),
        delivery(DeliveryState::Sent, &[], &[]),
        delivery(DeliveryState::Sent, &["bob"], &[]),
        delivery(DeliveryState::Sent, &["bob", "carol"], &[]),
        delivery(
            DeliveryState::Failed(Box::new(Problem::new(
                ProblemCode::Relay(sotto_proto::ErrorCode::QueueFull),
                "refused (QueueFull)",
            ))),
            &[],
            &[],
        ),
    ];
    let mine = |seq: u64, delivery: Option<Delivery>| session::Message {
        chat: room.clone(),
        from: "alice".parse().unwrap(),
        fingerprint: me,
        trust: TrustLevel::Verified,
        outgoing: true,
        seq,
        sent_at_ms: 0,
        received_at_ms: 0,
        late: false,
        position: (seq, 1 << 31),
        text: format!("mine {seq}"),
        delivery,
        expires_at_ms: None,
        file: None,
    };
    // 10,000 messages, the first one of them alice's, then one of each.
    let mut history: Vec<session::Message> = (1..=10_000u64)
        .map(|i| {
            let mut m = mine(i, None);
            m.from = "bob".parse().unwrap();
            m.fingerprint = Fingerprint([2; 32]);
            m.outgoing = false;
            m.text = format!("bob {i}");
            m
        })
        .collect();
    history[0] = mine(1, Some(states[0].clone()));
    for (n, state) in states.iter().enumerate() {
        history.push(mine(10_001 + n as u64, Some(state.clone())));
    }
    feed(
        &mut chat,
        Update::Joined {
            room: RoomName::lobby(),
        },
    );
    feed(
        &mut chat,
        Update::History {
            chat: room.clone(),
            messages: history,
        },
    );
    let texts = texts_of(chat.view());
    let marks: Vec<String> = (10_001..=10_005)
        .map(|seq| mark_of(&texts, &format!("mine {seq}")))
        .collect();
    assert_eq!(marks, ["◷", "✓", "✓✓ 1/2", "✓✓", "✗"], "{texts:#?}");
    assert_eq!(
        line_under(&texts, "mine 10005").as_deref(),
        Some("not sent: refused (QueueFull)")
    );

    // The oldest, far out of the window: changed in place; a change for
    // a message of that number in another conversation changes nothing.
    let id = mine(1, None).id();
    feed(
        &mut chat,
        Update::Joined {
            room: "other".parse().unwrap(),
        },
    );
    feed(
        &mut chat,
        Update::Delivery {
            chat: room.clone(),
            id,
            delivery: delivery(DeliveryState::Sent, &[], &["carol"]),
        },
    );
    feed(
        &mut chat,
        Update::Delivery {
            chat: Conversation::Room("other".parse().unwrap()),
            id,
            delivery: delivery(
                DeliveryState::Failed(Box::new(Problem::new(
                    ProblemCode::Relay(sotto_proto::ErrorCode::Internal),
                    "no",
                ))),
                &[],
                &[],
            ),
        },
    );
    // The newest changes too, and is drawn so.
    feed(
        &mut chat,
        Update::Delivery {
            chat: room.clone(),
            id: mine(10_001, None).id(),
            delivery: delivery(DeliveryState::Sent, &["carol"], &[]),
        },
    );
    assert_eq!(mark_of(&texts_of(chat.view()), "mine 10001"), "✓✓ 1/2");
    while chat_scrolls_back(&mut chat) {}
    let texts = texts_of(chat.view());
    assert_eq!(mark_of(&texts, "mine 1"), "✓", "{texts:#?}");
    assert_eq!(
        line_under(&texts, "mine 1").as_deref(),
        Some("carol will not get it: the relay would not keep it for them")
    );
}

/// Scrolls `chat`'s timeline to its top once; whether there was older.
fn chat_scrolls_back(chat: &mut sotto_app::chat::Chat) -> bool {
    let older = texts_of(chat.view())
        .iter()
        .any(|t| t == "Scroll up for older messages");
    for message in scroll_to_the_top(chat.view()) {
        let _ = chat.update(message);
    }
    older
}

/// Disappearing messages in the window: a member's change is a notice and
/// the header's indicator, and a message that disappears leaves the
/// timeline (and a pending one the pending list).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_shows_in_the_header_and_disappeared_messages_leave_the_timeline() {
    use sotto_app::chat::Message as ChatMessage;
    use sotto_client::session::{self, Chat as Conversation, Member, MessageId, Queued};
    use sotto_crypto::Fingerprint;
    use sotto_proto::RoomName;

    let temp = tempfile::tempdir().unwrap();
    let mut chat = offline_chat(temp.path()).await;
    let lobby = Conversation::Room(RoomName::lobby());
    let bob = Fingerprint([2; 32]);
    let message = |seq: u64, text: &str| {
        Update::Message(session::Message {
            chat: lobby.clone(),
            from: "bob".parse().unwrap(),
            fingerprint: bob,
            trust: TrustLevel::Unverified,
            outgoing: false,
            seq,
            sent_at_ms: 0,
            received_at_ms: 0,
            late: false,
            position: (seq, 1 << 31),
            text: text.into(),
            delivery: None,
            expires_at_ms: Some(3_600_000 + 5_000 * seq),
            file: None,
        })
    };
    feed(
        &mut chat,
        Update::Joined {
            room: RoomName::lobby(),
        },
    );
    feed(
        &mut chat,
        Update::Members {
            room: RoomName::lobby(),
            members: vec![Member {
                name: "bob".parse().unwrap(),
                fingerprint: Some(bob),
                trust: TrustLevel::Unverified,
                online: true,
            }],
        },
    );
    let texts = texts_of(chat.view());
    assert!(texts.iter().any(|t| t == "Disappearing: off"), "{texts:#?}");
    feed(
        &mut chat,
        Update::Timer {
            chat: lobby.clone(),
            seconds: 3600,
            by: Some("bob".parse().unwrap()),
        },
    );
    feed(&mut chat, message(1, "stays a while"));
    feed(&mut chat, message(2, "gone soon"));
    feed(
        &mut chat,
        Update::Queued(vec![Queued {
            chat: lobby.clone(),
            typed_at_ms: 5,
            text: "never sent".into(),
        }]),
    );
    let texts = texts_of(chat.view());
    let shows = |texts: &[String], needle: &str| texts.iter().any(|t| t.contains(needle));
    assert!(
        shows(&texts, "bob set disappearing messages to 1 hour"),
        "{texts:#?}"
    );
    assert!(
        texts.iter().any(|t| t == "Disappearing: 1 hour"),
        "{texts:#?}"
    );
    assert!(shows(&texts, "gone soon") && shows(&texts, "never sent"));
    // Each message says when it disappears (local time, as its clock).
    assert_eq!(
        texts
            .iter()
            .filter(|t| t.starts_with("disappears at "))
            .count(),
        2,
        "{texts:#?}"
    );

    feed(
        &mut chat,
        Update::Expired {
            chat: lobby.clone(),
            ids: vec![MessageId {
                sender: bob,
                seq: 2,
            }],
            queued: vec![Queued {
                chat: lobby.clone(),
                typed_at_ms: 5,
                text: "never sent".into(),
            }],
        },
    );
    let texts = texts_of(chat.view());
    assert!(!shows(&texts, "gone soon"), "{texts:#?}");
    assert!(!shows(&texts, "never sent"), "{texts:#?}");
    assert!(shows(&texts, "stays a while"));
    assert!(
        shows(
            &texts,
            "1 message disappeared; 1 queued message disappeared before it could be sent"
        ),
        "{texts:#?}"
    );
    // The header's list sets the timer for the conversation shown.
    let _ = chat.update(ChatMessage::Timer(lobby.clone(), 0));
    feed(
        &mut chat,
        Update::Timer {
            chat: lobby.clone(),
            seconds: 0,
            by: Some("alice".parse().unwrap()),
        },
    );
    let texts = texts_of(chat.view());
    assert!(texts.iter().any(|t| t == "Disappearing: off"), "{texts:#?}");
}

/// The conversations are reached from the keyboard: Ctrl+Down and
/// Ctrl+Up go through them in the sidebar's order (rooms, then direct
/// conversations) round the end, from the composer too; Ctrl+K opens a
/// finder that keeps what matches and goes to the first with Enter;
/// Escape closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_are_switched_from_the_keyboard() {
    let temp = tempfile::tempdir().unwrap();
    let relay = relay(&temp.path().join("relay")).await;
    let mut gui = unlocked(&temp.path().join("alice"), "alice").await;
    connect(&mut gui, &relay, "alice").await;
    let mut bob = Peer::join(temp.path(), "bob", &relay).await;
    let mut carol = Peer::join(temp.path(), "carol", &relay).await;
    gui.until_shows("carol joined #lobby").await;
    for line in ["/msg bob hi bob", "/msg carol hi carol", "/join dev"] {
        gui.type_into(chat_ids::COMPOSER, line);
        gui.enter(chat_ids::COMPOSER);
    }
    bob.expect_message(&dm("alice"), "hi bob").await;
    carol.expect_message(&dm("alice"), "hi carol").await;
    gui.until_shows("You joined #dev").await;
    assert_eq!(gui.current(), "#dev");

    let (down, up) = (Key::Named(Named::ArrowDown), Key::Named(Named::ArrowUp));
    let mut seen = Vec::new();
    for _ in 0..4 {
        gui.press(chat_ids::COMPOSER, down.clone(), Modifiers::CTRL);
        seen.push(gui.current());
    }
    assert_eq!(seen, ["#lobby", "@bob", "@carol", "#dev"], "round the end");
    gui.press(chat_ids::COMPOSER, up.clone(), Modifiers::CTRL);
    assert_eq!(gui.current(), "@carol");
    // Without Ctrl, the arrows stay the composer's.
    gui.press(chat_ids::COMPOSER, up, Modifiers::empty());
    assert_eq!(gui.current(), "@carol");

    gui.press(
        chat_ids::COMPOSER,
        Key::Character("k".into()),
        Modifiers::CTRL,
    );
    assert!(gui.app.chat().unwrap().is_finding());
    assert!(gui.has(chat_ids::FINDER));
    gui.type_into(chat_ids::FINDER, "LOB");
    assert!(!gui.shows("# dev"), "the finder keeps what matches");
    assert!(gui.shows("# lobby"));
    gui.enter(chat_ids::FINDER);
    assert_eq!(gui.current(), "#lobby");
    assert!(!gui.app.chat().unwrap().is_finding());
    assert!(gui.has(chat_ids::COMPOSER));

    gui.press(
        chat_ids::COMPOSER,
        Key::Character("k".into()),
        Modifiers::CTRL,
    );
    assert!(gui.has(chat_ids::FINDER));
    gui.type_into(chat_ids::FINDER, "nobody");
    assert!(gui.shows("No conversation has that name"));
    gui.update(Message::Escape);
    assert!(!gui.has(chat_ids::FINDER), "Escape closes it");
    assert_eq!(gui.current(), "#lobby");
}

/// The layout holds in narrow windows: below 880 pixels the member list
/// folds away, below 640 the sidebar too, behind a "Conversations"
/// button that shows it again until a conversation is chosen; a long
/// name is cut with an ellipsis where badges stand beside it, whole in
/// the conversation's header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrow_windows_fold_the_side_panes_and_long_names_end_in_an_ellipsis() {
    let long = "a-name-of-thirty-two-characters.";
    let temp = tempfile::tempdir().unwrap();
    let relay = relay(&temp.path().join("relay")).await;
    let mut gui = unlocked(&temp.path().join("alice"), "alice").await;
    connect(&mut gui, &relay, "alice").await;
    let peer = Peer::connect(
        account(&temp.path().join("long"), long, "carol").await,
        &relay,
    )
    .await;
    gui.until_shows(&format!("{long} joined #lobby")).await;
    peer.send(dm("alice"), "hello from a long name");
    gui.until("the direct conversation", |gui| {
        gui.app.chat().unwrap().conversations().len() == 2
    })
    .await;
    gui.until_shows("Members · 2").await;

    let has = |texts: &[String], wanted: &str| texts.iter().any(|t| t == wanted);
    let wide = gui.texts_at(1100.0);
    assert!(
        has(&wide, "Members · 2") && has(&wide, "Direct messages"),
        "{wide:#?}"
    );
    let cut = "a-name-of-thi…";
    assert_eq!(
        wide.iter().filter(|t| *t == cut).count(),
        2,
        "cut in the sidebar and the member list: {wide:#?}"
    );
    assert!(!has(&wide, "Conversations"));

    let middle = gui.texts_at(800.0);
    assert!(!has(&middle, "Members · 2"), "{middle:#?}");
    assert!(has(&middle, "Direct messages"));

    let narrow = gui.texts_at(600.0);
    assert!(
        !has(&narrow, "Direct messages") && !has(&narrow, "Members · 2"),
        "{narrow:#?}"
    );
    assert!(
        has(&narrow, "#lobby"),
        "the conversation stays: {narrow:#?}"
    );
    gui.click_at(600.0, "Conversations");
    let opened = gui.texts_at(600.0);
    assert!(
        has(&opened, "Direct messages") && has(&opened, "Hide"),
        "{opened:#?}"
    );
    gui.click_at(600.0, cut);
    let chosen = gui.texts_at(600.0);
    assert!(!has(&chosen, "Direct messages"), "{chosen:#?}");
    assert!(
        has(&chosen, &format!("@{long}")),
        "the header names it whole: {chosen:#?}"
    );
    assert!(has(&chosen, "hello from a long name"));
    // Ctrl+K shows the folded sidebar with its finder; Escape folds both.
    gui.press(
        chat_ids::COMPOSER,
        Key::Character("k".into()),
        Modifiers::CTRL,
    );
    assert!(has(&gui.texts_at(600.0), "Direct messages"));
    gui.update(Message::Escape);
    assert!(!has(&gui.texts_at(600.0), "Direct messages"));
}

/// A PNG of `width` by `height` in one colour, at `path`.
fn png_file(path: &Path, width: u32, height: u32, colour: [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, width, height);
        encoder.set_color(png::ColorType::Rgb);
        let mut writer = encoder.write_header().unwrap();
        let row: Vec<u8> = (0..width).flat_map(|_| colour).collect();
        let data: Vec<u8> = (0..height).flat_map(|_| row.iter().copied()).collect();
        writer.write_image_data(&data).unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}

/// The blob of the file message named `name` in the conversation on
/// screen.
fn blob_of(gui: &Gui, name: &str) -> Option<sotto_client::session::BlobId> {
    gui.app
        .chat()?
        .messages()
        .into_iter()
        .find_map(|m| m.file.as_ref().filter(|f| f.name == name).map(|f| f.blob))
}

/// Whether the image `name` of the conversation on screen is previewed.
fn previewed(gui: &Gui, name: &str) -> bool {
    blob_of(gui, name).is_some_and(|blob| {
        matches!(
            gui.app.chat().unwrap().preview(&blob),
            Some(sotto_app::chat::Preview::Ready(_))
        )
    })
}

/// Bob saves the file `name` offered in the lobby into `dir`; its bytes.
async fn bob_saves(bob: &mut Peer, name: &str, dir: &Path) -> Vec<u8> {
    use sotto_client::session::TransferState;
    let offer = bob.expect_file(&lobby(), Some(name)).await;
    let to = dir.join(format!("bob-{name}"));
    let got = bob.save_file(&offer, &to).await;
    assert!(matches!(got.state, TransferState::Done { .. }), "{got:?}");
    std::fs::read(to).unwrap()
}

/// Files as a user handles them: attached from the attach row (its path
/// typed, as the file chooser would fill it in), dropped on the window,
/// received from a peer; images previewed (drawn in the window, nothing
/// of them left on disk), saved into the downloads folder with a click,
/// never over a file already there; a file that cannot be read said so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_attached_dropped_previewed_and_saved() {
    use sotto_app::chat::Message as ChatMessage;

    let temp = tempfile::tempdir().unwrap();
    let relay = relay(&temp.path().join("relay")).await;
    let alice_dir = temp.path().join("alice");
    let downloads = temp.path().join("downloads");
    std::fs::create_dir_all(&alice_dir).unwrap();
    assert!(!downloads.exists());
    std::fs::write(
        alice_dir.join(sotto_app::settings::SETTINGS_FILE),
        serde_json::json!({ "downloads": downloads }).to_string(),
    )
    .unwrap();
    let mut gui = unlocked(&alice_dir, "alice").await;
    connect(&mut gui, &relay, "alice").await;
    let mut bob = Peer::join(temp.path(), "bob", &relay).await;
    gui.until_shows("bob joined #lobby").await;

    // Bob sends a magenta image: alice's window previews it.
    let files = temp.path().join("files");
    let photo = files.join("photo.png");
    png_file(&photo, 300, 200, [255, 0, 255]);
    bob.command(Command::SendFile {
        chat: lobby(),
        path: photo.clone(),
    });
    gui.until_shows("photo.png").await;
    gui.until("the preview", |gui| previewed(gui, "photo.png"))
        .await;
    let (width, height, rgba) = pixels(
        gui.ui(None),
        &sotto_app::settings::ThemeChoice::Light.theme(),
        &temp.path().join("frame"),
    );
    let magenta = rgba
        .chunks_exact(4)
        .filter(|p| p[0] > 250 && p[1] < 5 && p[2] > 250)
        .count();
    assert!(
        magenta > 300 * 200 * 9 / 10,
        "{magenta} magenta pixels of {width}x{height}"
    );
    // Nothing of the preview is kept on disk.
    let previews = alice_dir.join(sotto_app::chat::PREVIEWS_DIR);
    assert_eq!(std::fs::read_dir(&previews).unwrap().count(), 0);

    // The composer's /save: a relative path is in the downloads folder
    // (made if missing).
    gui.type_into(chat_ids::COMPOSER, "/save 1 typed.png");
    gui.enter(chat_ids::COMPOSER);
    gui.until("the typed save", |_| downloads.join("typed.png").exists())
        .await;
    gui.until_shows(&format!(
        "Saved to {}",
        downloads.join("typed.png").display()
    ))
    .await;
    assert_eq!(
        std::fs::read(downloads.join("typed.png")).unwrap(),
        std::fs::read(&photo).unwrap()
    );

    // Save: into the downloads folder, byte for byte; again: beside it.
    gui.click("Save");
    let saved = downloads.join("photo.png");
    gui.until_shows(&format!("Saved to {}", saved.display()))
        .await;
    assert_eq!(
        std::fs::read(&saved).unwrap(),
        std::fs::read(&photo).unwrap()
    );
    gui.click("Save");
    gui.until_shows("photo (1).png").await;
    assert_eq!(
        std::fs::read(downloads.join("photo (1).png")).unwrap(),
        std::fs::read(&photo).unwrap()
    );

    // Attach: the row, a path, Send file; bob saves it byte for byte.
    let plan = files.join("plan.pdf");
    let contents: Vec<u8> = (0..150_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&plan, &contents).unwrap();
    assert!(!gui.has(chat_ids::ATTACH));
    gui.click("Attach");
    assert!(gui.has(chat_ids::ATTACH));
    gui.type_into(chat_ids::ATTACH, &plan.display().to_string());
    gui.click("Send file");
    assert!(!gui.has(chat_ids::ATTACH), "the row closes once sent");
    assert_eq!(bob_saves(&mut bob, "plan.pdf", temp.path()).await, contents);
    gui.until("alice's own file in her timeline", |gui| {
        blob_of(gui, "plan.pdf").is_some()
    })
    .await;

    // Dropped on the window: sent to the conversation on screen.
    let notes = files.join("notes.txt");
    std::fs::write(&notes, b"dropped, not typed").unwrap();
    gui.update(Message::Chat(ChatMessage::Dropped(notes)));
    assert_eq!(
        bob_saves(&mut bob, "notes.txt", temp.path()).await,
        b"dropped, not typed"
    );

    // A file that is not there: said, nothing sent.
    gui.click("Attach");
    gui.type_into(
        chat_ids::ATTACH,
        &files.join("missing.png").display().to_string(),
    );
    gui.click("Send file");
    gui.until_shows("missing.png not sent").await;
}

/// Each transfer as the window draws it, from the session's updates: an
/// upload's progress bar and percentage, its failure with why and a
/// Dismiss; a save's progress under its message, then where it went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_and_saves_show_their_progress_and_how_they_ended() {
    use sotto_app::chat::Message as ChatMessage;
    use sotto_client::session::{
        self, BlobId, Chat as Conversation, Direction, FileInfo, Transfer, TransferState,
    };
    use sotto_crypto::Fingerprint;

    let temp = tempfile::tempdir().unwrap();
    let mut chat = offline_chat(temp.path()).await;
    let lobby = Conversation::Room("lobby".parse().unwrap());
    chat.update(ChatMessage::Select(lobby.clone()));
    let transfer = |blob: u8, name: &str, direction, done, state| {
        Update::Transfer(Box::new(Transfer {
            blob: BlobId([blob; 16]),
            chat: lobby.clone(),
            name: name.to_owned(),
            direction,
            done,
            size: 4 << 20,
            state,
        }))
    };
    // talk.mp4 going up.
    let upload = |done, state| transfer(1, "talk.mp4", Direction::Upload, done, state);
    feed(&mut chat, upload(0, TransferState::Running));
    let texts = texts_of(chat.view());
    assert!(texts.contains(&"talk.mp4".to_owned()), "{texts:#?}");
    assert!(
        texts.contains(&"Sending… 0 % of 4.0 MiB".to_owned()),
        "{texts:#?}"
    );
    feed(&mut chat, upload(1_887_437, TransferState::Running));
    let texts = texts_of(chat.view());
    assert!(
        texts.contains(&"Sending… 45 % of 4.0 MiB".to_owned()),
        "{texts:#?}"
    );
    let refused = Problem::new(
        ProblemCode::Relay(sotto_proto::ErrorCode::TooLarge),
        "the relay keeps files of at most 1.0 MiB".to_owned(),
    );
    feed(
        &mut chat,
        upload(1_887_437, TransferState::Failed(Box::new(refused))),
    );
    let texts = texts_of(chat.view());
    assert!(
        texts.contains(&"Not sent: the relay keeps files of at most 1.0 MiB".to_owned()),
        "{texts:#?}"
    );
    chat.update(ChatMessage::Dismiss(BlobId([1; 16])));
    assert!(!texts_of(chat.view()).contains(&"talk.mp4".to_owned()));

    // An offered file (no image: no preview is fetched), saved.
    let offered = session::Message {
        chat: lobby.clone(),
        from: "bob".parse().unwrap(),
        fingerprint: Fingerprint([2; 32]),
        trust: TrustLevel::Unverified,
        outgoing: false,
        seq: 1,
        sent_at_ms: 0,
        received_at_ms: 0,
        late: false,
        position: (1, 1 << 31),
        text: "report.pdf".to_owned(),
        delivery: None,
        expires_at_ms: None,
        file: Some(Box::new(FileInfo {
            name: "report.pdf".to_owned(),
            media_type: "application/pdf".to_owned(),
            size: 4 << 20,
            blob: BlobId([2; 16]),
        })),
    };
    feed(&mut chat, Update::Message(offered));
    let texts = texts_of(chat.view());
    assert!(texts.contains(&"report.pdf".to_owned()), "{texts:#?}");
    assert!(texts.contains(&"4.0 MiB".to_owned()), "{texts:#?}");
    assert!(texts.contains(&"Save".to_owned()), "{texts:#?}");
    feed(
        &mut chat,
        transfer(
            2,
            "report.pdf",
            Direction::Download,
            3 << 20,
            TransferState::Running,
        ),
    );
    let texts = texts_of(chat.view());
    assert!(
        texts.contains(&"Saving… 75 % of 4.0 MiB".to_owned()),
        "{texts:#?}"
    );
    assert!(!texts.contains(&"Save".to_owned()), "no Save while saving");
    let to = temp.path().join("report.pdf");
    feed(
        &mut chat,
        transfer(
            2,
            "report.pdf",
            Direction::Download,
            4 << 20,
            TransferState::Done {
                path: Some(to.clone()),
            },
        ),
    );
    let texts = texts_of(chat.view());
    assert!(
        texts.contains(&format!("Saved to {}", to.display())),
        "{texts:#?}"
    );
}

/// The timeline dates each day above its first entry ("Yesterday",
/// "Today"), and one sender's messages a few minutes apart share one
/// header: the name shows once per run, a new run after a gap, another
/// sender or a new day.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn days_are_dated_and_a_run_of_one_senders_messages_has_one_header() {
    use sotto_client::session::Update;

    let temp = tempfile::tempdir().unwrap();
    let mut chat = offline_chat(temp.path()).await;
    // Noon today, local time: half an hour earlier is today still.
    let now = jiff::Zoned::now()
        .date()
        .at(12, 0, 0, 0)
        .to_zoned(jiff::tz::TimeZone::system())
        .unwrap();
    let now = u64::try_from(now.timestamp().as_millisecond()).unwrap();
    let day = 24 * 3600 * 1000;
    let minute = 60 * 1000;
    // Yesterday at noon, then today: two runs of bob's (a gap of ten
    // minutes between them), one of carol's, bob again.
    let at = |update: Update, ms: u64, place: u64| match update {
        Update::Message(message) => Update::Message(sotto_client::session::Message {
            sent_at_ms: ms,
            received_at_ms: ms,
            position: (place, 1 << 31),
            ..message
        }),
        other => other,
    };
    let bob = [2; 32];
    let carol = [3; 32];
    let said = [
        (lobby_message("bob", bob, 1, "yesterday's"), now - day),
        (lobby_message("bob", bob, 2, "first"), now - 30 * minute),
        (lobby_message("bob", bob, 3, "second"), now - 29 * minute),
        (
            lobby_message("bob", bob, 4, "after a while"),
            now - 19 * minute,
        ),
        (
            lobby_message("carol", carol, 1, "carol's"),
            now - 18 * minute,
        ),
        (lobby_message("bob", bob, 5, "bob again"), now - 17 * minute),
    ];
    for (place, (update, ms)) in (1..).zip(said) {
        feed(&mut chat, at(update, ms, place));
    }
    // What the timeline shows, less the times and badges.
    let texts = texts_of(chat.view());
    let from = texts
        .iter()
        .position(|t| t == "Yesterday")
        .unwrap_or_else(|| panic!("not dated: {texts:#?}"));
    let to = texts.iter().position(|t| t == "Attach").unwrap();
    let shown: Vec<&str> = texts[from..to]
        .iter()
        .map(String::as_str)
        .filter(|t| *t != "unverified" && !(t.len() == 5 && t.as_bytes()[2] == b':'))
        .collect();
    assert_eq!(
        shown,
        [
            "Yesterday",
            "bob",
            "yesterday's",
            "Today",
            "bob",
            "first",
            "second",
            "bob",
            "after a while",
            "carol",
            "carol's",
            "bob",
            "bob again",
        ]
    );
}
