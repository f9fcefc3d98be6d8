"""napari dock widgets of napari-unet (Train, Segment, Batch).

Nothing is imported here: napari imports a widget module only when the user
opens that widget, and the widget modules import torch and the engine lazily,
so that napari starts fast with the plugin installed.

Layout of this sub-package:

- ``_layers``: napari layers -> arrays for the engine (level 0, scale,
  translate, current slice) and result layers back (names, overwrite).
- ``_jobs``: the generators that run in napari ``thread_worker``s. They use
  the engine only and never touch Qt or layers.
- ``_state``: the last trained model, shared by the Train and Segment widgets
  of one viewer.
- ``_plot``: the live loss / validation plot (``_plot_figure``: its matplotlib figure, drawn on a background thread).
- ``_common``: the base class the panels share (status line, device
  choices, running a job with a Start/Cancel button).
- ``_job_runner``, ``_job_status``, ``_job_model_source``: the parts of that base
  class (worker start/cancel/delivery; status and revalidation; model choice).
- ``_choices``: the words and the option widgets Segment and Batch share (one place).
- ``_correct``, ``_correct_apply``, ``_correct_jobs``: the Train panel's "Copy
  prediction" / "Suggest next slice" row (checks, writing with undo, worker jobs).
- ``train_widget``, ``segment_widget``, ``batch_widget``: the three panels, each
  composed of its ``_train_*``, ``_segment_*`` and ``_batch_*`` parts.
"""
