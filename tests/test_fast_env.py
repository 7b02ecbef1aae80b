"""FastCarRacing-v3 against Gymnasium's CarRacing-v3, step for step and byte for byte.

Each test runs the stock env and the fast env side by side on the same seed and actions and requires
identical observations (bytes), rewards, terminated, truncated and info at every step. The scenarios
cover the opening zoom, normal driving, skidding off the track onto grass, resets on the same env
object, the edge of the playfield, an indicator growing above the HUD bar, and every option.
"""

from __future__ import annotations

import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from gymnasium.envs.box2d.car_racing import PLAYFIELD, CarRacing  # noqa: E402

from core.envs.fast_car_racing import ENV_ID, FastCarRacing, make_car_racing, register  # noqa: E402

LOW = np.array([-1.0, 0.0, 0.0])
HIGH = np.array([1.0, 1.0, 1.0])


def brownian(seed: int, n: int, sigma: float = 0.25) -> list[np.ndarray]:
    """Smoothed random actions, float32 (3,) in [-1,0,0]..[1,1,1]: the paper's data policy."""
    rng = np.random.default_rng(seed)
    a = np.array([0.0, 0.5, 0.0])
    out = []
    for _ in range(n):
        a = np.clip(a + rng.normal(0.0, sigma, 3), LOW, HIGH)
        out.append(a.astype(np.float32))
    return out


def uniform(seed: int, n: int) -> list[np.ndarray]:
    """Independent uniform actions (what ``action_space.sample()`` gives): mostly spinning in place."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(LOW, HIGH).astype(np.float32) for _ in range(n)]


def floor_it(n: int, steer: float = 0.35) -> list[np.ndarray]:
    """Full gas with the wheel turned: the car skids off the track and keeps going on the grass."""
    return [np.array([steer, 1.0, 0.0], dtype=np.float32)] * n


def pair(**kwargs) -> tuple[gym.Env, gym.Env]:
    return gym.make("CarRacing-v3", **kwargs), gym.make(ENV_ID, **kwargs)


def assert_same_obs(stock: np.ndarray, fast: np.ndarray, where: str) -> None:
    assert fast.shape == stock.shape and fast.dtype == stock.dtype, where
    if fast.tobytes() != stock.tobytes():
        diff = np.abs(fast.astype(np.int16) - stock.astype(np.int16))
        raise AssertionError(
            f"{where}: frames differ in {int((diff.max(axis=-1) > 0).sum())} pixels, max channel diff {diff.max()}"
        )


def reset_both(stock: gym.Env, fast: gym.Env, where: str, **reset_kwargs) -> None:
    obs_s, info_s = stock.reset(**reset_kwargs)
    obs_f, info_f = fast.reset(**reset_kwargs)
    assert_same_obs(obs_s, obs_f, f"{where} reset")
    assert info_f == info_s, where


def step_both(stock: gym.Env, fast: gym.Env, actions, where: str, render: bool = False,
              before_step=None) -> tuple[int, bool]:
    """Step both envs through ``actions`` until one episode ends; returns (steps taken, ended)."""
    for i, a in enumerate(actions):
        if before_step is not None:
            before_step(i, stock.unwrapped)
            before_step(i, fast.unwrapped)
        obs_s, r_s, term_s, trunc_s, info_s = stock.step(a)
        obs_f, r_f, term_f, trunc_f, info_f = fast.step(a)
        here = f"{where} step {i}"
        assert_same_obs(obs_s, obs_f, here)
        assert (r_f, term_f, trunc_f) == (r_s, term_s, trunc_s), here
        assert type(r_f) is type(r_s), here
        assert info_f == info_s, here
        if render:
            assert_same_obs(stock.render(), fast.render(), f"{here} render()")
        if term_s or trunc_s:
            return i + 1, True
    return len(actions), False


def test_registered_with_the_stock_wrappers():
    stock, fast = pair()
    assert isinstance(fast.unwrapped, FastCarRacing) and isinstance(fast.unwrapped, CarRacing)
    assert type(stock.unwrapped) is CarRacing

    def chain(env):
        names = []
        while isinstance(env, gym.Wrapper):
            names.append(type(env).__name__)
            env = env.env
        return names

    assert chain(fast) == chain(stock) == ["TimeLimit", "OrderEnforcing", "PassiveEnvChecker"]
    spec_s, spec_f = gym.spec("CarRacing-v3"), gym.spec(ENV_ID)
    assert (spec_f.max_episode_steps, spec_f.reward_threshold) == (spec_s.max_episode_steps, spec_s.reward_threshold)
    assert fast.observation_space == stock.observation_space
    assert fast.action_space == stock.action_space
    assert type(make_car_racing(fast=False).unwrapped) is CarRacing
    assert type(make_car_racing().unwrapped) is FastCarRacing
    stock.close()
    fast.close()


def test_registering_again_is_a_no_op(recwarn):
    spec = gym.spec(ENV_ID)
    register()
    assert gym.spec(ENV_ID) is spec
    assert spec.entry_point == "core.envs.fast_car_racing:FastCarRacing"
    assert not [w for w in recwarn if "already" in str(w.message).lower()]


def test_same_trajectories_driving_skidding_and_resetting():
    """Brownian driving, a skid off the track, then resets of the same env objects with new seeds."""
    stock, fast = pair()
    reset_both(stock, fast, "seed 0", seed=0)
    step_both(stock, fast, brownian(0, 250), "seed 0 brownian")
    step_both(stock, fast, floor_it(150), "seed 0 off track")
    reset_both(stock, fast, "seed 1", seed=1)
    step_both(stock, fast, uniform(1, 120), "seed 1 uniform")
    reset_both(stock, fast, "seed 2", seed=2)
    step_both(stock, fast, floor_it(60, steer=-0.6) + brownian(2, 200, sigma=0.4), "seed 2 mixed")
    # A reset without a seed continues the env's own generator; both must agree on it.
    reset_both(stock, fast, "unseeded")
    step_both(stock, fast, brownian(3, 80), "unseeded brownian")


def _teleport(env: CarRacing, x: float, y: float) -> None:
    """Move the whole car (hull and wheels, so the joints stay satisfied) to put the hull at (x, y)."""
    dx = x - env.car.hull.position[0]
    dy = y - env.car.hull.position[1]
    for body in [env.car.hull] + env.car.wheels:
        body.position = (body.position[0] + dx, body.position[1] + dy)


def _count_calls(monkeypatch, name: str, when=lambda result: True) -> list:
    """Record each call of a FastCarRacing method whose result passes ``when``: proof a path ran."""
    calls = []
    original = getattr(FastCarRacing, name)

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        if when(result):
            calls.append(result)
        return result

    monkeypatch.setattr(FastCarRacing, name, staticmethod(spy) if name == "_window_inside_field" else spy)
    return calls


def test_same_frames_at_the_edge_of_the_playfield_and_past_it(monkeypatch):
    """Near the edge the window shows the black void and the field's outline; past it the episode ends."""
    outside = _count_calls(monkeypatch, "_window_inside_field", when=lambda inside: not inside)
    stock, fast = pair()
    reset_both(stock, fast, "edge", seed=4)
    step_both(stock, fast, brownian(4, 60), "edge warm-up")

    def near_edge(i, env):
        if i == 0:
            _teleport(env, PLAYFIELD - 12.0, 0.5 * PLAYFIELD)

    step_both(stock, fast, brownian(5, 40), "near the edge", before_step=near_edge)

    def past_edge(i, env):
        if i == 0:
            _teleport(env, PLAYFIELD + 3.0, -0.25 * PLAYFIELD)

    steps, ended = step_both(stock, fast, brownian(6, 5), "past the edge", before_step=past_edge)
    assert ended and steps == 1
    assert len(outside) > 40  # the opening zoom (about 20 frames) and the 40 frames near the edge


def test_same_frames_when_an_indicator_grows_above_the_hud_bar(monkeypatch):
    """A wheel spinning at 600 rad/s draws its ABS bar above the black HUD strip."""
    whole = _count_calls(monkeypatch, "_shrink_whole")
    stock, fast = pair()
    reset_both(stock, fast, "spin", seed=5)

    def spin(i, env):
        env.car.wheels[i % 4].omega = 600.0 if i % 2 == 0 else -650.0

    step_both(stock, fast, brownian(7, 20), "spinning wheel", before_step=spin)
    assert len(whole) == 20


def test_same_frames_when_user_code_recolours_the_car():
    """A body colour reassigned (as a list, then a NumPy array) or changed in place between frames."""
    stock, fast = pair()
    reset_both(stock, fast, "recolour", seed=10)

    def recolour(i, env):
        if i == 5:
            env.car.hull.color = [0.2, 0.3, 0.9]
        elif i == 10:
            env.car.hull.color[0] = 1.0
        elif i == 15:
            env.car.wheels[0].color = np.array([0.5, 0.5, 0.1])
        elif i == 20:
            env.car.wheels[0].color[2] = 0.8

    step_both(stock, fast, brownian(10, 30), "recolour", before_step=recolour)


def test_pygame_path_for_a_format_the_kernels_do_not_take(monkeypatch):
    """A 32-bit surface whose words the kernels do not read (here: as if pygame's default masks differed)
    draws the track, the car and the HUD with pygame and scales the bands with ``smoothscale``."""
    from core.envs import raster

    monkeypatch.setattr(raster, "RGB_MASKS", (0xFF, 0xFF00, 0xFF0000, 0))
    compiled = _count_calls(monkeypatch, "_draw_hud_compiled")
    pygame_hud = _count_calls(monkeypatch, "_draw_hud", when=bool)
    stock, fast = pair(render_mode="rgb_array")
    reset_both(stock, fast, "pygame path", seed=9)
    step_both(stock, fast, brownian(9, 40), "pygame path", render=True)
    assert not compiled and len(pygame_hud) >= 80  # 40 observations and 40 video frames


@pytest.mark.parametrize(
    "kwargs",
    [
        {"continuous": False},
        {"domain_randomize": True},
        {"lap_complete_percent": 0.05},
    ],
    ids=["discrete", "domain_randomize", "lap_complete_percent"],
)
def test_options_are_honoured_identically(kwargs):
    stock, fast = pair(**kwargs)
    for name, value in kwargs.items():
        assert getattr(fast.unwrapped, name) == getattr(stock.unwrapped, name) == value
    if kwargs.get("continuous") is False:
        rng = np.random.default_rng(8)
        actions = [int(a) for a in rng.choice(5, size=200, p=[0.1, 0.2, 0.2, 0.4, 0.1])]
    else:
        actions = brownian(8, 200)
    reset_both(stock, fast, str(kwargs), seed=8)
    step_both(stock, fast, actions[:120], str(kwargs))
    if kwargs.get("domain_randomize"):
        # New colours on a plain reset, kept with randomize=False, new again with randomize=True.
        before = fast.unwrapped.bg_color.copy()
        reset_both(stock, fast, "recolour", seed=9)
        assert not np.array_equal(before, fast.unwrapped.bg_color)
        step_both(stock, fast, actions[120:160], "recoloured")
        kept = fast.unwrapped.bg_color.copy()
        reset_both(stock, fast, "keep colours", seed=10, options={"randomize": False})
        np.testing.assert_array_equal(kept, fast.unwrapped.bg_color)
        step_both(stock, fast, actions[160:], "kept colours")
        reset_both(stock, fast, "new colours", seed=11, options={"randomize": True})
        step_both(stock, fast, actions[:40], "new colours")
    else:
        step_both(stock, fast, actions[120:], str(kwargs))


def test_lap_complete_percent_ends_the_lap_the_same_way():
    """With lap_complete_percent=0 the first contact with the start tile already finishes the lap."""
    stock, fast = pair(lap_complete_percent=0.0)
    reset_both(stock, fast, "lap", seed=12)
    steps, ended = step_both(stock, fast, floor_it(40, steer=0.0), "lap")
    assert ended and steps == 1 and fast.unwrapped.new_lap
    stock, fast = pair(lap_complete_percent=0.95)
    reset_both(stock, fast, "no lap", seed=12)
    steps, ended = step_both(stock, fast, floor_it(40, steer=0.0), "no lap")
    assert not ended and not fast.unwrapped.new_lap


def test_rgb_array_render_matches_including_skid_marks():
    stock, fast = pair(render_mode="rgb_array")
    reset_both(stock, fast, "rgb", seed=13)
    assert_same_obs(stock.render(), fast.render(), "rgb after reset")
    actions = floor_it(50, steer=0.8) + brownian(13, 40)
    step_both(stock, fast, actions, "rgb", render=True)
    assert fast.unwrapped.car.particles, "the scenario should leave skid marks to draw"
    frame = fast.render()
    assert frame.shape == (400, 600, 3) and frame.dtype == np.uint8


def test_human_render_mode_still_works():
    stock, fast = pair(render_mode="human")
    reset_both(stock, fast, "human", seed=14)
    step_both(stock, fast, brownian(14, 5), "human")
    stock.close()
    fast.close()


def test_survives_pygame_quit_and_font_restart():
    """A human-mode env closing (``pygame.quit()``) mid-episode must not break the cached HUD font."""
    import pygame

    stock, fast = pair()
    reset_both(stock, fast, "quit", seed=15)
    step_both(stock, fast, brownian(15, 30), "before pygame.quit")
    pygame.quit()
    step_both(stock, fast, brownian(16, 40), "after pygame.quit")
    pygame.font.quit()
    pygame.font.init()
    step_both(stock, fast, brownian(17, 40), "after a font restart")


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(20))
def test_full_episodes_identical(seed):
    """Whole 1000-step episodes (until the time limit or the end of the lap), several policies."""
    stock, fast = pair()
    policy = seed % 3
    if policy == 0:
        actions = brownian(seed, 1000)
    elif policy == 1:
        actions = brownian(seed, 1000, sigma=0.6)
    else:
        actions = uniform(seed, 1000)
    reset_both(stock, fast, f"seed {seed}", seed=seed)
    steps, ended = step_both(stock, fast, actions, f"seed {seed}")
    assert ended  # TimeLimit truncates at 1000 if nothing ends it earlier
