//! `include/dmaplane.h` is generated from this crate by cbindgen and checked in; this test
//! fails when the two differ. `DMAPLANE_BLESS=1 cargo test -p dmaplane-ffi --test header`
//! rewrites the header after an ABI change.

use std::path::Path;

#[test]
fn the_checked_in_header_matches_a_fresh_generation() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap();
    // The version macros come from the crate version, so a version bump makes the checked-in
    // header stale until it is regenerated.
    config.after_includes = Some(format!(
        "\n/* The version this header belongs to; dmaplane_version() gives the library's. */\n\
         #define DMAPLANE_VERSION_MAJOR {}\n\
         #define DMAPLANE_VERSION_MINOR {}\n\
         #define DMAPLANE_VERSION_PATCH {}\n\
         #define DMAPLANE_VERSION_STRING \"{}\"",
        env!("CARGO_PKG_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MINOR"),
        env!("CARGO_PKG_VERSION_PATCH"),
        env!("CARGO_PKG_VERSION"),
    ));
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen could not generate the header")
        .write(&mut generated);
    let generated = parenthesize_negative_macros(&String::from_utf8(generated).unwrap());
    let header = crate_dir.join("../include/dmaplane.h");
    if std::env::var_os("DMAPLANE_BLESS").is_some() {
        std::fs::write(&header, &generated).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&header).unwrap();
    assert!(
        checked_in == generated,
        "include/dmaplane.h is stale; regenerate it with \
         DMAPLANE_BLESS=1 cargo test -p dmaplane-ffi --test header\n--- generated ---\n{generated}"
    );
}

/// cbindgen writes a negative constant as `#define X -5`, which misparses in expressions such
/// as `a-X`; the header gets `(-5)` instead.
fn parenthesize_negative_macros(header: &str) -> String {
    header
        .lines()
        .map(|line| {
            match line
                .strip_prefix("#define ")
                .and_then(|d| d.split_once(' '))
            {
                Some((name, value))
                    if value.starts_with('-') && value[1..].bytes().all(|b| b.is_ascii_digit()) =>
                {
                    format!("#define {name} ({value})\n")
                }
                _ => format!("{line}\n"),
            }
        })
        .collect()
}

/// The completion's layout as the header documents it: the first 16 bytes as they always
/// were, `value` added at 16. (`examples/c/ops.c` checks the same from C with
/// `_Static_assert`.)
#[test]
fn the_completion_struct_keeps_its_first_fields_and_adds_value_at_16() {
    use dmaplane_ffi::client::dmaplane_completion;
    use std::mem::{align_of, offset_of, size_of};
    assert_eq!(size_of::<dmaplane_completion>(), 24);
    assert_eq!(align_of::<dmaplane_completion>(), 8);
    assert_eq!(offset_of!(dmaplane_completion, user_data), 0);
    assert_eq!(offset_of!(dmaplane_completion, status), 8);
    assert_eq!(offset_of!(dmaplane_completion, reserved), 12);
    assert_eq!(offset_of!(dmaplane_completion, value), 16);
}
