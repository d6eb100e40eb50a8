"""The profile job (`mobilegen-export profile DIR`): where each file's step time goes, per operator
type and per block, on LiteRT and onnxruntime, against each block's floor. Read only: the
manifest is never rewritten; the measurement goes to DIR/profile.json and DIR/profile.md
(contract.defaults.PROFILE_JSON, PROFILE_MD), each replaced whole."""

from __future__ import annotations

from pathlib import Path

from mobilegen.contract import manifest as mf
from mobilegen.contract.defaults import PROFILE_JSON, PROFILE_MD
from mobilegen.files import atomic_write, sha256_file, write_json
from mobilegen.verify.folder import artifacts, intact_folder


def profile_directory(directory: Path, threads: int | None, repeats: int) -> tuple[dict, str]:
    from mobilegen.runtime.backends import default_threads
    from mobilegen.verify.profile import profile_files, render

    manifest = intact_folder(directory, threads)
    profile = profile_files(artifacts(directory, manifest), threads or default_threads(), repeats=repeats)
    profile["manifest_sha256"] = sha256_file(directory / mf.MANIFEST)
    text = render(profile)
    write_json(directory / PROFILE_JSON, profile)
    atomic_write(directory / PROFILE_MD, lambda tmp: tmp.write_text(text))
    return profile, text
