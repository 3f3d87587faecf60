"""prepare -> train -> extract -> score -> report, resumable, for one dataset.

Everything is checked before anything is written: a run that cannot start
leaves no trace, and a run folder only ever resumes the run it was made for
(same settings, same dataset, same weights file content). Every stage but
training resumes exactly; a training resumed from a solverstate cannot
(Caffe's solverstate keeps neither the data reader's position nor the
random state), so each such resume is recorded in state.json and, with the
method's scores, in results.json and the report."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from liftedstruct import metrics
from liftedstruct.constants import (
    BATCH,
    DEMO_DATASETS,
    DEMO_EMBEDDING,
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
from liftedstruct.features import LmdbSource, Transform, check_crop, extract, run_key
from liftedstruct.files import atomic_write_text, check_writable, file_digest, locked_folder
from liftedstruct.nets.derive import RunNet
from liftedstruct.nets.template import deploy
from liftedstruct.paths import check_gpu, import_caffe
from liftedstruct.report import write_report
from liftedstruct.training import caffe_train, snapshot_problem
from liftedstruct.weights import DEFAULT_PATH as GOOGLENET_WEIGHTS
from liftedstruct.weights import check_fit, net_parameters, upstream_layers

STAGES = ("prepare", "train", "extract", "score", "report")
# The demo trains on at most this many pairs (all pairs would be ~10^5-10^6).
DEMO_MAX_PAIRS = 30000
TRUNK_TOP = "pool5/7x7_s1"


@dataclass
class RunConfig:
    dataset: str = "glyphs"
    out: Path | None = None  # default runs/<dataset>
    root: Path | None = None
    embedding: int | None = None
    methods: tuple[str, ...] = METHODS
    weights: Path | None = None
    gpu: int | None = None
    iterations: int | None = None
    seed: int = 0
    max_pairs: int | None = None
    cluster: str = "kmeans"
    kmeans: str = "faiss"
    # Reduced input for quick checks on fixtures (the committed nets use 256/227).
    image_size: int | None = None
    crop: int | None = None
    batch: int | None = None
    count_check: bool = True

    def __post_init__(self):
        if self.dataset not in SOURCES:
            raise PipelineError(f"--dataset {self.dataset}: one of {', '.join(SOURCES)}")
        self.out = Path(self.out or Path("runs") / self.dataset)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise PipelineError(f"--methods: unknown {', '.join(unknown) or '(none given)'}; "
                                f"choose from {', '.join(METHODS)}")
        demo = self.dataset in DEMO_DATASETS
        if self.embedding is None:
            self.embedding = DEMO_EMBEDDING if demo else HEADLINE_EMBEDDING[self.dataset]
        sizes = (DEMO_EMBEDDING,) if demo else EMBEDDINGS
        if self.embedding not in sizes:
            raise PipelineError(f"--embedding {self.embedding}: the nets for "
                                f"{self.dataset} have {', '.join(map(str, sizes))}")
        for name in ("iterations", "max_pairs", "image_size", "crop", "batch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise PipelineError(f"--{name.replace('_', '-')} {value}: must be at "
                                    "least 1")
        if self.batch is not None and self.batch % 6:
            raise PipelineError(f"--batch {self.batch}: must divide by 2 (pairs) and 3 "
                                "(triplets)")
        if self.cluster not in ("kmeans", "ap"):
            raise PipelineError(f"--cluster {self.cluster}: kmeans or ap")
        if self.kmeans not in metrics.KMEANS_BACKENDS:
            raise PipelineError(f"--kmeans {self.kmeans}: one of "
                                f"{', '.join(metrics.KMEANS_BACKENDS)}")
        if self.max_pairs is None and demo:
            self.max_pairs = DEMO_MAX_PAIRS

    @property
    def demo(self) -> bool:
        return self.dataset in DEMO_DATASETS

    def settings(self) -> dict:
        """The run's identity (not where it is written or on which GPU)."""
        return {k: str(v) for k, v in asdict(self).items() if k not in ("out", "gpu")}


class Pipeline:
    def __init__(self, config: RunConfig):
        self.config = config
        self.out = Path(config.out).resolve()
        self.state_path = self.out / "state.json"
        self.source = SOURCES[config.dataset]
        self._check_inputs()
        self.caffe = import_caffe()
        check_gpu(config.gpu)
        self.state: dict = {}
        self._params: dict[str, list[int]] | None = None
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
        needed = {name: sizes for name, sizes in self.params().items()
                  if name != "fc_embedding"}
        check_fit(weights, needed, "fine-tuning")
        return weights

    def _net_parameters(self, blobs: tuple[str, ...] | None = None) -> dict[str, list[int]]:
        """Learnable layers of the run's deploy net (batch 1), optionally only
        those that compute the given blobs."""
        config = self.run_net(self.config.methods[0]).net_config()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "deploy.prototxt"
            path.write_text(deploy(config, batch=1))
            self.caffe.set_mode_cpu()
            net = self.caffe.Net(str(path), self.caffe.TEST)
            params = net_parameters(net)
            if blobs is not None:
                wanted = upstream_layers(net, blobs)
                params = {k: v for k, v in params.items() if k in wanted}
        return params

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
            return {} if (self.data_dir / "manifest.json").is_file() else None
        if stage == "extract":
            names = [*self.config.methods, self.baseline_name()]
            return {} if all(self.features_path(n).is_file() for n in names) else None
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
        self.out.mkdir(parents=True, exist_ok=True)
        with locked_folder(self.out, "tools/reproduce.py"):
            state = self.state = self._load_state()
            state.setdefault("resumes", {})
            (self.out / "logs").mkdir(exist_ok=True)
            self._save_state(state)
            results = {}
            redo = False  # an earlier stage did work: every later one runs again
            for stage in STAGES:
                label = f"[{stage}]"
                if stage in state["done"] and stage != "train" and not redo:
                    found = self._finished(stage)
                    if found is not None:
                        print(f"{label} done earlier, skipped", flush=True)
                        results = found if stage == "score" else results
                        continue
                    print(f"{label} done earlier, but its output is missing", flush=True)
                print(f"{label} ...", flush=True)
                started = time.monotonic()
                redo = redo or stage != "train"
                if stage == "prepare":
                    self.prepare()
                elif stage == "train":
                    trained = [self.train(method) for method in self.config.methods]
                    redo = redo or any(trained)
                elif stage == "extract":
                    self.extract_all()
                elif stage == "score":
                    results = self.score_all()
                else:
                    self.report(results)
                print(f"{label} done in {time.monotonic() - started:.0f} s", flush=True)
                if stage not in state["done"]:
                    state["done"].append(stage)
                    self._save_state(state)
        return results

    # ------------------------------------------------------------ prepare
    @property
    def data_dir(self) -> Path:
        return self.out / "data"

    def prepare(self) -> None:
        config = self.config
        options = PrepareOptions(
            size=config.image_size or self.source.image_size, encoding=self.source.encoding,
            seed=config.seed,
            methods=config.methods, max_pairs=config.max_pairs,
            count_check=config.count_check,
            batch_size={m: config.batch or BATCH[m] for m in config.methods})
        manifest = prepare(self.source, config.root, self.data_dir, options)
        atomic_write_text(self.out / "logs" / "prepare.json", json.dumps(manifest, indent=2))
        note = self.data_note(manifest)
        if note:
            print(f"  note: {note}", flush=True)

    def data_note(self, manifest: dict) -> str:
        """For glyphs: whether this machine's fonts are those of the README's
        numbers (other fonts give other images, so other numbers)."""
        if "fonts_sha256" not in manifest:
            return ""
        return compare_fonts(manifest["fonts"], manifest["fonts_sha256"])

    # ------------------------------------------------------------ train
    def run_net(self, method: str) -> RunNet:
        config = self.config
        return RunNet(dataset=config.dataset, method=method, embedding=config.embedding,
                      data_dir=self.data_dir, folder=self.out / "train" / method,
                      seed=config.seed, iterations=config.iterations, crop=config.crop,
                      batch=config.batch, gpu=config.gpu is not None)

    def params(self) -> dict[str, list[int]]:
        """The nets' learnable layers and blob sizes (the same for every
        method), to check snapshots with."""
        if self._params is None:
            self._params = self._net_parameters()
        return self._params

    def train(self, method: str) -> bool:
        """Train one method unless its final snapshot is there and complete;
        whether it trained."""
        net = self.run_net(method)
        paths = net.write()
        final = net.final_snapshot
        if final.exists() and snapshot_problem(final, self.params()) is None:
            print(f"  {method}: trained earlier ({final.name})", flush=True)
            return False

        def record_resume(iteration: int) -> None:
            resumes = self.state["resumes"].setdefault(method, [])
            entry = {"stage": "train", "iteration": iteration}
            if entry not in resumes:
                resumes.append(entry)
                self._save_state(self.state)

        caffe_train(paths["solver"], final, net.max_iter,
                    self.out / "logs" / f"train_{method}.log", method, params=self.params(),
                    snapshot_every=net.solver_config().snapshot, weights=self.weights,
                    gpu=self.config.gpu, on_resume=record_resume)
        return True

    # ------------------------------------------------------------ extract
    def features_path(self, name: str) -> Path:
        return self.out / "features" / f"{name}.npz"

    def transform(self, method: str) -> Transform:
        """Test-time preprocessing: the TEST data layer's of the method's net."""
        config = self.run_net(method).net_config()
        return Transform(crop=config.crop, mean=tuple(float(m) for m in config.mean),
                         scale=1.0 if config.scale is None else config.scale)

    def _extract(self, method: str, weights: Path, blob: str, out: Path) -> None:
        """Features of one blob with the given weights, which must hold every
        layer that computes the blob."""
        net = self.run_net(method)
        deploy_path = net.paths()["deploy"]
        if not deploy_path.exists():
            net.write()
        if self.config.gpu is None:
            self.caffe.set_mode_cpu()
        else:
            self.caffe.set_device(self.config.gpu)
            self.caffe.set_mode_gpu()
        model = self.caffe.Net(str(deploy_path), self.caffe.TEST)
        needed = {name: sizes for name, sizes in net_parameters(model).items()
                  if name in upstream_layers(model, [blob])}
        check_fit(weights, needed, f"extracting {blob}")
        model.copy_from(str(weights))
        source = LmdbSource(self.data_dir / "test_lmdb", self.pb2())
        transform = self.transform(method)
        check_crop(source, transform, allow_small=self.config.crop is not None)
        extract(model, source, [blob], transform, out,
                run_key(weights, deploy_path, source, [blob], transform))

    def pb2(self):
        from caffe.proto import caffe_pb2

        return caffe_pb2

    def extract_all(self) -> None:
        """Each method's embedding from its final snapshot (kept when it was
        extracted earlier from the same snapshot, net and images), and the
        baseline's features."""
        (self.out / "features").mkdir(exist_ok=True)
        for method in self.config.methods:
            self._extract(method, self.run_net(method).final_snapshot, "fc_embedding",
                          self.features_path(method))
        baseline = self.baseline_name()
        if baseline == "raw":
            if not self.features_path(baseline).exists():
                self._raw_features()
        else:
            self._extract(self.config.methods[0], self.weights, TRUNK_TOP,
                          self.features_path(baseline))

    def baseline_name(self) -> str:
        """Untrained features: the preprocessed pixels for the from-scratch
        demo, ImageNet GoogLeNet's pool5 (the paper's baseline) otherwise."""
        return "raw" if self.config.demo else "pool5"

    def _raw_features(self) -> None:
        from liftedstruct.features import preprocess

        source = LmdbSource(self.data_dir / "test_lmdb", self.pb2())
        transform = self.transform(self.config.methods[0])
        ids, labels, rows = [], [], []
        for key, label, image in source.read(0):
            ids.append(key)
            labels.append(label)
            rows.append(preprocess([image], transform).reshape(-1))
        save_features(self.features_path("raw"), features=np.array(rows, dtype=np.float32),
                      labels=np.array(labels), ids=np.array(ids))

    # ------------------------------------------------------------ score, report
    def names(self) -> list[str]:
        return [*self.config.methods, self.baseline_name()]

    def score_all(self) -> dict:
        (self.out / "scores").mkdir(exist_ok=True)
        results = {}
        for name in tqdm(self.names(), desc="score", unit="method"):
            path = self.features_path(name)
            features, labels = load_features(path)
            ks = [k for k in RECALL_K[self.config.dataset] if k <= len(labels) - 1]
            scores = metrics.score(features, labels, ks, cluster=self.config.cluster,
                                   seed=self.config.seed, source=str(path),
                                   kmeans=self.config.kmeans).to_json()
            scores["resumes"] = self.state.get("resumes", {}).get(name, [])
            atomic_write_text(self.out / "scores" / f"{name}.json",
                              json.dumps(scores, indent=2) + "\n")
            results[name] = scores
        atomic_write_text(self.out / "results.json", json.dumps(results, indent=2) + "\n")
        return results

    def report(self, results: dict) -> None:
        features = {name: self.features_path(name) for name in self.names()}
        manifest = json.loads((self.data_dir / "manifest.json").read_text())
        written = write_report(results, self.config.dataset, self.config.embedding,
                               self.out / "report", features, self.data_dir / "test_lmdb",
                               seed=self.config.seed, note=self.data_note(manifest))
        print((self.out / "report" / "report.md").read_text())
        for path in written.values():
            print(f"  {path}")

