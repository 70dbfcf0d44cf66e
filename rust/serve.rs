//! `tokvec serve`'s HTTP front: OpenAI's `POST /v1/embeddings`, with `GET /v1/models`, `GET /health` and
//! `GET /metrics`, served by hyper's HTTP/1.1 server on a multi-threaded tokio runtime.
//!
//! A request is read, checked, embedded and answered on the worker thread that took its connection: no GIL and no
//! hand-over, and the workers answer different connections at once, one per core. A request of many characters is
//! embedded on a blocking thread by the core's parallel pass, so that it does not hold a worker meanwhile.
//! The Python layer (python/tokvec/serve.py) owns the flags, loading the models (a `dimensions` variant is loaded
//! through `Config::loader`), the listening socket and the signals; docs/serve.md is the manual.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::TcpListener as StdListener;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::Value;

use crate::pool::EmbedModel;

/// The request fields of OpenAI's embeddings API; any other is refused, so that a misspelt one is not ignored.
const FIELDS: [&str; 5] = ["input", "model", "encoding_format", "dimensions", "user"];

/// The endpoints and the method each answers; metrics count any other path as "other".
const ENDPOINTS: [(&str, &str); 4] = [
    ("/v1/embeddings", "POST"),
    ("/v1/models", "GET"),
    ("/health", "GET"),
    ("/metrics", "GET"),
];
/// Indexes into `ENDPOINTS`.
const EMBEDDINGS: usize = 0;
const MODELS: usize = 1;
const HEALTH: usize = 2;
const METRICS: usize = 3;

/// Upper bounds (seconds) of the latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Requests whose texts add up to at most this many bytes are embedded on the worker thread that read them (the
/// core takes ~30 us per 1,000 characters); larger ones on a blocking thread, in parallel over the cores.
const INLINE_BYTES: usize = 16 * 1024;

/// How many `dimensions` variants of each model stay loaded; the least recently used goes first.
const MAX_VARIANTS: usize = 8;

/// What one request may ask for; beyond it the request gets a 4xx.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_inputs: usize,
    pub max_text_chars: usize,
    /// A request's body must have arrived this long after its head, and a connection's next head within as long.
    pub read_timeout: Duration,
}

/// Loads model `name` truncated to `dims` columns (the first use of a `dimensions` value); an error is the message.
pub type Loader = Box<dyn Fn(&str, usize) -> Result<Arc<EmbedModel>, String> + Send + Sync>;

/// Everything the service runs with.
pub struct Config {
    /// Served models, by the name clients pass as `model`, in the order `/v1/models` lists them.
    pub models: Vec<(String, Arc<EmbedModel>)>,
    /// `Authorization: Bearer KEY` needed on `/v1/*` when set.
    pub api_key: Option<Vec<u8>>,
    pub limits: Limits,
    pub loader: Loader,
    /// Worker threads of the runtime (>= 1).
    pub threads: usize,
    /// One line per request on stderr.
    pub access_log: bool,
    /// `created` of every model in `/v1/models` (seconds since the epoch).
    pub created: u64,
}

/// A model as the service runs it.
struct Served {
    /// Index of the served model this is (a `dimensions` variant counts under its model's name).
    model: usize,
    dim: usize,
    inner: Arc<EmbedModel>,
}

/// A request the service refuses: an HTTP status and OpenAI's error body.
#[derive(Debug)]
struct ApiError {
    status: u16,
    message: String,
    param: Option<String>,
    code: &'static str,
    headers: Vec<(&'static str, String)>,
    /// Close the connection after answering (the body was not read to its end).
    close: bool,
}

impl ApiError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            param: None,
            code,
            headers: Vec::new(),
            close: false,
        }
    }

    fn param(mut self, p: impl Into<String>) -> Self {
        self.param = Some(p.into());
        self
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    fn body(&self) -> Vec<u8> {
        let kind = if self.status >= 500 {
            "server_error"
        } else {
            "invalid_request_error"
        };
        let err = serde_json::json!({"error": {
            "message": self.message, "type": kind, "param": self.param, "code": self.code,
        }});
        serde_json::to_vec(&err).unwrap_or_default()
    }
}

/// What `route` ends with: an answer, an error answer, or nothing (the client went away before its body arrived).
enum Outcome {
    Answer(Vec<u8>, &'static str),
    Refused(ApiError),
    Gone,
}

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The service's counters, in Prometheus' text format; atomics, so that no request waits for another to count.
struct Metrics {
    models: Vec<String>,
    /// `(ENDPOINTS.len() + 1) × 500` slots: an endpoint (or "other") by status 100-599.
    requests: Vec<AtomicU64>,
    texts: Vec<AtomicU64>,
    tokens: Vec<AtomicU64>,
    buckets: Vec<AtomicU64>,
    nanos: AtomicU64,
    in_flight: AtomicI64,
}

const STATUSES: usize = 500;

impl Metrics {
    fn new(models: Vec<String>) -> Self {
        let zeros = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        Metrics {
            requests: zeros((ENDPOINTS.len() + 1) * STATUSES),
            texts: zeros(models.len()),
            tokens: zeros(models.len()),
            buckets: zeros(LATENCY_BUCKETS.len() + 1),
            nanos: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            models,
        }
    }

    fn request(&self, endpoint: usize, status: u16, took: Duration) {
        let s = (status as usize).clamp(100, 599) - 100;
        self.requests[endpoint * STATUSES + s].fetch_add(1, Relaxed);
        if endpoint == EMBEDDINGS {
            let secs = took.as_secs_f64();
            let b = LATENCY_BUCKETS.partition_point(|&le| le < secs);
            self.buckets[b].fetch_add(1, Relaxed);
            self.nanos.fetch_add(took.as_nanos() as u64, Relaxed);
        }
    }

    /// `/v1/embeddings` requests answered (those the latency histogram counted).
    fn answered(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    fn render(&self) -> Vec<u8> {
        use std::fmt::Write as _;
        let mut s = String::with_capacity(2048);
        s.push_str("# HELP tokvec_requests_total HTTP requests answered, by endpoint and status code.\n");
        s.push_str("# TYPE tokvec_requests_total counter\n");
        let mut rows = Vec::new();
        for (i, slot) in self.requests.iter().enumerate() {
            let n = slot.load(Relaxed);
            if n > 0 {
                let ep = ENDPOINTS.get(i / STATUSES).map_or("other", |e| e.0);
                rows.push((ep, i % STATUSES + 100, n));
            }
        }
        rows.sort();
        for (ep, st, n) in rows {
            let _ = writeln!(s, "tokvec_requests_total{{endpoint=\"{ep}\",status=\"{st}\"}} {n}");
        }
        for (metric, what, counts) in [
            ("texts", "Texts embedded", &self.texts),
            ("tokens", "Tokens embedded", &self.tokens),
        ] {
            let _ = writeln!(s, "# HELP tokvec_{metric}_total {what}, by model.");
            let _ = writeln!(s, "# TYPE tokvec_{metric}_total counter");
            for (m, c) in self.models.iter().zip(counts) {
                let _ = writeln!(s, "tokvec_{metric}_total{{model=\"{}\"}} {}", label(m), c.load(Relaxed));
            }
        }
        s.push_str(
            "# HELP tokvec_request_duration_seconds Time from a /v1/embeddings request's start to its answer.\n",
        );
        s.push_str("# TYPE tokvec_request_duration_seconds histogram\n");
        // the count is the buckets' sum, so that +Inf always equals it, even while a request is being counted
        let mut cum = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            cum += b.load(Relaxed);
            match LATENCY_BUCKETS.get(i) {
                Some(le) => {
                    let _ = writeln!(s, "tokvec_request_duration_seconds_bucket{{le=\"{le:?}\"}} {cum}");
                }
                None => {
                    let _ = writeln!(s, "tokvec_request_duration_seconds_bucket{{le=\"+Inf\"}} {cum}");
                }
            }
        }
        let secs = self.nanos.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(s, "tokvec_request_duration_seconds_sum {secs:?}");
        let _ = writeln!(s, "tokvec_request_duration_seconds_count {cum}");
        s.push_str("# HELP tokvec_requests_in_flight Requests being answered now.\n");
        s.push_str("# TYPE tokvec_requests_in_flight gauge\n");
        let _ = writeln!(s, "tokvec_requests_in_flight {}", self.in_flight.load(Relaxed));
        s.into_bytes()
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Counts a request in flight for as long as it lives (also when hyper drops it because its client went away).
struct InFlight<'a>(&'a AtomicI64);

impl<'a> InFlight<'a> {
    fn new(gauge: &'a AtomicI64) -> Self {
        gauge.fetch_add(1, Relaxed);
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

struct State {
    names: Vec<String>,
    models: Vec<Arc<Served>>,
    by_name: HashMap<String, usize>,
    /// Loaded `dimensions` variants, the most recently used last.
    variants: Mutex<Vec<((usize, usize), Arc<Served>)>>,
    api_key: Option<Vec<u8>>,
    limits: Limits,
    loader: Loader,
    access_log: bool,
    models_body: Vec<u8>,
    metrics: Metrics,
}

/// The running service. Dropping it stops the runtime (connections still open are closed).
pub struct Server {
    runtime: Option<tokio::runtime::Runtime>,
    state: Arc<State>,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<Duration>>>,
    /// Set when the service has stopped: whether every connection finished within the drain time.
    done: Arc<(Mutex<Option<bool>>, Condvar)>,
}

impl Server {
    /// Serves `listener` (a listening socket, taken over) until `stop`.
    pub fn start(listener: StdListener, cfg: Config) -> io::Result<Server> {
        if cfg.models.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no model to serve"));
        }
        listener.set_nonblocking(true)?;
        let names: Vec<String> = cfg.models.iter().map(|(n, _)| n.clone()).collect();
        let models_body = serde_json::to_vec(&serde_json::json!({
            "object": "list",
            "data": cfg.models.iter().map(|(n, m)| serde_json::json!({
                "id": n, "object": "model", "created": cfg.created, "owned_by": "tokvec", "dim": m.dim(),
            })).collect::<Vec<_>>(),
        }))
        .map_err(io::Error::other)?;
        let state = Arc::new(State {
            by_name: names.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect(),
            models: cfg
                .models
                .iter()
                .enumerate()
                .map(|(i, (_, m))| {
                    Arc::new(Served {
                        model: i,
                        dim: m.dim(),
                        inner: m.clone(),
                    })
                })
                .collect(),
            metrics: Metrics::new(names.clone()),
            names,
            variants: Mutex::new(Vec::new()),
            api_key: cfg.api_key,
            limits: cfg.limits,
            loader: cfg.loader,
            access_log: cfg.access_log,
            models_body,
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cfg.threads.max(1))
            .thread_name("tokvec-serve")
            .enable_all()
            .build()?;
        let listener = {
            let _in = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let done = Arc::new((Mutex::new(None), Condvar::new()));
        runtime.spawn(accept(listener, state.clone(), stop_rx, done.clone()));
        Ok(Server {
            runtime: Some(runtime),
            state,
            stop: Mutex::new(Some(stop_tx)),
            done,
        })
    }

    /// Waits at most `timeout` for the service to stop; `Some(drained)` once it has.
    pub fn wait(&self, timeout: Duration) -> Option<bool> {
        let (lock, cv) = &*self.done;
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = cv
            .wait_timeout_while(guard, timeout, |d| d.is_none())
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }

    /// Stops accepting connections (the listening socket is closed) and lets the requests in flight finish, for at
    /// most `drain`; idle connections are closed. Returns at once; `wait` tells when it is done.
    pub fn stop(&self, drain: Duration) {
        if let Some(tx) = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(drain);
        }
    }

    /// `/v1/embeddings` requests answered so far.
    pub fn answered(&self) -> u64 {
        self.state.metrics.answered()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_millis(100));
        }
    }
}

async fn accept(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    mut stop: tokio::sync::oneshot::Receiver<Duration>,
    done: Arc<(Mutex<Option<bool>>, Condvar)>,
) {
    let graceful = GracefulShutdown::new();
    let drain = loop {
        tokio::select! {
            got = &mut stop => break got.unwrap_or(Duration::ZERO),
            conn = listener.accept() => match conn {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let st = state.clone();
                    let svc = hyper::service::service_fn(move |req| handle(st.clone(), req));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(state.limits.read_timeout)
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc);
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
                // out of file descriptors, a connection reset while queued, ...: the next accept may work
                Err(e) => {
                    if state.access_log {
                        eprintln!("tokvec serve: accept failed: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            },
        }
    };
    drop(listener); // closed: new connections are refused while the others drain
    let drained = tokio::time::timeout(drain, graceful.shutdown()).await.is_ok();
    let (lock, cv) = &*done;
    *lock.lock().unwrap_or_else(|e| e.into_inner()) = Some(drained);
    cv.notify_all();
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let t0 = Instant::now();
    let endpoint = ENDPOINTS
        .iter()
        .position(|e| e.0 == req.uri().path())
        .unwrap_or(ENDPOINTS.len());
    let log = state
        .access_log
        .then(|| format!("{} {}", req.method(), req.uri().path()));
    let flight = InFlight::new(&state.metrics.in_flight);
    let outcome = route(&state, req, endpoint, t0).await;
    drop(flight);
    let (status, body, ctype, headers, close) = match outcome {
        Outcome::Answer(body, ctype) => (200, body, ctype, Vec::new(), false),
        Outcome::Refused(e) => (e.status, e.body(), JSON, e.headers, e.close),
        Outcome::Gone => {
            // nobody to answer; hyper closes the connection
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            return Ok(r);
        }
    };
    // counted before the answer goes out: a client that has its answer finds it in a later scrape
    state.metrics.request(endpoint, status, t0.elapsed());
    if let Some(what) = log {
        eprintln!(
            "tokvec serve: {what} {status} {} bytes {:.2} ms",
            body.len(),
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    for (name, value) in headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(HeaderName::from_static(name), v);
        }
    }
    if close {
        h.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(r)
}

/// Answers `req`, whose path is `ENDPOINTS[endpoint]` (or none of them: `endpoint == ENDPOINTS.len()`).
async fn route(state: &Arc<State>, req: Request<Incoming>, endpoint: usize, t0: Instant) -> Outcome {
    let path = req.uri().path();
    let Some(&(_, method)) = ENDPOINTS.get(endpoint) else {
        return Outcome::Refused(ApiError::new(
            404,
            "not_found",
            format!(
                "no endpoint {path}; this service has POST /v1/embeddings, GET /v1/models, GET /health and \
                 GET /metrics"
            ),
        ));
    };
    if req.method().as_str() != method {
        return Outcome::Refused(
            ApiError::new(
                405,
                "method_not_allowed",
                format!("{path} answers {method}, not {}", req.method()),
            )
            .header("allow", method),
        );
    }
    match endpoint {
        HEALTH => return Outcome::Answer(b"{\"status\":\"ok\"}".to_vec(), JSON),
        METRICS => return Outcome::Answer(state.metrics.render(), TEXT),
        _ => {}
    }
    if let Err(e) = authorize(state, &req) {
        return Outcome::Refused(e);
    }
    if endpoint == MODELS {
        return Outcome::Answer(state.models_body.clone(), JSON);
    }
    debug_assert_eq!(endpoint, EMBEDDINGS);
    debug_assert_eq!(req.method(), Method::POST);
    let raw = match read_body(state, req, t0).await {
        Ok(Some(raw)) => raw,
        Ok(None) => return Outcome::Gone,
        Err(e) => return Outcome::Refused(e),
    };
    match embeddings(state, &raw).await {
        Ok(body) => Outcome::Answer(body, JSON),
        Err(e) => Outcome::Refused(e),
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(401, "invalid_api_key", message).header("www-authenticate", "Bearer")
}

fn authorize(state: &State, req: &Request<Incoming>) -> Result<(), ApiError> {
    let Some(key) = &state.api_key else {
        return Ok(());
    };
    let Some(auth) = req.headers().get(AUTHORIZATION) else {
        return Err(unauthorized(
            "no API key given: send the header 'Authorization: Bearer KEY' (the openai client: api_key=KEY)",
        ));
    };
    let auth = auth.as_bytes();
    let (scheme, given) = match auth.iter().position(|&b| b == b' ') {
        Some(i) => (&auth[..i], auth[i + 1..].trim_ascii()),
        None => (auth, &b""[..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") || !same_secret(given, key) {
        return Err(unauthorized("wrong API key"));
    }
    Ok(())
}

/// `a == b` in a time that depends on their lengths only, not on where they differ (so that timing does not reveal
/// a key's prefix).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The request's body: its content type checked, at most `max_body_bytes` (refused from `Content-Length` before
/// it is read, or as its chunks arrive), all of it within `read_timeout` of the request's start. `None`: the
/// client went away.
async fn read_body(state: &State, req: Request<Incoming>, t0: Instant) -> Result<Option<Vec<u8>>, ApiError> {
    let limits = &state.limits;
    if let Some(ct) = req.headers().get(CONTENT_TYPE) {
        let raw = ct.as_bytes();
        let main = raw.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
        if !main.eq_ignore_ascii_case(b"application/json") {
            let shown: String = raw.iter().map(|&b| b as char).collect();
            return Err(ApiError::new(
                415,
                "unsupported_media_type",
                format!(
                    "the body must be JSON, sent as 'Content-Type: application/json' (got '{shown}'); with curl: \
                     -H 'Content-Type: application/json'"
                ),
            )
            .closing());
        }
    }
    let limit = limits.max_body_bytes;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|&n| n > limit as u64) {
        return Err(ApiError::new(
            413,
            "request_too_large",
            format!("the body has {n} bytes, more than the {limit} allowed (--max-body-bytes)"),
        )
        .closing());
    }
    let deadline = tokio::time::Instant::from_std(t0 + limits.read_timeout);
    let mut body = req.into_body();
    let mut buf = Vec::with_capacity(declared.unwrap_or(0) as usize);
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(ApiError::new(
                    408,
                    "request_timeout",
                    format!(
                        "the body did not arrive within {} s (--read-timeout)",
                        limits.read_timeout.as_secs_f64()
                    ),
                )
                .closing())
            }
            Ok(None) => return Ok(Some(buf)),
            Ok(Some(Err(e))) => {
                if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
                    return Ok(None);
                }
                let why = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| format!("{e}: {s}"));
                return Err(
                    ApiError::new(400, "bad_http", format!("the request is not valid HTTP/1.1: {why}")).closing(),
                );
            }
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if buf.len() + data.len() > limit {
                        return Err(ApiError::new(
                            413,
                            "request_too_large",
                            format!("the body is more than the {limit} bytes allowed (--max-body-bytes)"),
                        )
                        .closing());
                    }
                    buf.extend_from_slice(data);
                }
            }
        }
    }
}

/// The checked fields of an embeddings request.
struct Ask {
    model: usize,
    texts: Vec<String>,
    base64: bool,
    dims: Option<usize>,
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Object(_) => "an object",
        Value::Array(_) => "a list",
        Value::String(_) => "a string",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::Null => "null",
    }
}

fn names(state: &State) -> String {
    state
        .names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse(state: &State, raw: &[u8]) -> Result<Ask, ApiError> {
    let req: Value = serde_json::from_slice(raw)
        .map_err(|e| ApiError::new(400, "invalid_json", format!("the body is not valid JSON: {e}")))?;
    let Value::Object(mut req) = req else {
        return Err(ApiError::new(
            400,
            "invalid_type",
            format!(
                "the body must be a JSON object with 'input' and 'model', got {}",
                kind(&req)
            ),
        ));
    };
    if let Some(extra) = req.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::new(
            400,
            "unknown_parameter",
            format!("unknown field '{extra}'; the fields are {}", FIELDS.join(", ")),
        )
        .param(extra.clone()));
    }
    let model = match req.get("model") {
        None | Some(Value::Null) => {
            return Err(ApiError::new(
                400,
                "missing_parameter",
                format!("'model' is missing; this service has {}", names(state)),
            )
            .param("model"))
        }
        Some(Value::String(name)) => *state.by_name.get(name).ok_or_else(|| {
            ApiError::new(
                404,
                "model_not_found",
                format!("no model named '{name}'; this service has {}", names(state)),
            )
            .param("model")
        })?,
        Some(other) => {
            return Err(ApiError::new(
                400,
                "invalid_type",
                format!("'model' must be a string, got {}", kind(other)),
            )
            .param("model"))
        }
    };
    let base64 = match req.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(other) => {
            return Err(ApiError::new(
                400,
                "invalid_value",
                format!("'encoding_format' must be 'float' or 'base64', got {other}"),
            )
            .param("encoding_format"))
        }
    };
    let dims = match req.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {
            let dim = state.models[model].dim;
            match n.as_u64().filter(|&d| d >= 1 && d <= dim as u64) {
                Some(d) => Some(d as usize),
                None => {
                    return Err(ApiError::new(
                        400,
                        "invalid_value",
                        format!(
                            "'dimensions' must be in [1, {dim}] for model '{}' (its vectors have {dim}; fewer keeps \
                             the first ones), got {n}",
                            state.names[model]
                        ),
                    )
                    .param("dimensions"))
                }
            }
        }
        Some(other) => {
            return Err(ApiError::new(
                400,
                "invalid_type",
                format!("'dimensions' must be an integer, got {}", kind(other)),
            )
            .param("dimensions"))
        }
    };
    if let Some(user) = req.get("user").filter(|u| !u.is_null() && !u.is_string()) {
        return Err(ApiError::new(
            400,
            "invalid_type",
            format!("'user' must be a string, got {}", kind(user)),
        )
        .param("user"));
    }
    let texts = texts(state, req.remove("input"))?;
    Ok(Ask {
        model,
        texts,
        base64,
        dims,
    })
}

fn token_ids() -> ApiError {
    ApiError::new(
        400,
        "token_ids_unsupported",
        "'input' holds token ids; this service embeds text: token ids are the client's tokenizer's (tiktoken's for \
         OpenAI clients), not this model's, so they cannot be mapped to its tokens. Send the texts as strings \
         (LangChain's OpenAIEmbeddings: check_embedding_ctx_length=False)",
    )
    .param("input")
}

fn texts(state: &State, input: Option<Value>) -> Result<Vec<String>, ApiError> {
    let lim = &state.limits;
    let texts = match input {
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return Err(
                    ApiError::new(400, "invalid_value", "'input' is an empty list; send at least one text")
                        .param("input"),
                );
            }
            let mut texts = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    Value::String(s) => texts.push(s),
                    Value::Number(n) if n.is_i64() || n.is_u64() => return Err(token_ids()),
                    Value::Array(ids) if ids.iter().all(|x| x.is_i64() || x.is_u64()) => return Err(token_ids()),
                    other => {
                        return Err(ApiError::new(
                            400,
                            "invalid_type",
                            format!("'input[{i}]' must be a string, got {}", kind(&other)),
                        )
                        .param(format!("input[{i}]")))
                    }
                }
            }
            texts
        }
        None | Some(Value::Null) => {
            return Err(ApiError::new(
                400,
                "missing_parameter",
                "'input' is missing: a string or a list of strings",
            )
            .param("input"))
        }
        Some(other) => {
            return Err(ApiError::new(
                400,
                "invalid_type",
                format!("'input' must be a string or a list of strings, got {}", kind(&other)),
            )
            .param("input"))
        }
    };
    if texts.len() > lim.max_inputs {
        return Err(ApiError::new(
            400,
            "too_many_inputs",
            format!(
                "'input' has {} texts, more than the {} allowed per request (--max-inputs); send them in several \
                 requests",
                texts.len(),
                lim.max_inputs
            ),
        )
        .param("input"));
    }
    for (i, t) in texts.iter().enumerate() {
        // characters, as Python counts them; no text of fewer bytes can have more
        if t.len() > lim.max_text_chars {
            let n = t.chars().count();
            if n > lim.max_text_chars {
                return Err(ApiError::new(
                    400,
                    "text_too_long",
                    format!(
                        "'input[{i}]' has {n} characters, more than the {} allowed (--max-text-chars)",
                        lim.max_text_chars
                    ),
                )
                .param(format!("input[{i}]")));
            }
        }
    }
    Ok(texts)
}

async fn embeddings(state: &Arc<State>, raw: &[u8]) -> Result<Vec<u8>, ApiError> {
    let ask = parse(state, raw)?;
    let served = match ask.dims {
        Some(d) if d != state.models[ask.model].dim => variant(state, ask.model, d).await?,
        _ => state.models[ask.model].clone(),
    };
    let bytes: usize = ask.texts.iter().map(String::len).sum();
    if bytes <= INLINE_BYTES {
        answer(state, &served, &ask, false)
    } else {
        let st = state.clone();
        tokio::task::spawn_blocking(move || answer(&st, &served, &ask, true))
            .await
            .map_err(|e| ApiError::new(500, "internal_error", format!("internal error: {e}")))?
    }
}

/// The model `model` truncated to `dims` columns: loaded by `Config::loader` on a blocking thread on first use,
/// then kept (at most MAX_VARIANTS per model, the least recently used dropped first).
async fn variant(state: &Arc<State>, model: usize, dims: usize) -> Result<Arc<Served>, ApiError> {
    let key = (model, dims);
    {
        let mut v = state.variants.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = v.iter().position(|(k, _)| *k == key) {
            let hit = v.remove(i);
            let served = hit.1.clone();
            v.push(hit);
            return Ok(served);
        }
    }
    let st = state.clone();
    let loaded = tokio::task::spawn_blocking(move || (st.loader)(&st.names[model], dims))
        .await
        .map_err(|e| ApiError::new(500, "internal_error", format!("internal error: {e}")))?
        .map_err(|e| {
            ApiError::new(
                500,
                "internal_error",
                format!(
                    "model '{}' could not be loaded with dimensions={dims}: {e}",
                    state.names[model]
                ),
            )
        })?;
    if loaded.dim() != dims {
        return Err(ApiError::new(
            500,
            "internal_error",
            format!(
                "model '{}' loaded with dimensions={dims} has {} dims",
                state.names[model],
                loaded.dim()
            ),
        ));
    }
    let served = Arc::new(Served {
        model,
        dim: dims,
        inner: loaded,
    });
    let mut v = state.variants.lock().unwrap_or_else(|e| e.into_inner());
    // another request may have loaded it meanwhile: either copy will do
    v.retain(|(k, _)| *k != key);
    v.push((key, served.clone()));
    let mine: Vec<usize> = (0..v.len()).filter(|&i| v[i].0 .0 == model).collect();
    if mine.len() > MAX_VARIANTS {
        v.remove(mine[0]);
    }
    Ok(served)
}

/// Embeds the request's texts and writes OpenAI's answer.
fn answer(state: &State, served: &Served, ask: &Ask, parallel: bool) -> Result<Vec<u8>, ApiError> {
    let n = ask.texts.len();
    let dim = served.dim;
    let strs: Vec<&str> = ask.texts.iter().map(String::as_str).collect();
    let mut vecs = vec![0f32; n * dim];
    let mut counts = vec![0u64; n];
    served
        .inner
        .embed_counted(&strs, &mut vecs, &mut counts, parallel)
        .map_err(|e| ApiError::new(400, "invalid_value", format!("'input' cannot be embedded: {e}")).param("input"))?;
    let tokens: u64 = counts.iter().sum();
    let m = &state.metrics;
    m.texts[served.model].fetch_add(n as u64, Relaxed);
    m.tokens[served.model].fetch_add(tokens, Relaxed);
    let name = &state.names[served.model];
    let per = if ask.base64 { dim * 4 / 3 + 48 } else { dim * 12 + 44 };
    let mut out = Vec::with_capacity(n * per + name.len() + 96);
    out.extend_from_slice(b"{\"object\":\"list\",\"data\":[");
    let mut floats = ryu::Buffer::new();
    let mut le = Vec::with_capacity(dim * 4);
    for (i, row) in vecs.chunks_exact(dim.max(1)).take(n).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"object\":\"embedding\",\"index\":");
        out.extend_from_slice(i.to_string().as_bytes());
        out.extend_from_slice(b",\"embedding\":");
        if ask.base64 {
            // OpenAI's base64: the float32 values' little-endian bytes
            le.clear();
            le.extend(row.iter().flat_map(|x| x.to_le_bytes()));
            out.push(b'"');
            let at = out.len();
            out.resize(at + base64::encoded_len(le.len(), true).unwrap_or(0), 0);
            let wrote = base64::engine::general_purpose::STANDARD
                .encode_slice(&le, &mut out[at..])
                .unwrap_or(0);
            out.truncate(at + wrote);
            out.push(b'"');
        } else {
            out.push(b'[');
            for (j, x) in row.iter().enumerate() {
                if j > 0 {
                    out.push(b',');
                }
                // the shortest text that reads back as the same float32 (the vectors are finite)
                out.extend_from_slice(floats.format_finite(*x).as_bytes());
            }
            out.push(b']');
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"model\":");
    serde_json::to_writer(&mut out, name).map_err(|e| ApiError::new(500, "internal_error", e.to_string()))?;
    out.extend_from_slice(format!(",\"usage\":{{\"prompt_tokens\":{tokens},\"total_tokens\":{tokens}}}}}").as_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_secret_is_equality() {
        assert!(same_secret(b"sk-0123", b"sk-0123"));
        assert!(!same_secret(b"sk-0123", b"sk-0124"));
        assert!(!same_secret(b"Xk-0123", b"sk-0123"));
        assert!(!same_secret(b"sk-012", b"sk-0123"));
        assert!(!same_secret(b"", b"k"));
        assert!(same_secret(b"", b""));
    }

    fn values(m: &Metrics) -> Vec<(String, f64)> {
        String::from_utf8(m.render())
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap();
                (k.to_string(), v.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn metrics_count_every_status_and_a_cumulative_histogram() {
        let m = Metrics::new(vec!["a".into(), "we\"ird\nname".into()]);
        m.request(0, 200, Duration::from_micros(300)); // first bucket
        m.request(0, 200, Duration::from_millis(3)); // 0.005
        m.request(0, 413, Duration::from_secs(20)); // +Inf
        m.request(ENDPOINTS.len(), 404, Duration::ZERO); // "other": not in the histogram
        m.request(3, 599, Duration::ZERO);
        m.texts[1].fetch_add(5, Relaxed);
        let v = values(&m);
        let get = |k: &str| v.iter().find(|(n, _)| n == k).map(|x| x.1);
        assert_eq!(
            get(r#"tokvec_requests_total{endpoint="/v1/embeddings",status="200"}"#),
            Some(2.0)
        );
        assert_eq!(
            get(r#"tokvec_requests_total{endpoint="/v1/embeddings",status="413"}"#),
            Some(1.0)
        );
        assert_eq!(
            get(r#"tokvec_requests_total{endpoint="other",status="404"}"#),
            Some(1.0)
        );
        assert_eq!(
            get(r#"tokvec_requests_total{endpoint="/metrics",status="599"}"#),
            Some(1.0)
        );
        assert_eq!(get(r#"tokvec_texts_total{model="we\"ird\nname"}"#), Some(5.0));
        assert_eq!(get(r#"tokvec_request_duration_seconds_bucket{le="0.0005"}"#), Some(1.0));
        assert_eq!(get(r#"tokvec_request_duration_seconds_bucket{le="0.005"}"#), Some(2.0));
        assert_eq!(get(r#"tokvec_request_duration_seconds_bucket{le="10.0"}"#), Some(2.0));
        assert_eq!(get(r#"tokvec_request_duration_seconds_bucket{le="+Inf"}"#), Some(3.0));
        assert_eq!(get("tokvec_request_duration_seconds_count"), Some(3.0));
        let sum = get("tokvec_request_duration_seconds_sum").unwrap();
        assert!((sum - 20.0033).abs() < 1e-9, "{sum}");
        assert_eq!(m.answered(), 3);
        let buckets: Vec<f64> = v.iter().filter(|(n, _)| n.contains("_bucket")).map(|x| x.1).collect();
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]));
        {
            let _a = InFlight::new(&m.in_flight);
            let _b = InFlight::new(&m.in_flight);
            assert_eq!(
                values(&m)
                    .iter()
                    .find(|(n, _)| n == "tokvec_requests_in_flight")
                    .unwrap()
                    .1,
                2.0
            );
        }
        assert_eq!(m.in_flight.load(Relaxed), 0);
    }
}
