#!/usr/bin/env python3
"""Draws the kernel benchmark's speedups over cuDNN as a PNG bar chart.

Reads the CSV that `build/examples/bench_kernels --csv PATH` writes (columns op, shape, dtype,
ours_ms, cudnn_ms, speedup, ...; speedup = cuDNN ms / ours ms, so above 1 ours is faster). One
panel per dtype, one group of bars per op in the CSV's order, one bar per shape, on a log scale
with a line at 1. Rows without a cuDNN time (GELU: cuDNN's legacy API has none; a layout where
cuDNN's search found no algorithm) have no speedup: they are counted in the panel's title.

    scripts/plot_kernel_bench.py kernel_bench.csv              # writes kernel_bench.png
    scripts/plot_kernel_bench.py kernel_bench.csv -o speedups.png
"""
import argparse
import csv
import math
import sys
from pathlib import Path

REQUIRED = ("op", "shape", "dtype", "speedup")


def read_rows(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            sys.exit(f"plot_kernel_bench: {path} lacks column(s) {', '.join(missing)}; "
                     "is it a CSV from bench_kernels --csv?")
        rows = list(reader)
    if not rows:
        sys.exit(f"plot_kernel_bench: {path} holds no rows")
    return rows


def speedup_of(row):
    try:
        value = float(row["speedup"])
    except ValueError:  # "n/a"
        return None
    return value if math.isfinite(value) and value > 0 else None


def unique(values):
    return list(dict.fromkeys(values))


def plot(rows, out_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    dtypes = unique(r["dtype"] for r in rows)
    shapes = unique(r["shape"] for r in rows)
    cmap = plt.get_cmap("tab20")
    color = {s: cmap(i % 20) for i, s in enumerate(shapes)}

    panels = []
    for dtype in dtypes:
        subset = [r for r in rows if r["dtype"] == dtype]
        ops = [op for op in unique(r["op"] for r in subset)
               if any(speedup_of(r) for r in subset if r["op"] == op)]
        skipped = sum(1 for r in subset if speedup_of(r) is None)
        panels.append((dtype, subset, ops, skipped))
    widest = max(sum(len([r for r in subset if r["op"] == op]) for op in ops)
                 for _, subset, ops, _ in panels)
    fig, axes = plt.subplots(len(panels), 1, squeeze=False,
                             figsize=(max(8.0, 0.22 * widest + 2.0), 4.5 * len(panels)))

    for ax, (dtype, subset, ops, skipped) in zip(axes[:, 0], panels):
        x, centers = 0.0, []
        for op in ops:
            bars = [r for r in subset if r["op"] == op and speedup_of(r)]
            start = x
            for r in bars:
                value = speedup_of(r)
                ax.bar(x, value, width=0.9, color=color[r["shape"]])
                ax.text(x, value * 1.04, f"{value:.2f}", ha="center", va="bottom", rotation=90,
                        fontsize=6)
                x += 1.0
            centers.append((start + x - 1.0) / 2.0)
            x += 1.0  # gap between ops
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(centers)
        ax.set_xticklabels(ops, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("speedup (cuDNN ms / ours ms)")
        title = f"{dtype}: our kernels vs cuDNN (above 1: ours faster)"
        if skipped:
            title += f"; {skipped} row(s) without a cuDNN time not drawn"
        ax.set_title(title, fontsize=10)
        ax.margins(x=0.01, y=0.15)

    handles = [plt.Rectangle((0, 0), 1, 1, color=color[s]) for s in shapes]
    fig.legend(handles, shapes, loc="upper center", ncol=min(len(shapes), 6), fontsize=8,
               title="shape (NxHxWxC, k)", title_fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.06 * math.ceil(len(shapes) / 6) / len(panels)))
    fig.savefig(out_path, dpi=150)
    print(f"plot_kernel_bench: wrote {out_path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("csv", help="CSV written by bench_kernels --csv")
    parser.add_argument("-o", "--output", help="PNG to write (default: the CSV's name, .png)")
    args = parser.parse_args()
    out = Path(args.output) if args.output else Path(args.csv).with_suffix(".png")
    rows = read_rows(args.csv)
    if not any(speedup_of(r) for r in rows):
        sys.exit(f"plot_kernel_bench: {args.csv} holds no row with a speedup (no cuDNN times)")
    plot(rows, out)


if __name__ == "__main__":
    main()
