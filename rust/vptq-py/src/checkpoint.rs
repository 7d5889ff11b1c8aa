//! Checkpoint bindings: sharded safetensors I/O and the validator.

use std::collections::HashMap;
use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use vptq_core::checkpoint::{self, TensorRef};

use crate::{detached, to_py, InvalidValueError};

/// Write tensors as safetensors shards (+ index when sharded), atomically.
///
/// tensors: list of (name, dtype name e.g. "F16", shape, bytes); returns the file names.
#[pyfunction]
#[pyo3(signature = (directory, tensors, max_shard_bytes=5_000_000_000, metadata=None))]
fn save_tensors(
    py: Python<'_>,
    directory: PathBuf,
    tensors: Vec<(String, String, Vec<usize>, Bound<'_, PyBytes>)>,
    max_shard_bytes: u64,
    metadata: Option<HashMap<String, String>>,
) -> PyResult<Vec<String>> {
    let mut refs = Vec::with_capacity(tensors.len());
    for (name, dtype, shape, data) in &tensors {
        let dtype = checkpoint::parse_dtype(dtype).map_err(to_py)?;
        refs.push(TensorRef {
            name,
            dtype,
            shape: shape.clone(),
            data: data.as_bytes(),
        });
    }
    detached(py, || {
        checkpoint::save_sharded(&directory, &refs, max_shard_bytes, metadata)
    })
    .map_err(to_py)
}

/// Read every tensor of a checkpoint folder: {name: (dtype name, shape, bytes)}.
#[pyfunction]
fn load_tensors<'py>(py: Python<'py>, directory: PathBuf) -> PyResult<Bound<'py, PyDict>> {
    let all = detached(py, || checkpoint::load_dir(&directory)).map_err(to_py)?;
    let out = PyDict::new(py);
    for (name, t) in all {
        let bytes = PyBytes::new(py, &t.data);
        out.set_item(name, (t.dtype.to_string(), t.shape, bytes))?;
    }
    Ok(out)
}

/// Validate a packed VPTQ checkpoint against its config; returns the bits-per-weight report.
#[pyfunction]
fn validate_checkpoint<'py>(py: Python<'py>, directory: PathBuf) -> PyResult<Bound<'py, PyAny>> {
    if !directory.is_dir() {
        return Err(InvalidValueError::new_err(format!(
            "{} is not a folder",
            directory.display()
        )));
    }
    let report = detached(py, || checkpoint::validate(&directory)).map_err(to_py)?;
    let text = serde_json::to_string(&report).expect("report serializes");
    py.import("json")?.call_method1("loads", (text,))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(save_tensors, m)?)?;
    m.add_function(wrap_pyfunction!(load_tensors, m)?)?;
    m.add_function(wrap_pyfunction!(validate_checkpoint, m)?)?;
    Ok(())
}
