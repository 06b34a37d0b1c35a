"""Loading shards: deterministic shuffles, disjoint DDP ranks and DataLoader workers, tensors and augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from chromify.errors import DataError
from chromify.loader import ShardSet


@pytest.fixture(scope="module")
def train(small_shards) -> ShardSet:
    return ShardSet(small_shards / "train")


def test_order_is_deterministic_per_seed_and_epoch(train):
    a = train.order(seed=7, epoch=3)
    assert np.array_equal(a, train.order(seed=7, epoch=3))
    assert sorted(a.tolist()) == list(range(len(train)))
    assert not np.array_equal(a, train.order(seed=7, epoch=4))
    assert not np.array_equal(a, train.order(seed=8, epoch=3))
    # Shuffled across shards (their visiting order changes with the epoch) and within them.
    first_shard = [int(np.searchsorted(train.offsets, o[0], side="right")) for o in (a, train.order(7, 4))]
    assert first_shard[0] != first_shard[1] or not np.array_equal(a[:10], train.order(7, 4)[:10])


def test_ranks_are_disjoint_equal_and_cover_all_but_a_remainder(train):
    world = 3
    parts = [train.order(seed=1, epoch=0, rank=r, world=world) for r in range(world)]
    assert len({len(p) for p in parts}) == 1
    seen = np.concatenate(parts)
    assert len(set(seen.tolist())) == len(seen)  # disjoint
    assert len(train) - len(seen) == len(train) % world  # covering, less the remainder every rank drops


def test_worker_partition_is_disjoint_and_complete(train):
    batch, workers = 8, 3
    n = train.batch_count(batch)
    got = {}
    for w in range(workers):
        for b, idx in train.batch_orders(batch, seed=5, epoch=2, worker=w, workers=workers):
            assert b not in got
            got[b] = idx
    assert sorted(got) == list(range(n))
    whole = dict(train.batch_orders(batch, seed=5, epoch=2))
    assert all(np.array_equal(got[b], whole[b]) for b in range(n))
    resumed = [b for w in range(workers) for b, _ in train.batch_orders(batch, 5, 2, worker=w, workers=workers,
                                                                        start=4)]
    assert sorted(resumed) == list(range(4, n))


def test_gather_reads_the_right_samples(train, small_shards):
    idx = np.array([len(train) - 1, 0, 13, 11, 12])
    files = [np.load(small_shards / "train" / s["file"]) for s in train.index["shards"]]
    assert np.array_equal(train.gather(idx), np.concatenate(files)[idx])


def test_dataloader_stream_is_the_same_for_any_number_of_workers(small_shards):
    import torch

    from chromify.loader import ShardBatches

    def streams(num_workers: int, epochs: tuple[int, ...]) -> list[list]:
        ds = ShardBatches(small_shards / "train", batch_size=8, seed=3)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers,
                                             persistent_workers=num_workers > 0)
        out = []
        for epoch in epochs:
            ds.set_epoch(epoch)  # reaches the persistent workers through shared memory
            out.append(list(loader))
        return out

    in_process, workers = streams(0, (1, 2)), streams(2, (1, 2))
    for one, two in zip(in_process, workers, strict=True):
        assert len(one) == len(two) == ShardSet(small_shards / "train").batch_count(8)
        for (l1, ab1), (l2, ab2) in zip(one, two, strict=True):
            assert torch.equal(l1, l2) and torch.equal(ab1, ab2)
    assert not torch.equal(in_process[0][0][0], in_process[1][0][0])  # epochs differ
    raw = ShardBatches(small_shards / "train", batch_size=8, seed=3, raw=True)
    raw.set_epoch(2)
    for batch, (lum, _) in zip(torch.utils.data.DataLoader(raw, batch_size=None, num_workers=2), in_process[1],
                               strict=True):  # uint8, gathered into shared memory by the workers
        assert batch.dtype == torch.uint8 and torch.equal(batch[:, :1].float() / 255.0, lum)
    lum, ab = in_process[0][0]
    assert lum.shape == (8, 1, 32, 32) and ab.shape == (8, 2, 32, 32) and lum.dtype == torch.float32
    assert 0 <= lum.min() and lum.max() <= 1 and -1 <= ab.min() and ab.max() < 1


def test_device_crops_equal_host_crops_for_the_same_draws(train):
    import torch

    from chromify.loader import crop_flip, crop_flip_draws

    batch = train.gather(np.arange(16))
    draws = crop_flip_draws(16, 32, 20, np.random.default_rng([42, 0, 7]))
    host = crop_flip(batch, 20, *draws)  # numpy: what a CPU trainer does
    device = crop_flip(torch.from_numpy(batch), 20, *draws)  # one gather: what a GPU trainer does on the GPU
    assert host.shape == (16, 3, 20, 20) and 0 < draws[2].sum() < 16 and len(set(draws[0])) > 3
    np.testing.assert_array_equal(device.numpy(), host)
    i = int(np.argmax(draws[2]))  # a flipped sample, cut where the draws say
    y, x = draws[0][i], draws[1][i]
    np.testing.assert_array_equal(host[i], batch[i, :, y : y + 20, x : x + 20][..., ::-1])


def test_batched_crop_and_flip_match_a_per_sample_loop(train):
    import torch

    from chromify.loader import random_crop_flip

    batch = torch.from_numpy(train.gather(np.arange(16)))
    for crop in (24, 0):
        gen = torch.Generator().manual_seed(11)
        got = random_crop_flip(batch, crop, gen)
        gen = torch.Generator().manual_seed(11)  # the same draws, applied one sample at a time
        c = crop or 32
        ys, xs = torch.randint(0, 33 - c, (16,), generator=gen), torch.randint(0, 33 - c, (16,), generator=gen)
        flips = torch.rand(16, generator=gen) < 0.5
        for i in range(16):
            patch = batch[i, :, ys[i] : ys[i] + c, xs[i] : xs[i] + c]
            assert torch.equal(got[i], patch.flip(-1) if flips[i] else patch)
        assert got.shape == (16, 3, c, c) and got.dtype == torch.uint8 and 0 < flips.sum() < 16


def test_a_shard_that_disagrees_with_the_index_is_refused(tmp_path, small_shards):
    import shutil

    shutil.copytree(small_shards / "val", tmp_path / "val")
    index = json.loads((tmp_path / "val" / "index.json").read_text())
    np.save(tmp_path / "val" / index["shards"][0]["file"], np.zeros((1, 3, 32, 32), np.uint8))
    with pytest.raises(DataError, match="index says"):
        ShardSet(tmp_path / "val")


@pytest.mark.parametrize(("damage", "words"), [
    (lambda text: "", "unreadable shard index (Expecting value: line 1 column 1 (char 0)); re-run preprocess"),
    (lambda text: text[: len(text) // 2], "unreadable shard index ("),
    (lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "shape"}),
     "damaged shard index (needs shape [3, S, S] and shards [{file, count}, ...]); re-run preprocess"),
    (lambda text: json.dumps({**json.loads(text), "shards": [{"count": 1}]}), "damaged shard index ("),
    (lambda text: "[]", "unknown shard format 'list'"),
])
def test_a_damaged_index_is_one_line_naming_it(tmp_path, small_shards, damage, words):
    # An empty or cut index was a JSONDecodeError traceback, one without "shape" a KeyError.
    import shutil

    shutil.copytree(small_shards / "val", tmp_path / "val")
    index = tmp_path / "val" / "index.json"
    index.write_text(damage(index.read_text()))
    with pytest.raises(DataError) as err:
        ShardSet(tmp_path / "val")
    assert str(err.value).startswith(f"{index}: {words}") and "\n" not in str(err.value)


def test_model_tensors_are_the_stored_lab_in_the_models_units():
    """L/100 and ab/128, the units the losses, the bins and the decode assume: 8-bit ab 128 is gray (0.0)."""
    import torch

    from chromify.lab import dequantise_lab, quantise_lab, rgb_to_lab
    from chromify.loader import to_model_tensors

    rgb = np.random.default_rng(3).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    stored = quantise_lab(rgb_to_lab(rgb)).transpose(0, 3, 1, 2)
    lab = dequantise_lab(stored.transpose(0, 2, 3, 1))
    for batch in (stored, torch.from_numpy(stored.copy())):
        lum, ab = to_model_tensors(batch)
        assert lum.shape == (2, 1, 8, 8) and ab.shape == (2, 2, 8, 8) and ab.dtype == torch.float32
        np.testing.assert_allclose(lum.numpy()[:, 0], lab[..., 0] / 100.0, atol=1e-6)
        np.testing.assert_allclose(ab.numpy().transpose(0, 2, 3, 1), lab[..., 1:] / 128.0, atol=1e-6)
    gray = np.full((1, 3, 2, 2), 128, dtype=np.uint8)
    assert to_model_tensors(gray)[1].abs().max().item() == 0.0
