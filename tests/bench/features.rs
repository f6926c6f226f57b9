//! Feature extraction speed: `engine::fingerprint` (decode or parse and
//! render, every level's features, the L3 thumbnail) and `engine::query`
//! (plus the eight orientation probes), one thread.
//!
//! Run with `cargo bench --bench features`. Reads the PNGs of
//! `../shared/data/librecad-png` and the DXF of `../shared/data/librecad-dxf`
//! when present; otherwise it says so and measures nothing.
//! `tests/bench/imagehash_side_by_side.sh` runs it beside Python
//! `imagehash` on the same PNGs and prints the ratio. The same PNGs shrunk
//! to 96 px are timed too: ink smaller than the 256² L2 grid is upsampled,
//! another path than a large page's, and it is what the pipeline bench's
//! 96 × 96 drawings take.
//!
//! `FEATURES_DUMP=file` first writes, for every file, a digest of what
//! `fingerprint` and `query` make of it (features, thumbnail, and each
//! probe's frame, orientation, hashes, thumbnail and dropped share): dumps
//! of two builds are equal when every feature and probe is bit-identical.
//!
//! Last, L3 as `Search::verify` runs it: the first 24 of the 96-px PNGs as
//! queries (every probe) against the thumbnails of the first 12 full-size
//! ones, each probe and candidate prepared once.

use std::io::Cursor;
use std::path::Path;
use std::time::Instant;

use dedup2d::engine::verify::{Prepared, Thumbnail, verify_aligned_prepared, verify_detail, verify_prepared};
use dedup2d::engine::{self, Limits, Probe};
use image::ImageFormat;
use image::imageops::FilterType;

fn files(dir: &str, extension: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .filter_map(|p| Some((p.file_name()?.to_string_lossy().into_owned(), std::fs::read(&p).ok()?)))
        .collect();
    out.sort();
    out
}

/// Milliseconds per call of `f` on each file: (median, p99, max).
fn time(files: &[(String, Vec<u8>)], f: impl Fn(&[u8])) -> (f64, f64, f64) {
    let mut ms: Vec<f64> = files
        .iter()
        .map(|(_, bytes)| {
            let started = Instant::now();
            f(bytes);
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), at(1.0))
}

fn report(label: &str, files: &[(String, Vec<u8>)], f: impl Fn(&[u8])) {
    if files.is_empty() {
        println!("{label}: no files (../shared/data missing)");
        return;
    }
    time(files, &f); // warm-up: page cache, allocator
    let (p50, p99, max) = time(files, f);
    println!(
        "{label}: {} files, median {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms",
        files.len()
    );
}

/// Each PNG resized to 96 px on its longer side and encoded again.
fn shrunk(pngs: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    pngs.iter()
        .filter_map(|(name, bytes)| {
            let small = image::load_from_memory(bytes)
                .ok()?
                .resize(96, 96, FilterType::Triangle);
            let mut png = Vec::new();
            small.write_to(&mut Cursor::new(&mut png), ImageFormat::Png).ok()?;
            Some((name.clone(), png))
        })
        .collect()
}

/// One line per file: its name and the digest of everything it yields.
fn dump(path: &str, sets: &[&[(String, Vec<u8>)]], limits: Limits) {
    let mut out = String::new();
    for (name, bytes) in sets.iter().copied().flatten() {
        let mut text = match engine::fingerprint(bytes, limits) {
            Ok(print) => format!(
                "{}{:?}",
                serde_json::to_string(&print.features).unwrap_or_default(),
                print.thumbnail.map(|t| engine::sha256_hex(&t.to_bytes()))
            ),
            Err(e) => e.to_string(),
        };
        if let Ok(query) = engine::query(bytes, limits) {
            text += &serde_json::to_string(&query.fingerprint.features).unwrap_or_default();
            for p in &query.probes {
                text += &format!(
                    "|{} {:?} {:?} {} {}",
                    p.frame,
                    p.orientation,
                    p.hashes,
                    engine::sha256_hex(&p.thumbnail.to_bytes()),
                    p.dropped.to_bits()
                );
            }
        }
        out += &format!("{name} {} {}\n", bytes.len(), engine::sha256_hex(text.as_bytes()));
    }
    std::fs::write(path, out).expect("the dump is written");
}

fn main() {
    let limits = Limits::default();
    let pngs = files("../shared/data/librecad-png", "png");
    let small_pngs = shrunk(&pngs);
    let dxfs = files("../shared/data/librecad-dxf", "dxf");
    if let Ok(path) = std::env::var("FEATURES_DUMP") {
        dump(&path, &[&pngs, &small_pngs, &dxfs], limits);
    }
    let big_dxfs: Vec<_> = dxfs.iter().filter(|(_, b)| b.len() >= 100_000).cloned().collect();
    report("PNG fingerprint (library add)", &pngs, |b| {
        let _ = engine::fingerprint(b, limits);
    });
    report("PNG query (fingerprint + 8 probes)", &pngs, |b| {
        let _ = engine::query(b, limits);
    });
    report("96-px PNG fingerprint", &small_pngs, |b| {
        let _ = engine::fingerprint(b, limits);
    });
    report("96-px PNG query", &small_pngs, |b| {
        let _ = engine::query(b, limits);
    });
    report("DXF fingerprint, all", &dxfs, |b| {
        let _ = engine::fingerprint(b, limits);
    });
    report("DXF fingerprint, files >= 100 KB", &big_dxfs, |b| {
        let _ = engine::fingerprint(b, limits);
    });
    report_l3(&pngs, &small_pngs, limits);
}

/// Every probe's plain verification of each candidate, then the best
/// probe's aligned coarse and detail ones; returns a sum so nothing is
/// optimised away.
fn verify_like_a_search(probes: &[Probe], library: &[Thumbnail]) -> f64 {
    let prepared: Vec<Prepared> = probes.iter().map(|p| Prepared::new(&p.thumbnail)).collect();
    let mut sum = 0.0;
    for candidate in library {
        let c = Prepared::new(candidate);
        let dropped = |p: &Probe| f64::from(p.dropped);
        let best = probes
            .iter()
            .zip(&prepared)
            .map(|(p, q)| (p, verify_prepared(q, &c, dropped(p)).similarity))
            .reduce(|best, next| if next.1 > best.1 { next } else { best });
        if let Some((probe, _)) = best {
            sum += verify_aligned_prepared(&probe.thumbnail, &c, dropped(probe)).similarity;
            sum += verify_detail(&probe.thumbnail, candidate, dropped(probe)).map_or(0.0, |v| v.similarity);
        }
    }
    sum
}

fn report_l3(pngs: &[(String, Vec<u8>)], small_pngs: &[(String, Vec<u8>)], limits: Limits) {
    let library: Vec<Thumbnail> = pngs
        .iter()
        .take(12)
        .filter_map(|(_, b)| engine::fingerprint(b, limits).ok()?.thumbnail)
        .collect();
    let queries: Vec<(String, Vec<u8>)> = small_pngs.iter().take(24).cloned().collect();
    if library.is_empty() || queries.is_empty() {
        println!("L3: no files (../shared/data missing)");
        return;
    }
    let probes: Vec<Vec<Probe>> = queries
        .iter()
        .filter_map(|(_, b)| engine::query(b, limits).ok().map(|q| q.probes))
        .collect();
    let started = Instant::now();
    const ROUNDS: usize = 20;
    for _ in 0..ROUNDS {
        for query in &probes {
            std::hint::black_box(verify_like_a_search(query, &library));
        }
    }
    let per_query = started.elapsed().as_secs_f64() * 1e3 / (ROUNDS * probes.len()) as f64;
    println!(
        "L3 as a search runs it: {} 96-px queries x {} candidates, {per_query:.2} ms a query",
        probes.len(),
        library.len()
    );
}
