//! Imports run one way: the top-level modules of `src/` form a DAG, and so do the files
//! inside each folder module.
//!
//! A cycle means two parts cannot be read, tested or moved apart, so this test reads the
//! source instead of trusting review to notice one. It needs no services and no build of the
//! crate beyond this file: `cargo test --test module_dag`.
//!
//! What counts as a reference: every path that starts with `crate::` (or `$crate::`),
//! `super::` or `self::`, in `use` trees and in code, resolved to the module it names; and
//! in a folder's `mod.rs`, a path through one of its child modules. Comments, doc comments
//! (so intra-doc links too) and string literals are blanked first. Inside a folder, a path
//! to an item of `mod.rs` that `mod.rs` only re-exports (`pub use child::Item`, or
//! `pub(crate) use`) counts as a reference to the child that defines it, so a facade
//! does not make false cycles.
//! A `mod.rs`'s own `pub use` lines are that facade and not references of its own.
//! `src/main.rs` is the binary's crate, and `src/lib.rs` is above every module; neither is
//! a node.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Cycles that exist today and are waiting for their move: (place, members in sorted
/// order, what would untie it). Each entry must still match a knot exactly, so the list
/// only shrinks; a new cycle, or a knot that grew, fails the test.
const KNOWN_KNOTS: &[(&str, &[&str], &str)] = &[];

/// A reference from one module to another, remembered by its first site for the report.
#[derive(Debug, Clone)]
struct Site {
    file: String,
    line: usize,
}

/// One source file: its module path (`["push", "hook"]`), text with comments and strings
/// blanked, and whether it is a folder's `mod.rs` (its children are reachable by bare name).
struct Source {
    rel: String,
    module: Vec<String>,
    code: String,
    is_mod_rs: bool,
}

#[test]
fn top_level_modules_and_files_inside_each_folder_form_a_dag() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let sources = read_sources(&src);
    assert!(
        sources.len() > 10,
        "found only {} files under {}",
        sources.len(),
        src.display()
    );

    // Declared children of each module, and the names a mod.rs re-exports from a child.
    let mut children: BTreeMap<Vec<String>, BTreeSet<String>> = BTreeMap::new();
    let mut reexports: BTreeMap<Vec<String>, BTreeMap<String, String>> = BTreeMap::new();
    for s in &sources {
        children.insert(s.module.clone(), declared_children(&s.code));
    }
    for s in &sources {
        if s.is_mod_rs {
            let kids = children.get(&s.module).cloned().unwrap_or_default();
            reexports.insert(s.module.clone(), reexported_names(&s.code, &kids));
        }
    }

    let mut top: Graph = Graph::default();
    let mut folders: BTreeMap<String, Graph> = BTreeMap::new();
    for s in &sources {
        let kids = children.get(&s.module).cloned().unwrap_or_default();
        for (target, line) in references(s, &kids) {
            let site = Site {
                file: s.rel.clone(),
                line,
            };
            let Some(first) = target.first() else {
                continue;
            };
            let from = &s.module[0];
            if first != from {
                top.add(from, first, site);
                continue;
            }
            // Same top-level module: an edge between files of its folder, if it is one.
            let folder = from.clone();
            if !sources
                .iter()
                .any(|o| o.is_mod_rs && o.module == [folder.clone()])
            {
                continue;
            }
            let from_file = s.module.get(1).cloned().unwrap_or_else(|| "mod".into());
            let to_file = match target.get(1) {
                Some(name)
                    if children
                        .get(&vec![folder.clone()])
                        .is_some_and(|k| k.contains(name)) =>
                {
                    name.clone()
                }
                Some(item) => reexports
                    .get(&vec![folder.clone()])
                    .and_then(|r| r.get(item))
                    .cloned()
                    .unwrap_or_else(|| "mod".into()),
                None => "mod".into(),
            };
            if from_file != to_file {
                folders
                    .entry(folder)
                    .or_default()
                    .add(&from_file, &to_file, site);
            }
        }
    }

    let mut report = String::new();
    let mut known_seen = BTreeSet::new();
    let mut graphs: Vec<(String, &Graph)> = vec![("src".to_string(), &top)];
    graphs.extend(folders.iter().map(|(f, g)| (format!("src/{f}"), g)));
    for (place, graph) in graphs {
        for knot in graph.cycles() {
            let known = KNOWN_KNOTS.iter().position(|(p, members, _)| {
                *p == place
                    && knot
                        .1
                        .iter()
                        .map(String::as_str)
                        .eq(members.iter().copied())
            });
            if let Some(k) = known {
                known_seen.insert(k);
                continue;
            }
            report.push_str(&format!(
                "cycle between the modules of {place}/:\n{}",
                graph.describe(&knot)
            ));
        }
    }
    for (k, (place, members, _)) in KNOWN_KNOTS.iter().enumerate() {
        if !known_seen.contains(&k) {
            report.push_str(&format!(
                "the known knot {members:?} in {place}/ is gone or changed: \
                 remove or update its KNOWN_KNOTS entry\n"
            ));
        }
    }
    assert!(
        report.is_empty(),
        "imports must run one way; move the piece that closes each cycle to its owner.\n{report}"
    );
}

/// Directed graph of module names, with the first site of each edge.
#[derive(Default)]
struct Graph {
    edges: BTreeMap<String, BTreeMap<String, Site>>,
}

impl Graph {
    fn add(&mut self, from: &str, to: &str, site: Site) {
        self.edges
            .entry(from.to_string())
            .or_default()
            .entry(to.to_string())
            .or_insert(site);
        self.edges.entry(to.to_string()).or_default();
    }

    /// One cycle per strongly connected component of more than one node (Tarjan), so the
    /// report names every knot once instead of every permutation of it; with it, every
    /// edge inside the knot, because breaking the one cycle shown may leave others.
    fn cycles(&self) -> Vec<(Vec<String>, BTreeSet<String>)> {
        let nodes: Vec<&String> = self.edges.keys().collect();
        let index_of: BTreeMap<&String, usize> =
            nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let mut state = Tarjan {
            index: vec![None; nodes.len()],
            low: vec![0; nodes.len()],
            on_stack: vec![false; nodes.len()],
            stack: Vec::new(),
            next: 0,
            components: Vec::new(),
        };
        for v in 0..nodes.len() {
            if state.index[v].is_none() {
                self.strongconnect(v, &nodes, &index_of, &mut state);
            }
        }
        state
            .components
            .into_iter()
            .filter(|c| c.len() > 1)
            .map(|c| {
                let members: BTreeSet<String> = c.iter().map(|&i| nodes[i].clone()).collect();
                (self.cycle_within(&members), members)
            })
            .collect()
    }

    fn strongconnect(
        &self,
        v: usize,
        nodes: &[&String],
        index_of: &BTreeMap<&String, usize>,
        st: &mut Tarjan,
    ) {
        st.index[v] = Some(st.next);
        st.low[v] = st.next;
        st.next += 1;
        st.stack.push(v);
        st.on_stack[v] = true;
        for to in self.edges[nodes[v]].keys() {
            let w = index_of[to];
            match st.index[w] {
                None => {
                    self.strongconnect(w, nodes, index_of, st);
                    st.low[v] = st.low[v].min(st.low[w]);
                }
                Some(iw) if st.on_stack[w] => st.low[v] = st.low[v].min(iw),
                Some(_) => {}
            }
        }
        if Some(st.low[v]) == st.index[v] {
            let mut component = Vec::new();
            while let Some(w) = st.stack.pop() {
                st.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            st.components.push(component);
        }
    }

    /// A shortest cycle through the component's first member (breadth-first back to it).
    fn cycle_within(&self, members: &BTreeSet<String>) -> Vec<String> {
        let Some(start) = members.iter().next() else {
            return Vec::new();
        };
        let mut parent: BTreeMap<String, String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start.clone()]);
        while let Some(node) = queue.pop_front() {
            for to in self.edges[&node].keys().filter(|t| members.contains(*t)) {
                if to == start {
                    let mut path = vec![node.clone()];
                    let mut at = node.clone();
                    while let Some(p) = parent.get(&at) {
                        path.push(p.clone());
                        at = p.clone();
                    }
                    path.reverse();
                    return path;
                }
                if !parent.contains_key(to) && to != start {
                    parent.insert(to.clone(), node.clone());
                    queue.push_back(to.clone());
                }
            }
        }
        members.iter().cloned().collect()
    }

    fn describe(&self, (cycle, members): &(Vec<String>, BTreeSet<String>)) -> String {
        let mut out = String::new();
        for (i, from) in cycle.iter().enumerate() {
            let to = &cycle[(i + 1) % cycle.len()];
            out.push_str(&self.edge_line(from, to));
        }
        if members.len() > cycle.len() || self.edges_within(members).count() > cycle.len() {
            out.push_str("  all references inside this knot:\n");
            for (from, to) in self.edges_within(members) {
                out.push_str(&format!("  {}", self.edge_line(from, to)));
            }
        }
        out
    }

    fn edges_within<'a>(
        &'a self,
        members: &'a BTreeSet<String>,
    ) -> impl Iterator<Item = (&'a String, &'a String)> + 'a {
        members.iter().flat_map(move |from| {
            self.edges[from]
                .keys()
                .filter(|to| members.contains(*to))
                .map(move |to| (from, to))
        })
    }

    fn edge_line(&self, from: &str, to: &str) -> String {
        match self.edges.get(from).and_then(|e| e.get(to)) {
            Some(s) => format!("  {from} -> {to}   ({}:{})\n", s.file, s.line),
            None => format!("  {from} -> {to}\n"),
        }
    }
}

struct Tarjan {
    index: Vec<Option<usize>>,
    low: Vec<usize>,
    on_stack: Vec<bool>,
    stack: Vec<usize>,
    next: usize,
    components: Vec<Vec<usize>>,
}

fn read_sources(src: &Path) -> Vec<Source> {
    let mut files = Vec::new();
    collect_rs(src, &mut files);
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let rel = path
            .strip_prefix(src)
            .unwrap_or(&path)
            .to_string_lossy()
            .replace('\\', "/");
        if rel == "main.rs" || rel == "lib.rs" {
            continue;
        }
        let text = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let mut module: Vec<String> = rel
            .trim_end_matches(".rs")
            .split('/')
            .map(str::to_string)
            .collect();
        let is_mod_rs = module.last().is_some_and(|m| m == "mod");
        if is_mod_rs {
            module.pop();
        }
        out.push(Source {
            rel: format!("src/{rel}"),
            module,
            code: blank_comments_and_strings(&text),
            is_mod_rs,
        });
    }
    out
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text with comments (line, block, doc) and string/char literal contents replaced by
/// spaces; newlines stay, so byte offsets still give line numbers.
fn blank_comments_and_strings(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = b.to_vec();
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == b'/' && next == Some(b'/') {
            let end = b[i..]
                .iter()
                .position(|&x| x == b'\n')
                .map_or(b.len(), |p| i + p);
            blank(&mut out, i, end);
            i = end;
        } else if c == b'/' && next == Some(b'*') {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                if b[j] == b'/' && b.get(j + 1) == Some(&b'*') {
                    depth += 1;
                    j += 2;
                } else if b[j] == b'*' && b.get(j + 1) == Some(&b'/') {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if (c == b'r' || c == b'b')
            && !prev_is_ident(b, i)
            && raw_string_start(b, i).is_some()
        {
            let (hashes, body) = raw_string_start(b, i).unwrap_or((0, i));
            let mut closing = vec![b'"'];
            closing.extend(std::iter::repeat_n(b'#', hashes));
            let end = find(b, body, &closing).map_or(b.len(), |p| p + closing.len());
            blank(&mut out, body, end.saturating_sub(closing.len()).max(body));
            i = end;
        } else if c == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            blank(&mut out, i + 1, j.min(b.len()));
            i = j + 1;
        } else if c == b'\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a): only the former closes.
            if next == Some(b'\\') {
                let end = b[i + 2..]
                    .iter()
                    .position(|&x| x == b'\'')
                    .map_or(b.len(), |p| i + 2 + p);
                blank(&mut out, i + 1, end);
                i = end + 1;
            } else if let Some(len) = char_literal_len(&text[i + 1..]) {
                blank(&mut out, i + 1, i + 1 + len);
                i += len + 2;
            } else {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn prev_is_ident(b: &[u8], i: usize) -> bool {
    i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
}

/// `r"`, `r#"`, `br"`, `br#"`: the number of hashes and where the body starts.
fn raw_string_start(b: &[u8], i: usize) -> Option<(usize, usize)> {
    let mut j = i;
    if b[j] == b'b' {
        j += 1;
    }
    if b.get(j) != Some(&b'r') {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while b.get(j) == Some(&b'#') {
        hashes += 1;
        j += 1;
    }
    (b.get(j) == Some(&b'"')).then_some((hashes, j + 1))
}

fn find(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| from + p)
}

/// Length in bytes of one character followed by a closing quote, if that is what follows.
fn char_literal_len(rest: &str) -> Option<usize> {
    let ch = rest.chars().next()?;
    let len = ch.len_utf8();
    (rest.as_bytes().get(len) == Some(&b'\'')).then_some(len)
}

/// Names declared with `mod name;` (files of this module's folder).
fn declared_children(code: &str) -> BTreeSet<String> {
    let tokens = tokenize(code);
    let mut out = BTreeSet::new();
    for w in tokens.windows(3) {
        if w[0].text == "mod" && w[2].text == ";" && is_ident(&w[1].text) {
            out.insert(w[1].text.clone());
        }
    }
    out
}

/// `pub use child::{A, B as C}` in a mod.rs: item name as seen from outside → child file.
fn reexported_names(code: &str, kids: &BTreeSet<String>) -> BTreeMap<String, String> {
    let tokens = tokenize(code);
    let mut out = BTreeMap::new();
    let mut i = 0;
    while i + 1 < tokens.len() {
        if let Some(use_at) = use_after_pub(&tokens, i) {
            let mut j = use_at + 1;
            let mut paths = Vec::new();
            parse_use_tree(&tokens, &mut j, Vec::new(), &mut paths);
            for (path, alias) in paths {
                let mut segs: &[String] = &path;
                if segs.first().is_some_and(|s| s == "self") {
                    segs = &segs[1..];
                }
                if segs.len() >= 2 && kids.contains(&segs[0]) {
                    let name = alias.unwrap_or_else(|| segs[segs.len() - 1].clone());
                    out.insert(name, segs[0].clone());
                }
            }
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

/// The index of `use` when tokens at `i` start `pub use` or `pub(crate) use` (any
/// `pub(...)` restriction): a re-export, whatever its reach.
fn use_after_pub(tokens: &[Token], i: usize) -> Option<usize> {
    if tokens.get(i)?.text != "pub" {
        return None;
    }
    let mut j = i + 1;
    if tokens.get(j)?.text == "(" {
        while tokens.get(j)?.text != ")" {
            j += 1;
        }
        j += 1;
    }
    (tokens.get(j)?.text == "use").then_some(j)
}

#[derive(Debug, Clone)]
struct Token {
    text: String,
    line: usize,
}

fn is_ident(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

fn tokenize(code: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut line = 1;
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token {
                text: chars[start..i].iter().collect(),
                line,
            });
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push(Token {
                text: "::".into(),
                line,
            });
            i += 2;
        } else {
            out.push(Token {
                text: c.to_string(),
                line,
            });
            i += 1;
        }
    }
    out
}

/// Parses a path or use tree at `tokens[*i]` onwards (`a::b::{c, d::e as f, *}`), appending
/// each leaf path (prefix included) and its alias.
fn parse_use_tree(
    tokens: &[Token],
    i: &mut usize,
    prefix: Vec<String>,
    out: &mut Vec<(Vec<String>, Option<String>)>,
) {
    let mut path = prefix;
    loop {
        let Some(t) = tokens.get(*i) else {
            out.push((path, None));
            return;
        };
        if t.text == "{" {
            *i += 1;
            loop {
                match tokens.get(*i).map(|t| t.text.as_str()) {
                    None => return,
                    Some("}") => {
                        *i += 1;
                        return;
                    }
                    Some(",") => *i += 1,
                    Some(_) => parse_use_tree(tokens, i, path.clone(), out),
                }
            }
        }
        if t.text == "*" {
            *i += 1;
            out.push((path, None));
            return;
        }
        if !is_ident(&t.text) {
            out.push((path, None));
            return;
        }
        path.push(t.text.clone());
        *i += 1;
        if tokens.get(*i).is_some_and(|t| t.text == "::") {
            *i += 1;
            continue;
        }
        let mut alias = None;
        if tokens.get(*i).is_some_and(|t| t.text == "as") {
            alias = tokens.get(*i + 1).map(|t| t.text.clone());
            *i += 2;
        }
        // `self` in a group names the prefix itself.
        if path.last().is_some_and(|s| s == "self") && path.len() > 1 {
            path.pop();
        }
        out.push((path, alias));
        return;
    }
}

/// Every module path this file refers to (absolute, from the crate root), with its line.
/// Inline `mod name { ... }` blocks are tracked so `super::` inside them resolves right.
fn references(s: &Source, kids: &BTreeSet<String>) -> Vec<(Vec<String>, usize)> {
    let tokens = tokenize(&s.code);
    let mut out = Vec::new();
    // Inline modules open at brace depth d: (name, d).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i].text;
        match t.as_str() {
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            "mod" if tokens.get(i + 2).is_some_and(|t| t.text == "{") => {
                inline.push((tokens[i + 1].text.clone(), depth));
            }
            _ => {}
        }
        // A folder's re-exports (`pub use child::Item` in mod.rs) are its facade, not a
        // dependency of its own items: they only tell where a `super::Item` really points.
        if s.is_mod_rs && inline.is_empty() && use_after_pub(&tokens, i).is_some() {
            while i < tokens.len() && tokens[i].text != ";" {
                i += 1;
            }
            continue;
        }
        let preceded_by_path = i > 0 && tokens[i - 1].text == "::";
        let starts_path = !preceded_by_path
            && tokens.get(i + 1).is_some_and(|n| n.text == "::")
            && (t == "crate"
                || t == "super"
                || t == "self"
                || (s.is_mod_rs && inline.is_empty() && kids.contains(t)));
        if !starts_path {
            i += 1;
            continue;
        }
        let line = tokens[i].line;
        let mut j = i;
        let mut paths = Vec::new();
        parse_use_tree(&tokens, &mut j, Vec::new(), &mut paths);
        let mut here: Vec<String> = s.module.clone();
        here.extend(inline.iter().map(|(n, _)| n.clone()));
        for (path, _) in paths {
            if let Some(abs) = resolve(&here, &path) {
                out.push((abs, line));
            }
        }
        // Keep scanning inside the tree for braces, but not for nested path starts.
        while i < j {
            match tokens[i].text.as_str() {
                "{" => depth += 1,
                "}" => depth = depth.saturating_sub(1),
                _ => {}
            }
            i += 1;
        }
    }
    out
}

/// `crate::a::b` → `[a, b]`; `super::x` from `[p, q]` → `[p, x]`; `self::x` / `x::` (a
/// child) from `[p]` → `[p, x]`. `None` for a path that leaves the crate.
fn resolve(here: &[String], path: &[String]) -> Option<Vec<String>> {
    let mut base: Vec<String>;
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate") => {
            base = Vec::new();
            rest = &path[1..];
        }
        Some("super") => {
            base = here.to_vec();
            while rest.first().is_some_and(|s| s == "super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        Some("self") => {
            base = here.to_vec();
            rest = &path[1..];
        }
        _ => base = here.to_vec(),
    }
    base.extend(rest.iter().cloned());
    Some(base)
}
