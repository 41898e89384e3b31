//! Pure translation layer between the OpenAI Chat Completions API and the
//! Anthropic Messages API.
//!
//! Everything here is synchronous and side-effect free: bytes in, bytes or
//! values out. Client requests are parsed into a canonical IR
//! ([`ChatRequest`]), which can be re-encoded for an upstream speaking either
//! API; provider responses are parsed into [`ChatResponse`] and re-encoded for
//! the client. Streams go through [`StreamDecoder`] (provider SSE → canonical
//! [`StreamEvent`]s) and [`StreamEncoder`] (canonical events → client SSE).
//!
//! # Same-format passthrough and cross-format translation
//! Fields the IR does not model are kept verbatim in `extras` maps (request,
//! message, content block, tool) and re-emitted unchanged when the upstream
//! speaks the client's format. When translating to the other API, any such
//! field that the other API cannot express makes [`encode_request`] fail with a
//! [`FormatError`] whose `param` names the field. A few values are *neutral*
//! (they do not change the answer, or equal the other API's default) and are
//! dropped cross-format instead of failing:
//! * any `null` value;
//! * OpenAI: `n: 1`, `presence_penalty: 0`, `frequency_penalty: 0`,
//!   `logprobs: false`, `top_logprobs: 0`, empty `logit_bias`/`metadata`,
//!   `response_format: {"type":"text"}`, `service_tier: "auto"|"default"`,
//!   `store: false`, `modalities: ["text"]`, `stream_options` transport keys,
//!   `prompt_cache_key` (a caching hint), `parallel_tool_calls: true`,
//!   `strict: false` on tools, image `detail: "auto"`;
//! * Anthropic: `thinking: {"type":"disabled"}`, `service_tier: "auto"`,
//!   `cache_control` anywhere (OpenAI caches prompt prefixes automatically),
//!   tool `type: "custom"`, and `thinking` / `redacted_thinking` blocks in
//!   assistant history (Anthropic itself ignores thinking from earlier turns).
//!
//! Other documented deviations:
//! * OpenAI `system`/`developer` messages that appear after the first
//!   conversation message are hoisted into Anthropic's top-level `system`
//!   (in order).
//! * Cross-format, `max_tokens` is sent to OpenAI upstreams as
//!   `max_completion_tokens` (required by OpenAI reasoning models); same-format
//!   the client's field name is kept.
//! * OpenAI tool-call `arguments` that are not valid JSON are kept verbatim for
//!   OpenAI upstreams ([`ToolInput::Invalid`]) and rejected when targeting
//!   Anthropic (whose `input` must be an object).
//! * Response rendering ([`encode_response`], [`StreamEncoder`]) cannot fail:
//!   content the client's API cannot express (e.g. Anthropic `thinking`
//!   signatures or server-tool blocks for an OpenAI client, OpenAI
//!   `logprobs` for an Anthropic client) is omitted. Thinking text is sent to
//!   OpenAI clients as the de-facto `reasoning_content` field.
//! * Anthropic `cache_creation_input_tokens` counts as input; when rendered for
//!   an Anthropic client from a non-Anthropic source it is reported as 0 and
//!   folded into `input_tokens`.

mod anthropic;
mod openai;
mod sse;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Unmodeled JSON fields kept verbatim for same-format passthrough.
pub type Extras = Map<String, Value>;

/// The two wire APIs the edge speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ApiFormat {
    #[serde(rename = "openai")]
    OpenAi,
    #[serde(rename = "anthropic")]
    Anthropic,
}

impl ApiFormat {
    /// `"openai"` or `"anthropic"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiFormat::OpenAi => "openai",
            ApiFormat::Anthropic => "anthropic",
        }
    }
}

impl std::fmt::Display for ApiFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request or response that cannot be parsed or translated. Maps to HTTP 400
/// for client input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct FormatError {
    pub message: String,
    /// JSON path of the bad field, e.g. `messages[2].content[0].type` or `top_k`.
    pub param: Option<String>,
}

impl FormatError {
    /// An error about the field at `param`.
    pub fn new(message: impl Into<String>, param: impl Into<String>) -> Self {
        FormatError {
            message: message.into(),
            param: Some(param.into()),
        }
    }

    /// An error not attributable to one field.
    pub fn general(message: impl Into<String>) -> Self {
        FormatError {
            message: message.into(),
            param: None,
        }
    }

    /// "`{param}` cannot be translated to {target}".
    pub fn untranslatable(param: impl Into<String>, target: ApiFormat) -> Self {
        let param = param.into();
        FormatError {
            message: format!("`{param}` cannot be translated to {}", target.as_str()),
            param: Some(param),
        }
    }

    fn required(param: impl Into<String>) -> Self {
        let param = param.into();
        FormatError {
            message: format!("`{param}` is required"),
            param: Some(param),
        }
    }

    fn invalid(param: impl Into<String>, expected: &str) -> Self {
        let param = param.into();
        FormatError {
            message: format!("`{param}` must be {expected}"),
            param: Some(param),
        }
    }
}

// ---------------------------------------------------------------------------
// Canonical request IR
// ---------------------------------------------------------------------------

/// Message author role. `System`/`Developer` come from OpenAI system-ish
/// messages or the Anthropic top-level `system`; `Tool` is an OpenAI tool
/// message (a single [`ContentBlock::ToolResult`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }

    fn is_system(self) -> bool {
        matches!(self, Role::System | Role::Developer)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: Vec<ContentBlock>,
    /// Unmodeled message fields (OpenAI `name`, `refusal`, `audio`, ...).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extras: Extras,
}

/// A piece of message content in either direction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    Text {
        text: String,
        /// e.g. Anthropic `cache_control`, `citations`.
        #[serde(default, skip_serializing_if = "Map::is_empty")]
        extras: Extras,
    },
    /// OpenAI refusal text (content part `refusal`). Rendered as text for Anthropic.
    Refusal { text: String },
    Image {
        source: ImageSource,
        /// e.g. OpenAI `detail`, Anthropic `cache_control`.
        #[serde(default, skip_serializing_if = "Map::is_empty")]
        extras: Extras,
    },
    ToolUse {
        id: String,
        name: String,
        input: ToolInput,
        #[serde(default, skip_serializing_if = "Map::is_empty")]
        extras: Extras,
    },
    ToolResult {
        tool_use_id: String,
        /// Text (and for Anthropic, image) blocks.
        content: Vec<ContentBlock>,
        #[serde(default)]
        is_error: bool,
        #[serde(default, skip_serializing_if = "Map::is_empty")]
        extras: Extras,
    },
    /// A known block/part type the IR does not model (Anthropic `thinking`,
    /// `redacted_thinking`, `document`, server-tool blocks; OpenAI
    /// `input_audio`, `file`), kept verbatim for same-format passthrough.
    Raw { format: ApiFormat, value: Value },
}

impl ContentBlock {
    /// A text block without extras.
    pub fn text(text: impl Into<String>) -> Self {
        ContentBlock::Text {
            text: text.into(),
            extras: Extras::new(),
        }
    }

    /// The text of a text block that can be rendered as a plain string
    /// (its extras are empty or, cross-format, not emitted).
    fn plain_text(&self, same_format: bool) -> Option<&str> {
        match self {
            ContentBlock::Text { text, extras } if extras.is_empty() || !same_format => Some(text),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ImageSource {
    Base64 { media_type: String, data: String },
    Url { url: String },
}

/// Tool-call arguments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum ToolInput {
    Json(Value),
    /// OpenAI `arguments` string that is not valid JSON (e.g. truncated by
    /// `max_tokens`). Passed through to OpenAI; cannot be sent to Anthropic.
    Invalid(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Tool {
    Function {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        /// JSON schema of the arguments (`None` = not given).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parameters: Option<Value>,
        /// e.g. OpenAI `strict`, Anthropic `cache_control`.
        #[serde(default, skip_serializing_if = "Map::is_empty")]
        extras: Extras,
    },
    /// Provider-specific tools (Anthropic server tools, OpenAI custom tools).
    Raw { format: ApiFormat, value: Value },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToolChoice {
    Auto,
    None,
    /// OpenAI `required` / Anthropic `any`.
    Required,
    Tool {
        name: String,
    },
    /// Other provider-specific forms (OpenAI `allowed_tools`, `custom`).
    Raw {
        format: ApiFormat,
        value: Value,
    },
}

/// Canonical chat request.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    pub stream: bool,
    /// The client asked for `stream_options.include_usage` (OpenAI).
    pub include_usage: bool,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// Format the client spoke.
    pub source: ApiFormat,
    /// Conversation including `System`/`Developer` messages (an Anthropic
    /// top-level `system` becomes one leading `System` message).
    pub messages: Vec<Message>,
    /// OpenAI `stop` / Anthropic `stop_sequences` (empty = none).
    pub stop: Vec<String>,
    /// OpenAI `user` / Anthropic `metadata.user_id`.
    pub user: Option<String>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    /// OpenAI `parallel_tool_calls` / Anthropic `!tool_choice.disable_parallel_tool_use`.
    pub parallel_tool_calls: Option<bool>,
    /// The OpenAI client used the legacy `max_tokens` field rather than
    /// `max_completion_tokens` (kept for same-format passthrough).
    pub legacy_max_tokens: bool,
    /// Unmodeled top-level fields, kept verbatim (see module docs).
    pub extras: Extras,
}

impl ChatRequest {
    pub fn tool_count(&self) -> usize {
        self.tools.len()
    }

    /// Canonical JSON of everything that can change the answer (for the
    /// response-cache key): messages, tools, sampling params, extras; object
    /// keys sorted; excludes `model`, `stream`, `include_usage` and the source
    /// format. `user` is included (conservative: never shares across users).
    pub fn cache_key_material(&self) -> Value {
        #[derive(Serialize)]
        struct Material<'a> {
            messages: &'a [Message],
            tools: &'a [Tool],
            tool_choice: &'a Option<ToolChoice>,
            parallel_tool_calls: Option<bool>,
            max_tokens: Option<u32>,
            temperature: Option<f64>,
            top_p: Option<f64>,
            stop: &'a [String],
            user: &'a Option<String>,
            extras: &'a Extras,
        }
        let material = Material {
            messages: &self.messages,
            tools: &self.tools,
            tool_choice: &self.tool_choice,
            parallel_tool_calls: self.parallel_tool_calls,
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            stop: &self.stop,
            user: &self.user,
            extras: &self.extras,
        };
        // Serializing IR types into a Value cannot fail (string keys only).
        canonicalize(serde_json::to_value(material).unwrap_or(Value::Null))
    }

    /// All prompt text concatenated with `\n` (system, messages, tool results,
    /// tool-call arguments, tool definitions), for token estimation and the
    /// prompt hash in logs.
    pub fn prompt_text(&self) -> String {
        let mut out = String::new();
        for m in &self.messages {
            push_blocks_text(&m.content, &mut out);
        }
        for t in &self.tools {
            if let Tool::Function {
                name,
                description,
                parameters,
                ..
            } = t
            {
                push_line(&mut out, name);
                if let Some(d) = description {
                    push_line(&mut out, d);
                }
                if let Some(p) = parameters {
                    push_line(&mut out, &p.to_string());
                }
            }
        }
        out
    }
}

fn push_line(out: &mut String, s: &str) {
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(s);
}

fn push_blocks_text(blocks: &[ContentBlock], out: &mut String) {
    for b in blocks {
        match b {
            ContentBlock::Text { text, .. } | ContentBlock::Refusal { text } => {
                push_line(out, text)
            }
            ContentBlock::ToolUse { name, input, .. } => {
                push_line(out, name);
                match input {
                    ToolInput::Json(v) => push_line(out, &v.to_string()),
                    ToolInput::Invalid(s) => push_line(out, s),
                }
            }
            ContentBlock::ToolResult { content, .. } => push_blocks_text(content, out),
            ContentBlock::Image { .. } | ContentBlock::Raw { .. } => {}
        }
    }
}

/// Recursively rebuild objects with sorted keys (independent of serde_json's
/// `preserve_order` feature).
fn canonicalize(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let mut out = Map::new();
            for (k, v) in entries {
                out.insert(k, canonicalize(v));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(canonicalize).collect()),
        other => other,
    }
}

// ---------------------------------------------------------------------------
// Canonical response IR
// ---------------------------------------------------------------------------

/// Token usage. `input_tokens` counts ALL prompt tokens including cache reads
/// (and Anthropic cache writes); `cached_input_tokens` is the cache-read part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    StopSequence,
    ContentFilter,
    Other(String),
}

impl FinishReason {
    fn from_openai(s: &str) -> Self {
        match s {
            "stop" => FinishReason::Stop,
            "length" => FinishReason::Length,
            "tool_calls" => FinishReason::ToolCalls,
            "content_filter" => FinishReason::ContentFilter,
            other => FinishReason::Other(other.to_owned()),
        }
    }

    fn from_anthropic(s: &str) -> Self {
        match s {
            "end_turn" => FinishReason::Stop,
            "max_tokens" => FinishReason::Length,
            "tool_use" => FinishReason::ToolCalls,
            "stop_sequence" => FinishReason::StopSequence,
            "refusal" => FinishReason::ContentFilter,
            other => FinishReason::Other(other.to_owned()),
        }
    }

    /// OpenAI `finish_reason` value.
    pub fn as_openai(&self) -> &str {
        match self {
            FinishReason::Stop | FinishReason::StopSequence => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::Other(s) => match s.as_str() {
                "function_call" => "function_call",
                "model_context_window_exceeded" => "length",
                _ => "stop",
            },
        }
    }

    /// Anthropic `stop_reason` value.
    pub fn as_anthropic(&self) -> &str {
        match self {
            FinishReason::Stop => "end_turn",
            FinishReason::Length => "max_tokens",
            FinishReason::ToolCalls => "tool_use",
            FinishReason::StopSequence => "stop_sequence",
            FinishReason::ContentFilter => "refusal",
            FinishReason::Other(s) => match s.as_str() {
                "pause_turn" => "pause_turn",
                "model_context_window_exceeded" => "model_context_window_exceeded",
                "function_call" => "tool_use",
                _ => "end_turn",
            },
        }
    }
}

/// Provider fields of a response the IR does not model; re-emitted only when
/// the client speaks the provider's format (`ChatResponse::source`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResponseExtras {
    /// Top-level (OpenAI `system_fingerprint`, `service_tier`; Anthropic `container`).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub top: Extras,
    /// OpenAI `choices[0]` fields (`logprobs`).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub choice: Extras,
    /// OpenAI `choices[0].message` fields (`refusal`, `annotations`, `audio`).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub message: Extras,
    /// Usage fields (`completion_tokens_details`, `cache_creation_input_tokens`, ...).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub usage: Extras,
    /// OpenAI choices with index ≥ 1 (`n` > 1), verbatim.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_choices: Vec<Value>,
}

/// Canonical non-streaming response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    pub id: String,
    pub model: String,
    pub usage: Usage,
    pub finish_reason: Option<FinishReason>,
    /// Anthropic `stop_sequence` that matched, if known.
    pub stop_sequence: Option<String>,
    /// Text / Refusal / ToolUse / Raw (e.g. thinking) blocks in order.
    pub content: Vec<ContentBlock>,
    /// OpenAI `created` (unix seconds), if the provider gave it.
    pub created: Option<u64>,
    /// Format of the provider that produced it.
    pub source: ApiFormat,
    pub extras: ResponseExtras,
}

impl ChatResponse {
    pub fn tool_call_names(&self) -> Vec<String> {
        self.content
            .iter()
            .filter_map(|b| match b {
                ContentBlock::ToolUse { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect()
    }

    /// Concatenated text blocks (no separator).
    pub fn text(&self) -> String {
        let mut out = String::new();
        for b in &self.content {
            if let ContentBlock::Text { text, .. } = b {
                out.push_str(text);
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Dispatch
// ---------------------------------------------------------------------------

/// Parse a client request body in `format`.
pub fn parse_request(format: ApiFormat, body: &[u8]) -> Result<ChatRequest, FormatError> {
    match format {
        ApiFormat::OpenAi => openai::parse_request(body),
        ApiFormat::Anthropic => anthropic::parse_request(body),
    }
}

/// Build the upstream request body for a provider speaking `format`, for
/// upstream model `model`. `default_max_tokens` is used for Anthropic when the
/// request has none. OpenAI + stream always sets
/// `stream_options.include_usage=true`. Fields that cannot be expressed in
/// `format` → `Err` naming the field.
pub fn encode_request(
    format: ApiFormat,
    req: &ChatRequest,
    model: &str,
    default_max_tokens: u32,
) -> Result<Vec<u8>, FormatError> {
    match format {
        ApiFormat::OpenAi => openai::encode_request(req, model),
        ApiFormat::Anthropic => anthropic::encode_request(req, model, default_max_tokens),
    }
}

/// Parse a provider's non-streaming 2xx response body.
pub fn decode_response(format: ApiFormat, body: &[u8]) -> Result<ChatResponse, FormatError> {
    match format {
        ApiFormat::OpenAi => openai::decode_response(body),
        ApiFormat::Anthropic => anthropic::decode_response(body),
    }
}

/// Render a response for a client speaking `format`; `model` is the public
/// model name the client asked for.
pub fn encode_response(format: ApiFormat, resp: &ChatResponse, model: &str) -> Vec<u8> {
    match format {
        ApiFormat::OpenAi => openai::encode_response(resp, model),
        ApiFormat::Anthropic => anthropic::encode_response(resp, model),
    }
}

// ---------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------

/// Kind of a content block opened by [`StreamEvent::BlockStart`].
#[derive(Clone, Debug, PartialEq)]
pub enum BlockKind {
    Text,
    /// OpenAI `delta.refusal` text (Anthropic clients get a text block).
    Refusal,
    ToolUse {
        id: String,
        name: String,
    },
    /// Anthropic `thinking` / OpenAI-compatible `reasoning_content`.
    Thinking,
    /// Any other Anthropic `content_block` (e.g. `redacted_thinking`,
    /// `server_tool_use`), verbatim. Dropped for OpenAI clients.
    Other(Value),
}

/// Canonical streaming events. Block indexes are the decoder's content-block
/// indexes (Anthropic's own, or assigned in order for OpenAI); encoders
/// renumber as their API requires.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    /// OpenAI first chunk / Anthropic `message_start`. `usage` is what is known
    /// at that point (Anthropic: input tokens; OpenAI: zeros).
    MessageStart {
        id: String,
        model: String,
        created: Option<u64>,
        usage: Usage,
    },
    BlockStart {
        index: u32,
        block: BlockKind,
    },
    /// Text for a `Text` or `Refusal` block.
    TextDelta {
        index: u32,
        text: String,
    },
    /// A piece of tool-call arguments JSON (OpenAI `function.arguments`,
    /// Anthropic `input_json_delta.partial_json`).
    ToolInputDelta {
        index: u32,
        partial_json: String,
    },
    ThinkingDelta {
        index: u32,
        thinking: String,
    },
    /// Anthropic `signature_delta` of a thinking block.
    SignatureDelta {
        index: u32,
        signature: String,
    },
    /// Any other Anthropic delta (e.g. `citations_delta`), verbatim.
    OtherDelta {
        index: u32,
        delta: Value,
    },
    BlockStop {
        index: u32,
    },
    /// OpenAI `finish_reason` / Anthropic `message_delta.delta`.
    MessageDelta {
        finish_reason: Option<FinishReason>,
        stop_sequence: Option<String>,
    },
    /// Cumulative usage snapshot (everything known so far).
    Usage(Usage),
    /// OpenAI `choices[0].logprobs` of the chunk whose deltas follow;
    /// re-attached by the OpenAI encoder, dropped for Anthropic clients.
    Logprobs(Value),
    /// OpenAI choice with index ≥ 1 (`n` > 1), verbatim; dropped for Anthropic.
    OtherChoice(Value),
    /// Anthropic `ping`.
    Ping,
    /// OpenAI `[DONE]` / Anthropic `message_stop`.
    MessageStop,
}

/// Incremental decoder of a provider's SSE byte stream.
pub struct StreamDecoder {
    sse: sse::SseParser,
    inner: DecoderInner,
    events: Vec<sse::SseEvent>,
    complete: bool,
    saw_content: bool,
    content_deltas: u64,
    usage: Usage,
    /// The provider reported final output usage (OpenAI usage chunk /
    /// Anthropic `message_delta`).
    output_final: bool,
}

enum DecoderInner {
    OpenAi(openai::StreamState),
    Anthropic(anthropic::StreamState),
}

impl StreamDecoder {
    pub fn new(format: ApiFormat) -> Self {
        StreamDecoder {
            sse: sse::SseParser::default(),
            inner: match format {
                ApiFormat::OpenAi => DecoderInner::OpenAi(openai::StreamState::default()),
                ApiFormat::Anthropic => DecoderInner::Anthropic(anthropic::StreamState::default()),
            },
            events: Vec::new(),
            complete: false,
            saw_content: false,
            content_deltas: 0,
            usage: Usage::default(),
            output_final: false,
        }
    }

    /// Feed raw bytes; returns the events completed so far. Malformed SSE/JSON
    /// → `Err`. An upstream error event → `Err` with its message (events that
    /// preceded it in the same chunk are dropped). Data after the terminal
    /// event is ignored.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<StreamEvent>, FormatError> {
        let mut sse_events = std::mem::take(&mut self.events);
        let parsed = self.sse.feed(chunk, &mut sse_events);
        let mut out = Vec::new();
        let result = parsed.and_then(|()| {
            for ev in sse_events.drain(..) {
                if self.complete {
                    continue;
                }
                let mut st = DecodeState {
                    complete: &mut self.complete,
                    saw_content: &mut self.saw_content,
                    content_deltas: &mut self.content_deltas,
                    usage: &mut self.usage,
                    output_final: &mut self.output_final,
                };
                match &mut self.inner {
                    DecoderInner::OpenAi(s) => s.on_event(ev, &mut st, &mut out)?,
                    DecoderInner::Anthropic(s) => s.on_event(ev, &mut st, &mut out)?,
                }
            }
            Ok(())
        });
        sse_events.clear();
        self.events = sse_events;
        result.map(|()| out)
    }

    /// Whether the terminal event was seen (OpenAI `[DONE]`; Anthropic `message_stop`).
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Usage accumulated so far. Input tokens are whatever the provider
    /// reported (OpenAI: only in the final usage chunk; Anthropic: in
    /// `message_start`). Until the provider reports final output usage, the
    /// output count is the larger of what it reported and the number of
    /// content deltas seen (an estimate: one delta ≈ one token).
    pub fn usage(&self) -> Usage {
        let mut u = self.usage;
        if !self.output_final {
            u.output_tokens = u.output_tokens.max(self.content_deltas);
        }
        u
    }

    /// True once content was seen: a text/refusal/thinking delta, tool-call
    /// arguments delta, or a tool-call start (its name is content).
    pub fn saw_content(&self) -> bool {
        self.saw_content
    }
}

/// Shared decoder bookkeeping handed to the per-format state machines.
struct DecodeState<'a> {
    complete: &'a mut bool,
    saw_content: &'a mut bool,
    content_deltas: &'a mut u64,
    usage: &'a mut Usage,
    output_final: &'a mut bool,
}

impl DecodeState<'_> {
    fn content_delta(&mut self) {
        *self.saw_content = true;
        *self.content_deltas += 1;
    }
}

/// Renders canonical events as SSE for a client speaking `format`.
pub struct StreamEncoder {
    inner: EncoderInner,
}

enum EncoderInner {
    OpenAi(openai::StreamEncoder),
    Anthropic(anthropic::StreamEncoder),
}

impl StreamEncoder {
    /// `model`: public model name to show; `include_usage`: whether the OpenAI
    /// client asked for the usage chunk (ignored for Anthropic, which always
    /// carries usage).
    pub fn new(format: ApiFormat, model: &str, include_usage: bool) -> Self {
        StreamEncoder {
            inner: match format {
                ApiFormat::OpenAi => {
                    EncoderInner::OpenAi(openai::StreamEncoder::new(model, include_usage))
                }
                ApiFormat::Anthropic => {
                    EncoderInner::Anthropic(anthropic::StreamEncoder::new(model))
                }
            },
        }
    }

    pub fn encode(&mut self, ev: &StreamEvent, out: &mut bytes::BytesMut) {
        match &mut self.inner {
            EncoderInner::OpenAi(e) => e.encode(ev, out),
            EncoderInner::Anthropic(e) => e.encode(ev, out),
        }
    }

    /// Terminate the stream cleanly (idempotent; no-op after `error`).
    pub fn finish(&mut self, out: &mut bytes::BytesMut) {
        match &mut self.inner {
            EncoderInner::OpenAi(e) => e.finish(out),
            EncoderInner::Anthropic(e) => e.finish(out),
        }
    }

    /// Terminate with an explicit error event (never followed by a clean end).
    pub fn error(&mut self, error_type: &str, message: &str, out: &mut bytes::BytesMut) {
        match &mut self.inner {
            EncoderInner::OpenAi(e) => e.error(error_type, message, out),
            EncoderInner::Anthropic(e) => e.error(error_type, message, out),
        }
    }
}

// ---------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fallback id when the provider gave none.
fn synth_id(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}{nanos:x}")
}

fn parse_body_object(body: &[u8]) -> Result<Map<String, Value>, FormatError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(FormatError::general("request body must be a JSON object")),
        Err(e) => Err(FormatError::general(format!(
            "request body is not valid JSON: {e}"
        ))),
    }
}

fn take_model(obj: &mut Map<String, Value>) -> Result<String, FormatError> {
    match obj.remove("model") {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        None | Some(Value::Null) => Err(FormatError::required("model")),
        Some(_) => Err(FormatError::invalid("model", "a non-empty string")),
    }
}

fn take_messages(obj: &mut Map<String, Value>) -> Result<Vec<Value>, FormatError> {
    match obj.remove("messages") {
        Some(Value::Array(a)) if !a.is_empty() => Ok(a),
        Some(Value::Array(_)) => Err(FormatError::new(
            "`messages` must contain at least one message",
            "messages",
        )),
        None | Some(Value::Null) => Err(FormatError::required("messages")),
        Some(_) => Err(FormatError::invalid("messages", "an array")),
    }
}

/// Optional bool; `null` = absent.
fn take_opt_bool(obj: &mut Map<String, Value>, key: &str) -> Result<Option<bool>, FormatError> {
    match obj.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(_) => Err(FormatError::invalid(key, "a boolean")),
    }
}

/// Optional number; `null` = absent.
fn take_opt_f64(obj: &mut Map<String, Value>, key: &str) -> Result<Option<f64>, FormatError> {
    match obj.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .map(Some)
            .ok_or_else(|| FormatError::invalid(key, "a number")),
        Some(_) => Err(FormatError::invalid(key, "a number")),
    }
}

/// Optional positive integer fitting u32; `null` = absent.
fn take_opt_pos_u32(obj: &mut Map<String, Value>, key: &str) -> Result<Option<u32>, FormatError> {
    match obj.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v > 0 => Ok(Some(u32::try_from(v).unwrap_or(u32::MAX))),
            _ => Err(FormatError::invalid(key, "a positive integer")),
        },
        Some(_) => Err(FormatError::invalid(key, "a positive integer")),
    }
}

/// Optional string; `null` = absent.
fn take_opt_string(
    obj: &mut Map<String, Value>,
    key: &str,
    path: impl FnOnce() -> String,
) -> Result<Option<String>, FormatError> {
    match obj.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(FormatError::invalid(path(), "a string")),
    }
}

/// Required string.
fn take_string(
    obj: &mut Map<String, Value>,
    key: &str,
    path: impl FnOnce() -> String,
) -> Result<String, FormatError> {
    match obj.remove(key) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(FormatError::required(path())),
        Some(_) => Err(FormatError::invalid(path(), "a string")),
    }
}

fn type_of(v: &Value) -> Option<&str> {
    v.get("type").and_then(Value::as_str)
}

/// Whether an unmodeled field from `source` may be dropped when translating
/// to the other API because it does not change the answer (see module docs).
fn is_neutral(source: ApiFormat, key: &str, v: &Value) -> bool {
    if v.is_null() {
        return true;
    }
    match source {
        ApiFormat::OpenAi => match key {
            "n" => v.as_u64() == Some(1),
            "presence_penalty" | "frequency_penalty" => v.as_f64() == Some(0.0),
            "logprobs" | "store" | "strict" => v == &Value::Bool(false),
            "top_logprobs" => v.as_u64() == Some(0),
            "logit_bias" | "metadata" => v.as_object().is_some_and(Map::is_empty),
            "response_format" => type_of(v) == Some("text"),
            "service_tier" => matches!(v.as_str(), Some("auto" | "default")),
            "modalities" => v
                .as_array()
                .is_some_and(|a| a.len() == 1 && a.first().and_then(Value::as_str) == Some("text")),
            "detail" => v.as_str() == Some("auto"),
            // Transport options (include_obfuscation), caching hints, and the
            // legacy duplicate of max_completion_tokens.
            "stream_options" | "prompt_cache_key" | "max_tokens" => true,
            _ => false,
        },
        ApiFormat::Anthropic => match key {
            "thinking" => type_of(v) == Some("disabled"),
            "service_tier" => v.as_str() == Some("auto"),
            "cache_control" => true,
            "metadata" => v.as_object().is_some_and(Map::is_empty),
            "type" => v.as_str() == Some("custom"),
            _ => false,
        },
    }
}

/// Cross-format check of an extras map: any non-neutral field → error naming
/// `{prefix}{key}`.
fn check_extras(
    extras: &Extras,
    source: ApiFormat,
    target: ApiFormat,
    prefix: impl Fn() -> String,
) -> Result<(), FormatError> {
    if source == target {
        return Ok(());
    }
    for (k, v) in extras {
        if !is_neutral(source, k, v) {
            return Err(FormatError::untranslatable(
                format!("{}{k}", prefix()),
                target,
            ));
        }
    }
    Ok(())
}

/// JSON path of IR message `i` in the client's request (Anthropic's
/// top-level `system` is IR message 0).
fn message_path(req: &ChatRequest, i: usize) -> String {
    if req.source == ApiFormat::Anthropic {
        let has_system = req.messages.first().is_some_and(|m| m.role.is_system());
        if has_system {
            if i == 0 {
                return "system".to_owned();
            }
            return format!("messages[{}]", i - 1);
        }
    }
    format!("messages[{i}]")
}

/// Path of block `j` of message `i` (Anthropic system blocks are `system[j]`).
fn block_path(req: &ChatRequest, i: usize, j: usize) -> String {
    let m = message_path(req, i);
    if m == "system" {
        format!("system[{j}]")
    } else {
        format!("{m}.content[{j}]")
    }
}

/// `data:<media>;base64,<data>` → (media, data) by stripping the prefix in
/// place (no copy of the payload).
fn split_data_url(mut url: String) -> Result<(String, String), String> {
    let header_end = match url.find(',') {
        Some(i) if url.starts_with("data:") => i,
        _ => return Err(url),
    };
    let header = &url[5..header_end];
    let Some(media) = header.strip_suffix(";base64") else {
        return Err(url);
    };
    let media = media.split(';').next().unwrap_or("").to_owned();
    url.replace_range(..=header_end, "");
    Ok((media, url))
}

/// Writes `data:<media>;base64,<data>` without building the string first.
struct DataUrl<'a> {
    media_type: &'a str,
    data: &'a str,
}

impl std::fmt::Display for DataUrl<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("data:")?;
        f.write_str(self.media_type)?;
        f.write_str(";base64,")?;
        f.write_str(self.data)
    }
}

impl Serialize for DataUrl<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Serialize an encodable value to bytes; our own serializable types cannot
/// fail (string keys, no I/O), but map the impossible error anyway.
fn to_json_vec<T: Serialize>(v: &T) -> Result<Vec<u8>, FormatError> {
    serde_json::to_vec(v)
        .map_err(|e| FormatError::general(format!("failed to serialize request: {e}")))
}
