// Type declarations for gemma-wgpu's public API (index.js).

/** Why an operation failed; every rejection of this package is a {@link GemmaError}. */
export type GemmaErrorCode =
  /** The browser has no WebGPU, or no adapter/device could be created. */
  | 'no-webgpu'
  /** The model (at this context length) needs larger buffers or more memory than the adapter allows. */
  | 'adapter-limits'
  /** The download failed: network error, non-2xx status (the message has the URL and status), no storage. */
  | 'download-failed'
  /** The file is not a GGUF model this engine can run, or it is truncated. */
  | 'bad-model'
  /** The GPU or the wasm heap ran out of memory; the failed load or request freed what it allocated. */
  | 'out-of-memory'
  /**
   * The GPU device was lost (driver reset, GPU removed, the browser reclaimed it): this model can't
   * be used any more; load it again with `Gemma.load`.
   */
  | 'device-lost'
  /** Stopped by an AbortSignal, or by `break` out of a stream. */
  | 'aborted'
  /** Another generation is running on this model. */
  | 'busy'
  /** A wrong argument, or a call on a model that was unloaded. */
  | 'invalid-argument'
  /** A bug or an engine crash; after a crash the model must be loaded again. */
  | 'internal';

export class GemmaError extends Error {
  constructor(code: GemmaErrorCode, message: string, options?: ErrorOptions);
  readonly name: 'GemmaError';
  readonly code: GemmaErrorCode;
}

export interface LoadProgress {
  /**
   * 'download': bytes fetched; 'cache': read from the local cache; 'upload': bytes sent to the GPU.
   * The same phases prefixed 'assistant-' for the assistant, which loads after the model.
   */
  phase: 'download' | 'cache' | 'upload' | 'assistant-download' | 'assistant-cache' | 'assistant-upload';
  loaded: number;
  /** Undefined while the server has not said how large the file is. */
  total: number | undefined;
}

export interface LoadOptions {
  onProgress?: (progress: LoadProgress) => void;
  /** Keep the downloaded file in the origin's private file system, keyed by URL (default true). */
  cache?: boolean;
  /** KV cache size in tokens; default min(the model's context, 4096). */
  contextLength?: number;
  /** Prompt tokens per prefill step, 1 to 1024; default 128 (sized for phones: a desktop GPU prefills faster with 512). */
  prefillChunk?: number;
  /** Aborts the load; a partial download is kept and resumed next time. */
  signal?: AbortSignal;
  /**
   * A Gemma 4 MTP assistant GGUF for this model (`gemma4-assistant`, e.g. llama.cpp's conversion
   * of `google/gemma-4-E2B-it-assistant`): a URL or File/Blob, downloaded and cached like the
   * model and checked against it before its weights download. Generations then draft with it
   * (speculative decoding, `SamplingOptions.draftTokens`).
   */
  assistant?: string | URL | Blob;
  /** false: never use shader-f16 even where the adapter has it. */
  f16?: boolean;
  /** false: never use subgroup operations even where the adapter has them. */
  subgroups?: boolean;
  /** Test hooks (fault injection), not for applications. */
  testHooks?: {
    /** GPU buffer creation fails with 'out-of-memory' once the engine's buffers would pass this many bytes. */
    memoryBudget?: number;
  };
}

export interface SamplingOptions {
  /** Most tokens to generate (default 256). */
  maxTokens?: number;
  /** 0 = greedy. Default 0 for `generate`, 1.0 for chat. */
  temperature?: number;
  /** Keep the K most likely tokens; 0 = no limit. Chat default 64. */
  topK?: number;
  /** Nucleus sampling, in (0, 1]. Chat default 0.95. */
  topP?: number;
  /** In [0, 1]; 0 = off. */
  minP?: number;
  /** Repetition penalty, > 0; 1 = off. */
  repeatPenalty?: number;
  /** Random seed: the same seed gives the same tokens. */
  seed?: number;
  /**
   * With an assistant loaded (`LoadOptions.assistant`): tokens it drafts per round, 0 to 16
   * (default 3; 0 = decode without it). Drafting never changes the output (greedy: the same
   * tokens; sampling: the same distribution), only the speed. Off while `repeatPenalty` ≠ 1.
   */
  draftTokens?: number;
  /**
   * Constrained decoding: the output must match this (checked token by token on the whole
   * vocabulary, so it always does when the generation ends with an end token).
   */
  format?: OutputFormat;
  /**
   * Stop sequences, as OpenAI's `stop`: a string or up to 4. The output ends just before the
   * first one to appear (it is not part of the output) and the generation stops there.
   */
  stop?: string | ReadonlyArray<string>;
}

export type OutputFormat =
  | { type: 'json_object' }
  | { type: 'json_schema'; schema: object }
  | { type: 'regex'; pattern: string }
  /** A Lark grammar (llguidance's dialect). */
  | { type: 'grammar'; grammar: string };

export interface GenerateOptions extends SamplingOptions {
  /** Stops the generation within one token; the stream then throws GemmaError 'aborted'. */
  signal?: AbortSignal;
}

export interface Piece {
  /**
   * Text this token adds; may be '' (part of a multi-byte character, or text held back while
   * it could still be the start of a stop sequence or a tool call).
   */
  text: string;
  /** The token id (null for text released when the generation ended). */
  id: number | null;
  /** Only in `createChatCompletion` with tools: a whole tool call the model made. */
  toolCall?: { name: string; arguments: string };
}

/** A generation's tokens as they arrive. Leaving a for-await loop early stops the generation. */
export interface PieceStream extends AsyncIterableIterator<Piece> {
  next(): Promise<IteratorResult<Piece, undefined>>;
  return(value?: undefined): Promise<IteratorResult<Piece, undefined>>;
  [Symbol.asyncIterator](): PieceStream;
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

export interface ChatOptions {
  /** A system prompt, rendered by the model's chat template. */
  system?: string;
  /** Earlier turns to continue from (user and assistant only). */
  messages?: ReadonlyArray<{ role: 'user' | 'assistant'; content: string }>;
}

export class Chat {
  private constructor();
  readonly system: string | undefined;
  /** The turns so far (user and assistant), oldest first; a copy. */
  readonly messages: Array<{ role: 'user' | 'assistant'; content: string }>;
  /**
   * Sends a user turn and streams the reply (the chat's history stays in the KV cache, so only
   * the new turn is prefilled). The trimmed reply joins `messages` when it finishes or is aborted.
   */
  send(text: string, options?: GenerateOptions): PieceStream;
  /** Forgets the history; the system prompt stays. */
  reset(): void;
}

export interface GpuMemory {
  weights: number;
  kvCache: number;
  activations: number;
  total: number;
  largestBuffer: number;
  /** Bytes read from the file on demand instead of being uploaded (Gemma 4 per-layer embeddings). */
  mapped: number;
  /** GPU bytes of the assistant (0 without one); `total` is the model's alone. */
  assistant: number;
}

export interface DraftStats {
  /** Of the last generation: draft rounds, tokens drafted, drafts the model kept. */
  rounds: number;
  draftedTokens: number;
  acceptedDrafts: number;
  /** acceptedDrafts ÷ draftedTokens. */
  acceptanceRate: number;
  /** Tokens each round produced on average (kept drafts + the model's own token). */
  tokensPerRound: number;
}

export interface AssistantInfo {
  layers: number;
  hidden: number;
  fileBytes: number;
}

export interface ModelInfo {
  architecture: string;
  layers: number;
  vocab: number;
  /** The KV cache size in use, in tokens. */
  contextLength: number;
  hasChatTemplate: boolean;
  fileBytes: number;
  weightsBytes: number;
}

export interface Stats {
  /** Of the last generation (0 before the first). */
  prefillTokensPerS: number;
  decodeTokensPerS: number;
  timeToFirstTokenS: number;
  /** Tokens in the last prompt, of which `cachedTokens` were already in the KV cache. */
  promptTokens: number;
  cachedTokens: number;
  generatedTokens: number;
  /** GPU bytes of the model and, when loaded, its assistant. */
  gpuMemoryBytes: number;
  wasmMemoryBytes: number;
  /** The WebGPU adapter's name. */
  adapter: string;
  /** Whether the kernels in use need shader-f16 / subgroups. */
  f16: boolean;
  subgroups: boolean;
  gpuMemory: GpuMemory;
  model: ModelInfo;
  /** The loaded assistant, or null. */
  assistant: AssistantInfo | null;
  draft: DraftStats;
}

type MessageContent = string | ReadonlyArray<{ type: 'text'; text: string }>;

export type ChatCompletionMessage =
  | { role: 'system' | 'developer' | 'user'; content: MessageContent }
  | { role: 'assistant'; content: MessageContent | null; tool_calls?: ReadonlyArray<ChatCompletionToolCall> | null }
  /** A tool's result: goes back to the model in the turn that made the call. */
  | { role: 'tool'; tool_call_id: string; content: MessageContent; name?: string };

export interface ChatCompletionToolCall {
  id: string;
  type: 'function';
  /** `arguments`: JSON text. */
  function: { name: string; arguments: string };
}

/** A function the model may call (Gemma 4; Gemma 3's template has no tool format). */
export interface ChatCompletionTool {
  type: 'function';
  function: {
    name: string;
    description?: string;
    /** JSON Schema of the arguments. */
    parameters?: object;
  };
}

export interface ChatCompletionRequest {
  messages: ReadonlyArray<ChatCompletionMessage>;
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean } | null;
  /** Default 256. */
  max_tokens?: number | null;
  max_completion_tokens?: number | null;
  /** Default 1.0. */
  temperature?: number | null;
  /** Default 0.95. */
  top_p?: number | null;
  /** Not in OpenAI's API; default 64. */
  top_k?: number | null;
  min_p?: number | null;
  repeat_penalty?: number | null;
  seed?: number | null;
  /** Echoed back; the loaded model is used whatever it says. */
  model?: string | null;
  /** Only 1. */
  n?: 1 | null;
  /** JSON output: any object, or one valid under `json_schema.schema`. */
  response_format?:
    | { type: 'text' }
    | { type: 'json_object' }
    | { type: 'json_schema'; json_schema: { name?: string; schema: object; strict?: boolean | null } }
    | null;
  /** See `SamplingOptions.stop`. */
  stop?: string | ReadonlyArray<string> | null;
  tools?: ReadonlyArray<ChatCompletionTool> | null;
  /**
   * 'auto' (default with tools): the model decides and its calls are parsed; 'required' or a
   * named function: the model must call (one or more tools, or that one), with arguments
   * shaped by the tool's schema (types, enums, required keys, lengths; not numeric bounds).
   */
  tool_choice?: 'none' | 'auto' | 'required' | { type: 'function'; function: { name: string } } | null;
  /** false: a forced reply holds exactly one call. Default true. */
  parallel_tool_calls?: boolean | null;
  signal?: AbortSignal;
}

export interface ChatCompletionUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
}

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  /** Unix time, seconds. */
  created: number;
  model: string;
  choices: [
    {
      index: 0;
      /** content is null when the reply is only tool calls. */
      message: { role: 'assistant'; content: string | null; tool_calls?: ChatCompletionToolCall[] };
      logprobs: null;
      finish_reason: 'stop' | 'length' | 'tool_calls';
    },
  ];
  usage: ChatCompletionUsage;
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  /** Empty only in the usage chunk (`stream_options.include_usage`). */
  choices:
    | [
        {
          index: 0;
          /** The first chunk has role 'assistant'; the last has an empty delta and a finish_reason. */
          /** A tool call comes whole, in one delta. */
          delta: { role?: 'assistant'; content?: string; tool_calls?: Array<ChatCompletionToolCall & { index: number }> };
          logprobs: null;
          finish_reason: 'stop' | 'length' | 'tool_calls' | null;
        },
      ]
    | [];
  usage?: ChatCompletionUsage;
}

export interface ChatCompletionStream extends AsyncIterableIterator<ChatCompletionChunk> {
  next(): Promise<IteratorResult<ChatCompletionChunk, undefined>>;
  return(value?: undefined): Promise<IteratorResult<ChatCompletionChunk, undefined>>;
  [Symbol.asyncIterator](): ChatCompletionStream;
}

export class Gemma {
  private constructor();

  /**
   * Loads a GGUF model from a URL (downloaded into the origin's private file system, or read from
   * it when cached) or from a File/Blob (read in slices, not copied), in a new worker.
   */
  static load(source: string | URL | Blob, options?: LoadOptions): Promise<Gemma>;

  /** Raw completion of `prompt` (BOS added, no chat template); greedy unless `temperature` is set. */
  generate(prompt: string, options?: GenerateOptions): PieceStream;

  /** A multi-turn conversation that reuses the KV cache between turns. */
  chat(options?: ChatOptions): Chat;

  /** OpenAI-style chat completion; the signal may be in the request or in `options`. */
  createChatCompletion(request: ChatCompletionRequest & { stream: true }, options?: { signal?: AbortSignal }): Promise<ChatCompletionStream>;
  createChatCompletion(request: ChatCompletionRequest & { stream?: false | null }, options?: { signal?: AbortSignal }): Promise<ChatCompletion>;
  createChatCompletion(request: ChatCompletionRequest, options?: { signal?: AbortSignal }): Promise<ChatCompletion | ChatCompletionStream>;

  /** The latest numbers (a copy); updated after the load and after every generation. */
  stats(): Stats;

  /**
   * Measures this model on this device as `gemma-wgpu bench` does natively (prefill, decode,
   * time to first token, dispatches per token, CPU time per token). The KV cache must hold
   * `promptLen + max(gen, profileTokens)` tokens; the conversation cache is cleared.
   */
  bench(options?: BenchOptions): Promise<BenchResult>;

  /** Frees the GPU memory and ends the worker; the instance can't be used afterwards. */
  unload(): Promise<void>;

  /**
   * Test hook, not for applications: destroys this model's GPU device, as a driver reset or the
   * browser reclaiming the GPU would. The next request fails with 'device-lost'.
   */
  loseDeviceForTest(): Promise<void>;
}

export interface BenchOptions {
  /** Prompt tokens of the prefill (default 512). */
  promptLen?: number;
  /** Tokens decoded per timed run (default 128). */
  gen?: number;
  /** Timed runs, after one warm-up (default 3; medians are reported). */
  repeat?: number;
  /** Decode steps timed per op with GPU timestamps, where the device has them (default 32; 0: none). */
  profileTokens?: number;
  /** Also measure the device's shader-copy bandwidth as the yardstick (default true). */
  copyBandwidth?: boolean;
  /**
   * Ops left out of every step, by their name in the breakdown (e.g. `['attention']`): an
   * ablation, whose decode speed shows what those ops cost; the output is meaningless. A name
   * no op has is refused.
   */
  skipOps?: string[];
}

export interface BenchResult {
  /** As `results` in `gemma-wgpu bench --json` (snake_case fields). */
  results: {
    prompt_tokens: number;
    generated_tokens: number;
    prefill: { tokens_per_s: number; runs_s: number[] };
    decode: { tokens_per_s: number; runs_s: number[] };
    time_to_first_token_s: number;
    time_to_first_token_cold_s: number;
    dispatches_per_decode_token: number;
    decode_encode_us_per_token: number;
    [key: string]: unknown;
  };
  pipelinesCompiled: number;
  pipelineCompileS: number;
  context: number;
}

export interface CachedModel {
  url: string;
  /** Undefined while unknown (the server sent no length). */
  size: number | undefined;
  downloaded: number;
  complete: boolean;
  etag: string | undefined;
  lastModified: string | undefined;
}

/** The models kept in this origin's cache, downloads in progress included. */
export function cachedModels(): Promise<CachedModel[]>;

/**
 * Deletes the cached file of `url`, or of every model. Files a loaded model is reading are kept
 * and counted in `inUse`.
 */
export function clearCache(url?: string | URL): Promise<{ removed: number; inUse: number }>;
