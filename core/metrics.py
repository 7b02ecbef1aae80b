"""The names of the numbers the stages write and the pages read: one table per stage.

A stage reports its progress (``on_progress(step, total, metrics)``) and writes its ``history.jsonl`` lines
under these names; the pages and the app's data views read them through the same members. A renamed metric
is one edit here, and a misspelt one fails at import (``AttributeError``) instead of leaving a chart empty.

The members are ``str`` (``StrEnum``): history files, ``meta.json`` and job snapshots hold the plain names,
byte for byte as before, and old run folders read the same. ``tests/test_metrics.py`` runs each stage on a
tiny world model and checks that the names it writes are the ones declared here.
"""

from __future__ import annotations

from enum import StrEnum

HELD_OUT = "val_"  # the prefix of a training metric measured on the held-out episodes
ENCODING = "encoding"  # the value of ``Training.PHASE`` while M's stage encodes the episodes with V first
TRAINING = "training"  # ... and once it trains


class Training(StrEnum):
    """The lines V's and M's training loop writes (``core.pipeline.training``), beside the model's own."""

    STEP = "step"  # batches trained so far
    EPOCH = "epoch"  # passes over the training data so far (fractional)
    TIME = "time"  # seconds since this session of training began
    LOSS = "loss"  # the model's whole training loss
    PHASE = "phase"  # in progress reports only: a stage's phase before training (``ENCODING``)


class VaeMetric(StrEnum):
    """V's losses (``core.models.vae``, ``core.pipeline.train_vae``)."""

    RECONSTRUCTION = "r_loss"  # summed squared error a frame
    KL = "kl"  # KL divergence, nats a frame, clamped from below in training
    HELD_OUT_RECONSTRUCTION = HELD_OUT + "r_loss"
    HELD_OUT_KL = HELD_OUT + "kl"


class RnnMetric(StrEnum):
    """M's losses (``core.models.mdnrnn``, ``core.pipeline.train_rnn``) and its encoding phase."""

    MDN = "mdn"  # the mixture's negative log-likelihood a dimension
    REWARD = "reward"  # squared error of the predicted reward
    DONE = "done"  # cross-entropy of the predicted episode end
    HELD_OUT_MDN = HELD_OUT + "mdn"
    HELD_OUT_REWARD = HELD_OUT + "reward"
    HELD_OUT_DONE = HELD_OUT + "done"
    ENCODED = "encoded"  # episodes encoded with V so far (phase ``ENCODING``)
    TO_ENCODE = "of"  # episodes to encode

    def held_out(self) -> "RnnMetric":
        """The held-out twin of a training loss: ``MDN.held_out()`` is ``HELD_OUT_MDN``."""
        return RnnMetric(HELD_OUT + self.value)


RNN_LOSSES = (RnnMetric.MDN, RnnMetric.REWARD, RnnMetric.DONE)  # M's training losses, in the page's order


class EvolveMetric(StrEnum):
    """A generation's line of the controller's history (``core.pipeline.evolve``, ``core.pipeline.gate``)."""

    GENERATION = "generation"
    BEST = "best"  # fitness (mean return over its rollouts) of the generation's best candidate
    MEAN = "mean"  # the candidates' mean fitness
    WORST = "worst"
    SIGMA = "sigma"  # the CMA-ES step size after the generation
    MAX_STD = "max_std"  # the largest coordinate's standard deviation after it
    EARLY_STOPPED = "early_stopped"  # share of the rollouts stopped early (no new tile for a while)
    LAPS = "laps"  # share of the rollouts that finished the lap
    SKIPPED = "skipped"  # tiles skipped, mean over the rollouts
    ROLLOUTS = "rollouts"  # rollouts a candidate drove
    STEPS = "steps"  # env steps the generation drove
    SECONDS = "seconds"  # the generation's wall-clock seconds
    EPISODES_PER_HOUR = "episodes_per_hour"  # episodes the generation and its evaluation drove, an hour
    # A periodic evaluation on held-apart training tracks: one score per challenger, and the shipped one.
    EVAL_MEAN_PARAMS = "eval_mean_params"  # the CMA-ES mean
    EVAL_BEST_CANDIDATE = "eval_best_candidate"  # the generation's best candidate
    EVAL_MEAN_AVERAGE = "eval_mean_average"  # the mean averaged over recent generations
    EVAL_START = "eval_start"  # the controller the run started from, scored once
    EVAL_SHIPPED = "eval_shipped"  # the controller shipped so far, on the same tracks
    EVAL_EPISODES = "eval_episodes"
    EVAL_FIRST_SEED = "eval_first_seed"
    EVAL_PICK = "eval_pick"  # the name of the challenger that scored best
    EVAL_STEPS = "eval_steps"  # env steps of the evaluation and of its second test
    # The second test of a challenger that beat the shipped controller, on other tracks.
    CONFIRM_CHALLENGER = "confirm_challenger"
    CONFIRM_SHIPPED = "confirm_shipped"
    CONFIRM_LEAD = "confirm_lead"  # the challenger's mean lead, track by track
    CONFIRM_NEEDED = "confirm_needed"  # the lead it needed (margin x standard error)
    CONFIRM_MARGIN = "confirm_margin"
    CONFIRM_SPREAD = "confirm_spread"  # the standard deviation of the lead on these tracks
    CONFIRM_SPREAD_USED = "confirm_spread_used"  # the spread the test used (at least the run's typical one)
    CONFIRM_STEPS = "confirm_steps"
    CONFIRM_DRIVEN = "confirm_driven"  # episodes driven
    CONFIRM_ACCEPTED = "confirm_accepted"  # whether the challenger was shipped
    CONFIRM_EPISODES = "confirm_episodes"
    CONFIRM_FIRST_SEED = "confirm_first_seed"


EVALUATION_SCORES = (EvolveMetric.EVAL_MEAN_PARAMS, EvolveMetric.EVAL_BEST_CANDIDATE, EvolveMetric.EVAL_MEAN_AVERAGE,
                     EvolveMetric.EVAL_START, EvolveMetric.EVAL_SHIPPED)  # the scores an evaluation line can hold


class EpisodeMetric(StrEnum):
    """The progress of the stages that drive whole episodes: collect, evaluate and record."""

    EPISODE = "episode"  # the track seed of the episode just driven
    RETURN = "return"  # its return (record: the return so far)
    STEPS = "steps"  # its steps
    MEAN = "mean"  # evaluate: the mean return of the episodes driven so far
