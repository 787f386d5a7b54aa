//! The OpenAI API's request and response shapes, shared by `gemma-wgpu serve` and the browser
//! engine so that both accept and refuse the same requests with the same messages.
//!
//! Requests are validated field by field from a JSON object rather than derived with serde:
//! OpenAI clients send many fields this engine has no use for (they are ignored, as OpenAI's
//! own server ignores what it does not know), and every refusal has to name the field it is
//! about (`param` in the error body). Responses are plain serde structs.
//!
//! Everything here is synchronous and free of I/O, so it builds for wasm32 too.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::chat::ChatTemplate;
use crate::constrain::OutputFormat;
use crate::generate::Finish;
use crate::sampler::SamplingParams;
use crate::tokenizer::Tokenizer;
use crate::tool_calls::{ParsedCall, ReplyPart, ToolCallSplitter};

/// Most stop sequences a request may give (OpenAI's limit).
pub const MAX_STOP_SEQUENCES: usize = 4;

/// An OpenAI-style error: the HTTP status and the `{"error": {...}}` body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status code (not part of the body).
    pub status: u16,
    pub message: String,
    /// OpenAI's error type, e.g. `invalid_request_error`.
    pub kind: &'static str,
    /// The request field the error is about.
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 about field `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.to_string()),
            code: None,
        }
    }

    /// A 400 about the request as a whole.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    /// The engine's own errors: what the caller asked for that cannot be done is the caller's
    /// (400), anything else is the server's (500).
    pub fn from_engine(e: &crate::Error) -> Self {
        use crate::Error;
        match e {
            Error::ContextOverflow { .. } => {
                ApiError::invalid("messages", e.to_string()).with_code("context_length_exceeded")
            }
            Error::InvalidArgument(m) => ApiError::bad_request(m.clone()),
            _ => ApiError::new(500, "server_error", e.to_string()),
        }
    }

    /// The JSON body OpenAI clients parse.
    pub fn body(&self) -> Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Also what OpenAI's newer `developer` role is read as.
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    /// The role name the chat templates use.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// A tool call an assistant message made earlier in the conversation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as the JSON text the model wrote.
    pub arguments: String,
}

/// One message of a chat request; text parts of a content list are joined.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
    pub name: Option<String>,
    /// For `tool` messages: which call this answers.
    pub tool_call_id: Option<String>,
    pub tool_calls: Vec<ToolCall>,
}

/// `response_format`.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ResponseFormat {
    #[default]
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON that follows `schema`.
    JsonSchema {
        name: String,
        schema: Value,
        strict: bool,
    },
}

/// A function the model may call (`tools[i]`, type `function`).
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments (an empty object schema when not given).
    pub parameters: Value,
    pub strict: bool,
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ToolChoice {
    None,
    #[default]
    Auto,
    Required,
    /// This function must be called.
    Function(String),
}

/// What both endpoints take besides the prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationOptions {
    pub model: Option<String>,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with the token counts.
    pub include_usage: bool,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u32>,
    /// Sampling with `seed` 0 when the request gave none: see [`GenerationOptions::seed`].
    pub sampling: SamplingParams,
    pub seed: Option<u64>,
    /// Stop sequences (at most [`MAX_STOP_SEQUENCES`], none empty).
    pub stop: Vec<String>,
}

impl GenerationOptions {
    /// The sampling settings, seeded with the request's seed or else `fallback_seed` (a server
    /// picks a fresh one per request, so that unseeded requests differ as OpenAI's do).
    pub fn sampling_params(&self, fallback_seed: u64) -> SamplingParams {
        SamplingParams {
            seed: self.seed.unwrap_or(fallback_seed),
            ..self.sampling
        }
    }

    /// Most tokens to generate: the request's, which may not exceed `limit`, or `limit`.
    pub fn max_tokens_within(&self, limit: u32) -> Result<u32, ApiError> {
        match self.max_tokens {
            None => Ok(limit),
            Some(n) if n <= limit => Ok(n),
            Some(n) => Err(ApiError::invalid(
                "max_tokens",
                format!("max_tokens is {n} but this server allows at most {limit}"),
            )),
        }
    }
}

/// A parsed and validated `POST /v1/chat/completions` body.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatCompletionRequest {
    pub messages: Vec<ChatMessage>,
    pub options: GenerationOptions,
    pub response_format: ResponseFormat,
    pub tools: Vec<Tool>,
    pub tool_choice: ToolChoice,
    /// `parallel_tool_calls` (default true): whether a forced reply may hold several calls.
    pub parallel_tool_calls: bool,
}

/// A parsed and validated `POST /v1/completions` body: `prompt` is raw text, no template.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    pub prompt: String,
    pub options: GenerationOptions,
}

/// A JSON value's kind for error messages.
fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The request's top-level object, read one field at a time. A field that is absent or `null`
/// counts as not given, as in OpenAI's API.
struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(ApiError::invalid(
                name,
                format!("{name} must be a boolean, got {}", kind_of(v)),
            )),
        }
    }

    fn string(&self, name: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(ApiError::invalid(
                name,
                format!("{name} must be a string, got {}", kind_of(v)),
            )),
        }
    }

    /// A number checked by `ok`; `rule` says what is allowed.
    fn number(
        &self,
        name: &str,
        ok: impl Fn(f64) -> bool,
        rule: &str,
    ) -> Result<Option<f64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => {
                let x = n.as_f64().unwrap_or(f64::NAN);
                if ok(x) {
                    Ok(Some(x))
                } else {
                    Err(ApiError::invalid(
                        name,
                        format!("{name} must be {rule}, got {n}"),
                    ))
                }
            }
            Some(v) => Err(ApiError::invalid(
                name,
                format!("{name} must be {rule}, got {}", kind_of(v)),
            )),
        }
    }

    /// A whole number in `min..=max`.
    fn integer(&self, name: &str, min: u64, max: u64) -> Result<Option<u64>, ApiError> {
        let rule = format!("an integer from {min} to {max}");
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(x) if (min..=max).contains(&x) => Ok(Some(x)),
                _ => Err(ApiError::invalid(
                    name,
                    format!("{name} must be {rule}, got {n}"),
                )),
            },
            Some(v) => Err(ApiError::invalid(
                name,
                format!("{name} must be {rule}, got {}", kind_of(v)),
            )),
        }
    }
}

/// The body as a JSON object; what is not JSON or not an object is refused.
fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the request body is not valid JSON ({e}); send a JSON object with Content-Type: application/json"
        ))
    })?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(ApiError::bad_request(format!(
            "the request body must be a JSON object, got {}",
            kind_of(&other)
        ))),
    }
}

/// The fields both endpoints share.
fn parse_options(f: &Fields) -> Result<GenerationOptions, ApiError> {
    let model = f.string("model")?.map(str::to_string);
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(Value::Object(o)) => Fields(o)
            .bool("include_usage")
            .map_err(|e| ApiError {
                param: Some("stream_options.include_usage".into()),
                message: format!("stream_options.{}", e.message),
                ..e
            })?
            .unwrap_or(false),
        Some(v) => {
            return Err(ApiError::invalid(
                "stream_options",
                format!("stream_options must be an object, got {}", kind_of(v)),
            ))
        }
    };
    let limit = u32::MAX as u64;
    // The newer name wins, as in OpenAI's API (`max_tokens` is its deprecated alias).
    let max_tokens = match f.integer("max_completion_tokens", 1, limit)? {
        Some(n) => Some(n),
        None => f.integer("max_tokens", 1, limit)?,
    }
    .map(|n| n as u32);
    if let Some(n) = f
        .integer("n", 1, u64::MAX)
        .map_err(|_| ApiError::invalid("n", "only n = 1 is supported (one choice per request)"))?
    {
        if n != 1 {
            return Err(ApiError::invalid(
                "n",
                "only n = 1 is supported (one choice per request)",
            ));
        }
    }
    for name in ["presence_penalty", "frequency_penalty"] {
        if f.number(name, |x| x.is_finite(), "a number")?
            .is_some_and(|x| x != 0.0)
        {
            return Err(ApiError::invalid(
                name,
                format!("{name} is not supported (only 0); use repeat_penalty instead"),
            ));
        }
    }
    if f.get("logit_bias")
        .is_some_and(|v| v.as_object().is_none_or(|o| !o.is_empty()))
    {
        return Err(ApiError::invalid(
            "logit_bias",
            "logit_bias is not supported",
        ));
    }
    // A request that gives none gets Gemma's own defaults, as the JS API's createChatCompletion.
    let d = SamplingParams::default();
    let temperature = f
        .number(
            "temperature",
            |x| x.is_finite() && x >= 0.0,
            "a number >= 0 (0 = greedy)",
        )?
        .map_or(d.temperature, |x| x as f32);
    let top_p = f
        .number("top_p", |x| x > 0.0 && x <= 1.0, "a number in (0, 1]")?
        .map_or(d.top_p, |x| x as f32);
    let top_k = f
        .integer("top_k", 0, u32::MAX as u64)?
        .map_or(d.top_k, |x| x as u32);
    let min_p = f
        .number("min_p", |x| (0.0..=1.0).contains(&x), "a number in [0, 1]")?
        .map_or(d.min_p, |x| x as f32);
    let repeat_penalty = f
        .number(
            "repeat_penalty",
            |x| x.is_finite() && x > 0.0,
            "a number > 0 (1 = off)",
        )?
        .map_or(d.repeat_penalty, |x| x as f32);
    // OpenAI's seed is any 64-bit integer: negative ones are kept as their bits.
    let seed = match f.get("seed") {
        None => None,
        Some(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
            (Some(x), _) => Some(x),
            (None, Some(x)) => Some(x as u64),
            _ => {
                return Err(ApiError::invalid(
                    "seed",
                    format!("seed must be an integer, got {n}"),
                ))
            }
        },
        Some(v) => {
            return Err(ApiError::invalid(
                "seed",
                format!("seed must be an integer, got {}", kind_of(v)),
            ))
        }
    };
    let sampling = SamplingParams {
        temperature,
        top_k,
        top_p,
        min_p,
        repeat_penalty,
        ..d
    };
    sampling
        .validate()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let stop = match f.get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                v => Err(ApiError::invalid(
                    "stop",
                    format!("stop[{i}] must be a string, got {}", kind_of(v)),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(v) => {
            return Err(ApiError::invalid(
                "stop",
                format!(
                    "stop must be a string or an array of strings, got {}",
                    kind_of(v)
                ),
            ))
        }
    };
    if stop.len() > MAX_STOP_SEQUENCES {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "stop has {} sequences; at most {MAX_STOP_SEQUENCES} are allowed",
                stop.len()
            ),
        ));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "stop",
            "stop sequences must not be empty",
        ));
    }
    Ok(GenerationOptions {
        model,
        stream,
        include_usage,
        max_tokens,
        sampling,
        seed,
        stop,
    })
}

/// A message's content: a string, or a list of text parts (OpenAI's content parts; only text
/// means anything to a text model).
fn message_text(v: Option<&Value>, what: &str, may_be_missing: bool) -> Result<String, ApiError> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                let t = part
                    .get("type")
                    .and_then(Value::as_str)
                    .filter(|t| *t == "text")
                    .and(part.get("text").and_then(Value::as_str));
                match t {
                    Some(t) => text.push_str(t),
                    None => {
                        return Err(ApiError::invalid(
                            "messages",
                            format!("{what}[{j}] must be a text part {{\"type\": \"text\", \"text\": ...}}; other content types are not supported"),
                        ))
                    }
                }
            }
            Ok(text)
        }
        None | Some(Value::Null) if may_be_missing => Ok(String::new()),
        Some(v) => Err(ApiError::invalid(
            "messages",
            format!(
                "{what} must be a string or an array of text parts, got {}",
                kind_of(v)
            ),
        )),
        None => Err(ApiError::invalid("messages", format!("{what} is missing"))),
    }
}

fn parse_tool_calls(v: Option<&Value>, what: &str) -> Result<Vec<ToolCall>, ApiError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let bad = |m: String| ApiError::invalid("messages", m);
    let calls = v
        .as_array()
        .ok_or_else(|| bad(format!("{what} must be an array")))?;
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let f = c.get("function");
            let name = f.and_then(|f| f.get("name")).and_then(Value::as_str);
            let arguments = f.and_then(|f| f.get("arguments")).and_then(Value::as_str);
            match (name, arguments) {
                (Some(name), Some(arguments)) => Ok(ToolCall {
                    id: c.get("id").and_then(Value::as_str).unwrap_or("").to_string(),
                    name: name.to_string(),
                    arguments: arguments.to_string(),
                }),
                _ => Err(bad(format!(
                    "{what}[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}}"
                ))),
            }
        })
        .collect()
}

fn parse_messages(v: Option<&Value>) -> Result<Vec<ChatMessage>, ApiError> {
    let list = match v {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid("messages", "messages is missing"))
        }
        Some(Value::Array(a)) => a,
        Some(v) => {
            return Err(ApiError::invalid(
                "messages",
                format!(
                    "messages must be an array of {{role, content}}, got {}",
                    kind_of(v)
                ),
            ))
        }
    };
    if list.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let what = format!("messages[{i}]");
            let Some(obj) = m.as_object() else {
                return Err(ApiError::invalid(
                    "messages",
                    format!("{what} must be an object {{role, content}}"),
                ));
            };
            let role = match obj.get("role").and_then(Value::as_str) {
                Some("system" | "developer") => Role::System,
                Some("user") => Role::User,
                Some("assistant") => Role::Assistant,
                Some("tool") => Role::Tool,
                _ => {
                    return Err(ApiError::invalid(
                        "messages",
                        format!(
                            "{what}.role must be one of 'system', 'developer', 'user', 'assistant', 'tool', got {}",
                            obj.get("role").map_or("nothing".into(), |r| r.to_string())
                        ),
                    ))
                }
            };
            let tool_calls = parse_tool_calls(obj.get("tool_calls"), &format!("{what}.tool_calls"))?;
            // An assistant message that only calls tools has no content.
            let content = message_text(
                obj.get("content"),
                &format!("{what}.content"),
                role == Role::Assistant && !tool_calls.is_empty(),
            )?;
            let tool_call_id = obj
                .get("tool_call_id")
                .and_then(Value::as_str)
                .map(str::to_string);
            if role == Role::Tool && tool_call_id.is_none() {
                return Err(ApiError::invalid(
                    "messages",
                    format!("{what}.tool_call_id is missing (a tool message answers a tool call)"),
                ));
            }
            Ok(ChatMessage {
                role,
                content,
                name: obj.get("name").and_then(Value::as_str).map(str::to_string),
                tool_call_id,
                tool_calls,
            })
        })
        .collect()
}

fn parse_response_format(v: Option<&Value>) -> Result<ResponseFormat, ApiError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(ResponseFormat::Text);
    };
    let bad = |m: &str| ApiError::invalid("response_format", m);
    let obj = v
        .as_object()
        .ok_or_else(|| bad("response_format must be an object {\"type\": ...}"))?;
    match obj.get("type").and_then(Value::as_str) {
        Some("text") => Ok(ResponseFormat::Text),
        Some("json_object") => Ok(ResponseFormat::JsonObject),
        Some("json_schema") => {
            let js = obj
                .get("json_schema")
                .and_then(Value::as_object)
                .ok_or_else(|| {
                    bad("response_format.json_schema must be an object {name, schema, strict}")
                })?;
            let name = js
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("response_format.json_schema.name must be a string"))?;
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(bad("response_format.json_schema.name must be 1 to 64 characters of a-z, A-Z, 0-9, _ and -"));
            }
            let schema = match js.get("schema") {
                None | Some(Value::Null) => serde_json::json!({}),
                Some(s @ Value::Object(_)) => s.clone(),
                Some(_) => {
                    return Err(bad(
                        "response_format.json_schema.schema must be a JSON Schema object",
                    ))
                }
            };
            let strict = match js.get("strict") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(bad("response_format.json_schema.strict must be a boolean")),
            };
            Ok(ResponseFormat::JsonSchema {
                name: name.to_string(),
                schema,
                strict,
            })
        }
        _ => Err(bad(
            "response_format.type must be 'text', 'json_object' or 'json_schema'",
        )),
    }
}

fn parse_tools(v: Option<&Value>) -> Result<Vec<Tool>, ApiError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let list = v
        .as_array()
        .ok_or_else(|| ApiError::invalid("tools", "tools must be an array"))?;
    let mut tools: Vec<Tool> = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let bad = |m: String| ApiError::invalid("tools", m);
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(bad(format!("tools[{i}].type must be 'function'")));
        }
        let f = t
            .get("function")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                bad(format!(
                    "tools[{i}].function must be an object {{name, description, parameters}}"
                ))
            })?;
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                bad(format!(
                    "tools[{i}].function.name must be a non-empty string"
                ))
            })?;
        if tools.iter().any(|t| t.name == name) {
            return Err(bad(format!("tools[{i}]: two tools are named '{name}'")));
        }
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => serde_json::json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => {
                return Err(bad(format!(
                    "tools[{i}].function.parameters must be a JSON Schema object"
                )))
            }
        };
        tools.push(Tool {
            name: name.to_string(),
            description: f
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_string),
            parameters,
            strict: f.get("strict").and_then(Value::as_bool).unwrap_or(false),
        });
    }
    Ok(tools)
}

fn parse_tool_choice(v: Option<&Value>, tools: &[Tool]) -> Result<ToolChoice, ApiError> {
    let bad = |m: String| ApiError::invalid("tool_choice", m);
    let choice = match v.filter(|v| !v.is_null()) {
        None if tools.is_empty() => ToolChoice::None,
        None => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            _ => return Err(bad(format!("tool_choice must be 'none', 'auto', 'required' or {{\"type\": \"function\", \"function\": {{\"name\"}}}}, got '{s}'"))),
        },
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| bad("tool_choice.function.name must be a string".into()))?;
            ToolChoice::Function(name.to_string())
        }
        Some(v) => return Err(bad(format!("tool_choice must be a string or an object, got {}", kind_of(v)))),
    };
    match &choice {
        ToolChoice::Auto | ToolChoice::Required if tools.is_empty() => {
            Err(bad("tool_choice needs tools: the request gives none".into()))
        }
        ToolChoice::Function(name) if !tools.iter().any(|t| &t.name == name) => Err(bad(format!(
            "tool_choice names the function '{name}', which is not among tools"
        ))),
        _ => Ok(choice),
    }
}

impl ChatCompletionRequest {
    /// Parses and validates a request body.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        Self::from_object(&parse_object(body)?)
    }

    pub fn from_object(obj: &Map<String, Value>) -> Result<Self, ApiError> {
        let f = Fields(obj);
        let messages = parse_messages(obj.get("messages"))?;
        let options = parse_options(&f)?;
        if f.bool("logprobs")? == Some(true) {
            return Err(ApiError::invalid("logprobs", "logprobs are not supported"));
        }
        let response_format = parse_response_format(obj.get("response_format"))?;
        let tools = parse_tools(obj.get("tools"))?;
        let tool_choice = parse_tool_choice(obj.get("tool_choice"), &tools)?;
        let parallel_tool_calls = f.bool("parallel_tool_calls")?.unwrap_or(true);
        Ok(ChatCompletionRequest {
            messages,
            options,
            response_format,
            tools,
            tool_choice,
            parallel_tool_calls,
        })
    }
}

impl CompletionRequest {
    /// Parses and validates a request body.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let obj = parse_object(body)?;
        let f = Fields(&obj);
        let bad = |m: &str| ApiError::invalid("prompt", m);
        let prompt = match obj.get("prompt") {
            None | Some(Value::Null) => return Err(bad("prompt is missing")),
            Some(Value::String(s)) => s.clone(),
            // Clients often send a batch of one.
            Some(Value::Array(a)) => match a.as_slice() {
                [Value::String(s)] => s.clone(),
                _ => return Err(bad("prompt must be a string (or an array of exactly one string): batches and token arrays are not supported")),
            },
            Some(_) => return Err(bad("prompt must be a string")),
        };
        if prompt.is_empty() {
            return Err(bad("prompt must not be empty"));
        }
        let options = parse_options(&f)?;
        if f.bool("echo")? == Some(true) {
            return Err(ApiError::invalid("echo", "echo is not supported"));
        }
        if f.get("logprobs").is_some() {
            return Err(ApiError::invalid("logprobs", "logprobs are not supported"));
        }
        if f.get("suffix").is_some_and(|s| s.as_str() != Some("")) {
            return Err(ApiError::invalid("suffix", "suffix is not supported"));
        }
        if f.integer("best_of", 1, 1)
            .map_err(|_| ApiError::invalid("best_of", "only best_of = 1 is supported"))?
            .is_some_and(|b| b != 1)
        {
            return Err(ApiError::invalid(
                "best_of",
                "only best_of = 1 is supported",
            ));
        }
        Ok(CompletionRequest { prompt, options })
    }
}

/// What a chat request runs: the prompt's ids, what the output must match, and whether the
/// output is read for tool calls.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedChat {
    pub ids: Vec<u32>,
    /// `response_format`, or the tool-call grammar of `tool_choice` `required` / a function.
    pub format: Option<OutputFormat>,
    /// The request offers tools (`tool_choice` is not `none`): parse the output for calls.
    pub tools: bool,
}

/// Renders a chat request with the model's template (tools declared, past calls and their
/// results in Gemma's format) and works out its output constraint. The server and the browser
/// engine both prepare requests here.
pub fn prepare_chat(
    template: &ChatTemplate,
    tok: &Tokenizer,
    request: &ChatCompletionRequest,
) -> Result<PreparedChat, ApiError> {
    let tools = !request.tools.is_empty() && request.tool_choice != ToolChoice::None;
    if tools && !template.supports_tools() {
        return Err(ApiError::invalid(
            "tools",
            "this model's chat template has no tool-call format (Gemma 3 has none; Gemma 4 \
             templates do): send the request without tools or with tool_choice 'none'",
        )
        .with_code("unsupported_parameter"));
    }
    if tools && request.response_format != ResponseFormat::Text {
        return Err(ApiError::invalid(
            "response_format",
            "response_format cannot be combined with tools unless tool_choice is 'none'",
        ));
    }
    let messages = crate::tool_calls::template_messages(&request.messages)?;
    let declared = tools.then(|| crate::tool_calls::template_tools(&request.tools));
    let ids = template
        .render_json(&messages, declared.as_ref(), true)
        .and_then(|p| p.encode(tok))
        .map_err(|e| match e {
            crate::Error::InvalidArgument(m) => ApiError::invalid("messages", m),
            e => ApiError::from_engine(&e),
        })?;
    let format = match &request.response_format {
        ResponseFormat::Text => crate::tool_calls::call_grammar(
            &request.tools,
            &request.tool_choice,
            request.parallel_tool_calls,
        )?
        .map(|grammar| OutputFormat::Grammar { grammar }),
        ResponseFormat::JsonObject => Some(OutputFormat::JsonObject),
        ResponseFormat::JsonSchema { schema, .. } => Some(OutputFormat::JsonSchema {
            schema: schema.clone(),
        }),
    };
    Ok(PreparedChat { ids, format, tools })
}

/// Why a choice ended, in OpenAI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end token of the model or a stop sequence.
    Stop,
    /// `max_tokens` or the context ran out.
    Length,
    /// The model called tools and waits for their results.
    ToolCalls,
}

impl FinishReason {
    /// From how the generation ended; `stop_matched` when a stop sequence ended it,
    /// `called_tools` when the reply holds tool calls.
    pub fn from_finish(finish: Option<Finish>, stop_matched: bool, called_tools: bool) -> Self {
        match finish {
            _ if called_tools => FinishReason::ToolCalls,
            _ if stop_matched => FinishReason::Stop,
            Some(Finish::EndToken(_)) => FinishReason::Stop,
            _ => FinishReason::Length,
        }
    }
}

/// Token counts of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Usage {
            prompt_tokens: prompt_tokens as u32,
            completion_tokens: completion_tokens as u32,
            total_tokens: (prompt_tokens + completion_tokens) as u32,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AssistantMessage {
    pub role: &'static str,
    /// `null` when the reply is only tool calls, as OpenAI's is.
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallOut>,
}

/// A tool call in a response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCallOut {
    /// Only in stream chunks: which call of the reply this is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionCall {
    pub name: String,
    /// JSON text.
    pub arguments: String,
}

impl ToolCallOut {
    /// The reply's `index`th call, with a fresh id (`call_` and `id_suffix`).
    pub fn new(call: &ParsedCall, index: u32, id_suffix: &str) -> Self {
        ToolCallOut {
            index: None,
            id: format!("call_{id_suffix}_{index}"),
            kind: "function",
            function: FunctionCall {
                name: call.name.clone(),
                arguments: call.arguments_json(),
            },
        }
    }

    /// As a stream delta carries it (with `index`).
    pub fn in_stream(mut self, index: u32) -> Self {
        self.index = Some(index);
        self
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    pub logprobs: Option<()>,
    pub finish_reason: FinishReason,
}

/// `chat.completion`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

impl ChatCompletion {
    pub fn new(
        id: String,
        created: u64,
        model: String,
        content: String,
        tool_calls: Vec<ToolCallOut>,
        finish: FinishReason,
        usage: Usage,
    ) -> Self {
        ChatCompletion {
            id,
            object: "chat.completion",
            created,
            model,
            choices: vec![ChatChoice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant",
                    content: (!content.is_empty() || tool_calls.is_empty()).then_some(content),
                    tool_calls,
                },
                logprobs: None,
                finish_reason: finish,
            }],
            usage,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallOut>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub logprobs: Option<()>,
    pub finish_reason: Option<FinishReason>,
}

/// `chat.completion.chunk`: the first carries the role, the last the finish reason; with
/// `include_usage` one more with no choices carries the usage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

impl ChatCompletionChunk {
    pub fn new(
        id: &str,
        created: u64,
        model: &str,
        delta: Delta,
        finish: Option<FinishReason>,
    ) -> Self {
        ChatCompletionChunk {
            id: id.to_string(),
            object: "chat.completion.chunk",
            created,
            model: model.to_string(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason: finish,
            }],
            usage: None,
        }
    }

    pub fn usage(id: &str, created: u64, model: &str, usage: Usage) -> Self {
        ChatCompletionChunk {
            id: id.to_string(),
            object: "chat.completion.chunk",
            created,
            model: model.to_string(),
            choices: Vec::new(),
            usage: Some(usage),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompletionChoice {
    pub text: String,
    pub index: u32,
    pub logprobs: Option<()>,
    pub finish_reason: Option<FinishReason>,
}

/// `text_completion`, both the whole answer and each streamed chunk (as OpenAI sends them).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TextCompletion {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

impl TextCompletion {
    pub fn new(
        id: &str,
        created: u64,
        model: &str,
        text: String,
        finish: Option<FinishReason>,
        usage: Option<Usage>,
    ) -> Self {
        TextCompletion {
            id: id.to_string(),
            object: "text_completion",
            created,
            model: model.to_string(),
            choices: vec![CompletionChoice {
                text,
                index: 0,
                logprobs: None,
                finish_reason: finish,
            }],
            usage,
        }
    }

    /// The last streamed chunk with `include_usage`: no choices, the counts.
    pub fn usage_chunk(id: &str, created: u64, model: &str, usage: Usage) -> Self {
        TextCompletion {
            choices: Vec::new(),
            usage: Some(usage),
            ..Self::new(id, created, model, String::new(), None, None)
        }
    }
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelObject {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelObject>,
}

impl ModelList {
    pub fn one(id: &str, created: u64) -> Self {
        ModelList {
            object: "list",
            data: vec![ModelObject {
                id: id.to_string(),
                object: "model",
                created,
                owned_by: "gemma-wgpu",
            }],
        }
    }
}

/// Finds stop sequences in streamed text. Text that could be the start of a stop sequence is
/// held back until the next piece shows whether it is one, so nothing of a stop sequence is
/// ever sent; a match cuts the text just before it.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

/// What [`StopMatcher::push`] lets out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// Text that can be sent now.
    pub text: String,
    /// A stop sequence matched: `text` ends just before it and generation should stop.
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
            stopped: false,
        }
    }

    /// Adds generated text; returns what is certain not to belong to a stop sequence. After a
    /// match everything further is dropped.
    pub fn push(&mut self, text: &str) -> Released {
        if self.stopped {
            return Released {
                text: String::new(),
                stopped: true,
            };
        }
        self.held.push_str(text);
        // The earliest match wins: text after it is never shown.
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first {
            self.held.truncate(at);
            self.stopped = true;
            return Released {
                text: std::mem::take(&mut self.held),
                stopped: true,
            };
        }
        // Keep the longest tail that some stop sequence starts with.
        let keep_from = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.held.len());
        let rest = self.held.split_off(keep_from);
        Released {
            text: std::mem::replace(&mut self.held, rest),
            stopped: false,
        }
    }

    /// The generation ended without a match: the held-back text is ordinary output.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    pub fn stopped(&self) -> bool {
        self.stopped
    }
}

/// Generated text on its way to the client: tool calls split out (when the request offers
/// tools) and stop sequences cut, in the text only (a call's arguments never stop a reply).
#[derive(Debug, Clone, Default)]
pub struct ReplyFilter {
    tools: Option<ToolCallSplitter>,
    stop: StopMatcher,
    calls: usize,
}

impl ReplyFilter {
    pub fn new(stops: Vec<String>, tools: bool) -> Self {
        ReplyFilter {
            tools: tools.then(ToolCallSplitter::default),
            stop: StopMatcher::new(stops),
            calls: 0,
        }
    }

    /// Adds generated text; returns what can be sent now, in order.
    pub fn push(&mut self, text: &str) -> Vec<ReplyPart> {
        let mut parts = Vec::new();
        match &mut self.tools {
            Some(splitter) => splitter.push(text, &mut parts),
            None => parts.push(ReplyPart::Text(text.to_string())),
        }
        self.release(parts)
    }

    /// The generation ended: the rest of what was held back.
    pub fn finish(&mut self) -> Vec<ReplyPart> {
        let mut parts = Vec::new();
        if let Some(splitter) = &mut self.tools {
            splitter.finish(&mut parts);
        }
        let mut out = self.release(parts);
        if !self.stop.stopped() {
            let rest = self.stop.finish();
            if !rest.is_empty() {
                out.push(ReplyPart::Text(rest));
            }
        }
        out
    }

    fn release(&mut self, parts: Vec<ReplyPart>) -> Vec<ReplyPart> {
        let mut out = Vec::new();
        for part in parts {
            if self.stop.stopped() {
                break;
            }
            match part {
                ReplyPart::Text(t) => {
                    let released = self.stop.push(&t);
                    if !released.text.is_empty() {
                        out.push(ReplyPart::Text(released.text));
                    }
                }
                ReplyPart::Call(call) => {
                    // Text held for a possible stop sequence ends where the call begins.
                    let held = self.stop.finish();
                    if !held.is_empty() {
                        out.push(ReplyPart::Text(held));
                    }
                    self.calls += 1;
                    out.push(ReplyPart::Call(call));
                }
            }
        }
        out
    }

    /// A stop sequence ended the reply: stop generating.
    pub fn stopped(&self) -> bool {
        self.stop.stopped()
    }

    /// Tool calls released so far.
    pub fn calls(&self) -> usize {
        self.calls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(json: &str) -> Result<ChatCompletionRequest, ApiError> {
        ChatCompletionRequest::parse(json.as_bytes())
    }

    fn err(json: &str) -> ApiError {
        chat(json).expect_err("should be refused")
    }

    #[test]
    fn minimal_chat_request_gets_gemma_defaults() {
        let r = chat(r#"{"messages":[{"role":"user","content":"hi"}]}"#).unwrap();
        assert_eq!(r.messages.len(), 1);
        assert_eq!(r.messages[0].role, Role::User);
        assert_eq!(r.messages[0].content, "hi");
        assert!(!r.options.stream);
        assert_eq!(r.options.max_tokens, None);
        assert_eq!(r.options.sampling, SamplingParams::default());
        assert_eq!(r.options.seed, None);
        assert_eq!(r.options.sampling_params(7).seed, 7);
        assert_eq!(r.response_format, ResponseFormat::Text);
        assert_eq!(r.tool_choice, ToolChoice::None);
    }

    #[test]
    fn full_chat_request_and_unknown_fields() {
        let r = chat(
            r#"{"model":"m","messages":[
                {"role":"developer","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
                {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},
                {"role":"tool","tool_call_id":"c1","content":"42"}],
              "stream":true,"stream_options":{"include_usage":true},
              "max_tokens":100,"max_completion_tokens":8,"temperature":0,"top_p":0.5,"top_k":10,
              "min_p":0.1,"repeat_penalty":1.1,"seed":-1,"stop":"\n","n":1,
              "presence_penalty":0,"user":"x","metadata":{"a":1},"parallel_tool_calls":false}"#,
        )
        .unwrap();
        assert_eq!(r.messages[0].role, Role::System);
        assert_eq!(r.messages[1].content, "ab");
        assert_eq!(r.messages[2].tool_calls[0].name, "f");
        assert_eq!(r.messages[3].tool_call_id.as_deref(), Some("c1"));
        let o = &r.options;
        assert_eq!(o.model.as_deref(), Some("m"));
        assert!(o.stream && o.include_usage);
        assert_eq!(o.max_tokens, Some(8), "max_completion_tokens wins");
        assert_eq!(o.sampling.temperature, 0.0);
        assert_eq!(o.sampling.top_k, 10);
        assert_eq!(o.sampling.top_p, 0.5);
        assert!((o.sampling.min_p - 0.1).abs() < 1e-6);
        assert!((o.sampling.repeat_penalty - 1.1).abs() < 1e-6);
        assert_eq!(o.seed, Some(u64::MAX));
        assert_eq!(o.stop, vec!["\n".to_string()]);
    }

    #[test]
    fn refusals_name_their_field() {
        let cases = [
            (r#"[1]"#, None, "must be a JSON object"),
            (r#"{"messages":"#, None, "not valid JSON"),
            (r#"{}"#, Some("messages"), "messages is missing"),
            (r#"{"messages":[]}"#, Some("messages"), "must not be empty"),
            (
                r#"{"messages":[{"role":"robot","content":"x"}]}"#,
                Some("messages"),
                "messages[0].role",
            ),
            (
                r#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
                Some("messages"),
                "text part",
            ),
            (
                r#"{"messages":[{"role":"user"}]}"#,
                Some("messages"),
                "messages[0].content is missing",
            ),
            (
                r#"{"messages":[{"role":"tool","content":"x"}]}"#,
                Some("messages"),
                "tool_call_id",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"temperature":-1}"#,
                Some("temperature"),
                "temperature must be",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#,
                Some("temperature"),
                "got a string",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"top_p":0}"#,
                Some("top_p"),
                "top_p must be",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"top_k":1.5}"#,
                Some("top_k"),
                "top_k must be an integer",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"min_p":2}"#,
                Some("min_p"),
                "min_p",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"repeat_penalty":0}"#,
                Some("repeat_penalty"),
                "repeat_penalty",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
                Some("max_tokens"),
                "max_tokens must be",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"max_completion_tokens":-3}"#,
                Some("max_completion_tokens"),
                "max_completion_tokens",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"n":2}"#,
                Some("n"),
                "only n = 1",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
                Some("stream"),
                "stream must be a boolean",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":1}}"#,
                Some("stream_options.include_usage"),
                "include_usage",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"stop":["a","b","c","d","e"]}"#,
                Some("stop"),
                "at most 4",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"stop":[""]}"#,
                Some("stop"),
                "must not be empty",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"stop":[1]}"#,
                Some("stop"),
                "stop[0]",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"seed":1.5}"#,
                Some("seed"),
                "seed must be an integer",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"frequency_penalty":0.5}"#,
                Some("frequency_penalty"),
                "repeat_penalty",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"logprobs":true}"#,
                Some("logprobs"),
                "logprobs",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"xml"}}"#,
                Some("response_format"),
                "response_format.type",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"name":"a b"}}}"#,
                Some("response_format"),
                "name",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{}}]}"#,
                Some("tools"),
                "tools[0].function.name",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"tool_choice":"required"}"#,
                Some("tool_choice"),
                "needs tools",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":{"type":"function","function":{"name":"g"}}}"#,
                Some("tool_choice"),
                "'g'",
            ),
        ];
        for (json, param, text) in cases {
            let e = err(json);
            assert_eq!(e.status, 400, "{json}");
            assert_eq!(e.kind, "invalid_request_error");
            assert_eq!(e.param.as_deref(), param, "{json}: {e:?}");
            assert!(
                e.message.contains(text),
                "{json}: `{}` lacks `{text}`",
                e.message
            );
        }
    }

    #[test]
    fn response_format_and_tools_parse() {
        let r = chat(
            r#"{"messages":[{"role":"user","content":"x"}],
               "response_format":{"type":"json_schema","json_schema":{"name":"answer","schema":{"type":"object"},"strict":true}},
               "tools":[{"type":"function","function":{"name":"get_weather","description":"d","parameters":{"type":"object"}}}],
               "tool_choice":{"type":"function","function":{"name":"get_weather"}}}"#,
        )
        .unwrap();
        assert_eq!(
            r.response_format,
            ResponseFormat::JsonSchema {
                name: "answer".into(),
                schema: serde_json::json!({"type": "object"}),
                strict: true
            }
        );
        assert_eq!(r.tools[0].name, "get_weather");
        assert_eq!(r.tools[0].description.as_deref(), Some("d"));
        assert_eq!(r.tool_choice, ToolChoice::Function("get_weather".into()));
        let r = chat(r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}}"#).unwrap();
        assert_eq!(r.response_format, ResponseFormat::JsonObject);
    }

    #[test]
    fn max_tokens_limit() {
        let r = chat(r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":9}"#).unwrap();
        assert_eq!(r.options.max_tokens_within(9), Ok(9));
        let e = r.options.max_tokens_within(8).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let r = chat(r#"{"messages":[{"role":"user","content":"x"}]}"#).unwrap();
        assert_eq!(r.options.max_tokens_within(8), Ok(8));
    }

    #[test]
    fn completion_request() {
        let r =
            CompletionRequest::parse(br#"{"prompt":"Once","max_tokens":3,"stop":["."]}"#).unwrap();
        assert_eq!(r.prompt, "Once");
        assert_eq!(r.options.max_tokens, Some(3));
        assert_eq!(r.options.stop, vec![".".to_string()]);
        let r = CompletionRequest::parse(br#"{"prompt":["Once"]}"#).unwrap();
        assert_eq!(r.prompt, "Once");
        for (json, param) in [
            (r#"{}"#, "prompt"),
            (r#"{"prompt":""}"#, "prompt"),
            (r#"{"prompt":[1,2]}"#, "prompt"),
            (r#"{"prompt":["a","b"]}"#, "prompt"),
            (r#"{"prompt":"a","echo":true}"#, "echo"),
            (r#"{"prompt":"a","logprobs":2}"#, "logprobs"),
            (r#"{"prompt":"a","best_of":3}"#, "best_of"),
            (r#"{"prompt":"a","top_p":3}"#, "top_p"),
        ] {
            let e = CompletionRequest::parse(json.as_bytes()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{json}: {e:?}");
        }
    }

    #[test]
    fn error_body_is_openai_shaped() {
        let e = ApiError::invalid("top_p", "top_p must be in (0, 1]");
        assert_eq!(
            e.body(),
            serde_json::json!({"error": {"message": "top_p must be in (0, 1]", "type": "invalid_request_error", "param": "top_p", "code": null}})
        );
        let e = ApiError::from_engine(&crate::Error::ContextOverflow {
            tokens: 10,
            context: 5,
        });
        assert_eq!(e.code, Some("context_length_exceeded"));
        assert_eq!(
            ApiError::from_engine(&crate::Error::Gpu("x".into())).status,
            500
        );
    }

    #[test]
    fn response_shapes() {
        let c = ChatCompletion::new(
            "id".into(),
            1,
            "m".into(),
            "hi".into(),
            Vec::new(),
            FinishReason::Length,
            Usage::new(3, 2),
        );
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["content"], "hi");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["total_tokens"], 5);
        let k = ChatCompletionChunk::new(
            "id",
            1,
            "m",
            Delta {
                role: Some("assistant"),
                content: Some(String::new()),
                ..Default::default()
            },
            None,
        );
        let v = serde_json::to_value(&k).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        assert_eq!(
            v["choices"][0]["delta"],
            serde_json::json!({"role": "assistant", "content": ""})
        );
        assert!(v["choices"][0]["finish_reason"].is_null());
        assert!(v.get("usage").is_none());
        let v = serde_json::to_value(ChatCompletionChunk::usage("id", 1, "m", Usage::new(1, 1)))
            .unwrap();
        assert_eq!(v["choices"], serde_json::json!([]));
        let v = serde_json::to_value(TextCompletion::new(
            "id",
            1,
            "m",
            "t".into(),
            Some(FinishReason::Stop),
            None,
        ))
        .unwrap();
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"], "t");
        let v = serde_json::to_value(ModelList::one("gemma", 5)).unwrap();
        assert_eq!(v["data"][0]["id"], "gemma");
        assert_eq!(v["data"][0]["object"], "model");
        assert_eq!(
            FinishReason::from_finish(Some(Finish::MaxTokens), true, false),
            FinishReason::Stop
        );
        assert_eq!(
            FinishReason::from_finish(Some(Finish::EndToken(1)), false, false),
            FinishReason::Stop
        );
        assert_eq!(
            FinishReason::from_finish(Some(Finish::ContextFull), false, false),
            FinishReason::Length
        );
        assert_eq!(
            FinishReason::from_finish(Some(Finish::EndToken(50)), false, true),
            FinishReason::ToolCalls
        );
        // A reply of tool calls only: content is null, the calls carry JSON text.
        let call = ParsedCall {
            name: "f".into(),
            arguments: serde_json::json!({"a": [1, "x"]}),
        };
        let c = ChatCompletion::new(
            "id".into(),
            1,
            "m".into(),
            String::new(),
            vec![ToolCallOut::new(&call, 0, "abc")],
            FinishReason::ToolCalls,
            Usage::new(3, 2),
        );
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(
            v["choices"][0]["message"],
            serde_json::json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_abc_0", "type": "function",
                 "function": {"name": "f", "arguments": "{\"a\":[1,\"x\"]}"}}]})
        );
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        let d = serde_json::to_value(Delta {
            tool_calls: vec![ToolCallOut::new(&call, 1, "abc").in_stream(1)],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(d["tool_calls"][0]["index"], 1);
    }

    /// Feeds `pieces` and returns everything released and whether it stopped.
    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool, Vec<String>) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        let mut each = Vec::new();
        for p in pieces {
            let r = m.push(p);
            out.push_str(&r.text);
            each.push(r.text);
            if r.stopped {
                return (out, true, each);
            }
        }
        out.push_str(&m.finish());
        (out, false, each)
    }

    #[test]
    fn stop_matcher_cuts_at_the_match() {
        assert_eq!(
            run(&["\n\n"], &["Hello", " world", "\n", "\nmore"]).0,
            "Hello world"
        );
        assert!(run(&["\n\n"], &["Hello", " world", "\n", "\nmore"]).1);
        // Across pieces, and the earliest of several stops wins.
        let (out, stopped, _) = run(&["END", "xy"], &["abcE", "N", "Dxy"]);
        assert_eq!((out.as_str(), stopped), ("abc", true));
        let (out, stopped, _) = run(&["END", "cE"], &["abcE", "ND"]);
        assert_eq!((out.as_str(), stopped), ("ab", true));
        // Within one piece.
        assert_eq!(run(&["."], &["One. Two."]).0, "One");
    }

    #[test]
    fn stop_matcher_holds_only_possible_starts() {
        let (out, stopped, each) = run(&["STOP"], &["a S", "T", "x", "!"]);
        assert_eq!((out.as_str(), stopped), ("a STx!", false));
        // "S" and "ST" are held until "x" shows they are not a stop.
        assert_eq!(each, vec!["a ", "", "STx", "!"]);
        // A partial match at the end is released by finish.
        assert_eq!(
            run(&["STOP"], &["abc", "ST"]),
            ("abcST".into(), false, vec!["abc".into(), "".into()])
        );
        // No stops: everything passes straight through.
        assert_eq!(run(&[], &["a", "b"]).2, vec!["a", "b"]);
        // Multi-byte text is only split at character boundaries.
        assert_eq!(run(&["é!"], &["café", "!"]).0, "caf");
        assert_eq!(run(&["€x"], &["a€", "b"]).0, "a€b");
    }
}
