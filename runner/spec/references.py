"""Checks that need more than one field: files the spec names, and names the matrix refers to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from runner.errors import Problem, SpecError, did_you_mean
from runner.registry import BACKENDS, EMBEDDERS, RERANKERS
from runner.spec.experiment import Experiment, display_path
from runner.spec.languages import install_hint, missing_modules
from runner.spec.matrix import OPTIONAL_IN_INCLUDE, is_empty, matrix_pov_sets
from runner.spec.model_schema import Model
from runner.spec.paired import zip_problems
from runner.spec.safe_yaml import Mark, PathKey, load_yaml, read_text
from runner.spec.schema import AXES, Question, Spec, check_k
from runner.spec.templates import TemplateInfo, check_renders, parse_header


class ProblemList:
    def __init__(self, data: Any, marks: dict[PathKey, Mark], top: Mark) -> None:
        self.data, self.marks, self.top = data, marks, top
        self.problems: list[Problem] = []

    def at(self, path: PathKey, message: str) -> None:
        for n in range(len(path), -1, -1):
            if path[:n] in self.marks:
                mark = self.marks[path[:n]]
                break
        else:
            mark = self.top
        self.problems.append(Problem(mark.file, mark.line, mark.col, ".".join(map(str, path)), message))

    def absorb(self, err: SpecError) -> None:
        self.problems.extend(err.problems)


def _load_questions(spec: Spec, c: ProblemList) -> dict[str, Question]:
    out: dict[str, Question] = {}
    if isinstance(spec.questions, list):
        for i, q in enumerate(spec.questions):
            if q.id in out:
                c.at(("questions", i, "id"), f"duplicate question id {q.id!r}")
            out[q.id] = q
        return out
    path = Path(spec.questions)
    label = display_path(path)
    if not path.is_file():
        c.at(("questions",), f"questions file not found: {label}")
        return out
    try:
        loaded = load_yaml(path, label)
    except SpecError as e:
        c.absorb(e)
        return out
    data = loaded.data
    if isinstance(data, dict) and set(data) == {"questions"}:
        data = data["questions"]
        prefix: PathKey = ("questions",)
    else:
        prefix = ()
    sub = ProblemList(loaded.data, loaded.marks, Mark(label, 1, 1))
    if not isinstance(data, list) or not data:
        sub.at(prefix, "expected `questions:` with a non-empty list of {id, text}")
    else:
        for i, item in enumerate(data):
            try:
                q = Question.model_validate(item)
            except ValidationError as err:
                for detail in err.errors():
                    msg = detail["msg"].removeprefix("Value error, ")
                    if detail["type"] == "extra_forbidden":
                        msg = f"unknown key {detail['loc'][-1]!r}{did_you_mean(detail['loc'][-1], list(Question.model_fields))}"
                    sub.at((*prefix, i, *detail["loc"]), msg)
                continue
            if q.id in out:
                sub.at((*prefix, i, "id"), f"duplicate question id {q.id!r}")
            out[q.id] = q
    c.problems.extend(sub.problems)
    return out


def _load_pov_sets(spec: Spec, c: ProblemList) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, val in spec.pov_sets.items():
        if isinstance(val, list):
            # Blank statements are dropped (a trailing '' is harmless), but a set with none left is an error
            # at its own entry, not at `pov_sets:`.
            statements = [s.strip() for s in val if s.strip()]
            if statements:
                out[name] = statements
            else:
                c.at(("pov_sets", name), f"POV set {name!r} is empty: give at least one statement")
            continue
        path = Path(val)
        label = display_path(path)
        if not path.is_file():
            c.at(("pov_sets", name), f"POV set file not found: {label}")
            continue
        try:
            loaded = load_yaml(path, label)
        except SpecError as e:
            c.absorb(e)
            continue
        data = loaded.data
        where: PathKey = ()
        if isinstance(data, dict) and set(data) == {"statements"}:
            data, where = data["statements"], ("statements",)
        sub = ProblemList(loaded.data, loaded.marks, Mark(label, 1, 1))
        if not isinstance(data, list) or not all(isinstance(s, str) for s in data):
            sub.at(where, "expected `statements:` with a list of short strings")
        elif not [s for s in data if s.strip()]:
            sub.at(where, f"POV set {name!r} is empty: give at least one statement")
        else:
            out[name] = [s.strip() for s in data if s.strip()]
        c.problems.extend(sub.problems)
    return out


def _load_templates(spec: Spec, c: ProblemList) -> dict[str, TemplateInfo]:
    out = {}
    for name, path in spec.templates.items():
        label = display_path(Path(path))
        if not Path(path).is_file():
            c.at(("templates", name), f"template file not found: {label}")
            continue
        try:
            out[name] = load_template(name, Path(path), label)
        except SpecError as e:
            c.absorb(e)
    return out


def axis_choices(spec: Spec, questions: dict[str, Question]) -> dict[str, list[str]]:
    return {
        "model": list(spec.models),
        "template": list(spec.templates),
        "persona": list(spec.personas),
        "pov_set": list(spec.pov_sets),
        "pov_score": list(spec.pov_scores),
        "question": list(questions),
    }


def _check_matrix(spec: Spec, questions: dict[str, Question], c: ProblemList) -> None:
    choices = axis_choices(spec, questions)
    m = spec.matrix
    for axis, declared in choices.items():
        values = getattr(m, axis)
        if values == "all":
            continue
        if not values:
            c.at(("matrix", axis), f"empty list: name at least one {axis} or use `all`")
        seen = set()
        for i, v in enumerate(values):
            if v in seen:
                c.at(("matrix", axis, i), f"{v!r} is listed twice")
            seen.add(v)
            if v not in declared and (axis != "question" or questions):
                c.at(("matrix", axis, i), f"unknown {axis} {v!r}{did_you_mean(v, declared)}")
    seen_k: set[tuple[int, ...]] = set()
    for i, k in enumerate(m.k):
        if tuple(k) in seen_k:
            c.at(("matrix", "k", i), f"k schedule {k} is listed twice")
        seen_k.add(tuple(k))
    for kind in ("exclude", "include"):
        for i, rule in enumerate(getattr(m, kind)):
            _check_rule(rule, ("matrix", kind, i), choices, questions, c, full=(kind == "include"))

    def length(axis: str) -> int:
        chosen = getattr(m, axis)
        return len(choices[axis]) if chosen == "all" else len(chosen)

    for where, message in zip_problems(m.zip, length, [set(rule) for rule in m.exclude]):
        c.at(("matrix", *where), message)
    for i, fault in enumerate(spec.faults):
        _check_rule(fault.match, ("faults", i, "match"), choices, questions, c, full=False)


def _check_rule(
    rule: dict[str, Any],
    path: PathKey,
    choices: dict[str, list[str]],
    questions: dict[str, Question],
    c: ProblemList,
    full: bool,
) -> None:
    if not rule and path[0] != "faults":
        c.at(path, "empty rule: name at least one axis")
    for axis, value in rule.items():
        if axis not in AXES:
            c.at((*path, axis), f"unknown axis {axis!r}{did_you_mean(axis, AXES)}")
            continue
        values = value if isinstance(value, list) and axis != "k" else [value]
        if axis == "k":
            values = value if isinstance(value, list) and value and isinstance(value[0], list) else [value]
            for v in values:
                try:
                    check_k(v)
                except ValueError as e:
                    c.at((*path, axis), str(e))
            continue
        for v in values:
            if v == "all" and full and not isinstance(value, list):
                continue  # inside a list `all` would reach expand() as a name and crash it
            if v not in choices[axis] and (axis != "question" or questions):
                c.at((*path, axis), f"unknown {axis} {v!r}{did_you_mean(v, choices[axis])}")
    if full:
        missing = [a for a in AXES if a not in rule and a not in OPTIONAL_IN_INCLUDE]
        if missing:
            c.at(path, f"an include names every axis but question; missing: {', '.join(missing)}")


def resolve(
    spec: Spec,
    path: Path,
    data: dict[str, Any],
    marks: dict[PathKey, Mark],
    top: Mark,
    files: list[Path],
    root: Path,
) -> Experiment:
    c = ProblemList(data, marks, top)
    if not spec.corpus.path.is_dir():
        c.at(("corpus", "path"), f"corpus folder not found: {display_path(spec.corpus.path)}")
    questions = _load_questions(spec, c)
    pov_sets = _load_pov_sets(spec, c)
    templates = _load_templates(spec, c)
    _check_matrix(spec, questions, c)
    for name, model in spec.models.items():
        if model.backend not in BACKENDS:
            c.at(
                ("models", name, "backend"),
                f"unknown backend {model.backend!r}{did_you_mean(model.backend, BACKENDS.names())}",
            )
        else:
            _check_server_fields(name, model, c)
    if spec.generation.compile:
        _check_compile(spec, c)
    for key in ("embedder", "reranker"):
        emb = getattr(spec, key)
        if emb is not None and emb.provider not in EMBEDDERS:
            c.at(
                (key, "provider"),
                f"unknown provider {emb.provider!r}{did_you_mean(emb.provider, EMBEDDERS.names())}",
            )
        elif emb is not None:
            _check_plugin(emb.provider, emb.model, key, c)
    missing = missing_modules(spec.corpus.language)
    if missing:
        c.at(
            ("corpus", "language"),
            f"language {spec.corpus.language!r} is chunked with the {missing[0]!r} package, which is not "
            f"installed: {install_hint(spec.corpus.language)}",
        )
    qr = spec.query_reranker
    if qr is not None and qr.provider not in RERANKERS:
        c.at(
            ("query_reranker", "provider"),
            f"unknown query reranker {qr.provider!r}{did_you_mean(qr.provider, RERANKERS.names())}",
        )
    if c.problems:
        raise SpecError(c.problems)
    sources = [*files, *(Path(t.path) for t in templates.values())]
    if not isinstance(spec.questions, list):
        sources.append(Path(spec.questions))
    sources += [Path(v) for v in spec.pov_sets.values() if not isinstance(v, list)]
    exp = Experiment(spec, path, root, questions, pov_sets, templates, data, sources)
    _check_pov_scores(exp, c)
    if c.problems:
        raise SpecError(c.problems)
    if is_empty(exp):
        c.at(("matrix",), "the matrix has no cells: matrix.exclude removes every combination")
        raise SpecError(c.problems)
    return exp


def _check_plugin(provider: str, model: str, key: str, c: ProblemList) -> None:
    """An embedding provider's missing package, or a model it does not have."""
    problem = EMBEDDERS.missing(provider)
    if problem:
        c.at((key, "provider"), problem)
    plugin = EMBEDDERS.plugin(provider)
    if plugin is not None and plugin.models and model not in plugin.models:
        c.at(
            (key, "model"),
            f"provider {provider!r} has the model {' or '.join(map(repr, plugin.models))} only, not {model!r}",
        )


COMPILING_BACKENDS = ("transformers",)
"""Backends that decode with `generation.compile: true` (a static cache and a compiled forward)."""


def _matrix_models(spec: Spec) -> list[str]:
    """The declared models that some cell uses: the matrix's, and those an include rule adds."""
    chosen = spec.matrix.model
    names = set(spec.models) if chosen == "all" else set(chosen)
    for rule in spec.matrix.include:
        value = rule.get("model", [])
        names.update(value if isinstance(value, list) else [value])
    return [name for name in spec.models if name in names]


def _check_compile(spec: Spec, c: ProblemList) -> None:
    for name in _matrix_models(spec):
        model = spec.models[name]
        if model.backend not in COMPILING_BACKENDS:
            c.at(
                ("generation", "compile"),
                f"model {name!r} has backend {model.backend}, and compile works with backend transformers "
                "only: set generation.compile: false, or leave the model out of the matrix",
            )
        elif model.load_in_4bit:
            c.at(
                ("generation", "compile"),
                f"model {name!r} loads in 4-bit (bitsandbytes), which transformers does not compile: set "
                "generation.compile: false, or load_in_4bit: false",
            )


def _check_pov_scores(exp: Experiment, c: ProblemList) -> None:
    """A contrast needs a reference other than the set it scores: named POV sets that exist, and with
    `others`, a second POV set in the matrix."""
    in_matrix = matrix_pov_sets(exp)
    for name, score in exp.spec.pov_scores.items():
        if score.method != "contrast":
            continue
        if score.reference == "others":
            if len(in_matrix) < 2:
                only = ", ".join(repr(p) for p in in_matrix) or "none"
                c.at(
                    ("pov_scores", name),
                    f"contrast compares a POV set with the others the matrix uses, and it uses one ({only}): "
                    "add another POV set to the matrix, or give `reference:` a neutral POV set declared in "
                    "pov_sets",
                )
            continue
        for i, ref in enumerate(score.reference):
            if ref not in exp.pov_sets:
                c.at(
                    ("pov_scores", name, "reference", i),
                    f"unknown POV set {ref!r}{did_you_mean(ref, list(exp.pov_sets))}",
                )
        alone = [p for p in in_matrix if set(score.reference) == {p}]
        if alone:
            c.at(
                ("pov_scores", name, "reference"),
                f"the reference is POV set {alone[0]!r} alone, which the matrix also scores: it would be "
                "compared with itself; add another reference set",
            )


_SERVER_FIELDS = ("base_url", "api_key_env", "max_concurrency", "request_timeout_s", "server")
_LOCAL_FIELDS = ("revision", "load_in_4bit", "dtype")


def _check_server_fields(name: str, model: Model, c: ProblemList) -> None:
    """A model entry's fields fit its backend: `openai` talks to exactly one server (`base_url`, or the
    `server` pov-runner starts) and loads no weights itself; the others never talk to a server."""
    where = ("models", name)

    def given(field: str) -> bool:  # a value other than the default (a stored spec writes every default)
        return bool(getattr(model, field) != Model.model_fields[field].default)

    if not BACKENDS.is_remote(model.backend):
        for field in _SERVER_FIELDS:
            if given(field):
                c.at(
                    (*where, field), f"{field} is for backend openai; this model's backend is {model.backend}"
                )
        return
    if model.base_url is not None and model.server is not None:
        c.at(where, "backend openai talks to one server: give base_url or server, not both")
    elif model.base_url is None and model.server is None:
        c.at(
            where,
            "backend openai needs base_url (a running server) or server: {gguf: ...} (one pov-runner starts)",
        )
    if model.server is not None and model.api_key_env is not None:
        c.at((*where, "api_key_env"), "a server pov-runner starts has its own key: leave api_key_env out")
    if model.name.startswith("builtin:"):
        c.at(
            (*where, "name"),
            "for backend openai the name is the model as the server knows it; a builtin GGUF goes in "
            "server.gguf",
        )
    for field in _LOCAL_FIELDS:
        if given(field):
            c.at((*where, field), f"{field} has no effect with backend openai (the server loads the model)")
    gguf = model.server.gguf if model.server is not None else None
    if gguf is not None and not gguf.startswith("builtin:"):
        label = display_path(Path(gguf))
        if not Path(gguf).is_file():
            c.at((*where, "server", "gguf"), f"GGUF file not found: {label}")
        else:
            try:
                with Path(gguf).open("rb") as fh:
                    magic = fh.read(4)
            except OSError as e:
                magic, label = b"", f"{label} ({e.strerror})"
            if magic != b"GGUF":
                c.at((*where, "server", "gguf"), f"not a GGUF file (it does not start with 'GGUF'): {label}")


def load_template(name: str, path: Path, label: str) -> TemplateInfo:
    """Read a template file, parse its `pov:` header and check that it renders with sample values."""
    info = parse_header(name, path, read_text(path, label), label)
    check_renders(info, label)
    return info
