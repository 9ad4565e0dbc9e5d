"""``dmoerm serve`` user mistakes: one line, exit 2, no traceback (and nothing bound); loopback detection."""

from __future__ import annotations

import pytest

from dmoerm_trl.cli import main
from dmoerm_trl.serving.app import ServeSettings
from dmoerm_trl.serving.server import exposure_warning, is_loopback


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "/nonexistent/rm"], "serve: --model /nonexistent/rm: /nonexistent/rm: no such model folder"),
        (["--model", "x", "--max-batch-size", "0"], "serve: --max-batch-size must be >= 1, got 0"),
        (["--model", "x", "--max-wait-ms", "-1"], "serve: --max-wait-ms must be >= 0"),
        (["--model", "x", "--max-items-per-request", "9", "--max-queue", "8"], "cannot exceed the queue size"),
        (["--model", "x", "--port", "70000"], "serve: --port must be in 0..65535, got 70000"),
        (["--model", "x", "--threads", "0"], "serve: --threads must be >= 1, got 0"),
        (["--model", "x", "--keep-alive", "0"], "serve: --keep-alive must be > 0 seconds"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(capsys, argv, message):
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_public_host_warns_before_anything_else(capsys, monkeypatch):
    monkeypatch.delenv("DMOERM_SERVE_API_KEY", raising=False)
    assert main(["serve", "--model", "/nonexistent/rm", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "warning: binding 0.0.0.0 exposes the reward model" in err and "set DMOERM_SERVE_API_KEY" in err
    assert err.index("warning") < err.index("no such model folder")


def test_loopback_detection_and_the_key_stays_out_of_repr():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "example.org"))
    assert exposure_warning("127.0.0.1", None) is None
    assert "requests need the bearer token" in exposure_warning("0.0.0.0", "k")
    assert "k3y-value" not in repr(ServeSettings(api_key="k3y-value"))


@pytest.mark.parametrize("command", ["serve", "serve-judge"])
def test_help_says_each_default_once_and_every_flag_has_help(capsys, command):
    import re

    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text
    for flag_help in re.split(r" (?=--\w)", text.split("options:")[1])[1:]:
        assert flag_help.lower().count("default") <= 1, flag_help
        assert len(flag_help.split()) > 2, f"no help text: {flag_help}"  # the flag, its metavar, then words
