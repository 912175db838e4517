"""rosbag2 writing and reading: round trips in both storages, bags with other topics, bag make."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from dfanet_ros.conversions import image_to_array
from dfanet_tools.bag.frames import resolve_camera_topic
from dfanet_tools.bag.io import (
    COMPRESSED_IMAGE,
    IMAGE,
    BagError,
    BagReader,
    BagWriter,
    compressed_message,
    image_message,
    typestore,
)
from dfanet_tools.bag.make import find_frames, make_bag
from dfanet_tools.stamps import header_stamp_ns

STORAGE_SUFFIX = {"mcap": ".mcap", "sqlite3": ".db3"}
T0 = 1_700_000_000_123_456_789

pytestmark = pytest.mark.ros


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_round_trip_keeps_stamps_encodings_and_bytes(tmp_path, storage):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    mono = rng.integers(0, 12, (5, 7), dtype=np.uint8)
    jpeg = b"\xff\xd8\xff\xe0 not really a jpeg, bytes are bytes"
    path = tmp_path / "bag"
    with BagWriter(path, storage) as writer:
        for i in range(3):
            stamp = T0 + i * 66_666_667
            writer.write("camera/image_raw", image_message(rgb + i, "rgb8", stamp, "cam"), stamp)
            writer.write("/camera/label_gt", image_message(mono, "mono8", stamp, "cam"), stamp)
            writer.write("/camera/image_raw/compressed",
                         compressed_message(jpeg, "jpeg", stamp, "cam"), stamp + 5)

    assert (path / "metadata.yaml").is_file()
    assert [p.suffix for p in path.iterdir() if p.name != "metadata.yaml"] == \
        [STORAGE_SUFFIX[storage]]
    with BagReader(path) as reader:
        assert {n: (t.msgtype, t.count) for n, t in reader.topics.items()} == {
            "/camera/image_raw": (IMAGE, 3), "/camera/label_gt": (IMAGE, 3),
            "/camera/image_raw/compressed": (COMPRESSED_IMAGE, 3)}
        images = list(reader.messages("/camera/image_raw"))
        labels = list(reader.messages("camera/label_gt"))
        compressed = list(reader.messages("/camera/image_raw/compressed"))
    rows = zip(images, labels, compressed, strict=True)
    for i, ((t_img, img), (t_lbl, lbl), (t_c, c)) in enumerate(rows):
        stamp = T0 + i * 66_666_667
        assert (t_img, t_lbl, t_c) == (stamp, stamp, stamp + 5)
        assert header_stamp_ns(img) == header_stamp_ns(lbl) == header_stamp_ns(c) == stamp
        assert (img.encoding, img.step, img.header.frame_id) == ("rgb8", 21, "cam")
        assert lbl.encoding == "mono8"
        np.testing.assert_array_equal(image_to_array(img), rgb + i)
        np.testing.assert_array_equal(image_to_array(lbl)[:, :, 0], mono)
        assert (c.format, bytes(c.data)) == ("jpeg", jpeg)


def test_bag_bytes_are_what_rclpy_deserialises(tmp_path):
    """What `ros2 bag play` sends is the stored CDR: rclpy must read it as the same message."""
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Image

    rgb = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    with BagWriter(tmp_path / "bag") as writer:
        writer.write("/cam", image_message(rgb, "rgb8", T0, "cam"), T0)
    with BagReader(tmp_path / "bag") as reader:
        (_, raw), = reader.raw_messages("/cam")
    msg = deserialize_message(bytes(raw), Image)
    assert (msg.height, msg.width, msg.encoding, msg.step) == (4, 6, "rgb8", 18)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == divmod(T0, 1_000_000_000)
    assert bytes(msg.data) == rgb.tobytes()
    # And the other way round.  (Not byte for byte: CDR alignment padding is unspecified, and
    # rclpy leaves whatever memory held there.)
    back = typestore().deserialize_cdr(serialize_message(msg), IMAGE)
    assert (back.height, back.width, back.encoding, back.step) == (4, 6, "rgb8", 18)
    assert back.header.stamp.nanosec == T0 % 1_000_000_000
    assert bytes(back.data) == rgb.tobytes()


def _extra_topics_bag(path: Path, storage: str) -> None:
    """A bag as a car records it: IMU and tf beside a camera that is not on the default topic."""
    types = typestore().types
    Time, Header = types["builtin_interfaces/msg/Time"], types["std_msgs/msg/Header"]
    Imu, Vec, Quat = (types["sensor_msgs/msg/Imu"], types["geometry_msgs/msg/Vector3"],
                      types["geometry_msgs/msg/Quaternion"])
    TF, TS, Tr = (types["tf2_msgs/msg/TFMessage"], types["geometry_msgs/msg/TransformStamped"],
                  types["geometry_msgs/msg/Transform"])
    cov = np.zeros(9, dtype=np.float64)
    rgb = np.full((4, 5, 3), 7, dtype=np.uint8)
    with BagWriter(path, storage) as writer:
        for i in range(6):
            stamp = T0 + i * 10_000_000
            header = Header(stamp=Time(sec=stamp // 10**9, nanosec=stamp % 10**9),
                            frame_id="imu")
            writer.write("/imu", Imu(header=header, orientation=Quat(x=0, y=0, z=0, w=1),
                                     orientation_covariance=cov,
                                     angular_velocity=Vec(x=0, y=0, z=0.1),
                                     angular_velocity_covariance=cov,
                                     linear_acceleration=Vec(x=0, y=0, z=9.8),
                                     linear_acceleration_covariance=cov), stamp)
            writer.write("/tf", TF(transforms=[TS(header=header, child_frame_id="base",
                                                  transform=Tr(translation=Vec(x=i, y=0, z=0),
                                                               rotation=Quat(x=0, y=0, z=0,
                                                                             w=1)))]), stamp)
            if i % 2 == 0:
                writer.write("/front/image_raw", image_message(rgb + i, "rgb8", stamp, "front"),
                             stamp + 1)


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_reads_the_camera_of_a_bag_with_other_topics(tmp_path, storage):
    _extra_topics_bag(tmp_path / "drive", storage)
    with BagReader(tmp_path / "drive") as reader:
        assert set(reader.topics) == {"/imu", "/tf", "/front/image_raw"}
        assert resolve_camera_topic(reader, None, "/camera/label_gt") == "/front/image_raw"
        frames = list(reader.messages("/front/image_raw"))
        imu = list(reader.messages("/imu"))
    assert [image_to_array(m)[0, 0, 0] for _, m in frames] == [7, 9, 11]
    assert [t for t, _ in frames] == [T0 + 1, T0 + 20_000_001, T0 + 40_000_001]
    assert len(imu) == 6 and imu[0][1].linear_acceleration.z == pytest.approx(9.8)


def test_missing_and_wrongly_typed_topics_are_named(tmp_path):
    _extra_topics_bag(tmp_path / "drive", "mcap")
    with BagReader(tmp_path / "drive") as reader:
        with pytest.raises(BagError, match=r"no camera topic /camera/image_raw; the bag has:"
                                           r"[\s\S]*/front/image_raw  sensor_msgs/msg/Image  "
                                           r"\(3 messages\)[\s\S]*/imu  sensor_msgs/msg/Imu"):
            reader.require_topic("camera/image_raw", (IMAGE,), "camera")
        with pytest.raises(BagError, match=r"camera topic /imu has type sensor_msgs/msg/Imu, "
                                           r"expected sensor_msgs/msg/Image"):
            reader.require_topic("/imu", (IMAGE,), "camera")


def test_unreadable_bags_raise_bag_error(tmp_path):
    with pytest.raises(BagError, match=r"bag .*nothing-here: not found"):
        BagReader(tmp_path / "nothing-here")
    (tmp_path / "plain").mkdir()
    with pytest.raises(BagError, match="directory without metadata.yaml"):
        BagReader(tmp_path / "plain")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.yaml").write_text("rosbag2_bagfile_information: [this is not a bag\n")
    with pytest.raises(BagError, match="broken: cannot be read"):
        BagReader(broken)


def test_a_corrupted_mcap_bag_is_reported_as_corrupted(tmp_path, sample_camvid):
    """5000 random bytes written into the middle of a bag were once read silently (the mIoU
    moved a little); the chunk CRCs our bags now carry catch them, in every tool."""
    made = make_bag(tmp_path / "bag", sample_camvid, limit=3, start_ns=T0)
    storage = next(made.path.glob("*.mcap"))
    with BagReader(made.path) as reader:  # chunks, data section and summary
        assert reader.crcs_checked >= 3
    data = bytearray(storage.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 5000] = np.random.default_rng(5).bytes(5000)
    storage.write_bytes(bytes(data))
    with pytest.raises(BagError, match=r"^bag .*bag: corrupted: bag\.mcap: the chunk at byte "
                                       r"\d+ fails its CRC \(stored 0x[0-9a-f]{8}, computed"):
        BagReader(made.path)
    proc = subprocess.run([sys.executable, "-m", "dfanet_tools.cli", "bag", "eval",
                           str(made.path), "--mode", "offline", "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "corrupted: bag.mcap: the chunk at byte" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    storage.write_bytes(bytes(data[:-5000]))  # cut short, as a full disk or a kill leaves it
    with pytest.raises(BagError, match="corrupted: bag.mcap: no magic at the end"):
        BagReader(made.path)


def _camera_bag(path: Path, frames: int = 5) -> list[np.ndarray]:
    """A bag of 360x480 rgb8 frames (518 KB each); a chunk closes past 1 MiB: two chunks."""
    rgbs = [np.random.default_rng(i).integers(0, 256, (360, 480, 3), dtype=np.uint8)
            for i in range(frames)]
    with BagWriter(path) as writer:
        for i, rgb in enumerate(rgbs):
            writer.write("/cam", image_message(rgb, "rgb8", T0 + i, "cam"), T0 + i)
    return rgbs


def _layout(storage: Path) -> tuple[list, int]:
    """The chunk indexes and the summary's start, read with the mcap library."""
    from mcap.reader import make_reader

    with open(storage, "rb") as f:
        summary = make_reader(f).get_summary()
    with open(storage, "rb") as f:
        f.seek(-8 - 20, 2)
        summary_start = int.from_bytes(f.read(8), "little")
    return sorted(summary.chunk_indexes, key=lambda c: c.chunk_start_offset), summary_start


def _flip(storage: Path, at: int) -> None:
    data = bytearray(storage.read_bytes())
    data[at] ^= 0x01
    storage.write_bytes(bytes(data))


def test_our_mcap_bags_carry_every_crc_and_both_readers_decode_them(tmp_path):
    """The mcap library writes the chunk, data-section and summary CRCs; the library's own
    validating reader and rosbags (the independent reader) both decode the bag."""
    from mcap.reader import NonSeekingReader, make_reader

    rgbs = _camera_bag(tmp_path / "bag")
    storage = tmp_path / "bag" / "bag.mcap"
    chunks, _ = _layout(storage)
    assert len(chunks) >= 2
    with BagReader(tmp_path / "bag") as reader:
        assert reader.crcs_checked == len(chunks) + 2  # every chunk, data section, summary
        got = [image_to_array(m) for _, m in reader.messages("/cam")]
    assert all(np.array_equal(a, b) for a, b in zip(got, rgbs, strict=True))
    with open(storage, "rb") as f:
        channels = [c for _, c, _ in NonSeekingReader(f, validate_crcs=True).iter_messages()]
    with open(storage, "rb") as f:
        assert make_reader(f).get_header().profile == "ros2"
    assert {c.topic for c in channels} == {"/cam"}
    assert "offered_qos_profiles" in channels[0].metadata


def test_damage_is_reported_with_where_it_is(tmp_path):
    """A byte flipped in a chunk, in the index between chunks or in the summary, and a cut-off
    file: each named with its place.  The summary CRC is the check the mcap library lacks: its
    validating reader reads that file without complaint."""
    from mcap.reader import NonSeekingReader

    _camera_bag(tmp_path / "bag")
    storage = tmp_path / "bag" / "bag.mcap"
    clean = storage.read_bytes()
    chunks, summary_start = _layout(storage)
    second = chunks[1]
    cases = [
        (second.chunk_start_offset + second.chunk_length // 2,
         rf"the chunk at byte {second.chunk_start_offset} fails its CRC \(stored 0x[0-9a-f]{{8}}"),
        (next(iter(chunks[0].message_index_offsets.values())) + 9 + 6,
         r"the data section \(bytes 0-\d+\) fails its CRC"),
        (summary_start + 9 + 2 + 4,  # the first letter of the first schema's name
         rf"the summary section \(byte {summary_start}\) fails its CRC"),
    ]
    for at, message in cases:
        storage.write_bytes(clean)
        _flip(storage, at)
        with pytest.raises(BagError, match=r"^bag .*bag: corrupted: bag\.mcap: " + message):
            BagReader(tmp_path / "bag")
    with open(storage, "rb") as f:  # still the summary flip
        assert len(list(NonSeekingReader(f, validate_crcs=True).iter_messages())) == 5
    storage.write_bytes(clean[:-3000])
    with pytest.raises(BagError, match=r"corrupted: bag\.mcap: no magic at the end "
                                       r"\(truncated or overwritten\)"):
        BagReader(tmp_path / "bag")


def _as_ros2_bag_record_writes_it(storage: Path) -> None:
    """Rewrite an mcap file the way ``ros2 bag record`` does with the mcap C++ writer's
    defaults: zstd chunks, chunk and summary CRCs, no data-section CRC."""
    from mcap.reader import make_reader
    from mcap.writer import CompressionType, Writer

    with open(storage, "rb") as f:
        reader = make_reader(f)
        metadata = list(reader.iter_metadata())
        messages = [(s, c, m) for s, c, m in reader.iter_messages()]
    with open(storage, "wb") as f:
        writer = Writer(f, compression=CompressionType.ZSTD, enable_crcs=True,
                        enable_data_crcs=False)
        writer.start(profile="ros2", library="rosbag2")
        schemas, channels = {}, {}
        for schema, channel, message in messages:
            if schema.name not in schemas:
                schemas[schema.name] = writer.register_schema(schema.name, schema.encoding,
                                                              schema.data)
            if channel.topic not in channels:
                channels[channel.topic] = writer.register_channel(
                    channel.topic, channel.message_encoding, schemas[schema.name],
                    channel.metadata)
            writer.add_message(channels[channel.topic], message.log_time, message.data,
                               message.publish_time)
        for record in metadata:
            writer.add_metadata(record.name, record.metadata)
        writer.finish()


def test_a_bag_as_ros2_bag_record_writes_it_reads_and_is_checked(tmp_path):
    rgbs = _camera_bag(tmp_path / "bag")
    storage = tmp_path / "bag" / "bag.mcap"
    _as_ros2_bag_record_writes_it(storage)
    chunks, _ = _layout(storage)
    assert {c.compression for c in chunks} == {"zstd"}
    with BagReader(tmp_path / "bag") as reader:
        assert reader.crcs_checked == len(chunks) + 1  # chunks and summary; no data CRC
        got = [image_to_array(m) for _, m in reader.messages("/cam")]
    assert all(np.array_equal(a, b) for a, b in zip(got, rgbs, strict=True))
    first = chunks[0]
    _flip(storage, first.chunk_start_offset + first.chunk_length - 100)
    with pytest.raises(BagError, match=rf"corrupted: bag\.mcap: the chunk at byte "
                                       rf"{first.chunk_start_offset} "):
        BagReader(tmp_path / "bag")


def test_writer_refuses_an_existing_path_and_leaves_no_half_bag(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(BagError, match="exists already"):
        BagWriter(tmp_path / "taken")
    with pytest.raises(ValueError, match="unknown storage 'rosbag1'"):
        BagWriter(tmp_path / "x", "rosbag1")
    with pytest.raises(RuntimeError, match="boom"):
        with BagWriter(tmp_path / "half") as writer:
            writer.write("/cam", image_message(np.zeros((2, 2), np.uint8), "mono8", T0, ""), T0)
            raise RuntimeError("boom")
    assert not (tmp_path / "half").exists()


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_make_writes_a_split_in_sequence_order_with_matching_labels(tmp_path, sample_camvid,
                                                                    storage):
    made = make_bag(tmp_path / "bag", sample_camvid, split="test", rate=10, storage=storage,
                    limit=3, start_ns=T0)
    assert (made.frames, made.labels) == (3, 3)
    files = sorted((sample_camvid / "test").glob("*.jpg"))[:3]
    with BagReader(made.path) as reader:
        images = list(reader.messages("/camera/image_raw"))
        labels = list(reader.messages("/camera/label_gt"))
    assert [t for t, _ in images] == [t for t, _ in labels] == [T0, T0 + 10**8, T0 + 2 * 10**8]
    for (_, img), (_, lbl), f in zip(images, labels, files, strict=True):
        assert header_stamp_ns(img) == header_stamp_ns(lbl)
        assert (img.encoding, lbl.encoding, img.header.frame_id) == ("rgb8", "mono8", "camera")
        np.testing.assert_array_equal(image_to_array(img),
                                      np.asarray(PILImage.open(f).convert("RGB")))
        np.testing.assert_array_equal(
            image_to_array(lbl)[:, :, 0], np.asarray(PILImage.open(sample_camvid / "testannot" /
                                                       f"{f.stem}.png")))


def test_make_compressed_keeps_the_source_files_bytes(tmp_path, sample_camvid):
    made = make_bag(tmp_path / "bag", sample_camvid, compressed=True, limit=2, start_ns=T0)
    assert made.camera_topic == "/camera/image_raw/compressed"
    files = sorted((sample_camvid / "test").glob("*.jpg"))[:2]
    with BagReader(made.path) as reader:
        assert reader.topics[made.camera_topic].msgtype == COMPRESSED_IMAGE
        msgs = [m for _, m in reader.messages(made.camera_topic)]
    assert [m.format for m in msgs] == ["jpeg", "jpeg"]
    assert [bytes(m.data) for m in msgs] == [f.read_bytes() for f in files]


def test_find_frames_orders_naturally_and_pairs_labels(tmp_path):
    images, annot = tmp_path / "seq", tmp_path / "seqannot"
    images.mkdir()
    annot.mkdir()
    for name in ("f10", "f2", "f1"):
        PILImage.fromarray(np.zeros((3, 4, 3), np.uint8)).save(images / f"{name}.png")
    PILImage.fromarray(np.ones((3, 4), np.uint8)).save(annot / "f2.png")
    frames = find_frames(images)
    assert [f.image.name for f in frames] == ["f1.png", "f2.png", "f10.png"]
    assert [f.label.name if f.label else None for f in frames] == [None, "f2.png", None]


def test_a_folder_and_a_dataset_split_accept_the_same_image_files(tmp_path):
    """One list of image suffixes: lossless BMP, PPM and TIFF frames read the same through
    ``bag make``'s folder reader and the dataset loader (a CamVid split), pixel for pixel."""
    rng = np.random.default_rng(1)
    root = tmp_path / "camvid"
    (root / "test").mkdir(parents=True)
    (root / "testannot").mkdir()
    rgbs = {}
    for name in ("a.bmp", "b.ppm", "c.tif", "d.tiff"):
        rgbs[name] = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
        PILImage.fromarray(rgbs[name]).save(root / "test" / name)
        PILImage.fromarray(np.full((3, 4), 2, np.uint8)).save(
            root / "testannot" / f"{Path(name).stem}.png")
    for source, dataset in ((root / "test", None), (root, "camvid")):
        made = make_bag(tmp_path / f"bag_{dataset}", source, start_ns=T0)
        assert (made.dataset, made.frames, made.labels) == (dataset, 4, 4)
        with BagReader(made.path) as reader:
            images = [image_to_array(m) for _, m in reader.messages("/camera/image_raw")]
        for image, name in zip(images, sorted(rgbs), strict=True):
            np.testing.assert_array_equal(image, rgbs[name])


def test_make_rejects_bad_sources(tmp_path, sample_camvid):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        make_bag(tmp_path / "bag", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        make_bag(tmp_path / "bag", tmp_path / "empty")
    images, annot = tmp_path / "seq", tmp_path / "seqannot"
    images.mkdir()
    annot.mkdir()
    PILImage.fromarray(np.zeros((3, 4, 3), np.uint8)).save(images / "a.png")
    PILImage.fromarray(np.zeros((5, 4), np.uint8)).save(annot / "a.png")
    with pytest.raises(ValueError, match=r"label .*a.png: size 5x4 differs from its image's 3x4"):
        make_bag(tmp_path / "bag", images)
    assert not (tmp_path / "bag").exists()
    with pytest.raises(ValueError, match="CamVid split 'nosuch'"):
        make_bag(tmp_path / "bag", sample_camvid, split="nosuch", dataset="camvid")


def test_make_reads_cityscapes_labels_as_train_ids(tmp_path):
    root = tmp_path / "cityscapes"
    (root / "leftImg8bit" / "val" / "ulm").mkdir(parents=True)
    (root / "gtFine" / "val" / "ulm").mkdir(parents=True)
    ids = np.array([[7, 26, 0, 23]], np.uint8)  # road, car, unlabeled, sky
    for name in ("ulm_000001_000019", "ulm_000000_000019"):
        PILImage.fromarray(np.full((1, 4, 3), 50, np.uint8)).save(
            root / "leftImg8bit" / "val" / "ulm" / f"{name}_leftImg8bit.png")
        PILImage.fromarray(ids).save(
            root / "gtFine" / "val" / "ulm" / f"{name}_gtFine_labelIds.png")
    made = make_bag(tmp_path / "bag", root, split="val", start_ns=T0)
    assert (made.dataset, made.frames, made.labels) == ("cityscapes", 2, 2)
    with BagReader(made.path) as reader:
        labels = [image_to_array(m)[:, :, 0] for _, m in reader.messages("/camera/label_gt")]
    np.testing.assert_array_equal(labels[0], [[0, 13, 255, 10]])


def test_bag_make_command(tmp_path, sample_camvid):
    out = tmp_path / "drive"
    result = subprocess.run(
        [sys.executable, "-m", "dfanet_tools.cli", "bag", "make", str(out), "--from",
         str(sample_camvid), "--storage", "sqlite3", "--rate", "5", "--limit", "2"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert ("from the camvid test: 2 frames on /camera/image_raw at 5 Hz, 2 ground-truth "
            "labels on /camera/label_gt") in result.stdout
    assert (out / "metadata.yaml").is_file()
    again = subprocess.run(
        [sys.executable, "-m", "dfanet_tools.cli", "bag", "make", str(out), "--from",
         str(sample_camvid)], capture_output=True, text=True, timeout=120)
    assert again.returncode == 1
    assert f"dfanet bag make: bag {out}: exists already" in again.stderr
