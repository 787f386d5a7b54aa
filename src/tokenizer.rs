//! Gemma tokenizer: text ⇄ token ids, built from the GGUF vocabulary or from a `tokenizer.json`.
//!
//! From a GGUF file we reproduce exactly the pipeline Google ships in Gemma's `tokenizer.json`
//! (as Hugging Face's `tokenizers` crate runs it), because the ids must match what the model was
//! trained on bit for bit. The encoder is our own compact one ([`compact`]: a few bytes per piece
//! and per merge, where `tokenizers` holds ~60 MB of hash maps for Gemma's vocabulary; the peak
//! memory of a browser tab is what it saves), a port of the `tokenizers` algorithms; the
//! equivalent `tokenizers` object is built only on demand ([`Tokenizer::hf`]), and
//! `tests/tokenizer.rs` checks both give the same ids. A `tokenizer.json` is still run by
//! `tokenizers` itself. The pipeline:
//!
//! * normalizer `Replace(" " → "▁")`, with **no** dummy-prefix space;
//! * pre-tokenizer `Split(" ", MergedWithPrevious)` — a no-op after the normalizer (there are no
//!   spaces left), kept because the real file has it; Gemma 4 additionally isolates newline
//!   runs (llama.cpp's `[^\n]+|[\n]+` pre-split for its pre-type);
//! * model BPE with `byte_fallback` (`<0x00>`…`<0xFF>`), `fuse_unk`, unknown `<unk>`;
//! * every CONTROL, USER_DEFINED and UNKNOWN token is an *added token* matched atomically on the
//!   raw text (`normalized = false`), leftmost-longest, before BPE runs — this is how the real
//!   file treats `<start_of_turn>`, `<unused5>`, `<table>`, newline runs and tab runs;
//! * decoding: `▁` → space, byte tokens → bytes, then UTF-8 (see [`Tokenizer::decode`]).
//!
//! Gemma 3 GGUFs (`tokenizer.ggml.model = "llama"`) carry SentencePiece `scores` instead of BPE
//! merges. [`derive_merges`] reproduces transformers' SentencePiece → BPE conversion
//! (`SentencePieceExtractor`): every split of every piece into two vocabulary pieces is a merge,
//! ordered by the piece's score, then by the lengths of the parts. With one GGUF-specific fix:
//! llama.cpp's converter overwrote the score of control/user-defined pieces with −1000 where
//! the SentencePiece model has 0, and wrote the user-defined pieces with `▁` turned back into
//! spaces; both are undone here. On the Gemma 3 270M file this gives the same 514,906 merges in
//! the same order as the official `tokenizer.json` (checked in `tests/tokenizer.rs` through the
//! ids of a 600-line corpus).
//!
//! Gemma 4 GGUFs (`"gemma4"`, or `"llama"` with `pre = "gemma4"`) store real merges in
//! `tokenizer.ggml.merges`, which are used as they are.

mod compact;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use compact::Vocab;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::gguf::Metadata;
use crate::{Error, Result};

/// SentencePiece's word-boundary marker, which Gemma uses for spaces.
pub const SPACE_MARKER: char = '\u{2581}';

/// Names of the tokens that end generation, looked up in the vocabulary (never hard-coded ids):
/// Gemma 3 ends a turn with `<end_of_turn>`, Gemma 4 with `<turn|>`; Gemma 4's
/// `generation_config.json` also stops at `<|tool_response>` (the model hands over to a tool).
const END_TOKEN_NAMES: &[&str] = &["<eos>", "<end_of_turn>", "<turn|>", "<|tool_response>"];

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    /// Maps the GGUF integer; anything unknown is treated as a normal piece rather than
    /// rejected, because a new converter may add types and normal BPE handling is the safe
    /// reading of an unfamiliar piece.
    pub fn from_gguf(v: u32) -> Self {
        match v {
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Normal,
        }
    }

    /// Tokens that the real tokenizer matches atomically in raw text (its `added_tokens`).
    fn is_added(self) -> bool {
        matches!(
            self,
            TokenType::Control | TokenType::UserDefined | TokenType::Unknown
        )
    }
}

/// How the BPE merges are obtained.
#[derive(Debug, Clone)]
pub enum MergeSource {
    /// Gemma 3: SentencePiece scores, one per token; merges are derived ([`derive_merges`]).
    Scores(Vec<f32>),
    /// Gemma 4: explicit merges, best first.
    Merges(Vec<(String, String)>),
    /// Gemma 4 as a GGUF stores them: `tokenizer.ggml.merges` lines (`left right`, spaces in
    /// pieces written as spaces), best first; parsed against the vocabulary while building.
    Lines(Vec<String>),
}

/// Everything needed to build a tokenizer, independent of where it was read from. `from_gguf`
/// fills it from metadata; tests build it by hand.
#[derive(Debug, Clone)]
pub struct VocabSpec {
    /// Pieces by id, in SentencePiece form (`▁` for a space; GGUF user-defined pieces written
    /// with real spaces are converted by [`VocabSpec::normalize_pieces`]).
    pub tokens: Vec<String>,
    pub token_types: Vec<TokenType>,
    pub merges: MergeSource,
    /// Isolate runs of `\n` before BPE (Gemma 4's pre-tokenizer).
    pub split_newlines: bool,
    pub bos_id: Option<u32>,
    /// Single EOS id from metadata, plus the optional list; both are added to the by-name set.
    pub eos_ids: Vec<u32>,
}

impl VocabSpec {
    /// llama.cpp's converter writes user-defined pieces such as `"▁▁"` as `"  "`; the
    /// tokenizer.json keeps `▁`. Added tokens are matched on raw text, so the difference is
    /// visible (literal `▁▁` in input is one token in the real tokenizer); restore `▁`.
    pub fn normalize_pieces(&mut self) {
        for t in &mut self.tokens {
            if t.contains(' ') {
                *t = t.replace(' ', "\u{2581}");
            }
        }
    }
}

/// Derives BPE merges from SentencePiece scores exactly like transformers'
/// `SentencePieceExtractor.extract` (used to produce Gemma's official `tokenizer.json`).
///
/// For every piece (in id order) every split `piece[..i] + piece[i..]` whose halves are both in
/// the vocabulary is a candidate, ordered within the piece by (left id, right id). All merges are
/// then stably sorted by (piece score, left length in chars, right length in chars), descending.
/// `scores` must already hold 0 for control/user-defined pieces (see the module docs).
pub fn derive_merges(tokens: &[String], scores: &[f32]) -> Result<Vec<(String, String)>> {
    let vocab = Vocab::from_strings(tokens.to_vec())?;
    Ok(derive_merge_ids(&vocab, scores)?
        .into_iter()
        .map(|(l, r)| (vocab.get(l).to_string(), vocab.get(r).to_string()))
        .collect())
}

/// [`derive_merges`] as id pairs over a [`Vocab`] (first ids, as `tokenizers` maps the merge
/// strings), without a string per merge: what [`Tokenizer::from_spec`] uses, and what
/// [`derive_merges`] turns back into strings. Lengths in chars are kept as u16 (16 bytes a
/// merge), so two halves longer than 65,535 chars would sort as equal.
fn derive_merge_ids(vocab: &Vocab, scores: &[f32]) -> Result<Vec<(u32, u32)>> {
    let n = vocab.len();
    if n != scores.len() {
        return Err(Error::Tokenizer(format!(
            "{n} tokens but {} scores",
            scores.len()
        )));
    }
    // [`derive_merges`] (like transformers) orders the splits of a piece by the *last* id of
    // each half where a piece repeats.
    let last: HashMap<u32, u32> = {
        let mut m = HashMap::new();
        for &(id, first) in vocab.duplicates() {
            let e = m.entry(first).or_insert(id);
            *e = (*e).max(id);
        }
        m
    };
    let key = |id: u32| last.get(&id).copied().unwrap_or(id);
    // 16 bytes a merge (514,906 for Gemma 3): score, lengths in chars, first ids.
    struct M {
        score: f32,
        len_l: u16,
        len_r: u16,
        l: u32,
        r: u32,
    }
    let mut merges: Vec<M> = Vec::with_capacity(n * 2);
    let mut local: Vec<M> = Vec::new();
    for (id, &score) in scores.iter().enumerate() {
        let piece = vocab.get(id as u32);
        // `+ 0.0` turns -0.0 into 0.0: Python compares them equal, `total_cmp` would not.
        let score = score + 0.0;
        local.clear();
        let n_chars = piece.chars().count();
        for (k, (i, _)) in piece.char_indices().enumerate().skip(1) {
            let (a, b) = piece.split_at(i);
            if let (Some(l), Some(r)) = (vocab.id(a), vocab.id(b)) {
                local.push(M {
                    score,
                    len_l: k.min(u16::MAX as usize) as u16,
                    len_r: (n_chars - k).min(u16::MAX as usize) as u16,
                    l,
                    r,
                });
            }
        }
        local.sort_by_key(|m| (key(m.l), key(m.r)));
        merges.append(&mut local);
    }
    drop(local);
    merges.shrink_to_fit();
    merges.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(b.len_l.cmp(&a.len_l))
            .then(b.len_r.cmp(&a.len_r))
    });
    let mut out = Vec::with_capacity(merges.len());
    out.extend(merges.iter().map(|m| (m.l, m.r)));
    Ok(out)
}

/// How one id turns back into text.
enum Piece<'a> {
    /// Text with `▁` (still to be replaced by a space).
    Text(&'a str),
    /// A byte-fallback token `<0xXX>`.
    Byte(u8),
}

fn byte_token(s: &str) -> Option<u8> {
    let hex = s.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// What turns text into ids.
// One per tokenizer, behind an `Arc`: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Encoder {
    /// Built from GGUF metadata: [`compact::Bpe`] (the `tokenizers` pipeline is only built on
    /// demand, by [`Tokenizer::hf`]).
    Compact(compact::Bpe),
    /// Loaded from a `tokenizer.json`.
    Hf(tokenizers::Tokenizer),
}

/// What [`Tokenizer::hf`] needs to build the `tokenizers` equivalent of [`Encoder::Compact`].
#[derive(Debug)]
struct HfRecipe {
    /// Added tokens (first ids) and whether each is special (control or unknown).
    added: Vec<(u32, bool)>,
    unk: Option<u32>,
    split_newlines: bool,
}

#[derive(Debug)]
struct Inner {
    vocab: Vocab,
    enc: Encoder,
    recipe: Option<HfRecipe>,
    hf: OnceLock<tokenizers::Tokenizer>,
    bos_id: u32,
    eos_ids: Vec<u32>,
}

/// A Gemma tokenizer. Cheap to clone (shared), so a [`TokenStream`] can own one.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// Builds the tokenizer from GGUF metadata (`tokenizer.ggml.*`).
    ///
    /// Supports `tokenizer.ggml.model = "llama"` with `scores` (Gemma 3) and `"gemma4"` or
    /// `"llama"` + `pre = "gemma4"` with `merges` (Gemma 4). A `"llama"` file that carries merges
    /// uses them too: explicit merges are what the model was converted from.
    pub fn from_gguf(md: &Metadata) -> Result<Tokenizer> {
        let tokens = md.str_array("tokenizer.ggml.tokens")?.to_vec();
        let lines = md
            .opt_str_array("tokenizer.ggml.merges")?
            .map(|l| l.to_vec());
        Self::from_spec(Self::spec_from_gguf(md, tokens, lines)?)
    }

    /// [`Tokenizer::from_gguf`] that moves the vocabulary and merges out of `md` instead of
    /// copying them (tens of MB for Gemma's 262k pieces), and empties the other tokenizer
    /// arrays: for loaders that no longer need them, such as the browser engine, where peak
    /// memory matters.
    pub fn from_gguf_taking(md: &mut Metadata) -> Result<Tokenizer> {
        let tokens = md.take_str_array("tokenizer.ggml.tokens")?;
        let lines = match md.opt_str_array("tokenizer.ggml.merges")? {
            Some(_) => Some(md.take_str_array("tokenizer.ggml.merges")?),
            None => None,
        };
        let spec = Self::spec_from_gguf(md, tokens, lines)?;
        for key in [
            "tokenizer.ggml.scores",
            "tokenizer.ggml.token_type",
            "tokenizer.ggml.merges",
        ] {
            md.release_array(key);
        }
        Self::from_spec(spec)
    }

    /// Everything the tokenizer needs from the metadata, given its token list and merge lines.
    fn spec_from_gguf(
        md: &Metadata,
        tokens: Vec<String>,
        lines: Option<Vec<String>>,
    ) -> Result<VocabSpec> {
        let model = md.str("tokenizer.ggml.model")?;
        let pre = md.opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
        let gemma4 = model == "gemma4" || pre == "gemma4";
        if model != "llama" && model != "gemma4" {
            return Err(Error::Metadata {
                key: "tokenizer.ggml.model".into(),
                problem: format!("`{model}` is not supported (Gemma uses `llama` or `gemma4`)"),
            });
        }
        let n = tokens.len();
        let token_types: Vec<TokenType> = match md.opt_u32_array("tokenizer.ggml.token_type")? {
            Some(v) => v.into_iter().map(TokenType::from_gguf).collect(),
            None => vec![TokenType::Normal; n],
        };
        if token_types.len() != n {
            return Err(Error::Metadata {
                key: "tokenizer.ggml.token_type".into(),
                problem: format!("{} entries for {n} tokens", token_types.len()),
            });
        }
        let merges = match lines {
            Some(lines) => MergeSource::Lines(lines),
            None if gemma4 => {
                return Err(Error::Metadata {
                    key: "tokenizer.ggml.merges".into(),
                    problem: "missing (required for a gemma4 tokenizer)".into(),
                })
            }
            None => {
                let scores = md.f32_array("tokenizer.ggml.scores")?;
                if scores.len() != n {
                    return Err(Error::Metadata {
                        key: "tokenizer.ggml.scores".into(),
                        problem: format!("{} entries for {n} tokens", scores.len()),
                    });
                }
                // Undo the converter's -1000 on control/user-defined pieces (module docs).
                let scores = scores
                    .iter()
                    .zip(&token_types)
                    .map(|(&s, &t)| {
                        if matches!(t, TokenType::Control | TokenType::UserDefined) {
                            0.0
                        } else {
                            s
                        }
                    })
                    .collect();
                MergeSource::Scores(scores)
            }
        };
        let mut eos_ids = Vec::new();
        if let Some(e) = md.opt_u32("tokenizer.ggml.eos_token_id")? {
            eos_ids.push(e);
        }
        if let Some(list) = md.opt_u32_array("tokenizer.ggml.eos_token_ids")? {
            eos_ids.extend(list);
        }
        let mut spec = VocabSpec {
            tokens,
            token_types,
            merges,
            split_newlines: gemma4,
            bos_id: md.opt_u32("tokenizer.ggml.bos_token_id")?,
            eos_ids,
        };
        spec.normalize_pieces();
        Ok(spec)
    }

    /// Builds the tokenizer from a [`VocabSpec`] (what `from_gguf` does after reading metadata).
    ///
    /// The pieces move into one arena as they are read, and the merges become id pairs
    /// without ever being strings: in a browser tab the peak while building is what counts.
    pub fn from_spec(spec: VocabSpec) -> Result<Tokenizer> {
        let VocabSpec {
            tokens,
            token_types,
            merges,
            split_newlines,
            bos_id,
            eos_ids,
        } = spec;
        let n = tokens.len();
        if n == 0 || n > u32::MAX as usize || token_types.len() != n {
            return Err(Error::Tokenizer(format!(
                "bad vocabulary: {n} tokens, {} token types",
                token_types.len()
            )));
        }
        let vocab = Vocab::from_strings(tokens)?;
        let pairs = match merges {
            MergeSource::Scores(s) => derive_merge_ids(&vocab, &s)?,
            MergeSource::Lines(lines) => parse_merges(lines, &vocab)?,
            MergeSource::Merges(m) => merge_ids(&m, &vocab)?,
        };
        let merges = compact::Merges::build(&vocab, pairs)?;
        let unk = token_types
            .iter()
            .position(|&ty| ty == TokenType::Unknown)
            .map(|i| i as u32)
            .or_else(|| vocab.id("<unk>"));
        // Control and unknown pieces are "special" (as llama.cpp classifies them); it only
        // matters for `skip_special_tokens`, which this crate never uses: all are matched alike.
        // A piece repeated in the vocabulary is one added token, under its first id (as
        // `tokenizers` adds it).
        let mut added: Vec<(u32, bool)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, &ty) in token_types.iter().enumerate() {
            if ty.is_added() {
                let first = vocab.id(vocab.get(i as u32)).unwrap_or(i as u32);
                if seen.insert(first) {
                    added.push((first, ty != TokenType::UserDefined));
                }
            }
        }
        drop(token_types);
        let ids: Vec<u32> = added.iter().map(|&(id, _)| id).collect();
        let bpe = compact::Bpe::new(&vocab, merges, &ids, split_newlines)?;
        let recipe = HfRecipe {
            added,
            unk,
            split_newlines,
        };
        Self::finish(vocab, Encoder::Compact(bpe), Some(recipe), bos_id, eos_ids)
    }

    /// Resident bytes of the vocabulary and encoder tables (not counting a `tokenizers` copy
    /// built by [`Tokenizer::hf`]); for memory reports.
    pub fn memory_bytes(&self) -> usize {
        self.inner.vocab.memory_bytes()
            + match &self.inner.enc {
                Encoder::Compact(b) => b.memory_bytes(),
                Encoder::Hf(_) => 0,
            }
    }

    /// Loads a `tokenizer.json` given beside the model (the official file is the exact
    /// reference; useful when a GGUF's vocabulary is suspect).
    ///
    /// The file must be a SentencePiece-style Gemma tokenizer (`▁` spaces, `<0xXX>` byte
    /// fallback): decoding and streaming rely on that.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_json_file(path: impl AsRef<std::path::Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_bytes(&bytes)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))
    }

    /// [`Tokenizer::from_json_file`] for bytes already in memory (the browser has no files).
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Tokenizer> {
        // `tokenizers` panics (an `expect` in its decoder deserializer) on malformed JSON inside
        // the "decoder" object; reject malformed JSON first.
        check_json(bytes)?;
        let hf = tokenizers::Tokenizer::from_bytes(bytes).map_err(tok_err)?;
        let n = hf.get_vocab_size(true);
        let mut pieces = Vec::with_capacity(n);
        for id in 0..n as u32 {
            let t = hf.id_to_token(id).ok_or_else(|| {
                Error::Tokenizer(format!("ids are not contiguous: no token for id {id}"))
            })?;
            pieces.push(t);
        }
        for b in 0..=255u8 {
            if hf.token_to_id(&format!("<0x{b:02X}>")).is_none() {
                return Err(Error::Tokenizer(format!(
                    "no byte-fallback token <0x{b:02X}>; not a Gemma tokenizer.json"
                )));
            }
        }
        let bos = hf.token_to_id("<bos>");
        let vocab = Vocab::from_strings(pieces)?;
        Self::finish(vocab, Encoder::Hf(hf), None, bos, Vec::new())
    }

    fn finish(
        vocab: Vocab,
        enc: Encoder,
        recipe: Option<HfRecipe>,
        bos_id: Option<u32>,
        extra_eos: Vec<u32>,
    ) -> Result<Tokenizer> {
        let n = vocab.len() as u32;
        let bos_id = bos_id
            .or_else(|| vocab.id("<bos>"))
            .ok_or_else(|| Error::Tokenizer("no BOS token (`<bos>`)".into()))?;
        let mut eos_ids: Vec<u32> = Vec::new();
        for id in END_TOKEN_NAMES
            .iter()
            .filter_map(|name| vocab.id(name))
            .chain(extra_eos)
        {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        if let Some(&bad) = eos_ids.iter().chain([&bos_id]).find(|&&id| id >= n) {
            return Err(Error::Tokenizer(format!(
                "special token id {bad} is outside the {n}-token vocabulary"
            )));
        }
        if eos_ids.is_empty() {
            return Err(Error::Tokenizer("no end-of-sequence token".into()));
        }
        Ok(Tokenizer {
            inner: Arc::new(Inner {
                vocab,
                enc,
                recipe,
                hf: OnceLock::new(),
                bos_id,
                eos_ids,
            }),
        })
    }

    /// The `tokenizers` pipeline equivalent to the compact encoder: the same vocabulary,
    /// merges in rank order, added tokens, normalizer, pre-tokenizer and decoder that Gemma's
    /// `tokenizer.json` has.
    fn build_hf(
        vocab: &Vocab,
        merges: &compact::Merges,
        r: &HfRecipe,
    ) -> Result<tokenizers::Tokenizer> {
        let mut map: tokenizers::models::bpe::Vocab = Default::default();
        map.reserve(vocab.len());
        for id in 0..vocab.len() as u32 {
            map.entry(vocab.get(id).to_string()).or_insert(id);
        }
        let merges: Vec<(String, String)> = merges
            .ranked()
            .into_iter()
            .map(|(_, l, r)| (vocab.get(l).to_string(), vocab.get(r).to_string()))
            .collect();
        let unk = r
            .unk
            .map(|id| vocab.get(id).to_string())
            .unwrap_or_else(|| "<unk>".to_string());
        let bpe = BPE::builder()
            .vocab_and_merges(map, merges)
            .unk_token(unk)
            .fuse_unk(true)
            .byte_fallback(true)
            .cache_capacity(0)
            .build()
            .map_err(tok_err)?;
        let mut hf = tokenizers::Tokenizer::new(bpe);
        hf.with_normalizer(Some(Replace::new(" ", "\u{2581}").map_err(tok_err)?))
            .map_err(tok_err)?;
        let space_split = Split::new(
            SplitPattern::String(" ".into()),
            SplitDelimiterBehavior::MergedWithPrevious,
            false,
        )
        .map_err(tok_err)?;
        if r.split_newlines {
            let nl = Split::new(
                SplitPattern::Regex("\n+".into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(tok_err)?;
            hf.with_pre_tokenizer(Some(PreSequence::new(vec![
                PreTokenizerWrapper::Split(space_split),
                PreTokenizerWrapper::Split(nl),
            ])));
        } else {
            hf.with_pre_tokenizer(Some(space_split));
        }
        hf.with_decoder(Some(gemma_decoder()?));
        let added: Vec<AddedToken> = r
            .added
            .iter()
            .map(|&(id, special)| {
                AddedToken::from(vocab.get(id).to_string(), special).normalized(false)
            })
            .collect();
        hf.add_tokens(added).map_err(tok_err)?;
        Ok(hf)
    }

    /// Text → ids. `add_bos` prepends BOS; pass `false` for text that already starts with the
    /// literal `<bos>` (a rendered chat template — see [`crate::chat::Prompt`]).
    /// Special-token text in `text` (`<start_of_turn>`, `<bos>` …) becomes the special id, as in
    /// the reference tokenizer; never feed untrusted text that must stay inert through this.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos {
            ids.push(self.inner.bos_id);
        }
        match &self.inner.enc {
            Encoder::Compact(bpe) => bpe.encode(&self.inner.vocab, text, &mut ids),
            Encoder::Hf(hf) => {
                let enc = hf.encode_fast(text, false).map_err(tok_err)?;
                ids.extend_from_slice(enc.get_ids());
            }
        }
        Ok(ids)
    }

    /// Ids → text. Every token is rendered, control tokens included (`<end_of_turn>` comes out
    /// as that text), so `decode(encode(s)) == s` for any `s` without a literal `▁`.
    ///
    /// Byte-fallback runs are joined and read as UTF-8; a byte sequence that is not valid
    /// UTF-8 (never produced by `encode`, only by a model) becomes U+FFFD per maximal invalid
    /// sequence, like `String::from_utf8_lossy`. (HF's `ByteFallback` writes one U+FFFD per
    /// byte of the whole run instead; we differ there so that streaming can emit characters as
    /// soon as they are complete and still concatenate to exactly this result.)
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut s = self.stream();
        let mut out = String::new();
        for &id in ids {
            out.push_str(&s.push(id)?);
        }
        out.push_str(&s.finish());
        Ok(out)
    }

    /// An incremental decoder for streaming generation.
    pub fn stream(&self) -> TokenStream {
        TokenStream {
            tok: self.clone(),
            pending: Vec::new(),
        }
    }

    pub fn bos_id(&self) -> u32 {
        self.inner.bos_id
    }

    /// Every id that ends generation (see `END_TOKEN_NAMES`, plus the GGUF's own EOS ids).
    pub fn eos_ids(&self) -> &[u32] {
        &self.inner.eos_ids
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.inner.eos_ids.contains(&id)
    }

    /// Number of ids (the embedding table has at least this many rows).
    pub fn vocab_size(&self) -> usize {
        self.inner.vocab.len()
    }

    /// Refuses a tokenizer with ids the model has no embedding row for: those ids would read
    /// past the table. (A larger table is fine: converters pad it.)
    pub fn check_model_vocab(&self, model_rows: u32) -> Result<()> {
        let n = self.vocab_size();
        if n > model_rows as usize {
            return Err(Error::Tokenizer(format!(
                "the vocabulary has {n} tokens but the model's embedding table (token_embd.weight) \
                 has only {model_rows} rows: the tokenizer does not belong to this model"
            )));
        }
        Ok(())
    }

    /// The bytes each id stands for in generated text, by id (what a grammar engine matches
    /// output against): byte-fallback tokens are their byte, `▁` is a space, and special
    /// tokens (control tokens such as `<end_of_turn>`) are `0xFF` followed by their name, so
    /// no text grammar can produce them (llguidance's convention).
    pub fn token_bytes(&self) -> Vec<Vec<u8>> {
        let inner = &*self.inner;
        let special: std::collections::HashSet<u32> = match (&inner.enc, &inner.recipe) {
            (Encoder::Hf(hf), _) => hf
                .get_added_tokens_decoder()
                .iter()
                .filter(|(_, t)| t.special)
                .map(|(&id, _)| id)
                .collect(),
            (_, Some(r)) => r.added.iter().filter(|a| a.1).map(|a| a.0).collect(),
            (_, None) => Default::default(),
        };
        (0..inner.vocab.len() as u32)
            .map(|id| {
                let piece = inner.vocab.get(id);
                if special.contains(&id) {
                    let mut b = vec![0xff];
                    b.extend_from_slice(piece.as_bytes());
                    return b;
                }
                match piece_of(piece) {
                    Piece::Byte(b) => vec![b],
                    Piece::Text(t) => t.replace(SPACE_MARKER, " ").into_bytes(),
                }
            })
            .collect()
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.vocab.id(token)
    }

    /// The raw piece for an id (`▁` kept), e.g. for debugging output.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.vocab.try_get(id).map(str::to_string)
    }

    /// The `tokenizers` object, for anything not wrapped here and for checking the compact
    /// encoder against it. For a tokenizer built from GGUF metadata it is built on the first
    /// call (about 60 MB more for Gemma's vocabulary; the browser engine never calls this).
    ///
    /// # Panics
    /// If `tokenizers` refuses tables that the compact encoder accepted (never seen).
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        let inner = &*self.inner;
        match (&inner.enc, &inner.recipe) {
            (Encoder::Hf(hf), _) => hf,
            (Encoder::Compact(bpe), Some(r)) => inner.hf.get_or_init(|| {
                Self::build_hf(&inner.vocab, &bpe.merges, r)
                    .expect("tokenizers accepts the compact tokenizer's tables")
            }),
            (Encoder::Compact(_), None) => unreachable!("a compact encoder has a recipe"),
        }
    }
}

/// `Ok` if `bytes` is one well-formed JSON value as serde_json reads it (UTF-8, no control
/// characters or lone UTF-16 surrogates in strings, finite numbers, fewer than 128 levels of
/// nesting). Some tokenizer.json errors are panics in `tokenizers` rather than `Err` (see
/// [`Tokenizer::from_json_bytes`]); those found by fuzzing need malformed JSON, which this
/// rejects beforehand. It parses into a `Value` (not `IgnoredAny`, which skips escapes
/// unchecked).
fn check_json(bytes: &[u8]) -> Result<()> {
    let doc = serde_json::from_slice::<serde_json::Value>(bytes)
        .map_err(|e| Error::Tokenizer(format!("tokenizer.json is not valid JSON: {e}")))?;
    check_json_merges(&doc)
}

/// Refuses a BPE merge whose parts do not join into a vocabulary piece: `tokenizers` copies the
/// joined pair into a buffer as long as the longest piece before looking it up, and panics
/// when it is longer (models/bpe/model.rs, 0.23.2; found by fuzz/tokenizer_json). The GGUF
/// path checks its merges the same way in [`Tokenizer::from_spec`].
fn check_json_merges(doc: &serde_json::Value) -> Result<()> {
    use serde_json::Value;
    let model = doc.get("model");
    let vocab = model
        .and_then(|m| m.get("vocab"))
        .and_then(Value::as_object);
    let merges = model
        .and_then(|m| m.get("merges"))
        .and_then(Value::as_array);
    let (Some(vocab), Some(merges)) = (vocab, merges) else {
        return Ok(()); // not a BPE model, or one `tokenizers` rejects by itself
    };
    // `tokenizers` joins `a` with `b` minus the prefix.
    let prefix = model
        .and_then(|m| m.get("continuing_subword_prefix"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut joined = String::new();
    for (i, m) in merges.iter().enumerate() {
        // `["a", "b"]`, or the legacy `"a b"` (`#version` lines are skipped, like there).
        let (a, b) = match m {
            Value::Array(p) if p.len() == 2 => (p[0].as_str(), p[1].as_str()),
            Value::String(s) if !s.starts_with("#version") => match s.split_once(' ') {
                Some((a, b)) => (Some(a), Some(b)),
                None => continue,
            },
            _ => continue,
        };
        let (Some(a), Some(b)) = (a, b) else { continue };
        joined.clear();
        joined.push_str(a);
        // A `b` shorter than the prefix underflows there.
        let rest = b.get(prefix.len()..);
        joined.push_str(rest.unwrap_or_default());
        if rest.is_none() || !vocab.contains_key(&joined) {
            return Err(Error::Tokenizer(format!(
                "tokenizer.json: merge {i} ({a:?} + {b:?}) does not make a vocabulary piece"
            )));
        }
    }
    Ok(())
}

fn piece_of(t: &str) -> Piece<'_> {
    match byte_token(t) {
        Some(b) => Piece::Byte(b),
        None => Piece::Text(t),
    }
}

/// The decoder of Gemma's tokenizer.json: `Replace("▁", " ")`, `ByteFallback`, `Fuse`.
fn gemma_decoder() -> Result<DecoderWrapper> {
    let replace = Replace::new("\u{2581}", " ").map_err(tok_err)?;
    Ok(DecoderSequence::new(vec![
        DecoderWrapper::Replace(replace),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ])
    .into())
}

/// Parses `tokenizer.ggml.merges` lines (`"left right"`) into id pairs, freeing each line as it
/// goes. Pieces use `▁` for spaces, so there is normally exactly one space; if there are more (a
/// piece with a real space), the split point is the one where both halves and their
/// concatenation are vocabulary pieces.
fn parse_merges(lines: Vec<String>, vocab: &Vocab) -> Result<Vec<(u32, u32)>> {
    let conv = |s: &str| s.replace(' ', "\u{2581}");
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.into_iter().enumerate() {
        let spaces: Vec<usize> = line.match_indices(' ').map(|(p, _)| p).collect();
        let pair = match spaces.as_slice() {
            [p] => Some((line[..*p].to_string(), line[*p + 1..].to_string())),
            _ => spaces.iter().find_map(|&p| {
                let (a, b) = (conv(&line[..p]), conv(&line[p + 1..]));
                let ok = vocab.id(&a).is_some()
                    && vocab.id(&b).is_some()
                    && vocab.id(&format!("{a}{b}")).is_some();
                ok.then_some((a, b))
            }),
        };
        let (a, b) = pair.ok_or_else(|| Error::Metadata {
            key: "tokenizer.ggml.merges".into(),
            problem: format!("entry {i} ({line:?}) is not `left right`"),
        })?;
        out.push(pair_ids(i, &conv(&a), &conv(&b), vocab)?);
    }
    Ok(out)
}

fn pair_ids(i: usize, a: &str, b: &str, vocab: &Vocab) -> Result<(u32, u32)> {
    match (vocab.id(a), vocab.id(b)) {
        (Some(l), Some(r)) => Ok((l, r)),
        _ => Err(Error::Metadata {
            key: "tokenizer.ggml.merges".into(),
            problem: format!("entry {i} ({a:?} + {b:?}) has a part that is not in the vocabulary"),
        }),
    }
}

/// Explicit merges (as strings) → id pairs.
fn merge_ids(merges: &[(String, String)], vocab: &Vocab) -> Result<Vec<(u32, u32)>> {
    merges
        .iter()
        .enumerate()
        .map(|(i, (a, b))| pair_ids(i, a, b, vocab))
        .collect()
}

/// Incremental, UTF-8-safe detokenizer for streaming output.
///
/// Feed ids one at a time; each [`TokenStream::push`] returns only text that is complete:
/// a character split over several byte-fallback tokens (an emoji as `<0xF0><0x9F><0x98><0x80>`)
/// is held back until its last byte arrives. `▁` becomes a space immediately (Gemma has no
/// dummy prefix to strip, so no look-ahead is needed). The concatenation of every `push` result
/// and [`TokenStream::finish`] equals [`Tokenizer::decode`] of all the ids.
#[derive(Debug, Clone)]
pub struct TokenStream {
    tok: Tokenizer,
    /// Bytes of an incomplete UTF-8 character from byte-fallback tokens.
    pending: Vec<u8>,
}

impl TokenStream {
    /// Adds one id; returns the newly complete text (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        let inner = Arc::clone(&self.tok.inner);
        let piece = inner.vocab.try_get(id).ok_or_else(|| {
            Error::Tokenizer(format!(
                "token id {id} is outside the {}-token vocabulary",
                inner.vocab.len()
            ))
        })?;
        let mut out = String::new();
        match piece_of(piece) {
            Piece::Byte(b) => {
                self.pending.push(b);
                self.drain_valid(&mut out);
            }
            Piece::Text(t) => {
                self.flush(&mut out);
                for (i, part) in t.split(SPACE_MARKER).enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    out.push_str(part);
                }
            }
        }
        Ok(out)
    }

    /// Ends the stream: bytes of a character that never completed come out as U+FFFD.
    pub fn finish(&mut self) -> String {
        let mut out = String::new();
        self.flush(&mut out);
        out
    }

    /// Moves every complete character (and U+FFFD for every invalid sequence) from `pending`
    /// to `out`, keeping an incomplete trailing character.
    fn drain_valid(&mut self, out: &mut String) {
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // Safe: from_utf8 just validated this prefix.
                    out.push_str(
                        std::str::from_utf8(&self.pending[start..start + valid]).unwrap_or(""),
                    );
                    match e.error_len() {
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            start += valid + bad;
                        }
                        None => {
                            start += valid; // incomplete: wait for more bytes
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
    }

    fn flush(&mut self, out: &mut String) {
        self.drain_valid(out);
        if !self.pending.is_empty() {
            out.push('\u{FFFD}'); // a truncated character, as from_utf8_lossy reports it
            self.pending.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{Array, Value};

    fn strings(v: &[&str]) -> Value {
        Value::Array(Array::String(v.iter().map(|s| s.to_string()).collect()))
    }

    /// A tiny Gemma 4 style vocabulary: specials, byte tokens, and a few merged words.
    fn gemma4_metadata(model: &str, pre: &str) -> Metadata {
        let mut toks: Vec<String> = [
            "<pad>",
            "<eos>",
            "<bos>",
            "<unk>",
            "<|turn>",
            "<turn|>",
            "<|tool_response>",
            "\n",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut types = vec![3, 3, 3, 2, 3, 3, 4, 1];
        for b in 0..=255u8 {
            toks.push(format!("<0x{b:02X}>"));
            types.push(6);
        }
        for t in [
            "▁", "h", "e", "l", "o", "w", "r", "d", "he", "ll", "hell", "hello", "▁hello", "▁w",
            "or", "▁wor", "ld", "▁world", "\n\n",
        ] {
            toks.push(t.to_string());
            types.push(1);
        }
        let merges = [
            "h e",
            "l l",
            "he ll",
            "hell o",
            "▁ hello",
            "o r",
            "▁ w",
            "▁w or",
            "l d",
            "▁wor ld",
            "\n \n",
        ];
        let mut md = Metadata::default();
        let mut put = |k: &str, v: Value| md.insert(k.to_string(), v).unwrap();
        put("tokenizer.ggml.model", Value::String(model.into()));
        put("tokenizer.ggml.pre", Value::String(pre.into()));
        let t: Vec<&str> = toks.iter().map(|s| s.as_str()).collect();
        put("tokenizer.ggml.tokens", strings(&t));
        put("tokenizer.ggml.token_type", Value::Array(Array::I32(types)));
        put("tokenizer.ggml.merges", strings(&merges));
        put("tokenizer.ggml.bos_token_id", Value::U32(2));
        put("tokenizer.ggml.eos_token_id", Value::U32(5));
        md
    }

    #[test]
    fn gemma4_from_synthetic_metadata() {
        for (model, pre) in [("gemma4", "gemma4"), ("llama", "gemma4")] {
            let t = Tokenizer::from_gguf(&gemma4_metadata(model, pre)).unwrap();
            let id = |s: &str| t.token_to_id(s).unwrap();
            assert_eq!(t.bos_id(), 2);
            // <eos>, <turn|>, <|tool_response> are all end tokens, found by name.
            let mut eos = t.eos_ids().to_vec();
            eos.sort();
            assert_eq!(eos, vec![1, 5, 6]);
            assert_eq!(
                t.encode("hello world", true).unwrap(),
                vec![2, id("hello"), id("▁world")]
            );
            // Control tokens are atomic; newline runs are isolated before BPE.
            assert_eq!(
                t.encode("<|turn>hello\n\nhello<turn|>", false).unwrap(),
                vec![4, id("hello"), id("\n\n"), id("hello"), 5]
            );
            // Unknown characters fall back to bytes, and decode restores everything.
            let s = "hello é<|tool_response>\n";
            let ids = t.encode(s, false).unwrap();
            assert!(ids.contains(&id("<0xC3>")), "{ids:?}");
            assert_eq!(t.decode(&ids).unwrap(), s);
        }
    }

    #[test]
    fn gemma4_requires_merges_and_rejects_bad_lines() {
        let mut md = gemma4_metadata("gemma4", "gemma4");
        md = {
            let mut m = Metadata::default();
            for (k, v) in md.iter() {
                let v = if k == "tokenizer.ggml.merges" {
                    strings(&["h e", "nospace"])
                } else {
                    v.clone()
                };
                m.insert(k.to_string(), v).unwrap();
            }
            m
        };
        let e = Tokenizer::from_gguf(&md).unwrap_err().to_string();
        assert!(e.contains("nospace"), "{e}");
        let mut m = Metadata::default();
        m.insert("tokenizer.ggml.model".into(), Value::String("bert".into()))
            .unwrap();
        assert!(Tokenizer::from_gguf(&m).is_err());
    }

    #[test]
    fn merges_must_make_vocabulary_pieces() {
        // The joined pair is longer than every piece: `tokenizers` would panic on it.
        let mut m = Metadata::default();
        for (k, v) in gemma4_metadata("gemma4", "gemma4").iter() {
            let v = if k == "tokenizer.ggml.merges" {
                strings(&["h e", "<|tool_response> <|tool_response>"])
            } else {
                v.clone()
            };
            m.insert(k.to_string(), v).unwrap();
        }
        let e = Tokenizer::from_gguf(&m).unwrap_err().to_string();
        assert!(
            e.contains("entry 1") && e.contains("vocabulary piece"),
            "{e}"
        );
    }

    #[test]
    fn derive_merges_orders_like_transformers() {
        // Score first (desc), then left length, then right length (both desc); equal keys keep
        // piece order, and within a piece (left id, right id) order.
        let toks: Vec<String> = ["a", "b", "c", "ab", "bc", "abc", "▁", "▁▁", "▁▁▁"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -3.0, 0.0, 0.0, -0.0];
        let m = derive_merges(&toks, &scores).unwrap();
        let m: Vec<String> = m.iter().map(|(a, b)| format!("{a}+{b}")).collect();
        assert_eq!(m, ["▁▁+▁", "▁+▁▁", "▁+▁", "a+b", "b+c", "ab+c", "a+bc"]);
    }

    #[test]
    fn byte_token_names() {
        assert_eq!(byte_token("<0x0A>"), Some(10));
        assert_eq!(byte_token("<0xff>"), Some(255));
        assert_eq!(byte_token("<0x1>"), None);
        assert_eq!(byte_token("<0xZZ>"), None);
    }

    #[test]
    fn malformed_tokenizer_json_is_an_error_not_a_panic() {
        for ok in [
            "{}",
            " [ ] ",
            "0",
            "-0.5e+10",
            "[1, -2, 3.25E-3, true, false, null, \"a\\\"\\u00e9\\ud83d\\ude00\\n\", {\"k\": [{}]}]",
            "{\"a\":{\"b\":\"\u{2581}\"}}",
        ] {
            assert!(check_json(ok.as_bytes()).is_ok(), "{ok}");
        }
        let real = include_bytes!("../tests/data/gemma4/tokenizer.json");
        assert!(check_json(real).is_ok());
        let deep_ok = format!("{}{}", "[".repeat(127), "]".repeat(127));
        assert!(check_json(deep_ok.as_bytes()).is_ok());
        let too_deep = format!("{}{}", "[".repeat(128), "]".repeat(128));
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\" 1}",
            "{1: 2}",
            "01",
            "1.",
            "1e400",
            "tru",
            "\"\\ud800\"",
            "\"\\udc00\"",
            "\"\\u+abc\"",
            "\"\\x\"",
            "\"a\tb\"",
            "{} {}",
            too_deep.as_str(),
        ] {
            assert!(check_json(bad.as_bytes()).is_err(), "{bad:?}");
        }
        // Invalid UTF-8 inside the decoder made `tokenizers` panic (found by fuzz/tokenizer_json).
        let e =
            Tokenizer::from_json_bytes(b"{\"decoder\":{\"type\":\"Replace\",\"content\xc4\":1}}")
                .unwrap_err()
                .to_string();
        assert!(e.contains("not valid JSON"), "{e}");
        // A merge longer than every piece made `tokenizers` panic too (fuzz/tokenizer_json).
        for merges in [r#"[["aaa", "bbb"]]"#, r#"["aaa bbb"]"#] {
            let json = format!(
                r#"{{"model": {{"type": "BPE", "vocab": {{"aaa": 0, "bbb": 1}}, "merges": {merges}}}}}"#
            );
            let e = Tokenizer::from_json_bytes(json.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(e.contains("merge 0"), "{e}");
        }
    }
}
