"""Ctrl-C while a CLI is still importing: one line and exit status 130, no traceback."""
import subprocess
import sys

import pytest

# Python started fresh, with an import hook that raises KeyboardInterrupt (as a Ctrl-C does) the moment
# the CLI imports MODULE; then the console-script entry point runs.
_SCRIPT = """
import sys
class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            raise KeyboardInterrupt
sys.meta_path.insert(0, CtrlC())
sys.argv = [{prog!r}, "--help"]
from jzi.runtime import cli_entry
cli_entry.{entry}()
"""


@pytest.mark.parametrize("entry, prog, module", [
    ("jzi_run", "jzi-run", "cv2"),
    ("jzi_run", "jzi-run", "numpy"),
    ("jzi_tiles", "jzi-tiles", "numpy"),
    ("jzi_export", "jzi-export", "torch"),
    ("jzi_train", "jzi-train", "torch"),
])
def test_ctrl_c_during_imports_is_one_line_and_130(entry, prog, module):
    r = subprocess.run([sys.executable, "-c", _SCRIPT.format(module=module, prog=prog, entry=entry)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 130, r.stderr
    assert r.stderr.strip() == f"{prog}: interrupted" and r.stdout == ""


def test_entry_points_run_the_cli():
    r = subprocess.run([sys.executable, "-c", "import sys; sys.argv = ['jzi-run', '--help']\n"
                        "from jzi.runtime import cli_entry; cli_entry.jzi_run()"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "--resume" in r.stdout
