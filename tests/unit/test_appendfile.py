"""
The staging file a fill appends to: direct I/O where the filesystem takes
it (so a cold blob does not fill the page cache), plain writes where it
does not, and the same bytes in the file either way.
"""

import errno
import fcntl
import os

import pytest

from daomirror.storage.appendfile import BLOCK, AppendFile

DATA = os.urandom(3 * BLOCK * 100 + 1234)
PIECES = [DATA[i:i + 70_001] for i in range(0, len(DATA), 70_001)]


def opened_with_direct_io(fd):
    with open(f"/proc/self/fdinfo/{fd}") as info:
        flags = next(int(line.split()[1], 8) for line in info if line.startswith("flags:"))
    return bool(flags & os.O_DIRECT)


def append_everything(path):
    f = AppendFile(str(path), capacity=64 * 1024)
    sizes = []
    for piece in PIECES:
        f.append(piece)
        f.write_blocks()
        sizes.append(f.size)
    return f, sizes


def test_on_a_disk_filesystem_whole_blocks_go_out_with_direct_io(tmp_path):
    f, sizes = append_everything(tmp_path / "staged")
    try:
        assert opened_with_direct_io(f.fileno())
        assert all(size % BLOCK == 0 for size in sizes), "only whole blocks before flush()"
        assert sizes[-1] == len(DATA) - len(DATA) % BLOCK
        assert os.path.getsize(tmp_path / "staged") == sizes[-1]
        f.flush()
        assert f.size == len(DATA)
    finally:
        f.close()
    assert (tmp_path / "staged").read_bytes() == DATA


def test_bytes_of_every_kind_arrive_once_and_in_order(tmp_path):
    # Chunks of bytes are copied without the GIL, other buffers the plain
    # way; odd sizes leave partial blocks behind and overflow the buffer,
    # and write_blocks() between them (as the writer calls it when it has
    # caught up) writes only whole blocks.
    f = AppendFile(str(tmp_path / "staged"), capacity=64 * 1024)
    kinds = (bytes, bytearray, memoryview)
    piece = 7001
    for n, start in enumerate(range(0, len(DATA), piece)):
        f.append(kinds[n % 3](DATA[start:start + piece]))
        if n % 5 == 0:
            f.write_blocks()
            assert f.size % BLOCK == 0
    f.flush()
    f.close()
    assert (tmp_path / "staged").read_bytes() == DATA


def refuse_direct_open(real_open):
    def open_(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)
    return open_


def refuse_direct_write(real_write):
    def write(fd, data):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)
    return write


@pytest.mark.parametrize("call, refusing", [("open", refuse_direct_open), ("write", refuse_direct_write)])
def test_where_the_filesystem_refuses_direct_io_plain_writes_store_every_byte(tmp_path, monkeypatch, call, refusing):
    monkeypatch.setattr(os, call, refusing(getattr(os, call)))
    f, sizes = append_everything(tmp_path / "staged")
    assert not opened_with_direct_io(f.fileno())
    assert sizes[-1] == len(DATA), "plain writes need no partial block kept back"
    f.flush()
    f.close()
    assert (tmp_path / "staged").read_bytes() == DATA


def test_the_file_is_new(tmp_path):
    (tmp_path / "taken").write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        AppendFile(str(tmp_path / "taken"))
