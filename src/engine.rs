//! The matching engine: bytes in, features and scores out. Pure: no IO, no
//! async, no config lookups; callers pass bytes, limits and parameters.
//!
//! For now it matches exact duplicates only (L1: sha256 of the bytes). The
//! near-duplicate levels replace [`fingerprint`] and [`Index::search`] without
//! changing their callers.

use std::collections::HashMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub mod l2;
pub mod raster;
pub mod render;
pub mod verify;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    #[error("the file is empty")]
    Empty,
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Unreadable(String),
}

pub const ACCEPTED_FORMATS: &str = "DXF (ASCII or binary), PNG, JPEG, TIFF, BMP, WebP, GIF";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    DxfAscii,
    DxfBinary,
    Png,
    Jpeg,
    Tiff,
    Bmp,
    Webp,
    Gif,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::DxfAscii => "ASCII DXF",
            Format::DxfBinary => "binary DXF",
            Format::Png => "PNG",
            Format::Jpeg => "JPEG",
            Format::Tiff => "TIFF",
            Format::Bmp => "BMP",
            Format::Webp => "WebP",
            Format::Gif => "GIF",
        }
    }
}

/// Decode limits, so a hostile file cannot exhaust the machine.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_pixels: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pixels: 200_000_000,
        }
    }
}

/// What the library stores per drawing, so an index is rebuilt without
/// re-reading drawings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Features {
    /// sha256 of the bytes, 64 lowercase hex.
    pub file_hash: String,
    pub format: Format,
    /// Pixel size for rasters; absent for DXF.
    pub width: Option<u32>,
    pub height: Option<u32>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Checks that `bytes` is a drawing we read and computes its features.
pub fn fingerprint(bytes: &[u8], limits: Limits) -> Result<Features, EngineError> {
    let format = sniff(bytes)?;
    let (width, height) = match format {
        Format::DxfAscii => {
            check_ascii_dxf(bytes)?;
            (None, None)
        }
        Format::DxfBinary => (None, None),
        _ => {
            let (w, h) = raster_size(bytes, format)?;
            if u64::from(w) * u64::from(h) > limits.max_pixels {
                return Err(EngineError::Unreadable(format!(
                    "the image is {w}x{h} pixels, more than the limit of {} pixels",
                    limits.max_pixels
                )));
            }
            (Some(w), Some(h))
        }
    };
    Ok(Features {
        file_hash: sha256_hex(bytes),
        format,
        width,
        height,
    })
}

fn sniff(bytes: &[u8]) -> Result<Format, EngineError> {
    if bytes.is_empty() {
        return Err(EngineError::Empty);
    }
    let starts = |magic: &[u8]| bytes.starts_with(magic);
    let format = if starts(b"\x89PNG\r\n\x1a\n") {
        Format::Png
    } else if starts(b"\xff\xd8\xff") {
        Format::Jpeg
    } else if starts(b"II*\0") || starts(b"MM\0*") {
        Format::Tiff
    } else if starts(b"BM") {
        Format::Bmp
    } else if starts(b"GIF87a") || starts(b"GIF89a") {
        Format::Gif
    } else if bytes.len() >= 12 && starts(b"RIFF") && &bytes[8..12] == b"WEBP" {
        Format::Webp
    } else if starts(b"AutoCAD Binary DXF\r\n\x1a\0") {
        Format::DxfBinary
    } else if looks_like_ascii_dxf(bytes) {
        Format::DxfAscii
    } else {
        return Err(EngineError::Unsupported(unsupported_message(bytes)));
    };
    Ok(format)
}

fn unsupported_message(bytes: &[u8]) -> String {
    let named = if bytes.starts_with(b"AC10") || bytes.starts_with(b"AC2") {
        "DWG files are not read; export the drawing as DXF. "
    } else if bytes.starts_with(b"%PDF") {
        "PDF files are not read; export the drawing as DXF or an image. "
    } else {
        ""
    };
    format!("{named}Not a drawing format dedup2d reads; accepted: {ACCEPTED_FORMATS}")
}

/// ASCII DXF opens with group code 0 then SECTION, or with 999 comments.
fn looks_like_ascii_dxf(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(4096)];
    let text = String::from_utf8_lossy(head);
    let mut lines = text.trim_start_matches('\u{feff}').lines().map(str::trim);
    loop {
        match (lines.next(), lines.next()) {
            (Some("999"), Some(_)) => continue,
            (Some("0"), Some(section)) => return section.eq_ignore_ascii_case("SECTION"),
            _ => return false,
        }
    }
}

/// A truncated DXF has no final `0 / EOF` pair; an upload cut short must not
/// enter a library as if it were the drawing.
fn check_ascii_dxf(bytes: &[u8]) -> Result<(), EngineError> {
    let tail = &bytes[bytes.len().saturating_sub(64)..];
    let text = String::from_utf8_lossy(tail);
    let mut last: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let eof = last.pop().is_some_and(|l| l.eq_ignore_ascii_case("EOF"));
    let code = last.pop() == Some("0");
    if eof && code {
        Ok(())
    } else {
        Err(EngineError::Unreadable(
            "the DXF file ends without `0 EOF`; is it truncated?".into(),
        ))
    }
}

fn raster_size(bytes: &[u8], format: Format) -> Result<(u32, u32), EngineError> {
    let image_format = match format {
        Format::Png => image::ImageFormat::Png,
        Format::Jpeg => image::ImageFormat::Jpeg,
        Format::Tiff => image::ImageFormat::Tiff,
        Format::Bmp => image::ImageFormat::Bmp,
        Format::Webp => image::ImageFormat::WebP,
        Format::Gif => image::ImageFormat::Gif,
        Format::DxfAscii | Format::DxfBinary => unreachable!("rasters only"),
    };
    image::ImageReader::with_format(std::io::Cursor::new(bytes), image_format)
        .into_dimensions()
        .map_err(|e| EngineError::Unreadable(format!("cannot read the {} image: {e}", format.name())))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Fast,
    Balanced,
    Precise,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Fast => "fast",
            Mode::Balanced => "balanced",
            Mode::Precise => "precise",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    Strict,
    Version,
    Loose,
}

impl Preset {
    /// (duplicate, similar) thresholds, CONTRACT §3.
    pub fn thresholds(self) -> (f64, f64) {
        match self {
            Preset::Strict => (0.95, 0.80),
            Preset::Version => (0.95, 0.70),
            Preset::Loose => (0.90, 0.50),
        }
    }
}

/// A search request's parameters, already validated by the caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchParams {
    pub mode: Mode,
    pub max_results: usize,
    pub duplicate_threshold: f64,
    pub similar_threshold: f64,
    pub preset: Option<Preset>,
    pub enable_precision: bool,
    pub precision_top_n: usize,
}

impl Default for SearchParams {
    fn default() -> Self {
        SearchParams {
            mode: Mode::Balanced,
            max_results: 50,
            duplicate_threshold: 0.95,
            similar_threshold: 0.80,
            preset: None,
            enable_precision: true,
            precision_top_n: 20,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Duplicate,
    Similar,
    Different,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Match {
    pub drawing_id: String,
    pub file_hash: String,
    pub file_name: String,
    pub similarity: f64,
    pub confidence: f64,
    pub match_level: u8,
    pub verdict: Verdict,
    pub levels: serde_json::Value,
}

/// CONTRACT §3: the shape the original got from its vision service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResult {
    pub success: bool,
    pub total_matches: usize,
    pub duplicates: Vec<Match>,
    pub similar: Vec<Match>,
    pub final_level: u8,
    pub timing: serde_json::Map<String, serde_json::Value>,
    pub level_stats: serde_json::Value,
    pub warnings: Vec<String>,
    pub error: Option<String>,
}

/// One drawing in a tenant's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub drawing_id: String,
    pub file_name: String,
    pub features: Features,
}

/// A tenant's in-memory index: exact-hash buckets for L1.
#[derive(Debug, Default, Clone)]
pub struct Index {
    by_id: HashMap<String, Entry>,
    by_hash: HashMap<String, Vec<String>>,
}

impl Index {
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn contains(&self, drawing_id: &str) -> bool {
        self.by_id.contains_key(drawing_id)
    }

    pub fn insert(&mut self, entry: Entry) {
        self.remove(&entry.drawing_id);
        self.by_hash
            .entry(entry.features.file_hash.clone())
            .or_default()
            .push(entry.drawing_id.clone());
        self.by_id.insert(entry.drawing_id.clone(), entry);
    }

    pub fn remove(&mut self, drawing_id: &str) -> Option<Entry> {
        let entry = self.by_id.remove(drawing_id)?;
        if let Some(ids) = self.by_hash.get_mut(&entry.features.file_hash) {
            ids.retain(|id| id != drawing_id);
            if ids.is_empty() {
                self.by_hash.remove(&entry.features.file_hash);
            }
        }
        Some(entry)
    }

    /// `fingerprint_ms` is the caller's measured time to fingerprint the
    /// query, reported in `timing` beside the search's own.
    pub fn search(&self, query: &Features, params: &SearchParams, fingerprint_ms: f64) -> SearchResult {
        let started = Instant::now();
        let mut duplicates: Vec<Match> = self
            .by_hash
            .get(&query.file_hash)
            .into_iter()
            .flatten()
            .filter_map(|id| self.by_id.get(id))
            .map(|entry| exact_match(entry, params))
            .collect();
        duplicates.sort_by(|a, b| a.drawing_id.cmp(&b.drawing_id));
        let candidates = duplicates.len();
        duplicates.truncate(params.max_results);
        let l1_ms = started.elapsed().as_secs_f64() * 1000.0;
        let mut timing = serde_json::Map::new();
        timing.insert("fingerprint_ms".into(), round_ms(fingerprint_ms));
        timing.insert("l1_ms".into(), round_ms(l1_ms));
        timing.insert("total_ms".into(), round_ms(fingerprint_ms + l1_ms));
        SearchResult {
            success: true,
            total_matches: duplicates.len(),
            duplicates,
            similar: Vec::new(),
            final_level: 1,
            timing,
            level_stats: serde_json::json!({
                "l1": {"library_size": self.len(), "candidates": candidates},
            }),
            warnings: mode_warnings(params),
            error: None,
        }
    }
}

fn exact_match(entry: &Entry, params: &SearchParams) -> Match {
    let similarity = 1.0;
    Match {
        drawing_id: entry.drawing_id.clone(),
        file_hash: entry.features.file_hash.clone(),
        file_name: entry.file_name.clone(),
        similarity,
        confidence: 1.0,
        match_level: 1,
        verdict: verdict(similarity, params),
        levels: serde_json::json!({"l1": {"exact": true, "similarity": similarity}}),
    }
}

pub fn verdict(similarity: f64, params: &SearchParams) -> Verdict {
    if similarity >= params.duplicate_threshold {
        Verdict::Duplicate
    } else if similarity >= params.similar_threshold {
        Verdict::Similar
    } else {
        Verdict::Different
    }
}

/// Until the near-duplicate levels exist, say so instead of pretending a
/// balanced or precise search looked further than L1.
fn mode_warnings(params: &SearchParams) -> Vec<String> {
    if params.mode == Mode::Fast {
        Vec::new()
    } else {
        vec![format!(
            "mode={} searched exact duplicates only (L1); near-duplicate levels are not available yet",
            params.mode.as_str()
        )]
    }
}

fn round_ms(ms: f64) -> serde_json::Value {
    serde_json::json!((ms * 1000.0).round() / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn tiny_png() -> Vec<u8> {
        let mut out = Vec::new();
        image::RgbImage::from_pixel(3, 2, image::Rgb([255, 255, 255]))
            .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    const DXF: &str = "0\nSECTION\n2\nENTITIES\n0\nLINE\n8\n0\n10\n0\n20\n0\n11\n1\n21\n1\n0\nENDSEC\n0\nEOF\n";

    #[test]
    fn rasters_and_dxf_are_recognised() {
        let png = fingerprint(&tiny_png(), Limits::default()).unwrap();
        assert_eq!((png.format, png.width, png.height), (Format::Png, Some(3), Some(2)));
        assert_eq!(png.file_hash.len(), 64);
        let dxf = fingerprint(DXF.as_bytes(), Limits::default()).unwrap();
        assert_eq!(dxf.format, Format::DxfAscii);
        let commented = format!("999\nmade by hand\n{DXF}");
        assert_eq!(
            fingerprint(commented.as_bytes(), Limits::default()).unwrap().format,
            Format::DxfAscii
        );
    }

    #[test]
    fn bad_input_is_named() {
        assert_eq!(fingerprint(b"", Limits::default()), Err(EngineError::Empty));
        let dwg = fingerprint(b"AC1032\0\0\0garbage", Limits::default()).unwrap_err();
        assert!(
            matches!(&dwg, EngineError::Unsupported(m) if m.contains("DWG")),
            "{dwg}"
        );
        let text = fingerprint(b"hello world", Limits::default()).unwrap_err();
        assert!(
            matches!(&text, EngineError::Unsupported(m) if m.contains("PNG")),
            "{text}"
        );
        let truncated = fingerprint(&tiny_png()[..20], Limits::default()).unwrap_err();
        assert!(matches!(truncated, EngineError::Unreadable(_)));
        let cut_dxf = fingerprint(&DXF.as_bytes()[..30], Limits::default()).unwrap_err();
        assert!(matches!(cut_dxf, EngineError::Unreadable(_)));
        let huge = fingerprint(&tiny_png(), Limits { max_pixels: 5 }).unwrap_err();
        assert!(
            matches!(&huge, EngineError::Unreadable(m) if m.contains("3x2")),
            "{huge}"
        );
    }

    #[test]
    fn index_finds_only_identical_bytes_and_forgets_removed_drawings() {
        let a = fingerprint(&tiny_png(), Limits::default()).unwrap();
        let b = fingerprint(DXF.as_bytes(), Limits::default()).unwrap();
        let mut index = Index::default();
        for (id, features) in [("d1", &a), ("d2", &a), ("d3", &b)] {
            index.insert(Entry {
                drawing_id: id.into(),
                file_name: format!("{id}.png"),
                features: features.clone(),
            });
        }
        let params = SearchParams::default();
        let found = index.search(&a, &params, 0.5);
        let ids: Vec<_> = found.duplicates.iter().map(|m| m.drawing_id.as_str()).collect();
        assert_eq!(ids, ["d1", "d2"]);
        assert_eq!(found.total_matches, 2);
        assert_eq!(found.duplicates[0].verdict, Verdict::Duplicate);
        assert!(found.timing["total_ms"].as_f64().unwrap() >= 0.5);
        index.remove("d1");
        assert_eq!(index.search(&a, &params, 0.0).total_matches, 1);
        let limited = SearchParams {
            max_results: 0,
            ..params
        };
        assert_eq!(index.search(&b, &limited, 0.0).total_matches, 0);
    }

    #[test]
    fn verdict_follows_thresholds() {
        let p = SearchParams {
            duplicate_threshold: 0.9,
            similar_threshold: 0.5,
            ..SearchParams::default()
        };
        assert_eq!(verdict(0.95, &p), Verdict::Duplicate);
        assert_eq!(verdict(0.6, &p), Verdict::Similar);
        assert_eq!(verdict(0.1, &p), Verdict::Different);
    }
}
