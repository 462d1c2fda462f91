//! Round trips, a hostile relay (swapped, replayed, truncated, spliced and
//! damaged chunks), altered manifests, resumed downloads and known answers.

#![allow(clippy::cast_possible_truncation)] // test sizes are a few chunks

use proptest::prelude::*;

use super::*;

const SIZES: [usize; 6] = [
    0,
    1,
    CHUNK_LEN - 1,
    CHUNK_LEN,
    CHUNK_LEN + 1,
    3 * CHUNK_LEN + 5,
];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes that differ from chunk to chunk and within each.
fn file_of(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// The plaintext of each chunk, the empty file's one empty chunk included.
fn pieces(plaintext: &[u8]) -> Vec<&[u8]> {
    if plaintext.is_empty() {
        vec![&[]]
    } else {
        plaintext.chunks(CHUNK_LEN).collect()
    }
}

/// Seals `plaintext` with `sealer`, chunk by chunk.
fn seal_with(mut sealer: FileSealer, plaintext: &[u8]) -> (FileManifest, Vec<Vec<u8>>) {
    let chunks = pieces(plaintext)
        .into_iter()
        .map(|piece| sealer.seal_chunk(piece).unwrap())
        .collect();
    (sealer.finish().unwrap(), chunks)
}

fn seal_all(plaintext: &[u8]) -> (FileManifest, Vec<Vec<u8>>) {
    seal_with(FileSealer::new(plaintext.len() as u64).unwrap(), plaintext)
}

/// Opens every chunk in order and finishes.
fn open_all(manifest: &FileManifest, chunks: &[Vec<u8>]) -> Result<Vec<u8>> {
    let mut opener = FileOpener::new(manifest)?;
    let mut plaintext = Vec::new();
    for (index, chunk) in (0..).zip(chunks) {
        plaintext.extend(opener.open_chunk(index, chunk)?);
    }
    opener.finish()?;
    Ok(plaintext)
}

fn assert_fails<T: fmt::Debug>(result: Result<T>) {
    assert!(matches!(result, Err(Error::DecryptionFailed)), "{result:?}");
}

fn flip(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut flipped = bytes.to_vec();
    flipped[at] ^= 0x01;
    flipped
}

#[test]
fn files_round_trip_at_the_chunk_boundaries() {
    for size in SIZES {
        let plaintext = file_of(size);
        let (manifest, chunks) = seal_all(&plaintext);
        let count = size.div_ceil(CHUNK_LEN).max(1);
        assert_eq!(manifest.size, size as u64);
        assert_eq!(manifest.chunks as usize, count);
        assert_eq!(chunks.len(), count);
        for (index, chunk) in (0..).zip(&chunks) {
            assert_eq!(Some(chunk.len()), manifest.ciphertext_len(index));
        }
        let mut digest = digest_hasher();
        digest.update(&plaintext);
        assert_eq!(manifest.digest, *digest.finalize().as_bytes());
        assert_eq!(open_all(&manifest, &chunks).unwrap(), plaintext, "{size}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn any_file_round_trips(size in 0..4 * CHUNK_LEN + 2, seed in any::<u8>()) {
        let plaintext: Vec<u8> = (0..size).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
        let (manifest, chunks) = seal_all(&plaintext);
        prop_assert_eq!(manifest.chunks, chunk_count(size as u64).unwrap());
        prop_assert_eq!(open_all(&manifest, &chunks).unwrap(), plaintext);
    }

    #[test]
    fn in_place_sealing_and_opening_match_the_copying_calls(size in 0..3 * CHUNK_LEN) {
        let plaintext = file_of(size);
        let (key, blob) = ([3; KEY_LEN], BlobId([4; BLOB_ID_LEN]));
        let (manifest, chunks) =
            seal_with(FileSealer::with_key(FileKey::from_bytes(key), blob, size as u64).unwrap(), &plaintext);
        let mut sealer = FileSealer::with_key(FileKey::from_bytes(key), blob, size as u64).unwrap();
        let mut opener = FileOpener::new(&manifest).unwrap();
        for ((index, piece), chunk) in (0..).zip(pieces(&plaintext)).zip(&chunks) {
            let mut buf = piece.to_vec();
            sealer.seal_chunk_in_place(&mut buf).unwrap();
            prop_assert_eq!(&buf, chunk);
            opener.open_chunk_in_place(index, &mut buf).unwrap();
            prop_assert_eq!(&buf[..], piece);
        }
        prop_assert_eq!(sealer.finish().unwrap().digest, manifest.digest);
        opener.finish().unwrap();
    }
}

/// Computed with OpenSSL's AES-GCM (Python's `cryptography`) and Python's
/// `blake3` from the formulas in the module documentation.
#[test]
fn sealing_gives_the_known_answers() {
    let known = |size: usize| {
        FileSealer::with_key(FileKey::from_bytes([7; 32]), BlobId([9; 16]), size as u64).unwrap()
    };

    let (manifest, chunks) = seal_with(known(5), b"sotto");
    assert_eq!(
        hex(&chunks[0]),
        "12b7d0c6948504d28a2e1269c42b2f07b0662bf8b7"
    );
    assert_eq!(
        hex(&manifest.digest),
        "e9df87878354ad8237d0cf10e589797eebe5cdd519132cfd8143422cce665921"
    );

    let (manifest, chunks) = seal_with(known(0), b"");
    assert_eq!(hex(&chunks[0]), "0f9df6b6c8e4d0c514c08e1c1d5be642");
    assert_eq!(
        hex(&manifest.digest),
        "a574cf74cac08d965949d466c80023ac53635c87b969fb35ac232f9e86d5ed67"
    );

    // Two chunks: the index and count in the nonce and associated data.
    let (manifest, chunks) = seal_with(known(CHUNK_LEN + 1), &[b'a'; CHUNK_LEN + 1]);
    assert_eq!(hex(&chunks[0][..16]), "00b9c5d39af36a898066ee05a51a2acf");
    assert_eq!(
        hex(&chunks[0][CHUNK_LEN..]),
        "9e2752303c7496e09dc6826d67a78f81"
    );
    assert_eq!(hex(&chunks[1]), "5142387674623e1984bdc2e2b9904d00f2");
    assert_eq!(
        hex(&manifest.digest),
        "4f7b3f438debc51c67de50d7f5289239b16955524d20734c05710820204dad25"
    );
}

#[test]
fn every_file_has_a_fresh_key_and_blob_id() {
    let plaintext = file_of(100);
    let (first, first_chunks) = seal_all(&plaintext);
    let (second, second_chunks) = seal_all(&plaintext);
    assert_ne!(first.key.expose_secret(), second.key.expose_secret());
    assert_ne!(first.blob, second.blob);
    assert_ne!(first_chunks, second_chunks);
    assert_eq!(first.digest, second.digest);
}

#[test]
fn swapped_chunks_do_not_open() {
    let (manifest, mut chunks) = seal_all(&file_of(3 * CHUNK_LEN));
    let mut opener = FileOpener::new(&manifest).unwrap();
    assert_fails(opener.open_chunk(0, &chunks[1]));
    chunks.swap(0, 1);
    assert_fails(open_all(&manifest, &chunks));
}

#[test]
fn a_chunk_replayed_at_another_index_does_not_open() {
    let (manifest, chunks) = seal_all(&file_of(3 * CHUNK_LEN));
    let mut opener = FileOpener::new(&manifest).unwrap();
    opener.open_chunk(0, &chunks[0]).unwrap();
    // Chunk 0 again where chunk 1 belongs, and chunk 0 once more at 0.
    assert_fails(opener.open_chunk(1, &chunks[0]));
    assert_fails(opener.open_chunk(0, &chunks[0]));
    opener.open_chunk(1, &chunks[1]).unwrap();
    assert_fails(opener.open_chunk(2, &chunks[1]));
    opener.open_chunk(2, &chunks[2]).unwrap();
    // Nothing opens after the last chunk.
    assert_fails(opener.open_chunk(3, &chunks[2]));
    assert_eq!(opener.next_index(), None);
    opener.finish().unwrap();
}

#[test]
fn a_truncated_file_does_not_finish() {
    let (manifest, chunks) = seal_all(&file_of(2 * CHUNK_LEN + 7));
    let mut opener = FileOpener::new(&manifest).unwrap();
    opener.open_chunk(0, &chunks[0]).unwrap();
    opener.open_chunk(1, &chunks[1]).unwrap();
    assert_eq!(opener.next_index(), Some(2));
    assert_fails(opener.finish());
}

#[test]
fn a_non_last_chunk_does_not_open_as_the_last() {
    // Three full chunks: the lengths alone cannot tell them apart.
    let plaintext = file_of(3 * CHUNK_LEN);
    let (manifest, chunks) = seal_all(&plaintext);
    let mut opener = FileOpener::new(&manifest).unwrap();
    opener.open_chunk(0, &chunks[0]).unwrap();
    opener.open_chunk(1, &chunks[1]).unwrap();
    assert_fails(opener.open_chunk(2, &chunks[1]));

    // Nor when the manifest is shortened to end there.
    let shortened = FileManifest {
        size: 2 * CHUNK_LEN as u64,
        chunks: 2,
        ..manifest.clone()
    };
    let mut opener = FileOpener::new(&shortened).unwrap();
    assert_fails(opener.open_chunk(0, &chunks[0]));
    assert_fails(open_all(&shortened, &chunks[..2]));
}

#[test]
fn chunks_of_another_file_do_not_open() {
    let plaintext = file_of(2 * CHUNK_LEN);
    let (manifest, chunks) = seal_all(&plaintext);
    // The same blob id and index under another key.
    let (other_key, other_chunks) = seal_with(
        FileSealer::with_key(FileKey::generate(), manifest.blob, plaintext.len() as u64).unwrap(),
        &plaintext,
    );
    // The same key and index under another blob id.
    let (other_blob, other_blob_chunks) = seal_with(
        FileSealer::with_key(
            manifest.key.clone(),
            BlobId::generate(),
            plaintext.len() as u64,
        )
        .unwrap(),
        &plaintext,
    );
    assert_eq!(open_all(&other_key, &other_chunks).unwrap(), plaintext);
    assert_eq!(
        open_all(&other_blob, &other_blob_chunks).unwrap(),
        plaintext
    );
    for index in 0..2 {
        let mut opener = FileOpener::new(&manifest).unwrap();
        for before in 0..index {
            opener.open_chunk(before, &chunks[before as usize]).unwrap();
        }
        assert_fails(opener.open_chunk(index, &other_chunks[index as usize]));
        assert_fails(opener.open_chunk(index, &other_blob_chunks[index as usize]));
    }
}

#[test]
fn a_flipped_bit_in_any_chunk_does_not_open_and_the_chunk_can_be_fetched_again() {
    let (manifest, chunks) = seal_all(&file_of(2 * CHUNK_LEN + 3));
    let mut opener = FileOpener::new(&manifest).unwrap();
    for (index, chunk) in (0..).zip(&chunks) {
        // The first and last plaintext byte, the first and last tag byte.
        let last = chunk.len() - 1;
        for at in [0, last - TAG_LEN, last - TAG_LEN + 1, last] {
            assert_fails(opener.open_chunk(index, &flip(chunk, at)));
            let mut buf = flip(chunk, at);
            assert_fails(opener.open_chunk_in_place(index, &mut buf));
            assert!(buf.is_empty());
        }
        assert_eq!(opener.next_index(), Some(index));
        opener.open_chunk(index, chunk).unwrap();
    }
    opener.finish().unwrap();
}

#[test]
fn a_chunk_of_another_length_does_not_open() {
    let (manifest, chunks) = seal_all(&file_of(CHUNK_LEN + 10));
    let mut opener = FileOpener::new(&manifest).unwrap();
    for (index, chunk) in (0..).zip(&chunks) {
        let mut longer = chunk.clone();
        longer.push(0);
        assert_fails(opener.open_chunk(index, &longer));
        assert_fails(opener.open_chunk(index, &chunk[..chunk.len() - 1]));
        assert_fails(opener.open_chunk(index, &chunk[..TAG_LEN]));
        assert_fails(opener.open_chunk(index, &[]));
        opener.open_chunk(index, chunk).unwrap();
    }
    opener.finish().unwrap();
}

#[test]
fn an_altered_manifest_does_not_open_the_file() {
    let plaintext = file_of(CHUNK_LEN + 10);
    let (manifest, chunks) = seal_all(&plaintext);

    // Another size with the same chunk count: every chunk's tag fails.
    let resized = FileManifest {
        size: manifest.size - 1,
        ..manifest.clone()
    };
    let mut opener = FileOpener::new(&resized).unwrap();
    assert_fails(opener.open_chunk(0, &chunks[0]));

    // Another digest: every chunk opens, the file does not finish.
    let mut digest = manifest.digest;
    digest[31] ^= 1;
    let redigested = FileManifest {
        digest,
        ..manifest.clone()
    };
    let mut opener = FileOpener::new(&redigested).unwrap();
    for (index, chunk) in (0..).zip(&chunks) {
        opener.open_chunk(index, chunk).unwrap();
    }
    assert_fails(opener.finish());

    // A chunk count that is not the size's.
    for chunks in [0, 1, 3, u32::MAX] {
        let recounted = FileManifest {
            chunks,
            ..manifest.clone()
        };
        assert_fails(FileOpener::new(&recounted));
        assert_eq!(recounted.chunk_len(0), None);
    }

    // Another key.
    let rekeyed = FileManifest {
        key: FileKey::generate(),
        ..manifest.clone()
    };
    assert_fails(open_all(&rekeyed, &chunks));
    assert_eq!(open_all(&manifest, &chunks).unwrap(), plaintext);
}

#[test]
fn a_resumed_download_ends_as_a_straight_one() {
    let plaintext = file_of(3 * CHUNK_LEN + 5);
    let (manifest, chunks) = seal_all(&plaintext);
    for done in 0..=manifest.chunks {
        let written = plaintext.len().min(done as usize * CHUNK_LEN);
        // What follows the prefix (a chunk half written) is not read.
        let mut reader: &[u8] = &plaintext;
        let mut opener = FileOpener::resume(&manifest, done, &mut reader).unwrap();
        assert_eq!(reader.len(), plaintext.len() - written);
        let mut received = plaintext[..written].to_vec();
        assert_eq!(
            opener.next_index(),
            (done < manifest.chunks).then_some(done)
        );
        for (index, chunk) in (0..).zip(&chunks).skip(done as usize) {
            received.extend(opener.open_chunk(index, chunk).unwrap());
        }
        opener.finish().unwrap();
        assert_eq!(received, plaintext);
    }
}

#[test]
fn a_download_resumed_on_a_wrong_prefix_does_not_finish() {
    let plaintext = file_of(3 * CHUNK_LEN + 5);
    let (manifest, chunks) = seal_all(&plaintext);
    for done in 1..=manifest.chunks {
        // The prefix's last byte is damaged.
        let written = plaintext.len().min(done as usize * CHUNK_LEN);
        let wrong = flip(&plaintext, written - 1);
        let mut opener = FileOpener::resume(&manifest, done, &mut &wrong[..]).unwrap();
        for (index, chunk) in (0..).zip(&chunks).skip(done as usize) {
            opener.open_chunk(index, chunk).unwrap();
        }
        assert_fails(opener.finish());
    }
}

#[test]
fn resuming_needs_the_whole_prefix_and_no_more_chunks_than_the_file() {
    let plaintext = file_of(2 * CHUNK_LEN + 5);
    let (manifest, _) = seal_all(&plaintext);
    let short = &plaintext[..2 * CHUNK_LEN - 1];
    assert!(matches!(
        FileOpener::resume(&manifest, 2, &mut &short[..]),
        Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof
    ));
    assert!(matches!(
        FileOpener::resume(&manifest, 4, &mut &plaintext[..]),
        Err(Error::InvalidParameter(_))
    ));
    let recounted = FileManifest {
        chunks: 2,
        ..manifest
    };
    assert_fails(FileOpener::resume(&recounted, 0, &mut &plaintext[..]));
}

#[test]
fn the_sealer_takes_each_chunk_once_in_order_at_its_length() {
    let plaintext = file_of(CHUNK_LEN + 3);
    let mut sealer = FileSealer::new(plaintext.len() as u64).unwrap();
    assert_eq!(sealer.next_chunk_len(), Some(CHUNK_LEN));
    assert!(matches!(
        sealer.seal_chunk(&plaintext[..CHUNK_LEN - 1]),
        Err(Error::InvalidParameter(_))
    ));
    let mut too_long = plaintext[..=CHUNK_LEN].to_vec();
    assert!(matches!(
        sealer.seal_chunk_in_place(&mut too_long),
        Err(Error::InvalidParameter(_))
    ));
    assert_eq!(too_long, plaintext[..=CHUNK_LEN]);
    let first = sealer.seal_chunk(&plaintext[..CHUNK_LEN]).unwrap();
    assert_eq!(sealer.next_chunk_len(), Some(3));
    assert!(matches!(
        sealer.seal_chunk(&plaintext[..CHUNK_LEN]),
        Err(Error::InvalidParameter(_))
    ));
    let last = sealer.seal_chunk(&plaintext[CHUNK_LEN..]).unwrap();
    assert_eq!(sealer.next_chunk_len(), None);
    assert!(matches!(
        sealer.seal_chunk(&[]),
        Err(Error::InvalidParameter(_))
    ));
    let manifest = sealer.finish().unwrap();
    assert_eq!(open_all(&manifest, &[first, last]).unwrap(), plaintext);

    // Not every chunk sealed: no manifest.
    let mut sealer = FileSealer::new(plaintext.len() as u64).unwrap();
    sealer.seal_chunk(&plaintext[..CHUNK_LEN]).unwrap();
    assert!(matches!(sealer.finish(), Err(Error::InvalidParameter(_))));
    let sealer = FileSealer::new(0).unwrap();
    assert!(matches!(sealer.finish(), Err(Error::InvalidParameter(_))));
}

#[test]
fn sizes_stop_at_max_file_len() {
    assert_eq!(chunk_count(0).unwrap(), 1);
    assert_eq!(chunk_count(CHUNK_LEN as u64).unwrap(), 1);
    assert_eq!(chunk_count(CHUNK_LEN as u64 + 1).unwrap(), 2);
    assert_eq!(chunk_count(MAX_FILE_LEN).unwrap(), u32::MAX);
    for size in [MAX_FILE_LEN + 1, u64::MAX] {
        assert!(matches!(chunk_count(size), Err(Error::InvalidParameter(_))));
        assert!(matches!(
            FileSealer::new(size),
            Err(Error::InvalidParameter(_))
        ));
    }
    let sealer = FileSealer::new(MAX_FILE_LEN).unwrap();
    assert_eq!(sealer.next_chunk_len(), Some(CHUNK_LEN));

    let manifest = FileManifest {
        blob: BlobId([0; BLOB_ID_LEN]),
        key: FileKey::from_bytes([0; KEY_LEN]),
        size: MAX_FILE_LEN - 1,
        chunks: u32::MAX,
        digest: [0; DIGEST_LEN],
    };
    assert_eq!(manifest.chunk_len(u32::MAX - 2), Some(CHUNK_LEN));
    assert_eq!(manifest.chunk_len(u32::MAX - 1), Some(CHUNK_LEN - 1));
    assert_eq!(
        manifest.ciphertext_len(u32::MAX - 1),
        Some(CHUNK_CIPHERTEXT_LEN - 1)
    );
    assert_eq!(manifest.chunk_len(u32::MAX), None);
    let oversized = FileManifest {
        size: MAX_FILE_LEN + 1,
        ..manifest
    };
    assert_fails(FileOpener::new(&oversized));
}

#[test]
fn a_manifest_survives_serialization() {
    let plaintext = file_of(CHUNK_LEN + 1);
    let (manifest, chunks) = seal_all(&plaintext);
    let decoded: FileManifest =
        postcard::from_bytes(&postcard::to_allocvec(&manifest).unwrap()).unwrap();
    assert_eq!(decoded.blob, manifest.blob);
    assert_eq!(decoded.key.expose_secret(), manifest.key.expose_secret());
    assert_eq!(
        (decoded.size, decoded.chunks),
        (manifest.size, manifest.chunks)
    );
    assert_eq!(decoded.digest, manifest.digest);
    assert_eq!(open_all(&decoded, &chunks).unwrap(), plaintext);
}

#[test]
fn blob_ids_are_hex() {
    let blob = BlobId(std::array::from_fn(|i| i as u8 * 17));
    assert_eq!(blob.to_hex(), "00112233445566778899aabbccddeeff");
}

#[test]
fn debug_never_shows_key_bytes() {
    let key = FileKey::from_bytes([0xAB; KEY_LEN]);
    assert_eq!(format!("{key:?}"), "FileKey { .. }");
    let manifest = FileManifest {
        blob: BlobId([1; BLOB_ID_LEN]),
        key,
        size: 5,
        chunks: 1,
        digest: [2; DIGEST_LEN],
    };
    let ones = ["1"; BLOB_ID_LEN].join(", ");
    let twos = ["2"; DIGEST_LEN].join(", ");
    assert_eq!(
        format!("{manifest:?}"),
        format!(
            "FileManifest {{ blob: BlobId([{ones}]), key: FileKey {{ .. }}, size: 5, chunks: 1, digest: [{twos}] }}"
        )
    );
    let sealer = FileSealer::with_key(manifest.key.clone(), manifest.blob, 5).unwrap();
    assert_eq!(
        format!("{sealer:?}"),
        format!("FileSealer {{ blob: BlobId([{ones}]), size: 5, chunks: 1, sealed: 0, .. }}")
    );
    let opener = FileOpener::new(&manifest).unwrap();
    assert_eq!(
        format!("{opener:?}"),
        format!("FileOpener {{ blob: BlobId([{ones}]), size: 5, chunks: 1, opened: 0, .. }}")
    );
}
