"""CarRacing-v3 with the same frames, rewards and physics as Gymnasium's, rendered several times faster.

Gymnasium's ``CarRacing._render`` spends almost all of a step in Python: it rotates, offsets and culls
about 800 polygons one vertex at a time (about 90 survive), loads a font from disk every frame, draws a
1000x800 picture, flips it upside down and scales it to 96x96. ``FastCarRacing`` keeps the physics and the
track generation, feeds the rasterisers the same numbers, and stops doing work whose result is thrown away:

* Compiled pixels. ``core/envs/raster.py`` ports, line by line and byte for byte, the C that pygame-ce
  runs for the stock frame: SDL_gfx's filled and antialiased polygons (road, grass, field),
  ``pygame.draw.polygon`` (the car) and the SSE2 ``smoothscale`` filters (numba, compiled once per machine).
  The track is drawn in one call on the world surface's pixels, the HUD (indicators and score) in
  another, which repaints only where the last frame's were (both on pygame's default pixel format).
* Geometry. Each frame rotates, zooms and translates the grass patches and track polygons with the very
  cos/sin pygame's ``Vector2.rotate_rad`` uses and the stock float64 arithmetic, so every vertex is
  bit-for-bit the stock one. A polygon is drawn only if the stock code draws it and its pixels can reach
  the part of the window that ends up in the frame. The car's vertices get Box2D's float32 transform.
* Fills. The background polygon is replaced by a plain fill when the window lies well inside it, and
  the rows that the HUD bar paints over are neither drawn nor read.
* Scaling. ``smoothscale`` shrinks along x, then along y, row by row and column by column, so each frame row
  is x-shrunk where it lies (the world rows bottom up, as the stock upside-down flip would put them, then
  the HUD rows): no flip, no frame. The rasterisers flag, per output pixel of the x pass, where a row may
  differ from the row above (near polygon edges), and the x pass copies every other output pixel from the
  row before: equal inputs give equal outputs, and about 90% of a frame's are copies.
* Caching. The font, the rendered score text and the window-sized surfaces are made once; the stock
  code loads the font from disk and allocates two 1000x800 surfaces every frame.

Where an assumption behind a shortcut does not hold, that part is done the longer way: the field
polygon is drawn when the window reaches past its edge (at the start's zoom, say); pygame scales the
frame when an indicator grows above the HUD bar or for the "rgb_array" video size, and draws everything
on a pixel format other than pygame's default 32-bit one. ``tests/test_fast_env.py`` checks the frames byte for byte against
``gymnasium.make("CarRacing-v3")``, ``tests/test_raster.py`` each kernel against pygame.

Importing this module registers ``FastCarRacing-v3`` (same wrappers, limits and threshold as stock).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import gymnasium as gym
import numpy as np
import pygame
from gymnasium.envs.box2d.car_dynamics import SIZE, WHEEL_R, WHEEL_W, WHEEL_WHITE
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

from core.envs import raster

ENV_ID = "FastCarRacing-v3"
STOCK_ENV_ID = "CarRacing-v3"
FONT_SIZE = 42  # points, the stock HUD score font
SCORE_CENTER = (60, WINDOW_H - WINDOW_H * 2.5 / 40.0)  # pixels, where the stock HUD centres the score
# The stock culling box: the window grown by the largest polygon diagonal, in pixels.
CULL_LO = -MAX_SHAPE_DIM
CULL_HI_X = WINDOW_W + MAX_SHAPE_DIM
CULL_HI_Y = WINDOW_H + MAX_SHAPE_DIM
# Pixels a gfxdraw polygon may reach beyond its vertices: one for the antialiased outline, one for the
# truncation of float vertices to whole pixels.
REACH = 2.0
FIELD_MARGIN = 4.0  # pixels the window must clear the field outline by before a plain fill replaces it
WINDOW_CORNERS = ((0.0, 0.0), (WINDOW_W, 0.0), (0.0, WINDOW_H), (WINDOW_W, WINDOW_H))  # pixels
HUD_BAR_H = 5 * WINDOW_H / 40.0  # pixels, height of the stock black HUD bar
# The stock indicators' colours, in the order of ``raster.hud_indicators``'s values: speed, the four
# wheels' ABS sensors, steering, angular velocity.
INDICATOR_COLORS = ((255, 255, 255), (0, 0, 255), (0, 0, 255), (51, 0, 255), (51, 0, 255), (0, 255, 0), (255, 0, 0))
INDICATOR_WORDS = np.array([raster.map_rgb(c) for c in INDICATOR_COLORS], np.int64)


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
FIELD_ARRAY = np.array(FIELD_POLY, dtype=np.float64)
HUD_BAR = [(WINDOW_W, WINDOW_H), (WINDOW_W, WINDOW_H - HUD_BAR_H), (0, WINDOW_H - HUD_BAR_H), (0, WINDOW_H)]


_hud_tops: dict[tuple, int] = {}  # pixel format -> first row the HUD bar covers


def _first_row_covered_by_hud(like: pygame.Surface) -> int:
    """First row from which the stock HUD bar, drawn black over the flipped frame, paints every pixel.

    Measured by drawing it once per pixel format, so a different rasteriser gives a different (still
    correct) answer.
    """
    key = _pixel_format(like)
    if key not in _hud_tops:
        probe = pygame.Surface(like.get_size(), 0, like)
        probe.fill((255, 255, 255))
        pygame.draw.polygon(probe, color=(0, 0, 0), points=HUD_BAR)
        row_black = (pygame.surfarray.array2d(probe) == probe.map_rgb((0, 0, 0))).all(axis=0)  # [x, y] -> y
        top = WINDOW_H
        while top > 0 and row_black[top - 1]:
            top -= 1
        _hud_tops[key] = top
    return _hud_tops[key]


def _pixel_format(surface: pygame.Surface) -> tuple:
    return surface.get_bitsize(), surface.get_masks(), surface.get_size()


_font: pygame.font.Font | None = None  # the HUD font, loaded once (the stock code loads it every frame)


def _hud_font() -> pygame.font.Font:
    global _font
    if _font is None:
        _font = pygame.font.Font(pygame.font.get_default_font(), FONT_SIZE)
    return _font


def _forget_font() -> None:
    """Drop the cached font: after ``pygame.quit()`` or ``pygame.font.quit()`` it can no longer render."""
    global _font
    _font = None


pygame.register_quit(_forget_font)


def _view(surface: pygame.Surface) -> np.ndarray:
    """uint32 (H, W) view of a 32-bit surface's pixels. The surface stays locked while it lives."""
    return np.asarray(surface.get_view("2")).T


class _Canvas:
    """The window-sized surfaces one env draws on, kept across frames.

    ``world``: the track and car as the stock code draws them, before its upside-down flip.
    ``hud``: the frame's HUD rows (``hud_top`` and below), in frame coordinates.
    """

    def __init__(self) -> None:
        # Made exactly like the stock per-frame surface, so they get the same pixel format.
        self.world = pygame.Surface((WINDOW_W, WINDOW_H))
        self.hud = pygame.Surface((WINDOW_W, WINDOW_H))
        self.hud_top = _first_row_covered_by_hud(self.hud)
        # The band shortcut reads pixels as 32-bit words; other formats take the stock path.
        self.banded = self.world.get_bytesize() == 4 and 0 < self.hud_top < WINDOW_H
        self._bands: dict[tuple[int, int], _Bands] = {}
        # The compiled kernels read and write 0x00RRGGBB words; another format keeps pygame throughout.
        self.compiled = self.banded and self.world.get_masks() == raster.RGB_MASKS
        self.world_px = _view(self.world) if self.compiled else None  # draw calls still work on it
        # The HUD is drawn by ``raster.draw_hud`` alone on a compiled canvas (a locked surface takes no blit).
        self.hud_px = _view(self.hud) if self.compiled else None
        self.hud_boxes = np.zeros((len(INDICATOR_COLORS) + 1, 4), np.int64)  # where draw_hud drew last
        self.n_hud_boxes = 0
        self._world_rows = np.arange(WINDOW_H - 1, WINDOW_H - 1 - self.hud_top, -1)  # frame row -> world row
        self._hud_rows = np.arange(self.hud_top, WINDOW_H)
        self._narrow = np.empty((WINDOW_H, STATE_W, 3), np.uint8)  # the x pass of the frame
        # Where each picture may differ from one row to the next, per output pixel of the x pass
        # (raster._touch): the kernels flag what they draw, ``mark_drawn`` what pygame draws.
        self.first_out, self.last_out = raster.shrink_layout(WINDOW_W, STATE_W)
        self.world_changed = np.ones((WINDOW_H + 1, STATE_W + 1), np.uint8)
        self.hud_changed = np.ones((WINDOW_H + 1, STATE_W + 1), np.uint8)
        self.world_marks = (self.world_changed, self.first_out, self.last_out)
        self.hud_marks = (self.hud_changed, self.first_out, self.last_out)

    def matches_default_format(self) -> bool:
        """Whether a new ``pygame.Surface`` would still get this canvas's pixel format."""
        return _pixel_format(pygame.Surface((WINDOW_W, WINDOW_H))) == _pixel_format(self.world)

    def mark_drawn(self, changed: np.ndarray, rects: list[pygame.Rect]) -> None:
        """pygame drew inside ``rects``: those rows, and the row below each, may differ from the row above."""
        for rect in rects:
            rect = rect.clip(0, 0, WINDOW_W, WINDOW_H)
            if rect.w and rect.h:
                changed[rect.top : rect.bottom + 1, self.first_out[rect.left] : self.last_out[rect.right - 1] + 1] = 1

    def shrink_state(self) -> np.ndarray:
        """uint8 (STATE_H, STATE_W, 3): ``smoothscale`` of the stock frame to the observation size.

        The compiled SSE2 filters read each frame row where it lies (world row ``H - 1 - r`` above the
        HUD, the HUD surface below), so neither the flip nor the whole frame is ever made.
        """
        top = self.hud_top
        narrow = self._narrow
        raster.shrink_x_changed(self.world_px, self._world_rows, self.world_changed, narrow[:top])
        raster.shrink_x_changed(self.hud_px, self._hud_rows, self.hud_changed, narrow[top:])
        out = np.empty((STATE_H, STATE_W, 3), np.uint8)
        raster.shrink_y(narrow, out)
        return out

    def bands(self, size: tuple[int, int]) -> _Bands:
        if size not in self._bands:
            self._bands[size] = _Bands(self, size)
        return self._bands[size]


class _Bands:
    """``smoothscale(frame, size)`` of the stock frame, computed band by band.

    The stock frame is the world picture flipped upside down, with the HUD drawn over rows ``hud_top``
    and below (which its black bar covers entirely). smoothscale shrinks every row along x, then every
    column of the result along y (pygame's ``scalesmooth``: ``filter_shrink_X`` into a buffer, then
    ``filter_shrink_Y``); a one-axis call runs just that filter. Rows do not mix in the first pass, so
    x-shrinking the world rows and the HUD rows separately, flipping the narrow world band and
    stacking the two gives the first pass's buffer byte for byte, at a tenth of the width to flip.
    """

    def __init__(self, canvas: _Canvas, size: tuple[int, int]) -> None:
        top = canvas.hud_top
        width, _ = size
        self.size = size
        self.top = top
        self.world_band = canvas.world.subsurface((0, WINDOW_H - top, WINDOW_W, top))
        self.hud_band = canvas.hud.subsurface((0, top, WINDOW_W, WINDOW_H - top))
        self.narrow_world = pygame.Surface((width, top), 0, self.world_band)
        self.narrow_hud = pygame.Surface((width, WINDOW_H - top), 0, self.hud_band)
        self.narrow = pygame.Surface((width, WINDOW_H), 0, canvas.world)
        self.out = pygame.Surface(size, 0, self.narrow)
        # Views lock their surfaces; these are never blitted to, which is all a lock forbids.
        self._narrow_world_px = _view(self.narrow_world)
        self._narrow_hud_px = _view(self.narrow_hud)
        self._narrow_px = _view(self.narrow)
        self._out_rgb = pygame.surfarray.pixels3d(self.out)

    def shrink(self) -> np.ndarray:
        """uint8 (height, width, 3): the frame as ``CarRacing._create_image_array`` returns it."""
        smoothscale = pygame.transform.smoothscale
        top = self.top
        smoothscale(self.world_band, (self.size[0], top), self.narrow_world)
        smoothscale(self.hud_band, (self.size[0], WINDOW_H - top), self.narrow_hud)
        self._narrow_px[:top] = self._narrow_world_px[::-1]
        self._narrow_px[top:] = self._narrow_hud_px
        smoothscale(self.narrow, self.size, self.out)
        return np.transpose(np.array(self._out_rgb), axes=(1, 0, 2))


class FastCarRacing(CarRacing):
    """Gymnasium's ``CarRacing`` with a faster renderer; same constructor, spaces and outputs.

    ``render_mode`` "rgb_array" and "state_pixels" and every step's observation use the fast path;
    "human" uses the stock one. Observations: uint8 (96, 96, 3), bit-identical to
    ``gymnasium.make("CarRacing-v3")`` for the same seed and actions.
    """

    _score_cache: tuple[str, pygame.Surface, pygame.Rect] | None = None
    _canvas: _Canvas | None = None
    _car_cache: tuple[Any, np.ndarray, np.ndarray, list[tuple[int, int, int]]] | None = None

    # ---- track ---------------------------------------------------------------------------------------

    def _create_track(self) -> bool:
        ok = super()._create_track()
        if ok:
            self._index_track()
        return ok

    def _index_track(self) -> None:
        """Gather this track's polygons into arrays: grass first, then road tiles and kerbs, stock order.

        Road tile colours change during an episode: ``FrictionDetector`` writes ``tile.color[:] =
        road_color`` when the car touches a tile. Each tile's ``color`` becomes a row view of one
        (N, 3) array, so those writes land where the renderer reads them, with the same values.
        """
        n = len(self.road_poly)
        road_xy = np.array([poly for poly, _ in self.road_poly], dtype=np.float64).reshape(n, 4, 2)
        colors = np.array([np.asarray(color, dtype=np.float64) for _, color in self.road_poly]).reshape(n, 3)
        tiles = {id(t.color): t for t in self.road}
        for k, (poly, color) in enumerate(self.road_poly):
            tile = tiles.get(id(color))
            if tile is not None:
                tile.color = colors[k]
                self.road_poly[k] = (poly, colors[k])
        self._road_colors = colors
        self._polys = np.concatenate([GRASS_POLYS, road_xy])
        self._centers = self._polys.mean(axis=1)
        self._radii = np.sqrt(((self._polys - self._centers[:, None, :]) ** 2).sum(axis=2)).max(axis=1)
        self._n_grass = len(GRASS_POLYS)
        # The field and grass colours are set before the track is made and fixed until the next reset.
        self._grass_word = self._pixel_word(self.grass_color)
        self._bg_word = self._pixel_word(self.bg_color)
        if self._canvas is not None and not self._canvas.matches_default_format():
            self._canvas = None  # the stock code's per-frame surface would now get another format

    # ---- frame ---------------------------------------------------------------------------------------

    def _render(self, mode: str):
        if mode not in ("state_pixels", "rgb_array"):
            return super()._render(mode)
        if not pygame.font.get_init():
            _forget_font()
            pygame.font.init()
        if self.clock is None:
            self.clock = pygame.time.Clock()
        if "t" not in self.__dict__:
            return None  # reset() not called yet

        canvas = self._canvases()
        world = canvas.world
        assert self.car is not None
        angle = -self.car.hull.angle
        # Animating first second zoom (stock formula, same float operations).
        zoom = 0.1 * SCALE * max(1 - self.t, 0) + ZOOM * SCALE * min(self.t, 1)
        scroll_x = -(self.car.hull.position[0]) * zoom
        scroll_y = -(self.car.hull.position[1]) * zoom
        trans = pygame.math.Vector2((scroll_x, scroll_y)).rotate_rad(angle)
        trans = (WINDOW_W / 2 + trans[0], WINDOW_H / 4 + trans[1])

        # Only world rows that land above the HUD bar after the flip are ever seen.
        top = canvas.hud_top
        if canvas.compiled:
            self._render_road_compiled(canvas, zoom, trans, angle, first_row=WINDOW_H - top)
        else:
            self._render_road_fast(world, zoom, trans, angle, first_row=WINDOW_H - top)
        drawn: list[pygame.Rect] = []
        self._draw_car(world, zoom, trans, angle, mode not in ["state_pixels_list", "state_pixels"], drawn,
                       canvas if canvas.compiled else None)
        self.surf = world

        size = (VIDEO_W, VIDEO_H) if mode == "rgb_array" else (STATE_W, STATE_H)
        if canvas.compiled:
            if self._draw_hud_compiled(canvas):
                if size == (STATE_W, STATE_H):
                    canvas.mark_drawn(canvas.world_changed, drawn)
                    return canvas.shrink_state()
                return canvas.bands(size).shrink()
        elif canvas.banded and self._draw_hud(canvas.hud, top):
            return canvas.bands(size).shrink()
        return self._shrink_whole(canvas, size)

    def _canvases(self) -> _Canvas:
        """Window-sized surfaces kept across frames and episodes (the stock code makes one per frame)."""
        if self._canvas is None:
            self._canvas = _Canvas()
        return self._canvas

    def _draw_hud(self, hud: pygame.Surface, top: int) -> bool:
        """Draw the stock HUD (bar, indicators, score) on ``hud`` in frame coordinates, with pygame.

        Returns True when all of it lies in rows ``top`` and below, which the bar covers entirely, so
        the band above can come from the world picture alone. Otherwise draws nothing and returns False.
        """
        sx, sy, which, count, highest = raster.hud_indicators(self._indicator_values(), WINDOW_W, WINDOW_H)
        text, rect = self._score_text()
        if rect.top < top or highest < top:
            return False
        # The bar paints every pixel of rows top and below, and no other row of ``hud`` is used,
        # so a fill of that band is the same picture.
        hud.fill((0, 0, 0), (0, top, WINDOW_W, WINDOW_H - top))
        for k in range(count):
            points = list(zip(sx[4 * k : 4 * k + 4].tolist(), sy[4 * k : 4 * k + 4].tolist()))
            pygame.draw.polygon(hud, color=INDICATOR_COLORS[which[k]], points=points)
        hud.blit(text, rect)
        return True

    def _draw_hud_compiled(self, canvas: _Canvas) -> bool:
        """``_draw_hud`` on a compiled canvas's HUD words (``raster.draw_hud``), flagging what it draws in
        ``canvas.hud_marks``; it repaints only where the last frame's indicators and score were."""
        words, rect = self._score_words(canvas)
        n = raster.draw_hud(canvas.hud_px, canvas.hud_marks, self._indicator_values(), INDICATOR_WORDS, words,
                            rect.left, rect.top, canvas.hud_boxes, canvas.n_hud_boxes, canvas.hud_top)
        if n < 0:
            return False
        canvas.n_hud_boxes = n
        return True

    def _indicator_values(self) -> np.ndarray:
        """What the stock HUD's indicators show, in ``raster.hud_indicators``'s order.

        (``math.sqrt(x*x + y*y)`` is the stock ``np.sqrt(np.square(x) + np.square(y))``: both are
        correctly rounded.)
        """
        car = self.car
        vx, vy = car.hull.linearVelocity
        wheels = car.wheels
        return np.array((math.sqrt(vx * vx + vy * vy), wheels[0].omega, wheels[1].omega, wheels[2].omega,
                         wheels[3].omega, wheels[0].joint.angle, car.hull.angularVelocity))

    def _shrink_whole(self, canvas: _Canvas, size: tuple[int, int]) -> np.ndarray:
        """The stock tail: flip the whole world picture, draw the HUD on it, smoothscale the lot."""
        frame = pygame.transform.flip(canvas.world, False, True)
        self.surf = frame
        self._render_indicators(WINDOW_W, WINDOW_H)
        text, rect = self._score_text()
        frame.blit(text, rect)
        return self._create_image_array(frame, size)

    # ---- HUD -----------------------------------------------------------------------------------------

    def _score_text(self) -> tuple[pygame.Surface, pygame.Rect]:
        """The HUD score as the stock code renders it, rendered again only when its text changes."""
        label = f"{self.reward:04.0f}"
        cached = self._score_cache
        if cached is not None and cached[0] == label:
            return cached[1], cached[2]
        try:
            text = _hud_font().render(label, True, (255, 255, 255), (0, 0, 0))
        except pygame.error:  # the font module was quit and started again since the font was loaded
            _forget_font()
            text = _hud_font().render(label, True, (255, 255, 255), (0, 0, 0))
        rect = text.get_rect()
        rect.center = SCORE_CENTER
        self._score_cache = (label, text, rect)
        return text, rect

    def _score_words(self, canvas: _Canvas) -> tuple[np.ndarray, pygame.Rect]:
        """The score's pixels as ``_score_text`` blits them onto the black bar of ``canvas.hud``'s format:
        uint32 (h, w) words, and where they go; made again whenever ``_score_text`` renders a new text."""
        text, rect = self._score_text()
        cached = self.__dict__.get("_score_words_cache")
        if cached is not None and cached[0] is text:
            return cached[1], rect
        patch = pygame.Surface(text.get_size(), 0, canvas.hud)
        patch.fill((0, 0, 0))
        patch.blit(text, (0, 0))
        words = _view(patch).copy()
        self._score_words_cache = (text, words)
        return words, rect

    # ---- world ---------------------------------------------------------------------------------------

    def _render_road_fast(self, surf: pygame.Surface, zoom: float, translation: tuple[float, float],
                          angle: float, first_row: int) -> None:
        """The stock ``_render_road`` (background, grass, road) as the same gfxdraw calls, culled in bulk.

        Only rows ``first_row`` and below of ``surf`` must come out right; rows above may keep old pixels.
        """
        # pygame's own cos/sin for this angle, including its exact 0/90/180/270 degree cases:
        # rotating (1, 0) returns exactly (cos, sin), and c*x - s*y, s*x + c*y is its formula.
        cos_a, sin_a = pygame.math.Vector2(1.0, 0.0).rotate_rad(angle)
        tx, ty = translation

        if self._window_inside_field(zoom, tx, ty, cos_a, sin_a):
            # The field polygon would paint every pixel and its outline falls outside the window.
            surf.fill(self._mapped_bg_color(), (0, first_row, WINDOW_W, WINDOW_H - first_row))
        else:
            surf.fill((0, 0, 0))  # what a new stock surface holds where the field does not reach
            field = [pygame.math.Vector2(c).rotate_rad(angle) for c in FIELD_POLY]
            field = [(c[0] * zoom + tx, c[1] * zoom + ty) for c in field]
            gfxdraw.aapolygon(surf, field, self.bg_color)
            gfxdraw.filled_polygon(surf, field, self.bg_color)

        # Coarse pass over polygon centres (radius + 1 pixel of slack): everything that might reach
        # the seen rows. Then the stock vertex test (which keeps the stock drawing order and selection)
        # and an exact reach test on those few, with the stock float arithmetic.
        cx = (cos_a * self._centers[:, 0] - sin_a * self._centers[:, 1]) * zoom + tx
        cy = (sin_a * self._centers[:, 0] + cos_a * self._centers[:, 1]) * zoom + ty
        slack = self._radii * zoom + (REACH + 1.0)
        near = np.flatnonzero(
            (cx >= -slack) & (cx <= (WINDOW_W - 1) + slack) & (cy >= first_row - slack) & (cy <= (WINDOW_H - 1) + slack)
        )
        if near.size == 0:
            return
        px = self._polys[near, :, 0]
        py = self._polys[near, :, 1]
        sx = (cos_a * px - sin_a * py) * zoom + tx
        sy = (sin_a * px + cos_a * py) * zoom + ty
        stock = ((sx >= CULL_LO) & (sx <= CULL_HI_X) & (sy >= CULL_LO) & (sy <= CULL_HI_Y)).any(axis=1)
        reaches = (
            (sx.min(axis=1) <= WINDOW_W - 1 + REACH)
            & (sx.max(axis=1) >= -REACH)
            & (sy.min(axis=1) <= WINDOW_H - 1 + REACH)
            & (sy.max(axis=1) >= first_row - REACH)
        )
        keep = np.flatnonzero(stock & reaches)
        if keep.size == 0:
            return
        visible = near[keep]
        sx = sx[keep]
        sy = sy[keep]
        points = np.stack([sx, sy], axis=-1).tolist()
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

    def _render_road_compiled(self, canvas: _Canvas, zoom: float, translation: tuple[float, float],
                              angle: float, first_row: int) -> None:
        """``_render_road_fast`` in one compiled call (``raster.draw_track``) on the world's pixel words."""
        cos_a, sin_a = pygame.math.Vector2(1.0, 0.0).rotate_rad(angle)
        tx, ty = translation
        raster.draw_track(
            canvas.world_px, canvas.world_marks, self._polys, self._n_grass, self._grass_word, self._road_colors,
            FIELD_ARRAY, self._bg_word, cos_a, sin_a, float(zoom), float(tx), float(ty),
            first_row, self._window_inside_field(zoom, tx, ty, cos_a, sin_a),
            float(CULL_LO), float(CULL_HI_X), float(CULL_HI_Y), REACH,
        )

    def _pixel_word(self, color) -> int:
        """The 0x00RRGGBB word gfxdraw writes for ``color``."""
        mapped = self._mapped_color(color)
        return (mapped.r << 16) | (mapped.g << 8) | mapped.b

    @staticmethod
    def _window_inside_field(zoom: float, tx: float, ty: float, cos_a: float, sin_a: float) -> bool:
        """True when all four window corners lie at least ``FIELD_MARGIN`` pixels inside the field.

        Screen = R(angle) world * zoom + t, so world * zoom = R(-angle) (screen - t). The margin absorbs
        the truncation of vertices to whole pixels and the one-pixel reach of the outline.
        """
        limit = PLAYFIELD * zoom - FIELD_MARGIN
        for x, y in WINDOW_CORNERS:
            dx = x - tx
            dy = y - ty
            if abs(cos_a * dx + sin_a * dy) >= limit or abs(-sin_a * dx + cos_a * dy) >= limit:
                return False
        return True

    def _mapped_bg_color(self) -> pygame.Color:
        return self._mapped_color(self.bg_color)

    def _mapped_color(self, color) -> pygame.Color:
        """The pixel gfxdraw writes for ``color`` (it truncates float channels), found by drawing one."""
        key = tuple(float(c) for c in color)
        cache = self.__dict__.setdefault("_color_cache", {})
        if key not in cache:
            probe = pygame.Surface((1, 1))
            gfxdraw.pixel(probe, 0, 0, color)
            cache[key] = probe.get_at((0, 0))
        return cache[key]

    # ---- car -----------------------------------------------------------------------------------------

    def _car_vertices(self) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int]]]:
        """The car's fixture vertices, fixed for its life and so cached per car.

        float32 (M + 16, 2) vertices body after body in ``drawlist`` order, with room after them for
        four wheel stripes; intp (M,) body index of each; and per fixture (first vertex, vertex count,
        body index).
        """
        car = self.car
        if self._car_cache is None or self._car_cache[0] is not car:
            verts: list[tuple[float, float]] = []
            spans: list[tuple[int, int, int]] = []
            for b, obj in enumerate(car.drawlist):
                for f in obj.fixtures:
                    v = f.shape.vertices
                    spans.append((len(verts), len(v), b))
                    verts.extend(v)
            body_of = np.array([b for _, count, b in spans for _ in range(count)], dtype=np.intp)
            room = np.zeros((len(verts) + 16, 2), np.float32)
            room[: len(verts)] = verts
            self._car_cache = (car, room, body_of, spans)
        return self._car_cache[1], self._car_cache[2], self._car_cache[3]

    def _car_frames(self) -> np.ndarray:
        """float32 (bodies, 4): cos, sin, x, y of each body's Box2D transform, in ``drawlist`` order."""
        frames = []
        for obj in self.car.drawlist:
            t = obj.transform
            q = t.q
            p = t.position
            frames.append((q.c, q.s, p.x, p.y))
        return np.array(frames, dtype=np.float32)

    def _wheel_stripes(self) -> tuple[tuple[int, ...], list[tuple[float, float]]]:
        """The wheels that show a stripe this frame (body indices) and its four body-local vertices each:
        the stock formulas in float64 (Box2D then takes them as float32)."""
        striped: list[int] = []
        extra: list[tuple[float, float]] = []
        for b, obj in enumerate(self.car.drawlist):
            if "phase" not in obj.__dict__:
                continue
            a1 = obj.phase
            a2 = obj.phase + 1.2  # radians
            s1 = math.sin(a1)
            s2 = math.sin(a2)
            c1 = math.cos(a1)
            c2 = math.cos(a2)
            if s1 > 0 and s2 > 0:
                continue
            if s1 > 0:
                c1 = np.sign(c1)
            if s2 > 0:
                c2 = np.sign(c2)
            striped.append(b)
            extra += [
                (-WHEEL_W * SIZE, +WHEEL_R * c1 * SIZE),
                (+WHEEL_W * SIZE, +WHEEL_R * c1 * SIZE),
                (+WHEEL_W * SIZE, +WHEEL_R * c2 * SIZE),
                (-WHEEL_W * SIZE, +WHEEL_R * c2 * SIZE),
            ]
        return tuple(striped), extra

    def _car_draw_order(self, striped: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                                  list[tuple[int, ...]]]:
        """For the stripes shown: body index of every vertex (the stripes' after the fixtures'), the
        polygons in the stock drawing order as (first vertex, vertex count, pixel word) arrays, and each
        polygon's 0..255 RGB (what pygame is given).

        Cached per car, set of stripes and body colours, as the 0..255 channels pygame gets (``obj.color``
        may be reassigned or changed in place).
        """
        car = self.car
        base, base_body, spans = self._car_vertices()
        colors = tuple(tuple(int(c * 255) for c in obj.color) for obj in car.drawlist)
        cache = self.__dict__.get("_car_order_cache")
        if cache is None or cache[0] is not car or cache[1] != colors:
            cache = (car, colors, {})
            self._car_order_cache = cache
        orders = cache[2]
        if striped not in orders:
            n = len(base_body)
            first_stripe = {b: n + 4 * i for i, b in enumerate(striped)}
            order = []  # (first vertex, vertex count, RGB)
            for start, count, b in spans:
                order.append((start, count, colors[b]))
                if b in first_stripe:  # the stock draws a wheel's stripe right after each of its fixtures
                    order.append((first_stripe[b], 4, tuple(WHEEL_WHITE)))
            body_of = np.concatenate([base_body, np.repeat(np.array(striped, np.intp), 4)])
            firsts = np.array([first for first, _, _ in order], np.int64)
            counts = np.array([count for _, count, _ in order], np.int64)
            order_words = np.array([raster.map_rgb(rgb) for _, _, rgb in order], np.int64)
            orders[striped] = (body_of, firsts, counts, order_words, [rgb for _, _, rgb in order])
        return orders[striped]

    def _draw_car(self, surface: pygame.Surface, zoom: float, translation: tuple[float, float], angle: float,
                  draw_particles: bool, drawn: list[pygame.Rect], canvas: _Canvas | None = None) -> None:
        """``Car.draw`` with every vertex transformed at once; the same ``pygame.draw`` calls and points.

        Box2D's ``transform * v`` is float32 arithmetic, ``(c*x - s*y) + px``; NumPy float32 gives the
        same bits. The view rotation is then pygame's float64 one, as in ``_render_road_fast``. Appends
        the rectangle each pygame call drew in to ``drawn``. With a ``canvas`` the polygons are drawn by
        the compiled port of ``pygame.draw.polygon`` (``raster.draw_car``) on its world pixels, rows
        below the HUD's top only, and flagged in its marks.
        """
        car = self.car
        if draw_particles:
            for p in car.particles:
                poly = [pygame.math.Vector2(c).rotate_rad(angle) for c in p.poly]
                poly = [(c[0] * zoom + translation[0], c[1] * zoom + translation[1]) for c in poly]
                drawn.append(pygame.draw.lines(surface, color=p.color, points=poly, width=2, closed=False))

        verts, base_body, _ = self._car_vertices()
        n = len(base_body)
        striped, extra = self._wheel_stripes()
        if extra:
            verts[n : n + len(extra)] = extra
        verts = verts[: n + len(extra)]
        body_of, firsts, counts, order_words, rgbs = self._car_draw_order(striped)
        cos_a, sin_a = pygame.math.Vector2(1.0, 0.0).rotate_rad(angle)
        if canvas is not None:
            raster.draw_car(canvas.world_px, canvas.world_marks, verts, body_of, self._car_frames(), firsts, counts,
                            order_words, cos_a, sin_a, float(zoom), float(translation[0]), float(translation[1]),
                            WINDOW_H - canvas.hud_top)
            return
        sx, sy = raster.car_points(verts, body_of, self._car_frames(), cos_a, sin_a, float(zoom),
                                   float(translation[0]), float(translation[1]))
        points = np.stack([sx, sy], axis=-1).tolist()
        for first, count, rgb in zip(firsts.tolist(), counts.tolist(), rgbs):
            drawn.append(pygame.draw.polygon(surface, color=rgb, points=points[first : first + count]))


def register() -> None:
    """Register ``FastCarRacing-v3`` with the stock spec's limits; a no-op when already registered."""
    if ENV_ID in gym.registry:
        return
    gym.register(
        id=ENV_ID,
        entry_point="core.envs.fast_car_racing:FastCarRacing",
        max_episode_steps=1000,
        reward_threshold=900,
    )


register()


def make_car_racing(fast: bool = True, **kwargs: Any) -> gym.Env:
    """``gymnasium.make`` of ``FastCarRacing-v3`` (``fast=True``) or the stock ``CarRacing-v3``.

    Keyword arguments (``render_mode``, ``continuous``, ``domain_randomize``, ``lap_complete_percent``,
    ``max_episode_steps``...) go to ``gymnasium.make`` unchanged.
    """
    return gym.make(ENV_ID if fast else STOCK_ENV_ID, **kwargs)


def compile_kernels() -> float:
    """Drive the fast env for a few steps so that numba compiles every kernel a rollout runs (or loads them
    from its cache); returns the seconds it took. Run once on a new machine or image (the test script and
    the Dockerfile do) and the processes started after it load the machine code instead of each compiling
    it: 7-8 s of a core each on a cold cache, 0.3 s from the cache."""
    start = time.perf_counter()
    env = make_car_racing(fast=True)
    try:
        env.reset(seed=0)
        for action in ((0.0, 1.0, 0.0), (-1.0, 1.0, 0.0), (1.0, 0.0, 0.8)):  # straight, a skid, a brake
            env.step(np.array(action, np.float32))
    finally:
        env.close()
    return time.perf_counter() - start


if __name__ == "__main__":
    print(f"numba kernels ready in {compile_kernels():.1f} s (cache: {os.environ.get('NUMBA_CACHE_DIR') or 'next to the code'})")
