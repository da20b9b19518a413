"""The operator under load: 1,000 BacktestStrategy resources applied at once.

An API server (kmock's KubernetesEmulator over real HTTP, with watches) and a kubelet that
completes each Job after `--job-seconds` with a canned result run in a child process; the
operator runs in this process, exactly as `rbi operator` does, with its SQLite store.
Measured: the time until every resource has a status (the operator keeps up with the flood),
the time until all are terminal, the operator process's peak memory (VmHWM), and the queue:
its peak depth, the peak number of active Jobs against --max-active-jobs, and queue waits.

    python benchmarks/bench_operator.py [--count 1000] [--max-active-jobs 50] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
NAMESPACE = "bench"
BTS = f"/apis/rbi.dev/v1alpha1/namespaces/{NAMESPACE}/backteststrategies"
CODE = (ROOT / "examples" / "strategies" / "sma_cross.py").read_text()


def canned_report() -> dict[str, Any]:
    """One honest run of the benchmark's strategy on the bundled data, facts included, answered for every Job.

    The operator recomputes each result from its facts (rbi.integrity); made-up figures would all fail.
    """
    import tempfile

    from rbi.datasets import bundled_dataset
    from rbi.prepare.data import load_ohlcv
    from rbi.runner import RunRequest, execute

    with tempfile.TemporaryDirectory() as scratch:
        code = Path(scratch) / "strategy.py"
        code.write_text(CODE)
        data = str(bundled_dataset())
        request = RunRequest(mode="class", code_path=str(code), params={"fast": 20, "slow": 60}, data_path=data,
                             include_series=False)
        report = execute(request, frame=load_ohlcv(data))
    assert report["error"] is None and report.get("facts"), report.get("error")
    return report

TERMINAL = {"Succeeded", "NoTrades", "Failed"}


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- the child process: API server + kubelet ------------------------------------------------------


async def serve(job_seconds: float) -> None:
    import kmock

    from k8s_operator.emulator import ApiServer
    from k8s_operator.kubelet import Kubelet

    async with ApiServer() as api, kmock.Server(api) as server:
        url = str(server.url).rstrip("/")
        node = Kubelet(url, NAMESPACE, canned=canned_report(), canned_delay=job_seconds, parallel=100_000)
        api["get", kmock.resource("", "v1", "pods"), kmock.subresource("log")] << node.serve_log

        async def stats(_: Any) -> dict[str, Any]:
            return {"max_concurrent_jobs": node.max_concurrent_jobs, "jobs": len(node.jobs_started),
                    "duplicates": sum(1 for n in node.jobs_started.values() if n > 1)}

        api["get /kubelet-stats"] << stats
        await node.start()
        print(url, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
        await node.stop()


# --- the parent: the operator and the measurements -------------------------------------------------


async def measure(url: str, count: int, max_active: int, job_seconds: float, state: Any) -> dict[str, Any]:
    samples: list[tuple[float, int, int]] = []
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        gate = asyncio.Semaphore(64)

        async def apply(index: int) -> None:
            body = {"apiVersion": "rbi.dev/v1alpha1", "kind": "BacktestStrategy",
                    "metadata": {"name": f"s{index:04d}", "namespace": NAMESPACE},
                    "spec": {"code": CODE, "mode": "class", "params": {"fast": 5 + index % 20, "slow": 60}}}
            async with gate, session.post(url + BTS, json=body) as response:
                assert response.status < 400, await response.text()

        await asyncio.gather(*(apply(i) for i in range(count)))
        applied = time.monotonic() - started
        acknowledged = finished = None
        phases: dict[str, int] = {}
        while time.monotonic() - started < 1800:
            samples.append((time.monotonic() - started, state.queue.waiting, state.queue.active))
            async with session.get(url + BTS) as response:
                items = (await response.json(content_type=None))["items"]
            phases = {}
            for item in items:
                phase = (item.get("status") or {}).get("phase") or "none"
                phases[phase] = phases.get(phase, 0) + 1
            if acknowledged is None and phases.get("none", 0) == 0 and len(items) == count:
                acknowledged = time.monotonic() - started
            if sum(phases.get(p, 0) for p in TERMINAL) == count:
                finished = time.monotonic() - started
                break
            await asyncio.sleep(1.0)
        async with session.get(url + "/kubelet-stats") as response:
            kubelet = await response.json(content_type=None)
    waits = sorted(state.queue.stats.waits)
    # The floor set by the kubelet alone: `max_active` Jobs at a time, each `job_seconds` long. What the
    # operator adds (API traffic, store writes, queueing) is the ratio of the measured time to this.
    floor = math.ceil(count / max_active) * job_seconds
    return {
        "count": count, "max_active_jobs": max_active,
        "seconds_to_apply": round(applied, 2),
        "seconds_until_all_have_status": round(acknowledged, 2) if acknowledged is not None else None,
        "seconds_until_all_terminal": round(finished, 2) if finished is not None else None,
        "throughput_per_second": round(count / finished, 1) if finished else None,
        "kubelet_floor_seconds": round(floor, 2),
        "terminal_vs_floor": round(finished / floor, 1) if finished else None,
        "phases": phases,
        "operator_peak_rss_mib": round(peak_rss_mib(), 1),
        "operator_rss_after_mib": round(rss_mib(), 1),
        "queue_peak_depth": state.queue.stats.peak_waiting,
        "queue_peak_active_jobs": state.queue.stats.peak_active,
        "kubelet_max_concurrent_jobs": kubelet["max_concurrent_jobs"],
        "jobs_created": kubelet["jobs"], "duplicate_jobs": kubelet["duplicates"],
        "queue_wait_seconds": {"p50": round(statistics.median(waits), 2) if waits else None,
                               "p95": round(waits[int(len(waits) * 0.95) - 1], 2) if waits else None,
                               "max": round(waits[-1], 2) if waits else None},
        "queue_samples": [[round(t, 1), w, a] for t, w, a in samples[:: max(1, len(samples) // 40)]],
    }


def run_operator_thread(url: str, max_active: int, db: str) -> tuple[Any, threading.Event, threading.Thread]:
    import kopf

    from rbi.cli.operator_cmd import run_operator
    from rbi.k8s.manifests import JobOptions
    from rbi.operator.queue import JobQueue
    from rbi.operator.settings import OperatorSettings
    from rbi.operator.state import OperatorState
    from rbi.store import ResultStore

    settings = OperatorSettings(namespaces=(NAMESPACE,), metrics_port=None, liveness_port=None,
                                max_active_jobs=max_active, db_url=db, job=JobOptions(image="rbi-sandbox:bench"))
    store = ResultStore(db)
    store.migrate()
    state = OperatorState(settings=settings, store=store, queue=JobQueue(max_active))
    stop, ready = threading.Event(), threading.Event()

    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url, insecure=True, default_namespace=NAMESPACE)

    thread = threading.Thread(target=lambda: asyncio.run(run_operator(
        settings, state=state, login=login, stop_flag=stop, ready_flag=ready)), daemon=True)
    thread.start()
    ready.wait(60)
    return state, stop, thread


def markdown(result: dict[str, Any]) -> str:
    rows = [
        ("strategies applied at once", result["count"]),
        ("max active Jobs (setting)", result["max_active_jobs"]),
        ("time to apply all (64 parallel clients)", f"{result['seconds_to_apply']} s"),
        ("time until every resource has a status", f"{result['seconds_until_all_have_status']} s"),
        ("time until all are terminal", f"{result['seconds_until_all_terminal']} s"),
        ("throughput", f"{result['throughput_per_second']} runs/s"),
        ("kubelet floor (Jobs back to back at the bound)", f"{result['kubelet_floor_seconds']} s"),
        ("all terminal / kubelet floor", f"{result['terminal_vs_floor']}×"),
        ("operator peak memory (VmHWM)", f"{result['operator_peak_rss_mib']} MiB"),
        ("queue peak depth", result["queue_peak_depth"]),
        ("peak active Jobs (operator / kubelet)",
         f"{result['queue_peak_active_jobs']} / {result['kubelet_max_concurrent_jobs']}"),
        ("Jobs created / duplicates", f"{result['jobs_created']} / {result['duplicate_jobs']}"),
        ("queue wait p50 / p95 / max", " / ".join(f"{v} s" for v in result["queue_wait_seconds"].values())),
    ]
    lines = ["| measure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--max-active-jobs", type=int, default=50)
    parser.add_argument("--job-seconds", type=float, default=0.2, help="how long each canned Job runs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.job_seconds))
        return
    import logging

    logging.basicConfig(level=logging.WARNING)
    child = subprocess.Popen([sys.executable, __file__, "--serve", "--job-seconds", str(args.job_seconds)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT / "tests")})
    assert child.stdout is not None and child.stdin is not None
    url = child.stdout.readline().strip()
    with tempfile.TemporaryDirectory() as home:
        state, stop, thread = run_operator_thread(url, args.max_active_jobs, f"sqlite:///{home}/rbi.db")
        try:
            result = asyncio.run(measure(url, args.count, args.max_active_jobs, args.job_seconds, state))
            result["store_runs"] = len(state.store.list_runs(limit=100_000))
        finally:
            stop.set()
            thread.join(30)
            child.stdin.close()
            child.wait(30)
    result["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "operator.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (args.out / "operator.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    print(f"wrote {args.out / 'operator.json'} and {args.out / 'operator.md'}")


if __name__ == "__main__":
    main()
