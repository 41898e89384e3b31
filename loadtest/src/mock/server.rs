//! Listeners, connections, fault state and request handling.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{watch, Notify};

use super::body::{MockBody, SseBody, StreamEnd};
use super::fault::{parse_fault, Fault, FaultScope, RetryAfter};
use super::provider::{self, Api, PlanInputs};
use super::stats::{RecordedRequest, Recorder, Stats};

type Resp = Response<MockBody>;

/// Rebind attempts (50 ms apart) when the port can't be re-bound at once
/// after a `refuse` fault ends.
const REOPEN_ATTEMPTS: u32 = 200;
/// Listen backlog.
const BACKLOG: u32 = 4096;

/// Header carrying a per-request fault (JSON or short form).
pub const FAULT_HEADER: &str = "x-mock-fault";
/// Header overriding the time to first token, in milliseconds.
pub const TTFT_HEADER: &str = "x-mock-ttft-ms";
/// Header overriding the number of output tokens (still capped by `max_tokens`).
pub const OUTPUT_TOKENS_HEADER: &str = "x-mock-output-tokens";
/// Header overriding the streaming pace, in tokens per second (0 = unpaced).
pub const TOKENS_PER_SEC_HEADER: &str = "x-mock-tokens-per-sec";

pub(crate) struct Config {
    pub ttft: Duration,
    pub tokens_per_sec: f64,
    pub output_tokens: RangeInclusive<u32>,
    pub seed: u64,
    pub models_body: Bytes,
}

/// Bind a listener with `SO_REUSEADDR` so a refused port can be re-bound
/// while old connections sit in TIME_WAIT. Must run inside a runtime context.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(BACKLOG)
}

/// One listening address whose socket can be closed and re-opened.
pub(crate) struct Slot {
    pub addr: SocketAddr,
    listener: Mutex<Option<TcpListener>>,
    notify: Notify,
    /// Bumped to close every connection accepted on this slot.
    kill: watch::Sender<u64>,
    control_only: bool,
}

impl Slot {
    pub(crate) fn new(listener: TcpListener, control_only: bool) -> io::Result<Self> {
        Ok(Self {
            addr: listener.local_addr()?,
            listener: Mutex::new(Some(listener)),
            notify: Notify::new(),
            kill: watch::Sender::new(0),
            control_only,
        })
    }

    /// Close the listening socket (synchronously: new connections are
    /// refused when this returns) and every open connection.
    fn close(&self) {
        drop(self.listener.lock().take());
        self.kill.send_modify(|e| *e = e.wrapping_add(1));
        self.notify.notify_one();
    }

    /// Re-bind the same address if closed.
    fn open(&self, rt: &Handle) -> io::Result<()> {
        let mut guard = self.listener.lock();
        if guard.is_some() {
            return Ok(());
        }
        let _enter = rt.enter();
        *guard = Some(bind(self.addr)?);
        drop(guard);
        self.notify.notify_one();
        Ok(())
    }

    pub(crate) fn is_open(&self) -> bool {
        self.listener.lock().is_some()
    }

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
        match &*self.listener.lock() {
            Some(l) => l.poll_accept(cx),
            // Woken through `notify` when re-opened.
            None => Poll::Pending,
        }
    }
}

struct ActiveFault {
    fault: Fault,
    /// `Next(n)` counts down the remaining requests.
    scope: FaultScope,
}

#[derive(Default)]
struct FaultState {
    active: Option<ActiveFault>,
    generation: u64,
    shutdown: bool,
}

impl FaultState {
    fn refusing(&self) -> bool {
        matches!(
            self.active,
            Some(ActiveFault {
                fault: Fault::Refuse { .. },
                ..
            })
        )
    }
}

/// State shared by the handle, the accept loops and every connection.
pub(crate) struct Shared {
    pub cfg: Config,
    pub stats: Stats,
    pub recorder: Recorder,
    faults: Mutex<FaultState>,
    seq: AtomicU64,
    pub main: Slot,
    pub control: Option<Slot>,
    shutdown: AtomicBool,
    active_conns: AtomicUsize,
    rt: Handle,
}

impl Shared {
    pub(crate) fn new(
        cfg: Config,
        record_capacity: usize,
        main: Slot,
        control: Option<Slot>,
        rt: Handle,
    ) -> Self {
        Self {
            cfg,
            stats: Stats::default(),
            recorder: Recorder::new(record_capacity),
            faults: Mutex::new(FaultState::default()),
            seq: AtomicU64::new(0),
            main,
            control,
            shutdown: AtomicBool::new(false),
            active_conns: AtomicUsize::new(0),
            rt,
        }
    }

    pub(crate) fn set_fault(self: &Arc<Self>, fault: Fault, scope: FaultScope) {
        let mut st = self.faults.lock();
        if st.shutdown {
            return;
        }
        st.generation = st.generation.wrapping_add(1);
        let generation = st.generation;
        let refuse_for = match &fault {
            Fault::Refuse { duration } => {
                self.stats.fault(fault.label());
                Some(*duration)
            }
            _ => None,
        };
        let scope = if refuse_for.is_some() {
            FaultScope::Always
        } else {
            scope
        };
        st.active = Some(ActiveFault { fault, scope });
        self.sync_main(&st);
        drop(st);
        if let Some(Some(d)) = refuse_for {
            let weak = Arc::downgrade(self);
            self.rt.spawn(async move {
                tokio::time::sleep(d).await;
                if let Some(shared) = weak.upgrade() {
                    shared.clear_fault_if(Some(generation));
                }
            });
        }
    }

    pub(crate) fn clear_fault(self: &Arc<Self>) {
        self.clear_fault_if(None);
    }

    /// Clear the active fault (only if it is still `generation`, when given).
    fn clear_fault_if(self: &Arc<Self>, generation: Option<u64>) {
        let mut st = self.faults.lock();
        if generation.is_some_and(|g| g != st.generation) {
            return;
        }
        st.generation = st.generation.wrapping_add(1);
        st.active = None;
        self.sync_main(&st);
    }

    pub(crate) fn current_fault(&self) -> Option<(Fault, FaultScope)> {
        self.faults
            .lock()
            .active
            .as_ref()
            .map(|a| (a.fault.clone(), a.scope))
    }

    /// The run-time fault for one request. `Next(n)` faults apply to (and
    /// are consumed by) model requests only.
    fn take_fault(&self, model_request: bool) -> Option<Fault> {
        let mut st = self.faults.lock();
        let active = st.active.as_mut()?;
        if matches!(active.fault, Fault::Refuse { .. }) {
            return None;
        }
        match active.scope {
            FaultScope::Always => Some(active.fault.clone()),
            FaultScope::Next(_) if !model_request => None,
            FaultScope::Next(n) => {
                let fault = active.fault.clone();
                if n <= 1 {
                    st.active = None;
                    st.generation = st.generation.wrapping_add(1);
                } else {
                    active.scope = FaultScope::Next(n - 1);
                }
                Some(fault)
            }
        }
    }

    /// Make the main listener's state match the fault state.
    fn sync_main(self: &Arc<Self>, st: &FaultState) {
        if st.shutdown || st.refusing() {
            if self.main.is_open() {
                self.main.close();
            }
        } else if self.main.open(&self.rt).is_err() {
            self.schedule_reopen();
        }
    }

    fn schedule_reopen(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        self.rt.spawn(async move {
            for _ in 0..REOPEN_ATTEMPTS {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                let st = shared.faults.lock();
                if st.shutdown || st.refusing() || shared.main.open(&shared.rt).is_ok() {
                    return;
                }
            }
        });
    }

    pub(crate) fn reset(&self) {
        self.stats.reset();
        self.recorder.clear();
        self.seq.store(0, Ordering::Relaxed);
    }

    /// Close every listener and connection (synchronous part of shutdown).
    pub(crate) fn begin_shutdown(&self) {
        let mut st = self.faults.lock();
        st.shutdown = true;
        self.shutdown.store(true, Ordering::SeqCst);
        self.main.close();
        if let Some(c) = &self.control {
            c.close();
        }
    }

    pub(crate) fn stats_snapshot(&self) -> super::MockStats {
        self.stats.snapshot(self.active_connections() as u64)
    }

    pub(crate) fn active_connections(&self) -> usize {
        self.active_conns.load(Ordering::SeqCst)
    }

    fn slot(&self, control: bool) -> Option<&Slot> {
        if control {
            self.control.as_ref()
        } else {
            Some(&self.main)
        }
    }
}

/// Accept connections on one slot until shutdown.
pub(crate) async fn accept_loop(shared: Arc<Shared>, control: bool) {
    let Some(slot) = shared.slot(control) else {
        return;
    };
    while !shared.shutdown.load(Ordering::SeqCst) {
        let notified = slot.notify.notified();
        let accepted = tokio::select! {
            biased;
            _ = notified => continue,
            r = poll_fn(|cx| slot.poll_accept(cx)) => r,
        };
        match accepted {
            Ok((stream, _peer)) => spawn_connection(&shared, slot, stream),
            // E.g. EMFILE: back off briefly instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

struct ConnGuard(Arc<Shared>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.active_conns.fetch_sub(1, Ordering::SeqCst);
    }
}

fn spawn_connection(shared: &Arc<Shared>, slot: &Slot, stream: TcpStream) {
    let mut kill = slot.kill.subscribe();
    if !slot.is_open() {
        // Accepted just before a `refuse`/shutdown closed the listener (and
        // missed its kill signal): treat it as never accepted.
        return;
    }
    let _ = stream.set_nodelay(true);
    shared.stats.connection();
    shared.active_conns.fetch_add(1, Ordering::SeqCst);
    let guard = ConnGuard(shared.clone());
    let control_only = slot.control_only;
    let svc_shared = shared.clone();
    tokio::spawn(async move {
        let _guard = guard;
        let svc = service_fn(move |req| handle(svc_shared.clone(), req, control_only));
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), svc);
        tokio::select! {
            biased;
            _ = conn => {}
            _ = kill.changed() => {}
        }
    });
}

// ---------------------------------------------------------------------------
// Responses

fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut resp = Response::new(MockBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn json_value(status: StatusCode, v: &Value) -> Resp {
    json_response(status, v.to_string())
}

/// An error body in the provider's shape.
fn error_response(api: Api, status: StatusCode, message: &str) -> Resp {
    let code = status.as_u16();
    let v = match api {
        Api::OpenAi => {
            let (kind, code_field) = match code {
                401 => ("invalid_request_error", json!("invalid_api_key")),
                404 => ("invalid_request_error", json!("unknown_url")),
                429 => ("requests", json!("rate_limit_exceeded")),
                400..=499 => ("invalid_request_error", Value::Null),
                _ => ("server_error", Value::Null),
            };
            json!({"error": {"message": message, "type": kind, "param": null, "code": code_field}})
        }
        Api::Anthropic => {
            let kind = match code {
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                400..=499 => "invalid_request_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
    };
    json_value(status, &v)
}

fn retry_after_value(ra: &RetryAfter) -> String {
    match ra {
        RetryAfter::Seconds(n) => n.to_string(),
        RetryAfter::Date { after } => {
            // Round up to whole seconds so clients never retry early.
            let at = SystemTime::now() + *after;
            let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
            let secs = since.as_secs() + u64::from(since.subsec_nanos() > 0);
            httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
        }
        RetryAfter::Raw(s) => s.clone(),
    }
}

fn status_fault_response(
    api: Api,
    status: u16,
    retry_after: Option<&RetryAfter>,
    body: Option<&str>,
) -> Resp {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = match body {
        Some(b) => json_response(code, b.to_owned()),
        None => {
            let message = match status {
                429 => "Rate limit exceeded (mock fault)".to_string(),
                529 => "Overloaded (mock fault)".to_string(),
                _ => format!(
                    "{} (mock fault)",
                    code.canonical_reason().unwrap_or("Error")
                ),
            };
            error_response(api, code, &message)
        }
    };
    if let Some(ra) = retry_after {
        if let Ok(v) = HeaderValue::from_str(&retry_after_value(ra)) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    resp
}

fn sse_response(body: SseBody) -> Resp {
    let mut resp = Response::new(MockBody::Sse(Box::new(body)));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// Headers announcing `len` bytes of JSON, then nothing.
fn stalled_response(len: u64) -> Resp {
    let mut resp = Response::new(MockBody::Stalled(len));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

fn aborted(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        format!("mock {what} fault"),
    )
}

async fn sleep_for(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

// ---------------------------------------------------------------------------
// Request handling

#[derive(Clone, Copy)]
enum Route {
    Model(Api),
    Models,
    MethodNotAllowed(Api),
    NotFound,
}

impl Route {
    fn of(method: &Method, path: &str) -> Self {
        match (path, method) {
            ("/v1/chat/completions", &Method::POST) => Route::Model(Api::OpenAi),
            ("/v1/chat/completions", _) => Route::MethodNotAllowed(Api::OpenAi),
            ("/v1/messages", &Method::POST) => Route::Model(Api::Anthropic),
            ("/v1/messages", _) => Route::MethodNotAllowed(Api::Anthropic),
            ("/v1/models", &Method::GET) => Route::Models,
            ("/v1/models", _) => Route::MethodNotAllowed(Api::OpenAi),
            _ => Route::NotFound,
        }
    }

    fn api(self) -> Api {
        match self {
            Route::Model(api) | Route::MethodNotAllowed(api) => api,
            Route::Models | Route::NotFound => Api::OpenAi,
        }
    }
}

/// Per-request overrides from `x-mock-*` headers.
#[derive(Default)]
struct Overrides {
    fault: Option<Fault>,
    ttft: Option<Duration>,
    output_tokens: Option<u32>,
    tokens_per_sec: Option<f64>,
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, String> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| format!("{name}: not valid ASCII")),
    }
}

fn header_num<T: std::str::FromStr>(headers: &HeaderMap, name: &str) -> Result<Option<T>, String> {
    match header_str(headers, name)? {
        None => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| format!("{name}: invalid number {s:?}")),
    }
}

impl Overrides {
    fn from_headers(headers: &HeaderMap) -> Result<Self, String> {
        let fault = match header_str(headers, FAULT_HEADER)? {
            None => None,
            Some(s) => Some(
                parse_fault(s)
                    .map_err(|e| format!("{FAULT_HEADER}: {e}"))?
                    .0,
            ),
        };
        let tokens_per_sec: Option<f64> = header_num(headers, TOKENS_PER_SEC_HEADER)?;
        if tokens_per_sec.is_some_and(|t| t.is_nan() || t < 0.0) {
            return Err(format!("{TOKENS_PER_SEC_HEADER}: must be >= 0"));
        }
        Ok(Self {
            fault,
            ttft: header_num::<u64>(headers, TTFT_HEADER)?.map(Duration::from_millis),
            output_tokens: header_num(headers, OUTPUT_TOKENS_HEADER)?,
            tokens_per_sec,
        })
    }
}

/// Delay between tokens for a pace in tokens/second (`None`: unpaced).
pub(crate) fn token_interval(tps: f64) -> Option<Duration> {
    if tps.is_finite() && tps > 0.0 {
        Duration::try_from_secs_f64(1.0 / tps).ok()
    } else {
        None
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    control_only: bool,
) -> Result<Resp, io::Error> {
    let path = req.uri().path();
    shared.stats.request(path);
    if path == "/_mock" || path.starts_with("/_mock/") {
        return Ok(control(&shared, req).await);
    }
    if control_only {
        return Ok(error_response(
            Api::OpenAi,
            StatusCode::NOT_FOUND,
            "the control listener serves only /_mock/*",
        ));
    }
    let route = Route::of(req.method(), path);
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
    let overrides = Overrides::from_headers(&parts.headers);
    if shared.recorder.enabled() {
        shared.recorder.push(RecordedRequest {
            path: parts.uri.path_and_query().map_or_else(
                || parts.uri.path().to_string(),
                |pq| pq.as_str().to_string(),
            ),
            method: parts.method,
            headers: parts.headers,
            body: body.clone(),
        });
    }
    let overrides = match overrides {
        Ok(o) => o,
        Err(msg) => return Ok(error_response(route.api(), StatusCode::BAD_REQUEST, &msg)),
    };
    match route {
        Route::NotFound => Ok(error_response(
            Api::OpenAi,
            StatusCode::NOT_FOUND,
            "Unknown request URL (mock provider)",
        )),
        Route::MethodNotAllowed(api) => Ok(error_response(
            api,
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed",
        )),
        Route::Models => models(&shared, overrides).await,
        Route::Model(api) => model(&shared, api, &body, overrides).await,
    }
}

async fn models(shared: &Shared, overrides: Overrides) -> Result<Resp, io::Error> {
    let fault = overrides.fault.or_else(|| shared.take_fault(false));
    if let Some(f) = &fault {
        shared.stats.fault(f.label());
    }
    match fault {
        Some(Fault::Status {
            status,
            retry_after,
            body,
        }) => Ok(status_fault_response(
            Api::OpenAi,
            status,
            retry_after.as_ref(),
            body.as_deref(),
        )),
        Some(Fault::Hang) => Ok(std::future::pending().await),
        Some(Fault::Refuse { .. }) => Err(aborted("refuse")),
        Some(Fault::Drop { .. }) => Err(aborted("drop")),
        Some(Fault::Stall { .. }) => Ok(stalled_response(shared.cfg.models_body.len() as u64)),
        Some(Fault::Malformed) => Ok(json_response(
            StatusCode::OK,
            Bytes::from_static(b"{\"object\":\"list\",\"data\":[{\"id\":"),
        )),
        Some(Fault::Slow { delay }) => {
            sleep_for(delay).await;
            Ok(json_response(
                StatusCode::OK,
                shared.cfg.models_body.clone(),
            ))
        }
        None => Ok(json_response(
            StatusCode::OK,
            shared.cfg.models_body.clone(),
        )),
    }
}

async fn model(
    shared: &Shared,
    api: Api,
    body: &[u8],
    overrides: Overrides,
) -> Result<Resp, io::Error> {
    shared.stats.model_request();
    let fault = overrides.fault.or_else(|| shared.take_fault(true));
    if let Some(f) = &fault {
        shared.stats.fault(f.label());
    }
    // Faults that don't depend on the request body.
    match &fault {
        Some(Fault::Status {
            status,
            retry_after,
            body,
        }) => {
            return Ok(status_fault_response(
                api,
                *status,
                retry_after.as_ref(),
                body.as_deref(),
            ))
        }
        Some(Fault::Hang) => return Ok(std::future::pending().await),
        Some(Fault::Refuse { .. }) => return Err(aborted("refuse")),
        _ => {}
    }
    let seq = shared.seq.fetch_add(1, Ordering::Relaxed);
    let plan = match provider::plan(
        api,
        body,
        PlanInputs {
            seq,
            seed: shared.cfg.seed,
            output_range: &shared.cfg.output_tokens,
            output_override: overrides.output_tokens,
            created: unix_now(),
        },
    ) {
        Ok(p) => p,
        Err(msg) => return Ok(error_response(api, StatusCode::BAD_REQUEST, &msg)),
    };
    let mut ttft = overrides.ttft.unwrap_or(shared.cfg.ttft);
    if let Some(Fault::Slow { delay }) = &fault {
        ttft = ttft.saturating_add(*delay);
    }
    let interval = token_interval(
        overrides
            .tokens_per_sec
            .unwrap_or(shared.cfg.tokens_per_sec),
    );
    if plan.stream {
        let (end, after) = match &fault {
            Some(Fault::Stall { after_chunks }) => (StreamEnd::Stall, *after_chunks),
            Some(Fault::Drop { after_chunks }) => (StreamEnd::Drop, *after_chunks),
            Some(Fault::Malformed) => (StreamEnd::Malformed, 0),
            _ => (StreamEnd::Finish, 0),
        };
        sleep_for(ttft).await;
        return Ok(sse_response(SseBody::new(plan, end, after, interval)));
    }
    match &fault {
        Some(Fault::Drop { .. }) => Err(aborted("drop")),
        Some(Fault::Stall { .. }) => {
            sleep_for(ttft).await;
            Ok(stalled_response(plan.full_body().len() as u64))
        }
        Some(Fault::Malformed) => {
            sleep_for(ttft).await;
            Ok(json_response(StatusCode::OK, plan.malformed_body()))
        }
        _ => {
            let generation = interval.map_or(Duration::ZERO, |iv| {
                iv.saturating_mul(plan.output_tokens().saturating_sub(1))
            });
            sleep_for(ttft.saturating_add(generation)).await;
            Ok(json_response(StatusCode::OK, plan.full_body()))
        }
    }
}

// ---------------------------------------------------------------------------
// Control endpoints

fn control_error(status: StatusCode, message: &str) -> Resp {
    json_value(status, &json!({"ok": false, "error": message}))
}

fn fault_json(current: Option<(Fault, FaultScope)>) -> Value {
    match current {
        None => json!({"fault": null, "remaining": null}),
        Some((f, scope)) => {
            let remaining = match scope {
                FaultScope::Always => Value::Null,
                FaultScope::Next(n) => json!(n),
            };
            json!({"fault": f.to_json(), "remaining": remaining})
        }
    }
}

async fn control(shared: &Arc<Shared>, req: Request<Incoming>) -> Resp {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return control_error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    match (method, path.trim_end_matches('/')) {
        (Method::GET, "/_mock/stats") => match serde_json::to_value(shared.stats_snapshot()) {
            Ok(v) => json_value(StatusCode::OK, &v),
            Err(e) => control_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        (Method::POST, "/_mock/reset") => {
            shared.reset();
            json_value(StatusCode::OK, &json!({"ok": true}))
        }
        (Method::POST | Method::PUT, "/_mock/fault") => {
            let Ok(text) = std::str::from_utf8(&body) else {
                return control_error(StatusCode::BAD_REQUEST, "body is not UTF-8");
            };
            match parse_fault(text) {
                Ok((fault, scope)) => {
                    shared.set_fault(fault, scope);
                    let mut v = fault_json(shared.current_fault());
                    v["ok"] = json!(true);
                    json_value(StatusCode::OK, &v)
                }
                Err(e) => control_error(StatusCode::BAD_REQUEST, &e.to_string()),
            }
        }
        (Method::DELETE, "/_mock/fault") => {
            shared.clear_fault();
            json_value(StatusCode::OK, &json!({"ok": true}))
        }
        (Method::GET, "/_mock/fault") => {
            json_value(StatusCode::OK, &fault_json(shared.current_fault()))
        }
        (Method::GET, "/_mock/requests") => {
            let items: Vec<Value> = shared
                .recorder
                .all()
                .iter()
                .map(RecordedRequest::to_json)
                .collect();
            json_value(StatusCode::OK, &Value::Array(items))
        }
        _ => control_error(StatusCode::NOT_FOUND, "unknown control endpoint"),
    }
}
