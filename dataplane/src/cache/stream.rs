//! Streams and the cache: replaying a stored answer as canonical stream
//! events ([`replay_events`]), and assembling a streamed answer into a
//! storable [`ChatResponse`] ([`StreamAssembler`]).

use serde_json::{Map, Value};

use crate::formats::{
    ApiFormat, BlockKind, ChatResponse, ContentBlock, FinishReason, ResponseExtras, StreamEvent,
    ToolInput, Usage,
};

/// Largest text / JSON piece of one replayed delta event, in bytes (split on
/// character boundaries).
pub const REPLAY_CHUNK_BYTES: usize = 512;

/// Splits `s` into pieces of at most `max` bytes on char boundaries (a piece
/// is longer only if one character is).
fn chunks(s: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let mut end = rest.len().min(max.max(1));
        while end < rest.len() && !rest.is_char_boundary(end) {
            end -= 1;
            if end == 0 {
                // One character longer than `max`: take it whole.
                end = rest.char_indices().nth(1).map_or(rest.len(), |(i, _)| i);
                break;
            }
        }
        let (piece, tail) = rest.split_at(end);
        out.push(piece);
        rest = tail;
    }
    out
}

/// Turns a stored response into the canonical events a provider stream of the
/// same answer would have produced: `MessageStart`, for each content block a
/// `BlockStart`, its deltas (text in chunks of [`REPLAY_CHUNK_BYTES`], tool
/// arguments as JSON, thinking with its signature) and `BlockStop`, then
/// `MessageDelta` (finish reason, stop sequence), `Usage` and `MessageStop`.
///
/// Render them with [`crate::formats::StreamEncoder`] for either API. What a
/// live stream relays is replayed too: OpenAI `reasoning_content` (as a
/// thinking block), `logprobs` and extra choices (`n` > 1) for OpenAI
/// clients; Anthropic thinking, signatures and other raw blocks (e.g.
/// `redacted_thinking`) verbatim.
pub fn replay_events(resp: &ChatResponse) -> Vec<StreamEvent> {
    let mut out = Vec::with_capacity(8 + resp.content.len() * 4);
    out.push(StreamEvent::MessageStart {
        id: resp.id.clone(),
        model: resp.model.clone(),
        created: resp.created,
        usage: Usage {
            output_tokens: 0,
            ..resp.usage
        },
    });
    let openai = resp.source == ApiFormat::OpenAi;
    let mut index: u32 = 0;
    if openai {
        if let Some(Value::String(r)) = resp.extras.message.get("reasoning_content") {
            if !r.is_empty() {
                out.push(StreamEvent::BlockStart {
                    index,
                    block: BlockKind::Thinking,
                });
                for piece in chunks(r, REPLAY_CHUNK_BYTES) {
                    out.push(StreamEvent::ThinkingDelta {
                        index,
                        thinking: piece.to_owned(),
                    });
                }
                out.push(StreamEvent::BlockStop { index });
                index += 1;
            }
        }
    }
    // OpenAI logprobs of choice 0 ride on the next content chunk.
    let mut logprobs = if openai {
        resp.extras
            .choice
            .get("logprobs")
            .filter(|v| !v.is_null())
            .cloned()
    } else {
        None
    };
    for block in &resp.content {
        let before = out.len();
        if let Some(lp) = logprobs.take() {
            out.push(StreamEvent::Logprobs(lp));
        }
        let emitted = replay_block(block, index, &mut out);
        if emitted {
            index += 1;
        } else {
            // Nothing to show for this block: keep the logprobs for the next.
            if let Some(StreamEvent::Logprobs(lp)) = out.get(before).cloned() {
                logprobs = Some(lp);
            }
            out.truncate(before);
        }
    }
    if openai {
        for c in &resp.extras.other_choices {
            out.push(StreamEvent::OtherChoice(choice_as_chunk(c)));
        }
    }
    out.push(StreamEvent::MessageDelta {
        finish_reason: resp.finish_reason.clone(),
        stop_sequence: resp.stop_sequence.clone(),
    });
    out.push(StreamEvent::Usage(resp.usage));
    out.push(StreamEvent::MessageStop);
    out
}

/// Events of one content block; `false` if the block has nothing to replay.
fn replay_block(block: &ContentBlock, index: u32, out: &mut Vec<StreamEvent>) -> bool {
    match block {
        ContentBlock::Text { text, .. } | ContentBlock::Refusal { text } => {
            if text.is_empty() {
                return false;
            }
            let kind = if matches!(block, ContentBlock::Refusal { .. }) {
                BlockKind::Refusal
            } else {
                BlockKind::Text
            };
            out.push(StreamEvent::BlockStart { index, block: kind });
            for piece in chunks(text, REPLAY_CHUNK_BYTES) {
                out.push(StreamEvent::TextDelta {
                    index,
                    text: piece.to_owned(),
                });
            }
        }
        ContentBlock::ToolUse {
            id, name, input, ..
        } => {
            out.push(StreamEvent::BlockStart {
                index,
                block: BlockKind::ToolUse {
                    id: id.clone(),
                    name: name.clone(),
                },
            });
            let json = match input {
                ToolInput::Json(v) => v.to_string(),
                ToolInput::Invalid(s) => s.clone(),
            };
            for piece in chunks(&json, REPLAY_CHUNK_BYTES) {
                out.push(StreamEvent::ToolInputDelta {
                    index,
                    partial_json: piece.to_owned(),
                });
            }
        }
        ContentBlock::Raw {
            format: ApiFormat::Anthropic,
            value,
        } => {
            if value.get("type").and_then(Value::as_str) == Some("thinking") {
                out.push(StreamEvent::BlockStart {
                    index,
                    block: BlockKind::Thinking,
                });
                let thinking = value.get("thinking").and_then(Value::as_str).unwrap_or("");
                for piece in chunks(thinking, REPLAY_CHUNK_BYTES) {
                    out.push(StreamEvent::ThinkingDelta {
                        index,
                        thinking: piece.to_owned(),
                    });
                }
                if let Some(sig) = value
                    .get("signature")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                {
                    out.push(StreamEvent::SignatureDelta {
                        index,
                        signature: sig.to_owned(),
                    });
                }
            } else {
                out.push(StreamEvent::BlockStart {
                    index,
                    block: BlockKind::Other(value.clone()),
                });
            }
        }
        // OpenAI-only parts, images and tool results are not response
        // content a stream can carry.
        ContentBlock::Raw { .. } | ContentBlock::Image { .. } | ContentBlock::ToolResult { .. } => {
            return false
        }
    }
    out.push(StreamEvent::BlockStop { index });
    true
}

/// An OpenAI non-streaming choice (`message`) as a streaming chunk choice
/// (`delta`; tool calls numbered).
fn choice_as_chunk(c: &Value) -> Value {
    let mut delta = c
        .get("message")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(Value::Array(calls)) = delta.get_mut("tool_calls") {
        for (k, call) in calls.iter_mut().enumerate() {
            if let Value::Object(m) = call {
                m.entry("index").or_insert(Value::from(k));
            }
        }
    }
    let mut out = Map::new();
    out.insert(
        "index".to_owned(),
        c.get("index").cloned().unwrap_or(Value::Null),
    );
    out.insert("delta".to_owned(), Value::Object(delta));
    out.insert(
        "logprobs".to_owned(),
        c.get("logprobs").cloned().unwrap_or(Value::Null),
    );
    out.insert(
        "finish_reason".to_owned(),
        c.get("finish_reason").cloned().unwrap_or(Value::Null),
    );
    Value::Object(out)
}

/// A content block being assembled.
enum Partial {
    Text(String),
    Refusal(String),
    Tool {
        id: String,
        name: String,
        json: String,
    },
    Thinking {
        text: String,
        signature: String,
    },
    Other {
        value: Value,
        json: String,
    },
}

/// Why an assembled stream cannot be stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AssembleRefusal {
    /// The stream carried something the assembler does not reproduce
    /// faithfully (OpenAI `logprobs` or extra choices, unknown Anthropic
    /// deltas such as citations): not cached rather than cached wrong.
    Unsupported,
    /// Events that do not fit together (a delta for a block of another kind,
    /// a block index reused, tool JSON of a raw block that does not parse).
    Malformed,
    /// Larger than the entry cap: not worth keeping in memory.
    TooLarge,
}

impl AssembleRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            AssembleRefusal::Unsupported => "unsupported",
            AssembleRefusal::Malformed => "malformed",
            AssembleRefusal::TooLarge => "too_large",
        }
    }
}

/// Rebuilds a [`ChatResponse`] from the canonical events of a provider
/// stream (as [`crate::formats::StreamDecoder`] yields them), for storing a
/// streamed miss. [`StreamAssembler::finish`] returns a response only if the
/// stream completed (`MessageStop` seen) with a finish reason and nothing
/// was refused along the way: only complete, successful answers are stored.
///
/// Feed it only events the client was also sent; never feed events after an
/// upstream error.
pub struct StreamAssembler {
    source: ApiFormat,
    max_bytes: u64,
    bytes: u64,
    id: String,
    model: String,
    created: Option<u64>,
    usage: Usage,
    blocks: Vec<(u32, Partial)>,
    finish_reason: Option<FinishReason>,
    stop_sequence: Option<String>,
    stopped: bool,
    refused: Option<AssembleRefusal>,
}

impl StreamAssembler {
    /// `source`: the provider's API (the response's `source`); `max_bytes`:
    /// give up (and free the buffers) once the content exceeds it.
    pub fn new(source: ApiFormat, max_bytes: u64) -> Self {
        StreamAssembler {
            source,
            max_bytes,
            bytes: 0,
            id: String::new(),
            model: String::new(),
            created: None,
            usage: Usage::default(),
            blocks: Vec::new(),
            finish_reason: None,
            stop_sequence: None,
            stopped: false,
            refused: None,
        }
    }

    /// Whether `MessageStop` was seen.
    pub fn is_complete(&self) -> bool {
        self.stopped
    }

    /// Why the stream will not be stored, if already known.
    pub fn refusal(&self) -> Option<AssembleRefusal> {
        self.refused
    }

    fn refuse(&mut self, why: AssembleRefusal) {
        if self.refused.is_none() {
            self.refused = Some(why);
        }
        self.blocks = Vec::new();
    }

    fn grow(&mut self, n: usize) -> bool {
        self.bytes = self.bytes.saturating_add(n as u64);
        if self.bytes > self.max_bytes {
            self.refuse(AssembleRefusal::TooLarge);
            return false;
        }
        true
    }

    fn block_mut(&mut self, index: u32) -> Option<&mut Partial> {
        self.blocks
            .iter_mut()
            .find(|(i, _)| *i == index)
            .map(|(_, b)| b)
    }

    pub fn push_all<'a>(&mut self, events: impl IntoIterator<Item = &'a StreamEvent>) {
        for ev in events {
            self.push(ev);
        }
    }

    pub fn push(&mut self, ev: &StreamEvent) {
        if self.stopped || self.refused.is_some() {
            return;
        }
        match ev {
            StreamEvent::MessageStart {
                id,
                model,
                created,
                usage,
            } => {
                self.id.clone_from(id);
                self.model.clone_from(model);
                self.created = *created;
                self.usage = *usage;
            }
            StreamEvent::BlockStart { index, block } => {
                if self.blocks.iter().any(|(i, _)| i == index) {
                    return self.refuse(AssembleRefusal::Malformed);
                }
                let partial = match block {
                    BlockKind::Text => Partial::Text(String::new()),
                    BlockKind::Refusal => Partial::Refusal(String::new()),
                    BlockKind::ToolUse { id, name } => {
                        if !self.grow(id.len() + name.len()) {
                            return;
                        }
                        Partial::Tool {
                            id: id.clone(),
                            name: name.clone(),
                            json: String::new(),
                        }
                    }
                    BlockKind::Thinking => Partial::Thinking {
                        text: String::new(),
                        signature: String::new(),
                    },
                    BlockKind::Other(v) => Partial::Other {
                        value: v.clone(),
                        json: String::new(),
                    },
                };
                self.blocks.push((*index, partial));
            }
            StreamEvent::TextDelta { index, text } => {
                if !self.grow(text.len()) {
                    return;
                }
                if self.block_mut(*index).is_none() {
                    // Encoders open a text block for an unannounced index too.
                    self.blocks.push((*index, Partial::Text(String::new())));
                }
                match self.block_mut(*index) {
                    Some(Partial::Text(s) | Partial::Refusal(s)) => s.push_str(text),
                    _ => self.refuse(AssembleRefusal::Malformed),
                }
            }
            StreamEvent::ToolInputDelta {
                index,
                partial_json,
            } => {
                if !self.grow(partial_json.len()) {
                    return;
                }
                match self.block_mut(*index) {
                    Some(Partial::Tool { json, .. } | Partial::Other { json, .. }) => {
                        json.push_str(partial_json)
                    }
                    _ => self.refuse(AssembleRefusal::Malformed),
                }
            }
            StreamEvent::ThinkingDelta { index, thinking } => {
                if !self.grow(thinking.len()) {
                    return;
                }
                match self.block_mut(*index) {
                    Some(Partial::Thinking { text, .. }) => text.push_str(thinking),
                    _ => self.refuse(AssembleRefusal::Malformed),
                }
            }
            StreamEvent::SignatureDelta { index, signature } => {
                if !self.grow(signature.len()) {
                    return;
                }
                match self.block_mut(*index) {
                    Some(Partial::Thinking { signature: s, .. }) => s.push_str(signature),
                    _ => self.refuse(AssembleRefusal::Malformed),
                }
            }
            StreamEvent::OtherDelta { .. }
            | StreamEvent::Logprobs(_)
            | StreamEvent::OtherChoice(_) => self.refuse(AssembleRefusal::Unsupported),
            StreamEvent::BlockStop { .. } | StreamEvent::Ping => {}
            StreamEvent::MessageDelta {
                finish_reason,
                stop_sequence,
            } => {
                if finish_reason.is_some() {
                    self.finish_reason.clone_from(finish_reason);
                }
                if stop_sequence.is_some() {
                    self.stop_sequence.clone_from(stop_sequence);
                }
            }
            StreamEvent::Usage(u) => self.usage = *u,
            StreamEvent::MessageStop => self.stopped = true,
        }
    }

    /// Overrides the usage (e.g. with `StreamDecoder::usage()`, the decoder's
    /// authoritative total).
    pub fn set_usage(&mut self, usage: Usage) {
        self.usage = usage;
    }

    /// The assembled response if the stream completed with a finish reason
    /// and nothing was refused; `None` otherwise.
    pub fn finish(self) -> Option<ChatResponse> {
        self.into_response().ok()
    }

    /// Like [`StreamAssembler::finish`], saying why not. `Err(None)` = the
    /// stream did not complete (no `MessageStop` or no finish reason).
    pub fn into_response(self) -> Result<ChatResponse, Option<AssembleRefusal>> {
        if let Some(why) = self.refused {
            return Err(Some(why));
        }
        if !self.stopped {
            return Err(None);
        }
        let Some(finish_reason) = self.finish_reason else {
            return Err(None);
        };
        let mut extras = ResponseExtras::default();
        let mut reasoning = String::new();
        let mut content = Vec::with_capacity(self.blocks.len());
        for (_, block) in self.blocks {
            match block {
                Partial::Text(text) => {
                    if !text.is_empty() {
                        content.push(ContentBlock::text(text));
                    }
                }
                Partial::Refusal(text) => {
                    if !text.is_empty() {
                        content.push(ContentBlock::Refusal { text });
                    }
                }
                Partial::Tool { id, name, json } => {
                    let input = if json.trim().is_empty() {
                        ToolInput::Json(Value::Object(Map::new()))
                    } else {
                        match serde_json::from_str::<Value>(&json) {
                            Ok(v) => ToolInput::Json(v),
                            Err(_) => ToolInput::Invalid(json),
                        }
                    };
                    content.push(ContentBlock::ToolUse {
                        id,
                        name,
                        input,
                        extras: Map::new(),
                    });
                }
                Partial::Thinking { text, signature } => match self.source {
                    ApiFormat::Anthropic => {
                        let mut v = Map::new();
                        v.insert("type".to_owned(), Value::from("thinking"));
                        v.insert("thinking".to_owned(), Value::from(text));
                        v.insert("signature".to_owned(), Value::from(signature));
                        content.push(ContentBlock::Raw {
                            format: ApiFormat::Anthropic,
                            value: Value::Object(v),
                        });
                    }
                    // OpenAI-compatible reasoning lives in the message's
                    // `reasoning_content`, as in a non-streamed response.
                    ApiFormat::OpenAi => reasoning.push_str(&text),
                },
                Partial::Other { mut value, json } => {
                    if !json.trim().is_empty() {
                        let Ok(input) = serde_json::from_str::<Value>(&json) else {
                            return Err(Some(AssembleRefusal::Malformed));
                        };
                        match &mut value {
                            Value::Object(m) => {
                                m.insert("input".to_owned(), input);
                            }
                            _ => return Err(Some(AssembleRefusal::Malformed)),
                        }
                    }
                    content.push(ContentBlock::Raw {
                        format: self.source,
                        value,
                    });
                }
            }
        }
        if !reasoning.is_empty() {
            extras
                .message
                .insert("reasoning_content".to_owned(), Value::from(reasoning));
        }
        Ok(ChatResponse {
            id: self.id,
            model: self.model,
            usage: self.usage,
            finish_reason: Some(finish_reason),
            stop_sequence: self.stop_sequence,
            content,
            created: self.created,
            source: self.source,
            extras,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::formats::{decode_response, StreamDecoder, StreamEncoder};
    use bytes::BytesMut;
    use serde_json::json;

    fn resp(source: ApiFormat, content: Vec<ContentBlock>, fr: FinishReason) -> ChatResponse {
        ChatResponse {
            id: "resp-1".into(),
            model: "gpt-x-2025".into(),
            usage: Usage {
                input_tokens: 12,
                output_tokens: 34,
                cached_input_tokens: 2,
            },
            finish_reason: Some(fr),
            stop_sequence: None,
            content,
            created: Some(1_700_000_000),
            source,
            extras: ResponseExtras::default(),
        }
    }

    fn tool(id: &str, name: &str, input: Value) -> ContentBlock {
        ContentBlock::ToolUse {
            id: id.into(),
            name: name.into(),
            input: ToolInput::Json(input),
            extras: Map::new(),
        }
    }

    /// Encodes `events` for a client of `fmt`.
    fn encode(fmt: ApiFormat, events: &[StreamEvent], include_usage: bool) -> Vec<u8> {
        let mut enc = StreamEncoder::new(fmt, "public-model", include_usage);
        let mut buf = BytesMut::new();
        for ev in events {
            enc.encode(ev, &mut buf);
        }
        enc.finish(&mut buf);
        buf.to_vec()
    }

    /// Splits SSE bytes into (event name, data) pairs; panics on anything
    /// that is not well-formed SSE.
    fn sse_events(bytes: &[u8]) -> Vec<(Option<String>, String)> {
        let text = std::str::from_utf8(bytes).expect("utf-8");
        assert!(text.ends_with("\n\n"), "stream must end with a blank line");
        let mut out = Vec::new();
        for block in text.split("\n\n").filter(|b| !b.is_empty()) {
            let mut event = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    assert!(data.is_none(), "one data line per event");
                    data = Some(v.to_owned());
                } else {
                    panic!("unexpected SSE line {line:?}");
                }
            }
            out.push((event, data.expect("data line")));
        }
        out
    }

    /// Checks the client-visible well-formedness of an encoded stream.
    fn assert_well_formed(fmt: ApiFormat, bytes: &[u8], include_usage: bool) {
        let events = sse_events(bytes);
        match fmt {
            ApiFormat::OpenAi => {
                let (last_ev, last) = events.last().unwrap();
                assert!(last_ev.is_none());
                assert_eq!(last, "[DONE]");
                let chunks: Vec<Value> = events[..events.len() - 1]
                    .iter()
                    .map(|(_, d)| serde_json::from_str(d).expect("chunk JSON"))
                    .collect();
                let ids: std::collections::HashSet<&str> =
                    chunks.iter().map(|c| c["id"].as_str().unwrap()).collect();
                assert_eq!(ids.len(), 1, "one id across chunks");
                for c in &chunks {
                    assert_eq!(c["object"], "chat.completion.chunk");
                    assert_eq!(c["model"], "public-model");
                }
                assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
                let finishes = chunks
                    .iter()
                    .filter(|c| {
                        c["choices"]
                            .as_array()
                            .and_then(|a| a.first())
                            .is_some_and(|ch| ch["index"] == 0 && !ch["finish_reason"].is_null())
                    })
                    .count();
                assert_eq!(finishes, 1, "exactly one finish_reason for choice 0");
                let usage_chunks: Vec<&Value> =
                    chunks.iter().filter(|c| c["usage"].is_object()).collect();
                assert_eq!(usage_chunks.len(), usize::from(include_usage));
                if include_usage {
                    assert_eq!(usage_chunks[0]["choices"], json!([]));
                    assert!(std::ptr::eq(usage_chunks[0], chunks.last().unwrap()));
                }
            }
            ApiFormat::Anthropic => {
                let names: Vec<&str> = events
                    .iter()
                    .map(|(e, _)| e.as_deref().expect("event name"))
                    .collect();
                assert_eq!(names.first(), Some(&"message_start"));
                assert_eq!(names.last(), Some(&"message_stop"));
                assert_eq!(names[names.len() - 2], "message_delta");
                let mut open: Option<u64> = None;
                let mut next = 0u64;
                for (name, data) in &events {
                    let v: Value = serde_json::from_str(data).expect("event JSON");
                    assert_eq!(v["type"].as_str(), name.as_deref());
                    match name.as_deref().unwrap() {
                        "content_block_start" => {
                            assert!(open.is_none(), "blocks do not nest");
                            assert_eq!(v["index"].as_u64(), Some(next), "indexes in order");
                            open = Some(next);
                            next += 1;
                        }
                        "content_block_delta" => assert_eq!(v["index"].as_u64(), open),
                        "content_block_stop" => {
                            assert_eq!(v["index"].as_u64(), open);
                            open = None;
                        }
                        "message_delta" => {
                            assert!(open.is_none());
                            assert!(v["delta"]["stop_reason"].is_string());
                            assert!(v["usage"]["output_tokens"].is_u64());
                        }
                        "message_start" => assert_eq!(v["message"]["model"], "public-model"),
                        "message_stop" | "ping" => {}
                        other => panic!("unexpected event {other}"),
                    }
                }
            }
        }
    }

    /// Replays `r` for a client of `fmt`, checks the bytes, decodes them back
    /// and reassembles the answer.
    fn round_trip(fmt: ApiFormat, r: &ChatResponse) -> ChatResponse {
        let bytes = encode(fmt, &replay_events(r), true);
        assert_well_formed(fmt, &bytes, true);
        // Also without the OpenAI usage chunk.
        assert_well_formed(fmt, &encode(fmt, &replay_events(r), false), false);
        let mut dec = StreamDecoder::new(fmt);
        let mut asm = StreamAssembler::new(fmt, u64::MAX);
        // Feed in awkward pieces to exercise the decoder's buffering.
        for piece in bytes.chunks(7) {
            let evs = dec.feed(piece).expect("decodes");
            asm.push_all(&evs);
        }
        assert!(dec.is_complete());
        assert!(asm.is_complete());
        let usage = dec.usage();
        assert_eq!(usage.input_tokens, r.usage.input_tokens);
        assert_eq!(usage.output_tokens, r.usage.output_tokens);
        assert_eq!(usage.cached_input_tokens, r.usage.cached_input_tokens);
        asm.finish().expect("complete stream assembles")
    }

    fn tool_calls(r: &ChatResponse) -> Vec<(String, String, ToolInput)> {
        r.content
            .iter()
            .filter_map(|b| match b {
                ContentBlock::ToolUse {
                    id, name, input, ..
                } => Some((id.clone(), name.clone(), input.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn replay_event_sequence() {
        let r = resp(
            ApiFormat::OpenAi,
            vec![
                ContentBlock::text("Hello"),
                tool("call_1", "get_weather", json!({"city": "Paris"})),
            ],
            FinishReason::ToolCalls,
        );
        let evs = replay_events(&r);
        assert_eq!(
            evs,
            vec![
                StreamEvent::MessageStart {
                    id: "resp-1".into(),
                    model: "gpt-x-2025".into(),
                    created: Some(1_700_000_000),
                    usage: Usage {
                        input_tokens: 12,
                        output_tokens: 0,
                        cached_input_tokens: 2
                    },
                },
                StreamEvent::BlockStart {
                    index: 0,
                    block: BlockKind::Text
                },
                StreamEvent::TextDelta {
                    index: 0,
                    text: "Hello".into()
                },
                StreamEvent::BlockStop { index: 0 },
                StreamEvent::BlockStart {
                    index: 1,
                    block: BlockKind::ToolUse {
                        id: "call_1".into(),
                        name: "get_weather".into()
                    }
                },
                StreamEvent::ToolInputDelta {
                    index: 1,
                    partial_json: r#"{"city":"Paris"}"#.into()
                },
                StreamEvent::BlockStop { index: 1 },
                StreamEvent::MessageDelta {
                    finish_reason: Some(FinishReason::ToolCalls),
                    stop_sequence: None
                },
                StreamEvent::Usage(r.usage),
                StreamEvent::MessageStop,
            ]
        );
    }

    #[test]
    fn replay_text_round_trips_in_both_shapes() {
        for source in [ApiFormat::OpenAi, ApiFormat::Anthropic] {
            let r = resp(
                source,
                vec![ContentBlock::text("The answer is 4.")],
                FinishReason::Stop,
            );
            for fmt in [ApiFormat::OpenAi, ApiFormat::Anthropic] {
                let back = round_trip(fmt, &r);
                assert_eq!(back.text(), "The answer is 4.", "{source} → {fmt}");
                assert_eq!(back.finish_reason, Some(FinishReason::Stop));
                assert!(tool_calls(&back).is_empty());
            }
        }
    }

    #[test]
    fn replay_tool_calls_round_trip_in_both_shapes() {
        let r = resp(
            ApiFormat::Anthropic,
            vec![
                ContentBlock::text("Let me check."),
                tool(
                    "toolu_1",
                    "get_weather",
                    json!({"city": "Paris", "unit": "c"}),
                ),
                tool("toolu_2", "get_time", json!({})),
                tool(
                    "toolu_3",
                    "search",
                    json!({"q": "ü€😀".repeat(200), "nested": {"a": [1, 2, {"b": null}]}}),
                ),
            ],
            FinishReason::ToolCalls,
        );
        for fmt in [ApiFormat::OpenAi, ApiFormat::Anthropic] {
            let back = round_trip(fmt, &r);
            assert_eq!(back.text(), "Let me check.", "{fmt}");
            assert_eq!(tool_calls(&back), tool_calls(&r), "{fmt}");
            assert_eq!(back.finish_reason, Some(FinishReason::ToolCalls), "{fmt}");
        }
    }

    #[test]
    fn replay_long_multibyte_text_is_chunked_and_exact() {
        let text = "héllo wörld — 你好 🌍 ".repeat(100);
        let r = resp(
            ApiFormat::OpenAi,
            vec![ContentBlock::text(text.clone())],
            FinishReason::Length,
        );
        let deltas = replay_events(&r)
            .iter()
            .filter(|e| matches!(e, StreamEvent::TextDelta { .. }))
            .count();
        assert!(deltas > 1, "long text is sent in several deltas");
        for ev in replay_events(&r) {
            if let StreamEvent::TextDelta { text, .. } = ev {
                assert!(text.len() <= REPLAY_CHUNK_BYTES);
            }
        }
        for fmt in [ApiFormat::OpenAi, ApiFormat::Anthropic] {
            let back = round_trip(fmt, &r);
            assert_eq!(back.text(), text);
            assert_eq!(back.finish_reason, Some(FinishReason::Length));
        }
    }

    #[test]
    fn replay_finish_reasons_and_stop_sequence() {
        let mut r = resp(
            ApiFormat::Anthropic,
            vec![ContentBlock::text("1, 2, 3")],
            FinishReason::StopSequence,
        );
        r.stop_sequence = Some("4".into());
        let back = round_trip(ApiFormat::Anthropic, &r);
        assert_eq!(back.finish_reason, Some(FinishReason::StopSequence));
        assert_eq!(back.stop_sequence.as_deref(), Some("4"));
        let bytes = encode(ApiFormat::Anthropic, &replay_events(&r), false);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains(r#""stop_reason":"stop_sequence","stop_sequence":"4""#));
        // OpenAI clients see `stop`.
        let back = round_trip(ApiFormat::OpenAi, &r);
        assert_eq!(back.finish_reason, Some(FinishReason::Stop));
        for fr in [
            FinishReason::Length,
            FinishReason::ContentFilter,
            FinishReason::Stop,
        ] {
            let r = resp(ApiFormat::OpenAi, vec![ContentBlock::text("x")], fr.clone());
            for fmt in [ApiFormat::OpenAi, ApiFormat::Anthropic] {
                assert_eq!(round_trip(fmt, &r).finish_reason, Some(fr.clone()));
            }
        }
    }

    #[test]
    fn replay_refusal() {
        let r = resp(
            ApiFormat::OpenAi,
            vec![ContentBlock::Refusal {
                text: "I can't help with that.".into(),
            }],
            FinishReason::Stop,
        );
        let back = round_trip(ApiFormat::OpenAi, &r);
        assert_eq!(back.content, r.content, "OpenAI clients get a refusal");
        let back = round_trip(ApiFormat::Anthropic, &r);
        assert_eq!(back.text(), "I can't help with that.", "Anthropic: text");
    }

    #[test]
    fn replay_anthropic_thinking_and_raw_blocks() {
        let thinking = ContentBlock::Raw {
            format: ApiFormat::Anthropic,
            value: json!({"type": "thinking", "thinking": "2+2 is 4", "signature": "sig=="}),
        };
        let redacted = ContentBlock::Raw {
            format: ApiFormat::Anthropic,
            value: json!({"type": "redacted_thinking", "data": "abc"}),
        };
        let r = resp(
            ApiFormat::Anthropic,
            vec![thinking.clone(), redacted.clone(), ContentBlock::text("4")],
            FinishReason::Stop,
        );
        let back = round_trip(ApiFormat::Anthropic, &r);
        assert_eq!(
            back.content,
            vec![thinking, redacted, ContentBlock::text("4")]
        );
        // OpenAI clients: reasoning_content, no raw blocks.
        let bytes = encode(ApiFormat::OpenAi, &replay_events(&r), false);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains(r#""reasoning_content":"2+2 is 4""#));
        assert!(!text.contains("redacted"));
        let back = round_trip(ApiFormat::OpenAi, &r);
        assert_eq!(back.text(), "4");
        assert_eq!(
            back.extras.message.get("reasoning_content"),
            Some(&json!("2+2 is 4"))
        );
    }

    #[test]
    fn replay_openai_extras_logprobs_and_choices() {
        let mut r = resp(
            ApiFormat::OpenAi,
            vec![ContentBlock::text("A")],
            FinishReason::Stop,
        );
        r.extras
            .message
            .insert("reasoning_content".into(), json!("think"));
        r.extras.choice.insert(
            "logprobs".into(),
            json!({"content": [{"token": "A", "logprob": -0.1}]}),
        );
        r.extras.other_choices.push(json!({
            "index": 1, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ]}
        }));
        let bytes = encode(ApiFormat::OpenAi, &replay_events(&r), false);
        assert_well_formed(ApiFormat::OpenAi, &bytes, false);
        let chunks: Vec<Value> = sse_events(&bytes)
            .into_iter()
            .filter(|(_, d)| d != "[DONE]")
            .map(|(_, d)| serde_json::from_str(&d).unwrap())
            .collect();
        let text_chunk = chunks
            .iter()
            .find(|c| c["choices"][0]["delta"]["content"] == "A")
            .unwrap();
        assert_eq!(
            text_chunk["choices"][0]["logprobs"]["content"][0]["token"],
            "A"
        );
        let other = chunks
            .iter()
            .find(|c| c["choices"][0]["index"] == 1)
            .unwrap();
        assert_eq!(other["choices"][0]["delta"]["tool_calls"][0]["index"], 0);
        assert_eq!(other["choices"][0]["finish_reason"], "tool_calls");
        assert!(chunks
            .iter()
            .any(|c| c["choices"][0]["delta"]["reasoning_content"] == "think"));
        // Anthropic clients get only what their API can express.
        let bytes = encode(ApiFormat::Anthropic, &replay_events(&r), false);
        assert_well_formed(ApiFormat::Anthropic, &bytes, false);
    }

    #[test]
    fn replay_empty_content_is_well_formed() {
        let r = resp(ApiFormat::OpenAi, vec![], FinishReason::Stop);
        for fmt in [ApiFormat::OpenAi, ApiFormat::Anthropic] {
            let back = round_trip(fmt, &r);
            assert_eq!(back.text(), "");
        }
    }

    // --- assembler ---------------------------------------------------------

    fn assemble(fmt: ApiFormat, sse: &str) -> (StreamDecoder, StreamAssembler) {
        let mut dec = StreamDecoder::new(fmt);
        let mut asm = StreamAssembler::new(fmt, 1 << 20);
        let evs = dec.feed(sse.as_bytes()).unwrap();
        asm.push_all(&evs);
        (dec, asm)
    }

    const OPENAI_STREAM: &str = concat!(
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"gpt\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"gpt\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"gpt\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"gpt\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_a\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}}]},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"gpt\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"x\\\":\"}}]},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"gpt\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"1}\"}}]},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"gpt\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"gpt\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":4,\"total_tokens\":13}}\n\n",
        "data: [DONE]\n\n",
    );

    const OPENAI_BODY: &str = r#"{"id":"c1","object":"chat.completion","created":5,"model":"gpt",
        "choices":[{"index":0,"message":{"role":"assistant","content":"Hello",
        "tool_calls":[{"id":"call_a","type":"function","function":{"name":"f","arguments":"{\"x\":1}"}}]},
        "finish_reason":"tool_calls"}],
        "usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}"#;

    const ANTHROPIC_STREAM: &str = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"hmm\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"SIG\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\ndata: {\"type\":\"ping\"}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"lo\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"f\",\"input\":{}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"x\\\":\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"1}\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":4}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );

    const ANTHROPIC_BODY: &str = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude",
        "content":[{"type":"thinking","thinking":"hmm","signature":"SIG"},{"type":"text","text":"Hello"},
        {"type":"tool_use","id":"toolu_1","name":"f","input":{"x":1}}],
        "stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":9,"output_tokens":4}}"#;

    #[test]
    fn assembles_like_the_non_streamed_response() {
        for (fmt, sse, body) in [
            (ApiFormat::OpenAi, OPENAI_STREAM, OPENAI_BODY),
            (ApiFormat::Anthropic, ANTHROPIC_STREAM, ANTHROPIC_BODY),
        ] {
            let (dec, asm) = assemble(fmt, sse);
            assert!(dec.is_complete());
            let got = asm.finish().expect("complete");
            let want = decode_response(fmt, body.as_bytes()).unwrap();
            assert_eq!(got.id, want.id, "{fmt}");
            assert_eq!(got.model, want.model, "{fmt}");
            assert_eq!(got.content, want.content, "{fmt}");
            assert_eq!(got.finish_reason, want.finish_reason, "{fmt}");
            assert_eq!(got.usage, want.usage, "{fmt}");
            assert_eq!(got.source, fmt);
            // And the assembled answer replays to the same text for clients.
            for client in [ApiFormat::OpenAi, ApiFormat::Anthropic] {
                let back = round_trip(client, &got);
                assert_eq!(back.text(), "Hello");
                assert_eq!(back.tool_call_names(), vec!["f".to_owned()]);
            }
        }
    }

    #[test]
    fn refuses_incomplete_streams() {
        for (fmt, sse) in [
            (ApiFormat::OpenAi, OPENAI_STREAM),
            (ApiFormat::Anthropic, ANTHROPIC_STREAM),
        ] {
            // Cut at every event boundary before the end: never complete.
            let cuts: Vec<usize> = sse.match_indices("\n\n").map(|(i, _)| i + 2).collect();
            for &cut in &cuts[..cuts.len() - 1] {
                let (dec, asm) = assemble(fmt, &sse[..cut]);
                assert!(!dec.is_complete());
                assert!(!asm.is_complete());
                assert!(asm.finish().is_none(), "{fmt} cut at {cut}");
            }
            // Cut in the middle of an event too.
            let (_, asm) = assemble(fmt, &sse[..sse.len() - 5]);
            assert!(asm.finish().is_none());
            let (_, asm) = assemble(fmt, sse);
            assert!(asm.finish().is_some());
        }
    }

    #[test]
    fn refuses_streams_without_finish_reason_or_with_unsupported_events() {
        let mut asm = StreamAssembler::new(ApiFormat::OpenAi, 1 << 20);
        asm.push_all(&[
            StreamEvent::TextDelta {
                index: 0,
                text: "hi".into(),
            },
            StreamEvent::MessageStop,
        ]);
        assert!(asm.is_complete());
        assert_eq!(asm.into_response().unwrap_err(), None, "no finish reason");

        let done = [
            StreamEvent::MessageDelta {
                finish_reason: Some(FinishReason::Stop),
                stop_sequence: None,
            },
            StreamEvent::MessageStop,
        ];
        for bad in [
            StreamEvent::Logprobs(json!({"content": []})),
            StreamEvent::OtherChoice(json!({"index": 1})),
            StreamEvent::OtherDelta {
                index: 0,
                delta: json!({"type": "citations_delta"}),
            },
        ] {
            let mut asm = StreamAssembler::new(ApiFormat::OpenAi, 1 << 20);
            asm.push(&StreamEvent::TextDelta {
                index: 0,
                text: "hi".into(),
            });
            asm.push(&bad);
            asm.push_all(&done);
            assert_eq!(
                asm.into_response().unwrap_err(),
                Some(AssembleRefusal::Unsupported),
                "{bad:?}"
            );
        }
        // Malformed: arguments for a block that is not a tool.
        let mut asm = StreamAssembler::new(ApiFormat::OpenAi, 1 << 20);
        asm.push(&StreamEvent::ToolInputDelta {
            index: 3,
            partial_json: "{}".into(),
        });
        asm.push_all(&done);
        assert_eq!(
            asm.into_response().unwrap_err(),
            Some(AssembleRefusal::Malformed)
        );
        // Duplicate block index.
        let mut asm = StreamAssembler::new(ApiFormat::Anthropic, 1 << 20);
        let start = StreamEvent::BlockStart {
            index: 0,
            block: BlockKind::Text,
        };
        asm.push_all(&[start.clone(), start]);
        asm.push_all(&done);
        assert_eq!(asm.refusal(), Some(AssembleRefusal::Malformed));
        assert!(asm.finish().is_none());
    }

    #[test]
    fn refuses_streams_over_the_size_cap() {
        let mut asm = StreamAssembler::new(ApiFormat::OpenAi, 10);
        asm.push(&StreamEvent::TextDelta {
            index: 0,
            text: "0123456789".into(),
        });
        assert_eq!(asm.refusal(), None, "exactly the cap is fine");
        asm.push(&StreamEvent::TextDelta {
            index: 0,
            text: "x".into(),
        });
        assert_eq!(asm.refusal(), Some(AssembleRefusal::TooLarge));
        asm.push_all(&[
            StreamEvent::MessageDelta {
                finish_reason: Some(FinishReason::Stop),
                stop_sequence: None,
            },
            StreamEvent::MessageStop,
        ]);
        assert_eq!(
            asm.into_response().unwrap_err(),
            Some(AssembleRefusal::TooLarge)
        );
    }

    #[test]
    fn invalid_tool_json_is_kept_verbatim_and_usage_can_be_overridden() {
        let mut asm = StreamAssembler::new(ApiFormat::OpenAi, 1 << 20);
        asm.push_all(&[
            StreamEvent::BlockStart {
                index: 0,
                block: BlockKind::ToolUse {
                    id: "c".into(),
                    name: "f".into(),
                },
            },
            StreamEvent::ToolInputDelta {
                index: 0,
                partial_json: "{\"a\":".into(),
            },
            StreamEvent::MessageDelta {
                finish_reason: Some(FinishReason::Length),
                stop_sequence: None,
            },
            StreamEvent::MessageStop,
            // Ignored after the end.
            StreamEvent::TextDelta {
                index: 9,
                text: "late".into(),
            },
        ]);
        let u = Usage {
            input_tokens: 1,
            output_tokens: 2,
            cached_input_tokens: 0,
        };
        asm.set_usage(u);
        let r = asm.finish().unwrap();
        assert_eq!(r.usage, u);
        assert_eq!(
            tool_calls(&r),
            vec![("c".into(), "f".into(), ToolInput::Invalid("{\"a\":".into()))]
        );
    }

    #[test]
    fn chunking_respects_char_boundaries() {
        assert!(chunks("", 4).is_empty());
        assert_eq!(chunks("abcdef", 4), vec!["abcd", "ef"]);
        assert_eq!(chunks("ééé", 3), vec!["é", "é", "é"]);
        assert_eq!(chunks("😀a", 2), vec!["😀", "a"]);
        let s = "a😀b€c".repeat(50);
        for max in 1..10 {
            let parts = chunks(&s, max);
            assert_eq!(parts.concat(), s);
        }
    }
}
