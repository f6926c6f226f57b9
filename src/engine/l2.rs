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
//! and the answer stays exact.

use std::collections::HashMap;

use super::raster::{Hash256, Hashes, Orientation, hamming};

const CHUNKS: usize = 16;
/// The largest radius the chunk lookups find exactly.
pub const MAX_RADIUS: u32 = (CHUNKS - 1) as u32;
/// Up to this many drawings a shortlist scans them all: exhaustive, so no
/// radius limits what L3 gets to verify, and still well under a
/// millisecond (eight probes, two popcounts of four words per drawing).
pub const SCAN_LIMIT: usize = 20_000;
/// dHash radius of the MIH lookups in libraries larger than SCAN_LIMIT.
pub const SHORTLIST_RADIUS: u32 = 12;

/// Rank of a candidate, lower is closer: either hash being close is enough.
/// pHash-256 distances run about five times dHash-256's on line art (their
/// 0.1% false-positive points are 57 and 10 bits).
pub fn rank(dhash_distance: u32, phash_distance: u32) -> u32 {
    (dhash_distance * 5).min(phash_distance)
}

/// One indexed drawing: its slot is its position, stable until compaction.
#[derive(Debug, Clone)]
struct Slot {
    id: String,
    phash: Hash256,
    alive: bool,
}

/// A candidate: which drawing, through which orientation of the query, and
/// at what distances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub drawing_id: String,
    pub orientation: Orientation,
    pub dhash_distance: u32,
    pub phash_distance: u32,
}

#[derive(Debug, Default, Clone)]
pub struct HashIndex {
    slots: Vec<Slot>,
    /// dHash codes by slot, contiguous: they are what every lookup reads.
    codes: Vec<Hash256>,
    by_id: HashMap<String, u32>,
    tables: Vec<HashMap<u16, Vec<u32>>>,
    dead: usize,
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

fn chunk(code: &Hash256, i: usize) -> u16 {
    CHUNK_BITS[i * 16..(i + 1) * 16]
        .iter()
        .enumerate()
        .fold(0u16, |acc, (k, &bit)| {
            let set = (code[usize::from(bit) / 64] >> (bit % 64)) & 1;
            acc | ((set as u16) << k)
        })
}

impl HashIndex {
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn insert(&mut self, drawing_id: &str, hashes: Hashes) {
        self.remove(drawing_id);
        if self.tables.is_empty() {
            self.tables = vec![HashMap::new(); CHUNKS];
        }
        let slot = self.slots.len() as u32;
        for (i, table) in self.tables.iter_mut().enumerate() {
            table.entry(chunk(&hashes.dhash, i)).or_default().push(slot);
        }
        self.slots.push(Slot {
            id: drawing_id.to_string(),
            phash: hashes.phash,
            alive: true,
        });
        self.codes.push(hashes.dhash);
        self.by_id.insert(drawing_id.to_string(), slot);
    }

    /// Tombstones the slot; posting lists are cleaned when a quarter of the
    /// slots are dead, so a delete stays O(1).
    pub fn remove(&mut self, drawing_id: &str) -> bool {
        let Some(slot) = self.by_id.remove(drawing_id) else {
            return false;
        };
        self.slots[slot as usize].alive = false;
        self.dead += 1;
        if self.dead * 4 > self.slots.len() {
            self.compact();
        }
        true
    }

    fn compact(&mut self) {
        let old = std::mem::take(self);
        for (slot, dhash) in old.slots.into_iter().zip(old.codes).filter(|(s, _)| s.alive) {
            self.insert(
                &slot.id,
                Hashes {
                    dhash,
                    phash: slot.phash,
                },
            );
        }
    }

    /// Every drawing whose dHash lies within `radius` (≤ MAX_RADIUS) of one
    /// of the query's orientations, keeping each drawing's closest
    /// orientation, closest first.
    pub fn candidates(&self, probes: &[(Orientation, Hashes)], radius: u32) -> Vec<Candidate> {
        let radius = radius.min(MAX_RADIUS);
        let mut best: HashMap<u32, (u32, u32, Orientation)> = HashMap::new();
        for (orientation, probe) in probes {
            let mut lists: Vec<&[u32]> = self
                .tables
                .iter()
                .enumerate()
                .map(|(i, table)| table.get(&chunk(&probe.dhash, i)).map_or(&[][..], Vec::as_slice))
                .collect();
            lists.sort_by_key(|l| l.len());
            for &slot in lists.iter().take(radius as usize + 1).flat_map(|l| l.iter()) {
                let d = hamming(&probe.dhash, &self.codes[slot as usize]);
                if d > radius || !self.slots[slot as usize].alive {
                    continue;
                }
                if best.get(&slot).is_none_or(|(bd, _, _)| d < *bd) {
                    let p = hamming(&probe.phash, &self.slots[slot as usize].phash);
                    best.insert(slot, (d, p, *orientation));
                }
            }
        }
        self.ranked(best.into_iter().map(|(slot, (d, p, o))| (slot, d, p, o)))
    }

    /// The same answer by scanning every drawing; tests hold MIH to it.
    pub fn candidates_by_scan(&self, probes: &[(Orientation, Hashes)], radius: u32) -> Vec<Candidate> {
        let radius = radius.min(MAX_RADIUS);
        let closest = self
            .slots
            .iter()
            .zip(&self.codes)
            .enumerate()
            .filter(|(_, (s, _))| s.alive);
        self.ranked(closest.filter_map(|(slot, (s, code))| {
            probes
                .iter()
                .map(|(o, p)| (slot as u32, hamming(&p.dhash, code), hamming(&p.phash, &s.phash), *o))
                .filter(|(_, d, _, _)| *d <= radius)
                .min_by_key(|(_, d, _, _)| *d)
        }))
    }

    /// The `k` closest drawings by [`rank`], each in its best orientation:
    /// a full scan up to SCAN_LIMIT drawings, MIH lookups beyond.
    pub fn shortlist(&self, probes: &[(Orientation, Hashes)], k: usize) -> (Vec<Candidate>, &'static str) {
        let (mut found, method) = if self.len() <= SCAN_LIMIT {
            (self.scan_ranked(probes), "scan")
        } else {
            (self.candidates(probes, SHORTLIST_RADIUS), "mih")
        };
        found.sort_by(|a, b| {
            (rank(a.dhash_distance, a.phash_distance), a.dhash_distance)
                .cmp(&(rank(b.dhash_distance, b.phash_distance), b.dhash_distance))
                .then_with(|| a.drawing_id.cmp(&b.drawing_id))
        });
        found.truncate(k);
        (found, method)
    }

    fn scan_ranked(&self, probes: &[(Orientation, Hashes)]) -> Vec<Candidate> {
        let alive = self
            .slots
            .iter()
            .zip(&self.codes)
            .enumerate()
            .filter(|(_, (s, _))| s.alive);
        self.ranked(alive.filter_map(|(slot, (s, code))| {
            probes
                .iter()
                .map(|(o, p)| (slot as u32, hamming(&p.dhash, code), hamming(&p.phash, &s.phash), *o))
                .min_by_key(|(_, d, p, _)| (rank(*d, *p), *d))
        }))
    }

    /// Closest first; ties by pHash distance, then id, so answers are stable.
    fn ranked(&self, found: impl Iterator<Item = (u32, u32, u32, Orientation)>) -> Vec<Candidate> {
        let mut found: Vec<Candidate> = found
            .map(|(slot, d, p, orientation)| Candidate {
                drawing_id: self.slots[slot as usize].id.clone(),
                orientation,
                dhash_distance: d,
                phash_distance: p,
            })
            .collect();
        found.sort_by(|a, b| {
            (a.dhash_distance, a.phash_distance)
                .cmp(&(b.dhash_distance, b.phash_distance))
                .then_with(|| a.drawing_id.cmp(&b.drawing_id))
        });
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn hash(&mut self) -> Hash256 {
            [self.next(), self.next(), self.next(), self.next()]
        }

        fn flip(&mut self, code: &Hash256, bits: u32) -> Hash256 {
            let mut out = *code;
            let mut flipped = std::collections::HashSet::new();
            while flipped.len() < bits as usize {
                let bit = (self.next() % 256) as usize;
                if flipped.insert(bit) {
                    out[bit / 64] ^= 1 << (bit % 64);
                }
            }
            out
        }
    }

    fn hashes(dhash: Hash256) -> Hashes {
        Hashes { dhash, phash: [0; 4] }
    }

    #[test]
    fn lookups_find_exactly_what_a_scan_finds() {
        let mut rng = Rng(0x9e3779b97f4a7c15);
        let mut index = HashIndex::default();
        let anchors: Vec<Hash256> = (0..50).map(|_| rng.hash()).collect();
        for i in 0..5000 {
            let base = anchors[i % anchors.len()];
            let code = rng.flip(&base, (i % 40) as u32);
            index.insert(&format!("d{i}"), hashes(code));
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
        index.insert("a", hashes(stored));
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
        let mut index = HashIndex::default();
        let codes: Vec<Hash256> = (0..100).map(|_| rng.hash()).collect();
        for (i, code) in codes.iter().enumerate() {
            index.insert(&format!("d{i}"), hashes(*code));
        }
        for i in 0..60 {
            assert!(index.remove(&format!("d{i}")));
        }
        assert!(!index.remove("d0"));
        assert_eq!(index.len(), 40);
        for (i, code) in codes.iter().enumerate() {
            let found = index.candidates(&[(Orientation::IDENTITY, hashes(*code))], 0);
            assert_eq!(found.len(), usize::from(i >= 60), "d{i}");
        }
        index.insert("d99", hashes(codes[0]));
        assert!(
            index
                .candidates(&[(Orientation::IDENTITY, hashes(codes[99]))], 0)
                .is_empty()
        );
        assert_eq!(
            index.candidates(&[(Orientation::IDENTITY, hashes(codes[0]))], 0)[0].drawing_id,
            "d99"
        );
    }
}
