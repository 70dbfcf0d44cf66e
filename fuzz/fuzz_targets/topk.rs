//! Exact top-k (float and packed-bit Hamming) on fuzzed arrays, including NaN, infinities, huge
//! values, zero rows and any k: the fast kernels either refuse the input as the scalar reference
//! does or return exactly the reference's scores and indices.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokvec::internals::{hamming, topk, Cancel};

/// Floats from the input: mostly small values from a byte, sometimes raw bit patterns.
fn floats(data: &[u8], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while out.len() < n {
        let b = data.get(i).copied().unwrap_or(0);
        if b == 0xFF && i + 4 < data.len() {
            out.push(f32::from_le_bytes([data[i + 1], data[i + 2], data[i + 3], data[i + 4]]));
            i += 5;
        } else {
            out.push((b as i8) as f32 / 16.0);
            i += 1;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let d = (data[0] % 70) as usize; // 0 is refused
    let nq = (data[1] % 5) as usize;
    let nc = (data[2] % 40) as usize;
    let k = (data[3] % 45) as usize; // 0 is refused, k > nc is clamped
    let rest = &data[4..];
    let q = floats(rest, nq * d);
    let c = floats(rest.get(nq * d..).unwrap_or(&[]), nc * d);
    let fast = topk::topk(&q, &c, d, k);
    let slow = topk::topk_scalar(&q, &c, d, k);
    match (&fast, &slow) {
        (Ok((fs, fi)), Ok((ss, si))) => {
            assert_eq!(fi, si, "indices differ");
            assert_eq!(
                fs.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                ss.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "scores differ"
            );
        }
        (Err(_), Err(_)) => {}
        _ => panic!("fast {fast:?} vs scalar {slow:?}"),
    }
    // Packed bits: words per row from the data, bits in 0..=64*words+1.
    let words = (data[0] % 4) as usize;
    let bits = (data[3] as usize) % (64 * words + 2);
    let u = |s: &[u8], n: usize| -> Vec<u64> {
        (0..n)
            .map(|i| {
                let mut w = [0u8; 8];
                for (j, x) in w.iter_mut().enumerate() {
                    *x = s.get(i * 8 + j).copied().unwrap_or(0);
                }
                let v = u64::from_le_bytes(w);
                // Mostly valid padding (bits past `bits` cleared), sometimes not.
                let last = words > 0 && i % words == words - 1;
                if last && bits > 0 && bits < 64 * words && data[2] & 1 == 0 {
                    let keep = bits.saturating_sub(64 * (words - 1)); // 0: the last word is all padding
                    if keep >= 64 {
                        v
                    } else {
                        v & ((1u64 << keep) - 1)
                    }
                } else {
                    v
                }
            })
            .collect()
    };
    let hq = u(rest, nq * words);
    let hc = u(rest.get(3..).unwrap_or(&[]), nc * words);
    let fast = hamming::topk_cancellable(&hq, nq, &hc, nc, words, bits, k, Cancel::never());
    let slow = hamming::topk_scalar(&hq, nq, &hc, nc, words, bits, k);
    match (&fast, &slow) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(_), Err(_)) => {}
        _ => panic!("hamming fast {fast:?} vs scalar {slow:?}"),
    }
});
