//! Drawings made on the spot: distinct PNGs and a small ASCII DXF.

use base64::Engine as _;
use dedup2d::jobs::Payload;
use dedup2d::store::FileRef;
use reqwest::multipart::{Form, Part};

/// A job payload for the local tenant's `q.png`, carrying the file by
/// reference, inline, both or neither.
pub fn payload(file_ref: Option<FileRef>, inline: Option<&[u8]>) -> Payload {
    Payload {
        tenant_id: dedup2d::api::LOCAL_TENANT.into(),
        file_name: "q.png".into(),
        content_type: "image/png".into(),
        file_ref,
        file_bytes_b64: inline.map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
        request_params: Default::default(),
        callback_url: None,
        geom_json: None,
    }
}

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

/// The geometry of [`DXF`] as `geom_json`.
pub const GEOM_JSON: &str = r#"{"entities": [{"type": "line", "start": [0, 0], "end": [10, 5]}]}"#;

/// A bracket: a plate with two holes, and the same with one hole `bigger`,
/// as `geom_json` entities.
pub fn bracket_geometry(bigger: bool) -> serde_json::Value {
    serde_json::json!({"entities": [
        {"type": "polyline", "points": [[0, 0], [120, 0], [120, 50], [0, 50]], "closed": true},
        {"type": "circle", "center": [25, 25], "radius": 10},
        {"type": "circle", "center": [95, 25], "radius": if bigger { 18 } else { 10 }},
        {"type": "line", "start": [50, 10], "end": [70, 40]},
    ]})
}

/// The bracket as an ASCII DXF.
pub fn bracket_dxf() -> Vec<u8> {
    let mut dxf = String::from("0\nSECTION\n2\nENTITIES\n");
    dxf += "0\nPOLYLINE\n8\n0\n66\n1\n70\n1\n10\n0\n20\n0\n30\n0\n";
    for (x, y) in [(0, 0), (120, 0), (120, 50), (0, 50)] {
        dxf += &format!("0\nVERTEX\n8\n0\n10\n{x}\n20\n{y}\n30\n0\n");
    }
    dxf += "0\nSEQEND\n8\n0\n";
    for x in [25, 95] {
        dxf += &format!("0\nCIRCLE\n8\n0\n10\n{x}\n20\n25\n40\n10\n");
    }
    dxf += "0\nLINE\n8\n0\n10\n50\n20\n10\n11\n70\n21\n40\n0\nENDSEC\n0\nEOF\n";
    dxf.into_bytes()
}

/// A PNG of a DXF drawn by the engine's renderer.
pub fn png_of_dxf(dxf: &[u8]) -> Vec<u8> {
    let options = dedup2d::engine::Limits::default().render_options(800);
    let image = dedup2d::engine::render::render_dxf(dxf, &options).expect("render");
    let mut out = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("encode png");
    out
}

pub fn form(bytes: Vec<u8>, name: &str) -> Form {
    Form::new().part("file", Part::bytes(bytes).file_name(name.to_string()))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    dedup2d::engine::sha256_hex(bytes)
}
