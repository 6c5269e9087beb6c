"""Prometheus metrics scraped over HTTP from the endpoint and parsed with prometheus_client's
own text parser: drops per state from a real ledger, counters, held pushes, and the latency of
real requests to the sandbox XNAT through the response hook on our client's session."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from push_helpers import PROJECT, client, load, write_config
from xnat_sandbox import Sandbox
from xnatdrop import ledger
from xnatdrop.notify import metrics
from xnatdrop.notify.alerts import Kind
from xnatdrop.notify.service import Notifier


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """GET /metrics and parse it: sample name -> {sorted labels: value}."""
    response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def test_endpoint_serves_every_metric_from_ledger_and_events(tmp_path: Path) -> None:
    """1. A ledger with one drop done, one quarantined and one waiting since an hour.
    2. The daemon reports an archive, a quarantine, held pushes and one XNAT request.
    Result: the scraped, parsed text has each value, on a private registry (nothing from the
    process-wide default registry, such as python_gc_*)."""
    book = ledger.Ledger(tmp_path / "state")
    done = book.register(PROJECT, "SPN01_0001", tmp_path / "drop/SPN01_0001", tmp_path / "w1")
    for step in ledger.STEPS:
        done = book.advance(book.begin(done, step), step)
    bad = book.register(PROJECT, "SPN01_0002", tmp_path / "drop/SPN01_0002", tmp_path / "w2")
    book.quarantine(bad, "RULES_BLOCKED", "a NIfTI file")
    waiting = book.register(PROJECT, "SPN01_0003", tmp_path / "drop/SPN01_0003", tmp_path / "w3")
    board = metrics.Metrics(tuple(ledger.STATES))
    port = board.serve("127.0.0.1", 0)
    try:
        board.update_from_ledger(book, waiting.created + 3600)
        board.set_folders({"settling": 2, "settled": 1})
        board.archived(files=92, size=4_500_000, at=done.updated)
        board.quarantined("RULES_BLOCKED")
        board.set_held("breaker", True)
        board.observe_xnat("post", 1.5)
        board.alerted(Kind.QUARANTINED.value)
        samples = scrape(port)
        board.set_folders({"settled": 1})
        after = scrape(port)
    finally:
        board.close()
        book.close()
    assert samples["xnatdrop_drops"][(("state", "done"),)] == 1
    assert samples["xnatdrop_drops"][(("state", "quarantined"),)] == 1
    assert samples["xnatdrop_drops"][(("state", "new"),)] == 1
    assert samples["xnatdrop_drops"][(("state", "imported"),)] == 0
    assert samples["xnatdrop_folders"][(("state", "settling"),)] == 2
    assert after["xnatdrop_folders"][(("state", "settling"),)] == 0  # not left stale
    assert samples["xnatdrop_uploaded_files_total"][()] == 92
    assert samples["xnatdrop_uploaded_bytes_total"][()] == 4_500_000
    assert samples["xnatdrop_sessions_archived_total"][()] == 1
    assert samples["xnatdrop_quarantines_total"][(("code", "RULES_BLOCKED"),)] == 1
    assert samples["xnatdrop_oldest_waiting_seconds"][()] == pytest.approx(3600)
    assert samples["xnatdrop_last_success_timestamp_seconds"][()] == pytest.approx(done.updated)
    assert samples["xnatdrop_pushes_held"][(("cause", "breaker"),)] == 1
    assert samples["xnatdrop_pushes_held"][(("cause", "credentials"),)] == 0
    assert samples["xnatdrop_xnat_request_seconds_count"][(("method", "POST"),)] == 1
    assert samples["xnatdrop_alerts_total"][(("kind", "quarantined"),)] == 1
    assert not any(name.startswith(("python_", "process_")) for name in samples)


def test_latency_of_real_xnat_requests_through_the_hook(tmp_path: Path, server: Sandbox) -> None:
    """Our XNAT client with the response hook on its session: the login and two GETs to the
    sandbox show up in the histogram by method."""
    settings = load(write_config(tmp_path, server.url, extra="[metrics]\nport = 9\n"))
    notifier = Notifier(settings)
    assert notifier.metrics is not None
    with client(settings) as xnat_client:
        xnat_client.http.hooks["response"].append(notifier.request_hook())
        xnat_client.login()
        assert xnat_client.project_exists(PROJECT)
        assert xnat_client.find_session(PROJECT, "SPN01_0404") is None
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(notifier.metrics.text().decode())
        for s in family.samples
        if s.labels.get("method") in ("GET", "POST") and s.name.endswith("_count")
    }
    assert samples["xnatdrop_xnat_request_seconds_count"] >= 1
    text = notifier.metrics.text().decode()
    assert 'xnatdrop_xnat_request_seconds_count{method="GET"} 2.0' in text
    assert 'xnatdrop_xnat_request_seconds_count{method="POST"} 1.0' in text


def test_a_taken_port_is_reported_and_the_daemon_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = load(write_config(tmp_path, "http://127.0.0.1:9", f"[metrics]\nport = {port}\n"))
        notifier = Notifier(settings)
        notifier.start()
        assert f"metrics: cannot listen on 127.0.0.1:{port}" in caplog.text
        notifier.close(1)
