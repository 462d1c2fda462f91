//! The desktop app (`sotto`), built with iced.
//!
//! # Structure
//!
//! [`App`] is a small state machine over three screens, each a module with
//! its own `Message`, `update` and `view`:
//!
//! - [`onboarding`]: create an identity (key generation on the blocking
//!   pool, with a progress indication) or unlock the existing one;
//! - [`connect`]: paste a relay address, see the key fingerprint it
//!   pins and what pinning means, pick a saved relay;
//! - [`chat`]: the chat window, fed by the session's stream
//!   ([`sotto_client::session::run`]) and talking to it through its
//!   [`Controller`](sotto_client::session::Controller); the [`verify`] screens
//!   (safety number, QR code, key change) sit on top of it.
//!
//! A screen's `update` returns an `Action` for what only the app can do
//! (move to another screen, start a session, notify the desktop).
//!
//! # Responsiveness
//!
//! Nothing slow runs in `update` or `view`: key generation, unlocking and
//! every RSA operation run on tokio's blocking pool or on the session's own
//! thread; every disk write (identity, store, settings) happens there too.
//! The timeline renders a bounded window of a conversation
//! ([`timeline::Timeline`]), so a room with 100 000 messages costs what a
//! room with a few hundred costs.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod app;
pub mod chat;
pub mod connect;
pub mod onboarding;
pub mod settings;
mod style;
pub mod timeline;
pub mod verify;

pub use app::{App, Message, Options};

/// The smallest window, in logical pixels.
pub const MIN_WIDTH: f32 = 560.0;
/// The smallest window's height, in logical pixels.
pub const MIN_HEIGHT: f32 = 420.0;

/// Runs the app in a window until it is closed.
pub fn run(options: Options) -> iced::Result {
    iced::application(move || App::new(options.clone()), App::update, App::view)
        .title(App::title)
        .theme(App::theme)
        .subscription(App::subscription)
        .window(iced::window::Settings {
            size: iced::Size::new(1100.0, 720.0),
            // Below this the composer and a message line no longer fit
            // beside the sidebar; narrower than the default, the member
            // list and then the sidebar fold away (`chat::view`).
            min_size: Some(iced::Size::new(MIN_WIDTH, MIN_HEIGHT)),
            ..iced::window::Settings::default()
        })
        .exit_on_close_request(false)
        .run()
}
