"""``cdra data prepare``: DeepPref trees or PrefEval pairs -> training and evaluation files, all or nothing.

    prepare_deeppref("trees/", "out/", PrepareOptions(eval_size=300, seed=0))   # 4 jsonl files + stats.json
    prepare_prefeval("prefeval_explicit/", "out/", PrepareOptions())           # rl_prompts, eval, stats.json

The outputs are one set, written through :class:`AtomicFiles` (journalled commit: never a mix of two runs, nothing
half-written, stale temporaries of interrupted runs swept, the output directory locked while a run writes, and not
left behind empty by a failed run). An output directory that is the input folder or inside it is refused (the next
run would read the outputs as input). One that already holds any of the known output names is refused unless
``overwrite`` is set; with it, known outputs this mode does not produce (e.g. ``prm_sft.jsonl`` left from a DeepPref
run, when preparing PrefEval) are deleted by the same commit, so ``stats.json`` always describes every file beside it.
"""

import glob
import itertools
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from cdra_plugin import __version__
from cdra_plugin.data.convert import EVAL, PRM_EXAMPLE_MODES, PRM_SFT, RFT, RL_PROMPTS, deeppref_rows, prefeval_rows
from cdra_plugin.data.loader import Loaded, load_deeppref, load_prefeval
from cdra_plugin.data.split import eval_units, units_of
from cdra_plugin.data.stats import Stats
from cdra_plugin.io.writer import AtomicFiles

STATS = "stats.json"
DEEPPREF_OUTPUTS = (PRM_SFT, RFT, RL_PROMPTS, EVAL)
PREFEVAL_OUTPUTS = (RL_PROMPTS, EVAL)
KNOWN_OUTPUTS = (*DEEPPREF_OUTPUTS, STATS)
OPTIONS_USED = {
    "deeppref": ("eval_size", "seed", "top_k", "prm_examples", "skip_invalid"),
    "prefeval": ("eval_size", "seed", "skip_invalid"),
}


class PrepareError(ValueError):
    """A request that cannot be carried out (existing outputs, nothing valid to convert, bad option)."""


@dataclass
class PrepareOptions:
    eval_size: int = 300
    seed: int = 0
    top_k: int = 1
    prm_examples: str = "node"
    skip_invalid: bool = False
    overwrite: bool = False
    progress: bool = True


def check_output_dir(output: Path, overwrite: bool) -> None:
    """Refuse to replace earlier outputs silently, and refuse names taken by directories."""
    present = [name for name in KNOWN_OUTPUTS if (output / name).exists()]
    blocked = [name for name in present if (output / name).is_dir()]
    if blocked:
        raise PrepareError(
            f"{output} has directories named {', '.join(blocked)}: move them or choose another --output"
        )
    if present and not overwrite:
        raise PrepareError(
            f"{output} already holds {', '.join(present)}; pass --overwrite to replace them or choose another --output"
        )


def check_apart(output: Path, spec, option: str) -> None:
    """Refuse an ``output`` that is the input folder (or the folder a glob reads from), or inside it, symlinks
    resolved: the next run would read this run's files as input, and ``overwrite`` could replace input files."""
    given = Path(spec)
    if given.is_dir():
        base = given
    elif not given.is_file() and glob.has_magic(str(spec)):
        base = Path(*itertools.takewhile(lambda part: not glob.has_magic(part), given.parts))
    else:
        return  # one input file: outputs beside it are never read as input
    out, source = output.resolve(), base.resolve()
    if out == source or source in out.parents:
        where = "the same folder as" if out == source else "inside"
        linked = (out, source) != (output.absolute(), base.absolute())  # a symlink on the way: say where it leads
        real = (f" (both are {out})" if out == source else f" ({out} is inside {source})") if linked else ""
        raise PrepareError(
            f"--output {output} is {where} {option} {spec}{real}: the next run would read this run's files as input; "
            "choose an --output outside the input"
        )


def _check_options(options: PrepareOptions) -> None:
    if options.top_k < 1:
        raise PrepareError(f"--top-k must be >= 1, got {options.top_k}")
    if options.prm_examples not in PRM_EXAMPLE_MODES:
        raise PrepareError(f"--prm-examples must be one of {', '.join(PRM_EXAMPLE_MODES)}")


def _valid_records(loaded: Loaded, spec) -> list:
    if not loaded.records:
        raise PrepareError(f"no valid record in {spec} ({len(loaded.skipped)} skipped); nothing to write")
    return loaded.records


def _header(source: str, spec, loaded: Loaded, options: PrepareOptions, units: int, eval_keys: set) -> dict:
    return {
        "cdra_plugin": __version__,
        "source": source,
        "input": str(spec),
        "files": loaded.files,
        "options": {k: v for k, v in asdict(options).items() if k in OPTIONS_USED[source]},
        "records": {"valid": len(loaded.records), "distinct_scenarios": units, "eval_scenarios": len(eval_keys)},
        "skipped": {"count": len(loaded.skipped), "records": [err.as_dict() for err in loaded.skipped]},
    }


def _progress(records: list, options: PrepareOptions, source: str) -> tqdm:
    return tqdm(records, desc=f"prepare {source}", unit="record", disable=not options.progress, file=sys.stderr)


def _prepare(source: str, spec, output, options: PrepareOptions, load, names: tuple[str, ...], to_rows) -> dict:
    """Load, split and convert inside one locked, journalled AtomicFiles set; returns the stats written."""
    output = Path(output)
    _check_options(options)
    if output.exists() and not output.is_dir():
        raise PrepareError(f"--output {output} exists and is not a directory")
    check_apart(output, spec, "--input" if source == "deeppref" else "--prefeval")
    with AtomicFiles(output, replaces=KNOWN_OUTPUTS) as files:
        check_output_dir(output, options.overwrite)  # after the writer completed any interrupted commit
        loaded = load(spec, options.skip_invalid)
        records = _valid_records(loaded, spec)
        units = units_of(records)
        eval_keys = eval_units(units, options.eval_size, options.seed)
        stats, counts = Stats(), dict.fromkeys(names, 0)
        streams = {name: files.open(name) for name in names}
        with _progress(records, options, source) as bar:  # closed (its line ended) before any error is printed
            for name, row in to_rows(bar, eval_keys, stats):
                streams[name].write(json.dumps(row, ensure_ascii=False) + "\n")
                counts[name] += 1
        result = {**_header(source, spec, loaded, options, len(units), eval_keys), "outputs": counts}
        result.update(stats.to_dict())
        files.write_json(STATS, result)
    return result


def prepare_deeppref(spec, output, options: PrepareOptions) -> dict:
    """prm_sft.jsonl, rft.jsonl, rl_prompts.jsonl, eval.jsonl and stats.json from DeepPref trees."""

    def to_rows(records, eval_keys, stats):
        return deeppref_rows(records, eval_keys, stats, options.top_k, options.prm_examples)

    return _prepare("deeppref", spec, output, options, load_deeppref, DEEPPREF_OUTPUTS, to_rows)


def prepare_prefeval(spec, output, options: PrepareOptions) -> dict:
    """rl_prompts.jsonl, eval.jsonl and stats.json from PrefEval (preference, question) pairs."""
    return _prepare("prefeval", spec, output, options, load_prefeval, PREFEVAL_OUTPUTS, prefeval_rows)
