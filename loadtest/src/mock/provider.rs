//! Request parsing and response generation for the OpenAI and Anthropic shapes.
//!
//! A [`Plan`] is everything needed to produce one answer; it can render the
//! whole non-streaming JSON body or any single SSE event by index, so a
//! stream is generated lazily (no per-stream buffering of the full answer).

use std::fmt::Write as _;
use std::ops::RangeInclusive;

use bytes::{Bytes, BytesMut};
use serde_json::{json, Value};

/// Word pieces streamed as content. One piece = one output token.
const WORDS: [&str; 16] = [
    "mock", "token", "reply", "stream", "switch", "yard", "gateway", "signal", "route", "relay",
    "packet", "answer", "model", "output", "chunk", "delta",
];
const SPACED: [&str; 16] = [
    " mock", " token", " reply", " stream", " switch", " yard", " gateway", " signal", " route",
    " relay", " packet", " answer", " model", " output", " chunk", " delta",
];

/// Tool-call arguments, split into streamed pieces; joined: `{"query":"mock"}`.
const TOOL_ARG_PIECES: [&str; 3] = [r#"{"query":"#, r#""mock""#, "}"];
/// The same pieces, escaped for embedding inside a JSON string.
const TOOL_ARG_PIECES_ESCAPED: [&str; 3] = [r#"{\"query\":"#, r#"\"mock\""#, "}"];
/// The joined tool-call arguments.
pub(crate) const TOOL_ARGS: &str = r#"{"query":"mock"}"#;

/// Text piece `i` of an answer (the first has no leading space).
pub(crate) fn piece(i: u32) -> &'static str {
    let idx = i as usize % WORDS.len();
    if i == 0 {
        WORDS[idx]
    } else {
        SPACED[idx]
    }
}

/// The concatenation of the first `n` pieces.
pub(crate) fn text_of(n: u32) -> String {
    let mut s = String::with_capacity(n as usize * 7);
    for i in 0..n {
        s.push_str(piece(i));
    }
    s
}

/// Which provider API a request speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    OpenAi,
    Anthropic,
}

/// What the answer contains.
#[derive(Debug)]
pub(crate) enum Output {
    Text { tokens: u32, capped: bool },
    Tool { call_id: String, name_json: String },
}

/// Everything needed to render one answer.
#[derive(Debug)]
pub(crate) struct Plan {
    pub api: Api,
    pub stream: bool,
    pub include_usage: bool,
    pub id: String,
    pub model_json: String,
    pub created: u64,
    pub prompt_tokens: u64,
    pub output: Output,
}

/// Per-request inputs that don't come from the body.
pub(crate) struct PlanInputs<'a> {
    pub seq: u64,
    pub seed: u64,
    pub output_range: &'a RangeInclusive<u32>,
    pub output_override: Option<u32>,
    pub created: u64,
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"mock\"".to_string())
}

/// SplitMix64: a tiny, good-enough deterministic mixer.
pub(crate) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn draw(range: &RangeInclusive<u32>, seed: u64, seq: u64) -> u32 {
    let (lo, hi) = (*range.start(), *range.end());
    if hi <= lo {
        return lo;
    }
    let span = u64::from(hi - lo) + 1;
    let r = splitmix64(seed ^ splitmix64(seq));
    lo + (r % span) as u32
}

/// Characters of message text in a `content` value (string, or array of
/// parts with `text`, or nested `content` as in Anthropic `tool_result`).
fn text_chars(v: &Value) -> usize {
    match v {
        Value::String(s) => s.chars().count(),
        Value::Array(items) => items.iter().map(text_chars).sum(),
        Value::Object(o) => {
            o.get("text").map_or(0, text_chars) + o.get("content").map_or(0, text_chars)
        }
        _ => 0,
    }
}

/// `ceil(chars / 4)` over all message text (plus Anthropic's `system`), at least 1.
pub(crate) fn estimate_prompt_tokens(req: &Value) -> u64 {
    let mut chars = 0usize;
    if let Some(msgs) = req.get("messages").and_then(Value::as_array) {
        for m in msgs {
            chars += m.get("content").map_or(0, text_chars);
        }
    }
    if let Some(system) = req.get("system") {
        chars += text_chars(system);
    }
    (chars as u64).div_ceil(4).max(1)
}

/// Whether to answer with a tool call, and the first tool's name.
fn tool_to_call(api: Api, req: &Value) -> Option<String> {
    let tools = req.get("tools")?.as_array()?;
    let first = tools.first()?;
    let choice_none = match req.get("tool_choice") {
        Some(Value::String(s)) => s == "none",
        Some(Value::Object(o)) => o.get("type").and_then(Value::as_str) == Some("none"),
        _ => false,
    };
    if choice_none {
        return None;
    }
    let last = req.get("messages")?.as_array()?.last()?;
    if last.get("role").and_then(Value::as_str) != Some("user") {
        return None;
    }
    if api == Api::Anthropic {
        let has_tool_result = last
            .get("content")
            .and_then(Value::as_array)
            .is_some_and(|parts| {
                parts
                    .iter()
                    .any(|p| p.get("type").and_then(Value::as_str) == Some("tool_result"))
            });
        if has_tool_result {
            return None;
        }
    }
    let name = first
        .get("function")
        .and_then(|f| f.get("name"))
        .or_else(|| first.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("tool");
    Some(name.to_string())
}

/// Validate a model request and build its plan. `Err` is a message for a
/// 400 `invalid_request_error`.
pub(crate) fn plan(api: Api, body: &[u8], inputs: PlanInputs<'_>) -> Result<Plan, String> {
    let req: Value =
        serde_json::from_slice(body).map_err(|e| format!("request body is not valid JSON: {e}"))?;
    if !req.is_object() {
        return Err("request body must be a JSON object".into());
    }
    let model = match req.get("model") {
        Some(Value::String(m)) => m.as_str(),
        Some(_) => return Err("model: must be a string".into()),
        None => return Err("model: Field required".into()),
    };
    if !req.get("messages").is_some_and(Value::is_array) {
        return Err("messages: Field required (an array)".into());
    }
    let cap = match api {
        Api::OpenAi => match req
            .get("max_completion_tokens")
            .filter(|v| !v.is_null())
            .or_else(|| req.get("max_tokens").filter(|v| !v.is_null()))
        {
            None => None,
            Some(v) => Some(
                v.as_u64()
                    .ok_or("max_tokens: must be a non-negative integer")?,
            ),
        },
        Api::Anthropic => match req.get("max_tokens") {
            None | Some(Value::Null) => return Err("max_tokens: Field required".into()),
            Some(v) => Some(
                v.as_u64()
                    .ok_or("max_tokens: must be a non-negative integer")?,
            ),
        },
    };
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = req
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let seq = inputs.seq;
    let output = match tool_to_call(api, &req) {
        Some(name) => Output::Tool {
            call_id: match api {
                Api::OpenAi => format!("call_mock{seq:016x}"),
                Api::Anthropic => format!("toolu_mock{seq:016x}"),
            },
            name_json: json_str(&name),
        },
        None => {
            let want = inputs
                .output_override
                .unwrap_or_else(|| draw(inputs.output_range, inputs.seed, seq));
            let cap = cap.map_or(u32::MAX, |c| u32::try_from(c).unwrap_or(u32::MAX));
            Output::Text {
                tokens: want.min(cap),
                capped: want > cap,
            }
        }
    };
    Ok(Plan {
        api,
        stream,
        include_usage,
        id: match api {
            Api::OpenAi => format!("chatcmpl-mock{seq:016x}"),
            Api::Anthropic => format!("msg_mock{seq:016x}"),
        },
        model_json: json_str(model),
        created: inputs.created,
        prompt_tokens: estimate_prompt_tokens(&req),
        output,
    })
}

impl Plan {
    /// Output tokens: text pieces, or tool-argument pieces.
    pub(crate) fn output_tokens(&self) -> u32 {
        match &self.output {
            Output::Text { tokens, .. } => *tokens,
            Output::Tool { .. } => TOOL_ARG_PIECES.len() as u32,
        }
    }

    fn pre(&self) -> usize {
        match self.api {
            Api::OpenAi => 1,
            Api::Anthropic => 3,
        }
    }

    fn post(&self) -> usize {
        match self.api {
            Api::OpenAi => 2 + usize::from(self.include_usage),
            Api::Anthropic => 3,
        }
    }

    /// Number of SSE events in the full stream (the last one terminates it).
    pub(crate) fn total_events(&self) -> usize {
        self.pre() + self.output_tokens() as usize + self.post()
    }

    /// If event `k` carries output token `t`, `Some(t)`.
    pub(crate) fn token_of(&self, k: usize) -> Option<u32> {
        let pre = self.pre();
        let n = self.output_tokens() as usize;
        (k >= pre && k < pre + n).then(|| (k - pre) as u32)
    }

    fn finish_reason(&self) -> &'static str {
        match (&self.output, self.api) {
            (Output::Tool { .. }, Api::OpenAi) => "tool_calls",
            (Output::Tool { .. }, Api::Anthropic) => "tool_use",
            (Output::Text { capped: true, .. }, Api::OpenAi) => "length",
            (Output::Text { capped: true, .. }, Api::Anthropic) => "max_tokens",
            (Output::Text { .. }, Api::OpenAi) => "stop",
            (Output::Text { .. }, Api::Anthropic) => "end_turn",
        }
    }

    /// The complete non-streaming response body.
    pub(crate) fn full_body(&self) -> Bytes {
        let n = self.output_tokens();
        let model: Value = serde_json::from_str(&self.model_json).unwrap_or(Value::Null);
        let v = match self.api {
            Api::OpenAi => {
                let message = match &self.output {
                    Output::Text { tokens, .. } => json!({
                        "role": "assistant",
                        "content": text_of(*tokens),
                        "refusal": null,
                    }),
                    Output::Tool { call_id, name_json } => json!({
                        "role": "assistant",
                        "content": null,
                        "tool_calls": [{
                            "id": call_id,
                            "type": "function",
                            "function": {
                                "name": serde_json::from_str::<Value>(name_json).unwrap_or(Value::Null),
                                "arguments": TOOL_ARGS,
                            },
                        }],
                        "refusal": null,
                    }),
                };
                json!({
                    "id": self.id,
                    "object": "chat.completion",
                    "created": self.created,
                    "model": model,
                    "system_fingerprint": "fp_mock",
                    "choices": [{
                        "index": 0,
                        "message": message,
                        "logprobs": null,
                        "finish_reason": self.finish_reason(),
                    }],
                    "usage": {
                        "prompt_tokens": self.prompt_tokens,
                        "completion_tokens": n,
                        "total_tokens": self.prompt_tokens + u64::from(n),
                    },
                })
            }
            Api::Anthropic => {
                let content = match &self.output {
                    Output::Text { tokens, .. } => {
                        json!([{"type": "text", "text": text_of(*tokens)}])
                    }
                    Output::Tool { call_id, name_json } => json!([{
                        "type": "tool_use",
                        "id": call_id,
                        "name": serde_json::from_str::<Value>(name_json).unwrap_or(Value::Null),
                        "input": {"query": "mock"},
                    }]),
                };
                json!({
                    "id": self.id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": content,
                    "stop_reason": self.finish_reason(),
                    "stop_sequence": null,
                    "usage": {"input_tokens": self.prompt_tokens, "output_tokens": n},
                })
            }
        };
        Bytes::from(v.to_string())
    }

    /// A truncated, invalid JSON body (the `malformed` fault).
    pub(crate) fn malformed_body(&self) -> Bytes {
        let kind = match self.api {
            Api::OpenAi => "chat.completion",
            Api::Anthropic => "message",
        };
        Bytes::from(format!(
            "{{\"id\":\"{}\",\"object\":\"{kind}\",\"choices\":[{{\"index\":0,\"message\":{{\"content\":\"mock",
            self.id
        ))
    }

    /// An SSE event whose data is not JSON (the streaming `malformed` fault).
    pub(crate) fn write_malformed_event(&self, buf: &mut BytesMut) {
        match self.api {
            Api::OpenAi => {
                let _ = write!(
                    buf,
                    "data: {{\"id\":\"{}\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"delta\":{{\"content\":\"mo\n\n",
                    self.id
                );
            }
            Api::Anthropic => {
                let _ = write!(
                    buf,
                    "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_de\n\n"
                );
            }
        }
    }

    fn openai_chunk(&self, buf: &mut BytesMut, delta: &str, finish: Option<&str>) {
        let finish = finish.map_or_else(|| "null".to_string(), |f| format!("\"{f}\""));
        let usage = if self.include_usage {
            ",\"usage\":null"
        } else {
            ""
        };
        let _ = write!(
            buf,
            "data: {{\"id\":\"{}\",\"object\":\"chat.completion.chunk\",\"created\":{},\"model\":{},\"system_fingerprint\":\"fp_mock\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}]{usage}}}\n\n",
            self.id, self.created, self.model_json
        );
    }

    fn anthropic_event(buf: &mut BytesMut, event: &str, data: std::fmt::Arguments<'_>) {
        let _ = write!(buf, "event: {event}\ndata: ");
        let _ = buf.write_fmt(data);
        buf.extend_from_slice(b"\n\n");
    }

    /// Append SSE event `k` (0-based, `k < total_events()`) to `buf`.
    pub(crate) fn write_event(&self, k: usize, buf: &mut BytesMut) {
        let n = self.output_tokens() as usize;
        let pre = self.pre();
        match self.api {
            Api::OpenAi => {
                if k == 0 {
                    match &self.output {
                        Output::Text { .. } => self.openai_chunk(
                            buf,
                            r#"{"role":"assistant","content":"","refusal":null}"#,
                            None,
                        ),
                        Output::Tool { call_id, name_json } => self.openai_chunk(
                            buf,
                            &format!(
                                "{{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{{\"index\":0,\"id\":\"{call_id}\",\"type\":\"function\",\"function\":{{\"name\":{name_json},\"arguments\":\"\"}}}}],\"refusal\":null}}"
                            ),
                            None,
                        ),
                    }
                } else if let Some(t) = self.token_of(k) {
                    match &self.output {
                        Output::Text { .. } => self.openai_chunk(
                            buf,
                            &format!("{{\"content\":\"{}\"}}", piece(t)),
                            None,
                        ),
                        Output::Tool { .. } => self.openai_chunk(
                            buf,
                            &format!(
                                "{{\"tool_calls\":[{{\"index\":0,\"function\":{{\"arguments\":\"{}\"}}}}]}}",
                                TOOL_ARG_PIECES_ESCAPED[t as usize % TOOL_ARG_PIECES_ESCAPED.len()]
                            ),
                            None,
                        ),
                    }
                } else if k == pre + n {
                    self.openai_chunk(buf, "{}", Some(self.finish_reason()));
                } else if self.include_usage && k == pre + n + 1 {
                    let _ = write!(
                        buf,
                        "data: {{\"id\":\"{}\",\"object\":\"chat.completion.chunk\",\"created\":{},\"model\":{},\"system_fingerprint\":\"fp_mock\",\"choices\":[],\"usage\":{{\"prompt_tokens\":{},\"completion_tokens\":{},\"total_tokens\":{}}}}}\n\n",
                        self.id,
                        self.created,
                        self.model_json,
                        self.prompt_tokens,
                        n,
                        self.prompt_tokens + n as u64
                    );
                } else {
                    buf.extend_from_slice(b"data: [DONE]\n\n");
                }
            }
            Api::Anthropic => match k {
                0 => Self::anthropic_event(
                    buf,
                    "message_start",
                    format_args!(
                        "{{\"type\":\"message_start\",\"message\":{{\"id\":\"{}\",\"type\":\"message\",\"role\":\"assistant\",\"model\":{},\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{{\"input_tokens\":{},\"output_tokens\":1}}}}}}",
                        self.id, self.model_json, self.prompt_tokens
                    ),
                ),
                1 => match &self.output {
                    Output::Text { .. } => Self::anthropic_event(
                        buf,
                        "content_block_start",
                        format_args!(
                            "{{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{{\"type\":\"text\",\"text\":\"\"}}}}"
                        ),
                    ),
                    Output::Tool { call_id, name_json } => Self::anthropic_event(
                        buf,
                        "content_block_start",
                        format_args!(
                            "{{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{{\"type\":\"tool_use\",\"id\":\"{call_id}\",\"name\":{name_json},\"input\":{{}}}}}}"
                        ),
                    ),
                },
                2 => Self::anthropic_event(buf, "ping", format_args!("{{\"type\":\"ping\"}}")),
                _ => {
                    if let Some(t) = self.token_of(k) {
                        match &self.output {
                            Output::Text { .. } => Self::anthropic_event(
                                buf,
                                "content_block_delta",
                                format_args!(
                                    "{{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{}\"}}}}",
                                    piece(t)
                                ),
                            ),
                            Output::Tool { .. } => Self::anthropic_event(
                                buf,
                                "content_block_delta",
                                format_args!(
                                    "{{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}}}",
                                    TOOL_ARG_PIECES_ESCAPED[t as usize % TOOL_ARG_PIECES_ESCAPED.len()]
                                ),
                            ),
                        }
                    } else if k == pre + n {
                        Self::anthropic_event(
                            buf,
                            "content_block_stop",
                            format_args!("{{\"type\":\"content_block_stop\",\"index\":0}}"),
                        );
                    } else if k == pre + n + 1 {
                        Self::anthropic_event(
                            buf,
                            "message_delta",
                            format_args!(
                                "{{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"{}\",\"stop_sequence\":null}},\"usage\":{{\"output_tokens\":{n}}}}}",
                                self.finish_reason()
                            ),
                        );
                    } else {
                        Self::anthropic_event(
                            buf,
                            "message_stop",
                            format_args!("{{\"type\":\"message_stop\"}}"),
                        );
                    }
                }
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn inputs(range: &RangeInclusive<u32>) -> PlanInputs<'_> {
        PlanInputs {
            seq: 7,
            seed: 1,
            output_range: range,
            output_override: None,
            created: 1,
        }
    }

    #[test]
    fn every_event_is_valid_json_and_pieces_join() {
        let joined: String = TOOL_ARG_PIECES.concat();
        assert_eq!(joined, TOOL_ARGS);
        for (i, p) in TOOL_ARG_PIECES_ESCAPED.iter().enumerate() {
            let s: String = serde_json::from_str(&format!("\"{p}\"")).unwrap();
            assert_eq!(s, TOOL_ARG_PIECES[i]);
        }
        let range = 5..=5;
        for (api, body) in [
            (
                Api::OpenAi,
                r#"{"model":"m\"x","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#,
            ),
            (
                Api::OpenAi,
                r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}"#,
            ),
            (
                Api::Anthropic,
                r#"{"model":"m","max_tokens":3,"messages":[{"role":"user","content":"hi"}]}"#,
            ),
            (
                Api::Anthropic,
                r#"{"model":"m","max_tokens":30,"messages":[{"role":"user","content":"hi"}],"tools":[{"name":"f","input_schema":{}}]}"#,
            ),
        ] {
            let plan = plan(api, body.as_bytes(), inputs(&range)).unwrap();
            let mut buf = BytesMut::new();
            for k in 0..plan.total_events() {
                buf.clear();
                plan.write_event(k, &mut buf);
                let text = std::str::from_utf8(&buf).unwrap();
                assert!(text.ends_with("\n\n"), "{text}");
                let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
                if data != "[DONE]" {
                    serde_json::from_str::<Value>(data).unwrap();
                }
            }
            serde_json::from_slice::<Value>(&plan.full_body()).unwrap();
            assert!(serde_json::from_slice::<Value>(&plan.malformed_body()).is_err());
        }
    }

    #[test]
    fn prompt_estimate_and_caps() {
        let req = json!({"system": "abcd", "messages": [
            {"role": "user", "content": "abcde"},
            {"role": "user", "content": [{"type": "text", "text": "xyz"}, {"type": "tool_result", "content": "12"}]},
        ]});
        assert_eq!(estimate_prompt_tokens(&req), 4); // 14 chars -> ceil(14/4)
        assert_eq!(estimate_prompt_tokens(&json!({"messages": []})), 1);
        let range = 10..=10;
        let p = plan(
            Api::OpenAi,
            br#"{"model":"m","messages":[],"max_completion_tokens":4}"#,
            inputs(&range),
        )
        .unwrap();
        assert!(matches!(
            p.output,
            Output::Text {
                tokens: 4,
                capped: true
            }
        ));
        assert!(plan(
            Api::Anthropic,
            br#"{"model":"m","messages":[]}"#,
            inputs(&range)
        )
        .is_err());
        let wide = 1..=1000;
        let a = plan(
            Api::OpenAi,
            br#"{"model":"m","messages":[]}"#,
            inputs(&wide),
        )
        .unwrap();
        let b = plan(
            Api::OpenAi,
            br#"{"model":"m","messages":[]}"#,
            inputs(&wide),
        )
        .unwrap();
        assert_eq!(a.output_tokens(), b.output_tokens());
    }
}
