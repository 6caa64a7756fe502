//! The models of a scale run: a fixed mix by index, so every run (and the limit) has the same
//! ones. A third each of fastapi-pytorch, Triton and TorchServe (whose config.properties is a
//! ConfigMap); every seventh autoscaled (an HPA), every tenth validated first (a Job that gates
//! the Deployment), and one in a hundred on a whole A100, at most as many as the local cluster's
//! two 8 × A100 nodes hold.

use std::collections::BTreeMap;

use model_operator::{
    api::ModelDeployment,
    reconcile::{build, validate},
    vocabulary::OperatorImages,
};

/// The A100s of tests/cluster/nodes.yaml: GPU models beyond these would stay Pending.
const GPUS_IN_THE_CLUSTER: usize = 16;

pub fn name(i: usize) -> String {
    format!("m-{i}")
}

fn autoscaled(i: usize) -> bool {
    i.is_multiple_of(7)
}

fn validated(i: usize) -> bool {
    i.is_multiple_of(10)
}

fn on_a_gpu(i: usize) -> bool {
    i % 100 == 1 && i / 100 < GPUS_IN_THE_CLUSTER
}

/// A model with neither Job nor HPA nor GPU: the one whose change is timed, since a change to a
/// validated model waits for its validation again.
pub fn plain(models: usize) -> usize {
    (0..models)
        .find(|&i| !autoscaled(i) && !validated(i) && !on_a_gpu(i))
        .expect("the mix has plain models")
}

pub fn model(i: usize, namespace: &str) -> ModelDeployment {
    let name = name(i);
    let (runtime, uri) = match i % 3 {
        0 => ("fastapi-pytorch", format!("https://models.example/{name}.pt")),
        1 => ("triton", format!("s3://example-models/triton/{name}/")),
        _ => ("torchserve", format!("https://models.example/{name}.mar")),
    };
    let mut yaml = format!(
        "apiVersion: mlops.sathvik.dev/v1\nkind: ModelDeployment\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
         spec:\n  modelURI: {uri}\n  runtime: {runtime}\n  resources:\n    requests: {{cpu: 10m, memory: 64Mi}}\n"
    );
    if on_a_gpu(i) {
        yaml.push_str("  gpu: {count: 1, products: [NVIDIA-A100-SXM4-80GB]}\n");
    }
    if validated(i) {
        yaml.push_str("  validateScript: validate.py\n");
    }
    if autoscaled(i) {
        yaml.push_str("  autoscale: true\n  autoscaling: {minReplicas: 1, maxReplicas: 2, metric: cpu, target: 70}\n");
    }
    serde_yaml_ng::from_str(&yaml).expect("the mix's YAML is a ModelDeployment")
}

/// What the operator builds for `model`, from the library itself: the limit writes exactly this.
pub fn desired(model: &ModelDeployment) -> build::Desired {
    let validated = validate::validate(model, &OperatorImages::default())
        .unwrap_or_else(|errors| panic!("a model of the mix is invalid: {errors:?}"));
    build::build(&validated)
}

/// How many children of each kind `models` models have, by the `kind` of each object.
pub fn children_by_kind(models: usize) -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for i in 0..models {
        for object in desired(&model(i, "count")).objects() {
            let kind = object["kind"].as_str().expect("every child has a kind").to_owned();
            *kinds.entry(kind).or_default() += 1;
        }
    }
    kinds
}

/// The mix in words, for the report.
pub fn describe(models: usize) -> String {
    let count = |pick: fn(usize) -> bool| (0..models).filter(|&i| pick(i)).count();
    format!(
        "{} fastapi-pytorch, {} triton, {} torchserve; {} on a GPU, {} autoscaled, {} validated",
        count(|i| i % 3 == 0),
        count(|i| i % 3 == 1),
        count(|i| i % 3 == 2),
        count(on_a_gpu),
        count(autoscaled),
        count(validated),
    )
}
