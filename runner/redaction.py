"""Keep secrets out of everything the runner records: MLflow params, tags, artifacts, and log output.

A secret is the value of any environment variable whose name reads like a credential (`CO_API_KEY`,
`HF_TOKEN`, `MY_SERVICE_TOKEN`, `AWS_SECRET_ACCESS_KEY`, `MLFLOW_TRACKING_PASSWORD`, ...), the password
part of a URL (`https://user:pw@host`), and strings shaped like well-known token formats. Redaction replaces
each with a marker that names the variable, so a reader can tell what was removed without learning it.

Values are read from the environment at each call, not cached: a test (or a user) may set a key after
import, and a secret that slips past once is recorded for good.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

# Name segments (split on `_`, `-`, `.`) that mark a credential. Whole segments, so TOKENIZERS_PARALLELISM
# and KEYBOARD are not secrets, while CO_API_KEY and GITHUB_TOKEN are.
_SECRET_SEGMENTS = frozenset(
    {
        "KEY",
        "APIKEY",
        "TOKEN",
        "SECRET",
        "SECRETS",
        "PASSWORD",
        "PASSWD",
        "PASS",
        "PWD",
        "CREDENTIAL",
        "CREDENTIALS",
        "AUTH",
        "AUTHORIZATION",
        "BEARER",
        "PAT",
        "COOKIE",
    }
)
_NOT_SECRET_NAMES = frozenset({"PWD", "OLDPWD", "SSH_AUTH_SOCK", "GPG_AGENT_INFO", "KEYTIMEOUT"})
_MIN_SECRET_LEN = 6
"""Shorter values (`1`, `true`) would redact ordinary words everywhere; no real key is that short."""

# The scheme's length is bounded so that a long run of letters costs a bounded scan per position (linear,
# not quadratic, in the text's length).
_URL_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]{0,31}://)(?P<user>[^/@\s:]*):(?P<pw>[^/@\s]+)@"
)
# A query parameter: `?api_key=...`, `&token=...`; matches start only at `?` or `&` with a bounded name.
_URL_PARAM = re.compile(r"(?P<lead>[?&])(?P<name>[A-Za-z0-9_.\-]{1,100})=(?P<value>[^&#\s'\"<>\[\]()]+)")
_TOKEN_SHAPES = re.compile(
    "|".join(
        (
            r"\bhf_[A-Za-z0-9]{30,}\b",  # Hugging Face
            r"\bsk-[A-Za-z0-9_\-]{20,}\b",  # OpenAI-style
            r"\bgh[pousr]_[A-Za-z0-9]{30,}\b",  # GitHub
            r"\bAKIA[0-9A-Z]{16}\b",  # AWS access key id
            r"(?i:\bbearer\s+[A-Za-z0-9._~+/\-]{16,}=*)",
        )
    )
)


def is_secret_name(name: str) -> bool:
    """True for names that read like a credential: CO_API_KEY, myServiceToken, db.password."""
    upper = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).upper()
    if upper in _NOT_SECRET_NAMES:
        return False
    segments = [s for s in re.split(r"[_\-.\s]+", upper) if s]
    return any(
        s in _SECRET_SEGMENTS or s.endswith(("APIKEY", "TOKEN", "SECRET", "PASSWORD")) for s in segments
    )


def secret_values(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Secret value -> the name of the variable that holds it, longest values first."""
    env = os.environ if environ is None else environ
    found = {v: k for k, v in env.items() if is_secret_name(k) and len(v.strip()) >= _MIN_SECRET_LEN}
    return dict(sorted(found.items(), key=lambda kv: -len(kv[0])))


_TOKEN_TRIGGERS = ("hf_", "sk-", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "AKIA")


def redact(text: str, secrets: Mapping[str, str] | None = None) -> str:
    """`text` with every secret replaced by `[redacted NAME]`.

    A secret is also found in its JSON-escaped form, so a JSON document can be redacted as text.
    """
    if not text:
        return text
    for value, name in (secret_values() if secrets is None else secrets).items():
        for form in {value, json.dumps(value, ensure_ascii=False)[1:-1]}:
            if form in text:
                text = text.replace(form, f"[redacted {name}]")
    if "://" in text:
        text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:[redacted]@", text)
        text = _URL_PARAM.sub(_redact_param, text)
    # The token regex is slow on long texts (prompts, contexts); most hold none of its prefixes.
    if any(t in text for t in _TOKEN_TRIGGERS) or "bearer" in text.lower():
        text = _TOKEN_SHAPES.sub("[redacted token]", text)
    return text


def _redact_param(m: re.Match[str]) -> str:
    return f"{m['lead']}{m['name']}=[redacted]" if is_secret_name(m["name"]) else m[0]


def redact_setting(setting: str, secrets: Mapping[str, str] | None = None) -> str:
    """A `KEY=VALUE` command-line setting (`--set`) as a message may quote it: the whole value hidden when
    KEY reads like a credential (`tracking.api_key=...`), whatever the value looks like; other secrets
    redacted as in any text."""
    key, sep, value = setting.partition("=")
    if sep and value and is_secret_name(key):
        return f"{redact(key, secrets)}=[redacted]"
    return redact(setting, secrets)


def setting_secrets(settings: Iterable[str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`secret_values()` plus the values that `KEY=VALUE` settings give to credential-named keys: a message
    that quotes such a value in any form redacts it too."""
    given = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if sep:
            given[key.strip()] = value.strip()
    found = {**secret_values(environ), **secret_values(given)}
    return dict(sorted(found.items(), key=lambda kv: -len(kv[0])))


MARKER = re.compile(r"\[redacted(?: (?P<name>[^\]\s]{1,200}))?\]")
"""What redaction leaves in place of a secret: `[redacted NAME]` for an environment variable's value (or a
value under a credential-named key), `[redacted]` for a URL's password or query parameter, `[redacted token]`
for a token shape."""
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def restore(text: str, environ: Mapping[str, str] | None = None) -> tuple[str, set[str]]:
    """`text` with each `[redacted NAME]` put back to the value of the credential variable NAME, where the
    environment has it; and the names put back. redact()'s inverse for a value written as itself (a value
    that was written escaped, inside a JSON or double-quoted YAML string, holding `"` or `\\`, comes back
    unescaped)."""
    env = os.environ if environ is None else environ
    done: set[str] = set()

    def put_back(m: re.Match[str]) -> str:
        name = m["name"]
        value = env.get(name) if name and _VARIABLE.match(name) and is_secret_name(name) else None
        if not value or len(value.strip()) < _MIN_SECRET_LEN:
            return m[0]
        done.add(name)
        return value

    return MARKER.sub(put_back, text), done


def redact_obj(obj: Any, secrets: Mapping[str, str] | None = None) -> Any:
    """A copy of JSON-like data with secret strings redacted and values under secret-named keys removed."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(obj, str):
        return redact(obj, secrets)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if isinstance(k, str) and is_secret_name(k) and isinstance(v, str) and v:
                out[k] = f"[redacted {k}]"
            else:
                out[redact(k, secrets) if isinstance(k, str) else k] = redact_obj(v, secrets)
        return out
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v, secrets) for v in obj]
    return obj


class RedactingFilter(logging.Filter):
    """Rewrites each log record's final message with secrets redacted (args are folded in first)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is logging's problem; never lose the line over it
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_text is None and record.exc_info[0] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


_FILTER = RedactingFilter()


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Attach the redacting filter to a logger's handlers and the logger itself (idempotent).

    Filters on a logger only see records logged to that logger, not those propagated from children, so the
    filter goes on the handlers too; handlers added later are covered by calling this again.
    """
    target = logger or logging.getLogger()
    for item in [target, *target.handlers]:
        if _FILTER not in item.filters:
            item.addFilter(_FILTER)
