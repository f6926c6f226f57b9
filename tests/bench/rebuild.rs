//! Rebuilding a tenant's in-memory index from the embedded store, as a
//! process does at start or on its first search: read every drawing's
//! stored features from SQLite, then insert them into an `engine::Index`.
//!
//! Run with `cargo bench --bench rebuild` (env `REBUILD_ENTRIES`, default
//! 1,000,000). The library is made up (random hashes, uuid-like ids) and
//! written once into a temporary data dir; only the rebuild is timed. Index
//! memory is reported by its capacities (`Index::heap_bytes`) and as the
//! process's RSS growth over the index build alone.

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

fn drawing(i: usize, rng: &mut Rng) -> Drawing {
    let id = format!("{:016x}{:016x}", rng.next(), i);
    let bytes: Vec<u8> = rng.hash().iter().flat_map(|w| w.to_le_bytes()).collect();
    let features = Features {
        file_hash: hex(&bytes),
        format: Format::Png,
        width: Some(1000),
        height: Some(1000),
        geometry_hash: None,
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
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Arc::new(Db::open(dir.path(), std::time::Duration::from_secs(3600)).expect("open db"));
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let started = Instant::now();
    for i in 0..entries {
        db.insert(&drawing(i, &mut rng), None).await.expect("insert");
    }
    println!("wrote {entries} drawings in {:.1} s", started.elapsed().as_secs_f64());

    let started = Instant::now();
    let drawings = db.all("bench").await.expect("read");
    let read = started.elapsed().as_secs_f64();
    // The rows stay alive until the index is built, so the RSS growth
    // below is the index's alone (and whatever the build freed but the
    // allocator kept), not the rows'.
    let before = rss_mb();
    let building = Instant::now();
    let mut index = Index::default();
    for d in &drawings {
        index.insert(&d.drawing_id, &d.features);
    }
    let build = building.elapsed().as_secs_f64();
    let grown = rss_mb() - before;
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
}
