from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitoring.safefile import (
    FileTooLarge,
    NotRegularFile,
    check_regular_file,
    read_regular_file,
)


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)
    for check in (read_regular_file, check_regular_file):
        with pytest.raises(NotRegularFile) as info:
            check(fifo)
        assert info.value.filename == str(fifo)
        assert str(info.value) == "not a regular file (a FIFO)"


@pytest.mark.parametrize(
    ("path", "kind"), [("/dev/zero", "a character device"), ("/", "a directory")]
)
def test_devices_and_directories_are_refused_before_any_read(path, kind):
    with pytest.raises(NotRegularFile, match=f"^not a regular file \\({kind}\\)$"):
        read_regular_file(path, max_bytes=None)  # /dev/zero read whole would never end


def test_a_missing_file_is_the_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_regular_file(tmp_path / "missing")


@given(size=st.integers(min_value=0, max_value=3 * 65536), limit=st.integers(0, 3 * 65536))
def test_a_file_is_read_whole_up_to_the_limit_and_refused_past_it(tmp_path_factory, size, limit):
    path = tmp_path_factory.mktemp("files") / "data"
    data = os.urandom(size)
    path.write_bytes(data)
    if size <= limit:
        assert read_regular_file(path, limit) == data
        check_regular_file(path, limit)
    else:
        for check in (read_regular_file, check_regular_file):
            with pytest.raises(FileTooLarge) as info:
                check(path, limit)
            assert (info.value.limit, str(info.value)) == (limit, f"larger than {limit} bytes")
    assert read_regular_file(path, max_bytes=None) == data


def test_a_sparse_file_past_the_limit_is_refused_reading_no_more_than_the_limit(tmp_path):
    sparse = tmp_path / "sparse"
    with sparse.open("wb") as file:
        file.truncate(1 << 40)  # a terabyte of holes: read whole, it would exhaust memory
    with pytest.raises(FileTooLarge):
        read_regular_file(sparse, 1 << 20)
