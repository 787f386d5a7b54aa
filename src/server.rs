//! `gemma-wgpu serve`: an OpenAI-compatible HTTP server for one loaded model.
//!
//! The model holds the GPU device, its buffers and one KV cache, so it runs on one dedicated
//! worker thread that owns it and takes jobs in arrival order from a bounded queue; the HTTP
//! side (axum on tokio) only parses, queues and relays. Each job renders its prompt fresh into
//! an empty KV cache, so requests never see each other's state. A job streams its events back
//! on a channel; when the client goes away (a dropped stream or a closed connection) that
//! channel closes, and the worker cancels the generation before its next token, so the next
//! request in the queue starts promptly.
//!
//! Request parsing, validation and the response shapes are shared with the browser engine in
//! [`crate::openai`].

use std::collections::VecDeque;
use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::mpsc;

use crate::chat::ChatTemplate;
use crate::constrain::ConstraintFactory;
use crate::generate::Generation;
use crate::model::Model;
use crate::openai::{
    prepare_chat, ApiError, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest,
    CompletionRequest, Delta, FinishReason, ModelList, ReplyFilter, TextCompletion, ToolCallOut,
    Usage,
};
use crate::sampler::SamplingParams;
use crate::tokenizer::Tokenizer;
use crate::tool_calls::{ParsedCall, ReplyPart};

/// How the server is set up (the command line of `serve`).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub host: String,
    /// 0: any free port (the one chosen is reported to `on_ready`).
    pub port: u16,
    /// Requests to `/v1/*` must carry `Authorization: Bearer <key>` when set.
    pub api_key: Option<String>,
    /// Larger request bodies are refused with 413.
    pub max_request_bytes: usize,
    /// Most tokens one request may generate (also the default for requests that name none).
    pub max_tokens_limit: u32,
    /// Most requests waiting behind the running one; more are refused with 503.
    pub queue_limit: usize,
    /// The model's name in `/v1/models` and in every response.
    pub model_id: String,
}

/// What the worker thread owns: the model, its tokenizer and its chat template.
pub struct Engine {
    pub model: Model,
    pub tok: Tokenizer,
    pub template: ChatTemplate,
    /// Built on the first request with a `response_format` (the token trie).
    pub constraints: Option<ConstraintFactory>,
}

/// What a job generates from.
enum Prompt {
    /// Messages rendered with the chat template.
    Chat(Box<ChatCompletionRequest>),
    /// Raw text, encoded with BOS (`/v1/completions`).
    Text(String),
}

struct Job {
    /// The response id, for the log line.
    id: String,
    prompt: Prompt,
    sampling: SamplingParams,
    max_tokens: u32,
    stop: Vec<String>,
    events: mpsc::UnboundedSender<Event>,
}

/// What a job reports, in this order: `Started` or `Failed`, then any `Text`, then `Done` or
/// `Failed`.
#[derive(Debug)]
enum Event {
    /// The prompt is in the KV cache; generation begins.
    Started,
    Text(String),
    /// A whole tool call (chat requests with tools).
    ToolCall(ParsedCall),
    Done {
        finish: FinishReason,
        usage: Usage,
    },
    Failed(ApiError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(self.body())).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

struct AppState {
    config: ServerConfig,
    jobs: mpsc::Sender<Job>,
    /// When the server started: the `created` of the model entry.
    created: u64,
}

/// Runs the server until Ctrl-C: binds (so a taken port fails before the model loads), loads
/// the engine with `load` on the worker thread that will own it (the model's GPU objects and
/// file maps stay on that thread), calls `on_ready` with the bound address, then serves.
pub fn run(
    config: ServerConfig,
    load: impl FnOnce() -> anyhow::Result<Engine> + Send + 'static,
    on_ready: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port))
            .await
            .with_context(|| format!("listening on {}:{}", config.host, config.port))?;
        let addr = listener.local_addr()?;
        let (jobs, queue) = mpsc::channel(config.queue_limit.max(1));
        let (loaded_tx, loaded) = tokio::sync::oneshot::channel();
        let model_thread = std::thread::Builder::new()
            .name("gemma-wgpu model".into())
            .spawn(move || match load() {
                Ok(engine) => {
                    let _ = loaded_tx.send(Ok(()));
                    worker(engine, queue);
                }
                Err(e) => {
                    let _ = loaded_tx.send(Err(e));
                }
            })?;
        loaded
            .await
            .map_err(|_| anyhow::anyhow!("the model thread ended while loading"))??;
        let app = router(Arc::new(AppState {
            config,
            jobs,
            created: unix_time(),
        }));
        on_ready(addr);
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        // The router (and with it the queue's sender) is gone: the worker finishes its job
        // and ends.
        let _ = tokio::task::spawn_blocking(move || model_thread.join()).await;
        Ok(())
    })
}

fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_request_bytes;
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .merge(v1)
        .fallback(|| async {
            ApiError::new(404, "invalid_request_error", "no such endpoint").with_code("not_found")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                405,
                "invalid_request_error",
                "method not allowed on this endpoint",
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Checks `Authorization: Bearer <key>` when the server has a key.
async fn authorize(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(key) = &state.config.api_key {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given.is_some_and(|g| constant_time_eq(g.trim().as_bytes(), key.as_bytes()));
        if !ok {
            let message = if given.is_none() {
                "missing API key: send it as Authorization: Bearer <key>"
            } else {
                "incorrect API key"
            };
            return ApiError::new(401, "invalid_request_error", message)
                .with_code("invalid_api_key")
                .into_response();
        }
    }
    next.run(request).await
}

/// Compares without stopping at the first difference, so the time taken does not tell how
/// much of a guessed key was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList::one(&state.config.model_id, state.created))
}

/// The body, or the extractor's refusal (413 over the size limit) as an OpenAI error.
fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        let status = r.status().as_u16();
        let message = if status == 413 {
            "the request body is larger than this server accepts (--max-request-bytes)".into()
        } else {
            format!("could not read the request body: {}", r.body_text())
        };
        ApiError::new(status, "invalid_request_error", message)
    })
}

async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request = ChatCompletionRequest::parse(&body_bytes(body)?)?;
    let options = request.options.clone();
    let max_tokens = options.max_tokens_within(state.config.max_tokens_limit)?;
    let reply = Reply {
        id: format!("chatcmpl-{}", random_hex()),
        created: unix_time(),
        model: state.config.model_id.clone(),
        chat: true,
        include_usage: options.include_usage,
    };
    let events = submit(
        &state,
        &reply.id,
        Prompt::Chat(Box::new(request)),
        options.sampling_params(random_u64()),
        max_tokens,
        options.stop,
    )?;
    reply.respond(events, options.stream).await
}

async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request = CompletionRequest::parse(&body_bytes(body)?)?;
    let options = request.options;
    let max_tokens = options.max_tokens_within(state.config.max_tokens_limit)?;
    let reply = Reply {
        id: format!("cmpl-{}", random_hex()),
        created: unix_time(),
        model: state.config.model_id.clone(),
        chat: false,
        include_usage: options.include_usage,
    };
    let events = submit(
        &state,
        &reply.id,
        Prompt::Text(request.prompt),
        options.sampling_params(random_u64()),
        max_tokens,
        options.stop,
    )?;
    reply.respond(events, options.stream).await
}

/// Queues a job; a full queue is refused at once (503) rather than left to time out.
fn submit(
    state: &AppState,
    id: &str,
    prompt: Prompt,
    sampling: SamplingParams,
    max_tokens: u32,
    stop: Vec<String>,
) -> Result<mpsc::UnboundedReceiver<Event>, ApiError> {
    let (events, rx) = mpsc::unbounded_channel();
    let job = Job {
        id: id.to_string(),
        prompt,
        sampling,
        max_tokens,
        stop,
        events,
    };
    state.jobs.try_send(job).map_err(|e| match e {
        mpsc::error::TrySendError::Full(_) => ApiError::new(
            503,
            "server_error",
            format!(
                "the server is busy: {} requests are already waiting (--queue-limit); retry later",
                state.config.queue_limit
            ),
        )
        .with_code("queue_full"),
        mpsc::error::TrySendError::Closed(_) => {
            ApiError::new(503, "server_error", "the model worker has stopped")
        }
    })?;
    Ok(rx)
}

/// How one request's answer is written: a chat completion or a text completion.
struct Reply {
    id: String,
    created: u64,
    model: String,
    chat: bool,
    include_usage: bool,
}

impl Reply {
    /// Waits for the job to start (so that a refused prompt is still an HTTP error), then
    /// answers with the whole completion or an event stream.
    async fn respond(
        self,
        mut events: mpsc::UnboundedReceiver<Event>,
        stream: bool,
    ) -> Result<Response, ApiError> {
        match events.recv().await {
            Some(Event::Started) => {}
            Some(Event::Failed(e)) => return Err(e),
            other => return Err(worker_gone(other)),
        }
        if stream {
            return Ok(self.stream(events));
        }
        let mut text = String::new();
        let mut calls = Vec::new();
        loop {
            match events.recv().await {
                Some(Event::Text(t)) => text.push_str(&t),
                Some(Event::ToolCall(c)) => calls.push(ToolCallOut::new(
                    &c,
                    calls.len() as u32,
                    call_id_base(&self.id),
                )),
                Some(Event::Done { finish, usage }) => {
                    let body = if self.chat {
                        serde_json::to_value(ChatCompletion::new(
                            self.id,
                            self.created,
                            self.model,
                            text,
                            calls,
                            finish,
                            usage,
                        ))
                    } else {
                        serde_json::to_value(TextCompletion::new(
                            &self.id,
                            self.created,
                            &self.model,
                            text,
                            Some(finish),
                            Some(usage),
                        ))
                    };
                    return Ok(Json(body.unwrap_or_default()).into_response());
                }
                Some(Event::Failed(e)) => return Err(e),
                other => return Err(worker_gone(other)),
            }
        }
    }

    /// Server-sent events: `data: {chunk}` per piece, ending with `data: [DONE]`. Dropping the
    /// body (the client went away) drops `events`, which cancels the job.
    fn stream(self, events: mpsc::UnboundedReceiver<Event>) -> Response {
        let mut queued = VecDeque::new();
        if self.chat {
            // The first chunk names the role, as OpenAI's does.
            queued.push_back(self.chunk(
                Delta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                    ..Default::default()
                },
                None,
            ));
        }
        // The state: the reply, its events, chunks to send, whether it ended, calls so far.
        let state = (self, events, queued, false, 0u32);
        let body = futures_util::stream::unfold(
            state,
            |(reply, mut events, mut queued, mut finished, mut calls)| async move {
                loop {
                    if let Some(e) = queued.pop_front() {
                        return Some((
                            Ok::<_, Infallible>(e),
                            (reply, events, queued, finished, calls),
                        ));
                    }
                    if finished {
                        return None;
                    }
                    match events.recv().await {
                        Some(Event::Text(t)) => queued.push_back(reply.chunk(
                            Delta {
                                content: Some(t),
                                ..Default::default()
                            },
                            None,
                        )),
                        // A call streams whole, in one delta (OpenAI's clients accept that).
                        Some(Event::ToolCall(c)) => {
                            let call = ToolCallOut::new(&c, calls, call_id_base(&reply.id))
                                .in_stream(calls);
                            calls += 1;
                            queued.push_back(reply.chunk(
                                Delta {
                                    tool_calls: vec![call],
                                    ..Default::default()
                                },
                                None,
                            ))
                        }
                        Some(Event::Done { finish, usage }) => {
                            queued.push_back(reply.chunk(Delta::default(), Some(finish)));
                            if reply.include_usage {
                                queued.push_back(reply.usage_chunk(usage));
                            }
                            queued.push_back(SseEvent::default().data("[DONE]"));
                            finished = true;
                        }
                        // OpenAI's clients raise an `error` object that arrives mid-stream.
                        Some(Event::Failed(e)) => {
                            queued.push_back(SseEvent::default().data(e.body().to_string()));
                            finished = true;
                        }
                        Some(Event::Started) => {}
                        None => {
                            let e = worker_gone(None);
                            queued.push_back(SseEvent::default().data(e.body().to_string()));
                            finished = true;
                        }
                    }
                }
            },
        );
        Sse::new(body).into_response()
    }

    fn chunk(&self, delta: Delta, finish: Option<FinishReason>) -> SseEvent {
        let json = if self.chat {
            serde_json::to_string(&ChatCompletionChunk::new(
                &self.id,
                self.created,
                &self.model,
                delta,
                finish,
            ))
        } else {
            serde_json::to_string(&TextCompletion::new(
                &self.id,
                self.created,
                &self.model,
                delta.content.unwrap_or_default(),
                finish,
                None,
            ))
        };
        SseEvent::default().data(json.unwrap_or_default())
    }

    fn usage_chunk(&self, usage: Usage) -> SseEvent {
        let json = if self.chat {
            serde_json::to_string(&ChatCompletionChunk::usage(
                &self.id,
                self.created,
                &self.model,
                usage,
            ))
        } else {
            serde_json::to_string(&TextCompletion::usage_chunk(
                &self.id,
                self.created,
                &self.model,
                usage,
            ))
        };
        SseEvent::default().data(json.unwrap_or_default())
    }
}

/// The worker ended a job without saying how (it panicked; the panic was reported).
fn worker_gone(event: Option<Event>) -> ApiError {
    ApiError::new(
        500,
        "server_error",
        match event {
            None => "the generation ended unexpectedly (internal error)".to_string(),
            Some(e) => format!("unexpected event from the model worker: {e:?}"),
        },
    )
}

/// The model thread: runs jobs one at a time until the queue closes.
fn worker(mut engine: Engine, mut queue: mpsc::Receiver<Job>) {
    while let Some(job) = queue.blocking_recv() {
        // The client left while the job was waiting.
        if job.events.is_closed() {
            continue;
        }
        let events = job.events.clone();
        // A panic fails this request, not the server: the next job starts from a reset cache.
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| run_job(&mut engine, job)));
        let result = match run {
            Ok(r) => r,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("panic");
                Err(ApiError::new(
                    500,
                    "server_error",
                    format!("internal error: {what}"),
                ))
            }
        };
        if let Err(e) = result {
            let _ = events.send(Event::Failed(e));
        }
    }
}

/// Renders and encodes the prompt, prefills it into an empty KV cache and streams the pieces,
/// cutting at stop sequences; stops early when the client has gone.
fn run_job(engine: &mut Engine, job: Job) -> Result<(), ApiError> {
    let Engine {
        model,
        tok,
        template,
        constraints,
    } = engine;
    let prepared = match &job.prompt {
        Prompt::Chat(request) => prepare_chat(template, tok, request)?,
        Prompt::Text(text) => crate::openai::PreparedChat {
            ids: tok
                .encode(text, true)
                .map_err(|e| ApiError::from_engine(&e))?,
            format: None,
            tools: false,
        },
    };
    let ids = prepared.ids;
    let format = prepared.format;
    let prompt_field = match job.prompt {
        Prompt::Chat(_) => "messages",
        Prompt::Text(_) => "prompt",
    };
    let constraint = match format {
        None => None,
        Some(format) => {
            if constraints.is_none() {
                *constraints = Some(
                    ConstraintFactory::new(tok, model.cfg.vocab)
                        .map_err(|e| ApiError::from_engine(&e))?,
                );
            }
            let built = constraints.as_ref().map(|f| f.build(&format));
            let field = match format {
                crate::constrain::OutputFormat::Grammar { .. } => "tools",
                _ => "response_format",
            };
            Some(built.expect("built above").map_err(|e| match e {
                crate::Error::InvalidArgument(m) => ApiError::invalid(field, m),
                e => ApiError::from_engine(&e),
            })?)
        }
    };
    model.reset();
    let mut generation = pollster::block_on(Generation::start_constrained(
        model,
        tok,
        &ids,
        job.sampling,
        job.max_tokens as usize,
        constraint,
    ))
    .map_err(|e| {
        let mut error = ApiError::from_engine(&e);
        // A prompt too long for the context is the fault of the field that holds it.
        if error.code == Some("context_length_exceeded") {
            error.param = Some(prompt_field.into());
        }
        error
    })?;
    let send = |e: Event| job.events.send(e).is_ok();
    // One line per request on stderr: what ran, how long, and how it ended.
    let log = |generation: &Generation, how: &str| {
        let s = generation.stats();
        eprintln!(
            "{}: {} prompt tokens, {} generated, {:.2} s to first token, {:.1} tok/s: {how}",
            job.id,
            s.prompt_tokens,
            s.generated_tokens,
            s.time_to_first_token_s,
            s.decode_tokens_per_s
        );
    };
    if !send(Event::Started) {
        log(&generation, "client gone before the first token");
        return Ok(());
    }
    let mut filter = ReplyFilter::new(job.stop, prepared.tools);
    let send_parts = |parts: Vec<ReplyPart>| {
        parts.into_iter().all(|part| {
            send(match part {
                ReplyPart::Text(t) => Event::Text(t),
                ReplyPart::Call(c) => Event::ToolCall(c),
            })
        })
    };
    loop {
        if job.events.is_closed() {
            generation.cancel();
            log(&generation, "cancelled (client gone)");
            return Ok(());
        }
        match pollster::block_on(generation.next(model, tok)) {
            Ok(Some(piece)) => {
                if !send_parts(filter.push(&piece.text)) {
                    generation.cancel();
                    log(&generation, "cancelled (client gone)");
                    return Ok(());
                }
                if filter.stopped() {
                    generation.cancel();
                    break;
                }
            }
            Ok(None) => {
                send_parts(filter.finish());
                break;
            }
            Err(e) => {
                log(&generation, &format!("failed: {e}"));
                return Err(ApiError::from_engine(&e));
            }
        }
    }
    let finish =
        FinishReason::from_finish(generation.finish(), filter.stopped(), filter.calls() > 0);
    log(
        &generation,
        match (finish, filter.stopped()) {
            (_, true) => "stop sequence",
            (FinishReason::ToolCalls, false) => "tool calls",
            (FinishReason::Stop, false) => "end token",
            (FinishReason::Length, false) => "length",
        },
    );
    send(Event::Done {
        finish,
        usage: Usage::new(ids.len(), generation.tokens().len()),
    });
    Ok(())
}

/// The random part of a response id, which its tool calls' ids share.
fn call_id_base(response_id: &str) -> &str {
    response_id.rsplit('-').next().unwrap_or(response_id)
}

fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh random number (the standard library's per-process random hasher keys, mixed with
/// the time): seeds for requests that give none, and response ids.
fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

fn random_hex() -> String {
    format!("{:016x}{:08x}", random_u64(), random_u64() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn random_values_differ() {
        assert_ne!(random_u64(), random_u64());
        assert_eq!(random_hex().len(), 24);
    }
}
