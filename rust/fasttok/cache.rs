//! The word → ids cache and the per-thread scratch that holds it.
//!
//! Performance notes:
//! - Each rayon worker gets its own slot (indexed by `rayon::current_thread_index`), so the lock
//!   taken once per text is never contended in the embedding pass and no cache line bounces
//!   between cores. Threads outside a rayon pool hash their thread id onto the slots; when a slot is
//!   busy, the text is encoded without the cache (same ids, just slower): nothing ever waits.
//! - Keys and values live in two arenas; the table stores offsets, so an insert allocates nothing
//!   once the arenas have grown, and clearing is O(1) in allocations.
//! - The cache is bounded: when an arena or the table is full, it is cleared (the common words come
//!   back within a few hundred texts). Keys longer than `MAX_KEY` bytes are not cached.
//! - A cached value depends only on its key (the pre-tokenized piece), so the cache never changes
//!   an id; it only skips recomputing them.

use std::hash::BuildHasher;
use std::sync::{Mutex, TryLockError};

use hashbrown::HashTable;

use super::bpe::MergeScratch;

/// Pieces longer than this (in bytes) are not cached.
pub(crate) const MAX_KEY: usize = 128;
const MAX_ENTRIES: usize = 1 << 16;
const MAX_KEY_BYTES: usize = 4 << 20;
const MAX_IDS: usize = 1 << 20;
const SLOTS: usize = 64;

#[derive(Clone, Copy)]
struct Entry {
    hash: u64,
    key: u32,
    key_len: u32,
    val: u32,
    val_len: u32,
}

/// A bounded map from a piece's bytes to its ids.
pub(crate) struct WordCache {
    table: HashTable<Entry>,
    keys: Vec<u8>,
    ids: Vec<u32>,
    hasher: foldhash::fast::FixedState,
    enabled: bool,
}

impl WordCache {
    fn new(enabled: bool) -> Self {
        WordCache {
            table: HashTable::new(),
            keys: Vec::new(),
            ids: Vec::new(),
            hasher: foldhash::fast::FixedState::with_seed(0x746f_6b76_6563),
            enabled,
        }
    }

    #[inline]
    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Appends the cached ids of `key` to `out`; false on a miss.
    #[inline]
    pub(crate) fn get(&self, key: &[u8], out: &mut Vec<u32>) -> bool {
        if !self.enabled || key.len() > MAX_KEY {
            return false;
        }
        let h = self.hash(key);
        let keys = &self.keys;
        match self.table.find(h, |e| {
            e.hash == h && &keys[e.key as usize..(e.key + e.key_len) as usize] == key
        }) {
            Some(e) => {
                out.extend_from_slice(&self.ids[e.val as usize..(e.val + e.val_len) as usize]);
                true
            }
            None => false,
        }
    }

    /// Stores the ids of `key` (after a miss).
    pub(crate) fn insert(&mut self, key: &[u8], ids: &[u32]) {
        if !self.enabled || key.len() > MAX_KEY || ids.len() > MAX_KEY * 4 {
            return;
        }
        if self.table.len() >= MAX_ENTRIES
            || self.keys.len() + key.len() > MAX_KEY_BYTES
            || self.ids.len() + ids.len() > MAX_IDS
        {
            self.clear();
        }
        let h = self.hash(key);
        let e = Entry {
            hash: h,
            key: self.keys.len() as u32,
            key_len: key.len() as u32,
            val: self.ids.len() as u32,
            val_len: ids.len() as u32,
        };
        self.keys.extend_from_slice(key);
        self.ids.extend_from_slice(ids);
        self.table.insert_unique(h, e, |e| e.hash);
    }

    fn clear(&mut self) {
        self.table.clear();
        self.keys.clear();
        self.ids.clear();
    }

    /// Number of cached pieces.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }
}

/// Everything an encoder needs per thread: the cache and reusable buffers.
pub(crate) struct Scratch {
    pub cache: WordCache,
    pub merge: MergeScratch,
    /// Normalized text / piece buffer.
    pub buf: String,
    /// A second string buffer.
    pub buf2: String,
    /// Piece boundaries or a second byte buffer.
    pub starts: Vec<usize>,
    /// Ids of the piece being computed.
    pub ids: Vec<u32>,
}

impl Scratch {
    fn new(cache: bool) -> Self {
        Scratch {
            cache: WordCache::new(cache),
            merge: MergeScratch::default(),
            buf: String::new(),
            buf2: String::new(),
            starts: Vec::new(),
            ids: Vec::new(),
        }
    }
}

#[repr(align(128))]
struct Slot(Mutex<Option<Box<Scratch>>>);

/// Per-thread scratch slots of one encoder.
pub(crate) struct Slots {
    slots: Box<[Slot]>,
}

impl Slots {
    pub(crate) fn new() -> Self {
        Slots {
            slots: (0..SLOTS).map(|_| Slot(Mutex::new(None))).collect(),
        }
    }

    /// Runs `f` with this thread's scratch (or a fresh uncached one when the slot is busy).
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Scratch) -> R) -> R {
        let idx = match rayon::current_thread_index() {
            Some(i) => i % SLOTS,
            None => {
                let id = std::thread::current().id();
                (foldhash::fast::FixedState::with_seed(1).hash_one(id) as usize) % SLOTS
            }
        };
        let slot = &self.slots[idx].0;
        let mut guard = match slot.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => {
                // A panic inside `f` may have left the cache half-written: start it afresh.
                let mut g = p.into_inner();
                *g = None;
                slot.clear_poison();
                g
            }
            Err(TryLockError::WouldBlock) => return f(&mut Scratch::new(false)),
        };
        f(guard.get_or_insert_with(|| Box::new(Scratch::new(true))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_round_trip_and_bounds() {
        let mut c = WordCache::new(true);
        let mut out = Vec::new();
        assert!(!c.get(b"hello", &mut out));
        c.insert(b"hello", &[1, 2]);
        c.insert(b"", &[]);
        assert!(c.get(b"hello", &mut out));
        assert!(c.get(b"", &mut out));
        assert_eq!(out, vec![1, 2]);
        assert!(!c.get(b"hell", &mut out));
        let long = vec![b'a'; MAX_KEY + 1];
        c.insert(&long, &[3]);
        assert!(!c.get(&long, &mut out));
        for i in 0..MAX_ENTRIES + 10 {
            c.insert(format!("w{i}").as_bytes(), &[i as u32]);
        }
        assert!(c.len() <= MAX_ENTRIES);
        out.clear();
        let last = format!("w{}", MAX_ENTRIES + 9);
        assert!(c.get(last.as_bytes(), &mut out));
        assert_eq!(out, vec![(MAX_ENTRIES + 9) as u32]);
    }

    #[test]
    fn disabled_cache_never_hits() {
        let mut c = WordCache::new(false);
        c.insert(b"x", &[1]);
        assert!(!c.get(b"x", &mut Vec::new()));
    }
}
