//! The origin's layering, read off its source: plumbing never reaches into a
//! business area, an area reaches only into the areas below it, and no two
//! top-level modules import each other. Only start-up and the command line see
//! every area. (README.md, "Architecture", says the same in prose.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The business areas, lowest first: each may use only those before it.
const AREAS: [&str; 8] =
    ["audit", "payments", "orders", "media", "catalogue", "notifications", "followers", "analytics"];
/// The modules that assemble everything.
const TOP: [&str; 3] = ["startup", "cli", "lib"];

/// The top-level modules of `crate::…` paths in `source`.
fn crate_paths(source: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = source;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let end = group
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map(|(i, _)| i)
                .unwrap_or(group.len());
            let mut item_depth = 0;
            let mut start = 0;
            let inner = &group[..end];
            for (i, c) in inner.char_indices().chain([(inner.len(), ',')]) {
                match c {
                    '{' => item_depth += 1,
                    '}' => item_depth -= 1,
                    ',' if item_depth == 0 => {
                        found.insert(first_segment(&inner[start..i]));
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(first_segment(rest));
        }
    }
    found.remove("");
    found
}

fn first_segment(path: &str) -> String {
    path.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// Each top-level module of `src/` and the top-level modules it uses.
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    fn sources(path: &Path, out: &mut String) {
        if path.is_dir() {
            for entry in std::fs::read_dir(path).unwrap() {
                sources(&entry.unwrap().path(), out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(path).unwrap());
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut deps = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "main" {
            continue;
        }
        let mut text = String::new();
        sources(&path, &mut text);
        let mut used = crate_paths(&text);
        used.remove(&name);
        deps.entry(name).or_insert_with(BTreeSet::new).extend(used);
    }
    deps
}

#[test]
fn the_parser_reads_paths_and_groups() {
    let found = crate_paths("use crate::{a::B, c, d::{e, f}};\nlet x = crate::g::h(); use crate::i;");
    assert_eq!(found, ["a", "c", "d", "g", "i"].iter().map(|s| s.to_string()).collect());
}

#[test]
fn plumbing_stands_below_every_area_and_areas_only_on_lower_ones() {
    let deps = dependencies();
    assert!(deps.contains_key("orders") && deps.contains_key("state"), "read the modules: {:?}", deps.keys());
    for (module, used) in &deps {
        if TOP.contains(&module.as_str()) {
            continue;
        }
        let top: Vec<_> = used.iter().filter(|u| TOP.contains(&u.as_str())).collect();
        assert!(top.is_empty(), "`{module}` uses {top:?}, which only assemble the areas");
        let allowed: &[&str] = match AREAS.iter().position(|a| a == module) {
            Some(level) => &AREAS[..level],
            None => &[],
        };
        for used in used.iter().filter(|u| AREAS.contains(&u.as_str())) {
            assert!(allowed.contains(&used.as_str()), "`{module}` uses the area `{used}`; it may use {allowed:?}");
        }
    }
}

#[test]
fn no_two_modules_import_each_other() {
    let deps = dependencies();
    let inner: BTreeMap<&String, Vec<&String>> = deps
        .iter()
        .filter(|(m, _)| !TOP.contains(&m.as_str()))
        .map(|(m, used)| (m, used.iter().filter(|u| deps.contains_key(*u) && !TOP.contains(&u.as_str())).collect()))
        .collect();
    fn visit<'a>(
        m: &'a String,
        graph: &BTreeMap<&'a String, Vec<&'a String>>,
        path: &mut Vec<&'a String>,
        done: &mut BTreeSet<&'a String>,
    ) {
        if let Some(i) = path.iter().position(|p| *p == m) {
            panic!("import cycle: {:?}", &path[i..]);
        }
        if done.contains(m) {
            return;
        }
        path.push(m);
        for next in graph.get(m).into_iter().flatten() {
            visit(next, graph, path, done);
        }
        path.pop();
        done.insert(m);
    }
    let mut done = BTreeSet::new();
    for m in inner.keys() {
        visit(m, &inner, &mut Vec::new(), &mut done);
    }
}
