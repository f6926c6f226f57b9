//! L2 candidate search at scale: MIH lookups over dHash-256 with the eight
//! orientation probes of each query, against a library of N drawings.
//!
//! Run with `cargo bench --bench l2` (env `L2_ENTRIES`, default 1,000,000;
//! `L2_RADIUS`, default `SHORTLIST_RADIUS`). Library codes are real dHash-256
//! codes of the LibreCAD renders in `../shared/data/librecad-png` when
//! present, each varied by 24–64 random bit flips so the library has line
//! art's skewed chunks without exact copies, except one in a thousand varied
//! by 1–8 flips: the near duplicates a search is for. Without the data,
//! uniform random codes. The drawings' ids are the owner's (`Index`), not
//! measured here.
//!
//! Two query sets, 2,000 queries each: "flipped" is a render's code with 6
//! flips as the identity probe and 90 flips for the other seven (the set
//! this bench has always timed); "oriented" is the render's real eight
//! orientations with 6 flips each, as search probes them. A rotated blank
//! drawing is still blank, so "oriented" is the harder set.

use std::time::Instant;

use dedup2d::engine::l2::{HashIndex, SHORTLIST_RADIUS};
use dedup2d::engine::raster::{self, Hash256, Hashes, Orientation};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn flip(&mut self, code: &Hash256, bits: u64) -> Hash256 {
        let mut out = *code;
        for _ in 0..bits {
            let bit = (self.next() % 256) as usize;
            out[bit / 64] ^= 1 << (bit % 64);
        }
        out
    }

    fn code(&mut self) -> Hash256 {
        [self.next(), self.next(), self.next(), self.next()]
    }
}

/// Each render's dHash in its eight orientations, identity first.
fn real_codes() -> Vec<[Hash256; 8]> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/librecad-png");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    paths
        .iter()
        .filter_map(|path| image::open(path).ok())
        .filter_map(|img| raster::prepare(&img))
        .map(|prepared| Orientation::ALL.map(|o| prepared.trimmed.oriented(o).hashes().dhash))
        .collect()
}

/// Resident bytes of this process (/proc/self/statm, 4 KiB pages).
fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let entries: usize = env_or("L2_ENTRIES", 1_000_000);
    let radius: u32 = env_or("L2_RADIUS", SHORTLIST_RADIUS);
    let mut rng = Rng(0x2545f4914f6cdd1d);
    let seeds = real_codes();
    let source = if seeds.is_empty() {
        "uniform random"
    } else {
        "LibreCAD renders, varied"
    };

    let rss_before = rss();
    let mut index = HashIndex::default();
    let built = Instant::now();
    for i in 0..entries {
        let dhash = if seeds.is_empty() {
            rng.code()
        } else {
            let flips = if i % 1000 == 999 {
                1 + rng.next() % 8
            } else {
                24 + rng.next() % 41
            };
            rng.flip(&seeds[i % seeds.len()][0], flips)
        };
        // Two draws for the id the index used to hold, so that the library
        // and the queries stay the ones measured before.
        let _id = (rng.next(), rng.next());
        index.push(Some(Hashes { dhash, phash: [0; 4] }));
    }
    let build_s = built.elapsed().as_secs_f64();
    let rss_delta = rss()
        .zip(rss_before)
        .map(|(after, before)| after.saturating_sub(before));

    println!("entries: {entries} ({source}); build {build_s:.2} s");
    println!(
        "index memory: {:.1} bytes/entry by capacities; {} by process RSS delta",
        index.heap_bytes() as f64 / entries as f64,
        rss_delta.map_or("unknown".into(), |d| format!(
            "{:.1} bytes/entry",
            d as f64 / entries as f64
        )),
    );

    let sets: [(&str, bool); 2] = [("flipped", false), ("oriented", true)];
    for (name, oriented) in sets {
        let mut times = Vec::new();
        let mut found = 0usize;
        let mut checked = 0;
        for q in 0..2000 {
            let probes: Vec<(Orientation, Hashes)> = Orientation::ALL
                .iter()
                .enumerate()
                .map(|(k, o)| {
                    let dhash = match seeds.get(q % seeds.len().max(1)) {
                        None => rng.code(),
                        Some(codes) if oriented => rng.flip(&codes[k], 6),
                        Some(codes) => rng.flip(&codes[0], if k == 0 { 6 } else { 90 }),
                    };
                    (*o, Hashes { dhash, phash: [0; 4] })
                })
                .collect();
            let started = Instant::now();
            let candidates = index.candidates(&probes, radius);
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            found += candidates.len();
            // The exactness the unit tests hold to, at full scale.
            if q % 200 == 0 {
                assert_eq!(candidates, index.candidates_by_scan(&probes, radius), "query {q}");
                checked += 1;
            }
        }
        times.sort_by(f64::total_cmp);
        let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
        println!(
            "{name}: {} queries × 8 probes, radius {radius}: mean candidates {:.2}; {checked} equal to a full scan",
            times.len(),
            found as f64 / times.len() as f64
        );
        println!(
            "  latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
            pct(0.5),
            pct(0.9),
            pct(0.99),
            pct(1.0)
        );
    }
}
