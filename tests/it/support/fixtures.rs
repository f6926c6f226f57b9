//! Drawings made on the spot: distinct PNGs and a small ASCII DXF.

use reqwest::multipart::{Form, Part};

/// A small line drawing, a different one for each seed: a frame and a few
/// lines placed by the seed, black on white.
pub fn png(seed: u32) -> Vec<u8> {
    const SIZE: u32 = 96;
    let mut state = u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % u64::from(SIZE - 8)) as i64 + 4
    };
    let mut image = image::RgbImage::from_pixel(SIZE, SIZE, image::Rgb([255, 255, 255]));
    let mut ink = |x: i64, y: i64| image.put_pixel(x as u32, y as u32, image::Rgb([0, 0, 0]));
    for i in 2..(SIZE as i64 - 2) {
        for (x, y) in [(i, 2), (i, SIZE as i64 - 3), (2, i), (SIZE as i64 - 3, i)] {
            ink(x, y);
        }
    }
    for _ in 0..6 {
        let (x0, y0, x1, y1) = (next(), next(), next(), next());
        let steps = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
        for t in 0..=steps {
            ink(x0 + (x1 - x0) * t / steps, y0 + (y1 - y0) * t / steps);
        }
    }
    let mut out = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("encode png");
    out
}

pub const DXF: &str = "0\nSECTION\n2\nENTITIES\n0\nLINE\n8\n0\n10\n0\n20\n0\n11\n10\n21\n5\n0\nENDSEC\n0\nEOF\n";

pub fn form(bytes: Vec<u8>, name: &str) -> Form {
    Form::new().part("file", Part::bytes(bytes).file_name(name.to_string()))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    dedup2d::engine::sha256_hex(bytes)
}
