"""A whole ``cdra build``: scenarios in parallel through the council, journaled as they finish, then compiled.

    options = BuildOptions("pairs.jsonl", Path("out/trees"), TreeShape(), limit=100)
    stats = asyncio.run(build(options, generator_client, evaluator_client))   # the caller closes the clients

Up to ``parallel`` scenarios are in flight at once; each runs its levels one after the other with all calls of a
level concurrent, and the clients' per-backend concurrency caps decide how many requests reach a server. Many
scenarios in flight keep the servers busy through each scenario's level barriers (scripts/bench_build.py).

Resuming: scenarios already in the journal are not built again (``retry_skipped`` rebuilds the skipped ones, e.g.
after a backend outage), and the compiled files hold every built scenario of the journal, so an interrupted build
started again ends with the same files and counts as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from cdra_plugin import __version__
from cdra_plugin.construct import prompts
from cdra_plugin.construct.io import BuildError, Journal, check_output, compile_outputs, read_pairs, save_config
from cdra_plugin.construct.stats import Tally
from cdra_plugin.construct.tree import Built, Council, Pair, TreeShape
from cdra_plugin.io.pool import for_each
from cdra_plugin.llm.client import LLMClient

logger = logging.getLogger("cdra.build")
LISTED_SKIPS = 100  # skipped scenarios listed one by one in build_stats.json


@dataclass
class BuildOptions:
    input: str | Path
    output: Path
    shape: TreeShape
    limit: int | None = None
    seed: int | None = 0
    parallel: int = 64
    retry_skipped: bool = False
    progress: bool = True
    health_check: bool = True


def prompts_digest() -> str:
    """Identifies the prompt texts: a journal built with other prompts is not resumed with these."""
    texts = [prompts.HYPOTHESIS_TEMPLATE, prompts.FOLLOW_UP_TEMPLATE, prompts.NODE_SCORE_TEMPLATE,
             prompts.PATH_SCORE_TEMPLATE, prompts.ANSWER_TEMPLATE]  # fmt: skip
    return hashlib.sha256("\0".join(texts).encode()).hexdigest()[:16]


def tree_config(options: BuildOptions, generator: LLMClient, evaluator: LLMClient) -> dict:
    """Everything that shapes a tree (not the URLs, limits or concurrency, which a resume may change)."""
    shape = options.shape
    return {
        "personas": [[p.name, p.description] for p in shape.personas],
        "branch": shape.branch,
        "depth": shape.depth,
        "prune_below": shape.prune_below,
        "keep_top": shape.keep_top,
        "seed": options.seed,
        "generator": {"model": generator.model, "format": generator.prompt_format, **generator.sampling},
        "evaluator": {"model": evaluator.model, "format": evaluator.prompt_format, **evaluator.sampling},
        "prompts": prompts_digest(),
    }


async def build(options: BuildOptions, generator: LLMClient, evaluator: LLMClient) -> dict:
    """Build every selected scenario not yet journaled, then compile the outputs; returns build_stats."""
    if options.parallel < 1:
        raise BuildError(f"--parallel must be >= 1, got {options.parallel}")
    if options.limit is not None and options.limit < 0:
        raise BuildError(f"--limit must be >= 0, got {options.limit}")
    pairs, duplicates = read_pairs(options.input)
    config = tree_config(options, generator, evaluator)
    state = check_output(Path(options.output), config)
    with Journal(state) as journal:
        done, runs = journal.load()
        selected = pairs[: options.limit] if options.limit is not None else pairs
        todo = [p for p in selected if _needs_build(done.get(p.key), options.retry_skipped)]
        if todo and options.health_check:
            await _check_health(generator, "--generator")
            await _check_health(evaluator, "--evaluator")
        save_config(state, config)
        council = Council(generator, evaluator, options.shape, seed=options.seed)
        started, counts = time.perf_counter(), Counter()
        run = {"type": "run", "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "todo": len(todo)}
        try:
            await _build_all(todo, council, options, journal, done, counts)
        except BaseException:
            run["interrupted"] = True
            raise
        finally:
            run.update(wall_s=round(time.perf_counter() - started, 3), **counts)
            journal.append(run)
            runs.append(run)
        stats = summarize(options, config, pairs, duplicates, selected, done, runs)
        compile_outputs(Path(options.output), done, stats)
    return stats


def _needs_build(entry: dict | None, retry_skipped: bool) -> bool:
    return entry is None or (retry_skipped and entry["status"] == "skipped")


async def _check_health(client: LLMClient, option: str) -> None:
    bad = [entry for entry in await client.health() if not entry["ok"]]
    if bad:
        detail = "; ".join(f"{e['backend']}: {e.get('error', 'not ok')}" for e in bad)
        raise BuildError(f"{option} is not usable ({detail}); fix it, or pass --skip-health-check")


async def _build_all(todo, council: Council, options: BuildOptions, journal: Journal, done: dict, counts) -> None:
    bar = tqdm(total=len(todo), desc="cdra build", unit="scenario", disable=not options.progress, file=sys.stderr)

    async def one(pair: Pair) -> None:
        built = await council.build(pair)
        entry = _journal_entry(built)
        journal.append(entry)
        done[pair.key] = entry
        counts[entry["status"]] += 1
        if built.skip_reason:
            logger.warning("skipped %s:%d: %s", pair.source["file"], pair.source["index"], built.skip_message)
        bar.update()
        bar.set_postfix(built=counts["built"], skipped=counts["skipped"], refresh=False)

    try:
        await for_each(todo, one, options.parallel)  # on an error or an interrupt, all stop before the journal closes
    finally:
        bar.close()


def _journal_entry(built: Built) -> dict:
    pair: Pair = built.pair
    entry = {"type": "scenario", "key": pair.key, "topic": pair.topic, "source": pair.source}
    if built.record is not None:
        entry.update(status="built", record=built.record)
    else:
        entry.update(status="skipped", reason=built.skip_reason, message=built.skip_message)
    entry["tally"] = built.tally
    return entry


def summarize(options, config, pairs, duplicates, selected, done: dict, runs: list) -> dict:
    """build_stats.json: sums over the journal's scenarios (so a resumed build counts like an uninterrupted one)."""
    total, topics, reasons, skipped = Tally(), Tally(), Counter(), []
    for entry in done.values():
        total.merge(entry["tally"])
        topics.add(entry["topic"], entry["status"])
        if entry["status"] == "built":
            topics.add(entry["topic"], "paths", n=len(entry["record"]["response_list"]))
        else:
            reasons[entry["reason"]] += 1
            skipped.append({"source": entry["source"], "reason": entry["reason"], "message": entry["message"]})
    built = sum(e["status"] == "built" for e in done.values())
    selected_keys = {p.key for p in selected}
    calls = total.data.get("calls", {})
    requests = sum(stage.get("calls", 0) for stage in calls.values())
    return {
        "cdra_plugin": __version__,
        "input": str(options.input),
        "config": config,
        "scenarios": {
            "input_rows": len(pairs) + duplicates,
            "duplicates": duplicates,
            "selected": len(selected),
            "built": built,
            "skipped": len(done) - built,
            "not_yet_built": len(selected_keys - done.keys()),
            "skipped_by_reason": dict(sorted(reasons.items())),
            "skipped_list": sorted(skipped, key=lambda s: (s["source"]["file"], s["source"]["index"]))[:LISTED_SKIPS],
        },
        "topics": topics.to_dict(),
        **{key: {} for key in ("nodes", "paths", "failures", "calls", "tokens")},
        **total.to_dict(),
        "calls_per_scenario": round(requests / len(done), 2) if done else 0.0,
        "wall_time_s": round(sum(r.get("wall_s", 0.0) for r in runs), 3),
        "runs": runs,
    }
