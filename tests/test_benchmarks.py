"""Benchmark tooling: tables/plots from result files (deterministic, --check), W&B sweeps, offline W&B, speed."""

import argparse
import itertools
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT, load_algorithm


def load_script(name: str):
    """benchmarks/<name>.py as a module."""
    from shared.utils import load_script as load

    return load(ROOT / "benchmarks" / f"{name}.py", f"benchmarks_{name}")


tables = load_script("tables")


# ----------------------------------------------------------------------------- tables
def write_result(root: Path, name: str, task: str, seed: int, score: float, commit: str = "aaa111") -> None:
    path = root / name / task / f"seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "algo": name.split("-")[0], "task": task, "seed": seed,
        "dataset": {"source": "embedded", "recipe": "d4rl-maze2d", "recipe_version": 1, "size": 1000, "seed": 0,
                    "path": None},
        "normalized_score": score, "normalized_score_std": 5.0, "return_mean": score, "return_std": 1.0,
        "success_rate": 1.0, "episodes": 100, "train_steps": 1000, "train_wall_s": 120.0 * (seed + 1),
        "action_latency_ms": 2.0, "action_latency_batch": 50, "device": "NVIDIA H100 80GB HBM3",
        "git_commit": commit, "learning_curve": [[500, score / 2], [1000, score]],
        "config": {"task": task, "seed": seed},
    }))


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results"
    for seed, (a, b) in enumerate([(100.0, 60.0), (110.0, 62.0), (120.0, 64.0)]):
        write_result(root, "mage", "maze2d-umaze", seed, a)
        write_result(root, "dt", "maze2d-umaze", seed, b)
        write_result(root, "mage", "maze2d-medium", seed, a + 10)
        write_result(root, "mage", "maze2d-large", seed, a + 20)
        write_result(root, "dt", "maze2d-large", seed, b + 80)  # DT wins this row
    write_result(root, "diffuser", "multi2d-umaze", 0, 70.0, commit="bbb222")
    write_result(root, "mage-k1", "maze2d-large", 0, 90.0)
    (root / "speed.json").write_text("{}")  # not a run result: ignored
    return root


@pytest.fixture
def small_results(tmp_path):
    """Two seeds of one task: two plots, so regenerating is quick."""
    root = tmp_path / "small-results"
    write_result(root, "mage", "maze2d-umaze", 0, 100.0)
    write_result(root, "mage", "maze2d-umaze", 1, 110.0)
    return root


def generate(results_dir: Path, out_dir: Path, *extra: str) -> int:
    readme = out_dir / "README.md"
    if not readme.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        readme.write_text("# Project\n\nText that must stay.\n")
    return tables.main(["--results-dir", str(results_dir), "--out", str(out_dir / "RESULTS.md"),
                        "--readme", str(readme), "--plots-dir", str(out_dir / "plots"), *extra])


def test_a_row_of_equal_scores_has_no_bold_leader():
    tables = load_script("tables")
    assert tables.leader([0.0, 0.0, 0.0]) is None and tables.leader([5.0]) == 5.0
    assert tables.leader([3.0, 7.0, 7.0]) == 7.0 and tables.leader([]) is None


def test_tables_means_bold_paper_columns_and_identical_bytes(results, tmp_path):
    assert generate(results, tmp_path / "a") == 0
    assert generate(results, tmp_path / "b") == 0
    md = (tmp_path / "a" / "RESULTS.md").read_text()
    rows = {}  # first table row of each task: the score table
    for line in md.splitlines():
        if line.startswith("| `"):
            rows.setdefault(line.split(" | ")[0].strip("| `"), line)
    # mean ± sample std over 3 seeds, seed count; the best mean of the row in bold
    assert "| `maze2d-umaze` | **110.0 ± 10.0** (3) | 62.0 ± 2.0 (3) |" in md
    assert "| `maze2d-medium` | **120.0 ± 10.0** (3) | — |" in md
    assert "| `maze2d-large` | 130.0 ± 10.0 (3) | **142.0 ± 2.0** (3) |" in md
    assert "| **average** | **120.0** | — |" in md  # DT lacks maze2d-medium: no average for it
    # published numbers in their own labelled columns, never in ours
    header = next(line for line in md.splitlines() if line.startswith("| task | mage | dt |"))
    assert header.endswith("| paper: MAGE (D4RL original data) | paper: Diffuser | paper: HD | "
                           "reported: DT (single-file DT) |")
    assert rows["maze2d-umaze"].endswith("| 113.9 | 128.4 | 18.1 |")
    assert "153.3" in md and "155.0" in md and "132.1" in md and "165.5" in md
    assert "Not directly comparable" in md and "regenerated" in md
    # multi2d: diffuser alone, with the canonical rows kept for the published numbers
    assert "| `multi2d-umaze` | **70.0** (1) |" in md and "| `multi2d-large` | — |" in md
    # ablation table, timing table, provenance
    assert "| `maze2d-large` | **130.0 ± 10.0** (3) | 90.0 (1) | -30.0 (1) |" in md  # paired: seed 0 (120 -> 90)
    assert "`--scales [32]`" in md
    assert "| `maze2d-umaze` | mage | 3 | 1000 | 4.0 ± 2.0 | 2.00 ± 0.00 | 50 | NVIDIA H100 80GB HBM3 |" in md
    assert "**17** result files" in md and "| `aaa111` | 16 |" in md and "| `bbb222` | 1 |" in md
    # deterministic: same bytes twice, markdown and every PNG
    pngs = sorted(p.name for p in (tmp_path / "a" / "plots").glob("*.png"))
    assert pngs == ["curves_maze2d-large.png", "curves_maze2d-medium.png", "curves_maze2d-umaze.png",
                    "curves_multi2d-umaze.png", "scores_maze2d.png", "scores_multi2d.png"]
    for name in ["RESULTS.md", "README.md"] + [f"plots/{p}" for p in pngs]:
        a, b = (tmp_path / "a" / name).read_bytes(), (tmp_path / "b" / name).read_bytes()
        assert a == b, name
    assert (tmp_path / "a" / "plots" / pngs[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # README: only the marked block is written, with the main table and a plot link
    readme = (tmp_path / "a" / "README.md").read_text()
    assert readme.startswith("# Project\n\nText that must stay.\n\n<!-- results:start -->")
    block = readme[readme.index(tables.START):readme.index(tables.END)]
    assert "**110.0 ± 10.0** (3)" in block and "Multi2D" in block and "(plots/scores_maze2d.png)" in block
    assert readme.count(tables.START) == 1


def test_the_timing_table_names_twin_results_whose_training_is_another_runs(results, tmp_path):
    path = results / "diffuser" / "multi2d-umaze" / "seed0.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "trained_by": "the maze2d-umaze run of seed 0"}))
    assert generate(results, tmp_path / "a") == 0
    md = (tmp_path / "a" / "RESULTS.md").read_text()
    assert "| `multi2d-umaze` | diffuser | 1 | 1000 | 2.0 (1 twin) |" in md and "`twin`: the policy of a maze2d" in md


def test_runs_of_an_older_budget_than_the_committed_config_are_marked(tmp_path):
    import yaml

    committed = yaml.safe_load((tables.ROOT / "configs/mage/maze2d-large.yaml").read_text())
    budget = {k: committed[k] for k in ("ae_steps", "tf_steps", "e2e_steps", "batch_size")}
    root = tmp_path / "results"
    for seed, config in enumerate([budget, {**budget, "tf_steps": budget["tf_steps"] // 2}]):
        write_result(root, "mage", "maze2d-large", seed, 90.0)
        path = root / "mage" / "maze2d-large" / f"seed{seed}.json"
        run = json.loads(path.read_text())
        path.write_text(json.dumps({**run, "config": {**run["config"], **config}}))
    cells, _, _ = tables.load_results(root)
    cell = cells[("mage", "maze2d-large")]
    assert tables.stale(cell) and tables.score_cell(cell, False).endswith("(2) †")
    cell.runs = cell.runs[:1]  # the run with the committed budget alone
    assert not tables.stale(cell) and tables.score_cell(cell, False) == "90.0 (1)"
    # a variant whose overrides set the budget (mage-e2e6k: --e2e_steps 6000) is judged by its own budget
    longer = {**cell.runs[0], "config": {**cell.runs[0]["config"], "e2e_steps": 6000}}
    assert not tables.stale(tables.Cell("mage-e2e6k", "maze2d-large", [longer]))
    assert tables.stale(tables.Cell("mage-e2e6k", "maze2d-large", cell.runs))  # the base budget is not its own


@pytest.mark.slow
def test_run_py_reruns_a_stale_result_only_when_asked_and_keeps_it_if_the_rerun_fails(tmp_path):
    import subprocess
    import sys

    configs = tmp_path / "configs"
    (configs / "bc").mkdir(parents=True)
    # a committed config whose budget moved on (steps 50 -> 60) and with a key BC rejects: the re-run fails at once
    (configs / "bc" / "maze2d-umaze.yaml").write_text("task: maze2d-umaze\nsteps: 60\nno_such_field: 1\n")
    results = tmp_path / "results"
    write_result(results, "bc", "maze2d-umaze", 0, 80.0)
    path = results / "bc" / "maze2d-umaze" / "seed0.json"
    old = {**json.loads(path.read_text()), "config": {"task": "maze2d-umaze", "seed": 0, "steps": 50}}
    path.write_text(json.dumps(old))

    def run(*extra):
        return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--algos", "bc", "--tasks",
                               "maze2d-umaze", "--seeds", "0", "--config-dir", str(configs), "--results-dir",
                               str(results), "--out-dir", str(tmp_path / "runs"), *extra],
                              capture_output=True, text=True, timeout=300)

    plain = run()
    assert plain.returncode == 0 and "(stale: steps 50 -> 60)" in plain.stdout and "0 runs" in plain.stdout
    path.write_text(json.dumps(old)[:40])  # a cut file: one line naming it, nothing runs
    cut = run("--rerun-stale")
    assert cut.returncode == 1 and cut.stderr.strip().splitlines()[-1].startswith(f"error: {path} is not a readable")
    path.write_text(json.dumps(old))
    rerun = run("--rerun-stale")
    assert "re-run bc-maze2d-umaze-seed0" in rerun.stdout and "steps 50 -> 60" in rerun.stdout
    assert rerun.returncode == 1 and "FAILED" in rerun.stdout  # the bad key ended the re-run ...
    assert json.loads(path.read_text()) == old and not list(path.parent.glob("*.stale*"))  # ... the old result stays
    assert "no_such_field" in (tmp_path / "runs" / "logs" / "bc-maze2d-umaze-seed0.log").read_text()
    # a valid config: the re-run starts (the old file moved aside: a run refuses to start over a result) and writes
    (configs / "bc" / "maze2d-umaze.yaml").write_text(
        "task: maze2d-umaze\nsteps: 60\ndataset_size: 5000\ndevice: cpu\neval_episodes: 2\nnum_eval_envs: 2\n"
        "log_every: 20\ncheckpoint_every: 1000\n")
    rerun = run("--rerun-stale")
    assert rerun.returncode == 0, rerun.stdout[-2000:]
    assert json.loads(path.read_text())["config"]["steps"] == 60
    assert json.loads((path.parent / "seed0.json.stale").read_text()) == old


def test_run_py_staggers_the_starts_of_runs_sharing_a_device(tmp_path):
    import re
    import subprocess
    import sys

    configs = tmp_path / "configs"
    (configs / "bc").mkdir(parents=True)
    (configs / "bc" / "maze2d-umaze.yaml").write_text("task: maze2d-umaze\nno_such_field: 1\n")  # fails at once
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--algos", "bc", "--tasks",
                          "maze2d-umaze", "--seeds", "0", "1", "2", "--per-gpu", "3", "--stagger", "2",
                          "--config-dir", str(configs), "--results-dir", str(tmp_path / "results"),
                          "--out-dir", str(tmp_path / "runs")], capture_output=True, text=True, timeout=300)
    starts = [int(s) for s in re.findall(r"^start bc-maze2d-umaze-seed\d on CPU at \+(\d+)s", out.stdout, re.M)]
    assert len(starts) == 3 and starts[0] == 0 and starts[1] >= 2 and starts[2] - starts[1] >= 2, out.stdout


def test_goal_variants_get_their_own_table_and_published_columns_only_their_protocol(results, tmp_path, monkeypatch):
    for seed, score in enumerate((96.0, 98.0)):
        write_result(results, "bc-goal", "maze2d-umaze", seed, score)
    assert generate(results, tmp_path / "a") == 0
    md = (tmp_path / "a" / "RESULTS.md").read_text()
    lines = md.splitlines()
    # the main maze2d table gets a bc column ("not run": BC without the goal has no results) beside the published ones
    main = next(line for line in lines if line.startswith("| task | mage | dt | bc |"))
    assert main.endswith("| reported: DT (single-file DT) |")
    assert "| `maze2d-umaze` | **110.0 ± 10.0** (3) | 62.0 ± 2.0 (3) | not run | — |" in md
    # bc-goal: a table of its own, no published column in it, and not an ablation of bc
    assert "| task | bc-goal |" in lines and "| `maze2d-umaze` | **97.0 ± 1.4** (2) |" in lines
    assert "Δ bc-goal" not in md and "| task | bc |" not in md
    # what each column is given, from the task registry
    assert "`bc`: observation only (imitation: no goal, no reward)" in md
    assert "`bc-goal`: observation + goal (training: the hindsight collection goal)" in md
    assert "`dt`: observation + return-to-go of the task's reward (CORL's DT)" in md
    assert "`diffuser`: observation; the goal inpainted at the plan's end" in md
    # were DT given the goal on maze2d, the reported (goal-free) DT numbers would leave its table
    monkeypatch.setattr(tables, "goal_input", lambda task, algo, override=None: task.startswith("maze2d"))
    assert generate(results, tmp_path / "b") == 0
    md = (tmp_path / "b" / "RESULTS.md").read_text()
    assert "| paper: HD |" in md and "reported: DT" not in md.split("## Multi2D")[0].split("Published columns")[0]


def test_check_detects_changed_missing_and_stale_files(small_results, tmp_path, capsys):
    results = small_results
    out = tmp_path / "out"
    assert generate(results, out) == 0
    assert generate(results, out, "--check") == 0
    readme = out / "README.md"
    readme.write_text(readme.read_text().replace("Text that must stay.", "Edited outside the block."))
    assert generate(results, out, "--check") == 0  # text outside the markers is not ours
    md = out / "RESULTS.md"
    original = md.read_bytes()
    md.write_bytes(original.replace(b"105.0", b"106.0"))
    assert generate(results, out, "--check") == 1
    assert "RESULTS.md" in capsys.readouterr().err
    md.write_bytes(original)
    png = out / "plots" / "scores_maze2d.png"
    png.write_bytes(png.read_bytes() + b"\0")
    assert generate(results, out, "--check") == 1
    assert generate(results, out) == 0 and generate(results, out, "--check") == 0
    (out / "plots" / "curves_gone-task.png").write_bytes(b"old")
    assert generate(results, out, "--check") == 1
    assert generate(results, out) == 0 and not (out / "plots" / "curves_gone-task.png").exists()
    write_result(results, "dt", "multi2d-umaze", 0, 50.0)  # a new result file: outputs are stale
    assert generate(results, out, "--check") == 1


def test_speed_section_of_results_md_from_speed_json(small_results, tmp_path):
    out = tmp_path / "out"
    results_md = out / "RESULTS.md"  # the speed tables: a section of RESULTS.md, not of the README
    assert generate(small_results, out) == 0  # no speed.json: says so
    text = results_md.read_text()
    assert "## Speed" in text and "No `" in text.split("## Speed")[1]
    assert "speed" not in (out / "README.md").read_text().split("<!-- results:start -->")[0]
    speed_json = small_results / "speed.json"
    old = {"device": "NVIDIA H200", "git_commit": "493fc27abc", "settings": {"fp32": {"mage": {}}}}
    speed_json.write_text(json.dumps(old))  # the layout before eager/graphs: no crash, a regeneration note
    assert generate(small_results, out, "--check") == 1  # the speed section is stale
    assert generate(small_results, out) == 0 and generate(small_results, out, "--check") == 0
    assert "predates the eager/graphs layout" in results_md.read_text() and "`493fc27`" in results_md.read_text()
    entry = {"training": {"steps_per_s": 500.0, "stages": {"train": {"steps_per_s": 500.0}},
                          "peak_memory_mib": 900.0, "steady_peak_memory_mib": 700.0, "first_calls_s": 1.5},
             "latency": {"batch1": {"per_action_ms": 0.5}, "batch64": {"per_action_ms": 0.75}}}
    new = {"device": "NVIDIA H200", "torch": "2.11", "cuda": "13.0", "git_commit": "abcdef0123", "task": "maze2d-large",
           "quick": False, "cudnn_benchmark": True, "batches": [1, 64],
           "settings": {"eager": {"compile": False}, "graphs": {"compile": True}},
           "algorithms": {"bc": {"params_m": 0.07, "config": {"batch_size": 512},
                                 "settings": {"eager": entry, "graphs": {"error": "RuntimeError: capture | failed"}},
                                 "speedups": {"graphs_over_eager": {}}}},
           "targets": {"bc_steps_per_s": {"target": 3000, "op": ">=", "measured": 500.0, "met": False,
                                          "setting": "eager"}},
           "targets_summary": {"met": 0, "total": 1}, "ratios": {}, "ratios_setting": {}}
    speed_json.write_text(json.dumps(new))
    assert generate(small_results, out, "--check") == 1
    assert generate(small_results, out) == 0 and generate(small_results, out, "--check") == 0
    text = results_md.read_text()
    assert "NVIDIA H200, torch 2.11 (CUDA 13.0), commit `abcdef0`" in text and "**0 of 1 met**" in text
    assert "| training steps/s | 500 | error | ≥ 3000 | **no** (eager) |" in text
    assert "| peak training memory, MiB (steady state) | 900 (700) | error |  |  |" in text
    assert "| one action, batch 64 (ms) | 0.750 | error |  |  |" in text
    assert "graphs: error `RuntimeError: capture | failed`" in text


def test_readme_states_the_main_commands_scores_from_its_result_files(tmp_path):
    tiny = tmp_path / "tiny"
    assert "not measured yet" in tables.tiny_sentence(tiny)
    (tiny / "mage" / "tiny").mkdir(parents=True)
    for seed, score in [(0, 90.0), (1, 80.0)]:
        (tiny / "mage" / "tiny" / f"seed{seed}.json").write_text(json.dumps(
            {"seed": seed, "normalized_score": score, "train_wall_s": 180.0 + 60 * seed, "device": "CPU: test x2"}))
    line = tables.tiny_sentence(tiny)
    assert "seeds 0, 1" in line and "85.0 ± 7.1" in line and "lowest 80.0" in line and "3.0-4.0 min" in line, line
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{tables.TINY_START}\nold\n{tables.TINY_END}\n")
    out = tables.build(tmp_path / "none", tmp_path / "RESULTS.md", readme, tmp_path / "plots", tiny)
    text = out[readme].decode()
    assert line in text and "old" not in text and text.count(tables.TINY_START) == 1


def test_committed_tables_are_up_to_date():
    """benchmarks/RESULTS.md, README's block and benchmarks/plots match benchmarks/results/ (regenerate with
    `python benchmarks/tables.py` after adding result files)."""
    if not (ROOT / "benchmarks" / "RESULTS.md").exists():
        pytest.skip("benchmarks/RESULTS.md not generated yet")
    assert tables.main(["--check"]) == 0


# ----------------------------------------------------------------------------- sweeps
SWEEP_GRID_TASKS = ["maze2d-umaze", "maze2d-medium", "maze2d-large", "multi2d-umaze", "multi2d-medium",
                    "multi2d-large"]


def sweep_values(spec: dict) -> list:
    return list(spec["values"]) if "values" in spec else [spec["value"]]


def test_sweeps_parse_and_name_existing_programs_configs_and_fields():
    pytest.importorskip("wandb")
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args  # how an agent formats the arguments

    run = tables.load_run_module()
    sweeps = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
    assert {p.stem for p in sweeps} >= {"mage", "dt", "diffuser", "iql", "bc", "mage-ablation"}
    grid = set()
    for path in sweeps:
        sweep = yaml.safe_load(path.read_text())
        assert sweep["method"] == "grid", path
        assert (ROOT / sweep["program"]).is_file(), path
        assert sweep["command"] == ["${env}", "python", "${program}", "${args}"], path
        params = sweep["parameters"]
        names, tasks, seeds = (sweep_values(params[k]) for k in ("algo", "task", "seed"))
        extra = {k: sweep_values(v) for k, v in params.items() if k not in ("algo", "task", "seed")}
        for name in names:
            algo, _ = run.VARIANTS.get(name, (name, []))
            fields = set(load_algorithm(algo).TrainConfig.__dataclass_fields__)
            assert set(extra) <= fields, f"{path.name}: {set(extra) - fields} are not fields of {algo}'s TrainConfig"
            for task in tasks:
                assert (ROOT / "configs" / algo / f"{task}.yaml").is_file(), f"{path.name}: no configs/{algo}/{task}"
        grid |= set(itertools.product(names, tasks, seeds))
        # every grid point, with the arguments a W&B agent passes (--key=value), gives run.py's command
        agent = load_script("sweep_agent")
        for values in itertools.product(*(sweep_values(v) for v in params.values())):
            point = dict(zip(params, values))
            flags = create_sweep_command_args({"args": {k: {"value": v} for k, v in point.items()}})["args"]
            cmd, result, _ = agent.build_command(flags)
            algo = run.VARIANTS.get(point["algo"], (point["algo"], []))[0]
            assert cmd[1:4] == [str(ROOT / "algorithms" / f"{algo}.py"), "--config",
                                str(ROOT / "configs" / algo / f"{point['task']}.yaml")]
            assert result.parent == ROOT / "benchmarks" / "results" / point["algo"] / point["task"]
            assert all(f"--{k}={point[k]}" in cmd for k in extra), (cmd, extra)
    # the same grid as benchmarks/run.py's full comparison and MAGE's ablation
    expected = set(itertools.product(["mage", "dt", "diffuser", "iql", "bc"], SWEEP_GRID_TASKS, [0, 1, 2]))
    ablations = [v for v in run.VARIANTS if v not in run.PROTOCOL_VARIANTS + run.ANTMAZE_VARIANTS]
    expected |= set(itertools.product(["mage", *ablations], ["maze2d-large"], [0, 1, 2]))
    # and the goal-conditioned baselines on maze2d (configs/sweeps/goal-variants.yaml)
    expected |= set(itertools.product(run.PROTOCOL_VARIANTS, SWEEP_GRID_TASKS[:3], [0, 1, 2]))
    assert grid == expected


def test_sweep_agent_builds_run_py_command():
    agent = load_script("sweep_agent")
    run = tables.load_run_module()
    cmd, result, _ = agent.build_command(["--algo=mage-k1", "--task=maze2d-large", "--seed=2",
                                          "--wandb_mode=online", "--eval_episodes=50"])
    job = run.build_jobs(["mage-k1"], ["maze2d-large"], [2], ROOT / "configs")[0]
    args = type("A", (), dict(results_dir=str(ROOT / "benchmarks" / "results"), out_dir=str(ROOT / "runs"),
                              config_dir=str(ROOT / "configs"), extra=["--wandb_mode=online", "--eval_episodes=50"]))
    assert (cmd, result) == run.command(job, args)
    assert cmd[1] == str(ROOT / "algorithms" / "mage.py")
    assert cmd[2:4] == ["--config", str(ROOT / "configs" / "mage" / "maze2d-large.yaml")]
    assert "--scales" in cmd and cmd[-2:] == ["--wandb_mode=online", "--eval_episodes=50"]
    assert result == ROOT / "benchmarks" / "results" / "mage-k1" / "maze2d-large" / "seed2.json"


# ----------------------------------------------------------------------------- W&B offline
def read_wandb_records(path: Path):
    """Records of a W&B transaction log (.wandb: a 7-byte header, then LevelDB-log framed protobuf records)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        chunk = data[pos:pos + length]
        pos += length
        if kind == 0:  # zero padding to the end of the block
            pos += left - 7 - length
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def test_wandb_offline_run_logs_metrics(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from shared.logger import Logger

    monkeypatch.setenv("WANDB_MODE", "offline")  # the suite runs with W&B disabled; this test turns it on
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)

    @dataclass
    class Config:
        task: str = "maze2d-umaze"
        seed: int = 3

    logger = Logger(Config(), "mage", tmp_path, wandb_mode="offline")
    assert logger.wandb is not None
    logged = {10: {"train/loss": 0.5, "eval/normalized_score": 12.5},
              20: {"train/loss": 0.25, "eval/normalized_score": 40.0},
              30: {"train/loss": 0.125, "eval/normalized_score": 77.5}}
    for step, metrics in logged.items():
        logger.log(metrics, step)
    logger.finish({"normalized_score": 77.5, "device": "cpu"})
    import wandb

    wandb.teardown()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].name.endswith("mage-maze2d-umaze-seed3-" + runs[0].name.split("-")[-1])
    records = read_wandb_records(next(runs[0].glob("*.wandb")))
    history = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            row = {"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in r.history.item}
            history[row["_step"]] = {k: v for k, v in row.items() if not k.startswith("_")}
    assert history == logged
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["algo"] == "mage" and config["task"] == "maze2d-umaze" and config["seed"] == 3
    assert run.run_group == "maze2d-umaze"
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({"/".join(u.nested_key) or u.key: json.loads(u.value_json) for u in r.summary.update})
    assert summary["normalized_score"] == 77.5 and summary["device"] == "cpu"
    # the local copy of the history that tables can be rebuilt from
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(row["step"], row["eval/normalized_score"]) for row in lines] == [(10, 12.5), (20, 40.0), (30, 77.5)]


# ----------------------------------------------------------------------------- speed
def test_speed_quick_writes_all_keys(tmp_path):
    speed = load_script("speed")
    out = tmp_path / "speed.json"
    assert speed.main(["--quick", "--device", "cpu", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    for key in ("device", "torch", "cuda", "git_commit", "settings", "algorithms", "mage_sweeps", "ratios",
                "ratios_setting", "targets", "targets_summary", "budget", "cudnn_benchmark"):
        assert key in data, key
    assert data["quick"] is True and data["device_type"] == "cpu" and data["cudnn_benchmark"] is True
    assert data["device_lost"] is None
    # both settings, side by side; on CPU the graphs setting is the eager code path: recorded as skipped
    assert list(data["settings"]) == ["eager", "graphs"]
    graphs = data["settings"]["graphs"]
    assert graphs["compile"] is True and "CUDA graphs need CUDA" in graphs["skipped"]
    assert list(data["algorithms"]) == ["mage", "dt", "diffuser", "iql", "bc"]
    for algo, entry in data["algorithms"].items():
        assert entry["params_m"] > 0 and entry["config"]["batch_size"] == 8, algo
        assert list(entry["settings"]) == ["eager", "graphs"], algo
        assert "CUDA graphs need CUDA" in entry["settings"]["graphs"]["skipped"], algo
        eager = entry["settings"]["eager"]
        assert "error" not in eager, (algo, eager.get("error"))
        train = eager["training"]
        assert train["steps_per_s"] > 0 and train["first_calls_s"] > 0, algo
        assert train["warmup_calls"] > speed.CAPTURE_CALLS == train["first_calls"] == 3  # past the capture
        assert all(s["loss_finite"] for s in train["stages"].values()), algo
        assert train["peak_memory_mib"] is None and train["steady_peak_memory_mib"] is None  # no CUDA memory
        for batch in ("batch1", "batch64"):
            lat = eager["latency"][batch]
            assert lat["per_action_ms"] > 0 and lat["first_call_s"] >= 0 and "steady_peak_memory_mib" in lat
        assert entry["speedups"] == {"graphs_over_eager": {}}  # nothing to compare on CPU
    # FLOPs per training step (every stage), and what a setting's steps/s achieve with them
    for algo, entry in data["algorithms"].items():
        train = entry["settings"]["eager"]["training"]
        assert set(entry["gflop_per_step"]) == set(train["stages"]) and min(entry["gflop_per_step"].values()) > 0
        assert entry["achieved_tflop_per_s"]["eager"] == {
            k: round(v * entry["gflop_per_step"][k] / 1e3, 3) for k, v in train["per_stage_steps_per_s"].items()}
    # BC's MLP (6 -> 32 -> 32 -> 2, batch 8): 2 FLOPs per weight and sample forward, 4 backward, less the input's
    # gradient at the first layer
    weights, first = 6 * 32 + 32 * 32 + 32 * 2, 6 * 32
    assert data["algorithms"]["bc"]["gflop_per_step"]["train"] * 1e9 == pytest.approx(6 * 8 * weights - 2 * 8 * first,
                                                                                       rel=0.01)
    flops = data["algorithms"]["mage"]["gflop_per_step"]
    assert flops["end_to_end"] > flops["transformer"]  # stage 3 generates scale by scale and decodes as well
    mage = data["algorithms"]["mage"]["settings"]["eager"]["training"]
    assert list(mage["stages"]) == ["autoencoder", "transformer", "end_to_end"]
    rates = mage["per_stage_steps_per_s"].values()
    assert min(rates) <= mage["steps_per_s"] <= max(rates)  # weighted by the schedule
    assert set(mage["schedule"]) == set(mage["stages"])
    diffuser = data["algorithms"]["diffuser"]
    lat = diffuser["settings"]["eager"]["latency"]["batch1"]
    assert lat["per_plan_ms"] > 0 and lat["amortised_per_action_ms"] < lat["per_plan_ms"]
    assert lat["denoising_steps"] == diffuser["config"]["n_diffusion_steps"]
    sweeps = data["mage_sweeps"]
    assert sweeps["settings"] == ["eager"]
    assert [r["horizon"] for r in sweeps["horizon_sweep"]] == list(speed.QUICK.horizons)
    assert all(r["scales"][-1] == r["horizon"] // r["patch"] for r in sweeps["horizon_sweep"])
    assert [r["K"] for r in sweeps["k_sweep"]] == list(speed.QUICK.ks)
    assert all(r["eager"]["batch1_ms"] > 0 and "graphs" not in r for r in sweeps["k_sweep"])
    assert sweeps["at_diffuser_horizon"]["horizon"] == diffuser["config"]["horizon"]
    for key in ("diffuser_over_mage_latency", "mage_over_dt_latency", "diffuser_amortised_over_mage_latency",
                "mage_over_dt_latency_batch64"):
        assert data["ratios"][key] > 0 and data["ratios_setting"][key] == "eager", key  # graphs: not on CPU
    assert set(data["ratios_by_setting"]) == {"eager", "graphs"}
    # the targets: every one with its measured value (eager here), GPU memory not measured on CPU
    targets = data["targets"]
    assert list(targets) == [t[0] for t in speed.TARGETS]
    assert {f"{a}_train_peak_memory_mib" for a in speed.ALGOS} <= set(targets)
    for key, t in targets.items():
        assert {"target", "measured", "met"} <= set(t) and isinstance(t["met"], bool), key
        if key.endswith("_memory_mib"):
            assert t["measured"] is None and t["met"] is False
        else:
            assert t["measured"] > 0 and t["setting"] == "eager", key
            assert t["met"] == (t["measured"] >= t["target"] if t["op"] == ">=" else t["measured"] <= t["target"])
    assert targets["mage_stage1_steps_per_s"]["measured"] == mage["per_stage_steps_per_s"]["autoencoder"]
    assert targets["mage_over_dt_latency_batch64"]["measured"] == data["ratios"]["mage_over_dt_latency_batch64"]
    assert data["targets_summary"]["comparable"] is False and data["targets_summary"]["total"] == len(targets)
    # RESULTS.md's speed section renders this layout
    block = "\n".join(tables.speed_lines(data, "speed.json"))
    assert block.count("| training steps/s") == 4 + 4 and "| one plan, batch 1 (ms) |" in block
    assert "**Smoke test" in block and "skipped" in block and "predates" not in block
    assert block.count("GFLOP per training step: ") == 5 and "achieved TFLOP/s: eager autoencoder " in block


def test_speed_records_a_failing_setting_and_goes_on(tmp_path, monkeypatch):
    speed = load_script("speed")

    def broken(*args, **kwargs):
        raise RuntimeError("boom in training_stages")

    monkeypatch.setattr(speed.load_algorithm("bc"), "training_stages", broken)
    out = tmp_path / "speed.json"
    assert speed.main(["--quick", "--device", "cpu", "--algos", "bc,iql", "--skip-sweeps", "--cudnn-benchmark",
                       "off", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert list(data["algorithms"]) == ["bc", "iql"] and data["cudnn_benchmark"] is False
    bc = data["algorithms"]["bc"]["settings"]["eager"]
    assert bc["training"] == {"error": "RuntimeError: boom in training_stages"}  # recorded ...
    assert bc["error"] == "training: RuntimeError: boom in training_stages"
    assert bc["latency"]["batch64"]["per_action_ms"] > 0  # ... and acting is still measured, as is the next algorithm
    assert data["algorithms"]["iql"]["settings"]["eager"]["training"]["steps_per_s"] > 0
    assert data["targets"]["bc_steps_per_s"]["measured"] is None and data["device_lost"] is None
    assert data["mage_sweeps"]["horizon_sweep"] == []
    block = "\n".join(tables.speed_lines(data, "speed.json"))
    assert "eager: error `training: RuntimeError: boom in training_stages`" in block
    assert "| one action, batch 1 (ms) | " in block and "| training steps/s |" not in block.split("**IQL**")[0]


def test_speed_compares_settings_side_by_side(tmp_path, monkeypatch):
    """What a CUDA run produces for two settings that both ran (here the graphs setting is let run on CPU, where
    config.compile takes the eager path): speed-ups, ratios and targets from the graphs setting, sweeps in both."""
    speed = load_script("speed")
    monkeypatch.setattr(speed, "skip_reason", lambda setting, device: None)
    out = tmp_path / "speed.json"
    assert speed.main(["--quick", "--device", "cpu", "--algos", "mage,dt,diffuser", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    for algo, entry in data["algorithms"].items():
        assert all("error" not in e and e["training"]["steps_per_s"] > 0 for e in entry["settings"].values()), algo
        gains = entry["speedups"]["graphs_over_eager"]
        assert gains["training"] > 0 and gains["latency_batch1"] > 0 and gains["latency_batch64"] > 0, algo
    assert set(data["algorithms"]["mage"]["speedups"]["graphs_over_eager"]) >= {
        "training_autoencoder", "training_transformer", "training_end_to_end"}
    assert set(data["ratios_setting"].values()) == {"graphs"}
    assert data["ratios"] == data["ratios_by_setting"]["graphs"]
    assert data["targets"]["mage_stage1_steps_per_s"]["setting"] == "graphs"
    assert data["targets"]["mage_stage1_steps_per_s"]["measured"] == \
        data["algorithms"]["mage"]["settings"]["graphs"]["training"]["per_stage_steps_per_s"]["autoencoder"]
    assert data["targets"]["iql_steps_per_s"]["measured"] is None  # not asked for
    sweeps = data["mage_sweeps"]
    assert sweeps["settings"] == ["eager", "graphs"]
    assert all(r[s]["batch64_ms"] > 0 for r in sweeps["horizon_sweep"] for s in ("eager", "graphs"))
    block = "\n".join(tables.speed_lines(data, "speed.json"))
    assert "|  | eager | graphs | target | met |" in block and "graphs / eager: training ×" in block
    assert "skipped" not in block and "(eager)" not in block  # targets judged on graphs


def test_a_speed_setting_sets_inductor_both_ways_whatever_the_config_says():
    """configs/mage/maze2d-large.yaml sets inductor: true; the "graphs" settings must still measure without it."""
    speed = load_script("speed")
    args = argparse.Namespace(quick=False, task="maze2d-large", device="cpu")
    assert speed.make_config(speed.load_algorithm("mage"), "mage", "maze2d-large", "cpu", {}).inductor
    by_name = {s.name: s for s in speed.SETTINGS + speed.BF16_SETTINGS}
    for name, inductor in (("graphs", False), ("graphs+bf16", False), ("graphs+inductor+bf16", True)):
        c = speed.algo_config("mage", args, by_name[name])
        assert c.inductor is inductor and c.compile and c.bf16 is name.endswith("+bf16"), name


def test_k_scales_increase_and_end_at_the_latent_length():
    speed = load_script("speed")
    assert speed.pow2_scales(32) == [1, 2, 4, 8, 16, 32] and speed.pow2_scales(96)[-2:] == [64, 96]
    for length in (8, 32, 128):
        for k in range(1, min(length, 12) + 1):
            s = speed.k_scales(length, k)
            assert len(s) == k and s[-1] == length and s == sorted(set(s)) and s[0] >= 1


def test_collector_scores_measure_the_data_controller_as_the_algorithms_are_evaluated(tmp_path):
    collector = load_script("collector_scores")
    out = tmp_path / "collector.json"
    args = ["--tasks", "maze2d-umaze", "--episodes", "3", "--eval-seeds", "1000", "--out", str(out)]
    assert collector.main(args) == 0
    row = json.loads(out.read_text())["tasks"]["maze2d-umaze"]["1000"]
    # both controllers reach the goal; the data's noise doubles the action size (N(0, 0.5) on actions of ~0.25)
    assert row["noiseless"]["success_rate"] == 1.0 and row["collector"]["success_rate"] == 1.0
    assert row["collector"]["mean_abs_action"] > 1.5 * row["noiseless"]["mean_abs_action"]


def test_regenerated_data_and_the_original_d4rl_files_never_share_a_table(tmp_path):
    root = tmp_path / "results"
    write_result(root, "bc", "hopper-medium", 0, 40.0)  # our SAC's data, normalised by our random / expert returns
    write_result(root, "bc", "hopper-medium-v2", 0, 52.0)  # D4RL's file, D4RL's reference scores
    write_result(root, "bc", "antmaze-umaze-v2", 0, 55.0)
    assert generate(root, tmp_path / "out") == 0
    md = (tmp_path / "out" / "RESULTS.md").read_text()
    sections = {block.split("\n", 1)[0]: block for block in md.split("\n## ")[1:]}
    regenerated = next(b for title, b in sections.items() if title.startswith("MuJoCo locomotion (regenerated"))
    original = next(b for title, b in sections.items() if title.startswith("The original D4RL files"))
    assert "`hopper-medium`" in regenerated and "hopper-medium-v2" not in regenerated
    assert "`hopper-medium-v2`" in original and "`antmaze-umaze-v2`" in original and "`hopper-medium` " not in original
    antmaze = next(b for title, b in sections.items() if title.startswith("AntMaze"))
    assert "antmaze-umaze-v2" not in antmaze


def test_the_data_controller_column_sits_beside_the_algorithms_when_measured(results, tmp_path):
    block = {"collector": {"normalized_score": 93.3}, "noiseless": {"normalized_score": 97.1}}
    (results / "collector_scores.json").write_text(json.dumps({"tasks": {"maze2d-umaze": {"1000": block},
                                                                         "maze2d-large": {"100000": block}}}))
    assert generate(results, tmp_path / "a") == 0
    md = (tmp_path / "a" / "RESULTS.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| task | mage | dt |"))
    assert "| data's controller: noisy / noiseless | paper: MAGE" in header
    # the committed configs' evaluation seeds (1000) only: maze2d-large was measured on the tuning block alone
    assert "| `maze2d-umaze` | **110.0 ± 10.0** (3) | 62.0 ± 2.0 (3) | 93.3 / 97.1 |" in md
    assert "| `maze2d-large` | 130.0 ± 10.0 (3) | **142.0 ± 2.0** (3) | — / — |" in md
    assert "`data's controller`: the waypoint controller that collected the data" in md


# ----------------------------------------------------------------------------- goal breakdown
def write_evaluated(path: Path, algo: str, task: str, seed: int, ev) -> Path:
    """A result file written by the runs' own path (make_result, write_result) from an EvalResult."""
    from shared.logger import make_result, write_result as write

    config = {"task": task, "seed": seed, "eval_seed": ev.seed, "num_eval_envs": 10}
    return write(path, make_result(algo, config, {}, ev, train_steps=10, train_wall_s=1.0, device="cpu"))


def large_maze_eval(episodes: list):
    """multi2d-large EvalResult of (start cell, goal cell, first reward step, return) episodes; the starts lie off
    their cells' centres (the aggregate fields are placeholders)."""
    from shared.evaluation import EvalResult
    from shared.mazes import cell_to_xy, maze_map

    grid = maze_map("large")
    returns = [ret for *_, ret in episodes]
    return EvalResult(
        "multi2d-large", len(episodes), 1000, returns, returns, return_mean=0.0, return_std=0.0, score_mean=0.0,
        score_std=0.0, success_rate=0.0, action_latency_ms=1.0, latency_batch_size=5,
        first_reward_steps=[first for _, _, first, _ in episodes],
        starts=[(cell_to_xy(grid, start) + [0.312345678, -0.312345678]).tolist() for start, *_ in episodes],
        goals=[cell_to_xy(grid, goal).tolist() for _, goal, *_ in episodes])


def test_goal_breakdown_bins_episodes_by_bfs_path_length(tmp_path, capsys):
    from shared.tasks import normalized_score

    breakdown = load_script("goal_breakdown")
    # multi2d-large; BFS path lengths 3, 6, 6, 13, 17 (straight-line cells apart: 3, 2, 2, 11, 15)
    seed0 = [((1, 1), (1, 4), 10, 50.0), ((1, 4), (1, 6), -1, 0.0), ((1, 4), (1, 6), 30, 20.0),
             ((7, 1), (1, 6), 100, 5.0), ((7, 1), (1, 10), -1, 0.0)]
    seed1 = [*seed0[:1], ((1, 4), (1, 6), 40, 10.0), *seed0[2:]]
    files = [write_evaluated(tmp_path / "mage" / "multi2d-large" / f"seed{k}.json", "mage", "multi2d-large", k,
                             large_maze_eval(eps)) for k, eps in enumerate((seed0, seed1))]
    old = tmp_path / "results"
    write_result(old, "bc", "multi2d-large", 0, 50.0)  # a file from before episode_detail
    detail = json.loads(files[0].read_text())["episode_detail"]
    assert set(detail) == {"returns", "first_reward_step", "start_xy", "goal_xy"}
    # rounded to 4 decimals: start cell (1, 1)'s centre (-4.5, 3) + the offset, goal cell (1, 4)'s centre
    assert detail["start_xy"][0] == [-4.1877, 2.6877] and detail["goal_xy"][0] == [-1.5, 3.0]

    out = tmp_path / "breakdown.json"
    assert breakdown.main([*map(str, files), str(old / "bc/multi2d-large/seed0.json"), "--json", str(out)]) == 0
    [table] = json.loads(out.read_text())["tables"]
    assert table["name"] == "mage" and table["task"] == "multi2d-large"
    rows = {r["bin"]: r for r in table["rows"]}
    assert list(rows) == ["0-3", "4-7", "8-11", "12-15", "16+"]
    assert [rows[b]["episodes"] for b in rows] == [2, 4, 0, 2, 2]
    assert [rows[b]["reached"] for b in rows] == [1.0, 0.75, None, 1.0, 0.0]
    assert [rows[b]["first_reward_step_median"] for b in rows] == [10.0, 30.0, None, 100.0, None]
    assert rows["4-7"]["score_mean"] == pytest.approx(
        sum(normalized_score("multi2d-large", r) for r in (0.0, 20.0, 10.0, 20.0)) / 4)
    printed = capsys.readouterr().out
    assert "skipped " + str(old / "bc/multi2d-large/seed0.json") + ": no episode_detail" in printed
    assert "| 4-7 | 4 | 75% | 30 |" in printed and "| 8-11 | 0 | — | — | — |" in printed
    # by goal cell: (1, 4) reached twice, (1, 6) in 5 of 6 episodes, (1, 10) never
    assert breakdown.main([*map(str, files), "--by", "goal", "--json", str(out)]) == 0
    rows = {r["bin"]: r for r in json.loads(out.read_text())["tables"][0]["rows"]}
    assert {k: (r["episodes"], r["reached"]) for k, r in rows.items()} == {
        "(1, 4)": (2, 1.0), "(1, 6)": (6, pytest.approx(5 / 6)), "(1, 10)": (2, 0.0)}
    assert "| goal cell (row, col) |" in capsys.readouterr().out


def test_goal_breakdown_runs_the_data_controller_on_the_files_episodes(tmp_path):
    from shared.evaluation import RandomPolicy, evaluate

    breakdown = load_script("goal_breakdown")
    # evaluation seeds 11-14 put 1 and 3 episodes in the first two bins (seeds 0-3 and 1000-1003: 3 and 1)
    ev = evaluate("multi2d-umaze", RandomPolicy(2, seed=11), episodes=4, seed=11, progress=False)
    path = write_evaluated(tmp_path / "random" / "multi2d-umaze" / "seed0.json", "random", "multi2d-umaze", 0, ev)
    out = tmp_path / "breakdown.json"
    assert breakdown.main([str(path), "--controller", "noiseless", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    algo, controller = payload["tables"][0]["rows"], payload["controller"]
    assert [r["episodes"] for r in algo] == [r["episodes"] for r in controller["rows"]] == [1, 3, 0, 0, 0]
    assert (controller["eval_seed"], controller["episodes"], controller["action_noise"]) == (11, 4, 0.0)
    assert [r["reached"] for r in controller["rows"][:2]] == [1.0, 1.0]
    assert sum(r["reached"] * r["episodes"] for r in algo[:2]) == 2  # the random policy: the 2 of seeds 13 and 14


def test_run_py_trains_a_planners_maze2d_and_multi2d_runs_once_when_their_configs_match(tmp_path):
    import subprocess
    import sys

    configs = tmp_path / "configs"
    for algo in ("mage", "bc"):
        (configs / algo).mkdir(parents=True)
        for task in ("maze2d-umaze", "multi2d-umaze", "maze2d-medium", "multi2d-medium"):
            extra = "horizon: 32\n" if task == "multi2d-medium" else ""  # medium's twin configs differ
            (configs / algo / f"{task}.yaml").write_text(f"task: {task}\nsteps: 10\n{extra}")

    def dry(*extra):
        return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--algos", "mage", "bc",
                               "--tasks", "maze2d-umaze", "multi2d-umaze", "maze2d-medium", "multi2d-medium",
                               "--seeds", "0", "--config-dir", str(configs), "--results-dir",
                               str(tmp_path / "results"), "--out-dir", str(tmp_path / "runs"), "--dry-run", *extra],
                              capture_output=True, text=True, timeout=120).stdout

    out = dry()
    commands = [line for line in out.splitlines() if "algorithms/" in line]
    # MAGE umaze: one training for both; MAGE medium (configs differ) and BC (no goal on maze2d): separate
    assert len(commands) == 7 and "twin mage-multi2d-umaze-seed0: evaluated by mage-maze2d-umaze-seed0" in out
    (umaze,) = [c for c in commands if "--also_evaluate" in c]
    assert "mage/maze2d-umaze.yaml" in umaze
    assert f"--also_evaluate multi2d-umaze={tmp_path / 'results' / 'mage' / 'multi2d-umaze' / 'seed0.json'}" in umaze
    assert len([c for c in dry("--separate-twins").splitlines() if "algorithms/" in c]) == 8


def test_slim_wheels_drops_only_the_unused_assets_and_their_record_lines(tmp_path, capsys):
    import zipfile

    slim = load_script("slim_wheels")
    wheel = tmp_path / "gymnasium_robotics-9.9-py3-none-any.whl"
    files = {"gymnasium_robotics/__init__.py": b"x = 1\n",
             "gymnasium_robotics/envs/assets/point/point.xml": b"<mujoco/>",
             "gymnasium_robotics/envs/assets/adroit_hand/mesh.stl": b"\0" * 5000,
             "gymnasium_robotics/envs/assets/kitchen_franka/scene.xml": b"<mujoco/>" * 500}
    record = "".join(f"{n},sha256=x,{len(b)}\n" for n, b in files.items())
    record += "gymnasium_robotics-9.9.dist-info/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("gymnasium_robotics-9.9.dist-info/RECORD", record)
    assert slim.main([str(tmp_path)]) == 0
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        kept = {n: z.read(n) for n in names}
    assert names == {"gymnasium_robotics/__init__.py", "gymnasium_robotics/envs/assets/point/point.xml",
                     "gymnasium_robotics-9.9.dist-info/RECORD"}
    assert kept["gymnasium_robotics/__init__.py"] == files["gymnasium_robotics/__init__.py"]
    lines = kept["gymnasium_robotics-9.9.dist-info/RECORD"].decode().splitlines()
    assert len(lines) == 3 and not any("adroit_hand" in ln or "kitchen_franka" in ln for ln in lines)
    size = wheel.stat().st_size
    assert slim.main([str(tmp_path)]) == 0 and wheel.stat().st_size == size  # again: nothing changes
    assert slim.main([str(tmp_path / "empty")]) == 2 and "no gymnasium_robotics wheel" in capsys.readouterr().err


def test_refit_head_fits_a_head_without_the_goal_on_generated_latents():
    """mage_diagnose --refit-head state: a fresh head that sees s_t only, fitted alone on the model's generated
    latents; it learns (its L_inv falls with steps), ignores the goal, and leaves the rest of the model as it was."""
    import torch

    diagnose = load_script("mage_diagnose")
    mage = diagnose.mage
    config = mage.TrainConfig(horizon=16, patch=2, scales=[1, 2, 4, 8], codebook_size=32, code_dim=8, ae_channels=16,
                              ae_blocks=1, d_model=32, n_layers=1, n_heads=2, batch_size=64, task="maze2d-umaze",
                              dataset_size=30_000, device="cpu", return_condition=True, wandb_mode="disabled")
    data = mage.load_data(config, torch.device("cpu"))
    torch.manual_seed(0)
    model = mage.MAGE(config, data.obs_dim, data.cond_dim, data.act_dim).eval()
    transformer = {k: v.clone() for k, v in model.transformer.state_dict().items()}
    untrained = diagnose.refit_head(model, data, config, "state", steps=0, seed=0, pool=2048)
    fitted = diagnose.refit_head(model, data, config, "state", steps=300, seed=0, pool=2048)
    assert fitted < 0.8 * untrained, (untrained, fitted)
    assert all(torch.equal(v, model.transformer.state_dict()[k]) for k, v in transformer.items())
    z = torch.randn(4, config.horizon // config.patch, config.code_dim)
    cond = data.buffer.sample(4)["cond"][:, 0]
    other_goal = cond.clone()
    other_goal[:, -2:] += 1.0
    assert torch.equal(model.inverse(z, cond), model.inverse(z, other_goal))


def test_the_stall_probe_tells_a_plan_through_a_wall_from_one_around_it():
    from shared.mazes import cell_to_xy, maze_map
    from shared.tasks import get_task

    diagnose = load_script("mage_diagnose")
    grid = maze_map(get_task("multi2d-large").maze)
    touching = np.array([2.10, 0.60])  # 0.1 (the ball's radius) from the walls of its cell's corner
    centre = cell_to_xy(grid, (4, 10))  # a free cell's centre
    through = np.linspace(touching, [2.5, -2.0], 128)  # straight down, through the wall cell below
    stay = np.repeat(centre[None], 128, 0)
    geo = diagnose.geometry("multi2d-large")
    near, first = diagnose.wall_geometry(geo, np.stack([touching, centre]), np.stack([through, stay]))
    assert near[0] == pytest.approx(0.1) and near[1] >= 0.5 and first[0] > 0 and first[1] == -1
    assert near[0] < geo.touch < near[1]
    # antmaze: the same maze units times 4 m per cell; the ant's velocity is not where the point mass's is
    ant = diagnose.geometry("antmaze-umaze")
    assert (ant.scale, ant.velocity) == (4.0, slice(15, 17)) and geo.velocity == slice(2, 4)
    start = cell_to_xy(ant.grid, (1, 1)) * 4  # D4RL's start cell, walled above and to the left
    down = np.linspace(start, start - [0.0, 8.0], 64)  # straight down through the wall cell (2, 1)
    near, first = diagnose.wall_geometry(ant, start[None], down[None])
    assert near[0] == pytest.approx(2.0) and 0 < first[0] < 32
    with pytest.raises(Exception, match="neither a point maze nor an antmaze"):
        diagnose.geometry("hopper-medium")
    a, b = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), np.array([[2.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    cos = diagnose.cosine(a, b)
    assert cos.tolist() == [1.0, 0.0, 0.0]
