"""The live race: a person drives CarRacing with the keyboard, alone or against the AI, or watches the AI.

- ``session``: one race, stepped by ``RaceSession.tick()`` (one env step or countdown tick), keys to
  actions, seeds, owners; deterministic and testable without a clock.
- ``ai``: which world models can race, loaded once per folder and version and shared by races.
- ``registry``: the races a server holds, who owns which, how many may run at once.
- ``replay``: a finished run's action log replayed on its track; what the leaderboard stores is what the
  replay scored, never a number a browser sent.
- ``video``: the same logs rendered to MP4, side by side.
- ``server``: the WebSocket route on the app's own port that ticks races 50 times a second and streams
  their frames to the page (``assets/race/race.js``).

The names below are the race's public face: pages use ``from core.app import race`` and ``race.X``.
"""

import importlib

# Where each public name lives. They are imported on first use (PEP 562), so that a car's process
# (``worker``), which needs only the session and the env, does not import the leaderboard (SQLAlchemy,
# pandas: about 80 MB and a second) with the package.
_EXPORTS = {
    "ai": ("available_models", "is_world_model", "load_agent", "model_label", "single_threaded_blas", "warm_up"),
    "errors": ("RaceError", "RaceFull"),
    "registry": ("RaceRegistry", "get_registry", "score_and_record"),
    "replay": ("ReplayResult", "make_race_env", "replay_run"),
    "session": ("BRAKE", "GAS", "KEY_BRAKE", "KEY_GAS", "KEY_LEFT", "KEY_MASK_ALL", "KEY_RIGHT", "MODE_LABELS",
                "MODES", "SEED_MAX", "Driver", "FinishedRace", "RaceConfig", "RaceSession", "check_seed",
                "keys_to_action", "parse_owner", "random_seed", "unrecorded_reason", "versus_ai"),
    "video": ("LABEL_BAR", "VIDEO_SCALE", "race_frames", "render_leaderboard_runs", "render_runs_mp4",
              "render_video"),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}
_SUBMODULES = ("ai", "errors", "registry", "replay", "server", "session", "video", "worker")

__all__ = [*_HOME, "ConfigError"]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name == "ConfigError":
        from core.config import ConfigError
        return ConfigError
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # found at once next time
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, *_SUBMODULES])
