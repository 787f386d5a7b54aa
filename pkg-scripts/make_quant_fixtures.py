#!/usr/bin/env python3
"""Writes tests/data/quant_blocks.bin: GGUF block fixtures for every tensor type the engine
runs, with gguf-py's own dequantization of them, so `tests/quant.rs` can check the Rust
dequantizers bit for bit without Python at test time.

OFFLINE ONLY. Usage (venv outside the repo):
    python3 -m venv /work/venv-quant && /work/venv-quant/bin/pip install gguf numpy
    /work/venv-quant/bin/python pkg-scripts/make_quant_fixtures.py [/tmp/model/gemma-3-270m-q4_k_m.gguf]

Blocks per type: seeded random bytes whose f16 scale fields are replaced by sane finite values
(random bytes would give NaN/inf scales that say nothing about the decoder), plus, when the
model file is given, real blocks taken from the first tensor of that type in the file.

File format (little-endian):
    b"QBLK", u32 version = 1, u32 n_records
    record: u32 ggml_type, u32 source (0 random, 1 real), u32 n_bytes, bytes[n_bytes],
            u32 n_elems, f32[n_elems] (gguf.quants.dequantize output)
"""
import struct
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "quant_blocks.bin"
RNG = np.random.default_rng(20251124)

# Byte offsets of the f16 scale fields inside one block, per type.
F16_FIELDS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}
# Random blocks per type (256-element super-blocks are bigger, so fewer of them).
N_RANDOM = {T.Q4_K: 24, T.Q5_K: 24, T.Q6_K: 24}
N_REAL = 8


def sane_f16(n):
    """Finite f16 values of either sign spanning typical scale magnitudes, a few subnormal."""
    mag = np.exp2(RNG.uniform(-20, 2, n)).astype(np.float32)
    sign = np.where(RNG.random(n) < 0.5, -1.0, 1.0).astype(np.float32)
    return (mag * sign).astype(np.float16)


def random_blocks(ty):
    elems, size = GGML_QUANT_SIZES[ty]
    if ty == T.F32:
        v = (RNG.standard_normal(256) * np.exp2(RNG.uniform(-10, 10, 256))).astype(np.float32)
        v[:4] = [0.0, -0.0, np.float32(1e-40), np.inf]
        return v.view(np.uint8)
    if ty == T.F16:
        v = sane_f16(256)
        v[:4] = np.array([0.0, -0.0, 6e-8, np.inf], dtype=np.float16)
        return v.view(np.uint8)
    if ty == T.BF16:
        bits = RNG.integers(0, 1 << 16, 256, dtype=np.uint32).astype(np.uint16)
        exp = (bits >> 7) & 0xFF
        bits = np.where(exp == 0xFF, bits & 0x807F, bits).astype(np.uint16)  # no NaN/inf
        return bits.view(np.uint8)
    n = N_RANDOM.get(ty, 64)
    blocks = RNG.integers(0, 256, (n, size), dtype=np.uint8)
    for off in F16_FIELDS[ty]:
        blocks[:, off:off + 2] = sane_f16(n).view(np.uint8).reshape(n, 2)
    return blocks.reshape(-1)


def real_blocks(reader, ty):
    elems, size = GGML_QUANT_SIZES[ty]
    for t in reader.tensors:
        if t.tensor_type != ty:
            continue
        raw = np.asarray(t.data).view(np.uint8).reshape(-1)
        if ty in (T.F32, T.F16, T.BF16):
            n = min(raw.size // size, 64) * size
            return t.name, raw[:n]
        n_blocks = raw.size // size
        # Spread the picks over the tensor: rows near the start, middle and end.
        picks = np.linspace(0, n_blocks - 1, N_REAL).astype(np.int64)
        blocks = raw.reshape(n_blocks, size)[picks]
        return t.name, blocks.reshape(-1)
    return None, None


def main():
    model = sys.argv[1] if len(sys.argv) > 1 else "/tmp/model/gemma-3-270m-q4_k_m.gguf"
    reader = gguf.GGUFReader(model) if Path(model).exists() else None
    types = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]
    records = []
    for ty in types:
        records.append((ty, 0, random_blocks(ty)))
        if reader is not None and ty in (T.F32, T.Q5_0, T.Q8_0, T.Q4_K, T.Q6_K):
            name, data = real_blocks(reader, ty)
            if data is not None:
                print(f"{ty.name}: {data.size} real bytes from `{name}`")
                records.append((ty, 1, data))
    out = bytearray(b"QBLK" + struct.pack("<II", 1, len(records)))
    for ty, source, data in records:
        data = np.ascontiguousarray(data, dtype=np.uint8)
        deq = gguf.quants.dequantize(data, ty).astype(np.float32, copy=False).reshape(-1)
        out += struct.pack("<III", int(ty), source, data.size) + data.tobytes()
        out += struct.pack("<I", deq.size) + deq.tobytes()
    OUT.write_bytes(bytes(out))
    print(f"wrote {OUT} ({len(out)} bytes, {len(records)} records)")


if __name__ == "__main__":
    main()
