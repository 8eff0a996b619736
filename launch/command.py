"""Build the `deepspeed` launcher command for `python -m pretrain` (this package never imports pretrain), and the
`python -m launch` command every orchestrator (experiment runners, growth's phases) starts a run with."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

from settings.errors import UserError

# Launcher options passed through verbatim (name -> takes a value).
PASSTHROUGH = {
    "num_gpus": True, "num_nodes": True, "hostfile": True, "include": True, "exclude": True,
    "master_addr": True, "master_port": True, "launcher": True, "node_rank": True, "no_ssh": False,
    "no_ssh_check": False, "launcher_args": True,
}


def launch_argv(config: str | Path, overrides: Sequence[str], ranks: int = 2,
                python: str = sys.executable) -> list[str]:
    """`python -m launch --num_gpus RANKS CONFIG KEY=VALUE...`: one training run through the launcher, which
    picks a free rendezvous port itself, so runs started one after another never collide. `python` is the
    interpreter to name (a command printed for a user to run names plain `python`)."""
    return [python, "-m", "launch", "--num_gpus", str(ranks), str(config), *overrides]


def trainer_argv(config: str | Path, overrides: Sequence[str], ranks: int = 2) -> list[str]:
    """The command of one training run: one CPU rank trains in a single `python -m pretrain` process (a world of
    one, as a bare run is), any other run through the launcher. The launcher's own interpreters and pre-flight
    check cost ~10 s a run, which a sweep of hundreds of short single-rank runs (experiments/lag.py) would pay
    hundreds of times; run it under `launch_env(1, False)`."""
    if ranks == 1 and not has_gpus():
        return [sys.executable, "-m", "pretrain", str(config), *overrides]
    return launch_argv(config, overrides, ranks)


LAUNCH_OWNER_ENV = "GROWLM_LAUNCH_OWNER"
"""`<host>:<pid>` of the `python -m launch` process, for its ranks: they stop (saving) when it dies."""


class OverridesError(UserError, ValueError):
    """Overrides given as something other than a mapping of config key -> value."""


def render_overrides(mapping: Mapping[str, Any] | None, where: str = "overrides") -> list[str]:
    """{key: value} -> ['key=value'] as the command line takes them: strings as they are, everything else
    (numbers, booleans, None, lists, mappings) in JSON flow form, which the dotlist parser reads back as the same
    value (None -> null). `where` names the spec and key in the error."""
    if mapping is None:
        return []
    if not isinstance(mapping, Mapping):
        raise OverridesError(f"{where} must be a mapping of config key -> value, got {mapping!r}")
    return [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in mapping.items()]


def has_gpus() -> bool:
    """Whether this node's ranks get GPUs. DS_ACCELERATOR=cpu answers without importing torch (~1 s a launch)."""
    if os.environ.get("DS_ACCELERATOR") == "cpu":
        return False
    import torch

    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def free_port() -> int:
    """A TCP port free on this host right now (the OS picks it)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_command(options: dict[str, object], config: str | None, overrides: list[str]) -> list[str]:
    """`deepspeed [launcher options] --module pretrain CONFIG key=value ...` as an argv list."""
    exe = shutil.which("deepspeed") or os.path.join(os.path.dirname(sys.executable), "deepspeed")
    # The console script is missing where deepspeed was installed with `pip --target` (the GPU machines'
    # carried wheels): run the same launcher as a module.
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "deepspeed.launcher.runner"]
    for name, takes_value in PASSTHROUGH.items():
        value = options.get(name)
        if value is None or value is False:
            continue
        cmd.append(f"--{name}")
        if takes_value:
            cmd.append(str(value))
    cmd += ["--module", "pretrain"]
    if config:
        cmd.append(config)
    return cmd + list(overrides)


def launch_env(num_ranks_here: int, gpus: bool) -> dict[str, str]:
    """Environment for the ranks: CPU ranks use DeepSpeed's CPU accelerator (gloo) and share the cores."""
    env = dict(os.environ)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(extensions_dir()))
    if not gpus:
        env.setdefault("DS_ACCELERATOR", "cpu")
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, num_ranks_here))))
    return env


def extensions_dir(prefix: str = sys.prefix) -> Path:
    """Where DeepSpeed JIT-builds its ops for this Python environment. Each op is compiled against the
    environment's own torch and deepspeed, so environments sharing torch's one default directory rebuild over each
    other, and a build killed in one leaves a lock that hangs launches in all of them."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "growlm" / "torch_extensions" / hashlib.sha256(prefix.encode()).hexdigest()[:16]
