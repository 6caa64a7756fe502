//! One model's gate: requests pass at once while the model answers, and are held while it
//! starts, in a bounded queue, each until the model is ready or its deadline passes; then they
//! leave in the order they arrived.
//!
//! The order is a fair (first come, first served) lock that the gate's keeper holds for as long
//! as the model has no ready replica. Each request takes its turn on the lock, dispatches its
//! request upstream (queued on the connection before the turn ends), and hands the turn on, so
//! requests held during a cold start are sent in arrival order and a request arriving later
//! cannot overtake them. While the model answers the lock is free and a turn costs nanoseconds.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use tokio::{
    sync::{Mutex, OwnedMutexGuard, watch},
    task::JoinHandle,
    time::{Instant, timeout_at},
};

/// A request's turn: where to send it, held until the request is queued upstream.
#[derive(Debug)]
pub struct Turn<T> {
    pub upstream: T,
    /// The request waited for the model to become ready (a cold start).
    pub was_held: bool,
    _order: OwnedMutexGuard<()>,
}

/// Why a request gets no turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoTurn {
    /// As many requests as the queue takes are held already.
    Full,
    /// The deadline passed before the model became ready.
    Timeout,
    /// The model is gone (deleted while requests were held).
    Gone,
}

/// The gate of one model, over what its readiness says: `Some(upstream)` while a replica's
/// model answers, `None` while there is none.
#[derive(Debug)]
pub struct Gate<T> {
    order: Arc<Mutex<()>>,
    held: Arc<AtomicUsize>,
    capacity: usize,
    state: watch::Receiver<Option<T>>,
    keeper: JoinHandle<()>,
}

impl<T> Drop for Gate<T> {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

impl<T: Clone + Send + Sync + 'static> Gate<T> {
    /// A gate holding at most `capacity` requests while the model starts.
    pub fn new(state: watch::Receiver<Option<T>>, capacity: usize) -> Self {
        let order = Arc::new(Mutex::new(()));
        // Closed from the start when the model has no ready replica, before any request can
        // take the lock ahead of the keeper.
        let closed = state
            .borrow()
            .is_none()
            .then(|| order.clone().try_lock_owned().expect("a new lock is free"));
        let keeper = tokio::spawn(keep(order.clone(), state.clone(), closed));
        Self {
            order,
            held: Arc::new(AtomicUsize::new(0)),
            capacity,
            state,
            keeper,
        }
    }

    /// Requests held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// The model's readiness is no longer published (its route is gone).
    pub fn is_orphaned(&self) -> bool {
        self.state.has_changed().is_err()
    }

    /// Waits for the request's turn, until `deadline` at most. `on_hold` is called (once) when
    /// the request has to wait for the model: the moment to ask for a replica.
    pub async fn turn(&self, deadline: Instant, mut on_hold: impl FnMut()) -> Result<Turn<T>, NoTurn> {
        let mut slot: Option<HeldSlot> = None;
        let mut state = self.state.clone();
        loop {
            if slot.is_none() && state.borrow().is_none() {
                slot = Some(self.hold()?);
                on_hold();
            }
            let order = timeout_at(deadline, self.order.clone().lock_owned())
                .await
                .map_err(|_| NoTurn::Timeout)?;
            if let Some(upstream) = state.borrow_and_update().clone() {
                return Ok(Turn {
                    upstream,
                    was_held: slot.is_some(),
                    _order: order,
                });
            }
            // The model went back to having no ready replica between the gate opening and this
            // turn: wait for it again, counted among the held.
            drop(order);
            if slot.is_none() {
                slot = Some(self.hold()?);
                on_hold();
            }
            match timeout_at(deadline, state.wait_for(Option::is_some)).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Err(NoTurn::Gone),
                Err(_) => return Err(NoTurn::Timeout),
            }
        }
    }

    fn hold(&self) -> Result<HeldSlot, NoTurn> {
        if self.held.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.held.fetch_sub(1, Ordering::AcqRel);
            return Err(NoTurn::Full);
        }
        Ok(HeldSlot(self.held.clone()))
    }
}

/// A place in the queue, given back when the request leaves it (forwarded, timed out, or its
/// client gone).
struct HeldSlot(Arc<AtomicUsize>);

impl Drop for HeldSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Holds the order lock while the model has no ready replica; ends when the state's sender goes.
async fn keep<T>(
    order: Arc<Mutex<()>>,
    mut state: watch::Receiver<Option<T>>,
    mut closed: Option<OwnedMutexGuard<()>>,
) {
    loop {
        let closed = match closed.take() {
            Some(guard) => guard,
            None => order.clone().lock_owned().await,
        };
        if state.wait_for(Option::is_some).await.is_err() {
            // Gone: the held requests get their turns, find no model and say so.
            return;
        }
        drop(closed);
        if state.wait_for(Option::is_none).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Mutex as StdMutex, time::Duration};

    use super::*;

    const LONG: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_ready_model_lets_requests_through_at_once() {
        let (_ready, state) = watch::channel(Some("10.0.0.7:8000"));
        let gate = Gate::new(state, 2);
        let mut woken = 0;
        let turn = gate.turn(Instant::now() + LONG, || woken += 1).await.unwrap();
        assert_eq!(turn.upstream, "10.0.0.7:8000");
        assert!(!turn.was_held);
        assert_eq!(woken, 0, "nothing to wake");
    }

    #[tokio::test(start_paused = true)]
    async fn held_requests_leave_in_arrival_order_once_the_model_is_ready() {
        let (ready, state) = watch::channel(None);
        let gate = Arc::new(Gate::new(state, 10));
        let wakes = Arc::new(AtomicUsize::new(0));
        let order = Arc::new(StdMutex::new(Vec::new()));
        let mut requests = Vec::new();
        for i in 0..5 {
            let (gate, wakes, order) = (gate.clone(), wakes.clone(), order.clone());
            requests.push(tokio::spawn(async move {
                let turn = gate
                    .turn(Instant::now() + LONG, || {
                        wakes.fetch_add(1, Ordering::Relaxed);
                    })
                    .await
                    .unwrap();
                order.lock().unwrap().push(i);
                assert!(turn.was_held);
                // Dispatching takes a moment; the next waits for it.
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(turn);
            }));
            // Each arrives after the one before.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(gate.held(), 5);
        assert_eq!(
            wakes.load(Ordering::Relaxed),
            5,
            "each held request asks (the waker dedupes)"
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            order.lock().unwrap().is_empty(),
            "nothing leaves before the model is ready"
        );
        ready.send(Some("10.0.0.7:8000")).unwrap();
        for request in requests {
            request.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4]);
        assert_eq!(gate.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_refuses_and_a_deadline_ends_the_wait() {
        let (_ready, state) = watch::channel::<Option<&str>>(None);
        let gate = Arc::new(Gate::new(state, 1));
        let first = {
            let gate = gate.clone();
            tokio::spawn(async move {
                gate.turn(Instant::now() + Duration::from_secs(5), || {})
                    .await
                    .map(|_| ())
            })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(
            gate.turn(Instant::now() + LONG, || {}).await.map(|_| ()),
            Err(NoTurn::Full)
        );
        assert_eq!(first.await.unwrap(), Err(NoTurn::Timeout));
        assert_eq!(gate.held(), 0, "the timed-out request left the queue");
    }

    #[tokio::test(start_paused = true)]
    async fn a_model_deleted_while_requests_wait_ends_them() {
        let (ready, state) = watch::channel::<Option<&str>>(None);
        let gate = Arc::new(Gate::new(state, 4));
        let waiting = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.turn(Instant::now() + LONG, || {}).await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        drop(ready);
        assert_eq!(waiting.await.unwrap(), Err(NoTurn::Gone));
        assert!(gate.is_orphaned());
    }
}
