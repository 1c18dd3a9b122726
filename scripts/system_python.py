"""For the project's Python scripts: the distribution's python3-* packages (python3-torch,
python3-matplotlib) install for /usr/bin/python3, which another python3 first on the PATH (pyenv's,
a virtual environment's) does not see."""
import importlib.util
import os
import subprocess
import sys

SYSTEM_PYTHON = "/usr/bin/python3"


def rerun_if_missing(module):
    """Runs the calling script again under /usr/bin/python3 (never returns) when the running
    interpreter cannot import `module` and that one can; returns otherwise."""
    if importlib.util.find_spec(module) is not None or not os.access(SYSTEM_PYTHON, os.X_OK):
        return
    if os.path.realpath(sys.executable) == os.path.realpath(SYSTEM_PYTHON):
        return
    probe = subprocess.run([SYSTEM_PYTHON, "-c", f"import {module}"], capture_output=True)
    if probe.returncode == 0:
        os.execv(SYSTEM_PYTHON, [SYSTEM_PYTHON, os.path.abspath(sys.argv[0])] + sys.argv[1:])
