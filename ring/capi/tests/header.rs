//! The checked-in header `include/spate.h` is what cbindgen generates from the crate now;
//! `SPATE_BLESS=1` rewrites it instead of failing.

use std::path::Path;

#[test]
fn the_checked_in_header_is_fresh() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).unwrap();
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_src(dir.join("src/lib.rs"))
        .with_config(config)
        .generate()
        .expect("cbindgen could not read the crate")
        .write(&mut out);
    let fresh = String::from_utf8(out).unwrap();
    let path = dir.join("include/spate.h");
    if std::env::var_os("SPATE_BLESS").is_some() {
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == fresh,
        "ring/capi/include/spate.h is stale: run `SPATE_BLESS=1 cargo test -p spate-capi --test \
         header` and commit it. cbindgen now generates:\n{fresh}"
    );
}
