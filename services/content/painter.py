"""Paints calm procedural landscapes (sky, sun or moon, ridges, water) as PNG stills, offline and seeded."""

from __future__ import annotations

import hashlib
import io
import math
import re
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image

from services.image_sizes import SUPPORTED_SIZES_PIXELS, describe_supported_sizes

FloatArray = npt.NDArray[np.float32]
TimeOfDay = Literal["dawn", "day", "dusk", "night"]

# Checked in priority order, so "a starry night after sunset" is a night scene, not a dusk one.
_TIME_KEYWORDS: Final[tuple[tuple[TimeOfDay, frozenset[str]], ...]] = (
    (
        "night",
        frozenset(
            ["night", "moon", "moonlit", "moonlight", "star", "starry", "starlit", "sleep", "midnight"]
        ),
    ),
    ("dusk", frozenset(["sunset", "dusk", "evening", "twilight", "autumn", "golden"])),
    ("dawn", frozenset(["dawn", "sunrise", "morning", "spring", "daybreak"])),
    (
        "day",
        frozenset(["day", "sunny", "sunlight", "sunshine", "noon", "afternoon", "summer", "bright", "sun"]),
    ),
)
_WATER_KEYWORDS: Final = frozenset(
    ["lake", "water", "ocean", "sea", "river", "pond", "shore", "beach", "wave", "ripple", "reflection"]
)
_MOUNTAIN_KEYWORDS: Final = frozenset(
    ["mountain", "peak", "alpine", "summit", "valley", "hill", "range", "cliff"]
)
_GREEN_KEYWORDS: Final = frozenset(
    ["forest", "meadow", "garden", "grass", "field", "tree", "wood", "zen", "park"]
)
_FOREST_KEYWORDS: Final = frozenset(["forest", "tree", "wood", "pine", "woodland"])

# On dithered images PNG level 1 encodes about 4x faster than the default 6, for files about 30% larger.
_PNG_COMPRESS_LEVEL: Final = 1


@dataclass(frozen=True)
class _Palette:
    """Colours (RGB in 0..1) of one time of day; everything else in the scene is mixed from these."""

    zenith: tuple[float, float, float]
    mid_sky: tuple[float, float, float]
    horizon: tuple[float, float, float]
    light: tuple[float, float, float]
    glow: tuple[float, float, float]
    ridge: tuple[float, float, float]
    foliage: tuple[float, float, float]
    deep_water: tuple[float, float, float]


_PALETTES: Final[dict[TimeOfDay, _Palette]] = {
    "dawn": _Palette(
        zenith=(0.40, 0.50, 0.74),
        mid_sky=(0.80, 0.72, 0.82),
        horizon=(1.00, 0.85, 0.72),
        light=(1.00, 0.96, 0.86),
        glow=(1.00, 0.78, 0.60),
        ridge=(0.30, 0.29, 0.44),
        foliage=(0.30, 0.42, 0.32),
        deep_water=(0.28, 0.33, 0.50),
    ),
    "day": _Palette(
        zenith=(0.30, 0.53, 0.84),
        mid_sky=(0.56, 0.75, 0.92),
        horizon=(0.86, 0.92, 0.95),
        light=(1.00, 0.98, 0.92),
        glow=(1.00, 0.95, 0.82),
        ridge=(0.22, 0.33, 0.42),
        foliage=(0.27, 0.47, 0.27),
        deep_water=(0.16, 0.36, 0.50),
    ),
    "dusk": _Palette(
        zenith=(0.19, 0.21, 0.44),
        mid_sky=(0.72, 0.45, 0.52),
        horizon=(1.00, 0.67, 0.40),
        light=(1.00, 0.90, 0.66),
        glow=(1.00, 0.58, 0.30),
        ridge=(0.17, 0.13, 0.25),
        foliage=(0.18, 0.20, 0.18),
        deep_water=(0.18, 0.15, 0.30),
    ),
    "night": _Palette(
        zenith=(0.03, 0.05, 0.13),
        mid_sky=(0.07, 0.11, 0.24),
        horizon=(0.17, 0.23, 0.37),
        light=(0.94, 0.95, 1.00),
        glow=(0.50, 0.62, 0.85),
        ridge=(0.05, 0.07, 0.14),
        foliage=(0.05, 0.09, 0.11),
        deep_water=(0.04, 0.06, 0.14),
    ),
}


@dataclass(frozen=True)
class _Scene:
    """What the prompt (or, failing keywords, the seed) chose to paint."""

    time_of_day: TimeOfDay
    has_water: bool
    has_mountains: bool
    is_green: bool
    has_forest: bool


def paint_landscape(prompt: str, width_pixels: int, height_pixels: int) -> bytes:
    """Returns an RGB PNG of a calm landscape chosen by the prompt's keywords and varied by its hash."""
    if (width_pixels, height_pixels) not in SUPPORTED_SIZES_PIXELS:
        raise ValueError(
            f"unsupported image size {width_pixels}x{height_pixels}; use one of {describe_supported_sizes()}"
        )
    # A SHA-256 seed (never hash(), which is salted per process) makes the bytes identical across workers.
    seed = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:16], "big")
    rng = np.random.default_rng(seed)
    scene = _choose_scene(prompt, rng)
    rgb = _Painter(scene, rng, width_pixels, height_pixels).paint()
    return _encode_png(_quantize(rgb, rng))


def _choose_scene(prompt: str, rng: np.random.Generator) -> _Scene:
    words = set(re.findall(r"[a-z]+", prompt.lower()))
    # Plurals ("stars", "mountains") should match their singular keyword.
    words |= {word[:-1] for word in words if word.endswith("s") and len(word) > 3}

    # The seed's choices are drawn unconditionally so that keywords never shift the rest of the random stream.
    random_time: TimeOfDay = ("dawn", "day", "dusk", "night")[int(rng.choice(4, p=(0.3, 0.3, 0.25, 0.15)))]
    random_water = bool(rng.random() < 0.6)
    random_mountains = bool(rng.random() < 0.6)
    random_green = bool(rng.random() < 0.4)

    time_of_day = next((time for time, keywords in _TIME_KEYWORDS if words & keywords), random_time)
    has_water = bool(words & _WATER_KEYWORDS)
    has_mountains = bool(words & _MOUNTAIN_KEYWORDS)
    is_green = bool(words & _GREEN_KEYWORDS)
    if not (has_water or has_mountains or is_green):
        has_water, has_mountains, is_green = random_water, random_mountains, random_green
    return _Scene(
        time_of_day=time_of_day,
        has_water=has_water,
        has_mountains=has_mountains,
        is_green=is_green,
        has_forest=bool(words & _FOREST_KEYWORDS),
    )


class _Painter:
    """Paints one scene back to front into a float32 RGB canvas in 0..1."""

    def __init__(
        self, scene: _Scene, rng: np.random.Generator, width_pixels: int, height_pixels: int
    ) -> None:
        self.scene = scene
        self.rng = rng
        self.width = width_pixels
        self.height = height_pixels
        self.palette = _jitter_palette(_PALETTES[scene.time_of_day], rng)
        horizon_fraction = rng.uniform(0.56, 0.64) if scene.has_water else rng.uniform(0.60, 0.68)
        self.horizon_y = int(height_pixels * horizon_fraction)
        self.rows = np.arange(height_pixels, dtype=np.float32)
        self.columns = np.arange(width_pixels, dtype=np.float32)
        self.canvas: FloatArray = np.empty((height_pixels, width_pixels, 3), dtype=np.float32)

    def paint(self) -> FloatArray:
        sky_column = self._sky_column()
        ridges = self._plan_ridges(sky_column)
        light_x, light_y, light_radius = self._place_light(ridges[0])
        self.canvas[:] = sky_column[:, None, :]
        if self.scene.time_of_day == "night":
            self._paint_stars(light_x, light_y)
        self._paint_clouds(light_x, light_y)
        self._paint_light_glow(light_x, light_y, strength=1.0)
        for index, (tops, color, mist_strength) in enumerate(ridges):
            self._paint_ridge(tops, color, mist_strength, is_nearest=index == len(ridges) - 1)
        # Veiling glare: the sun also brightens the haze in front of the ridges, softening the silhouettes.
        self._paint_light_glow(light_x, light_y, strength=0.35)
        if self.scene.has_water:
            self._paint_water(light_x)
        # The disc comes after the water: rippled water shows a glittering path, not a second mirrored disc.
        skyline = np.min(np.stack([tops for tops, _, _ in ridges]), axis=0)
        self._paint_light_disc(light_x, light_y, light_radius, skyline)
        self._paint_horizon_mist()
        self._apply_vignette()
        return self.canvas

    def _plan_ridges(self, sky_column: FloatArray) -> list[tuple[FloatArray, FloatArray, float]]:
        """Returns (top row per column, colour, mist strength) for each ridge layer, farthest first."""
        scene, rng, palette = self.scene, self.rng, self.palette
        height = self.height
        layer_count = int(rng.integers(3, 5)) if scene.has_mountains else int(rng.integers(2, 4))
        if scene.is_green and not scene.has_water:
            layer_count += 1
        ridges: list[tuple[FloatArray, FloatArray, float]] = []
        for index in range(layer_count):
            nearness = index / max(layer_count - 1, 1)
            if scene.has_water:
                # On a lake every ridge stands on the far shore; nearer ones are lower so the far peaks show.
                base_y = float(self.horizon_y)
                peak_height = height * (0.30 if scene.has_mountains else 0.10) * (1.0 - 0.55 * nearness)
            else:
                base_y = self.horizon_y + (height - self.horizon_y) * 0.75 * nearness
                peak_height = height * (0.32 if scene.has_mountains else 0.12) * (1.0 - 0.6 * nearness)
            peak_height *= float(rng.uniform(0.75, 1.1))
            # Far ranges are peaky (ridged noise); near ones roll gently.
            peakiness = (0.75 if scene.has_mountains else 0.25) * (1.0 - nearness)
            shape = self._ridge_shape(peakiness)
            tops = (base_y - peak_height * shape).astype(np.float32)
            is_foliage = scene.is_green and (nearness > 0.5 or (scene.has_water and nearness > 0.0))
            if scene.has_forest and is_foliage:
                tops = np.minimum(tops, self._treeline(tops, height * 0.035 * (0.5 + nearness)))
            base_color = np.array(palette.foliage if is_foliage else palette.ridge, dtype=np.float32)
            # Atmospheric perspective: the farther the layer, the more it takes the colour of the sky behind.
            sky_behind = sky_column[int(np.clip(tops.mean(), 0, self.horizon_y - 1))]
            haze = _mix(sky_behind, np.array(palette.horizon), 0.4)
            haze_amount = 0.08 + 0.72 * (1.0 - nearness) ** 1.3
            color = _mix(base_color, haze, haze_amount)
            mist_strength = 0.55 * (1.0 - nearness) + 0.12
            ridges.append((tops, color, mist_strength))
        return ridges

    def _ridge_shape(self, peakiness: float) -> FloatArray:
        """Returns a 0..1 fractal height profile across the width, smooth at every scale."""
        rng = self.rng
        smooth = np.zeros(self.width, dtype=np.float32)
        amplitude = 1.0
        base_cells = int(rng.integers(3, 6))
        for octave in range(6):
            smooth += amplitude * _smooth_curve(rng, base_cells * 2**octave, self.width)
            amplitude *= 0.5
        ridged = 1.0 - np.abs(_smooth_curve(rng, base_cells + 1, self.width))
        ridged += 0.35 * (1.0 - np.abs(_smooth_curve(rng, 2 * base_cells + 3, self.width)))
        shape = (1.0 - peakiness) * _normalized(smooth) + peakiness * _normalized(ridged + 0.25 * smooth)
        return _normalized(shape)

    def _treeline(self, tops: FloatArray, tree_height_pixels: float) -> FloatArray:
        """Returns the top row per column of a band of conifers standing on the given ridge."""
        rng = self.rng
        tree_count = int(self.width / (tree_height_pixels * 0.45))
        centers = rng.uniform(0, self.width, tree_count).astype(np.float32)
        heights = (tree_height_pixels * rng.uniform(0.6, 1.4, tree_count)).astype(np.float32)
        half_widths = heights * 0.28
        distance = np.abs(self.columns[None, :] - centers[:, None])
        ground = tops[np.clip(centers.astype(np.int64), 0, self.width - 1)]
        tree_tops = ground[:, None] - heights[:, None] + distance * (heights / half_widths)[:, None]
        return np.asarray(tree_tops.min(axis=0), dtype=np.float32)

    def _place_light(
        self, farthest_ridge: tuple[FloatArray, FloatArray, float]
    ) -> tuple[float, float, float]:
        rng, height = self.rng, self.height
        light_x = float(rng.uniform(0.22, 0.78)) * self.width
        if self.scene.time_of_day in ("dawn", "dusk"):
            light_y = self.horizon_y - float(rng.uniform(0.05, 0.14)) * height
        else:
            light_y = float(rng.uniform(0.14, 0.30)) * height
        radius = height * (0.042 if self.scene.time_of_day == "night" else 0.036)
        # Let a low sun sit just on the far ridge rather than vanish behind it.
        ridge_top = float(farthest_ridge[0][int(light_x)])
        return light_x, min(light_y, ridge_top - 0.4 * radius), radius

    def _sky_column(self) -> FloatArray:
        """Returns the sky's colour for every row: zenith, through mid sky, to the horizon and below."""
        palette = self.palette
        fraction = np.clip(self.rows / self.horizon_y, 0.0, 1.0)
        stops = np.array((0.0, 0.55, 1.0), dtype=np.float32)
        colors = np.array((palette.zenith, palette.mid_sky, palette.horizon), dtype=np.float32)
        eased = fraction**1.2
        column = np.stack([np.interp(eased, stops, colors[:, channel]) for channel in range(3)], axis=1)
        return column.astype(np.float32)

    def _paint_stars(self, moon_x: float, moon_y: float) -> None:
        rng = self.rng
        sky_pixels = self.width * self.horizon_y
        count = int(sky_pixels * 0.0005)
        star_x = rng.integers(1, self.width - 1, count)
        star_y = rng.integers(1, self.horizon_y, count)
        brightness = (rng.random(count, dtype=np.float32) ** 3) * 0.75 + 0.1
        # Stars thin out towards the hazy horizon and vanish in the moon's glare.
        fade = _smoothstep(1.0, 0.35, star_y / self.horizon_y)
        moon_distance = np.hypot(star_x - moon_x, star_y - moon_y) / self.height
        fade *= _smoothstep(0.06, 0.25, moon_distance)
        brightness = (brightness * fade).astype(np.float32)
        stars = np.zeros((self.height, self.width), dtype=np.float32)
        stars[star_y, star_x] = brightness
        # The brighter stars get a faint cross of neighbours so they read as soft points, not dead pixels.
        halo = brightness * 0.3 * (brightness > 0.35)
        for offset_y, offset_x in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            stars[star_y + offset_y, star_x + offset_x] += halo
        tint = np.array((0.92, 0.95, 1.0), dtype=np.float32)
        self.canvas[: self.horizon_y] += stars[: self.horizon_y, :, None] * tint

    def _paint_clouds(self, light_x: float, light_y: float) -> None:
        rng = self.rng
        rows = self.horizon_y
        # Long, thin, low-contrast streaks: stratus reads as calm; billowing cumulus would not.
        density = _fractal_noise(rng, self.width, rows, cells_x=3, cells_y=7, octaves=4)
        coverage = float(rng.uniform(0.15, 0.45))
        alpha = _smoothstep(1.2 - coverage * 1.6, 2.4 - coverage * 1.6, density)
        alpha *= _smoothstep(0.0, 0.35, self.rows[:rows] / rows)[:, None]
        strength = 0.18 if self.scene.time_of_day == "night" else 0.38
        near_light = np.outer(
            np.exp(-(((self.rows[:rows] - light_y) / (0.35 * self.height)) ** 2)),
            np.exp(-(((self.columns - light_x) / (0.45 * self.width)) ** 2)),
        ).astype(np.float32)
        # Clouds near the light catch its colour; those far from it take the cooler mid-sky colour.
        lit = np.array(self.palette.glow, dtype=np.float32)
        shade = _mix(np.array(self.palette.mid_sky), np.array(self.palette.horizon), 0.5)
        cloud_rgb = shade + (lit - shade) * near_light[..., None]
        sky = self.canvas[:rows]
        sky += (cloud_rgb - sky) * (alpha * strength)[..., None]

    def _paint_light_glow(self, light_x: float, light_y: float, strength: float) -> None:
        # Separable Gaussians summed approximate a long-tailed glow: one (rows x 3) @ (3 x columns) product.
        widths = np.array((0.035, 0.12, 0.40), dtype=np.float32) * self.height
        weights = np.array((0.55, 0.35, 0.30), dtype=np.float32) * strength
        if self.scene.time_of_day in ("dawn", "dusk"):
            weights = weights * np.array((1.0, 1.15, 1.35), dtype=np.float32)
        elif self.scene.time_of_day == "night":
            weights = weights * np.array((0.7, 0.45, 0.3), dtype=np.float32)
        vertical = np.exp(-(((self.rows[:, None] - light_y) / widths[None, :]) ** 2)) * weights
        # The horizontal spread is wider, like light scattered along the horizon.
        horizontal = np.exp(-(((self.columns[None, :] - light_x) / (1.6 * widths[:, None])) ** 2))
        glow = (vertical @ horizontal).astype(np.float32)
        _screen(self.canvas, glow, np.array(self.palette.glow, dtype=np.float32))

    def _paint_light_disc(self, light_x: float, light_y: float, radius: float, skyline: FloatArray) -> None:
        top, bottom = int(max(light_y - radius - 3, 0)), int(min(light_y + radius + 3, self.height))
        left, right = int(max(light_x - radius - 3, 0)), int(min(light_x + radius + 3, self.width))
        distance = np.hypot(self.rows[top:bottom, None] - light_y, self.columns[None, left:right] - light_x)
        # A 1.5-pixel soft edge anti-aliases the disc without looking blurred; ridges in front hide it.
        alpha = _smoothstep(radius + 0.75, radius - 0.75, distance)
        alpha *= np.clip(skyline[None, left:right] - self.rows[top:bottom, None] + 0.5, 0.0, 1.0)
        color = np.broadcast_to(np.array(self.palette.light, dtype=np.float32), (*alpha.shape, 3)).copy()
        if self.scene.time_of_day == "night":
            # Faint maria so the moon reads as a moon, not as a white sun.
            maria = _fractal_noise(self.rng, right - left, bottom - top, cells_x=3, cells_y=3, octaves=2)
            color *= (0.94 - 0.1 * _smoothstep(-0.2, 1.2, maria))[..., None]
        else:
            # A slight limb darkening gives the sun a gentle, rounded core instead of a flat sticker.
            color *= (1.0 - 0.06 * (distance / radius) ** 2)[..., None]
        block = self.canvas[top:bottom, left:right]
        block += (color - block) * alpha[..., None]

    def _paint_ridge(
        self, tops: FloatArray, color: FloatArray, mist_strength: float, is_nearest: bool
    ) -> None:
        end_row = self.horizon_y if self.scene.has_water else self.height
        start_row = max(int(np.floor(tops.min())) - 1, 0)
        if start_row >= end_row:
            return
        rows = self.rows[start_row:end_row]
        # Coverage of each pixel by the ridge, with a one-pixel ramp that anti-aliases the silhouette.
        alpha = np.clip(rows[:, None] - tops[None, :] + 0.5, 0.0, 1.0)
        # Mist pools in the valleys: it depends on absolute height, so peaks stand out of it.
        mist_top = float(tops.min()) + 0.35 * (float(tops.max()) - float(tops.min()))
        mist_bottom = float(end_row) if not is_nearest else float(self.height) * 1.3
        mist = _smoothstep(mist_top, mist_bottom, rows) * mist_strength
        haze = np.array(self.palette.horizon, dtype=np.float32)
        column_rgb = color[None, :] + (haze - color)[None, :] * mist[:, None]
        block = self.canvas[start_row:end_row]
        block += (column_rgb[:, None, :] - block) * alpha[..., None]

    def _paint_water(self, light_x: float) -> None:
        horizon = self.horizon_y
        water_rows = self.height - horizon
        # Distance towards the viewer, 0 at the horizon and 1 at the bottom edge.
        nearness = ((self.rows[horizon:] - horizon + 1.0) / water_rows).astype(np.float32)
        ripple = self._ripples(nearness)

        # Reflection: mirror the scene above the horizon, displaced by the ripples (more so up close).
        displacement = ripple * (1.0 + 11.0 * nearness**1.5)[:, None]
        mirror_rows = (horizon - 1.0) - (self.rows[horizon:] - horizon)
        source_rows = np.clip(mirror_rows[:, None] + displacement, 0.0, horizon - 2.0)
        upper_rows = source_rows.astype(np.int32)
        # Blending the two nearest rows keeps the displaced reflection smooth instead of stair-stepped.
        lower_weight = (source_rows - upper_rows)[..., None]
        # np.take on flat pixel indices is several times faster than 2D fancy indexing.
        pixels = self.canvas.reshape(-1, 3)
        upper_index = upper_rows * self.width + np.arange(self.width, dtype=np.int32)[None, :]
        water = np.take(pixels, upper_index, axis=0)
        lower = np.take(pixels, upper_index + self.width, axis=0)
        lower -= water
        lower *= lower_weight
        water += lower

        # Fresnel: water mirrors the far sky and shows its own deep colour close by.
        reflectivity = (0.9 - 0.4 * nearness)[:, None]
        water *= (reflectivity * (1.0 + 0.04 * ripple))[..., None]
        water += np.array(self.palette.deep_water, dtype=np.float32) * (1.0 - reflectivity)[..., None]

        # The glittering path of the sun or moon widens towards the viewer.
        path_width = self.width * (0.015 + 0.06 * nearness)[:, None]
        path = np.exp(-(((self.columns[None, :] - light_x) / path_width) ** 2))
        glitter_strength = 0.35 if self.scene.time_of_day == "night" else 0.5
        # A faint steady column, then sparkles on the wave crests.
        glitter = (0.12 + _smoothstep(0.9, 2.0, ripple)) * path * glitter_strength
        _screen(water, glitter, np.array(self.palette.light, dtype=np.float32))
        self.canvas[horizon:] = water

    def _ripples(self, nearness: FloatArray) -> FloatArray:
        """Returns the water's wave height (about unit deviation) for each pixel below the horizon."""
        rng = self.rng
        water_rows = self.height - self.horizon_y
        # Waves live on the water plane: depth grows without bound towards the horizon.
        depth = 1.0 / (nearness + 0.03)
        depth_per_row = 1.0 / ((nearness + 0.03) ** 2 * water_rows)
        across = ((self.columns - self.width / 2) / self.width)[None, :] * depth[:, None]
        ripple = np.zeros((water_rows, self.width), dtype=np.float32)
        total_weight = 0.0
        for _ in range(9):
            # Wave numbers per unit of depth (mostly crests parallel to the shore) and across the view.
            along = float(np.exp(rng.uniform(np.log(6.0), np.log(160.0))))
            sideways = float(rng.uniform(-25.0, 25.0))
            phase = float(rng.uniform(0.0, 2.0 * np.pi))
            amplitude = float(along**-0.35)
            # Waves finer than a few rows on screen would alias into grain near the horizon: fade them out.
            visibility = np.exp(-((along * depth_per_row / 0.7) ** 2)) * amplitude
            ripple += visibility[:, None] * np.sin(sideways * across + (along * depth + phase)[:, None])
            total_weight += amplitude**2 / 2.0
        ripple *= 1.0 / math.sqrt(total_weight)
        return ripple

    def _paint_horizon_mist(self) -> None:
        # A soft band of haze hides the seam where ridges meet water or land meets sky.
        band = np.exp(-(((self.rows - self.horizon_y) / (0.035 * self.height)) ** 2)) * 0.22
        haze = np.array(self.palette.horizon, dtype=np.float32)
        self.canvas += (haze - self.canvas) * band.astype(np.float32)[:, None, None]

    def _apply_vignette(self) -> None:
        vertical = 1.0 - 0.35 * np.linspace(-1.0, 1.0, self.height, dtype=np.float32) ** 2
        horizontal = 1.0 - 0.30 * np.linspace(-1.0, 1.0, self.width, dtype=np.float32) ** 4
        self.canvas *= (0.25 + 0.75 * np.outer(vertical, horizontal)).astype(np.float32)[..., None] ** 0.5


def _jitter_palette(palette: _Palette, rng: np.random.Generator) -> _Palette:
    """Returns the palette with one small shared hue shift, so scenes vary but stay harmonious."""
    shift = rng.normal(0.0, 0.025, 3)

    def shifted(color: tuple[float, float, float]) -> tuple[float, float, float]:
        red, green, blue = (
            float(np.clip(channel + delta, 0.0, 1.0)) for channel, delta in zip(color, shift, strict=True)
        )
        return red, green, blue

    return _Palette(
        zenith=shifted(palette.zenith),
        mid_sky=shifted(palette.mid_sky),
        horizon=shifted(palette.horizon),
        light=palette.light,
        glow=shifted(palette.glow),
        ridge=shifted(palette.ridge),
        foliage=shifted(palette.foliage),
        deep_water=shifted(palette.deep_water),
    )


def _smooth_curve(rng: np.random.Generator, cells: int, width: int) -> FloatArray:
    """Returns 1D value noise (zero mean, unit knots) bicubically interpolated across the width."""
    knots = rng.standard_normal((1, cells + 1)).astype(np.float32)
    curve = Image.fromarray(knots).resize((width, 1), Image.Resampling.BICUBIC)
    row: FloatArray = np.asarray(curve, dtype=np.float32)[0]
    return row


def _fractal_noise(
    rng: np.random.Generator, width: int, height: int, cells_x: int, cells_y: int, octaves: int
) -> FloatArray:
    """Returns smooth 2D noise with zero mean and unit deviation, built at low resolution and upscaled."""
    low_width, low_height = max(width // 4, 8), max(height // 4, 8)
    total = np.zeros((low_height, low_width), dtype=np.float32)
    amplitude = 1.0
    for octave in range(octaves):
        grid = rng.standard_normal((cells_y * 2**octave + 1, cells_x * 2**octave + 1)).astype(np.float32)
        layer = Image.fromarray(grid).resize((low_width, low_height), Image.Resampling.BICUBIC)
        total += amplitude * np.asarray(layer, dtype=np.float32)
        amplitude *= 0.5
    total = (total - total.mean()) / max(float(total.std()), 1e-6)
    upscaled = Image.fromarray(total).resize((width, height), Image.Resampling.BICUBIC)
    noise: FloatArray = np.asarray(upscaled, dtype=np.float32)
    return noise


def _smoothstep(edge0: float, edge1: float, values: npt.ArrayLike) -> FloatArray:
    fraction = np.clip((np.asarray(values, dtype=np.float32) - edge0) / (edge1 - edge0), 0.0, 1.0)
    eased: FloatArray = (fraction * fraction * (3.0 - 2.0 * fraction)).astype(np.float32)
    return eased


def _normalized(values: FloatArray) -> FloatArray:
    low, high = float(values.min()), float(values.max())
    return ((values - low) / max(high - low, 1e-6)).astype(np.float32)


def _mix(first: npt.ArrayLike, second: npt.ArrayLike, amount: float) -> FloatArray:
    start = np.asarray(first, dtype=np.float32)
    return (start + (np.asarray(second, dtype=np.float32) - start) * amount).astype(np.float32)


def _screen(canvas: FloatArray, intensity: FloatArray, color: FloatArray) -> None:
    """Adds light the way film does: it brightens without ever clipping to a flat white."""
    # In place, channel by channel: this runs over the whole canvas, so temporaries cost real time.
    for channel in range(3):
        plane = canvas[..., channel]
        plane += (1.0 - plane) * (intensity * color[channel])


def _quantize(rgb: FloatArray, rng: np.random.Generator) -> npt.NDArray[np.uint8]:
    # Triangular dither of about one 8-bit step breaks up banding in the long, smooth sky gradients.
    noise = rng.random(rgb.shape[:2], dtype=np.float32) - rng.random(rgb.shape[:2], dtype=np.float32)
    scaled = rgb * 255.0 + (noise[..., None] + 0.5)
    return np.clip(scaled, 0.0, 255.0).astype(np.uint8)


def _encode_png(pixels: npt.NDArray[np.uint8]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    return buffer.getvalue()
