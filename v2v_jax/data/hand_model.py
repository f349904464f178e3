"""Procedural articulated right hand of spheres (after Qian et al., CVPR 2014) in MSRA's 21-joint order: skeleton,
joint limits, pose sampler.

Hand frame (mm): wrist at the origin, +y toward the fingers, palm in the x-y plane, +z dorsal, thumb side -x.
Chains in MSRA order: index, middle, ring, little, thumb; each is a base joint and three bones, joint 1 + 4c + k.
Angles per chain (degrees): [abduction, flexion of bone 1, 2, 3], i.e. fingers [MCP abduction, MCP, PIP, DIP] and
thumb [CMC abduction, CMC flexion, MCP, IP]. Flexion bends toward the chain's palmar side; finger abduction > 0
turns toward the thumb; thumb abduction > 0 lifts the thumb palmar, out of the palm plane.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from v2v_jax.data.cameras import pixel_to_world, world_to_pixel

CHAINS = ("index", "middle", "ring", "little", "thumb")
THUMB = 4
NUM_JOINTS = 21
TIPS = tuple(4 + 4 * c for c in range(len(CHAINS)))

BASES = np.array([[-25, 70, 0], [-5, 72, 0], [15, 67, 0], [33, 58, 0], [-22, 18, -8]], np.float64)
BONES = np.array([[40, 23, 20], [45, 27, 21], [42, 26, 20], [33, 18, 18], [46, 32, 25]], np.float64)
RADII = np.array([[10, 7], [10, 7], [10, 7], [8.5, 6], [11, 8]], np.float64)  # at the base joint, at the tip
FINGER_SPLAY_DEG = (5.0, 0.0, -5.0, -12.0)  # rest direction of each finger from +y, toward the thumb > 0
THUMB_REST_DEG = 30.0        # thumb metacarpal at zero angles: this far from +y toward -x, in the palm plane
THUMB_PRONATION_DEG = 60.0   # thumb nail turned this far from dorsal toward the radial side

LIMITS_DEG = np.array([
    [[-20, 20], [-15, 90], [0, 110], [0, 90]],   # index: MCP abduction, MCP, PIP, DIP
    [[-15, 15], [-15, 90], [0, 110], [0, 90]],   # middle
    [[-15, 15], [-15, 90], [0, 110], [0, 90]],   # ring
    [[-20, 20], [-15, 90], [0, 110], [0, 90]],   # little
    [[0, 60], [-15, 45], [0, 60], [-10, 80]],    # thumb: CMC abduction, CMC flexion, MCP, IP
], np.float64)
DIP_PER_PIP = 2.0 / 3.0
DIP_JITTER_DEG = 10.0

PALM_RADIUS = 14.0
PALM_GRID = 5          # rows from the wrist to the knuckles, and columns across the palm
FOREARM = ((-12.0, 12.0), (6.0, -40.0), (15.0, 17.0))  # chain x positions, y from -> to, radius from -> to
WEB_RADIUS = 9.0       # skin between the thumb and the index finger
SPHERE_SPACING = 0.5   # of the smaller radius, between neighbouring spheres of a bone


@dataclasses.dataclass(frozen=True)
class HandShape:
    """One hand (a subject): base joints, rest frames, bone lengths, radii and palm spheres in the hand frame."""
    bases: np.ndarray    # (5, 3) MCP of each finger, CMC of the thumb
    frames: np.ndarray   # (5, 3, 3) rest frame of each chain, columns (lateral, along the bone, dorsal)
    bones: np.ndarray    # (5, 3) bone lengths
    radii: np.ndarray    # (5, 2) capsule radius at the base joint and at the tip
    palm: np.ndarray     # (P, 3) centres of the palm and forearm spheres, fixed in the hand frame
    bone_weights: np.ndarray  # (B, 21) each bone sphere's centre as a blend of two joints
    sphere_radii: np.ndarray  # (B + P,) radii of the bone spheres, then the palm spheres

    def spheres(self, joints: np.ndarray) -> np.ndarray:
        """Sphere centres (..., B + P, 3) of the hand posed at `joints` (..., 21, 3), in the hand frame."""
        bones = self.bone_weights @ joints
        palm = np.broadcast_to(self.palm, bones.shape[:-2] + self.palm.shape)
        return np.concatenate([bones, palm], axis=-2)


def _rotation(axis: int, angle) -> np.ndarray:
    """Right-handed rotations (..., 3, 3) by `angle` (radians, any shape) about coordinate axis 0, 1 or 2."""
    c, s = np.cos(angle), np.sin(angle)
    i, j = (axis + 1) % 3, (axis + 2) % 3
    m = np.zeros(np.shape(angle) + (3, 3))
    m[..., axis, axis] = 1.0
    m[..., i, i], m[..., i, j], m[..., j, i], m[..., j, j] = c, -s, s, c
    return m


def rest_frames() -> np.ndarray:
    """(5, 3, 3) rest frames: fingers splayed in the palm plane; the thumb turned out and pronated."""
    fingers = _rotation(2, np.deg2rad(np.array(FINGER_SPLAY_DEG)))
    rest, pronation = np.deg2rad(THUMB_REST_DEG), np.deg2rad(THUMB_PRONATION_DEG)
    along = np.array([-np.sin(rest), np.cos(rest), 0.0])
    radial = np.array([-np.cos(rest), -np.sin(rest), 0.0])
    nail = np.cos(pronation) * np.array([0.0, 0.0, 1.0]) + np.sin(pronation) * radial
    thumb = np.stack([np.cross(along, nail), along, nail], axis=1)
    return np.concatenate([fingers, thumb[None]], axis=0)


def _palm_spheres(width: float, length: float) -> np.ndarray:
    """(P, 4) palm grid between a wrist row and a row just proximal to the knuckles, then a two-chain forearm."""
    t = np.linspace(0.0, 1.0, PALM_GRID)
    knuckle_x = np.linspace(BASES[0, 0] + 2, BASES[3, 0] - 2, PALM_GRID)
    knuckle_y = np.interp(knuckle_x, BASES[:4, 0], BASES[:4, 1]) - 12.0
    wrist_x = np.linspace(-18.0, 18.0, PALM_GRID)
    x = wrist_x[None, :] + t[:, None] * (knuckle_x - wrist_x)[None, :]
    y = 8.0 + t[:, None] * (knuckle_y - 8.0)[None, :]
    palm = np.stack([x.ravel() * width, y.ravel() * length, np.zeros(x.size), np.full(x.size, PALM_RADIUS)], -1)
    (x0, x1), (y0, y1), (r0, r1) = FOREARM
    steps = int(np.ceil(abs(y1 - y0) / (0.5 * r0))) + 1
    along = np.linspace(0.0, 1.0, steps)
    arm = [np.stack([np.full(steps, x * width), y0 + along * (y1 - y0), np.zeros(steps), r0 + along * (r1 - r0)], -1)
           for x in (x0, x1)]
    return np.concatenate([palm] + arm, axis=0)


def _bone_spheres(bones: np.ndarray, radii: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tapered capsules as sphere chains spaced at most SPHERE_SPACING of the smaller radius, plus the thumb web.

    Returns joint weights (B, 21) and radii (B,); the radius tapers linearly along each chain.
    """
    weights, out_radii = [], []

    def add(a, b, lam, r):
        w = np.zeros((lam.size, NUM_JOINTS))
        w[:, a] += 1.0 - lam
        w[:, b] += lam
        weights.append(w)
        out_radii.append(r)

    for c in range(len(CHAINS)):
        arc = np.concatenate([[0.0], np.cumsum(bones[c])]) / bones[c].sum()
        r_at = radii[c, 0] + arc * (radii[c, 1] - radii[c, 0])
        for k in range(3):
            n = int(np.ceil(bones[c, k] / (SPHERE_SPACING * min(r_at[k], r_at[k + 1]))))
            lam = np.arange(0 if k == 0 else 1, n + 1) / n
            add(chain_joint(c, k), chain_joint(c, k + 1), lam, r_at[k] + lam * (r_at[k + 1] - r_at[k]))
    web = np.array([0.25, 0.5, 0.75])
    add(chain_joint(THUMB, 1), chain_joint(0, 0), web, np.full(web.size, WEB_RADIUS * radii[0, 0] / RADII[0, 0]))
    return np.concatenate(weights), np.concatenate(out_radii)


def make_shape(scale=1.0, bone_factors=None, width=1.0, length=1.0, thickness=1.0) -> HandShape:
    """A hand from BASES, BONES and RADII: `scale` overall, per-bone factors (5, 3), palm width/length, thickness."""
    bone_factors = np.ones((5, 3)) if bone_factors is None else np.asarray(bone_factors, np.float64)
    stretch = np.array([width, length, 1.0])
    bones, radii = BONES * bone_factors * scale, RADII * thickness * scale
    palm = _palm_spheres(width, length) * np.array([scale, scale, scale, scale * thickness])
    weights, bone_radii = _bone_spheres(bones, radii)
    return HandShape(BASES * stretch * scale, rest_frames(), bones, radii, palm[:, :3], weights,
                     np.concatenate([bone_radii, palm[:, 3]]))


def sample_shape(rng: np.random.Generator) -> HandShape:
    """A subject's hand: scale U(0.85, 1.15), bone factors N(1, 0.04) within ±10 %, palm proportions and
    thickness within a few per cent."""
    scale = rng.uniform(0.85, 1.15)
    bones = np.clip(rng.normal(1.0, 0.04, (5, 3)), 0.9, 1.1)
    width, length, thickness = rng.uniform([0.92, 0.94, 0.9], [1.08, 1.06, 1.1])
    return make_shape(scale, bones, width, length, thickness)


def forward_kinematics(shape: HandShape, angles_deg: np.ndarray) -> np.ndarray:
    """Joint positions (..., 21, 3) in the hand frame from angles (..., 5, 4) in degrees."""
    a = np.deg2rad(np.asarray(angles_deg, np.float64))
    rot = shape.frames @ _rotation(2, a[..., 0]) @ _rotation(0, -a[..., 1])
    points = [np.broadcast_to(shape.bases, a.shape[:-1] + (3,))]
    for k in range(3):
        if k:
            rot = rot @ _rotation(0, -a[..., k + 1])
        points.append(points[-1] + rot[..., :, 1] * shape.bones[:, k, None])
    chains = np.stack(points, axis=-2).reshape(a.shape[:-2] + (20, 3))
    wrist = np.zeros(a.shape[:-2] + (1, 3))
    return np.concatenate([wrist, chains], axis=-2)


def chain_joint(chain: int, k: int) -> int:
    """MSRA joint index of point k (0 base ... 3 tip) of a chain."""
    return 1 + 4 * chain + k


# Finger modes: ranges of (MCP flexion, PIP flexion); thumb modes: (CMC abduction, CMC flexion, MCP, IP). Besides
# these, "random" draws every angle of a chain within LIMITS_DEG and "pinch" is solved for (`_pinch`); pointing is
# gesture "1" (index straight, the rest closed).
FINGER_MODES = {
    "straight": ((-10, 10), (0, 10)),
    "half": ((25, 55), (35, 70)),
    "closed": ((75, 90), (95, 110)),
}
THUMB_MODES = {
    "straight": ((5, 25), (-15, 0), (0, 15), (-10, 10)),
    "half": ((25, 50), (10, 30), (15, 40), (20, 50)),
    "closed": ((25, 45), (35, 45), (40, 60), (40, 70)),
}
PINCH_RANGES = ((20, 90), (20, 100))  # MCP and PIP flexion of the finger that meets the thumb
PINCH_CANDIDATES = 128
PINCH_REFINE_DEG = (8.0, 3.0)

# MSRA gestures as finger modes (index, middle, ring, little, thumb). The digits follow ASL counting (6-9: the thumb
# pinches the little, ring, middle, index finger); the letters name the extended fingers (T thumb, I index,
# P little) or are ASL letters (I, L, Y). A design reading of the folder names, not MSRA's definition.
GESTURES = {
    "1": ("straight", "closed", "closed", "closed", "closed"),
    "2": ("straight", "straight", "closed", "closed", "closed"),
    "3": ("straight", "straight", "closed", "closed", "straight"),
    "4": ("straight", "straight", "straight", "straight", "closed"),
    "5": ("straight", "straight", "straight", "straight", "straight"),
    "6": ("straight", "straight", "straight", "pinch", "pinch"),
    "7": ("straight", "straight", "pinch", "straight", "pinch"),
    "8": ("straight", "pinch", "straight", "straight", "pinch"),
    "9": ("pinch", "straight", "straight", "straight", "pinch"),
    "I": ("closed", "closed", "closed", "straight", "closed"),
    "IP": ("straight", "closed", "closed", "straight", "closed"),
    "L": ("straight", "closed", "closed", "closed", "straight"),
    "MP": ("closed", "straight", "closed", "straight", "closed"),
    "RP": ("closed", "closed", "straight", "straight", "closed"),
    "T": ("closed", "closed", "closed", "closed", "straight"),
    "TIP": ("straight", "closed", "closed", "straight", "straight"),
    "Y": ("closed", "closed", "closed", "straight", "straight"),
}
# A closed chain is drawn half-closed, at random within the limits, or closed with these odds, for variety.
LOOSE_P = (0.2, 0.1, 0.7)
FAN = (1.0, 0.0, -0.5, -1.0)  # share of its abduction limit each extended finger takes when the hand spreads fully
ABDUCTION_JITTER_DEG = 4.0


def _coupled_dip(rng, pip):
    """DIP flexion follows the PIP's: DIP_PER_PIP of it, +-DIP_JITTER_DEG."""
    return np.clip(DIP_PER_PIP * pip + rng.uniform(-DIP_JITTER_DEG, DIP_JITTER_DEG, np.shape(pip)),
                   *LIMITS_DEG[0, 3])


def _chain_angles(rng, chain: int, mode: str, spread: float) -> np.ndarray:
    if mode == "random":
        angles = rng.uniform(LIMITS_DEG[chain, :, 0], LIMITS_DEG[chain, :, 1])
    elif chain == THUMB:
        return rng.uniform(*np.array(THUMB_MODES[mode]).T)
    else:
        mcp, pip = rng.uniform(*np.array(FINGER_MODES[mode]).T)
        fan = spread * FAN[chain] * LIMITS_DEG[chain, 0, 1] if mode == "straight" else 0.0
        angles = np.array([fan + rng.uniform(-ABDUCTION_JITTER_DEG, ABDUCTION_JITTER_DEG), mcp, pip, 0.0])
    if chain != THUMB:
        angles[3] = _coupled_dip(rng, angles[2])
    return angles


def _pinch(rng, shape: HandShape, angles: np.ndarray, chain: int) -> np.ndarray:
    """Angles with finger `chain` and the thumb chosen so that their tips touch: the best of random candidates,
    then of jittered copies of the best (PINCH_REFINE_DEG), since the little finger meets the thumb only in a
    small part of their joint space."""
    n = PINCH_CANDIDATES
    touch = shape.radii[chain, 1] + shape.radii[THUMB, 1]

    def closest(cand):
        cand[:, chain, 3] = _coupled_dip(rng, cand[:, chain, 2])
        joints = forward_kinematics(shape, cand)
        gap = np.linalg.norm(joints[:, TIPS[chain]] - joints[:, TIPS[THUMB]], axis=-1)
        return cand[np.argmin(np.abs(gap - touch))]

    cand = np.repeat(angles[None], n, axis=0)
    cand[:, chain, 0] = rng.uniform(-ABDUCTION_JITTER_DEG, ABDUCTION_JITTER_DEG, n)
    cand[:, chain, 1:3] = rng.uniform(*np.array(PINCH_RANGES).T, size=(n, 2))
    cand[:, THUMB] = rng.uniform(LIMITS_DEG[THUMB, :, 0], LIMITS_DEG[THUMB, :, 1], size=(n, 4))
    best = closest(cand)
    for jitter in PINCH_REFINE_DEG:
        cand = np.repeat(best[None], n, axis=0)
        cand[:, [chain, THUMB]] += rng.normal(0.0, jitter, (n, 2, 4))
        best = closest(np.clip(cand, LIMITS_DEG[..., 0], LIMITS_DEG[..., 1]))
    return best


def sample_pose(rng: np.random.Generator, shape: HandShape, gesture: str) -> np.ndarray:
    """Angles (5, 4) in degrees for an MSRA gesture name, within LIMITS_DEG."""
    modes = GESTURES[gesture]
    spread = rng.uniform(-0.2, 1.0)  # how far the extended fingers fan out: toward their abduction limits
    angles = np.zeros((5, 4))
    for chain, mode in enumerate(modes):
        if mode == "closed":
            mode = rng.choice(["half", "random", "closed"], p=LOOSE_P)
        angles[chain] = _chain_angles(rng, chain, "straight" if mode == "pinch" else mode, spread)
    if "pinch" in modes:
        angles = _pinch(rng, shape, angles, modes.index("pinch"))
    return np.clip(angles, LIMITS_DEG[..., 0], LIMITS_DEG[..., 1])


# Global pose: yaw about the camera's vertical axis, pitch about its horizontal axis (> 0 tips the fingers toward the
# camera), roll about the viewing axis, applied in that order to the canonical view. The ranges cover MSRA's ground
# truth (1st-99th percentile yaw -84..71, pitch -15..83 degrees: msra_angle.txt of the awesome-hand-pose-estimation
# evaluation).
YAW_DEG, PITCH_DEG, ROLL_DEG = (-90.0, 90.0), (-15.0, 90.0), (-60.0, 60.0)
PALM_DEPTH_MM = (250.0, 450.0)
IMAGE_MARGIN_PX = 6.0
PLACEMENT_CANDIDATES = 16
PLACEMENT_BOX_PX = (80.0, 50.0)  # palm centre candidates within this many pixels of the principal point
# Hand frame -> camera: world = MIRROR @ R_gl @ hand, with R_gl a rotation in a right-handed camera frame (x right,
# y up, z toward the viewer) and MIRROR flipping z into the data set's depth-positive frame. The mirror keeps the
# hand a right hand: the depth-positive camera frame is left-handed. At zero angles the palm faces the camera with
# the fingers up (R_gl a half turn about y).
MIRROR = np.diag([1.0, 1.0, -1.0])
PALM_TO_CAMERA = np.diag([-1.0, 1.0, -1.0])


def view_rotation(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """(3, 3) hand frame -> camera (data set world) matrix; its determinant is -1 (see MIRROR)."""
    yaw, pitch, roll = np.deg2rad([yaw_deg, pitch_deg, roll_deg])
    return MIRROR @ _rotation(2, roll) @ _rotation(0, pitch) @ _rotation(1, yaw) @ PALM_TO_CAMERA


def palm_centre(joints: np.ndarray) -> np.ndarray:
    """The mean of the wrist and the four finger MCPs."""
    return joints[..., [0] + [chain_joint(c, 0) for c in range(4)], :].mean(axis=-2)


def sample_placement(rng: np.random.Generator, joints: np.ndarray, spec) -> tuple[np.ndarray, np.ndarray]:
    """A view (rotation (3, 3), translation (3,)) taking hand-frame `joints` into the camera with the palm centre at
    a depth in PALM_DEPTH_MM and every joint at least IMAGE_MARGIN_PX inside the image.

    The palm centre goes to the first of PLACEMENT_CANDIDATES random pixels that keeps the joints inside; when none
    does, to the principal point, moved back in 10 mm steps until they fit.
    """
    rotation = view_rotation(rng.uniform(*YAW_DEG), rng.uniform(*PITCH_DEG), rng.uniform(*ROLL_DEG))
    depth = rng.uniform(*PALM_DEPTH_MM)
    offsets = (joints - palm_centre(joints)) @ rotation.T
    box = np.array(PLACEMENT_BOX_PX)
    pixels = np.array([spec.cx, spec.cy]) + rng.uniform(-box, box, size=(PLACEMENT_CANDIDATES, 2))
    while True:
        centres = pixel_to_world(np.concatenate([pixels, np.full((len(pixels), 1), depth)], -1), spec)
        uv = world_to_pixel(centres[:, None, :] + offsets[None], spec)[..., :2]
        lo, hi = IMAGE_MARGIN_PX, np.array([spec.width, spec.height]) - 1 - IMAGE_MARGIN_PX
        fits = ((uv >= lo) & (uv <= hi)).all(axis=(1, 2))
        if fits.any():
            return rotation, centres[np.argmax(fits)] - palm_centre(joints) @ rotation.T
        pixels = np.array([[spec.cx, spec.cy]])
        depth += 10.0
