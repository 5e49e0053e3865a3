"""Polls side by side, lines kept whole: the console's grouping, on real streams and threads."""

from __future__ import annotations

import io
import threading

from fetcher.console import Console


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_the_oldest_group_writes_at_once_and_later_ones_follow_whole() -> None:
    out, err = io.StringIO(), io.StringIO()
    console = Console(out, err)
    first, second = console.group(), console.group()
    first.__enter__()
    console.write("out", "first 1\n")
    second.__enter__()  # a second poll starts
    # the second group's context is current now: its lines are held
    console.write("out", "second 1\n")
    console.write("err", "second error\n")
    assert lines(out) == ["first 1"] and lines(err) == []
    second.__exit__(None, None, None)  # the second poll ends first: still held
    assert lines(out) == ["first 1"]
    first.__exit__(None, None, None)
    assert lines(out) == ["first 1", "second 1"]
    assert lines(err) == ["second error"]


def test_lines_outside_any_group_are_written_at_once() -> None:
    out = io.StringIO()
    console = Console(out, io.StringIO())
    with console.group():
        console.write("out", "in the poll\n")
    console.write("out", "sleeping\n")
    assert lines(out) == ["in the poll", "sleeping"]


def test_polls_on_threads_come_out_in_the_order_they_started() -> None:
    out = io.StringIO()
    console = Console(out, io.StringIO())
    started = [threading.Event() for _ in range(3)]
    release = [threading.Event() for _ in range(3)]

    def poll(n: int) -> None:
        with console.group():
            started[n].set()
            for line in range(3):
                console.write("out", f"poll {n} line {line}\n")
            release[n].wait(5)

    threads = []
    for n in range(3):
        thread = threading.Thread(target=poll, args=(n,))
        thread.start()
        started[n].wait(5)  # so that they open their groups in order
        threads.append(thread)
    for n in (2, 1, 0):  # they end in the reverse order
        release[n].set()
    for thread in threads:
        thread.join(5)
    assert lines(out) == [f"poll {n} line {line}" for n in range(3) for line in range(3)]
