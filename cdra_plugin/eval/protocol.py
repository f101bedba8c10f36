"""What an evaluation measured: the judge, its prompts and input, the generation settings, the plugin version.

``cdra eval generate`` writes its settings into every response row (``generation``); ``cdra eval judge`` writes
``judge_protocol`` into every judgment row (``protocol``) and carries ``generation`` over; ``cdra eval report`` reads
them back per run (``run_protocol``: a field whose rows disagree becomes the list of its values and is named in
``mixed``), prints one line per run (``describe``) and refuses to put runs judged differently in one table
(``differences``: judge model and settings, judge input, the prompt of any check both runs asked).

    protocol = judge_protocol(client, prompts, "full")   # {"judge", "judge_input", "prompts", "cdra_plugin"}
    differences(protocol_a, protocol_b)                  # ["judge model: 'judge' vs 'judge-2'", ...]; [] if alike
"""

from __future__ import annotations

import json

from cdra_plugin import __version__

NOT_RECORDED = "not recorded"  # rows written before the protocol was recorded


def judge_protocol(client, prompts: dict, judge_input: str) -> dict:
    """The ``protocol`` of a judgment row: how the judge (an ``LLMClient``) was asked, with ``prompts``' sources."""
    return {
        "judge": {"model": client.model, **client.sampling, "prompt_format": client.prompt_format},
        "judge_input": judge_input,
        "prompts": {check: prompt.describe() for check, prompt in prompts.items()},
        "cdra_plugin": __version__,
    }


def _distinct(values: list):
    """The one value of ``values``, or the list of their distinct values (in first-seen order) when they differ."""
    seen = {}
    for value in values:
        seen.setdefault(json.dumps(value, sort_keys=True), value)
    return next(iter(seen.values())) if len(seen) == 1 else list(seen.values())


def _generation(row: dict) -> dict:
    settings = row.get("generation") if isinstance(row.get("generation"), dict) else {"settings": NOT_RECORDED}
    return {"model": row.get("model"), "mode": row.get("mode"),
            **{k: v for k, v in settings.items() if k != "cdra_plugin"}}  # fmt: skip


def _version(recorded) -> str:
    return recorded.get("cdra_plugin", NOT_RECORDED) if isinstance(recorded, dict) else NOT_RECORDED


def run_protocol(rows: list[dict], interval: dict) -> dict:
    """The ``protocol`` block of one run in report.json, from its judgment rows."""
    judged = [row.get("protocol") if isinstance(row.get("protocol"), dict) else None for row in rows]
    judges = [p["judge"] if p else {"model": row.get("judge")} for p, row in zip(judged, rows, strict=True)]
    checks = sorted({check for p in judged if p for check in p.get("prompts", {})})
    block = {
        "judge": _distinct(judges),
        "judge_input": _distinct([p.get("judge_input") if p else NOT_RECORDED for p in judged]),
        "prompts": None if None in judged else {c: _distinct([p["prompts"].get(c) for p in judged]) for c in checks},
        "generation": _distinct([_generation(row) for row in rows]),
        "interval": interval,
        "cdra_plugin": {
            "generate": _distinct([_version(row.get("generation")) for row in rows]),
            "judge": _distinct([_version(p) for p in judged]),
            "report": __version__,
        },
    }
    prompts = block["prompts"] or {}
    block["mixed"] = [k for k in ("judge", "judge_input", "generation") if isinstance(block[k], list)] + [
        f"prompt {check}" for check, value in prompts.items() if isinstance(value, list)
    ]
    return block


def _prompt(value) -> str:
    if isinstance(value, dict):
        return f"{value.get('source')} (sha256 {str(value.get('sha256'))[:12]})"
    return NOT_RECORDED if value is None else "several: " + ", ".join(_prompt(v) for v in value)


def differences(a: dict | None, b: dict | None) -> list[str]:
    """How two protocols (of rows, or of runs) differ in the way the judge was asked; [] when they do not."""
    if a is None or b is None:
        return [] if a is b else [f"protocol: {_state(a)} vs {_state(b)}"]
    found = []
    judge_a, judge_b = a.get("judge"), b.get("judge")
    if not (isinstance(judge_a, dict) and isinstance(judge_b, dict)):
        if judge_a != judge_b:
            found.append(f"judge: {judge_a!r} vs {judge_b!r}")
    else:
        for key in dict.fromkeys([*judge_a, *judge_b]):
            if judge_a.get(key, NOT_RECORDED) != judge_b.get(key, NOT_RECORDED):
                found.append(f"judge {key}: {judge_a.get(key, NOT_RECORDED)!r} vs {judge_b.get(key, NOT_RECORDED)!r}")
    if a.get("judge_input") != b.get("judge_input"):
        found.append(f"judge input: {a.get('judge_input')} vs {b.get('judge_input')}")
    prompts_a, prompts_b = a.get("prompts"), b.get("prompts")
    if prompts_a is None or prompts_b is None:
        if prompts_a is not prompts_b:
            found.append(f"prompts: {_state(prompts_a)} vs {_state(prompts_b)}")
        return found
    for check in [c for c in prompts_a if c in prompts_b]:
        left, right = prompts_a[check], prompts_b[check]
        if _sha(left) != _sha(right):
            found.append(f"{check} prompt: {_prompt(left)} vs {_prompt(right)}")
    return found


def _state(value) -> str:
    return NOT_RECORDED if value is None else "recorded"


def _sha(value):
    """What makes two prompts the same: the hash of the text (a file and the project's text may coincide)."""
    return value.get("sha256") if isinstance(value, dict) else json.dumps(value, sort_keys=True)


def _number(value) -> str:
    if value is None:
        return "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe(block: dict) -> str:
    """One line of report.md: a run's protocol block in words."""
    judge = block["judge"]
    if isinstance(judge, dict):
        settings = [f"{k.replace('_', ' ')} {_number(v)}" for k, v in judge.items() if k != "model"]
        judge_text = f"judge `{judge.get('model')}`" + (f" ({', '.join(settings)})" if settings else "")
    else:
        judge_text = "judges " + ", ".join(f"`{j.get('model')}`" for j in judge) + " (mixed)"
    prompts = block["prompts"]
    if prompts is None:
        prompt_text = f"prompts {NOT_RECORDED}"
    else:
        project = [c for c, v in prompts.items() if isinstance(v, dict) and v.get("source") == "project"]
        others = [f"{c} {_prompt(v)}" for c, v in prompts.items() if c not in project]
        prompt_text = "prompts: " + "; ".join(
            ([f"project wording for {', '.join(project)}"] if project else []) + others
        )
    generation = block["generation"]
    if isinstance(generation, dict):
        settings = ", ".join(f"{k.replace('_', ' ')} {_shots(v) if k == 'shots' else _number(v)}"
                             for k, v in generation.items() if k not in ("model", "mode"))  # fmt: skip
        generation_text = f"generated by `{generation.get('model')}` in mode {generation.get('mode')} ({settings})"
    else:
        generation_text = "generation settings mixed (see report.json)"
    versions = block["cdra_plugin"]
    version_text = f"cdra-plugin {versions['generate']} (generate), {versions['judge']} (judge)"
    return "; ".join([judge_text, prompt_text, f"judge input {block['judge_input']}", generation_text, version_text])


def _shots(value) -> str:
    if not isinstance(value, dict):
        return "none" if value is None else str(value)
    return f"{value.get('file')} (k {value.get('k')}, sha256 {str(value.get('sha256'))[:12]})"
