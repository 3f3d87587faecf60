"""One template for every net and solver of the paper (and the demo).

GoogLeNet (BVLC, no batch norm, no auxiliary classifiers) up to
pool5/7x7_s1, dropout 0.4, fc_embedding (lr x10 / x20), then the loss of the
method: LiftedStructSimilaritySoftmaxLoss, ContrastiveLoss on the two halves
of the batch, or TripletLoss on its thirds. The training batches
(docs/BATCHES.md) come from the MetricBatchData layer on the unique layout's
train_lmdb (the default), or from Caffe's Data layer on an ordered layout's
train_<method>_lmdb. nets/zoo.py says which are committed; nets/derive.py
writes a run's copies.
"""

from __future__ import annotations

from dataclasses import dataclass

from liftedstruct.constants import BATCH, CROP, IMAGENET_MEAN_BGR
from liftedstruct.errors import NetError

LAYOUTS = ("unique", "ordered")
EPOCHS = ("fixed", "reshuffle")

# GoogLeNet's inception modules: 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj.
INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64), "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128),
}


@dataclass(frozen=True)
class NetConfig:
    dataset: str
    method: str
    embedding: int
    arch: str = "googlenet"  # or "demo"
    crop: int = CROP
    mirror: bool = True
    batch: int = 128
    train_source: str = ""
    test_source: str = ""
    mean: tuple[int, ...] = IMAGENET_MEAN_BGR
    scale: float | None = None
    margin: float = 1.0
    # The training set: "unique" (train_lmdb, batches formed by the
    # MetricBatchData layer) or "ordered" (train_<method>_lmdb, Caffe's Data
    # layer); for unique, the cap on the pairs or triplets of an epoch (None:
    # all) and whether every epoch is epoch 0 ("fixed", the authors') or
    # draws new negatives and a new order ("reshuffle").
    layout: str = "unique"
    max_tuples: int | None = None
    epochs: str = "fixed"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise NetError(f"layout {self.layout!r}: one of {', '.join(LAYOUTS)}")
        if self.epochs not in EPOCHS:
            raise NetError(f"epochs {self.epochs!r}: one of {', '.join(EPOCHS)}")
        if self.max_tuples is not None and self.max_tuples < 1:
            raise NetError(f"max_tuples {self.max_tuples}: at least 1, or None for all")

    @property
    def name(self) -> str:
        return f"{self.dataset}_{self.method}_{self.embedding}"


@dataclass(frozen=True)
class SolverConfig:
    net: str
    snapshot_prefix: str
    base_lr: float = 0.0001
    lr_policy: str = "step"
    gamma: float = 0.96
    stepsize: int = 32000
    momentum: float = 0.9
    weight_decay: float = 0.0002
    max_iter: int = 20000
    snapshot: int = 10000
    display: int = 20
    solver_mode: str = "GPU"
    random_seed: int | None = None


def train_lmdb(folder: str, method: str, layout: str = "unique") -> str:
    """The training LMDB of a prepared folder for a method and layout."""
    return f"{folder}/train_lmdb" if layout == "unique" else f"{folder}/train_{method}_lmdb"


def paper_config(dataset: str, method: str, embedding: int,
                 layout: str = "unique") -> NetConfig:
    """The paper's settings for one dataset, method and embedding size."""
    lmdb = f"data/lmdb/{dataset}"
    return NetConfig(dataset=dataset, method=method, embedding=embedding,
                     batch=BATCH[method], train_source=train_lmdb(lmdb, method, layout),
                     test_source=f"{lmdb}/test_lmdb", layout=layout)


def demo_config(method: str, dataset: str = "glyphs", embedding: int = 64,
                layout: str = "unique") -> NetConfig:
    """The demo: a small conv net on 32x32 images, 28x28 crops."""
    lmdb = f"data/lmdb/{dataset}"
    return NetConfig(dataset=dataset, method=method, embedding=embedding, arch="demo",
                     crop=28, mirror=False, batch=BATCH[method],
                     train_source=train_lmdb(lmdb, method, layout),
                     test_source=f"{lmdb}/test_lmdb", mean=(), scale=1 / 255,
                     layout=layout)


# ---------------------------------------------------------------- pieces

def _block(kind: str, body: str) -> str:
    lines = [f"{kind} {{"] + [f"  {line}" if line else "" for line in body.splitlines()]
    return "\n".join(lines) + "\n}\n"


def _params(lr: tuple[float, float] = (1, 2), decay: tuple[float, float] = (1, 0)) -> str:
    return (f"param {{ lr_mult: {lr[0]:g} decay_mult: {decay[0]:g} }}\n"
            f"param {{ lr_mult: {lr[1]:g} decay_mult: {decay[1]:g} }}\n")


def conv(name: str, bottom: str, num: int, kernel: int, stride: int = 1,
         pad: int = 0) -> str:
    spec = f"num_output: {num}\n"
    if pad:
        spec += f"pad: {pad}\n"
    spec += f"kernel_size: {kernel}\n"
    if stride != 1:
        spec += f"stride: {stride}\n"
    spec += ('weight_filler { type: "xavier" }\n'
             'bias_filler { type: "constant" value: 0.2 }')
    return _block("layer", f'name: "{name}"\ntype: "Convolution"\nbottom: "{bottom}"\n'
                  f'top: "{name}"\n{_params()}'
                  + _block("convolution_param", spec).rstrip("\n"))


def relu(name: str, blob: str) -> str:
    return _block("layer", f'name: "{name}"\ntype: "ReLU"\nbottom: "{blob}"\ntop: "{blob}"')


def pool(name: str, bottom: str, method: str, kernel: int, stride: int,
         pad: int = 0, global_pooling: bool = False) -> str:
    spec = f"pool: {method}\n"
    if global_pooling:
        spec += "global_pooling: true"
    else:
        spec += f"kernel_size: {kernel}\nstride: {stride}" + (f"\npad: {pad}" if pad else "")
    return _block("layer", f'name: "{name}"\ntype: "Pooling"\nbottom: "{bottom}"\n'
                  f'top: "{name}"\n' + _block("pooling_param", spec).rstrip("\n"))


def lrn(name: str, bottom: str) -> str:
    return _block("layer", f'name: "{name}"\ntype: "LRN"\nbottom: "{bottom}"\ntop: "{name}"\n'
                  + _block("lrn_param", "local_size: 5\nalpha: 0.0001\nbeta: 0.75")
                  .rstrip("\n"))


def inception(module: str, bottom: str) -> tuple[str, str]:
    n1, n3r, n3, n5r, n5, npool = INCEPTION[module]
    p = f"inception_{module}"
    text = conv(f"{p}/1x1", bottom, n1, 1) + relu(f"{p}/relu_1x1", f"{p}/1x1")
    text += conv(f"{p}/3x3_reduce", bottom, n3r, 1)
    text += relu(f"{p}/relu_3x3_reduce", f"{p}/3x3_reduce")
    text += conv(f"{p}/3x3", f"{p}/3x3_reduce", n3, 3, pad=1)
    text += relu(f"{p}/relu_3x3", f"{p}/3x3")
    text += conv(f"{p}/5x5_reduce", bottom, n5r, 1)
    text += relu(f"{p}/relu_5x5_reduce", f"{p}/5x5_reduce")
    text += conv(f"{p}/5x5", f"{p}/5x5_reduce", n5, 5, pad=2)
    text += relu(f"{p}/relu_5x5", f"{p}/5x5")
    text += pool(f"{p}/pool", bottom, "MAX", 3, 1, pad=1)
    text += conv(f"{p}/pool_proj", f"{p}/pool", npool, 1)
    text += relu(f"{p}/relu_pool_proj", f"{p}/pool_proj")
    tops = "".join(f'bottom: "{p}/{b}"\n' for b in ("1x1", "3x3", "5x5", "pool_proj"))
    text += _block("layer", f'name: "{p}/output"\ntype: "Concat"\n{tops}'
                   f'top: "{p}/output"')
    return text, f"{p}/output"


def pool5_is_global(crop: int) -> bool:
    """GoogLeNet's pool5 is a 7x7 average over the 7x7 map of a 224-227 crop;
    smaller inputs (quick checks on fixtures) average whatever map they get."""
    return crop < 224


def googlenet_trunk(config: NetConfig) -> tuple[str, str]:
    """BVLC GoogLeNet from data to pool5/7x7_s1; returns (text, top)."""
    text = conv("conv1/7x7_s2", "data", 64, 7, stride=2, pad=3)
    text += relu("conv1/relu_7x7", "conv1/7x7_s2")
    text += pool("pool1/3x3_s2", "conv1/7x7_s2", "MAX", 3, 2)
    text += lrn("pool1/norm1", "pool1/3x3_s2")
    text += conv("conv2/3x3_reduce", "pool1/norm1", 64, 1)
    text += relu("conv2/relu_3x3_reduce", "conv2/3x3_reduce")
    text += conv("conv2/3x3", "conv2/3x3_reduce", 192, 3, pad=1)
    text += relu("conv2/relu_3x3", "conv2/3x3")
    text += lrn("conv2/norm2", "conv2/3x3")
    text += pool("pool2/3x3_s2", "conv2/norm2", "MAX", 3, 2)
    top = "pool2/3x3_s2"
    for module in INCEPTION:
        if module == "4a":
            text += pool("pool3/3x3_s2", top, "MAX", 3, 2)
            top = "pool3/3x3_s2"
        if module == "5a":
            text += pool("pool4/3x3_s2", top, "MAX", 3, 2)
            top = "pool4/3x3_s2"
        block, top = inception(module, top)
        text += block
    text += pool("pool5/7x7_s1", top, "AVE", 7, 1,
                 global_pooling=pool5_is_global(config.crop))
    return text, "pool5/7x7_s1"


# The demo net's conv widths and fc size.
DEMO_WIDTHS = (16, 32, 256)


def demo_trunk(config: NetConfig) -> tuple[str, str]:
    """The demo's small conv net for 32x32 images; returns (text, top)."""
    conv1, conv2, fc = DEMO_WIDTHS
    text = conv("conv1", "data", conv1, 3, pad=1) + relu("relu1", "conv1")
    text += pool("pool1", "conv1", "MAX", 2, 2)
    text += conv("conv2", "pool1", conv2, 3, pad=1) + relu("relu2", "conv2")
    text += pool("pool2", "conv2", "MAX", 2, 2)
    text += _block("layer", 'name: "fc1"\ntype: "InnerProduct"\nbottom: "pool2"\n'
                   f'top: "fc1"\n{_params()}'
                   + _block("inner_product_param", f'num_output: {fc}\n'
                            'weight_filler { type: "xavier" }\n'
                            'bias_filler { type: "constant" value: 0 }').rstrip("\n"))
    text += relu("relu_fc1", "fc1")
    return text, "fc1"


def trunk(config: NetConfig) -> tuple[str, str]:
    return (googlenet_trunk if config.arch == "googlenet" else demo_trunk)(config)


def dropout(name: str, blob: str, ratio: float) -> str:
    return _block("layer", f'name: "{name}"\ntype: "Dropout"\nbottom: "{blob}"\n'
                  f'top: "{blob}"\n'
                  + _block("dropout_param", f"dropout_ratio: {ratio:g}").rstrip("\n"))


def embedding_layer(config: NetConfig, bottom: str) -> str:
    """fc_embedding: random init, 10x the base learning rate (20x for bias)."""
    return _block("layer", f'name: "fc_embedding"\ntype: "InnerProduct"\n'
                  f'bottom: "{bottom}"\ntop: "fc_embedding"\n{_params(lr=(10, 20))}'
                  + _block("inner_product_param", f"num_output: {config.embedding}\n"
                           'weight_filler { type: "xavier" }\n'
                           'bias_filler { type: "constant" value: 0 }').rstrip("\n"))


def metric_batch_param(config: NetConfig) -> str:
    """The MetricBatchData layer's settings (docs/BATCHES.md): triplets for
    the triplet loss, pairs otherwise; the pair's similarity as the label for
    contrastive, the class otherwise; epochs and the cap only when set."""
    spec = f"tuple: {'TRIPLET' if config.method == 'triplet' else 'PAIR'}\n"
    spec += f"label: {'SIMILARITY' if config.method == 'contrastive' else 'CLASS'}"
    if config.epochs != "fixed":
        spec += f"\nepochs: {config.epochs.upper()}"
    if config.max_tuples is not None:
        spec += f"\nmax_tuples: {config.max_tuples}"
    return _block("metric_batch_param", spec)


def data_layer(config: NetConfig, phase: str, threads: int | None = None) -> str:
    """The TRAIN or TEST data layer with the config's transform: in TRAIN,
    MetricBatchData for the unique layout, Caffe's Data layer otherwise;
    threads sets data_param's threads (patch 0011; None leaves it to
    CAFFE_DATA_THREADS or the cores)."""
    train = phase == "TRAIN"
    transform = f"mirror: {'true' if train and config.mirror else 'false'}\n"
    transform += f"crop_size: {config.crop}\n"
    transform += "".join(f"mean_value: {m}\n" for m in config.mean)
    if config.scale is not None:
        transform += f"scale: {config.scale:.8g}\n"
    source = config.train_source if train else config.test_source
    metric = train and config.layout == "unique"
    kind = "MetricBatchData" if metric else "Data"
    return _block("layer", f'name: "data"\ntype: "{kind}"\ntop: "data"\ntop: "label"\n'
                  f"include {{ phase: {phase} }}\n"
                  + _block("transform_param", transform.rstrip("\n"))
                  + (_block("data_param", f'source: "{source}"\n'
                            f"batch_size: {config.batch}\nbackend: LMDB"
                            + (f"\nthreads: {threads}" if threads is not None else ""))
                     + (metric_batch_param(config) if metric else "")).rstrip("\n"))


def data_timing_net(source: str, batch: int = BATCH["lifted"],
                    threads: int | None = None, layout: str = "ordered") -> str:
    """The training data layer alone (the paper's transform: 227x227 random
    crops, mirrors, mean 104/117/123) into a Silence layer, reading the LMDB
    source: `caffe time -model NET -iterations N` then times the data path,
    each iteration's forward pass being the wait for the next batch. layout
    "ordered": Caffe's Data layer reading the records in order; "unique":
    MetricBatchData forming pairs by random reads (its classes need two
    images or more)."""
    config = NetConfig(dataset="data", method="lifted", embedding=0, batch=batch,
                       train_source=source, layout=layout)
    return (HEADER + 'name: "data_timing"\n' + data_layer(config, "TRAIN", threads)
            + _block("layer", 'name: "silence"\ntype: "Silence"\nbottom: "data"\n'
                     'bottom: "label"'))


def loss_layers(config: NetConfig) -> str:
    if config.method == "lifted":
        return _block("layer", 'name: "loss"\ntype: "LiftedStructSimilaritySoftmaxLoss"\n'
                      'bottom: "fc_embedding"\nbottom: "label"\ntop: "loss"\n'
                      + _block("lifted_struct_sim_softmax_loss_param",
                               f"margin: {config.margin:g}").rstrip("\n"))
    if config.method == "triplet":
        return _block("layer", 'name: "loss"\ntype: "TripletLoss"\n'
                      'bottom: "fc_embedding"\nbottom: "label"\ntop: "loss"\n'
                      + _block("triplet_loss_param", f"margin: {config.margin:g}")
                      .rstrip("\n"))
    if config.method == "contrastive":
        half = config.batch // 2
        # Item i and i + B/2 form a pair; the label of the first half is the
        # pair's similarity (MetricBatchData's label: SIMILARITY, or the
        # labels of the ordered layout's train_contrastive_lmdb).
        text = _block("layer", 'name: "slice_embedding"\ntype: "Slice"\n'
                      'bottom: "fc_embedding"\ntop: "embedding_a"\ntop: "embedding_b"\n'
                      + _block("slice_param", f"axis: 0\nslice_point: {half}").rstrip("\n"))
        text += _block("layer", 'name: "slice_label"\ntype: "Slice"\nbottom: "label"\n'
                       'top: "similarity"\ntop: "similarity_b"\n'
                       + _block("slice_param", f"axis: 0\nslice_point: {half}")
                       .rstrip("\n"))
        text += _block("layer", 'name: "silence"\ntype: "Silence"\nbottom: "similarity_b"')
        text += _block("layer", 'name: "loss"\ntype: "ContrastiveLoss"\n'
                       'bottom: "embedding_a"\nbottom: "embedding_b"\n'
                       'bottom: "similarity"\ntop: "loss"\n'
                       + _block("contrastive_loss_param", f"margin: {config.margin:g}")
                       .rstrip("\n"))
        return text
    raise NetError(f"unknown method {config.method!r}")


HEADER = ("# Generated by tools/make_prototxt.py from liftedstruct/nets/template.py; "
          "do not edit.\n")


def train_val(config: NetConfig, inputs: str | None = None) -> str:
    """The training net; inputs replaces its two Data layers (which must
    give the tops data and label)."""
    body, top = trunk(config)
    text = HEADER + f'name: "{config.name}"\n'
    text += inputs or data_layer(config, "TRAIN") + data_layer(config, "TEST")
    text += body
    ratio = 0.4 if config.arch == "googlenet" else 0.2
    text += dropout("pool5/drop_7x7_s1" if config.arch == "googlenet" else "drop_fc1", top,
                    ratio)
    return text + embedding_layer(config, top) + loss_layers(config)


def time_net(config: NetConfig) -> str:
    """The training net on synthetic input, for `caffe time`: Gaussian
    images of the net's batch and crop, and one label for all (the loss
    layer's share of an iteration does not depend on the labels' values)."""
    shape = f"dim: {config.batch} dim: 3 dim: {config.crop} dim: {config.crop}"
    inputs = _block("layer", 'name: "data"\ntype: "DummyData"\ntop: "data"\ntop: "label"\n'
                    + _block("dummy_data_param",
                             'data_filler { type: "gaussian" std: 50 }\n'
                             'data_filler { type: "constant" value: 0 }\n'
                             f"shape {{ {shape} }}\nshape {{ dim: {config.batch} }}")
                    .rstrip("\n"))
    return train_val(config, inputs)


def deploy(config: NetConfig, batch: int = 128, name: str | None = None) -> str:
    """Test-time net: image input, outputs fc_embedding (and the trunk's top)."""
    body, top = trunk(config)
    text = HEADER + f'name: "{name or config.name + "_deploy"}"\n'
    text += _block("layer", 'name: "data"\ntype: "Input"\ntop: "data"\n'
                   + _block("input_param", f"shape {{ dim: {batch} dim: 3 dim: {config.crop} "
                            f"dim: {config.crop} }}").rstrip("\n"))
    return text + body + embedding_layer(config, top)


def solver(config: SolverConfig) -> str:
    lines = [f'net: "{config.net}"', f"base_lr: {config.base_lr:g}",
             f'lr_policy: "{config.lr_policy}"']
    if config.lr_policy == "step":
        lines += [f"gamma: {config.gamma:g}", f"stepsize: {config.stepsize}"]
    lines += [f"momentum: {config.momentum:g}", f"weight_decay: {config.weight_decay:g}",
              f"max_iter: {config.max_iter}", f"display: {config.display}",
              f"snapshot: {config.snapshot}", f'snapshot_prefix: "{config.snapshot_prefix}"',
              f"solver_mode: {config.solver_mode}", "test_initialization: false"]
    if config.random_seed is not None:
        lines.append(f"random_seed: {config.random_seed}")
    return HEADER + "\n".join(lines) + "\n"


def net_texts(config: NetConfig, solver_config: SolverConfig) -> dict[str, str]:
    """One net's three files: {"train_val", "deploy", "solver": prototxt text}."""
    return {"train_val": train_val(config), "deploy": deploy(config),
            "solver": solver(solver_config)}


def demo_solver(net: str, snapshot_prefix: str) -> SolverConfig:
    """The demo's schedule (glyphs, digits): the small net from scratch, the same
    learning rate, iterations and seed for every method."""
    return SolverConfig(net=net, snapshot_prefix=snapshot_prefix, base_lr=0.001,
                        lr_policy="fixed", max_iter=1000, snapshot=250, display=10,
                        solver_mode="CPU", random_seed=0)
