//! A square 8-bit canvas: white background, black ink, lines by Bresenham
//! with a round stamp for widths above one pixel, polygons by even-odd
//! scanlines. Coordinates are pixels, x right and y down; pixel (i, j)
//! covers [i, i+1) × [j, j+1).

use image::GrayImage;

pub(crate) const INK: u8 = 0;
pub(crate) const PAPER: u8 = 255;

pub(crate) struct Canvas {
    size: usize,
    pixels: Vec<u8>,
    /// Offsets inked around each pixel of a line; empty means just the pixel.
    stamp: Vec<(i64, i64)>,
}

impl Canvas {
    pub fn new(size: u32, line_width: u32) -> Canvas {
        let size = size as usize;
        let w = i64::from(line_width.max(1));
        let mut stamp = Vec::new();
        if w > 1 {
            let lo = -(w - 1) / 2;
            let hi = lo + w - 1;
            let mid = (lo + hi) as f64 / 2.0;
            let r2 = (w as f64 / 2.0).powi(2) + 0.5;
            for dy in lo..=hi {
                for dx in lo..=hi {
                    if (dx as f64 - mid).powi(2) + (dy as f64 - mid).powi(2) <= r2 {
                        stamp.push((dx, dy));
                    }
                }
            }
        }
        Canvas {
            size,
            pixels: vec![PAPER; size * size],
            stamp,
        }
    }

    fn dot(&mut self, x: i64, y: i64) {
        let n = self.size as i64;
        if self.stamp.is_empty() {
            if (0..n).contains(&x) && (0..n).contains(&y) {
                self.pixels[y as usize * self.size + x as usize] = INK;
            }
            return;
        }
        for &(dx, dy) in &self.stamp {
            let (px, py) = (x + dx, y + dy);
            if (0..n).contains(&px) && (0..n).contains(&py) {
                self.pixels[py as usize * self.size + px as usize] = INK;
            }
        }
    }

    /// Inks the segment between two points given in pixel coordinates.
    pub fn line(&mut self, x0: f64, y0: f64, x1: f64, y1: f64) {
        let pad = 2.0 + self.stamp.len() as f64;
        let limit = self.size as f64 + pad;
        let Some((x0, y0, x1, y1)) = clip(x0, y0, x1, y1, -pad, limit) else {
            return;
        };
        let (mut x, mut y) = (x0.floor() as i64, y0.floor() as i64);
        let (xe, ye) = (x1.floor() as i64, y1.floor() as i64);
        let dx = (xe - x).abs();
        let dy = -(ye - y).abs();
        let sx = if x < xe { 1 } else { -1 };
        let sy = if y < ye { 1 } else { -1 };
        let mut err = dx + dy;
        loop {
            self.dot(x, y);
            if x == xe && y == ye {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Fills the rings even-odd: a pixel is inked when its centre is inside.
    pub fn fill(&mut self, rings: &[Vec<(f64, f64)>]) {
        // Edges as (y_top, y_bottom, x at y_top, dx/dy), top < bottom.
        let mut edges: Vec<(f64, f64, f64, f64)> = rings
            .iter()
            .filter(|r| r.len() >= 3)
            .flat_map(|r| r.iter().zip(r.iter().cycle().skip(1)))
            .filter_map(|(&(xa, ya), &(xb, yb))| {
                if !(xa.is_finite() && ya.is_finite() && xb.is_finite() && yb.is_finite()) || ya == yb {
                    return None;
                }
                let ((xt, yt), (xb, yb)) = if ya < yb {
                    ((xa, ya), (xb, yb))
                } else {
                    ((xb, yb), (xa, ya))
                };
                Some((yt, yb, xt, (xb - xt) / (yb - yt)))
            })
            .collect();
        if edges.is_empty() {
            return;
        }
        edges.sort_by(|a, b| a.0.total_cmp(&b.0));
        let n = self.size as i64;
        let first = (edges[0].0 - 0.5).ceil().max(0.0) as i64;
        let mut next = 0;
        let mut active: Vec<(f64, f64, f64, f64)> = Vec::new();
        let mut xs: Vec<f64> = Vec::new();
        for row in first..n {
            let yc = row as f64 + 0.5;
            while next < edges.len() && edges[next].0 <= yc {
                active.push(edges[next]);
                next += 1;
            }
            active.retain(|e| e.1 > yc);
            if active.is_empty() {
                if next == edges.len() {
                    break;
                }
                continue;
            }
            xs.clear();
            xs.extend(active.iter().filter(|e| e.0 <= yc).map(|e| e.2 + (yc - e.0) * e.3));
            xs.sort_by(f64::total_cmp);
            for pair in xs.chunks_exact(2) {
                let from = (pair[0] - 0.5).ceil().max(0.0) as i64;
                let to = ((pair[1] - 0.5).ceil() as i64).min(n);
                let start = row as usize * self.size;
                for x in from..to {
                    self.pixels[start + x as usize] = INK;
                }
            }
        }
    }

    pub fn into_image(self) -> GrayImage {
        let size = self.size as u32;
        GrayImage::from_raw(size, size, self.pixels).expect("the buffer is size × size")
    }
}

/// Liang–Barsky clipping to the square [lo, hi]².
fn clip(x0: f64, y0: f64, x1: f64, y1: f64, lo: f64, hi: f64) -> Option<(f64, f64, f64, f64)> {
    if !(x0.is_finite() && y0.is_finite() && x1.is_finite() && y1.is_finite()) {
        return None;
    }
    let (dx, dy) = (x1 - x0, y1 - y0);
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for (p, q) in [(-dx, x0 - lo), (dx, hi - x0), (-dy, y0 - lo), (dy, hi - y0)] {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else {
            let r = q / p;
            if p < 0.0 {
                t0 = t0.max(r);
            } else {
                t1 = t1.min(r);
            }
        }
    }
    let at = |v: f64| v.clamp(lo, hi);
    (t0 <= t1).then(|| (at(x0 + t0 * dx), at(y0 + t0 * dy), at(x0 + t1 * dx), at(y0 + t1 * dy)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inked(c: Canvas) -> Vec<(u32, u32)> {
        let img = c.into_image();
        img.enumerate_pixels()
            .filter(|p| p.2.0[0] == INK)
            .map(|p| (p.0, p.1))
            .collect()
    }

    #[test]
    fn a_line_inks_every_pixel_between_its_ends() {
        let mut c = Canvas::new(10, 1);
        c.line(1.5, 2.5, 8.5, 2.5);
        assert_eq!(inked(c), (1..=8).map(|x| (x, 2)).collect::<Vec<_>>());
    }

    #[test]
    fn lines_far_outside_are_clipped_not_walked() {
        let mut c = Canvas::new(10, 3);
        c.line(-1e9, 5.5, 1e9, 5.5);
        c.line(f64::NAN, 0.0, 1.0, 1.0);
        let px = inked(c);
        assert_eq!(px.len(), 30, "a 3-px band across the canvas");
    }

    #[test]
    fn fill_is_even_odd() {
        let mut c = Canvas::new(10, 1);
        let outer = vec![(1.0, 1.0), (9.0, 1.0), (9.0, 9.0), (1.0, 9.0)];
        let hole = vec![(3.0, 3.0), (7.0, 3.0), (7.0, 7.0), (3.0, 7.0)];
        c.fill(&[outer, hole]);
        let px = inked(c);
        assert_eq!(px.len(), 64 - 16);
        assert!(px.contains(&(1, 1)) && !px.contains(&(4, 4)) && !px.contains(&(9, 9)));
    }
}
