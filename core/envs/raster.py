"""The pixel work of a CarRacing frame, compiled with numba, byte for byte what pygame-ce 2.5.8 draws.

Each kernel is a line-by-line port of the C code pygame-ce runs for the stock ``CarRacing._render``:

* ``filled_polygon``: SDL_gfx ``filledPolygonColorMT`` (integer scanlines, 16.16 fixed-point edge
  crossings, ``hlineColor`` spans) for an opaque colour, as ``pygame.gfxdraw.filled_polygon`` calls it.
* ``aapolygon``: SDL_gfx ``aapolygonColor``, i.e. ``_aalineColor`` without end points (Wu lines with
  8-bit weights, ``_clipLine``'s float32 clipping, ``_putPixelAlpha``'s 32-bit blend).
* ``pg_polygon(s)``: pygame-ce's ``draw.polygon`` fill (``draw_fillpoly``) for 4 or more vertices.
* ``shrink_x`` / ``shrink_y``: pygame-ce's SSE2 ``filter_shrink_X_SSE2`` / ``filter_shrink_Y_SSE2``,
  the smoothscale backend pygame-ce picks on x86-64 (``pygame.transform.get_smoothscale_backend()``
  says "SSE2"); its 14-bit fixed point rounds differently from the plain C filter's 16-bit one.
* ``draw_track``: the stock road loop (field, grass, road tiles: ``aapolygon`` then ``filled_polygon``
  for each) with the stock float64 vertex transform and culling, done in one call; ``car_points``: the
  car's Box2D float32 and view float64 vertex transform (``draw_car``: that, then ``pg_polygons``).
* ``hud_indicators`` / ``draw_hud``: the stock ``_render_indicators`` polygons (``pg_polygon``) and the
  score's pixels on the black HUD bar.

Pixels are uint32 words in pygame's default 32-bit format for a window surface, ``0x00RRGGBB``
(``RGB_MASKS``); callers check the format and keep pygame where it differs. ``clip_top`` lets a kernel
draw only rows ``clip_top`` and below while computing everything else (line clipping included) for the
whole surface, so those rows come out exactly as a full draw would leave them.

The drawing kernels also flag, in ``marks``, where a row may differ from the row above, per output
pixel of the x pass (``_touch``); ``shrink_x_changed`` computes only the flagged output pixels and
copies the others from the output row before, which the flags make exact.

The kernels release the GIL (``nogil=True``): two envs stepping in two threads of one process did 1.68x
the work a second of one (0.98x while the kernels held it).

``@njit(cache=True, nogil=True)`` compiles each kernel once per machine into ``__pycache__`` (or ``NUMBA_CACHE_DIR``);
later processes load the machine code in about a second. The kernels are not inlined at numba's level
(``inline="always"`` made the antialiased lines 7x slower); LLVM inlines what pays.
"""

from __future__ import annotations

import numpy as np
from numba import njit

RGB_MASKS = (0xFF0000, 0xFF00, 0xFF, 0)  # the pixel format these kernels read and write


def map_rgb(color) -> int:
    """The 0x00RRGGBB word pygame writes for an opaque ``color`` (channels truncated to int, as
    pygame's colour parsing does)."""
    r, g, b = (int(c) for c in color[:3])
    return (r << 16) | (g << 8) | b


# ---- SDL_gfx helpers ---------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _sint16(v):
    """C's cast of an int to Sint16 (wraps)."""
    return ((v + 32768) & 0xFFFF) - 32768


@njit(cache=True, nogil=True)
def _int32(v):
    """C's 32-bit signed int wrap-around."""
    return ((v + 2147483648) & 0xFFFFFFFF) - 2147483648


@njit(cache=True, nogil=True)
def _touch(changed, first_out, last_out, y, x1, x2):
    """Pixels x1..x2 of row y may differ from those of row y - 1: flag the outputs that read them.

    ``changed[y, j]``: output pixel j of ``shrink_x`` may differ between source rows y - 1 and y.
    ``first_out[x]``..``last_out[x]``: the output pixels that read pixel x (see ``shrink_layout``).
    """
    for j in range(first_out[x1], last_out[x2] + 1):
        changed[y, j] = 1


@njit(cache=True, nogil=True)
def _touch_pixel(changed, first_out, last_out, y, x):
    """Pixel (x, y) was drawn: rows y - 1 and y, and rows y and y + 1, may differ there."""
    changed[y, first_out[x]] = 1
    changed[y, last_out[x]] = 1
    changed[y + 1, first_out[x]] = 1
    changed[y + 1, last_out[x]] = 1


@njit(cache=True, nogil=True)
def _put(buf, x, y, color, clip_top, changed, first_out, last_out):
    """``_putPixelAlpha`` with alpha 255: store the word if (x, y) is inside the surface."""
    if 0 <= x < buf.shape[1] and clip_top <= y < buf.shape[0]:
        buf[y, x] = color
        _touch_pixel(changed, first_out, last_out, y, x)


@njit(cache=True, nogil=True)
def _blend(buf, x, y, color, alpha, clip_top, changed, first_out, last_out):
    """``_putPixelAlpha`` with alpha < 255, 32-bit DEFAULT_ALPHA_PIXEL_ROUTINE.

    Per channel C computes ``(d + ((((c - d) >> shift) * alpha >> 8) << shift)) & mask`` in Uint32;
    the wrap-arounds cancel, leaving ``d + floor((c - d) * alpha / 256)``. The word's top byte
    (no alpha mask) comes out 0.
    """
    if 0 <= x < buf.shape[1] and clip_top <= y < buf.shape[0]:
        d = np.int64(buf[y, x])
        c = np.int64(color)
        dr = (d >> 16) & 255
        dg = (d >> 8) & 255
        db = d & 255
        r = dr + ((((c >> 16) & 255) - dr) * alpha >> 8)
        g = dg + ((((c >> 8) & 255) - dg) * alpha >> 8)
        b = db + (((c & 255) - db) * alpha >> 8)
        buf[y, x] = np.uint32((r << 16) | (g << 8) | b)
        _touch_pixel(changed, first_out, last_out, y, x)


@njit(cache=True, nogil=True)
def _hline(buf, x1, x2, y, color, clip_top):
    """``hlineColor`` for an opaque colour: x1..x2 inclusive (either order), clipped.

    Returns the pixels drawn, (first, last); first > last when none.
    """
    x1 = _sint16(x1)
    x2 = _sint16(x2)
    y = _sint16(y)
    if x1 > x2:
        x1, x2 = x2, x1
    right = buf.shape[1] - 1
    if x2 < 0 or x1 > right or y < clip_top or y > buf.shape[0] - 1:
        return 1, 0
    if x1 < 0:
        x1 = 0
    if x2 > right:
        x2 = right
    buf[y, x1 : x2 + 1] = color
    return x1, x2


@njit(cache=True, nogil=True)
def _vline(buf, x, y1, y2, color, clip_top, changed, first_out, last_out):
    """``vlineColor`` for an opaque colour: y1..y2 inclusive (either order), clipped."""
    x = _sint16(x)
    y1 = _sint16(y1)
    y2 = _sint16(y2)
    if y1 > y2:
        y1, y2 = y2, y1
    if x < 0 or x > buf.shape[1] - 1 or y2 < 0 or y1 > buf.shape[0] - 1:
        return
    if y1 < clip_top:
        y1 = clip_top
    if y2 > buf.shape[0] - 1:
        y2 = buf.shape[0] - 1
    for y in range(y1, y2 + 1):
        buf[y, x] = color
        _touch_pixel(changed, first_out, last_out, y, x)


@njit(cache=True, nogil=True)
def _clip_code(x, y, right, bottom):
    code = 0
    if x < 0:
        code |= 1  # CLIP_LEFT_EDGE
    elif x > right:
        code |= 2  # CLIP_RIGHT_EDGE
    if y < 0:
        code |= 8  # CLIP_TOP_EDGE
    elif y > bottom:
        code |= 4  # CLIP_BOTTOM_EDGE
    return code


@njit(cache=True, nogil=True)
def _clip_line(x1, y1, x2, y2, right, bottom):
    """SDL_gfx ``_clipLine`` (Cohen-Sutherland with a float32 slope) against the whole surface.

    Returns (draw, x1, y1, x2, y2); the end points may come back swapped, as in C.
    """
    while True:
        code1 = _clip_code(x1, y1, right, bottom)
        code2 = _clip_code(x2, y2, right, bottom)
        if (code1 | code2) == 0:
            return True, x1, y1, x2, y2
        if (code1 & code2) != 0:
            return False, x1, y1, x2, y2
        if code1 == 0:
            x1, x2 = x2, x1
            y1, y2 = y2, y1
            code1, code2 = code2, code1
        if x2 != x1:
            m = np.float32(y2 - y1) / np.float32(x2 - x1)
        else:
            m = np.float32(1.0)
        if code1 & 1:
            y1 = _sint16(y1 + int(np.float32(0 - x1) * m))
            x1 = 0
        elif code1 & 2:
            y1 = _sint16(y1 + int(np.float32(right - x1) * m))
            x1 = right
        elif code1 & 4:
            if x2 != x1:
                x1 = _sint16(x1 + int(np.float32(bottom - y1) / m))
            y1 = bottom
        elif code1 & 8:
            if x2 != x1:
                x1 = _sint16(x1 + int(np.float32(0 - y1) / m))
            y1 = 0


@njit(cache=True, nogil=True)
def aaline(buf, x1, y1, x2, y2, color, clip_top, marks):
    """SDL_gfx ``_aalineColor(..., draw_endpoint=0)`` for an opaque colour; coordinates are Sint16.

    marks = (changed, first_out, last_out): where the drawn pixels are flagged (see ``_touch``).
    """
    changed, first_out, last_out = marks
    right = buf.shape[1] - 1
    bottom = buf.shape[0] - 1
    draw, x1, y1, x2, y2 = _clip_line(x1, y1, x2, y2, right, bottom)
    if not draw:
        return
    xx0 = x1
    yy0 = y1
    xx1 = x2
    yy1 = y2
    if yy0 > yy1:
        yy0, yy1 = yy1, yy0
        xx0, xx1 = xx1, xx0
    dx = xx1 - xx0
    dy = yy1 - yy0
    if dx == 0:  # vertical
        if dy > 0:
            _vline(buf, x1, yy0, yy0 + dy, color, clip_top, changed, first_out, last_out)
        else:
            _put(buf, x1, y1, color, clip_top, changed, first_out, last_out)
        return
    if dy == 0:  # horizontal
        lo, hi = _hline(buf, xx0, xx0 + dx, y1, color, clip_top)
        if lo <= hi:
            _touch(changed, first_out, last_out, y1, lo, hi)
            _touch(changed, first_out, last_out, y1 + 1, lo, hi)
        return
    if dx >= 0:
        xdir = 1
    else:
        xdir = -1
        dx = -dx
    erracc = 0  # Uint32
    _put(buf, x1, y1, color, clip_top, changed, first_out, last_out)
    if dy > dx:  # y-major
        erradj = (((dx << 16) // dy) << 16) & 0xFFFFFFFF
        x0pxdir = xx0 + xdir
        dy -= 1
        while dy:
            dy -= 1
            erracctmp = erracc
            erracc = (erracc + erradj) & 0xFFFFFFFF
            if erracc <= erracctmp:
                xx0 = x0pxdir
                x0pxdir += xdir
            yy0 += 1
            wgt = (erracc >> 24) & 255
            _blend(buf, _sint16(xx0), _sint16(yy0), color, (255 * (255 - wgt)) >> 8, clip_top, changed, first_out, last_out)
            _blend(buf, _sint16(x0pxdir), _sint16(yy0), color, (255 * wgt) >> 8, clip_top, changed, first_out, last_out)
    else:  # x-major
        erradj = (((dy << 16) // dx) << 16) & 0xFFFFFFFF
        y0p1 = yy0 + 1
        dx -= 1
        while dx:
            dx -= 1
            erracctmp = erracc
            erracc = (erracc + erradj) & 0xFFFFFFFF
            if erracc <= erracctmp:
                yy0 = y0p1
                y0p1 += 1
            xx0 += xdir
            wgt = (erracc >> 24) & 255
            _blend(buf, _sint16(xx0), _sint16(yy0), color, (255 * (255 - wgt)) >> 8, clip_top, changed, first_out, last_out)
            _blend(buf, _sint16(xx0), _sint16(y0p1), color, (255 * wgt) >> 8, clip_top, changed, first_out, last_out)


@njit(cache=True, nogil=True)
def aapolygon(buf, vx, vy, color, clip_top, marks):
    """SDL_gfx ``aapolygonColor``: ``aaline`` along each edge, closing edge last. vx, vy: int Sint16 (n,)."""
    n = vx.shape[0]
    for i in range(1, n):
        aaline(buf, vx[i - 1], vy[i - 1], vx[i], vy[i], color, clip_top, marks)
    aaline(buf, vx[n - 1], vy[n - 1], vx[0], vy[0], color, clip_top, marks)


@njit(cache=True, nogil=True)
def filled_polygon(buf, vx, vy, color, clip_top, marks):
    """SDL_gfx ``filledPolygonColorMT`` for an opaque colour. vx, vy: int Sint16 (n,), n >= 3.

    Rows above ``clip_top`` or below the surface are skipped; they draw nothing visible there.
    Where a row's spans differ from the row above's is flagged in ``marks`` (see ``aaline``): around
    each end of a lone span, or across all spans of both rows otherwise.
    """
    changed, first_out, last_out = marks
    n = vx.shape[0]
    miny = vy[0]
    maxy = vy[0]
    for i in range(1, n):
        if vy[i] < miny:
            miny = vy[i]
        elif vy[i] > maxy:
            maxy = vy[i]
    ints = np.empty(n, np.int64)
    prev_spans = 0  # spans drawn on the row above, their extent, and the span when there was one
    prev_min = prev_max = prev_lo = prev_hi = 0
    y = 0
    for y in range(max(miny, clip_top), min(maxy, buf.shape[0] - 1) + 1):
        count = 0
        for i in range(n):
            ind1 = n - 1 if i == 0 else i - 1
            ind2 = i
            y1 = vy[ind1]
            y2 = vy[ind2]
            if y1 < y2:
                x1 = vx[ind1]
                x2 = vx[ind2]
            elif y1 > y2:
                y2 = vy[ind1]
                y1 = vy[ind2]
                x2 = vx[ind1]
                x1 = vx[ind2]
            else:
                continue
            if (y >= y1 and y < y2) or (y == maxy and y > y1 and y <= y2):
                # C int arithmetic: the division truncates toward zero, the sum wraps at 32 bits.
                num = 65536 * (y - y1)
                q = abs(num) // (y2 - y1)
                if num < 0:
                    q = -q
                v = _int32(_int32(q * (x2 - x1)) + 65536 * x1)
                # insertion sort (qsort with an int comparison: same order for these values)
                k = count
                while k > 0 and ints[k - 1] > v:
                    ints[k] = ints[k - 1]
                    k -= 1
                ints[k] = v
                count += 1
        spans = 0
        row_min = row_max = lo = hi = 0
        for i in range(0, count - 1, 2):
            xa = ints[i] + 1
            xa = (xa >> 16) + ((xa & 32768) >> 15)
            xb = ints[i + 1] - 1
            xb = (xb >> 16) + ((xb & 32768) >> 15)
            lo, hi = _hline(buf, xa, xb, y, color, clip_top)
            if lo <= hi:
                row_min = lo if spans == 0 else min(row_min, lo)
                row_max = hi if spans == 0 else max(row_max, hi)
                spans += 1
        if spans == 1 and prev_spans == 1:
            _touch(changed, first_out, last_out, y, min(lo, prev_lo), max(lo, prev_lo))
            _touch(changed, first_out, last_out, y, min(hi, prev_hi), max(hi, prev_hi))
        elif spans > 0 or prev_spans > 0:
            a = row_min if prev_spans == 0 else (prev_min if spans == 0 else min(row_min, prev_min))
            b = row_max if prev_spans == 0 else (prev_max if spans == 0 else max(row_max, prev_max))
            _touch(changed, first_out, last_out, y, a, b)
        prev_spans = spans
        prev_min = row_min
        prev_max = row_max
        prev_lo = lo
        prev_hi = hi
    if prev_spans > 0:  # the row below the last differs from it
        _touch(changed, first_out, last_out, y + 1, prev_min, prev_max)


# ---- pygame.draw.polygon ----------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _pg_hline(buf, x1, x2, y, color, clip_top, changed, first_out, last_out):
    """pygame's ``drawhorzlineclipbounding``: x1..x2 inclusive (either order), clipped; flags the rows."""
    if y < clip_top or y >= buf.shape[0]:
        return
    if x2 < x1:
        x1, x2 = x2, x1
    x1 = max(x1, 0)
    x2 = min(x2, buf.shape[1] - 1)
    if x2 < 0 or x1 >= buf.shape[1]:
        return
    for x in range(x1, x2 + 1):
        buf[y, x] = color
    _touch(changed, first_out, last_out, y, x1, x2)
    _touch(changed, first_out, last_out, y + 1, x1, x2)


@njit(cache=True, nogil=True)
def pg_polygon(buf, vx, vy, color, clip_top, marks):
    """pygame-ce's ``draw.polygon`` (``draw_fillpoly``) for a filled polygon of n >= 4 int vertices.

    Edge crossings are float32 ``(y - y1) * (x2 - x1) / (float)(y2 - y1)``, floored for the 1st, 3rd...
    crossing found on a row and ceiled for the others, then sorted; horizontal edges strictly between
    the top and bottom rows are drawn afterwards. (Triangles take pygame's ``draw_filltri``; not ported.)
    """
    changed, first_out, last_out = marks
    n = vx.shape[0]
    miny = vy.min()
    maxy = vy.max()
    if miny == maxy:
        _pg_hline(buf, vx.min(), vx.max(), miny, color, clip_top, changed, first_out, last_out)
        return
    ints = np.empty(n, np.int64)
    for y in range(max(miny, clip_top), min(maxy, buf.shape[0] - 1) + 1):
        count = 0
        for i in range(n):
            ip = i - 1 if i else n - 1
            y1 = vy[ip]
            y2 = vy[i]
            if y1 < y2:
                x1 = vx[ip]
                x2 = vx[i]
            elif y1 > y2:
                y2 = vy[ip]
                y1 = vy[i]
                x2 = vx[ip]
                x1 = vx[i]
            else:
                continue
            if (y >= y1 and y < y2) or (y == maxy and y2 == maxy):
                inter = np.float32((y - y1) * (x2 - x1)) / np.float32(y2 - y1)
                if count % 2 == 0:
                    v = np.int64(np.floor(inter)) + x1
                else:
                    v = np.int64(np.ceil(inter)) + x1
                k = count
                while k > 0 and ints[k - 1] > v:
                    ints[k] = ints[k - 1]
                    k -= 1
                ints[k] = v
                count += 1
        for i in range(0, count - 1, 2):
            _pg_hline(buf, ints[i], ints[i + 1], y, color, clip_top, changed, first_out, last_out)
    for i in range(n):
        ip = i - 1 if i else n - 1
        y = vy[i]
        if miny < y and vy[ip] == y and y < maxy:
            _pg_hline(buf, vx[i], vx[ip], y, color, clip_top, changed, first_out, last_out)


@njit(cache=True, nogil=True)
def car_points(verts, body_of, frames, cos_a, sin_a, zoom, tx, ty):
    """Screen points of the car's vertices: Box2D's float32 ``transform * v``, then the view's float64
    rotation, zoom and shift (as ``FastCarRacing._render_road_fast``). verts: float32 (M, 2) body-local;
    body_of: int (M,); frames: float32 (bodies, 4) of cos, sin, x, y. Returns float64 (M,) x and y."""
    m = verts.shape[0]
    sx = np.empty(m, np.float64)
    sy = np.empty(m, np.float64)
    for i in range(m):
        f = frames[body_of[i]]
        vx = verts[i, 0]
        vy = verts[i, 1]
        wx = np.float64((f[0] * vx - f[1] * vy) + f[2])
        wy = np.float64((f[1] * vx + f[0] * vy) + f[3])
        sx[i] = (cos_a * wx - sin_a * wy) * zoom + tx
        sy[i] = (sin_a * wx + cos_a * wy) * zoom + ty
    return sx, sy


@njit(cache=True, nogil=True)
def pg_polygons(buf, sx, sy, firsts, counts, colors, clip_top, marks):
    """``pg_polygon`` for several polygons in order; vertices float64, truncated to int as pygame does.

    Polygon k has vertices ``firsts[k] .. firsts[k] + counts[k] - 1`` of sx, sy and word ``colors[k]``.
    """
    for k in range(firsts.shape[0]):
        a = firsts[k]
        vx = np.empty(counts[k], np.int64)
        vy = np.empty(counts[k], np.int64)
        for i in range(counts[k]):
            vx[i] = np.int64(sx[a + i])
            vy[i] = np.int64(sy[a + i])
        pg_polygon(buf, vx, vy, colors[k], clip_top, marks)


@njit(cache=True, nogil=True)
def draw_car(buf, marks, verts, body_of, frames, firsts, counts, colors, cos_a, sin_a, zoom, tx, ty, clip_top):
    """``car_points`` then ``pg_polygons``: the car's polygons in one call."""
    sx, sy = car_points(verts, body_of, frames, cos_a, sin_a, zoom, tx, ty)
    pg_polygons(buf, sx, sy, firsts, counts, colors, clip_top, marks)


# ---- the HUD ------------------------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def hud_indicators(values, width, height):
    """The polygons the stock ``_render_indicators`` draws, in its order, with its float arithmetic.

    values: float64 (7,), the speed, the four wheels' omega, the front-left wheel joint's angle and the
    hull's angular velocity; each draws only when its absolute value exceeds 1e-4 (``render_if_min``).
    Returns (sx, sy, which, count, highest): the vertices of polygon k are ``4k .. 4k + 3`` of sx, sy
    (float64), ``which[k]`` is the value it shows, and ``highest`` is the smallest y among the vertical bars
    and the horizontal ones' top edge.
    """
    s = width / 40.0
    h = height / 40.0
    sx = np.empty(28, np.float64)
    sy = np.empty(28, np.float64)
    which = np.empty(7, np.int64)
    highest = height - 4 * h
    count = 0
    for i in range(7):
        v = values[i]
        if not abs(v) > 1e-4:
            continue
        a = 4 * count
        if i < 5:  # vertical bars: the speed at place 5, the wheels' ABS sensors at places 7..10
            place = 5 if i == 0 else 6 + i
            val = 0.02 * v if i == 0 else 0.01 * v
            y = height - (h + h * val)
            sx[a], sy[a] = place * s, y
            sx[a + 1], sy[a + 1] = (place + 1) * s, y
            sx[a + 2], sy[a + 2] = (place + 1) * s, height - h
            sx[a + 3], sy[a + 3] = (place + 0) * s, height - h
            highest = min(highest, y)
        else:  # horizontal bars: steering at place 20, the angular velocity at place 30
            place = 20 if i == 5 else 30
            val = -10.0 * v if i == 5 else -0.8 * v
            sx[a], sy[a] = (place + 0) * s, height - 4 * h
            sx[a + 1], sy[a + 1] = (place + val) * s, height - 4 * h
            sx[a + 2], sy[a + 2] = (place + val) * s, height - 2 * h
            sx[a + 3], sy[a + 3] = (place + 0) * s, height - 2 * h
        which[count] = i
        count += 1
    return sx, sy, which, count, highest


@njit(cache=True, nogil=True)
def draw_hud(buf, marks, values, words, text, text_x, text_y, boxes, n_old, clip_top):
    """The stock HUD on rows ``clip_top`` and below of ``buf``, which the black bar covers entirely.

    The bar is black and nothing else draws on these rows, so instead of painting the bar again, the
    boxes the last call drew in (``boxes[:n_old]``: first row, last row, first column, last column) are
    painted black; then the indicators (``hud_indicators``, in ``words[value]``) as ``pg_polygon``
    draws them, and the score's pixels ``text`` (uint32 (h, w), already on black) at ``text_x, text_y``.
    Returns the number of boxes drawn now (in ``boxes``), or -1 and nothing drawn when an indicator or
    the score reaches above ``clip_top``.
    """
    height = buf.shape[0]
    width = buf.shape[1]
    sx, sy, which, count, highest = hud_indicators(values, width, height)
    if highest < clip_top or text_y < clip_top:
        return -1
    for k in range(n_old):
        buf[boxes[k, 0] : boxes[k, 1] + 1, boxes[k, 2] : boxes[k, 3] + 1] = 0
    changed, first_out, last_out = marks
    changed[clip_top:, :] = 0  # the bar alone: every row like the one above
    vx = np.empty(4, np.int64)
    vy = np.empty(4, np.int64)
    n = 0
    for k in range(count):
        for j in range(4):
            vx[j] = np.int64(sx[4 * k + j])
            vy[j] = np.int64(sy[4 * k + j])
        pg_polygon(buf, vx, vy, words[which[k]], clip_top, marks)
        y0 = max(vy.min(), clip_top)
        y1 = min(vy.max(), height - 1)
        x0 = max(vx.min(), 0)
        x1 = min(vx.max(), width - 1)
        if y0 <= y1 and x0 <= x1:
            boxes[n, 0], boxes[n, 1], boxes[n, 2], boxes[n, 3] = y0, y1, x0, x1
            n += 1
    y0 = max(text_y, clip_top)
    y1 = min(text_y + text.shape[0], height) - 1
    x0 = max(text_x, 0)
    x1 = min(text_x + text.shape[1], width) - 1
    if y0 <= y1 and x0 <= x1:
        buf[y0 : y1 + 1, x0 : x1 + 1] = text[y0 - text_y : y1 + 1 - text_y, x0 - text_x : x1 + 1 - text_x]
        for y in range(y0, y1 + 2):
            _touch(changed, first_out, last_out, y, x0, x1)
        boxes[n, 0], boxes[n, 1], boxes[n, 2], boxes[n, 3] = y0, y1, x0, x1
        n += 1
    return n


# ---- the stock road loop -----------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _to_sint16(v):
    """Python's ``int(float)`` (truncation toward zero) then gfxdraw's cast to Sint16."""
    return _sint16(np.int64(v))


@njit(cache=True, nogil=True)
def draw_track(buf, marks, polys, n_grass, grass_color, road_colors, field, bg_color, cos_a, sin_a, zoom,
               tx, ty, clip_top, fill_only, cull_lo, cull_hi_x, cull_hi_y, reach):
    """The stock ``_render_road`` on ``buf`` (uint32 (H, W)), rows ``clip_top`` and below.

    polys: float64 (N, 4, 2) world vertices, ``n_grass`` grass patches then the road polygons;
    grass_color, bg_color: pixel words; road_colors: float64 (N - n_grass, 3) RGB, truncated to int as
    pygame does (``FrictionDetector`` changes them during an episode); field: float64 (4, 2) the field
    outline; ``fill_only``: the window lies inside the field, so the field is a plain fill.
    Screen vertices are ``(R(angle) v) * zoom + t`` in float64 as pygame's ``Vector2.rotate_rad``
    computes them; a polygon is drawn where the stock code draws it (a vertex inside its culling box)
    and it can reach row ``clip_top`` or below within the window (``reach`` pixels of slack).
    """
    height = buf.shape[0]
    width = buf.shape[1]
    vx = np.empty(4, np.int64)
    vy = np.empty(4, np.int64)
    marks[0][clip_top:, :] = 0  # a fill leaves every row like the one above
    if fill_only:
        buf[clip_top:, :] = bg_color
    else:
        buf[clip_top:, :] = 0
        for j in range(4):
            fx = field[j, 0]
            fy = field[j, 1]
            vx[j] = _to_sint16((cos_a * fx - sin_a * fy) * zoom + tx)
            vy[j] = _to_sint16((sin_a * fx + cos_a * fy) * zoom + ty)
        aapolygon(buf, vx, vy, bg_color, clip_top, marks)
        filled_polygon(buf, vx, vy, bg_color, clip_top, marks)
    sx = np.empty(4, np.float64)
    sy = np.empty(4, np.float64)
    for k in range(polys.shape[0]):
        stock = False
        for j in range(4):
            px = polys[k, j, 0]
            py = polys[k, j, 1]
            x = (cos_a * px - sin_a * py) * zoom + tx
            y = (sin_a * px + cos_a * py) * zoom + ty
            sx[j] = x
            sy[j] = y
            if cull_lo <= x <= cull_hi_x and cull_lo <= y <= cull_hi_y:
                stock = True
        if not stock:
            continue
        if (sx.min() > width - 1 + reach or sx.max() < -reach or sy.min() > height - 1 + reach
                or sy.max() < clip_top - reach):
            continue
        for j in range(4):
            vx[j] = _to_sint16(sx[j])
            vy[j] = _to_sint16(sy[j])
        if k < n_grass:
            color = grass_color
        else:
            rgb = road_colors[k - n_grass]
            color = (np.int64(rgb[0]) << 16) | (np.int64(rgb[1]) << 8) | np.int64(rgb[2])
        aapolygon(buf, vx, vy, color, clip_top, marks)
        filled_polygon(buf, vx, vy, color, clip_top, marks)


# ---- smoothscale (SSE2 backend) ----------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _x_schedule(srcwidth, dstwidth):
    """Where ``filter_shrink_X_SSE2`` cuts a row: (ends, counters, xrecip).

    Output pixel j adds up the rest of pixel ``ends[j - 1]``, the full pixels after it, and the part
    ``counters[j]`` (of 0x4000) of pixel ``ends[j]``; pixels after ``ends[-1]`` are never read.
    """
    xspace = 0x4000 * srcwidth // dstwidth
    xrecip = (0x40000000 // xspace) & 0xFFFF
    ends = np.empty(dstwidth, np.int64)
    counters = np.empty(dstwidth, np.int64)
    xcounter = xspace
    j = 0
    for x in range(srcwidth):
        if xcounter > 0x4000:
            xcounter -= 0x4000
        else:
            if j < dstwidth:
                ends[j] = x
                counters[j] = xcounter
            j += 1
            xcounter = xspace - (0x4000 - xcounter)
    n_out = min(j, dstwidth)
    return ends[:n_out], counters[:n_out], xrecip


@njit(cache=True, nogil=True)
def _pack(p):
    """A 0x00RRGGBB word spread into 16-bit lanes of an int64: blue bits 0-15, red 16-31, green 32-47.

    Sums of up to 257 packed words never carry from one lane into the next.
    """
    p = np.int64(p)
    return (p | (p << 24)) & 0xFF00FF00FF


@njit(cache=True, nogil=True)
def _split(p, weight):
    """``mulhi(channel << 2, weight)`` of each channel of word ``p``, packed like ``_pack``."""
    p = np.int64(p)
    return ((((p & 255) << 2) * weight) >> 16) | (((((p >> 16) & 255) << 2) * weight) >> 16) << 16 | (
        ((((p >> 8) & 255) << 2) * weight) >> 16
    ) << 32


def shrink_layout(srcwidth: int, dstwidth: int) -> tuple[np.ndarray, np.ndarray]:
    """Which output pixels of ``shrink_x`` read each source pixel: first_out, last_out int64 (srcwidth,).

    A pixel inside output j's run reads into j alone; the pixel that straddles outputs j and j + 1
    into both; pixels after the last output's into a last, unused column ``dstwidth``.
    """
    ends, _, _ = _x_schedule(srcwidth, dstwidth)
    n = len(ends)
    first_out = np.full(srcwidth, n, np.int64)
    last_out = np.full(srcwidth, n, np.int64)
    start = 0
    for j, end in enumerate(ends):
        first_out[start : end + 1] = j
        last_out[start : end + 1] = j
        last_out[end] = j + 1 if j + 1 < n else j
        start = end + 1
    return first_out, last_out


@njit(cache=True, nogil=True)
def shrink_x(src, rows, dst):
    """``filter_shrink_X_SSE2``: rows ``rows`` of uint32 (H, W) words -> uint8 (len(rows), w, 3) RGB, w < W:
    ``shrink_x_changed`` with every output pixel flagged."""
    shrink_x_changed(src, rows, np.ones((src.shape[0] + 1, dst.shape[1] + 1), np.uint8), dst)


@njit(cache=True, nogil=True)
def shrink_x_changed(src, rows, changed, dst):
    """``filter_shrink_X_SSE2`` (see ``shrink_x``) that copies an output pixel from the output row before
    wherever ``changed`` (see ``_touch``) says its source pixels equal those of the source row before: equal
    inputs, equal output. A drawn picture changes from one row to the next only near edges, so most of the
    frame is copied.

    14-bit fixed point in 16-bit lanes: output pixel j adds the rest of the pixel straddling the boundary
    before it, its full pixels, and the part ``counters[j]`` of the pixel ``ends[j]`` straddling the next,
    the straddling pixels split with ``mulhi(p << 2, xcounter)`` / ``mulhi(p << 2, xfrac)``; the sum is
    scaled by ``mulhi(acc, xrecip)`` and saturated to 0..255 (``packus``). Each sum is written out in the
    loop, over flat output rows: a function call per output pixel took 1.2x the time.
    """
    ends, counters, xrecip = _x_schedule(src.shape[1], dst.shape[1])
    n = ends.shape[0]
    starts = np.empty(n, np.int64)  # the first full pixel of each output
    starts[0] = 0
    for j in range(1, n):
        starts[j] = ends[j - 1] + 1
    flat = dst.reshape(dst.shape[0], -1)
    for y in range(rows.shape[0]):
        r = rows[y]
        pair = -1  # the index into ``changed`` of rows (rows[y - 1], rows[y]), if adjacent
        if y > 0 and abs(r - rows[y - 1]) == 1:
            pair = max(r, rows[y - 1])
        out = flat[y]
        if pair >= 0:
            before = flat[y - 1]
            for k in range(out.shape[0]):  # one vector copy of the row before, then the changed pixels
                out[k] = before[k]
        for j in range(n):
            if pair >= 0 and changed[pair, j] == 0:
                continue
            acc = _split(src[r, ends[j - 1]], 0x4000 - counters[j - 1]) if j > 0 else np.int64(0)
            end = ends[j]
            for x in range(starts[j], end):
                acc += _pack(src[r, x])
            acc += _split(src[r, end], counters[j])
            out[3 * j] = min(((acc >> 16) & 0xFFFF) * xrecip >> 16, 255)
            out[3 * j + 1] = min(((acc >> 32) & 0xFFFF) * xrecip >> 16, 255)
            out[3 * j + 2] = min((acc & 0xFFFF) * xrecip >> 16, 255)


@njit(cache=True, nogil=True)
def shrink_y(src, dst):
    """``filter_shrink_Y_SSE2``: uint8 (H, w, 3) -> uint8 (h, w, 3), h < H, same fixed point as x.

    Every byte of a row is its own lane, so rows are handled as flat runs of w * 3 bytes.
    """
    srcheight = src.shape[0]
    dstheight = dst.shape[0]
    flat_src = src.reshape(srcheight, -1)
    flat_dst = dst.reshape(dstheight, -1)
    size = flat_src.shape[1]
    yspace = 0x4000 * srcheight // dstheight
    yrecip = (0x40000000 // yspace) & 0xFFFF
    acc = np.zeros(size, np.uint16)  # wraps like the C accumulator
    ycounter = yspace
    j = 0
    for y in range(srcheight):
        line = flat_src[y]
        if ycounter > 0x4000:
            for k in range(size):
                acc[k] += np.uint16(line[k])
            ycounter -= 0x4000
        else:
            yfrac = 0x4000 - ycounter
            out = flat_dst[j]
            for k in range(size):
                s = np.int32(line[k]) << 2
                out[k] = min((((((s * ycounter) >> 16) + np.int32(acc[k])) & 0xFFFF) * yrecip) >> 16, 255)
                acc[k] = np.uint16((s * yfrac) >> 16)
            j += 1
            ycounter = yspace - yfrac
