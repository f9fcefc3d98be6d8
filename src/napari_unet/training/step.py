"""One training step: the batches it is fed, its learning rate, and the optimiser step itself.

Batches are made in a background thread (:class:`BatchFeed`) so that sampling and
augmentation overlap the forward/backward pass; the step (:func:`optimiser_step`)
survives running out of device memory by splitting the batch.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from typing import Callable

import torch

from .. import devices
from .sampling import PatchSampler

logger = logging.getLogger(__name__)
__all__ = ["BatchFeed", "lr_factor", "optimiser_step"]

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def lr_factor(it: int, iterations: int, warmup: int, schedule: str, time_fraction: float = 0.0) -> float:
    """The learning rate at (0-based) iteration ``it`` as a fraction of the configured one:
    a linear warm-up (at most a tenth of the run), then constant or a cosine decay to 1 %.

    ``time_fraction``: the share of a time budget already spent; the decay follows
    it when it is further along than the iterations.
    """
    warm = min(warmup, max(1, iterations // 10))
    if it < warm:
        return (it + 1) / warm
    if schedule == "constant":
        return 1.0
    progress = max((it - warm) / max(1, iterations - warm), time_fraction)
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def optimiser_step(
    model: torch.nn.Module,
    batch: Batch,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    loss_fn: Callable[..., torch.Tensor],
    *,
    device: torch.device,
    amp: bool,
    micro_batch: int,
) -> tuple[float, str | None, int]:
    """One optimiser step; returns ``(loss, notice, micro_batch)``.

    Out of device memory, the batch is pushed through in smaller pieces whose
    gradients add up to the batch's (a smaller batch per forward pass, the
    same step), halving until it fits; the notice says so. The returned
    ``micro_batch`` is the piece size that fitted, for the caller to keep for
    the rest of the run.
    """
    x, t, w = batch
    notice = None
    while True:
        n, step = x.shape[0], min(micro_batch, x.shape[0])
        logits = loss = None
        try:
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for i in range(0, n, step):
                with devices.autocast(device, amp):
                    logits = model(x[i : i + step])
                loss = loss_fn(logits, t[i : i + step], w[i : i + step])
                if step < n:  # the pieces' mean losses, weighted to the batch's mean
                    loss = loss * (min(step, n - i) / n)
                (scaler.scale(loss) if scaler is not None else loss).backward()
                total += float(loss.detach())
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            return total, notice, micro_batch
        except Exception as exc:
            if not devices.is_out_of_memory(exc) or step == 1:
                raise
        # out of memory: free the failed pass (its graph and activations) before retrying;
        # out here the exception's traceback no longer pins the frames that hold them
        logits = loss = None  # noqa: F841
        opt.zero_grad(set_to_none=True)
        devices.release_memory(device)
        micro_batch = max(1, step // 2)
        notice = (
            f"Out of {device.type} memory: training on {micro_batch} patch(es) "
            f"per pass (the batch of {n} is split; the step is the same)."
        )
        logger.warning(notice)


def batch_producer(
    sampler: PatchSampler, q: queue.Queue, stop: threading.Event, n: int, batch_size: int, pin: bool
) -> None:
    """Prepare ``n`` batches into ``q`` until ``stop`` (numpy/scipy release the GIL).

    An error is put on the queue so that it surfaces in the training thread.
    """
    try:
        for _ in range(n):
            x, t, w = sampler.sample(batch_size)
            batch = tuple(torch.from_numpy(a) for a in (x, t, w))
            if pin:
                batch = tuple(b.pin_memory() for b in batch)
            while not stop.is_set():
                try:
                    q.put(batch, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return
    except BaseException as exc:  # surfaced in the training thread
        q.put(exc)


class BatchFeed:
    """``n`` batches from ``sampler``, made ahead (up to ``prefetch``) in a daemon thread.

    :meth:`close` stops the thread; a run that ends early (cancel, error) must call it
    so that no producer is left blocked on a full queue.
    """

    def __init__(self, sampler: PatchSampler, n: int, *, batch_size: int, prefetch: int, pin: bool) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        #: How many batches past the last one taken the producer may have started:
        #: the queue's batches and the one it is blocked putting.
        self.ahead = max(1, prefetch) + 1
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=batch_producer, args=(sampler, self._queue, self._stop, n, batch_size, pin), daemon=True
        )
        self._thread.start()

    def get(self) -> Batch:
        """The next batch (CPU tensors); re-raises the producer's error."""
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Throughput:
    """Patches per second over the last 20 steps (since the start before there are two)."""

    def __init__(self, t0: float) -> None:
        self._t0 = t0
        self._window: list[tuple[float, int]] = []

    def add(self, now: float, patches: int) -> float:
        """Record ``patches`` done at ``now``; returns the current rate."""
        self._window.append((now, patches))
        window = self._window = self._window[-20:]
        if len(window) > 1 and window[-1][0] > window[0][0]:
            return sum(b for _, b in window[1:]) / (window[-1][0] - window[0][0])
        return patches / max(now - self._t0, 1e-9)
