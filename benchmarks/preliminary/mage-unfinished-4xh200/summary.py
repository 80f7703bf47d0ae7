"""Print the evaluations logged by the unfinished MAGE runs in this folder: python summary.py [folder]."""

import json
import pathlib
import sys

folder = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).parent)
print("| run | last step | evaluations (step: normalised score, 10 episodes) | last e2e/inv |")
print("|---|---:|---|---:|")
for path in sorted(folder.glob("*.jsonl")):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    evals = ", ".join(f"{r['step']}: {r['eval/normalized_score']:.1f}" for r in rows if "eval/normalized_score" in r)
    inv = [r["e2e/inv"] for r in rows if "e2e/inv" in r]
    print(f"| {path.stem} | {rows[-1]['step']} | {evals or '-'} | {f'{inv[-1]:.3f}' if inv else '-'} |")
