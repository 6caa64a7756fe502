//! Going to zero: a model with `autoscaling.minReplicas: 0` that has served no request for
//! `scaleToZeroAfter` is scaled to zero, and woken again when something (the activator, holding
//! a request; or anyone's `kubectl scale deployment`) asks its Deployment for a replica.
//!
//! "No request" is the runtimes' own word: the request count each runtime reports (the
//! `requests` total the queue-time metric reads too), summed over the serving replicas, has not
//! changed. The clock is kept in two places, so that it costs no writes and survives restarts:
//!
//! - in memory ([`IdleClocks`]), the count last seen and since when, while the model is busy:
//!   a busy model's count changes at every look, and none of that is written;
//! - in the status (`status.idle`), once the count has stood still for half the idle time:
//!   the moment it last changed and the count itself. A restarted operator goes on with that clock as long as the
//!   count is still the same; a different count means requests came meanwhile, so the clock
//!   starts again (never "idle" by default).
//!
//! Asleep, the Deployment wants no replica and the HPA, whose target is at zero, does nothing
//! (`ScalingDisabled`) until the Deployment wants one again. A Deployment at a later generation
//! than the one the operator scaled to zero, wanting a replica, is a wake.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use crate::{
    api::IdleStatus,
    vocabulary::{cached::CachedDeployment, per_model::forget_model},
};

/// The runtimes' counts are read at most this often.
const FASTEST_LOOK: Duration = Duration::from_secs(1);
/// And at least this often, whatever the idle time.
const SLOWEST_LOOK: Duration = Duration::from_secs(30);

/// A request count, and since when it has been that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub requests: i64,
    pub since: Timestamp,
}

/// What the serving replicas' runtimes say now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// No replica is serving: there is nothing to read, and no verdict.
    NotServing,
    /// A serving replica's count could not be read: no verdict either, since the requests it
    /// served are unknown.
    Unknown,
    /// The requests served so far, summed over the serving replicas.
    Requests(i64),
}

/// Where a model that may go to zero stands before this reconcile's look.
#[derive(Debug, Clone, PartialEq)]
pub enum Standing {
    /// The spec does not let it go to zero.
    Never,
    /// It was scaled to zero for being idle, and no wake came since.
    Asleep(IdleStatus),
    /// It was asleep, and its Deployment was asked for a replica since.
    Woken,
    /// It serves (or starts), with the idle mark it carries, if any.
    Awake(Option<IdleStatus>),
}

/// Step one: whether the model is asleep, from its last status and its Deployment.
pub fn standing(
    after: Option<Duration>,
    previous: Option<&IdleStatus>,
    deployment: Option<&CachedDeployment>,
) -> Standing {
    if after.is_none() {
        return Standing::Never;
    }
    match previous {
        Some(idle) if idle.scaled_to_zero_at.is_some() => {
            let wants_replicas = deployment
                .and_then(|d| d.spec.as_ref())
                .and_then(|s| s.replicas)
                .is_some_and(|replicas| replicas > 0);
            let generation = deployment.and_then(|d| d.metadata.generation);
            // A cache that has not caught up with the scale-down still shows the old replicas,
            // at the old generation: only a later one is a wake.
            let later = match (generation, idle.deployment_generation) {
                (Some(now), Some(at_zero)) => now > at_zero,
                _ => true,
            };
            if wants_replicas && later {
                Standing::Woken
            } else {
                Standing::Asleep(idle.clone())
            }
        }
        other => Standing::Awake(other.cloned()),
    }
}

/// The look's verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Look {
    /// The status's idle mark after this look (`scaled_to_zero_at` set: go to zero now).
    pub idle: Option<IdleStatus>,
    /// What to remember in memory.
    pub seen: Option<Seen>,
    /// When to look again.
    pub recheck: Duration,
}

impl Look {
    pub fn goes_to_zero(&self) -> bool {
        self.idle.as_ref().is_some_and(|idle| idle.scaled_to_zero_at.is_some())
    }
}

/// How often an awake model's counts are read: a few times per idle window, so that it goes
/// to zero close to `after`, within a second and thirty.
pub fn look_interval(after: Duration) -> Duration {
    (after / 4).clamp(FASTEST_LOOK, SLOWEST_LOOK)
}

/// Step two, for an awake model: the reading against the mark it carries and what memory holds.
pub fn look(after: Duration, mark: Option<&IdleStatus>, seen: Option<Seen>, reading: Reading, now: Timestamp) -> Look {
    let interval = look_interval(after);
    let Reading::Requests(requests) = reading else {
        // Nothing to judge by: everything stays as it is, the model stays up.
        return Look {
            idle: mark.cloned(),
            seen,
            recheck: interval,
        };
    };
    // Since when the count has been what it is now, and whether that was seen before.
    let unchanged_since = match (mark, seen) {
        (Some(mark), _) if mark.requests == requests => Some(mark.since.0),
        (None, Some(seen)) if seen.requests == requests => Some(seen.since),
        _ => None,
    };
    let Some(since) = unchanged_since else {
        // Requests came (or this is the first look): a busy model, nothing written.
        return Look {
            idle: None,
            seen: Some(Seen { requests, since: now }),
            recheck: interval,
        };
    };
    // A mark from a clock ahead of this one counts as idle from now.
    let idle_for = Duration::try_from(now.duration_since(since)).unwrap_or(Duration::ZERO);
    let goes_to_zero = idle_for >= after;
    let remaining = after.saturating_sub(idle_for).max(FASTEST_LOOK);
    // The mark is written only once half the idle time has passed: a model whose requests
    // come sparser than its looks but closer than that costs no writes, and a restart loses
    // at most half a window of the clock (it then starts again, never counts as idle sooner).
    let marked = mark.is_some() || idle_for >= after / 2;
    if !marked {
        return Look {
            idle: None,
            seen: Some(Seen { requests, since }),
            recheck: interval
                .min(remaining)
                .min((after / 2).saturating_sub(idle_for).max(FASTEST_LOOK)),
        };
    }
    Look {
        idle: Some(IdleStatus {
            since: Time(since),
            requests,
            scaled_to_zero_at: goes_to_zero.then_some(Time(now)),
            deployment_generation: None,
        }),
        seen: Some(Seen { requests, since }),
        recheck: interval.min(remaining),
    }
}

/// Looks in a row whose count could not be read before the model says it will not go to zero:
/// one failed read is a blip (a replica restarting), not worth a status write and back.
pub const UNREADABLE_LOOKS_REPORTED: u32 = 2;

/// The count last seen for each busy model (namespace, name), and how many looks in a row
/// could not read it, shared by every reconcile.
#[derive(Debug, Default)]
pub struct IdleClocks {
    seen: Mutex<HashMap<(String, String), Seen>>,
    unreadable: Mutex<HashMap<(String, String), u32>>,
}

impl IdleClocks {
    pub fn get(&self, namespace: &str, name: &str) -> Option<Seen> {
        self.seen
            .lock()
            .expect("idle clocks lock")
            .get(&(namespace.to_owned(), name.to_owned()))
            .copied()
    }

    pub fn set(&self, namespace: &str, name: &str, seen: Option<Seen>) {
        let mut clocks = self.seen.lock().expect("idle clocks lock");
        let key = (namespace.to_owned(), name.to_owned());
        match seen {
            Some(seen) => {
                clocks.insert(key, seen);
            }
            None => {
                clocks.remove(&key);
            }
        }
    }

    /// Counts a look whose reading could (`false`) or could not (`true`) be read, and returns
    /// the looks in a row that could not.
    pub fn unreadable_looks(&self, namespace: &str, name: &str, unreadable: bool) -> u32 {
        let mut looks = self.unreadable.lock().expect("idle clocks lock");
        let key = (namespace.to_owned(), name.to_owned());
        if unreadable {
            let count = looks.entry(key).or_insert(0);
            *count = count.saturating_add(1);
            *count
        } else {
            looks.remove(&key);
            0
        }
    }

    /// Drops what is kept for a model that is gone.
    pub fn forget(&self, namespace: &str, name: &str) {
        forget_model(&mut self.seen.lock().expect("idle clocks lock"), namespace, name);
        forget_model(&mut self.unreadable.lock().expect("idle clocks lock"), namespace, name);
    }

    /// The models with a clock now.
    pub fn models(&self) -> Vec<(String, String)> {
        self.seen.lock().expect("idle clocks lock").keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocabulary::cached::CachedDeploymentSpec;

    const AFTER: Duration = Duration::from_secs(60);

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + second).unwrap()
    }

    fn mark(since: i64, requests: i64) -> IdleStatus {
        IdleStatus {
            since: Time(at(since)),
            requests,
            scaled_to_zero_at: None,
            deployment_generation: None,
        }
    }

    fn asleep(since: i64, requests: i64, generation: i64) -> IdleStatus {
        IdleStatus {
            scaled_to_zero_at: Some(Time(at(since + 60))),
            deployment_generation: Some(generation),
            ..mark(since, requests)
        }
    }

    fn deployment(generation: i64, replicas: i32) -> CachedDeployment {
        let mut deployment = CachedDeployment {
            spec: Some(CachedDeploymentSpec {
                replicas: Some(replicas),
                ..CachedDeploymentSpec::default()
            }),
            ..CachedDeployment::default()
        };
        deployment.metadata.generation = Some(generation);
        deployment
    }

    /// A model looked at every `step` seconds with the given counts, from a fresh process:
    /// the marks written to the status, and the second at which it went to zero.
    fn run(counts: &[i64], step: i64) -> (Vec<Option<IdleStatus>>, Option<i64>) {
        let (mut status, mut seen, mut written) = (None::<IdleStatus>, None, Vec::new());
        for (n, &count) in counts.iter().enumerate() {
            let now = n as i64 * step;
            let look = look(AFTER, status.as_ref(), seen, Reading::Requests(count), at(now));
            if look.idle != status {
                written.push(look.idle.clone());
            }
            if look.goes_to_zero() {
                return (written, Some(now));
            }
            (status, seen) = (look.idle, look.seen);
        }
        (written, None)
    }

    #[test]
    fn a_busy_model_never_goes_to_zero_and_costs_no_status_writes() {
        let counts: Vec<i64> = (0..100).map(|n| n * 3).collect();
        let (written, asleep) = run(&counts, 15);
        assert_eq!(asleep, None);
        assert!(written.is_empty(), "{written:?}");
    }

    #[test]
    fn a_model_goes_to_zero_once_its_count_stood_still_for_the_idle_time_with_two_writes() {
        // Requests until second 30, then none.
        let counts = [0, 5, 9, 9, 9, 9, 9, 9, 9];
        let (written, asleep) = run(&counts, 15);
        // The count last changed at 30 s; idle from then, to zero at 90 s.
        assert_eq!(asleep, Some(90));
        assert_eq!(written.len(), 2, "{written:#?}");
        assert_eq!(
            written[0],
            Some(mark(30, 9)),
            "the mark, once, when the count stood still"
        );
        let last = written[1].clone().unwrap();
        assert_eq!(last.since, Time(at(30)));
        assert_eq!(last.scaled_to_zero_at, Some(Time(at(90))));
    }

    #[test]
    fn a_request_while_idle_clears_the_mark_and_starts_the_clock_again() {
        let counts = [4, 4, 4, 5, 5, 5, 5, 5, 5];
        let (written, asleep) = run(&counts, 15);
        assert_eq!(written[0], Some(mark(0, 4)), "marked at 30 s, half the idle time");
        assert_eq!(written[1], None, "the request cleared the mark");
        assert_eq!(written[2], Some(mark(45, 5)));
        assert_eq!(asleep, Some(105));
    }

    #[test]
    fn sparse_requests_closer_than_half_the_idle_time_cost_no_writes() {
        // A request every 20 s, looked at every 15 s: the count often stands still between two
        // looks, never for 30 s.
        let counts: Vec<i64> = (0..40).map(|n| n * 15 / 20).collect();
        let (written, asleep) = run(&counts, 15);
        assert_eq!(asleep, None);
        assert!(written.is_empty(), "{written:?}");
    }

    #[test]
    fn a_restarted_operator_goes_on_with_the_clock_in_the_status_only_while_the_count_is_the_same() {
        // Idle since 0 with 7 requests, per the status; the new process remembers nothing.
        let same = look(AFTER, Some(&mark(0, 7)), None, Reading::Requests(7), at(50));
        assert_eq!(same.idle, Some(mark(0, 7)), "the clock goes on from the status");
        assert_eq!(same.recheck, Duration::from_secs(10), "looks again when the time is up");
        let later = look(AFTER, Some(&mark(0, 7)), None, Reading::Requests(7), at(61));
        assert!(later.goes_to_zero());
        // Requests came while no operator ran: not idle, the clock starts again.
        let busy = look(AFTER, Some(&mark(0, 7)), None, Reading::Requests(12), at(61));
        assert_eq!(busy.idle, None);
        assert_eq!(
            busy.seen,
            Some(Seen {
                requests: 12,
                since: at(61)
            })
        );
        // A replica restarted (its count went down): requests are unknown, so not idle either.
        let restarted = look(AFTER, Some(&mark(0, 7)), None, Reading::Requests(2), at(61));
        assert_eq!(restarted.idle, None);
    }

    #[test]
    fn without_a_reading_nothing_changes_and_the_model_stays_up() {
        for reading in [Reading::Unknown, Reading::NotServing] {
            let kept = look(AFTER, Some(&mark(0, 7)), None, reading, at(600));
            assert_eq!(kept.idle, Some(mark(0, 7)), "{reading:?}");
            assert!(!kept.goes_to_zero());
        }
    }

    #[test]
    fn an_unreadable_count_is_reported_from_the_second_look_in_a_row_until_one_reads() {
        let clocks = IdleClocks::default();
        let looks: Vec<u32> = [true, true, true, false, true]
            .into_iter()
            .map(|unreadable| clocks.unreadable_looks("ml", "drowsy", unreadable))
            .collect();
        assert_eq!(looks, [1, 2, 3, 0, 1]);
        assert_eq!(clocks.unreadable_looks("ml", "other", true), 1, "per model");
        clocks.forget("ml", "drowsy");
        assert_eq!(
            clocks.unreadable_looks("ml", "drowsy", true),
            1,
            "forgotten with the model"
        );
    }

    #[test]
    fn counts_are_read_a_few_times_per_idle_window_within_bounds() {
        assert_eq!(look_interval(Duration::from_secs(15 * 60)), Duration::from_secs(30));
        assert_eq!(look_interval(Duration::from_secs(60)), Duration::from_secs(15));
        assert_eq!(look_interval(Duration::from_secs(2)), Duration::from_secs(1));
    }

    #[test]
    fn a_sleeping_model_wakes_only_when_a_later_deployment_wants_replicas() {
        let after = Some(AFTER);
        let sleeping = asleep(0, 7, 4);
        assert_eq!(standing(None, Some(&sleeping), None), Standing::Never);
        assert_eq!(
            standing(after, Some(&sleeping), Some(&deployment(4, 0))),
            Standing::Asleep(sleeping.clone())
        );
        assert_eq!(
            standing(after, Some(&sleeping), Some(&deployment(3, 2))),
            Standing::Asleep(sleeping.clone()),
            "a cache from before the scale-down is no wake"
        );
        assert_eq!(
            standing(after, Some(&sleeping), Some(&deployment(5, 0))),
            Standing::Asleep(sleeping.clone()),
            "a later change that still wants none (a new version) is no wake"
        );
        assert_eq!(
            standing(after, Some(&sleeping), Some(&deployment(5, 1))),
            Standing::Woken
        );
        assert_eq!(
            standing(after, Some(&sleeping), None),
            Standing::Asleep(sleeping.clone()),
            "a deleted Deployment is made again, at zero"
        );
        assert_eq!(
            standing(after, Some(&mark(0, 7)), Some(&deployment(5, 1))),
            Standing::Awake(Some(mark(0, 7)))
        );
        assert_eq!(standing(after, None, None), Standing::Awake(None));
    }
}
