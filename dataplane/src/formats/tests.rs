//! Cross-format tests (OpenAI ⇄ Anthropic) and shared test helpers.

use bytes::BytesMut;
use serde_json::{json, Value};

use super::sse::SseParser;
use super::*;

// ---------------------------------------------------------------------------
// Helpers (shared with openai/tests.rs and anthropic/tests.rs)
// ---------------------------------------------------------------------------

pub(super) fn j(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

pub(super) fn parse(format: ApiFormat, v: Value) -> ChatRequest {
    parse_request(format, &j(&v)).unwrap()
}

pub(super) fn parse_err(format: ApiFormat, v: Value) -> FormatError {
    parse_request(format, &j(&v)).unwrap_err()
}

pub(super) fn encode(format: ApiFormat, req: &ChatRequest) -> Value {
    serde_json::from_slice(&encode_request(format, req, "upstream-model", 4096).unwrap()).unwrap()
}

pub(super) fn encode_err(format: ApiFormat, req: &ChatRequest) -> FormatError {
    encode_request(format, req, "upstream-model", 4096).unwrap_err()
}

/// Parse SSE output into (event name, data) pairs; data is JSON or the raw
/// string (for `[DONE]`).
pub(super) fn sse_frames(bytes: &[u8]) -> Vec<(Option<String>, Value)> {
    let mut p = SseParser::default();
    let mut evs = Vec::new();
    p.feed(bytes, &mut evs).unwrap();
    evs.into_iter()
        .map(|e| {
            let v = serde_json::from_str(&e.data).unwrap_or(Value::String(e.data));
            (e.event, v)
        })
        .collect()
}

pub(super) fn decode_all(format: ApiFormat, bytes: &[u8]) -> (Vec<StreamEvent>, StreamDecoder) {
    let mut d = StreamDecoder::new(format);
    let evs = d.feed(bytes).unwrap();
    (evs, d)
}

/// Decode `bytes` whole, split in two at every byte boundary, and byte by
/// byte; all must give the same events, completion and usage.
pub(super) fn decode_every_split(format: ApiFormat, bytes: &[u8]) -> (Vec<StreamEvent>, Usage) {
    let (whole, d) = decode_all(format, bytes);
    let usage = d.usage();
    let complete = d.is_complete();
    for i in 0..=bytes.len() {
        let mut d = StreamDecoder::new(format);
        let mut evs = d.feed(&bytes[..i]).unwrap();
        evs.extend(d.feed(&bytes[i..]).unwrap());
        assert_eq!(evs, whole, "split at byte {i}");
        assert_eq!(d.is_complete(), complete);
        assert_eq!(d.usage(), usage);
    }
    let mut d = StreamDecoder::new(format);
    let mut evs = Vec::new();
    for b in bytes.chunks(1) {
        evs.extend(d.feed(b).unwrap());
    }
    assert_eq!(evs, whole, "byte by byte");
    (whole, usage)
}

pub(super) fn encode_stream(
    format: ApiFormat,
    events: &[StreamEvent],
    include_usage: bool,
) -> BytesMut {
    let mut enc = StreamEncoder::new(format, "public-model", include_usage);
    let mut out = BytesMut::new();
    for ev in events {
        enc.encode(ev, &mut out);
    }
    enc.finish(&mut out);
    out
}

/// Re-assemble a canonical stream into (text, [(tool id, name, args)], finish).
pub(super) type Assembled = (String, Vec<(String, String, String)>, Option<FinishReason>);

pub(super) fn assemble(events: &[StreamEvent]) -> Assembled {
    let mut text = String::new();
    let mut tools: Vec<(u32, String, String, String)> = Vec::new();
    let mut finish = None;
    for ev in events {
        match ev {
            StreamEvent::TextDelta { text: t, .. } => text.push_str(t),
            StreamEvent::BlockStart {
                index,
                block: BlockKind::ToolUse { id, name },
            } => tools.push((*index, id.clone(), name.clone(), String::new())),
            StreamEvent::ToolInputDelta {
                index,
                partial_json,
            } => {
                let t = tools.iter_mut().find(|t| t.0 == *index).unwrap();
                t.3.push_str(partial_json);
            }
            StreamEvent::MessageDelta {
                finish_reason: Some(f),
                ..
            } => finish = Some(f.clone()),
            _ => {}
        }
    }
    (
        text,
        tools.into_iter().map(|t| (t.1, t.2, t.3)).collect(),
        finish,
    )
}

pub(super) const OPENAI_TEXT_STREAM: &str = concat!(
    "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" w\u{f6}rld \u{1f30d}\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[],\"usage\":{\"prompt_tokens\":19,\"completion_tokens\":3,\"total_tokens\":22,\"prompt_tokens_details\":{\"cached_tokens\":5,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n",
    "data: [DONE]\n\n",
);

pub(super) const OPENAI_TOOL_STREAM: &str = concat!(
    "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Checking.\"},\"logprobs\":null,\"finish_reason\":null}]}\r\n\r\n",
    "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_DdmO9pD3xa9XTPNJ32zg2hcA\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\r\n\r\n",
    "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"location\\\":\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\r\n\r\n",
    "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"Paris\\\"}\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\r\n\r\n",
    "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_2\",\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"arguments\":\"{\\\"tz\\\":\\\"CET\\\"}\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\r\n\r\n",
    "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"tool_calls\"}]}\r\n\r\n",
    "data: {\"id\":\"chatcmpl-9\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":80,\"completion_tokens\":30,\"total_tokens\":110}}\r\n\r\n",
    "data: [DONE]\r\n\r\n",
);

pub(super) const ANTHROPIC_TEXT_STREAM: &str = concat!(
    "event: message_start\n",
    "data: {\"type\": \"message_start\", \"message\": {\"id\": \"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\", \"type\": \"message\", \"role\": \"assistant\", \"content\": [], \"model\": \"claude-sonnet-4-20250514\", \"stop_reason\": null, \"stop_sequence\": null, \"usage\": {\"input_tokens\": 25, \"cache_creation_input_tokens\": 0, \"cache_read_input_tokens\": 100, \"output_tokens\": 1}}}\n\n",
    "event: content_block_start\n",
    "data: {\"type\": \"content_block_start\", \"index\": 0, \"content_block\": {\"type\": \"text\", \"text\": \"\"}}\n\n",
    "event: ping\n",
    "data: {\"type\": \"ping\"}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\": \"content_block_delta\", \"index\": 0, \"delta\": {\"type\": \"text_delta\", \"text\": \"Hello\"}}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\": \"content_block_delta\", \"index\": 0, \"delta\": {\"type\": \"text_delta\", \"text\": \" w\u{f6}rld \u{1f30d}\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\": \"content_block_stop\", \"index\": 0}\n\n",
    "event: message_delta\n",
    "data: {\"type\": \"message_delta\", \"delta\": {\"stop_reason\": \"end_turn\", \"stop_sequence\":null}, \"usage\": {\"output_tokens\": 15}}\n\n",
    "event: message_stop\n",
    "data: {\"type\": \"message_stop\"}\n\n",
);

pub(super) const ANTHROPIC_TOOL_STREAM: &str = concat!(
    "event: message_start\r\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_014p7gG3wDgGV9EUtLvnow3U\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-opus-4-1-20250805\",\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"output_tokens\":2},\"content\":[],\"stop_reason\":null}}\r\n\r\n",
    "event: content_block_start\r\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\r\n\r\n",
    "event: content_block_delta\r\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Need the weather tool.\"}}\r\n\r\n",
    "event: content_block_delta\r\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"EqQBCgIYAhIM1gbcDa9GJwZA2b3h\"}}\r\n\r\n",
    "event: content_block_stop\r\n",
    "data: {\"type\":\"content_block_stop\",\"index\":0}\r\n\r\n",
    "event: content_block_start\r\n",
    "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\r\n\r\n",
    "event: content_block_delta\r\n",
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Okay, let's check the weather.\"}}\r\n\r\n",
    "event: content_block_stop\r\n",
    "data: {\"type\":\"content_block_stop\",\"index\":1}\r\n\r\n",
    "event: content_block_start\r\n",
    "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01T1x1fJ34qAmk2tNTrN7Up6\",\"name\":\"get_weather\",\"input\":{}}}\r\n\r\n",
    "event: content_block_delta\r\n",
    "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\r\n\r\n",
    "event: content_block_delta\r\n",
    "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"location\\\": \\\"San Fra\"}}\r\n\r\n",
    "event: content_block_delta\r\n",
    "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"ncisco, CA\\\"}\"}}\r\n\r\n",
    "event: content_block_stop\r\n",
    "data: {\"type\":\"content_block_stop\",\"index\":2}\r\n\r\n",
    "event: message_delta\r\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":89}}\r\n\r\n",
    "event: message_stop\r\n",
    "data: {\"type\":\"message_stop\"}\r\n\r\n",
);

// ---------------------------------------------------------------------------
// Requests: OpenAI client → Anthropic upstream
// ---------------------------------------------------------------------------

fn openai_agent_request() -> Value {
    json!({
        "model": "claude-via-openai",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "What's in this image and what's the weather?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "auto"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "12:00"}]},
            {"role": "user", "content": "Thanks!"},
            {"role": "user", "content": "Summarize."}
        ],
        "max_completion_tokens": 512,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": "END",
        "user": "user-42",
        "n": 1,
        "presence_penalty": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}, "strict": false}},
            {"type": "function", "function": {"name": "get_time"}}
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": false
    })
}

#[test]
fn openai_request_to_anthropic() {
    let req = parse(ApiFormat::OpenAi, openai_agent_request());
    assert_eq!(req.model, "claude-via-openai");
    assert!(req.stream && req.include_usage);
    assert_eq!(req.max_tokens, Some(512));
    assert_eq!(req.tool_count(), 2);
    let out = encode(ApiFormat::Anthropic, &req);
    let expected = json!({
        "model": "upstream-model",
        "system": [{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Use tools."}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What's in this image and what's the weather?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
            ]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"location": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C sunny"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "12:00"},
                {"type": "text", "text": "Thanks!"},
                {"type": "text", "text": "Summarize."}
            ]}
        ],
        "max_tokens": 512,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "stream": true,
        "metadata": {"user_id": "user-42"},
        "tools": [
            {"name": "get_weather", "description": "Weather for a city", "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}},
            {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}
        ],
        "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true}
    });
    assert_eq!(out, expected);
}

#[test]
fn openai_single_system_string_and_default_max_tokens() {
    let req = parse(
        ApiFormat::OpenAi,
        json!({"model": "m", "messages": [
            {"role": "system", "content": "Be nice."},
            {"role": "user", "content": "Hi"}
        ]}),
    );
    let out = encode(ApiFormat::Anthropic, &req);
    assert_eq!(
        out,
        json!({"model": "upstream-model", "system": "Be nice.",
               "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4096})
    );
}

#[test]
fn openai_mid_conversation_system_is_hoisted() {
    let req = parse(
        ApiFormat::OpenAi,
        json!({"model": "m", "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "system", "content": "Now answer in French."},
            {"role": "user", "content": "Bye"}
        ]}),
    );
    let out = encode(ApiFormat::Anthropic, &req);
    assert_eq!(out["system"], json!("Now answer in French."));
    assert_eq!(
        out["messages"],
        json!([
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"}
        ])
    );
}

#[test]
fn openai_tool_choice_variants_to_anthropic() {
    let cases = [
        (json!("auto"), None, json!({"type": "auto"})),
        (json!("none"), None, json!({"type": "none"})),
        (json!("required"), None, json!({"type": "any"})),
        (
            json!("required"),
            Some(false),
            json!({"type": "any", "disable_parallel_tool_use": true}),
        ),
        (json!("auto"), Some(true), json!({"type": "auto"})),
        (json!("none"), Some(false), json!({"type": "none"})),
    ];
    for (choice, parallel, expected) in cases {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": choice});
        if let Some(p) = parallel {
            body["parallel_tool_calls"] = json!(p);
        }
        let out = encode(ApiFormat::Anthropic, &parse(ApiFormat::OpenAi, body));
        assert_eq!(out["tool_choice"], expected);
    }
    // parallel_tool_calls:false without tool_choice still reaches Anthropic.
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "function", "function": {"name": "f"}}], "parallel_tool_calls": false});
    let out = encode(ApiFormat::Anthropic, &parse(ApiFormat::OpenAi, body));
    assert_eq!(
        out["tool_choice"],
        json!({"type": "auto", "disable_parallel_tool_use": true})
    );
}

#[test]
fn openai_untranslatable_fields_error_naming_param() {
    let base = || json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
    let cases: Vec<(&str, Value, &str)> = vec![
        ("n", json!(3), "n"),
        ("seed", json!(7), "seed"),
        (
            "response_format",
            json!({"type": "json_object"}),
            "response_format",
        ),
        ("logprobs", json!(true), "logprobs"),
        ("presence_penalty", json!(0.5), "presence_penalty"),
        ("logit_bias", json!({"50256": -100}), "logit_bias"),
        ("service_tier", json!("flex"), "service_tier"),
        ("reasoning_effort", json!("high"), "reasoning_effort"),
    ];
    for (key, value, param) in cases {
        let mut body = base();
        body[key] = value;
        let err = encode_err(ApiFormat::Anthropic, &parse(ApiFormat::OpenAi, body));
        assert_eq!(err.param.as_deref(), Some(param), "{key}");
        assert_eq!(
            err.message,
            format!("`{param}` cannot be translated to anthropic")
        );
    }
    // Neutral values are fine.
    let mut body = base();
    for (k, v) in [
        ("n", json!(1)),
        ("frequency_penalty", json!(0)),
        ("logprobs", json!(false)),
        ("response_format", json!({"type": "text"})),
        ("service_tier", json!("auto")),
        ("seed", Value::Null),
        ("store", json!(false)),
    ] {
        body[k] = v;
    }
    encode(ApiFormat::Anthropic, &parse(ApiFormat::OpenAi, body));
}

#[test]
fn openai_untranslatable_nested_fields() {
    let cases = [
        (
            json!({"role": "user", "content": "x", "name": "bob"}),
            "messages[0].name",
        ),
        (
            json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "high"}}]}),
            "messages[0].content[0].detail",
        ),
        (
            json!({"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAA", "format": "wav"}}]}),
            "messages[0].content[0]",
        ),
        (
            json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}),
            "messages[0].content[0]",
        ),
    ];
    for (msg, param) in cases {
        let req = parse(ApiFormat::OpenAi, json!({"model": "m", "messages": [msg]}));
        let err = encode_err(ApiFormat::Anthropic, &req);
        assert_eq!(err.param.as_deref(), Some(param), "{}", err.message);
    }
    let req = parse(
        ApiFormat::OpenAi,
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "f", "strict": true}}]}),
    );
    assert_eq!(
        encode_err(ApiFormat::Anthropic, &req).param.as_deref(),
        Some("tools[0].function.strict")
    );
    let req = parse(
        ApiFormat::OpenAi,
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 1.5}),
    );
    assert_eq!(
        encode_err(ApiFormat::Anthropic, &req).param.as_deref(),
        Some("temperature")
    );
    let req = parse(
        ApiFormat::OpenAi,
        json!({"model": "m", "messages": [{"role": "system", "content": "only system"}]}),
    );
    assert_eq!(
        encode_err(ApiFormat::Anthropic, &req).param.as_deref(),
        Some("messages")
    );
}

#[test]
fn openai_invalid_tool_arguments() {
    let body = json!({"model": "m", "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "r"}
    ]});
    let req = parse(ApiFormat::OpenAi, body);
    let err = encode_err(ApiFormat::Anthropic, &req);
    assert_eq!(
        err.param.as_deref(),
        Some("messages[1].tool_calls[0].function.arguments")
    );
    assert!(err.message.contains("not valid JSON"));
    // Same-format: passed through verbatim.
    let out = encode(ApiFormat::OpenAi, &req);
    assert_eq!(
        out["messages"][1]["tool_calls"][0]["function"]["arguments"],
        json!("{\"a\": 1")
    );
    // Valid JSON that is not an object cannot become Anthropic `input`.
    let body = json!({"model": "m", "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}
    ]});
    let err = encode_err(ApiFormat::Anthropic, &parse(ApiFormat::OpenAi, body));
    assert_eq!(
        err.param.as_deref(),
        Some("messages[1].tool_calls[0].function.arguments")
    );
}

// ---------------------------------------------------------------------------
// Requests: Anthropic client → OpenAI upstream
// ---------------------------------------------------------------------------

fn anthropic_agent_request() -> Value {
    json!({
        "model": "gpt-via-anthropic",
        "max_tokens": 1024,
        "system": [
            {"type": "text", "text": "You are a coding agent.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Be brief."}
        ],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Look at this and list files."},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQSkZJRg=="}},
                {"type": "image", "source": {"type": "url", "url": "https://upload.wikimedia.org/a.jpg"}}
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "I should call ls.", "signature": "sig=="},
                {"type": "text", "text": "Listing."},
                {"type": "tool_use", "id": "toolu_01A", "name": "ls", "input": {"path": "."}},
                {"type": "tool_use", "id": "toolu_01B", "name": "pwd", "input": {}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "a.rs\nb.rs"},
                {"type": "tool_result", "tool_use_id": "toolu_01B", "content": [{"type": "text", "text": "/src"}, {"type": "text", "text": "(root)"}]},
                {"type": "text", "text": "Now summarize.", "cache_control": {"type": "ephemeral"}}
            ]}
        ],
        "temperature": 0.5,
        "top_p": 0.8,
        "stop_sequences": ["</answer>", "STOP"],
        "stream": true,
        "metadata": {"user_id": "u-1"},
        "tools": [{"name": "ls", "description": "List files", "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}, "cache_control": {"type": "ephemeral"}},
                  {"name": "pwd", "input_schema": {"type": "object", "properties": {}}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
        "thinking": {"type": "disabled"}
    })
}

#[test]
fn anthropic_request_to_openai() {
    let req = parse(ApiFormat::Anthropic, anthropic_agent_request());
    assert!(req.stream);
    assert!(!req.include_usage);
    let out = encode(ApiFormat::OpenAi, &req);
    let expected = json!({
        "model": "upstream-model",
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "You are a coding agent."}, {"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "Look at this and list files."},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQSkZJRg=="}},
                {"type": "image_url", "image_url": {"url": "https://upload.wikimedia.org/a.jpg"}}
            ]},
            {"role": "assistant", "content": "Listing.", "tool_calls": [
                {"id": "toolu_01A", "type": "function", "function": {"name": "ls", "arguments": "{\"path\":\".\"}"}},
                {"id": "toolu_01B", "type": "function", "function": {"name": "pwd", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": "toolu_01A", "content": "a.rs\nb.rs"},
            {"role": "tool", "tool_call_id": "toolu_01B", "content": [{"type": "text", "text": "/src"}, {"type": "text", "text": "(root)"}]},
            {"role": "user", "content": "Now summarize."}
        ],
        "max_completion_tokens": 1024,
        "temperature": 0.5,
        "top_p": 0.8,
        "stop": ["</answer>", "STOP"],
        "stream": true,
        "stream_options": {"include_usage": true},
        "user": "u-1",
        "tools": [
            {"type": "function", "function": {"name": "ls", "description": "List files", "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "pwd", "parameters": {"type": "object", "properties": {}}}}
        ],
        "tool_choice": "required",
        "parallel_tool_calls": false
    });
    assert_eq!(out, expected);
}

#[test]
fn anthropic_tool_choice_variants_to_openai() {
    let cases = [
        (json!({"type": "auto"}), json!("auto"), None),
        (json!({"type": "none"}), json!("none"), None),
        (json!({"type": "any"}), json!("required"), None),
        (
            json!({"type": "tool", "name": "f"}),
            json!({"type": "function", "function": {"name": "f"}}),
            None,
        ),
        (
            json!({"type": "auto", "disable_parallel_tool_use": false}),
            json!("auto"),
            Some(true),
        ),
    ];
    for (choice, expected, parallel) in cases {
        let body = json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}], "tool_choice": choice});
        let out = encode(ApiFormat::OpenAi, &parse(ApiFormat::Anthropic, body));
        assert_eq!(out["tool_choice"], expected);
        assert_eq!(
            out.get("parallel_tool_calls").and_then(Value::as_bool),
            parallel
        );
    }
}

#[test]
fn anthropic_untranslatable_fields_error_naming_param() {
    let base =
        || json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]});
    let cases: Vec<(&str, Value, &str)> = vec![
        ("top_k", json!(40), "top_k"),
        (
            "thinking",
            json!({"type": "enabled", "budget_tokens": 2048}),
            "thinking",
        ),
        (
            "metadata",
            json!({"user_id": "u", "trace": "t"}),
            "metadata",
        ),
        ("mcp_servers", json!([]), "mcp_servers"),
    ];
    for (key, value, param) in cases {
        let mut body = base();
        body[key] = value;
        let err = encode_err(ApiFormat::OpenAi, &parse(ApiFormat::Anthropic, body));
        assert_eq!(err.param.as_deref(), Some(param), "{key}");
        assert_eq!(
            err.message,
            format!("`{param}` cannot be translated to openai")
        );
    }
    let nested = [
        (
            json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "boom", "is_error": true}]}),
            "messages[0].content[0].is_error",
        ),
        (
            json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}]}),
            "messages[0].content[0].content[0]",
        ),
        (
            json!({"role": "user", "content": [{"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc"}}]}),
            "messages[0].content[0]",
        ),
        (
            json!({"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "file_1"}}]}),
            "messages[0].content[0]",
        ),
        (
            json!({"role": "assistant", "content": [{"type": "text", "text": "x", "citations": [{"type": "char_location"}]}]}),
            "messages[0].content[0].citations",
        ),
    ];
    for (msg, param) in nested {
        let req = parse(
            ApiFormat::Anthropic,
            json!({"model": "m", "max_tokens": 10, "messages": [msg]}),
        );
        let err = encode_err(ApiFormat::OpenAi, &req);
        assert_eq!(err.param.as_deref(), Some(param), "{}", err.message);
    }
    let req = parse(
        ApiFormat::Anthropic,
        json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]}),
    );
    assert_eq!(
        encode_err(ApiFormat::OpenAi, &req).param.as_deref(),
        Some("tools[0]")
    );
    // Errors in the system prompt are reported against `system`.
    let req = parse(
        ApiFormat::Anthropic,
        json!({"model": "m", "max_tokens": 10, "system": [{"type": "text", "text": "s", "citations": []}],
            "messages": [{"role": "user", "content": "x"}]}),
    );
    assert_eq!(
        encode_err(ApiFormat::OpenAi, &req).param.as_deref(),
        Some("system[0].citations")
    );
}

#[test]
fn round_trip_openai_anthropic_openai() {
    let original = parse(ApiFormat::OpenAi, openai_agent_request());
    let anthropic_body = encode_request(ApiFormat::Anthropic, &original, "claude", 4096).unwrap();
    let via = parse_request(ApiFormat::Anthropic, &anthropic_body).unwrap();
    let back = encode(ApiFormat::OpenAi, &via);
    let expected = json!({
        "model": "upstream-model",
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Use tools."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "What's in this image and what's the weather?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C sunny"},
            {"role": "tool", "tool_call_id": "call_2", "content": "12:00"},
            {"role": "user", "content": [{"type": "text", "text": "Thanks!"}, {"type": "text", "text": "Summarize."}]}
        ],
        "max_completion_tokens": 512,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["END"],
        "stream": true,
        "stream_options": {"include_usage": true},
        "user": "user-42",
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}},
            {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": false
    });
    assert_eq!(back, expected);
}

#[test]
fn round_trip_anthropic_openai_anthropic() {
    let mut body = anthropic_agent_request();
    // Fields OpenAI cannot carry are removed for the round trip.
    body.as_object_mut().unwrap().remove("thinking");
    body["messages"][1]["content"]
        .as_array_mut()
        .unwrap()
        .remove(0);
    let original = parse(ApiFormat::Anthropic, body);
    let openai_body = encode_request(ApiFormat::OpenAi, &original, "gpt", 4096).unwrap();
    let via = parse_request(ApiFormat::OpenAi, &openai_body).unwrap();
    let back = encode(ApiFormat::Anthropic, &via);
    let expected = json!({
        "model": "upstream-model",
        "system": [{"type": "text", "text": "You are a coding agent."}, {"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Look at this and list files."},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQSkZJRg=="}},
                {"type": "image", "source": {"type": "url", "url": "https://upload.wikimedia.org/a.jpg"}}
            ]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Listing."},
                {"type": "tool_use", "id": "toolu_01A", "name": "ls", "input": {"path": "."}},
                {"type": "tool_use", "id": "toolu_01B", "name": "pwd", "input": {}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "a.rs\nb.rs"},
                {"type": "tool_result", "tool_use_id": "toolu_01B", "content": [{"type": "text", "text": "/src"}, {"type": "text", "text": "(root)"}]},
                {"type": "text", "text": "Now summarize."}
            ]}
        ],
        "max_tokens": 1024,
        "temperature": 0.5,
        "top_p": 0.8,
        "stop_sequences": ["</answer>", "STOP"],
        "stream": true,
        "metadata": {"user_id": "u-1"},
        "tools": [
            {"name": "ls", "description": "List files", "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}},
            {"name": "pwd", "input_schema": {"type": "object", "properties": {}}}
        ],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true}
    });
    assert_eq!(back, expected);
}

#[test]
fn cache_key_material_is_canonical() {
    let a = parse(ApiFormat::OpenAi, openai_agent_request());
    let mut body = openai_agent_request();
    body["model"] = json!("other-model");
    body["stream"] = json!(false);
    body.as_object_mut().unwrap().remove("stream_options");
    let b = parse(ApiFormat::OpenAi, body);
    assert_eq!(a.cache_key_material(), b.cache_key_material());
    let mut body = openai_agent_request();
    body["temperature"] = json!(0.3);
    let c = parse(ApiFormat::OpenAi, body);
    assert_ne!(a.cache_key_material(), c.cache_key_material());
    let mut body = openai_agent_request();
    body["seed"] = json!(1);
    let d = parse(ApiFormat::OpenAi, body);
    assert_ne!(a.cache_key_material(), d.cache_key_material());

    // Keys are sorted at every level; model/stream are absent.
    fn sorted(v: &Value) -> bool {
        match v {
            Value::Object(m) => {
                let keys: Vec<&String> = m.keys().collect();
                keys.windows(2).all(|w| w[0] < w[1]) && m.values().all(sorted)
            }
            Value::Array(a) => a.iter().all(sorted),
            _ => true,
        }
    }
    let m = a.cache_key_material();
    assert!(sorted(&m));
    let text = m.to_string();
    assert!(!text.contains("claude-via-openai"));
    assert!(m.get("stream").is_none() && m.get("model").is_none());
    assert!(text.contains("Summarize."));

    // The same conversation via both APIs gives the same key material.
    let oa = parse(
        ApiFormat::OpenAi,
        json!({"model": "x", "max_tokens": 5, "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]}),
    );
    let an = parse(
        ApiFormat::Anthropic,
        json!({"model": "y", "max_tokens": 5, "system": "S", "messages": [{"role": "user", "content": "Hi"}]}),
    );
    assert_eq!(oa.cache_key_material(), an.cache_key_material());
}

#[test]
fn prompt_text_concatenates_everything() {
    let req = parse(ApiFormat::Anthropic, anthropic_agent_request());
    let text = req.prompt_text();
    for needle in [
        "You are a coding agent.",
        "Be brief.",
        "Look at this and list files.",
        "Listing.",
        "{\"path\":\".\"}",
        "a.rs\nb.rs",
        "(root)",
        "Now summarize.",
        "List files",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in {text:?}");
    }
    assert!(text.starts_with("You are a coding agent.\nBe brief.\nLook at this"));
}

// ---------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------

const OPENAI_TOOL_RESPONSE: &str = r#"{
  "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
  "object": "chat.completion",
  "created": 1741570283,
  "model": "gpt-4o-2024-08-06",
  "choices": [{
    "index": 0,
    "message": {
      "role": "assistant",
      "content": "Let me check.",
      "refusal": null,
      "tool_calls": [{"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Boston, MA\"}"}}],
      "annotations": []
    },
    "logprobs": null,
    "finish_reason": "tool_calls"
  }],
  "usage": {
    "prompt_tokens": 1117, "completion_tokens": 46, "total_tokens": 1163,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
  },
  "service_tier": "default",
  "system_fingerprint": "fp_fc9f1d7035"
}"#;

const ANTHROPIC_TOOL_RESPONSE: &str = r#"{
  "id": "msg_01Aq9w938a90dw8q",
  "type": "message",
  "role": "assistant",
  "model": "claude-sonnet-4-20250514",
  "content": [
    {"type": "thinking", "thinking": "User wants weather.", "signature": "EuYBCkQYAiJA"},
    {"type": "text", "text": "I'll check the weather."},
    {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"location": "San Francisco, CA", "unit": "celsius"}}
  ],
  "stop_reason": "tool_use",
  "stop_sequence": null,
  "usage": {"input_tokens": 2095, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 3000, "output_tokens": 503, "service_tier": "standard"}
}"#;

#[test]
fn openai_response_to_anthropic_client() {
    let resp = decode_response(ApiFormat::OpenAi, OPENAI_TOOL_RESPONSE.as_bytes()).unwrap();
    assert_eq!(
        resp.usage,
        Usage {
            input_tokens: 1117,
            output_tokens: 46,
            cached_input_tokens: 1024
        }
    );
    assert_eq!(resp.tool_call_names(), vec!["get_weather"]);
    assert_eq!(resp.text(), "Let me check.");
    assert_eq!(resp.finish_reason, Some(FinishReason::ToolCalls));
    let out: Value =
        serde_json::from_slice(&encode_response(ApiFormat::Anthropic, &resp, "public")).unwrap();
    assert_eq!(
        out,
        json!({
            "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
            "type": "message",
            "role": "assistant",
            "model": "public",
            "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "call_abc", "name": "get_weather", "input": {"location": "Boston, MA"}}
            ],
            "stop_reason": "tool_use",
            "stop_sequence": null,
            "usage": {"input_tokens": 93, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 1024, "output_tokens": 46}
        })
    );
}

#[test]
fn anthropic_response_to_openai_client() {
    let resp = decode_response(ApiFormat::Anthropic, ANTHROPIC_TOOL_RESPONSE.as_bytes()).unwrap();
    assert_eq!(
        resp.usage,
        Usage {
            input_tokens: 2095 + 100 + 3000,
            output_tokens: 503,
            cached_input_tokens: 3000
        }
    );
    assert_eq!(resp.text(), "I'll check the weather.");
    let out: Value =
        serde_json::from_slice(&encode_response(ApiFormat::OpenAi, &resp, "public")).unwrap();
    let created = out["created"].as_u64().unwrap();
    assert!(created > 1_700_000_000);
    assert_eq!(
        out,
        json!({
            "id": "msg_01Aq9w938a90dw8q",
            "object": "chat.completion",
            "created": created,
            "model": "public",
            "choices": [{
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "I'll check the weather.",
                    "refusal": null,
                    "tool_calls": [{"id": "toolu_01A09q90qw90lq917835lq9", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"San Francisco, CA\",\"unit\":\"celsius\"}"}}]
                },
                "logprobs": null,
                "finish_reason": "tool_calls"
            }],
            "usage": {"prompt_tokens": 5195, "completion_tokens": 503, "total_tokens": 5698, "prompt_tokens_details": {"cached_tokens": 3000}}
        })
    );
}

#[test]
fn finish_reason_mapping_both_ways() {
    let openai_to_anthropic = [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
        ("function_call", "tool_use"),
    ];
    for (oa, an) in openai_to_anthropic {
        let body = json!({"id": "x", "model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": oa}]});
        let resp = decode_response(ApiFormat::OpenAi, &j(&body)).unwrap();
        let out: Value =
            serde_json::from_slice(&encode_response(ApiFormat::Anthropic, &resp, "p")).unwrap();
        assert_eq!(out["stop_reason"], json!(an), "{oa}");
    }
    let anthropic_to_openai = [
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("stop_sequence", "stop"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
    ];
    for (an, oa) in anthropic_to_openai {
        let body = json!({"id": "x", "type": "message", "role": "assistant", "model": "m",
            "content": [{"type": "text", "text": "hi"}], "stop_reason": an, "stop_sequence": null,
            "usage": {"input_tokens": 1, "output_tokens": 1}});
        let resp = decode_response(ApiFormat::Anthropic, &j(&body)).unwrap();
        let out: Value =
            serde_json::from_slice(&encode_response(ApiFormat::OpenAi, &resp, "p")).unwrap();
        assert_eq!(out["choices"][0]["finish_reason"], json!(oa), "{an}");
        // And back to Anthropic unchanged (same format).
        let same: Value =
            serde_json::from_slice(&encode_response(ApiFormat::Anthropic, &resp, "p")).unwrap();
        assert_eq!(same["stop_reason"], json!(an));
    }
    // stop_sequence keeps the matched sequence for Anthropic clients.
    let body = json!({"id": "x", "type": "message", "role": "assistant", "model": "m",
        "content": [{"type": "text", "text": "hi"}], "stop_reason": "stop_sequence", "stop_sequence": "STOP",
        "usage": {"input_tokens": 1, "output_tokens": 1}});
    let resp = decode_response(ApiFormat::Anthropic, &j(&body)).unwrap();
    let out: Value =
        serde_json::from_slice(&encode_response(ApiFormat::Anthropic, &resp, "p")).unwrap();
    assert_eq!(out["stop_sequence"], json!("STOP"));
}

#[test]
fn refusal_response_cross_format() {
    let body = json!({"id": "c", "object": "chat.completion", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "refusal": "I can't help with that."}, "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}});
    let resp = decode_response(ApiFormat::OpenAi, &j(&body)).unwrap();
    let an: Value =
        serde_json::from_slice(&encode_response(ApiFormat::Anthropic, &resp, "p")).unwrap();
    assert_eq!(
        an["content"],
        json!([{"type": "text", "text": "I can't help with that."}])
    );
    let oa: Value =
        serde_json::from_slice(&encode_response(ApiFormat::OpenAi, &resp, "p")).unwrap();
    assert_eq!(
        oa["choices"][0]["message"]["refusal"],
        json!("I can't help with that.")
    );
    assert_eq!(oa["choices"][0]["message"]["content"], Value::Null);
}

// ---------------------------------------------------------------------------
// Streams end to end
// ---------------------------------------------------------------------------

#[test]
fn openai_text_stream_to_anthropic_client() {
    let (events, usage) = decode_every_split(ApiFormat::OpenAi, OPENAI_TEXT_STREAM.as_bytes());
    assert_eq!(
        usage,
        Usage {
            input_tokens: 19,
            output_tokens: 3,
            cached_input_tokens: 5
        }
    );
    let out = encode_stream(ApiFormat::Anthropic, &events, false);
    let frames = sse_frames(&out);
    let names: Vec<&str> = frames.iter().map(|(e, _)| e.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    for (name, data) in &frames {
        assert_eq!(data["type"], json!(name.as_deref().unwrap()));
    }
    assert_eq!(frames[0].1["message"]["model"], json!("public-model"));
    assert_eq!(frames[0].1["message"]["id"], json!("chatcmpl-123"));
    assert_eq!(frames[0].1["message"]["usage"]["input_tokens"], json!(0));
    assert_eq!(
        frames[1].1,
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    );
    assert_eq!(
        frames[3].1,
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " w\u{f6}rld \u{1f30d}"}})
    );
    // Input tokens arrive only at the end of an OpenAI stream: message_delta carries them.
    assert_eq!(
        frames[5].1,
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"input_tokens": 14, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 5, "output_tokens": 3}})
    );
    // Parse the produced stream back as an Anthropic upstream.
    let (back, d) = decode_all(ApiFormat::Anthropic, &out);
    assert!(d.is_complete());
    assert_eq!(d.usage(), usage);
    let (text, tools, finish) = assemble(&back);
    assert_eq!(text, "Hello w\u{f6}rld \u{1f30d}");
    assert!(tools.is_empty());
    assert_eq!(finish, Some(FinishReason::Stop));
}

#[test]
fn openai_tool_stream_to_anthropic_client() {
    let (events, usage) = decode_every_split(ApiFormat::OpenAi, OPENAI_TOOL_STREAM.as_bytes());
    assert_eq!(usage.input_tokens, 80);
    assert_eq!(usage.output_tokens, 30);
    let out = encode_stream(ApiFormat::Anthropic, &events, false);
    let frames = sse_frames(&out);
    let starts: Vec<&Value> = frames
        .iter()
        .filter(|(e, _)| e.as_deref() == Some("content_block_start"))
        .map(|(_, d)| d)
        .collect();
    assert_eq!(
        starts,
        [
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            &json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "name": "get_weather", "input": {}}}),
            &json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}}}),
        ]
    );
    // Every started block is stopped, in order, before message_delta.
    let stops: Vec<u64> = frames
        .iter()
        .filter(|(e, _)| e.as_deref() == Some("content_block_stop"))
        .map(|(_, d)| d["index"].as_u64().unwrap())
        .collect();
    assert_eq!(stops, [0, 1, 2]);
    let (back, d) = decode_all(ApiFormat::Anthropic, &out);
    assert!(d.is_complete());
    let (text, tools, finish) = assemble(&back);
    assert_eq!(text, "Checking.");
    assert_eq!(
        tools,
        vec![
            (
                "call_DdmO9pD3xa9XTPNJ32zg2hcA".to_owned(),
                "get_weather".to_owned(),
                "{\"location\":\"Paris\"}".to_owned()
            ),
            (
                "call_2".to_owned(),
                "get_time".to_owned(),
                "{\"tz\":\"CET\"}".to_owned()
            ),
        ]
    );
    assert_eq!(finish, Some(FinishReason::ToolCalls));
    let last_delta = frames
        .iter()
        .find(|(e, _)| e.as_deref() == Some("message_delta"))
        .unwrap();
    assert_eq!(last_delta.1["delta"]["stop_reason"], json!("tool_use"));
}

#[test]
fn anthropic_tool_stream_to_openai_client() {
    let (events, usage) =
        decode_every_split(ApiFormat::Anthropic, ANTHROPIC_TOOL_STREAM.as_bytes());
    assert_eq!(
        usage,
        Usage {
            input_tokens: 472,
            output_tokens: 89,
            cached_input_tokens: 0
        }
    );
    let out = encode_stream(ApiFormat::OpenAi, &events, true);
    let frames = sse_frames(&out);
    assert_eq!(frames.last().unwrap().1, json!("[DONE]"));
    let chunks: Vec<&Value> = frames[..frames.len() - 1].iter().map(|(_, d)| d).collect();
    for c in &chunks {
        assert_eq!(c["id"], json!("msg_014p7gG3wDgGV9EUtLvnow3U"));
        assert_eq!(c["model"], json!("public-model"));
        assert_eq!(c["object"], json!("chat.completion.chunk"));
        assert_eq!(c["created"], chunks[0]["created"]);
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": "", "refusal": null})
    );
    // Thinking is forwarded as reasoning_content; signatures are dropped.
    assert_eq!(
        chunks[1]["choices"][0]["delta"],
        json!({"reasoning_content": "Need the weather tool."})
    );
    assert_eq!(
        chunks[2]["choices"][0]["delta"],
        json!({"content": "Okay, let's check the weather."})
    );
    assert_eq!(
        chunks[3]["choices"][0]["delta"],
        json!({"tool_calls": [{"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]})
    );
    assert_eq!(
        chunks[4]["choices"][0]["delta"],
        json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"location\": \"San Fra"}}]})
    );
    let finish = chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], json!("tool_calls"));
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    let usage_chunk = chunks[chunks.len() - 1];
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(
        usage_chunk["usage"],
        json!({"prompt_tokens": 472, "completion_tokens": 89, "total_tokens": 561, "prompt_tokens_details": {"cached_tokens": 0}})
    );
    // Parse back as an OpenAI upstream.
    let (back, d) = decode_all(ApiFormat::OpenAi, &out);
    assert!(d.is_complete());
    assert_eq!(d.usage(), usage);
    let (text, tools, finish) = assemble(&back);
    assert_eq!(text, "Okay, let's check the weather.");
    assert_eq!(
        tools,
        vec![(
            "toolu_01T1x1fJ34qAmk2tNTrN7Up6".to_owned(),
            "get_weather".to_owned(),
            "{\"location\": \"San Francisco, CA\"}".to_owned()
        )]
    );
    assert_eq!(finish, Some(FinishReason::ToolCalls));
}

#[test]
fn anthropic_text_stream_to_openai_client_without_usage() {
    let (events, usage) =
        decode_every_split(ApiFormat::Anthropic, ANTHROPIC_TEXT_STREAM.as_bytes());
    assert_eq!(
        usage,
        Usage {
            input_tokens: 125,
            output_tokens: 15,
            cached_input_tokens: 100
        }
    );
    let out = encode_stream(ApiFormat::OpenAi, &events, false);
    let frames = sse_frames(&out);
    assert_eq!(frames.last().unwrap().1, json!("[DONE]"));
    for (_, d) in &frames[..frames.len() - 1] {
        assert!(d.get("usage").is_none(), "usage must be stripped: {d}");
        assert_eq!(d["choices"].as_array().unwrap().len(), 1);
    }
    let (back, d) = decode_all(ApiFormat::OpenAi, &out);
    assert!(d.is_complete());
    assert_eq!(assemble(&back).0, "Hello w\u{f6}rld \u{1f30d}");
    // Nothing was reported: estimated from the two content deltas.
    assert_eq!(
        d.usage(),
        Usage {
            input_tokens: 0,
            output_tokens: 2,
            cached_input_tokens: 0
        }
    );
}

#[test]
fn truncated_streams_are_incomplete_and_end_with_error() {
    for (format, full, target) in [
        (ApiFormat::OpenAi, OPENAI_TOOL_STREAM, ApiFormat::Anthropic),
        (
            ApiFormat::Anthropic,
            ANTHROPIC_TOOL_STREAM,
            ApiFormat::OpenAi,
        ),
    ] {
        let cut = &full.as_bytes()[..full.len() / 2];
        let (events, d) = decode_all(format, cut);
        assert!(!d.is_complete());
        assert!(d.saw_content());
        let mut enc = StreamEncoder::new(target, "p", true);
        let mut out = BytesMut::new();
        for ev in &events {
            enc.encode(ev, &mut out);
        }
        enc.error("api_error", "upstream stream ended early", &mut out);
        // A later finish() must not make it look complete.
        enc.finish(&mut out);
        let frames = sse_frames(&out);
        let (last_name, last) = frames.last().unwrap();
        match target {
            ApiFormat::OpenAi => {
                assert_eq!(
                    last,
                    &json!({"error": {"message": "upstream stream ended early", "type": "api_error", "param": null, "code": "api_error"}})
                );
                assert!(!frames.iter().any(|(_, d)| d == &json!("[DONE]")));
                assert!(!frames
                    .iter()
                    .any(|(_, d)| !d["choices"][0]["finish_reason"].is_null()));
            }
            ApiFormat::Anthropic => {
                assert_eq!(last_name.as_deref(), Some("error"));
                assert_eq!(
                    last,
                    &json!({"type": "error", "error": {"type": "api_error", "message": "upstream stream ended early"}})
                );
                assert!(!frames
                    .iter()
                    .any(|(e, _)| matches!(e.as_deref(), Some("message_stop" | "message_delta"))));
            }
        }
        // The produced stream, decoded, fails with the error message.
        let mut dec = StreamDecoder::new(target);
        let err = dec.feed(&out).unwrap_err();
        assert!(err.message.contains("upstream stream ended early"), "{err}");
        assert!(!dec.is_complete());
    }
}

#[test]
fn empty_finish_still_produces_well_formed_streams() {
    let out = encode_stream(ApiFormat::Anthropic, &[], false);
    let names: Vec<String> = sse_frames(&out)
        .into_iter()
        .map(|(e, _)| e.unwrap())
        .collect();
    assert_eq!(names, ["message_start", "message_delta", "message_stop"]);
    let out = encode_stream(ApiFormat::OpenAi, &[], false);
    let frames = sse_frames(&out);
    assert_eq!(frames.len(), 3);
    assert_eq!(frames[1].1["choices"][0]["finish_reason"], json!("stop"));
    assert_eq!(frames[2].1, json!("[DONE]"));
}
