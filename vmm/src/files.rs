//! Files that hold the guest's memory or output (crash directories, vmcores, console and event
//! logs): owner-only whatever the umask, since the umask can only take permissions away.

use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

// The modes and owner-only directories are the delivery crate's (which holds the spool and the
// store's copies to the same rule): one implementation for both.
pub use delivery::private::{
    create_dir as create_private_dir, create_dir_all as create_private_dir_all, DIR_MODE, FILE_MODE,
};

/// Create (or truncate) `path` for reading and writing, mode 0600.
pub fn create_private(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).mode(FILE_MODE).open(path)?;
    f.set_permissions(Permissions::from_mode(FILE_MODE))?;
    Ok(f)
}

/// The user xattr crashvmm puts on the output files it creates (`--events`, `--console
/// file:`, `--console-log`, the crash disk); its value names the output. A later run may
/// overwrite a file that carries it without `--overwrite`.
pub const OUTPUT_XATTR: &str = "user.crashvmm.output";

/// [`create_private`], marked as crashvmm's `kind` of output ([`OUTPUT_XATTR`]). The mark is
/// best effort: a file system without user xattrs keeps none, and the file is written all the
/// same.
pub fn create_output(path: &Path, kind: &str) -> io::Result<File> {
    let f = create_private(path)?;
    if let Err(e) = rustix::fs::fsetxattr(&f, OUTPUT_XATTR, kind.as_bytes(), rustix::fs::XattrFlags::empty()) {
        log::debug!("{}: cannot mark it as crashvmm's ({OUTPUT_XATTR}): {e}", path.display());
    }
    Ok(f)
}

/// Whether `file` carries crashvmm's output mark.
pub fn is_marked_output(file: &File) -> bool {
    rustix::fs::fgetxattr_query(file, OUTPUT_XATTR).is_ok()
}

/// Whether `file` holds no data at all: only holes (`SEEK_DATA` finds none). A file system
/// that cannot say has data everywhere.
pub fn holds_no_data(file: &File) -> bool {
    matches!(rustix::fs::seek(file, rustix::fs::SeekFrom::Data(0)), Err(rustix::io::Errno::NXIO))
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

    #[test]
    fn outputs_are_marked_and_holes_hold_no_data() {
        let dir = tempfile::tempdir().unwrap();
        let (out, plain) = (dir.path().join("out"), dir.path().join("plain"));
        let f = create_output(&out, "events").unwrap();
        assert!(is_marked_output(&f), "tmpfs and ext4 keep user xattrs");
        assert!(!is_marked_output(&create_private(&plain).unwrap()));
        f.set_len(1 << 20).unwrap();
        assert!(holds_no_data(&f));
        std::io::Write::write_all(&mut &f, b"x").unwrap();
        assert!(!holds_no_data(&f));
    }
}
