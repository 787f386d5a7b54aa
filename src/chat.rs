//! Chat prompts: render `[{role, content}]` messages with the model's own Jinja chat template.
//!
//! The template comes from the GGUF (`tokenizer.chat_template`) and is run with `minijinja`
//! configured like Hugging Face's `apply_chat_template` (`trim_blocks`, `lstrip_blocks`, loop
//! controls, `raise_exception`, Python string methods such as `.split`/`.strip`). When the file
//! has no template (the Gemma 3 270M GGUF has none) a built-in one is used: Google's Gemma 3
//! template verbatim, or a text-only Gemma 4 template with thinking off.
//!
//! Gemma templates write the literal `<bos>` themselves, so the rendered text must be encoded
//! **without** adding another BOS (two BOS tokens visibly degrade Gemma's output). To make that
//! hard to get wrong, [`ChatTemplate::render`] returns a [`Prompt`], and the only way to turn a
//! `Prompt` into ids is [`Prompt::encode`], which guarantees exactly one leading BOS.
//!
//! For interactive chat, [`Conversation`] re-renders the whole history each turn and returns
//! only the ids that the KV cache does not already hold.

use minijinja::value::Serde;
use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::gguf::Metadata;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// One chat message. `role` is `system`, `user` or `assistant` (Gemma 4 also `developer`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// Google's Gemma 3 chat template (`google/gemma-3-*-it` `tokenizer_config.json`), verbatim.
/// A system message is folded into the first user turn; roles must alternate.
pub const GEMMA3_TEMPLATE: &str = r#"{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '

' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '

' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '
' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>
' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model
'}}
{%- endif -%}
"#;

/// Text-only Gemma 4 template, thinking off (GEMMA.md §3.3): an optional system turn,
/// `assistant` → `model`, thinking spans (`<|channel>…<channel|>`) stripped from past model
/// turns, and the E2B/E4B generation prompt `<|turn>model\n` (no empty thought block).
pub const GEMMA4_TEMPLATE: &str = r#"{{- bos_token -}}
{%- set loop_messages = messages -%}
{%- if messages[0]['role'] in ['system', 'developer'] -%}
    {{- '<|turn>system\n' + (messages[0]['content'] | trim) + '<turn|>\n' -}}
    {%- set loop_messages = messages[1:] -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{- raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") -}}
    {%- endif -%}
    {%- set content = message['content'] -%}
    {%- if message['role'] == 'assistant' -%}
        {%- set role = 'model' -%}
        {%- if '<channel|>' in content -%}
            {%- set content = content.split('<channel|>') | last -%}
        {%- endif -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{- '<|turn>' + role + '\n' + (content | trim) + '<turn|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|turn>model\n' -}}
{%- endif -%}
"#;

/// Which model family a built-in template is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Gemma3,
    Gemma4,
}

/// Rendered prompt text that starts with the BOS token the template wrote.
///
/// Deliberately opaque: encode it with [`Prompt::encode`], never with
/// `Tokenizer::encode(text, true)`, which would add a second BOS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    text: String,
}

impl Prompt {
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Ids with exactly one leading BOS: encodes with `add_bos = false` and prepends BOS only if
    /// the template did not write it (a custom template may not).
    pub fn encode(&self, tok: &Tokenizer) -> Result<Vec<u32>> {
        let mut ids = tok.encode(&self.text, false)?;
        if ids.first() != Some(&tok.bos_id()) {
            ids.insert(0, tok.bos_id());
        }
        if ids.get(1) == Some(&tok.bos_id()) {
            return Err(Error::Tokenizer(
                "rendered prompt starts with two BOS tokens; the template and the caller both \
                 added one"
                    .into(),
            ));
        }
        Ok(ids)
    }
}

/// A compiled chat template plus the special-token strings it is rendered with.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// The template renders `tools` (Gemma 4's do; Gemma 3's and the built-in Gemma 4 one do
    /// not).
    supports_tools: bool,
}

const NAME: &str = "chat";

fn jinja_err(e: minijinja::Error) -> Error {
    // Keep the whole chain: the template's own raise_exception message is in the detail.
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    Error::InvalidArgument(format!("chat template: {msg}"))
}

impl ChatTemplate {
    /// Compiles `source` (a Hugging Face style chat template).
    pub fn new(
        source: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(jinja_err)?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        let source = source.into();
        let supports_tools = source.contains("tools") && source.contains("tool_call");
        env.add_template_owned(NAME, source).map_err(jinja_err)?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
            supports_tools,
        })
    }

    /// A built-in template.
    pub fn builtin(family: Family) -> Self {
        let src = match family {
            Family::Gemma3 => GEMMA3_TEMPLATE,
            Family::Gemma4 => GEMMA4_TEMPLATE,
        };
        let eos = match family {
            Family::Gemma3 => "<end_of_turn>",
            Family::Gemma4 => "<turn|>",
        };
        // The built-ins are tested to compile; a failure here is a bug in this file.
        Self::new(src, "<bos>", eos).expect("built-in chat template compiles")
    }

    /// The template embedded in the GGUF, or the built-in one for `general.architecture`
    /// (`gemma3` or `gemma4`) when the file has none. Token strings come from the tokenizer.
    pub fn from_gguf(md: &Metadata, tok: &Tokenizer) -> Result<Self> {
        let bos = tok
            .id_to_token(tok.bos_id())
            .unwrap_or_else(|| "<bos>".into());
        let eos = tok
            .eos_ids()
            .iter()
            .filter_map(|&id| tok.id_to_token(id))
            .find(|t| t != "<eos>")
            .unwrap_or_else(|| "<eos>".into());
        if let Some(src) = md.opt_str("tokenizer.chat_template")? {
            return Self::new(src, bos, eos);
        }
        let arch = md.opt_str("general.architecture")?.unwrap_or("gemma3");
        let family = if arch.starts_with("gemma4") || tok.token_to_id("<|turn>").is_some() {
            Family::Gemma4
        } else {
            Family::Gemma3
        };
        log::info!("no tokenizer.chat_template in the model; using the built-in {family:?} one");
        let src = match family {
            Family::Gemma3 => GEMMA3_TEMPLATE,
            Family::Gemma4 => GEMMA4_TEMPLATE,
        };
        Self::new(src, bos, eos)
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends with the model-turn
    /// header so the model writes the reply next. Bad role orders and other template
    /// `raise_exception`s are `Err`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<Prompt> {
        if messages.is_empty() {
            return Err(Error::InvalidArgument("chat template: no messages".into()));
        }
        self.render_values(messages_value(messages), None, add_generation_prompt)
    }

    /// Whether the template declares tools and renders tool calls (see
    /// [`crate::tool_calls`]).
    pub fn supports_tools(&self) -> bool {
        self.supports_tools
    }

    /// Renders messages given as JSON, as Hugging Face's `apply_chat_template` takes them
    /// (`tool_calls`, `tool_responses` and all), with `tools` declared when given.
    pub fn render_json(
        &self,
        messages: &serde_json::Value,
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<Prompt> {
        if messages.as_array().is_none_or(|m| m.is_empty()) {
            return Err(Error::InvalidArgument("chat template: no messages".into()));
        }
        if tools.is_some() && !self.supports_tools {
            return Err(Error::InvalidArgument(
                "this model's chat template has no tool-call format".into(),
            ));
        }
        self.render_values(
            Value::from(Serde(messages)),
            tools.map(|t| Value::from(Serde(t))),
            add_generation_prompt,
        )
    }

    fn render_values(
        &self,
        messages: Value,
        tools: Option<Value>,
        add_generation_prompt: bool,
    ) -> Result<Prompt> {
        let tmpl = self.env.get_template(NAME).map_err(jinja_err)?;
        let text = tmpl
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
                enable_thinking => false,
                tools => tools.unwrap_or(Value::UNDEFINED),
            })
            .map_err(jinja_err)?;
        Ok(Prompt { text })
    }
}

/// `[{role, content}]` as template values (the shape Hugging Face templates index into).
fn messages_value(messages: &[Message]) -> Value {
    messages
        .iter()
        .map(|m| {
            Value::from_pairs([
                ("role", Value::from(m.role.as_str())),
                ("content", Value::from(m.content.as_str())),
            ])
        })
        .collect()
}

/// Multi-turn chat state for a model with a KV cache: which ids the cache holds, and the
/// messages so far. Each turn re-renders the whole conversation (so the template decides the
/// format) and prefills only the part that differs from the cache.
#[derive(Debug, Clone, Default)]
pub struct Conversation {
    pub messages: Vec<Message>,
    /// Ids the model has processed, in order (prompt and generated tokens).
    cached: Vec<u32>,
}

/// What to feed the model for the next turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefill {
    /// Keep this many positions of the KV cache; drop the rest.
    pub keep: usize,
    /// Then prefill these ids at positions `keep..`.
    pub ids: Vec<u32>,
}

impl Conversation {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a message and returns what to prefill so that the model can answer: renders all
    /// messages with the generation prompt and diffs against the cached ids.
    pub fn prepare(
        &mut self,
        message: Message,
        template: &ChatTemplate,
        tok: &Tokenizer,
    ) -> Result<Prefill> {
        let mut messages = self.messages.clone();
        messages.push(message);
        let ids = template.render(&messages, true)?.encode(tok)?;
        // Commit only after rendering succeeded, so a bad role order leaves the state intact.
        self.messages = messages;
        let keep = self
            .cached
            .iter()
            .zip(&ids)
            .take_while(|(a, b)| a == b)
            .count();
        self.cached.truncate(keep);
        let new = ids[keep..].to_vec();
        self.cached.extend_from_slice(&new);
        Ok(Prefill { keep, ids: new })
    }

    /// Records a generated id that was run through the model (so it is in the KV cache).
    /// Do not record the final stop token unless it was also fed.
    pub fn push_generated(&mut self, id: u32) {
        self.cached.push(id);
    }

    /// Closes the model's turn with its reply text (as the caller shows it), so the next
    /// `prepare` renders it into the history.
    pub fn finish_reply(&mut self, text: impl Into<String>) {
        self.messages.push(Message::assistant(text));
    }

    /// Ids in the KV cache.
    pub fn cached(&self) -> &[u32] {
        &self.cached
    }
}
