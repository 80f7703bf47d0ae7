"""Shrink the carried wheels of a device-tool lease: drop gymnasium-robotics' Adroit-hand and Franka-kitchen assets.

    bash ../shared/device/fetch-wheels.sh && python benchmarks/slim_wheels.py .whl

Why: a device call carries the working tree and `.whl` together under 64 MiB. The gymnasium-robotics wheel is 26 MB,
24 of them meshes of the Adroit hand and the Franka kitchen, which no embedded task loads (the maze, AntMaze and
locomotion envs use none of them; the `minari-door-*` / `-hammer-*` / `-kitchen-*` configs need them, with the user's
Minari data, and do not run on the device). Dropping them leaves room for the compile cache that
`benchmarks/device_grid.sh` carries between calls (`INDUCTOR_CACHE`). The wheel keeps its name; its RECORD is
rewritten without the dropped files, so pip installs it as usual. Running it again changes nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import zipfile
from pathlib import Path

DROP = ("gymnasium_robotics/envs/assets/adroit_hand/", "gymnasium_robotics/envs/assets/kitchen_franka/")


def slim(path: Path) -> tuple[int, int]:
    """Rewrite the wheel at ``path`` without the DROP folders (atomically); returns (size before, size after)."""
    before = path.stat().st_size
    with zipfile.ZipFile(path) as src:
        names = src.namelist()
        if not any(n.startswith(DROP) for n in names):
            return before, before
        tmp = path.with_name(path.name + ".tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                if info.filename.startswith(DROP):
                    continue
                data = src.read(info)
                if info.filename.endswith(".dist-info/RECORD"):
                    lines = data.decode().splitlines()
                    data = ("\n".join(ln for ln in lines if not ln.startswith(DROP)) + "\n").encode()
                dst.writestr(info, data)
    os.replace(tmp, path)
    return before, path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("wheel_dir", type=Path, help="the folder of carried wheels (.whl)")
    args = p.parse_args(argv)
    wheels = sorted(args.wheel_dir.glob("gymnasium_robotics-*.whl"))
    if not wheels:
        print(f"error: no gymnasium_robotics wheel in {args.wheel_dir} (run ../shared/device/fetch-wheels.sh first)",
              file=sys.stderr)
        return 2
    for w in wheels:
        before, after = slim(w)
        print(f"{w.name}: {before / 2**20:.1f} MB -> {after / 2**20:.1f} MB")
    total = sum(f.stat().st_size for f in args.wheel_dir.glob("*.whl"))
    print(f"{args.wheel_dir}: {total / 2**20:.1f} MB of wheels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
