//! The C side of the ABI: `include/dmaplane.h` compiles cleanly as C11 and as C++ with
//! warnings as errors, and C programs under `examples/c/` build against the library and run.

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

#[test]
fn the_version_program_links_the_static_library_and_prints_the_crate_version() {
    let staticlib = static_library();
    let exe = std::env::temp_dir().join(format!("dmaplane-version-{}", std::process::id()));
    run(Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(workspace().join("include"))
        .arg(workspace().join("examples/c/version.c"))
        .arg(&staticlib)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe));
    let printed = run(&mut Command::new(&exe));
    // Under valgrind memcheck too, where it is installed: no invalid access, nothing leaked.
    let has_valgrind = Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if has_valgrind {
        run(Command::new("valgrind")
            .args(["--quiet", "--error-exitcode=1", "--leak-check=full"])
            .args(["--errors-for-leak-kinds=definite,indirect"])
            .arg(&exe));
    } else {
        println!("valgrind is not installed; the program ran without it");
    }
    std::fs::remove_file(&exe).unwrap();
    assert_eq!(
        printed.trim(),
        format!("dmaplane {}", env!("CARGO_PKG_VERSION"))
    );
}
