//! `dedup2d calibrate`: how often the engine's verdicts are right, per
//! transform and per threshold, so thresholds are chosen from data.
//!
//! The library is a folder of drawings, read and indexed exactly as the
//! service does ([`engine::fingerprint`], [`engine::Index`]). Queries are
//! either generated from each library drawing's render by the transforms of
//! issue 3 point 5 ([`transform`]) or given as files with a truth CSV. Each
//! query runs the engine's [`Search`] in the chosen mode; every match it
//! returns is then judged: right when it is the query's source, a file
//! whose render is pixel-identical to it, or (unless `--twins-distinct`)
//! the same picture turned or mirrored ([`twins`]).
//!
//! Duplicate precision is the share of matches at or above the duplicate
//! threshold that are right; duplicate recall the share of queries that
//! should be duplicates whose source is found at or above it. "Similar"
//! counts everything at or above the similar threshold (duplicate or
//! similar), with every query that has a source.

pub mod transform;
pub mod twins;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, bail};
use image::{DynamicImage, GrayImage};
use serde::Serialize;

use self::transform::Transform;
use self::twins::InkMap;
use crate::engine::fine::{self, Detail, Fine};
use crate::engine::verify::Thumbnail;
use crate::engine::{
    self, DXF_RENDER_SIZE, Details, EXTENSIONS, EngineError, Format, Index, Limits, Query, Search, SearchParams,
    raster, render,
};

/// What `by_transform` calls the queries given with `--queries`.
pub const GIVEN: &str = "given";

/// Thresholds listed in `by_threshold`.
const THRESHOLDS: [f64; 19] = [
    0.50, 0.55, 0.60, 0.65, 0.70, 0.75, 0.80, 0.85, 0.90, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0,
];
/// Missed or wrong queries listed in the report, for a closer look; the
/// table shows the first TABLE_MISSES of them.
const LISTED_MISSES: usize = 500;
const TABLE_MISSES: usize = 20;

#[derive(Debug, Clone)]
pub struct Options {
    pub library: PathBuf,
    /// Make the transformed queries of every library drawing.
    pub generate: bool,
    /// Query files and the truth CSV (`query,expected`) naming their sources.
    pub queries: Option<(PathBuf, PathBuf)>,
    /// Use only the first N library files (by name).
    pub limit: Option<usize>,
    /// Mode and thresholds of the searches.
    pub params: SearchParams,
    /// Precision the recommended duplicate threshold must reach.
    pub target_precision: f64,
    /// Precision the recommended similar threshold must reach.
    pub target_similar_precision: f64,
    pub threads: usize,
    /// Progress lines on stderr.
    pub progress: bool,
    /// Count a match that is the source turned or mirrored as wrong.
    pub twins_distinct: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            library: PathBuf::new(),
            generate: false,
            queries: None,
            limit: None,
            params: SearchParams::default(),
            target_precision: 0.99,
            target_similar_precision: 0.90,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            progress: false,
            twins_distinct: false,
        }
    }
}

/// Runs a calibration and prints it: a table, or one JSON object.
pub fn run(options: &Options, json: bool) -> anyhow::Result<()> {
    let report = calibrate(options)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub duplicate_threshold: f64,
    pub similar_threshold: f64,
    pub library: LibrarySummary,
    pub queries: usize,
    pub duplicate: Score,
    pub similar: Score,
    pub by_transform: BTreeMap<String, TransformScore>,
    pub by_threshold: Vec<ThresholdRow>,
    pub recommended: Recommended,
    /// Queries whose source was not found as required.
    pub misses: Vec<Miss>,
    /// Queries that called another drawing a duplicate.
    pub wrong: Vec<Miss>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LibrarySummary {
    pub dir: String,
    pub files: usize,
    pub indexed: usize,
    pub skipped: BTreeMap<String, usize>,
    pub skipped_files: Vec<Skipped>,
    /// Groups of two or more files with pixel-identical renders.
    pub identical_groups: usize,
    pub files_in_identical_groups: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub file: String,
    pub reason: &'static str,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Score {
    /// `None` when nothing was called.
    pub precision: Option<f64>,
    /// `None` when no query should have been found.
    pub recall: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TransformScore {
    pub queries: usize,
    /// Whether these queries must be duplicates (else duplicate or similar).
    pub must_be_duplicate: bool,
    pub duplicate: Score,
    pub similar: Score,
    /// Matches at or above the duplicate threshold that are wrong.
    pub wrong_duplicates: usize,
    pub wrong_similar: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThresholdRow {
    pub threshold: f64,
    pub precision: Option<f64>,
    /// Over the queries that must be duplicates.
    pub recall: Option<f64>,
    /// Over every query with a source (duplicate or similar).
    pub recall_any: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Recommended {
    /// The lowest listed threshold whose precision reaches the target.
    pub duplicate_threshold: Option<f64>,
    pub similar_threshold: Option<f64>,
    pub target_precision: f64,
    pub target_similar_precision: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Miss {
    pub query: String,
    pub transform: String,
    pub expected: Option<String>,
    /// The source's similarity, when the search returned it.
    pub expected_similarity: Option<f64>,
    /// The best wrong match and its similarity.
    pub best_wrong: Option<(String, f64)>,
}

#[derive(Debug, Clone)]
struct Skip {
    reason: &'static str,
    detail: String,
}

fn skip(reason: &'static str, detail: impl ToString) -> Skip {
    Skip {
        reason,
        detail: detail.to_string(),
    }
}

/// One indexed library drawing.
struct Drawing {
    name: String,
    ink: InkMap,
}

/// One query's outcome: every match the engine returned, judged.
struct Outcome {
    query: String,
    transform: String,
    must_be_duplicate: bool,
    /// Index of the source drawing; `None` for a query that must match nothing.
    expected: Option<usize>,
    /// (drawing index, similarity, right).
    matches: Vec<(usize, f64, bool)>,
}

impl Outcome {
    fn source_similarity(&self) -> Option<f64> {
        self.matches
            .iter()
            .filter(|(_, _, right)| *right)
            .map(|(_, s, _)| *s)
            .fold(None, |best, s| Some(best.map_or(s, |b: f64| b.max(s))))
    }

    fn found_at(&self, threshold: f64) -> bool {
        self.source_similarity().is_some_and(|s| s >= threshold)
    }

    fn called(&self, threshold: f64) -> (usize, usize) {
        let called: Vec<_> = self.matches.iter().filter(|(_, s, _)| *s >= threshold).collect();
        (called.len(), called.iter().filter(|(_, _, right)| *right).count())
    }
}

/// The indexed library, as the service would hold it.
struct Library {
    drawings: Vec<Drawing>,
    paths: Vec<PathBuf>,
    index: Index,
    thumbnails: HashMap<String, Thumbnail>,
    /// What the service's store keeps beside the index: names and hashes.
    stored: HashMap<String, Details>,
    /// Pixel-identical renders share a group.
    groups: Vec<usize>,
    by_name: HashMap<String, usize>,
    /// L4 details of library drawings, read on first use.
    details: Mutex<HashMap<usize, Arc<Option<Detail>>>>,
    /// Whether two drawings are the same picture turned or mirrored.
    twins: Mutex<HashMap<(usize, usize), bool>>,
}

/// Matches below this are never checked for being twins: twins are the
/// same picture, so they score near 1.
const TWIN_CHECK_SIMILARITY: f64 = 0.9;

impl Library {
    fn is_right(&self, expected: usize, found: usize, similarity: f64, twins_distinct: bool) -> bool {
        if self.groups[expected] == self.groups[found] {
            return true;
        }
        if twins_distinct || similarity < TWIN_CHECK_SIMILARITY {
            return false;
        }
        let key = (expected.min(found), expected.max(found));
        if let Some(&twin) = self.twins.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return twin;
        }
        let twin = !self.drawings[expected]
            .ink
            .matches(&self.drawings[found].ink)
            .is_empty();
        self.twins.lock().unwrap_or_else(|e| e.into_inner()).insert(key, twin);
        twin
    }

    fn detail(&self, drawing: usize) -> Arc<Option<Detail>> {
        if let Some(d) = self.details.lock().unwrap_or_else(|e| e.into_inner()).get(&drawing) {
            return d.clone();
        }
        let detail = std::fs::read(&self.paths[drawing])
            .ok()
            .and_then(|bytes| fine::detail(&bytes, Limits::default()).ok().flatten());
        let detail = Arc::new(detail);
        self.details
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(drawing, detail.clone());
        detail
    }

    /// Every match the engine returns for `query`, with its similarity.
    fn search(
        &self,
        query: &Query,
        detail: impl FnOnce() -> Option<Detail>,
        params: &SearchParams,
    ) -> Vec<(usize, f64)> {
        // Thresholds are applied when judging, so every candidate comes back.
        let all = SearchParams {
            similar_threshold: 0.0,
            max_results: usize::MAX,
            ..params.clone()
        };
        let mut search = Search::new(&self.index, &query.fingerprint, &query.probes, &all);
        if !search.wants_thumbnails().is_empty() {
            search.verify(&self.thumbnails);
        }
        let wanted = search.wants_drawings();
        if !wanted.is_empty()
            && let Some(query_detail) = detail()
        {
            let fines: HashMap<String, Fine> = wanted
                .into_iter()
                .filter_map(|(id, orientation)| {
                    let candidate = self.detail(self.by_name[&id]);
                    let fine = fine::compare(&query_detail, candidate.as_ref().as_ref()?, orientation);
                    Some((id, fine))
                })
                .collect();
            search.refine(fines, 0.0);
        }
        let result = search.finish(&self.stored, 0.0);
        result
            .duplicates
            .iter()
            .chain(&result.similar)
            .map(|m| (self.by_name[&m.drawing_id], m.similarity))
            .collect()
    }
}

/// Reads a library drawing as the service does, plus its render for
/// generating queries and telling twins apart.
fn read_library_file(path: &Path) -> Result<(engine::Fingerprint, GrayImage), Skip> {
    let bytes = std::fs::read(path).map_err(|e| skip("cannot read the file", e))?;
    let fingerprint = engine::fingerprint(&bytes, Limits::default()).map_err(engine_skip)?;
    if fingerprint.features.ink.is_none() {
        return Err(skip("no ink", "the drawing has no ink"));
    }
    let render = render_of(&bytes, fingerprint.features.format)?;
    Ok((fingerprint, render))
}

fn engine_skip(e: EngineError) -> Skip {
    match e {
        EngineError::Empty => skip("empty file", e),
        EngineError::Unsupported(_) => skip("not a drawing format", e),
        EngineError::Unreadable(_) | EngineError::InvalidGeometry(_) => skip("unreadable", e),
    }
}

/// What the engine sees of a drawing: DXF rendered at the engine's size, a
/// raster decoded onto white paper.
fn render_of(bytes: &[u8], format: Format) -> Result<GrayImage, Skip> {
    match format {
        Format::DxfAscii | Format::DxfBinary => {
            let options = Limits::default().render_options(DXF_RENDER_SIZE);
            render::render_dxf(bytes, &options).map_err(|e| skip("DXF: unreadable", e))
        }
        _ => image::load_from_memory(bytes)
            .map(|image| on_white(&image))
            .map_err(|e| skip("raster: cannot decode", e)),
    }
}

fn load_library(options: &Options) -> anyhow::Result<(Library, LibrarySummary)> {
    let mut files = list_drawings(&options.library)?;
    let found = files.len();
    if let Some(limit) = options.limit {
        files.truncate(limit);
    }
    let progress = options.progress.then_some("library drawings");
    let results = parallel_map(&files, options.threads, progress, |path| {
        let (fingerprint, render) = read_library_file(path)?;
        let prepared = raster::prepare(&DynamicImage::ImageLuma8(render.clone()))
            .ok_or_else(|| skip("no ink", "the render has no ink"))?;
        Ok::<_, Skip>((fingerprint, digest(&render), InkMap::new(&prepared.trimmed)))
    });
    let mut library = Library {
        drawings: Vec::new(),
        paths: Vec::new(),
        index: Index::default(),
        thumbnails: HashMap::new(),
        stored: HashMap::new(),
        groups: Vec::new(),
        by_name: HashMap::new(),
        details: Mutex::new(HashMap::new()),
        twins: Mutex::new(HashMap::new()),
    };
    let mut skipped = BTreeMap::new();
    let mut skipped_files = Vec::new();
    let mut group_of_digest: HashMap<Vec<u8>, usize> = HashMap::new();
    for (path, result) in files.iter().zip(results) {
        let name = file_name(path);
        match result {
            Ok((fingerprint, render_digest, ink)) => {
                let next = group_of_digest.len();
                library
                    .groups
                    .push(*group_of_digest.entry(render_digest).or_insert(next));
                if let Some(thumbnail) = fingerprint.thumbnail {
                    library.thumbnails.insert(name.clone(), thumbnail);
                }
                library.index.insert(&name, &fingerprint.features);
                library
                    .stored
                    .insert(name.clone(), Details::new(&name, &fingerprint.features));
                library.by_name.insert(name.clone(), library.drawings.len());
                library.paths.push(path.clone());
                library.drawings.push(Drawing { name, ink });
            }
            Err(s) => {
                *skipped.entry(s.reason.to_string()).or_insert(0) += 1;
                skipped_files.push(Skipped {
                    file: name,
                    reason: s.reason,
                    detail: s.detail,
                });
            }
        }
    }
    if library.drawings.is_empty() {
        bail!("{} has no usable drawings ({found} files)", options.library.display());
    }
    let mut sizes: HashMap<usize, usize> = HashMap::new();
    for g in &library.groups {
        *sizes.entry(*g).or_insert(0) += 1;
    }
    let summary = LibrarySummary {
        dir: options.library.display().to_string(),
        files: found,
        indexed: library.drawings.len(),
        skipped,
        skipped_files,
        identical_groups: sizes.values().filter(|&&n| n > 1).count(),
        files_in_identical_groups: sizes.values().filter(|&&n| n > 1).sum(),
    };
    Ok((library, summary))
}

/// The generated queries of one library drawing.
fn generated_outcomes(library: &Library, source: usize, options: &Options) -> Vec<Outcome> {
    let Ok(bytes) = std::fs::read(&library.paths[source]) else {
        return Vec::new();
    };
    let format = engine::inspect(&bytes, Limits::default()).map(|f| f.format);
    let Some(render) = format.ok().and_then(|f| render_of(&bytes, f).ok()) else {
        return Vec::new();
    };
    let name = &library.drawings[source].name;
    Transform::ALL
        .iter()
        .filter_map(|&transform| {
            let image = DynamicImage::ImageLuma8(transform.apply(&render).ok()?);
            let label = format!("{name}#{}", transform.key());
            let query = engine::query_image(&image, &label);
            let found = library.search(&query, || fine::detail_of_image(&image), &options.params);
            Some(judge(
                library,
                label,
                transform.key(),
                transform.keeps_duplicate(),
                Some(source),
                found,
                options,
            ))
        })
        .collect()
}

fn given_outcome(library: &Library, dir: &Path, row: &(String, String), options: &Options) -> Result<Outcome, String> {
    let (query_name, expected_name) = row;
    let expected = if expected_name.is_empty() {
        None
    } else {
        Some(
            *library
                .by_name
                .get(expected_name)
                .ok_or_else(|| format!("{expected_name} is not an indexed library drawing"))?,
        )
    };
    let bytes = std::fs::read(dir.join(query_name)).map_err(|e| format!("{query_name}: {e}"))?;
    let query = engine::query(&bytes, Limits::default()).map_err(|e| format!("{query_name}: {e}"))?;
    let detail = || fine::detail(&bytes, Limits::default()).ok().flatten();
    let found = library.search(&query, detail, &options.params);
    Ok(judge(
        library,
        query_name.clone(),
        GIVEN,
        true,
        expected,
        found,
        options,
    ))
}

fn judge(
    library: &Library,
    query: String,
    transform: &str,
    must_be_duplicate: bool,
    expected: Option<usize>,
    found: Vec<(usize, f64)>,
    options: &Options,
) -> Outcome {
    let matches = found
        .into_iter()
        .map(|(drawing, similarity)| {
            let right = expected.is_some_and(|e| library.is_right(e, drawing, similarity, options.twins_distinct));
            (drawing, similarity, right)
        })
        .collect();
    Outcome {
        query,
        transform: transform.to_string(),
        must_be_duplicate,
        expected,
        matches,
    }
}

/// Measures; see the module documentation.
pub fn calibrate(options: &Options) -> anyhow::Result<Report> {
    let started = Instant::now();
    if !options.generate && options.queries.is_none() {
        bail!("give --generate, or --queries DIR with --truth FILE.csv, or both");
    }
    for (name, value) in [
        ("--target-precision", options.target_precision),
        ("--target-similar-precision", options.target_similar_precision),
    ] {
        if !(value.is_finite() && (0.0..=1.0).contains(&value)) {
            bail!("{name} must be between 0 and 1");
        }
    }
    let (library, summary) = load_library(options)?;
    let mut outcomes = Vec::new();
    if options.generate {
        let sources: Vec<usize> = (0..library.drawings.len()).collect();
        let progress = options.progress.then_some("generated queries of");
        outcomes.extend(
            parallel_map(&sources, options.threads, progress, |&s| {
                generated_outcomes(&library, s, options)
            })
            .into_iter()
            .flatten(),
        );
    }
    if let Some((dir, truth)) = &options.queries {
        let rows = read_truth(truth)?;
        let progress = options.progress.then_some("given queries");
        for outcome in parallel_map(&rows, options.threads, progress, |row| {
            given_outcome(&library, dir, row, options)
        }) {
            match outcome {
                Ok(outcome) => outcomes.push(outcome),
                Err(reason) => bail!("given query: {reason}"),
            }
        }
    }
    Ok(report(&library, summary, &outcomes, options, started))
}

fn report(
    library: &Library,
    summary: LibrarySummary,
    outcomes: &[Outcome],
    options: &Options,
    started: Instant,
) -> Report {
    let params = &options.params;
    let all: Vec<&Outcome> = outcomes.iter().collect();
    let mut by_transform = BTreeMap::new();
    for outcome in outcomes {
        by_transform
            .entry(outcome.transform.clone())
            .or_insert_with(Vec::new)
            .push(outcome);
    }
    let by_threshold: Vec<ThresholdRow> = THRESHOLDS
        .iter()
        .map(|&t| ThresholdRow {
            threshold: t,
            precision: precision(&all, t),
            recall: recall(&all, t, true),
            recall_any: recall(&all, t, false),
        })
        .collect();
    let lowest_reaching = |target: f64| {
        by_threshold
            .iter()
            .find(|row| row.precision.is_some_and(|p| p >= target))
            .map(|row| row.threshold)
    };
    let recommended = Recommended {
        duplicate_threshold: lowest_reaching(options.target_precision),
        similar_threshold: lowest_reaching(options.target_similar_precision),
        target_precision: options.target_precision,
        target_similar_precision: options.target_similar_precision,
    };
    Report {
        mode: params.mode.as_str(),
        duplicate_threshold: params.duplicate_threshold,
        similar_threshold: params.similar_threshold,
        library: summary,
        queries: outcomes.len(),
        duplicate: Score {
            precision: precision(&all, params.duplicate_threshold),
            recall: recall(&all, params.duplicate_threshold, true),
        },
        similar: Score {
            precision: precision(&all, params.similar_threshold),
            recall: recall(&all, params.similar_threshold, false),
        },
        by_transform: by_transform
            .into_iter()
            .map(|(key, outcomes)| {
                let score = transform_score(&outcomes, params);
                (key, score)
            })
            .collect(),
        by_threshold,
        recommended,
        misses: misses(library, outcomes, params),
        wrong: wrong(library, outcomes, params),
        seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    }
}

fn ratio(part: usize, whole: usize) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

fn precision(outcomes: &[&Outcome], threshold: f64) -> Option<f64> {
    let (called, right) = outcomes
        .iter()
        .map(|o| o.called(threshold))
        .fold((0, 0), |(c, r), (oc, or)| (c + oc, r + or));
    ratio(right, called)
}

/// `duplicates_only`: over the queries that must be duplicates; else over
/// every query with a source.
fn recall(outcomes: &[&Outcome], threshold: f64, duplicates_only: bool) -> Option<f64> {
    let due: Vec<_> = outcomes
        .iter()
        .filter(|o| o.expected.is_some() && (o.must_be_duplicate || !duplicates_only))
        .collect();
    ratio(due.iter().filter(|o| o.found_at(threshold)).count(), due.len())
}

fn transform_score(outcomes: &[&Outcome], params: &SearchParams) -> TransformScore {
    let wrong = |t: f64| outcomes.iter().map(|o| o.called(t)).map(|(c, r)| c - r).sum();
    let must_be_duplicate = outcomes.iter().all(|o| o.must_be_duplicate);
    TransformScore {
        queries: outcomes.len(),
        must_be_duplicate,
        duplicate: Score {
            precision: precision(outcomes, params.duplicate_threshold),
            recall: recall(outcomes, params.duplicate_threshold, false),
        },
        similar: Score {
            precision: precision(outcomes, params.similar_threshold),
            recall: recall(outcomes, params.similar_threshold, false),
        },
        wrong_duplicates: wrong(params.duplicate_threshold),
        wrong_similar: wrong(params.similar_threshold),
    }
}

/// Queries not found as they must be.
fn misses(library: &Library, outcomes: &[Outcome], params: &SearchParams) -> Vec<Miss> {
    let required = |o: &Outcome| {
        if o.must_be_duplicate {
            params.duplicate_threshold
        } else {
            params.similar_threshold
        }
    };
    let missed = outcomes
        .iter()
        .filter(|o| o.expected.is_some() && !o.found_at(required(o)));
    listed(library, missed)
}

/// Queries that called a wrong drawing a duplicate.
fn wrong(library: &Library, outcomes: &[Outcome], params: &SearchParams) -> Vec<Miss> {
    let wrong = outcomes.iter().filter(|o| {
        let (called, right) = o.called(params.duplicate_threshold);
        called > right
    });
    listed(library, wrong)
}

fn listed<'a>(library: &Library, outcomes: impl Iterator<Item = &'a Outcome>) -> Vec<Miss> {
    outcomes
        .take(LISTED_MISSES)
        .map(|o| Miss {
            query: o.query.clone(),
            transform: o.transform.clone(),
            expected: o.expected.map(|e| library.drawings[e].name.clone()),
            expected_similarity: o.source_similarity(),
            best_wrong: o
                .matches
                .iter()
                .filter(|(_, _, right)| !right)
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(d, s, _)| (library.drawings[*d].name.clone(), *s)),
        })
        .collect()
}

impl Report {
    /// The human-readable form.
    pub fn table(&self) -> String {
        let pct = |v: Option<f64>| v.map_or_else(|| "  -  ".to_string(), |v| format!("{v:.3}"));
        let mut out = String::new();
        let l = &self.library;
        let _ = writeln!(
            out,
            "library {}: {} files, {} indexed, {} skipped; {} groups of pixel-identical renders ({} files)",
            l.dir,
            l.files,
            l.indexed,
            l.skipped.values().sum::<usize>(),
            l.identical_groups,
            l.files_in_identical_groups
        );
        let _ = writeln!(
            out,
            "{} queries, mode {}, duplicate ≥ {}, similar ≥ {} ({:.1} s)\n",
            self.queries, self.mode, self.duplicate_threshold, self.similar_threshold, self.seconds
        );
        let _ = writeln!(
            out,
            "duplicate: precision {}  recall {}\nsimilar:   precision {}  recall {}   (duplicate or similar)\n",
            pct(self.duplicate.precision),
            pct(self.duplicate.recall),
            pct(self.similar.precision),
            pct(self.similar.recall)
        );
        let _ = writeln!(
            out,
            "{:<16} {:>7}  {:>9} {:>9}  {:>9} {:>9}  {:>6} {:>6}",
            "transform", "queries", "dup prec", "dup rec", "sim prec", "sim rec", "wrongD", "wrongS"
        );
        for (key, t) in &self.by_transform {
            let _ = writeln!(
                out,
                "{:<16} {:>7}  {:>9} {:>9}  {:>9} {:>9}  {:>6} {:>6}",
                format!("{key}{}", if t.must_be_duplicate { "" } else { " (≥sim)" }),
                t.queries,
                pct(t.duplicate.precision),
                pct(t.duplicate.recall),
                pct(t.similar.precision),
                pct(t.similar.recall),
                t.wrong_duplicates,
                t.wrong_similar
            );
        }
        let _ = writeln!(
            out,
            "\n{:>9} {:>9} {:>9} {:>10}",
            "threshold", "precision", "recall", "recall any"
        );
        for row in &self.by_threshold {
            let _ = writeln!(
                out,
                "{:>9.2} {:>9} {:>9} {:>10}",
                row.threshold,
                pct(row.precision),
                pct(row.recall),
                pct(row.recall_any)
            );
        }
        let r = &self.recommended;
        let show = |t: Option<f64>| t.map_or_else(|| "none reaches it".to_string(), |t| format!("{t:.2}"));
        let _ = writeln!(
            out,
            "\nrecommended: duplicate_threshold {} (precision ≥ {}), similar_threshold {} (precision ≥ {})",
            show(r.duplicate_threshold),
            r.target_precision,
            show(r.similar_threshold),
            r.target_similar_precision
        );
        for (title, list) in [("first misses", &self.misses), ("first wrong duplicates", &self.wrong)] {
            if list.is_empty() {
                continue;
            }
            let _ = writeln!(out, "\n{title}:");
            for m in list.iter().take(TABLE_MISSES) {
                let _ = writeln!(
                    out,
                    "  {} [{}] expected {} at {}; best wrong {}",
                    m.query,
                    m.transform,
                    m.expected.as_deref().unwrap_or("nothing"),
                    pct(m.expected_similarity),
                    m.best_wrong
                        .as_ref()
                        .map_or_else(|| "none".to_string(), |(n, s)| format!("{n} at {s:.3}"))
                );
            }
        }
        out
    }
}

fn digest(image: &GrayImage) -> Vec<u8> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&image.width().to_le_bytes());
    ctx.update(&image.height().to_le_bytes());
    ctx.update(image.as_raw());
    ctx.finish().as_ref().to_vec()
}

/// Grey luma of an image over white paper (transparent pixels are paper).
fn on_white(image: &DynamicImage) -> GrayImage {
    if let DynamicImage::ImageLuma8(gray) = image {
        return gray.clone();
    }
    let rgba = image.to_rgba8();
    GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let luma = (299 * u32::from(r) + 587 * u32::from(g) + 114 * u32::from(b) + 500) / 1000;
        let over = (luma * u32::from(a) + 255 * (255 - u32::from(a)) + 127) / 255;
        image::Luma([over as u8])
    })
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// The drawings of `dir` (not recursive), sorted by name.
fn list_drawings(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let known = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        if known && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// `f` over `items` on `threads` workers, results in item order.
fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    progress: Option<&str>,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let started = Instant::now();
    let worker = || {
        let mut out = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else { break };
            out.push((i, f(item)));
            let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(label) = progress
                && (finished.is_multiple_of(100) || finished == items.len())
            {
                eprintln!(
                    "calibrate: {label} {finished}/{} ({:.0} s)",
                    items.len(),
                    started.elapsed().as_secs_f64()
                );
            }
        }
        out
    };
    let mut all: Vec<(usize, R)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads.clamp(1, items.len().max(1)))
            .map(|_| scope.spawn(worker))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a calibrate worker panicked"))
            .collect()
    });
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

/// `query,expected` rows; a first row `query,expected` is a header.
fn read_truth(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let unquote = |s: &str| s.trim().trim_matches('"').trim().to_string();
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Some((query, expected)) = line.split_once(',') else {
            bail!("{}:{}: expected `query,expected`", path.display(), i + 1);
        };
        let (query, expected) = (unquote(query), unquote(expected));
        if rows.is_empty() && query.eq_ignore_ascii_case("query") && expected.eq_ignore_ascii_case("expected") {
            continue;
        }
        if query.is_empty() {
            bail!("{}:{}: the query file name is empty", path.display(), i + 1);
        }
        rows.push((query, expected));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use dxf::entities::{Arc, Entity, EntityType, LwPolyline};
    use dxf::enums::AcadVersion;
    use dxf::{LwPolylineVertex, Point};

    use super::*;
    use crate::engine::Mode;
    use crate::engine::render::test_entities::{circle, line};

    fn arc(x: f64, y: f64, r: f64, a0: f64, a1: f64) -> Entity {
        Entity::new(EntityType::Arc(Arc::new(Point::new(x, y, 0.0), r, a0, a1)))
    }

    fn polyline(points: &[(f64, f64)], closed: bool) -> Entity {
        Entity::new(EntityType::LwPolyline(LwPolyline {
            vertices: points
                .iter()
                .map(|&(x, y)| LwPolylineVertex {
                    x,
                    y,
                    ..Default::default()
                })
                .collect(),
            flags: i32::from(closed),
            ..Default::default()
        }))
    }

    fn rect(x0: f64, y0: f64, x1: f64, y1: f64) -> Entity {
        polyline(&[(x0, y0), (x1, y0), (x1, y1), (x0, y1)], true)
    }

    /// Eight small drawings that look nothing alike, in no orientation.
    fn library() -> Vec<(&'static str, Vec<Entity>)> {
        vec![
            (
                "bracket",
                vec![
                    polyline(
                        &[
                            (0.0, 0.0),
                            (100.0, 0.0),
                            (100.0, 20.0),
                            (20.0, 20.0),
                            (20.0, 70.0),
                            (0.0, 70.0),
                        ],
                        true,
                    ),
                    circle(60.0, 10.0, 5.0),
                    circle(10.0, 50.0, 5.0),
                ],
            ),
            (
                "flange",
                vec![
                    circle(0.0, 0.0, 50.0),
                    circle(0.0, 0.0, 20.0),
                    circle(35.0, 0.0, 5.0),
                    circle(0.0, 35.0, 5.0),
                    line(-60.0, -60.0, -20.0, -60.0),
                ],
            ),
            (
                "grid",
                (0..6)
                    .flat_map(|i| {
                        let v = f64::from(i) * 20.0;
                        [line(v, 0.0, v, 100.0), line(0.0, v * 0.5, 100.0, v * 0.5)]
                    })
                    .collect(),
            ),
            (
                "stairs",
                vec![polyline(
                    &[
                        (0.0, 0.0),
                        (0.0, 20.0),
                        (20.0, 20.0),
                        (20.0, 40.0),
                        (40.0, 40.0),
                        (40.0, 60.0),
                        (60.0, 60.0),
                        (60.0, 80.0),
                        (80.0, 80.0),
                        (80.0, 0.0),
                    ],
                    true,
                )],
            ),
            (
                "hook",
                vec![
                    line(0.0, 100.0, 0.0, 30.0),
                    arc(30.0, 30.0, 30.0, 180.0, 360.0),
                    line(60.0, 30.0, 60.0, 50.0),
                    circle(0.0, 105.0, 5.0),
                ],
            ),
            (
                "panel",
                vec![
                    rect(0.0, 0.0, 150.0, 60.0),
                    rect(10.0, 10.0, 40.0, 50.0),
                    rect(50.0, 10.0, 140.0, 25.0),
                    line(50.0, 40.0, 140.0, 40.0),
                    circle(95.0, 50.0, 4.0),
                ],
            ),
            (
                "zigzag",
                vec![polyline(
                    &(0..9)
                        .map(|i| {
                            (
                                f64::from(i) * 15.0,
                                if i % 2 == 0 { 0.0 } else { 40.0 + f64::from(i) * 5.0 },
                            )
                        })
                        .collect::<Vec<_>>(),
                    false,
                )],
            ),
            (
                "target",
                vec![
                    circle(0.0, 0.0, 40.0),
                    line(-50.0, 0.0, 50.0, 0.0),
                    line(0.0, -50.0, 0.0, 10.0),
                    arc(0.0, 0.0, 25.0, 0.0, 120.0),
                    rect(15.0, -35.0, 35.0, -15.0),
                ],
            ),
        ]
    }

    fn write_library(dir: &Path) {
        for (name, entities) in library() {
            let mut drawing = dxf::Drawing::new();
            // R12, the crate's default, silently drops LWPOLYLINE on save.
            drawing.header.version = AcadVersion::R2013;
            for entity in entities {
                drawing.add_entity(entity);
            }
            drawing.save_file(dir.join(format!("{name}.dxf"))).unwrap();
        }
        // A re-save of one drawing: a distinct file with an identical render.
        std::fs::copy(dir.join("hook.dxf"), dir.join("hook-copy.dxf")).unwrap();
        // The stairs mirrored: an orientation twin, not a false positive.
        let mut mirrored = dxf::Drawing::new();
        mirrored.header.version = AcadVersion::R2013;
        let (_, stairs) = library().into_iter().find(|(name, _)| *name == "stairs").unwrap();
        for entity in stairs {
            let EntityType::LwPolyline(mut p) = entity.specific else {
                unreachable!()
            };
            p.vertices.iter_mut().for_each(|v| v.x = -v.x);
            mirrored.add_entity(Entity::new(EntityType::LwPolyline(p)));
        }
        mirrored.save_file(dir.join("stairs-mirrored.dxf")).unwrap();
        std::fs::write(dir.join("notes.txt"), "not a drawing").unwrap();
        std::fs::write(dir.join("broken.dxf"), "0\nSECTION\n2\nENTITIES\n0\nENDSEC\n0\nEOF\n").unwrap();
    }

    fn options(library: &Path) -> Options {
        Options {
            library: library.to_path_buf(),
            threads: 2,
            ..Options::default()
        }
    }

    #[test]
    fn generated_queries_are_searched_by_the_engine_and_judged() {
        let dir = tempfile::tempdir().unwrap();
        write_library(dir.path());
        let report = calibrate(&Options {
            generate: true,
            ..options(dir.path())
        })
        .unwrap();
        let library = &report.library;
        assert_eq!((library.files, library.indexed), (11, 10), "{library:?}");
        assert_eq!(library.skipped.values().sum::<usize>(), 1);
        assert_eq!((library.identical_groups, library.files_in_identical_groups), (1, 2));
        assert_eq!(report.queries, 10 * Transform::ALL.len());
        assert_eq!(report.by_transform.len(), Transform::ALL.len());
        for transform in Transform::ALL {
            let score = &report.by_transform[transform.key()];
            assert_eq!(score.queries, 10);
            assert_eq!(score.must_be_duplicate, transform.keeps_duplicate());
            // Known limit: a label over the drawing, or heavier than 40% of
            // its ink, is not left out of any frame (BENCHMARKS.md).
            if transform == Transform::Label {
                continue;
            }
            let recall = if transform.keeps_duplicate() {
                score.duplicate.recall
            } else {
                score.similar.recall
            };
            // These fixtures are framed shapes: a 3% crop cuts their border
            // lines off, which is a changed drawing more often than not.
            let floor = if transform == Transform::Crop3 { 0.5 } else { 0.8 };
            assert!(recall.unwrap() >= floor, "{}: {score:?}", transform.key());
        }
        assert!(report.duplicate.precision.unwrap() >= 0.95, "{:?}", report.duplicate);
        // The mirrored stairs are the same picture: right, by default.
        assert_eq!(report.by_transform["rot180"].wrong_duplicates, 0, "{:?}", report.misses);
        assert_eq!(report.by_threshold.len(), THRESHOLDS.len());
        assert!(
            report.recommended.duplicate_threshold.is_some(),
            "{:?}",
            report.recommended
        );
        let json = serde_json::to_value(&report).unwrap();
        for key in ["duplicate", "similar", "by_transform", "by_threshold", "recommended"] {
            assert!(json.get(key).is_some(), "{key} missing");
        }
        assert!(json["duplicate"]["precision"].is_number() && json["similar"]["recall"].is_number());
        let table = report.table();
        for needle in ["resize_quarter", "recommended", "precision"] {
            assert!(table.contains(needle), "{needle} missing from\n{table}");
        }
    }

    #[test]
    fn the_mirrored_twin_is_wrong_when_twins_count_as_distinct() {
        let dir = tempfile::tempdir().unwrap();
        write_library(dir.path());
        let run = |twins_distinct| {
            calibrate(&Options {
                generate: true,
                twins_distinct,
                ..options(dir.path())
            })
            .unwrap()
        };
        let wrong = |r: &Report| r.by_transform["rot180"].wrong_duplicates;
        assert!(wrong(&run(true)) >= 2, "stairs and its mirror find each other");
    }

    #[test]
    fn given_queries_are_measured_against_their_truth() {
        let dir = tempfile::tempdir().unwrap();
        let library = dir.path().join("library");
        let queries = dir.path().join("queries");
        std::fs::create_dir_all(&library).unwrap();
        std::fs::create_dir_all(&queries).unwrap();
        write_library(&library);
        let render = |name: &str| {
            let bytes = std::fs::read(library.join(format!("{name}.dxf"))).unwrap();
            render_of(&bytes, Format::DxfAscii).unwrap()
        };
        Transform::Rot90
            .apply(&render("flange"))
            .unwrap()
            .save(queries.join("flange.png"))
            .unwrap();
        Transform::ResizeHalf
            .apply(&render("panel"))
            .unwrap()
            .save(queries.join("panel.png"))
            .unwrap();
        transform::pad(&corner(&render("grid")), 0.1)
            .save(queries.join("unknown.png"))
            .unwrap();
        let truth = dir.path().join("truth.csv");
        std::fs::write(
            &truth,
            "query,expected\nflange.png,flange.dxf\npanel.png,panel.dxf\nunknown.png,\n",
        )
        .unwrap();
        let report = calibrate(&Options {
            queries: Some((queries.clone(), truth.clone())),
            ..options(&library)
        })
        .unwrap();
        assert_eq!(report.queries, 3);
        let given = &report.by_transform[GIVEN];
        assert_eq!(given.duplicate.recall, Some(1.0), "{given:?}");
        assert_eq!(given.wrong_duplicates, 0, "{:?}", report.misses);
        std::fs::write(&truth, "query,expected\nflange.png,nowhere.dxf\n").unwrap();
        let unknown = calibrate(&Options {
            queries: Some((queries, truth)),
            ..options(&library)
        });
        assert!(unknown.unwrap_err().to_string().contains("nowhere.dxf"));
    }

    /// The top-left part of a render: a piece of the grid, which is none of
    /// the library's drawings.
    fn corner(image: &GrayImage) -> GrayImage {
        image::imageops::crop_imm(image, 0, 0, image.width() / 3, image.height() / 3).to_image()
    }

    #[test]
    fn options_are_checked_and_truth_files_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let none = options(dir.path());
        assert!(calibrate(&none).unwrap_err().to_string().contains("--generate"));
        let bad_target = Options {
            generate: true,
            target_precision: 1.5,
            ..none.clone()
        };
        assert!(
            calibrate(&bad_target)
                .unwrap_err()
                .to_string()
                .contains("--target-precision")
        );
        let empty = Options {
            generate: true,
            ..none.clone()
        };
        assert!(
            calibrate(&empty)
                .unwrap_err()
                .to_string()
                .contains("no usable drawings")
        );
        let csv = dir.path().join("t.csv");
        std::fs::write(&csv, "query,expected\n\"a.png\", b.dxf\n\nc.png,\n").unwrap();
        assert_eq!(
            read_truth(&csv).unwrap(),
            [("a.png".into(), "b.dxf".into()), ("c.png".into(), String::new())]
        );
        std::fs::write(&csv, "just-one-column\n").unwrap();
        assert!(read_truth(&csv).is_err());
    }

    #[test]
    fn the_subcommand_parses_into_options() {
        use clap::{CommandFactory, Parser};

        use crate::cli::{Cli, Command};

        let cli = Cli::try_parse_from([
            "dedup2d",
            "calibrate",
            "--library",
            "lib",
            "--generate",
            "--limit",
            "5",
            "--mode",
            "precise",
            "--duplicate-threshold",
            "0.9",
            "--target-precision",
            "0.98",
            "--json",
        ])
        .unwrap();
        let Command::Calibrate(args) = cli.command else {
            panic!("not calibrate")
        };
        let options = args.options();
        assert!(args.json && options.generate && options.queries.is_none() && options.progress);
        assert_eq!(
            (options.library, options.limit, options.target_precision),
            (PathBuf::from("lib"), Some(5), 0.98)
        );
        assert_eq!(
            (options.params.mode, options.params.duplicate_threshold),
            (Mode::Precise, 0.9)
        );
        assert!(Cli::try_parse_from(["dedup2d", "calibrate", "--library", "l", "--queries", "q"]).is_err());
        let help = Cli::command()
            .find_subcommand_mut("calibrate")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(help.contains("--target-precision"), "{help}");
    }
}
