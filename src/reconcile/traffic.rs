//! Whose the model's Service traffic is (pure): the pods', or the activator's while the model
//! has no replica that answers. The activator holds what comes meanwhile and forwards it once
//! the model answers, so a request sent to a model at zero wakes it instead of failing.

/// What the decision reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrafficInputs {
    /// The Deployment as built wants no replica (`replicas: 0`, or asleep for being idle).
    pub wants_zero: bool,
    /// Replicas whose model answered the last probe (the status's `modelReadyReplicas`).
    pub model_ready_replicas: i32,
    /// The activator's slice exists: the activator has the traffic now.
    pub handed_to_activator: bool,
    /// The activator has ready replicas to hand the traffic to.
    pub activator_ready: bool,
}

/// Whether the activator takes the Service's traffic: from the moment the model wants no
/// replica until, woken, one of its replicas' model answers (a Ready pod whose model is still
/// loading would refuse what the activator would have held).
pub fn activator_takes_traffic(inputs: TrafficInputs) -> bool {
    let TrafficInputs {
        wants_zero,
        model_ready_replicas,
        handed_to_activator,
        activator_ready,
    } = inputs;
    activator_ready && (wants_zero || (handed_to_activator && model_ready_replicas == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(wants_zero: bool, model_ready_replicas: i32, handed_to_activator: bool) -> TrafficInputs {
        TrafficInputs {
            wants_zero,
            model_ready_replicas,
            handed_to_activator,
            activator_ready: true,
        }
    }

    #[test]
    fn the_activator_has_the_traffic_from_zero_until_a_woken_model_answers() {
        // Serving: the pods.
        assert!(!activator_takes_traffic(inputs(false, 2, false)));
        // Scaled to zero, its pods still stopping and answering: already the activator's.
        assert!(activator_takes_traffic(inputs(true, 1, false)));
        assert!(activator_takes_traffic(inputs(true, 0, true)));
        // Woken, loading: still the activator's.
        assert!(activator_takes_traffic(inputs(false, 0, true)));
        // Answering: back to the pods.
        assert!(!activator_takes_traffic(inputs(false, 1, true)));
        // A new model that never was at zero starts with its pods, loading or not.
        assert!(!activator_takes_traffic(inputs(false, 0, false)));
    }

    #[test]
    fn without_a_ready_activator_the_service_keeps_selecting_the_pods() {
        let none = TrafficInputs {
            activator_ready: false,
            ..inputs(true, 0, true)
        };
        assert!(!activator_takes_traffic(none));
    }
}
