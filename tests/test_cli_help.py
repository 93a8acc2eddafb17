"""Every option of every command explains itself in --help, and descriptions carry no RST markup."""
from __future__ import annotations

import argparse
import importlib
from unittest import mock

import pytest

# by name, imported in the test: most of these import torch (conftest.py's TORCH_FILES)
MAINS = ("jzi.export.train", "jzi.export.evaluate", "jzi.export.cli", "jzi.export.bench", "jzi.export.synthetic",
         "jzi.export.demo", "jzi.runtime.run_cli")


class _Parsed(Exception):
    pass


def parser_of(main) -> argparse.ArgumentParser:
    """The parser ``main`` builds, caught when it starts parsing."""
    def grab(self, *args, **kwargs):
        raise _Parsed(self)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", grab):
        with pytest.raises(_Parsed) as caught:
            main(["x"])
    return caught.value.args[0]


@pytest.mark.parametrize("module", MAINS)
def test_every_option_has_help_and_descriptions_have_no_backticks(module):
    p = parser_of(importlib.import_module(module).main)
    undocumented = [a.dest for a in p._actions if not a.help]
    assert not undocumented
    assert "``" not in (p.description or "") and "``" not in p.format_help()
