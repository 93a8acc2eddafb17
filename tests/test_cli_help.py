"""Every option of every command explains itself in --help, and descriptions carry no RST markup."""
from __future__ import annotations

import argparse
from unittest import mock

import pytest

from jzi.export import bench, cli, demo, evaluate, synthetic, train
from jzi.runtime import run_cli


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


@pytest.mark.parametrize("main", [train.main, evaluate.main, cli.main, bench.main, synthetic.main, demo.main,
                                  run_cli.main], ids=lambda f: f.__module__)
def test_every_option_has_help_and_descriptions_have_no_backticks(main):
    p = parser_of(main)
    undocumented = [a.dest for a in p._actions if not a.help]
    assert not undocumented
    assert "``" not in (p.description or "") and "``" not in p.format_help()
