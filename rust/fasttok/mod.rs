//! Ids-only fast tokenizers with exactly the ids of HF `tokenizers`, chosen from the tokenizer JSON.
//!
//! [`select`] always builds the reference [`HfEncoder`], then looks at the JSON: when every
//! component is one a fast path implements exactly, it returns that fast path; otherwise the
//! `HfEncoder` itself (kind `"hf"`, with the reason). The families:
//! - `"spm-bpe-fast"` ([`spm`]): SentencePiece-style BPE over `▁` (Llama-2, Mistral, WordLlama):
//!   normalizer `Prepend("▁")` + `Replace(" ", "▁")`, no pre-tokenizer.
//! - `"wordpiece-fast"` ([`wordpiece`]): BERT-style WordPiece (MiniLM): `BertNormalizer` (or none),
//!   `BertPreTokenizer`.
//! - `"bytelevel-bpe-fast"` ([`bytelevel`]): GPT-2-style byte-level BPE: `ByteLevel` pre-tokenizer
//!   with its regex, or `Split(regex)` + `ByteLevel(use_regex=false)`.
//!
//! Shared rules, which keep correctness independent of the fast paths:
//! - Only `add_special_tokens=False` is served fast (the post-processor adds nothing then).
//! - A text that contains the content of any added token (`<s>`, `[CLS]`, ...) anywhere is encoded
//!   by the `HfEncoder`: added-token splitting (lstrip/rstrip/single_word/normalized) is then exactly
//!   `tokenizers`' own. Without such a substring, `tokenizers` does not split on added tokens at all.
//! - Model settings a fast path does not implement (dropout, continuing-subword prefix,
//!   end-of-word suffix, an unknown token missing from the vocabulary, ...) select `"hf"`.
//! - Truncation and padding are off, as in `HfEncoder`.
//!
//! Performance notes:
//! - No `Encoding`, no offsets, no `NormalizedString` on the common path: a text is normalized
//!   and pre-tokenized by hand into pieces, and each piece's ids come from a per-thread
//!   piece → ids cache ([`cache`]), or from the model on a miss.
//! - The cache lock is taken once per text, from a slot owned by the current rayon worker.

mod bpe;
pub mod bytelevel;
mod cache;
pub mod spm;
pub mod wordpiece;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use aho_corasick::AhoCorasick;
use rayon::prelude::*;
use serde_json::Value;

use crate::error::{CoreError, Result};
use crate::pool::{Encoder, HfEncoder};
use cache::{Scratch, Slots};

/// Which encoder [`select`] chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// BERT-style WordPiece fast path.
    WordPiece,
    /// SentencePiece-style BPE (`▁`) fast path.
    SpmBpe,
    /// GPT-2-style byte-level BPE fast path.
    ByteLevelBpe,
    /// The `tokenizers` crate (`HfEncoder`).
    Hf,
}

impl Kind {
    /// The name shown to users: "wordpiece-fast", "spm-bpe-fast", "bytelevel-bpe-fast" or "hf".
    pub fn name(self) -> &'static str {
        match self {
            Kind::WordPiece => "wordpiece-fast",
            Kind::SpmBpe => "spm-bpe-fast",
            Kind::ByteLevelBpe => "bytelevel-bpe-fast",
            Kind::Hf => "hf",
        }
    }
}

/// The result of [`select`].
pub struct Selected {
    /// The encoder to run: a fast path, or `hf` itself.
    pub encoder: Arc<dyn Encoder>,
    /// The reference encoder (special ids, unknown id, JSON, id limit), whichever encoder runs.
    pub hf: Arc<HfEncoder>,
    /// Which encoder `encoder` is.
    pub kind: Kind,
    /// Why the fast path was not used (`None` when it is).
    pub fallback_reason: Option<String>,
}

/// Builds the `HfEncoder` for `json` and, when `fast` and the JSON qualifies, a fast encoder.
///
/// Errors only when `tokenizers` itself cannot build the JSON; a JSON the fast paths do not cover
/// gives `Kind::Hf` with a reason.
pub fn select(json: &str, add_special_tokens: bool, fast: bool) -> Result<Selected> {
    let (hf, prepared) = if !fast {
        (
            HfEncoder::from_json(json, add_special_tokens)?,
            Err("fast tokenizers were switched off (fast=False)".to_string()),
        )
    } else if add_special_tokens {
        (
            HfEncoder::from_json(json, add_special_tokens)?,
            Err("add_special_tokens=True is only served by the tokenizers crate".to_string()),
        )
    } else {
        // Load time: building the reference tokenizer and the fast encoder are two independent
        // parses of the same JSON (each ~20 ms for a 30k-token WordPiece vocabulary), so they run on
        // two threads. A panic in either becomes a Tokenizer error, never an abort.
        std::thread::scope(|s| {
            let h = s.spawn(|| HfEncoder::from_json(json, add_special_tokens));
            let p = catch_unwind(AssertUnwindSafe(|| prepare(json)))
                .unwrap_or_else(|_| Err("the fast tokenizer builder panicked".to_string()));
            let hf = h.join().unwrap_or_else(|_| {
                Err(CoreError::Tokenizer {
                    msg: "cannot build the tokenizer from its JSON: the tokenizers crate panicked".to_string(),
                })
            });
            hf.map(|hf| (hf, p))
        })?
    };
    let hf = Arc::new(hf);
    Ok(match prepared {
        Ok(p) => {
            let (encoder, kind) = p.finish(hf.clone());
            Selected {
                encoder,
                hf,
                kind,
                fallback_reason: None,
            }
        }
        Err(reason) => Selected {
            encoder: hf.clone(),
            hf,
            kind: Kind::Hf,
            fallback_reason: Some(reason),
        },
    })
}

/// A fast encoder built from the JSON, waiting for its `HfEncoder` fallback. Built once per
/// tokenizer and moved once, so the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Prepared {
    WordPiece(wordpiece::WordPiece, AddedGuard),
    SpmBpe(spm::SpmBpe, AddedGuard),
    ByteLevelBpe(bytelevel::ByteLevelBpe, AddedGuard),
}

impl Prepared {
    fn finish(self, hf: Arc<HfEncoder>) -> (Arc<dyn Encoder>, Kind) {
        match self {
            Prepared::WordPiece(f, g) => (Arc::new(FastEncoder::new(f, g, hf)), Kind::WordPiece),
            Prepared::SpmBpe(f, g) => (Arc::new(FastEncoder::new(f, g, hf)), Kind::SpmBpe),
            Prepared::ByteLevelBpe(f, g) => (Arc::new(FastEncoder::new(f, g, hf)), Kind::ByteLevelBpe),
        }
    }
}

fn prepare(json: &str) -> std::result::Result<Prepared, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("cannot parse the JSON: {e}"))?;
    let guard = AddedGuard::from_json(&v)?;
    let model = v.get("model").ok_or("no model")?;
    match model.get("type").and_then(Value::as_str) {
        Some("WordPiece") => {
            if guard.any_normalized {
                return Err("an added token is matched after normalization (normalized=true)".into());
            }
            Ok(Prepared::WordPiece(wordpiece::WordPiece::from_json(&v)?, guard))
        }
        Some("BPE") => {
            if spm::applies(&v) {
                if guard.any_normalized {
                    return Err("an added token is matched after normalization (normalized=true)".into());
                }
                Ok(Prepared::SpmBpe(spm::SpmBpe::from_json(&v)?, guard))
            } else if bytelevel::applies(&v) {
                // The byte-level path requires no normalizer, so normalized added tokens are matched
                // on the raw text, which the guard scans.
                Ok(Prepared::ByteLevelBpe(bytelevel::ByteLevelBpe::from_json(&v)?, guard))
            } else {
                Err("BPE with a normalizer / pre-tokenizer that no fast path implements".into())
            }
        }
        Some(t) => Err(format!("model type {t:?} has no fast path")),
        None => Err("the model has no \"type\"".into()),
    }
}

/// Finds texts that contain the content of an added token.
pub(crate) struct AddedGuard {
    ac: Option<AhoCorasick>,
    /// Some added token has `normalized: true` (matched on the normalized text).
    pub any_normalized: bool,
}

impl AddedGuard {
    fn from_json(v: &Value) -> std::result::Result<Self, String> {
        let mut contents = Vec::new();
        let mut any_normalized = false;
        if let Some(list) = v.get("added_tokens") {
            let list = list.as_array().ok_or("added_tokens is not a list")?;
            for t in list {
                let c = t
                    .get("content")
                    .and_then(Value::as_str)
                    .ok_or("an added token has no content")?;
                if c.is_empty() {
                    continue; // `tokenizers` ignores empty added tokens
                }
                any_normalized |= t.get("normalized").and_then(Value::as_bool).unwrap_or(true);
                contents.push(c.to_string());
            }
        }
        let ac = if contents.is_empty() {
            None
        } else {
            Some(AhoCorasick::new(&contents).map_err(|e| format!("added tokens: {e}"))?)
        };
        Ok(AddedGuard { ac, any_normalized })
    }

    /// Whether `text` contains the content of some added token.
    #[inline]
    pub(crate) fn hits(&self, text: &str) -> bool {
        self.ac.as_ref().is_some_and(|ac| ac.is_match(text))
    }
}

/// One fast path: normalization, pre-tokenization and model, ids only.
pub(crate) trait Fast: Send + Sync {
    /// Appends the ids of `text` (which holds no added-token content) to `out`.
    fn encode_fast(&self, text: &str, s: &mut Scratch, out: &mut Vec<u32>) -> Result<()>;
}

/// A fast path plus its guard and the `HfEncoder` fallback.
pub(crate) struct FastEncoder<F> {
    fast: F,
    guard: AddedGuard,
    hf: Arc<HfEncoder>,
    slots: Slots,
}

impl<F: Fast> FastEncoder<F> {
    fn new(fast: F, guard: AddedGuard, hf: Arc<HfEncoder>) -> Self {
        FastEncoder {
            fast,
            guard,
            hf,
            slots: Slots::new(),
        }
    }
}

impl<F: Fast> Encoder for FastEncoder<F> {
    fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        if self.guard.hits(text) {
            return self.hf.encode(text, out);
        }
        match catch_unwind(AssertUnwindSafe(|| {
            self.slots.with(|s| self.fast.encode_fast(text, s, out))
        })) {
            Ok(r) => r,
            Err(_) => Err(CoreError::Tokenizer {
                msg: "the fast tokenizer panicked on a text".to_string(),
            }),
        }
    }

    fn id_limit(&self) -> u64 {
        self.hf.id_limit()
    }
}

/// Token ids of many texts, in parallel, in CSR form: text `i` has `ids[offsets[i]..offsets[i+1]]`.
pub fn encode_batch(enc: &dyn Encoder, texts: &[&str]) -> Result<(Vec<u32>, Vec<u64>)> {
    const CHUNK: usize = 256;
    let parts: Vec<(Vec<u32>, Vec<u64>)> = texts
        .par_chunks(CHUNK)
        .map(|chunk| {
            let mut ids = Vec::with_capacity(chunk.len() * 32);
            let mut lens = Vec::with_capacity(chunk.len());
            for t in chunk {
                let before = ids.len();
                enc.encode(t, &mut ids)?;
                lens.push((ids.len() - before) as u64);
            }
            Ok((ids, lens))
        })
        .collect::<Result<_>>()?;
    let mut offsets = Vec::with_capacity(texts.len() + 1);
    offsets.push(0u64);
    let mut ids = Vec::with_capacity(parts.iter().map(|p| p.0.len()).sum());
    for (part, lens) in parts {
        ids.extend_from_slice(&part);
        for l in lens {
            offsets.push(offsets[offsets.len() - 1] + l);
        }
    }
    Ok((ids, offsets))
}

// ---------------------------------------------------------------- JSON helpers shared by the families

/// The vocabulary of `model.vocab` (token → id); a repeated key keeps its last id, as in `tokenizers`.
pub(crate) fn vocab_of(model: &Value) -> std::result::Result<Vec<(String, u32)>, String> {
    let obj = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or("model.vocab is not a map")?;
    obj.iter()
        .map(|(k, v)| {
            let id = v
                .as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or("a vocab id is not a u32")?;
            Ok((k.clone(), id))
        })
        .collect()
}

/// BPE model settings, read as `tokenizers` reads them (absent keys take the builder defaults).
pub(crate) struct BpeJson {
    pub vocab: Vec<(String, u32)>,
    /// Merges in rank order, as strings.
    pub merges: Vec<(String, String)>,
    pub unk_token: Option<String>,
    pub fuse_unk: bool,
    pub byte_fallback: bool,
    pub ignore_merges: bool,
}

impl BpeJson {
    pub(crate) fn from_json(model: &Value) -> std::result::Result<Self, String> {
        let get_bool = |k: &str| model.get(k).and_then(Value::as_bool).unwrap_or(false);
        match model.get("dropout") {
            None | Some(Value::Null) => {}
            Some(d) if d.as_f64() == Some(0.0) => {}
            Some(_) => return Err("BPE dropout is random: no fast path".into()),
        }
        for k in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if !matches!(model.get(k), None | Some(Value::Null)) {
                return Err(format!("BPE {k} is not implemented by the fast paths"));
            }
        }
        let unk_token = match model.get("unk_token") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err("BPE unk_token is not a string".into()),
        };
        let merges = match model.get("merges").and_then(Value::as_array) {
            None => return Err("BPE merges missing".into()),
            Some(list) if list.iter().all(Value::is_array) => list
                .iter()
                .map(|p| match p.as_array().map(Vec::as_slice) {
                    Some([Value::String(a), Value::String(b)]) => Ok((a.clone(), b.clone())),
                    _ => Err("a BPE merge is not a pair of strings".to_string()),
                })
                .collect::<std::result::Result<Vec<_>, _>>()?,
            Some(list) => {
                // The legacy "a b" form; `tokenizers` skips "#version" lines before numbering ranks.
                let mut out = Vec::with_capacity(list.len());
                for m in list {
                    let s = m.as_str().ok_or("a BPE merge is neither a string nor a pair")?;
                    if s.starts_with("#version") {
                        continue;
                    }
                    let parts: Vec<&str> = s.split(' ').collect();
                    if parts.len() != 2 {
                        return Err(format!("bad BPE merge {s:?}"));
                    }
                    out.push((parts[0].to_string(), parts[1].to_string()));
                }
                out
            }
        };
        let vocab = vocab_of(model)?;
        // the BPE merge loops are exact only when an id names one string
        bpe::check_ids(vocab.iter().map(|(_, id)| *id))?;
        Ok(BpeJson {
            vocab,
            merges,
            unk_token,
            fuse_unk: get_bool("fuse_unk"),
            byte_fallback: get_bool("byte_fallback"),
            ignore_merges: get_bool("ignore_merges"),
        })
    }
}

/// A string → id map with a fast hasher, looked up by bytes.
pub(crate) struct VocabMap {
    table: hashbrown::HashTable<(Box<[u8]>, u32)>,
    hasher: foldhash::fast::FixedState,
    /// Length in bytes of the longest key.
    pub max_len: usize,
}

impl VocabMap {
    pub(crate) fn new<'a>(items: impl IntoIterator<Item = (&'a [u8], u32)>) -> Self {
        use std::hash::BuildHasher;
        let hasher = foldhash::fast::FixedState::with_seed(0x0076_6f63_6162);
        let mut table: hashbrown::HashTable<(Box<[u8]>, u32)> = hashbrown::HashTable::new();
        let mut max_len = 0;
        for (k, id) in items {
            let h = hasher.hash_one(k);
            max_len = max_len.max(k.len());
            match table.find_mut(h, |e| &*e.0 == k) {
                Some(e) => e.1 = id,
                None => {
                    table.insert_unique(h, (k.into(), id), |e| hasher.hash_one(&*e.0));
                }
            }
        }
        VocabMap { table, hasher, max_len }
    }

    /// The id of `key`.
    #[inline]
    pub(crate) fn get(&self, key: &[u8]) -> Option<u32> {
        use std::hash::BuildHasher;
        if key.len() > self.max_len {
            return None;
        }
        self.table
            .find(self.hasher.hash_one(key), |e| &*e.0 == key)
            .map(|e| e.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn wordllama_json() -> Option<String> {
        let out = std::process::Command::new("python3")
            .args(["-c", "import wordllama, os; print(os.path.dirname(wordllama.__file__))"])
            .output()
            .ok()?;
        let dir = String::from_utf8(out.stdout).ok()?;
        std::fs::read_to_string(format!("{}/tokenizers/l2_supercat_tokenizer_config.json", dir.trim())).ok()
    }

    #[test]
    fn kinds_are_chosen_from_the_json() {
        let wp = include_str!("../../python/tokvec/models/default/tokenizer.json");
        let s = select(wp, false, true).unwrap();
        assert_eq!(s.kind, Kind::WordPiece, "{:?}", s.fallback_reason);
        let s = select(wp, false, false).unwrap();
        assert_eq!(s.kind, Kind::Hf);
        assert!(s.fallback_reason.unwrap().contains("fast=False"));
        let s = select(wp, true, true).unwrap();
        assert_eq!(s.kind, Kind::Hf);
        // a WordLevel tokenizer has no fast path
        let wl = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
            "pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
            "model":{"type":"WordLevel","vocab":{"a":0,"[UNK]":1},"unk_token":"[UNK]"}}"#;
        let s = select(wl, false, true).unwrap();
        assert_eq!(s.kind, Kind::Hf);
        if let Some(j) = wordllama_json() {
            let s = select(&j, false, true).unwrap();
            assert_eq!(s.kind, Kind::SpmBpe, "{:?}", s.fallback_reason);
        }
    }

    #[test]
    fn added_token_text_goes_to_hf() {
        let wp = include_str!("../../python/tokvec/models/default/tokenizer.json");
        let s = select(wp, false, true).unwrap();
        let mut a = Vec::new();
        s.encoder.encode("hello [CLS] world[SEP]", &mut a).unwrap();
        let mut b = Vec::new();
        s.hf.encode("hello [CLS] world[SEP]", &mut b).unwrap();
        assert_eq!(a, b);
        assert!(a.contains(&101) && a.contains(&102), "{a:?}");
    }

    #[test]
    fn encode_batch_is_csr() {
        let wp = include_str!("../../python/tokvec/models/default/tokenizer.json");
        let s = select(wp, false, true).unwrap();
        let texts: Vec<String> = (0..1000).map(|i| format!("text number {i}, with words")).collect();
        let refs: Vec<&str> = texts.iter().map(|t| t.as_str()).collect();
        let (ids, offsets) = encode_batch(&*s.encoder, &refs).unwrap();
        assert_eq!(offsets.len(), 1001);
        assert_eq!(*offsets.last().unwrap() as usize, ids.len());
        for (i, t) in refs.iter().enumerate() {
            let mut want = Vec::new();
            s.hf.encode(t, &mut want).unwrap();
            assert_eq!(&ids[offsets[i] as usize..offsets[i + 1] as usize], &want[..]);
        }
    }
}
