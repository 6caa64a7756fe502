//! When to try again after a child could not be written: exponential backoff per
//! ModelDeployment, 5 s doubling to 5 minutes, reset by the first apply that goes through.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use crate::vocabulary::per_model::forget_model;

const FIRST_RETRY: Duration = Duration::from_secs(5);
const MAX_RETRY: Duration = Duration::from_secs(300);

/// Consecutive failed applies per ModelDeployment (namespace, name).
#[derive(Debug, Default)]
pub struct ApplyRetries {
    failures: Mutex<HashMap<(String, String), u32>>,
}

impl ApplyRetries {
    /// Counts one more failure and says how long to wait before the next try.
    pub fn failed(&self, namespace: &str, name: &str) -> Duration {
        let mut failures = self.failures.lock().expect("apply retries lock");
        let streak = failures.entry((namespace.to_owned(), name.to_owned())).or_insert(0);
        let delay = FIRST_RETRY
            .saturating_mul(2u32.saturating_pow((*streak).min(16)))
            .min(MAX_RETRY);
        *streak = streak.saturating_add(1);
        delay
    }

    /// The models (namespace, name) with failures now.
    pub fn models(&self) -> Vec<(String, String)> {
        self.failures
            .lock()
            .expect("apply retries lock")
            .keys()
            .cloned()
            .collect()
    }

    /// The model's children went through (or the model is gone): start afresh.
    pub fn forget(&self, namespace: &str, name: &str) {
        forget_model(&mut self.failures.lock().expect("apply retries lock"), namespace, name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_to_five_minutes_and_success_resets() {
        let retries = ApplyRetries::default();
        let delays: Vec<u64> = (0..9).map(|_| retries.failed("ml", "bert").as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(retries.failed("ml", "other").as_secs(), 5, "per model");
        retries.forget("ml", "bert");
        assert_eq!(retries.failed("ml", "bert").as_secs(), 5);
    }
}
