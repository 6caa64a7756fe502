//! `model-operator fetch` against a real HTTP server on loopback: downloads, checksums, archives,
//! and every failure leaves nothing that looks like a model.

use std::{net::SocketAddr, path::Path, process::Output};

use axum::{Router, http::StatusCode, routing::get};
use sha2::{Digest, Sha256};
use tokio::{io::AsyncWriteExt, net::TcpListener};

const MODEL_BYTES: &[u8] = b"not really torch weights, but bytes all the same";

fn triton_archive() -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for (path, content) in [
        ("resnet/config.pbtxt", &b"backend: \"onnxruntime\"\n"[..]),
        ("resnet/1/model.onnx", MODEL_BYTES),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        builder.append_data(&mut header, path, content).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// Serves the fixtures; `/truncated.pt` promises more bytes than it sends, then hangs up.
async fn serve() -> SocketAddr {
    let app = Router::new()
        .route("/models/model.pt", get(|| async { MODEL_BYTES }))
        .route("/models/resnet.tar.gz", get(|| async { triton_archive() }))
        .route("/flaky/model.pt", get(|| async { StatusCode::SERVICE_UNAVAILABLE }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

async fn serve_truncated() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        // Bounded: the test makes one request.
        if let Ok((mut stream, _)) = listener.accept().await {
            let mut request = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut request).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nonly a little")
                .await;
        }
    });
    address
}

async fn fetch(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_model-operator"))
        .arg("fetch")
        .args(args)
        .output()
        .await
        .expect("model-operator runs")
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                names.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    names.sort();
    names
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn downloads_a_file_under_its_own_name() {
    let address = serve().await;
    let dest = tempfile::tempdir().unwrap();
    let output = fetch(&[
        "--uri",
        &format!("http://{address}/models/model.pt"),
        "--dest",
        dest.path().to_str().unwrap(),
    ])
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(listing(dest.path()), ["model.pt"]);
    assert_eq!(std::fs::read(dest.path().join("model.pt")).unwrap(), MODEL_BYTES);
    assert!(
        stderr(&output).contains("model fetched"),
        "progress is logged:\n{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn a_matching_checksum_passes_and_a_file_name_can_be_given() {
    let address = serve().await;
    let dest = tempfile::tempdir().unwrap();
    let digest = hex::encode(Sha256::digest(MODEL_BYTES));
    let uri = format!("http://{address}/models/model.pt#sha256={digest}");
    let output = fetch(&[
        "--uri",
        &uri,
        "--dest",
        dest.path().to_str().unwrap(),
        "--file-name",
        "model.onnx",
    ])
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(listing(dest.path()), ["model.onnx"]);
}

#[tokio::test]
async fn a_wrong_checksum_fails_and_leaves_nothing() {
    let address = serve().await;
    let dest = tempfile::tempdir().unwrap();
    let uri = format!("http://{address}/models/model.pt#sha256={}", "0".repeat(64));
    let output = fetch(&["--uri", &uri, "--dest", dest.path().to_str().unwrap()]).await;
    assert!(!output.status.success());
    assert!(stderr(&output).contains("checksum mismatch"), "{}", stderr(&output));
    assert!(
        listing(dest.path()).is_empty(),
        "left behind: {:?}",
        listing(dest.path())
    );
}

#[tokio::test]
async fn not_found_is_a_clear_error() {
    let address = serve().await;
    let dest = tempfile::tempdir().unwrap();
    let output = fetch(&[
        "--uri",
        &format!("http://{address}/models/missing.pt"),
        "--dest",
        dest.path().to_str().unwrap(),
    ])
    .await;
    assert!(!output.status.success());
    assert!(stderr(&output).contains("404"), "{}", stderr(&output));
    assert!(listing(dest.path()).is_empty());
}

#[tokio::test]
async fn server_errors_are_retried_then_reported() {
    let address = serve().await;
    let dest = tempfile::tempdir().unwrap();
    let output = fetch(&[
        "--uri",
        &format!("http://{address}/flaky/model.pt"),
        "--dest",
        dest.path().to_str().unwrap(),
    ])
    .await;
    assert!(!output.status.success());
    let log = stderr(&output);
    assert!(log.contains("retrying") && log.contains("503"), "{log}");
}

#[tokio::test]
async fn a_truncated_download_never_looks_complete() {
    let address = serve_truncated().await;
    let dest = tempfile::tempdir().unwrap();
    let output = fetch(&[
        "--uri",
        &format!("http://{address}/truncated.pt"),
        "--dest",
        dest.path().to_str().unwrap(),
    ])
    .await;
    assert!(!output.status.success(), "a short body must fail");
    assert!(
        listing(dest.path()).is_empty(),
        "left behind: {:?}",
        listing(dest.path())
    );
}

#[tokio::test]
async fn an_archive_is_unpacked_without_its_top_directory() {
    let address = serve().await;
    let dest = tempfile::tempdir().unwrap();
    let model_dir = dest.path().join("resnet");
    let output = fetch(&[
        "--uri",
        &format!("http://{address}/models/resnet.tar.gz"),
        "--dest",
        model_dir.to_str().unwrap(),
    ])
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(listing(&model_dir), ["1/model.onnx", "config.pbtxt"]);
    assert_eq!(std::fs::read(model_dir.join("1/model.onnx")).unwrap(), MODEL_BYTES);
}

#[tokio::test]
async fn local_files_and_directories_are_copied() {
    let source = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(source.path().join("1")).unwrap();
    std::fs::write(source.path().join("1/model.onnx"), MODEL_BYTES).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let uri = format!("file://{}", source.path().display());
    let output = fetch(&["--uri", &uri, "--dest", dest.path().to_str().unwrap()]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(listing(dest.path()), ["1/model.onnx"]);
}

#[tokio::test]
async fn unsupported_schemes_and_claims_are_refused() {
    let dest = tempfile::tempdir().unwrap();
    let output = fetch(&["--uri", "ftp://host/model.pt", "--dest", dest.path().to_str().unwrap()]).await;
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("scheme \"ftp\" is not supported"),
        "{}",
        stderr(&output)
    );
    let output = fetch(&["--uri", "pvc://cache/model", "--dest", dest.path().to_str().unwrap()]).await;
    assert!(!output.status.success());
    assert!(stderr(&output).contains("mounted"), "{}", stderr(&output));
}
