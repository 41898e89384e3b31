//! Sending one request and classifying what came back.
//!
//! hyper 1's pooled client over plain HTTP/1.1 keep-alive. For streams, the
//! time of the first content delta (TTFT) and the gaps between deltas
//! (inter-token latency) are taken when the bytes are read. A read that
//! carries `k` tokens after a gap `g` since the previous token contributes
//! `k` inter-token samples of `g / k` (so the samples sum to the decode
//! time even when the server or the network coalesces events).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use crate::record::{self, http_label};
use crate::scenario::{Api, AuthStyle, MixEntry, TargetSpec, TokenRange};
use crate::schedule::draw;
use crate::sse::{ErrBody, SseParser, StreamState};

/// The pooled HTTP/1.1 client type.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Largest non-streaming body read (bigger: `bad_response`).
const MAX_BODY: usize = 32 << 20;
/// Largest error body read for its error code.
const MAX_ERROR_BODY: usize = 64 << 10;

/// A pooled keep-alive client (no proxy, TCP_NODELAY).
pub fn http_client(connect_timeout: Duration) -> HttpClient {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    conn.set_connect_timeout(Some(connect_timeout));
    conn.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(usize::MAX)
        .retry_canceled_requests(true)
        .build(conn)
}

/// A target ready to receive requests.
#[derive(Debug)]
pub struct Target {
    pub name: String,
    pub url: String,
    client: HttpClient,
    uri_openai: Uri,
    uri_anthropic: Uri,
    models: BTreeMap<String, String>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// `http://h:p`, `http://h:p/`, `http://h:p/v1` and `http://h:p/prefix/v1`
/// all give the base that `/v1/...` paths are appended to.
pub fn base_url(url: &str) -> String {
    let t = url.trim_end_matches('/');
    t.strip_suffix("/v1").unwrap_or(t).to_string()
}

impl Target {
    pub fn new(spec: &TargetSpec, connect_timeout: Duration) -> anyhow::Result<Target> {
        let base = base_url(&spec.url);
        let uri = |api: Api| -> anyhow::Result<Uri> {
            format!("{base}{}", api.path())
                .parse::<Uri>()
                .map_err(|e| anyhow::anyhow!("target {}: bad URL {:?}: {e}", spec.name, spec.url))
        };
        let mut headers = Vec::with_capacity(spec.headers.len());
        for (k, v) in &spec.headers {
            headers.push((
                HeaderName::from_bytes(k.as_bytes())?,
                HeaderValue::from_str(v)?,
            ));
        }
        Ok(Target {
            name: spec.name.clone(),
            url: spec.url.clone(),
            client: http_client(connect_timeout),
            uri_openai: uri(Api::Openai)?,
            uri_anthropic: uri(Api::Anthropic)?,
            models: spec.models.clone(),
            headers,
        })
    }

    /// The `host:port` this target connects to.
    pub fn authority(&self) -> String {
        self.uri_openai
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default()
    }
}

/// A mix entry with its headers built once.
#[derive(Debug, Clone)]
pub struct PreparedMix {
    pub api: Api,
    pub stream: bool,
    pub model: String,
    pub prompt_tokens: TokenRange,
    pub max_tokens: TokenRange,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl PreparedMix {
    pub fn new(m: &MixEntry) -> anyhow::Result<PreparedMix> {
        let mut headers = vec![(CONTENT_TYPE, HeaderValue::from_static("application/json"))];
        if m.api == Api::Anthropic {
            headers.push((
                HeaderName::from_static("anthropic-version"),
                HeaderValue::from_static("2023-06-01"),
            ));
        }
        if let Some(k) = m.key.as_deref().filter(|k| !k.is_empty()) {
            match m.auth_style() {
                AuthStyle::Bearer => headers.push((
                    AUTHORIZATION,
                    HeaderValue::from_str(&format!("Bearer {k}"))?,
                )),
                AuthStyle::XApiKey => headers.push((
                    HeaderName::from_static("x-api-key"),
                    HeaderValue::from_str(k)?,
                )),
            }
        }
        if let Some(f) = m.feature.as_deref().filter(|f| !f.is_empty()) {
            headers.push((
                HeaderName::from_static("x-switchyard-feature"),
                HeaderValue::from_str(f)?,
            ));
        }
        for (k, v) in &m.headers {
            headers.push((
                HeaderName::from_bytes(k.as_bytes())?,
                HeaderValue::from_str(v)?,
            ));
        }
        Ok(PreparedMix {
            api: m.api,
            stream: m.stream,
            model: m.model.clone(),
            prompt_tokens: m.prompt_tokens.clone(),
            max_tokens: m.max_tokens.clone(),
            headers,
        })
    }
}

/// Prompt text long enough for the largest prompt of `mix` (4 ASCII
/// characters per token, which the mock counts back exactly).
pub fn prompt_text(mix: &[MixEntry]) -> Arc<str> {
    let tokens = mix
        .iter()
        .map(|m| *m.prompt_tokens.0.end())
        .max()
        .unwrap_or(0)
        .max(1) as usize;
    const WORDS: &str = "lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. ";
    let want = tokens * 4;
    let mut s = String::with_capacity(want + WORDS.len());
    while s.len() < want {
        s.push_str(WORDS);
    }
    s.truncate(want);
    Arc::from(s)
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct OpenAiBody<'a> {
    model: &'a str,
    messages: [Message<'a>; 1],
    max_tokens: u32,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

#[derive(Serialize)]
struct AnthropicBody<'a> {
    model: &'a str,
    max_tokens: u32,
    messages: [Message<'a>; 1],
    stream: bool,
}

/// The JSON body for request `index` of a mix entry.
pub fn request_body(mix: &PreparedMix, model: &str, prompt: &str, seed: u64, index: u64) -> Bytes {
    let p = draw(&mix.prompt_tokens.0, seed, index, 1) as usize;
    let max_tokens = draw(&mix.max_tokens.0, seed, index, 2);
    let prompt = &prompt[..(p * 4).min(prompt.len())];
    let prompt = if prompt.is_empty() { "hi" } else { prompt };
    let messages = [Message {
        role: "user",
        content: prompt,
    }];
    let v = match mix.api {
        Api::Openai => serde_json::to_vec(&OpenAiBody {
            model,
            messages,
            max_tokens,
            stream: mix.stream,
            stream_options: mix.stream.then_some(StreamOptions {
                include_usage: true,
            }),
        }),
        Api::Anthropic => serde_json::to_vec(&AnthropicBody {
            model,
            max_tokens,
            messages,
            stream: mix.stream,
        }),
    };
    Bytes::from(v.unwrap_or_default())
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Label {
    /// One of the fixed ids in [`crate::record`].
    Fixed(u32),
    /// A label to intern (`http_503`, `stream_error:api_error`).
    Named(String),
}

/// The result of one request.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub label: Label,
    pub status: u16,
    pub first_token: Option<Instant>,
    pub end: Instant,
    pub input_tokens: u32,
    pub output_tokens: u32,
    /// Inter-token samples as (gap per token in µs, number of tokens).
    pub itl: Vec<(u64, u64)>,
}

/// Mutable progress shared with the timeout wrapper, so a timed-out request
/// still reports its status and first token.
#[derive(Debug, Default)]
struct Partial {
    status: u16,
    first_token: Option<Instant>,
    tokens: u32,
}

#[derive(Deserialize)]
struct ErrWrap<'a> {
    #[serde(borrow, default)]
    error: Option<ErrBody<'a>>,
}

#[derive(Deserialize)]
struct NonStream {
    #[serde(default)]
    usage: Option<NsUsage>,
}

/// Either API's `usage` object.
#[derive(Deserialize)]
struct NsUsage {
    #[serde(default)]
    prompt_tokens: Option<u32>,
    #[serde(default)]
    completion_tokens: Option<u32>,
    #[serde(default)]
    input_tokens: Option<u32>,
    #[serde(default)]
    output_tokens: Option<u32>,
}

/// Send request `index` (mix entry `mix`) to `target` and wait for the
/// whole answer, at most `timeout` from now.
pub async fn execute(
    target: &Target,
    mix: &PreparedMix,
    prompt: &str,
    seed: u64,
    index: u64,
    timeout: Duration,
) -> Outcome {
    let mut partial = Partial::default();
    let res = tokio::time::timeout(
        timeout,
        execute_inner(target, mix, prompt, seed, index, &mut partial),
    )
    .await;
    match res {
        Ok(o) => o,
        Err(_) => Outcome {
            label: Label::Fixed(record::TIMEOUT),
            status: partial.status,
            first_token: partial.first_token,
            end: Instant::now(),
            input_tokens: 0,
            output_tokens: partial.tokens,
            itl: Vec::new(),
        },
    }
}

async fn execute_inner(
    target: &Target,
    mix: &PreparedMix,
    prompt: &str,
    seed: u64,
    index: u64,
    partial: &mut Partial,
) -> Outcome {
    let model = target.models.get(&mix.model).unwrap_or(&mix.model);
    let body = request_body(mix, model, prompt, seed, index);
    let uri = match mix.api {
        Api::Openai => target.uri_openai.clone(),
        Api::Anthropic => target.uri_anthropic.clone(),
    };
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri;
    {
        let h = req.headers_mut();
        for (k, v) in mix.headers.iter().chain(target.headers.iter()) {
            h.append(k.clone(), v.clone());
        }
    }
    let fail = |label: u32, status: u16| Outcome {
        label: Label::Fixed(label),
        status,
        first_token: None,
        end: Instant::now(),
        input_tokens: 0,
        output_tokens: 0,
        itl: Vec::new(),
    };
    let resp = match target.client.request(req).await {
        Ok(r) => r,
        Err(e) => {
            let label = if e.is_connect() {
                record::CONNECT
            } else {
                record::IO
            };
            return fail(label, 0);
        }
    };
    let status = resp.status().as_u16();
    partial.status = status;
    let is_sse = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut body = resp.into_body();

    if !(200..300).contains(&status) {
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Some(d) = f.data_ref() {
                        if buf.len() < MAX_ERROR_BODY {
                            buf.extend_from_slice(d);
                        }
                    }
                }
                Err(_) => break,
            }
        }
        let code = serde_json::from_slice::<ErrWrap>(&buf)
            .ok()
            .and_then(|w| w.error)
            .and_then(|e| e.label());
        return Outcome {
            label: Label::Named(http_label(status, code.as_deref())),
            status,
            first_token: None,
            end: Instant::now(),
            input_tokens: 0,
            output_tokens: 0,
            itl: Vec::new(),
        };
    }

    if mix.stream {
        if !is_sse {
            return fail(record::BAD_RESPONSE, status);
        }
        let mut parser = SseParser::new();
        let mut state = StreamState::default();
        let mut itl: Vec<(u64, u64)> = Vec::with_capacity(64);
        let mut last_token: Option<Instant> = None;
        loop {
            let frame = match body.frame().await {
                None => break,
                Some(Ok(f)) => f,
                Some(Err(_)) => {
                    let mut o = fail(record::STREAM_BROKEN, status);
                    o.first_token = partial.first_token;
                    o.output_tokens = state.tokens;
                    return o;
                }
            };
            let Some(data) = frame.data_ref() else {
                continue;
            };
            let now = Instant::now();
            let mut k = 0u32;
            let api = mix.api;
            parser.feed(data, |ev, d| {
                k += state.on_event(api, ev, d);
            });
            if k > 0 {
                match last_token {
                    None => {
                        partial.first_token = Some(now);
                        if k > 1 {
                            itl.push((0, u64::from(k - 1)));
                        }
                    }
                    Some(prev) => {
                        let gap = now.saturating_duration_since(prev).as_micros() as u64;
                        itl.push((gap / u64::from(k), u64::from(k)));
                    }
                }
                last_token = Some(now);
                partial.tokens = state.tokens;
            }
            if state.error.is_some() || state.malformed {
                break;
            }
        }
        let end = Instant::now();
        let label = if let Some(e) = &state.error {
            Label::Named(format!("stream_error:{e}"))
        } else if state.malformed {
            Label::Fixed(record::STREAM_MALFORMED)
        } else if !state.done {
            Label::Fixed(record::STREAM_TRUNCATED)
        } else {
            Label::Fixed(record::OK)
        };
        return Outcome {
            label,
            status,
            first_token: partial.first_token,
            end,
            input_tokens: state.input_tokens.unwrap_or(0),
            output_tokens: state.output_tokens.unwrap_or(state.tokens),
            itl,
        };
    }

    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    if buf.len() + d.len() > MAX_BODY {
                        return fail(record::BAD_RESPONSE, status);
                    }
                    buf.extend_from_slice(d);
                }
            }
            Err(_) => return fail(record::STREAM_BROKEN, status),
        }
    }
    let end = Instant::now();
    match serde_json::from_slice::<NonStream>(&buf) {
        Ok(r) => {
            let (i, o) = r.usage.map_or((0, 0), |u| {
                (
                    u.prompt_tokens.or(u.input_tokens).unwrap_or(0),
                    u.completion_tokens.or(u.output_tokens).unwrap_or(0),
                )
            });
            Outcome {
                label: Label::Fixed(record::OK),
                status,
                first_token: None,
                end,
                input_tokens: i,
                output_tokens: o,
                itl: Vec::new(),
            }
        }
        Err(_) => fail(record::BAD_RESPONSE, status),
    }
}

/// A small client for the mocks' control API.
#[derive(Debug, Clone)]
pub struct ControlClient {
    client: HttpClient,
    timeout: Duration,
}

impl ControlClient {
    pub fn new(timeout: Duration) -> Self {
        ControlClient {
            client: http_client(timeout),
            timeout,
        }
    }

    /// `method url` with an optional text body; the answer body on 2xx.
    pub async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<String>,
    ) -> Result<Bytes, String> {
        let uri: Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
        let mut req = Request::new(Full::new(Bytes::from(body.unwrap_or_default())));
        *req.method_mut() = method.clone();
        *req.uri_mut() = uri;
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("{method} {url}: {e}"))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{method} {url}: {e}"))?
                .to_bytes();
            if !status.is_success() {
                return Err(format!(
                    "{method} {url}: HTTP {status}: {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(500)])
                ));
            }
            Ok(bytes)
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "{method} {url}: no answer within {:?}",
                self.timeout
            )),
        }
    }
}
