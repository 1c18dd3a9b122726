#!/usr/bin/env python3
"""Plots a training run's metrics (the JSON lines train appends to <checkpoint-dir>/metrics.jsonl)
as a PNG with loss and accuracy curves. Needs matplotlib (Debian: python3-matplotlib).

usage: scripts/plot_metrics.py runs/convmixer-20261125-203000/metrics.jsonl [-o curves.png]
"""
import argparse
import json
import sys


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", help="metrics.jsonl written by train")
    parser.add_argument("-o", "--out", help="output PNG (default: next to the metrics file)")
    args = parser.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        sys.exit("plot_metrics: matplotlib is missing (apt install python3-matplotlib)")
    rows = []
    with open(args.metrics) as f:
        lines = f.read().splitlines()
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                if number == len(lines):  # cut short by a crash; train --resume drops it
                    print(f"plot_metrics: {args.metrics}:{number}: incomplete last line skipped")
                    continue
                sys.exit(f"plot_metrics: {args.metrics}:{number}: not JSON ({e})")
    if not rows:
        sys.exit(f"plot_metrics: {args.metrics} holds no epochs yet")
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], label="train")
    ax_acc.plot(epochs, [r["train_acc"] for r in rows], label="train")
    tested = [r for r in rows if "test_loss" in r]
    if tested:
        # Points as well as lines: with --eval-every N the test split is evaluated every N epochs.
        ax_loss.plot([r["epoch"] for r in tested], [r["test_loss"] for r in tested], "o-",
                     label="test")
        ax_acc.plot([r["epoch"] for r in tested], [r["test_acc"] for r in tested], "o-",
                    label="test")
    for ax, title in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    out = args.out or args.metrics.rsplit(".", 1)[0] + ".png"
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
