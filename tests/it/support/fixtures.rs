//! Drawings made on the spot: distinct PNGs and a small ASCII DXF.

use reqwest::multipart::{Form, Part};

/// A small PNG whose bytes differ for each seed.
pub fn png(seed: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(24, 16, |x, y| {
        let v = (x * 7 + y * 13 + seed * 31) % 256;
        image::Rgb([v as u8, (v * 3 % 256) as u8, seed as u8])
    });
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
