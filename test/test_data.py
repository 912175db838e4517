"""Datasets (CamVid, Cityscapes), their bad-data errors, frame sampling and augmentation."""
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dfanet_model.augment import BatchAugment, normalize
from dfanet_model.data import (
    DataError,
    drives,
    load_split,
    median_frequency_weights,
    open_split,
    sample_indices,
)


def test_camvid_sample_decodes_whole_split(sample_camvid):
    split = load_split("camvid", sample_camvid, "train", "cpu")
    assert split.images.shape == (5, 360, 480, 3) and split.images.dtype == torch.uint8
    assert split.labels.shape == (5, 360, 480) and split.labels.dtype == torch.uint8
    assert split.names == sorted(p.name for p in (sample_camvid / "train").iterdir())
    assert int(split.labels.max()) <= 11
    first = np.asarray(Image.open(sample_camvid / "train" / split.names[0]).convert("RGB"))
    assert np.array_equal(split.images[0].numpy(), first)


def test_lazy_split_gives_the_same_batches(sample_camvid):
    resident = load_split("camvid", sample_camvid, "test", "cpu")
    lazy = load_split("camvid", sample_camvid, "test", "cpu", placement="lazy")
    assert not lazy.resident and len(lazy) == 8
    idx = torch.tensor([6, 1, 3])
    for a, b in zip(resident.batch(idx, "cpu"), lazy.batch(idx, "cpu"), strict=True):
        assert torch.equal(a, b)


def _write_cityscapes(root, split, city, frame, label_ids, size=(16, 32)):
    stem = f"{city}_{frame}"
    images = root / "leftImg8bit" / split / city
    labels = root / "gtFine" / split / city
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(stem))
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(
        images / f"{stem}_leftImg8bit.png")
    Image.fromarray(label_ids.astype(np.uint8)).save(labels / f"{stem}_gtFine_labelIds.png")
    # The other gtFine files of the real layout, which the loader must leave alone.
    Image.fromarray(np.zeros((*size, 3), np.uint8)).save(labels / f"{stem}_gtFine_color.png")
    Image.fromarray(np.zeros(size, np.uint8)).save(labels / f"{stem}_gtFine_instanceIds.png")
    (labels / f"{stem}_gtFine_polygons.json").write_text("{}")


def test_cityscapes_layout_maps_label_ids_to_train_ids(tmp_path):
    ids = np.zeros((16, 32), np.int64)
    # void, road, sidewalk, building, car, bicycle, license plate (-1 stored as 255), wall
    ids[:, :8] = np.array([0, 7, 8, 11, 26, 33, 255, 12])
    _write_cityscapes(tmp_path, "train", "bochum", "000000_000313", ids)
    _write_cityscapes(tmp_path, "train", "aachen", "000000_000019", np.full((16, 32), 24))
    split = load_split("cityscapes", tmp_path, "train", "cpu")
    assert [p.name for p, _ in split.files] == ["aachen_000000_000019_leftImg8bit.png",
                                                "bochum_000000_000313_leftImg8bit.png"]
    assert split.table.num_classes == 19 and split.table.ignore_index == 255
    assert torch.equal(split.labels[1, 0, :8],
                       torch.tensor([255, 0, 1, 2, 13, 18, 255, 3], dtype=torch.uint8))
    assert torch.equal(split.labels[1, :, 8:], torch.full((16, 24), 255, dtype=torch.uint8))
    assert bool((split.labels[0] == 11).all())  # person
    assert split.images.shape == (2, 16, 32, 3)


def test_cityscapes_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"Cityscapes split 'val': missing folder "
                                        r".*leftImg8bit/val"):
        open_split("cityscapes", tmp_path, "val")
    _write_cityscapes(tmp_path, "val", "lindau", "000000_000019", np.full((16, 32), 34))
    with pytest.raises(DataError, match=r"lindau_000000_000019_gtFine_labelIds\.png: values "
                                        r"\[34\] are neither a class"):
        load_split("cityscapes", tmp_path, "val", "cpu")
    (tmp_path / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(DataError, match=r"1 images without a \*_gtFine_labelIds\.png label .*"
                                        r"lindau_000000_000019_leftImg8bit\.png"):
        open_split("cityscapes", tmp_path, "val")


@pytest.fixture
def small_camvid(tmp_path, sample_camvid):
    """A writable CamVid copy of two frames."""
    root = tmp_path / "camvid"
    for folder in ("val", "valannot"):
        shutil.copytree(sample_camvid / folder, root / folder)
    return root


def test_missing_folders(tmp_path, small_camvid):
    with pytest.raises(DataError, match=r"CamVid root .*nowhere: missing folder"):
        open_split("camvid", tmp_path / "nowhere", "val")
    with pytest.raises(DataError, match=r"CamVid split 'train': missing folder .*camvid/train$"):
        open_split("camvid", small_camvid, "train")
    shutil.rmtree(small_camvid / "valannot")
    with pytest.raises(DataError, match=r"CamVid split 'val' labels: missing folder .*valannot"):
        open_split("camvid", small_camvid, "val")


def test_image_without_label_and_label_without_image(small_camvid):
    (small_camvid / "valannot" / "0016E5_07959.png").rename(small_camvid / "x.png")
    with pytest.raises(DataError, match=r"1 images without a label in .*valannot: "
                                        r"0016E5_07959\.jpg \(no 0016E5_07959\.png\)"):
        open_split("camvid", small_camvid, "val")
    (small_camvid / "x.png").rename(small_camvid / "valannot" / "0016E5_07959.png")
    shutil.copy(small_camvid / "valannot" / "0016E5_07959.png",
                small_camvid / "valannot" / "extra_frame.png")
    with pytest.raises(DataError, match=r"1 labels without an image in .*val: "
                                        r"extra_frame\.png"):
        open_split("camvid", small_camvid, "val")


def test_label_values_outside_the_classes(small_camvid):
    path = small_camvid / "valannot" / "0016E5_08159.png"
    label = np.asarray(Image.open(path)).copy()
    label[0, :3] = [12, 200, 12]
    Image.fromarray(label).save(path)
    with pytest.raises(DataError, match=r"0016E5_08159\.png: values \[12, 200\] are neither "
                                        r"a class of camvid nor its ignore value \(valid raw "
                                        r"values: 0\.\.11\)"):
        load_split("camvid", small_camvid, "val", "cpu")


def test_colour_label_is_refused(small_camvid):
    path = small_camvid / "valannot" / "0016E5_08159.png"
    Image.open(path).convert("RGB").save(path)
    with pytest.raises(DataError, match=r"0016E5_08159\.png: mode RGB, expected a "
                                        r"single-channel index image"):
        load_split("camvid", small_camvid, "val", "cpu")


def test_unreadable_files(small_camvid):
    image = small_camvid / "val" / "0016E5_07959.jpg"
    image.write_bytes(image.read_bytes()[:2000])  # truncated JPEG
    with pytest.raises(DataError, match=r"unreadable image .*0016E5_07959\.jpg"):
        load_split("camvid", small_camvid, "val", "cpu")
    image.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"unreadable image .*0016E5_07959\.jpg: cannot "
                                        r"identify"):
        load_split("camvid", small_camvid, "val", "cpu")
    shutil.copy(small_camvid / "val" / "0016E5_08159.jpg", image)
    (small_camvid / "valannot" / "0016E5_08159.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match=r"unreadable label .*0016E5_08159\.png"):
        load_split("camvid", small_camvid, "val", "cpu")


def test_label_of_another_size(small_camvid):
    path = small_camvid / "valannot" / "0016E5_08159.png"
    Image.open(path).resize((240, 180), Image.NEAREST).save(path)
    with pytest.raises(DataError, match=r"0016E5_08159\.png is 240x180 but its image .* "
                                        r"is 480x360"):
        load_split("camvid", small_camvid, "val", "cpu")


def test_sampling_covers_each_epoch_and_keeps_ranks_apart():
    n, batch = 10, 3
    # Positions 0..9 of the stream are epoch 0: a permutation of all frames.
    stream = torch.cat([sample_indices(n, it, batch, seed=5) for it in range(4)])
    assert sorted(stream[:n].tolist()) == list(range(n))
    assert not torch.equal(stream[:n], torch.arange(n))
    assert torch.equal(stream, torch.cat([sample_indices(n, it, batch, 5) for it in range(4)]))
    # Each epoch is shuffled anew: epoch 1 is a permutation of its own, not epoch 0 again.
    epoch1 = torch.cat([sample_indices(n, it, 5, seed=5) for it in (2, 3)])
    epoch0 = torch.cat([sample_indices(n, it, 5, seed=5) for it in (0, 1)])
    assert sorted(epoch1.tolist()) == list(range(n))
    assert not torch.equal(epoch0, epoch1)
    rank0 = sample_indices(n, 1, batch, 5, rank=0, world_size=2)
    rank1 = sample_indices(n, 1, batch, 5, rank=1, world_size=2)
    assert not set(rank0.tolist()) & set(rank1.tolist())


def test_median_frequency_weights_by_hand():
    from dfanet_model.classes import CAMVID
    from dfanet_model.data import SegmentationSplit
    labels = torch.full((2, 2, 4), 11, dtype=torch.uint8)
    labels[0] = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 1]])   # image 0: class 0 x6, class 1 x2
    labels[1, 0] = torch.tensor([2, 2, 2, 11])                # image 1: class 2 x3, void x5
    split = SegmentationSplit("camvid", "hand", [], CAMVID, images=torch.zeros(2, 2, 4, 3),
                              labels=labels)
    w = median_frequency_weights(split)
    # freq = pixels / pixels of images holding the class: 6/8, 2/8, 3/8; median 3/8.
    assert torch.allclose(w[:3], torch.tensor([0.5, 1.5, 1.0]))
    assert torch.equal(w[3:], torch.zeros(8))


def test_median_frequency_counts_only_the_images_holding_the_class():
    """freq(c) divides by the pixels of the images where c is present, not by all pixels:
    with classes in different numbers of images the two give different weights."""
    from dfanet_model.classes import CAMVID
    from dfanet_model.data import SegmentationSplit
    labels = torch.tensor([[[0, 0, 0, 1]], [[0, 2, 2, 2]], [[2, 2, 2, 2]]], dtype=torch.uint8)
    split = SegmentationSplit("camvid", "hand", [], CAMVID, images=torch.zeros(3, 1, 4, 3),
                              labels=labels)
    w = median_frequency_weights(split)
    # class 0: 4 px over images 0 and 1 (8 px) = 1/2; class 1: 1 px over image 0 = 1/4;
    # class 2: 7 px over images 1 and 2 = 7/8.  Median 1/2.  (Over all 12 pixels, class 1
    # would weigh 4, not 2.)
    assert torch.allclose(w[:3], torch.tensor([1.0, 2.0, 4 / 7]))
    assert torch.equal(w[3:], torch.zeros(8))


def test_inverse_log_frequency_weights_by_hand():
    from dfanet_model.classes import CAMVID
    from dfanet_model.data import SegmentationSplit, inverse_log_frequency_weights
    labels = torch.full((2, 2, 4), 11, dtype=torch.uint8)
    labels[0] = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 1]])
    labels[1, 0] = torch.tensor([2, 2, 2, 11])
    split = SegmentationSplit("camvid", "hand", [], CAMVID, images=torch.zeros(2, 2, 4, 3),
                              labels=labels)
    w = inverse_log_frequency_weights(split)
    # 11 labelled pixels: shares 6/11, 2/11, 3/11; weight 1 / ln(1.02 + share).
    share = torch.tensor([6 / 11, 2 / 11, 3 / 11], dtype=torch.float64)
    assert torch.allclose(w[:3].double(), 1 / torch.log(1.02 + share), rtol=1e-6)
    assert torch.equal(w[3:], torch.zeros(8))
    assert w[1] > w[2] > w[0]  # the rarer, the heavier


@pytest.fixture(scope="module")
def frames(sample_camvid):
    split = load_split("camvid", sample_camvid, "val", "cpu")
    return split.images, split.labels


def test_augment_without_scale_or_flip_is_an_exact_crop(frames):
    images, labels = frames
    aug = BatchAugment((96, 128), (1.0, 1.0), hflip=False, ignore_index=11)
    params = aug.draw(2, (360, 480), torch.Generator().manual_seed(3))
    x, y = aug.apply(images, labels, params)
    assert x.shape == (2, 3, 96, 128) and y.shape == (2, 96, 128) and y.dtype == torch.long
    for i in range(2):
        oy, ox = int(params.offset_y[i]), int(params.offset_x[i])
        assert torch.equal(y[i], labels[i, oy:oy + 96, ox:ox + 128].long())
        ref = normalize(images[i:i + 1, oy:oy + 96, ox:ox + 128], aug.mean, aug.std)[0]
        assert torch.allclose(x[i], ref, atol=1e-3)


def test_augment_flip_mirrors_image_and_label(frames):
    images, labels = frames
    aug = BatchAugment((360, 480), (1.0, 1.0), hflip=True, ignore_index=11)
    params = aug.draw(2, (360, 480), torch.Generator().manual_seed(0))
    params = type(params)(torch.tensor([True, False]), params.scale, params.offset_y * 0,
                          params.offset_x * 0)
    x, y = aug.apply(images, labels, params)
    assert torch.equal(y[0], labels[0].flip(-1).long())
    assert torch.equal(y[1], labels[1].long())
    assert torch.allclose(x[0], normalize(images[:1].flip(2), aug.mean, aug.std)[0], atol=1e-3)


def test_augment_pads_labels_with_ignore(frames):
    images, labels = frames
    aug = BatchAugment((400, 520), (1.0, 1.0), hflip=False, ignore_index=11)
    x, y = aug(images[:1], labels[:1], torch.Generator().manual_seed(1))
    outside = 400 * 520 - 360 * 480
    assert int((y == 11).sum()) == outside + int((labels[0] == 11).sum())
    # The frame's pixels all arrive, in one piece: the padding is where the frame is not.
    assert torch.equal(torch.bincount(y[y != 11].flatten(), minlength=11),
                       torch.bincount(labels[0][labels[0] != 11].long().flatten(),
                                      minlength=11))
    assert float(x[0][:, y[0] == 11].abs().min()) < 1e-6  # padding is the mean colour


def test_augment_is_reproducible_from_the_generator_state(frames):
    images, labels = frames
    aug = BatchAugment((120, 160), (0.75, 1.75), ignore_index=11)
    g = torch.Generator().manual_seed(7)
    state = g.get_state()
    a = aug(images, labels, g)
    b = aug(images, labels, g)
    g.set_state(state)
    c = aug(images, labels, g)
    assert torch.equal(a[0], c[0]) and torch.equal(a[1], c[1])
    assert not torch.equal(a[0], b[0])
    params = aug.draw(1000, (360, 480), g)
    assert 0.75 <= float(params.scale.min()) and float(params.scale.max()) <= 1.75
    assert 0.4 < float(params.flip.float().mean()) < 0.6


def test_color_jitter_changes_only_the_colours_and_stays_reproducible(frames):
    images, labels = frames
    plain = BatchAugment((120, 160), (0.75, 1.75), ignore_index=11)
    jitter = BatchAugment((120, 160), (0.75, 1.75), ignore_index=11, color_jitter=0.4)
    state = torch.Generator().manual_seed(5).get_state()
    g1, g2 = torch.Generator(), torch.Generator()
    g1.set_state(state)
    g2.set_state(state)
    xp, yp = plain(images, labels, g1)
    xj, yj = jitter(images, labels, g2)
    assert torch.equal(yp, yj)  # same geometry: the flip/scale/crop draws come first
    assert not torch.allclose(xp, xj, atol=0.05)
    g2.set_state(state)
    again = jitter(images, labels, g2)
    assert torch.equal(again[0], xj)
    params = jitter.draw(500, (360, 480), torch.Generator().manual_seed(1))
    assert 0.6 <= float(params.color.min()) and float(params.color.max()) <= 1.4


def test_color_jitter_factors_by_hand():
    from dfanet_model.augment import jitter_colors
    img = torch.tensor([[[[100, 50, 200], [20, 40, 60]]]], dtype=torch.uint8)  # (1, 1, 2, 3)
    same = jitter_colors(img, torch.ones(1, 3))
    assert torch.equal(same, img)
    brighter = jitter_colors(img, torch.tensor([[1.5, 1.0, 1.0]]))
    assert torch.equal(brighter, (img.float() * 1.5).round().clamp(0, 255).to(torch.uint8))
    gray = jitter_colors(img, torch.tensor([[1.0, 1.0, 0.0]]))
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    flat = jitter_colors(img, torch.tensor([[1.0, 0.0, 1.0]]))
    assert (flat.float().std(dim=(1, 2)) < 1).all()  # no contrast: every pixel the mean


def test_split_expressions_join_splits_and_hold_out_a_drive(sample_camvid):
    def names(split):
        return open_split("camvid", sample_camvid, split).names

    assert names("train+val") == names("train") + names("val")
    assert names("train/0006R0") == ["0006R0_f01770.jpg"]
    # The recipe protocol: train on every other drive, choose on the held-out one.
    rest = names("train/0001TP+train/0016E5+val")
    assert "0006R0_f01770.jpg" not in rest
    assert sorted(rest + names("train/0006R0")) == sorted(names("train+val"))
    assert drives("camvid", sample_camvid, "train+val") == ["0001TP", "0006R0", "0016E5"]


@pytest.mark.parametrize("split, problem", [
    ("train/0099XX", "no frame of drive '0099XX' in 'train' (its drives: 0001TP, 0006R0, "
                     "0016E5)"),
    ("train+train/0016E5", "names 3 frame(s) twice"),
    ("train/", "'train/' is not SPLIT or SPLIT/DRIVE"),
    ("train/a/b", "'train/a/b' is not SPLIT or SPLIT/DRIVE"),
    ("train+", "'' is not SPLIT or SPLIT/DRIVE"),
])
def test_bad_split_expressions_are_named(sample_camvid, split, problem):
    with pytest.raises(DataError) as e:
        open_split("camvid", sample_camvid, split)
    assert f"split {split!r}" in str(e.value) and problem in str(e.value)
