//! The check that `service/*` modules depend on each other in one direction: it reads
//! the module files and fails on an import cycle, naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `text` without its `#[cfg(test)] mod … { … }` blocks (braces counted; the code after
/// such a block is kept: a module's code placed after its tests once hid an import cycle).
fn without_test_modules(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let trimmed = after.trim_start();
        let is_mod = trimmed.starts_with("mod ") || trimmed.starts_with("pub mod ");
        let open = trimmed.find('{');
        match (is_mod, open) {
            (true, Some(open)) if !trimmed[..open].contains(';') => {
                let mut depth = 0usize;
                let mut end = trimmed.len();
                for (i, c) in trimmed[open..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth = depth.saturating_sub(1);
                            if depth == 0 {
                                end = open + i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                rest = &trimmed[end..];
            }
            // A test-only item that is not a module: kept (it may only add dependencies).
            _ => rest = after,
        }
    }
    out.push_str(rest);
    out
}

/// Each service module and the service modules it names (`super::x` or
/// `crate::service::x`, anywhere in the file except its tests).
pub fn dependencies(dir: &Path) -> std::io::Result<BTreeMap<String, BTreeSet<String>>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let (Some(stem), Some("rs")) = (
            path.file_stem().and_then(|s| s.to_str()),
            path.extension().and_then(|s| s.to_str()),
        ) else {
            continue;
        };
        if stem == "mod" || stem == "layering" {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        // A file's own tests may use anything.
        files.insert(stem.to_owned(), without_test_modules(&text));
    }
    let names: BTreeSet<String> = files.keys().cloned().collect();
    let mut deps = BTreeMap::new();
    for (module, code) in &files {
        let mut uses = BTreeSet::new();
        for prefix in ["super::", "crate::service::"] {
            for (i, _) in code.match_indices(prefix) {
                let rest = &code[i + prefix.len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                // `super::{a, b}` lists.
                if name.is_empty() && rest.starts_with('{') {
                    let list = rest[1..].split('}').next().unwrap_or_default();
                    for item in list.split(',') {
                        let item = item.trim().split("::").next().unwrap_or_default().trim();
                        if names.contains(item) && item != module {
                            uses.insert(item.to_owned());
                        }
                    }
                } else if names.contains(&name) && &name != module {
                    uses.insert(name);
                }
            }
        }
        deps.insert(module.clone(), uses);
    }
    Ok(deps)
}

/// A cycle among the modules, if there is one (as the path that closes it).
pub fn find_cycle(deps: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        deps: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = path.iter().position(|p| p == node) {
            let mut cycle = path[pos..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in deps.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, deps, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in deps.keys() {
        if let Some(c) = visit(node, deps, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
        edges
            .iter()
            .map(|(m, ds)| (m.to_string(), ds.iter().map(|d| d.to_string()).collect()))
            .collect()
    }

    #[test]
    fn code_after_a_files_test_module_is_still_read_and_the_tests_are_not() {
        let text = "use super::a;\n#[cfg(test)]\nmod tests {\n    use super::b;\n    fn f() { let _ = format!(\"{}\", 1); }\n}\n\npub fn later() { super::c::run(); }\n";
        let code = without_test_modules(text);
        assert!(
            code.contains("super::a") && code.contains("super::c"),
            "{code}"
        );
        assert!(!code.contains("super::b"), "{code}");
    }

    #[test]
    fn service_modules_import_each_other_in_one_direction_only() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/service");
        let deps = dependencies(&dir).expect("read src/service");
        assert!(deps.len() > 10, "found only {deps:?}");
        assert!(
            deps["dispatch"].contains("status"),
            "the scan sees imports: {deps:?}"
        );
        if let Some(cycle) = find_cycle(&deps) {
            panic!("import cycle among service modules: {}", cycle.join(" -> "));
        }
    }

    #[test]
    fn the_check_names_a_cycle_when_there_is_one() {
        let g = graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"]), ("d", &[])]);
        assert_eq!(
            find_cycle(&g),
            Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
        assert_eq!(find_cycle(&graph(&[("a", &["b"]), ("b", &[])])), None);
    }
}
