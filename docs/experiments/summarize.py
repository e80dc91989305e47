#!/usr/bin/env python3
"""Summarises the rewire sweeps in docs/experiments/<model>/results.csv.

    python3 docs/experiments/summarize.py [DIR ...]

Prints, per model, the figures the README quotes: the layers whose removal
hurts most and least, how the first and last layers compare with the middle,
the rank correlation of the cheap layer scores with the measured damage, the
adjacent swaps, and each parallel pair set against dropping one of its two
layers. Standard library only; every number comes from results.csv.
"""

import csv
import math
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def ranks(values):
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x, y):
    if len(x) < 3:
        return float("nan")
    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def load(d):
    with open(d / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    base = next(r for r in rows if r["variant"] == "baseline")
    by_name = {r["variant"]: r for r in rows}
    return base, by_name, rows


def fmt(x, digits=2):
    return f"{x:+.{digits}f}" if x == x else "n/a"


def extremes(title, items, label, ppl0):
    """The five most and least harmful variants, ΔPPL and PPL over the baseline's."""
    order = sorted(items, key=lambda t: t[1])
    cell = lambda t: f"{label(t[0])} ({t[1]:+.2f}, x{(ppl0 + t[1]) / ppl0:.2f})"  # noqa: E731
    print(f"### {title}\n")
    print("| | (ΔPPL, PPL / baseline) |\n|---|---|")
    print("| most harmful 5 | " + ", ".join(map(cell, order[::-1][:5])) + " |")
    print("| least harmful 5 | " + ", ".join(map(cell, order[:5])) + " |")


def summarize(d):
    base, v, rows = load(d)
    ppl0 = float(base["ppl"])
    n = int(base["layer_applications"])
    dppl = lambda name: float(v[name]["delta_ppl"])  # noqa: E731
    rel = lambda name: dppl(name) / ppl0  # noqa: E731
    print(f"## {d.name}: {n} layers, baseline PPL {ppl0:.4f} "
          f"({base['tokens_scored']} tokens scored)\n")

    drops = [(l, dppl(f"drop {l}")) for l in range(n) if f"drop {l}" in v]
    if drops:
        extremes("drop (each layer alone)", drops, str, ppl0)
        middle = [d for l, d in drops if 0 < l < n - 1]
        med = statistics.median(middle)
        print(f"\nFirst layer ΔPPL {drops[0][1]:+.2f} ({drops[0][1] / ppl0:+.1%}), "
              f"last layer {drops[-1][1]:+.2f} ({drops[-1][1] / ppl0:+.1%}), "
              f"median of layers 1-{n - 2} {med:+.2f} ({med / ppl0:+.1%}).")
        half = [d for l, d in drops if l >= n // 2 and l < n - 1]
        first_half = [d for l, d in drops if 0 < l < n // 2]
        print(f"Median ΔPPL, layers 1-{n // 2 - 1}: {statistics.median(first_half):+.2f}; "
              f"layers {n // 2}-{n - 2}: {statistics.median(half):+.2f}.")
        under = [l for l, d in drops if d / ppl0 < 0.05]
        print(f"Layers whose removal costs under 5% of the perplexity: "
              f"{', '.join(map(str, under)) or 'none'} ({len(under)} of {n}).")
        bi = [(float(v[f"drop {l}"]["block_influence"]), d) for l, d in drops
              if v[f"drop {l}"]["block_influence"]]
        ang = [(float(v[f"drop {l}"]["angular_distance"]), d) for l, d in drops
               if v[f"drop {l}"]["angular_distance"]]
        print(f"Spearman rank correlation with ΔPPL: Block Influence "
              f"{spearman(*zip(*bi)):+.3f}, angular distance {spearman(*zip(*ang)):+.3f} "
              f"(over {len(bi)} layers).")
        inner = [(float(v[f"drop {l}"]["block_influence"]), d) for l, d in drops if 0 < l < n - 1]
        inner_ang = [(float(v[f"drop {l}"]["angular_distance"]), d) for l, d in drops
                     if 0 < l < n - 1]
        print(f"Without the first and last layer: Block Influence "
              f"{spearman(*zip(*inner)):+.3f}, angular distance "
              f"{spearman(*zip(*inner_ang)):+.3f}.\n")

    swaps = [(a, dppl(f"swap {a}-{a + 1}")) for a in range(n - 1) if f"swap {a}-{a + 1}" in v]
    if swaps:
        extremes("swap-adjacent", swaps, lambda a: f"{a}-{a + 1}", ppl0)
        inner = [d for a, d in swaps if 0 < a < n - 2]
        print(f"\nSwap 0-1 {swaps[0][1]:+.2f}, swap {n - 2}-{n - 1} {swaps[-1][1]:+.2f}, "
              f"median of the other {len(inner)} swaps {statistics.median(inner):+.2f}.")
        cheaper = sum(1 for a, d in swaps
                      if f"drop {a}" in v and d < min(dppl(f"drop {a}"), dppl(f"drop {a + 1}")))
        print(f"Swaps that cost less than dropping the cheaper of their two layers: "
              f"{cheaper} of {len(swaps)}.\n")

    pairs = [a for a in range(n - 1) if f"({a}|{a + 1})/mean" in v]
    if pairs:
        print("### parallel-pairs against dropping one layer of the pair\n")
        print("| pair | ΔPPL sum | ΔPPL mean | ΔPPL drop a | ΔPPL drop a+1 | best |")
        print("|---|---:|---:|---:|---:|---|")
        wins = {"sum": 0, "mean": 0, "drop": 0}
        for a in pairs:
            s, m = dppl(f"({a}|{a + 1})/sum"), dppl(f"({a}|{a + 1})/mean")
            da = dppl(f"drop {a}") if f"drop {a}" in v else float("nan")
            db = dppl(f"drop {a + 1}") if f"drop {a + 1}" in v else float("nan")
            best = min([("sum", s), ("mean", m), ("drop", min(da, db))], key=lambda t: t[1])[0]
            wins[best] += 1
            print(f"| {a}-{a + 1} | {s:+.2f} | {m:+.2f} | {da:+.2f} | {db:+.2f} | {best} |")
        inner = [a for a in pairs if 0 < a < n - 2]
        ms = statistics.median(dppl(f"({a}|{a + 1})/sum") for a in inner)
        mm = statistics.median(dppl(f"({a}|{a + 1})/mean") for a in inner)
        md = statistics.median(min(dppl(f"drop {a}"), dppl(f"drop {a + 1}")) for a in inner)
        print(f"\nLeast damage per pair: sum {wins['sum']}, mean {wins['mean']}, "
              f"dropping the cheaper layer {wins['drop']} (of {len(pairs)} pairs). "
              f"Medians over pairs 1-2 to {n - 3}-{n - 2}: sum {ms:+.2f}, mean {mm:+.2f}, "
              f"drop the cheaper layer {md:+.2f}.\n")


def main():
    dirs = [Path(a) for a in sys.argv[1:]] or sorted(
        p for p in HERE.iterdir() if (p / "results.csv").exists())
    for d in dirs:
        summarize(d)


if __name__ == "__main__":
    main()
