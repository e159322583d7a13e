"""How long the CLI waits for an answer: a dry run (which loads the model on the server) waits
far longer than other calls by default, --timeout / $KILN_TIMEOUT set it, and a server that takes
too long to answer is reported as such, never as one that cannot be reached."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from service.cli.client import DEFAULT_TIMEOUT_S, DRY_RUN_TIMEOUT_S, KilnClient
from service.cli.main import main


def _answers_with_its_read_timeout(client: KilnClient, seen: list[float]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"]["read"])
        return httpx.Response(200, json={"object": "fine_tuning.job.dry_run"})

    client._http._transport = httpx.MockTransport(handler)


def test_a_dry_run_waits_longer_than_the_servers_check_and_timeout_overrides_it() -> None:
    seen: list[float] = []
    with KilnClient("http://kiln.invalid", "k") as client:
        _answers_with_its_read_timeout(client, seen)
        client.create_job(dry_run=True, model="chat", training_file="f")
        client.create_job(model="chat", training_file="f")
    with KilnClient("http://kiln.invalid", "k", timeout=30) as client:
        _answers_with_its_read_timeout(client, seen)
        client.create_job(dry_run=True, model="chat", training_file="f")
    assert seen == [DRY_RUN_TIMEOUT_S, DEFAULT_TIMEOUT_S, 30]
    assert DRY_RUN_TIMEOUT_S > 600  # the server's own limit for a causal LM's dry run


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A server that accepts connections and reads requests but never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for conn in accepted:
        conn.close()
    listener.close()


@pytest.mark.parametrize("where", ["option", "env", "root"])
def test_a_late_answer_says_it_timed_out_waiting_not_that_the_server_is_unreachable(
    silent_server: str, where: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["finetune", "create", "--model", "chat", "--training-file", "file-1", "--dry-run"]
    argv += ["--url", silent_server, "--key", "k"]
    if where == "option":
        argv += ["--timeout", "1"]
    elif where == "root":
        argv = ["--timeout", "1", *argv]
    else:
        monkeypatch.setenv("KILN_TIMEOUT", "1")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"timed out after 1 s waiting for {silent_server} to answer" in err, err
    assert "cannot reach" not in err and "--timeout" in err and "Traceback" not in err
