//! Rebuilding a tenant's in-memory index from the embedded store, as a
//! process does at start or on its first search: read every drawing's
//! stored features from SQLite, then insert them into an `engine::Index`.
//!
//! Run with `cargo bench --bench rebuild` (env `REBUILD_ENTRIES`, default
//! 1,000,000; `REBUILD_DXF=1` makes every drawing a DXF, whose geometry
//! hash costs the index one more key). The library is made up (random
//! hashes, uuid-like ids, PNGs unless told) and written once into a
//! temporary data dir; only the rebuild is timed. Index memory is reported
//! by its capacities (`Index::heap_bytes`) and as the process's RSS growth
//! over the index build alone.

use std::sync::Arc;
use std::time::Instant;

use dedup2d::embedded::Db;
use dedup2d::engine::{Features, Format, Index, InkFeatures, hex};
use dedup2d::library::{Drawing, LibraryStore};
use dedup2d::store::FileRef;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn hash(&mut self) -> [u64; 4] {
        [self.next(), self.next(), self.next(), self.next()]
    }
}

fn hash_hex(rng: &mut Rng) -> String {
    let bytes: Vec<u8> = rng.hash().iter().flat_map(|w| w.to_le_bytes()).collect();
    hex(&bytes)
}

/// A PNG, or with `dxf` a DXF: a geometry hash is one more L1 key.
fn drawing(i: usize, rng: &mut Rng, dxf: bool) -> Drawing {
    let id = format!("{:016x}{:016x}", rng.next(), i);
    let features = Features {
        file_hash: hash_hex(rng),
        format: if dxf { Format::DxfAscii } else { Format::Png },
        width: (!dxf).then_some(1000),
        height: (!dxf).then_some(1000),
        geometry_hash: dxf.then(|| hash_hex(rng)),
        ink: Some(InkFeatures {
            dhash: rng.hash(),
            phash: rng.hash(),
            page_dhash: rng.hash(),
            aspect: 1.25,
            extent: 960.0,
        }),
    };
    Drawing {
        drawing_id: id.clone(),
        tenant_id: "bench".into(),
        file_name: format!("part-{i}.png"),
        file_hash: features.file_hash.clone(),
        file_ref: FileRef::Local {
            path: format!("/data/library/bench/{id}_part-{i}.png"),
        },
        features,
        created_at: i as f64,
    }
}

fn rss_mb() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / 1e6
}

#[tokio::main]
async fn main() {
    let entries: usize = std::env::var("REBUILD_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dxf = std::env::var("REBUILD_DXF").is_ok_and(|v| v == "1");
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Arc::new(Db::open(dir.path(), std::time::Duration::from_secs(3600)).expect("open db"));
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let started = Instant::now();
    for i in 0..entries {
        db.insert(&drawing(i, &mut rng, dxf), None).await.expect("insert");
    }
    let kind = if dxf { "DXF" } else { "PNG" };
    println!(
        "wrote {entries} {kind} drawings in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let drawings = db.all("bench").await.expect("read");
    let read = started.elapsed().as_secs_f64();
    // The rows stay alive until the index is built, so the RSS growth
    // below is the index's alone (and whatever the build freed but the
    // allocator kept), not the rows'.
    let before = rss_mb();
    let building = Instant::now();
    let mut index = Index::with_capacity(drawings.len());
    for d in &drawings {
        index.insert(&d.drawing_id, &d.features);
    }
    let build = building.elapsed().as_secs_f64();
    let grown = rss_mb() - before;
    let matched: Vec<String> = drawings
        .iter()
        .step_by((entries / MATCHES).max(1))
        .take(MATCHES)
        .map(|d| d.drawing_id.clone())
        .collect();
    drop(drawings);
    let total = started.elapsed().as_secs_f64();
    println!(
        "rebuild of {} entries: read {read:.2} s, index {build:.2} s, rows freed {:.2} s, total {total:.2} s",
        index.len(),
        total - read - build,
    );
    println!(
        "index memory: {:.0} bytes/entry by capacities; RSS +{grown:.0} MB over the build ({:.0} bytes/entry)",
        index.heap_bytes() as f64 / entries as f64,
        grown * 1e6 / entries as f64
    );
    details(&db, &matched).await;
}

/// A search's default `max_results`.
const MATCHES: usize = 50;

/// What a search reads from the store for its result, since the index
/// holds no names: the details of its matches, timed over 100 reads.
async fn details(db: &Db, ids: &[String]) {
    let mut times = Vec::new();
    for _ in 0..100 {
        let started = Instant::now();
        let found = db.details("bench", ids).await.expect("details");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(found.len(), ids.len());
    }
    let first = times[0];
    times.sort_by(f64::total_cmp);
    println!(
        "details of {} matches: first read {first:.2} ms; median {:.2} ms, max {:.2} ms",
        ids.len(),
        times[times.len() / 2],
        times[times.len() - 1]
    );
}
