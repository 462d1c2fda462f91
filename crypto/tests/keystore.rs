//! The identity file (P10).

#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // tests

mod common;

use common::{people, rng};
use sotto_crypto::{Error, Identity, KdfParams};

const PASS: &[u8] = b"correct horse battery staple";

fn saved_alice() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.sotto");
    people()
        .alice
        .save(&mut rng(), &path, PASS, KdfParams::INSECURE_FOR_TESTS)
        .unwrap();
    (dir, path)
}

#[test]
fn identity_file_round_trips() {
    let (_dir, path) = saved_alice();
    let loaded = Identity::load(&path, PASS).unwrap();
    assert_eq!(loaded.fingerprint(), people().alice.fingerprint());
}

#[test]
fn identity_file_is_private_to_its_owner() {
    let (_dir, path) = saved_alice();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn wrong_passphrase_is_reported_as_such() {
    let (_dir, path) = saved_alice();
    assert!(matches!(
        Identity::load(&path, b"wrong"),
        Err(Error::WrongPassphrase)
    ));
    assert!(matches!(
        Identity::load(&path, b""),
        Err(Error::WrongPassphrase)
    ));
}

#[test]
fn corrupted_identity_file_is_detected() {
    let (_dir, path) = saved_alice();
    let good = std::fs::read(&path).unwrap();
    for at in [
        0,
        9,
        30,
        40,
        60,
        good.len() / 2,
        good.len() - 40,
        good.len() - 1,
    ] {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        let result = Identity::decrypt_from_bytes(&bad, PASS);
        assert!(
            matches!(result, Err(Error::CorruptIdentityFile)),
            "byte {at}: {result:?}"
        );
    }
}

#[test]
fn damaged_version_byte_reads_as_unsupported_version() {
    let (_dir, path) = saved_alice();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8] ^= 0x10;
    let err = Identity::decrypt_from_bytes(&bytes, PASS).unwrap_err();
    assert!(matches!(err, Error::UnsupportedVersion(17)), "{err:?}");
    assert!(err.to_string().contains("damaged"), "{err}");
}

#[test]
fn truncated_identity_file_is_detected() {
    let (_dir, path) = saved_alice();
    let good = std::fs::read(&path).unwrap();
    for len in [0, 5, 8, 9, 48, 49, 100, good.len() - 33, good.len() - 1] {
        let result = Identity::decrypt_from_bytes(&good[..len], PASS);
        assert!(
            matches!(result, Err(Error::CorruptIdentityFile)),
            "length {len}: {result:?}"
        );
    }
}

#[test]
fn unknown_identity_file_version_is_refused() {
    use sha2::Digest;
    let (_dir, path) = saved_alice();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8] = 2;
    let body = bytes.len() - 32;
    let check = sha2::Sha256::digest(&bytes[..body]);
    bytes[body..].copy_from_slice(&check);
    assert!(matches!(
        Identity::decrypt_from_bytes(&bytes, PASS),
        Err(Error::UnsupportedVersion(2))
    ));
}

#[test]
fn hostile_kdf_costs_are_refused_without_running_them() {
    use sha2::Digest;
    let (_dir, path) = saved_alice();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[9..13].copy_from_slice(&u32::MAX.to_le_bytes()); // 4 TiB of memory
    let body = bytes.len() - 32;
    let check = sha2::Sha256::digest(&bytes[..body]);
    bytes[body..].copy_from_slice(&check);
    assert!(matches!(
        Identity::decrypt_from_bytes(&bytes, PASS),
        Err(Error::CorruptIdentityFile)
    ));
}

/// The file at `path` with its costs replaced (and its checksum fixed).
fn with_costs(path: &std::path::Path, memory_kib: u32, passes: u32, lanes: u32) -> Vec<u8> {
    use sha2::Digest;
    let mut bytes = std::fs::read(path).unwrap();
    bytes[9..13].copy_from_slice(&memory_kib.to_le_bytes());
    bytes[13..17].copy_from_slice(&passes.to_le_bytes());
    bytes[17..21].copy_from_slice(&lanes.to_le_bytes());
    let body = bytes.len() - 32;
    let check = sha2::Sha256::digest(&bytes[..body]);
    bytes[body..].copy_from_slice(&check);
    bytes
}

#[test]
fn kdf_costs_are_bounded_exactly_as_documented() {
    // protocol.md 20: memory from 8 * lanes KiB to 4 GiB, 1 to 64 passes,
    // 1 to 16 lanes. Costs inside the bounds run the KDF, which then gives
    // another key than the file was sealed under: `WrongPassphrase`.
    // Costs outside are refused before it runs: `CorruptIdentityFile`.
    let (_dir, path) = saved_alice();
    for (memory, passes, lanes) in [(8, 1, 1), (8, 64, 1), (128, 1, 16), (16, 1, 2)] {
        assert!(
            matches!(
                Identity::decrypt_from_bytes(&with_costs(&path, memory, passes, lanes), PASS),
                Err(Error::WrongPassphrase)
            ),
            "{memory} KiB, {passes} passes, {lanes} lanes refused"
        );
    }
    for (memory, passes, lanes) in [
        (7, 1, 1),
        (15, 1, 2),
        (4 * 1024 * 1024 + 1, 1, 1),
        (8, 0, 1),
        (8, 65, 1),
        (8, 1, 0),
        (17 * 8, 1, 17),
    ] {
        assert!(
            matches!(
                Identity::decrypt_from_bytes(&with_costs(&path, memory, passes, lanes), PASS),
                Err(Error::CorruptIdentityFile)
            ),
            "{memory} KiB, {passes} passes, {lanes} lanes accepted"
        );
    }
}

#[test]
fn passphrase_change_replaces_the_old_one() {
    let (_dir, path) = saved_alice();
    Identity::change_passphrase(
        &mut rng(),
        &path,
        PASS,
        b"new one",
        KdfParams::INSECURE_FOR_TESTS,
    )
    .unwrap();
    assert!(matches!(
        Identity::load(&path, PASS),
        Err(Error::WrongPassphrase)
    ));
    assert_eq!(
        Identity::load(&path, b"new one").unwrap().fingerprint(),
        people().alice.fingerprint()
    );
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
    assert_eq!(names.len(), 1);
}

#[test]
fn empty_passphrase_is_refused_when_saving() {
    let dir = tempfile::tempdir().unwrap();
    let result = people().alice.save(
        &mut rng(),
        &dir.path().join("id"),
        b"",
        KdfParams::INSECURE_FOR_TESTS,
    );
    assert!(matches!(result, Err(Error::EmptyPassphrase)));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
