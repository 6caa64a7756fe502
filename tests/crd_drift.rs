//! The committed CRD must be exactly what `model-operator crd` prints; regenerate it with
//! `make crds` after changing the API types.

#[test]
fn committed_crd_matches_the_api_types() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/modeldeployments.mlops.sathvik.dev.yaml"
    ))
    .expect("crds/modeldeployments.mlops.sathvik.dev.yaml is committed");
    let generated = model_operator::cli::crd_yaml();
    assert!(
        committed == generated,
        "crds/ is stale: run `make crds` and commit the result.\n--- generated ---\n{generated}"
    );
}

/// Helm installs CRDs only from the chart's own `crds/` directory (and never deletes them), so the
/// chart carries a copy; a symlink would make every helm command warn and break `helm pull`.
#[test]
fn the_charts_crd_is_the_committed_one() {
    let read = |path: &str| {
        let path = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    assert!(
        read("charts/model-operator/crds/modeldeployments.mlops.sathvik.dev.yaml")
            == read("crds/modeldeployments.mlops.sathvik.dev.yaml"),
        "charts/model-operator/crds/ differs from crds/: run `make crds` and commit the result"
    );
}
