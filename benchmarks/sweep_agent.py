"""Launcher that W&B sweep agents call (configs/sweeps/*.yaml): one grid point -> one training run.

    wandb agent ENTITY/mage-suite/SWEEP_ID     # runs, for each grid point:
    python benchmarks/sweep_agent.py --algo=mage --task=maze2d-large --seed=0 [--field=value ...]

The config file depends on the task, which a sweep's parameters cannot express, so this script builds the same
command as benchmarks/run.py for (algo or variant, task, seed) -- ``algorithms/<algo>.py --config
configs/<algo>/<task>.yaml --seed k --out_dir ... --results_path benchmarks/results/<name>/<task>/seed<k>.json``
plus the variant's overrides, ``--resume true`` when checkpoints exist -- appends every other ``--field=value``
as an override, and replaces itself with that process (exec). A grid point whose results file exists is skipped
(exit 0), as run.py does.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: shared/ is importable


def load_run_module():
    """benchmarks/run.py as a module (a script, not a package)."""
    from shared.utils import load_script  # here, not above: --help stays quick (shared.utils imports torch)

    return load_script(Path(__file__).with_name("run.py"), "benchmarks_run")


def build_command(argv: Optional[list[str]] = None) -> tuple[list[str], Path, argparse.Namespace]:
    """(command, results path, parsed args) for one grid point; unknown options become overrides."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--algo", required=True, help="algorithm file or variant of benchmarks/run.py (VARIANTS)")
    p.add_argument("--task", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--config-dir", default=str(ROOT / "configs"))
    p.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--out-dir", default=str(ROOT / "runs"))
    p.add_argument("--dry-run", action="store_true", help="print the command and exit")
    args, extra = p.parse_known_args(argv)
    bad = [a for a in extra if a.startswith("-") and not a.startswith("--")]
    if bad:
        p.error(f"overrides must be --field=value, got {bad}")
    run = load_run_module()
    job = run.build_jobs([args.algo], [args.task], [args.seed], Path(args.config_dir))[0]
    run_args = argparse.Namespace(results_dir=args.results_dir, out_dir=args.out_dir, config_dir=args.config_dir,
                                  extra=extra)
    cmd, result = run.command(job, run_args)
    return cmd, result, args


def main(argv: Optional[list[str]] = None) -> None:
    cmd, result, args = build_command(argv)
    if result.exists():
        print(f"skip: {result} exists")
        return
    print(" ".join(cmd), flush=True)
    if args.dry_run:
        return
    os.chdir(ROOT)  # as run.py: runs start in the repository root
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
