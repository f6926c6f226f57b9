//! Raster features for near-duplicate search (level L2): a drawing's ink,
//! normalised so that rescaling, re-export, JPEG, padding and line weight
//! change it little, and 256-bit perceptual hashes of it.
//!
//! Measured on CAD renders (shared/research/dedup.md §1.4): trimming to the
//! ink's bounding box is what makes padding harmless, dHash-256 and
//! pHash-256 on the trimmed ink complement each other, and a hash of the
//! untrimmed page keeps added labels from shifting everything. The eight
//! orientations (rotations by 90° and mirrors) are probed by hashing the
//! query eight times, never by storing more per drawing.

use image::{DynamicImage, GrayImage, Luma};

/// Side of the square the ink is resampled to before hashing. Large enough
/// that area averaging keeps 1-pixel lines of a 1000-pixel drawing visible.
pub const SIDE: usize = 256;
/// Bounds of the luma at or above which a pixel is paper (see
/// `paper_and_ink`); the floor keeps a dark scan from reading as all ink.
const PAPER_MIN: f32 = 150.0;
const PAPER_MAX: f32 = 249.0;
/// Paper ends at least this far below its most common luma.
const MIN_PAPER_MARGIN: f32 = 6.0;
/// Pixels this close below the paper's luma count when measuring its noise.
const NEAR_PAPER: usize = 30;
/// Luma at or below this is full ink.
const INK: f32 = 60.0;
/// A pixel darker than this (of 255, about luma 220) belongs to the ink's
/// bounding box. Low on purpose: thin or grey lines fade when a drawing is
/// shrunk, and a box that loses them trims a different drawing. JPEG noise
/// near white is already paper (see `paper_and_ink`).
pub(crate) const BBOX_INK: u8 = 8;
/// Margin kept around the trimmed ink, as a share of its larger side.
const MARGIN: f32 = 0.02;

/// 256 bits, as four words so Hamming distance is four popcounts.
pub type Hash256 = [u64; 4];

pub fn hamming(a: &Hash256, b: &Hash256) -> u32 {
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

/// The perceptual hashes of one orientation of a drawing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hashes {
    /// dHash of the trimmed ink: row-wise gradient signs.
    pub dhash: Hash256,
    /// pHash of the trimmed ink: low DCT frequencies against their median.
    pub phash: Hash256,
}

impl Hashes {
    fn of(area: &AreaSums) -> Hashes {
        Hashes {
            dhash: dhash(area),
            phash: phash(area),
        }
    }
}

/// Everything L2 stores for a raster (or a rendered DXF).
#[derive(Debug, Clone, PartialEq)]
pub struct RasterFeatures {
    pub trimmed: Hashes,
    /// dHash of the whole page, padded to a square but not trimmed.
    pub page_dhash: Hash256,
    /// Share of the page covered by ink, 0..1.
    pub ink_ratio: f32,
    /// Width / height of the ink's bounding box, so a 10 mm square and a
    /// long rectangle never look alike after trimming.
    pub ink_aspect: f32,
}

/// One of the eight symmetries of the square (the dihedral group D4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Orientation {
    /// Quarter turns clockwise, 0..4, applied after the mirror.
    pub quarter_turns: u8,
    /// Mirrored left-right first.
    pub mirrored: bool,
}

impl Orientation {
    pub const ALL: [Orientation; 8] = {
        let mut all = [Orientation {
            quarter_turns: 0,
            mirrored: false,
        }; 8];
        let mut i = 0;
        while i < 8 {
            all[i] = Orientation {
                quarter_turns: (i % 4) as u8,
                mirrored: i >= 4,
            };
            i += 1;
        }
        all
    };

    pub const IDENTITY: Orientation = Orientation::ALL[0];

    pub fn rotation_degrees(self) -> u16 {
        u16::from(self.quarter_turns) * 90
    }

    /// The orientation that undoes this one.
    pub(crate) fn inverse(self) -> Orientation {
        let undoes = |o: &&Orientation| {
            (0..3).all(|y| {
                (0..3).all(|x| {
                    let (tx, ty) = self.map(x, y, 3);
                    o.map(tx, ty, 3) == (x, y)
                })
            })
        };
        *Orientation::ALL.iter().find(undoes).expect("D4 is a group")
    }

    /// Where pixel (x, y) of a `side`-square lands.
    pub(crate) fn map(self, x: usize, y: usize, side: usize) -> (usize, usize) {
        let x = if self.mirrored { side - 1 - x } else { x };
        match self.quarter_turns % 4 {
            0 => (x, y),
            1 => (side - 1 - y, x),
            2 => (side - 1 - x, side - 1 - y),
            _ => (y, side - 1 - x),
        }
    }
}

/// A square grid of ink darkness (0 = paper, 1 = full ink).
#[derive(Debug, Clone, PartialEq)]
pub struct Ink {
    side: usize,
    cells: Vec<f32>,
    /// Source pixels a cell spans: how finely the ink is known.
    cell_px: f32,
}

impl Ink {
    pub fn side(&self) -> usize {
        self.side
    }

    pub fn cell_px(&self) -> f32 {
        self.cell_px
    }

    pub fn at(&self, x: usize, y: usize) -> f32 {
        self.cells[y * self.side + x]
    }

    /// Row by row.
    pub fn cells(&self) -> &[f32] {
        &self.cells
    }

    pub fn oriented(&self, orientation: Orientation) -> Ink {
        let mut cells = vec![0.0; self.cells.len()];
        for y in 0..self.side {
            for x in 0..self.side {
                let (tx, ty) = orientation.map(x, y, self.side);
                cells[ty * self.side + tx] = self.at(x, y);
            }
        }
        Ink {
            side: self.side,
            cells,
            cell_px: self.cell_px,
        }
    }

    pub fn hashes(&self) -> Hashes {
        Hashes::of(&AreaSums::new(self))
    }

    /// The hashes of each of the eight orientations, in the order of
    /// [`Orientation::ALL`]: `self.oriented(o).hashes()` for each, bit for
    /// bit, without making the oriented grids.
    pub fn oriented_hashes(&self) -> [Hashes; 8] {
        let transposed = self.transposed();
        Orientation::ALL.map(|o| Hashes::of(&AreaSums::oriented(self, &transposed, o)))
    }

    /// The cells column by column.
    fn transposed(&self) -> Vec<f32> {
        let n = self.side;
        let mut out = vec![0.0; self.cells.len()];
        for (y, row) in self.cells.chunks_exact(n).enumerate() {
            for (x, &c) in row.iter().enumerate() {
                out[x * n + y] = c;
            }
        }
        out
    }

    /// The dHash alone, for the page, whose pHash nothing uses.
    pub fn dhash(&self) -> Hash256 {
        dhash(&AreaSums::new(self))
    }

    pub fn to_image(&self) -> GrayImage {
        GrayImage::from_fn(self.side as u32, self.side as u32, |x, y| {
            Luma([255 - (self.at(x as usize, y as usize) * 255.0).round() as u8])
        })
    }
}

/// The ink of a decoded image, trimmed and untrimmed; `None` for a blank page.
pub struct Prepared {
    pub trimmed: Ink,
    pub page: Ink,
    pub ink_ratio: f32,
    pub ink_aspect: f32,
    /// Longer side of the ink's bounding box, in source pixels.
    pub ink_extent: f32,
}

/// Darkness per pixel as 0 (paper) ..= 255 (full ink): a byte per pixel
/// keeps the page pass and its summed-area table cheap.
pub struct Darkness {
    pub w: usize,
    pub h: usize,
    pub cells: Vec<u8>,
    /// Sum of the cells.
    pub total: u64,
}

/// Paper is white: transparent pixels count as paper, not as black.
pub fn darkness(image: &DynamicImage) -> Darkness {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut cells = luma_over_white(image);
    let histogram = histogram(&cells);
    let (paper, ink) = paper_and_ink(&histogram);
    let of_luma: [u8; 256] =
        std::array::from_fn(|l| (((paper - l as f32) / (paper - ink)).clamp(0.0, 1.0) * 255.0).round() as u8);
    // The histogram knows the total without another pass over the pixels.
    let total = (0..256).map(|l| histogram[l] * u64::from(of_luma[l])).sum();
    let mut words = cells.chunks_exact_mut(8);
    for word in &mut words {
        // White paper is most of a drawing; a word of it maps at once.
        if word == [255; 8] {
            word.fill(of_luma[255]);
        } else {
            word.iter_mut().for_each(|c| *c = of_luma[usize::from(*c)]);
        }
    }
    words
        .into_remainder()
        .iter_mut()
        .for_each(|c| *c = of_luma[usize::from(*c)]);
    Darkness { w, h, cells, total }
}

pub(crate) fn luma_over_white(image: &DynamicImage) -> Vec<u8> {
    let mut out = Vec::with_capacity(image.width() as usize * image.height() as usize);
    // Matching the common layouts avoids converting a whole page first.
    let layout = match image {
        DynamicImage::ImageLuma8(_) => Layout::Luma,
        DynamicImage::ImageLumaA8(_) => Layout::LumaAlpha,
        DynamicImage::ImageRgb8(_) => Layout::Rgb,
        DynamicImage::ImageRgba8(_) => Layout::Rgba,
        other => {
            Layout::Rgba.luma_over_white(other.to_rgba8().as_raw(), &mut out);
            return out;
        }
    };
    layout.luma_over_white(image.as_bytes(), &mut out);
    out
}

/// Layouts of 8-bit samples whose luma is read as they come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    Luma,
    LumaAlpha,
    Rgb,
    Rgba,
}

impl Layout {
    /// Appends the luma over white paper of `pixels`, whole pixels in this
    /// layout: a page at once or a row at a time give the same bytes.
    pub(crate) fn luma_over_white(self, pixels: &[u8], out: &mut Vec<u8>) {
        match self {
            Layout::Luma => out.extend_from_slice(pixels),
            Layout::LumaAlpha => out.extend(pixels.chunks_exact(2).map(|p| over_white(p[0], p[1]))),
            Layout::Rgb => out.extend(pixels.chunks_exact(3).map(|p| luma(p[0], p[1], p[2]))),
            Layout::Rgba => rgba_luma_over_white(pixels, out),
        }
    }
}

/// Most of a drawing is white paper, whatever its alpha: a run of sixteen
/// such pixels skips the arithmetic, whose result for them is 255 anyway.
fn rgba_luma_over_white(raw: &[u8], out: &mut Vec<u8>) {
    // Alpha bytes set, so that only the colour decides.
    const ANY_ALPHA: [u8; 64] = {
        let mut mask = [0; 64];
        let mut i = 3;
        while i < 64 {
            mask[i] = 255;
            i += 4;
        }
        mask
    };
    out.reserve(raw.len() / 4);
    let (blocks, rest) = raw.as_chunks::<64>();
    for block in blocks {
        let white = block.iter().zip(&ANY_ALPHA).fold(255, |all, (&b, &m)| all & (b | m));
        if white == 255 {
            out.extend_from_slice(&[255; 16]);
        } else {
            out.extend(block.chunks_exact(4).map(rgba_over_white));
        }
    }
    out.extend(rest.chunks_exact(4).map(rgba_over_white));
}

fn rgba_over_white(p: &[u8]) -> u8 {
    over_white(luma(p[0], p[1], p[2]), p[3])
}

fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((299 * u32::from(r) + 587 * u32::from(g) + 114 * u32::from(b) + 500) / 1000) as u8
}

/// Luma `l` at opacity `a` on white paper.
fn over_white(l: u8, a: u8) -> u8 {
    ((u32::from(l) * u32::from(a) + 255 * (255 - u32::from(a)) + 127) / 255) as u8
}

/// The luma where paper ends and where full ink starts, from the page
/// itself: a clean export's paper is 255 and a line greyed to 240 by a
/// downscale is still ink, while a scan's paper is greyer and noisier and
/// needs a wider margin. Paper is the most common luma (drawings are
/// mostly paper); its noise is the median distance of near-paper pixels.
fn paper_and_ink(histogram: &[u64; 256]) -> (f32, f32) {
    let mode = (0..256).max_by_key(|&l| (histogram[l], l)).unwrap_or(255);
    let near = mode.saturating_sub(NEAR_PAPER)..256;
    let total: u64 = near.clone().map(|l| histogram[l]).sum();
    let mut by_distance = [0u64; 256];
    for l in near {
        by_distance[l.abs_diff(mode)] += histogram[l];
    }
    let mut seen = 0;
    let noise = by_distance
        .iter()
        .position(|&n| {
            seen += n;
            seen * 2 >= total
        })
        .unwrap_or(0) as f32;
    let paper = (mode as f32 - (3.0 * noise).max(MIN_PAPER_MARGIN)).clamp(PAPER_MIN, PAPER_MAX);
    (paper, INK.min(paper - 60.0))
}

/// How many pixels have each luma. Most of a page is paper of one luma:
/// bumping one counter per pixel makes each increment wait for the one
/// before (1.3 ms for a 1000 × 1000 page, a quarter of its fingerprint), so
/// four counters take turns and runs of white are counted eight at a time.
fn histogram(luma: &[u8]) -> [u64; 256] {
    let mut counts = [[0u64; 256]; 4];
    let mut white = 0;
    let mut words = luma.chunks_exact(8);
    for word in &mut words {
        if word == [255; 8] {
            white += 8;
            continue;
        }
        for (lane, &l) in word.iter().enumerate() {
            counts[lane % 4][usize::from(l)] += 1;
        }
    }
    for &l in words.remainder() {
        counts[0][usize::from(l)] += 1;
    }
    let mut total = counts[0];
    for lane in &counts[1..] {
        for (t, n) in total.iter_mut().zip(lane) {
            *t += n;
        }
    }
    total[255] += white;
    total
}

pub fn prepare(image: &DynamicImage) -> Option<Prepared> {
    prepare_at(image, SIDE)
}

/// [`prepare`] on an `n` × `n` grid: L4 compares drawings finer than L2.
pub fn prepare_at(image: &DynamicImage, n: usize) -> Option<Prepared> {
    let page = darkness(image);
    let grid = Grid::of(&page);
    prepare_grid(&grid, grid.ink_bbox()?, page.total, n)
}

/// A query's ink in other frames than its whole ink box: each without the
/// small detached parts at one edge (a label or note added beside the
/// drawing widens the box and shifts every cell, so only a frame without it
/// lines up with the library drawing). `dropped` is the share of the ink
/// left out, which verification counts as unexplained.
pub struct Alternative {
    pub trimmed: Ink,
    pub dropped: f32,
}

/// [`prepare`] plus the [`Alternative`] frames, for queries.
pub fn prepare_query(image: &DynamicImage) -> Option<(Prepared, Vec<Alternative>)> {
    let page = darkness(image);
    let (w, h, cells) = (page.w, page.h, &page.cells);
    let grid = Grid::of(&page);
    let bbox = grid.ink_bbox()?;
    let prepared = prepare_grid(&grid, bbox, page.total, SIDE)?;
    let alternatives = super::frames::without_edge_parts(w, cells, bbox)
        .into_iter()
        .map(|frame| {
            // The square around a frame reaches past it, where the left-out
            // parts are: they must not come back in as ink.
            let inside = masked(cells, w, frame.bbox);
            let masked = Grid { w, h, cells: &inside };
            Alternative {
                trimmed: masked.trimmed(frame.bbox, SIDE),
                dropped: frame.dropped,
            }
        })
        .collect();
    Some((prepared, alternatives))
}

/// The page's darkness inside `bbox` (half-open), paper elsewhere.
fn masked(cells: &[u8], w: usize, (x0, y0, x1, y1): (usize, usize, usize, usize)) -> Vec<u8> {
    let mut inside = vec![0; cells.len()];
    for y in y0..y1 {
        let row = y * w;
        inside[row + x0..row + x1].copy_from_slice(&cells[row + x0..row + x1]);
    }
    inside
}

/// `total` is the sum of the grid's cells.
fn prepare_grid(
    grid: &Grid<'_>,
    (x0, y0, x1, y1): (usize, usize, usize, usize),
    total: u64,
    n: usize,
) -> Option<Prepared> {
    let (w, h) = (grid.w, grid.h);
    let ink_ratio = total as f32 / 255.0 / (w * h).max(1) as f32;
    let (bw, bh) = ((x1 - x0) as f32, (y1 - y0) as f32);
    let trimmed = grid.trimmed((x0, y0, x1, y1), n);
    let page = grid.square_resample(0.0, 0.0, w as f32, h as f32, n);
    Some(Prepared {
        trimmed,
        page,
        ink_ratio,
        ink_aspect: bw / bh,
        ink_extent: bw.max(bh),
    })
}

/// Features of a decoded raster; `None` for a page without ink.
pub fn features(image: &DynamicImage) -> Option<RasterFeatures> {
    let prepared = prepare(image)?;
    Some(RasterFeatures {
        trimmed: prepared.trimmed.hashes(),
        page_dhash: prepared.page.dhash(),
        ink_ratio: prepared.ink_ratio,
        ink_aspect: prepared.ink_aspect,
    })
}

struct Grid<'a> {
    w: usize,
    h: usize,
    cells: &'a [u8],
}

impl Grid<'_> {
    fn of(page: &Darkness) -> Grid<'_> {
        Grid {
            w: page.w,
            h: page.h,
            cells: &page.cells,
        }
    }

    /// The ink box with its margin, resampled.
    fn trimmed(&self, (x0, y0, x1, y1): (usize, usize, usize, usize), n: usize) -> Ink {
        let margin = (x1 - x0).max(y1 - y0) as f32 * MARGIN;
        self.square_resample(
            x0 as f32 - margin,
            y0 as f32 - margin,
            x1 as f32 + margin,
            y1 as f32 + margin,
            n,
        )
    }

    /// Area-averages the rectangle, centred in a square of its larger side,
    /// onto an n × n grid; outside the image is paper.
    fn square_resample(&self, x0: f32, y0: f32, x1: f32, y1: f32, n: usize) -> Ink {
        let side = (x1 - x0).max(y1 - y0).max(1.0);
        let (left, top) = ((x0 + x1 - side) / 2.0, (y0 + y1 - side) / 2.0);
        if side < n as f32 {
            Integral::new(self).square_resample(left, top, side, n)
        } else {
            self.accumulate(left, top, side, n)
        }
    }

    /// Downsampling in one pass: each pixel adds to the cell its centre falls
    /// in, and each cell is divided by the pixels (real or paper) it covers.
    /// Cheaper than a summed-area table for the common large page.
    fn accumulate(&self, left: f32, top: f32, side: f32, n: usize) -> Ink {
        let scale = n as f32 / side;
        let cell_of = |p: i64, origin: f32| {
            let t = ((p as f32 + 0.5 - origin) * scale).floor();
            (0.0..n as f32).contains(&t).then_some(t as usize)
        };
        let span = |origin: f32| (origin.floor() as i64)..((origin + side).ceil() as i64);
        let covered = |origin: f32| {
            let mut counts = vec![0u32; n];
            for p in span(origin) {
                if let Some(t) = cell_of(p, origin) {
                    counts[t] += 1;
                }
            }
            counts
        };
        let (columns, rows) = (covered(left), covered(top));
        let column_of: Vec<Option<usize>> = (0..self.w as i64).map(|x| cell_of(x, left)).collect();
        let mut sums = vec![0u32; n * n];
        for y in 0..self.h {
            let Some(ty) = cell_of(y as i64, top) else { continue };
            let row = &self.cells[y * self.w..(y + 1) * self.w];
            add_row(row, &column_of, &mut sums[ty * n..(ty + 1) * n]);
        }
        // Row by row: an index divided by `n` per cell costs more than the
        // division by the area.
        let mut cells = Vec::with_capacity(n * n);
        for (sums, &row) in sums.chunks_exact(n).zip(&rows) {
            cells.extend(sums.iter().zip(&columns).map(|(&sum, &column)| {
                let area = column * row;
                if area == 0 {
                    0.0
                } else {
                    sum as f32 / 255.0 / area as f32
                }
            }));
        }
        Ink {
            side: n,
            cells,
            cell_px: side / n as f32,
        }
    }

    /// Half-open pixel bounds of the ink.
    fn ink_bbox(&self) -> Option<(usize, usize, usize, usize)> {
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        for y in 0..self.h {
            let row = &self.cells[y * self.w..(y + 1) * self.w];
            let Some(first) = first_ink(row) else {
                continue;
            };
            let last = last_ink(row).unwrap_or(first);
            x0 = x0.min(first);
            x1 = x1.max(last + 1);
            y0 = y0.min(y);
            y1 = y + 1;
        }
        (x0 != usize::MAX).then_some((x0, y0, x1, y1))
    }
}

/// The first pixel of the row darker than BBOX_INK; blank blocks are
/// passed over a block at a time.
fn first_ink(row: &[u8]) -> Option<usize> {
    let (i, block) = row.chunks(BLOCK).enumerate().find(|(_, b)| has_ink(b))?;
    Some(i * BLOCK + block.iter().position(|&d| d > BBOX_INK)?)
}

fn last_ink(row: &[u8]) -> Option<usize> {
    let (i, block) = row.chunks(BLOCK).enumerate().rev().find(|(_, b)| has_ink(b))?;
    Some(i * BLOCK + block.iter().rposition(|&d| d > BBOX_INK)?)
}

fn has_ink(block: &[u8]) -> bool {
    darkest(block) > BBOX_INK
}

/// The largest byte, sixteen at a time where it can.
fn darkest(block: &[u8]) -> u8 {
    let (words, rest) = block.as_chunks::<16>();
    let of = |bytes: &[u8]| bytes.iter().fold(0, |darkest, &d| darkest.max(d));
    words.iter().map(|w| of(w)).fold(of(rest), u8::max)
}

/// Adds a row of pixels to the cells their columns fall in. Most of a
/// drawing's row is blank paper: a block of it is passed over after one
/// test instead of a test per pixel.
fn add_row(row: &[u8], column_of: &[Option<usize>], out: &mut [u32]) {
    for (block, columns) in row.chunks(BLOCK).zip(column_of.chunks(BLOCK)) {
        if darkest(block) == 0 {
            continue;
        }
        for (&d, column) in block.iter().zip(columns) {
            if let Some(tx) = column {
                out[*tx] += u32::from(d);
            }
        }
    }
}

/// Pixels tested at once for blank paper.
const BLOCK: usize = 32;

/// Summed-area table, so any rectangle's mean is four lookups.
struct Integral {
    w: usize,
    h: usize,
    /// In 1/255 units of ink.
    sums: Vec<u64>,
}

impl Integral {
    fn new(grid: &Grid<'_>) -> Integral {
        let (w, h) = (grid.w, grid.h);
        let mut sums = vec![0u64; (w + 1) * (h + 1)];
        for y in 0..h {
            let mut row = 0u64;
            for x in 0..w {
                row += u64::from(grid.cells[y * w + x]);
                sums[(y + 1) * (w + 1) + x + 1] = sums[y * (w + 1) + x + 1] + row;
            }
        }
        Integral { w, h, sums }
    }

    /// Upsampling small images: each cell takes the mean of the pixels
    /// under it (at least the one it falls in).
    fn square_resample(&self, left: f32, top: f32, side: f32, n: usize) -> Ink {
        let step = side / n as f32;
        // A cell's pixel bounds are its column's and its row's: worked out
        // once per column and row, not per cell.
        let columns: Vec<Span> = (0..n).map(|tx| Span::of(left, tx, step, self.w)).collect();
        let mut cells = Vec::with_capacity(n * n);
        let mut above: Option<Span> = None;
        for ty in 0..n {
            let row = Span::of(top, ty, step, self.h);
            if above.as_ref() == Some(&row) {
                // Upsampled, several rows of cells span the same pixels.
                cells.extend_from_within((ty - 1) * n..ty * n);
            } else {
                cells.extend(columns.iter().map(|column| self.mean(column, &row)));
            }
            above = Some(row);
        }
        Ink {
            side: n,
            cells,
            cell_px: side / n as f32,
        }
    }

    /// Mean darkness over the rectangle, whole pixels; area outside the
    /// image counts as paper. A rectangle thinner than a pixel takes the
    /// pixel it falls in, so upscaling small images works too.
    fn mean(&self, column: &Span, row: &Span) -> f32 {
        let area = (column.pixels * row.pixels) as f64;
        let (cx0, cx1, cy0, cy1) = (column.from, column.to, row.from, row.to);
        if cx1 <= cx0 || cy1 <= cy0 {
            return 0.0;
        }
        let at = |x: usize, y: usize| self.sums[y * (self.w + 1) + x];
        let total = at(cx1, cy1) + at(cx0, cy0) - at(cx0, cy1) - at(cx1, cy0);
        (total as f64 / 255.0 / area) as f32
    }
}

/// The pixels a resampled cell's column (or row) spans: `pixels` whole
/// ones, at least one, of which `from..to` lie inside the image.
#[derive(PartialEq)]
struct Span {
    pixels: i64,
    from: usize,
    to: usize,
}

impl Span {
    /// Cell `t` of cells `step` pixels wide from `origin`, in an image
    /// `max` pixels wide.
    fn of(origin: f32, t: usize, step: f32, max: usize) -> Span {
        let (s0, s1) = (origin + t as f32 * step, origin + (t + 1) as f32 * step);
        let i0 = s0.floor() as i64;
        let i1 = (s1.ceil() as i64).max(i0 + 1);
        let clamp = |v: i64| v.clamp(0, max as i64) as usize;
        Span {
            pixels: i1 - i0,
            from: clamp(i0),
            to: clamp(i1),
        }
    }
}

/// dHash compares 16 rows of 17 cells; pHash transforms 64 × 64.
const DHASH_CELLS: (usize, usize) = (17, 16);
const PHASH_CELLS: usize = 64;

/// The lines `shrink` reads of an `n`-side summed-area table for cell `i`
/// of `cells`: whole source pixels, as `Integral::mean` takes them.
fn shrink_bounds(i: usize, cells: usize, n: usize) -> (usize, usize) {
    let lo = (i * n) / cells;
    let hi = ((i + 1) * n).div_ceil(cells).max(lo + 1);
    (lo, hi)
}

/// The lines of an `n`-side table that shrinking to each of `counts` cells
/// reads, sorted.
fn read_lines(n: usize, counts: &[usize]) -> Vec<usize> {
    let mut lines: Vec<usize> = counts
        .iter()
        .flat_map(|&cells| (0..cells).flat_map(move |i| <[usize; 2]>::from(shrink_bounds(i, cells, n))))
        .collect();
    lines.sort_unstable();
    lines.dedup();
    lines
}

/// Rows summed side by side: each row's running sum is a chain of
/// dependent additions, and independent chains overlap.
const LANES: usize = 4;

/// Summed-area table of an Ink grid, built once for both hashes, at only
/// the lines the hashes read (about 95 columns and 65 rows of 257). Each
/// entry is still the sum `AreaSums` always made, in the same order: a
/// row's running sum left to right, added to the entry above, so the
/// hashes are bit for bit those of the full table.
struct AreaSums {
    /// Of the oriented grid: `None` where the table was not kept.
    column_at: Vec<Option<usize>>,
    row_at: Vec<Option<usize>>,
    columns: usize,
    // f64: in f32 the differences of large sums leave rounding noise where
    // the paper is blank, and dHash would read that noise as gradients.
    sums: Vec<f64>,
}

impl AreaSums {
    fn new(ink: &Ink) -> AreaSums {
        AreaSums::oriented(ink, &[], Orientation::IDENTITY)
    }

    /// The table of `ink.oriented(orientation)`, read from `ink` itself and
    /// from `transposed`, its columns as rows (needed only when the
    /// orientation turns rows into columns): the oriented grid is never
    /// made.
    fn oriented(ink: &Ink, transposed: &[f32], orientation: Orientation) -> AreaSums {
        let n = ink.side;
        let columns = read_lines(n, &[DHASH_CELLS.0, PHASH_CELLS]);
        let rows = read_lines(n, &[DHASH_CELLS.1, PHASH_CELLS]);
        let index = |lines: &[usize]| {
            let mut at = vec![None; n + 1];
            for (i, &line) in lines.iter().enumerate() {
                at[line] = Some(i);
            }
            at
        };
        let (column_at, row_at) = (index(&columns), index(&rows));
        // Which source row or column is row `y` of the oriented grid, and
        // whether it runs backwards.
        let inverse = orientation.inverse();
        let source = |y: usize| -> (&[f32], bool) {
            let (x0, y0) = inverse.map(0, y, n);
            let (x1, y1) = if n > 1 { inverse.map(1, y, n) } else { (1, 0) };
            if y1 == y0 {
                (&ink.cells[y0 * n..(y0 + 1) * n], x1 < x0)
            } else {
                (&transposed[x0 * n..(x0 + 1) * n], y1 < y0)
            }
        };
        let mut sums = vec![0.0f64; rows.len() * columns.len()];
        let mut above = vec![0.0f64; columns.len()];
        let mut running = vec![[0.0f64; LANES]; columns.len()];
        for y0 in (0..n).step_by(LANES) {
            let lanes = LANES.min(n - y0);
            let cells: [(&[f32], bool); LANES] = std::array::from_fn(|k| source((y0 + k).min(n - 1)));
            let backwards = cells[0].1;
            let mut row = [0.0f64; LANES];
            let mut x = 0;
            for (&column, sum) in columns.iter().zip(&mut running) {
                while x < column {
                    let at = if backwards { n - 1 - x } else { x };
                    for (r, (cells, _)) in row.iter_mut().zip(&cells) {
                        *r += f64::from(cells[at]);
                    }
                    x += 1;
                }
                *sum = row;
            }
            for k in 0..lanes {
                for (a, sum) in above.iter_mut().zip(&running) {
                    *a += sum[k];
                }
                if let Some(r) = row_at[y0 + k + 1] {
                    sums[r * columns.len()..(r + 1) * columns.len()].copy_from_slice(&above);
                }
            }
        }
        AreaSums {
            column_at,
            row_at,
            columns: columns.len(),
            sums,
        }
    }
}

/// Area-average of an Ink grid down to `w` × `h` cells (whole source
/// pixels per cell, as `Integral::mean` takes them).
fn shrink(area: &AreaSums, w: usize, h: usize) -> Vec<f32> {
    let n = area.row_at.len() - 1;
    // Each cell's bounds as places in the table, worked out once a column
    // rather than once a cell.
    let kept = |at: &[Option<usize>], line: usize| at[line].expect("shrink reads only the lines the table keeps");
    let columns: Vec<(usize, usize, usize)> = (0..w)
        .map(|x| {
            let (x0, x1) = shrink_bounds(x, w, n);
            (kept(&area.column_at, x0), kept(&area.column_at, x1), x1 - x0)
        })
        .collect();
    let mut out = Vec::with_capacity(w * h);
    for y in 0..h {
        let (y0, y1) = shrink_bounds(y, h, n);
        let top = &area.sums[kept(&area.row_at, y0) * area.columns..][..area.columns];
        let bottom = &area.sums[kept(&area.row_at, y1) * area.columns..][..area.columns];
        for &(c0, c1, width) in &columns {
            let total = bottom[c1] - bottom[c0] - top[c1] + top[c0];
            out.push((total / (width * (y1 - y0)) as f64) as f32);
        }
    }
    out
}

fn set_bit(hash: &mut Hash256, i: usize) {
    hash[i / 64] |= 1 << (i % 64);
}

/// 16 rows of 17 cells; bit = the left cell is darker than its right neighbour.
fn dhash(area: &AreaSums) -> Hash256 {
    let cells = shrink(area, DHASH_CELLS.0, DHASH_CELLS.1);
    let mut hash = [0u64; 4];
    for y in 0..16 {
        for x in 0..16 {
            if cells[y * 17 + x] > cells[y * 17 + x + 1] {
                set_bit(&mut hash, y * 16 + x);
            }
        }
    }
    hash
}

/// The 16 × 16 lowest frequencies of a 64 × 64 DCT-II, each against their median.
const PHASH_TERMS: usize = 16;

/// The DCT-II basis pHash reads, `[n][k]`: the same for every hash, so
/// made once, and laid out so the sixteen terms of one sample are adjacent.
type PhashBasis = [[f32; PHASH_TERMS]; PHASH_CELLS];

fn phash_basis() -> &'static PhashBasis {
    static BASIS: std::sync::OnceLock<PhashBasis> = std::sync::OnceLock::new();
    BASIS.get_or_init(|| {
        let mut basis = [[0.0f32; PHASH_TERMS]; PHASH_CELLS];
        for (n, terms) in basis.iter_mut().enumerate() {
            for (k, b) in terms.iter_mut().enumerate() {
                *b = (std::f32::consts::PI / PHASH_CELLS as f32 * (n as f32 + 0.5) * k as f32).cos();
            }
        }
        basis
    })
}

/// `out[k] = Σ_n values[n] · basis[n][k]` for every k at once. Each sum
/// still adds its terms in order from -0.0 (as `Iterator::sum` does), so
/// it is bit for bit the one-k-at-a-time sum; sixteen independent sums
/// over adjacent terms are what the compiler can vectorise.
fn dct_terms(values: impl Iterator<Item = f32>, basis: &PhashBasis) -> [f32; PHASH_TERMS] {
    let mut out = [-0.0f32; PHASH_TERMS];
    for (v, terms) in values.zip(basis) {
        for (o, b) in out.iter_mut().zip(terms) {
            *o += v * b;
        }
    }
    out
}

fn phash(area: &AreaSums) -> Hash256 {
    const N: usize = PHASH_CELLS;
    const K: usize = PHASH_TERMS;
    let cells = shrink(area, N, N);
    let basis = phash_basis();
    // Rows first (N × K), then columns (K × K).
    let rows: Vec<[f32; K]> = cells
        .chunks_exact(N)
        .map(|row| dct_terms(row.iter().copied(), basis))
        .collect();
    let mut coefficients = vec![0.0f32; K * K];
    for kx in 0..K {
        let column = dct_terms(rows.iter().map(|r| r[kx]), basis);
        for (ky, c) in column.into_iter().enumerate() {
            coefficients[ky * K + kx] = c;
        }
    }
    let mut sorted = coefficients.clone();
    sorted.sort_by(f32::total_cmp);
    let median = (sorted[K * K / 2 - 1] + sorted[K * K / 2]) / 2.0;
    let mut hash = [0u64; 4];
    for (i, c) in coefficients.iter().enumerate() {
        if *c > median {
            set_bit(&mut hash, i);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

    /// A bracket-like line drawing: a frame, a diagonal and a hole, on a
    /// `w` × `h` page, drawn with lines `weight` pixels thick.
    fn drawing(w: u32, h: u32, weight: u32) -> DynamicImage {
        let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
        let s = w.min(h) as f32 / 100.0;
        let mut dot = |x: f32, y: f32| {
            for dy in 0..weight {
                for dx in 0..weight {
                    let (px, py) = (x as u32 + dx, y as u32 + dy);
                    if px < w && py < h {
                        img.put_pixel(px, py, Rgb([0, 0, 0]));
                    }
                }
            }
        };
        for i in 0..(60.0 * s) as u32 {
            let t = i as f32;
            dot(20.0 * s + t, 20.0 * s);
            dot(20.0 * s, 20.0 * s + t * 0.8);
            dot(20.0 * s + t, 20.0 * s + t * 0.8);
            dot(80.0 * s, 20.0 * s + t * 0.3);
        }
        for i in 0..360 {
            let a = (i as f32).to_radians();
            dot(45.0 * s + 6.0 * s * a.cos(), 40.0 * s + 6.0 * s * a.sin());
        }
        DynamicImage::ImageRgb8(img)
    }

    fn other_drawing(size: u32) -> DynamicImage {
        let mut img = RgbImage::from_pixel(size, size, Rgb([255, 255, 255]));
        for i in 10..size - 10 {
            img.put_pixel(i, size / 2, Rgb([0, 0, 0]));
            img.put_pixel(size / 3, i, Rgb([0, 0, 0]));
            img.put_pixel(i, (i * 7 / 10).min(size - 1), Rgb([0, 0, 0]));
        }
        DynamicImage::ImageRgb8(img)
    }

    fn distance(a: &RasterFeatures, b: &RasterFeatures) -> (u32, u32) {
        (
            hamming(&a.trimmed.dhash, &b.trimmed.dhash),
            hamming(&a.trimmed.phash, &b.trimmed.phash),
        )
    }

    #[test]
    fn rescaled_padded_and_recompressed_copies_stay_close() {
        let original = features(&drawing(800, 600, 2)).unwrap();
        let half =
            features(&drawing(800, 600, 2).resize_exact(400, 300, image::imageops::FilterType::Triangle)).unwrap();
        let padded = {
            let mut page = RgbImage::from_pixel(1200, 900, Rgb([255, 255, 255]));
            image::imageops::overlay(&mut page, &drawing(800, 600, 2).to_rgb8(), 200, 150);
            features(&DynamicImage::ImageRgb8(page)).unwrap()
        };
        let jpeg = {
            let mut bytes = Vec::new();
            let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 30);
            drawing(800, 600, 2).write_with_encoder(encoder).unwrap();
            features(&image::load_from_memory(&bytes).unwrap()).unwrap()
        };
        let different = features(&other_drawing(600)).unwrap();
        let far = distance(&original, &different);
        for (name, copy) in [("half", &half), ("padded", &padded), ("jpeg q30", &jpeg)] {
            let near = distance(&original, copy);
            assert!(near.0 <= 24 && near.1 <= 60, "{name}: {near:?}");
            assert!(
                near.0 < far.0 && near.1 < far.1,
                "{name}: {near:?} vs a different drawing {far:?}"
            );
        }
        assert_eq!(distance(&original, &padded), (0, 0), "padding is trimmed away exactly");
    }

    #[test]
    fn each_orientation_of_the_query_finds_the_rotated_drawing() {
        let upright = drawing(600, 600, 2);
        let prepared = prepare(&upright).unwrap();
        for (turns, rotated) in [
            (1u8, upright.rotate90()),
            (2, upright.rotate180()),
            (3, upright.rotate270()),
        ] {
            let stored = features(&rotated).unwrap();
            let probe = Orientation {
                quarter_turns: turns,
                mirrored: false,
            };
            let probed = prepared.trimmed.oriented(probe).hashes();
            let best = Orientation::ALL
                .iter()
                .min_by_key(|o| hamming(&prepared.trimmed.oriented(**o).hashes().dhash, &stored.trimmed.dhash))
                .unwrap();
            assert_eq!(*best, probe, "rotation {turns}");
            assert!(hamming(&probed.dhash, &stored.trimmed.dhash) <= 8, "rotation {turns}");
        }
        let mirrored = features(&upright.fliph()).unwrap();
        let probe = prepared
            .trimmed
            .oriented(Orientation {
                quarter_turns: 0,
                mirrored: true,
            })
            .hashes();
        assert!(hamming(&probe.dhash, &mirrored.trimmed.dhash) <= 8);
    }

    #[test]
    fn orientations_form_the_group_of_the_square() {
        let ink = prepare(&drawing(300, 200, 1)).unwrap().trimmed;
        let distinct: std::collections::HashSet<Vec<u32>> = Orientation::ALL
            .iter()
            .map(|o| ink.oriented(*o).cells.iter().map(|c| c.to_bits()).collect())
            .collect();
        assert_eq!(distinct.len(), 8);
        let four_turns = (0..4).fold(ink.clone(), |acc, _| {
            acc.oriented(Orientation {
                quarter_turns: 1,
                mirrored: false,
            })
        });
        assert_eq!(four_turns, ink);
    }

    /// The summed-area table as it was first made: every entry, of the
    /// oriented grid made first.
    fn full_table(ink: &Ink) -> AreaSums {
        let n = ink.side;
        let mut sums = vec![0.0f64; (n + 1) * (n + 1)];
        for y in 0..n {
            let mut row = 0.0f64;
            for x in 0..n {
                row += f64::from(ink.at(x, y));
                sums[(y + 1) * (n + 1) + x + 1] = sums[y * (n + 1) + x + 1] + row;
            }
        }
        let every = (0..=n).map(Some).collect::<Vec<_>>();
        AreaSums {
            column_at: every.clone(),
            row_at: every,
            columns: n + 1,
            sums,
        }
    }

    /// Hashing each orientation from the table's kept lines, read off the
    /// unturned grid, gives exactly the hashes of the full table of the
    /// turned grid: generated drawings, the trimmed ink and the page, on
    /// grids of several sides.
    #[test]
    fn oriented_hashes_are_those_of_the_oriented_grids() {
        let mut rng = crate::engine::testing::Rng(0xa5ea_5c4b);
        for (case, n) in [SIDE, SIDE, SIDE, 100, 257, 300, 3].into_iter().enumerate() {
            let (w, h) = (40 + (rng.next() % 1200) as u32, 40 + (rng.next() % 1200) as u32);
            let page = DynamicImage::ImageLuma8(crate::engine::testing::scribble(&mut rng, w, h));
            let prepared = prepare_at(&page, n).expect("ink");
            for ink in [&prepared.trimmed, &prepared.page] {
                let hashes = ink.oriented_hashes();
                for (o, hashes) in Orientation::ALL.iter().zip(hashes) {
                    let oriented = ink.oriented(*o);
                    let expected = Hashes::of(&full_table(&oriented));
                    assert_eq!(hashes, expected, "case {case}, side {n}, {o:?}");
                    assert_eq!(oriented.hashes(), expected, "case {case}, side {n}, {o:?}");
                }
                assert_eq!(ink.dhash(), dhash(&full_table(ink)), "case {case}");
            }
        }
        for o in Orientation::ALL {
            assert_eq!(o.inverse().inverse(), o);
            assert_eq!(
                prepare_at(&drawing(90, 70, 1), 64).map(|p| p.trimmed.oriented(o).oriented(o.inverse()).cells),
                prepare_at(&drawing(90, 70, 1), 64).map(|p| p.trimmed.cells)
            );
        }
    }

    #[test]
    fn blank_and_transparent_pages_have_no_ink() {
        assert!(
            features(&DynamicImage::ImageRgb8(RgbImage::from_pixel(
                50,
                50,
                Rgb([255, 255, 255])
            )))
            .is_none()
        );
        let transparent = image::RgbaImage::from_pixel(50, 50, image::Rgba([0, 0, 0, 0]));
        assert!(features(&DynamicImage::ImageRgba8(transparent)).is_none());
    }

    /// Bytes in runs of blank paper (255) and of noise, `len` of them.
    fn runs_of_paper(len: usize) -> Vec<u8> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        (0..len)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if (i / 37) % 3 == 0 { state as u8 } else { 255 }
            })
            .collect()
    }

    #[test]
    fn blank_runs_taken_at_once_give_what_pixel_by_pixel_gives() {
        let luma = runs_of_paper(10_007);
        let mut counted = [0u64; 256];
        luma.iter().for_each(|&l| counted[usize::from(l)] += 1);
        assert_eq!(histogram(&luma), counted);

        let alphas = [255, 0, 128, 255];
        let rgba: Vec<u8> = luma
            .iter()
            .enumerate()
            .flat_map(|(i, &l)| [l, l, l.wrapping_mul(3), alphas[i % 4]])
            .collect();
        let one_by_one: Vec<u8> = rgba.chunks_exact(4).map(rgba_over_white).collect();
        let mut blocks = Vec::new();
        rgba_luma_over_white(&rgba, &mut blocks);
        assert_eq!(blocks, one_by_one);

        let darkness: Vec<u8> = luma.iter().map(|&l| 255 - l).collect();
        for row in darkness.chunks(997) {
            assert_eq!(first_ink(row), row.iter().position(|&d| d > BBOX_INK));
            assert_eq!(last_ink(row), row.iter().rposition(|&d| d > BBOX_INK));
            let column_of: Vec<Option<usize>> = (0..row.len()).map(|x| (x % 5 != 0).then_some(x / 9)).collect();
            let mut sums = vec![0u32; 111];
            add_row(row, &column_of, &mut sums);
            let mut expected = vec![0u32; 111];
            for (&d, column) in row.iter().zip(&column_of) {
                if let Some(tx) = column {
                    expected[*tx] += u32::from(d);
                }
            }
            assert_eq!(sums, expected);
        }
    }

    #[test]
    fn thin_lines_survive_the_resample() {
        let prepared = prepare(&drawing(2000, 2000, 1)).unwrap();
        let inked = prepared.trimmed.cells.iter().filter(|&&c| c > 0.05).count();
        assert!(inked > SIDE * 2, "only {inked} cells show ink");
    }
}
