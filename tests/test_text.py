"""esm_tasks._text's own behaviour (an internal module): what a log line or a header may show of
text a message chose, bounded and escaped."""

from esm_tasks._text import bounded


def test_control_characters_are_escaped_and_a_long_text_is_cut_saying_how_long_it_was() -> None:
    assert bounded("one\nline") == "one\\nline"
    assert bounded("x" * 20, limit=8) == "xxxxxxxx... (20 characters)"


def test_characters_no_terminal_can_show_are_escaped_within_the_limit() -> None:
    shown = bounded("\ud800" * 10, limit=8)  # lone surrogates: each escapes to six characters
    assert shown == "\\ud800\\u" + "... (10 characters)"
    assert shown.encode("utf-8")  # a header or a terminal can carry it
