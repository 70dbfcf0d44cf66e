//! The Rust core against embeddings computed by a plain numpy reference (scripts/make_fixtures.py):
//! a WordPiece tokenizer trained on real Wikipedia sentences, random F32/F16/BF16 tables, real text.

use std::path::PathBuf;
use std::sync::Arc;

use tokvec::internals::pool::{EmbedModel, Encoder, HfEncoder, ModelSpec};
use tokvec::internals::simd::Isa;
use tokvec::internals::SafetensorsFile;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny")
}

fn load(name: &str, scalar: bool) -> (EmbedModel, Vec<String>, Vec<f32>) {
    let dir = fixtures();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let special: Vec<u32> = meta["special_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let json = std::fs::read_to_string(dir.join("tokenizer.json")).unwrap();
    let enc: Arc<dyn Encoder> = Arc::new(HfEncoder::from_json(&json, false).unwrap());
    let file = Arc::new(SafetensorsFile::open(dir.join(format!("model_{name}.safetensors"))).unwrap());
    let spec = ModelSpec {
        table: "embeddings".into(),
        skip_ids: special,
        normalize: true,
        ..Default::default()
    };
    let mut m = EmbedModel::new(file, &spec, Some(enc)).unwrap();
    if scalar {
        m.set_isa(Isa::Scalar);
    }
    let texts: Vec<String> = std::fs::read_to_string(dir.join("texts.txt"))
        .unwrap()
        .lines()
        .map(|s| s.to_string())
        .collect();
    let raw = std::fs::read(dir.join(format!("expected_{name}.f32"))).unwrap();
    let expected: Vec<f32> = raw
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (m, texts, expected)
}

#[test]
fn embeddings_match_numpy_reference_for_every_dtype_and_path() {
    for name in ["f32", "f16", "bf16"] {
        for scalar in [false, true] {
            let (m, texts, expected) = load(name, scalar);
            let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
            assert_eq!(expected.len(), refs.len() * m.dim());
            let mut out = vec![0f32; refs.len() * m.dim()];
            m.embed(&refs, &mut out).unwrap();
            let worst = out
                .iter()
                .zip(&expected)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-5, "{name} scalar={scalar}: max abs diff {worst}");
        }
    }
}

#[test]
fn empty_and_special_only_texts_give_zero_vectors() {
    let (m, texts, _) = load("f16", false);
    let idx = texts.iter().position(|t| t.is_empty()).unwrap();
    let refs = [texts[idx].as_str(), "[CLS] [SEP]"];
    let mut out = vec![1f32; 2 * m.dim()];
    m.embed(&refs, &mut out).unwrap();
    assert!(out.iter().all(|&x| x == 0.0));
}

#[test]
fn binary_output_is_the_sign_of_the_float_output() {
    let (m, texts, _) = load("f32", false);
    let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
    let mut f = vec![0f32; refs.len() * m.dim()];
    let mut b = vec![0u64; refs.len() * m.binary_words()];
    m.embed(&refs, &mut f).unwrap();
    m.embed_binary(&refs, &mut b).unwrap();
    for (i, row) in f.chunks(m.dim()).enumerate() {
        for (j, &x) in row.iter().enumerate() {
            let bit = (b[i * m.binary_words() + j / 64] >> (j % 64)) & 1 == 1;
            assert_eq!(bit, x > 0.0, "text {i} dim {j}");
        }
    }
}
