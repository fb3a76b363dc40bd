//! The crate's layers read bottom up: no module imports a module of a layer above its own, and
//! backends that are siblings (IOAT, the software engine) do not import each other. The order
//! is the README's "Layers" list and the crate documentation's; a change that reaches up (say
//! the IOAT driver using the client) fails here, naming the file and the path.

use std::fs;
use std::path::{Path, PathBuf};

/// Each top-level module of `lib/src` and its layer, lowest first. Modules of one layer may
/// use each other only in layer 0 (the utilities).
const LAYERS: &[(&str, u32)] = &[
    ("sync", 0),
    ("log", 0),
    ("cpu", 0),
    ("capability", 0),
    ("mem", 1),
    ("mmio", 2),
    ("pci", 3),
    ("vfio", 4),
    ("queue", 5),
    ("ioat", 6),
    ("dsa", 6),
    ("soft", 6),
    ("emu", 7),
    ("edu", 8),
    ("engine", 9),
    ("datapath", 10),
    ("hotplug", 11),
    ("setup", 12),
];

fn layer_of(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src` belongs to (`None` for `lib.rs`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next()?.as_os_str().to_str()?;
    let module = first.strip_suffix(".rs").unwrap_or(first);
    (module != "lib").then(|| module.to_string())
}

/// The first path segment after each `crate::` in `code`, expanding `crate::{a, b::c}`.
fn crate_paths(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // Split the brace group at its top-level commas.
            let mut depth = 0;
            let mut segment = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.push(first_ident(&segment));
                        segment.clear();
                        continue;
                    }
                    _ => {}
                }
                segment.push(c);
            }
            found.push(first_ident(&segment));
        } else {
            found.push(first_ident(after));
        }
        rest = after;
    }
    found.retain(|f| !f.is_empty());
    found
}

fn first_ident(text: &str) -> String {
    text.trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// The code of a source file without comments (line comments and doc comments).
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter_map(|(i, line)| {
        let code = line.split("//").next().unwrap_or("");
        (!code.trim().is_empty()).then_some((i + 1, code))
    })
}

/// Every import in the crate that breaks the layering.
fn violations() -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    assert!(
        files.len() > 20,
        "found the sources under {}",
        src.display()
    );
    let mut found = Vec::new();
    for file in files {
        let Some(module) = module_of(&src, &file) else {
            continue; // lib.rs re-exports everything
        };
        if module == "bin" {
            continue; // the binaries are crates of their own, on the public API
        }
        let from = layer_of(&module)
            .unwrap_or_else(|| panic!("{module} has no layer: add it to LAYERS and the README"));
        let text = fs::read_to_string(&file).unwrap();
        for (line, code) in code_lines(&text) {
            for target in crate_paths(code) {
                let place = format!("{}:{line}", file.strip_prefix(&src).unwrap().display());
                if target.chars().next().is_some_and(char::is_uppercase) {
                    found.push(format!(
                        "{place}: crate::{target} hides its layer behind a root re-export"
                    ));
                    continue;
                }
                if target == module || target == "loom_exports" {
                    continue;
                }
                let Some(to) = layer_of(&target) else {
                    found.push(format!("{place}: crate::{target} is not a known module"));
                    continue;
                };
                if to > from || (to == from && from > 0) {
                    found.push(format!(
                        "{place}: {module} (layer {from}) uses crate::{target} (layer {to})"
                    ));
                }
            }
        }
    }
    found
}

#[test]
fn no_module_imports_a_layer_above_it_or_a_sibling_backend() {
    let found = violations();
    assert!(found.is_empty(), "layering broken:\n{}", found.join("\n"));
}

#[test]
fn the_path_reader_sees_plain_grouped_and_nested_imports() {
    // The negative control of the check above: what it must catch, it reads.
    assert_eq!(crate_paths("use crate::datapath::Client;"), ["datapath"]);
    assert_eq!(
        crate_paths("use crate::{engine::Engine, queue::{ChannelQueue, Health}, Setup};"),
        ["engine", "queue", "Setup"]
    );
    assert_eq!(
        crate_paths("let (p, _) = crate::cpu::system_cpus(); crate::sync::rmw::note();"),
        ["cpu", "sync"]
    );
    assert_eq!(
        code_lines("//! crate::setup\nlet x = 1; // crate::setup\n").count(),
        1
    );
    assert_eq!(
        code_lines("use crate::setup::Setup; // why\n")
            .flat_map(|(_, code)| crate_paths(code))
            .collect::<Vec<_>>(),
        ["setup"]
    );
}
