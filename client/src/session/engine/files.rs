//! Files and images (protocol.md 9.13 and 13.8, "Files"): sending one
//! seals it in chunks under a fresh key into a staging file, uploads the
//! sealed chunks to the relay, and, once the relay holds them all, offers
//! it in a message sealed like a text ([`Content::File`]); saving one
//! fetches its chunks, opens and checks each and the whole, and only then
//! puts the file where the user asked.
//!
//! Both go on where they stopped after a lost connection: an upload from
//! what the relay says it holds (`BlobStatus`), also after a restart (its
//! record and staging file are kept until its message is sealed); a
//! download from its next chunk, in this run. The sealed chunks are never
//! sealed again: a resumed upload sends the same bytes (the nonces are
//! the chunk indices, safe only because each is used once per key).
//!
//! A relay that swaps, reorders, truncates, replays or mixes up chunks
//! makes a download fail its check ([`ProblemCode::FileDamaged`], one
//! message whatever the check that failed, P11); nothing of it is kept.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sotto_crypto::file::{BlobId, FileManifest, FileOpener, FileSealer};
use sotto_fsutil::PendingFile;
use sotto_proto::{BLOB_CHUNK_LEN, ClientFrame, ErrorCode, RelayFrame};

use super::{Engine, Out, now_ms};
use crate::session::content::{Content, FileOffer, MAX_FILE_NAME_LEN};
use crate::session::{
    Chat, Direction, FileInfo, MessageId, Problem, ProblemCode, Transfer, TransferState, Update,
};
use crate::store::UploadRecord;

// The relay's chunk length is this crate's sealed chunk length.
const _: () = assert!(BLOB_CHUNK_LEN == sotto_crypto::file::CHUNK_CIPHERTEXT_LEN);

/// Chunks of one upload sent and not yet answered.
const UPLOAD_WINDOW: u32 = 8;
/// Chunks of one download asked for and not yet received.
const DOWNLOAD_WINDOW: u32 = 4;
/// Progress is told at most this often per transfer.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// After the relay could not store or read a chunk (`Internal`), try
/// again this much later.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// The directory of the staging files, in the data directory.
pub(crate) const STAGING_DIR: &str = "uploads";

/// Every transfer of the session.
#[derive(Debug, Default)]
pub(crate) struct Transfers {
    /// Where staging files go.
    staging: PathBuf,
    /// The relay's limit on one blob, once registered (0: it takes no
    /// files).
    max_bytes: Option<u64>,
    uploads: BTreeMap<BlobId, Upload>,
    downloads: BTreeMap<BlobId, Download>,
    /// The offers of the file messages of the history, to save them.
    offers: HashMap<(Chat, MessageId), FileOffer>,
    /// The chunks a download that ended had asked for on this connection
    /// and not yet got: their answers are dropped when they come, not
    /// taken for the next download of the same file.
    stale: HashMap<BlobId, BTreeSet<u32>>,
}

#[derive(Debug)]
struct Upload {
    record: UploadRecord,
    /// The staging file, open.
    staged: Option<File>,
    /// Chunks the relay said it stored (the first `acked`).
    acked: u32,
    /// The next chunk to send; `None` while waiting for the relay's
    /// `BlobState` (after a (re)connection), or for a retry.
    next: Option<u32>,
    /// When to ask the relay again after it failed.
    retry_at: Option<Instant>,
    told_at: Option<Instant>,
}

#[derive(Debug)]
struct Download {
    chat: Chat,
    name: String,
    manifest: FileManifest,
    opener: FileOpener,
    target: PathBuf,
    pending: PendingFile,
    /// The next chunk to ask for.
    next: u32,
    retry_at: Option<Instant>,
    told_at: Option<Instant>,
}

/// A file's name made safe to save under: its last path component, with
/// control and path characters replaced, no leading dot, at most 255
/// bytes; "file" if nothing is left.
pub fn safe_file_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut safe: String = last
        .chars()
        .map(|c| {
            if c.is_control() || matches!(c, '/' | '\\' | ':' | '\0') {
                '_'
            } else {
                c
            }
        })
        .collect();
    while safe.starts_with('.') {
        safe.remove(0);
    }
    let safe = safe.trim().to_owned();
    let mut cut = safe.len().min(MAX_FILE_NAME_LEN);
    while !safe.is_char_boundary(cut) {
        cut -= 1;
    }
    match safe.get(..cut) {
        Some(safe) if !safe.is_empty() => safe.to_owned(),
        _ => "file".to_owned(),
    }
}

/// A media type guessed from a file name's extension (empty if unknown).
fn media_type_of(name: &str) -> &'static str {
    let extension = name
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match extension.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "bmp" => "image/bmp",
        "svg" => "image/svg+xml",
        "pdf" => "application/pdf",
        "txt" | "md" => "text/plain",
        "zip" => "application/zip",
        "mp3" => "audio/mpeg",
        "mp4" => "video/mp4",
        _ => "",
    }
}

impl FileInfo {
    pub(crate) fn of(offer: &FileOffer) -> Self {
        Self {
            name: offer.name.clone(),
            media_type: offer.media_type.clone(),
            size: offer.manifest.size,
            blob: offer.manifest.blob,
        }
    }
}

/// The bytes of the first `chunks` chunks of a file of `size`.
fn bytes_of(chunks: u32, size: u64) -> u64 {
    (u64::from(chunks) * sotto_crypto::file::CHUNK_LEN as u64).min(size)
}

impl Transfers {
    /// The transfers of a session whose data directory is `dir`, with the
    /// uploads an earlier run left.
    pub(crate) fn load(dir: &Path, uploads: Vec<UploadRecord>) -> Self {
        let mut transfers = Self {
            staging: dir.join(STAGING_DIR),
            ..Self::default()
        };
        for record in uploads {
            let staged = File::open(&record.staged).ok();
            transfers.uploads.insert(
                record.manifest.blob,
                Upload {
                    record,
                    staged,
                    acked: 0,
                    next: None,
                    retry_at: None,
                    told_at: None,
                },
            );
        }
        transfers
    }

    /// Remembers the offer of a file message, to save it later.
    pub(crate) fn remember(&mut self, chat: &Chat, id: MessageId, offer: FileOffer) {
        self.offers.insert((chat.clone(), id), offer);
    }

    /// Forgets the offer of a message that disappeared.
    pub(crate) fn forget(&mut self, chat: &Chat, id: MessageId) {
        self.offers.remove(&(chat.clone(), id));
    }
}

impl Engine {
    /// `Command::SendFile`: seals the file into a staging file, records
    /// the upload, and starts it.
    pub(super) fn send_file(&mut self, chat: Chat, path: PathBuf, out: &mut Out) {
        let name = safe_file_name(
            &path
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
        );
        let fail = |out: &mut Out, code, message: String| {
            out.problem(Problem::new(
                code,
                format!("{chat}: {name} not sent: {message}"),
            ));
        };
        // A member of the room, connected or not (it is offered once the
        // upload is done, in the room then).
        if let Chat::Room(room) = &chat
            && !self.rooms.contains_key(room)
            && !self.wanted.contains(room)
        {
            return fail(
                out,
                ProblemCode::NotInRoom,
                format!("you are not in #{room}"),
            );
        }
        if let Chat::Direct(user) = &chat {
            if self.is_me(user) {
                return fail(out, ProblemCode::Yourself, "that is you".to_owned());
            }
            if let Err(blocked) = self.contacts.sendable(user) {
                return fail(out, ProblemCode::NoKeyYet, blocked.to_string());
            }
        }
        let size = match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => meta.len(),
            Ok(_) => return fail(out, ProblemCode::File, "not a file".to_owned()),
            Err(e) => return fail(out, ProblemCode::File, e.to_string()),
        };
        if let Err(message) = self.files.fits(size) {
            return fail(out, ProblemCode::Relay(ErrorCode::TooLarge), message);
        }
        let record = match self.files.seal_file(&path, size, &chat, &name) {
            Ok(record) => record,
            Err(e) => return fail(out, ProblemCode::File, e),
        };
        if let Err(e) = self.store.put_upload(&record) {
            let _ = std::fs::remove_file(&record.staged);
            return fail(out, ProblemCode::Storage, e.to_string());
        }
        let blob = record.manifest.blob;
        let staged = File::open(&record.staged).ok();
        self.files.uploads.insert(
            blob,
            Upload {
                record,
                staged,
                acked: 0,
                next: self.connected.then_some(0),
                retry_at: None,
                told_at: None,
            },
        );
        self.tell_upload(blob, TransferState::Running, out);
        self.pump_upload(blob, out);
    }

    /// `Command::SaveFile`: starts fetching the file of a message.
    pub(super) fn save_file(&mut self, chat: Chat, id: MessageId, to: PathBuf, out: &mut Out) {
        let Some(offer) = self.files.offers.get(&(chat.clone(), id)).cloned() else {
            out.problem(Problem::new(
                ProblemCode::BadCommand,
                format!("{chat}: no file in that message"),
            ));
            return;
        };
        let blob = offer.manifest.blob;
        let fail = |out: &mut Out, code, message: String| {
            out.update(Update::Transfer(Box::new(Transfer {
                blob,
                chat: chat.clone(),
                name: offer.name.clone(),
                direction: Direction::Download,
                done: 0,
                size: offer.manifest.size,
                state: TransferState::Failed(Box::new(Problem::new(code, message))),
            })));
        };
        if self.files.downloads.contains_key(&blob) {
            return fail(
                out,
                ProblemCode::BadCommand,
                format!("{} is being saved already", offer.name),
            );
        }
        if to.exists() {
            return fail(
                out,
                ProblemCode::File,
                format!("{} exists already", to.display()),
            );
        }
        let opener = match FileOpener::new(&offer.manifest) {
            Ok(opener) => opener,
            Err(_) => return fail(out, ProblemCode::FileDamaged, damaged(&offer.name)),
        };
        let pending = match PendingFile::create(&to, 0o644) {
            Ok(pending) => pending,
            Err(e) => {
                return fail(
                    out,
                    ProblemCode::File,
                    format!("cannot write {}: {e}", to.display()),
                );
            }
        };
        self.files.downloads.insert(
            blob,
            Download {
                chat,
                name: offer.name.clone(),
                manifest: offer.manifest,
                opener,
                target: to,
                pending,
                next: 0,
                retry_at: None,
                told_at: None,
            },
        );
        self.tell_download(blob, TransferState::Running, out);
        if self.connected {
            self.pump_download(blob, out);
        }
    }

    /// Registered: the limits the relay announced, and every transfer
    /// goes on (an upload from what the relay says it holds).
    pub(crate) fn resume_transfers(&mut self, max_bytes: u64, out: &mut Out) {
        self.files.max_bytes = Some(max_bytes);
        // What the last connection was to answer, it never will.
        self.files.stale.clear();
        let uploads: Vec<BlobId> = self.files.uploads.keys().copied().collect();
        for blob in uploads {
            if let Some(upload) = self.files.uploads.get_mut(&blob) {
                upload.next = None;
                upload.retry_at = None;
            }
            out.frames.push(ClientFrame::BlobStatus { blob: blob.0 });
        }
        let downloads: Vec<BlobId> = self.files.downloads.keys().copied().collect();
        for blob in downloads {
            if let Some(download) = self.files.downloads.get_mut(&blob) {
                download.next = download.opened();
                download.retry_at = None;
            }
            self.pump_download(blob, out);
        }
    }

    /// The connection ended: what was in flight is sent again on the next.
    pub(crate) fn pause_transfers(&mut self) {
        for upload in self.files.uploads.values_mut() {
            upload.next = None;
        }
    }

    /// Retries what the relay failed to store or read, when due.
    pub(super) fn retry_transfers(&mut self, now: Instant, out: &mut Out) {
        if !self.connected {
            return;
        }
        let due: Vec<BlobId> = self
            .files
            .uploads
            .iter()
            .filter(|(_, u)| u.retry_at.is_some_and(|at| at <= now))
            .map(|(blob, _)| *blob)
            .collect();
        for blob in due {
            if let Some(upload) = self.files.uploads.get_mut(&blob) {
                upload.retry_at = None;
            }
            out.frames.push(ClientFrame::BlobStatus { blob: blob.0 });
        }
        let due: Vec<BlobId> = self
            .files
            .downloads
            .iter()
            .filter(|(_, d)| d.retry_at.is_some_and(|at| at <= now))
            .map(|(blob, _)| *blob)
            .collect();
        for blob in due {
            if let Some(download) = self.files.downloads.get_mut(&blob) {
                download.retry_at = None;
                download.next = download.opened();
            }
            self.pump_download(blob, out);
        }
    }

    /// A blob frame from the relay.
    pub(super) fn on_blob_frame(&mut self, frame: RelayFrame, out: &mut Out) {
        match frame {
            RelayFrame::ChunkStored { blob, index } => self.chunk_stored(BlobId(blob), index, out),
            RelayFrame::BlobState {
                blob,
                chunks,
                stored,
                ..
            } => {
                self.blob_state(BlobId(blob), chunks, stored, out);
            }
            RelayFrame::Chunk { blob, index, data } => {
                self.chunk_arrived(BlobId(blob), index, &data, out)
            }
            RelayFrame::BlobRefused {
                blob,
                index,
                code,
                message,
            } => self.blob_refused(BlobId(blob), index, code, &message, out),
            _ => {}
        }
    }

    fn chunk_stored(&mut self, blob: BlobId, index: u32, out: &mut Out) {
        let Some(upload) = self.files.uploads.get_mut(&blob) else {
            return;
        };
        // Only for a chunk sent on this connection: the relay cannot
        // answer ahead for what this client did not send.
        if index >= upload.next.unwrap_or(upload.acked) {
            return;
        }
        upload.acked = upload.acked.max(index + 1);
        if upload.acked == upload.record.manifest.chunks {
            self.offer_uploaded(blob, out);
        } else {
            self.tell_upload_progress(blob, out);
            self.pump_upload(blob, out);
        }
    }

    fn blob_state(&mut self, blob: BlobId, chunks: u32, stored: u32, out: &mut Out) {
        let Some(upload) = self.files.uploads.get_mut(&blob) else {
            return;
        };
        let total = upload.record.manifest.chunks;
        if chunks != total || stored > chunks {
            // Not the blob this client made: start it again.
            upload.acked = 0;
            upload.next = Some(0);
        } else {
            upload.acked = stored;
            upload.next = Some(stored);
        }
        if upload.acked == total {
            self.offer_uploaded(blob, out);
        } else {
            self.pump_upload(blob, out);
        }
    }

    fn blob_refused(
        &mut self,
        blob: BlobId,
        index: u32,
        code: ErrorCode,
        message: &str,
        out: &mut Out,
    ) {
        let retry = matches!(
            code,
            ErrorCode::Internal | ErrorCode::ShuttingDown | ErrorCode::RateLimited
        );
        if let Some(upload) = self.files.uploads.get_mut(&blob) {
            if code == ErrorCode::NoSuchBlob {
                // The answer to `BlobStatus` for a blob the relay does not
                // hold (never stored, or expired): from the start.
                upload.acked = 0;
                upload.next = Some(0);
                return self.pump_upload(blob, out);
            }
            if upload.next.is_none() {
                // Waiting to try again, or for the relay's state: this
                // answers a chunk sent before (refused behind the one that
                // failed, out of order now), and is moot.
                return;
            }
            if retry {
                upload.next = None;
                upload.retry_at = Some(Instant::now() + RETRY_AFTER);
                return;
            }
            let problem = Problem::new(
                ProblemCode::Relay(code),
                format!(
                    "{}: {} not sent: the relay refused it: {message}",
                    upload.record.chat, upload.record.name
                ),
            );
            self.end_upload(blob, TransferState::Failed(Box::new(problem)), out);
            return;
        }
        if self.files.take_stale(blob, index) {
            return;
        }
        let Some(download) = self.files.downloads.get_mut(&blob) else {
            return;
        };
        if retry {
            // The chunks asked for after this one are answered still, out
            // of their turn: dropped, and asked for again with it.
            let coming = index.saturating_add(1)..download.next;
            download.next = index;
            download.retry_at = Some(Instant::now() + RETRY_AFTER);
            self.files.stale.entry(blob).or_default().extend(coming);
            return;
        }
        let why = match code {
            ErrorCode::NoSuchBlob => "it is no longer on the relay (files expire)".to_owned(),
            _ => format!("the relay refused chunk {index}: {message}"),
        };
        let problem = Problem::new(
            ProblemCode::Relay(code),
            format!("{}: {} not saved: {why}", download.chat, download.name),
        );
        self.end_download(
            blob,
            Some(index),
            TransferState::Failed(Box::new(problem)),
            out,
        );
    }

    fn chunk_arrived(&mut self, blob: BlobId, index: u32, data: &Bytes, out: &mut Out) {
        if self.files.take_stale(blob, index) {
            return;
        }
        let Some(download) = self.files.downloads.get_mut(&blob) else {
            return;
        };
        // In order, each once: anything else fails to open (P11).
        let opened = download.opener.open_chunk(index, data);
        let written = match opened {
            Ok(plaintext) => download
                .pending
                .write_all(&plaintext)
                .map_err(|e| (ProblemCode::File, e.to_string())),
            Err(_) => Err((ProblemCode::FileDamaged, damaged(&download.name))),
        };
        if let Err((code, message)) = written {
            let message = match code {
                ProblemCode::File => {
                    format!("{}: {} not saved: {message}", download.chat, download.name)
                }
                _ => format!("{}: {message}", download.chat),
            };
            let problem = Problem::new(code, message);
            return self.end_download(
                blob,
                Some(index),
                TransferState::Failed(Box::new(problem)),
                out,
            );
        }
        if download.opener.next_index().is_none() {
            return self.finish_download(blob, out);
        }
        self.tell_download_progress(blob, out);
        self.pump_download(blob, out);
    }

    /// Sends the chunks the window has room for.
    fn pump_upload(&mut self, blob: BlobId, out: &mut Out) {
        if !self.connected {
            return;
        }
        let Some(upload) = self.files.uploads.get_mut(&blob) else {
            return;
        };
        let chunks = upload.record.manifest.chunks;
        while let Some(next) = upload.next
            && next < chunks
            && next < upload.acked.saturating_add(UPLOAD_WINDOW)
        {
            let data = match read_staged(upload, next) {
                Ok(data) => data,
                Err(e) => {
                    let problem = Problem::new(
                        ProblemCode::File,
                        format!(
                            "{}: {} not sent: its sealed copy cannot be read: {e}",
                            upload.record.chat, upload.record.name
                        ),
                    );
                    return self.end_upload(blob, TransferState::Failed(Box::new(problem)), out);
                }
            };
            out.frames.push(ClientFrame::PutChunk {
                blob: blob.0,
                index: next,
                chunks,
                data,
            });
            upload.next = Some(next + 1);
        }
    }

    /// Asks for the chunks the window has room for.
    fn pump_download(&mut self, blob: BlobId, out: &mut Out) {
        if !self.connected {
            return;
        }
        let Some(download) = self.files.downloads.get_mut(&blob) else {
            return;
        };
        let opened = download.opened();
        while download.next < download.manifest.chunks
            && download.next < opened.saturating_add(DOWNLOAD_WINDOW)
        {
            out.frames.push(ClientFrame::GetChunk {
                blob: blob.0,
                index: download.next,
            });
            download.next += 1;
        }
    }

    /// Every chunk is on the relay: the offer goes out in a message.
    fn offer_uploaded(&mut self, blob: BlobId, out: &mut Out) {
        let Some(upload) = self.files.uploads.get(&blob) else {
            return;
        };
        let record = upload.record.clone();
        let offer = FileOffer {
            seconds: self.timer_of(&record.chat),
            name: record.name.clone(),
            media_type: record.media_type.clone(),
            manifest: record.manifest.clone(),
        };
        let content = Content::File(offer);
        let at = out.updates.len();
        let sealed = match &record.chat {
            Chat::Room(room) if self.rooms.contains_key(room) => {
                self.send_content_to_room(room.clone(), content, out);
                Ok(())
            }
            Chat::Room(room) => Err((ProblemCode::NotInRoom, format!("you are not in #{room}"))),
            Chat::Direct(user) => match self.contacts.sendable(user) {
                Ok(peer) => {
                    let peer = peer.clone();
                    let conversation =
                        sotto_crypto::Conversation::direct(self.me, peer.fingerprint());
                    let user = user.clone();
                    self.seal_direct(&user, peer, conversation, content, out);
                    Ok(())
                }
                Err(blocked) => Err((ProblemCode::KeyChanged, blocked.to_string())),
            },
        };
        let state = match sealed {
            Ok(()) => TransferState::Done { path: None },
            Err((code, why)) => TransferState::Failed(Box::new(Problem::new(
                code,
                format!("{}: {} not sent: {why}", record.chat, record.name),
            ))),
        };
        self.end_upload(blob, state, out);
        // The transfer's end first, then the message it sealed.
        if let Some(end) = out.updates.pop() {
            out.updates.insert(at.min(out.updates.len()), end);
        }
    }

    /// Ends an upload: its record and staging file are deleted.
    fn end_upload(&mut self, blob: BlobId, state: TransferState, out: &mut Out) {
        if let Some(upload) = self.files.uploads.get(&blob) {
            let transfer = upload.transfer(state);
            let _ = std::fs::remove_file(&upload.record.staged);
            if let Err(e) = self.store.remove_upload(&blob) {
                out.error(
                    ProblemCode::Storage,
                    format!("could not forget a finished upload: {e}"),
                );
            }
            self.files.uploads.remove(&blob);
            out.update(Update::Transfer(Box::new(transfer)));
        }
    }

    /// Every chunk opened: checks the whole, then puts the file in place.
    fn finish_download(&mut self, blob: BlobId, out: &mut Out) {
        let Some(download) = self.files.downloads.remove(&blob) else {
            return;
        };
        // Every chunk is open: done is its whole size.
        let mut transfer = download.transfer(blob, TransferState::Running);
        let Download {
            chat,
            name,
            opener,
            target,
            pending,
            ..
        } = download;
        transfer.state = if opener.finish().is_err() {
            // The pending file is dropped: nothing of it stays.
            TransferState::Failed(Box::new(Problem::new(
                ProblemCode::FileDamaged,
                format!("{chat}: {}", damaged(&name)),
            )))
        } else if target.exists() {
            TransferState::Failed(Box::new(Problem::new(
                ProblemCode::File,
                format!(
                    "{chat}: {name} not saved: {} exists already",
                    target.display()
                ),
            )))
        } else {
            match pending.commit() {
                Ok(()) => TransferState::Done { path: Some(target) },
                Err(e) => TransferState::Failed(Box::new(Problem::new(
                    ProblemCode::File,
                    format!("{chat}: {name} not saved: {e}"),
                ))),
            }
        };
        out.update(Update::Transfer(Box::new(transfer)));
    }

    /// Ends a download that failed on the relay's answer for chunk
    /// `answered`: the pending file is removed, and the answers still to
    /// come for the other chunks it asked for will be dropped.
    fn end_download(
        &mut self,
        blob: BlobId,
        answered: Option<u32>,
        state: TransferState,
        out: &mut Out,
    ) {
        if let Some(download) = self.files.downloads.remove(&blob) {
            if self.connected {
                let coming = (download.opened()..download.next).filter(|i| Some(*i) != answered);
                self.files.stale.entry(blob).or_default().extend(coming);
            }
            out.update(Update::Transfer(Box::new(download.transfer(blob, state))));
        }
    }

    fn tell_upload(&mut self, blob: BlobId, state: TransferState, out: &mut Out) {
        if let Some(upload) = self.files.uploads.get_mut(&blob) {
            upload.told_at = Some(Instant::now());
            out.update(Update::Transfer(Box::new(upload.transfer(state))));
        }
    }

    fn tell_upload_progress(&mut self, blob: BlobId, out: &mut Out) {
        let due = self
            .files
            .uploads
            .get(&blob)
            .is_some_and(|u| u.told_at.is_none_or(|at| at.elapsed() >= PROGRESS_EVERY));
        if due {
            self.tell_upload(blob, TransferState::Running, out);
        }
    }

    fn tell_download(&mut self, blob: BlobId, state: TransferState, out: &mut Out) {
        if let Some(download) = self.files.downloads.get_mut(&blob) {
            download.told_at = Some(Instant::now());
            out.update(Update::Transfer(Box::new(download.transfer(blob, state))));
        }
    }

    fn tell_download_progress(&mut self, blob: BlobId, out: &mut Out) {
        let due = self
            .files
            .downloads
            .get(&blob)
            .is_some_and(|d| d.told_at.is_none_or(|at| at.elapsed() >= PROGRESS_EVERY));
        if due {
            self.tell_download(blob, TransferState::Running, out);
        }
    }
}

impl Transfers {
    /// Whether the answer for chunk `index` of `blob` is one a download
    /// that ended asked for (then it is crossed off).
    fn take_stale(&mut self, blob: BlobId, index: u32) -> bool {
        let Some(coming) = self.stale.get_mut(&blob) else {
            return false;
        };
        let stale = coming.remove(&index);
        if coming.is_empty() {
            self.stale.remove(&blob);
        }
        stale
    }

    /// Whether a file of `size` bytes fits the relay's limit, if known.
    fn fits(&self, size: u64) -> Result<(), String> {
        let sealed = sotto_crypto::file::chunk_count(size)
            .map(|chunks| u64::from(chunks) * sotto_crypto::file::TAG_LEN as u64 + size)
            .map_err(|_| "it is too large".to_owned())?;
        match self.max_bytes {
            Some(0) => Err("this relay takes no files".to_owned()),
            Some(max) if sealed > max => Err(format!(
                "it is {}, and this relay takes files up to {}",
                human_size(size),
                human_size(max)
            )),
            _ => Ok(()),
        }
    }

    /// Seals the file at `path` into a new staging file: the upload's
    /// record. The file must stay `size` bytes long while it is read.
    fn seal_file(
        &self,
        path: &Path,
        size: u64,
        chat: &Chat,
        name: &str,
    ) -> Result<UploadRecord, String> {
        sotto_fsutil::create_private_dir(&self.staging)
            .map_err(|e| format!("cannot make {}: {e}", self.staging.display()))?;
        let mut sealer = FileSealer::new(size).map_err(|e| e.to_string())?;
        let blob = sealer.blob();
        let staged = self.staging.join(blob.to_hex());
        let mut source = File::open(path).map_err(|e| e.to_string())?;
        let mut pending = PendingFile::create(&staged, 0o600).map_err(|e| e.to_string())?;
        let mut buffer = Vec::with_capacity(BLOB_CHUNK_LEN);
        while let Some(len) = sealer.next_chunk_len() {
            buffer.clear();
            buffer.resize(len, 0);
            source
                .read_exact(&mut buffer)
                .map_err(|e| format!("it changed while it was read ({e})"))?;
            sealer
                .seal_chunk_in_place(&mut buffer)
                .map_err(|e| e.to_string())?;
            pending.write_all(&buffer).map_err(|e| e.to_string())?;
        }
        if source.read(&mut [0]).map_err(|e| e.to_string())? != 0 {
            return Err("it grew while it was read".to_owned());
        }
        let manifest = sealer.finish().map_err(|e| e.to_string())?;
        pending.commit().map_err(|e| e.to_string())?;
        Ok(UploadRecord {
            chat: chat.clone(),
            name: name.to_owned(),
            media_type: media_type_of(name).to_owned(),
            manifest,
            staged,
            started_at_ms: now_ms(),
        })
    }
}

/// Sealed chunk `index` of an upload, from its staging file.
fn read_staged(upload: &mut Upload, index: u32) -> std::io::Result<Bytes> {
    let len = upload
        .record
        .manifest
        .ciphertext_len(index)
        .ok_or_else(|| std::io::Error::other("no such chunk"))?;
    let staged = match &mut upload.staged {
        Some(file) => file,
        None => upload.staged.insert(File::open(&upload.record.staged)?),
    };
    staged.seek(SeekFrom::Start(u64::from(index) * BLOB_CHUNK_LEN as u64))?;
    let mut data = vec![0; len];
    staged.read_exact(&mut data)?;
    Ok(Bytes::from(data))
}

impl Upload {
    /// Where it is, as a transfer: the bytes of the chunks the relay holds.
    fn transfer(&self, state: TransferState) -> Transfer {
        let manifest = &self.record.manifest;
        Transfer {
            blob: manifest.blob,
            chat: self.record.chat.clone(),
            name: self.record.name.clone(),
            direction: Direction::Upload,
            done: bytes_of(self.acked, manifest.size),
            size: manifest.size,
            state,
        }
    }
}

impl Download {
    /// How many chunks are open: the next one to open, or every one.
    fn opened(&self) -> u32 {
        self.opener.next_index().unwrap_or(self.manifest.chunks)
    }

    /// Where it is, as a transfer: the bytes of the chunks open.
    fn transfer(&self, blob: BlobId, state: TransferState) -> Transfer {
        Transfer {
            blob,
            chat: self.chat.clone(),
            name: self.name.clone(),
            direction: Direction::Download,
            done: bytes_of(self.opened(), self.manifest.size),
            size: self.manifest.size,
            state,
        }
    }
}

fn damaged(name: &str) -> String {
    format!(
        "{name} not saved: it did not pass its integrity check (the relay altered or mixed up its chunks)"
    )
}

/// A size in bytes as people read it: `512 B`, `1.5 KiB`, `100 MiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let unit = UNITS.get(unit).copied().unwrap_or("TiB");
    if value < 10.0 {
        format!("{value:.1} {unit}")
    } else {
        format!("{value:.0} {unit}")
    }
}
