"""benchmarks/training_curves.py: metrics.jsonl logs -> one PNG of training curves; unusable logs -> exit 2."""

import json
from pathlib import Path

from shared.utils import load_script

ROOT = Path(__file__).resolve().parents[1]
curves = load_script(ROOT / "benchmarks" / "training_curves.py", "benchmarks_training_curves")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVAL = "eval/normalized_score"


def write_log(path: Path, seed: int) -> Path:
    """A small log of the three stages: autoencoder rows, then per-scale transformer rows, then end-to-end rows,
    with evaluation rows in between (and a truncated last line, as a killed run leaves)."""
    rows = [{"step": s, "time": 1.0 * s, "ae/recon": 0.1, "train/loss": 0.5} for s in (10, 20)]
    for s in range(30, 100, 10):
        row = {"step": s, "time": 1.0 * s, "tf/ce": 3.0 - s / 50 + seed / 10, "tf/token_acc": s / 200, "tf/inv": 0.3}
        for k in (1, 2, 3):
            row[f"tf/ce_scale{k}"] = row["tf/ce"] + k / 10
            row[f"tf/token_acc_scale{k}"] = row["tf/token_acc"] - k / 50
        rows.append(row)
    rows += [{"step": s, "time": 1.0 * s, "e2e/ce": 1.0, "e2e/inv": 0.2, "e2e/cond": 0.0} for s in (100, 110, 120)]
    rows += [{"step": s, "time": 1.0 * s, "eval/normalized_score": s / 2 + seed, "eval/return": 1.0}
             for s in (50, 80, 120)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 130, "tf/c')
    return path


def test_two_runs_give_a_png(tmp_path):
    files = [write_log(tmp_path / f"mage-toy-seed{i}.metrics.jsonl", i) for i in (0, 1)]
    out = tmp_path / "figs" / "curves.png"
    assert curves.main([*map(str, files), "--out", str(out), "--title", "toy"]) == 0
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert curves.run_label(files[0]) == "mage-toy-seed0"
    series = curves.read_metrics(files[0])
    assert curves.stage_boundaries(series) == [("stage 2", 30), ("stage 3", 100)]


def test_unusable_log_is_exit_2_and_writes_nothing(tmp_path, capsys):
    good = write_log(tmp_path / "mage-toy-seed0.metrics.jsonl", 0)
    empty = tmp_path / "empty.metrics.jsonl"
    empty.write_text("")
    garbage = tmp_path / "garbage.metrics.jsonl"
    garbage.write_text('not json\n[1, 2]\n{"time": 3.0, "tf/ce": 1.0}\n{"step": 5, "ae/recon": 0.1}\n')
    out = tmp_path / "curves.png"
    for bad in (empty, garbage, tmp_path / "missing.metrics.jsonl"):
        assert curves.main([str(good), str(bad), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert str(bad) in err and err.count("\n") == 1
        assert not out.exists() and list(tmp_path.glob("*.png")) == []


def test_the_wall_time_between_and_of_evaluations_comes_from_the_rows_timestamps(tmp_path, capsys):
    rows = []
    for k in range(4):  # 100 training steps in 2 s, then an evaluation of 5 s, four times
        t0 = 7.0 * k
        rows.append({"step": 100 * (k + 1), "time": t0 + 2.0, "tf/ce": 2.0})
        rows.append({"step": 100 * (k + 1), "time": t0 + 7.0, EVAL: 50.0})
    path = tmp_path / "run.metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    timing = curves.evaluation_timing(path)
    assert timing == {"evaluations": 4, "eval_s": 5.0, "train_steps_per_s": 50.0}
    assert curves.main([str(path), "--out", str(tmp_path / "c.png")]) == 0
    assert "run: 4 evaluations, 5.0 s each, 50.0 training steps/s between them" in capsys.readouterr().out
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    assert curves.evaluation_timing(path) is None  # one evaluation: nothing between two
