"""Every ``llara.scripts`` module runs as ``python -m`` (how torchrun / accelerate launch them).

A module without a ``__main__`` guard exits 0 having done nothing: ``torchrun -m llara.scripts.finetune``
trained nothing and reported success before the guard was added to six of them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.stem for p in (REPO / "llara" / "scripts").glob("*.py") if p.stem != "__init__")


def test_every_script_module_answers_help():
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    procs = {name: subprocess.Popen([sys.executable, "-m", f"llara.scripts.{name}", "--help"], cwd=REPO, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for name in SCRIPTS}
    assert len(procs) >= 13
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{out[-2000:]}"
        assert "usage:" in out, f"python -m llara.scripts.{name} --help printed no usage:\n{out[-2000:]}"
