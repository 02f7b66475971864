//! The doorkeeper of the hot cache's memory tier.

/// Admission to memory of hits read from the hits file, as TinyLFU's
/// doorkeeper: a key goes into memory at its second read within a window of
/// about `window` first reads, not at its first. Under draws spread over far
/// more keys than memory holds, almost every read would otherwise put a hit
/// in memory only to evict another before either is asked for again: an
/// allocation kept, an eviction and the CPU cache lines they take, a large
/// part of the cost of a read from the file (`hits-bench` times it). A key
/// asked for again soon, as a pipeline's repeated runs do,
/// still gets there at its second read. Two bitsets of about 8 bits per key
/// of the window, the current one and the one before, so that a key seen
/// just before a turnover still counts; two bits per key.
pub(super) struct Doorkeeper {
    pub(super) current: Vec<u64>,
    pub(super) previous: Vec<u64>,
    pub(super) added: usize,
    pub(super) window: usize,
}

impl Doorkeeper {
    pub(super) fn new(window: usize) -> Self {
        let window = window.max(1);
        let words = (window * 8).next_power_of_two().div_ceil(64);
        Doorkeeper {
            current: vec![0; words],
            previous: vec![0; words],
            added: 0,
            window,
        }
    }

    /// Two bit positions from the tag, a uniform hash already.
    pub(super) fn bits(&self, tag: u64) -> [(usize, u64); 2] {
        let mask = self.current.len() * 64 - 1;
        [tag as usize & mask, (tag >> 32) as usize & mask].map(|b| (b / 64, 1u64 << (b % 64)))
    }

    pub(super) fn contains(set: &[u64], bits: &[(usize, u64); 2]) -> bool {
        bits.iter().all(|(w, m)| set[*w] & m != 0)
    }

    /// Whether `tag` was seen within the window; it is seen from now on.
    pub(super) fn seen(&mut self, tag: u64) -> bool {
        let bits = self.bits(tag);
        if Self::contains(&self.current, &bits) || Self::contains(&self.previous, &bits) {
            return true;
        }
        for (w, m) in bits {
            self.current[w] |= m;
        }
        self.added += 1;
        if self.added >= self.window {
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.fill(0);
            self.added = 0;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_doorkeeper_lets_in_what_it_saw_within_its_window() {
        // A tag's two bits are its bits 0-9 and 32-41 (1,024 bits for a
        // window of 100): `t | t << 32` sets bit t only, apart from 7's.
        let tag = |t: u64| t | t << 32;
        let mut d = Doorkeeper::new(100);
        assert!(!d.seen(tag(7)), "a first read");
        assert!(d.seen(tag(7)), "a second read");
        // 99 more keys turn the window over once: 7 is in the previous set.
        for t in 16..115 {
            assert!(!d.seen(tag(t)));
        }
        assert!(d.seen(tag(7)), "seen in the previous window");
        assert!(d.seen(tag(16)));
        // Another 100: the window turns over again, and 7 is forgotten.
        for t in 200..300 {
            assert!(!d.seen(tag(t)));
        }
        assert!(!d.seen(tag(7)));
        assert!(!d.seen(tag(16)));
    }
}
