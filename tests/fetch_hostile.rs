//! `model-operator fetch` against archives built to attack it, and against its limits: entries
//! that climb out with `..` or start at `/`, links that point outside, devices, archives larger
//! than the model volume, link loops that would make a naive count run forever, left-overs of an
//! interrupted fetch, and a credentials Secret's URI. Each fails (or succeeds) with nothing
//! written outside the destination.

use std::{path::Path, process::Output, time::Duration};

use axum::{Router, routing::get};
use tar::{EntryType, Header};
use tokio::net::TcpListener;

/// One archive entry, written byte for byte: tar-rs refuses to *build* the paths an attacker
/// would use, so the header fields are filled by hand.
struct Entry<'a> {
    path: &'a str,
    kind: EntryType,
    link: Option<&'a str>,
    data: &'a [u8],
}

fn file<'a>(path: &'a str, data: &'a [u8]) -> Entry<'a> {
    Entry {
        path,
        kind: EntryType::Regular,
        link: None,
        data,
    }
}

fn symlink<'a>(path: &'a str, target: &'a str) -> Entry<'a> {
    Entry {
        path,
        kind: EntryType::Symlink,
        link: Some(target),
        data: b"",
    }
}

fn archive(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = Header::new_gnu();
        let gnu = header.as_gnu_mut().unwrap();
        gnu.name[..entry.path.len()].copy_from_slice(entry.path.as_bytes());
        if let Some(link) = entry.link {
            gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_entry_type(entry.kind);
        header.set_size(entry.data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_cksum();
        builder.append(&header, entry.data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// Writes `bytes` as `name` in a fresh directory, for a `file://` URI.
fn hosted(name: &str, bytes: &[u8]) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (dir, format!("file://{}", path.display()))
}

async fn fetch(args: &[&str]) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_model-operator"))
        .arg("fetch")
        .args(args)
        .output();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the fetch ends by itself")
        .expect("model-operator runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Every path below `dir`, links included and not followed.
fn everything(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            names.push(path.strip_prefix(dir).unwrap().display().to_string());
            if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                pending.push(path);
            }
        }
    }
    names.sort();
    names
}

/// The archive is refused with `why` in the message, and nothing lands in (or beside) `dest`.
async fn assert_refused(entries: &[Entry<'_>], why: &str) {
    let (_source, uri) = hosted("model.tar", &archive(entries));
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("models");
    let output = fetch(&["--uri", &uri, "--dest", dest.to_str().unwrap()]).await;
    assert!(!output.status.success(), "refused");
    let message = stderr(&output);
    assert!(
        message.contains("refusing archive") && message.contains(why),
        "{message}"
    );
    assert_eq!(everything(&dest), Vec::<String>::new(), "nothing unpacked");
    assert_eq!(everything(root.path()), ["models"], "nothing beside the destination");
}

#[tokio::test]
async fn entries_that_climb_out_or_start_at_the_root_are_refused() {
    assert_refused(
        &[file("model.pt", b"weights"), file("../escaped.txt", b"owned")],
        "leaves the destination",
    )
    .await;
    assert_refused(&[file("/tmp/escaped.txt", b"owned")], "absolute").await;
    assert_refused(&[file("sub/../../escaped.txt", b"owned")], "leaves the destination").await;
}

#[tokio::test]
async fn links_out_of_the_destination_and_devices_are_refused() {
    assert_refused(&[symlink("weights", "../../etc/passwd")], "points outside").await;
    assert_refused(&[symlink("weights", "/etc/passwd")], "points outside").await;
    // A link to a directory outside, then a file written through it.
    assert_refused(
        &[symlink("dir", "/tmp"), file("dir/escaped.txt", b"owned")],
        "points outside",
    )
    .await;
    // Two links that each stay inside, but not together: `e` climbs through `d/up`.
    assert_refused(
        &[symlink("d/up", ".."), symlink("e", "d/up/..")],
        "through the archive's other links",
    )
    .await;
    // Inside the archive, outside the model once its one top directory is dropped.
    assert_refused(
        &[file("model/model.pt", b"weights"), symlink("model/config", "../secret")],
        "points outside",
    )
    .await;
    assert_refused(
        &[Entry {
            path: "null",
            kind: EntryType::Char,
            link: None,
            data: b"",
        }],
        "no devices",
    )
    .await;
}

#[tokio::test]
async fn links_inside_are_kept_and_never_followed_while_counting() {
    // `a -> .` and `b -> .`: following them, a count would recurse about 2^40 times.
    let entries = [
        file("model/model.pt", b"weights"),
        symlink("model/a", "."),
        symlink("model/b", "."),
        symlink("model/current", "model.pt"),
    ];
    let (_source, uri) = hosted("model.tar", &archive(&entries));
    let dest = tempfile::tempdir().unwrap();
    let output = fetch(&["--uri", &uri, "--dest", dest.path().to_str().unwrap()]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(everything(dest.path()), ["a", "b", "current", "model.pt"]);
    assert_eq!(std::fs::read(dest.path().join("current")).unwrap(), b"weights");
}

#[tokio::test]
async fn more_than_the_size_limit_is_refused_downloaded_or_unpacked() {
    let big = vec![7u8; 64 * 1024];
    let (_source, uri) = hosted("model.pt", &big);
    let dest = tempfile::tempdir().unwrap();
    let output = fetch(&[
        "--uri",
        &uri,
        "--dest",
        dest.path().to_str().unwrap(),
        "--size-limit",
        "4096",
    ])
    .await;
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("more than the model volume's 4096 bytes"),
        "{}",
        stderr(&output)
    );
    assert_eq!(everything(dest.path()), Vec::<String>::new(), "no partial file left");

    // An archive of many small files whose sum passes the limit (a decompression bomb in small).
    let entries: Vec<(String, Vec<u8>)> = (0..16).map(|n| (format!("part-{n}"), vec![0u8; 1024])).collect();
    let entries: Vec<Entry> = entries.iter().map(|(name, data)| file(name, data)).collect();
    let (_source, uri) = hosted("model.tar", &archive(&entries));
    let output = fetch(&[
        "--uri",
        &uri,
        "--dest",
        dest.path().to_str().unwrap(),
        "--size-limit",
        "8192",
    ])
    .await;
    assert!(!output.status.success());
    assert!(stderr(&output).contains("8192 bytes"), "{}", stderr(&output));
    assert_eq!(everything(dest.path()), Vec::<String>::new());
}

#[tokio::test]
async fn left_overs_of_an_interrupted_fetch_are_removed() {
    let (_source, uri) = hosted("model.pt", b"weights");
    let dest = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dest.path().join(".unpack-a1b2c3/model")).unwrap();
    std::fs::write(dest.path().join(".unpack-a1b2c3/model/half.bin"), b"half").unwrap();
    std::fs::write(dest.path().join(".model.pt.partial"), b"wei").unwrap();
    let output = fetch(&["--uri", &uri, "--dest", dest.path().to_str().unwrap()]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(everything(dest.path()), ["model.pt"]);
}

/// Serves `/models/model.pt` whatever the query or credentials.
async fn serve() -> String {
    let app = Router::new().route("/models/model.pt", get(|| async { &b"weights"[..] }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

#[tokio::test]
async fn a_credentials_secret_supplies_the_uri_and_no_message_shows_its_secrets() {
    let address = serve().await;
    let credentials = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    let spec_uri = format!("http://{address}/models/model.pt");

    // The Secret's `uri`: the same object, with a password and a signature.
    std::fs::write(
        credentials.path().join("uri"),
        format!("http://deploy:s3cr3t@{address}/models/model.pt?signature=t0k3n\n"),
    )
    .unwrap();
    let args = |uri: &str| {
        vec![
            "--uri".to_owned(),
            uri.to_owned(),
            "--dest".to_owned(),
            dest.path().display().to_string(),
            "--credentials-dir".to_owned(),
            credentials.path().display().to_string(),
        ]
    };
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fetch(&args).await
    };
    let output = run(args(&spec_uri)).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(std::fs::read(dest.path().join("model.pt")).unwrap(), b"weights");
    let logs = stderr(&output);
    assert!(!logs.contains("s3cr3t") && !logs.contains("t0k3n"), "{logs}");

    // A Secret naming another object than the spec is refused, naming neither's secrets.
    let output = run(args(&format!("http://{address}/models/other.pt"))).await;
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("names another object than modelURI"), "{message}");
    assert!(!message.contains("s3cr3t") && !message.contains("t0k3n"), "{message}");

    // A URI with credentials given directly (from the pod's env) is never logged with them.
    std::fs::remove_file(credentials.path().join("uri")).unwrap();
    let output = run(args("http://deploy:s3cr3t@127.0.0.1:9/models/model.pt?signature=t0k3n")).await;
    assert!(!output.status.success(), "nothing listens on port 9");
    let message = stderr(&output);
    assert!(!message.contains("s3cr3t") && !message.contains("t0k3n"), "{message}");
    assert!(message.contains("deploy:***@127.0.0.1:9"), "{message}");
}
