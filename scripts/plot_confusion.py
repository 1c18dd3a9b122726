#!/usr/bin/env python3
"""Draws the confusion matrix that `build/examples/evaluate --json FILE` writes, as a PNG: each row
(a true class) as fractions of its images, the counts in the cells, the accuracy in the title.
Needs matplotlib (Debian: python3-matplotlib; run under /usr/bin/python3 when the python3 first on
the PATH lacks it and that one has it).

usage: scripts/plot_confusion.py evaluation.json [-o confusion.png]
"""
import argparse
import json
import os
import sys

from system_python import rerun_if_missing


def read_evaluation(path):
    """The evaluation in path; exits with one line on stderr when it is not one."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        sys.exit(f"plot_confusion: {path}: no such file")
    except IsADirectoryError:
        sys.exit(f"plot_confusion: {path}: is a directory")
    except OSError as e:
        sys.exit(f"plot_confusion: {path}: cannot read ({e.strerror or e})")
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        sys.exit(f"plot_confusion: {path}: not JSON ({e})")
    ok = isinstance(data, dict) and {"classes", "confusion", "accuracy"} <= data.keys()
    n = len(data["classes"]) if ok else 0
    ok = ok and len(data["confusion"]) == n and all(len(row) == n for row in data["confusion"])
    if not ok:
        sys.exit(f"plot_confusion: {path}: not an evaluation written by evaluate --json "
                 "(needs classes, a square confusion matrix and accuracy)")
    return data


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("evaluation", help="the JSON file evaluate --json wrote")
    parser.add_argument("-o", "--output", help="the PNG to write (default: beside the JSON)")
    args = parser.parse_args()
    data = read_evaluation(args.evaluation)
    output = args.output or os.path.splitext(args.evaluation)[0] + ".png"
    rerun_if_missing("matplotlib")
    try:
        import matplotlib
    except ImportError:
        sys.exit(f"plot_confusion: matplotlib is missing from {sys.executable} and /usr/bin/python3 "
                 "(apt install python3-matplotlib)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes, counts = data["classes"], data["confusion"]
    fractions = [[c / max(sum(row), 1) for c in row] for row in counts]
    size = max(4.0, 0.6 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    for i, row in enumerate(counts):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                    color="white" if fractions[i][j] > 0.5 else "black")
    name = os.path.basename(os.path.dirname(os.path.abspath(data.get("checkpoint", ""))))
    ax.set_title(f"{name}: accuracy {data['accuracy']:.4f} on {data.get('images', '?')} "
                 f"{data.get('split', '')} images")
    fig.tight_layout()
    try:
        fig.savefig(output, dpi=120)
    except OSError as e:
        sys.exit(f"plot_confusion: {output}: cannot write ({e.strerror or e})")
    print(output)


if __name__ == "__main__":
    main()
