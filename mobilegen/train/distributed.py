"""Data-parallel training under torchrun: one process per rank, DistributedDataParallel.

    torchrun --nproc-per-node N -m mobilegen train ...   (gloo on CPU, nccl on CUDA)

The run is the single-process run with N times the batch, split across ranks:
global step k uses the same N*B images (DistributedSampler over the same seeded
epoch permutation, set_epoch every epoch) and the same per-image draws (t, eps,
label dropout, augmentation seed) as one process with batch N*B, so after k steps
the weights agree with it up to float rounding (DDP averages the N gradients).
Rank r holds the images at global batch positions r, r+N, r+2N, ... (the sampler's
interleaving). Only rank 0 writes checkpoints, EMA copies and sample grids.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from mobilegen.errors import MobileGenError

TIMEOUT = timedelta(seconds=120)  # a rank that never arrives fails the run instead of hanging it


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def world_from_env() -> World:
    """The torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK); a plain run is World(0, 1, 0)."""
    try:
        world = World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as exc:
        raise MobileGenError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers (set by torchrun): {exc}") from None
    if not 0 <= world.rank < world.size:
        raise MobileGenError(f"RANK={world.rank} is not in [0, WORLD_SIZE={world.size})")
    return world


def init_world(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun set up; the device becomes cuda:LOCAL_RANK on CUDA."""
    world = world_from_env()
    if not world.distributed:
        return world, device
    import torch.distributed as dist

    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise MobileGenError(
                f"LOCAL_RANK {world.local_rank} but only {torch.cuda.device_count()} CUDA devices on this node; "
                "use --nproc-per-node <= the GPU count"
            )
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    return world, device


def close_world(world: World) -> None:
    if world.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def barrier(world: World) -> None:
    """Every rank waits here for the others (e.g. until rank 0 has written a file they read)."""
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()


def mean_over_ranks(value: float, world: World, device: torch.device) -> float:
    """The global batch's loss (what a single process with batch N*B reports)."""
    if not world.distributed:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world.size


class DistributedStepSampler(torch.utils.data.Sampler):
    """This rank's share of every global step start..end, as (index, seed) batches.

    Built on torch's DistributedSampler, seeded so its epoch permutation is the
    single-process StepSampler's; the per-item seeds are those of the item's
    position in the global batch, so augmentation matches the single-process run.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int, end: int, world: World):
        from torch.utils.data import DistributedSampler

        self.batch_size, self.seed, self.start, self.end, self.world = batch_size, seed, start, end, world
        self.sampler = DistributedSampler(
            range(n), num_replicas=world.size, rank=world.rank, shuffle=True, seed=seed * 100003, drop_last=True
        )
        self.per_epoch = max(1, len(self.sampler) // batch_size)
        if len(self.sampler) < batch_size:
            raise MobileGenError(
                f"{n} images cannot fill {world.size} ranks x --batch-size {batch_size}; lower --batch-size or --nproc-per-node"
            )

    def __len__(self) -> int:
        return self.end - self.start

    def __iter__(self):
        epoch_seen, mine = -1, None
        for step in range(self.start, self.end):
            epoch, k = divmod(step, self.per_epoch)
            if epoch != epoch_seen:
                self.sampler.set_epoch(epoch)
                epoch_seen, mine = epoch, list(self.sampler)
            idx = mine[k * self.batch_size : (k + 1) * self.batch_size]
            positions = [j * self.world.size + self.world.rank for j in range(len(idx))]  # in the global batch
            yield [(i, self.seed * 1_000_003 + step * 1009 + p) for i, p in zip(idx, positions)]


def weights_sha256(*models: torch.nn.Module) -> str:
    import hashlib

    h = hashlib.sha256()
    for model in models:
        for name, tensor in model.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def ranks_agree(world: World, *models: torch.nn.Module) -> list[str]:
    """Every rank's weight digest; raises if any rank's weights differ from rank 0's by a single bit."""
    digest = weights_sha256(*models)
    if not world.distributed:
        return [digest]
    import torch.distributed as dist

    digests: list[str | None] = [None] * world.size
    dist.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        raise MobileGenError(
            f"the ranks' weights diverged (sha256 per rank: {', '.join(d[:12] for d in digests)}); "
            "the run is not data-parallel any more"
        )
    return digests


def wrap_ddp(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """The module the training step calls: DDP around the model under torchrun, the model itself otherwise."""
    if not world.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # The UNets have parameters the forward pass never uses (student_v2's down3 conv, kept for the original's
    # checkpoint layout); without find_unused_parameters their gradient buckets are never reduced.
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
    )
