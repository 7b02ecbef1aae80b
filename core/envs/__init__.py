"""The environments: Gymnasium's stock ``CarRacing-v3`` and ``FastCarRacing-v3``, a drop-in copy whose
frames, rewards and flags are bit-identical but drawn faster (``fast_car_racing``); ``env`` makes either by
name and holds the frame preprocessing (crop, resize to 64x64); ``laps`` tells how an episode ended
(lap, off-track, out of steps) and which tiles were skipped. Nothing here knows about models.
"""
