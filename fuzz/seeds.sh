#!/usr/bin/env bash
# Writes the seed corpora (fuzz/seeds/TARGET/) from the repository's test fixtures, once; they
# are generated rather than committed. Run from anywhere; scripts/fuzz.sh calls it.
set -euo pipefail
cd "$(dirname "$0")"
[ -f seeds/.done ] && exit 0
rm -rf seeds
mkdir -p seeds
python3 - <<'PY'
import base64, json, os, struct
from pathlib import Path

fx = Path("../crates/dsvl/tests/fixtures")
out = Path("seeds")
n = {}

def seed(target, data):
    d = out / target
    d.mkdir(parents=True, exist_ok=True)
    n[target] = n.get(target, 0) + 1
    (d / f"seed-{n[target]:03}").write_bytes(data)

# image_decode: every small fixture image, the corrupt ones included.
images = sorted(p for p in [*(fx / "images/inputs").rglob("*"), *(fx / "v2/images").glob("*")]
                if p.is_file() and p.stat().st_size <= 64 << 10)
for p in images:
    seed("image_decode", p.read_bytes())

# chat_request: bodies for either model (first byte), text-only and with data-URL images.
small = [p for p in images if p.stat().st_size <= 4 << 10 and "bad" not in p.parts]
def url(p):
    kind = {".png": "png", ".jpg": "jpeg", ".gif": "gif", ".bmp": "bmp", ".tif": "tiff",
            ".webp": "webp"}[p.suffix]
    return f"data:image/{kind};base64," + base64.b64encode(p.read_bytes()).decode()
bodies = [
    {"messages": [{"role": "user", "content": "Hello"}]},
    {"model": "m", "temperature": 0, "max_tokens": 16, "stop": ["\n"], "seed": 7,
     "messages": [{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello!"},
                  {"role": "user", "content": [{"type": "text", "text": "Bye"}]}]},
    {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"},
     "stream": True, "stream_options": {"include_usage": True}, "logprobs": True,
     "top_logprobs": 2},
]
for p in small[:6]:
    bodies.append({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url(p)}},
        {"type": "text", "text": "Describe it."}]}]})
bodies.append({"messages": [{"role": "user", "content": [
    {"type": "text", "text": "Compare"},
    {"type": "image_url", "image_url": {"url": url(small[0])}},
    {"type": "image_url", "image_url": url(small[1])}]}]})
for i, b in enumerate(bodies):
    seed("chat_request", bytes([i % 2]) + json.dumps(b).encode())
    seed("chat_request", bytes([(i + 1) % 2]) + json.dumps(b).encode())

# chat_template: NUL-separated messages, a role byte first (0 user, 1 assistant, 2 system).
convs = [
    [(0, "Describe <image_placeholder> please.")],
    [(2, "Be brief."), (0, "<image_placeholder><image_placeholder>Compare."), (1, "Same."),
     (0, "Why?"), (1, "")],
    [(0, "<image>\n<|ref|>The cat<|/ref|>."), (1, "")],
    [(0 | 0x40, "No marker but one image."), (1, "ok"), (0, "")],
]
for i, c in enumerate(convs):
    seed("chat_template", bytes([i]) + b"\0".join(bytes([r]) + t.encode() for r, t in c))

# grounding: four bytes of image size, then an answer.
answers = [
    "<|ref|>The cat<|/ref|><|det|>[[120, 40, 610, 580]]<|/det|>",
    "<|grounding|>A <|ref|>cat<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|> and <|ref|>two dogs<|/ref|>"
    "<|det|>[[5, 6, 7, 8], [9, 10, 11, 12]]<|/det|>.",
    "It is here: <|det|>[[100, 200, 300, 400]]<|/det|> on the left.",
    "<|ref|>unterminated<|det|>[[1, 2,",
]
for a in answers:
    seed("grounding", struct.pack("<HH", 640, 480) + a.encode())

# safetensors: small valid files of each dtype, a header-only file, an index with its shard,
# and the fixtures' smallest real shard.
def st(tensors, meta=None):
    header, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if meta:
        header["__metadata__"] = meta
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data
files = [
    st({"a.weight": ("F32", [2, 3], struct.pack("<6f", *range(6)))}),
    st({"b": ("F16", [4], b"\x00\x3c" * 4), "c": ("BF16", [2, 2], b"\x80\x3f" * 4)},
       {"format": "pt"}),
    st({"i": ("I64", [2], struct.pack("<2q", 1, -1)), "u": ("U8", [3], b"abc"),
        "e": ("F32", [0, 5], b"")}),
    st({}),
]
for f in files:
    seed("safetensors", b"\0" + f)
shard = files[0]
index = json.dumps({"metadata": {"total_size": 24},
                    "weight_map": {"a.weight": "model-00001-of-00001.safetensors"}}).encode()
seed("safetensors", b"\1" + index + b"\0" + shard)
seed("safetensors", b"\0" + (fx / "v2/models/vl2-small-random/model-00001-of-000004.safetensors").read_bytes())

# config_json: every fixture model's configs, NUL-separated.
for d in sorted(p for p in fx.glob("v*/models/*") if (p / "config.json").is_file()):
    parts = [(d / f).read_bytes() if (d / f).is_file() else b"{}" for f in
             ("config.json", "processor_config.json", "preprocessor_config.json")]
    seed("config_json", b"\0".join(parts))

# tokenizer_json: the small VL2 tokenizers, with their tokenizer_config.json.
for d in sorted(fx.glob("v2/models/*")):
    seed("tokenizer_json", (d / "tokenizer.json").read_bytes() + b"\0" +
         (d / "tokenizer_config.json").read_bytes())
    seed("tokenizer_json", (d / "tokenizer.json").read_bytes())

for t in sorted(n):
    print(f"seeds/{t}: {n[t]} inputs")
PY
touch seeds/.done
