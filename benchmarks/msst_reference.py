"""MSST's RoFormer / Conformer classes at a given commit, exported from a git mirror at run time.

Nothing of MSST is committed here. `msst_classes()` exports `models/bs_roformer/` of the mirror
(`MSST_MIRROR`, default /work/.mirror/ZFTurbo+Music-Source-Separation-Training/repo) at
`MSST_COMMIT` (default ccc011a, else HEAD) into a temporary folder and imports it. Its pure-Python
dependencies are installed without dependencies into a folder of their own, never over the
environment's packages (torchaudio is not needed):

    pip install --no-deps --target /tmp/msst_deps beartype==0.14.1 einops==0.8.1 \\
        rotary-embedding-torch==0.3.5 hyper-connections==0.1.11 PoPE-pytorch==0.2.1 \\
        einx==0.4.3 torch-einops-utils==0.2.0 frozendict

and found through `MSST_DEPS` (default /tmp/msst_deps); einx also needs sympy, which torch
brings. These are the versions the golden vectors were made with (MSST's last requirements.txt
pins; PoPE-pytorch is unpinned there).
"""

from __future__ import annotations

import atexit
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MIRROR = os.environ.get(
    "MSST_MIRROR", "/work/.mirror/ZFTurbo+Music-Source-Separation-Training/repo"
)
DEPS = os.environ.get("MSST_DEPS", "/tmp/msst_deps")
FILES = (
    "attend",
    "bs_roformer",
    "mel_band_roformer",
    "bs_roformer_experimental",
    "mel_band_roformer_experimental",
    "bs_conformer",
    "mel_band_conformer",
)
# model_type -> (module, class), as MSST's utils/settings.get_model_from_config picks them.
CLASSES = {
    "bs_roformer": ("bs_roformer", "BSRoformer"),
    "mel_band_roformer": ("mel_band_roformer", "MelBandRoformer"),
    "bs_roformer_experimental": ("bs_roformer_experimental", "BSRoformer"),
    "mel_band_roformer_experimental": ("mel_band_roformer_experimental", "MelBandRoformer"),
    "bs_conformer": ("bs_conformer", "BSConformer"),
    "mel_band_conformer": ("mel_band_conformer", "MelBandConformer"),
}


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", MIRROR, *args], check=True, capture_output=True, text=True
    ).stdout


def msst_commit() -> str:
    want = os.environ.get("MSST_COMMIT", "ccc011a")
    try:
        return _git("rev-parse", "--verify", f"{want}^{{commit}}").strip()
    except subprocess.CalledProcessError:
        return _git("rev-parse", "HEAD").strip()


def msst_classes() -> tuple[dict[str, type], str]:
    """({model_type: class}, commit) of MSST's band RoFormers/Conformers."""
    commit = msst_commit()
    root = Path(tempfile.mkdtemp(prefix="msst_ref_"))
    atexit.register(shutil.rmtree, root, True)
    pkg = root / "models" / "bs_roformer"
    pkg.mkdir(parents=True)
    (root / "models" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")  # MSST's imports every class; we import one at a time
    for name in FILES:
        (pkg / f"{name}.py").write_text(_git("show", f"{commit}:models/bs_roformer/{name}.py"))
    for path in (str(root), DEPS):
        if path not in sys.path:
            sys.path.insert(0, path)
    classes = {}
    for model_type, (module, cls) in CLASSES.items():
        classes[model_type] = getattr(importlib.import_module(f"models.bs_roformer.{module}"), cls)
    return classes, commit[:7]
