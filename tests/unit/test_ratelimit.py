from __future__ import annotations

from kici_core.ratelimit import SlidingWindowLimiter, retry_after_header


def test_allows_limit_then_refuses_until_window_passes() -> None:
    lim = SlidingWindowLimiter(window=60)
    assert all(lim.hit("s", 3, t) is None for t in (0.0, 1.0, 2.0))
    wait = lim.hit("s", 3, 10.0)
    assert wait is not None and abs(wait - 50.0) < 1e-9
    assert retry_after_header(wait) == "50"
    assert lim.hit("s", 3, 60.5) is None  # the event at t=0 left the window
    assert lim.hit("other", 3, 10.0) is None


def test_keys_are_bounded() -> None:
    lim = SlidingWindowLimiter(window=60, max_keys=2)
    for k in ("a", "b", "c"):
        assert lim.hit(k, 1, 0.0) is None
    assert lim.hit("a", 1, 1.0) is None  # "a" was evicted, so it starts afresh
    assert lim.hit("c", 1, 1.0) is not None
