"""Row bands: results in order, the caller's own thread used first, and no waiting behind busy helpers."""

from __future__ import annotations

import threading

import pytest

from edge_agent.bands import MAX_AUTO_THREADS, RowBands, usable_cores


def test_spans_cover_every_row_once_in_as_many_bands_as_pay_off() -> None:
    bands = RowBands(3)
    assert bands.spans(256, 10**9) == [(0, 85), (85, 170), (170, 256)]
    assert bands.spans(2, 10**9) == [(0, 1), (1, 2)]  # never more bands than rows
    assert bands.spans(256, 1000) == [(0, 256)]  # too little work to hand over
    assert RowBands(1).spans(256, 10**9) == [(0, 256)]


def test_run_returns_each_band_result_in_order_and_runs_the_first_in_the_calling_thread() -> None:
    bands = RowBands(4)
    seen: dict[tuple[int, int], str] = {}

    def work(first: int, stop: int) -> list[int]:
        seen[(first, stop)] = threading.current_thread().name
        return list(range(first, stop))

    spans = bands.spans(100, 10**9)
    results = bands.run(work, spans)
    assert [x for part in results for x in part] == list(range(100))
    assert seen[spans[0]] == threading.current_thread().name


def test_a_band_no_helper_has_started_runs_in_the_calling_thread() -> None:
    bands = RowBands(2)  # one helper thread
    release = threading.Event()
    started = threading.Event()

    def block(first: int, stop: int) -> None:
        started.set()
        release.wait(10)

    holder = threading.Thread(target=bands.run, args=(block, [(0, 1), (1, 2)]))
    holder.start()  # its second band occupies the only helper
    try:
        assert started.wait(10)
        threads: list[str] = []
        bands.run(lambda first, stop: threads.append(threading.current_thread().name), [(0, 1), (1, 2)])
        assert threads == [threading.current_thread().name] * 2  # did not wait for the busy helper
    finally:
        release.set()
        holder.join(10)


def test_an_error_in_any_band_reaches_the_caller() -> None:
    bands = RowBands(3)

    def work(first: int, stop: int) -> int:
        if first > 0:
            raise ValueError(f"band {first}:{stop} failed")
        return 0

    with pytest.raises(ValueError, match="failed"):
        bands.run(work, [(0, 1), (1, 2), (2, 3)])
    assert bands.run(lambda first, stop: first, [(0, 1), (1, 2)]) == [0, 1]  # still usable


def test_configure_picks_the_usable_cores_up_to_a_cap_and_refuses_counts_out_of_range() -> None:
    bands = RowBands(0)
    assert bands.threads == min(MAX_AUTO_THREADS, usable_cores())
    bands.configure(6)
    assert bands.threads == 6
    with pytest.raises(ValueError, match="from 1 to 64"):
        bands.configure(-1)
    with pytest.raises(ValueError, match="from 1 to 64"):
        bands.configure(65)
