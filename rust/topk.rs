//! Exact inner-product top-k: for every query row, the `k` corpus rows with the highest dot product,
//! best first, ties broken by the lower corpus index.
//!
//! # Exactness
//!
//! Every score is the canonical dot product of [`crate::dot`], bit-identical on every ISA, so the
//! result does not depend on the CPU, the blocking or the number of threads: top-k under a total
//! order (score, then index) of a fixed set of scores is unique.
//!
//! # Performance notes
//!
//! * The canonical dot is only used to re-score candidates. Candidates come from the int8
//!   pre-score of [`crate::int8`], whose error bound `eps` is proven: a corpus row can only enter a
//!   query's top-k if its exact score is >= the current k-th best exact score `s_k`, hence its
//!   pre-score is >= `s_k - eps`. Every row whose pre-score passes that test is re-scored exactly;
//!   the others cannot be in the result. So the result is exact although almost all FLOPs are
//!   approximate.
//! * The corpus is processed in super-blocks of [`SUPER_BLOCK`] rows, quantized just before use (the
//!   f32 corpus is read once, the int8 copy of a super-block stays in L2), and all query tiles sweep
//!   one super-block in parallel. The full `nq x nc` score matrix never exists; each query keeps a
//!   bounded heap of `k` entries.
//! * Without an int8 kernel (no AVX2), the pre-score is the canonical dot itself (`eps = 0`).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rayon::prelude::*;

use crate::cancel::Cancel;
#[cfg(any(test, feature = "internals"))]
use crate::dot::dot_scalar;
use crate::dot::{dot, lower_threshold, row_norms, rows_of};
use crate::error::{CoreError, Result};
use crate::int8::{int8_serves, scan_int8, Int8Bound, PackedCorpus, QuantQueries, QT};
use crate::simd::{isa, Isa};

/// f32 unit roundoff, under the name `dedup` uses.
pub(crate) use crate::dot::U32 as U32_ERR;

/// Rows per super-block of the blocked top-k (the int8 copy, `rows x d` bytes, stays in L2).
pub const SUPER_BLOCK: usize = 2048;

// ---------------------------------------------------------------------------------------------
// Bounded top-k heap
// ---------------------------------------------------------------------------------------------

/// A (score, index) candidate ordered so that the *worse* entry is the greater one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub(crate) score: f32,
    pub(crate) idx: u32,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> Ordering {
        o.score.total_cmp(&self.score).then(self.idx.cmp(&o.idx))
    }
}

/// The best `k` entries seen so far (a max-heap on "worse").
#[derive(Debug)]
pub(crate) struct TopK {
    k: usize,
    heap: BinaryHeap<Entry>,
}

impl TopK {
    pub(crate) fn new(k: usize) -> Self {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k.min(1 << 16)),
        }
    }

    /// Offers a candidate.
    #[inline]
    pub(crate) fn push(&mut self, score: f32, idx: u32) {
        let e = Entry { score, idx };
        if self.heap.len() < self.k {
            self.heap.push(e);
        } else if let Some(mut top) = self.heap.peek_mut() {
            if e < *top {
                *top = e;
            }
        }
    }

    /// The k-th best score, or -inf while fewer than k entries were offered.
    #[inline]
    pub(crate) fn kth(&self) -> f32 {
        if self.heap.len() < self.k {
            f32::NEG_INFINITY
        } else {
            self.heap.peek().map_or(f32::NEG_INFINITY, |e| e.score)
        }
    }

    /// The entries, best first.
    pub(crate) fn into_sorted(self) -> Vec<Entry> {
        self.heap.into_sorted_vec()
    }
}

/// Flattens per-query heaps into `nq * k'` scores and indices.
pub(crate) fn flatten(heaps: Vec<TopK>, kk: usize) -> (Vec<f32>, Vec<u32>) {
    let mut scores = Vec::with_capacity(heaps.len() * kk);
    let mut idx = Vec::with_capacity(heaps.len() * kk);
    for h in heaps {
        let v = h.into_sorted();
        debug_assert_eq!(v.len(), kk);
        for e in v {
            scores.push(e.score);
            idx.push(e.idx);
        }
    }
    (scores, idx)
}

// ---------------------------------------------------------------------------------------------
// Top-k
// ---------------------------------------------------------------------------------------------

pub(crate) fn check_k(k: usize) -> Result<()> {
    if k == 0 {
        return Err(CoreError::arg("k", "must be at least 1"));
    }
    Ok(())
}

/// Exact inner-product top-k of every query row against the corpus rows (row-major, `d` columns).
///
/// Returns `nq * k'` scores and corpus indices with `k' = min(k, nc)`, each query's row sorted best
/// first, ties broken by the lower index. Scores are canonical dot products (see the module docs):
/// the result is identical to [`topk_scalar`] on every CPU and for any number of threads.
///
/// Errors on `d == 0`, `k == 0`, a length that is not a multiple of `d`, and rows with NaN,
/// infinity or a norm above [`crate::dot::MAX_NORM`].
#[cfg(any(test, feature = "internals"))]
pub fn topk(queries: &[f32], corpus: &[f32], d: usize, k: usize) -> Result<(Vec<f32>, Vec<u32>)> {
    topk_cancellable(queries, corpus, d, k, Cancel::never())
}

/// [`topk`] that stops with [`CoreError::Interrupted`] soon after `cancel` is set (polled per
/// corpus super-block and per query tile); otherwise the same result.
pub fn topk_cancellable(
    queries: &[f32],
    corpus: &[f32],
    d: usize,
    k: usize,
    cancel: &Cancel,
) -> Result<(Vec<f32>, Vec<u32>)> {
    let path = if int8_serves(d) { Path::Int8 } else { Path::Exact(isa()) };
    topk_with(queries, corpus, d, k, path, cancel)
}

/// The simple reference for [`topk`]: every canonical score, fully sorted. Same contract.
#[cfg(any(test, feature = "internals"))]
pub fn topk_scalar(queries: &[f32], corpus: &[f32], d: usize, k: usize) -> Result<(Vec<f32>, Vec<u32>)> {
    check_k(k)?;
    let nq = rows_of(queries, d, "queries")?;
    let nc = rows_of(corpus, d, "corpus")?;
    row_norms(queries, d, "queries")?;
    row_norms(corpus, d, "corpus")?;
    Ok(topk_by_sorting(nq, nc, k, |i, j| {
        dot_scalar(&queries[i * d..(i + 1) * d], &corpus[j * d..(j + 1) * d])
    }))
}

/// The reference top-k behind every `topk_scalar`: for each of `nq` queries, every `score(query,
/// corpus row)` of the `nc` corpus rows, fully sorted (best first, ties broken by the lower
/// index), and its first `min(k, nc)` entries, flattened as [`flatten`] does.
#[cfg(any(test, feature = "internals"))]
pub(crate) fn topk_by_sorting(
    nq: usize,
    nc: usize,
    k: usize,
    score: impl Fn(usize, usize) -> f32,
) -> (Vec<f32>, Vec<u32>) {
    let kk = k.min(nc);
    let mut scores = Vec::with_capacity(nq * kk);
    let mut idx = Vec::with_capacity(nq * kk);
    for i in 0..nq {
        let mut all: Vec<Entry> = (0..nc)
            .map(|j| Entry {
                score: score(i, j),
                idx: j as u32,
            })
            .collect();
        all.sort_unstable();
        for e in &all[..kk] {
            scores.push(e.score);
            idx.push(e.idx);
        }
    }
    (scores, idx)
}

/// Which pre-score the blocked top-k uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Path {
    /// The canonical dot on this ISA for every pair.
    Exact(Isa),
    /// The int8 pre-score of [`crate::int8`] (VNNI or AVX2 kernel), then canonical re-scoring.
    Int8,
}

pub(crate) fn topk_with(
    queries: &[f32],
    corpus: &[f32],
    d: usize,
    k: usize,
    path: Path,
    cancel: &Cancel,
) -> Result<(Vec<f32>, Vec<u32>)> {
    check_k(k)?;
    let nq = rows_of(queries, d, "queries")?;
    let nc = rows_of(corpus, d, "corpus")?;
    let qnorms = row_norms(queries, d, "queries")?;
    let cnorms = row_norms(corpus, d, "corpus")?;
    let kk = k.min(nc);
    if nq == 0 || kk == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let heaps = match path {
        Path::Int8 if int8_serves(d) => topk_int8(queries, corpus, d, kk, &qnorms, &cnorms, cancel),
        Path::Int8 => topk_exact(queries, corpus, d, kk, isa(), cancel),
        Path::Exact(level) => topk_exact(queries, corpus, d, kk, level, cancel),
    };
    // the kernels skip their remaining work once the flag is set: their heaps are then partial
    cancel.check()?;
    Ok(flatten(heaps, kk))
}

/// Canonical score for every pair, query tiles in parallel over corpus super-blocks.
/// Cancellation: polled per super-block and per query tile (one tile x one super-block is at most
/// `QT x SUPER_BLOCK` dot products); once set, the heaps are left partial and the caller errors.
fn topk_exact(queries: &[f32], corpus: &[f32], d: usize, kk: usize, level: Isa, cancel: &Cancel) -> Vec<TopK> {
    let nq = queries.len() / d;
    let mut heaps: Vec<TopK> = (0..nq).map(|_| TopK::new(kk)).collect();
    for (b, block) in corpus.chunks(SUPER_BLOCK * d).enumerate() {
        if cancel.is_cancelled() {
            break;
        }
        let base = b * SUPER_BLOCK;
        heaps
            .par_chunks_mut(QT)
            .zip(queries.par_chunks(QT * d))
            .for_each(|(hs, qs)| {
                if cancel.is_cancelled() {
                    return;
                }
                for (h, q) in hs.iter_mut().zip(qs.chunks(d)) {
                    for (j, c) in block.chunks(d).enumerate() {
                        h.push(dot(level, q, c), (base + j) as u32);
                    }
                }
            });
    }
    heaps
}

/// Int8 pre-score + canonical re-scoring, query tiles in parallel over corpus super-blocks.
/// Cancellation as [`topk_exact`].
fn topk_int8(
    queries: &[f32],
    corpus: &[f32],
    d: usize,
    kk: usize,
    qnorms: &[f64],
    cnorms: &[f64],
    cancel: &Cancel,
) -> Vec<TopK> {
    let nq = queries.len() / d;
    let nc = corpus.len() / d;
    let qz = QuantQueries::new(queries, d);
    let mut heaps: Vec<TopK> = (0..nq).map(|_| TopK::new(kk)).collect();
    let mut pk = PackedCorpus::empty(d);
    let mut base = 0;
    while base < nc && !cancel.is_cancelled() {
        let rows = SUPER_BLOCK.min(nc - base);
        pk.fill(rows, d, |s| {
            (s < rows).then(|| &corpus[(base + s) * d..(base + s + 1) * d])
        });
        let bound = Int8Bound::new(d, &pk.sc, &pk.l1, cnorms[base..base + rows].iter().copied());
        let pk = &pk;
        let qz = &qz;
        heaps.par_chunks_mut(QT).enumerate().for_each(|(t, hs)| {
            if cancel.is_cancelled() {
                return;
            }
            let q0 = t * QT;
            let qrows: Vec<usize> = (q0..q0 + hs.len()).collect();
            let mut eps = [0.0f64; QT];
            let mut thr = [f32::INFINITY; QT];
            for (i, &q) in qrows.iter().enumerate() {
                eps[i] = bound.eps(qz.s[q], qz.l1[q], qnorms[q]);
                thr[i] = lower_threshold(hs[i].kth() as f64, eps[i]);
            }
            scan_int8(qz, &qrows, pk, 0, pk.groups, &mut thr, |slot, cs, _| {
                if cs < rows {
                    let q = q0 + slot;
                    let c = base + cs;
                    let s = dot(isa(), &queries[q * d..(q + 1) * d], &corpus[c * d..(c + 1) * d]);
                    hs[slot].push(s, c as u32);
                }
                lower_threshold(hs[slot].kth() as f64, eps[slot])
            });
        });
        base += rows;
    }
    heaps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dot::tests::{clustered, gaussian, Rng};
    use proptest::prelude::*;

    fn levels() -> Vec<Isa> {
        crate::simd::available()
    }

    fn paths() -> Vec<Path> {
        let mut p: Vec<Path> = levels().into_iter().map(Path::Exact).collect();
        if crate::int8::int8_available() {
            p.push(Path::Int8);
        }
        p
    }

    #[test]
    fn a_set_flag_interrupts_topk() {
        let (d, nq, nc) = (40, 20, 5000);
        let (q, c) = (gaussian(nq, d, 1), gaussian(nc, d, 2));
        let stop = crate::testutil::stopped();
        for p in paths() {
            assert!(
                matches!(topk_with(&q, &c, d, 3, p, &stop), Err(CoreError::Interrupted)),
                "{p:?}"
            );
        }
        assert!(matches!(
            topk_cancellable(&q, &c, d, 3, &stop),
            Err(CoreError::Interrupted)
        ));
        assert_eq!(
            topk_cancellable(&q, &c, d, 3, &Cancel::new()).unwrap(),
            topk(&q, &c, d, 3).unwrap()
        );
    }

    fn check_all_paths(q: &[f32], c: &[f32], d: usize, k: usize) {
        let want = topk_scalar(q, c, d, k).unwrap();
        for p in paths() {
            let got = topk_with(q, c, d, k, p, Cancel::never()).unwrap();
            assert_eq!(got.1, want.1, "indices, path {p:?}, d={d} k={k}");
            let gb: Vec<u32> = got.0.iter().map(|v| v.to_bits()).collect();
            let wb: Vec<u32> = want.0.iter().map(|v| v.to_bits()).collect();
            assert_eq!(gb, wb, "scores, path {p:?}");
        }
        assert_eq!(topk(q, c, d, k).unwrap(), want);
    }

    #[test]
    fn topk_matches_reference_gaussian() {
        for (nq, nc, d, k) in [
            (1, 1, 1, 1),
            (3, 5, 7, 10),
            (17, 300, 33, 5),
            (9, 2500, 64, 10),
            (20, 4200, 256, 3),
        ] {
            let q = gaussian(nq, d, 11 + nq as u64);
            let c = gaussian(nc, d, 99 + nc as u64);
            check_all_paths(&q, &c, d, k);
        }
    }

    #[test]
    fn topk_matches_reference_clustered_with_ties() {
        // exact duplicates in the corpus give tied scores: the lower index must win
        let d = 48;
        let c = clustered(3000, d, 20, 0.3, 5);
        let q: Vec<f32> = c[..25 * d].to_vec();
        check_all_paths(&q, &c, d, 12);
        // all-equal corpus: every score ties
        let c = vec![0.25f32; 16 * 40];
        let q = vec![0.5f32; 16 * 3];
        check_all_paths(&q, &c, 16, 7);
        let (_, idx) = topk(&q, &c, 16, 7).unwrap();
        assert_eq!(&idx[..7], &[0, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn topk_unnormalized_and_zero_rows() {
        let d = 20;
        let mut rng = Rng(77);
        let mut c: Vec<f32> = (0..500 * d).map(|_| rng.normal() * 5.0).collect();
        c[3 * d..4 * d].iter_mut().for_each(|v| *v = 0.0);
        let mut q: Vec<f32> = (0..6 * d).map(|_| rng.normal() * 0.01).collect();
        q[..d].iter_mut().for_each(|v| *v = 0.0);
        check_all_paths(&q, &c, d, 20);
    }

    #[test]
    fn topk_k_larger_than_corpus_and_empty() {
        let q = gaussian(4, 8, 1);
        let c = gaussian(3, 8, 2);
        let (s, i) = topk(&q, &c, 8, 10).unwrap();
        assert_eq!((s.len(), i.len()), (12, 12));
        check_all_paths(&q, &c, 8, 10);
        assert_eq!(topk(&q, &[], 8, 10).unwrap(), (vec![], vec![]));
        assert_eq!(topk(&[], &c, 8, 10).unwrap(), (vec![], vec![]));
    }

    #[test]
    fn topk_rejects_bad_arguments() {
        let q = gaussian(2, 8, 1);
        assert!(matches!(
            topk(&q, &q, 8, 0),
            Err(CoreError::InvalidArgument { arg: "k", .. })
        ));
        assert!(matches!(
            topk(&q, &q, 0, 1),
            Err(CoreError::InvalidArgument { arg: "d", .. })
        ));
        assert!(matches!(
            topk(&q[..7], &q, 8, 1),
            Err(CoreError::InvalidArgument { arg: "queries", .. })
        ));
        assert!(matches!(
            topk(&q, &q[..9], 8, 1),
            Err(CoreError::InvalidArgument { arg: "corpus", .. })
        ));
        let mut bad = q.clone();
        bad[9] = f32::NAN;
        let e = topk(&q, &bad, 8, 1).unwrap_err();
        assert!(e.to_string().contains("row 1"), "{e}");
        bad[9] = f32::INFINITY;
        assert!(topk(&bad, &q, 8, 1).is_err());
        bad[9] = 1e30;
        assert!(topk_scalar(&q, &bad, 8, 1).is_err());
    }

    #[test]
    fn topk_same_for_any_thread_count() {
        let d = 64;
        let c = clustered(5000, d, 30, 0.5, 3);
        let q = gaussian(21, d, 4);
        let run = |t: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
                .install(|| topk(&q, &c, d, 10).unwrap())
        };
        assert_eq!(run(1), run(2));
        assert_eq!(run(1), run(3));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn topk_prop(nq in 1usize..12, nc in 1usize..200, d in 1usize..70, k in 1usize..20, seed in any::<u64>(),
                     scale in prop_oneof![Just(1.0f32), Just(1e-3f32), Just(50.0f32)], dup in 0usize..4) {
            let mut c = gaussian(nc, d, seed);
            c.iter_mut().for_each(|v| *v *= scale);
            // copy some rows to create ties
            for t in 0..dup.min(nc.saturating_sub(1)) {
                let (a, b) = (t % nc, (t * 7 + 3) % nc);
                let row: Vec<f32> = c[a * d..(a + 1) * d].to_vec();
                c[b * d..(b + 1) * d].copy_from_slice(&row);
            }
            let q = gaussian(nq, d, seed ^ 0x55);
            check_all_paths(&q, &c, d, k);
        }
    }
}
