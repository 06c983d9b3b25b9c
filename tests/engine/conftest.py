import pytest

from pdserve.engine.llm import LLM


def check_after_each_step(llm: LLM) -> None:
    """Wrap the engine's step so that every step is followed by the integrity check."""
    core = llm.core
    step = core.step

    def checked_step():
        events = step()
        core.check_integrity()
        return events

    core.step = checked_step


def assert_all_blocks_released(llm: LLM) -> None:
    pool = llm.core.scheduler.kv.pool
    assert not llm.core.has_unfinished
    assert all(r == 0 for r in pool.ref_cnts)
    assert pool.num_free_blocks == pool.num_blocks


@pytest.fixture
def make_llm():
    made = []

    def make(model, **kwargs):
        kwargs.setdefault("num_blocks", 512)  # small pool: integrity checks walk every block
        llm = LLM(model, **kwargs)
        check_after_each_step(llm)
        made.append(llm)
        return llm

    yield make
    for llm in made:
        assert_all_blocks_released(llm)
