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

use super::raster::{Ink, Orientation};

/// Side of a thumbnail: 2 KiB a drawing as a bitmap.
pub const THUMB: usize = 128;
/// A cell is ink when the darkest grid cell under it reaches this share of
/// the drawing's typical line darkness: lines greyed by downscaling or
/// area averaging stay ink, and the same drawing binarises the same way
/// whether it came as 1-pixel lines at 1000 px or as a quarter-size copy.
const INK_SHARE: f32 = 0.3;
/// Bounds of that threshold, in darkness 0..1: paper noise stays below the
/// floor, and the ceiling keeps bold drawings' thin details.
const INK_FLOOR: f32 = 0.03;
const INK_CEILING: f32 = 0.12;
/// How far (in cells, Chebyshev distance) ink may move and still match:
/// absorbs re-rendering, line weight and JPEG edges, about 1.5% of the side.
const TOLERANCE: usize = 1;

/// Binarised ink on a THUMB × THUMB grid, one bit per cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thumbnail {
    rows: Vec<u128>,
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
        let side = ink.side();
        let threshold = ink_threshold(ink);
        let span = |t: usize| (t * side / THUMB, ((t + 1) * side / THUMB).max(t * side / THUMB + 1));
        let mut rows = vec![0u128; THUMB];
        for (ty, row) in rows.iter_mut().enumerate() {
            let (y0, y1) = span(ty);
            for tx in 0..THUMB {
                let (x0, x1) = span(tx);
                let darkest = (y0..y1)
                    .flat_map(|y| (x0..x1).map(move |x| (x, y)))
                    .map(|(x, y)| ink.at(x, y))
                    .fold(0.0f32, f32::max);
                if darkest >= threshold {
                    *row |= 1 << tx;
                }
            }
        }
        Thumbnail { rows }
    }

    pub fn oriented(&self, orientation: Orientation) -> Thumbnail {
        let mut rows = vec![0u128; THUMB];
        for (y, row) in self.rows.iter().enumerate() {
            for x in 0..THUMB {
                if row >> x & 1 == 1 {
                    let (tx, ty) = orientation.map(x, y, THUMB);
                    rows[ty] |= 1 << tx;
                }
            }
        }
        Thumbnail { rows }
    }

    /// Moved by (dx, dy) cells; what leaves the grid is lost.
    fn shifted(&self, dx: i32, dy: i32) -> Thumbnail {
        let mut rows = vec![0u128; THUMB];
        for (y, row) in self.rows.iter().enumerate() {
            let ty = y as i32 + dy;
            if (0..THUMB as i32).contains(&ty) {
                rows[ty as usize] = if dx >= 0 { row << dx } else { row >> -dx };
            }
        }
        Thumbnail { rows }
    }

    pub fn ink_cells(&self) -> u32 {
        self.rows.iter().map(|r| r.count_ones()).sum()
    }

    /// Every cell within TOLERANCE of ink (a square dilation).
    fn dilated(&self) -> Vec<u128> {
        let widened: Vec<u128> = self
            .rows
            .iter()
            .map(|&r| (1..=TOLERANCE).fold(r, |acc, k| acc | r << k | r >> k))
            .collect();
        (0..THUMB)
            .map(|y| {
                let lo = y.saturating_sub(TOLERANCE);
                let hi = (y + TOLERANCE).min(THUMB - 1);
                widened[lo..=hi].iter().fold(0, |acc, r| acc | r)
            })
            .collect()
    }

    fn covered_by(&self, dilated_other: &[u128]) -> f64 {
        let ink = self.ink_cells();
        if ink == 0 {
            return 0.0;
        }
        let inside: u32 = self
            .rows
            .iter()
            .zip(dilated_other)
            .map(|(r, d)| (r & d).count_ones())
            .sum();
        f64::from(inside) / f64::from(ink)
    }

    /// Stored form: THUMB rows of 16 little-endian bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.rows.iter().flat_map(|r| r.to_le_bytes()).collect()
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Thumbnail> {
        (bytes.len() == THUMB * 16).then(|| Thumbnail {
            rows: bytes
                .chunks_exact(16)
                .map(|c| u128::from_le_bytes(c.try_into().expect("16 bytes")))
                .collect(),
        })
    }
}

/// INK_SHARE of the 90th percentile of the inked cells' darkness.
pub(crate) fn ink_threshold(ink: &Ink) -> f32 {
    let mut inked: Vec<f32> = ink.cells().iter().copied().filter(|&d| d > 0.0).collect();
    if inked.is_empty() {
        return INK_CEILING;
    }
    let at = (inked.len() * 9 / 10).min(inked.len() - 1);
    let (_, typical, _) = inked.select_nth_unstable_by(at, f32::total_cmp);
    (*typical * INK_SHARE).clamp(INK_FLOOR, INK_CEILING)
}

/// Coverage of this share or more is a duplicate at the default threshold.
/// Measured by `dedup2d calibrate`: re-exports, rescales, JPEG, thicker
/// lines and turns of a drawing cover each other fully at one cell's
/// tolerance, while look-alike parts (a symbol with or without a small
/// arrow or bar) share 95–98% of their ink.
const DUPLICATE_COVERAGE: f64 = 0.9875;
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
    let mut best = verify(query, candidate, dropped);
    for (dx, dy) in [(-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (1, 1), (-1, 1), (1, -1)] {
        if best.similarity >= 1.0 {
            break;
        }
        let v = verify(&query.shifted(dx, dy), candidate, dropped);
        if v.similarity > best.similarity {
            best = v;
        }
    }
    best
}

/// Compares a query (already in the orientation L2 matched) with a
/// candidate. `dropped` is the share of the query's ink its frame left out
/// ([`crate::engine::Probe`]): unexplained, but detached from the drawing
/// (a label, a note), so it weighs half: a heavy drawing with a small note
/// stays a duplicate, a light one with a long label becomes similar.
pub fn verify(query: &Thumbnail, candidate: &Thumbnail, dropped: f64) -> Verification {
    let query_covered = query.covered_by(&candidate.dilated()) * (1.0 - dropped / 2.0);
    let candidate_covered = candidate.covered_by(&query.dilated());
    Verification {
        query_covered,
        candidate_covered,
        similarity: similarity_of_coverage(query_covered.min(candidate_covered)),
    }
}

#[cfg(test)]
mod tests {
    use image::{DynamicImage, Rgb, RgbImage};

    use super::*;
    use crate::engine::raster::prepare;

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
        assert_eq!(bytes.len(), 2048);
        assert_eq!(Thumbnail::from_bytes(&bytes), Some(t));
        assert_eq!(Thumbnail::from_bytes(&bytes[1..]), None);
    }
}
