use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use tower::{Layer, Service, ServiceExt};
use tower_test::mock;

use super::*;

const SECOND: Duration = Duration::from_secs(1);

fn settings(
    lease: Duration,
    renew: Option<Duration>,
    retry: Option<Duration>,
) -> Result<LeaseSettings, LeaseSettingsError> {
    LeaseSettings::new("ops".into(), "leader".into(), "replica-a".into(), lease, renew, retry)
}

#[test]
fn the_deadlines_default_to_client_gos_and_must_fit_inside_each_other() {
    let defaults = settings(15 * SECOND, None, None).unwrap();
    assert_eq!(defaults.renew_deadline, 10 * SECOND);
    assert_eq!(defaults.retry_period, 2 * SECOND);

    for (lease, renew, retry, flag) in [
        (Duration::from_millis(500), None, None, "--lease-duration 500ms"),
        (Duration::ZERO, None, None, "--lease-duration 0ns"),
        (Duration::from_millis(1500), None, None, "--lease-duration 1.5s"),
        (
            4 * SECOND,
            Some(4 * SECOND),
            None,
            "--renew-deadline 4s must be shorter than --lease-duration 4s",
        ),
        (
            4 * SECOND,
            Some(2 * SECOND),
            Some(2 * SECOND),
            "--retry-period 2s must be at least 100ms",
        ),
        (4 * SECOND, None, Some(Duration::from_millis(10)), "--retry-period 10ms"),
    ] {
        let error = settings(lease, renew, retry).unwrap_err().to_string();
        assert!(error.starts_with(flag), "{error}");
    }
}

fn lease(holder: Option<&str>, resource_version: &str, seconds: i32) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some("leader".into()),
            namespace: Some("ops".into()),
            resource_version: Some(resource_version.into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: Some(seconds),
            ..LeaseSpec::default()
        }),
    }
}

#[test]
fn a_lease_expires_only_after_it_stayed_the_same_for_its_whole_duration_here() {
    let start = Instant::now();
    let mut observed = None;
    let held = lease(Some("replica-b"), "7", 4);
    assert_eq!(
        decide(&held, &mut observed, 15 * SECOND, start),
        Decision::Wait {
            holder: "replica-b".into(),
            free_in: 4 * SECOND
        },
        "first seen now: the whole duration is ahead, whatever its renewTime says"
    );
    assert!(matches!(
        decide(&held, &mut observed, 15 * SECOND, start + 3 * SECOND),
        Decision::Wait { .. }
    ));
    // The holder renewed: the count starts again.
    let renewed = lease(Some("replica-b"), "8", 4);
    assert_eq!(
        decide(&renewed, &mut observed, 15 * SECOND, start + 5 * SECOND),
        Decision::Wait {
            holder: "replica-b".into(),
            free_in: 4 * SECOND
        }
    );
    assert_eq!(
        decide(&renewed, &mut observed, 15 * SECOND, start + 9 * SECOND),
        Decision::TakeOver
    );
}

#[test]
fn a_released_lease_is_free_at_once_and_our_own_name_in_it_is_not_ours() {
    let now = Instant::now();
    for released in [lease(None, "3", 4), lease(Some(""), "3", 4)] {
        assert_eq!(decide(&released, &mut None, 15 * SECOND, now), Decision::TakeOver);
    }
    // A restart with the same identity: the name is ours, the renewal was not made here.
    assert!(matches!(
        decide(&lease(Some("replica-a"), "3", 4), &mut None, 15 * SECOND, now),
        Decision::Wait { .. }
    ));
}

/// Each request the mock API server saw: method, path and body.
type Seen = Vec<(String, String, Value)>;

/// An elector against an API server that answers each request with the next of `answers`
/// (status and body) and records what it was sent.
fn elector_against(answers: Vec<(StatusCode, Value)>) -> (Elector, tokio::task::JoinHandle<Seen>) {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        for (status, answer) in answers {
            let Some((request, respond)) = handle.next_request().await else {
                break;
            };
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            seen.push((parts.method.to_string(), parts.uri.path().to_owned(), body));
            let response = Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap();
            respond.send_response(response);
        }
        seen
    });
    let settings = settings(4 * SECOND, None, None).unwrap();
    let elector = Elector {
        api: Api::namespaced(Client::new(service, "ops"), "ops"),
        settings,
        held: None,
        observed: None,
    };
    (elector, server)
}

fn conflict() -> (StatusCode, Value) {
    (
        StatusCode::CONFLICT,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409,
               "message": "the object has been modified"}),
    )
}

fn lease_json(holder: &str, resource_version: &str) -> Value {
    serde_json::to_value(lease(Some(holder), resource_version, 4)).unwrap()
}

#[tokio::test]
async fn a_take_over_carries_the_version_it_was_decided_on_and_losing_the_race_stands_by() {
    let released = serde_json::to_value(lease(None, "41", 4)).unwrap();
    let (mut elector, server) = elector_against(vec![(StatusCode::OK, released), conflict()]);
    let error = elector.round().await.unwrap_err();
    assert!(matches!(error, RoundError::Conflict), "{error}");
    assert!(elector.held.is_none(), "the other candidate won");
    let seen = server.await.unwrap();
    assert_eq!(seen[1].0, "PUT");
    assert_eq!(seen[1].2["metadata"]["resourceVersion"], "41", "{:?}", seen[1].2);
    assert_eq!(seen[1].2["spec"]["holderIdentity"], "replica-a");
    assert_eq!(seen[1].2["spec"]["leaseDurationSeconds"], 4);
}

#[tokio::test]
async fn a_leader_renews_what_it_last_wrote_and_a_conflict_means_it_lost() {
    let (mut elector, server) = elector_against(vec![
        (
            StatusCode::NOT_FOUND,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
        ),
        (StatusCode::CREATED, lease_json("replica-a", "10")),
        (StatusCode::OK, lease_json("replica-a", "11")),
        conflict(),
    ]);
    assert!(elector.round().await.unwrap(), "created: leading");
    assert!(elector.round().await.unwrap(), "renewed");
    assert!(matches!(elector.round().await, Err(RoundError::Conflict)));
    let seen = server.await.unwrap();
    let methods: Vec<&str> = seen.iter().map(|(method, _, _)| method.as_str()).collect();
    assert_eq!(
        methods,
        ["GET", "POST", "PUT", "PUT"],
        "a leader renews without reading first"
    );
    assert_eq!(seen[2].2["metadata"]["resourceVersion"], "10");
    assert_eq!(seen[3].2["metadata"]["resourceVersion"], "11");
}

#[tokio::test]
async fn a_lease_call_that_hangs_is_cut_off_after_the_retry_period() {
    let (service, _handle) = mock::pair::<Request<Body>, Response<Body>>();
    let mut elector = Elector {
        api: Api::namespaced(Client::new(service, "ops"), "ops"),
        settings: settings(1 * SECOND, None, None).unwrap(),
        held: None,
        observed: None,
    };
    let started = Instant::now();
    let error = elector.round().await.unwrap_err();
    assert!(matches!(error, RoundError::Timeout(_)), "{error}");
    assert!(
        started.elapsed() < SECOND,
        "cut off after the retry period, {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_gate_lets_reads_through_and_refuses_writes_outside_the_term() {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((_, respond)) = handle.next_request().await {
            respond.send_response(Response::new(Body::from("{}".as_bytes().to_vec())));
        }
    });
    let (terms, leadership) = Leadership::channel(Term::Standby);
    let mut gated = WriteGate::new(leadership).layer(service);
    let request = |method: &str| {
        Request::builder()
            .method(method)
            .uri("/api/v1/namespaces/ml/services")
            .body(Body::empty())
            .unwrap()
    };

    gated
        .ready()
        .await
        .unwrap()
        .call(request("GET"))
        .await
        .expect("reads pass on a standby");
    let refused = gated.ready().await.unwrap().call(request("POST")).await.unwrap_err();
    assert!(refused.is::<NotLeader>(), "{refused}");
    assert_eq!(
        refused.to_string(),
        "POST /api/v1/namespaces/ml/services refused: this replica is not the leader"
    );

    terms.send_replace(Term::Until(Instant::now() + 60 * SECOND));
    gated
        .ready()
        .await
        .unwrap()
        .call(request("PATCH"))
        .await
        .expect("the leader writes");

    // A term that ended while nobody looked (the replica was frozen) refuses at once.
    terms.send_replace(Term::Until(Instant::now()));
    let refused = gated.ready().await.unwrap().call(request("DELETE")).await.unwrap_err();
    assert!(refused.is::<NotLeader>(), "{refused}");
}
