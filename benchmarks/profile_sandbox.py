"""Where the time of one sandboxed run goes: a phase-by-phase profile of the worker's `run_one`.

This script plays the part of a warm worker (`rbi.sandbox.worker`): it preloads
and warms up the same way, freezes the GC, and then calls the real
`worker.run_one` for each run. It only wraps the functions that `run_one` and
`jail` call with timers, so the code path is the production one; the wrappers
cost a few microseconds each.

    .venv/bin/python benchmarks/profile_sandbox.py [--repeat N] [--out benchmarks/results]

Configurations, measured round-robin so that machine drift hits them all alike:

- sandbox+cgroups    the production path (namespaces, mounts, Landlock, seccomp, rlimits, cgroups)
- sandbox-no-cgroups the same with per-run cgroups off (what RBI_SANDBOX_CGROUPS=0 does)
- fork-only          `--unsafe-no-sandbox`: fork, rlimits and the runner, no isolation at all
- run twice          sandbox+cgroups with Backtest.run called twice in the child: #1 vs #2 shows
                     what a fresh child pays that a warm process does not
- plain fork         one bare fork that calls runner.execute three times, no jail: #1 is the cold
                     child, #2 and #3 are the warm in-process cost of exactly the same code
- noop-next          sandbox+cgroups with `next()` doing nothing: the fixed cost of one run

Then, in this process after all forks: the CPU cost of the runner's output (stats, equity
curve, trade list, JSON) with two cheaper variants, and the seccomp filter built per child
versus built once before the fork.

Every phase records wall time and the minor page faults it caused (`ru_minflt`), which is
how copy-on-write shows up. Output: a table on stdout and `<out>/profile_sandbox.json`.
No timed assertions: this measures and reports.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STRATEGY_FILE = ROOT / "examples" / "strategies" / "sma_cross.py"
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
MARKER = "RBI-PROFILE "

# (label, start, end, minor faults during the call); filled in whichever process runs the wrapper.
PHASES: list[tuple[str, float, float, int]] = []
CHILD_REPEAT = {"runs": 1}


def _minflt() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _wrap(owner: Any, name: str, label: str | None = None) -> None:
    original = getattr(owner, name)
    tag = label or name

    def timed(*args: Any, **kwargs: Any) -> Any:
        faults, start = _minflt(), time.monotonic()
        try:
            return original(*args, **kwargs)
        finally:
            PHASES.append((tag, start, time.monotonic(), _minflt() - faults))

    setattr(owner, name, timed)


def noop_code(code: str) -> str:
    """The same strategy with a `next()` that does nothing (indicators are still computed)."""
    head, sep, _ = code.partition("    def next(self):")
    if not sep:
        raise ValueError("the strategy has no next() to replace")
    return head + sep + "\n        pass\n"


def instrument() -> None:
    """Wrap every step between fork and result with a timer (see the module docstring)."""
    import backtesting

    from rbi import runner, stats
    from rbi.sandbox import cgroups, filesystem, jail, landlock, linux, seccomp_filter, worker

    # The parent (worker) side of run_one.
    _wrap(filesystem, "default_plan", "worker: filesystem plan")
    _wrap(cgroups, "create", "worker: cgroup create")
    _wrap(cgroups.RunCgroup, "add_process", "worker: cgroup add_process")
    _wrap(cgroups.RunCgroup, "peak_memory", "worker: cgroup read stats")
    _wrap(cgroups.RunCgroup, "kill_all", "worker: cgroup kill_all")
    _wrap(cgroups.RunCgroup, "remove", "worker: cgroup remove")
    _wrap(worker, "_monitor", "worker: monitor (fork..child reaped)")
    # S, the first child: namespaces, then it forks P.
    _wrap(jail, "enter_namespaces", "S: unshare namespaces")
    # P, PID 1 of the new namespace: the jail.
    _wrap(jail, "enter_jail", "P: enter_jail total")
    _wrap(filesystem, "build_root", "P: build_root (tmpfs, binds, pivot_root)")
    _wrap(filesystem, "mount_proc", "P: mount /proc")
    _wrap(filesystem, "seal_root", "P: remount root read-only")
    _wrap(linux, "sethostname", "P: sethostname")
    _wrap(jail, "_close_other_fds", "P: close fds")
    _wrap(jail, "_set_rlimits", "P: rlimits")
    _wrap(jail, "_drop_to_sandbox_user", "P: drop to uid 65534, userns, caps")
    _wrap(landlock, "restrict_self", "P: landlock")
    _wrap(seccomp_filter, "load_filter", "P: seccomp build+load")
    _wrap(seccomp_filter, "build_filter", "P: seccomp build_filter (part of the above)")
    # The runner inside P.
    _wrap(runner, "_load_code", "runner: read+compile code")
    _wrap(runner, "_pick_strategy", "runner: pick strategy class")
    _wrap(backtesting.Backtest, "__init__", "runner: Backtest()")
    _wrap(stats, "stats_to_dict", "runner: stats_to_dict")
    _wrap(stats, "equity_curve", "runner: equity_curve")
    _wrap(stats, "trades_summary", "runner: trades_summary")
    _wrap(runner, "encode_report", "runner: encode JSON report")

    original_run = backtesting.Backtest.run

    def run(self: Any, **kwargs: Any) -> Any:
        result = None
        for number in range(1, CHILD_REPEAT["runs"] + 1):
            faults, start = _minflt(), time.monotonic()
            result = original_run(self, **kwargs)
            PHASES.append((f"runner: Backtest.run #{number}", start, time.monotonic(), _minflt() - faults))
        return result

    backtesting.Backtest.run = run

    original_body = worker._child_body

    def child_body(*args: Any, **kwargs: Any) -> int:
        start = time.monotonic()
        faults = _minflt()
        try:
            return original_body(*args, **kwargs)
        except BaseException:
            import traceback

            os.write(2, traceback.format_exc().encode())
            raise
        finally:
            PHASES.append(("P: child body total", start, time.monotonic(), _minflt() - faults))
            total = resource.getrusage(resource.RUSAGE_SELF)
            PHASES.append(("P: process totals (minflt)", 0.0, 0.0, total.ru_minflt))
            line = MARKER + json.dumps({"phases": PHASES, "majflt": total.ru_majflt}) + "\n"
            with contextlib.suppress(OSError):
                os.write(2, line.encode())

    worker._child_body = child_body


def parse_child(stderr: str) -> dict[str, Any]:
    for line in reversed(stderr.splitlines()):
        if line.startswith(MARKER):
            data: dict[str, Any] = json.loads(line[len(MARKER):])
            return data
    raise RuntimeError(f"no profile line in the child's stderr: {stderr[-2000:]}")


_REUSABLE: Any = None  # the worker's one cgroup, reused across runs as worker.main does


def sandbox_run(request: dict[str, Any], *, cache: Any, mountpoint: str, use_cgroups: bool,
                baseline_vm: int, runs_in_child: int = 1) -> dict[str, Any]:
    from rbi.sandbox import worker

    PHASES.clear()
    CHILD_REPEAT["runs"] = runs_in_child
    start = time.monotonic()
    from rbi.sandbox import cgroups

    global _REUSABLE
    if use_cgroups and _REUSABLE is None:
        _REUSABLE = cgroups.ReusableCgroup(f"profile-{os.getpid()}")
    report = worker.run_one(request, cache=cache, mountpoint=mountpoint,
                            cgroup=_REUSABLE if use_cgroups else None, baseline_vm=baseline_vm)
    end = time.monotonic()
    parent_phases = list(PHASES)
    if report.get("worker_error") or not report.get("ready"):
        raise RuntimeError(f"the sandboxed run failed: {report.get('worker_error') or report.get('stderr')}")
    result = json.loads(report["result"])
    if result.get("error"):
        raise RuntimeError(f"the strategy failed: {result['error']}")
    child = parse_child(report["stderr"])
    child_phases = [p for p in child["phases"] if not p[0].startswith("worker:")]
    durations: dict[str, float] = {}
    faults: dict[str, int] = {}
    for label, t0, t1, flt in [*parent_phases, *child_phases]:
        durations[label] = durations.get(label, 0.0) + (t1 - t0)
        faults[label] = faults.get(label, 0) + flt
    first = {label: t0 for label, t0, _, _ in child_phases}
    last = {label: t1 for label, _, t1, _ in child_phases}
    # Gaps between the timed phases: the parts nobody wraps (fork itself, S forking P, exit).
    if "S: unshare namespaces" in first:
        durations["gap: run_one start → S has unshared"] = last["S: unshare namespaces"] - start
        durations["gap: S unshared → P starts jail"] = first["P: enter_jail total"] - last["S: unshare namespaces"]
        durations["gap: jail done → child body"] = first["P: child body total"] - last["P: enter_jail total"]
    else:
        durations["gap: run_one start → child body"] = first["P: child body total"] - start
    durations["gap: child body done → run_one returns"] = end - last["P: child body total"]
    durations["run_one total"] = end - start
    durations["child wall (report)"] = float(report["wall_time"])
    return {"durations": durations, "faults": faults, "cpu_time": float(report["cpu_time"]),
            "max_rss_bytes": int(report["max_rss_bytes"]), "majflt": child.get("majflt", 0)}


def plain_fork(request: dict[str, Any], frame: Any, *, iterations: int = 3) -> dict[str, Any]:
    """Fork with no jail and call `runner.execute` `iterations` times in that child.

    Iteration #1 pays whatever a fresh fork pays (copy-on-write faults, lazy
    initialisation the worker skipped); #2 and later are the warm, in-process cost
    of exactly the same code, so the difference isolates the fork from the jail.
    """
    import tempfile

    from rbi import runner

    code_file = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False)  # noqa: SIM115
    code_file.write(request["code"])
    code_file.close()
    read_fd, write_fd = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    forked = time.monotonic()
    if pid == 0:
        status = 1
        try:
            os.close(read_fd)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # the runner echoes a few warnings
            out: dict[str, Any] = {"durations": {"fork: child starts": time.monotonic() - start},
                                   "faults": {}}
            for number in range(1, iterations + 1):
                PHASES.clear()
                CHILD_REPEAT["runs"] = 1
                faults, t0 = _minflt(), time.monotonic()
                run_request = runner.RunRequest.from_json({**request["run"], "code_path": code_file.name})
                report = runner.execute(run_request, frame=frame)
                runner.encode_report(report)
                out["durations"][f"#{number} runner.execute + encode"] = time.monotonic() - t0
                out["faults"][f"#{number} runner.execute + encode"] = _minflt() - faults
                for label, p0, p1, flt in PHASES:
                    if label.startswith("runner:"):
                        key = f"#{number} {label}"
                        out["durations"][key] = out["durations"].get(key, 0.0) + p1 - p0
                        out["faults"][key] = out["faults"].get(key, 0) + flt
            os.write(write_fd, json.dumps(out).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    chunks = b""
    while chunk := os.read(read_fd, 65536):
        chunks += chunk
    os.close(read_fd)
    os.waitpid(pid, 0)
    os.unlink(code_file.name)
    data: dict[str, Any] = json.loads(chunks)
    data["durations"]["fork: os.fork() returns in the parent"] = forked - start
    data["durations"]["fork..reaped total"] = time.monotonic() - start
    return data


def equity_curve_vectorised(stats: Any, max_points: int = 2000) -> list[list[Any]]:
    """What `rbi.stats.equity_curve` returns, with numpy doing the per-point work.

    A sketch of the suggested change, kept here to measure it and to check that
    the output is identical; not a replacement for the real function's edge cases.
    """
    import numpy as np

    from rbi import stats as stats_module

    curve = stats["_equity_curve"]
    equity = curve["Equity"].to_numpy(dtype=float)
    drawdown = curve["DrawdownPct"].to_numpy(dtype=float)
    extremes = [int(f(series)) for series in (drawdown, equity) for f in (np.nanargmax, np.nanargmin)]
    positions = stats_module._downsample_positions(len(curve), max_points, extremes)
    times = [stamp.isoformat() for stamp in curve.index[positions]]

    def floats(values: Any) -> list[float | None]:
        return [v + 0.0 if np.isfinite(v) else None for v in values.tolist()]

    return [list(row) for row in zip(times, floats(equity[positions]), floats(-drawdown[positions] * 100),
                                     strict=True)]


def output_costs(frame: Any, strategy: type, repeat: int) -> dict[str, dict[str, float]]:
    """CPU ms of the runner's output steps in a warm process, and of two cheaper variants."""
    import warnings

    from backtesting import Backtest

    from rbi import runner
    from rbi import stats as stats_module

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = Backtest(frame, strategy, **runner.DEFAULT_BACKTEST).run()
    report = {"mode": "class", "error": None, "stats": stats_module.stats_to_dict(result),
              "params": stats_module.json_safe(stats_module.strategy_params(result)),
              "equity_curve": stats_module.equity_curve(result),
              "trades": stats_module.trades_summary(result), "execution_time": 1.0, "warnings": []}
    lean = {k: v for k, v in report.items() if k not in ("equity_curve", "trades")}
    fast = json.dumps(report, allow_nan=False, separators=(",", ":")).encode()
    steps: dict[str, Callable[[], Any]] = {
        "Backtest(...).run() itself, for scale": lambda: Backtest(frame, strategy,
                                                                 **runner.DEFAULT_BACKTEST).run(),
        "stats.stats_to_dict": lambda: stats_module.stats_to_dict(result),
        "stats.equity_curve (2000 points)": lambda: stats_module.equity_curve(result),
        "stats.trades_summary (all trades)": lambda: stats_module.trades_summary(result),
        "runner.encode_report (json_safe walk + dumps)": lambda: runner.encode_report(report),
        "variant: json.dumps(report) without the json_safe walk": lambda: json.dumps(
            report, allow_nan=False, separators=(",", ":")).encode(),
        "variant: equity curve with numpy per-point work": lambda: equity_curve_vectorised(result),
        "variant: encode_report with include_series=False": lambda: runner.encode_report(lean),
    }
    costs: dict[str, dict[str, float]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for label, step in steps.items():
            values = []
            for _ in range(repeat):
                start = time.process_time()
                step()
                values.append((time.process_time() - start) * 1000)
            costs[label] = {"median_cpu_ms": statistics.median(values), "min_cpu_ms": min(values)}
    costs["check: identical output"] = {
        "json.dumps == encode_report": float(fast == runner.encode_report(report)),
        "vectorised == equity_curve": float(equity_curve_vectorised(result) == report["equity_curve"]),
    }
    return costs


def seccomp_costs(repeat: int) -> dict[str, dict[str, float]]:
    """In a fresh fork (as P is): build and load the filter, or only load one built before the fork."""
    from rbi.sandbox import seccomp_filter

    prebuilt = seccomp_filter.build_filter()

    def in_child(prebuild: bool) -> dict[str, float]:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(read_fd)
                t0 = time.monotonic()
                flt = prebuilt if prebuild else seccomp_filter.build_filter()
                t1 = time.monotonic()
                flt.load()
                t2 = time.monotonic()
                os.write(write_fd, json.dumps({"build": t1 - t0, "load": t2 - t1}).encode())
            finally:
                os._exit(0)
        os.close(write_fd)
        data: dict[str, float] = json.loads(os.read(read_fd, 4096))
        os.close(read_fd)
        os.waitpid(pid, 0)
        return data

    results: dict[str, list[float]] = {}
    for _ in range(repeat):
        for prebuild in (False, True):
            data = in_child(prebuild)
            name = "built before fork" if prebuild else "built in the child (today)"
            results.setdefault(f"{name}: build ms", []).append(data["build"] * 1000)
            results.setdefault(f"{name}: load ms", []).append(data["load"] * 1000)
    return {label: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v)}
            for label, v in results.items()}


def _busy_loop(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def contention_test(prepared: Any, rounds: int, runs: int = 4) -> dict[str, dict[str, float]]:
    """Two workers under CPU contention, with per-run cgroups on and off.

    Starts one busy loop per CPU (plain processes in this process's cgroups), then times
    `execute_many` of `runs` runs on two workers, alternating the two pools. With cgroups on,
    every run's cpu cgroup sits under one `rbi` group, which competes as one task.
    """
    import multiprocessing

    from rbi.engine import LocalExecutor

    pools: dict[str, Any] = {}
    for label, value in (("cgroups on", None), ("cgroups off", "0")):
        previous = os.environ.pop("RBI_SANDBOX_CGROUPS", None)
        if value is not None:
            os.environ["RBI_SANDBOX_CGROUPS"] = value
        try:
            executor = LocalExecutor(workers=2)
            list(executor.execute_many([prepared, prepared]))  # both workers up
        finally:
            os.environ.pop("RBI_SANDBOX_CGROUPS", None)
            if previous is not None:
                os.environ["RBI_SANDBOX_CGROUPS"] = previous
        pools[label] = executor
    durations: dict[str, list[float]] = {label: [] for label in pools}
    budget = 30.0 * rounds * len(pools) * runs / 2
    context = multiprocessing.get_context("fork")
    hogs = [context.Process(target=_busy_loop, args=(budget,), daemon=True) for _ in range(os.cpu_count() or 1)]
    for hog in hogs:
        hog.start()
    try:
        for _ in range(rounds):
            for label, executor in pools.items():
                start = time.monotonic()
                outcomes = list(executor.execute_many([prepared] * runs))
                durations[label].append(time.monotonic() - start)
                if any(o.error for o in outcomes):
                    raise RuntimeError(f"a run failed under contention: {outcomes}")
    finally:
        for hog in hogs:
            hog.terminate()
            hog.join()
        for executor in pools.values():
            executor.close()
    return {label: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v),
                    "runs_per_s": runs / statistics.median(v)} for label, v in durations.items()}


def summarise(samples: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    labels: list[str] = []
    for sample in samples:
        for label in sample["durations"]:
            if label not in labels:
                labels.append(label)
    table: dict[str, dict[str, float]] = {}
    for label in labels:
        values = [s["durations"][label] for s in samples if label in s["durations"]]
        faults = [s.get("faults", {}).get(label) for s in samples]
        fault_values = [f for f in faults if f is not None]
        table[label] = {
            "median_ms": statistics.median(values) * 1000,
            "min_ms": min(values) * 1000,
            "max_ms": max(values) * 1000,
            "median_minflt": statistics.median(fault_values) if fault_values else float("nan"),
        }
    cpu = [s["cpu_time"] for s in samples if "cpu_time" in s]
    if cpu:
        table["child CPU time (user+sys, from wait4)"] = {
            "median_ms": statistics.median(cpu) * 1000, "min_ms": min(cpu) * 1000, "max_ms": max(cpu) * 1000,
            "median_minflt": float("nan"),
        }
    return table


def print_table(name: str, table: dict[str, dict[str, float]]) -> None:
    print(f"\n== {name}")
    print(f"{'phase':<52} {'median ms':>10} {'min ms':>9} {'max ms':>9} {'minflt':>9}")
    for label, row in table.items():
        flt = "" if row["median_minflt"] != row["median_minflt"] else f"{row['median_minflt']:.0f}"
        print(f"{label:<52} {row['median_ms']:>10.1f} {row['min_ms']:>9.1f} {row['max_ms']:>9.1f} {flt:>9}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="runs per configuration (default 7)")
    parser.add_argument("--contention", type=int, default=0, metavar="ROUNDS",
                        help="also time 2 workers against one busy loop per CPU, cgroups on vs off "
                             "(loads the machine; default 0: skip)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)

    # As the real worker does: one BLAS/OpenMP thread, set before numpy is imported.
    for var in THREAD_VARS:
        os.environ[var] = "1"
    os.environ.setdefault("RBI_HOME", str(ROOT / ".rbi"))
    from rbi.engine import prepare
    from rbi.sandbox import cgroups, filesystem, worker
    from rbi.spec import StrategySpec

    # In the real worker fd 3 is taken (main() leaves the /dev/null it opened there). run_one dup2()s
    # the result pipe onto fd 3 and then closes its own pipe fds, so a pipe that had landed on fd 3
    # would close the result channel. Take fd 3 here too, as the worker does.
    try:
        os.fstat(3)
    except OSError:
        os.dup2(os.open(os.devnull, os.O_RDONLY), 3)

    code = STRATEGY_FILE.read_text(encoding="utf-8")
    runs = {
        "sma": prepare(StrategySpec(name="sma-cross", code=code, mode="class")),
        "noop": prepare(StrategySpec(name="sma-cross-noop", code=noop_code(code), mode="class")),
    }
    requests = {key: {**run.request(), "id": 0, "unsafe": False} for key, run in runs.items()}

    t0 = time.monotonic()
    worker._preload()
    preload_s = time.monotonic() - t0
    cgroups_ok = cgroups.available()
    mountpoint = filesystem.mountpoint_for_new_root()
    cache = worker.FrameCache()
    frame = cache.get(runs["sma"].data_file)
    baseline_vm = worker._vm_size()

    instrument()
    gc.collect()
    gc.freeze()

    configs: dict[str, Callable[[], dict[str, Any]]] = {
        "sandbox+cgroups": lambda: sandbox_run(requests["sma"], cache=cache, mountpoint=mountpoint,
                                               use_cgroups=cgroups_ok, baseline_vm=baseline_vm),
        "sandbox-no-cgroups": lambda: sandbox_run(requests["sma"], cache=cache, mountpoint=mountpoint,
                                                  use_cgroups=False, baseline_vm=baseline_vm),
        "fork-only (unsafe, no isolation)": lambda: sandbox_run(
            {**requests["sma"], "unsafe": True}, cache=cache, mountpoint=mountpoint, use_cgroups=False,
            baseline_vm=baseline_vm),
        "sandbox+cgroups, Backtest.run twice in the child": lambda: sandbox_run(
            requests["sma"], cache=cache, mountpoint=mountpoint, use_cgroups=cgroups_ok,
            baseline_vm=baseline_vm, runs_in_child=2),
        "plain fork, no jail: runner.execute x3 in one child": lambda: plain_fork(requests["sma"], frame),
        "noop-next sandbox+cgroups": lambda: sandbox_run(requests["noop"], cache=cache, mountpoint=mountpoint,
                                                         use_cgroups=cgroups_ok, baseline_vm=baseline_vm),
    }
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    for action in configs.values():  # one untimed round: first-call costs in the worker itself
        action()
    for round_number in range(args.repeat):
        for name, action in configs.items():
            samples[name].append(action())
        print(f"round {round_number + 1}/{args.repeat} done", file=sys.stderr)

    tables = {name: summarise(values) for name, values in samples.items()}
    for name, table in tables.items():
        print_table(name, table)

    # After every fork, so that nothing below changes what the children inherited.
    sys.path.insert(0, str(STRATEGY_FILE.parent))
    from sma_cross import SmaCross

    costs = output_costs(frame, SmaCross, max(3, args.repeat))
    print("\n== runner output, warm, in this process (CPU ms)")
    for label, row in costs.items():
        print(f"{label:<58} " + "  ".join(f"{k}={v:.1f}" for k, v in row.items()))
    seccomp = seccomp_costs(max(3, args.repeat))
    print("\n== seccomp filter in a fresh fork (ms)")
    for label, row in seccomp.items():
        print(f"{label:<58} median={row['median_ms']:.2f}  min={row['min_ms']:.2f}  max={row['max_ms']:.2f}")
    contention = contention_test(runs["sma"], args.contention) if args.contention else {}
    if contention:
        print(f"\n== 2 workers x 4 runs against {os.cpu_count()} busy loops (s per batch)")
        for label, row in contention.items():
            print(f"{label:<20} " + "  ".join(f"{k}={v:.2f}" for k, v in row.items()))
    cpu_shares = {}
    for path in ("/sys/fs/cgroup/cpu/rbi/cpu.shares", "/sys/fs/cgroup/cpu.weight"):
        with contextlib.suppress(OSError):
            cpu_shares[path] = Path(path).read_text().strip()

    args.out.mkdir(parents=True, exist_ok=True)
    import backtesting
    import pandas

    info = {
        "cpu_count": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release(),
        "backtesting": backtesting.__version__, "pandas": pandas.__version__, "cgroups": cgroups_ok,
        "euid": os.geteuid(), "preload_s": preload_s, "repeat": args.repeat,
        "loadavg_end": os.getloadavg(), "worker_vm_bytes": baseline_vm, "cpu_group_weight": cpu_shares,
    }
    (args.out / "profile_sandbox.json").write_text(json.dumps({"machine": info, "tables": tables,
                                                               "output_costs": costs, "seccomp": seccomp,
                                                               "contention": contention,
                                                               "samples": samples}, indent=1))
    print(f"\nwrote {args.out / 'profile_sandbox.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
