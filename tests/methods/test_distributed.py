"""Gather helpers: identity in one process; two gloo ranks end with identical MoCo queues."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from medfoundry.methods import build_method
from medfoundry.methods.distributed import (
    broadcast_,
    concat_all_gather,
    is_distributed,
    rank,
    world_size,
)
from medfoundry.nets import create_backbone

BATCH = 4


def test_helpers_are_identity_without_a_process_group() -> None:
    assert not is_distributed() and world_size() == 1 and rank() == 0
    t = torch.randn(3, 2)
    assert concat_all_gather(t) is t
    assert broadcast_(t) is t


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank_: int, world: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank_, world_size=world)
    try:
        gathered = concat_all_gather(torch.full((2, 3), float(rank_)))
        torch.manual_seed(0)  # the same model on every rank, as DDP would broadcast it
        model = build_method(
            "adam",
            create_backbone("resnet10", width=0.125),
            proj_hidden=32,
            proj_dim=16,
            queue_size=64,
            out_size=32,
        )
        initial = model.queue.clone()
        local_keys: list[torch.Tensor] = []
        model.key_projector.register_forward_hook(
            lambda _m, _i, out: local_keys.append(F.normalize(out.detach(), dim=1))
        )
        g = torch.Generator().manual_seed(100 + rank_)
        images = torch.randn(BATCH, 1, 64, 64, generator=g)  # different images per rank
        model(images, update=True, generator=g)
        torch.save(
            {
                "gathered": gathered,
                "initial": initial,
                "queue": model.queue.clone(),
                "ptr": model.queue_ptr.clone(),
                "keys": local_keys[0],
            },
            Path(out_dir) / f"rank{rank_}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_two_ranks_share_one_queue(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    expected = torch.cat([torch.zeros(2, 3), torch.ones(2, 3)])
    assert torch.equal(r0["gathered"], expected) and torch.equal(r1["gathered"], expected)
    assert torch.equal(r0["initial"], r1["initial"])  # seeded queue: same without communication
    assert torch.equal(r0["queue"], r1["queue"])
    assert r0["ptr"].item() == r1["ptr"].item() == 2 * BATCH
    assert not torch.allclose(r0["keys"], r1["keys"])
    torch.testing.assert_close(r0["queue"][:BATCH], r0["keys"])  # rank order
    torch.testing.assert_close(r0["queue"][BATCH : 2 * BATCH], r1["keys"])
    assert torch.equal(r0["queue"][2 * BATCH :], r0["initial"][2 * BATCH :])
