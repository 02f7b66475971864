//! The cache policy (docs/api.md, "The cache policy"): whether a lookup may
//! read the cache, and whether a recorded execution may be served. Pure
//! functions over plain values.

use crate::error::Error;
use crate::proto::{CachePolicy, Trigger};

/// Whether the cache may be read for a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Enabled,
    /// Disabled, with the reason in words.
    Disabled(String),
}

/// An explicit `enabled` always wins; otherwise PIPELINE (and unspecified) enable
/// the cache and MANUAL, RESTART and RESUME disable it.
pub fn decide(policy: Option<&CachePolicy>) -> Result<Decision, Error> {
    let Some(policy) = policy else {
        return Ok(Decision::Enabled);
    };
    let trigger = Trigger::try_from(policy.trigger)
        .map_err(|_| Error::invalid(format!("policy.trigger: unknown value {}", policy.trigger)))?;
    Ok(match (policy.enabled, trigger) {
        (Some(true), _) => Decision::Enabled,
        (Some(false), _) => Decision::Disabled("disabled explicitly (policy.enabled=false)".into()),
        (None, Trigger::Unspecified | Trigger::Pipeline) => Decision::Enabled,
        (None, t) => Decision::Disabled(format!(
            "disabled by trigger {} (set policy.enabled=true to read the cache anyway)",
            trigger_name(t)
        )),
    })
}

fn trigger_name(t: Trigger) -> &'static str {
    match t {
        Trigger::Unspecified => "UNSPECIFIED",
        Trigger::Pipeline => "PIPELINE",
        Trigger::Manual => "MANUAL",
        Trigger::Restart => "RESTART",
        Trigger::Resume => "RESUME",
    }
}

/// Why a recorded execution cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ineligible {
    /// Completed longer ago than the lookup's max_staleness.
    Stale,
    /// Past its own cache_ttl.
    TtlExpired,
    /// An output artifact is no longer LIVE.
    OutputsDeleted,
    /// Invalidated by key, execution, artifact or component.
    Invalidated,
    /// Written, but its flush has not completed (`store::unflushed`).
    Unflushed,
}

impl Ineligible {
    pub fn describe(self) -> &'static str {
        match self {
            Ineligible::Stale => "stale (completed before policy.max_staleness)",
            Ineligible::TtlExpired => "ttl expired (completion + cache_ttl has passed)",
            Ineligible::OutputsDeleted => "outputs deleted (an output artifact is not LIVE)",
            Ineligible::Invalidated => "invalidated",
            Ineligible::Unflushed => "not yet durable (its write's flush has not completed)",
        }
    }
}

/// What the eligibility rules look at for one recorded execution.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub completed_ms: i64,
    pub ttl_ms: Option<i64>,
    pub outputs_live: bool,
    pub invalidated: bool,
}

/// How far ahead of the clock a recorded time may be and still count as
/// "now" (clocks of replicas differ a little).
pub const FUTURE_TOLERANCE_MS: i64 = 60_000;

/// The age at `now_ms` of something recorded at `then_ms`. A time further
/// ahead than `FUTURE_TOLERANCE_MS` (written while the clock ran ahead) is
/// as old as it is far ahead, so that it does not stay young, and servable
/// under any TTL, until the clock catches up.
pub fn age_ms(now_ms: i64, then_ms: i64) -> i64 {
    let age = now_ms.saturating_sub(then_ms);
    if age < -FUTURE_TOLERANCE_MS {
        age.saturating_neg()
    } else {
        age.max(0)
    }
}

/// Whether a candidate may be served at `now_ms` under `max_staleness_ms`.
pub fn eligibility(
    c: &Candidate,
    now_ms: i64,
    max_staleness_ms: Option<i64>,
) -> Result<(), Ineligible> {
    if c.invalidated {
        return Err(Ineligible::Invalidated);
    }
    let age = age_ms(now_ms, c.completed_ms);
    if matches!(max_staleness_ms, Some(max) if age > max) {
        return Err(Ineligible::Stale);
    }
    if matches!(c.ttl_ms, Some(ttl) if age > ttl) {
        return Err(Ineligible::TtlExpired);
    }
    if !c.outputs_live {
        return Err(Ineligible::OutputsDeleted);
    }
    Ok(())
}

/// The newest-first scan of a key's entries: the first servable one is the
/// hit; a stale one ends the scan (every older one is staler); the others are
/// passed over and, on a miss, say why.
#[derive(Debug, Default)]
pub struct Scan {
    passed_over: Vec<Ineligible>,
}

/// What a scan does with the entry just judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Serve,
    Skip,
    Stop,
}

impl Scan {
    /// Takes the verdict on the next entry (`eligibility`).
    pub fn next(&mut self, verdict: Result<(), Ineligible>) -> Next {
        match verdict {
            Ok(()) => Next::Serve,
            Err(Ineligible::Stale) => {
                self.passed_over.push(Ineligible::Stale);
                Next::Stop
            }
            Err(why) => {
                self.passed_over.push(why);
                Next::Skip
            }
        }
    }

    /// Whether no entry was passed over yet: the next one is the newest.
    pub fn at_newest(&self) -> bool {
        self.passed_over.is_empty()
    }

    /// Why nothing was served.
    pub fn miss_reason(&self) -> String {
        miss_reason(&self.passed_over)
    }
}

/// The reason of a miss given why each recorded execution was passed over.
pub fn miss_reason(passed_over: &[Ineligible]) -> String {
    if passed_over.is_empty() {
        return "no entry: no COMPLETE execution with this cache key in the namespace".into();
    }
    let mut kinds: Vec<Ineligible> = passed_over.to_vec();
    kinds.sort();
    kinds.dedup();
    let words: Vec<&str> = kinds.iter().map(|k| k.describe()).collect();
    format!(
        "{} recorded execution(s), none servable: {}",
        passed_over.len(),
        words.join("; ")
    )
}

/// Milliseconds of an optional protobuf Duration; negative durations are invalid.
pub fn duration_ms(d: Option<&prost_types::Duration>, field: &str) -> Result<Option<i64>, Error> {
    let Some(d) = d else { return Ok(None) };
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(Error::invalid(format!(
            "{field} must be a non-negative duration, got {}s {}ns",
            d.seconds, d.nanos
        )));
    }
    Ok(Some(
        d.seconds
            .saturating_mul(1000)
            .saturating_add(i64::from(d.nanos) / 1_000_000),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(trigger: Trigger, enabled: Option<bool>) -> CachePolicy {
        CachePolicy {
            trigger: trigger as i32,
            enabled,
            max_staleness: None,
        }
    }

    #[test]
    fn trigger_defaults() {
        assert_eq!(decide(None).unwrap(), Decision::Enabled);
        for t in [Trigger::Unspecified, Trigger::Pipeline] {
            assert_eq!(decide(Some(&policy(t, None))).unwrap(), Decision::Enabled);
        }
        for (t, name) in [
            (Trigger::Manual, "MANUAL"),
            (Trigger::Restart, "RESTART"),
            (Trigger::Resume, "RESUME"),
        ] {
            match decide(Some(&policy(t, None))).unwrap() {
                Decision::Disabled(r) => assert!(r.contains(name), "{r}"),
                d => panic!("{t:?} gave {d:?}"),
            }
        }
    }

    #[test]
    fn explicit_choice_wins() {
        assert_eq!(
            decide(Some(&policy(Trigger::Manual, Some(true)))).unwrap(),
            Decision::Enabled
        );
        assert!(matches!(
            decide(Some(&policy(Trigger::Pipeline, Some(false)))).unwrap(),
            Decision::Disabled(r) if r.contains("explicitly")
        ));
    }

    #[test]
    fn unknown_trigger_is_invalid() {
        let mut p = policy(Trigger::Pipeline, None);
        p.trigger = 42;
        assert!(
            matches!(decide(Some(&p)), Err(Error::InvalidArgument(m)) if m.contains("trigger"))
        );
    }

    #[test]
    fn staleness_and_ttl_boundaries() {
        let c = Candidate {
            completed_ms: 1_000,
            ttl_ms: Some(500),
            outputs_live: true,
            invalidated: false,
        };
        assert_eq!(eligibility(&c, 1_500, None), Ok(()));
        assert_eq!(eligibility(&c, 1_501, None), Err(Ineligible::TtlExpired));
        assert_eq!(eligibility(&c, 1_200, Some(200)), Ok(()));
        assert_eq!(eligibility(&c, 1_201, Some(200)), Err(Ineligible::Stale));
        let dead = Candidate {
            outputs_live: false,
            ..c
        };
        assert_eq!(
            eligibility(&dead, 1_000, None),
            Err(Ineligible::OutputsDeleted)
        );
        let inv = Candidate {
            invalidated: true,
            ..c
        };
        assert_eq!(eligibility(&inv, 1_000, None), Err(Ineligible::Invalidated));
    }

    #[test]
    fn a_scan_serves_the_first_servable_and_stops_at_the_first_stale() {
        let mut scan = Scan::default();
        assert_eq!(scan.next(Err(Ineligible::Invalidated)), Next::Skip);
        assert_eq!(scan.next(Ok(())), Next::Serve);
        let mut scan = Scan::default();
        assert_eq!(scan.next(Err(Ineligible::TtlExpired)), Next::Skip);
        assert_eq!(scan.next(Err(Ineligible::Stale)), Next::Stop);
        let r = scan.miss_reason();
        assert!(r.contains("2 recorded") && r.contains("stale"), "{r}");
        assert!(Scan::default().miss_reason().starts_with("no entry"));
    }

    #[test]
    fn reasons_in_words() {
        assert!(miss_reason(&[]).starts_with("no entry"));
        let r = miss_reason(&[
            Ineligible::Stale,
            Ineligible::OutputsDeleted,
            Ineligible::Stale,
        ]);
        assert!(
            r.contains("3 recorded") && r.contains("stale") && r.contains("outputs deleted"),
            "{r}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(duration_ms(None, "x").unwrap(), None);
        let d = prost_types::Duration {
            seconds: 2,
            nanos: 5_000_000,
        };
        assert_eq!(duration_ms(Some(&d), "x").unwrap(), Some(2_005));
        let neg = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert!(duration_ms(Some(&neg), "policy.max_staleness").is_err());
    }
}
