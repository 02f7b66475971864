//! List queries over ID-ordered indexes, as pure functions over "seek"
//! closures (the store answers them from sled; the tests from vectors).
//!
//! Every list index holds `prefix ++ (u64::MAX - id)`: newest first. A page is
//! the intersection of the indexes of the filters given (a leapfrog join: each
//! index in turn is asked for its largest member at or below the candidate),
//! walked downwards from the page token. IDs and creation times are allocated
//! together (see `Store::allocate`), so ID order is creation order and a
//! created-time range is an ID range, found by binary search.

use crate::error::Result;

/// One step of a leapfrog join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The largest ID in every list, at or below the candidate and at or above the floor.
    Found(i64),
    /// No more common IDs.
    End,
    /// The budget ran out: resume at this candidate.
    OutOfBudget(i64),
}

/// The largest ID at or below `at_most` and at or above `floor` that is in all
/// `n` lists; `seek(i, x)` is the largest member of list i at or below x.
/// Every seek costs one unit of `budget`.
pub fn next_common(
    n: usize,
    mut at_most: i64,
    floor: i64,
    budget: &mut usize,
    mut seek: impl FnMut(usize, i64) -> Result<Option<i64>>,
) -> Result<Step> {
    if n == 0 {
        return Ok(Step::End);
    }
    let mut agreed = 0;
    let mut i = 0;
    loop {
        if at_most < floor {
            return Ok(Step::End);
        }
        if *budget == 0 {
            return Ok(Step::OutOfBudget(at_most));
        }
        *budget -= 1;
        match seek(i, at_most)? {
            None => return Ok(Step::End),
            Some(id) if id < floor => return Ok(Step::End),
            Some(id) if id == at_most => agreed += 1,
            Some(id) => {
                at_most = id;
                agreed = 1;
            }
        }
        if agreed >= n {
            return Ok(Step::Found(at_most));
        }
        i = (i + 1) % n;
    }
}

/// The smallest member of an ID-ordered set whose creation time is at or after
/// `t_ms`, where creation time does not decrease with the ID. `at_most(x)` is
/// the largest member at or below x with its creation time; `max_id` bounds
/// the set. O(log max_id) calls.
pub fn first_created_at_or_after(
    t_ms: i64,
    max_id: i64,
    mut at_most: impl FnMut(i64) -> Result<Option<(i64, i64)>>,
) -> Result<Option<i64>> {
    let (mut lo, mut hi) = (1i64, max_id);
    let mut found = None;
    while lo <= hi {
        let mid = lo + (hi - lo) / 2;
        match at_most(mid)? {
            Some((id, ms)) if ms >= t_ms => {
                found = Some(id);
                hi = id - 1;
            }
            _ => lo = mid + 1,
        }
    }
    Ok(found)
}

/// A created-time filter: `after_ms <= create time < before_ms`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeRange {
    pub after_ms: Option<i64>,
    pub before_ms: Option<i64>,
}

impl TimeRange {
    pub fn is_unbounded(&self) -> bool {
        self.after_ms.is_none() && self.before_ms.is_none()
    }
    pub fn contains(&self, ms: i64) -> bool {
        self.after_ms.is_none_or(|a| ms >= a) && self.before_ms.is_none_or(|b| ms < b)
    }
}

/// The ID range `[floor, ceiling]` of a time range over a set as in
/// `first_created_at_or_after`; None when no member can match.
pub fn id_range(
    range: &TimeRange,
    max_id: i64,
    mut at_most: impl FnMut(i64) -> Result<Option<(i64, i64)>>,
) -> Result<Option<(i64, i64)>> {
    let floor = match range.after_ms {
        None => 1,
        Some(t) => match first_created_at_or_after(t, max_id, &mut at_most)? {
            Some(id) => id,
            None => return Ok(None),
        },
    };
    let ceiling = match range.before_ms {
        None => max_id,
        Some(t) => match first_created_at_or_after(t, max_id, &mut at_most)? {
            Some(id) => id - 1,
            None => max_id,
        },
    };
    Ok((floor <= ceiling).then_some((floor, ceiling)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lists are sorted ascending here; the seek finds the largest <= x.
    fn seeker(lists: &[Vec<i64>]) -> impl FnMut(usize, i64) -> Result<Option<i64>> + '_ {
        |i, x| Ok(lists[i].iter().rev().find(|v| **v <= x).copied())
    }

    fn all(lists: &[Vec<i64>], floor: i64) -> Vec<i64> {
        let mut out = Vec::new();
        let mut at = i64::MAX;
        let mut budget = usize::MAX;
        while let Step::Found(id) =
            next_common(lists.len(), at, floor, &mut budget, seeker(lists)).unwrap()
        {
            out.push(id);
            at = id - 1;
        }
        out
    }

    #[test]
    fn leapfrog_intersects() {
        let a: Vec<i64> = (1..=100).collect();
        let b: Vec<i64> = (1..=100).filter(|x| x % 3 == 0).collect();
        let c: Vec<i64> = (1..=100).filter(|x| x % 5 == 0).collect();
        assert_eq!(
            all(std::slice::from_ref(&a), 95),
            vec![100, 99, 98, 97, 96, 95]
        );
        assert_eq!(
            all(&[a.clone(), b.clone(), c.clone()], 1),
            vec![90, 75, 60, 45, 30, 15]
        );
        assert_eq!(all(&[b.clone(), c.clone()], 40), vec![90, 75, 60, 45]);
        assert!(all(&[vec![1, 3], vec![2, 4]], 1).is_empty());
        assert!(all(&[vec![], a], 1).is_empty());
    }

    #[test]
    fn leapfrog_stops_on_budget_and_resumes() {
        let b: Vec<i64> = (1..=1000).filter(|x| x % 2 == 0).collect();
        let c: Vec<i64> = (1..=1000).filter(|x| x % 2 == 1).collect();
        let lists = [b, c];
        let mut budget = 10;
        let step = next_common(2, 1000, 1, &mut budget, seeker(&lists)).unwrap();
        let Step::OutOfBudget(at) = step else {
            panic!("{step:?}")
        };
        assert!(at < 1000 && at > 900);
        assert_eq!(budget, 0);
    }

    #[test]
    fn time_ranges_map_to_id_ranges() {
        // (id, create ms): ids with gaps (other namespaces), equal times.
        let set = [(2, 100), (3, 100), (7, 105), (8, 110), (20, 110), (21, 130)];
        let at_most = |x: i64| Ok(set.iter().rev().find(|(id, _)| *id <= x).copied());
        assert_eq!(
            first_created_at_or_after(100, 21, at_most).unwrap(),
            Some(2)
        );
        assert_eq!(
            first_created_at_or_after(101, 21, at_most).unwrap(),
            Some(7)
        );
        assert_eq!(
            first_created_at_or_after(110, 21, at_most).unwrap(),
            Some(8)
        );
        assert_eq!(first_created_at_or_after(131, 21, at_most).unwrap(), None);
        let r = |a, b| TimeRange {
            after_ms: a,
            before_ms: b,
        };
        assert_eq!(
            id_range(&r(None, None), 21, at_most).unwrap(),
            Some((1, 21))
        );
        assert_eq!(
            id_range(&r(Some(101), Some(110)), 21, at_most).unwrap(),
            Some((7, 7))
        );
        assert_eq!(
            id_range(&r(Some(110), None), 21, at_most).unwrap(),
            Some((8, 21))
        );
        // Nothing before 100: an ID range no member is in.
        assert_eq!(
            id_range(&r(None, Some(100)), 21, at_most).unwrap(),
            Some((1, 1))
        );
        assert_eq!(id_range(&r(Some(200), None), 21, at_most).unwrap(), None);
        assert_eq!(
            id_range(&r(Some(106), Some(109)), 21, at_most).unwrap(),
            None
        );
        assert!(r(Some(1), Some(2)).contains(1) && !r(Some(1), Some(2)).contains(2));
    }
}
