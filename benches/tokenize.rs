//! Criterion benchmarks of the fast tokenizers (ids only) against the `tokenizers` crate, one thread.
//!
//! Texts: the first 10,000 sentences of `<repo>/../shared/data/wikipedia-sentences/sentences.tsv`
//! (a synthetic corpus if the data is absent). Tokenizers: the default model's WordPiece, WordLlama's
//! SentencePiece BPE (the full one when `TOKVEC_WORDLLAMA_TOKENIZER` names its JSON, else the cut-down
//! test fixture `tests/fixtures/wordllama-spm/tokenizer.json`, whose vocabulary covers little of the
//! corpus) and a byte-level BPE trained here with the `tokenizers` trainer.
//!
//! Per family: `hf` (`HfEncoder`, i.e. `encode_fast`), `fast` (warm piece cache, as in a long run),
//! `fast-cold` (a fresh encoder per batch: every piece is a miss the first time).
//!
//! Also `load/<family>`: building the tokenizer from its JSON, with the fast path (`fast`: one typed
//! parse, no `tokenizers`-crate tokenizer) and with the `tokenizers` crate (`hf`).
//!
//! Run: `cargo bench --bench tokenize`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;
use tokvec::internals::fasttok::{Kind, Tokenizer};
use tokvec::internals::pool::Encoder;

const N: usize = 10_000;

fn sentences() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/wikipedia-sentences/sentences.tsv"
    );
    match std::fs::read_to_string(path) {
        Ok(s) => s
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once('\t').map(|(_, t)| t.to_string()))
            .take(N)
            .collect(),
        Err(_) => (0..N)
            .map(|i| {
                format!(
                    "Sentence number {i} is about the village of Ölsen, population {}.",
                    i * 7
                )
            })
            .collect(),
    }
}

fn wordllama_json() -> String {
    match std::env::var("TOKVEC_WORDLLAMA_TOKENIZER") {
        Ok(p) => std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}")),
        Err(_) => include_str!("../tests/fixtures/wordllama-spm/tokenizer.json").to_string(),
    }
}

fn bytelevel_json(texts: &[String]) -> String {
    let mut tok = tokenizers::Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(8000)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(vec![AddedToken::from("<|endoftext|>", true)])
        .build()
        .into();
    tok.train(&mut trainer, texts.iter())
        .expect("training the byte-level BPE");
    tok.to_string(false).expect("serializing the byte-level BPE")
}

fn run_all(enc: &dyn Encoder, texts: &[&str], ids: &mut Vec<u32>) -> usize {
    let mut n = 0;
    for t in texts {
        ids.clear();
        enc.encode(t, ids).expect("encode");
        n += ids.len();
    }
    n
}

fn bench(c: &mut Criterion) {
    let owned = sentences();
    let texts: Vec<&str> = owned.iter().map(String::as_str).collect();
    let families = [
        (
            "wordpiece",
            include_str!("../python/tokvec/models/default/tokenizer.json").to_string(),
            Kind::WordPiece,
        ),
        ("spm-bpe", wordllama_json(), Kind::SpmBpe),
        ("bytelevel-bpe", bytelevel_json(&owned), Kind::ByteLevelBpe),
    ];

    for (name, json, kind) in &families {
        let sel = Tokenizer::from_json(json.clone(), false, true).expect("tokenizer JSON");
        assert_eq!(sel.kind(), *kind, "{name}: {:?}", sel.fallback_reason());
        let hf = sel.hf().expect("the tokenizers crate's tokenizer");
        let mut g = c.benchmark_group(format!("tokenize-10k/{name}"));
        g.throughput(Throughput::Elements(texts.len() as u64));
        g.sample_size(10).measurement_time(Duration::from_secs(8));
        let mut ids = Vec::with_capacity(1024);
        g.bench_function("hf", |b| b.iter(|| black_box(run_all(hf, &texts, &mut ids))));
        g.bench_function("fast", |b| {
            b.iter(|| black_box(run_all(&**sel.encoder(), &texts, &mut ids)))
        });
        g.bench_function("fast-cold", |b| {
            b.iter_batched(
                || {
                    Tokenizer::from_json(json.clone(), false, true)
                        .expect("tokenizer JSON")
                        .encoder()
                        .clone()
                },
                |enc| black_box(run_all(&*enc, &texts, &mut ids)),
                BatchSize::PerIteration,
            )
        });
        g.finish();
        let mut g = c.benchmark_group(format!("load/{name}"));
        g.sample_size(10).measurement_time(Duration::from_secs(4));
        for (label, fast) in [("fast", true), ("hf", false)] {
            g.bench_function(label, |b| {
                b.iter(|| black_box(Tokenizer::from_json(json.clone(), false, fast).expect("tokenizer JSON")))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
