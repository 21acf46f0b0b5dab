"""Vectorised numpy ray casting of simple indoor scenes: one ray per pixel, nearest hit wins.

Why a ray caster rather than painted shapes: depth, surface normals, class and instance maps then
all come from the same geometry, so they are exact and correlated the way real RGB-D scenes are
(a table top is flat and faces up, its edge is a depth step, its legs occlude the floor...).

Conventions:
- world: y up, metres; the floor is y = 0.
- camera frame: x right, y up, z backward (the camera looks along -z); ``depth`` is the distance
  along the optical axis (-z_cam), like a Kinect depth map, not the ray length.
- normals point towards the camera and are returned in the camera frame.
Each primitive is only tested against the pixels inside its projected bounding box, so small
objects (a hand, an eye) cost almost nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_EPS = 1e-6
_NEAR = 0.05  # metres; bounding boxes closer than this to the camera plane are not projected


def rotation_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rotation_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rotation_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclass
class Camera:
    """Pinhole camera; ``rotation`` columns are the camera's x (right), y (up), z (back) axes in world."""

    position: np.ndarray
    rotation: np.ndarray
    fov_x_deg: float = 60.0

    def focal(self, width: int) -> float:
        return 0.5 * width / np.tan(np.deg2rad(self.fov_x_deg) / 2)

    def rays(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Unit ray directions in world (H, W, 3) and the factor turning ray length into depth (H, W)."""
        f = self.focal(width)
        xs = (np.arange(width, dtype=np.float64) + 0.5 - width / 2) / f
        ys = -(np.arange(height, dtype=np.float64) + 0.5 - height / 2) / f
        norm = np.sqrt(xs[None, :] ** 2 + ys[:, None] ** 2 + 1.0)
        cam = np.empty((height, width, 3))
        cam[..., 0] = xs[None, :] / norm
        cam[..., 1] = ys[:, None] / norm
        cam[..., 2] = -1.0 / norm
        return cam @ self.rotation.T, 1.0 / norm

    def pixel_rect(self, lo: np.ndarray, hi: np.ndarray, height: int, width: int) -> tuple[int, int, int, int] | None:
        """Pixel rectangle (r0, r1, c0, c1) covering the world box [lo, hi]; None when it is off screen."""
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        cam = (corners - self.position) @ self.rotation
        forward = -cam[:, 2]
        if np.all(forward < _NEAR):
            return None
        if np.any(forward < _NEAR):
            return 0, height, 0, width
        f = self.focal(width)
        cols = f * cam[:, 0] / forward + width / 2
        rows = -f * cam[:, 1] / forward + height / 2
        r0, r1 = int(np.floor(rows.min())) - 1, int(np.ceil(rows.max())) + 1
        c0, c1 = int(np.floor(cols.min())) - 1, int(np.ceil(cols.max())) + 1
        r0, c0 = max(r0, 0), max(c0, 0)
        r1, c1 = min(r1, height), min(c1, width)
        if r0 >= r1 or c0 >= c1:
            return None
        return r0, r1, c0, c1


class Primitive:
    """A solid seen from outside (or the room, seen from inside). ``surfaces[sub]`` is a global surface id."""

    surfaces: tuple[int, ...]

    def bounds(self) -> tuple[np.ndarray, np.ndarray] | None:
        """World-space axis-aligned bounds, or None to test every pixel."""
        return None

    def intersect(self, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Ray length t (N,) (inf on a miss), world normal (N, 3) and sub-surface index (N,) or None."""
        raise NotImplementedError


@dataclass
class Room(Primitive):
    """Inside of an axis-aligned box [x0, x1] x [0, height] x [z0, z1]. Sub-surfaces:
    0 floor, 1 ceiling, 2 wall at x0, 3 wall at x1, 4 wall at z0, 5 wall at z1."""

    x0: float
    x1: float
    z0: float
    z1: float
    height: float
    surfaces: tuple[int, ...] = ()

    def intersect(self, origin, dirs):
        lo = np.array([self.x0, 0.0, self.z0])
        hi = np.array([self.x1, self.height, self.z1])
        with np.errstate(divide="ignore", invalid="ignore"):
            t_hi = (hi - origin) / dirs
            t_lo = (lo - origin) / dirs
        t_axis = np.where(dirs > _EPS, t_hi, np.where(dirs < -_EPS, t_lo, np.inf))
        axis = np.argmin(t_axis, axis=1)
        rows = np.arange(len(dirs))
        t = t_axis[rows, axis]
        positive = dirs[rows, axis] > 0
        normals = np.zeros_like(dirs)
        normals[rows, axis] = np.where(positive, -1.0, 1.0)
        # axis 0: -x wall (2) / +x wall (3); axis 1: floor (0) / ceiling (1); axis 2: -z wall (4) / +z wall (5)
        sub = np.choose(axis, [np.where(positive, 3, 2), np.where(positive, 1, 0), np.where(positive, 5, 4)])
        return t, normals, sub


@dataclass
class Box(Primitive):
    """Box with half extents ``half`` around ``center``, turned by ``yaw`` about the vertical axis."""

    center: np.ndarray
    half: np.ndarray
    yaw: float = 0.0
    surfaces: tuple[int, ...] = ()
    _rot: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.center = np.asarray(self.center, dtype=np.float64)
        self.half = np.asarray(self.half, dtype=np.float64)
        self._rot = rotation_y(self.yaw)

    def bounds(self):
        corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]) * self.half
        world = corners @ self._rot.T + self.center
        return world.min(0), world.max(0)

    def intersect(self, origin, dirs):
        o_local = (origin - self.center) @ self._rot
        d_local = dirs @ self._rot
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / d_local
            t1 = (-self.half - o_local) * inv
            t2 = (self.half - o_local) * inv
        t_near = np.minimum(t1, t2)
        t_far = np.maximum(t1, t2)
        # rays parallel to a slab: inside it -> (-inf, inf), outside -> miss
        parallel = np.abs(d_local) < _EPS
        outside_slab = parallel & (np.abs(o_local) > self.half)
        t_near = np.where(parallel, -np.inf, t_near)
        t_far = np.where(parallel, np.inf, t_far)
        axis = np.argmax(t_near, axis=1)
        rows = np.arange(len(dirs))
        t_enter = t_near[rows, axis]
        t_exit = t_far.min(axis=1)
        hit = (t_enter <= t_exit) & (t_enter > _EPS) & ~outside_slab.any(axis=1)
        t = np.where(hit, t_enter, np.inf)
        n_local = np.zeros_like(dirs)
        n_local[rows, axis] = -np.sign(d_local[rows, axis])
        return t, n_local @ self._rot.T, None


@dataclass
class Sphere(Primitive):
    """Sphere. With two surfaces, the cap whose normal has an upward component > ``cap_above``
    (in world) is sub-surface 1 (hair on a head, the top of a ball)."""

    center: np.ndarray
    radius: float
    surfaces: tuple[int, ...] = ()
    cap_above: float = 0.35
    cap_axis: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.center = np.asarray(self.center, dtype=np.float64)

    def bounds(self):
        return self.center - self.radius, self.center + self.radius

    def intersect(self, origin, dirs):
        oc = origin - self.center
        b = dirs @ oc
        c = oc @ oc - self.radius**2
        disc = b * b - c
        root = np.sqrt(np.maximum(disc, 0.0))
        t = -b - root
        hit = (disc >= 0) & (t > _EPS)
        t = np.where(hit, t, np.inf)
        t_safe = np.where(hit, t, 0.0)
        normals = (origin + t_safe[:, None] * dirs - self.center) / self.radius
        sub = None
        if len(self.surfaces) > 1:
            axis = np.array([0.0, 1.0, 0.0]) if self.cap_axis is None else self.cap_axis
            sub = (normals @ axis > self.cap_above).astype(np.int64)
        return t, normals, sub


@dataclass
class Cylinder(Primitive):
    """Vertical capped cylinder from ``base`` (x, y, z of the bottom centre) up by ``height``."""

    base: np.ndarray
    radius: float
    height: float
    surfaces: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.base = np.asarray(self.base, dtype=np.float64)

    def bounds(self):
        lo = self.base - np.array([self.radius, 0.0, self.radius])
        hi = self.base + np.array([self.radius, self.height, self.radius])
        return lo, hi

    def intersect(self, origin, dirs):
        ox, oy, oz = origin - self.base
        dx, dy, dz = dirs[:, 0], dirs[:, 1], dirs[:, 2]
        a = dx * dx + dz * dz
        b = ox * dx + oz * dz
        c = ox * ox + oz * oz - self.radius**2
        disc = b * b - a * c
        with np.errstate(divide="ignore", invalid="ignore"):
            t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
        y_side = oy + t_side * dy
        side_hit = (disc >= 0) & (a > _EPS) & (t_side > _EPS) & (y_side >= 0) & (y_side <= self.height)
        t_side = np.where(side_hit, t_side, np.inf)
        # the cap facing the ray origin: the top when looking down, the bottom when looking up
        cap_y = self.height if oy > self.height else 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            t_cap = (cap_y - oy) / dy
        cx, cz = ox + t_cap * dx, oz + t_cap * dz
        cap_hit = (np.abs(dy) > _EPS) & (t_cap > _EPS) & (cx * cx + cz * cz <= self.radius**2)
        cap_hit &= (oy > self.height) | (oy < 0.0)
        t_cap = np.where(cap_hit, t_cap, np.inf)
        use_cap = t_cap < t_side
        t = np.minimum(t_side, t_cap)
        t_safe = np.where(np.isfinite(t), t, 0.0)
        normals = np.zeros_like(dirs)
        normals[:, 0] = (ox + t_safe * dx) / self.radius
        normals[:, 2] = (oz + t_safe * dz) / self.radius
        normals[use_cap] = [0.0, 1.0 if cap_y > 0 else -1.0, 0.0]
        return t, normals, None


@dataclass
class Decal:
    """A flat rectangle painted on a room face: changes class and texture, not geometry
    (windows, doors, pictures, rugs). ``u_axis``/``v_axis`` are world axis indices."""

    parent_surface: int
    u_axis: int
    v_axis: int
    u_range: tuple[float, float]
    v_range: tuple[float, float]
    surface: int


@dataclass
class RayHits:
    depth: np.ndarray  # (H, W) float64, metres along the optical axis
    normals_cam: np.ndarray  # (H, W, 3) unit, camera frame, facing the camera
    normals_world: np.ndarray  # (H, W, 3)
    points: np.ndarray  # (H, W, 3) world hit points
    surface: np.ndarray  # (H, W) int32 global surface id (-1 = nothing hit)


def cast(camera: Camera, primitives: list[Primitive], decals: list[Decal], height: int, width: int) -> RayHits:
    """Nearest hit of every pixel's ray against ``primitives``, then ``decals`` painted on top."""
    dirs, depth_factor = camera.rays(height, width)
    origin = np.asarray(camera.position, dtype=np.float64)
    t_best = np.full((height, width), np.inf)
    n_best = np.zeros((height, width, 3))
    surface = np.full((height, width), -1, dtype=np.int32)
    for prim in primitives:
        box = prim.bounds()
        rect = (0, height, 0, width) if box is None else camera.pixel_rect(box[0], box[1], height, width)
        if rect is None:
            continue
        r0, r1, c0, c1 = rect
        sub_dirs = dirs[r0:r1, c0:c1].reshape(-1, 3)
        t, normals, sub = prim.intersect(origin, sub_dirs)
        shape = (r1 - r0, c1 - c0)
        t = t.reshape(shape)
        t_view = t_best[r0:r1, c0:c1]
        closer = t < t_view
        if not closer.any():
            continue
        t_view[closer] = t[closer]
        n_best[r0:r1, c0:c1][closer] = normals.reshape(shape + (3,))[closer]
        surf_ids = np.asarray(prim.surfaces, dtype=np.int32)
        ids = np.full(shape, surf_ids[0], dtype=np.int32) if sub is None else surf_ids[sub.reshape(shape)]
        surface[r0:r1, c0:c1][closer] = ids[closer]
    t_safe = np.where(np.isfinite(t_best), t_best, 0.0)
    points = origin + t_safe[..., None] * dirs
    for decal in decals:
        u = points[..., decal.u_axis]
        v = points[..., decal.v_axis]
        inside = (surface == decal.parent_surface) & (u >= decal.u_range[0]) & (u <= decal.u_range[1])
        inside &= (v >= decal.v_range[0]) & (v <= decal.v_range[1])
        surface[inside] = decal.surface
    # normals face the camera (flip any that point away, e.g. numerical edge cases)
    facing = np.einsum("hwc,hwc->hw", n_best, dirs)
    n_best = np.where(facing[..., None] > 0, -n_best, n_best)
    length = np.linalg.norm(n_best, axis=-1, keepdims=True)
    n_best = np.where(length > 0, n_best / np.maximum(length, _EPS), 0.0)
    normals_cam = n_best @ camera.rotation
    return RayHits(
        depth=t_safe * depth_factor,
        normals_cam=normals_cam,
        normals_world=n_best,
        points=points,
        surface=surface,
    )
