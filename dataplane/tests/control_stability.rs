//! Static stability of the edge against the control plane (issue #4): real
//! etcd, real `switchyard-control` on the etcd store, real `switchyard-ctl`,
//! real `switchyard-edge --control-plane`, the mock provider upstream.
//!
//! - an etcd outage under steady load costs clients nothing; writes fail
//!   fast with UNAVAILABLE and work again once etcd is back;
//! - an edge restarted while the control plane is down boots from its
//!   snapshot; one with neither snapshot nor config stays up but not ready
//!   until the control plane returns;
//! - cut Watch streams reconnect and converge without skipping or repeating
//!   a version;
//! - an invalid version is NACKed while the previous one keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::control::*;
use common::*;
// The shared harness re-exports fault types this file does not need.
#[allow(unused_imports)]
use common::{Fault as _, FaultScope as _};
use prost::Message;
use std::time::{Duration, Instant};

/// The standard mock config with extra routes (each to the OpenAI mock).
fn config_with_routes(mock_url: &str, extra_routes: &[&str]) -> String {
    let mut routes = String::from("routes:\n");
    for r in extra_routes {
        routes.push_str(&format!(
            "  {r}:\n    targets: [{{provider: mock-openai, model: gpt-4o-mini-2024-07-18}}]\n"
        ));
    }
    mock_config(mock_url, "").replacen("routes:\n", &routes, 1)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Sends `n` chat requests at `per_sec` (each in its own task, so a slow
/// answer does not slow the rate); returns every status.
async fn steady_load(edge_url: String, model: &'static str, n: usize, per_sec: u64) -> Vec<u16> {
    let client = http();
    let mut tasks = Vec::with_capacity(n);
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / per_sec));
    for _ in 0..n {
        tick.tick().await;
        let (c, u) = (client.clone(), edge_url.clone());
        tasks.push(tokio::spawn(async move { chat(&c, &u, model).await }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_under_load_keeps_serving_and_writes_fail_fast() {
    let mock = mock().await;
    let mut etcd = Etcd::start().await;
    let cp = ControlPlane::start(&etcd.url, &["--store-timeout", "1s"]).await;
    assert_eq!(
        apply_ok(&cp.url, &config_with_routes(&mock.url(), &[])).await,
        1
    );
    let snapshots = tempfile::tempdir().unwrap();
    let mut spec = ControlledEdge::new(&cp.url, "edge-outage");
    spec.snapshot_dir = Some(snapshots.path());
    let edge = spec.start().await;
    edge.wait_version(1).await;

    // 20 req/s for 4 s; etcd dies half a second in.
    let load = tokio::spawn(steady_load(edge.url.clone(), "gpt-mock", 80, 20));
    tokio::time::sleep(Duration::from_millis(500)).await;
    etcd.kill();

    // Writes fail fast with UNAVAILABLE (store timeout 1 s).
    let out = apply(
        &cp.url,
        &config_with_routes(&mock.url(), &["during-outage"]),
    )
    .await;
    assert_ne!(out.code, 0, "apply succeeded without etcd: {}", out.stdout);
    assert!(out.stderr.contains("UNAVAILABLE"), "{}", out.stderr);
    assert!(
        out.elapsed < Duration::from_secs(5),
        "apply took {:?} to fail",
        out.elapsed
    );

    let statuses = load.await.unwrap();
    let errors: Vec<&u16> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        errors.is_empty(),
        "client errors during the etcd outage: {errors:?} of {}",
        statuses.len()
    );
    let c = edge.admin_config().await;
    assert_eq!(c["version"], 1, "{c:#}");
    assert!(c["rejected"].as_array().unwrap().is_empty(), "{c:#}");
    // The control plane itself is up; the edge's stream stayed open.
    assert_eq!(c["control_plane"]["connected"], true, "{c:#}");

    // etcd returns: an apply works (once the control plane's etcd client has
    // reconnected) and reaches the edge.
    etcd.restart().await;
    let want = config_with_routes(&mock.url(), &["after-outage"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let version = loop {
        let out = apply(&cp.url, &want).await;
        if out.code == 0 {
            break out.json()["version"].as_u64().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "apply still failing 20s after etcd returned: {}\ncontrol plane log:\n{}",
            out.stderr,
            cp.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(version, 2, "the failed apply must not have committed");
    edge.wait_version(2).await;
    assert_eq!(chat(&http(), &edge.url, "after-outage").await, 200);
    assert_eq!(edge.applied_versions().await, vec![1, 2]);
    let m = edge.metrics().await;
    assert_eq!(metric_sum(&m, "switchyard_config_version", &[]), 2.0);
    assert_eq!(
        metric_sum(&m, "switchyard_config_applies_total", &["accepted"]),
        2.0
    );
    assert_eq!(
        metric_sum(&m, "switchyard_control_plane_connected", &[]),
        1.0
    );
    let age = metric_sum(&m, "switchyard_config_age_seconds", &[]);
    assert!((0.0..30.0).contains(&age), "config age {age}");
    wait_edge_status(&cp.url, "edge-outage", "serving 2", |e| {
        e["version_served"] == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_restarted_during_a_control_plane_outage_boots_from_its_snapshot() {
    let mock = mock().await;
    let etcd = Etcd::start().await;
    let mut cp = ControlPlane::start(&etcd.url, &[]).await;
    apply_ok(&cp.url, &config_with_routes(&mock.url(), &[])).await;
    let snapshots = tempfile::tempdir().unwrap();
    let mut spec = ControlledEdge::new(&cp.url, "edge-snap");
    spec.snapshot_dir = Some(snapshots.path());
    let mut first = spec.start().await;
    first.wait_version(1).await;
    assert_eq!(
        apply_ok(&cp.url, &config_with_routes(&mock.url(), &["v2-route"])).await,
        2
    );
    first.wait_version(2).await;
    assert!(snapshots
        .path()
        .join(switchyard_edge::control::snapshot::FILE_NAME)
        .is_file());

    // Control plane down, then the edge restarts.
    cp.kill();
    first.kill();
    let mut spec = ControlledEdge::new(&cp.url, "edge-snap");
    spec.snapshot_dir = Some(snapshots.path());
    let started = Instant::now();
    let edge = spec.start().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?} to become ready",
        started.elapsed()
    );
    let c = edge.admin_config().await;
    assert_eq!(
        (
            &c["version"],
            &c["source"],
            &c["control_plane"]["connected"]
        ),
        (&2.into(), &"snapshot".into(), &false.into()),
        "{c:#}"
    );
    let client = http();
    for model in ["gpt-mock", "v2-route"] {
        assert_eq!(chat(&client, &edge.url, model).await, 200, "{model}");
    }
    let m = edge.metrics().await;
    assert_eq!(
        metric_sum(&m, "switchyard_control_plane_connected", &[]),
        0.0
    );
    assert_eq!(metric_sum(&m, "switchyard_config_version", &[]), 2.0);

    // An edge with neither snapshot nor config stays up but not ready.
    let mut bare = ControlledEdge::new(&cp.url, "edge-bare");
    bare.wait_ready = false;
    let bare = bare.start().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(bare.readyz().await, 503);
    let c = bare.admin_config().await;
    assert_eq!(
        (&c["serving"], &c["source"]),
        (&false.into(), &"none".into())
    );
    assert!(
        c["control_plane"]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("connect"),
        "{c:#}"
    );

    // The control plane returns: both converge; the restarted edge does not
    // re-apply the version it booted with.
    cp.restart().await;
    bare.wait_version(2).await;
    assert_eq!(bare.readyz().await, 200);
    assert_eq!(chat(&client, &bare.url, "v2-route").await, 200);
    edge.wait_config(15, "reconnected", |c| {
        c["control_plane"]["connected"] == true
    })
    .await;
    wait_edge_status(&cp.url, "edge-snap", "serving 2 (re-ack)", |e| {
        e["version_served"] == 2
    })
    .await;
    assert_eq!(edge.applied_versions().await, vec![2]);
    let m = edge.metrics().await;
    assert_eq!(
        metric_sum(&m, "switchyard_config_applies_total", &[]),
        0.0,
        "the snapshot's version was applied again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_watch_streams_reconnect_and_converge_without_skips_or_repeats() {
    let mock = mock().await;
    let etcd = Etcd::start().await;
    let mut cp = ControlPlane::start(&etcd.url, &[]).await;
    let url = |routes: &[&str]| config_with_routes(&mock.url(), routes);
    apply_ok(&cp.url, &url(&[])).await;
    let edge = ControlledEdge::new(&cp.url, "edge-cut").start().await;
    edge.wait_version(1).await;

    // Cut 1: nothing committed meanwhile; the reconnect's snapshot (version
    // 1) is not applied again, but reported to the new process.
    cp.restart().await;
    edge.wait_config(15, "second stream", |c| {
        c["control_plane"]["connects"].as_u64() >= Some(2)
            && c["control_plane"]["connected"] == true
    })
    .await;
    wait_edge_status(&cp.url, "edge-cut", "serving 1 (re-ack)", |e| {
        e["version_served"] == 1 && e["connected"] == true
    })
    .await;
    assert_eq!(apply_ok(&cp.url, &url(&["r2"])).await, 2);
    edge.wait_version(2).await;

    // Cut 2: the edge's control plane is down while another replica on the
    // same etcd commits version 3; after the reconnect the edge gets 3 as its
    // snapshot, then 4 in-stream.
    cp.kill();
    let other = ControlPlane::start(&etcd.url, &[]).await;
    assert_eq!(apply_ok(&other.url, &url(&["r2", "r3"])).await, 3);
    tokio::time::sleep(Duration::from_millis(700)).await; // a few backoff rounds
    assert_eq!(edge.admin_config().await["version"], 2);
    cp.restart().await;
    let reconnected = Instant::now();
    edge.wait_version(3).await;
    assert!(
        reconnected.elapsed() < Duration::from_secs(8),
        "reconnect took {:?} (backoff is capped at 5 s)",
        reconnected.elapsed()
    );
    assert_eq!(apply_ok(&cp.url, &url(&["r2", "r3", "r4"])).await, 4);
    edge.wait_version(4).await;

    assert_eq!(edge.applied_versions().await, vec![1, 2, 3, 4]);
    let c = edge.admin_config().await;
    assert!(
        c["control_plane"]["connects"].as_u64().unwrap() >= 3,
        "{c:#}"
    );
    let m = edge.metrics().await;
    assert_eq!(
        metric_sum(&m, "switchyard_config_applies_total", &["accepted"]),
        4.0
    );
    assert_eq!(
        metric_sum(&m, "switchyard_config_applies_total", &["rejected"]),
        0.0
    );
    wait_edge_status(&cp.url, "edge-cut", "serving 4", |e| {
        e["version_served"] == 4 && e["connected"] == true
    })
    .await;
    for model in ["gpt-mock", "r2", "r3", "r4"] {
        assert_eq!(chat(&http(), &edge.url, model).await, 200, "{model}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_version_in_the_store_is_nacked_and_the_previous_one_keeps_serving() {
    let mock = mock().await;
    let etcd = Etcd::start().await;
    let cp = ControlPlane::start(&etcd.url, &[]).await;
    apply_ok(&cp.url, &config_with_routes(&mock.url(), &[])).await;
    let snapshots = tempfile::tempdir().unwrap();
    let mut spec = ControlledEdge::new(&cp.url, "edge-nack");
    spec.snapshot_dir = Some(snapshots.path());
    let edge = spec.start().await;
    edge.wait_version(1).await;

    // Version 2 written straight into etcd (bypassing the control plane's
    // validation): a route to a provider that does not exist.
    let mut bad = switchyard_proto::config::from_yaml_str(
        &config_with_routes(&mock.url(), &["broken"]),
        |_| None,
    )
    .unwrap();
    bad.routes.get_mut("broken").unwrap().targets[0].provider = "no-such-provider".into();
    assert!(switchyard_proto::config::validate(&bad).is_err());
    let config = bad.encode_to_vec();
    let envelope = switchyard_proto::control::StoredVersion {
        envelope_version: 1,
        version: 2,
        committed_at_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
        author: "test".into(),
        comment: "invalid on purpose".into(),
        schema_version: 1,
        config_sha256: switchyard_proto::config::sha256_hex(&config),
        config,
        summary: "routes: +1".into(),
        rollback_of: 0,
        operation: "apply".into(),
    };
    etcd.put(
        "/switchyard/v1/config/versions/00000000000000000002",
        &envelope.encode_to_vec(),
    )
    .await;
    etcd.put("/switchyard/v1/config/current", b"2").await;

    let c = edge
        .wait_config(15, "version 2 rejected", |c| {
            c["rejected"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["version"] == 2))
        })
        .await;
    assert_eq!(c["version"], 1, "{c:#}");
    let err = c["rejected"][0]["error"].as_str().unwrap();
    assert!(
        err.contains("routes.broken") && err.contains("no-such-provider"),
        "{err}"
    );
    assert_eq!(chat(&http(), &edge.url, "gpt-mock").await, 200);
    assert_eq!(chat(&http(), &edge.url, "broken").await, 404);
    let seen = wait_edge_status(&cp.url, "edge-nack", "NACK of 2", |e| {
        e["last_ack_version"] == 2
    })
    .await;
    assert_eq!(
        (&seen["version_served"], &seen["last_ack_accepted"]),
        (&1.into(), &false.into()),
        "{seen}"
    );
    assert!(
        seen["last_ack_error"]
            .as_str()
            .unwrap()
            .contains("no-such-provider"),
        "{seen}"
    );
    let m = edge.metrics().await;
    assert_eq!(
        metric_sum(&m, "switchyard_config_applies_total", &["rejected"]),
        1.0
    );
    // The snapshot still holds the last good version.
    let snap = switchyard_edge::control::SnapshotStore::new(snapshots.path())
        .load()
        .unwrap()
        .unwrap();
    assert_eq!(snap.version, 1);

    // A valid version 3 on top of it is applied.
    assert_eq!(
        apply_ok(&cp.url, &config_with_routes(&mock.url(), &["fixed"])).await,
        3
    );
    edge.wait_version(3).await;
    assert_eq!(chat(&http(), &edge.url, "fixed").await, 200);

    // Valid for the control plane, not for this edge: a provider key from an
    // environment variable the edge does not have. NACKed too.
    let missing_env = config_with_routes(&mock.url(), &["fixed"]).replacen(
        "api_key_env: ANTHROPIC_KEY",
        "api_key_env: SWITCHYARD_TEST_UNSET_KEY",
        1,
    );
    assert_eq!(apply_ok(&cp.url, &missing_env).await, 4);
    let c = edge
        .wait_config(15, "version 4 rejected", |c| {
            c["rejected"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["version"] == 4))
        })
        .await;
    assert_eq!(c["version"], 3, "{c:#}");
    assert!(c.to_string().contains("SWITCHYARD_TEST_UNSET_KEY"), "{c:#}");
    assert_eq!(edge.applied_versions().await, vec![1, 3]);

    // An edge with the wrong token is refused; it serves its --config file.
    let yaml = config_with_routes(&mock.url(), &["from-file"]);
    let mut spec = ControlledEdge::new(&cp.url, "edge-bad-token");
    spec.token = "wrong-token";
    spec.config = Some(&yaml);
    let refused = spec.start().await;
    let c = refused.admin_config().await;
    assert_eq!(
        (&c["version"], &c["source"]),
        (&0.into(), &"file".into()),
        "{c:#}"
    );
    assert!(
        c["control_plane"]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("Unauthenticated"),
        "{c:#}"
    );
    assert_eq!(chat(&http(), &refused.url, "from-file").await, 200);
}
