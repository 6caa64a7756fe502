//! `model-operator render -f FILE`: the objects the controller would apply, offline. A file is
//! refused with the same field errors the API server would give.

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, ValueEnum};
use serde::Deserialize;
use serde_json::Value;

use super::ImageArgs;
use crate::{
    reconcile::{build::build, validate::check},
    vocabulary::OperatorImages,
};

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// ModelDeployment YAML file (several documents allowed); `-` reads standard input.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Yaml)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub images: ImageArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Yaml,
    Json,
}

impl RenderArgs {
    pub fn run(self) -> ExitCode {
        let RenderArgs { files, output, images } = self;
        let images = images.into_images();
        match render_files(&files, &images) {
            Ok(objects) => {
                print!("{}", format_objects(&objects, output));
                ExitCode::SUCCESS
            }
            Err(problems) => {
                for problem in problems {
                    eprintln!("{problem}");
                }
                ExitCode::FAILURE
            }
        }
    }
}

/// Renders every document of every file, or returns every problem found, each naming its
/// file, document and field.
pub fn render_files(files: &[PathBuf], images: &OperatorImages) -> Result<Vec<Value>, Vec<String>> {
    let mut objects = Vec::new();
    let mut problems = Vec::new();
    for file in files {
        let shown = file.display().to_string();
        let text = if shown == "-" {
            std::io::read_to_string(std::io::stdin())
        } else {
            std::fs::read_to_string(file)
        };
        let text = match text {
            Ok(text) => text,
            Err(error) => {
                problems.push(format!("{shown}: {error}"));
                continue;
            }
        };
        match render_documents(&text, images) {
            Ok(rendered) => objects.extend(rendered),
            Err(errors) => problems.extend(errors.into_iter().map(|e| format!("{shown}: {e}"))),
        }
    }
    if problems.is_empty() {
        Ok(objects)
    } else {
        Err(problems)
    }
}

/// Renders each YAML document of `text`.
pub fn render_documents(text: &str, images: &OperatorImages) -> Result<Vec<Value>, Vec<String>> {
    let mut objects = Vec::new();
    let mut problems = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let number = index + 1;
        let value = match Value::deserialize(document) {
            Ok(Value::Null) => continue,
            Ok(value) => value,
            Err(error) => {
                problems.push(format!("document {number}: not YAML: {error}"));
                continue;
            }
        };
        let name = value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("<unnamed>")
            .to_owned();
        match check(&value, images) {
            Ok(validated) => objects.extend(build(&validated).objects()),
            Err(errors) => {
                let fields: Vec<String> = errors.0.iter().map(|e| format!("  {e}")).collect();
                problems.push(format!(
                    "document {number} (ModelDeployment {name}) is invalid:\n{}",
                    fields.join("\n")
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(objects)
    } else {
        Err(problems)
    }
}

pub fn format_objects(objects: &[Value], output: OutputFormat) -> String {
    match output {
        OutputFormat::Yaml => objects
            .iter()
            .map(|object| {
                format!(
                    "---\n{}",
                    serde_yaml_ng::to_string(object).expect("JSON values serialize to YAML")
                )
            })
            .collect(),
        OutputFormat::Json => {
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
            format!(
                "{}\n",
                serde_json::to_string_pretty(&list).expect("JSON values serialize")
            )
        }
    }
}
