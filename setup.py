"""Ships ``mesa_viz_lm_eval.pth`` (the lm-eval model-type hook,
``_mesa_viz_lm_eval.py``) at the root of site-packages for regular and
editable installs; everything else is in pyproject.toml.

A .pth file must sit directly in site-packages and setuptools has no
declarative way to put one there: ``build_py`` copies it into the regular
wheel's root; ``editable_wheel`` (PEP 660, setuptools >= 64, which ignores
build_py outputs) into the editable wheel.  ``tests/test_lm_eval.py`` checks
both wheels carry it.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = "mesa_viz_lm_eval.pth"


class BuildPyWithPth(build_py):
    def run(self):
        super().run()
        if not self.editable_mode:
            self.copy_file(PTH, str(Path(self.build_lib) / PTH))


class EditableWheelWithPth(editable_wheel):
    def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):
        out = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
        shutil.copy(PTH, Path(unpacked_wheel) / PTH)
        return out


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
