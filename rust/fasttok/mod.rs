//! Ids-only fast tokenizers with exactly the ids of HF `tokenizers`, chosen from the tokenizer JSON.
//!
//! [`Tokenizer`] parses the JSON once ([`json`]: typed, borrowing from the text) and, when every
//! component is one a fast path implements exactly, runs that fast path; otherwise the `tokenizers`
//! crate ([`HfEncoder`], kind `"hf"`, with the reason). The families:
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
//!   end-of-word suffix, an unknown token missing from the vocabulary, ...) select `"hf"`, and so
//!   does anything the typed parse cannot read: the `tokenizers` crate then decides (and its error,
//!   if any, is the one reported).
//! - Truncation and padding are off, as in `HfEncoder`.
//!
//! Load time and memory: with a fast path, the `tokenizers` crate's tokenizer (tens of
//! milliseconds and several times the JSON's size in memory) is built only when a text first needs
//! it (added-token content), from the JSON text kept once (the file's size; nothing reads the file
//! again, so a loaded tokenizer does not depend on it). The special ids, the unknown id and the id
//! limit come from the parse, computed as `tokenizers` computes them.
//!
//! Performance notes:
//! - No `Encoding`, no offsets, no `NormalizedString` on the common path: a text is normalized
//!   and pre-tokenized by hand into pieces, and each piece's ids come from a per-thread
//!   piece → ids cache ([`cache`]), or from the model on a miss.
//! - The cache lock is taken once per text, from a slot owned by the current rayon worker.

mod bpe;
pub mod bytelevel;
mod cache;
mod json;
pub mod spm;
pub mod wordpiece;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use aho_corasick::AhoCorasick;

use crate::error::{CoreError, Result};
use crate::pool::{Encoder, HfEncoder};
use cache::{Scratch, Slots};
use json::{AddedTokenJson, Merge, ModelJson, TokenizerJson, Vocab};

/// Which encoder a [`Tokenizer`] runs.
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

/// Reads a tokenizer JSON file as UTF-8 text; errors name the file.
fn read_json_file(path: &Path) -> Result<String> {
    let ps = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => CoreError::NotFound { path: ps.clone() },
        _ => CoreError::Io {
            path: ps.clone(),
            source: e,
        },
    })?;
    String::from_utf8(bytes).map_err(|_| CoreError::Tokenizer {
        msg: format!("{ps}: not a UTF-8 text file, so not a tokenizer JSON"),
    })
}

/// The `tokenizers` crate's tokenizer, built on first use from the kept JSON.
struct LazyHf {
    /// The JSON text, kept (one copy, the file's size): the tokenizer never depends on its file
    /// after it is built, as a model's table does not with `mmap=False`, and a file replaced or
    /// deleted after load changes nothing.
    source: Arc<str>,
    add_special_tokens: bool,
    cell: OnceLock<Arc<HfEncoder>>,
    /// Held while building, so that concurrent first uses build once.
    building: Mutex<()>,
}

impl LazyHf {
    fn get(&self) -> Result<&Arc<HfEncoder>> {
        if let Some(h) = self.cell.get() {
            return Ok(h);
        }
        let _guard = self.building.lock().unwrap_or_else(|p| p.into_inner());
        if self.cell.get().is_none() {
            let hf = build_hf(&self.source, self.add_special_tokens)?;
            let _ = self.cell.set(Arc::new(hf));
        }
        self.cell.get().ok_or_else(|| CoreError::Tokenizer {
            msg: "the tokenizers crate's tokenizer could not be kept".to_string(),
        })
    }
}

/// `HfEncoder::from_json`, with a panic of the `tokenizers` crate turned into an error.
fn build_hf(json: &str, add_special_tokens: bool) -> Result<HfEncoder> {
    catch_unwind(AssertUnwindSafe(|| HfEncoder::from_json(json, add_special_tokens))).unwrap_or_else(|_| {
        Err(CoreError::Tokenizer {
            msg: "cannot build the tokenizer from its JSON: the tokenizers crate panicked".to_string(),
        })
    })
}

/// A tokenizer built from its JSON: a fast path when one applies, else the `tokenizers` crate.
pub struct Tokenizer {
    encoder: Arc<dyn Encoder>,
    hf: Arc<LazyHf>,
    kind: Kind,
    fallback_reason: Option<String>,
    special_ids: Vec<u32>,
    unk_id: Option<u32>,
    id_limit: u64,
}

impl Tokenizer {
    /// Builds the tokenizer from JSON text (kept, for [`Tokenizer::json`] and the fallback).
    ///
    /// `fast`: use a fast path when the JSON qualifies. Errors only when `tokenizers` itself
    /// cannot build the JSON; a JSON the fast paths do not cover gives `Kind::Hf` with a reason.
    pub fn from_json(json: String, add_special_tokens: bool, fast: bool) -> Result<Self> {
        let text: Arc<str> = json.into();
        let lazy = Arc::new(LazyHf {
            source: text.clone(),
            add_special_tokens,
            cell: OnceLock::new(),
            building: Mutex::new(()),
        });
        Self::build(&text, &lazy, fast)
    }

    /// Builds the tokenizer from a JSON file (errors name it). The text is kept as with
    /// [`Tokenizer::from_json`]: nothing later reads the file again.
    pub fn from_file(path: impl AsRef<Path>, add_special_tokens: bool, fast: bool) -> Result<Self> {
        Self::from_json(read_json_file(path.as_ref())?, add_special_tokens, fast)
    }

    fn build(text: &str, lazy: &Arc<LazyHf>, fast: bool) -> Result<Self> {
        let refused = if !fast {
            "fast tokenizers were switched off (fast=False)".to_string()
        } else if lazy.add_special_tokens {
            "add_special_tokens=True is only served by the tokenizers crate".to_string()
        } else {
            match catch_unwind(AssertUnwindSafe(|| prepare(text, lazy))) {
                Ok(Ok(t)) => return Ok(t),
                Ok(Err(reason)) => reason,
                Err(_) => "the fast tokenizer builder panicked".to_string(),
            }
        };
        let hf = Arc::new(build_hf(text, lazy.add_special_tokens)?);
        let _ = lazy.cell.set(hf.clone());
        Ok(Tokenizer {
            special_ids: hf.special_ids(),
            unk_id: hf.unk_id().unwrap_or_else(|| match json::unk_of_model(text) {
                (Some(u), _) => hf.token_to_id(&u),
                (None, id) => id.and_then(|u| u32::try_from(u).ok()),
            }),
            id_limit: hf.id_limit(),
            encoder: hf,
            hf: lazy.clone(),
            kind: Kind::Hf,
            fallback_reason: Some(refused),
        })
    }

    /// The encoder that runs (a fast path, or the `tokenizers` crate).
    pub fn encoder(&self) -> &Arc<dyn Encoder> {
        &self.encoder
    }

    /// The `tokenizers` crate's tokenizer for the same JSON, built now if it was not yet.
    #[cfg(any(test, feature = "internals"))]
    pub fn hf(&self) -> Result<&HfEncoder> {
        self.hf.get().map(|h| &**h)
    }

    /// Whether the `tokenizers` crate's tokenizer has been built.
    pub fn hf_built(&self) -> bool {
        self.hf.cell.get().is_some()
    }

    /// Which encoder runs.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Why no fast path runs (`None` when one does).
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// Ids of the added tokens marked `special` (BOS/EOS/CLS/SEP/pad/unk...), ascending.
    pub fn special_ids(&self) -> &[u32] {
        &self.special_ids
    }

    /// The unknown token's id, if the model has one.
    pub fn unk_id(&self) -> Option<u32> {
        self.unk_id
    }

    /// One past the largest id the tokenizer can produce.
    pub fn id_limit(&self) -> u64 {
        self.id_limit
    }

    /// The JSON the tokenizer was built from.
    pub fn json(&self) -> &str {
        &self.hf.source
    }
}

/// Parses the JSON and builds the fast path it qualifies for, or says why none applies.
fn prepare(text: &str, lazy: &Arc<LazyHf>) -> std::result::Result<Tokenizer, String> {
    let t = TokenizerJson::parse(text)?;
    let guard = AddedGuard::new(&t.added_tokens)?;
    let normalized_added = || Err("an added token is matched after normalization (normalized=true)".to_string());
    let unk = t.model.unk_token.as_deref();
    match t.model.ty.as_deref() {
        Some("WordPiece") => {
            if guard.any_normalized {
                return normalized_added();
            }
            let f = wordpiece::WordPiece::from_json(&t)?;
            let meta = AddedVocab::new(&t.added_tokens, f.vocab(), unk);
            Ok(meta.tokenizer(f, guard, lazy, Kind::WordPiece))
        }
        Some("BPE") => {
            if spm::applies(&t) {
                if guard.any_normalized {
                    return normalized_added();
                }
                let f = spm::SpmBpe::from_json(&t.model)?;
                let meta = AddedVocab::new(&t.added_tokens, f.vocab(), unk);
                Ok(meta.tokenizer(f, guard, lazy, Kind::SpmBpe))
            } else if bytelevel::applies(&t) {
                // The byte-level path requires no normalizer, so normalized added tokens are matched
                // on the raw text, which the guard scans.
                let f = bytelevel::ByteLevelBpe::from_json(&t)?;
                let meta = AddedVocab::new(&t.added_tokens, f.vocab(), unk);
                Ok(meta.tokenizer(f, guard, lazy, Kind::ByteLevelBpe))
            } else {
                Err("BPE with a normalizer / pre-tokenizer that no fast path implements".into())
            }
        }
        Some(t) => Err(format!("model type {t:?} has no fast path")),
        None => Err("the model has no \"type\"".into()),
    }
}

/// The added vocabulary as `tokenizers` builds it from `added_tokens` (`AddedVocabulary::add_tokens`
/// over a fresh vocabulary): what the special ids, the unknown id and the id limit come from.
struct AddedVocab<'a> {
    /// id → the entry it was last given to
    tokens: HashMap<u32, &'a AddedTokenJson<'a>>,
    model_size: u64,
    unk_id: Option<u32>,
}

impl<'a> AddedVocab<'a> {
    fn new(added: &'a [AddedTokenJson<'a>], vocab: &VocabMap, unk_token: Option<&str>) -> Self {
        let model_size = vocab.len() as u64;
        let mut ids: HashMap<&'a str, u32> = HashMap::new();
        let mut tokens: HashMap<u32, &'a AddedTokenJson<'a>> = HashMap::new();
        let mut next_id = model_size as u32;
        for t in added {
            let content: &str = &t.content;
            if content.is_empty() {
                continue;
            }
            let known = ids.get(content).copied();
            if known.is_some_and(|id| tokens.get(&id).is_some_and(|o| o.same_token(t))) {
                continue;
            }
            let id = known.or_else(|| vocab.get(content.as_bytes())).unwrap_or_else(|| {
                next_id += 1;
                next_id - 1
            });
            ids.insert(content, id);
            tokens.insert(id, t);
        }
        let unk_id = unk_token.and_then(|u| ids.get(u).copied().or_else(|| vocab.get(u.as_bytes())));
        AddedVocab {
            tokens,
            model_size,
            unk_id,
        }
    }

    fn tokenizer<F: Fast + 'static>(self, fast: F, guard: AddedGuard, lazy: &Arc<LazyHf>, kind: Kind) -> Tokenizer {
        let mut special_ids: Vec<u32> = self.tokens.iter().filter(|(_, t)| t.special).map(|(&i, _)| i).collect();
        special_ids.sort_unstable();
        let added_limit = self.tokens.keys().map(|&k| k as u64 + 1).max().unwrap_or(0);
        let id_limit = self.model_size.max(added_limit);
        Tokenizer {
            encoder: Arc::new(FastEncoder {
                fast,
                guard,
                hf: lazy.clone(),
                slots: Slots::new(),
                id_limit,
            }),
            hf: lazy.clone(),
            kind,
            fallback_reason: None,
            special_ids,
            unk_id: self.unk_id,
            id_limit,
        }
    }
}

/// Finds texts that contain the content of an added token.
pub(crate) struct AddedGuard {
    ac: Option<AhoCorasick>,
    /// Some added token has `normalized: true` (matched on the normalized text).
    pub any_normalized: bool,
}

impl AddedGuard {
    fn new(added: &[AddedTokenJson<'_>]) -> std::result::Result<Self, String> {
        // `tokenizers` ignores empty added tokens
        let contents: Vec<&str> = added.iter().map(|t| &*t.content).filter(|c| !c.is_empty()).collect();
        let any_normalized = added.iter().any(|t| !t.content.is_empty() && t.normalized);
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

/// A fast path plus its guard and the (lazily built) `tokenizers` fallback.
struct FastEncoder<F> {
    fast: F,
    guard: AddedGuard,
    hf: Arc<LazyHf>,
    slots: Slots,
    id_limit: u64,
}

impl<F: Fast> Encoder for FastEncoder<F> {
    fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        if self.guard.hits(text) {
            return self.hf.get()?.encode(text, out);
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
        self.id_limit
    }
}

// ---------------------------------------------------------------- JSON helpers shared by the families

/// The vocabulary of `model.vocab`; a repeated key keeps its last id, as in `tokenizers`.
pub(crate) fn vocab_of(model: &ModelJson<'_>) -> std::result::Result<VocabMap, String> {
    match &model.vocab {
        Some(Vocab::Map(items)) => VocabMap::new(items.iter().map(|(k, id)| (k.as_bytes(), *id))),
        _ => Err("model.vocab is not a map".into()),
    }
}

/// BPE model settings, read as `tokenizers` reads them (absent keys take the builder defaults).
pub(crate) struct BpeJson<'m> {
    pub vocab: VocabMap,
    /// Merges in rank order.
    pub merges: Vec<(&'m str, &'m str)>,
    pub unk_token: Option<&'m str>,
    pub fuse_unk: bool,
    pub byte_fallback: bool,
    pub ignore_merges: bool,
}

impl<'m> BpeJson<'m> {
    pub(crate) fn from_json(model: &'m ModelJson<'_>) -> std::result::Result<Self, String> {
        if model.dropout.is_some_and(|d| d != 0.0) {
            return Err("BPE dropout is random: no fast path".into());
        }
        if model.continuing_subword_prefix.is_some() {
            return Err("BPE continuing_subword_prefix is not implemented by the fast paths".into());
        }
        if model.end_of_word_suffix.is_some() {
            return Err("BPE end_of_word_suffix is not implemented by the fast paths".into());
        }
        let list = model.merges.as_deref().ok_or("BPE merges missing")?;
        let merges = if list.iter().all(|m| matches!(m, Merge::Pair(..))) {
            list.iter()
                .filter_map(|m| match m {
                    Merge::Pair(a, b) => Some((&**a, &**b)),
                    Merge::Legacy(_) => None,
                })
                .collect()
        } else {
            // The legacy "a b" form; `tokenizers` skips "#version" lines before numbering ranks.
            let mut out = Vec::with_capacity(list.len());
            for m in list {
                let Merge::Legacy(s) = m else {
                    return Err("BPE merges mix pairs and strings".into());
                };
                if s.starts_with("#version") {
                    continue;
                }
                let mut parts = s.split(' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(a), Some(b), None) => out.push((a, b)),
                    _ => return Err(format!("bad BPE merge {:?}", &**s)),
                }
            }
            out
        };
        let vocab = vocab_of(model)?;
        // the BPE merge loops are exact only when an id names one string
        bpe::check_ids(vocab.ids())?;
        Ok(BpeJson {
            vocab,
            merges,
            unk_token: model.unk_token.as_deref(),
            fuse_unk: model.fuse_unk.unwrap_or(false),
            byte_fallback: model.byte_fallback.unwrap_or(false),
            ignore_merges: model.ignore_merges.unwrap_or(false),
        })
    }

    /// The id of the unknown token, which must be in the vocabulary (`tokenizers` errors when it
    /// needs an unknown token that is not).
    pub(crate) fn unk_id(&self) -> std::result::Result<Option<u32>, String> {
        self.unk_token
            .map(|u| {
                self.vocab
                    .get(u.as_bytes())
                    .ok_or_else(|| "the unknown token is not in the vocabulary".to_string())
            })
            .transpose()
    }

    /// The merges as `(left id, right id, merged id)` in rank order; `check` may refuse a merge.
    pub(crate) fn triples(
        &self,
        check: impl Fn(&str, &str) -> std::result::Result<(), String>,
    ) -> std::result::Result<Vec<(u32, u32, u32)>, String> {
        let mut out = Vec::with_capacity(self.merges.len());
        let mut joined = String::new();
        let id = |s: &str, what: &str| {
            self.vocab
                .get(s.as_bytes())
                .ok_or_else(|| format!("a merge {what} is not in the vocabulary"))
        };
        for &(a, b) in &self.merges {
            check(a, b)?;
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            let (ia, ib, inew) = (id(a, "token")?, id(b, "token")?, id(&joined, "result")?);
            bpe::check_merge(ia, ib, inew)?;
            out.push((ia, ib, inew));
        }
        Ok(out)
    }
}

/// A string → id map with a fast hasher, looked up by bytes.
///
/// Memory: the keys are concatenated in one arena and the table holds (start, length, id), so a
/// vocabulary costs one allocation for its strings instead of one per key.
pub(crate) struct VocabMap {
    arena: Box<[u8]>,
    table: hashbrown::HashTable<(u32, u32, u32)>,
    hasher: foldhash::fast::FixedState,
    /// Length in bytes of the longest key.
    pub max_len: usize,
}

/// The key of a [`VocabMap`] entry (start, length, id) in its arena.
#[inline]
fn key_of<'a>(arena: &'a [u8], e: &(u32, u32, u32)) -> &'a [u8] {
    &arena[e.0 as usize..(e.0 + e.1) as usize]
}

impl VocabMap {
    /// The map of `items`; a repeated key keeps its last id.
    pub(crate) fn new<'a>(items: impl IntoIterator<Item = (&'a [u8], u32)>) -> std::result::Result<Self, String> {
        let hasher = foldhash::fast::FixedState::with_seed(0x0076_6f63_6162);
        let items = items.into_iter();
        let mut table: hashbrown::HashTable<(u32, u32, u32)> = hashbrown::HashTable::with_capacity(items.size_hint().0);
        let mut arena: Vec<u8> = Vec::new();
        let mut max_len = 0;
        for (k, id) in items {
            let h = hasher.hash_one(k);
            max_len = max_len.max(k.len());
            if let Some(e) = table.find_mut(h, |e| key_of(&arena, e) == k) {
                e.2 = id;
                continue;
            }
            let (Ok(start), Ok(len)) = (u32::try_from(arena.len()), u32::try_from(k.len())) else {
                return Err("the vocabulary's strings exceed 4 GiB".into());
            };
            if start.checked_add(len).is_none() {
                return Err("the vocabulary's strings exceed 4 GiB".into());
            }
            arena.extend_from_slice(k);
            table.insert_unique(h, (start, len, id), |e| hasher.hash_one(key_of(&arena, e)));
        }
        Ok(VocabMap {
            arena: arena.into_boxed_slice(),
            table,
            hasher,
            max_len,
        })
    }

    /// The id of `key`.
    #[inline]
    pub(crate) fn get(&self, key: &[u8]) -> Option<u32> {
        if key.len() > self.max_len {
            return None;
        }
        self.table
            .find(self.hasher.hash_one(key), |e| key_of(&self.arena, e) == key)
            .map(|e| e.2)
    }

    /// Number of distinct keys (`tokenizers`' vocabulary size).
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// The id of every key, in no particular order.
    pub(crate) fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.table.iter().map(|e| e.2)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::Value;

    /// WordLlama's SentencePiece BPE tokenizer cut down to what the golden texts reach.
    pub(crate) const WORDLLAMA: &str = include_str!("../../tests/fixtures/wordllama-spm/tokenizer.json");
    const WORDLLAMA_GOLDEN: &str = include_str!("../../tests/fixtures/wordllama-spm/golden.json");
    const DEFAULT: &str = include_str!("../../python/tokvec/models/default/tokenizer.json");

    /// Texts and the ids WordLlama's full tokenizer gives them (`tokenizers`, no special tokens).
    #[derive(serde::Deserialize)]
    pub(crate) struct Golden {
        pub texts: Vec<String>,
        pub ids: Vec<Vec<u32>>,
    }

    pub(crate) fn golden() -> Golden {
        let g: Golden = serde_json::from_str(WORDLLAMA_GOLDEN).expect("tests/fixtures/wordllama-spm/golden.json");
        assert!(!g.texts.is_empty() && g.texts.len() == g.ids.len());
        g
    }

    /// The fast path `kind` is chosen for `json` and gives the ids of the `tokenizers` crate on
    /// `texts`, with a cold and then a warm piece cache.
    pub(crate) fn assert_fast_matches_hf(json: &str, texts: &[&str], kind: Kind) {
        let t = Tokenizer::from_json(json.to_string(), false, true).unwrap();
        assert_eq!(t.kind(), kind, "{:?}", t.fallback_reason());
        for _round in 0..2 {
            for text in texts {
                let mut a = Vec::new();
                t.encoder().encode(text, &mut a).unwrap();
                let mut b = Vec::new();
                t.hf().unwrap().encode(text, &mut b).unwrap();
                assert_eq!(a, b, "text {text:?}");
            }
        }
    }

    #[test]
    fn kinds_are_chosen_from_the_json() {
        let s = Tokenizer::from_json(DEFAULT.to_string(), false, true).unwrap();
        assert_eq!(s.kind(), Kind::WordPiece, "{:?}", s.fallback_reason());
        let s = Tokenizer::from_json(DEFAULT.to_string(), false, false).unwrap();
        assert_eq!(s.kind(), Kind::Hf);
        assert!(s.fallback_reason().unwrap().contains("fast=False"));
        let s = Tokenizer::from_json(DEFAULT.to_string(), true, true).unwrap();
        assert_eq!(s.kind(), Kind::Hf);
        // a WordLevel tokenizer has no fast path
        let wl = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
            "pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
            "model":{"type":"WordLevel","vocab":{"a":0,"[UNK]":1},"unk_token":"[UNK]"}}"#;
        let s = Tokenizer::from_json(wl.to_string(), false, true).unwrap();
        assert_eq!(s.kind(), Kind::Hf);
        assert_eq!(s.unk_id(), Some(1));
        let s = Tokenizer::from_json(WORDLLAMA.to_string(), false, true).unwrap();
        assert_eq!(s.kind(), Kind::SpmBpe, "{:?}", s.fallback_reason());
    }

    #[test]
    fn the_fast_path_builds_no_tokenizers_crate_tokenizer_until_a_text_needs_it() {
        let s = Tokenizer::from_json(DEFAULT.to_string(), false, true).unwrap();
        assert!(!s.hf_built());
        let mut a = Vec::new();
        s.encoder().encode("hello world", &mut a).unwrap();
        assert!(!s.hf_built());
        // added-token content goes to the tokenizers crate, built now
        a.clear();
        s.encoder().encode("hello [CLS] world[SEP]", &mut a).unwrap();
        assert!(s.hf_built());
        let mut b = Vec::new();
        s.hf().unwrap().encode("hello [CLS] world[SEP]", &mut b).unwrap();
        assert_eq!(a, b);
        assert!(a.contains(&101) && a.contains(&102), "{a:?}");
        // fast=False and add_special_tokens=True build it at once
        assert!(Tokenizer::from_json(DEFAULT.to_string(), false, false)
            .unwrap()
            .hf_built());
        assert!(Tokenizer::from_json(DEFAULT.to_string(), true, true)
            .unwrap()
            .hf_built());
    }

    /// Special ids, unknown id and id limit from the parse equal the `tokenizers` crate's.
    fn assert_meta_matches(json: &str) {
        let fast = Tokenizer::from_json(json.to_string(), false, true).unwrap();
        assert_ne!(fast.kind(), Kind::Hf, "{:?}", fast.fallback_reason());
        let hf = Tokenizer::from_json(json.to_string(), false, false).unwrap();
        assert_eq!(fast.special_ids(), hf.special_ids());
        assert_eq!(fast.unk_id(), hf.unk_id());
        assert_eq!(fast.id_limit(), hf.id_limit());
        assert_eq!(fast.encoder().id_limit(), hf.encoder().id_limit());
    }

    #[test]
    fn special_ids_unknown_id_and_id_limit_are_those_of_tokenizers() {
        assert_meta_matches(DEFAULT);
        assert_meta_matches(WORDLLAMA);
        // added tokens: new ones (ids past the vocabulary, whatever id the file says), one given
        // twice, one given twice with other flags, one already in the vocabulary, an empty one and a
        // non-special one
        let mut v: Value = serde_json::from_str(DEFAULT).unwrap();
        let tok = |id: u64, content: &str, special: bool, lstrip: bool| {
            serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": lstrip,
                               "rstrip": false, "normalized": false, "special": special})
        };
        let added = v["added_tokens"].as_array_mut().unwrap();
        added.extend([
            tok(7, "<new>", true, false),
            tok(99999, "<new2>", false, false),
            tok(3, "<new>", true, false),
            tok(3, "<new2>", true, true),
            tok(1, "hello", true, false),
            tok(1, "", true, false),
        ]);
        assert_meta_matches(&v.to_string());
        let v: Value = serde_json::from_str(WORDLLAMA).unwrap();
        let mut v2 = v.clone();
        v2["added_tokens"]
            .as_array_mut()
            .unwrap()
            .push(tok(0, "<extra>", true, false));
        assert_meta_matches(&v2.to_string());
    }

    #[test]
    fn a_tokenizer_read_from_a_file_does_not_depend_on_it_afterwards() {
        let dir = std::env::temp_dir().join(format!("tokvec-fasttok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("tokenizer.json");
        std::fs::write(&p, DEFAULT).unwrap();
        let t = Tokenizer::from_file(&p, false, true).unwrap();
        assert_eq!(t.kind(), Kind::WordPiece);
        assert_eq!(t.json(), DEFAULT);
        let mut want = Vec::new();
        HfEncoder::from_json(DEFAULT, false)
            .unwrap()
            .encode("a [CLS] b", &mut want)
            .unwrap();
        // other bytes written over the file, then the file deleted: the JSON and a text that needs
        // the tokenizers crate (built only now) still come from what was loaded
        std::fs::write(&p, DEFAULT.replace("[CLS]", "[CLX]")).unwrap();
        assert_eq!(t.json(), DEFAULT);
        std::fs::remove_file(&p).unwrap();
        assert!(!t.hf_built());
        let mut ids = Vec::new();
        t.encoder().encode("a [CLS] b", &mut ids).unwrap();
        assert_eq!(ids, want);
        assert!(matches!(
            Tokenizer::from_file(&p, false, true),
            Err(CoreError::NotFound { .. })
        ));
        std::fs::write(&p, b"{\xff}").unwrap();
        let e = Tokenizer::from_file(&p, false, true).err().unwrap().to_string();
        assert!(e.contains("not a UTF-8 text file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_json_tokenizers_refuses_is_refused_with_its_error() {
        // the fast parse would accept this model, but `tokenizers` refuses the version
        let bad = DEFAULT.replacen("\"version\":\"1.0\"", "\"version\":\"9.9\"", 1);
        assert_ne!(bad, DEFAULT);
        let e = Tokenizer::from_json(bad.clone(), false, true)
            .err()
            .unwrap()
            .to_string();
        let want = HfEncoder::from_json(&bad, false).err().unwrap().to_string();
        assert_eq!(e, want);
        assert!(e.contains("Unknown tokenizer version"), "{e}");
        // a post-processor of no known form
        let mut v: Value = serde_json::from_str(DEFAULT).unwrap();
        v["post_processor"] = serde_json::json!({"type": "NoSuchProcessor"});
        assert!(Tokenizer::from_json(v.to_string(), false, true).is_err());
    }

    #[test]
    fn vocab_map_keeps_the_last_id_of_a_repeated_key() {
        let m = VocabMap::new([(&b"a"[..], 1), (b"bc", 2), (b"a", 3), (b"", 4)]).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(
            (m.get(b"a"), m.get(b"bc"), m.get(b""), m.get(b"b")),
            (Some(3), Some(2), Some(4), None)
        );
        assert_eq!(m.max_len, 2);
        let mut ids: Vec<u32> = m.ids().collect();
        ids.sort_unstable();
        assert_eq!(ids, [2, 3, 4]);
    }
}
