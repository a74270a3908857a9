"""TFRecord shards of (image, mask) PNG pairs at the training size: written once, read fast by tf.data."""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 array; fixed settings so equal pixels give equal bytes."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def write_shards(records: Iterable[tuple[str, np.ndarray, np.ndarray]], out_dir: Path, prefix: str, shard_size: int) -> list[Path]:
    """Write (name, image, mask) records as prefix-00000.tfrecord, ... ; return the files written."""
    import tensorflow as tf

    out_dir.mkdir(parents=True, exist_ok=True)
    paths, writer, n = [], None, 0
    for name, image, mask in records:
        if n % shard_size == 0:
            if writer is not None:
                writer.close()
            paths.append(out_dir / f"{prefix}-{len(paths):05d}.tfrecord")
            writer = tf.io.TFRecordWriter(str(paths[-1]))
        feature = {
            "name": _bytes(name.encode()),
            "image": _bytes(encode_png(image)),
            "mask": _bytes(encode_png(mask)),
        }
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        writer.write(example.SerializeToString(deterministic=True))  # map order fixed: same records, same bytes
        n += 1
    if writer is not None:
        writer.close()
    return paths


def _bytes(value: bytes):
    import tensorflow as tf

    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def read_dataset(files: list[str], size: int):
    """tf.data of (image float32 [0,1] (size, size, 3), mask float32 [0,1] (size, size, 1)), decoded in parallel."""
    import tensorflow as tf

    spec = {
        "name": tf.io.FixedLenFeature([], tf.string),
        "image": tf.io.FixedLenFeature([], tf.string),
        "mask": tf.io.FixedLenFeature([], tf.string),
    }

    def decode(record):
        ex = tf.io.parse_single_example(record, spec)
        image = tf.image.convert_image_dtype(tf.io.decode_png(ex["image"], channels=3), tf.float32)
        mask = tf.image.convert_image_dtype(tf.io.decode_png(ex["mask"], channels=1), tf.float32)
        if image.shape[0] != size:  # shards may be stored larger than the size a run trains at
            image = tf.image.resize(image, (size, size))
            mask = tf.image.resize(mask, (size, size))
        return tf.ensure_shape(image, (size, size, 3)), tf.ensure_shape(mask, (size, size, 1))

    return tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE).map(decode, num_parallel_calls=tf.data.AUTOTUNE)


def read_records(files: list[Path]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """All (name, image, mask) records of some shards as numpy arrays (for tests and reports)."""
    import tensorflow as tf

    out = []
    for record in tf.data.TFRecordDataset([str(f) for f in files]):
        ex = tf.train.Example.FromString(record.numpy())
        f = ex.features.feature
        out.append((
            f["name"].bytes_list.value[0].decode(),
            np.asarray(Image.open(io.BytesIO(f["image"].bytes_list.value[0]))),
            np.asarray(Image.open(io.BytesIO(f["mask"].bytes_list.value[0]))),
        ))
    return out
