"""Domain randomization presets: what varies between episodes, and by how much.

``none``/``light``/``heavy`` are for training and robustness sweeps; ``real`` is held out: it plays
"the real robot" in sim-to-real experiments, so its ranges are shifted (not just widened) relative to
the training presets and nothing should be trained on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class DRPreset:
    """Ranges sampled once per episode (at reset). All zero / empty ranges mean 'nominal'."""

    name: str
    colour_jitter: float = 0.0  # +- per RGB channel on objects and table
    table_texture: bool = False  # swap the table texture for a procedural one
    light_jitter: float = 0.0  # +- on the light direction components
    light_colour_jitter: float = 0.0  # +- on the light colour
    camera_pos_jitter: float = 0.0  # metres, +- per axis on camera eye and target
    friction_range: tuple[float, float] = (1.0, 1.0)  # scale on nominal lateral friction
    mass_range: tuple[float, float] = (1.0, 1.0)  # scale on nominal object mass
    damping_range: tuple[float, float] = (1.0, 1.0)  # scale on nominal joint damping of the arm
    latency_steps: tuple[int, int] = (0, 0)  # action latency in control periods, inclusive range
    proprio_noise: float = 0.0  # std of Gaussian noise on low-dim observations
    image_noise: float = 0.0  # std (in 0-255 units) of Gaussian noise on camera images
    light_offset: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0))  # fixed shift ('real')
    colour_offset: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0))  # fixed shift ('real')


DR_PRESETS: dict[str, DRPreset] = {
    "none": DRPreset("none"),
    "light": DRPreset(
        "light",
        colour_jitter=0.08,
        light_jitter=0.2,
        light_colour_jitter=0.05,
        camera_pos_jitter=0.005,
        friction_range=(0.9, 1.1),
        mass_range=(0.9, 1.1),
        damping_range=(0.9, 1.1),
        latency_steps=(0, 0),
        proprio_noise=0.0005,
        image_noise=2.0,
    ),
    "heavy": DRPreset(
        "heavy",
        colour_jitter=0.25,
        table_texture=True,
        light_jitter=0.6,
        light_colour_jitter=0.2,
        camera_pos_jitter=0.02,
        friction_range=(0.7, 1.3),
        mass_range=(0.7, 1.5),
        damping_range=(0.7, 1.5),
        latency_steps=(0, 1),
        proprio_noise=0.002,
        image_noise=6.0,
    ),
    # Held out: a systematic shift (warmer light, darker objects, one step of latency) plus moderate noise.
    "real": DRPreset(
        "real",
        colour_jitter=0.1,
        table_texture=True,
        light_jitter=0.3,
        light_colour_jitter=0.1,
        camera_pos_jitter=0.01,
        friction_range=(0.75, 0.95),
        mass_range=(1.1, 1.4),
        damping_range=(1.0, 1.3),
        latency_steps=(1, 1),
        proprio_noise=0.001,
        image_noise=4.0,
        light_offset=(0.3, -0.2, 0.0),
        colour_offset=(0.08, 0.02, -0.08),
    ),
}


def get_preset(name: str) -> DRPreset:
    """The preset called ``name``; unknown names raise ValueError listing the valid ones."""
    if name not in DR_PRESETS:
        raise ValueError(f"unknown domain randomization preset '{name}' (choose from {', '.join(DR_PRESETS)})")
    return DR_PRESETS[name]


@dataclass
class EpisodeDR:
    """The values drawn for one episode from a preset."""

    colour_shift: np.ndarray  # (n_colours, 3) additive shift per randomised body
    texture_index: int  # -1: keep the default table look
    light_direction: np.ndarray
    light_colour: np.ndarray
    camera_shift: dict[str, np.ndarray]  # camera -> (6,) eye xyz + target xyz shift
    friction_scale: float
    mass_scale: float
    damping_scale: float
    latency_steps: int
    proprio_noise: float
    image_noise: float


NOMINAL_LIGHT = np.array([0.4, -0.6, 1.0])


def sample_episode(preset: DRPreset, rng: np.random.Generator, n_colours: int, cameras: tuple[str, ...], n_textures: int) -> EpisodeDR:
    """Draw one episode's randomization from ``preset`` (always the same number of draws: deterministic)."""

    def uni(lo: float, hi: float, size: int | tuple[int, ...] | None = None) -> np.ndarray:
        return rng.uniform(lo, hi, size)

    cj, lj, lcj, cpj = preset.colour_jitter, preset.light_jitter, preset.light_colour_jitter, preset.camera_pos_jitter
    colour = uni(-cj, cj, (n_colours, 3)) + np.asarray(preset.colour_offset)
    tex_draw = int(rng.integers(0, max(n_textures, 1) + 1))
    texture = tex_draw - 1 if preset.table_texture and n_textures else -1
    light = NOMINAL_LIGHT + uni(-lj, lj, 3) + np.asarray(preset.light_offset)
    light_colour = np.clip(np.ones(3) + uni(-lcj, lcj, 3), 0.0, 1.5)
    cams = {c: uni(-cpj, cpj, 6) for c in cameras}
    return EpisodeDR(
        colour_shift=colour,
        texture_index=texture,
        light_direction=light,
        light_colour=light_colour,
        camera_shift=cams,
        friction_scale=float(uni(*preset.friction_range)),
        mass_scale=float(uni(*preset.mass_range)),
        damping_scale=float(uni(*preset.damping_range)),
        latency_steps=int(rng.integers(preset.latency_steps[0], preset.latency_steps[1] + 1)),
        proprio_noise=preset.proprio_noise,
        image_noise=preset.image_noise,
    )
