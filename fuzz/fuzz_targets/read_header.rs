//! `checkpoint::read_header` on arbitrary file bytes, then the whole single-file path
//! (`shard_map`, `load_dir`) on the same bytes as `model.safetensors`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vptq_core::checkpoint::{load_dir, read_header, shard_map, SINGLE_FILE};

fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
}

fuzz_target!(|data: &[u8]| {
    let path = dir().path().join(SINGLE_FILE);
    std::fs::write(&path, data).expect("write fuzz file");
    let header_ok = read_header(&path).is_ok();
    let map = shard_map(dir().path());
    assert_eq!(
        header_ok,
        map.is_ok(),
        "shard_map must agree with read_header"
    );
    if let Ok(map) = map {
        // a header that passed the checks must describe a loadable file
        let all = load_dir(dir().path()).expect("a checked header loads");
        assert_eq!(all.len(), map.len());
    }
});
