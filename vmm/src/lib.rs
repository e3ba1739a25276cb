//! crashvmm: a KVM virtual machine monitor built for the moment a guest kernel dies.
//!
//! This crate owns KVM, threads, files and policy. Device and protocol state machines live in
//! the `devices` crate. Start with `docs/DESIGN.md`.

pub mod acpi;
pub mod api;
pub mod boot;
pub mod builder;
pub mod config;
pub mod console;
pub mod control;
pub mod cpuid;
pub mod crash;
pub mod disk;
pub mod events;
pub mod exit;
pub mod files;
pub mod hyperv;
pub mod layout;
pub mod printable;
pub mod seccomp;
pub mod sync;
pub mod uffd;
pub mod upload;
pub mod vcpu;
pub mod vcpu_state;
pub mod vm;
pub mod vmbus;
pub mod watchdog;

/// The module graph of this crate has no circles: no module uses one that uses it back,
/// directly or through others (tests aside). Read from the sources, as `use crate::...` and
/// `crate::...` paths (and `super::` in submodules).
#[cfg(test)]
mod module_graph {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// Top-level module -> the top-level modules its non-test code names.
    fn graph() -> BTreeMap<String, BTreeSet<String>> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut stack = vec![src.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let rel = path.strip_prefix(&src).unwrap().to_str().unwrap().to_string();
                let module = rel.trim_end_matches(".rs").split('/').next().unwrap().to_string();
                if module == "lib" || module == "main" || !rel.ends_with(".rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let code = text.split("#[cfg(test)]").next().unwrap();
                let deps = graph.entry(module.clone()).or_default();
                for (i, _) in code.match_indices("crate::") {
                    let name: String =
                        code[i + 7..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                    if !name.is_empty() && name != module {
                        deps.insert(name);
                    }
                }
            }
        }
        graph
    }

    #[test]
    fn no_module_uses_one_that_uses_it_back() {
        let graph = graph();
        assert!(graph.contains_key("crash") && graph["vm"].contains("crash"), "the graph was read: {graph:?}");
        // Depth-first search for a path from each module back to itself.
        for start in graph.keys() {
            let mut seen = BTreeSet::new();
            let mut stack: Vec<Vec<&String>> = vec![vec![start]];
            while let Some(path) = stack.pop() {
                for next in graph.get(*path.last().unwrap()).into_iter().flatten() {
                    let mut longer = path.clone();
                    longer.push(next);
                    assert!(
                        next != start,
                        "import circle: {}",
                        longer.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" -> ")
                    );
                    if seen.insert(next) {
                        stack.push(longer);
                    }
                }
            }
        }
    }
}
