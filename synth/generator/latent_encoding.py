"""Encoding the latent cache's chunks: the VAE posterior (mean, std) of consecutive rows into memory-mapped arrays,
each chunk marked done only once its rows are on disk, shared out over the processes of an Accelerator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch


class ProcessGroup:
    """The few process-group calls the build needs (an Accelerator, or a single process)."""

    def __init__(self, accelerator=None) -> None:
        self.acc = accelerator
        self.rank = accelerator.process_index if accelerator is not None else 0
        self.world = accelerator.num_processes if accelerator is not None else 1
        self.main = accelerator.is_main_process if accelerator is not None else True
        self.device = accelerator.device if accelerator is not None else torch.device("cpu")

    def barrier(self) -> None:
        if self.acc is not None:
            self.acc.wait_for_everyone()

    def main_key(self, key: str, log: Callable[[str], None]) -> str:
        """The main process's cache key on every process: one folder for all, whatever last-bit differences
        a rank's VAE copy has (its latents come from the main process's arrays, so all ranks train on the same)."""
        if self.acc is None or self.world == 1:
            return key
        from accelerate.utils import broadcast_object_list

        shared = broadcast_object_list([key], from_process=0)[0]
        if shared != key:
            print(
                f"note: latent cache: the VAE of process {self.rank} differs from process 0's (key {key} vs "
                f"{shared}); "
                "using process 0's latents",
                flush=True,
            )
        return shared


@torch.no_grad()
def encode_chunks(
    vae,
    dataset,
    work: Path,
    shape,
    chunks: list[int],
    bs: int,
    ctx: ProcessGroup,
    num_workers: int,
    show: bool,
    to_vae_input,
) -> None:
    """Encode ``chunks`` (lists of ``bs`` consecutive rows) into the work folder's memory-mapped arrays."""
    n = shape[0]
    mean = np.load(work / "mean.npy", mmap_mode="r+")
    std = np.load(work / "std.npy", mmap_mode="r+")
    batches = [list(range(c * bs, min(n, (c + 1) * bs))) for c in chunks]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=num_workers)
    was_training, device = vae.training, ctx.device
    first = next(vae.parameters())
    orig_device, orig_dtype = first.device, first.dtype
    _move(vae.eval(), device, torch.float32)
    bar = _progress(show, len(batches))
    try:
        for c, rows, batch in zip(chunks, batches, loader):
            dist = vae.encode(to_vae_input(batch["pixel_values"]).to(device, torch.float32)).latent_dist
            lo, hi = rows[0], rows[-1] + 1
            mean[lo:hi] = dist.mean.float().cpu().numpy()
            std[lo:hi] = dist.std.float().cpu().numpy()
            mean.flush()
            std.flush()
            (work / "done" / f"{c:08d}").touch()  # only after the rows are on disk
            if bar is not None:
                bar[0].advance(bar[1])
    finally:
        if bar is not None:
            bar[0].stop()
        _move(vae, orig_device, orig_dtype).train(was_training)
        del mean, std


def _move(module, device, dtype):
    """``module.to`` only for what differs (diffusers warns on every dtype cast, even a no-op one)."""
    p = next(module.parameters())
    if p.device != torch.device(device):
        module.to(device)
    if p.dtype != dtype:
        module.to(dtype=dtype)
    return module


def _progress(show: bool, total: int):
    if not show:
        return None
    from synth.progress import progress_bar

    bar = progress_bar("encoding latents", "chunks", eta_label="ETA", transient=False)
    bar.start()
    return bar, bar.add_task("encode", total=total)
