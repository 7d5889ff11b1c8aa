//! `checkpoint::validate` on a folder whose `config.json` holds one layer entry with
//! arbitrary integers and whose `model.safetensors` holds arbitrary (small) tensors, plus the
//! raw-bytes variant: arbitrary config.json text.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use vptq_core::checkpoint::{parse_dtype, save_sharded, validate, TensorRef};

const SUFFIXES: [&str; 9] = [
    "centroids.weight",
    "res_centroids.weight",
    "indices",
    "outlier_centroids.weight",
    "outlier_indices",
    "perm",
    "weight_scale",
    "weight_bias",
    "bias",
];
const DTYPES: [&str; 7] = ["F16", "BF16", "F32", "I32", "I16", "U8", "I64"];

#[derive(Arbitrary, Debug)]
struct Tensor {
    suffix: u8,
    dtype: u8,
    shape: Vec<u16>,
}

#[derive(Arbitrary, Debug)]
struct Structured {
    ints: [i64; 10],
    /// enable_norm, enable_perm, bias, vector_quant_dim "in", leave out group_size
    flags: [bool; 5],
    small: [u8; 10],
    which_small: u16,
    tensors: Vec<Tensor>,
}

fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
}

fuzz_target!(|data: &[u8]| {
    let d = dir().path();
    let _ = std::fs::remove_file(d.join("model.safetensors.index.json"));
    // first byte odd: the rest is config.json as is; even: a structured layer entry
    let Some((&tag, rest)) = data.split_first() else {
        return;
    };
    let structured = if tag & 1 == 0 {
        match Structured::arbitrary_take_rest(arbitrary::Unstructured::new(rest)) {
            Ok(s) => Some(s),
            Err(_) => return,
        }
    } else {
        None
    };
    match structured {
        None => {
            std::fs::write(d.join("config.json"), rest).unwrap();
            if !d.join("model.safetensors").is_file() {
                save_sharded(d, &[], 1 << 20, None).unwrap();
            }
            let _ = validate(d);
        }
        Some(Structured {
            ints,
            flags,
            small,
            which_small,
            tensors,
        }) => {
            // a bit per value chooses a small (plausible) or an arbitrary (hostile) integer
            let v: Vec<i64> = (0..10)
                .map(|i| {
                    if which_small >> i & 1 == 1 {
                        i64::from(small[i]) - 1
                    } else {
                        ints[i]
                    }
                })
                .collect();
            let mut entry = json!({
                "in_features": v[0], "out_features": v[1],
                "vector_lens": [v[2], v[3]], "num_centroids": [v[4], v[5]],
                "num_res_centroids": [-1, v[6]], "group_num": v[7], "group_size": v[8],
                "outlier_size": v[9], "enable_norm": flags[0], "enable_perm": flags[1],
                "bias": flags[2], "is_indice_packed": true,
                "vector_quant_dim": if flags[3] { "in" } else { "out" },
            });
            if flags[4] {
                entry.as_object_mut().unwrap().remove("group_size");
            }
            let cfg = json!({"quantization_config": {"quant_method": "vptq",
                "config_for_layers": {"l": entry}, "shared_layer_config": Value::Null}});
            std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
            let mut names = vec![];
            let mut bufs = vec![];
            for t in tensors.iter().take(12) {
                let dtype = parse_dtype(DTYPES[t.dtype as usize % DTYPES.len()]).unwrap();
                let shape: Vec<usize> = t.shape.iter().take(4).map(|&s| s as usize % 300).collect();
                let elems: usize = shape.iter().product();
                if elems > 1 << 16 {
                    continue;
                }
                let name = format!("l.{}", SUFFIXES[t.suffix as usize % SUFFIXES.len()]);
                if names.iter().any(|(n, _, _)| *n == name) {
                    continue;
                }
                bufs.push(vec![0u8; elems * dtype.bitsize().div_ceil(8)]);
                names.push((name, dtype, shape));
            }
            let refs: Vec<TensorRef<'_>> = names
                .iter()
                .zip(&bufs)
                .map(|((name, dtype, shape), b)| TensorRef {
                    name,
                    dtype: *dtype,
                    shape: shape.clone(),
                    data: b,
                })
                .collect();
            save_sharded(d, &refs, 1 << 30, None).unwrap();
            if let Ok(rep) = validate(d) {
                let l = &rep.layers[0];
                assert!(l.bits.total_bits >= l.bits.index_bits);
                assert!(l.bits.bits_per_weight.is_finite());
            }
        }
    }
});
