//! The browser engine: the same model, tokenizer and generation code as native, exposed to
//! JavaScript through wasm-bindgen. It runs inside the package's dedicated Worker
//! (`web/package/worker.js`), which owns the download, the OPFS cache and the message protocol;
//! everything here is synchronous to the worker or a promise of wgpu work.
//!
//! Bytes come from a JS `ByteSource` (`{ size, readInto(offset, dest) }`, synchronous: an OPFS
//! access handle or `FileReaderSync` over a `File`), so a model is read tensor by tensor and in
//! 4 MiB row chunks, never held whole in wasm or JS memory; Gemma 4 reads per-layer-embedding
//! rows from the same source at every token.
//!
//! Errors reach JS as `Error` objects with a `code` (see [`error_code`]).

mod source;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;

use crate::bench::model::ModelBenchOptions;
use crate::chat::{ChatTemplate, Message};
use crate::constrain::{ConstraintFactory, OutputFormat};
use crate::generate::{Finish, Generation};
use crate::gguf::{read_header, Gguf, Halt, HeaderParser};
use crate::gpu::{Caps, GpuContext, GpuOptions};
use crate::model::{Drafter, LoadOptions, Model, ASSISTANT_ARCH};
use crate::sampler::SamplingParams;
use crate::tokenizer::Tokenizer;
use crate::Error;

pub use source::{ByteSource, JsSource};

/// Installs the panic hook: a Rust panic is logged to the console with its message and
/// location (the worker then reports it as an `internal` error instead of dying silently).
#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// The `code` a JS caller can switch on for each kind of failure.
pub fn error_code(e: &Error) -> &'static str {
    match e {
        Error::Gguf(_)
        | Error::Truncated(_)
        | Error::Metadata { .. }
        | Error::UnsupportedArchitecture { .. }
        | Error::UnsupportedTensorType { .. }
        | Error::MissingTensor(_)
        | Error::Shape { .. }
        | Error::BadTensorData { .. }
        | Error::NonFiniteLogits { .. }
        | Error::AssistantMismatch(_)
        | Error::Tokenizer(_) => "bad-model",
        Error::Limit { .. } => "adapter-limits",
        Error::NoAdapter { .. } | Error::Device(_) => "no-webgpu",
        Error::InvalidArgument(_) | Error::ContextOverflow { .. } => "invalid-argument",
        Error::Aborted(_) => "aborted",
        Error::OutOfMemory(_) => "out-of-memory",
        Error::DeviceLost(_) => "device-lost",
        Error::Io { .. } | Error::IoPlain(_) | Error::Read(_) => "download-failed",
        Error::Shader { .. } | Error::Readback(_) | Error::Gpu(_) => "internal",
    }
}

/// A JS `Error` with `code` set.
fn js_error(code: &str, message: &str) -> JsValue {
    let err = js_sys::Error::new(message);
    let _ = js_sys::Reflect::set(&err, &"code".into(), &code.into());
    err.into()
}

impl From<Error> for JsValue {
    fn from(e: Error) -> JsValue {
        let message = e.to_string();
        let code = match &e {
            // wgpu reports allocation failures as device errors whose text names memory.
            Error::Device(m) | Error::Readback(m) if m.to_lowercase().contains("memory") => {
                "out-of-memory"
            }
            _ => error_code(&e),
        };
        js_error(code, &message)
    }
}

fn busy() -> JsValue {
    js_error(
        "busy",
        "the engine is busy with another request (one load or generation at a time)",
    )
}

fn no_model() -> JsValue {
    js_error("invalid-argument", "no model is loaded")
}

fn to_js<T: Serialize>(value: &T) -> Result<JsValue, JsValue> {
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(|e| js_error("internal", &e.to_string()))
}

fn from_js<T: for<'de> Deserialize<'de> + Default>(
    value: JsValue,
    what: &str,
) -> Result<T, JsValue> {
    if value.is_undefined() || value.is_null() {
        return Ok(T::default());
    }
    serde_wasm_bindgen::from_value(value)
        .map_err(|e| js_error("invalid-argument", &format!("{what}: {e}")))
}

/// Generated text on its way to the page (`ReplyFilter` in JS): stop sequences cut and tool
/// calls split out, by the same code as `gemma-wgpu serve` ([`crate::openai::ReplyFilter`]).
/// `push(text)` and `finish()` return the parts that can be sent now, in order: `{ text }` or
/// `{ call: { name, arguments } }` (`arguments` as JSON text).
#[wasm_bindgen(js_name = ReplyFilter)]
pub struct WebReplyFilter(crate::openai::ReplyFilter);

#[derive(Serialize)]
#[serde(untagged)]
enum WebReplyPart {
    Text { text: String },
    Call { call: WebCall },
}

#[derive(Serialize)]
struct WebCall {
    name: String,
    arguments: String,
}

fn reply_parts(parts: Vec<crate::tool_calls::ReplyPart>) -> Result<JsValue, JsValue> {
    use crate::tool_calls::ReplyPart;
    let parts: Vec<WebReplyPart> = parts
        .into_iter()
        .map(|p| match p {
            ReplyPart::Text(text) => WebReplyPart::Text { text },
            ReplyPart::Call(c) => WebReplyPart::Call {
                call: WebCall {
                    arguments: c.arguments_json(),
                    name: c.name,
                },
            },
        })
        .collect();
    to_js(&parts)
}

#[wasm_bindgen(js_class = ReplyFilter)]
impl WebReplyFilter {
    /// `stops`: stop sequences (strings); `tools`: read the output for tool calls.
    #[wasm_bindgen(constructor)]
    pub fn new(stops: Vec<String>, tools: bool) -> WebReplyFilter {
        WebReplyFilter(crate::openai::ReplyFilter::new(stops, tools))
    }

    pub fn push(&mut self, text: &str) -> Result<JsValue, JsValue> {
        reply_parts(self.0.push(text))
    }

    pub fn finish(&mut self) -> Result<JsValue, JsValue> {
        reply_parts(self.0.finish())
    }

    /// A stop sequence matched: the generation should stop.
    #[wasm_bindgen(getter)]
    pub fn stopped(&self) -> bool {
        self.0.stopped()
    }

    /// Tool calls released so far.
    #[wasm_bindgen(getter)]
    pub fn calls(&self) -> u32 {
        self.0.calls() as u32
    }
}

/// Incremental GGUF header parser fed with the first bytes of a download, so the model can be
/// checked against the adapter before its weights arrive.
#[wasm_bindgen]
pub struct HeaderProbe {
    parser: HeaderParser,
    /// File bytes `[base, base + buf.len())` not yet consumed by the parser.
    buf: Vec<u8>,
    base: u64,
    /// Bytes the parser needs before it can go on.
    wanted: u64,
    size: Option<u64>,
    header: Option<Gguf>,
}

#[wasm_bindgen]
impl HeaderProbe {
    /// `size`: the file's length when known (Content-Length), which bounds every tensor.
    #[wasm_bindgen(constructor)]
    pub fn new(size: Option<f64>) -> HeaderProbe {
        HeaderProbe {
            parser: HeaderParser::new(),
            buf: Vec::new(),
            base: 0,
            wanted: 24,
            size: size.map(|s| s as u64),
            header: None,
        }
    }

    /// Feeds the file's next bytes (in order from byte 0). True once the header is complete;
    /// throws `bad-model` when the bytes are not a GGUF header.
    pub fn push(&mut self, chunk: &[u8]) -> Result<bool, JsValue> {
        if self.header.is_some() {
            return Ok(true);
        }
        self.buf.extend_from_slice(chunk);
        while self.base + self.buf.len() as u64 >= self.wanted {
            match self.parser.feed(&self.buf, self.base, self.size) {
                Ok(g) => {
                    self.header = Some(g);
                    self.buf = Vec::new();
                    return Ok(true);
                }
                Err(Halt::Fail(e)) => return Err(e.into()),
                Err(Halt::More(end)) => {
                    let consumed = (self.parser.consumed() - self.base) as usize;
                    self.buf.drain(..consumed);
                    self.base += consumed as u64;
                    self.wanted = end;
                }
            }
        }
        Ok(false)
    }

    /// Bytes of the file the header needs so far (grows while parsing).
    #[wasm_bindgen(getter)]
    pub fn wanted(&self) -> f64 {
        self.wanted as f64
    }
}

/// Options of `Engine.create`.
#[derive(Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct CreateOptions {
    f16: bool,
    subgroups: bool,
    /// Test hook (fault injection): buffer creation fails with `out-of-memory` once the
    /// engine's buffers would pass this many bytes (see `GpuOptions::memory_budget`).
    test_memory_budget: Option<f64>,
}

impl Default for CreateOptions {
    fn default() -> Self {
        Self {
            f16: true,
            subgroups: true,
            test_memory_budget: None,
        }
    }
}

/// Options of `preflight` and `load`.
#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct ModelOptions {
    context_length: Option<u32>,
    /// Prompt tokens per prefill step (default 128: activations sized for phones; a desktop
    /// GPU prefills faster with 512).
    prefill_chunk: Option<u32>,
}

impl ModelOptions {
    /// The browser default is a 4096-token cache: most chats fit, and it keeps Gemma 4's
    /// global-layer caches small on phones.
    fn load_options(&self) -> LoadOptions {
        let d = LoadOptions::default();
        LoadOptions {
            context: Some(self.context_length.unwrap_or(4096)),
            prefill_chunk: self.prefill_chunk.unwrap_or(d.prefill_chunk),
            ..d
        }
    }
}

/// Sampling options of `start`, as JS passes them.
#[derive(Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct StartOptions {
    max_tokens: u32,
    temperature: f32,
    top_k: u32,
    top_p: f32,
    min_p: f32,
    repeat_penalty: f32,
    seed: f64,
    /// Tokens the assistant drafts per round, when one is loaded (0: decode without it).
    draft_tokens: Option<u32>,
    /// What the output must match (constrained decoding), as `constrain::OutputFormat`'s JSON.
    format: Option<OutputFormat>,
}

impl Default for StartOptions {
    fn default() -> Self {
        let d = SamplingParams::default();
        Self {
            max_tokens: 256,
            temperature: 0.0,
            top_k: d.top_k,
            top_p: d.top_p,
            min_p: d.min_p,
            repeat_penalty: d.repeat_penalty,
            seed: 0.0,
            draft_tokens: None,
            format: None,
        }
    }
}

impl StartOptions {
    fn params(&self) -> crate::Result<SamplingParams> {
        let p = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed: self.seed as u64,
            ..Default::default()
        };
        p.validate()?;
        Ok(p)
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AdapterInfo {
    name: String,
    backend: String,
    f16: bool,
    subgroups: bool,
    max_buffer_size: u64,
    max_storage_buffer_binding_size: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ModelInfo {
    architecture: String,
    layers: u32,
    vocab: u32,
    context_length: u32,
    has_chat_template: bool,
    gpu_memory: GpuMemory,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GpuMemory {
    weights: u64,
    kv_cache: u64,
    activations: u64,
    total: u64,
    largest_buffer: u64,
    mapped: u64,
}

#[derive(Serialize, Default, Clone)]
#[serde(rename_all = "camelCase")]
struct GenerationStats {
    prompt_tokens: usize,
    cached_tokens: usize,
    generated_tokens: usize,
    prefill_tokens_per_s: f64,
    decode_tokens_per_s: f64,
    time_to_first_token_s: f64,
    /// Speculative decoding with the assistant: rounds, drafted tokens, drafts kept.
    draft_rounds: usize,
    drafted_tokens: usize,
    accepted_drafts: usize,
}

/// What `preflight` resolves to, for a model or an assistant.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PreflightPlan<'a> {
    architecture: &'a str,
    layers: u32,
    vocab: u32,
    context_length: u32,
    file_bytes: u64,
    weights_bytes: u64,
    kv_cache_bytes: u64,
    gpu_bytes: u64,
    largest_buffer: u64,
    mapped_bytes: u64,
}

/// What `loadAssistant` resolves to.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AssistantInfo {
    layers: u32,
    hidden: u32,
    /// GPU bytes the assistant holds (its weights and buffers; it reads the model's KV cache).
    gpu_bytes: u64,
}

#[derive(Serialize)]
struct PieceOut {
    id: u32,
    text: String,
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    content: String,
}

/// A loaded model and its conversation state.
struct Loaded {
    model: Model,
    tok: Tokenizer,
    template: ChatTemplate,
    architecture: String,
    /// Ids in the KV cache, in order.
    cached: Vec<u32>,
    /// Length of `cached` when the current generation started (its generated ids follow).
    gen_base: usize,
    gen: Option<Generation>,
    stats: GenerationStats,
    /// A Gemma 4 MTP assistant drafting for `model` (`loadAssistant`).
    drafter: Option<Drafter>,
    /// Built on the first constrained request (the token trie: a few MB for 262,144 tokens).
    constraints: Option<ConstraintFactory>,
}

/// Engine state shared by the JS handle and its in-flight promises. A request takes the model
/// out while it runs, so a second request finds it missing and fails with `busy` instead of
/// touching a model mid-step.
struct State {
    ctx: Arc<GpuContext>,
    loaded: Option<Loaded>,
    /// True while a request holds the model.
    busy: bool,
    /// Set by `cancel`; checked between tokens and between load chunks.
    cancel: Rc<Cell<bool>>,
}

/// The engine a worker drives: one GPU device, at most one model.
#[wasm_bindgen]
pub struct Engine {
    state: Rc<RefCell<State>>,
}

/// Takes the model out of the state for the duration of a request; puts it back on drop (so
/// an error or a dropped promise never loses it).
struct Lease {
    state: Rc<RefCell<State>>,
    loaded: Option<Loaded>,
}

impl Lease {
    fn take(state: &Rc<RefCell<State>>) -> Result<Lease, JsValue> {
        let mut s = state.borrow_mut();
        if s.busy {
            return Err(busy());
        }
        let loaded = s.loaded.take().ok_or_else(no_model)?;
        s.busy = true;
        Ok(Lease {
            state: state.clone(),
            loaded: Some(loaded),
        })
    }

    fn get(&mut self) -> &mut Loaded {
        self.loaded
            .as_mut()
            .expect("a lease holds the model until dropped")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut s = self.state.borrow_mut();
        s.loaded = self.loaded.take();
        s.busy = false;
    }
}

#[wasm_bindgen]
impl Engine {
    /// Requests the WebGPU adapter and device. `options.f16` / `options.subgroups` = false
    /// keep the portable kernels even when the adapter offers the features.
    pub async fn create(options: JsValue) -> Result<Engine, JsValue> {
        let o: CreateOptions = from_js(options, "Engine.create options")?;
        let ctx = GpuContext::new(&GpuOptions {
            backends: Some(wgpu::Backends::BROWSER_WEBGPU),
            disable_f16: !o.f16,
            disable_subgroups: !o.subgroups,
            memory_budget: o.test_memory_budget.map(|b| b.max(0.0) as u64),
            ..Default::default()
        })
        .await?;
        #[allow(clippy::arc_with_non_send_sync)] // wasm is single-threaded; Model wants an Arc
        Ok(Engine {
            state: Rc::new(RefCell::new(State {
                ctx: Arc::new(ctx),
                loaded: None,
                busy: false,
                cancel: Rc::new(Cell::new(false)),
            })),
        })
    }

    /// The adapter and the kernel variant in use.
    pub fn adapter(&self) -> Result<JsValue, JsValue> {
        let s = self.state.borrow();
        let ctx = &s.ctx;
        // Browsers may leave the description empty (privacy); say at least what kind it is.
        let name = match (ctx.info.name.trim(), ctx.info.device_type) {
            ("", wgpu::DeviceType::Cpu) => "WebGPU fallback adapter (software)".to_string(),
            ("", _) => "WebGPU adapter".to_string(),
            (n, _) => n.to_string(),
        };
        to_js(&AdapterInfo {
            name,
            backend: format!("{:?}", ctx.info.backend),
            f16: ctx.caps.f16,
            subgroups: ctx.caps.subgroups,
            max_buffer_size: ctx.caps.max_buffer,
            max_storage_buffer_binding_size: ctx.caps.max_binding,
        })
    }

    /// Checks a parsed header against this device (see [`crate::model::preflight`]).
    pub fn preflight(&self, probe: &HeaderProbe, options: JsValue) -> Result<JsValue, JsValue> {
        let o: ModelOptions = from_js(options, "preflight options")?;
        let gguf = probe
            .header
            .as_ref()
            .ok_or_else(|| js_error("invalid-argument", "the GGUF header is not complete yet"))?;
        let s = self.state.borrow();
        if gguf.architecture()? == ASSISTANT_ARCH {
            return self.preflight_assistant(gguf);
        }
        let plan = crate::model::preflight(gguf, &s.ctx.caps, &o.load_options())?;
        to_js(&PreflightPlan {
            architecture: &plan.architecture,
            layers: plan.layers,
            vocab: plan.vocab,
            context_length: plan.context_length,
            file_bytes: plan.file_bytes,
            weights_bytes: plan.weights,
            kv_cache_bytes: plan.kv_cache,
            gpu_bytes: plan.weights + plan.kv_cache,
            largest_buffer: plan.largest_buffer,
            mapped_bytes: plan.mapped,
        })
    }

    /// Loads a model from `source`, replacing any loaded one. `progress(done, total)` is called
    /// as tensor bytes reach the GPU. `cancel()` aborts it between chunks.
    pub fn load(
        &self,
        source: ByteSource,
        options: JsValue,
        progress: js_sys::Function,
    ) -> js_sys::Promise {
        let state = self.state.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let o: ModelOptions = from_js(options, "load options")?;
            let (ctx, cancel) = {
                let mut s = state.borrow_mut();
                if s.busy {
                    return Err(busy());
                }
                // Free the old model's GPU memory before the new one arrives.
                s.loaded = None;
                s.busy = true;
                s.cancel.set(false);
                (s.ctx.clone(), s.cancel.clone())
            };
            let result = load_model(ctx, source, o, progress, cancel).await;
            let mut s = state.borrow_mut();
            s.busy = false;
            let loaded = result?;
            let info = loaded_info(&loaded);
            s.loaded = Some(loaded);
            to_js(&info)
        })
    }

    /// Loads a Gemma 4 MTP assistant for the loaded model from `source` (replacing any
    /// assistant loaded before); later generations draft with it (`draftTokens` per round,
    /// 0 = off). `progress(done, total)` as for `load`; `cancel()` aborts it between chunks.
    /// Resolves to `{ layers, hidden, gpuBytes }`.
    #[wasm_bindgen(js_name = loadAssistant)]
    pub fn load_assistant(
        &self,
        source: ByteSource,
        progress: js_sys::Function,
    ) -> js_sys::Promise {
        let state = self.state.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let mut lease = Lease::take(&state)?;
            let cancel = {
                let s = state.borrow();
                s.cancel.set(false);
                s.cancel.clone()
            };
            let l = lease.get();
            // The old assistant's memory goes before the new one arrives.
            l.drafter = None;
            l.gen = None;
            let mut src = JsSource::new(source, cancel)?;
            let gguf = read_header(&mut src).await?;
            let drafter = Drafter::load(&l.model, &gguf, &mut src, report_to(&progress)).await?;
            let info = AssistantInfo {
                layers: drafter.cfg.n_layers,
                hidden: drafter.cfg.hidden,
                gpu_bytes: drafter.memory().total(),
            };
            l.drafter = Some(drafter);
            to_js(&info)
        })
    }

    /// Token ids of `text` (with `<bos>` first when `add_bos`).
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, JsValue> {
        let s = self.state.borrow();
        let l = s.loaded.as_ref().ok_or_else(|| self.busy_or_no_model())?;
        Ok(l.tok.encode(text, add_bos)?)
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32]) -> Result<String, JsValue> {
        let s = self.state.borrow();
        let l = s.loaded.as_ref().ok_or_else(|| self.busy_or_no_model())?;
        Ok(l.tok.decode(ids)?)
    }

    /// `messages` (`[{role, content}]`) rendered by the model's chat template, as ids.
    #[wasm_bindgen(js_name = renderChat)]
    pub fn render_chat(
        &self,
        messages: JsValue,
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, JsValue> {
        let messages: Vec<ChatMessage> = serde_wasm_bindgen::from_value(messages).map_err(|e| {
            js_error(
                "invalid-argument",
                &format!("messages must be an array of {{role, content}} strings: {e}"),
            )
        })?;
        let messages: Vec<Message> = messages
            .into_iter()
            .map(|m| Message::new(m.role, m.content))
            .collect();
        let s = self.state.borrow();
        let l = s.loaded.as_ref().ok_or_else(|| self.busy_or_no_model())?;
        let prompt = l.template.render(&messages, add_generation_prompt)?;
        Ok(prompt.encode(&l.tok)?)
    }

    /// An OpenAI chat completion request (`{messages, tools, tool_choice,
    /// parallel_tool_calls, response_format}`; other fields are ignored here) validated and
    /// rendered exactly as `gemma-wgpu serve` does it: `{ ids, format, tools }`, where `format`
    /// goes to [`Engine::start`] and `tools` says whether to read the output for tool calls
    /// (with a [`WebReplyFilter`]). A refusal is an `invalid-argument` error naming the field.
    #[wasm_bindgen(js_name = prepareChatCompletion)]
    pub fn prepare_chat_completion(&self, request: JsValue) -> Result<JsValue, JsValue> {
        let body: serde_json::Map<String, serde_json::Value> =
            serde_wasm_bindgen::from_value(request).map_err(|e| {
                js_error(
                    "invalid-argument",
                    &format!("the request must be a JSON object: {e}"),
                )
            })?;
        let api = |e: crate::openai::ApiError| js_error("invalid-argument", &e.message);
        let request = crate::openai::ChatCompletionRequest::from_object(&body).map_err(api)?;
        let s = self.state.borrow();
        let l = s.loaded.as_ref().ok_or_else(|| self.busy_or_no_model())?;
        let prepared = crate::openai::prepare_chat(&l.template, &l.tok, &request).map_err(api)?;
        #[derive(Serialize)]
        struct Prepared {
            ids: Vec<u32>,
            format: Option<OutputFormat>,
            tools: bool,
        }
        to_js(&Prepared {
            ids: prepared.ids,
            format: prepared.format,
            tools: prepared.tools,
        })
    }

    /// Starts a generation after `ids`: keeps the longest prefix of `ids` already in the KV
    /// cache and prefills the rest. Resolves to `{ promptTokens, cachedTokens }`.
    pub fn start(&self, ids: Vec<u32>, options: JsValue) -> js_sys::Promise {
        let state = self.state.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let o: StartOptions = from_js(options, "generation options")?;
            let params = o.params()?;
            let mut lease = Lease::take(&state)?;
            state.borrow().cancel.set(false);
            let l = lease.get();
            if ids.is_empty() {
                return Err(Error::InvalidArgument("the prompt is empty".into()).into());
            }
            if ids.len() > l.model.context as usize {
                return Err(Error::ContextOverflow {
                    tokens: ids.len(),
                    context: l.model.context as usize,
                }
                .into());
            }
            l.gen = None;
            // Reuse the cached prefix; at least one token must run to produce logits.
            let mut keep = l
                .cached
                .iter()
                .zip(&ids)
                .take_while(|(a, b)| a == b)
                .count()
                .min(ids.len() - 1);
            if !l.model.rewind(keep as u32) {
                l.model.reset();
                keep = 0;
            }
            l.cached.truncate(keep);
            let constraint = match &o.format {
                None => None,
                Some(format) => {
                    if l.constraints.is_none() {
                        l.constraints = Some(ConstraintFactory::new(&l.tok, l.model.cfg.vocab)?);
                    }
                    Some(l.constraints.as_ref().unwrap().build(format)?)
                }
            };
            let started = Generation::start_constrained(
                &mut l.model,
                &l.tok,
                &ids[keep..],
                params,
                o.max_tokens as usize,
                constraint,
            )
            .await;
            let started = started.and_then(|mut g| {
                let k = o
                    .draft_tokens
                    .unwrap_or(crate::model::drafter::DEFAULT_DRAFT_TOKENS);
                if l.drafter.is_some() && k > 0 {
                    g.set_draft_tokens(&l.model, k)?;
                }
                Ok(g)
            });
            let gen = match started {
                Ok(g) => g,
                Err(e) => {
                    // The cache may hold part of the prompt: forget it.
                    l.model.reset();
                    l.cached.clear();
                    return Err(e.into());
                }
            };
            l.cached.extend_from_slice(&ids[keep..]);
            l.gen_base = l.cached.len();
            l.stats = GenerationStats {
                prompt_tokens: ids.len(),
                cached_tokens: keep,
                prefill_tokens_per_s: gen.stats().prefill_tokens_per_s,
                ..Default::default()
            };
            l.gen = Some(gen);
            #[derive(Serialize)]
            #[serde(rename_all = "camelCase")]
            struct Started {
                prompt_tokens: usize,
                cached_tokens: usize,
            }
            to_js(&Started {
                prompt_tokens: ids.len(),
                cached_tokens: keep,
            })
        })
    }

    /// The next piece `{ id, text }`, or `undefined` once the generation has finished.
    pub fn next(&self) -> js_sys::Promise {
        let state = self.state.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let mut lease = Lease::take(&state)?;
            let cancel = state.borrow().cancel.clone();
            let l = lease.get();
            let Some(gen) = l.gen.as_mut() else {
                return Ok(JsValue::UNDEFINED);
            };
            if cancel.get() {
                gen.cancel();
            }
            let piece = match gen
                .next_drafted(&mut l.model, l.drafter.as_mut(), &l.tok)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    l.gen = None;
                    l.model.reset();
                    l.cached.clear();
                    return Err(e.into());
                }
            };
            l.cached.truncate(l.gen_base);
            l.cached.extend_from_slice(gen.fed());
            let s = gen.stats();
            l.stats.generated_tokens = s.generated_tokens;
            l.stats.decode_tokens_per_s = s.decode_tokens_per_s;
            l.stats.time_to_first_token_s = s.time_to_first_token_s;
            l.stats.draft_rounds = s.draft_rounds;
            l.stats.drafted_tokens = s.drafted_tokens;
            l.stats.accepted_drafts = s.accepted_drafts;
            match piece {
                Some(p) => to_js(&PieceOut {
                    id: p.id,
                    text: p.text,
                }),
                None => Ok(JsValue::UNDEFINED),
            }
        })
    }

    /// Why the last generation ended: 'stop', 'length', 'context', 'cancelled', or undefined
    /// while it runs.
    #[wasm_bindgen(js_name = finishReason)]
    pub fn finish_reason(&self) -> Option<String> {
        let s = self.state.borrow();
        let finish = s.loaded.as_ref()?.gen.as_ref()?.finish()?;
        Some(
            match finish {
                Finish::EndToken(_) => "stop",
                Finish::MaxTokens => "length",
                Finish::ContextFull => "context",
                Finish::Cancelled => "cancelled",
            }
            .into(),
        )
    }

    /// Stops the running generation (the next `next()` resolves to `undefined`) or load (it
    /// rejects with `aborted`). The KV cache keeps every token that was fed.
    pub fn cancel(&self) {
        let mut s = self.state.borrow_mut();
        s.cancel.set(true);
        if let Some(gen) = s.loaded.as_mut().and_then(|l| l.gen.as_mut()) {
            gen.cancel();
        }
    }

    /// Runs the model benchmark of `gemma-wgpu bench` on the loaded model, through this
    /// engine's WebGPU device: `{ results, pipelinesCompiled, pipelineCompileS, context }`,
    /// `results` as in `bench --json`. `options`: [`ModelBenchOptions`] in camelCase
    /// (`{ promptLen, gen, repeat, profileTokens, copyBandwidth, skipOps }`, the CLI's
    /// defaults); the model must have been loaded with a context that holds them. For
    /// measuring the browser path (pkg-scripts/bench-web.mjs).
    pub fn bench(&self, options: JsValue) -> js_sys::Promise {
        let state = self.state.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let opts: ModelBenchOptions = from_js(options, "bench options")?;
            // Refused before the conversation's cache is dropped (`run` checks them too).
            opts.check()?;
            let mut lease = Lease::take(&state)?;
            let l = lease.get();
            l.gen = None;
            l.cached.clear();
            let drafter = if opts.draft_tokens > 0 {
                l.drafter.as_mut()
            } else {
                None
            };
            let results = crate::bench::model::run(&mut l.model, drafter, &l.tok, &opts).await;
            // The bench leaves its own tokens in the cache.
            l.model.reset();
            let results = results?;
            let (pipelines_compiled, pipeline_compile_s) = l.model.gpu().compile_stats();
            #[derive(Serialize)]
            #[serde(rename_all = "camelCase")]
            struct Bench {
                results: crate::bench::model::ModelBench,
                pipelines_compiled: u32,
                pipeline_compile_s: f64,
                context: u32,
            }
            to_js(&Bench {
                results,
                pipelines_compiled,
                pipeline_compile_s,
                context: l.model.context,
            })
        })
    }

    /// Figures of the last generation.
    pub fn stats(&self) -> Result<JsValue, JsValue> {
        let s = self.state.borrow();
        let stats = s
            .loaded
            .as_ref()
            .map(|l| l.stats.clone())
            .unwrap_or_default();
        to_js(&stats)
    }

    /// Drops the model and its GPU buffers; the device stays for another load.
    pub fn unload(&self) -> Result<(), JsValue> {
        let mut s = self.state.borrow_mut();
        if s.busy {
            return Err(busy());
        }
        s.loaded = None;
        Ok(())
    }

    /// Test hook: destroys the GPU device as a driver reset or the browser reclaiming the GPU
    /// would. Every later request fails with `device-lost`; a new engine (a new load) works.
    #[wasm_bindgen(js_name = loseDeviceForTest)]
    pub fn lose_device_for_test(&self) {
        self.state.borrow().ctx.lose_device_for_test();
    }

    /// Current size of the wasm linear memory (it only grows, so this is also its peak).
    #[wasm_bindgen(js_name = wasmMemoryBytes)]
    pub fn wasm_memory_bytes(&self) -> f64 {
        wasm_memory_bytes()
    }

    /// `preflight` of an assistant file: checked against the loaded model it must draft for.
    fn preflight_assistant(&self, gguf: &Gguf) -> Result<JsValue, JsValue> {
        let s = self.state.borrow();
        let l = s.loaded.as_ref().ok_or_else(|| {
            js_error(
                "invalid-argument",
                "an assistant drafts for a loaded model: load the model first",
            )
        })?;
        let (cfg, _) = crate::model::check_assistant(gguf, &l.model.cfg)?;
        let tensors = gguf.tensor_data_bytes();
        let largest = gguf.tensors.iter().map(|t| t.n_bytes).max().unwrap_or(0);
        to_js(&PreflightPlan {
            architecture: ASSISTANT_ARCH,
            layers: cfg.n_layers,
            vocab: cfg.vocab,
            context_length: l.model.context,
            file_bytes: gguf.file_size.unwrap_or(tensors),
            weights_bytes: tensors,
            kv_cache_bytes: 0,
            gpu_bytes: tensors,
            largest_buffer: largest,
            mapped_bytes: 0,
        })
    }

    fn busy_or_no_model(&self) -> JsValue {
        if self.state.borrow().busy {
            busy()
        } else {
            no_model()
        }
    }
}

fn wasm_memory_bytes() -> f64 {
    wasm_bindgen::memory()
        .dyn_into::<js_sys::WebAssembly::Memory>()
        .map(|m| {
            m.buffer()
                .dyn_into::<js_sys::ArrayBuffer>()
                .map(|b| b.byte_length() as f64)
                .unwrap_or(0.0)
        })
        .unwrap_or(0.0)
}

fn loaded_info(l: &Loaded) -> ModelInfo {
    let m = l.model.memory();
    ModelInfo {
        architecture: l.architecture.clone(),
        layers: l.model.cfg.n_layers,
        vocab: l.model.cfg.vocab,
        context_length: l.model.context,
        has_chat_template: true,
        gpu_memory: GpuMemory {
            weights: m.weights,
            kv_cache: m.kv_cache,
            activations: m.activations,
            total: m.total(),
            largest_buffer: m.largest_buffer,
            mapped: m.mapped,
        },
    }
}

/// A loader's `progress(done, total)` that calls the page's JS callback (whose errors are
/// the page's own and do not stop the load).
fn report_to(progress: &js_sys::Function) -> impl FnMut(u64, u64) + '_ {
    move |done, total| {
        let _ = progress.call2(
            &JsValue::NULL,
            &(done as f64).into(),
            &(total as f64).into(),
        );
    }
}

async fn load_model(
    ctx: Arc<GpuContext>,
    source: ByteSource,
    o: ModelOptions,
    progress: js_sys::Function,
    cancel: Rc<Cell<bool>>,
) -> crate::Result<Loaded> {
    let mut src = JsSource::new(source, cancel)?;
    let mut gguf = read_header(&mut src).await?;
    let architecture = gguf.architecture()?.to_string();
    let tok = Tokenizer::from_gguf_taking(&mut gguf.metadata)?;
    tok.check_model_vocab(crate::model::check(&gguf)?.vocab)?;
    let template = ChatTemplate::from_gguf(&gguf.metadata, &tok)?;
    let opts = LoadOptions {
        rows: Some(src.rows()),
        ..o.load_options()
    };
    let model = Model::load(ctx, &gguf, &mut src, &opts, report_to(&progress)).await?;
    Ok(Loaded {
        model,
        tok,
        template,
        architecture,
        cached: Vec::new(),
        gen_base: 0,
        gen: None,
        stats: GenerationStats::default(),
        drafter: None,
        constraints: None,
    })
}

/// Every WGSL kernel variant as the browser build compiles it (`enable` directives included):
/// `[{ name, f16, subgroups, code }]`, for validation with Chrome's compiler.
#[wasm_bindgen(js_name = shaderVariants)]
pub fn shader_variants() -> Result<JsValue, JsValue> {
    #[derive(Serialize)]
    struct Variant {
        name: String,
        f16: bool,
        subgroups: bool,
        code: String,
    }
    let mut out = Vec::new();
    for spec in crate::kernels::all_specs() {
        for (f16, subgroups) in [(false, false), (true, false), (false, true), (true, true)] {
            let caps = Caps {
                browser: true,
                ..Caps::webgpu_defaults(f16, subgroups)
            };
            if !spec.runs_on(&caps) {
                continue;
            }
            out.push(Variant {
                name: spec.name.clone(),
                f16,
                subgroups,
                code: spec.expand(&caps)?,
            });
        }
    }
    to_js(&out)
}
