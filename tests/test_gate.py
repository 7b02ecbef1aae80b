"""The evolution's gate on its own: scripted returns per controller and track stand in for the env, since what
is under test is which controller the gate ships and what it drives to decide that."""

import dataclasses

import numpy as np
import pytest

from core.config import EvolveConfig
from core.models.controller import params_sha256
from core.pipeline.gate import (
    CONFIRM_SEED_BASE,
    MEAN,
    POOL_MIN_TESTS,
    TRAIN_EVAL_SEED_BASE,
    Confirmed,
    GateState,
    pooled_spread,
    spreads_from_history,
)
from core.pipeline.rollout import RolloutResult

WORLD = "a" * 64  # the V and M driving
STEPS = 10  # env steps of every scripted episode


def controller(value: float) -> np.ndarray:
    """A controller the scripted pool knows by its first parameter."""
    return np.full(5, value, np.float32)


class ScriptedPool:
    """Stands in for ``RolloutPool``: the return of controller ``v`` (its first parameter) on track ``seed`` is
    ``returns[v](seed)``; ``driven`` lists the (controller, track) pairs in the order they were driven."""

    def __init__(self, returns: dict):
        self.returns, self.driven = returns, []

    def map(self, tasks):
        for params, seed in tasks:
            self.driven.append((float(params[0]), int(seed)))
            yield RolloutResult(int(seed), float(self.returns[float(params[0])](int(seed))), STEPS, False, 1)

    def controllers_on(self, first_seed: int) -> set[float]:
        """The controllers driven on the range of tracks that starts at ``first_seed``."""
        return {v for v, seed in self.driven if first_seed <= seed < first_seed + 10_000}


def constant(value: float):
    return lambda seed: value


def swinging(mean: float, swing: float):
    """``mean`` give or take ``swing``, track by track (+, -, +, ... on consecutive tracks)."""
    return lambda seed: mean + swing * (-1) ** seed


SHIPPED, MEAN_PARAMS, BEST = 1.0, 2.0, 3.0


def settings(**changes) -> EvolveConfig:
    return EvolveConfig(**{"eval_every": 1, "eval_episodes": 4, "confirm_episodes": 6, "confirm_margin": 1.0,
                           "fresh_tracks": True, "max_steps": 1000, **changes})


def step(gate: GateState, pool: ScriptedPool, config: EvolveConfig, generation: int = 1, world: str = WORLD):
    return gate.step(pool, {MEAN: controller(MEAN_PARAMS), "eval_best_candidate": controller(BEST)}, generation,
                     config, world)


def test_a_challenger_no_better_than_the_shipped_controller_on_the_periodic_tracks_gets_no_second_test():
    """With fresh tracks the bar is the shipped controller's score on the same tracks, whatever its old score."""
    gate = GateState(controller(SHIPPED), best_eval=700.0)
    pool = ScriptedPool({SHIPPED: constant(730.0), MEAN_PARAMS: constant(720.0), BEST: constant(600.0)})
    decision = step(gate, pool, settings())
    assert not decision.accepted and decision.state.params is gate.params
    assert pool.controllers_on(TRAIN_EVAL_SEED_BASE) == {SHIPPED, MEAN_PARAMS, BEST}
    assert not pool.controllers_on(CONFIRM_SEED_BASE)  # refused without a second test
    assert not any(key.startswith("confirm_") for key in decision.metrics)
    assert decision.metrics["eval_shipped"] == 730.0 and decision.metrics["eval_pick"] == MEAN
    assert decision.episodes == 3 * 4 and decision.steps == decision.metrics["eval_steps"] == 3 * 4 * STEPS
    assert decision.state.best_eval == 700.0  # its score when it was picked stays its own
    # ... and a challenger below its old score that beats it on these tracks passes (no second test asked for).
    pool = ScriptedPool({SHIPPED: constant(640.0), MEAN_PARAMS: constant(650.0), BEST: constant(600.0)})
    decision = step(gate, pool, settings(confirm_episodes=0))
    assert decision.accepted and np.array_equal(decision.state.params, controller(MEAN_PARAMS))
    assert decision.state.best_eval == 650.0 and decision.state.shipped_world == WORLD

    # On fixed tracks the shipped controller is not driven: its score when it was picked is the bar.
    pool = ScriptedPool({MEAN_PARAMS: constant(690.0), BEST: constant(700.0)})
    decision = step(gate, pool, settings(fresh_tracks=False))
    assert not decision.accepted and not pool.controllers_on(CONFIRM_SEED_BASE)
    assert SHIPPED not in pool.controllers_on(TRAIN_EVAL_SEED_BASE) and "eval_shipped" not in decision.metrics


def test_with_nothing_scored_yet_the_best_challenger_is_shipped_without_a_second_test():
    gate = GateState(controller(SHIPPED))
    pool = ScriptedPool({MEAN_PARAMS: constant(-50.0), BEST: constant(-40.0)})
    decision = step(gate, pool, settings())
    assert decision.accepted and np.array_equal(decision.state.params, controller(BEST))
    assert decision.state.best_eval == -40.0 and pool.controllers_on(TRAIN_EVAL_SEED_BASE) == {MEAN_PARAMS, BEST}
    assert not pool.controllers_on(CONFIRM_SEED_BASE) and decision.state.tracks_next == {"periodic": 4, "confirm": 0}


def test_a_lead_below_the_margin_is_refused_and_one_above_it_accepted():
    """Near a plateau controllers differ by less than tracks do: a lead of 5 points whose track-by-track
    differences swing by 60 is not enough with a margin of one standard error; a steady lead of 6 is."""
    gate = GateState(controller(SHIPPED), best_eval=700.0, shipped_from={"key": "mean"})
    screen = {SHIPPED: constant(700.0), BEST: constant(600.0)}  # the mean beats the shipped controller there
    noisy = ScriptedPool({**screen, MEAN_PARAMS: lambda s: 720.0 if s < CONFIRM_SEED_BASE else 505.0 + 60.0 * (-1) ** s,
                          SHIPPED: lambda s: 700.0 if s < CONFIRM_SEED_BASE else 500.0})
    decision = step(gate, noisy, settings())
    spread = 60.0 * np.sqrt(6 / 5)  # of +60, -60, ... over 6 tracks (ddof 1)
    m = decision.metrics
    assert not decision.accepted and not m["confirm_accepted"] and m["confirm_lead"] == pytest.approx(5.0)
    assert m["confirm_spread"] == m["confirm_spread_used"] == pytest.approx(spread)
    assert m["confirm_needed"] == pytest.approx(spread / np.sqrt(6))
    assert m["confirm_challenger"] == pytest.approx(505.0) and m["confirm_shipped"] == 500.0
    assert m["confirm_driven"] == 2 * 6 and noisy.controllers_on(CONFIRM_SEED_BASE) == {MEAN_PARAMS, SHIPPED}
    assert decision.episodes == 3 * 4 + 2 * 6 and decision.steps == (3 * 4 + 2 * 6) * STEPS
    refused = decision.state
    assert refused.params is gate.params and refused.best_eval == 700.0 and refused.shipped_from == {"key": "mean"}
    assert refused.lead_spreads == pytest.approx((spread,))  # kept for the tests to come
    assert refused.confirmed == Confirmed(params_sha256(gate.params), 500.0, (500.0,) * 6, CONFIRM_SEED_BASE, 6, 1000,
                                          WORLD)  # the shipped controller's returns, to reuse
    assert refused.to_json()["confirmed"] == {  # as state.json keeps them
        "params_sha256": params_sha256(gate.params), "score": 500.0, "returns": [500.0] * 6,
        "first_seed": CONFIRM_SEED_BASE, "tracks": 6, "max_steps": 1000, "world_model_sha256": WORLD}
    assert gate.lead_spreads == () and gate.confirmed is None  # the step changed nothing of the state it was given

    decision = step(gate, noisy, settings(confirm_margin=0.0))  # any lead will do
    assert decision.accepted and decision.metrics["confirm_needed"] == 0.0

    steady = ScriptedPool({**screen, MEAN_PARAMS: lambda s: 720.0 if s < CONFIRM_SEED_BASE else 506.0,
                           SHIPPED: lambda s: 700.0 if s < CONFIRM_SEED_BASE else 500.0})
    decision = step(gate, steady, settings())
    assert decision.accepted and decision.metrics["confirm_lead"] == pytest.approx(6.0)
    assert decision.metrics["confirm_needed"] == 0.0
    shipped = decision.state
    assert np.array_equal(shipped.params, controller(MEAN_PARAMS)) and shipped.best_eval == 720.0
    assert shipped.shipped_world == WORLD and shipped.shipped_from is None  # an export's controller is beaten
    assert shipped.confirmed.params_sha256 == params_sha256(controller(MEAN_PARAMS))
    assert shipped.confirmed.returns == (506.0,) * 6 and shipped.confirmed.score == 506.0


def test_the_spread_pooled_over_earlier_second_tests_raises_the_bar():
    """24 tracks often miss the few where a controller loses hundreds of points, and such tests are the ones
    that pass: once a run has had POOL_MIN_TESTS second tests, their pooled spread is a floor under each one's."""
    pool = ScriptedPool({SHIPPED: lambda s: 700.0 if s < CONFIRM_SEED_BASE else 500.0, BEST: constant(600.0),
                         MEAN_PARAMS: lambda s: 720.0 if s < CONFIRM_SEED_BASE else 520.0 + 10.0 * (-1) ** s})
    config = settings(confirm_episodes=16)  # leads 20 ± 10: spread 10.3
    alone = step(GateState(controller(SHIPPED), best_eval=700.0), pool, config)
    assert alone.accepted and alone.metrics["confirm_spread_used"] == pytest.approx(10.33, abs=0.01)
    earlier = (120.0, 150.0, 180.0, 90.0)[:POOL_MIN_TESTS]
    too_few = step(GateState(controller(SHIPPED), best_eval=700.0, lead_spreads=earlier[:-1]), pool, config)
    assert too_few.accepted and too_few.metrics["confirm_spread_used"] == pytest.approx(10.33, abs=0.01)
    floored = step(GateState(controller(SHIPPED), best_eval=700.0, lead_spreads=earlier), pool, config)
    pooled = np.sqrt(np.mean(np.square(earlier)))
    assert not floored.accepted and floored.metrics["confirm_spread_used"] == pytest.approx(pooled)
    assert floored.metrics["confirm_needed"] == pytest.approx(pooled / 4)  # one standard error, 16 tracks
    assert floored.state.lead_spreads == pytest.approx((*earlier, alone.metrics["confirm_spread"]))
    assert pooled_spread([100.0]) is None and pooled_spread([30.0, 40.0]) == pytest.approx(np.sqrt(1250))


def test_the_spreads_of_a_state_saved_before_they_were_kept_are_read_back_from_its_history():
    records = [{"generation": 5}, {"confirm_needed": 30.0, "confirm_episodes": 24},
               {"confirm_needed": 20.0, "confirm_episodes": 24, "confirm_spread": 97.0},
               {"confirm_needed": 60.0, "confirm_episodes": 24, "confirm_margin": 2.0}]
    assert spreads_from_history(records, 1.0) == pytest.approx([30.0 * np.sqrt(24), 97.0, 30.0 * np.sqrt(24)])
    assert spreads_from_history(records, 0.0) == pytest.approx([97.0, 30.0 * np.sqrt(24)])  # no margin known


def test_the_shipped_controllers_second_test_returns_are_reused_while_they_are_of_the_same_test():
    """Driven once on the confirmation tracks, the shipped controller is not driven there again while its
    parameters, the first track, the number of tracks, the step limit and V and M stay the same."""
    returns = {SHIPPED: lambda s: 700.0 if s < CONFIRM_SEED_BASE else 500.0 + s % 7, BEST: constant(600.0),
               MEAN_PARAMS: lambda s: 720.0 if s < CONFIRM_SEED_BASE else 450.0}  # lucky on the periodic tracks
    config = settings(fresh_tracks=False)
    first = step(GateState(controller(SHIPPED), best_eval=700.0), ScriptedPool(returns), config)
    assert not first.accepted and first.metrics["confirm_driven"] == 2 * 6
    known = first.state
    assert known.confirmed.returns == tuple(500.0 + s % 7 for s in range(CONFIRM_SEED_BASE, CONFIRM_SEED_BASE + 6))
    pool = ScriptedPool(returns)
    again = step(known, pool, config, generation=2)
    assert pool.controllers_on(CONFIRM_SEED_BASE) == {MEAN_PARAMS} and again.metrics["confirm_driven"] == 6
    assert again.metrics["confirm_shipped"] == first.metrics["confirm_shipped"]
    assert again.episodes == 2 * 4 + 6 and again.state.confirmed == known.confirmed
    # Any of them changed, the shipped controller is driven again.
    other_params = dataclasses.replace(known, confirmed=dataclasses.replace(
        known.confirmed, params_sha256=params_sha256(controller(SHIPPED + 1))))
    for gate, changed, world in ((other_params, {}, WORLD), (known, {"fresh_tracks": True}, WORLD),
                                 (known, {"confirm_episodes": 5}, WORLD), (known, {"max_steps": 500}, WORLD),
                                 (known, {}, "b" * 64)):
        pool = ScriptedPool(returns)
        redo = step(gate, pool, settings(**{"fresh_tracks": False, **changed}), generation=2, world=world)
        assert pool.controllers_on(CONFIRM_SEED_BASE) == {MEAN_PARAMS, SHIPPED}, changed or world
        assert redo.metrics["confirm_driven"] == 2 * redo.metrics["confirm_episodes"]


def test_fresh_tracks_advance_with_every_test_and_fixed_ones_stay():
    returns = {SHIPPED: lambda s: 700.0 if s < CONFIRM_SEED_BASE else 500.0, BEST: constant(600.0),
               MEAN_PARAMS: lambda s: 720.0 if s < CONFIRM_SEED_BASE else 450.0}  # wins the screen, loses the test
    gate = GateState(controller(SHIPPED), best_eval=700.0, tracks_next={"periodic": 8, "confirm": 12})
    pool = ScriptedPool(returns)
    decision = step(gate, pool, settings())
    assert decision.metrics["eval_first_seed"] == TRAIN_EVAL_SEED_BASE + 8
    assert decision.metrics["confirm_first_seed"] == CONFIRM_SEED_BASE + 12
    assert {s for _, s in pool.driven} == ({TRAIN_EVAL_SEED_BASE + 8 + i for i in range(4)}
                                           | {CONFIRM_SEED_BASE + 12 + i for i in range(6)})
    assert decision.state.tracks_next == {"periodic": 12, "confirm": 18} and gate.tracks_next["periodic"] == 8
    screened_out = {**returns, MEAN_PARAMS: constant(650.0)}  # a periodic evaluation alone
    decision = step(decision.state, ScriptedPool(screened_out), settings(), generation=2)
    assert decision.metrics["eval_first_seed"] == TRAIN_EVAL_SEED_BASE + 12
    assert decision.state.tracks_next == {"periodic": 16, "confirm": 18}
    # On fixed tracks every test starts at its range's first track; the counts say what has been driven, so
    # that a resume with fresh tracks starts after them.
    pool = ScriptedPool(returns)
    decision = step(GateState(controller(SHIPPED), best_eval=700.0, tracks_next={"periodic": 2, "confirm": 0}), pool,
                    settings(fresh_tracks=False))
    assert decision.metrics["eval_first_seed"] == TRAIN_EVAL_SEED_BASE
    assert decision.metrics["confirm_first_seed"] == CONFIRM_SEED_BASE
    assert decision.state.tracks_next == {"periodic": 4, "confirm": 6}


def test_a_controller_not_scored_yet_is_driven_at_the_first_evaluation_and_its_score_is_the_bar():
    """A run from a trained controller (or an export's, or after V or M changed) scores it first, even on fixed
    tracks; until then, and in any run before its first evaluation, the gate ships something without driving."""
    start = GateState(controller(SHIPPED), start_pending=True, shipped_world="c" * 64)
    pool = ScriptedPool({SHIPPED: constant(710.0), MEAN_PARAMS: constant(705.0), BEST: constant(600.0)})
    decision = step(start, pool, settings(fresh_tracks=False))
    assert not decision.accepted and decision.metrics["eval_start"] == decision.metrics["eval_shipped"] == 710.0
    assert decision.state.best_eval == 710.0 and not decision.state.start_pending
    assert decision.state.shipped_world == "c" * 64

    no_evaluation = settings(eval_every=5)
    for generation in (1, 4):  # between evaluations it keeps the start
        kept = step(start, ScriptedPool({}), no_evaluation, generation=generation)
        assert kept.state is start and kept.metrics == {} and kept.episodes == kept.steps == 0
    # Without periodic evaluations, or once anything has been scored, nothing changes between them, except
    # that a run with nothing scored ships its CMA-ES mean.
    for gate, config in ((start, settings(eval_every=0)), (GateState(controller(SHIPPED), shipped_from={}),
                                                          no_evaluation)):
        mean = step(gate, ScriptedPool({}), config).state
        assert np.array_equal(mean.params, controller(MEAN_PARAMS)) and mean.params.dtype == np.float32
        assert not mean.start_pending and mean.shipped_world == WORLD and mean.shipped_from is None
    scored = GateState(controller(SHIPPED), best_eval=700.0)
    assert step(scored, ScriptedPool({}), no_evaluation).state is scored


def test_a_gate_state_is_saved_and_read_back_whole():
    gate = GateState(controller(SHIPPED), best_eval=700.5, start_pending=True, shipped_world=WORLD,
                     shipped_from={"key": "average", "generation": 3}, lead_spreads=(10.0, 20.5),
                     confirmed=Confirmed("d" * 64, 2.0, (1.0, 3.0), CONFIRM_SEED_BASE + 4, 2, 1000, WORLD),
                     tracks_next={"periodic": 3, "confirm": 5})
    saved = gate.to_json()
    assert saved["shipped"] == {"key": "average", "generation": 3} and saved["confirmed"]["returns"] == [1.0, 3.0]
    back = GateState.from_json(saved, gate.params)
    fields = [f.name for f in dataclasses.fields(GateState) if f.name != "params"]
    assert {f: getattr(back, f) for f in fields} == {f: getattr(gate, f) for f in fields}
    assert back.to_json() == saved and np.array_equal(back.params, gate.params)
    plain = GateState(controller(SHIPPED)).to_json()  # what is not there is left out, as older code wrote it
    assert plain == {"best_eval": None, "shipped_world": None, "lead_spreads": [],
                     "tracks_next": {"periodic": 0, "confirm": 0}}
