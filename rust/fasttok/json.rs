//! The tokenizer JSON, parsed once into typed structs that borrow their strings from the text.
//!
//! Load time and memory: the model section (vocabulary and merges, nearly all of the file) is read
//! into string slices of the text (a string allocates only when it holds an escape), with no
//! `serde_json::Value` tree and no map per key; the fast paths then build their own compact tables
//! and the text can be dropped. The small sections (normalizer, pre-tokenizer, post-processor,
//! decoder, truncation, padding) are read with `tokenizers`' own types: those sections are accepted
//! exactly when `tokenizers` accepts them, and the fast paths look at the very components
//! `tokenizers` would run. Whatever this parse refuses goes to the `tokenizers` crate, whose
//! success or error is then the answer, so a refusal here costs time, never correctness.

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use tokenizers::TruncationParams;
use tokenizers::{DecoderWrapper, NormalizerWrapper, PaddingParams, PostProcessorWrapper, PreTokenizerWrapper};

/// A JSON string, borrowed from the text unless it holds an escape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Str<'a>(pub Cow<'a, str>);

impl Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(s))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(s.to_owned()))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(s))
            }
        }
        Ok(Str(d.deserialize_str(V)?))
    }
}

/// The whole tokenizer JSON. Keys `tokenizers` ignores are ignored; its checks on `version` are
/// repeated by [`TokenizerJson::parse`].
#[derive(Deserialize)]
pub(crate) struct TokenizerJson<'a> {
    #[serde(borrow, default)]
    version: Option<Str<'a>>,
    #[serde(default)]
    #[allow(dead_code)] // read for its validation only
    truncation: Option<TruncationParams>,
    #[serde(default)]
    #[allow(dead_code)]
    padding: Option<PaddingParams>,
    #[serde(borrow, default)]
    pub added_tokens: Vec<AddedTokenJson<'a>>,
    #[serde(default)]
    pub normalizer: Option<NormalizerWrapper>,
    #[serde(default)]
    pub pre_tokenizer: Option<PreTokenizerWrapper>,
    #[serde(default)]
    #[allow(dead_code)]
    post_processor: Option<PostProcessorWrapper>,
    #[serde(default)]
    #[allow(dead_code)]
    decoder: Option<DecoderWrapper>,
    #[serde(borrow)]
    pub model: ModelJson<'a>,
}

impl<'a> TokenizerJson<'a> {
    /// Parses `text`; the error says what this parse could not read.
    pub(crate) fn parse(text: &'a str) -> Result<Self, String> {
        let t: TokenizerJson<'a> = serde_json::from_str(text).map_err(|e| format!("cannot parse the JSON: {e}"))?;
        if t.version.as_deref().is_some_and(|v| v != "1.0") {
            return Err("unknown tokenizer version".into());
        }
        Ok(t)
    }
}

/// One entry of `added_tokens`: every field is required, as in `tokenizers`.
#[derive(Deserialize, Debug)]
pub(crate) struct AddedTokenJson<'a> {
    #[allow(dead_code)] // `tokenizers` assigns ids itself (see `fasttok::AddedVocab`)
    pub id: u32,
    #[serde(borrow)]
    pub content: Str<'a>,
    pub single_word: bool,
    pub lstrip: bool,
    pub rstrip: bool,
    pub normalized: bool,
    pub special: bool,
}

impl AddedTokenJson<'_> {
    /// Same content and flags (the id aside): `tokenizers` skips such a repeated entry.
    pub(crate) fn same_token(&self, o: &Self) -> bool {
        (
            &*self.content,
            self.single_word,
            self.lstrip,
            self.rstrip,
            self.normalized,
            self.special,
        ) == (&*o.content, o.single_word, o.lstrip, o.rstrip, o.normalized, o.special)
    }
}

/// The model section: the fields of every model type the fast paths read (others are ignored).
/// `None` stands for an absent key and for `null` alike.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct ModelJson<'a> {
    #[serde(rename = "type", borrow)]
    pub ty: Option<Str<'a>>,
    #[serde(borrow)]
    pub vocab: Option<Vocab<'a>>,
    #[serde(borrow)]
    pub merges: Option<Vec<Merge<'a>>>,
    #[serde(borrow)]
    pub unk_token: Option<Str<'a>>,
    /// Unigram's unknown id.
    pub unk_id: Option<u64>,
    #[serde(borrow)]
    pub continuing_subword_prefix: Option<Str<'a>>,
    pub max_input_chars_per_word: Option<u64>,
    pub dropout: Option<f64>,
    #[serde(borrow)]
    pub end_of_word_suffix: Option<Str<'a>>,
    pub fuse_unk: Option<bool>,
    pub byte_fallback: Option<bool>,
    pub ignore_merges: Option<bool>,
}

/// `model.vocab`: a token → id map, in file order (a repeated key appears twice; the last counts,
/// as in `tokenizers`), or `Other` for a vocabulary of another form (Unigram's list).
pub(crate) enum Vocab<'a> {
    Map(Vec<(Str<'a>, u32)>),
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for Vocab<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Vocab<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a vocabulary")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Self::Value, M::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(0));
                while let Some((k, v)) = m.next_entry::<Str<'a>, u32>()? {
                    out.push((k, v));
                }
                Ok(Vocab::Map(out))
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut s: S) -> Result<Self::Value, S::Error> {
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Vocab::Other)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// One BPE merge: `["a", "b"]`, or the legacy `"a b"`.
pub(crate) enum Merge<'a> {
    Pair(Str<'a>, Str<'a>),
    Legacy(Str<'a>),
}

impl<'de: 'a, 'a> Deserialize<'de> for Merge<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Merge<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a merge: a pair of strings or one string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(Merge::Legacy(Str(Cow::Borrowed(s))))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Merge::Legacy(Str(Cow::Owned(s.to_owned()))))
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut s: S) -> Result<Self::Value, S::Error> {
                let a: Str<'a> = s.next_element()?.ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let b: Str<'a> = s.next_element()?.ok_or_else(|| de::Error::invalid_length(1, &self))?;
                if s.next_element::<IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(3, &self));
                }
                Ok(Merge::Pair(a, b))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// What [`unk_of_model`] reads: the model's unknown token or id, everything else skipped.
#[derive(Deserialize)]
struct UnkOnly<'a> {
    #[serde(borrow)]
    model: UnkModel<'a>,
}

#[derive(Deserialize)]
struct UnkModel<'a> {
    #[serde(borrow, default)]
    unk_token: Option<Str<'a>>,
    #[serde(default)]
    unk_id: Option<u64>,
}

/// The model's unknown token (WordLevel, WordPiece, BPE) or unknown id (Unigram), for tokenizers the
/// fast paths do not serve; `tokenizers` keeps the latter two private.
pub(crate) fn unk_of_model(text: &str) -> (Option<String>, Option<u64>) {
    match serde_json::from_str::<UnkOnly>(text) {
        Ok(u) => (u.model.unk_token.map(|s| s.0.into_owned()), u.model.unk_id),
        Err(_) => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_borrow_unless_escaped() {
        let t = TokenizerJson::parse(
            r#"{"version":"1.0","added_tokens":[],"normalizer":null,"pre_tokenizer":null,
               "model":{"type":"BPE","vocab":{"ab":0,"a\"b":1,"\u00e9":2},"merges":[["a","b"],"a b"]}}"#,
        )
        .unwrap();
        let Some(Vocab::Map(v)) = &t.model.vocab else {
            panic!("vocab is a map")
        };
        assert!(matches!(v[0].0 .0, Cow::Borrowed("ab")));
        assert_eq!(&*v[1].0, "a\"b");
        assert_eq!(&*v[2].0, "é");
        let m = t.model.merges.as_ref().unwrap();
        assert!(matches!(&m[0], Merge::Pair(a, b) if &**a == "a" && &**b == "b"));
        assert!(matches!(&m[1], Merge::Legacy(s) if &**s == "a b"));
    }

    #[test]
    fn what_tokenizers_refuses_is_refused() {
        for bad in [
            r#"{"version":"2.0","model":{"type":"BPE","vocab":{},"merges":[]}}"#,
            r#"{"model":{"type":"BPE","vocab":{"a":-1},"merges":[]}}"#,
            r#"{"model":{"type":"BPE","vocab":{},"merges":[["a","b","c"]]}}"#,
            r#"{"added_tokens":[{"id":0,"content":"x"}],"model":{"type":"BPE","vocab":{},"merges":[]}}"#,
            r#"{"normalizer":{"type":"NoSuchNormalizer"},"model":{"type":"BPE","vocab":{},"merges":[]}}"#,
            r#"{"added_tokens":[]}"#,
        ] {
            assert!(TokenizerJson::parse(bad).is_err(), "{bad}");
            assert!(tokenizers::Tokenizer::from_bytes(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
