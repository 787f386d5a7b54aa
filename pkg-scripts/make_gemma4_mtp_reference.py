#!/usr/bin/env python3
"""make_gemma4_mtp_reference.py -- offline fixtures for Gemma 4 MTP speculative decoding (assistant drafter).

WHAT
    Builds a tiny, randomly initialised Gemma 4 target (`Gemma4ForCausalLM`) and a tiny Gemma 4
    MTP assistant (`Gemma4AssistantForCausalLM`, transformers' reference implementation of Google's
    "-assistant" drafters), distills the assistant briefly on the target's own greedy outputs so that
    its drafts are accepted, converts both with llama.cpp's own `convert_hf_to_gguf.py` (F32), and
    records transformers' fp32 outputs:

      tests/data/gemma4_mtp/gemma4_mtp_target.gguf     the target (arch gemma4)
      tests/data/gemma4_mtp/gemma4_mtp_assistant.gguf  the assistant (arch gemma4-assistant)
      tests/data/gemma4_mtp/gemma4_mtp.json            "gemma-wgpu-reference/1" + "mtp": both configs,
                                                       the assistant GGUF's metadata keys/types and tensor
                                                       names/shapes/types as gguf-py reads them, and per
                                                       prompt: prompt ids, plain greedy (24 tokens), the
                                                       transformers assisted greedy run (k = 3 drafts per
                                                       round) with a per-round draft trace, and the same run
                                                       under llama.cpp's draft conventions (see below).

    The tokenizer is tests/data/gemma4/tokenizer.json (1024 ids, built by make_gemma4_reference.py);
    the chat template embedded in the target is the one of tests/data/gemma4/chat_template.json.

THE MODELS (fp32 in transformers; weights chosen by fixed seeds)
    Target: the shapes of gemma4_tiny_d (make_gemma4_reference.py): H=32, layers S F S F S F, 4 q /
    2 kv heads, head_dim 16 (sliding) / 32 (full; proportional RoPE rotates 4 of 16 pairs), KV-shared
    layers 2..5 (first_shared 2, producers layer 0 sliding and layer 1 full: the E2B layout llama.cpp's
    runtime requires; the last two layers are sliding then full, as llama.cpp's assistant KV sharing
    requires), double-wide MLP on the KV-shared layers (48 / 96), PLE 8, sliding window 8 (every
    prompt wraps it more than twice), final softcap 30 -- but its own seed (4101), so its weights
    differ from gemma4_tiny_d. Initialised exactly like make_gemma4_reference.py (same norm and
    layer_scalar perturbations, same linear/embedding scales).
    Assistant: Gemma4AssistantConfig(use_ordered_embeddings=False, backbone_hidden_size=32) with a
    text config H=48 (llama.cpp requires it to differ from the target's 32), 4 layers S S S F (all
    KV-shared: the config forces num_kv_shared_layers = num_hidden_layers), 4 q heads, head dims and
    KV-head count equal to the target's (its queries attend over the target's K/V), intermediate 128,
    window 8, no PLE, no double-wide MLP, the target's RoPE, its own tied embedding [1024, 48].
    use_ordered_embeddings=False means transformers builds NO centroid head (masked_embedding is None)
    and computes logits with the dense tied head `lm_head(last_hidden_state)`: exactly what the GGUF
    (which never carries the centroid head: the converter drops masked_embedding.*) can express.
    (Google's E2B/E4B assistants use the centroid head in transformers; their GGUFs do not.)
    The assistant starts from the same kind of random init (seed 4102) and is then trained with Adam
    (DISTILL_STEPS = 10 full-batch steps, lr 3e-3, CPU, seconds) to predict the target's greedy tokens (cross-entropy
    on the target's argmax + 0.5 KL to the target's distribution) on prompt + 40 greedy tokens of every
    fixture prompt, with a 3-step unrolled chain (teacher-forced tokens, recurrent h from
    post_projection) under llama.cpp's KV view. The fixture prompts are the training data: the point is
    only that drafts get accepted, and the training is cut short on purpose so that some are rejected:
    the task is easy (teacher-forced top-1 hit 0.76 after 10 steps, 1.00 after 20), and with 20 or
    more steps every draft of the llama.cpp-convention run was accepted, which would leave rejection
    (KV rollback, the h row of a partial accept) untested. transformers' own run accepts less than
    the llama.cpp-convention run because of its different K/V view (below).
    layer_scalar (a buffer) is not trained.
    Nothing is rounded: everything stays f32.

THE ASSISTANT'S INPUTS, POSITIONS AND ATTENTION (both implementations; checked, see notes in the JSON)
    One draft round starts from the last token t of the accepted sequence, at position p (p = number
    of tokens before t), which the target has NOT processed yet (it is the bonus token of the last
    verify, or the first generated token after prefill).
    * Step 0 input: concat(target_embed(t) * float32(sqrt(H_target)) [= 5.656854152679443], h): the
      target's own token_embd row, scaled exactly like the target's input embedding; h is the
      TARGET's hidden state at position p-1 AFTER the final norm (the LM-head input,
      `output_norm(h_L)`, before the logits; transformers: `outputs.hidden_states[-1]`, which Gemma 4
      returns post-norm; llama.cpp: `h_nextn` = the output of `output_norm` in gemma4.cpp). After
      prefill that is the last prompt row; after a verify it is the row of the last accepted draft
      (or of the verified token itself when no draft was accepted): row n_accepted of the verify
      batch [t_prev, d0, d1, d2].
    * x = nextn.pre_projection @ concat(...)   ([2*32] -> [48]), then 4 decoder layers with queries
      only (attn_norm, q_proj, per-head q_norm, RoPE; attention scale 1.0; attn_output,
      post_attention_norm, the gated GELU MLP with its pre/post norms, layer_output_scale), then
      y = output_norm(x), logits = token_embd(assistant) @ y (NO final softcap in either
      implementation, although the GGUF carries final_logit_softcapping = 30), and the next
      h = nextn.post_projection @ y ([48] -> [32], applied to the output_norm OUTPUT).
    * Step j >= 1 input: concat(target_embed(d_{j-1}) * 5.656854, post_projection output of step j-1).
    * RoPE position: p for EVERY draft step of the round (transformers: position_ids = len(input_ids)-1;
      llama.cpp: dp.pos0 for all steps when the memory is shared). Never p+j.
    * K/V: the target's. Sliding layers use the K/V of the target's sliding producer (llama.cpp: the
      target's layer n_layer-2 whose cache is the producer's through KV sharing), full layers the full
      producer's (llama.cpp: layer n_layer-1). The assistant writes no K/V; every step of a round sees
      the same K/V.
    * llama.cpp's view: the target's cache holds positions 0..p-1 (rejected drafts were removed after
      the verify). Mask for a query at p: full layers see 0..p-1; sliding layers see p-W < j < p
      (W-1 entries; llama.cpp's standard SWA mask hides j when p - j >= W).
    * transformers' view: the shared_kv_states of the LAST target forward (the verify of the previous
      round, or the prefill), each cut to its first len(input_ids) = p+1 rows, under the assistant's
      "bidirectional" masks. Let s be the position of that forward's first row and n its row count
      (prefill: s = 0, n = T; verify of [t', d0, d1, d2]: n = 4, and p = s + accepted + 1).
      Full layers (no mask): positions 0..min(p, s+n-1): 0..p-1 after prefill or when every draft was
      accepted, else 0..p where position p holds the K/V of the REJECTED draft (stale).
      Sliding layers: the producer's DynamicSlidingWindowLayer returned its W-1 cached rows + the n
      new ones; the flipped bidirectional sliding mask (|q_idx - kv_idx| <= W, q_idx 0) leaves the LAST
      W+1 rows visible: positions s+n-1-W..s+n-1 (when s >= W-1), i.e. p-W-1..p-1 in the clean case
      (two more than llama.cpp) and, after a rejection, a window shifted forward over the stale rows
      of rejected drafts (positions p..s+n-1).
      So once p > W, transformers' drafts are never computed over llama.cpp's view, and the logits
      differ by whole units even at step 0 of the first round. Per round the JSON records which
      positions transformers' assistant saw and which of them were stale ("tf_view"). For a llama.cpp-
      style engine compare with "assisted_llamacpp" (a whole speculative run with llama.cpp's
      conventions) or with "llamacpp_view_steps" (transformers' exact step inputs, h_in included, under
      llama.cpp's view); transformers' own "steps" are recorded for reference.

WHAT IT VERIFIES (the run aborts when a check fails)
    * Target structure (make_gemma4_reference.check_structure), KV-sharing producers, PLE.
    * Both reloaded HF models have exactly the weights that were set/trained.
    * Every GGUF tensor of both files equals the HF tensor bit for bit after the converter's renames
      (assistant: pre_projection -> nextn.pre_projection, post_projection -> nextn.post_projection,
      layer_scalar -> blk.N.layer_output_scale, ...); GGUF tensors without an HF twin: rope_freqs only.
    * The target GGUF's tokenizer metadata equals that of tests/data/gemma4/gemma4_tiny_a.gguf, and a
      tokenizer rebuilt from it reproduces the prompt ids.
    * transformers' h for the assistant == output of the target's final norm (a hook on model.norm).
    * An independent assistant forward written from the GGUF tensors and metadata (llama.cpp's graph in
      gemma4-assistant.cpp, float64) reproduces transformers' assistant logits and next h when given
      the same K/V view, for every recorded draft step (transformers' own view and llama.cpp's).
    * Every K/V row transformers' assistant saw is identified by position and checked against the
      clean K of the final sequence (stale rows = rejected drafts).
    * Assisted greedy == plain greedy (cached, 24 tokens) for every prompt, under both conventions;
      acceptance > 0 and the mean accepted per round is reported.

HOW TO RUN (CPU only, a few minutes on 2 cores)
    python3 -m venv /tmp/mtp-venv
    /tmp/mtp-venv/bin/pip install "transformers>=5.25" torch numpy safetensors tokenizers jinja2 \\
        accelerate tqdm pyyaml requests   # tqdm/pyyaml/requests: gguf-py
    # llama.cpp: the tree inside the llama-cpp-python 0.3.36 sdist (see make_gemma4_reference.py)
    nice /tmp/mtp-venv/bin/python pkg-scripts/make_gemma4_mtp_reference.py \\
        --llama-cpp /path/to/llama_cpp_python-0.3.36/vendor/llama.cpp --out-dir tests/data/gemma4_mtp
    The converter runs as a subprocess with PYTHONPATH=<llama.cpp>/gguf-py; the files are read back
    with the same gguf-py.

VERSIONS IT WAS RUN WITH (committed fixtures)
    Python 3.11.7, torch 2.15.0 (CPU), transformers 5.25.0, tokenizers 0.23.3, numpy 2.4.6,
    llama.cpp from the llama-cpp-python 0.3.36 sdist (gguf-py 0.19.0). Versions are also in the JSON.

DETERMINISM
    Fixed seeds, CPU, torch.use_deterministic_algorithms(True), one torch thread by default, eager
    attention, no sampling. Re-running reproduces the weights (training included) and the outputs.
"""

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_gemma4_reference as g4  # noqa: E402  (sets the offline environment variables too)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from make_gemma4_reference import F, S, check, dumps, log, rnd  # noqa: E402

FORMAT = g4.FORMAT
GENERATOR = "pkg-scripts/make_gemma4_mtp_reference.py"
TOP_K = g4.TOP_K
GREEDY_STEPS = g4.GREEDY_STEPS
VOCAB = g4.VOCAB
N_DRAFT = 3
TRAIN_GREEDY = 40
DISTILL_STEPS = 10  # longer training gets every llama.cpp-convention draft accepted (see THE MODELS)
DISTILL_LR = 3e-3

TARGET = dict(name="gemma4_mtp_target", outtype="f32", seed=4101,
              hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
              head_dim=16, global_head_dim=32, layer_types=[S, F, S, F, S, F], num_kv_shared_layers=4,
              hidden_size_per_layer_input=8, sliding_window=8, use_double_wide_mlp=True)
ASSISTANT = dict(name="gemma4_mtp_assistant", seed=4102, train_seed=4103,
                 hidden_size=48, intermediate_size=128, num_attention_heads=4, layer_types=[S, S, S, F])

PROMPTS = [g4.PLAIN_PROMPTS[0], g4.PLAIN_PROMPTS[1], g4.PLAIN_PROMPTS[2], g4.PLAIN_PROMPTS[3]]

GGUF_ASSISTANT_GLOBAL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "nextn.pre_projection.weight": "pre_projection.weight",
    "nextn.post_projection.weight": "post_projection.weight",
}


# ---------------------------------------------------------------------------------------
# tokenizer folder (tokenizer.json of tests/data/gemma4 + a tokenizer_config.json)
# ---------------------------------------------------------------------------------------
def write_tokenizer(repo, out_dir):
    src = os.path.join(repo, "tests", "data", "gemma4", "tokenizer.json")
    t = json.load(open(src, encoding="utf-8"))
    template = json.load(open(os.path.join(repo, "tests", "data", "gemma4", "chat_template.json"),
                              encoding="utf-8"))["template"]
    os.makedirs(out_dir, exist_ok=True)
    shutil.copy(src, os.path.join(out_dir, "tokenizer.json"))
    cfg = {
        "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
        "mask_token": "<mask>", "model_max_length": 131072, "tokenizer_class": "GemmaTokenizer",
        "spaces_between_special_tokens": False,
        "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in t["added_tokens"]},
        "extra_special_tokens": [g4.GEMMA4_SPECIALS[i] for i in sorted(g4.GEMMA4_SPECIALS)],
        "chat_template": template,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=1)
    return template


# ---------------------------------------------------------------------------------------
# assistant construction
# ---------------------------------------------------------------------------------------
def make_assistant_config():
    from transformers import Gemma4AssistantConfig, Gemma4TextConfig

    a, t = ASSISTANT, TARGET
    text = Gemma4TextConfig(
        vocab_size=VOCAB, vocab_size_per_layer_input=0, hidden_size=a["hidden_size"],
        intermediate_size=a["intermediate_size"], num_hidden_layers=len(a["layer_types"]),
        layer_types=list(a["layer_types"]), num_attention_heads=a["num_attention_heads"],
        num_key_value_heads=t["num_key_value_heads"], head_dim=t["head_dim"], global_head_dim=t["global_head_dim"],
        num_kv_shared_layers=len(a["layer_types"]), hidden_size_per_layer_input=0,
        sliding_window=t["sliding_window"], use_double_wide_mlp=False, final_logit_softcapping=30.0,
        rope_parameters=json.loads(json.dumps(g4.ROPE)), attention_k_eq_v=False, enable_moe_block=False,
        rms_norm_eps=1e-6, max_position_embeddings=131072, hidden_activation="gelu_pytorch_tanh",
        tie_word_embeddings=True, pad_token_id=0, bos_token_id=2, eos_token_id=1,
    )
    return Gemma4AssistantConfig(text_config=text, backbone_hidden_size=t["hidden_size"],
                                 use_ordered_embeddings=False, tie_word_embeddings=True)


@torch.no_grad()
def init_assistant(model):
    """Same recipe as make_gemma4_reference.init_weights (norm perturbations, layer_scalar U(0.2, 0.9))."""
    g = torch.Generator().manual_seed(ASSISTANT["seed"])
    H = model.config.get_text_config().hidden_size
    for name, p in sorted(model.named_parameters()):
        if name == "lm_head.weight":
            continue
        n = torch.randn(p.shape, generator=g, dtype=torch.float64)
        if name.endswith("norm.weight"):
            centre = 1.0
            if name.endswith("q_norm.weight"):
                centre = math.sqrt(g4.KNOBS["score_std"] / math.sqrt(p.shape[0]))
            v = centre * (1.0 + g4.KNOBS["norm_noise"] * n)
        elif name == "model.embed_tokens.weight":
            v = n * (g4.KNOBS["logit_std"] / math.sqrt(H))
        else:
            assert p.dim() == 2, name
            v = n * (g4.KNOBS["lin_gain"] / math.sqrt(p.shape[1]))
        p.copy_(v.float())
    for name, b in sorted(model.named_buffers()):
        if name.endswith("layer_scalar"):
            b.copy_((0.2 + 0.7 * torch.rand(b.shape, generator=g, dtype=torch.float64)).float())


def rms(x, eps=1e-6):
    return x * torch.pow(x.pow(2).mean(-1, keepdim=True) + eps, -0.5)


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def rope_neox(x, pos, d, theta, factors):
    """x [Q, heads, d]; NeoX half split over the whole head; angle pos*theta^(-2i/d)/factors[i] (llama.cpp)."""
    i = torch.arange(d // 2, dtype=x.dtype)
    ang = pos.to(x.dtype)[:, None] * (theta ** (-2.0 * i / d))[None, :] / factors[None, :]
    c, s = torch.cos(ang)[:, None, :], torch.sin(ang)[:, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def assistant_forward(W, meta, emb_scaled, h, pos, kv, masks, dtype):
    """The graph of llama.cpp's gemma4-assistant.cpp, for Q independent queries.
    W(name) -> tensor (GGUF names); emb_scaled [Q, Ht] (target embedding * sqrt(Ht)); h [Q, Ht];
    pos [Q]; kv {True/False (sliding?): (K [T, nkv, d], V [T, nkv, d])}; masks {True/False: bool [Q, T]}.
    Returns logits [Q, V] (no softcap) and h_next [Q, Ht]."""
    m = lambda k: meta["gemma4-assistant." + k]
    nq = m("attention.head_count")
    swa = list(m("attention.sliding_window_pattern"))
    d_full, d_swa = m("attention.key_length"), m("attention.key_length_swa")
    base, base_swa = m("rope.freq_base"), m("rope.freq_base_swa")
    eps = m("attention.layer_norm_rms_epsilon")
    x = torch.cat([emb_scaled, h], dim=-1) @ W("nextn.pre_projection.weight").T
    Q = x.shape[0]
    for l in range(m("block_count")):
        b = f"blk.{l}."
        sl = bool(swa[l])
        d = d_swa if sl else d_full
        a = rms(x, eps) * W(b + "attn_norm.weight")
        q = (a @ W(b + "attn_q.weight").T).view(Q, nq, d)
        q = rms(q, eps) * W(b + "attn_q_norm.weight")
        fac = torch.ones(d // 2, dtype=dtype) if sl else W("rope_freqs.weight")
        q = rope_neox(q, pos, d, base_swa if sl else base, fac)
        k, v = kv[sl]
        rep = nq // k.shape[1]
        k = k.to(dtype).repeat_interleave(rep, dim=1)
        v = v.to(dtype).repeat_interleave(rep, dim=1)
        sc = torch.einsum("qhd,thd->hqt", q, k)  # scale 1.0
        sc = sc.masked_fill(~masks[sl][None], float("-inf"))
        o = torch.einsum("hqt,thd->qhd", torch.softmax(sc, dim=-1), v).reshape(Q, nq * d)
        x = x + rms(o @ W(b + "attn_output.weight").T, eps) * W(b + "post_attention_norm.weight")
        mm = rms(x, eps) * W(b + "ffn_norm.weight")
        f = (gelu_tanh(mm @ W(b + "ffn_gate.weight").T) * (mm @ W(b + "ffn_up.weight").T)) @ W(b + "ffn_down.weight").T
        x = x + rms(f, eps) * W(b + "post_ffw_norm.weight")
        x = x * W(b + "layer_output_scale.weight")
    y = rms(x, eps) * W("output_norm.weight")
    return y @ W("token_embd.weight").T, y @ W("nextn.post_projection.weight").T


def hf_assistant_names(model):
    """GGUF name -> HF parameter of the assistant (the converter's renames)."""
    sd = dict(model.state_dict())
    out = {}
    for g, h in GGUF_ASSISTANT_GLOBAL.items():
        out[g] = sd[h]
    for i in range(model.config.get_text_config().num_hidden_layers):
        for g, h in g4.GGUF_BLOCK.items():
            key = f"model.layers.{i}.{h}"
            if key in sd:
                out[f"blk.{i}.{g}"] = sd[key]
    return out


def fake_meta(acfg):
    t = acfg.get_text_config()
    return {"gemma4-assistant." + k: v for k, v in {
        "attention.head_count": t.num_attention_heads,
        "attention.sliding_window_pattern": [x == S for x in t.layer_types],
        "attention.key_length": TARGET["global_head_dim"], "attention.key_length_swa": TARGET["head_dim"],
        "rope.freq_base": 1e6, "rope.freq_base_swa": 1e4, "attention.layer_norm_rms_epsilon": t.rms_norm_eps,
        "block_count": t.num_hidden_layers}.items()}


def clean_masks(pos, T, window):
    """llama.cpp's view for queries at `pos` over a cache holding positions 0..T-1 of which only 0..p-1 are valid."""
    j = torch.arange(T)[None, :]
    p = pos[:, None]
    full = j < p
    return {False: full, True: full & (j > p - window)}


# ---------------------------------------------------------------------------------------
# target helpers
# ---------------------------------------------------------------------------------------
@torch.no_grad()
def target_full(model, ids):
    """No-cache forward: logits, post-norm hidden (the assistant's h) and the producers' K/V per layer type."""
    seen = {}
    hk = model.model.norm.register_forward_hook(lambda mod, a, out: seen.__setitem__("norm", out))
    out = model(input_ids=torch.tensor([ids]), use_cache=False, output_hidden_states=True, return_shared_kv_states=True)
    hk.remove()
    hs = out.hidden_states[-1][0]
    check(torch.equal(hs, seen["norm"][0]), "target hidden_states[-1] is the output of the final norm (post-norm h)")
    kv = {sl: (out.shared_kv_states[F if not sl else S][0][0].transpose(0, 1).contiguous(),
               out.shared_kv_states[F if not sl else S][1][0].transpose(0, 1).contiguous()) for sl in (True, False)}
    return out.logits[0].float(), hs, kv


def distill(asst, target, seqs, window, steps):
    """Trains the assistant (all parameters, layer_scalar buffers excepted) on the target's greedy tokens."""
    torch.manual_seed(ASSISTANT["train_seed"])
    emb = target.model.embed_tokens
    data = []
    for ids in seqs:
        logits, hs, kv = target_full(target, ids)
        T = len(ids)
        lab = logits.argmax(-1)  # lab[q] = target's greedy token after position q
        soft = torch.log_softmax(logits.double(), -1).float()
        pos = torch.arange(1, T - N_DRAFT)  # query positions p; step j predicts the token after p+j
        with torch.no_grad():
            e = emb(torch.tensor([ids]))[0]
        data.append((ids, pos, hs, kv, lab, soft, e))
    names = {}
    for g, h in GGUF_ASSISTANT_GLOBAL.items():
        names[g] = h
    for i in range(len(ASSISTANT["layer_types"])):
        for g, h in g4.GGUF_BLOCK.items():
            names[f"blk.{i}.{g}"] = f"model.layers.{i}.{h}"
    params = dict(asst.named_parameters())
    bufs = dict(asst.named_buffers())
    rf = {}

    def W(n):
        if n == "rope_freqs.weight":
            return rf["x"]
        h = names[n]
        return params[h] if h in params else bufs[h]

    dg = TARGET["global_head_dim"]
    ra = int(0.25 * dg // 2)
    rf["x"] = torch.tensor([1.0] * ra + [1e30] * (dg // 2 - ra))
    meta = fake_meta(asst.config)
    opt = torch.optim.Adam([p for n, p in asst.named_parameters() if n != "lm_head.weight"], lr=DISTILL_LR)
    asst.train()
    hist = []
    for step in range(steps):
        opt.zero_grad()
        tot, n, hit = 0.0, 0, [0] * N_DRAFT
        for ids, pos, hs, kv, lab, soft, e in data:
            T = len(ids)
            masks = clean_masks(pos, T, window)
            h = hs[pos - 1]
            for j in range(N_DRAFT):
                tok_e = e[pos + j]
                lg, h = assistant_forward(W, meta, tok_e, h, pos, kv, masks, torch.float32)
                y = lab[pos + j]
                ce = torch.nn.functional.cross_entropy(lg, y, reduction="sum")
                kl = torch.nn.functional.kl_div(torch.log_softmax(lg, -1), soft[pos + j], log_target=True,
                                                reduction="sum")
                tot = tot + ce + 0.5 * kl
                n += len(pos)
                hit[j] += int((lg.argmax(-1) == y).sum())
        (tot / n).backward()
        opt.step()
        if step % 10 == 0 or step == steps - 1:
            npos = sum(len(d[1]) for d in data)
            acc = [h_ / npos for h_ in hit]
            hist.append((step, float(tot.detach() / n), acc))
            log(f"  distill step {step}: loss {float(tot / n):.3f}, teacher-forced top-1 hit per step "
                + ", ".join(f"{a:.2f}" for a in acc))
    asst.eval()
    return hist


# ---------------------------------------------------------------------------------------
# assisted generation (transformers) with a trace
# ---------------------------------------------------------------------------------------
def kv_positions(arr, ref):
    """arr [T', nkv, d] rows of a K array; ref [N, nkv, d] the clean K of the final sequence.
    Returns the position of every row (rows are contiguous positions) and the stale ones (differ from ref)."""
    dist = (arr[:, None] - ref[None]).abs().amax(dim=(-1, -2))  # [T', N]
    ok = dist <= 1e-5
    rows = ok.any(dim=1).nonzero().flatten()
    assert rows.numel() > 0
    r0 = int(rows[0])
    j0 = int(ok[r0].nonzero().flatten()[0])
    pos = [j0 - r0 + r for r in range(arr.shape[0])]
    stale = [p for r, p in enumerate(pos) if p >= ref.shape[0] or not bool(ok[r, p])]
    return pos, stale


def allowed_row(mm, n):
    """Row 0 of a 4D mask (bool or additive float) as bool [n]; None means everything visible."""
    if mm is None:
        return torch.ones(n, dtype=torch.bool)
    row = mm[0, 0, 0]
    return row if row.dtype == torch.bool else row == 0


@torch.no_grad()
def assisted_run(target, asst, ids):
    from transformers import GenerationConfig

    calls = []
    verify = []

    def pre(mod, args, kwargs):
        calls.append({"embeds": kwargs["inputs_embeds"].detach().clone(), "pos": kwargs["position_ids"].clone(),
                      "kv": {k: (v[0].clone(), v[1].clone()) for k, v in kwargs["shared_kv_states"].items()},
                      "mask2d": None if kwargs.get("attention_mask") is None else kwargs["attention_mask"].clone()})

    def post(mod, args, kwargs, out):
        calls[-1]["logits"] = out.logits[0, -1].float().clone()
        calls[-1]["h_next"] = out.last_hidden_state[0, -1].clone()

    def tpre(mod, args, kwargs):
        verify.append(kwargs["input_ids"][0].tolist())

    hs = [asst.register_forward_pre_hook(pre, with_kwargs=True), asst.register_forward_hook(post, with_kwargs=True),
          target.register_forward_pre_hook(tpre, with_kwargs=True)]
    asst.generation_config.num_assistant_tokens = N_DRAFT
    asst.generation_config.num_assistant_tokens_schedule = "constant"
    gc = GenerationConfig(max_new_tokens=GREEDY_STEPS, do_sample=False, num_assistant_tokens=N_DRAFT,
                          eos_token_id=None, pad_token_id=0, bos_token_id=2)
    out = target.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          assistant_model=asst, generation_config=gc)
    for h in hs:
        h.remove()
    return out[0, len(ids):].tolist(), calls, verify


# ---------------------------------------------------------------------------------------
# llama.cpp-convention speculative run (independent forward on GGUF tensors, float64)
# ---------------------------------------------------------------------------------------
@torch.no_grad()
def clean_run(target, asst, Wg, meta, ids, window):
    """Speculative greedy with llama.cpp's draft-mtp conventions (shared memory): the assistant module of
    transformers is given exactly the K/V llama.cpp lets it see (full: 0..p-1; sliding: p-W+1..p-1; with
    q_len 1 transformers' masks then hide nothing), every step at position p. The target is evaluated
    without cache. Every step is also checked against the independent GGUF forward (float64)."""
    emb = target.model.embed_tokens
    seq = list(ids)
    logits, hs, _ = target_full(target, seq)
    out = [int(logits[-1].argmax())]
    seq.append(out[0])
    h = hs[-1]
    rounds, worst = [], 0.0
    while len(out) < GREEDY_STEPS:
        p = len(seq) - 1
        t = seq[-1]
        _, _, kvf = target_full(target, seq[:-1])  # the target's cache: positions 0..p-1
        lo = max(0, p - window + 1)
        skv = {F: tuple(x[:p].transpose(0, 1)[None] for x in kvf[False]),
               S: tuple(x[lo:p].transpose(0, 1)[None] for x in kvf[True])}
        kv64 = {sl: (kvf[sl][0].double(), kvf[sl][1].double()) for sl in kvf}
        masks = clean_masks(torch.tensor([p]), p, window)
        hh = h[None, None]
        tok = t
        steps, drafts, hin = [], [], []
        for j in range(min(N_DRAFT, GREEDY_STEPS - len(out) - 1)):  # the cap transformers and llama.cpp use
            e = emb(torch.tensor([[tok]]))
            hin.append(hh[0, 0].clone())
            o = asst(inputs_embeds=torch.cat([e, hh], dim=-1), position_ids=torch.tensor([[p]]),
                     shared_kv_states=skv, attention_mask=None, use_cache=False)
            lg = o.logits[0, -1].float()
            ilg, ih = assistant_forward(Wg, meta, e[0].double(), hh[0].double(), torch.tensor([p]), kv64, masks,
                                        torch.float64)
            worst = max(worst, float((ilg[0] - lg.double()).abs().max()),
                        float((ih[0] - o.last_hidden_state[0, -1].double()).abs().max()))
            steps.append(topk_rec(lg, tok))
            tok = int(lg.argmax())
            assert tok == int(ilg[0].argmax())
            drafts.append(tok)
            hh = o.last_hidden_state
        vl, vh, _ = target_full(target, seq + drafts)  # verify [t, d0, ...]
        sel = vl[p:].argmax(-1).tolist()  # sel[i] = the target's token after seq[p+i]
        n_acc = 0
        while n_acc < len(drafts) and drafts[n_acc] == sel[n_acc]:
            n_acc += 1
        new = (drafts[:n_acc] + [sel[n_acc]])[: GREEDY_STEPS - len(out)]
        rounds.append({"position": p, "token": t, "h_row": p - 1, "steps": steps, "drafts": drafts,
                       "accepted": n_acc, "h_in": [[rnd(x) for x in v.tolist()] for v in hin]})
        out += new
        seq += new
        h = vh[p + n_acc]
    if worst > 1e-3:
        raise SystemExit(f"VERIFICATION FAILED: independent assistant forward vs transformers (clean view) {worst:.2e}")
    return out, rounds, worst


def topk_rec(lg, tok_in):
    vals, idx = torch.topk(lg.double(), TOP_K)
    return {"input_token": tok_in, "ids": idx.tolist(), "logits": [rnd(v) for v in vals.tolist()],
            "logsumexp": rnd(torch.logsumexp(lg.double(), -1))}


# ---------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------
def save_and_reload(model, cls, name, work, tokdir):
    """Saves `model` with the tokenizer beside it into work/name and loads it back as `cls`
    (fp32, eager attention), aborting unless every tensor reloads bit for bit. Returns the
    directory (the converter's input) and the reloaded model."""
    import torch
    d = os.path.join(work, name)
    model.save_pretrained(d)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tokdir, f), os.path.join(d, f))
    back = cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    back.eval()
    s0, s1 = model.state_dict(), back.state_dict()
    check(s0.keys() == s1.keys() and all(torch.equal(s0[k], s1[k]) for k in s0),
          f"{name} reloaded bit-identical ({len(s0)} tensors)")
    return d, back


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-cpp", required=True, help="llama.cpp source tree (convert_hf_to_gguf.py, gguf-py/)")
    ap.add_argument("--out-dir", required=True, help="output folder, e.g. tests/data/gemma4_mtp")
    ap.add_argument("--work", help="scratch folder for the HF checkpoints (default: a temporary folder)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed for determinism)")
    ap.add_argument("--distill-steps", type=int, default=DISTILL_STEPS, help=argparse.SUPPRESS)  # experiments only
    args = ap.parse_args()
    args.llama_cpp = os.path.abspath(args.llama_cpp)
    sys.path.insert(0, os.path.join(args.llama_cpp, "gguf-py"))
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    import tokenizers
    import transformers
    from transformers import AutoTokenizer, Gemma4AssistantForCausalLM, Gemma4ForCausalLM

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                "numpy": np.__version__, "gguf-py (llama.cpp tree)": g4.gguf_py_version(args.llama_cpp)}
    os.makedirs(args.out_dir, exist_ok=True)
    tmp = None
    work = args.work
    if not work:
        tmp = tempfile.TemporaryDirectory()
        work = tmp.name
    tokdir = os.path.join(work, "tokenizer")
    write_tokenizer(repo, tokdir)
    tok = AutoTokenizer.from_pretrained(tokdir)
    check(len(tok) == VOCAB, f"tokenizer has {VOCAB} ids")
    prompts = []
    for pname, text in PROMPTS:
        pids = tok(text, add_special_tokens=False)["input_ids"]
        check(pids[0] == 2 and pids.count(2) == 1, f"{pname}: {len(pids)} ids, one BOS")
        prompts.append((pname, text, pids))
    W_ = TARGET["sliding_window"]
    check(sum(len(p[2]) > 2 * W_ for p in prompts) >= 2, f"at least two prompts longer than 2 x window {W_}")

    # ---- target
    log("\n=== target ===")
    torch.manual_seed(TARGET["seed"])
    target0 = Gemma4ForCausalLM(g4.make_config(TARGET))
    target0.eval()
    g4.init_weights(target0, TARGET)
    g4.check_structure(target0, TARGET)
    tdir, target = save_and_reload(target0, Gemma4ForCausalLM, TARGET["name"], work, tokdir)
    prod = g4.check_runtime_paths(target, prompts[0][2])
    tgguf = os.path.join(args.out_dir, TARGET["name"] + ".gguf")
    warn = g4.convert(tdir, tgguf, "f32", args.llama_cpp)
    log(f"converted -> {tgguf} ({os.path.getsize(tgguf)} bytes); warnings: {warn}")
    tmeta, ttypes, ttensors, torder = g4.read_gguf(tgguf)
    g4.verify_gguf_tensors(target, ttensors, "f32")
    ref_meta = g4.read_gguf(os.path.join(repo, "tests", "data", "gemma4", "gemma4_tiny_a.gguf"))[0]
    tk_keys = sorted(k for k in ref_meta if k.startswith("tokenizer."))
    check(all(k in tmeta and tmeta[k] == ref_meta[k] for k in tk_keys) and
          sorted(k for k in tmeta if k.startswith("tokenizer.")) == tk_keys,
          f"target GGUF tokenizer metadata == gemma4_tiny_a.gguf's ({len(tk_keys)} keys)")
    gt = g4.gguf_tokenizer(tmeta)
    for pname, text, pids in prompts:
        check(gt.encode(text, add_special_tokens=False).ids == pids, f"{pname}: ids reproduced from the GGUF tokenizer")

    # ---- plain greedy (and training sequences)
    greedy = {}
    train_seqs = []
    for pname, text, pids in prompts:
        gen, rows = g4.greedy_cached(target, pids, max(GREEDY_STEPS, TRAIN_GREEDY))
        greedy[pname] = (gen[:GREEDY_STEPS], rows[:GREEDY_STEPS])
        train_seqs.append(pids + gen)
        log(f"  [{pname}] T={len(pids)} greedy {tok.decode(gen[:GREEDY_STEPS])!r}")

    # ---- assistant
    log("\n=== assistant ===")
    acfg = make_assistant_config()
    torch.manual_seed(ASSISTANT["seed"])
    asst0 = Gemma4AssistantForCausalLM(acfg)
    asst0.eval()
    check(asst0.masked_embedding is None and not acfg.use_ordered_embeddings,
          "use_ordered_embeddings=False: no centroid head, logits = lm_head(last_hidden_state) (dense, tied)")
    check(asst0.lm_head.weight.data_ptr() == asst0.model.embed_tokens.weight.data_ptr(), "assistant LM head tied")
    init_assistant(asst0)
    at = acfg.get_text_config()
    check(at.num_kv_shared_layers == at.num_hidden_layers and all(
        not hasattr(l.self_attn, "k_proj") for l in asst0.model.layers), "assistant layers are all KV-shared (no k/v)")
    hist = distill(asst0, target, train_seqs, W_, args.distill_steps)
    adir, asst = save_and_reload(asst0, Gemma4AssistantForCausalLM, ASSISTANT["name"], work, tokdir)
    agguf = os.path.join(args.out_dir, ASSISTANT["name"] + ".gguf")
    warn = g4.convert(adir, agguf, "f32", args.llama_cpp)
    log(f"converted -> {agguf} ({os.path.getsize(agguf)} bytes); warnings: {warn}")
    ameta, atypes, atensors, aorder = g4.read_gguf(agguf)
    hfmap = hf_assistant_names(asst)
    extra = [n for n in aorder if n not in hfmap]
    for n, (w, ty, shape) in atensors.items():
        if n in hfmap:
            p = hfmap[n].detach().float().reshape(w.shape)
            if not torch.equal(p, w) or ty != "F32":
                raise SystemExit(f"VERIFICATION FAILED: {n} ({ty}) != HF")
    check(set(hfmap) <= set(atensors), f"every assistant HF tensor has a GGUF twin ({len(hfmap)} bit-identical)")
    check(extra == ["rope_freqs.weight"], f"assistant GGUF tensors without an HF twin: {extra}")
    log("assistant GGUF tensors: " + ", ".join(f"{n} {atensors[n][1]} {atensors[n][2]}" for n in aorder))
    log("assistant GGUF metadata: " + ", ".join(f"{k}={ameta[k]!r}" for k in sorted(ameta)
                                                 if k.startswith("gemma4-assistant.")))

    def Wg(n):
        if n == "__target_embd":
            return ttensors["token_embd.weight"][0].double()
        return atensors[n][0].double()

    emb_scale = float(np.float32(math.sqrt(TARGET["hidden_size"])))
    check(float(target.model.embed_tokens.embed_scale) == emb_scale, f"target embed scale {emb_scale}")

    # ---- runs
    recs = []
    summary = []
    indep = []
    for pname, text, pids in prompts:
        log(f"\n[{pname}]")
        gen, rows = greedy[pname]
        tf_gen, calls, verify = assisted_run(target, asst, pids)
        check(tf_gen == gen, f"{pname}: transformers assisted greedy == plain greedy ({len(gen)} tokens)")
        final = pids + gen
        flog, fhs, fkv = target_full(target, final + [0] * 4)  # ref K/V (padding only extends the range)
        # group the assistant calls into rounds: every call of a round has the same position_ids
        groups = []
        for c in calls:
            assert c["pos"].numel() == 1 and c["embeds"].shape[:2] == (1, 1), "one query per assistant call"
            if groups and int(groups[-1][0]["pos"]) == int(c["pos"]):
                groups[-1].append(c)
            else:
                groups.append([c])
        rounds = []
        cur = list(pids) + [gen[0]]
        gi = 1
        for r, cs in enumerate(groups):
            p = int(cs[0]["pos"])
            assert p == len(cur) - 1, (p, len(cur))
            assert len(cs) == min(N_DRAFT, len(pids) + GREEDY_STEPS - len(cur) - 1) or len(cs) == N_DRAFT, len(cs)
            t = cur[-1]
            Ht = TARGET["hidden_size"]
            steps, drafts = [], []
            tok_in = t
            view = None
            clean_steps = []
            for j, c in enumerate(cs):
                e, h = c["embeds"][0, -1, :Ht], c["embeds"][0, -1, Ht:]
                want_e = ttensors["token_embd.weight"][0][tok_in] * emb_scale
                assert torch.equal(e, want_e.float()) or torch.allclose(e, want_e, atol=1e-6), (r, j)
                if j == 0:
                    dh0 = float((h - fhs[p - 1]).abs().max())
                    assert dh0 < 1e-4, f"h is the target's post-norm hidden at p-1 ({dh0:.1e})"
                else:
                    assert torch.equal(h, cs[j - 1]["h_next"])
                lg = c["logits"]
                d = int(lg.argmax())
                steps.append(topk_rec(lg, tok_in))
                # the K/V view transformers used
                kvs = {sl: (c["kv"][S if sl else F][0][0].transpose(0, 1), c["kv"][S if sl else F][1][0].transpose(0, 1))
                       for sl in (True, False)}
                mk = asst.create_attention_masks(c["embeds"].new_zeros(1, 1, at.hidden_size), c["mask2d"], c["kv"])
                vis, masks_tf = {}, {}
                for sl in (True, False):
                    n = kvs[sl][0].shape[0]
                    allowed = allowed_row(mk[S if sl else F], n)
                    masks_tf[sl] = allowed[None]
                    ps, stale = kv_positions(kvs[sl][0], fkv[sl][0])
                    vis[sl] = ([ps[i] for i in range(n) if allowed[i]],
                               [ps[i] for i in range(n) if allowed[i] and ps[i] in stale])
                if j == 0:
                    view = vis
                ilg, ih = assistant_forward(Wg, ameta, e.double()[None], h.double()[None], torch.tensor([p]),
                                            {sl: (kvs[sl][0].double(), kvs[sl][1].double()) for sl in kvs}, masks_tf,
                                            torch.float64)
                dl = float((ilg[0] - lg.double()).abs().max())
                dh = float((ih[0] - c["h_next"].double()).abs().max())
                if dl > 1e-3 or dh > 1e-3:
                    raise SystemExit(f"VERIFICATION FAILED: independent assistant forward vs transformers round {r} "
                                     f"step {j}: logits {dl:.2e}, h {dh:.2e}")
                c["dl"] = dl
                # the same step inputs under llama.cpp's view
                kvc = {sl: (fkv[sl][0][:p].double(), fkv[sl][1][:p].double()) for sl in (True, False)}
                clg, _ = assistant_forward(Wg, ameta, e.double()[None], h.double()[None], torch.tensor([p]), kvc,
                                           clean_masks(torch.tensor([p]), p, W_), torch.float64)
                clean_steps.append(topk_rec(clg[0], tok_in))
                c["dclean"] = float((clg[0] - lg.double()).abs().max())
                drafts.append(d)
                tok_in = d
            # acceptance in this round (against the final output)
            nacc = 0
            while nacc < len(drafts) and gi + nacc < len(gen) and drafts[nacc] == gen[gi + nacc]:
                nacc += 1
            assert [t] + drafts in verify[1:], (r, t, drafts)
            new = gen[gi: gi + nacc + 1]
            full_equal = view[False][0] == list(range(p)) and not view[False][1]
            # the documented rule (docstring): s, n = first position and row count of the last target forward
            s0, n0 = (0, len(pids)) if r == 0 else (rounds[-1]["position"], len(rounds[-1]["drafts"]) + 1)
            e_ = s0 + n0 - 1
            assert view[False][0] == list(range(0, min(p, e_) + 1)), (r, view[False][0][-3:], p, s0, n0)
            assert view[True][0] == list(range(max(0, e_ - W_), e_ + 1)), (r, view[True][0], p, s0, n0)
            assert view[False][1] == [q for q in view[False][0] if q >= p] and \
                view[True][1] == [q for q in view[True][0] if q >= p], (r, view, p)
            rounds.append({
                "round": r, "position": p, "token": t, "h_row": p - 1,
                "h_in": [[float(x) for x in c["embeds"][0, -1, Ht:].tolist()] for c in cs],
                "steps": steps, "drafts": drafts, "accepted": nacc,
                "tf_view": {"full_positions": span(view[False][0]), "full_stale": view[False][1],
                            "sliding_positions": span(view[True][0]), "sliding_stale": view[True][1]},
                "tf_full_view_equals_llamacpp": full_equal,
                "llamacpp_view_steps": clean_steps,
                "max_dlogit_tf_vs_llamacpp_view": rnd(max(c["dclean"] for c in cs)),
            })
            cur += new
            gi += len(new)
        assert cur == final[: len(cur)] and gi + sum(len(v) == 1 for v in verify[1:]) == len(gen), (gi, len(gen))
        for x in rounds:
            log(f"    round {x['round']}: p={x['position']} drafts {x['drafts']} accepted {x['accepted']} "
                f"view {x['tf_view']} max|dlogit| vs llama.cpp view {x['max_dlogit_tf_vs_llamacpp_view']}")
        accs = [x["accepted"] for x in rounds]
        check(True, f"{pname}: every round's K/V view follows the documented rule (full 0..min(p, s+n-1), sliding "
                    f"s+n-1-W..s+n-1, rows at positions >= p stale)")
        check(len(verify) == len(rounds) + 1 + sum(len(v) == 1 for v in verify[1:]),
              f"{pname}: 1 prefill + {len(rounds)} verify forwards with drafts (+ plain steps without drafts)")
        # llama.cpp convention
        cl_gen, cl_rounds, cl_worst = clean_run(target, asst, Wg, ameta, pids, W_)
        check(cl_gen == gen, f"{pname}: llama.cpp-convention speculative greedy == plain greedy")
        caccs = [x["accepted"] for x in cl_rounds]
        log(f"  transformers: {len(rounds)} rounds, accepted {accs} (mean {np.mean(accs):.2f}); "
            f"llama.cpp convention: {len(cl_rounds)} rounds, accepted {caccs} (mean {np.mean(caccs):.2f}); "
            f"full-layer view == llama.cpp's in {sum(x['tf_full_view_equals_llamacpp'] for x in rounds)}/{len(rounds)} "
            f"rounds; independent vs transformers max|d| {max(c['dl'] for c in calls):.1e} (its view), "
            f"{cl_worst:.1e} (llama.cpp view)")
        summary.append((pname, accs, caccs))
        indep.append(f"{pname}: {max(c['dl'] for c in calls):.1e} / {cl_worst:.1e}")
        logits = g4.full_logits(target, pids)
        vals, idx = torch.topk(logits, TOP_K, dim=-1, sorted=True)
        lse = torch.logsumexp(logits.double(), dim=-1)
        positions = [{"ids": idx[q].tolist(), "logits": [rnd(x) for x in vals[q].tolist()], "logsumexp": rnd(lse[q])}
                     for q in range(len(pids))]
        full = g4.full_logits(target, pids + gen[:-1])[len(pids) - 1:]
        top2v, top2i = torch.topk(full, 2, dim=-1, sorted=True)
        check(top2i[:, 0].tolist() == gen and float((rows - full).abs().max()) < 1e-2,
              f"{pname}: cached greedy == no-cache argmax")
        margins = [rnd(m) for m in (top2v[:, 0] - top2v[:, 1]).tolist()]
        recs.append({"name": pname, "text": text, "prompt_ids": pids,
                     "score": {"top_k": TOP_K, "positions": positions},
                     "greedy": {"tokens": gen, "margins": margins},
                     "assisted_transformers": {"tokens": tf_gen, "n_draft": N_DRAFT, "rounds": rounds,
                                               "accepted_per_round": accs},
                     "assisted_llamacpp": {"tokens": cl_gen, "n_draft": N_DRAFT, "rounds": cl_rounds,
                                           "accepted_per_round": caccs}})
    allacc = [a for _, accs, _ in summary for a in accs]
    allc = [a for _, _, x in summary for a in x]
    check(sum(allacc) > 0 and sum(allc) > 0, f"acceptance > 0: transformers mean {np.mean(allacc):.2f} "
          f"accepted/round over {len(allacc)} rounds, llama.cpp convention mean {np.mean(allc):.2f} over {len(allc)}")

    write_doc(args, versions, target, asst, ameta, atypes, atensors, aorder, tgguf, agguf, recs, hist, summary,
              prod, indep)
    if tmp:
        tmp.cleanup()
    log("\nfiles:")
    for f in sorted(os.listdir(args.out_dir)):
        log(f"  {f}: {os.path.getsize(os.path.join(args.out_dir, f))} bytes")


def min_margin(recs, run, key):
    return min(st["logits"][0] - st["logits"][1] for r in recs for rd in r[run]["rounds"] for st in rd[key])


def span(ps):
    if not ps:
        return []
    assert ps == list(range(ps[0], ps[-1] + 1)), ps
    return [ps[0], ps[-1]]


def write_doc(args, versions, target, asst, ameta, atypes, atensors, aorder, tgguf, agguf, recs, hist, summary,
              prod, indep):
    W_ = TARGET["sliding_window"]
    allt = [a for _, x, _ in summary for a in x]
    allc = [a for _, _, x in summary for a in x]
    cfg_t = json.loads(target.config.to_json_string(use_diff=False))
    cfg_a = json.loads(asst.config.to_json_string(use_diff=False))
    for c in (cfg_t, cfg_a):
        c.pop("_name_or_path", None)
    meta_out = {}
    for k in sorted(ameta):
        v = ameta[k]
        if k.startswith("tokenizer.") and isinstance(v, list) and len(v) > 16:
            v = {"len": len(v), "first": v[:4]}
        elif k == "tokenizer.chat_template":
            v = {"len": len(v)}
        meta_out[k] = {"type": atypes[k], "value": v}
    tensors_out = [{"name": n, "type": atensors[n][1], "shape": atensors[n][2]} for n in aorder]
    notes = [
        "Reference = transformers " + versions["transformers"] + " Gemma4ForCausalLM (target) + Gemma4AssistantForCausalLM "
        "(assistant, use_ordered_embeddings=False: dense tied head, no centroid head), fp32, eager attention, CPU, "
        "both loaded with from_pretrained from the directories that were converted. Random target (seed "
        f"{TARGET['seed']}); the assistant was distilled on the target's greedy outputs of these very prompts "
        f"({DISTILL_STEPS} Adam steps, lr {DISTILL_LR}); the text is meaningless, only the numbers matter.",
        f"Target: L=6 (S F S F S F), H={TARGET['hidden_size']}, 4 q / 2 kv heads, head_dim 16 (sliding) / 32 (full), window "
        f"{W_}, KV-shared layers 2..5 (producers: sliding {prod[S]}, full {prod[F]}), double-wide MLP on KV-shared layers "
        "(48 / 96), PLE 8, final softcap 30, proportional RoPE (0.25, theta 1e6) on full layers, theta 1e4 on sliding.",
        f"Assistant: 4 layers (S S S F), H={ASSISTANT['hidden_size']}, backbone (target) H={TARGET['hidden_size']}, 4 q heads, "
        "head dims / kv heads / window / RoPE = the target's, intermediate 128, no PLE. GGUF arch gemma4-assistant; "
        "embedding_length = 48 (its own), embedding_length_out = 32 (the target's H), nextn_predict_layers = block_count = "
        "4, shared_kv_layers = 4. The file still carries final_logit_softcapping = 30, but NEITHER transformers' "
        "Gemma4AssistantForCausalLM NOR llama.cpp's gemma4-assistant graph applies a softcap: assistant logits are raw "
        "token_embd . output_norm(x). Tensors: token_embd [48,1024] (tied head), nextn.pre_projection [64,48] "
        "(ne order; torch [48, 2*32]), nextn.post_projection [48,32] (torch [32,48]), per layer attn_norm, attn_q, "
        "attn_q_norm, attn_output, post_attention_norm, ffn_norm, ffn_gate/up/down, post_ffw_norm, layer_output_scale; "
        "rope_freqs [16] (1.0 x4, 1e30 x12). No attn_k/attn_v/attn_k_norm, no masked_embedding.*.",
        "Every GGUF tensor (both files) equals the transformers tensor bit for bit (F32); only rope_freqs has no twin.",
        "Assistant step (both implementations): x = pre_projection . concat(E_target[tok] * float32(sqrt(H_target)) = "
        f"E_target[tok] * {float(np.float32(math.sqrt(TARGET['hidden_size'])))!r}, h), E_target = the TARGET's token_embd; 4 layers: a = rms(x)*attn_norm; q = rms_per_head(Wq a)*q_norm; q = RoPE(q, p) "
        "(NeoX, rope_freqs on the full layer); attention over the target's K/V with scale 1.0, GQA 4/2; "
        "x += rms(Wo o)*post_attention_norm; x += rms(mlp(rms(x)*ffn_norm))*post_ffw_norm; x *= layer_output_scale; "
        "y = rms(x)*output_norm; logits = token_embd . y (no softcap); h_next = post_projection . y.",
        "h (step 0 of a round) = the TARGET's hidden state AFTER its final norm (output_norm, the LM-head input) at "
        "position p-1, where p is the position of the round's first input token t (verified: transformers' "
        "hidden_states[-1] equals the output of model.norm; llama.cpp's gemma4.cpp exposes the same tensor as h_nextn). "
        "After prefill: the last prompt row. After a verify of [t', d0, d1, d2]: row n_accepted. Steps j >= 1: "
        "token = the previous draft, h = the previous step's post_projection output.",
        "Positions: every draft step of a round uses RoPE position p (the position of t, which the target has not "
        "processed yet), never p+j: transformers passes position_ids = len(input_ids)-1 for all steps, llama.cpp "
        "dp.pos0 for all steps when the assistant shares the target's memory.",
        f"llama.cpp's K/V view (assisted_llamacpp and llamacpp_view_steps): the target's cache holds exactly positions "
        f"0..p-1 (rejected drafts removed after each verify); full layers see 0..p-1; sliding layers see p-W < j < p "
        f"(W-1 = {W_ - 1} positions; standard SWA mask p - j < W). Sliding layers read the K/V of the target's sliding "
        "producer (llama.cpp: target layer n_layer-2, which shares the producer's cache), full layers the full "
        "producer's (layer n_layer-1).",
        f"transformers' K/V view (assisted_transformers.rounds[].tf_view, verified row by row against the clean K of the "
        f"final sequence): the shared_kv_states of the last target forward, each cut to its first len(input_ids) = p+1 "
        f"rows. With s = the position of that forward's first row and n its row count (prefill: s = 0, n = T; verify: "
        f"n = drafts + 1; then p = s + accepted + 1): full layers (no mask) see 0..min(p, s+n-1); sliding layers see the "
        f"last W+1 = {W_ + 1} rows of the producer's DynamicSlidingWindowLayer output (its W-1 cached rows + the n new "
        f"ones; the flipped bidirectional mask keeps |q_idx-kv_idx| <= W), i.e. positions s+n-1-W..s+n-1 (for "
        f"s >= W-1, as in every round here). Positions >= p in a view hold the K/V of REJECTED drafts (stale). Clean "
        f"case (prefill, or every draft accepted): full 0..p-1 = llama.cpp's, sliding p-W-1..p-1 = two positions more "
        f"than llama.cpp's p-W+1..p-1. So transformers' drafts are never computed over llama.cpp's view here, and "
        f"their logits differ by whole units; NOTES' 'compare drafts only on accepted ones + the first rejected' does "
        f"not hold even for the first round. Compare a llama.cpp-style engine with assisted_llamacpp (a whole run with "
        f"llama.cpp's conventions) or llamacpp_view_steps (transformers' exact step inputs, h_in included, under "
        f"llama.cpp's view); steps[] of assisted_transformers are transformers' own outputs, for reference.",
        "assisted_llamacpp: speculative greedy run with llama.cpp's conventions, drafts by transformers' assistant module "
        "given exactly llama.cpp's K/V rows (with one query and no extra rows, transformers' masks hide nothing), target "
        "verified without cache; k = 3 drafts per round, fewer when fewer than 4 tokens remain to the 24 (the cap "
        "min(k, max_new - generated - 1) both implementations use; 0 drafts -> a plain step, recorded as a round with "
        "no drafts). h_in[j] = the exact f32 h given to step j. Accepted = the length of the prefix of drafts equal to "
        "the target's greedy tokens; the round then adds accepted + 1 tokens.",
        "An independent float64 forward of the assistant from the GGUF tensors and metadata (llama.cpp's graph) matches "
        "transformers' assistant on every recorded step, max|dlogit or dh| (transformers' view / llama.cpp's view): "
        + "; ".join(indep) + ".",
        "Acceptance (mean accepted drafts per round, k=3): transformers " + f"{np.mean(allt):.2f} over {len(allt)} rounds"
        + ", llama.cpp conventions " + f"{np.mean(allc):.2f} over {len(allc)} rounds; per prompt: "
        + "; ".join(f"{n}: tf {x} / llama.cpp {y}" for n, x, y in summary) + ".",
        f"Smallest top1-top2 logit margin of a draft step: {min_margin(recs, 'assisted_llamacpp', 'steps'):.5f} "
        f"(assisted_llamacpp), {min_margin(recs, 'assisted_transformers', 'llamacpp_view_steps'):.5f} "
        "(llamacpp_view_steps); of the target's greedy tokens: "
        f"{min(m for r in recs for m in r['greedy']['margins']):.5f}.",
        "Both assisted runs give exactly the plain greedy tokens (asserted). Plain greedy: DynamicCache, 24 steps, no stop "
        "tokens; each token is the argmax of a no-cache forward; margins (top1-top2) from that pass. score.positions "
        "as in tests/data/gemma4/*.json (target logits after the final softcap, top-10 + logsumexp per prompt position).",
        "Distillation loss history (step, loss, teacher-forced top-1 hit per draft step): "
        + "; ".join(f"{s_} {l_:.3f} {[round(a, 2) for a in acc]}" for s_, l_, acc in hist) + ".",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
    ]
    doc = {"format": FORMAT, "model_file": os.path.basename(tgguf), "model_sha256": g4.sha256_file(tgguf),
           "assistant_file": os.path.basename(agguf), "assistant_sha256": g4.sha256_file(agguf),
           "generator": GENERATOR, "transformers": versions["transformers"], "torch": versions["torch"],
           "dtype": "float32", "config": cfg_t, "assistant_config": cfg_a,
           "assistant_gguf": {"metadata": meta_out, "tensors": tensors_out}, "notes": notes, "prompts": recs}
    d = dumps
    lines = ["{"]
    for k in ("format", "model_file", "model_sha256", "assistant_file", "assistant_sha256", "generator",
              "transformers", "torch", "dtype"):
        lines.append(f" {d(k)}:{d(doc[k])},")
    lines.append(f' "config":{d(cfg_t)},')
    lines.append(f' "assistant_config":{d(cfg_a)},')
    lines.append(' "assistant_gguf":{"metadata":{')
    mk = list(meta_out)
    lines += [f"   {d(k)}:{d(meta_out[k])}" + ("," if i + 1 < len(mk) else "") for i, k in enumerate(mk)]
    lines.append('  },"tensors":[')
    lines += ["   " + d(t) + ("," if i + 1 < len(tensors_out) else "") for i, t in enumerate(tensors_out)]
    lines.append("  ]},")
    lines.append(' "notes":[')
    lines += ["  " + d(n) + ("," if i + 1 < len(notes) else "") for i, n in enumerate(notes)]
    lines.append(" ],")
    lines.append(' "prompts":[')
    for pi, p in enumerate(recs):
        lines.append("  {")
        for k in ("name", "text", "prompt_ids"):
            lines.append(f"   {d(k)}:{d(p[k])},")
        lines.append(f'   "score":{{"top_k":{TOP_K},"positions":[')
        pos = p["score"]["positions"]
        lines += ["    " + d(q) + ("," if i + 1 < len(pos) else "") for i, q in enumerate(pos)]
        lines.append("   ]},")
        lines.append(f'   "greedy":{d(p["greedy"])},')
        for key in ("assisted_transformers", "assisted_llamacpp"):
            a = p[key]
            lines.append(f'   {d(key)}:{{"tokens":{d(a["tokens"])},"n_draft":{a["n_draft"]},'
                         f'"accepted_per_round":{d(a["accepted_per_round"])},"rounds":[')
            lines += ["    " + d(r) + ("," if i + 1 < len(a["rounds"]) else "") for i, r in enumerate(a["rounds"])]
            lines.append("   ]}" + ("," if key == "assisted_transformers" else ""))
        lines.append("  }" + ("," if pi + 1 < len(recs) else ""))
    lines += [" ]", "}"]
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == json.loads(json.dumps(doc))
    out = os.path.join(args.out_dir, "gemma4_mtp.json")
    with open(out, "w", encoding="utf-8") as f:
        f.write(text)
    log(f"wrote {out} ({os.path.getsize(out)} bytes)")


if __name__ == "__main__":
    main()
