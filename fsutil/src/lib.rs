//! Writing sotto's files so that a crash never leaves half of one and a
//! secret is never readable by anyone but its owner, not even for a moment.
//!
//! Every file sotto keeps secrets or pins in (the identity file, the
//! relay's TLS keys, the pinned relays, a sequence counter) and every file
//! it rewrites whole (the app's settings, the relay's certificate) is
//! written by [`write_atomic`] or [`write_private`].
//!
//! # Design
//!
//! A [`PendingFile`] is the new content under a temporary name in the
//! target's own directory (so the rename cannot cross file systems),
//! **created** with its final mode, before any byte is written; then
//! [`PendingFile::commit`] syncs it, renames it over the target and syncs
//! the directory, so that after a crash the target is either the old file
//! or the new one, complete. A pending file dropped without `commit` (an
//! error half-way) removes its temporary file and leaves the target alone.
//!
//! This is its own crate, not part of `sotto-crypto`, because the relay
//! needs it as much as the client and it has nothing to do with
//! cryptography: the crypto crate uses it (the identity file) without
//! exporting it.
//!
//! # Example
//!
//! ```
//! # fn main() -> std::io::Result<()> {
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("secret.txt");
//! sotto_fsutil::write_private(&path, b"first")?;
//! sotto_fsutil::write_private(&path, b"second")?;
//! assert_eq!(std::fs::read(&path)?, b"second");
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The mode of a private file: read and write for its owner only.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// The mode of a private directory: its owner only.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Atomically replaces `path` with `bytes`, readable only by its owner
/// (mode 0600 from the first byte): see [`PendingFile`].
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic(path, bytes, PRIVATE_FILE_MODE)
}

/// Atomically replaces `path` with `bytes`, as a file created with `mode`
/// (less the process's umask; ignored where there are no Unix modes): see
/// [`PendingFile`].
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut pending = PendingFile::create(path, mode)?;
    pending.write_all(bytes)?;
    pending.commit()
}

/// Creates `path` as an empty file readable by its owner only, if it does
/// not exist yet; an existing file is left as it is. For files another
/// library then writes in place (the client's database).
pub fn create_private_file(path: &Path) -> io::Result<()> {
    match options(PRIVATE_FILE_MODE).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates `dir` (and parents) if missing; a directory this creates is
/// readable by its owner only.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, PRIVATE_DIR_MODE);
    builder.create(dir)
}

/// Options that create a new file (never open an existing one) with `mode`.
fn options(mode: u32) -> OpenOptions {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    options
}

/// Tells apart the temporary files of one process.
static NEXT_TEMPORARY: AtomicU64 = AtomicU64::new(0);

/// The new content of a file, not yet in place.
///
/// [`PendingFile::create`] makes the temporary file
/// `.NAME.PID.N.tmp` beside the target, with its final mode, before any
/// byte is written; [`PendingFile::commit`] puts it in place. Dropped
/// without `commit`, it removes the temporary file: the target keeps its
/// old content.
#[derive(Debug)]
pub struct PendingFile {
    file: File,
    temporary: PathBuf,
    target: PathBuf,
    dir: PathBuf,
    committed: bool,
}

impl PendingFile {
    /// Starts replacing `target` with a file of `mode`: creates the
    /// temporary file, empty.
    pub fn create(target: &Path, mode: u32) -> io::Result<Self> {
        let dir = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let name = target
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
        let mut temporary = OsString::from(".");
        temporary.push(name);
        temporary.push(format!(
            ".{}.{}.tmp",
            std::process::id(),
            NEXT_TEMPORARY.fetch_add(1, Ordering::Relaxed)
        ));
        let temporary = dir.join(temporary);
        let file = match options(mode).open(&temporary) {
            // Only a process with our id, hence one that has ended, can
            // have left a file of this name (a crash before its rename).
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                fs::remove_file(&temporary)?;
                options(mode).open(&temporary)
            }
            other => other,
        }?;
        Ok(Self {
            file,
            temporary,
            target: target.to_path_buf(),
            dir,
            committed: false,
        })
    }

    /// Where the content is until [`PendingFile::commit`].
    pub fn temporary_path(&self) -> &Path {
        &self.temporary
    }

    /// Appends `bytes` to the new content.
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)
    }

    /// Syncs the new content, renames it over the target and syncs the
    /// directory (on Unix; elsewhere a directory cannot be synced).
    pub fn commit(mut self) -> io::Result<()> {
        self.file.sync_all()?;
        fs::rename(&self.temporary, &self.target)?;
        self.committed = true;
        #[cfg(unix)]
        File::open(&self.dir)?.sync_all()?;
        Ok(())
    }
}

/// Streams into the new content (a copy too large to hold in memory).
impl Write for PendingFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.file.write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.temporary);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)] // tests

    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[cfg(unix)]
    #[test]
    fn the_temporary_file_is_private_before_its_first_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        let mut pending = PendingFile::create(&path, PRIVATE_FILE_MODE).unwrap();
        let temporary = pending.temporary_path().to_path_buf();
        assert_eq!(temporary.parent(), Some(dir.path()));
        assert_eq!(fs::metadata(&temporary).unwrap().len(), 0);
        assert_eq!(mode(&temporary), 0o600);
        pending.write_all(b"secret").unwrap();
        assert_eq!(mode(&temporary), 0o600);
        pending.commit().unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(fs::read(&path).unwrap(), b"secret");
    }

    #[cfg(unix)]
    #[test]
    fn a_replaced_file_is_private_even_if_the_old_one_was_not() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"new").unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(fs::read(&path).unwrap(), b"new");
    }

    #[test]
    fn success_leaves_only_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("servers.txt");
        write_private(&path, b"one").unwrap();
        write_atomic(&path, b"two", 0o644).unwrap();
        assert_eq!(names(dir.path()), ["servers.txt"]);
        assert_eq!(fs::read(&path).unwrap(), b"two");
    }

    #[test]
    fn a_crash_before_the_rename_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.sotto");
        write_private(&path, b"old").unwrap();

        // A crash after writing, before the rename: nothing cleans up.
        let mut crashed = PendingFile::create(&path, PRIVATE_FILE_MODE).unwrap();
        crashed.write_all(b"half of the n").unwrap();
        let leftover = crashed.temporary_path().to_path_buf();
        std::mem::forget(crashed);
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert!(leftover.exists());
        fs::remove_file(leftover).unwrap();

        // An error half-way: the pending file is dropped and cleans up.
        let mut failed = PendingFile::create(&path, PRIVATE_FILE_MODE).unwrap();
        failed.write_all(b"half").unwrap();
        drop(failed);
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(names(dir.path()), ["identity.sotto"]);
    }

    #[test]
    fn a_relative_path_without_a_directory_is_written_where_we_are() {
        let pending = PendingFile::create(Path::new("x"), PRIVATE_FILE_MODE);
        // Not committed: the temporary file in "." is removed on drop.
        let temporary = pending.as_ref().unwrap().temporary_path().to_path_buf();
        assert_eq!(temporary.parent(), Some(Path::new(".")));
        drop(pending);
        assert!(!temporary.exists());
        assert!(PendingFile::create(Path::new("/"), PRIVATE_FILE_MODE).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn private_files_and_directories_are_created_for_their_owner() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a").join("b");
        create_private_dir(&sub).unwrap();
        assert_eq!(mode(&sub), 0o700);
        let file = sub.join("client.redb");
        create_private_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        fs::write(&file, b"kept").unwrap();
        create_private_file(&file).unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"kept");
    }
}
