//! `model-operator render` as users run it: every example renders, the original project's README
//! YAML renders unchanged, and an invalid file exits non-zero naming the field.

use std::{path::Path, process::Command};

fn render(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_model-operator"))
        .arg("render")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("model-operator runs")
}

fn kinds(stdout: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(stdout);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            let value: serde_json::Value = serde::Deserialize::deserialize(doc).expect("render prints YAML");
            format!(
                "{}/{}",
                value["kind"].as_str().unwrap(),
                value["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn every_example_renders_its_children() {
    let expected: &[(&str, &[&str])] = &[
        (
            "examples/dummy-model.yaml",
            &["Deployment/dummy-model", "Service/dummy-model-service"],
        ),
        (
            "examples/custom-model.yaml",
            &[
                "Job/custom-model-validate-",
                "Deployment/custom-model",
                "Service/custom-model-service",
                "HorizontalPodAutoscaler/custom-model",
            ],
        ),
        (
            "examples/triton-gpu-autoscaling.yaml",
            &[
                "Deployment/resnet50-triton",
                "Service/resnet50-triton-service",
                "HorizontalPodAutoscaler/resnet50-triton",
            ],
        ),
        (
            "examples/torchserve-mig.yaml",
            &[
                "ConfigMap/bert-torchserve-runtime-config",
                "Deployment/bert-torchserve",
                "Service/bert-torchserve-service",
            ],
        ),
        (
            "examples/time-sliced-t4.yaml",
            &[
                "Job/sentiment-t4-validate-",
                "Deployment/sentiment-t4",
                "Service/sentiment-t4-service",
            ],
        ),
        (
            "examples/triton-dra-h100.yaml",
            &[
                "ResourceClaimTemplate/triton-dra-gpu-",
                "Deployment/triton-dra",
                "Service/triton-dra-service",
            ],
        ),
    ];
    for (file, objects) in expected {
        let output = render(&["-f", file]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{file}: {stderr}");
        let rendered = kinds(&output.stdout);
        assert_eq!(rendered.len(), objects.len(), "{file}: {rendered:?}");
        for (got, want) in rendered.iter().zip(objects.iter()) {
            assert!(
                got.starts_with(want),
                "{file}: expected {want}, got {got} in {rendered:?}"
            );
        }
    }
    let examples = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples"))
        .unwrap()
        .count();
    assert_eq!(examples, expected.len(), "a new example needs a line in this test");
}

#[test]
fn several_files_render_together_as_json() {
    let output = render(&[
        "-f",
        "examples/dummy-model.yaml",
        "-f",
        "examples/torchserve-mig.yaml",
        "-o",
        "json",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let list: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON output");
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"].as_array().unwrap().len(), 5, "{list:#}");
}

/// Each ModelDeployment in the original project's README, as committed under
/// tests/fixtures/original-readme, renders unchanged.
#[test]
fn the_original_readme_examples_render_unchanged() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/original-readme");
    let fixtures: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(fixtures.len(), 3);
    for fixture in &fixtures {
        let output = render(&["-f", fixture.to_str().unwrap()]);
        assert!(
            output.status.success(),
            "{}: {}",
            fixture.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // Where the original README sits beside the checkout (as in CI), the fixtures must be
    // exactly its YAML blocks.
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/original-README.md");
    if let Ok(readme) = std::fs::read_to_string(readme) {
        let blocks: Vec<&str> = readme
            .split("```yaml\n")
            .skip(1)
            .filter_map(|b| b.split("```").next())
            .filter(|b| b.contains("kind: ModelDeployment"))
            .collect();
        assert_eq!(
            blocks.len(),
            fixtures.len(),
            "the README has {} ModelDeployment blocks",
            blocks.len()
        );
        for block in blocks {
            assert!(
                fixtures.iter().any(|f| std::fs::read_to_string(f).unwrap() == block),
                "no fixture is this README block verbatim:\n{block}"
            );
        }
    }
}

#[test]
fn an_invalid_file_exits_non_zero_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: mlops.sathvik.dev/v1\nkind: ModelDeployment\nmetadata: {name: bad}\nspec:\n  modelURI: https://h/m.pt\n  runtime: triton\n  gpu: {count: 0}\n",
    )
    .unwrap();
    let output = render(&["-f", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "should fail");
    assert!(
        stderr.contains("bad.yaml") && stderr.contains("spec.gpu.count"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "nothing is printed for a refused file");
}

#[test]
fn a_missing_file_is_named() {
    let output = render(&["-f", "examples/no-such-model.yaml"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("examples/no-such-model.yaml"));
}
