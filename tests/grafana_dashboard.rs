//! `config/grafana/model-operator.json`: an importable dashboard whose every query names only
//! metrics that really exist: the operator's (its `/metrics` encoder), the node agent's (the real
//! binary's `/metrics`, on a fake GPU) or kube-state-metrics' HPA series, listed below.

mod support;

use std::{
    collections::BTreeSet,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use model_operator::telemetry::Metrics;
use serde_json::{Value, json};

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/grafana/model-operator.json");

/// kube-state-metrics series the dashboard may use for replicas versus the HPA (kube-state-metrics
/// `docs/metrics/workload/horizontalpodautoscaler-metrics.md`); everything else must come from
/// this project's binaries.
const KUBE_STATE_METRICS: &[&str] = &[
    "kube_horizontalpodautoscaler_spec_max_replicas",
    "kube_horizontalpodautoscaler_spec_min_replicas",
    "kube_horizontalpodautoscaler_spec_target_metric",
    "kube_horizontalpodautoscaler_status_current_replicas",
    "kube_horizontalpodautoscaler_status_desired_replicas",
    "kube_horizontalpodautoscaler_status_target_metric",
];

/// PromQL words that are not metric names when no `(` follows them: operators, modifiers, and
/// aggregations written with their grouping first (`sum by (pod) (...)`).
const KEYWORDS: &str = "and or unless by without on ignoring group_left group_right bool offset inf nan \
                        sum avg min max count group stddev stdvar topk bottomk quantile count_values limitk limit_ratio";

fn dashboard() -> Value {
    let text = std::fs::read_to_string(DASHBOARD).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        all.push(panel);
        all.extend(panel["panels"].as_array().into_iter().flatten());
    }
    all
}

/// Every PromQL query: panel targets and the query variables' `label_values(...)`.
fn queries(dashboard: &Value) -> Vec<String> {
    let mut queries: Vec<String> = panels(dashboard)
        .iter()
        .flat_map(|panel| panel["targets"].as_array().into_iter().flatten())
        .map(|target| target["expr"].as_str().expect("every target has an expr").to_owned())
        .collect();
    for variable in dashboard["templating"]["list"].as_array().expect("templating") {
        if variable["type"] == "query" {
            let query = variable["query"]["query"].as_str().expect("a query variable's query");
            queries.push(label_values_selector(query).to_owned());
        }
    }
    queries
}

/// `label_values(SELECTOR, label)` → SELECTOR (the label is not a metric).
fn label_values_selector(query: &str) -> &str {
    let inner = query
        .strip_prefix("label_values(")
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("only label_values(...) variables are expected: {query}"));
    inner.rsplit_once(',').map_or(inner, |(selector, _label)| selector)
}

/// Removes what is bracketed by `open`/`close` (nesting-aware), keeping the brackets' position.
fn strip_between(text: &str, open: char, close: char) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in text.chars() {
        if c == open {
            depth += 1;
            out.push(' ');
        } else if c == close && depth > 0 {
            depth -= 1;
        } else if depth == 0 {
            out.push(c);
        }
    }
    out
}

/// The metric names a PromQL expression selects: identifiers that are not functions, keywords,
/// label names (inside `{}` or a grouping clause), strings, durations or Grafana variables.
fn metric_names(promql: &str) -> BTreeSet<String> {
    // Strings (label values, label_replace arguments) go first: they may hold any character.
    let mut text = String::new();
    let mut quote = None;
    for c in promql.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' || c == '`' => {
                quote = Some(c);
                text.push(' ');
            }
            None => text.push(c),
        }
    }
    let text = strip_between(&strip_between(&text, '{', '}'), '[', ']');
    let chars: Vec<char> = text.chars().collect();
    let is_name_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_group = false;
    while i < chars.len() {
        let c = chars[i];
        let preceded = i > 0 && (is_name_char(chars[i - 1]) || chars[i - 1] == '.' || chars[i - 1] == '$');
        if !is_name_start(c) || preceded {
            // A grouping clause's parenthesised label list holds labels, not metrics.
            if c == '(' && skip_group {
                let close = chars[i..]
                    .iter()
                    .position(|&c| c == ')')
                    .expect("a closing parenthesis");
                i += close;
                skip_group = false;
            } else if !c.is_whitespace() {
                skip_group = false;
            }
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_name_char(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let next = chars[i..].iter().find(|c| !c.is_whitespace());
        if ["by", "without", "on", "ignoring", "group_left", "group_right"].contains(&word.as_str()) {
            skip_group = true;
        } else if next != Some(&'(') && !KEYWORDS.split_whitespace().any(|k| k == word) {
            names.insert(word);
        }
    }
    names
}

#[test]
fn metric_names_are_what_the_queries_select() {
    let names = |q: &str| metric_names(q).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"avg by (namespace, model) (label_replace(DCGM_FI_DEV_GPU_UTIL{namespace=~"$namespace", pod=~"(${model:regex})-[a-z0-9]+"}, "model", "$1", "pod", "(.+)-x"))"#
        ),
        ["DCGM_FI_DEV_GPU_UTIL"]
    );
    assert_eq!(
        names(
            "histogram_quantile(0.99, sum by (le) (rate(model_operator_reconcile_duration_seconds_bucket[$__rate_interval])))"
        ),
        ["model_operator_reconcile_duration_seconds_bucket"]
    );
    assert_eq!(
        names("sum(a_total{x=\"1\"}) and on (instance) (leader == 1) offset 5m unless ignoring(pod) b"),
        ["a_total", "b", "leader"]
    );
    assert_eq!(
        label_values_selector(r#"label_values(model_operator_model_ready{namespace=~"$namespace"}, name)"#),
        r#"model_operator_model_ready{namespace=~"$namespace"}"#
    );
}

#[test]
fn grafana_can_import_it() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "model-operator");
    assert!(dashboard["schemaVersion"].as_u64().is_some(), "a schemaVersion");
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let datasource = variables
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a datasource variable, so the import does not hard-wire one");
    assert_eq!(datasource["query"], "prometheus");
    let wanted = json!({"type": "prometheus", "uid": format!("${{{}}}", datasource["name"].as_str().unwrap())});

    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("a numeric id")),
            "duplicate id: {title}"
        );
        assert!(panel["gridPos"]["w"].as_u64().is_some(), "{title}: no gridPos");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"], wanted, "{title}: use the datasource variable");
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        for target in targets {
            assert_eq!(target["datasource"], wanted, "{title}: use the datasource variable");
        }
    }
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        assert_eq!(variable["datasource"], wanted, "variable {}", variable["name"]);
    }
}

/// Sample names in a Prometheus text exposition (histograms as their `_bucket`/`_sum`/`_count`).
fn served_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The operator's `/metrics` with a series in every family: families without one are not served.
fn operator_exposition() -> String {
    let metrics = Metrics::new();
    metrics.deployments_created.inc();
    metrics.validations.with_label_values(&["success"]).inc();
    metrics.reconcile_duration.with_label_values(&["success"]).observe(0.01);
    metrics.reconcile_errors.with_label_values(&["ApplyFailed"]).inc();
    let model = ["ml", "resnet", "triton"];
    metrics.model_ready.with_label_values(&model).set(1);
    metrics.model_ready_replicas.with_label_values(&model).set(1);
    metrics.leader.set(1);
    metrics.encode()
}

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real node agent's `/metrics` for one fake GPU with every reading NVML can give.
async fn node_agent_exposition() -> String {
    let binaries = support::node_agent_binaries();
    let (agent, nvml_lib) = (&binaries.node_agent, &binaries.nvml_lib);
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("libnvidia-ml.so.1");
    std::fs::copy(nvml_lib, &lib).unwrap();
    let config = dir.path().join("nvml.json");
    let gpu = json!({"devices": [{"uuid": "GPU-8f6b2a10-5c3d-4e1f-9a7b-0c1d2e3f4a5b", "utilizationGpu": 87,
        "utilizationMemory": 41, "memoryUsedMiB": 40960, "powerMilliwatts": 275500, "temperatureC": 61,
        "smClockMHz": 1410}]});
    std::fs::write(&config, gpu.to_string()).unwrap();
    let log = dir.path().join("agent.log");
    let file = std::fs::File::create(&log).unwrap();
    // No kubelet socket: the agent serves the GPUs unattributed and keeps retrying the kubelet.
    let _agent = Process(
        Command::new(agent)
            .env("FAKE_NVML_CONFIG", &config)
            .arg("--nvml-lib")
            .arg(&lib)
            .arg("--pod-resources-socket")
            .arg(dir.path().join("no-kubelet.sock"))
            .args(["--listen", "127.0.0.1:0", "--interval", "100ms", "--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", agent.display())),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut address = None;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if address.is_none() {
            address = text.lines().find_map(|line| {
                let line: Value = serde_json::from_str(line).ok()?;
                let serving = line["fields"]["message"].as_str()?.starts_with("serving");
                serving.then(|| line["fields"]["address"].as_str().map(str::to_owned))?
            });
        }
        if let Some(address) = &address
            && let Ok(response) = reqwest::get(format!("http://{address}/metrics")).await
            && let Ok(body) = response.text().await
            && body.contains("DCGM_FI_DEV_GPU_UTIL{")
        {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "the node agent served no GPU metrics within 30 s; its log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn every_metric_the_dashboard_names_is_served() {
    let used: BTreeSet<String> = queries(&dashboard()).iter().flat_map(|q| metric_names(q)).collect();
    let operator = served_names(&operator_exposition());
    let agent = served_names(&node_agent_exposition().await);
    let unknown: Vec<&String> = used
        .iter()
        .filter(|name| {
            !operator.contains(*name) && !agent.contains(*name) && !KUBE_STATE_METRICS.contains(&name.as_str())
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "{DASHBOARD} uses metrics that neither the operator nor the node agent serves (nor the \
         kube-state-metrics HPA series): {unknown:?}\noperator serves: {operator:?}\nnode agent serves: {agent:?}"
    );
    // Each source is really used, so a renamed family cannot slip through unnoticed.
    for (source, served) in [("operator", &operator), ("node agent", &agent)] {
        assert!(
            used.iter().any(|name| served.contains(name)),
            "the dashboard uses no {source} metric"
        );
    }
}
