"""What changed between two manifests that can change a run's results: `pov rerun` and a resumed run
print each `Drift` before they run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Drift:
    """One thing that differs between two manifests."""

    field: str
    old: Any
    new: Any
    detail: str = ""

    def __str__(self) -> str:
        text = f"{self.field}: {_show(self.old)} -> {_show(self.new)}"
        return f"{text} ({self.detail})" if self.detail else text


def _show(v: Any) -> str:
    return "(none)" if v is None else str(v)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = d
    return out


# Fields that identify results. Timestamps, paths of the spec and the project, and the per-file corpus map
# (summarised into the fingerprint's detail) are not drifts by themselves.
_COMPARED_PREFIXES = (
    "git.commit",
    "git.dirty",
    "git.diff_hash",
    "versions.",
    "gpu.name",
    "corpus.fingerprint",
    "corpus.path",
    "corpus.collection",
    "models.",
    "embedders.",
    "platform.machine",
)


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[Drift]:
    """What differs between two manifests that can change results, in a stable order.

    A field missing from one side (a manifest from an older runner) is not a drift; a field that is None on
    one side only (a model that was not cached) is.
    """
    a, b = _flat(old), _flat(new)
    drifts: list[Drift] = []
    for key in sorted(set(a) & set(b)):
        if not key.startswith(_COMPARED_PREFIXES) or a[key] == b[key]:
            continue
        if key == "git.diff_hash" and not (a.get("git.dirty") and b.get("git.dirty")):
            continue  # clean -> dirty is already the git.dirty drift
        detail = ""
        if key == "corpus.fingerprint":
            detail = _corpus_detail(
                old.get("corpus", {}).get("files", {}), new.get("corpus", {}).get("files", {})
            )
        drifts.append(Drift(key, a[key], b[key], detail))
    return drifts


def _corpus_detail(old: dict[str, str], new: dict[str, str]) -> str:
    parts = []
    for label, names in (
        ("changed", sorted(k for k in set(old) & set(new) if old[k] != new[k])),
        ("added", sorted(set(new) - set(old))),
        ("removed", sorted(set(old) - set(new))),
    ):
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            parts.append(f"{label}: {shown}")
    return "; ".join(parts)
