"""Fuzz the input boundaries of SENTINEL IMMUNE, coverage-guided (atheris).

    .venv/bin/python -m tests.fuzz                            # every target, 60 s each
    .venv/bin/python -m tests.fuzz template sigma --seconds 600
    .venv/bin/python -m tests.fuzz policy --runs 100000
    .venv/bin/python -m tests.fuzz --list

Targets are in ``tests/fuzz/targets.py``, their seeds in
``tests/fuzz/corpus/TARGET/`` and token dictionaries in
``tests/fuzz/dicts/TARGET.dict``.  The inputs a run finds that reach new
code are kept in ``--work`` (default ``/var/tmp/immune-fuzz``), so the next
run starts where this one ended.  An input that breaks a target's contract
is saved there as ``crash-*`` (or ``timeout-*``) and ends that target's run;
the command exits 1.  To keep it: copy it to
``tests/fuzz/regressions/TARGET/NAME``, which ``tests/fuzz/test_fuzz.py``
replays; if it is not fixed yet, name it in ``targets.OPEN_BUGS`` (its test
is then an expected failure, and runs pass over that error to find others;
``--strict`` passes over nothing).  Flags after ``--`` go to libFuzzer.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def target_names() -> list[str]:
    from tests.fuzz.targets import TARGETS

    return list(TARGETS)


@dataclass
class Outcome:
    target: str
    runs: int
    seconds: float
    coverage: int
    corpus: int
    failure: str
    """'' or the first line of what broke, and where the input was saved."""
    log: Path

    def line(self) -> str:
        head = f"{self.target:14} {self.runs:>9} runs {self.seconds:7.1f}s  cov {self.coverage:>5}  corpus {self.corpus:>5}"
        return f"{head}  {self.failure or 'ok'}"


def fuzz(target: str, *, seconds: float | None = None, runs: int | None = None, work: Path,
         strict: bool = False, seed: int | None = None, extra: list[str] = ()) -> Outcome:
    """Run one target in a process of its own (libFuzzer exits when done)."""
    from tests.fuzz.targets import TARGETS

    spec = TARGETS[target]
    corpus = work / target / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    found = work / target / "found"
    found.mkdir(exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="immune-fuzz-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    flags = [f"-timeout={max(10, int(spec.bound * 4))}", f"-max_len={spec.max_len}", "-rss_limit_mb=2048",
             f"-artifact_prefix={found}/", "-print_final_stats=1"]
    flags.append(f"-max_total_time={int(seconds)}" if runs is None else f"-runs={runs}")
    if seed is not None:
        flags.append(f"-seed={seed}")
    words = HERE / "dicts" / f"{target}.dict"
    if words.exists():
        flags.append(f"-dict={words}")
    env = {**os.environ, "IMMUNE_FUZZ_SCRATCH": str(scratch), "IMMUNE_FUZZ_STRICT": "1" if strict else "0",
           "PYTHONHASHSEED": "0"}
    log = work / target / "last-run.log"
    before = set(found.iterdir())
    start = time.monotonic()
    try:
        with open(log, "wb") as out:
            proc = subprocess.run([sys.executable, "-m", "tests.fuzz._child", target, *flags, *extra,
                                   str(corpus), str(HERE / "corpus" / target)],
                                  cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    took = time.monotonic() - start
    text = log.read_text(errors="replace")
    failure = ""
    if proc.returncode != 0:
        saved = sorted(set(found.iterdir()) - before)
        why = _why(text)
        failure = f"FAILED: {why}" + (f" (input: {saved[-1]})" if saved else f" (exit {proc.returncode}; see {log})")
    return Outcome(target, _stat(text, "number_of_executed_units"), took, _last(text, r"cov: (\d+)"),
                   len(list(corpus.iterdir())), failure, log)


def _why(text: str) -> str:
    """The error a failing run ended on, in one line."""
    for pattern in (r"^=== Uncaught Python exception: ===\n(.+)$", r"^(.*libFuzzer: timeout.*)$",
                    r"^(.*out-of-memory.*)$", r"^(==\d+== ERROR: libFuzzer: .*)$"):
        m = re.search(pattern, text, re.M)
        if m:
            return m.group(1).strip()
    return "see the log"


def _stat(text: str, name: str) -> int:
    m = re.search(rf"stat::{name}:\s+(\d+)", text)
    return int(m.group(1)) if m else 0


def _last(text: str, pattern: str) -> int:
    found = re.findall(pattern, text)
    return int(found[-1]) if found else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1:]
    names = target_names()
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("targets", nargs="*", metavar="TARGET", help=f"any of {', '.join(names)} (default: all)")
    p.add_argument("--seconds", type=float, default=60.0, help="per target (default 60)")
    p.add_argument("--runs", type=int, help="per target, instead of --seconds")
    p.add_argument("--work", type=Path, default=Path("/var/tmp/immune-fuzz"),
                   help="where learned inputs and failures are kept (default /var/tmp/immune-fuzz)")
    p.add_argument("--strict", action="store_true", help="the open bugs in targets.OPEN_BUGS fail too")
    p.add_argument("--seed", type=int, help="libFuzzer's random seed (default: from the clock)")
    p.add_argument("--list", action="store_true", help="list the targets and stop")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(names))
        return 0
    unknown = [t for t in args.targets if t not in names]
    if unknown:
        p.error(f"unknown target(s) {', '.join(unknown)}; the targets are {', '.join(names)}")
    failed = False
    for target in args.targets or names:
        outcome = fuzz(target, seconds=args.seconds, runs=args.runs, work=args.work, strict=args.strict,
                       seed=args.seed, extra=extra)
        print(outcome.line(), flush=True)
        failed |= bool(outcome.failure)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
