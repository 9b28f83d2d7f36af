"""The documentation site builds with `mkdocs build --strict` (no broken link, anchor or missing page),
holds every page, fetches nothing from outside, and every figure the README and the pages embed exists."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from docs_blocks import DOCS, README, ROOT, doc_pages

if not os.environ.get("CI"):  # CI installs the docs extra (scripts/test.sh) and must run these
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
    pytest.importorskip("material", reason="the docs extra is not installed: pip install -e '.[docs]'")
import yaml  # noqa: E402 - installed with mkdocs

CONFIG = ROOT / "mkdocs.yml"
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)[^)]*\)|<img[^>]+src=\"([^\"]+)\"")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)[^)]*\)")
OUTSIDE = ("fonts.googleapis.com", "fonts.gstatic.com", "cdn.jsdelivr.net", "unpkg.com", "cdnjs.cloudflare.com")


def _config() -> dict:
    # mkdocs.yml may hold !!python tags in other projects; this one must load as plain YAML.
    return yaml.safe_load(CONFIG.read_text())


def _nav_pages(nav) -> list[str]:
    pages: list[str] = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(CONFIG), "-d", str(out)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return out


def test_strict_build_has_every_page(site):
    nav = _nav_pages(_config()["nav"])
    on_disk = sorted(p.relative_to(DOCS).as_posix() for p in doc_pages())
    assert sorted(nav) == on_disk, "every page is in mkdocs.yml's nav and every nav entry is a page"
    for page in nav:
        html = site / ("index.html" if page == "index.md" else page.removesuffix(".md") + "/index.html")
        assert html.is_file(), f"{page} was not built"
    # The generated references are filled in, not left as markers.
    cli = (site / "reference/cli/index.html").read_text()
    assert "--latent-dim" in cli and "vaelab import-weights" in cli and "generated:" not in cli
    config = (site / "reference/config/index.html").read_text()
    assert "kl_warmup_epochs" in config and "--kl-warmup" in config
    api = (site / "reference/api/index.html").read_text()
    assert "vaelab.latent.interpolate_images" in api and "vaelab.models.vae.VAE" in api
    # The README's tested example is included into Getting started, not copied.
    assert "interpolate_codes" in (site / "getting-started/index.html").read_text()


def test_the_site_fetches_nothing_from_outside(site):
    config = _config()
    assert config["theme"]["font"] is False, "theme.font: false (no Google Fonts)"
    plugins = [p if isinstance(p, str) else next(iter(p)) for p in config.get("plugins", [])]
    assert set(plugins) <= {"search", "offline"}, f"only local plug-ins, got {plugins}"
    assert not config.get("extra_javascript") and not config.get("extra_css")
    for html in site.rglob("*.html"):
        text = html.read_text()
        for host in OUTSIDE:
            assert host not in text, f"{html.relative_to(site)} loads from {host}"


def _markdown_files() -> list[Path]:
    return [README, *doc_pages()]


def _targets(pattern: re.Pattern, text: str) -> list[str]:
    # Code blocks and spans are not markdown: strip them before looking for links and images.
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    text = re.sub(r"`[^`\n]*`", "", text)
    return [next(g for g in m.groups() if g) for m in pattern.finditer(text)]


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_embedded_figure_exists(path):
    images = _targets(IMAGE, path.read_text())
    missing = [src for src in images if not src.startswith(("http://", "https://", "data:"))
               and not (path.parent / src).is_file()]
    assert not missing, f"{path.relative_to(ROOT)} embeds missing figures: {missing}"


def test_readme_links_point_at_real_files():
    # mkdocs checks the pages' links; the README is not part of the site, so check its own here.
    links = [link.split("#", 1)[0] for link in _targets(LINK, README.read_text())
             if not link.startswith(("http://", "https://", "mailto:", "#"))]
    assert links, "the README links to the docs pages"
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_readme_is_the_short_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    # The two commands for a fresh machine, exactly.
    assert "python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 -e . && .venv/bin/vaelab demo" in text
    assert "\nbash scripts/test.sh\n" in text
    for figure in ("docs/images/mnist-latent.png", "docs/images/mnist-reconstructions.png"):
        assert figure in text
