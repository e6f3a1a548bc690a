"""Synthetic red blood cells that look enough like the NIH malaria crops to train on.

The real data set is a download of 27,558 crops; the synthetic cells let every command, test
and CI run work without it, and give a task that is not trivially solved. Each cell is drawn
the way the real crops look: a round to irregular cell on black zero padding in a tight crop
(the cell touches all four sides, the corners are black), 80-160 px a side, coloured by its
slide's stain (pink, salmon, lavender, mauve, grey-blue), with texture, a paler centre and a
darker rim. Infected cells carry one to three dark purple parasites: chromatin dots, rings
with a dot, or larger blobs. Both classes also get faint stain debris, and a slide's stain
varies far more than the classes' mean colours do, so a model has to find the parasites
rather than read the colour.

A :class:`SyntheticPlan` fixes the file names, labels, patients (slides), stains and frame
sizes; :func:`draw_cell` then draws cell ``i`` from the plan's seed and ``i`` alone, so a
cache build can draw cells in any order and in any number of worker processes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from cellae.sections import SyntheticConfig

# Part of the synthetic source's fingerprint: bump it whenever drawing changes, so that caches
# of the old cells are not reused.
GENERATOR_VERSION = 1

MIN_SIDE, MAX_SIDE = 80, 160

# Stains of real slides, RGB of a cell's typical interior pixel; a slide mixes these.
_STAIN_ANCHORS = np.array(
    [
        [226.0, 158.0, 166.0],  # pink
        [232.0, 170.0, 156.0],  # salmon
        [198.0, 190.0, 218.0],  # lavender
        [184.0, 122.0, 178.0],  # mauve
        [192.0, 194.0, 226.0],  # grey-blue
    ]
)
_PARASITE = np.array([112.0, 28.0, 136.0])  # Giemsa-stained chromatin: dark magenta-purple
_PALLOR = np.array([246.0, 236.0, 238.0])  # the thin centre of the biconcave disc
_ANGLES = 1024  # samples of the outline's radius, enough for sub-pixel extents
_EDGE_MARGIN = 0.45  # the outline reaches this far past the outermost pixel centres
_SPOT_REACH = 16  # pixels from its centre beyond which a parasite or speck has faded out


@dataclass
class SyntheticPlan:
    """Everything about the data set that is fixed before any cell is drawn."""

    config: SyntheticConfig
    files: list[str]
    labels: np.ndarray  # int64, 1 = infected
    patients: list[str]
    patient_index: np.ndarray  # int64 index into ``stains``
    stains: np.ndarray  # float64, n_patients x 3: each slide's typical interior colour
    heights: np.ndarray  # int64
    widths: np.ndarray  # int64

    @property
    def seed(self) -> int:
        return self.config.seed

    def __len__(self) -> int:
        return len(self.files)


def _rng(seed: int, *stream: int) -> np.random.Generator:
    # One stream per purpose and per cell, hashed together by SeedSequence, so a cell's draw
    # depends on (seed, index) and never on which cells were drawn before it.
    return np.random.default_rng([seed, *stream])


def plan(config: SyntheticConfig) -> SyntheticPlan:
    """Names, labels, patients, stains and frame sizes for ``config.n_images`` cells.

    Exactly ``round(n_images * infected_fraction)`` cells are infected (but at least one, and
    at least one is not). Each class is dealt round-robin over the patients, so every patient
    has both classes whenever each class has at least ``n_patients`` cells, and the classes
    have the same mix of stains. Files are listed in sorted order (class folder, patient,
    index), as a folder listing would be.
    """
    config = dataclasses.replace(config)  # later edits to the caller's config change nothing
    n, n_patients = config.n_images, config.n_patients
    rng = _rng(config.seed, 0)
    # at least one of each class, even where the fraction of a tiny set rounds to none
    n_infected = min(max(int(round(n * config.infected_fraction)), 1), n - 1)
    labels = np.zeros(n, dtype=np.int64)
    labels[:n_infected] = 1

    # each class dealt round-robin over the slides, in its own random order
    patient_index = np.empty(n, dtype=np.int64)
    for label, count in ((1, n_infected), (0, n - n_infected)):
        order = rng.permutation(n_patients)
        patient_index[labels == label] = np.sort(order[np.arange(count) % n_patients])

    # The slides take the anchor stains in turn, each mixed with some of another, so that even
    # a handful of patients covers the range of stains; slides also differ in how dark they are.
    n_anchors = len(_STAIN_ANCHORS)
    main = rng.permutation(np.arange(n_patients) % n_anchors)
    other = (main + rng.integers(1, n_anchors, size=n_patients)) % n_anchors
    share = rng.uniform(0.0, 0.45, size=(n_patients, 1))
    stains = (1 - share) * _STAIN_ANCHORS[main] + share * _STAIN_ANCHORS[other]
    stains = np.clip(stains * np.exp(rng.normal(0.0, 0.06, size=(n_patients, 1))), 90.0, 245.0)

    # sizes like the real crops: mostly 110-150 px, a few small and large, some elongated
    side = np.clip(rng.normal(126.0, 17.0, size=n), MIN_SIDE, MAX_SIDE)
    aspect = np.exp(np.clip(rng.normal(0.0, 0.09, size=n), -0.25, 0.25))
    heights = np.clip(np.rint(side * np.sqrt(aspect)), MIN_SIDE, MAX_SIDE).astype(np.int64)
    widths = np.clip(np.rint(side / np.sqrt(aspect)), MIN_SIDE, MAX_SIDE).astype(np.int64)

    # one string per patient, shared by its cells: a string per cell cost 60 bytes each
    names = [f"S{k + 1:02d}" for k in range(n_patients)]
    patients = [names[k] for k in patient_index]
    files = [
        f"{'infected' if label else 'uninfected'}/{patient}_cell_{i:05d}.png"
        for i, (label, patient) in enumerate(zip(labels, patients, strict=True))
    ]
    return SyntheticPlan(
        config=config, files=files, labels=labels, patients=patients,
        patient_index=patient_index, stains=stains, heights=heights, widths=widths,
    )


def frame_size(plan: SyntheticPlan, i: int) -> tuple[int, int]:
    """(height, width) of cell ``i``'s crop, without drawing it."""
    return int(plan.heights[i]), int(plan.widths[i])


def _outline(rng: np.random.Generator) -> np.ndarray:
    """The cell's radius at ``_ANGLES`` angles: an ellipse with smooth bumps, sometimes crenated."""
    theta = np.linspace(-np.pi, np.pi, _ANGLES, endpoint=False)
    tilt = rng.uniform(0.0, np.pi)
    ratio = rng.uniform(0.75, 1.0)
    radius = ratio / np.sqrt((ratio * np.cos(theta - tilt)) ** 2 + np.sin(theta - tilt) ** 2)
    irregularity = rng.choice([0.03, 0.07, 0.13], p=[0.4, 0.4, 0.2])
    k = np.arange(2, 8)
    amplitude = irregularity * rng.normal(0.0, 1.0, size=k.size) / k**1.2
    phase = rng.uniform(0.0, 2 * np.pi, size=k.size)
    bumps = (amplitude[:, None] * np.cos(k[:, None] * theta + phase[:, None])).sum(axis=0)
    if rng.random() < 0.12:  # crenated: many small scallops, as in a dried smear
        bumps += rng.uniform(0.01, 0.025) * np.cos(rng.integers(11, 19) * theta + phase[0])
    return radius * (1.0 + np.clip(bumps, -0.3, 0.3))


def _smooth_field(rng: np.random.Generator, height: int, width: int, knots: int) -> np.ndarray:
    """Smooth noise of unit-ish amplitude: a knots x knots grid blurred up to the frame."""

    def spread(n: int) -> np.ndarray:
        centres = np.linspace(0.0, n - 1.0, knots)
        weights = np.exp(-0.5 * ((np.arange(n)[:, None] - centres) / (n / knots)) ** 2)
        return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)

    grid = rng.standard_normal((knots, knots), dtype=np.float32)
    field = spread(height) @ grid @ spread(width).T
    return field / max(float(field.std()), 1e-6)


def _window(
    alpha: np.ndarray, py: float, px: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The patch of ``alpha`` around (py, px) that a spot can reach, and its open grid
    relative to the spot; drawing spots on patches instead of whole frames is most of the
    speed of infected cells."""
    height, width = alpha.shape
    y0, y1 = max(0, int(py) - _SPOT_REACH), min(height, int(py) + _SPOT_REACH + 1)
    x0, x1 = max(0, int(px) - _SPOT_REACH), min(width, int(px) + _SPOT_REACH + 1)
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(py)
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(px)
    return alpha[y0:y1, x0:x1], dy, dx


def _place(
    rng: np.random.Generator, centre: tuple[float, float], semi: tuple[float, float], reach: float
) -> tuple[float, float]:
    """A random point in the inner ``reach`` of the ellipse (centre, semi-axes)."""
    r, a = reach * np.sqrt(rng.random()), rng.uniform(0.0, 2 * np.pi)
    return centre[0] + r * semi[0] * np.sin(a), centre[1] + r * semi[1] * np.cos(a)


def _add_parasites(
    alpha: np.ndarray, rng: np.random.Generator, centre: tuple[float, float],
    semi: tuple[float, float],
) -> None:
    """Paint the opacity (0-1) of one to three parasites lying well inside the cell."""
    for _ in range(rng.choice([1, 2, 3], p=[0.6, 0.28, 0.12])):
        # most lie inside, some out near the membrane (appliqué forms), as in the real crops
        reach = 0.8 if rng.random() < 0.3 else 0.6
        patch, dv, du = _window(alpha, *_place(rng, centre, semi, reach))
        # every form is a little elliptical and tilted, as squashed in a smear
        tilt, squash = rng.uniform(0.0, np.pi), rng.uniform(0.7, 1.0)
        u = du * np.cos(tilt) + dv * np.sin(tilt)
        v = (dv * np.cos(tilt) - du * np.sin(tilt)) / squash
        d = np.sqrt(u * u + v * v)
        kind = rng.choice(["dot", "ring", "blob"], p=[0.45, 0.35, 0.2])
        if kind == "dot":  # a chromatin dot, flat-topped with a soft edge
            size = rng.uniform(3.5, 5.5)
            shape = np.clip((size - d) / 1.2 + 0.5, 0.0, 1.0)
        elif kind == "ring":  # a ring form: thin on one side, thick opposite, with its dot
            size = rng.uniform(5.0, 8.5)
            side = np.arctan2(v, u) - rng.uniform(0.0, 2 * np.pi)
            width = rng.uniform(0.7, 1.0) * (1.0 + 0.6 * np.cos(side))
            ring = np.exp(-0.5 * ((d - size) / width) ** 2) * (0.75 + 0.25 * np.cos(side))
            dot_d = np.sqrt((u - size * np.cos(tilt)) ** 2 + (v - size * np.sin(tilt)) ** 2)
            shape = np.maximum(ring, np.clip((rng.uniform(2.4, 3.4) - dot_d) / 1.2 + 0.5, 0, 1))
        else:  # an older trophozoite: a larger lump with a lumpy edge
            lumps = 1.0 + 0.12 * np.cos(3 * np.arctan2(v, u) + rng.uniform(0.0, 2 * np.pi))
            e = d / (rng.uniform(5.0, 8.0) * lumps)
            shape = np.clip((1.0 - e) * 4.0 + 0.5, 0.0, 1.0) * rng.uniform(0.8, 0.95)
        np.maximum(patch, shape * rng.uniform(0.85, 1.0), out=patch)


def _add_debris(
    alpha: np.ndarray, rng: np.random.Generator, centre: tuple[float, float],
    semi: tuple[float, float],
) -> None:
    """Paint faint stain specks that both classes carry: not every spot is a parasite."""
    if rng.random() < 0.3:
        for _ in range(rng.integers(1, 4)):
            patch, dy, dx = _window(alpha, *_place(rng, centre, semi, 0.85))
            spread = rng.uniform(1.5, 4.0)
            speck = rng.uniform(0.1, 0.22) * np.exp(-0.5 * (dy * dy + dx * dx) / spread**2)
            np.maximum(patch, speck, out=patch)


def draw_cell(plan: SyntheticPlan, i: int) -> np.ndarray:
    """Cell ``i`` of ``plan`` as an HxWx3 uint8 RGB crop; the same every time it is drawn."""
    height, width = frame_size(plan, i)
    rng = _rng(plan.seed, 1, i)
    stain = plan.stains[plan.patient_index[i]]
    # cells on one slide differ a little in how much stain they took up
    colour = stain * np.exp(rng.normal(0.0, 0.035)) * np.exp(rng.normal(0.0, 0.015, size=3))

    # The outline, scaled so that it reaches just past the outermost pixel centres on all four
    # sides: the crop is tight and its size is exactly the planned one.
    radius = _outline(rng)
    theta = np.linspace(-np.pi, np.pi, _ANGLES, endpoint=False)
    ox, oy = radius * np.cos(theta), radius * np.sin(theta)
    sx = (width - 1 + 2 * _EDGE_MARGIN) / (ox.max() - ox.min())
    sy = (height - 1 + 2 * _EDGE_MARGIN) / (oy.max() - oy.min())
    cx, cy = -ox.min() * sx - _EDGE_MARGIN, -oy.min() * sy - _EDGE_MARGIN

    # an open grid: a column of rows and a row of columns that broadcast to the frame
    yy = np.arange(height, dtype=np.float32)[:, None]
    xx = np.arange(width, dtype=np.float32)[None, :]
    u, v = (xx - cx) / sx, (yy - cy) / sy
    angle = np.arctan2(v, u)
    edge = np.interp(angle.ravel(), theta, radius, period=2 * np.pi).astype(np.float32)
    edge = edge.reshape(height, width)
    depth = np.sqrt(u * u + v * v) / edge  # 0 at the centre, 1 on the outline
    inside = depth < 1.0

    # shading: texture, a darker rim where the disc is thick, a paler centre where it is thin
    shade = 1.0 + 0.035 * _smooth_field(rng, height, width, 6)
    shade += 0.015 * _smooth_field(rng, height, width, 14)
    shade -= rng.uniform(0.03, 0.09) * np.clip((depth - 0.72) / 0.28, 0.0, 1.0) ** 2
    tilt = rng.normal(0.0, 0.02, size=2)  # uneven illumination across the cell
    shade += tilt[0] * (2 * yy / height - 1) + tilt[1] * (2 * xx / width - 1)
    image = colour.astype(np.float32) * shade[..., None]

    pc = (cy + rng.normal(0.0, 0.08) * sy, cx + rng.normal(0.0, 0.08) * sx)
    pallor_size = rng.uniform(0.25, 0.45)
    pallor_d2 = ((yy - pc[0]) / sy) ** 2 + ((xx - pc[1]) / sx) ** 2
    pallor = rng.uniform(0.0, 0.4) * np.exp(-0.5 * pallor_d2 / pallor_size**2)
    image += pallor[..., None] * (_PALLOR.astype(np.float32) - image)

    # chromatin takes on a little of the slide's stain
    dark = (0.8 * _PARASITE + 0.2 * 0.55 * stain).astype(np.float32)
    # the ellipse inscribed in the outline's narrowest radius: spots placed in it lie inside
    centre, semi = (cy, cx), (radius.min() * sy, radius.min() * sx)
    spots = np.zeros((height, width), dtype=np.float32)
    _add_debris(spots, rng, centre, semi)
    if plan.labels[i] == 1:
        _add_parasites(spots, rng, centre, semi)
    image += spots[..., None] * (dark - image)

    # sensor noise; uniform draws (sd 2) cost a fifth of normal ones and look the same here
    image += 6.93 * (rng.random(image.shape, dtype=np.float32) - 0.5)
    # the floor keeps every cell pixel well above the black that marks the padding
    out = np.clip(image, 24.0, 255.0).astype(np.uint8)
    out[~inside] = 0
    return out
