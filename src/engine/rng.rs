//! A seeded xorshift generator for the engine's randomised tests: the same
//! seed gives the same drawings and codes on every machine, without a
//! dependency.

use super::raster::Hash256;

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
