//! OpenAI Chat Completions wire format.

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use super::sse::{write_event, SseEvent};
use super::{
    block_path, check_extras, message_path, now_unix, parse_body_object, synth_id, take_messages,
    take_model, take_opt_bool, take_opt_f64, take_opt_pos_u32, take_opt_string, take_string,
    ApiFormat, BlockKind, ChatRequest, ChatResponse, ContentBlock, DataUrl, DecodeState, Extras,
    FinishReason, FormatError, ImageSource, Message, ResponseExtras, Role, StreamEvent, Tool,
    ToolChoice, ToolInput, Usage,
};

const FMT: ApiFormat = ApiFormat::OpenAi;

// ---------------------------------------------------------------------------
// Request parsing
// ---------------------------------------------------------------------------

pub(super) fn parse_request(body: &[u8]) -> Result<ChatRequest, FormatError> {
    let mut obj = parse_body_object(body)?;
    let model = take_model(&mut obj)?;
    let raw_messages = take_messages(&mut obj)?;
    let stream = take_opt_bool(&mut obj, "stream")?.unwrap_or(false);

    let mut include_usage = false;
    let mut stream_options_rest = None;
    match obj.remove("stream_options") {
        None | Some(Value::Null) => {}
        Some(Value::Object(mut so)) => {
            match so.remove("include_usage") {
                None | Some(Value::Null) => {}
                Some(Value::Bool(b)) => include_usage = b,
                Some(_) => {
                    return Err(FormatError::invalid(
                        "stream_options.include_usage",
                        "a boolean",
                    ))
                }
            }
            if !so.is_empty() {
                stream_options_rest = Some(Value::Object(so));
            }
        }
        Some(_) => return Err(FormatError::invalid("stream_options", "an object")),
    }

    let max_completion_tokens = take_opt_pos_u32(&mut obj, "max_completion_tokens")?;
    let (max_tokens, legacy_max_tokens) = match max_completion_tokens {
        Some(v) => {
            // A legacy duplicate stays in extras (validated) for passthrough.
            if let Some(dup) = obj.get("max_tokens") {
                let ok = dup.is_null() || dup.as_u64().is_some_and(|n| n > 0);
                if !ok {
                    return Err(FormatError::invalid("max_tokens", "a positive integer"));
                }
            }
            (Some(v), false)
        }
        None => {
            let v = take_opt_pos_u32(&mut obj, "max_tokens")?;
            (v, v.is_some())
        }
    };
    let temperature = take_opt_f64(&mut obj, "temperature")?;
    let top_p = take_opt_f64(&mut obj, "top_p")?;
    let stop = match obj.remove("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(a)) => a
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s),
                _ => Err(FormatError::invalid(format!("stop[{i}]"), "a string")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(FormatError::invalid(
                "stop",
                "a string or an array of strings",
            ))
        }
    };
    let user = take_opt_string(&mut obj, "user", || "user".to_owned())?;
    let parallel_tool_calls = take_opt_bool(&mut obj, "parallel_tool_calls")?;
    let tools = parse_tools(obj.remove("tools"))?;
    let tool_choice = parse_tool_choice(obj.remove("tool_choice"))?;

    let mut messages = Vec::with_capacity(raw_messages.len());
    for (i, v) in raw_messages.into_iter().enumerate() {
        messages.push(parse_message(i, v)?);
    }
    if let Some(rest) = stream_options_rest {
        obj.insert("stream_options".to_owned(), rest);
    }
    Ok(ChatRequest {
        model,
        stream,
        include_usage,
        max_tokens,
        temperature,
        top_p,
        source: FMT,
        messages,
        stop,
        user,
        tools,
        tool_choice,
        parallel_tool_calls,
        legacy_max_tokens,
        extras: obj,
    })
}

fn parse_message(i: usize, v: Value) -> Result<Message, FormatError> {
    let Value::Object(mut m) = v else {
        return Err(FormatError::invalid(format!("messages[{i}]"), "an object"));
    };
    let role = match m.remove("role") {
        Some(Value::String(r)) => match r.as_str() {
            "system" => Role::System,
            "developer" => Role::Developer,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            _ => {
                return Err(FormatError::new(
                    format!(
                        "`messages[{i}].role` must be one of system, developer, user, assistant, tool (got {r:?})"
                    ),
                    format!("messages[{i}].role"),
                ))
            }
        },
        None | Some(Value::Null) => {
            return Err(FormatError::required(format!("messages[{i}].role")))
        }
        Some(_) => return Err(FormatError::invalid(format!("messages[{i}].role"), "a string")),
    };
    let content = m.remove("content");
    let content = match role {
        Role::Assistant => {
            let mut blocks = match content {
                None | Some(Value::Null) => Vec::new(),
                Some(c) => parse_content(i, c)?,
            };
            match m.remove("tool_calls") {
                None | Some(Value::Null) => {}
                Some(tc) => parse_tool_calls(i, tc, &mut blocks)?,
            }
            blocks
        }
        Role::Tool => {
            let id = take_string(&mut m, "tool_call_id", || {
                format!("messages[{i}].tool_call_id")
            })?;
            let c = match content {
                None | Some(Value::Null) => {
                    return Err(FormatError::required(format!("messages[{i}].content")))
                }
                Some(c) => parse_content(i, c)?,
            };
            vec![ContentBlock::ToolResult {
                tool_use_id: id,
                content: c,
                is_error: false,
                extras: Extras::new(),
            }]
        }
        Role::System | Role::Developer | Role::User => match content {
            None | Some(Value::Null) => {
                return Err(FormatError::required(format!("messages[{i}].content")))
            }
            Some(c) => parse_content(i, c)?,
        },
    };
    Ok(Message {
        role,
        content,
        extras: m,
    })
}

fn parse_content(i: usize, v: Value) -> Result<Vec<ContentBlock>, FormatError> {
    match v {
        Value::String(s) => Ok(vec![ContentBlock::text(s)]),
        Value::Array(parts) => parts
            .into_iter()
            .enumerate()
            .map(|(j, p)| parse_part(p, &|| format!("messages[{i}].content[{j}]")))
            .collect(),
        _ => Err(FormatError::invalid(
            format!("messages[{i}].content"),
            "a string or an array of content parts",
        )),
    }
}

fn parse_part(v: Value, path: &dyn Fn() -> String) -> Result<ContentBlock, FormatError> {
    let Value::Object(mut p) = v else {
        return Err(FormatError::invalid(path(), "an object"));
    };
    let ty = match p.remove("type") {
        Some(Value::String(t)) => t,
        None | Some(Value::Null) => return Err(FormatError::required(format!("{}.type", path()))),
        Some(_) => return Err(FormatError::invalid(format!("{}.type", path()), "a string")),
    };
    match ty.as_str() {
        "text" => {
            let text = take_string(&mut p, "text", || format!("{}.text", path()))?;
            Ok(ContentBlock::Text { text, extras: p })
        }
        "refusal" => {
            let text = take_string(&mut p, "refusal", || format!("{}.refusal", path()))?;
            Ok(ContentBlock::Refusal { text })
        }
        "image_url" => {
            let mut extras = Extras::new();
            let url = match p.remove("image_url") {
                Some(Value::String(u)) => u,
                Some(Value::Object(mut o)) => {
                    let url = take_string(&mut o, "url", || format!("{}.image_url.url", path()))?;
                    extras = o;
                    url
                }
                None | Some(Value::Null) => {
                    return Err(FormatError::required(format!("{}.image_url", path())))
                }
                Some(_) => {
                    return Err(FormatError::invalid(
                        format!("{}.image_url", path()),
                        "an object",
                    ))
                }
            };
            extras.extend(p);
            let source = match super::split_data_url(url) {
                Ok((media_type, data)) => ImageSource::Base64 { media_type, data },
                Err(url) => ImageSource::Url { url },
            };
            Ok(ContentBlock::Image { source, extras })
        }
        "input_audio" | "file" => {
            p.insert("type".to_owned(), Value::String(ty));
            Ok(ContentBlock::Raw {
                format: FMT,
                value: Value::Object(p),
            })
        }
        other => {
            let param = format!("{}.type", path());
            Err(FormatError::new(
                format!("unsupported content part type {other:?} at `{param}`"),
                param,
            ))
        }
    }
}

fn parse_tool_calls(i: usize, v: Value, blocks: &mut Vec<ContentBlock>) -> Result<(), FormatError> {
    let Value::Array(calls) = v else {
        return Err(FormatError::invalid(
            format!("messages[{i}].tool_calls"),
            "an array",
        ));
    };
    for (j, c) in calls.into_iter().enumerate() {
        blocks.push(parse_tool_call(c, &|| {
            format!("messages[{i}].tool_calls[{j}]")
        })?);
    }
    Ok(())
}

fn parse_tool_call(v: Value, path: &dyn Fn() -> String) -> Result<ContentBlock, FormatError> {
    let Value::Object(mut c) = v else {
        return Err(FormatError::invalid(path(), "an object"));
    };
    match c.remove("type") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if t == "function" => {}
        Some(other) => {
            return Err(FormatError::new(
                format!("unsupported tool call type {other}"),
                format!("{}.type", path()),
            ))
        }
    }
    let id = take_string(&mut c, "id", || format!("{}.id", path()))?;
    let mut f = match c.remove("function") {
        Some(Value::Object(f)) => f,
        None | Some(Value::Null) => {
            return Err(FormatError::required(format!("{}.function", path())))
        }
        Some(_) => {
            return Err(FormatError::invalid(
                format!("{}.function", path()),
                "an object",
            ))
        }
    };
    let name = take_string(&mut f, "name", || format!("{}.function.name", path()))?;
    let args = take_opt_string(&mut f, "arguments", || {
        format!("{}.function.arguments", path())
    })?
    .unwrap_or_default();
    Ok(ContentBlock::ToolUse {
        id,
        name,
        input: parse_arguments(args),
        extras: c,
    })
}

fn parse_arguments(s: String) -> ToolInput {
    if s.trim().is_empty() {
        return ToolInput::Json(Value::Object(Map::new()));
    }
    match serde_json::from_str(&s) {
        Ok(v) => ToolInput::Json(v),
        Err(_) => ToolInput::Invalid(s),
    }
}

fn parse_tools(v: Option<Value>) -> Result<Vec<Tool>, FormatError> {
    let arr = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(FormatError::invalid("tools", "an array")),
    };
    let mut tools = Vec::with_capacity(arr.len());
    for (i, t) in arr.into_iter().enumerate() {
        let Value::Object(mut t) = t else {
            return Err(FormatError::invalid(format!("tools[{i}]"), "an object"));
        };
        match t.get("type") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == "function" => {}
            Some(Value::String(_)) => {
                tools.push(Tool::Raw {
                    format: FMT,
                    value: Value::Object(t),
                });
                continue;
            }
            Some(_) => return Err(FormatError::invalid(format!("tools[{i}].type"), "a string")),
        }
        t.remove("type");
        let mut f = match t.remove("function") {
            Some(Value::Object(f)) => f,
            None | Some(Value::Null) => {
                return Err(FormatError::required(format!("tools[{i}].function")))
            }
            Some(_) => {
                return Err(FormatError::invalid(
                    format!("tools[{i}].function"),
                    "an object",
                ))
            }
        };
        let name = take_string(&mut f, "name", || format!("tools[{i}].function.name"))?;
        let description = take_opt_string(&mut f, "description", || {
            format!("tools[{i}].function.description")
        })?;
        let parameters = match f.remove("parameters") {
            None | Some(Value::Null) => None,
            Some(o @ Value::Object(_)) => Some(o),
            Some(_) => {
                return Err(FormatError::invalid(
                    format!("tools[{i}].function.parameters"),
                    "an object",
                ))
            }
        };
        f.extend(t);
        tools.push(Tool::Function {
            name,
            description,
            parameters,
            extras: f,
        });
    }
    Ok(tools)
}

fn parse_tool_choice(v: Option<Value>) -> Result<Option<ToolChoice>, FormatError> {
    let bad = || {
        FormatError::invalid(
            "tool_choice",
            "\"none\", \"auto\", \"required\" or {\"type\":\"function\",\"function\":{\"name\":...}}",
        )
    };
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => match s.as_str() {
            "none" => Ok(Some(ToolChoice::None)),
            "auto" => Ok(Some(ToolChoice::Auto)),
            "required" => Ok(Some(ToolChoice::Required)),
            _ => Err(bad()),
        },
        Some(Value::Object(o)) => match o.get("type").and_then(Value::as_str) {
            Some("function") => {
                let name = o
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| FormatError::required("tool_choice.function.name"))?;
                Ok(Some(ToolChoice::Tool {
                    name: name.to_owned(),
                }))
            }
            Some(_) => Ok(Some(ToolChoice::Raw {
                format: FMT,
                value: Value::Object(o),
            })),
            None => Err(bad()),
        },
        Some(_) => Err(bad()),
    }
}

// ---------------------------------------------------------------------------
// Request encoding
// ---------------------------------------------------------------------------

/// One OpenAI message to emit.
enum OutMsg<'a> {
    Std {
        role: &'static str,
        content: Vec<&'a ContentBlock>,
        tool_calls: Vec<&'a ContentBlock>,
        extras: Option<&'a Extras>,
    },
    Tool {
        tool_call_id: &'a str,
        content: &'a [ContentBlock],
        extras: Option<&'a Extras>,
    },
}

pub(super) fn encode_request(req: &ChatRequest, model: &str) -> Result<Vec<u8>, FormatError> {
    let same = req.source == FMT;
    check_extras(&req.extras, req.source, FMT, String::new)?;
    let messages = plan_messages(req)?;
    for (i, t) in req.tools.iter().enumerate() {
        match t {
            Tool::Function { extras, .. } => {
                check_extras(extras, req.source, FMT, || format!("tools[{i}]."))?
            }
            Tool::Raw { format, .. } if *format != FMT => {
                return Err(FormatError::untranslatable(format!("tools[{i}]"), FMT))
            }
            Tool::Raw { .. } => {}
        }
    }
    if let Some(ToolChoice::Raw { format, .. }) = &req.tool_choice {
        if *format != FMT {
            return Err(FormatError::untranslatable("tool_choice", FMT));
        }
    }
    super::to_json_vec(&ReqOut {
        req,
        model,
        same,
        messages,
    })
}

fn plan_messages(req: &ChatRequest) -> Result<Vec<OutMsg<'_>>, FormatError> {
    let same = req.source == FMT;
    let mut out = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        check_extras(&m.extras, req.source, FMT, || {
            format!("{}.", message_path(req, i))
        })?;
        let extras = same.then_some(&m.extras);
        if m.role == Role::Tool {
            for b in &m.content {
                if let ContentBlock::ToolResult {
                    tool_use_id,
                    content,
                    ..
                } = b
                {
                    out.push(OutMsg::Tool {
                        tool_call_id: tool_use_id,
                        content,
                        extras,
                    });
                }
            }
            continue;
        }
        let role = m.role.as_str();
        let mut content = Vec::new();
        let mut tool_calls = Vec::new();
        let mut skipped = false;
        for (j, b) in m.content.iter().enumerate() {
            let path = || block_path(req, i, j);
            match b {
                ContentBlock::Text { extras, .. } | ContentBlock::Image { extras, .. } => {
                    check_extras(extras, req.source, FMT, || format!("{}.", path()))?;
                    content.push(b);
                }
                ContentBlock::Refusal { .. } => content.push(b),
                ContentBlock::ToolUse { extras, .. } => {
                    if m.role != Role::Assistant {
                        return Err(FormatError::new(
                            format!(
                                "`{}`: tool calls are only allowed in assistant messages",
                                path()
                            ),
                            path(),
                        ));
                    }
                    check_extras(extras, req.source, FMT, || format!("{}.", path()))?;
                    tool_calls.push(b);
                }
                ContentBlock::ToolResult {
                    tool_use_id,
                    content: inner,
                    is_error,
                    extras,
                } => {
                    check_extras(extras, req.source, FMT, || format!("{}.", path()))?;
                    if *is_error && !same {
                        return Err(FormatError::untranslatable(
                            format!("{}.is_error", path()),
                            FMT,
                        ));
                    }
                    for (k, ib) in inner.iter().enumerate() {
                        match ib {
                            ContentBlock::Text { extras, .. } => {
                                check_extras(extras, req.source, FMT, || {
                                    format!("{}.content[{k}].", path())
                                })?
                            }
                            _ => {
                                return Err(FormatError::untranslatable(
                                    format!("{}.content[{k}]", path()),
                                    FMT,
                                ))
                            }
                        }
                    }
                    // Text before the tool result stays a separate user message.
                    if !content.is_empty() {
                        out.push(OutMsg::Std {
                            role,
                            content: std::mem::take(&mut content),
                            tool_calls: Vec::new(),
                            extras: None,
                        });
                    }
                    out.push(OutMsg::Tool {
                        tool_call_id: tool_use_id,
                        content: inner,
                        extras: None,
                    });
                    skipped = true;
                }
                ContentBlock::Raw { format, value } => {
                    if *format == FMT {
                        content.push(b);
                    } else if m.role == Role::Assistant
                        && matches!(
                            super::type_of(value),
                            Some("thinking" | "redacted_thinking")
                        )
                    {
                        skipped = true;
                    } else {
                        return Err(FormatError::untranslatable(path(), FMT));
                    }
                }
            }
        }
        if content.is_empty() && tool_calls.is_empty() && skipped {
            continue;
        }
        out.push(OutMsg::Std {
            role,
            content,
            tool_calls,
            extras,
        });
    }
    Ok(out)
}

struct ReqOut<'a> {
    req: &'a ChatRequest,
    model: &'a str,
    same: bool,
    messages: Vec<OutMsg<'a>>,
}

impl Serialize for ReqOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.req;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("model", self.model)?;
        m.serialize_entry("messages", &seq(&self.messages, |m| MsgOut(m, self.same)))?;
        if let Some(mt) = r.max_tokens {
            let key = if self.same && r.legacy_max_tokens {
                "max_tokens"
            } else {
                "max_completion_tokens"
            };
            m.serialize_entry(key, &mt)?;
        }
        if let Some(t) = r.temperature {
            m.serialize_entry("temperature", &t)?;
        }
        if let Some(t) = r.top_p {
            m.serialize_entry("top_p", &t)?;
        }
        if !r.stop.is_empty() {
            m.serialize_entry("stop", &r.stop)?;
        }
        if r.stream {
            m.serialize_entry("stream", &true)?;
            m.serialize_entry(
                "stream_options",
                &StreamOptions(
                    self.same
                        .then(|| r.extras.get("stream_options"))
                        .flatten()
                        .and_then(Value::as_object),
                ),
            )?;
        }
        if let Some(u) = &r.user {
            m.serialize_entry("user", u)?;
        }
        if !r.tools.is_empty() {
            m.serialize_entry("tools", &seq(&r.tools, |t| ToolOut(t, self.same)))?;
        }
        if let Some(tc) = &r.tool_choice {
            m.serialize_entry("tool_choice", &ToolChoiceOut(tc))?;
        }
        if let Some(p) = r.parallel_tool_calls {
            m.serialize_entry("parallel_tool_calls", &p)?;
        }
        if self.same {
            for (k, v) in &r.extras {
                if k != "stream_options" {
                    m.serialize_entry(k, v)?;
                }
            }
        }
        m.end()
    }
}

/// Serialize a slice through a mapping to a serializable view.
struct Seq<'a, T, F>(&'a [T], F);

fn seq<'a, T, V: Serialize, F: Fn(&'a T) -> V>(items: &'a [T], f: F) -> Seq<'a, T, F> {
    Seq(items, f)
}

impl<'a, T, F, V> Serialize for Seq<'a, T, F>
where
    F: Fn(&'a T) -> V,
    V: Serialize,
{
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for item in self.0 {
            seq.serialize_element(&(self.1)(item))?;
        }
        seq.end()
    }
}

struct StreamOptions<'a>(Option<&'a Map<String, Value>>);

impl Serialize for StreamOptions<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("include_usage", &true)?;
        if let Some(rest) = self.0 {
            for (k, v) in rest {
                if k != "include_usage" {
                    m.serialize_entry(k, v)?;
                }
            }
        }
        m.end()
    }
}

struct MsgOut<'a>(&'a OutMsg<'a>, bool);

impl Serialize for MsgOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let same = self.1;
        let mut m = s.serialize_map(None)?;
        let extras = match self.0 {
            OutMsg::Std {
                role,
                content,
                tool_calls,
                extras,
            } => {
                m.serialize_entry("role", role)?;
                if content.is_empty() {
                    if *role == "assistant" {
                        m.serialize_entry("content", &Value::Null)?;
                    } else {
                        m.serialize_entry("content", "")?;
                    }
                } else {
                    m.serialize_entry("content", &ContentOut(content, same))?;
                }
                if !tool_calls.is_empty() {
                    m.serialize_entry("tool_calls", &seq(tool_calls, |b| ToolCallOut(b, same)))?;
                }
                extras
            }
            OutMsg::Tool {
                tool_call_id,
                content,
                extras,
            } => {
                m.serialize_entry("role", "tool")?;
                m.serialize_entry("tool_call_id", tool_call_id)?;
                let refs: Vec<&ContentBlock> = content.iter().collect();
                if refs.is_empty() {
                    m.serialize_entry("content", "")?;
                } else {
                    m.serialize_entry("content", &ContentOut(&refs, same))?;
                }
                extras
            }
        };
        if let Some(extras) = extras {
            for (k, v) in *extras {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

/// Message content: a plain string for a single plain text block, else parts.
struct ContentOut<'a>(&'a [&'a ContentBlock], bool);

impl Serialize for ContentOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if let [single] = self.0 {
            if let Some(t) = single.plain_text(self.1) {
                return s.serialize_str(t);
            }
        }
        seq(self.0, |b| PartOut(b, self.1)).serialize(s)
    }
}

struct PartOut<'a>(&'a ContentBlock, bool);

impl Serialize for PartOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let same = self.1;
        match self.0 {
            ContentBlock::Raw { value, .. } => value.serialize(s),
            ContentBlock::Text { text, extras } => {
                let mut m = s.serialize_map(None)?;
                m.serialize_entry("type", "text")?;
                m.serialize_entry("text", text)?;
                if same {
                    for (k, v) in extras {
                        m.serialize_entry(k, v)?;
                    }
                }
                m.end()
            }
            ContentBlock::Refusal { text } => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("type", "refusal")?;
                m.serialize_entry("refusal", text)?;
                m.end()
            }
            ContentBlock::Image { source, extras } => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("type", "image_url")?;
                m.serialize_entry("image_url", &ImageUrlOut(source, same.then_some(extras)))?;
                m.end()
            }
            // Planning never puts these into content.
            ContentBlock::ToolUse { .. } | ContentBlock::ToolResult { .. } => s.serialize_unit(),
        }
    }
}

struct ImageUrlOut<'a>(&'a ImageSource, Option<&'a Extras>);

impl Serialize for ImageUrlOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        match self.0 {
            ImageSource::Base64 { media_type, data } => {
                m.serialize_entry("url", &DataUrl { media_type, data })?
            }
            ImageSource::Url { url } => m.serialize_entry("url", url)?,
        }
        if let Some(extras) = self.1 {
            for (k, v) in extras {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

struct ToolCallOut<'a>(&'a ContentBlock, bool);

impl Serialize for ToolCallOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ContentBlock::ToolUse {
            id,
            name,
            input,
            extras,
        } = self.0
        else {
            return s.serialize_unit();
        };
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", id)?;
        m.serialize_entry("type", "function")?;
        m.serialize_entry("function", &FunctionCallOut { name, input })?;
        if self.1 {
            for (k, v) in extras {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

struct FunctionCallOut<'a> {
    name: &'a str,
    input: &'a ToolInput,
}

impl Serialize for FunctionCallOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("name", self.name)?;
        m.serialize_entry("arguments", &ArgumentsOut(self.input))?;
        m.end()
    }
}

/// Tool input as a JSON-text string, written without an intermediate String.
struct ArgumentsOut<'a>(&'a ToolInput);

impl Serialize for ArgumentsOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            ToolInput::Json(v) => s.collect_str(v),
            ToolInput::Invalid(raw) => s.serialize_str(raw),
        }
    }
}

struct ToolOut<'a>(&'a Tool, bool);

impl Serialize for ToolOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Tool::Raw { value, .. } => value.serialize(s),
            Tool::Function {
                name,
                description,
                parameters,
                extras,
            } => {
                struct Func<'a> {
                    name: &'a str,
                    description: &'a Option<String>,
                    parameters: &'a Option<Value>,
                    extras: Option<&'a Extras>,
                }
                impl Serialize for Func<'_> {
                    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                        let mut m = s.serialize_map(None)?;
                        m.serialize_entry("name", self.name)?;
                        if let Some(d) = self.description {
                            m.serialize_entry("description", d)?;
                        }
                        if let Some(p) = self.parameters {
                            m.serialize_entry("parameters", p)?;
                        }
                        if let Some(extras) = self.extras {
                            for (k, v) in extras {
                                m.serialize_entry(k, v)?;
                            }
                        }
                        m.end()
                    }
                }
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("type", "function")?;
                m.serialize_entry(
                    "function",
                    &Func {
                        name,
                        description,
                        parameters,
                        extras: self.1.then_some(extras),
                    },
                )?;
                m.end()
            }
        }
    }
}

struct ToolChoiceOut<'a>(&'a ToolChoice);

impl Serialize for ToolChoiceOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            ToolChoice::Auto => s.serialize_str("auto"),
            ToolChoice::None => s.serialize_str("none"),
            ToolChoice::Required => s.serialize_str("required"),
            ToolChoice::Tool { name } => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("type", "function")?;
                m.serialize_entry("function", &NameOnly { name })?;
                m.end()
            }
            ToolChoice::Raw { value, .. } => value.serialize(s),
        }
    }
}

#[derive(Serialize)]
struct NameOnly<'a> {
    name: &'a str,
}

// ---------------------------------------------------------------------------
// Non-streaming responses
// ---------------------------------------------------------------------------

fn upstream_error(err: &Value) -> FormatError {
    let msg = err
        .get("message")
        .and_then(Value::as_str)
        .or_else(|| err.as_str())
        .unwrap_or("unknown error");
    match err.get("type").and_then(Value::as_str) {
        Some(t) => FormatError::general(format!("upstream error ({t}): {msg}")),
        None => FormatError::general(format!("upstream error: {msg}")),
    }
}

pub(super) fn decode_response(body: &[u8]) -> Result<ChatResponse, FormatError> {
    let mut obj = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(FormatError::general("response body must be a JSON object")),
        Err(e) => {
            return Err(FormatError::general(format!(
                "response body is not valid JSON: {e}"
            )))
        }
    };
    if let Some(err) = obj.get("error").filter(|e| !e.is_null()) {
        return Err(upstream_error(err));
    }
    let id = take_opt_string(&mut obj, "id", || "id".to_owned())?.unwrap_or_default();
    let model = take_opt_string(&mut obj, "model", || "model".to_owned())?.unwrap_or_default();
    let created = obj.remove("created").and_then(|v| v.as_u64());
    obj.remove("object");
    let choices = match obj.remove("choices") {
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => return Err(FormatError::required("choices")),
        Some(_) => return Err(FormatError::invalid("choices", "an array")),
    };
    let mut extras = ResponseExtras::default();
    let usage = match obj.remove("usage") {
        Some(Value::Object(u)) => usage_from_map(u, &mut extras.usage),
        _ => Usage::default(),
    };
    let mut content = Vec::new();
    let mut finish_reason = None;
    let mut have_first = false;
    for (k, c) in choices.into_iter().enumerate() {
        let index = c.get("index").and_then(Value::as_u64).unwrap_or(k as u64);
        if index != 0 || have_first {
            extras.other_choices.push(c);
            continue;
        }
        have_first = true;
        let Value::Object(mut c) = c else {
            return Err(FormatError::invalid(format!("choices[{k}]"), "an object"));
        };
        c.remove("index");
        finish_reason = take_opt_string(&mut c, "finish_reason", || {
            format!("choices[{k}].finish_reason")
        })?
        .map(|s| FinishReason::from_openai(&s));
        if let Some(Value::Object(mut msg)) = c.remove("message") {
            msg.remove("role");
            match msg.remove("content") {
                Some(Value::String(s)) if !s.is_empty() => content.push(ContentBlock::text(s)),
                Some(Value::Array(parts)) => {
                    for (j, p) in parts.into_iter().enumerate() {
                        content.push(parse_part(p, &|| {
                            format!("choices[{k}].message.content[{j}]")
                        })?);
                    }
                }
                _ => {}
            }
            if let Some(Value::String(r)) = msg.get("refusal") {
                content.push(ContentBlock::Refusal { text: r.clone() });
                msg.remove("refusal");
            }
            if let Some(Value::Array(calls)) = msg.remove("tool_calls") {
                for (j, tc) in calls.into_iter().enumerate() {
                    content.push(parse_tool_call(tc, &|| {
                        format!("choices[{k}].message.tool_calls[{j}]")
                    })?);
                }
            }
            extras.message = msg;
        }
        extras.choice = c;
    }
    extras.top = obj;
    Ok(ChatResponse {
        id,
        model,
        usage,
        finish_reason,
        stop_sequence: None,
        content,
        created,
        source: FMT,
        extras,
    })
}

fn usage_from_map(mut u: Map<String, Value>, extras: &mut Extras) -> Usage {
    let input_tokens = u
        .remove("prompt_tokens")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    let output_tokens = u
        .remove("completion_tokens")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    u.remove("total_tokens");
    let mut cached_input_tokens = 0;
    if let Some(Value::Object(mut d)) = u.remove("prompt_tokens_details") {
        cached_input_tokens = d
            .remove("cached_tokens")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        if !d.is_empty() {
            u.insert("prompt_tokens_details".to_owned(), Value::Object(d));
        }
    }
    extras.extend(u);
    Usage {
        input_tokens,
        output_tokens,
        cached_input_tokens,
    }
}

/// OpenAI `usage` object; `details` holds extra `prompt_tokens_details` keys.
struct UsageOut<'a> {
    usage: Usage,
    extras: Option<&'a Extras>,
}

impl Serialize for UsageOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Details<'a>(u64, Option<&'a Map<String, Value>>);
        impl Serialize for Details<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(None)?;
                m.serialize_entry("cached_tokens", &self.0)?;
                if let Some(rest) = self.1 {
                    for (k, v) in rest {
                        if k != "cached_tokens" {
                            m.serialize_entry(k, v)?;
                        }
                    }
                }
                m.end()
            }
        }
        let u = self.usage;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("prompt_tokens", &u.input_tokens)?;
        m.serialize_entry("completion_tokens", &u.output_tokens)?;
        m.serialize_entry(
            "total_tokens",
            &u.input_tokens.saturating_add(u.output_tokens),
        )?;
        let details_rest = self
            .extras
            .and_then(|e| e.get("prompt_tokens_details"))
            .and_then(Value::as_object);
        m.serialize_entry(
            "prompt_tokens_details",
            &Details(u.cached_input_tokens, details_rest),
        )?;
        if let Some(extras) = self.extras {
            for (k, v) in extras {
                if k != "prompt_tokens_details" {
                    m.serialize_entry(k, v)?;
                }
            }
        }
        m.end()
    }
}

pub(super) fn encode_response(resp: &ChatResponse, model: &str) -> Vec<u8> {
    let same = resp.source == FMT;
    let out = RespOut { resp, model, same };
    serde_json::to_vec(&out).unwrap_or_default()
}

struct RespOut<'a> {
    resp: &'a ChatResponse,
    model: &'a str,
    same: bool,
}

impl Serialize for RespOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.resp;
        let id: Cow<'_, str> = if r.id.is_empty() {
            Cow::Owned(synth_id("chatcmpl-"))
        } else {
            Cow::Borrowed(&r.id)
        };
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", &id)?;
        m.serialize_entry("object", "chat.completion")?;
        m.serialize_entry("created", &r.created.unwrap_or_else(now_unix))?;
        m.serialize_entry("model", self.model)?;
        m.serialize_entry("choices", &ChoicesOut(self))?;
        m.serialize_entry(
            "usage",
            &UsageOut {
                usage: r.usage,
                extras: self.same.then_some(&r.extras.usage),
            },
        )?;
        if self.same {
            for (k, v) in &r.extras.top {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

struct ChoicesOut<'a>(&'a RespOut<'a>);

impl Serialize for ChoicesOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ro = self.0;
        let r = ro.resp;
        let mut seq = s.serialize_seq(None)?;
        seq.serialize_element(&ChoiceOut(ro))?;
        if ro.same {
            for c in &r.extras.other_choices {
                seq.serialize_element(c)?;
            }
        }
        seq.end()
    }
}

struct ChoiceOut<'a>(&'a RespOut<'a>);

impl Serialize for ChoiceOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ro = self.0;
        let r = ro.resp;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("index", &0)?;
        m.serialize_entry("message", &ResponseMessageOut(ro))?;
        let extras = ro.same.then_some(&r.extras.choice);
        if !extras.is_some_and(|e| e.contains_key("logprobs")) {
            m.serialize_entry("logprobs", &Value::Null)?;
        }
        m.serialize_entry(
            "finish_reason",
            &r.finish_reason.as_ref().map(FinishReason::as_openai),
        )?;
        if let Some(extras) = extras {
            for (k, v) in extras {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

struct ResponseMessageOut<'a>(&'a RespOut<'a>);

impl Serialize for ResponseMessageOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ro = self.0;
        let r = ro.resp;
        let mut text: Option<Cow<'_, str>> = None;
        let mut refusal: Option<Cow<'_, str>> = None;
        let mut calls: Vec<&ContentBlock> = Vec::new();
        for b in &r.content {
            match b {
                ContentBlock::Text { text: t, .. } => append(&mut text, t),
                ContentBlock::Refusal { text: t } => append(&mut refusal, t),
                ContentBlock::ToolUse { .. } => calls.push(b),
                _ => {}
            }
        }
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("role", "assistant")?;
        m.serialize_entry("content", &text)?;
        m.serialize_entry("refusal", &refusal)?;
        if !calls.is_empty() {
            m.serialize_entry("tool_calls", &seq(&calls, |b| ToolCallOut(b, ro.same)))?;
        }
        if ro.same {
            for (k, v) in &r.extras.message {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

fn append<'a>(acc: &mut Option<Cow<'a, str>>, s: &'a str) {
    match acc {
        None => *acc = Some(Cow::Borrowed(s)),
        Some(c) => c.to_mut().push_str(s),
    }
}

// ---------------------------------------------------------------------------
// Streaming: decode
// ---------------------------------------------------------------------------

/// Borrowed where possible: id/model repeat in every chunk but are used once.
#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    created: Option<u64>,
    #[serde(default, borrow)]
    choices: Option<Vec<ChunkChoice<'a>>>,
    #[serde(default)]
    usage: Option<ChunkUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct ChunkChoice<'a> {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Option<ChunkDelta>,
    #[serde(default, borrow)]
    finish_reason: Option<Cow<'a, str>>,
    #[serde(default)]
    logprobs: Option<Value>,
}

#[derive(Deserialize)]
struct ChunkDelta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    /// De-facto reasoning field (DeepSeek, vLLM); tolerated if not a string.
    #[serde(default)]
    reasoning_content: Option<Value>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Deserialize)]
struct ToolCallDelta {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionDelta>,
}

#[derive(Deserialize)]
struct FunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct ChunkUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cur {
    Text,
    Refusal,
    Thinking,
    Tool(u32),
}

#[derive(Default)]
pub(super) struct StreamState {
    started: bool,
    next_index: u32,
    current: Option<(Cur, u32)>,
    /// OpenAI tool-call index → canonical block index.
    tools: Vec<(u32, u32)>,
}

impl StreamState {
    fn close(&mut self, out: &mut Vec<StreamEvent>) {
        if let Some((_, index)) = self.current.take() {
            out.push(StreamEvent::BlockStop { index });
        }
    }

    /// Block index for a text-like delta, opening a new block if needed.
    fn text_block(&mut self, cur: Cur, out: &mut Vec<StreamEvent>) -> u32 {
        if let Some((c, i)) = self.current {
            if c == cur {
                return i;
            }
        }
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        self.current = Some((cur, index));
        let block = match cur {
            Cur::Refusal => BlockKind::Refusal,
            Cur::Thinking => BlockKind::Thinking,
            Cur::Text | Cur::Tool(_) => BlockKind::Text,
        };
        out.push(StreamEvent::BlockStart { index, block });
        index
    }

    pub(super) fn on_event(
        &mut self,
        ev: SseEvent,
        st: &mut DecodeState<'_>,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), FormatError> {
        let data = ev.data.trim_ascii();
        if data == "[DONE]" {
            self.close(out);
            out.push(StreamEvent::MessageStop);
            *st.complete = true;
            return Ok(());
        }
        let chunk: Chunk<'_> = serde_json::from_str(data)
            .map_err(|e| FormatError::general(format!("malformed upstream stream chunk: {e}")))?;
        if let Some(err) = chunk.error.as_ref().filter(|e| !e.is_null()) {
            return Err(upstream_error(err));
        }
        if ev.event.as_deref() == Some("error") {
            return Err(FormatError::general(format!("upstream error: {data}")));
        }
        if !self.started {
            self.started = true;
            out.push(StreamEvent::MessageStart {
                id: chunk.id.map(Cow::into_owned).unwrap_or_default(),
                model: chunk.model.map(Cow::into_owned).unwrap_or_default(),
                created: chunk.created,
                usage: Usage::default(),
            });
        }
        let mut raw: Option<Value> = None;
        for (k, c) in chunk.choices.into_iter().flatten().enumerate() {
            if c.index != 0 {
                if raw.is_none() {
                    raw = serde_json::from_str(data).ok();
                }
                let choice = raw
                    .as_ref()
                    .and_then(|r| r.get("choices"))
                    .and_then(|cs| cs.get(k))
                    .cloned()
                    .unwrap_or(Value::Null);
                out.push(StreamEvent::OtherChoice(choice));
                continue;
            }
            if let Some(lp) = c.logprobs {
                out.push(StreamEvent::Logprobs(lp));
            }
            if let Some(d) = c.delta {
                self.on_delta(d, st, out);
            }
            if let Some(fr) = c.finish_reason {
                self.close(out);
                out.push(StreamEvent::MessageDelta {
                    finish_reason: Some(FinishReason::from_openai(&fr)),
                    stop_sequence: None,
                });
            }
        }
        if let Some(u) = chunk.usage {
            let usage = Usage {
                input_tokens: u.prompt_tokens.unwrap_or(0),
                output_tokens: u.completion_tokens.unwrap_or(0),
                cached_input_tokens: u
                    .prompt_tokens_details
                    .and_then(|d| d.cached_tokens)
                    .unwrap_or(0),
            };
            *st.usage = usage;
            *st.output_final = true;
            out.push(StreamEvent::Usage(usage));
        }
        Ok(())
    }

    fn on_delta(&mut self, d: ChunkDelta, st: &mut DecodeState<'_>, out: &mut Vec<StreamEvent>) {
        if let Some(Value::String(t)) = d.reasoning_content {
            if !t.is_empty() {
                let index = self.text_block(Cur::Thinking, out);
                st.content_delta();
                out.push(StreamEvent::ThinkingDelta { index, thinking: t });
            }
        }
        if let Some(t) = d.content.filter(|t| !t.is_empty()) {
            let index = self.text_block(Cur::Text, out);
            st.content_delta();
            out.push(StreamEvent::TextDelta { index, text: t });
        }
        if let Some(t) = d.refusal.filter(|t| !t.is_empty()) {
            let index = self.text_block(Cur::Refusal, out);
            st.content_delta();
            out.push(StreamEvent::TextDelta { index, text: t });
        }
        for tc in d.tool_calls.into_iter().flatten() {
            let tc_index = tc
                .index
                .unwrap_or_else(|| match (&tc.id, self.tools.last()) {
                    (None, Some(&(last, _))) => last,
                    _ => self.tools.len() as u32,
                });
            let (name, args) = match tc.function {
                Some(f) => (f.name, f.arguments),
                None => (None, None),
            };
            let index = match self.tools.iter().find(|(t, _)| *t == tc_index) {
                Some(&(_, b)) => b,
                None => {
                    self.close(out);
                    let index = self.next_index;
                    self.next_index += 1;
                    self.current = Some((Cur::Tool(tc_index), index));
                    self.tools.push((tc_index, index));
                    *st.saw_content = true;
                    out.push(StreamEvent::BlockStart {
                        index,
                        block: BlockKind::ToolUse {
                            id: tc.id.unwrap_or_default(),
                            name: name.unwrap_or_default(),
                        },
                    });
                    index
                }
            };
            if let Some(a) = args.filter(|a| !a.is_empty()) {
                st.content_delta();
                out.push(StreamEvent::ToolInputDelta {
                    index,
                    partial_json: a,
                });
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Streaming: encode
// ---------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum OutBlock {
    Text,
    Refusal,
    Thinking,
    Tool(u32),
    Ignore,
}

pub(super) struct StreamEncoder {
    model: String,
    include_usage: bool,
    id: String,
    created: u64,
    started: bool,
    finish_sent: bool,
    done: bool,
    usage: Usage,
    pending_logprobs: Option<Value>,
    /// Canonical block index → what it becomes here.
    blocks: Vec<(u32, OutBlock)>,
    next_tool: u32,
}

#[derive(Serialize)]
struct ChunkOut<'a, C: Serialize> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: C,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<UsageOut<'a>>>,
}

#[derive(Serialize)]
struct ChoiceDeltaOut<'a> {
    index: u32,
    delta: DeltaOut<'a>,
    logprobs: Option<Value>,
    finish_reason: Option<&'a str>,
}

#[derive(Serialize, Default)]
struct DeltaOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallDeltaOut<'a>; 1]>,
}

#[derive(Serialize)]
struct ToolCallDeltaOut<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    ty: Option<&'a str>,
    function: FunctionDeltaOut<'a>,
}

#[derive(Serialize)]
struct FunctionDeltaOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}

#[derive(Serialize)]
struct ErrorOut<'a> {
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    ty: &'a str,
    param: Option<&'a str>,
    code: &'a str,
}

impl StreamEncoder {
    pub(super) fn new(model: &str, include_usage: bool) -> Self {
        StreamEncoder {
            model: model.to_owned(),
            include_usage,
            id: String::new(),
            created: 0,
            started: false,
            finish_sent: false,
            done: false,
            usage: Usage::default(),
            pending_logprobs: None,
            blocks: Vec::new(),
            next_tool: 0,
        }
    }

    fn write_chunk(&mut self, out: &mut BytesMut, delta: DeltaOut<'_>, finish: Option<&str>) {
        let choice = ChoiceDeltaOut {
            index: 0,
            delta,
            logprobs: self.pending_logprobs.take(),
            finish_reason: finish,
        };
        let chunk = ChunkOut {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: [choice],
            usage: self.include_usage.then_some(None),
        };
        write_event(out, None, &chunk);
    }

    fn ensure_started(&mut self, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        if self.id.is_empty() {
            self.id = synth_id("chatcmpl-");
        }
        if self.created == 0 {
            self.created = now_unix();
        }
        let delta = DeltaOut {
            role: Some("assistant"),
            content: Some(""),
            refusal: Some(None),
            ..DeltaOut::default()
        };
        self.write_chunk(out, delta, None);
    }

    fn block(&self, index: u32) -> Option<OutBlock> {
        self.blocks
            .iter()
            .rev()
            .find(|(i, _)| *i == index)
            .map(|&(_, b)| b)
    }

    pub(super) fn encode(&mut self, ev: &StreamEvent, out: &mut BytesMut) {
        if self.done {
            return;
        }
        match ev {
            StreamEvent::MessageStart {
                id, created, usage, ..
            } => {
                if !self.started {
                    self.id.clone_from(id);
                    self.created = created.unwrap_or(0);
                    self.usage = *usage;
                }
                self.ensure_started(out);
            }
            StreamEvent::BlockStart { index, block } => {
                self.ensure_started(out);
                let kind = match block {
                    BlockKind::Text => OutBlock::Text,
                    BlockKind::Refusal => OutBlock::Refusal,
                    BlockKind::Thinking => OutBlock::Thinking,
                    BlockKind::Other(_) => OutBlock::Ignore,
                    BlockKind::ToolUse { id, name } => {
                        let k = self.next_tool;
                        self.next_tool += 1;
                        let delta = DeltaOut {
                            tool_calls: Some([ToolCallDeltaOut {
                                index: k,
                                id: Some(id),
                                ty: Some("function"),
                                function: FunctionDeltaOut {
                                    name: Some(name),
                                    arguments: "",
                                },
                            }]),
                            ..DeltaOut::default()
                        };
                        self.write_chunk(out, delta, None);
                        OutBlock::Tool(k)
                    }
                };
                self.blocks.push((*index, kind));
            }
            StreamEvent::TextDelta { index, text } => {
                self.ensure_started(out);
                let delta = match self.block(*index).unwrap_or(OutBlock::Text) {
                    OutBlock::Refusal => DeltaOut {
                        refusal: Some(Some(text)),
                        ..DeltaOut::default()
                    },
                    OutBlock::Thinking => DeltaOut {
                        reasoning_content: Some(text),
                        ..DeltaOut::default()
                    },
                    OutBlock::Ignore => return,
                    OutBlock::Text | OutBlock::Tool(_) => DeltaOut {
                        content: Some(text),
                        ..DeltaOut::default()
                    },
                };
                self.write_chunk(out, delta, None);
            }
            StreamEvent::ThinkingDelta { thinking, .. } => {
                self.ensure_started(out);
                let delta = DeltaOut {
                    reasoning_content: Some(thinking),
                    ..DeltaOut::default()
                };
                self.write_chunk(out, delta, None);
            }
            StreamEvent::ToolInputDelta {
                index,
                partial_json,
            } => {
                if let Some(OutBlock::Tool(k)) = self.block(*index) {
                    let delta = DeltaOut {
                        tool_calls: Some([ToolCallDeltaOut {
                            index: k,
                            id: None,
                            ty: None,
                            function: FunctionDeltaOut {
                                name: None,
                                arguments: partial_json,
                            },
                        }]),
                        ..DeltaOut::default()
                    };
                    self.write_chunk(out, delta, None);
                }
            }
            StreamEvent::MessageDelta {
                finish_reason: Some(fr),
                ..
            } => {
                self.ensure_started(out);
                if !self.finish_sent {
                    self.finish_sent = true;
                    self.write_chunk(out, DeltaOut::default(), Some(fr.as_openai()));
                }
            }
            StreamEvent::Usage(u) => self.usage = *u,
            StreamEvent::Logprobs(v) => self.pending_logprobs = Some(v.clone()),
            StreamEvent::OtherChoice(c) => {
                self.ensure_started(out);
                let chunk = ChunkOut {
                    id: &self.id,
                    object: "chat.completion.chunk",
                    created: self.created,
                    model: &self.model,
                    choices: [c],
                    usage: self.include_usage.then_some(None),
                };
                write_event(out, None, &chunk);
            }
            StreamEvent::MessageStop => self.finish(out),
            StreamEvent::MessageDelta { .. }
            | StreamEvent::SignatureDelta { .. }
            | StreamEvent::OtherDelta { .. }
            | StreamEvent::BlockStop { .. }
            | StreamEvent::Ping => {}
        }
    }

    pub(super) fn finish(&mut self, out: &mut BytesMut) {
        if self.done {
            return;
        }
        self.ensure_started(out);
        if !self.finish_sent {
            self.finish_sent = true;
            self.write_chunk(out, DeltaOut::default(), Some("stop"));
        }
        if self.include_usage {
            let chunk = ChunkOut {
                id: &self.id,
                object: "chat.completion.chunk",
                created: self.created,
                model: &self.model,
                choices: [(); 0],
                usage: Some(Some(UsageOut {
                    usage: self.usage,
                    extras: None,
                })),
            };
            write_event(out, None, &chunk);
        }
        out.put_slice(b"data: [DONE]\n\n");
        self.done = true;
    }

    pub(super) fn error(&mut self, error_type: &str, message: &str, out: &mut BytesMut) {
        if self.done {
            return;
        }
        let ev = ErrorOut {
            error: ErrorBody {
                message,
                ty: error_type,
                param: None,
                code: error_type,
            },
        };
        write_event(out, None, &ev);
        self.done = true;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
