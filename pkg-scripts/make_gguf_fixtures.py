#!/usr/bin/env python3
"""Write the small GGUF fixtures used by tests/gguf.rs.

Run from the repository root, with gguf-py and numpy installed (in a venv outside the repo):

    python3 -m venv /work/venv-gguf && /work/venv-gguf/bin/pip install gguf numpy
    /work/venv-gguf/bin/python pkg-scripts/make_gguf_fixtures.py

It writes, under tests/data/:
  gguf_v3.gguf          GGUF v3, one metadata key of every value type (nested arrays too),
                        general.alignment = 64, tensors of several types and ranks;
  gguf_v2.gguf          GGUF v2 (the writer's v3 output with the version field patched: the two
                        versions share one layout), default alignment 32;
  gguf_expected.json    what gguf-py's own GGUFReader sees in both files (tensor offsets, sizes,
                        data offset), so the Rust reader is checked against an independent one.

Tensor data are deterministic byte patterns, so tests can check that the reader points at the
right bytes. The output is deterministic: re-running must not change the committed files.
"""

import json
import struct
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter, GGMLQuantizationType as Q
from gguf.constants import GGML_QUANT_SIZES

OUT = Path("tests/data")


def pattern(n: int, seed: int) -> np.ndarray:
    """n bytes of a simple, seed-dependent pattern."""
    return ((np.arange(n, dtype=np.uint64) * 7 + seed * 13) % 251).astype(np.uint8)


def raw(ty: Q, rows: int, row_len: int, seed: int) -> tuple[np.ndarray, Q]:
    """A quantized tensor of `rows` rows of `row_len` elements, as bytes gguf-py can write."""
    blck, size = GGML_QUANT_SIZES[ty]
    assert row_len % blck == 0
    return pattern(rows * row_len // blck * size, seed).reshape(rows, row_len // blck * size), ty


def write_v3(path: Path) -> None:
    w = GGUFWriter(str(path), "testarch")
    w.add_custom_alignment(64)
    w.add_name("fixture v3")
    # Scalars: one of every type, with values that only fit their own type where possible.
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4_000_000_000)
    w.add_int32("test.i32", -2_000_000_000)
    w.add_float32("test.f32", 1.5)
    w.add_bool("test.bool", True)
    w.add_bool("test.bool_false", False)
    w.add_string("test.string", "héllo wörld ✓")
    w.add_key_value("test.empty_string", "", GGUFValueType.STRING)  # add_string skips ""
    w.add_uint64("test.u64", 2**40 + 1)
    w.add_int64("test.i64", -(2**40))
    w.add_float64("test.f64", 3.141592653589793)
    w.add_uint32("test.small_u64_as_u32", 7)  # read back through u64() and u32()
    w.add_int32("test.negative_i32", -5)  # must not be accepted by u32()
    # Arrays: one of every element type.
    A = GGUFValueType.ARRAY
    w.add_key_value("test.array.u8", [1, 2, 255], A, sub_type=GGUFValueType.UINT8)
    w.add_key_value("test.array.i8", [-1, 2, -128], A, sub_type=GGUFValueType.INT8)
    w.add_key_value("test.array.u16", [1, 65535], A, sub_type=GGUFValueType.UINT16)
    w.add_key_value("test.array.i16", [-1, 32767], A, sub_type=GGUFValueType.INT16)
    w.add_key_value("test.array.u32", [0, 4_000_000_000], A, sub_type=GGUFValueType.UINT32)
    w.add_array("test.array.i32", [1, 2, 3, 2_000_000_000])
    w.add_array("test.array.f32", [0.5, -1.25, 3.0])
    w.add_array("test.array.bool", [True, False, True])
    w.add_array("test.array.string", ["a", "", "ünïcødé", "<start_of_turn>"])
    w.add_key_value("test.array.u64", [1, 2**63], A, sub_type=GGUFValueType.UINT64)
    w.add_key_value("test.array.i64", [-(2**63), 5], A, sub_type=GGUFValueType.INT64)
    w.add_key_value("test.array.f64", [1e300, -0.5], A, sub_type=GGUFValueType.FLOAT64)
    w.add_array("test.array.nested", [[1, 2], [3, 4, 5]])
    w.add_array("test.array.nested_mixed", [["x", "y"], [1.5], [[True]]])
    w.add_array("test.array.negative_i32", [1, -1])
    # A vocabulary-like string array, long enough that progressive reading resumes inside it.
    w.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(300)])

    # Tensors. numpy shapes are (rows, row_len); GGUF stores ne = reversed shape.
    w.add_tensor("f32.matrix", np.arange(15, dtype=np.float32).reshape(5, 3))
    w.add_tensor("f16.vector", (np.arange(7, dtype=np.float16) - 3) / 4)
    w.add_tensor("i32.4d", np.arange(120, dtype=np.int32).reshape(2, 3, 4, 5))
    bf16 = pattern(2 * 8 * 2, 1).reshape(2, 16)
    w.add_tensor("bf16.matrix", bf16, raw_dtype=Q.BF16)
    for i, (name, ty, rows, row_len) in enumerate(
        [
            ("q4_0.weight", Q.Q4_0, 2, 64),
            ("q5_0.weight", Q.Q5_0, 3, 32),
            ("q8_0.weight", Q.Q8_0, 2, 96),
            ("q4_k.weight", Q.Q4_K, 2, 256),
            ("q6_k.weight", Q.Q6_K, 1, 512),
            ("q2_k.unsupported", Q.Q2_K, 1, 256),
        ]
    ):
        data, ty = raw(ty, rows, row_len, i + 2)
        w.add_tensor(name, data, raw_dtype=ty)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_v2(path: Path) -> None:
    w = GGUFWriter(str(path), "testarch")
    w.add_name("fixture v2")
    w.add_uint32("test.u32", 42)
    w.add_string("test.string", "v2")
    w.add_tensor("a", np.arange(6, dtype=np.float32).reshape(2, 3))
    w.add_tensor("b", np.arange(5, dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = bytearray(path.read_bytes())
    assert struct.unpack_from("<I", data, 4)[0] == 3
    struct.pack_into("<I", data, 4, 2)
    path.write_bytes(bytes(data))


def describe(path: Path) -> dict:
    r = GGUFReader(str(path))
    return {
        "file_size": path.stat().st_size,
        "data_offset": int(r.data_offset),
        "alignment": int(r.alignment),
        "n_kv": len([k for k in r.fields if not k.startswith("GGUF.")]),
        "tensors": [
            {
                "name": t.name,
                "dims": [int(d) for d in t.shape],
                "type": t.tensor_type.name,
                "offset": int(t.data_offset),
                "n_bytes": int(t.n_bytes),
            }
            for t in r.tensors
        ],
    }


def main() -> None:
    if not OUT.is_dir():
        sys.exit("run from the repository root (tests/data must exist)")
    v3, v2 = OUT / "gguf_v3.gguf", OUT / "gguf_v2.gguf"
    write_v3(v3)
    write_v2(v2)
    expected = {"v3": describe(v3), "v2": describe(v2)}
    (OUT / "gguf_expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    for p in (v3, v2):
        size = p.stat().st_size
        assert size < 50_000, f"{p} is {size} bytes; keep fixtures small"
        print(f"{p}: {size} bytes")


if __name__ == "__main__":
    main()
