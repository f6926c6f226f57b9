//! What the engine's tests share: a seeded xorshift generator (the same
//! seed gives the same drawings and codes on every machine, without a
//! dependency) and PNG encoding of the rasters they draw.

use image::GrayImage;

use super::raster::Hash256;

/// A `w` × `h` page of a few straight lines of random greys and ends,
/// some of them thicker, and a few grey specks: ink at every darkness.
pub fn scribble(rng: &mut Rng, w: u32, h: u32) -> GrayImage {
    let mut image = GrayImage::from_pixel(w, h, image::Luma([255]));
    for _ in 0..3 + rng.next() % 6 {
        let mut point = || ((rng.next() % u64::from(w)) as f32, (rng.next() % u64::from(h)) as f32);
        let ((x0, y0), (x1, y1)) = (point(), point());
        let (luma, weight) = ((rng.next() % 200) as u8, 1 + (rng.next() % 3) as u32);
        let steps = (x1 - x0).abs().max((y1 - y0).abs()) as u32 + 1;
        for i in 0..=steps {
            let t = i as f32 / steps as f32;
            let (x, y) = ((x0 + (x1 - x0) * t) as u32, (y0 + (y1 - y0) * t) as u32);
            for (dx, dy) in (0..weight).flat_map(|dx| (0..weight).map(move |dy| (dx, dy))) {
                if x + dx < w && y + dy < h {
                    image.put_pixel(x + dx, y + dy, image::Luma([luma]));
                }
            }
        }
    }
    for _ in 0..20 {
        let (x, y) = ((rng.next() % u64::from(w)) as u32, (rng.next() % u64::from(h)) as u32);
        image.put_pixel(x, y, image::Luma([100 + (rng.next() % 150) as u8]));
    }
    image
}

pub fn png(image: &GrayImage) -> Vec<u8> {
    let mut out = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn hash(&mut self) -> Hash256 {
        [self.next(), self.next(), self.next(), self.next()]
    }

    pub fn hex(&mut self) -> String {
        self.hash().iter().map(|w| format!("{w:016x}")).collect()
    }

    /// `code` with `bits` distinct bits flipped.
    pub fn flip(&mut self, code: &Hash256, bits: u32) -> Hash256 {
        let mut out = *code;
        let mut flipped = std::collections::HashSet::new();
        while flipped.len() < bits as usize {
            let bit = (self.next() % 256) as usize;
            if flipped.insert(bit) {
                out[bit / 64] ^= 1 << (bit % 64);
            }
        }
        out
    }
}
