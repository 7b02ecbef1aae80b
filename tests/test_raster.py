"""The compiled pixel kernels (core/envs/raster.py) against the pygame-ce calls they replace, byte for byte.

Random polygons and lines reach past every edge of a small surface (so SDL_gfx's line clipping and span
clipping run) and are drawn over random pixels (so the antialiased blend runs on every colour); random
images are shrunk to random sizes and to the CarRacing frame size.
"""

from __future__ import annotations

import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import numpy as np  # noqa: E402
import pygame  # noqa: E402
import pytest  # noqa: E402
from pygame import gfxdraw  # noqa: E402

from core.envs import raster  # noqa: E402

W, H = 160, 120  # pixels, the test surface


def surface_and_view(rng: np.random.Generator) -> tuple[pygame.Surface, np.ndarray]:
    """A window-like surface of random opaque pixels, and a uint32 (H, W) copy of its words."""
    surface = pygame.Surface((W, H))
    assert surface.get_bitsize() == 32 and surface.get_masks() == raster.RGB_MASKS
    words = rng.integers(0, 1 << 24, size=(H, W), dtype=np.uint32)
    pygame.surfarray.blit_array(surface, words.T)
    return surface, words.copy()


def no_marks(words: np.ndarray) -> tuple:
    """(changed, first_out, last_out) for a kernel call whose flags a test does not look at."""
    first_out, last_out = raster.shrink_layout(words.shape[1], 13)
    return np.zeros((words.shape[0] + 1, 14), np.uint8), first_out, last_out


def assert_flags_cover_changes(words: np.ndarray, marks: tuple, top: int, what: str) -> None:
    """Every output pixel whose source pixels differ between rows y - 1 and y is flagged for y."""
    changed, first_out, last_out = marks
    differs = words[top + 1 :] != words[top:-1]  # [y - top - 1, x]: rows y - 1 and y differ at x
    for y, x in np.argwhere(differs):
        row = y + top + 1
        for j in (first_out[x], last_out[x]):
            assert changed[row, j], f"{what}: rows {row - 1} and {row} differ at x={x} but output {j} is not flagged"
    assert changed[top + 1 :].mean() < 0.9, f"{what}: flags everything"


def words_of(surface: pygame.Surface) -> np.ndarray:
    return pygame.surfarray.array2d(surface).T.astype(np.uint32) & 0xFFFFFF


def random_polygon(rng: np.random.Generator, n: int, spread: int) -> list[tuple[int, int]]:
    """n vertices around a random centre, some far past the surface's edges."""
    cx, cy = rng.integers(-40, W + 40), rng.integers(-40, H + 40)
    return [(int(cx + rng.integers(-spread, spread + 1)), int(cy + rng.integers(-spread, spread + 1))) for _ in range(n)]


def assert_same(expected: np.ndarray, got: np.ndarray, what: str) -> None:
    if not np.array_equal(expected & 0xFFFFFF, got & 0xFFFFFF):
        bad = np.argwhere((expected & 0xFFFFFF) != (got & 0xFFFFFF))
        y, x = bad[0]
        raise AssertionError(f"{what}: {len(bad)} pixels differ, first at x={x} y={y}: "
                             f"pygame {expected[y, x]:06x}, kernel {got[y, x]:06x}")


@pytest.mark.parametrize("seed", range(3))
def test_filled_polygon_and_aapolygon_match_gfxdraw(seed):
    rng = np.random.default_rng(seed)
    surface, words = surface_and_view(rng)
    marks = no_marks(words)
    for k in range(150):
        n = int(rng.choice([3, 4, 4, 4, 5, 6]))
        points = random_polygon(rng, n, spread=int(rng.choice([3, 30, 150])))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        word = raster.map_rgb(color)
        vx = np.array([p[0] for p in points], np.int64)
        vy = np.array([p[1] for p in points], np.int64)
        if k % 2:
            gfxdraw.aapolygon(surface, points, color)
            raster.aapolygon(words, vx, vy, word, 0, marks)
        else:
            gfxdraw.filled_polygon(surface, points, color)
            raster.filled_polygon(words, vx, vy, word, 0, marks)
        assert_same(words_of(surface), words, f"seed {seed} shape {k} {points} {color}")


def test_clip_top_leaves_the_rows_above_and_draws_the_rest_exactly():
    rng = np.random.default_rng(11)
    surface, words = surface_and_view(rng)
    before = words.copy()
    marks = no_marks(words)
    top = 50
    for _ in range(60):
        points = random_polygon(rng, 4, spread=80)
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        vx = np.array([p[0] for p in points], np.int64)
        vy = np.array([p[1] for p in points], np.int64)
        gfxdraw.aapolygon(surface, points, color)
        gfxdraw.filled_polygon(surface, points, color)
        raster.aapolygon(words, vx, vy, raster.map_rgb(color), top, marks)
        raster.filled_polygon(words, vx, vy, raster.map_rgb(color), top, marks)
    assert_same(words_of(surface)[top:], words[top:], "rows below clip_top")
    assert np.array_equal(words[:top], before[:top])


def test_pg_polygon_matches_pygame_draw_polygon():
    """Float vertices (truncated as pygame does), 4 to 8 of them, some past the edges, some flat."""
    rng = np.random.default_rng(3)
    surface, words = surface_and_view(rng)
    marks = no_marks(words)
    polygons, colors = [], []
    for k in range(200):
        n = int(rng.integers(4, 9))
        points = [(x + rng.uniform(-1, 1), y + rng.uniform(-1, 1))
                  for x, y in random_polygon(rng, n, spread=int(rng.choice([1, 4, 40, 120])))]
        if k % 10 == 0:
            points = [(x, points[0][1]) for x, _ in points]  # one row high
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        pygame.draw.polygon(surface, color, points)
        polygons.append(points)
        colors.append(raster.map_rgb(color))
    sx = np.array([x for poly in polygons for x, _ in poly])
    sy = np.array([y for poly in polygons for _, y in poly])
    counts = np.array([len(poly) for poly in polygons])
    firsts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    raster.pg_polygons(words, sx, sy, firsts, counts, np.array(colors), 0, marks)
    assert_same(words_of(surface), words, "pygame.draw.polygon")


def test_draw_hud_redrawn_frame_after_frame_matches_the_stock_hud():
    """Indicators growing, shrinking, vanishing and turning negative, and a score that moves, drawn on one
    buffer frame after frame, against the stock bar, ``_render_indicators`` polygons and blit on a fresh
    surface each frame; the flags cover every row-to-row change."""
    from core.envs.fast_car_racing import INDICATOR_COLORS, INDICATOR_WORDS

    width, height, top = 1000, 800, 700
    bar = [(width, height), (width, height - 100), (0, height - 100), (0, height)]
    rng = np.random.default_rng(11)
    words = np.zeros((height, width), np.uint32)
    boxes = np.zeros((len(INDICATOR_COLORS) + 1, 4), np.int64)
    n_boxes = 0
    first_out, last_out = raster.shrink_layout(width, 96)
    for frame in range(40):
        values = rng.normal(0.0, [20, 40, 40, 40, 40, 0.3, 2], 7) * (rng.random(7) > 0.3)
        values[rng.random(7) < 0.1] = 5e-5  # under render_if_min's threshold
        text = rng.integers(0, 1 << 24, size=(30, int(rng.integers(60, 90))), dtype=np.uint32)
        tx, ty = int(rng.integers(0, 40)), int(rng.integers(top, top + 50))
        expected = pygame.Surface((width, height))
        pygame.draw.polygon(expected, (0, 0, 0), bar)
        sx, sy, which, count, _ = raster.hud_indicators(values, width, height)
        for k in range(count):
            points = list(zip(sx[4 * k : 4 * k + 4], sy[4 * k : 4 * k + 4]))
            pygame.draw.polygon(expected, INDICATOR_COLORS[which[k]], points)
        patch = pygame.Surface(text.shape[::-1])
        pygame.surfarray.blit_array(patch, text.T)
        expected.blit(patch, (tx, ty))
        marks = (np.ones((height + 1, 97), np.uint8), first_out, last_out)
        n_boxes = raster.draw_hud(words, marks, values, INDICATOR_WORDS, text, tx, ty, boxes, n_boxes, top)
        assert n_boxes >= 1
        assert_same(words_of(expected)[top:], words[top:], f"HUD, frame {frame}")
        assert_flags_cover_changes(words, marks, top, f"HUD, frame {frame}")
    values = np.zeros(7)
    values[0] = 300.0  # the speed bar reaches above the HUD's first row: nothing is drawn
    before = words.copy()
    assert raster.draw_hud(words, marks, values, INDICATOR_WORDS, text, tx, ty, boxes, n_boxes, top) == -1
    assert np.array_equal(words, before)


@pytest.mark.parametrize(
    ("src", "dst"), [((1000, 800), (96, 96)), ((1000, 800), (600, 400)), ((157, 93), (40, 31)), ((64, 64), (63, 5))]
)
def test_shrink_matches_smoothscale(src, dst):
    rng = np.random.default_rng(src[0] + dst[1])
    image = pygame.Surface(src)
    words = rng.integers(0, 1 << 24, size=(src[1], src[0]), dtype=np.uint32)
    words[: src[1] // 2] = 0xFFFFFF  # saturated sums too
    pygame.surfarray.blit_array(image, words.T)
    expected = np.transpose(pygame.surfarray.array3d(pygame.transform.smoothscale(image, dst)), (1, 0, 2))
    tmp = np.empty((src[1], dst[0], 3), np.uint8)
    got = np.empty((dst[1], dst[0], 3), np.uint8)
    raster.shrink_x(words, np.arange(src[1]), tmp)
    raster.shrink_y(tmp, got)
    assert got.tobytes() == expected.tobytes()


@pytest.mark.parametrize("top", [0, 37])
def test_flags_cover_every_row_to_row_change_and_the_flagged_shrink_matches(top):
    """On a plain fill, the kernels flag every place where a row differs from the one above (and not
    much more), so ``shrink_x_changed`` gives ``shrink_x``'s bytes."""
    rng = np.random.default_rng(top)
    words = np.full((H, W), 0x668866, np.uint32)
    first_out, last_out = raster.shrink_layout(W, 13)
    marks = (np.zeros((H + 1, 14), np.uint8), first_out, last_out)
    for k in range(40):
        points = random_polygon(rng, int(rng.choice([3, 4, 4, 5])), spread=int(rng.choice([2, 20, 60])))
        vx = np.array([p[0] for p in points], np.int64)
        vy = np.array([p[1] for p in points], np.int64)
        word = raster.map_rgb(rng.integers(0, 256, 3))
        raster.aapolygon(words, vx, vy, word, top, marks)
        raster.filled_polygon(words, vx, vy, word, top, marks)
    assert_flags_cover_changes(words, marks, top, f"top {top}")
    rows = np.arange(H - 1, top - 1, -1)  # upside down, as the frame reads the world
    expected = np.empty((len(rows), 13, 3), np.uint8)
    got = np.empty((len(rows), 13, 3), np.uint8)
    raster.shrink_x(words, rows, expected)
    raster.shrink_x_changed(words, rows, marks[0], got)
    assert got.tobytes() == expected.tobytes()
