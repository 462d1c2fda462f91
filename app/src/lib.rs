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

/// Runs the app in a window until it is closed.
pub fn run(options: Options) -> iced::Result {
    iced::application(move || App::new(options.clone()), App::update, App::view)
        .title(App::title)
        .theme(App::theme)
        .subscription(App::subscription)
        .window_size((1100.0, 720.0))
        .exit_on_close_request(false)
        .run()
}
