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
