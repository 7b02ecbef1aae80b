"""CarRacing's action: float32 (3,) = (steer, gas, brake) in ``[-1, 0, 0]..[1, 1, 1]``.

Kept apart from ``env`` so that code which only needs the action's shape (C's parameter count, M's input
size) does not import Gymnasium and OpenCV.
"""

import numpy as np

ACTION_SIZE = 3  # steer, gas, brake
ACTION_NAMES = ("steer", "gas", "brake")
ACTION_LOW = np.array([-1.0, 0.0, 0.0], dtype=np.float32)  # steer, gas, brake
ACTION_HIGH = np.array([1.0, 1.0, 1.0], dtype=np.float32)
