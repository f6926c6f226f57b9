//! How an index finds a drawing's slot (its position in every per-drawing
//! array) by id or by an L1 key: ids interned in one string, and
//! open-addressing tables of bare u32 slots that read the keys from arrays
//! by slot. A `HashMap<String, …>` costs a bucket of 24 bytes or more and
//! an allocation per key; a table here costs 5–10 bytes a key (between half
//! and 7/8 full) beside the key itself.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

/// Slots found by a 64-bit hash of their key, by linear probing. The table
/// keeps only the slots; its owner says whether a slot's key is the one
/// sought, and gives each slot's hash when the table grows.
#[derive(Debug, Default, Clone)]
struct SlotTable {
    buckets: Vec<u32>,
    /// Per bucket: EMPTY, DELETED, or TAGGED with 7 bits of the hash so
    /// that most probes settle without reading a key.
    tags: Vec<u8>,
    /// Buckets not EMPTY: deleted ones lengthen probes until a rehash.
    used: usize,
}

const EMPTY: u8 = 0;
const DELETED: u8 = 1;
const TAGGED: u8 = 0x80;

impl SlotTable {
    /// From the low bits: the high ones pick the bucket, so neighbours
    /// share them.
    fn tag(hash: u64) -> u8 {
        TAGGED | (hash & 0x7f) as u8
    }

    /// A table of any length, not only powers of two, so it can stay
    /// between half and 7/8 full: a bucket is 5 bytes.
    fn home(&self, hash: u64) -> usize {
        ((u128::from(hash) * self.buckets.len() as u128) >> 64) as usize
    }

    fn after(&self, b: usize) -> usize {
        if b + 1 == self.buckets.len() { 0 } else { b + 1 }
    }

    /// The bucket of the slot whose key `is` the one sought.
    fn find(&self, hash: u64, is: impl Fn(u32) -> bool) -> Option<usize> {
        if self.buckets.is_empty() {
            return None;
        }
        let (tag, mut b) = (Self::tag(hash), self.home(hash));
        loop {
            match self.tags[b] {
                EMPTY => return None,
                t if t == tag && is(self.buckets[b]) => return Some(b),
                _ => b = self.after(b),
            }
        }
    }

    fn delete(&mut self, bucket: usize) {
        self.tags[bucket] = DELETED;
    }

    /// Adds `slot`, whose key must not be in the table yet; `live` counts
    /// the slots held with this one.
    fn insert(&mut self, hash: u64, slot: u32, live: usize, hash_of: &impl Fn(u32) -> u64) {
        if (self.used + 1) * 8 > self.buckets.len() * 7 {
            self.rehash(live, hash_of);
        }
        let mut b = self.home(hash);
        while self.tags[b] >= TAGGED {
            b = self.after(b);
        }
        self.used += usize::from(self.tags[b] == EMPTY);
        self.tags[b] = Self::tag(hash);
        self.buckets[b] = slot;
    }

    /// Room for `live` slots half full, so the table grows or sheds its
    /// deleted buckets well before probes get long.
    fn rehash(&mut self, live: usize, hash_of: &impl Fn(u32) -> u64) {
        let len = (live * 2).max(16);
        let old = std::mem::replace(&mut self.buckets, vec![0; len]);
        let tags = std::mem::replace(&mut self.tags, vec![EMPTY; len]);
        self.used = 0;
        for (slot, _) in old.into_iter().zip(tags).filter(|(_, t)| *t >= TAGGED) {
            self.insert(hash_of(slot), slot, live, hash_of);
        }
    }

    fn bytes(&self) -> usize {
        4 * self.buckets.capacity() + self.tags.capacity()
    }
}

/// Drawing ids, interned: one string holds them all and a slot finds its id
/// by offset. A dead slot keeps its text until the owner compacts.
#[derive(Debug, Default, Clone)]
pub(crate) struct Ids {
    text: String,
    /// Where each slot's id ends in `text`; it starts where the previous ends.
    ends: Vec<u64>,
    table: SlotTable,
    hasher: RandomState,
}

fn id_at<'a>(text: &'a str, ends: &[u64], slot: u32) -> &'a str {
    let slot = slot as usize;
    let start = if slot == 0 { 0 } else { ends[slot - 1] as usize };
    &text[start..ends[slot] as usize]
}

impl Ids {
    pub(crate) fn with_capacity(ids: usize, text: usize) -> Ids {
        Ids {
            text: String::with_capacity(text),
            ends: Vec::with_capacity(ids),
            ..Ids::default()
        }
    }

    pub(crate) fn get(&self, slot: u32) -> &str {
        id_at(&self.text, &self.ends, slot)
    }

    /// Appends `id` as the next slot and maps it; `live` counts the ids
    /// mapped with this one. The id must not be mapped yet.
    pub(crate) fn push(&mut self, id: &str, live: usize) -> u32 {
        let slot = u32::try_from(self.ends.len())
            .ok()
            .filter(|&s| s < u32::MAX)
            .expect("an index holds fewer than 2^32 - 1 slots");
        if self.text.capacity() < self.text.len() + id.len() {
            self.text.reserve_exact(id.len().max(self.text.capacity() / 8));
        }
        self.text.push_str(id);
        room_for(&mut self.ends, 1);
        self.ends.push(self.text.len() as u64);
        let (text, ends, hasher) = (&self.text, &self.ends, &self.hasher);
        let hash_of = |s: u32| hasher.hash_one(id_at(text, ends, s));
        self.table.insert(hash_of(slot), slot, live, &hash_of);
        slot
    }

    pub(crate) fn find(&self, id: &str) -> Option<u32> {
        let b = self.table.find(self.hasher.hash_one(id), |s| self.get(s) == id)?;
        Some(self.table.buckets[b])
    }

    /// Unmaps `id`, returning its slot.
    pub(crate) fn take(&mut self, id: &str) -> Option<u32> {
        let b = self.table.find(self.hasher.hash_one(id), |s| self.get(s) == id)?;
        self.table.delete(b);
        Some(self.table.buckets[b])
    }

    /// The ids of the `kept` slots, renumbered from 0 in that order.
    pub(crate) fn kept(&self, kept: &[u32]) -> Ids {
        let mut ids = Ids {
            hasher: self.hasher.clone(),
            ..Ids::default()
        };
        let text: usize = kept.iter().map(|&s| self.get(s).len()).sum();
        ids.text.reserve_exact(text);
        ids.ends.reserve_exact(kept.len());
        for (live, &slot) in kept.iter().enumerate() {
            ids.push(self.get(slot), live + 1);
        }
        ids
    }

    pub(crate) fn bytes(&self) -> usize {
        self.text.capacity() + 8 * self.ends.capacity() + self.table.bytes()
    }
}

/// Slots by a 64-bit key, any number of slots a key: the table finds the
/// newest slot of each key, and a slot that shares its key with older ones
/// links to the next older one, so a library that holds one file many
/// times still inserts in O(1). Those links are few, and kept apart.
#[derive(Debug, Default, Clone)]
pub(crate) struct Keyed {
    /// By slot, up to the highest slot with a key: a table of DXF geometry
    /// costs nothing in a library of rasters.
    keys: Vec<u64>,
    /// A bit per slot that has a key.
    has: Vec<u64>,
    /// The next older slot of the same key.
    older: HashMap<u32, u32>,
    /// Keys in the table, a bucket each.
    distinct: usize,
    table: SlotTable,
}

impl Keyed {
    pub(crate) fn with_capacity(slots: usize) -> Keyed {
        Keyed {
            keys: Vec::with_capacity(slots),
            has: Vec::with_capacity(slots.div_ceil(64)),
            ..Keyed::default()
        }
    }

    pub(crate) fn contains(&self, slot: u32) -> bool {
        let slot = slot as usize;
        self.has.get(slot / 64).is_some_and(|w| w >> (slot % 64) & 1 == 1)
    }

    /// Keys `slot`, which must not have a key yet.
    pub(crate) fn insert(&mut self, slot: u32, key: u64) {
        let at = slot as usize;
        if self.keys.len() <= at {
            let more = at + 1 - self.keys.len();
            room_for(&mut self.keys, more);
            self.keys.resize(at + 1, 0);
            self.has.resize(at / 64 + 1, 0);
        }
        self.keys[at] = key;
        self.has[at / 64] |= 1 << (at % 64);
        let keys = &self.keys;
        match self.table.find(key, |s| keys[s as usize] == key) {
            Some(b) => {
                self.older.insert(slot, self.table.buckets[b]);
                self.table.buckets[b] = slot;
            }
            None => {
                self.distinct += 1;
                self.table.insert(key, slot, self.distinct, &|s| keys[s as usize]);
            }
        }
    }

    /// Unkeys `slot`; false if it had no key. Walks the slots of its key
    /// when it is not the newest.
    pub(crate) fn remove(&mut self, slot: u32) -> bool {
        if !self.contains(slot) {
            return false;
        }
        let at = slot as usize;
        self.has[at / 64] &= !(1 << (at % 64));
        let key = self.keys[at];
        let keys = &self.keys;
        let b = self
            .table
            .find(key, |s| keys[s as usize] == key)
            .expect("a keyed slot is in the table");
        let older = self.older.remove(&slot);
        let newest = self.table.buckets[b];
        if newest == slot {
            match older {
                Some(older) => self.table.buckets[b] = older,
                None => {
                    self.table.delete(b);
                    self.distinct -= 1;
                }
            }
            return true;
        }
        let mut newer = newest;
        while self.older[&newer] != slot {
            newer = self.older[&newer];
        }
        match older {
            Some(older) => self.older.insert(newer, older),
            None => self.older.remove(&newer),
        };
        true
    }

    /// The slots keyed `key`, newest first.
    pub(crate) fn slots(&self, key: u64) -> impl Iterator<Item = u32> + '_ {
        let newest = self
            .table
            .find(key, |s| self.keys[s as usize] == key)
            .map(|b| self.table.buckets[b]);
        std::iter::successors(newest, |s| self.older.get(s).copied())
    }

    /// The keys of the `kept` slots, renumbered from 0 in that order.
    pub(crate) fn kept(&self, kept: &[u32]) -> Keyed {
        let mut keyed = Keyed::with_capacity(if self.keys.is_empty() { 0 } else { kept.len() });
        for (slot, &old) in kept.iter().enumerate() {
            if self.contains(old) {
                keyed.insert(slot as u32, self.keys[old as usize]);
            }
        }
        keyed
    }

    /// With `older` as hashbrown sizes it, which it does not report: 8/7
    /// buckets per element of capacity, each 8 bytes and a control byte.
    pub(crate) fn bytes(&self) -> usize {
        let capacity = self.older.capacity();
        let buckets = if capacity < 8 {
            capacity + usize::from(capacity > 0)
        } else {
            capacity / 7 * 8
        };
        8 * (self.keys.capacity() + self.has.capacity()) + 9 * buckets + self.table.bytes()
    }
}

/// Makes room for `more` elements, growing by at least an eighth: growing
/// L2's arrays by exactly what each merge needed reallocated them every
/// time, and the heap holes cost a third more resident memory; doubling
/// leaves up to half the capacity unused.
pub(crate) fn room_for<T>(vec: &mut Vec<T>, more: usize) {
    if vec.capacity() < vec.len() + more {
        let target = (vec.len() + more).max(vec.capacity() + vec.capacity() / 8);
        vec.reserve_exact(target - vec.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_survive_rehashes_of_deleted_buckets() {
        let mut ids = Ids::default();
        let mut live = 0;
        for i in 0..3000 {
            live += 1;
            assert_eq!(ids.push(&format!("x{i}"), live), i);
        }
        // Unmapped and mapped anew under other ids, so deleted buckets pile up.
        for i in 0..3000 {
            assert_eq!(ids.take(&format!("x{i}")), Some(i));
            assert_eq!(ids.push(&format!("y{i}"), live), 3000 + i);
        }
        for i in 0..3000 {
            assert_eq!(ids.find(&format!("x{i}")), None);
            assert_eq!(ids.find(&format!("y{i}")), Some(3000 + i));
            assert_eq!(ids.get(3000 + i), format!("y{i}"));
        }
        let kept: Vec<u32> = (3000..6000).rev().collect();
        let compacted = ids.kept(&kept);
        assert_eq!(compacted.find("y2999"), Some(0));
        assert_eq!(compacted.find("y0"), Some(2999));
        assert_eq!(compacted.find("x0"), None);
    }

    fn slots(keyed: &Keyed, key: u64) -> Vec<u32> {
        keyed.slots(key).collect()
    }

    #[test]
    fn keys_with_many_slots_unlink_any_of_them() {
        let mut keyed = Keyed::default();
        for slot in 0..2000 {
            keyed.insert(slot, u64::from(slot % 7).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
        let key = |k: u64| k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        assert_eq!(slots(&keyed, key(3)).len(), 286);
        // Newest, oldest and a middle one of a key.
        for slot in [1998, 3, 1001] {
            assert!(keyed.remove(slot));
            assert!(!keyed.remove(slot));
            assert!(!slots(&keyed, key(u64::from(slot % 7))).contains(&slot));
        }
        assert_eq!(slots(&keyed, key(3)).len(), 284);
        for slot in (0..2000).filter(|s| s % 7 == 5) {
            keyed.remove(slot);
        }
        assert!(slots(&keyed, key(5)).is_empty());
        assert_eq!(slots(&keyed, key(6)).first(), Some(&1994));
        assert!(!keyed.contains(1001) && keyed.contains(1000));
    }

    #[test]
    fn a_table_keeps_only_what_has_keys() {
        let mut keyed = Keyed::default();
        assert_eq!(keyed.bytes(), 0);
        assert!(!keyed.contains(10));
        assert!(!keyed.remove(10));
        keyed.insert(10, 42);
        keyed.insert(70, 42);
        keyed.insert(71, 43);
        assert_eq!(slots(&keyed, 42), [70, 10]);
        let compacted = keyed.kept(&[70, 71, 5]);
        assert_eq!(slots(&compacted, 42), [0]);
        assert_eq!(slots(&compacted, 43), [1]);
        assert!(!compacted.contains(2));
    }
}
