"""The bad-spec suite: every file in tests/bad_specs/ is a spec with one defect and a header that says where
`pov validate` must point and what it must say.

Header lines (at the top of each case file):

    # expect: <file-suffix>:<line>: <message fragment>
    # args: <extra pov validate arguments, shell-quoted>      (optional)
    # pad-to: <bytes>                                          (optional: the test pads a copy to this size)
    # hide: <module> ...                                       (optional: as if these were not installed)

Each case must exit 2, print `FILE:LINE` (FILE ending in the suffix) with the fragment on that line, and
never a traceback. A few cases run through the installed `pov` script in a subprocess; the rest call
`runner.cli.main` in-process, which is the same code path and keeps the suite fast.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner import cli

HERE = Path(__file__).parent
BAD = HERE / "bad_specs"
REPO = HERE.parent

# Run through the real console script: hostile input (tags, alias bomb, bytes) and one of each broad kind.
SUBPROCESS_CASES = {
    "alias_bomb.yaml",
    "python_tag.yaml",
    "non_utf8.yaml",
    "bad_set_yaml.yaml",
    "template_sandbox.yaml",
    "unknown_key.yaml",
}

LOCATED = re.compile(r"^(?P<file>.+?):(?P<line>\d+)(?::\d+)?: (?P<rest>.*)$")


@dataclass(frozen=True)
class Case:
    path: Path
    suffix: str
    line: int
    fragment: str
    args: tuple[str, ...]
    pad_to: int | None
    hide: tuple[str, ...] = ()
    """Modules made unimportable for the case (None in sys.modules: `import` raises ModuleNotFoundError and
    `importlib.util.find_spec` answers None, as for a package that is not installed)."""


def _read_case(path: Path) -> Case:
    # Headers are ASCII even in the cases whose later bytes are not UTF-8.
    header = path.read_bytes().decode("utf-8", errors="replace").splitlines()
    fields: dict[str, str] = {}
    for line in header:
        m = re.match(r"^# (expect|args|pad-to|hide): (.*)$", line)
        if not m:
            break
        fields[m.group(1)] = m.group(2).strip()
    assert "expect" in fields, f"{path.name}: first line must be `# expect: FILE:LINE: fragment`"
    m = re.match(r"^(?P<suffix>.+?):(?P<line>\d+): (?P<fragment>.+)$", fields["expect"])
    assert m, f"{path.name}: malformed expect line {fields['expect']!r}"
    return Case(
        path=path,
        suffix=m.group("suffix"),
        line=int(m.group("line")),
        fragment=m.group("fragment"),
        args=tuple(shlex.split(fields.get("args", ""))),
        pad_to=int(fields["pad-to"]) if "pad-to" in fields else None,
        hide=tuple(fields.get("hide", "").split()),
    )


CASES = sorted(BAD.glob("*.yaml"))


def _pov_command() -> list[str]:
    script = Path(sys.executable).with_name("pov")
    return [str(script)] if script.exists() else [sys.executable, "-m", "runner.cli"]


def _run(case: Case, spec: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    argv = ["validate", str(spec), *case.args]
    if case.path.name in SUBPROCESS_CASES:
        proc = subprocess.run(
            [*_pov_command(), *argv], capture_output=True, text=True, cwd=REPO, timeout=120, check=False
        )
        return proc.returncode, proc.stdout, proc.stderr
    rc = cli.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _matches_file(reported: str, suffix: str) -> bool:
    return reported == suffix or reported.endswith("/" + suffix)


def test_suite_is_large_enough() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize("path", CASES, ids=[p.name for p in CASES])
def test_bad_spec(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    case = _read_case(path)
    assert not (case.hide and path.name in SUBPROCESS_CASES), "hidden modules reach the in-process cases only"
    for module in case.hide:
        monkeypatch.setitem(sys.modules, module, None)
    spec = path
    if case.pad_to is not None:
        spec = tmp_path / path.name
        shutil.copy(path, spec)
        with spec.open("a") as f:
            while spec.stat().st_size <= case.pad_to:
                f.write("# " + "padding " * 12 + "\n")
                f.flush()
    rc, out, err = _run(case, spec, capsys)

    assert "Traceback" not in err + out
    assert rc == 2, f"exit {rc}; stderr:\n{err}"
    located = [m for m in map(LOCATED.match, err.splitlines()) if m]
    assert located, f"no FILE:LINE in stderr:\n{err}"
    hits = [m for m in located if _matches_file(m["file"], case.suffix) and int(m["line"]) == case.line]
    assert hits, f"expected {case.suffix}:{case.line} in stderr:\n{err}"
    assert any(case.fragment in m["rest"] for m in hits), f"expected {case.fragment!r} on that line:\n{err}"


def test_zero_byte_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "zero.yaml"
    spec.write_bytes(b"")
    assert cli.main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"zero\.yaml:1(:\d+)?: .*file is empty", err), err


def test_missing_spec_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert re.search(r"nope\.yaml:1(:\d+)?: no such spec file", capsys.readouterr().err)


def test_every_problem_is_reported_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Problems found by the cross-reference pass come out together, so one `pov validate` shows them all."""
    spec = tmp_path / "many.yaml"
    spec.write_text(
        f"extends: {BAD / 'fixtures' / 'base.yaml'}\n"
        "name: many\n"
        "matrix:\n"
        "  persona: [profesor]\n"
        "  template: [nope]\n"
        "templates:\n"
        "  simple: missing.j2\n"
    )
    assert cli.main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "unknown persona 'profesor'" in err
    assert "unknown template 'nope'" in err
    assert "template file not found" in err


def test_one_bad_spec_does_not_hide_the_others(capsys: pytest.CaptureFixture[str]) -> None:
    good = str(BAD / "fixtures" / "base.yaml")
    rc = cli.main(["validate", str(BAD / "k_zero.yaml"), good])
    out = capsys.readouterr()
    assert rc == 2
    assert "at least 1 chunk" in out.err
    assert f"{good}: ok" in out.out


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("models.tiny.name", "'   '"),
        ("models.tiny.revision", "' '"),
        ("models.tiny.device", "''"),
        ("embedder.model", "' '"),
        ("embedder.device", "' '"),
        ("embedder.query_prompt", "''"),
        ("tracking.experiment", "'  '"),
        ("tracking.uri", "' '"),
        ("executor.address", "' '"),
        ("corpus.include", "['*.md', '  ']"),
    ],
)
def test_blank_strings_are_refused_where_they_name_something(key: str, value: str) -> None:
    """A blank model name, device, revision or pattern would fail far from the spec (or, for a pattern,
    silently match nothing); the spec names the field instead."""
    from runner.errors import SpecError
    from runner.spec import load_spec

    with pytest.raises(SpecError) as err:
        load_spec(BAD / "fixtures" / "base.yaml", [f"{key}={value}"])
    [problem] = err.value.problems
    assert problem.path.startswith(key) and "blank" in problem.message, problem
