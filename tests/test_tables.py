"""The one table formatter: Markdown and aligned plain text."""

from __future__ import annotations

from apd_edge.tables import markdown_table, text_table


def test_markdown_table_alignment_and_pipes():
    md = markdown_table(["rank", "node", "drop"], [[1, "`a|b`", "+0.50"], [2, "c", ""]], align="rlr")
    assert md.splitlines() == ["| rank | node | drop |", "|---:|---|---:|", "| 1 | `a/b` | +0.50 |", "| 2 | c |  |"]
    assert markdown_table(("a", "b"), []).splitlines()[1] == "|---|---|"


def test_text_table_widths_alignment_rule():
    text = text_table(["model", "ms"], [["espnet", 1.5], ["bisenetv2", "12.25"]], align="lr")
    assert text.splitlines() == ["model         ms",
                                 "---------  -----",
                                 "espnet       1.5",
                                 "bisenetv2  12.25"]
    assert text_table(None, [("a", "x"), ("long", "y")]).splitlines() == ["a     x", "long  y"]
    assert text_table(["a", "b"], [], rule=False) == "a  b"
    assert text_table(None, []) == ""


def test_a_short_row_runs_on_without_widening_its_column():
    """A skipped row's reason starts in its column and runs to the end of the line, unpadded."""
    reason = "TensorRT not installed " + "x" * 60
    lines = text_table(["m", "status", "ms", "fps"],
                       [["a", "ok", "1.00", "900"], ["b", "skipped", reason]]).splitlines()
    assert lines[0] == "m  status   ms    fps"
    assert lines[2] == "a  ok       1.00  900"
    assert lines[3] == "b  skipped  " + reason and lines[3].index(reason) == lines[0].index("ms")
    assert all(ln == ln.rstrip() for ln in lines)
