//! Files in the chat window: sending one (the attach row, with the
//! desktop's file chooser, or a file dropped on the window), saving one
//! into the downloads folder, each transfer's progress, and the previews
//! of images.
//!
//! A preview is fetched like any saved file (the session checks every
//! chunk and the whole), into a private folder of the data directory; the
//! app reads it back, deletes it, and decodes it itself under limits of
//! size and memory, off the UI thread, into a thumbnail: what iced draws
//! is pixels, and nothing of a preview stays on disk. A message that
//! disappears takes its preview with it.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use iced::widget::image::Handle;
use iced::widget::{button, column, container, image, progress_bar, row, text, text_input};
use iced::{Alignment, Element, Length, Task};
use sotto_client::safe_text::multiline as visible;
use sotto_client::session::{
    Chat as Conversation, Command, Direction, FileInfo, Message as ChatMessage, MessageId,
    Transfer, TransferState, human_size, safe_file_name,
};
use sotto_client::ui::Tone;
use sotto_crypto::file::BlobId;

use super::{Action, Chat, Message, ids};
use crate::style::BOLD;

/// The folder of the data directory previews are fetched into (each file
/// deleted as soon as it is decoded).
pub const PREVIEWS_DIR: &str = "previews";
/// The folder of the data directory a pasted image is written to, as a
/// PNG, to be sent like any file (deleted once sealed for sending).
pub const PASTED_DIR: &str = "pasted";
/// The largest image previewed: larger ones are offered to save only.
pub const PREVIEW_MAX_BYTES: u64 = 8 << 20;
/// The longest edge of a preview, in pixels.
pub const PREVIEW_EDGE: u32 = 360;
/// The largest image decoded for a preview, in pixels along an edge.
const DECODE_MAX_EDGE: u32 = 12_000;
/// The most memory a preview's decoder may allocate.
const DECODE_MAX_ALLOC: u64 = 256 << 20;
/// How many of a history's newest images are previewed (the older ones
/// once the user saves them).
const HISTORY_PREVIEWS: usize = 12;

/// The media types previewed (decoded by the app's own decoders).
const PREVIEWED: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

/// An image's preview.
#[derive(Clone, Debug)]
pub enum Preview {
    /// Being fetched from the relay.
    Fetching,
    /// Fetched and checked; being decoded.
    Decoding,
    /// Ready to draw.
    Ready(Thumbnail),
    /// Could not be fetched or decoded (the file can still be saved).
    Failed,
}

/// A decoded thumbnail, handed from the decoder back to the window.
#[derive(Clone, Debug)]
pub struct Thumbnail {
    handle: Handle,
    width: u32,
    height: u32,
}

/// What the window knows of files.
#[derive(Debug)]
pub(super) struct Files {
    /// Where Save puts files.
    pub(super) downloads: PathBuf,
    /// Where previews are fetched to.
    previews_dir: PathBuf,
    /// The newest state of each transfer the user asked for, by blob: the
    /// uploads not yet offered (or failed), the saves.
    pub(super) transfers: HashMap<BlobId, Transfer>,
    /// The previews, by blob.
    pub(super) previews: HashMap<BlobId, Preview>,
    /// Saves asked for while the same file was being fetched for its
    /// preview (the session fetches a file once at a time): started when
    /// that ends.
    waiting: HashMap<BlobId, (Conversation, MessageId, String)>,
    /// The attach row's path, while it is open.
    pub(super) attach: Option<String>,
    /// Where pasted images are written.
    pasted_dir: PathBuf,
    /// Pasted images sent, by name: each deleted once its upload has
    /// started (the session has sealed its own copy by then).
    pasted: HashMap<String, PathBuf>,
}

impl Files {
    /// The files of a window whose data directory is `data_dir`.
    pub(super) fn new(data_dir: &Path) -> Self {
        Self {
            downloads: PathBuf::from("."),
            previews_dir: data_dir.join(PREVIEWS_DIR),
            transfers: HashMap::new(),
            previews: HashMap::new(),
            waiting: HashMap::new(),
            attach: None,
            pasted_dir: data_dir.join(PASTED_DIR),
            pasted: HashMap::new(),
        }
    }

    /// The uploads of `chat` not yet offered (or failed), by name.
    pub(super) fn uploads_in(&self, chat: &Conversation) -> Vec<&Transfer> {
        let mut uploads: Vec<&Transfer> = self
            .transfers
            .values()
            .filter(|t| t.direction == Direction::Upload && t.chat == *chat)
            .collect();
        uploads.sort_by(|a, b| a.name.cmp(&b.name).then(a.blob.cmp(&b.blob)));
        uploads
    }

    /// The save of `blob`, if the user asked for one.
    pub(super) fn save_of(&self, blob: &BlobId) -> Option<&Transfer> {
        self.transfers
            .get(blob)
            .filter(|t| t.direction == Direction::Download)
    }

    fn preview_path(&self, blob: &BlobId) -> PathBuf {
        self.previews_dir.join(format!("{}.part", blob.to_hex()))
    }
}

/// Whether `file` is an image the app previews.
pub(super) fn is_previewed(file: &FileInfo) -> bool {
    PREVIEWED.contains(&file.media_type.as_str()) && file.size <= PREVIEW_MAX_BYTES
}

/// Where a file named `name` (as offered) is saved in `dir`: its safe name,
/// or `name (1).ext`, `name (2).ext`… if that exists already.
pub fn save_path(dir: &Path, name: &str) -> PathBuf {
    let name = safe_file_name(name);
    let (stem, extension) = match name.rsplit_once('.') {
        Some((stem, extension)) if !stem.is_empty() => (stem, format!(".{extension}")),
        _ => (name.as_str(), String::new()),
    };
    let mut path = dir.join(&name);
    let mut n = 1;
    while path.symlink_metadata().is_ok() && n < 10_000 {
        path = dir.join(format!("{stem} ({n}){extension}"));
        n += 1;
    }
    path
}

/// A path as typed: `~/` is the home directory.
pub(super) fn typed_path(typed: &str) -> PathBuf {
    let typed = typed.trim();
    match (typed.strip_prefix("~/"), dirs::home_dir()) {
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(typed),
    }
}

/// Writes a pasted image (`width` by `height` RGBA pixels) into `dir` as
/// `pasted-YYYY-MM-DD-HHMMSS.png` (mode 0600); its path.
fn write_pasted(dir: &Path, width: usize, height: usize, rgba: &[u8]) -> std::io::Result<PathBuf> {
    let invalid = || std::io::Error::other("the clipboard's image is malformed");
    let width = u32::try_from(width).map_err(|_| invalid())?;
    let height = u32::try_from(height).map_err(|_| invalid())?;
    let pixels = ::image::RgbaImage::from_raw(width, height, rgba.to_vec()).ok_or_else(invalid)?;
    let mut png = Cursor::new(Vec::new());
    pixels
        .write_to(&mut png, ::image::ImageFormat::Png)
        .map_err(std::io::Error::other)?;
    let stamp = jiff::Zoned::now().strftime("%Y-%m-%d-%H%M%S").to_string();
    let path = save_path(dir, &format!("pasted-{stamp}.png"));
    sotto_fsutil::write_private(&path, png.get_ref())?;
    Ok(path)
}

/// Reads the fetched preview at `path`, deletes it, and decodes it under
/// limits into a thumbnail (`None` if it is no image the app decodes).
fn decode(path: &Path) -> Option<Thumbnail> {
    let bytes = std::fs::read(path);
    let _ = std::fs::remove_file(path);
    let mut reader = ::image::ImageReader::new(Cursor::new(bytes.ok()?))
        .with_guessed_format()
        .ok()?;
    let mut limits = ::image::Limits::default();
    limits.max_image_width = Some(DECODE_MAX_EDGE);
    limits.max_image_height = Some(DECODE_MAX_EDGE);
    limits.max_alloc = Some(DECODE_MAX_ALLOC);
    reader.limits(limits);
    let thumbnail = reader
        .decode()
        .ok()?
        .thumbnail(PREVIEW_EDGE, PREVIEW_EDGE)
        .to_rgba8();
    let (width, height) = thumbnail.dimensions();
    Some(Thumbnail {
        handle: Handle::from_rgba(width, height, thumbnail.into_raw()),
        width,
        height,
    })
}

impl Chat {
    /// The preview of the file `blob`, if it is an image being previewed.
    pub fn preview(&self, blob: &BlobId) -> Option<&Preview> {
        self.files.previews.get(blob)
    }

    /// Where files are saved.
    pub(super) fn downloads(&self) -> &Path {
        &self.files.downloads
    }

    /// Where files are saved (the settings' downloads folder).
    pub fn set_downloads(&mut self, dir: PathBuf) {
        self.files.downloads = dir;
    }

    /// Empties the previews folder of what an earlier run left (a preview
    /// fetched but not decoded when the app stopped) and makes it private;
    /// before the session starts, so nothing of its own is removed.
    pub(super) fn clear_previews(&self) {
        for dir in [&self.files.previews_dir, &self.files.pasted_dir] {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for entry in entries.flatten() {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
            let _ = sotto_fsutil::create_private_dir(dir);
        }
    }

    /// Ctrl+V in the composer: the editor pastes text as usual; an image
    /// the clipboard holds instead of text is written as a PNG and sent to
    /// the conversation on screen. Off the UI thread: the clipboard's
    /// owner may be slow to answer.
    pub(super) fn paste(&self) -> Task<Message> {
        let dir = self.files.pasted_dir.clone();
        Task::perform(
            async move {
                tokio::task::spawn_blocking(move || {
                    let mut clipboard = arboard::Clipboard::new().ok()?;
                    if clipboard.get_text().is_ok_and(|text| !text.is_empty()) {
                        return None;
                    }
                    let image = clipboard.get_image().ok()?;
                    Some(
                        write_pasted(&dir, image.width, image.height, &image.bytes)
                            .map_err(|e| e.to_string()),
                    )
                })
                .await
                .ok()
                .flatten()
            },
            Message::Pasted,
        )
    }

    /// A pasted image written (or not): sent.
    pub(super) fn pasted(&mut self, written: Option<Result<PathBuf, String>>) {
        match written {
            None => {}
            Some(Ok(path)) => {
                if let Some(name) = path.file_name() {
                    let name = name.to_string_lossy().into_owned();
                    self.files.pasted.insert(name, path.clone());
                }
                self.send_file(path);
            }
            Some(Err(e)) => {
                self.status = Some((Tone::Danger, format!("Cannot send the pasted image: {e}")));
            }
        }
    }

    /// Sends the file at `path` to the conversation on screen.
    pub(super) fn send_file(&mut self, path: PathBuf) {
        let chat = match self.current().cloned() {
            Some(chat) if self.blocking(&chat).is_none() => chat,
            Some(_) => {
                self.status = Some((
                    Tone::Warning,
                    "Decide about the changed key first: nothing is sent here until then"
                        .to_owned(),
                ));
                return;
            }
            None => {
                self.status = Some((
                    Tone::Warning,
                    "Open a conversation to send a file to".to_owned(),
                ));
                return;
            }
        };
        if self.command(Command::SendFile { chat, path }) {
            self.files.attach = None;
        }
    }

    /// The attach row's Send: the path typed (or chosen).
    pub(super) fn send_attached(&mut self) {
        let typed = self.files.attach.clone().unwrap_or_default();
        if typed.trim().is_empty() {
            self.status = Some((
                Tone::Warning,
                "Choose a file first (Browse…), or type its path".to_owned(),
            ));
            return;
        }
        self.send_file(typed_path(&typed));
    }

    /// The desktop's file chooser, off the UI thread.
    pub(super) fn browse() -> Task<Message> {
        Task::perform(
            async {
                rfd::AsyncFileDialog::new()
                    .set_title("Send a file")
                    .pick_file()
                    .await
                    .map(|handle| handle.path().to_path_buf())
            },
            Message::AttachPicked,
        )
    }

    /// Saves the file of message `id` of `chat` into the downloads folder.
    pub(super) fn save(&mut self, chat: Conversation, id: MessageId, blob: BlobId, name: String) {
        if matches!(self.files.previews.get(&blob), Some(Preview::Fetching)) {
            // The session fetches a file once at a time: after the preview.
            self.files.waiting.insert(blob, (chat, id, name));
            return;
        }
        let to = save_path(&self.files.downloads, &name);
        self.save_at(chat, id, to);
    }

    /// Saves the file of message `id` of `chat` at `to`, creating the
    /// downloads folder first if that is where it goes.
    pub(super) fn save_at(&mut self, chat: Conversation, id: MessageId, to: PathBuf) {
        let dir = &self.files.downloads;
        if to.parent() == Some(dir.as_path())
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            self.status = Some((
                Tone::Danger,
                format!("Cannot save into {}: {e}", dir.display()),
            ));
            return;
        }
        self.command(Command::SaveFile {
            chat,
            message: id,
            to,
        });
    }

    /// Starts fetching the previews of the images among `messages` that
    /// have none yet.
    pub(super) fn fetch_previews<'a>(&mut self, messages: impl Iterator<Item = &'a ChatMessage>) {
        for message in messages {
            let Some(file) = &message.file else {
                continue;
            };
            if !is_previewed(file) || self.files.previews.contains_key(&file.blob) {
                continue;
            }
            let to = self.files.preview_path(&file.blob);
            if self.command(Command::SaveFile {
                chat: message.chat.clone(),
                message: message.id(),
                to,
            }) {
                self.files.previews.insert(file.blob, Preview::Fetching);
            }
        }
    }

    /// The previews of a stored history: its newest images only.
    pub(super) fn fetch_history_previews(&mut self, messages: &[ChatMessage]) {
        let images: Vec<&ChatMessage> = messages
            .iter()
            .rev()
            .filter(|m| m.file.as_deref().is_some_and(is_previewed))
            .take(HISTORY_PREVIEWS)
            .collect();
        self.fetch_previews(images.into_iter());
    }

    /// A transfer's news: a preview's fetch ends in its decoding; an
    /// upload or a save is shown where it belongs, with its progress and
    /// how it ended (on the file's card, or the upload's line), instead of
    /// the notices sotto-cli prints.
    pub(super) fn transfer(&mut self, transfer: Transfer) -> Action {
        let blob = transfer.blob;
        let previewing = transfer.direction == Direction::Download
            && matches!(self.files.previews.get(&blob), Some(Preview::Fetching));
        if previewing {
            return match transfer.state {
                TransferState::Running => Action::None,
                TransferState::Done { .. } => {
                    self.files.previews.insert(blob, Preview::Decoding);
                    let path = self.files.preview_path(&blob);
                    let decoded = Task::perform(
                        async move {
                            tokio::task::spawn_blocking(move || decode(&path))
                                .await
                                .ok()
                                .flatten()
                        },
                        move |thumbnail| Message::Previewed(blob, thumbnail),
                    );
                    let waiting = self.save_waiting(blob);
                    Action::Run(decoded.chain(waiting))
                }
                TransferState::Failed(_) => {
                    self.files.previews.insert(blob, Preview::Failed);
                    Action::Run(self.save_waiting(blob))
                }
            };
        }
        if transfer.direction == Direction::Upload
            && let Some(path) = self.files.pasted.remove(&transfer.name)
        {
            // Sealed into the session's own copy: the pasted PNG goes.
            let _ = std::fs::remove_file(path);
        }
        match (&transfer.state, transfer.direction) {
            // Offered: its message follows, and shows the file.
            (TransferState::Done { .. }, Direction::Upload) => {
                self.files.transfers.remove(&blob);
            }
            _ => {
                self.files.transfers.insert(blob, transfer);
            }
        }
        Action::None
    }

    /// A save asked for while the file's preview was fetched, started now.
    fn save_waiting(&mut self, blob: BlobId) -> Task<Message> {
        match self.files.waiting.remove(&blob) {
            Some((chat, id, name)) => Task::done(Message::Save(chat, id, blob, name)),
            None => Task::none(),
        }
    }

    /// A preview decoded (or not).
    pub(super) fn previewed(&mut self, blob: BlobId, thumbnail: Option<Thumbnail>) {
        // A message that disappeared meanwhile keeps no preview.
        if !self.files.previews.contains_key(&blob) {
            return;
        }
        let preview = thumbnail.map_or(Preview::Failed, Preview::Ready);
        self.files.previews.insert(blob, preview);
    }

    /// Forgets the files of messages that disappeared: their previews and
    /// transfers.
    pub(super) fn forget_files(&mut self, blobs: &[BlobId]) {
        for blob in blobs {
            self.files.previews.remove(blob);
            self.files.transfers.remove(blob);
            self.files.waiting.remove(blob);
        }
    }
}

/// How far a transfer is, 0 to 1.
fn fraction(transfer: &Transfer) -> f32 {
    if transfer.size == 0 {
        return 1.0;
    }
    #[allow(
        clippy::cast_precision_loss,
        reason = "a progress bar's fraction: f32 is precise enough"
    )]
    let fraction = transfer.done as f32 / transfer.size as f32;
    fraction.clamp(0.0, 1.0)
}

/// A running transfer: its bar, and in words `Saving… 45 % of 2.1 MiB`.
fn progress<'a>(verb: &str, transfer: &Transfer) -> Element<'a, Message> {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a percentage between 0 and 100"
    )]
    let percent = (fraction(transfer) * 100.0).floor() as u32;
    row![
        progress_bar(0.0..=1.0, fraction(transfer))
            .length(BAR_WIDTH)
            .girth(6),
        text(format!(
            "{verb}… {percent} % of {}",
            human_size(transfer.size)
        ))
        .size(12)
        .style(text::secondary)
    ]
    .spacing(8)
    .align_y(Alignment::Center)
    .into()
}

/// A length of `n` pixels (a preview's edge, at most [`PREVIEW_EDGE`]).
fn pixels(n: u32) -> Length {
    Length::Fixed(f32::from(u16::try_from(n).unwrap_or(u16::MAX)))
}

/// The width of a progress bar.
const BAR_WIDTH: f32 = 240.0;

impl Chat {
    /// The file of a message in the timeline: its name and size, its
    /// preview if it is an image, a Save button, and how a save goes.
    pub(super) fn file_card<'a>(
        &'a self,
        message: &'a ChatMessage,
        file: &'a FileInfo,
    ) -> Element<'a, Message> {
        let mut card = column![
            row![
                text(visible(&file.name))
                    .font(BOLD)
                    .wrapping(text::Wrapping::WordOrGlyph),
                text(human_size(file.size)).size(12).style(text::secondary),
            ]
            .spacing(8)
            .align_y(Alignment::Center)
        ]
        .spacing(6);
        match self.files.previews.get(&file.blob) {
            Some(Preview::Ready(Thumbnail {
                handle,
                width,
                height,
            })) => {
                card = card.push(
                    image(handle.clone())
                        .width(pixels(*width))
                        .height(pixels(*height))
                        .border_radius(6),
                );
            }
            Some(Preview::Fetching | Preview::Decoding) => {
                card = card.push(text("Loading the preview…").size(12).style(text::secondary));
            }
            Some(Preview::Failed) | None => {}
        }
        let save = button(text("Save").size(13))
            .style(button::secondary)
            .padding([3, 10])
            .on_press(Message::Save(
                message.chat.clone(),
                message.id(),
                file.blob,
                file.name.clone(),
            ));
        let state: Element<'a, Message> = match self.files.save_of(&file.blob) {
            Some(saving) => match &saving.state {
                TransferState::Running => progress("Saving", saving),
                TransferState::Done { path } => row![
                    save,
                    text(format!(
                        "Saved to {}",
                        visible(
                            &path
                                .as_deref()
                                .unwrap_or(Path::new(""))
                                .display()
                                .to_string()
                        )
                    ))
                    .size(12)
                    .style(text::success)
                    .wrapping(text::Wrapping::WordOrGlyph),
                ]
                .spacing(8)
                .align_y(Alignment::Center)
                .into(),
                TransferState::Failed(problem) => row![
                    save,
                    text(format!("Not saved: {}", visible(&problem.message)))
                        .size(12)
                        .style(text::danger)
                        .wrapping(text::Wrapping::WordOrGlyph),
                ]
                .spacing(8)
                .align_y(Alignment::Center)
                .into(),
            },
            None => save.into(),
        };
        container(card.push(state))
            .padding(10)
            .style(container::bordered_box)
            .into()
    }

    /// The uploads of `chat` not offered yet: each with its progress, or
    /// why it failed.
    pub(super) fn uploads<'a>(&'a self, chat: &Conversation) -> Vec<Element<'a, Message>> {
        self.files
            .uploads_in(chat)
            .into_iter()
            .map(|upload| {
                let head = row![
                    text(self.me().as_str()).font(BOLD).style(text::secondary),
                    text(visible(&upload.name)).style(text::secondary),
                    text(human_size(upload.size))
                        .size(12)
                        .style(text::secondary),
                ]
                .spacing(8)
                .align_y(Alignment::Center);
                let state: Element<'a, Message> = match &upload.state {
                    TransferState::Failed(problem) => row![
                        text(format!("Not sent: {}", visible(&problem.message)))
                            .size(12)
                            .style(text::danger)
                            .wrapping(text::Wrapping::WordOrGlyph),
                        button(text("Dismiss").size(12))
                            .style(button::secondary)
                            .padding([2, 8])
                            .on_press(Message::Dismiss(upload.blob)),
                    ]
                    .spacing(8)
                    .align_y(Alignment::Center)
                    .into(),
                    _ => progress("Sending", upload),
                };
                column![head, state].spacing(4).into()
            })
            .collect()
    }

    /// The attach row, while open: a path (typed, or chosen with the
    /// desktop's file chooser) and its Send.
    pub(super) fn attach_row(&self) -> Option<Element<'_, Message>> {
        let typed = self.files.attach.as_deref()?;
        Some(
            column![
                row![
                    text_input("Path of the file to send", typed)
                        .id(ids::ATTACH)
                        .on_input(Message::AttachField)
                        .on_submit(Message::AttachSend)
                        .padding(6)
                        .size(13),
                    button(text("Browse…").size(13))
                        .style(button::secondary)
                        .on_press(Message::AttachBrowse),
                    button(text("Send file").size(13))
                        .style(button::primary)
                        .on_press_maybe(
                            (!typed.trim().is_empty() && self.controller.is_some())
                                .then_some(Message::AttachSend)
                        ),
                    button(text("Cancel").size(13))
                        .style(button::secondary)
                        .on_press(Message::Attach),
                ]
                .spacing(6)
                .align_y(Alignment::Center),
                text("Sent end to end encrypted, in chunks the relay cannot read; or drop files on the window")
                .size(11)
                .style(text::secondary),
            ]
            .spacing(4)
            .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_file_never_lands_on_an_existing_one() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(save_path(dir.path(), "cat.png"), dir.path().join("cat.png"));
        std::fs::write(dir.path().join("cat.png"), b"1").unwrap();
        assert_eq!(
            save_path(dir.path(), "cat.png"),
            dir.path().join("cat (1).png")
        );
        std::fs::write(dir.path().join("cat (1).png"), b"2").unwrap();
        assert_eq!(
            save_path(dir.path(), "cat.png"),
            dir.path().join("cat (2).png")
        );
        // No extension, a dot file, a name that tries to leave the folder.
        std::fs::write(dir.path().join("notes"), b"3").unwrap();
        assert_eq!(save_path(dir.path(), "notes"), dir.path().join("notes (1)"));
        let escaped = save_path(dir.path(), "../../etc/passwd");
        assert_eq!(escaped.parent(), Some(dir.path()));
    }

    #[test]
    fn a_pasted_image_is_written_as_a_private_png_beside_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let rgba: Vec<u8> = (0..4 * 3 * 2)
            .map(|i| u8::try_from(i * 10).unwrap())
            .collect();
        let first = write_pasted(dir.path(), 3, 2, &rgba).unwrap();
        let second = write_pasted(dir.path(), 3, 2, &rgba).unwrap();
        assert_ne!(first, second, "never over an earlier paste");
        for path in [&first, &second] {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                name.starts_with("pasted-") && name.ends_with(".png"),
                "{name}"
            );
            let decoded = ::image::open(path).unwrap().to_rgba8();
            assert_eq!(decoded.dimensions(), (3, 2));
            assert_eq!(decoded.into_raw(), rgba);
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(path).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600);
            }
        }
        // Fewer bytes than the size says: refused, nothing written.
        assert!(write_pasted(dir.path(), 3, 3, &rgba).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn only_small_images_of_known_kinds_are_previewed() {
        let file = |media_type: &str, size| FileInfo {
            name: "x".into(),
            media_type: media_type.into(),
            size,
            blob: BlobId([1; 16]),
        };
        assert!(is_previewed(&file("image/png", 1000)));
        assert!(is_previewed(&file("image/jpeg", PREVIEW_MAX_BYTES)));
        assert!(!is_previewed(&file("image/png", PREVIEW_MAX_BYTES + 1)));
        assert!(!is_previewed(&file("image/svg+xml", 1000)));
        assert!(!is_previewed(&file("application/pdf", 1000)));
    }

    #[test]
    fn a_preview_is_decoded_small_and_its_file_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.part");
        let mut pixels = ::image::RgbaImage::new(1200, 600);
        for (x, _, pixel) in pixels.enumerate_pixels_mut() {
            *pixel = ::image::Rgba([u8::try_from(x % 256).unwrap(), 0, 0, 255]);
        }
        pixels
            .save_with_format(&path, ::image::ImageFormat::Png)
            .unwrap();
        let thumbnail = decode(&path).unwrap();
        assert_eq!((thumbnail.width, thumbnail.height), (PREVIEW_EDGE, 180));
        assert!(!path.exists(), "the fetched file is deleted");
        // Not an image: nothing, and deleted too.
        std::fs::write(&path, b"%PDF-1.7 not an image").unwrap();
        assert!(decode(&path).is_none());
        assert!(!path.exists());
    }

    #[test]
    fn an_image_wider_than_the_decoder_takes_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wide.part");
        let encode = |width: u32| {
            let mut bytes = Vec::new();
            let mut encoder = png::Encoder::new(&mut bytes, width, 1);
            encoder.set_color(png::ColorType::Grayscale);
            let mut writer = encoder.write_header().unwrap();
            writer
                .write_image_data(&vec![0; usize::try_from(width).unwrap()])
                .unwrap();
            writer.finish().unwrap();
            bytes
        };
        // A valid image one pixel past the limit: refused, and deleted.
        std::fs::write(&path, encode(DECODE_MAX_EDGE + 1)).unwrap();
        assert!(decode(&path).is_none());
        assert!(!path.exists());
        // At the limit: decoded.
        std::fs::write(&path, encode(DECODE_MAX_EDGE)).unwrap();
        assert!(decode(&path).is_some());
    }
}
