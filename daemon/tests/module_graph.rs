//! The shape of daemon/src (issue 14's measure of a readable request path):
//! no import cycle among its top-level modules, and no module importing one
//! of a higher layer (the layers ARCHITECTURE.md lists).
//!
//! The module tree is followed from lib.rs through its `mod` declarations,
//! leaving out `#[cfg(test)]` ones; every `crate::X` path (in `use` items
//! and in code) is an edge from the module of its file to X.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use syn::visit::Visit;

/// ARCHITECTURE.md's layers, lowest first: a module may import modules of
/// its own layer or lower ones. A new module must be placed here.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "base",
        &[
            "config", "origin", "secret", "clock", "duration", "error", "mounts", "swap",
            "metrics", "notify", "tls", "table", "install",
        ],
    ),
    (
        "domain",
        &[
            "attest",
            "redirect",
            "policy",
            "credentials",
            "provider",
            "usage",
            "metadata",
            "gateway",
        ],
    ),
    ("sinks and response", &["audit", "response"]),
    ("the request path", &["proxy"]),
    (
        "assembly and surfaces",
        &["control", "service", "doctor", "cli"],
    ),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

type Graph = BTreeMap<String, BTreeSet<String>>;

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg")
            && attr
                .parse_args::<syn::Meta>()
                .is_ok_and(|meta| meta.path().is_ident("test"))
    })
}

/// `crate::X` paths met in one file.
struct CrateRefs(BTreeSet<String>);

impl<'ast> Visit<'ast> for CrateRefs {
    fn visit_path(&mut self, path: &'ast syn::Path) {
        let mut segments = path.segments.iter();
        if let (Some(first), Some(second)) = (segments.next(), segments.next())
            && first.ident == "crate"
        {
            self.0.insert(second.ident.to_string());
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_use_tree(&mut self, tree: &'ast syn::UseTree) {
        if let syn::UseTree::Path(path) = tree
            && path.ident == "crate"
        {
            let mut names = Vec::new();
            first_names(&path.tree, &mut names);
            self.0.extend(names);
        }
        syn::visit::visit_use_tree(self, tree);
    }

    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Use(u) => &u.attrs,
            _ => return syn::visit::visit_item(self, item),
        };
        if !is_cfg_test(attrs) {
            syn::visit::visit_item(self, item);
        }
    }
}

/// The first name of each path of a `use crate::...` tree.
fn first_names(tree: &syn::UseTree, out: &mut Vec<String>) {
    match tree {
        syn::UseTree::Path(p) => out.push(p.ident.to_string()),
        syn::UseTree::Name(n) => out.push(n.ident.to_string()),
        syn::UseTree::Rename(r) => out.push(r.ident.to_string()),
        syn::UseTree::Group(g) => g.items.iter().for_each(|t| first_names(t, out)),
        syn::UseTree::Glob(_) => {}
    }
}

/// The file of module `name` declared in `dir` (x.rs or x/mod.rs), with the
/// directory its own submodules live in.
fn module_file(dir: &Path, name: &str, path_attr: Option<String>) -> (PathBuf, PathBuf) {
    if let Some(path) = path_attr {
        let file = dir.join(path);
        let sub = file.with_extension("");
        return (file, sub);
    }
    let flat = dir.join(format!("{name}.rs"));
    if flat.exists() {
        (flat, dir.join(name))
    } else {
        (dir.join(name).join("mod.rs"), dir.join(name))
    }
}

/// Adds the crate references of `file` (and its non-test submodules) to
/// the top-level module `top`.
fn walk(file: &Path, sub_dir: &Path, top: &str, graph: &mut Graph) {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let parsed = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut refs = CrateRefs(BTreeSet::new());
    refs.visit_file(&parsed);
    let entry = graph.entry(top.to_owned()).or_default();
    entry.extend(refs.0.into_iter().filter(|m| m != top));
    for item in &parsed.items {
        if let syn::Item::Mod(m) = item
            && m.content.is_none()
            && !is_cfg_test(&m.attrs)
        {
            let name = m.ident.to_string();
            let (child, child_dir) = module_file(sub_dir, &name, path_attr(&m.attrs));
            walk(&child, &child_dir, top, graph);
        }
    }
}

fn path_attr(attrs: &[syn::Attribute]) -> Option<String> {
    attrs.iter().find_map(|attr| match &attr.meta {
        syn::Meta::NameValue(nv) if nv.path.is_ident("path") => match &nv.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) => Some(s.value()),
            _ => None,
        },
        _ => None,
    })
}

fn daemon_graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = syn::parse_file(&std::fs::read_to_string(src.join("lib.rs")).unwrap()).unwrap();
    let mut graph = Graph::new();
    for item in &lib.items {
        if let syn::Item::Mod(m) = item
            && !is_cfg_test(&m.attrs)
        {
            let name = m.ident.to_string();
            let (file, dir) = module_file(&src, &name, path_attr(&m.attrs));
            walk(&file, &dir, &name, &mut graph);
        }
    }
    // Only edges to top-level modules (crate::X may name a re-export).
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for targets in graph.values_mut() {
        targets.retain(|t| modules.contains(t));
    }
    graph
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct State<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        for w in &s.graph[v] {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.stack.contains(&w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !state.index.contains_key(v.as_str()) {
            visit(&mut state, v);
        }
    }
    state.found
}

#[test]
fn no_import_cycle_among_the_top_level_modules() {
    let graph = daemon_graph();
    assert!(
        graph.len() > 20,
        "the module tree was not followed: {graph:?}"
    );
    assert!(
        graph["proxy"].contains("attest"),
        "crate paths were not collected: {graph:?}"
    );
    let found = cycles(&graph);
    assert!(
        found.is_empty(),
        "modules of daemon/src import each other (each group is a cycle): {found:?}"
    );
}

#[test]
fn no_module_imports_one_of_a_higher_layer() {
    let graph = daemon_graph();
    let mut wrong = Vec::new();
    for (module, imports) in &graph {
        let Some(layer) = layer_of(module) else {
            wrong.push(format!(
                "{module} is in no layer: place it in LAYERS and ARCHITECTURE.md"
            ));
            continue;
        };
        for import in imports {
            if layer_of(import).is_some_and(|higher| higher > layer) {
                wrong.push(format!(
                    "{module} ({}) imports {import} ({})",
                    LAYERS[layer].0,
                    LAYERS[layer_of(import).unwrap_or(0)].0
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn a_cycle_is_found_when_there_is_one() {
    let mut graph = Graph::new();
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "d")] {
        graph.entry(from.into()).or_default().insert(to.into());
        graph.entry(to.into()).or_default();
    }
    assert_eq!(
        cycles(&graph),
        vec![vec!["a".to_owned(), "b".into(), "c".into()]]
    );
}

/// The README's Layout section, as text.
fn readme_layout() -> String {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = std::fs::read_to_string(readme).unwrap();
    let start = text
        .find("\n## Layout\n")
        .expect("the README has a Layout section");
    let rest = &text[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_owned()
}

#[test]
fn the_readme_layout_names_every_module_and_top_level_directory() {
    let layout = readme_layout();
    let words: BTreeSet<&str> = layout
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | ':' | '(' | ')'))
        .map(|w| w.trim_end_matches('/'))
        .collect();
    let mut missing: Vec<String> = daemon_graph()
        .keys()
        .filter(|module| !words.contains(module.as_str()))
        .map(|module| format!("daemon/src/{module}"))
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for entry in std::fs::read_dir(&root).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let tracked_dir =
            entry.file_type().unwrap().is_dir() && !name.starts_with('.') && name != "target";
        if tracked_dir && !layout.contains(&format!("{name}/")) {
            missing.push(format!("{name}/"));
        }
    }
    assert!(
        missing.is_empty(),
        "the README's Layout section does not name {missing:?}:\n{layout}"
    );
}
