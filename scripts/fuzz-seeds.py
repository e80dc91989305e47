#!/usr/bin/env python3
"""Seeds the fuzz corpora from the real files' headers (see scripts/fuzz).

    scripts/fuzz-seeds.py MODELS_DIR CORPUS_DIR

Writes small inputs under CORPUS_DIR/<target>/: GGUF files rebuilt from the
real models' metadata (arrays cut short, a few tensors of each real dtype with
tiny shapes), the raw first KBs of each GGUF, safetensors files and an index
built from all-MiniLM-L6-v2's header, a tiny llama2.c checkpoint with
stories260K's header layout, tokenizer.json files (all-MiniLM-L6-v2's, its vocabulary cut
short), tok512.bin, the GGUFs' chat templates, prompts and plans.
Deterministic; missing model files are skipped with a note.
"""
import json
import os
import random
import struct
import sys

MODELS, OUT = sys.argv[1], sys.argv[2]
rng = random.Random(9)


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- GGUF -----------------------------------------------------------------
SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
# ggml type -> (block elements, block bytes)
BLOCK = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
         10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 30: (1, 2)}


class R:
    def __init__(self, f):
        self.f = f

    def n(self, fmt):
        return struct.unpack(fmt, self.f.read(struct.calcsize(fmt)))[0]

    def s(self):
        return self.f.read(self.n("<Q"))

    def val(self, t):
        if t in SCALAR:
            return self.n(SCALAR[t])
        if t == 8:
            return self.s()
        if t == 9:
            et, n = self.n("<I"), self.n("<Q")
            return (et, [self.val(et) for _ in range(n)])
        raise ValueError(t)


def read_gguf(path):
    with open(path, "rb") as f:
        r = R(f)
        assert f.read(4) == b"GGUF"
        ver, nt, nkv = r.n("<I"), r.n("<Q"), r.n("<Q")
        kv = [(k, t, r.val(t)) for k, t in ((r.s(), r.n("<I")) for _ in range(nkv))]
        tensors = []
        for _ in range(nt):
            name = r.s()
            dims = [r.n("<Q") for _ in range(r.n("<I"))]
            tensors.append((name, dims, r.n("<I"), r.n("<Q")))
        return ver, kv, tensors


def w_val(t, v):
    if t in SCALAR:
        return struct.pack(SCALAR[t], v)
    if t == 8:
        return struct.pack("<Q", len(v)) + v
    et, items = v
    return struct.pack("<IQ", et, len(items)) + b"".join(w_val(et, x) for x in items)


def write_gguf(ver, kv, tensors, align=32):
    out = bytearray(b"GGUF" + struct.pack("<IQQ", ver, len(tensors), len(kv)))
    for k, t, v in kv:
        out += struct.pack("<Q", len(k)) + k + struct.pack("<I", t) + w_val(t, v)
    data, infos = bytearray(), bytearray()
    for name, dims, ty in tensors:
        be, bb = BLOCK[ty]
        n = 1
        for d in dims:
            n *= d
        nbytes = n // be * bb
        while len(data) % align:
            data.append(0)
        off = len(data)
        if ty == 0:
            data += b"".join(struct.pack("<f", rng.uniform(-1, 1)) for _ in range(n))
        else:
            data += bytes(rng.randrange(256) for _ in range(nbytes))
        infos += struct.pack("<Q", len(name)) + name + struct.pack("<I", len(dims))
        infos += b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", ty, off)
    out += infos
    while len(out) % align:
        out.append(0)
    return bytes(out + data)


templates = []
ggufs = [f for f in sorted(os.listdir(MODELS)) if f.endswith(".gguf")] if os.path.isdir(MODELS) else []
for fname in ggufs:
    path = os.path.join(MODELS, fname)
    stem = fname.rsplit(".", 1)[0]
    with open(path, "rb") as f:
        head = f.read(4096)
    put("gguf", stem + ".head4k", head)
    ver, kv, tensors = read_gguf(path)
    for k, t, v in kv:
        if k == b"tokenizer.chat_template":
            templates.append((stem, v))
    for keep in (40, 300):
        small = []
        for k, t, v in kv:
            if t == 9:
                v = (v[0], v[1][:keep])
            small.append((k, t, v))
        seen, picked = set(), []
        for name, dims, ty, _ in tensors:
            if ty in BLOCK and (ty not in seen or len(picked) < 4):
                seen.add(ty)
                be = BLOCK[ty][0]
                picked.append((name, [max(be, 8), 2] if len(dims) > 1 else [max(be, 8)], ty))
        blob = write_gguf(ver, small, picked[:12])
        put("gguf", f"{stem}.small{keep}", blob)
        put("gguf_vocab", f"{stem}.small{keep}", write_gguf(ver, small, []))
if not ggufs:
    print("fuzz-seeds: no GGUF files in", MODELS, file=sys.stderr)

# Chat templates, real and hostile (first byte: message count, generation prompt bit).
for stem, tpl in templates:
    put("chat_template", stem, bytes([0x83]) + tpl)
    put("chat_template", stem + ".1", bytes([0x01]) + tpl)
hostile = {
    "recursion": "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "loops": "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}",
    "repeat": "{{ 'x' * 1000000000 }}",
    "nested": "{{ " + "[" * 200 + "]" * 200 + " }}",
    "messages": "{% for m in messages %}<|{{ m.role }}|>{{ m.content | trim }}{% if not loop.last %}\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}",
    "tojson": "{{ messages | tojson(indent=2) }}{{ raise_exception('no') if messages|length > 3 }}",
    "strftime": "{{ strftime_now('%Y-%m-%d %B %A %j %%') }}",
}
# No doubling string: memory is bounded by the binary's global allocator
# (primitives::alloc), which a libFuzzer build does not install, so such a seed
# only reports the out-of-memory that crates/cli/tests/hostile.rs checks is
# stopped.
for k, v in hostile.items():
    put("chat_template", k, bytes([0x83]) + v.encode())

# ---- safetensors ------------------------------------------------------------
def st_file(tensors, meta=None):
    header, data = {}, bytearray()
    sizes = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U8": 1}
    for name, dt, shape in tensors:
        n = 1
        for d in shape:
            n *= d
        nb = n * sizes[dt]
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [len(data), len(data) + nb]}
        data += bytes(rng.randrange(256) for _ in range(nb))
    if meta:
        header["__metadata__"] = meta
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + bytes(data)


minilm = os.path.join(MODELS, "all-MiniLM-L6-v2")
st = os.path.join(minilm, "model.safetensors")
if os.path.isfile(st):
    with open(st, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = f.read(n)
    put("safetensors", "minilm.header", b"\x00" + struct.pack("<Q", n) + hdr)
    real = json.loads(hdr)
    small = [(k, v["dtype"], [min(d, 4) for d in v["shape"]]) for k, v in real.items() if k != "__metadata__"][:8]
    put("safetensors", "minilm.small", b"\x00" + st_file(small, {"format": "pt"}))
    shard = st_file(small)
    index = json.dumps({"metadata": {"total_size": len(shard)},
                        "weight_map": {k: "model-00001-of-00001.safetensors" for k, _, _ in small}}).encode()
    put("safetensors", "minilm.index", b"\x01" + struct.pack("<H", len(index)) + index + shard)
    cfg = os.path.join(minilm, "config.json")
    if os.path.isfile(cfg):
        put("safetensors", "config.json", b"\x00" + open(cfg, "rb").read())
else:
    print("fuzz-seeds: no", st, file=sys.stderr)
put("safetensors", "f16bf16", b"\x00" + st_file([("a", "F16", [3, 2]), ("b", "BF16", [2]), ("c", "F32", [])]))

# ---- llama2.c ---------------------------------------------------------------
def llama2c(dim, hidden, layers, heads, kv_heads, vocab, seq, shared=True):
    hs = dim // heads
    kvd = hs * kv_heads
    n = vocab * dim + layers * (dim + dim * dim + 2 * dim * kvd + dim * dim + dim + 3 * dim * hidden) + dim + seq * hs
    if not shared:
        n += vocab * dim
    hdr = struct.pack("<7i", dim, hidden, layers, heads, kv_heads, vocab if shared else -vocab, seq)
    return hdr + b"".join(struct.pack("<f", rng.uniform(-1, 1)) for _ in range(n))


put("llama2c", "tiny", llama2c(8, 16, 1, 2, 1, 16, 4))
put("llama2c", "tiny.unshared", llama2c(8, 12, 2, 2, 2, 10, 3, shared=False))
bin260 = os.path.join(MODELS, "stories260K", "stories260K.bin")
if os.path.isfile(bin260):
    with open(bin260, "rb") as f:
        put("llama2c", "stories260K.head", f.read(4096))

# ---- tokenizers -------------------------------------------------------------
tok512 = os.path.join(MODELS, "stories260K", "tok512.bin")
if os.path.isfile(tok512):
    raw = open(tok512, "rb").read()
    put("llama2c_vocab", "tok512.bin", raw)
    put("llama2c_vocab", "tok512.head", raw[:600])
tj = os.path.join(minilm, "tokenizer.json")
if os.path.isfile(tj):
    j = json.load(open(tj, encoding="utf-8"))
    vocab = j["model"]["vocab"]
    keep = dict(list(vocab.items())[:120])
    for t in ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"):
        if t in vocab:
            keep[t] = vocab[t]
    j["model"]["vocab"] = {k: i for i, k in enumerate(keep)}
    j["added_tokens"] = [dict(a, id=j["model"]["vocab"].get(a["content"], 0)) for a in j.get("added_tokens", [])]
    if j.get("post_processor") and "special_tokens" in j["post_processor"]:
        for v in j["post_processor"]["special_tokens"].values():
            v["ids"] = [j["model"]["vocab"].get(t, 0) for t in v["tokens"]]
    put("tokenizer_json", "minilm.small", json.dumps(j).encode())
bpe = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [
    {"id": 6, "content": "<|endoftext|>", "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}],
    "normalizer": None, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
    "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
    "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None, "end_of_word_suffix": None,
              "fuse_unk": False, "byte_fallback": False, "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4, "Ġ": 5, "<|endoftext|>": 6},
              "merges": ["a b", "ab c"]}}
put("tokenizer_json", "bpe.tiny", json.dumps(bpe).encode())

# ---- encode/decode: selector byte (tokenizer, mode) + text or ids ------------
texts = ["The capital of France is", "Once upon a time, there was a little dog.",
         "<|im_start|>user\nHi<|im_end|>\n<start_of_turn>model\n", "héllo wörld 😀 中文 \u200b\t\r\n  ",
         "def f(x):\n    return x ** 2  # code", "\x00\x01\xff"]
corpus_dir = os.environ.get("PATCHBAY_CORPUS")
for sel in range(4):
    for i, t in enumerate(texts):
        put("encode_decode", f"t{sel}.{i}", bytes([sel | (0x10 if i % 2 else 0) | (0x20 if i % 3 == 0 else 0)]) + t.encode("utf-8", "surrogatepass"))
    ids = [0, 1, 2, 3, 10, 100, 255, 256, 300, 511, 1000, 30000, 49151, 262143, 4294967295]
    put("encode_decode", f"ids{sel}", bytes([0x80 | sel]) + b"".join(struct.pack("<I", x) for x in ids))
    put("encode_decode", f"ids{sel}.sp", bytes([0xC0 | sel]) + b"".join(struct.pack("<I", x) for x in ids))

# ---- plans --------------------------------------------------------------------
for i, p in enumerate(["all", "0-9,11-29", "0-4, 5x3, 6-29", "0-9,(10|11),12-29", "29-0", "(1|2|3)/mean,0",
                       "0-29,0-29", "5x100000", "0-9,31", "", "(0|0)", "18446744073709551616"]):
    put("plan", f"p{i}", bytes([30]) + p.encode())
