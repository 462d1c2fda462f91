//! The front ends' common ground, so that `sotto-cli` and the desktop app
//! understand a typed line the same way, know the same about their
//! session, and tell the user the same words: the part of a front end
//! that is not drawing.
//!
//! - [`resolve`]: what a typed line means in a [`Context`] (the current
//!   conversation, the rooms joined, the safety numbers shown): a
//!   [`Command`](crate::session::Command) for the session, a [`Local`]
//!   action on screen, or a refusal with the words to show.
//! - [`View`]: what the front end knows of its session, kept from the
//!   session's updates ([`View::apply`]): rooms, members, every user's
//!   trust and key, the safety numbers shown, this user's name, the names
//!   that look like others. Neither front end keeps a copy of its own.
//! - [`words`]: what the user reads for each update ([`Said`]: a tone, a
//!   place and the words, every peer or relay text in them made safe).
//!
//! The front ends only render: the terminal prints each `Said` as a line
//! (`* `, `! ` or `!! ` by its tone), the app puts it in the conversation
//! it belongs to.
//!
//! ```
//! use sotto_client::session::{Chat, Command};
//! use sotto_client::ui::{Context, Local, Resolved, resolve};
//!
//! let lobby: sotto_proto::RoomName = "lobby".parse()?;
//! let mut context = Context::default();
//! // No current conversation: a plain line is refused, with the reason.
//! assert_eq!(resolve("hi", &context).unwrap_err(), "you are in no room: /join ROOM first");
//! context.current = Some(Chat::Room(lobby.clone()));
//! context.rooms.insert(lobby.clone());
//! assert_eq!(
//!     resolve("hi", &context),
//!     Ok(Resolved::Command(Command::Send { chat: Chat::Room(lobby.clone()), text: "hi".into() }))
//! );
//! assert_eq!(resolve("/room #lobby", &context), Ok(Resolved::Local(Local::Switch(lobby))));
//! # Ok::<(), sotto_proto::NameError>(())
//! ```

mod resolve;
mod view;
pub mod words;

pub use resolve::{Context, Local, Resolved, SeenFile, resolve};
pub use view::View;
pub use words::{Place, Said, Tone};
