"""`torchmos report` in a real browser: headless Chromium (Debian's ``chromium`` package).

Two "systems" process the same 24 speech-like clips (torchmos.synth: noise, clipping,
low-pass, dropouts; one system degrades less than the other), with synthetic MOS labels
(``synth.MOS_MODEL``: MOS as a known function of the degradation) and a ``condition``
column; both are scored by ``torchmos score`` (DistillMOS), and ``torchmos report`` writes
the page. Chromium then opens it with every host name unresolvable and a dead proxy (no
network), and a probe script, added to a copy of the page, reports what the browser
rendered: the plots' sizes, every ``<audio>`` player's clip as the browser loaded it (its
duration), the URLs the page refers to, and whether the page fits a 1280-pixel laptop
screen without scrolling sideways. A screenshot of the page is saved too;

    TORCHMOS_UPDATE_SCREENSHOT=1 pytest tests/integrations/test_integration_report_browser.py

also copies it to docs/_static/report.png, the picture docs/cli.md shows.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from torchmos import cli, synth

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason="needs Chromium (Debian: apt-get install -y --no-install-recommends chromium)")

N, SECONDS, KINDS = 24, 2.0, ["noise", "clipping", "lowpass", "dropouts"]
NO_NETWORK = ["--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9"]

PROBE = """<script>
window.addEventListener('load', async () => {
  const audios = [...document.querySelectorAll('audio')];
  const loaded = await Promise.all(audios.map(a => new Promise(done => {
    a.addEventListener('loadedmetadata', () => done({src: a.currentSrc, duration: a.duration}));
    a.addEventListener('error', () => done({src: a.currentSrc, error: a.error ? a.error.code : -1}));
    a.preload = 'metadata'; a.load();
  })));
  const urls = [...document.querySelectorAll('[src],[href]')].map(e => e.src || e.href);
  const probe = {
    audios: loaded,
    svgs: [...document.querySelectorAll('svg')].map(s => Math.round(s.getBoundingClientRect().width)),
    urls: urls.filter(u => !u.startsWith('data:')).concat(
      performance.getEntriesByType('resource').map(e => e.name)),
    sheets: [...document.styleSheets].map(s => s.href),
    overflow: document.documentElement.scrollWidth - window.innerWidth,
    headings: [...document.querySelectorAll('h2')].map(h => h.textContent),
  };
  const pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify(probe);
  document.body.appendChild(pre);
});
</script>"""


def chromium(*args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *NO_NETWORK, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def system(folder: Path, worst: tuple[float, float], seed: int) -> dict[str, tuple[float, str]]:
    """Degrade the same clean clips at severities in ``worst`` (0 mildest, 1 worst of the
    kind's range); write them; return id -> (synthetic MOS, condition)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    labels = {}
    for i in range(N):
        kind = KINDS[i % len(KINDS)]
        (mild, bad), mos_of = synth.MOS_MODEL[kind]
        severity = mild + (bad - mild) * rng.uniform(*worst)
        x = synth.apply_kind(synth.speech_like(SECONDS, 16000, seed=i), 16000, kind, severity, seed=i)
        sf.write(folder / f"utt{i:02d}.wav", x.numpy(), 16000, subtype="PCM_16")
        labels[f"utt{i:02d}"] = (mos_of(severity), kind)
    return labels


def add_columns(scores: Path, labels: dict[str, tuple[float, str]]) -> None:
    """Join the labels onto torchmos score's CSV, as a user would (a mos and a condition column)."""
    with open(scores, newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(scores, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[*rows[0], "mos", "condition"])
        w.writeheader()
        for r in rows:
            mos, kind = labels[r["id"]]
            w.writerow({**r, "mos": f"{mos:.2f}", "condition": kind})


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    files = []
    for name, worst, seed in (("baseline", (0.45, 1.0), 1), ("enhanced", (0.0, 0.55), 2)):
        labels = system(root / "audio" / name, worst, seed)
        out = root / f"{name}.csv"
        assert cli.main(["score", str(root / "audio" / name), "-o", str(out), "-q"]) == 0
        add_columns(out, labels)
        files.append(str(out))
    html = root / "site" / "report.html"
    assert cli.main(["report", *files, "-o", str(html), "--top", "5",
                     "--title", "torchmos report: baseline vs enhanced (synthetic clips)"]) == 0
    return html


def test_the_browser_renders_the_plots_and_plays_every_listed_clip(page: Path):
    probe_page = page.with_name("probe.html")
    probe_page.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    proc = chromium("--window-size=1280,800", "--virtual-time-budget=20000", "--dump-dom", probe_page.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"no probe output; chromium said: {proc.stderr[-2000:]}"
    probe = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert probe["headings"][:3] == ["Scores per system", "Paired comparison", "By condition"]
    assert {"Agreement with the labels", "Worst and best 5 utterances per system"} <= set(probe["headings"])
    assert len(probe["svgs"]) >= 5 and min(probe["svgs"]) >= 300  # drawn, at a readable width
    n_players = page.read_text().count("<audio ")
    assert len(probe["audios"]) == n_players >= 2 * 5 * 2
    for a in probe["audios"]:  # every player's clip was found and decoded by the browser
        assert "error" not in a, a
        assert a["src"].startswith("file://") and a["duration"] == pytest.approx(SECONDS, abs=0.01)
    assert all(u.startswith("file://") for u in probe["urls"]), probe["urls"]
    assert probe["sheets"] == [None]  # one inline style sheet, nothing fetched
    assert probe["overflow"] <= 0  # fits a 1280-pixel screen: no sideways scrolling


def test_screenshot(page: Path):
    from PIL import Image

    shot = page.with_name("report.png")
    proc = chromium("--window-size=1280,2000", f"--screenshot={shot}", page.as_uri())
    assert shot.is_file(), proc.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1280, 2000)
        pixels = np.asarray(im.convert("L"), dtype=np.float64)
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.01  # text and plots, not a blank page
    if os.environ.get("TORCHMOS_UPDATE_SCREENSHOT") == "1":
        target = ROOT / "docs" / "_static" / "report.png"
        with Image.open(shot) as im:  # a smaller file for the docs, same picture
            im.convert("RGB").quantize(colors=128).save(target, optimize=True)
