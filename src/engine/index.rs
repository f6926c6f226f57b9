//! A tenant's in-memory index and the search that runs against it, level by
//! level. The index holds what every search reads (exact-hash maps for L1,
//! the L2 hash index); what only a few candidates need (L3 thumbnails, L4
//! drawings) the caller fetches between steps of a [`Search`], so the index
//! stays small and the engine never does IO.

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;

use super::fine::Fine;
use super::l2::{Candidate, HashIndex, rank};
use super::raster::Orientation;
use super::slots::{Ids, Keyed, room_for};
use super::verify::{Prepared, Thumbnail, Verification, verify_aligned_prepared, verify_detail, verify_prepared};
use super::{Features, Fingerprint, Mode, Probe, SearchParams, SearchResult, Verdict, verdict};

/// L2 candidates that L3 verifies. Verifying costs microseconds; what
/// limits this is fetching their thumbnails.
pub const VERIFY_TOP: usize = 64;

/// A tenant's drawings as searches read them, a slot each: the slot
/// numbers a drawing in every per-drawing array here and in the L2 index.
/// Removal leaves a dead slot until a quarter are dead; then compaction
/// renumbers the live ones, so a delete stays O(1) amortised.
///
/// Only what every search reads is here: file names and full hashes stay
/// in the store, read for the few drawings a result reports ([`Details`]).
#[derive(Debug, Default, Clone)]
pub struct Index {
    ids: Ids,
    /// A bit per slot whose drawing is in the index.
    alive: Vec<u64>,
    live: usize,
    /// L1 by [`l1_key`] of the file's sha256 and of a DXF's geometry hash;
    /// [`Search::finish`] confirms a hit against the stored hash.
    by_hash: Keyed,
    by_geometry: Keyed,
    /// Longer side of each drawing's ink box, 0 without ink: the scale of
    /// a match.
    extents: Vec<f64>,
    l2: HashIndex,
    /// Drawings stored before their L2 features existed.
    without_ink: usize,
}

/// What a result reports of a library drawing beyond the index, read from
/// the store for its matches only.
#[derive(Debug, Clone, PartialEq)]
pub struct Details {
    pub file_name: String,
    pub file_hash: String,
    pub geometry_hash: Option<String>,
}

impl Details {
    pub fn new(file_name: &str, features: &Features) -> Details {
        Details {
            file_name: file_name.to_string(),
            file_hash: features.file_hash.clone(),
            geometry_hash: features.geometry_hash.clone(),
        }
    }
}

/// An exact hash's L1 key: SipHash with fixed keys, the same for queries
/// and drawings in a process (the index is never persisted). The hashes
/// are sha256 hex, so nobody can aim collisions at the key, and the stored
/// hash weeds out the chance ones.
fn l1_key(hash: &str) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    hash.hash(&mut hasher);
    hasher.finish()
}

/// The length of the ids the service makes (a uuid in hex).
const ID_BYTES: usize = 32;

impl Index {
    /// An empty index with room for `drawings`: loading a library then does
    /// not grow every array an eighth at a time, each time a copy and a
    /// hole the allocator keeps (at 1M drawings, about 25 bytes a drawing
    /// of resident memory). Hash tables still grow as they fill.
    pub fn with_capacity(drawings: usize) -> Index {
        Index {
            ids: Ids::with_capacity(drawings, drawings * ID_BYTES),
            alive: Vec::with_capacity(drawings.div_ceil(64)),
            by_hash: Keyed::with_capacity(drawings),
            extents: Vec::with_capacity(drawings),
            l2: HashIndex::with_capacity(drawings),
            ..Index::default()
        }
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub fn contains(&self, drawing_id: &str) -> bool {
        self.ids.find(drawing_id).is_some()
    }

    /// Adds a drawing, or replaces the one with its id.
    pub fn insert(&mut self, drawing_id: &str, features: &Features) {
        self.remove(drawing_id);
        self.live += 1;
        let slot = self.ids.push(drawing_id, self.live);
        let at = slot as usize;
        if at.is_multiple_of(64) {
            room_for(&mut self.alive, 1);
            self.alive.push(0);
        }
        self.alive[at / 64] |= 1 << (at % 64);
        self.by_hash.insert(slot, l1_key(&features.file_hash));
        if let Some(geometry) = &features.geometry_hash {
            self.by_geometry.insert(slot, l1_key(geometry));
        }
        room_for(&mut self.extents, 1);
        self.extents.push(features.ink.map_or(0.0, |ink| ink.extent));
        let l2_slot = self.l2.push(features.ink.map(|ink| ink.hashes()));
        debug_assert_eq!(l2_slot, slot, "one numbering of slots");
        self.without_ink += usize::from(features.ink.is_none());
    }

    /// False if no drawing has this id.
    pub fn remove(&mut self, drawing_id: &str) -> bool {
        let Some(slot) = self.ids.take(drawing_id) else {
            return false;
        };
        let at = slot as usize;
        self.alive[at / 64] &= !(1 << (at % 64));
        self.live -= 1;
        self.by_hash.remove(slot);
        self.by_geometry.remove(slot);
        if !self.l2.remove(slot) {
            self.without_ink -= 1;
        }
        let slots = self.extents.len();
        if (slots - self.live) * 4 > slots {
            self.compact();
        }
        true
    }

    /// Renumbers the live slots from 0 everywhere.
    fn compact(&mut self) {
        let kept: Vec<u32> = (0..self.extents.len() as u32).filter(|&s| self.is_alive(s)).collect();
        self.ids = self.ids.kept(&kept);
        self.by_hash = self.by_hash.kept(&kept);
        self.by_geometry = self.by_geometry.kept(&kept);
        self.extents = kept.iter().map(|&s| self.extents[s as usize]).collect();
        self.alive = vec![0; kept.len().div_ceil(64)];
        for slot in 0..kept.len() {
            self.alive[slot / 64] |= 1 << (slot % 64);
        }
        self.l2.retain(&kept);
    }

    fn id(&self, slot: u32) -> &str {
        self.ids.get(slot)
    }

    fn is_alive(&self, slot: u32) -> bool {
        let slot = slot as usize;
        self.alive[slot / 64] >> (slot % 64) & 1 == 1
    }

    /// Heap bytes held, by capacities (the allocator's headers and rounding
    /// are not counted). A search allocates besides, and frees it.
    pub fn heap_bytes(&self) -> usize {
        self.ids.bytes()
            + 8 * (self.alive.capacity() + self.extents.capacity())
            + self.by_hash.bytes()
            + self.by_geometry.bytes()
            + self.l2.heap_bytes()
    }
}

/// How a library drawing relates to the query.
#[derive(Debug, Clone)]
struct Found {
    slot: u32,
    orientation: Orientation,
    exact: Option<Exact>,
    l2: Option<(u32, u32)>,
    l3: Option<Verification>,
    l4: Option<Fine>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exact {
    Bytes,
    Geometry,
}

/// What a match says about how the query maps onto the library drawing:
/// mirror left-right first (if `mirrored`), then turn `rotation` degrees
/// clockwise, then the query's ink is `scale` times the drawing's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct Transform {
    pub rotation: u16,
    pub mirrored: bool,
    /// Absent when one is a DXF and the other a raster (no common unit).
    pub scale: Option<f64>,
}

/// One search, run in steps: [`Search::new`] does L1 and L2; the caller
/// fetches [`Search::wants_thumbnails`] for [`Search::verify`] (L3), then
/// [`Search::wants_drawings`] for [`Search::refine`] (L4), then
/// [`Search::wants_details`] for [`Search::finish`]. A step with nothing
/// wanted is skipped.
pub struct Search<'a> {
    index: &'a Index,
    query: &'a Fingerprint,
    probes: &'a [Probe],
    params: SearchParams,
    found: Vec<Found>,
    timing: serde_json::Map<String, serde_json::Value>,
    level_stats: serde_json::Map<String, serde_json::Value>,
    final_level: u8,
}

impl<'a> Search<'a> {
    pub fn new(index: &'a Index, query: &'a Fingerprint, probes: &'a [Probe], params: &SearchParams) -> Search<'a> {
        let mut search = Search {
            index,
            query,
            probes,
            params: params.clone(),
            found: Vec::new(),
            timing: serde_json::Map::new(),
            level_stats: serde_json::Map::new(),
            final_level: 1,
        };
        let started = Instant::now();
        search.exact();
        search.time("l1_ms", started);
        if !probes.is_empty() {
            let started = Instant::now();
            search.candidates();
            search.time("l2_ms", started);
        }
        search
    }

    fn exact(&mut self) {
        let features = &self.query.features;
        let index = self.index;
        let by_bytes = index.by_hash.slots(l1_key(&features.file_hash));
        let by_geometry = features
            .geometry_hash
            .iter()
            .flat_map(|g| index.by_geometry.slots(l1_key(g)));
        for (slot, kind) in by_bytes
            .map(|slot| (slot, Exact::Bytes))
            .chain(by_geometry.map(|slot| (slot, Exact::Geometry)))
        {
            if !self.found.iter().any(|f| f.slot == slot) {
                self.found.push(Found {
                    slot,
                    orientation: Orientation::IDENTITY,
                    exact: Some(kind),
                    l2: None,
                    l3: None,
                    l4: None,
                });
            }
        }
        self.level_stats.insert(
            "l1".into(),
            serde_json::json!({"library_size": self.index.len(), "candidates": self.found.len()}),
        );
    }

    fn candidates(&mut self) {
        let k = match self.params.mode {
            Mode::Fast => self.params.max_results.max(VERIFY_TOP),
            _ => VERIFY_TOP,
        };
        let mut method = "scan";
        let mut all: Vec<Candidate> = Vec::new();
        let frames = self.probes.iter().map(|p| p.frame).max().map_or(0, |f| f + 1);
        for frame in 0..frames {
            let probes: Vec<_> = self
                .probes
                .iter()
                .filter(|p| p.frame == frame)
                .map(|p| (p.orientation, p.hashes))
                .collect();
            let (mut shortlist, used) = self.index.l2.shortlist(&probes, k + self.found.len());
            // L2 leaves ties for the last places to us: by id, so the
            // answer does not depend on the order drawings were added in.
            shortlist.sort_by(|a, b| {
                closeness(a)
                    .cmp(&closeness(b))
                    .then_with(|| self.index.id(a.slot).cmp(self.index.id(b.slot)))
            });
            shortlist.truncate(k + self.found.len());
            method = used;
            all.extend(shortlist);
        }
        // Each drawing once, through the frame that ranks it closest.
        all.sort_by_key(closeness);
        let mut fresh: Vec<Candidate> = Vec::new();
        for c in all {
            let known = self.found.iter().any(|f| f.slot == c.slot) || fresh.iter().any(|f| f.slot == c.slot);
            if !known && fresh.len() < k {
                fresh.push(c);
            }
        }
        self.level_stats.insert(
            "l2".into(),
            serde_json::json!({
                "method": method,
                "indexed": self.index.l2.len(),
                "candidates": fresh.len(),
            }),
        );
        self.final_level = 2;
        self.found.extend(fresh.into_iter().map(|c| Found {
            slot: c.slot,
            orientation: c.orientation,
            exact: None,
            l2: Some((c.dhash_distance, c.phash_distance)),
            l3: None,
            l4: None,
        }));
    }

    /// Drawings whose thumbnails L3 needs; empty in `fast` mode.
    pub fn wants_thumbnails(&self) -> Vec<String> {
        if self.params.mode == Mode::Fast {
            return Vec::new();
        }
        self.found
            .iter()
            .filter(|f| f.l2.is_some())
            .map(|f| self.index.id(f.slot).to_string())
            .collect()
    }

    /// L3: each candidate against the query in whichever orientation and
    /// frame explains it best. A candidate without a thumbnail keeps its
    /// L2 score.
    pub fn verify(&mut self, thumbnails: &HashMap<String, Thumbnail>) {
        let started = Instant::now();
        let mut verified = 0;
        let index = self.index;
        // Each probe's grid and each candidate's is prepared (dilated) once,
        // not once a pair.
        let mut prepared: Vec<Prepared> = Vec::new();
        for found in self.found.iter_mut().filter(|f| f.l2.is_some()) {
            let Some(thumbnail) = thumbnails.get(index.id(found.slot)) else {
                continue;
            };
            if prepared.is_empty() {
                prepared = self.probes.iter().map(|p| Prepared::new(&p.thumbnail)).collect();
            }
            let candidate = Prepared::new(thumbnail);
            // Every orientation, not only L2's pick: a nearly symmetric
            // drawing can hash closer turned the wrong way.
            // Ties keep the earlier probe: as is, unturned, whole frame.
            let best = self
                .probes
                .iter()
                .zip(&prepared)
                .map(|(p, q)| (p, verify_prepared(q, &candidate, f64::from(p.dropped))))
                .reduce(|best, next| {
                    if next.1.similarity > best.1.similarity {
                        next
                    } else {
                        best
                    }
                });
            if let Some((probe, _)) = best {
                found.orientation = probe.orientation;
                let dropped = f64::from(probe.dropped);
                let coarse = verify_aligned_prepared(&probe.thumbnail, &candidate, dropped);
                // Only a duplicate needs the detail grid's word: it tells a
                // copy from a look-alike, which the coarse grid cannot.
                let detail = (coarse.similarity >= self.params.duplicate_threshold)
                    .then(|| verify_detail(&probe.thumbnail, thumbnail, dropped))
                    .flatten();
                found.l3 = Some(match detail {
                    Some(d) if d.similarity < coarse.similarity => d,
                    _ => coarse,
                });
                verified += 1;
            }
        }
        self.level_stats
            .insert("l3".into(), serde_json::json!({ "verified": verified }));
        self.final_level = 3;
        self.time("l3_ms", started);
    }

    /// With their orientation: drawings L4 compares in `precise` mode, the
    /// `precision_top_n` best verified candidates that reach the similar
    /// threshold (exact duplicates need no finer look).
    pub fn wants_drawings(&self) -> Vec<(String, Orientation)> {
        if self.params.mode != Mode::Precise || !self.params.enable_precision {
            return Vec::new();
        }
        let mut verified: Vec<&Found> = self
            .found
            .iter()
            .filter(|f| f.exact.is_none() && similarity(f) >= self.params.similar_threshold)
            .collect();
        verified.sort_by(|a, b| similarity(b).total_cmp(&similarity(a)));
        verified
            .into_iter()
            .take(self.params.precision_top_n)
            .map(|f| (self.index.id(f.slot).to_string(), f.orientation))
            .collect()
    }

    /// L4 results, by drawing id; the caller measured `elapsed_ms`.
    pub fn refine(&mut self, fines: HashMap<String, Fine>, elapsed_ms: f64) {
        let refined = fines.len();
        for found in &mut self.found {
            if let Some(fine) = fines.get(self.index.id(found.slot)) {
                found.l4 = Some(fine.clone());
            }
        }
        self.level_stats
            .insert("l4".into(), serde_json::json!({ "refined": refined }));
        self.final_level = 4;
        self.timing.insert("l4_ms".into(), round_ms(elapsed_ms));
    }

    /// Adds a step the caller timed (storage reads, say) to `timing`.
    pub fn add_time(&mut self, name: &str, ms: f64) {
        self.timing.insert(name.into(), round_ms(ms));
    }

    /// The drawings a result reports, best first: the caller fetches their
    /// stored [`Details`] for [`Search::finish`].
    pub fn wants_details(&self) -> Vec<String> {
        self.reported()
            .iter()
            .map(|f| self.index.id(f.slot).to_string())
            .collect()
    }

    /// Everything found that reaches the similar threshold, best first, at
    /// most `max_results`.
    fn reported(&self) -> Vec<&Found> {
        let mut reported: Vec<&Found> = self
            .found
            .iter()
            .filter(|f| verdict(similarity(f), &self.params) != Verdict::Different)
            .collect();
        reported.sort_by(|a, b| {
            round(similarity(b))
                .total_cmp(&round(similarity(a)))
                .then(level(b).cmp(&level(a)))
                .then_with(|| self.index.id(a.slot).cmp(self.index.id(b.slot)))
        });
        reported.truncate(self.params.max_results);
        reported
    }

    /// `details` are those of [`Search::wants_details`] that the store
    /// still has: a drawing deleted since the search began is left out,
    /// and so is an L1 hit that its stored hash does not confirm.
    /// `fingerprint_ms` is the caller's measured time to read the query.
    pub fn finish(mut self, details: &HashMap<String, Details>, fingerprint_ms: f64) -> SearchResult {
        let matches: Vec<super::Match> = self
            .reported()
            .into_iter()
            .filter_map(|found| {
                let details = details.get(self.index.id(found.slot))?;
                self.confirms(found, details).then(|| self.to_match(found, details))
            })
            .collect();
        let (duplicates, similar): (Vec<_>, Vec<_>) =
            matches.into_iter().partition(|m| m.verdict == Verdict::Duplicate);
        let total_ms = fingerprint_ms + self.timing.values().filter_map(serde_json::Value::as_f64).sum::<f64>();
        self.timing.insert("fingerprint_ms".into(), round_ms(fingerprint_ms));
        self.timing.insert("total_ms".into(), round_ms(total_ms));
        let warnings = self.warnings();
        SearchResult {
            success: true,
            total_matches: duplicates.len() + similar.len(),
            duplicates,
            similar,
            final_level: self.final_level,
            timing: self.timing,
            level_stats: serde_json::Value::Object(self.level_stats),
            warnings,
            error: None,
        }
    }

    /// Whether the stored hashes agree with an L1 hit, which the index
    /// found by a 64-bit key.
    fn confirms(&self, found: &Found, details: &Details) -> bool {
        let query = &self.query.features;
        match found.exact {
            Some(Exact::Bytes) => details.file_hash == query.file_hash,
            Some(Exact::Geometry) => details.geometry_hash == query.geometry_hash,
            None => true,
        }
    }

    fn to_match(&self, found: &Found, details: &Details) -> super::Match {
        let similarity = similarity(found);
        let level = level(found);
        let mut levels = serde_json::Map::new();
        if let Some(kind) = found.exact {
            levels.insert(
                "l1".into(),
                serde_json::json!({"exact_bytes": kind == Exact::Bytes, "same_geometry": kind == Exact::Geometry, "similarity": 1.0}),
            );
        }
        if let Some((d, p)) = found.l2 {
            levels.insert(
                "l2".into(),
                serde_json::json!({"dhash_distance": d, "phash_distance": p, "similarity": round(l2_similarity(d, p))}),
            );
        }
        if let Some(v) = &found.l3 {
            levels.insert(
                "l3".into(),
                serde_json::json!({
                    "query_covered": round(v.query_covered),
                    "candidate_covered": round(v.candidate_covered),
                    "similarity": round(v.similarity),
                }),
            );
        }
        if let Some(fine) = &found.l4 {
            levels.insert(
                "l4".into(),
                serde_json::json!({
                    "query_covered": round(fine.query_covered),
                    "candidate_covered": round(fine.candidate_covered),
                    "similarity": round(fine.similarity),
                }),
            );
        }
        super::Match {
            drawing_id: self.index.id(found.slot).to_string(),
            file_hash: details.file_hash.clone(),
            file_name: details.file_name.clone(),
            similarity: round(similarity),
            confidence: round(confidence(level, similarity)),
            match_level: level,
            verdict: verdict(similarity, &self.params),
            levels: serde_json::Value::Object(levels),
            transform: Some(self.transform(found)),
            diff_regions: found.l4.as_ref().map(|f| f.diff_regions.clone()),
        }
    }

    fn transform(&self, found: &Found) -> Transform {
        let query = &self.query.features;
        let same_kind = query.geometry_hash.is_some() == self.index.by_geometry.contains(found.slot);
        // 0 for a drawing without ink, which has no scale either.
        let extent = self.index.extents[found.slot as usize];
        let scale = match &query.ink {
            Some(q) if same_kind && extent > 0.0 => Some(round(q.extent / extent)),
            _ if found.exact == Some(Exact::Bytes) => Some(1.0),
            _ => None,
        };
        Transform {
            rotation: found.orientation.rotation_degrees(),
            mirrored: found.orientation.mirrored,
            scale,
        }
    }

    fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.probes.is_empty() {
            warnings.push("the drawing has no ink; only exact duplicates were searched".into());
        }
        if self.index.without_ink > 0 {
            warnings.push(format!(
                "{} library drawings were stored before near-duplicate features existed and match exactly only; \
                 POST /2d/index/rebuild computes them",
                self.index.without_ink
            ));
        }
        warnings
    }

    fn time(&mut self, name: &str, started: Instant) {
        self.add_time(name, started.elapsed().as_secs_f64() * 1000.0);
    }
}

fn closeness(c: &Candidate) -> (u32, u32) {
    (rank(c.dhash_distance, c.phash_distance), c.dhash_distance)
}

/// The similarity of the highest level that looked at this drawing; L4
/// can lower L3's score but not raise it, so
/// `precise` never calls a duplicate what `balanced` does not.
fn similarity(found: &Found) -> f64 {
    let l3 = found.l3.map(|v| v.similarity);
    if found.exact.is_some() {
        1.0
    } else if let Some(fine) = &found.l4 {
        l3.map_or(fine.similarity, |l3| l3.min(fine.similarity))
    } else if let Some(v) = l3 {
        v
    } else {
        found.l2.map_or(0.0, |(d, p)| l2_similarity(d, p))
    }
}

fn level(found: &Found) -> u8 {
    match found {
        Found { exact: Some(_), .. } => 1,
        Found { l4: Some(_), .. } => 4,
        Found { l3: Some(_), .. } => 3,
        _ => 2,
    }
}

/// Hash distances as a similarity, so `fast` mode shares the thresholds:
/// dHash ≤ 5 or pHash ≤ 45 (the pair that keeps distinct drawings' false
/// positives at 0.1%, per `dedup2d calibrate`) reaches 0.95; twice those
/// distances reach 0.80.
pub fn l2_similarity(dhash_distance: u32, phash_distance: u32) -> f64 {
    let of = |distance: u32, at_095: f64| 1.0 - 0.05 * (f64::from(distance) / at_095).powi(2);
    of(dhash_distance, 5.0).max(of(phash_distance, 45.0)).clamp(0.0, 1.0)
}

/// How far a similarity can be trusted: exact and geometric comparisons
/// fully, raster verification a little less, hashes least.
fn confidence(level: u8, similarity: f64) -> f64 {
    let weight = match level {
        1 | 4 => 1.0,
        3 => 0.95,
        _ => 0.8,
    };
    weight * similarity
}

fn round(v: f64) -> f64 {
    (v * 10_000.0).round() / 10_000.0
}

fn round_ms(ms: f64) -> serde_json::Value {
    serde_json::json!((ms * 1000.0).round() / 1000.0)
}

#[cfg(test)]
mod tests {
    use image::{DynamicImage, GrayImage, Luma, imageops};

    use super::*;
    use crate::engine::testing::{Rng, png};
    use crate::engine::{Format, InkFeatures, Limits, Query, fingerprint, query, query_image};

    /// A random line drawing: a frame, and strokes placed by the seed.
    fn drawing(seed: u64, size: u32) -> GrayImage {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 1000) as f64 / 1000.0
        };
        let mut image = GrayImage::from_pixel(size, size * 3 / 4, Luma([255]));
        let (w, h) = (f64::from(image.width()), f64::from(image.height()));
        let mut stroke = |x0: f64, y0: f64, x1: f64, y1: f64| {
            let steps = ((x1 - x0).abs().max((y1 - y0).abs()) * w).ceil().max(1.0) as u32;
            for i in 0..=steps {
                let t = f64::from(i) / f64::from(steps);
                let (x, y) = ((x0 + (x1 - x0) * t) * (w - 1.0), (y0 + (y1 - y0) * t) * (h - 1.0));
                image.put_pixel(x as u32, y as u32, Luma([0]));
            }
        };
        for (a, b, c, d) in [
            (0.1, 0.1, 0.9, 0.1),
            (0.9, 0.1, 0.9, 0.9),
            (0.9, 0.9, 0.1, 0.9),
            (0.1, 0.9, 0.1, 0.1),
        ] {
            stroke(a, b, c, d);
        }
        for _ in 0..8 {
            let (x0, y0, x1, y1) = (next(), next(), next(), next());
            stroke(0.1 + 0.8 * x0, 0.1 + 0.8 * y0, 0.1 + 0.8 * x1, 0.1 + 0.8 * y1);
        }
        image
    }

    /// An index and what a store keeps beside it.
    #[derive(Default)]
    struct Library {
        index: Index,
        features: HashMap<String, Features>,
        thumbnails: HashMap<String, Thumbnail>,
    }

    impl Library {
        fn new(files: &[(&str, Vec<u8>)]) -> Library {
            let mut library = Library::default();
            for (id, bytes) in files {
                let fingerprint = fingerprint(bytes, Limits::default()).unwrap();
                if let Some(t) = fingerprint.thumbnail {
                    library.thumbnails.insert(id.to_string(), t);
                }
                library.insert(id, fingerprint.features);
            }
            library
        }

        fn insert(&mut self, id: &str, features: Features) {
            self.index.insert(id, &features);
            self.features.insert(id.to_string(), features);
        }

        fn remove(&mut self, id: &str) {
            assert_eq!(self.index.remove(id), self.features.remove(id).is_some());
        }

        fn search(&self, query: &Query, mode: Mode) -> SearchResult {
            self.search_probes(&query.fingerprint, &query.probes, mode)
        }

        /// As `library::Library::search` runs the steps, with this
        /// library's features as the store's.
        fn search_probes(&self, query: &Fingerprint, probes: &[Probe], mode: Mode) -> SearchResult {
            let params = SearchParams {
                mode,
                ..SearchParams::default()
            };
            let mut search = Search::new(&self.index, query, probes, &params);
            if !search.wants_thumbnails().is_empty() {
                search.verify(&self.thumbnails);
            }
            let details: HashMap<String, Details> = search
                .wants_details()
                .into_iter()
                .filter_map(|id| {
                    let details = Details::new(&format!("{id}.file"), self.features.get(&id)?);
                    Some((id, details))
                })
                .collect();
            search.finish(&details, 0.0)
        }
    }

    fn ids(result: &SearchResult) -> Vec<&str> {
        result.duplicates.iter().map(|m| m.drawing_id.as_str()).collect()
    }

    fn library_of_drawings() -> Library {
        let files: Vec<(String, Vec<u8>)> = (1..=6).map(|s| (format!("d{s}"), png(&drawing(s, 600)))).collect();
        let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(id, b)| (id.as_str(), b.clone())).collect();
        Library::new(&refs)
    }

    #[test]
    fn identical_bytes_are_an_l1_duplicate() {
        let library = library_of_drawings();
        let result = library.search(
            &query(&png(&drawing(3, 600)), Limits::default()).unwrap(),
            Mode::Balanced,
        );
        assert_eq!(ids(&result), ["d3"]);
        let found = &result.duplicates[0];
        assert_eq!(
            (found.match_level, found.similarity, found.verdict),
            (1, 1.0, Verdict::Duplicate)
        );
        assert_eq!(found.levels["l1"]["exact_bytes"], true);
        assert_eq!(result.level_stats["l2"]["method"], "scan");
    }

    #[test]
    fn the_same_geometry_in_another_dxf_file_is_an_l1_duplicate() {
        let dxf = |comment: &str| {
            format!(
                "999\n{comment}\n0\nSECTION\n2\nENTITIES\n0\nLINE\n8\n0\n10\n0\n20\n0\n11\n10\n21\n5\n0\nCIRCLE\n8\nA\n10\n3\n20\n2\n40\n1\n0\nENDSEC\n0\nEOF\n"
            )
        };
        let library = Library::new(&[("a", dxf("one").into_bytes())]);
        let result = library.search(&query(dxf("two").as_bytes(), Limits::default()).unwrap(), Mode::Fast);
        let found = &result.duplicates[0];
        assert_eq!((found.drawing_id.as_str(), found.match_level), ("a", 1));
        assert_eq!(found.levels["l1"]["same_geometry"], true);
    }

    /// Property: every orientation and rescale of a drawing finds it as a
    /// duplicate through L2 and L3, with the orientation it was turned by,
    /// and finds no other drawing.
    #[test]
    fn each_orientation_and_rescale_of_a_drawing_finds_it() {
        let library = library_of_drawings();
        for seed in [2u64, 5] {
            let original = drawing(seed, 600);
            for size in [300u32, 600, 1100] {
                let scaled = imageops::resize(&original, size, size * 3 / 4, imageops::FilterType::Triangle);
                for turns in 0..4 {
                    for mirrored in [false, true] {
                        let mut image = if mirrored {
                            imageops::flip_horizontal(&scaled)
                        } else {
                            scaled.clone()
                        };
                        for _ in 0..turns {
                            image = imageops::rotate90(&image);
                        }
                        let query = query_image(&DynamicImage::ImageLuma8(image), "q");
                        let result = library.search(&query, Mode::Balanced);
                        let case = format!("seed {seed} size {size} turns {turns} mirrored {mirrored}");
                        assert_eq!(ids(&result), [format!("d{seed}")], "{case}: {result:?}");
                        let found = &result.duplicates[0];
                        assert_eq!(found.match_level, 3, "{case}");
                        let transform = found.transform.unwrap();
                        assert_eq!(transform.mirrored, mirrored, "{case}");
                        let scale = transform.scale.unwrap();
                        assert!((scale - f64::from(size) / 600.0).abs() < 0.05, "{case}: scale {scale}");
                    }
                }
            }
        }
    }

    #[test]
    fn fast_mode_stops_at_l2_and_unrelated_drawings_are_not_matched() {
        let library = library_of_drawings();
        let resized = imageops::resize(&drawing(4, 600), 450, 337, imageops::FilterType::Triangle);
        let q = query_image(&DynamicImage::ImageLuma8(resized), "q");
        let fast = library.search(&q, Mode::Fast);
        assert_eq!(fast.final_level, 2);
        assert!(fast.duplicates.iter().chain(&fast.similar).all(|m| m.match_level == 2));
        assert_eq!(fast.duplicates.first().map(|m| m.drawing_id.as_str()), Some("d4"));
        let stranger = query_image(&DynamicImage::ImageLuma8(drawing(99, 600)), "q");
        let result = library.search(&stranger, Mode::Balanced);
        assert!(result.duplicates.is_empty(), "{result:?}");
        assert_eq!(result.final_level, 3);
    }

    #[test]
    fn a_label_added_beside_a_drawing_leaves_it_similar_or_duplicate() {
        let library = library_of_drawings();
        let mut labelled = GrayImage::from_pixel(600, 560, Luma([255]));
        imageops::replace(&mut labelled, &drawing(3, 600), 0, 0);
        for x in 300..560 {
            for y in [520, 530] {
                labelled.put_pixel(x, y, Luma([0]));
            }
        }
        let q = query_image(&DynamicImage::ImageLuma8(labelled), "q");
        assert!(
            q.probes.iter().any(|p| p.frame > 0 && p.dropped > 0.0),
            "a frame without the label"
        );
        let result = library.search(&q, Mode::Balanced);
        let found: Vec<_> = result
            .duplicates
            .iter()
            .chain(&result.similar)
            .map(|m| m.drawing_id.as_str())
            .collect();
        assert_eq!(found, ["d3"], "{result:?}");
        assert!(
            result
                .duplicates
                .iter()
                .chain(&result.similar)
                .all(|m| m.similarity < 1.0)
        );
    }

    #[test]
    fn removed_drawings_are_not_found_and_old_features_are_reported() {
        let mut library = library_of_drawings();
        library.remove("d2");
        let q = query(&png(&drawing(2, 600)), Limits::default()).unwrap();
        assert!(library.search(&q, Mode::Balanced).duplicates.is_empty());
        let mut old = library.features["d1"].clone();
        old.ink = None;
        library.insert("old", old);
        let result = library.search(&q, Mode::Fast);
        assert!(
            result.warnings[0].contains("1 library drawings"),
            "{:?}",
            result.warnings
        );
        library.remove("old");
        assert!(library.search(&q, Mode::Fast).warnings.is_empty());
    }

    /// Features as a store holds them, made up: a DXF (with a geometry
    /// hash) every third, no ink every seventh, and a file hash from a
    /// pool of `files` so that some drawings share one.
    fn made_up(rng: &mut Rng, files: &[String]) -> Features {
        let n = rng.next();
        Features {
            file_hash: files[(n % files.len() as u64) as usize].clone(),
            format: Format::Png,
            width: None,
            height: None,
            geometry_hash: n.is_multiple_of(3).then(|| rng.hex()),
            ink: (!n.is_multiple_of(7)).then(|| InkFeatures {
                dhash: rng.hash(),
                phash: rng.hash(),
                page_dhash: rng.hash(),
                aspect: 1.0,
                extent: (n % 1000) as f64 + 0.5,
            }),
        }
    }

    /// Every live drawing's slot leads back to its id, its L1 keys, its
    /// extent and, with ink, its L2 codes; dead slots lead nowhere.
    fn assert_consistent(index: &Index, expected: &HashMap<String, Features>) {
        assert_eq!(index.len(), expected.len());
        let slots = index.extents.len() as u32;
        assert_eq!((0..slots).filter(|&s| index.is_alive(s)).count(), expected.len());
        assert_eq!(index.without_ink, expected.values().filter(|f| f.ink.is_none()).count());
        assert_eq!(index.l2.len(), expected.len() - index.without_ink);
        for (id, features) in expected {
            let slot = index.ids.find(id).unwrap_or_else(|| panic!("{id} is indexed"));
            assert!(index.is_alive(slot) && index.id(slot) == id);
            assert!(index.by_hash.slots(l1_key(&features.file_hash)).any(|s| s == slot));
            let geometry = features.geometry_hash.as_deref().map(l1_key);
            assert_eq!(index.by_geometry.contains(slot), geometry.is_some());
            assert!(geometry.is_none_or(|g| index.by_geometry.slots(g).any(|s| s == slot)));
            assert_eq!(index.extents[slot as usize], features.ink.map_or(0.0, |i| i.extent));
            if let Some(ink) = features.ink {
                let probe = [(Orientation::IDENTITY, ink.hashes())];
                let found = index.l2.candidates(&probe, 0);
                assert!(found.iter().any(|c| c.slot == slot), "{id} in L2");
            }
        }
        for slot in (0..slots).filter(|&s| !index.is_alive(s)) {
            assert!(!index.by_hash.contains(slot) && !index.by_geometry.contains(slot));
        }
        for features in expected.values() {
            for slot in index.by_hash.slots(l1_key(&features.file_hash)) {
                assert!(index.is_alive(slot));
                assert_eq!(expected[index.id(slot)].file_hash, features.file_hash);
            }
        }
    }

    #[test]
    fn inserts_replacements_and_removals_keep_slots_and_l1_maps_consistent() {
        let mut rng = Rng(0x5eed_1234);
        let files: Vec<String> = (0..150).map(|_| rng.hex()).collect();
        let mut index = Index::default();
        let mut expected = HashMap::new();
        let mut compactions = 0;
        for step in 0..6000 {
            let id = format!("drawing-{}", rng.next() % 400);
            let slots = index.extents.len();
            if rng.next().is_multiple_of(3) {
                assert_eq!(index.remove(&id), expected.remove(&id).is_some());
            } else {
                let features = made_up(&mut rng, &files);
                index.insert(&id, &features);
                expected.insert(id.clone(), features);
            }
            assert_eq!(index.contains(&id), expected.contains_key(&id));
            compactions += usize::from(index.extents.len() < slots);
            if step % 250 == 0 {
                assert_consistent(&index, &expected);
            }
        }
        assert_consistent(&index, &expected);
        assert!(compactions > 5, "{compactions} compactions");
        for id in expected.keys() {
            assert!(index.remove(id));
        }
        assert!(index.is_empty());
        assert_consistent(&index, &HashMap::new());
    }

    fn query_of(features: &Features) -> (Fingerprint, Vec<Probe>) {
        let fingerprint = Fingerprint {
            features: features.clone(),
            thumbnail: None,
            frames: Vec::new(),
        };
        let thumbnail = Thumbnail::from_bytes(&[0; 2048]).expect("a blank thumbnail");
        let probes = features.ink.iter().map(|ink| Probe {
            frame: 0,
            orientation: Orientation::IDENTITY,
            hashes: ink.hashes(),
            thumbnail: thumbnail.clone(),
            dropped: 0.0,
        });
        (fingerprint, probes.collect())
    }

    fn found(result: &SearchResult) -> Vec<(&str, u8)> {
        let all = result.duplicates.iter().chain(&result.similar);
        all.map(|m| (m.drawing_id.as_str(), m.match_level)).collect()
    }

    #[test]
    fn a_removed_drawing_is_never_returned() {
        let mut rng = Rng(77);
        let files: Vec<String> = (0..1000).map(|_| rng.hex()).collect();
        let mut library = Library::default();
        for i in 0..400 {
            library.insert(&format!("d{i}"), made_up(&mut rng, &files[..800]));
        }
        let mut target = made_up(&mut rng, &files[800..]);
        target.ink = Some(InkFeatures {
            dhash: rng.hash(),
            phash: rng.hash(),
            page_dhash: rng.hash(),
            aspect: 1.0,
            extent: 10.0,
        });
        target.geometry_hash = Some(rng.hex());
        library.insert("target", target.clone());
        library.insert("copy", target.clone());
        let (query, probes) = query_of(&target);
        let result = library.search_probes(&query, &probes, Mode::Fast);
        assert_eq!(found(&result), [("copy", 1), ("target", 1)]);
        assert_eq!(result.duplicates[0].file_name, "copy.file");
        library.remove("target");
        let mut other = target.clone();
        other.file_hash = rng.hex();
        other.geometry_hash = None;
        library.insert("near", other);
        let result = library.search_probes(&query, &probes, Mode::Fast);
        assert_eq!(found(&result), [("near", 2), ("copy", 1)]);
        library.remove("copy");
        // Compactions renumber every slot in between.
        for i in 0..300 {
            library.remove(&format!("d{i}"));
        }
        let result = library.search_probes(&query, &probes, Mode::Fast);
        assert_eq!(found(&result), [("near", 2)]);
        library.remove("near");
        assert!(found(&library.search_probes(&query, &probes, Mode::Fast)).is_empty());
    }

    #[test]
    fn ties_for_the_last_candidates_go_to_the_first_ids_whatever_the_order_added() {
        let mut rng = Rng(5);
        let mut library = Library::default();
        let file = rng.hex();
        let mut twin = made_up(&mut rng, &[file]);
        twin.ink = Some(InkFeatures {
            dhash: rng.hash(),
            phash: rng.hash(),
            page_dhash: rng.hash(),
            aspect: 1.0,
            extent: 10.0,
        });
        twin.geometry_hash = None;
        for i in (0..VERIFY_TOP + 6).rev() {
            twin.file_hash = rng.hex();
            library.insert(&format!("d{i:03}"), twin.clone());
        }
        let (query, probes) = query_of(&Features {
            file_hash: rng.hex(),
            ..twin
        });
        let result = library.search_probes(&query, &probes, Mode::Fast);
        let expected: Vec<String> = (0..50).map(|i| format!("d{i:03}")).collect();
        assert_eq!(ids(&result), expected);
    }

    #[test]
    fn matches_the_store_no_longer_has_or_does_not_confirm_are_left_out() {
        let mut rng = Rng(99);
        let mut library = Library::default();
        let file = rng.hex();
        let mut drawing = made_up(&mut rng, &[file]);
        drawing.ink = None;
        drawing.geometry_hash = Some(rng.hex());
        for id in ["a", "b", "c"] {
            library.insert(id, drawing.clone());
        }
        let (query, probes) = query_of(&drawing);
        let search = Search::new(&library.index, &query, &probes, &SearchParams::default());
        let wanted = search.wants_details();
        assert_eq!(wanted, ["a", "b", "c"]);
        let mut details: HashMap<String, Details> = wanted
            .iter()
            .map(|id| (id.clone(), Details::new(id, &drawing)))
            .collect();
        details.remove("a");
        // As if b's key had collided with the query's: its stored hash differs.
        details.get_mut("b").unwrap().file_hash = rng.hex();
        let result = search.finish(&details, 0.0);
        assert_eq!(found(&result), [("c", 1)]);
        assert_eq!(result.duplicates[0].file_name, "c");
    }
}
