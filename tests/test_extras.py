"""A runtime-only install (no torch, no geo extra): each command says in one line which extra it
needs and exits 1; ``--help`` always works. The missing packages are simulated in a subprocess by
``sys.modules[name] = None``, which makes both ``import name`` and ``find_spec(name)`` fail."""
from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import pytest

TORCH = ("torch", "transformers", "onnx", "onnxscript", "albumentations")
GEO = ("rasterio", "pyproj", "tiledwebmaps", "yaml", "requests")

RUN = """
import sys
from importlib.metadata import entry_points
for name in {blocked!r}:
    sys.modules[name] = None
(ep,) = entry_points(group="console_scripts", name={script!r})
main = ep.load()
sys.exit(main({argv!r}))
"""


def run_script(script: str, argv: list[str], blocked=()) -> subprocess.CompletedProcess:
    code = RUN.format(blocked=tuple(blocked), script=script, argv=list(argv))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script, extras", [
    ("jzi-train", "torch,geo"), ("jzi-eval", "torch,geo"), ("jzi-export", "torch"), ("jzi-synth", "geo"),
    ("jzi-bench", "torch,geo"),
])
def test_command_without_its_extras_is_one_line(script, extras, tmp_path):
    r = run_script(script, [str(tmp_path / "data"), "--out", str(tmp_path / "out")], TORCH + GEO)
    assert r.returncode == 1
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"{script}: needs the ") and lines[0].endswith(f"pip install 'jzi[{extras}]'")
    assert not any(tmp_path.iterdir()), "the command did work before checking its extras"


@pytest.mark.parametrize("script", ["jzi-train", "jzi-eval", "jzi-export", "jzi-synth", "jzi-bench"])
def test_help_works_without_the_extras(script):
    r = run_script(script, ["--help"], TORCH + GEO)
    assert r.returncode == 0, r.stderr
    assert script in r.stdout and "``" not in r.stdout
    assert "pip install 'jzi[" in r.stdout.strip().splitlines()[-1]


def test_only_the_missing_extra_is_named():
    r = run_script("jzi-export", ["x.pt"], ("onnxscript",))
    assert r.returncode == 1
    assert r.stderr.strip() == "jzi-export: needs the torch extra (missing onnxscript): pip install 'jzi[torch]'"


def test_with_the_extras_the_command_itself_runs():
    r = run_script("jzi-export", ["--help"])
    assert r.returncode == 0 and "--precision" in r.stdout and "pip install" not in r.stdout


def test_tiles_build_needs_geo_but_info_and_run_do_not(tmp_path):
    r = run_script("jzi-tiles", ["build", "--engine", "b", "--source", "s", "-o", str(tmp_path / "r.jzt")], GEO + TORCH)
    assert (r.returncode, r.stderr.strip()) == (1, "jzi-tiles build: needs the geo extra (missing rasterio, pyproj, "
                                                   "tiledwebmaps, yaml, requests): pip install 'jzi[geo]'")
    assert not (tmp_path / "r.jzt").exists()
    for script, argv in (("jzi-tiles", ["info", str(tmp_path / "none.jzt")]), ("jzi-run", ["--help"])):
        r = run_script(script, argv, GEO + TORCH)
        assert "needs the" not in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_every_console_script_is_installed():
    names = {ep.name for ep in entry_points(group="console_scripts") if ep.value.startswith("jzi.")}
    assert {"jzi-train", "jzi-eval", "jzi-export", "jzi-synth", "jzi-bench", "jzi-tiles", "jzi-run"} <= names
