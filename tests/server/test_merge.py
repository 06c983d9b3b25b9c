"""generation.merge: streams interleaved as items arrive, never read past an item the consumer
still holds (stream items share a tracker that reading the next event advances)."""

import asyncio

from pdserve.server.generation import merge


async def _tracked(values, tracker: dict):
    """Yields the same dict each time, updated in place before each yield (as the server's
    per-request output tracker is)."""
    for v in values:
        tracker["value"] = v
        await asyncio.sleep(0)
        yield tracker


def test_a_lagging_consumer_sees_each_item_as_it_was_yielded():
    async def main():
        seen = []
        streams = [_tracked([1, 2, 3], {}), _tracked([10, 20], {})]
        async for index, item in merge(streams):
            for _ in range(5):  # the consumer is slow: the pumps get every chance to run
                await asyncio.sleep(0)
            seen.append((index, item["value"]))
        return seen

    seen = asyncio.run(main())
    assert [v for i, v in seen if i == 0] == [1, 2, 3]
    assert [v for i, v in seen if i == 1] == [10, 20]


def test_an_error_in_one_stream_reaches_the_consumer_and_closes_the_others():
    closed = []

    async def failing():
        yield {"value": 1}
        raise RuntimeError("engine went away")

    async def endless():
        try:
            while True:
                await asyncio.sleep(0)
                yield {"value": 0}
        finally:
            closed.append(True)

    async def main():
        async for _ in merge([failing(), endless()]):
            pass

    try:
        asyncio.run(main())
    except RuntimeError as e:
        assert str(e) == "engine went away"
    else:
        raise AssertionError("the stream's error was swallowed")
    assert closed == [True]
