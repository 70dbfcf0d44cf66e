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

use serde_json::Value;

use super::bpe::{Bpe, Init};
use super::cache::Scratch;
use super::{BpeJson, Fast, VocabMap};
use crate::error::Result;

const SP: char = '\u{2581}';
const SP_STR: &str = "\u{2581}";

/// Whether the JSON has this family's normalizer and no pre-tokenizer.
pub(crate) fn applies(v: &Value) -> bool {
    let pre_ok = matches!(v.get("pre_tokenizer"), None | Some(Value::Null));
    let norm = v.get("normalizer");
    let seq = norm
        .filter(|n| n.get("type").and_then(Value::as_str) == Some("Sequence"))
        .and_then(|n| n.get("normalizers"))
        .and_then(Value::as_array);
    let norm_ok = match seq.map(Vec::as_slice) {
        Some([p, r]) => {
            p.get("type").and_then(Value::as_str) == Some("Prepend")
                && p.get("prepend").and_then(Value::as_str) == Some(SP_STR)
                && r.get("type").and_then(Value::as_str) == Some("Replace")
                && r.get("pattern").and_then(|x| x.get("String")).and_then(Value::as_str) == Some(" ")
                && r.get("content").and_then(Value::as_str) == Some(SP_STR)
        }
        _ => false,
    };
    pre_ok && norm_ok
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
    pub(crate) fn from_json(v: &Value) -> std::result::Result<Self, String> {
        let model = v.get("model").ok_or("no model")?;
        let j = BpeJson::from_json(model)?;
        let vocab = VocabMap::new(j.vocab.iter().map(|(k, id)| (k.as_bytes(), *id)));
        if vocab.get(SP_STR.as_bytes()).is_none() {
            return Err("\u{2581} is not in the vocabulary: pieces cannot be cut before it".into());
        }
        let unk = match &j.unk_token {
            None => None,
            Some(u) => {
                if u.starts_with(SP) || u.ends_with(SP) {
                    return Err("the unknown token starts or ends with \u{2581}".into());
                }
                // `tokenizers` errors when it needs an unknown token that is not in the vocabulary.
                Some(
                    vocab
                        .get(u.as_bytes())
                        .ok_or("the unknown token is not in the vocabulary")?,
                )
            }
        };
        let mut triples = Vec::with_capacity(j.merges.len());
        for (a, b) in &j.merges {
            if b.starts_with(SP) && !a.ends_with(SP) {
                return Err(format!(
                    "the merge {a:?} + {b:?} crosses a \u{2581} boundary: pieces cannot be merged separately"
                ));
            }
            let ia = vocab
                .get(a.as_bytes())
                .ok_or("a merge token is not in the vocabulary")?;
            let ib = vocab
                .get(b.as_bytes())
                .ok_or("a merge token is not in the vocabulary")?;
            let ab = format!("{a}{b}");
            let inew = vocab
                .get(ab.as_bytes())
                .ok_or("a merge result is not in the vocabulary")?;
            super::bpe::check_merge(ia, ib, inew)?;
            triples.push((ia, ib, inew));
        }
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
    use super::super::cache::Slots;
    use super::*;
    use crate::pool::{Encoder, HfEncoder};

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
        let v: Value = serde_json::from_str(json).unwrap();
        let fast = SpmBpe::from_json(&v).unwrap();
        let hf = HfEncoder::from_json(json, false).unwrap();
        let slots = Slots::new();
        for _round in 0..2 {
            for t in texts {
                let mut a = Vec::new();
                slots.with(|s| fast.encode_fast(t, s, &mut a)).unwrap();
                let mut b = Vec::new();
                hf.encode(t, &mut b).unwrap();
                assert_eq!(a, b, "text {t:?}");
            }
        }
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
        let v: Value = serde_json::from_str(&tiny(&[(",", "\u{2581}a")])).unwrap();
        let e = SpmBpe::from_json(&v).err().unwrap();
        assert!(e.contains("crosses"), "{e}");
        // but ending in ▁ on the left is fine
        let v: Value = serde_json::from_str(&tiny(&[("a\u{2581}", "\u{2581}")])).unwrap();
        assert!(SpmBpe::from_json(&v).is_err(), "a\u{2581} is not in the vocabulary");
    }

    #[test]
    fn two_strings_with_one_id_refuse_the_fast_path() {
        let mut v: Value = serde_json::from_str(&tiny(&[])).unwrap();
        let vocab = v["model"]["vocab"].as_object_mut().unwrap();
        let id = vocab["ab"].clone();
        vocab.insert("\u{2581}ab".into(), id);
        let e = SpmBpe::from_json(&v).err().unwrap();
        assert!(e.contains("share an id"), "{e}");
        // the crate still encodes it: `select` falls back
        let s = super::super::select(&serde_json::to_string(&v).unwrap(), false, true).unwrap();
        assert_ne!(s.kind, super::super::Kind::SpmBpe);
    }

    #[test]
    fn wordllama_matches_tokenizers_on_samples() {
        let Some(j) = super::super::tests::wordllama_json() else {
            return;
        };
        let texts = [
            "The quick brown fox, jumped over the lazy dog.",
            "  leading and trailing  ",
            "Zürich – “quoted” — naïve café 日本語のテキスト 🙂👍🏽",
            "tabs\tand\nnewlines\r\n",
            "\u{0}\u{1}\u{7f}",
            "x\u{2581}\u{2581}y \u{2581} z",
            "a\u{200d}b \u{202e}rtl\u{202c}",
        ];
        check(&j, &texts);
    }

    #[test]
    fn through_the_encoder_trait() {
        let json = tiny(&[]);
        let s = super::super::select(&json, false, true).unwrap();
        assert_eq!(s.kind, super::super::Kind::SpmBpe);
        let mut a = Vec::new();
        s.encoder.encode("ab <s> ab", &mut a).unwrap();
        let mut b = Vec::new();
        s.hf.encode("ab <s> ab", &mut b).unwrap();
        assert_eq!(a, b);
        assert!(a.contains(&1));
    }
}
