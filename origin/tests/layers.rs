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

/// Appends every `.rs` file at or below `path` to `out`.
fn sources(path: &Path, out: &mut String) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            sources(&entry.unwrap().path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push_str(&std::fs::read_to_string(path).unwrap());
    }
}

/// Each top-level module of `src/` and the top-level modules it uses.
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
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

/// The tables no area owns: the plumbing's (`events/`, `users.rs`).
const PLUMBING_TABLES: [&str; 4] = ["outbox", "processed_events", "event_stream_progress", "users"];

/// Each area's tables, read from README.md's area table (its "owns" column; a
/// name ending in `*` stands for every table it starts).
fn owners_from_readme() -> BTreeMap<String, Vec<String>> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let mut owners = BTreeMap::new();
    for line in readme.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [_, area, _, owns, _] = cells[..] else { continue };
        let Some(area) = area.strip_prefix('`').and_then(|a| a.strip_suffix("/`")) else { continue };
        if !AREAS.contains(&area) {
            continue;
        }
        let tables =
            owns.split(',').filter_map(|t| t.trim().strip_prefix('`')?.strip_suffix('`').map(str::to_owned)).collect();
        owners.insert(area.to_owned(), tables);
    }
    owners
}

fn owns(patterns: &[String], table: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => table.starts_with(prefix),
        None => p == table,
    })
}

/// The tables SQL in `source` names after FROM, JOIN, INTO, UPDATE or TABLE.
fn tables_named(source: &str) -> BTreeSet<String> {
    let words: Vec<&str> =
        source.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|w| !w.is_empty()).collect();
    words
        .windows(2)
        .filter(|w| matches!(w[0], "FROM" | "JOIN" | "INTO" | "UPDATE" | "TABLE"))
        .map(|w| w[1].to_owned())
        .filter(|t| t.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect()
}

/// Every table the migrations create.
fn migrated_tables() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        text.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(3)
        .filter(|w| w[0].eq_ignore_ascii_case("CREATE") && w[1].eq_ignore_ascii_case("TABLE"))
        .map(|w| if w[2].eq_ignore_ascii_case("IF") { "" } else { w[2] })
        .chain(
            words
                .windows(6)
                .filter(|w| w[0].eq_ignore_ascii_case("CREATE") && w[2].eq_ignore_ascii_case("IF"))
                .map(|w| w[5]),
        )
        .map(|t| t.trim_end_matches('(').to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The SQL of each area's own source files.
fn area_sources() -> BTreeMap<&'static str, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    AREAS
        .iter()
        .map(|area| {
            let mut text = String::new();
            for path in [src.join(area), src.join(format!("{area}.rs"))].iter().filter(|p| p.exists()) {
                sources(path, &mut text);
            }
            (*area, text)
        })
        .collect()
}

/// Tables named in `sql` that belong to an area other than `area`.
fn foreign_tables(owners: &BTreeMap<String, Vec<String>>, area: &str, sql: &str) -> Vec<(String, String)> {
    tables_named(sql)
        .into_iter()
        .filter_map(|table| {
            let owner = owners.iter().find(|(_, tables)| owns(tables, &table))?.0;
            (owner != area).then(|| (table, owner.clone()))
        })
        .collect()
}

#[test]
fn every_table_has_one_owner_in_the_readme() {
    let owners = owners_from_readme();
    assert_eq!(owners.len(), AREAS.len(), "README.md's area table names every area: {owners:?}");
    for table in migrated_tables() {
        let claimed: Vec<_> = owners.iter().filter(|(_, tables)| owns(tables, &table)).map(|(a, _)| a).collect();
        let plumbing = PLUMBING_TABLES.contains(&table.as_str());
        assert!(
            claimed.len() + usize::from(plumbing) == 1,
            "table `{table}` is owned by {claimed:?}{}: README.md's area table gives each table one owner",
            if plumbing { " and the plumbing" } else { "" }
        );
    }
}

#[test]
fn an_area_names_in_sql_only_its_own_tables() {
    let owners = owners_from_readme();
    for (area, source) in area_sources() {
        let foreign = foreign_tables(&owners, area, &source);
        assert!(foreign.is_empty(), "`{area}` names other areas' tables in its SQL (table, owner): {foreign:?}");
    }
}

#[test]
fn the_table_check_sees_a_foreign_table_in_any_clause() {
    let owners = owners_from_readme();
    let sql = "SELECT n.id FROM notifications n JOIN follows f ON f.user_id = n.user_id";
    assert_eq!(foreign_tables(&owners, "notifications", sql), [("follows".to_owned(), "followers".to_owned())]);
    assert!(
        foreign_tables(&owners, "followers", sql).contains(&("notifications".to_owned(), "notifications".to_owned()))
    );
    assert_eq!(foreign_tables(&owners, "notifications", "DELETE FROM push_messages WHERE sent"), []);
    assert_eq!(foreign_tables(&owners, "audit", "UPDATE orders SET status = 'x'").len(), 1);
    assert_eq!(foreign_tables(&owners, "audit", "-- the rows that come from the orders"), [], "prose is not SQL");
}

/// The modules of one folder of `src/` and, for each, its siblings it names
/// (`super::x` from a file beside them, `super::super::x` from a folder's files,
/// or `crate::<folder>::x`).
fn sibling_imports(dir: &Path, crate_path: &str) -> BTreeMap<String, BTreeSet<String>> {
    fn files(path: &Path, depth: usize, out: &mut Vec<(usize, String)>) {
        if path.is_dir() {
            for entry in std::fs::read_dir(path).unwrap() {
                files(&entry.unwrap().path(), depth + 1, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            // `mod.rs` is its folder's own module: one level up.
            let depth = if path.file_name().is_some_and(|n| n == "mod.rs") { depth - 1 } else { depth };
            // Comments name modules in prose; only code imports.
            let text = std::fs::read_to_string(path).unwrap();
            let code: Vec<&str> = text.lines().filter(|l| !l.trim_start().starts_with("//")).collect();
            out.push((depth, code.join("\n")));
        }
    }
    let modules: Vec<(String, std::path::PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() || p.extension().is_some_and(|e| e == "rs"))
        .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), p))
        .filter(|(name, _)| name != "mod" && name != "tests")
        .collect();
    let names: BTreeSet<&str> = modules.iter().map(|(n, _)| n.as_str()).collect();
    let mut graph = BTreeMap::new();
    for (name, path) in &modules {
        let mut sources = Vec::new();
        files(path, 0, &mut sources);
        let mut used = BTreeSet::new();
        for (depth, text) in sources {
            let supers = format!("{}::", vec!["super"; depth + 1].join("::"));
            for prefix in [supers, format!("crate::{crate_path}::")] {
                for found in crate_paths(&text.replace(&prefix, "crate::")) {
                    if names.contains(found.as_str()) && found != *name {
                        used.insert(found);
                    }
                }
            }
        }
        graph.insert(name.clone(), used);
    }
    graph
}

fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            return Some(path[i..].to_vec());
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_owned());
        for next in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|m| visit(m, graph, &mut Vec::new(), &mut done))
}

/// Inside an area too, files form layers: two files that import each other (as
/// `push.rs` and `web_push.rs`, or `drops.rs` and `terms.rs`, once did) are one
/// concern split in the wrong place.
#[test]
fn no_two_files_of_a_folder_import_each_other() {
    fn folders(dir: &Path, crate_path: &str, out: &mut Vec<(std::path::PathBuf, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                let inner = if crate_path.is_empty() { name } else { format!("{crate_path}::{name}") };
                out.push((path.clone(), inner.clone()));
                folders(&path, &inner, out);
            }
        }
    }
    let mut all = Vec::new();
    folders(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), "", &mut all);
    assert!(all.iter().any(|(_, p)| p == "notifications::push"), "read the folders: {all:?}");
    for (dir, crate_path) in all {
        let graph = sibling_imports(&dir, &crate_path);
        assert_eq!(cycle(&graph), None, "files of `{crate_path}` import each other: {graph:?}");
    }
}

#[test]
fn the_cycle_check_finds_a_circle() {
    let graph = |edges: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            g.entry(a.to_string()).or_default().insert(b.to_string());
            g.entry(b.to_string()).or_default();
        }
        g
    };
    assert_eq!(cycle(&graph(&[("a", "b"), ("b", "c")])), None);
    assert_eq!(cycle(&graph(&[("a", "b"), ("b", "c"), ("c", "a")])), Some(vec!["a".into(), "b".into(), "c".into()]));
}
