"""Training curves of MAGE runs from their metrics logs, one PNG figure: has a step budget flattened?

    python benchmarks/training_curves.py FILE.metrics.jsonl [FILE ...] --out PATH.png [--title TEXT]

Each file is one run (one JSON object per line, every row with "step" and "time"), labelled by its file name
minus ".metrics.jsonl". The figure has four panels over the training step: (a) evaluation normalised score,
(b) stage-2 cross-entropy per scale (colour: scale; line style: run) with the overall tf/ce and then e2e/ce in
black, (c) stage-2 token accuracy per scale, (d) L_inv (tf/inv in stage 2, e2e/inv in stage 3). Thin vertical
lines mark the stage boundaries: the first step with tf/ keys (transformer) and with e2e/ keys (end to end).
Training curves are smoothed by a centred moving average of a few logged points; evaluation points are also
drawn raw. A file without usable rows is an error (exit 2) and nothing is written. For each run with two or more
in-training evaluations it also prints where the wall time went, from the rows' timestamps (``evaluation_timing``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: shared/ is importable

SMOOTH = 5  # moving-average window of the training curves, in logged points
SMOOTH_EVAL = 3  # ... of the evaluation curves (fewer, noisier points)
LINESTYLES = ("-", "--", ":", "-.")
EVAL_KEY = "eval/normalized_score"
CE_SCALE = re.compile(r"^tf/ce_scale(\d+)$")
ACC_SCALE = re.compile(r"^tf/token_acc_scale(\d+)$")
PLOTTED = re.compile(r"^(eval/normalized_score|tf/ce(_scale\d+)?|tf/token_acc(_scale\d+)?|tf/inv|e2e/ce|e2e/inv)$")

Series = dict[str, list[tuple[int, float]]]  # metric key -> [(step, value)] sorted by step


class CurvesError(Exception):
    """A log file that cannot be plotted (missing, unreadable, or without usable rows)."""


def run_label(path: Path) -> str:
    """``mage-maze2d-large-seed0.metrics.jsonl`` -> ``mage-maze2d-large-seed0``."""
    name = path.name
    for suffix in (".jsonl", ".metrics"):
        name = name[: -len(suffix)] if name.endswith(suffix) else name
    return name


def _number(v: Any) -> Optional[float]:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def read_metrics(path: Path) -> Series:
    """The plotted metrics of one log: key -> [(step, value)], sorted by step; the last row wins on a repeated
    step (a resumed run). Lines that are not JSON objects with a numeric step (a truncated last line) are skipped.
    Raises CurvesError when no row holds a plotted metric."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as e:
        raise CurvesError(f"{path}: cannot read ({e.strerror or e})") from None
    by_key: dict[str, dict[int, float]] = {}
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict) or _number(row.get("step")) is None:
            continue
        step = int(row["step"])
        for k, v in row.items():
            if PLOTTED.match(k) and (x := _number(v)) is not None:
                by_key.setdefault(k, {})[step] = x
    if not by_key:
        raise CurvesError(f"{path}: no usable rows (no JSON line with a numeric 'step' and an eval/, tf/ or e2e/ "
                          "metric this figure plots)")
    return {k: sorted(d.items()) for k, d in by_key.items()}


def evaluation_timing(path: Path) -> Optional[dict]:
    """Seconds of one in-training evaluation (its row's time minus that of the training row of the same step) and
    training steps/s between two evaluations (an evaluation's row to the training row of the next one's step),
    medians over the run; None with fewer than two evaluations that have a training row at their step."""
    train: dict[int, float] = {}
    evals: dict[int, float] = {}
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict) or _number(row.get("step")) is None or _number(row.get("time")) is None:
            continue
        (evals if EVAL_KEY in row else train)[int(row["step"])] = float(row["time"])
    steps = sorted(s for s in evals if s in train)
    rates = [(b - a) / (train[b] - evals[a]) for a, b in zip(steps, steps[1:]) if train[b] > evals[a]]
    if not rates:
        return None
    return {"evaluations": len(steps), "eval_s": statistics.median(evals[s] - train[s] for s in steps),
            "train_steps_per_s": statistics.median(rates)}


def stage_boundaries(series: Series) -> list[tuple[str, int]]:
    """(stage name, first step) for the transformer (tf/) and end-to-end (e2e/) stages present in a run."""
    out = []
    for prefix, name in (("tf/", "stage 2"), ("e2e/", "stage 3")):
        steps = [pts[0][0] for k, pts in series.items() if k.startswith(prefix)]
        if steps:
            out.append((name, min(steps)))
    return out


def smooth(values: list[float], window: int = SMOOTH) -> list[float]:
    """Centred moving average; the window shrinks at both ends, so the curve keeps its length and end points."""
    half = window // 2
    out = []
    for i in range(len(values)):
        lo, hi = max(0, i - half), min(len(values), i + half + 1)
        out.append(sum(values[lo:hi]) / (hi - lo))
    return out


def _xy(points: list[tuple[int, float]], smoothed: bool = True) -> tuple[list[int], list[float]]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return xs, smooth(ys) if smoothed else ys


def _scales(series: Series, pattern: re.Pattern) -> dict[int, str]:
    return {int(m.group(1)): k for k in series if (m := pattern.match(k))}


def _load_tables():
    """benchmarks/tables.py as a module (a script, not a package), for its plot style."""
    from shared.utils import load_script  # here, not above: --help stays quick (shared.utils imports torch)

    return load_script(Path(__file__).with_name("tables.py"), "benchmarks_tables")


def figure_png(runs: dict[str, Series], title: Optional[str] = None) -> bytes:
    """The 2x2 figure of ``runs`` (label -> series, in legend order) as PNG bytes."""
    tables = _load_tables()
    plt = tables._pyplot()
    labels = list(runs)
    style = {n: LINESTYLES[i % len(LINESTYLES)] for i, n in enumerate(labels)}
    run_colour = {n: tables.color_of(n, labels) for n in labels}
    n_scales = max([0] + [max(_scales(s, CE_SCALE) | _scales(s, ACC_SCALE), default=0) for s in runs.values()])
    cmap = plt.get_cmap("viridis")
    scale_colour = {k: cmap(0.9 * (k - 1) / max(1, n_scales - 1)) for k in range(1, n_scales + 1)}

    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    (ax_eval, ax_ce), (ax_acc, ax_inv) = axes

    # (a) evaluation: raw points, and a smoothed line through them, per run
    for n, s in runs.items():
        if EVAL_KEY in s:
            xs, ys = _xy(s[EVAL_KEY], smoothed=False)
            ax_eval.plot(xs, ys, "o", markersize=2.5, alpha=0.45, color=run_colour[n])
            ax_eval.plot(xs, smooth(ys, SMOOTH_EVAL), style[n], linewidth=1.4, color=run_colour[n], label=n)
    ax_eval.set_title("(a) evaluation")
    ax_eval.set_ylabel(f"normalised score (points; line: moving avg of {SMOOTH_EVAL} evals)", fontsize=8)

    # (b), (c): per-scale curves, colour = scale, line style = run; black = the overall metric
    for ax, pattern, overall in ((ax_ce, CE_SCALE, ("tf/ce", "e2e/ce")), (ax_acc, ACC_SCALE, ("tf/token_acc",))):
        for n, s in runs.items():
            for k, key in sorted(_scales(s, pattern).items()):
                ax.plot(*_xy(s[key]), style[n], linewidth=1.0, alpha=0.85, color=scale_colour[k])
            for key in overall:
                if key in s:
                    ax.plot(*_xy(s[key]), style[n], linewidth=1.6, color="black")
    ax_ce.set_title("(b) transformer cross-entropy per scale")
    ax_ce.set_ylabel(f"CE (nats; moving avg of {SMOOTH} logs)", fontsize=8)
    ax_acc.set_title("(c) transformer token accuracy per scale")
    ax_acc.set_ylabel(f"token accuracy (moving avg of {SMOOTH} logs)", fontsize=8)

    # (d) L_inv of the transformer (stage 2) and of end-to-end training (stage 3), colour and line style = run
    for n, s in runs.items():
        for key in ("tf/inv", "e2e/inv"):
            if key in s:
                ax_inv.plot(*_xy(s[key]), style[n], linewidth=1.3, color=run_colour[n])
    ax_inv.set_title("(d) $L_{inv}$ (tf/inv in stage 2, e2e/inv in stage 3)")
    ax_inv.set_ylabel(f"L_inv (moving avg of {SMOOTH} logs)", fontsize=8)

    # stage boundaries: one thin line per distinct (stage, step) over the runs, named in panel (a)
    bounds = sorted({b for s in runs.values() for b in stage_boundaries(s)}, key=lambda b: b[1])
    for ax in axes.flat:
        for _, step in bounds:
            ax.axvline(step, color="grey", linewidth=0.8, alpha=0.7, zorder=0)
    for name, step in bounds:
        ax_eval.text(step, 1.0, f" {name}", transform=ax_eval.get_xaxis_transform(), fontsize=7, color="grey",
                     va="top", ha="left")

    # legends: runs (colour, line style) in (a); scales (colour) and the overall line in (b); line styles in (c)
    from matplotlib.lines import Line2D

    if ax_eval.get_lines():
        ax_eval.legend(loc="lower right", fontsize=7)
    if n_scales:
        handles = [Line2D([], [], color=scale_colour[k], label=f"scale {k}") for k in range(1, n_scales + 1)]
        handles.append(Line2D([], [], color="black", linewidth=1.6, label="all scales (tf/ce, then e2e/ce)"))
        ax_ce.legend(handles=handles, loc="upper right", fontsize=7, ncol=2)
        run_handles = [Line2D([], [], color="dimgrey", linestyle=style[n], label=n) for n in labels]
        ax_acc.legend(handles=run_handles, loc="lower right", fontsize=7, title="line style: run", title_fontsize=7)
    for ax in axes[1]:
        ax.set_xlabel("training step")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    data = tables.png_bytes(fig)
    plt.close(fig)
    return data


def main(argv: Optional[list[str]] = None) -> int:
    """Read every log first (exit 2 naming the first bad file, nothing written), then write the figure."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", type=Path, help="metrics.jsonl files, one per run")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    p.add_argument("--title", default=None, help="figure title")
    args = p.parse_args(argv)
    runs: dict[str, Series] = {}
    try:
        for path in args.files:
            label = run_label(path)
            if label in runs:  # same stem from two folders: keep both, told apart by the folder
                label = f"{path.parent.name}/{label}"
            runs[label] = read_metrics(path)
    except CurvesError as e:
        print(f"training_curves.py: error: {e}", file=sys.stderr)
        return 2
    for label, path in zip(runs, args.files):
        if (timing := evaluation_timing(path)) is not None:
            print(f"{label}: {timing['evaluations']} evaluations, {timing['eval_s']:.1f} s each, "
                  f"{timing['train_steps_per_s']:.1f} training steps/s between them (medians)")
    from shared.utils import atomic_write_bytes

    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out, figure_png(runs, args.title))
    print(f"wrote {args.out} ({len(runs)} run{'s' if len(runs) != 1 else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
