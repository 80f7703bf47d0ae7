"""Is batch sampling ever the bottleneck? Times SegmentBuffer.sample (256 x H=128) against one MAGE training step
on the same device, side by side in one process, and prints the ratio.

    python benchmarks/buffer_speed.py [--device cuda] [--size 1000000]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.utils import atomic_write_json, device_name, resolve_device  # noqa: E402


def timed(fn, device: torch.device, reps: int) -> float:
    """Median seconds of fn() over reps calls, after warm-up."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="auto")
    p.add_argument("--size", type=int, default=200_000, help="transitions of maze2d-large data to load")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "buffer_speed.json"))
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "algorithms"))
    import mage

    device = resolve_device(args.device)
    config = mage.TrainConfig(task="maze2d-large", dataset_size=args.size, horizon=128, patch=4, batch_size=256,
                              wandb_mode="disabled")
    data = mage.load_data(config, device)
    model = mage.MAGE(config, data.obs_dim, data.cond_dim, data.act_dim).to(device)
    sample = lambda: data.buffer.sample(256)  # noqa: E731
    results = {"device": device_name(device), "batch": 256, "horizon": 128, "sample_ms": 1e3 * timed(sample, device,
                                                                                                      args.reps)}
    for stage in ("autoencoder", "transformer"):
        opt = mage.make_optimizer(model, stage, config)
        batch = sample()

        def step():  # the real (eager) update of the stage
            mage.update(model, opt, batch, config, stage)

        results[f"{stage}_step_ms"] = 1e3 * timed(step, device, max(3, args.reps // 4))
    results["sample_over_fastest_step"] = results["sample_ms"] / min(results["autoencoder_step_ms"],
                                                                      results["transformer_step_ms"])
    print(json.dumps(results, indent=2))
    atomic_write_json(Path(args.out), results)


if __name__ == "__main__":
    main()
