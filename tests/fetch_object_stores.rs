//! `model-operator fetch` of `s3://` and `gs://` models from real protocol servers on loopback:
//! moto's S3 server (with IAM authentication switched on once the fixtures are in, so a request
//! without the Secret's keys is refused the way S3 refuses it) and fake-gcs-server behind a
//! gateway that lets through only requests carrying a token signed by the Secret's service
//! account key. Both come from `make test-servers`. Object names hold spaces, non-ASCII
//! letters, the characters object_store's `Path::from` would escape (`~ [ ]`) and those URI
//! syntax reserves (`# ?`, written percent-encoded); each is fetched by URI (raw and
//! percent-encoded) and under a prefix, and lands under its real name. Nothing here reaches
//! beyond 127.0.0.1: instance-metadata endpoints and HTTP proxies in the fetch's environment
//! point at a closed loopback port.

mod support;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{ServerProcess, Shutdown, TestServers, free_port, wait_for};

/// How long a server may take to answer after it starts (moto imports a lot of Python).
const SERVER_START: Duration = Duration::from_secs(60);
/// How long one request to a server (fixtures, the gateway's to fake-gcs-server) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one fetch may take: the ones without credentials retry instance metadata first.
const FETCH_TIMEOUT: Duration = Duration::from_secs(90);

/// The bucket every fixture lives in, and one the Secret's key has no rights to (S3).
const BUCKET: &str = "models";
const PRIVATE_BUCKET: &str = "private";

/// Prefixes with a non-ASCII letter in their own names, and the objects under them, by name
/// relative to the prefix: what a fetch of the prefix must write, and nothing else. The GCS
/// one has a space in its name too. The S3 one has none: object_store sends a listing's
/// `prefix=` form-encoded (a space as `+`) but signs it RFC 3986-encoded (`%20`); AWS
/// canonicalizes the query before checking the signature, moto checks it as received and
/// refuses it (SignatureDoesNotMatch), so a space there would test moto, not the fetch.
const S3_PREFIX: &str = "modèles/bert-v2/";
const GCS_PREFIX: &str = "modèles/bert v2/";
const PREFIX_OBJECTS: [&str; 4] = [
    "config.json",
    "1/model weights.bin",
    "tokenizer/vocabulário.txt",
    "checkpoint [best]~1.pt",
];

/// Single objects, each fetched by URI.
const PLAIN_KEY: &str = "resnet/model.pt";
const SPACED_KEY: &str = "my models/résumé v2.pt";
const RESERVED_KEY: &str = "my models/v1~final [best].pt";
/// What URI syntax reserves: written %23 and %3F in a URI.
const URI_SYNTAX_KEY: &str = "my models/take #2?.pt";

/// Objects beside the prefix that share its first characters: a prefix fetch must leave them.
fn decoys(prefix: &str) -> [String; 2] {
    let stem = prefix.trim_end_matches('/');
    [format!("{stem}-old/config.json"), format!("{stem}.json")]
}

fn every_key(prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = [PLAIN_KEY, SPACED_KEY, RESERVED_KEY, URI_SYNTAX_KEY]
        .into_iter()
        .map(str::to_owned)
        .chain(decoys(prefix))
        .collect();
    keys.extend(PREFIX_OBJECTS.iter().map(|name| format!("{prefix}{name}")));
    keys.sort();
    keys
}

/// Each object's bytes name it, so a file written from the wrong object shows.
fn contents(key: &str) -> Vec<u8> {
    format!("weights of {key}\n").into_bytes()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Every path segment percent-encoded, as a client that escapes everything would send it.
fn encoded_path(key: &str) -> String {
    key.split('/')
        .map(|segment| utf8_percent_encode(segment, NON_ALPHANUMERIC).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// Every file under `dir` (dot-files included: a `.partial` left behind counts), by relative path.
fn listing(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                names.push(path.strip_prefix(dir).unwrap().to_str().unwrap().to_owned());
            }
        }
    }
    names.sort();
    names
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[track_caller]
fn assert_fetched(output: &Output, what: &str) {
    assert!(output.status.success(), "{what}: the fetch failed:\n{}", stderr(output));
}

#[track_caller]
fn assert_failed_with(output: &Output, what: &str, needles: &[&str]) {
    assert!(
        !output.status.success(),
        "{what}: the fetch succeeded:\n{}",
        stderr(output)
    );
    let log = stderr(output);
    for needle in needles {
        assert!(log.contains(needle), "{what}: no {needle:?} in:\n{log}");
    }
}

/// The part of a process's environment that a test controls entirely: nothing of the
/// developer's `AWS_*`, `GOOGLE_*`, `MODEL_*` or proxy settings leaks in.
fn hermetic(command: &mut tokio::process::Command, home: &Path, closed_port: u16) {
    let nowhere = format!("http://127.0.0.1:{closed_port}");
    command
        .env_clear()
        .env("HOME", home)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        // Anything that would leave loopback goes to a closed loopback port instead.
        .env("HTTP_PROXY", &nowhere)
        .env("HTTPS_PROXY", &nowhere)
        .env("ALL_PROXY", &nowhere)
        .env("NO_PROXY", "127.0.0.1,localhost");
}

// ---------------------------------------------------------------------------------------------
// A protocol server on loopback
// ---------------------------------------------------------------------------------------------

/// A test server the fetch talks to, started on `port`, with a client for setting it up. Every
/// failure names the call and shows the server's log.
struct LocalServer {
    process: ServerProcess,
    url: String,
    http: reqwest::Client,
}

impl LocalServer {
    /// Spawns `command` (listening on `port`) and waits until `ready_path` answers a success.
    async fn start(name: &'static str, command: Command, log: PathBuf, port: u16, ready_path: &str) -> Self {
        let server = LocalServer {
            process: ServerProcess::spawn(name, command, log, Shutdown::WholeGroup),
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .unwrap(),
        };
        let ready = format!("{}{ready_path}", server.url);
        wait_for(&format!("{name} answers"), SERVER_START, || async {
            match server.http.get(&ready).send().await {
                Ok(response) if response.status().is_success() => Ok(()),
                Ok(response) => Err(format!("{}\n{}", response.status(), server.process.log_tail())),
                Err(error) => Err(format!("{error}\n{}", server.process.log_tail())),
            }
        })
        .await;
        server
    }

    /// A request the server must answer with a success; the failure names the call and the log.
    async fn expect_ok(&self, what: &str, request: reqwest::RequestBuilder) -> String {
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}\n{}", self.process.log_tail()));
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "{what}: {status}: {body}\n{}",
            self.process.log_tail()
        );
        body
    }
}

// ---------------------------------------------------------------------------------------------
// moto (S3)
// ---------------------------------------------------------------------------------------------

/// moto's server on a loopback port. It starts open (as moto does), takes the fixtures, then
/// has IAM authentication switched on: every later request must be signed by a key IAM knows,
/// and the key's policy must allow the action.
struct Moto {
    server: LocalServer,
}

impl Moto {
    async fn start(servers: &TestServers, log_dir: &Path) -> Self {
        let port = free_port();
        let mut command = Command::new(servers.path("MOTO_SERVER"));
        command
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .env_clear()
            .env("HOME", log_dir)
            .env("PATH", "/usr/bin:/bin");
        let log = log_dir.join(format!("moto-{port}.log"));
        Moto {
            server: LocalServer::start("moto_server", command, log, port, "/moto-api/data.json").await,
        }
    }

    /// An IAM call, while authentication is still off. moto tells services apart by the
    /// credential scope of the Authorization header; nothing checks the signature yet.
    async fn iam(&self, params: &[(&str, &str)]) -> String {
        let request = self.server
            .http
            .post(format!("{}/", self.server.url))
            .header(
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=setup/20240101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
            )
            .form(&[&[("Version", "2010-05-08")], params].concat());
        self.server.expect_ok(&format!("IAM {params:?}"), request).await
    }

    /// An IAM user allowed to read `bucket` and nothing else; returns its access key.
    async fn reader_of(&self, user: &str, bucket: &str) -> (String, String) {
        self.iam(&[("Action", "CreateUser"), ("UserName", user)]).await;
        let policy = json!({
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": "s3:GetObject", "Resource": format!("arn:aws:s3:::{bucket}/*")},
                {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": format!("arn:aws:s3:::{bucket}")},
            ],
        })
        .to_string();
        self.iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", user),
            ("PolicyName", "read-models"),
            ("PolicyDocument", &policy),
        ])
        .await;
        let created = self.iam(&[("Action", "CreateAccessKey"), ("UserName", user)]).await;
        let key_id = xml_values(&created, "AccessKeyId");
        let secret = xml_values(&created, "SecretAccessKey");
        assert_eq!(
            (key_id.len(), secret.len()),
            (1, 1),
            "CreateAccessKey answered {created}"
        );
        (key_id[0].clone(), secret[0].clone())
    }

    async fn create_bucket(&self, bucket: &str) {
        let request = self.server.http.put(format!("{}/{bucket}", self.server.url));
        self.server.expect_ok(&format!("create bucket {bucket}"), request).await;
    }

    async fn put(&self, bucket: &str, key: &str, bytes: Vec<u8>) {
        let request = self
            .server
            .http
            .put(format!("{}/{bucket}/{}", self.server.url, encoded_path(key)))
            .header("Content-Type", "application/octet-stream")
            .body(bytes);
        self.server.expect_ok(&format!("put {key:?}"), request).await;
    }

    /// The keys moto holds, by their real characters (ListObjectsV2 without encoding-type).
    async fn keys(&self, bucket: &str) -> Vec<String> {
        let request = self
            .server
            .http
            .get(format!("{}/{bucket}?list-type=2", self.server.url));
        let listed = self.server.expect_ok(&format!("list {bucket}"), request).await;
        let mut keys = xml_values(&listed, "Key");
        keys.sort();
        keys
    }

    /// From here on, every request must be signed by an IAM key that may do what it asks.
    async fn require_credentials(&self) {
        let request = self
            .server
            .http
            .post(format!("{}/moto-api/reset-auth", self.server.url))
            .header("Content-Type", "text/plain")
            .body("0");
        self.server.expect_ok("switch IAM authentication on", request).await;
    }
}

/// The text of every `<tag>` element (moto's XML has no attributes on the ones read here).
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split_once(&close).map(|(value, _)| value))
        .map(|value| {
            value
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&")
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// fake-gcs-server (GCS) and its authenticating gateway
// ---------------------------------------------------------------------------------------------

/// fake-gcs-server on a loopback port, plain HTTP, in memory. It checks no credentials itself;
/// the fetch reaches it only through `GcsGateway`.
struct FakeGcs {
    server: LocalServer,
}

impl FakeGcs {
    async fn start(servers: &TestServers, log_dir: &Path) -> Self {
        let port = free_port();
        let mut command = Command::new(servers.path("FAKE_GCS_SERVER"));
        command
            .args(["-host", "127.0.0.1", "-port", &port.to_string()])
            .args(["-scheme", "http", "-backend", "memory", "-log-level", "info"])
            // Requests for 127.0.0.1 are the public host's: `/<bucket>/<object>` downloads and
            // the XML listing object_store uses.
            .args(["-public-host", "127.0.0.1"])
            .env_clear();
        let log = log_dir.join(format!("fake-gcs-server-{port}.log"));
        FakeGcs {
            server: LocalServer::start("fake-gcs-server", command, log, port, "/_internal/healthcheck").await,
        }
    }

    async fn create_bucket(&self, bucket: &str) {
        let request = self
            .server
            .http
            .post(format!("{}/storage/v1/b", self.server.url))
            .header("Content-Type", "application/json")
            .body(json!({"name": bucket}).to_string());
        self.server.expect_ok(&format!("create bucket {bucket}"), request).await;
    }

    /// A media upload through the JSON API: the name is a query parameter, `/` and all escaped.
    async fn put(&self, bucket: &str, name: &str, bytes: Vec<u8>) {
        let request = self
            .server
            .http
            .post(format!(
                "{}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={}",
                self.server.url,
                utf8_percent_encode(name, NON_ALPHANUMERIC)
            ))
            .header("Content-Type", "application/octet-stream")
            .body(bytes);
        self.server.expect_ok(&format!("upload {name:?}"), request).await;
    }

    async fn names(&self, bucket: &str) -> Vec<String> {
        let request = self
            .server
            .http
            .get(format!("{}/storage/v1/b/{bucket}/o", self.server.url));
        let listed: Value = serde_json::from_str(&self.server.expect_ok("list objects", request).await).unwrap();
        let mut names: Vec<String> = listed["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| item["name"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        names
    }
}

/// A GCS service account with a real RSA key (made by `openssl`), the kind of
/// `service-account.json` a modelCredentials Secret holds.
struct ServiceAccount {
    client_email: String,
    key_id: String,
    private_key_pem: String,
    /// PKCS#1 `RSAPublicKey`, DER: what the gateway verifies tokens with.
    public_key: Vec<u8>,
}

impl ServiceAccount {
    fn generate(dir: &Path, client_email: &str, key_id: &str) -> Self {
        let key = dir.join(format!("{key_id}.pem"));
        let public = dir.join(format!("{key_id}.pub.der"));
        let openssl = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("openssl runs ({e}): run `make test-servers`, which installs it"));
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let key_arg = key.to_str().unwrap();
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            key_arg,
        ]);
        openssl(&[
            "rsa",
            "-in",
            key_arg,
            "-RSAPublicKey_out",
            "-outform",
            "DER",
            "-out",
            public.to_str().unwrap(),
        ]);
        ServiceAccount {
            client_email: client_email.to_owned(),
            key_id: key_id.to_owned(),
            private_key_pem: std::fs::read_to_string(&key).unwrap(),
            public_key: std::fs::read(&public).unwrap(),
        }
    }

    /// The JSON file Google issues, plus `gcs_base_url` (object_store's emulator setting) so the
    /// fetch talks to the gateway instead of storage.googleapis.com.
    fn json(&self, gcs_base_url: &str) -> String {
        json!({
            "type": "service_account",
            "project_id": "test-project",
            "private_key_id": self.key_id,
            "private_key": self.private_key_pem,
            "client_email": self.client_email,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": "https://oauth2.googleapis.com/token",
            "gcs_base_url": gcs_base_url,
        })
        .to_string()
    }
}

/// A loopback gateway in front of fake-gcs-server that answers 401, as GCS does, to any request
/// without a bearer token that `trusted`'s key signed (RS256), for its email, unexpired; the
/// rest it passes on. Counts both.
struct GcsGateway {
    url: String,
    state: Arc<GatewayState>,
    task: tokio::task::JoinHandle<()>,
}

struct GatewayState {
    upstream: String,
    trusted: ServiceAccount,
    http: reqwest::Client,
    passed: AtomicUsize,
    refused: AtomicUsize,
    last_refusal: std::sync::Mutex<String>,
}

impl Drop for GcsGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GcsGateway {
    async fn start(upstream: &str, trusted: ServiceAccount) -> Self {
        let state = Arc::new(GatewayState {
            upstream: upstream.to_owned(),
            trusted,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .unwrap(),
            passed: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            last_refusal: Default::default(),
        });
        let app = axum::Router::new().fallback(gateway).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        GcsGateway { url, state, task }
    }

    fn passed(&self) -> usize {
        self.state.passed.load(Ordering::SeqCst)
    }

    fn refused(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }
}

async fn gateway(State(state): State<Arc<GatewayState>>, request: Request) -> Response {
    let token = request
        .headers()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    if let Err(why) = verify_token(token, &state.trusted) {
        state.refused.fetch_add(1, Ordering::SeqCst);
        *state.last_refusal.lock().unwrap() = why.clone();
        let body = json!({"error": {"code": 401, "message": format!("Invalid Credentials: {why}")}});
        return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    }
    state.passed.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let upstream = state
        .http
        .request(parts.method, format!("{}{path}", state.upstream))
        .headers(forwarded(&parts.headers))
        .body(body)
        .send()
        .await;
    match upstream {
        Ok(answer) => {
            let status = answer.status();
            let headers = forwarded(answer.headers());
            let bytes = answer.bytes().await.unwrap_or_default();
            let mut response = Response::new(Body::from(bytes));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            response
        }
        Err(error) => (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    }
}

/// The end-to-end headers: hop-by-hop ones and those the gateway answers for itself stay.
fn forwarded(headers: &HeaderMap) -> HeaderMap {
    let mut kept = headers.clone();
    for name in [
        "host",
        "authorization",
        "connection",
        "transfer-encoding",
        "content-length",
    ] {
        kept.remove(name);
    }
    kept
}

/// A Google self-signed service-account JWT: `<header>.<claims>.<RS256 signature>`.
fn verify_token(authorization: &str, trusted: &ServiceAccount) -> Result<(), String> {
    let token = authorization
        .strip_prefix("Bearer ")
        .filter(|token| !token.is_empty())
        .ok_or("no bearer token")?;
    let parts: Vec<&str> = token.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err("not a JWT".into());
    };
    let decode_json = |part: &str| -> Result<Value, String> {
        serde_json::from_slice(&base64url(part)?).map_err(|e| format!("JWT part is not JSON: {e}"))
    };
    let (header_json, claims_json) = (decode_json(header)?, decode_json(claims)?);
    if header_json["alg"] != "RS256" || header_json["kid"] != trusted.key_id.as_str() {
        return Err(format!("unexpected JWT header {header_json}"));
    }
    if claims_json["iss"] != trusted.client_email.as_str() {
        return Err(format!("issued by {}", claims_json["iss"]));
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    if claims_json["exp"].as_u64().is_none_or(|exp| exp <= now) {
        return Err("expired".into());
    }
    // object_store asks for cloud-platform, which covers storage.
    if !claims_json["scope"]
        .as_str()
        .is_some_and(|scope| scope.contains("cloud-platform") || scope.contains("devstorage"))
    {
        return Err(format!("no storage scope in {claims_json}"));
    }
    let signed = format!("{header}.{claims}");
    let provider = rustls::crypto::ring::default_provider();
    let (_, algorithms) = provider
        .signature_verification_algorithms
        .mapping
        .iter()
        .find(|(scheme, _)| *scheme == rustls::SignatureScheme::RSA_PKCS1_SHA256)
        .expect("ring verifies RSA PKCS#1 SHA-256");
    let signature = base64url(signature)?;
    if algorithms.iter().any(|algorithm| {
        algorithm
            .verify_signature(&trusted.public_key, signed.as_bytes(), &signature)
            .is_ok()
    }) {
        Ok(())
    } else {
        Err("the signature is not the service account key's".into())
    }
}

/// Unpadded base64url, as JWTs carry it.
fn base64url(text: &str) -> Result<Vec<u8>, String> {
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for byte in text.bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return Err(format!("{:?} is not base64url", byte as char)),
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// The store under test, as the fetch init container sees it
// ---------------------------------------------------------------------------------------------

/// One emulated store with every fixture object in it, the Secret that reads it, and the rest of
/// the init container's environment.
struct Store {
    scheme: &'static str,
    /// The prefix the fixtures hold (`S3_PREFIX` or `GCS_PREFIX`).
    prefix: &'static str,
    /// The mounted modelCredentials Secret (`--credentials-dir`).
    secret_dir: tempfile::TempDir,
    /// The Secret's keys as the pod's `envFrom` gives them to the fetch.
    secret_env: BTreeMap<String, String>,
    /// The pod's own env: the endpoint and region, never credentials.
    pod_env: BTreeMap<String, String>,
    home: tempfile::TempDir,
    closed_port: u16,
    moto: Option<Moto>,
    gcs: Option<(FakeGcs, GcsGateway)>,
    /// Where the servers log, and spare keys live; last, so it outlives the servers.
    scratch: tempfile::TempDir,
}

impl Store {
    async fn s3() -> Self {
        let servers = TestServers::installed();
        let scratch = tempfile::tempdir().unwrap();
        let moto = Moto::start(&servers, scratch.path()).await;
        for bucket in [BUCKET, PRIVATE_BUCKET] {
            moto.create_bucket(bucket).await;
        }
        for key in every_key(S3_PREFIX) {
            moto.put(BUCKET, &key, contents(&key)).await;
        }
        moto.put(PRIVATE_BUCKET, PLAIN_KEY, contents(PLAIN_KEY)).await;
        assert_eq!(
            moto.keys(BUCKET).await,
            every_key(S3_PREFIX),
            "moto holds the keys by their real names"
        );
        let (key_id, secret) = moto.reader_of("model-fetch", BUCKET).await;
        moto.require_credentials().await;

        let closed_port = free_port();
        let secret_env = BTreeMap::from([
            ("AWS_ACCESS_KEY_ID".to_owned(), key_id),
            ("AWS_SECRET_ACCESS_KEY".to_owned(), secret),
        ]);
        let pod_env = BTreeMap::from([
            ("AWS_ENDPOINT".to_owned(), moto.server.url.clone()),
            ("AWS_ALLOW_HTTP".to_owned(), "true".to_owned()),
            ("AWS_REGION".to_owned(), "us-east-1".to_owned()),
            // Without keys object_store asks the EC2 instance metadata service; here, nothing.
            (
                "AWS_METADATA_ENDPOINT".to_owned(),
                format!("http://127.0.0.1:{closed_port}"),
            ),
        ]);
        let secret_dir = tempfile::tempdir().unwrap();
        for (key, value) in &secret_env {
            std::fs::write(secret_dir.path().join(key), value).unwrap();
        }
        Store {
            scheme: "s3",
            prefix: S3_PREFIX,
            secret_dir,
            secret_env,
            pod_env,
            home: tempfile::tempdir().unwrap(),
            closed_port,
            moto: Some(moto),
            gcs: None,
            scratch,
        }
    }

    async fn gcs() -> Self {
        let servers = TestServers::installed();
        let scratch = tempfile::tempdir().unwrap();
        let fake = FakeGcs::start(&servers, scratch.path()).await;
        fake.create_bucket(BUCKET).await;
        for key in every_key(GCS_PREFIX) {
            fake.put(BUCKET, &key, contents(&key)).await;
        }
        assert_eq!(
            fake.names(BUCKET).await,
            every_key(GCS_PREFIX),
            "fake-gcs-server holds the real names"
        );
        let account = ServiceAccount::generate(
            scratch.path(),
            "model-fetch@test-project.iam.gserviceaccount.com",
            "key-1",
        );
        let gateway = GcsGateway::start(&fake.server.url, account).await;
        let secret_dir = tempfile::tempdir().unwrap();
        std::fs::write(
            secret_dir.path().join("service-account.json"),
            gateway.state.trusted.json(&gateway.url),
        )
        .unwrap();
        let closed_port = free_port();
        let pod_env = BTreeMap::from([
            // Without a service account object_store asks the GCE metadata server; here, nothing.
            ("GCE_METADATA_HOST".to_owned(), format!("127.0.0.1:{closed_port}")),
            ("GCE_METADATA_IP".to_owned(), format!("127.0.0.1:{closed_port}")),
        ]);
        Store {
            scheme: "gs",
            prefix: GCS_PREFIX,
            secret_dir,
            secret_env: BTreeMap::new(),
            pod_env,
            home: tempfile::tempdir().unwrap(),
            closed_port,
            moto: None,
            gcs: Some((fake, gateway)),
            scratch,
        }
    }

    fn uri(&self, key: &str) -> String {
        format!("{}://{BUCKET}/{key}", self.scheme)
    }

    fn gateway(&self) -> Option<&GcsGateway> {
        self.gcs.as_ref().map(|(_, gateway)| gateway)
    }

    /// Runs `model-operator fetch --uri URI --dest DEST` as the init container runs it: with the
    /// Secret mounted and its keys in the env, or (`with_secret` false) with neither.
    async fn fetch(&self, uri: &str, dest: &Path, with_secret: bool) -> Output {
        if with_secret {
            self.fetch_with(uri, dest, Some(self.secret_dir.path()), &self.secret_env)
                .await
        } else {
            self.fetch_with(uri, dest, None, &BTreeMap::new()).await
        }
    }

    /// A fetch with another Secret: `credentials_dir` mounted, `secret_env` as its env.
    async fn fetch_with(
        &self,
        uri: &str,
        dest: &Path,
        credentials_dir: Option<&Path>,
        secret_env: &BTreeMap<String, String>,
    ) -> Output {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_model-operator"));
        hermetic(&mut command, self.home.path(), self.closed_port);
        command.envs(&self.pod_env).envs(secret_env);
        command.arg("fetch").arg("--uri").arg(uri).arg("--dest").arg(dest);
        if let Some(dir) = credentials_dir {
            command.arg("--credentials-dir").arg(dir);
        }
        command.kill_on_drop(true);
        tokio::time::timeout(FETCH_TIMEOUT, command.output())
            .await
            .unwrap_or_else(|_| panic!("fetching {uri} took more than {FETCH_TIMEOUT:?}"))
            .expect("model-operator runs")
    }

    fn server_logs(&self) -> String {
        match (&self.moto, &self.gcs) {
            (Some(moto), _) => moto.server.process.log_tail(),
            (_, Some((fake, _))) => fake.server.process.log_tail(),
            _ => String::new(),
        }
    }
}

fn dest_dir() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("model");
    (root, dest)
}

// ---------------------------------------------------------------------------------------------
// The cases, run against each store
// ---------------------------------------------------------------------------------------------

/// Each object by URI, its key written raw and percent-encoded: one file, under the last part of
/// the key by its real characters, holding that object's bytes.
async fn single_objects_keep_their_real_names(store: &Store) {
    let cases = [
        (store.uri(PLAIN_KEY), PLAIN_KEY, "model.pt"),
        (store.uri(SPACED_KEY), SPACED_KEY, "résumé v2.pt"),
        (store.uri(&encoded_path(SPACED_KEY)), SPACED_KEY, "résumé v2.pt"),
        (
            format!("{}://{BUCKET}/my%20models/r%C3%A9sum%C3%A9%20v2.pt", store.scheme),
            SPACED_KEY,
            "résumé v2.pt",
        ),
        (store.uri(RESERVED_KEY), RESERVED_KEY, "v1~final [best].pt"),
        (
            store.uri(&encoded_path(RESERVED_KEY)),
            RESERVED_KEY,
            "v1~final [best].pt",
        ),
        // `#` starts the checksum fragment and `?` a query, so a key holding them has them
        // percent-encoded.
        (store.uri("my models/take %232%3F.pt"), URI_SYNTAX_KEY, "take #2?.pt"),
        (store.uri(&encoded_path(URI_SYNTAX_KEY)), URI_SYNTAX_KEY, "take #2?.pt"),
    ];
    for (uri, key, file_name) in cases {
        let (_root, dest) = dest_dir();
        let output = store.fetch(&uri, &dest, true).await;
        assert!(
            output.status.success(),
            "{uri}: the fetch failed:\n{}\n{}",
            stderr(&output),
            store.server_logs()
        );
        assert_eq!(listing(&dest), [file_name], "{uri}");
        assert_eq!(std::fs::read(dest.join(file_name)).unwrap(), contents(key), "{uri}");
    }
}

/// A prefix whose own name has a non-ASCII letter (and for GCS a space): every object under it,
/// written under its real relative name, and none of the objects beside it.
async fn a_prefix_is_written_under_the_real_names(store: &Store) {
    let mut expected: Vec<&str> = PREFIX_OBJECTS.to_vec();
    expected.sort();
    for uri in [store.uri(store.prefix), store.uri(&encoded_path(store.prefix))] {
        let (_root, dest) = dest_dir();
        let output = store.fetch(&uri, &dest, true).await;
        assert!(
            output.status.success(),
            "{uri}: the fetch failed:\n{}\n{}",
            stderr(&output),
            store.server_logs()
        );
        assert_eq!(listing(&dest), expected, "{uri}");
        for name in PREFIX_OBJECTS {
            assert_eq!(
                std::fs::read(dest.join(name)).unwrap(),
                contents(&format!("{}{name}", store.prefix)),
                "{uri}: {name}"
            );
        }
    }
}

/// A wrong `#sha256=` fails with the checksum message and leaves no file at all (not even a
/// `.partial`); the right one passes; a checksum on a prefix is refused before any download.
async fn checksums_are_verified(store: &Store) {
    let (_root, dest) = dest_dir();
    let wrong = format!("{}#sha256={}", store.uri(SPACED_KEY), "0".repeat(64));
    let output = store.fetch(&wrong, &dest, true).await;
    assert_failed_with(
        &output,
        "a wrong checksum",
        &["checksum mismatch", &sha256_hex(&contents(SPACED_KEY))],
    );
    assert_eq!(listing(&dest), Vec::<String>::new(), "a wrong checksum leaves nothing");

    let right = format!("{}#sha256={}", store.uri(SPACED_KEY), sha256_hex(&contents(SPACED_KEY)));
    let output = store.fetch(&right, &dest, true).await;
    assert_fetched(&output, "the right checksum");
    assert_eq!(listing(&dest), ["résumé v2.pt"]);

    let (_root, dest) = dest_dir();
    let on_prefix = format!("{}#sha256={}", store.uri(store.prefix), "0".repeat(64));
    let output = store.fetch(&on_prefix, &dest, true).await;
    assert_failed_with(&output, "a checksum on a prefix", &["names one file"]);
    assert_eq!(listing(&dest), Vec::<String>::new());
}

/// A missing object and a missing prefix (and for GCS a missing bucket) are each a clear
/// not-found error that leaves nothing behind. S3 answers 403 for a bucket the key may not
/// read, whether it exists or not, as AWS does (`s3_credentials_come_from_the_secret`).
async fn missing_objects_are_not_found(store: &Store) {
    let mut missing = vec![store.uri("my models/absent model.pt"), store.uri("nothing-hère/")];
    if store.scheme == "gs" {
        missing.push(format!("gs://no-such-bucket/{PLAIN_KEY}"));
    }
    for uri in missing {
        let (_root, dest) = dest_dir();
        let output = store.fetch(&uri, &dest, true).await;
        assert_failed_with(&output, &uri, &[&format!("{uri} was not found")]);
        assert_eq!(listing(&dest), Vec::<String>::new(), "{uri}");
    }
}

// ---------------------------------------------------------------------------------------------
// S3
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn s3_single_objects_keep_their_real_names() {
    single_objects_keep_their_real_names(&Store::s3().await).await;
}

#[tokio::test]
async fn s3_a_prefix_is_written_under_the_real_names() {
    a_prefix_is_written_under_the_real_names(&Store::s3().await).await;
}

#[tokio::test]
async fn s3_checksums_are_verified() {
    checksums_are_verified(&Store::s3().await).await;
}

#[tokio::test]
async fn s3_missing_objects_are_not_found() {
    missing_objects_are_not_found(&Store::s3().await).await;
}

/// The Secret's `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, which the pod gives the fetch
/// as env (`envFrom`), are what moto checks; without them, with a wrong secret, or for a bucket
/// the key may not read, the fetch fails saying why and writes nothing. The Secret's `uri` key,
/// the spec's object written percent-encoded, is downloaded in place of the spec's.
#[tokio::test]
async fn s3_credentials_come_from_the_secret() {
    let store = Store::s3().await;
    let uri = store.uri(SPACED_KEY);

    let (_root, dest) = dest_dir();
    let output = store.fetch(&uri, &dest, true).await;
    assert_fetched(&output, "with the Secret's keys");
    assert_eq!(listing(&dest), ["résumé v2.pt"]);

    let (_root, dest) = dest_dir();
    let output = store.fetch(&uri, &dest, false).await;
    assert_failed_with(
        &output,
        "without the Secret",
        &["no credentials for", "AWS_ACCESS_KEY_ID", "instance metadata"],
    );
    assert_eq!(listing(&dest), Vec::<String>::new());

    let mut wrong = store.secret_env.clone();
    wrong.insert("AWS_SECRET_ACCESS_KEY".into(), "not-the-secret".into());
    let (_root, dest) = dest_dir();
    let output = store.fetch_with(&uri, &dest, None, &wrong).await;
    assert_failed_with(&output, "a wrong secret key", &["403", "SignatureDoesNotMatch"]);
    assert_eq!(listing(&dest), Vec::<String>::new());

    let mut unknown = store.secret_env.clone();
    unknown.insert("AWS_ACCESS_KEY_ID".into(), "AKIANOTAKEYMOTOKNOWS".into());
    let output = store.fetch_with(&uri, &dest, None, &unknown).await;
    assert_failed_with(&output, "an unknown access key", &["403", "InvalidAccessKeyId"]);

    let other_bucket = format!("s3://{PRIVATE_BUCKET}/{PLAIN_KEY}");
    let output = store.fetch(&other_bucket, &dest, true).await;
    assert_failed_with(&output, "a bucket the key may not read", &["403", "AccessDenied"]);
    assert_eq!(listing(&dest), Vec::<String>::new());

    // The Secret's `uri`: the same object as the spec's raw key, percent-encoded.
    std::fs::write(
        store.secret_dir.path().join("uri"),
        format!("s3://{BUCKET}/{}\n", encoded_path(SPACED_KEY)),
    )
    .unwrap();
    let (_root, dest) = dest_dir();
    let output = store.fetch(&uri, &dest, true).await;
    assert_fetched(&output, "the Secret's uri, percent-encoded");
    assert_eq!(listing(&dest), ["résumé v2.pt"]);
    std::fs::write(store.secret_dir.path().join("uri"), store.uri(PLAIN_KEY)).unwrap();
    let output = store.fetch(&uri, &dest, true).await;
    assert_failed_with(&output, "a Secret uri naming another object", &["names another object"]);
}

// ---------------------------------------------------------------------------------------------
// GCS
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn gcs_single_objects_keep_their_real_names() {
    single_objects_keep_their_real_names(&Store::gcs().await).await;
}

#[tokio::test]
async fn gcs_a_prefix_is_written_under_the_real_names() {
    a_prefix_is_written_under_the_real_names(&Store::gcs().await).await;
}

#[tokio::test]
async fn gcs_checksums_are_verified() {
    checksums_are_verified(&Store::gcs().await).await;
}

#[tokio::test]
async fn gcs_missing_objects_are_not_found() {
    missing_objects_are_not_found(&Store::gcs().await).await;
}

/// The Secret's `service-account.json` is the only credential: with it, every request carries a
/// token its key signed (the gateway checks); without it the fetch fails saying what is missing;
/// with a service account file whose key is not the trusted one, the store's 401 is reported.
#[tokio::test]
async fn gcs_credentials_come_from_the_secrets_service_account() {
    let store = Store::gcs().await;
    let gateway = store.gateway().unwrap();
    let uri = store.uri(SPACED_KEY);

    let (_root, dest) = dest_dir();
    let output = store.fetch(&uri, &dest, true).await;
    assert_fetched(&output, "with the Secret's service account");
    assert_eq!(listing(&dest), ["résumé v2.pt"]);
    assert!(gateway.passed() > 0, "the fetch went through the gateway");
    assert_eq!(
        gateway.refused(),
        0,
        "every request was signed: {}",
        gateway.state.last_refusal.lock().unwrap()
    );

    let (_root, dest) = dest_dir();
    let output = store.fetch(&uri, &dest, false).await;
    assert_failed_with(
        &output,
        "without the Secret",
        &["no credentials for", "service-account.json", "metadata"],
    );
    assert_eq!(listing(&dest), Vec::<String>::new());

    // The same account name and key id, another key: a rotated-away or forged key file.
    let impostor = ServiceAccount::generate(
        store.scratch.path(),
        &gateway.state.trusted.client_email,
        &gateway.state.trusted.key_id,
    );
    let impostor_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        impostor_dir.path().join("service-account.json"),
        impostor.json(&gateway.url),
    )
    .unwrap();
    let (_root, dest) = dest_dir();
    let output = store
        .fetch_with(&uri, &dest, Some(impostor_dir.path()), &BTreeMap::new())
        .await;
    assert_failed_with(&output, "another key", &["401"]);
    assert!(gateway.refused() > 0, "the gateway refused the impostor's token");
    assert!(
        gateway.state.last_refusal.lock().unwrap().contains("signature"),
        "refused for its signature: {}",
        gateway.state.last_refusal.lock().unwrap()
    );
    assert_eq!(listing(&dest), Vec::<String>::new());
}
