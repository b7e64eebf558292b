"""The training bar counts finished steps (never waits for them) and leaves evals out of its rate."""
import time

from magnet_jax.train.progress import StepProgress


class FakeStep:
    """A dispatched step's output: ready once `finish` is called (or waited for)."""

    def __init__(self):
        self.ready = False

    def is_ready(self):
        return self.ready

    def block_until_ready(self):
        self.ready = True
        return self


def test_steps_count_when_finished_and_pauses_leave_the_timing():
    bar = StepProgress(total=10, initial=2, desc="t")
    try:
        a, b = FakeStep(), FakeStep()
        bar.dispatched(a)
        bar.dispatched(b)
        assert bar.bar.n == 2  # still running: not counted
        a.ready = True
        bar.dispatched(FakeStep())
        assert bar.bar.n == 3 and len(bar.pending) == 2  # in order: b still runs
        with bar.paused():  # waits for the pending steps first, then an eval of 0.3 s
            assert bar.bar.n == 5 and not bar.pending
            time.sleep(0.3)
        assert bar.bar.format_dict["elapsed"] < 0.25
    finally:
        bar.close()


def test_a_disabled_bar_is_silent():
    bar = StepProgress(total=10, initial=0, desc="t", enabled=False)
    bar.dispatched(FakeStep())
    with bar.paused():
        pass
    bar.show(loss="1")
    bar.finish_pending()
    bar.close()
    assert bar.bar is None and not bar.pending
