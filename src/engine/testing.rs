//! What the engine's tests share: a seeded xorshift generator (the same
//! seed gives the same drawings and codes on every machine, without a
//! dependency) and PNG encoding of the rasters they draw.

use image::GrayImage;

use super::raster::Hash256;

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
