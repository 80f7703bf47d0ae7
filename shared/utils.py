"""Small run utilities shared by every algorithm: config parsing, seeding, devices, atomic files, checkpoints."""

from __future__ import annotations

import difflib
import json
import os
import platform
import random
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Type, TypeVar

import numpy as np
import pyrallis
import torch

T = TypeVar("T")


class RunError(RuntimeError):
    """An error that the entry point reports as one line (bad config, missing GPU, NaN loss, ...)."""


class ConfigError(RunError):
    """A config that the loaded data shows to be unusable (``check_data_fits``): reported as ``config error: ...``
    with exit status 2, as the errors found while parsing are."""


def _strict_int(value: Any) -> int:
    """pyrallis' default ``int`` turns 1.5 into 1; accept only whole numbers (1000, "1e6", 1.0e+6)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                number = None
    if isinstance(number, float) and number.is_integer():
        return int(number)
    raise ValueError(f"expected a whole number, got {value!r}")


def _strict_bool(value: Any) -> bool:
    """pyrallis' default ``bool`` makes any non-empty string True ("maybe", "false" in quotes)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _strict_float(value: Any) -> float:
    """pyrallis' default ``float`` takes true/false as 1.0/0.0."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


pyrallis.decode.register(int, _strict_int)
pyrallis.decode.register(bool, _strict_bool)
pyrallis.decode.register(float, _strict_float)
_PARSE_ERROR = re.compile(r"value='(?P<value>.*?)' into field \"[^\"]*?\.?(?P<field>\w+)\" of type (?P<type>.+?)\.\s")


def _config_error_line(exc: Exception, config_class: type) -> str:
    text = str(exc).strip()
    match = _PARSE_ERROR.search(text)
    if match:  # wrong type: name the field, the expected type and the value
        kind = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", match["type"]).replace("typing.", "")
        return f"config error: field '{match['field']}' expects {kind}, got '{match['value']}'"
    line = f"config error: {' '.join(text.split()) or repr(exc)}"
    if "do not belong" in text:  # unknown key in the yaml file: list the valid ones
        known = ", ".join(f.name for f in config_class.__dataclass_fields__.values())  # type: ignore[attr-defined]
        line += f" (valid fields: {known})"
    return line


# Valid ranges of the fields the algorithms share (a field a config does not have is skipped); None = unset is fine.
_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {}
for _names, _rule in [
    (("batch_size", "steps", "horizon", "patch", "seq_len", "episode_len", "codebook_size", "code_dim",
      "ae_channels", "ae_blocks", "d_model", "n_layers", "n_heads", "hidden_dim", "embedding_dim", "dim", "kernel_size",
      "n_diffusion_steps", "n_plans", "ema_every", "num_eval_envs", "eval_episodes", "log_every",
      "checkpoint_every", "dataset_size", "lr", "e2e_lr", "actor_lr", "qf_lr",
      "vf_lr", "gumbel_tau"), (lambda v: v > 0, "> 0")),
    (("ae_steps", "tf_steps", "e2e_steps", "warmup_steps", "eval_every", "eval_episodes_during", "weight_decay",
      "grad_clip", "dead_code_every", "end_window", "temperature", "n_guide_steps", "ema_start", "adapter_dim",
      "n_sample_steps"),
     (lambda v: v >= 0, ">= 0")),
    (("dropout", "attention_dropout", "residual_dropout", "embedding_dropout", "actor_dropout", "end_fraction",
      "ema_decay", "return_target_expectile"), (lambda v: 0 <= v < 1, "in [0, 1)")),
    (("discount", "filter_top_fraction", "tau", "phi_ratio"), (lambda v: 0 < v <= 1, "in (0, 1]")),
    (("expectile",), (lambda v: 0 < v < 1, "in (0, 1)")),
]:
    _RANGES.update({_name: _rule for _name in _names})


def check_ranges(config: Any) -> None:
    """Raise one line naming the first field outside its valid range (before any data is loaded)."""
    for name, (ok, what) in _RANGES.items():
        value = getattr(config, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not ok(value):
            raise ValueError(f"field '{name}' must be {what}, got {value}")


def check_data_fits(config: Any, bounds: np.ndarray) -> None:
    """Right after the data is loaded (trajectory ``bounds``, [n, 2] (start, end)): ConfigError, one line, when the
    data cannot fill what the config asks for, rather than a run that trains on padding or on a handful of
    transitions. Some trajectory must be as long as a segment (``horizon`` or ``seq_len``, whichever the config has);
    a ``dataset_size`` slice must hold one batch (``batch_size``; a whole dataset is used whatever its size)."""
    bounds = np.asarray(bounds).reshape(-1, 2)
    lengths = bounds[:, 1] - bounds[:, 0]
    n, longest = int(lengths.sum()), int(lengths.max(initial=0))
    size = getattr(config, "dataset_size", None)
    what = f"dataset_size {size}" if size is not None else "the dataset"
    for field in ("horizon", "seq_len"):
        length = getattr(config, field, None)
        if isinstance(length, int) and longest < length:
            raise ConfigError(f"{what} gives no segment of {field} {length}: its longest trajectory has {longest} "
                              f"steps ({n} transitions)")
    batch = getattr(config, "batch_size", None)
    if size is not None and isinstance(batch, int) and n < batch:
        raise ConfigError(f"{what} gives {n} transitions, fewer than one batch (batch_size {batch})")


def parse_config(config_class: Type[T], args: Optional[list[str]] = None) -> T:
    """Parse ``--config file.yaml`` plus ``--field value`` overrides into ``config_class`` (pyrallis).

    Any problem (unknown key, wrong type, a value out of range: ``check_ranges``, or the config's own
    ``__post_init__`` checks) becomes one clear line and exit status 2.
    """
    argv = list(sys.argv[1:] if args is None else args)
    # pyrallis calls the option --config_path; our users type --config.
    argv = ["--config_path" if a == "--config" else a.replace("--config=", "--config_path=", 1) for a in argv]
    try:
        check_option_names(argv, config_class)
        check_config_path(argv)
        config = pyrallis.parse(config_class=config_class, args=argv)
        check_ranges(config)
        return config
    except SystemExit:
        raise
    except Exception as exc:  # pyrallis raises bare Exceptions for unknown keys
        print(_config_error_line(exc, config_class), file=sys.stderr)
        raise SystemExit(2) from None


def check_option_names(argv: list[str], config_class: type) -> None:
    """Every ``--name`` must be a field's full name: argparse would otherwise take a prefix (``--tf_step 10`` as
    ``--tf_steps 10``) without a word, and a typo could silently set another field."""
    known = set(config_class.__dataclass_fields__) | {"config_path", "help"}  # type: ignore[attr-defined]
    for arg in argv:
        name = arg[2:].split("=", 1)[0]
        if arg.startswith("--") and name and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean --{close[0]}?" if close else ""
            raise ConfigError(f"unknown option --{name}{hint} (full field names only; `--help` lists them)")


def check_config_path(argv: list[str]) -> None:
    """A --config file that does not exist: one line, with the closest file of that folder (a typo in a task)."""
    for i, arg in enumerate(argv):
        path = argv[i + 1] if arg == "--config_path" and i + 1 < len(argv) else (
            arg.split("=", 1)[1] if arg.startswith("--config_path=") else None)
        if path is None or os.path.exists(path):
            continue
        folder = os.path.dirname(path) or "."
        names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        close = difflib.get_close_matches(os.path.basename(path), names, n=1)
        hint = f"; did you mean {os.path.join(folder, close[0])}?" if close else ""
        raise ConfigError(f"no config file {path}{hint}")


def run_main(main: Callable[[T], Any], config_class: Type[T]) -> None:
    """Entry point: parse the config, run ``main``; a RunError/DatasetError is printed as one line, exit 1 (a
    ConfigError: ``config error: ...``, exit 2, as at parse time)."""
    config = parse_config(config_class)
    try:
        main(config)
    except ConfigError as exc:  # found once the data is loaded: reported as the parse-time config errors are
        print(f"config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except (RunError, ValueError, KeyError, OSError) as exc:  # OSError: disk full, permissions, missing file
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"error: {text}", file=sys.stderr)
        raise SystemExit(1) from None


def set_seed(seed: int, deterministic_torch: bool = False) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic_torch:
        torch.use_deterministic_algorithms(True)


def resolve_device(device: str) -> torch.device:
    """'auto' picks cuda when present; asking for cuda without a GPU is an error, not a silent CPU run."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        configure_cpu_threads()
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RunError(f"device '{device}' was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(device)


def configure_cpu_threads() -> None:
    """Small models on a CPU run fastest on one thread: several threads stall each other on tiny ops, badly so
    on a busy 2-core machine. OMP_NUM_THREADS, when set, wins."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo; elsewhere what platform knows, '' if nothing)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def device_name(device: torch.device) -> str:
    """Human-readable name of the hardware a run used (GPU model or CPU model)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = cpu_model()
    return f"CPU: {model} x{os.cpu_count()}" if model else f"CPU x{os.cpu_count()}"


def git_commit() -> str:
    """Commit of the code that ran ('unknown' outside a git checkout); '+dirty' marks local changes."""
    if os.environ.get("MAGE_GIT_COMMIT"):  # copies without .git (e.g. a GPU machine) are told their commit
        return os.environ["MAGE_GIT_COMMIT"]
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], cwd=root, capture_output=True, text=True)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def remove_orphaned_temp_files(path: Path) -> None:
    """Delete temp files of ``path`` (``atomic_write``'s) left by writers on this host that no longer run (a SIGKILL
    runs no cleanup). Their names carry host and pid; a live writer's file, or another host's, is never touched."""
    host = socket.gethostname()
    for tmp in Path(path).parent.glob(f".{Path(path).name}.{host}-*.tmp"):
        pid = tmp.name[len(f".{Path(path).name}.{host}-"):].split(".", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except PermissionError:  # alive, another user's
            pass


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Create ``path`` through ``write(temp_name)`` so that readers never see a half-written file: a hidden temp file
    in the same directory (named by host and pid: a killed writer's leftovers are removed next time), fsync,
    permissions from the umask, ``os.replace``, fsync of the directory. On any failure the temp file is removed and
    an existing ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphaned_temp_files(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{socket.gethostname()}-{os.getpid()}.",
                               suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results, caches and checkpoints are meant to be shared
        os.replace(tmp, path)
    except BaseException:  # disk full, interrupted: no half-written temp file left behind
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)


def _write_bytes(name: str, data: bytes) -> None:
    with os.fdopen(os.open(name, os.O_WRONLY | os.O_TRUNC), "wb") as f:
        f.write(data)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: _write_bytes(tmp, data))


def atomic_write_json(path: Path, obj: Any, sort_keys: bool = True) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n").encode())


def load_script(path: Path, name: str) -> Any:
    """A script file (algorithms/*.py, benchmarks/*.py: scripts, not a package) as a module, imported once per name.
    Registered in sys.modules before it runs, since dataclasses look their module up while the file executes."""
    if name not in sys.modules:
        import importlib.util

        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


# ----------------------------------------------------------------------------- checkpoints


def rng_state() -> dict:
    """Every RNG a training loop touches, so a resumed run continues the same random stream."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    # RNG states are CPU byte tensors: a checkpoint loaded with map_location="cuda" holds them on the GPU
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(run_dir: Path, step: int, state: dict, keep: int = 2) -> Path:
    """Atomically write ``checkpoint_{step}.pt`` and keep only the ``keep`` newest."""
    run_dir = Path(run_dir)
    path = run_dir / f"checkpoint_{step:09d}.pt"
    atomic_write(path, lambda tmp: torch.save({"step": step, **state}, tmp))
    for old in sorted(run_dir.glob("checkpoint_*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_latest_checkpoint(run_dir: Path, map_location: Any = "cpu") -> Optional[dict]:
    """Newest readable checkpoint in ``run_dir``; a corrupt one is reported and the previous one used. None when there
    is no checkpoint; RunError when there are some but none is readable (starting over would overwrite them)."""
    paths = sorted(Path(run_dir).glob("checkpoint_*.pt"), reverse=True)
    for path in paths:
        try:
            state = torch.load(path, map_location=map_location, weights_only=False)
            if not isinstance(state, dict) or "step" not in state:
                raise ValueError("not a checkpoint dict")
            return state
        except Exception as exc:  # truncated zip, unpickling error, ...
            print(f"warning: checkpoint {path} is unreadable ({type(exc).__name__}); trying an older one",
                  file=sys.stderr)
    if paths:
        raise RunError(f"none of the {len(paths)} checkpoints in {run_dir} is readable; move them away to start the "
                       "run over")
    return None
