"""CarRacing-v3 with the same frames, rewards and physics as Gymnasium's, rendered several times faster.

Gymnasium's ``CarRacing._render`` spends almost all of a step in Python: it rotates, offsets and culls
about 800 polygons one vertex at a time (about 90 survive), loads a font from disk every frame and draws
the HUD text anew. ``FastCarRacing`` keeps the physics, the track generation and every pygame drawing
call of the original, in the same order and with the same float arguments, and changes only how those
arguments are computed:

* the grass patches and track polygons are kept as one float64 array per track; each frame rotates,
  zooms and translates all of them at once with NumPy, using the very cos/sin pygame's
  ``Vector2.rotate_rad`` uses, so every coordinate is bit-for-bit the one the stock loop computes;
* culling is the stock test (any vertex inside the window grown by ``MAX_SHAPE_DIM``), done on the
  whole array before any drawing;
* the font and the rendered score text are cached.

The pixels therefore come from the same rasteriser (SDL_gfx through ``pygame.gfxdraw``) fed the same
numbers, and ``smoothscale`` down to 96x96 is untouched. ``tests/test_fast_env.py`` checks the claim
frame for frame against ``gymnasium.make("CarRacing-v3")``.

Importing this module registers ``FastCarRacing-v3`` (same wrappers, limits and threshold as stock).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pygame
from gymnasium.envs.box2d.car_racing import (
    GRASS_DIM,
    MAX_SHAPE_DIM,
    PLAYFIELD,
    SCALE,
    STATE_H,
    STATE_W,
    VIDEO_H,
    VIDEO_W,
    WINDOW_H,
    WINDOW_W,
    ZOOM,
    CarRacing,
)
from pygame import gfxdraw

ENV_ID = "FastCarRacing-v3"
STOCK_ENV_ID = "CarRacing-v3"
FONT_SIZE = 42  # points, the stock HUD score font
SCORE_CENTER = (60, WINDOW_H - WINDOW_H * 2.5 / 40.0)  # pixels, where the stock HUD centres the score
# Window grown by the largest polygon diagonal: the stock culling box, in pixels.
CULL_LO = -MAX_SHAPE_DIM
CULL_HI_X = WINDOW_W + MAX_SHAPE_DIM
CULL_HI_Y = WINDOW_H + MAX_SHAPE_DIM


def _grass_polygons() -> np.ndarray:
    """float64 (400, 4, 2): the stock grass patches in world units, in the stock drawing order."""
    polys = []
    for x in range(-20, 20, 2):
        for y in range(-20, 20, 2):
            polys.append(
                [
                    (GRASS_DIM * x + GRASS_DIM, GRASS_DIM * y + 0),
                    (GRASS_DIM * x + 0, GRASS_DIM * y + 0),
                    (GRASS_DIM * x + 0, GRASS_DIM * y + GRASS_DIM),
                    (GRASS_DIM * x + GRASS_DIM, GRASS_DIM * y + GRASS_DIM),
                ]
            )
    return np.array(polys, dtype=np.float64)


GRASS_POLYS = _grass_polygons()
FIELD_POLY = [(PLAYFIELD, PLAYFIELD), (PLAYFIELD, -PLAYFIELD), (-PLAYFIELD, -PLAYFIELD), (-PLAYFIELD, PLAYFIELD)]


class FastCarRacing(CarRacing):
    """Gymnasium's ``CarRacing`` with a vectorised renderer; same constructor, spaces and outputs.

    ``render_mode`` "rgb_array" and "state_pixels" use the fast path; "human" uses the stock one.
    Observations: uint8 (96, 96, 3), bit-identical to ``gymnasium.make("CarRacing-v3")``.
    """

    _font: pygame.font.Font | None = None
    _score_cache: tuple[str, pygame.Surface, pygame.Rect] | None = None

    def _create_track(self) -> bool:
        ok = super()._create_track()
        if ok:
            self._index_track()
        return ok

    def _index_track(self) -> None:
        """Gather this track's polygons into arrays: grass first, then road tiles and kerbs, stock order.

        Road tile colours change during an episode: ``FrictionDetector`` writes ``tile.color[:] =
        road_color`` when the car first touches a tile. Each tile's ``color`` becomes a row view of one
        (N, 3) array, so those writes land where the renderer reads them, with the same values.
        """
        n = len(self.road_poly)
        road_xy = np.array([poly for poly, _ in self.road_poly], dtype=np.float64).reshape(n, 4, 2)
        colors = np.array([np.asarray(color, dtype=np.float64) for _, color in self.road_poly])
        tiles = {id(t.color): t for t in self.road}
        for k, (poly, color) in enumerate(self.road_poly):
            tile = tiles.get(id(color))
            if tile is not None:
                tile.color = colors[k]
                self.road_poly[k] = (poly, colors[k])
        self._road_colors = colors
        self._polys = np.concatenate([GRASS_POLYS, road_xy])
        self._n_grass = len(GRASS_POLYS)

    def _render(self, mode: str):
        if mode not in ("state_pixels", "rgb_array"):
            return super()._render(mode)
        if not pygame.font.get_init():
            pygame.font.init()
        if self.clock is None:
            self.clock = pygame.time.Clock()
        if "t" not in self.__dict__:
            return None  # reset() not called yet

        self.surf = pygame.Surface((WINDOW_W, WINDOW_H))
        assert self.car is not None
        angle = -self.car.hull.angle
        # Animating first second zoom (stock formula, same float operations).
        zoom = 0.1 * SCALE * max(1 - self.t, 0) + ZOOM * SCALE * min(self.t, 1)
        scroll_x = -(self.car.hull.position[0]) * zoom
        scroll_y = -(self.car.hull.position[1]) * zoom
        trans = pygame.math.Vector2((scroll_x, scroll_y)).rotate_rad(angle)
        trans = (WINDOW_W / 2 + trans[0], WINDOW_H / 4 + trans[1])

        self._render_road_fast(zoom, trans, angle)
        self.car.draw(self.surf, zoom, trans, angle, mode not in ["state_pixels_list", "state_pixels"])
        self.surf = pygame.transform.flip(self.surf, False, True)
        self._render_indicators(WINDOW_W, WINDOW_H)
        text, rect = self._score_text()
        self.surf.blit(text, rect)

        if mode == "rgb_array":
            return self._create_image_array(self.surf, (VIDEO_W, VIDEO_H))
        return self._create_image_array(self.surf, (STATE_W, STATE_H))

    def _score_text(self) -> tuple[pygame.Surface, pygame.Rect]:
        """The HUD score as the stock code renders it, redrawn only when its text changes."""
        label = f"{self.reward:04.0f}"
        cached = self._score_cache
        if cached is not None and cached[0] == label:
            return cached[1], cached[2]
        if FastCarRacing._font is None:
            FastCarRacing._font = pygame.font.Font(pygame.font.get_default_font(), FONT_SIZE)
        text = FastCarRacing._font.render(label, True, (255, 255, 255), (0, 0, 0))
        rect = text.get_rect()
        rect.center = SCORE_CENTER
        self._score_cache = (label, text, rect)
        return text, rect

    def _render_road_fast(self, zoom: float, translation: tuple[float, float], angle: float) -> None:
        """The stock ``_render_road``: background, grass, road, as the same gfxdraw calls, culled in bulk."""
        surf = self.surf
        # pygame's own cos/sin for this angle, including its exact 0/90/180/270 degree cases:
        # rotating (1, 0) returns exactly (cos, sin), and c*x - s*y, s*x + c*y is its formula.
        cos_a, sin_a = pygame.math.Vector2(1.0, 0.0).rotate_rad(angle)
        tx, ty = translation

        field = [pygame.math.Vector2(c).rotate_rad(angle) for c in FIELD_POLY]
        field = [(c[0] * zoom + tx, c[1] * zoom + ty) for c in field]
        gfxdraw.aapolygon(surf, field, self.bg_color)
        gfxdraw.filled_polygon(surf, field, self.bg_color)

        px = self._polys[..., 0]
        py = self._polys[..., 1]
        sx = (cos_a * px - sin_a * py) * zoom + tx
        sy = (sin_a * px + cos_a * py) * zoom + ty
        inside = (sx >= CULL_LO) & (sx <= CULL_HI_X) & (sy >= CULL_LO) & (sy <= CULL_HI_Y)
        visible = np.flatnonzero(inside.any(axis=1))
        if visible.size == 0:
            return
        points = np.stack([sx[visible], sy[visible]], axis=-1).tolist()
        n_grass = self._n_grass
        grass_color = self.grass_color
        road_colors = self._road_colors[visible[visible >= n_grass] - n_grass].astype(np.int64).tolist()
        aapolygon = gfxdraw.aapolygon
        filled_polygon = gfxdraw.filled_polygon
        r = 0
        for k, poly in zip(visible.tolist(), points):
            if k < n_grass:
                color = grass_color
            else:
                color = road_colors[r]
                r += 1
            aapolygon(surf, poly, color)
            filled_polygon(surf, poly, color)


if ENV_ID not in gym.registry:
    gym.register(
        id=ENV_ID,
        entry_point="core.fast_car_racing:FastCarRacing",
        max_episode_steps=1000,
        reward_threshold=900,
    )


def make_car_racing(fast: bool = True, **kwargs: Any) -> gym.Env:
    """``gymnasium.make`` of ``FastCarRacing-v3`` (``fast=True``) or the stock ``CarRacing-v3``."""
    return gym.make(ENV_ID if fast else STOCK_ENV_ID, **kwargs)
