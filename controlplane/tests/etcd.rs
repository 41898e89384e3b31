//! End-to-end tests against a real etcd (started by the harness).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use switchyard_proto::config::Tier;
use switchyard_proto::control::{
    resource::Spec, ApplyResourceRequest, GetConfigRequest, HistoryRequest, Resource, WatchRequest,
    WriteOptions,
};

fn tier(name: &str, rpm: u64, expected: Option<u64>) -> ApplyResourceRequest {
    ApplyResourceRequest {
        resource: Some(Resource {
            name: name.into(),
            spec: Some(Spec::Tier(Tier {
                requests_per_minute: rpm,
                ..Default::default()
            })),
        }),
        options: Some(WriteOptions {
            expected_version: expected,
            ..Default::default()
        }),
    }
}

#[test]
fn ctl_workflow_on_etcd_store() {
    let etcd = Etcd::start();
    let cp = ControlPlane::start(&["--etcd-endpoints", &etcd.url, "--etcd-prefix", "/test/flow"]);
    core_flow(&cp.url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_etcd() {
    let etcd = Etcd::start();
    let a = ControlPlane::start(&["--etcd-endpoints", &etcd.url]);
    let b = ControlPlane::start(&["--etcd-endpoints", &etcd.url]);
    let mut ca = admin_client(&a.url).await;
    let mut cb = admin_client(&b.url).await;

    // Watch via B before anything exists: nothing is sent until version 1.
    let mut eb = edge_client(&b.url, EDGE).await;
    let mut stream = eb
        .watch(WatchRequest {
            node_id: "edge-b".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.message())
            .await
            .is_err()
    );

    // Writes alternate between the replicas; B's watcher sees all of them.
    for i in 1..=6u64 {
        let c = if i % 2 == 1 { &mut ca } else { &mut cb };
        let r = c
            .apply_resource(tier(&format!("t{i}"), i, None))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.version, i);
    }
    let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.snapshot);
    let mut seen = vec![first.version];
    while *seen.last().unwrap() < 6 {
        let u = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(!u.snapshot);
        assert_eq!(
            u.version,
            seen.last().unwrap() + 1,
            "skipped or repeated: {seen:?} then {}",
            u.version
        );
        seen.push(u.version);
    }
    let history = cb
        .history(HistoryRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        history
            .versions
            .iter()
            .map(|v| v.version)
            .collect::<Vec<_>>(),
        vec![6, 5, 4, 3, 2, 1]
    );

    // Concurrent writes pinned to the same expected version: exactly one wins.
    let (ra, rb) = tokio::join!(
        ca.apply_resource(tier("x", 1, Some(6))),
        cb.apply_resource(tier("y", 1, Some(6)))
    );
    let codes: Vec<_> = [&ra, &rb]
        .iter()
        .map(|r| r.as_ref().err().map(|e| e.code()))
        .collect();
    assert_eq!(
        codes.iter().filter(|c| c.is_none()).count(),
        1,
        "{ra:?} {rb:?}"
    );
    assert!(codes.contains(&Some(tonic::Code::Aborted)), "{ra:?} {rb:?}");

    // Unpinned concurrent writes are merged: both land, in some order.
    let (ra, rb) = tokio::join!(
        ca.apply_resource(tier("p", 1, None)),
        cb.apply_resource(tier("q", 1, None))
    );
    let mut vs = vec![
        ra.unwrap().into_inner().version,
        rb.unwrap().into_inner().version,
    ];
    vs.sort();
    assert_eq!(vs, vec![8, 9]);
    let cfg = ca
        .get_config(GetConfigRequest { version: 0 })
        .await
        .unwrap()
        .into_inner();
    let tiers = cfg.config.unwrap().tiers;
    assert!(
        tiers.contains_key("p") && tiers.contains_key("q"),
        "{tiers:?}"
    );
    for want in 7..=9u64 {
        let u = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(u.version, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_fails_writes_fast_and_recovers() {
    let mut etcd = Etcd::start();
    let cp = ControlPlane::start(&["--etcd-endpoints", &etcd.url, "--store-timeout", "2s"]);
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        dir.path(),
        "c.yaml",
        &BASE_YAML.replace("${TEST_KEY_SECRET}", "x"),
    );
    ctl(&cp.url, &["apply", "-f", &file]).ok();

    let mut edge = edge_client(&cp.url, EDGE).await;
    let mut stream = edge
        .watch(WatchRequest {
            node_id: "edge-1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.version, 1);

    etcd.stop();
    // Writes fail fast with UNAVAILABLE.
    let t = Instant::now();
    ctl(
        &cp.url,
        &[
            "keys", "create", "--id", "k5", "--team", "t", "--tier", "free",
        ],
    )
    .fails_with(&["UNAVAILABLE"]);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "write took {:?}",
        t.elapsed()
    );
    // Reads of the current config are served from the replica's cache.
    let got = ctl(&cp.url, &["get", "-o", "json"]).ok().json();
    assert_eq!(got["version"], 1);
    // The edge stream stays open (no error, no message).
    assert!(
        tokio::time::timeout(Duration::from_millis(200), stream.message())
            .await
            .is_err()
    );

    etcd.restart();
    // Writes succeed again once the client has reconnected (bounded retry).
    let deadline = Instant::now() + Duration::from_secs(20);
    let out = loop {
        let out = ctl(
            &cp.url,
            &[
                "keys", "create", "--id", "k5", "--team", "t", "--tier", "free",
            ],
        );
        if out.code == 0 || Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let out = out.ok();
    assert!(out.stdout.contains("version 2"), "{}", out.stdout);
    // The watcher gets the new version.
    let u = tokio::time::timeout(Duration::from_secs(15), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(u.version, 2);
    assert!(u.config.unwrap().keys.iter().any(|k| k.id == "k5"));
    drop(cp);
}
