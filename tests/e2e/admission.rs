//! The table of bad specs (`tests/fixtures/bad-specs.yaml`) against the real API server: each
//! server-side apply is refused, and the API server's message names the case's field. The
//! offline half of this table is `tests/admission_table.rs`.

use kube::api::{Patch, PatchParams};
use model_operator::api::ModelDeployment;

use crate::{
    bad_specs,
    support::{TEST_MANAGER, TestNamespace, cluster},
};

#[tokio::test]
async fn every_bad_spec_is_refused_by_the_api_server_naming_its_field() {
    let client = cluster().await;
    let ns = TestNamespace::create(&client, "e2e-admission").await;
    let api = ns.api::<ModelDeployment>();
    // A dry run: nothing is stored, so the cases cannot interfere with each other.
    let params = PatchParams::apply(TEST_MANAGER).force().dry_run();
    let table = bad_specs::load();
    let name = |object: &serde_json::Value| object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    api.patch(&name(&table.base), &params, &Patch::Apply(&table.base))
        .await
        .unwrap_or_else(|e| panic!("the base spec is valid, got {e}"));
    let mut failures = Vec::new();
    for case in &table.cases {
        let object = case.object(&table.base);
        match api.patch(&name(&object), &params, &Patch::Apply(&object)).await {
            Ok(_) => failures.push(format!("{}: accepted", case.case)),
            Err(kube::Error::Api(status)) if status.message.contains(&case.field) => {}
            Err(error) => failures.push(format!("{}: refused without naming {}: {error}", case.case, case.field)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        table.cases.len(),
        failures.join("\n\n")
    );
    ns.delete().await;
}
