//! `include/dmaplane.h` is generated from this crate by cbindgen and checked in; this test
//! fails when the two differ. `DMAPLANE_BLESS=1 cargo test -p dmaplane-ffi --test header`
//! rewrites the header after an ABI change.

use std::path::Path;

#[test]
fn the_checked_in_header_matches_a_fresh_generation() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen could not generate the header")
        .write(&mut generated);
    let generated = String::from_utf8(generated).unwrap();
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
