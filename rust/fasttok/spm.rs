//! SentencePiece-style BPE over `▁` (Llama-2, Mistral, WordLlama): fast path `"spm-bpe-fast"`.
//!
//! `tokenizers` runs this family as: normalizer `Prepend("▁")` (skipped for an empty text) then
//! `Replace(" ", "▁")`; no pre-tokenizer, so the *whole* normalized text is one BPE word, merged
//! with a heap and cached only when the same text comes again.
//!
//! Here the normalized text is cut before each `▁` that follows a non-`▁` character, and each piece
//! (`▁The`, `▁cat,`, `▁▁▁indented`) is merged on its own, through the per-thread piece cache.
//!
//! Why the cut is exact. A merge can only join two adjacent symbols. At a cut, the left symbol ends
//! with the text character before the `▁` (not `▁`), and the right symbol starts with `▁`. Every
//! symbol's string is the concatenation of its units' strings: a character in the vocabulary is
//! itself, a byte-fallback unit is `<0xXX>` (ends with `>`), an unknown unit is the unknown token.
//! So a merge across the cut would be a merge `(a, b)` with `b` starting with `▁` and `a` not
//! ending with `▁`. [`SpmBpe::from_json`] scans every merge and refuses the fast path (→ `"hf"`)
//! if one exists, or if `▁` itself is not in the vocabulary, or if the unknown token's string
//! starts or ends with `▁`. With no merge across any cut, merging the pieces separately gives the
//! same symbols as merging the whole text: each piece's candidate pairs depend only on that piece,
//! and a min-heap on (rank, position) pops the candidates of one piece in the same relative order
//! whatever else is in the heap. An unknown unit never fuses across a cut either, since the cut is
//! followed by `▁`, which is in the vocabulary and flushes a pending unknown.
//!
//! `ignore_merges` (whole-word lookup first) is honoured on the whole normalized text, as in
//! `tokenizers`, before cutting.

use tokenizers::normalizers::Replace;
use tokenizers::NormalizerWrapper;

use super::bpe::{Bpe, Init};
use super::cache::Scratch;
use super::json::{ModelJson, TokenizerJson};
use super::{BpeJson, Fast, VocabMap};
use crate::error::Result;

const SP: char = '\u{2581}';
const SP_STR: &str = "\u{2581}";

/// Whether the JSON has this family's normalizer and no pre-tokenizer.
pub(crate) fn applies(t: &TokenizerJson<'_>) -> bool {
    let Some(NormalizerWrapper::Sequence(seq)) = &t.normalizer else {
        return false;
    };
    let [NormalizerWrapper::Prepend(p), NormalizerWrapper::Replace(r)] = seq.as_ref() else {
        return false;
    };
    // `Replace`'s pattern is private: compare its serialization with the one of Replace(" ", "▁"),
    // which tells a literal " " from a regex.
    let same = |r: &Replace| {
        let want = Replace::new(" ", SP_STR)
            .ok()
            .and_then(|w| serde_json::to_string(&w).ok());
        want.is_some() && serde_json::to_string(r).ok() == want
    };
    t.pre_tokenizer.is_none() && p.prepend == SP_STR && same(r)
}

/// The fast path for SentencePiece-style BPE.
pub(crate) struct SpmBpe {
    bpe: Bpe,
    vocab: VocabMap,
    ascii: [Init; 128],
    byte_ids: [Option<u32>; 256],
    byte_fallback: bool,
    ignore_merges: bool,
}

impl SpmBpe {
    /// Builds the fast path, or says why it does not apply to this vocabulary.
    pub(crate) fn from_json(model: &ModelJson<'_>) -> std::result::Result<Self, String> {
        let j = BpeJson::from_json(model)?;
        if j.vocab.get(SP_STR.as_bytes()).is_none() {
            return Err("\u{2581} is not in the vocabulary: pieces cannot be cut before it".into());
        }
        if j.unk_token.is_some_and(|u| u.starts_with(SP) || u.ends_with(SP)) {
            return Err("the unknown token starts or ends with \u{2581}".into());
        }
        let unk = j.unk_id()?;
        let triples = j.triples(|a, b| {
            if b.starts_with(SP) && !a.ends_with(SP) {
                return Err(format!(
                    "the merge {a:?} + {b:?} crosses a \u{2581} boundary: pieces cannot be merged separately"
                ));
            }
            Ok(())
        })?;
        let vocab = j.vocab;
        let mut byte_ids = [None; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            *slot = vocab.get(format!("<{b:#04X}>").as_bytes());
        }
        let mut this = SpmBpe {
            bpe: Bpe::new(triples, unk, j.fuse_unk),
            vocab,
            ascii: [Init::Unk; 128],
            byte_ids,
            byte_fallback: j.byte_fallback,
            ignore_merges: j.ignore_merges,
        };
        for c in 0u8..128 {
            this.ascii[c as usize] = this.init_slow(c as char);
        }
        Ok(this)
    }

    /// The vocabulary (token → id).
    pub(crate) fn vocab(&self) -> &VocabMap {
        &self.vocab
    }

    fn init_slow(&self, c: char) -> Init {
        let mut b = [0u8; 4];
        let s = c.encode_utf8(&mut b);
        if let Some(id) = self.vocab.get(s.as_bytes()) {
            return Init::Id(id);
        }
        if self.byte_fallback {
            let mut ids = [0u32; 4];
            let mut ok = true;
            for (k, &byte) in s.as_bytes().iter().enumerate() {
                match self.byte_ids[byte as usize] {
                    Some(id) => ids[k] = id,
                    None => ok = false,
                }
            }
            if ok {
                return Init::Bytes(ids, s.len() as u8);
            }
        }
        Init::Unk
    }

    #[inline]
    fn init(&self, c: char) -> Init {
        if (c as u32) < 128 {
            self.ascii[c as usize]
        } else {
            self.init_slow(c)
        }
    }

    /// BPE of one piece (no cache).
    fn piece(&self, piece: &str, ids: &mut Vec<u32>, s: &mut super::bpe::MergeScratch) {
        ids.clear();
        let mut pending = None;
        for c in piece.chars() {
            self.bpe.push_unit(self.init(c), ids, &mut pending);
        }
        self.bpe.finish_units(ids, &mut pending);
        self.bpe.merge(ids, s);
    }
}

impl Fast for SpmBpe {
    fn encode_fast(&self, text: &str, s: &mut Scratch, out: &mut Vec<u32>) -> Result<()> {
        if text.is_empty() {
            return Ok(()); // Prepend skips an empty text: no tokens
        }
        let Scratch {
            cache,
            merge,
            buf,
            starts,
            ids,
            ..
        } = s;
        // Normalize ("▁" + text with ' ' → '▁') and record the cuts: before each '▁' (from ' ' or a
        // literal '▁', E2 96 81) that follows a non-'▁'.
        buf.clear();
        starts.clear();
        buf.push(SP);
        starts.push(0);
        let bytes = text.as_bytes();
        let mut prev_sp = true;
        let mut i = 0;
        while i < bytes.len() {
            let rel = memchr::memchr2(b' ', 0xE2, &bytes[i..]);
            let j = rel.map_or(bytes.len(), |r| i + r);
            if j > i {
                buf.push_str(&text[i..j]);
                prev_sp = false;
            }
            if j == bytes.len() {
                break;
            }
            let sp_len = if bytes[j] == b' ' {
                1
            } else if bytes[j..].starts_with(SP_STR.as_bytes()) {
                3
            } else {
                // another character starting with E2: copy it whole
                let l = text[j..].chars().next().map_or(1, char::len_utf8);
                buf.push_str(&text[j..j + l]);
                prev_sp = false;
                i = j + l;
                continue;
            };
            if !prev_sp {
                starts.push(buf.len());
            }
            buf.push(SP);
            prev_sp = true;
            i = j + sp_len;
        }
        starts.push(buf.len());
        if self.ignore_merges {
            if let Some(id) = self.vocab.get(buf.as_bytes()) {
                out.push(id);
                return Ok(());
            }
        }
        for k in 0..starts.len() - 1 {
            let piece = &buf[starts[k]..starts[k + 1]];
            if cache.get(piece.as_bytes(), out) {
                continue;
            }
            self.piece(piece, ids, merge);
            out.extend_from_slice(ids);
            cache.insert(piece.as_bytes(), ids);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_fast_matches_hf, golden, WORDLLAMA};
    use super::super::{Kind, Tokenizer};
    use super::*;
    use crate::pool::Encoder;
    use serde_json::Value;

    fn fast_of(json: &str) -> std::result::Result<SpmBpe, String> {
        let t = TokenizerJson::parse(json)?;
        SpmBpe::from_json(&t.model)
    }

    /// A tiny SentencePiece-style BPE JSON: chars, byte fallback, a few merges.
    fn tiny(extra_merges: &[(&str, &str)]) -> String {
        let mut vocab: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        for b in 0..256 {
            vocab.push(format!("<0x{b:02X}>"));
        }
        for c in [
            "\u{2581}",
            "a",
            "b",
            "c",
            ",",
            "\u{2581}a",
            "\u{2581}\u{2581}",
            "ab",
            "\u{2581}ab",
            "b,",
            "é",
        ] {
            vocab.push(c.into());
        }
        let mut merges = vec![
            ("\u{2581}", "a"),
            ("a", "b"),
            ("\u{2581}", "\u{2581}"),
            ("\u{2581}a", "b"),
            ("b", ","),
        ];
        for m in extra_merges {
            let t = format!("{}{}", m.0, m.1);
            if !vocab.contains(&t) {
                vocab.push(t);
            }
            merges.push(*m);
        }
        let v: Vec<String> = vocab
            .iter()
            .enumerate()
            .map(|(i, t)| format!("{}:{i}", serde_json::to_string(t).unwrap()))
            .collect();
        let m: Vec<String> = merges
            .iter()
            .map(|(a, b)| serde_json::to_string(&format!("{a} {b}")).unwrap())
            .collect();
        format!(
            r#"{{"version":"1.0","truncation":null,"padding":null,
            "added_tokens":[{{"id":0,"content":"<unk>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}},
                            {{"id":1,"content":"<s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}}],
            "normalizer":{{"type":"Sequence","normalizers":[{{"type":"Prepend","prepend":"▁"}},{{"type":"Replace","pattern":{{"String":" "}},"content":"▁"}}]}},
            "pre_tokenizer":null,"post_processor":null,"decoder":null,
            "model":{{"type":"BPE","dropout":null,"unk_token":"<unk>","continuing_subword_prefix":null,"end_of_word_suffix":null,
                     "fuse_unk":true,"byte_fallback":true,"ignore_merges":false,"vocab":{{{}}},"merges":[{}]}}}}"#,
            v.join(","),
            m.join(",")
        )
    }

    fn check(json: &str, texts: &[&str]) {
        assert_fast_matches_hf(json, texts, Kind::SpmBpe);
    }

    #[test]
    fn tiny_vocab_matches_tokenizers() {
        let texts = [
            "",
            " ",
            "  ",
            "a",
            "ab",
            "ab, ab",
            "a  b",
            "  ab",
            "ab  ",
            "\u{2581}ab",
            "a\u{2581}\u{2581}b",
            "é",
            "ü",
            "a\nb c",
            "日本",
            "ab,ab,ab, ,",
            "b, b,b",
            "\u{2581}",
            "x\u{2581} \u{2581}y",
            "\u{2500}a",
        ];
        check(&tiny(&[]), &texts);
    }

    #[test]
    fn a_merge_across_the_cut_refuses_the_fast_path() {
        let e = fast_of(&tiny(&[(",", "\u{2581}a")])).err().unwrap();
        assert!(e.contains("crosses"), "{e}");
        // but ending in ▁ on the left is fine
        assert!(
            fast_of(&tiny(&[("a\u{2581}", "\u{2581}")])).is_err(),
            "a\u{2581} is not in the vocabulary"
        );
    }

    #[test]
    fn two_strings_with_one_id_refuse_the_fast_path() {
        let mut v: Value = serde_json::from_str(&tiny(&[])).unwrap();
        let vocab = v["model"]["vocab"].as_object_mut().unwrap();
        let id = vocab["ab"].clone();
        vocab.insert("\u{2581}ab".into(), id);
        let json = serde_json::to_string(&v).unwrap();
        let e = fast_of(&json).err().unwrap();
        assert!(e.contains("share an id"), "{e}");
        // the crate still encodes it: the tokenizer falls back
        let s = Tokenizer::from_json(json, false, true).unwrap();
        assert_eq!(s.kind(), Kind::Hf);
    }

    #[test]
    fn wordllama_matches_tokenizers_on_samples() {
        // The fixture is WordLlama's tokenizer cut down to the tokens and merges these texts can
        // reach (scripts/make_tokenizer_fixtures.py); the ids were made by the full tokenizer.
        let g = golden();
        let texts: Vec<&str> = g.texts.iter().map(String::as_str).collect();
        check(WORDLLAMA, &texts);
        let s = Tokenizer::from_json(WORDLLAMA.to_string(), false, true).unwrap();
        for (t, want) in texts.iter().zip(&g.ids) {
            let mut got = Vec::new();
            s.encoder().encode(t, &mut got).unwrap();
            assert_eq!(&got, want, "text {t:?}");
        }
    }

    #[test]
    fn through_the_encoder_trait() {
        let json = tiny(&[]);
        let s = Tokenizer::from_json(json, false, true).unwrap();
        assert_eq!(s.kind(), Kind::SpmBpe);
        let mut a = Vec::new();
        s.encoder().encode("ab <s> ab", &mut a).unwrap();
        let mut b = Vec::new();
        s.hf().unwrap().encode("ab <s> ab", &mut b).unwrap();
        assert_eq!(a, b);
        assert!(a.contains(&1));
    }
}
