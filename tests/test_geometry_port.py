"""The 'port' geometry against the public PyTorch port's formulas (dragonbook/V2V-PoseNet-pytorch), and against ours.

The port's pipeline is transcribed step by step in `v2v_torch_ref.port_pipeline` (float64; the port's float32 storage
of its points is checked apart in `test_float32_product_matches_the_port_up_to_face_ties`).

No depth map ships with the repository's reference data, so the real-data test renders depth maps of real hand
poses: the NYU test set's ground-truth joints (shared/data/eval/nyu_gt.txt), spheres on the joints and bones, seen by
NYU's camera. The synthetic tests use the oracle's toy hands on MSRA's full 320 x 240 camera and always run.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from v2v_jax import geometry, metrics, vis
from v2v_jax.data import cameras, render
from v2v_torch_ref import geometry_ref as ref
from v2v_torch_ref.port_pipeline import N, PORT_FRAME, port_coord, port_points, port_scatter, port_voxels

EVAL_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "eval"

encode = jax.jit(geometry.encode_batch, static_argnames=("spec", "grid_size", "cube_mm", "geometry"))


# --- scenes ----------------------------------------------------------------------------------------------------

def toy_scene(seed, spec=cameras.MSRA):
    rng = np.random.default_rng(seed)
    centres, radii, joints = ref.toy_hand([rng.uniform(-40, 40), rng.uniform(-60, 0), rng.uniform(280, 420)], rng)
    return ref.render_spheres(spec, centres, radii), joints.mean(0) + rng.uniform(-10, 10, 3)


def nyu_scenes(count: int):
    """Depth maps (count, 480, 640) of real NYU test poses (frames 0, 500, 1000, ...) and their joint means: the
    oracle's stick hands on the ground-truth joints, rendered with NYU's camera."""
    gt = EVAL_DIR / "nyu_gt.txt"
    if not gt.is_file():
        pytest.skip("real NYU ground truth not found at shared/data/eval/nyu_gt.txt beside the repository")
    joints = metrics.read_world(gt, "nyu")[::500][:count]
    hands = [ref.stick_hand(j, vis.SKELETONS["nyu"]) for j in joints]
    depth, _ = render.render_spheres(np.stack([c for c, _ in hands]), hands[0][1], cameras.NYU)
    return depth, joints.mean(axis=1)


def jax_voxels(depth, spec, center, geometry_name, aug=None):
    """The product's encoding (the eval step's function) in the dtype of `center`; one sample."""
    voxels, _ = encode(jnp.asarray(depth)[None], jnp.asarray(center)[None], jnp.asarray(center)[None, None], None,
                       spec, N, spec.cube_mm, geometry=geometry_name)
    return np.asarray(voxels[0, ..., 0])


# --- pixel numbering -------------------------------------------------------------------------------------------

@pytest.mark.x64
def test_port_pixel_numbering_is_ours_shifted_by_z_over_f():
    """port x = ours + z/fx, port y = ours - z/fy (y up), exactly: 1.2-1.7 mm at MSRA hand depth (300-400 mm)."""
    spec = cameras.MSRA
    depth, _ = toy_scene(0)
    ours = ref.depth_to_points(depth, spec)
    port = port_points(depth, spec, spec.background_mm)
    z = ours[:, 2]
    np.testing.assert_allclose(port[:, 0] - ours[:, 0], z / spec.fx, rtol=1e-9)
    np.testing.assert_allclose(port[:, 1] - ours[:, 1], -z / spec.fy, rtol=1e-9)
    np.testing.assert_array_equal(port[:, 2], ours[:, 2])
    np.testing.assert_allclose(300 / spec.fx, 1.243, atol=1e-3)
    np.testing.assert_allclose(400 / spec.fx, 1.657, atol=1e-3)
    # Both implementations of the switch give the port's points (float64: rounding of a few ulp of |x|).
    np.testing.assert_allclose(ref.depth_to_points(depth, spec, "port"), port, rtol=1e-14, atol=1e-12)
    jax_port = geometry.depth_to_points(jnp.asarray(depth, jnp.float64), spec, jnp.float64, "port")
    np.testing.assert_allclose(jax_port, port, rtol=1e-14, atol=1e-12)


@pytest.mark.x64
@pytest.mark.parametrize("camera", [cameras.MSRA, cameras.ICVL, cameras.NYU])
def test_pixel_origin_round_trip(camera):
    rng = np.random.default_rng(1)
    xyz = rng.uniform([-100, -100, 250], [100, 100, 900], (40, 3))
    uvd = cameras.world_to_pixel(xyz, camera, pixel_origin=1)
    np.testing.assert_allclose(uvd[:, :2], cameras.world_to_pixel(xyz, camera)[:, :2] - 1, rtol=0, atol=1e-9)
    np.testing.assert_allclose(cameras.pixel_to_world(uvd, camera, pixel_origin=1), xyz, rtol=1e-13, atol=1e-10)


# --- voxels ----------------------------------------------------------------------------------------------------

def differing(a, b) -> int:
    return int((a != b).sum())


def assert_port_geometry_is_the_port(depth, spec, center):
    """'port' gives the port's grid voxel for voxel, in JAX and in the NumPy reference; 'ours' moves the cloud by
    ~0.5 voxel in x and y, so that in both more than 30 % as many voxels differ as the port occupies."""
    expected = port_voxels(depth, spec, center, spec.cube_mm)
    assert expected.sum() > 300
    for name in ("port", "ours"):
        reference = ref.generate_cubic_input(ref.depth_to_points(depth, spec, name), center, spec.cube_mm, N, name)
        product = jax_voxels(depth, spec, center, name)
        np.testing.assert_array_equal(product, reference)
        if name == "port":
            np.testing.assert_array_equal(reference, expected)
        else:
            assert differing(reference, expected) > 0.3 * expected.sum()


@pytest.mark.x64
@pytest.mark.parametrize("seed, offset", [(0, (0, 0, 0)), (1, (70, 0, 0)), (2, (0, 75, 60))])
def test_port_geometry_voxelises_as_the_port_synthetic(seed, offset):
    """MSRA camera, 88^3, 200 mm; centres moved by `offset` mm put a lower face of the cube through the hand, so that
    61 and 106 points fall in (-1, 0), where truncation and floor part."""
    depth, center = toy_scene(seed)
    assert_port_geometry_is_the_port(depth, cameras.MSRA, center + np.array(offset))


@pytest.mark.x64
def test_port_geometry_voxelises_as_the_port_real_nyu_poses():
    """NYU camera (fx != fy), 88^3, 250 mm."""
    for depth, center in zip(*nyu_scenes(4)):
        assert_port_geometry_is_the_port(depth, cameras.NYU, center)


@pytest.mark.x64
def test_same_points_differ_only_by_truncation():
    """From the port's own points, floor and trunc differ only in voxels with index 0 on some axis that trunc fills
    (the points in (-1, 0)): the rest of the end-to-end disagreement is the pixel numbering."""
    spec = cameras.MSRA
    depth, center = toy_scene(3)
    coords = port_coord(port_points(depth, spec, spec.background_mm), center + [70, 0, 0], spec.cube_mm)
    floored, port = ref.scattering(coords, N), port_scatter(coords)
    diff = np.argwhere(floored != port)
    assert np.all(diff.min(axis=1) == 0) and np.all(port[tuple(diff.T)] == 1)
    assert 0 < len(diff) < 0.05 * port.sum()


def test_truncation_keeps_points_just_below_zero():
    """trunc(c) puts c in (-1, 0) into voxel 0, where floor(c) = -1 drops it; c <= -1 and c >= N drop in both."""
    coords = np.array([[-0.5, 3.2, 4.1], [5.5, -0.999, 6.0], [-1.0, 7.5, 7.5], [-1.5, 8.5, 8.5], [N - 0.5, 9.0, 9.0],
                       [N, 10.0, 10.0], [11.0, 11.0, N + 0.2]], np.float32)
    kept = {"ours": [(N - 1, 9, 9)], "port": [(0, 3, 4), (5, 0, 6), (N - 1, 9, 9)]}
    for name, voxels in kept.items():
        grid = np.asarray(geometry.voxelize_grid_coords(jnp.asarray(coords), N, geometry=name))
        np.testing.assert_array_equal(np.argwhere(grid), voxels)
        np.testing.assert_array_equal(np.argwhere(ref.scattering(coords.astype(np.float64), N, name)), voxels)
    np.testing.assert_array_equal(np.argwhere(port_scatter(coords.astype(np.float64))), kept["port"])


def test_unknown_geometry_is_refused():
    with pytest.raises(ValueError, match="ours"):
        geometry.voxelize_grid_coords(jnp.zeros((1, 3)), N, geometry="torch")


def test_float32_product_matches_the_port_up_to_face_ties():
    """The product in float32 (as `predict --torch-checkpoint` runs) against the port with its float32 points.

    A voxel may differ only where a point lies within `band` of a voxel face: float32 c' carries <= ~8 roundings of
    u = 2^-24 times magnitudes <= (|p| + |r|) N/C + 2N (tests/test_geometry.py, `tie_band`), here < 4e-3 voxel."""
    spec = cameras.MSRA
    depth, center = toy_scene(4)
    points32 = port_points(depth, spec, spec.background_mm).astype(np.float32)  # as the port stores them
    coords = port_coord(points32, center.astype(np.float32).astype(np.float64), spec.cube_mm)
    expected = port_scatter(coords)
    got = jax_voxels(depth, spec, center.astype(np.float32), "port")
    band = 16 * 2.0 ** -24 * ((np.abs(points32).max() + np.abs(center).max()) * N / spec.cube_mm + 2 * N)
    near_face = np.any(np.abs(coords - np.round(coords)) < band, axis=1)
    explained = {tuple(np.trunc(c + d).astype(int)) for c in coords[near_face] for d in (-band, band)}
    assert {tuple(i) for i in np.argwhere(got != expected)} <= explained


# --- augmentation frame ----------------------------------------------------------------------------------------

@pytest.mark.x64
@pytest.mark.parametrize("new_size,angle_deg,trans", [(100.0, 0.0, (4.0, 4.0, 4.0)), (87.3, -31.0, (0.5, 7.9, 2.0)),
                                                      (116.2, 38.0, (6.1, 0.0, 4.4)), (100.0, 12.0, (3.0, 5.0, 1.0))])
def test_port_augmentation_frame_is_ours_with_t_4_minus_trans(new_size, angle_deg, trans):
    """The port scales about 48 and rotates about (48, 48) in its 96^3 frame, then subtracts trans ~ U[0, 8)^3:
    c' = s R (c - 44) + 44 + (4 - trans), i.e. ours with s = new_size / 100, the same angle and t = 4 - trans."""
    rng = np.random.default_rng(5)
    center = np.array([12.0, -30.0, 350.0])
    points = center + rng.uniform(-120, 120, (500, 3))
    angle = np.deg2rad(angle_deg)
    port = port_coord(points, center, 200.0, new_size, angle, trans)
    t = 4 - np.asarray(trans)
    ours = ref.generate_coord(points, center, 200.0, N, scale=new_size / 100, angle=angle, trans=t)
    np.testing.assert_allclose(ours, port, rtol=0, atol=1e-11)  # float64 rounding of values <= 200 voxels
    aug = geometry.Augmentation(jnp.asarray(new_size / 100), jnp.asarray(angle), jnp.asarray(t))
    np.testing.assert_allclose(geometry.world_to_grid(jnp.asarray(points), jnp.asarray(center), 200.0, N, aug), port,
                               rtol=0, atol=1e-11)
    np.testing.assert_array_equal(port_scatter(port), ref.scattering(ours, N, "port"))
