"""Synthetic hand data: hand model, pose sampler, renderer and sensor model."""

import numpy as np
import pytest

from v2v_jax.data import cameras, hand_model, render, synth
from v2v_jax.data.cameras import world_to_pixel

SPEC = cameras.MSRA


@pytest.fixture(scope="module")
def frames():
    return synth.generate(2 * 17, seed=5, subjects=2)


def _directions(joints, chain):
    points = joints[..., [hand_model.chain_joint(chain, k) for k in range(4)], :]
    bones = np.diff(points, axis=-2)
    return bones / np.linalg.norm(bones, axis=-1, keepdims=True)


def _recovered_angles(shape, joints):
    """(N, 5, 4) angles measured back from joint positions: base abduction and flexion from the first bone in the
    chain's rest frame, the other flexions as the angle between consecutive bones (their sign is not observable)."""
    out = np.zeros(joints.shape[:-2] + (5, 4))
    for c in range(5):
        d = _directions(joints, c)
        local = d[..., 0, :] @ shape.frames[c]  # coordinates in (lateral, along, dorsal)
        out[..., c, 0] = np.degrees(np.arctan2(-local[..., 0], local[..., 1]))
        out[..., c, 1] = np.degrees(-np.arcsin(local[..., 2]))
        for k in (1, 2):
            cos = np.clip((d[..., k - 1, :] * d[..., k, :]).sum(-1), -1, 1)
            out[..., c, k + 1] = np.degrees(np.arccos(cos))
    return out


def test_forward_kinematics_realises_sampled_angles_within_limits():
    shape = synth.subject_shape(0, 1)
    rng = np.random.default_rng(0)
    angles = np.stack([hand_model.sample_pose(rng, shape, g) for g in cameras.MSRA_GESTURES for _ in range(12)])
    lo, hi = hand_model.LIMITS_DEG[..., 0], hand_model.LIMITS_DEG[..., 1]
    assert np.all((angles >= lo) & (angles <= hi))
    pip, dip = angles[:, :4, 2], angles[:, :4, 3]
    clipped = (dip == 0) | (dip == 90)
    assert np.all(clipped | (np.abs(dip - hand_model.DIP_PER_PIP * pip) <= hand_model.DIP_JITTER_DEG + 1e-9))
    recovered = _recovered_angles(shape, hand_model.forward_kinematics(shape, angles))
    # float64 throughout: angles agree to ~1e-12 rad; 1e-6 degrees leaves room for arcsin/arccos near 0.
    np.testing.assert_allclose(recovered[..., :2], angles[..., :2], atol=1e-6)
    np.testing.assert_allclose(recovered[..., 2:], np.abs(angles[..., 2:]), atol=1e-5)


def test_gestures_differ_in_extended_fingers():
    shape = hand_model.make_shape()
    rng = np.random.default_rng(1)
    for gesture, modes in hand_model.GESTURES.items():
        angles = hand_model.sample_pose(rng, shape, gesture)
        for chain, mode in enumerate(modes[:4]):
            if mode == "straight":
                assert angles[chain, 1] <= 10 and angles[chain, 2] <= 10, gesture
    assert len(set(hand_model.GESTURES.values())) == len(cameras.MSRA_GESTURES)
    assert tuple(hand_model.GESTURES) == cameras.MSRA_GESTURES


@pytest.mark.parametrize("gesture", ["6", "7", "8", "9"])
def test_pinch_brings_thumb_tip_to_finger_tip(gesture):
    chain = hand_model.GESTURES[gesture].index("pinch")
    gaps = []
    for subject in range(3):
        shape = synth.subject_shape(0, subject)
        for i in range(20):
            joints = hand_model.forward_kinematics(
                shape, hand_model.sample_pose(np.random.default_rng([subject, i]), shape, gesture))
            distance = np.linalg.norm(joints[hand_model.TIPS[chain]] - joints[hand_model.TIPS[hand_model.THUMB]])
            gaps.append(distance - shape.radii[chain, 1] - shape.radii[hand_model.THUMB, 1])
    # Tips touch when their centres are the sum of the tip radii apart. The search ends with 3-degree jitter, which
    # moves a tip by ~0.05 rad x 100 mm = 5 mm; the best of 128 such draws lands well within that.
    assert np.percentile(np.abs(gaps), 90) < 1.0
    assert np.max(np.abs(gaps)) < 3.0


def test_bone_lengths_constant_within_a_hand_and_differ_between_hands(frames):
    lengths = []
    for subject in range(2):
        joints = frames.joints[frames.subject == subject].astype(np.float64)
        bones = np.stack([np.linalg.norm(np.diff(joints[:, [0] + [hand_model.chain_joint(c, k) for k in range(4)]],
                                                 axis=1), axis=-1) for c in range(5)], axis=1)[:, :, 1:]
        shape = synth.subject_shape(5, subject)
        # Joints are float32 (spacing 6e-5 mm below 1 m), so a length is off by at most ~2e-4 mm.
        np.testing.assert_allclose(bones, np.broadcast_to(shape.bones, bones.shape), atol=2e-4)
        lengths.append(shape.bones)
    assert np.abs(lengths[0] / lengths[1] - 1).max() > 0.02


def test_joints_project_inside_the_image_at_msra_depths(frames):
    uvz = world_to_pixel(frames.joints.astype(np.float64), SPEC)
    margin = hand_model.IMAGE_MARGIN_PX - 1e-3  # float32 joints move a projection by < 1e-4 px
    assert np.all((uvz[..., 0] >= margin) & (uvz[..., 0] <= SPEC.width - 1 - margin))
    assert np.all((uvz[..., 1] >= margin) & (uvz[..., 1] <= SPEC.height - 1 - margin))
    palm = hand_model.palm_centre(frames.joints)[:, 2]
    assert np.all((palm >= 250) & (palm <= 600)) and np.median(palm) < 450


def _brute_force(centres, radii):
    """float64 ray cast of every pixel against every sphere: depth, cosine, and the largest normalised
    discriminant (ray-sphere clearance) of any sphere at each pixel."""
    v, u = np.mgrid[0:SPEC.height, 0:SPEC.width].astype(np.float64)
    a, b = (u - SPEC.cx) / SPEC.fx, (SPEC.cy - v) / SPEC.fy
    dd = a * a + b * b + 1
    depth = np.full(u.shape, np.inf)
    cosine = np.zeros(u.shape)
    margin = np.full(u.shape, -np.inf)
    for (qx, qy, qz), r in zip(centres, radii):
        dq = a * qx + b * qy + qz
        disc = dq * dq - dd * (qx * qx + qy * qy + qz * qz - r * r)
        margin = np.maximum(margin, disc / (dd * r * r))
        t = np.where(disc > 0, (dq - np.sqrt(np.maximum(disc, 0))) / dd, np.inf)
        front = t < depth
        depth = np.where(front, t, depth)
        cosine = np.where(front, np.sqrt(np.maximum(disc, 0) / dd) / r, cosine)
    return np.where(np.isinf(depth), 0, depth), cosine, margin


def test_renderer_matches_brute_force_ray_casting():
    shape = synth.subject_shape(0, 0)
    scenes = [synth.sample_scene(np.random.default_rng(i), shape, g) for i, g in enumerate(("5", "9"))]
    centres = np.stack([s.spheres for s in scenes])
    depth, cosine = render.render_spheres(centres, shape.sphere_radii)
    for k in range(len(scenes)):
        ref_depth, ref_cos, margin = _brute_force(centres[k], shape.sphere_radii)
        both = (depth[k] > 0) & (ref_depth > 0)
        # Coverage: a pixel hit by one and not the other lies on a silhouette, within 1e-4 of r^2 of grazing.
        assert np.all(np.abs(margin[(depth[k] > 0) != (ref_depth > 0)]) < 1e-4)
        assert both.sum() > 2000
        # float32 arithmetic on values <= 1e3 mm: ~1e-4 mm per operation; near a silhouette the square root of a
        # discriminant with ~1e-3 mm^2 error adds up to ~0.03 mm.
        err = np.abs(depth[k][both] - ref_depth[both])
        assert err.max() < 0.05 and np.median(err) < 1e-3
        assert np.median(np.abs(cosine[k][both] - ref_cos[both])) < 1e-4


def test_rendered_surface_covers_the_joints():
    """The ray through each joint's pixel enters the joint's own sphere at depth t_entry, so the nearest surface
    is at most t_entry (plus float32 error); a fingertip whose pixel sees its own sphere (not an occluder) lies
    within the tip radius plus sensor noise of the noisy depth there."""
    seed, rows = 2, synth.plan_frames(3 * 17, 1)
    shape = synth.subject_shape(seed, 0)
    noisy_frames = synth.render_rows(rows, seed)
    visible = checked = 0
    for k, row in enumerate(rows):
        rng = synth.frame_rng(seed, *map(int, row))
        scene = synth.sample_scene(rng, shape, cameras.MSRA_GESTURES[row[1]])
        clean, _ = render.render_spheres(scene.spheres[None], shape.sphere_radii)
        u, v = np.rint(world_to_pixel(scene.joints, SPEC)[:, :2]).astype(int).T
        a, b = (u - SPEC.cx) / SPEC.fx, (SPEC.cy - v) / SPEC.fy
        d = np.stack([a, b, np.ones_like(a)], -1)
        along = (d * scene.joints).sum(-1) / (d * d).sum(-1)
        miss2 = (scene.joints ** 2).sum(-1) - along ** 2 * (d * d).sum(-1)
        radius = _joint_radii(shape)
        t_entry = along - np.sqrt(radius ** 2 - miss2) / np.linalg.norm(d, axis=-1)
        surface = clean[0, v, u]
        assert np.all(surface[1:] > 0)
        assert np.all(surface[1:] <= t_entry[1:] + 1e-2)  # float32 depth of ~500 mm: error < 1e-3 mm
        for tip in hand_model.TIPS:
            if surface[tip] >= t_entry[tip] - 1.0 and noisy_frames.depth[k, v[tip], u[tip]] > 0:
                visible += 1
                z = scene.joints[tip, 2]
                bound = radius[tip] + 4 * 2 * render.axial_noise_mm(z) + 0.5  # 4 sigma at the top noise level
                assert abs(noisy_frames.depth[k, v[tip], u[tip]] - z) <= bound
            checked += 1
    assert visible > 0.3 * checked


def _joint_radii(shape):
    """Radius of the sphere centred on each joint (a bone sphere with weight 1 on it); NaN for the wrist."""
    radii = np.full(hand_model.NUM_JOINTS, np.nan)
    for row, r in zip(shape.bone_weights, shape.sphere_radii):
        if np.isclose(row.max(), 1.0):
            radii[np.argmax(row)] = r
    return radii


def test_same_seed_same_frames_and_frames_do_not_depend_on_the_set_size(frames):
    again = synth.generate(2 * 17, seed=5, subjects=2)
    for name in ("depth", "joints", "centers", "plan"):
        np.testing.assert_array_equal(getattr(frames, name), getattr(again, name))
    bigger = synth.generate(3 * 17, seed=5, subjects=2)
    shared = [np.flatnonzero((bigger.plan == row).all(1))[0] for row in frames.plan]
    np.testing.assert_array_equal(bigger.depth[shared], frames.depth)
    reversed_rows = synth.render_rows(frames.plan[::-1], 5)
    np.testing.assert_array_equal(reversed_rows.depth[::-1], frames.depth)
    other = synth.generate(2 * 17, seed=6, subjects=2)
    assert not np.array_equal(other.joints, frames.joints)


def test_depth_is_quantised_mm_with_empty_background(frames):
    depth = frames.depth
    assert depth.dtype == np.float32 and depth.shape == (34, 240, 320)
    assert np.array_equal(depth, np.rint(depth))
    foreground = depth[depth > 0]
    assert foreground.min() > 100 and foreground.max() < 700
    assert np.all((depth > 0).sum(axis=(1, 2)) > 300)
    err = np.linalg.norm(frames.centers - frames.joints.mean(axis=1), axis=-1)
    # |N(0, 4 mm I3)| has mean 6.4 mm; 34 samples put the mean within ~1.2 mm (3 standard errors) of it.
    assert 5.0 < err.mean() < 7.8


def _plane(normal_angle_deg, depth_mm=400.0, size=(100, 100)):
    """A planar patch (size: width, height px) through (0, 0, depth) whose normal is tilted about the vertical axis:
    depth and the cosine between ray and normal at each pixel."""
    v, u = np.mgrid[0:SPEC.height, 0:SPEC.width].astype(np.float64)
    a, b = (u - SPEC.cx) / SPEC.fx, (SPEC.cy - v) / SPEC.fy
    nx, nz = np.sin(np.radians(normal_angle_deg)), -np.cos(np.radians(normal_angle_deg))
    t = nz * depth_mm / (nx * a + nz)  # where the ray (a, b, 1) t meets n.(p - (0, 0, depth)) = 0
    cos = np.abs(nx * a + nz) / np.sqrt(a * a + b * b + 1)
    patch = (np.abs(u - SPEC.cx) < size[0] / 2) & (np.abs(v - SPEC.cy) < size[1] / 2)
    assert np.all(t[patch] > 0)
    assert np.nanmax(np.abs(np.diff(np.where(patch, t, np.nan), axis=1))) < render.EDGE_STEP_MM  # no edges inside
    return np.where(patch, t, 0).astype(np.float32), np.where(patch, cos, 0).astype(np.float32), patch


def test_sensor_model_noise_quantisation_and_dropout_on_a_frontal_plane():
    depth, cos, patch = _plane(0.0)
    out = render.sensor_model(depth, cos, np.random.default_rng(0))
    kept = out > 0
    assert not np.any(kept & ~patch)
    assert kept.sum() > 0.85 * patch.sum()  # a 1-2 px edge band at p <= 0.5, and at most 3 holes of <= 5 px
    assert np.array_equal(out, np.rint(out))
    residual = (out - depth)[kept]
    sigma = 1.2  # Kinect v1 axial noise (Nguyen et al. 2012): 1.2 + 1.9 (z - 0.4)^2 mm at z = 0.4 m
    # Noise is 1-2 x sigma, plus 1 mm quantisation (variance 1/12); ~9000 pixels estimate the std to ~1 %.
    low, high = np.sqrt(sigma ** 2 + 1 / 12), np.sqrt((2 * sigma) ** 2 + 1 / 12)
    assert 0.97 * low < residual.std() < 1.03 * high


def test_sensor_model_drops_grazing_surfaces():
    """A plane whose normal is 75 degrees from the optical axis: perspective puts pixels on both sides of the limit."""
    depth, cos, patch = _plane(75.0, depth_mm=200.0, size=(40, 60))
    out = render.sensor_model(depth, cos, np.random.default_rng(1))
    limit = np.cos(np.radians(75.0))  # render.GRAZING_LIMIT_DEG
    interior = patch & ~render._grow(render._grow(render._grow(~patch)))  # away from the patch's own edges
    # On a plane the normal from depth differences is exact up to float32 rounding (1e-3 of the cosine here).
    grazing, facing = cos < limit - 0.01, interior & (cos > limit + 0.01)
    assert grazing.sum() > 300 and facing.sum() > 300
    assert not np.any(out[grazing] > 0)
    assert (out[facing] > 0).mean() > 0.85
