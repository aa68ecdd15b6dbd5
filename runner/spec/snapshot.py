"""An experiment as one standalone spec: what an execution stores so that `pov rerun` can load it again
with the ordinary loader, whatever has happened to the original files since."""

from __future__ import annotations

from typing import Any

import yaml

from runner.spec.experiment import Experiment

SNAPSHOT_HEADER = """\
# Resolved spec written by pov-runner: defaults filled in, `extends` flattened, questions and POV sets
# inline, templates in templates/ beside this file. `pov rerun RUN_ID` loads it; so does `pov run`.
"""


def snapshot_files(exp: Experiment) -> dict[str, str]:
    """The standalone spec and its templates, as relative path -> text."""
    data: dict[str, Any] = exp.spec.model_dump(mode="json", exclude={"extends"})
    data["questions"] = [{"id": q.id, "text": q.text} for q in exp.questions.values()]
    data["pov_sets"] = {name: list(statements) for name, statements in exp.pov_sets.items()}
    data["templates"] = {name: f"templates/{name}.j2" for name in exp.templates}
    text = SNAPSHOT_HEADER + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=110)
    files = {"spec.yaml": text}
    for name, info in exp.templates.items():
        files[f"templates/{name}.j2"] = info.text
    return files
