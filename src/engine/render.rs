//! DXF → raster, our own renderer: the drawing's model space, seen from
//! above, fitted into a square canvas with black lines (0) on white (255).
//! Pure and bounded like the rest of the engine: bytes and options in, an
//! image or an error out; limits in [`RenderOptions`] stop hostile files.
//!
//! Parsing is the `dxf` crate's (ASCII and binary, R12–R2018), except HATCH,
//! which it skips and the `raw` submodule reads. Files it rejects because of
//! pairs between sections (dxflib 2.0's early `ENDSEC`) are retried without
//! them. Beware: at a malformed value inside an entity the crate silently
//! stops reading that section, so such a file renders what came before it.
//! What is drawn:
//!
//! - LINE, ARC, CIRCLE, ELLIPSE (partial too), LWPOLYLINE and POLYLINE with
//!   bulges and the closed flag (3-D polylines, polygon and polyface meshes as
//!   wires; spline-fit polylines without their frame), SPLINE (de Boor on the
//!   control points; fit points, then the control polygon, when the knots are
//!   unusable), LEADER and 3DFACE as lines;
//! - INSERT with its base point, position, X/Y/Z scale (negative = mirror),
//!   rotation, extrusion and column/row arrays, nested to
//!   [`RenderOptions::max_block_depth`]; a block that contains itself is
//!   drawn without the recursive reference; DIMENSION as its `*D…` block;
//!   visible ATTRIBs as text;
//! - HATCH boundary paths as outlines, SOLID and TRACE as outlines; with
//!   [`RenderOptions::fill`] solid-fill HATCHes, SOLIDs and TRACEs are filled
//!   as well, as CAD programs (and ezdxf) show them;
//! - TEXT, MTEXT, ATTRIB: no fonts; one outlined box per text line, as high
//!   as the text and [`CHAR_WIDTH`] × height per character wide, placed by
//!   the justification or attachment point and rotation;
//! - OCS (extrusion) everywhere it applies; entities that are invisible, in
//!   paper space or on a layer that is off are skipped, block entities on
//!   layer 0 taking their INSERT's layer. POINT, RAY, XLINE, IMAGE, WIPEOUT,
//!   ACIS bodies and unknown entities are skipped; so are linetypes (all
//!   lines are continuous) and line weights.

mod geom;
mod raster;
mod raw;

use std::borrow::Cow;
use std::collections::HashMap;
use std::f64::consts::TAU;

use dxf::entities::{Entity, EntityType};
use dxf::enums::{AttachmentPoint, HorizontalTextJustification as HJust, VerticalTextJustification as VJust};
use image::GrayImage;

use self::geom::{Bounds, Mat, P2, Prim, V3};

/// Width of one character as a fraction of the text height, for text boxes.
pub const CHAR_WIDTH: f64 = 0.8;
/// MTEXT line pitch as a fraction of the text height (AutoCAD's default).
const LINE_PITCH: f64 = 5.0 / 3.0;
/// Canvas sizes are clamped to this range.
const SIZES: std::ops::RangeInclusive<u32> = 8..=8192;
/// Samples per knot span of a SPLINE.
const SPLINE_STEPS: usize = 16;
/// Steps per full turn when curves are flattened in drawing units (filled
/// regions and the canonical hash), where the canvas scale does not apply.
const TURN_STEPS: f64 = 256.0;
const HASH_TURN_STEPS: f64 = 64.0;
/// Canonical-hash coordinates are multiples of this fraction of the extent,
/// rounded with a phase of 1/π so round coordinates (which CAD files are
/// full of) never sit on a rounding tie where float noise would flip them.
const HASH_QUANTUM: f64 = 1e-6;
const HASH_PHASE: f64 = std::f64::consts::FRAC_1_PI;

#[derive(Debug, Clone, PartialEq)]
pub struct RenderOptions {
    /// Canvas side in pixels, clamped to 8..=8192 (64 MB).
    pub size: u32,
    /// Blank border on each side, as a fraction of `size`.
    pub margin: f64,
    /// Line width in pixels. The default is 1: it is what the reference
    /// renders (ezdxf, 1 px at 1000²) use, it keeps hatching, text boxes and
    /// small symbols apart at 512², and the later downsampling to the hash
    /// size averages it anyway; thicker lines are a query transform the
    /// matcher must absorb, not something to bake into the library.
    pub line_width: u32,
    /// Fill solid HATCHes, SOLIDs and TRACEs (their outlines are always drawn).
    pub fill: bool,
    /// Largest distance in pixels between a curve and its chords.
    pub tolerance_px: f64,
    /// Entities drawn, counting every INSERT instance and every entity of
    /// every block it expands to.
    pub max_entities: usize,
    /// Deepest INSERT/DIMENSION nesting.
    pub max_block_depth: usize,
    /// Vertices of one polyline, spline or hatch path, and segments one curve
    /// is flattened to.
    pub max_segments_per_curve: usize,
    /// Points stored plus segments drawn for the whole drawing.
    pub max_segments: usize,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            size: 512,
            margin: 0.02,
            line_width: 1,
            fill: true,
            tolerance_px: 0.25,
            max_entities: 500_000,
            max_block_depth: 16,
            max_segments_per_curve: 100_000,
            max_segments: 4_000_000,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    #[error("the DXF has no drawable geometry in model space")]
    Empty,
    #[error("the DXF is too complex to render: {0}")]
    TooComplex(String),
    #[error("cannot read the DXF: {0}")]
    Unreadable(String),
}

/// Parses `bytes` (ASCII or binary DXF) and renders model space.
pub fn render_dxf(bytes: &[u8], options: &RenderOptions) -> Result<GrayImage, RenderError> {
    load_geometry(bytes, options)?.render(options)
}

/// sha256 (hex) of the drawing's flattened geometry, independent of DXF
/// version, ASCII/binary, handles, layers, colours and entity order: see
/// [`Geometry::canonical_hash`].
pub fn canonical_geometry_hash(bytes: &[u8], options: &RenderOptions) -> Result<String, RenderError> {
    Ok(load_geometry(bytes, options)?.canonical_hash())
}

/// A drawing's model space, blocks expanded, in world XY drawing units.
#[derive(Debug, Clone)]
pub struct Geometry {
    prims: Vec<Prim>,
    texts: Vec<TextMark>,
    bounds: Bounds,
}

#[derive(Debug, Clone, PartialEq)]
struct TextMark {
    at: P2,
    height: f64,
    text: String,
}

/// Parses `bytes` and collects model space within the options' limits.
pub fn load_geometry(bytes: &[u8], options: &RenderOptions) -> Result<Geometry, RenderError> {
    let drawing = parse(bytes)?;
    let max_pairs = options.max_segments_per_curve.saturating_mul(8).saturating_add(10_000);
    let hatches = raw::hatches(bytes, options.max_entities, max_pairs).map_err(|e| RenderError::TooComplex(e.0))?;
    let mut collector = Collector::new(&drawing, &hatches, options);
    for entity in drawing.entities() {
        if !entity.common.is_in_paper_space {
            collector.entity(entity, &Mat::IDENTITY, 0, None)?;
        }
    }
    for hatch in hatches.model.iter().filter(|h| !h.in_paper_space) {
        collector.hatch(hatch, &Mat::IDENTITY, None)?;
    }
    collector.finish()
}

fn parse(bytes: &[u8]) -> Result<dxf::Drawing, RenderError> {
    // The parser is third-party code fed untrusted bytes: a panic in it is
    // an unreadable file, not a crashed worker.
    let load = |b: &[u8]| std::panic::catch_unwind(|| dxf::Drawing::load(&mut std::io::Cursor::new(b)));
    let first = match load(bytes) {
        Ok(Ok(drawing)) => return Ok(drawing),
        other => other,
    };
    if let Some(repaired) = raw::without_stray_pairs(bytes)
        && let Ok(Ok(drawing)) = load(&repaired)
    {
        return Ok(drawing);
    }
    Err(RenderError::Unreadable(match first {
        Ok(Err(e)) => e.to_string(),
        _ => "the DXF parser failed on this file".into(),
    }))
}

impl Geometry {
    /// World extents as (min x, min y, max x, max y) in drawing units.
    pub fn extents(&self) -> (f64, f64, f64, f64) {
        let b = &self.bounds;
        (b.min.x, b.min.y, b.max.x, b.max.y)
    }

    /// Draws the geometry fitted into a `size`² canvas with a margin,
    /// aspect ratio kept, centred; DXF y points up, image rows go down.
    pub fn render(&self, options: &RenderOptions) -> Result<GrayImage, RenderError> {
        let size = options.size.clamp(*SIZES.start(), *SIZES.end());
        let side = f64::from(size);
        let margin = if options.margin.is_finite() {
            options.margin.clamp(0.0, 0.45)
        } else {
            0.0
        };
        let inner = (side * (1.0 - 2.0 * margin)).max(1.0);
        let extent = self.bounds.width().max(self.bounds.height());
        let scale = inner / extent;
        let (cx, cy) = (
            (self.bounds.min.x + self.bounds.max.x) / 2.0,
            (self.bounds.min.y + self.bounds.max.y) / 2.0,
        );
        // The centre of the drawing goes to the centre of a pixel, not to a
        // pixel boundary where float noise (a re-save rounding 10 to
        // 9.99999999999999) would move a symmetric drawing's axis by a pixel.
        let half = side / 2.0 + 0.5;
        let px = |p: P2| (half + (p.x - cx) * scale, half - (p.y - cy) * scale);
        let tolerance = if options.tolerance_px > 0.01 {
            options.tolerance_px
        } else {
            0.01
        };
        let per_curve = options.max_segments_per_curve.max(1);
        let mut canvas = raster::Canvas::new(size, options.line_width.clamp(1, size));
        let mut budget = Budget::new(options.max_segments);
        let mut points: Vec<(f64, f64)> = Vec::new();
        for prim in &self.prims {
            points.clear();
            match prim {
                Prim::Line(a, b) => {
                    points.push(px(*a));
                    points.push(px(*b));
                }
                Prim::Poly { points: pts, closed } => {
                    points.extend(pts.iter().map(|p| px(*p)));
                    if *closed && pts.len() > 2 {
                        points.push(px(pts[0]));
                    }
                }
                Prim::Arc { c, u, v, t0, sweep } => {
                    let radius = u.length().max(v.length()) * scale;
                    let steps = geom::arc_steps(radius, *sweep, tolerance, per_curve);
                    points.extend(arc_points(*c, *u, *v, *t0, *sweep, steps).map(px));
                }
                Prim::Fill(rings) => {
                    if options.fill {
                        let rings: Vec<Vec<(f64, f64)>> =
                            rings.iter().map(|r| r.iter().map(|p| px(*p)).collect()).collect();
                        budget.spend(rings.iter().map(Vec::len).sum())?;
                        canvas.fill(&rings);
                    }
                    continue;
                }
            }
            budget.spend(points.len())?;
            for w in points.windows(2) {
                canvas.line(w[0].0, w[0].1, w[1].0, w[1].1);
            }
        }
        Ok(canvas.into_image())
    }

    /// sha256 (hex) of the sorted, de-duplicated segments of the flattened
    /// outlines (curves at fixed angular steps), endpoints quantised to
    /// 1e-6 of the extent relative to the lower-left corner, plus the width
    /// and height (6 significant digits) and the text strings with their
    /// quantised anchors. The same geometry in another DXF version, in
    /// binary, with other handles, layers, colours or entity order, or moved
    /// as a whole, hashes the same; scaled, it does not.
    pub fn canonical_hash(&self) -> String {
        let b = self.bounds;
        let extent = b.width().max(b.height());
        let q = |v: f64| (v / extent / HASH_QUANTUM + HASH_PHASE).floor() as i64;
        let key = |p: P2| (q(p.x - b.min.x), q(p.y - b.min.y));
        let mut segments: Vec<[i64; 4]> = Vec::new();
        let mut add = |points: &mut dyn Iterator<Item = P2>| {
            let mut prev: Option<(i64, i64)> = None;
            for p in points {
                let k = key(p);
                if let Some(a) = prev
                    && a != k
                {
                    let (s, e) = if a <= k { (a, k) } else { (k, a) };
                    segments.push([s.0, s.1, e.0, e.1]);
                }
                prev = Some(k);
            }
        };
        for prim in &self.prims {
            match prim {
                Prim::Line(a, c) => add(&mut [*a, *c].into_iter()),
                Prim::Poly { points, closed } => {
                    let close = (*closed && points.len() > 2).then(|| points[0]);
                    add(&mut points.iter().copied().chain(close));
                }
                Prim::Arc { c, u, v, t0, sweep } => {
                    let steps = ((sweep.abs() / TAU * HASH_TURN_STEPS).ceil() as usize).max(1);
                    add(&mut arc_points(*c, *u, *v, *t0, *sweep, steps));
                }
                Prim::Fill(_) => {}
            }
        }
        segments.sort_unstable();
        segments.dedup();
        let mut texts: Vec<(i64, i64, i64, &str)> = self
            .texts
            .iter()
            .map(|t| {
                let (x, y) = key(t.at);
                (x, y, q(t.height), t.text.as_str())
            })
            .collect();
        texts.sort_unstable();
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"dedup2d dxf geometry v1\n");
        ctx.update(format!("{:.5e} {:.5e}\n", b.width(), b.height()).as_bytes());
        for s in &segments {
            for v in s {
                ctx.update(&v.to_le_bytes());
            }
        }
        ctx.update(b"\ntexts\n");
        for (x, y, h, text) in texts {
            for v in [x, y, h] {
                ctx.update(&v.to_le_bytes());
            }
            ctx.update(text.as_bytes());
            ctx.update(b"\0");
        }
        super::hex(ctx.finish().as_ref())
    }
}

fn arc_points(c: P2, u: P2, v: P2, t0: f64, sweep: f64, steps: usize) -> impl Iterator<Item = P2> {
    (0..=steps).map(move |i| {
        let (s, k) = (t0 + sweep * i as f64 / steps as f64).sin_cos();
        P2::new(c.x + u.x * k + v.x * s, c.y + u.y * k + v.y * s)
    })
}

struct Budget {
    left: usize,
    max: usize,
}

impl Budget {
    fn new(max: usize) -> Budget {
        Budget { left: max, max }
    }

    fn spend(&mut self, n: usize) -> Result<(), RenderError> {
        self.left = self
            .left
            .checked_sub(n)
            .ok_or_else(|| RenderError::TooComplex(format!("more than {} segments and points", self.max)))?;
        Ok(())
    }
}

/// How a text block sits around its anchor, in text units (x along the
/// baseline, y up).
struct TextLayout {
    height: f64,
    char_width: f64,
    /// 0 left-aligned, 0.5 centred, 1 right-aligned.
    align: f64,
    /// y of the top of the first line.
    top: f64,
    pitch: f64,
}

/// Walks model space and the blocks it references, building primitives.
struct Collector<'a> {
    options: &'a RenderOptions,
    blocks: HashMap<String, &'a dxf::Block>,
    hatches: &'a raw::Hatches,
    layers_off: Vec<String>,
    text_height: f64,
    entities: usize,
    budget: Budget,
    /// Upper-cased names of the blocks being expanded.
    stack: Vec<String>,
    prims: Vec<Prim>,
    texts: Vec<TextMark>,
}

impl<'a> Collector<'a> {
    fn new(drawing: &'a dxf::Drawing, hatches: &'a raw::Hatches, options: &'a RenderOptions) -> Collector<'a> {
        let mut blocks = HashMap::new();
        for block in drawing.blocks() {
            blocks.entry(block.name.to_uppercase()).or_insert(block);
        }
        let text_height = drawing.header.default_text_height;
        Collector {
            options,
            blocks,
            hatches,
            layers_off: drawing
                .layers()
                .filter(|l| !l.is_layer_on)
                .map(|l| l.name.clone())
                .collect(),
            text_height: if text_height > 0.0 && text_height.is_finite() {
                text_height
            } else {
                2.5
            },
            entities: 0,
            budget: Budget::new(options.max_segments),
            stack: Vec::new(),
            prims: Vec::new(),
            texts: Vec::new(),
        }
    }

    fn finish(self) -> Result<Geometry, RenderError> {
        let mut bounds = Bounds::default();
        for prim in &self.prims {
            prim.extend_bounds(&mut bounds);
        }
        if bounds.is_empty() || (bounds.width() <= 0.0 && bounds.height() <= 0.0) {
            return Err(RenderError::Empty);
        }
        if !(bounds.width().is_finite() && bounds.height().is_finite()) {
            return Err(RenderError::Unreadable("coordinates out of range".into()));
        }
        Ok(Geometry {
            prims: self.prims,
            texts: self.texts,
            bounds,
        })
    }

    fn count(&mut self) -> Result<(), RenderError> {
        self.entities += 1;
        if self.entities > self.options.max_entities {
            return Err(RenderError::TooComplex(format!(
                "more than {} entities, counting those inside block references",
                self.options.max_entities
            )));
        }
        Ok(())
    }

    fn curve_size(&self, n: usize, what: &str) -> Result<(), RenderError> {
        if n > self.options.max_segments_per_curve {
            return Err(RenderError::TooComplex(format!(
                "a {what} with {n} vertices, more than {}",
                self.options.max_segments_per_curve
            )));
        }
        Ok(())
    }

    fn layer_on(&self, layer: &str) -> bool {
        !self.layers_off.iter().any(|off| off.eq_ignore_ascii_case(layer))
    }

    fn push(&mut self, prim: Prim) -> Result<(), RenderError> {
        if !prim.is_finite() {
            return Ok(());
        }
        self.budget.spend(match &prim {
            Prim::Line(..) | Prim::Arc { .. } => 2,
            Prim::Poly { points, .. } => points.len(),
            Prim::Fill(rings) => rings.iter().map(Vec::len).sum(),
        })?;
        self.prims.push(prim);
        Ok(())
    }

    fn line(&mut self, a: P2, b: P2) -> Result<(), RenderError> {
        self.push(Prim::Line(a, b))
    }

    fn poly(&mut self, points: Vec<P2>, closed: bool) -> Result<(), RenderError> {
        match points.len() {
            0 | 1 => Ok(()),
            2 => self.line(points[0], points[1]),
            _ => self.push(Prim::Poly { points, closed }),
        }
    }

    /// A circular arc of the (local) XY plane of `local`, at height `z`.
    fn arc(&mut self, local: &Mat, centre: V3, radius: f64, start: f64, sweep: f64) -> Result<(), RenderError> {
        if radius.abs() <= 0.0 {
            return Ok(());
        }
        self.push(Prim::Arc {
            c: local.xy(centre),
            u: local.xy_vec(V3::new(radius, 0.0, 0.0)),
            v: local.xy_vec(V3::new(0.0, radius, 0.0)),
            t0: start,
            sweep,
        })
    }

    fn entity(&mut self, e: &'a Entity, m: &Mat, depth: usize, inherited: Option<&'a str>) -> Result<(), RenderError> {
        self.count()?;
        let layer: &'a str = match inherited {
            Some(parent) if e.common.layer == "0" => parent,
            _ => &e.common.layer,
        };
        if !e.common.is_visible || !self.layer_on(layer) {
            return Ok(());
        }
        match &e.specific {
            EntityType::Line(l) => self.line(m.xy(V3::from_point(&l.p1)), m.xy(V3::from_point(&l.p2)))?,
            EntityType::Circle(c) => {
                let local = m.then(&Mat::ocs(V3::from_vector(&c.normal)));
                self.arc(&local, V3::from_point(&c.center), c.radius, 0.0, TAU)?;
            }
            EntityType::Arc(a) => {
                let local = m.then(&Mat::ocs(V3::from_vector(&a.normal)));
                let mut sweep = (a.end_angle - a.start_angle).rem_euclid(360.0);
                if sweep < 1e-9 {
                    sweep = 360.0;
                }
                self.arc(
                    &local,
                    V3::from_point(&a.center),
                    a.radius,
                    a.start_angle.to_radians(),
                    sweep.to_radians(),
                )?;
            }
            EntityType::Ellipse(el) => {
                let major = V3::from_vector(&el.major_axis);
                let normal = V3::from_vector(&el.normal)
                    .normalized()
                    .unwrap_or(V3::new(0.0, 0.0, 1.0));
                let minor = normal.cross(major).scaled(el.minor_axis_ratio);
                let mut sweep = (el.end_parameter - el.start_parameter).rem_euclid(TAU);
                if sweep < 1e-9 {
                    sweep = TAU;
                }
                if major.length() > 0.0 {
                    self.push(Prim::Arc {
                        c: m.xy(V3::from_point(&el.center)),
                        u: m.xy_vec(major),
                        v: m.xy_vec(minor),
                        t0: el.start_parameter,
                        sweep,
                    })?;
                }
            }
            EntityType::LwPolyline(p) => {
                self.curve_size(p.vertices.len(), "LWPOLYLINE")?;
                let local = m.then(&Mat::ocs(V3::from_vector(&p.extrusion_direction)));
                let vertices: Vec<[f64; 3]> = p.vertices.iter().map(|v| [v.x, v.y, v.bulge]).collect();
                self.bulged(&local, &vertices, p.is_closed(), e.common.elevation)?;
            }
            EntityType::Polyline(p) => self.polyline(p, m)?,
            EntityType::Spline(s) => self.spline(s, m)?,
            EntityType::Insert(i) => self.insert(i, m, depth, layer)?,
            EntityType::Text(t) => {
                let local = m.then(&Mat::ocs(V3::from_vector(&t.normal)));
                let text = Placed {
                    value: &t.value,
                    location: &t.location,
                    second: &t.second_alignment_point,
                    height: t.text_height,
                    rotation: t.rotation,
                    x_scale: t.relative_x_scale_factor,
                    flags: t.text_generation_flags,
                    horizontal: t.horizontal_text_justification,
                    vertical: t.vertical_text_justification,
                };
                self.placed_text(&local, &text)?;
            }
            EntityType::MText(t) => self.mtext(t, m)?,
            EntityType::Solid(s) => {
                let corners = [&s.first_corner, &s.second_corner, &s.fourth_corner, &s.third_corner];
                self.quad(m, &s.extrusion_direction, corners)?;
            }
            EntityType::Trace(s) => {
                let corners = [&s.first_corner, &s.second_corner, &s.fourth_corner, &s.third_corner];
                self.quad(m, &s.extrusion_direction, corners)?;
            }
            EntityType::Face3D(f) => {
                let c = [&f.first_corner, &f.second_corner, &f.third_corner, &f.fourth_corner]
                    .map(|p| m.xy(V3::from_point(p)));
                for i in 0..4 {
                    if f.edge_flags & (1 << i) == 0 && c[i] != c[(i + 1) % 4] {
                        self.line(c[i], c[(i + 1) % 4])?;
                    }
                }
            }
            EntityType::Leader(l) => {
                self.curve_size(l.vertices.len(), "LEADER")?;
                self.poly(l.vertices.iter().map(|p| m.xy(V3::from_point(p))).collect(), false)?;
            }
            EntityType::RotatedDimension(d) => self.dimension(&d.dimension_base, m, depth, layer)?,
            EntityType::RadialDimension(d) => self.dimension(&d.dimension_base, m, depth, layer)?,
            EntityType::DiameterDimension(d) => self.dimension(&d.dimension_base, m, depth, layer)?,
            EntityType::AngularThreePointDimension(d) => self.dimension(&d.dimension_base, m, depth, layer)?,
            EntityType::OrdinateDimension(d) => self.dimension(&d.dimension_base, m, depth, layer)?,
            _ => {}
        }
        Ok(())
    }

    /// Vertices (x, y, bulge) in the XY plane of `local` at height `z`.
    fn bulged(&mut self, local: &Mat, vertices: &[[f64; 3]], closed: bool, z: f64) -> Result<(), RenderError> {
        let n = vertices.len();
        if n < 2 {
            return Ok(());
        }
        let at = |v: [f64; 3]| local.xy(V3::new(v[0], v[1], z));
        let mut run = vec![at(vertices[0])];
        let segments = if closed { n } else { n - 1 };
        for i in 0..segments {
            let (a, b) = (vertices[i], vertices[(i + 1) % n]);
            if let Some(((cx, cy), r, start, sweep)) = geom::bulge_arc((a[0], a[1]), (b[0], b[1]), a[2]) {
                self.poly(std::mem::take(&mut run), false)?;
                self.arc(local, V3::new(cx, cy, z), r, start, sweep)?;
            }
            run.push(at(b));
        }
        self.poly(run, false)
    }

    fn polyline(&mut self, p: &'a dxf::entities::Polyline, m: &Mat) -> Result<(), RenderError> {
        let vertices: Vec<&dxf::entities::Vertex> = p.vertices().collect();
        self.curve_size(vertices.len(), "POLYLINE")?;
        let world = |v: &dxf::entities::Vertex| m.xy(V3::from_point(&v.location));
        if p.flags & 64 != 0 {
            // Polyface mesh: positions, then faces of 1-based indices, a
            // negative index hiding the edge that starts there.
            let positions: Vec<P2> = vertices
                .iter()
                .filter(|v| v.flags & 64 != 0)
                .map(|v| world(v))
                .collect();
            for face in vertices.iter().filter(|v| v.flags & 64 == 0 && v.flags & 128 != 0) {
                let idx: Vec<i32> = [
                    face.polyface_mesh_vertex_index1,
                    face.polyface_mesh_vertex_index2,
                    face.polyface_mesh_vertex_index3,
                    face.polyface_mesh_vertex_index4,
                ]
                .into_iter()
                .filter(|&i| i != 0)
                .collect();
                for k in 0..idx.len() {
                    let (from, to) = (idx[k], idx[(k + 1) % idx.len()]);
                    let get = |i: i32| positions.get(i.unsigned_abs() as usize - 1).copied();
                    if from > 0
                        && let (Some(a), Some(b)) = (get(from), get(to))
                        && a != b
                    {
                        self.line(a, b)?;
                    }
                }
            }
            return Ok(());
        }
        if p.flags & 16 != 0 {
            let (rows, cols) = (
                p.polygon_mesh_m_vertex_count.max(0) as usize,
                p.polygon_mesh_n_vertex_count.max(0) as usize,
            );
            if rows > 0 && cols > 0 && rows.checked_mul(cols) == Some(vertices.len()) {
                let at = |r: usize, c: usize| world(vertices[r * cols + c]);
                for r in 0..rows {
                    self.poly((0..cols).map(|c| at(r, c)).collect(), p.flags & 32 != 0)?;
                }
                for c in 0..cols {
                    self.poly((0..rows).map(|r| at(r, c)).collect(), p.flags & 1 != 0)?;
                }
                return Ok(());
            }
        }
        // The spline frame (flag 16) of a spline-fit polyline is not drawn.
        let drawn = vertices.iter().filter(|v| v.flags & 16 == 0);
        if p.flags & (8 | 16) != 0 {
            return self.poly(drawn.map(|v| world(v)).collect(), p.flags & 1 != 0);
        }
        let local = m.then(&Mat::ocs(V3::from_vector(&p.normal)));
        let points: Vec<[f64; 3]> = drawn.map(|v| [v.location.x, v.location.y, v.bulge]).collect();
        self.bulged(&local, &points, p.flags & 1 != 0, p.location.z)
    }

    fn spline(&mut self, s: &'a dxf::entities::Spline, m: &Mat) -> Result<(), RenderError> {
        let per_curve = self.options.max_segments_per_curve;
        self.curve_size(s.control_points.len().max(s.fit_points.len()), "SPLINE")?;
        let control: Vec<V3> = s.control_points.iter().map(V3::from_point).collect();
        let degree = usize::try_from(s.degree_of_curve).unwrap_or(3).clamp(1, 25);
        let points = geom::bspline(
            &control,
            &s.weight_values,
            &s.knot_values,
            degree,
            SPLINE_STEPS,
            per_curve,
        )
        .map(|pts| (pts, false))
        .or_else(|| {
            let closed = s.flags & 1 != 0;
            if s.fit_points.len() >= 2 {
                Some((s.fit_points.iter().map(V3::from_point).collect(), closed))
            } else {
                (control.len() >= 2).then(|| (control.clone(), closed))
            }
        });
        match points {
            Some((pts, closed)) => self.poly(pts.into_iter().map(|p| m.xy(p)).collect(), closed),
            None => Ok(()),
        }
    }

    /// Corners in drawing order (SOLID's third and fourth already swapped).
    fn quad(&mut self, m: &Mat, extrusion: &dxf::Vector, corners: [&dxf::Point; 4]) -> Result<(), RenderError> {
        let local = m.then(&Mat::ocs(V3::from_vector(extrusion)));
        let mut ring: Vec<P2> = Vec::with_capacity(4);
        for p in corners.map(|p| local.xy(V3::from_point(p))) {
            if ring.last() != Some(&p) && !(ring.len() == 3 && ring[0] == p) {
                ring.push(p);
            }
        }
        if ring.len() >= 3 {
            self.push(Prim::Fill(vec![ring.clone()]))?;
        }
        self.poly(ring, true)
    }

    fn insert(
        &mut self,
        i: &'a dxf::entities::Insert,
        m: &Mat,
        depth: usize,
        layer: &'a str,
    ) -> Result<(), RenderError> {
        for attribute in i.attributes() {
            self.count()?;
            if attribute.flags & 1 != 0 || !self.layer_on(layer) {
                continue;
            }
            let local = m.then(&Mat::ocs(V3::from_vector(&attribute.normal)));
            let text = Placed {
                value: &attribute.value,
                location: &attribute.location,
                second: &attribute.second_alignment_point,
                height: attribute.text_height,
                rotation: attribute.rotation,
                x_scale: attribute.relative_x_scale_factor,
                flags: attribute.text_generation_flags,
                horizontal: attribute.horizontal_text_justification,
                vertical: attribute.vertical_text_justification,
            };
            self.placed_text(&local, &text)?;
        }
        let key = i.name.to_uppercase();
        let Some(block) = self.blocks.get(&key).copied() else {
            return Ok(());
        };
        let placement = m
            .then(&Mat::ocs(V3::from_vector(&i.extrusion_direction)))
            .then(&Mat::translate(V3::from_point(&i.location)))
            .then(&Mat::rotate_z(i.rotation.to_radians()));
        let scale = Mat::scale(i.x_scale_factor, i.y_scale_factor, i.z_scale_factor)
            .then(&Mat::translate(V3::from_point(&block.base_point).scaled(-1.0)));
        let (rows, cols) = (i.row_count.max(1), i.column_count.max(1));
        for r in 0..rows {
            for c in 0..cols {
                let offset = V3::new(f64::from(c) * i.column_spacing, f64::from(r) * i.row_spacing, 0.0);
                let instance = placement.then(&Mat::translate(offset)).then(&scale);
                self.block(&key, block, &instance, depth, layer)?;
            }
        }
        Ok(())
    }

    fn dimension(
        &mut self,
        d: &'a dxf::entities::DimensionBase,
        m: &Mat,
        depth: usize,
        layer: &'a str,
    ) -> Result<(), RenderError> {
        let key = d.block_name.to_uppercase();
        match self.blocks.get(&key).copied() {
            Some(block) => self.block(&key, block, m, depth, layer),
            None => Ok(()),
        }
    }

    /// One instance of a block; `depth` is that of the referencing entity.
    fn block(
        &mut self,
        key: &str,
        block: &'a dxf::Block,
        m: &Mat,
        depth: usize,
        layer: &'a str,
    ) -> Result<(), RenderError> {
        self.count()?;
        if self.stack.iter().any(|k| k == key) {
            return Ok(()); // a block inside itself: drawn once, not forever
        }
        if depth + 1 > self.options.max_block_depth {
            return Err(RenderError::TooComplex(format!(
                "blocks nested deeper than {}",
                self.options.max_block_depth
            )));
        }
        self.stack.push(key.to_owned());
        for e in &block.entities {
            self.entity(e, m, depth + 1, Some(layer))?;
        }
        let hatches: &'a raw::Hatches = self.hatches;
        for h in hatches.blocks.get(key).into_iter().flatten() {
            self.hatch(h, m, Some(layer))?;
        }
        self.stack.pop();
        Ok(())
    }

    fn hatch(&mut self, h: &'a raw::Hatch, m: &Mat, inherited: Option<&'a str>) -> Result<(), RenderError> {
        self.count()?;
        let layer = match inherited {
            Some(parent) if h.layer == "0" => parent,
            _ => &h.layer,
        };
        if !h.visible || !self.layer_on(layer) {
            return Ok(());
        }
        let [ex, ey, ez] = h.extrusion;
        let local = m.then(&Mat::ocs(V3::new(ex, ey, ez)));
        let z = h.elevation;
        let at = |x: f64, y: f64| local.xy(V3::new(x, y, z));
        let mut rings = Vec::new();
        for path in &h.paths {
            let first = self.prims.len();
            for edge in path {
                match edge {
                    raw::Edge::Line(a, b) => self.line(at(a[0], a[1]), at(b[0], b[1]))?,
                    raw::Edge::Polyline { vertices, closed } => {
                        self.curve_size(vertices.len(), "HATCH path")?;
                        self.bulged(&local, vertices, *closed, z)?;
                    }
                    raw::Edge::Arc {
                        centre,
                        radius,
                        start,
                        end,
                    } => {
                        let sweep = ccw_sweep(*start, *end);
                        let centre = V3::new(centre[0], centre[1], z);
                        self.arc(&local, centre, *radius, start.to_radians(), sweep.to_radians())?;
                    }
                    raw::Edge::Ellipse {
                        centre,
                        major,
                        ratio,
                        start,
                        end,
                    } => {
                        // Angles on the ellipse → parameters.
                        let param = |deg: f64| {
                            let a = deg.to_radians();
                            (a.sin() / ratio).atan2(a.cos())
                        };
                        let (t0, t1) = (param(*start), param(*end));
                        let mut sweep = (t1 - t0).rem_euclid(TAU);
                        if sweep < 1e-9 {
                            sweep = TAU;
                        }
                        let u = V3::new(major[0], major[1], 0.0);
                        let v = V3::new(-major[1] * ratio, major[0] * ratio, 0.0);
                        self.push(Prim::Arc {
                            c: at(centre[0], centre[1]),
                            u: local.xy_vec(u),
                            v: local.xy_vec(v),
                            t0,
                            sweep,
                        })?;
                    }
                    raw::Edge::Spline {
                        degree,
                        knots,
                        control,
                        weights,
                        fit,
                    } => {
                        self.curve_size(control.len().max(fit.len()), "HATCH spline")?;
                        let ctrl: Vec<V3> = control.iter().map(|p| V3::new(p[0], p[1], z)).collect();
                        let per_curve = self.options.max_segments_per_curve;
                        let degree = (*degree).clamp(1, 25);
                        let pts = geom::bspline(&ctrl, weights, knots, degree, SPLINE_STEPS, per_curve)
                            .or_else(|| (fit.len() >= 2).then(|| fit.iter().map(|p| V3::new(p[0], p[1], z)).collect()))
                            .unwrap_or(ctrl);
                        self.poly(pts.into_iter().map(|p| local.xy(p)).collect(), false)?;
                    }
                }
            }
            if h.solid {
                let ring: Vec<P2> = self.prims[first..].iter().flat_map(fixed_points).collect();
                if ring.len() >= 3 {
                    rings.push(ring);
                }
            }
        }
        if !rings.is_empty() {
            self.push(Prim::Fill(rings))?;
        }
        Ok(())
    }

    fn mtext(&mut self, t: &'a dxf::entities::MText, m: &Mat) -> Result<(), RenderError> {
        let height = if t.initial_text_height > 0.0 {
            t.initial_text_height
        } else {
            self.text_height
        };
        let mut raw = t.extended_text.concat();
        raw.push_str(&t.text);
        let plain = mtext_plain(&utf8_text(&raw));
        let char_width = CHAR_WIDTH * height;
        let wrap = if t.reference_rectangle_width > 0.0 {
            ((t.reference_rectangle_width / char_width).floor() as usize).max(1)
        } else {
            usize::MAX
        };
        // Paragraphs wrap at spaces, greedily; a longer word keeps its line.
        let mut lines = Vec::new();
        for paragraph in plain.split('\n') {
            let mut line = 0;
            for word in paragraph.split(' ').map(|w| w.chars().count()) {
                if line > 0 && line + 1 + word > wrap {
                    lines.push(line);
                    line = word;
                } else {
                    line += usize::from(line > 0) + word;
                }
            }
            lines.push(line);
        }
        let factor = if t.line_spacing_factor > 0.0 {
            t.line_spacing_factor
        } else {
            1.0
        };
        let pitch = LINE_PITCH * height * factor;
        let total = height + pitch * (lines.len().saturating_sub(1)) as f64;
        use AttachmentPoint as A;
        let (align, top) = match t.attachment_point {
            A::TopLeft => (0.0, 0.0),
            A::TopCenter => (0.5, 0.0),
            A::TopRight => (1.0, 0.0),
            A::MiddleLeft => (0.0, total / 2.0),
            A::MiddleCenter => (0.5, total / 2.0),
            A::MiddleRight => (1.0, total / 2.0),
            A::BottomLeft => (0.0, total),
            A::BottomCenter => (0.5, total),
            A::BottomRight => (1.0, total),
        };
        let normal = V3::from_vector(&t.extrusion_direction)
            .normalized()
            .unwrap_or(V3::new(0.0, 0.0, 1.0));
        let given = V3::from_vector(&t.x_axis_direction);
        // The crate defaults the direction to +X, so +X with a rotation means
        // the file gave only the rotation (degrees, whatever the reference says).
        let x_axis = if given == V3::new(1.0, 0.0, 0.0) && t.rotation_angle != 0.0 || given.normalized().is_none() {
            let (s, c) = t.rotation_angle.to_radians().sin_cos();
            Mat::ocs(normal).vector(V3::new(c, s, 0.0))
        } else {
            given
        };
        let Some(x_axis) = x_axis.normalized() else {
            return Ok(());
        };
        let y_axis = normal.cross(x_axis).normalized().unwrap_or(V3::new(0.0, 1.0, 0.0));
        let frame = m.then(&Mat::from_axes(
            x_axis,
            y_axis,
            normal,
            V3::from_point(&t.insertion_point),
        ));
        let layout = TextLayout {
            height,
            char_width,
            align,
            top,
            pitch,
        };
        self.text_boxes(&frame, &lines, &layout, plain)
    }

    fn placed_text(&mut self, local: &Mat, t: &Placed<'_>) -> Result<(), RenderError> {
        let plain = percent_codes(&utf8_text(t.value));
        let chars = plain.chars().count();
        let height = if t.height > 0.0 { t.height } else { self.text_height };
        let x_scale = if t.x_scale > 0.0 { t.x_scale } else { 1.0 };
        let mut char_width = CHAR_WIDTH * height * x_scale;
        let location = V3::from_point(t.location);
        let second = V3::from_point(t.second);
        let mut anchor = location;
        let mut angle = t.rotation.to_radians();
        let (mut align, mut top) = (0.0, height);
        match t.horizontal {
            HJust::Aligned | HJust::Fit => {
                let (dx, dy) = (second.x - location.x, second.y - location.y);
                let run = dx.hypot(dy);
                if run > 0.0 && chars > 0 {
                    angle = dy.atan2(dx);
                    char_width = run / chars as f64;
                }
            }
            HJust::Left if t.vertical == VJust::Baseline => {}
            horizontal => {
                anchor = second;
                align = match horizontal {
                    HJust::Center | HJust::Middle => 0.5,
                    HJust::Right => 1.0,
                    _ => 0.0,
                };
                top = match (horizontal, t.vertical) {
                    (HJust::Middle, _) | (_, VJust::Middle) => height / 2.0,
                    (_, VJust::Top) => 0.0,
                    _ => height,
                };
            }
        }
        let mirror_x = if t.flags & 2 != 0 { -1.0 } else { 1.0 };
        let mirror_y = if t.flags & 4 != 0 { -1.0 } else { 1.0 };
        let frame = local
            .then(&Mat::translate(anchor))
            .then(&Mat::rotate_z(angle))
            .then(&Mat::scale(mirror_x, mirror_y, 1.0));
        let layout = TextLayout {
            height,
            char_width,
            align,
            top,
            pitch: 0.0,
        };
        self.text_boxes(&frame, &[chars], &layout, plain)
    }

    /// One outlined box per line of `line_chars` characters.
    fn text_boxes(
        &mut self,
        frame: &Mat,
        line_chars: &[usize],
        l: &TextLayout,
        text: String,
    ) -> Result<(), RenderError> {
        if line_chars.iter().all(|&n| n == 0) || l.height.is_nan() || l.height <= 0.0 {
            return Ok(());
        }
        for (i, &n) in line_chars.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let width = n as f64 * l.char_width;
            let (x0, x1) = (-l.align * width, (1.0 - l.align) * width);
            let y1 = l.top - i as f64 * l.pitch;
            let y0 = y1 - l.height;
            let corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)];
            self.poly(
                corners.iter().map(|&(x, y)| frame.xy(V3::new(x, y, 0.0))).collect(),
                true,
            )?;
        }
        self.texts.push(TextMark {
            at: frame.xy(V3::default()),
            height: frame.xy_vec(V3::new(0.0, l.height, 0.0)).length(),
            text,
        });
        Ok(())
    }
}

/// TEXT and ATTRIB fields that place them.
struct Placed<'a> {
    value: &'a str,
    location: &'a dxf::Point,
    second: &'a dxf::Point,
    height: f64,
    rotation: f64,
    x_scale: f64,
    flags: i32,
    horizontal: HJust,
    vertical: VJust,
}

/// Counter-clockwise sweep in degrees from `start` to `end`; a full turn
/// when they coincide but were written apart (0 and 360).
fn ccw_sweep(start: f64, end: f64) -> f64 {
    let sweep = (end - start).rem_euclid(360.0);
    if sweep < 1e-9 && (end - start).abs() > 1e-9 {
        360.0
    } else {
        sweep
    }
}

/// A primitive's points at fixed angular steps, for filled rings.
fn fixed_points(prim: &Prim) -> Vec<P2> {
    match prim {
        Prim::Line(a, b) => vec![*a, *b],
        Prim::Poly { points, .. } => points.clone(),
        Prim::Arc { c, u, v, t0, sweep } => {
            let steps = ((sweep.abs() / TAU * TURN_STEPS).ceil() as usize).max(1);
            arc_points(*c, *u, *v, *t0, *sweep, steps).collect()
        }
        Prim::Fill(_) => Vec::new(),
    }
}

/// The `dxf` crate reads binary-DXF strings one byte per character, so the
/// UTF-8 text of R2007+ files arrives as Latin-1 mojibake ("Ð\u{9c}Ð°" for
/// "Ма"); undone when the bytes are valid UTF-8.
fn utf8_text(s: &str) -> Cow<'_, str> {
    if s.chars().all(|c| u32::from(c) < 256) && s.chars().any(|c| u32::from(c) >= 128) {
        let bytes: Vec<u8> = s.chars().map(|c| u32::from(c) as u8).collect();
        if let Ok(text) = String::from_utf8(bytes) {
            return Cow::Owned(text);
        }
    }
    Cow::Borrowed(s)
}

/// TEXT control codes: `%%d`, `%%c`, `%%p` and `%%nnn` are one character;
/// `%%u`, `%%o`, `%%k` toggle styles and take no room.
fn percent_codes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("%%") {
        out.push_str(&rest[..i]);
        rest = &rest[i + 2..];
        let mut chars = rest.chars();
        match chars.next() {
            Some('d' | 'D' | 'c' | 'C' | 'p' | 'P') => {
                out.push('*');
                rest = chars.as_str();
            }
            Some('u' | 'U' | 'o' | 'O' | 'k' | 'K') => rest = chars.as_str(),
            Some('0'..='9') => {
                let digits = rest.bytes().take(3).take_while(u8::is_ascii_digit).count();
                out.push('*');
                rest = &rest[digits..];
            }
            Some('%') => {
                out.push('%');
                rest = chars.as_str();
            }
            _ => out.push_str("%%"),
        }
    }
    out.push_str(rest);
    out
}

/// MTEXT without its inline formatting; `\P` becomes a newline.
fn mtext_plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('P') => out.push('\n'),
                Some('~') => out.push(' '),
                Some(c @ ('\\' | '{' | '}')) => out.push(c),
                Some('S') => {
                    // Stacked text such as \S1/2; shows both parts.
                    for c in chars.by_ref() {
                        match c {
                            ';' => break,
                            '^' | '/' | '#' => {}
                            c => out.push(c),
                        }
                    }
                }
                Some('U' | 'u') if chars.peek() == Some(&'+') => {
                    chars.nth(4);
                    out.push('*');
                }
                Some('A' | 'C' | 'c' | 'F' | 'f' | 'H' | 'h' | 'Q' | 'q' | 'T' | 't' | 'W' | 'w' | 'p') => {
                    for c in chars.by_ref() {
                        if c == ';' {
                            break;
                        }
                    }
                }
                _ => {}
            },
            '{' | '}' => {}
            c => out.push(c),
        }
    }
    percent_codes(&out)
}

/// Entity builders for tests that write DXF fixtures.
#[cfg(test)]
pub(crate) mod test_entities {
    use dxf::Point;
    use dxf::entities::{Circle, Entity, EntityType, Line};

    pub fn line(x1: f64, y1: f64, x2: f64, y2: f64) -> Entity {
        Entity::new(EntityType::Line(Line::new(
            Point::new(x1, y1, 0.0),
            Point::new(x2, y2, 0.0),
        )))
    }

    pub fn circle(x: f64, y: f64, r: f64) -> Entity {
        Entity::new(EntityType::Circle(Circle::new(Point::new(x, y, 0.0), r)))
    }
}

#[cfg(test)]
mod tests {
    use super::test_entities::{circle, line};
    use std::collections::HashSet;
    use std::f64::consts::PI;

    use dxf::entities::{Arc, Ellipse, Insert, LwPolyline, MText, ModelPoint, RotatedDimension, Spline, Text};
    use dxf::enums::AcadVersion;
    use dxf::{Block, Drawing, LwPolylineVertex, Point, Vector};
    use image::imageops;

    use super::*;

    fn drawing() -> Drawing {
        let mut d = Drawing::new();
        // R12, the crate's default, silently drops LWPOLYLINE on save.
        d.header.version = AcadVersion::R2013;
        d
    }

    fn ascii(d: &Drawing) -> Vec<u8> {
        let mut out = Vec::new();
        d.save(&mut out).unwrap();
        out
    }

    fn binary(d: &Drawing) -> Vec<u8> {
        let mut out = Vec::new();
        d.save_binary(&mut out).unwrap();
        out
    }

    fn render(d: &Drawing) -> GrayImage {
        render_dxf(&ascii(d), &RenderOptions::default()).unwrap()
    }

    fn insert(name: &str, x: f64, y: f64, rotation: f64, sx: f64) -> Entity {
        Entity::new(EntityType::Insert(Insert {
            name: name.into(),
            location: Point::new(x, y, 0.0),
            rotation,
            x_scale_factor: sx,
            y_scale_factor: sx.abs(),
            ..Default::default()
        }))
    }

    fn block(name: &str, base: (f64, f64), entities: Vec<Entity>) -> Block {
        Block {
            name: name.into(),
            base_point: Point::new(base.0, base.1, 0.0),
            entities,
            ..Default::default()
        }
    }

    /// An asymmetric shape: an L, a circle off the diagonal, an arc.
    fn shape() -> Vec<Entity> {
        let mut arc = Arc::new(Point::new(30.0, 10.0, 0.0), 5.0, 0.0, 120.0);
        arc.thickness = 0.0;
        vec![
            line(0.0, 0.0, 40.0, 0.0),
            line(0.0, 0.0, 0.0, 20.0),
            circle(10.0, 12.0, 4.0),
            Entity::new(EntityType::Arc(arc)),
        ]
    }

    fn with(entities: Vec<Entity>) -> Drawing {
        let mut d = drawing();
        for e in entities {
            d.add_entity(e);
        }
        d
    }

    fn inked(img: &GrayImage) -> HashSet<(i64, i64)> {
        img.enumerate_pixels()
            .filter(|p| p.2.0[0] == raster::INK)
            .map(|p| (i64::from(p.0), i64::from(p.1)))
            .collect()
    }

    /// Every inked pixel of each image is within one pixel of ink in the other.
    fn assert_alike(a: &GrayImage, b: &GrayImage) {
        let (pa, pb) = (inked(a), inked(b));
        assert!(!pa.is_empty() && !pb.is_empty());
        let near = |p: &(i64, i64), set: &HashSet<(i64, i64)>| {
            (-1..=1).any(|dx| (-1..=1).any(|dy| set.contains(&(p.0 + dx, p.1 + dy))))
        };
        let stray_a = pa.iter().filter(|p| !near(p, &pb)).count();
        let stray_b = pb.iter().filter(|p| !near(p, &pa)).count();
        assert!(
            stray_a == 0 && stray_b == 0,
            "{stray_a} of {} and {stray_b} of {} pixels have no counterpart",
            pa.len(),
            pb.len()
        );
    }

    fn is_ink(img: &GrayImage, x: u32, y: u32) -> bool {
        img.get_pixel(x, y).0[0] == raster::INK
    }

    #[test]
    fn a_line_renders_where_expected_with_y_up() {
        // An L: 10 wide, 5 high. Scale 491.52/10, centre at pixel centre
        // (256.5, 256.5): the corner (0, 0) lands at (10.74, 379.38), the
        // right end at x 502.26, the top of the upright at y 133.62.
        let img = render(&with(vec![line(0.0, 0.0, 10.0, 0.0), line(0.0, 0.0, 0.0, 5.0)]));
        assert_eq!(img.dimensions(), (512, 512));
        assert!(is_ink(&img, 10, 379) && is_ink(&img, 256, 379) && is_ink(&img, 502, 379));
        assert!(is_ink(&img, 10, 200) && is_ink(&img, 10, 133));
        assert!(!is_ink(&img, 10, 450), "the upright goes up, not down");
        assert!(!is_ink(&img, 256, 200) && !is_ink(&img, 5, 379) && !is_ink(&img, 10, 120));
        assert_eq!(inked(&img).len(), 493 + 247 - 1);
    }

    #[test]
    fn a_circle_renders_a_ring() {
        let img = render(&with(vec![circle(5.0, -3.0, 10.0)]));
        let radius = 512.0 * 0.96 / 2.0;
        let px = inked(&img);
        assert!(!is_ink(&img, 256, 256));
        assert!(is_ink(&img, 256, 10) && is_ink(&img, 10, 256) && is_ink(&img, 502, 256) && is_ink(&img, 256, 502));
        for (x, y) in &px {
            let d = ((*x as f64 - 256.0).powi(2) + (*y as f64 - 256.0).powi(2)).sqrt();
            assert!((d - radius).abs() < 1.5, "pixel ({x}, {y}) is {d} from the centre");
        }
        let circumference = 2.0 * PI * radius;
        // An 8-connected digital circle has about 4√2·r pixels, 0.9 of 2πr.
        assert!((px.len() as f64) > circumference * 0.85 && (px.len() as f64) < circumference * 1.1);
    }

    #[test]
    fn rotated_mirrored_and_scaled_inserts_render_the_transformed_drawing() {
        let direct = render(&with(shape()));
        let placed = |rotation: f64, sx: f64| {
            let mut d = with(vec![insert("SHAPE", 100.0, -50.0, rotation, sx)]);
            d.add_block(block("shape", (7.0, 3.0), shape()));
            render(&d)
        };
        assert_alike(&placed(0.0, 1.0), &direct);
        assert_alike(&placed(0.0, 3.0), &direct);
        // +90° is counter-clockwise on the page as in the drawing.
        assert_alike(&placed(90.0, 1.0), &imageops::rotate270(&direct));
        assert_alike(&placed(180.0, 2.0), &imageops::rotate180(&direct));
        assert_alike(&placed(0.0, -1.0), &imageops::flip_horizontal(&direct));
    }

    #[test]
    fn nested_blocks_compose_inner_transform_first() {
        let direct = render(&with(shape()));
        let mut d = with(vec![insert("OUTER", 0.0, 0.0, 0.0, -1.0)]);
        d.add_block(block("INNER", (0.0, 0.0), shape()));
        d.add_block(block("OUTER", (0.0, 0.0), vec![insert("INNER", 5.0, 5.0, 90.0, 2.0)]));
        let expected = imageops::flip_horizontal(&imageops::rotate270(&direct));
        assert_alike(&render(&d), &expected);
    }

    #[test]
    fn insert_arrays_repeat_the_block() {
        let mut d = with(vec![Entity::new(EntityType::Insert(Insert {
            name: "DOT".into(),
            column_count: 3,
            row_count: 2,
            column_spacing: 10.0,
            row_spacing: 10.0,
            ..Default::default()
        }))]);
        d.add_block(block("DOT", (0.0, 0.0), vec![circle(0.0, 0.0, 1.0)]));
        let g = load_geometry(&ascii(&d), &RenderOptions::default()).unwrap();
        assert_eq!(g.prims.len(), 6);
        let (x0, y0, x1, y1) = g.extents();
        assert!(
            (x0 + 1.0).abs() < 1e-9 && (y0 + 1.0).abs() < 1e-9 && (x1 - 21.0).abs() < 1e-9 && (y1 - 11.0).abs() < 1e-9
        );
    }

    #[test]
    fn recursive_blocks_do_not_recurse_forever() {
        let mut d = with(vec![
            insert("LOOP", 0.0, 0.0, 0.0, 1.0),
            insert("A", 0.0, 0.0, 0.0, 1.0),
        ]);
        d.add_block(block(
            "LOOP",
            (0.0, 0.0),
            vec![line(0.0, 0.0, 1.0, 1.0), insert("LOOP", 1.0, 0.0, 0.0, 1.0)],
        ));
        d.add_block(block(
            "A",
            (0.0, 0.0),
            vec![line(0.0, 0.0, 1.0, 0.0), insert("B", 0.0, 1.0, 0.0, 1.0)],
        ));
        d.add_block(block(
            "B",
            (0.0, 0.0),
            vec![line(0.0, 0.0, 0.0, 1.0), insert("A", 0.0, 1.0, 0.0, 1.0)],
        ));
        let g = load_geometry(&ascii(&d), &RenderOptions::default()).unwrap();
        // LOOP once; A, then B inside it, then A refused inside B.
        assert_eq!(g.prims.len(), 3);
    }

    #[test]
    fn deep_nesting_is_too_complex() {
        let mut d = with(vec![insert("B0", 0.0, 0.0, 0.0, 1.0)]);
        for i in 0..20 {
            d.add_block(block(
                &format!("B{i}"),
                (0.0, 0.0),
                vec![
                    line(0.0, 0.0, 1.0, 1.0),
                    insert(&format!("B{}", i + 1), 1.0, 0.0, 0.0, 1.0),
                ],
            ));
        }
        let err = render_dxf(&ascii(&d), &RenderOptions::default()).unwrap_err();
        assert!(
            matches!(&err, RenderError::TooComplex(m) if m.contains("nested")),
            "{err}"
        );
        let shallow = RenderOptions {
            max_block_depth: 25,
            ..RenderOptions::default()
        };
        assert!(render_dxf(&ascii(&d), &shallow).is_ok());
    }

    #[test]
    fn entity_limits_are_enforced() {
        let d = with((0..10).map(|i| line(0.0, f64::from(i), 1.0, f64::from(i))).collect());
        let few = RenderOptions {
            max_entities: 5,
            ..RenderOptions::default()
        };
        assert!(matches!(render_dxf(&ascii(&d), &few), Err(RenderError::TooComplex(_))));
        assert!(render_dxf(&ascii(&d), &RenderOptions::default()).is_ok());
        // A million block instances from one small INSERT.
        let mut d = with(vec![Entity::new(EntityType::Insert(Insert {
            name: "B".into(),
            column_count: 1000,
            row_count: 1000,
            ..Default::default()
        }))]);
        d.add_block(block("B", (0.0, 0.0), vec![line(0.0, 0.0, 1.0, 1.0)]));
        let err = render_dxf(&ascii(&d), &RenderOptions::default()).unwrap_err();
        assert!(
            matches!(&err, RenderError::TooComplex(m) if m.contains("entities")),
            "{err}"
        );
        let few_points = RenderOptions {
            max_segments: 10,
            ..RenderOptions::default()
        };
        let many = with((0..10).map(|i| line(0.0, f64::from(i), 1.0, f64::from(i))).collect());
        assert!(matches!(
            render_dxf(&ascii(&many), &few_points),
            Err(RenderError::TooComplex(_))
        ));
    }

    #[test]
    fn nothing_to_draw_is_empty_and_garbage_unreadable() {
        let empty = RenderOptions::default();
        assert_eq!(render_dxf(&ascii(&drawing()), &empty), Err(RenderError::Empty));
        let point = with(vec![Entity::new(EntityType::ModelPoint(ModelPoint::new(Point::new(
            1.0, 1.0, 0.0,
        ))))]);
        assert_eq!(render_dxf(&ascii(&point), &empty), Err(RenderError::Empty));
        let mut paper = line(0.0, 0.0, 1.0, 1.0);
        paper.common.is_in_paper_space = true;
        assert_eq!(render_dxf(&ascii(&with(vec![paper])), &empty), Err(RenderError::Empty));
        for broken in [
            &b"hello world"[..],
            b"0\nSECTION\n2\nENTITIES\n0\nLINE\n10\n1\n",
            b"0\nSECTION\n2\nENTITIES\nfoo\n",
        ] {
            assert!(matches!(render_dxf(broken, &empty), Err(RenderError::Unreadable(_))));
        }
    }

    #[test]
    fn ascii_and_binary_saves_render_and_hash_identically() {
        let mut entities = shape();
        entities.push(Entity::new(EntityType::LwPolyline(LwPolyline {
            vertices: vec![
                LwPolylineVertex {
                    x: 50.0,
                    y: 0.0,
                    bulge: 0.5,
                    ..Default::default()
                },
                LwPolylineVertex {
                    x: 60.0,
                    y: 0.0,
                    ..Default::default()
                },
                LwPolylineVertex {
                    x: 60.0,
                    y: 10.0,
                    ..Default::default()
                },
            ],
            flags: 1,
            ..Default::default()
        })));
        let d = with(entities);
        let opts = RenderOptions::default();
        let (a, b) = (ascii(&d), binary(&d));
        assert!(b.starts_with(b"AutoCAD Binary DXF"));
        assert_eq!(render_dxf(&a, &opts).unwrap(), render_dxf(&b, &opts).unwrap());
        assert_eq!(
            canonical_geometry_hash(&a, &opts).unwrap(),
            canonical_geometry_hash(&b, &opts).unwrap()
        );
    }

    #[test]
    fn canonical_hash_ignores_version_order_layers_and_position_but_not_size() {
        let opts = RenderOptions::default();
        let hash = |d: &Drawing| canonical_geometry_hash(&ascii(d), &opts).unwrap();
        let base = hash(&with(shape()));
        let mut r12 = with(shape());
        r12.header.version = AcadVersion::R12;
        assert_eq!(hash(&r12), base);
        let mut shuffled: Vec<Entity> = shape().into_iter().rev().collect();
        shuffled[0].common.layer = "OTHER".into();
        assert_eq!(hash(&with(shuffled)), base);
        let mut d = with(vec![insert("S", 1000.0, 5.0, 0.0, 1.0)]);
        d.add_block(block("S", (0.0, 0.0), shape()));
        assert_eq!(hash(&d), base, "a block reference of the same geometry, moved");
        let mut d = with(vec![insert("S", 0.0, 0.0, 0.0, 2.0)]);
        d.add_block(block("S", (0.0, 0.0), shape()));
        assert_ne!(hash(&d), base, "twice the size");
        let mut more = shape();
        more.push(line(1.0, 1.0, 2.0, 2.0));
        assert_ne!(hash(&with(more)), base);
    }

    #[test]
    fn a_bulge_renders_an_arc() {
        // A half circle below the chord from (0, 0) to (10, 0).
        let d = with(vec![Entity::new(EntityType::LwPolyline(LwPolyline {
            vertices: vec![
                LwPolylineVertex {
                    x: 0.0,
                    y: 0.0,
                    bulge: 1.0,
                    ..Default::default()
                },
                LwPolylineVertex {
                    x: 10.0,
                    y: 0.0,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }))]);
        let bytes = ascii(&d);
        let (x0, y0, x1, y1) = load_geometry(&bytes, &RenderOptions::default()).unwrap().extents();
        assert!(x0.abs() < 1e-9 && (x1 - 10.0).abs() < 1e-9 && (y0 + 5.0).abs() < 1e-9 && y1.abs() < 1e-9);
        let img = render_dxf(&bytes, &RenderOptions::default()).unwrap();
        assert!(is_ink(&img, 256, 379), "the bottom of the arc");
        assert!(is_ink(&img, 10, 133) && is_ink(&img, 502, 133), "the chord's ends");
        assert!(
            !is_ink(&img, 256, 133) && !is_ink(&img, 256, 256),
            "no chord, nothing inside"
        );
    }

    #[test]
    fn ellipses_splines_and_text_have_the_expected_extents() {
        let opts = RenderOptions::default();
        let extents = |e: Entity| load_geometry(&ascii(&with(vec![e])), &opts).unwrap().extents();
        let close = |a: (f64, f64, f64, f64), b: (f64, f64, f64, f64)| {
            (a.0 - b.0).abs() < 1e-6 && (a.1 - b.1).abs() < 1e-6 && (a.2 - b.2).abs() < 1e-6 && (a.3 - b.3).abs() < 1e-6
        };
        let half_ellipse = Entity::new(EntityType::Ellipse(Ellipse {
            center: Point::new(0.0, 0.0, 0.0),
            major_axis: Vector::new(10.0, 0.0, 0.0),
            minor_axis_ratio: 0.5,
            start_parameter: 0.0,
            end_parameter: PI,
            ..Default::default()
        }));
        let e = extents(half_ellipse);
        assert!(close(e, (-10.0, 0.0, 10.0, 5.0)), "{e:?}");
        // Quadratic Bézier through de Boor: it peaks at 1, half its control point.
        let spline = Entity::new(EntityType::Spline(Spline {
            degree_of_curve: 2,
            control_points: vec![
                Point::new(0.0, 0.0, 0.0),
                Point::new(1.0, 2.0, 0.0),
                Point::new(2.0, 0.0, 0.0),
            ],
            knot_values: vec![0.0, 0.0, 0.0, 1.0, 1.0, 1.0],
            ..Default::default()
        }));
        let e = extents(spline);
        assert!(close(e, (0.0, 0.0, 2.0, 1.0)), "{e:?}");
        let text = |rotation: f64| {
            Entity::new(EntityType::Text(Text {
                location: Point::new(0.0, 0.0, 0.0),
                text_height: 10.0,
                value: "ABCDE".into(),
                rotation,
                ..Default::default()
            }))
        };
        let e = extents(text(0.0));
        assert!(close(e, (0.0, 0.0, 5.0 * CHAR_WIDTH * 10.0, 10.0)), "{e:?}");
        let e = extents(text(90.0));
        assert!(close(e, (-10.0, 0.0, 0.0, 5.0 * CHAR_WIDTH * 10.0)), "{e:?}");
    }

    #[test]
    fn mtext_wraps_at_spaces_within_its_width() {
        let mtext = |text: &str, width: f64| {
            let e = Entity::new(EntityType::MText(MText {
                insertion_point: Point::new(0.0, 0.0, 0.0),
                initial_text_height: 1.0,
                reference_rectangle_width: width,
                text: text.into(),
                ..Default::default()
            }));
            load_geometry(&ascii(&with(vec![e])), &RenderOptions::default()).unwrap()
        };
        // Top-left attachment: lines hang below the insertion point.
        let g = mtext("aa bb cc", 4.0);
        assert_eq!(g.prims.len(), 2);
        let (x0, y0, x1, y1) = g.extents();
        assert!(x0 == 0.0 && (x1 - 4.0).abs() < 1e-9 && y1 == 0.0 && (y0 + 1.0 + LINE_PITCH).abs() < 1e-9);
        // A word wider than the box is not broken.
        assert_eq!(mtext("=1", 1.0).prims.len(), 1);
        assert_eq!(mtext("a\\Pb", 0.0).prims.len(), 2);
    }

    #[test]
    fn dimensions_render_their_block() {
        let mut dim = RotatedDimension::default();
        dim.dimension_base.block_name = "*D1".into();
        let mut d = with(vec![Entity::new(EntityType::RotatedDimension(dim))]);
        d.add_block(block("*D1", (0.0, 0.0), vec![line(0.0, 0.0, 3.0, 4.0)]));
        let g = load_geometry(&ascii(&d), &RenderOptions::default()).unwrap();
        assert_eq!(g.extents(), (0.0, 0.0, 3.0, 4.0));
    }

    const SQUARE_HATCH: &str = "0\nHATCH\n8\n0\n10\n0\n20\n0\n30\n0\n210\n0\n220\n0\n230\n1\n2\nSOLID\n70\n1\n71\n0\n\
        91\n1\n92\n3\n72\n0\n73\n1\n93\n4\n10\n0\n20\n0\n10\n10\n20\n0\n10\n10\n20\n10\n10\n0\n20\n10\n97\n0\n\
        75\n0\n76\n1\n98\n0\n";

    #[test]
    fn hatch_boundaries_are_drawn_and_solid_ones_filled() {
        let text = format!("0\nSECTION\n2\nENTITIES\n{SQUARE_HATCH}0\nENDSEC\n0\nEOF\n");
        let filled = render_dxf(text.as_bytes(), &RenderOptions::default()).unwrap();
        assert!(is_ink(&filled, 256, 256) && is_ink(&filled, 10, 10));
        let outlined = RenderOptions {
            fill: false,
            ..RenderOptions::default()
        };
        let outline = render_dxf(text.as_bytes(), &outlined).unwrap();
        assert!(!is_ink(&outline, 256, 256) && is_ink(&outline, 10, 10) && is_ink(&outline, 502, 502));
        // Inside a block, placed by the INSERT.
        let text = format!(
            "0\nSECTION\n2\nBLOCKS\n0\nBLOCK\n2\nH\n70\n0\n10\n0\n20\n0\n{SQUARE_HATCH}0\nENDBLK\n0\nENDSEC\n\
             0\nSECTION\n2\nENTITIES\n0\nINSERT\n2\nH\n10\n100\n20\n0\n41\n2\n42\n2\n0\nENDSEC\n0\nEOF\n"
        );
        let g = load_geometry(text.as_bytes(), &RenderOptions::default()).unwrap();
        assert_eq!(g.extents(), (100.0, 0.0, 120.0, 20.0));
    }

    #[test]
    fn stray_header_pairs_from_dxflib_are_tolerated() {
        let text = "999\ndxflib 2.0.0.0\n0\nSECTION\n2\nHEADER\n9\n$ACADVER\n1\nAC1015\n0\nENDSEC\n9\n$DIMASZ\n40\n2.5\n\
                    0\nSECTION\n2\nENTITIES\n0\nLINE\n8\n0\n10\n0\n20\n0\n11\n1\n21\n1\n0\nENDSEC\n0\nEOF\n";
        let g = load_geometry(text.as_bytes(), &RenderOptions::default()).unwrap();
        assert_eq!(g.extents(), (0.0, 0.0, 1.0, 1.0));
    }

    #[test]
    fn off_layers_and_invisible_entities_are_skipped() {
        let mut d = with(vec![line(0.0, 0.0, 1.0, 1.0), line(0.0, 0.0, 5.0, 5.0)]);
        let mut hidden = line(0.0, 0.0, 9.0, 9.0);
        hidden.common.is_visible = false;
        d.add_entity(hidden);
        let mut off = dxf::tables::Layer {
            name: "OFF".into(),
            ..Default::default()
        };
        off.is_layer_on = false;
        d.add_layer(off);
        let mut on_off = line(0.0, 0.0, 7.0, 7.0);
        on_off.common.layer = "OFF".into();
        d.add_entity(on_off);
        let g = load_geometry(&ascii(&d), &RenderOptions::default()).unwrap();
        assert_eq!(g.extents(), (0.0, 0.0, 5.0, 5.0));
    }

    #[test]
    fn text_codes_are_stripped() {
        assert_eq!(percent_codes("%%c10 %%uX%%u 50%%%"), "*10 X 50%");
        assert_eq!(mtext_plain("{\\fArial|b1;Big}\\Pline 2\\~\\S1/2;"), "Big\nline 2 12");
        assert_eq!(ccw_sweep(0.0, 360.0), 360.0);
        assert_eq!(ccw_sweep(350.0, 10.0), 20.0);
    }
}
