"""The numerics test matrix: the tests marked `numerics` (bitwise equalities, tolerances across configurations,
verdicts rounding could flip, precision `auto`) under the machine's own kernels and under each ISA cap it can run,
so one machine checks what another CPU would compute (pretrain/cpu.py has the caps; docs/guide.md "Tests").

    python scripts/isa_matrix.py                            # native, avx2, default (+ avx512 on an AVX-512 CPU)
    python scripts/isa_matrix.py --caps native,default      # some of them
    python scripts/isa_matrix.py -- -m numerics tests/jobs  # pytest arguments after `--` (default: -m "numerics
                                                            # and not slow")

Each cap is one pytest session (its progress streams here); the summary table and OUT/matrix.json (per cap:
passed, failed, errors, skipped, seconds, the failing tests) come at the end. Exit status 1 if any cap failed.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from pretrain.cpu import ISA_CAPS, cpu_name, runnable_caps
from storage.io import atomic_write_json

ROOT = Path(__file__).resolve().parent.parent

CAP_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
CAPS = {c.name: c for c in ISA_CAPS}
DEFAULT_PYTEST_ARGS = ["-m", "numerics and not slow"]


def cap_environment(cap: str) -> dict[str, str]:
    """This process's environment with the kernels capped at `cap` (`native`: every cap variable removed)."""
    env = {k: v for k, v in os.environ.items() if k not in CAP_VARIABLES}
    if cap != "native":
        env.update(CAPS[cap].env())
    return env


def summarize(junit: Path) -> dict:
    """Counts and failing test ids from a pytest JUnit XML report."""
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    failing = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
               if case.find("failure") is not None or case.find("error") is not None]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {"passed": passed, "failed": counts["failures"], "errors": counts["errors"],
            "skipped": counts["skipped"], "failing": failing}


def run_cap(cap: str, pytest_args: list[str], out: Path, workers: str) -> dict:
    junit = out / f"{cap}.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", workers, "--dist", "loadfile",
               f"--junitxml={junit}", *pytest_args]
    env = " ".join(f"{k}={v}" for k, v in cap_environment(cap).items() if k in CAP_VARIABLES)
    what = f"{env}, computes like {CAPS[cap].computes_like}" if cap in CAPS else "no cap"
    print(f"\n=== {cap}: {what}", flush=True)
    start = time.perf_counter()
    code = subprocess.run(command, cwd=ROOT, env=cap_environment(cap)).returncode
    seconds = time.perf_counter() - start
    if not junit.exists():
        return {"cap": cap, "exit_code": code, "seconds": seconds, "passed": 0, "failed": 0, "errors": 1,
                "skipped": 0, "failing": [f"pytest exited {code} before writing {junit.name}"]}
    return {"cap": cap, "exit_code": code, "seconds": seconds, **summarize(junit)}


def table(rows: list[dict]) -> str:
    lines = ["| cap | passed | failed | errors | skipped | seconds |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['cap']} | {r['passed']} | {r['failed']} | {r['errors']} | {r['skipped']} | {r['seconds']:.0f} |"
              for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, pytest_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    pytest_args = pytest_args or DEFAULT_PYTEST_ARGS
    runnable = ["native", *(c.name for c in runnable_caps())]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--caps", default=",".join(runnable),
                        help=f"comma-separated, from {runnable} on this CPU (default: all of them)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "isa_matrix", help="JUnit reports, matrix.json")
    parser.add_argument("--workers", default=os.environ.get("GROWLM_TEST_WORKERS", "2"), help="pytest-xdist workers")
    args = parser.parse_args(ours)
    caps = [c for c in args.caps.split(",") if c]
    unknown = [c for c in caps if c not in runnable]
    if unknown:
        parser.error(f"--caps {','.join(unknown)}: this CPU ({cpu_name()}) runs {runnable}; a cap above the CPU "
                     "would execute instructions it lacks")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [run_cap(cap, pytest_args, args.out, args.workers) for cap in caps]
    report = table(rows)
    print(f"\n{cpu_name()}, {os.cpu_count()} logical CPUs; pytest {' '.join(pytest_args)}")
    print(report)
    for row in rows:
        for test in row["failing"]:
            print(f"  {row['cap']}: FAILED {test}")
    atomic_write_json(args.out / "matrix.json", {"cpu": cpu_name(), "pytest_args": pytest_args, "caps": rows})
    return int(any(r["failed"] or r["errors"] or r["exit_code"] not in (0, 5) for r in rows))


if __name__ == "__main__":
    sys.exit(main())
