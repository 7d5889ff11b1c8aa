//! PyO3 bindings of `vptq-core` (the module `vptq_rs._core`): conversion only.
//!
//! Long calls release the interpreter through [`detached`]; errors map to the Python
//! classes of `vptq_rs.errors` in one place ([`to_py`]).

use numpy::ndarray::{Array2, ArrayView1, ArrayView2};
use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray2, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use vptq_core::bitpack::{self, Code};
use vptq_core::kmeans::{self as core_kmeans, KMeansOptions};
use vptq_core::CoreError;

mod checkpoint;

pyo3::import_exception!(vptq_rs.errors, InvalidValueError);
pyo3::import_exception!(vptq_rs.errors, CheckpointError);
pyo3::import_exception!(vptq_rs.errors, VptqIOError);

/// The one mapping from core errors to Python exceptions.
pub(crate) fn to_py(err: CoreError) -> PyErr {
    match err {
        CoreError::InvalidArgument(msg) => InvalidValueError::new_err(msg),
        CoreError::Checkpoint(msg) => CheckpointError::new_err(msg),
        e @ CoreError::Io { .. } => VptqIOError::new_err(e.to_string()),
    }
}

/// Run `f` with the interpreter released (long numeric work must not hold it).
pub(crate) fn detached<T: Send, F: FnOnce() -> T + Send>(py: Python<'_>, f: F) -> T {
    py.detach(f)
}

/// An integer index array of any supported dtype, borrowed read-only.
enum Codes<'py> {
    I8(PyReadonlyArray2<'py, i8>),
    I16(PyReadonlyArray2<'py, i16>),
    I32(PyReadonlyArray2<'py, i32>),
    I64(PyReadonlyArray2<'py, i64>),
    U8(PyReadonlyArray2<'py, u8>),
    U16(PyReadonlyArray2<'py, u16>),
    U32(PyReadonlyArray2<'py, u32>),
    U64(PyReadonlyArray2<'py, u64>),
}

macro_rules! each_codes {
    ($c:expr, $a:ident => $body:expr) => {
        match $c {
            Codes::I8($a) => $body,
            Codes::I16($a) => $body,
            Codes::I32($a) => $body,
            Codes::I64($a) => $body,
            Codes::U8($a) => $body,
            Codes::U16($a) => $body,
            Codes::U32($a) => $body,
            Codes::U64($a) => $body,
        }
    };
}

impl<'py> Codes<'py> {
    fn extract(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<Self> {
        let arr = obj.cast::<PyUntypedArray>().map_err(|_| {
            InvalidValueError::new_err(format!("{name} must be a numpy integer array"))
        })?;
        if arr.ndim() != 2 {
            return Err(InvalidValueError::new_err(format!(
                "{name} must be 2-D (rows, n), got {} dimensions",
                arr.ndim()
            )));
        }
        macro_rules! try_as {
            ($t:ty, $v:ident) => {
                if let Ok(a) = obj.cast::<PyArray2<$t>>() {
                    return Ok(Codes::$v(a.readonly()));
                }
            };
        }
        try_as!(i64, I64);
        try_as!(i32, I32);
        try_as!(i16, I16);
        try_as!(u16, U16);
        try_as!(u8, U8);
        try_as!(i8, I8);
        try_as!(u32, U32);
        try_as!(u64, U64);
        Err(InvalidValueError::new_err(format!(
            "{name} must have an integer dtype, got {}",
            arr.dtype()
        )))
    }

    fn shape(&self) -> (usize, usize) {
        each_codes!(self, a => { let s = a.shape(); (s[0], s[1]) })
    }
}

/// A contiguous row-major copy-free view when possible, else an owned copy.
fn contiguous<T: Clone>(v: ArrayView2<'_, T>) -> std::borrow::Cow<'_, [T]> {
    match v.to_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(v.iter().cloned().collect()),
    }
}

/// Pack into a fresh int32 numpy array, with the interpreter released while packing.
fn pack_typed<'py, M: Code + Clone, R: Code + Clone>(
    py: Python<'py>,
    main: ArrayView2<'_, M>,
    res: Option<ArrayView2<'_, R>>,
    index_bits: u32,
    res_bits: u32,
) -> PyResult<Bound<'py, PyArray2<i32>>> {
    let (rows, n) = main.dim();
    let m = contiguous(main);
    let r = res.map(contiguous);
    let words = bitpack::words_per_row(n, index_bits + res_bits);
    let out = PyArray2::<i32>::zeros(py, [rows, words], false);
    // SAFETY: `out` was just created here and is not shared with Python code yet.
    let dst = unsafe { out.as_slice_mut()? };
    // int32 words are the bits of uint32 words, as the checkpoint format stores them
    let dst = as_u32_mut(dst);
    detached(py, || {
        bitpack::pack_into(&m, r.as_deref(), rows, n, index_bits, res_bits, dst)
    })
    .map_err(to_py)?;
    Ok(out)
}

/// Bit-pack main (and residual) indices into int32 words, FORMAT.md layout.
///
/// main, res: integer arrays (rows, n); returns int32 (rows, ceil(n*(index_bits+res_bits)/32)).
#[pyfunction]
#[pyo3(signature = (main, index_bits, res=None, res_bits=0))]
fn pack_indices<'py>(
    py: Python<'py>,
    main: &Bound<'py, PyAny>,
    index_bits: i64,
    res: Option<&Bound<'py, PyAny>>,
    res_bits: i64,
) -> PyResult<Bound<'py, PyArray2<i32>>> {
    let (index_bits, res_bits) = widths(index_bits, res_bits)?;
    let main = Codes::extract(main, "main")?;
    let res = res.map(|r| Codes::extract(r, "res")).transpose()?;
    match &res {
        Some(r) if r.shape() != main.shape() => Err(InvalidValueError::new_err(format!(
            "res has shape {:?}, main has {:?}",
            r.shape(),
            main.shape()
        ))),
        Some(r) => each_codes!(&main, m => each_codes!(r, rr =>
            pack_typed(py, m.as_array(), Some(rr.as_array()), index_bits, res_bits))),
        None => each_codes!(&main, m =>
            pack_typed::<_, u16>(py, m.as_array(), None, index_bits, res_bits)),
    }
}

fn widths(index_bits: i64, res_bits: i64) -> PyResult<(u32, u32)> {
    let ib = u32::try_from(index_bits).map_err(|_| {
        InvalidValueError::new_err(format!("index_bits must be in 1..=16, got {index_bits}"))
    })?;
    let rb = u32::try_from(res_bits).map_err(|_| {
        InvalidValueError::new_err(format!("res_bits must be in 0..=16, got {res_bits}"))
    })?;
    bitpack::check_widths(ib, rb).map_err(to_py)?;
    Ok((ib, rb))
}

/// (main, res or None) as returned to Python.
type Unpacked<'py> = (Bound<'py, PyArray2<i32>>, Option<Bound<'py, PyArray2<i32>>>);

/// Unpack int32 words (rows, words) into (main, res or None), each int32 (rows, n).
#[pyfunction]
#[pyo3(signature = (packed, index_bits, n, res_bits=0))]
fn unpack_indices<'py>(
    py: Python<'py>,
    packed: &Bound<'py, PyAny>,
    index_bits: i64,
    n: i64,
    res_bits: i64,
) -> PyResult<Unpacked<'py>> {
    let (index_bits, res_bits) = widths(index_bits, res_bits)?;
    let n = usize::try_from(n)
        .map_err(|_| InvalidValueError::new_err(format!("n must be >= 0, got {n}")))?;
    let arr = packed.cast::<PyArray2<i32>>().map_err(|_| {
        let what = packed
            .cast::<PyUntypedArray>()
            .map(|a| format!("{}-D {}", a.ndim(), a.dtype()))
            .unwrap_or_else(|_| "not a numpy array".into());
        InvalidValueError::new_err(format!("packed must be a 2-D int32 array, got {what}"))
    })?;
    let ro = arr.readonly();
    let view = ro.as_array();
    let (rows, words) = view.dim();
    let data = contiguous(view);
    let words_u32: &[u32] = as_u32(&data);
    // before allocating (rows, n) outputs: a huge or inconsistent n is an error, not an abort
    bitpack::check_packed_shape(words_u32.len(), rows, words, n, index_bits, res_bits)
        .map_err(to_py)?;
    let main = PyArray2::<i32>::zeros(py, [rows, n], false);
    let res = (res_bits > 0).then(|| PyArray2::<i32>::zeros(py, [rows, n], false));
    // SAFETY: both arrays were just created here and are not shared with Python code yet.
    let m = unsafe { main.as_slice_mut()? };
    let r = match &res {
        Some(r) => Some(unsafe { r.as_slice_mut()? }),
        None => None,
    };
    detached(py, || {
        bitpack::unpack_into(words_u32, rows, words, n, index_bits, res_bits, m, r)
    })
    .map_err(to_py)?;
    Ok((main, res))
}

/// Reinterpret i32 words as u32 (same size and alignment).
fn as_u32(v: &[i32]) -> &[u32] {
    // SAFETY: i32 and u32 have identical size, alignment and no invalid bit patterns.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u32>(), v.len()) }
}

/// Reinterpret i32 words as u32, mutably.
fn as_u32_mut(v: &mut [i32]) -> &mut [u32] {
    // SAFETY: as in `as_u32`; the borrow is unique.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u32>(), v.len()) }
}

/// Weighted k-means; returns (centroids float32 (k, d), labels int32 (N,)).
///
/// x: float32 (N, d); weights: float32 (N,) or None. Also available with
/// `return_info=True`, adding a dict with inertia and iterations.
#[pyfunction]
#[pyo3(signature = (x, k, *, weights=None, iters=100, tol=1e-5, seed=0, return_info=false))]
#[allow(clippy::too_many_arguments)]
fn kmeans<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    k: i64,
    weights: Option<&Bound<'py, PyAny>>,
    iters: i64,
    tol: f64,
    seed: u64,
    return_info: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let xa = x.cast::<PyArray2<f32>>().map_err(|_| {
        let what = x
            .cast::<PyUntypedArray>()
            .map(|a| format!("{}-D {}", a.ndim(), a.dtype()))
            .unwrap_or_else(|_| "not a numpy array".into());
        InvalidValueError::new_err(format!("x must be a 2-D float32 array (N, d), got {what}"))
    })?;
    let xr = xa.readonly();
    let xv = xr.as_array();
    let (n, d) = xv.dim();
    let wr = weights
        .map(|w| {
            w.cast::<PyArray1<f32>>()
                .map(|a| a.readonly())
                .map_err(|_| InvalidValueError::new_err("weights must be a 1-D float32 array (N,)"))
        })
        .transpose()?;
    let wv: Option<ArrayView1<'_, f32>> = wr.as_ref().map(|w| w.as_array());
    let wdata = wv.map(|w| w.iter().copied().collect::<Vec<f32>>());
    let k = usize::try_from(k)
        .map_err(|_| InvalidValueError::new_err(format!("k must be >= 1, got {k}")))?;
    let iters = usize::try_from(iters)
        .map_err(|_| InvalidValueError::new_err(format!("iters must be >= 0, got {iters}")))?;
    let xs = contiguous(xv);
    let opts = KMeansOptions {
        k,
        iters,
        tol,
        seed,
    };
    let r = detached(py, || {
        core_kmeans::kmeans(&xs, n, d, wdata.as_deref(), opts)
    })
    .map_err(to_py)?;
    let cents = Array2::from_shape_vec((k, d), r.centroids)
        .expect("k*d centroids")
        .into_pyarray(py);
    let labels: Vec<i32> = r.labels.into_iter().map(|l| l as i32).collect();
    let labels = labels.into_pyarray(py);
    if return_info {
        let info = PyDict::new(py);
        info.set_item("inertia", r.inertia)?;
        info.set_item("iterations", r.iterations)?;
        Ok((cents, labels, info).into_pyobject(py)?.into_any())
    } else {
        Ok((cents, labels).into_pyobject(py)?.into_any())
    }
}

/// Index of the nearest centroid (squared L2) per row; returns int32 (N,).
///
/// x: float32 (N, d); centroids: float32 (K, d). Ties go to the lowest index.
#[pyfunction]
fn nearest<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    centroids: PyReadonlyArray2<'py, f32>,
) -> PyResult<Bound<'py, PyArray1<i32>>> {
    let xv = x.as_array();
    let cv = centroids.as_array();
    let (n, d) = xv.dim();
    let (k, dc) = cv.dim();
    if dc != d {
        return Err(InvalidValueError::new_err(format!(
            "centroids have {dc} columns, x has {d}"
        )));
    }
    let xs = contiguous(xv);
    let cs = contiguous(cv);
    let labels = detached(py, || core_kmeans::nearest(&xs, n, d, &cs, k)).map_err(to_py)?;
    let labels: Vec<i32> = labels.into_iter().map(|l| l as i32).collect();
    Ok(labels.into_pyarray(py))
}

/// The compiled core of vptq-rs.
#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(pack_indices, m)?)?;
    m.add_function(wrap_pyfunction!(unpack_indices, m)?)?;
    m.add_function(wrap_pyfunction!(kmeans, m)?)?;
    m.add_function(wrap_pyfunction!(nearest, m)?)?;
    checkpoint::register(m)?;
    Ok(())
}
