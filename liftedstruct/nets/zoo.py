"""Which nets and solvers are committed under prototxt/ (what Caffe's model
zoo would hold), and the files for any other (dataset, method, size)."""

from __future__ import annotations

from pathlib import Path

from liftedstruct.choices import check_dataset, check_embedding, check_method
from liftedstruct.constants import EMBEDDINGS, HEADLINE_EMBEDDING, METHODS, PAPER_DATASETS
from liftedstruct.errors import NetError
from liftedstruct.files import atomic_write_text
from liftedstruct.nets.template import (
    NetConfig,
    SolverConfig,
    demo_config,
    demo_solver,
    deploy,
    net_texts,
    paper_config,
    solver,
    train_val,
)


def snapshot_prefix(config: NetConfig) -> str:
    return f"snapshots/{config.dataset}/{config.method}_{config.embedding}/{config.name}"


def check_choice(dataset: str, method: str, embedding: int) -> None:
    check_dataset(dataset, PAPER_DATASETS, NetError)
    check_method(method, NetError)
    check_embedding(embedding, dataset, NetError)


def net_files(dataset: str, method: str, embedding: int, folder: str,
              layout: str = "unique") -> dict[str, str]:
    """train_val, solver and deploy of one of the paper's configurations on
    the layout's training LMDB; the solver names the net as
    folder/train_val.prototxt."""
    check_choice(dataset, method, embedding)
    config = paper_config(dataset, method, embedding, layout)
    texts = net_texts(config, SolverConfig(net=f"{folder}/train_val.prototxt",
                                           snapshot_prefix=snapshot_prefix(config)))
    return {f"{name}.prototxt": text for name, text in texts.items()}


def committed_files() -> dict[str, str]:
    """Every committed prototxt, relative to prototxt/: the headline net and
    solver per dataset, one deploy per embedding size, the demo's nets."""
    files = {}
    for dataset in PAPER_DATASETS:
        config = paper_config(dataset, "lifted", HEADLINE_EMBEDDING[dataset])
        files[f"{dataset}/train_val.prototxt"] = train_val(config)
        files[f"solver_{dataset}.prototxt"] = solver(SolverConfig(
            net=f"prototxt/{dataset}/train_val.prototxt",
            snapshot_prefix=snapshot_prefix(config)))
    for embedding in EMBEDDINGS:
        # The deploy nets of all datasets and methods differ only in their name.
        files[f"deploy/embedding_{embedding}.prototxt"] = deploy(
            paper_config("cub", "lifted", embedding),
            name=f"googlenet_embedding_{embedding}_deploy")
    for method in METHODS:
        config = demo_config(method)
        files[f"demo/{method}/train_val.prototxt"] = train_val(config)
        files[f"demo/{method}/solver.prototxt"] = solver(demo_solver(
            f"prototxt/demo/{method}/train_val.prototxt", snapshot_prefix(config)))
    files["demo/deploy.prototxt"] = deploy(demo_config("lifted"), name="demo_deploy")
    return files


def check_committed(folder: Path) -> list[str]:
    """Problems with the committed files in folder: differing, missing, or
    a prototxt the template does not make."""
    files = committed_files()
    problems = [f"differs or missing: {folder / name}" for name, text in files.items()
                if not (folder / name).is_file() or (folder / name).read_text() != text]
    existing = {p.relative_to(folder).as_posix() for p in folder.rglob("*.prototxt")}
    problems += [f"not generated: {folder / name}" for name in sorted(existing - set(files))]
    return problems


def write_files(folder: Path, files: dict[str, str]) -> list[Path]:
    """Write files under folder, touching only those whose text changed."""
    written = []
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            atomic_write_text(path, text)
        written.append(path)
    return written
