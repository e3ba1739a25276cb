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
pub mod error;
pub mod events;
pub mod exit;
pub mod files;
pub mod hyperv;
pub mod layout;
pub mod metrics;
pub mod names;
pub mod net;
pub mod printable;
pub mod seccomp;
pub mod serial;
pub mod signal;
pub mod sync;
pub mod uffd;
pub mod upload;
pub mod vcpu;
pub mod vcpu_state;
pub mod vm;
pub mod vmbus;
pub mod watchdog;

/// The module graph of this crate has no circles: no module uses one that uses it back,
/// directly or through others (tests aside). Read from the parsed sources (syn): every `use`
/// tree (`use crate::{a, b::c}`, `use super::super::x`, renames, globs), every path in code
/// (`crate::a::f()`, `super::b::T`), and paths inside macro calls, resolved from the module
/// each file (or inline `mod`) is.
#[cfg(test)]
mod module_graph {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    use proc_macro2::{TokenStream, TokenTree};
    use syn::visit::Visit;

    /// Whether `attrs` hold `#[cfg(test)]`.
    fn is_test(attrs: &[syn::Attribute]) -> bool {
        attrs.iter().any(|a| a.path().is_ident("cfg") && a.parse_args::<syn::Ident>().is_ok_and(|i| i == "test"))
    }

    /// The top-level modules one file's non-test code names.
    struct Names<'a> {
        /// The module path of the code being read (`["crash", "executor"]`).
        module: Vec<String>,
        found: &'a mut BTreeSet<String>,
    }

    impl Names<'_> {
        /// The top-level module a path beginning with `segments` names, if it leaves its own
        /// top-level module through `crate::` or enough `super::`.
        fn resolve(&mut self, segments: &[String]) {
            let target = match segments.first().map(String::as_str) {
                Some("crate") => segments.get(1),
                Some("super") => {
                    let supers = segments.iter().take_while(|s| *s == "super").count();
                    // `super` from depth d reaches depth d - supers; depth 0 is the crate root,
                    // whose next segment is a top-level module.
                    match self.module.len().checked_sub(supers) {
                        Some(0) => segments.get(supers),
                        Some(_) => self.module.first(),
                        None => None,
                    }
                }
                _ => None,
            };
            if let Some(t) = target.filter(|t| t.chars().all(|c| c.is_ascii_lowercase() || c == '_')) {
                self.found.insert(t.clone());
            }
        }

        fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
            match tree {
                syn::UseTree::Path(p) => {
                    prefix.push(p.ident.to_string());
                    self.use_tree(prefix, &p.tree);
                    prefix.pop();
                }
                syn::UseTree::Name(n) => self.leaf(prefix, n.ident.to_string()),
                syn::UseTree::Rename(r) => self.leaf(prefix, r.ident.to_string()),
                syn::UseTree::Glob(_) => self.resolve(prefix),
                syn::UseTree::Group(g) => g.items.iter().for_each(|t| self.use_tree(prefix, t)),
            }
        }

        fn leaf(&mut self, prefix: &[String], name: String) {
            let mut full = prefix.to_vec();
            full.push(name);
            self.resolve(&full);
        }

        /// `crate :: a` and `super :: ...` sequences in a macro's tokens.
        fn tokens(&mut self, tokens: TokenStream) {
            let trees: Vec<TokenTree> = tokens.into_iter().collect();
            let mut i = 0;
            while i < trees.len() {
                match &trees[i] {
                    TokenTree::Group(g) => self.tokens(g.stream()),
                    TokenTree::Ident(id) if id == "crate" || id == "super" => {
                        let mut segments = vec![id.to_string()];
                        let mut j = i + 1;
                        while let (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)), Some(TokenTree::Ident(n))) =
                            (trees.get(j), trees.get(j + 1), trees.get(j + 2))
                        {
                            if a.as_char() != ':' || b.as_char() != ':' {
                                break;
                            }
                            segments.push(n.to_string());
                            j += 3;
                        }
                        self.resolve(&segments);
                        i = j;
                        continue;
                    }
                    _ => {}
                }
                i += 1;
            }
        }
    }

    impl<'ast> Visit<'ast> for Names<'_> {
        fn visit_item(&mut self, item: &'ast syn::Item) {
            let attrs: &[syn::Attribute] = match item {
                syn::Item::Const(i) => &i.attrs,
                syn::Item::Enum(i) => &i.attrs,
                syn::Item::Fn(i) => &i.attrs,
                syn::Item::Impl(i) => &i.attrs,
                syn::Item::Mod(i) => &i.attrs,
                syn::Item::Static(i) => &i.attrs,
                syn::Item::Struct(i) => &i.attrs,
                syn::Item::Trait(i) => &i.attrs,
                syn::Item::Type(i) => &i.attrs,
                syn::Item::Use(i) => &i.attrs,
                _ => &[],
            };
            if !is_test(attrs) {
                syn::visit::visit_item(self, item);
            }
        }
        fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
            if !is_test(&f.attrs) {
                syn::visit::visit_impl_item_fn(self, f);
            }
        }
        fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
            self.module.push(m.ident.to_string());
            syn::visit::visit_item_mod(self, m);
            self.module.pop();
        }
        fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
            self.use_tree(&mut Vec::new(), &u.tree);
        }
        fn visit_path(&mut self, p: &'ast syn::Path) {
            let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
            self.resolve(&segments);
            syn::visit::visit_path(self, p);
        }
        fn visit_macro(&mut self, m: &'ast syn::Macro) {
            self.tokens(m.tokens.clone());
            syn::visit::visit_macro(self, m);
        }
    }

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
                let Some(stem) = rel.strip_suffix(".rs") else { continue };
                // `crash/mod.rs` is module `crash`; `crash/executor.rs` is `crash::executor`.
                let module: Vec<String> = stem.split('/').filter(|s| *s != "mod").map(str::to_string).collect();
                if module == ["lib"] || module == ["main"] {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let file = syn::parse_file(&text).unwrap_or_else(|e| panic!("{rel}: {e}"));
                let mut found = BTreeSet::new();
                Names { module: module.clone(), found: &mut found }.visit_file(&file);
                found.remove(&module[0]);
                graph.entry(module[0].clone()).or_default().extend(found);
            }
        }
        graph
    }

    /// The forms the reader must see: grouped, nested-super, in-macro, glob and plain paths.
    #[test]
    fn every_form_of_use_is_read() {
        let file = syn::parse_file(
            "use crate::{events::Event, control::{self, X}};
             use super::super::vcpu as v;
             use super::snapshot::*;
             fn f() { crate::files::g(); log::warn!(\"{}\", crate::sync::lock(x)); }
             #[cfg(test)] mod tests { use crate::api; }",
        )
        .unwrap();
        let mut found = BTreeSet::new();
        let module = ["crash", "executor"].map(String::from).to_vec();
        Names { module, found: &mut found }.visit_file(&file);
        let want = ["control", "crash", "events", "files", "sync", "vcpu"];
        assert_eq!(found, want.iter().map(|s| s.to_string()).collect(), "tests aside");
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
