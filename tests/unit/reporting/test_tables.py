"""The one table renderer (icl_lens.reporting.tables): the same rows as text, markdown and HTML, and
the number formats of the cells."""

from icl_lens.reporting.tables import (
    Html,
    Table,
    format_interval,
    format_mean_std,
    format_summary,
    format_value,
)

TABLE = Table(["task", "SimAOU"], [["sst2", "0.200 [0.100, 0.300]"], ["a|b", "<b>"]], caption="x & y")


def test_text_right_aligns_columns_under_a_dashed_rule():
    assert TABLE.text().splitlines() == [
        "task                SimAOU",
        "----  --------------------",
        "sst2  0.200 [0.100, 0.300]",
        " a|b                   <b>",
    ]


def test_markdown_escapes_pipes_inside_cells():
    assert TABLE.markdown().splitlines() == [
        "| task | SimAOU |",
        "|---|---|",
        "| sst2 | 0.200 [0.100, 0.300] |",
        "| a\\|b | <b> |",
    ]


def test_html_escapes_cells_except_html_ones():
    page = TABLE.html()
    assert page.startswith('<div class="table-wrap"><table><caption>x &amp; y</caption>')
    assert "<td>&lt;b&gt;</td>" in page and "<th>SimAOU</th>" in page
    link = Table(["cell"], [[Html('<a href="c/report.html">c</a>')]]).html()
    assert '<td><a href="c/report.html">c</a></td>' in link


def test_interval_formats():
    assert format_interval(0.855, [0.805, 0.9]) == "0.855 [0.805, 0.900]"
    assert format_interval(0.25, [0.1, 0.4], 1, scale=100) == "25.0 [10.0, 40.0]"
    assert format_interval(0.5, [0.1, float("nan")]) == "0.500"  # a non-finite interval is left out
    assert format_interval(None, [0.1, 0.2]) == format_interval(float("nan"), None) == "–"
    assert format_summary({"mean": 0.2, "ci": [0.1, 0.3], "per_layer": [0.2]}) == "0.200 [0.100, 0.300]"
    assert format_summary(None) == format_summary({}) == "–"
    assert format_mean_std({"mean": 0.8, "std": 0.05, "ci": [0.7, 0.9]}, 100, 1) == "80.0 ± 5.0 [70.0, 90.0]"
    assert format_mean_std({"mean": 0.8, "std": 0.0}) == "0.800 ± 0.000"
    assert format_value(None) == "–" and format_value(float("nan")) == "NaN" and format_value(1 / 3) == "0.333"
    assert format_value(True) == "True" and format_value(7) == "7"
