#!/usr/bin/env python3
"""Plots a training run's metrics (the JSON lines train appends to <checkpoint-dir>/metrics.jsonl)
as a PNG titled with the run's name (its directory's): loss and accuracy curves, the best test
accuracy marked, and the learning rate (that of each epoch's last step) when the lines record it.
Needs matplotlib (Debian: python3-matplotlib; run under /usr/bin/python3 when the python3 first on
the PATH lacks it and that one has it).

usage: scripts/plot_metrics.py runs/convmixer-20261125-203000 [-o curves.png]
       scripts/plot_metrics.py runs/convmixer-20261125-203000/metrics.jsonl
"""
import argparse
import json
import os
import sys

from system_python import rerun_if_missing


def read_rows(path):
    """The metrics lines of path, parsed; exits with one line on stderr when it cannot."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        sys.exit(f"plot_metrics: {path}: no such file")
    except IsADirectoryError:
        sys.exit(f"plot_metrics: {path}: is a directory")
    except OSError as e:
        sys.exit(f"plot_metrics: {path}: cannot read ({e.strerror or e})")
    except UnicodeDecodeError:
        sys.exit(f"plot_metrics: {path}: not a metrics file (not text)")
    rows = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                if number == len(lines):  # cut short by a crash; train --resume drops it
                    print(f"plot_metrics: {path}:{number}: incomplete last line skipped")
                    continue
                sys.exit(f"plot_metrics: {path}:{number}: not JSON ({e})")
            if not isinstance(row, dict) or not {"epoch", "train_loss", "train_acc"} <= row.keys():
                sys.exit(f"plot_metrics: {path}:{number}: not a metrics line of train (needs "
                         "epoch, train_loss and train_acc)")
            rows.append(row)
    if not rows:
        sys.exit(f"plot_metrics: {path} holds no epochs yet")
    return rows


def run_name(metrics):
    """The run's name: the name of the directory that holds its metrics file."""
    return os.path.basename(os.path.dirname(os.path.abspath(metrics)))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", help="a run directory, or the metrics.jsonl train wrote there")
    parser.add_argument("-o", "--out", help="output PNG (default: next to the metrics file)")
    args = parser.parse_args()
    metrics = args.metrics
    if os.path.isdir(metrics):
        metrics = os.path.join(metrics, "metrics.jsonl")
        if not os.path.exists(metrics):
            sys.exit(f"plot_metrics: {metrics}: no such file (not a run directory, or the run "
                     "has finished no epoch yet)")
    rows = read_rows(metrics)
    rerun_if_missing("matplotlib")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        sys.exit(f"plot_metrics: matplotlib is missing from {sys.executable} and /usr/bin/python3 "
                 "(apt install python3-matplotlib)")
    epochs = [r["epoch"] for r in rows]
    with_lr = [r for r in rows if "lr" in r]  # metrics written before the lr was recorded lack it
    fig, axes = plt.subplots(1, 3 if with_lr else 2, figsize=(16 if with_lr else 11, 4))
    ax_loss, ax_acc = axes[0], axes[1]
    name = run_name(metrics)
    fig.suptitle(name)
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], label="train")
    ax_acc.plot(epochs, [r["train_acc"] for r in rows], label="train")
    tested = [r for r in rows if "test_loss" in r]
    if tested:
        # Points as well as lines: with --eval-every N the test split is evaluated every N epochs.
        ax_loss.plot([r["epoch"] for r in tested], [r["test_loss"] for r in tested], "o-",
                     label="test")
        ax_acc.plot([r["epoch"] for r in tested], [r["test_acc"] for r in tested], "o-",
                    label="test")
        averaged = [r for r in tested if "ema_test_loss" in r]  # train --ema
        if averaged:
            ax_loss.plot([r["epoch"] for r in averaged], [r["ema_test_loss"] for r in averaged],
                         "s--", label="test (moving average)")
            ax_acc.plot([r["epoch"] for r in averaged], [r["ema_test_acc"] for r in averaged],
                        "s--", label="test (moving average)")
        best = max(tested, key=lambda r: r["test_acc"])  # the first epoch of a tie
        best_text = f"best test {100 * best['test_acc']:.2f}% (epoch {best['epoch']})"
        ax_acc.plot(best["epoch"], best["test_acc"], "*", color="red", markersize=14,
                    label=best_text)
    panels = [(ax_loss, "loss"), (ax_acc, "accuracy")]
    if with_lr:
        ax_lr = axes[2]
        ax_lr.plot([r["epoch"] for r in with_lr], [r["lr"] for r in with_lr], color="gray")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        panels.append((ax_lr, "learning rate (last step of each epoch)"))
    for ax, title in panels:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    out = args.out or os.path.splitext(metrics)[0] + ".png"
    fig.tight_layout()
    try:
        # The PNG's text chunks say what it shows, for image viewers and tests/test_plot_metrics.sh.
        fig.savefig(out, dpi=120, metadata={
            "Title": name,
            "Description": "; ".join(title for _, title in panels) +
                           (f"; {best_text}" if tested else "")})
    except OSError as e:
        sys.exit(f"plot_metrics: {out}: cannot write ({e.strerror or e})")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
