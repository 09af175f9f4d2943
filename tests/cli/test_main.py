import subprocess
import sys

from bayesgmm.cli.main import main


def test_demo_small(capsys):
    assert main(["demo", "--max-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "Old Faithful: 272 eruptions" in out
    assert "Top models by BIC" in out
    assert "Chosen model: EEE with K = 3" in out


def test_help_lists_demo():
    out = subprocess.run(
        [sys.executable, "-m", "bayesgmm.cli.main", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "demo" in out.stdout


def test_bad_max_k(capsys):
    import pytest

    with pytest.raises(SystemExit) as err:
        main(["demo", "--max-k", "0"])
    assert err.value.code == 2
    assert "--max-k must be at least 1" in capsys.readouterr().err
