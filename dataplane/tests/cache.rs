//! The exact-match response cache through the real edge.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn cfg(mock_url: &str) -> String {
    format!(
        r#"
providers:
  p: {{kind: openai, base_url: '{mock_url}/v1', health_check: {{disabled: true}}}}
routes:
  m:
    targets: [{{provider: p, model: gpt-x}}]
    cache: {{enabled: true, ttl: 1m}}
  nocache: {{targets: [{{provider: p, model: gpt-x}}]}}
prices:
  gpt-x: {{input_per_mtok: 10, output_per_mtok: 30}}
keys:
  - {{id: a1, secret: sk-a1, team: alpha}}
  - {{id: a2, secret: sk-a2, team: alpha}}
  - {{id: b1, secret: sk-b1, team: beta}}
"#
    )
}

async fn post_raw(
    edge: &Edge,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut r = reqwest::Client::new()
        .post(format!("{}{path}", edge.url))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.timeout(Duration::from_secs(15)).send().await.unwrap()
}

const A1: (&str, &str) = ("authorization", "Bearer sk-a1");

fn status(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-switchyard-cache")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn hit_after_miss_ignores_key_order_and_costs_nothing() {
    let mock = mock().await;
    let edge = Edge::start(&cfg(&mock.url()), &[], &[]).await;
    let body =
        r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"What is 2+2?"}]}"#;
    let reordered = r#"{ "messages": [ {"content": "What is 2+2?", "role": "user"} ],
        "temperature": 0, "model": "m" }"#;
    let r = post_raw(&edge, "/v1/chat/completions", body, &[A1]).await;
    assert_eq!(status(&r), "MISS");
    let first: Value = r.json().await.unwrap();
    let r = post_raw(
        &edge,
        "/v1/chat/completions",
        reordered,
        &[("authorization", "Bearer sk-a2")],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(status(&r), "HIT", "same team, same canonical request");
    let second: Value = r.json().await.unwrap();
    assert_eq!(
        first["choices"][0]["message"]["content"],
        second["choices"][0]["message"]["content"]
    );
    assert_eq!(mock.stats().model_requests, 1);
    let calls = edge.wait_calls(2).await;
    assert_eq!(calls[1]["cache"], "HIT");
    assert_eq!(calls[1]["cost_usd"], 0.0);
    assert_eq!(calls[1]["input_tokens"], 0);
    assert!(
        (calls[1]["cost_saved_usd"].as_f64().unwrap() - calls[0]["cost_usd"].as_f64().unwrap())
            .abs()
            < 1e-12
    );
    assert!(calls[0]["cost_usd"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn tenants_never_share_answers() {
    let mock = mock().await;
    let edge = Edge::start(&cfg(&mock.url()), &[], &[]).await;
    let body =
        r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"secret plans"}]}"#;
    assert_eq!(
        status(&post_raw(&edge, "/v1/chat/completions", body, &[A1]).await),
        "MISS"
    );
    let r = post_raw(
        &edge,
        "/v1/chat/completions",
        body,
        &[("authorization", "Bearer sk-b1")],
    )
    .await;
    assert_eq!(
        status(&r),
        "MISS",
        "another team must not read alpha's answer"
    );
    assert_eq!(mock.stats().model_requests, 2);
}

#[tokio::test]
async fn hits_replay_as_streams_in_both_api_shapes() {
    let mock = mock().await;
    let edge = Edge::start(&cfg(&mock.url()), &[], &[]).await;
    let q = "Name three colours.";
    let body = json!({"model": "m", "temperature": 0, "max_tokens": 4096, "messages": [{"role": "user", "content": q}]});
    let r = post_raw(&edge, "/v1/chat/completions", &body.to_string(), &[A1]).await;
    let full: Value = r.json().await.unwrap();
    let want = full["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();

    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let r = post_raw(&edge, "/v1/chat/completions", &sbody.to_string(), &[A1]).await;
    assert_eq!(status(&r), "HIT");
    let text = r.text().await.unwrap();
    let events = sse_events(&text);
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let got: String = events[..events.len() - 1]
        .iter()
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(got, want);

    // The same conversation from an Anthropic client: same canonical key.
    let abody = json!({"model": "m", "temperature": 0, "max_tokens": 4096, "stream": true, "messages": [{"role": "user", "content": q}]});
    let r = post_raw(
        &edge,
        "/v1/messages",
        &abody.to_string(),
        &[("x-api-key", "sk-a1")],
    )
    .await;
    assert_eq!(
        status(&r),
        "HIT",
        "the same conversation in the other API shape"
    );
    let text = r.text().await.unwrap();
    {
        let events = sse_events(&text);
        let names: Vec<&str> = events.iter().filter_map(|(e, _)| e.as_deref()).collect();
        assert_eq!(names.first(), Some(&"message_start"));
        assert_eq!(names.last(), Some(&"message_stop"));
        let got: String = events
            .iter()
            .filter(|(e, _)| e.as_deref() == Some("content_block_delta"))
            .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
            .filter_map(|d| d["delta"]["text"].as_str().map(str::to_string))
            .collect();
        assert_eq!(got, want);
    }
    assert_eq!(mock.stats().model_requests, 1);
}

#[tokio::test]
async fn streamed_misses_are_stored_only_when_complete() {
    let mock = mock().await;
    let edge = Edge::start(&cfg(&mock.url()), &[], &[]).await;
    let body = json!({"model": "m", "temperature": 0, "stream": true, "messages": [{"role": "user", "content": "stream me"}]}).to_string();
    mock.set_fault(Fault::Drop { after_chunks: 4 }, FaultScope::Next(1));
    let r = post_raw(&edge, "/v1/chat/completions", &body, &[A1]).await;
    assert_eq!(status(&r), "MISS");
    assert!(!r.text().await.unwrap_or_default().contains("[DONE]"));
    // The cut answer was not stored: this is another miss, and complete.
    let r = post_raw(&edge, "/v1/chat/completions", &body, &[A1]).await;
    assert_eq!(status(&r), "MISS");
    assert!(r.text().await.unwrap().contains("[DONE]"));
    let r = post_raw(&edge, "/v1/chat/completions", &body, &[A1]).await;
    assert_eq!(status(&r), "HIT");
    assert!(r.text().await.unwrap().contains("[DONE]"));
    assert_eq!(mock.stats().model_requests, 2);
}

#[tokio::test]
async fn concurrent_identical_requests_coalesce_into_one_upstream_call() {
    let mock = MockProvider::builder()
        .ttft(Duration::from_millis(300))
        .output_tokens(8..=8)
        .spawn("127.0.0.1:0")
        .await
        .unwrap();
    let edge = Edge::start(&cfg(&mock.url()), &[], &[]).await;
    let body = r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"popular question"}]}"#;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let url = edge.url.clone();
        tasks.push(tokio::spawn(async move {
            let r = reqwest::Client::new()
                .post(format!("{url}/v1/chat/completions"))
                .header("authorization", "Bearer sk-a1")
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let s = status(&r);
            (r.status().as_u16(), s)
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        let (code, s) = t.await.unwrap();
        assert_eq!(code, 200);
        statuses.push(s);
    }
    assert_eq!(mock.stats().model_requests, 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| *s == "MISS").count(), 1);
    let m = edge.metrics().await;
    assert_eq!(metric_sum(&m, "switchyard_cache_coalesced_total", &[]), 9.0);
}

#[tokio::test]
async fn cache_control_and_nondeterministic_requests() {
    let mock = mock().await;
    let edge = Edge::start(&cfg(&mock.url()), &[], &[]).await;
    let body = r#"{"model":"m","temperature":0,"messages":[{"role":"user","content":"cc"}]}"#;
    // no-store: neither looked up nor stored.
    let r = post_raw(
        &edge,
        "/v1/chat/completions",
        body,
        &[A1, ("cache-control", "no-store")],
    )
    .await;
    assert_eq!(status(&r), "BYPASS");
    assert_eq!(
        status(&post_raw(&edge, "/v1/chat/completions", body, &[A1]).await),
        "MISS"
    );
    assert_eq!(
        status(&post_raw(&edge, "/v1/chat/completions", body, &[A1]).await),
        "HIT"
    );
    // no-cache: skip the lookup, refresh the entry.
    let r = post_raw(
        &edge,
        "/v1/chat/completions",
        body,
        &[A1, ("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(status(&r), "BYPASS");
    assert_eq!(mock.stats().model_requests, 3);
    // temperature > 0 (or absent) is not cached by default.
    let hot = r#"{"model":"m","temperature":0.9,"messages":[{"role":"user","content":"cc"}]}"#;
    assert_eq!(
        status(&post_raw(&edge, "/v1/chat/completions", hot, &[A1]).await),
        "BYPASS"
    );
    assert_eq!(
        status(&post_raw(&edge, "/v1/chat/completions", hot, &[A1]).await),
        "BYPASS"
    );
    // A route without caching says nothing.
    let plain =
        r#"{"model":"nocache","temperature":0,"messages":[{"role":"user","content":"cc"}]}"#;
    assert_eq!(
        status(&post_raw(&edge, "/v1/chat/completions", plain, &[A1]).await),
        ""
    );
}
