//! The transforms that make generated queries out of a library drawing's
//! render (dark ink on white paper, one byte of luma per pixel), as issue 3
//! point 5 lists them: ten that must stay duplicates, and an added label
//! and a 3% crop that must stay at least similar.

use image::imageops::{self, FilterType};
use image::{GrayImage, ImageFormat, Luma};

/// Share of the width (height) added as white paper on the left and right
/// (top and bottom) by [`Transform::Pad20`].
pub const PAD_SHARE: f64 = 0.2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transform {
    ResizeHalf,
    ResizeQuarter,
    Jpeg75,
    Jpeg30,
    Lines3,
    Pad20,
    Rot90,
    Rot180,
    Rot270,
    Mirror,
    Label,
    Crop3,
}

impl Transform {
    pub const ALL: [Transform; 12] = [
        Transform::ResizeHalf,
        Transform::ResizeQuarter,
        Transform::Jpeg75,
        Transform::Jpeg30,
        Transform::Lines3,
        Transform::Pad20,
        Transform::Rot90,
        Transform::Rot180,
        Transform::Rot270,
        Transform::Mirror,
        Transform::Label,
        Transform::Crop3,
    ];

    /// Whether the query must be found as a duplicate; the others (a
    /// changed drawing) as a duplicate or similar.
    pub fn keeps_duplicate(self) -> bool {
        !matches!(self, Transform::Label | Transform::Crop3)
    }

    /// The name in JSON output.
    pub fn key(self) -> &'static str {
        match self {
            Transform::ResizeHalf => "resize_half",
            Transform::ResizeQuarter => "resize_quarter",
            Transform::Jpeg75 => "jpeg_q75",
            Transform::Jpeg30 => "jpeg_q30",
            Transform::Lines3 => "lines_x3",
            Transform::Pad20 => "pad_20",
            Transform::Rot90 => "rot90",
            Transform::Rot180 => "rot180",
            Transform::Rot270 => "rot270",
            Transform::Mirror => "mirror",
            Transform::Label => "label",
            Transform::Crop3 => "crop_3",
        }
    }

    /// The column header in the human-readable table.
    pub fn label(self) -> &'static str {
        match self {
            Transform::ResizeHalf => "resize½",
            Transform::ResizeQuarter => "resize¼",
            Transform::Jpeg75 => "JPEG75",
            Transform::Jpeg30 => "JPEG30",
            Transform::Lines3 => "lines×3",
            Transform::Pad20 => "pad20%",
            Transform::Rot90 => "rot90",
            Transform::Rot180 => "rot180",
            Transform::Rot270 => "rot270",
            Transform::Mirror => "mirror",
            Transform::Label => "label",
            Transform::Crop3 => "crop3%",
        }
    }

    pub fn apply(self, image: &GrayImage) -> Result<GrayImage, String> {
        Ok(match self {
            Transform::ResizeHalf => resize(image, 2),
            Transform::ResizeQuarter => resize(image, 4),
            Transform::Jpeg75 => jpeg(image, 75)?,
            Transform::Jpeg30 => jpeg(image, 30)?,
            Transform::Lines3 => thicken(image),
            Transform::Pad20 => pad(image, PAD_SHARE),
            Transform::Rot90 => imageops::rotate90(image),
            Transform::Rot180 => imageops::rotate180(image),
            Transform::Rot270 => imageops::rotate270(image),
            Transform::Mirror => imageops::flip_horizontal(image),
            Transform::Label => label(image),
            Transform::Crop3 => crop(image, 0.03),
        })
    }
}

/// Downscales by `divisor` with a triangle (bilinear) filter widened to the
/// scale, so thin lines turn grey rather than vanish, as image editors do.
pub fn resize(image: &GrayImage, divisor: u32) -> GrayImage {
    let (w, h) = image.dimensions();
    imageops::resize(image, (w / divisor).max(1), (h / divisor).max(1), FilterType::Triangle)
}

/// A JPEG round trip at `quality` (1..=100).
pub fn jpeg(image: &GrayImage, quality: u8) -> Result<GrayImage, String> {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality)
        .encode_image(image)
        .map_err(|e| format!("JPEG encoding failed: {e}"))?;
    image::load_from_memory_with_format(&bytes, ImageFormat::Jpeg)
        .map(|decoded| decoded.to_luma8())
        .map_err(|e| format!("JPEG decoding failed: {e}"))
}

/// Lines three times thicker: each pixel takes the darkest value of its
/// 3 × 3 neighbourhood (a min filter, i.e. a dilation of the dark ink), so a
/// 1-pixel line becomes 3 pixels wide.
pub fn thicken(image: &GrayImage) -> GrayImage {
    let (w, h) = image.dimensions();
    let rows = GrayImage::from_fn(w, h, |x, y| {
        let lo = x.saturating_sub(1);
        let hi = (x + 1).min(w - 1);
        Luma([(lo..=hi).map(|xx| image.get_pixel(xx, y).0[0]).min().unwrap_or(255)])
    });
    GrayImage::from_fn(w, h, |x, y| {
        let lo = y.saturating_sub(1);
        let hi = (y + 1).min(h - 1);
        Luma([(lo..=hi).map(|yy| rows.get_pixel(x, yy).0[0]).min().unwrap_or(255)])
    })
}

/// White paper of `share` × width on the left and right, `share` × height
/// on the top and bottom.
pub fn pad(image: &GrayImage, share: f64) -> GrayImage {
    let (w, h) = image.dimensions();
    let px = (f64::from(w) * share).round() as u32;
    let py = (f64::from(h) * share).round() as u32;
    let mut page = GrayImage::from_pixel(w + 2 * px, h + 2 * py, Luma([255]));
    imageops::replace(&mut page, image, i64::from(px), i64::from(py));
    page
}

/// A line of made-up "text" near the bottom right of the page, as a title
/// or a revision note is added: 12 glyphs of strokes, 3% of the height.
/// Below most drawings it widens their ink box, which is the hard case.
pub fn label(image: &GrayImage) -> GrayImage {
    let mut out = image.clone();
    let (w, h) = (f64::from(image.width()), f64::from(image.height()));
    let size = (h * 0.03).max(4.0);
    let (left, top) = (w * 0.55, h * 0.955 - size);
    let mut stroke = |x0: f64, y0: f64, x1: f64, y1: f64| {
        let steps = ((x1 - x0).abs().max((y1 - y0).abs()) * 2.0).ceil().max(1.0) as u32;
        for i in 0..=steps {
            let t = f64::from(i) / f64::from(steps);
            let (x, y) = ((x0 + (x1 - x0) * t) as u32, (y0 + (y1 - y0) * t) as u32);
            if x < image.width() && y < image.height() {
                out.put_pixel(x, y, Luma([0]));
            }
        }
    };
    for glyph in 0..12u32 {
        let x = left + f64::from(glyph) * size * 0.75;
        let (r, b) = (x + size * 0.55, top + size);
        stroke(x, top, x, b);
        match glyph % 4 {
            0 => stroke(x, top, r, top),
            1 => stroke(x, b, r, b),
            2 => stroke(x, top, r, b),
            _ => stroke(r, top, r, b),
        }
    }
    out
}

/// The right and bottom `share` of the page cut off.
pub fn crop(image: &GrayImage, share: f64) -> GrayImage {
    let (w, h) = image.dimensions();
    let keep = |v: u32| ((f64::from(v) * (1.0 - share)).round() as u32).max(1);
    imageops::crop_imm(image, 0, 0, keep(w), keep(h)).to_image()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dark(image: &GrayImage) -> Vec<(u32, u32)> {
        image
            .enumerate_pixels()
            .filter(|(_, _, p)| p.0[0] < 128)
            .map(|(x, y, _)| (x, y))
            .collect()
    }

    fn with_dots(w: u32, h: u32, dots: &[(u32, u32)]) -> GrayImage {
        let mut image = GrayImage::from_pixel(w, h, Luma([255]));
        for &(x, y) in dots {
            image.put_pixel(x, y, Luma([0]));
        }
        image
    }

    #[test]
    fn padding_adds_a_fifth_of_white_on_each_side() {
        let image = GrayImage::from_pixel(100, 50, Luma([0]));
        let padded = Transform::Pad20.apply(&image).unwrap();
        assert_eq!(padded.dimensions(), (140, 70));
        let inked = dark(&padded);
        assert_eq!(inked.len(), 100 * 50);
        assert_eq!(inked.first(), Some(&(20, 10)));
        assert_eq!(inked.last(), Some(&(119, 59)));
        assert!(padded.get_pixel(19, 35).0[0] == 255 && padded.get_pixel(120, 35).0[0] == 255);
    }

    #[test]
    fn rotations_and_mirror_move_pixels_where_expected() {
        let (w, h) = (7, 4);
        let (x, y) = (1, 0);
        let image = with_dots(w, h, &[(x, y)]);
        let cases = [
            (Transform::Rot90, (h, w), (h - 1 - y, x)),
            (Transform::Rot180, (w, h), (w - 1 - x, h - 1 - y)),
            (Transform::Rot270, (h, w), (y, w - 1 - x)),
            (Transform::Mirror, (w, h), (w - 1 - x, y)),
        ];
        for (transform, size, moved) in cases {
            let out = transform.apply(&image).unwrap();
            assert_eq!(out.dimensions(), size, "{transform:?}");
            assert_eq!(dark(&out), vec![moved], "{transform:?}");
        }
    }

    #[test]
    fn thickening_turns_a_one_pixel_line_into_three() {
        let line: Vec<(u32, u32)> = (5..15).map(|x| (x, 10)).collect();
        let thick = thicken(&with_dots(20, 20, &line));
        for x in 4..16 {
            let column: Vec<u32> = (0..20).filter(|&y| thick.get_pixel(x, y).0[0] == 0).collect();
            assert_eq!(column, vec![9, 10, 11], "column {x}");
        }
        assert_eq!(dark(&thick).len(), 12 * 3);
        let corner = thicken(&with_dots(3, 3, &[(0, 0)]));
        assert_eq!(dark(&corner), vec![(0, 0), (1, 0), (0, 1), (1, 1)]);
    }

    #[test]
    fn resizes_and_jpeg_keep_the_ink() {
        let image = with_dots(400, 200, &(0..400).map(|x| (x, 100)).collect::<Vec<_>>());
        let half = Transform::ResizeHalf.apply(&image).unwrap();
        let quarter = Transform::ResizeQuarter.apply(&image).unwrap();
        assert_eq!((half.dimensions(), quarter.dimensions()), ((200, 100), (100, 50)));
        assert!(quarter.pixels().any(|p| p.0[0] < 225), "the line survives as grey");
        for t in [Transform::Jpeg75, Transform::Jpeg30] {
            let out = t.apply(&image).unwrap();
            assert_eq!(out.dimensions(), (400, 200));
            assert!(
                out.get_pixel(200, 100).0[0] < 128 && out.get_pixel(200, 50).0[0] > 200,
                "{t:?}"
            );
        }
        let cropped = Transform::Crop3.apply(&image).unwrap();
        assert_eq!(cropped.dimensions(), (388, 194));
        let labelled = Transform::Label.apply(&image).unwrap();
        assert!(dark(&labelled).len() > dark(&image).len());
        assert!(dark(&labelled).iter().all(|&(x, y)| y == 100 || (x >= 220 && y > 180)));
        let keys: std::collections::HashSet<_> = Transform::ALL.iter().map(|t| t.key()).collect();
        assert_eq!(keys.len(), Transform::ALL.len());
    }
}
