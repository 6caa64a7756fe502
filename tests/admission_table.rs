//! The table of bad specs (`tests/fixtures/bad-specs.yaml`) through `render`'s offline
//! admission: each is refused, naming its field, as the API server refuses it in the cluster
//! tier (`tests/e2e/admission.rs`). The base spec is accepted, so every refusal is the case's.

use model_operator::{reconcile::validate::check, vocabulary::OperatorImages};
use serde_json::Value;

#[path = "support/bad_specs.rs"]
mod bad_specs;

#[test]
fn every_bad_spec_is_refused_offline_naming_its_field() {
    let table = bad_specs::load();
    assert!(table.cases.len() >= 30, "{} cases", table.cases.len());
    check(&table.base, &OperatorImages::default()).unwrap_or_else(|e| panic!("the base is valid, got:\n{e}"));
    let mut failures = Vec::new();
    for case in &table.cases {
        let object: Value = case.object(&table.base);
        match check(&object, &OperatorImages::default()) {
            Ok(_) => failures.push(format!("{}: accepted", case.case)),
            Err(errors) => {
                let text = errors.to_string();
                if !text.contains(&case.field) {
                    failures.push(format!("{}: refused without naming {}:\n{text}", case.case, case.field));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
