"""Random indoor scenes for the synthetic datasets: a room, furniture, decals, people, a light.

A scene is geometry (``pamm.data.render`` primitives) plus a table of *surfaces*: every surface
knows its instance, its class label, its Pascal-Part part name (people only) and its material.
Each class has its own colour/texture family (hue band, saturation, pattern) with per-instance
variation, so classes are learnable from appearance as well as from shape and position.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pamm.data import pascal_classes as pc
from pamm.data.render import (
    Box,
    Camera,
    Cylinder,
    Decal,
    Primitive,
    Room,
    Sphere,
    rotation_x,
    rotation_y,
    rotation_z,
)

# ------------------------------------------------------------------------------------------
# class labels per dataset (semantic name -> on-disk id)

#: NYU-40 ids of the classes the synthetic NYUD scenes use (a subset of the 40).
NYUD_LABELS: dict[str, int] = {
    "wall": 1, "floor": 2, "cabinet": 3, "bed": 4, "chair": 5, "sofa": 6, "table": 7, "door": 8,
    "window": 9, "picture": 11, "pillow": 18, "floor_mat": 20, "ceiling": 22, "television": 25,
    "box": 29, "person": 31, "lamp": 35, "otherfurniture": 38, "otherprop": 40,
}

#: PASCAL-Context (459-class) ids of the classes the synthetic PASCAL scenes use.
PASCAL_LABELS: dict[str, int] = {
    "wall": pc.CONTEXT_WALL, "floor": pc.CONTEXT_FLOOR, "ceiling": pc.CONTEXT_CEILING,
    "cabinet": pc.CONTEXT_CABINET, "door": pc.CONTEXT_DOOR, "window": pc.CONTEXT_WINDOW,
    "curtain": pc.CONTEXT_CURTAIN,
    "chair": pc.VOC_CONTEXT_IDS[9], "table": pc.VOC_CONTEXT_IDS[11], "sofa": pc.VOC_CONTEXT_IDS[18],
    "television": pc.VOC_CONTEXT_IDS[20], "bottle": pc.VOC_CONTEXT_IDS[5],
    "pottedplant": pc.VOC_CONTEXT_IDS[16], "person": pc.VOC_CONTEXT_IDS[15],
}

#: Pascal-Part object class (VOC index and name) of the PASCAL scene classes that are VOC objects.
PASCAL_VOC_OBJECTS: dict[str, int] = {
    "chair": 9, "table": 11, "sofa": 18, "television": 20, "bottle": 5, "pottedplant": 16, "person": 15,
}


# ------------------------------------------------------------------------------------------
# materials


@dataclass
class Material:
    color: np.ndarray  # albedo in [0, 1]
    color2: np.ndarray  # second colour of two-colour patterns
    pattern: str
    scale: float  # pattern cycles per metre
    strength: float  # amplitude of the brightness modulation
    phase: float  # offsets the noise so two instances of a class differ
    emissive: bool = False


@dataclass(frozen=True)
class Style:
    """Colour family of a class: hue band (degrees), saturation and value ranges, pattern."""

    hue: tuple[float, float]
    sat: tuple[float, float]
    val: tuple[float, float]
    pattern: str = "plain"
    scale: tuple[float, float] = (4.0, 8.0)
    strength: float = 0.1
    hue2_offset: float = 0.0  # hue of the second colour relative to the first
    val2_factor: float = 0.6
    emissive: bool = False


STYLES: dict[str, Style] = {
    "wall": Style((0, 360), (0.04, 0.22), (0.62, 0.88), "plain", (6, 12), 0.08),
    "floor": Style((18, 40), (0.4, 0.7), (0.32, 0.58), "planks", (3, 6), 0.25),
    "ceiling": Style((30, 60), (0.0, 0.06), (0.86, 0.97), "plain", (3, 6), 0.04),
    "cabinet": Style((12, 32), (0.5, 0.8), (0.18, 0.36), "grain", (12, 24), 0.18),
    "bed": Style((150, 290), (0.25, 0.55), (0.5, 0.8), "stripes", (5, 9), 0.1, 0.0, 0.7),
    "pillow": Style((40, 60), (0.05, 0.25), (0.82, 0.96), "plain", (8, 14), 0.06),
    "chair": Style((345, 375), (0.6, 0.9), (0.35, 0.6), "plain", (10, 20), 0.12),
    "sofa": Style((200, 250), (0.4, 0.7), (0.3, 0.6), "fabric", (30, 50), 0.2),
    "table": Style((25, 45), (0.45, 0.7), (0.45, 0.7), "grain", (8, 16), 0.2),
    "door": Style((20, 40), (0.3, 0.5), (0.5, 0.72), "panels", (2, 3), 0.2),
    "window": Style((190, 215), (0.2, 0.45), (0.85, 1.0), "clouds", (1.5, 3), 0.1, 0.0, 1.15),
    "picture": Style((0, 360), (0.6, 0.95), (0.5, 0.9), "blotches", (6, 12), 0.1, 150.0, 0.9),
    "floor_mat": Style((330, 360), (0.5, 0.8), (0.35, 0.6), "checker", (5, 8), 0.05, 40.0, 0.5),
    "curtain": Style((60, 120), (0.3, 0.6), (0.4, 0.7), "folds", (5, 8), 0.25),
    "television": Style((0, 360), (0.0, 0.08), (0.04, 0.14), "screen", (1, 2), 0.3),
    "box": Style((28, 38), (0.45, 0.6), (0.5, 0.7), "tape", (1, 1), 0.05, 0.0, 0.75),
    "lamp": Style((45, 60), (0.3, 0.6), (0.85, 1.0), "plain", (4, 8), 0.02, emissive=True),
    "otherfurniture": Style((90, 150), (0.4, 0.8), (0.3, 0.6), "plain", (6, 10), 0.1),
    "otherprop": Style((270, 320), (0.5, 0.8), (0.4, 0.8), "dots", (10, 18), 0.05, 0.0, 0.4),
    "bottle": Style((100, 140), (0.5, 0.85), (0.25, 0.5), "plain", (20, 30), 0.1),
    "pot": Style((10, 25), (0.55, 0.75), (0.4, 0.6), "plain", (10, 20), 0.1),
    "leaves": Style((85, 130), (0.5, 0.8), (0.25, 0.45), "blotches", (12, 20), 0.15, 20.0, 0.6),
    "skin": Style((15, 30), (0.3, 0.6), (0.45, 0.85), "plain", (20, 30), 0.05),
    "hair": Style((15, 40), (0.3, 0.7), (0.05, 0.3), "plain", (30, 40), 0.2),
    "shirt": Style((0, 360), (0.4, 0.85), (0.3, 0.85), "stripes", (10, 20), 0.05, 180.0, 0.8),
    "trousers": Style((205, 230), (0.3, 0.7), (0.15, 0.5), "fabric", (40, 60), 0.15),
    "shoes": Style((0, 40), (0.1, 0.5), (0.05, 0.2), "plain", (10, 20), 0.1),
}


def hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour (hue in degrees) to RGB in [0, 1]."""
    h = (h % 360.0) / 60.0
    c = v * s
    x = c * (1 - abs(h % 2 - 1))
    sector = int(h) % 6
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][sector]
    return np.array(rgb) + (v - c)


def sample_material(style_name: str, rng: np.random.Generator) -> Material:
    style = STYLES[style_name]
    hue = rng.uniform(*style.hue)
    sat = rng.uniform(*style.sat)
    val = rng.uniform(*style.val)
    color = hsv_to_rgb(hue, sat, val)
    color2 = np.clip(hsv_to_rgb(hue + style.hue2_offset, sat, val * style.val2_factor), 0, 1)
    return Material(
        color=color,
        color2=color2,
        pattern=style.pattern,
        scale=float(rng.uniform(*style.scale)),
        strength=style.strength,
        phase=float(rng.uniform(0, 100)),
        emissive=style.emissive,
    )


# ------------------------------------------------------------------------------------------
# scene description


@dataclass
class Surface:
    instance: int
    name: str  # semantic name (a key of NYUD_LABELS / PASCAL_LABELS)
    material: Material
    part: str | None = None  # Pascal-Part part name (people)
    glass: bool = False  # a depth sensor returns nothing here


@dataclass
class Light:
    position: np.ndarray
    ambient: float
    diffuse: float
    falloff: float  # metres at which the diffuse term has halved
    tint: np.ndarray


@dataclass
class Scene:
    camera: Camera
    light: Light
    primitives: list[Primitive] = field(default_factory=list)
    decals: list[Decal] = field(default_factory=list)
    surfaces: list[Surface] = field(default_factory=list)
    instance_names: list[str] = field(default_factory=list)
    noise_seed: int = 0

    def new_instance(self, name: str) -> int:
        self.instance_names.append(name)
        return len(self.instance_names) - 1

    def add_surface(self, instance: int, style: str, rng: np.random.Generator, part: str | None = None,
                    glass: bool = False, material: Material | None = None) -> int:
        name = self.instance_names[instance]
        material = material if material is not None else sample_material(style, rng)
        self.surfaces.append(Surface(instance, name, material, part, glass))
        return len(self.surfaces) - 1


# ------------------------------------------------------------------------------------------
# object builders: each adds one instance at floor position (x, z), turned by yaw, and returns
# the radius of its footprint (for placement without overlaps)


def _add_box(scene: Scene, surface: int, center, half, yaw: float) -> None:
    scene.primitives.append(Box(np.asarray(center, float), np.asarray(half, float), yaw, surfaces=(surface,)))


def _local(x: float, z: float, yaw: float, dx: float, dz: float) -> tuple[float, float]:
    """World (x, z) of the point (dx, dz) in an object's frame turned by ``yaw``."""
    c, s = np.cos(yaw), np.sin(yaw)
    return x + c * dx + s * dz, z - s * dx + c * dz


def build_cabinet(scene: Scene, rng: np.random.Generator, x: float, z: float, yaw: float,
                  name: str = "cabinet") -> float:
    inst = scene.new_instance(name)
    sid = scene.add_surface(inst, "cabinet", rng)
    w, h, d = rng.uniform(0.5, 1.2), rng.uniform(0.7, 2.0), rng.uniform(0.4, 0.6)
    _add_box(scene, sid, (x, h / 2, z), (w / 2, h / 2, d / 2), yaw)
    return float(np.hypot(w, d) / 2)


def build_bed(scene: Scene, rng: np.random.Generator, x: float, z: float, yaw: float,
              with_pillow: bool = True) -> float:
    inst = scene.new_instance("bed")
    sid = scene.add_surface(inst, "bed", rng)
    w, h, d = rng.uniform(1.2, 1.8), rng.uniform(0.35, 0.55), rng.uniform(1.9, 2.1)
    _add_box(scene, sid, (x, h / 2, z), (w / 2, h / 2, d / 2), yaw)
    if with_pillow:
        pillow = scene.new_instance("pillow")
        pid = scene.add_surface(pillow, "pillow", rng)
        px, pz = _local(x, z, yaw, 0.0, -d / 2 + 0.3)
        _add_box(scene, pid, (px, h + 0.06, pz), (w * 0.35, 0.06, 0.2), yaw)
    return float(np.hypot(w, d) / 2)


def build_chair(scene: Scene, rng: np.random.Generator, x: float, z: float, yaw: float) -> float:
    inst = scene.new_instance("chair")
    sid = scene.add_surface(inst, "chair", rng)
    w, seat_h, back_h = rng.uniform(0.4, 0.55), rng.uniform(0.42, 0.5), rng.uniform(0.35, 0.5)
    leg = 0.025
    _add_box(scene, sid, (x, seat_h, z), (w / 2, 0.03, w / 2), yaw)
    bx, bz = _local(x, z, yaw, 0.0, -w / 2 + 0.03)
    _add_box(scene, sid, (bx, seat_h + back_h / 2, bz), (w / 2, back_h / 2, 0.03), yaw)
    for sx in (-1, 1):
        for sz in (-1, 1):
            lx, lz = _local(x, z, yaw, sx * (w / 2 - leg), sz * (w / 2 - leg))
            _add_box(scene, sid, (lx, (seat_h - 0.03) / 2, lz), (leg, (seat_h - 0.03) / 2, leg), yaw)
    return float(w * 0.75)


def build_sofa(scene: Scene, rng: np.random.Generator, x: float, z: float, yaw: float) -> float:
    inst = scene.new_instance("sofa")
    sid = scene.add_surface(inst, "sofa", rng)
    w, d, seat_h = rng.uniform(1.5, 2.2), rng.uniform(0.8, 0.95), rng.uniform(0.4, 0.48)
    _add_box(scene, sid, (x, seat_h / 2, z), (w / 2, seat_h / 2, d / 2), yaw)
    bx, bz = _local(x, z, yaw, 0.0, -d / 2 + 0.1)
    _add_box(scene, sid, (bx, seat_h + 0.2, bz), (w / 2, 0.2, 0.1), yaw)
    for sx in (-1, 1):
        ax, az = _local(x, z, yaw, sx * (w / 2 - 0.1), 0.0)
        _add_box(scene, sid, (ax, seat_h + 0.1, az), (0.1, 0.1, d / 2), yaw)
    return float(np.hypot(w, d) / 2)


def build_table(scene: Scene, rng: np.random.Generator, x: float, z: float,
                yaw: float) -> tuple[float, tuple[float, float, float, float, float]]:
    """A table; returns its footprint radius and top (x, height, z, half width, half depth)."""
    inst = scene.new_instance("table")
    sid = scene.add_surface(inst, "table", rng)
    w, d, h = rng.uniform(0.8, 1.6), rng.uniform(0.6, 1.0), rng.uniform(0.7, 0.78)
    leg = 0.03
    _add_box(scene, sid, (x, h - 0.02, z), (w / 2, 0.02, d / 2), yaw)
    for sx in (-1, 1):
        for sz in (-1, 1):
            lx, lz = _local(x, z, yaw, sx * (w / 2 - 2 * leg), sz * (d / 2 - 2 * leg))
            _add_box(scene, sid, (lx, (h - 0.04) / 2, lz), (leg, (h - 0.04) / 2, leg), yaw)
    return float(np.hypot(w, d) / 2), (x, h, z, w / 2, d / 2)


def build_box(scene: Scene, rng: np.random.Generator, x: float, z: float, yaw: float) -> float:
    inst = scene.new_instance("box")
    material = sample_material("box", rng)
    material.scale = 1.0
    sid = scene.add_surface(inst, "box", rng, material=material)
    s = rng.uniform(0.2, 0.6)
    _add_box(scene, sid, (x, s / 2, z), (s / 2, s / 2, s / 2), yaw)
    return float(s * 0.75)


def build_lamp(scene: Scene, rng: np.random.Generator, x: float, z: float, yaw: float) -> float:
    inst = scene.new_instance("lamp")
    sid = scene.add_surface(inst, "lamp", rng)
    pole_h = rng.uniform(1.1, 1.5)
    scene.primitives.append(Cylinder(np.array([x, 0.0, z]), 0.15, 0.03, surfaces=(sid,)))
    scene.primitives.append(Cylinder(np.array([x, 0.03, z]), 0.02, pole_h, surfaces=(sid,)))
    scene.primitives.append(Cylinder(np.array([x, pole_h, z]), rng.uniform(0.15, 0.22), 0.25, surfaces=(sid,)))
    return 0.25


def build_stool(scene: Scene, rng: np.random.Generator, x: float, z: float, yaw: float) -> float:
    inst = scene.new_instance("otherfurniture")
    sid = scene.add_surface(inst, "otherfurniture", rng)
    r, h = rng.uniform(0.18, 0.3), rng.uniform(0.4, 0.6)
    scene.primitives.append(Cylinder(np.array([x, 0.0, z]), r, h, surfaces=(sid,)))
    return float(r)


def build_ball(scene: Scene, rng: np.random.Generator, x: float, z: float, yaw: float) -> float:
    inst = scene.new_instance("otherprop")
    sid = scene.add_surface(inst, "otherprop", rng)
    r = rng.uniform(0.1, 0.3)
    scene.primitives.append(Sphere(np.array([x, r, z]), r, surfaces=(sid,)))
    return float(r)


def build_television(scene: Scene, rng: np.random.Generator, x: float, z: float, yaw: float,
                     on_top: float = 0.0) -> float:
    """A screen on a small stand, standing on the floor (a stand cabinet) or on a table top."""
    inst = scene.new_instance("television")
    sid = scene.add_surface(inst, "television", rng)
    w = rng.uniform(0.6, 1.0)
    h = w * rng.uniform(0.55, 0.65)
    base = on_top
    if on_top == 0.0:  # on the floor: put it on a low cabinet of its own
        base = rng.uniform(0.45, 0.7)
        cab = scene.new_instance("cabinet")
        cid = scene.add_surface(cab, "cabinet", rng)
        _add_box(scene, cid, (x, base / 2, z), (w / 2 + 0.1, base / 2, 0.25), yaw)
    scene.primitives.append(Cylinder(np.array([x, base, z]), 0.04, 0.08, surfaces=(sid,)))
    _add_box(scene, sid, (x, base + 0.08 + h / 2, z), (w / 2, h / 2, 0.03), yaw)
    return float(w / 2 + 0.1)


def build_bottle(scene: Scene, rng: np.random.Generator, x: float, z: float, yaw: float, on_top: float = 0.0) -> float:
    inst = scene.new_instance("bottle")
    sid = scene.add_surface(inst, "bottle", rng)
    s = rng.uniform(1.0, 2.0)  # oversized so it is visible at low resolution
    r, h = 0.04 * s, 0.22 * s
    scene.primitives.append(Cylinder(np.array([x, on_top, z]), r, h, surfaces=(sid,)))
    scene.primitives.append(Cylinder(np.array([x, on_top + h, z]), r * 0.4, 0.08 * s, surfaces=(sid,)))
    return float(r + 0.05)


def build_pottedplant(scene: Scene, rng: np.random.Generator, x: float, z: float, yaw: float) -> float:
    inst = scene.new_instance("pottedplant")
    pot = scene.add_surface(inst, "pot", rng)
    leaves = scene.add_surface(inst, "leaves", rng)
    r, h = rng.uniform(0.12, 0.2), rng.uniform(0.2, 0.35)
    scene.primitives.append(Cylinder(np.array([x, 0.0, z]), r, h, surfaces=(pot,)))
    fr = rng.uniform(0.25, 0.4)
    scene.primitives.append(Sphere(np.array([x, h + fr * 0.85, z]), fr, surfaces=(leaves,)))
    return float(fr)


def build_person(scene: Scene, rng: np.random.Generator, x: float, z: float, facing: np.ndarray) -> float:
    """A standing person made of Pascal-Part parts. ``facing`` is the (x, z) direction the person looks."""
    inst = scene.new_instance("person")
    s = rng.uniform(1.5, 1.9) / 1.75
    f = np.array([facing[0], 0.0, facing[1]])
    f /= np.linalg.norm(f)
    up = np.array([0.0, 1.0, 0.0])
    left = np.cross(up, f)
    yaw = float(np.arctan2(f[0], f[2]))
    foot = np.array([x, 0.0, z])
    skin = sample_material("skin", rng)
    shirt = sample_material("shirt", rng)
    trousers = sample_material("trousers", rng)
    shoes = sample_material("shoes", rng)
    hair = sample_material("hair", rng)
    sleeves_long = rng.random() < 0.5

    def surf(part: str, material: Material) -> int:
        return scene.add_surface(inst, "person", rng, part=part, material=material)

    def cyl(part, material, center_xz_offset, base_y, radius, height):
        base = foot + center_xz_offset + np.array([0.0, base_y, 0.0])
        scene.primitives.append(Cylinder(base, radius, height, surfaces=(surf(part, material),)))

    for side, sign in (("l", 1.0), ("r", -1.0)):
        leg = left * 0.1 * s * sign
        _add_box(scene, surf(f"{side}foot", shoes), foot + leg + f * 0.05 * s + up * 0.04 * s,
                 np.array([0.05, 0.04, 0.12]) * s, yaw)
        cyl(f"{side}lleg", trousers, leg, 0.08 * s, 0.06 * s, 0.4 * s)
        cyl(f"{side}uleg", trousers, leg, 0.48 * s, 0.075 * s, 0.42 * s)
        arm = left * 0.24 * s * sign
        arm_material = shirt if sleeves_long else skin
        if rng.random() < 0.8:  # arm hanging down
            cyl(f"{side}uarm", shirt, arm, 1.12 * s, 0.05 * s, 0.3 * s)
            cyl(f"{side}larm", arm_material, arm, 0.84 * s, 0.045 * s, 0.28 * s)
            hand_y = 0.8 * s
        else:  # arm raised
            cyl(f"{side}uarm", shirt, arm, 1.4 * s, 0.05 * s, 0.3 * s)
            cyl(f"{side}larm", arm_material, arm, 1.7 * s, 0.045 * s, 0.28 * s)
            hand_y = 2.02 * s
        scene.primitives.append(Sphere(foot + arm + up * hand_y, 0.05 * s, surfaces=(surf(f"{side}hand", skin),)))
    _add_box(scene, surf("torso", shirt), foot + up * (0.9 + 0.27) * s, np.array([0.18, 0.27, 0.11]) * s, yaw)
    cyl("neck", skin, np.zeros(3), 1.44 * s, 0.05 * s, 0.08 * s)
    head_c = foot + up * 1.61 * s
    head_r = 0.11 * s
    cap_axis = up - 0.6 * f
    cap_axis /= np.linalg.norm(cap_axis)
    scene.primitives.append(Sphere(head_c, head_r, surfaces=(surf("head", skin), surf("hair", hair)),
                                   cap_above=0.45, cap_axis=cap_axis))
    dark = Material(np.array([0.05, 0.04, 0.04]), np.zeros(3), "plain", 1.0, 0.0, 0.0)
    lips = Material(np.array([0.55, 0.2, 0.2]), np.zeros(3), "plain", 1.0, 0.0, 0.0)
    for side, sign in (("l", 1.0), ("r", -1.0)):
        eye = head_c + f * 0.095 * s + left * 0.04 * s * sign + up * 0.02 * s
        scene.primitives.append(Sphere(eye, 0.018 * s, surfaces=(surf(f"{side}eye", dark),)))
        ear = head_c + left * 0.105 * s * sign
        scene.primitives.append(Sphere(ear, 0.03 * s, surfaces=(surf(f"{side}ear", skin),)))
    scene.primitives.append(Sphere(head_c + f * 0.11 * s - up * 0.01 * s, 0.02 * s, surfaces=(surf("nose", skin),)))
    scene.primitives.append(Sphere(head_c + f * 0.095 * s - up * 0.055 * s, 0.018 * s, surfaces=(surf("mouth", lips),)))
    return 0.3 * s


# ------------------------------------------------------------------------------------------
# scene sampling


def _sample_camera(rng: np.random.Generator, room: Room, pascal: bool) -> Camera:
    width_x = room.x1 - room.x0
    pos = np.array([
        rng.uniform(room.x0 + 0.25 * width_x, room.x1 - 0.25 * width_x),
        rng.uniform(1.0, 1.7),
        room.z1 - rng.uniform(0.3, 1.0),
    ])
    yaw = np.deg2rad(rng.uniform(-30, 30))
    pitch = np.deg2rad(rng.uniform(-25, -5))
    roll = np.deg2rad(rng.uniform(-4, 4))
    fov = rng.uniform(45, 65) if pascal else rng.uniform(55, 62)
    return Camera(pos, rotation_y(yaw) @ rotation_x(pitch) @ rotation_z(roll), fov)


def _forward_xz(camera: Camera) -> np.ndarray:
    forward = -camera.rotation[:, 2]
    v = np.array([forward[0], forward[2]])
    return v / max(np.linalg.norm(v), 1e-6)


class _Placer:
    """Samples floor positions in front of the camera, inside the room, not overlapping earlier objects."""

    def __init__(self, rng: np.random.Generator, room: Room, camera: Camera, near: float, far: float):
        self.rng, self.room, self.camera = rng, room, camera
        self.near, self.far = near, far
        self.taken: list[tuple[float, float, float]] = []
        self.forward_angle = float(np.arctan2(*_forward_xz(camera)))  # angle of (x, z) from +z towards +x

    def place(self, radius: float, far: float | None = None) -> tuple[float, float] | None:
        """A free spot for an object of ``radius`` at a distance in [near, far] (``far`` overrides the placer's)."""
        half_fov = np.deg2rad(self.camera.fov_x_deg) / 2 * 0.85
        far = self.far if far is None else far
        for _ in range(25):
            angle = self.forward_angle + self.rng.uniform(-half_fov, half_fov)
            dist = self.rng.uniform(self.near, far)
            x = self.camera.position[0] + dist * np.sin(angle)
            z = self.camera.position[2] + dist * np.cos(angle)
            m = radius + 0.05
            if not (self.room.x0 + m < x < self.room.x1 - m and self.room.z0 + m < z < self.room.z1 - m):
                continue
            if any(np.hypot(x - ox, z - oz) < radius + orad for ox, oz, orad in self.taken):
                continue
            if np.hypot(x - self.camera.position[0], z - self.camera.position[2]) < radius + 0.4:
                continue
            self.taken.append((x, z, radius))
            return float(x), float(z)
        return None


def _wall_decal(scene: Scene, rng: np.random.Generator, room: Room, wall_sub: int, inst_name: str, style: str,
                width: tuple[float, float], v_range_fn, glass: bool = False) -> None:
    """A decal on one of the room's walls (``wall_sub`` in 2..5), at a random position along it."""
    room_prim = scene.primitives[0]
    parent = room_prim.surfaces[wall_sub]
    u_axis = 2 if wall_sub in (2, 3) else 0
    lo, hi = (room.z0, room.z1) if u_axis == 2 else (room.x0, room.x1)
    w = min(rng.uniform(*width), (hi - lo) * 0.5)
    u0 = rng.uniform(lo + 0.15, hi - 0.15 - w)
    inst = scene.new_instance(inst_name)
    sid = scene.add_surface(inst, style, rng, glass=glass)
    scene.decals.append(Decal(parent, u_axis, 1, (u0, u0 + w), v_range_fn(), sid))


#: Farthest floor distance (m) of a person in a PASCAL scene (furniture goes up to 5.5 m).
PASCAL_PERSON_FAR = 3.2


def sample_scene(rng: np.random.Generator, dataset: str) -> Scene:
    """A random room with furniture (and maybe people) for ``dataset`` ("nyud" or "pascal")."""
    pascal = dataset == "pascal"
    width_x, depth_z, height = rng.uniform(3.5, 6.5), rng.uniform(4.0, 8.0), rng.uniform(2.5, 3.2)
    room = Room(-width_x / 2, width_x / 2, 0.0, depth_z, height)
    camera = _sample_camera(rng, room, pascal)
    light = Light(
        position=np.array([rng.uniform(room.x0 + 0.5, room.x1 - 0.5), height - 0.2, rng.uniform(0.5, depth_z - 0.5)]),
        ambient=float(rng.uniform(0.3, 0.45)),
        diffuse=float(rng.uniform(0.6, 0.9)),
        falloff=float(rng.uniform(3.0, 6.0)),
        tint=np.clip(np.array([1.0, 1.0, 1.0]) + rng.uniform(-0.06, 0.06, 3), 0.85, 1.1),
    )
    scene = Scene(camera, light, noise_seed=int(rng.integers(2**31)))
    floor_i, ceiling_i = scene.new_instance("floor"), scene.new_instance("ceiling")
    floor_s = scene.add_surface(floor_i, "floor", rng)
    ceiling_s = scene.add_surface(ceiling_i, "ceiling", rng)
    wall_material = sample_material("wall", rng)  # one paint for the room, one instance per wall
    walls = []
    for _ in range(4):
        wall_i = scene.new_instance("wall")
        walls.append(scene.add_surface(wall_i, "wall", rng, material=wall_material))
    room.surfaces = (floor_s, ceiling_s, *walls)
    scene.primitives.append(room)

    # decals on the three walls in view (x0, x1, z0) and the floor
    visible_walls = [2, 3, 4]
    if rng.random() < 0.7:
        _wall_decal(scene, rng, room, int(rng.choice(visible_walls)), "window", "window", (0.8, 1.6),
                    lambda: (rng.uniform(0.7, 1.0), rng.uniform(1.8, 2.2)), glass=not pascal and rng.random() < 0.7)
    if rng.random() < 0.5:
        _wall_decal(scene, rng, room, int(rng.choice(visible_walls)), "door", "door", (0.8, 1.0),
                    lambda: (0.0, rng.uniform(2.0, 2.15)))
    if pascal and rng.random() < 0.4:
        _wall_decal(scene, rng, room, int(rng.choice(visible_walls)), "curtain", "curtain", (0.6, 1.2),
                    lambda: (rng.uniform(0.0, 0.5), rng.uniform(2.0, 2.4)))
    if not pascal:
        for _ in range(int(rng.integers(0, 3))):
            _wall_decal(scene, rng, room, int(rng.choice(visible_walls)), "picture", "picture", (0.4, 1.0),
                        lambda: (lambda lo: (lo, lo + rng.uniform(0.3, 0.7)))(rng.uniform(1.1, 1.6)))
        if rng.random() < 0.5:
            mat_i = scene.new_instance("floor_mat")
            sid = scene.add_surface(mat_i, "floor_mat", rng)
            cx, cz = rng.uniform(room.x0 + 1, room.x1 - 1), rng.uniform(1.0, depth_z - 1.5)
            w, d = rng.uniform(1.0, 2.0), rng.uniform(0.8, 1.5)
            scene.decals.append(Decal(floor_s, 0, 2, (cx - w / 2, cx + w / 2), (cz - d / 2, cz + d / 2), sid))

    placer = _Placer(rng, room, camera, near=1.3 if pascal else 1.5, far=5.5)

    def facing_camera(x: float, z: float, jitter_deg: float) -> np.ndarray:
        to_cam = np.array([camera.position[0] - x, camera.position[2] - z])
        angle = np.arctan2(to_cam[0], to_cam[1]) + np.deg2rad(rng.uniform(-jitter_deg, jitter_deg))
        return np.array([np.sin(angle), np.cos(angle)])

    def place_and_build(builder, radius, **kwargs) -> bool:
        spot = placer.place(radius)
        if spot is None:
            return False
        yaw = float(np.arctan2(*facing_camera(*spot, 40)))
        builder(scene, rng, spot[0], spot[1], yaw, **kwargs)
        return True

    person_far = None  # NYUD: people anywhere furniture goes
    if pascal:
        # People carry the human_parts task (an image without one has an all-ignored parts target). At the
        # tiny scale's 64x64 a person 5 m away is 20-27 px tall with ~1 px forearms, too little to learn the
        # parts from; PASCAL people stand within 3.2 m (27-42 px tall or cropped, like the prominent people of
        # real PASCAL photos) and most images have one or two.
        n_people = int(rng.choice([0, 1, 1, 2, 2]))
        person_far = PASCAL_PERSON_FAR
        object_kinds = ["chair", "table", "sofa", "television", "bottle", "pottedplant", "cabinet"]
        n_objects = int(rng.integers(2, 5))
    else:
        n_people = int(rng.random() < 0.2)
        object_kinds = ["cabinet", "bed", "chair", "sofa", "table", "box", "lamp", "stool", "ball", "television"]
        n_objects = int(rng.integers(3, 7))
    for _ in range(n_people):
        spot = placer.place(0.35, far=person_far)
        if spot is not None:
            build_person(scene, rng, spot[0], spot[1], facing_camera(*spot, 35))
    radii = {"cabinet": 0.6, "bed": 1.3, "chair": 0.4, "sofa": 1.2, "table": 0.9, "box": 0.4, "lamp": 0.25,
             "stool": 0.3, "ball": 0.3, "television": 0.6, "bottle": 0.15, "pottedplant": 0.4}
    builders = {"cabinet": build_cabinet, "bed": build_bed, "chair": build_chair, "sofa": build_sofa,
                "box": build_box, "lamp": build_lamp, "stool": build_stool, "ball": build_ball,
                "television": build_television, "bottle": build_bottle, "pottedplant": build_pottedplant}
    for _ in range(n_objects):
        kind = str(rng.choice(object_kinds))
        if kind == "table":
            spot = placer.place(radii["table"])
            if spot is None:
                continue
            _, (tx, th, tz, hw, hd) = build_table(scene, rng, spot[0], spot[1], float(rng.uniform(0, np.pi)))
            if pascal and rng.random() < 0.7:  # something on the table
                on_kind = "television" if rng.random() < 0.3 else "bottle"
                ox, oz = tx + rng.uniform(-0.5, 0.5) * hw, tz + rng.uniform(-0.5, 0.5) * hd
                builders[on_kind](scene, rng, ox, oz, 0.0, on_top=th)
            continue
        place_and_build(builders[kind], radii[kind])
    return scene


def label_lut(scene: Scene, dataset: str) -> np.ndarray:
    """Surface id -> on-disk class id of ``dataset`` (pot and leaves are both 'pottedplant')."""
    labels = NYUD_LABELS if dataset == "nyud" else PASCAL_LABELS
    return np.array([labels[s.name] for s in scene.surfaces], dtype=np.int32)
