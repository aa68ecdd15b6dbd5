"""The one YAML loader for specs and the data files they name.

PyYAML's safe_load is close to what we want but keeps the last of two duplicate keys silently, expands
aliases without bound and forgets where each value came from. This loader composes the node tree with
SafeLoader (so no Python tags can construct objects), rebuilds plain Python data from it, refuses
duplicate keys and runaway alias expansion, and records a `(line, col)` for every path so that later
validation errors can point at the offending node.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from runner.errors import Problem, SpecError

MAX_BYTES = 1_000_000
"""Specs and their data files are small; anything larger is a mistake (or an attack)."""
MAX_NODES = 200_000
"""Upper bound on values built from one document, so an alias bomb fails fast instead of eating memory."""

PathKey = tuple[Any, ...]


@dataclass(frozen=True)
class Mark:
    file: str
    line: int
    col: int


@dataclass
class Loaded:
    data: Any
    marks: dict[PathKey, Mark]


def _problem(file: str, mark: Any, message: str, path: str = "") -> Problem:
    line = getattr(mark, "line", 0) + 1 if mark is not None else 1
    col = getattr(mark, "column", 0) + 1 if mark is not None else 1
    return Problem(file, line, col, path, message)


def read_text(path: Path, label: str | None = None) -> str:
    """Read a UTF-8 text file within the size bound, or raise a SpecError that names it."""
    label = label or str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpecError([Problem(label, 1, 0, "", "file not found")]) from None
    except IsADirectoryError:
        raise SpecError([Problem(label, 1, 0, "", "is a directory, expected a file")]) from None
    except OSError as e:
        raise SpecError([Problem(label, 1, 0, "", f"cannot read: {e.strerror}")]) from None
    if len(raw) > MAX_BYTES:
        raise SpecError(
            [Problem(label, 1, 0, "", f"file is {len(raw):,} bytes; the limit is {MAX_BYTES:,}: split it up")]
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise SpecError(
            [Problem(label, line, col, "", f"not UTF-8 (byte 0x{raw[e.start]:02x}): save the file as UTF-8")]
        ) from None


class _Builder:
    def __init__(self, file: str, loader: yaml.SafeLoader) -> None:
        self.file = file
        self.loader = loader
        self.marks: dict[PathKey, Mark] = {}
        self.count = 0

    def build(self, node: yaml.Node, path: PathKey) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise SpecError(
                [_problem(self.file, node.start_mark, f"more than {MAX_NODES:,} values once aliases are expanded "
                          "(an alias bomb?): use fewer anchors")]
            )
        self.marks.setdefault(path, Mark(self.file, node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, yaml.MappingNode):
            self.loader.flatten_mapping(node)  # applies `<<` merge keys
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self._scalar(key_node, path)
                if isinstance(key, (list, dict)):
                    raise SpecError([_problem(self.file, key_node.start_mark, "mapping keys must be plain values",
                                              _dotted(path))])
                if key in out:
                    first = self.marks.get((*path, key))
                    where = f" (first defined on line {first.line})" if first else ""
                    raise SpecError([_problem(self.file, key_node.start_mark,
                                              f"duplicate key {key!r}{where}: keep one", _dotted((*path, key)))])
                self.marks[(*path, key)] = Mark(self.file, key_node.start_mark.line + 1,
                                                key_node.start_mark.column + 1)
                out[key] = self.build(value_node, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _scalar(self, node: yaml.Node, path: PathKey) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return self.build(node, path)
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as e:
            raise SpecError([_problem(self.file, node.start_mark,
                                      f"{e.problem or 'cannot construct value'}: only plain YAML is allowed",
                                      _dotted(path))]) from None


def _dotted(path: PathKey) -> str:
    return ".".join(str(p) for p in path)


def parse_yaml(text: str, file: str) -> Loaded:
    """Parse one YAML document from text; `file` labels the marks and errors."""
    if "\t" in text:
        for lineno, line in enumerate(text.splitlines(), 1):
            stripped = line.lstrip(" ")
            if stripped.startswith("\t"):
                raise SpecError([Problem(file, lineno, len(line) - len(stripped) + 1, "",
                                         "tab used for indentation: YAML needs spaces")])
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return Loaded(None, {})
        builder = _Builder(file, loader)
        data = builder.build(node, ())
        return Loaded(data, builder.marks)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        msg = e.problem or str(e)
        if e.context:
            msg = f"{e.context}, {msg}"
        raise SpecError([_problem(file, mark, f"YAML syntax: {msg}")]) from None
    except yaml.YAMLError as e:  # pragma: no cover - PyYAML marks nearly all of its errors
        raise SpecError([Problem(file, 1, 0, "", f"YAML error: {e}")]) from None
    finally:
        loader.dispose()


def load_yaml(path: Path, label: str | None = None) -> Loaded:
    """Load a YAML file safely; see the module docstring."""
    label = label or str(path)
    return parse_yaml(read_text(path, label), label)
