"""Benchmark of the CDPA core on the CPU: step alignment and the advantage estimators.

(a) Step alignment for N responses of ~1,500 tokens with 5-8 steps each (synthetic, in the paper's response format
    with the usual variations: bold/heading/dash markers, preambles, final-answer lines, blank lines, Unicode):
    - ``align_steps``: what the CDPA experience maker runs, ``cdra_plugin.cdpa.align.align_steps`` over all the
      responses at once (``decode_groups`` -> ``segment_steps`` per text -> one step search per group of
      responses), from the generated ids (CPU LongTensors, as rows of the host's sequences); its decoding and its
      segmentation are also timed alone. Its result is checked against a per-token loop over the tokenizer's own
      offset mapping (a token belongs to the step holding its first character);
    - text given: encode the text with the tokenizer, then ``align_steps`` (the way for callers holding text);
    - naive: tokenise every step text separately and search its token subsequence in the response ids (cursor
      based, first-token check before comparing), as the paper's reference code does, once with the stripped step
      texts a PRM is given and once with the exact character slices; text and id list given (its best case; from
      the ids alone it would also decode, the "+ decode" row). A step whose subsequence is not found is a silent
      miss: its tokens get no step score.
    The response ids are the canonical encoding of the text, the naive way's best case (sampled ids can be
    non-canonical and then miss more). ``align_speedup`` is naive (stripped steps, text given) / ``align_steps``.
(b) ``cdpa_advantages`` for B x T rewards (groups of 8, lengths 1/8..1 of T, 5-8 steps) in every mode against a
    floor of one masked mean over the same tensor: OpenRLHF's ``masked_mean`` expression
    ``(x * mask).sum(-1) / mask.sum(-1)``, and a stricter ``where(mask, x, 0).sum() / mask.sum()``. The trainer
    runs the rows "with step_ids".
Times are medians of ``--repeats`` runs; each mode's floor is re-measured right before it, so a neighbour process
slowing the machine affects both. Prints a table, then one JSON object as the last line.

    python scripts/bench_advantage.py                      # full size, about 30 s on 2 cores
    python scripts/bench_advantage.py --responses 64 --batch 128 --length 512 --repeats 3    # smoke run
"""

import argparse
import bisect
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cdra_plugin import quiet_third_party  # noqa: E402

quiet_third_party()  # before torch is imported (pynvml's deprecation notice)

import torch  # noqa: E402
from machine import describe  # noqa: E402

from cdra_plugin.cdpa.advantage import MODES, cdpa_advantages  # noqa: E402
from cdra_plugin.cdpa.align import align_steps  # noqa: E402
from cdra_plugin.cdpa.detok import decode_groups  # noqa: E402
from cdra_plugin.cdpa.steps import segment_steps  # noqa: E402
from cdra_plugin.stub.tiny_model import ASSETS, build_tokenizer  # noqa: E402

MARKERS = ["Step {k}: ", "**Step {k}:** ", "### Step {k}\n", "Step {k} - ", "- Step {k}: ", "step {k}. "]
PREAMBLES = ["Sure! Let me reason about this step by step.\n\n", "Here is my analysis.\n"]


def _sentences() -> list[str]:
    lines = (ASSETS / "tokenizer_corpus.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().lower().startswith("step")]


def make_responses(n: int, target_tokens: int, tokenizer, rng: random.Random) -> list[str]:
    sentences = _sentences()
    probe = " ".join(sentences)
    chars_per_token = len(probe) / len(tokenizer(probe, add_special_tokens=False)["input_ids"])
    texts = []
    for _ in range(n):
        n_steps = rng.randint(5, 8)
        style = rng.choice(MARKERS)
        budget = int(target_tokens * chars_per_token / n_steps)
        parts = [rng.choice(PREAMBLES)] if rng.random() < 0.2 else []
        for k in range(1, n_steps + 1):
            body = []
            while sum(len(s) + 1 for s in body) < budget:
                body.append(rng.choice(sentences) + ("\n" if rng.random() < 0.1 else ""))
            marker = "Final answer: " if k == n_steps and rng.random() < 0.3 else style.format(k=k)
            parts.append(marker + " ".join(body).strip() + rng.choice(["\n", "\n\n"]))
        texts.append("".join(parts).rstrip())
    return texts


def naive_align(tokenizer, text: str, ids: list[int], strip: bool) -> tuple[list[int], int]:
    """Step of each token by re-tokenising step texts and searching them; -1 for tokens of missed steps."""
    owner, cursor, missed = [-1] * len(ids), 0, 0
    for step in segment_steps(text):
        piece = text[step.start : step.end]
        sub = tokenizer(piece.strip() if strip else piece, add_special_tokens=False)["input_ids"]
        found = -1
        for i in range(cursor, len(ids) - len(sub) + 1):
            if sub and ids[i] == sub[0] and ids[i : i + len(sub)] == sub:
                found = i
                break
        if found < 0:
            missed += 1
            continue
        owner[found : found + len(sub)] = [step.index] * len(sub)
        cursor = found + len(sub)
    return owner, missed


def offsets_reference(tokenizer, text: str, steps) -> list[int]:
    """Step of each token by a per-token loop over the tokenizer's own offset mapping of ``text``: the step holding
    the token's first character; a zero-width token takes the previous token's step."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    starts = [s.start for s in steps]
    out, current = [], 0
    for a, b in offsets:
        if b > a:
            current = bisect.bisect_right(starts, a) - 1
        out.append(current)
    return out


def encode_and_align(tokenizer, texts: list[str]):
    return align_steps(tokenizer, tokenizer(texts, add_special_tokens=False)["input_ids"])


def samples(fn, repeats: int) -> list[float]:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def timed(fn, repeats: int) -> float:
    return statistics.median(samples(fn, repeats))


def bench_alignment(args, tokenizer) -> dict:
    rng = random.Random(0)
    texts = make_responses(args.responses, args.tokens, tokenizer, rng)
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    tensors = [torch.tensor(i) for i in ids]  # what the experience maker holds: a row of exp.sequences
    aligned = align_steps(tokenizer, tensors)
    n_steps = sum(len(a.steps) for a in aligned)
    empty = sum(len(a.steps) - len(set(a.step_of_token.tolist())) for a in aligned)
    mismatches = sum(
        a.text != t or a.step_of_token.tolist() != offsets_reference(tokenizer, t, a.steps)
        for a, t in zip(aligned, texts, strict=True)
    )
    missed = {
        strip: sum(naive_align(tokenizer, t, i, strip)[1] for t, i in zip(texts, ids, strict=True))
        for strip in (True, False)
    }
    reps = max(1, args.repeats // 2)
    times = {
        "align_steps (ids -> steps)": timed(lambda: align_steps(tokenizer, tensors), args.repeats),
        "  decode_groups": timed(lambda: [len(g.texts) for g in decode_groups(tokenizer, tensors)], args.repeats),
        "  segment_steps": timed(lambda: [segment_steps(t) for t in texts], args.repeats),
        "text given: encode + align_steps": timed(lambda: encode_and_align(tokenizer, texts), reps),
        "naive (stripped steps)": timed(
            lambda: [naive_align(tokenizer, t, i, True) for t, i in zip(texts, ids, strict=True)], reps
        ),
        "naive (exact slices)": timed(
            lambda: [naive_align(tokenizer, t, i, False) for t, i in zip(texts, ids, strict=True)], reps
        ),
        "naive (stripped, + decode)": timed(lambda: [naive_from_ids(tokenizer, i) for i in ids], reps),
    }
    return {
        "texts": len(texts),
        "mean_tokens": statistics.fmean(len(i) for i in ids),
        "steps": n_steps,
        "offset_empty_steps": empty,
        "mismatches": mismatches,
        "missed": missed,
        "times": times,
    }


def naive_from_ids(tokenizer, ids: list[int]) -> list[int]:
    text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return naive_align(tokenizer, text, ids, True)[0]


def make_batch(batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(length // 8, length + 1, (batch,), generator=gen)
    positions = torch.arange(length)
    mask = positions[None, :] < lengths[:, None]
    n_steps = torch.randint(5, 9, (batch,), generator=gen)
    step_ids = torch.minimum(positions[None, :] * n_steps[:, None] // lengths[:, None], n_steps[:, None] - 1)
    scores = (torch.rand(batch, 8, generator=gen) * 2 - 1).mul(100).round().div(100)  # PRM-like, 2 decimals
    rewards = scores.gather(1, step_ids) * mask
    return rewards, mask, step_ids


def bench_advantages(args) -> dict:
    rewards, mask, step_ids = make_batch(args.batch, args.length)
    floors = {"masked_mean": [], "strict": []}
    cases = [("token_position (Eq. 3, no step_ids)", "token_position", None)]
    cases += [(f"{mode} (with step_ids)", mode, step_ids) for mode in MODES]
    rows = []
    for label, mode, ids in cases:
        # the floors are sampled between the cases and pooled, so a busy neighbour process hits both
        floors["masked_mean"] += samples(lambda: (rewards * mask).sum(-1) / mask.sum(-1), args.repeats)
        floors["strict"] += samples(lambda: torch.where(mask, rewards, 0).sum() / mask.sum(), args.repeats)
        seconds = timed(lambda: cdpa_advantages(rewards, mask, args.group, mode, step_ids=ids), args.repeats)  # noqa: B023
        rows.append((label, mode, ids is not None, seconds))
    return {"rows": rows, "floor": {k: statistics.median(v) for k, v in floors.items()}}


def machine() -> str:
    return f"{describe()}; torch {torch.__version__}, {torch.get_num_threads()} threads"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--responses", type=int, default=512, help="responses for the alignment benchmark")
    parser.add_argument("--tokens", type=int, default=1500, help="approximate tokens per response")
    parser.add_argument("--batch", type=int, default=1024, help="B for cdpa_advantages")
    parser.add_argument("--length", type=int, default=2048, help="T for cdpa_advantages")
    parser.add_argument("--group", type=int, default=8, help="group size G")
    parser.add_argument("--repeats", type=int, default=9, help="timed repetitions (median reported)")
    args = parser.parse_args()

    print(f"machine: {machine()}")
    tokenizer = build_tokenizer()
    align = bench_alignment(args, tokenizer)
    t = align["times"]
    naive, batched = t["naive (stripped steps)"], t["align_steps (ids -> steps)"]
    print(
        f"\n(a) step alignment: {align['texts']} responses, {align['mean_tokens']:.0f} tokens on average, "
        f"{align['steps']} steps; align_steps == the per-token loop over the tokenizer's offsets for "
        f"{align['texts'] - align['mismatches']}/{align['texts']} responses"
    )
    print(f"{'method':34s} {'total ms':>10s} {'us/response':>12s} {'missed steps':>13s} {'naive / this':>13s}")
    misses = {
        "naive (stripped steps)": align["missed"][True],
        "naive (exact slices)": align["missed"][False],
        "naive (stripped, + decode)": align["missed"][True],
    }
    for name, seconds in t.items():
        miss = f"{misses.get(name, align['offset_empty_steps']):13d}" if not name.startswith("  ") else f"{'':13s}"
        print(
            f"{name:34s} {seconds * 1e3:10.1f} {seconds / align['texts'] * 1e6:12.1f} {miss} {naive / seconds:12.1f}x"
        )

    adv = bench_advantages(args)
    floor, strict = adv["floor"]["masked_mean"], adv["floor"]["strict"]
    print(
        f"\n(b) cdpa_advantages, B={args.batch}, T={args.length}, G={args.group}, float32; floors (median): "
        f"masked_mean {floor * 1e3:.2f} ms, strict {strict * 1e3:.2f} ms"
    )
    print(f"{'mode':38s} {'ms':>8s} {'x masked_mean':>14s} {'x strict':>9s}")
    for label, _, _, sec in adv["rows"]:
        print(f"{label:38s} {sec * 1e3:8.2f} {sec / floor:14.2f} {sec / strict:9.2f}")

    tp = next(sec for _, mode, with_ids, sec in adv["rows"] if mode == "token_position" and not with_ids)
    result = {
        "machine": machine(),
        "align_responses": align["texts"],
        "align_mean_tokens": round(align["mean_tokens"], 1),
        "align_steps": align["steps"],
        "align_speedup": round(naive / batched, 2),
        "align_speedup_from_ids": round(t["naive (stripped, + decode)"] / batched, 2),
        "align_speedup_text_given": round(naive / t["text given: encode + align_steps"], 2),
        "align_us": round(batched / align["texts"] * 1e6, 1),
        "align_decode_us": round(t["  decode_groups"] / align["texts"] * 1e6, 1),
        "align_segment_us": round(t["  segment_steps"] / align["texts"] * 1e6, 1),
        "align_text_given_us": round(t["text given: encode + align_steps"] / align["texts"] * 1e6, 1),
        "align_naive_us": round(naive / align["texts"] * 1e6, 1),
        "align_mismatches": align["mismatches"],
        "naive_missed_steps": align["missed"][True],
        "naive_missed_steps_exact_slices": align["missed"][False],
        "offset_empty_steps": align["offset_empty_steps"],
        "floor_ms": round(floor * 1e3, 3),
        "strict_floor_ms": round(strict * 1e3, 3),
        "token_position_vs_floor": round(tp / floor, 2),
        "token_position_vs_strict_floor": round(tp / strict, 2),
    }
    for _, mode, with_ids, sec in adv["rows"]:
        key = mode + ("_with_step_ids" if with_ids and mode == "token_position" else "")
        result[f"{key}_ms"] = round(sec * 1e3, 2)
        result[f"{key}_vs_floor"] = round(sec / floor, 2)
    print(
        f"\nalignment: {result['align_speedup']}x the naive way with the text given, "
        f"{result['align_speedup_from_ids']}x from the ids; Eq. 3 (token_position): "
        f"{result['token_position_vs_floor']}x one masked mean over the same tensor"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
