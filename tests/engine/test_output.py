from pdserve.engine.output import OutputTracker, RequestOutput
from pdserve.types import FinishReason, SamplingParams, TokenEvent


class CharDetokenizer:
    """Token id = a character's code point."""

    def push(self, token_ids):
        return "".join(map(chr, token_ids))


def feed(text, stop=(), include=False, final_reason=FinishReason.LENGTH):
    tracker = OutputTracker(
        RequestOutput("r", None, []),
        SamplingParams(max_tokens=100, stop=tuple(stop), include_stop_str_in_output=include),
        CharDetokenizer(),
    )
    pieces = []
    for i, ch in enumerate(text):
        last = i == len(text) - 1
        event = TokenEvent("r", (ord(ch),), final_reason if last else None)
        pieces.append(tracker.add(event, now=float(i)))
        if tracker.output.is_finished:
            break
    return tracker.output, pieces


def test_text_streams_unchanged_without_stop_strings():
    out, pieces = feed("hello")
    assert out.text == "hello" and "".join(pieces) == "hello"
    assert out.finish_reason is FinishReason.LENGTH
    assert out.token_times_s == [0.0, 1.0, 2.0, 3.0, 4.0] and out.first_token_s == 0.0


def test_stop_string_cuts_the_text_and_finishes():
    out, pieces = feed("abc END tail", stop=["END"])
    assert out.text == "abc " and "".join(pieces) == "abc "
    assert out.finish_reason is FinishReason.STOP and out.stop_reason == "END"


def test_stop_string_included_when_asked():
    out, _ = feed("abc END tail", stop=["END"], include=True)
    assert out.text == "abc END"


def test_possible_stop_prefix_is_held_then_released():
    out, pieces = feed("aEb", stop=["END"])
    assert pieces == ["a", "", "Eb"]
    assert out.text == "aEb" and out.finish_reason is FinishReason.LENGTH


def test_earliest_of_several_stop_strings_wins():
    out, _ = feed("xx B yy A", stop=["A", "B"])
    assert out.text == "xx " and out.stop_reason == "B"
