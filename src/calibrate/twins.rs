//! Orientation twins: library drawings that are the same picture up to a
//! rotation or mirror (LibreCAD ships `cap` and `cap1`, the same capacitor
//! turned 90°, and `Junction-up`/`-down`/`-left`/`-right`). The engine is
//! meant to find a rotated or mirrored copy as a duplicate, so such a pair
//! is no false positive of the hashes; this finds them on the engine's own
//! trimmed ink, independently of the hashes.
//!
//! Two drawings match under a symmetry of the square when, after it, at
//! least [`COVERAGE`] of each one's ink cells lie within one cell of the
//! other's ink on the 256 × 256 trimmed grid. One cell is about 4 pixels
//! of a 1000-pixel render: rasterisation differences pass, a hatch or an
//! arrow that one drawing has and the other has not does not.

use crate::engine::raster::{Ink, SIDE};

/// A cell darker than this is ink.
const INK: f32 = 0.05;
/// Share of each drawing's ink that must lie near the other's.
pub const COVERAGE: f64 = 0.99;

/// One of the 8 symmetries of the square: quarter turns clockwise after an
/// optional left-right mirror; 0 is the identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Symmetry(pub u8);

impl Symmetry {
    pub const ALL: [Symmetry; 8] = [
        Symmetry(0),
        Symmetry(1),
        Symmetry(2),
        Symmetry(3),
        Symmetry(4),
        Symmetry(5),
        Symmetry(6),
        Symmetry(7),
    ];

    pub fn is_identity(self) -> bool {
        self.0 == 0
    }

    fn map(self, x: usize, y: usize) -> (usize, usize) {
        let s = SIDE - 1;
        let x = if self.0 >= 4 { s - x } else { x };
        match self.0 % 4 {
            0 => (x, y),
            1 => (s - y, x),
            2 => (s - x, s - y),
            _ => (y, s - x),
        }
    }

    /// Mirrors (and mirrors composed with turns) are their own inverses.
    fn inverse(self) -> Symmetry {
        if self.0 >= 4 { self } else { Symmetry((4 - self.0) % 4) }
    }
}

/// A drawing's trimmed ink as cells, and the cells within one of them.
#[derive(Debug, Clone)]
pub struct InkMap {
    cells: Vec<(u16, u16)>,
    /// SIDE × SIDE bits, row-major.
    near: Vec<u64>,
}

impl InkMap {
    pub fn new(ink: &Ink) -> InkMap {
        let side = ink.side();
        assert_eq!(side, SIDE, "trimmed ink is SIDE square");
        let mut cells = Vec::new();
        let mut near = vec![0u64; SIDE * SIDE / 64];
        for y in 0..side {
            for x in 0..side {
                if ink.at(x, y) > INK {
                    cells.push((x as u16, y as u16));
                    for ny in y.saturating_sub(1)..=(y + 1).min(side - 1) {
                        for nx in x.saturating_sub(1)..=(x + 1).min(side - 1) {
                            let i = ny * SIDE + nx;
                            near[i / 64] |= 1 << (i % 64);
                        }
                    }
                }
            }
        }
        InkMap { cells, near }
    }

    fn is_near(&self, (x, y): (usize, usize)) -> bool {
        let i = y * SIDE + x;
        self.near[i / 64] >> (i % 64) & 1 == 1
    }

    /// Share of this drawing's ink, moved by `symmetry`, within one cell of
    /// `other`'s ink.
    fn coverage(&self, other: &InkMap, symmetry: Symmetry) -> f64 {
        if self.cells.is_empty() {
            return 0.0;
        }
        let near = self
            .cells
            .iter()
            .filter(|&&(x, y)| other.is_near(symmetry.map(usize::from(x), usize::from(y))))
            .count();
        near as f64 / self.cells.len() as f64
    }

    /// The symmetries that carry this drawing onto `other`, both ways.
    pub fn matches(&self, other: &InkMap) -> Vec<Symmetry> {
        Symmetry::ALL
            .into_iter()
            .filter(|&s| self.coverage(other, s) >= COVERAGE && other.coverage(self, s.inverse()) >= COVERAGE)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use image::{DynamicImage, GrayImage, Luma, imageops};

    use super::*;
    use crate::engine::raster;

    /// An asymmetric L with a tick, and optionally a hatch in its corner.
    fn drawing(hatched: bool) -> GrayImage {
        let mut image = GrayImage::from_pixel(600, 600, Luma([255]));
        for i in 100..500 {
            image.put_pixel(i, 500, Luma([0]));
            image.put_pixel(100, i, Luma([0]));
            image.put_pixel(300, 500 - (i - 100) / 8, Luma([0]));
        }
        for i in 100..200 {
            image.put_pixel(i, 150, Luma([0]));
        }
        if hatched {
            for k in (0..120).step_by(12) {
                for t in 0..(120 - k) {
                    image.put_pixel(110 + k + t, 490 - t, Luma([0]));
                }
            }
        }
        image
    }

    fn map(image: GrayImage) -> InkMap {
        InkMap::new(&raster::prepare(&DynamicImage::ImageLuma8(image)).unwrap().trimmed)
    }

    #[test]
    fn turned_and_mirrored_copies_match_through_their_symmetry_only() {
        let upright = map(drawing(false));
        assert_eq!(upright.matches(&upright), [Symmetry(0)]);
        let turned = map(imageops::rotate90(&drawing(false)));
        assert_eq!(upright.matches(&turned), [Symmetry(1)]);
        assert_eq!(turned.matches(&upright), [Symmetry(3)]);
        let mirrored = map(imageops::flip_horizontal(&drawing(false)));
        assert_eq!(upright.matches(&mirrored), [Symmetry(4)]);
        let mirrored_turned = map(imageops::rotate90(&imageops::flip_horizontal(&drawing(false))));
        assert_eq!(upright.matches(&mirrored_turned), [Symmetry(5)]);
        assert_eq!(mirrored_turned.matches(&upright), [Symmetry(5)]);
        let hatched = map(imageops::rotate90(&drawing(true)));
        assert!(upright.matches(&hatched).is_empty(), "a hatch is a difference");
    }
}
