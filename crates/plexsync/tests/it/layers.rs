//! The architecture's rules, checked rather than remembered: every path a
//! source file of `src/` names (`use crate::…`, `use super::…`, inline
//! `crate::a::b`, and `plexsync::…` in `main.rs`) is resolved to the file
//! it points into, and
//!
//! - no import goes up a layer: faces (`main.rs`, `faces/`) → pipeline →
//!   clients and store (neither uses the other) → settings, errors and the
//!   other root files;
//! - no two files import each other, directly or round a loop.
//!
//! Unit tests (`#[cfg(test)]` to the end of a file) are left out: they may
//! build what they test from anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Layer of a file (lower is higher up) and its group within the layer.
fn layer(file: &str) -> (u8, &'static str) {
    match file.split('/').next().unwrap_or(file) {
        "main.rs" | "faces" => (0, "faces"),
        "pipeline" => (1, "pipeline"),
        "clients" => (2, "clients"),
        "store" => (2, "store"),
        _ => (3, "base"),
    }
}

/// `a/b.rs` → `[a, b]`, `a/mod.rs` → `[a]`, `lib.rs` → `[]`.
fn module_of(file: &str) -> Vec<String> {
    let mut parts: Vec<String> = file.trim_end_matches(".rs").split('/').map(String::from).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

/// The code of a file without comment lines and without its unit tests.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// Expands a use tree (`a::{b, c::{d, e as f}}`) into its paths.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or(tree).trim();
        return vec![path.trim_end_matches("::self").to_string()];
    };
    let prefix = tree[..open].trim_end_matches("::");
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    let join = |p: String| if p == "self" { prefix.to_string() } else { format!("{prefix}::{p}") };
    parts.into_iter().filter(|p| !p.trim().is_empty()).flat_map(expand).map(join).collect()
}

/// Every `crate::`/`super::`/`self::` path (and `plexsync::` for the
/// binary) the code names, as written.
fn paths(code: &str, binary: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code.to_string();
    // Use statements first (their braces), then cut out.
    while let Some(at) = rest.find("use ") {
        // A use statement starts its line (after `pub`): "use " in a
        // string or a comment is not one.
        let line_start = rest[..at].rfind('\n').map_or(0, |n| n + 1);
        let lead = rest[line_start..at].trim();
        let end = rest[at..].find(';').map_or(rest.len(), |e| at + e);
        if lead.is_empty() || lead == "pub" || lead.starts_with("pub(") {
            out.extend(expand(&rest[at + 4..end]));
        }
        rest.replace_range(at..end, " ");
    }
    let roots: &[&str] = if binary { &["plexsync::", "crate::", "super::"] } else { &["crate::", "super::"] };
    for root in roots {
        for (at, _) in rest.match_indices(root) {
            if rest[..at].chars().last().is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let tail: String =
                rest[at..].chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
            out.push(tail.trim_end_matches(':').to_string());
        }
    }
    out
}

/// The file a path points into, from the file `from` naming it.
fn resolve(path: &str, from: &str, modules: &BTreeMap<Vec<String>, String>) -> Option<String> {
    let mut segments: Vec<String> = path.split("::").map(String::from).collect();
    let base = match segments.first().map(String::as_str) {
        Some("crate" | "plexsync") => Vec::new(),
        Some("super") => {
            let mut here = module_of(from);
            while segments.first().map(String::as_str) == Some("super") {
                here.pop();
                segments.remove(0);
            }
            segments.insert(0, String::new());
            here
        }
        Some("self") => module_of(from),
        _ => return None,
    };
    let full: Vec<String> = base.into_iter().chain(segments.into_iter().skip(1)).collect();
    (0..=full.len()).rev().find_map(|n| modules.get(&full[..n])).filter(|f| *f != from).cloned()
}

/// The broken rules among `files` (path under `src/` → text).
fn check(files: &BTreeMap<String, String>) -> Vec<String> {
    let modules: BTreeMap<Vec<String>, String> =
        files.keys().filter(|f| *f != "main.rs").map(|f| (module_of(f), f.clone())).collect();
    let mut edges: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut broken = Vec::new();
    for (file, text) in files {
        let targets = edges.entry(file).or_default();
        for path in paths(&code(text), file == "main.rs") {
            let Some(target) = resolve(&path, file, &modules) else { continue };
            let ((from_rank, from_group), (to_rank, to_group)) = (layer(file), layer(&target));
            if to_rank < from_rank || (to_rank == from_rank && to_group != from_group) {
                broken.push(format!("{file} ({from_group}) imports {path} from {target} ({to_group}): up or across"));
            }
            targets.insert(target);
        }
    }
    for cycle in cycles(&edges) {
        broken.push(format!("import cycle: {}", cycle.join(" → ")));
    }
    broken
}

/// Groups of files that reach each other (Tarjan's strongly connected
/// components of more than one file).
fn cycles(edges: &BTreeMap<&str, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<&'a str, BTreeSet<String>>,
        index: BTreeMap<String, usize>,
        low: BTreeMap<String, usize>,
        stack: Vec<String>,
        found: Vec<Vec<String>>,
    }
    fn visit(w: &mut Walk<'_>, v: &str) {
        let n = w.index.len();
        w.index.insert(v.to_string(), n);
        w.low.insert(v.to_string(), n);
        w.stack.push(v.to_string());
        for t in w.edges.get(v).into_iter().flatten() {
            if !w.index.contains_key(t) {
                visit(w, t);
                let low = w.low[v].min(w.low[t]);
                w.low.insert(v.to_string(), low);
            } else if w.stack.contains(t) {
                let low = w.low[v].min(w.index[t]);
                w.low.insert(v.to_string(), low);
            }
        }
        if w.low[v] == w.index[v] {
            let at = w.stack.iter().rposition(|s| s == v).unwrap_or(0);
            let group = w.stack.split_off(at);
            if group.len() > 1 {
                w.found.push(group);
            }
        }
    }
    let mut w = Walk { edges, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), found: Vec::new() };
    for v in edges.keys() {
        if !w.index.contains_key(*v) {
            visit(&mut w, v);
        }
    }
    w.found
}

fn sources(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let name = path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
            out.insert(name, std::fs::read_to_string(&path).unwrap());
        }
    }
}

#[test]
fn imports_go_down_the_layers_and_never_round_a_loop() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    sources(&src, &src, &mut files);
    assert!(files.len() > 30 && files.contains_key("pipeline/sync/delivery.rs"), "read {} files", files.len());
    let broken = check(&files);
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// The check itself: it sees an upward import, a sideways one, a loop
/// through `super::` and an inline path, and accepts what is allowed.
#[test]
fn the_check_fails_on_an_upward_import_and_on_a_cycle() {
    let tree = |extra: &[(&str, &str)]| {
        let mut files: BTreeMap<String, String> = [
            ("lib.rs", "pub mod clients; pub mod pipeline; pub mod store; pub mod error;"),
            ("error.rs", ""),
            ("clients/mod.rs", "pub mod plex;"),
            ("clients/plex.rs", "use crate::error::Error;"),
            ("store/mod.rs", "use crate::error::Error;"),
            ("pipeline/mod.rs", "pub mod a; pub mod b;"),
            ("pipeline/a.rs", "use crate::{clients::plex, store};"),
            ("pipeline/b.rs", "use super::a;"),
        ]
        .into_iter()
        .map(|(f, t)| (f.to_string(), t.to_string()))
        .collect();
        for (f, t) in extra {
            files.insert(f.to_string(), t.to_string());
        }
        check(&files)
    };
    assert!(tree(&[]).is_empty(), "{:?}", tree(&[]));
    let up = tree(&[("clients/plex.rs", "fn f() { crate::pipeline::b::g() }")]);
    assert!(up.iter().any(|b| b.contains("clients/plex.rs") && b.contains("up or across")), "{up:?}");
    let across = tree(&[("store/mod.rs", "use crate::clients::plex::{self, Thing};")]);
    assert!(across.iter().any(|b| b.contains("store/mod.rs") && b.contains("up or across")), "{across:?}");
    let loop_ = tree(&[("pipeline/a.rs", "use super::b::Thing;")]);
    assert!(loop_.iter().any(|b| b.starts_with("import cycle") && b.contains("pipeline/a.rs")), "{loop_:?}");
    let commented = tree(&[("clients/plex.rs", "// crate::pipeline::a\n#[cfg(test)]\nuse crate::pipeline::a;")]);
    assert!(commented.is_empty(), "{commented:?}");
}
