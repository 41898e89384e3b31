//! Black-box tests of the edge's client-facing API: the real binary, real
//! HTTP on loopback, the mock provider as upstream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

async fn post(edge: &Edge, path: &str, body: Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client().post(format!("{}{}", edge.url, path)).json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

fn openai_body(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello to the gateway."}
        ],
        "temperature": 0.2,
        "max_tokens": 64,
        "stream": stream
    })
}

fn anthropic_body(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "system": "You are terse.",
        "messages": [{"role": "user", "content": "Say hello to the gateway."}],
        "max_tokens": 64,
        "stream": stream
    })
}

#[tokio::test]
async fn openai_non_streaming_with_usage_cost_log_and_metrics() {
    let mock = mock().await;
    let edge = Edge::start(&mock_config(&mock.url(), ""), KEYS, &[]).await;
    let resp = post(
        &edge,
        "/v1/chat/completions",
        openai_body("gpt-mock", false),
        &[
            ("authorization", "Bearer client-secret-must-not-leak"),
            ("x-request-id", "req-123"),
            ("x-switchyard-feature", "greeter"),
            ("x-switchyard-team", "growth"),
        ],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "req-123");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["model"], "gpt-mock",
        "the client sees the public model name"
    );
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert!(!body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .is_empty());
    assert_eq!(body["usage"]["completion_tokens"], 8);
    let prompt_tokens = body["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 0);

    // What went upstream: the pinned model, the provider's key, never the client's.
    let up = &mock.requests()[0];
    assert_eq!(up.path, "/v1/chat/completions");
    assert_eq!(
        up.header("authorization"),
        Some("Bearer sk-provider-openai")
    );
    assert!(!format!("{:?}", up.headers).contains("client-secret"));
    assert_eq!(up.json().unwrap()["model"], "gpt-4o-mini-2024-07-18");

    let calls = edge.wait_calls(1).await;
    let c = &calls[0];
    assert_eq!(c["trace_id"], "req-123");
    assert_eq!(c["status"], 200);
    assert_eq!(c["route"], "gpt-mock");
    assert_eq!(c["model_served"], "gpt-4o-mini-2024-07-18");
    assert_eq!(c["provider"], "mock-openai");
    assert_eq!(c["output_tokens"], 8);
    assert_eq!(c["input_tokens"], prompt_tokens);
    let want_cost = (prompt_tokens as f64 * 0.15 + 8.0 * 0.60) / 1e6;
    assert!(
        (c["cost_usd"].as_f64().unwrap() - want_cost).abs() < 1e-12,
        "{c}"
    );
    assert_eq!(c["tags"]["feature"], "greeter");
    assert_eq!(c["tags"]["team"], "growth");
    assert_eq!(c["temperature"], 0.2);
    assert_eq!(c["max_tokens"], 64);
    assert_eq!(c["prompt_sha256"].as_str().unwrap().len(), 64);
    assert!(
        c.get("prompt").is_none(),
        "bodies are not logged by default"
    );
    assert_eq!(c["attempts"].as_array().unwrap().len(), 1);

    let m = edge.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            "switchyard_tokens_total",
            &["route=\"gpt-mock\"", "kind=\"output\""]
        ),
        8.0
    );
    assert_eq!(
        metric_sum(
            &m,
            "switchyard_requests_total",
            &["route=\"gpt-mock\"", "status=\"200\""]
        ),
        1.0
    );
    assert!(metric_sum(&m, "switchyard_cost_usd_total", &["route=\"gpt-mock\""]) > 0.0);
    assert!(m.contains("switchyard_request_duration_seconds_bucket"));
}

#[tokio::test]
async fn openai_streaming_requests_usage_upstream_and_strips_it_unless_asked() {
    let mock = mock().await;
    let edge = Edge::start(&mock_config(&mock.url(), ""), KEYS, &[]).await;

    // Client did not ask for usage.
    let resp = post(
        &edge,
        "/v1/chat/completions",
        openai_body("gpt-mock", true),
        &[],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = resp.text().await.unwrap();
    let events = sse_events(&text);
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c.get("usage").is_none_or(Value::is_null)),
        "usage stripped: {text}"
    );
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(!content.is_empty());
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "stop"));
    // ...but the edge asked the provider for it.
    assert_eq!(
        mock.requests()[0].json().unwrap()["stream_options"]["include_usage"],
        true
    );
    let calls = edge.wait_calls(1).await;
    assert_eq!(
        calls[0]["output_tokens"], 8,
        "usage accounted even when stripped"
    );
    assert_eq!(calls[0]["complete"], true);
    assert!(calls[0]["ttft_ms"].as_f64().is_some());

    // Client asked for usage.
    let mut body = openai_body("gpt-mock", true);
    body["stream_options"] = json!({"include_usage": true});
    let text = post(&edge, "/v1/chat/completions", body, &[])
        .await
        .text()
        .await
        .unwrap();
    let events = sse_events(&text);
    let usage_chunk: Value = serde_json::from_str(&events[events.len() - 2].1).unwrap();
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 8, "{text}");
    assert_eq!(usage_chunk["choices"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn anthropic_non_streaming_and_streaming() {
    let mock = mock().await;
    let edge = Edge::start(&mock_config(&mock.url(), ""), KEYS, &[]).await;
    let resp = post(
        &edge,
        "/v1/messages",
        anthropic_body("claude-mock", false),
        &[
            ("x-api-key", "client-key"),
            ("anthropic-version", "2023-06-01"),
        ],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "message");
    assert_eq!(body["model"], "claude-mock");
    assert_eq!(body["content"][0]["type"], "text");
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["usage"]["output_tokens"], 8);
    let up = &mock.requests()[0];
    assert_eq!(up.path, "/v1/messages");
    assert_eq!(up.header("x-api-key"), Some("sk-provider-anthropic"));
    assert_eq!(up.header("anthropic-version"), Some("2023-06-01"));

    let text = post(
        &edge,
        "/v1/messages",
        anthropic_body("claude-mock", true),
        &[],
    )
    .await
    .text()
    .await
    .unwrap();
    let names: Vec<String> = sse_events(&text)
        .into_iter()
        .filter_map(|(e, _)| e)
        .filter(|e| e != "ping")
        .collect();
    assert_eq!(names.first().map(String::as_str), Some("message_start"));
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));
    for want in [
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "missing {want} in {names:?}"
        );
    }
    let calls = edge.wait_calls(2).await;
    assert_eq!(calls[1]["output_tokens"], 8);
    assert!(calls[1]["input_tokens"].as_u64().unwrap() > 0);
    assert!(calls[1]["cost_usd"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn openai_client_served_by_anthropic_model_and_back() {
    let mock = mock().await;
    let edge = Edge::start(&mock_config(&mock.url(), ""), KEYS, &[]).await;
    // OpenAI client → Anthropic provider.
    let resp = post(
        &edge,
        "/v1/chat/completions",
        openai_body("claude-mock", false),
        &[],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["completion_tokens"], 8);
    let up = mock.requests()[0].json().unwrap();
    assert_eq!(mock.requests()[0].path, "/v1/messages");
    assert_eq!(
        up["system"], "You are terse.",
        "system message moved to the top-level field: {up}"
    );
    assert_eq!(up["messages"][0]["role"], "user");
    assert_eq!(up["max_tokens"], 64);

    // OpenAI streaming client → Anthropic provider.
    let text = post(
        &edge,
        "/v1/chat/completions",
        openai_body("claude-mock", true),
        &[],
    )
    .await
    .text()
    .await
    .unwrap();
    let events = sse_events(&text);
    assert_eq!(events.last().unwrap().1, "[DONE]", "{text}");
    let content: String = events[..events.len() - 1]
        .iter()
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert!(!content.is_empty(), "{text}");

    // Anthropic streaming client → OpenAI provider.
    let text = post(&edge, "/v1/messages", anthropic_body("gpt-mock", true), &[])
        .await
        .text()
        .await
        .unwrap();
    let events = sse_events(&text);
    let names: Vec<&str> = events.iter().filter_map(|(e, _)| e.as_deref()).collect();
    assert_eq!(names.first(), Some(&"message_start"), "{text}");
    assert_eq!(names.last(), Some(&"message_stop"), "{text}");
    let up = mock.requests().last().unwrap().json().unwrap();
    assert_eq!(up["messages"][0]["role"], "system");
    let calls = edge.wait_calls(3).await;
    assert!(calls.iter().all(|c| c["output_tokens"] == 8), "{calls:?}");
}

#[tokio::test]
async fn tool_calls_translate_both_ways() {
    let mock = mock().await;
    let edge = Edge::start(&mock_config(&mock.url(), ""), KEYS, &[]).await;
    let tools = json!([{"type": "function", "function": {"name": "search", "description": "Search", "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]);
    let body = json!({"model": "claude-mock", "messages": [{"role": "user", "content": "find it"}], "tools": tools});
    let resp: Value = post(&edge, "/v1/chat/completions", body, &[])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(resp["choices"][0]["finish_reason"], "tool_calls", "{resp}");
    let call = &resp["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "search");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"query": "mock"}));
    let up = mock.requests()[0].json().unwrap();
    assert_eq!(up["tools"][0]["name"], "search");
    assert!(up["tools"][0]["input_schema"].is_object());
    let calls = edge.wait_calls(1).await;
    assert_eq!(calls[0]["tool_calls"], json!(["search"]));
}

#[tokio::test]
async fn models_endpoint_lists_public_models_in_both_shapes() {
    let mock = mock().await;
    let edge = Edge::start(&mock_config(&mock.url(), ""), KEYS, &[]).await;
    let v: Value = client()
        .get(format!("{}/v1/models", edge.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["claude-mock", "gpt-mock"]);
    assert_eq!(v["object"], "list");
    let v: Value = client()
        .get(format!("{}/v1/models", edge.url))
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"][0]["type"], "model");
    assert_eq!(v["has_more"], false);
}

async fn expect_error(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status().as_u16(), status);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    resp.json().await.unwrap()
}

#[tokio::test]
async fn bad_input_gets_clear_errors_in_the_callers_shape() {
    let mock = mock().await;
    let edge = Edge::start(
        &mock_config(
            &mock.url(),
            "server: {max_body_bytes: 2048, max_header_bytes: 4096}",
        ),
        KEYS,
        &[],
    )
    .await;
    let c = client();
    let url = |p: &str| format!("{}{}", edge.url, p);

    // Malformed JSON → OpenAI shape.
    let v = expect_error(
        c.post(url("/v1/chat/completions"))
            .body("{not json")
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"].is_string());
    assert!(v["error"].get("param").is_some() && v["error"].get("code").is_some());

    // Missing messages → Anthropic shape naming the field.
    let v = expect_error(
        c.post(url("/v1/messages"))
            .json(&json!({"model": "claude-mock", "max_tokens": 5}))
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("messages"),
        "{v}"
    );

    // Wrong type.
    let v = expect_error(
        c.post(url("/v1/chat/completions"))
            .json(&json!({"model": "gpt-mock", "messages": "hi"}))
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_eq!(v["error"]["param"], "messages");
    let v = expect_error(
        c.post(url("/v1/chat/completions"))
            .json(&json!({"model": 5, "messages": []}))
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_eq!(v["error"]["param"], "model");

    // Unknown model → 404 model_not_found.
    let v = expect_error(
        c.post(url("/v1/chat/completions"))
            .json(&openai_body("nope", false))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert_eq!(v["error"]["code"], "model_not_found");
    let v = expect_error(
        c.post(url("/v1/messages"))
            .json(&anthropic_body("nope", false))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert_eq!(v["error"]["type"], "not_found_error");

    // A field the target API cannot express → 400 naming it, never dropped.
    let mut body = openai_body("claude-mock", false);
    body["n"] = json!(3);
    let v = expect_error(
        c.post(url("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_eq!(v["error"]["param"], "n", "{v}");
    assert_eq!(
        mock.stats().model_requests,
        0,
        "nothing reached the provider"
    );

    // Body over the cap: with content-length and chunked.
    let big =
        json!({"model": "gpt-mock", "messages": [{"role": "user", "content": "x".repeat(4000)}]});
    let v = expect_error(
        c.post(url("/v1/chat/completions"))
            .json(&big)
            .send()
            .await
            .unwrap(),
        413,
    )
    .await;
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..8).map(|_| Ok(vec![b' '; 1000])).collect();
    let stream = futures::stream::iter(chunks);
    let resp = c
        .post(url("/v1/messages"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    let v = expect_error(resp, 413).await;
    assert_eq!(v["error"]["type"], "request_too_large");

    // Headers over the cap → 431.
    let resp = c
        .post(url("/v1/chat/completions"))
        .header("x-junk", "y".repeat(5000))
        .json(&openai_body("gpt-mock", false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 431);

    // Unknown path and wrong method.
    let v = expect_error(c.get(url("/v2/whatever")).send().await.unwrap(), 404).await;
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/v2/whatever"));
    expect_error(
        c.get(url("/v1/chat/completions")).send().await.unwrap(),
        405,
    )
    .await;

    // Every rejection is logged.
    let calls = edge.wait_calls(11).await;
    assert!(calls.iter().all(|c| c["status"].as_u64().unwrap() >= 400));
}

#[tokio::test]
async fn slowloris_is_cut_off_by_the_header_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = mock().await;
    let edge = Edge::start(
        &mock_config(&mock.url(), "server: {header_timeout: 1s}"),
        KEYS,
        &[],
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(edge.addr()).await.unwrap();
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    // Keep trickling header bytes: a per-read timeout would never fire.
    let mut buf = [0u8; 64];
    let closed = loop {
        if started.elapsed() > Duration::from_secs(5) {
            break false;
        }
        if s.write_all(b"X-A: b\r\n").await.is_err() {
            break true;
        }
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            _ => {}
        }
    };
    assert!(
        closed,
        "edge kept a trickling client past its header deadline"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn stream_cut_mid_way_ends_with_an_error_event_and_is_charged() {
    let mock = mock().await;
    let edge = Edge::start(&mock_config(&mock.url(), ""), KEYS, &[]).await;
    // OpenAI shape.
    mock.set_fault(Fault::Drop { after_chunks: 4 }, FaultScope::Next(1));
    let resp = post(
        &edge,
        "/v1/chat/completions",
        openai_body("gpt-mock", true),
        &[],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap_or_default();
    let events = sse_events(&text);
    assert!(
        !text.contains("[DONE]"),
        "a cut stream must not look complete: {text}"
    );
    let last: Value = serde_json::from_str(&events.last().unwrap().1).unwrap();
    assert!(last["error"]["message"].is_string(), "{text}");
    // Anthropic shape.
    mock.set_fault(Fault::Drop { after_chunks: 5 }, FaultScope::Next(1));
    let text = post(
        &edge,
        "/v1/messages",
        anthropic_body("claude-mock", true),
        &[],
    )
    .await
    .text()
    .await
    .unwrap_or_default();
    let events = sse_events(&text);
    assert!(
        !events
            .iter()
            .any(|(e, _)| e.as_deref() == Some("message_stop")),
        "{text}"
    );
    assert_eq!(events.last().unwrap().0.as_deref(), Some("error"), "{text}");
    let calls = edge.wait_calls(2).await;
    for c in &calls {
        assert_eq!(c["complete"], false, "{c}");
        assert!(
            c["error_type"]
                .as_str()
                .unwrap()
                .starts_with("upstream_stream"),
            "{c}"
        );
        assert!(
            c["output_tokens"].as_u64().unwrap() > 0,
            "partial output is charged: {c}"
        );
        assert!(
            c["input_tokens"].as_u64().unwrap() > 0 || c["api"] == "openai",
            "{c}"
        );
    }
    let m = edge.metrics().await;
    assert_eq!(
        metric_sum(&m, "switchyard_streams_incomplete_total", &[]),
        2.0
    );
}

#[tokio::test]
async fn retries_a_failed_attempt_before_the_first_byte() {
    let mock = mock().await;
    let edge = Edge::start(&mock_config(&mock.url(), ""), KEYS, &[]).await;
    mock.set_fault(
        Fault::Status {
            status: 503,
            retry_after: None,
            body: None,
        },
        FaultScope::Next(1),
    );
    let resp = post(
        &edge,
        "/v1/chat/completions",
        openai_body("gpt-mock", false),
        &[],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(mock.stats().model_requests, 2);
    let calls = edge.wait_calls(1).await;
    let attempts = calls[0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["outcome"], "status_5xx");
    assert_eq!(attempts[0]["status"], 503);
    assert_eq!(attempts[1]["outcome"], "ok");
}

#[tokio::test]
async fn upstream_request_errors_pass_through_and_are_not_retried() {
    let mock = mock().await;
    let edge = Edge::start(&mock_config(&mock.url(), ""), KEYS, &[]).await;
    mock.set_fault(
        Fault::Status {
            status: 400,
            retry_after: None,
            body: None,
        },
        FaultScope::Next(1),
    );
    let resp = post(
        &edge,
        "/v1/messages",
        anthropic_body("claude-mock", false),
        &[],
    )
    .await;
    let v = expect_error(resp, 400).await;
    assert_eq!(v["type"], "error");
    assert_eq!(
        mock.stats().model_requests,
        1,
        "a 400 is the request's fault: no retry"
    );
}

#[tokio::test]
async fn traceparent_becomes_the_trace_id_and_bodies_log_only_when_enabled() {
    let mock = mock().await;
    let cfg = mock_config(&mock.url(), "")
        .replace("  claude-mock:\n", "  claude-mock:\n    log_bodies: true\n");
    let edge = Edge::start(&cfg, KEYS, &[]).await;
    let resp = post(
        &edge,
        "/v1/messages",
        anthropic_body("claude-mock", false),
        &[(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )],
    )
    .await;
    assert_eq!(
        resp.headers()["x-request-id"],
        "0af7651916cd43dd8448eb211c80319c"
    );
    let calls = edge.wait_calls(1).await;
    assert_eq!(calls[0]["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    assert!(calls[0]["prompt"]
        .as_str()
        .unwrap()
        .contains("Say hello to the gateway."));
    assert!(!calls[0]["response"].as_str().unwrap().is_empty());
}
