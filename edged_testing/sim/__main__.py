"""``edged-sim``: run the Live simulator until Ctrl-C / SIGTERM (demo and manual testing)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

from edged_testing.sim.scenario import Scenario
from edged_testing.sim.server import LiveSimulator

DEFAULT_CERT_DIR = Path.home() / ".cache" / "edged-sim"


def _transcripts(path: Path) -> list[str]:
    """One transcript per line (.txt) or a JSON list of strings (.json)."""
    raw = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(raw)
        if not isinstance(data, list) or not all(isinstance(t, str) for t in data):
            raise ValueError(f"{path}: expected a JSON list of strings")
        return data
    return [line.strip() for line in raw.splitlines() if line.strip()]


async def _serve(sim: LiveSimulator) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with sim:
        print(f"edged-sim listening on {sim.base_url}", flush=True)
        print(f"CA certificate: {sim.ca_file}", flush=True)
        print("client config (edged.toml):", flush=True)
        print(f'  [gemini]\n  base_url = "{sim.base_url}"\n  ca_file = "{sim.ca_file}"', flush=True)
        print("and any API key, e.g. GEMINI_API_KEY=test (the simulator checks none)", flush=True)
        print(f"or environment: SSL_CERT_FILE={sim.ca_file} NO_PROXY=127.0.0.1,localhost",
              flush=True)
        await stop.wait()
    print("edged-sim stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edged-sim", description="Run the Gemini Live simulator "
                                "until Ctrl-C or SIGTERM (docs/simulator.md).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--cert-dir", type=Path, default=DEFAULT_CERT_DIR,
                   help="where the CA/cert are created and reused (default: %(default)s)")
    p.add_argument("--scenario", type=Path, help="scenario file (.toml or .json)")
    p.add_argument("--transcripts", type=Path,
                   help="scripted input transcriptions for audio turns: .txt (one per line) "
                        "or .json list; the simulator does no speech recognition")
    p.add_argument("--language", default=None, help="reply language for the default scenario")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        scenario = Scenario.load(args.scenario) if args.scenario else Scenario.default()
        if args.transcripts:
            scenario.transcripts = _transcripts(args.transcripts)
        if args.language:
            scenario.language = args.language
    except (OSError, ValueError) as e:
        print(f"edged-sim: {e}", file=sys.stderr)
        return 2
    sim = LiveSimulator(scenario, host=args.host, port=args.port, cert_dir=args.cert_dir,
                        record_audio=False)
    try:
        asyncio.run(_serve(sim))
    except OSError as e:
        print(f"edged-sim: cannot listen on {args.host}:{args.port}: {e.strerror}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
