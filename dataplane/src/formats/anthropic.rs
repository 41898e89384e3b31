//! Anthropic Messages wire format.

use std::borrow::Cow;

use bytes::BytesMut;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use super::sse::{write_event, SseEvent};
use super::{
    block_path, check_extras, message_path, parse_body_object, synth_id, take_messages, take_model,
    take_opt_bool, take_opt_f64, take_opt_pos_u32, take_opt_string, take_string, type_of,
    ApiFormat, BlockKind, ChatRequest, ChatResponse, ContentBlock, DecodeState, Extras,
    FinishReason, FormatError, ImageSource, Message, ResponseExtras, Role, StreamEvent, Tool,
    ToolChoice, ToolInput, Usage,
};

const FMT: ApiFormat = ApiFormat::Anthropic;

/// Known Anthropic block types the IR keeps verbatim.
const RAW_BLOCK_TYPES: &[&str] = &[
    "thinking",
    "redacted_thinking",
    "document",
    "search_result",
    "server_tool_use",
    "web_search_tool_result",
    "web_fetch_tool_result",
    "code_execution_tool_result",
    "bash_code_execution_tool_result",
    "text_editor_code_execution_tool_result",
    "mcp_tool_use",
    "mcp_tool_result",
    "container_upload",
];

// ---------------------------------------------------------------------------
// Request parsing
// ---------------------------------------------------------------------------

pub(super) fn parse_request(body: &[u8]) -> Result<ChatRequest, FormatError> {
    let mut obj = parse_body_object(body)?;
    let model = take_model(&mut obj)?;
    let raw_messages = take_messages(&mut obj)?;
    let stream = take_opt_bool(&mut obj, "stream")?.unwrap_or(false);
    let max_tokens = take_opt_pos_u32(&mut obj, "max_tokens")?;
    let temperature = take_opt_f64(&mut obj, "temperature")?;
    let top_p = take_opt_f64(&mut obj, "top_p")?;
    let stop = match obj.remove("stop_sequences") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s),
                _ => Err(FormatError::invalid(
                    format!("stop_sequences[{i}]"),
                    "a string",
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(FormatError::invalid(
                "stop_sequences",
                "an array of strings",
            ))
        }
    };
    let user = match obj.remove("metadata") {
        None | Some(Value::Null) => None,
        Some(Value::Object(mut m)) => {
            let user = take_opt_string(&mut m, "user_id", || "metadata.user_id".to_owned())?;
            if !m.is_empty() {
                obj.insert("metadata".to_owned(), Value::Object(m));
            }
            user
        }
        Some(_) => return Err(FormatError::invalid("metadata", "an object")),
    };
    let tools = parse_tools(obj.remove("tools"))?;
    let (tool_choice, parallel_tool_calls) = parse_tool_choice(obj.remove("tool_choice"))?;

    let mut messages = Vec::with_capacity(raw_messages.len() + 1);
    match obj.remove("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(Message {
            role: Role::System,
            content: vec![ContentBlock::text(s)],
            extras: Extras::new(),
        }),
        Some(Value::Array(blocks)) => {
            let mut content = Vec::with_capacity(blocks.len());
            for (j, b) in blocks.into_iter().enumerate() {
                let path = || format!("system[{j}]");
                let block = parse_block(b, &path)?;
                if !matches!(block, ContentBlock::Text { .. }) {
                    return Err(FormatError::new(
                        format!("`system[{j}].type` must be \"text\""),
                        format!("system[{j}].type"),
                    ));
                }
                content.push(block);
            }
            messages.push(Message {
                role: Role::System,
                content,
                extras: Extras::new(),
            });
        }
        Some(_) => {
            return Err(FormatError::invalid(
                "system",
                "a string or an array of text blocks",
            ))
        }
    }
    for (i, v) in raw_messages.into_iter().enumerate() {
        messages.push(parse_message(i, v)?);
    }
    Ok(ChatRequest {
        model,
        stream,
        include_usage: false,
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
        legacy_max_tokens: false,
        extras: obj,
    })
}

fn parse_message(i: usize, v: Value) -> Result<Message, FormatError> {
    let Value::Object(mut m) = v else {
        return Err(FormatError::invalid(format!("messages[{i}]"), "an object"));
    };
    let role = match m.remove("role") {
        Some(Value::String(r)) => match r.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            _ => {
                return Err(FormatError::new(
                    format!("`messages[{i}].role` must be \"user\" or \"assistant\" (got {r:?})"),
                    format!("messages[{i}].role"),
                ))
            }
        },
        None | Some(Value::Null) => {
            return Err(FormatError::required(format!("messages[{i}].role")))
        }
        Some(_) => {
            return Err(FormatError::invalid(
                format!("messages[{i}].role"),
                "a string",
            ))
        }
    };
    let content = match m.remove("content") {
        Some(Value::String(s)) => vec![ContentBlock::text(s)],
        Some(Value::Array(blocks)) => blocks
            .into_iter()
            .enumerate()
            .map(|(j, b)| parse_block(b, &|| format!("messages[{i}].content[{j}]")))
            .collect::<Result<_, _>>()?,
        None | Some(Value::Null) => {
            return Err(FormatError::required(format!("messages[{i}].content")))
        }
        Some(_) => {
            return Err(FormatError::invalid(
                format!("messages[{i}].content"),
                "a string or an array of content blocks",
            ))
        }
    };
    Ok(Message {
        role,
        content,
        extras: m,
    })
}

fn parse_block(v: Value, path: &dyn Fn() -> String) -> Result<ContentBlock, FormatError> {
    let Value::Object(mut b) = v else {
        return Err(FormatError::invalid(path(), "an object"));
    };
    let ty = match b.get("type") {
        Some(Value::String(t)) => t.as_str(),
        None | Some(Value::Null) => return Err(FormatError::required(format!("{}.type", path()))),
        Some(_) => return Err(FormatError::invalid(format!("{}.type", path()), "a string")),
    };
    if RAW_BLOCK_TYPES.contains(&ty)
        || (ty == "image"
            && !matches!(
                b.get("source").and_then(type_of),
                Some("base64" | "url") | None
            ))
    {
        return Ok(ContentBlock::Raw {
            format: FMT,
            value: Value::Object(b),
        });
    }
    match ty {
        "text" => {
            b.remove("type");
            let text = take_string(&mut b, "text", || format!("{}.text", path()))?;
            Ok(ContentBlock::Text { text, extras: b })
        }
        "image" => {
            b.remove("type");
            let mut src = match b.remove("source") {
                Some(Value::Object(s)) => s,
                None | Some(Value::Null) => {
                    return Err(FormatError::required(format!("{}.source", path())))
                }
                Some(_) => {
                    return Err(FormatError::invalid(
                        format!("{}.source", path()),
                        "an object",
                    ))
                }
            };
            let source = match src.get("type").and_then(Value::as_str) {
                Some("url") => ImageSource::Url {
                    url: take_string(&mut src, "url", || format!("{}.source.url", path()))?,
                },
                _ => ImageSource::Base64 {
                    media_type: take_string(&mut src, "media_type", || {
                        format!("{}.source.media_type", path())
                    })?,
                    data: take_string(&mut src, "data", || format!("{}.source.data", path()))?,
                },
            };
            Ok(ContentBlock::Image { source, extras: b })
        }
        "tool_use" => {
            b.remove("type");
            let id = take_string(&mut b, "id", || format!("{}.id", path()))?;
            let name = take_string(&mut b, "name", || format!("{}.name", path()))?;
            let input = match b.remove("input") {
                Some(o @ Value::Object(_)) => o,
                None | Some(Value::Null) => {
                    return Err(FormatError::required(format!("{}.input", path())))
                }
                Some(_) => {
                    return Err(FormatError::invalid(
                        format!("{}.input", path()),
                        "an object",
                    ))
                }
            };
            Ok(ContentBlock::ToolUse {
                id,
                name,
                input: ToolInput::Json(input),
                extras: b,
            })
        }
        "tool_result" => {
            b.remove("type");
            let tool_use_id =
                take_string(&mut b, "tool_use_id", || format!("{}.tool_use_id", path()))?;
            let content = match b.remove("content") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::String(s)) => vec![ContentBlock::text(s)],
                Some(Value::Array(inner)) => inner
                    .into_iter()
                    .enumerate()
                    .map(|(k, ib)| parse_block(ib, &|| format!("{}.content[{k}]", path())))
                    .collect::<Result<_, _>>()?,
                Some(_) => {
                    return Err(FormatError::invalid(
                        format!("{}.content", path()),
                        "a string or an array of content blocks",
                    ))
                }
            };
            let is_error = match b.remove("is_error") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(e)) => e,
                Some(_) => {
                    return Err(FormatError::invalid(
                        format!("{}.is_error", path()),
                        "a boolean",
                    ))
                }
            };
            Ok(ContentBlock::ToolResult {
                tool_use_id,
                content,
                is_error,
                extras: b,
            })
        }
        other => {
            let param = format!("{}.type", path());
            Err(FormatError::new(
                format!("unsupported content block type {other:?} at `{param}`"),
                param,
            ))
        }
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
        // Server tools (web_search_20250305, bash_20250124, ...) are typed and
        // carry no input_schema.
        match t.get("type") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == "custom" => {}
            Some(Value::String(_)) => {
                tools.push(Tool::Raw {
                    format: FMT,
                    value: Value::Object(t),
                });
                continue;
            }
            Some(_) => return Err(FormatError::invalid(format!("tools[{i}].type"), "a string")),
        }
        let name = take_string(&mut t, "name", || format!("tools[{i}].name"))?;
        let description =
            take_opt_string(&mut t, "description", || format!("tools[{i}].description"))?;
        let parameters = match t.remove("input_schema") {
            Some(o @ Value::Object(_)) => Some(o),
            None | Some(Value::Null) => {
                return Err(FormatError::required(format!("tools[{i}].input_schema")))
            }
            Some(_) => {
                return Err(FormatError::invalid(
                    format!("tools[{i}].input_schema"),
                    "an object",
                ))
            }
        };
        tools.push(Tool::Function {
            name,
            description,
            parameters,
            extras: t,
        });
    }
    Ok(tools)
}

fn parse_tool_choice(v: Option<Value>) -> Result<(Option<ToolChoice>, Option<bool>), FormatError> {
    let mut o = match v {
        None | Some(Value::Null) => return Ok((None, None)),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(FormatError::invalid("tool_choice", "an object")),
    };
    let parallel = match o.remove("disable_parallel_tool_use") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(d)) => Some(!d),
        Some(_) => {
            return Err(FormatError::invalid(
                "tool_choice.disable_parallel_tool_use",
                "a boolean",
            ))
        }
    };
    let choice = match o.get("type").and_then(Value::as_str) {
        Some("auto") => ToolChoice::Auto,
        Some("any") => ToolChoice::Required,
        Some("none") => ToolChoice::None,
        Some("tool") => ToolChoice::Tool {
            name: take_string(&mut o, "name", || "tool_choice.name".to_owned())?,
        },
        _ => {
            return Err(FormatError::invalid(
                "tool_choice.type",
                "one of \"auto\", \"any\", \"tool\", \"none\"",
            ))
        }
    };
    Ok((Some(choice), parallel))
}

// ---------------------------------------------------------------------------
// Request encoding
// ---------------------------------------------------------------------------

struct OutMsg<'a> {
    role: &'static str,
    blocks: Vec<&'a ContentBlock>,
}

pub(super) fn encode_request(
    req: &ChatRequest,
    model: &str,
    default_max_tokens: u32,
) -> Result<Vec<u8>, FormatError> {
    let same = req.source == FMT;
    check_extras(&req.extras, req.source, FMT, String::new)?;
    if !same {
        if let Some(t) = req.temperature {
            if !(0.0..=1.0).contains(&t) {
                return Err(FormatError::new(
                    format!("`temperature` {t} cannot be translated to anthropic (range 0..=1)"),
                    "temperature",
                ));
            }
        }
    }
    for (i, t) in req.tools.iter().enumerate() {
        match t {
            Tool::Function { extras, .. } => {
                check_extras(extras, req.source, FMT, || format!("tools[{i}].function."))?
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
    let (system, messages) = plan_messages(req)?;
    super::to_json_vec(&ReqOut {
        req,
        model,
        same,
        max_tokens: req.max_tokens.unwrap_or(default_max_tokens),
        system,
        messages,
    })
}

type Planned<'a> = (Vec<&'a ContentBlock>, Vec<OutMsg<'a>>);

fn plan_messages(req: &ChatRequest) -> Result<Planned<'_>, FormatError> {
    let same = req.source == FMT;
    let mut system = Vec::new();
    let mut out: Vec<OutMsg<'_>> = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        check_extras(&m.extras, req.source, FMT, || {
            format!("{}.", message_path(req, i))
        })?;
        if m.role.is_system() {
            for (j, b) in m.content.iter().enumerate() {
                match b {
                    ContentBlock::Text { extras, .. } => {
                        check_extras(extras, req.source, FMT, || {
                            format!("{}.", block_path(req, i, j))
                        })?;
                        system.push(b);
                    }
                    _ => {
                        return Err(FormatError::new(
                            format!(
                            "`{}` cannot be translated to anthropic: system content must be text",
                            block_path(req, i, j)
                        ),
                            block_path(req, i, j),
                        ))
                    }
                }
            }
            continue;
        }
        let role = if m.role == Role::Assistant {
            "assistant"
        } else {
            "user"
        };
        let mut blocks = Vec::with_capacity(m.content.len());
        let mut tool_call_no = 0usize;
        for (j, b) in m.content.iter().enumerate() {
            let path = || block_path(req, i, j);
            match b {
                ContentBlock::Text { text, extras } => {
                    check_extras(extras, req.source, FMT, || format!("{}.", path()))?;
                    if text.is_empty() && !same {
                        continue;
                    }
                }
                ContentBlock::Refusal { .. } => {}
                ContentBlock::Image { source, extras } => {
                    check_extras(extras, req.source, FMT, || format!("{}.", path()))?;
                    check_image(source, &path)?;
                }
                ContentBlock::ToolUse { input, extras, .. } => {
                    let call_path = || {
                        if req.source == ApiFormat::OpenAi {
                            format!("messages[{i}].tool_calls[{tool_call_no}]")
                        } else {
                            path()
                        }
                    };
                    check_extras(extras, req.source, FMT, || format!("{}.", call_path()))?;
                    match input {
                        ToolInput::Json(Value::Object(_)) => {}
                        ToolInput::Json(_) => {
                            return Err(FormatError::new(
                                format!(
                                    "`{}.function.arguments` must be a JSON object for anthropic",
                                    call_path()
                                ),
                                format!("{}.function.arguments", call_path()),
                            ))
                        }
                        ToolInput::Invalid(_) => {
                            return Err(FormatError::new(
                                format!("`{}.function.arguments` is not valid JSON", call_path()),
                                format!("{}.function.arguments", call_path()),
                            ))
                        }
                    }
                    tool_call_no += 1;
                }
                ContentBlock::ToolResult {
                    content, extras, ..
                } => {
                    let result_path = || {
                        if m.role == Role::Tool {
                            message_path(req, i)
                        } else {
                            path()
                        }
                    };
                    check_extras(extras, req.source, FMT, || format!("{}.", result_path()))?;
                    for (k, ib) in content.iter().enumerate() {
                        let inner_path = || format!("{}.content[{k}]", result_path());
                        match ib {
                            ContentBlock::Text { extras, .. } => {
                                check_extras(extras, req.source, FMT, || {
                                    format!("{}.", inner_path())
                                })?
                            }
                            ContentBlock::Image { source, extras } => {
                                check_extras(extras, req.source, FMT, || {
                                    format!("{}.", inner_path())
                                })?;
                                check_image(source, &inner_path)?;
                            }
                            ContentBlock::Raw { format, .. } if *format == FMT => {}
                            _ => return Err(FormatError::untranslatable(inner_path(), FMT)),
                        }
                    }
                }
                ContentBlock::Raw { format, .. } => {
                    if *format != FMT {
                        return Err(FormatError::untranslatable(path(), FMT));
                    }
                }
            }
            blocks.push(b);
        }
        if !same {
            if blocks.is_empty() {
                continue;
            }
            // Anthropic wants alternating roles: merge consecutive same-role messages.
            if let Some(prev) = out.last_mut() {
                if prev.role == role {
                    prev.blocks.extend(blocks);
                    continue;
                }
            }
        }
        out.push(OutMsg { role, blocks });
    }
    if out.is_empty() {
        return Err(FormatError::new(
            "anthropic requires at least one user or assistant message",
            "messages",
        ));
    }
    Ok((system, out))
}

fn check_image(source: &ImageSource, path: &dyn Fn() -> String) -> Result<(), FormatError> {
    if let ImageSource::Url { url } = source {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(FormatError::new(
                format!(
                    "`{}` cannot be translated to anthropic: only base64 data URLs and http(s) URLs are supported",
                    path()
                ),
                path(),
            ));
        }
    }
    Ok(())
}

struct ReqOut<'a> {
    req: &'a ChatRequest,
    model: &'a str,
    same: bool,
    max_tokens: u32,
    system: Vec<&'a ContentBlock>,
    messages: Vec<OutMsg<'a>>,
}

impl Serialize for ReqOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.req;
        let same = self.same;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("model", self.model)?;
        if !self.system.is_empty() {
            m.serialize_entry("system", &BlocksOut(&self.system, same))?;
        }
        m.serialize_entry("messages", &MessagesOut(&self.messages, same))?;
        m.serialize_entry("max_tokens", &self.max_tokens)?;
        if let Some(t) = r.temperature {
            m.serialize_entry("temperature", &t)?;
        }
        if let Some(t) = r.top_p {
            m.serialize_entry("top_p", &t)?;
        }
        if !r.stop.is_empty() {
            m.serialize_entry("stop_sequences", &r.stop)?;
        }
        if r.stream {
            m.serialize_entry("stream", &true)?;
        }
        let meta_rest = if same {
            r.extras.get("metadata").and_then(Value::as_object)
        } else {
            None
        };
        if r.user.is_some() || meta_rest.is_some() {
            m.serialize_entry("metadata", &MetadataOut(r.user.as_deref(), meta_rest))?;
        }
        if !r.tools.is_empty() {
            m.serialize_entry("tools", &ToolsOut(&r.tools, same))?;
        }
        let disable_parallel = r.parallel_tool_calls == Some(false);
        match &r.tool_choice {
            Some(tc) => m.serialize_entry("tool_choice", &ToolChoiceOut(tc, disable_parallel))?,
            None if disable_parallel && !r.tools.is_empty() => {
                m.serialize_entry("tool_choice", &ToolChoiceOut(&ToolChoice::Auto, true))?
            }
            None => {}
        }
        if same {
            for (k, v) in &r.extras {
                if k != "metadata" {
                    m.serialize_entry(k, v)?;
                }
            }
        }
        m.end()
    }
}

struct MetadataOut<'a>(Option<&'a str>, Option<&'a Map<String, Value>>);

impl Serialize for MetadataOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        if let Some(u) = self.0 {
            m.serialize_entry("user_id", u)?;
        }
        if let Some(rest) = self.1 {
            for (k, v) in rest {
                if k != "user_id" {
                    m.serialize_entry(k, v)?;
                }
            }
        }
        m.end()
    }
}

struct MessagesOut<'a>(&'a [OutMsg<'a>], bool);

impl Serialize for MessagesOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|msg| MsgOut(msg, self.1)))
    }
}

struct MsgOut<'a>(&'a OutMsg<'a>, bool);

impl Serialize for MsgOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("role", self.0.role)?;
        m.serialize_entry("content", &BlocksOut(&self.0.blocks, self.1))?;
        m.end()
    }
}

/// A string for a single plain text block, else an array of blocks.
struct BlocksOut<'a>(&'a [&'a ContentBlock], bool);

impl Serialize for BlocksOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if let [single] = self.0 {
            if let Some(t) = single.plain_text(self.1) {
                return s.serialize_str(t);
            }
        }
        s.collect_seq(self.0.iter().map(|b| BlockOut(b, self.1)))
    }
}

struct BlockOut<'a>(&'a ContentBlock, bool);

impl Serialize for BlockOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let same = self.1;
        if let ContentBlock::Raw { value, .. } = self.0 {
            return value.serialize(s);
        }
        let mut m = s.serialize_map(None)?;
        let extras = match self.0 {
            ContentBlock::Raw { .. } => None,
            ContentBlock::Text { text, extras } => {
                m.serialize_entry("type", "text")?;
                m.serialize_entry("text", text)?;
                Some(extras)
            }
            ContentBlock::Refusal { text } => {
                m.serialize_entry("type", "text")?;
                m.serialize_entry("text", text)?;
                None
            }
            ContentBlock::Image { source, extras } => {
                m.serialize_entry("type", "image")?;
                m.serialize_entry("source", &SourceOut(source))?;
                Some(extras)
            }
            ContentBlock::ToolUse {
                id,
                name,
                input,
                extras,
            } => {
                m.serialize_entry("type", "tool_use")?;
                m.serialize_entry("id", id)?;
                m.serialize_entry("name", name)?;
                match input {
                    ToolInput::Json(v) => m.serialize_entry("input", v)?,
                    ToolInput::Invalid(_) => m.serialize_entry("input", &Map::new())?,
                }
                Some(extras)
            }
            ContentBlock::ToolResult {
                tool_use_id,
                content,
                is_error,
                extras,
            } => {
                m.serialize_entry("type", "tool_result")?;
                m.serialize_entry("tool_use_id", tool_use_id)?;
                if !content.is_empty() {
                    let refs: Vec<&ContentBlock> = content.iter().collect();
                    m.serialize_entry("content", &BlocksOut(&refs, same))?;
                }
                if *is_error {
                    m.serialize_entry("is_error", &true)?;
                }
                Some(extras)
            }
        };
        if let (true, Some(extras)) = (same, extras) {
            for (k, v) in extras {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

struct SourceOut<'a>(&'a ImageSource);

impl Serialize for SourceOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(3))?;
        match self.0 {
            ImageSource::Base64 { media_type, data } => {
                m.serialize_entry("type", "base64")?;
                m.serialize_entry("media_type", media_type)?;
                m.serialize_entry("data", data)?;
            }
            ImageSource::Url { url } => {
                m.serialize_entry("type", "url")?;
                m.serialize_entry("url", url)?;
            }
        }
        m.end()
    }
}

struct ToolsOut<'a>(&'a [Tool], bool);

impl Serialize for ToolsOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|t| ToolOut(t, self.1)))
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
                let mut m = s.serialize_map(None)?;
                m.serialize_entry("name", name)?;
                if let Some(d) = description {
                    m.serialize_entry("description", d)?;
                }
                match parameters {
                    Some(p) => m.serialize_entry("input_schema", p)?,
                    None => m.serialize_entry("input_schema", &EmptySchema)?,
                }
                if self.1 {
                    for (k, v) in extras {
                        m.serialize_entry(k, v)?;
                    }
                }
                m.end()
            }
        }
    }
}

struct EmptySchema;

impl Serialize for EmptySchema {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("type", "object")?;
        m.serialize_entry("properties", &Map::new())?;
        m.end()
    }
}

struct ToolChoiceOut<'a>(&'a ToolChoice, bool);

impl Serialize for ToolChoiceOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (ty, name) = match self.0 {
            ToolChoice::Auto => ("auto", None),
            ToolChoice::None => ("none", None),
            ToolChoice::Required => ("any", None),
            ToolChoice::Tool { name } => ("tool", Some(name)),
            ToolChoice::Raw { value, .. } => return value.serialize(s),
        };
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("type", ty)?;
        if let Some(n) = name {
            m.serialize_entry("name", n)?;
        }
        if self.1 && ty != "none" {
            m.serialize_entry("disable_parallel_tool_use", &true)?;
        }
        m.end()
    }
}

// ---------------------------------------------------------------------------
// Non-streaming responses
// ---------------------------------------------------------------------------

fn upstream_error(err: Option<&Value>) -> FormatError {
    let msg = err
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("unknown error");
    match err.and_then(type_of) {
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
    if obj.get("type").and_then(Value::as_str) == Some("error") {
        return Err(upstream_error(obj.get("error")));
    }
    obj.remove("type");
    obj.remove("role");
    let id = take_opt_string(&mut obj, "id", || "id".to_owned())?.unwrap_or_default();
    let model = take_opt_string(&mut obj, "model", || "model".to_owned())?.unwrap_or_default();
    let blocks = match obj.remove("content") {
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => return Err(FormatError::required("content")),
        Some(_) => return Err(FormatError::invalid("content", "an array")),
    };
    let mut content = Vec::with_capacity(blocks.len());
    for (j, b) in blocks.into_iter().enumerate() {
        // Response blocks may be of types we do not know yet: keep them raw.
        let known = matches!(type_of(&b), Some("text" | "tool_use"));
        if known {
            content.push(parse_block(b, &|| format!("content[{j}]"))?);
        } else {
            content.push(ContentBlock::Raw {
                format: FMT,
                value: b,
            });
        }
    }
    let finish_reason = take_opt_string(&mut obj, "stop_reason", || "stop_reason".to_owned())?
        .map(|s| FinishReason::from_anthropic(&s));
    let stop_sequence = take_opt_string(&mut obj, "stop_sequence", || "stop_sequence".to_owned())?;
    let mut extras = ResponseExtras::default();
    let usage = match obj.remove("usage") {
        Some(Value::Object(u)) => usage_from_map(u, &mut extras.usage),
        _ => Usage::default(),
    };
    extras.top = obj;
    Ok(ChatResponse {
        id,
        model,
        usage,
        finish_reason,
        stop_sequence,
        content,
        created: None,
        source: FMT,
        extras,
    })
}

fn usage_from_map(mut u: Map<String, Value>, extras: &mut Extras) -> Usage {
    let mut get = |k: &str| u.remove(k).and_then(|v| v.as_u64()).unwrap_or(0);
    let input = get("input_tokens");
    let output = get("output_tokens");
    let cache_read = get("cache_read_input_tokens");
    let cache_creation = get("cache_creation_input_tokens");
    if cache_creation > 0 {
        u.insert(
            "cache_creation_input_tokens".to_owned(),
            Value::from(cache_creation),
        );
    }
    extras.extend(u);
    Usage {
        input_tokens: input + cache_read + cache_creation,
        output_tokens: output,
        cached_input_tokens: cache_read,
    }
}

/// Anthropic usage object. `cache_creation` is the part of input that was a
/// cache write (known only from an Anthropic source).
struct UsageOut<'a> {
    usage: Usage,
    cache_creation: u64,
    extras: Option<&'a Extras>,
}

impl Serialize for UsageOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let u = self.usage;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry(
            "input_tokens",
            &u.input_tokens
                .saturating_sub(u.cached_input_tokens)
                .saturating_sub(self.cache_creation),
        )?;
        m.serialize_entry("cache_creation_input_tokens", &self.cache_creation)?;
        m.serialize_entry("cache_read_input_tokens", &u.cached_input_tokens)?;
        m.serialize_entry("output_tokens", &u.output_tokens)?;
        if let Some(extras) = self.extras {
            for (k, v) in extras {
                if k != "cache_creation_input_tokens" {
                    m.serialize_entry(k, v)?;
                }
            }
        }
        m.end()
    }
}

pub(super) fn encode_response(resp: &ChatResponse, model: &str) -> Vec<u8> {
    serde_json::to_vec(&RespOut { resp, model }).unwrap_or_default()
}

struct RespOut<'a> {
    resp: &'a ChatResponse,
    model: &'a str,
}

impl Serialize for RespOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.resp;
        let same = r.source == FMT;
        let id: Cow<'_, str> = if r.id.is_empty() {
            Cow::Owned(synth_id("msg_"))
        } else {
            Cow::Borrowed(&r.id)
        };
        let blocks: Vec<&ContentBlock> = r
            .content
            .iter()
            .filter(|b| match b {
                ContentBlock::Raw { format, .. } => *format == FMT,
                ContentBlock::Text { text, .. } | ContentBlock::Refusal { text } => {
                    !text.is_empty()
                }
                _ => true,
            })
            .collect();
        let cache_creation = if same {
            r.extras
                .usage
                .get("cache_creation_input_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(0)
        } else {
            0
        };
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", &id)?;
        m.serialize_entry("type", "message")?;
        m.serialize_entry("role", "assistant")?;
        m.serialize_entry("model", self.model)?;
        m.serialize_entry("content", &ContentSeq(&blocks, same))?;
        m.serialize_entry(
            "stop_reason",
            &r.finish_reason.as_ref().map(FinishReason::as_anthropic),
        )?;
        let stop_sequence = match r.finish_reason {
            Some(FinishReason::StopSequence) => r.stop_sequence.as_deref(),
            _ => None,
        };
        m.serialize_entry("stop_sequence", &stop_sequence)?;
        m.serialize_entry(
            "usage",
            &UsageOut {
                usage: r.usage,
                cache_creation,
                extras: same.then_some(&r.extras.usage),
            },
        )?;
        if same {
            for (k, v) in &r.extras.top {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

/// Always an array (unlike request content).
struct ContentSeq<'a>(&'a [&'a ContentBlock], bool);

impl Serialize for ContentSeq<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|b| BlockOut(b, self.1)))
    }
}

// ---------------------------------------------------------------------------
// Streaming: decode
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(default)]
    index: u32,
    #[serde(default)]
    message: Option<EventMessage>,
    #[serde(default)]
    content_block: Option<Value>,
    #[serde(default)]
    delta: Option<EventDelta>,
    #[serde(default)]
    usage: Option<EventUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct EventMessage {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<EventUsage>,
}

#[derive(Deserialize)]
struct EventDelta {
    #[serde(rename = "type", default)]
    ty: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    partial_json: Option<String>,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    stop_sequence: Option<String>,
}

#[derive(Deserialize)]
struct EventUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
}

#[derive(Default)]
pub(super) struct StreamState {
    input: u64,
    cache_read: u64,
    cache_creation: u64,
}

impl StreamState {
    fn apply_usage(&mut self, u: &EventUsage, st: &mut DecodeState<'_>) {
        if let Some(v) = u.input_tokens {
            self.input = v;
        }
        if let Some(v) = u.cache_read_input_tokens {
            self.cache_read = v;
        }
        if let Some(v) = u.cache_creation_input_tokens {
            self.cache_creation = v;
        }
        st.usage.input_tokens = self.input + self.cache_read + self.cache_creation;
        st.usage.cached_input_tokens = self.cache_read;
        if let Some(v) = u.output_tokens {
            st.usage.output_tokens = v;
        }
    }

    pub(super) fn on_event(
        &mut self,
        ev: SseEvent,
        st: &mut DecodeState<'_>,
        out: &mut Vec<StreamEvent>,
    ) -> Result<(), FormatError> {
        let data = ev.data.as_str();
        let e: Event<'_> = match serde_json::from_str(data) {
            Ok(e) => e,
            Err(err) => {
                if ev.event.as_deref() == Some("error") {
                    return Err(FormatError::general(format!("upstream error: {data}")));
                }
                return Err(FormatError::general(format!(
                    "malformed upstream stream event: {err}"
                )));
            }
        };
        match e.ty.as_ref() {
            "message_start" => {
                let msg = e.message.unwrap_or(EventMessage {
                    id: None,
                    model: None,
                    usage: None,
                });
                if let Some(u) = &msg.usage {
                    self.apply_usage(u, st);
                }
                out.push(StreamEvent::MessageStart {
                    id: msg.id.unwrap_or_default(),
                    model: msg.model.unwrap_or_default(),
                    created: None,
                    usage: *st.usage,
                });
            }
            "content_block_start" => {
                let index = e.index;
                let block = e.content_block.unwrap_or(Value::Null);
                match type_of(&block) {
                    Some("text") => {
                        out.push(StreamEvent::BlockStart {
                            index,
                            block: BlockKind::Text,
                        });
                        if let Some(t) = block.get("text").and_then(Value::as_str) {
                            if !t.is_empty() {
                                st.content_delta();
                                out.push(StreamEvent::TextDelta {
                                    index,
                                    text: t.to_owned(),
                                });
                            }
                        }
                    }
                    Some("tool_use") => {
                        let s = |k: &str| {
                            block
                                .get(k)
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_owned()
                        };
                        *st.saw_content = true;
                        out.push(StreamEvent::BlockStart {
                            index,
                            block: BlockKind::ToolUse {
                                id: s("id"),
                                name: s("name"),
                            },
                        });
                        if let Some(input) = block
                            .get("input")
                            .and_then(Value::as_object)
                            .filter(|o| !o.is_empty())
                        {
                            st.content_delta();
                            out.push(StreamEvent::ToolInputDelta {
                                index,
                                partial_json: Value::Object(input.clone()).to_string(),
                            });
                        }
                    }
                    Some("thinking") => {
                        out.push(StreamEvent::BlockStart {
                            index,
                            block: BlockKind::Thinking,
                        });
                        if let Some(t) = block.get("thinking").and_then(Value::as_str) {
                            if !t.is_empty() {
                                st.content_delta();
                                out.push(StreamEvent::ThinkingDelta {
                                    index,
                                    thinking: t.to_owned(),
                                });
                            }
                        }
                    }
                    _ => out.push(StreamEvent::BlockStart {
                        index,
                        block: BlockKind::Other(block),
                    }),
                }
            }
            "content_block_delta" => {
                let index = e.index;
                let Some(d) = e.delta else {
                    return Err(FormatError::general(
                        "malformed upstream stream event: content_block_delta without delta",
                    ));
                };
                match d.ty.as_deref() {
                    Some("text_delta") => {
                        st.content_delta();
                        out.push(StreamEvent::TextDelta {
                            index,
                            text: d.text.unwrap_or_default(),
                        });
                    }
                    Some("input_json_delta") => {
                        if let Some(p) = d.partial_json.filter(|p| !p.is_empty()) {
                            st.content_delta();
                            out.push(StreamEvent::ToolInputDelta {
                                index,
                                partial_json: p,
                            });
                        }
                    }
                    Some("thinking_delta") => {
                        st.content_delta();
                        out.push(StreamEvent::ThinkingDelta {
                            index,
                            thinking: d.thinking.unwrap_or_default(),
                        });
                    }
                    Some("signature_delta") => out.push(StreamEvent::SignatureDelta {
                        index,
                        signature: d.signature.unwrap_or_default(),
                    }),
                    _ => {
                        // Rare (citations_delta, ...): re-parse to keep it verbatim.
                        let raw: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                        let delta = raw.get("delta").cloned().unwrap_or(Value::Null);
                        out.push(StreamEvent::OtherDelta { index, delta });
                    }
                }
            }
            "content_block_stop" => out.push(StreamEvent::BlockStop { index: e.index }),
            "message_delta" => {
                if let Some(d) = e.delta {
                    out.push(StreamEvent::MessageDelta {
                        finish_reason: d.stop_reason.map(|s| FinishReason::from_anthropic(&s)),
                        stop_sequence: d.stop_sequence,
                    });
                }
                if let Some(u) = &e.usage {
                    self.apply_usage(u, st);
                    if u.output_tokens.is_some() {
                        *st.output_final = true;
                    }
                    out.push(StreamEvent::Usage(*st.usage));
                }
            }
            "message_stop" => {
                out.push(StreamEvent::MessageStop);
                *st.complete = true;
            }
            "ping" => out.push(StreamEvent::Ping),
            "error" => return Err(upstream_error(e.error.as_ref())),
            // Unknown event types must be tolerated (Anthropic versioning policy).
            _ => {}
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Streaming: encode
// ---------------------------------------------------------------------------

pub(super) struct StreamEncoder {
    model: String,
    started: bool,
    done: bool,
    usage: Usage,
    finish_reason: Option<FinishReason>,
    stop_sequence: Option<String>,
    /// (canonical index, output index, open)
    blocks: Vec<(u32, u32, bool)>,
    next_out: u32,
}

#[derive(Serialize)]
struct BlockDeltaEv<'a, D: Serialize> {
    #[serde(rename = "type")]
    ty: &'static str,
    index: u32,
    delta: &'a D,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(clippy::enum_variant_names)]
enum DeltaOut<'a> {
    TextDelta { text: &'a str },
    InputJsonDelta { partial_json: &'a str },
    ThinkingDelta { thinking: &'a str },
    SignatureDelta { signature: &'a str },
}

#[derive(Serialize)]
struct IndexEv {
    #[serde(rename = "type")]
    ty: &'static str,
    index: u32,
}

#[derive(Serialize)]
struct BlockStartEv<'a, B: Serialize> {
    #[serde(rename = "type")]
    ty: &'static str,
    index: u32,
    content_block: &'a B,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StartBlockOut<'a> {
    Text {
        text: &'static str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: Map<String, Value>,
    },
    Thinking {
        thinking: &'static str,
    },
}

#[derive(Serialize)]
#[serde(untagged)]
enum StartContent<'a> {
    Typed(StartBlockOut<'a>),
    Raw(&'a Value),
}

#[derive(Serialize)]
struct TypeOnly {
    #[serde(rename = "type")]
    ty: &'static str,
}

#[derive(Serialize)]
struct ErrorEv<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "type")]
    ty: &'a str,
    message: &'a str,
}

impl StreamEncoder {
    pub(super) fn new(model: &str) -> Self {
        StreamEncoder {
            model: model.to_owned(),
            started: false,
            done: false,
            usage: Usage::default(),
            finish_reason: None,
            stop_sequence: None,
            blocks: Vec::new(),
            next_out: 0,
        }
    }

    fn start(&mut self, id: &str, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        #[derive(Serialize)]
        struct StartEv<'a> {
            #[serde(rename = "type")]
            ty: &'static str,
            message: StartMsg<'a>,
        }
        #[derive(Serialize)]
        struct StartMsg<'a> {
            id: &'a str,
            #[serde(rename = "type")]
            ty: &'static str,
            role: &'static str,
            model: &'a str,
            content: [(); 0],
            stop_reason: Option<&'a str>,
            stop_sequence: Option<&'a str>,
            usage: UsageOut<'a>,
        }
        let synth;
        let id = if id.is_empty() {
            synth = synth_id("msg_");
            synth.as_str()
        } else {
            id
        };
        let ev = StartEv {
            ty: "message_start",
            message: StartMsg {
                id,
                ty: "message",
                role: "assistant",
                model: &self.model,
                content: [],
                stop_reason: None,
                stop_sequence: None,
                usage: UsageOut {
                    usage: self.usage,
                    cache_creation: 0,
                    extras: None,
                },
            },
        };
        write_event(out, Some("message_start"), &ev);
    }

    /// Output index for canonical block `index`, opening a text block if the
    /// producer never started it.
    fn out_index(&mut self, index: u32, out: &mut BytesMut) -> u32 {
        if let Some(&(_, o, _)) = self.blocks.iter().rev().find(|(c, _, _)| *c == index) {
            return o;
        }
        self.open_block(index, &BlockKind::Text, out)
    }

    fn open_block(&mut self, index: u32, block: &BlockKind, out: &mut BytesMut) -> u32 {
        self.start("", out);
        let o = self.next_out;
        self.next_out += 1;
        self.blocks.push((index, o, true));
        let content_block = match block {
            BlockKind::Text | BlockKind::Refusal => {
                StartContent::Typed(StartBlockOut::Text { text: "" })
            }
            BlockKind::ToolUse { id, name } => StartContent::Typed(StartBlockOut::ToolUse {
                id,
                name,
                input: Map::new(),
            }),
            BlockKind::Thinking => StartContent::Typed(StartBlockOut::Thinking { thinking: "" }),
            BlockKind::Other(v) => StartContent::Raw(v),
        };
        write_event(
            out,
            Some("content_block_start"),
            &BlockStartEv {
                ty: "content_block_start",
                index: o,
                content_block: &content_block,
            },
        );
        o
    }

    fn delta(&mut self, index: u32, d: &DeltaOut<'_>, out: &mut BytesMut) {
        let o = self.out_index(index, out);
        write_event(
            out,
            Some("content_block_delta"),
            &BlockDeltaEv {
                ty: "content_block_delta",
                index: o,
                delta: d,
            },
        );
    }

    fn close_block(&mut self, index: u32, out: &mut BytesMut) {
        if let Some(b) = self
            .blocks
            .iter_mut()
            .rev()
            .find(|(c, _, open)| *c == index && *open)
        {
            b.2 = false;
            let o = b.1;
            write_event(
                out,
                Some("content_block_stop"),
                &IndexEv {
                    ty: "content_block_stop",
                    index: o,
                },
            );
        }
    }

    pub(super) fn encode(&mut self, ev: &StreamEvent, out: &mut BytesMut) {
        if self.done {
            return;
        }
        match ev {
            StreamEvent::MessageStart { id, usage, .. } => {
                if !self.started {
                    self.usage = *usage;
                }
                self.start(id, out);
            }
            StreamEvent::BlockStart { index, block } => {
                self.open_block(*index, block, out);
            }
            StreamEvent::TextDelta { index, text } => {
                self.delta(*index, &DeltaOut::TextDelta { text }, out)
            }
            StreamEvent::ToolInputDelta {
                index,
                partial_json,
            } => self.delta(*index, &DeltaOut::InputJsonDelta { partial_json }, out),
            StreamEvent::ThinkingDelta { index, thinking } => {
                self.delta(*index, &DeltaOut::ThinkingDelta { thinking }, out)
            }
            StreamEvent::SignatureDelta { index, signature } => {
                self.delta(*index, &DeltaOut::SignatureDelta { signature }, out)
            }
            StreamEvent::OtherDelta { index, delta } => {
                let o = self.out_index(*index, out);
                write_event(
                    out,
                    Some("content_block_delta"),
                    &BlockDeltaEv {
                        ty: "content_block_delta",
                        index: o,
                        delta,
                    },
                );
            }
            StreamEvent::BlockStop { index } => self.close_block(*index, out),
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
            StreamEvent::Ping => {
                self.start("", out);
                write_event(out, Some("ping"), &TypeOnly { ty: "ping" });
            }
            StreamEvent::MessageStop => self.finish(out),
            StreamEvent::Logprobs(_) | StreamEvent::OtherChoice(_) => {}
        }
    }

    pub(super) fn finish(&mut self, out: &mut BytesMut) {
        if self.done {
            return;
        }
        self.start("", out);
        let open: Vec<u32> = self.blocks.iter().filter(|b| b.2).map(|b| b.0).collect();
        for index in open {
            self.close_block(index, out);
        }
        #[derive(Serialize)]
        struct MessageDeltaEv<'a> {
            #[serde(rename = "type")]
            ty: &'static str,
            delta: MessageDeltaBody<'a>,
            usage: UsageOut<'a>,
        }
        #[derive(Serialize)]
        struct MessageDeltaBody<'a> {
            stop_reason: &'a str,
            stop_sequence: Option<&'a str>,
        }
        let fr = self.finish_reason.as_ref();
        let stop_sequence = match fr {
            Some(FinishReason::StopSequence) => self.stop_sequence.as_deref(),
            _ => None,
        };
        let ev = MessageDeltaEv {
            ty: "message_delta",
            delta: MessageDeltaBody {
                stop_reason: fr.map_or("end_turn", FinishReason::as_anthropic),
                stop_sequence,
            },
            usage: UsageOut {
                usage: self.usage,
                cache_creation: 0,
                extras: None,
            },
        };
        write_event(out, Some("message_delta"), &ev);
        write_event(out, Some("message_stop"), &TypeOnly { ty: "message_stop" });
        self.done = true;
    }

    pub(super) fn error(&mut self, error_type: &str, message: &str, out: &mut BytesMut) {
        if self.done {
            return;
        }
        let ev = ErrorEv {
            ty: "error",
            error: ErrorBody {
                ty: error_type,
                message,
            },
        };
        write_event(out, Some("error"), &ev);
        self.done = true;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
