//! Unpacking tar archives (plain or gzip) into the destination.

use std::{fs::File, io::Read, path::Path};

use flate2::read::GzDecoder;

use super::FetchError;

/// Unpacks `archive` into `dest`. An archive whose entries all sit under one top-level
/// directory (`tar czf resnet.tgz resnet/`) is unpacked without that directory, so that
/// `dest` is the model directory either way. Returns the number of files written.
pub async fn unpack_into(archive: &Path, dest: &Path) -> Result<usize, FetchError> {
    let (archive, dest) = (archive.to_owned(), dest.to_owned());
    tokio::task::spawn_blocking(move || unpack_blocking(&archive, &dest))
        .await
        .expect("unpack task does not panic")
}

fn unpack_blocking(archive: &Path, dest: &Path) -> Result<usize, FetchError> {
    let unpack_error = |source| FetchError::Unpack {
        file: archive.display().to_string(),
        source,
    };
    let mut magic = [0u8; 2];
    let mut file = File::open(archive).map_err(unpack_error)?;
    let gzipped = file.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    let file = File::open(archive).map_err(unpack_error)?;
    let reader: Box<dyn Read> = if gzipped {
        Box::new(GzDecoder::new(file))
    } else {
        Box::new(file)
    };

    // Unpack beside the destination first, then move the tree in: a failed unpack leaves
    // nothing behind that looks like a model.
    let staging = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(dest)
        .map_err(unpack_error)?;
    // `unpack` refuses entries that would land outside the staging directory.
    tar::Archive::new(reader).unpack(staging.path()).map_err(unpack_error)?;

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
    let mut files = 0;
    for entry in std::fs::read_dir(&root).map_err(unpack_error)? {
        let entry = entry.map_err(unpack_error)?;
        let target = dest.join(entry.file_name());
        if target.exists() {
            if target.is_dir() {
                std::fs::remove_dir_all(&target)
            } else {
                std::fs::remove_file(&target)
            }
            .map_err(unpack_error)?;
        }
        files += count_files(&entry.path());
        std::fs::rename(entry.path(), &target).map_err(unpack_error)?;
    }
    Ok(files)
}

fn count_files(path: &Path) -> usize {
    if path.is_dir() {
        std::fs::read_dir(path)
            .map(|entries| entries.flatten().map(|e| count_files(&e.path())).sum())
            .unwrap_or(0)
    } else {
        1
    }
}
