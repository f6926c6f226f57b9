//! Hamming-distance histograms of (query, drawing) pairs and the rates read
//! from them: the share of pairs within a threshold, for one hash or for the
//! rule `dHash ≤ T_d OR pHash ≤ T_p`.

/// The largest Hamming distance between two 256-bit hashes.
pub const MAX: u32 = 256;
const BINS: usize = MAX as usize + 1;

/// The distances of one (query, drawing) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dist {
    /// Trimmed dHash-256, the least over the query's 8 orientations.
    pub dhash: u16,
    /// Trimmed pHash-256, the least over the query's 8 orientations.
    pub phash: u16,
    /// Trimmed dHash-256 of the query as it is (identity orientation only).
    pub dhash_one: u16,
    pub phash_one: u16,
    /// dHash-256 of the untrimmed page, identity orientation only.
    pub page: u16,
}

impl Dist {
    /// The distances of several pairs at once: each the least over them,
    /// so "some pair is within T" reads as "this is within T", also for the
    /// OR rule (∃i: dᵢ ≤ a ∨ pᵢ ≤ b ⇔ min d ≤ a ∨ min p ≤ b).
    pub fn min(self, other: Dist) -> Dist {
        Dist {
            dhash: self.dhash.min(other.dhash),
            phash: self.phash.min(other.phash),
            dhash_one: self.dhash_one.min(other.dhash_one),
            phash_one: self.phash_one.min(other.phash_one),
            page: self.page.min(other.page),
        }
    }

    fn get(&self, metric: Metric) -> u16 {
        match metric {
            Metric::Dhash => self.dhash,
            Metric::Phash => self.phash,
            Metric::DhashOne => self.dhash_one,
            Metric::PhashOne => self.phash_one,
            Metric::Page => self.page,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Dhash = 0,
    Phash = 1,
    DhashOne = 2,
    PhashOne = 3,
    Page = 4,
}

impl Metric {
    const ALL: [Metric; 5] = [
        Metric::Dhash,
        Metric::Phash,
        Metric::DhashOne,
        Metric::PhashOne,
        Metric::Page,
    ];
}

/// Cumulative counts of a set of pairs; a pair without distances (a query
/// that could not be hashed) counts in the total and is never within.
#[derive(Debug, Clone)]
pub struct Stats {
    n: u64,
    /// Per metric: pairs at distance ≤ t.
    within: [Vec<u64>; 5],
    /// Pairs with dHash ≤ a and pHash ≤ b, at a * BINS + b; 8 probes.
    joint: Vec<u64>,
    /// The same with the identity orientation only.
    joint_one: Vec<u64>,
}

impl Stats {
    pub fn new(dists: impl IntoIterator<Item = Option<Dist>>) -> Stats {
        let mut n = 0;
        let mut within: [Vec<u64>; 5] = std::array::from_fn(|_| vec![0; BINS]);
        let mut joint = vec![0; BINS * BINS];
        let mut joint_one = vec![0; BINS * BINS];
        for dist in dists {
            n += 1;
            let Some(d) = dist else { continue };
            for metric in Metric::ALL {
                within[metric as usize][usize::from(d.get(metric))] += 1;
            }
            joint[usize::from(d.dhash) * BINS + usize::from(d.phash)] += 1;
            joint_one[usize::from(d.dhash_one) * BINS + usize::from(d.phash_one)] += 1;
        }
        for counts in &mut within {
            for t in 1..BINS {
                counts[t] += counts[t - 1];
            }
        }
        for table in [&mut joint, &mut joint_one] {
            for a in 0..BINS {
                for b in 0..BINS {
                    let up = if a > 0 { table[(a - 1) * BINS + b] } else { 0 };
                    let left = if b > 0 { table[a * BINS + b - 1] } else { 0 };
                    let diagonal = if a > 0 && b > 0 {
                        table[(a - 1) * BINS + b - 1]
                    } else {
                        0
                    };
                    table[a * BINS + b] += up + left - diagonal;
                }
            }
        }
        Stats {
            n,
            within,
            joint,
            joint_one,
        }
    }

    pub fn len(&self) -> u64 {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    fn share(&self, count: u64) -> f64 {
        if self.n == 0 { 0.0 } else { count as f64 / self.n as f64 }
    }

    /// Pairs at distance ≤ `t`.
    pub fn count_within(&self, metric: Metric, t: u32) -> u64 {
        self.within[metric as usize][t.min(MAX) as usize]
    }

    /// Share of pairs at distance ≤ `t`.
    pub fn rate(&self, metric: Metric, t: u32) -> f64 {
        self.share(self.count_within(metric, t))
    }

    /// Share of pairs with dHash ≤ `td` OR pHash ≤ `tp`; `None` leaves that
    /// side of the rule out. `one_probe` reads the identity orientation only.
    pub fn either(&self, td: Option<u32>, tp: Option<u32>, one_probe: bool) -> f64 {
        let (d_metric, p_metric, joint) = if one_probe {
            (Metric::DhashOne, Metric::PhashOne, &self.joint_one)
        } else {
            (Metric::Dhash, Metric::Phash, &self.joint)
        };
        let d = td.map_or(0, |t| self.count_within(d_metric, t));
        let p = tp.map_or(0, |t| self.count_within(p_metric, t));
        let both = match (td, tp) {
            (Some(a), Some(b)) => joint[a.min(MAX) as usize * BINS + b.min(MAX) as usize],
            _ => 0,
        };
        self.share(d + p - both)
    }

    /// The smallest distance within which at least `q` of the pairs lie.
    pub fn quantile(&self, metric: Metric, q: f64) -> Option<u32> {
        let needed = ((q * self.n as f64).ceil() as u64).max(1);
        (0..=MAX).find(|&t| self.count_within(metric, t) >= needed)
    }
}

/// The largest threshold in 0..=MAX where `rate` (non-decreasing) stays at
/// or below `target`; `None` when even 0 exceeds it.
pub fn largest(target: f64, rate: impl Fn(u32) -> f64) -> Option<u32> {
    let mut best = None;
    for t in 0..=MAX {
        if rate(t) > target {
            break;
        }
        best = Some(t);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dist(d: u16, p: u16) -> Option<Dist> {
        Some(Dist {
            dhash: d,
            phash: p,
            dhash_one: d + 1,
            phash_one: p + 1,
            page: d,
        })
    }

    #[test]
    fn rates_count_missing_pairs_as_misses_and_the_or_rule_counts_each_pair_once() {
        let stats = Stats::new([dist(0, 50), dist(5, 5), dist(20, 90), None]);
        assert_eq!(stats.len(), 4);
        assert_eq!(stats.rate(Metric::Dhash, 5), 0.5);
        assert_eq!(stats.rate(Metric::DhashOne, 5), 0.25);
        assert_eq!(stats.either(Some(5), Some(50), false), 0.5);
        assert_eq!(stats.either(Some(0), Some(5), false), 0.5);
        assert_eq!(stats.either(None, Some(90), false), 0.75);
        assert_eq!(stats.either(Some(19), None, false), 0.5);
        assert_eq!(stats.either(None, None, false), 0.0);
        assert_eq!(stats.either(Some(0), Some(5), true), 0.0);
        assert_eq!(stats.quantile(Metric::Dhash, 0.5), Some(5));
        assert_eq!(stats.quantile(Metric::Dhash, 1.0), None);
        assert_eq!(largest(0.3, |t| stats.rate(Metric::Dhash, t)), Some(4));
        assert_eq!(largest(0.1, |t| stats.rate(Metric::Dhash, t)), None);
    }
}
