"""Few-slice training: a loop that can be iterated step by step or run to the end.

:class:`Trainer` is a generator of :class:`TrainEvent`s: a script drains it with
:func:`train`, a widget runs the same generator in a worker thread and turns
each event into a progress bar and plot point. Cancelling is cooperative
(checked every iteration) and always leaves the best model so far in
:attr:`Trainer.result`; GPU memory is handed back when the loop ends.
"""

from __future__ import annotations

import copy
import gc
import logging
import math
import queue
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping

import numpy as np
import torch

from . import devices
from ._validation import as_stack, check_finite, check_labels
from .annotations import (
    IGNORE,
    AnnotatedSlice,
    AnnotationSettings,
    class_names_for,
    n_classes_for,
    prepare_slices,
)
from .augment import AugmentConfig
from .checkpoint import TrainedModel, load_checkpoint, transfer_weights
from .config import FINETUNE_LEARNING_RATE, UNetConfig
from .errors import CheckpointError
from .losses import get_loss
from .model import UNet
from .normalization import Normalization
from .sampling import PatchSampler

logger = logging.getLogger(__name__)
__all__ = ["FINETUNE_LEARNING_RATE", "KeptWeights", "TrainEvent", "Trainer", "TrainingConfig", "train"]

LossName = Literal["weighted_ce", "ce", "dice", "dice_ce"]

#: TrainingConfig fields that say where and how fast a run goes, not what it learns: they
#: are left out of the recipe a checkpoint stores, so that a model trained on a GPU
#: resumes on a laptop with that machine's own settings.
HARDWARE_FIELDS = ("device", "amp", "prefetch")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


@dataclass
class KeptWeights:
    """The weights a run keeps (see ``TrainingConfig.keep``), copied to the CPU."""

    state: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    iteration: int
    metric: float | None  # their validation Dice


@dataclass(frozen=True)
class TrainingConfig:
    """Everything that decides how a model is trained (stored in its checkpoint).

    Defaults: AdamW at 1e-3 with a short warm-up and a cosine decay trains the
    default network from scratch in a few hundred iterations; when fine-tuning
    a checkpoint, a lower rate (:data:`FINETUNE_LEARNING_RATE`) keeps what it
    already knows.
    """

    iterations: int = 500
    batch_size: int = 4
    patch_size: int = 128  # output window edge; the input adds the network's context
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 25
    schedule: Literal["cosine", "constant"] = "cosine"
    loss: LossName = "weighted_ce"
    annotation: AnnotationSettings = field(default_factory=AnnotationSettings)
    foreground_fraction: float = 0.33
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    normalization: Normalization = field(default_factory=Normalization)
    val_fraction: float = 0.1
    val_every: int | None = None  # default: 20 validations per run
    # which validated weights the run returns: "last" (the end of the schedule, as
    # nnU-Net does) or "best" (the latest within selection_tolerance of the best
    # validation Dice). The foreground Dice of a few held-out slices is a poor guide to
    # boundaries: on ISBI it peaked early while later weights separated cells far
    # better (adapted Rand error 0.13-0.14 at the Dice peak vs 0.04-0.05 at the end)
    keep: Literal["last", "best"] = "last"
    selection_tolerance: float = 0.01
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    prefetch: int = 3

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "patch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        # the type checks below matter for configs rebuilt from a checkpoint (from_dict),
        # which could otherwise carry a string or a list into the training loop
        for name in ("learning_rate", "weight_decay", "foreground_fraction", "val_fraction",
                     "selection_tolerance"):
            v = getattr(self, name)
            if not _is_number(v) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not _is_int(self.warmup) or self.warmup < 0:
            raise ValueError(f"warmup must be an integer >= 0, got {self.warmup!r}")
        if self.val_every is not None and (not _is_int(self.val_every) or self.val_every < 1):
            raise ValueError(f"val_every must be a positive integer or None, got {self.val_every!r}")
        if not _is_int(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.annotation, AnnotationSettings):
            raise ValueError(f"annotation must be AnnotationSettings, got {type(self.annotation).__name__}")
        if not isinstance(self.normalization, Normalization):
            raise ValueError(f"normalization must be Normalization, got {type(self.normalization).__name__}")
        if self.augment is not None and not isinstance(self.augment, AugmentConfig):
            raise ValueError(f"augment must be AugmentConfig or None, got {type(self.augment).__name__}")
        if not 0.0 <= self.val_fraction < 0.9:
            raise ValueError(f"val_fraction must be in [0, 0.9), got {self.val_fraction}")
        if self.keep not in ("last", "best"):
            raise ValueError(f"keep must be 'last' or 'best', got {self.keep!r}")
        if not 0.0 <= self.selection_tolerance <= 1.0:
            raise ValueError(f"selection_tolerance must be in [0, 1], got {self.selection_tolerance}")
        if not 0.0 <= self.foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must be in [0, 1], got {self.foreground_fraction}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        get_loss(self.loss)  # validates the name
        if self.device not in devices.DEVICE_CHOICES and not str(self.device).startswith("cuda:"):
            raise ValueError(f"device must be one of {devices.DEVICE_CHOICES}, got {self.device!r}")

    def to_dict(self, *, recipe: bool = False) -> dict[str, Any]:
        """Plain values (nested settings as dicts) that :meth:`from_dict` turns back into this.

        ``recipe=True`` leaves out :data:`HARDWARE_FIELDS`: what a checkpoint stores.
        """
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["annotation"] = asdict(self.annotation)
        d["normalization"] = self.normalization.to_dict()
        d["augment"] = None if self.augment is None else self.augment.to_dict()
        if recipe:
            for name in HARDWARE_FIELDS:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingConfig:
        """Inverse of :meth:`to_dict`; missing keys take their defaults, unknown keys are an
        error (a typo must not silently train with a default)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"training settings must be a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown training settings {sorted(map(str, unknown))}; known: {sorted(known)}")
        values = dict(data)
        nested: dict[str, Callable[[Mapping[str, Any]], Any]] = {
            "annotation": _annotation_from_dict,
            "normalization": _normalization_from_dict,
            "augment": AugmentConfig.from_dict,
        }
        for name, build in nested.items():
            if isinstance(values.get(name), Mapping):
                try:
                    values[name] = build(values[name])
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"invalid {name} settings: {exc}") from None
        return cls(**values)


def _annotation_from_dict(data: Mapping[str, Any]) -> AnnotationSettings:
    known = {f.name for f in fields(AnnotationSettings)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown keys {sorted(map(str, unknown))}; known: {sorted(known)}")
    return AnnotationSettings(**data)


def _normalization_from_dict(data: Mapping[str, Any]) -> Normalization:
    known = {f.name for f in fields(Normalization)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown keys {sorted(map(str, unknown))}; known: {sorted(known)}")
    return Normalization.from_dict(dict(data))


@dataclass(frozen=True)
class TrainEvent:
    """Progress of one training iteration (and the final one with ``done=True``)."""

    iteration: int
    total: int
    loss: float
    lr: float
    patches_per_s: float
    elapsed_s: float
    val_metric: float | None = None  # foreground Dice on held-out pixels, when validated
    best_metric: float | None = None
    is_best: bool = False
    done: bool = False
    cancelled: bool = False
    notice: str | None = None  # a setting the trainer changed on its own (out of memory)

    @property
    def eta_s(self) -> float:
        if self.iteration <= 0:
            return float("nan")
        return self.elapsed_s / self.iteration * max(0, self.total - self.iteration)


@dataclass
class _Split:
    """Training slices with the validation pixels removed, and the validation region."""

    train: list[AnnotatedSlice]
    val: list[tuple[int, tuple[slice, slice], np.ndarray]]  # (z, region, target in region)
    held_out: bool


def _split(slices: list[AnnotatedSlice], fraction: float) -> _Split:
    """Hold out annotated pixels for validation.

    When ``fraction`` of the annotated slices is at least one slice, whole
    slices are held out (evenly spread). Otherwise an edge band of each slice
    is held out instead, so that even one painted slice gives an honest
    validation figure, and a few painted slices do not lose a whole one of
    them to validation (1 of 5 is 20 % of the labels, not 10 %). With
    ``fraction == 0`` (or when no band holds two classes) the model is
    validated on its training pixels (``held_out=False``).
    """
    if fraction <= 0:
        return _Split(slices, [(s.z, (slice(None), slice(None)), s.target) for s in slices], False)
    n_val = int(fraction * len(slices) + 1e-9)
    if n_val >= 1 and len(slices) >= 3:
        idx = set(np.linspace(0, len(slices) - 1, n_val + 2).round().astype(int)[1:-1].tolist())
        if len(idx) < n_val:
            idx = set(range(len(slices) - n_val, len(slices)))
        train = [s for i, s in enumerate(slices) if i not in idx]
        val = [(s.z, (slice(None), slice(None)), s.target) for i, s in enumerate(slices) if i in idx]
        return _Split(train, val, True)
    train, val = [], []
    for s in slices:
        h, w = s.target.shape
        bh, bw = max(1, int(math.ceil(fraction * h))), max(1, int(math.ceil(fraction * w)))
        bands = [
            (slice(h - bh, h), slice(0, w)),
            (slice(0, h), slice(w - bw, w)),
            (slice(0, bh), slice(0, w)),
            (slice(0, h), slice(0, bw)),
        ]
        for region in bands:
            t = s.target[region]
            if len({int(c) for c in np.unique(t)} - {IGNORE}) >= 2:
                tgt = s.target.copy()
                tgt[region] = IGNORE
                wgt = s.weight.copy()
                wgt[region] = 0.0
                if (tgt != IGNORE).any():
                    train.append(AnnotatedSlice(s.z, tgt, wgt, s.n_objects))
                    val.append((s.z, region, t))
                    break
        else:
            train.append(s)
    if not val:
        return _Split(slices, [(s.z, (slice(None), slice(None)), s.target) for s in slices], False)
    return _Split(train, val, True)


def foreground_dice(pred: np.ndarray, target: np.ndarray, n_classes: int) -> float:
    """Mean Dice over foreground classes present in ``target`` (ignored pixels skipped)."""
    valid = target != IGNORE
    p, t = pred[valid], target[valid]
    scores = []
    for c in range(1, n_classes):
        tc, pc = t == c, p == c
        denom = tc.sum() + pc.sum()
        if tc.any():
            scores.append(2.0 * np.logical_and(tc, pc).sum() / denom)
    return float(np.mean(scores)) if scores else float("nan")


class Trainer:
    """Train a U-Net on the annotated slices of a stack.

    Args:
        image: (Z, Y, X) or (Y, X) stack (uint8/uint16/float; lazy arrays are fine).
        labels: annotations of the same shape; see :mod:`napari_unet.annotations`.
        config: training settings.
        model: architecture for training from scratch (default :class:`UNetConfig`).
        init: checkpoint path or :class:`TrainedModel` to fine-tune from. Its
            architecture is kept; the output head is re-initialised when the
            number of classes differs.
        resume: continue ``init``'s own run (optimizer state and iteration count)
            up to ``config.iterations`` instead of starting a new schedule.

    Iterate over the trainer to run it; :attr:`result` holds the best model.
    """

    def __init__(
        self,
        image: Any,
        labels: Any,
        config: TrainingConfig | None = None,
        *,
        model: UNetConfig | None = None,
        init: str | Path | TrainedModel | None = None,
        resume: bool = False,
    ) -> None:
        self.config = cfg = config or TrainingConfig()
        self.stack = as_stack(image, "image")
        self.labels = check_labels(labels, tuple(self.stack.shape), "labels")
        self.device = devices.resolve_device(cfg.device)
        settings = cfg.annotation
        self.slices = prepare_slices(self.labels, settings)
        n_classes = n_classes_for(self.labels, settings)

        self.start_iteration = 0
        self._optimizer_state: dict[str, Any] | None = None
        if init is not None:
            base = load_checkpoint(init) if isinstance(init, (str, Path)) else init
            if model is not None and model != base.config:
                raise ValueError(
                    "give either a model config (train from scratch) or a checkpoint to start from, "
                    "not both"
                )
            mcfg = base.config.with_classes(n_classes)
            self.model = UNet(mcfg)
            skipped = transfer_weights(base.model, self.model)
            self.reinitialised = skipped
            if resume:
                if skipped:
                    raise CheckpointError(
                        "cannot resume: the checkpoint was trained for different classes; "
                        "fine-tune from it instead (resume=False)"
                    )
                self.start_iteration = int(base.training.get("iteration", 0))
                self._optimizer_state = base.optimizer_state
                if self.start_iteration >= cfg.iterations:
                    raise ValueError(
                        f"the checkpoint already ran {self.start_iteration} iterations; ask for more "
                        f"than that to resume (iterations={cfg.iterations})"
                    )
        else:
            if resume:
                raise ValueError("resume needs a checkpoint to resume from (init=...)")
            torch.manual_seed(cfg.seed)
            self.model = UNet((model or UNetConfig()).with_classes(n_classes))
            self.reinitialised = []
        if self.model.config.in_channels != 1:
            raise ValueError("only single-channel (grey) images are supported for training")

        self.normalization = cfg.normalization.fit(self.stack)
        self.class_names = class_names_for(n_classes, settings)
        geom = self.model.geometry
        self.input_size = geom.input_size_for_output(cfg.patch_size)
        self.output_size = geom.output_size(self.input_size)
        self.split = _split(self.slices, cfg.val_fraction)
        self.val_every = cfg.val_every or max(10, cfg.iterations // 20)
        self.result: TrainedModel | None = None
        #: The weights the run keeps so far (updated at each validation, see ``keep``).
        self.kept: KeptWeights | None = None
        self.history: list[TrainEvent] = []
        self._cancel = threading.Event()
        #: Patches per forward pass; lowered when the device runs out of memory.
        self.micro_batch = self.config.batch_size
        #: What the trainer changed on its own, for the user.
        self.notices: list[str] = []

    # -- public controls -------------------------------------------------
    def cancel(self) -> None:
        """Ask the loop to stop after the current iteration (keeps the best model)."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def summary(self) -> dict[str, Any]:
        return {
            "annotated_slices": [s.z for s in self.slices],
            "validation": "held-out" if self.split.held_out else "training pixels",
            "input_size": self.input_size,
            "output_size": self.output_size,
            "device": str(self.device),
            "parameters": self.model.n_parameters(),
        }

    # -- the loop ----------------------------------------------------------
    def _normalised(self, z: int) -> np.ndarray:
        sl = np.asarray(self.stack[z])
        check_finite(sl, "image", f" (slice {z})")
        return Normalization.apply(sl, self.normalization.low, self.normalization.high)

    def _sampler(self) -> PatchSampler:
        cfg = self.config
        train = self.split.train
        return PatchSampler(
            [self._normalised(s.z) for s in train],
            [s.target for s in train],
            [s.weight for s in train],
            input_size=self.input_size,
            output_size=self.output_size,
            foreground_fraction=cfg.foreground_fraction,
            scribbles=cfg.annotation.mode == "scribbles",
            augment=cfg.augment,
            seed=cfg.seed,
            zs=[s.z for s in train],
        )

    def _lr_factor(self, it: int) -> float:
        cfg = self.config
        warm = min(cfg.warmup, max(1, cfg.iterations // 10))
        if it < warm:
            return (it + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        progress = (it - warm) / max(1, cfg.iterations - warm)
        return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def _keep(self, val: float, best: float | None) -> bool:
        """Whether weights validated at ``val`` replace the kept ones: always for
        ``keep="last"``; for ``"best"`` when within ``selection_tolerance`` of the best
        Dice seen (later weights win such ties)."""
        if self.config.keep == "last" or best is None or math.isnan(best):
            return True
        return not math.isnan(val) and val >= best - self.config.selection_tolerance

    def _validate(self) -> float:
        from .overlap_tile import TilePredictor

        self.model.eval()
        predictor = TilePredictor(
            self.model, batch_size=self.config.batch_size, device=self.device, amp=self.config.amp
        )
        scores = []
        margin = self.model.margin
        for z, (ry, rx), target in self.split.val:
            img = self._normalised(z)
            h, w = img.shape
            y0, y1, _ = ry.indices(h)
            x0, x1, _ = rx.indices(w)
            # predict the region with real context around it, then cut the region out
            cy0, cx0 = max(0, y0 - margin), max(0, x0 - margin)
            cy1, cx1 = min(h, y1 + margin), min(w, x1 + margin)
            probs = predictor.predict_slice(img[cy0:cy1, cx0:cx1])
            pred = probs.argmax(0)[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0]
            scores.append(foreground_dice(pred, target, self.model.config.n_classes))
        self.model.train()
        valid = [s for s in scores if not math.isnan(s)]
        return float(np.mean(valid)) if valid else float("nan")

    def _step(
        self,
        model: UNet,
        batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        opt: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None,
        loss_fn: Callable[..., torch.Tensor],
    ) -> tuple[float, str | None]:
        """One optimiser step; returns ``(loss, notice)``.

        Out of device memory, the batch is pushed through in smaller pieces whose
        gradients add up to the batch's (a smaller batch per forward pass, the
        same step), halving until it fits; the notice says so. The smaller size
        is kept for the rest of the run.
        """
        x, t, w = batch
        notice = None
        while True:
            n, step = x.shape[0], min(self.micro_batch, x.shape[0])
            try:
                opt.zero_grad(set_to_none=True)
                total = 0.0
                for i in range(0, n, step):
                    with devices.autocast(self.device, self.config.amp):
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
                return total, notice
            except Exception as exc:
                if not devices.is_out_of_memory(exc) or step == 1:
                    raise
                opt.zero_grad(set_to_none=True)
                devices.release_memory(self.device)
                self.micro_batch = max(1, step // 2)
                notice = (
                    f"Out of {self.device.type} memory: training on {self.micro_batch} patch(es) "
                    f"per pass (the batch of {n} is split; the step is the same)."
                )
                logger.warning(notice)

    def _producer(self, sampler: PatchSampler, q: queue.Queue, stop: threading.Event, n: int) -> None:
        """Prepare batches in a background thread (numpy/scipy release the GIL)."""
        pin = self.device.type == "cuda"
        try:
            for _ in range(n):
                x, t, w = sampler.sample(self.config.batch_size)
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

    def __iter__(self) -> Iterator[TrainEvent]:
        cfg = self.config
        dev = self.device
        model = self.model.to(dev)
        channels_last = dev.type == "cuda"
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        if self._optimizer_state is not None:
            opt.load_state_dict(self._optimizer_state)
        amp_dtype = devices.autocast_dtype(dev) if cfg.amp else None
        scaler = devices.grad_scaler(dev, amp_dtype)
        loss_fn = get_loss(cfg.loss)
        torch.manual_seed(cfg.seed + self.start_iteration)

        sampler = self._sampler()
        n_steps = cfg.iterations - self.start_iteration
        q: queue.Queue = queue.Queue(maxsize=max(1, cfg.prefetch))
        stop = threading.Event()
        producer = threading.Thread(target=self._producer, args=(sampler, q, stop, n_steps), daemon=True)
        producer.start()

        best_metric: float | None = None  # the best validation Dice seen

        def consider(val: float, iteration: int, optimizer: torch.optim.Optimizer) -> bool:
            """Keep the current weights if ``_keep`` says so; returns whether it did."""
            nonlocal best_metric
            if not self._keep(val, best_metric):
                return False
            best_metric = val if best_metric is None or math.isnan(best_metric) else max(best_metric, val)
            self.kept = KeptWeights(
                _cpu_state(model.state_dict()), _cpu_state(optimizer.state_dict()), iteration, val
            )
            return True

        t0 = time.perf_counter()
        window: list[tuple[float, int]] = []
        it = self.start_iteration
        last = None
        try:
            for it in range(self.start_iteration, cfg.iterations):
                if self._cancel.is_set():
                    break
                item = q.get()
                if isinstance(item, BaseException):
                    raise item
                x, t, w = (b.to(dev, non_blocking=True) for b in item)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                lr = cfg.learning_rate * self._lr_factor(it)
                for group in opt.param_groups:
                    group["lr"] = lr
                loss_value, notice = self._step(model, (x, t, w), opt, scaler, loss_fn)
                if not math.isfinite(loss_value):
                    raise FloatingPointError(
                        f"training diverged at iteration {it + 1} (loss {loss_value}); lower the "
                        "learning rate"
                    )
                now = time.perf_counter()
                window.append((now, cfg.batch_size))
                window = window[-20:]
                rate = (
                    sum(b for _, b in window[1:]) / (window[-1][0] - window[0][0])
                    if len(window) > 1 and window[-1][0] > window[0][0]
                    else cfg.batch_size / max(now - t0, 1e-9)
                )
                val = None
                is_best = False
                if (it + 1) % self.val_every == 0 or it + 1 == cfg.iterations:
                    val = self._validate()
                    is_best = consider(val, it + 1, opt)
                if notice is not None:
                    self.notices.append(notice)
                last = TrainEvent(
                    notice=notice,
                    iteration=it + 1,
                    total=cfg.iterations,
                    loss=loss_value,
                    lr=lr,
                    patches_per_s=rate,
                    elapsed_s=now - t0,
                    val_metric=val,
                    best_metric=best_metric,
                    is_best=is_best,
                )
                self.history.append(last)
                yield last
            cancelled = self._cancel.is_set()
            done_it = last.iteration if last is not None else self.start_iteration
            if cancelled and last is not None and last.val_metric is None:
                # validate the current weights once more so nothing better is lost
                consider(self._validate(), last.iteration, opt)
            if self.kept is None:  # cancelled before the first iteration
                self.kept = KeptWeights(_cpu_state(model.state_dict()), None, self.start_iteration, None)
            self.model.load_state_dict(self.kept.state)
            self.result = self.kept_model(iterations_run=done_it)
            final = TrainEvent(
                iteration=done_it,
                total=cfg.iterations,
                loss=last.loss if last else float("nan"),
                lr=last.lr if last else 0.0,
                patches_per_s=last.patches_per_s if last else 0.0,
                elapsed_s=time.perf_counter() - t0,
                val_metric=None,
                best_metric=best_metric,
                done=True,
                cancelled=cancelled,
            )
            self.history.append(final)
            yield final
        finally:
            stop.set()
            producer.join(timeout=5)
            del opt, scaler
            self.model.to("cpu")
            if channels_last:
                self.model.to(memory_format=torch.contiguous_format)
            gc.collect()
            devices.release_memory(dev)

    # -- what a run gives back ----------------------------------------------
    def _wrap(
        self,
        net: UNet,
        training: dict[str, Any],
        optimizer_state: dict[str, Any] | None = None,
        normalization: Normalization | None = None,
    ) -> TrainedModel:
        """The one place a network of this run becomes a :class:`TrainedModel`."""
        net.eval()
        return TrainedModel(
            model=net,
            normalization=self.normalization if normalization is None else normalization,
            annotation=self.config.annotation,
            class_names=list(self.class_names),
            training=training,
            optimizer_state=optimizer_state,
        )

    def kept_model(
        self, *, iterations_run: int | None = None, stopped_by_error: str | None = None
    ) -> TrainedModel | None:
        """A fresh CPU model with the kept weights and how they were made; None before any.

        The trainer's result at the end of a run; after an error inside the loop
        (say, out of memory at iteration 400) the panels call it to keep what was
        learnt up to the last validation.
        """
        kept = self.kept
        if kept is None:
            return None
        net = UNet(self.model.config)
        net.load_state_dict(kept.state)
        metric = kept.metric
        training: dict[str, Any] = {
            # the whole recipe, typed back by TrainedModel.training_config() (--resume uses it)
            "settings": self.config.to_dict(recipe=True),
            "iteration": int(kept.iteration),
            "iterations_run": int(kept.iteration if iterations_run is None else iterations_run),
            "best_val_dice": None if metric is None or math.isnan(metric) else float(metric),
            "validation": "held-out" if self.split.held_out else "training pixels",
            "annotated_slices": [int(s.z) for s in self.slices],
            "device": str(self.device),
        }
        if stopped_by_error is not None:
            training["stopped_by_error"] = stopped_by_error
        return self._wrap(net, training, kept.optimizer)

    def snapshot(self) -> TrainedModel:
        """The weights as they are right now, frozen, for a live preview between iterations.

        A copy on the training device (no transfer); percentile statistics are
        fixed to the training stack's so a preview never rescans the stack.
        """
        norm = self.normalization
        if norm.method == "percentile":
            norm = replace(norm, method="fixed")
        return self._wrap(copy.deepcopy(self.model), {}, normalization=norm)


def _cpu_state(state: Any) -> Any:
    """Deep copy of an optimizer state with tensors on the CPU."""
    if isinstance(state, dict):
        return {k: _cpu_state(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_cpu_state(v) for v in state]
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    return state


def train(
    image: Any,
    labels: Any,
    config: TrainingConfig | None = None,
    *,
    model: UNetConfig | None = None,
    init: str | Path | TrainedModel | None = None,
    resume: bool = False,
    callback: Callable[[TrainEvent], None] | None = None,
    **overrides: Any,
) -> TrainedModel:
    """Train to completion and return the best model.

    Keyword ``overrides`` replace fields of ``config``, e.g.
    ``train(image, labels, iterations=300, device="cuda")``.
    """
    config = config or TrainingConfig()
    if overrides:
        config = replace(config, **overrides)
    trainer = Trainer(image, labels, config, model=model, init=init, resume=resume)
    for event in trainer:
        if callback is not None:
            callback(event)
    assert trainer.result is not None
    return trainer.result
