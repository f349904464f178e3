"""Plotting helpers: skeleton tables and the pictures they draw."""

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from v2v_jax import geometry, vis
from v2v_jax.data import cameras


@pytest.mark.parametrize("name", sorted(cameras.DATASETS))
def test_skeletons_are_trees_over_all_joints(name):
    edges = vis.SKELETONS[name]
    num_joints = cameras.get(name).num_joints
    assert len(edges) == num_joints - 1 and len(set(edges)) == len(edges)
    reached, frontier = {edges[0][0]}, [edges[0][0]]
    while frontier:
        joint = frontier.pop()
        for a, b in edges:
            for here, there in ((a, b), (b, a)):
                if here == joint and there not in reached:
                    reached.add(there)
                    frontier.append(there)
    assert reached == set(range(num_joints))  # connected with J - 1 edges: a tree


def test_volume_projections_png(tmp_path):
    voxels = np.zeros((16, 16, 16), np.float32)
    voxels[4:12, 6:10, 7:9] = 1
    coords = jnp.array([[5.0, 8.0, 8.0], [11.0, 8.0, 8.0]])
    heatmaps = geometry.gaussian_heatmaps(coords, out_size=8)
    decoded = geometry.decode_grid_coords(heatmaps[None])[0]
    vis.plot_volume_projections(tmp_path / "v.png", voxels, np.asarray(heatmaps), np.asarray(coords),
                                np.asarray(decoded), edges=((0, 1),), title="test")
    image = np.asarray(Image.open(tmp_path / "v.png").convert("RGB")).astype(int)
    assert image.shape[1] > 2 * image.shape[0]  # three panels side by side
    for rgb in ((31, 119, 180), (214, 39, 40)):  # matplotlib's tab:blue targets and tab:red decoded joints
        assert np.any(np.abs(image - rgb).sum(-1) < 30), rgb


def test_depth_skeleton_png(tmp_path):
    spec = cameras.NYU
    depth = np.zeros((spec.height, spec.width), np.float32)
    depth[200:300, 250:350] = 700
    rng = np.random.default_rng(0)
    uv = rng.uniform([250, 200], [350, 300], (spec.num_joints, 2))
    vis.plot_depth_skeleton(depth, {"truth": uv, "prediction": uv + 3}, vis.SKELETONS["nyu"], tmp_path / "d.png")
    image = np.asarray(Image.open(tmp_path / "d.png").convert("RGB"))
    assert image.shape[1] > image.shape[0]  # landscape like the depth map
    assert np.any((image[..., 0] > 150) & (image[..., 2] < 100))  # the orange (C1) prediction skeleton is drawn
