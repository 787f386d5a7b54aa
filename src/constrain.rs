//! Constrained decoding: output that must match a JSON Schema, a regular expression or a Lark
//! grammar, with [llguidance](https://github.com/guidance-ai/llguidance) (what llama.cpp and
//! vLLM use). Before every step the matcher computes which tokens of the whole vocabulary may
//! come next; that bitmask goes to the GPU, which sets every other logit to −inf before the
//! top-k and the sampler (`shaders/token_mask.wgsl`), so greedy decoding, candidate sampling
//! and full-vocabulary sampling all see only allowed tokens and keep their exact
//! distributions over them. Where the grammar may end, the model's end tokens are allowed too;
//! where it must end, only they are.
//!
//! JSON output is compact (`", "` and `": "` as separators, no other whitespace) unless the
//! schema says otherwise in llguidance's `x-guidance` options: a model cannot pad its output
//! with whitespace until the token budget runs out.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};

use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// What the output must match. As JSON (the JS API's `format` option):
/// `{"type": "json_object"}`, `{"type": "json_schema", "schema": {…}}`,
/// `{"type": "regex", "pattern": "…"}`, `{"type": "grammar", "grammar": "…"}` (Lark).
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputFormat {
    /// Any JSON object (OpenAI's `json_object`).
    JsonObject,
    /// A JSON value valid under this JSON Schema.
    JsonSchema { schema: serde_json::Value },
    /// Text matching this regular expression (whole output).
    Regex { pattern: String },
    /// Text in the language of this Lark grammar (llguidance's dialect).
    Grammar { grammar: String },
}

impl OutputFormat {
    fn grammar(&self) -> TopLevelGrammar {
        match self {
            OutputFormat::JsonObject => {
                TopLevelGrammar::from_json_schema(compact(serde_json::json!({"type": "object"})))
            }
            OutputFormat::JsonSchema { schema } => {
                TopLevelGrammar::from_json_schema(compact(schema.clone()))
            }
            OutputFormat::Regex { pattern } => TopLevelGrammar::from_regex(pattern),
            OutputFormat::Grammar { grammar } => TopLevelGrammar::from_lark(grammar.clone()),
        }
    }
}

/// Compact separators unless the schema sets llguidance's options itself.
fn compact(mut schema: serde_json::Value) -> serde_json::Value {
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance").or_insert_with(|| {
            serde_json::json!({
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": ",
            })
        });
    }
    schema
}

/// The tokenizer's side of every constraint of one model: the token trie (built once; ~0.3 s
/// for Gemma's 262,144 tokens) and llguidance's parser factory.
pub struct ConstraintFactory {
    factory: ParserFactory,
    end_tokens: Vec<u32>,
    /// Logits per row (the model's embedding rows; ≥ the tokenizer's vocabulary).
    vocab: u32,
}

impl ConstraintFactory {
    /// `model_vocab`: the logits row width (ids past the tokenizer's vocabulary are never
    /// allowed).
    pub fn new(tok: &Tokenizer, model_vocab: u32) -> Result<Self> {
        let words = tok.token_bytes();
        let end_tokens = tok.eos_ids().to_vec();
        let eos = *end_tokens
            .first()
            .ok_or_else(|| Error::Tokenizer("the tokenizer has no end token".into()))?;
        let trie = TokTrie::from(&TokRxInfo::new(words.len() as u32, eos), &words);
        let env: llguidance::toktrie::TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let factory = ParserFactory::new_simple(&env).map_err(constraint_error)?;
        Ok(ConstraintFactory {
            factory,
            end_tokens,
            vocab: model_vocab,
        })
    }

    /// A fresh constraint for one generation; a schema, regex or grammar llguidance refuses is
    /// an `InvalidArgument` naming its complaint.
    pub fn build(&self, format: &OutputFormat) -> Result<OutputConstraint> {
        let parser = self
            .factory
            .create_parser(format.grammar())
            .map_err(constraint_error)?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(Error::InvalidArgument(format!("output format: {e}")));
        }
        Ok(OutputConstraint {
            matcher,
            end_tokens: self.end_tokens.clone(),
            words: vec![0; self.vocab.div_ceil(32) as usize],
            vocab: self.vocab,
        })
    }
}

fn constraint_error(e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("output format: {e}"))
}

/// The state of one constrained generation.
pub struct OutputConstraint {
    matcher: Matcher,
    end_tokens: Vec<u32>,
    /// `[⌈V/32⌉]` u32: bit `i % 32` of word `i / 32` allows token `i`.
    words: Vec<u32>,
    vocab: u32,
}

impl OutputConstraint {
    /// The tokens allowed next, as the GPU's bitmask (`[⌈V/32⌉]` u32). Errors when the
    /// grammar allows nothing (a grammar that cannot be completed from here).
    pub fn mask(&mut self) -> Result<&[u32]> {
        self.words.fill(0);
        let done = self.matcher.is_stopped();
        let allowed = if done {
            None
        } else {
            Some(self.matcher.compute_mask().map_err(constraint_error)?)
        };
        let mut end_allowed = done;
        if let Some(vob) = &allowed {
            let src = vob.as_slice();
            let n = self.words.len().min(src.len());
            self.words[..n].copy_from_slice(&src[..n]);
            // Ids past the model's row never exist.
            let tail = self.vocab % 32;
            if tail != 0 && n == self.words.len() {
                self.words[n - 1] &= (1u32 << tail) - 1;
            }
            end_allowed = self.end_tokens.iter().any(|&e| vob.is_allowed(e));
        }
        // llguidance allows its one EOS id where the grammar may end: every end token of the
        // model ends a generation, so they all are.
        for &e in &self.end_tokens {
            let (w, b) = ((e / 32) as usize, e % 32);
            if w < self.words.len() {
                if end_allowed {
                    self.words[w] |= 1 << b;
                } else {
                    self.words[w] &= !(1 << b);
                }
            }
        }
        if self.words.iter().all(|&w| w == 0) {
            return Err(Error::InvalidArgument(
                "output format: the grammar allows no token here".into(),
            ));
        }
        Ok(&self.words)
    }

    /// Advances past a generated token (an end token needs no call: generation stops there).
    pub fn commit(&mut self, id: u32) -> Result<()> {
        if self.end_tokens.contains(&id) {
            return Ok(());
        }
        self.matcher.consume_token(id).map_err(constraint_error)
    }
}
