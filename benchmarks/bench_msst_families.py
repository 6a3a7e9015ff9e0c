"""Forward speed of our MSST families against MSST's own modules, at equal config, in one run.

The reference is read from the MSST mirror at run time (a bare git repo: set MSST_REPO, default
below) at commit MSST_REV (ccc011a): the model files named in `FAMILIES` and the shipped config
are exported to a temporary folder; nothing of MSST is committed here. Two stand-ins keep the
import chain small, neither touches the model maths: an empty `models/bs_roformer/__init__.py`
(the real one imports every RoFormer; SCNet_Tran only needs `attend.py`) and a
`utils/model_utils.py` holding only MSST's own `prefer_target_instrument`, cut out of the real
file (the rest imports training packages). MSST needs einops and rotary-embedding-torch
(`pip install --no-deps einops rotary-embedding-torch`); never torchaudio.

Both models get the same weights (MSST's initialisation, loaded into ours with strict=True), the
same input (random audio of the length in the table), fp32, `torch.inference_mode`. Each repeat
times the reference, then ours; the table gives medians and their ratio, and the max difference
of the outputs (ours trimmed to the reference's shape where the reference differs, see the
family modules).

    PYTHONPATH=. python3 benchmarks/bench_msst_families.py --repeats 3 [--only scnet,apollo]

Other developers add their families (BandIt, ...) as rows of `FAMILIES`.
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info

MSST_REPO = os.environ.get(
    "MSST_REPO", "/work/.mirror/ZFTurbo+Music-Source-Separation-Training/repo"
)
MSST_REV = os.environ.get("MSST_REV", "ccc011a")


@dataclass(frozen=True)
class Row:
    """One benchmark case: an MSST model type, its shipped config, the audio length, and how
    MSST builds it (`build`: a Python expression over `config` (the parsed YAML) and `CD` (an
    attribute dict standing in for ml_collections' ConfigDict), run after `imports`)."""

    family: str
    config: str  # path in the MSST repo
    seconds: float  # audio length fed to both models
    imports: str
    build: str
    files: tuple[str, ...]  # paths in the MSST repo the reference needs


FAMILIES: tuple[Row, ...] = (
    Row("mdx23c", "configs/config_musdb18_mdx23c.yaml", 63 * 1024 / 44100,  # 64 frames
        "from models.mdx23c_tfc_tdf_v3 import TFC_TDF_net", "TFC_TDF_net(CD(config))",
        ("models/mdx23c_tfc_tdf_v3.py",)),
    Row("scnet", "configs/config_musdb18_scnet.yaml", 3.0,
        "from models.scnet.scnet import SCNet", "SCNet(**config['model'])", ("models/scnet",)),
    Row("scnet_masked", "configs/config_musdb18_scnet.yaml", 3.0,
        "from models.scnet.scnet_masked import SCNet", "SCNet(**config['model'])",
        ("models/scnet",)),
    Row("scnet_tran", "configs/config_musdb18_scnet_tran.yaml", 3.0,
        "from models.scnet.scnet_tran import SCNet_Tran", "SCNet_Tran(**config['model'])",
        ("models/scnet", "models/bs_roformer/attend.py")),
    Row("apollo", "configs/config_apollo.yaml", 1.0,
        "from models.look2hear.models import BaseModel", "BaseModel.apollo(**config['model'])",
        ("models/look2hear",)),
)  # fmt: skip


class CD(dict):
    """Attribute access to a YAML mapping (what MSST's ConfigDict gives TFC_TDF_net)."""

    def __getattr__(self, key):
        value = self[key]
        return CD(value) if isinstance(value, dict) else value


def export_reference(folder: Path, rows) -> None:
    """MSST's files at MSST_REV into `folder`, plus the two stand-ins (module docstring)."""
    paths = sorted({p for r in rows for p in r.files} | {"utils/model_utils.py"})
    tar = subprocess.run(["git", "-C", MSST_REPO, "archive", "--format=tar", MSST_REV, *paths],
                         check=True, capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "x", "-C", str(folder)], input=tar, check=True)
    (folder / "models" / "__init__.py").touch()
    (folder / "models" / "bs_roformer").mkdir(exist_ok=True)
    (folder / "models" / "bs_roformer" / "__init__.py").write_text("")
    source = (folder / "utils" / "model_utils.py").read_text()
    fn = next(
        n
        for n in ast.parse(source).body
        if isinstance(n, ast.FunctionDef) and n.name == "prefer_target_instrument"
    )
    fn.args.args[0].annotation, fn.returns = None, None
    (folder / "utils" / "__init__.py").write_text("")
    (folder / "utils" / "model_utils.py").write_text(ast.unparse(fn) + "\n")


def msst_yaml(path: str) -> dict:
    import yaml

    text = subprocess.run(["git", "-C", MSST_REPO, "show", f"{MSST_REV}:{path}"],
                          check=True, capture_output=True, text=True).stdout  # fmt: skip
    return yaml.load(text, Loader=yaml.FullLoader)  # MSST's loader (python/tuple tags)


def build_pair(row: Row):
    from separator.nn import get_family

    config = msst_yaml(row.config)
    scope = {"CD": CD, "config": config}
    exec(row.imports, scope)
    ref = eval(row.build, scope).eval()
    family = get_family(row.family)
    fields = family.from_msst(config)
    ours = family.build(fields["model"], sample_rate=fields["sample_rate"],
                        stems=fields["stems"], chunk_size=fields["chunk_size"])  # fmt: skip
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours.eval(), fields


def timed(fn, x) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call.

    On a shared machine the wall time also counts the time spent waiting for a core; the CPU
    time (one thread) does not, so its ratio is the steadier figure under load.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    fn(x)
    return time.perf_counter() - wall, time.process_time() - cpu


def compare(ref_out: torch.Tensor, ours: torch.Tensor) -> str:
    """Max |ours - MSST| over the reference's shape, relative to max |MSST|."""
    if ref_out.dim() == 3:  # Apollo: no stem axis
        ref_out = ref_out.unsqueeze(1)
    diff = (ours[..., : ref_out.shape[-1]] - ref_out).abs().max().item()
    return f"{diff:.1e} (of {ref_out.abs().max().item():.1e})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default="", help="comma-separated families (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [r for r in FAMILIES if not args.only or r.family in args.only.split(",")]
    print(machine_info(f"MSST {MSST_REV}", f"median of {args.repeats} after a warm-up"))
    print("| family | config | audio s | MSST s | ours s | speed-up | MSST CPU s | ours CPU s "
          "| CPU speed-up | max diff (of max out) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        export_reference(Path(tmp), rows)
        sys.path.insert(0, tmp)
        for row in rows:
            torch.manual_seed(0)
            ref, ours, fields = build_pair(row)
            channels = ours.audio_channels
            x = torch.randn(1, channels, round(row.seconds * fields["sample_rate"]))
            times: dict[str, list[tuple[float, float]]] = {"ref": [], "ours": []}
            with torch.inference_mode():
                diff = compare(ref(x), ours(x))  # also the warm-up
                for _ in range(args.repeats):
                    times["ref"].append(timed(ref, x))
                    times["ours"].append(timed(ours, x))
            wall = {k: statistics.median(t[0] for t in v) for k, v in times.items()}
            cpu = {k: statistics.median(t[1] for t in v) for k, v in times.items()}
            print(f"| {row.family} | {Path(row.config).name} | {x.shape[-1] / 44100:.2f} | "
                  f"{wall['ref']:.2f} | {wall['ours']:.2f} | {wall['ref'] / wall['ours']:.2f}× | "
                  f"{cpu['ref']:.2f} | {cpu['ours']:.2f} | {cpu['ref'] / cpu['ours']:.2f}× | "
                  f"{diff} |", flush=True)  # fmt: skip
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
