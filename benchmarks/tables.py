"""Tables and plots of the benchmark, rebuilt from the committed result files alone (no W&B API).

    python benchmarks/tables.py [--results-dir benchmarks/results] [--out benchmarks/RESULTS.md]
                                [--readme README.md] [--plots-dir benchmarks/plots] [--check]

Reads ``<results-dir>/<algo-or-variant>/<task>/seed<k>.json`` (the schema of shared/logger.py) and writes
  * ``--out``: per task group a task x algorithm table of normalised scores (mean ± std over seeds, seed count,
    best mean per row in bold, an average row), the papers' numbers in their own labelled columns, a table of
    training wall time / per-action latency / device, an ablation table for the variants of benchmarks/run.py,
    the speed tables of ``<results-dir>/speed.json`` (``benchmarks/speed.py``: eager vs CUDA graphs per algorithm,
    against the targets), of ``<results-dir>/speed_settings.json`` (the same measurement over more settings:
    bf16, inductor) and of ``<results-dir>/speed_committed.json`` (the committed configs' setting, measured again
    after the code changed), and the provenance (file count, git commits, dataset sources);
  * the block between ``<!-- results:start -->`` and ``<!-- results:end -->`` of ``--readme`` (the markers are
    appended at the end of the file when missing; nothing else in it is touched);
  * PNG plots in ``--plots-dir``: learning curves per task and a bar chart of scores per task group.
The output is deterministic: the same result files give the same bytes. ``--check`` regenerates everything
into a temporary directory and exits 1 if any committed output differs (or is missing, or a stale plot remains).
"""

from __future__ import annotations

import argparse
import difflib
import io
import json
import math
import os
import re
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: shared/ is importable
from shared.tasks import algo_inputs, goal_input  # noqa: E402
from shared.utils import atomic_write_bytes, load_script  # noqa: E402

START, END = "<!-- results:start -->", "<!-- results:end -->"
TINY_START, TINY_END = "<!-- tiny:start -->", "<!-- tiny:end -->"
SPEED_NAMES = {"mage": "MAGE", "dt": "DT", "diffuser": "Diffuser", "iql": "IQL", "bc": "BC"}
ALGO_ORDER = ("mage", "dt", "diffuser", "iql", "bc")  # column order; other names follow alphabetically
PLOT_PATTERNS = ("curves_*.png", "scores_*.png")  # files of --plots-dir that this script owns
# Commits whose resumed runs wrote a train_wall_s of the part after the resume only: the training loop has kept the
# elapsed time in its checkpoints since (shared/training.py), but the result schema has no field that tells the two
# kinds of file apart, so the committed result files written before that are named by their commit here. Their
# resumed runs' wall times are left out of the timing table; every other resumed run's wall time counts.
PARTIAL_WALL_COMMITS = ("2c218c5", "b4c318c")

# task groups: (key, title, canonical tasks shown even without results)
GROUPS = (
    ("maze2d", "Maze2D (fixed goal)", ("maze2d-umaze", "maze2d-medium", "maze2d-large")),
    ("multi2d", "Multi2D (random goals)", ("multi2d-umaze", "multi2d-medium", "multi2d-large")),
    ("antmaze", "AntMaze (regenerated with D4RL's recipe, not D4RL's files)",
     ("antmaze-umaze", "antmaze-umaze-diverse", "antmaze-medium-play", "antmaze-medium-diverse", "antmaze-large-play",
      "antmaze-large-diverse")),
    ("locomotion", "MuJoCo locomotion (regenerated from this project's SAC policies, not D4RL's data: normalised by "
                   "our own random and expert returns, not comparable with D4RL's numbers)", ()),
    ("d4rl", "The original D4RL files (the user's own downloads)", ()),  # never mixed with the regenerated data
    ("minari", "Minari datasets (Minari's regenerations, not D4RL's data)", ()),  # never mixed with D4RL/embedded
    ("other", "Other tasks", ()),
)

# Published numbers (D4RL normalised scores on the ORIGINAL D4RL data and reference scores; see
# ../shared/paper/MAGE.md). Keys: size (umaze/medium/large) or "average". Never mixed with our columns.
# Each was measured under one protocol: (algorithm, given the goal) as shared.tasks.goal_input defines it. A published
# column sits only in a table whose column of that algorithm follows the same protocol (never beside the -goal
# variants).
PAPER_PROTOCOL = {
    "paper: MAGE (D4RL original data)": ("mage", True),
    "paper: Diffuser": ("diffuser", True),
    "paper: HD": ("diffuser", True),  # Hierarchical Diffuser: a goal-conditioned planner, as Diffuser
    "reported: DT (single-file DT)": ("dt", False),  # CORL's DT: observation and return-to-go only
}
PAPER_SOURCES = {
    "paper: MAGE (D4RL original data)": "MAGE paper (Lin, Gao et al., ICLR 2026): only the averages are known to us",
    "paper: Diffuser": "Diffuser paper (Janner et al., ICML 2022)",
    "paper: HD": "Hierarchical Diffuser paper (HD), as quoted for MAGE's comparison",
    "reported: DT (single-file DT)": "Decision Transformer on maze2d-v1 as reported for a well-known single-file DT "
                                     "implementation (figures as given to this project; source not re-checked)",
}
PAPER = {
    "maze2d": {
        "paper: MAGE (D4RL original data)": {"average": 153.3},
        "paper: Diffuser": {"umaze": 113.9, "medium": 121.5, "large": 123.0},
        "paper: HD": {"umaze": 128.4, "medium": 135.6, "large": 155.8},
        "reported: DT (single-file DT)": {"umaze": 18.1, "medium": 31.7, "large": 35.7},
    },
    "multi2d": {
        "paper: MAGE (D4RL original data)": {"average": 155.0},
        "paper: Diffuser": {"umaze": 128.9, "medium": 127.2, "large": 132.1},
        "paper: HD": {"umaze": 144.1, "medium": 140.2, "large": 165.5},
    },
    "antmaze": {
        "paper: MAGE (D4RL original data)": {"average": 89.7},  # over D4RL's six antmaze-v2 datasets
    },
}


# ----------------------------------------------------------------------------- reading
@dataclass
class Cell:
    """The runs of one (algorithm or variant, task)."""

    name: str
    task: str
    runs: list[dict] = field(default_factory=list)  # sorted by seed

    def values(self, key: str) -> list[float]:
        out = []
        for r in self.runs:
            v = r.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out.append(float(v))
        return out

    @property
    def scores(self) -> list[float]:
        return self.values("normalized_score")


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def load_results(results_dir: Path) -> tuple[dict[tuple[str, str], Cell], list[str], list[tuple[str, str]]]:
    """All ``<name>/<task>/seed<k>.json`` files -> cells; also the file list and the (file, reason) skipped."""
    cells: dict[tuple[str, str], Cell] = {}
    files, skipped = [], []
    for path in sorted(results_dir.glob("*/*/seed*.json")):
        rel = path.relative_to(results_dir).as_posix()
        if not re.fullmatch(r"seed\d+\.json", path.name):
            continue
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            skipped.append((rel, f"unreadable ({type(exc).__name__})"))
            continue
        score = result.get("normalized_score") if isinstance(result, dict) else None
        if not isinstance(score, (int, float)) or not math.isfinite(score):
            skipped.append((rel, "no finite normalized_score"))
            continue
        name, task = path.parent.parent.name, path.parent.name
        if result.get("task", task) != task:
            skipped.append((rel, f"its task is '{result.get('task')}', not the folder's '{task}'"))
            continue
        result = {**result, "_file": rel, "_seed": int(path.stem[4:])}
        cells.setdefault((name, task), Cell(name, task)).runs.append(result)
        files.append(rel)
    for cell in cells.values():
        cell.runs.sort(key=lambda r: r["_seed"])
    return cells, files, skipped


def group_of(task: str) -> str:
    if task.startswith(("minari-", "minari:")):
        return "minari"
    if re.search(r"-v\d+$", task):  # D4RL's own names (maze2d-*-v1, antmaze-*-v2, hopper-*-v2): the user's files
        return "d4rl"
    for prefix in ("maze2d", "multi2d", "antmaze"):
        if task.startswith(prefix + "-"):
            return prefix
    if task.split("-")[0] in ("halfcheetah", "hopper", "walker2d", "ant", "humanoid"):
        return "locomotion"
    return "other"


def size_of(task: str) -> Optional[str]:
    m = re.fullmatch(r"(?:maze2d|multi2d|antmaze)-(umaze|medium|large)(?:-play|-diverse)?(?:-v\d+)?", task)
    return m.group(1) if m else None


def load_variants() -> dict[str, tuple[str, list[str]]]:
    """benchmarks/run.py's VARIANTS (ablations): variant name -> (algorithm, overrides)."""
    return dict(load_run_module().VARIANTS)


def load_run_module():
    """benchmarks/run.py as a module (a script, not a package)."""
    return load_script(Path(__file__).with_name("run.py"), "benchmarks_run")


def order_names(names) -> list[str]:
    names = set(names)
    return [a for a in ALGO_ORDER if a in names] + sorted(names - set(ALGO_ORDER))


def task_sort_key(task: str):
    size = size_of(task)
    return ({"umaze": 0, "medium": 1, "large": 2}.get(size, 3) if size else 3, task)


# ----------------------------------------------------------------------------- markdown
def fmt(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:.1f}"


def stale(cell: Cell) -> bool:
    """Some run of the cell trained with another budget (or return condition) than its committed config sets now (a
    config changed after the run): the cell is marked until it is re-run (``benchmarks/run.py --rerun-stale``)."""
    algo, overrides = load_variants().get(cell.name, (cell.name, []))
    return any(load_run_module().stale_fields(algo, cell.task, r, overrides=overrides) for r in cell.runs)


STALE_NOTE = ("†: trained with another budget (steps or batch size) or return condition than the committed config "
              "now sets; to be re-run.")


def leader(values) -> Optional[float]:
    """The value to print in bold: the best, unless every one is the same (a row of equal scores has no best)."""
    values = list(values)
    return None if not values or (len(values) > 1 and len(set(values)) == 1) else max(values)


def score_cell(cell: Optional[Cell], bold: bool) -> str:
    if cell is None or not cell.scores:
        return "—"
    m, s = mean_std(cell.scores)
    text = f"{m:.1f} ± {s:.1f}" if len(cell.scores) > 1 else f"{m:.1f}"
    return (f"**{text}**" if bold else text) + f" ({len(cell.scores)})" + (" †" if stale(cell) else "")


def md_table(header: list[str], rows: list[list[str]], align: Optional[list[str]] = None) -> list[str]:
    align = align or ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def published_columns(group: str, tasks: list[str]) -> list[str]:
    """The group's published columns measured under the protocol our columns follow on its tasks."""
    if not tasks:
        return []
    return [c for c in PAPER.get(group, {}) if c not in PAPER_PROTOCOL
            or goal_input(tasks[0], PAPER_PROTOCOL[c][0]) == PAPER_PROTOCOL[c][1]]


def task_label(task: str, names: list[str], cells: dict) -> str:
    """The task's name, and the Minari dataset(s) its result files name (the source reaches the table)."""
    sources = {(r.get("dataset") or {}).get("source") or "" for n in names if (n, task) in cells
               for r in cells[(n, task)].runs}
    minari = sorted(s.split(" ")[0] for s in sources if s.startswith("minari:"))
    return f"`{task}`" + (f" ({', '.join(minari)})" if minari else "")


COLLECTOR_SEEDS = "1000"  # the committed configs' block of evaluation seeds (collector_scores.json has others too)
COLLECTOR_COLUMN = "data's controller: noisy / noiseless"


def load_collector(results_dir: Path) -> dict:
    """benchmarks/collector_scores.py's measurements (task -> seed block -> ...), {} when absent."""
    path = Path(results_dir) / "collector_scores.json"
    return json.loads(path.read_text()).get("tasks", {}) if path.is_file() else {}


def collector_score(collector: dict, task: str, kind: str) -> Optional[float]:
    row = collector.get(task, {}).get(COLLECTOR_SEEDS)
    return row[kind]["normalized_score"] if row else None


def score_table(group: str, tasks: list[str], names: list[str], cells: dict, published: bool = True,
                collector: Optional[dict] = None) -> list[str]:
    """Task x algorithm table of one group (ours), the data's controller (``collector``: the ceiling of imitation,
    when measured), then the papers' columns of the same protocol (``published``)."""
    canonical = dict((g, list(t)) for g, _, t in GROUPS)[group]
    paper_cols = published_columns(group, [t for t in canonical if t in tasks]) if published else []
    collector = {t: v for t, v in (collector or {}).items() if t in tasks}
    header = ["task"] + names + ([COLLECTOR_COLUMN] if collector else []) + paper_cols
    rows = []
    row_means: dict[str, dict[str, float]] = defaultdict(dict)
    # a column with no result in the whole group says so (e.g. a protocol whose runs are still to be made)
    not_run = {n for n in names if not any((n, t) in cells and cells[(n, t)].scores for t in tasks)}
    for task in tasks:
        means = {n: round(mean_std(cells[(n, task)].scores)[0], 1) for n in names
                 if (n, task) in cells and cells[(n, task)].scores}
        best = leader(means.values())
        row = [task_label(task, names, cells)]
        row += ["not run" if n in not_run else score_cell(cells.get((n, task)), means.get(n) == best)
                for n in names]
        if collector:
            row.append(" / ".join(fmt(collector_score(collector, task, k)) for k in ("collector", "noiseless")))
        size = size_of(task)
        row += [fmt(PAPER[group][c].get(size)) if size else "—" for c in paper_cols]
        rows.append(row)
        for n, m in means.items():
            row_means[n][task] = m
    # average over the group's canonical tasks (or all rows), for algorithms that have every one of them
    avg_tasks = [t for t in canonical if t in tasks] if canonical else tasks
    averages = {}
    for n in names:
        if avg_tasks and all(t in row_means[n] for t in avg_tasks):
            averages[n] = round(sum(row_means[n][t] for t in avg_tasks) / len(avg_tasks), 1)
    best = leader(averages.values())
    avg_row = ["**average**"] + [(f"**{averages[n]:.1f}**" if averages[n] == best else f"{averages[n]:.1f}")
                                 if n in averages else "—" for n in names]
    if collector:
        means_of = [[collector_score(collector, t, k) for t in avg_tasks] for k in ("collector", "noiseless")]
        avg_row.append(" / ".join(fmt(sum(v) / len(v)) if v and None not in v else "—" for v in means_of))
    for c in paper_cols:
        values = PAPER[group][c]
        if "average" in values:
            avg_row.append(fmt(values["average"]))
        elif all(s in values for s in ("umaze", "medium", "large")):
            avg_row.append(fmt(sum(values[s] for s in ("umaze", "medium", "large")) / 3))
        else:
            avg_row.append("—")
    rows.append(avg_row)
    return md_table(header, rows)


def goal_override(name: str, variants: dict) -> tuple[str, Optional[bool]]:
    """(algorithm, goal_input override) of a column: a variant's algorithm and its ``--goal_input``, if any."""
    algo, overrides = variants.get(name, (name, []))
    if "--goal_input" in overrides[:-1]:
        return algo, overrides[overrides.index("--goal_input") + 1].lower() == "true"
    return algo, None


def order_variants(names: list[str], variants: dict) -> list[str]:
    """Variants in the column order of their algorithms."""
    rank = {a: i for i, a in enumerate(ALGO_ORDER)}
    return sorted(names, key=lambda n: (rank.get(variants[n][0], len(rank)), variants[n][0], n))


def inputs_lines(tasks: list[str], names: list[str], variants: dict) -> list[str]:
    """What each column is given on these tasks (shared.tasks.algo_inputs); nothing for tasks outside the registry."""
    parts = []
    for n in names:
        algo, override = goal_override(n, variants)
        try:
            parts.append(f"`{n}`: {algo_inputs(tasks[0], algo, override)}")
        except (KeyError, ValueError, IndexError):
            return []
    return ["Given to each column (`shared/tasks.py`): " + "; ".join(parts) + "."] if parts else []


COLLECTOR_NOTE = ("`data's controller`: the waypoint controller that collected the data, with its N(0, 0.5) action "
                  "noise and without it, evaluated like the algorithms on the same evaluation seeds "
                  "(`benchmarks/collector_scores.py`); the noiseless one defines 100 on other seeds. An algorithm that "
                  "imitates the data well lands near the first number.")


def note_lines(collector: bool = False) -> list[str]:
    return [
        "Cells: mean ± sample standard deviation of the normalised score over seeds, the seed count in "
        "parentheses; the best of our means in each row is in **bold** (none where all are equal); the average "
        "row averages the per-task means over the group's tasks (only for algorithms with all of them); in the "
        "published columns it is the paper's stated average where we have only that, else the mean of the three "
        "tasks. " + STALE_NOTE,
        "",
        "**Protocol** (`shared/tasks.py`, `goal_input`): on `maze2d-*` (one fixed goal, D4RL's protocol) BC, IQL "
        "and DT are not given the goal, as D4RL and CORL run them (BC imitates from observations, IQL and DT learn "
        "from observations and the sparse reward of the fixed goal), while Diffuser and MAGE are given the goal, as "
        "in their papers; on `multi2d-*` (a new goal every episode) every algorithm is given the goal. Diffuser "
        "and MAGE train on `multi2d-X` exactly as on `maze2d-X` (the same data, hindsight goals and config), so "
        "benchmarks/run.py trains them once for both when a grid asks for both (a `twin` in the timing table). "
        "The `-goal` columns are BC, IQL and DT given the goal on maze2d too (the protocol of this suite before "
        "issue 13), in a table of their own. A published column appears only in a table whose column of the same "
        "algorithm follows the protocol it was measured under. `not run`: no result file for that column in the "
        "group yet.",
        "",
        "**Not directly comparable:** the `paper:` / `reported:` columns are published numbers on the original "
        "D4RL datasets with D4RL's reference scores. Our columns use datasets regenerated with the D4RL recipe "
        "on gymnasium-robotics (`shared/datasets.py`) and our own reference scores (`shared/reference_scores.json`"
        "); the scale of our scores is not the scale of the papers'.",
    ] + (["", COLLECTOR_NOTE] if collector else [])


def partial_wall(run: dict) -> bool:
    """A resumed run of a commit whose train_wall_s counts only the part after the resume (PARTIAL_WALL_COMMITS)."""
    return bool((run.get("config") or {}).get("resume")) and str(run.get("git_commit")).startswith(
        PARTIAL_WALL_COMMITS)


def timing_table(cells: dict, names: list[str], tasks: list[str]) -> list[str]:
    header = ["task", "algorithm", "seeds", "train steps", "train wall (min)", "latency (ms / action)",
              "batch", "device"]
    rows = []
    for task in tasks:
        for n in names:
            cell = cells.get((n, task))
            if cell is None:
                continue
            steps = sorted({int(r["train_steps"]) for r in cell.runs if isinstance(r.get("train_steps"), int)})
            wall = [r["train_wall_s"] / 60 for r in cell.runs
                    if isinstance(r.get("train_wall_s"), (int, float)) and not partial_wall(r)]
            resumed = sum(partial_wall(r) for r in cell.runs)
            lat = cell.values("action_latency_ms")
            batches = set()
            for r in cell.runs:
                b = r.get("action_latency_batch")
                if b is None:  # older files: the batch is evaluate()'s min(num_eval_envs, eval_episodes)
                    cfg = r.get("config") or {}
                    if "num_eval_envs" in cfg and "eval_episodes" in cfg:
                        b = f"{min(cfg['num_eval_envs'], cfg['eval_episodes'])}*"
                batches.add(str(b) if b is not None else "?")
            devices = sorted({str(r.get("device")) for r in cell.runs})
            wall_s = "—" if not wall else (f"{mean_std(wall)[0]:.1f} ± {mean_std(wall)[1]:.1f}" if len(wall) > 1
                                           else f"{wall[0]:.1f}")
            lat_s = "—" if not lat else (f"{mean_std(lat)[0]:.2f} ± {mean_std(lat)[1]:.2f}" if len(lat) > 1
                                         else f"{lat[0]:.2f}")
            if resumed:
                wall_s += f" ({resumed} resumed: not counted)"
            twins = sum("trained_by" in r for r in cell.runs)
            if twins:
                wall_s += f" ({twins} twin)"
            rows.append([f"`{task}`", n, str(len(cell.runs)), ", ".join(map(str, steps)) or "—", wall_s, lat_s,
                         ", ".join(sorted(batches)), "; ".join(devices)])
    if not rows:
        return ["No result files yet."]
    return md_table(header, rows, ["---", "---", "---:", "---:", "---:", "---:", "---:", "---"])


def paired_delta(base: Optional[Cell], variant: Optional[Cell]) -> str:
    """Mean of (variant - base) over the seeds both cells have, with that seed count: '-3.1 (2)', or '—'."""
    if base is None or variant is None:
        return "—"
    def by_seed(c: Cell) -> dict:
        return {r.get("seed"): float(r["normalized_score"]) for r in c.runs
                if isinstance(r.get("normalized_score"), (int, float)) and math.isfinite(r["normalized_score"])}
    b, v = by_seed(base), by_seed(variant)
    shared = sorted(set(b) & set(v), key=str)
    if not shared:
        return "— (no shared seed)"
    return f"{sum(v[k] - b[k] for k in shared) / len(shared):+.1f} ({len(shared)})"


def ablation_table(cells: dict, variants: dict, present: set[str]) -> list[str]:
    """Variants of an algorithm vs the algorithm itself, on the tasks where some variant has results."""
    lines = []
    by_base: dict[str, list[str]] = defaultdict(list)
    for name in sorted(present):
        base = variants[name][0] if name in variants else None
        if base is None and "-" in name and name.split("-")[0] in ALGO_ORDER:
            base = name.split("-")[0]
        if base is not None and base != name:
            by_base[base].append(name)
    if not by_base:
        return ["No variant results yet (variants: " + ", ".join(f"`{v}`" for v in sorted(variants)) + ")."]
    for base in order_names(by_base):
        vs = by_base[base]
        tasks = sorted({t for (n, t) in cells if n in vs}, key=lambda t: (group_order(t), task_sort_key(t)))
        header = ["task", base] + [x for v in vs for x in (v, f"Δ {v}")]
        rows = []
        for task in tasks:
            means = {n: round(mean_std(cells[(n, task)].scores)[0], 1) for n in [base] + vs if (n, task) in cells}
            best = leader(means.values())
            row = [f"`{task}`", score_cell(cells.get((base, task)), means.get(base) == best)]
            for v in vs:
                row.append(score_cell(cells.get((v, task)), means.get(v) == best))
                row.append(paired_delta(cells.get((base, task)), cells.get((v, task))))
            rows.append(row)
        lines += md_table(header, rows) + ["", "Δ: the variant minus the base on the seeds both have (same training "
                                             "and evaluation seeds), averaged over those seeds; their count in "
                                             "parentheses. The cells' means may cover other seeds.", ""]
        notes = getattr(load_run_module(), "VARIANT_NOTES", {})
        for v in vs:
            how = " ".join(variants[v][1]) if v in variants else "(not in benchmarks/run.py's VARIANTS)"
            lines.append(f"- `{v}`: `{base}` with `{how}`" + (f". It {notes[v]}." if v in notes else ""))
        lines.append("")
    return lines[:-1]


def group_order(task: str) -> int:
    return [g for g, _, _ in GROUPS].index(group_of(task))


def provenance(files: list[str], cells: dict, skipped: list, results_label: str) -> list[str]:
    commits: dict[str, int] = defaultdict(int)
    sources: dict[str, int] = defaultdict(int)
    for cell in cells.values():
        for r in cell.runs:
            commits[str(r.get("git_commit"))] += 1
            ds = r.get("dataset") or {}
            sources[f"{ds.get('source')} / {ds.get('recipe')} (recipe v{ds.get('recipe_version')})"] += 1
    lines = [f"Every number above comes from the **{len(files)}** result files under `{results_label}/` "
             "(plus the published numbers of the `paper:`/`reported:` columns)."]
    if commits:
        lines += ["", "Git commits of the code that produced them:", ""]
        lines += md_table(["commit", "files"], [[f"`{c}`", str(k)] for c, k in sorted(commits.items())])
        lines += ["", "Datasets:", ""]
        lines += md_table(["source / recipe", "files"], [[s, str(k)] for s, k in sorted(sources.items())])
    if skipped:
        lines += ["", "Ignored files:", ""] + [f"- `{f}`: {why}" for f, why in skipped]
    if files:
        lines += ["", "<details><summary>all result files</summary>", ""]
        lines += [f"- `{f}`" for f in files]
        lines += ["", "</details>"]
    return lines


# ----------------------------------------------------------------------------- speed (benchmarks/speed.py)
def load_speed(path: Path) -> tuple[Optional[dict], Optional[str]]:
    """speed.json's payload, or None and why not."""
    if not path.exists():
        return None, "missing"
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"unreadable ({type(exc).__name__})"
    return (payload, None) if isinstance(payload, dict) else (None, "not a JSON object")


def speed_num(v) -> str:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        return "—"
    a = abs(v)
    return f"{v:.0f}" if a >= 100 else f"{v:.1f}" if a >= 10 else f"{v:.2f}" if a >= 1 else f"{v:.3f}"


def speed_part(entry, part: str) -> Optional[dict]:
    """An algorithm's training or latency results in one setting (None: skipped, failed or absent)."""
    sec = entry.get(part) if isinstance(entry, dict) else None
    return sec if isinstance(sec, dict) and "error" not in sec else None


def speed_rows(algo: str, a: dict, payload: dict) -> list[tuple]:
    """(label, part, value of the part's results, target key) rows of one algorithm's table; part is "training",
    "latency" or a setting-level "ratio"."""
    entries = list((a.get("settings") or {}).values())
    tr = next((speed_part(e, "training") for e in entries if speed_part(e, "training")), None)
    lat = next((speed_part(e, "latency") for e in entries if speed_part(e, "latency")), None)
    rows: list[tuple] = []
    if tr is not None:
        stages = list(tr.get("stages") or {})
        if len(stages) > 1:
            for i, name in enumerate(stages):
                rows.append((f"training steps/s, stage {i + 1} ({name})", "training",
                             lambda t, name=name: (t.get("stages") or {}).get(name, {}).get("steps_per_s"),
                             f"{algo}_stage{i + 1}_steps_per_s"))
            rows.append(("training steps/s, whole schedule", "training", lambda t: t.get("steps_per_s"), None))
        else:
            rows.append(("training steps/s", "training", lambda t: t.get("steps_per_s"), f"{algo}_steps_per_s"))
    batches = payload.get("batches") or [1, 64]
    if lat is not None:
        plans = "per_plan_ms" in lat.get(f"batch{batches[0]}", {})
        key = "per_plan_ms" if plans else "per_action_ms"
        for b in batches:
            rows.append((f"{'one plan' if plans else 'one action'}, batch {b} (ms)", "latency",
                         lambda t, b=b: t.get(f"batch{b}", {}).get(key),
                         f"{algo}_{'plan' if plans else 'action'}_batch{b}_ms"))
        if plans:
            every = lat.get(f"batch{batches[0]}", {}).get("replans_every")
            for b in batches:
                rows.append((f"per action, one plan per {every} steps, batch {b} (ms)", "latency",
                             lambda t, b=b: t.get(f"batch{b}", {}).get("amortised_per_action_ms"), None))
        if algo == "mage":
            for b in batches:
                suffix = "" if b == 1 else f"_batch{b}"
                rows.append((f"MAGE / DT action time, batch {b}", "ratio",
                             lambda r, suffix=suffix: r.get(f"mage_over_dt_latency{suffix}"),
                             f"mage_over_dt_latency{suffix}"))
    if tr is not None:
        rows.append(("peak training memory, MiB (steady state)", "training",
                     lambda t: (t.get("peak_memory_mib"), t.get("steady_peak_memory_mib")),
                     f"{algo}_train_peak_memory_mib"))
        rows.append(("first training calls incl. capture (s)", "training", lambda t: t.get("first_calls_s"), None))
    return rows


def speed_cell(entry, part: str, get, ratios: dict) -> str:
    if not isinstance(entry, dict):
        return "—"
    if "skipped" in entry:
        return "skipped"
    if part == "ratio":
        return speed_num(get(ratios))
    sec = speed_part(entry, part)
    if sec is None:
        return "error" if ("error" in entry or isinstance(entry.get(part), dict)) else "—"
    value = get(sec)
    if isinstance(value, tuple):
        peak, steady = value
        return speed_num(peak) + (f" ({speed_num(steady)})" if steady is not None else "")
    return speed_num(value)


def speed_label(path: Path) -> str:
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return path.name


def speed_section(results_dir: Path) -> list[str]:
    """RESULTS.md's speed section: speed.json (eager vs graphs, targets), then speed_settings.json (more settings)
    and speed_committed.json (the committed configs' setting, measured again after the code changed)."""
    lines = speed_lines(load_speed(results_dir / "speed.json")[0], speed_label(results_dir / "speed.json"))
    for name, title in (("speed_settings.json", "More settings: bf16 and inductor"),
                        ("speed_committed.json", "The committed setting, measured later")):
        payload, _ = load_speed(results_dir / name)
        if payload is not None:
            lines += ["", f"### {title}", ""] + settings_lines(payload, speed_label(results_dir / name))
    return lines


def settings_lines(payload: dict, label: str) -> list[str]:
    """The same measurement over every setting of one speed.py run (e.g. ``--settings eager,graphs,graphs+bf16,
    graphs+inductor,graphs+inductor+bf16``): per algorithm one column per setting, no targets."""
    if not isinstance(payload.get("algorithms"), dict):
        return [f"`{label}` predates the eager/graphs layout of `benchmarks/speed.py`."]
    settings = list(payload.get("settings") or {})
    commit = str(payload.get("git_commit") or "unknown")
    commit = commit[:7] + ("+dirty" if commit.endswith("+dirty") else "")
    lines = [f"`{label}`: one run of `python benchmarks/speed.py --settings {','.join(settings)}` on "
             f"{payload.get('device')}, torch {payload.get('torch')}, commit `{commit}`, task `{payload.get('task')}`"
             "; *+bf16*: bf16 autocast (`--bf16 true`); *+inductor*: the loss also fused by `torch.compile` "
             "(`--inductor true`; its compilation is in the first training calls). Same measurements as above.", ""]
    missing = []
    for algo, a in payload["algorithms"].items():
        if not isinstance(a, dict):
            continue
        entries = (a.get("settings") or {})
        if not any(speed_part(e, "training") or speed_part(e, "latency") for e in entries.values()):
            missing.append(SPEED_NAMES.get(algo, algo))
            continue
        body = []
        for label_, part, get, _ in speed_rows(algo, a, payload):
            if part == "ratio":
                continue
            body.append([label_] + [speed_cell(entries.get(st), part, get, {}) for st in settings])
        lines += [f"**{SPEED_NAMES.get(algo, algo)}**", ""]
        lines += md_table(["", *settings], body, ["---"] + ["---:"] * len(settings)) + [""]
    if missing:
        lines += [f"Not measured in this file (every setting failed or was skipped): {', '.join(missing)}.", ""]
    return lines[:-1] if lines and lines[-1] == "" else lines


def speed_lines(payload: Optional[dict], label: str) -> list[str]:
    """The speed section: per algorithm eager vs graphs, with the targets."""
    regen = ("regenerate it with `python benchmarks/speed.py` (one GPU, nothing else running on it), then run "
             "`python benchmarks/tables.py`.")
    if payload is None:
        return [f"No `{label}` yet: measure with `python benchmarks/speed.py` (one GPU), then run "
                "`python benchmarks/tables.py`."]
    if not isinstance(payload.get("algorithms"), dict):
        known = [f"commit `{str(payload['git_commit'])[:7]}`" if payload.get("git_commit") else "",
                 str(payload["device"]) if payload.get("device") else ""]
        known = ", ".join(k for k in known if k)
        return [f"The committed `{label}`{f' ({known})' if known else ''} predates the eager/graphs layout of "
                "`benchmarks/speed.py` (one setting per algorithm, copies of the training steps): " + regen]
    settings = list(payload.get("settings") or {})
    targets = payload.get("targets") or {}
    summary = payload.get("targets_summary") or {}
    commit = str(payload.get("git_commit") or "unknown")
    commit = commit[:7] + ("+dirty" if commit.endswith("+dirty") else "")
    lines = [f"Measured by `python benchmarks/speed.py` (`{label}`) on {payload.get('device')}, torch "
             f"{payload.get('torch')}" + (f" (CUDA {payload['cuda']})" if payload.get("cuda") else "") +
             f", commit `{commit}`"
             f", task `{payload.get('task')}`, cuDNN benchmark {'on' if payload.get('cudnn_benchmark') else 'off'}; "
             "random weights and fake data, one process, both settings on freshly built models. *eager*: "
             "`compile: false`; *graphs*: `compile: true` (each training step one CUDA-graph replay, each plan or "
             "policy forward one replay per batch size); fp32 unless the setting says bf16. Action / plan: median "
             "time of one `policy.act` for 1 or 64 envs. Peak memory: `torch.cuda.max_memory_allocated` over "
             "warm-up, capture and the timed steps (in parentheses: the timed steps alone). Targets (maze2d-large "
             "configs, one H200) are judged on the graphs setting (eager where it did not run): "
             f"**{summary.get('met', 0)} of {summary.get('total', len(targets))} met**.", ""]
    if payload.get("quick"):
        lines += ["**Smoke test (`--quick`): tiny models and few iterations, not the configs' numbers.**", ""]
    if payload.get("device_lost"):
        lines += [f"The CUDA context was lost ({payload['device_lost']}); later measurements were skipped.", ""]
    for algo, a in payload["algorithms"].items():
        if not isinstance(a, dict):
            continue
        params = a.get("params_m")
        batch = ((a.get("config") or {}).get("batch_size"))
        extra = ", ".join(x for x in [f"{params} M parameters" if params is not None else "",
                                      f"batch {batch}" if batch is not None else ""] if x)
        lines += [f"**{SPEED_NAMES.get(algo, algo)}**" + (f" ({extra})" if extra else ""), ""]
        rows = speed_rows(algo, a, payload)
        body = []
        for label_, part, get, tkey in rows:
            cells = [speed_cell((a.get("settings") or {}).get(st), part, get,
                                (payload.get("ratios_by_setting") or {}).get(st) or {}) for st in settings]
            t = targets.get(tkey) if tkey else None
            if t:
                op = {">=": "≥", "<=": "≤"}.get(t.get("op"), t.get("op"))
                goal = f"{op} {t.get('target'):g}" if isinstance(t.get("target"), (int, float)) else str(op)
                met = "—" if t.get("measured") is None else ("yes" if t.get("met") else "**no**")
                if t.get("measured") is not None and t.get("setting") not in (None, "graphs"):
                    met += f" ({t['setting']})"
            else:
                goal, met = "", ""
            body.append([label_] + cells + [goal, met])
        if body:
            align = ["---"] + ["---:"] * len(settings) + ["---:", "---"]
            lines += md_table(["", *settings, "target", "met"], body, align)
        else:
            lines.append("Not measured.")
        gains = (a.get("speedups") or {}).get("graphs_over_eager") or {}
        shown = {k: v for k, v in gains.items() if isinstance(v, (int, float)) and k != "training_peak_memory"}
        if shown:
            lines += ["", "graphs / eager: " + ", ".join(f"{k.replace('_', ' ')} ×{speed_num(v)}"
                                                          for k, v in shown.items())
                      + (f"; training peak memory ×{speed_num(gains['training_peak_memory'])}"
                         if isinstance(gains.get("training_peak_memory"), (int, float)) else "")]
        flops, achieved = a.get("gflop_per_step"), a.get("achieved_tflop_per_s") or {}
        if isinstance(flops, dict) and flops and "error" not in flops:  # speed.py since 2026-12-07
            lines += ["", "GFLOP per training step: " + ", ".join(f"{k} {speed_num(v)}" for k, v in flops.items())
                      + "; achieved TFLOP/s: " + "; ".join(f"{st} " + ", ".join(f"{k} {speed_num(v)}" for k, v in
                                                                                   achieved[st].items())
                                                          for st in settings if achieved.get(st))]
        for s in settings:
            e = (a.get("settings") or {}).get(s) or {}
            if "error" in e:
                lines += ["", f"{s}: error `{str(e['error']).replace('`', chr(39))[:200]}`"]
        lines.append("")
    ratios = payload.get("ratios") or {}
    where = payload.get("ratios_setting") or {}
    shown = [f"`{k}` {speed_num(v)} ({where.get(k)})" for k, v in ratios.items() if v is not None]
    if shown:
        lines += ["Ratios: " + ", ".join(shown) + ".", ""]
    return lines[:-1] if lines and lines[-1] == "" else lines


def replace_block(text: str, start: str, end: str, block: str) -> str:
    """``text`` with the part between the markers replaced (markers appended at the end when missing)."""
    new_block = start + "\n" + block + end
    if start in text and end in text and text.index(start) < text.index(end):
        return text[:text.index(start)] + new_block + text[text.index(end) + len(end):]
    return text.rstrip("\n") + "\n\n" + new_block + "\n"


# ----------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcdefaults()  # ignore any matplotlibrc: same bytes everywhere with the same library versions
    matplotlib.rcParams.update({
        "font.family": "DejaVu Sans", "font.size": 9, "figure.dpi": 100, "savefig.dpi": 100,
        "axes.grid": True, "grid.alpha": 0.3, "svg.hashsalt": "mage-suite", "path.simplify": True,
    })
    return plt


def color_of(name: str, names: list[str]):
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf"]
    if name in ALGO_ORDER:
        return palette[ALGO_ORDER.index(name)]
    return palette[(len(ALGO_ORDER) + sorted(n for n in names if n not in ALGO_ORDER).index(name)) % len(palette)]


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def curve_plot(task: str, names: list[str], cells: dict) -> Optional[bytes]:
    series = []
    for n in names:
        cell = cells.get((n, task))
        if cell is None:
            continue
        by_step: dict[float, list[float]] = defaultdict(list)
        for r in cell.runs:
            for point in r.get("learning_curve") or []:
                if len(point) == 2 and all(isinstance(v, (int, float)) for v in point) and math.isfinite(point[1]):
                    by_step[float(point[0])].append(float(point[1]))
        if by_step:
            steps = sorted(by_step)
            stats = [mean_std(by_step[s]) for s in steps]
            series.append((n, steps, stats, len(cell.runs)))
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for n, steps, stats, seeds in series:
        m = [s[0] for s in stats]
        sd = [s[1] for s in stats]
        style = "-" if n in ALGO_ORDER else "--"
        label = f"{n} ({seeds} seed{'s' if seeds > 1 else ''})"
        ax.plot(steps, m, style, marker="o", markersize=3, color=color_of(n, names), label=label)
        ax.fill_between(steps, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)],
                        color=color_of(n, names), alpha=0.15, linewidth=0)
    ax.set_title(f"{task}: evaluation during training")
    ax.set_xlabel("training step")
    ax.set_ylabel("normalised score (mean ± std over seeds)", fontsize=8)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    data = png_bytes(fig)
    plt.close(fig)
    return data


def bar_plot(title: str, tasks: list[str], names: list[str], cells: dict) -> Optional[bytes]:
    names = [n for n in names if any((n, t) in cells for t in tasks)]
    if not names or not tasks:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(tasks) + 2), 3.6))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        xs, ms, sds = [], [], []
        for j, t in enumerate(tasks):
            if (n, t) in cells and cells[(n, t)].scores:
                m, s = mean_std(cells[(n, t)].scores)
                xs.append(j - 0.4 + width * (i + 0.5))
                ms.append(m)
                sds.append(s)
        ax.bar(xs, ms, width, yerr=sds, capsize=3, color=color_of(n, names), label=n)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("normalised score (mean ± std over seeds)", fontsize=8)
    ax.set_title(f"{title}: our data and reference scores")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    data = png_bytes(fig)
    plt.close(fig)
    return data


# ----------------------------------------------------------------------------- everything
def tiny_sentence(tiny_dir: Path) -> str:
    """The README's claim about its main command, from the result files of
    ``python benchmarks/run.py --algos mage --tasks tiny --seeds 0 1 2 3 4 --results-dir benchmarks/tiny``."""
    runs = [json.loads(p.read_text()) for p in sorted(Path(tiny_dir).glob("mage/tiny/seed*.json"))]
    if not runs:
        return "Its score: not measured yet (no result file under `benchmarks/tiny/`)."
    scores = [r["normalized_score"] for r in runs]
    walls = [r["train_wall_s"] / 60 for r in runs]
    mean, std = mean_std(scores)
    seeds = ", ".join(str(r["seed"]) for r in runs)
    devices = sorted({r.get("device", "?") for r in runs})
    return (f"What it printed on {' / '.join(devices)} for seeds {seeds}: normalised score {mean:.1f} ± {std:.1f} "
            f"(lowest {min(scores):.1f}; random 0, the data's expert controller 100), {min(walls):.1f}-"
            f"{max(walls):.1f} min of training (`benchmarks/tiny/`).")


def build(results_dir: Path, out: Path, readme: Optional[Path], plots_dir: Path,
          tiny_dir: Optional[Path] = None) -> dict[Path, bytes]:
    """Target path -> bytes of every output (README.md's with the block replaced)."""
    results_dir = Path(results_dir).resolve()
    cells, files, skipped = load_results(results_dir)
    collector = load_collector(results_dir)
    variants = load_variants()
    protocol = set(getattr(load_run_module(), "PROTOCOL_VARIANTS", ()))  # e.g. bc-goal: own columns, no ablation
    present = {n for n, _ in cells}
    is_variant = {n for n in present if n in variants or ("-" in n and n.split("-")[0] in ALGO_ORDER)}
    base_names = order_names(present - is_variant)
    all_tasks = sorted({t for _, t in cells}, key=lambda t: (group_order(t), task_sort_key(t)))
    try:
        results_label = results_dir.relative_to(ROOT).as_posix()
    except ValueError:
        results_label = results_dir.as_posix()
    outputs: dict[Path, bytes] = {}

    # plots
    plot_links: dict[str, Path] = {}
    for task in all_tasks:
        png = curve_plot(task, order_names(n for n, t in cells if t == task), cells)
        if png is not None:
            outputs[plots_dir / f"curves_{task}.png"] = png
    for group, title, canonical in GROUPS:
        tasks = [t for t in all_tasks if group_of(t) == group]
        png = bar_plot(title, tasks, base_names, cells)
        if png is not None:
            outputs[plots_dir / f"scores_{group}.png"] = png
            plot_links[group] = plots_dir / f"scores_{group}.png"

    def rel(target: Path, frm: Path) -> str:
        return Path(os.path.relpath(Path(target).resolve(), Path(frm).resolve().parent)).as_posix()

    # RESULTS.md
    md = ["# Benchmark results", "",
          "Generated by `python benchmarks/tables.py` from the result files alone; do not edit by hand.", ""]
    md += note_lines(bool(collector)) + [""]
    group_tables: dict[str, list[str]] = {}
    for group, title, canonical in GROUPS:
        tasks = sorted(set(canonical) | {t for t in all_tasks if group_of(t) == group}, key=task_sort_key)
        if not tasks:
            continue
        goal_names = order_variants([n for n in present & protocol if any((n, t) in cells for t in tasks)], variants)
        # a base algorithm whose -goal variant has results here gets its column too ("not run" until it has some)
        names = order_names({n for n in base_names if any((n, t) in cells for t in tasks)}
                            | {variants[n][0] for n in goal_names})
        table = score_table(group, tasks, names, cells, collector=collector) + [""] + inputs_lines(tasks, names,
                                                                                                  variants)
        md += [f"## {title}", ""]
        if not names:
            md += ["No result files for this group yet; the published numbers for reference:", ""]
        md += table + [""]
        if goal_names:
            extra = [f"*{title}, goal-conditioned baselines* (benchmarks/run.py's `-goal` variants: the goal given, "
                     "not the protocol of the table above, so no published numbers beside them):", ""]
            extra += score_table(group, tasks, goal_names, cells, published=False) + [""]
            extra += inputs_lines(tasks, goal_names, variants)
            md += extra + [""]
            table = table + [""] + extra
        group_tables[group] = table
        if group in plot_links:
            md += [f"![{title} scores]({rel(plot_links[group], out)})", ""]
        curves = [t for t in tasks if plots_dir / f"curves_{t}.png" in outputs]
        if curves:
            md += ["Learning curves: " + ", ".join(f"[{t}]({rel(plots_dir / f'curves_{t}.png', out)})"
                                                  for t in curves), ""]
    if any(PAPER.values()):
        md += ["Published columns (numbers as collected in the project's paper notes, `../shared/paper/MAGE.md` "
               "beside this repository): "
               + "; ".join(f"`{c}`: {s}" for c, s in PAPER_SOURCES.items()) + ".", ""]
    md += ["## Training time, action latency and device", "",
           "Wall time of training (evaluation excluded); latency = median wall time of one `act` call of the "
           "evaluation (all envs of a batch at once), mean over seeds; a `*` batch is derived from the config. "
           "Runs share their GPU with other runs of the grid (`benchmarks/device_grid.sh`: up to 12 per GPU under "
           "MPS), so wall times are those of a busy GPU, not of one run alone. Diffuser plans once per episode "
           "and then follows the plan, so its median `act` is a tracking step; its planning cost per call is in "
           "the speed section below (one GPU, one process). `resumed: not counted`: runs resumed by a version of the "
           "training loop whose wall time counted only the part after the resume. `twin`: the policy of a maze2d run "
           "evaluated on this task too (benchmarks/run.py's one training for both), so its wall time is that run's.",
           ""]
    md += timing_table(cells, order_names(present), all_tasks) + [""]
    ablations = {k: v for k, v in variants.items() if k not in protocol}
    md += ["## Ablations", ""] + ablation_table(cells, ablations, present - protocol) + [""]
    md += ["## Speed", ""] + speed_section(results_dir) + [""]
    md += ["## Provenance", ""] + provenance(files, cells, skipped, results_label)
    outputs[out] = ("\n".join(md).rstrip() + "\n").encode()

    # README block
    if readme is not None:
        block = ["", "Normalised scores on our regenerated datasets, mean ± std over seeds (seed count); full tables "
                 f"in [{rel(out, readme)}]({rel(out, readme)}). The `paper:` columns are published numbers on the "
                 "original D4RL data and are not directly comparable. On maze2d, BC, IQL and DT are not given the "
                 "goal (D4RL's and CORL's protocol) and Diffuser and MAGE are; the `-goal` variants give BC, IQL and "
                 "DT the goal too. `not run`: no result file yet. " + STALE_NOTE
                 + (" " + COLLECTOR_NOTE if collector else ""), ""]
        for group in ("maze2d", "multi2d"):
            title = dict((g, t) for g, t, _ in GROUPS)[group]
            block += [f"**{title}**", ""] + group_tables[group] + [""]
        link = plot_links.get("maze2d") or plot_links.get("multi2d") or next(iter(plot_links.values()), None)
        if link is not None:
            block += [f"![scores]({rel(link, readme)})", ""]
        else:
            block += ["(No result files yet: run `benchmarks/run.py`, then `python benchmarks/tables.py`.)", ""]
        text = Path(readme).read_text() if Path(readme).exists() else ""
        text = replace_block(text, START, END, "\n".join(block))
        if tiny_dir is not None and TINY_START in text:
            text = replace_block(text, TINY_START, TINY_END, tiny_sentence(tiny_dir) + "\n")
        outputs[Path(readme)] = text.encode()
    return outputs


def stale_plots(plots_dir: Path, outputs: dict[Path, bytes]) -> list[Path]:
    wanted = {p.resolve() for p in outputs}
    found = {p for pattern in PLOT_PATTERNS for p in Path(plots_dir).glob(pattern)}
    return sorted(p for p in found if p.resolve() not in wanted)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    p.add_argument("--readme", default=str(ROOT / "README.md"), help="README whose results block to rewrite; '' = none")
    p.add_argument("--plots-dir", type=Path, default=ROOT / "benchmarks" / "plots")
    p.add_argument("--tiny-dir", type=Path, default=ROOT / "benchmarks" / "tiny",
                   help="result files of the README's main command (benchmarks/run.py --tasks tiny)")
    p.add_argument("--check", action="store_true", help="exit 1 if the committed outputs are not up to date")
    args = p.parse_args(argv)
    readme = Path(args.readme) if args.readme else None
    if not args.results_dir.is_dir():
        print(f"error: no results directory {args.results_dir}", file=sys.stderr)
        return 2
    outputs = build(args.results_dir, args.out, readme, args.plots_dir, args.tiny_dir)
    if args.check:
        differ = []
        with tempfile.TemporaryDirectory(prefix="tables-check-") as tmp:
            for i, (target, data) in enumerate(sorted(outputs.items())):
                fresh = Path(tmp) / f"{i}-{target.name}"
                fresh.write_bytes(data)
                if not target.exists():
                    differ.append(f"{target}: missing")
                elif target.read_bytes() != fresh.read_bytes():
                    differ.append(f"{target}: differs")
                    if target.suffix == ".md":
                        diff = difflib.unified_diff(target.read_text().splitlines(), data.decode().splitlines(),
                                                    "committed", "regenerated", lineterm="", n=1)
                        differ += ["    " + line for line in list(diff)[:40]]
        differ += [f"{p}: stale (no result file produces it)" for p in stale_plots(args.plots_dir, outputs)]
        if differ:
            print("out of date; run `python benchmarks/tables.py`:\n  " + "\n  ".join(differ), file=sys.stderr)
            return 1
        print(f"up to date: {len(outputs)} files")
        return 0
    for target, data in outputs.items():
        if not target.exists() or target.read_bytes() != data:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, data)  # a killed run never leaves half a README
            print(f"wrote {target}")
    for stale in stale_plots(args.plots_dir, outputs):
        stale.unlink()
        print(f"removed stale {stale}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
