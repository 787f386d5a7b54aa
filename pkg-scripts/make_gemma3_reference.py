#!/usr/bin/env python3
"""make_gemma3_reference.py -- offline reference fixtures for gemma-wgpu's Gemma 3 end-to-end tests.

WHAT
    Loads Gemma 3 270M from its GGUF file with Hugging Face transformers in float32
    (transformers dequantizes every GGUF tensor with gguf-py), runs a set of fixed
    prompts, and writes a small JSON file:
      * for every prompt position: the top-10 token ids with their fp32 logits (sorted
        descending) and the logsumexp of the full 262144-wide logits row;
      * 32 greedy steps from each prompt: the chosen ids and the top-1 minus top-2 logit
        margin at each step (small margins = near-ties the Rust side may legitimately
        resolve differently).
    The Rust tests (tests/data/gemma3_270m_reference.json) compare the wgpu engine against
    this file. No Python runs at test time.

WHY
    transformers + gguf-py is an implementation independent of ours. The GGUF weights are
    the very same quantized weights the engine loads, so the only differences that should
    remain are float rounding (the engine may use f16 / different summation orders).

WHAT IT VERIFIES BEFORE TRUSTING transformers (the run aborts if any check fails)
    1. Config: 18 layers, H=640, 4 q heads / 1 kv head, head_dim 256, query_pre_attn_scalar
       256 (scale exactly 1/16), sliding window 512, full attention exactly at i%6==5,
       RoPE theta 10k (sliding) / 1M (full), default (unscaled) RoPE, gelu_pytorch_tanh,
       tied LM head, no attention or final logit softcap, eps 1e-6.
    2. embed_scale is exactly float32(sqrt(640)) (HF keeps it in the weight dtype = fp32 here,
       so there is no bf16 rounding to 25.25; see GEMMA.md s2.2).
    3. Every one of the 236 GGUF tensors, dequantized independently with gguf-py, equals the
       corresponding transformers parameter bit-for-bit; for the *norm.weight tensors the
       check is hf == gguf - 1 exactly (llama.cpp's converter stores 1+w, HF's Gemma3RMSNorm
       computes (1+w); transformers' Gemma2TensorProcessor subtracts 1). If the loader did
       NOT subtract 1 the script would subtract it itself (explicit fix below) and say so in
       the JSON notes.
    4. An independent, from-scratch torch forward pass written from GEMMA.md s2.3 on the raw
       GGUF weights (norm weights used as stored, explicit sliding mask p-W < j <= p, explicit
       NeoX RoPE tables) agrees with transformers on every prompt (logit max-abs-diff and
       argmax agreement are printed and recorded in the notes).
    5. Greedy decoding uses transformers' KV cache; the result is re-checked with one
       full-recompute (no cache) forward over prompt+generated tokens: every greedy id must be
       the argmax there too, and the recorded margins come from that no-cache pass.
    6. Tokenization: ids from the real tokenizer.json via the python `tokenizers` package;
       every prompt text starts with a literal "<bos>" and is encoded with
       add_special_tokens=False (so BOS appears exactly once, as id 2); for the plain prompts
       this equals encode(text_without_bos, add_special_tokens=True). The chat prompt text is
       checked against tokenizer_config.json's chat_template rendered with jinja2.

HOW TO RUN (fresh machine, PyPI only; 5-10 min on 2 shared cores, peak RSS ~9.5 GB)
    python3 -m venv /work/venv-ref
    /work/venv-ref/bin/pip install torch "transformers==5.23.*" gguf accelerate tokenizers numpy sentencepiece
    /work/venv-ref/bin/python pkg-scripts/make_gemma3_reference.py \
        --model /tmp/model/gemma-3-270m-q4_k_m.gguf \
        --tokenizer /tmp/tok/package/models/tokenizer.json \
        --out tests/data/gemma3_270m_reference.json
    (tokenizer_config.json is read from beside tokenizer.json for the chat-template check.)

VERSIONS IT WAS RUN WITH (committed fixture)
    Python 3.11.7, torch 2.15.0 (PyPI wheel, run on CPU), transformers 5.23.0, gguf 0.19.0,
    tokenizers 0.23.3, numpy 2.4.6, jinja2 from torch's dependencies. Exact versions are also
    written into the JSON ("transformers", "torch", "notes").

DETERMINISM
    CPU only, torch.use_deterministic_algorithms(True), a fixed thread count (--threads,
    default 1), eager attention, no sampling. Two runs on the build machine gave identical
    prompt data. Other CPUs / BLAS builds may change the last rounded digit of a logit (and, in
    principle, the order of two exactly-tied top-k entries).

ALSO RECORDED (in "notes", to help choose test tolerances)
    On the long prompt, the independent forward is rerun with three classic mistakes:
    a sliding window that is off by one, the bf16 embedding scale 25.25, and no sliding
    window at all. For each, the notes give the maximum logit change and how many top-1
    tokens flip. Greedy decoding always runs exactly 32 steps; it does not stop at <eos> or
    <end_of_turn>.
"""

import argparse
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch

FORMAT = "gemma-wgpu-reference/1"
GENERATOR = "pkg-scripts/make_gemma3_reference.py"
TOP_K = 10
GREEDY_STEPS = 32
DECIMALS = 5

# ---------------------------------------------------------------------------------------
# Prompts. Written by hand for this fixture; not tuned to make anything pass. Every text
# starts with a literal "<bos>" and is tokenized with add_special_tokens=False.
# ---------------------------------------------------------------------------------------
CHAT_USER_MESSAGE = "Why does the Moon always show the same face to the Earth? Explain it briefly."

LONG_ESSAY = """The Keepers of the Light

For most of recorded history, the edge of the sea was the edge of the known world, and the people who lived along it learned early that the coast was more dangerous than the open water. A ship far from land has room to make mistakes; a ship near land does not. Reefs hide a few feet below the surface, sandbars move with every storm, and headlands that look unmistakable by day dissolve into the same grey blur at night. The lighthouse was the answer that coastal communities gave to this problem, and its story is a small history of engineering, bureaucracy, loneliness and stubborn human care.

The earliest lights were simply fires. Sailors in the ancient Mediterranean watched for bonfires kept burning on hilltops near harbour entrances, and the famous Pharos of Alexandria, built in the third century before the common era, was in essence an enormous chimney with a fire at the top. Ancient writers claimed its light could be seen from dozens of miles away, though such claims should be read with the generosity we extend to all travellers' tales. What is certain is that the Pharos became so closely identified with its purpose that its name passed into several languages as the ordinary word for a lighthouse.

For the next fifteen centuries, progress was slow. Wood, coal and later candles were burned in open braziers or in lanterns glazed with thick, imperfect glass. A coal fire on an exposed tower consumed tons of fuel every winter, and most of its light went straight up into the sky, where it helped nobody. Keepers spent their nights hauling fuel up narrow stairs and their days scraping soot from the glass. On foggy nights, the best fire in the world could not be seen from a ship a mile away, and so many towers also kept bells, guns or, later, steam whistles to warn vessels by sound.

The great change came at the end of the eighteenth century and the beginning of the nineteenth, when two inventions transformed the lighthouse from a bonfire on a stick into a precision instrument. The first was the Argand lamp, which used a hollow circular wick and a glass chimney to draw air through the flame, producing a light several times brighter than a candle while burning less oil. The second was the lens designed by the French physicist Augustin Fresnel. Instead of one thick and heavy piece of glass, Fresnel arranged many concentric rings of prisms around a central lens, each ring shaped to bend the light from the lamp into a single horizontal beam. The result was lighter, cheaper and far more efficient than any mirror or conventional lens of the same size. A first-order Fresnel lens, the largest of the standard sizes, could stand taller than a person and weigh several tons, yet it floated on a bath of mercury so smoothly that a clockwork mechanism could turn it with the push of a falling weight.

Rotation mattered because a lighthouse has to say not only "there is land here" but also "this is which land". A sailor who sees a light on an unfamiliar coast needs to know whether it marks the safe entrance to a harbour or the rocks twenty miles to the south. Lighthouse authorities solved this by giving each light a character: a particular pattern of flashes and dark intervals, sometimes combined with a colour. One light might show a single white flash every five seconds; its neighbour might show two red flashes every ten. These characters were printed in official lists and on charts, and a navigator with a stopwatch could identify a light as surely as a friend recognises a voice on the telephone.

None of this worked without the keepers. The popular image of the lighthouse keeper is a solitary man with a beard and a pipe, but the reality was more varied and often more crowded. Many stations housed two or three families, who tended the lamp in shifts, painted the tower, repaired the machinery, kept the logbook, and reported every passing storm and shipwreck. Women kept lights too, sometimes officially and sometimes unofficially after a husband or father fell ill or died, and several of them became famous for rowing out into heavy seas to rescue the crews of wrecked ships. Children grew up on rocks where the nearest school was a boat ride away, and supply vessels could be delayed for weeks when the weather turned.

The work was repetitive and exacting. The lamp had to be lit at sunset and extinguished at sunrise, the wick trimmed so that it would not smoke, the lens polished until not a single fingerprint remained, and the clockwork wound every few hours through the night. Inspectors arrived without warning and wrote reports on everything from the brightness of the brass to the tidiness of the kitchen. A keeper who let the light go out, even for a few minutes, could lose his position, because a few minutes of darkness at the wrong moment could cost a ship and everyone aboard it.

During the twentieth century, electricity, radio beacons and eventually satellite navigation made the keepers unnecessary. One by one, lights were automated: a timer or a photocell switched the lamp on and off, a small electric bulb replaced the oil flame, and a technician visited a few times a year instead of a family living on the rock. Today a ship's crew can know its position to within a few metres at any hour, in any weather, without looking out of the window at all. Many old towers have been sold, turned into museums or holiday cottages, or simply left to the gulls.

And yet the lights have not entirely disappeared. Most coastal nations still maintain them, partly because electronic systems can fail, and partly because a bright flash on a dark horizon remains the most immediate and reassuring signal a sailor can receive. There is something stubborn about the idea that persists: that a community owes a warning to strangers it will never meet, and that the warning should be kept burning every night, whether or not anyone is watching. The keepers are mostly gone, but the promise they kept is still there, turning slowly above the water."""

PROMPTS = [
    ("prose",
     "<bos>The old bridge had stood over the river for almost two hundred years. Every spring the "
     "water rose until it touched the lowest stones, and every autumn the villagers climbed down "
     "with buckets of mortar to repair whatever the floods had loosened. Nobody remembered who had "
     "built it, but everyone agreed that"),
    ("code_python",
     "<bos>import json\nfrom pathlib import Path\n\n\ndef load_scores(path: Path) -> dict[str, float]:\n"
     "    \"\"\"Read a JSON file of {name: score} and drop entries below zero.\"\"\"\n"
     "    with path.open(encoding=\"utf-8\") as f:\n        raw = json.load(f)\n"
     "    return {name: float(s) for name, s in raw.items() if float(s) >= 0.0}\n\n\n"
     "def top_n(scores: dict[str, float], n: int) -> list[str]:\n"),
    ("code_rust",
     "<bos>use std::collections::HashMap;\n\n/// Counts how often each word occurs in `text`.\n"
     "pub fn word_counts(text: &str) -> HashMap<String, usize> {\n"
     "    let mut counts = HashMap::new();\n    for word in text.split_whitespace() {\n"
     "        let w = word.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase();\n"
     "        if w.is_empty() {\n            continue;\n        }\n"),
    ("chat",
     "<bos><start_of_turn>user\n" + CHAT_USER_MESSAGE + "<end_of_turn>\n<start_of_turn>model\n"),
    ("multilingual",
     "<bos>Le petit café au coin de la rue ouvre à sept heures. Im Winter fährt der letzte Zug "
     "schon um 22 Uhr. 東京の春は桜がとても綺麗です。我们明天早上去图书馆学习。"
     "서울의 겨울은 꽤 춥습니다. ¿Dónde está la estación? Привет, как дела? 🌸🚆☕️👍 And in English:"),
    ("numeric_list",
     "<bos>Inventory count, warehouse B (2024-03-17):\n"
     "1. Steel bolts M8x40: 1,250 pcs @ 0.12 EUR\n"
     "2. Washers 8.4 mm: 3,400 pcs @ 0.03 EUR\n"
     "3. Hex nuts M8: 1,180 pcs @ 0.05 EUR\n"
     "4. Cable ties 200 mm: 960 pcs @ 0.02 EUR\n"
     "5. Wall plugs 6 mm: 2,075 pcs @ 0.04 EUR\n"
     "Total value of items 1-5 ="),
    ("long_essay", "<bos>" + LONG_ESSAY),
]


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def log(*a):
    print(*a, file=sys.stderr, flush=True)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def rnd(x):
    v = round(float(x), DECIMALS)
    return 0.0 if v == 0 else v  # no "-0.0" in the file


def check(cond, msg):
    if not cond:
        raise SystemExit("VERIFICATION FAILED: " + msg)
    log("  ok: " + msg)


# ---------------------------------------------------------------------------------------
# tokenization
# ---------------------------------------------------------------------------------------
def tokenize_prompts(tok_path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tok_path)
    out = []
    for name, text in PROMPTS:
        assert text.startswith("<bos>")
        ids = tok.encode(text, add_special_tokens=False).ids
        check(ids[0] == 2 and ids.count(2) == 1, f"{name}: BOS (2) first and exactly once")
        if name == "chat":
            check(ids.count(105) == 2 and ids.count(106) == 1,
                  "chat: <start_of_turn>/<end_of_turn> became ids 105/106")
        else:
            alt = tok.encode(text[len("<bos>"):], add_special_tokens=True).ids
            check(alt == ids, f"{name}: literal <bos> == tokenizer post-processor BOS")
        out.append((name, text, ids))
    # The chat text must be exactly what the shipped chat template renders.
    cfg_path = os.path.join(os.path.dirname(tok_path), "tokenizer_config.json")
    if os.path.exists(cfg_path):
        import jinja2

        cfg = json.load(open(cfg_path, encoding="utf-8"))
        env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True,
                                 extensions=["jinja2.ext.loopcontrols"])

        def raise_exception(m):
            raise RuntimeError(m)

        env.globals["raise_exception"] = raise_exception
        rendered = env.from_string(cfg["chat_template"]).render(
            messages=[{"role": "user", "content": CHAT_USER_MESSAGE}],
            bos_token="<bos>", add_generation_prompt=True)
        check(rendered == dict(PROMPTS)["chat"], "chat text == tokenizer_config.json chat_template render")
    else:
        log("  (no tokenizer_config.json beside tokenizer.json: chat template not cross-checked)")
    return tok, out


# ---------------------------------------------------------------------------------------
# model loading and verification
# ---------------------------------------------------------------------------------------
def gguf_to_hf_name(n):
    if n == "token_embd.weight":
        return "model.embed_tokens.weight"
    if n == "output_norm.weight":
        return "model.norm.weight"
    parts = n.split(".")
    assert parts[0] == "blk", n
    i, t = parts[1], ".".join(parts[2:])
    m = {
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
    }[t]
    return f"model.layers.{i}.{m}"


def load_raw_gguf(path):
    """Every tensor, dequantized by gguf-py directly (independent of transformers' loader)."""
    import gguf

    r = gguf.GGUFReader(path)
    raw = {}
    for t in r.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type)
        a = np.asarray(a, dtype=np.float32).reshape([int(x) for x in reversed(t.shape.tolist())])
        raw[t.name] = (torch.from_numpy(a.copy()), t.tensor_type.name)
    return raw


def load_and_verify(model_path, raw, notes):
    from transformers import AutoModelForCausalLM

    d, f = os.path.split(os.path.abspath(model_path))
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(
        d, gguf_file=f, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    log(f"loaded {type(model).__name__} in {time.time() - t0:.1f}s")
    c = model.config

    log("config checks:")
    check(type(model).__name__ == "Gemma3ForCausalLM", "model class Gemma3ForCausalLM")
    check(next(model.parameters()).dtype == torch.float32, "parameters are float32")
    check((c.num_hidden_layers, c.hidden_size, c.intermediate_size) == (18, 640, 2048), "L=18 H=640 I=2048")
    check((c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (4, 1, 256), "4 q heads, 1 kv head, head_dim 256")
    check(c.vocab_size == 262144, "vocab 262144")
    check(c.query_pre_attn_scalar == 256, "query_pre_attn_scalar 256")
    for i, layer in enumerate(model.model.layers):
        assert layer.self_attn.scaling == 256 ** -0.5 == 0.0625
    check(True, "every layer's attention scaling == 256**-0.5 == 0.0625")
    check(c.sliding_window == 512, "sliding_window 512")
    want_types = ["full_attention" if i % 6 == 5 else "sliding_attention" for i in range(18)]
    check(list(c.layer_types) == want_types, "layer_types: full at i%6==5 ({5,11,17}), else sliding")
    for i, layer in enumerate(model.model.layers):
        assert layer.self_attn.sliding_window == (None if i % 6 == 5 else 512), i
    check(True, "per-layer sliding_window: 512 on sliding layers, None on full layers")
    rp = c.rope_parameters
    check(rp["sliding_attention"]["rope_theta"] == 10000.0 and rp["sliding_attention"]["rope_type"] == "default",
          "sliding RoPE: theta 10000, default (no scaling)")
    check(rp["full_attention"]["rope_theta"] == 1000000.0 and rp["full_attention"]["rope_type"] == "default",
          "full RoPE: theta 1e6, default (no scaling)")
    re_ = model.model.rotary_emb
    for lt, theta in (("sliding_attention", 1e4), ("full_attention", 1e6)):
        inv = getattr(re_, f"{lt}_inv_freq")
        want = 1.0 / (theta ** (torch.arange(0, 256, 2, dtype=torch.float64) / 256))
        assert torch.allclose(inv.double(), want, rtol=1e-6, atol=0), lt
        assert getattr(re_, f"{lt}_attention_scaling") == 1.0
    check(True, "rotary inv_freq tables == theta^(-2i/256), attention_scaling 1.0")
    check(c.final_logit_softcapping is None and c.attn_logit_softcapping is None, "no final / attention logit softcap")
    check(c.hidden_activation == "gelu_pytorch_tanh", "activation gelu_pytorch_tanh")
    check(abs(c.rms_norm_eps - 1e-6) < 1e-12, f"rms_norm_eps {c.rms_norm_eps!r} (f32 1e-6)")
    check(bool(c.tie_word_embeddings) and model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(),
          "LM head tied to embed_tokens (same storage)")
    es = model.model.embed_tokens.embed_scale
    check(es.dtype == torch.float32 and float(es) == float(np.float32(math.sqrt(640))),
          f"embed_scale is float32(sqrt(640)) = {float(es)!r} (not bf16 25.25)")

    log("weight checks (gguf-py dequantized vs transformers parameters):")
    sd = dict(model.named_parameters())
    norm_mode = None
    n_checked = 0
    for gname, (w, qtype) in raw.items():
        hname = gguf_to_hf_name(gname)
        p = sd[hname].detach()
        assert p.shape == w.shape, (gname, p.shape, w.shape)
        if gname.endswith("norm.weight"):
            if torch.equal(p, w - 1):
                mode = "minus1"
            elif torch.equal(p, w):
                mode = "as_stored"
            else:
                raise SystemExit(f"VERIFICATION FAILED: {gname} is neither gguf-1 nor gguf")
            if norm_mode is None:
                norm_mode = mode
            assert mode == norm_mode, gname
        else:
            assert torch.equal(p, w), f"{gname} ({qtype}) differs from {hname}"
        n_checked += 1
    check(n_checked == len(sd) + 0 and n_checked == 236, f"all {n_checked} GGUF tensors map 1:1 onto HF parameters")
    w_raw = raw["blk.0.attn_norm.weight"][0]
    w_hf = model.model.layers[0].input_layernorm.weight.detach()
    log(f"  blk.0.attn_norm.weight raw[:4]={w_raw[:4].tolist()}  hf input_layernorm[:4]={w_hf[:4].tolist()}")
    if norm_mode == "minus1":
        check(True, "every *norm.weight (incl. q_norm/k_norm) == gguf - 1 exactly: loader undid the converter's +1")
        notes.append("Verified: transformers' GGUF loader subtracts 1 from every Gemma 3 *norm.weight "
                      "(Gemma2TensorProcessor), so HF's (1+w) reproduces the GGUF values exactly; "
                      "no fix was needed.")
    else:
        # Explicit fix: the GGUF stores 1+w; Gemma3RMSNorm computes (1+w) again.
        with torch.no_grad():
            for gname in raw:
                if gname.endswith("norm.weight"):
                    sd[gguf_to_hf_name(gname)].sub_(1.0)
        log("  FIXED: loader kept GGUF norm weights as stored; subtracted 1 explicitly")
        notes.append("FIX APPLIED: transformers kept GGUF norm weights (which include +1) as stored; "
                      "the script subtracted 1 from every *norm.weight.")
    check(True, "all non-norm tensors are bit-identical to gguf-py's dequantization (no q/k permutation)")
    return model


# ---------------------------------------------------------------------------------------
# independent forward pass (GEMMA.md s2.3), raw GGUF weights, norms used as stored
# ---------------------------------------------------------------------------------------
def independent_forward(raw, ids, window=512, embed_scale=None, all_full=False):
    W = lambda n: raw[n][0]
    T = len(ids)
    H, L, nq, d, Wn = 640, 18, 4, 256, window
    eps = 1e-6

    def rms(x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)

    def gelu_tanh(x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))

    pos = torch.arange(T, dtype=torch.float64)
    ropes = {}
    for theta in (1e4, 1e6):
        inv = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        ang = pos[:, None] * inv[None, :]
        ropes[theta] = (torch.cos(ang).float(), torch.sin(ang).float())

    def rope(x, theta):  # x [T, heads, d], NeoX half split
        cos, sin = ropes[theta]
        cos, sin = cos[:, None, :], sin[:, None, :]
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    p = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    causal = j <= p
    sliding = causal & (j > p - Wn)
    E = W("token_embd.weight")
    es = math.sqrt(H) if embed_scale is None else embed_scale
    h = E[torch.tensor(ids)] * torch.tensor(es, dtype=torch.float32)
    for l in range(L):
        b = f"blk.{l}."
        is_full = l % 6 == 5
        theta = 1e6 if is_full else 1e4
        mask = causal if (is_full or all_full) else sliding
        a = rms(h) * W(b + "attn_norm.weight")
        q = (a @ W(b + "attn_q.weight").T).view(T, nq, d)
        k = (a @ W(b + "attn_k.weight").T).view(T, 1, d)
        v = (a @ W(b + "attn_v.weight").T).view(T, 1, d)
        q = rope(rms(q) * W(b + "attn_q_norm.weight"), theta) * (256 ** -0.5)
        k = rope(rms(k) * W(b + "attn_k_norm.weight"), theta)
        s = torch.einsum("thd,shd->hts", q, k.expand(T, nq, d))
        s = s.masked_fill(~mask[None], float("-inf"))
        pr = torch.softmax(s, dim=-1)
        o = torch.einsum("hts,shd->thd", pr, v.expand(T, nq, d)).reshape(T, nq * d)
        o = o @ W(b + "attn_output.weight").T
        h = h + rms(o) * W(b + "post_attention_norm.weight")
        m = rms(h) * W(b + "ffn_norm.weight")
        f = (gelu_tanh(m @ W(b + "ffn_gate.weight").T) * (m @ W(b + "ffn_up.weight").T)) @ W(b + "ffn_down.weight").T
        h = h + rms(f) * W(b + "post_ffw_norm.weight")
    y = rms(h) * W("output_norm.weight")
    return y @ E.T


# ---------------------------------------------------------------------------------------
# scoring and greedy
# ---------------------------------------------------------------------------------------
@torch.no_grad()
def full_logits(model, ids, keep=0):
    out = model(input_ids=torch.tensor([ids]), use_cache=False, logits_to_keep=keep)
    return out.logits[0].float()


@torch.no_grad()
def greedy_cached(model, ids, steps):
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    out = model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True, logits_to_keep=1)
    toks = []
    for s in range(steps):
        nxt = int(torch.argmax(out.logits[0, -1]))
        toks.append(nxt)
        if s + 1 < steps:
            out = model(input_ids=torch.tensor([[nxt]]), past_key_values=out.past_key_values,
                        use_cache=True, logits_to_keep=1)
    return toks


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="path to gemma-3-270m-q4_k_m.gguf")
    ap.add_argument("--tokenizer", required=True, help="path to the real Gemma 3 tokenizer.json")
    ap.add_argument("--out", required=True, help="output JSON path")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed for determinism)")
    ap.add_argument("--skip-independent", action="store_true", help="skip the from-scratch forward cross-check")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    import transformers, tokenizers, gguf  # noqa: F401  (versions)

    notes = []
    log(f"hashing {args.model}")
    sha = sha256_file(args.model)
    log("  sha256 " + sha)

    log("tokenizing:")
    tok, prompts = tokenize_prompts(args.tokenizer)

    log("dequantizing GGUF with gguf-py")
    raw = load_raw_gguf(args.model)
    model = load_and_verify(args.model, raw, notes)

    # sanity: greedy continuation of a classic prompt
    fr_ids = tok.encode("<bos>The capital of France is", add_special_tokens=False).ids
    fr = greedy_cached(model, fr_ids, 8)
    fr_text = tok.decode(fr, skip_special_tokens=False)
    with torch.no_grad():
        fr_top = torch.topk(full_logits(model, fr_ids, keep=1)[-1], 5).indices.tolist()
    fr_top = [tok.decode([i]) for i in fr_top]
    log(f"sanity greedy: 'The capital of France is' -> {fr_text!r}; top-5 next: {fr_top}")
    notes.append(f"Sanity (base, not instruction-tuned, model): greedy 'The capital of France is' -> {fr_text!r}; "
                 f"top-5 next tokens {fr_top}.")

    recs = []
    indep = []
    for name, text, ids in prompts:
        t0 = time.time()
        T = len(ids)
        logits = full_logits(model, ids)                       # [T, V]
        vals, idx = torch.topk(logits, TOP_K, dim=-1, sorted=True)
        lse = torch.logsumexp(logits.double(), dim=-1)
        positions = [{"ids": idx[t].tolist(), "logits": [rnd(x) for x in vals[t].tolist()],
                      "logsumexp": rnd(lse[t])} for t in range(T)]

        if not args.skip_independent:
            ref = independent_forward(raw, ids)
            diff = float((ref - logits).abs().max())
            agree = float((ref.argmax(-1) == logits.argmax(-1)).float().mean())
            log(f"  [{name}] independent forward vs transformers: max|dlogit|={diff:.2e} argmax agree={agree:.4f}")
            indep.append(f"{name}: max|dlogit| {diff:.1e}, argmax agree {agree:.3f}")
            if diff > 1e-2:
                raise SystemExit(f"VERIFICATION FAILED: independent forward disagrees on {name}")
            del ref

        gen = greedy_cached(model, ids, GREEDY_STEPS)
        check(gen[0] == int(idx[-1, 0]), f"{name}: first greedy token == argmax of scoring pass' last row")
        # No-cache re-check over prompt + generated tokens; margins come from this pass.
        full = full_logits(model, ids + gen[:-1], keep=GREEDY_STEPS)  # rows that predicted gen[0..31]
        assert full.shape[0] == GREEDY_STEPS
        top2v, top2i = torch.topk(full, 2, dim=-1, sorted=True)
        check(top2i[:, 0].tolist() == gen, f"{name}: KV-cache greedy == no-cache argmax at all {GREEDY_STEPS} steps")
        margins = (top2v[:, 0] - top2v[:, 1]).tolist()
        del logits, full
        recs.append({
            "name": name, "text": text, "prompt_ids": ids,
            "score": {"top_k": TOP_K, "positions": positions},
            "greedy": {"tokens": gen, "margins": [rnd(m) for m in margins]},
        })
        mg = sorted(margins)
        log(f"  [{name}] T={T} {time.time() - t0:.1f}s greedy={tok.decode(gen)!r} "
            f"min margin {mg[0]:.4f} median {mg[len(mg) // 2]:.4f}")

    if not args.skip_independent:
        # How strongly do the fixtures discriminate the classic mistakes? (long prompt only)
        name, text, ids = prompts[-1]
        base = independent_forward(raw, ids)
        sens = []
        for label, kw in (("sliding window off by one (p-512<=j)", dict(window=513)),
                          ("embed scale bf16 25.25 instead of sqrt(640)", dict(embed_scale=25.25)),
                          ("no sliding window (all layers full)", dict(all_full=True))):
            alt = independent_forward(raw, ids, **kw)
            dl = (alt - base).abs().max(-1).values
            flips = int((alt.argmax(-1) != base.argmax(-1)).sum())
            msg = (f"{label}: max|dlogit| {float(dl.max()):.3f} (positions<512: {float(dl[:512].max()):.1e}), "
                   f"top-1 changes at {flips}/{len(ids)} positions")
            log(f"  sensitivity [{name}] " + msg)
            sens.append(msg)
            del alt
        notes.append(f"Sensitivity on {name} (independent forward, for choosing tolerances): " + "; ".join(sens) + ".")

    if indep:
        notes.append("Independent from-scratch forward (GEMMA.md s2.3 on raw gguf-py weights, norms as stored, "
                     "explicit sliding mask p-512<j<=p) vs transformers: " + "; ".join(indep) + ".")
    notes[:0] = [
        "Reference = transformers Gemma3ForCausalLM, fp32, eager attention, CPU, weights dequantized from the GGUF.",
        "Verified before use: L=18, H=640, 4q/1kv heads, head_dim 256, attention scale exactly 1/16 "
        "(query_pre_attn_scalar 256), sliding window 512 (mask p-512<j<=p) on layers i%6!=5 and full attention on "
        "{5,11,17}, RoPE NeoX half-split theta 1e4 (sliding) / 1e6 (full) unscaled, gelu_tanh, eps 1e-6, tied LM head "
        "(unscaled embedding), no final/attention softcap.",
        "Embedding scale actually used: float32(sqrt(640)) = 25.298221588134766 (exact f32, like llama.cpp; "
        "NOT bf16-rounded 25.25, because the model runs in fp32).",
        "Norms: GGUF norm weights already include +1; HF holds gguf-1 and computes (1+w), i.e. the engine should "
        "multiply by the GGUF weight as stored. All 236 tensors compared bit-exactly with gguf-py's dequantization.",
        "Greedy tokens come from transformers' KV cache and were re-checked with a no-cache forward over "
        "prompt+generated tokens; margins (top1-top2 logit) are from the no-cache pass. Small margins mark near-ties. "
        "Greedy never stops early: always exactly 32 steps, even through <eos>/<end_of_turn>.",
        "Tokenization: every 'text' starts with a literal <bos>; encode it with add_special_tokens=false "
        "(tokenizers crate / tokenizer.json) to get prompt_ids. For non-chat prompts that equals encoding the text "
        "without '<bos>' with add_special_tokens=true.",
        "score.positions[t] is the distribution for the token AFTER prompt_ids[0..=t]; positions[T-1].ids[0] == "
        "greedy.tokens[0]. logits rounded to 5 decimals; logsumexp computed in float64 over all 262144 logits.",
    ]
    notes.append(f"Versions: python {platform.python_version()}, torch {torch.__version__}, transformers "
                 f"{transformers.__version__}, gguf {importlib.metadata.version('gguf')}, tokenizers "
                 f"{tokenizers.__version__}, numpy {np.__version__}; threads {args.threads}.")
    doc = {
        "format": FORMAT,
        "model_file": os.path.basename(args.model),
        "model_sha256": sha,
        "generator": GENERATOR,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "dtype": "float32",
        "notes": " ".join(notes),
        "prompts": recs,
    }
    write_json(doc, args.out)
    log(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")


def write_json(doc, path):
    """Compact but diff-friendly: one score position per line."""
    d = lambda o: json.dumps(o, ensure_ascii=False, separators=(",", ":"))
    lines = ["{"]
    for k in ("format", "model_file", "model_sha256", "generator", "transformers", "torch", "dtype", "notes"):
        lines.append(f" {d(k)}:{d(doc[k])},")
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
    json.loads(text)  # must round-trip
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


if __name__ == "__main__":
    main()
