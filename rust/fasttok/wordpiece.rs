//! BERT-style WordPiece (MiniLM, BERT): fast path `"wordpiece-fast"`.
//!
//! `tokenizers` runs `BertNormalizer` (clean text, pad CJK characters with spaces, strip accents
//! via NFD, lowercase) on the whole text, `BertPreTokenizer` (split on whitespace, isolate each
//! punctuation character), then WordPiece on each word (greedy longest match, `##` continuations,
//! the unknown token for a word with no full match or longer than `max_input_chars_per_word`).
//!
//! Here the text is first cut at ' ', '\t', '\n' and '\r'. That cut is exact: the normalizer maps
//! those characters to themselves or to ' ' and never removes them; every step of the normalizer
//! works per character except NFD's reordering of combining marks, which never crosses one of
//! these (they are starters, canonical combining class 0); and the pre-tokenizer splits there.
//! Then each chunk:
//! - ASCII (nearly all of them): normalized and split by hand in one pass (for ASCII the
//!   normalizer only drops control characters and lowercases; CJK padding and accent stripping
//!   change nothing), each word's ids from the cache or from WordPiece.
//! - otherwise: `tokenizers`' own normalizer and pre-tokenizer on that chunk alone (the exact
//!   Unicode tables), then the same cached WordPiece on its words.
//!
//! WordPiece itself looks substrings up without building strings: continuation pieces are keyed
//! without their prefix, and candidates longer than the longest key are skipped (they cannot match).

use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::{
    NormalizedString, Normalizer, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, PreTokenizerWrapper,
};

use super::cache::{Scratch, WordCache};
use super::json::{TokenizerJson, Vocab};
use super::{Fast, VocabMap};
use crate::error::{CoreError, Result};

/// Byte classes of the ASCII path.
const WORD: u8 = 0;
const SPACE: u8 = 1;
const PUNCT: u8 = 2;
const DROP: u8 = 3;

/// The fast path for WordPiece.
pub(crate) struct WordPiece {
    vocab: VocabMap,
    cont: VocabMap,
    unk: u32,
    max_chars: usize,
    lowercase: bool,
    class: [u8; 128],
    normalizer: Option<NormalizerWrapper>,
}

impl WordPiece {
    /// Builds the fast path, or says why it does not apply.
    pub(crate) fn from_json(t: &TokenizerJson<'_>) -> std::result::Result<Self, String> {
        if !matches!(t.pre_tokenizer, Some(PreTokenizerWrapper::BertPreTokenizer(_))) {
            return Err("WordPiece without BertPreTokenizer".into());
        }
        let (normalizer, clean_text, lowercase) = match &t.normalizer {
            None => (None, false, false),
            Some(NormalizerWrapper::BertNormalizer(n)) => {
                (Some(NormalizerWrapper::BertNormalizer(*n)), n.clean_text, n.lowercase)
            }
            Some(_) => return Err("WordPiece with a normalizer other than BertNormalizer".into()),
        };
        // `tokenizers` requires these three keys (and errors without them): so does the fast path.
        let model = &t.model;
        let prefix: &str = model
            .continuing_subword_prefix
            .as_deref()
            .ok_or("WordPiece continuing_subword_prefix is missing")?;
        let unk_token: &str = model.unk_token.as_deref().ok_or("WordPiece unk_token is missing")?;
        let max_chars = model
            .max_input_chars_per_word
            .and_then(|m| usize::try_from(m).ok())
            .ok_or("WordPiece max_input_chars_per_word is missing")?;
        let Some(Vocab::Map(items)) = &model.vocab else {
            return Err("model.vocab is not a map".into());
        };
        let vocab = VocabMap::new(items.iter().map(|(k, id)| (k.as_bytes(), *id)))?;
        let cont = VocabMap::new(
            items
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, id)| (&k.as_bytes()[prefix.len()..], *id)),
        )?;
        // `tokenizers` errors when it needs the unknown token and it is not in the vocabulary.
        let unk = vocab
            .get(unk_token.as_bytes())
            .ok_or("the unknown token is not in the vocabulary")?;
        let mut class = [WORD; 128];
        for (b, c) in class.iter_mut().enumerate() {
            let ch = b as u8 as char;
            *c = if clean_text && (b == 0 || (ch.is_ascii_control() && !matches!(ch, '\t' | '\n' | '\r'))) {
                DROP // removed by clean_text (NUL and Cc controls; \t \n \r become spaces)
            } else if ch.is_whitespace() {
                SPACE
            } else if ch.is_ascii_punctuation() {
                PUNCT
            } else {
                WORD
            };
        }
        Ok(WordPiece {
            vocab,
            cont,
            unk,
            max_chars,
            lowercase,
            class,
            normalizer,
        })
    }

    /// The vocabulary (token → id).
    pub(crate) fn vocab(&self) -> &VocabMap {
        &self.vocab
    }

    /// WordPiece of one normalized word (no cache), appended to `out`.
    fn word(&self, w: &str, out: &mut Vec<u32>) {
        if w.is_empty() {
            return;
        }
        let n_chars = if w.is_ascii() { w.len() } else { w.chars().count() };
        if n_chars > self.max_chars {
            out.push(self.unk);
            return;
        }
        let base = out.len();
        let bytes = w.as_bytes();
        let mut start = 0;
        while start < bytes.len() {
            let map = if start == 0 { &self.vocab } else { &self.cont };
            let mut end = bytes.len().min(start + map.max_len);
            while !w.is_char_boundary(end) {
                end -= 1;
            }
            let mut found = None;
            while end > start {
                if let Some(id) = map.get(&bytes[start..end]) {
                    found = Some(id);
                    break;
                }
                end -= 1;
                while !w.is_char_boundary(end) {
                    end -= 1;
                }
            }
            match found {
                Some(id) => {
                    out.push(id);
                    start = end;
                }
                None => {
                    out.truncate(base);
                    out.push(self.unk);
                    return;
                }
            }
        }
    }

    #[inline]
    fn cached_word(&self, w: &[u8], cache: &mut WordCache, out: &mut Vec<u32>) {
        if cache.get(w, out) {
            return;
        }
        let base = out.len();
        // SAFETY-free: `w` is built from whole UTF-8 characters (ASCII bytes or a `tokenizers` split).
        let s = std::str::from_utf8(w).unwrap_or("");
        self.word(s, out);
        cache.insert(w, &out[base..]);
    }

    fn ascii_chunk(&self, chunk: &[u8], word: &mut String, cache: &mut WordCache, out: &mut Vec<u32>) {
        word.clear();
        for &b in chunk {
            match self.class[b as usize] {
                WORD => word.push(if self.lowercase { b.to_ascii_lowercase() } else { b } as char),
                DROP => {}
                cls => {
                    if !word.is_empty() {
                        self.cached_word(word.as_bytes(), cache, out);
                        word.clear();
                    }
                    if cls == PUNCT {
                        self.cached_word(&[b], cache, out);
                    }
                }
            }
        }
        if !word.is_empty() {
            self.cached_word(word.as_bytes(), cache, out);
        }
    }

    fn general_chunk(&self, chunk: &str, cache: &mut WordCache, out: &mut Vec<u32>) -> Result<()> {
        let err = |e: tokenizers::Error| CoreError::Tokenizer {
            msg: format!("cannot encode a text: {e}"),
        };
        let mut ns = NormalizedString::from(chunk);
        if let Some(n) = &self.normalizer {
            n.normalize(&mut ns).map_err(err)?;
        }
        let mut pts = PreTokenizedString::from(ns);
        BertPreTokenizer.pre_tokenize(&mut pts).map_err(err)?;
        for (w, _, _) in pts.get_splits(OffsetReferential::Original, OffsetType::None) {
            self.cached_word(w.as_bytes(), cache, out);
        }
        Ok(())
    }
}

impl Fast for WordPiece {
    fn encode_fast(&self, text: &str, s: &mut Scratch, out: &mut Vec<u32>) -> Result<()> {
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            while i < bytes.len() && matches!(bytes[i], b' ' | b'\t' | b'\n' | b'\r') {
                i += 1;
            }
            let start = i;
            while i < bytes.len() && !matches!(bytes[i], b' ' | b'\t' | b'\n' | b'\r') {
                i += 1;
            }
            if start == i {
                break;
            }
            let chunk = &bytes[start..i];
            if chunk.is_ascii() {
                self.ascii_chunk(chunk, &mut s.buf, &mut s.cache, out);
            } else {
                // cut at ASCII bytes, so the chunk is whole UTF-8 characters
                self.general_chunk(&text[start..i], &mut s.cache, out)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::assert_fast_matches_hf;
    use super::super::{Kind, Tokenizer};
    use serde_json::Value;

    fn check(json: &str, texts: &[&str]) {
        assert_fast_matches_hf(json, texts, Kind::WordPiece);
    }

    const TEXTS: &[&str] = &[
        "",
        "   ",
        "Hello, World! It's 3.14 o'clock...",
        "UNAFFABLE unaffable un-affable",
        "a\u{0}b\u{1}c\u{7f}d \u{b}e\u{c}f \u{1c}g",
        "tabs\tand\nnew\r\nlines",
        "Zürich – “quoted” — naïve CAFÉ",
        "日本語のテキスト and 中文",
        "emoji 🙂👍🏽 zwj 👨\u{200d}👩\u{200d}👧",
        " \u{301}combining at start \u{301}\u{302}",
        "İstanbul ΣΑΣ ß ﬁ",
        "rtl \u{202e}עברית\u{202c} العربية",
        "\u{a0}nbsp\u{3000}ideographic\u{2028}sep",
        "supercalifragilisticexpialidocioussupercalifragilisticexpialidocioussupercalifragilisticexpialidocious!",
    ];

    #[test]
    fn default_model_matches_tokenizers() {
        check(include_str!("../../python/tokvec/models/default/tokenizer.json"), TEXTS);
    }

    #[test]
    fn other_normalizer_flags_match_tokenizers() {
        let base = include_str!("../../python/tokvec/models/default/tokenizer.json");
        let mut v: Value = serde_json::from_str(base).unwrap();
        for (clean, lower, strip) in [
            (false, false, Value::Null),
            (true, false, Value::Bool(true)),
            (false, true, Value::Bool(false)),
        ] {
            v["normalizer"]["clean_text"] = Value::Bool(clean);
            v["normalizer"]["lowercase"] = Value::Bool(lower);
            v["normalizer"]["strip_accents"] = strip.clone();
            check(&v.to_string(), TEXTS);
        }
        v["normalizer"] = Value::Null;
        check(&v.to_string(), TEXTS);
    }

    #[test]
    fn long_words_are_unknown() {
        let json = include_str!("../../python/tokvec/models/default/tokenizer.json");
        let s = Tokenizer::from_json(json.to_string(), false, true).unwrap();
        let mut a = Vec::new();
        s.encoder().encode(&"a".repeat(101), &mut a).unwrap();
        assert_eq!(a, vec![100]);
    }
}
