"""The mutation runner itself: locating snippets, verdicts, restoring the copy; the catalogue's
invariants. Fast: the only pytest it starts runs on a two-line toy repository."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mutation.catalogue import CATALOGUE, Mutant
from mutation.run import REPO, Workspace, locate, report, source_files

FILES = {
    "fdl/a.py": "x = 1 + 1\ny = 2 * 3\n",
    "fdl/sub/b.py": "y = 2 * 3\nz = 4\n",
    "fdl/sub/c.py": "w = 5\nw = 5\n",
}


def _m(original: str, replacement: str = "0", file: str | None = None) -> Mutant:
    return Mutant("t", "t", "t", original, replacement, (), file)


def test_locate_finds_the_one_file_wherever_it_is():
    assert locate(_m("x = 1 + 1"), FILES).path == "fdl/a.py"
    assert locate(_m("z = 4"), FILES).path == "fdl/sub/b.py"


def test_locate_reports_missing_ambiguous_and_invalid():
    assert locate(_m("q = 9"), FILES).status == "not found"
    assert locate(_m("y = 2 * 3"), FILES).status == "ambiguous"  # two files
    assert locate(_m("w = 5"), FILES).status == "ambiguous"  # twice in one file
    assert locate(_m("x = 1 + 1", "x = 1 +"), FILES).status == "invalid"  # does not compile
    assert locate(_m("z = 4", "z = 4"), FILES).status == "invalid"  # no change


def test_file_hint_breaks_ties_only():
    assert locate(_m("y = 2 * 3", file="b.py"), FILES).path == "fdl/sub/b.py"
    assert locate(_m("y = 2 * 3", file="fdl/a.py"), FILES).path == "fdl/a.py"
    # a hint naming the wrong file does not hide the one real occurrence
    assert locate(_m("z = 4", file="a.py"), FILES).path == "fdl/sub/b.py"
    assert locate(_m("w = 5", file="c.py"), FILES).status == "ambiguous"


def test_workspace_verdicts_and_restore(tmp_path: Path):
    src = tmp_path / "repo"
    (src / "fdl").mkdir(parents=True)
    (src / "tests").mkdir()
    (src / "fdl" / "__init__.py").write_text("")
    (src / "fdl" / "m.py").write_text("def f():\n    return 1 + 1\n")
    (src / "tests" / "test_m.py").write_text(
        textwrap.dedent(
            """
            from fdl.m import f

            def test_f():
                assert f() == 2
            """
        )
    )
    files = source_files(src)
    ws = Workspace(src, tmp_path, fresh_cache=False)
    try:
        killed = Mutant("k", "p", "off by one", "1 + 1", "1 + 2", ("tests/test_m.py",))
        same = Mutant("s", "p", "equivalent", "return 1 + 1", "return 2", ("tests/test_m.py",))
        r1 = ws.run(killed, locate(killed, files), False, 120, 120)
        r2 = ws.run(same, locate(same, files), False, 120, 120)
        assert (r1.status, r1.killer) == ("killed", "tests/test_m.py::test_f")
        assert r2.status == "survived"
        # the copy is restored byte for byte, and the source tree was never touched
        assert (ws.root / "fdl" / "m.py").read_text() == "def f():\n    return 1 + 1\n"
        assert (src / "fdl" / "m.py").read_text() == "def f():\n    return 1 + 1\n"
        assert report([r1, r2], min_score=0.95, out=open("/dev/null", "w")) == 1
        assert report([r1], min_score=0.95, out=open("/dev/null", "w")) == 0
    finally:
        ws.close()


def test_catalogue_ids_unique_and_entries_complete():
    ids = [m.id for m in CATALOGUE]
    assert len(ids) == len(set(ids))
    assert len(CATALOGUE) >= 60
    for m in CATALOGUE:
        assert m.description and m.tests, m.id
        for t in m.tests:
            assert (REPO / t.split("::")[0]).is_file(), (m.id, t)


def test_catalogue_covers_every_package():
    top = {p.stem for p in (REPO / "fdl").iterdir() if not p.name.startswith("_")}
    top -= {"__init__"}
    covered = {m.package for m in CATALOGUE}
    assert top <= covered, top - covered


@pytest.mark.parametrize("m", CATALOGUE, ids=lambda m: m.id)
def test_every_snippet_is_found_once(m: Mutant):
    """A refactor that rewrites a catalogued line must update its entry (moving it is fine)."""
    loc = locate(m, source_files(REPO))
    assert loc.status == "ok", f"{m.id}: {loc.status}: {loc.detail}"
