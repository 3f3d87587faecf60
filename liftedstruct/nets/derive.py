"""A run's own copies of the nets and solver: the template's settings with
the run's LMDBs, input size, batch, cap on the tuples, iterations, seed and
device. The run trains on the unique layout (train_lmdb, the MetricBatchData
layer); the seed reaches the batches through the solver's random_seed."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from liftedstruct.constants import DEMO_DATASETS
from liftedstruct.files import atomic_write_text
from liftedstruct.nets.template import (
    NetConfig,
    SolverConfig,
    demo_config,
    demo_solver,
    net_texts,
    paper_config,
)


@dataclass(frozen=True)
class RunNet:
    """One method's nets in a run folder."""

    dataset: str
    method: str
    embedding: int
    data_dir: Path  # the prepared LMDBs: train_lmdb (unique layout) and test_lmdb
    folder: Path  # where the derived files and snapshots go
    seed: int = 0  # the solver's random_seed, and so the batches'
    max_tuples: int | None = None  # cap on an epoch's pairs (or triplets); None: all
    epochs: str = "fixed"
    iterations: int | None = None
    crop: int | None = None  # reduced input for quick checks
    batch: int | None = None
    gpu: bool = False

    def net_config(self) -> NetConfig:
        if self.dataset in DEMO_DATASETS:
            base = demo_config(self.method, self.dataset, self.embedding)
        else:
            base = paper_config(self.dataset, self.method, self.embedding)
        return replace(base, train_source=str(self.data_dir / "train_lmdb"),
                       test_source=str(self.data_dir / "test_lmdb"),
                       crop=self.crop or base.crop, batch=self.batch or base.batch,
                       layout="unique", max_tuples=self.max_tuples, epochs=self.epochs)

    def solver_config(self) -> SolverConfig:
        net, prefix = str(self.folder / "train_val.prototxt"), str(self.folder / "snap")
        base = (demo_solver(net, prefix) if self.dataset in DEMO_DATASETS
                else SolverConfig(net=net, snapshot_prefix=prefix))
        max_iter = self.iterations or base.max_iter
        # Short runs (checks, the demo) log and snapshot proportionally more often.
        return replace(base, max_iter=max_iter,
                       snapshot=min(base.snapshot, max(1, max_iter // 4)),
                       display=min(base.display, max(1, max_iter // 20)),
                       random_seed=self.seed, solver_mode="GPU" if self.gpu else "CPU")

    @property
    def max_iter(self) -> int:
        return self.solver_config().max_iter

    @property
    def final_snapshot(self) -> Path:
        return self.folder / f"snap_iter_{self.max_iter}.caffemodel"

    def paths(self) -> dict[str, Path]:
        return {name: self.folder / f"{name}.prototxt"
                for name in ("train_val", "deploy", "solver")}

    def write(self) -> dict[str, Path]:
        """Write train_val, deploy and solver (only where the text changed)."""
        texts = net_texts(self.net_config(), self.solver_config())
        self.folder.mkdir(parents=True, exist_ok=True)
        paths = self.paths()
        for name, text in texts.items():
            if not paths[name].exists() or paths[name].read_text() != text:
                atomic_write_text(paths[name], text)
        return paths
