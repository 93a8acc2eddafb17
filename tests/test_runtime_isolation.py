"""The runtime side must install and run without torch."""
import subprocess
import sys


def test_runtime_import_leaves_torch_out():
    code = ("import sys, pkgutil, importlib, jzi.runtime\n"
            "mods = [m.name for m in pkgutil.walk_packages(jzi.runtime.__path__, 'jzi.runtime.')]\n"
            "for m in mods: importlib.import_module(m)\n"
            "assert 'torch' not in sys.modules, [m for m in sys.modules if m.startswith('torch')][:5]\n"
            "print(len(mods))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= 2  # every runtime module was imported
