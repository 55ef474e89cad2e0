"""TSM vs TSN on the synthetic time-reversed pairs: test accuracy, per pair, and curves.

Evaluates both models on the held-out test manifest with `tsm evaluate`'s code
(the real label job, results logged to MLflow against each version), then
writes a Markdown table and a training-curves PNG from the runs' history.json.

    python bench/temporal_benchmark.py \
        --tsm models:/tsm-synthetic/1 --tsn models:/tsm-synthetic/2 \
        --manifest synth2000/test.csv \
        --tsm-history runs/tsm/history.json --tsn-history runs/tsn/history.json \
        --out-md temporal_results.md --out-png docs/temporal_training_curves.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from training.evaluation import EvalResult, evaluate
from training.synthetic import CLASSES


def pair_rows(r: EvalResult) -> list[tuple[str, float, float]]:
    """(pair, accuracy on the pair's videos, direction accuracy) for each forward/backward pair.

    Direction accuracy: of the pair's videos predicted as *either* member, the
    share given the right one; 50% is what a frame-order-blind model gets.
    """
    idx = {c: i for i, c in enumerate(r.classes)}
    out = []
    for k in range(0, len(CLASSES), 2):
        a, b = idx[CLASSES[k]], idx[CLASSES[k + 1]]
        total = sum(r.confusion[a]) + sum(r.confusion[b])
        right = r.confusion[a][a] + r.confusion[b][b]
        swapped = r.confusion[a][b] + r.confusion[b][a]
        out.append((f"{CLASSES[k]} / {CLASSES[k + 1]}", right / max(total, 1),
                    right / max(right + swapped, 1)))
    return out


def plot_curves(histories: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, hist in histories.items():
        ep = [h["epoch"] for h in hist]
        axes[0].plot(ep, [h["train_loss"] for h in hist], label=f"{name} train")
        axes[0].plot(ep, [h["val_loss"] for h in hist], "--", label=f"{name} val")
        axes[1].plot(ep, [h["train_acc"] for h in hist], label=f"{name} train top-1")
        axes[1].plot(ep, [h["val_top1"] for h in hist], "--", label=f"{name} val top-1")
    axes[0].set_title("cross-entropy loss")
    axes[1].set_title("accuracy")
    axes[1].axhline(0.5, color="grey", lw=0.8, ls=":")
    axes[1].set_ylim(0, 1)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tsm", required=True, help="TSM model URI")
    p.add_argument("--tsn", required=True, help="TSN model URI")
    p.add_argument("--manifest", required=True, help="labelled test manifest")
    p.add_argument("--tsm-history", type=Path, required=True)
    p.add_argument("--tsn-history", type=Path, required=True)
    p.add_argument("--out-md", type=Path, required=True)
    p.add_argument("--out-png", type=Path, required=True)
    p.add_argument("--out-dir", default="runs/benchmark", help="label job outputs")
    args = p.parse_args()

    results = {name: evaluate(uri, args.manifest, f"{args.out_dir}/{name}")
               for name, uri in (("TSM", args.tsm), ("TSN", args.tsn))}
    lines = ["| model | version | test videos | top-1 | top-5 | error rows |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        lines.append(f"| {name} | {r.model_name} v{r.model_version} | {r.num_videos} | "
                     f"{r.top1:.3f} | {r.top5:.3f} | {sum(r.errors.values())} |")
    lines += ["", "| pair | TSM pair acc. | TSM direction acc. | TSN pair acc. | "
              "TSN direction acc. |", "| --- | --- | --- | --- | --- |"]
    for (pair, ta, td), (_, na, nd) in zip(pair_rows(results["TSM"]), pair_rows(results["TSN"]),
                                           strict=True):
        lines.append(f"| {pair} | {ta:.3f} | {td:.3f} | {na:.3f} | {nd:.3f} |")
    args.out_md.write_text("\n".join(lines) + "\n")
    histories = {"TSM": json.loads(args.tsm_history.read_text()),
                 "TSN": json.loads(args.tsn_history.read_text())}
    plot_curves(histories, args.out_png)
    print("\n".join(lines))
    for name, r in results.items():
        print(f"{name}: MLflow run {r.run_id}")


if __name__ == "__main__":
    main()
