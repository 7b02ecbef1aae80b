"""World Models for CarRacing-v3: everything but the pages, importable without Streamlit.

Packages by role: ``models`` (V, M, C and the agent that drives with them), ``envs`` (the stock and the
fast CarRacing, lap bookkeeping), ``pipeline`` (one module per CLI stage), ``storage`` (artifacts,
episode files, checkpoints, the weights cache, evaluation reports) and ``app`` (background jobs, the
pages' data views, the leaderboard and the live race). ``config`` holds one config dataclass per stage
and ``stages`` the one table of stages that the CLI, the jobs and the pages derive from.

Imports run downwards only: ``envs`` and ``storage`` need nothing above them, ``models`` builds on
them, ``pipeline`` on ``models``, ``app`` on ``pipeline``; ``cli`` sits on top.
"""

from pathlib import Path

CODE_ROOT = Path(__file__).resolve().parent.parent  # the folder holding core/, pages/, assets/ and models/
