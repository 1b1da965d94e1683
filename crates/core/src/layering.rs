//! The core's modules form no cycle: every `crate::` and `super::` path a module names
//! (tests included) is an edge of a graph that must stay acyclic, so that each folder can
//! be read without the ones that use it (see the crate's module doc for the order).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`stream::meter`) → source file, for every file under `src/`.
fn modules(dir: &Path, prefix: &[String], out: &mut BTreeMap<Vec<String>, PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            let mut p = prefix.to_vec();
            p.push(name);
            modules(&path, &p, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let mut p = prefix.to_vec();
            if name != "mod" && name != "lib" {
                p.push(name);
            }
            out.insert(p, path);
        }
    }
}

/// The identifiers of a path written after `at` in `line` (`crate::a::b::C` → a, b, C).
fn segments(rest: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut s = rest;
    loop {
        let end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len());
        if end == 0 {
            break;
        }
        out.push(s[..end].to_string());
        match s[end..].strip_prefix("::") {
            Some(next) => s = next,
            None => break,
        }
    }
    out
}

/// The deepest known module a path names.
fn resolve(path: &[String], known: &BTreeMap<Vec<String>, PathBuf>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| known.contains_key(p))
}

fn edges(known: &BTreeMap<Vec<String>, PathBuf>) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut graph = BTreeMap::new();
    for (module, file) in known {
        let text = std::fs::read_to_string(file).unwrap();
        let is_folder = file.ends_with("mod.rs") || file.ends_with("lib.rs");
        // `super` of a file module is its folder; of a folder's mod.rs, the folder above.
        let parent: Vec<String> = if is_folder {
            module[..module.len().saturating_sub(1)].to_vec()
        } else {
            module[..module.len() - 1].to_vec()
        };
        let mut targets = BTreeSet::new();
        for line in text.lines() {
            let code = line.split("//").next().unwrap();
            for (at, _) in code.match_indices("crate::") {
                let path = segments(&code[at + 7..]);
                targets.extend(resolve(&path, known));
            }
            for (at, _) in code.match_indices("super::") {
                if code[..at].ends_with("::") {
                    continue;
                }
                let mut path = parent.clone();
                path.extend(segments(&code[at + 7..]));
                // `super::x` inside a file's inline test module names the file itself.
                if let Some(t) = resolve(&path, known).filter(|t| t.len() > parent.len()) {
                    targets.insert(t);
                }
            }
        }
        targets.remove(module);
        // A folder may name its own modules (to declare and re-export them).
        targets.retain(|t| !(t.len() == module.len() + 1 && t.starts_with(module)));
        graph.insert(module.clone(), targets);
    }
    graph
}

#[test]
fn the_module_graph_has_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut known = BTreeMap::new();
    modules(&src, &[], &mut known);
    assert!(known.len() > 20, "{known:?}");
    let graph = edges(&known);
    // Depth-first search; a module met again while on the stack closes a cycle.
    fn visit(
        m: &Vec<String>,
        graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        stack: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(at) = stack.iter().position(|s| s == m) {
            let cycle: Vec<String> = stack[at..]
                .iter()
                .chain([m])
                .map(|p| p.join("::"))
                .collect();
            panic!("modules import each other: {}", cycle.join(" → "));
        }
        stack.push(m.clone());
        for t in graph.get(m).into_iter().flatten() {
            visit(t, graph, stack, done);
        }
        stack.pop();
        done.insert(m.clone());
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done);
    }
    // The check sees real edges: the driver uses the exchange, and the exchange the body copy.
    let driver = vec!["exchange".to_string(), "driver".to_string()];
    assert!(graph[&driver].contains(&vec!["series".to_string(), "metrics".to_string()]));
}
