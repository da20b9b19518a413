"""Time `rbi loop` on the example ideas: scripted model answers, real sandbox runs, real optimisation.

The model is the scripted OpenAI-compatible server of the tests (answers chosen by the idea they are
for, so concurrency does not reorder them); everything else is what a user runs: the agents' judging,
packaging, the sandbox, the debug loop (one idea's code needs a fixer), the optimizer with its default
budget in the loop (TPE, 20 trials, up to 2 iterations, look-ahead check) on the bundled 31,066 bars.

    .venv/bin/python benchmarks/bench_loop.py --out benchmarks/results [--concurrency 2] [--workers 2]

Writes loop.json and loop.md; prints the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.llm.fake_openai import Reply, RoutedOpenAI  # noqa: E402
from tests.loop.answers import fenced, strategy_code  # noqa: E402

from rbi.engine import LocalExecutor  # noqa: E402
from rbi.llm import LLMClient  # noqa: E402
from rbi.loop import IdeaLoop, LoopSettings, read_ideas  # noqa: E402
from rbi.store import ResultStore  # noqa: E402


def research(name: str) -> str:
    spec = {"name": name, "summary": "SMA crossover, long and short.",
            "rules": ["long when the fast SMA crosses above the slow SMA", "short on the opposite cross"],
            "parameters": [{"name": "fast", "type": "int", "default": 10, "low": 5, "high": 50, "step": 5},
                           {"name": "slow", "type": "int", "default": 40, "low": 60, "high": 400, "step": 20}]}
    return f"```json\n{json.dumps(spec)}\n```"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    ideas = read_ideas(REPO / "examples" / "ideas.txt")
    routes: list[tuple[str, Reply]] = []
    for number, idea in enumerate(ideas):
        name = f"bench-idea-{number}"
        # The second idea's code sizes orders in 1.5 units: the run fails and a deterministic fixer repairs it.
        code = strategy_code(f"BenchIdea{number}", size="1.5" if number == 1 else "0.5")
        routes += [(idea.text, Reply.text(research(name))),
                   (f"Write the strategy `{name}`", Reply.text(fenced(code)))]
    with tempfile.TemporaryDirectory() as home:
        store = ResultStore(f"sqlite:///{home}/rbi.db")
        store.migrate()
        with RoutedOpenAI(routes) as server, LocalExecutor(workers=args.workers) as executor:
            client = LLMClient(server.config(model="gpt-4o-mini"))
            settings = LoopSettings(concurrency=args.concurrency)
            started = time.monotonic()
            summary = IdeaLoop(store=store, client=client, executor=executor, settings=settings).run(ideas)
            wall = time.monotonic() - started
        runs = len(store.list_runs(limit=100_000))
        store.close()
    data = summary.to_json()
    data.update({"wall_seconds": round(wall, 2), "concurrency": args.concurrency, "workers": args.workers,
                 "stored_runs": runs, "seconds_per_idea": round(wall / max(1, len(ideas)), 2)})
    rows = ["| idea | strategy | status | runs | fixes | out-of-sample sharpe: parent → best | note |",
            "|---|---|---|---:|---:|---|---|"]
    for result in data["results"]:
        rows.append(f"| {result['title'][:40]} | {result['name']} | {result['status']} | {result['runs']} | "
                    f"{result['attempts']} | {result['baseline']:.2f} → {result['best']:.2f} | "
                    f"{str(result['message'])[:60]} |" if result["baseline"] is not None else
                    f"| {result['title'][:40]} | {result['name']} | {result['status']} | {result['runs']} | "
                    f"{result['attempts']} | — | {str(result['message'])[:60]} |")
    markdown = "\n".join([
        f"`rbi loop` on {len(ideas)} ideas, {args.concurrency} at a time, {args.workers} sandboxes: "
        f"**{wall:.1f} s** wall ({data['seconds_per_idea']} s per idea), {runs} stored runs, "
        f"{data['prompt_tokens']} + {data['completion_tokens']} tokens, ${data['cost_usd']:.5f} at gpt-4o-mini "
        "prices (scripted answers).", "", *rows])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "loop.json").write_text(json.dumps(data, indent=2, default=str))
    (args.out / "loop.md").write_text(markdown + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
