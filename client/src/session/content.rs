//! What a sealed message carries (the content `P` of protocol.md 15, step
//! 5): a text the user wrote (with the disappearing-message timer it was
//! sent under, if any), a delivery receipt, a heartbeat, a key request, or
//! a change of the conversation's disappearing-message timer (protocol.md
//! 13.8).
//!
//! Both travel the same way, sealed in the sender's session of a
//! conversation, so a receipt is as authenticated and as confidential as
//! a message, and the relay cannot tell one from the other by anything but
//! size. A receipt takes a sequence number in its conversation like any
//! message, so the recipient's gap detection counts it.

use serde::{Deserialize, Serialize};
use sotto_crypto::file::{FileManifest, chunk_count};
use sotto_crypto::{Conversation, SessionId};

/// The content of a sealed message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    /// A text the user wrote (UTF-8).
    Text(String),
    /// The sender of this content stored messages of the recipient's.
    Receipt(Receipt),
    /// Nothing but its own sequence number: "this is the newest number I
    /// used in this conversation", sent when a message of the sender's is
    /// not receipted in time, so that a relay withholding what came before
    /// shows as a gap.
    Heartbeat,
    /// "I hold messages of yours I cannot open: send me the announcement
    /// of this session of yours in this conversation again."
    KeyRequest {
        /// The conversation of the session.
        conversation: Conversation,
        /// The session whose announcement never came.
        session: SessionId,
    },
    /// "Messages in this conversation disappear `seconds` after they are
    /// sent (or stored, for a recipient) from now on; 0: they no longer
    /// do." Any member may send it.
    Timer {
        /// The timer: 0 (off) or 1 to [`MAX_TIMER_SECS`].
        seconds: u64,
    },
    /// A text sent while the conversation's timer was `seconds` (1 to
    /// [`MAX_TIMER_SECS`]): it disappears that long after it is sent or
    /// stored, whatever timer its recipient has (it may have missed the
    /// [`Content::Timer`]). A text sent with no timer is a
    /// [`Content::Text`].
    TimedText {
        /// The timer it was sent under.
        seconds: u64,
        /// The text (UTF-8).
        text: String,
    },
    /// A file (or image): where its encrypted chunks are on the relay and
    /// the key to them (protocol.md 13.8, "Files").
    File(FileOffer),
}

/// A file offered in a conversation: what it is, and the manifest that
/// fetches and checks it. Sealed like a text, so the relay, which stores
/// the chunks, never learns the key, the name or the kind of file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOffer {
    /// The timer it was sent under (0: none), as for a
    /// [`Content::TimedText`].
    pub seconds: u64,
    /// The file's name as the sender had it: a suggestion for saving,
    /// never a path (see `files::safe_file_name`). 1 to
    /// [`MAX_FILE_NAME_LEN`] bytes.
    pub name: String,
    /// Its media type, as the sender guessed it from the name
    /// (`image/png`); at most [`MAX_MEDIA_TYPE_LEN`] bytes, empty if
    /// unknown.
    pub media_type: String,
    /// Where the chunks are and how to open and check them.
    pub manifest: FileManifest,
}

/// The longest file name an offer carries, in bytes.
pub const MAX_FILE_NAME_LEN: usize = 255;
/// The longest media type an offer carries, in bytes.
pub const MAX_MEDIA_TYPE_LEN: usize = 127;

/// The longest disappearing-message timer: 365 days.
pub const MAX_TIMER_SECS: u64 = 365 * 24 * 60 * 60;

/// "I have stored your messages with these sequence numbers in this
/// conversation": sent by a recipient to a message's sender, in their
/// direct conversation, once the messages are durably in its store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The conversation the stored messages belong to (a room, or the
    /// direct conversation the receipt travels in).
    pub conversation: Conversation,
    /// The receipt's recipient's sequence numbers stored, as inclusive
    /// ranges `(first, last)`, ascending and disjoint.
    pub stored: Vec<(u64, u64)>,
}

/// The most ranges one receipt carries (a receipt for more is split).
pub const MAX_RECEIPT_RANGES: usize = 256;

impl Content {
    /// The content's bytes: postcard.
    pub fn encode(&self) -> Vec<u8> {
        // Encoding these types into a vector cannot fail.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// A text sent under `timer` seconds (0: none).
    pub fn text(text: String, timer: u64) -> Self {
        if timer == 0 {
            Self::Text(text)
        } else {
            Self::TimedText {
                seconds: timer,
                text,
            }
        }
    }

    /// The text and the timer it was sent under (0: none), if this is a
    /// text.
    pub fn as_text(&self) -> Option<(&str, u64)> {
        match self {
            Self::Text(text) => Some((text, 0)),
            Self::TimedText { seconds, text } => Some((text, *seconds)),
            _ => None,
        }
    }

    /// Whether this is a text the user wrote (timed or not).
    pub fn is_text(&self) -> bool {
        self.as_text().is_some()
    }

    /// What the history shows and keeps of it, and the timer it was sent
    /// under: a text, or a file (by its name); `None` for what is not
    /// shown (receipts, heartbeats, key requests, timer changes).
    pub fn shown(&self) -> Option<(&str, u64)> {
        match self {
            Self::File(offer) => Some((&offer.name, offer.seconds)),
            other => other.as_text(),
        }
    }

    /// Decodes `bytes`; `None` for anything that is not exactly one
    /// canonical encoding of a content (trailing bytes, over-long
    /// varints, invalid UTF-8, a receipt with ranges out of order or more
    /// than [`MAX_RECEIPT_RANGES`], a timer above [`MAX_TIMER_SECS`], a
    /// timed text with a timer of 0).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let content: Self = postcard::from_bytes(bytes).ok()?;
        if content.encode() != bytes {
            return None;
        }
        match &content {
            Self::Timer { seconds } if *seconds > MAX_TIMER_SECS => return None,
            Self::TimedText { seconds, .. } if *seconds == 0 || *seconds > MAX_TIMER_SECS => {
                return None;
            }
            Self::File(offer) if !offer.is_well_formed() => return None,
            _ => {}
        }
        if let Self::Receipt(receipt) = &content {
            if receipt.stored.len() > MAX_RECEIPT_RANGES || receipt.stored.is_empty() {
                return None;
            }
            let ordered = receipt.stored.iter().all(|(first, last)| first <= last)
                && receipt.stored.windows(2).all(|w| match w {
                    [(_, last), (next, _)] => last.checked_add(1).is_some_and(|n| n < *next),
                    _ => true,
                });
            if !ordered {
                return None;
            }
        }
        Some(content)
    }
}

impl FileOffer {
    /// Whether its fields are within their bounds and its manifest
    /// consistent (its chunk count is the one its size has).
    fn is_well_formed(&self) -> bool {
        (1..=MAX_FILE_NAME_LEN).contains(&self.name.len())
            && self.media_type.len() <= MAX_MEDIA_TYPE_LEN
            && self.seconds <= MAX_TIMER_SECS
            && chunk_count(self.manifest.size).ok() == Some(self.manifest.chunks)
    }
}

impl Receipt {
    /// Receipts for `seqs` (any order, duplicates allowed) in
    /// `conversation`: the numbers as ranges, at most
    /// [`MAX_RECEIPT_RANGES`] to a receipt.
    pub fn for_seqs(conversation: &Conversation, seqs: impl IntoIterator<Item = u64>) -> Vec<Self> {
        let mut seqs: Vec<u64> = seqs.into_iter().collect();
        seqs.sort_unstable();
        seqs.dedup();
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for seq in seqs {
            match ranges.last_mut() {
                Some((_, last)) if last.checked_add(1) == Some(seq) => *last = seq,
                _ => ranges.push((seq, seq)),
            }
        }
        ranges
            .chunks(MAX_RECEIPT_RANGES)
            .map(|stored| Self {
                conversation: conversation.clone(),
                stored: stored.to_vec(),
            })
            .collect()
    }

    /// Whether `seq` is among the stored numbers.
    pub fn covers(&self, seq: u64) -> bool {
        self.stored
            .iter()
            .any(|(first, last)| (*first..=*last).contains(&seq))
    }

    /// Every stored number (bounded by the caller: ranges can be wide).
    pub fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.stored.iter().flat_map(|(first, last)| *first..=*last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_round_trips_and_refuses_anything_but_its_one_encoding() {
        let room = Conversation::room("lobby");
        for content in [
            Content::Text("hi".into()),
            Content::Text(String::new()),
            Content::Receipt(Receipt {
                conversation: room.clone(),
                stored: vec![(1, 3), (5, 5)],
            }),
        ] {
            let bytes = content.encode();
            assert_eq!(Content::decode(&bytes), Some(content));
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(Content::decode(&longer), None, "trailing bytes");
        }
        // The text "hi": variant 0, length 2.
        assert_eq!(Content::Text("hi".into()).encode(), [0, 2, b'h', b'i']);
        // protocol.md 13.8's example: seqs 1 to 3 and 5 in `lobby`.
        let receipt = Content::Receipt(Receipt {
            conversation: room.clone(),
            stored: vec![(1, 3), (5, 5)],
        });
        assert_eq!(
            receipt.encode(),
            [1, 0, 5, b'l', b'o', b'b', b'b', b'y', 2, 1, 3, 5, 5]
        );
        assert_eq!(Content::Heartbeat.encode(), [2]);
        assert_eq!(Content::decode(&[2]), Some(Content::Heartbeat));
        // An over-long length varint, invalid UTF-8, an unknown variant.
        assert_eq!(Content::decode(&[0, 0x82, 0x00, b'h', b'i']), None);
        assert_eq!(Content::decode(&[0, 1, 0xff]), None);
        let request = Content::KeyRequest {
            conversation: room.clone(),
            session: SessionId([7; 16]),
        };
        assert_eq!(Content::decode(&request.encode()), Some(request.clone()));
        assert_eq!(
            request.encode()[..8],
            [3, 0, 5, b'l', b'o', b'b', b'b', b'y']
        );
        // A `File` with nothing after its variant; variant 7 is unknown.
        assert_eq!(Content::decode(&[6]), None);
        assert_eq!(Content::decode(&[7]), None);
        // protocol.md 13.8's timer examples: one hour, off, and "hi" sent
        // under one hour (3600 = varint 0x90 0x1c).
        assert_eq!(Content::Timer { seconds: 3600 }.encode(), [4, 0x90, 0x1c]);
        assert_eq!(Content::Timer { seconds: 0 }.encode(), [4, 0]);
        assert_eq!(
            Content::text("hi".into(), 3600).encode(),
            [5, 0x90, 0x1c, 2, b'h', b'i']
        );
        assert_eq!(Content::text("hi".into(), 0), Content::Text("hi".into()));
        for content in [
            Content::Timer { seconds: 0 },
            Content::Timer { seconds: 1 },
            Content::Timer {
                seconds: MAX_TIMER_SECS,
            },
            Content::text(String::new(), MAX_TIMER_SECS),
            Content::text("hi".into(), 30),
        ] {
            assert_eq!(Content::decode(&content.encode()), Some(content));
        }
        assert_eq!(Content::text("hi".into(), 30).as_text(), Some(("hi", 30)));
        // Over the longest timer, a timed text under no timer, an
        // over-long varint for 3600, missing text.
        let over = MAX_TIMER_SECS + 1;
        assert_eq!(
            Content::decode(&Content::Timer { seconds: over }.encode()),
            None
        );
        let timed = |seconds| {
            Content::TimedText {
                seconds,
                text: "hi".into(),
            }
            .encode()
        };
        assert_eq!(Content::decode(&timed(over)), None);
        assert_eq!(Content::decode(&timed(0)), None);
        assert_eq!(Content::decode(&[4, 0x90, 0x9c, 0x00]), None);
        assert_eq!(Content::decode(&[5, 0x90, 0x1c]), None);
        // Ranges out of order, overlapping, touching, reversed, or none.
        for stored in [
            vec![(5, 5), (1, 3)],
            vec![(1, 3), (3, 4)],
            vec![(1, 3), (4, 4)],
            vec![(3, 1)],
            vec![],
        ] {
            let bytes = Content::Receipt(Receipt {
                conversation: room.clone(),
                stored,
            })
            .encode();
            assert_eq!(Content::decode(&bytes), None);
        }
    }

    /// protocol.md 13.8's example of a `File`: the 5-byte file of 13.10's
    /// known answer, `sotto.txt`, `text/plain`, no timer.
    #[test]
    fn a_file_offer_has_one_encoding_and_refuses_what_does_not_fit() {
        use sotto_crypto::file::{BlobId, FileKey};
        let digest = [
            0xe9, 0xdf, 0x87, 0x87, 0x83, 0x54, 0xad, 0x82, 0x37, 0xd0, 0xcf, 0x10, 0xe5, 0x89,
            0x79, 0x7e, 0xeb, 0xe5, 0xcd, 0xd5, 0x19, 0x13, 0x2c, 0xfd, 0x81, 0x43, 0x42, 0x2c,
            0xce, 0x66, 0x59, 0x21,
        ];
        let offer = |name: &str, size: u64, chunks: u32| {
            Content::File(FileOffer {
                seconds: 0,
                name: name.into(),
                media_type: "text/plain".into(),
                manifest: FileManifest {
                    blob: BlobId([9; 16]),
                    key: FileKey::from_bytes([7; 32]),
                    size,
                    chunks,
                    digest,
                },
            })
        };
        let bytes = offer("sotto.txt", 5, 1).encode();
        let expected = [
            &[6, 0, 9][..],
            b"sotto.txt",
            &[10],
            b"text/plain",
            &[9; 16],
            &[7; 32],
            &[5, 1],
            &digest,
        ]
        .concat();
        assert_eq!(bytes, expected);
        assert_eq!(bytes.len(), 105);
        assert_eq!(Content::decode(&bytes), Some(offer("sotto.txt", 5, 1)));
        assert_eq!(offer("sotto.txt", 5, 1).shown(), Some(("sotto.txt", 0)));
        // No name, a name too long, a chunk count its size does not have.
        for wrong in [
            offer("", 5, 1),
            offer(&"x".repeat(MAX_FILE_NAME_LEN + 1), 5, 1),
            offer("sotto.txt", 5, 2),
            offer("sotto.txt", 65_537, 1),
        ] {
            assert_eq!(Content::decode(&wrong.encode()), None);
        }
    }

    #[test]
    fn receipts_carry_ranges_split_at_the_most_a_receipt_holds() {
        let room = Conversation::room("lobby");
        let receipts = Receipt::for_seqs(&room, [7, 3, 4, 5, 5, 9]);
        assert_eq!(receipts.len(), 1);
        assert_eq!(receipts[0].stored, [(3, 5), (7, 7), (9, 9)]);
        assert!(receipts[0].covers(4) && !receipts[0].covers(6));
        assert_eq!(receipts[0].seqs().collect::<Vec<_>>(), [3, 4, 5, 7, 9]);
        let sparse = Receipt::for_seqs(&room, (0..600).map(|n| n * 2));
        assert_eq!(sparse.len(), 3);
        assert!(
            sparse
                .iter()
                .all(|r| Content::decode(&Content::Receipt(r.clone()).encode()).is_some())
        );
    }
}
