#!/usr/bin/env python3
"""Write tests/data/tokenizer_ids.json: the reference token ids for tests/data/tokenizer_corpus.txt.

The reference is the real Gemma 3 `tokenizer.json` run through Hugging Face's python `tokenizers`
(the implementation the file was written for). tests/tokenizer.rs builds our tokenizer from the
GGUF metadata instead and must reproduce these ids exactly, so this fixture is what proves the
GGUF -> tokenizer reconstruction (merges derived from scores, added tokens, normalizer) is right.

Usage (in a venv with `pip install tokenizers`):
    python pkg-scripts/make_tokenizer_fixture.py /path/to/gemma3/tokenizer.json

Two modes are recorded:
  * "lines": every line of the corpus (split on "\n" only, nothing else: "\r", "\x0b",
    U+2028 ... stay inside their line) encoded on its own, without BOS;
  * "whole": the whole file as one string, so newline runs between lines are covered.
"""
import hashlib
import json
import sys
from pathlib import Path

from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "data" / "tokenizer_corpus.txt"
OUT = ROOT / "tests" / "data" / "tokenizer_ids.json"
GGUF_VOCAB = 262144  # the GGUF holds 262144 tokens; tokenizer.json adds <image_soft_token> = 262144


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    tok_path = Path(sys.argv[1])
    tok = Tokenizer.from_file(str(tok_path))
    raw = CORPUS.read_bytes()
    text = raw.decode("utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file ends with a newline; that is not an extra empty line

    def enc(s: str) -> list[int]:
        ids = tok.encode(s, add_special_tokens=False).ids
        bad = [i for i in ids if i >= GGUF_VOCAB]
        if bad:
            sys.exit(f"{s!r} encodes to ids {bad} outside the GGUF vocabulary; drop it from the corpus")
        return ids

    data = {
        "source": "Gemma 3 tokenizer.json via python tokenizers, add_special_tokens=False",
        "tokenizer_json_sha256": hashlib.sha256(tok_path.read_bytes()).hexdigest(),
        "corpus_sha256": hashlib.sha256(raw).hexdigest(),
        "lines": [enc(line) for line in lines],
        "whole": enc(text),
    }
    # One line per corpus line keeps diffs of the fixture readable.
    body = ",\n".join(json.dumps(ids) for ids in data["lines"])
    head = {k: v for k, v in data.items() if k not in ("lines", "whole")}
    out = json.dumps(head)[:-1] + ',\n"whole": ' + json.dumps(data["whole"]) + ',\n"lines": [\n' + body + "\n]}\n"
    json.loads(out)  # sanity: it parses
    OUT.write_text(out, encoding="utf-8")
    n_tok = sum(len(x) for x in data["lines"])
    print(f"{len(lines)} lines, {n_tok} tokens (+{len(data['whole'])} whole-file) -> {OUT} ({len(out)} bytes)")


if __name__ == "__main__":
    main()
