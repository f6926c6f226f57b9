//! The L2 candidate index: multi-index hashing (MIH) over dHash-256.
//!
//! A 256-bit code is cut into 16 chunks of 16 bits, and each chunk value
//! keys a posting list. Two codes within Hamming distance r < 16 agree
//! exactly on at least 16 - r chunks (pigeonhole), so exact lookups of the
//! query's chunks find every code within r ≤ 15: no scan of the library.
//! Measured (shared/research/dedup.md §2): MIH is 20–500× faster than a
//! linear scan at these radii, and BK-trees lose beyond radius 4.
//!
//! Line art has skewed chunks (blank regions give the same chunk value for
//! most drawings). Since a code within r differs in at most r chunks, any
//! r + 1 of the query's chunks include one that matches exactly, so only the
//! r + 1 shortest posting lists are read: the longest (stop words) never are,
//! and the answer stays exact. Mostly blank drawings still make even the
//! shortest lists long; then one or more further lists are read and only
//! drawings found in enough of them are checked (see [`Read::Counted`]), or
//! the codes are scanned when that is cheaper, which bounds the worst query.
//!
//! The index keeps its drawings' codes and posting lists as a few flat
//! arrays indexed by a u32 slot, which the owner (`index::Index`) shares
//! with its own per-drawing arrays and maps to drawing ids: lookups read
//! contiguous memory, and a million drawings cost about 150 bytes each here.

use std::sync::LazyLock;

use super::raster::{Hash256, Hashes, Orientation, hamming};
use super::slots::room_for;

const CHUNKS: usize = 16;
/// The largest radius the chunk lookups find exactly.
pub const MAX_RADIUS: u32 = (CHUNKS - 1) as u32;
/// Up to this many drawings a shortlist scans them all: exhaustive, so no
/// radius limits what L3 gets to verify, and still well under a
/// millisecond (eight probes, two popcounts of four words per drawing).
pub const SCAN_LIMIT: usize = 20_000;
/// dHash radius of the MIH lookups in libraries larger than SCAN_LIMIT.
pub const SHORTLIST_RADIUS: u32 = 12;

/// Drawings inserted since the posting lists were last merged wait in
/// chains, which cost a dependent memory read per posting. A merge moves
/// every flat posting once (a memmove, no re-sort), so merging each time
/// the chains reach 1/32 of the index keeps them a few percent of what a
/// lookup reads and costs an insert about 2 KiB of copying.
const FRESH_SHARE: usize = 32;
/// Chains a small index may hold before a merge.
const FRESH_MIN: usize = 1024;
/// A list is keyed by the top bits of its chunk value, as many as keep an
/// index's list heads (three u32 per list and chunk) a small share of its
/// memory: a library of 100 drawings does not need 2^16 lists per chunk.
const MIN_LIST_BITS: u32 = 6;
/// Costs of reading a probe's lists, in units of counting one posting
/// (about a nanosecond): checking the code of a slot read from a list (a
/// cache miss, at 10M a DRAM one, then four popcounts), checking one in a
/// scan, and starting a block of counts for one list. Estimates, tuned on
/// the bench at 1M and 10M: a wrong one costs speed, never exactness.
const CHECK_COST: usize = 60;
const SCAN_COST: usize = 4;
const BLOCK_COST: usize = 8;
/// How many of the slots read one more, two more, three more lists than
/// r + 1 are left to check, as a share of the postings read: measured on the
/// LibreCAD codes as 1/23, 1/160–1/220 and 1/900–1/1200.
const LEFT_TO_CHECK: [usize; 5] = [1, 1, 16, 128, 1024];
/// Slots counted at a time: a byte each, so 32 KiB stay in L1.
const BLOCK: usize = 1 << 15;
/// No slot: the end of a chain.
const NONE: u32 = u32::MAX;

/// Rank of a candidate, lower is closer: either hash being close is enough.
/// pHash-256 distances run about five times dHash-256's on line art (their
/// 0.1% false-positive points are 57 and 10 bits).
pub fn rank(dhash_distance: u32, phash_distance: u32) -> u32 {
    (dhash_distance * 5).min(phash_distance)
}

/// A candidate: which drawing (by slot), through which orientation of the
/// query, and at what distances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub slot: u32,
    pub orientation: Orientation,
    pub dhash_distance: u32,
    pub phash_distance: u32,
}

/// A slot is a drawing's position in every per-drawing array. Slots are the
/// owner's: [`HashIndex::push`] appends one, [`HashIndex::remove`] only
/// unlists it, and [`HashIndex::retain`] renumbers them when the owner
/// compacts its own arrays.
#[derive(Debug, Default, Clone)]
pub struct HashIndex {
    /// dHash codes by slot, contiguous: every lookup and scan reads them.
    codes: Vec<Hash256>,
    phashes: Vec<Hash256>,
    /// A bit per slot that lookups may find: pushed with hashes and not
    /// removed. A hit must have it set.
    alive: Vec<u64>,
    live: usize,
    lists: Lists,
}

/// Which bits of the code make up each chunk: a fixed shuffle, so a chunk
/// samples the whole drawing instead of one strip of it. Strips of line art
/// are often blank and give most drawings the same chunk value.
const CHUNK_BITS: [u8; 256] = {
    let mut bits = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        bits[i] = i as u8;
        i += 1;
    }
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut i = 255;
    while i > 0 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let j = (state % (i as u64 + 1)) as usize;
        let t = bits[i];
        bits[i] = bits[j];
        bits[j] = t;
        i -= 1;
    }
    bits
};

/// For each byte of a code and each value of it, where its bits land among
/// the 16 chunks, packed 16 bits per chunk: all chunks of a code are then 32
/// lookups instead of 256 single-bit moves, and a rebuild does it for every
/// code.
static CHUNK_TABLE: LazyLock<Vec<[Hash256; 256]>> = LazyLock::new(|| {
    let mut table = vec![[[0u64; 4]; 256]; 32];
    for (position, &bit) in CHUNK_BITS.iter().enumerate() {
        let bit = usize::from(bit);
        for (value, packed) in table[bit / 8].iter_mut().enumerate() {
            if value >> (bit % 8) & 1 == 1 {
                packed[position / 64] |= 1 << (position % 64);
            }
        }
    }
    table
});

/// The 16 chunks of a code, chunk i in bits 16i..16i+16.
fn chunks(code: &Hash256) -> Hash256 {
    let table = &*CHUNK_TABLE;
    let mut packed = [0u64; 4];
    for (w, word) in code.iter().enumerate() {
        for byte in 0..8 {
            let part = &table[w * 8 + byte][usize::from((word >> (byte * 8)) as u8)];
            for (p, q) in packed.iter_mut().zip(part) {
                *p |= q;
            }
        }
    }
    packed
}

fn chunk(packed: &Hash256, i: usize) -> u16 {
    (packed[i / 4] >> (i % 4 * 16)) as u16
}

/// Posting lists, one per chunk and value of the chunk's top `bits` bits
/// (all 16 in a large index). Slots below `flat_below` sit in `flat`, each
/// list in slot order; newer slots are chained from `heads` through `next`
/// until the next merge.
#[derive(Debug, Default, Clone)]
struct Lists {
    bits: u32,
    flat_below: u32,
    /// Where each list starts in `flat`, and where the last ends.
    starts: Vec<u32>,
    flat: Vec<u32>,
    /// Newest chained slot of each list, or NONE.
    heads: Vec<u32>,
    /// Slots chained in each list, so choosing the shortest reads no chain.
    chained: Vec<u32>,
    /// The next older slot in chunk i's chain of slot `flat_below + j` is
    /// at `j * CHUNKS + i`.
    next: Vec<u32>,
    /// Slots chained before the next merge.
    room: usize,
}

impl Lists {
    /// Every live slot of `codes` flat: a counting sort per chunk.
    fn build(codes: &[Hash256], alive: &[u64], live: usize) -> Lists {
        let n = codes.len();
        let bits = list_bits(live);
        let is_alive = |slot: usize| alive[slot / 64] >> (slot % 64) & 1 == 1;
        let mut keys = vec![0u16; CHUNKS * n];
        for slot in (0..n).filter(|&s| is_alive(s)) {
            let packed = chunks(&codes[slot]);
            for i in 0..CHUNKS {
                keys[i * n + slot] = chunk(&packed, i) >> (16 - bits);
            }
        }
        assert!(CHUNKS * live < u32::MAX as usize, "posting offsets fit in u32");
        let mut starts = vec![0u32; (CHUNKS << bits) + 1];
        let mut flat = vec![0u32; CHUNKS * live];
        let mut offset = 0u32;
        for i in 0..CHUNKS {
            let keys = &keys[i * n..(i + 1) * n];
            let lists = &mut starts[i << bits..(i + 1) << bits];
            for (_, &key) in keys.iter().enumerate().filter(|&(s, _)| is_alive(s)) {
                lists[usize::from(key)] += 1;
            }
            for start in lists.iter_mut() {
                (*start, offset) = (offset, offset + *start);
            }
            let mut fill = lists.to_vec();
            for (slot, &key) in keys.iter().enumerate().filter(|&(s, _)| is_alive(s)) {
                let at = &mut fill[usize::from(key)];
                flat[*at as usize] = slot as u32;
                *at += 1;
            }
        }
        starts[CHUNKS << bits] = offset;
        Lists {
            bits,
            flat_below: n as u32,
            starts,
            flat,
            heads: vec![NONE; CHUNKS << bits],
            chained: vec![0; CHUNKS << bits],
            next: Vec::new(),
            room: 0,
        }
    }

    /// Moves the chained slots into the flat lists, in place: each list's
    /// flat part moves up by the chained slots of the lists before it, and
    /// its chained slots follow it, so lists stay in slot order. Slots
    /// removed since the last build stay listed until compaction.
    fn merge(&mut self, codes: &[Hash256]) {
        let (lists, added) = (self.heads.len(), self.next.len());
        assert!(
            self.flat.len() + added < u32::MAX as usize,
            "posting offsets fit in u32"
        );
        let mut end = self.flat.len();
        room_for(&mut self.flat, added);
        self.flat.resize(end + added, 0);
        let mut shift = added as u32;
        self.starts[lists] += shift;
        for key in (0..lists).rev() {
            shift -= self.chained[key];
            let start = self.starts[key] as usize;
            self.flat.copy_within(start..end, start + shift as usize);
            self.starts[key] += shift;
            end = start;
        }
        for (slot, code) in codes.iter().enumerate().skip(self.flat_below as usize) {
            let packed = chunks(code);
            for i in 0..CHUNKS {
                let key = self.key(&packed, i);
                let left = &mut self.chained[key];
                self.flat[(self.starts[key + 1] - *left) as usize] = slot as u32;
                *left -= 1;
            }
        }
        self.heads.fill(NONE);
        self.next.clear();
        self.flat_below = codes.len() as u32;
    }

    fn key(&self, packed: &Hash256, i: usize) -> usize {
        (i << self.bits) | usize::from(chunk(packed, i) >> (16 - self.bits))
    }

    fn len(&self, key: usize) -> usize {
        (self.starts[key + 1] - self.starts[key] + self.chained[key]) as usize
    }

    fn flat(&self, key: usize) -> &[u32] {
        &self.flat[self.starts[key] as usize..self.starts[key + 1] as usize]
    }

    #[cfg(test)]
    fn chain(&self, key: usize) -> impl Iterator<Item = u32> + '_ {
        let i = key >> self.bits;
        let some = |slot: u32| (slot != NONE).then_some(slot);
        std::iter::successors(some(self.heads[key]), move |&slot| {
            some(self.next[(slot - self.flat_below) as usize * CHUNKS + i])
        })
    }

    /// The chained slots of several lists, newest first in each. The chains
    /// are walked side by side: each step of one is a dependent cache miss,
    /// and the steps of different chains can be in flight together.
    fn chains(&self, keys: &[usize]) -> Vec<u32> {
        let mut slots = Vec::new();
        let mut walks: Vec<(u32, usize)> = keys
            .iter()
            .map(|&key| (self.heads[key], key >> self.bits))
            .filter(|&(slot, _)| slot != NONE)
            .collect();
        while !walks.is_empty() {
            walks.retain_mut(|(slot, i)| {
                slots.push(*slot);
                *slot = self.next[(*slot - self.flat_below) as usize * CHUNKS + *i];
                *slot != NONE
            });
        }
        slots
    }

    fn add(&mut self, slot: u32, code: &Hash256) {
        let packed = chunks(code);
        for i in 0..CHUNKS {
            let key = self.key(&packed, i);
            self.next.push(self.heads[key]);
            self.heads[key] = slot;
            self.chained[key] += 1;
        }
    }

    fn bytes(&self) -> usize {
        4 * (self.starts.capacity()
            + self.flat.capacity()
            + self.heads.capacity()
            + self.chained.capacity()
            + self.next.capacity())
    }
}

/// Counts the postings of `list` below `end` in the block from `start`,
/// noting each slot as its count reaches `times`, and returns how many it
/// took. Walking up to the block's end beats a binary search for it, which
/// misses the cache at every step.
fn count(list: &[u32], start: usize, end: u32, times: u8, counts: &mut [u8], reached: &mut Vec<u32>) -> usize {
    let mut taken = 0;
    for &slot in list.iter().take_while(|&&slot| slot < end) {
        let count = &mut counts[slot as usize - start];
        *count += 1;
        if *count == times {
            reached.push(slot);
        }
        taken += 1;
    }
    taken
}

/// Bits of a chunk that key its lists: about four drawings per list.
fn list_bits(live: usize) -> u32 {
    (live.max(1).ilog2().saturating_sub(2)).clamp(MIN_LIST_BITS, 16)
}

/// A probe's postings within the radius: (slot, distance, probe).
type Hit = (u32, u32, u32);

/// How a probe's lists are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Read {
    /// Each posting's code checked as read: few postings.
    Direct,
    /// Postings counted per slot first, and only the slots read at least
    /// this many times checked. A code within r differs in at most r
    /// chunks, so it is in at least s - r of any s lists: reading one or two
    /// lists more than r + 1 spares most checks of skewed lists (measured on
    /// the LibreCAD codes at 1M: 17× fewer checks with one more list for
    /// 27% more postings, 125× fewer with two for 66% more).
    Counted(usize),
    /// Every code checked in slot order: the lists hold more postings than
    /// a scan costs.
    Scan,
}

impl HashIndex {
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// An empty index with room for `slots`, so that loading a library
    /// does not grow its arrays an eighth at a time, plus the room
    /// `reserve_fresh` keeps for the inserts after them.
    pub fn with_capacity(slots: usize) -> HashIndex {
        let slots = slots + FRESH_MIN.max(slots / FRESH_SHARE);
        HashIndex {
            codes: Vec::with_capacity(slots),
            phashes: Vec::with_capacity(slots),
            alive: Vec::with_capacity(slots.div_ceil(64)),
            ..HashIndex::default()
        }
    }

    /// Heap bytes held, capacities included. A lookup allocates besides
    /// 32 KiB of counts and its candidates, and frees them.
    pub fn heap_bytes(&self) -> usize {
        32 * (self.codes.capacity() + self.phashes.capacity()) + 8 * self.alive.capacity() + self.lists.bytes()
    }

    /// Appends the next slot, which lookups find if it has hashes; a
    /// drawing without them still takes a slot, so that the owner's slots
    /// and these stay one numbering.
    pub fn push(&mut self, hashes: Option<Hashes>) -> u32 {
        let slot = self.append(hashes);
        if self.lists.starts.is_empty() || list_bits(self.live) > self.lists.bits {
            // Freed first, so the old lists and the new never coexist.
            self.lists = Lists::default();
            self.lists = Lists::build(&self.codes, &self.alive, self.live);
            self.reserve_fresh();
            return slot;
        }
        // Unlisted slots are chained too (lookups skip them as they skip
        // removed ones), because a merge moves every slot from `flat_below`.
        self.lists.add(slot, &self.codes[slot as usize]);
        if self.codes.len() - self.lists.flat_below as usize >= self.lists.room {
            self.lists.merge(&self.codes);
            self.reserve_fresh();
        }
        slot
    }

    /// Room for the inserts until the next merge, so that per-slot arrays
    /// grow by a few percent at a time instead of doubling.
    fn reserve_fresh(&mut self) {
        let room = FRESH_MIN.max(self.live / FRESH_SHARE);
        self.lists.room = room;
        room_for(&mut self.codes, room);
        room_for(&mut self.phashes, room);
        room_for(&mut self.alive, room / 64 + 1);
        room_for(&mut self.lists.next, room * CHUNKS);
    }

    /// Appends a slot, alive if it has hashes, and unlisted.
    fn append(&mut self, hashes: Option<Hashes>) -> u32 {
        let slot = self.codes.len();
        assert!(slot < NONE as usize, "an index holds fewer than 2^32 - 1 slots");
        if slot.is_multiple_of(64) {
            self.alive.push(0);
        }
        let none = Hashes {
            dhash: [0; 4],
            phash: [0; 4],
        };
        let Hashes { dhash, phash } = hashes.unwrap_or(none);
        self.codes.push(dhash);
        self.phashes.push(phash);
        if hashes.is_some() {
            self.alive[slot / 64] |= 1 << (slot % 64);
            self.live += 1;
        }
        slot as u32
    }

    fn is_alive(&self, slot: usize) -> bool {
        self.alive[slot / 64] >> (slot % 64) & 1 == 1
    }

    /// Unlists the slot, at once for every lookup; false if it was not
    /// listed. Its postings stay until the owner compacts.
    pub fn remove(&mut self, slot: u32) -> bool {
        let slot = slot as usize;
        if slot >= self.codes.len() || !self.is_alive(slot) {
            return false;
        }
        self.alive[slot / 64] &= !(1 << (slot % 64));
        self.live -= 1;
        true
    }

    /// Keeps the `kept` slots, renumbered from 0 in that order, and
    /// rebuilds the lists: the owner compacts its own arrays alike.
    pub fn retain(&mut self, kept: &[u32]) {
        let old = std::mem::take(self);
        if kept.is_empty() {
            return;
        }
        self.codes.reserve_exact(kept.len());
        self.phashes.reserve_exact(kept.len());
        for &slot in kept {
            let slot = slot as usize;
            let hashes = old.is_alive(slot).then(|| Hashes {
                dhash: old.codes[slot],
                phash: old.phashes[slot],
            });
            self.append(hashes);
        }
        drop(old);
        self.lists = Lists::build(&self.codes, &self.alive, self.live);
        self.reserve_fresh();
    }

    /// Every drawing whose dHash lies within `radius` (≤ MAX_RADIUS) of one
    /// of the query's orientations, keeping each drawing's closest
    /// orientation, closest first.
    pub fn candidates(&self, probes: &[(Orientation, Hashes)], radius: u32) -> Vec<Candidate> {
        let radius = radius.min(MAX_RADIUS);
        if self.live == 0 {
            return Vec::new();
        }
        let mut hits: Vec<Hit> = Vec::new();
        let mut scans = Vec::new();
        for (p, (_, probe)) in probes.iter().enumerate() {
            match self.plan(&probe.dhash, radius) {
                (_, Read::Scan) => scans.push(p),
                (read, Read::Direct) => {
                    let flat = read.iter().flat_map(|&key| self.lists.flat(key));
                    for &slot in flat.chain(&self.lists.chains(&read)) {
                        self.check(&probe.dhash, slot as usize, radius, p, &mut hits);
                    }
                }
                (read, Read::Counted(times)) => self.check_counted(&probe.dhash, &read, times, radius, p, &mut hits),
            }
        }
        if !scans.is_empty() {
            for slot in 0..self.codes.len() {
                for &p in &scans {
                    self.check(&probes[p].1.dhash, slot, radius, p, &mut hits);
                }
            }
        }
        // Closest first, then the first probe: the orientation a scan keeps.
        hits.sort_unstable();
        hits.dedup_by_key(|h| h.0);
        self.ranked(hits.into_iter().map(|(slot, d, p)| {
            let (orientation, probe) = &probes[p as usize];
            (
                slot,
                d,
                hamming(&probe.phash, &self.phashes[slot as usize]),
                *orientation,
            )
        }))
    }

    /// Which lists of a probe to read, and how: the cheapest of the ways,
    /// by the costs above and the lists' lengths.
    fn plan(&self, code: &Hash256, radius: u32) -> (Vec<usize>, Read) {
        let packed = chunks(code);
        let mut lists: [(usize, usize); CHUNKS] = std::array::from_fn(|i| {
            let key = self.lists.key(&packed, i);
            (self.lists.len(key), key)
        });
        lists.sort_unstable();
        let need = radius as usize + 1;
        let postings = |s: usize| lists[..s].iter().map(|&(len, _)| len).sum::<usize>();
        let n = self.codes.len();
        let mut best = (CHECK_COST * postings(need), Read::Direct, need);
        let further = LEFT_TO_CHECK.iter().enumerate().skip(2);
        for (times, &left) in further.take_while(|&(times, _)| radius as usize + times <= CHUNKS) {
            let s = radius as usize + times;
            let cost = postings(s) + CHECK_COST * postings(s) / left + n.div_ceil(BLOCK) * (s + 1) * BLOCK_COST;
            if cost < best.0 {
                best = (cost, Read::Counted(times), s);
            }
        }
        if SCAN_COST * n < best.0 {
            best = (SCAN_COST * n, Read::Scan, 0);
        }
        (lists[..best.2].iter().map(|&(_, key)| key).collect(), best.1)
    }

    fn check(&self, code: &Hash256, slot: usize, radius: u32, probe: usize, hits: &mut Vec<Hit>) {
        let d = hamming(code, &self.codes[slot]);
        if d <= radius && self.is_alive(slot) {
            hits.push((slot as u32, d, probe as u32));
        }
    }

    /// Counts each slot's postings and checks the slots read `times` times
    /// as they get there. Lists are in slot order, so they are counted a
    /// block of slots at a time, and a block's counts stay in L1 whatever
    /// the library's size (one bitmap over all slots was slower already at
    /// 1M, and outgrows L2 before 10M).
    fn check_counted(
        &self,
        code: &Hash256,
        read: &[usize],
        times: usize,
        radius: u32,
        probe: usize,
        hits: &mut Vec<Hit>,
    ) {
        let mut chained = self.lists.chains(read);
        chained.sort_unstable();
        let mut lists: Vec<&[u32]> = read.iter().map(|&key| self.lists.flat(key)).collect();
        lists.push(&chained);
        let mut counts = vec![0u8; BLOCK];
        let mut reached = Vec::new();
        let mut blocks: Vec<&[u32]> = vec![&[]; lists.len()];
        for start in (0..self.codes.len()).step_by(BLOCK) {
            let end = (start + BLOCK) as u32;
            let mut counted = 0;
            for (list, block) in lists.iter_mut().zip(&mut blocks) {
                let taken = count(list, start, end, times as u8, &mut counts, &mut reached);
                (*block, *list) = list.split_at(taken);
                counted += taken;
            }
            // Zeroing the counts touched beats a memset of the block (64
            // bytes a cycle) only while they are fewer than 1 in 128.
            if counted * 128 < BLOCK {
                for &slot in blocks.iter().flat_map(|block| block.iter()) {
                    counts[slot as usize - start] = 0;
                }
            } else {
                counts.fill(0);
            }
            for slot in reached.drain(..) {
                self.check(code, slot as usize, radius, probe, hits);
            }
        }
    }

    /// The same answer by scanning every drawing; tests hold MIH to it.
    pub fn candidates_by_scan(&self, probes: &[(Orientation, Hashes)], radius: u32) -> Vec<Candidate> {
        let radius = radius.min(MAX_RADIUS);
        let alive = (0..self.codes.len()).filter(|&s| self.is_alive(s));
        self.ranked(alive.filter_map(|slot| {
            self.distances(slot, probes)
                .filter(|(_, d, _, _)| *d <= radius)
                .min_by_key(|(_, d, _, _)| *d)
        }))
    }

    /// (slot, dHash distance, pHash distance, orientation) of each probe.
    fn distances<'a>(
        &'a self,
        slot: usize,
        probes: &'a [(Orientation, Hashes)],
    ) -> impl Iterator<Item = (u32, u32, u32, Orientation)> + 'a {
        probes.iter().map(move |(o, p)| {
            let d = hamming(&p.dhash, &self.codes[slot]);
            (slot as u32, d, hamming(&p.phash, &self.phashes[slot]), *o)
        })
    }

    /// The `k` closest drawings by [`rank`] and any that tie with the k-th,
    /// closest first, each in its best orientation: the owner, who knows
    /// the ids, breaks the ties. A full scan up to SCAN_LIMIT drawings, MIH
    /// lookups beyond.
    pub fn shortlist(&self, probes: &[(Orientation, Hashes)], k: usize) -> (Vec<Candidate>, &'static str) {
        let (mut found, method) = if self.len() <= SCAN_LIMIT {
            (self.scan_ranked(probes), "scan")
        } else {
            (self.candidates(probes, SHORTLIST_RADIUS), "mih")
        };
        let closeness = |c: &Candidate| (rank(c.dhash_distance, c.phash_distance), c.dhash_distance);
        found.sort_by_key(closeness);
        let keep = match k.checked_sub(1).and_then(|last| found.get(last)) {
            Some(kth) => found.partition_point(|c| closeness(c) <= closeness(kth)),
            None => k.min(found.len()),
        };
        found.truncate(keep);
        (found, method)
    }

    fn scan_ranked(&self, probes: &[(Orientation, Hashes)]) -> Vec<Candidate> {
        let alive = (0..self.codes.len()).filter(|&s| self.is_alive(s));
        self.ranked(alive.filter_map(|slot| {
            self.distances(slot, probes)
                .min_by_key(|(_, d, p, _)| (rank(*d, *p), *d))
        }))
    }

    /// Closest first; ties by pHash distance, then slot, so answers are
    /// stable.
    fn ranked(&self, found: impl Iterator<Item = (u32, u32, u32, Orientation)>) -> Vec<Candidate> {
        let mut found: Vec<Candidate> = found
            .map(|(slot, d, p, orientation)| Candidate {
                slot,
                orientation,
                dhash_distance: d,
                phash_distance: p,
            })
            .collect();
        found.sort_unstable_by_key(|c| (c.dhash_distance, c.phash_distance, c.slot));
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::Rng;

    fn hashes(dhash: Hash256) -> Hashes {
        Hashes { dhash, phash: [0; 4] }
    }

    /// What `index::Index` does around a HashIndex: names drawings by
    /// slot, and compacts once a quarter of the slots are dead.
    #[derive(Default)]
    struct Named {
        index: HashIndex,
        slots: std::collections::HashMap<String, u32>,
    }

    impl Named {
        fn insert(&mut self, name: &str, code: Hash256) {
            self.remove(name);
            let slot = self.index.push(Some(hashes(code)));
            self.slots.insert(name.to_string(), slot);
        }

        fn remove(&mut self, name: &str) -> bool {
            let Some(slot) = self.slots.remove(name) else {
                return false;
            };
            assert!(self.index.remove(slot));
            let slots = self.index.codes.len();
            if (slots - self.index.live) * 4 > slots {
                let mut live: Vec<(u32, String)> = self.slots.drain().map(|(n, s)| (s, n)).collect();
                live.sort_unstable();
                let kept: Vec<u32> = live.iter().map(|(s, _)| *s).collect();
                self.index.retain(&kept);
                self.slots = live.into_iter().enumerate().map(|(i, (_, n))| (n, i as u32)).collect();
            }
            true
        }

        fn named(&self, found: &[Candidate]) -> Vec<&str> {
            let name = |slot| self.slots.iter().find(|(_, s)| **s == slot).map(|(n, _)| n.as_str());
            found.iter().map(|c| name(c.slot).unwrap()).collect()
        }
    }

    #[test]
    fn lookups_find_exactly_what_a_scan_finds() {
        let mut rng = Rng(0x9e3779b97f4a7c15);
        let mut index = HashIndex::default();
        let anchors: Vec<Hash256> = (0..50).map(|_| rng.hash()).collect();
        for i in 0..5000 {
            let base = anchors[i % anchors.len()];
            let code = rng.flip(&base, (i % 40) as u32);
            index.push(Some(hashes(code)));
        }
        for radius in [0, 4, 8, 12, 15] {
            for anchor in anchors.iter().take(10) {
                let probe = [(Orientation::IDENTITY, hashes(*anchor))];
                let by_mih = index.candidates(&probe, radius);
                assert_eq!(by_mih, index.candidates_by_scan(&probe, radius), "radius {radius}");
                assert!(by_mih.iter().all(|c| c.dhash_distance <= radius));
            }
        }
    }

    #[test]
    fn each_drawing_is_reported_once_with_its_closest_orientation() {
        let mut rng = Rng(7);
        let stored = rng.hash();
        let mut index = HashIndex::default();
        index.push(Some(hashes(stored)));
        let turned = Orientation {
            quarter_turns: 1,
            mirrored: false,
        };
        let probes = [
            (Orientation::IDENTITY, hashes(rng.flip(&stored, 9))),
            (turned, hashes(rng.flip(&stored, 2))),
        ];
        let found = index.candidates(&probes, 12);
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].orientation, found[0].dhash_distance), (turned, 2));
    }

    #[test]
    fn removed_and_replaced_drawings_are_gone_and_compaction_keeps_the_rest() {
        let mut rng = Rng(11);
        let mut named = Named::default();
        let codes: Vec<Hash256> = (0..100).map(|_| rng.hash()).collect();
        for (i, code) in codes.iter().enumerate() {
            named.insert(&format!("d{i}"), *code);
        }
        for i in 0..60 {
            assert!(named.remove(&format!("d{i}")));
        }
        assert!(!named.remove("d0"));
        assert!(!named.index.remove(99), "a compaction renumbered the slots");
        assert_eq!(named.index.len(), 40);
        for (i, code) in codes.iter().enumerate() {
            let found = named.index.candidates(&[(Orientation::IDENTITY, hashes(*code))], 0);
            assert_eq!(found.len(), usize::from(i >= 60), "d{i}");
        }
        named.insert("d99", codes[0]);
        assert!(
            named
                .index
                .candidates(&[(Orientation::IDENTITY, hashes(codes[99]))], 0)
                .is_empty()
        );
        let found = named.index.candidates(&[(Orientation::IDENTITY, hashes(codes[0]))], 0);
        assert_eq!(named.named(&found), ["d99"]);
    }

    #[test]
    fn slots_without_hashes_are_never_found_and_keep_the_numbering() {
        let mut rng = Rng(13);
        let mut index = HashIndex::default();
        let codes: Vec<Hash256> = (0..3000).map(|_| rng.hash()).collect();
        for (i, code) in codes.iter().enumerate() {
            let hashes = (i % 3 != 0).then(|| hashes(*code));
            assert_eq!(index.push(hashes), i as u32);
        }
        assert_eq!(index.len(), 2000);
        let blank = [(Orientation::IDENTITY, hashes([0; 4]))];
        assert!(index.candidates(&blank, 15).is_empty());
        assert_eq!(index.shortlist(&blank, 5000).0.len(), 2000);
        assert!(!index.remove(3) && index.remove(4));
        let kept: Vec<u32> = (3..3000).filter(|&s| s != 4).collect();
        index.retain(&kept);
        assert_eq!(index.len(), 1997);
        for (slot, &old) in kept.iter().enumerate() {
            let found = index.candidates(&[(Orientation::IDENTITY, hashes(codes[old as usize]))], 0);
            let expected: &[u32] = if old % 3 == 0 { &[] } else { &[slot as u32] };
            assert_eq!(found.iter().map(|c| c.slot).collect::<Vec<_>>(), expected);
        }
    }

    #[test]
    fn a_shortlist_keeps_the_ties_of_its_last_place() {
        let mut index = HashIndex::default();
        for _ in 0..5 {
            index.push(Some(hashes([1, 0, 0, 0])));
        }
        index.push(Some(hashes([0; 4])));
        let probe = [(Orientation::IDENTITY, hashes([0; 4]))];
        assert_eq!(index.shortlist(&probe, 1).0.len(), 1);
        assert_eq!(index.shortlist(&probe, 2).0.len(), 6);
        assert_eq!(index.shortlist(&probe, 0).0.len(), 0);
    }

    #[test]
    fn chunks_by_table_are_the_shuffled_bits() {
        let mut rng = Rng(3);
        for _ in 0..200 {
            let code = rng.hash();
            let packed = chunks(&code);
            for i in 0..CHUNKS {
                let by_bits = CHUNK_BITS[i * 16..(i + 1) * 16]
                    .iter()
                    .enumerate()
                    .fold(0u16, |acc, (k, &bit)| {
                        let set = (code[usize::from(bit) / 64] >> (bit % 64)) & 1;
                        acc | ((set as u16) << k)
                    });
                assert_eq!(chunk(&packed, i), by_bits);
            }
        }
    }

    /// Line art's skew: a third of the library is nearly blank (few bits
    /// set), so the lists of blank chunks hold most of it.
    fn skewed(rng: &mut Rng, anchors: &[Hash256], i: usize) -> Hash256 {
        if i.is_multiple_of(3) {
            rng.flip(&[0; 4], (i % 24) as u32)
        } else {
            rng.flip(&anchors[i % anchors.len()], (i % 30) as u32)
        }
    }

    #[test]
    fn every_read_path_finds_what_a_scan_finds_through_rebuilds_and_removals() {
        let mut rng = Rng(0x5eed);
        let anchors: Vec<Hash256> = (0..40).map(|_| rng.hash()).collect();
        let turned = Orientation {
            quarter_turns: 1,
            mirrored: false,
        };
        let mut named = Named::default();
        let mut reads = std::collections::HashSet::new();
        let mut chained = false;
        for round in 0..4 {
            for i in round * 3000..(round + 1) * 3000 {
                let code = skewed(&mut rng, &anchors, i);
                named.insert(&format!("d{i}"), code);
            }
            for i in (round * 3000..(round + 1) * 3000).step_by(5) {
                assert!(named.remove(&format!("d{i}")));
            }
            for i in (0..(round + 1) * 3000).skip(1).step_by(11) {
                let code = skewed(&mut rng, &anchors, i + 1);
                named.insert(&format!("d{i}"), code);
            }
            let index = &named.index;
            chained |= index.codes.len() > index.lists.flat_below as usize;
            let probes = anchors
                .iter()
                .take(6)
                .copied()
                .chain((0..6).map(|b| rng.flip(&[0; 4], b * 4)));
            for code in probes.collect::<Vec<_>>() {
                for radius in [0, 3, 8, 12, 15] {
                    let probes = [
                        (Orientation::IDENTITY, hashes(code)),
                        (turned, hashes(rng.flip(&code, 5))),
                    ];
                    let by_mih = index.candidates(&probes, radius);
                    assert_eq!(
                        by_mih,
                        index.candidates_by_scan(&probes, radius),
                        "round {round}, radius {radius}"
                    );
                    reads.extend(probes.iter().map(|(_, p)| index.plan(&p.dhash, radius).1));
                }
            }
        }
        assert!(chained, "some queries ran with drawings in chains");
        assert!(
            reads.contains(&Read::Direct) && reads.contains(&Read::Scan),
            "{reads:?}"
        );
        assert!(reads.iter().any(|r| matches!(r, Read::Counted(_))), "{reads:?}");
        // Every fifth was removed, and every eleventh from d1 inserted again.
        let live = (0..12_000).filter(|i| i % 5 != 0 || i % 11 == 1).count();
        assert_eq!(named.index.len(), live);
    }

    #[test]
    fn merged_chains_list_what_a_build_lists() {
        let mut rng = Rng(5);
        let anchors: Vec<Hash256> = (0..10).map(|_| rng.hash()).collect();
        let mut index = HashIndex::default();
        let mut merges = 0;
        for i in 0..20_000 {
            let before = index.lists.flat_below;
            index.push(Some(hashes(skewed(&mut rng, &anchors, i))));
            merges += usize::from(index.lists.flat_below > before && index.lists.bits == list_bits(index.live));
        }
        assert!(merges > 3 && index.codes.len() > index.lists.flat_below as usize);
        let built = Lists::build(&index.codes, &index.alive, index.live);
        assert_eq!(built.bits, index.lists.bits);
        for key in 0..index.lists.heads.len() {
            let mut merged: Vec<u32> = index.lists.chain(key).collect();
            merged.reverse();
            let merged = [index.lists.flat(key), &merged].concat();
            assert_eq!(merged, built.flat(key), "list {key}");
        }
    }

    #[test]
    fn removal_is_visible_at_once_from_flat_lists_and_chains() {
        let mut rng = Rng(21);
        let mut index = HashIndex::default();
        let codes: Vec<Hash256> = (0..5000).map(|_| rng.hash()).collect();
        for code in &codes {
            index.push(Some(hashes(*code)));
        }
        let flat_below = index.lists.flat_below as usize;
        assert!(
            flat_below > 0 && flat_below < codes.len(),
            "some drawings flat, some chained"
        );
        for i in [0, flat_below - 1, flat_below, codes.len() - 1] {
            let probe = [(Orientation::IDENTITY, hashes(codes[i]))];
            assert_eq!(index.candidates(&probe, 0).len(), 1);
            assert!(index.remove(i as u32));
            assert!(!index.remove(i as u32));
            assert!(index.candidates(&probe, 15).is_empty(), "d{i}");
            let again = index.push(Some(hashes(codes[i])));
            assert_eq!(index.candidates(&probe, 0)[0].slot, again);
        }
        assert_eq!(index.len(), codes.len());
    }
}
