"""The training bar counts finished steps (never waits for them) and leaves evals out of its rate."""
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
    clock = [1000.0]  # the bar's clock, moved by hand: the test sees the behaviour, not the machine's speed
    bar.bar._time = lambda: clock[0]
    bar.bar.start_t = bar.bar.last_print_t = clock[0]
    try:
        a, b = FakeStep(), FakeStep()
        bar.dispatched(a)
        bar.dispatched(b)
        assert bar.bar.n == 2  # still running: not counted
        a.ready = True
        bar.dispatched(FakeStep())
        assert bar.bar.n == 3 and len(bar.pending) == 2  # in order: b still runs
        clock[0] += 2.0  # 2 s of steps
        with bar.paused():  # waits for the pending steps first, then an eval of 300 s
            assert bar.bar.n == 5 and not bar.pending
            clock[0] += 300.0
        assert bar.bar.format_dict["elapsed"] == 2.0  # the steps' time only
        clock[0] += 1.0
        assert bar.bar.format_dict["elapsed"] == 3.0
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
