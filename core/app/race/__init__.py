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

from core.app.race.ai import available_models, is_world_model, load_agent, model_label, single_threaded_blas, warm_up
from core.app.race.errors import RaceError, RaceFull
from core.app.race.registry import RaceRegistry, get_registry, score_and_record
from core.app.race.replay import ReplayResult, make_race_env, replay_run
from core.app.race.session import (
                                   BRAKE,
                                   GAS,
                                   KEY_BRAKE,
                                   KEY_GAS,
                                   KEY_LEFT,
                                   KEY_MASK_ALL,
                                   KEY_RIGHT,
                                   MODE_LABELS,
                                   MODES,
                                   SEED_MAX,
                                   Driver,
                                   FinishedRace,
                                   RaceConfig,
                                   RaceSession,
                                   check_seed,
                                   keys_to_action,
                                   parse_owner,
                                   random_seed,
                                   unrecorded_reason,
                                   versus_ai,
)
from core.app.race.video import (
                                   LABEL_BAR,
                                   VIDEO_SCALE,
                                   race_frames,
                                   render_leaderboard_runs,
                                   render_runs_mp4,
                                   render_video,
)
from core.config import ConfigError

__all__ = [
    "RaceConfig", "RaceError", "RaceFull", "RaceSession", "RaceRegistry", "Driver", "ReplayResult", "FinishedRace",
    "MODES", "MODE_LABELS", "KEY_LEFT", "KEY_RIGHT", "KEY_GAS", "KEY_BRAKE", "KEY_MASK_ALL", "GAS", "BRAKE",
    "SEED_MAX", "keys_to_action", "replay_run", "make_race_env", "score_and_record", "get_registry",
    "available_models", "is_world_model", "load_agent", "warm_up", "parse_owner", "model_label", "check_seed",
    "random_seed", "single_threaded_blas", "render_runs_mp4", "render_leaderboard_runs", "render_video",
    "race_frames", "LABEL_BAR", "VIDEO_SCALE", "ConfigError", "unrecorded_reason", "versus_ai",
]
