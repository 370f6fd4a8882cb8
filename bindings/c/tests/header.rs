//! include/blip2.h is generated from src/lib.rs by cbindgen and committed; this test
//! regenerates it in memory and fails when the committed file differs.
//! `BLIP2_BLESS=1 cargo test -p blip2-c --test header` rewrites it.

use std::path::PathBuf;

#[test]
fn committed_header_matches_the_code() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("UTF-8 header");
    let path = dir.join("include/blip2.h");
    if std::env::var_os("BLIP2_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("writing include/blip2.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(committed.lines().count().min(generated.lines().count()));
        panic!(
            "{} is out of date with src/lib.rs (first difference at line {}); regenerate it with \
             `BLIP2_BLESS=1 cargo test -p blip2-c --test header` and commit it",
            path.display(),
            line + 1
        );
    }
}
