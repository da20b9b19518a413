"""The batch result channel's framing, fed byte by byte as a hostile child might write it."""

from __future__ import annotations

import struct

import pytest

from rbi.sandbox import frames


def _feed_bytewise(reader: frames.FrameReader, data: bytes) -> list[tuple[int, bytes]]:
    done: list[tuple[int, bytes]] = []
    for i in range(len(data)):
        done += reader.feed(data[i:i + 1])
    return done


def test_frames_split_anywhere_come_out_whole_and_in_order() -> None:
    data = frames.encode(0, b'{"a":1}') + frames.encode(1, b"") + frames.encode(2, b"x" * 1000)
    reader = frames.FrameReader(expected=3, max_payload=4096)
    assert _feed_bytewise(reader, data) == [(0, b'{"a":1}'), (1, b""), (2, b"x" * 1000)]
    assert reader.pending == 0


def test_a_cut_off_frame_stays_pending() -> None:
    reader = frames.FrameReader(expected=2, max_payload=4096)
    assert reader.feed(frames.encode(0, b"whole") + frames.encode(1, b"cut off")[:-3]) == [(0, b"whole")]
    assert reader.pending > 0


@pytest.mark.parametrize(("data", "kind"), [
    (b"not a frame at all", "malformed"),
    (b"RBIF" + struct.pack("!II", 0, 2**31), "oversize"),
    (frames.encode(5, b"{}"), "out_of_order"),
    (frames.encode(0, b"{}") + frames.encode(0, b"{}"), "out_of_order"),
    (frames.encode(0, b"{}") + frames.encode(1, b"{}"), "extra"),
])
def test_hostile_frames_are_refused(data: bytes, kind: str) -> None:
    reader = frames.FrameReader(expected=1, max_payload=4096)
    with pytest.raises(frames.FrameError) as caught:
        reader.feed(data)
    assert caught.value.kind == kind
    # Nothing after the first bad byte is ever taken as a result.
    assert reader.next_index <= 1
