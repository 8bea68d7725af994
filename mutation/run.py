"""Run the catalogue of planted bugs against the test suite and print the mutation score.

Each mutant in :mod:`mutation.catalogue` names an exact snippet of fdl's source
and its replacement. For every selected mutant the runner

1. locates the snippet by searching **all** of ``fdl/**/*.py`` for it (the file
   hint only breaks ties), so a formula that moves to another module is still
   found; a snippet found nowhere, or in several places, is reported as
   ``not found`` / ``ambiguous`` and is never counted as a survivor;
2. writes the mutated file into a private copy of the repository (the working
   tree is never modified) and checks that it still compiles;
3. runs the mapped test files plus the mutated module's doctests
   (``pytest -x -q -p no:cacheprovider``, ``PYTHONPATH`` set to the copy, a
   time limit, a ``torch.compile`` cache of the run's own);
4. if the mutant survives that and ``--targeted-only`` is not given, runs the
   whole suite with ``-x``;
5. restores the original bytes and verifies them before the next mutant.

A mutant is *killed* when pytest fails (or errors, or runs past the time
limit), *survived* when every test passes. The score is killed / applicable.

Usage::

    python -m mutation                       # the whole catalogue, full-suite fallback
    python -m mutation --targeted-only       # mapped tests only
    python -m mutation --package optim --jobs 2
    python -m mutation --only optim.adam.bias_correction_sqrt
    python -m mutation --list                # the catalogue, with where each snippet is
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

if __package__ in (None, ""):  # ``python mutation/run.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from mutation.catalogue import CATALOGUE, Mutant
else:
    from .catalogue import CATALOGUE, Mutant

REPO = Path(__file__).resolve().parent.parent
_IGNORE = shutil.ignore_patterns(
    ".git", "__pycache__", "*.pyc", ".pytest_cache", ".mypy_cache", ".ruff_cache", "*.egg-info"
)


# ---------------------------------------------------------------------------
# locating snippets
# ---------------------------------------------------------------------------


@dataclass
class Located:
    """Where a mutant's snippet is: ``status`` is ``ok``, ``not found``, ``ambiguous`` or
    ``invalid``; ``path`` is relative to the repository root when ``ok``."""

    status: str
    path: str | None = None
    detail: str = ""


def source_files(root: Path) -> dict[str, str]:
    """Every ``fdl/**/*.py`` under ``root``: relative path -> text."""
    out = {}
    for p in sorted((root / "fdl").rglob("*.py")):
        if "__pycache__" not in p.parts:
            out[p.relative_to(root).as_posix()] = p.read_text()
    return out


def _hint_matches(path: str, hint: str) -> bool:
    return path == hint or path.endswith("/" + hint) or Path(path).name == hint


def locate(m: Mutant, files: dict[str, str]) -> Located:
    """Find the one file holding ``m.original`` exactly once (the hint breaks ties)."""
    if m.original == m.replacement:
        return Located("invalid", detail="replacement equals the original")
    hits = {p: t.count(m.original) for p, t in files.items() if m.original in t}
    if not hits:
        return Located("not found", detail="snippet occurs nowhere in fdl/**")
    if len(hits) > 1 and m.file:
        hinted = {p: n for p, n in hits.items() if _hint_matches(p, m.file)}
        if hinted:
            hits = hinted
    if len(hits) > 1 or next(iter(hits.values())) > 1:
        where = ", ".join(f"{p} x{n}" for p, n in hits.items())
        return Located("ambiguous", detail=f"snippet occurs more than once: {where}")
    path = next(iter(hits))
    mutated = files[path].replace(m.original, m.replacement)
    try:
        compile(mutated, path, "exec")
    except SyntaxError as e:
        return Located("invalid", path, f"mutated file does not compile: {e}")
    return Located("ok", path)


# ---------------------------------------------------------------------------
# running one mutant
# ---------------------------------------------------------------------------


@dataclass
class Result:
    mutant: Mutant
    status: str  # killed | survived | timeout | not found | ambiguous | invalid | error
    path: str | None = None
    stage: str = ""  # "targeted" or "full": where it was killed (or last run)
    seconds: float = 0.0
    detail: str = ""
    killer: str = ""  # first failing test id, when known
    log: str = field(default="", repr=False)

    @property
    def applicable(self) -> bool:
        return self.status in ("killed", "survived", "timeout")

    @property
    def dead(self) -> bool:
        return self.status in ("killed", "timeout")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _first_failure(log: str) -> str:
    for line in log.splitlines():
        for tag in ("FAILED ", "ERROR "):
            if line.startswith(tag):
                return line[len(tag) :].split(" - ")[0].strip()
    return ""


class Workspace:
    """A private copy of the repository that one worker mutates, one mutant at a time."""

    def __init__(self, source: Path, base: Path, fresh_cache: bool) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="copy-", dir=base))
        shutil.copytree(source, self.root, dirs_exist_ok=True, ignore=_IGNORE)
        self.cache = Path(tempfile.mkdtemp(prefix="inductor-", dir=base))
        self.fresh_cache = fresh_cache
        self.proc: subprocess.Popen[str] | None = None
        self.fork = False  # set by the driver when it runs one mutant at a time
        self.child: int | None = None
        self.digests = {p: _digest(self.root / p) for p in source_files(self.root)}

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.root) + os.pathsep + env.get("PYTHONPATH", "")
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # no stale .pyc of a mutated module
        env.setdefault("OMP_NUM_THREADS", "1")
        cache = self.cache
        if self.fresh_cache:
            cache = Path(tempfile.mkdtemp(prefix="inductor-", dir=self.cache))
        env["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
        env["TRITON_CACHE_DIR"] = str(cache / "triton")
        if "FDL_DATA_DIR" not in env:  # conftest finds ../shared/data only beside the repo
            shared = REPO.parent / "shared" / "data"
            if (shared / "MNIST" / "raw").is_dir():
                env["FDL_DATA_DIR"] = str(shared)
        return env

    def pytest(self, args: list[str], timeout: float) -> tuple[str, str, float]:
        """Run pytest in the copy: ('passed' | 'failed' | 'timeout', output, seconds)."""
        if self.fork:
            return self._pytest_forked(args, timeout)
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *args]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.root,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: a timeout ends its children too
        )
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            out, _ = self.proc.communicate()
            return "timeout", out or "", time.perf_counter() - t0
        finally:
            code = self.proc.returncode
            self.proc = None
        # 0: all passed; 5: nothing collected (a deselecting -k): both mean "not caught"
        verdict = "passed" if code in (0, 5) else "failed"
        return verdict, out, time.perf_counter() - t0

    def _pytest_forked(self, args: list[str], timeout: float) -> tuple[str, str, float]:
        """pytest in a forked child of this process, which has imported torch and the test
        dependencies once (see :func:`_preimport`) but never fdl: each child imports the
        mutated fdl from the copy. Saves the interpreter start and the heavy imports."""
        env = self.env()
        log = self.root.parent / f"{self.root.name}.log"
        t0 = time.perf_counter()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # child
            code = 3
            try:
                os.setsid()
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.environ.clear()
                os.environ.update(env)
                os.chdir(self.root)
                sys.path.insert(0, str(self.root))
                import pytest

                code = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", *args]))
            except BaseException:  # noqa: B036 - report anything, then leave
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.child = pid
        status = None
        try:
            while time.perf_counter() - t0 < timeout:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                time.sleep(0.2)
            else:
                self.kill()
                os.waitpid(pid, 0)
                return "timeout", log.read_text(errors="replace"), time.perf_counter() - t0
        finally:
            self.child = None
        code = os.waitstatus_to_exitcode(status) if status is not None else 3
        out = log.read_text(errors="replace")
        verdict = "passed" if code in (0, 5) else "failed"
        return verdict, out, time.perf_counter() - t0

    def kill(self) -> None:
        """End the running pytest, if any, with its whole process group."""
        if self.child is not None:
            try:
                os.killpg(self.child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def run(
        self, m: Mutant, loc: Located, full: bool, timeout: float, full_timeout: float
    ) -> Result:
        assert loc.path is not None
        target = self.root / loc.path
        original = target.read_bytes()
        total = 0.0
        try:
            target.write_text(original.decode().replace(m.original, m.replacement))
            tests = [t for t in m.tests if (self.root / t.split("::")[0]).exists()]
            missing = sorted(set(m.tests) - set(tests))
            select = ["-k", m.select] if m.select else []
            stages = [("targeted", [*select, *tests, loc.path], timeout)]
            if full:
                stages.append(("full", [], full_timeout))
            res = Result(m, "survived", loc.path)
            if missing:
                res.detail = "mapped test files missing: " + ", ".join(missing)
            for stage, args, limit in stages:
                verdict, log, secs = self.pytest(args, limit)
                total += secs
                res.stage, res.log = stage, log
                if verdict != "passed":
                    res.status = "killed" if verdict == "failed" else "timeout"
                    res.killer = _first_failure(log) if verdict == "failed" else ""
                    break
            res.seconds = total
            return res
        finally:
            target.write_bytes(original)
            if _digest(target) != self.digests[loc.path]:
                raise RuntimeError(f"could not restore {target} after mutant {m.id}")

    def baseline(self, tests: list[str], timeout: float) -> tuple[str, str, float]:
        tests = [t for t in tests if (self.root / t.split("::")[0]).exists()]
        return self.pytest(tests, timeout)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# ---------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------


_PREIMPORT = (
    "torch",
    "torch._dynamo",
    "torch._inductor",
    "torch.func",
    "numpy",
    "optree",
    "safetensors.torch",
    "torchvision",
    "pytest",
    "hypothesis",
    "scipy",
    "scipy.stats",
    "jax",
    "jax.numpy",
    "opacus",
)


def _preimport() -> None:
    """Import fdl's dependencies (never fdl itself) so forked pytest runs start warm."""
    import importlib

    for name in _PREIMPORT:
        try:
            importlib.import_module(name)
        except Exception:  # an optional dependency: the tests that need it will say so
            pass
    assert not any(m == "fdl" or m.startswith("fdl.") for m in sys.modules), "fdl imported"


def select(args: argparse.Namespace) -> list[Mutant]:
    chosen = list(CATALOGUE)
    if args.only:
        ids = set(args.only)
        unknown = ids - {m.id for m in chosen}
        if unknown:
            raise SystemExit(f"unknown mutant id(s): {', '.join(sorted(unknown))}")
        chosen = [m for m in chosen if m.id in ids]
    if args.package:
        chosen = [m for m in chosen if m.package in set(args.package)]
    return chosen


def report(results: list[Result], min_score: float, out=sys.stdout) -> int:
    by_pkg: dict[str, Counter] = {}
    for r in results:
        c = by_pkg.setdefault(r.mutant.package, Counter())
        c["total"] += 1
        c[r.status] += 1
    print("\nper package: mutants, killed / applicable", file=out)
    for pkg in sorted(by_pkg):
        c = by_pkg[pkg]
        app = c["killed"] + c["survived"] + c["timeout"]
        print(f"  {pkg:<12} {c['total']:>3}   {c['killed'] + c['timeout']:>3} / {app}", file=out)
    applicable = [r for r in results if r.applicable]
    dead = [r for r in applicable if r.dead]
    score = len(dead) / len(applicable) if applicable else 1.0
    problems = [r for r in results if not r.applicable]
    if problems:
        print("\nnot run (fix the catalogue entry):", file=out)
        for r in problems:
            print(f"  [{r.status}] {r.mutant.id}: {r.detail}", file=out)
    survivors = [r for r in applicable if not r.dead]
    if survivors:
        print("\nsurvivors:", file=out)
        for r in survivors:
            print(f"  {r.mutant.id} ({r.path}, after {r.stage}): {r.mutant.description}", file=out)
    timed = [r for r in applicable if r.status == "timeout"]
    if timed:
        print("\ntimed out (counted as killed):", file=out)
        for r in timed:
            print(f"  {r.mutant.id} ({r.stage})", file=out)
    secs = [r.seconds for r in applicable]
    if secs:
        print(
            f"\ntime per mutant: mean {sum(secs) / len(secs):.1f}s, max {max(secs):.1f}s, "
            f"total {sum(secs):.0f}s",
            file=out,
        )
    print(
        f"\nmutation score: {len(dead)} / {len(applicable)} = {score:.1%}"
        f" (minimum {min_score:.0%})",
        file=out,
    )
    return 0 if score >= min_score else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mutation", description=__doc__.split("\n")[0])
    p.add_argument("--only", action="append", metavar="ID", help="run this mutant (repeatable)")
    p.add_argument("--package", action="append", help="run this package's mutants (repeatable)")
    p.add_argument("--targeted-only", action="store_true", help="skip the full-suite pass")
    p.add_argument("--jobs", type=int, default=1, help="mutants run at once (default 1)")
    p.add_argument("--timeout", type=float, default=900.0, help="targeted pass limit, seconds")
    p.add_argument("--full-timeout", type=float, default=2400.0, help="full pass limit, seconds")
    p.add_argument("--min-score", type=float, default=0.95, help="exit 1 below this score")
    p.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    p.add_argument(
        "--no-fork",
        action="store_true",
        help="start every pytest as a new interpreter (default with --jobs 1: forked, warm)",
    )
    p.add_argument("--fresh-cache", action="store_true", help="a new compile cache per mutant")
    p.add_argument(
        "--tests",
        action="append",
        metavar="PATH",
        help="run these test files instead of the mapped ones, without -k (repeatable)",
    )
    p.add_argument("--list", action="store_true", help="list the catalogue and locations")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--verbose", "-v", action="store_true", help="print pytest's tail per mutant")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up on `kill` too

    mutants = select(args)
    if args.tests:  # e.g. to see whether another test file kills a survivor
        mutants = [replace(m, tests=tuple(args.tests), select=None) for m in mutants]
    files = source_files(REPO)
    located = {m.id: locate(m, files) for m in mutants}
    if args.list:
        for m in mutants:
            loc = located[m.id]
            where = loc.path if loc.status == "ok" else f"[{loc.status}] {loc.detail}"
            print(f"{m.id:<45} {m.package:<10} {where}")
        return 0

    base = Path(tempfile.mkdtemp(prefix="fdl-mutation-"))
    print(f"{len(mutants)} mutants; workspaces under {base}", flush=True)
    pool_ws: list[Workspace] = []
    free: list[Workspace] = []
    lock = threading.Lock()
    try:
        for _ in range(max(1, min(args.jobs, len(mutants)))):
            ws = Workspace(REPO, base, args.fresh_cache)
            pool_ws.append(ws)
            free.append(ws)
        fork = len(pool_ws) == 1 and not args.no_fork and hasattr(os, "fork")
        if fork:
            _preimport()
            pool_ws[0].fork = True
        runnable = [m for m in mutants if located[m.id].status == "ok"]
        if not args.no_baseline and runnable:
            tests = sorted({t for m in runnable for t in m.tests})
            print(f"baseline: {' '.join(tests)}", flush=True)
            verdict, log, secs = pool_ws[0].baseline(tests, args.timeout * 2)
            if verdict != "passed":
                print(log[-4000:])
                print(f"baseline {verdict} after {secs:.0f}s: fix the suite first", flush=True)
                return 2
            print(f"baseline passed in {secs:.0f}s", flush=True)

        def work(m: Mutant) -> Result:
            loc = located[m.id]
            if loc.status != "ok":
                return Result(m, loc.status, loc.path, detail=loc.detail)
            with lock:
                ws = free.pop()
            try:
                return ws.run(m, loc, not args.targeted_only, args.timeout, args.full_timeout)
            except RuntimeError:
                raise
            except Exception as e:  # a runner problem, not a verdict on the mutant
                return Result(m, "error", loc.path, detail=repr(e))
            finally:
                with lock:
                    free.append(ws)

        results: list[Result] = []
        ex = concurrent.futures.ThreadPoolExecutor(max_workers=len(pool_ws))
        # forking is safe only from a single-threaded process: then run in this thread
        run_all = map(work, mutants) if fork else ex.map(work, mutants)
        try:
            for r in run_all:
                results.append(r)
                extra = f" by {r.killer}" if r.killer else ""
                extra += f" [{r.detail}]" if r.detail else ""
                print(
                    f"{r.status:>9}  {r.seconds:6.1f}s  {r.stage:<8} {r.mutant.id}{extra}",
                    flush=True,
                )
                if args.verbose and r.log:
                    print("\n".join("    " + s for s in r.log.splitlines()[-15:]), flush=True)
        finally:
            for ws in pool_ws:  # interrupted: end the running pytest processes first
                ws.kill()
            ex.shutdown(wait=True, cancel_futures=True)
    finally:
        for ws in pool_ws:
            ws.close()
        shutil.rmtree(base, ignore_errors=True)

    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "id": r.mutant.id,
                        "package": r.mutant.package,
                        "status": r.status,
                        "path": r.path,
                        "stage": r.stage,
                        "seconds": round(r.seconds, 2),
                        "killer": r.killer,
                        "detail": r.detail,
                    }
                    for r in results
                ],
                indent=2,
            )
            + "\n"
        )
    errors = [r for r in results if r.status == "error"]
    code = report(results, args.min_score)
    return 3 if errors else code


if __name__ == "__main__":
    raise SystemExit(main())
