//! Level L4, for `precise` mode: the query against a candidate's original
//! drawing at four times L3's resolution, and boxes of what differs.
//!
//! L3's 128-cell thumbnails with a 2-cell tolerance absorb re-exports but
//! also the detail that tells look-alike parts apart (an arrow on a
//! resistor, a cross in a lamp). Here both drawings are read again: DXF
//! from its geometry rendered at 2048 px, rasters at full resolution, each
//! trimmed to its ink box, so scale and translation are gone, and compared
//! on a 512-cell grid with a 2-cell tolerance (0.4% of the drawing).

use image::DynamicImage;
use serde::{Deserialize, Serialize};

use super::raster::{self, Orientation};
use super::{EngineError, Format, Limits, inspect, render};

/// Side of the comparison grid.
pub const FINE: usize = 512;
/// DXF is rendered at this side before trimming to FINE.
const DXF_SIZE: u32 = 2048;
const TOLERANCE: usize = 3;
/// A drawing read from fewer pixels than the grid has cells is compared no
/// finer than this many of its own pixels: a quarter-size copy cannot place
/// a line better than its pixels allow.
const TOLERANCE_PIXELS: f32 = 1.5;
/// L4's ink cut-off ceiling: finer cells keep more of a line's darkness, so
/// the JPEG fringe the lower L3 ceiling would take for ink stays out (JPEG
/// q30 recall .986 at 0.12, .959 at 0.08).
const INK_CEILING: f32 = 0.12;
/// Difference boxes are found on a coarse grid of this side, so one
/// changed label is one box, not a hundred.
const REGION_GRID: usize = 32;
/// Uncovered fine cells a coarse cell needs to count as different.
const REGION_MIN_CELLS: usize = 4;
const MAX_REGIONS: usize = 16;

/// A drawing's trimmed ink on the FINE grid, one bool per cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detail {
    ink: Vec<bool>,
    /// In cells: TOLERANCE, or TOLERANCE_PIXELS of the source if coarser.
    tolerance: usize,
}

/// What L4 found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fine {
    pub query_covered: f64,
    pub candidate_covered: f64,
    pub similarity: f64,
    pub diff_regions: Vec<Region>,
}

/// A box where the drawings differ, in the library drawing's trimmed frame:
/// 0..1 from its ink box's left and top edges (the longer side is 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Region {
    pub x0: f64,
    pub y0: f64,
    pub x1: f64,
    pub y1: f64,
    /// `added`: ink only the query has; `removed`: ink only the library
    /// drawing has.
    pub kind: String,
}

/// A query's geometry as a caller's CAD system exports it (`geom_json`):
/// `{"entities": [...]}` or a bare array of
/// `{"type": "line", "start": [x, y], "end": [x, y]}`,
/// `{"type": "polyline", "points": [[x, y], ...], "closed": false}`,
/// `{"type": "circle", "center": [x, y], "radius": r}` and
/// `{"type": "arc", "center": [x, y], "radius": r, "start_angle": deg, "end_angle": deg}`
/// (counter-clockwise, degrees). L4 compares it, drawn by our renderer,
/// instead of the query's pixels: exact geometry beats a raster's.
pub fn detail_of_geom_json(json: &serde_json::Value, limits: Limits) -> Result<Option<Detail>, EngineError> {
    let dxf = geom_json_to_dxf(json, limits.max_entities)?;
    let image = render::render_dxf(dxf.as_bytes(), &limits.render_options(DXF_SIZE)).map_err(super::render_error)?;
    Ok(detail_of_image(&DynamicImage::ImageLuma8(image)))
}

/// Checks `geom_json` without drawing it, for the API to refuse at once.
pub fn check_geom_json(json: &serde_json::Value, limits: Limits) -> Result<(), EngineError> {
    geom_json_to_dxf(json, limits.max_entities).map(drop)
}

/// The entities as an R12 ASCII DXF, which our renderer then reads like any
/// other drawing.
fn geom_json_to_dxf(json: &serde_json::Value, max_entities: usize) -> Result<String, EngineError> {
    let invalid = |why: String| EngineError::InvalidGeometry(why);
    let entities = json
        .get("entities")
        .unwrap_or(json)
        .as_array()
        .ok_or_else(|| invalid("expected {\"entities\": [...]} or an array of entities".into()))?;
    if entities.is_empty() {
        return Err(invalid("there are no entities".into()));
    }
    if entities.len() > max_entities {
        return Err(invalid(format!(
            "{} entities, more than the limit of {max_entities}",
            entities.len()
        )));
    }
    let mut dxf = String::from("0\nSECTION\n2\nENTITIES\n");
    for (i, entity) in entities.iter().enumerate() {
        let at = |why: &str| invalid(format!("entity {i}: {why}"));
        let num = |key: &str| {
            entity
                .get(key)
                .and_then(serde_json::Value::as_f64)
                .filter(|v| v.is_finite())
                .ok_or_else(|| at(&format!("`{key}` must be a finite number")))
        };
        let point = |value: Option<&serde_json::Value>, key: &str| -> Result<(f64, f64), EngineError> {
            let xy = value.and_then(serde_json::Value::as_array).filter(|a| a.len() >= 2);
            let coordinate = |k: usize| xy.and_then(|a| a[k].as_f64()).filter(|v| v.is_finite());
            match (coordinate(0), coordinate(1)) {
                (Some(x), Some(y)) => Ok((x, y)),
                _ => Err(at(&format!("`{key}` must be [x, y] of finite numbers"))),
            }
        };
        let kind = entity
            .get("type")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        match kind.to_ascii_lowercase().as_str() {
            "line" => {
                let (a, b) = (point(entity.get("start"), "start")?, point(entity.get("end"), "end")?);
                dxf += &format!("0\nLINE\n8\n0\n10\n{}\n20\n{}\n11\n{}\n21\n{}\n", a.0, a.1, b.0, b.1);
            }
            "circle" | "arc" => {
                let c = point(entity.get("center"), "center")?;
                let r = num("radius")?;
                if r <= 0.0 {
                    return Err(at("`radius` must be positive"));
                }
                if kind.eq_ignore_ascii_case("circle") {
                    dxf += &format!("0\nCIRCLE\n8\n0\n10\n{}\n20\n{}\n40\n{r}\n", c.0, c.1);
                } else {
                    let (a0, a1) = (num("start_angle")?, num("end_angle")?);
                    dxf += &format!("0\nARC\n8\n0\n10\n{}\n20\n{}\n40\n{r}\n50\n{a0}\n51\n{a1}\n", c.0, c.1);
                }
            }
            "polyline" => {
                let points = entity
                    .get("points")
                    .and_then(serde_json::Value::as_array)
                    .filter(|p| p.len() >= 2)
                    .ok_or_else(|| at("`points` must hold at least two [x, y]"))?;
                let closed = entity
                    .get("closed")
                    .and_then(serde_json::Value::as_bool)
                    .unwrap_or(false);
                dxf += &format!(
                    "0\nPOLYLINE\n8\n0\n66\n1\n70\n{}\n10\n0\n20\n0\n30\n0\n",
                    u8::from(closed)
                );
                for p in points {
                    let (x, y) = point(Some(p), "points")?;
                    dxf += &format!("0\nVERTEX\n8\n0\n10\n{x}\n20\n{y}\n30\n0\n");
                }
                dxf += "0\nSEQEND\n8\n0\n";
            }
            other => {
                return Err(at(&format!(
                    "unknown type `{other}`; use line, polyline, circle or arc"
                )));
            }
        }
    }
    dxf += "0\nENDSEC\n0\nEOF\n";
    Ok(dxf)
}

/// Reads a drawing at L4 resolution; `None` for a page without ink.
pub fn detail(bytes: &[u8], limits: Limits) -> Result<Option<Detail>, EngineError> {
    let features = inspect(bytes, limits)?;
    let image = match features.format {
        Format::DxfAscii | Format::DxfBinary => {
            let options = limits.render_options(DXF_SIZE);
            let image = render::render_dxf(bytes, &options).map_err(super::render_error)?;
            DynamicImage::ImageLuma8(image)
        }
        format => super::pixels(bytes, format, limits)?,
    };
    Ok(detail_of_image(&image))
}

/// [`detail`] of pixels already decoded.
pub fn detail_of_image(image: &DynamicImage) -> Option<Detail> {
    raster::prepare_at(image, FINE).map(|p| {
        // Relative, as L3's: a downscaled copy's lines are lighter.
        let threshold = super::verify::ink_threshold(&p.trimmed, INK_CEILING);
        let cells_per_pixel = FINE as f32 / p.ink_extent.max(1.0);
        Detail {
            ink: (0..FINE * FINE)
                .map(|i| p.trimmed.at(i % FINE, i / FINE) >= threshold)
                .collect(),
            tolerance: ((TOLERANCE_PIXELS * cells_per_pixel).ceil() as usize).max(TOLERANCE),
        }
    })
}

impl Detail {
    fn oriented(&self, orientation: Orientation) -> Detail {
        let mut ink = vec![false; FINE * FINE];
        for (i, _) in self.ink.iter().enumerate().filter(|(_, on)| **on) {
            let (x, y) = orientation.map(i % FINE, i / FINE, FINE);
            ink[y * FINE + x] = true;
        }
        Detail {
            ink,
            tolerance: self.tolerance,
        }
    }

    /// Every cell within `tolerance` of ink: a square dilation, rows then
    /// columns.
    fn dilated(&self, tolerance: usize) -> Vec<bool> {
        let spread = |src: &[bool], step: usize, along: fn(usize) -> usize| -> Vec<bool> {
            let mut out = vec![false; src.len()];
            for (i, _) in src.iter().enumerate().filter(|(_, on)| **on) {
                let at = along(i);
                let lo = at.saturating_sub(tolerance);
                let hi = (at + tolerance).min(FINE - 1);
                for k in lo..=hi {
                    out[i + k * step - at * step] = true;
                }
            }
            out
        };
        let rows = spread(&self.ink, 1, |i| i % FINE);
        spread(&rows, FINE, |i| i / FINE)
    }

    /// The cells of this ink that `other_dilated` does not cover.
    fn uncovered(&self, other_dilated: &[bool]) -> (usize, Vec<bool>) {
        let ink = self.ink.iter().filter(|on| **on).count();
        let missing = self.ink.iter().zip(other_dilated).map(|(a, b)| *a && !b).collect();
        (ink, missing)
    }
}

/// Compares a query (turned into the `orientation` L2 found) with a
/// library drawing.
pub fn compare(query: &Detail, candidate: &Detail, orientation: Orientation) -> Fine {
    let query = query.oriented(orientation);
    let tolerance = query.tolerance.max(candidate.tolerance);
    let (query_ink, added) = query.uncovered(&candidate.dilated(tolerance));
    let (candidate_ink, removed) = candidate.uncovered(&query.dilated(tolerance));
    let share = |ink: usize, missing: &[bool]| {
        if ink == 0 {
            0.0
        } else {
            1.0 - missing.iter().filter(|m| **m).count() as f64 / ink as f64
        }
    };
    let query_covered = share(query_ink, &added);
    let candidate_covered = share(candidate_ink, &removed);
    let mut diff_regions = regions(&added, "added");
    diff_regions.extend(regions(&removed, "removed"));
    diff_regions.sort_by(|a, b| area(b).total_cmp(&area(a)));
    diff_regions.truncate(MAX_REGIONS);
    Fine {
        query_covered,
        candidate_covered,
        similarity: super::verify::similarity_of_coverage(query_covered.min(candidate_covered)),
        diff_regions,
    }
}

fn area(r: &Region) -> f64 {
    (r.x1 - r.x0) * (r.y1 - r.y0)
}

/// Connected groups of coarse cells with enough uncovered ink, as boxes.
fn regions(missing: &[bool], kind: &str) -> Vec<Region> {
    let cell = FINE / REGION_GRID;
    let mut counts = vec![0usize; REGION_GRID * REGION_GRID];
    for (i, _) in missing.iter().enumerate().filter(|(_, m)| **m) {
        counts[(i / FINE / cell) * REGION_GRID + (i % FINE) / cell] += 1;
    }
    let mut marked: Vec<bool> = counts.iter().map(|&c| c >= REGION_MIN_CELLS).collect();
    let mut out = Vec::new();
    for start in 0..marked.len() {
        if !marked[start] {
            continue;
        }
        marked[start] = false;
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        let mut stack = vec![start];
        while let Some(at) = stack.pop() {
            let (x, y) = (at % REGION_GRID, at / REGION_GRID);
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1));
            for ny in y.saturating_sub(1)..=(y + 1).min(REGION_GRID - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(REGION_GRID - 1) {
                    let next = ny * REGION_GRID + nx;
                    if marked[next] {
                        marked[next] = false;
                        stack.push(next);
                    }
                }
            }
        }
        let unit = |v: usize| v as f64 / REGION_GRID as f64;
        out.push(Region {
            x0: unit(x0),
            y0: unit(y0),
            x1: unit(x1),
            y1: unit(y1),
            kind: kind.into(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use image::{GrayImage, Luma};

    use super::*;
    use crate::engine::testing::png;

    /// A frame with a diagonal, and optionally a small mark in one corner.
    fn part(size: u32, mark: bool) -> GrayImage {
        GrayImage::from_fn(size, size, |x, y| {
            let (fx, fy) = (x as f64 / size as f64, y as f64 / size as f64);
            let frame = (0.1..0.9).contains(&fx) && (0.1..0.9).contains(&fy) && {
                let edge = |v: f64| (v - 0.1).abs() < 0.006 || (v - 0.9).abs() < 0.006;
                edge(fx) || edge(fy) || (fx - fy).abs() < 0.006
            };
            let dot = mark && (0.7..0.75).contains(&fx) && (0.2..0.25).contains(&fy);
            Luma([if frame || dot { 0 } else { 255 }])
        })
    }

    #[test]
    fn a_rescaled_copy_matches_and_an_added_mark_is_boxed_where_it_is() {
        let limits = Limits::default();
        let original = detail(&png(&part(800, false)), limits).unwrap().unwrap();
        let rescaled = detail(&png(&part(400, false)), limits).unwrap().unwrap();
        let marked = detail(&png(&part(800, true)), limits).unwrap().unwrap();
        let same = compare(&rescaled, &original, Orientation::IDENTITY);
        assert!(same.similarity > 0.97, "{same:?}");
        assert!(same.diff_regions.is_empty(), "{same:?}");
        let changed = compare(&marked, &original, Orientation::IDENTITY);
        assert!(changed.candidate_covered > 0.97, "{changed:?}");
        assert!(changed.query_covered < changed.candidate_covered, "{changed:?}");
        let region = &changed.diff_regions[0];
        assert_eq!(region.kind, "added");
        // The mark sits at 0.70–0.75 × 0.20–0.25 of the page; the frame
        // trimmed to 0.1–0.9 puts it at about 0.75–0.81 × 0.12–0.19.
        assert!(
            region.x0 < 0.8 && region.x1 > 0.76 && region.y0 < 0.19 && region.y1 > 0.12,
            "{region:?}"
        );
    }

    #[test]
    fn geom_json_is_drawn_like_the_same_dxf_and_bad_geometry_is_named() {
        let limits = Limits::default();
        let json = serde_json::json!({"entities": [
            {"type": "polyline", "points": [[0, 0], [100, 0], [100, 60], [0, 60]], "closed": true},
            {"type": "line", "start": [0, 0], "end": [100, 60]},
            {"type": "circle", "center": [70, 20], "radius": 8},
            {"type": "arc", "center": [30, 40], "radius": 10, "start_angle": 0, "end_angle": 180},
        ]});
        let from_json = detail_of_geom_json(&json, limits).unwrap().unwrap();
        let dxf = geom_json_to_dxf(&json, 100).unwrap();
        let from_dxf = detail(dxf.as_bytes(), limits).unwrap().unwrap();
        assert_eq!(compare(&from_json, &from_dxf, Orientation::IDENTITY).similarity, 1.0);
        let mut other = json.clone();
        other["entities"][2]["radius"] = serde_json::json!(20);
        let changed = compare(
            &detail_of_geom_json(&other, limits).unwrap().unwrap(),
            &from_dxf,
            Orientation::IDENTITY,
        );
        assert!(
            changed.similarity < 0.95 && !changed.diff_regions.is_empty(),
            "{changed:?}"
        );
        for (bad, needle) in [
            (serde_json::json!({"entities": []}), "no entities"),
            (serde_json::json!([{"type": "spline"}]), "unknown type `spline`"),
            (
                serde_json::json!([{"type": "circle", "center": [0, 0], "radius": -1}]),
                "entity 0: `radius`",
            ),
            (
                serde_json::json!([{"type": "line", "start": [0], "end": [1, 1]}]),
                "`start`",
            ),
            (serde_json::json!("text"), "expected"),
        ] {
            let e = check_geom_json(&bad, limits).unwrap_err();
            assert!(
                matches!(&e, EngineError::InvalidGeometry(m) if m.contains(needle)),
                "{e}"
            );
        }
    }

    #[test]
    fn the_orientation_l2_found_is_applied_to_the_query() {
        let limits = Limits::default();
        let original = part(600, true);
        let turned = image::imageops::rotate90(&original);
        let a = detail(&png(&original), limits).unwrap().unwrap();
        let b = detail(&png(&turned), limits).unwrap().unwrap();
        let aligned = Orientation::ALL
            .iter()
            .map(|&o| compare(&b, &a, o).similarity)
            .fold(0.0, f64::max);
        assert!(aligned > 0.97, "{aligned}");
        assert!(compare(&b, &a, Orientation::IDENTITY).similarity < 0.9);
    }
}
