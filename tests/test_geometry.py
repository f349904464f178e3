"""The JAX geometry against the NumPy reference (v2v_torch_ref.geometry_ref) and its properties (the conventions
of docs/conventions.md; the port's geometry is tests/test_geometry_port.py).

float32 results are compared with the float64 reference; where a tolerance is needed it is derived beside the test.
u = 2^-24 is the unit roundoff of float32.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from v2v_jax import geometry
from v2v_jax.data import cameras
from v2v_torch_ref import geometry_ref as ref

U32 = 2.0 ** -24
N = 88
M = N // 2
# Small cameras with each data set's y direction and background rule, to keep images tiny.
TINY = {name: dataclasses.replace(cameras.get(name), width=40, height=30, cx=20.0, cy=15.0,
                                  fx=cameras.get(name).fx / 8, fy=cameras.get(name).fy / 8)
        for name in ("msra", "icvl", "itop")}

to_grid = jax.jit(geometry.world_to_grid, static_argnames=("cube_mm", "grid_size"))
voxelize = jax.jit(geometry.voxelize, static_argnames=("cube_mm", "grid_size", "dtype"))
heatmaps_of = jax.jit(geometry.gaussian_heatmaps, static_argnames=("out_size", "sigma", "dtype"))
decode = jax.jit(geometry.decode_heatmaps, static_argnames=("cube_mm", "grid_size", "method"))
decode_coords = jax.jit(geometry.decode_grid_coords, static_argnames=("method", "radius", "beta", "dtype"))
encode_batch = jax.jit(geometry.encode_batch, static_argnames=("spec", "grid_size", "cube_mm"))


def aug_of(scale, angle, translation, dtype=jnp.float32):
    return geometry.Augmentation(jnp.asarray(scale, dtype), jnp.asarray(angle, dtype), jnp.asarray(translation, dtype))


def toy_scene(spec, seed):
    rng = np.random.default_rng(seed)
    centres, radii, joints = ref.toy_hand([rng.uniform(-30, 30), rng.uniform(-50, 0), rng.uniform(300, 420)], rng)
    return ref.render_spheres(spec, centres, radii), joints.mean(0) + rng.uniform(-15, 15, 3), joints


# --- camera ----------------------------------------------------------------------------------------------------

@pytest.mark.x64
@pytest.mark.parametrize("name", sorted(TINY))
def test_depth_to_points_matches_reference(name):
    spec = TINY[name]
    depth, _, _ = toy_scene(spec, 1)
    assert (depth == 0).any() and (depth > 0).any()
    expected = ref.depth_to_points(depth, spec)
    np.testing.assert_allclose(geometry.depth_to_points(jnp.asarray(depth, jnp.float64), spec, jnp.float64),
                               expected, rtol=1e-14, atol=1e-12)
    points32 = geometry.depth_to_points(jnp.asarray(depth), spec)
    assert points32.dtype == jnp.float32
    # X = (u - cx) z / fx: three roundings of at most u|X| each.
    np.testing.assert_allclose(points32, expected, rtol=4 * U32, atol=1e-12)
    background = depth.reshape(-1) == 0
    if spec.background_mm is None:
        assert np.all(np.asarray(points32)[background] == 0)
    else:
        assert np.all(np.asarray(points32)[background, 2] == spec.background_mm)


@pytest.mark.parametrize("name", ["msra", "icvl"])
def test_y_axis_direction(name):
    spec = TINY[name]
    depth = np.zeros((spec.height, spec.width), np.float32)
    depth[2, int(spec.cx)] = 300.0  # a pixel above the principal point
    y = geometry.depth_to_points(jnp.asarray(depth), spec)[2 * spec.width + int(spec.cx), 1]
    assert (y > 0) == spec.y_up


def test_depth_of_the_wrong_size_is_refused():
    with pytest.raises(ValueError, match="msra"):
        geometry.depth_to_points(jnp.zeros((30, 40)), cameras.MSRA)


@pytest.mark.x64
@pytest.mark.parametrize("camera", [cameras.NYU, cameras.ICVL, cameras.EVAL_INTRINSICS["nyu"]])
def test_pixel_world_round_trip(camera):
    rng = np.random.default_rng(0)
    xyz = rng.uniform([-150, -150, 300], [150, 150, 1200], (50, 3))
    uvd = cameras.world_to_pixel(xyz, camera)
    assert isinstance(uvd, np.ndarray) and uvd.dtype == np.float64
    np.testing.assert_allclose(cameras.pixel_to_world(uvd, camera), xyz, rtol=1e-13, atol=1e-10)
    np.testing.assert_allclose(cameras.pixel_to_world(jnp.asarray(uvd), camera), xyz, rtol=1e-13, atol=1e-10)


def test_pixel_to_world_agrees_with_depth_to_points():
    spec = TINY["msra"]
    depth, _, _ = toy_scene(spec, 2)
    v, u = np.nonzero(depth)
    uvd = np.stack([u, v, depth[v, u]], -1).astype(np.float64)
    np.testing.assert_allclose(cameras.pixel_to_world(uvd, spec), ref.depth_to_points(depth, spec)[v * spec.width + u],
                               rtol=1e-14)


# --- voxels ----------------------------------------------------------------------------------------------------

def random_points(rng, center, cube, count):
    return center + rng.uniform(-0.6 * cube, 0.6 * cube, (count, 3))  # some beyond every face of the cube


def tie_band(points, center, cube, n):
    """Bound on |c'(float32) - c'(float64)| in voxels.

    At most ~8 roundings (offset, scale by N/C and its own rounding, rotation, scale, two additions), each at most
    u times a magnitude that is <= (|p| + |r|) N/C or <= 2N; a factor of 2 covers sin/cos, which are accurate to a
    few ulp.
    """
    magnitude = (np.abs(points).max() + np.abs(center).max()) * n / cube + 2 * n
    return 16 * U32 * magnitude


def assert_grids_equal_up_to_ties(grid32, grid64, coords64, band):
    """Every voxel where the float32 grid differs is a voxel that a point within `band` of a voxel face reaches."""
    n = grid64.shape[0]
    fragile = np.any(np.abs(coords64 - np.round(coords64)) < band, axis=1)
    explained = np.zeros(grid64.shape, bool)
    for c in coords64[fragile]:
        for corner in np.ndindex(2, 2, 2):
            index = np.floor(c + np.where(corner, band, -band)).astype(int)
            if np.all((index >= 0) & (index < n)):
                explained[tuple(index)] = True
    differ = grid32 != grid64
    assert not np.any(differ & ~explained), "float32 and float64 grids differ away from any voxel face"
    return int(differ.sum()), int(fragile.sum())


AUGMENTATIONS = [(1.0, 0.0, (0.0, 0.0, 0.0)), (1.13, np.deg2rad(-31.0), (2.5, -3.75, 0.5)),
                 (0.82, np.deg2rad(39.0), (-4.0, 1.0, 3.9))]


@pytest.mark.x64
@pytest.mark.parametrize("scale,angle,translation", AUGMENTATIONS)
def test_voxels_equal_reference(scale, angle, translation):
    rng = np.random.default_rng(3)
    center, cube = np.array([12.3, -40.7, 352.1]), 200.0
    points = random_points(rng, center, cube, 60_000)
    aug = dict(scale=scale, angle=angle, trans=translation)
    expected = ref.generate_cubic_input(points, center, cube, N, **aug)
    assert 0 < expected.sum() < N ** 3
    # float64: the same arithmetic; a point would have to fall within ~1e-13 voxel of a face to differ.
    grid64 = voxelize(jnp.asarray(points), jnp.asarray(center), cube, N, aug_of(scale, angle, translation, jnp.float64),
                      dtype=jnp.float64)
    np.testing.assert_array_equal(grid64, expected)
    # float32 on float32 inputs: identical except where float32 rounding moves a point across a voxel face.
    points32, center32 = points.astype(np.float32), center.astype(np.float32)
    expected = ref.generate_cubic_input(points32, center32.astype(np.float64), cube, N, **aug)
    grid32 = voxelize(jnp.asarray(points32), jnp.asarray(center32), cube, N, aug_of(scale, angle, translation))
    coords64 = ref.generate_coord(points32, center32.astype(np.float64), cube, N, **aug)
    differ, fragile = assert_grids_equal_up_to_ties(np.asarray(grid32), expected, coords64,
                                                    tie_band(points32, center32, cube, N))
    assert differ <= fragile


def test_identity_augmentation_is_no_augmentation():
    """s = 1, theta = 0, t = 0 multiply by 1 and add 0; XLA may still round the two programs differently (a fused
    multiply-add skips one rounding), by at most a few ulp of |c - N/2| + N/2 <= 2N; both match float64."""
    rng = np.random.default_rng(2)
    center = np.array([3.7, -21.9, 402.3], np.float32)
    points = random_points(rng, center, 200.0, 5000).astype(np.float32)
    expected = ref.generate_coord(points, center.astype(np.float64), 200.0, N)
    tolerance = 4 * U32 * 2 * N
    for aug in (None, geometry.identity_augmentation()):
        np.testing.assert_allclose(to_grid(jnp.asarray(points), jnp.asarray(center), 200.0, N, aug), expected,
                                   rtol=0, atol=tolerance)


def test_documented_float32_tie():
    """A point 1e-6 voxel below a voxel face: float64 floors it into voxel 44, float32 rounds c to 45.0.

    Near 45 the float32 spacing is 2^-18 = 3.8e-6, so 45 - 1e-6 rounds to 45. Such points are the only
    disagreements between the float32 pipeline and the float64 reference (see test_voxels_equal_reference).
    """
    cube = 200.0
    point = np.array([[(1 - 1e-6) * cube / N, 0.0, 0.0]])
    c64 = ref.generate_coord(point, np.zeros(3), cube, N)
    c32 = to_grid(jnp.asarray(point, jnp.float32), jnp.zeros(3, jnp.float32), cube, N)
    assert np.floor(c64[0, 0]) == 44 and np.floor(c32[0, 0]) == 45
    assert ref.scattering(c64, N)[44, 44, 44] == 1
    assert voxelize(jnp.asarray(point, jnp.float32), jnp.zeros(3, jnp.float32), cube, N)[45, 44, 44] == 1


def test_spec_round_trip_checks():
    """c = (p - r) N / C + N/2, voxel floor(c): r -> voxel (44, 44, 44); r - C/2 -> voxel 0; r + C/2 is dropped
    (c = 88). Dyadic values: exact."""
    center, cube = np.array([16.0, -32.0, 256.0], np.float32), 200.0
    for offset, occupied in ((0.0, (44, 44, 44)), (-cube / 2, (0, 0, 0)), (cube / 2, None)):
        grid = np.asarray(voxelize(jnp.asarray(center + offset)[None], jnp.asarray(center), cube, N))
        assert grid.sum() == (occupied is not None)
        if occupied is not None:
            assert grid[occupied] == 1


centres = st.tuples(*[st.floats(-2000, 2000, width=32)] * 3).map(lambda c: np.array(c, np.float32))
cubes = st.sampled_from([200.0, 250.0, 2000.0])


@settings(max_examples=30, deadline=None)
@given(center=centres, cube=cubes)
def test_reference_centre_lands_in_voxel_n_over_2(center, cube):
    grid = np.asarray(voxelize(jnp.asarray(center)[None], jnp.asarray(center), cube, N))
    assert grid.sum() == 1 and grid[M, M, M] == 1


@settings(max_examples=30, deadline=None)
@given(center=centres, cube=cubes, seed=st.integers(0, 2 ** 31))
def test_points_outside_the_cube_are_dropped(center, cube, seed):
    """Fixed shapes (400 points) so that one compilation serves every example: points are replaced, not removed."""
    rng = np.random.default_rng(seed)
    offsets = rng.uniform(-cube, cube, (400, 3))
    outside = np.any(np.abs(offsets) > cube / 2 * (1 + 1e-3), axis=1)  # clear of the faces by >> float32 rounding
    inside = np.all(np.abs(offsets) < cube / 2 * (1 - 1e-3), axis=1)
    offsets[~inside & ~outside] = 0.0  # too close to a face to call
    points = (center + offsets).astype(np.float32)
    far = center + np.float32(2 * cube)
    only_outside = np.where(outside[:, None], points, far)
    only_inside = np.where(outside[:, None], points[np.argmin(outside)], points)  # outside -> copies of an inside one
    grid = voxelize(jnp.asarray(points), jnp.asarray(center), cube, N)
    assert not np.any(voxelize(jnp.asarray(only_outside), jnp.asarray(center), cube, N))
    np.testing.assert_array_equal(grid, voxelize(jnp.asarray(only_inside), jnp.asarray(center), cube, N))
    assert grid.sum() >= 1


# --- targets ---------------------------------------------------------------------------------------------------

@pytest.mark.x64
def test_heatmaps_match_reference_to_1e6():
    """float32 separable targets against the float64 direct 3D formula at the same (float32) coordinates.

    Error: rounding of (a + 0.5 - g) is relative to the difference, so |dH| <= H (D^2 / sigma^2) u per axis plus
    the exp and the two products (~u each): below 1e-6 with a wide margin; the test asserts the stated 1e-6.
    """
    rng = np.random.default_rng(4)
    coords = rng.uniform(-4, N + 4, (7, 3)).astype(np.float32)  # two joints may sit outside the grid
    expected = np.moveaxis(ref.heatmaps_from_coord(coords, M), 0, -1)
    got = heatmaps_of(jnp.asarray(coords))
    assert got.shape == (M, M, M, 7) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(heatmaps_of(jnp.asarray(coords, jnp.float64), dtype=jnp.float64), expected,
                               rtol=0, atol=1e-15)


@pytest.mark.x64
def test_heatmap_sum_and_peak():
    """An interior target sums to (sqrt(2 pi) sigma)^3 = 77.4 (the sampling error of a Gaussian of sigma 1.7 on a
    unit grid is ~exp(-2 pi^2 sigma^2) ~ 1e-25) and peaks at 1 when c'/2 is a cell centre."""
    h = heatmaps_of(jnp.array([[45.0, 41.0, 51.0]], jnp.float64), dtype=jnp.float64)
    assert abs(float(h.sum()) - (np.sqrt(2 * np.pi) * 1.7) ** 3) < 1e-9
    assert float(h[22, 20, 25, 0]) == 1.0


@pytest.mark.x64
def test_heatmap_mse_matches_numpy_and_all_zero_value():
    rng = np.random.default_rng(5)
    coords = rng.uniform(10, N - 10, (2, 3, 3))
    pred = rng.normal(0, 0.05, (2, M, M, M, 3))
    expected = np.mean([(pred[b] - np.moveaxis(ref.heatmaps_from_coord(coords[b], M), 0, -1)) ** 2
                        for b in range(2)])
    got = geometry.heatmap_mse(jnp.asarray(pred), jnp.asarray(coords))
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # All-zero output, interior joints: mean(H^2) = (sqrt(pi) sigma)^3 / 44^3 = 3.21e-4 (a Gaussian's integral).
    zero = geometry.heatmap_mse(jnp.zeros((1, M, M, M, 1), jnp.bfloat16), jnp.asarray(coords[:1, :1], jnp.float32))
    assert zero.dtype == jnp.float32  # computed in float32 for a bfloat16 network output
    np.testing.assert_allclose(zero, (np.sqrt(np.pi) * 1.7) ** 3 / M ** 3, rtol=1e-5)  # float32 sum of 85k terms
    with pytest.raises(ValueError, match="do not fit"):
        geometry.heatmap_mse(jnp.zeros((1, M, M, M, 2)), jnp.zeros((1, 3, 3)))


# --- decoding --------------------------------------------------------------------------------------------------

def noisy_heatmaps(rng, batch, joints, dtype=np.float32):
    coords = rng.uniform(2, N - 2, (batch, joints, 3))
    clean = np.stack([np.moveaxis(ref.heatmaps_from_coord(c, M), 0, -1) for c in coords])
    return (clean + rng.normal(0, 0.02, clean.shape)).astype(dtype), coords


@pytest.mark.x64
def test_argmax_decoding_matches_reference_to_1e6_mm():
    rng = np.random.default_rng(6)
    heatmaps, _ = noisy_heatmaps(rng, 3, 4)
    heatmaps[0, 5, 6, 7, 0] = heatmaps[0, 30, 1, 2, 0] = heatmaps[0, ..., 0].max() + 1  # a tie: the first wins
    centers = rng.uniform(-100, 600, (3, 3))
    expected = ref.V2VVoxelization(200.0).evaluate(np.moveaxis(heatmaps, -1, 1), centers)
    got = decode(jnp.asarray(heatmaps), jnp.asarray(centers), 200.0, N)
    assert got.dtype == jnp.float64  # world coordinates in the centres' precision
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(expected[0, 0], (np.array([5.5, 6.5, 7.5]) * 2 - M) * 200 / N + centers[0])


@pytest.mark.x64
@pytest.mark.parametrize("method,options", [("parabola", {}), ("window_mean", {"radius": 1}),
                                            ("window_mean", {"radius": 3}), ("soft_argmax", {"beta": 30.0})])
def test_refinements_match_reference(method, options):
    rng = np.random.default_rng(7)
    heatmaps, coords = noisy_heatmaps(rng, 2, 3, np.float64)
    heatmaps[1, 0, 3, 20, 2] = 5.0  # argmax on a face of the volume: the window is cut, the parabola is skipped
    got = np.asarray(decode_coords(jnp.asarray(heatmaps), method, dtype=jnp.float64, **options))
    for b in range(2):
        for j in range(3):
            volume = heatmaps[b, ..., j]
            cell = ref.extract_coord_from_output(volume)
            expected = {"parabola": lambda: ref.refine_parabola(volume, cell),
                        "window_mean": lambda: ref.refine_window_mean(volume, cell, options.get("radius")),
                        "soft_argmax": lambda: ref.soft_argmax(volume, options.get("beta"))}[method]()
            np.testing.assert_allclose(got[b, j], 2 * expected, rtol=0, atol=1e-9)


def test_unknown_decoding_method_is_refused():
    with pytest.raises(ValueError, match="parabola"):
        geometry.decode_grid_coords(jnp.zeros((1, 4, 4, 4, 1)), "median")


# --- properties of the whole pipeline --------------------------------------------------------------------------

joint_sets = st.integers(0, 2 ** 31).map(lambda s: np.random.default_rng(s).uniform(-0.49, 0.49, (5, 3)))


@settings(max_examples=25, deadline=None)
@given(center=centres, cube=cubes, unit_offsets=joint_sets)
def test_encode_decode_without_augmentation_within_half_a_cell_diagonal(center, cube, unit_offsets):
    """Argmax picks the cell centre nearest to g = c'/2, at most 0.5 cell = 1 voxel per axis, so at most half the
    diagonal of a heatmap cell, sqrt(3) C/N; 1e-3 relative covers float32 ties between neighbouring cells."""
    joints = (center + unit_offsets * cube).astype(np.float32)
    coords = to_grid(jnp.asarray(joints), jnp.asarray(center), cube, N)
    decoded = decode(heatmaps_of(coords)[None], jnp.asarray(center)[None], cube, N)[0]
    errors = np.linalg.norm(np.asarray(decoded, np.float64) - joints, axis=-1)
    assert errors.max() <= np.sqrt(3) * cube / N * (1 + 1e-3)


@pytest.mark.x64
@settings(max_examples=25, deadline=None)
@given(center=centres, seed=st.integers(0, 2 ** 31), unit_offsets=joint_sets)
def test_augment_then_decode_with_the_inverse_recovers_the_joints(center, seed, unit_offsets):
    """Joints within 22 voxels of the centre stay inside the grid under any draw (1.2 * 22 * sqrt(2) + 4 < 44).

    The log-parabola is exact for the separable Gaussian targets: what remains is float32 rounding of c' (< 1e-4
    voxel, see tie_band) and of log H (~1e-6 cell), times C/(N s) <= 2.9 mm per voxel: below 1e-3 mm.
    Argmax: at most one voxel per axis, sqrt(3) C/(N s) after undoing the scale.
    """
    cube = 200.0
    joints = (center + unit_offsets * 22 / 0.49 * cube / N).astype(np.float32)
    aug = geometry.sample_augmentation(jax.random.key(seed))
    coords = to_grid(jnp.asarray(joints), jnp.asarray(center), cube, N, aug)
    heatmaps = heatmaps_of(coords)[None]
    for method, bound in (("parabola", 1e-3), ("argmax", np.sqrt(3) * cube / N / float(aug.scale) * (1 + 1e-3))):
        grid = decode_coords(heatmaps, method)[0]
        recovered = geometry.grid_to_world(grid, jnp.asarray(center, jnp.float64), cube, N, aug)
        assert np.linalg.norm(np.asarray(recovered) - joints, axis=-1).max() <= bound, method


def test_augmentation_ranges():
    draws = jax.vmap(geometry.sample_augmentation)(jax.random.split(jax.random.key(0), 2000))
    assert draws.scale.dtype == jnp.float32
    for values, low, high in ((draws.scale, 0.8, 1.2), (draws.angle, -np.deg2rad(40), np.deg2rad(40)),
                              (draws.translation, -4, 4)):
        assert low <= float(values.min()) < low + 0.05 * (high - low)   # 2000 uniform draws reach within 5%
        assert high - 0.05 * (high - low) < float(values.max()) < high  # of both ends with p > 1 - 1e-40


def test_draws_differ_per_sample_and_repeat_per_key():
    spec = TINY["msra"]
    depth, center, joints = toy_scene(spec, 8)
    batch = [jnp.asarray(np.broadcast_to(x, (4, *x.shape)), jnp.float32) for x in (depth, center, joints)]
    voxels, coords = encode_batch(*batch, jax.random.key(1), spec, 32)
    assert voxels.shape == (4, 32, 32, 32, 1) and voxels.dtype == jnp.uint8 and coords.dtype == jnp.float32
    assert len({np.asarray(c).tobytes() for c in coords}) == 4
    assert len({np.asarray(v).tobytes() for v in voxels}) == 4
    again = encode_batch(*batch, jax.random.key(1), spec, 32)
    np.testing.assert_array_equal(again[0], voxels)
    np.testing.assert_array_equal(again[1], coords)
    assert not np.array_equal(encode_batch(*batch, jax.random.key(2), spec, 32)[1], coords)


def test_draws_computed_once_are_unchanged_bit_for_bit():
    """The identity product that keeps XLA from recomputing the draws per point must not round them (x * 1 plus
    zeros is exact; only a -0.0 would turn +0.0, which uniform draws on [a, b) never produce)."""
    augs = jax.vmap(geometry.sample_augmentation)(jax.random.split(jax.random.key(3), 256))
    once = jax.jit(geometry._computed_once)(augs)
    for drawn, kept in zip(augs, once):
        np.testing.assert_array_equal(np.asarray(kept).view(np.uint32), np.asarray(drawn).view(np.uint32))


def test_encode_sample_is_one_sample_of_encode_batch():
    spec = TINY["msra"]
    scenes = [toy_scene(spec, s) for s in (11, 12, 13)]
    depths, centers, joints = (jnp.asarray(np.stack([s[i] for s in scenes]), jnp.float32) for i in range(3))
    key = jax.random.key(5)
    voxels, coords = encode_batch(depths, centers, joints, key, spec, 24)
    for b, sample_key in enumerate(jax.random.split(key, 3)):
        v, c = geometry.encode_sample(depths[b], centers[b], joints[b], sample_key, spec, 24)
        assert v.shape == (24, 24, 24, 1) and v.sum() > 0
        # Two XLA programs may round differently (fused multiply-adds): a few ulp of |c'| <= 2N, and voxels may
        # differ only where such a difference crosses a voxel face.
        np.testing.assert_allclose(c, coords[b], rtol=0, atol=8 * U32 * 48)
        aug = geometry.sample_augmentation(sample_key)
        points = ref.depth_to_points(np.asarray(depths[b]), spec)
        coords64 = ref.generate_coord(points, np.asarray(centers[b]), spec.cube_mm, 24, scale=float(aug.scale),
                                      angle=float(aug.angle), trans=np.asarray(aug.translation, np.float64))
        band = tie_band(points, np.asarray(centers[b]), spec.cube_mm, 24)
        assert_grids_equal_up_to_ties(np.asarray(v[..., 0]), np.asarray(voxels[b, ..., 0]), coords64, band)


@pytest.mark.x64
def test_encode_batch_without_key_equals_reference():
    spec = TINY["icvl"]
    scenes = [toy_scene(spec, s) for s in (9, 10)]
    depths, centers, joints = (np.stack([s[i] for s in scenes]) for i in range(3))
    voxels, coords = encode_batch(jnp.asarray(depths), jnp.asarray(centers, jnp.float64), jnp.asarray(joints), None,
                                  spec, 32)
    assert voxels.dtype == jnp.uint8 and coords.dtype == jnp.float64  # float64 centres: float64 coordinates
    transform = ref.V2VVoxelization(spec.cube_mm, 32)
    for b in range(2):
        sample = {"points": ref.depth_to_points(depths[b], spec), "keypoints": joints[b], "refpoint": centers[b]}
        expected_voxels, _ = transform(sample)
        band = tie_band(sample["points"], centers[b], spec.cube_mm, 32)
        assert_grids_equal_up_to_ties(np.asarray(voxels[b, ..., 0]), expected_voxels[0],
                                      ref.generate_coord(sample["points"], centers[b], spec.cube_mm, 32), band)
        assert expected_voxels.sum() > 20
        np.testing.assert_allclose(coords[b], ref.generate_coord(joints[b], centers[b], spec.cube_mm, 32), atol=1e-12)
