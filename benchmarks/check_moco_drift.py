"""Micro-check of MoCo-v2's drift at CPU scale: loss and negative cosine every 50 steps.

Small enough to run in about a minute on 2 cores (ResNet-18 width 0.25, 64² views). It varies
one suspect at a time to find why the level-0 loss of `adam_cpu` rises again after its first
~130 steps, positive and negative cosines drifting up together (see docs/results.md, section 2):

    python benchmarks/check_moco_drift.py --data ../shared/data/kermany --images 1024 --queue 4096
    python benchmarks/check_moco_drift.py ... --schedule constant      # no decay
    python benchmarks/check_moco_drift.py ... --queue 1024 --images 4096  # no stale self-keys
    python benchmarks/check_moco_drift.py ... --bn-split 4             # shuffle-BN on one process
    python benchmarks/check_moco_drift.py ... --momentum 0.9

`--bn-split S` computes BatchNorm statistics per sub-batch of B/S images, the keys' sub-batches
drawn from a random permutation (what shuffle-BN does across GPUs), so a query and its key never
share batch statistics.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from medfoundry.data.normalize import XRAY_NORMALIZATION
from medfoundry.data.pretrain import collect_images, load_images
from medfoundry.methods import build_method
from medfoundry.nets import create_backbone
from medfoundry.train.schedules import cosine_lambda


class SplitBatch(nn.Module):
    """Run `module` per sub-batch (BN statistics per sub-batch); `shuffle` permutes first."""

    def __init__(self, module: nn.Module, splits: int, shuffle: bool) -> None:
        super().__init__()
        self.module, self.splits, self.shuffle = module, splits, shuffle
        self.out_dim = module.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.module(x)
        n = x.shape[0]
        perm = torch.randperm(n, device=x.device) if self.shuffle else torch.arange(n)
        out = torch.cat([self.module(c) for c in x[perm].chunk(self.splits)])
        return out[perm.argsort()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder of chest X-rays")
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--queue", type=int, default=4096)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.075)
    p.add_argument("--momentum", type=float, default=0.99)
    p.add_argument("--schedule", choices=["cosine", "constant"], default="cosine")
    p.add_argument("--bn-split", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    torch.manual_seed(a.seed)
    paths = collect_images([a.data])
    paths = paths[:: max(1, len(paths) // a.images)][: a.images]  # spread over the classes
    images = load_images(paths, 80, channels=1, normalization=dict(XRAY_NORMALIZATION))
    backbone = create_backbone(name="resnet18", width=0.25, in_channels=1)
    moco = build_method(
        "moco", backbone, out_size=64, proj_hidden=256, queue_size=a.queue, momentum=a.momentum
    )
    if a.bn_split > 1:
        moco.backbone = SplitBatch(moco.backbone, a.bn_split, shuffle=False)
        moco.key_backbone = SplitBatch(moco.key_backbone, a.bn_split, shuffle=True)
    params = [q for q in moco.parameters() if q.requires_grad]
    opt = torch.optim.SGD(params, lr=a.lr, momentum=0.9, weight_decay=1e-4)
    decay = cosine_lambda(a.steps, 0) if a.schedule == "cosine" else (lambda _s: 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, decay)
    gen = torch.Generator().manual_seed(a.seed)
    print(f"{len(images)} images, {vars(a)}")
    step, start, window = 0, time.time(), []
    while step < a.steps:
        order = torch.randperm(len(images), generator=gen)
        for i in range(0, len(images) - a.batch + 1, a.batch):
            out = moco(images[order[i : i + a.batch]], update=True)
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            sched.step()
            step += 1
            window.append([out[k].item() for k in ("loss", "pos_sim", "neg_sim")])
            if step % 50 == 0:
                loss, pos, neg = torch.tensor(window).mean(0).tolist()
                print(
                    f"step {step:4d}  loss {loss:.3f}  pos {pos:+.3f}  neg {neg:+.3f}  "
                    f"lr {sched.get_last_lr()[0]:.4f}  ({time.time() - start:.0f} s)",
                    flush=True,
                )
                window = []
            if step >= a.steps:
                break


if __name__ == "__main__":
    main()
