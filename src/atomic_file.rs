//! Crash-safe file replacement: write a temporary file in the target's
//! directory with the final mode, fsync it, rename it over the target, fsync
//! the directory. A reader sees the old file or the new one, never a mix, and
//! a secret is never readable with a looser mode, even for an instant.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Atomically replaces `path` with `contents`, created with `mode`.
pub fn write(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let (dir, temp_prefix) = split(path)?;
    let tmp = tempfile::Builder::new()
        .prefix(&temp_prefix)
        .suffix(".tmp")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
        .tempfile_in(dir)?;
    tmp.as_file().write_all(contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

/// Atomically makes `link` a symbolic link to `target` (replacing whatever
/// file or link was there): a new link under a temporary name, renamed over
/// `link`, so a path lookup sees the old target or the new one.
pub fn symlink(target: &Path, link: &Path) -> io::Result<()> {
    let (dir, temp_prefix) = split(link)?;
    let tmp = tempfile::Builder::new()
        .prefix(&temp_prefix)
        .suffix(".tmp")
        .make_in(dir, |path| std::os::unix::fs::symlink(target, path))?;
    tmp.into_temp_path().persist(link).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

/// Removes the temporary files [`write`] leaves next to `path` when the
/// process is killed between creating one and renaming it (the crash loop
/// saw a few per thousand SIGKILLs). Nothing ever reads them, but they
/// would pile up, secrets among them. Call before the first write, while
/// no write of this process is under way; failures are left to the write.
pub fn remove_leftovers(path: &Path) {
    let Ok((dir, temp_prefix)) = split(path) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&temp_prefix) && name.ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The directory holding `path` and a hidden prefix for temporary files
/// next to it.
fn split(path: &Path) -> io::Result<(&Path, String)> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    Ok((dir, format!(".{}.", name.to_string_lossy())))
}

/// Creates `dir` (and parents) if missing; a directory this call creates gets
/// `mode`, an existing one is left as the operator made it. Each new
/// directory's parent is fsynced: a new directory's name is an entry in its
/// parent, and without that fsync a power loss may take `data_dir` away
/// with the CA that [`write`] made durable inside it (attestd would then
/// make a new CA, splitting the trust bundle).
pub fn create_dir(dir: &Path, mode: u32) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut created = Vec::new();
    let mut next = Some(dir);
    while let Some(missing) = next.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        created.push(missing);
        next = missing.parent();
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)?;
    for new_dir in created {
        let (parent, _) = split(new_dir)?;
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Opens `path` for reading and appending, creating it with `mode` if
/// missing.
pub fn open_append(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .create(true)
        .append(true)
        .mode(mode)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_with_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        write(&path, b"one", 0o600).unwrap();
        write(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn leftovers_of_a_killed_write_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.json");
        write(&path, b"ca", 0o600).unwrap();
        std::fs::write(dir.path().join(".ca.json.x1Yz.tmp"), b"half").unwrap();
        std::fs::write(dir.path().join(".bundle.json.x1Yz.tmp"), b"other").unwrap();
        remove_leftovers(&path);
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [".bundle.json.x1Yz.tmp", "ca.json"]);
    }

    #[test]
    fn creates_missing_directories_with_the_mode_and_leaves_existing_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let nested = dir.path().join("a/b");
        create_dir(&nested, 0o700).unwrap();
        for made in [dir.path().join("a"), nested.clone()] {
            let mode = std::fs::metadata(&made).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", made.display());
        }
        create_dir(dir.path(), 0o700).unwrap();
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755, "an existing directory is left as it was");
    }

    #[test]
    fn symlink_replaces_file_and_link() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("current");
        write(&link, b"plain file", 0o644).unwrap();
        symlink(Path::new("a"), &link).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("a"));
        symlink(Path::new("b"), &link).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("b"));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp link left"
        );
    }
}
