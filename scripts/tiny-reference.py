#!/usr/bin/env python3
"""Tiny random GPT-2 / Phi checkpoints with an independent float64 reference.

    tiny-reference.py {gpt2|phi} OUTDIR [--seed S] [--tokenizer-dir DIR] [--prompt TEXT]

writes into OUTDIR:

* model.safetensors  random weights (f32), HF tensor names of GPT2LMHeadModel
                     (Conv1D weights stored [in, out]) or PhiForCausalLM;
* config.json        the HF config (`architectures`, `model_type`, sizes);
* encoder.json, vocab.bpe
                     GPT-2's tokenizer, copied from --tokenizer-dir (default
                     $PATCHBAY_MODELS/gpt2-tokenizer, else models/gpt2-tokenizer
                     beside this script's repository);
* reference.json     the prompt, its token ids (GPT-2 byte-level BPE,
                     implemented here), the float64 logits of every prompt
                     position (full rows), and a greedy continuation of
                     --steps tokens (ids, decoded text, and each step's margin
                     between the best and second-best logit).

Plain Python 3 (math, struct, json, random): no numpy or torch, and nothing
from patchbay. The forward passes are written from the math of HF
transformers' modeling_gpt2.py and modeling_phi.py, in float64 over the f32
weights the file stores. The vocabulary is GPT-2's full 50257 tokens so the
real tokenizer applies; the width is tiny (32) so a run takes a few seconds.
"""

import argparse
import array
import json
import math
import operator
import os
import random
import re
import shutil
import struct
import sys

VOCAB = 50257
EOT = 50256

# ---------------------------------------------------------------- tokenizer


def bytes_to_unicode():
    """GPT-2's reversible map from bytes to printable unicode characters."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\xa1"), ord("\xac") + 1))
        + list(range(ord("\xae"), ord("\xff") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


# GPT-2's pre-tokenizer, with \p{L} as [^\W\d_] and \p{N} as \d (the same on
# ASCII text, which is what the prompts here are).
PAT = re.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+"""
)


class Bpe:
    def __init__(self, tokdir):
        with open(os.path.join(tokdir, "encoder.json"), encoding="utf-8") as f:
            self.encoder = json.load(f)
        self.decoder = {v: k for k, v in self.encoder.items()}
        with open(os.path.join(tokdir, "vocab.bpe"), encoding="utf-8") as f:
            lines = [l for l in f.read().split("\n") if l and not l.startswith("#version")]
        self.ranks = {tuple(l.split()): i for i, l in enumerate(lines)}
        self.b2u = bytes_to_unicode()
        self.u2b = {v: k for k, v in self.b2u.items()}

    def bpe(self, word):
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.ranks.get((a, b), math.inf), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            rank, _ = min(pairs)
            if rank == math.inf:
                break
            a, b = next((parts[i], parts[i + 1]) for r, i in pairs if r == rank)
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == a and parts[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def encode(self, text):
        ids = []
        for piece in PAT.findall(text):
            word = "".join(self.b2u[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(word))
        return ids

    def decode(self, ids):
        data = bytes(self.u2b[c] for i in ids for c in self.decoder[i])
        return data.decode("utf-8", errors="replace")


# ---------------------------------------------------------------- weights


class Weights:
    """Random tensors, rounded to f32 as the file stores them."""

    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.tensors = []  # (name, shape, array('f'))

    def add(self, name, shape, std, mean=0.0):
        n = 1
        for d in shape:
            n *= d
        g = self.rng.gauss
        data = array.array("f", [mean + std * g(0.0, 1.0) for _ in range(n)])
        self.tensors.append((name, list(shape), data))
        return data

    def matrix(self, name, rows, cols, std):
        """A [rows, cols] tensor, returned as rows of f64 values."""
        d = self.add(name, [rows, cols], std)
        return [list(d[r * cols : (r + 1) * cols]) for r in range(rows)]

    def vector(self, name, n, std, mean=0.0):
        return list(self.add(name, [n], std, mean))

    def write(self, path):
        header, offset = {}, 0
        for name, shape, data in self.tensors:
            nbytes = 4 * len(data)
            header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        text = json.dumps(header, separators=(",", ":")).encode("utf-8")
        text += b" " * (-len(text) % 8)
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for _, _, data in self.tensors:
                if sys.byteorder != "little":
                    data = array.array("f", data)
                    data.byteswap()
                f.write(data.tobytes())


def transpose(m):
    return [list(c) for c in zip(*m)]


# ---------------------------------------------------------------- math (f64)


def matvec(w, x, b=None):
    """w: rows of out features ([out][in]); returns w x + b."""
    y = [sum(map(operator.mul, row, x)) for row in w]
    if b is not None:
        y = [v + c for v, c in zip(y, b)]
    return y


def layer_norm(x, g, b, eps):
    n = len(x)
    mean = sum(x) / n
    var = sum((v - mean) ** 2 for v in x) / n
    inv = 1.0 / math.sqrt(var + eps)
    return [(v - mean) * inv * gi + bi for v, gi, bi in zip(x, g, b)]


def gelu_new(x):
    c = math.sqrt(2.0 / math.pi)
    return [0.5 * v * (1.0 + math.tanh(c * (v + 0.044715 * v * v * v))) for v in x]


def attention(qs, ks, vs, n_head, n_kv, hd, scale):
    """Causal multi-head attention over whole sequences: qs[t] is n_head*hd,
    ks[t], vs[t] are n_kv*hd. Returns the merged heads of every position."""
    group = n_head // n_kv
    out = []
    for t in range(len(qs)):
        row = []
        for h in range(n_head):
            g = h // group
            q = qs[t][h * hd : (h + 1) * hd]
            scores = [
                scale * sum(map(operator.mul, q, ks[s][g * hd : (g + 1) * hd]))
                for s in range(t + 1)
            ]
            m = max(scores)
            e = [math.exp(s - m) for s in scores]
            z = sum(e)
            acc = [0.0] * hd
            for s, w in enumerate(e):
                v = vs[s][g * hd : (g + 1) * hd]
                acc = [a + (w / z) * vi for a, vi in zip(acc, v)]
            row.extend(acc)
        out.append(row)
    return out


# ---------------------------------------------------------------- GPT-2


def gpt2_model(seed):
    e, n_layer, n_head, n_pos = 32, 2, 4, 64
    ff = 4 * e  # n_inner: null
    config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "n_embd": e,
        "n_head": n_head,
        "n_layer": n_layer,
        "n_positions": n_pos,
        "n_ctx": n_pos,
        "n_inner": None,
        "vocab_size": VOCAB,
        "layer_norm_epsilon": 1e-5,
        "bos_token_id": EOT,
        "eos_token_id": EOT,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }
    w = Weights(seed)
    p = {}
    # A small embedding (so the residual is not dominated by the current
    # token, which a tied head would then predict again), and a final norm
    # scale of 2 so the logits still spread over several units.
    p["wte"] = w.matrix("wte.weight", VOCAB, e, 0.2)
    p["wpe"] = w.matrix("wpe.weight", n_pos, e, 0.3)
    s_in, s_ff = 1.0 / math.sqrt(e), 1.0 / math.sqrt(ff)
    s_out, s_ffo = s_in, s_ff
    for i in range(n_layer):
        h = f"h.{i}."
        L = {}
        L["ln_1"] = (w.vector(h + "ln_1.weight", e, 0.1, 1.0), w.vector(h + "ln_1.bias", e, 0.1))
        # Conv1D: weight [in, out], y = x W + b; kept here as [out][in] rows.
        L["c_attn"] = (transpose(w.matrix(h + "attn.c_attn.weight", e, 3 * e, s_in)), w.vector(h + "attn.c_attn.bias", 3 * e, 0.1))
        L["attn_proj"] = (transpose(w.matrix(h + "attn.c_proj.weight", e, e, s_out)), w.vector(h + "attn.c_proj.bias", e, 0.1))
        L["ln_2"] = (w.vector(h + "ln_2.weight", e, 0.1, 1.0), w.vector(h + "ln_2.bias", e, 0.1))
        L["c_fc"] = (transpose(w.matrix(h + "mlp.c_fc.weight", e, ff, s_in)), w.vector(h + "mlp.c_fc.bias", ff, 0.1))
        L["mlp_proj"] = (transpose(w.matrix(h + "mlp.c_proj.weight", ff, e, s_ffo)), w.vector(h + "mlp.c_proj.bias", e, 0.1))
        p[i] = L
    p["ln_f"] = (w.vector("ln_f.weight", e, 0.1, 2.0), w.vector("ln_f.bias", e, 0.1))
    eps = config["layer_norm_epsilon"]
    hd = e // n_head

    def forward(ids):
        """Final hidden states (after ln_f) of every position."""
        x = [[a + b for a, b in zip(p["wte"][t], p["wpe"][pos])] for pos, t in enumerate(ids)]
        for i in range(n_layer):
            L = p[i]
            a = [layer_norm(r, *L["ln_1"], eps) for r in x]
            qkv = [matvec(L["c_attn"][0], r, L["c_attn"][1]) for r in a]
            q = [r[:e] for r in qkv]
            k = [r[e : 2 * e] for r in qkv]
            v = [r[2 * e :] for r in qkv]
            att = attention(q, k, v, n_head, n_head, hd, 1.0 / math.sqrt(hd))
            x = [[xi + oi for xi, oi in zip(r, matvec(L["attn_proj"][0], o, L["attn_proj"][1]))] for r, o in zip(x, att)]
            m = [layer_norm(r, *L["ln_2"], eps) for r in x]
            m = [matvec(L["mlp_proj"][0], gelu_new(matvec(L["c_fc"][0], r, L["c_fc"][1])), L["mlp_proj"][1]) for r in m]
            x = [[xi + mi for xi, mi in zip(r, mr)] for r, mr in zip(x, m)]
        return [layer_norm(r, *p["ln_f"], eps) for r in x]

    def head(hidden):
        return matvec(p["wte"], hidden)

    return config, w, forward, head


# ---------------------------------------------------------------- Phi


def rope_neox(x, n_heads, hd, rot, pos, base):
    """HF Phi: rotate_half on the first `rot` features of each head."""
    half = rot // 2
    out = list(x)
    for h in range(n_heads):
        o = h * hd
        for i in range(half):
            inv = 1.0 / (base ** (2 * i / rot))
            c, s = math.cos(pos * inv), math.sin(pos * inv)
            a, b = x[o + i], x[o + i + half]
            out[o + i] = a * c - b * s
            out[o + i + half] = b * c + a * s
    return out


def phi_model(seed):
    e, n_layer, n_head, n_kv, ff, n_pos = 32, 2, 4, 2, 96, 64
    hd = e // n_head
    factor = 0.5
    rot = int(hd * factor)
    base = 10000.0
    config = {
        "architectures": ["PhiForCausalLM"],
        "model_type": "phi",
        "hidden_act": "gelu_new",
        "hidden_size": e,
        "intermediate_size": ff,
        "num_hidden_layers": n_layer,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "partial_rotary_factor": factor,
        "rope_theta": base,
        "rope_scaling": None,
        "max_position_embeddings": n_pos,
        "layer_norm_eps": 1e-5,
        "qk_layernorm": False,
        "vocab_size": VOCAB,
        "tie_word_embeddings": False,
        "bos_token_id": EOT,
        "eos_token_id": EOT,
        "torch_dtype": "float32",
    }
    w = Weights(seed)
    p = {}
    p["embed"] = w.matrix("model.embed_tokens.weight", VOCAB, e, 0.5)
    s_in, s_ff = 1.0 / math.sqrt(e), 1.0 / math.sqrt(ff)
    for i in range(n_layer):
        h = f"model.layers.{i}."
        L = {}
        L["ln"] = (w.vector(h + "input_layernorm.weight", e, 0.1, 1.0), w.vector(h + "input_layernorm.bias", e, 0.1))
        for name, out, inp, s in [("q_proj", e, e, s_in), ("k_proj", n_kv * hd, e, s_in), ("v_proj", n_kv * hd, e, s_in), ("dense", e, e, s_in)]:
            L[name] = (w.matrix(h + f"self_attn.{name}.weight", out, inp, s), w.vector(h + f"self_attn.{name}.bias", out, 0.1))
        L["fc1"] = (w.matrix(h + "mlp.fc1.weight", ff, e, s_in), w.vector(h + "mlp.fc1.bias", ff, 0.1))
        L["fc2"] = (w.matrix(h + "mlp.fc2.weight", e, ff, s_ff), w.vector(h + "mlp.fc2.bias", e, 0.1))
        p[i] = L
    p["ln_f"] = (w.vector("model.final_layernorm.weight", e, 0.1, 1.0), w.vector("model.final_layernorm.bias", e, 0.1))
    p["lm_head"] = (w.matrix("lm_head.weight", VOCAB, e, 0.5), w.vector("lm_head.bias", VOCAB, 0.5))
    eps = config["layer_norm_eps"]

    def forward(ids):
        x = [list(p["embed"][t]) for t in ids]
        for i in range(n_layer):
            L = p[i]
            a = [layer_norm(r, *L["ln"], eps) for r in x]
            q = [rope_neox(matvec(L["q_proj"][0], r, L["q_proj"][1]), n_head, hd, rot, pos, base) for pos, r in enumerate(a)]
            k = [rope_neox(matvec(L["k_proj"][0], r, L["k_proj"][1]), n_kv, hd, rot, pos, base) for pos, r in enumerate(a)]
            v = [matvec(L["v_proj"][0], r, L["v_proj"][1]) for r in a]
            att = attention(q, k, v, n_head, n_kv, hd, hd ** -0.5)
            att = [matvec(L["dense"][0], o, L["dense"][1]) for o in att]
            mlp = [matvec(L["fc2"][0], gelu_new(matvec(L["fc1"][0], r, L["fc1"][1])), L["fc2"][1]) for r in a]
            x = [[xi + ai + mi for xi, ai, mi in zip(r, ar, mr)] for r, ar, mr in zip(x, att, mlp)]
        return [layer_norm(r, *p["ln_f"], eps) for r in x]

    def head(hidden):
        return matvec(p["lm_head"][0], hidden, p["lm_head"][1])

    return config, w, forward, head


# ---------------------------------------------------------------- main


def default_tokenizer_dir():
    models = os.environ.get("PATCHBAY_MODELS")
    if not models:
        models = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models")
    return os.path.join(models, "gpt2-tokenizer")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("family", choices=["gpt2", "phi"])
    ap.add_argument("outdir")
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--tokenizer-dir", default=None)
    ap.add_argument("--prompt", default="The quick brown fox jumps over")
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()

    tokdir = args.tokenizer_dir or default_tokenizer_dir()
    files = [os.path.join(tokdir, f) for f in ("encoder.json", "vocab.bpe")]
    if not all(os.path.isfile(f) for f in files):
        sys.exit(f"tiny-reference: GPT-2 tokenizer files not found in {tokdir}; "
                 "run `scripts/fetch-gpt2-tokenizer` or pass --tokenizer-dir")
    bpe = Bpe(tokdir)
    check = bpe.encode("Hello world! How's it going?")
    if check != [15496, 995, 0, 1374, 338, 340, 1016, 30]:
        sys.exit(f"tiny-reference: the BPE self-check failed: {check}")
    prompt_ids = bpe.encode(args.prompt)
    if not prompt_ids:
        sys.exit("tiny-reference: the prompt has no tokens")

    build = {"gpt2": gpt2_model, "phi": phi_model}[args.family]
    config, weights, forward, head = build(args.seed)
    if len(prompt_ids) + args.steps > 64:
        sys.exit("tiny-reference: prompt and continuation exceed the 64 positions")

    os.makedirs(args.outdir, exist_ok=True)
    weights.write(os.path.join(args.outdir, "model.safetensors"))
    with open(os.path.join(args.outdir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    for src in files:
        shutil.copyfile(src, os.path.join(args.outdir, os.path.basename(src)))

    hidden = forward(prompt_ids)
    logits = [head(h) for h in hidden]

    def top2(row):
        best = max(range(len(row)), key=row.__getitem__)
        second = max(v for i, v in enumerate(row) if i != best)
        return best, row[best] - second

    ids = list(prompt_ids)
    greedy, margins = [], []
    row = logits[-1]
    for step in range(args.steps):
        t, margin = top2(row)
        greedy.append(t)
        margins.append(margin)
        if t == EOT or step + 1 == args.steps:
            break
        ids.append(t)
        row = head(forward(ids)[-1])
    shown = [t for t in greedy if t != EOT]
    ref = {
        "family": args.family,
        "seed": args.seed,
        "prompt": args.prompt,
        "prompt_ids": prompt_ids,
        "logits": logits,
        "greedy_ids": greedy,
        "greedy_text": bpe.decode(shown),
        "greedy_margins": margins,
        "note": "float64 forward pass over the f32 weights in model.safetensors; "
        "greedy_ids stop at <|endoftext|> (50256), which greedy_text leaves out",
    }
    with open(os.path.join(args.outdir, "reference.json"), "w") as f:
        json.dump(ref, f)
    if min(margins) < 1e-3:
        print(
            f"tiny-reference: warning: a greedy step is decided by {min(margins):.2e}; "
            "float32 engines may pick the other token (try another --seed)",
            file=sys.stderr,
        )
    flat = [v for r in logits for v in r]
    print(
        f"{args.family}: {len(prompt_ids)} prompt tokens, logits in [{min(flat):.2f}, {max(flat):.2f}], "
        f"greedy {greedy} {ref['greedy_text']!r}, smallest margin {min(margins):.4f}"
    )


if __name__ == "__main__":
    main()
