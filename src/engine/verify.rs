//! Level L3: verification of a candidate on aligned rasters. Hashes find
//! candidates; this says how much of each drawing's ink the other one
//! explains, which is what separates a re-export from a look-alike part.
//!
//! Both drawings are compared as [`Thumbnail`]s: the trimmed ink (already
//! aligned by trimming, so scale and translation are gone) in the query's
//! matched orientation, binarised on a 128 × 128 grid. Coverage A→B is the
//! share of A's ink cells within `TOLERANCE` cells of B's ink (a chamfer
//! test), and the similarity is the smaller of the two directions: an added
//! label or a crop lowers one direction, a different part lowers both.
//!
//! A candidate the coarse grid calls a duplicate is compared again on the
//! 256 × 256 detail grid, within a cell and a half of either drawing's
//! source pixels: look-alike parts (an arrow turned round, another letter
//! in a circle) differ by less than a coarse cell, and the lower of the two
//! scores stands.

use std::borrow::Cow;

use super::raster::{Ink, Orientation};

/// Side of the coarse grid: 2 KiB a drawing as a bitmap (the detail grid
/// adds 8 KiB).
pub const THUMB: usize = 128;
/// Side of the detail grid: the trimmed ink's own resolution.
const DETAIL: usize = super::raster::SIDE;
const SOURCE_TOLERANCE_PX: f32 = 1.5;
const MAX_DETAIL_TOLERANCE: f32 = 3.0;
/// Shifts (in detail cells, each way) tried to align the detail grids: the
/// coarse grid's one-cell alignment is two detail cells.
const DETAIL_REACH: i32 = 2;
/// A cell is ink when the darkest grid cell under it reaches this share of
/// the drawing's typical line darkness: lines greyed by downscaling or
/// area averaging stay ink, and the same drawing binarises the same way
/// whether it came as 1-pixel lines at 1000 px or as a quarter-size copy.
const INK_SHARE: f32 = 0.3;
/// Bounds of that threshold, in darkness 0..1: paper noise stays below the
/// floor, and the ceiling keeps thin grey lines beside solid fills, which
/// fade to 0.05–0.1 in a quarter-size copy (0.12 lost them: resize ¼
/// recall .970 → .997 with 0.08).
const INK_FLOOR: f32 = 0.03;
const INK_CEILING: f32 = 0.08;
/// How far (in cells, Chebyshev distance) ink may move and still match:
/// absorbs re-rendering, line weight and JPEG edges, about 1.5% of the side.
const TOLERANCE: usize = 1;

/// What L3 compares: the ink on a coarse grid, which absorbs re-rendering,
/// and on a detail grid, which sees what tells look-alike parts apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thumbnail {
    coarse: Grid,
    /// Absent for thumbnails stored before it existed.
    detail: Option<DetailGrid>,
}

/// The detail grid and how far its ink may move and still match: a cell
/// and a half of the source pixels, so a small query's coarser pixels are
/// not taken for a different drawing.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DetailGrid {
    grid: Grid,
    tolerance: u8,
}

impl DetailGrid {
    fn of_ink(ink: &Ink, inked: &Inked) -> DetailGrid {
        let cell_px = ink.cell_px() * ink.side() as f32 / DETAIL as f32;
        let tolerance = (SOURCE_TOLERANCE_PX / cell_px.max(f32::EPSILON)).ceil();
        DetailGrid {
            grid: Grid::pooled(inked, DETAIL),
            tolerance: tolerance.clamp(1.0, MAX_DETAIL_TOLERANCE) as u8,
        }
    }
}

/// How two thumbnails agree.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verification {
    /// Share of the query's ink explained by the candidate.
    pub query_covered: f64,
    /// Share of the candidate's ink explained by the query.
    pub candidate_covered: f64,
    /// The smaller of the two, on the similarity scale
    /// ([`similarity_of_coverage`]), 0..1.
    pub similarity: f64,
}

impl Thumbnail {
    pub fn from_ink(ink: &Ink) -> Thumbnail {
        // Both grids binarise at one threshold: the ink is tested once.
        let inked = Inked::new(ink, ink_threshold(ink, INK_CEILING));
        Thumbnail {
            coarse: Grid::pooled(&inked, THUMB),
            detail: Some(DetailGrid::of_ink(ink, &inked)),
        }
    }

    /// The same grids turned by `orientation`.
    pub fn oriented(&self, orientation: Orientation) -> Thumbnail {
        Thumbnail {
            coarse: self.coarse.oriented(orientation),
            detail: self.detail.as_ref().map(|d| DetailGrid {
                grid: d.grid.oriented(orientation),
                tolerance: d.tolerance,
            }),
        }
    }

    pub fn ink_cells(&self) -> u32 {
        self.coarse.ink_cells()
    }

    /// Stored form: the coarse grid's rows, then the detail grid's, as
    /// little-endian 64-bit words, then the detail tolerance.
    pub fn to_bytes(&self) -> Vec<u8> {
        let detail = self.detail.iter().flat_map(|d| d.grid.to_bytes().chain([d.tolerance]));
        self.coarse.to_bytes().chain(detail).collect()
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Thumbnail> {
        let coarse_len = THUMB * THUMB / 8;
        if bytes.len() < coarse_len {
            return None;
        }
        let (coarse, detail) = bytes.split_at(coarse_len);
        Some(Thumbnail {
            coarse: Grid::from_bytes(THUMB, coarse)?,
            detail: match detail.split_last() {
                None => None,
                Some((&tolerance, grid)) => Some(DetailGrid {
                    grid: Grid::from_bytes(DETAIL, grid)?,
                    tolerance,
                }),
            },
        })
    }
}

/// Binarised ink on a square grid, one bit per cell, rows of 64-bit words.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Grid {
    side: usize,
    words: Vec<u64>,
}

impl Grid {
    fn empty(side: usize) -> Grid {
        Grid {
            side,
            words: vec![0; side * side / 64],
        }
    }

    fn stride(&self) -> usize {
        self.side / 64
    }

    fn row(&self, y: usize) -> &[u64] {
        &self.words[y * self.stride()..(y + 1) * self.stride()]
    }

    #[cfg(test)]
    fn get(&self, x: usize, y: usize) -> bool {
        self.words[y * self.stride() + x / 64] >> (x % 64) & 1 == 1
    }

    fn set(&mut self, x: usize, y: usize) {
        let stride = self.stride();
        self.words[y * stride + x / 64] |= 1 << (x % 64);
    }

    /// Max-pooled: a cell is ink when the darkest ink cell under it
    /// reaches the threshold, that is when any of them is in `inked`.
    fn pooled(inked: &Inked, side: usize) -> Grid {
        let source = inked.side;
        let span = |t: usize| (t * source / side, ((t + 1) * source / side).max(t * source / side + 1));
        let mut grid = Grid::empty(side);
        if source >= side {
            // The spans tile the ink grid: each ink cell lies under one
            // grid cell, which its bit sets. Drawings are mostly paper.
            let mut cell_of = vec![0; source];
            for t in 0..side {
                let (lo, hi) = span(t);
                cell_of[lo..hi].fill(t);
            }
            for (i, &word) in inked.words.iter().enumerate() {
                let (y, x0) = (i / inked.stride, (i % inked.stride) * 64);
                let mut bits = word;
                while bits != 0 {
                    let x = x0 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    grid.set(cell_of[x], cell_of[y]);
                }
            }
            return grid;
        }
        let mut under = vec![0u64; inked.stride];
        for ty in 0..side {
            let (y0, y1) = span(ty);
            under.fill(0);
            for y in y0..y1 {
                for (u, w) in under.iter_mut().zip(inked.row(y)) {
                    *u |= w;
                }
            }
            if under.iter().all(|&w| w == 0) {
                continue;
            }
            for tx in 0..side {
                let (x0, x1) = span(tx);
                if any_bit(&under, x0, x1) {
                    grid.set(tx, ty);
                }
            }
        }
        grid
    }

    /// The same grid turned: each ink cell's bit moves where the
    /// orientation takes it (drawings are mostly paper, so this visits
    /// few cells).
    fn oriented(&self, orientation: Orientation) -> Grid {
        if orientation == Orientation::IDENTITY {
            return self.clone();
        }
        let mut out = Grid::empty(self.side);
        let stride = self.stride();
        for (i, &word) in self.words.iter().enumerate() {
            let (y, x0) = (i / stride, (i % stride) * 64);
            let mut bits = word;
            while bits != 0 {
                let x = x0 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let (tx, ty) = orientation.map(x, y, self.side);
                out.set(tx, ty);
            }
        }
        out
    }

    /// Moved by (dx, dy) cells, |dx| < 64; what leaves the grid is lost.
    #[cfg(test)]
    fn shifted(&self, dx: i32, dy: i32) -> Grid {
        let mut out = Grid::empty(self.side);
        let stride = self.stride();
        for y in 0..self.side {
            let ty = y as i32 + dy;
            if (0..self.side as i32).contains(&ty) {
                let target = ty as usize * stride;
                shift_row(self.row(y), dx, &mut out.words[target..target + stride]);
            }
        }
        out
    }

    /// Numbers of the rows with ink.
    fn inked_rows(&self) -> Vec<usize> {
        (0..self.side)
            .filter(|&y| self.row(y).iter().any(|&w| w != 0))
            .collect()
    }

    fn ink_cells(&self) -> u32 {
        self.words.iter().map(|w| w.count_ones()).sum()
    }

    /// Every cell within `tolerance` cells of ink (a square dilation):
    /// each inked row is widened once and ORed into the rows within
    /// `tolerance` of it; paper rows cost nothing.
    fn dilated(&self, tolerance: usize) -> Vec<u64> {
        let stride = self.stride();
        let mut out = vec![0u64; self.words.len()];
        let mut widened = vec![0u64; stride];
        let mut moved = vec![0u64; stride];
        for y in 0..self.side {
            let row = self.row(y);
            if row.iter().all(|&w| w == 0) {
                continue;
            }
            widen_row(row, tolerance, &mut widened, &mut moved);
            let (lo, hi) = (y.saturating_sub(tolerance), (y + tolerance).min(self.side - 1));
            for target in lo..=hi {
                for (o, w) in out[target * stride..(target + 1) * stride].iter_mut().zip(&widened) {
                    *o |= w;
                }
            }
        }
        out
    }

    #[cfg(test)]
    fn covered_by(&self, dilated_other: &[u64]) -> f64 {
        let ink = self.ink_cells();
        if ink == 0 {
            return 0.0;
        }
        let inside: u32 = self
            .words
            .iter()
            .zip(dilated_other)
            .map(|(w, d)| (w & d).count_ones())
            .sum();
        f64::from(inside) / f64::from(ink)
    }

    fn to_bytes(&self) -> impl Iterator<Item = u8> + '_ {
        self.words.iter().flat_map(|w| w.to_le_bytes())
    }

    fn from_bytes(side: usize, bytes: &[u8]) -> Option<Grid> {
        (bytes.len() == side * side / 8).then(|| Grid {
            side,
            words: bytes
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        })
    }
}

/// Which cells of an ink grid reach a threshold, a bit each, rows of
/// 64-bit words: what both thumbnail grids are pooled from.
struct Inked {
    side: usize,
    stride: usize,
    words: Vec<u64>,
}

impl Inked {
    fn new(ink: &Ink, threshold: f32) -> Inked {
        let side = ink.side();
        let stride = side.div_ceil(64);
        let mut words = vec![0u64; side * stride];
        for (y, row) in ink.cells().chunks_exact(side).enumerate() {
            for (x, &d) in row.iter().enumerate() {
                if d >= threshold {
                    words[y * stride + x / 64] |= 1 << (x % 64);
                }
            }
        }
        Inked { side, stride, words }
    }

    fn row(&self, y: usize) -> &[u64] {
        &self.words[y * self.stride..(y + 1) * self.stride]
    }
}

/// Whether any of bits `x0..x1` (x0 < x1) of a row is set.
fn any_bit(row: &[u64], x0: usize, x1: usize) -> bool {
    let (first, last) = (x0 / 64, (x1 - 1) / 64);
    (first..=last).any(|i| {
        let lo = if i == first { x0 % 64 } else { 0 };
        let hi = if i == last { (x1 - 1) % 64 + 1 } else { 64 };
        let mask = (u64::MAX >> (64 - (hi - lo))) << lo;
        row[i] & mask != 0
    })
}

/// One row moved by `dx` bits towards higher x (negative: lower x).
fn shift_row(row: &[u64], dx: i32, out: &mut [u64]) {
    let n = row.len();
    let s = dx.unsigned_abs();
    for i in 0..n {
        out[i] = if dx >= 0 {
            let carry = if i > 0 && s > 0 { row[i - 1] >> (64 - s) } else { 0 };
            row[i] << s | carry
        } else {
            let carry = if i + 1 < n && s > 0 { row[i + 1] << (64 - s) } else { 0 };
            row[i] >> s | carry
        };
    }
}

/// `row` widened by `tolerance` bits each way (bits leaving the row are
/// lost), into `out`; `moved` is scratch of the same length.
fn widen_row(row: &[u64], tolerance: usize, out: &mut [u64], moved: &mut [u64]) {
    out.copy_from_slice(row);
    for k in 1..=tolerance as i32 {
        for dx in [k, -k] {
            shift_row(row, dx, moved);
            for (o, m) in out.iter_mut().zip(moved.iter()) {
                *o |= m;
            }
        }
    }
}

/// INK_SHARE of the 90th percentile of the inked cells' darkness, at most
/// `ceiling`.
pub(crate) fn ink_threshold(ink: &Ink, ceiling: f32) -> f32 {
    let mut inked: Vec<f32> = ink.cells().iter().copied().filter(|&d| d > 0.0).collect();
    if inked.is_empty() {
        return ceiling;
    }
    let at = (inked.len() * 9 / 10).min(inked.len() - 1);
    let (_, typical, _) = inked.select_nth_unstable_by(at, f32::total_cmp);
    (*typical * INK_SHARE).clamp(INK_FLOOR, ceiling)
}

/// Coverage of this share or more is a duplicate at the default threshold.
/// Measured by `dedup2d calibrate`: re-exports, rescales, JPEG, thicker
/// lines and turns of a drawing cover each other fully at one cell's
/// tolerance, while look-alike parts (a symbol with or without a small
/// arrow or bar) share 95–98% of their ink.
const DUPLICATE_COVERAGE: f64 = 0.9875;
/// The most a query's additions to a candidate can score: similar, below
/// the default duplicate threshold.
const ADDITIONS_CEILING: f64 = 0.94;
/// Coverage at the default similar threshold, where the scale is unchanged.
const SIMILAR_COVERAGE: f64 = 0.80;

/// Maps the smaller coverage onto the similarity scale of CONTRACT §3, so
/// the default thresholds (0.95 duplicate, 0.80 similar) fall where
/// coverage separates duplicates from look-alikes. Monotone and piecewise
/// linear: the top of the scale is stretched, the rest kept.
pub fn similarity_of_coverage(coverage: f64) -> f64 {
    let (dup, sim) = (0.95, 0.80);
    if coverage >= DUPLICATE_COVERAGE {
        dup + (coverage - DUPLICATE_COVERAGE) / (1.0 - DUPLICATE_COVERAGE) * (1.0 - dup)
    } else if coverage >= SIMILAR_COVERAGE {
        sim + (coverage - SIMILAR_COVERAGE) / (DUPLICATE_COVERAGE - SIMILAR_COVERAGE) * (dup - sim)
    } else {
        coverage
    }
}

/// [`verify`] at the best of the query's one-cell shifts: trimming two
/// copies of a drawing (rescaled, turned) can round their boxes a cell
/// apart, which the one-cell tolerance then spends on alignment alone.
pub fn verify_aligned(query: &Thumbnail, candidate: &Thumbnail, dropped: f64) -> Verification {
    verify_aligned_prepared(query, &Prepared::new(candidate), dropped)
}

/// [`verify_aligned`] with the candidate prepared.
pub fn verify_aligned_prepared(query: &Thumbnail, candidate: &Prepared, dropped: f64) -> Verification {
    let given = (
        Cow::Borrowed(&candidate.dilated[..]),
        Cow::Borrowed(&candidate.rows[..]),
    );
    let mut shifts = Shifts::with(&query.coarse, &candidate.thumbnail.coarse, TOLERANCE, 1, given);
    aligned(&mut shifts, 1, dropped)
}

/// The same comparison on the detail grids, where a look-alike's small
/// difference (an arrow's direction, a letter) spans cells; `None` when
/// either side has no detail grid.
pub fn verify_detail(query: &Thumbnail, candidate: &Thumbnail, dropped: f64) -> Option<Verification> {
    let (q, c) = (query.detail.as_ref()?, candidate.detail.as_ref()?);
    let tolerance = q.tolerance.max(c.tolerance);
    Some(compare_aligned(
        &q.grid,
        &c.grid,
        usize::from(tolerance),
        DETAIL_REACH,
        dropped,
    ))
}

fn compare_aligned(query: &Grid, candidate: &Grid, tolerance: usize, reach: i32, dropped: f64) -> Verification {
    aligned(&mut Shifts::new(query, candidate, tolerance, reach), reach, dropped)
}

/// The best of the query's shifts within `reach`, unshifted first, the
/// earlier shift on ties, done at the first full similarity.
fn aligned(shifts: &mut Shifts, reach: i32, dropped: f64) -> Verification {
    let mut best = shifts.compare(0, 0, dropped);
    for dy in -reach..=reach {
        for dx in -reach..=reach {
            if best.similarity >= 1.0 {
                return best;
            }
            if (dx, dy) == (0, 0) {
                continue;
            }
            let v = shifts.compare(dx, dy, dropped);
            if v.similarity > best.similarity {
                best = v;
            }
        }
    }
    best
}

/// The query compared with the candidate at each of its shifts without
/// building the shifted grids. The candidate is dilated once. The shifted
/// query's dilation is only ever read on the candidate's inked rows, and
/// built there from the query's rows shifted sideways and widened (once
/// per sideways shift): row `y` of the shifted query's dilation ORs the
/// widened rows `y - dy - tolerance ..= y - dy + tolerance` that exist and
/// whose shifted place is on the grid, which is exactly what dilating the
/// shifted grid (whose lost rows are paper) reads.
struct Shifts<'a> {
    query: &'a Grid,
    candidate: &'a Grid,
    tolerance: usize,
    reach: i32,
    dilated_candidate: Cow<'a, [u64]>,
    candidate_ink: u32,
    /// Row numbers of the query's and the candidate's inked rows.
    query_rows: Vec<usize>,
    candidate_rows: Cow<'a, [usize]>,
    /// Per sideways shift `dx` (at `dx + reach`), once needed: the query's
    /// rows moved by `dx` and widened by `tolerance`, and those rows
    /// dilated down and up too (the dilation of the query moved sideways),
    /// which serves every candidate row whose window the grid's edges do
    /// not clip differently.
    widened: Vec<Option<(Vec<u64>, Vec<u64>)>>,
    scratch: Vec<u64>,
}

impl<'a> Shifts<'a> {
    fn new(query: &'a Grid, candidate: &'a Grid, tolerance: usize, reach: i32) -> Shifts<'a> {
        Shifts::with(
            query,
            candidate,
            tolerance,
            reach,
            (
                Cow::Owned(candidate.dilated(tolerance)),
                Cow::Owned(candidate.inked_rows()),
            ),
        )
    }

    /// With the candidate's dilation by `tolerance` and inked rows given.
    fn with(
        query: &'a Grid,
        candidate: &'a Grid,
        tolerance: usize,
        reach: i32,
        (dilated_candidate, candidate_rows): (Cow<'a, [u64]>, Cow<'a, [usize]>),
    ) -> Shifts<'a> {
        Shifts {
            query,
            candidate,
            tolerance,
            reach,
            dilated_candidate,
            candidate_ink: candidate.ink_cells(),
            query_rows: query.inked_rows(),
            candidate_rows,
            widened: vec![None; (2 * reach + 1) as usize],
            scratch: vec![0; 2 * query.stride()],
        }
    }

    /// What [`compare`] says of the query moved by (dx, dy), |dx|, |dy| ≤
    /// reach.
    fn compare(&mut self, dx: i32, dy: i32, dropped: f64) -> Verification {
        let (side, stride) = (self.query.side, self.query.stride());
        let (mut ink, mut inside) = (0u32, 0u32);
        let moved = &mut self.scratch[..stride];
        for &y in &self.query_rows {
            let target = y as i32 + dy;
            if !(0..side as i32).contains(&target) {
                continue;
            }
            shift_row(self.query.row(y), dx, moved);
            let t = target as usize * stride;
            for (m, d) in moved.iter().zip(&self.dilated_candidate[t..t + stride]) {
                ink += m.count_ones();
                inside += (m & d).count_ones();
            }
        }
        let query_covered = share(inside, ink) * (1.0 - dropped / 2.0);

        self.widen(dx);
        let (widened, dilated) = self.widened[(dx + self.reach) as usize].as_ref().expect("widened");
        let tolerance = self.tolerance as i32;
        // Source rows whose shifted place is on the grid.
        let (first, last) = ((-dy).max(0), (side as i32 - 1 - dy).min(side as i32 - 1));
        let mut covered = 0u32;
        let mut near = [0u64; DETAIL / 64];
        let near = &mut near[..stride];
        for &y in self.candidate_rows.iter() {
            let source = y as i32 - dy;
            let lo = (source - tolerance).max(first);
            let hi = (source + tolerance).min(last);
            // The window `dilated` ORed at `source`: the same rows when
            // only the grid's own edges clip it.
            if (0..side as i32).contains(&source)
                && lo == (source - tolerance).max(0)
                && hi == (source + tolerance).min(side as i32 - 1)
            {
                let s = source as usize * stride;
                covered += self
                    .candidate
                    .row(y)
                    .iter()
                    .zip(&dilated[s..s + stride])
                    .map(|(c, d)| (c & d).count_ones())
                    .sum::<u32>();
                continue;
            }
            near.fill(0);
            for source in lo..=hi {
                let s = source as usize * stride;
                for (n, w) in near.iter_mut().zip(&widened[s..s + stride]) {
                    *n |= w;
                }
            }
            covered += self
                .candidate
                .row(y)
                .iter()
                .zip(near.iter())
                .map(|(c, n)| (c & n).count_ones())
                .sum::<u32>();
        }
        let candidate_covered = share(covered, self.candidate_ink);
        Verification {
            query_covered,
            candidate_covered,
            similarity: score(query_covered, candidate_covered),
        }
    }

    fn widen(&mut self, dx: i32) {
        let (query, tolerance) = (self.query, self.tolerance);
        let (moved, spare) = self.scratch.split_at_mut(query.stride());
        self.widened[(dx + self.reach) as usize].get_or_insert_with(|| {
            let stride = query.stride();
            let mut out = vec![0u64; query.words.len()];
            let mut dilated = vec![0u64; query.words.len()];
            for &y in &self.query_rows {
                shift_row(query.row(y), dx, moved);
                let row = &mut out[y * stride..(y + 1) * stride];
                widen_row(moved, tolerance, row, spare);
                let (lo, hi) = (y.saturating_sub(tolerance), (y + tolerance).min(query.side - 1));
                for target in lo..=hi {
                    for (d, w) in dilated[target * stride..(target + 1) * stride]
                        .iter_mut()
                        .zip(row.iter())
                    {
                        *d |= w;
                    }
                }
            }
            (out, dilated)
        });
    }
}

/// `inside` of `ink` cells as a share, 0 without ink.
fn share(inside: u32, ink: u32) -> f64 {
    if ink == 0 {
        return 0.0;
    }
    f64::from(inside) / f64::from(ink)
}

/// Compares a query (already in the orientation L2 matched) with a
/// candidate. `dropped` is the share of the query's ink its frame left out
/// ([`crate::engine::Probe`]): unexplained, but detached from the drawing
/// (a label, a note), so it weighs half: a heavy drawing with a small note
/// stays a duplicate, a light one with a long label becomes similar.
pub fn verify(query: &Thumbnail, candidate: &Thumbnail, dropped: f64) -> Verification {
    verify_prepared(&Prepared::new(query), &Prepared::new(candidate), dropped)
}

/// A thumbnail's coarse grid ready for [`verify_prepared`] against many
/// others (a search verifies each probe against each candidate): its
/// inked rows and its dilation, made once.
pub struct Prepared<'a> {
    thumbnail: &'a Thumbnail,
    rows: Vec<usize>,
    ink: u32,
    dilated: Vec<u64>,
}

impl<'a> Prepared<'a> {
    pub fn new(thumbnail: &'a Thumbnail) -> Prepared<'a> {
        let coarse = &thumbnail.coarse;
        Prepared {
            thumbnail,
            rows: coarse.inked_rows(),
            ink: coarse.ink_cells(),
            dilated: coarse.dilated(TOLERANCE),
        }
    }

    /// How many of this grid's ink cells lie in `dilated`, an other grid's
    /// dilation.
    fn inside(&self, dilated: &[u64]) -> u32 {
        let grid = &self.thumbnail.coarse;
        let stride = grid.stride();
        self.rows
            .iter()
            .map(|&y| {
                grid.row(y)
                    .iter()
                    .zip(&dilated[y * stride..(y + 1) * stride])
                    .map(|(w, d)| (w & d).count_ones())
                    .sum::<u32>()
            })
            .sum()
    }
}

/// [`verify`] of prepared thumbnails.
pub fn verify_prepared(query: &Prepared, candidate: &Prepared, dropped: f64) -> Verification {
    let query_covered = share(query.inside(&candidate.dilated), query.ink) * (1.0 - dropped / 2.0);
    let candidate_covered = share(candidate.inside(&query.dilated), candidate.ink);
    Verification {
        query_covered,
        candidate_covered,
        similarity: score(query_covered, candidate_covered),
    }
}

/// The similarity of two coverages. When the query holds all of the
/// candidate, what it adds (a note, a stamp, a title line) weighs half, as
/// a frame's left-out ink does, but alone never makes a duplicate: a part
/// with an extra hole is not the same part. Added labels found as similar:
/// .79 → .87 (400 LibreCAD drawings).
fn score(query_covered: f64, candidate_covered: f64) -> f64 {
    let strict = similarity_of_coverage(query_covered.min(candidate_covered));
    if candidate_covered < DUPLICATE_COVERAGE {
        return strict;
    }
    let with_additions = similarity_of_coverage(1.0 - (1.0 - query_covered) / 2.0);
    strict.max(with_additions.min(ADDITIONS_CEILING))
}

#[cfg(test)]
mod tests {
    use image::{DynamicImage, Rgb, RgbImage};

    use super::*;
    use crate::engine::raster::prepare;
    use crate::engine::testing::Rng;

    fn canvas(size: u32) -> RgbImage {
        RgbImage::from_pixel(size, size, Rgb([255, 255, 255]))
    }

    fn line(img: &mut RgbImage, (x0, y0): (f32, f32), (x1, y1): (f32, f32), weight: u32) {
        let steps = ((x1 - x0).abs().max((y1 - y0).abs()) as u32).max(1);
        for i in 0..=steps {
            let t = i as f32 / steps as f32;
            let (x, y) = ((x0 + (x1 - x0) * t) as u32, (y0 + (y1 - y0) * t) as u32);
            for dy in 0..weight {
                for dx in 0..weight {
                    if x + dx < img.width() && y + dy < img.height() {
                        img.put_pixel(x + dx, y + dy, Rgb([0, 0, 0]));
                    }
                }
            }
        }
    }

    /// A resistor-like symbol; `preset` adds the small arrow that tells a
    /// preset resistor from a plain one.
    fn resistor(size: u32, weight: u32, preset: bool) -> DynamicImage {
        let mut img = canvas(size);
        let s = size as f32 / 100.0;
        line(&mut img, (10.0 * s, 50.0 * s), (30.0 * s, 50.0 * s), weight);
        line(&mut img, (70.0 * s, 50.0 * s), (90.0 * s, 50.0 * s), weight);
        for (a, b) in [((30.0, 40.0), (70.0, 40.0)), ((30.0, 60.0), (70.0, 60.0))] {
            line(&mut img, (a.0 * s, a.1 * s), (b.0 * s, b.1 * s), weight);
        }
        line(&mut img, (30.0 * s, 40.0 * s), (30.0 * s, 60.0 * s), weight);
        line(&mut img, (70.0 * s, 40.0 * s), (70.0 * s, 60.0 * s), weight);
        if preset {
            line(&mut img, (35.0 * s, 75.0 * s), (65.0 * s, 25.0 * s), weight);
        }
        DynamicImage::ImageRgb8(img)
    }

    fn thumb(img: &DynamicImage) -> Thumbnail {
        Thumbnail::from_ink(&prepare(img).unwrap().trimmed)
    }

    #[test]
    fn a_re_rendered_copy_verifies_and_a_look_alike_does_not() {
        let original = thumb(&resistor(1000, 1, false));
        let rescaled = thumb(&resistor(400, 1, false));
        let thick = thumb(&resistor(1000, 3, false));
        let preset = thumb(&resistor(1000, 1, true));
        for (name, copy) in [("rescaled", &rescaled), ("lines x3", &thick)] {
            let v = verify(&original, copy, 0.0);
            assert!(v.similarity >= 0.95, "{name}: {v:?}");
        }
        let look_alike = verify(&original, &preset, 0.0);
        assert!(look_alike.similarity < 0.9, "{look_alike:?}");
        assert!(
            look_alike.query_covered > look_alike.candidate_covered,
            "{look_alike:?}"
        );
        assert_eq!(verify(&original, &original, 0.0).similarity, 1.0);
    }

    #[test]
    fn the_matched_orientation_aligns_a_rotated_copy() {
        let upright = resistor(800, 1, true);
        let turned = thumb(&upright.rotate90());
        let query = thumb(&upright);
        let quarter = Orientation {
            quarter_turns: 1,
            mirrored: false,
        };
        assert!(verify(&query.oriented(quarter), &turned, 0.0).similarity >= 0.95);
        assert!(verify(&query, &turned, 0.0).similarity < 0.8);
    }

    #[test]
    fn thumbnails_round_trip_through_bytes() {
        let t = thumb(&resistor(300, 2, true));
        assert!(t.ink_cells() > 100);
        let bytes = t.to_bytes();
        assert_eq!(bytes.len(), 2048 + 8192 + 1);
        assert_eq!(Thumbnail::from_bytes(&bytes), Some(t.clone()));
        assert_eq!(Thumbnail::from_bytes(&bytes[1..]), None);
        let stored_before_detail = Thumbnail::from_bytes(&bytes[..2048]).expect("coarse only");
        assert_eq!(stored_before_detail.ink_cells(), t.ink_cells());
        assert_eq!(verify_detail(&t, &stored_before_detail, 0.0), None);
    }

    /// A frame with ten teeth; `offset` moves the teeth, in hundredths of
    /// the side: a part whose details sit elsewhere.
    fn comb(size: u32, weight: u32, offset: f32) -> DynamicImage {
        let mut img = canvas(size);
        let s = size as f32 / 100.0;
        for (a, b) in [((20.0, 30.0), (80.0, 30.0)), ((20.0, 70.0), (80.0, 70.0))] {
            line(&mut img, (a.0 * s, a.1 * s), (b.0 * s, b.1 * s), weight);
        }
        line(&mut img, (20.0 * s, 30.0 * s), (20.0 * s, 70.0 * s), weight);
        line(&mut img, (80.0 * s, 30.0 * s), (80.0 * s, 70.0 * s), weight);
        for tooth in 0..10 {
            let x = (24.0 + tooth as f32 * 5.5 + offset) * s;
            line(&mut img, (x, 30.0 * s), (x, 45.0 * s), weight);
        }
        DynamicImage::ImageRgb8(img)
    }

    #[test]
    fn the_detail_grid_tells_apart_what_the_coarse_one_cannot() {
        let original = thumb(&comb(1000, 1, 0.0));
        let moved_teeth = thumb(&comb(1000, 1, 0.9));
        let coarse = verify_aligned(&original, &moved_teeth, 0.0);
        assert!(
            coarse.similarity >= 0.95,
            "the coarse grid already separates them: {coarse:?}"
        );
        let detail = verify_detail(&original, &moved_teeth, 0.0).expect("both have detail");
        assert!(detail.similarity < 0.9, "{detail:?}");
        for (name, copy) in [
            ("half size", comb(500, 1, 0.0)),
            ("lines x3", comb(1000, 3, 0.0)),
            ("quarter size", comb(250, 1, 0.0)),
        ] {
            let v = verify_detail(&original, &thumb(&copy), 0.0).expect("both have detail");
            assert!(v.similarity >= 0.95, "{name}: {v:?}");
        }
    }

    /// The grids as they were first made: every target cell tests the
    /// darkness of each ink cell under it, every cell is moved one by one.
    fn pooled_cell_by_cell(ink: &Ink, side: usize, threshold: f32) -> Grid {
        let source = ink.side();
        let span = |t: usize| (t * source / side, ((t + 1) * source / side).max(t * source / side + 1));
        let mut grid = Grid::empty(side);
        for ty in 0..side {
            let (y0, y1) = span(ty);
            for tx in 0..side {
                let (x0, x1) = span(tx);
                if (y0..y1).any(|y| (x0..x1).any(|x| ink.at(x, y) >= threshold)) {
                    grid.set(tx, ty);
                }
            }
        }
        grid
    }

    fn oriented_cell_by_cell(grid: &Grid, orientation: Orientation) -> Grid {
        let mut out = Grid::empty(grid.side);
        for y in 0..grid.side {
            for x in 0..grid.side {
                if grid.get(x, y) {
                    let (tx, ty) = orientation.map(x, y, grid.side);
                    out.set(tx, ty);
                }
            }
        }
        out
    }

    /// Pooling from the inked bits and moving only the ink's bits give
    /// exactly the grids the cell-by-cell code gives, for ink grids finer
    /// and coarser than the thumbnails, at several thresholds, in all
    /// eight orientations.
    #[test]
    fn pooled_and_turned_grids_are_the_cell_by_cell_ones() {
        use crate::engine::raster::prepare_at;
        use crate::engine::testing::{Rng, scribble};
        let mut rng = Rng(0x007e_570f_91d5);
        for (case, n) in [256, 256, 256, 100, 300, 512].into_iter().enumerate() {
            let (w, h) = (60 + (rng.next() % 900) as u32, 60 + (rng.next() % 900) as u32);
            let page = DynamicImage::ImageLuma8(scribble(&mut rng, w, h));
            let ink = prepare_at(&page, n).expect("ink").trimmed;
            let typical = ink_threshold(&ink, INK_CEILING);
            for threshold in [INK_FLOOR, typical, 0.2, 0.6] {
                let inked = Inked::new(&ink, threshold);
                for side in [THUMB, DETAIL] {
                    let grid = Grid::pooled(&inked, side);
                    let expected = pooled_cell_by_cell(&ink, side, threshold);
                    assert_eq!(
                        grid, expected,
                        "case {case}, ink {n}², grid {side}², threshold {threshold}"
                    );
                    assert!(threshold > typical || grid.ink_cells() > 0, "case {case}: some ink");
                    for orientation in Orientation::ALL {
                        assert_eq!(
                            grid.oriented(orientation),
                            oriented_cell_by_cell(&grid, orientation),
                            "case {case}, grid {side}², {orientation:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn additions_make_a_drawing_similar_but_never_a_duplicate() {
        let plain = thumb(&resistor(1000, 1, false));
        let with_arrow = thumb(&resistor(1000, 1, true));
        let added = verify_aligned(&with_arrow, &plain, 0.0);
        assert!(added.candidate_covered >= DUPLICATE_COVERAGE, "{added:?}");
        assert!((0.8..0.95).contains(&added.similarity), "{added:?}");
        let removed = verify_aligned(&plain, &with_arrow, 0.0);
        assert!(removed.similarity < added.similarity, "{removed:?}");
        assert_eq!(score(0.995, 1.0), similarity_of_coverage(0.995));
        assert_eq!(score(0.97, 1.0), ADDITIONS_CEILING);
        assert_eq!(score(0.7, 0.9), 0.7);
    }

    /// The dilation as it was first written: every row re-shifted, every
    /// target row ORing its `2 · tolerance + 1` sources.
    fn dilated_reference(grid: &Grid, tolerance: usize) -> Vec<u64> {
        let stride = grid.stride();
        let mut widened = grid.words.clone();
        let mut moved = vec![0u64; stride];
        for y in 0..grid.side {
            for k in 1..=tolerance as i32 {
                for dx in [k, -k] {
                    shift_row(grid.row(y), dx, &mut moved);
                    for (w, m) in widened[y * stride..(y + 1) * stride].iter_mut().zip(&moved) {
                        *w |= m;
                    }
                }
            }
        }
        let mut out = vec![0u64; grid.words.len()];
        for y in 0..grid.side {
            let lo = y.saturating_sub(tolerance);
            let hi = (y + tolerance).min(grid.side - 1);
            for source in lo..=hi {
                for i in 0..stride {
                    out[y * stride + i] |= widened[source * stride + i];
                }
            }
        }
        out
    }

    fn compare_reference(
        query: &Grid,
        candidate: &Grid,
        dilated_candidate: &[u64],
        tolerance: usize,
        dropped: f64,
    ) -> Verification {
        let query_covered = query.covered_by(dilated_candidate) * (1.0 - dropped / 2.0);
        let candidate_covered = candidate.covered_by(&dilated_reference(query, tolerance));
        Verification {
            query_covered,
            candidate_covered,
            similarity: score(query_covered, candidate_covered),
        }
    }

    fn verify_reference(query: &Thumbnail, candidate: &Thumbnail, dropped: f64) -> Verification {
        let dilated_candidate = dilated_reference(&candidate.coarse, TOLERANCE);
        compare_reference(&query.coarse, &candidate.coarse, &dilated_candidate, TOLERANCE, dropped)
    }

    /// L3 as it was first written, on built grids: every shifted query
    /// built, and dilated again.
    fn compare_aligned_reference(
        query: &Grid,
        candidate: &Grid,
        tolerance: usize,
        reach: i32,
        dropped: f64,
    ) -> Verification {
        let dilated_candidate = dilated_reference(candidate, tolerance);
        let mut best = compare_reference(query, candidate, &dilated_candidate, tolerance, dropped);
        for dy in -reach..=reach {
            for dx in -reach..=reach {
                if best.similarity >= 1.0 {
                    return best;
                }
                if (dx, dy) == (0, 0) {
                    continue;
                }
                let v = compare_reference(
                    &query.shifted(dx, dy),
                    candidate,
                    &dilated_candidate,
                    tolerance,
                    dropped,
                );
                if v.similarity > best.similarity {
                    best = v;
                }
            }
        }
        best
    }

    fn bits(v: &Verification) -> [u64; 3] {
        [
            v.query_covered.to_bits(),
            v.candidate_covered.to_bits(),
            v.similarity.to_bits(),
        ]
    }

    /// A grid of random cells at a density of `per_mille`, with ink on
    /// some of the border rows and columns, where shifted ink leaves.
    fn random_grid(rng: &mut Rng, side: usize, per_mille: u64) -> Grid {
        let mut grid = Grid::empty(side);
        for y in 0..side {
            for x in 0..side {
                if rng.next() % 1000 < per_mille {
                    grid.set(x, y);
                }
            }
        }
        for _ in 0..rng.next() % 6 {
            let (at, band) = ((rng.next() % side as u64) as usize, (rng.next() % 4) as usize);
            let edge = if rng.next().is_multiple_of(2) {
                band
            } else {
                side - 1 - band
            };
            let (x, y) = if rng.next().is_multiple_of(2) {
                (edge, at)
            } else {
                (at, edge)
            };
            for d in 0..(rng.next() % 40) as usize {
                let (x, y) = if x == edge {
                    (x, (y + d) % side)
                } else {
                    ((x + d) % side, y)
                };
                grid.set(x, y);
            }
        }
        grid
    }

    /// Dilating only inked rows, and comparing shifted queries without
    /// building them, give bit for bit the verifications the first code
    /// gave: at every shift L3 tries, every tolerance in use (and 0), on
    /// trimmed drawings (whose ink touches the borders) in all eight
    /// orientations, random grids sparse to dense, and empty grids.
    #[test]
    fn shifted_comparisons_are_the_built_ones() {
        use crate::engine::raster::prepare_at;
        use crate::engine::testing::{Rng, scribble};
        let mut rng = Rng(0x5417_f7ed_0c0a);
        let mut thumbs = Vec::new();
        for _ in 0..10 {
            let (w, h) = (40 + (rng.next() % 900) as u32, 40 + (rng.next() % 900) as u32);
            let page = DynamicImage::ImageLuma8(scribble(&mut rng, w, h));
            let t = Thumbnail::from_ink(&prepare_at(&page, 256).expect("ink").trimmed);
            for orientation in Orientation::ALL {
                thumbs.push(t.oriented(orientation));
            }
        }
        let mut grids: Vec<(Grid, Grid)> = thumbs
            .iter()
            .map(|t| (t.coarse.clone(), t.detail.as_ref().expect("detail").grid.clone()))
            .collect();
        for per_mille in [1, 5, 20, 100, 400, 900] {
            for _ in 0..4 {
                grids.push((
                    random_grid(&mut rng, THUMB, per_mille),
                    random_grid(&mut rng, DETAIL, per_mille),
                ));
            }
        }
        grids.push((Grid::empty(THUMB), Grid::empty(DETAIL)));
        let mut compared = 0;
        for (i, (qc, qd)) in grids.iter().enumerate() {
            for _ in 0..4 {
                let j = (rng.next() % grids.len() as u64) as usize;
                let (cc, cd) = &grids[if rng.next().is_multiple_of(8) { i } else { j }];
                let dropped = [0.0, 0.0, 0.125, 0.3, 0.77][(rng.next() % 5) as usize];
                for (q, c) in [(qc, cc), (qd, cd)] {
                    for tolerance in 0..=3 {
                        assert_eq!(
                            c.dilated(tolerance),
                            dilated_reference(c, tolerance),
                            "grid {j}, tolerance {tolerance}"
                        );
                        let dilated_c = dilated_reference(c, tolerance);
                        let mut shifts = Shifts::new(q, c, tolerance, DETAIL_REACH);
                        for dy in -DETAIL_REACH..=DETAIL_REACH {
                            for dx in -DETAIL_REACH..=DETAIL_REACH {
                                let expected = compare_reference(&q.shifted(dx, dy), c, &dilated_c, tolerance, dropped);
                                let got = shifts.compare(dx, dy, dropped);
                                assert_eq!(
                                    bits(&got),
                                    bits(&expected),
                                    "{i} vs {j}, side {}, tolerance {tolerance}, shift ({dx}, {dy}): {got:?} {expected:?}",
                                    q.side
                                );
                                compared += 1;
                            }
                        }
                        for reach in [1, DETAIL_REACH] {
                            let got = compare_aligned(q, c, tolerance, reach, dropped);
                            let expected = compare_aligned_reference(q, c, tolerance, reach, dropped);
                            assert_eq!(
                                bits(&got),
                                bits(&expected),
                                "{i} vs {j}, aligned, tolerance {tolerance}, reach {reach}"
                            );
                        }
                    }
                }
            }
        }
        for (i, q) in thumbs.iter().enumerate() {
            for c in thumbs.iter().step_by(3) {
                let dropped = [0.0, 0.2][i % 2];
                assert_eq!(bits(&verify(q, c, dropped)), bits(&verify_reference(q, c, dropped)));
                let (got, expected) = (
                    verify_aligned(q, c, dropped),
                    compare_aligned_reference(&q.coarse, &c.coarse, TOLERANCE, 1, dropped),
                );
                assert_eq!(bits(&got), bits(&expected));
            }
        }
        assert!(compared > 10_000, "{compared}");
    }
}
