"""LoRA under DistributedDataParallel: two CPU processes (gloo) train one adapter together.

Each process sees different data. DDP averages the adapter gradients across processes, so both
must end with identical adapters, equal to training one process on both batches; the frozen base
must not move at all.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import minilora

WORLD_SIZE, STEPS, BATCH = 2, 6, 16


def make_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2)
    )
    return minilora.add_lora(model, ["0", "2"], r=2, alpha=4)


def batches(rank: int):
    """The data of process ``rank``: different in every process, the same on every run."""
    gen = torch.Generator().manual_seed(100 + rank)
    return [(torch.randn(BATCH, 8, generator=gen), torch.randn(BATCH, 2, generator=gen))
            for _ in range(STEPS)]  # fmt: skip


def train(model, module, data) -> None:
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.1)
    for x, y in data:
        loss = (model(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        model = make_model()
        ddp = DistributedDataParallel(model)
        train(ddp, model, batches(rank))
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, os.path.join(out_dir, f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_end_with_identical_adapters(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    states = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(WORLD_SIZE)]
    start = make_model().state_dict()
    lora_keys = [k for k in start if k.endswith(("lora_A", "lora_B"))]
    assert len(lora_keys) == 4
    for key in start:
        assert torch.equal(states[0][key], states[1][key]), key  # identical in both processes
        if key in lora_keys:
            assert not torch.equal(states[0][key], start[key]), key  # the adapter trained
        else:
            assert torch.equal(states[0][key], start[key]), key  # the base did not move
    # DDP averaged the gradients: the same as one process on both halves of every batch.
    reference = make_model()
    pairs = zip(batches(0), batches(1), strict=True)
    both = [(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])) for a, b in pairs]
    train(reference, reference, both)
    for key in lora_keys:
        torch.testing.assert_close(states[0][key], reference.state_dict()[key], rtol=0, atol=1e-6)
