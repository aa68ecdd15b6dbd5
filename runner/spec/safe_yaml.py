"""The one YAML loader for specs and the data files they name.

PyYAML's safe_load is close to what we want but keeps the last of two duplicate keys silently, expands
aliases without bound and forgets where each value came from. This loader composes the node tree with
SafeLoader (so no Python tags can construct objects), rebuilds plain Python data from it, refuses
duplicate keys and runaway alias expansion, and records a `(line, col)` for every path so that later
validation errors can point at the offending node.

The node tree is composed by libyaml (PyYAML's CSafeLoader) where PyYAML was built with it: 5-7x faster
than the pure-Python composer on a 450 KB questions file, with the same nodes and the same line/column
marks. Any document that fails to load is loaded again by the pure-Python SafeLoader, so every error and
where it points is what the pure-Python loader says (libyaml words its syntax errors differently).
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
MAX_DEPTH = 100
"""Deepest nesting of mappings and lists; also stops an alias that contains itself."""

PathKey = tuple[Any, ...]

_PLAIN_COLLECTION_TAGS = frozenset({"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"})
_MERGE_TAG = "tag:yaml.org,2002:merge"


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
        # Bounded read: `pov validate /dev/zero` (or a FIFO) must not read forever.
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise SpecError([Problem(label, 1, 0, "", "file not found")]) from None
    except IsADirectoryError:
        raise SpecError([Problem(label, 1, 0, "", "is a directory, expected a file")]) from None
    except OSError as e:
        raise SpecError([Problem(label, 1, 0, "", f"cannot read: {e.strerror}")]) from None
    if len(raw) > MAX_BYTES:
        size = path.stat().st_size if path.is_file() else 0
        what = f"file is {size:,} bytes" if size else f"file is over {MAX_BYTES:,} bytes"
        raise SpecError([Problem(label, 1, 0, "", f"{what}; the limit is {MAX_BYTES:,}: split it up")])
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
                [
                    _problem(
                        self.file,
                        node.start_mark,
                        f"more than {MAX_NODES:,} values once aliases are expanded "
                        "(an alias bomb?): use fewer anchors",
                    )
                ]
            )
        self.marks.setdefault(path, Mark(self.file, node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_COLLECTION_TAGS:
            # SafeLoader only refuses unknown tags on scalars; a tagged mapping or list would silently
            # become plain data, hiding e.g. `!!python/object/apply:os.system [...]` in a reviewed spec.
            raise SpecError(
                [
                    _problem(
                        self.file,
                        node.start_mark,
                        f"tag {node.tag!r} is not allowed: only plain YAML is allowed",
                        _dotted(path),
                    )
                ]
            )
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            merged: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    self._merge_into(merged, value_node, path)
                    continue
                key = self._scalar(key_node, path)
                if isinstance(key, (list, dict)):
                    raise SpecError(
                        [
                            _problem(
                                self.file,
                                key_node.start_mark,
                                "mapping keys must be plain values",
                                _dotted(path),
                            )
                        ]
                    )
                if key in out:
                    first = self.marks.get((*path, key))
                    where = f" (first defined on line {first.line})" if first else ""
                    raise SpecError(
                        [
                            _problem(
                                self.file,
                                key_node.start_mark,
                                f"duplicate key {key!r}{where}: keep one",
                                _dotted((*path, key)),
                            )
                        ]
                    )
                key_path: PathKey = (*path, key)  # mypy reads `marks[(*path, key)]` as 3.11 syntax
                self.marks[key_path] = Mark(
                    self.file, key_node.start_mark.line + 1, key_node.start_mark.column + 1
                )
                out[key] = self.build(value_node, key_path)
            # YAML merge semantics: keys written in the mapping win over merged ones.
            return {**{k: v for k, v in merged.items() if k not in out}, **out} if merged else out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _merge_into(self, merged: dict[Any, Any], value_node: yaml.Node, path: PathKey) -> None:
        """Apply a `<<` merge key. Built here rather than by PyYAML's flatten_mapping, which copies node
        lists eagerly (a few nested merges grow exponentially before any bound applies) and whose merged
        keys would then trip the duplicate-key check."""
        sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        for src in sources:
            if not isinstance(src, yaml.MappingNode):
                raise SpecError(
                    [
                        _problem(
                            self.file,
                            src.start_mark,
                            "`<<` merges a mapping or a list of mappings",
                            _dotted(path),
                        )
                    ]
                )
            for k, v in self.build(src, path).items():
                merged.setdefault(k, v)  # of several merged mappings, the first listed wins

    def _scalar(self, node: yaml.Node, path: PathKey) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return self.build(node, path)
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as e:
            raise SpecError(
                [
                    _problem(
                        self.file,
                        node.start_mark,
                        f"{e.problem or 'cannot construct value'}: only plain YAML is allowed",
                        _dotted(path),
                    )
                ]
            ) from None


def _check_size(root: yaml.Node, file: str) -> None:
    """Refuse a document whose alias expansion is too large or cyclic, before building any of it.

    Sizes are memoised per node, so this costs one visit per node as written, whereas expanding a
    billion-laughs document even up to MAX_NODES takes a noticeable fraction of a second."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active or depth > MAX_DEPTH:
            raise SpecError(
                [
                    _problem(
                        file,
                        node.start_mark,
                        f"nested more than {MAX_DEPTH} levels deep "
                        "(or an alias refers to a value that contains it)",
                    )
                ]
            )
        total = 1
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            active.add(key)
            children = [v for _, v in node.value] if isinstance(node, yaml.MappingNode) else node.value
            for child in children:
                total += size(child, depth + 1)
            active.discard(key)
        if total > MAX_NODES:
            raise SpecError(
                [
                    _problem(
                        file,
                        node.start_mark,
                        f"this value expands to more than {MAX_NODES:,} "
                        "values once aliases are expanded (an alias bomb?): use fewer anchors",
                    )
                ]
            )
        sizes[key] = total
        return total

    size(root, 0)


def _dotted(path: PathKey) -> str:
    return ".".join(str(p) for p in path)


FAST_LOADER: type[yaml.SafeLoader] | None = getattr(yaml, "CSafeLoader", None)
"""libyaml's composer, or None when PyYAML was built without it."""


def parse_yaml(text: str, file: str) -> Loaded:
    """Parse one YAML document from text; `file` labels the marks and errors."""
    # libyaml skips a byte-order mark without counting it as a column, the pure-Python reader counts it:
    # such a (rare) file goes the slow way so that its marks stay what they were.
    if FAST_LOADER is not None and not text.startswith("\ufeff"):
        try:
            return _parse(text, file, FAST_LOADER)
        except (SpecError, yaml.YAMLError, RecursionError):
            pass  # reported below, exactly as the pure-Python loader words and places it
    return _parse(text, file, yaml.SafeLoader)


def _parse(text: str, file: str, loader_class: type[yaml.SafeLoader]) -> Loaded:
    try:
        # The reader checks for unprintable characters as soon as it is built, so build it inside the try.
        loader = loader_class(text)
    except yaml.reader.ReaderError as e:
        raise SpecError([_reader_problem(text, file, e)]) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return Loaded(None, {})
        _check_size(node, file)
        builder = _Builder(file, loader)
        data = builder.build(node, ())
        return Loaded(data, builder.marks)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        # Checked only once parsing failed: a tab inside a block scalar is content, not indentation.
        lines = text.splitlines()
        if mark is not None and mark.line < len(lines):
            line = lines[mark.line]
            indent = line[: len(line) - len(line.lstrip(" \t"))]
            if "\t" in indent:
                raise SpecError(
                    [
                        Problem(
                            file,
                            mark.line + 1,
                            indent.index("\t") + 1,
                            "",
                            "tab used for indentation: YAML needs spaces",
                        )
                    ]
                ) from None
        msg = e.problem or str(e)
        if e.context:
            msg = f"{e.context}, {msg}"
        raise SpecError([_problem(file, mark, f"YAML syntax: {msg}")]) from None
    except yaml.reader.ReaderError as e:
        raise SpecError([_reader_problem(text, file, e)]) from None
    except RecursionError:
        # PyYAML composes recursively: text nested a few hundred levels deep overflows before _check_size.
        raise SpecError(
            [Problem(file, 1, 0, "", "nested too deeply to parse: flatten the structure")]
        ) from None
    except yaml.YAMLError as e:  # pragma: no cover - PyYAML marks nearly all of its errors
        raise SpecError([Problem(file, 1, 0, "", f"YAML error: {e}")]) from None
    finally:
        loader.dispose()


def _reader_problem(text: str, file: str, e: yaml.reader.ReaderError) -> Problem:
    pos = max(0, min(e.position, len(text)))
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    char = e.character if isinstance(e.character, int) else ord(e.character[:1] or "\0")
    return Problem(file, line, col, "", f"control character U+{char:04X} is not allowed in YAML: remove it")


def load_yaml(path: Path, label: str | None = None) -> Loaded:
    """Load a YAML file safely; see the module docstring."""
    label = label or str(path)
    return parse_yaml(read_text(path, label), label)
