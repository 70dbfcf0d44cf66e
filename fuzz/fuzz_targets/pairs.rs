//! All pairs above a threshold and greedy deduplication (float and packed-bit Hamming) on fuzzed
//! arrays and thresholds: the fast kernels either refuse the input as the scalar reference does or
//! return exactly the reference's pairs and kept rows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokvec::internals::{dedup, hamming, Cancel};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let d = (data[0] % 40) as usize;
    let n = (data[1] % 48) as usize;
    // Thresholds spread over [-1.2, 1.2], plus NaN/inf from the edge bytes.
    let threshold = match data[2] {
        0 => f32::NAN,
        1 => f32::INFINITY,
        b => (b as f32 - 128.0) / 106.0,
    };
    let rest = &data[3..];
    // Rows from bytes: few distinct values so that near-duplicates and exact ties are common.
    let mut e: Vec<f32> = (0..n * d)
        .map(|i| (rest.get(i).copied().unwrap_or(1) % 5) as f32 - 2.0)
        .collect();
    if data[3] == 0xFE && !e.is_empty() {
        e[0] = f32::NAN;
    }
    // Normalize rows (zero rows stay zero), as embeddings are.
    if d > 0 {
        for r in e.chunks_mut(d) {
            let norm = r.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 && norm.is_finite() {
                r.iter_mut().for_each(|x| *x /= norm);
            }
        }
    }
    let fast = dedup::pairs_above_cancellable(&e, n, d, threshold, Cancel::never());
    let slow = dedup::pairs_above_scalar(&e, n, d, threshold);
    match (&fast, &slow) {
        (Ok(a), Ok(b)) => {
            let bits = |v: &Vec<dedup::Pair>| v.iter().map(|&(i, j, s)| (i, j, s.to_bits())).collect::<Vec<_>>();
            assert_eq!(bits(a), bits(b), "pairs differ");
            for &(i, j, _) in a {
                assert!(i < j && (j as usize) < n);
            }
        }
        (Err(_), Err(_)) => {}
        _ => panic!("pairs fast {fast:?} vs scalar {slow:?}"),
    }
    let fast = dedup::dedup_greedy_cancellable(&e, n, d, threshold, Cancel::never());
    let slow = dedup::dedup_greedy_scalar(&e, n, d, threshold);
    match (&fast, &slow) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.kept, b.kept);
            assert_eq!(a.dup_of, b.dup_of);
        }
        (Err(_), Err(_)) => {}
        _ => panic!("dedup fast {fast:?} vs scalar {slow:?}"),
    }
    // Packed bits.
    let words = (data[0] % 3) as usize + 1;
    let bits = 64 * words - (data[1] as usize % 64);
    let h: Vec<u64> = (0..n * words)
        .map(|i| {
            let mut w = [0u8; 8];
            for (j, x) in w.iter_mut().enumerate() {
                *x = rest.get((i * 8 + j) % rest.len().max(1)).copied().unwrap_or(0);
            }
            let v = u64::from_le_bytes(w);
            let keep = bits - 64 * (words - 1);
            if i % words == words - 1 && keep < 64 {
                v & ((1u64 << keep) - 1)
            } else {
                v
            }
        })
        .collect();
    let fast = hamming::pairs_above_cancellable(&h, n, words, bits, threshold, Cancel::never());
    let slow = hamming::pairs_above_scalar(&h, n, words, bits, threshold);
    match (&fast, &slow) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(_), Err(_)) => {}
        _ => panic!("hamming pairs fast {fast:?} vs scalar {slow:?}"),
    }
    let fast = hamming::dedup_greedy_cancellable(&h, n, words, bits, threshold, Cancel::never());
    let slow = hamming::dedup_greedy_scalar(&h, n, words, bits, threshold);
    match (&fast, &slow) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.kept, b.kept);
            assert_eq!(a.dup_of, b.dup_of);
        }
        (Err(_), Err(_)) => {}
        _ => panic!("hamming dedup fast {fast:?} vs scalar {slow:?}"),
    }
});
