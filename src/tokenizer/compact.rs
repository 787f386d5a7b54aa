//! A compact BPE encoder for Gemma's tokenizer, with the exact behaviour of the `tokenizers`
//! pipeline that [`super::Tokenizer`] used to build (and still builds, lazily, for
//! [`super::Tokenizer::hf`]): the same ids for every input, in a fraction of the memory.
//!
//! `tokenizers` keeps the 262,144 pieces twice (a `HashMap<String, u32>` and its reverse) and
//! the 514,906 merges in a hash map of 16-byte entries: about 60 MB resident in a browser tab,
//! more while building. Here:
//!
//! * [`Vocab`]: every piece in one byte arena, an end offset per id, and an open-addressing
//!   table of ids (2 × the vocabulary, rounded up to a power of two) hashed on the bytes;
//! * [`Merges`]: the merges as a CSR table keyed by the left id: for each left id, its
//!   (right id, rank, merged id) triples sorted by right id (binary search);
//! * added tokens (control, user-defined, unknown pieces) matched leftmost-longest on the raw
//!   text by the same automaton `tokenizers` uses (`daachorse`).
//!
//! The algorithms are ports of `tokenizers` 0.23.2: `AddedVocabulary::find_matches`, the
//! `Replace(" ", "▁")` normalizer, the optional `\n+` isolating split, `BPE::merge_word` with
//! byte fallback and `Word::merge_all` (lowest rank first, then leftmost; a queued merge is
//! stale when the pair at its position no longer makes the same id). `tests/tokenizer.rs`
//! compares both encoders on the whole corpus.

use std::collections::BinaryHeap;

use daachorse::{DoubleArrayAhoCorasick, DoubleArrayAhoCorasickBuilder, MatchKind};

use crate::{Error, Result};

const EMPTY: u32 = u32::MAX;

fn hash(s: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = (s.len() as u64).wrapping_mul(K);
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
        h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    }
    let r = chunks.remainder();
    if !r.is_empty() {
        let mut b = [0u8; 8];
        b[..r.len()].copy_from_slice(r);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(b)).wrapping_mul(K);
    }
    h
}

/// Pieces by id in one arena, with a hash index from piece to (first) id.
pub(crate) struct Vocab {
    bytes: Vec<u8>,
    /// `ends[i]` is where piece `i` ends; it starts at `ends[i - 1]` (0 for the first).
    ends: Vec<u32>,
    table: Vec<u32>,
    shift: u32,
    /// `(id, first id)` of pieces that repeat an earlier piece (the first id wins lookups).
    dups: Vec<(u32, u32)>,
}

impl std::fmt::Debug for Vocab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Vocab({} pieces, {} bytes)",
            self.len(),
            self.bytes.len()
        )
    }
}

impl Vocab {
    /// Consumes the pieces one by one (each `String` is freed as soon as it is copied).
    pub(crate) fn from_pieces<I, S>(pieces: I, n: usize, total_bytes: usize) -> Result<Vocab>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut bytes = Vec::with_capacity(total_bytes);
        let mut ends = Vec::with_capacity(n);
        for p in pieces {
            bytes.extend_from_slice(p.as_ref().as_bytes());
            let end = u32::try_from(bytes.len())
                .map_err(|_| Error::Tokenizer("vocabulary larger than 4 GiB".into()))?;
            ends.push(end);
        }
        bytes.shrink_to_fit();
        ends.shrink_to_fit();
        let cap = (ends.len() * 2).next_power_of_two().max(2);
        let mut v = Vocab {
            bytes,
            ends,
            table: vec![EMPTY; cap],
            shift: 64 - cap.trailing_zeros(),
            dups: Vec::new(),
        };
        for id in 0..v.ends.len() as u32 {
            let mut slot = v.slot_of(v.get(id).as_bytes());
            loop {
                let t = v.table[slot];
                if t == EMPTY {
                    v.table[slot] = id;
                    break;
                }
                if v.get(t).as_bytes() == v.get(id).as_bytes() {
                    v.dups.push((id, t));
                    break;
                }
                slot = (slot + 1) & (cap - 1);
            }
        }
        Ok(v)
    }

    pub(crate) fn from_strings(tokens: Vec<String>) -> Result<Vocab> {
        let n = tokens.len();
        let total = tokens.iter().map(|t| t.len()).sum();
        Self::from_pieces(tokens, n, total)
    }

    fn slot_of(&self, s: &[u8]) -> usize {
        (hash(s) >> self.shift) as usize
    }

    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The piece of `id` (which must be < `len()`).
    pub(crate) fn get(&self, id: u32) -> &str {
        let i = id as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        // The arena holds whole `str`s back to back, so every piece is valid UTF-8.
        std::str::from_utf8(&self.bytes[start..self.ends[i] as usize]).unwrap_or("")
    }

    pub(crate) fn try_get(&self, id: u32) -> Option<&str> {
        ((id as usize) < self.len()).then(|| self.get(id))
    }

    /// The first id of `s`.
    pub(crate) fn id(&self, s: &str) -> Option<u32> {
        let s = s.as_bytes();
        let mask = self.table.len() - 1;
        let mut slot = self.slot_of(s);
        loop {
            let t = self.table[slot];
            if t == EMPTY {
                return None;
            }
            if self.get(t).as_bytes() == s {
                return Some(t);
            }
            slot = (slot + 1) & mask;
        }
    }

    /// Ids that repeat an earlier piece, with that piece's first id.
    pub(crate) fn duplicates(&self) -> &[(u32, u32)] {
        &self.dups
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.bytes.capacity() + 4 * (self.ends.capacity() + self.table.capacity())
    }
}

/// BPE merges: `(left, right) → (rank, merged id)`, as a CSR table on the left id.
pub(crate) struct Merges {
    starts: Vec<u32>,
    /// `[right, rank, merged]`, sorted by `right` within each left id's range.
    entries: Vec<[u32; 3]>,
}

impl Merges {
    /// `pairs` are the merges best first (rank = index). Like `tokenizers`, a pair listed twice
    /// keeps its last rank; every pair must join into a vocabulary piece.
    pub(crate) fn build(vocab: &Vocab, pairs: Vec<(u32, u32)>) -> Result<Merges> {
        let n = vocab.len();
        let mut starts = vec![0u32; n + 1];
        for &(l, _) in &pairs {
            starts[l as usize + 1] += 1;
        }
        for i in 0..n {
            starts[i + 1] += starts[i];
        }
        let mut entries = vec![[0u32; 3]; pairs.len()];
        let mut fill = starts.clone();
        let mut joined = String::new();
        for (rank, &(l, r)) in pairs.iter().enumerate() {
            joined.clear();
            joined.push_str(vocab.get(l));
            joined.push_str(vocab.get(r));
            let new = vocab.id(&joined).ok_or_else(|| Error::Metadata {
                key: "tokenizer.ggml.merges".into(),
                problem: format!(
                    "entry {rank} ({:?} + {:?}) does not make a vocabulary piece",
                    vocab.get(l),
                    vocab.get(r)
                ),
            })?;
            let at = &mut fill[l as usize];
            entries[*at as usize] = [r, rank as u32, new];
            *at += 1;
        }
        drop(fill);
        drop(pairs);
        // Sort each range by (right, rank); keep the last of equal rights.
        let mut out = 0usize;
        let mut begin = 0usize;
        for l in 0..n {
            let end = starts[l + 1] as usize;
            entries[begin..end].sort_unstable_by_key(|e| (e[0], e[1]));
            starts[l] = out as u32;
            for i in begin..end {
                if i + 1 < end && entries[i + 1][0] == entries[i][0] {
                    continue;
                }
                entries[out] = entries[i];
                out += 1;
            }
            begin = end;
        }
        starts[n] = out as u32;
        entries.truncate(out);
        entries.shrink_to_fit();
        Ok(Merges { starts, entries })
    }

    /// `(rank, merged id)` of the pair.
    #[inline]
    pub(crate) fn get(&self, l: u32, r: u32) -> Option<(u32, u32)> {
        let l = l as usize;
        let range = &self.entries[self.starts[l] as usize..self.starts[l + 1] as usize];
        range
            .binary_search_by_key(&r, |e| e[0])
            .ok()
            .map(|i| (range[i][1], range[i][2]))
    }

    /// `(rank, left, right)` of every merge, in rank order.
    pub(crate) fn ranked(&self) -> Vec<(u32, u32, u32)> {
        let mut v = Vec::with_capacity(self.entries.len());
        for l in 0..self.starts.len() - 1 {
            for e in &self.entries[self.starts[l] as usize..self.starts[l + 1] as usize] {
                v.push((e[1], l as u32, e[0]));
            }
        }
        v.sort_unstable();
        v
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        4 * self.starts.capacity() + 12 * self.entries.capacity()
    }
}

/// The whole encoder: added-token split, normalizer, pre-split, BPE with byte fallback.
pub(crate) struct Bpe {
    pub(crate) merges: Merges,
    byte_ids: [u32; 256],
    added: Option<DoubleArrayAhoCorasick<u32>>,
    split_newlines: bool,
}

impl std::fmt::Debug for Bpe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Bpe({} merges, split_newlines {})",
            self.merges.entries.len(),
            self.split_newlines
        )
    }
}

#[derive(Clone, Copy)]
struct Symbol {
    c: u32,
    prev: isize,
    next: isize,
    len: usize,
}

#[derive(PartialEq, Eq)]
struct Merge {
    pos: usize,
    rank: u32,
    new_id: u32,
}

impl PartialOrd for Merge {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Merge {
    // A max-heap pops the lowest rank, then the leftmost position (as in `tokenizers`).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other
            .rank
            .cmp(&self.rank)
            .then_with(|| other.pos.cmp(&self.pos))
    }
}

impl Bpe {
    /// `added`: the first ids of the pieces matched atomically on raw text.
    pub(crate) fn new(
        vocab: &Vocab,
        merges: Merges,
        added: &[u32],
        split_newlines: bool,
    ) -> Result<Bpe> {
        let mut byte_ids = [0u32; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            let name = format!("<0x{b:02X}>");
            *slot = vocab.id(&name).ok_or_else(|| {
                Error::Tokenizer(format!(
                    "vocabulary has no byte-fallback token {name}; not a Gemma vocabulary"
                ))
            })?;
        }
        let added = if added.is_empty() {
            None
        } else {
            Some(
                DoubleArrayAhoCorasickBuilder::new()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build_with_values(added.iter().map(|&id| (vocab.get(id), id)))
                    .map_err(|e| Error::Tokenizer(format!("added tokens: {e}")))?,
            )
        };
        Ok(Bpe {
            merges,
            byte_ids,
            added,
            split_newlines,
        })
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.merges.memory_bytes() + self.added.as_ref().map_or(0, |a| a.heap_bytes())
    }

    pub(crate) fn encode(&self, vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
        let mut norm = String::new();
        let mut symbols = Vec::new();
        let mut segment = |s: &str, out: &mut Vec<u32>| {
            if s.is_empty() {
                return;
            }
            norm.clear();
            for (i, part) in s.split(' ').enumerate() {
                if i > 0 {
                    norm.push('\u{2581}');
                }
                norm.push_str(part);
            }
            if self.split_newlines {
                let b = norm.as_bytes();
                let mut start = 0;
                while start < b.len() {
                    let nl = b[start] == b'\n';
                    let mut end = start + 1;
                    while end < b.len() && (b[end] == b'\n') == nl {
                        end += 1;
                    }
                    self.word(vocab, &norm[start..end], &mut symbols, out);
                    start = end;
                }
            } else {
                self.word(vocab, &norm, &mut symbols, out);
            }
        };
        match &self.added {
            None => segment(text, out),
            Some(trie) => {
                let mut at = 0;
                for m in trie.leftmost_find_iter(text) {
                    segment(&text[at..m.start()], out);
                    out.push(m.value());
                    at = m.end();
                }
                segment(&text[at..], out);
            }
        }
    }

    /// `BPE::merge_word` + `Word::merge_all` of `tokenizers`, without dropout.
    fn word(&self, vocab: &Vocab, w: &str, symbols: &mut Vec<Symbol>, out: &mut Vec<u32>) {
        symbols.clear();
        let add = |symbols: &mut Vec<Symbol>, c: u32, len: usize| {
            let n = symbols.len() as isize;
            let prev = match symbols.last_mut() {
                Some(last) => {
                    last.next = n;
                    n - 1
                }
                None => -1,
            };
            symbols.push(Symbol {
                c,
                prev,
                next: -1,
                len,
            });
        };
        for (i, ch) in w.char_indices() {
            let s = &w[i..i + ch.len_utf8()];
            match vocab.id(s) {
                Some(id) => add(symbols, id, s.len()),
                None => {
                    for b in s.bytes() {
                        add(symbols, self.byte_ids[b as usize], 1);
                    }
                }
            }
        }
        let merges = &self.merges;
        let mut queue: BinaryHeap<Merge> = symbols
            .windows(2)
            .enumerate()
            .filter_map(|(pos, w)| {
                merges
                    .get(w[0].c, w[1].c)
                    .map(|(rank, new_id)| Merge { pos, rank, new_id })
            })
            .collect();
        while let Some(top) = queue.pop() {
            if symbols[top.pos].len == 0 || symbols[top.pos].next == -1 {
                continue;
            }
            let next_pos = symbols[top.pos].next as usize;
            let right = symbols[next_pos];
            if merges
                .get(symbols[top.pos].c, right.c)
                .is_none_or(|(_, new_id)| new_id != top.new_id)
            {
                continue;
            }
            let cur = &mut symbols[top.pos];
            cur.c = top.new_id;
            cur.len += right.len;
            cur.next = right.next;
            symbols[next_pos].len = 0;
            if right.next > -1 && (right.next as usize) < symbols.len() {
                symbols[right.next as usize].prev = top.pos as isize;
            }
            let current = symbols[top.pos];
            if current.prev >= 0 {
                let prev = current.prev as usize;
                if let Some((rank, new_id)) = merges.get(symbols[prev].c, current.c) {
                    queue.push(Merge {
                        pos: prev,
                        rank,
                        new_id,
                    });
                }
            }
            let next = current.next as usize;
            if current.next >= 0 && next < symbols.len() {
                if let Some((rank, new_id)) = merges.get(current.c, symbols[next].c) {
                    queue.push(Merge {
                        pos: top.pos,
                        rank,
                        new_id,
                    });
                }
            }
        }
        out.extend(symbols.iter().filter(|s| s.len != 0).map(|s| s.c));
    }
}
