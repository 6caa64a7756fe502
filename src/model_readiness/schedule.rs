//! When to probe a model again. A model that answers is looked at every 30 s, so that one that
//! stops answering is noticed; a loading one every 2 s; a silent one with exponential backoff,
//! counted per ModelDeployment here and forgotten once it answers (or is deleted).

use std::{collections::HashMap, sync::Mutex, time::Duration};

use super::ProbeOutcome;
use crate::api::conditions::reasons;
use crate::vocabulary::per_model::forget_model;

/// When to probe a model again: every 30 s once ready, so that a model that stops answering is
/// noticed; every 2 s while the runtime answers that the model is still loading, so that "Ready"
/// follows the end of a load within seconds; otherwise (server down, load failed, no answer)
/// every second for the first [`QUICK_RETRIES`] tries, since a server that has just started
/// often takes a few seconds to listen (and a request held by the activator may be waiting for
/// it), then backing off exponentially, 2 s, 4 s … up to 60 s, as failures repeat.
/// `consecutive_not_ready` counts the not-ready outcomes before this one.
pub fn recheck_after(outcome: &ProbeOutcome, consecutive_not_ready: u32) -> Duration {
    const READY_RECHECK: Duration = Duration::from_secs(30);
    const LOADING_RECHECK: Duration = Duration::from_secs(2);
    const FIRST_RETRY: Duration = Duration::from_secs(1);
    const MAX_RETRY: Duration = Duration::from_secs(60);
    if outcome.ready {
        return READY_RECHECK;
    }
    if [reasons::MODEL_LOADING, reasons::WORKERS_NOT_READY].contains(&outcome.reason) {
        return LOADING_RECHECK;
    }
    let backing_off = consecutive_not_ready.saturating_sub(QUICK_RETRIES - 1);
    FIRST_RETRY
        .saturating_mul(2u32.saturating_pow(backing_off.min(16)))
        .min(MAX_RETRY)
}

/// Tries a second apart before a silent model's probes back off: some ten seconds, as long as
/// a runtime commonly takes to start listening.
pub const QUICK_RETRIES: u32 = 8;

/// Consecutive silent probes per ModelDeployment (namespace, name): the backoff state, shared by
/// every reconcile.
#[derive(Debug, Default)]
pub struct ProbeSchedule {
    silent_streaks: Mutex<HashMap<(String, String), u32>>,
}

impl ProbeSchedule {
    /// Counts `outcome` towards the model's backoff (or resets it) and says when to probe again.
    pub fn next(&self, namespace: &str, name: &str, outcome: &ProbeOutcome) -> Duration {
        let mut streaks = self.silent_streaks.lock().expect("probe schedule lock");
        let key = (namespace.to_owned(), name.to_owned());
        if outcome.ready {
            streaks.remove(&key);
            recheck_after(outcome, 0)
        } else {
            let streak = streaks.entry(key).or_insert(0);
            let delay = recheck_after(outcome, *streak);
            *streak = streak.saturating_add(1);
            delay
        }
    }

    /// Drops what is kept for a model that is gone.
    pub fn forget(&self, namespace: &str, name: &str) {
        forget_model(
            &mut self.silent_streaks.lock().expect("probe schedule lock"),
            namespace,
            name,
        );
    }

    /// The models (namespace, name) with a silent streak now.
    pub fn models(&self) -> Vec<(String, String)> {
        self.silent_streaks
            .lock()
            .expect("probe schedule lock")
            .keys()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_probes_retry_each_second_for_a_while_then_back_off_up_to_a_minute() {
        let down = ProbeOutcome::not_ready(reasons::SERVER_UNAVAILABLE, "connection refused");
        let delays: Vec<u64> = (0..16).map(|n| recheck_after(&down, n).as_secs()).collect();
        assert_eq!(delays, [1, 1, 1, 1, 1, 1, 1, 1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(recheck_after(&down, u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn loading_models_are_rechecked_every_two_seconds() {
        for reason in [reasons::MODEL_LOADING, reasons::WORKERS_NOT_READY] {
            let loading = ProbeOutcome::not_ready(reason, "loading");
            for streak in [0, 5, 100] {
                assert_eq!(recheck_after(&loading, streak), Duration::from_secs(2), "{reason}");
            }
        }
    }

    #[test]
    fn ready_models_are_rechecked_every_thirty_seconds() {
        let ready = ProbeOutcome::ready("loaded", None);
        assert_eq!(recheck_after(&ready, 0), Duration::from_secs(30));
        assert_eq!(recheck_after(&ready, 7), Duration::from_secs(30));
    }

    #[test]
    fn a_silent_model_backs_off_until_it_answers_and_is_forgotten_when_gone() {
        let schedule = ProbeSchedule::default();
        let down = ProbeOutcome::not_ready(reasons::SERVER_UNAVAILABLE, "connection refused");
        let delays: Vec<u64> = (0..10).map(|_| schedule.next("ml", "bert", &down).as_secs()).collect();
        assert_eq!(delays, [1, 1, 1, 1, 1, 1, 1, 1, 2, 4]);
        assert_eq!(
            schedule.next("ml", "other", &down).as_secs(),
            1,
            "streaks are per model"
        );
        let ready = ProbeOutcome::ready("loaded", None);
        assert_eq!(schedule.next("ml", "bert", &ready).as_secs(), 30);
        assert_eq!(
            schedule.next("ml", "bert", &down).as_secs(),
            1,
            "an answer resets the streak"
        );
        schedule.forget("ml", "bert");
        schedule.forget("ml", "other");
        assert!(schedule.models().is_empty());
    }
}
