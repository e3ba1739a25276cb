//! Files that hold the guest's memory or output (crash directories, vmcores, console and event
//! logs): owner-only whatever the umask, since the umask can only take permissions away.

use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of crashvmm's files.
pub const FILE_MODE: u32 = 0o600;
/// Mode of crashvmm's directories.
pub const DIR_MODE: u32 = 0o700;

/// Create (or truncate) `path` for reading and writing, mode 0600.
pub fn create_private(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).mode(FILE_MODE).open(path)?;
    f.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

/// Create directory `path`, mode 0700 (an error if it exists).
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new().mode(DIR_MODE).create(path)?;
    std::fs::set_permissions(path, Permissions::from_mode(DIR_MODE))
}

/// Create `path` and its missing parents; those created here get mode 0700, an existing
/// directory keeps its mode (it is the operator's).
pub fn create_private_dir_all(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir_all(parent)?;
    }
    match create_private_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        other => other,
    }
}

/// Run `f` with the process umask set to `mask` (for sockets, whose mode bind(2) takes from the
/// umask). Only for the single-threaded start-up: the umask is process-wide.
pub fn with_umask<T>(mask: libc::mode_t, f: impl FnOnce() -> T) -> T {
    // SAFETY: umask(2) only swaps the process's file mode mask.
    let old = unsafe { libc::umask(mask) };
    let r = f();
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn owner_only_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let (d, f) = (dir.path().join("a/b/crash"), dir.path().join("vmcore"));
        with_umask(0, || {
            create_private_dir_all(&d).unwrap();
            create_private(&f).unwrap();
        });
        for p in [dir.path().join("a"), dir.path().join("a/b"), d.clone()] {
            assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, DIR_MODE, "{}", p.display());
        }
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o777, FILE_MODE);
        // An existing file that was world-readable is owner-only once crashvmm writes it.
        std::fs::set_permissions(&f, Permissions::from_mode(0o644)).unwrap();
        create_private(&f).unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o777, FILE_MODE);
        // The operator's own directory keeps its mode.
        std::fs::set_permissions(dir.path(), Permissions::from_mode(0o755)).unwrap();
        create_private_dir_all(dir.path()).unwrap();
        assert_eq!(std::fs::metadata(dir.path()).unwrap().mode() & 0o777, 0o755);
        assert!(create_private_dir(&d).is_err(), "an existing directory is an error");
    }
}
