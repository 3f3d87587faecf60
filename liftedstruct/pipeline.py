"""prepare -> train -> extract -> score -> report, resumable, for one dataset."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from tqdm import tqdm

from liftedstruct import datasets, metrics
from liftedstruct.features import LmdbSource, Transform, extract, preprocess
from liftedstruct.files import atomic_write_text
from liftedstruct.paths import REPO_ROOT, caffe_binary, import_caffe
from liftedstruct.prototxt import HEADLINE_EMBEDDING
from liftedstruct.report import write_report
from liftedstruct.weights import DEFAULT_PATH as GOOGLENET_WEIGHTS

# "Iteration 10 (9.2 iter/s, 1.09s/10 iters), loss = 9.9" in caffe train's log.
LOSS_LINE = re.compile(r"Iteration (\d+)(?: \([^)]*\))?, loss = ([-+.\deEnaif]+)")
STAGES = ("prepare", "train", "extract", "score", "report")
DOWNLOADS = {
    "cub": "CUB_200_2011.tgz (https://www.vision.caltech.edu/datasets/cub_200_2011/)",
    "cars196": "car_ims.tgz and cars_annos.mat (Stanford Cars, the 196-class set)",
    "sop": "Stanford_Online_Products.zip (Stanford Online Products)",
}
# The demo trains on at most this many pairs (the full set is ~163k for digits).
DEMO_MAX_PAIRS = 30000


class PipelineError(RuntimeError):
    """A stage cannot run; the message says what to do."""


@dataclass
class RunConfig:
    dataset: str = "digits"
    out: Path = Path("runs/digits")
    root: Path | None = None
    embedding: int | None = None
    methods: tuple[str, ...] = ("lifted", "contrastive", "triplet")
    weights: Path | None = None
    gpu: int | None = None
    iterations: int | None = None
    seed: int = 0
    max_pairs: int | None = None
    cluster: str = "kmeans"
    # Reduced input for quick checks on fixtures (the committed nets use 256/227).
    image_size: int | None = None
    crop: int | None = None
    batch: int | None = None
    count_check: bool = True
    extra_env: dict = field(default_factory=dict)

    def __post_init__(self):
        self.out = Path(self.out)
        unknown = [m for m in self.methods if m not in ("lifted", "contrastive", "triplet")]
        if unknown or not self.methods:
            raise PipelineError(f"--methods: unknown {', '.join(unknown) or '(none given)'}; "
                                "choose from lifted, contrastive, triplet")
        if self.embedding is None:
            self.embedding = 64 if self.dataset == "digits" else HEADLINE_EMBEDDING[
                self.dataset]
        sizes = (64,) if self.dataset == "digits" else (64, 128, 256, 512)
        if self.embedding not in sizes:
            raise PipelineError(f"--embedding {self.embedding}: the committed nets for "
                                f"{self.dataset} have {', '.join(map(str, sizes))}")
        if self.max_pairs is None and self.dataset == "digits":
            self.max_pairs = DEMO_MAX_PAIRS

    def key(self) -> str:
        """What makes two runs the same run (not the output folder or GPU)."""
        settings = {k: str(v) for k, v in asdict(self).items()
                    if k not in ("out", "gpu", "extra_env")}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def committed_folder(config: RunConfig, method: str) -> Path:
    if config.dataset == "digits":
        return REPO_ROOT / "prototxt" / "demo" / f"{method}_{config.embedding}"
    return REPO_ROOT / "prototxt" / config.dataset / f"{method}_{config.embedding}"


class Pipeline:
    def __init__(self, config: RunConfig):
        self.config = config
        self.out = config.out.resolve()
        self.state_path = self.out / "state.json"
        self.caffe = import_caffe()
        from caffe.proto import caffe_pb2

        self.pb2 = caffe_pb2

    # ------------------------------------------------------------ state
    def _load_state(self) -> dict:
        if self.state_path.exists():
            state = json.loads(self.state_path.read_text())
            if state.get("key") != self.config.key():
                raise PipelineError(
                    f"{self.out} holds a run with other settings ({state.get('config')}); "
                    "give a new --out (an earlier run is never overwritten)")
            return state
        if self.out.exists() and any(self.out.iterdir()):
            raise PipelineError(f"{self.out} exists and is not a run of this tool; "
                                "give a new --out")
        return {"key": self.config.key(), "done": [],
                "config": {k: str(v) for k, v in asdict(self.config).items()}}

    def _save_state(self, state: dict) -> None:
        atomic_write_text(self.state_path, json.dumps(state, indent=2) + "\n")

    def run(self) -> dict:
        state = self._load_state()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "logs").mkdir(exist_ok=True)
        self._save_state(state)
        results = {}
        for stage in STAGES:
            label = f"[{stage}]"
            if stage in state["done"] and stage != "train":
                print(f"{label} done earlier, skipped", flush=True)
                if stage == "score":
                    results = json.loads((self.out / "results.json").read_text())
                continue
            print(f"{label} ...", flush=True)
            if stage == "prepare":
                self.prepare()
            elif stage == "train":
                for method in self.config.methods:
                    self.train(method)
            elif stage == "extract":
                self.extract_all()
            elif stage == "score":
                results = self.score_all()
            else:
                self.report(results)
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
        if config.dataset != "digits":
            if config.root is None or not config.root.exists():
                raise PipelineError(
                    f"{config.dataset} needs the downloaded data: {DOWNLOADS[config.dataset]}"
                    f"; pass it with --root (given: {config.root})")
        batch = config.batch
        options = datasets.PrepareOptions(
            size=config.image_size or datasets.DEFAULT_SIZE[config.dataset],
            seed=config.seed, methods=config.methods, max_pairs=config.max_pairs,
            count_check=config.count_check,
            batch_size={m: batch or datasets.DEFAULT_BATCH[m] for m in config.methods})
        manifest = datasets.prepare(config.dataset, config.root, self.data_dir, options)
        (self.out / "logs" / "prepare.json").write_text(json.dumps(manifest, indent=2))

    # ------------------------------------------------------------ train
    def derived_net(self, method: str, name: str = "train_val.prototxt") -> Path:
        """A committed net (train_val or deploy) with this run's LMDBs and
        reduced input, written under train/<method>/."""
        net = self.pb2.NetParameter()
        text_format.Merge((committed_folder(self.config, method) / name).read_text(), net)
        self._adapt(net, method)
        path = self.out / "train" / method / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text_format.MessageToString(net))
        return path

    def transform(self, method: str) -> Transform:
        """Test-time preprocessing: the TEST Data layer of the method's net."""
        return Transform.from_train_val(self.out / "train" / method / "train_val.prototxt",
                                        self.pb2)

    def _adapt(self, net, method: str) -> None:
        for layer in net.layer:
            if layer.type == "Data":
                test = any(rule.phase == self.pb2.TEST for rule in layer.include)
                layer.data_param.source = str(
                    self.data_dir / ("test_lmdb" if test else f"train_{method}_lmdb"))
                if self.config.batch:
                    layer.data_param.batch_size = self.config.batch
                if self.config.crop:
                    layer.transform_param.crop_size = self.config.crop
            if layer.type == "Input" and self.config.crop:
                dims = layer.input_param.shape[0].dim
                del dims[2:]
                dims.extend([self.config.crop] * 2)
            if layer.name == "pool5/7x7_s1" and self.config.crop and self.config.crop < 224:
                layer.pooling_param.ClearField("kernel_size")
                layer.pooling_param.ClearField("stride")
                layer.pooling_param.global_pooling = True
            if layer.type == "Slice" and self.config.batch:
                del layer.slice_param.slice_point[:]
                layer.slice_param.slice_point.append(self.config.batch // 2)

    def derived_solver(self, method: str) -> tuple[Path, int]:
        solver = self.pb2.SolverParameter()
        text_format.Merge((committed_folder(self.config, method) / "solver.prototxt")
                          .read_text(), solver)
        folder = self.out / "train" / method
        solver.net = str(self.derived_net(method))
        solver.snapshot_prefix = str(folder / "snap")
        if self.config.iterations:
            solver.max_iter = self.config.iterations
        solver.snapshot = min(solver.snapshot, max(1, solver.max_iter // 4))
        solver.random_seed = self.config.seed
        solver.solver_mode = (self.pb2.SolverParameter.GPU if self.config.gpu is not None
                              else self.pb2.SolverParameter.CPU)
        path = folder / "solver.prototxt"
        path.write_text(text_format.MessageToString(solver))
        return path, solver.max_iter

    def final_snapshot(self, method: str, max_iter: int) -> Path:
        return self.out / "train" / method / f"snap_iter_{max_iter}.caffemodel"

    def _weights(self) -> Path | None:
        if self.config.dataset == "digits":
            return self.config.weights
        weights = self.config.weights or GOOGLENET_WEIGHTS
        if not Path(weights).is_file():
            raise PipelineError(
                f"{weights}: the ImageNet GoogLeNet weights are needed to fine-tune; run "
                "tools/fetch_weights.py (or --from a copy you have), or pass --weights")
        return Path(weights)

    def train(self, method: str) -> Path:
        solver, max_iter = self.derived_solver(method)
        final = self.final_snapshot(method, max_iter)
        if final.exists():
            print(f"  {method}: trained earlier ({final.name})", flush=True)
            return final
        folder = solver.parent
        states = sorted(folder.glob("snap_iter_*.solverstate"),
                        key=lambda p: int(re.search(r"_(\d+)\.", p.name).group(1)))
        cmd = [str(caffe_binary()), "train", f"-solver={solver}"]
        start = 0
        if states:
            cmd.append(f"-snapshot={states[-1]}")
            start = int(re.search(r"_(\d+)\.", states[-1].name).group(1))
            print(f"  {method}: resuming from {states[-1].name}", flush=True)
        else:
            weights = self._weights()
            if weights is not None:
                cmd.append(f"-weights={weights}")
        if self.config.gpu is not None:
            cmd.append(f"-gpu={self.config.gpu}")
        log_path = self.out / "logs" / f"train_{method}.log"
        env = {**os.environ, "GLOG_minloglevel": "0", "GLOG_logtostderr": "1",
               **self.config.extra_env}
        with open(log_path, "a") as log, tqdm(total=max_iter, initial=start,
                                              desc=f"train {method}", unit="it") as bar:
            process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, env=env)
            for line in process.stdout:
                log.write(line)
                found = LOSS_LINE.search(line)
                if found:
                    bar.n = int(found.group(1))
                    bar.set_postfix(loss=found.group(2))
                    bar.refresh()
            code = process.wait()
        if code != 0 or not final.exists():
            tail = "".join(log_path.read_text().splitlines(keepends=True)[-15:])
            raise PipelineError(f"training {method} failed (exit {code}); log: {log_path}\n"
                                f"{tail}")
        return final

    # ------------------------------------------------------------ extract
    def features_path(self, name: str) -> Path:
        return self.out / "features" / f"{name}.npz"

    def _net(self, deploy: Path, weights: Path):
        if self.config.gpu is None:
            self.caffe.set_mode_cpu()
        else:
            self.caffe.set_device(self.config.gpu)
            self.caffe.set_mode_gpu()
        return self.caffe.Net(str(deploy), str(weights), self.caffe.TEST)

    def extract_all(self) -> None:
        (self.out / "features").mkdir(exist_ok=True)
        source = LmdbSource(self.data_dir / "test_lmdb", self.pb2)
        for method in self.config.methods:
            out = self.features_path(method)
            if out.exists():
                continue
            transform = self.transform(method)
            _, max_iter = self.derived_solver(method)
            net = self._net(self.derived_net(method, "deploy.prototxt"),
                            self.final_snapshot(method, max_iter))
            extract(net, source, ["fc_embedding"], transform, out)
        baseline = self.baseline_name()
        if not self.features_path(baseline).exists():
            if baseline == "raw":
                self._raw_features(source)
            else:
                method = self.config.methods[0]
                transform = self.transform(method)
                net = self._net(self.derived_net(method, "deploy.prototxt"), self._weights())
                extract(net, source, ["pool5/7x7_s1"], transform,
                        self.features_path(baseline))

    def baseline_name(self) -> str:
        return "raw" if self.config.dataset == "digits" else "pool5"

    def _raw_features(self, source: LmdbSource) -> None:
        """The untrained baseline of the demo: the preprocessed pixels."""
        transform = self.transform(self.config.methods[0])
        ids, labels, rows = [], [], []
        for key, label, image in source.read(0):
            ids.append(key)
            labels.append(label)
            rows.append(preprocess([image], transform).reshape(-1))
        path = self.features_path("raw")
        tmp = path.with_name("raw.tmp.npz")
        np.savez(tmp, features=np.array(rows, dtype=np.float32), labels=np.array(labels),
                 ids=np.array(ids))
        tmp.replace(path)

    # ------------------------------------------------------------ score, report
    def names(self) -> list[str]:
        return [*self.config.methods, self.baseline_name()]

    def score_all(self) -> dict:
        (self.out / "scores").mkdir(exist_ok=True)
        ks = metrics.DEFAULT_K[self.config.dataset]
        results = {}
        for name in tqdm(self.names(), desc="score", unit="method"):
            data = np.load(self.features_path(name))
            n = len(data["labels"])
            scores = metrics.score(data["features"], data["labels"],
                                   [k for k in ks if k <= n - 1], cluster=self.config.cluster,
                                   seed=self.config.seed,
                                   source=str(self.features_path(name))).to_json()
            (self.out / "scores" / f"{name}.json").write_text(json.dumps(scores, indent=2))
            results[name] = scores
        atomic_write_text(self.out / "results.json", json.dumps(results, indent=2) + "\n")
        return results

    def report(self, results: dict) -> None:
        features = {name: self.features_path(name) for name in self.config.methods}
        written = write_report(results, self.config.dataset, self.config.embedding,
                               self.out / "report", features, self.data_dir / "test_lmdb",
                               seed=self.config.seed)
        print((self.out / "report" / "report.md").read_text())
        for path in written.values():
            print(f"  {path}")


def training_losses(log: Path) -> list[tuple[int, float]]:
    """(iteration, loss) pairs of a caffe train log."""
    return [(int(i), float(v)) for i, v in LOSS_LINE.findall(log.read_text())]
