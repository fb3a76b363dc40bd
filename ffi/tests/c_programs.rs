//! The C side of the ABI: `include/dmaplane.h` compiles cleanly as C11 and as C++ with
//! warnings as errors, and the C programs under `examples/c/` (version, copy, the extended
//! operations, and the randomized hotplug verifier) build against the static library, run, and run again under
//! valgrind memcheck where it is installed, without an invalid access or a leak.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The static library cargo built with this test binary: beside it in `deps/` on a fresh
/// build, or one level up where a plain `cargo build` copied it.
fn static_library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    [deps, deps.parent().unwrap()]
        .iter()
        .map(|dir| dir.join("libdmaplane_ffi.a"))
        .find(|path| path.exists())
        .unwrap_or_else(|| panic!("libdmaplane_ffi.a was not built next to {}", exe.display()))
}

fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Compiles `source` (saved as `file`) with `compiler` and `std`, warnings as errors.
fn syntax_check(compiler: &str, std: &str, file: &str, source: &str) {
    let probe = std::env::temp_dir().join(format!("dmaplane-{}-{file}", std::process::id()));
    std::fs::write(&probe, source).unwrap();
    run(Command::new(compiler)
        .arg(format!("-std={std}"))
        .args([
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-fsyntax-only",
            "-I",
        ])
        .arg(workspace().join("include"))
        .arg(&probe));
    std::fs::remove_file(&probe).unwrap();
}

#[test]
fn the_header_compiles_as_c11_and_as_cxx_without_warnings() {
    syntax_check(
        "cc",
        "c11",
        "header.c",
        "#include \"dmaplane.h\"\nint main(void) { return dmaplane_version() == 0; }\n",
    );
    syntax_check(
        "c++",
        "c++11",
        "header.cc",
        "#include \"dmaplane.h\"\nint main() { return dmaplane_version() == nullptr; }\n",
    );
}

/// Whether valgrind is installed here.
fn has_valgrind() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// What a C program printed: on its own, and under valgrind memcheck where it is installed.
struct Runs {
    native: String,
    valgrind: Option<String>,
}

/// Builds `examples/c/<name>.c` against the static library (C11, warnings as errors), runs it
/// with `args`, then, where valgrind is installed, again under memcheck with `valgrind_args`:
/// no invalid access, nothing definitely or indirectly leaked. Each run must exit with 0.
fn build_and_run(name: &str, args: &[&str], valgrind_args: &[&str]) -> Runs {
    let staticlib = static_library();
    // Tests run in parallel, some building the same program: each build its own file.
    static BUILDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let build = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let exe = std::env::temp_dir().join(format!("dmaplane-{name}-{}-{build}", std::process::id()));
    run(Command::new("cc")
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-g",
            "-O1",
        ])
        .arg("-I")
        .arg(workspace().join("include"))
        .arg(workspace().join(format!("examples/c/{name}.c")))
        .arg(&staticlib)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe));
    let native = run(Command::new(&exe).args(args));
    let valgrind = if has_valgrind() {
        Some(run(Command::new("valgrind")
            .args(["--quiet", "--error-exitcode=1", "--leak-check=full"])
            .args(["--errors-for-leak-kinds=definite,indirect"])
            .arg(&exe)
            .args(valgrind_args)))
    } else {
        println!("valgrind is not installed; {name} ran without it");
        None
    };
    std::fs::remove_file(&exe).unwrap();
    Runs { native, valgrind }
}

#[test]
fn the_version_program_links_the_static_library_and_prints_the_crate_version() {
    let runs = build_and_run("version", &[], &[]);
    let expected = format!("dmaplane {}", env!("CARGO_PKG_VERSION"));
    assert_eq!(runs.native.trim(), expected);
    if let Some(printed) = runs.valgrind {
        assert_eq!(printed.trim(), expected);
    }
}

#[test]
fn the_copy_program_copies_4_kib_and_tears_down_cleanly() {
    let runs = build_and_run("copy", &[], &[]);
    for printed in std::iter::once(runs.native).chain(runs.valgrind) {
        assert_eq!(printed.trim(), "copied 4096 bytes: ok");
    }
}

#[test]
fn the_ops_program_compares_crcs_copies_with_crc_and_dualcasts_on_soft_and_ioat_fallback() {
    let runs = build_and_run("ops", &[], &[]);
    for printed in std::iter::once(runs.native).chain(runs.valgrind) {
        assert_eq!(printed.trim(), "compare, crc32c, copy_crc, dualcast: ok");
    }
}

#[test]
fn the_copy_program_copies_on_emulated_dsa_and_on_a_mixed_engine() {
    for backend in ["dsa", "mixed"] {
        let runs = build_and_run("copy", &["--backend", backend], &["--backend", backend]);
        for printed in std::iter::once(runs.native).chain(runs.valgrind) {
            assert_eq!(printed.trim(), "copied 4096 bytes: ok", "{backend}");
        }
    }
}

#[test]
fn the_ops_program_runs_every_operation_on_emulated_dsa() {
    let runs = build_and_run("ops", &["--backend", "dsa"], &["--backend", "dsa"]);
    for printed in std::iter::once(runs.native).chain(runs.valgrind) {
        assert_eq!(printed.trim(), "compare, crc32c, copy_crc, dualcast: ok");
    }
}

#[test]
fn the_verify_program_loses_nothing_on_dsa_and_mixed_while_devices_come_and_go() {
    for backend in ["dsa", "mixed"] {
        let runs = build_and_run(
            "verify",
            &["--seconds", "1", "--backend", backend],
            &["--seconds", "1", "--threads", "2", "--backend", backend],
        );
        for printed in std::iter::once(&runs.native).chain(runs.valgrind.as_ref()) {
            let fields = summary(printed);
            for key in ["mismatches", "errors", "lost"] {
                assert_eq!(field(&fields, key), 0, "{backend}: {key} in:\n{printed}");
            }
            assert!(field(&fields, "succeeded") > 0, "{backend}:\n{printed}");
            assert_eq!(printed.lines().last(), Some("ok"), "{backend}: {printed}");
        }
        assert!(field(&summary(&runs.native), "removals") >= 1, "{backend}");
    }
}

/// The `key=value` fields of the program's `summary:` line.
fn summary(printed: &str) -> std::collections::HashMap<String, String> {
    let line = printed
        .lines()
        .find_map(|line| line.strip_prefix("summary:"))
        .unwrap_or_else(|| panic!("no summary line in:\n{printed}"));
    line.split_whitespace()
        .filter_map(|field| field.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn field(fields: &std::collections::HashMap<String, String>, key: &str) -> u64 {
    fields
        .get(key)
        .unwrap_or_else(|| panic!("no {key} in the summary {fields:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("{key} in the summary {fields:?}: {e}"))
}

#[test]
fn the_verify_program_loses_and_corrupts_nothing_while_devices_come_and_go() {
    let runs = build_and_run(
        "verify",
        &["--seconds", "2"],
        // valgrind runs one thread at a time, many times slower
        &["--seconds", "2", "--threads", "2"],
    );
    let native = summary(&runs.native);
    for (printed, fields) in std::iter::once((&runs.native, native.clone())).chain(
        runs.valgrind
            .as_ref()
            .map(|printed| (printed, summary(printed))),
    ) {
        for key in ["mismatches", "errors", "lost"] {
            assert_eq!(field(&fields, key), 0, "{key} in:\n{printed}");
        }
        assert!(
            field(&fields, "succeeded") > 0,
            "nothing succeeded:\n{printed}"
        );
        assert_eq!(printed.lines().last(), Some("ok"), "{printed}");
    }
    // The first removal comes 0.3 s in, and one takes well under a second.
    assert!(
        field(&native, "removals") >= 1,
        "no device was removed:\n{}",
        runs.native
    );
}
