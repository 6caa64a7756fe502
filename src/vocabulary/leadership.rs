//! Whether this replica may write, as the leader election decides and every writer checks.
//!
//! Leadership is a term that ends at an instant on this process's monotonic clock, not a flag:
//! a replica that freezes (SIGSTOP, a long GC-like stall, a suspended VM) and wakes up after its
//! term sees the term over before any task of the election has run again, so a write that was
//! waiting in a reconcile is refused instead of racing the replica that took over.

use std::time::Instant;

use tokio::sync::watch;

/// What the election last decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Term {
    /// Standing by: another replica leads, or nobody does yet.
    Standby,
    /// Leading until this instant, unless renewed before.
    Until(Instant),
    /// Leader election is off: the only replica always writes.
    Always,
}

impl Term {
    pub fn is_leading_at(self, now: Instant) -> bool {
        match self {
            Term::Standby => false,
            Term::Until(end) => now < end,
            Term::Always => true,
        }
    }
}

/// A read handle on the current term, cheap to clone; the election holds the sending side.
#[derive(Clone, Debug)]
pub struct Leadership {
    term: watch::Receiver<Term>,
}

impl Leadership {
    /// A handle whose term the returned sender sets.
    pub fn channel(initial: Term) -> (watch::Sender<Term>, Self) {
        let (sender, term) = watch::channel(initial);
        (sender, Self { term })
    }

    /// For a single replica without leader election.
    pub fn always() -> Self {
        Self::channel(Term::Always).1
    }

    /// For tests and for a replica that never leads.
    pub fn standby() -> Self {
        Self::channel(Term::Standby).1
    }

    /// True while the term lasts: checked before every write.
    pub fn is_leading(&self) -> bool {
        self.term.borrow().is_leading_at(Instant::now())
    }

    /// The term as the election last set it (a term past its end still reads `Until`).
    pub fn term(&self) -> Term {
        *self.term.borrow()
    }

    /// A receiver that wakes whenever the election sets a new term.
    pub fn changes(&self) -> watch::Receiver<Term> {
        self.term.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_term_ends_at_its_instant_without_anyone_saying_so() {
        let now = Instant::now();
        let term = Term::Until(now + Duration::from_secs(10));
        assert!(term.is_leading_at(now));
        assert!(term.is_leading_at(now + Duration::from_secs(9)));
        assert!(!term.is_leading_at(now + Duration::from_secs(10)));
        assert!(!Term::Standby.is_leading_at(now));
        assert!(Term::Always.is_leading_at(now + Duration::from_secs(1_000_000)));
    }

    #[test]
    fn the_handle_follows_the_election() {
        let (election, leadership) = Leadership::channel(Term::Standby);
        assert!(!leadership.is_leading());
        election.send_replace(Term::Until(Instant::now() + Duration::from_secs(60)));
        assert!(leadership.is_leading());
        election.send_replace(Term::Until(Instant::now()));
        assert!(!leadership.is_leading(), "a term that has ended is not leading");
    }
}
