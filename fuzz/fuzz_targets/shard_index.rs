//! `shard_map` / `load_dir` / `validate` with an arbitrary `model.safetensors.index.json`
//! beside two small valid shards.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vptq_core::checkpoint::{load_dir, save_sharded, shard_map, validate, TensorRef, INDEX_FILE};

fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().expect("temp dir");
        let a = [0u8; 64];
        let t = |name, shape: Vec<usize>, data| TensorRef {
            name,
            dtype: vptq_core::checkpoint::parse_dtype("F16").unwrap(),
            shape,
            data,
        };
        // 32-byte shards: one tensor per file
        let tensors = vec![
            t("a.weight", vec![16], &a[..32]),
            t("b.weight", vec![32], &a[..]),
        ];
        save_sharded(d.path(), &tensors, 32, None).expect("fixture shards");
        std::fs::write(d.path().join("config.json"), "{}").unwrap();
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let d = dir().path();
    std::fs::write(d.join(INDEX_FILE), data).expect("write index");
    if let Ok(map) = shard_map(d) {
        for file in map.values() {
            assert!(
                d.join(file).is_file(),
                "shard_map returned a missing file {file}"
            );
            assert!(!file.contains('/') && !file.starts_with('.'));
        }
        let _ = load_dir(d);
    }
    let _ = validate(d);
});
