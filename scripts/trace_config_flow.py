"""Follow the run config through `Trainer.__init__`: every call into a repository file that receives the config
or one of its sections, in order. Prints the distinct files and how often the path re-enters a file it left: a
measure of how far a reader must jump around to follow one setting (docs/design.md, "The trainer").

    python scripts/trace_config_flow.py                        # this checkout, configs/tiny.yaml, one rank
    PYTHONPATH=/path/to/other/checkout python scripts/trace_config_flow.py --root /path/to/other/checkout
    python scripts/trace_config_flow.py --without-own-methods  # not counting a section's own methods

`--without-own-methods` leaves out calls of a config section's own methods and properties (`cfg.run_dir`,
`ModelConfig.head_width`): reading a derived value of the config is reading the config, not following it into
code elsewhere.

Runs one process (rank 0 of 1, gloo) in a temporary run directory; fp32, 2 steps (nothing trains).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path
from typing import Any

from pretrain.config import load_config
from pretrain.trainer import Trainer


def is_config(value: Any) -> bool:
    """The run config or a section of it (also the copies __init__ makes, e.g. the resolved precision)."""
    return (dataclasses.is_dataclass(value) and not isinstance(value, type)
            and type(value).__module__.split(".")[-1] in ("config", "settings", "types"))


def trace(root: Path, config: str, own_methods: bool = True) -> list[str]:
    try:
        from pretrain.dist import init_distributed
    except ImportError:  # checkouts from before init_distributed moved to dist
        from pretrain.trainer import init_distributed
    out = tempfile.mkdtemp()
    cfg = load_config(config, [f"run.out_dir={out}", "train.steps=2", "train.precision=fp32"])
    init_distributed()
    trail: list[str] = []

    def tracer(frame, event, arg):
        path = frame.f_code.co_filename
        if event != "call" or not path.startswith(str(root)) or "/.venv/" in path:
            return None
        code = frame.f_code
        args = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
        if not own_methods and args[:1] == ("self",) and is_config(frame.f_locals.get("self")):
            return None
        if any(is_config(frame.f_locals.get(a)) for a in args):
            rel = str(Path(path).relative_to(root))
            if not trail or trail[-1] != rel:
                trail.append(rel)
        return None

    sys.settrace(tracer)
    try:
        Trainer(cfg)
    finally:
        sys.settrace(None)
    return trail


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                   help="the checkout whose files count (default: this one)")
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--without-own-methods", action="store_true", help="leave out a section's own methods")
    args = p.parse_args(argv)
    trail = trace(args.root.resolve(), args.config, own_methods=not args.without_own_methods)
    distinct = list(dict.fromkeys(trail))
    print(f"files visited following the config: {len(distinct)}; re-entries into a file already left: "
          f"{len(trail) - len(distinct)}")
    print(" -> ".join(trail))
    return 0


if __name__ == "__main__":
    sys.exit(main())
