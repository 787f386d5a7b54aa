//! Gemma 4 tool calling: the request's tools and past calls handed to the model's chat
//! template, the model's `<|tool_call>call:NAME{…}<tool_call|>` spans parsed into structured
//! calls as they stream, and a grammar that makes the model call a tool with arguments shaped
//! by the tool's JSON Schema (`tool_choice` `required` or a named function).
//!
//! Gemma 4 writes arguments in its own syntax, not JSON (its chat template's
//! `format_argument`): `{key:value,…}` with bare keys, strings between `<|"|>` tokens, numbers,
//! `true`/`false`, lists `[…]` and nested `{…}`. A tool's result goes back into the same model
//! turn as `<|tool_response>response:NAME{…}<tool_response|>`; the model stops on
//! `<|tool_response>` (one of its end tokens) to wait for it.
//!
//! Everything here is synchronous and free of I/O: the server and the browser engine share it.

use serde::Serialize;
use serde_json::{Map, Number, Value};

use crate::openai::{ApiError, ChatMessage, Role, Tool, ToolCall, ToolChoice};

/// Opens a call in the model's output (a token of its own in Gemma 4's vocabulary).
pub const CALL_OPEN: &str = "<|tool_call>";
/// Closes a call.
pub const CALL_CLOSE: &str = "<tool_call|>";
/// Delimits a string value on both sides.
pub const STRING_DELIM: &str = "<|\"|>";

/// A tool call the model made.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParsedCall {
    pub name: String,
    /// The arguments as a JSON object.
    pub arguments: Value,
}

impl ParsedCall {
    /// The arguments as OpenAI sends them: JSON text.
    pub fn arguments_json(&self) -> String {
        self.arguments.to_string()
    }
}

/// Parses the text between [`CALL_OPEN`] and [`CALL_CLOSE`]: `call:NAME{key:value,…}`.
/// Lenient where the model's syntax is ambiguous (a bare word is a string, JSON-quoted strings
/// and keys are read too); an error names what is wrong and where.
pub fn parse_call(span: &str) -> Result<ParsedCall, String> {
    let body = span
        .trim_start()
        .strip_prefix("call:")
        .ok_or_else(|| format!("a tool call must start with 'call:', got {span:?}"))?;
    let brace = body
        .find('{')
        .ok_or_else(|| format!("the tool call {span:?} has no '{{' after its name"))?;
    let name = body[..brace].trim();
    if name.is_empty() {
        return Err(format!("the tool call {span:?} has no function name"));
    }
    let mut p = ArgParser {
        s: &body[brace..],
        at: 0,
    };
    let arguments = p.object()?;
    p.skip_ws();
    if p.at != p.s.len() {
        return Err(format!(
            "unexpected text after the arguments of {name}: {:?}",
            &p.s[p.at..]
        ));
    }
    Ok(ParsedCall {
        name: name.to_string(),
        arguments,
    })
}

/// A recursive-descent reader of Gemma's argument syntax.
struct ArgParser<'a> {
    s: &'a str,
    at: usize,
}

impl ArgParser<'_> {
    fn rest(&self) -> &str {
        &self.s[self.at..]
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.at = self.s.len() - trimmed.len();
    }

    fn eat(&mut self, what: &str) -> bool {
        if self.rest().starts_with(what) {
            self.at += what.len();
            true
        } else {
            false
        }
    }

    fn error(&self, expected: &str) -> String {
        let rest: String = self.rest().chars().take(40).collect();
        format!("expected {expected} at {rest:?}")
    }

    fn object(&mut self) -> Result<Value, String> {
        self.skip_ws();
        if !self.eat("{") {
            return Err(self.error("'{'"));
        }
        let mut map = Map::new();
        loop {
            self.skip_ws();
            if self.eat("}") {
                return Ok(Value::Object(map));
            }
            if !map.is_empty() && !self.eat(",") {
                return Err(self.error("',' or '}'"));
            }
            self.skip_ws();
            let key = self.key()?;
            self.skip_ws();
            if !self.eat(":") {
                return Err(self.error("':' after a key"));
            }
            let value = self.value()?;
            map.insert(key, value);
        }
    }

    fn key(&mut self) -> Result<String, String> {
        if self.rest().starts_with(STRING_DELIM) || self.rest().starts_with('"') {
            return match self.value()? {
                Value::String(s) => Ok(s),
                _ => Err(self.error("a key")),
            };
        }
        let end = self
            .rest()
            .find([':', ',', '}'])
            .ok_or_else(|| self.error("a key"))?;
        let key = self.rest()[..end].trim().to_string();
        if key.is_empty() {
            return Err(self.error("a key"));
        }
        self.at += end;
        Ok(key)
    }

    fn value(&mut self) -> Result<Value, String> {
        self.skip_ws();
        if self.eat(STRING_DELIM) {
            let end = self
                .rest()
                .find(STRING_DELIM)
                .ok_or_else(|| "a string value is not closed with <|\"|>".to_string())?;
            let s = self.rest()[..end].to_string();
            self.at += end + STRING_DELIM.len();
            return Ok(Value::String(s));
        }
        if self.rest().starts_with('{') {
            return self.object();
        }
        if self.eat("[") {
            let mut items = Vec::new();
            loop {
                self.skip_ws();
                if self.eat("]") {
                    return Ok(Value::Array(items));
                }
                if !items.is_empty() && !self.eat(",") {
                    return Err(self.error("',' or ']'"));
                }
                items.push(self.value()?);
            }
        }
        if self.rest().starts_with('"') {
            // A JSON string, escapes and all.
            let mut de = serde_json::Deserializer::from_str(self.rest()).into_iter::<String>();
            let s = de
                .next()
                .and_then(|r| r.ok())
                .ok_or_else(|| self.error("a closed JSON string"))?;
            self.at += de.byte_offset();
            return Ok(Value::String(s));
        }
        let end = self
            .rest()
            .find([',', '}', ']'])
            .unwrap_or(self.rest().len());
        let word = self.rest()[..end].trim().to_string();
        // A colon in a bare word is a key after a missing comma.
        if word.is_empty() || word.contains(':') {
            return Err(self.error("a value"));
        }
        self.at += end;
        Ok(match word.as_str() {
            "true" | "True" => Value::Bool(true),
            "false" | "False" => Value::Bool(false),
            "null" | "none" | "None" => Value::Null,
            _ => match word.parse::<Number>() {
                Ok(n) => Value::Number(n),
                Err(_) => Value::String(word),
            },
        })
    }
}

/// A piece of a reply: text, or a whole tool call.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyPart {
    Text(String),
    Call(ParsedCall),
}

/// Splits streamed output into text and tool calls. Text that could be the start of
/// [`CALL_OPEN`] is held back until the next piece tells; a call is released whole when its
/// [`CALL_CLOSE`] arrives. A call that does not parse is released as the text it was, so
/// nothing the model wrote is lost.
#[derive(Debug, Clone, Default)]
pub struct ToolCallSplitter {
    held: String,
    in_call: bool,
}

impl ToolCallSplitter {
    pub fn push(&mut self, text: &str, out: &mut Vec<ReplyPart>) {
        self.held.push_str(text);
        loop {
            if self.in_call {
                let Some(at) = self.held.find(CALL_CLOSE) else {
                    return;
                };
                let rest = self.held.split_off(at + CALL_CLOSE.len());
                let span = std::mem::replace(&mut self.held, rest);
                let inner = &span[..at];
                out.push(match parse_call(inner) {
                    Ok(call) => ReplyPart::Call(call),
                    Err(e) => {
                        log::warn!("a tool call did not parse ({e}); returned as text");
                        ReplyPart::Text(format!("{CALL_OPEN}{span}"))
                    }
                });
                self.in_call = false;
            } else if let Some(at) = self.held.find(CALL_OPEN) {
                let rest = self.held.split_off(at + CALL_OPEN.len());
                self.held.truncate(at);
                push_text(out, std::mem::replace(&mut self.held, rest));
                self.in_call = true;
            } else {
                // Keep the longest tail that CALL_OPEN starts with.
                let keep_from = self
                    .held
                    .char_indices()
                    .map(|(i, _)| i)
                    .find(|&i| CALL_OPEN.starts_with(&self.held[i..]))
                    .unwrap_or(self.held.len());
                let rest = self.held.split_off(keep_from);
                push_text(out, std::mem::replace(&mut self.held, rest));
                return;
            }
        }
    }

    /// The output ended: what is held is text (an unfinished call as the text it was).
    pub fn finish(&mut self, out: &mut Vec<ReplyPart>) {
        let held = std::mem::take(&mut self.held);
        if std::mem::take(&mut self.in_call) {
            push_text(out, format!("{CALL_OPEN}{held}"));
        } else {
            push_text(out, held);
        }
    }
}

fn push_text(out: &mut Vec<ReplyPart>, text: String) {
    if !text.is_empty() {
        out.push(ReplyPart::Text(text));
    }
}

/// `tools` as the chat template takes them: OpenAI's `[{type, function: {name, description,
/// parameters}}]`.
pub fn template_tools(tools: &[Tool]) -> Value {
    tools
        .iter()
        .map(|t| {
            let mut function = Map::new();
            function.insert("name".into(), t.name.clone().into());
            function.insert(
                "description".into(),
                t.description.clone().unwrap_or_default().into(),
            );
            function.insert("parameters".into(), t.parameters.clone());
            serde_json::json!({"type": "function", "function": function})
        })
        .collect()
}

/// The conversation as the chat template takes it. OpenAI sends a tool's result as a message
/// of its own (`role: tool`); Gemma's template expects it on the model turn that made the call
/// (`tool_responses: [{name, response}]`), followed in that same turn by what the model said
/// next. So tool messages are folded into the assistant message before them, and an assistant
/// message that follows tool results continues that turn. Call arguments become objects (the
/// template writes them in Gemma's syntax); a tool result that is a JSON object is passed as
/// one, anything else as its text.
pub fn template_messages(messages: &[ChatMessage]) -> Result<Value, ApiError> {
    let bad = |m: String| ApiError::invalid("messages", m);
    let mut out: Vec<Map<String, Value>> = Vec::with_capacity(messages.len());
    // The assistant message whose calls the next tool messages answer: its index in `out`,
    // and its calls.
    let mut open_turn: Option<(usize, &[ToolCall])> = None;
    for (i, m) in messages.iter().enumerate() {
        match m.role {
            Role::Tool => {
                let Some((turn, calls)) = open_turn else {
                    return Err(bad(format!(
                        "messages[{i}] is a tool result, but the message before it is not an \
                         assistant message with tool_calls"
                    )));
                };
                let name = calls
                    .iter()
                    .find(|c| Some(&c.id) == m.tool_call_id.as_ref() && !c.id.is_empty())
                    .map(|c| c.name.clone())
                    .or_else(|| m.name.clone())
                    .or_else(|| (calls.len() == 1).then(|| calls[0].name.clone()))
                    .ok_or_else(|| {
                        bad(format!(
                            "messages[{i}].tool_call_id {:?} matches none of the calls before it",
                            m.tool_call_id.as_deref().unwrap_or("")
                        ))
                    })?;
                let response = match serde_json::from_str::<Value>(&m.content) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => Value::String(m.content.clone()),
                };
                let entry = out[turn]
                    .entry("tool_responses")
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(list) = entry {
                    list.push(serde_json::json!({"name": name, "response": response}));
                }
            }
            Role::Assistant
                if m.tool_calls.is_empty()
                    && open_turn.is_some_and(|(t, _)| out[t].contains_key("tool_responses")) =>
            {
                // What the model said after the tool results belongs to the same turn.
                let (turn, _) = open_turn.take().expect("checked above");
                out[turn].insert("content".into(), m.content.clone().into());
            }
            _ => {
                let mut msg = Map::new();
                msg.insert("role".into(), m.role.as_str().into());
                msg.insert("content".into(), m.content.clone().into());
                open_turn = None;
                if !m.tool_calls.is_empty() {
                    let calls = m
                        .tool_calls
                        .iter()
                        .map(|c| {
                            let arguments = match serde_json::from_str::<Value>(&c.arguments) {
                                Ok(v @ Value::Object(_)) => v,
                                _ => Value::String(c.arguments.clone()),
                            };
                            serde_json::json!({
                                "id": c.id,
                                "type": "function",
                                "function": {"name": c.name, "arguments": arguments},
                            })
                        })
                        .collect();
                    msg.insert("tool_calls".into(), Value::Array(calls));
                    open_turn = Some((out.len(), &m.tool_calls));
                }
                out.push(msg);
            }
        }
    }
    Ok(Value::Array(out.into_iter().map(Value::Object).collect()))
}

/// The Lark grammar (llguidance's dialect) that makes the model call a tool: `Required` is one
/// or more calls of any of `tools` (one with `parallel` false), `Function(name)` exactly one
/// call of that one; `None` for `Auto` and `None`, where the model decides and its output is
/// only parsed.
///
/// Each call's arguments follow the tool's parameter schema: the declared properties in key
/// order (as the chat template writes past calls), required ones always present, no others;
/// `type` (with lists and `null`), `enum`, `const`, `items`, `minItems`/`maxItems` (up to 64),
/// `minLength`/`maxLength`, `anyOf`/`oneOf` and nested objects are enforced; `minimum`,
/// `maximum` and `pattern` are not. String values cannot contain `<|`, the start of Gemma's own
/// delimiters (nor `<` at all where their length is bounded), and numbers have at most 16
/// digits before and after the point.
pub fn call_grammar(
    tools: &[Tool],
    choice: &ToolChoice,
    parallel: bool,
) -> Result<Option<String>, ApiError> {
    let chosen: Vec<&Tool> = match choice {
        ToolChoice::None | ToolChoice::Auto => return Ok(None),
        ToolChoice::Required => tools.iter().collect(),
        ToolChoice::Function(name) => tools.iter().filter(|t| &t.name == name).collect(),
    };
    let mut g = LarkBuilder::default();
    let mut alternatives = Vec::new();
    for (i, tool) in chosen.iter().enumerate() {
        let args = g
            .object(&tool.parameters, &format!("tools[{i}].function.parameters"))
            .map_err(|m| ApiError::invalid("tools", m))?;
        alternatives.push(format!("{} {args}", lit(&tool.name)));
    }
    let repeat = if parallel && matches!(choice, ToolChoice::Required) {
        "+"
    } else {
        ""
    };
    let mut text = format!(
        "start: call{repeat}\ncall: {} ({}) {}\n",
        lit(&format!("{CALL_OPEN}call:")),
        alternatives.join(" | "),
        lit(CALL_CLOSE)
    );
    for rule in &g.rules {
        text.push_str(rule);
        text.push('\n');
    }
    text.push_str(GENERIC_RULES);
    Ok(Some(text))
}

/// Any value in Gemma's syntax, for schemas that do not say more.
const GENERIC_RULES: &str = r#"any_value: STRING | NUMBER | "true" | "false" | "null" | any_object | any_list
any_object: "{" (KEY ":" any_value ("," KEY ":" any_value)*)? "}"
any_list: "[" (any_value ("," any_value)*)? "]"
KEY: /[A-Za-z_][A-Za-z0-9_]*/
STRING: /<\|"\|>([^<]|<+[^<|])*<*<\|"\|>/
NUMBER: /-?(0|[1-9][0-9]{0,15})(\.[0-9]{1,16})?([eE][+-]?[0-9]{1,3})?/
INTEGER: /-?(0|[1-9][0-9]{0,15})/
"#;

/// A Lark string literal.
fn lit(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// Builds one rule per object schema; values become expressions over them.
#[derive(Default)]
struct LarkBuilder {
    rules: Vec<String>,
}

impl LarkBuilder {
    fn rule(&mut self, body: String) -> String {
        let name = format!("r{}", self.rules.len());
        self.rules.push(format!("{name}: {body}"));
        name
    }

    /// The expression for a value under `schema`.
    fn value(&mut self, schema: &Value, at: &str) -> Result<String, String> {
        let Some(obj) = schema.as_object() else {
            return match schema {
                Value::Bool(true) => Ok("any_value".into()),
                _ => Err(format!("{at} must be a JSON Schema object")),
            };
        };
        if let Some(c) = obj.get("const") {
            return Ok(lit(&gemma_value(c)));
        }
        if let Some(list) = obj.get("enum") {
            let list = list
                .as_array()
                .filter(|l| !l.is_empty())
                .ok_or_else(|| format!("{at}.enum must be a non-empty array"))?;
            let alts: Vec<String> = list.iter().map(|v| lit(&gemma_value(v))).collect();
            return Ok(format!("({})", alts.join(" | ")));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(list) = obj.get(key) {
                let list = list
                    .as_array()
                    .filter(|l| !l.is_empty())
                    .ok_or_else(|| format!("{at}.{key} must be a non-empty array"))?;
                let alts = list
                    .iter()
                    .enumerate()
                    .map(|(i, s)| self.value(s, &format!("{at}.{key}[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?;
                return Ok(format!("({})", alts.join(" | ")));
            }
        }
        let types: Vec<&str> = match obj.get("type") {
            None => {
                if obj.contains_key("properties") {
                    vec!["object"]
                } else if obj.contains_key("items") {
                    vec!["array"]
                } else {
                    return Ok("any_value".into());
                }
            }
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(list)) => list
                .iter()
                .map(|t| {
                    t.as_str()
                        .ok_or_else(|| format!("{at}.type must be a string or a list of strings"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(format!("{at}.type must be a string or a list of strings")),
        };
        let alts = types
            .iter()
            .map(|t| {
                Ok(match *t {
                    "string" => string_rule(obj, at)?,
                    "number" => "NUMBER".to_string(),
                    "integer" => "INTEGER".to_string(),
                    "boolean" => "(\"true\" | \"false\")".to_string(),
                    "null" => "\"null\"".to_string(),
                    "object" => self.object(schema, at)?,
                    "array" => {
                        let item = match obj.get("items") {
                            None => "any_value".to_string(),
                            Some(items) => self.value(items, &format!("{at}.items"))?,
                        };
                        let min = bound(obj, "minItems", at)?.unwrap_or(0);
                        let max = bound(obj, "maxItems", at)?;
                        format!("(\"[\" {} \"]\")", list_of(&item, min, max, at)?)
                    }
                    other => return Err(format!("{at}.type {other:?} is not a JSON Schema type")),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(if alts.len() == 1 {
            alts.into_iter().next().expect("one")
        } else {
            format!("({})", alts.join(" | "))
        })
    }

    /// The rule for an object under `schema`: its declared properties in key order, required
    /// ones always present, commas only between those present.
    fn object(&mut self, schema: &Value, at: &str) -> Result<String, String> {
        let props = match schema.get("properties") {
            None => return Ok("any_object".into()),
            Some(Value::Object(p)) => p,
            Some(_) => return Err(format!("{at}.properties must be an object")),
        };
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(missing) = required.iter().find(|r| !props.contains_key(**r)) {
            return Err(format!(
                "{at}.required names {missing:?}, which is not among its properties"
            ));
        }
        let mut keys: Vec<&String> = props.keys().collect();
        keys.sort();
        let mut items = Vec::with_capacity(keys.len());
        for key in keys {
            let value = self.value(&props[key], &format!("{at}.properties.{key}"))?;
            items.push((
                format!("{} {value}", lit(&format!("{key}:"))),
                required.contains(&key.as_str()),
            ));
        }
        // rests[i]: the items from i on, each after a comma.
        let mut rests = vec![String::new(); items.len() + 1];
        for (i, (item, req)) in items.iter().enumerate().rev() {
            let one = format!("\",\" {item}");
            let after = &rests[i + 1];
            rests[i] = if *req {
                format!("{one} {after}")
            } else {
                format!("({one})? {after}")
            }
            .trim()
            .to_string();
        }
        // The first item present is some j with every item before it optional.
        let mut alts = Vec::new();
        for (j, (item, req)) in items.iter().enumerate() {
            alts.push(format!("{item} {}", rests[j + 1]).trim().to_string());
            if *req {
                break;
            }
        }
        let all_optional = items.iter().all(|(_, req)| !req);
        Ok(self.rule(match (alts.is_empty(), all_optional) {
            (true, _) => "\"{\" \"}\"".to_string(),
            (false, true) => format!("\"{{\" ({})? \"}}\"", alts.join(" | ")),
            (false, false) => format!("\"{{\" ({}) \"}}\"", alts.join(" | ")),
        }))
    }
}

/// A non-negative integer keyword of a schema (`maxLength`, `minItems`, …).
fn bound(obj: &Map<String, Value>, key: &str, at: &str) -> Result<Option<u64>, String> {
    match obj.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("{at}.{key} must be a non-negative integer")),
    }
}

/// A string value. With `minLength`/`maxLength` its characters exclude `<` (so the bound
/// counts characters exactly); without, they may be anything but `<|`.
fn string_rule(obj: &Map<String, Value>, at: &str) -> Result<String, String> {
    let min = bound(obj, "minLength", at)?;
    let max = bound(obj, "maxLength", at)?;
    if min.is_none() && max.is_none() {
        return Ok("STRING".into());
    }
    let min = min.unwrap_or(0);
    if max.is_some_and(|max| max < min) {
        return Err(format!("{at}: maxLength is below minLength"));
    }
    let max = max.map_or(String::new(), |m| m.to_string());
    Ok(format!("/<\\|\"\\|>[^<]{{{min},{max}}}<\\|\"\\|>/"))
}

/// `min` to `max` (no limit when `None`) comma-separated `item`s.
fn list_of(item: &str, min: u64, max: Option<u64>, at: &str) -> Result<String, String> {
    if max.is_some_and(|max| max < min) {
        return Err(format!("{at}: maxItems is below minItems"));
    }
    if max.is_some_and(|m| m > 64) || min > 64 {
        // Spelled out item by item below; larger bounds would make huge grammars.
        if min > 64 {
            return Err(format!(
                "{at}: minItems above 64 is not supported in tool arguments"
            ));
        }
        return list_of(item, min, None, at);
    }
    let next = format!("\",\" {item}");
    // The optional tail after the required items.
    let tail = match max {
        None => format!("({next})*"),
        Some(max) => {
            let mut tail = String::new();
            for _ in min.max(1)..max {
                tail = format!("({next} {tail})?");
            }
            tail
        }
    };
    Ok(match min {
        0 if max == Some(0) => String::new(),
        0 => format!("({item} {tail})?"),
        _ => {
            let mut required = item.to_string();
            for _ in 1..min {
                required.push(' ');
                required.push_str(&next);
            }
            format!("{required} {tail}")
        }
    })
}

/// A JSON value written the way Gemma writes it (for `enum` and `const`).
fn gemma_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{STRING_DELIM}{s}{STRING_DELIM}"),
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(gemma_value).collect();
            format!("[{}]", inner.join(","))
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let inner: Vec<String> = keys
                .iter()
                .map(|k| format!("{k}:{}", gemma_value(&map[*k])))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_gemma_argument_syntax() {
        let call = parse_call(
            "call:get_weather{city:<|\"|>Paris, France<|\"|>,days:3,metric:true,\
             hours:[6,12.5],opts:{lang:<|\"|>fr<|\"|>,note:null}}",
        )
        .unwrap();
        assert_eq!(call.name, "get_weather");
        assert_eq!(
            call.arguments,
            json!({"city": "Paris, France", "days": 3, "metric": true, "hours": [6, 12.5],
                   "opts": {"lang": "fr", "note": null}})
        );
        assert_eq!(parse_call("call:ping{}").unwrap().arguments, json!({}));
        // JSON-style quoting and bare words are read too.
        assert_eq!(
            parse_call(r#"call:f{"k":"a\"b",mode:fast}"#)
                .unwrap()
                .arguments,
            json!({"k": "a\"b", "mode": "fast"})
        );
        for bad in [
            "get_weather{}",
            "call:{}",
            "call:f",
            "call:f{a:<|\"|>open}",
            "call:f{a:1 b:2}",
            "call:f{a:1}x",
        ] {
            assert!(parse_call(bad).is_err(), "{bad}");
        }
    }

    fn split(pieces: &[&str]) -> Vec<ReplyPart> {
        let mut s = ToolCallSplitter::default();
        let mut out = Vec::new();
        for p in pieces {
            s.push(p, &mut out);
        }
        s.finish(&mut out);
        // Adjacent text parts joined, as a client would see them.
        let mut joined: Vec<ReplyPart> = Vec::new();
        for part in out {
            match (joined.last_mut(), part) {
                (Some(ReplyPart::Text(a)), ReplyPart::Text(b)) => a.push_str(&b),
                (_, p) => joined.push(p),
            }
        }
        joined
    }

    #[test]
    fn splitter_finds_calls_across_pieces() {
        let call = |n: &str| {
            ReplyPart::Call(ParsedCall {
                name: n.into(),
                arguments: json!({"x": 1}),
            })
        };
        assert_eq!(
            split(&[
                "Sure.",
                "<|tool",
                "_call>call:f{x:",
                "1}<tool_",
                "call|>",
                "<|tool_call>call:g{x:1}<tool_call|>"
            ]),
            vec![ReplyPart::Text("Sure.".into()), call("f"), call("g")]
        );
        // Held-back text that turns out not to open a call is released.
        assert_eq!(
            split(&["a <|to", "ken"]),
            vec![ReplyPart::Text("a <|token".into())]
        );
        // An unfinished or malformed call comes back as the text it was.
        assert_eq!(
            split(&["<|tool_call>call:f{x:"]),
            vec![ReplyPart::Text("<|tool_call>call:f{x:".into())]
        );
        assert_eq!(
            split(&["<|tool_call>nonsense<tool_call|>ok"]),
            vec![ReplyPart::Text("<|tool_call>nonsense<tool_call|>ok".into())]
        );
    }

    fn message(role: Role, content: &str) -> ChatMessage {
        ChatMessage {
            role,
            content: content.into(),
            name: None,
            tool_call_id: None,
            tool_calls: Vec::new(),
        }
    }

    #[test]
    fn tool_results_join_the_model_turn_that_called() {
        let mut call = message(Role::Assistant, "");
        call.tool_calls = vec![crate::openai::ToolCall {
            id: "c1".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        }];
        let mut result = message(Role::Tool, r#"{"temp":21}"#);
        result.tool_call_id = Some("c1".into());
        let messages = vec![
            message(Role::User, "Weather in Paris?"),
            call,
            result,
            message(Role::Assistant, "It is 21 degrees."),
            message(Role::User, "Thanks"),
        ];
        let v = template_messages(&messages).unwrap();
        assert_eq!(
            v,
            json!([
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "It is 21 degrees.",
                 "tool_calls": [{"id": "c1", "type": "function",
                                 "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
                 "tool_responses": [{"name": "get_weather", "response": {"temp": 21}}]},
                {"role": "user", "content": "Thanks"},
            ])
        );
        let mut orphan = message(Role::Tool, "1");
        orphan.tool_call_id = Some("c9".into());
        let e = template_messages(&[message(Role::User, "x"), orphan]).unwrap_err();
        assert!(e.message.contains("messages[1]"), "{}", e.message);
    }

    fn tool(name: &str, parameters: Value) -> Tool {
        Tool {
            name: name.into(),
            description: None,
            parameters,
            strict: false,
        }
    }

    #[test]
    fn grammar_follows_the_schema() {
        let tools = [
            tool(
                "get_weather",
                json!({"type": "object",
                       "properties": {"city": {"type": "string"},
                                      "unit": {"enum": ["c", "f"]},
                                      "days": {"type": "integer"}},
                       "required": ["city"]}),
            ),
            tool("ping", json!({"type": "object", "properties": {}})),
        ];
        assert_eq!(call_grammar(&tools, &ToolChoice::Auto, true).unwrap(), None);
        let g = call_grammar(&tools, &ToolChoice::Function("get_weather".into()), true)
            .unwrap()
            .unwrap();
        assert!(g.starts_with("start: call\n"), "{g}");
        assert!(!g.contains("\"ping\""), "{g}");
        let g = call_grammar(&tools, &ToolChoice::Required, true)
            .unwrap()
            .unwrap();
        let one = call_grammar(&tools, &ToolChoice::Required, false)
            .unwrap()
            .unwrap();
        assert!(one.starts_with("start: call\n"), "{one}");
        assert!(g.starts_with("start: call+\n"), "{g}");
        assert!(
            g.contains(r#""unit:" ("<|\"|>c<|\"|>" | "<|\"|>f<|\"|>")"#),
            "{g}"
        );
        let e = call_grammar(
            &[tool("f", json!({"properties": {"a": {"type": "strin"}}}))],
            &ToolChoice::Required,
            true,
        )
        .unwrap_err();
        assert!(
            e.message
                .contains("tools[0].function.parameters.properties.a.type"),
            "{}",
            e.message
        );
    }
}
