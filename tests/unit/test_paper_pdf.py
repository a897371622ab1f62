"""The paper compiles to a PDF whose tables show the leaderboard's numbers, rounded once.

Marked ``latex``: skipped when latexmk, pdflatex, bibtex, pdftotext or pdftoppm is absent
(``.ci/run`` and ``make paper`` install them from Debian packages). The committed results are
compiled once per session, in a temporary copy of ``paper/``.
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from benchmark.paper import PaperError, build_pdf, generate, slug, values_tex

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("latexmk", "pdflatex", "bibtex", "pdftotext", "pdftoppm")
pytestmark = [
    pytest.mark.latex,
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in TOOLS),
        reason="TeX tools absent (apt-get install texlive-latex-recommended texlive-fonts-recommended latexmk poppler-utils)",
    ),
]
NUM = re.compile(r"\d+\.\d{4}")


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """paper/ copied, regenerated from the committed results and compiled (latexmk once)."""
    paper = tmp_path_factory.mktemp("paper")
    for name in ("main.tex", "refs.bib"):
        shutil.copy(ROOT / "paper" / name, paper / name)
    generate(ROOT / "results", paper)
    build_pdf(paper)  # raises on a LaTeX error or an undefined reference/citation
    return paper


def _text(pdf: Path) -> str:
    return subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout


def _rows(tex: str) -> list[tuple[str, list[str]]]:
    """(model, numbers in order) for each body row of a generated table."""
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0]
    out = []
    for line in body.strip().splitlines():
        m = re.match(r"\\texttt\{(.+?)\}", line)
        assert m, line
        out.append((m.group(1).replace("\\_", "_"), NUM.findall(line)))
    return out


def test_compiles_without_undefined_references(built):
    log = (built / "main.log").read_text(errors="replace")
    assert (built / "main.pdf").stat().st_size > 10_000
    assert "undefined" not in log.lower() and "Warning: Citation" not in log


def test_every_table_number_is_in_the_pdf_as_in_the_leaderboard(built):
    text = _text(built / "main.pdf")
    lines = [NUM.findall(ln) for ln in text.splitlines()]
    csv_rows = list(csv.DictReader((ROOT / "results" / "leaderboard.csv").open(encoding="utf-8")))
    # The leaderboard tables (all.tex lists them; the audit tables come from results/audit).
    listed = re.findall(r"\\input\{tables/([^}]+)\}", (built / "tables" / "all.tex").read_text())
    tables = sorted(built / "tables" / f"{name}.tex" for name in listed)
    assert set(listed) == {p.stem for p in (built / "tables").glob("*.tex")} - {
        "all", "appendix", "values", "audit", "conversation"
    }
    assert tables
    seen = 0
    for table in tables:
        by_model = {r["model"]: r for r in csv_rows if slug(r["dataset"], r["split"], r["eval"]) == table.stem}
        rows = _rows(table.read_text())
        assert sorted(m for m, _ in rows) == sorted(by_model), table.name
        for model, numbers in rows:
            assert numbers, (table.name, model)
            # Each number is a leaderboard value of this very row, rounded once to 4 decimals.
            rounded = {f"{float(v):.4f}" for k, v in by_model[model].items() if k.startswith("test/") and v}
            assert set(numbers) <= rounded, (table.name, model, set(numbers) - rounded)
            # ... and the PDF shows the row with exactly these numbers, in this order, on one line.
            assert numbers in lines, (table.name, model, numbers)
            seen += 1
    assert seen == len(csv_rows)


def test_every_conversation_row_is_in_the_pdf_as_recomputed_from_its_dialogues(built):
    """Each row of the conversation tables: its name, simulator, session count and every metric
    (recomputed from the committed dialogues) on one line of the PDF."""
    from benchmark.conversation.table import cells, session_sets

    text = _text(built / "main.pdf")
    sets = session_sets(ROOT / "results" / "conversation")
    assert sets
    for ss in sets:
        for row in ss.rows:
            shown = [row.recommender, row.simulator, f"{row.sessions}{'*' if row.recomputed else ''}",
                     str(len(row.records)), *cells(row, ss.turns, ss.k, "{}\0({})".format)]
            # several seeds: the mean, then the std in parentheses (a thin space between them, or none)
            pattern = r"\s+".join(r"\s*".join(re.escape(part) for part in c.split("\0")) for c in shown)
            assert re.search(pattern, text), shown


def test_first_pages_render_and_are_not_blank(built, tmp_path):
    subprocess.run(
        ["pdftoppm", "-r", "40", "-f", "1", "-l", "4", "-png", str(built / "main.pdf"), str(tmp_path / "page")],
        check=True,
    )
    from PIL import Image

    pages = sorted(tmp_path.glob("page*.png"))
    assert len(pages) == 4
    for p in pages:
        gray = np.asarray(Image.open(p).convert("L"), dtype=np.float64)
        ink = float((gray < 128).mean())
        assert 0.01 < ink < 0.5, f"{p.name}: {ink:.3f} of the page is dark"


def test_undefined_reference_or_value_is_an_error(tmp_path):
    doc = tmp_path / "main.tex"
    doc.write_text("\\documentclass{article}\\begin{document}See Table~\\ref{tab:none}.\\end{document}\n")
    with pytest.raises(PaperError, match=r"Reference `tab:none' on page 1 undefined"):
        build_pdf(tmp_path)
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "values.tex").write_text(values_tex({"d/loo/full/pop/hr@10": "0.0859"}, {}))
    doc.write_text(
        "\\documentclass{article}\\input{tables/values}\\begin{document}\\lb{d/loo/full/pop/hr@10}\\end{document}\n"
    )
    build_pdf(tmp_path)
    assert "0.0859" in _text(tmp_path / "main.pdf")
    doc.write_text("\\documentclass{article}\\input{tables/values}\\begin{document}\\lb{d/loo/full/pop/hr@5}\\end{document}\n")
    with pytest.raises(PaperError, match="unknown leaderboard value d/loo/full/pop/hr@5"):
        build_pdf(tmp_path)
