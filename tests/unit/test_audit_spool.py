"""The audit spool: whole JSON lines in numbered segments, rotation, reopening, failed writes, permissions."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from authz.audit.spool import Spool

REPO = Path(__file__).resolve().parents[2]


# -- helpers --------------------------------------------------------------------------------------


def record(n: int, **extra: Any) -> dict[str, Any]:
    return {"kind": "decision", "request_id": f"req-{n:04d}", "n": n, **extra}


def fixed_record(n: int, width: int) -> dict[str, Any]:
    """A record whose spooled line (newline included) is exactly ``width`` bytes."""
    bare = len(json.dumps({"n": n, "pad": ""}, separators=(",", ":"))) + 1
    return {"n": n, "pad": "x" * (width - bare)}


def lines_of(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), f"{path.name} ends in a partial line"
    return [json.loads(line) for line in data.splitlines()]


def spooled(spool: Spool) -> list[dict[str, Any]]:
    return [line for segment in spool.segments() if segment.is_file() for line in lines_of(segment)]


def segment_name(number: int) -> str:
    return f"{number:016d}.jsonl"


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def spool(spool_dir: Path) -> Iterator[Spool]:
    opened = Spool(spool_dir)
    yield opened
    opened.close()


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def close_unless_already_closed(spool: Spool) -> None:
    """Close the spool's descriptor, unless a failed rotation already closed it (the number may
    since belong to another file, which must not be closed behind its owner's back)."""
    try:
        target = Path(os.readlink(f"/proc/self/fd/{spool._fd}"))
    except OSError:
        return
    if target.parent == spool.directory.resolve():
        spool.close()


# -- lines ----------------------------------------------------------------------------------------


def test_lines_round_trip_as_json(spool: Spool) -> None:
    records = [
        record(1),
        record(2, user_email="zoë@example.com", model=None, status=401),
        record(3, nested={"a": [1, 2.5, True]}, text="line\nbreak\r\u2028and a \"quote\""),
    ]
    for each in records:
        spool.append(each)

    assert spooled(spool) == records
    # One line per record: newlines inside values are escaped, not written raw.
    assert spool.current.read_bytes().count(b"\n") == len(records)


def test_a_new_spool_starts_with_the_first_segment(spool: Spool, spool_dir: Path) -> None:
    assert spool.current == spool_dir / segment_name(1)
    assert spool.segments() == [spool.current]
    assert spool.current.read_bytes() == b""


def test_lines_reach_the_file_at_once_without_sync(spool: Spool) -> None:
    spool.append(record(1))
    # Another reader sees the line before any sync() or close(): it went to the kernel with os.write.
    assert lines_of(spool.current) == [record(1)]


# -- rotation -------------------------------------------------------------------------------------


def test_rotation_creates_the_next_segment_and_keeps_writing_there(spool_dir: Path) -> None:
    spool = Spool(spool_dir, segment_bytes=100)
    try:
        spool.append(fixed_record(1, 50))
        spool.append(fixed_record(2, 50))  # reaches 100 bytes: segment 1 is full
        spool.append(fixed_record(3, 50))
        assert spool.current.name == segment_name(2)
        spool.append(fixed_record(4, 50))
        spool.append(fixed_record(5, 50))
    finally:
        spool.close()

    assert [p.name for p in spool.segments()] == [segment_name(1), segment_name(2), segment_name(3)]
    assert [[r["n"] for r in lines_of(p)] for p in spool.segments()] == [[1, 2], [3, 4], [5]]
    assert spool.current.name == segment_name(3)


def test_rotation_never_splits_a_line(spool_dir: Path) -> None:
    spool = Spool(spool_dir, segment_bytes=64)
    try:
        for n in range(20):
            spool.append(record(n, pad="p" * (n * 7 % 40)))
    finally:
        spool.close()

    for segment in spool.segments():
        lines_of(segment)  # each segment ends in a newline and holds whole JSON lines
    assert [r["n"] for r in spooled(spool)] == list(range(20))


# -- reopening ------------------------------------------------------------------------------------


def test_reopening_continues_the_newest_segment(spool_dir: Path) -> None:
    first = Spool(spool_dir, segment_bytes=100)
    for n in range(3):  # segment 1: records 0 and 1; segment 2: record 2
        first.append(fixed_record(n, 50))
    first.close()

    second = Spool(spool_dir, segment_bytes=100)
    try:
        assert second.current.name == segment_name(2)
        second.append(fixed_record(3, 50))  # fills segment 2 and rotates to 3, not back to 1
        second.append(fixed_record(4, 50))
    finally:
        second.close()

    assert [[r["n"] for r in lines_of(p)] for p in second.segments()] == [[0, 1], [2, 3], [4]]


def test_reopening_keeps_counting_the_size_of_the_existing_segment(spool_dir: Path) -> None:
    first = Spool(spool_dir, segment_bytes=100)
    first.append(fixed_record(0, 60))
    first.close()

    second = Spool(spool_dir, segment_bytes=100)
    try:
        second.append(fixed_record(1, 60))  # 120 bytes with what the first process wrote: full
        second.append(fixed_record(2, 60))
    finally:
        second.close()

    assert [[r["n"] for r in lines_of(p)] for p in second.segments()] == [[0, 1], [2]]


# -- failed writes --------------------------------------------------------------------------------

# The child process caps its own file size with RLIMIT_FSIZE, and ignores SIGXFSZ so the kernel
# answers with a short write or EFBIG instead of killing it. That makes os.write fail for real,
# exactly as a full disk would, without patching anything and without touching the test process.
_FILL_UP = textwrap.dedent(
    """
    import json, resource, signal, sys
    from pathlib import Path
    from authz.audit.spool import Spool

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    spool = Spool(Path(sys.argv[1]))
    spool.append({"n": 1, "pad": "a" * 40})
    size = spool.current.stat().st_size
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    report = {"size": size, "attempts": []}
    for n, room in ((2, 10), (3, 0)):  # 10 bytes left: a short write; no room left: EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + room, hard))
        try:
            spool.append({"n": n, "pad": "b" * 40})
            report["attempts"].append({"n": n, "errno": None, "size": spool.current.stat().st_size})
        except OSError as exc:
            report["attempts"].append({"n": n, "errno": exc.errno, "size": spool.current.stat().st_size})
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    spool.append({"n": 4})
    spool.close()
    print(json.dumps(report))
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE short writes are Linux behaviour")
def test_a_failed_write_raises_and_leaves_no_partial_line(spool_dir: Path) -> None:
    child = subprocess.run(
        [sys.executable, "-c", _FILL_UP, str(spool_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout)

    # The short write (10 of ~50 bytes) and the refused one both raise, and both are cut back.
    assert report["attempts"] == [
        {"n": 2, "errno": errno.ENOSPC, "size": report["size"]},
        {"n": 3, "errno": errno.EFBIG, "size": report["size"]},
    ]
    # Once there is room again the next line starts right after the last whole one.
    assert lines_of(spool_dir / segment_name(1)) == [{"n": 1, "pad": "a" * 40}, {"n": 4}]


def test_a_value_json_cannot_encode_raises_before_anything_is_written(spool: Spool) -> None:
    spool.append(record(1))
    with pytest.raises(TypeError):
        spool.append(record(2, at=object()))
    assert spooled(spool) == [record(1)]


def test_a_failed_rotation_fails_only_appends_that_wrote_nothing(spool_dir: Path) -> None:
    spool = Spool(spool_dir, segment_bytes=1)  # every line fills its segment: each next one needs a new one
    (spool_dir / segment_name(2)).mkdir()  # so segment 2 cannot be created (EISDIR), even as root
    try:
        written = {}
        for n in (1, 2):
            try:
                spool.append(record(n))
                written[n] = True
            except OSError:
                written[n] = False

        assert False in written.values(), "the blocked rotation never made an append fail"
        for n, ok in written.items():
            # An append that raised must not have left its line behind, and one that returned must have.
            assert (record(n) in spooled(spool)) is ok, (n, ok)
    finally:
        close_unless_already_closed(spool)


def test_the_spool_recovers_once_the_next_segment_can_be_created(spool_dir: Path) -> None:
    spool = Spool(spool_dir, segment_bytes=1)
    obstacle = spool_dir / segment_name(2)
    obstacle.mkdir()
    try:
        spool.append(record(1))
        with pytest.raises(OSError):
            spool.append(record(2))
        obstacle.rmdir()  # the transient problem is gone

        spool.append(record(3))
        spool.append(record(4))

        assert spooled(spool) == [record(1), record(3), record(4)]
        assert spool.current.name == segment_name(3)
    finally:
        close_unless_already_closed(spool)


# -- permissions ----------------------------------------------------------------------------------


def test_segments_are_0600_and_the_directory_0700_whatever_the_umask(spool_dir: Path) -> None:
    with umask(0):  # the most permissive umask: the modes must come from the spool itself
        spool = Spool(spool_dir, segment_bytes=100)
        try:
            for n in range(3):
                spool.append(fixed_record(n, 50))
        finally:
            spool.close()

    assert spool_dir.stat().st_mode & 0o777 == 0o700
    assert len(spool.segments()) == 2
    for segment in spool.segments():
        assert segment.stat().st_mode & 0o777 == 0o600, segment.name


def test_one_authz_per_spool_and_its_replica_id_follows_from_it(tmp_path: Path) -> None:
    from authz.process import SpoolInUse, claim_spool

    spool_dir = tmp_path / "spool"
    fd, replica = claim_spool(spool_dir)
    try:
        with pytest.raises(SpoolInUse, match="another authz process"):
            claim_spool(spool_dir)
        other_fd, other = claim_spool(tmp_path / "elsewhere")
        os.close(other_fd)
        assert other != replica
    finally:
        os.close(fd)
    again, same = claim_spool(spool_dir)  # the next process on this spool is the same replica
    os.close(again)
    assert same == replica
