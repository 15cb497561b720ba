//! Sets of sequence numbers kept as sorted, disjoint, inclusive ranges: which records of a
//! lane were counted as lost already, or are known absent. Few ranges in practice (damage
//! and expiry come in runs), so a sorted `Vec` does.

/// A set of sequence numbers as sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SeqSet(Vec<(u64, u64)>);

impl SeqSet {
    /// Numbers of the set within `from..=to`.
    pub(crate) fn count_in(&self, from: u64, to: u64) -> u64 {
        if from > to {
            return 0;
        }
        self.0
            .iter()
            .map(|&(a, b)| {
                let (lo, hi) = (a.max(from), b.min(to));
                if lo <= hi { hi - lo + 1 } else { 0 }
            })
            .sum()
    }

    /// Adds `from..=to`.
    pub(crate) fn insert(&mut self, from: u64, to: u64) {
        if from > to {
            return;
        }
        let (mut lo, mut hi) = (from, to);
        let mut out = Vec::with_capacity(self.0.len() + 1);
        let mut placed = false;
        for &(a, b) in &self.0 {
            if b.saturating_add(1) < lo {
                out.push((a, b));
            } else if hi.saturating_add(1) < a {
                if !placed {
                    out.push((lo, hi));
                    placed = true;
                }
                out.push((a, b));
            } else {
                lo = lo.min(a);
                hi = hi.max(b);
            }
        }
        if !placed {
            out.push((lo, hi));
        }
        self.0 = out;
    }

    /// Adds the numbers of `from..=to` that are in neither this set nor `other`; returns
    /// how many were added.
    pub(crate) fn insert_new(&mut self, from: u64, to: u64, other: &SeqSet) -> u64 {
        if from > to {
            return 0;
        }
        // The parts of from..=to not covered by either set.
        let mut covered: Vec<(u64, u64)> = self
            .0
            .iter()
            .chain(&other.0)
            .filter(|&&(a, b)| b >= from && a <= to)
            .map(|&(a, b)| (a.max(from), b.min(to)))
            .collect();
        covered.sort_unstable();
        let mut gaps = Vec::new();
        let mut next = from;
        let mut done = false;
        for (a, b) in covered {
            if a > next {
                gaps.push((next, a - 1));
            }
            if b >= to {
                done = true;
                break;
            }
            next = next.max(b + 1);
        }
        if !done && next <= to {
            gaps.push((next, to));
        }
        let mut added = 0;
        for (a, b) in gaps {
            added += b - a + 1;
            self.insert(a, b);
        }
        added
    }

    /// Removes every number up to and including `through`.
    pub(crate) fn remove_through(&mut self, through: u64) {
        self.0.retain_mut(|(a, b)| {
            *a = (*a).max(through.saturating_add(1));
            *a <= *b && *b > through
        });
    }

    /// Removes `from..=to`.
    pub(crate) fn remove(&mut self, from: u64, to: u64) {
        if from > to {
            return;
        }
        let mut out = Vec::with_capacity(self.0.len() + 1);
        for &(a, b) in &self.0 {
            if b < from || a > to {
                out.push((a, b));
                continue;
            }
            if a < from {
                out.push((a, from - 1));
            }
            if b > to {
                out.push((to + 1, b));
            }
        }
        self.0 = out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_count_and_split() {
        let mut s = SeqSet::default();
        s.insert(5, 7);
        s.insert(10, 10);
        s.insert(8, 9);
        assert_eq!(s.0, vec![(5, 10)]);
        assert_eq!(s.count_in(0, 100), 6);
        assert_eq!(s.count_in(6, 8), 3);
        s.remove(7, 8);
        assert_eq!(s.0, vec![(5, 6), (9, 10)]);
        s.remove_through(5);
        assert_eq!(s.0, vec![(6, 6), (9, 10)]);
        s.insert(1, 2);
        assert_eq!(s.0, vec![(1, 2), (6, 6), (9, 10)]);
        s.remove_through(u64::MAX);
        assert!(s.0.is_empty());
    }

    #[test]
    fn insert_new_adds_only_what_neither_set_holds() {
        let mut counted = SeqSet::default();
        let mut absent = SeqSet::default();
        absent.insert(3, 4);
        counted.insert(7, 7);
        assert_eq!(counted.insert_new(1, 10, &absent), 7, "1,2,5,6,8,9,10");
        assert_eq!(counted.insert_new(1, 10, &absent), 0, "all counted now");
        assert_eq!(counted.0, vec![(1, 2), (5, 10)]);
        assert_eq!(counted.insert_new(11, 11, &absent), 1);
        assert_eq!(counted.insert_new(5, 4, &absent), 0, "empty range");
        let mut s = SeqSet::default();
        assert_eq!(s.insert_new(u64::MAX - 1, u64::MAX, &absent), 2);
    }
}
