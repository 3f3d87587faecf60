"""What a dataset, a training method and an embedding size may be: one
validator for the tools, the pipeline, the net zoo and dataset preparation.
Each check raises the caller's error class (a LiftedError) with a message
that names the command-line option."""

from __future__ import annotations

from collections.abc import Iterable

from liftedstruct.constants import DEMO_DATASETS, EMBEDDINGS, METHODS
from liftedstruct.errors import LiftedError


def check_dataset(dataset: str, known: Iterable[str], error: type[LiftedError]) -> None:
    """--dataset: one of known (the datasets the caller handles)."""
    known = tuple(known)
    if dataset not in known:
        raise error(f"--dataset {dataset}: one of {', '.join(known)}")


def check_method(method: str, error: type[LiftedError]) -> None:
    """--method: a loss this project trains."""
    if method not in METHODS:
        raise error(f"--method {method}: one of {', '.join(METHODS)}")


def check_methods(methods: tuple[str, ...], error: type[LiftedError]) -> None:
    """--methods: at least one, each a loss this project trains."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise error(f"--methods: unknown {', '.join(unknown) or '(none given)'}; "
                    f"choose from {', '.join(METHODS)}")


def check_embedding(size: int, dataset: str, error: type[LiftedError]) -> None:
    """--embedding: the demo net is built for any size of at least 1; the
    paper's nets (GoogLeNet) come in the paper's four sizes."""
    if dataset in DEMO_DATASETS:
        if size < 1:
            raise error(f"--embedding {size}: must be at least 1")
    elif size not in EMBEDDINGS:
        raise error(f"--embedding {size}: the nets for {dataset} have "
                    f"{', '.join(map(str, EMBEDDINGS))}")
