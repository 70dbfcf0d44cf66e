//! Bindings for similarity search: the canonical score of every pair or of given pairs (`dot`),
//! exact top-k, all pairs above a threshold and greedy deduplication, over float32 rows (`topk`,
//! `dedup`) or packed uint64 sign bits (`hamming`).
//!
//! Inputs are C-contiguous numpy arrays borrowed read-only with the GIL held (`as_slice` rejects
//! other layouts; the Python layer calls `np.ascontiguousarray` first; `scores` and `dot_pairs`
//! check type and layout themselves and raise a ValueError naming the argument). The kernels run with the
//! GIL released, through `interrupt::run`, so Ctrl-C stops them: another Python thread could write
//! to a borrowed input meanwhile, which gives unspecified (but memory-safe) results for that call,
//! as with any numpy reader. Outputs are moved into new arrays without a copy.
//!
//! Argument names are those of the Python functions that call these (`tokvec.topk`,
//! `duplicate_pairs`, `dedup_indices`, `tokvec.dedup`), and kernel errors are renamed to them, so
//! a message names what the user passed (`embeddings: row 3 ...`, not the core's `e`).

use numpy::ndarray::{Array1, Dimension};
use numpy::{
    Element, IntoPyArray, PyArray, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray, PyReadonlyArray1,
    PyReadonlyArray2, PyReadwriteArray2, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use rayon::prelude::*;

use super::arrays::matrix;
use super::interrupt::{self, work};
use crate::cancel::Cancel;
use crate::dedup::{self, Dedup, Pair};
use crate::error::{CoreError, Result};
use crate::{dot, hamming, topk};

/// The core's argument names for one set of rows, as the Python layer calls it.
const EMBEDDINGS: &[(&str, &str)] = &[("e", "embeddings")];
/// The core's names of the two sides of a cross search, as `tokvec.dedup(..., reference=...)`
/// passes them (reference rows first).
const CROSS: &[(&str, &str)] = &[("a", "reference"), ("b", "embeddings")];

fn named(names: &'static [(&'static str, &'static str)]) -> impl Fn(CoreError) -> CoreError {
    move |e| e.with_arg_names(names)
}

/// Rows of float32 embeddings.
type F32Rows<'py> = PyReadonlyArray2<'py, f32>;
/// Rows of packed sign bits (uint64 words), as `embed_binary` returns them.
type Signs<'py> = PyReadonlyArray2<'py, u64>;

type TopkOut<'py> = (Bound<'py, PyArray2<f32>>, Bound<'py, PyArray2<i64>>);
type PairsOut<'py> = (
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<f32>>,
);

fn check_k(k: i64) -> PyResult<usize> {
    if k < 1 {
        return Err(PyValueError::new_err(format!("k must be >= 1, got {k}")));
    }
    usize::try_from(k).map_err(|_| PyValueError::new_err(format!("k is too large: {k}")))
}

fn check_threshold(threshold: f64) -> PyResult<f32> {
    if !threshold.is_finite() {
        return Err(PyValueError::new_err(format!(
            "threshold must be a finite number, got {threshold}"
        )));
    }
    Ok(threshold as f32)
}

fn check_bits(bits: i64, words: usize) -> PyResult<usize> {
    if words == 0 {
        return Err(PyValueError::new_err(
            "packed arrays need at least one uint64 word per row",
        ));
    }
    let max = 64 * words as i64;
    if bits < 1 || bits > max {
        return Err(PyValueError::new_err(format!(
            "bits must be in 1..={max} for arrays of {words} uint64 words per row, got {bits}"
        )));
    }
    Ok(bits as usize)
}

/// uint64 words per row of a packed array.
fn words(a: &PyReadonlyArray2<'_, u64>) -> usize {
    a.shape().get(1).copied().unwrap_or(0)
}

fn same_width(a: usize, b: usize, what: &str) -> PyResult<()> {
    if a != b {
        return Err(PyValueError::new_err(format!(
            "{what}: the arrays have {a} and {b} columns; they must match"
        )));
    }
    Ok(())
}

/// Two sets of rows that are scored against each other: `(na, nb, columns, a, b)`, after checking
/// that the columns agree (`what` names the pair in the error).
type TwoSets<'a, T> = (usize, usize, usize, &'a [T], &'a [T]);

fn two_sets<'a, T: Element>(
    a: &'a PyReadonlyArray2<'_, T>,
    b: &'a PyReadonlyArray2<'_, T>,
    what: &str,
) -> PyResult<TwoSets<'a, T>> {
    let [na, d]: [usize; 2] = a.shape().try_into().unwrap_or([0, 0]);
    let [nb, db]: [usize; 2] = b.shape().try_into().unwrap_or([0, 0]);
    same_width(d, db, what)?;
    Ok((na, nb, d, a.as_slice()?, b.as_slice()?))
}

/// The front of every search within one set of rows (`embeddings`): checks the threshold, then
/// runs `kernel(rows, n, columns, threshold, cancel)` with the GIL released and interruptible, its
/// errors named as the Python arguments. `per_pair` scales the work estimate (`n^2 / 2` pairs of
/// `columns` elements).
fn within<T, R, F>(
    py: Python<'_>,
    embeddings: &PyReadonlyArray2<'_, T>,
    threshold: f64,
    per_pair: usize,
    kernel: F,
) -> PyResult<R>
where
    T: Element + Sync,
    R: Send,
    F: FnOnce(&[T], usize, usize, f32, &Cancel) -> Result<R> + Send,
{
    let t = check_threshold(threshold)?;
    let [n, w]: [usize; 2] = embeddings.shape().try_into().unwrap_or([0, 0]);
    let x = embeddings.as_slice()?;
    interrupt::run(py, work(&[n, n / 2, w, per_pair]), |stop| {
        kernel(x, n, w, t, stop).map_err(named(EMBEDDINGS))
    })
}

/// [`within`] for packed sign bits: checks `bits` against the words per row first, and passes it
/// to `kernel(rows, n, words, bits, threshold, cancel)`.
fn within_bits<R: Send>(
    py: Python<'_>,
    embeddings: &PyReadonlyArray2<'_, u64>,
    threshold: f64,
    bits: i64,
    kernel: fn(&[u64], usize, usize, usize, f32, &Cancel) -> Result<R>,
) -> PyResult<R> {
    let bits = check_bits(bits, words(embeddings))?;
    within(py, embeddings, threshold, 4, |x, n, w, t, stop| {
        kernel(x, n, w, bits, t, stop)
    })
}

/// What [`exact_array`] asks of a matrix of float rows.
const F32_ROWS: &str = "2-d float32 array";

/// `a` as a read-only C-contiguous array of `T` with `D` dimensions, or a ValueError naming the
/// argument and what it got (for the functions that take arrays as they come).
fn exact_array<'py, T: Element, D: Dimension>(
    a: &Bound<'py, PyAny>,
    name: &str,
    want: &str,
) -> PyResult<PyReadonlyArray<'py, T, D>> {
    let arr = a.cast::<PyArray<T, D>>().map_err(|_| {
        let got = match a.cast::<PyUntypedArray>() {
            Ok(u) => format!("a {}-d {} array", u.ndim(), u.dtype()),
            Err(_) => a
                .get_type()
                .name()
                .map_or_else(|_| "another type".to_string(), |n| n.to_string()),
        };
        PyValueError::new_err(format!("{name} must be a {want}, got {got}"))
    })?;
    if !arr.is_c_contiguous() {
        return Err(PyValueError::new_err(format!(
            "{name} must be C-contiguous (pass np.ascontiguousarray({name}))"
        )));
    }
    arr.try_readonly()
        .map_err(|e| PyValueError::new_err(format!("{name}: {e}")))
}

fn topk_out<'py>(py: Python<'py>, nq: usize, kk: usize, scores: Vec<f32>, idx: Vec<u32>) -> PyResult<TopkOut<'py>> {
    let idx: Vec<i64> = idx.into_iter().map(i64::from).collect();
    Ok((matrix(py, nq, kk, scores)?, matrix(py, nq, kk, idx)?))
}

fn pairs_out(py: Python<'_>, pairs: Vec<Pair>) -> PairsOut<'_> {
    let i: Vec<i64> = pairs.iter().map(|p| p.0 as i64).collect();
    let j: Vec<i64> = pairs.iter().map(|p| p.1 as i64).collect();
    let s: Vec<f32> = pairs.iter().map(|p| p.2).collect();
    (
        Array1::from(i).into_pyarray(py),
        Array1::from(j).into_pyarray(py),
        Array1::from(s).into_pyarray(py),
    )
}

fn dedup_out(py: Python<'_>, d: Dedup) -> PairsOut<'_> {
    let kept: Vec<i64> = d.kept.into_iter().map(i64::from).collect();
    (
        Array1::from(kept).into_pyarray(py),
        Array1::from(d.dup_of).into_pyarray(py),
        Array1::from(d.score).into_pyarray(py),
    )
}

/// Exact inner-product top-k (cosine for L2-normalized rows), GIL released.
///
/// Args:
///     queries: C-contiguous float32 array (nq, d).
///     corpus: C-contiguous float32 array (nc, d).
///     k: neighbours per query, >= 1 (clipped to nc).
///
/// Returns:
///     (scores float32 (nq, min(k, nc)), indices int64 (nq, min(k, nc))), best first, ties broken
///     by the lower index. Scores are bit-identical on every CPU and thread count.
///
/// Raises:
///     ValueError: k < 1, mismatched columns, a non-contiguous array, NaN/inf or huge rows.
#[pyfunction(name = "topk")]
fn py_topk<'py>(py: Python<'py>, queries: F32Rows<'py>, corpus: F32Rows<'py>, k: i64) -> PyResult<TopkOut<'py>> {
    let k = check_k(k)?;
    let (nq, nc, d, q, c) = two_sets(&queries, &corpus, "queries and corpus")?;
    let (s, i) = interrupt::run(py, work(&[nq, nc, d]), |stop| topk::topk_cancellable(q, c, d, k, stop))?;
    topk_out(py, nq, k.min(nc), s, i)
}

/// The canonical score of every pair, dot(q[i], c[j]): the very values `topk` returns, bit for bit
/// (on any CPU and thread count). GIL released, Ctrl-C stops it.
///
/// Args:
///     q: C-contiguous float32 array (nq, d).
///     c: C-contiguous float32 array (nc, d).
///
/// Returns:
///     float32 (nq, nc).
///
/// Raises:
///     ValueError: an argument that is not a C-contiguous 2-d float32 array, mismatched columns,
///         d = 0, NaN/inf or rows with a norm above 1e18 (naming q or c).
///     KeyboardInterrupt: Ctrl-C (or the exception of another signal handler) during the run.
#[pyfunction(name = "scores")]
fn py_scores<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    c: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let (q, c) = (exact_array(q, "q", F32_ROWS)?, exact_array(c, "c", F32_ROWS)?);
    let (nq, nc, d, qs, cs) = two_sets(&q, &c, "q and c")?;
    let s = interrupt::run(py, work(&[nq, nc, d]), |stop| {
        dot::scores_cancellable(qs, cs, d, stop).map_err(named(&[("d", "q")]))
    })?;
    matrix(py, nq, nc, s)
}

/// The canonical scores dot(a[i[t]], b[j[t]]) of given pairs: the entries of `scores(a, b)` at
/// (i, j), bit for bit, without the matrix. GIL released, Ctrl-C stops it.
///
/// Args:
///     a: C-contiguous float32 array (na, d).
///     b: C-contiguous float32 array (nb, d).
///     i: C-contiguous int64 array (m,), rows of a.
///     j: C-contiguous int64 array (m,), rows of b.
///
/// Returns:
///     float32 (m,).
///
/// Raises:
///     ValueError: an argument of the wrong type or layout, mismatched columns or lengths, an index
///         out of range, d = 0, NaN/inf or rows with a norm above 1e18 (naming the argument).
///     KeyboardInterrupt: Ctrl-C (or the exception of another signal handler) during the run.
#[pyfunction(name = "dot_pairs")]
fn py_dot_pairs<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
    i: &Bound<'py, PyAny>,
    j: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    const INDEX: &str = "1-d int64 array";
    let (a, b) = (exact_array(a, "a", F32_ROWS)?, exact_array(b, "b", F32_ROWS)?);
    let (i, j): (PyReadonlyArray1<i64>, PyReadonlyArray1<i64>) =
        (exact_array(i, "i", INDEX)?, exact_array(j, "j", INDEX)?);
    let (_, _, d, xa, xb) = two_sets(&a, &b, "a and b")?;
    let (is, js) = (i.as_slice()?, j.as_slice()?);
    let s = interrupt::run(py, work(&[is.len(), d]), |stop| {
        dot::dot_pairs_cancellable(xa, xb, d, is, js, stop).map_err(named(&[("d", "a")]))
    })?;
    Ok(Array1::from(s).into_pyarray(py))
}

/// All pairs (i in reference, j in embeddings) with dot(reference[i], embeddings[j]) > threshold,
/// sorted by (i, j); GIL released, Ctrl-C stops it.
///
/// Args:
///     reference: C-contiguous float32 array (na, d).
///     embeddings: C-contiguous float32 array (nb, d).
///     threshold: a finite float.
///
/// Returns:
///     (i int64 (m,), j int64 (m,), score float32 (m,)).
///
/// Raises:
///     ValueError: mismatched columns, a non-finite threshold, a non-contiguous array, NaN/inf rows.
///     KeyboardInterrupt: Ctrl-C (or the exception of another signal handler) during the search.
#[pyfunction(name = "duplicate_pairs_cross")]
fn py_duplicate_pairs_cross<'py>(
    py: Python<'py>,
    reference: F32Rows<'py>,
    embeddings: F32Rows<'py>,
    threshold: f64,
) -> PyResult<PairsOut<'py>> {
    let t = check_threshold(threshold)?;
    let (na, nb, d, xa, xb) = two_sets(&reference, &embeddings, "reference and embeddings")?;
    let pairs = interrupt::run(py, work(&[na, nb, d]), |stop| {
        dedup::pairs_above_cross_cancellable(xa, na, xb, nb, d, t, stop).map_err(named(CROSS))
    })?;
    Ok(pairs_out(py, pairs))
}

/// All pairs (i, j), i < j, with dot(embeddings[i], embeddings[j]) > threshold, sorted by (i, j);
/// GIL released, Ctrl-C stops it.
///
/// Args:
///     embeddings: C-contiguous float32 array (n, d).
///     threshold: a finite float.
///
/// Returns:
///     (i int64 (m,), j int64 (m,), score float32 (m,)).
///
/// Raises:
///     ValueError: a non-finite threshold, a non-contiguous array, NaN/inf or huge rows.
///     KeyboardInterrupt: Ctrl-C (or the exception of another signal handler) during the search.
#[pyfunction(name = "duplicate_pairs")]
fn py_duplicate_pairs<'py>(py: Python<'py>, embeddings: F32Rows<'py>, threshold: f64) -> PyResult<PairsOut<'py>> {
    let pairs = within(py, &embeddings, threshold, 1, dedup::pairs_above_cancellable)?;
    Ok(pairs_out(py, pairs))
}

/// Greedy deduplication in input order: row i is dropped when dot(embeddings[i], embeddings[j]) >
/// threshold for an earlier *kept* row j. GIL released, Ctrl-C stops it.
///
/// Args:
///     embeddings: C-contiguous float32 array (n, d).
///     threshold: a finite float.
///
/// Returns:
///     (kept int64 ascending, dup_of int64 (n,) — the earlier kept row with the highest score, -1
///     for kept rows —, score float32 (n,), NaN for kept rows).
///
/// Raises:
///     ValueError: a non-finite threshold, a non-contiguous array, NaN/inf or huge rows.
///     KeyboardInterrupt: Ctrl-C (or the exception of another signal handler) during the search.
#[pyfunction(name = "dedup")]
fn py_dedup<'py>(py: Python<'py>, embeddings: F32Rows<'py>, threshold: f64) -> PyResult<PairsOut<'py>> {
    let r = within(py, &embeddings, threshold, 1, dedup::dedup_greedy_cancellable)?;
    Ok(dedup_out(py, r))
}

/// Top-k over packed sign bits by similarity 1 - 2 * hamming / bits; GIL released, Ctrl-C stops it.
///
/// Args:
///     queries: C-contiguous uint64 array (nq, words); bit j is word j // 64, bit j % 64.
///     corpus: C-contiguous uint64 array (nc, words).
///     k: neighbours per query, >= 1 (clipped to nc).
///     bits: meaningful bits per row, 1..=64 * words; bits past it must be zero.
///
/// Returns:
///     (scores float32 (nq, min(k, nc)), indices int64 (nq, min(k, nc))), best first, ties broken
///     by the lower index.
///
/// Raises:
///     ValueError: k < 1, bits out of range, mismatched words, non-zero padding bits.
#[pyfunction(name = "topk_binary")]
fn py_topk_binary<'py>(
    py: Python<'py>,
    queries: Signs<'py>,
    corpus: Signs<'py>,
    k: i64,
    bits: i64,
) -> PyResult<TopkOut<'py>> {
    let k = check_k(k)?;
    let (nq, nc, w, qs, cs) = two_sets(&queries, &corpus, "queries and corpus")?;
    let bits = check_bits(bits, w)?;
    let (s, i) = interrupt::run(py, work(&[nq, nc, w, 4]), |stop| {
        hamming::topk_cancellable(qs, nq, cs, nc, w, bits, k, stop)
    })?;
    topk_out(py, nq, k.min(nc), s, i)
}

/// All pairs (i, j), i < j, with 1 - 2 * hamming / bits > threshold, sorted by (i, j); GIL
/// released, Ctrl-C stops it.
///
/// Args:
///     embeddings: C-contiguous uint64 array (n, words).
///     threshold: a finite float.
///     bits: meaningful bits per row, 1..=64 * words.
///
/// Returns:
///     (i int64 (m,), j int64 (m,), score float32 (m,)).
///
/// Raises:
///     ValueError: bits out of range, a non-finite threshold, non-zero padding bits.
#[pyfunction(name = "duplicate_pairs_binary")]
fn py_duplicate_pairs_binary<'py>(
    py: Python<'py>,
    embeddings: Signs<'py>,
    threshold: f64,
    bits: i64,
) -> PyResult<PairsOut<'py>> {
    let pairs = within_bits(py, &embeddings, threshold, bits, hamming::pairs_above_cancellable)?;
    Ok(pairs_out(py, pairs))
}

/// Greedy deduplication over packed sign bits (similarity 1 - 2 * hamming / bits); GIL released,
/// Ctrl-C stops it.
///
/// Args:
///     embeddings: C-contiguous uint64 array (n, words).
///     threshold: a finite float.
///     bits: meaningful bits per row, 1..=64 * words.
///
/// Returns:
///     (kept int64 ascending, dup_of int64 (n,), -1 for kept rows, score float32 (n,), NaN for
///     kept rows).
///
/// Raises:
///     ValueError: bits out of range, a non-finite threshold, non-zero padding bits.
#[pyfunction(name = "dedup_binary")]
fn py_dedup_binary<'py>(py: Python<'py>, embeddings: Signs<'py>, threshold: f64, bits: i64) -> PyResult<PairsOut<'py>> {
    let r = within_bits(py, &embeddings, threshold, bits, hamming::dedup_greedy_cancellable)?;
    Ok(dedup_out(py, r))
}

/// Greedy resolution of precomputed pairs: row j is dropped when a pair (i, j), i < j, with score
/// > threshold has a kept i. Pairs computed once at a low threshold can be resolved at any higher
/// threshold (a threshold sweep), and pairs from several sources (an on-disk index of kept rows,
/// cross pairs, pairs within a batch) can be combined. GIL released.
///
/// Args:
///     n: number of rows.
///     i: int64 (m,) first rows of the pairs.
///     j: int64 (m,) second rows, i < j < n.
///     score: float32 (m,) pair scores.
///     threshold: only pairs with score > threshold count.
///
/// Returns:
///     (kept int64 ascending, dup_of int64 (n,), -1 for kept rows, score float32 (n,), NaN for kept
///     rows), as `dedup`.
///
/// Raises:
///     ValueError: arrays of different lengths, a pair with i >= j or j >= n, a non-finite threshold.
#[pyfunction(name = "dedup_resolve")]
fn py_dedup_resolve<'py>(
    py: Python<'py>,
    n: usize,
    i: PyReadonlyArray1<'py, i64>,
    j: PyReadonlyArray1<'py, i64>,
    score: PyReadonlyArray1<'py, f32>,
    threshold: f64,
) -> PyResult<PairsOut<'py>> {
    let t = check_threshold(threshold)?;
    if n > u32::MAX as usize {
        return Err(PyValueError::new_err(format!("n must be below 2**32, got {n}")));
    }
    let (a, b, s) = (i.as_slice()?, j.as_slice()?, score.as_slice()?);
    if a.len() != b.len() || a.len() != s.len() {
        return Err(PyValueError::new_err(format!(
            "i, j and score must have the same length, got {}, {} and {}",
            a.len(),
            b.len(),
            s.len()
        )));
    }
    let mut pairs: Vec<Pair> = Vec::with_capacity(a.len());
    for k in 0..a.len() {
        let (x, y) = (a[k], b[k]);
        if x < 0 || x >= y || y as u64 >= n as u64 {
            return Err(PyValueError::new_err(format!(
                "pair {k} is ({x}, {y}): pairs need 0 <= i < j < n = {n}"
            )));
        }
        if s[k] > t {
            pairs.push((x as u32, y as u32, s[k]));
        }
    }
    let r = py.detach(|| dedup::resolve(n, pairs));
    Ok(dedup_out(py, r))
}

/// Scales every row to unit L2 norm in place, with the arithmetic of a normalized model's pooling
/// (so the rows of a `normalize: false` model become, bit for bit, those of the same model
/// normalized); zero rows stay zero. GIL released.
///
/// Args:
///     e: C-contiguous, writable float32 array (n, d).
///
/// Raises:
///     ValueError: a non-contiguous or read-only array.
#[pyfunction(name = "normalize_rows")]
fn py_normalize_rows(py: Python<'_>, mut e: PyReadwriteArray2<'_, f32>) -> PyResult<()> {
    let d = e.shape()[1];
    let x = e.as_slice_mut()?;
    if d > 0 {
        py.detach(|| {
            x.par_chunks_mut(d)
                .with_min_len(256)
                .for_each(crate::pool::l2_normalize)
        });
    }
    Ok(())
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(py_normalize_rows, m)?)?;
    m.add_function(wrap_pyfunction!(py_topk, m)?)?;
    m.add_function(wrap_pyfunction!(py_scores, m)?)?;
    m.add_function(wrap_pyfunction!(py_dot_pairs, m)?)?;
    m.add_function(wrap_pyfunction!(py_duplicate_pairs, m)?)?;
    m.add_function(wrap_pyfunction!(py_duplicate_pairs_cross, m)?)?;
    m.add_function(wrap_pyfunction!(py_dedup, m)?)?;
    m.add_function(wrap_pyfunction!(py_topk_binary, m)?)?;
    m.add_function(wrap_pyfunction!(py_duplicate_pairs_binary, m)?)?;
    m.add_function(wrap_pyfunction!(py_dedup_binary, m)?)?;
    m.add_function(wrap_pyfunction!(py_dedup_resolve, m)?)?;
    Ok(())
}
