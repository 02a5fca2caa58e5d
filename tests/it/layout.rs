//! The shape of the code, checked: no import cycle between the files of a crate or between
//! its top-level folders, and the engine's default build free of an HTTP stack.
//!
//! Each `.rs` file is a node; a path a file names (`use` or inline, `crate::`, `super::`,
//! `self::` or a child module's name) is an edge to the file that defines the item, found by
//! walking the module tree and following the names `use` binds, so `use super::Fetcher` in
//! `client/transfer.rs` points at the file that defines `Fetcher`, not at `client/mod.rs`
//! that only re-exports it. Declaring a child module (`mod x;`) is structure, not an edge,
//! and unit tests (`#[cfg(test)]`) are left out: they may use a module's neighbours as
//! fixtures.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

use crate::common::{turn_blocking, Needs};

/// A module path from the crate root (`["client", "transfer"]`).
type ModPath = Vec<String>;

/// One crate's modules: which file each lives in, and what each file names.
struct Crate {
    /// Module path → the file it is defined in (inline modules map to their file).
    files: BTreeMap<ModPath, PathBuf>,
    /// Names each module binds with `use` (public or not) → the path they stand for.
    re_exports: BTreeMap<ModPath, BTreeMap<String, ModPath>>,
    /// Names each module binds to another crate's items (`use std::fs`, `pub use quinn`).
    external: BTreeMap<ModPath, BTreeSet<String>>,
    /// Glob imports (`use x::*`) per module.
    globs: BTreeMap<ModPath, Vec<ModPath>>,
    /// Paths each module names, absolute (resolved against the module they appear in).
    uses: BTreeMap<ModPath, Vec<ModPath>>,
}

/// Reads the crate whose root file is `root` (`lib.rs` or `main.rs`).
fn read_crate(root: &Path) -> Crate {
    let mut krate = Crate {
        files: BTreeMap::new(),
        re_exports: BTreeMap::new(),
        external: BTreeMap::new(),
        globs: BTreeMap::new(),
        uses: BTreeMap::new(),
    };
    load(
        &mut krate,
        root,
        Vec::new(),
        root.parent().unwrap().to_owned(),
    );
    krate
}

/// Loads the module `path` from `file`, whose child modules' files live under `dir`.
fn load(krate: &mut Crate, file: &Path, path: ModPath, dir: PathBuf) {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    module(krate, file, &path, &dir, &ast.items);
}

fn module(krate: &mut Crate, file: &Path, path: &ModPath, dir: &Path, items: &[syn::Item]) {
    krate.files.insert(path.clone(), file.to_owned());
    let mut names = Names {
        here: path.clone(),
        found: Vec::new(),
        children: items
            .iter()
            .filter_map(|i| match i {
                syn::Item::Mod(m) => Some(m.ident.to_string()),
                _ => None,
            })
            .collect(),
    };
    for item in items.iter().filter(|i| !test_only(i)) {
        match item {
            syn::Item::Mod(m) => {
                let mut child = path.clone();
                child.push(m.ident.to_string());
                match &m.content {
                    Some((_, inner)) => {
                        module(krate, file, &child, &dir.join(m.ident.to_string()), inner)
                    }
                    None => {
                        let flat = dir.join(format!("{}.rs", m.ident));
                        let nested = dir.join(m.ident.to_string()).join("mod.rs");
                        let (f, d) = if flat.is_file() {
                            (flat, dir.join(m.ident.to_string()))
                        } else {
                            (nested, dir.join(m.ident.to_string()))
                        };
                        load(krate, &f, child, d);
                    }
                }
            }
            syn::Item::Use(u) => {
                let mut leaves = Vec::new();
                use_leaves(&u.tree, Vec::new(), &mut leaves);
                for (segments, name) in leaves {
                    let Some(target) = names.absolute(&segments) else {
                        // Another crate's item: a name that leads out of this crate.
                        if let Some(name) = name {
                            krate.external.entry(path.clone()).or_default().insert(name);
                        }
                        continue;
                    };
                    names.found.push(target.clone());
                    // Any `use` binds the name in this module, public or not: a child's
                    // `super::name` resolves through it as well as another module's path.
                    match name {
                        Some(name) => {
                            krate
                                .re_exports
                                .entry(path.clone())
                                .or_default()
                                .insert(name, target);
                        }
                        None => krate.globs.entry(path.clone()).or_default().push(target),
                    }
                }
            }
            other => names.visit_item(other),
        }
    }
    krate
        .uses
        .entry(path.clone())
        .or_default()
        .extend(names.found);
}

/// True for an item compiled only into unit tests (`#[cfg(test)]`): a module's tests may use
/// its neighbours as fixtures, which says nothing about how the product's parts depend on
/// each other.
fn test_only(item: &syn::Item) -> bool {
    let attrs = match item {
        syn::Item::Mod(m) => &m.attrs,
        syn::Item::Use(u) => &u.attrs,
        syn::Item::Fn(f) => &f.attrs,
        syn::Item::Impl(i) => &i.attrs,
        syn::Item::Struct(s) => &s.attrs,
        syn::Item::Const(c) => &c.attrs,
        _ => return false,
    };
    attrs.iter().any(|a| {
        a.path().is_ident("cfg") && a.parse_args::<syn::Ident>().is_ok_and(|i| i == "test")
    })
}

/// The leaves of a use tree: the full path of each, with the name it is known by here
/// (`None` for a glob).
fn use_leaves(
    tree: &syn::UseTree,
    prefix: Vec<String>,
    out: &mut Vec<(Vec<String>, Option<String>)>,
) {
    match tree {
        syn::UseTree::Path(p) => {
            let mut next = prefix;
            next.push(p.ident.to_string());
            use_leaves(&p.tree, next, out);
        }
        syn::UseTree::Name(n) => {
            let name = n.ident.to_string();
            let mut full = prefix;
            if name == "self" {
                let last = full.last().cloned();
                out.push((full, last));
            } else {
                full.push(name.clone());
                out.push((full, Some(name)));
            }
        }
        syn::UseTree::Rename(r) => {
            let mut full = prefix;
            full.push(r.ident.to_string());
            out.push((full, Some(r.rename.to_string())));
        }
        syn::UseTree::Glob(_) => out.push((prefix, None)),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                use_leaves(t, prefix.clone(), out);
            }
        }
    }
}

/// The crate-relative paths one module names outside its `use` items.
struct Names {
    here: ModPath,
    children: BTreeSet<String>,
    found: Vec<ModPath>,
}

impl Names {
    /// `segments` as a path from the crate root, when it is one of this crate's.
    fn absolute(&self, segments: &[String]) -> Option<ModPath> {
        let first = segments.first()?;
        let mut base = match first.as_str() {
            "crate" => Vec::new(),
            "self" => self.here.clone(),
            "super" => self.here.clone(),
            // A child module's name starts a path only with more after it: alone it is
            // more likely a variable of the same name.
            c if self.children.contains(c) && segments.len() > 1 => {
                let mut p = self.here.clone();
                p.extend(segments.iter().cloned());
                return Some(p);
            }
            _ => return None,
        };
        let mut rest = &segments[1..];
        if first == "super" {
            base.pop();
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        base.extend(rest.iter().cloned());
        Some(base)
    }
}

impl<'ast> Visit<'ast> for Names {
    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        if let Some(abs) = self.absolute(&segments) {
            self.found.push(abs);
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {
        // `pub(crate)`, `pub(super)`: who may see an item, not something it uses.
    }

    fn visit_item_mod(&mut self, _: &'ast syn::ItemMod) {
        // Inline modules are read on their own, as modules of their own path.
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        // Paths inside macro calls (`format!`, `assert!`, `tokio::select!`) count too: parse
        // the tokens as loosely as possible and pick out what looks like a path.
        let tokens: Vec<proc_macro2::TokenTree> = m.tokens.clone().into_iter().collect();
        self.paths_in(&tokens);
        syn::visit::visit_macro(self, m);
    }
}

impl Names {
    fn paths_in(&mut self, tokens: &[proc_macro2::TokenTree]) {
        use proc_macro2::TokenTree;
        let mut i = 0;
        while i < tokens.len() {
            match &tokens[i] {
                TokenTree::Group(g) => {
                    let inner: Vec<TokenTree> = g.stream().into_iter().collect();
                    self.paths_in(&inner);
                    i += 1;
                }
                TokenTree::Ident(id) => {
                    let mut segments = vec![id.to_string()];
                    let mut j = i + 1;
                    while j + 2 < tokens.len() + 1 {
                        let colons = matches!(&tokens.get(j), Some(TokenTree::Punct(p)) if p.as_char() == ':')
                            && matches!(&tokens.get(j + 1), Some(TokenTree::Punct(p)) if p.as_char() == ':');
                        match (colons, tokens.get(j + 2)) {
                            (true, Some(TokenTree::Ident(next))) => {
                                segments.push(next.to_string());
                                j += 3;
                            }
                            _ => break,
                        }
                    }
                    if segments.len() > 1 {
                        if let Some(abs) = self.absolute(&segments) {
                            self.found.push(abs);
                        }
                    }
                    i = j;
                }
                _ => i += 1,
            }
        }
    }
}

impl Crate {
    /// The module defining what `path` names: down the module tree as far as it goes, then
    /// through the re-exports of the module it reached.
    fn defining(&self, path: &[String], depth: usize) -> Option<ModPath> {
        let mut module: ModPath = Vec::new();
        let mut rest = path;
        while let Some(first) = rest.first() {
            let mut child = module.clone();
            child.push(first.clone());
            if self.files.contains_key(&child) {
                module = child;
                rest = &rest[1..];
                continue;
            }
            break;
        }
        if depth > 8 {
            return Some(module);
        }
        let Some(name) = rest.first() else {
            return Some(module);
        };
        if self.external.get(&module).is_some_and(|e| e.contains(name)) {
            return None;
        }
        if let Some(target) = self.re_exports.get(&module).and_then(|r| r.get(name)) {
            let mut next = target.clone();
            next.extend(rest[1..].iter().cloned());
            return self.defining(&next, depth + 1).or(Some(module));
        }
        for glob in self.globs.get(&module).into_iter().flatten() {
            let mut next = glob.clone();
            next.extend(rest.iter().cloned());
            if let Some(found) = self.defining(&next, depth + 1) {
                if found != *glob {
                    return Some(found);
                }
            }
        }
        Some(module)
    }

    /// File → the files it names.
    fn edges(&self) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
        let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
        for (module, paths) in &self.uses {
            let from = &self.files[module];
            for p in paths {
                let Some(to) = self.defining(p, 0).and_then(|m| self.files.get(&m)) else {
                    continue;
                };
                if to != from {
                    edges.entry(from.clone()).or_default().insert(to.clone());
                }
            }
        }
        edges
    }
}

/// The strongly connected components of more than one node (Tarjan's algorithm).
fn cycles<N: Ord + Clone>(edges: &BTreeMap<N, BTreeSet<N>>) -> Vec<Vec<N>> {
    struct State<N> {
        index: BTreeMap<N, usize>,
        low: BTreeMap<N, usize>,
        stack: Vec<N>,
        on: BTreeSet<N>,
        out: Vec<Vec<N>>,
    }
    fn visit<N: Ord + Clone>(v: &N, edges: &BTreeMap<N, BTreeSet<N>>, s: &mut State<N>) {
        let i = s.index.len();
        s.index.insert(v.clone(), i);
        s.low.insert(v.clone(), i);
        s.stack.push(v.clone());
        s.on.insert(v.clone());
        for w in edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(w, edges, s);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v.clone(), low);
            } else if s.on.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v.clone(), low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(&w);
                let done = &w == v;
                comp.push(w);
                if done {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(v, edges, &mut s);
        }
    }
    s.out
}

/// The top-level folder (or root file) of `file` under `src`.
fn top(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// Every cycle of `root`'s crate, between files and between top-level folders, as text.
fn cycles_of(root: &Path) -> Vec<String> {
    let src = root.parent().unwrap();
    let edges = read_crate(root).edges();
    let mut found: Vec<String> = cycles(&edges)
        .into_iter()
        .map(|c| {
            // Each edge inside the cycle, so whoever breaks it sees where it runs.
            let inside: BTreeSet<_> = c.iter().collect();
            let name = |f: &PathBuf| f.strip_prefix(src).unwrap().display().to_string();
            let links: Vec<String> = c
                .iter()
                .flat_map(|from| {
                    edges[from]
                        .iter()
                        .filter(|to| inside.contains(to))
                        .map(move |to| format!("\n    {} → {}", name(from), name(to)))
                })
                .collect();
            let names: Vec<_> = c
                .iter()
                .map(|f| f.strip_prefix(src).unwrap().display().to_string())
                .collect();
            format!("files: {}{}", names.join(" ↔ "), links.concat())
        })
        .collect();
    let mut folders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in &edges {
        for to in tos {
            let (a, b) = (top(src, from), top(src, to));
            // The crate root declares and re-exports everything; it is no level of its own.
            if a != b
                && !["lib", "main"].contains(&a.as_str())
                && !["lib", "main"].contains(&b.as_str())
            {
                folders.entry(a).or_default().insert(b);
            }
        }
    }
    found.extend(
        cycles(&folders)
            .into_iter()
            .map(|c| format!("folders: {}", c.join(" ↔ "))),
    );
    found
}

#[test]
fn no_crate_has_an_import_cycle_between_files_or_folders() {
    let _turn = turn_blocking(Needs::Nothing);
    let root = testkit::workspace_root();
    let mut all = Vec::new();
    for krate in [
        "quicstrap/src/lib.rs",
        "baseline/src/lib.rs",
        "src/main.rs",
        "testkit/src/lib.rs",
        "proto/src/lib.rs",
    ] {
        for c in cycles_of(&root.join(krate)) {
            all.push(format!("{krate}: {c}"));
        }
    }
    assert!(all.is_empty(), "import cycles:\n{}", all.join("\n"));
}

#[test]
fn the_checker_sees_a_cycle_through_a_re_export() {
    let _turn = turn_blocking(Needs::Nothing);
    // a/mod.rs re-exports b's item and defines one b uses: a cycle between two files.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod a;\npub mod c;\n").unwrap();
    std::fs::write(
        src.join("a/mod.rs"),
        "mod b;\npub use b::B;\npub struct A;\nfn f(_: b::B) {}\n",
    )
    .unwrap();
    std::fs::write(src.join("a/b.rs"), "pub struct B(super::A);\n").unwrap();
    std::fs::write(src.join("c.rs"), "use crate::a::B;\n").unwrap();
    let found = cycles_of(&src.join("lib.rs"));
    assert_eq!(
        found,
        ["files: a/b.rs ↔ a/mod.rs\n    a/b.rs → a/mod.rs\n    a/mod.rs → a/b.rs"]
    );
    // Without the back edge: none. `c` names `B` through the re-export, an edge to b.rs.
    std::fs::write(src.join("a/b.rs"), "pub struct B;\n").unwrap();
    assert!(cycles_of(&src.join("lib.rs")).is_empty());
    let edges = read_crate(&src.join("lib.rs")).edges();
    assert!(
        edges[&src.join("c.rs")].contains(&src.join("a/b.rs")),
        "{edges:?}"
    );
}

#[test]
fn the_checker_sees_a_cycle_between_folders() {
    let _turn = turn_blocking(Needs::Nothing);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    for d in ["x", "y"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
    }
    std::fs::write(src.join("lib.rs"), "pub mod x;\npub mod y;\n").unwrap();
    std::fs::write(src.join("x/mod.rs"), "pub mod one;\npub mod two;\n").unwrap();
    std::fs::write(src.join("y/mod.rs"), "pub mod three;\n").unwrap();
    std::fs::write(
        src.join("x/one.rs"),
        "pub fn f() { crate::y::three::g() }\n",
    )
    .unwrap();
    std::fs::write(src.join("x/two.rs"), "pub fn h() {}\n").unwrap();
    std::fs::write(
        src.join("y/three.rs"),
        "pub fn g() { assert!(true, \"{:?}\", crate::x::two::h()) }\n",
    )
    .unwrap();
    assert_eq!(cycles_of(&src.join("lib.rs")), ["folders: x ↔ y"]);
}

#[test]
fn the_engine_builds_without_an_http_stack() {
    let _turn = turn_blocking(Needs::Nothing);
    // `cargo tree -e normal -p quicstrap`: what a default build of the engine links.
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "-p",
            "quicstrap",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(testkit::workspace_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.lines().any(|l| l.starts_with("quinn ")), "{tree}");
    for http in ["hyper ", "hyper-util ", "http-body-util ", "tokio-rustls "] {
        assert!(
            !tree.lines().any(|l| l.starts_with(http)),
            "the engine depends on {http}:\n{tree}"
        );
    }
}
