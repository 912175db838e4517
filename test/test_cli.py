"""The dfanet command line."""
import subprocess
import sys

import pytest


def dfanet(*args):
    return subprocess.run([sys.executable, "-m", "dfanet_tools.cli", *args],
                          capture_output=True, text=True, timeout=300)


def test_help_lists_the_commands():
    from dfanet_tools.cli import COMMANDS
    result = dfanet("--help")
    assert result.returncode == 0
    for name in COMMANDS:
        assert name in result.stdout


@pytest.mark.slow
def test_info_prints_counts_beside_the_paper():
    result = dfanet("info", "--variant", "A", "--size", "1024x1024")
    assert result.returncode == 0, result.stderr
    assert "1,830,475" in result.stdout
    assert "2,884,383,744" in result.stdout
    assert "paper (A): 3.4 GFLOPs, 7.8 M parameters" in result.stdout


@pytest.mark.slow
def test_info_rejects_a_bad_size():
    result = dfanet("info", "--size", "big")
    assert result.returncode == 2
    assert "size must be HEIGHTxWIDTH" in result.stderr
