"""What every spec model shares: `Strict` (unknown keys refused, a docstring per field) and the checks of
names and text fields that several sections use."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

from runner.spec.corpus import include_problem

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True)


# Whitespace passes `min_length` and reaches the model, the hub or MLflow, which fail far from the spec (or
# quietly use a name of spaces); these say which field to fix.
def _filled(v: str) -> str:
    if not v.strip():
        raise ValueError("is blank (spaces only): write a value")
    return v


def _setting(v: str) -> str:
    if not v.strip():
        raise ValueError("is blank: write a value, or leave the key out for the default")
    return v


def _include(v: str) -> str:
    problem = include_problem(v)
    if problem:
        raise ValueError(problem)
    return v


def _question(v: str) -> str:
    if not v.strip():
        raise ValueError("question text is blank: write the question, or remove the entry")
    return v


def _persona(v: str) -> str:
    if not v.strip():
        raise ValueError("persona is empty: write its text, or remove it from personas")
    return v


Filled = Annotated[str, AfterValidator(_filled)]
"""Required text that means something only when it has some."""
Setting = Annotated[str, AfterValidator(_setting)]
"""A name or value with a default: blank is a mistake, not a way to ask for the default."""
