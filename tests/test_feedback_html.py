"""A student's formulas in a feedback page are MathML and nothing else: latex2mathml passes the
text of ``\\text{...}`` and the target of ``\\href`` through as markup, so its output is cleaned."""
import re

import pytest

from grading.feedback_html import render_markdown


@pytest.mark.parametrize("tex", [r"\text{<script>alert(1)</script>}", r"\href{javascript:alert(1)}{x}",
                                 r"\mathrm{<img src=x onerror=alert(1)>}", r"\text{<b>x}",
                                 r"\text{<svg onload=alert(1)>}</svg>"])
def test_markup_inside_a_formula_never_reaches_the_page(tex):
    page = render_markdown(f"my answer ${tex}$ done")
    tags = set(re.findall(r"<\s*([a-zA-Z][\w:-]*)", page))
    assert tags <= {"p", "math", "mrow", "mtext", "mi", "mo", "mn", "code"}, (tags, page)
    attributes = " ".join(re.findall(r"<[a-zA-Z][^>]*>", page))  # inside real tags only
    assert "javascript:" not in attributes and not re.search(r"\son\w+\s*=", attributes), page


def test_ordinary_formulas_stay_mathml():
    page = render_markdown(r"$\frac{a}{b}$ and $$\sqrt{\bar\alpha_t}\, x_0$$ with $x < y$")
    assert page.count("<math") == 3 and "<mfrac>" in page and "<msqrt>" in page and "&lt;" in page
