//! End-to-end tests against the embedded (data directory) store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use switchyard_proto::config::Tier;
use switchyard_proto::control::{
    resource::Spec, AckRequest, ApplyResourceRequest, ListEdgesRequest, Resource, UsageRecord,
    UsageReport, WatchRequest,
};

#[test]
fn ctl_workflow_on_embedded_store() {
    let data = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&["--data-dir", data.path().to_str().unwrap()]);
    core_flow(&cp.url);
}

#[test]
fn embedded_store_survives_restart_and_sigterm_is_clean() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        dir.path(),
        "c.yaml",
        &BASE_YAML.replace("${TEST_KEY_SECRET}", "x"),
    );
    let data_arg = data.path().to_str().unwrap();

    let mut cp = ControlPlane::start(&["--data-dir", data_arg]);
    ctl(&cp.url, &["apply", "-f", &file, "-m", "one"]).ok();
    ctl(
        &cp.url,
        &[
            "keys", "create", "--id", "k9", "--team", "t", "--tier", "free",
        ],
    )
    .ok();
    // A second process may not open the same data directory.
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard-control"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-token",
            "a",
            "--edge-token",
            "e",
            "--data-dir",
            data_arg,
        ])
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("in use"),
        "{:?}",
        second
    );
    let status = cp.terminate();
    assert!(status.success(), "exit status {status}; log: {}", cp.log());

    let cp = ControlPlane::start(&["--data-dir", data_arg]);
    let got = ctl(&cp.url, &["get", "-o", "json"]).ok().json();
    assert_eq!(got["version"], 2);
    assert_eq!(got["value"]["keys"][1]["id"], "k9");
    let h = ctl(&cp.url, &["history", "-o", "json"]).ok().json();
    assert_eq!(h["versions"].as_array().unwrap().len(), 2);
    assert_eq!(h["versions"][1]["comment"], "one");
    let out = ctl(&cp.url, &["rollback", "1"]).ok();
    assert!(out.stdout.contains("committed version 3"), "{}", out.stdout);
}

fn tier_resource(name: &str, rpm: u64) -> ApplyResourceRequest {
    ApplyResourceRequest {
        resource: Some(Resource {
            name: name.into(),
            spec: Some(Spec::Tier(Tier {
                requests_per_minute: rpm,
                ..Default::default()
            })),
        }),
        options: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_snapshot_then_every_version_in_order() {
    let data = tempfile::tempdir().unwrap();
    let mut cp = ControlPlane::start(&["--data-dir", data.path().to_str().unwrap()]);
    let mut admin = admin_client(&cp.url).await;
    let mut edge = edge_client(&cp.url, EDGE).await;

    // Wrong / missing edge token; the admin token is not an edge token.
    for token in ["nope", "", ADMIN] {
        let mut bad = edge_client(&cp.url, token).await;
        let err = bad
            .watch(WatchRequest {
                node_id: "e1".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{token}: {err}");
    }
    let err = edge
        .watch(WatchRequest {
            node_id: "bad id/..".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    admin.apply_resource(tier_resource("t0", 1)).await.unwrap();
    let mut stream = edge
        .watch(WatchRequest {
            node_id: "edge-1".into(),
            region: "eu".into(),
            last_applied_version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(first.snapshot);
    assert_eq!(first.version, 1);
    assert!(first.config.as_ref().unwrap().tiers.contains_key("t0"));
    assert!(first.committed_at_unix_ms > 0 && !first.config_sha256.is_empty());

    // A burst of commits: each arrives once, in order, as a full document.
    for i in 1..=8u64 {
        admin
            .apply_resource(tier_resource(&format!("t{i}"), i))
            .await
            .unwrap();
    }
    for want in 2..=9u64 {
        let u = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(u.version, want);
        assert!(!u.snapshot);
        assert_eq!(u.config.unwrap().tiers.len() as u64, want);
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.message())
            .await
            .is_err(),
        "unexpected extra update"
    );

    // Ack shows up in ListEdges.
    edge.ack(AckRequest {
        node_id: "edge-1".into(),
        region: "eu".into(),
        version: 9,
        accepted: true,
        error: String::new(),
    })
    .await
    .unwrap();
    let edges = admin
        .list_edges(ListEdgesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(edges.current_version, 9);
    let e = edges.edges.iter().find(|e| e.node_id == "edge-1").unwrap();
    assert!(e.connected && e.region == "eu");
    assert_eq!(
        (e.version_served, e.version_sent, e.last_ack_version),
        (9, 9, 9)
    );
    let out = ctl(&cp.url, &["edges"]).ok().stdout;
    assert!(out.contains("edge-1") && out.contains("yes"), "{out}");

    // A rejected version is recorded without changing what is served.
    edge.ack(AckRequest {
        node_id: "edge-1".into(),
        region: "eu".into(),
        version: 10,
        accepted: false,
        error: "boom".into(),
    })
    .await
    .unwrap();
    let edges = admin
        .list_edges(ListEdgesRequest {})
        .await
        .unwrap()
        .into_inner();
    let e = edges.edges.iter().find(|e| e.node_id == "edge-1").unwrap();
    assert_eq!(
        (e.version_served, e.last_ack_version, e.last_ack_accepted),
        (9, 10, false)
    );
    assert_eq!(e.last_ack_error, "boom");

    // Usage: acked by seq, duplicates acknowledged without being stored twice.
    let report = |seq: u64| UsageReport {
        edge_id: "edge-1".into(),
        seq,
        region: "eu".into(),
        records: vec![UsageRecord {
            key_id: "k1".into(),
            input_tokens: 3,
            cost_usd: 0.5,
            ..Default::default()
        }],
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut acks = edge
        .report_usage(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for seq in [1, 2, 2, 3] {
        tx.send(report(seq)).await.unwrap();
        let ack = tokio::time::timeout(Duration::from_secs(5), acks.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(ack.persisted_seq, seq);
        assert!(ack.grants.is_empty());
    }
    drop(tx);
    let log = std::fs::read(data.path().join("usage/edge-1.log")).unwrap();
    assert_eq!(
        log.len(),
        3 * prost::Message::encode_length_delimited_to_vec(&report(1)).len()
    );

    // The stream closes when the control plane stops, and SIGTERM is clean
    // (and prompt) even with a watch open. (Blocking wait off the runtime so
    // this process's client can still answer the server's GOAWAY.)
    let t = std::time::Instant::now();
    let status = tokio::task::block_in_place(|| cp.terminate());
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        t.elapsed()
    );
    assert!(status.success(), "{status}; log: {}", cp.log());
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap();
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
}
