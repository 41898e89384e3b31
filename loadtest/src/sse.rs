//! Incremental server-sent-events parsing and the two APIs' stream events.

use std::borrow::Cow;

use serde::Deserialize;

use crate::scenario::Api;

/// Splits a byte stream into SSE events (`event:` + `data:` lines ended by
/// a blank line; `\r\n` accepted; comments ignored).
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
}

/// Largest single line kept; longer lines are cut (the event is then
/// malformed JSON and reported as such).
const MAX_LINE: usize = 4 << 20;

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed bytes; calls `on_event(event_name, data)` for each complete event.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(Option<&[u8]>, &[u8])) {
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(nl) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + nl;
            let mut line = &self.buf[start..end];
            if let Some(l) = line.strip_suffix(b"\r") {
                line = l;
            }
            if line.is_empty() {
                if self.has_data || !self.event.is_empty() {
                    let ev = (!self.event.is_empty()).then_some(self.event.as_slice());
                    on_event(ev, &self.data);
                }
                self.event.clear();
                self.data.clear();
                self.has_data = false;
            } else if line[0] == b':' {
                // comment
            } else {
                let (field, value) = match line.iter().position(|&b| b == b':') {
                    Some(i) => {
                        let v = &line[i + 1..];
                        (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
                    }
                    None => (line, &b""[..]),
                };
                match field {
                    b"data" => {
                        if self.has_data {
                            self.data.push(b'\n');
                        }
                        let room = MAX_LINE.saturating_sub(self.data.len());
                        self.data.extend_from_slice(&value[..value.len().min(room)]);
                        self.has_data = true;
                    }
                    b"event" => {
                        self.event.clear();
                        self.event.extend_from_slice(value);
                    }
                    _ => {}
                }
            }
            start = end + 1;
        }
        self.buf.drain(..start);
        if self.buf.len() > MAX_LINE {
            self.buf.truncate(MAX_LINE);
        }
    }
}

/// What a stream told us so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StreamState {
    /// Content (or tool-argument) deltas seen.
    pub tokens: u32,
    /// The API's terminator was seen (`[DONE]` / `message_stop`).
    pub done: bool,
    /// An error event: its code or type.
    pub error: Option<String>,
    /// An event whose data was not JSON.
    pub malformed: bool,
    pub input_tokens: Option<u32>,
    pub output_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct OaChunk<'a> {
    #[serde(borrow, default)]
    choices: Option<Vec<OaChoice<'a>>>,
    #[serde(default)]
    usage: Option<OaUsage>,
    #[serde(borrow, default)]
    error: Option<ErrBody<'a>>,
}

#[derive(Deserialize)]
struct OaChoice<'a> {
    #[serde(borrow, default)]
    delta: Option<OaDelta<'a>>,
}

#[derive(Deserialize)]
struct OaDelta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<OaToolCall<'a>>>,
}

#[derive(Deserialize)]
struct OaToolCall<'a> {
    #[serde(borrow, default)]
    function: Option<OaFunction<'a>>,
}

#[derive(Deserialize)]
struct OaFunction<'a> {
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
struct OaUsage {
    #[serde(default)]
    prompt_tokens: Option<u32>,
    #[serde(default)]
    completion_tokens: Option<u32>,
}

/// `{"error": {"code": ..., "type": ...}}` (OpenAI) or Anthropic's `error` object.
#[derive(Deserialize)]
pub(crate) struct ErrBody<'a> {
    #[serde(default)]
    pub code: Option<serde_json::Value>,
    #[serde(borrow, rename = "type", default)]
    pub kind: Option<Cow<'a, str>>,
}

impl ErrBody<'_> {
    pub fn label(&self) -> Option<String> {
        match &self.code {
            Some(serde_json::Value::String(s)) if !s.is_empty() => return Some(s.clone()),
            Some(serde_json::Value::Number(n)) => return Some(n.to_string()),
            _ => {}
        }
        self.kind.as_ref().map(|k| k.to_string())
    }
}

#[derive(Deserialize)]
struct AnEvent<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    delta: Option<AnDelta<'a>>,
    #[serde(default)]
    usage: Option<AnUsage>,
    #[serde(default)]
    message: Option<AnMessage>,
    #[serde(borrow, default)]
    error: Option<ErrBody<'a>>,
}

#[derive(Deserialize)]
struct AnDelta<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    partial_json: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
struct AnUsage {
    #[serde(default)]
    input_tokens: Option<u32>,
    #[serde(default)]
    output_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct AnMessage {
    #[serde(default)]
    usage: Option<AnUsage>,
}

impl StreamState {
    /// Interpret one event; returns the number of content tokens it carried.
    pub fn on_event(&mut self, api: Api, event: Option<&[u8]>, data: &[u8]) -> u32 {
        match api {
            Api::Openai => self.on_openai(event, data),
            Api::Anthropic => self.on_anthropic(event, data),
        }
    }

    fn on_openai(&mut self, event: Option<&[u8]>, data: &[u8]) -> u32 {
        let trimmed = data.trim_ascii();
        if trimmed == b"[DONE]" {
            self.done = true;
            return 0;
        }
        let chunk: OaChunk = match serde_json::from_slice(trimmed) {
            Ok(c) => c,
            Err(_) => {
                self.malformed = true;
                return 0;
            }
        };
        if let Some(e) = chunk.error {
            self.error = Some(e.label().unwrap_or_else(|| "error".into()));
            return 0;
        }
        if event == Some(b"error") {
            self.error = Some("error".into());
            return 0;
        }
        if let Some(u) = chunk.usage {
            if u.prompt_tokens.is_some() {
                self.input_tokens = u.prompt_tokens;
            }
            if u.completion_tokens.is_some() {
                self.output_tokens = u.completion_tokens;
            }
        }
        let mut n = 0;
        for c in chunk.choices.iter().flatten() {
            let Some(d) = &c.delta else { continue };
            let content = d.content.as_deref().is_some_and(|s| !s.is_empty());
            let tool_args = d.tool_calls.iter().flatten().any(|t| {
                t.function
                    .as_ref()
                    .and_then(|f| f.arguments.as_deref())
                    .is_some_and(|a| !a.is_empty())
            });
            if content || tool_args {
                n += 1;
            }
        }
        self.tokens += n;
        n
    }

    fn on_anthropic(&mut self, event: Option<&[u8]>, data: &[u8]) -> u32 {
        let ev: AnEvent = match serde_json::from_slice(data.trim_ascii()) {
            Ok(e) => e,
            Err(_) => {
                self.malformed = true;
                return 0;
            }
        };
        let kind: &[u8] = match event {
            Some(e) => e,
            None => ev.kind.as_deref().map(str::as_bytes).unwrap_or_default(),
        };
        match kind {
            b"content_block_delta" => {
                let n = ev.delta.as_ref().map_or(0, |d| {
                    let t = d.text.as_deref().is_some_and(|s| !s.is_empty())
                        || d.partial_json.as_deref().is_some_and(|s| !s.is_empty());
                    u32::from(t)
                });
                self.tokens += n;
                n
            }
            b"message_start" => {
                if let Some(u) = ev.message.and_then(|m| m.usage) {
                    self.input_tokens = u.input_tokens.or(self.input_tokens);
                }
                0
            }
            b"message_delta" => {
                if let Some(u) = ev.usage {
                    self.output_tokens = u.output_tokens.or(self.output_tokens);
                    if u.input_tokens.is_some() {
                        self.input_tokens = u.input_tokens;
                    }
                }
                0
            }
            b"message_stop" => {
                self.done = true;
                0
            }
            b"error" => {
                self.error = Some(
                    ev.error
                        .and_then(|e| e.label())
                        .unwrap_or_else(|| "error".into()),
                );
                0
            }
            _ => 0,
        }
    }
}
