"""A policy that learns from CDPA on a CPU: tiny model, scripted Pers-GenPRM, the real gateway, TRL's trainer.

OpenRLHF needs GPUs, so its tests stop at one policy-gradient step. Here the whole loop of paper Section 2.4 runs
for real in a minute or two on two cores:

1. Policy initialisation (Step 1, the paper's RFT, in miniature): a random tiny Qwen2
   (``cdra_plugin.stub.tiny_model``) is fine-tuned on synthetic answers in the policy's format,
   "Step 1: w w w.\\nStep 2: ...", words drawn uniformly from ``WORDS``, so it writes steps at all.
2. Group sampling (Step 2): TRL's ``GRPOTrainer`` loop samples G = 5 completions per prompt at temperature 1.0.
3. Step rewards (Step 3): ``GatewayReward`` posts them to the real gateway (``cdra prm serve``'s app, on
   loopback) whose PRM is ``ScriptedLLM`` with a rule the policy can learn: a step scores +1 when it contains
   ``TARGET`` ("quiet") and -1 otherwise, so the mean step score on [-1, 1] measures what was learnt.
4. Advantages and update (Steps 4-5): ``CDPAGRPOTrainer`` with ``CDPAConfig.mode`` = ``token_position`` (Eq. 3)
   for ``mode="cdpa"``, ``outcome`` (GRPO on R_dense, the comparison) for ``mode="outcome"``, and any other of
   ``cdra_plugin.cdpa.advantage.MODES`` by its name (``group_steps``, ``process``, ``min_form``).

    curve = learning_curve("cdpa", steps=30)   # LearningCurve(mode, scores, num_steps, seconds), one value per step

The rule scores steps one at a time, so the policy also changes how many steps it writes, in the direction its
advantage rewards: the step-level modes learn to stop after one good step, GRPO on the sum R_dense writes more
steps (README, "Use with TRL"); ``num_steps`` records it.

``scripts/learn_trl.py`` runs it from the command line; ``tests/test_trl_learning.py`` asserts that it learns.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import torch

from cdra_plugin.cdpa.advantage import MODES as CDPA_MODES
from cdra_plugin.stub import BackgroundServer, ScriptedLLM, ScriptedRequest, score_text

TARGET = "quiet"
WORDS = ("quiet", "family", "explore", "trails", "comfort", "value", "context", "ideas")  # one token each
N_STEPS, WORDS_PER_STEP = 3, 3
PROMPTS = (  # (preference, question): the label the gateway reads; the rule itself ignores it
    ("I avoid crowds.", "Where should I travel in May?"),
    ("I cook for a family of five.", "What should I make tonight?"),
    ("I read before sleeping.", "Which lamp should I buy?"),
    ("I work from home.", "How should I plan my week?"),
)
G = 5  # responses per prompt (the paper's G)
MODES = {"cdpa": "token_position", **{mode: mode for mode in CDPA_MODES if mode != "token_position"}}  # name -> mode
_TARGET_WORD = re.compile(rf"\b{TARGET}\b", re.IGNORECASE)


class LearningCurve(NamedTuple):
    mode: str
    scores: list[float]  # mean PRM step score of each training step's completions, on [-1, 1]
    num_steps: list[float]  # mean number of steps per completion, per training step
    seconds: float


def judge(request: ScriptedRequest) -> str:
    """The scripted PRM: +1 for a step (the text after "New Thought to Evaluate:") containing TARGET, else -1."""
    step = request.prompt.rpartition("New Thought to Evaluate:")[2]
    return score_text(1.0 if _TARGET_WORD.search(step) else -1.0, critique=f"Mentions '{TARGET}'?")


def messages(preference: str, question: str) -> list[dict]:
    return [{"role": "user", "content": f"Preference: {preference}\nQuestion: {question}"}]


def _answer(rng: random.Random) -> str:
    lines = (" ".join(rng.choice(WORDS) for _ in range(WORDS_PER_STEP)) for _ in range(N_STEPS))
    return "\n".join(f"Step {k}: {words}." for k, words in enumerate(lines, start=1))


def build_policy(out_dir: str | Path, *, seed: int = 0, updates: int = 300, batch: int = 16, lr: float = 3e-3) -> Path:
    """A tiny random Qwen2 fine-tuned to answer in the step format (Step 1 above); returns its directory."""
    from cdra_plugin.stub.tiny_model import build_tiny_model

    with _one_thread():
        return _warm_up(build_tiny_model(out_dir), seed, updates, batch, lr)


def _warm_up(path: Path, seed: int, updates: int, batch: int, lr: float) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    prompts = [tokenizer.apply_chat_template(messages(*p), tokenize=False, add_generation_prompt=True)
               for p in PROMPTS]  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(updates):
        rows, labels = [], []
        for _ in range(batch):
            prompt = tokenizer(rng.choice(prompts), add_special_tokens=False)["input_ids"]
            answer = tokenizer(_answer(rng) + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
            rows.append(prompt + answer)
            labels.append([-100] * len(prompt) + answer)  # learn the answer, not the prompt
        width = max(map(len, rows))
        ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
        target = torch.tensor([r + [-100] * (width - len(r)) for r in labels])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        loss = model(input_ids=ids, attention_mask=mask, labels=target).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(path)
    return path


def learning_curve(
    mode: str = "cdpa",
    steps: int = 30,
    *,
    policy: str | Path | None = None,
    seed: int = 0,
    learning_rate: float = 1e-3,
    trainer_cls=None,
    prm=judge,
    progress: bool = False,
) -> LearningCurve:
    """Train ``steps`` GRPO steps of 4 prompts x G = 5 completions with ``mode``'s advantages (module docstring).

    policy: a checkpoint from ``build_policy`` (built here when None, a few seconds); trainer_cls: a
    ``CDPAGRPOTrainer`` subclass (tests record the batches with one); prm: the scripted PRM's script (request ->
    reply, default ``judge``); progress: TRL's progress bar on stderr.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: choose one of {', '.join(MODES)}")
    started = time.perf_counter()
    with _one_thread():
        trainer = _train(mode, steps, policy, seed, learning_rate, trainer_cls, prm, progress)
    logs = [log for log in trainer.state.log_history if "prm/mean_step_score" in log]
    scores, num_steps = ([log[key] for log in logs] for key in ("prm/mean_step_score", "prm/num_steps"))
    return LearningCurve(mode, scores, num_steps, time.perf_counter() - started)


def _train(mode, steps, policy, seed, learning_rate, trainer_cls, prm_script, progress):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback

    from cdra_plugin.cdpa.config import CDPAConfig
    from cdra_plugin.prm.config import GatewayConfig
    from cdra_plugin.prm.gateway import Gateway
    from cdra_plugin.prm.server import create_app
    from cdra_plugin.trl.reward import GatewayReward
    from cdra_plugin.trl.trainer import CDPAGRPOTrainer, GRPOConfig  # GRPOConfig: TRL's, through its adapter

    with tempfile.TemporaryDirectory(prefix="cdra-learn-") as tmp, ScriptedLLM(prm_script) as prm:
        policy = policy or build_policy(Path(tmp) / "policy", seed=seed)
        # the gateway as `cdra prm serve` builds it; a scripted PRM answers at once, so retries need no backoff. Its
        # scalar reward is the paper's R_dense (sum), what TRL's own GRPO baseline trains on. Steps of eight words
        # repeat by chance, and the curves compare modes, not the degenerate-step guard: it is off.
        config = GatewayConfig(backend=prm.base_url, model="scripted-prm", max_steps=8, failure_policy="drop",
                               reward_aggregation="sum", degenerate_guard=False,
                               client_options={"backoff": 0.01})  # fmt: skip
        with BackgroundServer(create_app(Gateway(config))) as gateway:
            tokenizer = AutoTokenizer.from_pretrained(policy)
            reward = GatewayReward(gateway.url + "/get_reward", tokenizer)
            rows = [{"prompt": messages(p, q), "label": json.dumps({"preference": p, "question": q})}
                    for p, q in PROMPTS]  # fmt: skip
            args = GRPOConfig(
                output_dir=str(Path(tmp) / "run"), max_steps=steps, seed=seed, learning_rate=learning_rate,
                lr_scheduler_type="constant", num_generations=G, temperature=1.0,
                per_device_train_batch_size=len(PROMPTS) * G, max_completion_length=48, beta=0.0,
                loss_type="dr_grpo", logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
                disable_tqdm=not progress, shuffle_dataset=False,
            )  # fmt: skip
            # outcome mode as the paper's GRPO on R_dense, the comparison
            cdpa = CDPAConfig(mode=MODES[mode], outcome_aggregation="sum")
            trainer_cls = trainer_cls or CDPAGRPOTrainer
            extra = {"cdpa": cdpa} if issubclass(trainer_cls, CDPAGRPOTrainer) else {}  # TRL's own: no CDPA options
            trainer = trainer_cls(
                AutoModelForCausalLM.from_pretrained(policy), reward_funcs=[reward], args=args,
                train_dataset=Dataset.from_list(rows), processing_class=tokenizer, **extra,
            )  # fmt: skip
            trainer.remove_callback(PrinterCallback)  # the curve is the output, not a dict per step on stdout
            trainer.train()
            reward.close()
    return trainer


def moving_average(scores: list[float], window: int = 5) -> list[float]:
    """Mean of each score and the ``window - 1`` before it (fewer at the start): the curve without sampling noise."""
    return [sum(scores[max(0, i + 1 - window) : i + 1]) / (i + 1 - max(0, i + 1 - window)) for i in range(len(scores))]


def steps_to_reach(scores: list[float], target: float, window: int = 5) -> int | None:
    """The first step (1-based) whose ``window``-step moving average reaches ``target``; None when none does."""
    return next((i + 1 for i, s in enumerate(moving_average(scores, window)) if i + 1 >= window and s >= target), None)


@contextlib.contextmanager
def _one_thread():
    """Torch on one thread: the matrices are tiny, and two OpenMP threads on a busy 2-core machine made each
    training step over ten times slower (they spin while waiting for each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
