"""Stop strings matched on streamed text."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from orca_gateway.stop_strings import StopStringMatcher


def _run(stops, pieces):
    matcher = StopStringMatcher(stops)
    out, stopped = [], False
    for i, piece in enumerate(pieces):
        text, stopped = matcher.feed(piece, final=i == len(pieces) - 1)
        out.append(text)
        if stopped:
            break
    return out, stopped


def _reference(stops, text):
    hits = [text.find(s) for s in stops if s and s in text]
    return (text[: min(hits)], True) if hits else (text, False)


def test_stop_string_split_across_chunks_is_never_emitted():
    out, stopped = _run(["STOP"], ["hello S", "T", "O", "P and more", " tail"])
    assert stopped
    assert "".join(out) == "hello "
    assert all("S" not in piece for piece in out)


def test_held_back_text_is_released_when_it_cannot_be_a_stop():
    matcher = StopStringMatcher(["xyz"])
    # The last len("xyz") - 1 characters are held back, then released.
    assert matcher.feed("abcx") == ("ab", False)
    assert matcher.feed("q") == ("c", False)
    assert matcher.feed("", final=True) == ("xq", False)


def test_earliest_match_wins_even_when_a_later_stop_completes_first():
    # "bc" completes first, but "abcd" starts earlier: the text is cut before "abcd".
    out, stopped = _run(["abcd", "bc"], ["xa", "bc", "d", "e"])
    assert stopped and "".join(out) == "x"
    out, stopped = _run(["abcd", "bc"], ["xa", "bc", "X", "e"])
    assert stopped and "".join(out) == "xa"


def test_no_stops_passes_text_through():
    assert _run([], ["a", "b"]) == (["a", "b"], False)


def test_final_feed_takes_a_pending_match():
    matcher = StopStringMatcher(["abcd", "b"])
    # "b" matched, but "ab" may still become "abcd", which starts earlier.
    assert matcher.feed("zab") == ("", False)
    assert matcher.feed("", final=True) == ("za", True)


@settings(max_examples=300, deadline=None)
@given(
    stops=st.lists(st.text(alphabet="abc", min_size=1, max_size=4), min_size=1, max_size=4),
    text=st.text(alphabet="abcd", max_size=30),
    cuts=st.lists(st.integers(0, 30), max_size=8),
)
def test_streamed_result_equals_truncating_the_whole_text(stops, text, cuts):
    bounds = sorted({0, len(text), *[min(c, len(text)) for c in cuts]})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)] or [""]
    out, stopped = _run(stops, pieces)
    assert ("".join(out), stopped) == _reference(stops, text)
