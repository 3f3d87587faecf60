"""Settings of the paper that several modules share, in one place."""

from __future__ import annotations

# The three losses the paper compares, and the batch each trains with: 128
# (64 pairs) for lifted and contrastive, 120 (40 triplets) for triplet.
METHODS = ("lifted", "contrastive", "triplet")
BATCH = {"lifted": 128, "contrastive": 128, "triplet": 120}

# The real datasets, the embedding sizes of the paper's figures, and the size
# the committed nets use: 512, the size at which later work tabulates the
# paper's numbers (data/paper_results.json; some later papers use 64).
PAPER_DATASETS = ("cub", "cars196", "sop")
EMBEDDINGS = (64, 128, 256, 512)
HEADLINE_EMBEDDING = {"cub": 512, "cars196": 512, "sop": 512}

# GoogLeNet input: 256x256 images, 227x227 crops, the ImageNet channel means
# (BGR) that Caffe's GoogLeNet subtracts.
IMAGE_SIZE = 256
CROP = 227
IMAGENET_MEAN_BGR = (104, 117, 123)

# Recall@K values reported per dataset.
RECALL_K = {
    "cub": (1, 2, 4, 8, 16, 32),
    "cars196": (1, 2, 4, 8, 16, 32),
    "sop": (1, 10, 100, 1000),
    "digits": (1, 2, 4, 8),
    "glyphs": (1, 2, 4, 8),
}

# The offline miniatures: the demo's small net, trained from scratch, and the
# sizes of its sweep: its fc1 has 256 units (nets/template.py DEMO_WIDTHS), so
# 16-128 stand to it as the paper's 64-512 to GoogLeNet's 1024-wide pool5.
DEMO_DATASETS = ("glyphs", "digits")
DEMO_EMBEDDING = 64
DEMO_EMBEDDINGS = (16, 32, 64, 128)
