//! Owner-only files and directories for everything of delivery's that holds guest data (the
//! spool, a `file://` store's objects, `crashvmm fetch`'s output): 0600 and 0700 whatever the
//! umask (the umask can only take permissions away); `vmm::files` uses its modes and
//! directories for crash directories too. And the checks that what the spool reads is still
//! its own.

use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of owner-only files (delivery's and crashvmm's).
pub const FILE_MODE: u32 = 0o600;
/// Mode of owner-only directories (delivery's and crashvmm's).
pub const DIR_MODE: u32 = 0o700;

/// Create (or truncate) `path` for writing, mode 0600.
pub fn create_file(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new().write(true).create(true).truncate(true).mode(FILE_MODE).open(path)?;
    f.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

/// Create directory `path`, mode 0700 (an error if it exists).
pub fn create_dir(path: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().mode(DIR_MODE).create(path)?;
    std::fs::set_permissions(path, Permissions::from_mode(DIR_MODE))
}

/// Create `path` and its missing parents; those created here get mode 0700, an existing
/// directory keeps its mode (it is the operator's).
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(parent)?;
    }
    match create_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        other => other,
    }
}

/// Make the file `path` owner-only (0600).
pub fn seal(path: &Path) -> io::Result<()> {
    std::fs::set_permissions(path, Permissions::from_mode(FILE_MODE))
}

/// This process's effective user id.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

/// Why `meta` (of something the spool reads) is not to be trusted: not owned by `euid`, or
/// writable by group or others.
fn distrust(meta: &std::fs::Metadata, euid: u32) -> Option<String> {
    if meta.uid() != euid {
        return Some(format!("it belongs to uid {}, not to this process's uid {euid}", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Some(format!("it is group- or other-writable (mode {:04o})", meta.mode() & 0o7777));
    }
    None
}

/// `Some(reason)` unless `path` is a directory (not a symbolic link) owned by `euid` that
/// only its owner may write.
pub(crate) fn untrusted_dir(path: &Path, euid: u32) -> io::Result<Option<String>> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(Some("it is a symbolic link".into()));
    }
    if !meta.is_dir() {
        return Ok(Some("it is not a directory".into()));
    }
    Ok(distrust(&meta, euid))
}

/// Open `path` for reading unless it is a symbolic link, not a regular file, not owned by
/// `euid` or writable by group or others: `Err(reason)` then. The checks are made on the
/// opened file, so that what is read is what was checked.
pub(crate) fn open_trusted(path: &Path, euid: u32) -> Result<File, String> {
    let f = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path).map_err(
        |e| match e.raw_os_error() {
            Some(libc::ELOOP) => "it is a symbolic link".to_owned(),
            _ => format!("cannot open it: {e}"),
        },
    )?;
    let meta = f.metadata().map_err(|e| format!("cannot stat it: {e}"))?;
    if !meta.is_file() {
        return Err("it is not a regular file".into());
    }
    match distrust(&meta, euid) {
        Some(reason) => Err(reason),
        None => Ok(f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_files_and_directories_are_named_with_a_reason() -> io::Result<()> {
        let d = tempfile::tempdir()?;
        let me = euid();
        let f = d.path().join("f");
        create_file(&f)?;
        assert!(open_trusted(&f, me).is_ok());
        assert!(open_trusted(&f, me.wrapping_add(1)).unwrap_err().contains("belongs to uid"));
        std::fs::set_permissions(&f, Permissions::from_mode(0o620))?;
        assert!(open_trusted(&f, me).unwrap_err().contains("group- or other-writable (mode 0620)"));
        std::os::unix::fs::symlink(&f, d.path().join("l"))?;
        assert_eq!(open_trusted(&d.path().join("l"), me).unwrap_err(), "it is a symbolic link");
        assert_eq!(open_trusted(d.path(), me).unwrap_err(), "it is not a regular file");
        let sub = d.path().join("sub");
        create_dir(&sub)?;
        assert_eq!(untrusted_dir(&sub, me)?, None);
        std::os::unix::fs::symlink(&sub, d.path().join("sl"))?;
        assert_eq!(untrusted_dir(&d.path().join("sl"), me)?.as_deref(), Some("it is a symbolic link"));
        assert_eq!(untrusted_dir(&f, me)?.as_deref(), Some("it is not a directory"));
        std::fs::set_permissions(&sub, Permissions::from_mode(0o777))?;
        assert!(untrusted_dir(&sub, me)?.is_some_and(|r| r.contains("mode 0777")));
        Ok(())
    }
}
