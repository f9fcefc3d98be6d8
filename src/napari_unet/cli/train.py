"""``napari-unet train``: train or fine-tune a model on the painted slices of a stack.

The command picks the starting point (a checkpoint, a preset, the built-in
model), checks the destination before minutes of training, drains the
trainer with a progress bar (first Ctrl-C keeps the model so far) and saves
the model, elsewhere when the destination fails at the end.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._exit import EXIT_FAILED, EXIT_OK, PROG, CLIError
from ._output import _err, _fmt_seconds, progress_bar
from ._signals import _ctrl_c, _shielded

# --class-balance words -> AnnotationSettings.balance
BALANCE_OPTIONS: dict[str, Any] = {"auto": "auto", "on": True, "off": False}


def cmd_train(args: argparse.Namespace) -> int:
    from ..io._saving import (
        DestinationError,
        DestinationExists,
        ModelNotSaved,
        check_destination,
        checkpoint_bytes,
        save_with_fallback,
    )
    from ..io.tiff import read_tiff
    from ..io.tiff_slices import TiffSlices
    from ..training.trainer import Trainer

    out = Path(args.output)
    try:  # now, not after minutes of training
        check_destination(out, overwrite=args.overwrite)
    except DestinationExists:
        raise CLIError(f"{out} exists; pass --overwrite to replace it") from None
    except DestinationError as exc:
        raise CLIError(str(exc)) from None
    if args.preset and args.from_:
        raise CLIError("--preset picks an architecture to train from scratch; it cannot be combined with --from")
    if args.resume and not args.from_:
        raise CLIError("--resume needs --from CHECKPOINT (the run to continue)")

    init, model_cfg, source = _starting_point(args)
    config = _training_config(args, init)

    reader = TiffSlices(args.image)
    try:
        try:
            labels = read_tiff(args.labels, lazy=False).data
        except (ValueError, OSError) as exc:
            raise CLIError(f"cannot read the labels {args.labels}: {exc}") from None
        trainer = Trainer(reader, labels, config, model=model_cfg, init=init, resume=args.resume)
        info = trainer.summary()
        try:  # the model's size is known now: is there room for it?
            check_destination(out, overwrite=True, need_bytes=checkpoint_bytes(info["parameters"]))
        except DestinationError as exc:
            raise CLIError(str(exc)) from None
        print(
            f"Training {source}: {info['parameters']:,} parameters on {info['device']}, "
            f"annotated slices {info['annotated_slices']}, validation on {info['validation']}, "
            f"{config.iterations} iterations"
            + ("." if config.time_limit_s is None else f" at most, or {config.time_limit_s / 60:g} minutes.")
        )
        try:
            result = _run_training(trainer)
        except Exception as exc:  # noqa: BLE001 (the model so far matters more than the type)
            # diverged or out of memory at iteration 4000: keep what was validated so far
            return _save_after_failure(trainer, out, exc)
    finally:
        reader.close()
    trained, final = result
    try:  # a failing write puts the model elsewhere rather than losing it
        saved = save_with_fallback(trained, out)
    except ModelNotSaved as exc:
        raise CLIError(str(exc)) from None
    best = trained.training.get("best_val_dice")
    best_text = "n/a" if best is None else f"{best:.3f}"
    if final.cancelled:
        print(
            f"Stopped at iteration {final.iteration} of {final.total} (Ctrl-C); saved the model "
            f"so far (iteration {trained.training.get('iteration')}, validation Dice {best_text}) "
            f"to {saved.path}."
        )
    else:
        print(
            f"Trained {final.iteration} iterations in {_fmt_seconds(final.elapsed_s)}; best validation "
            f"Dice {best_text} at iteration {trained.training.get('iteration')}; saved {saved.path}."
        )
    if saved.rescued:
        _err(
            f"{PROG}: error: could not save the model to {out}: {saved.reason}. The trained model "
            f"was saved to {saved.path} instead; move it where you want it."
        )
        return EXIT_FAILED
    return EXIT_OK


def _save_after_failure(trainer: Any, out: Path, exc: BaseException) -> int:
    """Training stopped on an error: save the weights kept at the last validation, if any."""
    from ..io._saving import ModelNotSaved, save_with_fallback

    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    kept = trainer.kept_model(stopped_by_error=reason)
    if kept is None:
        raise exc
    try:
        saved = save_with_fallback(kept, out)
    except ModelNotSaved as not_saved:
        raise CLIError(f"training stopped ({reason}) and {not_saved}") from None
    _err(
        f"{PROG}: error: training stopped at an error ({reason}); the model as validated at "
        f"iteration {kept.training['iteration']} was saved to {saved.path}."
    )
    return EXIT_FAILED


def _starting_point(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """What training starts from: (checkpoint or None, architecture or None, the words for it)."""
    from ..model.checkpoint import load_checkpoint
    from ..model.config import preset
    from ..model.pretrained import default_checkpoint
    from ..prediction.batch import resolve_model_path

    init = None
    model_cfg = None
    if args.from_:
        init = load_checkpoint(resolve_model_path(args.from_))
        source = f"fine-tuning {args.from_}" if not args.resume else f"resuming {args.from_}"
    elif args.preset:
        model_cfg = preset(args.preset)
        source = f"from scratch ({args.preset} network)"
    elif default_checkpoint() is not None:
        init = load_checkpoint(default_checkpoint())
        source = "fine-tuning the built-in default model"
    else:
        model_cfg = preset("default")
        source = "from scratch (default network; no pretrained model ships yet)"
    return init, model_cfg, source


def _training_config(args: argparse.Namespace, init: Any) -> Any:
    """The TrainingConfig from the flags, over the resumed run's recipe (with --resume)."""
    from dataclasses import fields, replace

    from ..training.annotations import AnnotationSettings
    from ..training.trainer import TrainingConfig

    base: dict[str, Any] = {}
    recipe = None
    if args.resume and init is not None:
        # continue the run with its whole recipe (augmentation and normalisation included)
        # unless told otherwise; --device always applies
        from ..training.trainer import HARDWARE_FIELDS

        recipe = init.training_config()
        if recipe is not None:
            skip = {"annotation", *HARDWARE_FIELDS}
            base = {f.name: getattr(recipe, f.name) for f in fields(TrainingConfig) if f.name not in skip}
    chosen = {
        "iterations": args.iterations,
        "batch_size": args.batch_size,
        "patch_size": args.patch_size,
        "learning_rate": args.lr,
        "seed": args.seed,
        "time_limit_s": None if args.minutes is None else args.minutes * 60.0,
        "input_slices": args.input_slices,
    }
    base.update({k: v for k, v in chosen.items() if v is not None})
    if "learning_rate" not in base and init is not None:
        from ..model.config import FINETUNE_LEARNING_RATE

        base["learning_rate"] = FINETUNE_LEARNING_RATE  # fine-tuning: keep what the model knows
    # a resumed run keeps how its labels were read unless a flag says otherwise
    saved = recipe.annotation if recipe is not None else AnnotationSettings()
    annotation = replace(
        saved,
        mode=args.mode or saved.mode,
        ignore_id=args.ignore_id if args.ignore_id is not None else saved.ignore_id,
        boundary_class=args.boundary_class or saved.boundary_class,
        balance=BALANCE_OPTIONS[args.class_balance] if args.class_balance else saved.balance,
    )
    config = TrainingConfig(annotation=annotation, device=args.device, **base)
    return config


def _run_training(trainer: Any) -> tuple[Any, Any]:
    """Drain the trainer with a progress bar; first Ctrl-C stops it and keeps the model as validated then."""
    total = trainer.config.iterations
    bar = progress_bar(total=total, initial=trainer.start_iteration, unit="it", desc="train")
    plain = bool(bar.disable)
    every = max(1, total // 10)
    last_val: float | None = None

    def stop() -> None:
        trainer.cancel()
        _err("\nStopping after this iteration and keeping the model (Ctrl-C again to abort).")

    final = None
    with _ctrl_c(stop) as presses, bar:
        events = iter(trainer)
        try:
            for event in events:
                if event.done:
                    final = event
                    break
                if event.val_metric is not None:
                    last_val = event.val_metric
                post = {"loss": f"{event.loss:.4f}"}
                if last_val is not None:
                    post["val_dice"] = f"{last_val:.3f}"
                if event.best_metric is not None:
                    post["best"] = f"{event.best_metric:.3f}"
                bar.set_postfix(post, refresh=False)
                bar.update(event.iteration - bar.n)
                if plain and (event.iteration % every == 0 or event.iteration == total):
                    _err(
                        f"iteration {event.iteration}/{total}  loss {event.loss:.4f}  "
                        + (f"val Dice {last_val:.3f}  " if last_val is not None else "")
                        + f"ETA {_fmt_seconds(event.eta_s)}"
                    )
        finally:
            # close the trainer here, not whenever the garbage collector gets to it: its
            # cleanup stops the batch thread, and a second Ctrl-C during it must abort
            with _shielded(presses):
                events.close()
    assert trainer.result is not None and final is not None
    return trainer.result, final
