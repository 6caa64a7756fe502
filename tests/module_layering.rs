//! The crate's layering, checked from its sources: no two modules import each other (at any
//! depth: two top-level modules, or two files of one folder), and each top-level module imports
//! only modules declared before it in `src/lib.rs`, whose order is the crate's layering.
//!
//! The sources are read as text: comments, strings and character literals are dropped, then
//! every path that starts with `crate::`, `super::` or `self::` (`use` trees included) is
//! resolved against the module tree the files form. An edge between two modules counts between
//! the two children of their closest common ancestor; a module using its own parent or child is
//! no edge.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// A module path from the crate root: `[]` is the root, `["reconcile", "build"]` is
/// `crate::reconcile::build`.
type ModulePath = Vec<String>;

/// One import of `to` by code in `from`, with where it was seen.
#[derive(Debug, Clone)]
struct Import {
    from: ModulePath,
    to: ModulePath,
    at: String,
}

/// The module each source file is, by its path under `src/`.
fn module_of(relative: &Path) -> ModulePath {
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let file = parts.pop().expect("a file name");
    match file.as_str() {
        "lib.rs" | "main.rs" | "mod.rs" => {}
        other => parts.push(other.trim_end_matches(".rs").to_owned()),
    }
    parts
}

fn read_sources(root: &Path) -> BTreeMap<ModulePath, (String, String)> {
    let mut sources = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(root).expect("under the root");
                // The binary's main.rs is its own crate root; it only calls the library.
                if relative == Path::new("main.rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                sources.insert(module_of(relative), (relative.display().to_string(), text));
            }
        }
    }
    sources
}

/// The text with comments, string and character literals blanked out (lines kept, so that
/// line numbers stay right).
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('#') || next == Some('"')) && !is_ident(chars.get(i.wrapping_sub(1))) {
            // A raw string: r"..." or r#"..."#, any number of hashes.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                match chars.get(j) {
                    None => break,
                    Some('"') if (1..=hashes).all(|h| chars.get(j + h) == Some(&'#')) => {
                        j += 1 + hashes;
                        break;
                    }
                    Some(&other) => {
                        out.push(blank(other));
                        j += 1;
                    }
                }
            }
            i = j;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                out.push(blank(*chars.get(i).unwrap_or(&' ')));
                i += 1;
            }
            i += 1;
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{..}') rather than a lifetime ('a).
            let end = if next == Some('\\') {
                (i + 2..chars.len().min(i + 12)).find(|&j| chars[j] == '\'')
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(end) => i = end + 1,
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_ident(c: Option<&char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Other,
}

fn tokens(code: &str) -> Vec<(Token, usize)> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push((Token::Ident(chars[start..i].iter().collect()), line));
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push((Token::PathSep, line));
            i += 2;
        } else {
            out.push((
                match c {
                    '{' => Token::Open,
                    '}' => Token::Close,
                    ',' => Token::Comma,
                    _ => Token::Other,
                },
                line,
            ));
            i += 1;
        }
    }
    out
}

/// Every path a `use` tree or path expression starting at `tokens[start]` names, as segments.
fn expand(tokens: &[(Token, usize)], start: usize) -> (Vec<Vec<String>>, usize) {
    let mut prefix = Vec::new();
    let mut i = start;
    loop {
        match tokens.get(i) {
            Some((Token::Ident(name), _)) => {
                prefix.push(name.clone());
                i += 1;
                if tokens.get(i).map(|t| &t.0) == Some(&Token::PathSep) {
                    i += 1;
                    if tokens.get(i).map(|t| &t.0) == Some(&Token::Open) {
                        let mut paths = Vec::new();
                        i += 1;
                        loop {
                            match tokens.get(i).map(|t| &t.0) {
                                Some(Token::Close) => {
                                    i += 1;
                                    break;
                                }
                                Some(Token::Comma) => i += 1,
                                Some(Token::Ident(_)) => {
                                    let (inner, next) = expand(tokens, i);
                                    paths.extend(inner.into_iter().map(|tail| [prefix.clone(), tail].concat()));
                                    i = next;
                                }
                                // `*` and `as` renames end a branch.
                                Some(_) => i += 1,
                                None => break,
                            }
                        }
                        return (paths, i);
                    }
                    continue;
                }
                return (vec![prefix], i);
            }
            _ => return (vec![prefix], i),
        }
    }
}

/// The imports of one file, `module` being the module the file is.
fn imports_of(module: &ModulePath, file: &str, text: &str, known: &BTreeSet<ModulePath>) -> Vec<Import> {
    let tokens = tokens(&code_only(text));
    let mut imports = Vec::new();
    // Inline `mod name { ... }` blocks: code inside belongs to a deeper module.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let (token, line) = &tokens[i];
        match token {
            Token::Open => depth += 1,
            Token::Close => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, at)| *at == depth) {
                    inline.pop();
                }
            }
            Token::Ident(word) if word == "mod" => {
                if let (Some((Token::Ident(name), _)), Some((Token::Open, _))) = (tokens.get(i + 1), tokens.get(i + 2))
                {
                    inline.push((name.clone(), depth));
                }
            }
            Token::Ident(word) if ["crate", "super", "self"].contains(&word.as_str()) => {
                let preceded_by_path = i > 0 && tokens[i - 1].0 == Token::PathSep;
                if !preceded_by_path && tokens.get(i + 1).map(|t| &t.0) == Some(&Token::PathSep) {
                    let here: ModulePath = module
                        .iter()
                        .cloned()
                        .chain(inline.iter().map(|(n, _)| n.clone()))
                        .collect();
                    let (paths, next) = expand(&tokens, i);
                    for path in paths {
                        if let Some(target) = resolve(&here, &path, known) {
                            imports.push(Import {
                                from: module.clone(),
                                to: target,
                                at: format!("{file}:{line}"),
                            });
                        }
                    }
                    i = next;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    imports
}

/// The deepest known module a path names, from the module `here` it is written in.
fn resolve(here: &ModulePath, path: &[String], known: &BTreeSet<ModulePath>) -> Option<ModulePath> {
    let mut segments = path.iter().peekable();
    let mut base: ModulePath = match segments.next()?.as_str() {
        "crate" => Vec::new(),
        "self" => here.clone(),
        "super" => here[..here.len().checked_sub(1)?].to_vec(),
        _ => return None,
    };
    while segments.peek().is_some_and(|s| *s == "super") {
        segments.next();
        base.pop();
    }
    for segment in segments {
        let mut deeper = base.clone();
        deeper.push(segment.clone());
        if known.contains(&deeper) {
            base = deeper;
        } else {
            break;
        }
    }
    Some(base)
}

/// The edge an import makes between siblings: the children of the closest common ancestor.
fn sibling_edge(import: &Import) -> Option<(ModulePath, String, String)> {
    let common = import.from.iter().zip(&import.to).take_while(|(a, b)| a == b).count();
    let from = import.from.get(common)?;
    let to = import.to.get(common)?;
    Some((import.from[..common].to_vec(), from.clone(), to.clone()))
}

/// Every cycle among siblings, each as the modules around it with the imports that close it.
fn cycles(imports: &[Import]) -> Vec<String> {
    let mut graphs: BTreeMap<ModulePath, BTreeMap<String, BTreeMap<String, String>>> = BTreeMap::new();
    for import in imports {
        if let Some((parent, from, to)) = sibling_edge(import) {
            graphs
                .entry(parent)
                .or_default()
                .entry(from)
                .or_default()
                .entry(to)
                .or_insert_with(|| import.at.clone());
        }
    }
    let mut found = Vec::new();
    for (parent, graph) in &graphs {
        let mut reported = BTreeSet::new();
        for start in graph.keys() {
            // Breadth-first search back to `start`: the shortest cycle through it.
            let mut previous: BTreeMap<String, String> = BTreeMap::new();
            let mut queue = std::collections::VecDeque::from([start.clone()]);
            let mut closed = None;
            while let Some(node) = queue.pop_front() {
                for next in graph.get(&node).into_iter().flat_map(|edges| edges.keys()) {
                    if next == start {
                        closed = Some(node.clone());
                        break;
                    }
                    if !previous.contains_key(next) {
                        previous.insert(next.clone(), node.clone());
                        queue.push_back(next.clone());
                    }
                }
                if closed.is_some() {
                    break;
                }
            }
            let Some(last) = closed else { continue };
            let mut ring = vec![last.clone()];
            while ring.last() != Some(start) {
                let step = previous[ring.last().expect("non-empty")].clone();
                ring.push(step);
            }
            ring.reverse();
            let members: BTreeSet<String> = ring.iter().cloned().collect();
            if !reported.insert(members) {
                continue;
            }
            let scope = if parent.is_empty() {
                "crate".to_owned()
            } else {
                format!("crate::{}", parent.join("::"))
            };
            let steps: Vec<String> = ring
                .iter()
                .zip(ring.iter().cycle().skip(1))
                .map(|(a, b)| format!("{a} -> {b} ({})", graph[a][b]))
                .collect();
            found.push(format!("in {scope}: {}", steps.join(", ")));
        }
    }
    found
}

/// Top-level imports of a module declared later in lib.rs (or not at all).
fn order_violations(imports: &[Import], order: &[String]) -> Vec<String> {
    let rank = |name: &str| order.iter().position(|m| m == name);
    let mut found = BTreeSet::new();
    for import in imports {
        if let Some((parent, from, to)) = sibling_edge(import)
            && parent.is_empty()
            && rank(&to) >= rank(&from)
        {
            found.insert(format!(
                "{from} imports {to} ({}), which src/lib.rs declares after it",
                import.at
            ));
        }
    }
    found.into_iter().collect()
}

/// The `pub mod` names of a crate root, in order.
fn declared_modules(lib_rs: &str) -> Vec<String> {
    code_only(lib_rs)
        .lines()
        .filter_map(|line| {
            let rest = line
                .trim()
                .strip_prefix("pub mod ")
                .or(line.trim().strip_prefix("mod "))?;
            Some(rest.trim_end_matches(';').trim().to_owned())
        })
        .collect()
}

fn crate_imports(root: &Path) -> (Vec<Import>, Vec<String>) {
    let sources = read_sources(root);
    let known: BTreeSet<ModulePath> = sources.keys().cloned().collect();
    let imports = sources
        .iter()
        .flat_map(|(module, (file, text))| imports_of(module, file, text, &known))
        .collect();
    let order = declared_modules(&sources[&Vec::new()].1);
    (imports, order)
}

fn check_crate(root: PathBuf) {
    let (imports, order) = crate_imports(&root);
    assert!(
        imports.len() > 20,
        "only {} imports found under {}: is the scanner broken?",
        imports.len(),
        root.display()
    );
    let cycles = cycles(&imports);
    assert!(
        cycles.is_empty(),
        "modules under {} import each other:\n{}",
        root.display(),
        cycles.join("\n")
    );
    let violations = order_violations(&imports, &order);
    assert!(
        violations.is_empty(),
        "the layering of {} is broken (modules may use only those declared before them in lib.rs, {order:?}):\n{}",
        root.display(),
        violations.join("\n")
    );
}

#[test]
fn the_operator_has_no_import_cycles_and_keeps_its_layering() {
    check_crate(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src"));
}

#[test]
fn the_node_agent_has_no_import_cycles_and_keeps_its_layering() {
    check_crate(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("node-agent/src"));
}

#[test]
fn the_vocabulary_imports_nothing_else_of_the_crate() {
    let (imports, _) = crate_imports(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src"));
    let outside: Vec<String> = imports
        .iter()
        .filter(|i| i.from.first().map(String::as_str) == Some("vocabulary"))
        .filter(|i| i.to.first().map(String::as_str) != Some("vocabulary"))
        .map(|i| format!("{} imports crate::{} ({})", i.from.join("::"), i.to.join("::"), i.at))
        .collect();
    assert!(outside.is_empty(), "{}", outside.join("\n"));
}

/// A newcomer finds every top-level module in docs/architecture.md.
#[test]
fn the_architecture_doc_names_every_top_level_module() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).expect("docs/architecture.md");
    let lib_rs = std::fs::read_to_string(root.join("src/lib.rs")).expect("src/lib.rs");
    let missing: Vec<String> = declared_modules(&lib_rs)
        .into_iter()
        .filter(|module| !doc.contains(&format!("`src/{module}/`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/architecture.md does not name these modules as `src/NAME/`: {missing:?}"
    );
}

/// The checker itself, on a small made-up crate: it must see cycles through `use` trees,
/// `super::` and plain paths, at the top and inside a folder, and ignore comments and strings.
#[test]
fn the_checker_finds_cycles_and_order_violations() {
    let files: [(&[&str], &str); 6] = [
        (&[], "pub mod words;\npub mod a;\npub mod b;\n"),
        (
            &["words"],
            "// use crate::a; only a comment\nconst S: &str = \"crate::b::x\";\n",
        ),
        (&["a"], "mod x;\nmod y;\nuse crate::{words, b::{self, Thing}};\n"),
        (&["a", "x"], "use super::y::Item;\n"),
        (&["a", "y"], "fn f() { super::x::g(); let c = '{'; }\n"),
        (&["b"], "pub struct Thing;\nfn f() { crate::a::go(); }\n"),
    ];
    let known: BTreeSet<ModulePath> = files
        .iter()
        .map(|(m, _)| m.iter().map(|s| s.to_string()).collect())
        .collect();
    let imports: Vec<Import> = files
        .iter()
        .flat_map(|(module, text)| {
            let module: ModulePath = module.iter().map(|s| s.to_string()).collect();
            imports_of(&module, &module.join("/"), text, &known)
        })
        .collect();
    let found = cycles(&imports);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found.iter().any(|c| c.starts_with("in crate: a -> b")), "{found:#?}");
    assert!(found.iter().any(|c| c.starts_with("in crate::a: x -> y")), "{found:#?}");
    assert!(
        !imports.iter().any(|i| i.from == ["words"]),
        "comments and strings are not code: {imports:#?}"
    );
    let order = declared_modules(files[0].1);
    assert_eq!(order, ["words", "a", "b"]);
    let violations = order_violations(&imports, &order);
    assert_eq!(violations.len(), 1, "{violations:#?}");
    assert!(violations[0].starts_with("a imports b"), "{violations:#?}");
}
