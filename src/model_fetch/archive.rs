//! Unpacking tar archives (plain or gzip) into the destination. An archive is whatever its author
//! put in it, so every entry is checked before anything is written: no absolute path, no `..`,
//! no link that points outside the destination, nothing but files, directories and links, and
//! no more bytes than the model volume may hold. Nothing is ever followed through a link, while
//! unpacking, counting or moving.

use std::{
    fs::File,
    io::Read,
    path::{Component, Path, PathBuf},
};

use flate2::read::GzDecoder;
use tar::EntryType;

use super::FetchError;

/// Where an archive is unpacked before its tree is moved into place; left-overs (an OOM-killed
/// fetch) are removed at the next start.
pub const STAGING_PREFIX: &str = ".unpack-";

/// Unpacks `archive` into `dest`. An archive whose entries all sit under one top-level
/// directory (`tar czf resnet.tgz resnet/`) is unpacked without that directory, so that
/// `dest` is the model directory either way. Returns the number of files written.
pub async fn unpack_into(archive: &Path, dest: &Path, size_limit: Option<u64>) -> Result<usize, FetchError> {
    let (archive, dest) = (archive.to_owned(), dest.to_owned());
    tokio::task::spawn_blocking(move || unpack_blocking(&archive, &dest, size_limit))
        .await
        .expect("unpack task does not panic")
}

fn open(archive: &Path) -> Result<Box<dyn Read>, std::io::Error> {
    let mut magic = [0u8; 2];
    let gzipped = File::open(archive)?.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    let file = File::open(archive)?;
    Ok(if gzipped {
        Box::new(GzDecoder::new(file))
    } else {
        Box::new(file)
    })
}

fn unpack_blocking(archive: &Path, dest: &Path, size_limit: Option<u64>) -> Result<usize, FetchError> {
    let shown = archive.display().to_string();
    let unpack_error = |source| FetchError::Unpack {
        file: shown.clone(),
        source,
    };
    // A first pass reads only the headers: an archive with one bad entry writes nothing.
    let mut total = 0u64;
    for entry in tar::Archive::new(open(archive).map_err(unpack_error)?)
        .entries()
        .map_err(unpack_error)?
    {
        let entry = entry.map_err(unpack_error)?;
        check_entry(&entry).map_err(|why| FetchError::UnsafeArchive {
            file: shown.clone(),
            entry: entry.path().map(|p| p.display().to_string()).unwrap_or_default(),
            why,
        })?;
        total += entry.header().size().map_err(unpack_error)?;
        if let Some(limit) = size_limit
            && total > limit
        {
            return Err(FetchError::TooLarge {
                uri: shown.clone(),
                limit,
            });
        }
    }

    // Unpack beside the destination first, then move the tree in: a failed unpack leaves
    // nothing behind that looks like a model.
    let staging = tempfile::Builder::new()
        .prefix(STAGING_PREFIX)
        .tempdir_in(dest)
        .map_err(unpack_error)?;
    let mut reader = tar::Archive::new(open(archive).map_err(unpack_error)?);
    reader.set_preserve_permissions(false);
    reader.set_unpack_xattrs(false);
    let staged = staging.path().canonicalize().map_err(unpack_error)?;
    for entry in reader.entries().map_err(unpack_error)? {
        let mut entry = entry.map_err(unpack_error)?;
        // A hard link's target exists by now; through links unpacked before it, its path may
        // resolve elsewhere than it reads.
        if entry.header().entry_type() == EntryType::Link
            && let Some(target) = entry.link_name().map_err(unpack_error)?
            && !resolves_inside(&staging.path().join(target), &staged)
        {
            return Err(FetchError::UnsafeArchive {
                file: shown.clone(),
                entry: entry.path().map(|p| p.display().to_string()).unwrap_or_default(),
                why: "it is a link that points outside the destination",
            });
        }
        // `unpack_in` also refuses to write through a link that leaves the staging directory.
        if !entry.unpack_in(staging.path()).map_err(unpack_error)? {
            return Err(FetchError::UnsafeArchive {
                file: shown.clone(),
                entry: entry.path().map(|p| p.display().to_string()).unwrap_or_default(),
                why: "it would be written outside the destination",
            });
        }
    }

    let mut root = staging.path().to_owned();
    let entries: Vec<_> = std::fs::read_dir(&root)
        .map_err(unpack_error)?
        .collect::<Result<_, _>>()
        .map_err(unpack_error)?;
    if let [only] = entries.as_slice()
        && only.file_type().map_err(unpack_error)?.is_dir()
    {
        root = only.path();
    }
    // Each link was checked as written; together they may still lead out (`d/l -> ..` and then
    // `e -> d/l/..`), and a link to `../x` from the top directory leads out once that directory
    // is dropped. So every link is resolved again, on disk, against the tree that will be moved.
    if let Some(link) = link_leading_out(&root).map_err(unpack_error)? {
        return Err(FetchError::UnsafeArchive {
            file: shown.clone(),
            entry: link.strip_prefix(&root).unwrap_or(&link).display().to_string(),
            why: "it is a link that, through the archive's other links, points outside the destination",
        });
    }
    let mut files = 0;
    for entry in std::fs::read_dir(&root).map_err(unpack_error)? {
        let entry = entry.map_err(unpack_error)?;
        let target = dest.join(entry.file_name());
        remove_existing(&target).map_err(unpack_error)?;
        files += count_files(&entry.path());
        std::fs::rename(entry.path(), &target).map_err(unpack_error)?;
    }
    Ok(files)
}

/// Why an entry is refused, if it is.
fn check_entry<R: Read>(entry: &tar::Entry<'_, R>) -> Result<(), &'static str> {
    let kind = entry.header().entry_type();
    if !matches!(
        kind,
        EntryType::Regular | EntryType::Directory | EntryType::Symlink | EntryType::Link | EntryType::Continuous
    ) && !kind.is_pax_global_extensions()
        && !kind.is_pax_local_extensions()
        && !kind.is_gnu_longname()
        && !kind.is_gnu_longlink()
    {
        return Err("only files, directories and links are unpacked (no devices, pipes or sockets)");
    }
    let path = entry.path().map_err(|_| "its path is not readable")?;
    let relative = contained(&path, Path::new("")).ok_or("its path is absolute or leaves the destination with ..")?;
    if let Some(target) = entry.link_name().map_err(|_| "its link target is not readable")? {
        // A symbolic link resolves from its own directory; a hard link from the archive's root.
        let base = match kind {
            EntryType::Symlink => relative.parent().unwrap_or(Path::new("")).to_owned(),
            _ => PathBuf::new(),
        };
        if contained(&target, &base).is_none() {
            return Err("it is a link that points outside the destination");
        }
    }
    Ok(())
}

/// `path` taken from `base` (both inside the destination), if it stays inside: lexically, with
/// no absolute start and no `..` climbing above the destination.
fn contained(path: &Path, base: &Path) -> Option<PathBuf> {
    let mut inside: Vec<Component> = base.components().collect();
    for component in path.components() {
        match component {
            Component::Normal(_) => inside.push(component),
            Component::CurDir => {}
            Component::ParentDir => {
                inside.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(inside.iter().collect())
}

/// The first symbolic link under `root` that resolves outside it, walking without following.
fn link_leading_out(root: &Path) -> std::io::Result<Option<PathBuf>> {
    let inside = root.canonicalize()?;
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_symlink() {
                let target = std::fs::read_link(entry.path())?;
                if !resolves_inside(&dir.join(target), &inside) {
                    return Ok(Some(entry.path()));
                }
            }
        }
    }
    Ok(None)
}

/// Whether `path` (absolute) resolves under `inside` (canonical) on disk. The part that exists
/// is resolved by the file system, links and all; what follows it, which holds no link since it
/// does not exist, lexically. A link loop resolves nowhere and is left for its reader to fail on.
fn resolves_inside(path: &Path, inside: &Path) -> bool {
    let components: Vec<Component> = path.components().collect();
    for existing in (1..=components.len()).rev() {
        let prefix: PathBuf = components[..existing].iter().collect();
        let Ok(mut resolved) = prefix.canonicalize() else {
            continue;
        };
        for component in &components[existing..] {
            match component {
                Component::Normal(name) => resolved.push(name),
                Component::ParentDir => {
                    resolved.pop();
                }
                Component::CurDir => {}
                Component::RootDir | Component::Prefix(_) => return false,
            }
        }
        return resolved.starts_with(inside);
    }
    false
}

/// Removes what is at `target`, a link itself rather than what it points to.
fn remove_existing(target: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(target) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(target),
        Ok(_) => std::fs::remove_file(target),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

/// Files below `path`, links counted as files and never followed.
fn count_files(path: &Path) -> usize {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::read_dir(path)
            .map(|entries| entries.flatten().map(|e| count_files(&e.path())).sum())
            .unwrap_or(0),
        Ok(_) => 1,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_inside_stay_and_others_are_refused() {
        assert_eq!(contained(Path::new("a/./b"), Path::new("")), Some(PathBuf::from("a/b")));
        assert_eq!(contained(Path::new("a/../b"), Path::new("")), Some(PathBuf::from("b")));
        assert_eq!(contained(Path::new("../etc"), Path::new("")), None);
        assert_eq!(contained(Path::new("/etc/passwd"), Path::new("")), None);
        assert_eq!(contained(Path::new("../x"), Path::new("dir")), Some(PathBuf::from("x")));
        assert_eq!(contained(Path::new("../../x"), Path::new("dir")), None);
    }

    #[test]
    fn links_are_resolved_through_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::os::unix::fs::symlink("..", root.join("d/up")).unwrap();
        std::os::unix::fs::symlink("d/up/model.pt", root.join("fine")).unwrap();
        std::os::unix::fs::symlink("missing/../d", root.join("dangling-but-inside")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert_eq!(link_leading_out(&root).unwrap(), None);
        // Each reads as inside; through `d/up` it is the directory above the root.
        std::os::unix::fs::symlink("d/up/..", root.join("out")).unwrap();
        assert_eq!(link_leading_out(&root).unwrap(), Some(root.join("out")));
        std::fs::remove_file(root.join("out")).unwrap();
        std::os::unix::fs::symlink("d/up/../gone/x", root.join("out-and-dangling")).unwrap();
        assert_eq!(link_leading_out(&root).unwrap(), Some(root.join("out-and-dangling")));
    }

    #[test]
    fn counting_never_follows_a_link() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.pt"), b"weights").unwrap();
        // Two links back to their own directory: followed, they would recurse without end.
        std::os::unix::fs::symlink(".", dir.path().join("a")).unwrap();
        std::os::unix::fs::symlink(".", dir.path().join("b")).unwrap();
        assert_eq!(count_files(dir.path()), 3);
    }
}
