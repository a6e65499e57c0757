"""Error lines that name the file: a damaged Zarr chunk (any codec), a failed write in a library that does not say
which file (HDF5, a temporary), numpy's words from a crafted patch dataset."""

from __future__ import annotations

import errno
import re
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from lczmap.cli import cli
from lczmap.errors import OutputError, as_lczmap_error, describe, user_path

sys.path.insert(0, str(Path(__file__).parent))
from test_train import write_ges2  # noqa: E402


def one_error_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and lines and lines[-1].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[-1]


@pytest.mark.parametrize("codec", ["Blosc", "Zlib", "Zstd", "LZ4", "GZip", "BZ2", "LZMA"])
def test_every_codec_s_failure_reads_as_a_corrupt_chunk(codec):
    import numcodecs

    with pytest.raises(Exception) as caught:
        getattr(numcodecs, codec)().decode(b"\x02\x01\x21\x08not compressed data at all, not at all")
    assert describe(caught.value).startswith("a compressed chunk is corrupt: ")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_chunk_of_a_staged_stack_names_the_store(demo_city, tmp_path, damage):
    runner = CliRunner()
    store = tmp_path / "stack.zarr"
    staged = runner.invoke(cli, ["-q", "stage", "--config", str(demo_city / "city.yaml"), "--out", str(store)])
    assert staged.exit_code == 0, staged.output
    chunk = next(p for p in (store / "stack").iterdir() if not p.name.startswith("."))
    data = chunk.read_bytes()
    # Damage that the codec itself detects: a Blosc header with garbage or cut data behind it makes c-blosc read out
    # of bounds (a crash inside the codec, now and then), which no reader can turn into an error line.
    chunk.write_bytes(bytes(range(256)) * 4 if damage == "garbage" else data[:8])
    line = one_error_line(runner.invoke(cli, ["-q", "predict", "--stack", str(store), "--out", str(tmp_path / "lcz.tif")]))
    assert line.startswith(f"Error: {store}: staged stack cannot be read (a compressed chunk is corrupt: "), line
    assert not (tmp_path / "lcz.tif").exists()


def test_hdf5_s_write_errors_name_their_file():
    """h5py's OSError keeps the file inside HDF5's message (`filename = '...'`), not in OSError.filename."""
    exc = OSError(errno.EFBIG, "Can't synchronously write data (file write failed: time = Sat Dec  5 08:45:58 2026\n"
                               ", filename = 'model/checkpoint/.best.weights.h5.4242.tmp', file descriptor = 8, errno = 27)")
    err = as_lczmap_error(exc, "lczmap train")
    assert isinstance(err, OutputError)
    assert str(err) == "model/checkpoint/best.weights.h5: file too large (a file-size limit was reached)"


def test_temporaries_are_named_by_the_file_they_become():
    assert user_path("out/.lcz.png.1234.tmp") == "out/lcz.png"
    assert user_path("out/lcz.png") == "out/lcz.png" and user_path(".hidden.tmp") == ".hidden.tmp"
    err = as_lczmap_error(FileNotFoundError(errno.ENOSPC, "No space left", "out/.lcz.tif.77.tmp"), "lczmap predict")
    assert str(err) == "out/lcz.tif: no space left on the device"


@pytest.mark.parametrize("where", ["image", "label"])
def test_an_object_array_in_a_ges2_sample_names_the_file(tmp_path, where):
    """A LCZC-GES2 .npz holding Python objects (never loaded: no pickles): one line naming the sample file."""
    folder = write_ges2(tmp_path / "ges2", n=8)
    for sample in (folder / "sen2_img_patches").glob("*.npz"):
        arrays = dict(np.load(sample))
        arrays[where] = np.array([object(), 1], dtype=object)
        np.savez(sample, **arrays)
    for args in (["train", "--data", str(folder), "--epochs", "1", "--out", str(tmp_path / "m")],
                 ["evaluate", "--model", "msmla18-demo", "--data", str(folder), "--out", str(tmp_path / "e.json")]):
        line = one_error_line(CliRunner().invoke(cli, args))
        assert re.match(rf"Error: {re.escape(str(folder))}/sen2_img_patches/sen2_image_\d+\.npz: cannot read LCZC-GES2 sample \(", line), line


def test_an_hdf5_declaring_huge_patches_names_the_file(tmp_path):
    """20000 x 20000 pixel patches (a few KB on disk, 60 GB to read): refused when opened, naming the file."""
    data = tmp_path / "huge.h5"
    with h5py.File(data, "w") as f:
        f.create_dataset("sen2", shape=(4, 20000, 20000, 10), dtype="f4", chunks=(1, 64, 64, 10))
        f["label"] = np.eye(17)[[1, 2, 3, 4]]
    for args in (["train", "--data", str(data), "--val", str(data), "--epochs", "1", "--out", str(tmp_path / "m")],
                 ["evaluate", "--model", "msmla18-demo", "--data", str(data), "--out", str(tmp_path / "e.json")]):
        line = one_error_line(CliRunner().invoke(cli, args))
        assert line == f"Error: {data}: 'sen2' declares patches of 20000 x 20000 pixels; LCZ patches are at most 128", line
