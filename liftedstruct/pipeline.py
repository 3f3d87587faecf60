"""prepare -> train -> extract -> score -> report, resumable, for one dataset.

A run trains every method at one or more embedding sizes from one or more
seeds (a sweep: the paper's Figs. 6-8 and 12). The training set is prepared
once, each image once (the unique layout, docs/BATCHES.md); the
MetricBatchData layer forms the batches from it and from the solver's
random seed, so every method at every size of a seed trains on the same
batches (pairs, or triplets for triplet, capped at --max-pairs) with the
same solver and iterations. The untrained baseline (raw pixels for the
demos, ImageNet GoogLeNet's pool5 otherwise) does not depend on either and
is extracted and scored once.

Everything is checked before anything is written: a run that cannot start
leaves no trace, and a run folder only ever resumes the run it was made for
(same settings, same dataset, same weights file content). Every stage
resumes exactly: batch k, its crops and mirrors and the solver's other
random draws depend on the seed and k alone (docs/BATCHES.md), and a
solverstate records the training LMDB's fingerprint, so a training resumed
from it is the run it resumes; each resume is still recorded in state.json
and, with the method's scores, in results.json and the report.

Run folder of one size and one seed: data/ (LMDBs), train/<method>/ (nets,
solver, snapshots), logs/, features/<name>.npz, scores/<name>.json,
results.json, report/. A sweep keeps each size and seed apart as
e<size>_s<seed>/ below train/, features/ and scores/ (results.json keys such
as "e16_s0/lifted"), all of them reading the one data/; the baseline stays
at features/<baseline>.npz."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from liftedstruct import metrics
from liftedstruct.choices import check_dataset, check_embedding, check_methods
from liftedstruct.constants import (
    BATCH,
    DEMO_DATASETS,
    DEMO_EMBEDDING,
    DEMO_EMBEDDINGS,
    EMBEDDINGS,
    HEADLINE_EMBEDDING,
    METHODS,
    RECALL_K,
)
from liftedstruct.datasets import SOURCES
from liftedstruct.datasets.glyphs import compare_fonts
from liftedstruct.datasets.prepare import PrepareOptions, prepare
from liftedstruct.errors import PipelineError
from liftedstruct.featurefile import load_features, save_features
from liftedstruct.features import LmdbSource, Transform, extract_checked, open_net
from liftedstruct.files import (
    atomic_write_text,
    check_writable,
    file_digest,
    locked_folder,
    read_json,
)
from liftedstruct.nets.derive import RunNet
from liftedstruct.nets.template import deploy
from liftedstruct.paths import check_gpu, import_caffe
from liftedstruct.run_report import write_report
from liftedstruct.sweep_report import write_sweep_report
from liftedstruct.training import caffe_train, snapshot_problem
from liftedstruct.weights import DEFAULT_PATH as GOOGLENET_WEIGHTS
from liftedstruct.weights import check_fit, net_parameters

# The stages in order, each a Pipeline method that returns whether it did
# work (a stage that did work makes every later one run again). A stage
# recorded as done is skipped while its output is all there, except
# training, which is entered on every run: it keeps each net whose final
# snapshot is complete and returns whether it trained any.
STAGES = {"prepare": "prepare", "train": "train_all", "extract": "extract_all",
          "score": "score_all", "report": "report"}
SELF_CHECKING = ("train",)
# The demo trains on at most this many pairs (all pairs would be ~10^5-10^6)
# per epoch, and triplet on as many triplets.
DEMO_MAX_PAIRS = 30000
TRUNK_TOP = "pool5/7x7_s1"


def sweep_sizes(dataset: str) -> tuple[int, ...]:
    """The embedding sizes of a dataset's sweep (--embedding all): the paper's
    for its datasets, the demo net's otherwise."""
    return DEMO_EMBEDDINGS if dataset in DEMO_DATASETS else EMBEDDINGS


@dataclass(frozen=True)
class Cell:
    """One embedding size and seed of a run. tag: its folder below train/,
    features/ and scores/ ('' in a run of one size and one seed)."""

    embedding: int
    seed: int
    tag: str = ""

    def name(self, method: str) -> str:
        """The method's key in results.json and state.json at this cell."""
        return f"{self.tag}/{method}" if self.tag else method


@dataclass
class RunConfig:
    dataset: str = "glyphs"
    out: Path | None = None  # default runs/<dataset> (runs/<dataset>_sweep for a sweep)
    root: Path | None = None
    embeddings: tuple[int, ...] = ()  # () = the dataset's headline size
    methods: tuple[str, ...] = METHODS
    weights: Path | None = None
    gpu: int | None = None
    iterations: int | None = None
    seeds: tuple[int, ...] = (0,)
    max_pairs: int | None = None
    cluster: str = metrics.KMEANS
    kmeans: str = metrics.KMEANS_BACKEND
    # Reduced input for quick checks on fixtures (the committed nets use 256/227).
    image_size: int | None = None
    crop: int | None = None
    batch: int | None = None
    count_check: bool = True

    def __post_init__(self):
        check_dataset(self.dataset, SOURCES, PipelineError)
        check_methods(self.methods, PipelineError)
        demo = self.dataset in DEMO_DATASETS
        self.embeddings = tuple(sorted(self.embeddings)) or (
            DEMO_EMBEDDING if demo else HEADLINE_EMBEDDING[self.dataset],)
        self.seeds = tuple(sorted(self.seeds))
        if not self.seeds:
            raise PipelineError("--seeds: none given")
        for option, values in (("--embedding", self.embeddings), ("--seeds", self.seeds)):
            twice = sorted({v for v in values if values.count(v) > 1})
            if twice:
                raise PipelineError(f"{option}: {' '.join(map(str, twice))} given twice")
        for size in self.embeddings:
            check_embedding(size, self.dataset, PipelineError)
        for seed in self.seeds:
            if seed < 0:
                raise PipelineError(f"--seeds {seed}: a seed is at least 0")
        self.out = Path(self.out or Path("runs") / (
            f"{self.dataset}_sweep" if self.sweep else self.dataset))
        for name in ("iterations", "max_pairs", "image_size", "crop", "batch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise PipelineError(f"--{name.replace('_', '-')} {value}: must be at "
                                    "least 1")
        if self.batch is not None and self.batch % 6:
            raise PipelineError(f"--batch {self.batch}: must divide by 2 (pairs) and 3 "
                                "(triplets)")
        if self.cluster not in metrics.CLUSTERINGS:
            raise PipelineError(f"--cluster {self.cluster}: "
                                f"{' or '.join(metrics.CLUSTERINGS)}")
        if self.kmeans not in metrics.KMEANS_BACKENDS:
            raise PipelineError(f"--kmeans {self.kmeans}: one of "
                                f"{', '.join(metrics.KMEANS_BACKENDS)}")
        if self.max_pairs is None and demo:
            self.max_pairs = DEMO_MAX_PAIRS

    @property
    def demo(self) -> bool:
        return self.dataset in DEMO_DATASETS

    @property
    def sweep(self) -> bool:
        """More than one embedding size or seed."""
        return len(self.embeddings) > 1 or len(self.seeds) > 1

    def cells(self) -> list[Cell]:
        """Every size of every seed, seed by seed."""
        return [Cell(size, seed, f"e{size}_s{seed}" if self.sweep else "")
                for seed in self.seeds for size in self.embeddings]

    def settings(self) -> dict:
        """The run's identity (not where it is written or on which GPU): every
        value as text, the sizes and seeds space-separated under "embedding"
        and "seed" ("64" and "0" for the main job)."""
        settings = {k: str(v) for k, v in asdict(self).items()
                    if k not in ("out", "gpu", "embeddings", "seeds")}
        return {**settings, "embedding": " ".join(map(str, self.embeddings)),
                "seed": " ".join(map(str, self.seeds))}


class Pipeline:
    def __init__(self, config: RunConfig):
        self.config = config
        self.out = Path(config.out).resolve()
        self.state_path = self.out / "state.json"
        self.source = SOURCES[config.dataset]
        self.cells = config.cells()
        self._check_inputs()
        self.caffe = import_caffe()
        check_gpu(config.gpu)
        self.state: dict = {}
        self.results: dict = {}  # results.json once scored
        self._params: dict[int, dict[str, list[int]]] = {}
        self.weights = self._weights()
        self.key = self._key()

    # ------------------------------------------------------------ checks
    def _check_inputs(self) -> None:
        config = self.config
        if self.source.needs_root and (config.root is None or not config.root.exists()):
            raise PipelineError(
                f"{config.dataset} needs the downloaded data: {self.source.download}; "
                f"pass it with --root (given: {config.root})")
        if config.root is not None and not config.root.exists():
            raise PipelineError(f"--root {config.root}: no such file or folder")
        if config.weights is not None and not config.weights.is_file():
            raise PipelineError(f"--weights {config.weights}: no such file")
        check_writable(self.out, "--out")

    def _weights(self) -> Path | None:
        """The weights to start from (None: from scratch), checked against the
        net: every learnable layer but the new fc_embedding must be in them."""
        if self.config.demo and self.config.weights is None:
            return None
        weights = self.config.weights or GOOGLENET_WEIGHTS
        if not weights.is_file():
            raise PipelineError(
                f"{weights}: the ImageNet GoogLeNet weights are needed to fine-tune; run "
                "tools/fetch_weights.py (or --from a copy you have), or pass --weights")
        needed = {name: sizes for name, sizes in self.params(self.cells[0]).items()
                  if name != "fc_embedding"}
        check_fit(weights, needed, "fine-tuning")
        return weights

    def _net_parameters(self, cell: Cell) -> dict[str, list[int]]:
        """Learnable layers of the run's deploy net at the cell's size (batch 1)."""
        config = self.run_net(self.config.methods[0], cell).net_config()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "deploy.prototxt"
            path.write_text(deploy(config, batch=1))
            self.caffe.set_mode_cpu()
            net = self.caffe.Net(str(path), self.caffe.TEST)
            return net_parameters(net)

    def _key(self) -> dict:
        return {**self.config.settings(),
                "weights_sha256": file_digest(self.weights) if self.weights else None}

    # ------------------------------------------------------------ state
    def _load_state(self) -> dict:
        if self.state_path.exists():
            try:
                state = json.loads(self.state_path.read_text())
            except ValueError as error:
                raise PipelineError(f"{self.state_path}: unreadable ({error}); give a new "
                                    "--out") from error
            if not isinstance(state, dict) or state.get("key") != self.key:
                theirs = (state.get("key") if isinstance(state, dict) else None) or {}
                differ = ", ".join(f"{name} {theirs.get(name)} there, {value} now"
                                   for name, value in self.key.items()
                                   if theirs.get(name) != value)
                raise PipelineError(
                    f"{self.out} holds a run with other settings or weights ({differ}); "
                    "give a new --out (an earlier run is never overwritten)")
            return state
        if self.out.exists() and any(p.name != ".lock" for p in self.out.iterdir()):
            raise PipelineError(f"{self.out} exists and is not a run of this tool; "
                                "give a new --out")
        return {"key": self.key, "done": [], "resumes": {}}

    def _finished(self, stage: str) -> dict | None:
        """The output of a stage recorded as done, if it is all there (the
        scores for 'score', else {}); None when some of it is missing."""
        if stage == "prepare":
            data = self.data_dir()
            return {} if all((data / name).exists() for name in (
                "manifest.json", "train_lmdb", "train_index.tsv", "test_lmdb")) else None
        if stage == "extract":
            return {} if all(self.features_path(n).is_file() for n in self.names()) else None
        if stage == "score":
            try:
                results = json.loads((self.out / "results.json").read_text())
            except (OSError, ValueError):
                return None
            return results if isinstance(results, dict) and set(results) == set(
                self.names()) else None
        return {} if (self.out / "report" / "report.md").is_file() else None

    def _save_state(self, state: dict) -> None:
        atomic_write_text(self.state_path, json.dumps(state, indent=2) + "\n")

    def run(self) -> dict:
        with locked_folder(self.out, "tools/reproduce.py"):  # made, and removed if refused
            state = self.state = self._load_state()
            state.setdefault("resumes", {})
            (self.out / "logs").mkdir(exist_ok=True)
            self._save_state(state)
            self.results = {}
            redo = False  # an earlier stage did work: every later one runs again
            for stage, method in STAGES.items():
                label = f"[{stage}]"
                if stage in state["done"] and stage not in SELF_CHECKING and not redo:
                    found = self._finished(stage)
                    if found is not None:
                        print(f"{label} done earlier, skipped", flush=True)
                        if stage == "score":
                            self.results = found
                        continue
                    print(f"{label} done earlier, but its output is missing", flush=True)
                print(f"{label} ...", flush=True)
                started = time.monotonic()
                redo = getattr(self, method)() or redo
                print(f"{label} done in {time.monotonic() - started:.0f} s", flush=True)
                if stage not in state["done"]:
                    state["done"].append(stage)
                    self._save_state(state)
        return self.results

    # ------------------------------------------------------------ prepare
    def data_dir(self) -> Path:
        """The prepared LMDBs: train_lmdb (each training image once, for every
        seed and method) and test_lmdb, with their index files."""
        return self.out / "data"

    def prepare(self) -> bool:
        """The unique layout, checked for what the MetricBatchData layer would
        refuse (a class of one image, a single class, a method whose batch
        the capped tuples cannot fill)."""
        config = self.config
        options = PrepareOptions(
            size=config.image_size or self.source.image_size,
            encoding=self.source.encoding, seed=config.seeds[0], layout="unique",
            methods=config.methods, max_pairs=config.max_pairs,
            count_check=config.count_check,
            batch_size={m: config.batch or BATCH[m] for m in config.methods})
        manifest = prepare(self.source, config.root, self.data_dir(), options)
        atomic_write_text(self.out / "logs" / "prepare.json", json.dumps(manifest, indent=2))
        note = self.data_note(manifest)
        if note:
            print(f"  note: {note}", flush=True)
        return True

    def data_note(self, manifest: dict) -> str:
        """For glyphs: whether this machine's fonts are those of the README's
        numbers (other fonts give other images, so other numbers)."""
        if "fonts_sha256" not in manifest:
            return ""
        return compare_fonts(manifest["fonts"], manifest["fonts_sha256"])

    # ------------------------------------------------------------ train
    def run_net(self, method: str, cell: Cell) -> RunNet:
        config = self.config
        return RunNet(dataset=config.dataset, method=method, embedding=cell.embedding,
                      data_dir=self.data_dir(),
                      folder=self.out / "train" / cell.tag / method,
                      seed=cell.seed, max_tuples=config.max_pairs,
                      iterations=config.iterations, crop=config.crop,
                      batch=config.batch, gpu=config.gpu is not None)

    def params(self, cell: Cell) -> dict[str, list[int]]:
        """The nets' learnable layers and blob sizes at the cell's size (the
        same for every method), to check snapshots with."""
        if cell.embedding not in self._params:
            self._params[cell.embedding] = self._net_parameters(cell)
        return self._params[cell.embedding]

    def check_training_data(self) -> None:
        """train_lmdb must be what train_index.tsv lists: as many records, the
        same labels in key order (the batches are formed from the labels)."""
        from liftedstruct.lmdbio import read_labels

        data = self.data_dir()
        lmdb_path, index_path = data / "train_lmdb", data / "train_index.tsv"
        try:
            rows = index_path.read_text().splitlines()[1:]
            listed = [int(row.split("\t")[1]) for row in rows]
        except (OSError, IndexError, ValueError) as error:
            raise PipelineError(f"{index_path}: unreadable ({error}); it and {lmdb_path} "
                                "are written by the prepare stage: delete "
                                f"{data / 'manifest.json'} to prepare again") from error
        labels = read_labels(lmdb_path)
        if len(labels) != len(listed):
            raise PipelineError(f"{lmdb_path} holds {len(labels)} records but {index_path} "
                                f"lists {len(listed)}: they are not of one prepare; delete "
                                f"{data / 'manifest.json'} to prepare again")
        differ = next((i for i, (a, b) in enumerate(zip(labels, listed, strict=True))
                       if a != b), None)
        if differ is not None:
            raise PipelineError(f"{lmdb_path} record {differ:09d} has label {labels[differ]} "
                                f"but {index_path} lists {listed[differ]}: they are not of "
                                f"one prepare; delete {data / 'manifest.json'} to prepare "
                                "again")

    def train_all(self) -> bool:
        """Every method at every cell, seed by seed; whether any trained."""
        self.check_training_data()
        trained = False
        for number, cell in enumerate(self.cells, 1):
            if cell.tag:
                print(f"  {cell.tag} ({number}/{len(self.cells)}): embedding "
                      f"{cell.embedding}, seed {cell.seed}", flush=True)
            for method in self.config.methods:
                trained = self.train(method, cell) or trained
        return trained

    def train(self, method: str, cell: Cell) -> bool:
        """Train one method at one cell unless its final snapshot is there
        and complete; whether it trained."""
        net = self.run_net(method, cell)
        name = cell.name(method)
        paths = net.write()
        final = net.final_snapshot
        params = self.params(cell)
        if final.exists() and snapshot_problem(final, params) is None:
            print(f"  {name}: trained earlier ({final.name})", flush=True)
            return False

        def record_resume(iteration: int) -> None:
            resumes = self.state["resumes"].setdefault(name, [])
            entry = {"stage": "train", "iteration": iteration}
            if entry not in resumes:
                resumes.append(entry)
                self._save_state(self.state)

        caffe_train(paths["solver"], final, net.max_iter,
                    self.out / "logs" / f"train_{name.replace('/', '_')}.log", name,
                    params=params,
                    snapshot_every=net.solver_config().snapshot, weights=self.weights,
                    gpu=self.config.gpu, on_resume=record_resume,
                    train_lmdb=self.data_dir() / "train_lmdb")
        return True

    # ------------------------------------------------------------ extract
    def features_path(self, name: str) -> Path:
        return self.out / "features" / f"{name}.npz"

    def transform(self, method: str, cell: Cell) -> Transform:
        """Test-time preprocessing: the TEST data layer's of the method's net."""
        config = self.run_net(method, cell).net_config()
        return Transform(crop=config.crop, mean=tuple(float(m) for m in config.mean),
                         scale=1.0 if config.scale is None else config.scale)

    def _extract(self, method: str, cell: Cell, weights: Path, blob: str, out: Path) -> None:
        """Features of one blob with the given weights, which must hold every
        layer that computes the blob."""
        net = self.run_net(method, cell)
        deploy_path = net.paths()["deploy"]
        if not deploy_path.exists():
            net.write()
        model = open_net(self.caffe, deploy_path, weights, [blob], self.config.gpu)
        source = LmdbSource(self.data_dir() / "test_lmdb")
        extract_checked(model, deploy_path, weights, source, [blob],
                        self.transform(method, cell), out,
                        allow_small=self.config.crop is not None)

    def extract_all(self) -> bool:
        """Each method's embedding at each cell from its final snapshot (kept
        when it was extracted earlier from the same snapshot, net and images),
        and the baseline's features, once."""
        (self.out / "features").mkdir(exist_ok=True)
        for cell in self.cells:
            for method in self.config.methods:
                self._extract(method, cell, self.run_net(method, cell).final_snapshot,
                              "fc_embedding", self.features_path(cell.name(method)))
        baseline = self.baseline_name()
        if baseline == "raw":
            if not self.features_path(baseline).exists():
                self._raw_features()
        else:
            self._extract(self.config.methods[0], self.cells[0], self.weights, TRUNK_TOP,
                          self.features_path(baseline))
        return True

    def baseline_name(self) -> str:
        """Untrained features: the preprocessed pixels for the from-scratch
        demo, ImageNet GoogLeNet's pool5 (the paper's baseline) otherwise."""
        return "raw" if self.config.demo else "pool5"

    def _raw_features(self) -> None:
        from liftedstruct.features import preprocess

        cell = self.cells[0]
        source = LmdbSource(self.data_dir() / "test_lmdb")
        transform = self.transform(self.config.methods[0], cell)
        ids, labels, rows = [], [], []
        for key, label, image in source.read(0):
            ids.append(key)
            labels.append(label)
            rows.append(preprocess([image], transform).reshape(-1))
        save_features(self.features_path("raw"), features=np.array(rows, dtype=np.float32),
                      labels=np.array(labels), ids=np.array(ids))

    # ------------------------------------------------------------ score, report
    def entries(self) -> dict[str, tuple[str, int | None, int]]:
        """{name: (method, embedding size, seed)} of everything scored: each
        method at each cell, then the baseline (no size; scored once, its
        k-means seeded with the first seed)."""
        entries: dict[str, tuple[str, int | None, int]] = {
            cell.name(method): (method, cell.embedding, cell.seed)
            for cell in self.cells for method in self.config.methods}
        entries[self.baseline_name()] = (self.baseline_name(), None, self.config.seeds[0])
        return entries

    def names(self) -> list[str]:
        return list(self.entries())

    def score_all(self) -> bool:
        (self.out / "scores").mkdir(exist_ok=True)
        results = {}
        for name, (method, size, seed) in tqdm(self.entries().items(), desc="score",
                                               unit="embedding"):
            path = self.features_path(name)
            features, labels = load_features(path)
            ks = [k for k in RECALL_K[self.config.dataset] if k <= len(labels) - 1]
            scores = metrics.score(features, labels, ks, cluster=self.config.cluster,
                                   seed=seed, source=str(path),
                                   kmeans=self.config.kmeans).to_json()
            scores.update(method=method, embedding=size, seed=seed,
                          resumes=self.state.get("resumes", {}).get(name, []))
            target = self.out / "scores" / f"{name}.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(target, json.dumps(scores, indent=2) + "\n")
            results[name] = scores
        atomic_write_text(self.out / "results.json", json.dumps(results, indent=2) + "\n")
        self.results = results
        return True

    def report(self) -> bool:
        results = self.results
        config, cell = self.config, self.cells[0]
        manifest = read_json(self.data_dir() / "manifest.json")
        note = self.data_note(manifest)
        if config.sweep:
            written = write_sweep_report(results, self.baseline_name(), config.dataset,
                                         self.out / "report", note=note)
        else:
            features = {name: self.features_path(name) for name in self.names()}
            written = write_report(results, config.dataset, cell.embedding,
                                   self.out / "report", features,
                                   self.data_dir() / "test_lmdb",
                                   seed=cell.seed, note=note)
        print((self.out / "report" / "report.md").read_text())
        for path in written.values():
            print(f"  {path}")
        return True

