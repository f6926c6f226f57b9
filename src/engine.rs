//! The matching engine: bytes in, features and scores out. Pure: no IO, no
//! async, no config lookups; callers pass bytes, limits and parameters.
//!
//! Levels (CONTRACT §3): L1 exact (sha256 of the bytes, and for DXF the
//! canonical geometry hash), L2 perceptual candidates ([`l2`] over
//! [`raster`] hashes, eight orientations probed), L3 verification on
//! aligned thumbnails ([`verify`]), L4 a finer comparison of the original
//! drawings with difference boxes ([`fine`]). [`index::Search`] runs them in
//! steps so the caller can fetch what a step needs in between.

use image::{DynamicImage, GrayImage};
use serde::{Deserialize, Serialize};

pub mod fine;
mod frames;
pub mod index;
pub mod l2;
pub mod raster;
pub mod render;
mod slots;
#[cfg(test)]
mod testing;
pub mod verify;

pub use index::{Details, Index, Search, Transform};
use raster::{Hash256, Hashes, Ink, Layout, Orientation};
use render::RenderOptions;
use verify::Thumbnail;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    #[error("the file is empty")]
    Empty,
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Unreadable(String),
    /// `geom_json` that is not geometry L4 can draw.
    #[error("geom_json: {0}")]
    InvalidGeometry(String),
}

pub const ACCEPTED_FORMATS: &str = "DXF (ASCII or binary), PNG, JPEG, TIFF, BMP, WebP, GIF";

/// File name extensions (lower case) of the formats above. `fingerprint`
/// sniffs bytes and ignores names; this only chooses which files of a
/// folder the commands offer.
pub const EXTENSIONS: &[&str] = &["dxf", "png", "jpg", "jpeg", "tif", "tiff", "bmp", "webp", "gif"];

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
    /// Bytes a raster decoder may allocate.
    pub max_decode_bytes: u64,
    /// DXF entities drawn, counting every block instance.
    pub max_entities: usize,
    /// Deepest INSERT/DIMENSION nesting.
    pub max_block_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        let render = RenderOptions::default();
        Limits {
            max_pixels: 200_000_000,
            max_decode_bytes: 1 << 30,
            max_entities: render.max_entities,
            max_block_depth: render.max_block_depth,
        }
    }
}

impl Limits {
    /// The renderer's options at `size` within these limits.
    pub fn render_options(&self, size: u32) -> RenderOptions {
        RenderOptions {
            size,
            max_entities: self.max_entities,
            max_block_depth: self.max_block_depth,
            ..RenderOptions::default()
        }
    }
}

/// DXF drawings are rendered at this side before raster features: the size
/// the reference renders of CAD libraries use, so a DXF and its PNG export
/// land on the same pixels.
pub const DXF_RENDER_SIZE: u32 = 1000;

/// What the library stores per drawing, so an index is rebuilt without
/// re-reading drawings. The L3 thumbnail is stored beside it, not in it:
/// indexes load these, and only searches read thumbnails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Features {
    /// sha256 of the bytes, 64 lowercase hex.
    pub file_hash: String,
    pub format: Format,
    /// Pixel size for rasters; absent for DXF.
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// DXF only: [`render::Geometry::canonical_hash`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geometry_hash: Option<String>,
    /// Absent for a blank page, and in features stored before L2 existed
    /// (a rebuild fills them in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ink: Option<InkFeatures>,
}

/// The L2 hashes of a drawing in its stored orientation, and the shape of
/// its ink box.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InkFeatures {
    #[serde(with = "hash_hex")]
    pub dhash: Hash256,
    #[serde(with = "hash_hex")]
    pub phash: Hash256,
    #[serde(with = "hash_hex")]
    pub page_dhash: Hash256,
    /// Width / height of the ink box.
    pub aspect: f32,
    /// Longer side of the ink box: pixels for rasters, drawing units for
    /// DXF. Two of the same kind give the scale between them.
    pub extent: f64,
}

impl InkFeatures {
    pub fn hashes(&self) -> Hashes {
        Hashes {
            dhash: self.dhash,
            phash: self.phash,
        }
    }
}

mod hash_hex {
    use super::Hash256;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(hash: &Hash256, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hash.iter().map(|w| format!("{w:016x}")).collect::<String>())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Hash256, D::Error> {
        let text = String::deserialize(d)?;
        let word = |i: usize| {
            text.get(i * 16..(i + 1) * 16)
                .and_then(|w| u64::from_str_radix(w, 16).ok())
                .ok_or_else(|| D::Error::custom("a 256-bit hash is 64 hex digits"))
        };
        if text.len() != 64 {
            return Err(D::Error::custom("a 256-bit hash is 64 hex digits"));
        }
        Ok([word(0)?, word(1)?, word(2)?, word(3)?])
    }
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

/// Checks that `bytes` is a drawing we read, from its header alone: cheap
/// enough for the submit path, which must not decode what a job will.
pub fn inspect(bytes: &[u8], limits: Limits) -> Result<Features, EngineError> {
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
        geometry_hash: None,
        ink: None,
    })
}

/// A drawing's stored features plus what a search needs of it as a query.
pub struct Fingerprint {
    pub features: Features,
    /// The L3 thumbnail of the whole ink box: frame 0's, which [`probes`]
    /// turns rather than making it again.
    ///
    /// [`probes`]: Fingerprint::probes
    pub thumbnail: Option<Thumbnail>,
    /// The trimmed ink in each frame a query is probed in (the whole ink box
    /// first, then [`raster::Alternative`]s), with the share of ink each
    /// leaves out.
    frames: Vec<(Ink, f32)>,
}

impl Fingerprint {
    /// The query's hashes and thumbnail in each frame and orientation.
    /// Each frame's ink is resampled and binarised once, then only turned:
    /// its hashes are read off its own summed-area lines, and its
    /// thumbnail's ink bits are moved (the whole ink box's thumbnail is the
    /// fingerprint's).
    pub fn probes(&self) -> Vec<Probe> {
        let mut probes = Vec::with_capacity(self.frames.len() * Orientation::ALL.len());
        for (frame, (ink, dropped)) in self.frames.iter().enumerate() {
            let made;
            let thumbnail = match &self.thumbnail {
                Some(whole) if frame == 0 => whole,
                _ => {
                    made = Thumbnail::from_ink(ink);
                    &made
                }
            };
            let hashes = ink.oriented_hashes();
            probes.extend(Orientation::ALL.iter().zip(hashes).map(|(&orientation, hashes)| Probe {
                frame,
                orientation,
                hashes,
                thumbnail: thumbnail.oriented(orientation),
                dropped: *dropped,
            }));
        }
        probes
    }
}

/// A query: its fingerprint and its probes.
pub struct Query {
    pub fingerprint: Fingerprint,
    pub probes: Vec<Probe>,
}

/// Reads a drawing as a query: [`fingerprint`] plus its probes.
pub fn query(bytes: &[u8], limits: Limits) -> Result<Query, EngineError> {
    let (mut features, image, extent_scale) = read(bytes, limits)?;
    Ok(query_of(&mut features, &image, extent_scale))
}

/// A query made from pixels rather than a file (calibration's generated
/// queries); `label` stands in for the sha256 of the bytes.
pub fn query_image(image: &DynamicImage, label: &str) -> Query {
    let mut features = Features {
        file_hash: label.to_string(),
        format: Format::Png,
        width: Some(image.width()),
        height: Some(image.height()),
        geometry_hash: None,
        ink: None,
    };
    query_of(&mut features, image, 1.0)
}

fn query_of(features: &mut Features, image: &DynamicImage, extent_scale: f64) -> Query {
    let (ink, thumbnail, frames) = ink_features(image, extent_scale, true);
    features.ink = ink;
    let fingerprint = Fingerprint {
        features: features.clone(),
        thumbnail,
        frames,
    };
    let probes = fingerprint.probes();
    Query { fingerprint, probes }
}

/// One orientation of one frame of a query.
pub struct Probe {
    /// 0 for the whole ink box.
    pub frame: usize,
    pub orientation: Orientation,
    pub hashes: Hashes,
    pub thumbnail: Thumbnail,
    /// Share of the query's ink this frame leaves out.
    pub dropped: f32,
}

/// Reads the whole drawing: decodes rasters, parses and renders DXF, and
/// computes every level's features.
pub fn fingerprint(bytes: &[u8], limits: Limits) -> Result<Fingerprint, EngineError> {
    let (mut features, image, extent_scale) = read(bytes, limits)?;
    let (ink, thumbnail, frames) = ink_features(&image, extent_scale, false);
    features.ink = ink;
    Ok(Fingerprint {
        features,
        thumbnail,
        frames,
    })
}

/// The drawing as pixels, with its L1 features and the drawing units per
/// pixel (1 for rasters).
fn read(bytes: &[u8], limits: Limits) -> Result<(Features, DynamicImage, f64), EngineError> {
    let mut features = inspect(bytes, limits)?;
    let (image, extent_scale) = match features.format {
        Format::DxfAscii | Format::DxfBinary => {
            let options = limits.render_options(DXF_RENDER_SIZE);
            let geometry = render::load_geometry(bytes, &options).map_err(render_error)?;
            features.geometry_hash = Some(geometry.canonical_hash());
            let (x0, y0, x1, y1) = geometry.extents();
            let image = geometry.render(&options).map_err(render_error)?;
            let inner = f64::from(DXF_RENDER_SIZE) * (1.0 - 2.0 * options.margin);
            (DynamicImage::ImageLuma8(image), (x1 - x0).max(y1 - y0) / inner)
        }
        format => (pixels(bytes, format, limits)?, 1.0),
    };
    Ok((features, image, extent_scale))
}

/// `extent_scale` converts pixels of this image into the drawing's units;
/// `with_frames` adds a query's other frames.
fn ink_features(
    image: &DynamicImage,
    extent_scale: f64,
    with_frames: bool,
) -> (Option<InkFeatures>, Option<Thumbnail>, Vec<(Ink, f32)>) {
    let prepared = if with_frames {
        raster::prepare_query(image)
    } else {
        raster::prepare(image).map(|p| (p, Vec::new()))
    };
    let Some((prepared, alternatives)) = prepared else {
        return (None, None, Vec::new());
    };
    let trimmed = prepared.trimmed.hashes();
    let ink = InkFeatures {
        dhash: trimmed.dhash,
        phash: trimmed.phash,
        page_dhash: prepared.page.dhash(),
        aspect: prepared.ink_aspect,
        extent: f64::from(prepared.ink_extent) * extent_scale,
    };
    let thumbnail = Thumbnail::from_ink(&prepared.trimmed);
    let frames = std::iter::once((prepared.trimmed, 0.0))
        .chain(alternatives.into_iter().map(|a| (a.trimmed, a.dropped)))
        .collect();
    (Some(ink), Some(thumbnail), frames)
}

fn render_error(e: render::RenderError) -> EngineError {
    EngineError::Unreadable(e.to_string())
}

/// A raster as the features read it: [`png_luma`] for most PNGs, what the
/// image crate decodes for the rest.
pub(crate) fn pixels(bytes: &[u8], format: Format, limits: Limits) -> Result<DynamicImage, EngineError> {
    if format == Format::Png
        && let Some(luma) = png_luma(bytes, limits)
    {
        return Ok(DynamicImage::ImageLuma8(luma));
    }
    decode(bytes, format, limits)
}

/// Luma over white paper of a PNG of 8-bit samples, not interlaced,
/// converted a row at a time as it is inflated. The features read nothing
/// else, and never holding the RGBA page saves writing and reading back
/// four bytes a pixel (a tenth of a 1000 × 1000 drawing's fingerprint).
/// `None` for other PNGs and on any error, so that the image crate decodes
/// those, or names the error, as before.
fn png_luma(bytes: &[u8], limits: Limits) -> Option<GrayImage> {
    let max_bytes = usize::try_from(limits.max_decode_bytes).unwrap_or(usize::MAX);
    let mut decoder = png::Decoder::new_with_limits(std::io::Cursor::new(bytes), png::Limits { bytes: max_bytes });
    // As the image crate sets it: palettes and samples under 8 bits widen
    // to 8 bits, transparency to an alpha channel.
    decoder.set_transformations(png::Transformations::EXPAND);
    decoder.set_ignore_text_chunk(false);
    let mut reader = decoder.read_info().ok()?;
    let layout = match reader.output_color_type() {
        (png::ColorType::Grayscale, png::BitDepth::Eight) => Layout::Luma,
        (png::ColorType::GrayscaleAlpha, png::BitDepth::Eight) => Layout::LumaAlpha,
        (png::ColorType::Rgb, png::BitDepth::Eight) => Layout::Rgb,
        (png::ColorType::Rgba, png::BitDepth::Eight) => Layout::Rgba,
        _ => return None,
    };
    // The image crate refuses a page larger than the limit; let it say so.
    if reader.info().interlaced || reader.output_buffer_size()? > max_bytes {
        return None;
    }
    let (w, h) = (reader.info().width, reader.info().height);
    let mut luma = Vec::with_capacity(w as usize * h as usize);
    while let Some(row) = reader.next_row().ok()? {
        layout.luma_over_white(row.data(), &mut luma);
    }
    GrayImage::from_raw(w, h, luma)
}

/// Decodes a raster within the limits; the size was checked by [`inspect`].
fn decode(bytes: &[u8], format: Format, limits: Limits) -> Result<DynamicImage, EngineError> {
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), image_format(format));
    let mut image_limits = image::Limits::default();
    image_limits.max_alloc = Some(limits.max_decode_bytes);
    reader.limits(image_limits);
    reader
        .decode()
        .map_err(|e| EngineError::Unreadable(format!("cannot decode the {} image: {e}", format.name())))
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

fn image_format(format: Format) -> image::ImageFormat {
    match format {
        Format::Png => image::ImageFormat::Png,
        Format::Jpeg => image::ImageFormat::Jpeg,
        Format::Tiff => image::ImageFormat::Tiff,
        Format::Bmp => image::ImageFormat::Bmp,
        Format::Webp => image::ImageFormat::WebP,
        Format::Gif => image::ImageFormat::Gif,
        Format::DxfAscii | Format::DxfBinary => unreachable!("rasters only"),
    }
}

fn raster_size(bytes: &[u8], format: Format) -> Result<(u32, u32), EngineError> {
    image::ImageReader::with_format(std::io::Cursor::new(bytes), image_format(format))
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

/// A search request's parameters, already validated by the caller. A
/// stored job's parameters that leave some out (the original's payloads
/// carry only those given) take the defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<Transform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff_regions: Option<Vec<fine::Region>>,
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

pub fn verdict(similarity: f64, params: &SearchParams) -> Verdict {
    if similarity >= params.duplicate_threshold {
        Verdict::Duplicate
    } else if similarity >= params.similar_threshold {
        Verdict::Similar
    } else {
        Verdict::Different
    }
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
        let png = inspect(&tiny_png(), Limits::default()).unwrap();
        assert_eq!((png.format, png.width, png.height), (Format::Png, Some(3), Some(2)));
        assert_eq!(png.file_hash.len(), 64);
        let dxf = inspect(DXF.as_bytes(), Limits::default()).unwrap();
        assert_eq!(dxf.format, Format::DxfAscii);
        let commented = format!("999\nmade by hand\n{DXF}");
        assert_eq!(
            inspect(commented.as_bytes(), Limits::default()).unwrap().format,
            Format::DxfAscii
        );
    }

    #[test]
    fn bad_input_is_named() {
        assert_eq!(inspect(b"", Limits::default()), Err(EngineError::Empty));
        let dwg = inspect(b"AC1032\0\0\0garbage", Limits::default()).unwrap_err();
        assert!(
            matches!(&dwg, EngineError::Unsupported(m) if m.contains("DWG")),
            "{dwg}"
        );
        let text = inspect(b"hello world", Limits::default()).unwrap_err();
        assert!(
            matches!(&text, EngineError::Unsupported(m) if m.contains("PNG")),
            "{text}"
        );
        let truncated = inspect(&tiny_png()[..20], Limits::default()).unwrap_err();
        assert!(matches!(truncated, EngineError::Unreadable(_)));
        let cut_dxf = inspect(&DXF.as_bytes()[..30], Limits::default()).unwrap_err();
        assert!(matches!(cut_dxf, EngineError::Unreadable(_)));
        let huge = inspect(
            &tiny_png(),
            Limits {
                max_pixels: 5,
                ..Limits::default()
            },
        )
        .unwrap_err();
        assert!(
            matches!(&huge, EngineError::Unreadable(m) if m.contains("3x2")),
            "{huge}"
        );
    }

    /// A PNG of `w` × `h` pixels in the given colour type and depth, its
    /// samples packed from `sample(x, y, channel)` as PNG stores them.
    fn png_of(
        (w, h): (u32, u32),
        color: png::ColorType,
        depth: png::BitDepth,
        chunks: (Option<Vec<u8>>, Option<Vec<u8>>),
        sample: impl Fn(u32, u32, usize) -> u16,
    ) -> Vec<u8> {
        let bits = depth as usize;
        let channels = color.samples();
        let mut data = Vec::new();
        for y in 0..h {
            let mut row = vec![0u8; (w as usize * channels * bits).div_ceil(8)];
            for i in 0..w as usize * channels {
                let value = sample(i as u32 / channels as u32, y, i % channels);
                match bits {
                    16 => row[i * 2..i * 2 + 2].copy_from_slice(&value.to_be_bytes()),
                    _ => row[i * bits / 8] |= (value as u8) << (8 - bits - i * bits % 8),
                }
            }
            data.extend(row);
        }
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, w, h);
        encoder.set_color(color);
        encoder.set_depth(depth);
        let (palette, transparent) = chunks;
        if let Some(palette) = palette {
            encoder.set_palette(palette);
        }
        if let Some(transparent) = transparent {
            encoder.set_trns(transparent);
        }
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&data).unwrap();
        writer.finish().unwrap();
        out
    }

    #[test]
    fn png_rows_read_as_the_decoded_page() {
        use png::{BitDepth::*, ColorType::*};
        // Lines of several greys and opacities on paper, 45 pixels wide so
        // rows end inside the blocks the RGBA path takes at once.
        let ink = |x: u32, y: u32| {
            if x == y || x == 40 || y == 3 {
                (x * 5 + y) % 200
            } else {
                255
            }
        };
        let grey = move |x, y, _| ink(x, y) as u16;
        let colour = move |x, y, c: usize| {
            if c == 3 {
                (x * 40 % 256) as u16
            } else {
                (ink(x, y) + c as u32 * 20).min(255) as u16
            }
        };
        let bit = move |x, y, _| u16::from(ink(x, y) == 255);
        let index = move |x, y, _| (ink(x, y) % 16) as u16;
        let palette: Vec<u8> = (0..16u8).flat_map(|i| [i * 16, 255 - i * 9, i * 3]).collect();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("grey", png_of((45, 30), Grayscale, Eight, (None, None), grey)),
            ("grey, one bit", png_of((45, 30), Grayscale, One, (None, None), bit)),
            (
                "grey, a transparent grey",
                png_of((45, 30), Grayscale, Eight, (None, Some(vec![0, 8])), grey),
            ),
            (
                "grey and alpha",
                png_of((45, 30), GrayscaleAlpha, Eight, (None, None), colour),
            ),
            ("RGB", png_of((45, 30), Rgb, Eight, (None, None), colour)),
            ("RGBA", png_of((45, 30), Rgba, Eight, (None, None), colour)),
            (
                "palette",
                png_of((45, 30), Indexed, Eight, (Some(palette.clone()), None), index),
            ),
            (
                "palette of 4 bits, transparency",
                png_of((45, 30), Indexed, Four, (Some(palette), Some(vec![0, 128, 255])), index),
            ),
        ];
        for (name, bytes) in cases {
            let rows = png_luma(&bytes, Limits::default()).unwrap_or_else(|| panic!("{name}: not read by rows"));
            let page = decode(&bytes, Format::Png, Limits::default()).unwrap();
            assert_eq!(rows.as_raw(), &raster::luma_over_white(&page), "{name}");
            assert!(rows.as_raw().iter().any(|&l| l < 255), "{name}: no ink");
        }
        let deep = png_of((45, 30), Rgb, Sixteen, (None, None), |x, y, _| ink(x, y) as u16 * 257);
        assert_eq!(
            png_luma(&deep, Limits::default()),
            None,
            "16-bit samples go to the image crate"
        );
        assert!(fingerprint(&deep, Limits::default()).unwrap().thumbnail.is_some());
        let rgba = png_of((45, 30), Rgba, Eight, (None, None), colour);
        let cut = &rgba[..rgba.len() - 40];
        let error = fingerprint(cut, Limits::default()).err().unwrap();
        assert!(
            matches!(&error, EngineError::Unreadable(m) if m.starts_with("cannot decode the PNG image")),
            "{error}"
        );
    }

    /// Black lines on white, no grey: what a bilevel scan holds exactly.
    /// `variant` 0 is the drawing; 1 and 2 are other drawings.
    fn line_drawing(variant: u32) -> GrayImage {
        let mut image = GrayImage::from_pixel(400, 300, image::Luma([255]));
        let mut ink = |x: f32, y: f32| {
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                image.put_pixel(x as u32 + dx, y as u32 + dy, image::Luma([0]));
            }
        };
        for t in 0..=600 {
            let t = t as f32 / 600.0;
            ink(40.0 + 320.0 * t, 40.0);
            ink(40.0 + 320.0 * t, 258.0);
            ink(40.0, 40.0 + 218.0 * t);
            ink(358.0, 40.0 + 218.0 * t);
            let angle = t * std::f32::consts::TAU;
            match variant {
                0 => {
                    ink(40.0 + 200.0 * t, 40.0 + 218.0 * t);
                    ink(250.0 + 50.0 * angle.cos(), 120.0 + 50.0 * angle.sin());
                }
                1 => ink(200.0 + 100.0 * angle.cos(), 150.0 + 80.0 * angle.sin()),
                _ => {
                    ink(40.0 + 318.0 * t, 149.0);
                    ink(100.0 + 30.0 * angle.cos(), 220.0 + 20.0 * angle.sin());
                }
            }
        }
        image
    }

    fn encoded(image: &GrayImage, format: image::ImageFormat) -> Vec<u8> {
        let mut out = Vec::new();
        let page = match format {
            // The GIF encoder takes colour only.
            image::ImageFormat::Gif => DynamicImage::ImageRgba8(DynamicImage::ImageLuma8(image.clone()).to_rgba8()),
            _ => DynamicImage::ImageLuma8(image.clone()),
        };
        page.write_to(&mut std::io::Cursor::new(&mut out), format).unwrap();
        out
    }

    /// A little-endian baseline TIFF of one bilevel strip: rows of bits
    /// packed from the left (`compression` 1) or CCITT Group 4 (4).
    /// `photometric` 0 is WhiteIsZero (a set bit is black), 1 BlackIsZero.
    fn bilevel_tiff(image: &GrayImage, compression: u16, photometric: u16, strip: &[u8]) -> Vec<u8> {
        const ENTRIES: u32 = 9;
        let strip_offset = 8 + 2 + 12 * ENTRIES + 4;
        let (w, h) = image.dimensions();
        let entries: [(u16, u16, u32); ENTRIES as usize] = [
            (256, 4, w),                  // ImageWidth, LONG
            (257, 4, h),                  // ImageLength
            (258, 3, 1),                  // BitsPerSample, SHORT
            (259, 3, compression.into()), // Compression
            (262, 3, photometric.into()), // PhotometricInterpretation
            (273, 4, strip_offset),       // StripOffsets
            (277, 3, 1),                  // SamplesPerPixel
            (278, 4, h),                  // RowsPerStrip
            (279, 4, strip.len() as u32), // StripByteCounts
        ];
        let mut out = b"II*\0".to_vec();
        out.extend(8u32.to_le_bytes());
        out.extend((ENTRIES as u16).to_le_bytes());
        for (tag, kind, value) in entries {
            out.extend(tag.to_le_bytes());
            out.extend(kind.to_le_bytes());
            out.extend(1u32.to_le_bytes());
            // One value fits in the entry, left-justified: for a SHORT in
            // a little-endian file that is the low bytes of the u32.
            out.extend(value.to_le_bytes());
        }
        out.extend(0u32.to_le_bytes());
        out.extend_from_slice(strip);
        out
    }

    /// Rows of one bit a pixel, set where `set(luma)`, padded to bytes.
    fn packed_bits(image: &GrayImage, set: impl Fn(u8) -> bool) -> Vec<u8> {
        image
            .rows()
            .flat_map(|row| {
                let bits: Vec<bool> = row.map(|p| set(p.0[0])).collect();
                bits.chunks(8)
                    .map(|byte| {
                        byte.iter()
                            .enumerate()
                            .fold(0u8, |b, (i, &on)| b | u8::from(on) << (7 - i))
                    })
                    .collect::<Vec<u8>>()
            })
            .collect()
    }

    /// CCITT Group 4 as fax machines and scanners write it: black runs are
    /// ink.
    fn group4(image: &GrayImage) -> Vec<u8> {
        let mut encoder = fax::encoder::Encoder::new(fax::VecWriter::new());
        for row in image.rows() {
            let pels = row.map(|p| {
                if p.0[0] < 128 {
                    fax::Color::Black
                } else {
                    fax::Color::White
                }
            });
            encoder.encode_line(pels, image.width() as u16).unwrap();
        }
        encoder.finish().unwrap().finish()
    }

    /// The library's answer to a query of `bytes`: the original drawing as
    /// a PNG, and two other drawings.
    fn search_library(bytes: &[u8]) -> SearchResult {
        let mut index = Index::default();
        let mut thumbnails = std::collections::HashMap::new();
        let mut details = std::collections::HashMap::new();
        for variant in 0..3 {
            let id = format!("drawing-{variant}");
            let print = fingerprint(
                &encoded(&line_drawing(variant), image::ImageFormat::Png),
                Limits::default(),
            )
            .unwrap();
            thumbnails.insert(id.clone(), print.thumbnail.unwrap());
            index.insert(&id, &print.features);
            details.insert(id, Details::new(&format!("drawing-{variant}.png"), &print.features));
        }
        let query = query(bytes, Limits::default()).unwrap();
        let mut search = Search::new(&index, &query.fingerprint, &query.probes, &SearchParams::default());
        if !search.wants_thumbnails().is_empty() {
            search.verify(&thumbnails);
        }
        search.finish(&details, 0.0)
    }

    /// The raster formats the issue lists, each written from the same
    /// drawing, are read and found as duplicates of its PNG; the lossless
    /// ones decode to exactly its pixels.
    #[test]
    fn every_raster_format_finds_the_png_original() {
        use image::ImageFormat as F;
        let drawing = line_drawing(0);
        let cases: Vec<(&str, Vec<u8>, Format, bool)> = vec![
            ("PNG", encoded(&drawing, F::Png), Format::Png, true),
            ("JPEG", encoded(&drawing, F::Jpeg), Format::Jpeg, false),
            ("TIFF, 8-bit grey", encoded(&drawing, F::Tiff), Format::Tiff, true),
            (
                "TIFF, 1-bit, BlackIsZero",
                bilevel_tiff(&drawing, 1, 1, &packed_bits(&drawing, |l| l >= 128)),
                Format::Tiff,
                true,
            ),
            (
                "TIFF, 1-bit, WhiteIsZero",
                bilevel_tiff(&drawing, 1, 0, &packed_bits(&drawing, |l| l < 128)),
                Format::Tiff,
                true,
            ),
            (
                "TIFF, CCITT Group 4",
                bilevel_tiff(&drawing, 4, 0, &group4(&drawing)),
                Format::Tiff,
                true,
            ),
            ("BMP", encoded(&drawing, F::Bmp), Format::Bmp, true),
            ("WebP, lossless", encoded(&drawing, F::WebP), Format::Webp, true),
            ("GIF", encoded(&drawing, F::Gif), Format::Gif, true),
        ];
        for (name, bytes, format, lossless) in cases {
            let features = inspect(&bytes, Limits::default()).unwrap();
            assert_eq!(
                (features.format, features.width, features.height),
                (format, Some(400), Some(300)),
                "{name}"
            );
            if lossless {
                let pixels = pixels(&bytes, format, Limits::default()).unwrap();
                assert!(pixels.to_luma8() == drawing, "{name}: decoded pixels differ");
            }
            let result = search_library(&bytes);
            let found: Vec<_> = result
                .duplicates
                .iter()
                .map(|m| (m.drawing_id.as_str(), m.verdict))
                .collect();
            assert_eq!(found, [("drawing-0", Verdict::Duplicate)], "{name}: {result:?}");
        }
        // The tiff crate decodes CCITT Group 4 but not Group 3 (1-D fax):
        // such a scan is refused as unreadable (415), with the decoder's reason.
        let group3 = bilevel_tiff(&drawing, 3, 0, &[0; 64]);
        let error = fingerprint(&group3, Limits::default()).err().unwrap();
        assert!(
            matches!(&error, EngineError::Unreadable(m) if m.starts_with("cannot decode the TIFF image")),
            "{error}"
        );
    }

    #[test]
    fn a_dwg_is_refused_with_the_formats_that_are_read() {
        let error = fingerprint(b"AC1032\0\0\0\0\0\0garbage", Limits::default())
            .err()
            .unwrap();
        let EngineError::Unsupported(message) = &error else {
            panic!("{error:?}")
        };
        assert!(message.starts_with("DWG files are not read"), "{message}");
        for format in ["DXF", "PNG", "JPEG", "TIFF", "BMP", "WebP", "GIF"] {
            assert!(message.contains(format), "{format} missing from: {message}");
        }
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
