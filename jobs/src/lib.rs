//! slipway-jobs: every job slipway runs, and the small adapters the jobs drive.
//!
//! [`runner`] runs every job under one protocol (lock, recover first, run record, metrics,
//! notifications). Each job module (`rollout`, `snapshot`, …) exposes `XOptions`, a plan type where the job
//! changes anything, and `pub async fn x(…) -> Result<XReport>`. Reports are plain
//! `Serialize` structs with a `Display` for humans: the CLI prints one or the other.
//! Adapters (`desired`, `docker`, `archive`, `remote`, `health`, `lock`) wrap one external
//! system each, with domain types in and out. The shared model sits between them: `types`,
//! `config`, `manifest`, `layout` (every path and key of the backup store, and its one
//! walker), `offsite` (the remote copy of the store as the jobs read it) and `naming` (the
//! names of containers a rollout sets aside). Imports form no cycle (see the tests below).
//! Library code never prints.
#![deny(clippy::print_stdout, clippy::print_stderr)]

// The adapters: one external system each (jobs/src/adapters/).
pub mod adapters;

// The shared model every job and adapter speaks (jobs/src/model/): ids and types, the two
// configuration files, the backup store's layout, the rollout's steps, errors. Module paths
// stay flat (`crate::layout`, `crate::types`), the folder shows the room.
#[path = "model/blocking.rs"]
pub mod blocking;
#[path = "model/config/mod.rs"]
pub mod config;
#[path = "model/container.rs"]
pub mod container;
#[path = "model/crypt.rs"]
pub mod crypt;
#[path = "model/error.rs"]
pub mod error;
#[path = "model/fsutil.rs"]
pub mod fsutil;
#[path = "model/journal.rs"]
pub mod journal;
#[path = "model/layout.rs"]
pub mod layout;
#[path = "model/manifest.rs"]
pub mod manifest;
#[path = "model/naming.rs"]
pub mod naming;
#[path = "model/progress.rs"]
pub mod progress;
#[path = "model/retention.rs"]
pub mod retention;
#[path = "model/step.rs"]
pub mod step;
#[path = "model/testpoint.rs"]
pub mod testpoint;
#[path = "model/types.rs"]
pub mod types;

// The jobs (one module each) and the job-side rules several of them share: the runner (the
// job protocol), the job context, undo, trust and the off-site copy.
pub mod context;
pub mod database;
pub mod doctor;
pub mod drill;
pub mod held_routes;
pub mod init;
pub mod offsite;
pub mod prune;
pub mod reconcile;
pub mod recover;
pub mod restore;
pub mod rollback;
pub mod rollout;
pub mod runner;
pub mod runs;
pub mod snapshot;
pub mod stack_tenant;
pub mod stack_undo;
pub mod status;
pub mod sync;
pub mod trust;
pub mod undo;
pub mod verify;

pub use error::{Error, ExitKind, Result};

#[cfg(test)]
mod architecture_tests {
    //! The rooms' rules, read from the sources: adapters know nothing of jobs; no two modules
    //! import each other, directly or round a loop; only `layout` spells the backup store's
    //! paths and only `naming` the name of a container set aside by a rollout.

    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    /// The job modules: adapters may not name any of them.
    const JOBS: &[&str] = &[
        "doctor",
        "drill",
        "init",
        "prune",
        "reconcile",
        "recover",
        "restore",
        "rollback",
        "rollout",
        "runs",
        "snapshot",
        "status",
        "sync",
        "verify",
        "retention",
        "context",
        "undo",
        "stack_undo",
        "trust",
        "offsite",
        "runner",
    ];

    fn src_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
    }

    /// Every `.rs` file under `src/`, sorted.
    fn sources() -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let p = entry.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|e| e == "rs") {
                    out.push(p);
                }
            }
        }
        let mut out = Vec::new();
        walk(&src_dir(), &mut out);
        out.sort();
        out
    }

    /// The module a source file is, as `use crate::…` names it: `sync`, `adapters::docker`;
    /// `config` is one room of several files; the crate root is `crate`.
    fn module_of(path: &Path) -> String {
        let rel = path.strip_prefix(src_dir()).unwrap().with_extension("");
        let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        // model/ is a folder of flat modules (`#[path]` in lib.rs): crate::layout, not crate::model::layout.
        if parts.first().is_some_and(|p| p == "model") {
            parts.remove(0);
        }
        match parts.as_slice() {
            [one] if one == "lib" => "crate".into(),
            [one] => one.clone(),
            [dir, _] if dir == "config" => dir.clone(),
            [dir, file] if file == "mod" => dir.clone(),
            [dir, file] => format!("{dir}::{file}"),
            // A module split into a folder of its own (adapters/archive/…) is one room.
            [dir, sub, _] => format!("{dir}::{sub}"),
            _ => panic!("unexpected module depth: {}", path.display()),
        }
    }

    /// A source with its comments dropped and each string literal emptied (`code`), and the
    /// string literals themselves, each with the code just before it.
    struct Lexed {
        code: String,
        strings: Vec<(String, String)>,
    }

    fn lex(src: &str) -> Lexed {
        let c: Vec<char> = src.chars().collect();
        let ident = |i: usize| i < c.len() && (c[i].is_alphanumeric() || c[i] == '_');
        let (mut code, mut strings) = (String::new(), Vec::new());
        let mut i = 0;
        while i < c.len() {
            let prev_ident = i > 0 && ident(i - 1);
            if c[i] == '/' && c.get(i + 1) == Some(&'/') {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
            } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                let mut depth = 0;
                loop {
                    if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            } else if c[i] == 'r' && (!prev_ident || (c[i - 1] == 'b' && !(i > 1 && ident(i - 2)))) && {
                let mut j = i + 1;
                while c.get(j) == Some(&'#') {
                    j += 1;
                }
                c.get(j) == Some(&'"')
            } {
                let mut j = i + 1;
                while c[j] == '#' {
                    j += 1;
                }
                let hashes = j - i - 1;
                let close: String = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
                let rest: String = c[j + 1..].iter().collect();
                let end = rest.find(&close).unwrap();
                strings.push((rest[..end].to_string(), code.clone()));
                code.push_str("\"\"");
                i = j + 1 + rest[..end].chars().count() + close.chars().count();
            } else if c[i] == '"' {
                let mut s = String::new();
                i += 1;
                while c[i] != '"' {
                    if c[i] == '\\' {
                        s.push(c[i]);
                        i += 1;
                    }
                    s.push(c[i]);
                    i += 1;
                }
                i += 1;
                strings.push((s, code.clone()));
                code.push_str("\"\"");
            } else if c[i] == '\'' && (c.get(i + 1) == Some(&'\\') || c.get(i + 2) == Some(&'\'')) {
                // A char literal (a lifetime has no closing quote two chars on).
                i += 1;
                while c[i] != '\'' {
                    i += if c[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
                code.push_str("' '");
            } else {
                code.push(c[i]);
                i += 1;
            }
        }
        Lexed { code, strings }
    }

    /// The paths a `use crate::…` tree or a `crate::a::b` path names, one per leaf.
    fn crate_paths(code: &str) -> Vec<Vec<String>> {
        fn tree(c: &[char], i: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
            let skip_ws = |i: &mut usize| {
                while *i < c.len() && c[*i].is_whitespace() {
                    *i += 1;
                }
            };
            let mut path = prefix;
            loop {
                skip_ws(i);
                if *i < c.len() && c[*i] == '{' {
                    *i += 1;
                    loop {
                        tree(c, i, path.clone(), out);
                        skip_ws(i);
                        match c.get(*i) {
                            Some(',') => *i += 1,
                            Some('}') => {
                                *i += 1;
                                return;
                            }
                            _ => return,
                        }
                        skip_ws(i);
                        if c.get(*i) == Some(&'}') {
                            *i += 1;
                            return;
                        }
                    }
                }
                let start = *i;
                while *i < c.len() && (c[*i].is_alphanumeric() || c[*i] == '_') {
                    *i += 1;
                }
                if *i > start {
                    path.push(c[start..*i].iter().collect());
                }
                if c.get(*i) == Some(&':') && c.get(*i + 1) == Some(&':') {
                    *i += 2;
                } else {
                    out.push(path);
                    return;
                }
            }
        }
        let c: Vec<char> = code.chars().collect();
        let mut out = Vec::new();
        let mut from = 0;
        while let Some(at) = code[from..].find("crate::") {
            let byte = from + at;
            let before_ident = code[..byte].chars().next_back().is_some_and(|ch| ch.is_alphanumeric() || ch == '_');
            from = byte + "crate::".len();
            if before_ident {
                continue;
            }
            let mut i = code[..from].chars().count();
            tree(&c, &mut i, Vec::new(), &mut out);
        }
        let _ = c;
        out
    }

    /// Module → the modules it names (itself left out).
    fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
        let files = sources();
        let modules: BTreeSet<String> = files.iter().map(|p| module_of(p)).collect();
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for path in &files {
            let from = module_of(path);
            let lexed = lex(&std::fs::read_to_string(path).unwrap());
            let deps = graph.entry(from.clone()).or_default();
            for p in crate_paths(&lexed.code) {
                let two = p.iter().take(2).cloned().collect::<Vec<_>>().join("::");
                let target = if modules.contains(&two) { two } else { p.first().cloned().unwrap_or_default() };
                if modules.contains(&target) && target != from {
                    deps.insert(target);
                }
            }
        }
        graph
    }

    /// A loop in `graph`, as the modules round it, if there is one.
    fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
        fn visit(
            n: &str,
            graph: &BTreeMap<String, BTreeSet<String>>,
            done: &mut BTreeSet<String>,
            stack: &mut Vec<String>,
        ) -> Option<Vec<String>> {
            if let Some(at) = stack.iter().position(|s| s == n) {
                let mut cycle = stack[at..].to_vec();
                cycle.push(n.to_string());
                return Some(cycle);
            }
            if done.contains(n) {
                return None;
            }
            stack.push(n.to_string());
            for m in graph.get(n).into_iter().flatten() {
                if let Some(c) = visit(m, graph, done, stack) {
                    return Some(c);
                }
            }
            stack.pop();
            done.insert(n.to_string());
            None
        }
        let mut done = BTreeSet::new();
        graph.keys().find_map(|n| visit(n, graph, &mut done, &mut Vec::new()))
    }

    #[test]
    fn adapters_use_no_job_module() {
        let mut offences = Vec::new();
        for (from, deps) in import_graph() {
            if from.starts_with("adapters") {
                offences.extend(deps.iter().filter(|d| JOBS.contains(&d.as_str())).map(|d| format!("{from} uses {d}")));
            }
        }
        assert!(offences.is_empty(), "adapters must not depend on jobs: {offences:?}");
    }

    /// The modules of the shared model: the files under `src/model/`.
    fn model_modules() -> BTreeSet<String> {
        let model = src_dir().join("model");
        sources().iter().filter(|p| p.starts_with(&model)).map(|p| module_of(p)).collect()
    }

    /// The edges of `graph` out of the model into anything that is not model.
    fn model_offences(graph: &BTreeMap<String, BTreeSet<String>>, model: &BTreeSet<String>) -> Vec<String> {
        let mut offences = Vec::new();
        for (from, deps) in graph.iter().filter(|(from, _)| model.contains(*from)) {
            offences.extend(deps.iter().filter(|d| !model.contains(*d)).map(|d| format!("{from} uses {d}")));
        }
        offences
    }

    #[test]
    fn the_model_uses_no_adapter_no_run_context_and_no_job() {
        let model = model_modules();
        // The walk sees the model: its rooms are there, and the job side is not.
        for m in ["step", "types", "config", "error", "container", "testpoint", "journal"] {
            assert!(model.contains(m), "{m} not found in the model {model:?}");
        }
        assert!(!model.contains("context") && !model.contains("adapters::docker") && !model.contains("undo"));
        let offences = model_offences(&import_graph(), &model);
        assert!(
            offences.is_empty(),
            "the model (jobs/src/model/) names only the model: move the type into the model, or fire the point \
             from the caller: {offences:?}"
        );
        // The check sees such an edge: a step that imports the engine's types and the context.
        let mut g = BTreeMap::new();
        g.insert("step".to_string(), ["adapters::docker", "context", "config"].map(String::from).into());
        assert_eq!(model_offences(&g, &model), ["step uses adapters::docker", "step uses context"]);
    }

    /// Calls that make a run id, start, reopen or finish a run record, or write a journal row
    /// (with a word of its own): only `context` (the run record's owner, through its `RunGuard`
    /// and its typed `begin`) may make them.
    const RUN_RECORD_CALLS: &[&str] = &[
        "RunId::new(",
        "store.start_run(",
        "store.reopen_run(",
        "store.finish_run(",
        "store.begin_step(",
        "store.end_step(",
        "store.end_step_and_begin(",
    ];

    /// The run-record calls in `module`'s non-test code, outside `context`.
    fn run_record_calls(module: &str, src: &str) -> Vec<String> {
        let code = lex(src.split("#[cfg(test)]").next().unwrap_or_default()).code;
        let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        RUN_RECORD_CALLS
            .iter()
            .filter(|call| module != "context" && code.contains(**call))
            .map(|call| format!("{module}: {call}"))
            .collect()
    }

    #[test]
    fn only_the_run_guard_makes_a_run_id_or_starts_or_finishes_a_run() {
        let mut offences = Vec::new();
        for path in sources() {
            let test_only = path.file_name().is_some_and(|n| n.to_string_lossy().ends_with("tests.rs"));
            if !test_only {
                offences.extend(run_record_calls(&module_of(&path), &std::fs::read_to_string(&path).unwrap()));
            }
        }
        assert!(
            offences.is_empty(),
            "start a run with ctx.start_run and finish it with its RunGuard (context owns the run record): {offences:?}"
        );
        // The check sees such a call in code, across a line break, and not in a comment or a test.
        let src =
            "// RunId::new() in a comment\nfn f() { let id = RunId::new(); ctx.store\n  .finish_run(&id, w, 1, s) }\n\
                   #[cfg(test)]\nfn t() { RunId::new(); }";
        assert_eq!(run_record_calls("trust", src), ["trust: RunId::new(", "trust: store.finish_run("]);
        assert!(run_record_calls("context", src).is_empty());
    }

    #[test]
    fn no_modules_import_each_other_round_a_loop() {
        let graph = import_graph();
        // The parser sees what it must: these edges exist today.
        for (from, to) in [("restore", "layout"), ("prune", "offsite"), ("adapters::health", "adapters::docker")] {
            assert!(graph[from].contains(to), "{from} -> {to} not found in {graph:?}");
        }
        assert_eq!(find_cycle(&graph), None, "an import cycle among the modules of jobs/src");
    }

    #[test]
    fn the_cycle_finder_finds_a_loop_and_the_parser_reads_grouped_imports() {
        let paths = crate_paths(&lex("use crate::{a::{self, B}, c};\nfn f() { crate::d::e(); my_crate::x(); }").code);
        let want: Vec<Vec<String>> = [&["a", "self"][..], &["a", "B"], &["c"], &["d", "e"]]
            .iter()
            .map(|p| p.iter().map(|s| s.to_string()).collect())
            .collect();
        assert_eq!(paths, want);
        let g = |edges: &[(&str, &str)]| {
            let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for (a, b) in edges {
                m.entry(a.to_string()).or_default().insert(b.to_string());
                m.entry(b.to_string()).or_default();
            }
            m
        };
        assert_eq!(find_cycle(&g(&[("restore", "sync"), ("sync", "layout")])), None);
        let cycle = find_cycle(&g(&[("restore", "sync"), ("sync", "verify"), ("verify", "restore")])).unwrap();
        assert_eq!(cycle.first(), cycle.last());
        assert_eq!(cycle.len(), 4);
    }

    /// Words only `layout` may spell in a string literal: pieces of the backup store's paths.
    const STORE_WORDS: &[&str] = &["daily/", "rollout/", "MANIFEST.json", ".tar.zst", ".files.json", "remote-cache"];
    /// Literals only `layout` may be: a kind's directory or a store directory.
    const STORE_NAMES: &[&str] = &["daily", "tenants", "remote-cache", "control-plane"];
    /// Allowed elsewhere: retention rules are named after restic's `--keep-daily`, not the dir.
    const ALLOWED: &[(&str, &str)] = &[("retention", "daily")];

    /// The string literals of `module`'s non-test code that spell the store's layout.
    fn store_spellings(module: &str, src: &str) -> Vec<String> {
        let non_test = src.split("#[cfg(test)]").next().unwrap_or_default();
        let mut out = Vec::new();
        for (s, before) in lex(non_test).strings {
            let word = STORE_WORDS.iter().any(|w| s.contains(w));
            let name = STORE_NAMES.contains(&s.as_str()) && !ALLOWED.contains(&(module, s.as_str()));
            let kind_dir = (s == "rollout" || s == "daily") && before.trim_end().ends_with("join(");
            let aside = s.contains("pre-rollout") && module != "naming";
            if word || name || kind_dir || aside {
                out.push(format!("{module}: \"{s}\""));
            }
        }
        out
    }

    #[test]
    fn only_layout_spells_the_backup_store_and_only_naming_a_set_aside_container() {
        let mut offences = Vec::new();
        for path in sources() {
            let module = module_of(&path);
            // A `tests.rs` (or `<what>_tests.rs`) is test code in a file of its own.
            let test_only = path.file_name().is_some_and(|n| n.to_string_lossy().ends_with("tests.rs"));
            if module != "layout" && !test_only {
                offences.extend(store_spellings(&module, &std::fs::read_to_string(&path).unwrap()));
            }
        }
        assert!(offences.is_empty(), "use crate::layout (or crate::naming) instead of spelling: {offences:?}");
    }

    #[test]
    fn the_spelling_check_sees_literals_and_not_comments() {
        let src = "// daily/ in a comment\nfn f() { root.join(\"rollout\"); x(\"MANIFEST.json\"); y(r#\"a/daily/b\"#); }\nfn g() { run(\"rollout\"); z('\"'); }";
        assert_eq!(
            store_spellings("sync", src),
            ["sync: \"rollout\"", "sync: \"MANIFEST.json\"", "sync: \"a/daily/b\""]
        );
        assert!(store_spellings("retention", "fn f() { (1, \"daily\") }").is_empty());
        assert_eq!(store_spellings("status", "fn f() { s.kind == \"daily\" }"), ["status: \"daily\""]);
    }

    /// Calls that resolve a path by name and act on what they find (following a symlink on
    /// the way): on a tenant's tree, only `adapters::confined` may make them, beneath a dir fd.
    const UNCONFINED: &[&str] = &[
        "remove_dir_all(",
        "fs::hard_link(",
        "fs::symlink(",
        "lchown(",
        "set_permissions(",
        "set_file_times(",
        "set_symlink_file_times(",
        "renameat_with(",
        "RenameFlags::EXCHANGE",
        "fs::copy(",
    ];
    /// Where such a call is on no tenant's tree, and why.
    const UNCONFINED_ALLOWED: &[(&str, &str, &str)] = &[
        // The control-plane dirs are the host's, named in its config, staged into a temp dir of
        // slipway's own before they are archived.
        ("snapshot", "fs::symlink(", "control plane"),
        ("snapshot", "fs::copy(", "control plane"),
        // Yesterday's archive linked (or copied) into today's dir of the backup store.
        ("adapters::archive", "fs::hard_link(", "backup store"),
        ("adapters::archive", "fs::copy(", "backup store"),
    ];

    /// The unconfined calls in `module`'s non-test code that no allowance covers.
    fn unconfined_calls(module: &str, src: &str) -> Vec<String> {
        let code = lex(src.split("#[cfg(test)]").next().unwrap_or_default()).code;
        UNCONFINED
            .iter()
            .filter(|call| code.contains(**call))
            .filter(|call| !UNCONFINED_ALLOWED.iter().any(|(m, c, _)| *m == module && c == *call))
            .map(|call| format!("{module}: {call}"))
            .collect()
    }

    #[test]
    fn only_the_confined_layer_acts_on_a_path_under_a_tenant_root() {
        let mut offences = Vec::new();
        for path in sources() {
            let module = module_of(&path);
            let test_only = path.file_name().is_some_and(|n| n.to_string_lossy().ends_with("tests.rs"));
            if module != "adapters::confined" && module != "crate" && !test_only {
                offences.extend(unconfined_calls(&module, &std::fs::read_to_string(&path).unwrap()));
            }
        }
        assert!(offences.is_empty(), "go through adapters::confined (a dir handle, nothing followed): {offences:?}");
        // The check sees a call in code, not in a comment or a test.
        let src = "// remove_dir_all( in a comment\nfn f() { std::fs::remove_dir_all(p); }\n#[cfg(test)]\nfn t() { fs::copy(a, b); }";
        assert_eq!(unconfined_calls("undo", src), ["undo: remove_dir_all("]);
        assert!(unconfined_calls("snapshot", "fn f() { std::os::unix::fs::symlink(a, b) }").is_empty());
    }

    #[test]
    fn blocking_work_goes_through_the_one_helper() {
        let mut offences = Vec::new();
        let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if !path.ends_with("blocking.rs") && !path.ends_with("lib.rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    if text.contains("spawn_blocking(") {
                        offences.push(path.display().to_string());
                    }
                }
            }
        }
        assert!(offences.is_empty(), "use crate::blocking::run instead of spawn_blocking in {offences:?}");
    }
}
