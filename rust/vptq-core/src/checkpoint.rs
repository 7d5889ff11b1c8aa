//! Packed VPTQ checkpoints on disk: sharded safetensors, their index, and a validator.
//!
//! Writing goes through the `safetensors` crate; every file is written under a temporary
//! name in the target folder and renamed into place, so a crash never leaves a
//! half-written shard under a real name. The validator checks each quantized layer's
//! tensors against its `quantization_config` entry (FORMAT.md) and measures the true bits
//! per weight from what is stored.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, Metadata, TensorView};
use safetensors::SafeTensors;
use serde::Serialize;
use serde_json::Value;

use crate::error::{invalid, CoreError, Result};

/// Name of the index file of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Name of the single file of an unsharded checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Largest header the reader accepts (the safetensors format's own limit).
const MAX_HEADER: u64 = 100_000_000;
/// Largest in/out features and vector length a config entry may state (far above any real
/// Linear); keeps every size product of the validator inside `usize`/`u64`.
pub const MAX_DIM: usize = 1 << 24;

/// A tensor to write: name, dtype, shape and little-endian bytes.
#[derive(Debug, Clone)]
pub struct TensorRef<'a> {
    /// Full tensor name, e.g. `model.layers.0.self_attn.q_proj.indices`.
    pub name: &'a str,
    /// Element type.
    pub dtype: Dtype,
    /// Shape (row-major).
    pub shape: Vec<usize>,
    /// Raw bytes, `product(shape) * dtype.size()` long.
    pub data: &'a [u8],
}

/// A tensor read from disk.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedTensor {
    /// Element type.
    pub dtype: Dtype,
    /// Shape (row-major).
    pub shape: Vec<usize>,
    /// Raw little-endian bytes.
    pub data: Vec<u8>,
}

/// Parse a safetensors dtype name such as `"F16"` or `"I32"`.
pub fn parse_dtype(name: &str) -> Result<Dtype> {
    serde_json::from_value(Value::String(name.to_string()))
        .map_err(|_| invalid!("unknown dtype {name:?} (expected e.g. F32, F16, BF16, I32, I16)"))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CoreError + '_ {
    move |e| CoreError::io(path, e)
}

fn tmp_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Write bytes to `path` atomically (temporary file in the same folder, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_name(path);
    let res = (|| {
        let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, path).map_err(io(path))
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Split tensors, in the given order, into shards of at most `max_shard_bytes` of data
/// (a larger tensor gets a shard of its own). Returns index lists.
fn plan_shards(tensors: &[TensorRef<'_>], max_shard_bytes: u64) -> Vec<Vec<usize>> {
    let mut shards: Vec<Vec<usize>> = vec![];
    let mut size = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        let len = t.data.len() as u64;
        match shards.last_mut() {
            Some(cur) if size + len <= max_shard_bytes => cur.push(i),
            _ => {
                shards.push(vec![i]);
                size = 0;
            }
        }
        size += len;
    }
    shards
}

/// Write `tensors` into `dir` as `model.safetensors`, or as
/// `model-0000i-of-0000n.safetensors` shards plus `model.safetensors.index.json` when they
/// exceed `max_shard_bytes`. Returns the file names written.
///
/// `metadata` goes into every shard's header (e.g. `{"format": "pt"}`). Names must be
/// unique; each tensor's byte length must match its dtype and shape.
pub fn save_sharded(
    dir: &Path,
    tensors: &[TensorRef<'_>],
    max_shard_bytes: u64,
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<String>> {
    if max_shard_bytes == 0 {
        return Err(invalid!("max_shard_bytes must be positive"));
    }
    let mut seen = std::collections::HashSet::new();
    let mut views = Vec::with_capacity(tensors.len());
    for t in tensors {
        if !seen.insert(t.name) {
            return Err(invalid!("tensor name {:?} appears twice", t.name));
        }
        let view = TensorView::new(t.dtype, t.shape.clone(), t.data).map_err(|_| {
            invalid!(
                "tensor {:?}: {} bytes do not match dtype {} and shape {:?}",
                t.name,
                t.data.len(),
                t.dtype,
                t.shape
            )
        })?;
        views.push(view);
    }
    if !dir.is_dir() {
        return Err(invalid!("output folder {} does not exist", dir.display()));
    }
    let shards = plan_shards(tensors, max_shard_bytes);
    let n = shards.len().max(1);
    let names: Vec<String> = if n == 1 {
        vec![SINGLE_FILE.to_string()]
    } else {
        (1..=n)
            .map(|i| format!("model-{i:05}-of-{n:05}.safetensors"))
            .collect()
    };
    // all shards under temporary names first, then renamed: readers never see a mix
    let mut written: Vec<(PathBuf, PathBuf)> = vec![];
    let result = (|| {
        for (s, file) in names.iter().enumerate() {
            let path = dir.join(file);
            let tmp = tmp_name(&path);
            let members = shards.get(s).cloned().unwrap_or_default();
            let data = members.iter().map(|&i| (tensors[i].name, views[i].clone()));
            written.push((tmp.clone(), path));
            safetensors::serialize_to_file(data, metadata.clone(), &tmp).map_err(|e| match e {
                safetensors::SafeTensorError::IoError(err) => CoreError::io(&tmp, err),
                other => invalid!("cannot serialize {}: {other}", tmp.display()),
            })?;
            fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io(&tmp))?;
        }
        for (tmp, path) in &written {
            fs::rename(tmp, path).map_err(io(path))?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        for (tmp, _) in &written {
            let _ = fs::remove_file(tmp);
        }
        return Err(e);
    }
    let index_path = dir.join(INDEX_FILE);
    if n > 1 {
        let mut weight_map = BTreeMap::new();
        let mut total = 0u64;
        for (s, members) in shards.iter().enumerate() {
            for &i in members {
                weight_map.insert(tensors[i].name.to_string(), names[s].clone());
                total += tensors[i].data.len() as u64;
            }
        }
        let index = serde_json::json!({
            "metadata": {"total_size": total},
            "weight_map": weight_map,
        });
        let text = serde_json::to_string_pretty(&index).expect("index serializes");
        write_atomic(&index_path, text.as_bytes())?;
    } else if index_path.exists() {
        // a stale index from an earlier sharded write would point at missing shards
        fs::remove_file(&index_path).map_err(io(&index_path))?;
    }
    Ok(names)
}

/// The safetensors files of a checkpoint folder and, per tensor name, its file.
pub fn shard_map(dir: &Path) -> Result<BTreeMap<String, String>> {
    let index_path = dir.join(INDEX_FILE);
    if index_path.is_file() {
        let text = fs::read_to_string(&index_path).map_err(io(&index_path))?;
        let index: Value = serde_json::from_str(&text).map_err(|e| {
            CoreError::Checkpoint(format!("{} is not valid JSON: {e}", index_path.display()))
        })?;
        let map = index
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                CoreError::Checkpoint(format!("{} has no weight_map", index_path.display()))
            })?;
        let mut out = BTreeMap::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| {
                CoreError::Checkpoint(format!("weight_map entry {name:?} is not a file name"))
            })?;
            if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                return Err(CoreError::Checkpoint(format!(
                    "weight_map entry {name:?} points outside the folder: {file:?}"
                )));
            }
            if !dir.join(file).is_file() {
                return Err(CoreError::Checkpoint(format!(
                    "shard {file} (holding {name}) is missing from {}",
                    dir.display()
                )));
            }
            out.insert(name.clone(), file.to_string());
        }
        return Ok(out);
    }
    let single = dir.join(SINGLE_FILE);
    if !single.is_file() {
        return Err(CoreError::Checkpoint(format!(
            "no {SINGLE_FILE} or {INDEX_FILE} in {}",
            dir.display()
        )));
    }
    let header = read_header(&single)?;
    Ok(header
        .tensors()
        .into_keys()
        .map(|k| (k, SINGLE_FILE.to_string()))
        .collect())
}

/// Read and check only the header of a safetensors file (never the whole file).
pub fn read_header(path: &Path) -> Result<Metadata> {
    let corrupt = |why: String| CoreError::Checkpoint(format!("{}: {why}", path.display()));
    let mut f = fs::File::open(path).map_err(io(path))?;
    let file_len = f.metadata().map_err(io(path))?.len();
    let mut n8 = [0u8; 8];
    f.read_exact(&mut n8)
        .map_err(|_| corrupt("shorter than a safetensors header".into()))?;
    let n = u64::from_le_bytes(n8);
    if n > MAX_HEADER || n + 8 > file_len {
        return Err(corrupt(format!(
            "header length {n} does not fit a {file_len}-byte file"
        )));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(io(path))?;
    let meta: Metadata = serde_json::from_slice(&header)
        .map_err(|e| corrupt(format!("header is not valid safetensors JSON: {e}")))?;
    let data_len = file_len - 8 - n;
    // The same rules the safetensors crate applies when the file is loaded: tensors, in
    // offset order, tile the data section exactly (no gaps, overlaps or trailing bytes).
    let mut infos: Vec<_> = meta.tensors().into_iter().collect();
    infos.sort_by_key(|(_, info)| info.data_offsets);
    let mut next = 0usize;
    for (name, info) in infos {
        let (start, end) = info.data_offsets;
        let bits = info
            .shape
            .iter()
            .try_fold(1usize, |a, &b| a.checked_mul(b))
            .and_then(|e| e.checked_mul(info.dtype.bitsize()));
        let want = bits.filter(|b| b % 8 == 0).map(|b| b / 8);
        if start != next || start > end || end as u64 > data_len || want != Some(end - start) {
            return Err(corrupt(format!(
                "tensor {name} has offsets {start}..{end}, inconsistent with its shape {:?} {} \
                 or the {data_len}-byte data section (expected to start at {next})",
                info.shape, info.dtype
            )));
        }
        next = end;
    }
    if next as u64 != data_len {
        return Err(corrupt(format!(
            "the tensors cover {next} of the {data_len}-byte data section"
        )));
    }
    Ok(meta)
}

/// Every tensor of a checkpoint folder (sharded or single), keyed by name.
pub fn load_dir(dir: &Path) -> Result<BTreeMap<String, OwnedTensor>> {
    let map = shard_map(dir)?;
    let mut files: Vec<&String> = map.values().collect();
    files.sort();
    files.dedup();
    let mut out = BTreeMap::new();
    for file in files {
        let path = dir.join(file);
        let bytes = fs::read(&path).map_err(io(&path))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| {
            CoreError::Checkpoint(format!(
                "{} is not a valid safetensors file: {e}",
                path.display()
            ))
        })?;
        for (name, view) in st.iter() {
            if map.get(name).map(String::as_str) == Some(file.as_str()) {
                out.insert(
                    name.to_string(),
                    OwnedTensor {
                        dtype: view.dtype(),
                        shape: view.shape().to_vec(),
                        data: view.data().to_vec(),
                    },
                );
            }
        }
    }
    if let Some(missing) = map.keys().find(|k| !out.contains_key(*k)) {
        return Err(CoreError::Checkpoint(format!(
            "tensor {missing} is listed in the index but not in its shard {}",
            map[missing]
        )));
    }
    Ok(out)
}

/// A tensor a layer must have: name suffix, shape, allowed dtypes (`None` = any float).
type Expected = (&'static str, Vec<usize>, Option<&'static [Dtype]>);

/// One quantized layer's configuration, parsed from a `config_for_layers` entry.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LayerSpec {
    /// in_features of the Linear.
    pub in_features: usize,
    /// out_features of the Linear.
    pub out_features: usize,
    /// Main vector length `v`.
    pub vector_len: usize,
    /// Main centroid count `K`.
    pub num_centroids: usize,
    /// Residual centroid count (0 = off).
    pub num_res_centroids: usize,
    /// Codebooks per layer `G`.
    pub group_num: usize,
    /// Columns per group `C`.
    pub group_size: usize,
    /// Outlier columns.
    pub outlier_size: usize,
    /// Outlier vector length `v0` (0 = no outliers).
    pub outlier_vector_len: usize,
    /// Outlier centroid count `K0` (0 = no outliers).
    pub outlier_num_centroids: usize,
    /// Normalization tensors present.
    pub enable_norm: bool,
    /// Permutation present.
    pub enable_perm: bool,
    /// The Linear has a bias.
    pub bias: bool,
    /// Vectors along the input dimension (`"in"`) instead of the output (`"out"`).
    pub vector_quant_dim_in: bool,
}

fn log2_exact(k: usize, what: &str, layer: &str) -> Result<u32> {
    if k < 2 || !k.is_power_of_two() {
        return Err(CoreError::Checkpoint(format!(
            "layer {layer}: {what} = {k} is not a power of two >= 2"
        )));
    }
    Ok(k.trailing_zeros())
}

impl LayerSpec {
    /// Parse one `config_for_layers` entry (FORMAT.md), naming `layer` in errors.
    pub fn from_entry(layer: &str, e: &Value) -> Result<Self> {
        let bad = |why: &str| CoreError::Checkpoint(format!("layer {layer}: {why}"));
        let int = |key: &str| -> Result<i64> {
            e.get(key)
                .and_then(Value::as_i64)
                .ok_or_else(|| bad(&format!("missing integer {key}")))
        };
        let pair = |key: &str| -> Result<(i64, i64)> {
            match e.get(key).and_then(Value::as_array).map(Vec::as_slice) {
                Some([a, b]) => match (a.as_i64(), b.as_i64()) {
                    (Some(a), Some(b)) => Ok((a, b)),
                    _ => Err(bad(&format!("{key} must hold two integers"))),
                },
                _ => Err(bad(&format!("missing pair {key}"))),
            }
        };
        let flag = |key: &str| e.get(key).and_then(Value::as_bool).unwrap_or(false);
        let pos = |v: i64, key: &str| -> Result<usize> {
            usize::try_from(v)
                .ok()
                .filter(|&x| x > 0)
                .ok_or_else(|| bad(&format!("{key} must be positive, got {v}")))
        };
        let (v0, v) = pair("vector_lens")?;
        let (k0, k) = pair("num_centroids")?;
        let (_, kr) = pair("num_res_centroids")?;
        let outlier_size =
            usize::try_from(e.get("outlier_size").and_then(Value::as_i64).unwrap_or(0))
                .map_err(|_| bad("outlier_size must be >= 0"))?;
        let outliers = outlier_size > 0;
        if outliers && (v0 < 1 || k0 < 1) {
            return Err(bad(
                "outlier_size > 0 needs vector_lens[0] >= 1 and num_centroids[0] >= 1",
            ));
        }
        if e.get("is_indice_packed").and_then(Value::as_bool) == Some(false) {
            return Err(bad(
                "unpacked indices (is_indice_packed: false) are not supported",
            ));
        }
        let dim = e
            .get("vector_quant_dim")
            .and_then(Value::as_str)
            .unwrap_or("out");
        if dim != "out" && dim != "in" {
            return Err(bad(&format!(
                "vector_quant_dim must be \"in\" or \"out\", got {dim:?}"
            )));
        }
        let spec = LayerSpec {
            in_features: pos(int("in_features")?, "in_features")?,
            out_features: pos(int("out_features")?, "out_features")?,
            vector_len: pos(v, "vector_lens[1]")?,
            num_centroids: pos(k, "num_centroids[1]")?,
            num_res_centroids: usize::try_from(kr.max(0)).unwrap_or(0),
            group_num: pos(
                e.get("group_num").and_then(Value::as_i64).unwrap_or(1),
                "group_num",
            )?,
            group_size: 0,
            outlier_size,
            outlier_vector_len: if outliers { v0 as usize } else { 0 },
            outlier_num_centroids: if outliers { k0 as usize } else { 0 },
            enable_norm: flag("enable_norm"),
            enable_perm: flag("enable_perm"),
            bias: flag("bias"),
            vector_quant_dim_in: dim == "in",
        };
        // untrusted sizes: bounded so that every product the validator forms fits
        for (key, value) in [
            ("in_features", spec.in_features),
            ("out_features", spec.out_features),
            ("vector_lens[1]", spec.vector_len),
            ("vector_lens[0]", spec.outlier_vector_len),
        ] {
            if value > MAX_DIM {
                return Err(bad(&format!("{key} = {value} exceeds {MAX_DIM}")));
            }
        }
        let cols = spec.q_cols();
        if outlier_size >= cols {
            return Err(bad(&format!(
                "outlier_size {outlier_size} must be below {cols} columns"
            )));
        }
        if (cols - outlier_size) % spec.group_num != 0 {
            return Err(bad(&format!(
                "group_num {} does not divide the {} non-outlier columns",
                spec.group_num,
                cols - outlier_size
            )));
        }
        let group_size = (cols - outlier_size) / spec.group_num;
        if let Some(gs) = e.get("group_size").and_then(Value::as_i64) {
            if gs != group_size as i64 {
                return Err(bad(&format!(
                    "group_size {gs} disagrees with (columns - outlier_size) / group_num = {group_size}"
                )));
            }
        }
        let spec = LayerSpec { group_size, ..spec };
        let bits = spec.index_bits(layer)? + spec.res_bits(layer)?;
        if bits > 32 {
            return Err(bad(&format!(
                "index bits + residual bits = {bits} exceed 32"
            )));
        }
        if spec.outlier_num_centroids > 65536 {
            return Err(bad(
                "num_centroids[0] exceeds 65536 (outlier indices are 16-bit)",
            ));
        }
        Ok(spec)
    }

    /// Rows of the quantized matrix (out_features, or in_features for "in").
    pub fn q_rows(&self) -> usize {
        if self.vector_quant_dim_in {
            self.in_features
        } else {
            self.out_features
        }
    }

    /// Columns of the quantized matrix (in_features, or out_features for "in").
    pub fn q_cols(&self) -> usize {
        if self.vector_quant_dim_in {
            self.out_features
        } else {
            self.in_features
        }
    }

    /// `log2(K)`.
    pub fn index_bits(&self, layer: &str) -> Result<u32> {
        log2_exact(self.num_centroids, "num_centroids[1]", layer)
    }

    /// `log2(Kres)`, 0 without residual.
    pub fn res_bits(&self, layer: &str) -> Result<u32> {
        if self.num_res_centroids == 0 {
            Ok(0)
        } else {
            log2_exact(self.num_res_centroids, "num_res_centroids[1]", layer)
        }
    }

    /// Expected tensors: suffix, shape, and allowed dtypes (`None` = a float dtype).
    fn expected(&self, layer: &str) -> Result<Vec<Expected>> {
        let g = self.group_num;
        let r = self.q_rows().div_ceil(self.vector_len);
        let words = crate::bitpack::words_per_row(
            self.group_size,
            self.index_bits(layer)? + self.res_bits(layer)?,
        );
        let cols = self.q_cols();
        let mut out = vec![
            (
                "centroids.weight",
                vec![g, self.num_centroids * self.vector_len],
                None,
            ),
            ("indices", vec![g, r, words], Some(&[Dtype::I32][..])),
        ];
        if self.num_res_centroids > 0 {
            out.push((
                "res_centroids.weight",
                vec![g, self.num_res_centroids * self.vector_len],
                None,
            ));
        }
        if self.outlier_size > 0 {
            let v0 = self.outlier_vector_len;
            out.push((
                "outlier_centroids.weight",
                vec![1, self.outlier_num_centroids * v0],
                None,
            ));
            out.push((
                "outlier_indices",
                vec![1, self.q_rows().div_ceil(v0), self.outlier_size],
                Some(&[Dtype::I16, Dtype::U16][..]),
            ));
        }
        if self.enable_perm {
            out.push((
                "perm",
                vec![cols],
                Some(&[Dtype::I16, Dtype::U16, Dtype::I32, Dtype::I64][..]),
            ));
        }
        if self.enable_norm {
            out.push(("weight_scale", vec![cols], None));
            out.push(("weight_bias", vec![cols], None));
        }
        if self.bias {
            out.push(("bias", vec![self.out_features], None));
        }
        Ok(out)
    }
}

/// Stored bits of one quantized layer, by kind (FORMAT.md "Bits per weight, honestly").
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct BitBreakdown {
    /// Packed index words of the main and residual codes, word padding included.
    pub index_bits: u64,
    /// Of `index_bits`, the bits no code uses (the tail of each row's last word).
    pub index_padding_bits: u64,
    /// Main, residual and outlier codebooks.
    pub codebook_bits: u64,
    /// Outlier indices.
    pub outlier_index_bits: u64,
    /// Normalization scale and bias.
    pub norm_bits: u64,
    /// Column permutation.
    pub perm_bits: u64,
    /// The Linear's own bias (reported, not counted: the float model stores it too).
    pub linear_bias_bits: u64,
    /// Everything counted: indices, codebooks, outlier indices, norm, perm.
    pub total_bits: u64,
    /// `out_features * in_features`.
    pub num_weights: u64,
    /// `total_bits / num_weights`.
    pub bits_per_weight: f64,
}

/// The validator's report on one layer.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    /// Full module name.
    pub name: String,
    /// Its parsed configuration.
    pub config: LayerSpec,
    /// Its stored bits.
    pub bits: BitBreakdown,
    /// Dtype of its main codebook (the model's float dtype).
    pub codebook_dtype: String,
}

/// The validator's report on a checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointReport {
    /// Every quantized layer, sorted by name.
    pub layers: Vec<LayerReport>,
    /// Sum over quantized layers.
    pub total: BitBreakdown,
    /// Bytes of every tensor of the checkpoint, quantized or not.
    pub tensor_bytes: u64,
    /// Bytes of tensors that belong to no quantized layer (embeddings, norms, lm_head...).
    pub unquantized_bytes: u64,
    /// The safetensors files.
    pub files: Vec<String>,
}

fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64)
}

/// Parse `config.json`'s `quantization_config` into per-layer specs, sorted by name.
pub fn layer_specs(config: &Value) -> Result<BTreeMap<String, LayerSpec>> {
    let qc = config.get("quantization_config").ok_or_else(|| {
        CoreError::Checkpoint(
            "config.json has no quantization_config: not a VPTQ checkpoint".into(),
        )
    })?;
    match qc.get("quant_method").and_then(Value::as_str) {
        Some("vptq") => {}
        other => {
            return Err(CoreError::Checkpoint(format!(
                "quantization_config.quant_method is {other:?}, expected \"vptq\""
            )))
        }
    }
    let layers = qc
        .get("config_for_layers")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            CoreError::Checkpoint("quantization_config has no config_for_layers object".into())
        })?;
    let shared = qc.get("shared_layer_config").and_then(Value::as_object);
    let mut out = BTreeMap::new();
    for (name, entry) in layers {
        let mut merged = entry.clone();
        // shared_layer_config supplies defaults by module-name suffix (e.g. "q_proj")
        if let (Some(shared), Some(obj)) = (shared, merged.as_object_mut()) {
            for (suffix, defaults) in shared {
                if name.ends_with(suffix.as_str()) {
                    for (k, v) in defaults.as_object().into_iter().flatten() {
                        obj.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
            }
        }
        out.insert(name.clone(), LayerSpec::from_entry(name, &merged)?);
    }
    if out.is_empty() {
        return Err(CoreError::Checkpoint(
            "config_for_layers lists no layer".into(),
        ));
    }
    Ok(out)
}

/// Validate a packed checkpoint folder and measure its true bits per weight.
///
/// Reads `config.json` and the safetensors headers only. Fails with
/// [`CoreError::Checkpoint`] naming the first layer (in name order) whose tensors are
/// missing, misshapen or of the wrong dtype.
pub fn validate(dir: &Path) -> Result<CheckpointReport> {
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(CoreError::Checkpoint(format!(
            "no config.json in {}",
            dir.display()
        )));
    }
    let text = fs::read_to_string(&config_path).map_err(io(&config_path))?;
    let config: Value = serde_json::from_str(&text)
        .map_err(|e| CoreError::Checkpoint(format!("config.json is not valid JSON: {e}")))?;
    let specs = layer_specs(&config)?;
    let map = shard_map(dir)?;
    let mut files: Vec<String> = map.values().cloned().collect();
    files.sort();
    files.dedup();
    let mut infos = HashMap::new();
    for file in &files {
        let header = read_header(&dir.join(file))?;
        for (name, info) in header.tensors() {
            if map.get(&name) == Some(file) {
                infos.insert(name, (info.dtype, info.shape.clone()));
            }
        }
    }
    if let Some(missing) = map.keys().find(|k| !infos.contains_key(*k)) {
        return Err(CoreError::Checkpoint(format!(
            "tensor {missing} is listed in the index but not in its shard {}",
            map[missing]
        )));
    }
    let bytes_of =
        |d: &Dtype, s: &[usize]| (s.iter().product::<usize>() * d.bitsize()).div_ceil(8) as u64;
    let tensor_bytes: u64 = infos.values().map(|(d, s)| bytes_of(d, s)).sum();
    let mut layers = vec![];
    let mut total = BitBreakdown::default();
    let mut quantized_bytes = 0u64;
    for (name, spec) in &specs {
        let bad = |why: String| CoreError::Checkpoint(format!("layer {name}: {why}"));
        let expected = spec.expected(name)?;
        let mut bits = BitBreakdown {
            num_weights: (spec.in_features * spec.out_features) as u64,
            ..Default::default()
        };
        for (suffix, shape, dtypes) in &expected {
            let full = format!("{name}.{suffix}");
            let (dtype, got) = infos
                .get(&full)
                .ok_or_else(|| bad(format!("tensor {full} is missing")))?;
            if got != shape {
                return Err(bad(format!("{full} has shape {got:?}, expected {shape:?}")));
            }
            let ok = match dtypes {
                Some(list) => list.contains(dtype),
                None => is_float(*dtype),
            };
            if !ok {
                let want = dtypes.map_or("a float dtype".to_string(), |l| format!("{l:?}"));
                return Err(bad(format!("{full} has dtype {dtype}, expected {want}")));
            }
            let b = bytes_of(dtype, got) * 8;
            quantized_bytes += b / 8;
            match *suffix {
                "indices" => bits.index_bits += b,
                "centroids.weight" | "res_centroids.weight" | "outlier_centroids.weight" => {
                    bits.codebook_bits += b
                }
                "outlier_indices" => bits.outlier_index_bits += b,
                "perm" => bits.perm_bits += b,
                "weight_scale" | "weight_bias" => bits.norm_bits += b,
                _ => bits.linear_bias_bits += b,
            }
        }
        // a tensor of this layer that the config does not explain is a mismatch too
        let prefix = format!("{name}.");
        let unexplained = |k: &&String| {
            k.strip_prefix(&prefix)
                .is_some_and(|rest| !expected.iter().any(|(s, _, _)| *s == rest))
        };
        if let Some(extra) = infos.keys().find(unexplained) {
            return Err(bad(format!(
                "unexpected tensor {extra} for this layer's config"
            )));
        }
        let code_bits = u64::from(spec.index_bits(name)? + spec.res_bits(name)?);
        let r = spec.q_rows().div_ceil(spec.vector_len) as u64;
        bits.index_padding_bits =
            bits.index_bits - spec.group_num as u64 * r * spec.group_size as u64 * code_bits;
        bits.total_bits = bits.index_bits
            + bits.codebook_bits
            + bits.outlier_index_bits
            + bits.norm_bits
            + bits.perm_bits;
        bits.bits_per_weight = bits.total_bits as f64 / bits.num_weights as f64;
        for (acc, v) in [
            (&mut total.index_bits, bits.index_bits),
            (&mut total.index_padding_bits, bits.index_padding_bits),
            (&mut total.codebook_bits, bits.codebook_bits),
            (&mut total.outlier_index_bits, bits.outlier_index_bits),
            (&mut total.norm_bits, bits.norm_bits),
            (&mut total.perm_bits, bits.perm_bits),
            (&mut total.linear_bias_bits, bits.linear_bias_bits),
            (&mut total.total_bits, bits.total_bits),
            (&mut total.num_weights, bits.num_weights),
        ] {
            *acc += v;
        }
        let codebook_dtype = infos[&format!("{name}.centroids.weight")].0.to_string();
        layers.push(LayerReport {
            name: name.clone(),
            config: spec.clone(),
            bits,
            codebook_dtype,
        });
    }
    total.bits_per_weight = total.total_bits as f64 / total.num_weights.max(1) as f64;
    Ok(CheckpointReport {
        layers,
        total,
        tensor_bytes,
        unquantized_bytes: tensor_bytes - quantized_bytes,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(n: usize) -> Vec<u8> {
        vec![0u8; n * 2]
    }

    /// A minimal valid one-layer checkpoint: O=16, I=32, v=4, K=16, 2 groups, res 8.
    fn write_fixture(dir: &Path, shard: u64) -> Vec<String> {
        let cfg = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "quantization_config": {
                "quant_method": "vptq",
                "config_for_layers": {"l.q": {
                    "in_features": 32, "out_features": 16, "vector_lens": [-1, 4],
                    "num_centroids": [-1, 16], "num_res_centroids": [-1, 8], "group_num": 2,
                    "group_size": 16, "outlier_size": 0, "indices_as_float": false,
                    "enable_norm": true, "enable_perm": true, "is_indice_packed": true, "bias": false}},
                "shared_layer_config": {}
            }
        });
        fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
        // R = 4 vectors per column, 16 codes of 7 bits per row = 4 words (16 bits padding)
        let cent = f16_bytes(2 * 64);
        let res = f16_bytes(2 * 32);
        let idx = [0u8; 2 * 4 * 4 * 4];
        let perm = [0u8; 32 * 2];
        let norm = f16_bytes(32);
        let emb = f16_bytes(1000);
        let t = |name, dtype, shape: Vec<usize>, data| TensorRef {
            name,
            dtype,
            shape,
            data,
        };
        let tensors = vec![
            t("l.q.centroids.weight", Dtype::F16, vec![2, 64], &cent[..]),
            t(
                "l.q.res_centroids.weight",
                Dtype::F16,
                vec![2, 32],
                &res[..],
            ),
            t("l.q.indices", Dtype::I32, vec![2, 4, 4], &idx[..]),
            t("l.q.perm", Dtype::I16, vec![32], &perm[..]),
            t("l.q.weight_scale", Dtype::F16, vec![32], &norm[..]),
            t("l.q.weight_bias", Dtype::F16, vec![32], &norm[..]),
            t("embed.weight", Dtype::F16, vec![1000], &emb[..]),
        ];
        save_sharded(dir, &tensors, shard, None).unwrap()
    }

    #[test]
    fn sharded_round_trip_and_validate() {
        let d = tempfile::tempdir().unwrap();
        let files = write_fixture(d.path(), 600);
        assert!(files.len() > 1);
        assert!(d.path().join(INDEX_FILE).is_file());
        let all = load_dir(d.path()).unwrap();
        assert_eq!(all.len(), 7);
        assert_eq!(all["l.q.indices"].shape, vec![2, 4, 4]);
        let rep = validate(d.path()).unwrap();
        let b = &rep.layers[0].bits;
        assert_eq!(b.index_bits, 2 * 4 * 4 * 32);
        assert_eq!(b.index_padding_bits, 2 * 4 * (128 - 16 * 7));
        assert_eq!(b.codebook_bits, (2 * 64 + 2 * 32) * 16);
        assert_eq!(b.perm_bits, 32 * 16);
        assert_eq!(b.norm_bits, 2 * 32 * 16);
        assert_eq!(b.num_weights, 512);
        assert_eq!(rep.unquantized_bytes, 2000);
        // no temporary files are left behind
        assert!(fs::read_dir(d.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains(".tmp-")));
    }

    /// Found with fuzz/validate: sizes whose products overflow are config errors, not panics.
    #[test]
    fn huge_sizes_are_errors() {
        let d = tempfile::tempdir().unwrap();
        write_fixture(d.path(), 1 << 30);
        let cfg = fs::read_to_string(d.path().join("config.json")).unwrap();
        for (from, to) in [
            ("[-1,4]", "[-1,4611686018427387904]"),
            ("\"in_features\":32", "\"in_features\":1099511627776"),
            ("\"out_features\":16", "\"out_features\":1099511627776"),
        ] {
            assert!(cfg.contains(from), "{from}");
            fs::write(d.path().join("config.json"), cfg.replace(from, to)).unwrap();
            let err = validate(d.path()).unwrap_err().to_string();
            assert!(err.contains("exceeds"), "{err}");
        }
    }

    #[test]
    fn single_file_when_small() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            write_fixture(d.path(), 1 << 30),
            vec![SINGLE_FILE.to_string()]
        );
        assert!(!d.path().join(INDEX_FILE).exists());
        validate(d.path()).unwrap();
    }

    #[test]
    fn reports_first_bad_layer() {
        let d = tempfile::tempdir().unwrap();
        write_fixture(d.path(), 1 << 30);
        let cfg = fs::read_to_string(d.path().join("config.json")).unwrap();
        fs::write(
            d.path().join("config.json"),
            cfg.replace("[-1,16]", "[-1,32]"),
        )
        .unwrap();
        let err = validate(d.path()).unwrap_err().to_string();
        assert!(
            err.contains("layer l.q") && err.contains("centroids.weight"),
            "{err}"
        );
    }

    #[test]
    fn missing_shard_and_corrupt_header() {
        let d = tempfile::tempdir().unwrap();
        let files = write_fixture(d.path(), 600);
        fs::remove_file(d.path().join(&files[1])).unwrap();
        assert!(validate(d.path())
            .unwrap_err()
            .to_string()
            .contains("missing"));
        let d2 = tempfile::tempdir().unwrap();
        write_fixture(d2.path(), 1 << 30);
        let p = d2.path().join(SINGLE_FILE);
        let mut bytes = fs::read(&p).unwrap();
        bytes.truncate(bytes.len() - 10);
        fs::write(&p, &bytes).unwrap();
        assert!(matches!(validate(d2.path()), Err(CoreError::Checkpoint(_))));
    }

    #[test]
    fn rejects_mismatched_bytes_and_duplicates() {
        let d = tempfile::tempdir().unwrap();
        let data = [0u8; 6];
        let t = TensorRef {
            name: "a",
            dtype: Dtype::F32,
            shape: vec![2],
            data: &data,
        };
        assert!(save_sharded(d.path(), std::slice::from_ref(&t), 100, None).is_err());
        let t = TensorRef {
            name: "a",
            dtype: Dtype::I16,
            shape: vec![3],
            data: &data,
        };
        assert!(save_sharded(d.path(), &[t.clone(), t], 100, None).is_err());
    }

    /// Found by fuzzing (read_header): trailing bytes after the last tensor, or a gap between
    /// tensors, passed the header check but the safetensors crate refused to load the file.
    #[test]
    fn header_check_agrees_with_the_loader() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(SINGLE_FILE);
        let write = |header: &str, data_len: usize| {
            let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(header.as_bytes());
            bytes.extend(std::iter::repeat_n(0u8, data_len));
            fs::write(&p, bytes).unwrap();
        };
        let one = r#"{"a":{"dtype":"U16","shape":[2,64],"data_offsets":[0,256]}}"#;
        write(one, 256);
        assert!(read_header(&p).is_ok() && load_dir(d.path()).is_ok());
        write(one, 262);
        assert!(read_header(&p)
            .unwrap_err()
            .to_string()
            .contains("cover 256 of the 262"));
        let gap = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[8,12]}}"#;
        write(gap, 12);
        assert!(read_header(&p).is_err() && load_dir(d.path()).is_err());
    }
}
