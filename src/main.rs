//! `gemma-wgpu`: run Gemma models from GGUF files on the GPU.
//!
//! Subcommands: `generate` (stream a continuation), `chat` (interactive, KV cache reused across
//! turns), `score` (per-position top-k logits, for checking numerics), `info` (model and GPU
//! memory plan), `serve` (an OpenAI-compatible HTTP server). Errors print one line and exit
//! non-zero.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use gemma_wgpu::chat::{ChatTemplate, Conversation, Message};
use gemma_wgpu::constrain::{ConstraintFactory, OutputConstraint, OutputFormat};
use gemma_wgpu::generate::{Finish, Generator};
use gemma_wgpu::gguf::{self, Gguf, MmapSource};
use gemma_wgpu::gpu::{GpuContext, GpuOptions};
use gemma_wgpu::model::{Drafter, LoadOptions, Model};
use gemma_wgpu::sampler::SamplingParams;
use gemma_wgpu::tokenizer::Tokenizer;

#[derive(Parser)]
#[command(
    name = "gemma-wgpu",
    version,
    about = "Gemma 3 / Gemma 4 on the GPU through wgpu"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a continuation of a prompt, streaming it to stdout.
    Generate(GenerateArgs),
    /// Interactive multi-turn chat (reads lines from stdin).
    Chat(ChatArgs),
    /// An OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, /v1/models).
    Serve(ServeArgs),
    /// One prefill over the given token ids; prints the top-k logits of every position as JSON.
    Score(ScoreArgs),
    /// Architecture, sizes, tensor types and the GPU memory plan.
    Info(InfoArgs),
    /// Speed: prefill, decode, time to first token, bytes per token and per-kernel GPU times
    /// on a model (or a synthetic one), or kernel microbenchmarks with `--kernels`.
    Bench(BenchArgs),
    /// Write a full-size synthetic model: the real tensor names, shapes, types and metadata
    /// (and a working tokenizer) with seeded random weights, for benchmarks and memory tests.
    Synth(SynthArgs),
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// GGUF model file (default: Gemma 3 270M in the cache directory).
    #[arg(long, short)]
    model: Option<PathBuf>,
    /// A tokenizer.json to use instead of the one in the GGUF.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Graphics backend.
    #[arg(long, value_enum)]
    backend: Option<Backend>,
    /// Use the first adapter whose name contains this text.
    #[arg(long)]
    adapter: Option<String>,
    /// Tokens the KV cache holds (default: the model's context, at most 8192).
    #[arg(long)]
    context: Option<u32>,
    /// Prompt tokens per prefill step (default 128, `bench` 512: more fill a big GPU better,
    /// but activations grow with it; 128 keeps Gemma 4 E2B within a phone's budget).
    #[arg(long)]
    prefill_chunk: Option<u32>,
    /// Run under WebGPU's default limits (what a browser gives).
    #[arg(long)]
    webgpu_limits: bool,
    /// Do not use shader-f16 even if the GPU has it.
    #[arg(long)]
    no_f16: bool,
    /// Do not use subgroup operations even if the GPU has them.
    #[arg(long)]
    no_subgroups: bool,
    /// Allow GPU buffers above 256 MiB when the adapter supports them (default: split).
    #[arg(long)]
    large_buffers: bool,
    /// Keep the KV cache in f32 instead of f16 (twice the memory, no rounding of K and V).
    #[arg(long)]
    kv_f32: bool,
    /// Least keys per attention split (default: the kernels' own, 32 for decode steps and 256
    /// for prompts; fewer keys per split spread a layer's K/V over more workgroups); for tuning.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    attention_split_keys: Option<u32>,
    /// Do not read or write the compiled-pipeline cache in the cache directory (Vulkan).
    #[arg(long)]
    no_pipeline_cache: bool,
    /// Compile shaders with wgpu's loop bounding, as wgpu does by default (slower: the driver
    /// stops unrolling loops; for comparison).
    #[arg(long)]
    loop_bounding: bool,
    /// Bind kernel parameters as storage buffers, as on CPU adapters, instead of uniform
    /// buffers (for comparison).
    #[arg(long)]
    storage_params: bool,
}

/// Prompt tokens per prefill step unless `--prefill-chunk` says otherwise.
const DEFAULT_PREFILL_CHUNK: u32 = 128;
/// The same for `bench`.
const BENCH_PREFILL_CHUNK: u32 = 512;

#[derive(Clone, Copy, ValueEnum)]
enum Backend {
    Vulkan,
    Metal,
    Dx12,
    Gl,
}

#[derive(Args, Clone)]
struct SamplingArgs {
    /// 0 = greedy.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Most likely tokens kept; 0 = no limit. Above 64 (or 0) the draw runs on the GPU over
    /// the whole vocabulary.
    #[arg(long, default_value_t = 64)]
    top_k: u32,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// 1 = off.
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Recent tokens the repetition penalty looks at.
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl SamplingArgs {
    fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed: self.seed,
        }
    }
}

/// Speculative decoding with a Gemma 4 MTP assistant.
#[derive(Args, Clone)]
struct DraftArgs {
    /// A Gemma 4 MTP assistant GGUF (`gemma4-assistant`) for the model: it drafts tokens that
    /// the model then verifies several at a time. The output is the same as without it
    /// (greedy: identical; sampling: the same distribution); only the speed changes.
    #[arg(long)]
    draft: Option<PathBuf>,
    /// Tokens drafted per round.
    #[arg(long, default_value_t = gemma_wgpu::model::drafter::DEFAULT_DRAFT_TOKENS,
          value_parser = clap::value_parser!(u32).range(1..=gemma_wgpu::model::MAX_DRAFT_TOKENS as i64),
          requires = "draft")]
    draft_tokens: u32,
}

/// Constrained decoding: what the output must match (at most one).
#[derive(Args, Clone)]
#[group(multiple = false)]
struct FormatArgs {
    /// A JSON Schema file: the output is a JSON value valid under it.
    #[arg(long)]
    json_schema: Option<PathBuf>,
    /// A Lark grammar file (llguidance's dialect): the output is in its language.
    #[arg(long)]
    grammar: Option<PathBuf>,
    /// A regular expression the whole output matches.
    #[arg(long)]
    regex: Option<String>,
}

impl FormatArgs {
    fn format(&self) -> Result<Option<OutputFormat>> {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        Ok(if let Some(p) = &self.json_schema {
            let schema = serde_json::from_str(&read(p)?)
                .with_context(|| format!("{} is not JSON", p.display()))?;
            Some(OutputFormat::JsonSchema { schema })
        } else if let Some(p) = &self.grammar {
            Some(OutputFormat::Grammar { grammar: read(p)? })
        } else {
            self.regex
                .clone()
                .map(|pattern| OutputFormat::Regex { pattern })
        })
    }

    /// A fresh constraint for one generation (`None` without a format).
    fn constraint(
        &self,
        factory: &mut Option<ConstraintFactory>,
        tok: &Tokenizer,
        model: &gemma_wgpu::model::Model,
    ) -> Result<Option<OutputConstraint>> {
        let Some(format) = self.format()? else {
            return Ok(None);
        };
        if factory.is_none() {
            *factory = Some(ConstraintFactory::new(tok, model.cfg.vocab)?);
        }
        Ok(Some(factory.as_ref().unwrap().build(&format)?))
    }
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    draft: DraftArgs,
    #[command(flatten)]
    format: FormatArgs,
    /// The prompt.
    #[arg(long, short)]
    prompt: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Wrap the prompt in the model's chat template (as one user turn).
    #[arg(long)]
    chat: bool,
    /// Print one JSON object at the end instead of streaming text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    draft: DraftArgs,
    #[command(flatten)]
    format: FormatArgs,
    /// Most tokens per reply.
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    /// A system prompt.
    #[arg(long)]
    system: Option<String>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port; the address is printed when ready).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on /v1 requests.
    #[arg(long)]
    api_key: Option<String>,
    /// Largest request body accepted (bytes); larger ones get 413.
    #[arg(long, default_value_t = 1 << 20)]
    max_request_bytes: usize,
    /// Most tokens one request may generate (the default for requests that set no max_tokens).
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..))]
    max_tokens_limit: u32,
    /// Most requests waiting behind the running one; more are refused with 503.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    queue_limit: u64,
}

#[derive(Args)]
struct ScoreArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Comma-separated token ids (include the BOS id 2 yourself).
    #[arg(long, value_delimiter = ',', required_unless_present = "prompt")]
    tokens: Vec<u32>,
    /// Or a text, tokenized with BOS.
    #[arg(long, conflicts_with = "tokens")]
    prompt: Option<String>,
    #[arg(long, default_value_t = 10)]
    top_k: u32,
}

#[derive(Args)]
struct InfoArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A Gemma 4 MTP assistant (drafter) GGUF: check that it fits the model and describe it.
    #[arg(long)]
    draft: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// The quantization mix of a synthetic model (`synth`, `bench --synthetic`).
#[derive(Args, Clone)]
struct SynthQuantArg {
    /// Quantization mix (q4_k_m follows llama.cpp's choices per tensor).
    #[arg(
        long,
        default_value = "q4_k_m",
        value_parser = clap::builder::PossibleValuesParser::new(gemma_wgpu::synth::SynthQuant::NAMES)
    )]
    quant: String,
}

#[derive(Args)]
struct SynthArgs {
    /// Model to imitate.
    #[arg(
        long,
        value_parser = clap::builder::PossibleValuesParser::new(gemma_wgpu::synth::SynthArch::NAMES)
    )]
    arch: String,
    #[command(flatten)]
    quant: SynthQuantArg,
    /// Seed of the random weights (equal seeds give identical files).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output GGUF file.
    #[arg(long, short)]
    out: PathBuf,
    /// Context length written into the metadata (default: the model's).
    #[arg(long)]
    context: Option<u32>,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Benchmark a full-size synthetic model with the real shapes (written to the cache
    /// directory on first use) instead of --model.
    #[arg(
        long,
        conflicts_with = "model",
        value_parser = clap::builder::PossibleValuesParser::new(gemma_wgpu::synth::SynthArch::NAMES)
    )]
    synthetic: Option<String>,
    #[command(flatten)]
    quant: SynthQuantArg,
    /// Prompt tokens of the prefill (at least 1).
    #[arg(long, default_value_t = 512)]
    prompt_len: u32,
    /// Tokens decoded per run (at least 1).
    #[arg(long, default_value_t = 128)]
    gen: u32,
    /// Timed runs (medians are reported), after one warm-up run (at least 1).
    #[arg(long, default_value_t = 3)]
    repeat: u32,
    /// Decode steps profiled with GPU timestamps for the per-kernel breakdown (0: none). The KV
    /// cache holds the prompt plus the larger of this and --gen, unless --context is larger.
    #[arg(long, default_value_t = 32)]
    profile_tokens: u32,
    /// Skip measuring the device's copy bandwidth.
    #[arg(long)]
    no_copy_bandwidth: bool,
    /// Leave these ops out of every step, by their name in the per-op breakdown (its first
    /// word, e.g. `attention,ffn_down,ffn_gate_up`): the change in decode time is what they
    /// cost in the step's chain of dispatches (a name no op has is refused). An ablation for
    /// profiling: the model's output is meaningless.
    #[arg(long, value_delimiter = ',')]
    skip_ops: Vec<String>,
    /// Record these ops twice in every step, the second run right after the first (same
    /// names as --skip-ops): what an op costs when it follows itself, on weights and data it
    /// has just read, against what it costs in the chain. An ablation: the output is
    /// meaningless.
    #[arg(long, value_delimiter = ',')]
    double_ops: Vec<String>,
    /// Kernel microbenchmarks (mat-vec GB/s, mat-mat TFLOP/s at model shapes, decode attention
    /// µs) instead of a model.
    #[arg(long)]
    kernels: bool,
    /// Timed dispatch rounds per kernel shape (--kernels).
    #[arg(long, default_value_t = 50)]
    iterations: u32,
    /// Only shapes whose name contains one of these (--kernels; e.g. `gemma4-e2b,lm_head`, or
    /// `attention` for the attention cases only).
    #[arg(long, value_delimiter = ',')]
    shapes: Vec<String>,
    /// Only these weight types (--kernels; e.g. `q4_0,q4_k`; default: every type the models use).
    #[arg(long, value_delimiter = ',')]
    types: Vec<String>,
    /// A Gemma 4 MTP assistant GGUF: also measure speculative decoding (draft and verify costs
    /// for 1..=--draft-tokens drafts, projected speeds, a drafted greedy run).
    #[arg(long)]
    draft: Option<PathBuf>,
    /// Largest draft length measured with --draft.
    #[arg(long, default_value_t = 8, requires = "draft",
          value_parser = clap::value_parser!(u32).range(1..=gemma_wgpu::model::MAX_DRAFT_TOKENS as i64))]
    draft_tokens: u32,
    /// Print one JSON object (BENCHMARKS.md documents its fields).
    #[arg(long)]
    json: bool,
}

fn main() {
    env_logger_init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => generate(a),
        Command::Chat(a) => chat(a),
        Command::Serve(a) => serve(a),
        Command::Score(a) => score(a),
        Command::Info(a) => info(a),
        Command::Synth(a) => synth(a),
        Command::Bench(a) => bench(a),
    };
    if let Err(e) = result {
        let mut msg = format!("{e}");
        for cause in e.chain().skip(1) {
            // Some errors already print their source (an I/O error after its path).
            let cause = cause.to_string();
            if !msg.ends_with(&cause) {
                msg.push_str(&format!(": {cause}"));
            }
        }
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}

fn env_logger_init() {
    // Mesa prints a harmless warning without it.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
}

/// A model, its tokenizer and the header, ready to run.
struct Loaded {
    gguf: Gguf,
    model: Model,
    tok: Tokenizer,
    path: PathBuf,
}

fn model_path(args: &ModelArgs) -> Result<PathBuf> {
    match &args.model {
        Some(p) => Ok(p.clone()),
        None => {
            let p = gguf::default_model_path();
            if !p.exists() {
                bail!(
                    "no --model given and the default model is not at {}; fetch it with: pkg-scripts/fetch-model.sh",
                    p.display()
                );
            }
            Ok(p)
        }
    }
}

fn load(args: &ModelArgs, quiet: bool) -> Result<Loaded> {
    load_with(args, quiet, gpu_options(args))
}

fn gpu_options(args: &ModelArgs) -> GpuOptions {
    GpuOptions {
        backends: args.backend.map(|b| match b {
            Backend::Vulkan => wgpu::Backends::VULKAN,
            Backend::Metal => wgpu::Backends::METAL,
            Backend::Dx12 => wgpu::Backends::DX12,
            Backend::Gl => wgpu::Backends::GL,
        }),
        adapter_name: args.adapter.clone(),
        disable_f16: args.no_f16,
        disable_subgroups: args.no_subgroups,
        webgpu_default_limits: args.webgpu_limits,
        allow_large_buffers: args.large_buffers,
        pipeline_cache_dir: (!args.no_pipeline_cache).then(gguf::cache_dir),
        shader_loop_bounding: args.loop_bounding,
        uniform_params: args.storage_params.then_some(false),
        ..Default::default()
    }
}

fn load_with(args: &ModelArgs, quiet: bool, opts: GpuOptions) -> Result<Loaded> {
    let path = model_path(args)?;
    let (gguf, mut src): (Gguf, MmapSource) = gguf::open(&path)?;
    // Everything that can be wrong with the file is found before the GPU is touched.
    let cfg = gemma_wgpu::model::check(&gguf).with_context(|| format!("{}", path.display()))?;
    let tok = match &args.tokenizer {
        Some(t) => Tokenizer::from_json_file(t)?,
        None => Tokenizer::from_gguf(&gguf.metadata)
            .with_context(|| format!("building the tokenizer from {}", path.display()))?,
    };
    tok.check_model_vocab(cfg.vocab)
        .with_context(|| format!("{}", path.display()))?;
    let ctx = Arc::new(pollster::block_on(GpuContext::new(&opts))?);
    if !quiet {
        eprintln!("adapter: {}", ctx.describe());
    }
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(gguf.tensor_data_bytes()).with_style(
            indicatif::ProgressStyle::with_template(
                "loading {msg} [{bar:30}] {bytes}/{total_bytes} ({eta})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        )
    };
    bar.set_message(
        path.file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    // Gemma 4's per-layer-embedding table is read a row per token from a second map of the file.
    let rows: Option<Arc<dyn gemma_wgpu::gguf::RowSource>> = if cfg.ple_dim > 0 {
        Some(Arc::new(MmapSource::open(&path)?))
    } else {
        None
    };
    let load_opts = LoadOptions {
        context: args.context,
        prefill_chunk: args.prefill_chunk.unwrap_or(DEFAULT_PREFILL_CHUNK),
        rows,
        kv_f32: args.kv_f32,
        attention_split_keys: args.attention_split_keys.unwrap_or(0),
        ..Default::default()
    };
    let model = pollster::block_on(Model::load(
        ctx,
        &gguf,
        &mut src,
        &load_opts,
        |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    ))
    .with_context(|| format!("loading {}", path.display()))?;
    bar.finish_and_clear();
    if let Err(e) = model.gpu().save_pipeline_cache() {
        log::warn!("pipeline cache not saved: {e}");
    }
    Ok(Loaded {
        gguf,
        model,
        tok,
        path,
    })
}

/// Loads the assistant `a` names for `model`, or `None` without `--draft`.
fn load_drafter(a: &DraftArgs, model: &Model) -> Result<Option<Drafter>> {
    let Some(path) = &a.draft else {
        return Ok(None);
    };
    let (gguf, mut src): (Gguf, MmapSource) = gguf::open(path)?;
    let drafter = pollster::block_on(Drafter::load(model, &gguf, &mut src, |_, _| {}))
        .with_context(|| format!("loading the assistant {}", path.display()))?;
    eprintln!(
        "assistant: {} ({} layers, hidden {}), {} drafts per round",
        path.display(),
        drafter.cfg.n_layers,
        drafter.cfg.hidden,
        a.draft_tokens
    );
    Ok(Some(drafter))
}

/// The drafting figures of a generation, for its summary line.
fn draft_summary(stats: &gemma_wgpu::generate::Stats) -> String {
    if stats.draft_rounds == 0 {
        return String::new();
    }
    format!(
        ", drafts: {} of {} accepted ({:.0}%), {:.2} tokens per round",
        stats.accepted_drafts,
        stats.drafted_tokens,
        100.0 * stats.acceptance_rate(),
        stats.tokens_per_round()
    )
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn generate(a: GenerateArgs) -> Result<()> {
    let mut l = load(&a.model, false)?;
    let mut drafter = load_drafter(&a.draft, &l.model)?;
    let prompt_ids = if a.chat {
        let template = ChatTemplate::from_gguf(&l.gguf.metadata, &l.tok)?;
        template
            .render(&[Message::user(a.prompt.clone())], true)?
            .encode(&l.tok)?
    } else {
        l.tok.encode(&a.prompt, true)?
    };
    eprintln!("prompt tokens: {}", prompt_ids.len());
    let mem = l.model.memory().clone();
    let constraint = a.format.constraint(&mut None, &l.tok, &l.model)?;
    let mut text = String::new();
    let (tokens, stats, finish) = pollster::block_on(async {
        let mut g = Generator::start_constrained(
            &mut l.model,
            &l.tok,
            &prompt_ids,
            a.sampling.params(),
            a.max_tokens,
            constraint,
        )
        .await?;
        if let Some(d) = drafter.as_mut() {
            g.draft_with(d, a.draft.draft_tokens)?;
        }
        let mut out = std::io::stdout().lock();
        while let Some(piece) = g.next().await? {
            text.push_str(&piece.text);
            if !a.json {
                out.write_all(piece.text.as_bytes())?;
                out.flush()?;
            }
        }
        if !a.json {
            writeln!(out)?;
        }
        anyhow::Ok((g.tokens().to_vec(), g.stats().clone(), g.finish()))
    })?;
    eprintln!(
        "prefill: {:.1} tok/s, time to first token: {:.3} s, decode: {:.1} tok/s ({} tokens, {}){}",
        stats.prefill_tokens_per_s,
        stats.time_to_first_token_s,
        stats.decode_tokens_per_s,
        stats.generated_tokens,
        match finish {
            Some(Finish::EndToken(id)) => format!("stopped at end token {id}"),
            Some(Finish::MaxTokens) => "max tokens".into(),
            Some(Finish::ContextFull) => "context full".into(),
            Some(Finish::Cancelled) => "cancelled".into(),
            None => "unfinished".into(),
        },
        draft_summary(&stats)
    );
    let assistant_mem = drafter.as_ref().map(|d| d.memory().clone());
    eprintln!(
        "GPU memory: {} (weights {}, KV cache {}, activations {}{})",
        mib(mem.total() + assistant_mem.as_ref().map_or(0, |m| m.total())),
        mib(mem.weights),
        mib(mem.kv_cache),
        mib(mem.activations),
        assistant_mem
            .as_ref()
            .map(|m| format!(", assistant {}", mib(m.total())))
            .unwrap_or_default()
    );
    if a.json {
        let json = serde_json::json!({
            "model": l.path.display().to_string(),
            "adapter": l.model.gpu().describe(),
            "prompt_tokens": prompt_ids,
            "tokens": tokens,
            "text": text,
            "finish": finish,
            "prefill_tokens_per_s": stats.prefill_tokens_per_s,
            "decode_tokens_per_s": stats.decode_tokens_per_s,
            "time_to_first_token_s": stats.time_to_first_token_s,
            "gpu_memory_bytes": mem,
            "assistant_gpu_memory_bytes": assistant_mem,
            "draft": (stats.draft_rounds > 0).then(|| serde_json::json!({
                "rounds": stats.draft_rounds,
                "drafted_tokens": stats.drafted_tokens,
                "accepted_drafts": stats.accepted_drafts,
                "acceptance_rate": stats.acceptance_rate(),
                "tokens_per_round": stats.tokens_per_round(),
            })),
        });
        println!("{json}");
    }
    Ok(())
}

fn chat(a: ChatArgs) -> Result<()> {
    let mut l = load(&a.model, false)?;
    let mut drafter = load_drafter(&a.draft, &l.model)?;
    let template = ChatTemplate::from_gguf(&l.gguf.metadata, &l.tok)?;
    let mut conv = Conversation::new();
    let mut factory = None;
    if let Some(s) = &a.system {
        conv.messages.push(Message::system(s.clone()));
    }
    eprintln!("chat: type a message and press enter; an empty line or EOF ends the chat");
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        std::io::stderr().flush()?;
        let Some(line) = lines.next() else { break };
        let line = line?;
        if line.trim().is_empty() {
            break;
        }
        let prefill = conv.prepare(Message::user(line), &template, &l.tok)?;
        if !l.model.rewind(prefill.keep as u32) {
            // The sliding-window rings no longer hold what the kept prefix needs: rebuild the
            // cache from the kept ids (rare: only when the re-rendered history diverges early).
            l.model.reset();
            if prefill.keep > 0 {
                let kept = conv.cached()[..prefill.keep].to_vec();
                pollster::block_on(l.model.forward(&kept, &[], 1.0))?;
            }
        }
        let constraint = a.format.constraint(&mut factory, &l.tok, &l.model)?;
        let (reply, fed) = pollster::block_on(async {
            let mut g = Generator::start_constrained(
                &mut l.model,
                &l.tok,
                &prefill.ids,
                a.sampling.params(),
                a.max_tokens,
                constraint,
            )
            .await?;
            if let Some(d) = drafter.as_mut() {
                g.draft_with(d, a.draft.draft_tokens)?;
            }
            let mut out = std::io::stdout().lock();
            let mut reply = String::new();
            while let Some(piece) = g.next().await? {
                reply.push_str(&piece.text);
                out.write_all(piece.text.as_bytes())?;
                out.flush()?;
            }
            writeln!(out)?;
            let s = g.stats();
            eprintln!(
                "[{} new prompt tokens, {:.1} tok/s prefill, {:.1} tok/s decode{}]",
                s.prompt_tokens,
                s.prefill_tokens_per_s,
                s.decode_tokens_per_s,
                draft_summary(s)
            );
            anyhow::Ok((reply, g.fed().to_vec()))
        })?;
        for id in fed {
            conv.push_generated(id);
        }
        debug_assert_eq!(l.model.position() as usize, conv.cached().len());
        conv.finish_reply(reply.trim().to_string());
    }
    Ok(())
}

fn serve(a: ServeArgs) -> Result<()> {
    use gemma_wgpu::server::{self, Engine, ServerConfig};
    let model_id = model_path(&a.model)?
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "gemma".into());
    let config = ServerConfig {
        host: a.host,
        port: a.port,
        api_key: a.api_key,
        max_request_bytes: a.max_request_bytes,
        max_tokens_limit: a.max_tokens_limit,
        queue_limit: a.queue_limit as usize,
        model_id,
    };
    let model_args = a.model;
    let load_engine = move || {
        let l = load(&model_args, false)?;
        let template = ChatTemplate::from_gguf(&l.gguf.metadata, &l.tok)?;
        Ok(Engine {
            model: l.model,
            tok: l.tok,
            template,
            constraints: None,
        })
    };
    server::run(config, load_engine, |addr| {
        // Scripts and tests wait for this line (with --port 0 it names the port chosen).
        println!("listening on http://{addr}");
        let _ = std::io::stdout().flush();
    })
}

fn score(a: ScoreArgs) -> Result<()> {
    let mut l = load(&a.model, true)?;
    let ids = match &a.prompt {
        Some(p) => l.tok.encode(p, true)?,
        None => a.tokens.clone(),
    };
    if ids.is_empty() {
        bail!("no tokens to score");
    }
    let rows = pollster::block_on(l.model.score(&ids, a.top_k))?;
    let positions: Vec<serde_json::Value> = rows
        .iter()
        .map(|c| {
            serde_json::json!({
                "ids": c.ids,
                "logits": c.values,
                "logsumexp": c.logsumexp,
            })
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "tokens": ids,
            "top_k": a.top_k,
            "adapter": l.model.gpu().describe(),
            "positions": positions,
        })
    );
    Ok(())
}

fn info(a: InfoArgs) -> Result<()> {
    // A draft that does not fit is refused from the headers alone, before the GPU is touched.
    let draft = match &a.draft {
        Some(path) => {
            let model = model_path(&a.model)?;
            let (gguf, _) = gguf::open(&model)?;
            let target =
                gemma_wgpu::model::check(&gguf).with_context(|| format!("{}", model.display()))?;
            Some(describe_assistant(path, &target)?)
        }
        None => None,
    };
    let l = load(&a.model, true)?;
    // The assistant loaded for real: what it takes on the GPU next to the model.
    let drafter = load_drafter(
        &DraftArgs {
            draft: a.draft.clone(),
            draft_tokens: gemma_wgpu::model::drafter::DEFAULT_DRAFT_TOKENS,
        },
        &l.model,
    )?;
    let assistant_mem = drafter.as_ref().map(|d| d.memory().clone());
    let cfg = &l.model.cfg;
    let mem = l.model.memory().clone();
    let mut types: std::collections::BTreeMap<String, (usize, u64)> = Default::default();
    for t in &l.gguf.tensors {
        let e = types.entry(t.ty.name().to_string()).or_default();
        e.0 += 1;
        e.1 += t.n_bytes;
    }
    let ratio = mem.weights as f64 / mem.file_tensor_bytes.max(1) as f64;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "model": l.path.display().to_string(),
                "architecture": cfg.arch.name(),
                "layers": cfg.n_layers,
                "hidden": cfg.hidden,
                "heads": cfg.n_heads,
                "vocab": cfg.vocab,
                "context_length": cfg.context_length,
                "kv_context": l.model.context,
                "sliding_window": cfg.sliding_window,
                "tensor_types": types.iter().map(|(k, (n, b))| (k.clone(), serde_json::json!({"tensors": n, "bytes": b}))).collect::<serde_json::Map<_, _>>(),
                "adapter": l.model.gpu().describe(),
                "gpu_memory": mem,
                "gpu_memory_total": mem.total(),
                "first_shared_layer": cfg.first_shared,
                "per_layer_input_dim": cfg.ple_dim,
                "gpu_weight_bytes_over_file_tensor_bytes": ratio,
                "assistant": draft.as_ref().map(|d| &d.json),
                "assistant_gpu_memory": assistant_mem,
                "gpu_memory_total_with_assistant": mem.total() + assistant_mem.as_ref().map_or(0, |m| m.total()),
            })
        );
        return Ok(());
    }
    if let Some(d) = &draft {
        println!("{}", d.text);
    }
    println!("model: {}", l.path.display());
    println!(
        "architecture: {} ({} layers, hidden {}, {} heads, vocab {}, context {}, sliding window {})",
        cfg.arch.name(),
        cfg.n_layers,
        cfg.hidden,
        cfg.n_heads,
        cfg.vocab,
        cfg.context_length,
        cfg.sliding_window
    );
    let sliding = cfg.layers.iter().filter(|l| l.sliding).count();
    let dims = |f: fn(&gemma_wgpu::model::LayerConfig) -> u32| {
        let mut v: Vec<u32> = cfg.layers.iter().map(f).collect();
        v.sort_unstable();
        v.dedup();
        v.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("/")
    };
    println!(
        "layers: {} sliding, {} full; head dim {}; KV heads {}; MLP width {}",
        sliding,
        cfg.layers.len() - sliding,
        dims(|l| l.head_dim),
        dims(|l| l.n_kv_heads),
        dims(|l| l.ff_len)
    );
    if cfg.has_kv_sharing() {
        let producers: Vec<String> = cfg
            .layers
            .iter()
            .skip(cfg.first_shared as usize)
            .map(|l| l.kv_source)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|p| p.to_string())
            .collect();
        println!(
            "KV sharing: layers {}..{} compute no K/V and read the caches of layers {}",
            cfg.first_shared,
            cfg.n_layers,
            producers.join(", ")
        );
    }
    if cfg.ple_dim > 0 {
        println!(
            "per-layer inputs: {} per layer, table read a row per token from the file",
            cfg.ple_dim
        );
    }
    println!("tensor types:");
    for (ty, (n, bytes)) in &types {
        println!("  {ty:<6} {n:>4} tensors  {}", mib(*bytes));
    }
    println!("adapter: {}", l.model.gpu().describe());
    println!("tensors by group:            file         GPU   mapped (read per token)");
    for g in &mem.groups {
        println!(
            "  {:<26} {:>11} {:>11} {:>11}",
            g.name,
            mib(g.file_bytes),
            mib(g.gpu_bytes),
            mib(g.mapped_bytes)
        );
    }
    println!("GPU memory plan (KV cache for {} tokens):", l.model.context);
    println!(
        "  weights      {} ({:.3}× the file's {} of tensor data)",
        mib(mem.weights),
        ratio,
        mib(mem.file_tensor_bytes)
    );
    println!("  KV cache     {}", mib(mem.kv_cache));
    println!("  activations  {}", mib(mem.activations));
    println!("  total        {}", mib(mem.total()));
    if let Some(am) = &assistant_mem {
        println!(
            "  assistant    {} (weights {}, buffers {}; it reads the model's KV cache)",
            mib(am.total()),
            mib(am.weights),
            mib(am.activations)
        );
        println!(
            "  total with the assistant {}",
            mib(mem.total() + am.total())
        );
    }
    println!("  largest buffer {}", mib(mem.largest_buffer));
    println!(
        "  mapped from the file, not on the GPU: {}",
        mib(mem.mapped)
    );
    Ok(())
}

/// An assistant file checked against its target, as `info` prints it.
struct AssistantInfo {
    text: String,
    json: serde_json::Value,
}

fn describe_assistant(
    path: &std::path::Path,
    target: &gemma_wgpu::model::ModelConfig,
) -> Result<AssistantInfo> {
    let (g, _) = gguf::open(path)?;
    let (cfg, caches) = gemma_wgpu::model::check_assistant(&g, target)
        .with_context(|| format!("{}", path.display()))?;
    let bytes = g.tensor_data_bytes();
    let kinds: Vec<&str> = cfg
        .layers
        .iter()
        .map(|l| if l.sliding { "sliding" } else { "full" })
        .collect();
    let text = format!(
        "assistant: {} ({}: {} layers ({}), hidden {}, {} heads, {:.1} MiB of tensors); its layers read the KV caches of target layers {:?}",
        path.display(),
        gemma_wgpu::model::ASSISTANT_ARCH,
        cfg.n_layers,
        kinds.join(", "),
        cfg.hidden,
        cfg.n_heads,
        bytes as f64 / (1u64 << 20) as f64,
        caches
    );
    let json = serde_json::json!({
        "path": path.display().to_string(),
        "layers": cfg.n_layers,
        "sliding": cfg.layers.iter().map(|l| l.sliding).collect::<Vec<_>>(),
        "hidden": cfg.hidden,
        "heads": cfg.n_heads,
        "vocab": cfg.vocab,
        "tensor_bytes": bytes,
        "target_caches": caches,
    });
    Ok(AssistantInfo { text, json })
}

fn synth(a: SynthArgs) -> Result<()> {
    let start = std::time::Instant::now();
    let written = write_synth(&a.arch, &a.quant.quant, a.seed, a.context, &a.out)?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "wrote {}: {} {} seed {}, {} bytes ({:.2} GiB) in {:.1} s ({:.0} MiB/s)",
        a.out.display(),
        a.arch,
        a.quant.quant,
        a.seed,
        written,
        written as f64 / (1u64 << 30) as f64,
        secs,
        written as f64 / (1u64 << 20) as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// Writes a synthetic model to `out` with a progress bar; returns the bytes written. A failed
/// write removes the partial file.
fn write_synth(
    arch: &str,
    quant: &str,
    seed: u64,
    context: Option<u32>,
    out_path: &std::path::Path,
) -> Result<u64> {
    use gemma_wgpu::synth::{self, SynthArch, SynthQuant};
    let arch = SynthArch::parse(arch).with_context(|| format!("unknown --arch {arch}"))?;
    let quant = SynthQuant::parse(quant).with_context(|| format!("unknown --quant {quant}"))?;
    let mut spec = arch.spec(quant, seed);
    if let Some(c) = context {
        spec.context_length = c;
    }
    let file = std::fs::File::create(out_path)
        .with_context(|| format!("creating {}", out_path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(8 << 20, file);
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "writing {msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(format!("{} {}", arch.name(), quant.name()));
    let written = synth::write_with_progress(&spec, &mut out, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .and_then(|n| {
        out.flush()?;
        Ok(n)
    });
    bar.finish_and_clear();
    match written {
        Ok(n) => Ok(n),
        Err(e) => {
            // Never leave a truncated file that looks like a model.
            let _ = std::fs::remove_file(out_path);
            Err(e).with_context(|| format!("writing {}", out_path.display()))
        }
    }
}

/// The synthetic model file of `arch`/`quant` in the cache directory, written on first use
/// (seed 0: every machine benchmarks the same bytes).
fn synthetic_model(arch: &str, quant: &str) -> Result<PathBuf> {
    let dir = gguf::cache_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("synthetic-{arch}-{quant}.gguf"));
    if !path.exists() {
        let tmp = path.with_extension("gguf.partial");
        eprintln!("writing {} (first use)", path.display());
        write_synth(arch, quant, 0, None, &tmp)?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    }
    Ok(path)
}

fn bench(mut a: BenchArgs) -> Result<()> {
    use gemma_wgpu::bench::{kernels, model as model_bench};
    let mut gpu = gpu_options(&a.model);
    gpu.timestamps = true;
    if a.kernels {
        let types = a
            .types
            .iter()
            .map(|t| {
                gemma_wgpu::kernels::matmul::TYPES
                    .into_iter()
                    .find(|ty| ty.name().eq_ignore_ascii_case(t))
                    .with_context(|| format!("unsupported weight type `{t}` in --types"))
            })
            .collect::<Result<Vec<_>>>()?;
        let ctx = pollster::block_on(GpuContext::new(&gpu))?;
        eprintln!("adapter: {}", ctx.describe());
        let opts = kernels::KernelBenchOptions {
            iterations: a.iterations,
            shapes: a.shapes.clone(),
            types,
            ..Default::default()
        };
        let report = pollster::block_on(kernels::run(&ctx, &opts))?;
        let json = serde_json::json!({
            "schema": model_bench::SCHEMA,
            "kind": "kernels",
            "version": env!("CARGO_PKG_VERSION"),
            "commit": env!("GEMMA_WGPU_COMMIT"),
            "adapter": adapter_json(&ctx),
            "kernels": report,
        });
        if a.json {
            println!("{json}");
        } else {
            print_kernel_report(&json);
        }
        return Ok(());
    }
    let opts = model_bench::ModelBenchOptions {
        prompt_len: a.prompt_len,
        gen: a.gen,
        repeat: a.repeat,
        profile_tokens: a.profile_tokens,
        kv_elem_bytes: if a.model.kv_f32 { 4 } else { 2 },
        copy_bandwidth: !a.no_copy_bandwidth,
        skip_ops: a.skip_ops.clone(),
        double_ops: a.double_ops.clone(),
        draft_tokens: if a.draft.is_some() { a.draft_tokens } else { 0 },
    };
    // Everything is checked before a synthetic model is written or the model loaded, so a bench
    // that cannot finish is refused with one line instead of failing midway.
    opts.check()?;
    // The KV cache holds the longest run (the prompt, then the longer of --gen and
    // --profile-tokens) unless --context asks for more.
    let needed = opts.context_needed()?;
    let chosen = a.model.context.is_some();
    let context = match a.model.context {
        Some(c) => {
            opts.check_context(c)?;
            c
        }
        None => needed,
    };
    a.model.context = Some(context);
    let synthetic = a.synthetic.clone();
    if let Some(arch) = &synthetic {
        a.model.model = Some(synthetic_model(arch, &a.quant.quant)?);
    }
    // Like llama-bench's 512-token batches (a big GPU wants them; phones want the default).
    a.model.prefill_chunk.get_or_insert(BENCH_PREFILL_CHUNK);
    // A context the user did not choose is explained.
    let why = (!chosen).then(|| {
        format!(
            "bench needs {needed} tokens of context ({})",
            opts.context_reason()
        )
    });
    check_header_limits(&a.model, why)?;
    let t0 = std::time::Instant::now();
    let mut l = load_with(&a.model, a.json, gpu)?;
    let load_s = t0.elapsed().as_secs_f64();
    let ctx = l.model.gpu().clone();
    let (pipelines, compile_s) = ctx.compile_stats();
    let draft = DraftArgs {
        draft: a.draft.clone(),
        draft_tokens: gemma_wgpu::model::drafter::DEFAULT_DRAFT_TOKENS,
    };
    let mut drafter = load_drafter(&draft, &l.model)?;
    let result = pollster::block_on(model_bench::run(
        &mut l.model,
        drafter.as_mut(),
        &l.tok,
        &opts,
    ))?;
    let mut types: std::collections::BTreeMap<&str, u32> = Default::default();
    for t in &l.gguf.tensors {
        *types.entry(t.ty.name()).or_default() += 1;
    }
    let cfg = &l.model.cfg;
    let json = serde_json::json!({
        "schema": model_bench::SCHEMA,
        "kind": "model",
        "version": env!("CARGO_PKG_VERSION"),
        "commit": env!("GEMMA_WGPU_COMMIT"),
        "model": {
            "path": l.path.display().to_string(),
            "synthetic": synthetic.map(|s| format!("{s} {}", a.quant.quant)),
            "name": l.gguf.metadata.str("general.name").unwrap_or(""),
            "arch": cfg.arch.name(),
            "layers": cfg.n_layers,
            "hidden": cfg.hidden,
            "vocab": cfg.vocab,
            "file_bytes": l.gguf.file_size,
            "tensor_types": types,
        },
        "adapter": adapter_json(&ctx),
        "options": {
            "prompt_len": a.prompt_len,
            "gen": a.gen,
            "repeat": a.repeat,
            "profile_tokens": a.profile_tokens,
            "context": l.model.context,
            "prefill_chunk": a.model.prefill_chunk,
            "kv_f32": a.model.kv_f32,
            "attention_split_keys": a.model.attention_split_keys,
            "webgpu_limits": a.model.webgpu_limits,
        },
        "load_s": load_s,
        "pipelines_compiled": pipelines,
        "pipeline_compile_s": compile_s,
        "gpu_memory_bytes": l.model.memory(),
        "results": result,
    });
    // With --json the summary goes to stderr, so one run gives both.
    print_model_report(&json, a.json);
    if a.json {
        println!("{json}");
    }
    Ok(())
}

/// The model's own checks that need only the file's header (above all its longest context),
/// so that `bench` refuses what the model cannot run before the GPU is set up. The device's
/// limits are not known yet: the load checks them against the adapter. `why`: what the
/// context asked for is made of, prefixed to the model's refusal.
fn check_header_limits(args: &ModelArgs, why: Option<String>) -> Result<()> {
    let path = model_path(args)?;
    let (gguf, _) = gguf::open(&path)?;
    gemma_wgpu::model::check(&gguf).with_context(|| format!("{}", path.display()))?;
    let no_device_limits = gemma_wgpu::gpu::Caps {
        max_binding: u64::MAX,
        max_buffer: u64::MAX,
        ..gemma_wgpu::gpu::Caps::webgpu_defaults(false, false)
    };
    let opts = LoadOptions {
        context: args.context,
        prefill_chunk: args.prefill_chunk.unwrap_or(DEFAULT_PREFILL_CHUNK),
        kv_f32: args.kv_f32,
        ..Default::default()
    };
    let checked = gemma_wgpu::model::preflight(&gguf, &no_device_limits, &opts);
    match why {
        Some(why) => checked.context(why).map(|_| ()),
        None => checked.map(|_| ()).map_err(Into::into),
    }
}

fn adapter_json(ctx: &GpuContext) -> serde_json::Value {
    serde_json::json!({
        "name": ctx.info.name,
        "backend": format!("{:?}", ctx.info.backend),
        "device_type": format!("{:?}", ctx.info.device_type),
        "driver": ctx.info.driver,
        "driver_info": ctx.info.driver_info,
        "f16": ctx.caps.f16,
        "subgroups": ctx.caps.subgroups,
        "timestamps": ctx.caps.timestamps,
        "shader_loop_bounding": ctx.loop_bounding(),
        "uniform_params": ctx.caps.uniform_params,
        "max_binding_bytes": ctx.caps.max_binding,
        "max_buffer_bytes": ctx.caps.max_buffer,
    })
}

/// The human-readable summary of a model benchmark (the JSON holds everything).
fn print_model_report(j: &serde_json::Value, to_stderr: bool) {
    let mut out: Box<dyn Write> = if to_stderr {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    let _ = write_model_report(&mut out, j);
}

fn write_model_report(out: &mut dyn Write, j: &serde_json::Value) -> std::io::Result<()> {
    let r = &j["results"];
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    writeln!(
        out,
        "model    {} ({})",
        j["model"]["name"].as_str().unwrap_or(""),
        j["model"]["path"].as_str().unwrap_or("")
    )?;
    writeln!(
        out,
        "adapter  {} ({}, f16 {}, subgroups {})",
        j["adapter"]["name"].as_str().unwrap_or(""),
        j["adapter"]["backend"].as_str().unwrap_or(""),
        j["adapter"]["f16"],
        j["adapter"]["subgroups"]
    )?;
    writeln!(out, "commit   {}", j["commit"].as_str().unwrap_or(""))?;
    writeln!(
        out,
        "load     {:.2} s ({} pipelines compiled in {:.2} s)",
        f(&j["load_s"]),
        j["pipelines_compiled"],
        f(&j["pipeline_compile_s"])
    )?;
    writeln!(
        out,
        "prefill  {:.1} tok/s ({} tokens)",
        f(&r["prefill"]["tokens_per_s"]),
        r["prompt_tokens"]
    )?;
    writeln!(
        out,
        "decode   {:.1} tok/s ({} tokens)",
        f(&r["decode"]["tokens_per_s"]),
        r["generated_tokens"]
    )?;
    writeln!(
        out,
        "TTFT     {:.4} s warm, {:.4} s first request",
        f(&r["time_to_first_token_s"]),
        f(&r["time_to_first_token_cold_s"])
    )?;
    writeln!(
        out,
        "dispatches  {:.0} per decode token ({:.0} µs of CPU to encode), {:.0} per prefill",
        f(&r["dispatches_per_decode_token"]),
        f(&r["decode_encode_us_per_token"]),
        f(&r["dispatches_per_prefill"])
    )?;
    let bytes = f(&r["bytes_per_decode_token"]["total"]);
    write!(
        out,
        "bytes/token {:.1} MiB -> {:.1} GB/s",
        bytes / (1u64 << 20) as f64,
        f(&r["achieved_gb_per_s"])
    )?;
    match r["bandwidth_fraction"].as_f64() {
        Some(fr) => writeln!(
            out,
            " = {:.1}% of the copy bandwidth ({:.0} GB/s)",
            fr * 100.0,
            f(&r["copy_bandwidth"]["gb_per_s"])
        ),
        None => writeln!(out),
    }?;
    if let Some(b) = r["breakdown"].as_object() {
        writeln!(
            out,
            "decode GPU time {:.1} us/token of {:.1} us wall",
            f(&b["decode_gpu_us_per_token"]),
            f(&b["decode_wall_us_per_token"])
        )?;
        write_ops(out, &b["decode"], 12)?;
        writeln!(out, "prefill GPU time {:.2} ms", f(&b["prefill_gpu_ms"]))?;
        write_ops(out, &b["prefill"], 8)?;
    } else if let Some(note) = r["breakdown_note"].as_str() {
        writeln!(out, "no per-kernel breakdown: {note}")?;
    }
    let d = &r["draft"];
    if !d.is_null() {
        writeln!(
            out,
            "drafts   decode step {:.3} ms; per draft length k: draft ms, verify (k+1 tokens) ms, verify ÷ step",
            f(&d["decode_step_ms"])
        )?;
        for c in d["costs"].as_array().into_iter().flatten() {
            writeln!(
                out,
                "  k {:>2}  {:>7.3} {:>7.3} {:>5.2}×",
                c["k"],
                f(&c["draft_ms"]),
                f(&c["verify_ms"]),
                f(&c["verify_over_decode_step"])
            )?;
        }
        for p in d["projections"].as_array().into_iter().flatten() {
            writeln!(
                out,
                "  at {:.1} tokens per round: {:.1} tok/s (k {}, {:.2}× plain decoding)",
                f(&p["tokens_per_round"]),
                f(&p["tokens_per_s"]),
                p["best_k"],
                f(&p["speedup"])
            )?;
        }
        let run = &d["run"];
        writeln!(
            out,
            "  drafted greedy run (k {}): {:.1} tok/s, {:.0}% of drafts accepted, {:.2} tokens per round",
            run["draft_tokens"],
            f(&run["decode_tokens_per_s"]),
            100.0 * f(&run["acceptance_rate"]),
            f(&run["tokens_per_round"])
        )?;
    }
    Ok(())
}

/// The `most` largest rows of a breakdown list.
fn write_ops(out: &mut dyn Write, ops: &serde_json::Value, most: usize) -> std::io::Result<()> {
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    for o in ops.as_array().into_iter().flatten().take(most) {
        writeln!(
            out,
            "  {:<24} {:>6.1} calls {:>8.1} us {:>5.1}%",
            o["op"].as_str().unwrap_or(""),
            f(&o["calls"]),
            f(&o["us"]),
            f(&o["share"]) * 100.0
        )?;
    }
    Ok(())
}

/// The human-readable summary of the kernel microbenchmarks: the report, then one line per
/// attention case.
fn print_kernel_report(j: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(&j["kernels"]).unwrap_or_default()
    );
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    for a in j["kernels"]["attention"].as_array().into_iter().flatten() {
        println!(
            "{:<38} {:>8.1} us/call (attention + merge, {} splits, {:.1} GB/s of K/V); tiled kernel {:.1} us",
            a["shape"].as_str().unwrap_or(""),
            f(&a["us_per_call"]),
            a["splits"],
            f(&a["gb_per_s"]),
            f(&a["tiled_us_per_call"])
        );
    }
}
