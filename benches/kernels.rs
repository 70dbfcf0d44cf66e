//! Criterion benchmarks of the core kernels, each SIMD path next to its scalar reference.
//!
//! - `gather/<dtype>/<isa>`: accumulate 256-wide rows (f16, bf16, f32) into an f32 accumulator,
//!   the inner loop of pooling.
//! - `topk`: exact top-10 of 100 queries over 100k x 256 random unit vectors (`fast` = the blocked,
//!   pre-scored path; `scalar` = the reference on a 10k slice, it is O(n) slower).
//! - `pairs`: all pairs above 0.9 among 20k x 256 vectors with planted near-duplicates.
//! - `hamming-topk`: top-10 of 100 queries over 100k packed 256-bit codes.
//!
//! Data are random (a fixed-seed xorshift), so no files are needed. Run:
//! `cargo bench --bench kernels` (1 thread: `RAYON_NUM_THREADS=1 cargo bench --bench kernels`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokvec::internals::gather::{accumulate, available_isas, RowType};
use tokvec::internals::{dedup, hamming, topk, Cancel};

const D: usize = 256;

/// xorshift64*: reproducible data without a rand dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

fn unit_rows(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut x: Vec<f32> = (0..n * D).map(|_| rng.unit()).collect();
    for r in x.chunks_exact_mut(D) {
        let s = r.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        r.iter_mut().for_each(|v| *v /= s);
    }
    x
}

fn bench_gather(c: &mut Criterion) {
    let mut rng = Rng(7);
    let rows = 4096;
    let vals: Vec<f32> = (0..rows * D).map(|_| rng.unit()).collect();
    let tables: [(RowType, Vec<u8>); 3] = [
        (
            RowType::F16,
            vals.iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
        ),
        (
            RowType::BF16,
            vals.iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
        ),
        (RowType::F32, vals.iter().flat_map(|&v| v.to_le_bytes()).collect()),
    ];
    // A pseudo-random walk over the table, like the ids of real text.
    let ids: Vec<usize> = (0..rows).map(|_| (rng.next() % rows as u64) as usize).collect();
    let mut g = c.benchmark_group("gather");
    g.throughput(Throughput::Elements(ids.len() as u64));
    for (ty, bytes) in &tables {
        let rb = D * ty.size();
        for isa in available_isas() {
            g.bench_function(format!("{ty:?}/{isa:?}"), |b| {
                let mut acc = vec![0f32; D];
                b.iter(|| {
                    for &i in &ids {
                        accumulate(&mut acc, &bytes[i * rb..(i + 1) * rb], 0.5, *ty, isa);
                    }
                    black_box(&acc);
                })
            });
        }
    }
    g.finish();
}

fn bench_topk(c: &mut Criterion) {
    let mut rng = Rng(11);
    let corpus = unit_rows(&mut rng, 100_000);
    let queries = unit_rows(&mut rng, 100);
    let mut g = c.benchmark_group("topk");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(100));
    g.bench_function("fast/100x100k", |b| {
        b.iter(|| black_box(topk::topk(&queries, &corpus, D, 10).expect("topk")))
    });
    g.bench_function("scalar/100x10k", |b| {
        b.iter(|| black_box(topk::topk_scalar(&queries, &corpus[..10_000 * D], D, 10).expect("topk")))
    });
    g.finish();
}

fn bench_pairs(c: &mut Criterion) {
    let mut rng = Rng(13);
    let n = 20_000;
    let mut e = unit_rows(&mut rng, n);
    // every 10th row is a near-copy of the row before it
    for i in (10..n).step_by(10) {
        let (a, b) = e.split_at_mut(i * D);
        let prev = &a[(i - 1) * D..];
        for (x, &p) in b[..D].iter_mut().zip(prev) {
            *x = p + 0.01 * *x;
        }
        let s = b[..D].iter().map(|v| v * v).sum::<f32>().sqrt();
        b[..D].iter_mut().for_each(|v| *v /= s);
    }
    let mut g = c.benchmark_group("pairs");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("fast/20k@0.9", |b| {
        b.iter(|| black_box(dedup::pairs_above_cancellable(&e, n, D, 0.9, Cancel::never()).expect("pairs")))
    });
    g.finish();
}

fn bench_hamming(c: &mut Criterion) {
    let mut rng = Rng(17);
    let words = D / 64;
    let nc = 100_000;
    let corpus: Vec<u64> = (0..nc * words).map(|_| rng.next()).collect();
    let queries: Vec<u64> = (0..100 * words).map(|_| rng.next()).collect();
    let mut g = c.benchmark_group("hamming-topk");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(100));
    g.bench_function("fast/100x100k", |b| {
        b.iter(|| {
            black_box(
                hamming::topk_cancellable(&queries, 100, &corpus, nc, words, D, 10, Cancel::never()).expect("topk"),
            )
        })
    });
    g.bench_function("scalar/100x100k", |b| {
        b.iter(|| black_box(hamming::topk_scalar(&queries, 100, &corpus, nc, words, D, 10).expect("topk")))
    });
    g.finish();
}

criterion_group!(benches, bench_gather, bench_topk, bench_pairs, bench_hamming);
criterion_main!(benches);
