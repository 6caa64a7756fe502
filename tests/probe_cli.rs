//! `model-operator probe` exit statuses without any model server: 2 for bad usage (with the
//! flag named), 1 with `ServerUnavailable` when nothing listens, for every runtime.

use std::{net::TcpListener, process::Output};

fn probe(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_model-operator"))
        .arg("probe")
        .args(args)
        .output()
        .expect("model-operator runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn bad_usage_exits_2_naming_the_problem() {
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "--runtime",
                "triton",
                "--endpoint",
                "http://127.0.0.1:8001",
                "--model",
                "m",
            ],
            "give the address without a scheme",
        ),
        (
            &["--runtime", "onnx", "--endpoint", "127.0.0.1:8001", "--model", "m"],
            "--runtime",
        ),
        (&["--runtime", "triton", "--endpoint", "127.0.0.1:8001"], "--model"),
        (
            &[
                "--runtime",
                "triton",
                "--endpoint",
                "127.0.0.1:8001",
                "--model",
                "m",
                "--timeout",
                "soon",
            ],
            "--timeout",
        ),
    ];
    for (args, named) in cases {
        let output = probe(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", stderr(&output));
        assert!(stderr(&output).contains(named), "{args:?}: {}", stderr(&output));
    }
    let missing_key = probe(&[
        "--runtime",
        "torchserve",
        "--endpoint",
        "127.0.0.1:8081",
        "--model",
        "m",
        "--token-file",
        "/nonexistent/key_file.json",
    ]);
    assert_eq!(missing_key.status.code(), Some(2), "{}", stderr(&missing_key));
    assert!(stderr(&missing_key).contains("--token-file /nonexistent/key_file.json"));
}

#[test]
fn nothing_listening_is_server_unavailable_for_every_runtime() {
    // A port that was free a moment ago; nothing listens on it.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("127.0.0.1:{port}");
    for runtime in ["triton", "torchserve", "fastapi-pytorch"] {
        let output = probe(&["--runtime", runtime, "--endpoint", &endpoint, "--model", "m"]);
        let text = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(1), "{runtime}: {text}{}", stderr(&output));
        assert!(text.starts_with("not ready: model \"m\""), "{runtime}: {text}");
        assert!(text.contains("reason:   ServerUnavailable"), "{runtime}: {text}");
    }
}
