//! The Redis library against a real `redis-server`: the `LibraryStore`
//! contract as the embedded store keeps it, the change feed and its trim,
//! two processes (two clients, two `Library` values) that see each other's
//! writes, a fresh process searching as the embedded mode does, and stats.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dedup2d::embedded::Db;
use dedup2d::engine::{self, Details, Features, Format, Limits, SearchParams, SearchResult};
use dedup2d::library::{Drawing, Library, LibraryError, LibraryFeed, LibraryStore, Source};
use dedup2d::queue::{Keys, RedisLibrary};
use dedup2d::stats::{StatsStore, TenantStats};
use dedup2d::store::{FileRef, Files};
use fred::prelude::{Builder, Client, ClientLike, Config};
use tokio_util::sync::CancellationToken;

use crate::support::redis::RedisServer;
use crate::support::{bracket_dxf, png, png_of_dxf};

/// Long enough for a loaded machine: the feed is read every 200 ms, and
/// this test checks that changes arrive, not how fast.
const DEADLINE: Duration = Duration::from_secs(10);

/// A client of its own, as a separate process would have.
async fn client(redis: &RedisServer) -> Client {
    let client = Builder::from_config(Config::from_url(&redis.url()).expect("redis url"))
        .build()
        .expect("redis client");
    client.init().await.expect("connect to the test redis");
    client
}

async fn store(redis: &RedisServer) -> Arc<RedisLibrary> {
    Arc::new(RedisLibrary::new(
        client(redis).await,
        Keys::new("dedup2d", "dedup2d:queue"),
    ))
}

fn features(hash: &str, geometry_hash: Option<&str>) -> Features {
    Features {
        file_hash: format!("{hash:0>64}"),
        format: Format::Png,
        width: Some(96),
        height: Some(96),
        geometry_hash: geometry_hash.map(String::from),
        ink: None,
    }
}

fn drawing(tenant: &str, id: &str, created_at: f64) -> Drawing {
    let features = features(id, Some("beef"));
    Drawing {
        drawing_id: id.into(),
        tenant_id: tenant.into(),
        file_name: format!("{id}.png"),
        file_hash: features.file_hash.clone(),
        file_ref: FileRef::Local {
            path: format!("/library/{tenant}/{id}"),
        },
        features,
        // Not a short decimal: the exact value must come back.
        created_at: created_at + 0.1,
    }
}

/// Thumbnail-sized bytes that are not UTF-8 and hold zeros.
fn thumbnail(seed: u8) -> Vec<u8> {
    (0..10_240u32).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

fn ids(drawings: &[Drawing]) -> Vec<&str> {
    drawings.iter().map(|d| d.drawing_id.as_str()).collect()
}

#[tokio::test]
async fn the_library_store_contract_holds_on_redis() {
    let redis = RedisServer::start().await;
    let store = store(&redis).await;
    let (a, b, c) = (drawing("t", "a", 1.0), drawing("t", "b", 1.0), drawing("t", "c", 2.0));
    store.insert(&c, None).await.unwrap();
    store.insert(&b, None).await.unwrap();
    store.insert(&a, Some(&thumbnail(7))).await.unwrap();
    let again = store.insert(&drawing("t", "a", 9.0), None).await;
    assert!(matches!(again, Err(LibraryError::Exists(id)) if id == "a"));
    // The very same insert again is a resend whose reply was lost, not a clash.
    store.insert(&a, Some(&thumbnail(7))).await.expect("a resent insert");

    let (page, total) = store.page("t", 2, 0).await.unwrap();
    assert_eq!((ids(&page), total), (vec!["a", "b"], 3), "oldest first, ties by id");
    assert_eq!(page[0], a, "a drawing comes back exactly");
    let (page, total) = store.page("t", 10, 2).await.unwrap();
    assert_eq!((ids(&page), total), (vec!["c"], 3));
    assert_eq!(store.page("t", 10, 3).await.unwrap(), (vec![], 3));
    assert_eq!(store.page("other", 10, 0).await.unwrap(), (vec![], 0));
    assert_eq!(store.all("t").await.unwrap(), vec![a.clone(), b.clone(), c.clone()]);
    assert_eq!(store.drawing("t", "b").await.unwrap(), Some(b.clone()));
    assert_eq!(store.drawing("t", "zz").await.unwrap(), None);
    assert_eq!(store.drawing("other", "a").await.unwrap(), None);

    let wanted = ["a", "b", "zz"].map(String::from);
    let thumbnails = store.thumbnails("t", &wanted).await.unwrap();
    assert_eq!(thumbnails.len(), 1);
    assert_eq!(thumbnails["a"], thumbnail(7), "raw bytes round trip");
    let wanted = ["a", "c", "zz"].map(String::from);
    let details = store.details("t", &wanted).await.unwrap();
    assert_eq!(details.len(), 2);
    assert_eq!(details["c"], Details::new("c.png", &c.features));
    assert!(store.details("other", &wanted).await.unwrap().is_empty());
    assert!(store.thumbnails("t", &[]).await.unwrap().is_empty());

    let renewed = features("f00d", None);
    store.set_features("t", "a", &renewed, None).await.unwrap();
    store
        .set_features("t", "b", &renewed, Some(&thumbnail(9)))
        .await
        .unwrap();
    store.set_features("t", "gone", &renewed, None).await.unwrap();
    let a_now = store.drawing("t", "a").await.unwrap().unwrap();
    assert_eq!((&a_now.features, &a_now.file_hash), (&renewed, &renewed.file_hash));
    let wanted = ["a", "b"].map(String::from);
    let thumbnails = store.thumbnails("t", &wanted).await.unwrap();
    assert_eq!(
        thumbnails.keys().collect::<Vec<_>>(),
        vec!["b"],
        "set without one drops it"
    );
    assert_eq!(
        store.drawing("t", "gone").await.unwrap(),
        None,
        "set_features creates nothing"
    );

    assert_eq!(store.remove("t", "a").await.unwrap(), Some(a_now));
    assert_eq!(store.remove("t", "a").await.unwrap(), None);
    assert_eq!(store.page("t", 10, 0).await.unwrap().1, 2);
    assert_eq!(ids(&store.all("t").await.unwrap()), vec!["b", "c"]);
    store
        .insert(&drawing("t", "a", 0.0), None)
        .await
        .expect("a removed id is free again");

    store.insert(&drawing("u", "x", 0.0), None).await.unwrap();
    let mut tenants = store.tenants().await.unwrap();
    tenants.sort();
    assert_eq!(tenants, ["t", "u"]);
    store.remove("u", "x").await.unwrap();
    assert_eq!(
        store.tenants().await.unwrap(),
        ["t"],
        "a tenant whose library emptied is gone"
    );
    let dir = tempfile::tempdir().unwrap();
    let library = Library::with_feed(store.clone(), store.clone(), shared_files(&dir));
    let loaded = library.preload().await.unwrap();
    assert_eq!(
        (loaded.tenants, loaded.drawings),
        (1, 3),
        "a new worker builds its indexes at start"
    );
}

#[tokio::test]
async fn all_pages_through_a_large_library_in_order() {
    let redis = RedisServer::start().await;
    let store = store(&redis).await;
    let drawings: Vec<Drawing> = (0..1_234)
        .map(|i| drawing("big", &format!("d{i:04}"), f64::from(i % 100)))
        .collect();
    let inserts = drawings.iter().map(|d| store.insert(d, None));
    for inserted in futures_util::future::join_all(inserts).await {
        inserted.unwrap();
    }
    let mut expected = drawings.clone();
    expected.sort_by(|x, y| {
        x.created_at
            .total_cmp(&y.created_at)
            .then(x.drawing_id.cmp(&y.drawing_id))
    });
    assert_eq!(store.all("big").await.unwrap(), expected);
    let (page, total) = store.page("big", 100, 1_200).await.unwrap();
    assert_eq!((page.as_slice(), total), (&expected[1_200..], 1_234));
}

#[tokio::test]
async fn the_feed_lists_writes_in_order_and_says_when_it_no_longer_reaches_back() {
    let redis = RedisServer::start().await;
    let store = RedisLibrary::new(client(&redis).await, Keys::new("dedup2d", "q")).keeping_changes(5);
    let empty = store.position().await.unwrap();
    let (changes, at_empty) = store
        .since(&empty, 10)
        .await
        .unwrap()
        .expect("an empty feed reaches back");
    assert!(changes.is_empty());
    assert_eq!(at_empty, empty);

    store.insert(&drawing("t", "a", 1.0), None).await.unwrap();
    store.insert(&drawing("u", "b", 1.0), None).await.unwrap();
    store.remove("t", "a").await.unwrap();
    store.remove("t", "never").await.unwrap();
    let (changes, first_two) = store.since(&empty, 2).await.unwrap().unwrap();
    let pairs = |changes: &[dedup2d::library::Change]| {
        changes
            .iter()
            .map(|c| format!("{}/{}", c.tenant_id, c.drawing_id))
            .collect::<Vec<_>>()
    };
    assert_eq!(pairs(&changes), ["t/a", "u/b"]);
    let (changes, after) = store.since(&first_two, 10).await.unwrap().unwrap();
    assert_eq!(pairs(&changes), ["t/a"], "a removal is a change, a no-op is not");
    assert_eq!(store.position().await.unwrap(), after);
    assert_eq!(store.since(&after, 10).await.unwrap().unwrap().0, vec![]);

    for i in 0..10 {
        store.insert(&drawing("t", &format!("n{i}"), 2.0), None).await.unwrap();
    }
    assert!(store.since(&empty, 10).await.unwrap().is_none(), "trimmed past");
    assert!(store.since(&after, 10).await.unwrap().is_none(), "trimmed past");
    let now = store.position().await.unwrap();
    let (changes, _) = store
        .since(&now, 10)
        .await
        .unwrap()
        .expect("the current position reaches back");
    assert!(changes.is_empty());

    let _: () = client(&redis).await.flushall(false).await.unwrap();
    store.insert(&drawing("t", "after-flush", 3.0), None).await.unwrap();
    assert!(
        store.since(&now, 10).await.unwrap().is_none(),
        "a position from before Redis lost the library does not reach back"
    );
}

/// One process's view: its own client, files on the shared storage.
struct Process {
    library: Arc<Library>,
    stop: CancellationToken,
}

impl Process {
    async fn start(redis: &RedisServer, files: &Arc<Files>) -> Process {
        let store = store(redis).await;
        let library = Arc::new(Library::with_feed(store.clone(), store, files.clone()));
        let stop = CancellationToken::new();
        tokio::spawn({
            let (library, stop) = (library.clone(), stop.clone());
            async move { library.follow(stop).await }
        });
        Process { library, stop }
    }

    async fn search(&self, tenant: &str, bytes: &[u8]) -> SearchResult {
        search(&self.library, tenant, bytes).await
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn search(library: &Library, tenant: &str, bytes: &[u8]) -> SearchResult {
    let query = engine::query(bytes, Limits::default()).expect("a query that reads");
    let bytes = Bytes::copy_from_slice(bytes);
    let source = Source {
        bytes: &bytes,
        geom_json: None,
    };
    library
        .search(tenant, &query, source, &SearchParams::default(), 0.0, Limits::default())
        .await
        .expect("search")
}

fn found(result: &SearchResult) -> Vec<&str> {
    let mut ids: Vec<&str> = (result.duplicates.iter().chain(&result.similar))
        .map(|m| m.drawing_id.as_str())
        .collect();
    ids.sort();
    ids
}

async fn add(library: &Library, tenant: &str, id: &str, bytes: Vec<u8>, now: f64) {
    let fingerprint = engine::fingerprint(&bytes, Limits::default()).expect("a drawing that reads");
    library
        .add(
            tenant,
            Some(id.into()),
            &format!("{id}.png"),
            bytes.into(),
            fingerprint,
            now,
        )
        .await
        .expect("add");
}

/// Searches until `wanted` holds of the result, up to [`DEADLINE`].
async fn search_until(process: &Process, tenant: &str, bytes: &[u8], wanted: impl Fn(&[&str]) -> bool) {
    let started = Instant::now();
    loop {
        let result = process.search(tenant, bytes).await;
        if wanted(&found(&result)) {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "never seen: last found {:?}",
            found(&result)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn shared_files(dir: &tempfile::TempDir) -> Arc<Files> {
    Arc::new(Files::local(&dir.path().join("uploads"), &dir.path().join("library")).expect("files"))
}

/// Two processes on one Redis and one shared disk.
async fn two_processes(redis: &RedisServer) -> (tempfile::TempDir, Process, Process) {
    let dir = tempfile::tempdir().unwrap();
    let files = shared_files(&dir);
    let a = Process::start(redis, &files).await;
    let b = Process::start(redis, &files).await;
    (dir, a, b)
}

#[tokio::test]
async fn a_write_through_one_process_shows_in_the_others_search() {
    let redis = RedisServer::start().await;
    let (_dir, a, b) = two_processes(&redis).await;
    let drawing = png(1);
    assert!(
        found(&b.search("t", &drawing).await).is_empty(),
        "B's index is loaded, empty"
    );

    add(&a.library, "t", "d1", drawing.clone(), 1.0).await;
    search_until(&b, "t", &drawing, |ids| ids == ["d1"]).await;
    add(&a.library, "u", "u1", png(2), 1.0).await;
    assert_eq!(found(&b.search("u", &png(2)).await), ["u1"], "a tenant B loads later");

    assert!(a.library.delete("t", "d1").await.unwrap());
    // A search already drops a match whose details are gone from the
    // store; the index itself follows a moment later.
    let started = Instant::now();
    while b.library.loaded().drawings != 1 {
        assert!(started.elapsed() < DEADLINE, "B's index kept d1");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(found(&b.search("t", &drawing).await).is_empty());
    assert!(found(&a.search("t", &drawing).await).is_empty());
}

#[tokio::test]
async fn a_fresh_process_searches_a_redis_library_as_the_embedded_mode_does() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("data"), Duration::from_secs(3600)).expect("embedded db");
    let embedded = Library::new(Arc::new(db), shared_files(&dir));
    let writer = Process::start(&redis, &shared_files(&dir)).await;
    let mut drawings: Vec<(String, Vec<u8>)> = (1..=5).map(|seed| (format!("p{seed}"), png(seed))).collect();
    drawings.push(("bracket".into(), bracket_dxf()));
    for (i, (id, bytes)) in drawings.iter().enumerate() {
        let now = 10.0 + i as f64;
        add(&embedded, "t", id, bytes.clone(), now).await;
        add(&writer.library, "t", id, bytes.clone(), now).await;
    }
    drop(writer);

    let fresh = Process::start(&redis, &shared_files(&dir)).await;
    for query in [png(1), png(4), png_of_dxf(&bracket_dxf()), png(99)] {
        let (want, got) = (search(&embedded, "t", &query).await, fresh.search("t", &query).await);
        assert_eq!(got.duplicates, want.duplicates);
        assert_eq!(got.similar, want.similar);
        assert_eq!(got.final_level, want.final_level);
    }
    assert!(
        !found(&fresh.search("t", &png(4)).await).is_empty(),
        "the queries do find drawings"
    );
    assert_eq!(fresh.library.loaded().drawings, drawings.len());
}

#[tokio::test]
async fn stats_count_per_tenant() {
    let redis = RedisServer::start().await;
    let (one, other) = (store(&redis).await, store(&redis).await);
    one.increment("t", TenantStats::processed(true)).await.unwrap();
    other.increment("t", TenantStats::processed(false)).await.unwrap();
    other.increment("t", TenantStats::REJECTED).await.unwrap();
    let expected = TenantStats {
        processed: 2,
        rejected: 1,
        dup_skipped: 1,
    };
    assert_eq!(one.read("t").await.unwrap(), expected);
    assert_eq!(other.read("u").await.unwrap(), TenantStats::default());
}

#[tokio::test]
async fn a_process_that_lost_its_place_in_the_feed_reloads_its_indexes() {
    let redis = RedisServer::start().await;
    let (_dir, a, b) = two_processes(&redis).await;
    add(&a.library, "t", "d1", png(1), 1.0).await;
    assert_eq!(found(&b.search("t", &png(1)).await), ["d1"]);

    // Redis lost everything, feed included: B cannot tell what changed.
    let _: () = client(&redis).await.flushall(false).await.unwrap();
    let started = Instant::now();
    while b.library.loaded().tenants != 0 {
        assert!(started.elapsed() < DEADLINE, "B kept its stale index");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    add(&a.library, "t", "d2", png(2), 2.0).await;
    assert!(found(&b.search("t", &png(1)).await).is_empty());
    search_until(&b, "t", &png(2), |ids| ids == ["d2"]).await;
}
