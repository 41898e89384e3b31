use bytes::BytesMut;
use serde_json::{json, Value};

use super::super::tests::{
    decode_all, decode_every_split, encode, encode_stream, j, parse, parse_err, sse_frames,
    OPENAI_TEXT_STREAM, OPENAI_TOOL_STREAM,
};
use super::super::*;

const OA: ApiFormat = ApiFormat::OpenAi;

fn minimal() -> Value {
    json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello"}]})
}

type Mutation = Box<dyn Fn(&mut Value)>;

#[test]
fn validation_errors_name_the_param() {
    let e = parse_request(OA, b"{not json").unwrap_err();
    assert!(e.message.contains("not valid JSON"));
    assert_eq!(e.param, None);
    let e = parse_request(OA, b"[1,2]").unwrap_err();
    assert_eq!(e.message, "request body must be a JSON object");

    let cases: Vec<(Mutation, &str)> = vec![
        (Box::new(|b| b["model"] = Value::Null), "model"),
        (Box::new(|b| b["model"] = json!(5)), "model"),
        (
            Box::new(|b| {
                b.as_object_mut().unwrap().remove("model");
            }),
            "model",
        ),
        (
            Box::new(|b| {
                b.as_object_mut().unwrap().remove("messages");
            }),
            "messages",
        ),
        (Box::new(|b| b["messages"] = json!({})), "messages"),
        (Box::new(|b| b["messages"] = json!([])), "messages"),
        (Box::new(|b| b["messages"][0] = json!("hi")), "messages[0]"),
        (
            Box::new(|b| b["messages"][0]["role"] = json!("bot")),
            "messages[0].role",
        ),
        (
            Box::new(|b| b["messages"][0]["role"] = json!(1)),
            "messages[0].role",
        ),
        (
            Box::new(|b| {
                b["messages"][0].as_object_mut().unwrap().remove("role");
            }),
            "messages[0].role",
        ),
        (
            Box::new(|b| b["messages"][0]["content"] = json!(42)),
            "messages[0].content",
        ),
        (
            Box::new(|b| b["messages"][0]["content"] = Value::Null),
            "messages[0].content",
        ),
        (
            Box::new(|b| b["messages"][0]["content"] = json!([{"type": "video", "url": "x"}])),
            "messages[0].content[0].type",
        ),
        (
            Box::new(|b| b["messages"][0]["content"] = json!([{"text": "no type"}])),
            "messages[0].content[0].type",
        ),
        (
            Box::new(|b| b["messages"][0]["content"] = json!([{"type": "text", "text": 1}])),
            "messages[0].content[0].text",
        ),
        (
            Box::new(|b| b["messages"][0]["content"] = json!([{"type": "image_url"}])),
            "messages[0].content[0].image_url",
        ),
        (
            Box::new(|b| b["messages"] = json!([{"role": "tool", "content": "r"}])),
            "messages[0].tool_call_id",
        ),
        (
            Box::new(
                |b| b["messages"] = json!([{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}]),
            ),
            "messages[0].tool_calls[0].id",
        ),
        (
            Box::new(
                |b| b["messages"] = json!([{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"arguments": "{}"}}]}]),
            ),
            "messages[0].tool_calls[0].function.name",
        ),
        (
            Box::new(|b| b["messages"] = json!([{"role": "assistant", "tool_calls": {}}])),
            "messages[0].tool_calls",
        ),
        (Box::new(|b| b["temperature"] = json!("hot")), "temperature"),
        (Box::new(|b| b["top_p"] = json!(true)), "top_p"),
        (Box::new(|b| b["max_tokens"] = json!(0)), "max_tokens"),
        (Box::new(|b| b["max_tokens"] = json!(-5)), "max_tokens"),
        (Box::new(|b| b["max_tokens"] = json!(10.5)), "max_tokens"),
        (Box::new(|b| b["max_tokens"] = json!("100")), "max_tokens"),
        (
            Box::new(|b| b["max_completion_tokens"] = json!(0)),
            "max_completion_tokens",
        ),
        (Box::new(|b| b["stream"] = json!("yes")), "stream"),
        (
            Box::new(|b| b["stream_options"] = json!({"include_usage": "y"})),
            "stream_options.include_usage",
        ),
        (
            Box::new(|b| b["stream_options"] = json!(1)),
            "stream_options",
        ),
        (Box::new(|b| b["stop"] = json!(5)), "stop"),
        (Box::new(|b| b["stop"] = json!(["a", 1])), "stop[1]"),
        (Box::new(|b| b["user"] = json!(1)), "user"),
        (Box::new(|b| b["tools"] = json!({})), "tools"),
        (
            Box::new(|b| {
                b["tools"] = json!([{"type": "function", "function": {"description": "d"}}])
            }),
            "tools[0].function.name",
        ),
        (
            Box::new(|b| b["tools"] = json!([{"type": "function"}])),
            "tools[0].function",
        ),
        (
            Box::new(|b| {
                b["tools"] =
                    json!([{"type": "function", "function": {"name": "f", "parameters": "x"}}])
            }),
            "tools[0].function.parameters",
        ),
        (
            Box::new(|b| b["tool_choice"] = json!("sometimes")),
            "tool_choice",
        ),
        (
            Box::new(|b| b["tool_choice"] = json!({"type": "function"})),
            "tool_choice.function.name",
        ),
        (
            Box::new(|b| b["parallel_tool_calls"] = json!("no")),
            "parallel_tool_calls",
        ),
    ];
    for (mutate, param) in cases {
        let mut body = minimal();
        mutate(&mut body);
        let err = parse_err(OA, body.clone());
        assert_eq!(
            err.param.as_deref(),
            Some(param),
            "{body} -> {}",
            err.message
        );
        assert!(err.message.contains(param), "{}", err.message);
    }
}

#[test]
fn nulls_are_absent() {
    let mut body = minimal();
    for k in [
        "temperature",
        "top_p",
        "max_tokens",
        "stream",
        "stop",
        "user",
        "tools",
        "tool_choice",
        "stream_options",
    ] {
        body[k] = Value::Null;
    }
    let req = parse(OA, body);
    assert_eq!(req.temperature, None);
    assert!(!req.stream);
    // Nulls of unmodeled fields pass through same-format but never block translation.
    let mut body = minimal();
    body["seed"] = Value::Null;
    let req = parse(OA, body);
    assert_eq!(encode(OA, &req)["seed"], Value::Null);
    encode(ApiFormat::Anthropic, &req);
}

#[test]
fn same_format_passthrough_preserves_everything() {
    let body = json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "developer", "content": "Be precise."},
            {"role": "user", "name": "alice", "content": [
                {"type": "text", "text": "Describe"},
                {"type": "image_url", "image_url": {"url": "data:image/webp;base64,UklGRg==", "detail": "high"}},
                {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                {"type": "file", "file": {"file_id": "file-abc"}}
            ]},
            {"role": "assistant", "content": [{"type": "text", "text": "Sure"}, {"type": "refusal", "refusal": "but not that"}], "refusal": null,
             "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"x\":[1,2]}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": ""},
            {"role": "user", "content": ""}
        ],
        "max_tokens": 300,
        "temperature": 1.7,
        "top_p": 0.95,
        "n": 2,
        "seed": 42,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "logit_bias": {"1234": -100},
        "logprobs": true,
        "top_logprobs": 3,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": true}},
        "service_tier": "flex",
        "reasoning_effort": "low",
        "stop": ["a", "b"],
        "user": "u",
        "stream": true,
        "stream_options": {"include_usage": false, "include_obfuscation": false},
        "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}, "strict": true}},
                  {"type": "custom", "custom": {"name": "grammar"}}],
        "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [{"type": "function", "function": {"name": "f"}}]}},
        "parallel_tool_calls": true
    });
    let req = parse(OA, body.clone());
    assert!(!req.include_usage);
    assert!(req.legacy_max_tokens);
    let out = encode(OA, &req);
    let mut expected = body;
    expected["model"] = json!("upstream-model");
    // The gateway always asks for usage upstream; other stream options are kept.
    expected["stream_options"] = json!({"include_usage": true, "include_obfuscation": false});
    // Equivalent normalizations: a single plain text part ⇄ string.
    expected["messages"][1]["content"][0] = json!({"type": "text", "text": "Describe"});
    assert_eq!(out, expected);
}

#[test]
fn max_completion_tokens_and_stream_flags() {
    let mut body = minimal();
    body["max_completion_tokens"] = json!(100);
    body["stream"] = json!(true);
    let req = parse(OA, body);
    assert!(!req.include_usage);
    let out = encode(OA, &req);
    assert_eq!(out["max_completion_tokens"], json!(100));
    assert!(out.get("max_tokens").is_none());
    assert_eq!(out["stream_options"], json!({"include_usage": true}));
    // The lead may turn streaming off (e.g. cache fill): no stream_options then.
    let mut req = req;
    req.stream = false;
    let out = encode(OA, &req);
    assert!(out.get("stream").is_none() && out.get("stream_options").is_none());
    // Both fields given: max_completion_tokens is modeled, max_tokens kept verbatim.
    let mut body = minimal();
    body["max_completion_tokens"] = json!(100);
    body["max_tokens"] = json!(200);
    let req = parse(OA, body);
    assert_eq!(req.max_tokens, Some(100));
    let out = encode(OA, &req);
    assert_eq!(
        (
            out["max_completion_tokens"].clone(),
            out["max_tokens"].clone()
        ),
        (json!(100), json!(200))
    );
    assert_eq!(
        super::super::encode_request(ApiFormat::Anthropic, &req, "c", 1)
            .map(|b| serde_json::from_slice::<Value>(&b).unwrap()["max_tokens"].clone()),
        Ok(json!(100))
    );
}

#[test]
fn parse_request_structure() {
    let req = parse(
        OA,
        json!({"model": "m", "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": "https://x.test/a.png"}]},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "  "}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"}
        ], "stop": "\n\n"}),
    );
    assert_eq!(req.stop, vec!["\n\n".to_owned()]);
    assert_eq!(
        req.messages[0].content,
        vec![ContentBlock::Image {
            source: ImageSource::Url {
                url: "https://x.test/a.png".into()
            },
            extras: Extras::new()
        }]
    );
    assert_eq!(
        req.messages[1].content[1],
        ContentBlock::ToolUse {
            id: "c1".into(),
            name: "f".into(),
            input: ToolInput::Json(json!({})),
            extras: Extras::new()
        }
    );
    assert_eq!(req.messages[2].role, Role::Tool);
    assert!(matches!(
        &req.messages[2].content[0],
        ContentBlock::ToolResult { tool_use_id, .. } if tool_use_id == "c1"
    ));
    // A non-base64 data URL stays a URL (and cannot go to Anthropic).
    let req = parse(
        OA,
        json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:text/plain,hello"}}]}]}),
    );
    assert!(matches!(
        &req.messages[0].content[0],
        ContentBlock::Image {
            source: ImageSource::Url { .. },
            ..
        }
    ));
}

#[test]
fn response_same_format_round_trip() {
    let body = json!({
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": 1741570283,
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hi there", "refusal": null, "annotations": []},
             "logprobs": {"content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}], "refusal": null},
             "finish_reason": "stop"},
            {"index": 1, "message": {"role": "assistant", "content": "Hello", "refusal": null, "annotations": []}, "logprobs": null, "finish_reason": "length"}
        ],
        "usage": {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
                  "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0}},
        "service_tier": "default",
        "system_fingerprint": "fp_123"
    });
    let resp = decode_response(OA, &j(&body)).unwrap();
    assert_eq!(resp.text(), "Hi there");
    assert_eq!(resp.finish_reason, Some(FinishReason::Stop));
    assert_eq!(
        resp.usage,
        Usage {
            input_tokens: 19,
            output_tokens: 10,
            cached_input_tokens: 0
        }
    );
    let out: Value = serde_json::from_slice(&encode_response(OA, &resp, "public")).unwrap();
    let mut expected = body;
    expected["model"] = json!("public");
    assert_eq!(out, expected);
}

#[test]
fn decode_response_errors() {
    let e = decode_response(OA, b"<html>").unwrap_err();
    assert!(e.message.contains("not valid JSON"));
    let e = decode_response(
        OA,
        br#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#,
    )
    .unwrap_err();
    assert_eq!(e.message, "upstream error (requests): Rate limit reached");
    let e = decode_response(OA, br#"{"id":"x","object":"chat.completion"}"#).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("choices"));
    // Invalid tool arguments in a response are kept, not fatal.
    let resp = decode_response(
        OA,
        br#"{"id":"x","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{\"a\":"}}]},"finish_reason":"length"}]}"#,
    )
    .unwrap();
    let out: Value = serde_json::from_slice(&encode_response(OA, &resp, "m")).unwrap();
    assert_eq!(
        out["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        json!("{\"a\":")
    );
    let an: Value =
        serde_json::from_slice(&encode_response(ApiFormat::Anthropic, &resp, "m")).unwrap();
    assert_eq!(an["content"][0]["input"], json!({}));
}

// ---------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------

#[test]
fn decode_text_stream_events() {
    let (events, usage) = decode_every_split(OA, OPENAI_TEXT_STREAM.as_bytes());
    assert_eq!(
        events,
        vec![
            StreamEvent::MessageStart {
                id: "chatcmpl-123".into(),
                model: "gpt-4o-mini-2024-07-18".into(),
                created: Some(1694268190),
                usage: Usage::default()
            },
            StreamEvent::BlockStart {
                index: 0,
                block: BlockKind::Text
            },
            StreamEvent::TextDelta {
                index: 0,
                text: "Hello".into()
            },
            StreamEvent::TextDelta {
                index: 0,
                text: " w\u{f6}rld \u{1f30d}".into()
            },
            StreamEvent::BlockStop { index: 0 },
            StreamEvent::MessageDelta {
                finish_reason: Some(FinishReason::Stop),
                stop_sequence: None
            },
            StreamEvent::Usage(Usage {
                input_tokens: 19,
                output_tokens: 3,
                cached_input_tokens: 5
            }),
            StreamEvent::MessageStop,
        ]
    );
    assert_eq!(usage.input_tokens, 19);
}

#[test]
fn decode_tool_stream_events() {
    let (events, _) = decode_every_split(OA, OPENAI_TOOL_STREAM.as_bytes());
    let expected_prefix = [
        StreamEvent::BlockStart {
            index: 0,
            block: BlockKind::Text,
        },
        StreamEvent::TextDelta {
            index: 0,
            text: "Checking.".into(),
        },
        StreamEvent::BlockStop { index: 0 },
        StreamEvent::BlockStart {
            index: 1,
            block: BlockKind::ToolUse {
                id: "call_DdmO9pD3xa9XTPNJ32zg2hcA".into(),
                name: "get_weather".into(),
            },
        },
        StreamEvent::ToolInputDelta {
            index: 1,
            partial_json: "{\"location\":".into(),
        },
        StreamEvent::ToolInputDelta {
            index: 1,
            partial_json: "\"Paris\"}".into(),
        },
        StreamEvent::BlockStop { index: 1 },
        StreamEvent::BlockStart {
            index: 2,
            block: BlockKind::ToolUse {
                id: "call_2".into(),
                name: "get_time".into(),
            },
        },
        StreamEvent::ToolInputDelta {
            index: 2,
            partial_json: "{\"tz\":\"CET\"}".into(),
        },
        StreamEvent::BlockStop { index: 2 },
        StreamEvent::MessageDelta {
            finish_reason: Some(FinishReason::ToolCalls),
            stop_sequence: None,
        },
    ];
    assert_eq!(&events[1..12], &expected_prefix);
}

#[test]
fn usage_estimate_and_saw_content_on_partial_stream() {
    let mut d = StreamDecoder::new(OA);
    let first_chunk_end = OPENAI_TEXT_STREAM.find("\n\n").unwrap() + 2;
    d.feed(&OPENAI_TEXT_STREAM.as_bytes()[..first_chunk_end])
        .unwrap();
    assert!(!d.saw_content(), "the role chunk carries no content");
    assert_eq!(d.usage(), Usage::default());
    let second_end =
        first_chunk_end + OPENAI_TEXT_STREAM[first_chunk_end..].find("\n\n").unwrap() + 2;
    d.feed(&OPENAI_TEXT_STREAM.as_bytes()[first_chunk_end..second_end])
        .unwrap();
    assert!(d.saw_content());
    assert_eq!(d.usage().output_tokens, 1);
    assert!(!d.is_complete());
    // A tool-call start is content too.
    let mut d = StreamDecoder::new(OA);
    let tool_start_end = OPENAI_TOOL_STREAM
        .match_indices("\r\n\r\n")
        .nth(1)
        .unwrap()
        .0
        + 4;
    let first_end = OPENAI_TOOL_STREAM.find("\r\n\r\n").unwrap() + 4;
    d.feed(&OPENAI_TOOL_STREAM.as_bytes()[first_end..tool_start_end])
        .unwrap();
    assert!(d.saw_content());
}

#[test]
fn stream_error_and_malformed_input() {
    let mut d = StreamDecoder::new(OA);
    let e = d
        .feed(b"data: {\"error\":{\"message\":\"The server had an error while processing your request.\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n")
        .unwrap_err();
    assert_eq!(
        e.message,
        "upstream error (server_error): The server had an error while processing your request."
    );
    assert!(!d.is_complete());
    let mut d = StreamDecoder::new(OA);
    assert!(d
        .feed(b"data: {\"id\": nope}\n\n")
        .unwrap_err()
        .message
        .contains("malformed"));
    let mut d = StreamDecoder::new(OA);
    assert!(d
        .feed(b"event: error\ndata: {\"message\":\"boom\"}\n\n")
        .is_err());
    // Comments/keepalives and data after [DONE] are ignored.
    let mut d = StreamDecoder::new(OA);
    let evs = d
        .feed(b": OPENROUTER PROCESSING\n\ndata: [DONE]\n\ndata: garbage\n\n")
        .unwrap();
    assert_eq!(evs, vec![StreamEvent::MessageStop]);
    assert!(d.is_complete());
}

#[test]
fn decode_refusal_reasoning_logprobs_and_extra_choices() {
    let stream = concat!(
        "data: {\"id\":\"c\",\"model\":\"m\",\"created\":1,\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"reasoning_content\":\"think\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c\",\"model\":\"m\",\"created\":1,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"logprobs\":{\"content\":[{\"token\":\"Hi\",\"logprob\":-0.5}]},\"finish_reason\":null},{\"index\":1,\"delta\":{\"content\":\"Yo\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c\",\"model\":\"m\",\"created\":1,\"choices\":[{\"index\":0,\"delta\":{\"refusal\":\"No.\"},\"finish_reason\":\"content_filter\"}]}\n\n",
        "data: [DONE]\n\n",
    );
    let (events, _) = decode_every_split(OA, stream.as_bytes());
    assert_eq!(
        &events[1..],
        &[
            StreamEvent::BlockStart {
                index: 0,
                block: BlockKind::Thinking
            },
            StreamEvent::ThinkingDelta {
                index: 0,
                thinking: "think".into()
            },
            StreamEvent::Logprobs(json!({"content": [{"token": "Hi", "logprob": -0.5}]})),
            StreamEvent::BlockStop { index: 0 },
            StreamEvent::BlockStart {
                index: 1,
                block: BlockKind::Text
            },
            StreamEvent::TextDelta {
                index: 1,
                text: "Hi".into()
            },
            StreamEvent::OtherChoice(
                json!({"index": 1, "delta": {"content": "Yo"}, "finish_reason": null})
            ),
            StreamEvent::BlockStop { index: 1 },
            StreamEvent::BlockStart {
                index: 2,
                block: BlockKind::Refusal
            },
            StreamEvent::TextDelta {
                index: 2,
                text: "No.".into()
            },
            StreamEvent::BlockStop { index: 2 },
            StreamEvent::MessageDelta {
                finish_reason: Some(FinishReason::ContentFilter),
                stop_sequence: None
            },
            StreamEvent::MessageStop,
        ]
    );
    // Same-format re-encoding keeps logprobs, refusal, reasoning and extra choices.
    let out = encode_stream(OA, &events, false);
    let frames = sse_frames(&out);
    let deltas: Vec<Value> = frames
        .iter()
        .map(|(_, d)| d["choices"][0].clone())
        .collect();
    assert_eq!(deltas[1]["delta"], json!({"reasoning_content": "think"}));
    assert_eq!(deltas[2]["delta"], json!({"content": "Hi"}));
    assert_eq!(
        deltas[2]["logprobs"],
        json!({"content": [{"token": "Hi", "logprob": -0.5}]})
    );
    assert_eq!(
        deltas[3],
        json!({"index": 1, "delta": {"content": "Yo"}, "finish_reason": null})
    );
    assert_eq!(deltas[4]["delta"], json!({"refusal": "No."}));
    assert_eq!(deltas[5]["finish_reason"], json!("content_filter"));
}

#[test]
fn encoder_include_usage_flag() {
    let (events, _) = decode_all(OA, OPENAI_TEXT_STREAM.as_bytes());
    let with = sse_frames(&encode_stream(OA, &events, true));
    let without = sse_frames(&encode_stream(OA, &events, false));
    assert_eq!(with.len(), without.len() + 1);
    let usage_chunk = &with[with.len() - 2].1;
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(
        usage_chunk["usage"],
        json!({"prompt_tokens": 19, "completion_tokens": 3, "total_tokens": 22, "prompt_tokens_details": {"cached_tokens": 5}})
    );
    // With include_usage every other chunk carries "usage": null, like OpenAI.
    assert!(with[..with.len() - 2]
        .iter()
        .all(|(_, d)| d["usage"].is_null() && d.get("usage").is_some()));
    assert!(without.iter().all(|(_, d)| d.get("usage").is_none()));
    assert_eq!(without.last().unwrap().1, json!("[DONE]"));
    // Same-format re-encoding reproduces the upstream chunks (modulo model name).
    for ((_, a), (_, b)) in sse_frames(OPENAI_TEXT_STREAM.as_bytes())
        .iter()
        .zip(with.iter())
    {
        if a == &json!("[DONE]") {
            assert_eq!(a, b);
            continue;
        }
        assert_eq!(a["id"], b["id"]);
        assert_eq!(a["created"], b["created"]);
        assert_eq!(b["model"], json!("public-model"));
        if a["choices"] != json!([]) {
            assert_eq!(a["choices"][0]["delta"], b["choices"][0]["delta"]);
            assert_eq!(
                a["choices"][0]["finish_reason"],
                b["choices"][0]["finish_reason"]
            );
        }
    }
}

#[test]
fn encoder_finish_is_idempotent_and_error_after_finish_ignored() {
    let mut enc = StreamEncoder::new(OA, "m", false);
    let mut out = BytesMut::new();
    enc.finish(&mut out);
    let len = out.len();
    enc.finish(&mut out);
    enc.error("api_error", "x", &mut out);
    enc.encode(
        &StreamEvent::TextDelta {
            index: 0,
            text: "late".into(),
        },
        &mut out,
    );
    assert_eq!(out.len(), len);
}
