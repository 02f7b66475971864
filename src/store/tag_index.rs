//! The hits file's index: where each tag's record is, as a packed offset and
//! length (`hitlog::pack`). At 1M keys a probe is a read of memory in no
//! CPU cache, at every lookup that the memory tier does not answer. A
//! general hash map reads two places for it (its control bytes, then the
//! bucket); this table is open addressing with linear probing over slots of
//! (tag, packed), so that a probe usually reads one cache line, and a table
//! of 2 MiB or more asks the kernel for transparent huge pages, so that the
//! read rarely needs a page walk as well. Tags are uniform hashes (BLAKE3)
//! already: a tag's home slot is its low bits. A packed value of 0 marks an
//! empty slot (a record is never empty).

/// A slot: the tag and its packed value; `EMPTY` when free.
type Slot = [u64; 2];

const EMPTY: Slot = [0, 0];
/// Slots of the smallest table.
const MIN_SLOTS: usize = 1024;

pub struct TagIndex {
    slots: Vec<Slot>,
    len: usize,
}

impl Default for TagIndex {
    fn default() -> Self {
        TagIndex::with_capacity(0)
    }
}

impl TagIndex {
    /// Room for `n` tags before the table grows (it stays at most half full).
    pub fn with_capacity(n: usize) -> Self {
        TagIndex {
            slots: empty_slots(n.saturating_mul(2).max(MIN_SLOTS).next_power_of_two()),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The slot holding `tag`, or the empty slot where it would go.
    fn find(&self, tag: u64) -> usize {
        let mask = self.mask();
        let mut i = tag as usize & mask;
        loop {
            let [t, packed] = self.slots[i];
            if packed == 0 || t == tag {
                return i;
            }
            i = (i + 1) & mask;
        }
    }

    pub fn get(&self, tag: &u64) -> Option<&u64> {
        let slot = &self.slots[self.find(*tag)];
        (slot[1] != 0).then_some(&slot[1])
    }

    pub fn contains_key(&self, tag: &u64) -> bool {
        self.get(tag).is_some()
    }

    /// Sets `tag`'s value; a `packed` of 0 (no record is empty) removes it.
    pub fn insert(&mut self, tag: u64, packed: u64) {
        if packed == 0 {
            self.remove(&tag);
            return;
        }
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let i = self.find(tag);
        if self.slots[i][1] == 0 {
            self.len += 1;
        }
        self.slots[i] = [tag, packed];
    }

    pub fn remove(&mut self, tag: &u64) {
        let mut hole = self.find(*tag);
        if self.slots[hole][1] == 0 {
            return;
        }
        self.len -= 1;
        // Backward shift: move up each later slot of the run whose home is
        // not between the hole and it, so that no probe stops early.
        let mask = self.mask();
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let [t, packed] = self.slots[j];
            if packed == 0 {
                break;
            }
            let home = t as usize & mask;
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.slots[hole] = self.slots[j];
                hole = j;
            }
        }
        self.slots[hole] = EMPTY;
    }

    pub fn clear(&mut self) {
        self.slots.fill(EMPTY);
        self.len = 0;
    }

    /// Every (tag, packed), in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.slots
            .iter()
            .filter(|s| s[1] != 0)
            .map(|&[tag, packed]| (tag, packed))
    }

    fn grow(&mut self) {
        let bigger = empty_slots(self.slots.len() * 2);
        let old = std::mem::replace(&mut self.slots, bigger);
        self.len = 0;
        for [tag, packed] in old {
            if packed != 0 {
                let i = self.find(tag);
                self.slots[i] = [tag, packed];
                self.len += 1;
            }
        }
    }
}

/// `n` empty slots; transparent huge pages asked for where they fit.
fn empty_slots(n: usize) -> Vec<Slot> {
    let mut slots: Vec<Slot> = Vec::with_capacity(n);
    advise_huge_pages(slots.as_ptr() as usize, n * std::mem::size_of::<Slot>());
    slots.resize(n, EMPTY);
    slots
}

/// Asks for transparent huge pages over the 2 MiB-aligned part of
/// [addr, addr + len), before it is first written. Only advice: where the
/// kernel has none to give, or THP is off, nothing changes.
fn advise_huge_pages(addr: usize, len: usize) {
    const HUGE: usize = 2 << 20;
    let start = addr.next_multiple_of(HUGE);
    let end = (addr + len) / HUGE * HUGE;
    if end > start {
        super::os::advise_huge_pages(start, end - start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Random inserts, overwrites and removals against a HashMap, with tags
    /// crowded onto few home slots so that runs wrap and shift.
    #[test]
    fn behaves_as_a_map_under_collisions_removals_and_growth() {
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for crowd in [3u64, 64, u64::MAX] {
            let mut index = TagIndex::default();
            let mut model = HashMap::new();
            for step in 0..20_000u64 {
                let r = next();
                // Tags whose low bits fall on a few home slots (the last
                // ones of the table among them), the high bits distinct.
                let tag = (r >> 32 << 32) | ((r & 0xffff) % crowd).wrapping_sub(2) & 0xffff_ffff;
                match next() % 4 {
                    0 => {
                        index.remove(&tag);
                        model.remove(&tag);
                    }
                    _ => {
                        let packed = step + 1;
                        index.insert(tag, packed);
                        model.insert(tag, packed);
                    }
                }
                if step % 997 == 0 {
                    for (t, p) in &model {
                        assert_eq!(index.get(t), Some(p), "tag {t:#x} at step {step}");
                    }
                }
            }
            assert_eq!(index.len(), model.len());
            let mut all: Vec<_> = index.iter().collect();
            all.sort_unstable();
            let mut want: Vec<_> = model.iter().map(|(t, p)| (*t, *p)).collect();
            want.sort_unstable();
            assert_eq!(all, want);
            for (t, _) in want {
                index.remove(&t);
                assert!(!index.contains_key(&t));
            }
            assert!(index.is_empty() && index.iter().next().is_none());
        }
    }

    #[test]
    fn a_value_of_zero_removes_and_clear_empties() {
        let mut index = TagIndex::with_capacity(4);
        index.insert(7, 9);
        index.insert(7 + 1024, 10);
        assert_eq!(
            (index.get(&7), index.get(&(7 + 1024))),
            (Some(&9), Some(&10))
        );
        index.insert(7, 0);
        assert_eq!((index.get(&7), index.get(&(7 + 1024))), (None, Some(&10)));
        index.clear();
        assert!(index.is_empty() && index.get(&(7 + 1024)).is_none());
    }
}
