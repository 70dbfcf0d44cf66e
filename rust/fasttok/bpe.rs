//! BPE merging shared by the SentencePiece-style and the byte-level fast paths.
//!
//! This reproduces `tokenizers`' `BPE::merge_word` + `Word::merge_all` (0.23) for the settings the
//! fast paths accept (no dropout, no continuing-subword prefix, no end-of-word suffix):
//! - symbolization: each unit (a char, or a byte for byte-level) becomes its vocabulary id; failing
//!   that, with `byte_fallback`, the `<0xXX>` ids of its UTF-8 bytes (when all exist); failing that,
//!   the unknown id, fused with a pending one when `fuse_unk`. As in `tokenizers`, a pending unknown
//!   is flushed before the next in-vocabulary unit but *not* before byte-fallback ids.
//! - merging: `tokenizers` pops merges from a heap ordered by (rank, position) and skips stale
//!   entries, checking a popped entry only by the id its pair merges into now. Every adjacent pair
//!   that has a merge is in the heap with its current rank, so if no stale entry is ever accepted the
//!   result is the classic rule: repeatedly merge the adjacent pair of lowest rank, leftmost first.
//!   No stale entry is accepted when ids stand for strings, as the builders ensure (a merge's result
//!   is the id of the two strings joined, and no two vocabulary strings share an id, `check_ids`):
//!   then a symbol's id names the exact span of units it covers, a left symbol only grows by
//!   swallowing its whole right neighbour, so the pair at a position merges into the id of the same
//!   span only while it is the same two symbols. (Two merges may give one result, "ab"+"c" and
//!   "a"+"bc"; that is fine.) `merge` applies the classic rule by a linear scan for short words (the
//!   common case: a word of <= 64 symbols) and with a heap, a copy of `tokenizers`' loop, for longer
//!   ones. The tests check both against each other, a written-out reference and `tokenizers` itself.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use hashbrown::HashTable;

/// What one unit (char or byte) turns into before merging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Init {
    /// The unit is in the vocabulary.
    Id(u32),
    /// Byte fallback: the ids of the unit's UTF-8 bytes (`n` of them, 1..=4).
    Bytes([u32; 4], u8),
    /// Neither: the unknown token (or nothing, without an unknown token).
    Unk,
}

/// Above this many symbols, merging uses the heap (O(n log n)) rather than the scan (O(n²)).
const SCAN_MAX: usize = 64;

#[derive(Clone, Copy)]
struct MergeEntry {
    pair: u64,
    rank: u32,
    new_id: u32,
}

/// A merge table plus the unknown-token settings.
pub(crate) struct Bpe {
    merges: HashTable<MergeEntry>,
    /// The unknown token's id, when the model has one.
    pub unk: Option<u32>,
    /// Consecutive unknown units become one unknown token.
    pub fuse_unk: bool,
}

#[inline]
fn pair_key(a: u32, b: u32) -> u64 {
    ((a as u64) << 32) | b as u64
}

#[inline]
fn pair_hash(k: u64) -> u64 {
    // Multiply-xorshift: the ids are small integers, so a single multiply spreads them well.
    let h = k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^ (h >> 29)
}

/// Scratch buffers for [`Bpe::merge`], kept per thread.
#[derive(Default)]
pub(crate) struct MergeScratch {
    ranks: Vec<(u32, u32)>,
    syms: Vec<Sym>,
    heap: BinaryHeap<Reverse<(u32, u32, u32)>>,
}

#[derive(Clone, Copy)]
pub(crate) struct Sym {
    id: u32,
    prev: u32,
    next: u32,
    alive: bool,
}

const NONE: u32 = u32::MAX;

impl Bpe {
    /// Builds the table from `(left id, right id, new id)` in rank order. As in `tokenizers`, a pair
    /// listed twice keeps its last rank and new id.
    pub(crate) fn new(merges: impl IntoIterator<Item = (u32, u32, u32)>, unk: Option<u32>, fuse_unk: bool) -> Self {
        let mut table: HashTable<MergeEntry> = HashTable::new();
        for (rank, (a, b, new_id)) in merges.into_iter().enumerate() {
            let pair = pair_key(a, b);
            let h = pair_hash(pair);
            let e = MergeEntry {
                pair,
                rank: rank as u32,
                new_id,
            };
            match table.find_mut(h, |m| m.pair == pair) {
                Some(m) => *m = e,
                None => {
                    table.insert_unique(h, e, |m| pair_hash(m.pair));
                }
            }
        }
        Bpe {
            merges: table,
            unk,
            fuse_unk,
        }
    }

    /// `(rank, new id)` of the merge of `a` then `b`, if any.
    #[inline]
    pub(crate) fn get(&self, a: u32, b: u32) -> Option<(u32, u32)> {
        let pair = pair_key(a, b);
        self.merges
            .find(pair_hash(pair), |m| m.pair == pair)
            .map(|m| (m.rank, m.new_id))
    }

    /// Appends the symbols of one unit to `syms`, following `tokenizers`' unknown-token rules.
    /// `pending` is the unknown token waiting to be flushed; call [`Bpe::finish_units`] at the end.
    #[inline]
    pub(crate) fn push_unit(&self, init: Init, syms: &mut Vec<u32>, pending: &mut Option<u32>) {
        match init {
            Init::Id(id) => {
                if let Some(u) = pending.take() {
                    syms.push(u);
                }
                syms.push(id);
            }
            // `tokenizers` pushes the byte ids and continues without flushing a pending unknown.
            Init::Bytes(ids, n) => syms.extend_from_slice(&ids[..n as usize]),
            Init::Unk => {
                if let Some(unk) = self.unk {
                    match (*pending, self.fuse_unk) {
                        (Some(_), true) => {}
                        (Some(u), false) => {
                            syms.push(u);
                            *pending = Some(unk);
                        }
                        (None, _) => *pending = Some(unk),
                    }
                }
            }
        }
    }

    /// Flushes a pending unknown token.
    #[inline]
    pub(crate) fn finish_units(&self, syms: &mut Vec<u32>, pending: &mut Option<u32>) {
        if let Some(u) = pending.take() {
            syms.push(u);
        }
    }

    /// Merges `ids` in place (lowest rank first, leftmost among equals) until no pair merges.
    pub(crate) fn merge(&self, ids: &mut Vec<u32>, s: &mut MergeScratch) {
        if ids.len() < 2 {
            return;
        }
        if ids.len() <= SCAN_MAX {
            self.merge_scan(ids, &mut s.ranks);
        } else {
            self.merge_heap(ids, &mut s.syms, &mut s.heap);
        }
    }

    /// The O(n²) scan: fastest for the short words that make up nearly all cache misses.
    pub(crate) fn merge_scan(&self, ids: &mut Vec<u32>, ranks: &mut Vec<(u32, u32)>) {
        ranks.clear();
        ranks.extend(ids.windows(2).map(|w| self.get(w[0], w[1]).unwrap_or((u32::MAX, 0))));
        loop {
            let mut best = u32::MAX;
            let mut at = 0;
            for (i, r) in ranks.iter().enumerate() {
                if r.0 < best {
                    best = r.0;
                    at = i;
                }
            }
            if best == u32::MAX {
                return;
            }
            ids[at] = ranks[at].1;
            ids.remove(at + 1);
            ranks.remove(at);
            if at > 0 {
                ranks[at - 1] = self.get(ids[at - 1], ids[at]).unwrap_or((u32::MAX, 0));
            }
            if at + 1 < ids.len() {
                ranks[at] = self.get(ids[at], ids[at + 1]).unwrap_or((u32::MAX, 0));
            }
        }
    }

    /// The heap version of `tokenizers`' `Word::merge_all` (min-heap on (rank, position)), for long
    /// words. A popped entry is applied only if its left symbol is alive, has a right neighbour and
    /// that pair still merges into the same id, as in `tokenizers`.
    pub(crate) fn merge_heap(
        &self,
        ids: &mut Vec<u32>,
        syms: &mut Vec<Sym>,
        heap: &mut BinaryHeap<Reverse<(u32, u32, u32)>>,
    ) {
        let n = ids.len();
        if n < 2 {
            return;
        }
        syms.clear();
        syms.extend(ids.iter().enumerate().map(|(i, &id)| Sym {
            id,
            prev: if i == 0 { NONE } else { i as u32 - 1 },
            next: if i + 1 == n { NONE } else { i as u32 + 1 },
            alive: true,
        }));
        heap.clear();
        for i in 0..n - 1 {
            if let Some((rank, new_id)) = self.get(ids[i], ids[i + 1]) {
                heap.push(Reverse((rank, i as u32, new_id)));
            }
        }
        while let Some(Reverse((_, pos, new_id))) = heap.pop() {
            let p = pos as usize;
            let cur = syms[p];
            if !cur.alive || cur.next == NONE {
                continue;
            }
            let q = cur.next as usize;
            let right = syms[q];
            match self.get(cur.id, right.id) {
                Some((_, id)) if id == new_id => {}
                _ => continue,
            }
            syms[p].id = new_id;
            syms[p].next = right.next;
            syms[q].alive = false;
            if right.next != NONE {
                syms[right.next as usize].prev = pos;
            }
            let cur = syms[p];
            if cur.prev != NONE {
                if let Some((rank, nid)) = self.get(syms[cur.prev as usize].id, cur.id) {
                    heap.push(Reverse((rank, cur.prev, nid)));
                }
            }
            if cur.next != NONE {
                if let Some((rank, nid)) = self.get(cur.id, syms[cur.next as usize].id) {
                    heap.push(Reverse((rank, pos, nid)));
                }
            }
        }
        ids.clear();
        ids.extend(syms.iter().filter(|s| s.alive).map(|s| s.id));
    }
}

/// A merge whose result has the id of one of its parts: impossible in a well-formed vocabulary (the merged
/// string is longer than either part, so it is another entry), and the merge loops tell a merged symbol from the
/// one it replaced by its id. Such a tokenizer gets the `tokenizers` crate instead of the fast path.
pub fn check_merge(a: u32, b: u32, merged: u32) -> Result<(), &'static str> {
    if merged == a || merged == b {
        return Err("a merge result has the id of one of its parts");
    }
    Ok(())
}

/// Two vocabulary strings with one id: the fast paths' merging is exact only when an id names one string
/// (module docs; `tokenizers`' heap can then accept a stale entry where the classic rule would not). Such a
/// tokenizer gets the `tokenizers` crate instead of the fast path.
pub fn check_ids(ids: impl IntoIterator<Item = u32>) -> Result<(), &'static str> {
    let mut ids: Vec<u32> = ids.into_iter().collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return Err("two vocabulary entries share an id");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A random merge table made the way a tokenizer JSON makes one: the units are the strings "a".."e" (ids
    /// 0..5), each merge joins two strings already in the vocabulary (picked by index), and its result is the id
    /// of the joined string, a new one the first time. So merges chain, a pair can be listed twice (the last rank
    /// counts) and different merges can give one result ("ab"+"c" and "a"+"bc"). Returns the table, the
    /// vocabulary (id -> string) and the merges as strings.
    fn string_table(picks: &[(usize, usize)]) -> (Bpe, Vec<String>, Vec<(String, String)>) {
        let mut vocab: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let mut id: std::collections::HashMap<String, u32> =
            vocab.iter().enumerate().map(|(i, s)| (s.clone(), i as u32)).collect();
        let mut merges = Vec::new();
        for &(i, j) in picks {
            let (a, b) = (vocab[i % vocab.len()].clone(), vocab[j % vocab.len()].clone());
            let ab = format!("{a}{b}");
            if ab.len() > 8 {
                continue;
            }
            if !id.contains_key(&ab) {
                id.insert(ab.clone(), vocab.len() as u32);
                vocab.push(ab);
            }
            merges.push((a, b));
        }
        let triples: Vec<(u32, u32, u32)> = merges
            .iter()
            .map(|(a, b)| (id[a], id[b], id[&format!("{a}{b}")]))
            .collect();
        check_ids(id.values().copied()).unwrap();
        assert!(triples.iter().all(|&(a, b, n)| check_merge(a, b, n).is_ok()));
        (Bpe::new(triples, None, false), vocab, merges)
    }

    /// `tokenizers`' own BPE on the same vocabulary and merges, one word.
    fn hf_ids(vocab: &[String], merges: &[(String, String)], word: &str) -> Vec<u32> {
        use tokenizers::models::bpe::BPE;
        use tokenizers::Model;
        let v: serde_json::Map<String, serde_json::Value> =
            vocab.iter().enumerate().map(|(i, s)| (s.clone(), i.into())).collect();
        let m: Vec<[&str; 2]> = merges.iter().map(|(a, b)| [a.as_str(), b.as_str()]).collect();
        let json = serde_json::json!({"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false, "vocab": v, "merges": m});
        let bpe: BPE = serde_json::from_str(&json.to_string()).unwrap();
        bpe.tokenize(word).unwrap().iter().map(|t| t.id).collect()
    }

    #[test]
    fn the_case_that_needs_check_merge() {
        // (0,8) -> 8 makes a merged symbol indistinguishable from the one it replaced; found by a proptest before
        // `check_merge` existed. The builders refuse such tables.
        assert!(check_merge(0, 8, 8).is_err() && check_merge(8, 0, 8).is_err() && check_merge(0, 1, 9).is_ok());
    }

    #[test]
    fn the_case_that_needs_check_ids() {
        // Ids that do not stand for strings: 10 is both "01" (0+1) and "012" (0 + "12"). On [0,1,2,3] the heap
        // merges 1+2 (rank 0), then pops the stale (0,1) entry at rank 2, whose position now holds (0, 11), which
        // also merges into 10, and applies it, as `tokenizers` does: [10, 3]. The classic rule merges (11, 3) at
        // rank 3 first: [0, 12]. A vocabulary where two strings share an id is therefore refused by the builders.
        let bpe = Bpe::new(
            [(1, 2, 11), (9, 9, 99), (0, 1, 10), (11, 3, 12), (9, 8, 98), (0, 11, 10)],
            None,
            false,
        );
        let mut heap = vec![0, 1, 2, 3];
        bpe.merge_heap(&mut heap, &mut Vec::new(), &mut BinaryHeap::new());
        let mut scan = vec![0, 1, 2, 3];
        bpe.merge_scan(&mut scan, &mut Vec::new());
        assert_eq!((heap, scan), (vec![10, 3], vec![0, 12]));
        assert!(check_ids([0, 1, 10, 11, 12, 10]).is_err());
        assert!(check_ids([0, 1, 10, 11, 12]).is_ok());
        assert!(check_ids([]).is_ok());
    }

    #[test]
    fn shared_results_agree_with_tokenizers() {
        // "ab"+"c" and "a"+"bc" both give "abc": the case the stale-entry check is about, on a string table
        let picks = [(0, 1), (1, 2), (5, 2), (0, 6), (7, 3), (3, 4)];
        let (bpe, vocab, merges) = string_table(&picks);
        assert_eq!(
            bpe.get(5, 2).map(|r| r.1),
            bpe.get(0, 6).map(|r| r.1),
            "two merges, one result"
        );
        for word in ["abc", "abcd", "aabcbc", "bcabcde", "cbabcab"] {
            let ids: Vec<u32> = word.bytes().map(|b| (b - b'a') as u32).collect();
            let mut a = ids.clone();
            bpe.merge_scan(&mut a, &mut Vec::new());
            let mut b = ids.clone();
            bpe.merge_heap(&mut b, &mut Vec::new(), &mut BinaryHeap::new());
            let hf = hf_ids(&vocab, &merges, word);
            assert_eq!((&a, &b), (&hf, &hf), "{word}");
        }
    }

    /// The textbook rule, written independently: find the lowest-rank pair, leftmost, merge, repeat.
    fn reference(bpe: &Bpe, ids: &[u32]) -> Vec<u32> {
        let mut v = ids.to_vec();
        loop {
            let best = (0..v.len().saturating_sub(1))
                .filter_map(|i| bpe.get(v[i], v[i + 1]).map(|(r, n)| (r, i, n)))
                .min();
            match best {
                None => return v,
                Some((_, i, n)) => {
                    v[i] = n;
                    v.remove(i + 1);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn scan_heap_reference_and_tokenizers_agree(
            picks in prop::collection::vec((0usize..40, 0usize..40), 0..80),
            word in prop::collection::vec(0u8..5, 0..150),
        ) {
            let (bpe, vocab, merges) = string_table(&picks);
            let ids: Vec<u32> = word.iter().map(|&b| b as u32).collect();
            let want = reference(&bpe, &ids);
            let mut a = ids.clone();
            bpe.merge_scan(&mut a, &mut Vec::new());
            let mut b = ids.clone();
            bpe.merge_heap(&mut b, &mut Vec::new(), &mut BinaryHeap::new());
            prop_assert_eq!(&a, &want);
            prop_assert_eq!(&b, &want);
            if !word.is_empty() {
                let text: String = word.iter().map(|&b| (b'a' + b) as char).collect();
                prop_assert_eq!(&hf_ids(&vocab, &merges, &text), &want);
            }
        }
    }

    #[test]
    fn duplicate_pairs_keep_the_last_rank() {
        // (1,2) listed at ranks 0 and 2: its rank is 2, so (2,3) at rank 1 wins on [1,2,3].
        let bpe = Bpe::new([(1, 2, 10), (2, 3, 11), (1, 2, 12)], None, false);
        assert_eq!(bpe.get(1, 2), Some((2, 12)));
        let mut ids = vec![1, 2, 3];
        bpe.merge(&mut ids, &mut MergeScratch::default());
        assert_eq!(ids, vec![1, 11]);
    }

    #[test]
    fn unknown_units_follow_tokenizers() {
        let fused = Bpe::new([], Some(0), true);
        let unfused = Bpe::new([], Some(0), false);
        let units = [
            Init::Unk,
            Init::Unk,
            Init::Bytes([7, 8, 0, 0], 2),
            Init::Unk,
            Init::Id(5),
            Init::Unk,
        ];
        let run = |b: &Bpe| {
            let (mut syms, mut pending) = (Vec::new(), None);
            for u in units {
                b.push_unit(u, &mut syms, &mut pending);
            }
            b.finish_units(&mut syms, &mut pending);
            syms
        };
        // the byte ids overtake the pending unknown, as in `tokenizers`
        assert_eq!(run(&fused), vec![7, 8, 0, 5, 0]);
        assert_eq!(run(&unfused), vec![0, 7, 8, 0, 0, 5, 0]);
        let none = Bpe::new([], None, true);
        assert_eq!(run(&none), vec![7, 8, 5]);
    }
}
