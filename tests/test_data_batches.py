"""Batching: order a pure function of (seed, epoch), exact resume, depth bit-identical, raw frames untouched."""

import numpy as np
import pytest

from v2v_jax.data import cameras, msra
from v2v_jax.data.loader import BatchLoader, batch_plan, batches, frames_digest, read_batch


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("msra")
    for k in (0, 1):
        for gesture in cameras.MSRA_GESTURES:
            depth = np.zeros((1, 240, 320), np.float32)
            depth[0, 50:120, 60:150] = rng.uniform(250, 450, (70, 90))
            msra.write_gesture(root / f"P{k}" / gesture, depth, rng.uniform(-50, 400, (1, 21, 3)))
    return msra.MSRA(root, None, test_subject=1, split="train")  # 17 frames


def test_plan_is_a_pure_function_of_seed_and_epoch():
    a = batch_plan(17, 4, seed=3, epoch=2)
    assert len(a) == 4 and all(len(b) == 4 for b in a)
    np.testing.assert_array_equal(np.concatenate(a), np.concatenate(batch_plan(17, 4, seed=3, epoch=2)))
    assert not np.array_equal(np.concatenate(a), np.concatenate(batch_plan(17, 4, seed=3, epoch=3)))
    assert not np.array_equal(np.concatenate(a), np.concatenate(batch_plan(17, 4, seed=4, epoch=2)))
    whole = batch_plan(17, 4, seed=3, epoch=2, drop_last=False)
    assert sorted(np.concatenate(whole).tolist()) == list(range(17)) and len(whole[-1]) == 1
    np.testing.assert_array_equal(np.concatenate(batch_plan(17, 5, seed=0, epoch=0, shuffle=False)), np.arange(15))


def test_batches_match_the_frames_bit_for_bit(dataset):
    out = list(batches(dataset, 5, seed=1, epoch=0))
    assert len(out) == 3
    for batch, indices in zip(out, batch_plan(len(dataset), 5, seed=1, epoch=0)):
        np.testing.assert_array_equal(batch["index"], indices)
        assert batch["depth"].shape == (5, 240, 320) and batch["depth"].dtype == np.float32
        assert batch["joints"].shape == (5, 21, 3) and batch["center"].shape == (5, 3)
        for row, i in zip(range(5), indices):
            frame = dataset[int(i)]
            assert batch["depth"][row].view(np.uint32).tolist() == frame.depth.view(np.uint32).tolist()
            np.testing.assert_array_equal(batch["joints"][row], frame.joints)


def test_resume_continues_exactly(dataset):
    full = list(batches(dataset, 3, seed=7, epoch=4))
    resumed = list(batches(dataset, 3, seed=7, epoch=4, start_batch=2))
    assert len(resumed) == len(full) - 2
    for a, b in zip(full[2:], resumed):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_workers_give_the_same_batches_across_epochs(dataset):
    loader = BatchLoader(dataset, 4, num_workers=2)  # workers persist between epochs
    abandoned = loader.epoch(seed=5, epoch=0)
    next(abandoned)
    abandoned.close()  # an epoch left after one batch must not leak into the next
    for epoch in (1, 2):
        serial = list(batches(dataset, 4, seed=5, epoch=epoch))
        parallel = list(loader.epoch(seed=5, epoch=epoch))
        assert len(serial) == len(parallel) == 4
        for a, b in zip(serial, parallel):
            for key in a:
                assert a[key].dtype == b[key].dtype and a[key].tobytes() == b[key].tobytes()


def test_changing_batches_leaves_the_raw_frames_untouched(dataset):
    before = frames_digest(dataset, range(len(dataset)))
    for epoch in range(2):  # an "augmentation" that works in place on every batch
        for batch in batches(dataset, 4, seed=0, epoch=epoch):
            batch["depth"] *= 2
            batch["joints"] += 10
            batch["center"][:] = 0
    assert frames_digest(dataset, range(len(dataset))) == before
    frame = dataset[0]
    with pytest.raises(ValueError, match="read-only"):
        frame.joints[0, 0] = 1.0  # working in place on a frame itself is refused
    assert read_batch(dataset, [0])["joints"].flags.writeable
