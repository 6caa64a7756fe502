//! The real agent binary against the test doubles: the fake `libnvidia-ml.so` (a cdylib with
//! NVML's C ABI) and the fake kubelet PodResources server, each configured by a JSON file the
//! test rewrites. Shared by the integration tests and `benches/scrape.rs`.
#![allow(dead_code)]

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use serde_json::Value;

/// Where `cargo build` put the doubles.
pub struct Doubles {
    pub nvml_lib: PathBuf,
    pub fake_kubelet: PathBuf,
}

/// Builds the doubles once per test binary, with the cargo, target directory and profile that
/// built this test, so that a plain `cargo test` from a fresh clone has them.
pub fn doubles() -> &'static Doubles {
    static DOUBLES: OnceLock<Doubles> = OnceLock::new();
    DOUBLES.get_or_init(|| {
        let agent = Path::new(env!("CARGO_BIN_EXE_node-agent"));
        let profile_dir = agent.parent().expect("the agent binary is in a profile directory");
        let target_dir = profile_dir
            .parent()
            .expect("the profile directory is in a target directory");
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .args([
                "build",
                "--quiet",
                "-p",
                "fake-nvml",
                "-p",
                "fake-kubelet",
                "--target-dir",
            ])
            .arg(target_dir);
        match profile_dir.file_name().and_then(|name| name.to_str()) {
            Some("debug") => {}
            Some("release") => {
                cargo.arg("--release");
            }
            Some(profile) => {
                cargo.args(["--profile", profile]);
            }
            None => panic!("unexpected target layout: {}", agent.display()),
        }
        let status = cargo.status().expect("running cargo to build the test doubles");
        assert!(status.success(), "building fake-nvml and fake-kubelet failed: {status}");
        let doubles = Doubles {
            nvml_lib: profile_dir.join("libnvidia_ml.so"),
            fake_kubelet: profile_dir.join("fake-kubelet-podresources"),
        };
        assert!(
            doubles.nvml_lib.exists(),
            "{} was not built",
            doubles.nvml_lib.display()
        );
        assert!(
            doubles.fake_kubelet.exists(),
            "{} was not built",
            doubles.fake_kubelet.display()
        );
        doubles
    })
}

/// Writes JSON through a temporary file renamed over the target, as the doubles expect.
pub fn write_json(path: &Path, value: &Value) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, serde_json::to_vec_pretty(value).unwrap()).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// Polls `check` every 20 ms until it gives a value, or panics naming `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process with its stderr in a file; killed when dropped.
pub struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(mut command: Command, log: PathBuf) -> Self {
        let stderr = File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        Self { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fake kubelet serving `config` on `socket`, once the socket exists.
pub fn start_kubelet(dir: &Path, socket: &Path, config: &Path) -> Process {
    let mut command = Command::new(&doubles().fake_kubelet);
    command.arg("--socket").arg(socket).arg("--config").arg(config);
    let mut kubelet = Process::spawn(command, dir.join("kubelet.log"));
    wait_for(Duration::from_secs(20), "the fake kubelet's socket", || {
        assert!(kubelet.is_running(), "the fake kubelet exited:\n{}", kubelet.log());
        socket.exists().then_some(())
    });
    kubelet
}

/// How many `List` calls the fake kubelet has answered.
pub fn list_calls(kubelet: &Process) -> usize {
    kubelet
        .log()
        .lines()
        .filter(|line| line.starts_with("fake-kubelet: List:"))
        .count()
}

pub struct Agent {
    pub process: Process,
    pub address: SocketAddr,
}

/// The agent binary, loading `nvml_lib` through `--nvml-lib`, with the fake's configuration in
/// `FAKE_NVML_CONFIG`; returns once it listens.
pub fn start_agent(dir: &Path, nvml_lib: &Path, nvml_config: &Path, socket: &Path, extra: &[&str]) -> Agent {
    start_agent_with_env(dir, nvml_lib, nvml_config, socket, extra, &[])
}

/// As [`start_agent`], with more environment.
pub fn start_agent_with_env(
    dir: &Path,
    nvml_lib: &Path,
    nvml_config: &Path,
    socket: &Path,
    extra: &[&str],
    env: &[(&str, &Path)],
) -> Agent {
    let mut command = Command::new(env!("CARGO_BIN_EXE_node-agent"));
    command
        .envs(env.iter().copied())
        .env("FAKE_NVML_CONFIG", nvml_config)
        .env("RUST_LOG", "info")
        .arg("--nvml-lib")
        .arg(nvml_lib)
        .arg("--pod-resources-socket")
        .arg(socket)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--node-name",
            "gpu-node-1",
            "--log-format",
            "json",
        ])
        .args(extra);
    let mut process = Process::spawn(command, dir.join("agent.log"));
    let address = wait_for(Duration::from_secs(20), "the agent to listen", || {
        assert!(process.is_running(), "the agent exited:\n{}", process.log());
        log_lines(&process.log()).into_iter().find_map(|line| {
            let address = line["fields"]["address"].as_str()?;
            line["fields"]["message"]
                .as_str()?
                .starts_with("serving")
                .then(|| address.parse().unwrap())
        })
    });
    Agent { process, address }
}

/// The agent's JSON log lines.
pub fn log_lines(log: &str) -> Vec<Value> {
    log.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
}

impl Agent {
    pub fn get(&self, path: &str) -> (u16, String) {
        HttpClient::connect(self.address).get(path)
    }

    pub fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// The agent's log lines at `level` whose message starts with `prefix`.
    pub fn logged(&self, level: &str, prefix: &str) -> Vec<Value> {
        log_lines(&self.process.log())
            .into_iter()
            .filter(|line| {
                line["level"] == level
                    && line["fields"]["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with(prefix))
            })
            .collect()
    }
}

/// The value of the one series of `metrics` named exactly `series` (name and labels).
pub fn value_of(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().unwrap())
    })
}

/// A minimal HTTP/1.1 client on one keep-alive connection: enough for loopback tests without
/// pulling an HTTP client into the agent's dependencies.
pub struct HttpClient {
    reader: BufReader<TcpStream>,
}

impl HttpClient {
    pub fn connect(address: SocketAddr) -> Self {
        let stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            reader: BufReader::new(stream),
        }
    }

    pub fn get(&mut self, path: &str) -> (u16, String) {
        write!(self.reader.get_mut(), "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line).unwrap();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("an HTTP status line");
        let mut length = 0;
        loop {
            let mut header = String::new();
            self.reader.read_line(&mut header).unwrap();
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        (status, String::from_utf8(body).unwrap())
    }
}
