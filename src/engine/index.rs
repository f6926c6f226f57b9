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
use super::verify::{Thumbnail, Verification, verify, verify_aligned};
use super::{Features, Fingerprint, Mode, Probe, SearchParams, SearchResult, Verdict, verdict};

/// L2 candidates that L3 verifies. Verifying costs microseconds; what
/// limits this is fetching their thumbnails.
pub const VERIFY_TOP: usize = 64;

/// One drawing in a tenant's index.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub drawing_id: String,
    pub file_name: String,
    pub features: Features,
}

#[derive(Debug, Default, Clone)]
pub struct Index {
    by_id: HashMap<String, Entry>,
    by_hash: HashMap<String, Vec<String>>,
    by_geometry: HashMap<String, Vec<String>>,
    l2: HashIndex,
    /// Drawings stored before their L2 features existed.
    without_ink: usize,
}

impl Index {
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Heap bytes held, by capacities: each string's and vector's own, and
    /// for a `HashMap` its buckets (capacity × 8/7, as hashbrown sizes
    /// them) × (key + value) plus a control byte each. An estimate: the
    /// allocator's headers and rounding are not counted.
    pub fn heap_bytes(&self) -> usize {
        let entries: usize = self
            .by_id
            .iter()
            .map(|(id, e)| {
                id.capacity() + e.drawing_id.capacity() + e.file_name.capacity() + features_bytes(&e.features)
            })
            .sum();
        let lists = |map: &HashMap<String, Vec<String>>| -> usize {
            let ids: usize = map
                .iter()
                .map(|(k, v)| {
                    k.capacity()
                        + std::mem::size_of::<String>() * v.capacity()
                        + v.iter().map(String::capacity).sum::<usize>()
                })
                .sum();
            map_bytes(map) + ids
        };
        map_bytes(&self.by_id) + entries + lists(&self.by_hash) + lists(&self.by_geometry) + self.l2.heap_bytes()
    }

    pub fn contains(&self, drawing_id: &str) -> bool {
        self.by_id.contains_key(drawing_id)
    }

    pub fn insert(&mut self, entry: Entry) {
        self.remove(&entry.drawing_id);
        let id = &entry.drawing_id;
        self.by_hash
            .entry(entry.features.file_hash.clone())
            .or_default()
            .push(id.clone());
        if let Some(geometry) = &entry.features.geometry_hash {
            self.by_geometry.entry(geometry.clone()).or_default().push(id.clone());
        }
        match &entry.features.ink {
            Some(ink) => self.l2.insert(id, ink.hashes()),
            None => self.without_ink += 1,
        }
        self.by_id.insert(id.clone(), entry);
    }

    pub fn remove(&mut self, drawing_id: &str) -> Option<Entry> {
        let entry = self.by_id.remove(drawing_id)?;
        let features = &entry.features;
        unlist(&mut self.by_hash, &features.file_hash, drawing_id);
        if let Some(geometry) = &features.geometry_hash {
            unlist(&mut self.by_geometry, geometry, drawing_id);
        }
        if !self.l2.remove(drawing_id) {
            self.without_ink -= 1;
        }
        Some(entry)
    }
}

fn features_bytes(features: &Features) -> usize {
    features.file_hash.capacity() + features.geometry_hash.as_ref().map_or(0, String::capacity)
}

fn map_bytes<K, V>(map: &HashMap<K, V>) -> usize {
    let capacity = map.capacity();
    let buckets = if capacity < 8 {
        capacity + usize::from(capacity > 0)
    } else {
        capacity / 7 * 8
    };
    buckets * (std::mem::size_of::<K>() + std::mem::size_of::<V>() + 1)
}

fn unlist(map: &mut HashMap<String, Vec<String>>, key: &str, drawing_id: &str) {
    if let Some(ids) = map.get_mut(key) {
        ids.retain(|id| id != drawing_id);
        if ids.is_empty() {
            map.remove(key);
        }
    }
}

/// How a library drawing relates to the query.
#[derive(Debug, Clone)]
struct Found {
    drawing_id: String,
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
/// [`Search::wants_drawings`] for [`Search::refine`] (L4), then calls
/// [`Search::finish`]. A step with nothing wanted is skipped.
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
        let by_bytes = self.index.by_hash.get(&features.file_hash).into_iter().flatten();
        let by_geometry = features
            .geometry_hash
            .as_ref()
            .and_then(|g| self.index.by_geometry.get(g))
            .into_iter()
            .flatten();
        for (id, kind) in by_bytes
            .map(|id| (id, Exact::Bytes))
            .chain(by_geometry.map(|id| (id, Exact::Geometry)))
        {
            if !self.found.iter().any(|f| &f.drawing_id == id) {
                self.found.push(Found {
                    drawing_id: id.clone(),
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
            let (shortlist, used) = self.index.l2.shortlist(&probes, k + self.found.len());
            method = used;
            all.extend(shortlist);
        }
        // Each drawing once, through the frame that ranks it closest.
        all.sort_by_key(|c| (rank(c.dhash_distance, c.phash_distance), c.dhash_distance));
        let mut fresh: Vec<Candidate> = Vec::new();
        for c in all {
            let known = self.found.iter().any(|f| f.drawing_id == c.drawing_id)
                || fresh.iter().any(|f| f.drawing_id == c.drawing_id);
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
            drawing_id: c.drawing_id,
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
            .map(|f| f.drawing_id.clone())
            .collect()
    }

    /// L3: each candidate against the query in whichever orientation and
    /// frame explains it best. A candidate without a thumbnail keeps its
    /// L2 score.
    pub fn verify(&mut self, thumbnails: &HashMap<String, Thumbnail>) {
        let started = Instant::now();
        let mut verified = 0;
        for found in self.found.iter_mut().filter(|f| f.l2.is_some()) {
            let Some(thumbnail) = thumbnails.get(&found.drawing_id) else {
                continue;
            };
            // Every orientation, not only L2's pick: a nearly symmetric
            // drawing can hash closer turned the wrong way.
            // Ties keep the earlier probe: as is, unturned, whole frame.
            let best = self
                .probes
                .iter()
                .map(|p| (p, verify(&p.thumbnail, thumbnail, f64::from(p.dropped))))
                .reduce(|best, next| {
                    if next.1.similarity > best.1.similarity {
                        next
                    } else {
                        best
                    }
                });
            if let Some((probe, _)) = best {
                found.orientation = probe.orientation;
                found.l3 = Some(verify_aligned(&probe.thumbnail, thumbnail, f64::from(probe.dropped)));
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
            .map(|f| (f.drawing_id.clone(), f.orientation))
            .collect()
    }

    /// L4 results, by drawing id; the caller measured `elapsed_ms`.
    pub fn refine(&mut self, fines: HashMap<String, Fine>, elapsed_ms: f64) {
        let refined = fines.len();
        for found in &mut self.found {
            if let Some(fine) = fines.get(&found.drawing_id) {
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

    /// `fingerprint_ms` is the caller's measured time to read the query.
    pub fn finish(mut self, fingerprint_ms: f64) -> SearchResult {
        let params = self.params.clone();
        let mut matches: Vec<super::Match> = self
            .found
            .iter()
            .map(|f| self.to_match(f))
            .filter(|m| m.verdict != Verdict::Different)
            .collect();
        matches.sort_by(|a, b| {
            b.similarity
                .total_cmp(&a.similarity)
                .then(b.match_level.cmp(&a.match_level))
                .then_with(|| a.drawing_id.cmp(&b.drawing_id))
        });
        matches.truncate(params.max_results);
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

    fn to_match(&self, found: &Found) -> super::Match {
        let entry = &self.index.by_id[&found.drawing_id];
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
            drawing_id: entry.drawing_id.clone(),
            file_hash: entry.features.file_hash.clone(),
            file_name: entry.file_name.clone(),
            similarity: round(similarity),
            confidence: round(confidence(level, similarity)),
            match_level: level,
            verdict: verdict(similarity, &self.params),
            levels: serde_json::Value::Object(levels),
            transform: Some(self.transform(found, &entry.features)),
            diff_regions: found.l4.as_ref().map(|f| f.diff_regions.clone()),
        }
    }

    fn transform(&self, found: &Found, drawing: &Features) -> Transform {
        let query = &self.query.features;
        let same_kind = query.geometry_hash.is_some() == drawing.geometry_hash.is_some();
        let scale = match (&query.ink, &drawing.ink) {
            (Some(q), Some(d)) if same_kind && d.extent > 0.0 => Some(round(q.extent / d.extent)),
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

/// The similarity of the highest level that looked at this drawing.
fn similarity(found: &Found) -> f64 {
    if found.exact.is_some() {
        1.0
    } else if let Some(fine) = &found.l4 {
        fine.similarity
    } else if let Some(v) = &found.l3 {
        v.similarity
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
    use crate::engine::{Limits, Query, fingerprint, query, query_image};

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

    fn png(image: &GrayImage) -> Vec<u8> {
        let mut out = Vec::new();
        image
            .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    struct Library {
        index: Index,
        thumbnails: HashMap<String, Thumbnail>,
    }

    impl Library {
        fn new(files: &[(&str, Vec<u8>)]) -> Library {
            let mut library = Library {
                index: Index::default(),
                thumbnails: HashMap::new(),
            };
            for (id, bytes) in files {
                let fingerprint = fingerprint(bytes, Limits::default()).unwrap();
                if let Some(t) = fingerprint.thumbnail {
                    library.thumbnails.insert(id.to_string(), t);
                }
                library.index.insert(Entry {
                    drawing_id: id.to_string(),
                    file_name: format!("{id}.file"),
                    features: fingerprint.features,
                });
            }
            library
        }

        fn search(&self, query: &Query, mode: Mode) -> SearchResult {
            let params = SearchParams {
                mode,
                ..SearchParams::default()
            };
            let mut search = Search::new(&self.index, &query.fingerprint, &query.probes, &params);
            if !search.wants_thumbnails().is_empty() {
                search.verify(&self.thumbnails);
            }
            search.finish(0.0)
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
        library.index.remove("d2");
        let q = query(&png(&drawing(2, 600)), Limits::default()).unwrap();
        assert!(library.search(&q, Mode::Balanced).duplicates.is_empty());
        let mut old = library.index.by_id["d1"].clone();
        old.drawing_id = "old".into();
        old.features.ink = None;
        library.index.insert(old);
        let result = library.search(&q, Mode::Fast);
        assert!(
            result.warnings[0].contains("1 library drawings"),
            "{:?}",
            result.warnings
        );
        library.index.remove("old");
        assert!(library.search(&q, Mode::Fast).warnings.is_empty());
    }
}
