//! Geometry in drawing units: 3-D affine maps, the DXF arbitrary-axis
//! algorithm, bulges, B-splines and the primitives the renderer draws.

use std::f64::consts::{PI, TAU};

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct V3 {
    pub x: f64,
    pub y: f64,
    pub z: f64,
}

impl V3 {
    pub const fn new(x: f64, y: f64, z: f64) -> V3 {
        V3 { x, y, z }
    }

    pub fn from_point(p: &dxf::Point) -> V3 {
        V3::new(p.x, p.y, p.z)
    }

    pub fn from_vector(v: &dxf::Vector) -> V3 {
        V3::new(v.x, v.y, v.z)
    }

    pub fn cross(self, o: V3) -> V3 {
        V3::new(
            self.y * o.z - self.z * o.y,
            self.z * o.x - self.x * o.z,
            self.x * o.y - self.y * o.x,
        )
    }

    pub fn length(self) -> f64 {
        (self.x * self.x + self.y * self.y + self.z * self.z).sqrt()
    }

    pub fn scaled(self, k: f64) -> V3 {
        V3::new(self.x * k, self.y * k, self.z * k)
    }

    pub fn normalized(self) -> Option<V3> {
        let len = self.length();
        (len > 1e-12 && len.is_finite()).then(|| self.scaled(1.0 / len))
    }
}

/// A point of the flattened, projected drawing (world XY, drawing units).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct P2 {
    pub x: f64,
    pub y: f64,
}

impl P2 {
    pub const fn new(x: f64, y: f64) -> P2 {
        P2 { x, y }
    }

    pub fn is_finite(self) -> bool {
        self.x.is_finite() && self.y.is_finite()
    }

    pub fn length(self) -> f64 {
        self.x.hypot(self.y)
    }
}

/// A row-major 3x4 affine map; `a.then(&b)` applies `b` first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Mat([[f64; 4]; 3]);

impl Mat {
    pub const IDENTITY: Mat = Mat([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]);

    pub fn translate(v: V3) -> Mat {
        Mat([[1.0, 0.0, 0.0, v.x], [0.0, 1.0, 0.0, v.y], [0.0, 0.0, 1.0, v.z]])
    }

    pub fn scale(sx: f64, sy: f64, sz: f64) -> Mat {
        Mat([[sx, 0.0, 0.0, 0.0], [0.0, sy, 0.0, 0.0], [0.0, 0.0, sz, 0.0]])
    }

    pub fn rotate_z(radians: f64) -> Mat {
        let (s, c) = radians.sin_cos();
        Mat([[c, -s, 0.0, 0.0], [s, c, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    }

    /// A map whose columns are the given axes and origin.
    pub fn from_axes(x: V3, y: V3, z: V3, origin: V3) -> Mat {
        Mat([
            [x.x, y.x, z.x, origin.x],
            [x.y, y.y, z.y, origin.y],
            [x.z, y.z, z.z, origin.z],
        ])
    }

    /// Object coordinate system → world, by the DXF arbitrary-axis algorithm.
    /// A zero or non-finite extrusion counts as +Z.
    pub fn ocs(extrusion: V3) -> Mat {
        let n = extrusion.normalized().unwrap_or(V3::new(0.0, 0.0, 1.0));
        if n.x == 0.0 && n.y == 0.0 && n.z > 0.0 {
            return Mat::IDENTITY;
        }
        let world = if n.x.abs() < 1.0 / 64.0 && n.y.abs() < 1.0 / 64.0 {
            V3::new(0.0, 1.0, 0.0)
        } else {
            V3::new(0.0, 0.0, 1.0)
        };
        let ax = world.cross(n).normalized().unwrap_or(V3::new(1.0, 0.0, 0.0));
        let ay = n.cross(ax).normalized().unwrap_or(V3::new(0.0, 1.0, 0.0));
        Mat::from_axes(ax, ay, n, V3::default())
    }

    pub fn then(&self, inner: &Mat) -> Mat {
        let a = &self.0;
        let b = &inner.0;
        let mut out = [[0.0; 4]; 3];
        for (r, row) in out.iter_mut().enumerate() {
            for (c, cell) in row.iter_mut().enumerate() {
                *cell = a[r][0] * b[0][c] + a[r][1] * b[1][c] + a[r][2] * b[2][c];
            }
            row[3] += a[r][3];
        }
        Mat(out)
    }

    pub fn vector(&self, v: V3) -> V3 {
        let m = &self.0;
        V3::new(
            m[0][0] * v.x + m[0][1] * v.y + m[0][2] * v.z,
            m[1][0] * v.x + m[1][1] * v.y + m[1][2] * v.z,
            m[2][0] * v.x + m[2][1] * v.y + m[2][2] * v.z,
        )
    }

    /// The point seen from above (world XY).
    pub fn xy(&self, p: V3) -> P2 {
        let m = &self.0;
        P2::new(
            m[0][0] * p.x + m[0][1] * p.y + m[0][2] * p.z + m[0][3],
            m[1][0] * p.x + m[1][1] * p.y + m[1][2] * p.z + m[1][3],
        )
    }

    /// A direction seen from above (no translation).
    pub fn xy_vec(&self, v: V3) -> P2 {
        let m = &self.0;
        P2::new(
            m[0][0] * v.x + m[0][1] * v.y + m[0][2] * v.z,
            m[1][0] * v.x + m[1][1] * v.y + m[1][2] * v.z,
        )
    }
}

/// What the renderer draws, in world XY drawing units.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Prim {
    Line(P2, P2),
    Poly {
        points: Vec<P2>,
        closed: bool,
    },
    /// `c + u·cos t + v·sin t` for t from `t0` over `sweep` (signed). Circles,
    /// arcs, bulges and ellipses in any affine map, mirrors included.
    Arc {
        c: P2,
        u: P2,
        v: P2,
        t0: f64,
        sweep: f64,
    },
    /// Rings filled even-odd (SOLID, TRACE, solid HATCH); their outlines are
    /// separate primitives.
    Fill(Vec<Vec<P2>>),
}

impl Prim {
    pub fn is_finite(&self) -> bool {
        match self {
            Prim::Line(a, b) => a.is_finite() && b.is_finite(),
            Prim::Poly { points, .. } => points.iter().all(|p| p.is_finite()),
            Prim::Arc { c, u, v, t0, sweep } => {
                c.is_finite() && u.is_finite() && v.is_finite() && t0.is_finite() && sweep.is_finite()
            }
            Prim::Fill(rings) => rings.iter().flatten().all(|p| p.is_finite()),
        }
    }

    pub fn extend_bounds(&self, b: &mut Bounds) {
        match self {
            Prim::Line(p, q) => {
                b.add(*p);
                b.add(*q);
            }
            Prim::Poly { points, .. } => points.iter().for_each(|p| b.add(*p)),
            Prim::Fill(rings) => rings.iter().flatten().for_each(|p| b.add(*p)),
            Prim::Arc { c, u, v, t0, sweep } => {
                let (start, sweep) = if *sweep < 0.0 {
                    (t0 + sweep, -sweep)
                } else {
                    (*t0, *sweep)
                };
                let at = |t: f64| P2::new(c.x + u.x * t.cos() + v.x * t.sin(), c.y + u.y * t.cos() + v.y * t.sin());
                b.add(at(start));
                b.add(at(start + sweep));
                // x and y are extreme where their derivative is zero.
                for t in [v.x.atan2(u.x), v.y.atan2(u.y)] {
                    for t in [t, t + PI] {
                        if sweep >= TAU || (t - start).rem_euclid(TAU) <= sweep {
                            b.add(at(t));
                        }
                    }
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Bounds {
    pub min: P2,
    pub max: P2,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            min: P2::new(f64::INFINITY, f64::INFINITY),
            max: P2::new(f64::NEG_INFINITY, f64::NEG_INFINITY),
        }
    }
}

impl Bounds {
    pub fn add(&mut self, p: P2) {
        self.min.x = self.min.x.min(p.x);
        self.min.y = self.min.y.min(p.y);
        self.max.x = self.max.x.max(p.x);
        self.max.y = self.max.y.max(p.y);
    }

    pub fn is_empty(&self) -> bool {
        !(self.min.x <= self.max.x && self.min.y <= self.max.y)
    }

    pub fn width(&self) -> f64 {
        self.max.x - self.min.x
    }

    pub fn height(&self) -> f64 {
        self.max.y - self.min.y
    }
}

/// The arc from `a` to `b` whose bulge (tan of a quarter of the included
/// angle, positive counter-clockwise) is `bulge`: centre, radius, start angle
/// and signed sweep. `None` for a straight segment.
pub(crate) fn bulge_arc(a: (f64, f64), b: (f64, f64), bulge: f64) -> Option<((f64, f64), f64, f64, f64)> {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let chord = dx.hypot(dy);
    if !bulge.is_finite() || bulge.abs() < 1e-9 || chord < 1e-12 || !chord.is_finite() {
        return None;
    }
    let sweep = 4.0 * bulge.atan();
    let radius = chord / (2.0 * (sweep / 2.0).sin().abs());
    let offset = (chord / 2.0) / (sweep / 2.0).tan();
    let centre = (
        (a.0 + b.0) / 2.0 - dy / chord * offset,
        (a.1 + b.1) / 2.0 + dx / chord * offset,
    );
    let start = (a.1 - centre.1).atan2(a.0 - centre.0);
    Some((centre, radius, start, sweep))
}

/// Segments needed so a circular arc of `radius_px` deviates at most `tol` px
/// from its chords, between 1 and `max`.
pub(crate) fn arc_steps(radius_px: f64, sweep: f64, tol: f64, max: usize) -> usize {
    let sweep = sweep.abs().min(TAU);
    let step = if radius_px > tol {
        2.0 * (1.0 - tol / radius_px).acos()
    } else {
        PI / 2.0
    };
    let n = (sweep / step.max(1e-6)).ceil();
    if n.is_finite() {
        (n as usize).clamp(1, max.max(1))
    } else {
        1
    }
}

/// Points along a (rational) B-spline by de Boor's algorithm: `per_span`
/// samples per non-empty knot span. `None` when the data does not describe a
/// valid spline (the caller falls back to the control polygon).
pub(crate) fn bspline(
    ctrl: &[V3],
    weights: &[f64],
    knots: &[f64],
    degree: usize,
    per_span: usize,
    max_points: usize,
) -> Option<Vec<V3>> {
    let n = ctrl.len();
    if degree == 0 || n <= degree || knots.len() != n + degree + 1 {
        return None;
    }
    if knots.iter().any(|k| !k.is_finite()) || knots.windows(2).any(|w| w[1] < w[0]) {
        return None;
    }
    let rational = weights.len() == n && weights.iter().all(|w| w.is_finite() && *w > 0.0);
    let w = |i: usize| if rational { weights[i] } else { 1.0 };
    let (lo, hi) = (knots[degree], knots[n]);
    if hi <= lo {
        return None;
    }
    let spans = (degree..n).filter(|&i| knots[i + 1] > knots[i]).count();
    if spans.saturating_mul(per_span) + 1 > max_points {
        return None;
    }
    let mut out = Vec::with_capacity(spans * per_span + 1);
    let mut d = vec![[0.0; 4]; degree + 1];
    let mut eval = |span: usize, t: f64, out: &mut Vec<V3>| {
        for (j, dj) in d.iter_mut().enumerate() {
            let i = span - degree + j;
            let p = ctrl[i];
            let wi = w(i);
            *dj = [p.x * wi, p.y * wi, p.z * wi, wi];
        }
        for r in 1..=degree {
            for j in (r..=degree).rev() {
                let i = span - degree + j;
                let denom = knots[i + degree + 1 - r] - knots[i];
                let alpha = if denom > 0.0 { (t - knots[i]) / denom } else { 0.0 };
                let prev = d[j - 1];
                for (v, p) in d[j].iter_mut().zip(prev) {
                    *v = (1.0 - alpha) * p + alpha * *v;
                }
            }
        }
        let h = d[degree];
        if h[3].abs() > 1e-300 {
            out.push(V3::new(h[0] / h[3], h[1] / h[3], h[2] / h[3]));
        }
    };
    let mut last_span = degree;
    for span in (degree..n).filter(|&i| knots[i + 1] > knots[i]) {
        let (a, b) = (knots[span], knots[span + 1]);
        for s in 0..per_span {
            eval(span, a + (b - a) * s as f64 / per_span as f64, &mut out);
        }
        last_span = span;
    }
    eval(last_span, hi, &mut out);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn ocs_of_minus_z_mirrors_x() {
        let m = Mat::ocs(V3::new(0.0, 0.0, -1.0));
        let p = m.xy(V3::new(2.0, 3.0, 0.0));
        assert!(close(p.x, -2.0) && close(p.y, 3.0), "{p:?}");
        assert_eq!(Mat::ocs(V3::default()), Mat::IDENTITY);
    }

    #[test]
    fn composition_applies_inner_first() {
        let m = Mat::translate(V3::new(10.0, 0.0, 0.0)).then(&Mat::rotate_z(PI / 2.0));
        let p = m.xy(V3::new(1.0, 0.0, 0.0));
        assert!(close(p.x, 10.0) && close(p.y, 1.0), "{p:?}");
    }

    #[test]
    fn positive_bulge_turns_counter_clockwise() {
        let ((cx, cy), r, start, sweep) = bulge_arc((0.0, 0.0), (2.0, 0.0), 1.0).unwrap();
        assert!(close(cx, 1.0) && close(cy, 0.0) && close(r, 1.0));
        assert!(close(sweep, PI));
        // Halfway along, the arc is below the chord.
        let mid = start + sweep / 2.0;
        assert!(close(cy + r * mid.sin(), -1.0));
        assert!(bulge_arc((0.0, 0.0), (2.0, 0.0), 0.0).is_none());
    }

    #[test]
    fn arc_bounds_use_extremes_inside_the_sweep() {
        let mut b = Bounds::default();
        let arc = Prim::Arc {
            c: P2::new(0.0, 0.0),
            u: P2::new(1.0, 0.0),
            v: P2::new(0.0, 1.0),
            t0: 0.0,
            sweep: PI,
        };
        arc.extend_bounds(&mut b);
        assert!(close(b.min.x, -1.0) && close(b.max.x, 1.0) && close(b.max.y, 1.0) && close(b.min.y, 0.0));
    }

    #[test]
    fn clamped_bspline_passes_through_its_end_points() {
        let ctrl = [V3::new(0.0, 0.0, 0.0), V3::new(1.0, 2.0, 0.0), V3::new(2.0, 0.0, 0.0)];
        let knots = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let pts = bspline(&ctrl, &[], &knots, 2, 8, 100).unwrap();
        assert_eq!(pts.len(), 9);
        assert!(close(pts[0].x, 0.0) && close(pts[8].x, 2.0) && close(pts[8].y, 0.0));
        // Quadratic Bézier midpoint: (1, 1).
        assert!(close(pts[4].x, 1.0) && close(pts[4].y, 1.0));
        assert!(bspline(&ctrl, &[], &knots[..5], 2, 8, 100).is_none());
    }
}
