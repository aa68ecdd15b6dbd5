"""`load_spec`: the one way a spec file becomes an `Experiment`, or one `SpecError` listing every problem."""

from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from runner.errors import Problem, SpecError, did_you_mean
from runner.redaction import redact, redact_setting, setting_secrets
from runner.spec.experiment import Experiment, display_path, project_root
from runner.spec.references import resolve
from runner.spec.safe_yaml import Mark, PathKey, load_yaml, parse_yaml
from runner.spec.schema import Spec

MAX_EXTENDS = 16


# Keys whose string values are paths, resolved against the file they are written in.
def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    def fix(v: Any) -> Any:
        return str((base / v).resolve()) if isinstance(v, str) and v else v

    corpus = data.get("corpus")
    if isinstance(corpus, dict):
        for key in ("path", "persist_dir"):
            if key in corpus:
                corpus[key] = fix(corpus[key])
    if isinstance(data.get("questions"), str):
        data["questions"] = fix(data["questions"])
    for key in ("pov_sets", "templates"):
        if isinstance(data.get(key), dict):
            for name, v in data[key].items():
                if isinstance(v, str):
                    data[key][name] = fix(v)
    if isinstance(data.get("models"), dict):
        for m in data["models"].values():
            if isinstance(m, dict) and isinstance(m.get("name"), str) and m["name"].startswith(("./", "../")):
                m["name"] = fix(m["name"])
            server = m.get("server") if isinstance(m, dict) else None
            gguf = server.get("gguf") if isinstance(server, dict) else None
            if (
                isinstance(server, dict)
                and isinstance(gguf, str)
                and gguf.strip()
                and not gguf.startswith("builtin:")
            ):
                server["gguf"] = fix(gguf)  # `builtin:NAME` stays as written


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base[k], v) if k in base else v
        return out
    return over


def _merge_marks(base: dict[PathKey, Mark], over: dict[PathKey, Mark], over_data: Any) -> dict[PathKey, Mark]:
    def replaced(path: PathKey) -> bool:
        node = over_data
        for i, part in enumerate(path):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
            if not isinstance(node, dict) and i < len(path) - 1:
                return True  # the override replaced this subtree whole
        return False

    out = {p: m for p, m in base.items() if not replaced(p)}
    out.update(over)
    return out


def _load_chain(path: Path, seen: list[Path]) -> tuple[dict[str, Any], dict[PathKey, Mark], list[Path]]:
    label = display_path(path)
    loaded = load_yaml(path, label)
    if loaded.data is None:
        raise SpecError(
            [
                Problem(
                    label,
                    1,
                    0,
                    "",
                    "file is empty: a spec needs at least name, corpus, questions, "
                    "pov_sets, personas, templates and models",
                )
            ]
        )
    if not isinstance(loaded.data, dict):
        top = loaded.marks.get((), Mark(label, 1, 1))
        raise SpecError(
            [Problem(label, top.line, top.col, "", "a spec is a mapping of keys (name:, corpus:, ...)")]
        )
    data, marks = loaded.data, loaded.marks
    _resolve_paths(data, path.parent)
    files = [path]
    ext = data.get("extends")
    if ext is None:
        return data, marks, files
    mark = marks.get(("extends",), Mark(label, 1, 1))
    if not isinstance(ext, str):
        raise SpecError([Problem(label, mark.line, mark.col, "extends", "extends is one file path")])
    base_path = (path.parent / ext).resolve()
    if base_path in seen or base_path == path:
        chain = " -> ".join(display_path(p) for p in [*seen, path, base_path])
        raise SpecError([Problem(label, mark.line, mark.col, "extends", f"circular extends: {chain}")])
    if len(seen) >= MAX_EXTENDS:
        raise SpecError([Problem(label, mark.line, mark.col, "extends", f"more than {MAX_EXTENDS} levels")])
    if not base_path.is_file():
        raise SpecError([Problem(label, mark.line, mark.col, "extends", f"no such file: {ext}")])
    base, base_marks, base_files = _load_chain(base_path, [*seen, path])
    merged = _merge(base, {k: v for k, v in data.items() if k != "extends"})
    return merged, _merge_marks(base_marks, marks, data), files + base_files


def _resolve_set_paths(parts: list[Any], value: Any) -> Any:
    """Paths given on the command line are relative to where the command runs. Wrapping the value in its
    key path lets _resolve_paths find it, be it `corpus.path=x` or `templates={a: x}`."""
    wrapped: Any = value
    for part in reversed(parts):
        wrapped = {part: wrapped}
    _resolve_paths(wrapped, Path.cwd())
    for part in parts:
        wrapped = wrapped[part]
    return wrapped


def apply_overrides(data: dict[str, Any], marks: dict[PathKey, Mark], overrides: Sequence[str]) -> None:
    """Apply `--set a.b=VALUE` overrides (VALUE parsed as YAML) in place."""
    problems = []
    secrets = setting_secrets(overrides)
    for i, item in enumerate(overrides, 1):
        key, sep, text = item.partition("=")
        label = f"--set #{i} {redact_setting(item, secrets)!r}"
        if not sep or not key.strip() or any(not p for p in key.split(".")):
            problems.append(
                Problem(
                    "--set",
                    i,
                    1,
                    key,
                    f"{label}: expected KEY.PATH=VALUE, e.g. --set generation.max_new_tokens=256",
                )
            )
            continue
        try:
            value = parse_yaml(text, "--set").data if text.strip() else ""
        except SpecError as e:
            problems.append(Problem("--set", i, len(key) + 2, key, f"{label}: {e.problems[0].message}"))
            continue
        parts: list[Any] = [int(p) if p.isdigit() else p for p in key.split(".")]
        node: Any = data
        for j, part in enumerate(parts[:-1]):
            if isinstance(node, dict):
                node = node.setdefault(part, {})
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
            else:
                problems.append(
                    Problem(
                        "--set",
                        i,
                        1,
                        ".".join(map(str, parts[: j + 1])),
                        f"{label}: cannot descend into a {type(node).__name__}",
                    )
                )
                break
        else:
            last = parts[-1]
            value = _resolve_set_paths(parts, value)
            if isinstance(node, dict) or (
                isinstance(node, list) and isinstance(last, int) and last < len(node)
            ):
                node[last] = value
            else:
                problems.append(
                    Problem("--set", i, 1, key, f"{label}: cannot set a key on a {type(node).__name__}")
                )
                continue
            for p in [p for p in marks if p[: len(parts)] == tuple(parts)]:
                del marks[p]
            marks[tuple(parts)] = Mark("--set", i, len(key) + 2)
    if problems:
        raise SpecError(problems)


def _mark_for(loc: Sequence[Any], data: Any, marks: dict[PathKey, Mark], default: Mark) -> tuple[Mark, str]:
    path: list[Any] = []
    node = data
    for part in loc:
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and part < len(node)
        ):
            node = node[part]
            path.append(part)
        elif isinstance(part, str) and not (
            isinstance(node, dict) and part not in node and part.isidentifier()
        ):
            continue  # a pydantic union tag such as 'list[Question]'
        else:
            path.append(part)
            break
    for n in range(len(path), -1, -1):
        if tuple(path[:n]) in marks:
            return marks[tuple(path[:n])], ".".join(map(str, path))
    return default, ".".join(map(str, path))


def _known_fields(loc: Sequence[Any]) -> list[str]:
    model: Any = Spec
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        if part in model.model_fields:
            ann = model.model_fields[part].annotation
        else:
            continue
        for arg in [ann, *typing.get_args(ann)]:
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                model = arg
                break
            if (
                typing.get_origin(arg) is dict
                and typing.get_args(arg)[1:]
                and isinstance(typing.get_args(arg)[1], type)
                and issubclass(typing.get_args(arg)[1], BaseModel)
            ):
                model = typing.get_args(arg)[1]
                break
        else:
            return []
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _validation_problems(
    err: ValidationError, data: Any, marks: dict[PathKey, Mark], top: Mark
) -> list[Problem]:
    out = []
    for e in err.errors():
        loc = list(e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        # `Path | list[...]` fields report once per union branch; keep the branch the input was meant for.
        if any(isinstance(p, str) and p.startswith("lax-or-strict[") for p in loc):
            if isinstance(e["input"], (list, dict)):
                continue
            msg = f"expected a file path or an inline list, got {type(e['input']).__name__} {e['input']!r}"
        elif e["type"] == "list_type" and isinstance(loc[-1], str) and loc[-1].startswith("list["):
            continue  # the path branch above reports the same input
        if e["type"] == "missing":
            mark, _ = _mark_for(loc[:-1], data, marks, top)
            path = ".".join(str(p) for p in loc if not (isinstance(p, str) and "[" in p))
            msg = "required field is missing"
        else:
            mark, path = _mark_for(loc, data, marks, top)
        if e["type"] == "extra_forbidden":
            msg = f"unknown key {loc[-1]!r}{did_you_mean(loc[-1], _known_fields(loc[:-1]))}"
        out.append(Problem(mark.file, mark.line, mark.col, path, msg))
    # A union (path or inline list) reports once per branch; keep the first per location.
    seen: dict[tuple[str, int, str], Problem] = {}
    for p in out:
        seen.setdefault((p.file, p.line, p.path), p)
    return list(seen.values())


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> Experiment:
    """Load, merge, override and validate a spec and every file it names.

    Problems are reported with secrets redacted: a message may quote a `--set` argument or a value from the
    spec (a URL with a password, a key pasted in the wrong place), and it ends up in terminals and CI logs.
    """
    try:
        return _load_spec(Path(path), overrides)
    except SpecError as e:
        secrets = setting_secrets(overrides)
        clean = [
            dataclasses.replace(
                p,
                file=redact(p.file, secrets),
                path=redact(p.path, secrets),
                message=redact(p.message, secrets),
            )
            for p in e.problems
        ]
        if clean == e.problems:
            raise
        raise SpecError(clean) from None


def _load_spec(spec_path: Path, overrides: Sequence[str]) -> Experiment:
    label = display_path(spec_path)
    if not spec_path.exists():
        raise SpecError([Problem(label, 1, 0, "", "no such spec file")])
    data, marks, files = _load_chain(spec_path.resolve(), [])
    apply_overrides(data, marks, overrides)
    top = Mark(label, 1, 1)
    try:
        spec = Spec.model_validate(copy.deepcopy(data))
    except ValidationError as err:
        raise SpecError(_validation_problems(err, data, marks, top)) from None
    return resolve(spec, spec_path.resolve(), data, marks, top, files, project_root(spec_path))
