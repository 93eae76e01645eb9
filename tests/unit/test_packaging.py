"""The installed package carries the lm-eval hook: the regular and the
editable wheel both put ``mesa_viz_lm_eval.pth`` at the root of
site-packages (setup.py's two command subclasses), with the hook module and
the RULER task files; and the hook itself is cheap (standard library only)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path


from repo import ROOT  # noqa: E402


def _names(folder: Path) -> set[str]:
    wheel = next(folder.glob("mesa_viz-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        return set(z.namelist())


def test_regular_wheel_ships_the_hook_and_task_files(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(ROOT)], check=True, cwd=tmp_path)
    names = _names(tmp_path)
    assert {"mesa_viz_lm_eval.pth", "_mesa_viz_lm_eval.py",
            "mesa_viz/analyses/ruler/tasks/ruler_offline.py",
            "mesa_viz/analyses/ruler/tasks/niah_multivalue_noise.yaml",
            "mesa_viz/analyses/ruler/tasks/ruler_offline.yaml",
            "mesa_viz/kernels/fused/triton.py", "mesa_viz/runtime/apply.py"} <= names


def test_editable_wheel_ships_the_hook(tmp_path):
    code = ("import sys; from setuptools import build_meta; "
            "print(build_meta.build_editable(sys.argv[1]))")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, cwd=ROOT,
                   capture_output=True)
    assert "mesa_viz_lm_eval.pth" in _names(tmp_path)


def test_the_pth_line_imports_only_the_standard_library():
    line = (ROOT / "mesa_viz_lm_eval.pth").read_text().strip()
    assert line == "import _mesa_viz_lm_eval as _h; _h.install()"
    code = ("import sys, site; before = set(sys.modules); site.addsitedir(sys.argv[1]); "
            "new = set(sys.modules) - before; "
            "print(sorted(m for m in new if m.split('.')[0] in "
            "('torch', 'numpy', 'mesa_viz', 'lm_eval', 'transformers')))")
    out = subprocess.run([sys.executable, "-S", "-c", code, str(ROOT)], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "[]"
