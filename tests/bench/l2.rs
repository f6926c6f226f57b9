//! L2 candidate search at scale: MIH lookups over dHash-256 with the eight
//! orientation probes of each query, against a library of N drawings.
//!
//! Run with `cargo bench --bench l2` (env `L2_ENTRIES`, default 1,000,000).
//! Library codes are real dHash-256 codes of the LibreCAD renders in
//! `../shared/data/librecad-png` when present, each varied by 24–64 random
//! bit flips so the library has line art's skewed chunks without exact
//! copies; without the data, uniform random codes.

use std::time::Instant;

use dedup2d::engine::l2::HashIndex;
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
}

fn real_codes() -> Vec<Hashes> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/librecad-png");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| image::open(e.path()).ok())
        .filter_map(|img| raster::features(&img))
        .map(|f| f.trimmed)
        .collect()
}

fn main() {
    let entries: usize = std::env::var("L2_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut rng = Rng(0x2545f4914f6cdd1d);
    let seeds = real_codes();
    let source = if seeds.is_empty() {
        "uniform random"
    } else {
        "LibreCAD renders, varied"
    };
    let mut index = HashIndex::default();
    let built = Instant::now();
    for i in 0..entries {
        let dhash = if seeds.is_empty() {
            [rng.next(), rng.next(), rng.next(), rng.next()]
        } else {
            let flips = 24 + rng.next() % 41;
            rng.flip(&seeds[i % seeds.len()].dhash, flips)
        };
        index.insert(&format!("d{i}"), Hashes { dhash, phash: [0; 4] });
    }
    let build_s = built.elapsed().as_secs_f64();

    let mut times = Vec::new();
    let mut found = 0usize;
    for q in 0..2000 {
        let base = if seeds.is_empty() {
            [rng.next(), rng.next(), rng.next(), rng.next()]
        } else {
            seeds[q % seeds.len()].dhash
        };
        let probes: Vec<(Orientation, Hashes)> = Orientation::ALL
            .iter()
            .map(|o| {
                let dhash = if *o == Orientation::IDENTITY {
                    rng.flip(&base, 6)
                } else {
                    rng.flip(&base, 90)
                };
                (*o, Hashes { dhash, phash: [0; 4] })
            })
            .collect();
        let started = Instant::now();
        found += index.candidates(&probes, 12).len();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    println!("entries: {entries} ({source}); build {build_s:.1} s");
    println!("queries: {} with 8 orientation probes each, radius 12", times.len());
    println!(
        "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}; mean candidates {:.1}",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0),
        found as f64 / times.len() as f64
    );
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(rss) = status.lines().find(|l| l.starts_with("VmRSS"))
    {
        println!("{rss} (whole process, includes the 2,000 probe sets)");
    }
}
