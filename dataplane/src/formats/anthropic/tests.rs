use bytes::BytesMut;
use serde_json::{json, Value};

use super::super::tests::{
    decode_all, decode_every_split, encode, encode_stream, j, parse, parse_err, sse_frames,
    ANTHROPIC_TEXT_STREAM, ANTHROPIC_TOOL_STREAM,
};
use super::super::*;

const AN: ApiFormat = ApiFormat::Anthropic;

fn minimal() -> Value {
    json!({"model": "claude-sonnet-4-20250514", "max_tokens": 1024, "messages": [{"role": "user", "content": "Hello, Claude"}]})
}

type Mutation = Box<dyn Fn(&mut Value)>;

#[test]
fn validation_errors_name_the_param() {
    let e = parse_request(AN, b"").unwrap_err();
    assert!(e.message.contains("not valid JSON"));
    let e = parse_request(AN, b"\"str\"").unwrap_err();
    assert_eq!(e.message, "request body must be a JSON object");

    let cases: Vec<(Mutation, &str)> = vec![
        (Box::new(|b| b["model"] = json!(["x"])), "model"),
        (Box::new(|b| b["model"] = json!("")), "model"),
        (
            Box::new(|b| {
                b.as_object_mut().unwrap().remove("messages");
            }),
            "messages",
        ),
        (Box::new(|b| b["messages"] = json!("hi")), "messages"),
        (Box::new(|b| b["messages"] = json!([])), "messages"),
        (
            Box::new(|b| b["messages"][0]["role"] = json!("system")),
            "messages[0].role",
        ),
        (
            Box::new(|b| b["messages"][0]["content"] = json!({"text": "x"})),
            "messages[0].content",
        ),
        (
            Box::new(|b| {
                b["messages"][0].as_object_mut().unwrap().remove("content");
            }),
            "messages[0].content",
        ),
        (
            Box::new(|b| b["messages"][0]["content"] = json!([{"type": "audio", "data": "x"}])),
            "messages[0].content[0].type",
        ),
        (
            Box::new(|b| b["messages"][0]["content"] = json!(["plain string"])),
            "messages[0].content[0]",
        ),
        (
            Box::new(|b| {
                b["messages"][0]["content"] =
                    json!([{"type": "image", "source": {"type": "base64", "data": "AA=="}}])
            }),
            "messages[0].content[0].source.media_type",
        ),
        (
            Box::new(|b| {
                b["messages"][0]["content"] =
                    json!([{"type": "tool_use", "id": "t", "name": "n", "input": "x"}])
            }),
            "messages[0].content[0].input",
        ),
        (
            Box::new(|b| {
                b["messages"][0]["content"] = json!([{"type": "tool_result", "content": "x"}])
            }),
            "messages[0].content[0].tool_use_id",
        ),
        (
            Box::new(
                |b| b["messages"][0]["content"] = json!([{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "video"}]}]),
            ),
            "messages[0].content[0].content[0].type",
        ),
        (
            Box::new(|b| {
                b["messages"][0]["content"] =
                    json!([{"type": "tool_result", "tool_use_id": "t", "is_error": "yes"}])
            }),
            "messages[0].content[0].is_error",
        ),
        (Box::new(|b| b["system"] = json!(3)), "system"),
        (
            Box::new(|b| {
                b["system"] =
                    json!([{"type": "image", "source": {"type": "url", "url": "https://x"}}])
            }),
            "system[0].type",
        ),
        (Box::new(|b| b["max_tokens"] = json!(0)), "max_tokens"),
        (Box::new(|b| b["max_tokens"] = json!("1024")), "max_tokens"),
        (Box::new(|b| b["temperature"] = json!("0.5")), "temperature"),
        (Box::new(|b| b["stream"] = json!(1)), "stream"),
        (
            Box::new(|b| b["stop_sequences"] = json!("STOP")),
            "stop_sequences",
        ),
        (
            Box::new(|b| b["stop_sequences"] = json!([1])),
            "stop_sequences[0]",
        ),
        (Box::new(|b| b["metadata"] = json!("u")), "metadata"),
        (
            Box::new(|b| b["metadata"] = json!({"user_id": 5})),
            "metadata.user_id",
        ),
        (
            Box::new(|b| b["tools"] = json!([{"name": "f"}])),
            "tools[0].input_schema",
        ),
        (
            Box::new(|b| b["tools"] = json!([{"input_schema": {"type": "object"}}])),
            "tools[0].name",
        ),
        (
            Box::new(|b| b["tool_choice"] = json!({"type": "maybe"})),
            "tool_choice.type",
        ),
        (
            Box::new(|b| b["tool_choice"] = json!({"type": "tool"})),
            "tool_choice.name",
        ),
        (
            Box::new(|b| b["tool_choice"] = json!("auto")),
            "tool_choice",
        ),
        (
            Box::new(|b| {
                b["tool_choice"] = json!({"type": "auto", "disable_parallel_tool_use": "y"})
            }),
            "tool_choice.disable_parallel_tool_use",
        ),
    ];
    for (mutate, param) in cases {
        let mut body = minimal();
        mutate(&mut body);
        let err = parse_err(AN, body.clone());
        assert_eq!(
            err.param.as_deref(),
            Some(param),
            "{body} -> {}",
            err.message
        );
        assert!(err.message.contains(param), "{}", err.message);
    }
    // Missing max_tokens is allowed (the encoder applies the default).
    let mut body = minimal();
    body.as_object_mut().unwrap().remove("max_tokens");
    let req = parse(AN, body);
    assert_eq!(req.max_tokens, None);
    assert_eq!(encode(AN, &req)["max_tokens"], json!(4096));
}

#[test]
fn same_format_passthrough_preserves_everything() {
    let body = json!({
        "model": "claude-opus-4-1-20250805",
        "max_tokens": 16000,
        "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}, "title": "spec"},
                {"type": "image", "source": {"type": "file", "file_id": "file_011"}},
                {"type": "text", "text": "Read these.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Let me read.", "signature": "WaUjzkypQ2mUEVM36O2TxuC06KN8xyfbJwyem2dw3URve"},
                {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
                {"type": "text", "text": "Done.", "citations": [{"type": "page_location", "cited_text": "x", "document_index": 0, "document_title": "spec", "start_page_number": 1, "end_page_number": 2}]},
                {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"command": "ls"}, "cache_control": {"type": "ephemeral"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "a"}, {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}}], "is_error": true, "cache_control": {"type": "ephemeral"}}
            ]},
            {"role": "user", "content": "consecutive user turn"}
        ],
        "temperature": 1,
        "top_k": 40,
        "stop_sequences": ["\n\nHuman:"],
        "stream": true,
        "metadata": {"user_id": "user-1"},
        "thinking": {"type": "enabled", "budget_tokens": 10000},
        "service_tier": "standard_only",
        "tools": [
            {"name": "bash", "description": "Run", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}, "cache_control": {"type": "ephemeral"}},
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
            {"type": "custom", "name": "c", "input_schema": {"type": "object"}}
        ],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": true}
    });
    let req = parse(AN, body.clone());
    assert_eq!(req.user.as_deref(), Some("user-1"));
    assert_eq!(req.parallel_tool_calls, Some(false));
    assert_eq!(req.tool_count(), 3);
    let out = encode(AN, &req);
    let mut expected = body;
    expected["model"] = json!("upstream-model");
    // `temperature: 1` is modeled as f64.
    expected["temperature"] = json!(1.0);
    assert_eq!(out, expected);
}

#[test]
fn same_format_keeps_metadata_extras_and_string_forms() {
    let body = json!({"model": "m", "max_tokens": 5, "system": "plain system",
        "metadata": {"user_id": "u", "trace_id": "t"},
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "prefill"}]});
    let req = parse(AN, body.clone());
    let mut expected = body;
    expected["model"] = json!("upstream-model");
    assert_eq!(encode(AN, &req), expected);
}

#[test]
fn response_same_format_round_trip() {
    let body = json!({
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-20250514",
        "content": [
            {"type": "thinking", "thinking": "Hmm.", "signature": "sig"},
            {"type": "text", "text": "Per the doc, yes.", "citations": [{"type": "char_location", "cited_text": "yes", "document_index": 0, "document_title": null, "start_char_index": 0, "end_char_index": 3}]},
            {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "q"}},
            {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": [1, {"b": null}]}}
        ],
        "stop_reason": "stop_sequence",
        "stop_sequence": "END",
        "usage": {"input_tokens": 10, "cache_creation_input_tokens": 20, "cache_read_input_tokens": 30, "output_tokens": 40,
                  "service_tier": "standard", "server_tool_use": {"web_search_requests": 1}},
        "container": null
    });
    let resp = decode_response(AN, &j(&body)).unwrap();
    assert_eq!(
        resp.usage,
        Usage {
            input_tokens: 60,
            output_tokens: 40,
            cached_input_tokens: 30
        }
    );
    assert_eq!(resp.finish_reason, Some(FinishReason::StopSequence));
    assert_eq!(resp.tool_call_names(), vec!["f"]);
    let out: Value = serde_json::from_slice(&encode_response(AN, &resp, "public")).unwrap();
    let mut expected = body;
    expected["model"] = json!("public");
    assert_eq!(out, expected);
    // OpenAI clients get text + tool calls; unrepresentable blocks are omitted.
    let oa: Value =
        serde_json::from_slice(&encode_response(ApiFormat::OpenAi, &resp, "public")).unwrap();
    assert_eq!(
        oa["choices"][0]["message"]["content"],
        json!("Per the doc, yes.")
    );
    assert_eq!(
        oa["choices"][0]["message"]["tool_calls"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(oa["choices"][0]["finish_reason"], json!("stop"));
    assert_eq!(oa["usage"]["prompt_tokens"], json!(60));
    assert!(oa.get("container").is_none());
}

#[test]
fn decode_response_errors() {
    let e = decode_response(
        AN,
        br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
    )
    .unwrap_err();
    assert_eq!(e.message, "upstream error (overloaded_error): Overloaded");
    let e = decode_response(AN, br#"{"type":"message","id":"x"}"#).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("content"));
    let e = decode_response(AN, b"[]").unwrap_err();
    assert!(e.message.contains("JSON object"));
}

// ---------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------

#[test]
fn decode_text_stream_events() {
    let (events, usage) = decode_every_split(AN, ANTHROPIC_TEXT_STREAM.as_bytes());
    assert_eq!(
        events,
        vec![
            StreamEvent::MessageStart {
                id: "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY".into(),
                model: "claude-sonnet-4-20250514".into(),
                created: None,
                usage: Usage {
                    input_tokens: 125,
                    output_tokens: 1,
                    cached_input_tokens: 100
                }
            },
            StreamEvent::BlockStart {
                index: 0,
                block: BlockKind::Text
            },
            StreamEvent::Ping,
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
                input_tokens: 125,
                output_tokens: 15,
                cached_input_tokens: 100
            }),
            StreamEvent::MessageStop,
        ]
    );
    assert_eq!(usage.output_tokens, 15);
}

#[test]
fn decode_tool_stream_events() {
    let (events, _) = decode_every_split(AN, ANTHROPIC_TOOL_STREAM.as_bytes());
    assert_eq!(
        &events[1..5],
        &[
            StreamEvent::BlockStart {
                index: 0,
                block: BlockKind::Thinking
            },
            StreamEvent::ThinkingDelta {
                index: 0,
                thinking: "Need the weather tool.".into()
            },
            StreamEvent::SignatureDelta {
                index: 0,
                signature: "EqQBCgIYAhIM1gbcDa9GJwZA2b3h".into()
            },
            StreamEvent::BlockStop { index: 0 },
        ]
    );
    assert!(events.contains(&StreamEvent::BlockStart {
        index: 2,
        block: BlockKind::ToolUse {
            id: "toolu_01T1x1fJ34qAmk2tNTrN7Up6".into(),
            name: "get_weather".into()
        }
    }));
    // Empty partial_json pieces are skipped.
    assert!(!events.contains(&StreamEvent::ToolInputDelta {
        index: 2,
        partial_json: String::new()
    }));
}

#[test]
fn partial_usage_before_message_delta() {
    let cut = ANTHROPIC_TEXT_STREAM
        .find("event: content_block_stop")
        .unwrap();
    let (_, d) = decode_all(AN, &ANTHROPIC_TEXT_STREAM.as_bytes()[..cut]);
    assert!(!d.is_complete());
    assert!(d.saw_content());
    // Input from message_start; output estimated from 2 deltas (reported 1 so far).
    assert_eq!(
        d.usage(),
        Usage {
            input_tokens: 125,
            output_tokens: 2,
            cached_input_tokens: 100
        }
    );
    // Before any content the saw_content flag is false.
    let cut = ANTHROPIC_TEXT_STREAM.find("event: ping").unwrap();
    let (_, d) = decode_all(AN, &ANTHROPIC_TEXT_STREAM.as_bytes()[..cut]);
    assert!(!d.saw_content());
}

#[test]
fn stream_error_event_and_malformed_input() {
    let mut d = StreamDecoder::new(AN);
    let ok = d
        .feed(
            ANTHROPIC_TEXT_STREAM
                .split("event: ping")
                .next()
                .unwrap()
                .as_bytes(),
        )
        .unwrap();
    assert_eq!(ok.len(), 2);
    let e = d
        .feed(b"event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n")
        .unwrap_err();
    assert_eq!(e.message, "upstream error (overloaded_error): Overloaded");
    assert!(!d.is_complete());
    let mut d = StreamDecoder::new(AN);
    assert!(d
        .feed(b"event: message_start\ndata: {\"type\":\n\n")
        .is_err());
    let mut d = StreamDecoder::new(AN);
    assert!(d
        .feed(b"data: {\"type\":\"content_block_delta\",\"index\":0}\n\n")
        .is_err());
    // Unknown event types are tolerated.
    let mut d = StreamDecoder::new(AN);
    assert_eq!(
        d.feed(b"event: future\ndata: {\"type\":\"future_event\"}\n\n")
            .unwrap(),
        vec![]
    );
}

#[test]
fn same_format_stream_reencoding_is_faithful() {
    let (events, _) = decode_all(AN, ANTHROPIC_TOOL_STREAM.as_bytes());
    let out = encode_stream(AN, &events, false);
    let ours = sse_frames(&out);
    let theirs: Vec<_> = sse_frames(ANTHROPIC_TOOL_STREAM.as_bytes())
        .into_iter()
        // Empty input_json_delta pieces are dropped by the decoder.
        .filter(|(_, d)| d["delta"]["partial_json"] != json!(""))
        .collect();
    assert_eq!(ours.len(), theirs.len());
    for ((en_a, a), (en_b, b)) in ours.iter().zip(theirs.iter()) {
        assert_eq!(en_a, en_b);
        match en_a.as_deref() {
            Some("message_start") => {
                assert_eq!(a["message"]["id"], b["message"]["id"]);
                assert_eq!(a["message"]["model"], json!("public-model"));
                assert_eq!(
                    a["message"]["usage"]["input_tokens"],
                    b["message"]["usage"]["input_tokens"]
                );
            }
            Some("message_delta") => {
                assert_eq!(a["delta"], b["delta"]);
                assert_eq!(a["usage"]["output_tokens"], b["usage"]["output_tokens"]);
                // message_delta usage also carries input tokens.
                assert_eq!(a["usage"]["input_tokens"], json!(472));
            }
            _ => assert_eq!(a, b),
        }
    }
}

#[test]
fn other_blocks_and_deltas_pass_through() {
    let stream = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"c\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"redacted_thinking\",\"data\":\"EmwKAhgB\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"citations_delta\",\"citation\":{\"type\":\"char_location\",\"cited_text\":\"x\"}}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"stop_sequence\",\"stop_sequence\":\"END\"},\"usage\":{\"output_tokens\":7}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );
    let (events, _) = decode_every_split(AN, stream.as_bytes());
    assert!(events.contains(&StreamEvent::BlockStart {
        index: 0,
        block: BlockKind::Other(json!({"type": "redacted_thinking", "data": "EmwKAhgB"}))
    }));
    assert!(events.contains(&StreamEvent::OtherDelta {
        index: 1,
        delta: json!({"type": "citations_delta", "citation": {"type": "char_location", "cited_text": "x"}})
    }));
    let frames = sse_frames(&encode_stream(AN, &events, false));
    assert_eq!(
        frames[1].1["content_block"],
        json!({"type": "redacted_thinking", "data": "EmwKAhgB"})
    );
    assert_eq!(frames[4].1["delta"]["type"], json!("citations_delta"));
    assert_eq!(
        frames[6].1["delta"],
        json!({"stop_reason": "stop_sequence", "stop_sequence": "END"})
    );
    // An OpenAI client sees neither, but still gets a well-formed stream.
    let oa = sse_frames(&encode_stream(ApiFormat::OpenAi, &events, false));
    assert_eq!(oa.len(), 3);
    assert_eq!(oa[1].1["choices"][0]["finish_reason"], json!("stop"));
}

#[test]
fn encoder_finish_closes_open_blocks_and_error_is_terminal() {
    let mut enc = StreamEncoder::new(AN, "m", false);
    let mut out = BytesMut::new();
    enc.encode(
        &StreamEvent::MessageStart {
            id: "msg_x".into(),
            model: "u".into(),
            created: None,
            usage: Usage {
                input_tokens: 9,
                output_tokens: 0,
                cached_input_tokens: 4,
            },
        },
        &mut out,
    );
    enc.encode(
        &StreamEvent::BlockStart {
            index: 0,
            block: BlockKind::Text,
        },
        &mut out,
    );
    enc.encode(
        &StreamEvent::TextDelta {
            index: 0,
            text: "a".into(),
        },
        &mut out,
    );
    // A delta for a block that was never started gets one synthesized.
    enc.encode(
        &StreamEvent::TextDelta {
            index: 5,
            text: "b".into(),
        },
        &mut out,
    );
    enc.finish(&mut out);
    let frames = sse_frames(&out);
    let names: Vec<&str> = frames.iter().map(|(e, _)| e.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(
        frames[0].1["message"]["usage"],
        json!({"input_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4, "output_tokens": 0})
    );
    assert_eq!(frames[4].1["index"], json!(1));
    let len = out.len();
    enc.finish(&mut out);
    enc.error("api_error", "late", &mut out);
    assert_eq!(out.len(), len);
}
