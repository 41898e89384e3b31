//! Keys, tiers, rate limits and budgets, end to end through the real edge.
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
  a: {{kind: anthropic, base_url: '{mock_url}/v1', health_check: {{disabled: true}}}}
routes:
  chat: {{targets: [{{provider: p, model: big-model}}]}}
  cheap: {{targets: [{{provider: p, model: small-model}}]}}
  claude: {{targets: [{{provider: a, model: claude-x}}]}}
prices:
  big-model: {{input_per_mtok: 1000, output_per_mtok: 1000}}
  small-model: {{input_per_mtok: 1, output_per_mtok: 1}}
  claude-x: {{input_per_mtok: 1000, output_per_mtok: 1000}}
tiers:
  free: {{requests_per_minute: 5, tokens_per_minute: 100000}}
  tiny: {{tokens_per_minute: 50}}
  pro: {{requests_per_minute: 1000, max_concurrency: 2}}
keys:
  - {{id: free-key, secret: sk-free, team: t-free, tier: free}}
  - {{id: tiny-key, secret: sk-tiny, tier: tiny}}
  - {{id: pro-key, secret: sk-pro, team: t-pro, tier: pro, default_feature: search}}
  - {{id: limited, secret: sk-limited, allowed_models: [cheap]}}
  - {{id: old, secret: sk-old, revoked: true}}
  - {{id: budget-key, secret: sk-budget, team: t-budget}}
  - {{id: down-key, secret: sk-down, team: t-down}}
budgets:
  - {{name: team-budget, scope: team, match: t-budget, window: day, hard_limit_usd: 0.5, soft_limit_usd: 0.2}}
  - {{name: down-budget, scope: team, match: t-down, window: month, hard_limit_usd: 0.03, downgrade_to: cheap}}
defaults:
  timeouts: {{connect: 500ms, first_byte: 5s, idle: 5s, total: 10s}}
"#
    )
}

async fn call(
    edge: &Edge,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut r = reqwest::Client::new()
        .post(format!("{}{path}", edge.url))
        .json(body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.timeout(Duration::from_secs(15)).send().await.unwrap()
}

fn chat(model: &str, max_tokens: u32) -> Value {
    json!({"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hello there"}]})
}

#[tokio::test]
async fn keys_are_required_and_checked_in_both_api_shapes() {
    let mock = mock().await;
    let edge = Edge::start(&cfg(&mock.url()), &[], &[]).await;
    let r = call(&edge, "/v1/chat/completions", &chat("chat", 8), &[]).await;
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "authentication_error");
    assert_eq!(v["error"]["code"], "missing_api_key");

    let body = json!({"model": "claude", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    let r = call(&edge, "/v1/messages", &body, &[("x-api-key", "sk-nope")]).await;
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error");

    let r = call(
        &edge,
        "/v1/chat/completions",
        &chat("chat", 8),
        &[("authorization", "Bearer sk-old")],
    )
    .await;
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("revoked"));

    // Anthropic SDKs send x-api-key; OpenAI SDKs a bearer token.
    assert_eq!(
        call(&edge, "/v1/messages", &body, &[("x-api-key", "sk-pro")])
            .await
            .status(),
        200
    );
    assert_eq!(
        call(
            &edge,
            "/v1/chat/completions",
            &chat("chat", 8),
            &[("authorization", "Bearer sk-pro")]
        )
        .await
        .status(),
        200
    );

    // Allowed models.
    let r = call(
        &edge,
        "/v1/chat/completions",
        &chat("chat", 8),
        &[("authorization", "Bearer sk-limited")],
    )
    .await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        call(
            &edge,
            "/v1/chat/completions",
            &chat("cheap", 8),
            &[("authorization", "Bearer sk-limited")]
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        mock.stats().model_requests,
        3,
        "rejected calls never reach the provider"
    );

    // Attribution from the key: team and default feature, key id (not secret).
    let calls = edge.wait_calls(7).await;
    let c = calls
        .iter()
        .find(|c| c["key_id"] == "pro-key" && c["api"] == "openai")
        .unwrap();
    assert_eq!(c["tags"]["team"], "t-pro");
    assert_eq!(c["tags"]["feature"], "search");
    assert!(!std::fs::read_to_string(&edge.call_log)
        .unwrap()
        .contains("sk-pro"));
}

#[tokio::test]
async fn exactly_the_limit_is_admitted_and_rejections_carry_retry_after() {
    let mock = mock().await;
    let edge = Edge::start(&cfg(&mock.url()), &[], &[]).await;
    let auth = [("authorization", "Bearer sk-free")];
    let mut ok = 0;
    let mut limited = 0;
    for i in 0..8 {
        let r = call(&edge, "/v1/chat/completions", &chat("cheap", 8), &auth).await;
        let h = r.headers().clone();
        assert_eq!(h["x-ratelimit-limit-requests"], "5");
        match r.status().as_u16() {
            200 => {
                ok += 1;
                assert_eq!(
                    h["x-ratelimit-remaining-requests"],
                    (4 - i).to_string().as_str()
                );
                assert!(h.contains_key("x-ratelimit-reset-requests"));
                assert!(h.contains_key("x-ratelimit-remaining-tokens"));
            }
            429 => {
                limited += 1;
                let secs: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
                assert!((1..=12).contains(&secs), "{secs}");
                let v: Value = r.json().await.unwrap();
                assert_eq!(v["error"]["type"], "rate_limit_error");
                assert!(v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("requests per minute"));
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!((ok, limited), (5, 3));
    assert_eq!(mock.stats().model_requests, 5);
}

#[tokio::test]
async fn token_limit_reserves_prompt_plus_max_tokens() {
    let mock = mock().await;
    let edge = Edge::start(&cfg(&mock.url()), &[], &[]).await;
    let auth = [("authorization", "Bearer sk-tiny")];
    // ~3 prompt tokens + 100 max_tokens > 50/min: can never fit.
    let r = call(&edge, "/v1/chat/completions", &chat("cheap", 100), &auth).await;
    assert_eq!(r.status(), 429);
    assert!(r.text().await.unwrap().contains("tokens per minute"));
    // 3 + 20 fits twice (reservation), the third does not until usage is
    // reconciled: the mock used 8 output tokens, so the refund makes room.
    assert_eq!(
        call(&edge, "/v1/chat/completions", &chat("cheap", 20), &auth)
            .await
            .status(),
        200
    );
    let r = call(&edge, "/v1/chat/completions", &chat("cheap", 20), &auth).await;
    assert_eq!(r.status(), 200, "reconciled refund leaves room");
    let remaining: u64 = r.headers()["x-ratelimit-remaining-tokens"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(remaining < 50);
}

#[tokio::test]
async fn concurrency_cap_per_key() {
    let mock = MockProvider::builder()
        .ttft(Duration::from_millis(500))
        .output_tokens(4..=4)
        .spawn("127.0.0.1:0")
        .await
        .unwrap();
    let edge = Edge::start(&cfg(&mock.url()), &[], &[]).await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = edge.url.clone();
        tasks.push(tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{url}/v1/chat/completions"))
                .header("authorization", "Bearer sk-pro")
                .json(&chat("cheap", 8))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 200, 429, 429]);
}

#[tokio::test]
async fn fifty_concurrent_requests_never_overshoot_a_hard_budget() {
    let mock = MockProvider::builder()
        .ttft(Duration::from_millis(100))
        .output_tokens(8..=8)
        .spawn("127.0.0.1:0")
        .await
        .unwrap();
    let edge = Edge::start(&cfg(&mock.url()), &[], &[]).await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let url = edge.url.clone();
        tasks.push(tokio::spawn(async move {
            reqwest::Client::new()
                .post(format!("{url}/v1/chat/completions"))
                .header("authorization", "Bearer sk-budget")
                .json(&chat("chat", 16))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut ok = 0;
    let mut rejected = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            429 => rejected += 1,
            s => panic!("unexpected {s}"),
        }
    }
    let calls = edge.wait_calls(50).await;
    let spent: f64 = calls
        .iter()
        .filter(|c| c["status"] == 200)
        .map(|c| c["cost_usd"].as_f64().unwrap())
        .sum();
    println!("admitted {ok}, rejected {rejected}, spent ${spent:.4} of $0.5");
    assert!(spent <= 0.5 + 1e-9, "hard budget overshot: ${spent}");
    assert!(ok >= 10, "reservations must not starve the budget: {ok}");
    assert!(rejected > 0);
    let budget_errors = calls.iter().filter(|c| c["status"] == 429).count();
    assert_eq!(budget_errors, rejected);
    // The soft limit ($0.2) raised one alert event.
    let events = edge.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"], "budget_soft_limit");
    assert_eq!(events[0]["budget"], "team-budget");
    let m = edge.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            "switchyard_budget_soft_alerts_total",
            &["budget=\"team-budget\""]
        ),
        1.0
    );
}

#[tokio::test]
async fn cut_stream_is_charged_against_the_budget() {
    let mock = mock().await;
    let edge = Edge::start(&cfg(&mock.url()), &[], &[]).await;
    mock.set_fault(Fault::Drop { after_chunks: 4 }, FaultScope::Always);
    let mut body = chat("chat", 16);
    body["stream"] = json!(true);
    let mut spent = 0.0;
    let mut n = 0;
    loop {
        let r = call(
            &edge,
            "/v1/chat/completions",
            &body,
            &[("authorization", "Bearer sk-budget")],
        )
        .await;
        if r.status() == 429 {
            break;
        }
        assert_eq!(r.status(), 200);
        assert!(!r.text().await.unwrap_or_default().contains("[DONE]"));
        n += 1;
        let calls = edge.wait_calls(n).await;
        let c = &calls[n - 1];
        assert_eq!(c["complete"], false);
        assert!(
            c["cost_usd"].as_f64().unwrap() > 0.0,
            "a cut stream is charged: {c}"
        );
        spent += c["cost_usd"].as_f64().unwrap();
        assert!(n < 200, "budget never ran out: cut streams are not charged");
    }
    assert!(spent <= 0.5 + 1e-9 && spent > 0.3, "spent {spent}");
}

#[tokio::test]
async fn exhausted_budget_downgrades_to_the_cheaper_route() {
    let mock = mock().await;
    let edge = Edge::start(&cfg(&mock.url()), &[], &[]).await;
    let auth = [("authorization", "Bearer sk-down")];
    let mut downgraded = 0;
    for _ in 0..6 {
        let r = call(&edge, "/v1/chat/completions", &chat("chat", 8), &auth).await;
        assert_eq!(r.status(), 200);
    }
    let calls = edge.wait_calls(6).await;
    for c in &calls {
        if c["downgraded_from"] == "chat" {
            downgraded += 1;
            assert_eq!(c["model_served"], "small-model");
        }
    }
    assert!(downgraded >= 3, "{calls:?}");
    let big: f64 = calls
        .iter()
        .filter(|c| c["model_served"] == "big-model")
        .map(|c| c["cost_usd"].as_f64().unwrap())
        .sum();
    assert!(big <= 0.03 + 1e-9);
}

#[tokio::test]
async fn spike_protection_bounds_the_queue_per_target() {
    let mock = MockProvider::builder()
        .ttft(Duration::from_millis(800))
        .output_tokens(4..=4)
        .spawn("127.0.0.1:0")
        .await
        .unwrap();
    let yaml = format!(
        "providers:\n  p: {{kind: openai, base_url: '{}/v1', health_check: {{disabled: true}}, max_in_flight: 2, max_queue: 1, queue_timeout: 3s}}\nroutes:\n  m: {{targets: [{{provider: p, model: x}}]}}\n",
        mock.url()
    );
    let edge = Edge::start(&yaml, &[], &[]).await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let url = edge.url.clone();
        tasks.push(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let r = reqwest::Client::new()
                .post(format!("{url}/v1/chat/completions"))
                .json(&chat("m", 4))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let retry_after = r.headers().get("retry-after").is_some();
            (status, retry_after, started.elapsed())
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ok = 0;
    for t in tasks {
        let (status, retry_after, took) = t.await.unwrap();
        match status {
            200 => ok += 1,
            429 => {
                assert!(retry_after);
                assert!(
                    took < Duration::from_millis(500),
                    "rejected at once, not queued: {took:?}"
                );
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(ok, 3, "2 in flight + 1 queued");
    assert_eq!(mock.stats().model_requests, 3);
}
