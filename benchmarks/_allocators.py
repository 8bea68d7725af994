"""C allocator configurations for ``python -m benchmarks --allocators``: one child process each.

A configuration says how every peer's memory is allocated:

- ``glibc``: glibc's defaults (freed blocks go back to the system);
- ``keep``: glibc with freed memory kept, ``fdl.allocator.keep_freed_memory()``;
- ``jemalloc``, ``tcmalloc``, ``mimalloc``: another ``malloc`` put in front of
  glibc's with ``LD_PRELOAD``, with the settings named in :data:`CONFIGS`.

A preloaded allocator replaces ``malloc`` for the whole process from its
start, so it cannot be switched on inside a running benchmark: the parent runs
one child ``python -m benchmarks --allocator ... --json ...`` per
configuration, with the environment :func:`child_env` builds, and assembles
their results with :func:`format_comparison` ("each peer under each
allocator, and its best"). A configuration whose library is not installed is
skipped, with the reason in the report; nothing here is needed to run the
benchmarks under glibc.

Where the libraries come from (none is a requirement):

- jemalloc: Debian/Ubuntu ``apt-get install libjemalloc2``, conda-forge ``jemalloc``;
- tcmalloc: ``apt-get install libgoogle-perftools4`` (or ``libtcmalloc-minimal4``),
  conda-forge ``gperftools``;
- mimalloc: PyPI ``pip install cmeel-mimalloc`` (in the ``bench`` extra), or
  ``apt-get install libmimalloc2.0``.

``FDL_BENCH_JEMALLOC``, ``FDL_BENCH_TCMALLOC`` and ``FDL_BENCH_MIMALLOC`` name a
library file explicitly.
"""

from __future__ import annotations

import os
import site
import sys
import sysconfig
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._harness import Result

# jemalloc's settings for deep-learning workloads in Intel's CPU tuning guide for
# PyTorch (linked from PyTorch's own performance tuning guide): no size is treated
# as "oversize" arena-less, purging runs on a background thread, and freed pages
# are never decayed back to the system (9e9 ms), i.e. freed memory is kept.
JEMALLOC_CONF = (
    "oversize_threshold:1,background_thread:true,metadata_thp:auto,"
    "dirty_decay_ms:9000000000,muzzy_decay_ms:9000000000"
)


@dataclass(frozen=True)
class AllocatorConfig:
    """One allocator configuration.

    Attributes:
        name: the short name used on the command line and in the tables.
        description: what it is, for the report.
        in_process: the child's ``--allocator`` (``"keep"`` or ``"glibc"``: whether
            it calls ``fdl.allocator.keep_freed_memory()``).
        libraries: file names of the library to preload, preferred first
            (empty: nothing is preloaded).
        env: further environment variables set in the child.
    """

    name: str
    description: str
    in_process: str = "glibc"
    libraries: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def override_var(self) -> str:
        """The environment variable naming this configuration's library explicitly."""
        return f"FDL_BENCH_{self.name.upper()}"


CONFIGS: tuple[AllocatorConfig, ...] = (
    AllocatorConfig("glibc", "glibc's defaults, freed memory returned to the system"),
    AllocatorConfig(
        "keep",
        "glibc, freed memory kept (fdl.allocator.keep_freed_memory())",
        in_process="keep",
    ),
    AllocatorConfig(
        "jemalloc",
        f"jemalloc via LD_PRELOAD, MALLOC_CONF={JEMALLOC_CONF}",
        libraries=("libjemalloc.so.2", "libjemalloc.so"),
        env={"MALLOC_CONF": JEMALLOC_CONF},
    ),
    AllocatorConfig(
        "tcmalloc",
        "gperftools' tcmalloc via LD_PRELOAD (its defaults)",
        libraries=(
            "libtcmalloc.so.4",
            "libtcmalloc.so",
            "libtcmalloc_minimal.so.4",
            "libtcmalloc_minimal.so",
        ),
        # tcmalloc prints a line for every allocation over 1 GiB by default
        env={"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(2**40)},
    ),
    AllocatorConfig(
        "mimalloc",
        "mimalloc via LD_PRELOAD (its defaults)",
        libraries=("libmimalloc.so.3", "libmimalloc.so.2", "libmimalloc.so"),
    ),
)

BY_NAME = {c.name: c for c in CONFIGS}

# substrings of the file names of every preloadable allocator above
_ALLOCATOR_LIBS = ("libjemalloc", "libtcmalloc", "libmimalloc")


def parse_names(spec: str) -> list[AllocatorConfig]:
    """``"all"`` or a comma-separated list of names, as configurations in that order.

    Raises:
        ValueError: an unknown name.
    """
    if spec.strip() == "all":
        return list(CONFIGS)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown or not names:
        raise ValueError(f"unknown allocator(s) {unknown}; choose from {list(BY_NAME)} or 'all'")
    return [BY_NAME[n] for n in names]


def search_dirs() -> list[Path]:
    """Folders searched for a library: this Python's prefixes (and wheels' lib folders), then the
    system's."""
    prefixes = [Path(sys.prefix), Path(sys.base_prefix)]
    packages = [Path(sysconfig.get_paths()["purelib"]), Path(sysconfig.get_paths()["platlib"])]
    try:
        packages += [Path(p) for p in site.getsitepackages()]
    except AttributeError:  # some virtualenvs
        pass
    dirs = [p / "lib" for p in prefixes] + [p / "cmeel.prefix" / "lib" for p in packages]
    dirs += [
        Path(p)
        for p in (
            "/usr/local/lib",
            "/usr/local/lib64",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/lib/x86_64-linux-gnu",
            "/usr/lib64",
            "/usr/lib",
        )
    ]
    return list(dict.fromkeys(dirs))


def find_library(
    config: AllocatorConfig,
    *,
    dirs: Iterable[Path] | None = None,
    environ: Mapping[str, str] = os.environ,
) -> tuple[Path | None, str]:
    """The library to preload for ``config``, and how it was found or why it was not.

    Returns:
        ``(None, "")`` for a configuration that preloads nothing; ``(path,
        "")`` when found; ``(None, reason)`` when not.
    """
    if not config.libraries:
        return None, ""
    explicit = environ.get(config.override_var)
    if explicit:
        path = Path(explicit)
        if path.is_file():
            return path, ""
        return None, f"{config.override_var}={explicit} is not a file"
    looked = list(dirs if dirs is not None else search_dirs())
    for name in config.libraries:
        for d in looked:
            if (d / name).is_file():
                return d / name, ""
    return None, (
        f"{' / '.join(config.libraries[:2])} not found (looked in {len(looked)} folders; "
        f"set {config.override_var}, or install it: see benchmarks/_allocators.py)"
    )


def _strip_allocators(preload: str) -> list[str]:
    return [p for p in preload.replace(" ", ":").split(":") if p and not _is_allocator(p)]


def _is_allocator(path: str) -> bool:
    return any(lib in Path(path).name for lib in _ALLOCATOR_LIBS)


def child_env(
    config: AllocatorConfig, library: Path | None, base: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """The environment of the child that runs ``config``.

    Starts from ``base``; an allocator preloaded there is dropped (every
    configuration names its own), ``config``'s library goes first in
    ``LD_PRELOAD`` and its variables are set; ``MALLOC_CONF`` from ``base`` is
    dropped unless the configuration sets it.
    """
    env = dict(base)
    preload = _strip_allocators(env.pop("LD_PRELOAD", ""))
    if library is not None:
        preload.insert(0, str(library))
    if preload:
        env["LD_PRELOAD"] = ":".join(preload)
    env.pop("MALLOC_CONF", None)
    env.update(config.env)
    return env


def child_command(
    config: AllocatorConfig,
    modules: Sequence[str],
    json_path: Path,
    out_dir: Path,
    *,
    quick: bool,
    threads: int | None,
) -> list[str]:
    """``python -m benchmarks`` for one configuration: its in-process setting, the modules, JSON
    out, and its own report beside the JSON (the real report is the parent's)."""
    cmd = [sys.executable, "-m", "benchmarks", "--allocator", config.in_process]
    cmd += ["--json", str(json_path), "--out", str(out_dir / f"{config.name}.md")]
    cmd += ["--plot", str(out_dir / f"{config.name}.png")]
    if quick:
        cmd.append("--quick")
    if threads is not None:
        cmd += ["--threads", str(threads)]
    for m in modules:
        cmd += ["--only", m]
    return cmd


def loaded_allocator() -> str | None:
    """The path of a preloaded allocator mapped into this process, or ``None`` (Linux)."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                if _is_allocator(path):
                    return path
    except OSError:
        return None
    return None


@dataclass
class ConfigRun:
    """What one configuration's child produced.

    Attributes:
        config: the configuration.
        status: ``"ran"``, ``"skipped"`` or ``"failed"``.
        reason: why it was skipped or failed (empty when it ran).
        results: its results, every module's merged.
        allocator: the child's own description of its allocator.
        library: the preloaded library, if any.
        seconds: the child's wall-clock time.
    """

    config: AllocatorConfig
    status: str
    reason: str = ""
    results: list[Result] = field(default_factory=list)
    allocator: str = ""
    library: Path | None = None
    seconds: float = 0.0


def read_child_json(path: Path) -> tuple[list[Result], str, list[str]]:
    """A child's ``--json`` file: its results, its allocator note, and its modules' errors."""
    import json

    entries: list[dict[str, Any]] = json.loads(path.read_text())
    results = [Result(**r) for e in entries for r in e["results"]]
    notes = [e.get("allocator", "") for e in entries]
    errors = [f"{e['name']}: {e['error'].strip().splitlines()[-1]}" for e in entries if e["error"]]
    return results, next((n for n in notes if n), ""), errors


def check_allocator(run: ConfigRun) -> str:
    """Why the child's allocator is not the configured one, or ``""`` when it is."""
    preloads = bool(run.config.libraries)
    says_preloaded = "LD_PRELOAD" in run.allocator
    if preloads and not says_preloaded:
        return f"the child did not load {run.library} (it reports: {run.allocator})"
    if not preloads and says_preloaded:
        return f"the child runs under a preloaded allocator: {run.allocator}"
    return ""


def _ms(r: Result | None) -> str:
    return "—" if r is None else f"{r.median_s * 1e3:.3f}"


def format_comparison(runs: Sequence[ConfigRun], baseline: str = "glibc") -> str:
    """The markdown report of an ``--allocators`` run: the configurations, then per workload a
    table "each peer under each allocator, and its best".

    The best column names the configuration with the lowest median and its time
    relative to ``baseline`` (glibc's defaults; below 1: faster).
    """
    out = [
        "| allocator | what | status |",
        "|---|---|---|",
    ]
    for run in runs:
        status = run.status if not run.reason else f"{run.status}: {run.reason}"
        if run.status == "ran":
            status += f" ({run.seconds:.0f} s; {run.allocator})"
        out.append(f"| {run.config.name} | {run.config.description} | {status} |")
    out.append("")
    ran = [r for r in runs if r.status == "ran"]
    if not ran:
        return "\n".join(out)
    table: dict[str, dict[str, dict[str, Result]]] = {}  # workload -> peer -> config -> result
    for run in ran:
        for res in run.results:
            table.setdefault(res.workload, {}).setdefault(res.peer, {})[run.config.name] = res
    names = [r.config.name for r in ran]
    for workload, peers in table.items():
        out += [f"## {workload}", ""]
        out.append("| peer | " + " | ".join(f"{n} (ms)" for n in names) + " | best |")
        out.append("|---|" + "---:|" * len(names) + "---|")
        for peer, by_config in peers.items():
            cells = [_ms(by_config.get(n)) for n in names]
            out.append(f"| {peer} | " + " | ".join(cells) + f" | {_best(by_config, baseline)} |")
        out.append("")
    return "\n".join(out)


def _best(by_config: Mapping[str, Result], baseline: str) -> str:
    name, best = min(by_config.items(), key=lambda kv: kv[1].median_s)
    base = by_config.get(baseline)
    if base is None or name == baseline:
        return name
    return f"{name} ({best.median_s / base.median_s:.2f}× the time under {baseline})"
