"""PyTorch beside the kit's Caffe on the same GPU, for run.sh's speed steps.

  python3 peers.py googlenet [--batch 128] [--iterations 20]
      torchvision's GoogLeNet (no auxiliary heads) with a 512-d embedding and
      pytorch-metric-learning's lifted structure loss: forward + backward +
      SGD step at 227x227, in fp32, TF32 and bf16 autocast.
  python3 peers.py lifted [--sizes 128,256] [--dims 64,512] [--iterations 100]
      LiftedStructureLoss(neg_margin=1, pos_margin=0, distance=LpDistance(
      normalize_embeddings=False)) alone, forward + backward, on m x c features.

One JSON line per measurement: the median over the timed iterations (CUDA
events; a clock with --device cpu), after warm-up. pytorch-metric-learning
comes from the kit's wheels/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

WHEELS = Path(__file__).resolve().parent / "wheels"


def lifted_loss():
    sys.path[:0] = [str(wheel) for wheel in sorted(WHEELS.glob("*.whl"))]
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.losses import LiftedStructureLoss

    return LiftedStructureLoss(neg_margin=1, pos_margin=0,
                               distance=LpDistance(normalize_embeddings=False))


def pair_labels(m: int, device):
    """The paper's batch: item i and item i + m/2 share a class."""
    import torch

    return torch.arange(m, device=device) % (m // 2)


def time_ms(step, iterations: int, warmup: int, device) -> float:
    import torch

    cuda = device.type == "cuda"
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(iterations):
        if not cuda:
            start_s = time.perf_counter()
            step()
            times.append(1000 * (time.perf_counter() - start_s))
            continue
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def peak_memory(device) -> dict:
    import torch

    if device.type != "cuda":
        return {}
    return {"peak_allocated_mib": torch.cuda.max_memory_allocated() >> 20,
            "peak_reserved_mib": torch.cuda.max_memory_reserved() >> 20}


def googlenet(args: argparse.Namespace) -> None:
    import torch
    import torchvision

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True,
                                         transform_input=False)
    model.fc = torch.nn.Linear(1024, 512)
    model = model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=2e-4)
    loss_fn = lifted_loss()
    images = torch.randn(args.batch, 3, args.crop, args.crop, device=device)
    labels = pair_labels(args.batch, device)
    torch.backends.cudnn.benchmark = True
    for precision in ("fp32", "tf32", "bf16"):
        tf32 = precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32

        def step(precision=precision) -> None:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16,
                                enabled=precision == "bf16"):
                embedding = model(images)
            loss = loss_fn(embedding.float(), labels)
            loss.backward()
            optimizer.step()

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        ms = time_ms(step, args.iterations, warmup=5, device=device)
        print(json.dumps({
            "model": "torchvision googlenet", "precision": precision, "batch": args.batch,
            "crop": args.crop, "median_ms": round(ms, 3), **peak_memory(device),
            "torch": torch.__version__, "torchvision": torchvision.__version__}), flush=True)


def lifted(args: argparse.Namespace) -> None:
    import torch

    device = torch.device(args.device)
    loss_fn = lifted_loss()
    for m in (int(v) for v in args.sizes.split(",")):
        for c in (int(v) for v in args.dims.split(",")):
            features = (torch.randn(m, c, device=device) / c ** 0.5).requires_grad_()
            labels = pair_labels(m, device)

            def step(features=features, labels=labels) -> None:
                features.grad = None
                loss_fn(features, labels).backward()

            ms = time_ms(step, args.iterations, warmup=10, device=device)
            print(json.dumps({"loss": "pytorch-metric-learning LiftedStructureLoss",
                              "m": m, "c": c, "median_ms": round(ms, 4)}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    net = sub.add_parser("googlenet")
    net.add_argument("--batch", type=int, default=128)
    net.add_argument("--crop", type=int, default=227)
    net.add_argument("--iterations", type=int, default=20)
    layer = sub.add_parser("lifted")
    layer.add_argument("--sizes", default="128,256,512,1024")
    layer.add_argument("--dims", default="64,512")
    layer.add_argument("--iterations", type=int, default=100)
    for command in (net, layer):
        command.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    args = parser.parse_args()
    {"googlenet": googlenet, "lifted": lifted}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
