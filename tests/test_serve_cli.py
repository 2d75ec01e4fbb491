"""``unclip serve``: one-line errors, loopback by default, and a real server process end to end."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra (fastapi) is not installed")
pytest.importorskip("uvicorn", reason="the 'serve' extra (uvicorn) is not installed")

from test_serve_double import FakePipeline  # noqa: E402
from unclip.cli import main  # noqa: E402


def test_unknown_model_is_a_one_line_error(capsys):
    assert main(["serve", "--model", "no-such-model-anywhere"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no-such-model-anywhere" in err and "\n" not in err


def test_taken_port_is_a_one_line_error(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--model", "x", "--port", str(port)]) == 2
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err


def test_out_of_range_options_are_refused():
    for argv in (["--port", "70000"], ["--max-queue", "0"], ["--time-limit", "0"], ["--max-images", "65"]):
        with pytest.raises(SystemExit) as exc:
            main(["serve", "--model", "x", *argv])
        assert exc.value.code == 2


def test_binds_loopback_by_default_and_warns_otherwise(monkeypatch, capsys):
    import uvicorn

    import unclip.cli.serve as serve_cli

    calls = []
    monkeypatch.setattr(serve_cli, "load", lambda model, device: FakePipeline())
    monkeypatch.setattr(serve_cli, "check_port_free", lambda host, port: None)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))
    assert main(["serve", "--model", "tiny", "--max-queue", "3"]) == 0
    app, kwargs = calls[-1]
    assert kwargs["host"] == "127.0.0.1" and kwargs["port"] == 7860
    assert app.state.config.max_queue == 3
    assert "warning" not in capsys.readouterr().err
    assert main(["serve", "--model", "tiny", "--host", "0.0.0.0"]) == 0
    assert "warning: listening on 0.0.0.0" in capsys.readouterr().err


def test_real_server_process_serves_and_stops_cleanly(tmp_path):
    from helpers import pipeline as helpers
    import httpx

    model = helpers.tiny_pipeline("glide", upsampler=False).save(tmp_path / "model")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(tmp_path / "server.log", "w+")
    server = subprocess.Popen([sys.executable, "-m", "unclip.cli", "serve", "--model", str(model), "--port",
                               str(port), "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT)
    try:
        base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while True:
            assert server.poll() is None, f"server exited early: {(tmp_path / 'server.log').read_text()}"
            try:
                assert httpx.get(f"{base}/api/health", timeout=2).json()["status"] == "ok"
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        response = httpx.post(f"{base}/api/generate", json={"prompt": "a red circle", "seed": 3,
                                                            "decoder_steps": 2}, timeout=60)
        assert response.status_code == 200 and response.json()["result"]["seeds"] == [3]
    finally:
        server.send_signal(signal.SIGINT)
        code = server.wait(30)
        log.close()
    assert code == 0
