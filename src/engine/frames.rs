//! Other frames for a query than its whole ink box. A label, a revision
//! note or a stamp added beside a drawing widens the ink box, so after
//! trimming every cell of the drawing sits elsewhere and neither hashes nor
//! thumbnails line up with the library's copy. Each frame here leaves out
//! the small detached parts at one edge of the box; the share of ink left
//! out goes with it, so a match through it is never a perfect one.

use super::raster::BBOX_INK;

/// Side of the coarse grid, over the ink box's longer side, on which
/// detached parts are found: parts closer than two cells (about 3% of the
/// drawing) count as one.
const CELLS: usize = 128;
/// Parts left out of a frame hold at most this share of the ink.
const MAX_DROPPED: f32 = 0.4;
/// Parts closer than this many cells side by side (1.5% of the drawing)
/// count as one, and closer than `JOIN_Y` above each other: a line of
/// text stays one part, while a note written just below a drawing stays
/// apart from it. Added labels found as similar: .868 (64 cells, 2 both
/// ways) → .887 (128, 2) → .902 (128, 2 and 1), on 400 LibreCAD drawings.
const JOIN_X: usize = 2;
const JOIN_Y: usize = 1;

/// (left, top, right, bottom) in pixels, half-open.
type Bbox = (usize, usize, usize, usize);

/// A pixel box (half-open) and the share of the ink outside it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Frame {
    pub bbox: Bbox,
    pub dropped: f32,
}

#[derive(Debug, Clone, Copy)]
struct Part {
    mass: u64,
    bbox: Bbox,
}

/// Frames without the parts that touch one edge of `bbox`, for each edge
/// where that leaves most of the ink; none for a drawing in one piece.
pub fn without_edge_parts(width: usize, darkness: &[u8], bbox: Bbox) -> Vec<Frame> {
    let parts = parts(width, darkness, bbox);
    if parts.len() < 2 {
        return Vec::new();
    }
    let total: u64 = parts.iter().map(|p| p.mass).sum();
    let (x0, y0, x1, y1) = bbox;
    let edges: [fn(&Part, Bbox) -> bool; 4] = [
        |p, b| p.bbox.0 == b.0,
        |p, b| p.bbox.1 == b.1,
        |p, b| p.bbox.2 == b.2,
        |p, b| p.bbox.3 == b.3,
    ];
    let mut frames: Vec<Frame> = Vec::new();
    for touches in edges {
        let (dropped, kept): (Vec<&Part>, Vec<&Part>) = parts.iter().partition(|p| touches(p, (x0, y0, x1, y1)));
        let dropped_mass: u64 = dropped.iter().map(|p| p.mass).sum();
        let share = dropped_mass as f32 / total.max(1) as f32;
        if dropped.is_empty() || kept.is_empty() || share > MAX_DROPPED {
            continue;
        }
        let bbox = kept
            .iter()
            .fold((usize::MAX, usize::MAX, 0, 0), |b, p| union(b, p.bbox));
        if !frames.iter().any(|f| f.bbox == bbox) {
            frames.push(Frame { bbox, dropped: share });
        }
    }
    frames
}

fn union(a: Bbox, b: Bbox) -> Bbox {
    (a.0.min(b.0), a.1.min(b.1), a.2.max(b.2), a.3.max(b.3))
}

/// The ink's detached parts: cells of a coarse grid holding ink, joined
/// when within `JOIN_X` cells across and `JOIN_Y` down of each other.
fn parts(width: usize, darkness: &[u8], (x0, y0, x1, y1): Bbox) -> Vec<Part> {
    let cell = (x1 - x0).max(y1 - y0).div_ceil(CELLS).max(1);
    let (gw, gh) = ((x1 - x0).div_ceil(cell), (y1 - y0).div_ceil(cell));
    let empty = (usize::MAX, usize::MAX, 0, 0);
    let mut cells = vec![Part { mass: 0, bbox: empty }; gw * gh];
    for y in y0..y1 {
        let row = &darkness[y * width..(y + 1) * width];
        for (x, &d) in row.iter().enumerate().take(x1).skip(x0) {
            if d > BBOX_INK {
                let c = &mut cells[((y - y0) / cell) * gw + (x - x0) / cell];
                c.mass += u64::from(d);
                c.bbox = union(c.bbox, (x, y, x + 1, y + 1));
            }
        }
    }
    let mut seen: Vec<bool> = cells.iter().map(|c| c.mass == 0).collect();
    let mut parts = Vec::new();
    for start in 0..cells.len() {
        if seen[start] {
            continue;
        }
        seen[start] = true;
        let mut part = cells[start];
        let mut stack = vec![start];
        while let Some(at) = stack.pop() {
            let (cx, cy) = (at % gw, at / gw);
            for ny in cy.saturating_sub(JOIN_Y)..=(cy + JOIN_Y).min(gh - 1) {
                for nx in cx.saturating_sub(JOIN_X)..=(cx + JOIN_X).min(gw - 1) {
                    let next = ny * gw + nx;
                    if !seen[next] {
                        seen[next] = true;
                        part.mass += cells[next].mass;
                        part.bbox = union(part.bbox, cells[next].bbox);
                        stack.push(next);
                    }
                }
            }
        }
        parts.push(part);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 200×200 page with a filled square and, optionally, a small mark
    /// below it.
    fn page(mark: bool) -> Vec<u8> {
        let mut d = vec![0u8; 200 * 200];
        for y in 20..120 {
            for x in 20..180 {
                if x == 20 || x == 179 || y == 20 || y == 119 {
                    d[y * 200 + x] = 255;
                }
            }
        }
        if mark {
            for x in 150..175 {
                d[185 * 200 + x] = 255;
            }
        }
        d
    }

    #[test]
    fn a_mark_beside_the_drawing_gives_a_frame_without_it() {
        let frames = without_edge_parts(200, &page(true), (20, 20, 180, 186));
        let frame = frames
            .iter()
            .find(|f| f.bbox == (20, 20, 180, 120))
            .expect("a frame without the mark");
        assert!(frame.dropped > 0.0 && frame.dropped < 0.1, "{frame:?}");
        assert!(frames.iter().all(|f| f.dropped <= MAX_DROPPED));
    }

    #[test]
    fn a_drawing_in_one_piece_has_no_other_frame() {
        assert!(without_edge_parts(200, &page(false), (20, 20, 180, 120)).is_empty());
    }
}
