//! Black-box tests of the mock provider over real HTTP on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant, SystemTime};

use reqwest::StatusCode;
use serde_json::{json, Value};
use switchyard_loadtest::mock::{Fault, FaultScope, MockHandle, MockProvider, RetryAfter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(5);

async fn spawn() -> MockHandle {
    MockProvider::builder()
        .output_tokens(8..=8)
        .seed(1)
        .spawn("127.0.0.1:0")
        .await
        .unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(STEP)
        .build()
        .unwrap()
}

fn openai_body(stream: bool) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there, mock"},
        ],
        "stream": stream,
    })
}

fn anthropic_body(stream: bool) -> Value {
    json!({
        "model": "claude-sonnet-4-0",
        "max_tokens": 100,
        "system": "be brief",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there, mock"}]}],
        "stream": stream,
    })
}

/// "be brief" (8) + "hello there, mock" (17) = 25 chars -> ceil(25/4) = 7.
const PROMPT_TOKENS: u64 = 7;

async fn post(mock: &MockHandle, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", mock.url()))
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn post_with(
    mock: &MockHandle,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> reqwest::Result<reqwest::Response> {
    let mut rb = client().post(format!("{}{path}", mock.url())).json(body);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    rb.send().await
}

#[derive(Debug)]
struct Sse {
    raw: String,
    /// (event name, data) per SSE event.
    events: Vec<(Option<String>, String)>,
    /// The body ended with a transport error (e.g. connection dropped).
    error: bool,
    /// No data arrived for `idle` (the stream went silent).
    timed_out: bool,
}

impl Sse {
    fn data_json(&self) -> Vec<Value> {
        self.events
            .iter()
            .filter(|(_, d)| d != "[DONE]")
            .map(|(_, d)| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
            .collect()
    }
    fn names(&self) -> Vec<&str> {
        self.events
            .iter()
            .map(|(e, _)| e.as_deref().unwrap_or(""))
            .collect()
    }
}

async fn read_sse(mut resp: reqwest::Response, idle: Duration) -> Sse {
    let mut raw = Vec::new();
    let (mut error, mut timed_out) = (false, false);
    loop {
        match timeout(idle, resp.chunk()).await {
            Ok(Ok(Some(c))) => raw.extend_from_slice(&c),
            Ok(Ok(None)) => break,
            Ok(Err(_)) => {
                error = true;
                break;
            }
            Err(_) => {
                timed_out = true;
                break;
            }
        }
    }
    let raw = String::from_utf8(raw).unwrap();
    let mut events = Vec::new();
    for block in raw.split("\n\n").filter(|b| !b.is_empty()) {
        let mut name = None;
        let mut data = None;
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event: ") {
                name = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = Some(v.to_string());
            } else {
                panic!("unexpected SSE line {line:?} in {raw:?}");
            }
        }
        events.push((name, data.expect("event without data")));
    }
    Sse {
        raw,
        events,
        error,
        timed_out,
    }
}

/// Wait (bounded) until the mock has no open connections.
async fn wait_no_open_connections(mock: &MockHandle) {
    let t0 = Instant::now();
    while mock.stats().open_connections > 0 {
        assert!(
            t0.elapsed() < STEP,
            "connections left open: {:?}",
            mock.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------
// Endpoints

#[tokio::test]
async fn openai_non_streaming() {
    let mock = spawn().await;
    let resp = post(&mock, "/v1/chat/completions", &openai_body(false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["model"], "gpt-4o-mini");
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["finish_reason"], "stop");
    let content = choice["message"]["content"].as_str().unwrap();
    assert_eq!(content.split(' ').count(), 8, "{content}");
    assert_eq!(v["usage"]["completion_tokens"], 8);
    assert_eq!(v["usage"]["prompt_tokens"], PROMPT_TOKENS);
    assert_eq!(v["usage"]["total_tokens"], PROMPT_TOKENS + 8);

    // Capped by max_tokens / max_completion_tokens -> "length".
    for field in ["max_tokens", "max_completion_tokens"] {
        let mut body = openai_body(false);
        body[field] = json!(3);
        let v: Value = post(&mock, "/v1/chat/completions", &body)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "length", "{field}");
        assert_eq!(v["usage"]["completion_tokens"], 3);
        let content = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(content.split(' ').count(), 3);
    }
}

#[tokio::test]
async fn openai_streaming_with_and_without_usage() {
    let mock = spawn().await;
    for include_usage in [false, true] {
        let mut body = openai_body(true);
        body["max_tokens"] = json!(5);
        if include_usage {
            body["stream_options"] = json!({"include_usage": true});
        }
        let resp = post(&mock, "/v1/chat/completions", &body).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        let sse = read_sse(resp, STEP).await;
        assert!(!sse.error && !sse.timed_out);
        assert!(sse.raw.ends_with("data: [DONE]\n\n"), "{}", sse.raw);
        assert_eq!(sse.events.last().unwrap().1, "[DONE]");
        assert!(sse.events.iter().all(|(name, _)| name.is_none()));
        let chunks = sse.data_json();
        assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"
            && c["model"] == "gpt-4o-mini"
            && c["id"] == chunks[0]["id"]));
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let deltas: Vec<&str> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .filter(|s| !s.is_empty())
            .collect();
        assert_eq!(deltas.len(), 5);
        let finish: Vec<&Value> = chunks
            .iter()
            .filter(|c| !c["choices"][0]["finish_reason"].is_null())
            .collect();
        assert_eq!(finish.len(), 1);
        assert_eq!(finish[0]["choices"][0]["finish_reason"], "length");
        let usage: Vec<&Value> = chunks.iter().filter(|c| c["usage"].is_object()).collect();
        if include_usage {
            assert_eq!(usage.len(), 1);
            let last = chunks.last().unwrap();
            assert_eq!(last["choices"], json!([]));
            assert_eq!(last["usage"]["completion_tokens"], deltas.len());
            assert_eq!(last["usage"]["prompt_tokens"], PROMPT_TOKENS);
            assert_eq!(
                last["usage"]["total_tokens"],
                PROMPT_TOKENS + deltas.len() as u64
            );
        } else {
            assert!(usage.is_empty());
        }
    }
}

#[tokio::test]
async fn anthropic_non_streaming_and_validation() {
    let mock = spawn().await;
    let resp = post(&mock, "/v1/messages", &anthropic_body(false)).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "claude-sonnet-4-0");
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["stop_sequence"], Value::Null);
    assert_eq!(v["content"][0]["type"], "text");
    let text = v["content"][0]["text"].as_str().unwrap();
    assert_eq!(text.split(' ').count(), 8);
    assert_eq!(
        v["usage"],
        json!({"input_tokens": PROMPT_TOKENS, "output_tokens": 8})
    );

    let mut capped = anthropic_body(false);
    capped["max_tokens"] = json!(2);
    let v: Value = post(&mock, "/v1/messages", &capped)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(v["usage"]["output_tokens"], 2);

    let mut missing = anthropic_body(false);
    missing.as_object_mut().unwrap().remove("max_tokens");
    let resp = post(&mock, "/v1/messages", &missing).await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_tokens"));

    // Invalid JSON on the OpenAI path -> OpenAI error shape.
    let resp = client()
        .post(format!("{}/v1/chat/completions", mock.url()))
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn anthropic_streaming() {
    let mock = spawn().await;
    let resp = post(&mock, "/v1/messages", &anthropic_body(true)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let sse = read_sse(resp, STEP).await;
    assert!(!sse.error && !sse.timed_out);
    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(["content_block_delta"; 8]);
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(sse.names(), expected);
    let data = sse.data_json();
    for ((name, _), d) in sse.events.iter().zip(&data) {
        assert_eq!(
            d["type"].as_str(),
            name.as_deref(),
            "event name = data.type"
        );
    }
    let start = &data[0]["message"];
    assert!(start["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(start["model"], "claude-sonnet-4-0");
    assert_eq!(start["content"], json!([]));
    assert_eq!(
        start["usage"],
        json!({"input_tokens": PROMPT_TOKENS, "output_tokens": 1})
    );
    assert_eq!(
        data[1]["content_block"],
        json!({"type": "text", "text": ""})
    );
    let deltas: Vec<&Value> = data
        .iter()
        .filter(|d| d["type"] == "content_block_delta")
        .collect();
    assert!(deltas
        .iter()
        .all(|d| d["delta"]["type"] == "text_delta" && d["index"] == 0));
    let message_delta = &data[data.len() - 2];
    assert_eq!(message_delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(message_delta["delta"]["stop_sequence"], Value::Null);
    assert_eq!(message_delta["usage"]["output_tokens"], deltas.len());
}

#[tokio::test]
async fn models_endpoint_and_unknown_paths() {
    let mock = spawn().await;
    let resp = client()
        .get(format!("{}/v1/models", mock.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "list");
    let data = v["data"].as_array().unwrap();
    assert!(!data.is_empty());
    assert!(data
        .iter()
        .all(|m| m["object"] == "model" && m["id"].is_string()));

    let resp = client()
        .get(format!("{}/v2/nothing", mock.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = client()
        .get(format!("{}/v1/chat/completions", mock.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
}

#[tokio::test]
async fn output_tokens_range_is_seeded_and_overridable() {
    let a = MockProvider::builder()
        .output_tokens(1..=50)
        .seed(42)
        .spawn("127.0.0.1:0")
        .await
        .unwrap();
    let b = MockProvider::builder()
        .output_tokens(1..=50)
        .seed(42)
        .spawn("127.0.0.1:0")
        .await
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let va: Value = post(&a, "/v1/chat/completions", &openai_body(false))
            .await
            .json()
            .await
            .unwrap();
        let vb: Value = post(&b, "/v1/chat/completions", &openai_body(false))
            .await
            .json()
            .await
            .unwrap();
        let n = va["usage"]["completion_tokens"].as_u64().unwrap();
        assert!((1..=50).contains(&n));
        assert_eq!(n, vb["usage"]["completion_tokens"].as_u64().unwrap());
        seen.insert(n);
    }
    assert!(seen.len() > 1, "lengths should vary: {seen:?}");

    let v: Value = post_with(
        &a,
        "/v1/chat/completions",
        &openai_body(false),
        &[("x-mock-output-tokens", "3")],
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn pacing_and_ttft() {
    let mock = MockProvider::builder()
        .output_tokens(10..=10)
        .tokens_per_sec(200.0) // 5 ms per token: 9 gaps = 45 ms
        .ttft(Duration::from_millis(250))
        .spawn("127.0.0.1:0")
        .await
        .unwrap();
    let t0 = Instant::now();
    let resp = post(&mock, "/v1/chat/completions", &openai_body(true)).await;
    let ttfb = t0.elapsed();
    let sse = read_sse(resp, STEP).await;
    let total = t0.elapsed();
    assert!(!sse.error && !sse.timed_out);
    assert!(ttfb >= Duration::from_millis(250), "{ttfb:?}");
    assert!(
        total - ttfb >= Duration::from_millis(40),
        "paced: {ttfb:?} then {total:?}"
    );
    assert!(total < Duration::from_secs(2), "{total:?}");

    // Header overrides: no TTFT, unpaced.
    let t0 = Instant::now();
    let resp = post_with(
        &mock,
        "/v1/chat/completions",
        &openai_body(true),
        &[("x-mock-ttft-ms", "0"), ("x-mock-tokens-per-sec", "0")],
    )
    .await
    .unwrap();
    read_sse(resp, STEP).await;
    assert!(
        t0.elapsed() < Duration::from_millis(200),
        "{:?}",
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------
// Tool calls

fn openai_tools_body(stream: bool) -> Value {
    json!({
        "model": "gpt-4o",
        "stream": stream,
        "messages": [{"role": "user", "content": "search something"}],
        "tools": [
            {"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}},
            {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}},
        ],
    })
}

fn anthropic_tools_body(stream: bool) -> Value {
    json!({
        "model": "claude-sonnet-4-0",
        "max_tokens": 50,
        "stream": stream,
        "messages": [{"role": "user", "content": "search something"}],
        "tools": [
            {"name": "search", "input_schema": {"type": "object"}},
            {"name": "other", "input_schema": {"type": "object"}},
        ],
    })
}

#[tokio::test]
async fn openai_tool_calls() {
    let mock = spawn().await;
    let v: Value = post(&mock, "/v1/chat/completions", &openai_tools_body(false))
        .await
        .json()
        .await
        .unwrap();
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let call = &choice["message"]["tool_calls"][0];
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "search");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"query": "mock"}));
    let non_stream_tokens = v["usage"]["completion_tokens"].as_u64().unwrap();

    let mut body = openai_tools_body(true);
    body["stream_options"] = json!({"include_usage": true});
    let sse = read_sse(post(&mock, "/v1/chat/completions", &body).await, STEP).await;
    assert_eq!(sse.events.last().unwrap().1, "[DONE]");
    let chunks = sse.data_json();
    let first = &chunks[0]["choices"][0]["delta"];
    assert_eq!(first["role"], "assistant");
    assert!(first["tool_calls"][0]["id"]
        .as_str()
        .unwrap()
        .starts_with("call_"));
    assert_eq!(first["tool_calls"][0]["function"]["name"], "search");
    let pieces: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .filter(|s| !s.is_empty())
        .collect();
    assert!(pieces.len() >= 2, "{pieces:?}");
    let joined: Value = serde_json::from_str(&pieces.concat()).unwrap();
    assert_eq!(joined, json!({"query": "mock"}));
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str())
        .unwrap();
    assert_eq!(finish, "tool_calls");
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], pieces.len());
    assert_eq!(non_stream_tokens, pieces.len() as u64);

    // Last message is a tool result -> plain text.
    let mut body = openai_tools_body(false);
    body["messages"] = json!([
        {"role": "user", "content": "search something"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "search", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "result"},
    ]);
    let v: Value = post(&mock, "/v1/chat/completions", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["choices"][0]["message"]["content"].is_string());
    assert!(v["choices"][0]["message"].get("tool_calls").is_none());
}

#[tokio::test]
async fn anthropic_tool_use() {
    let mock = spawn().await;
    let v: Value = post(&mock, "/v1/messages", &anthropic_tools_body(false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["stop_reason"], "tool_use");
    let block = &v["content"][0];
    assert_eq!(block["type"], "tool_use");
    assert!(block["id"].as_str().unwrap().starts_with("toolu_"));
    assert_eq!(block["name"], "search");
    assert_eq!(block["input"], json!({"query": "mock"}));

    let sse = read_sse(
        post(&mock, "/v1/messages", &anthropic_tools_body(true)).await,
        STEP,
    )
    .await;
    let data = sse.data_json();
    assert_eq!(data[1]["type"], "content_block_start");
    assert_eq!(data[1]["content_block"]["type"], "tool_use");
    assert_eq!(data[1]["content_block"]["name"], "search");
    assert_eq!(data[1]["content_block"]["input"], json!({}));
    assert!(data[1]["content_block"]["id"]
        .as_str()
        .unwrap()
        .starts_with("toolu_"));
    let pieces: Vec<&str> = data
        .iter()
        .filter(|d| d["type"] == "content_block_delta")
        .map(|d| {
            assert_eq!(d["delta"]["type"], "input_json_delta");
            d["delta"]["partial_json"].as_str().unwrap()
        })
        .collect();
    assert!(pieces.len() >= 2);
    let joined: Value = serde_json::from_str(&pieces.concat()).unwrap();
    assert_eq!(joined, json!({"query": "mock"}));
    let message_delta = data.iter().find(|d| d["type"] == "message_delta").unwrap();
    assert_eq!(message_delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(message_delta["usage"]["output_tokens"], pieces.len());
    assert_eq!(sse.names().last().copied(), Some("message_stop"));

    // Last message carries a tool_result -> text.
    let mut body = anthropic_tools_body(false);
    body["messages"] = json!([
        {"role": "user", "content": "search something"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "search", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "result"}]},
    ]);
    let v: Value = post(&mock, "/v1/messages", &body)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["content"][0]["type"], "text");
}

// ---------------------------------------------------------------------------
// Faults

#[tokio::test]
async fn status_fault_shapes_and_retry_after_seconds() {
    let mock = spawn().await;
    mock.set_fault(
        Fault::Status {
            status: 429,
            retry_after: Some(RetryAfter::Seconds(2)),
            body: None,
        },
        FaultScope::Always,
    );
    let resp = post(&mock, "/v1/chat/completions", &openai_body(false)).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"].to_str().unwrap(), "2");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "requests");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");

    let resp = post(&mock, "/v1/messages", &anthropic_body(true)).await;
    assert_eq!(resp.status(), 429);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        (v["type"].as_str(), v["error"]["type"].as_str()),
        (Some("error"), Some("rate_limit_error"))
    );

    for (status, anthropic_type) in [
        (500, "api_error"),
        (502, "api_error"),
        (503, "api_error"),
        (529, "overloaded_error"),
    ] {
        mock.set_fault(
            Fault::Status {
                status,
                retry_after: None,
                body: None,
            },
            FaultScope::Always,
        );
        let resp = post(&mock, "/v1/messages", &anthropic_body(false)).await;
        assert_eq!(resp.status().as_u16(), status);
        assert!(resp.headers().get("retry-after").is_none());
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["type"], anthropic_type);
        let resp = post(&mock, "/v1/chat/completions", &openai_body(false)).await;
        assert_eq!(resp.status().as_u16(), status);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["type"], "server_error");
    }

    // Verbatim body.
    mock.set_fault(
        Fault::Status {
            status: 500,
            retry_after: None,
            body: Some(r#"{"custom":true}"#.into()),
        },
        FaultScope::Always,
    );
    let resp = post(&mock, "/v1/chat/completions", &openai_body(false)).await;
    assert_eq!(resp.text().await.unwrap(), r#"{"custom":true}"#);
    assert_eq!(mock.stats().fault("status:500"), 3);
}

#[tokio::test]
async fn retry_after_http_date_via_control_api() {
    let mock = spawn().await;
    let resp = client()
        .post(format!("{}/_mock/fault", mock.url()))
        .body(r#"{"kind":"status","status":429,"retry_after_date":true,"retry_after_secs":2}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = post(&mock, "/v1/chat/completions", &openai_body(false)).await;
    assert_eq!(resp.status(), 429);
    let date = resp.headers()["retry-after"].to_str().unwrap().to_string();
    let at = httpdate::parse_http_date(&date).unwrap();
    let ahead = at.duration_since(SystemTime::now()).unwrap_or_default();
    assert!(
        ahead > Duration::from_millis(900) && ahead <= Duration::from_secs(3),
        "{date} is {ahead:?} ahead"
    );

    // Raw string form via the API.
    let resp = client()
        .post(format!("{}/_mock/fault", mock.url()))
        .body(r#"{"kind":"status","status":503,"retry_after":"7"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = post(&mock, "/v1/chat/completions", &openai_body(false)).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"].to_str().unwrap(), "7");
}

async fn raw_request(stream: &mut TcpStream, path: &str) -> String {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: mock\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = timeout(STEP, stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed early");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap();
            if buf.len() >= end + 4 + len {
                return text;
            }
        }
    }
}

/// The connection is closed by the peer (EOF or reset) within `STEP`.
async fn assert_closed(stream: &mut TcpStream) {
    let mut b = [0u8; 64];
    match timeout(STEP, stream.read(&mut b)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        other => panic!("connection still open: {other:?}"),
    }
}

#[tokio::test]
async fn refuse_then_recover_on_same_port() {
    let mock = spawn().await;
    let addr = mock.addr();
    // An established keep-alive connection.
    let mut kept = TcpStream::connect(addr).await.unwrap();
    assert!(raw_request(&mut kept, "/v1/models")
        .await
        .starts_with("HTTP/1.1 200"));

    mock.set_fault(Fault::Refuse { duration: None }, FaultScope::Always);
    let err = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    assert_closed(&mut kept).await;
    assert!(client()
        .get(format!("{}/v1/models", mock.url()))
        .send()
        .await
        .unwrap_err()
        .is_connect());

    mock.clear_fault();
    assert_eq!(mock.addr(), addr);
    let resp = post(&mock, "/v1/chat/completions", &openai_body(false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(mock.stats().fault("refuse"), 1);

    // Timed refusal set over HTTP on the main listener: the control call is
    // answered, then the port refuses, then it comes back by itself.
    let resp = client()
        .post(format!("{}/_mock/fault", mock.url()))
        .body(r#"{"kind":"refuse","for":"300ms"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(TcpStream::connect(addr).await.is_err());
    let t0 = Instant::now();
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            break;
        }
        assert!(t0.elapsed() < STEP, "never re-opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(mock.fault().is_none());
    let resp = post(&mock, "/v1/messages", &anthropic_body(false)).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn control_listener_survives_refuse() {
    let mock = MockProvider::builder()
        .control_listen("127.0.0.1:0")
        .spawn("127.0.0.1:0")
        .await
        .unwrap();
    let control = mock.control_url().unwrap();
    let resp = client()
        .post(format!("{control}/_mock/fault"))
        .body("refuse")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(TcpStream::connect(mock.addr()).await.is_err());
    let v: Value = client()
        .get(format!("{control}/_mock/fault"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["fault"]["kind"], "refuse");
    // The control listener serves only /_mock/*.
    let resp = client()
        .get(format!("{control}/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = client()
        .delete(format!("{control}/_mock/fault"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = post(&mock, "/v1/chat/completions", &openai_body(false)).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn hang_never_answers() {
    let mock = spawn().await;
    mock.set_fault(Fault::Hang, FaultScope::Always);
    let t0 = Instant::now();
    let err = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap()
        .post(format!("{}/v1/chat/completions", mock.url()))
        .json(&openai_body(false))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(t0.elapsed() >= Duration::from_millis(200));
    let stats = mock.stats();
    assert_eq!(stats.fault("hang"), 1);
    assert_eq!(stats.model_requests, 1);
    // The request was read in full and recorded.
    assert_eq!(mock.requests()[0].json().unwrap(), openai_body(false));
    // The client gave up: the mock notices and closes its side.
    wait_no_open_connections(&mock).await;
}

#[tokio::test]
async fn stall_streaming_and_not() {
    let mock = spawn().await;
    mock.set_fault(Fault::Stall { after_chunks: 2 }, FaultScope::Always);
    let resp = post(&mock, "/v1/chat/completions", &openai_body(true)).await;
    assert_eq!(resp.status(), 200);
    let sse = read_sse(resp, Duration::from_millis(200)).await;
    assert!(sse.timed_out && !sse.error);
    assert_eq!(sse.events.len(), 2, "{}", sse.raw);

    let resp = post(&mock, "/v1/messages", &anthropic_body(true)).await;
    let sse = read_sse(resp, Duration::from_millis(200)).await;
    assert!(sse.timed_out);
    assert_eq!(sse.names(), ["message_start", "content_block_start"]);

    // Non-streaming: headers (with the real length) arrive, the body never does.
    let mut resp = post(&mock, "/v1/chat/completions", &openai_body(false)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.content_length().unwrap() > 0);
    assert!(timeout(Duration::from_millis(200), resp.chunk())
        .await
        .is_err());
    assert_eq!(mock.stats().fault("stall"), 3);
    assert!(mock.stats().open_connections >= 1);
    drop(resp);
    wait_no_open_connections(&mock).await;
}

#[tokio::test]
async fn drop_streaming_and_not() {
    let mock = spawn().await;
    mock.set_fault(Fault::Drop { after_chunks: 3 }, FaultScope::Always);
    let sse = read_sse(
        post(&mock, "/v1/chat/completions", &openai_body(true)).await,
        STEP,
    )
    .await;
    assert!(sse.error, "stream should end with a transport error");
    assert_eq!(sse.events.len(), 3);
    assert!(!sse.raw.contains("[DONE]"));

    let sse = read_sse(
        post(&mock, "/v1/messages", &anthropic_body(true)).await,
        STEP,
    )
    .await;
    assert!(sse.error);
    assert_eq!(sse.events.len(), 3);
    assert!(!sse.names().contains(&"message_stop"));

    // More chunks than the stream has: still never the terminator.
    let sse = read_sse(
        post_with(
            &mock,
            "/v1/chat/completions",
            &openai_body(true),
            &[("x-mock-fault", "drop:1000")],
        )
        .await
        .unwrap(),
        STEP,
    )
    .await;
    assert!(sse.error);
    assert!(!sse.raw.contains("[DONE]"));
    assert!(!sse.events.is_empty());

    // Non-streaming: the connection is closed without a response.
    let err = post_with(&mock, "/v1/chat/completions", &openai_body(false), &[])
        .await
        .unwrap_err();
    assert!(!err.is_timeout(), "{err}");
    assert_eq!(mock.stats().fault("drop"), 4);
}

#[tokio::test]
async fn malformed_streaming_and_not() {
    let mock = spawn().await;
    mock.set_fault(Fault::Malformed, FaultScope::Always);
    let resp = post(&mock, "/v1/chat/completions", &openai_body(false)).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");

    for (path, body) in [
        ("/v1/chat/completions", openai_body(true)),
        ("/v1/messages", anthropic_body(true)),
    ] {
        let sse = read_sse(post(&mock, path, &body).await, STEP).await;
        assert!(!sse.error && !sse.timed_out, "ends cleanly");
        assert_eq!(sse.events.len(), 1, "{}", sse.raw);
        assert!(serde_json::from_str::<Value>(&sse.events[0].1).is_err());
        assert!(!sse.raw.contains("[DONE]") && !sse.raw.contains("message_stop"));
    }
}

#[tokio::test]
async fn slow_adds_ttft() {
    let mock = spawn().await;
    mock.set_fault(
        Fault::Slow {
            delay: Duration::from_millis(300),
        },
        FaultScope::Next(1),
    );
    let t0 = Instant::now();
    let resp = post(&mock, "/v1/chat/completions", &openai_body(true)).await;
    assert!(t0.elapsed() >= Duration::from_millis(300));
    read_sse(resp, STEP).await;
    let t0 = Instant::now();
    post(&mock, "/v1/chat/completions", &openai_body(false)).await;
    assert!(t0.elapsed() < Duration::from_millis(300));
    // Per-request form.
    let t0 = Instant::now();
    post_with(
        &mock,
        "/v1/messages",
        &anthropic_body(false),
        &[("x-mock-fault", "slow=100ms")],
    )
    .await
    .unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn header_faults_override_runtime_fault() {
    let mock = spawn().await;
    let resp = post_with(
        &mock,
        "/v1/chat/completions",
        &openai_body(false),
        &[("x-mock-fault", "status=503")],
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 503);

    mock.set_fault(
        Fault::Status {
            status: 500,
            retry_after: None,
            body: None,
        },
        FaultScope::Always,
    );
    let resp = post_with(
        &mock,
        "/v1/messages",
        &anthropic_body(false),
        &[(
            "x-mock-fault",
            r#"{"kind":"status","status":429,"retry_after":"1"}"#,
        )],
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let resp = post(&mock, "/v1/messages", &anthropic_body(false)).await;
    assert_eq!(resp.status(), 500);

    let resp = post_with(
        &mock,
        "/v1/chat/completions",
        &openai_body(false),
        &[("x-mock-fault", "explode")],
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("x-mock-fault"));

    // Header faults also apply to /v1/models.
    let resp = client()
        .get(format!("{}/v1/models", mock.url()))
        .header("x-mock-fault", "status=502")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
}

#[tokio::test]
async fn count_scope_only_counts_model_requests() {
    let mock = spawn().await;
    let resp = client()
        .post(format!("{}/_mock/fault", mock.url()))
        .body(r#"{"kind":"status","status":503,"count":2}"#)
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["remaining"], 2);
    let models = || async {
        client()
            .get(format!("{}/v1/models", mock.url()))
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(models().await, StatusCode::OK);
    assert_eq!(
        post(&mock, "/v1/chat/completions", &openai_body(false))
            .await
            .status(),
        503
    );
    assert_eq!(models().await, StatusCode::OK);
    // A request with its own fault header doesn't consume the count.
    assert_eq!(
        post_with(
            &mock,
            "/v1/chat/completions",
            &openai_body(false),
            &[("x-mock-fault", "status=418")]
        )
        .await
        .unwrap()
        .status(),
        418
    );
    assert_eq!(
        mock.fault(),
        Some((
            Fault::Status {
                status: 503,
                retry_after: None,
                body: None
            },
            FaultScope::Next(1)
        ))
    );
    assert_eq!(
        post(&mock, "/v1/messages", &anthropic_body(false))
            .await
            .status(),
        503
    );
    assert_eq!(
        post(&mock, "/v1/messages", &anthropic_body(false))
            .await
            .status(),
        200
    );
    assert!(mock.fault().is_none());
    let v: Value = client()
        .get(format!("{}/_mock/fault", mock.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["fault"], Value::Null);

    // Always-scoped faults apply to /v1/models too (health probes see them).
    mock.set_fault(
        Fault::Status {
            status: 503,
            retry_after: None,
            body: None,
        },
        FaultScope::Always,
    );
    assert_eq!(models().await, StatusCode::SERVICE_UNAVAILABLE);
    mock.clear_fault();
    assert_eq!(models().await, StatusCode::OK);
}

#[tokio::test]
async fn stats_count_everything_and_reset() {
    let mock = spawn().await;
    post(&mock, "/v1/chat/completions", &openai_body(false)).await;
    post(&mock, "/v1/chat/completions", &openai_body(true))
        .await
        .bytes()
        .await
        .unwrap();
    post(&mock, "/v1/messages", &anthropic_body(false)).await;
    client()
        .get(format!("{}/v1/models", mock.url()))
        .send()
        .await
        .unwrap();
    client()
        .get(format!("{}/nope", mock.url()))
        .send()
        .await
        .unwrap();
    post_with(
        &mock,
        "/v1/messages",
        &anthropic_body(false),
        &[("x-mock-fault", "status=529")],
    )
    .await
    .unwrap();

    let stats = mock.stats();
    assert_eq!(stats.total_requests, 6);
    assert_eq!(stats.model_requests, 4);
    assert_eq!(stats.path("/v1/chat/completions"), 2);
    assert_eq!(stats.path("/v1/messages"), 2);
    assert_eq!(stats.path("/v1/models"), 1);
    assert_eq!(stats.path("/nope"), 1);
    assert_eq!(stats.by_fault.len(), 1);
    assert_eq!(stats.fault("status:529"), 1);
    assert!(stats.connections >= 1);

    // Over HTTP (the stats request itself is counted).
    let v: Value = client()
        .get(format!("{}/_mock/stats", mock.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["total_requests"], 7);
    assert_eq!(v["by_path"]["/_mock/stats"], 1);
    assert_eq!(v["by_fault"]["status:529"], 1);

    let resp = client()
        .post(format!("{}/_mock/reset", mock.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let stats = mock.stats();
    assert_eq!(stats.total_requests, 0);
    assert!(stats.by_path.is_empty() && stats.by_fault.is_empty());
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn recorded_requests_capture_what_was_sent() {
    let mock = MockProvider::builder()
        .record_capacity(3)
        .spawn("127.0.0.1:0")
        .await
        .unwrap();
    let body = anthropic_body(false);
    client()
        .post(format!("{}/v1/messages?beta=true", mock.url()))
        .header("x-api-key", "sk-ant-test")
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap();
    client()
        .post(format!("{}/v1/chat/completions", mock.url()))
        .bearer_auth("sk-openai")
        .json(&openai_body(false))
        .send()
        .await
        .unwrap();
    client()
        .get(format!("{}/_mock/stats", mock.url()))
        .send()
        .await
        .unwrap();

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2, "control requests are not recorded");
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, "/v1/messages?beta=true");
    assert_eq!(reqs[0].header("x-api-key"), Some("sk-ant-test"));
    assert_eq!(reqs[0].header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(reqs[0].json().unwrap(), body);
    assert_eq!(reqs[1].header("authorization"), Some("Bearer sk-openai"));
    assert_eq!(reqs[1].json().unwrap(), openai_body(false));

    // Over HTTP.
    let v: Value = client()
        .get(format!("{}/_mock/requests", mock.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v[0]["headers"]["x-api-key"], "sk-ant-test");
    assert_eq!(v[0]["body"], body);

    // Bounded: only the last 3 are kept.
    for i in 0..4 {
        client()
            .get(format!("{}/v1/models?i={i}", mock.url()))
            .send()
            .await
            .unwrap();
    }
    let paths: Vec<String> = mock.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        ["/v1/models?i=1", "/v1/models?i=2", "/v1/models?i=3"]
    );
}

#[tokio::test]
async fn shutdown_refuses_connections() {
    let mock = spawn().await;
    let addr = mock.addr();
    let mut kept = TcpStream::connect(addr).await.unwrap();
    assert!(raw_request(&mut kept, "/v1/models")
        .await
        .starts_with("HTTP/1.1 200"));
    timeout(STEP, mock.shutdown()).await.unwrap();
    assert_closed(&mut kept).await;
    let err = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_requests() {
    let mock = MockProvider::builder()
        .output_tokens(4..=4)
        .spawn("127.0.0.1:0")
        .await
        .unwrap();
    let client = client();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = client.clone();
        let url = format!("{}/v1/chat/completions", mock.url());
        tasks.push(tokio::spawn(async move {
            let resp = client
                .post(url)
                .json(&openai_body(i % 2 == 0))
                .send()
                .await?;
            let status = resp.status();
            resp.bytes().await?;
            Ok::<_, reqwest::Error>(status)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 200);
    }
    assert_eq!(mock.stats().model_requests, 200);
}

#[tokio::test]
async fn cli_prints_address_and_exits_on_sigterm() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard-loadtest"))
        .args([
            "mock",
            "--listen",
            "127.0.0.1:0",
            "--control-listen",
            "127.0.0.1:0",
            "--ttft",
            "1ms",
            "--output-tokens",
            "3..=3",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = timeout(STEP, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let url = first
        .strip_prefix("mock listening on ")
        .unwrap()
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{first}");
    let second = timeout(STEP, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let control = second.strip_prefix("mock control on ").unwrap().to_string();

    let v: Value = client()
        .post(format!("{url}/v1/chat/completions"))
        .json(&openai_body(false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 3);
    let v: Value = client()
        .get(format!("{control}/_mock/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["model_requests"], 1);

    let pid = child.id().unwrap().to_string();
    let status = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let exit = timeout(STEP, child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "{exit:?}");
}
