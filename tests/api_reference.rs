//! Documentation that is generated from, or checked against, what it describes, so it cannot
//! drift:
//!
//! - the field reference in `docs/api-reference.md` is generated from the committed CRD (which
//!   `crd_drift.rs` keeps equal to the Rust API types): every field of spec and status with its
//!   type, default, validation and description, and every CEL rule with its message.
//!   `UPDATE_DOCS=1 cargo test --test api_reference` rewrites it;
//! - `docs/troubleshooting.md` has a row for every condition reason of `src/api/conditions.rs`,
//!   and names no reason the operator does not have;
//! - the README's worked examples are the files in `examples/`, one for every runtime;
//! - relative links in the README and `docs/` lead to files and headings that exist.
//!
//! Everything is read from files, never from Rust items, so that moves inside `src/` do not touch
//! this test.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    fs,
    path::{Component, Path, PathBuf},
};

use serde_json::Value;

const CRD_FILE: &str = "crds/modeldeployments.mlops.sathvik.dev.yaml";
const REFERENCE_DOC: &str = "docs/api-reference.md";
const TROUBLESHOOTING_DOC: &str = "docs/troubleshooting.md";
const CONDITIONS_FILE: &str = "src/api/conditions.rs";
const UPDATE_COMMAND: &str = "UPDATE_DOCS=1 cargo test --test api_reference";

const BEGIN_MARKER: &str = "<!-- BEGIN GENERATED from crds/modeldeployments.mlops.sathvik.dev.yaml by \
                            tests/api_reference.rs: edit the API types' doc comments, not this -->";
const END_MARKER: &str = "<!-- END GENERATED -->";

/// Fields whose type is a Kubernetes API type: named, with their own fields left to
/// `kubectl explain` (they are Kubernetes' documentation, not ours).
const KUBERNETES_TYPES: &[(&str, &str)] = &[
    ("spec.affinity", "Affinity"),
    ("spec.env", "[]EnvVar"),
    ("spec.resources", "ResourceRequirements"),
    ("spec.tolerations", "[]Toleration"),
    ("status.conditions", "[]Condition"),
];

/// An object with more nested properties than this is taken for an embedded Kubernetes type
/// missing from `KUBERNETES_TYPES` (`Affinity` has over 100; ours, `spec` included, have under
/// 30). A small one, such as `EnvVar`, gets past this and shows in review as a section of
/// Kubernetes' own descriptions.
const MAX_OWN_PROPERTIES: usize = 60;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    fs::read_to_string(repo().join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

fn crd() -> Value {
    serde_yaml_ng::from_str(&read(CRD_FILE)).unwrap_or_else(|e| panic!("{CRD_FILE} is not YAML: {e}"))
}

fn served_version(crd: &Value) -> &Value {
    let versions = crd["spec"]["versions"].as_array().expect("the CRD has versions");
    assert_eq!(
        versions.len(),
        1,
        "the reference describes one API version; {CRD_FILE} has {}: teach tests/api_reference.rs about the others",
        versions.len()
    );
    &versions[0]
}

// ---------------------------------------------------------------------------------------------
// The field reference

#[test]
fn the_api_reference_is_generated_from_the_crd() {
    let generated = reference_from_crd(&crd());
    let committed = read(REFERENCE_DOC);
    let (before, current, after) = split_generated(&committed);
    if current == generated {
        return;
    }
    if std::env::var_os("UPDATE_DOCS").is_some_and(|v| v == "1") {
        fs::write(repo().join(REFERENCE_DOC), format!("{before}{generated}{after}"))
            .unwrap_or_else(|e| panic!("{REFERENCE_DOC}: {e}"));
        eprintln!("rewrote the generated section of {REFERENCE_DOC}");
        return;
    }
    let line_before = before.lines().count();
    let (number, committed_line, generated_line) = current
        .lines()
        .map(Some)
        .chain(std::iter::repeat(None))
        .zip(generated.lines().map(Some).chain(std::iter::repeat(None)))
        .enumerate()
        .find(|(_, (a, b))| a != b)
        .map(|(i, (a, b))| (line_before + i + 1, a.unwrap_or("(end)"), b.unwrap_or("(end)")))
        .expect("the sections differ somewhere");
    panic!(
        "{REFERENCE_DOC} is stale: its generated field reference differs from what {CRD_FILE} gives.\n\
         First difference, line {number}:\n  committed: {committed_line}\n  generated: {generated_line}\n\
         Run `{UPDATE_COMMAND}` and commit the result."
    );
}

/// The document around the generated section, and the section itself, markers included.
fn split_generated(doc: &str) -> (&str, &str, &str) {
    let missing = |marker: &str| {
        panic!(
            "{REFERENCE_DOC} has no line `{marker}`: the generated reference goes between {BEGIN_MARKER} and {END_MARKER}"
        )
    };
    let start = doc.find(BEGIN_MARKER).unwrap_or_else(|| missing(BEGIN_MARKER));
    let end = doc[start..].find(END_MARKER).unwrap_or_else(|| missing(END_MARKER)) + start + END_MARKER.len();
    let end = if doc[end..].starts_with('\n') { end + 1 } else { end };
    (&doc[..start], &doc[start..end], &doc[end..])
}

fn reference_from_crd(crd: &Value) -> String {
    let spec = &crd["spec"];
    let version = served_version(crd);
    let names = &spec["names"];
    let schema = &version["schema"]["openAPIV3Schema"];
    for (path, _) in KUBERNETES_TYPES {
        assert!(
            node_at(schema, path).is_some(),
            "KUBERNETES_TYPES in tests/api_reference.rs names `{path}`, which {CRD_FILE} does not have"
        );
    }

    let mut out = format!("{BEGIN_MARKER}\n\n");
    let list = |key: &str| {
        names[key]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|v| code(v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    writeln!(
        out,
        "API version `{}/{}`, kind `{}`, {}; plural {}, singular {}, short names {}, categories {}. \
         Subresources: {}.\n",
        str_at(spec, "group"),
        str_at(version, "name"),
        str_at(names, "kind"),
        str_at(spec, "scope").to_lowercase(),
        code(str_at(names, "plural")),
        code(str_at(names, "singular")),
        list("shortNames"),
        list("categories"),
        version["subresources"]
            .as_object()
            .map(|s| s.keys().map(|k| code(k)).collect::<Vec<_>>().join(", "))
            .unwrap_or_else(|| "none".to_owned()),
    )
    .unwrap();

    if let Some(columns) = version["additionalPrinterColumns"].as_array() {
        out.push_str("Columns of `kubectl get`:\n\n| column | type | from | description |\n|---|---|---|---|\n");
        for column in columns {
            writeln!(
                out,
                "| {} | {} | {} | {} |",
                str_at(column, "name"),
                str_at(column, "type"),
                cell(&code(str_at(column, "jsonPath"))),
                cell(&prose(column["description"].as_str().unwrap_or_default())),
            )
            .unwrap();
        }
        out.push('\n');
    }

    let mut sections = Vec::new();
    collect_sections(str_at(names, "kind"), "", schema, &mut sections);
    let rules: Vec<Rule> = sections
        .iter()
        .flat_map(|section| {
            // An object with a section of its own brings its rules there.
            let fields = ordered_fields(section.node).into_iter().filter(|(name, child, _)| {
                own_object(&join(&section.path, name), child).is_none_or(|(_, object)| !std::ptr::eq(object, *child))
            });
            own_rules(&section.path, section.node)
                .into_iter()
                .chain(fields.flat_map(|(name, child, _)| {
                    let path = join(&section.path, &name);
                    // A Kubernetes type's rules are the operator's, wherever inside it they sit.
                    if kubernetes_type(&path).is_some() {
                        nested_rules(&path, child)
                    } else {
                        own_rules(&path, child)
                    }
                }))
        })
        .collect();
    let mut placed = 0;
    for section in &sections {
        let here: Vec<&Rule> = rules.iter().filter(|r| home(&r.target) == section.path).collect();
        placed += here.len();
        write_section(&mut out, section, &here);
    }
    assert_eq!(
        placed,
        rules.len(),
        "some CEL rules of {CRD_FILE} name a field in no section of the reference: {:?}",
        rules.iter().map(|r| &r.target).collect::<Vec<_>>()
    );
    out.push_str(END_MARKER);
    out.push('\n');
    out
}

/// One object of ours: the root, `spec`, `status`, or an object or list item below them.
struct Section<'a> {
    title: String,
    path: String,
    node: &'a Value,
}

/// The sections of an object and of the objects below it, depth first in field order.
fn collect_sections<'a>(title: &str, path: &str, node: &'a Value, sections: &mut Vec<Section<'a>>) {
    sections.push(Section {
        title: title.to_owned(),
        path: path.to_owned(),
        node,
    });
    for (name, child, _) in ordered_fields(node) {
        if let Some((section_path, object)) = own_object(&join(path, &name), child) {
            collect_sections(&section_path, &section_path, object, sections);
        }
    }
}

fn write_section(out: &mut String, section: &Section, rules: &[&Rule]) {
    writeln!(out, "### {}\n", code(&section.title)).unwrap();
    // The root's description is the derive macro's boilerplate, not ours.
    if !section.path.is_empty() {
        let description = prose(section.node["description"].as_str().unwrap_or_default());
        if !description.is_empty() {
            writeln!(out, "{description}\n").unwrap();
        }
    }
    out.push_str("| field | type | default | validation | description |\n|---|---|---|---|---|\n");
    for (name, child, required) in ordered_fields(section.node) {
        let path = join(&section.path, &name);
        let mut checks = validation(child, required);
        if rules.iter().any(|r| within(&r.target, &path)) {
            checks.push("CEL rules below".to_owned());
        }
        let default = child.get("default").map(|d| match d {
            Value::String(s) => code(s),
            other => code(&other.to_string()),
        });
        writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            code(&name),
            cell(&type_of(&path, child)),
            cell(&default.unwrap_or_default()),
            cell(&checks.join("; ")),
            cell(&prose(child["description"].as_str().unwrap_or_default())),
        )
        .unwrap();
    }
    out.push('\n');
    if !rules.is_empty() {
        out.push_str("Rules the API server checks (CEL), each with the field it names and its message:\n\n");
        for rule in rules {
            writeln!(out, "- {}: {} {}", code(&rule.target), rule.message, code(&rule.rule)).unwrap();
        }
        out.push('\n');
    }
}

/// The section a rule is listed in: its field's parent, or for a field inside a Kubernetes
/// type, the section holding that type's field.
fn home(target: &str) -> &str {
    KUBERNETES_TYPES
        .iter()
        .find(|(path, _)| within(target, path))
        .map_or_else(|| parent(target), |(path, _)| parent(path))
}

/// `path` is `field` or below it (`field.x`, `field[].x`).
fn within(path: &str, field: &str) -> bool {
    path == field
        || path
            .strip_prefix(field)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

/// Every CEL rule at or below a node, with the paths of the fields they name (`[]` for a
/// list's items, `*` for a map's values).
fn nested_rules(path: &str, node: &Value) -> Vec<Rule> {
    let mut rules = own_rules(path, node);
    if let Some(properties) = node["properties"].as_object() {
        for (name, child) in properties {
            rules.extend(nested_rules(&join(path, name), child));
        }
    }
    if let Some(items) = node.get("items") {
        rules.extend(nested_rules(&format!("{path}[]"), items));
    }
    if let Some(values) = node.get("additionalProperties").filter(|a| a.is_object()) {
        rules.extend(nested_rules(&format!("{path}.*"), values));
    }
    rules
}

fn parent(path: &str) -> &str {
    path.rsplit_once('.').map_or("", |(parent, _)| parent)
}

struct Rule {
    target: String,
    message: String,
    rule: String,
}

/// The CEL rules on a node, each with the field it names: the node itself, or its `fieldPath`.
fn own_rules(path: &str, node: &Value) -> Vec<Rule> {
    node["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|rule| {
            let target = match rule["fieldPath"].as_str() {
                Some(field) => join(path, field.trim_start_matches('.')),
                None if path.is_empty() => "metadata".to_owned(),
                None => path.to_owned(),
            };
            let message = rule["message"]
                .as_str()
                .map(prose)
                .unwrap_or_else(|| "(no message)".to_owned());
            Rule {
                target,
                message: if message.ends_with('.') {
                    message
                } else {
                    format!("{message}.")
                },
                rule: str_at(rule, "rule").to_owned(),
            }
        })
        .collect()
}

/// Properties of an object, required ones first (in the order the CRD requires them), then the
/// rest by name.
fn ordered_fields(node: &Value) -> Vec<(String, &Value, bool)> {
    let required: Vec<&str> = node["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut fields: Vec<(String, &Value, bool)> = node["properties"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, child)| (name.clone(), child, required.contains(&name.as_str())))
        .collect();
    fields.sort_by_key(|(name, _, is_required)| {
        (
            !is_required,
            required.iter().position(|r| r == name).unwrap_or(usize::MAX),
            name.clone(),
        )
    });
    fields
}

/// The object (or list item object) below a field that gets a section of its own: ours, not a
/// Kubernetes type.
fn own_object<'a>(path: &str, node: &'a Value) -> Option<(String, &'a Value)> {
    if kubernetes_type(path).is_some() {
        return None;
    }
    let (section_path, object) = match node["type"].as_str() {
        Some("object") if node.get("properties").is_some() => (path.to_owned(), node),
        Some("array") if node["items"].get("properties").is_some() => (format!("{path}[]"), &node["items"]),
        _ => return None,
    };
    let size = count_properties(path, object);
    assert!(
        size <= MAX_OWN_PROPERTIES,
        "`{path}` in {CRD_FILE} has {size} nested properties: if it is a Kubernetes type, add it to \
         KUBERNETES_TYPES in tests/api_reference.rs so that the reference names it instead of listing its fields"
    );
    Some((section_path, object))
}

/// Properties below an object, Kubernetes types counted as one.
fn count_properties(path: &str, node: &Value) -> usize {
    if kubernetes_type(path).is_some() {
        return 0;
    }
    let own = node["properties"].as_object().map_or(0, |properties| {
        properties.len()
            + properties
                .iter()
                .map(|(name, child)| count_properties(&join(path, name), child))
                .sum::<usize>()
    });
    own + node.get("items").map_or(0, |items| count_properties(path, items))
        + node
            .get("additionalProperties")
            .filter(|a| a.is_object())
            .map_or(0, |a| count_properties(path, a))
}

fn kubernetes_type(path: &str) -> Option<&'static str> {
    KUBERNETES_TYPES.iter().find(|(p, _)| *p == path).map(|(_, t)| *t)
}

fn type_of(path: &str, node: &Value) -> String {
    if let Some(name) = kubernetes_type(path) {
        return format!("{} (Kubernetes)", code(name));
    }
    if node.get("x-kubernetes-int-or-string").is_some() {
        return "int-or-string".to_owned();
    }
    let scalar = |node: &Value| {
        let kind = node["type"].as_str().unwrap_or("any");
        match node["format"].as_str() {
            Some(format) => format!("{kind} ({format})"),
            None => kind.to_owned(),
        }
    };
    match node["type"].as_str() {
        Some("object") if node.get("properties").is_some() => format!("object, see {}", section_link(path)),
        Some("object") if node["additionalProperties"].is_object() => {
            format!("map of {}", scalar(&node["additionalProperties"]))
        }
        Some("array") if node["items"].get("properties").is_some() => {
            format!("list of objects, see {}", section_link(&format!("{path}[]")))
        }
        Some("array") => format!("list of {}", scalar(&node["items"])),
        _ => scalar(node),
    }
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn section_link(path: &str) -> String {
    format!("[{}](#{})", code(path), slug(&code(path)))
}

/// What the schema itself enforces on a field, in words.
fn validation(node: &Value, required: bool) -> Vec<String> {
    let mut checks = Vec::new();
    if required {
        checks.push("required".to_owned());
    }
    if let Some(values) = node["enum"].as_array() {
        let values: Vec<String> = values.iter().map(|v| code(v.as_str().unwrap_or_default())).collect();
        checks.push(format!("one of {}", values.join(", ")));
    }
    if let Some(range) = range(node, "minimum", "maximum", "") {
        checks.push(range);
    }
    if let Some(range) = range(node, "minLength", "maxLength", " characters") {
        checks.push(range);
    }
    if let Some(pattern) = node["pattern"].as_str() {
        checks.push(format!("matches {}", code(pattern)));
    }
    if let Some(range) = range(node, "minItems", "maxItems", " items") {
        checks.push(range);
    }
    if node["type"] == "array" && node["items"].get("properties").is_none() {
        let items = validation(&node["items"], false);
        if !items.is_empty() {
            checks.push(format!("each item: {}", items.join(", ")));
        }
    }
    if node["x-kubernetes-list-type"] == "map" {
        let keys: Vec<String> = node["x-kubernetes-list-map-keys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(code)
            .collect();
        checks.push(format!("one item per {}", keys.join(", ")));
    }
    checks
}

fn range(node: &Value, min: &str, max: &str, unit: &str) -> Option<String> {
    let number = |key: &str| {
        node[key].as_f64().map(|n| {
            if n.fract() == 0.0 {
                format!("{}", n as i64)
            } else {
                n.to_string()
            }
        })
    };
    match (number(min), number(max)) {
        (Some(min), Some(max)) => Some(format!("{min} to {max}{unit}")),
        (Some(min), None) => Some(format!("at least {min}{unit}")),
        (None, Some(max)) => Some(format!("at most {max}{unit}")),
        (None, None) => None,
    }
}

fn node_at<'a>(schema: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(schema, |node, name| node["properties"].get(name))
}

fn str_at<'a>(node: &'a Value, key: &str) -> &'a str {
    node[key]
        .as_str()
        .unwrap_or_else(|| panic!("{CRD_FILE}: `{key}` missing in {node}"))
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// A description on one line (doc comments wrap).
fn prose(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A code span that survives backticks inside it.
fn code(text: &str) -> String {
    let mut fence = "`".to_owned();
    while text.contains(&fence) {
        fence.push('`');
    }
    let pad = if text.starts_with('`') || text.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{text}{pad}{fence}")
}

/// Text for a table cell: one line, and `|` does not end the cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

// ---------------------------------------------------------------------------------------------
// Troubleshooting names every condition reason

/// `pub const NAME: &str = "Value";` lines of the conditions file: condition types outside
/// `pub mod reasons`, reasons inside it.
fn condition_vocabulary() -> (BTreeSet<String>, BTreeSet<String>) {
    let source = read(CONDITIONS_FILE);
    let (mut types, mut reasons) = (BTreeSet::new(), BTreeSet::new());
    let mut in_reasons = false;
    for line in source.lines() {
        let line = line.trim();
        if line.starts_with("pub mod reasons") {
            in_reasons = true;
        } else if in_reasons && line == "}" {
            in_reasons = false;
        } else if let Some(rest) = line.strip_prefix("pub const ")
            && let Some((_, value)) = rest.split_once(": &str = \"")
            && let Some(value) = value.strip_suffix("\";")
        {
            (if in_reasons { &mut reasons } else { &mut types }).insert(value.to_owned());
        }
    }
    assert!(
        types.len() >= 3 && reasons.len() >= 10,
        "read only {} condition types and {} reasons from {CONDITIONS_FILE}: has the format of its \
         `pub const NAME: &str = \"Value\";` lines changed? Update condition_vocabulary() in tests/api_reference.rs",
        types.len(),
        reasons.len()
    );
    (types, reasons)
}

/// Rows of the troubleshooting doc's conditions table: (type, reason), as written.
fn troubleshooting_rows(types: &BTreeSet<String>) -> Vec<(String, String)> {
    let unquote = |cell: &str| cell.trim().trim_matches('`').to_owned();
    read(TROUBLESHOOTING_DOC)
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim().strip_prefix('|')?.split('|').collect();
            let type_ = unquote(cells.first()?);
            (cells.len() >= 4 && types.contains(&type_)).then(|| (type_, unquote(cells[2])))
        })
        .collect()
}

#[test]
fn troubleshooting_explains_every_condition_reason() {
    let (types, reasons) = condition_vocabulary();
    let rows = troubleshooting_rows(&types);
    let documented: BTreeSet<&str> = rows.iter().map(|(_, reason)| reason.as_str()).collect();
    let missing: Vec<&str> = reasons
        .iter()
        .map(String::as_str)
        .filter(|r| !documented.contains(r))
        .collect();
    assert!(
        missing.is_empty(),
        "{TROUBLESHOOTING_DOC} has no row (| `Condition` | status | `Reason` | meaning | what to do |) for the \
         reason(s) {missing:?} of {CONDITIONS_FILE}: say what each means and what to do"
    );
    let unknown: Vec<String> = rows
        .iter()
        .filter(|(_, reason)| !reasons.contains(reason))
        .map(|(type_, reason)| format!("{type_}/{reason}"))
        .collect();
    assert!(
        unknown.is_empty(),
        "{TROUBLESHOOTING_DOC} explains reason(s) {unknown:?} that {CONDITIONS_FILE} does not define"
    );
    let without_row: Vec<&String> = types
        .iter()
        .filter(|t| !rows.iter().any(|(row, _)| row == *t))
        .collect();
    assert!(
        without_row.is_empty(),
        "{TROUBLESHOOTING_DOC} has no row for the condition type(s) {without_row:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The README's worked examples are the example files

/// Fenced blocks of a markdown file: (info string, first line number, lines).
fn fenced_blocks(text: &str) -> Vec<(String, usize, Vec<&str>)> {
    let mut blocks = Vec::new();
    // (fence, info string, line number, lines) of the block being read.
    let mut open: Option<(String, String, usize, Vec<&str>)> = None;
    for (number, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let fence: String = trimmed.chars().take_while(|&c| c == '`' || c == '~').collect();
        let closes = open.as_ref().is_some_and(|(opener, ..)| {
            fence.len() >= opener.len() && fence.starts_with(&opener[..1]) && trimmed.trim_end() == fence
        });
        if closes {
            let (_, info, start, lines) = open.take().expect("a block is open");
            blocks.push((info, start, lines));
        } else if let Some((.., lines)) = &mut open {
            lines.push(line);
        } else if fence.len() >= 3 && (fence.chars().all(|c| c == '`') || fence.chars().all(|c| c == '~')) {
            open = Some((
                fence.clone(),
                trimmed[fence.len()..].trim().to_owned(),
                number + 1,
                Vec::new(),
            ));
        }
    }
    if let Some((_, _, start, _)) = open {
        blocks.push(("UNCLOSED".to_owned(), start, Vec::new()));
    }
    blocks
}

#[test]
fn the_readme_examples_are_the_example_files_one_per_runtime() {
    let readme = read("README.md");
    let mut runtimes = BTreeSet::new();
    for (info, start, lines) in fenced_blocks(&readme) {
        let Some(file) = lines
            .first()
            .and_then(|l| l.strip_prefix("# "))
            .filter(|f| f.starts_with("examples/"))
        else {
            continue;
        };
        assert_eq!(
            info, "yaml",
            "README.md line {start}: the block showing {file} should be ```yaml"
        );
        let example = read(file);
        // The file's leading comment is said in the README's own words.
        let expected: Vec<&str> = example.lines().skip_while(|l| l.starts_with('#')).collect();
        assert!(
            lines[1..] == expected[..],
            "README.md line {start}: the block headed `# {file}` is not that file (after its leading comment); \
             copy the file into the README again"
        );
        if let Some(runtime) = expected.iter().find_map(|l| l.trim().strip_prefix("runtime:")) {
            runtimes.insert(runtime.trim().trim_matches('"').to_owned());
        }
    }
    let crd = crd();
    let all: BTreeSet<String> = node_at(&served_version(&crd)["schema"]["openAPIV3Schema"], "spec.runtime")
        .and_then(|runtime| runtime["enum"].as_array())
        .expect("spec.runtime is an enum")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let missing: Vec<&String> = all.difference(&runtimes).collect();
    assert!(
        missing.is_empty(),
        "README.md has no worked example (a ```yaml block whose first line is `# examples/FILE.yaml`) for \
         the runtime(s) {missing:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Links

fn markdown_files() -> Vec<String> {
    let mut files = vec!["README.md".to_owned()];
    let mut docs: Vec<String> = fs::read_dir(repo().join("docs"))
        .expect("docs/ exists")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// Lines outside code fences, with their numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let fenced: BTreeSet<usize> = fenced_blocks(text)
        .iter()
        .flat_map(|(_, start, lines)| *start..=start + lines.len() + 1)
        .collect();
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(n, _)| !fenced.contains(n))
        .collect()
}

/// A line without its inline code spans.
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        out.push_str(&rest[..start]);
        let ticks = rest[start..].chars().take_while(|&c| c == '`').count();
        let after = &rest[start + ticks..];
        let fence = "`".repeat(ticks);
        match after.find(&fence) {
            Some(end) => rest = &after[end + ticks..],
            None => {
                out.push_str(&rest[start..]);
                return out;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Link targets on a line: inline links and images, and reference definitions.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut targets = Vec::new();
    if let Some(definition) = line.trim_start().strip_prefix('[')
        && let Some((_, target)) = definition.split_once("]:")
    {
        targets.extend(target.split_whitespace().next().map(str::to_owned));
    }
    let mut rest = line.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let end = after.find(')').unwrap_or(after.len());
        targets.extend(after[..end].split_whitespace().next().map(str::to_owned));
        rest = &after[end..];
    }
    targets
}

/// Anchors of a markdown file's headings, numbered as GitHub numbers repeated ones.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[hashes..]);
        let mut anchor = base.clone();
        let mut n = 0;
        while seen.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        seen.insert(anchor);
    }
    seen
}

/// `a/b/../c` to `a/c`, without touching the file system.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn relative_links_in_the_readme_and_docs_resolve() {
    let root = repo();
    let mut broken = Vec::new();
    for file in markdown_files() {
        let text = read(&file);
        if let Some((_, start, _)) = fenced_blocks(&text).iter().find(|(info, _, _)| info == "UNCLOSED") {
            broken.push(format!("{file}:{start}: a code fence opened here is never closed"));
        }
        let dir = Path::new(&file).parent().unwrap_or(Path::new(""));
        for (number, line) in prose_lines(&text) {
            for target in link_targets(line) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
                let linked = if path.is_empty() {
                    PathBuf::from(&file)
                } else {
                    normalise(&dir.join(path))
                };
                if linked.starts_with("..") || linked.is_absolute() {
                    broken.push(format!("{file}:{number}: {target} leaves the repository"));
                    continue;
                }
                if !root.join(&linked).exists() {
                    broken.push(format!(
                        "{file}:{number}: {target}: {} does not exist",
                        linked.display()
                    ));
                    continue;
                }
                if !anchor.is_empty()
                    && linked.extension().is_some_and(|e| e == "md")
                    && !anchors(&read(&linked.to_string_lossy())).contains(anchor)
                {
                    broken.push(format!(
                        "{file}:{number}: {target}: {} has no heading #{anchor}",
                        linked.display()
                    ));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n  {}", broken.join("\n  "));
}

#[test]
fn github_anchors_are_computed_as_github_does() {
    assert_eq!(
        slug("`model-operator run`: the operator"),
        "model-operator-run-the-operator"
    );
    assert_eq!(slug("fastapi-pytorch (`inference/`)"), "fastapi-pytorch-inference");
    assert_eq!(slug("`status.model.inputs[]`"), "statusmodelinputs");
    assert_eq!(
        anchors("# A\n## A\n```\n# A\n```\n"),
        BTreeSet::from(["a".to_owned(), "a-1".to_owned()])
    );
    assert_eq!(link_targets("see [x](a.md#b) and `[y](c.md)`"), ["a.md#b"]);
}
