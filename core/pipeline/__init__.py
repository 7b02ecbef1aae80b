"""The stages, one module per CLI stage and named as the CLI names it: ``collect``, ``train_vae``,
``train_rnn``, ``evolve`` (with its acceptance ``gate``), ``evaluate``, ``compare``, ``record``,
``export``, ``snapshot`` and ``dream``; ``rollout`` is the pure function (params, seed, settings) ->
result that evolve and evaluate run in worker processes, ``cluster`` runs such tasks on a Ray cluster
instead (``--ray-address``), ``training`` is the one training loop that train-vae and train-rnn share
(checkpoints, resume, held-out metrics, progress), and ``preflight`` checks a stage's inputs before its
module (and TensorFlow) loads.

Each stage is a function ``stage(config, on_progress) -> dict``: it validates its config, holds the run
folder's lock, resumes from its checkpoint, reports progress through the callback (a falsy return asks it
to stop cleanly) and returns its final metrics. ``core.stages`` lists them for the CLI, jobs and pages.
"""
