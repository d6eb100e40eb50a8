"""report.html (verify/report_html.py) from a real trajectory run on every file of an export."""

from __future__ import annotations

from helpers import manifest_of

from mobilegen.diffusion import SamplerConfig
from mobilegen.models.checkpoint import default_model
from mobilegen.verify.folder import REFERENCE, run_trajectories
from mobilegen.verify.report_html import render


def test_the_page_shows_every_backends_images_and_results(tiny_export):
    out = tiny_export[0]
    manifest = manifest_of(out)
    traj = run_trajectories(out, manifest, default_model().model, [3], SamplerConfig(steps=2, seed=1))
    assert list(traj.runs) == [REFERENCE, *(n for n in manifest["files"] if not n.endswith(".txt"))]
    ips = {name: {10: 1.0, 20: 0.5, 50: 0.25} for name in traj.runs}
    page = render(manifest, traj, ips)
    assert page.lstrip().lower().startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    for name in traj.runs:
        assert name in page
    assert page.count("data:image/png;base64,") >= len(traj.runs) and "cat" in page


def test_the_phone_paths_show_their_images_and_verdicts():
    import json

    from helpers import ROOT

    from mobilegen.verify.report_html import targets_section

    run = ROOT / "docs/measurements/targets-v2-export"
    manifest = json.loads((run / "manifest.json").read_text())
    page = "".join(targets_section(manifest, (run / "targets.png").read_bytes()))
    assert page.count("<img") == 1 and "width='480'" in page and "lavapipe" in page
    assert page.count("<td class='pass'>pass</td>") == 4 and "x86 float16, gpu-fp16 float16" in page
