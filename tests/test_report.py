"""`vaelab report`: one valid, self-contained HTML file with every figure inlined."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser

import pytest
from PIL import Image

from vaelab.cli import main

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class StrictParser(HTMLParser):
    """Records every tag and attribute; fails on unbalanced or mis-nested elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.doctype = None

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> StrictParser:
    parser = StrictParser()
    parser.feed(page)
    parser.close()
    assert parser.errors == [] and parser.stack == [], (parser.errors, parser.stack)
    assert parser.doctype and parser.doctype.lower() == "doctype html"
    return parser


@pytest.fixture
def run(tmp_path, fake_mnist):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "mnist", "--data-dir", str(fake_mnist), "--epochs", "2", "--batch-size", "16",
                 "--hidden", "32,16", "--latent-dim", "3", "--out", str(out), "--quiet"]) == 0
    return out


def images_of(parser: StrictParser) -> list[Image.Image]:
    found = []
    for tag, attrs in parser.tags:
        if tag == "img":
            src = attrs["src"]
            assert src.startswith("data:image/png;base64,")
            img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True)))
            img.load()
            found.append(img)
    return found


def test_report_is_valid_self_contained_html_with_every_figure(run, capsys):
    (run / "eval.json").write_text(json.dumps({
        "test": {"nll_bound": 91.25, "num_importance_samples": 5000},
        "active_units": 3, "note": "<script>alert(1)</script>", "per_class": [{"label": 0, "elbo": 1.5}],
    }))
    assert main(["report", str(run)]) == 0
    path = run / "report.html"
    assert str(path) in capsys.readouterr().out
    page = path.read_text()
    parser = parse(page)
    # Nothing outside the file: no URL anywhere, and every src/href is inline data.
    assert "http://" not in page and "https://" not in page
    for _tag, attrs in parser.tags:
        for key in ("src", "href"):
            if key in attrs:
                assert attrs[key].startswith("data:"), attrs
    assert not any(tag in ("script", "link", "iframe") for tag, _ in parser.tags)  # the eval note is escaped
    text = " ".join(parser.text)
    assert "<script>alert(1)</script>" in text and "nll_bound" in text and "91.25" in text
    titles = [t.strip() for t in parser.text]
    for title in ("Samples", "Reconstructions", "Interpolation (lerp)", "Interpolation (slerp)", "Latent traversal",
                  "Latent manifold", "Attribute edit", "Loss curves", "Latent codes of the test set"):
        assert title in titles, title
    assert len(images_of(parser)) >= 10
    assert "val_loss" in text and "latent_dim" in text  # metrics and config tables


def test_report_without_the_dataset_still_renders_what_it_can(run, tmp_path):
    out = tmp_path / "r" / "report.html"
    assert main(["report", str(run), "--out", str(out), "--data-dir", str(tmp_path / "gone")]) == 0
    parser = parse(out.read_text())
    text = " ".join(parser.text)
    assert "not available" in text and "Reconstructions" not in text
    assert "Samples" in text and "Latent traversal" in text
    assert len(images_of(parser)) >= 3
    assert not (run / "report.html").exists()


def test_report_on_a_missing_run_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0]
