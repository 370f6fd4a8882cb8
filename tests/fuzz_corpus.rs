//! The committed fuzz corpus (`fuzz/seeds/TARGET/`: seeds from the fixtures and every
//! input that once crashed, hung or over-allocated) replayed through the fuzz targets' own
//! entry functions (`blip2::fuzz`) on the stable toolchain, so CI runs them without
//! nightly or libFuzzer. A panic here is a regression of a fixed bug.

use std::path::PathBuf;

fn replay(target: &str) {
    let (_, run) = blip2::fuzz::TARGETS
        .iter()
        .find(|(n, _)| *n == target)
        .expect("a fuzz target of that name");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 5,
        "{}: only {} inputs",
        dir.display(),
        files.len()
    );
    for f in files {
        let data = std::fs::read(&f).unwrap();
        // The file name in the panic message, should an input panic again.
        eprintln!("replaying {}", f.display());
        run(&data);
    }
}

macro_rules! replay_tests {
    ($($name:ident),*) => {$(
        #[test]
        fn $name() {
            replay(stringify!($name));
        }
    )*};
}

replay_tests!(
    safetensors,
    shard_index,
    configs,
    prompt,
    image,
    jpeg,
    serve_request
);

#[test]
fn every_target_has_a_corpus_test() {
    let names: Vec<&str> = blip2::fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "safetensors",
            "shard_index",
            "configs",
            "prompt",
            "image",
            "jpeg",
            "serve_request"
        ]
    );
}
