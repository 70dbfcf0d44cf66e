//! GPT-2-style byte-level BPE: fast path `"bytelevel-bpe-fast"`.
//!
//! Accepted configurations (normalizer: none):
//! - pre-tokenizer `ByteLevel(add_prefix_space=any, use_regex=true)`: the GPT-2 regex
//!   `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`;
//! - `ByteLevel(use_regex=false)` alone: the whole text is one piece;
//! - `Sequence[Split(Regex(p), "Isolated", invert=false), ByteLevel(add_prefix_space=false,
//!   use_regex=false)]` (Llama-3, Qwen style), any `p`;
//! - `Sequence[Digits(individual_digits=true), ByteLevel(add_prefix_space=false, use_regex=any)]`
//!   (SmolLM / SmolLM2 style): each `char::is_numeric` character is a piece, and the runs between
//!   them are split as `ByteLevel` alone would split them.
//!
//! Pieces: for the GPT-2 regex, a hand-written matcher that follows the regex's leftmost-first
//! alternation and backtracking. Its only inputs are the class of each character (letter `\p{L}`,
//! number `\p{N}`, space `\s`, other) plus the literal `' '` and `'`, and those classes are asked of
//! Oniguruma itself (the engine `tokenizers` runs the regex with), once per distinct character,
//! and kept in a process-wide table. Other regexes run through Oniguruma directly, with the
//! unmatched gaps kept as pieces, as `tokenizers`' `Isolated` split does.
//!
//! Each piece (raw bytes: the byte → unicode mapping is a bijection, so it is not materialized
//! unless `ignore_merges` needs the mapped string) goes through the per-thread cache, or through
//! BPE on a miss.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::split::SplitPattern;
use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior};

use super::bpe::{Bpe, Init, MergeScratch};
use super::cache::Scratch;
use super::json::TokenizerJson;
use super::{BpeJson, Fast, VocabMap};
use crate::error::Result;

/// The regex of `tokenizers`' `ByteLevel` pre-tokenizer (GPT-2's).
pub(crate) const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// GPT-2's byte → printable character map (`bytes_to_unicode`), as `tokenizers` builds it.
pub(crate) fn bytes_char() -> [char; 256] {
    let mut bs: Vec<u32> = Vec::new();
    bs.extend(b'!' as u32..=b'~' as u32);
    bs.extend(0xA1..=0xAC);
    bs.extend(0xAE..=0xFF);
    let mut out = ['\0'; 256];
    for &b in &bs {
        out[b as usize] = char::from_u32(b).unwrap_or('\0');
    }
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            // 256 + n < 512: a valid scalar value
            out[b as usize] = char::from_u32(256 + n).unwrap_or('\0');
            n += 1;
        }
    }
    out
}

// ---------------------------------------------------------------- character classes (GPT-2 regex)

const UNKNOWN: u8 = 0;
const LETTER: u8 = 1;
const NUMBER: u8 = 2;
const SPACE: u8 = 3;
const OTHER: u8 = 4;

struct Classes {
    table: Box<[AtomicU8]>,
    letter: onig::Regex,
    number: onig::Regex,
    space: onig::Regex,
    ascii: [u8; 128],
}

impl Classes {
    fn ask(&self, c: char) -> u8 {
        let mut b = [0u8; 4];
        let s = c.encode_utf8(&mut b);
        let whole = |r: &onig::Regex| r.find(s) == Some((0, s.len()));
        if whole(&self.letter) {
            LETTER
        } else if whole(&self.number) {
            NUMBER
        } else if whole(&self.space) {
            SPACE
        } else {
            OTHER
        }
    }
}

fn classes() -> std::result::Result<&'static Classes, String> {
    static CLASSES: OnceLock<std::result::Result<Classes, String>> = OnceLock::new();
    CLASSES
        .get_or_init(|| {
            let re = |p: &str| onig::Regex::new(p).map_err(|e| format!("oniguruma: {e}"));
            let mut c = Classes {
                table: (0..0x11_0000).map(|_| AtomicU8::new(UNKNOWN)).collect(),
                letter: re(r"\p{L}")?,
                number: re(r"\p{N}")?,
                space: re(r"\s")?,
                ascii: [OTHER; 128],
            };
            for b in 0..128u8 {
                c.ascii[b as usize] = c.ask(b as char);
            }
            Ok(c)
        })
        .as_ref()
        .map_err(Clone::clone)
}

impl Classes {
    /// Class and UTF-8 length of the character starting at byte `i` of `s`.
    #[inline]
    fn at(&self, s: &str, i: usize) -> (u8, usize) {
        let b = s.as_bytes()[i];
        if b < 128 {
            return (self.ascii[b as usize], 1);
        }
        let c = s[i..].chars().next().unwrap_or('\0');
        let slot = &self.table[c as usize];
        let mut k = slot.load(Ordering::Relaxed);
        if k == UNKNOWN {
            // Racing threads compute and store the same value.
            k = self.ask(c);
            slot.store(k, Ordering::Relaxed);
        }
        (k, c.len_utf8())
    }

    /// End of the run of class `k` starting at byte `j`.
    #[inline]
    fn run(&self, s: &str, mut j: usize, k: u8) -> usize {
        let b = s.as_bytes();
        while j < b.len() {
            if b[j] < 128 {
                if self.ascii[b[j] as usize] != k {
                    break;
                }
                j += 1;
            } else {
                let (c, l) = self.at(s, j);
                if c != k {
                    break;
                }
                j += l;
            }
        }
        j
    }

    /// The pieces of `s` under the GPT-2 regex, as byte ranges, in order.
    fn gpt2_pieces(&self, s: &str, mut emit: impl FnMut(usize, usize)) {
        let b = s.as_bytes();
        let n = b.len();
        let mut i = 0;
        while i < n {
            // 's|'t|'re|'ve|'m|'ll|'d (none is a prefix of another, so their order is irrelevant)
            if b[i] == b'\'' {
                let r = &b[i + 1..];
                let l = if r.starts_with(b"s") || r.starts_with(b"t") || r.starts_with(b"m") || r.starts_with(b"d") {
                    1
                } else if r.starts_with(b"re") || r.starts_with(b"ve") || r.starts_with(b"ll") {
                    2
                } else {
                    0
                };
                if l > 0 {
                    emit(i, i + 1 + l);
                    i += 1 + l;
                    continue;
                }
            }
            let (k, l) = self.at(s, i);
            // ` ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+` with the space taken
            if b[i] == b' ' && i + 1 < n {
                let (k2, l2) = self.at(s, i + 1);
                if k2 != SPACE {
                    let j = self.run(s, i + 1 + l2, k2);
                    emit(i, j);
                    i = j;
                    continue;
                }
            }
            // the same without the space
            if k != SPACE {
                let j = self.run(s, i + l, k);
                emit(i, j);
                i = j;
                continue;
            }
            // `\s+(?!\S)`: the whitespace run, minus its last character when a non-space follows
            // (needs ≥ 2 characters); else `\s+`: the whole run
            let mut j = i;
            let mut last = i;
            let mut count = 0usize;
            while j < n {
                let (k, l) = self.at(s, j);
                if k != SPACE {
                    break;
                }
                last = j;
                j += l;
                count += 1;
            }
            let end = if j == n || count == 1 { j } else { last };
            emit(i, end);
            i = end;
        }
    }
}

// ---------------------------------------------------------------- the encoder

enum Splitter {
    /// The GPT-2 regex, by hand.
    Gpt2(&'static Classes),
    /// Any other regex, by Oniguruma (`Isolated`: matches and the gaps between them are pieces).
    Regex(onig::Regex),
    /// No split: the whole text is one piece.
    Whole,
}

/// Whether the JSON is a byte-level BPE this path implements (model settings are checked later).
pub(crate) fn applies(t: &TokenizerJson<'_>) -> bool {
    parse_pre(t).is_some()
}

/// The pre-tokenizer a byte-level JSON describes.
struct Pre {
    /// The split regex (`None`: the whole text, or each segment between digits, is one piece).
    pattern: Option<String>,
    add_prefix_space: bool,
    /// `Digits(individual_digits=true)` first (SmolLM style): every `char::is_numeric` character is
    /// a piece of its own and the regex runs on each run of other characters separately.
    digits: bool,
}

fn parse_pre(t: &TokenizerJson<'_>) -> Option<Pre> {
    if t.normalizer.is_some() {
        return None;
    }
    let gpt2 = |b: &ByteLevel| b.use_regex.then(|| GPT2_PATTERN.to_string());
    match t.pre_tokenizer.as_ref()? {
        PreTokenizerWrapper::ByteLevel(b) => Some(Pre {
            pattern: gpt2(b),
            add_prefix_space: b.add_prefix_space,
            digits: false,
        }),
        PreTokenizerWrapper::Sequence(seq) => match seq.as_ref() {
            // `tokenizers`' Digits(individual_digits=true) isolates each `is_numeric` char; the
            // ByteLevel step then runs on every split on its own. A prefix space would be added
            // per split, which no fast path implements.
            [PreTokenizerWrapper::Digits(d), PreTokenizerWrapper::ByteLevel(b)]
                if d.individual_digits && !b.add_prefix_space =>
            {
                Some(Pre {
                    pattern: gpt2(b),
                    add_prefix_space: false,
                    digits: true,
                })
            }
            [PreTokenizerWrapper::Split(sp), PreTokenizerWrapper::ByteLevel(b)]
                if !b.add_prefix_space
                    && !b.use_regex
                    && sp.behavior == SplitDelimiterBehavior::Isolated
                    && !sp.invert =>
            {
                match &sp.pattern {
                    SplitPattern::Regex(p) => Some(Pre {
                        pattern: Some(p.clone()),
                        add_prefix_space: false,
                        digits: false,
                    }),
                    SplitPattern::String(_) => None,
                }
            }
            _ => None,
        },
        _ => None,
    }
}

/// The fast path for byte-level BPE.
pub(crate) struct ByteLevelBpe {
    bpe: Bpe,
    init: [Init; 256],
    chars: [char; 256],
    vocab: VocabMap,
    ignore_merges: bool,
    add_prefix_space: bool,
    digits: bool,
    splitter: Splitter,
}

impl ByteLevelBpe {
    /// Builds the fast path, or says why it does not apply.
    pub(crate) fn from_json(t: &TokenizerJson<'_>) -> std::result::Result<Self, String> {
        let Pre {
            pattern,
            add_prefix_space,
            digits,
        } = parse_pre(t).ok_or("not a byte-level configuration")?;
        let j = BpeJson::from_json(&t.model)?;
        let unk = j.unk_id()?;
        let triples = j.triples(|_, _| Ok(()))?;
        let vocab = &j.vocab;
        let chars = bytes_char();
        let mut init = [Init::Unk; 256];
        for (b, slot) in init.iter_mut().enumerate() {
            let mut buf = [0u8; 4];
            let s = chars[b].encode_utf8(&mut buf);
            *slot = if let Some(id) = vocab.get(s.as_bytes()) {
                Init::Id(id)
            } else if j.byte_fallback {
                let mut ids = [0u32; 4];
                let mut ok = true;
                for (k, byte) in s.as_bytes().iter().enumerate() {
                    match vocab.get(format!("<{byte:#04X}>").as_bytes()) {
                        Some(id) => ids[k] = id,
                        None => ok = false,
                    }
                }
                if ok {
                    Init::Bytes(ids, s.len() as u8)
                } else {
                    Init::Unk
                }
            } else {
                Init::Unk
            };
        }
        let splitter = match pattern {
            None => Splitter::Whole,
            Some(p) if p == GPT2_PATTERN => Splitter::Gpt2(classes()?),
            Some(p) => Splitter::Regex(onig::Regex::new(&p).map_err(|e| format!("split regex: {e}"))?),
        };
        Ok(ByteLevelBpe {
            bpe: Bpe::new(triples, unk, j.fuse_unk),
            init,
            chars,
            vocab: j.vocab,
            ignore_merges: j.ignore_merges,
            add_prefix_space,
            digits,
            splitter,
        })
    }

    /// The vocabulary (token → id).
    pub(crate) fn vocab(&self) -> &VocabMap {
        &self.vocab
    }

    /// BPE of one piece of raw bytes (no cache), into `ids`.
    fn piece(&self, p: &[u8], ids: &mut Vec<u32>, mapped: &mut String, s: &mut MergeScratch) {
        ids.clear();
        if self.ignore_merges {
            mapped.clear();
            mapped.extend(p.iter().map(|&b| self.chars[b as usize]));
            if let Some(id) = self.vocab.get(mapped.as_bytes()) {
                ids.push(id);
                return;
            }
        }
        let mut pending = None;
        for &b in p {
            self.bpe.push_unit(self.init[b as usize], ids, &mut pending);
        }
        self.bpe.finish_units(ids, &mut pending);
        self.bpe.merge(ids, s);
    }
}

impl Fast for ByteLevelBpe {
    fn encode_fast(&self, text: &str, s: &mut Scratch, out: &mut Vec<u32>) -> Result<()> {
        let Scratch {
            cache,
            merge,
            buf,
            buf2,
            ids,
            ..
        } = s;
        let text = if self.add_prefix_space && !text.is_empty() && !text.starts_with(' ') {
            buf.clear();
            buf.push(' ');
            buf.push_str(text);
            buf.as_str()
        } else {
            text
        };
        let bytes = text.as_bytes();
        let mut one = |a: usize, z: usize| {
            let p = &bytes[a..z];
            if p.is_empty() || cache.get(p, out) {
                return;
            }
            self.piece(p, ids, buf2, merge);
            out.extend_from_slice(ids);
            cache.insert(p, ids);
        };
        // Pieces of `seg`, which starts at byte `base` of the text.
        let mut split = |base: usize, seg: &str| match &self.splitter {
            Splitter::Gpt2(c) => c.gpt2_pieces(seg, |a, z| one(base + a, base + z)),
            Splitter::Whole => one(base, base + seg.len()),
            Splitter::Regex(re) => {
                if seg.is_empty() {
                    return;
                }
                let mut prev = 0;
                for (a, z) in re.find_iter(seg) {
                    if prev != a {
                        one(base + prev, base + a);
                    }
                    one(base + a, base + z);
                    prev = z;
                }
                if prev != seg.len() {
                    one(base + prev, base + seg.len());
                }
            }
        };
        if self.digits {
            let mut start = 0;
            for (i, c) in text.char_indices() {
                if c.is_numeric() {
                    if start < i {
                        split(start, &text[start..i]);
                    }
                    split(i, &text[i..i + c.len_utf8()]);
                    start = i + c.len_utf8();
                }
            }
            if start < text.len() {
                split(start, &text[start..]);
            }
        } else {
            split(0, text);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_matcher_follows_the_regex() {
        let c = classes().unwrap();
        let re = onig::Regex::new(GPT2_PATTERN).unwrap();
        let alphabet: Vec<char> =
            " \t\n\r\u{b}\u{c}\u{1c}\u{85}\u{a0}\u{3000}\u{2028}'aZsdtlrevmé日1٣½.,!-–🙂\u{301}\u{200d}\u{0}"
                .chars()
                .collect();
        // every string of length ≤ 3 over the alphabet, plus pseudo-random longer ones
        let mut texts: Vec<String> = Vec::new();
        for &a in &alphabet {
            for &b in &alphabet {
                texts.push([a, b].iter().collect());
                for &d in &alphabet[..12] {
                    texts.push([a, b, d].iter().collect());
                }
            }
        }
        let mut x: u64 = 42;
        for _ in 0..20_000 {
            let len = (x % 14) as usize;
            let t: String = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    alphabet[(x >> 33) as usize % alphabet.len()]
                })
                .collect();
            texts.push(t);
        }
        for t in &texts {
            let mut want = Vec::new();
            let mut prev = 0;
            for (a, z) in re.find_iter(t) {
                assert_eq!(prev, a, "gap in {t:?}");
                want.push((a, z));
                prev = z;
            }
            let mut got = Vec::new();
            c.gpt2_pieces(t, |a, z| got.push((a, z)));
            assert_eq!(got, want, "text {t:?}");
        }
    }

    #[test]
    fn byte_map_is_gpt2s() {
        let m = bytes_char();
        assert_eq!(m[b' ' as usize], 'Ġ');
        assert_eq!(m[b'\n' as usize], 'Ċ');
        assert_eq!(m[b'a' as usize], 'a');
        let mut all: Vec<char> = m.to_vec();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 256);
    }
}
