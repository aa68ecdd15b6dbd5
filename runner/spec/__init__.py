"""The spec stage: a YAML file becomes an `Experiment` (the validated spec plus every file it names), and an
experiment expands into `Cell`s.

    exp = load_spec("experiments/quickstart.yaml", ["generation.max_new_tokens=64"])
    cells = expand(exp)

Bad input raises one `SpecError` listing every problem as `file:line:col: field.path: message`.
"""

from runner.errors import SpecError
from runner.spec.corpus import (
    MAX_FILE_BYTES,
    CorpusText,
    Skipped,
    SourceFile,
    corpus_digests,
    corpus_files,
    iter_corpus,
    read_corpus,
    read_source,
)
from runner.spec.experiment import (
    Experiment,
    chunking_identity,
    display_path,
    portable,
    project_root,
)
from runner.spec.languages import AUTO, LANGUAGES, Language, install_hint, missing_modules
from runner.spec.loader import load_spec
from runner.spec.matrix import Cell, counts, expand, matches, matrix_pov_sets, repeat_seed
from runner.spec.model_schema import ManagedServer, Model
from runner.spec.retrieval_schema import (
    DEFAULT_POV_SCORE,
    POV_METHODS,
    Chunking,
    Corpus,
    Embedder,
    PovScore,
    QueryReranker,
)
from runner.spec.schema import (
    AXES,
    Checks,
    Executor,
    Fault,
    Generation,
    Limits,
    Matrix,
    Question,
    Spec,
    Tracking,
)
from runner.spec.snapshot import snapshot_files
from runner.spec.templates import (
    HEADER_RE,
    Section,
    TemplateInfo,
    compile_template,
    context_text,
    parse_header,
    render,
)

__all__ = [
    "AUTO",
    "AXES",
    "DEFAULT_POV_SCORE",
    "HEADER_RE",
    "LANGUAGES",
    "MAX_FILE_BYTES",
    "POV_METHODS",
    "Cell",
    "Checks",
    "Chunking",
    "Corpus",
    "CorpusText",
    "Embedder",
    "Executor",
    "Experiment",
    "Fault",
    "Generation",
    "Language",
    "Limits",
    "ManagedServer",
    "Matrix",
    "Model",
    "PovScore",
    "QueryReranker",
    "Question",
    "Section",
    "Skipped",
    "SourceFile",
    "Spec",
    "SpecError",
    "TemplateInfo",
    "Tracking",
    "chunking_identity",
    "compile_template",
    "context_text",
    "corpus_digests",
    "corpus_files",
    "counts",
    "display_path",
    "expand",
    "install_hint",
    "iter_corpus",
    "load_spec",
    "matches",
    "matrix_pov_sets",
    "missing_modules",
    "parse_header",
    "portable",
    "project_root",
    "read_corpus",
    "read_source",
    "render",
    "repeat_seed",
    "snapshot_files",
]
