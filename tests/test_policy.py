"""The Live reconnect policy as a pure function: every row of docs/live-session.md's table."""

from __future__ import annotations

import logging
import random
import ssl

import websockets
from google.genai import errors
from websockets.frames import Close

from edged.config import ConfigError, SessionSettings
from edged.live.policy import End, ReconnectPolicy, classify


def policy(**kw: float) -> ReconnectPolicy:
    return ReconnectPolicy(SessionSettings(**kw), random.Random(7))


def test_a_close_we_asked_for_is_not_a_reconnect() -> None:
    d = policy().decide(End("closed", 1000, "closed by edged"), 10.0, resuming=True)
    assert d.reconnect is False and d.delay_s == 0


def test_goaway_and_reconfigure_reconnect_at_once_and_reset_the_backoff() -> None:
    p = policy()
    for _ in range(5):
        p.decide(End("api", 1011, "internal"), 1.0, resuming=True)
    assert p.backoff.attempt == 5
    d = p.decide(End("goaway", None, "server goAway"), 1.0, resuming=True)
    assert (d.reconnect, d.delay_s, d.drop_handle) == (True, 0.0, None)
    assert p.backoff.attempt == 0
    assert p.decide(End("reconfigure"), 1.0, resuming=True).delay_s == 0.0


def test_transient_failures_back_off_exponentially_with_full_jitter_up_to_the_cap() -> None:
    p = policy(backoff_base_s=0.5, backoff_cap_s=4.0)
    ceilings = []
    for _ in range(6):
        ceilings.append(p.backoff.ceiling())
        d = p.decide(End("api", 1011, "internal error"), 1.0, resuming=False)
        assert 0 <= d.delay_s <= ceilings[-1]
        assert d.state == "backoff" and d.detail == "1011: internal error"
        assert d.log_level == logging.WARNING and "reconnecting in" in d.message
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_connection_that_lived_long_enough_starts_the_backoff_over() -> None:
    p = policy(backoff_base_s=1.0, backoff_cap_s=30.0, stable_after_s=60.0)
    for _ in range(4):
        p.decide(End("network", None, "OSError"), 5.0, resuming=False)
    assert p.backoff.attempt == 4
    d = p.decide(End("network", None, "OSError"), 61.0, resuming=True)
    assert d.delay_s <= 1.0 and p.backoff.attempt == 1
    assert "(resuming)" in d.message


def test_a_clean_1000_close_from_the_server_is_quiet() -> None:
    d = policy().decide(End("api", 1000, ""), 5.0, resuming=False)
    assert d.reconnect and d.log_level == logging.INFO and d.state == "backoff"


def test_config_errors_wait_long_and_drop_the_handle_with_a_hint() -> None:
    p = policy(config_error_retry_s=300.0)
    d = p.decide(End("config", 1008, "models/x is not found"), 0.0, resuming=False)
    assert d.state == "config_error" and d.delay_s == 300.0
    assert d.drop_handle == "configuration error" and d.log_level == logging.ERROR
    assert "gemini.model" in d.detail and "models/x is not found" in d.detail
    d = p.decide(End("config", None, "no Gemini API key: set GEMINI_API_KEY"), 0.0, False)
    assert d.state == "config_error" and d.detail == "no Gemini API key: set GEMINI_API_KEY"


def test_a_refused_resume_starts_a_fresh_session_at_once() -> None:
    d = policy().decide(End("config", 1007, "invalid handle", during_setup=True, resumed=True),
                        0.0, resuming=True)
    assert d.delay_s == 0.0 and d.state == "connecting"
    assert d.drop_handle == "resumption was refused" and d.log_level == logging.WARNING


def test_update_keeps_the_failure_count_and_takes_the_new_knobs() -> None:
    p = policy(backoff_base_s=0.5, backoff_cap_s=30.0)
    p.decide(End("api", 1011), 1.0, resuming=False)
    p.update(SessionSettings(backoff_base_s=2.0, backoff_cap_s=3.0))
    assert p.backoff.attempt == 1 and p.backoff.ceiling() == 3.0


def test_classify_maps_every_way_a_connection_ends() -> None:
    api = errors.APIError(1008, {"message": "not found"})
    assert classify(api, True) == End("config", 1008, "not found", True)
    assert classify(errors.APIError(1011, {"message": "boom"}), False).kind == "api"
    closed = websockets.ConnectionClosedError(Close(1011, "overloaded"), None)
    assert classify(closed, False) == End("api", 1011, "overloaded", False)
    assert classify(websockets.ConnectionClosedError(None, None), False).code == 1006
    tls = ssl.SSLCertVerificationError("bad")
    tls.verify_message = "self-signed certificate"
    end = classify(tls, True)
    assert end.kind == "config" and "gemini.ca_file" in end.reason
    assert classify(ConfigError("gemini.ca_file: cannot load"), True).kind == "config"
    assert classify(TimeoutError(), True).reason.startswith("no setupComplete")
    assert classify(ConnectionRefusedError(111, "refused"), True).kind == "network"
    assert classify(RuntimeError("bug"), False) == End("error", None, "RuntimeError: bug")
    assert End("api", 1011).cause == "1011" and End("stall").cause == "stall"
