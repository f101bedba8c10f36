"""CDPA inside the real OpenRLHF classes (CPU): parser, experiences, advantages, one policy-gradient step."""

import dataclasses
import math
import re
from types import SimpleNamespace

import pytest
import torch
from cdpa_host import cdpa_args, cdpa_maker, host_args, make_experience

from cdra_plugin.cdpa.advantage import MODES, cdpa_advantages
from cdra_plugin.cdpa.align import align_steps
from cdra_plugin.cdpa.carrier import FAILED_KEY, STEP_KEY, encode_step_scores
from cdra_plugin.cdpa.prompts import policy_prompt

LABEL = {"preference": "I avoid animals: allergies.", "question": "Outdoor ideas?", "id": "t/0", "topic": "t"}
EOT = "<|im_end|>"


@pytest.fixture(scope="module")
def prompt_text(tiny_tokenizer):
    messages = [{"role": "user", "content": policy_prompt(LABEL["preference"], LABEL["question"])}]
    return tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def reward(scores, width=8):
    info = {"rewards": float(sum(scores or [])), "scores": 0.5, "extra_logs": encode_step_scores(scores, width)}
    info["extra_logs"]["prm_num_steps"] = float(len(scores or []))
    return info


def run_advantages(maker, samples, kl=None):
    """The host's make_experience_batch minus the model forwards (which need GPUs): split, KL, advantages."""
    experiences = maker.split_rollout_samples(samples)
    for exp in experiences:
        exp.kl = torch.zeros(exp.action_mask.shape) if kl is None else kl(exp)
    return maker.compute_advantages_and_returns(experiences)


def char_starts(tokenizer, text):
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [start for start, _ in enc["offset_mapping"]]


def test_cli_is_the_host_parser_plus_cdpa(monkeypatch, tiny_model_path):
    args = cdpa_args(monkeypatch, tiny_model_path, "--cdpa.mode", "process", "--cdpa.eps", "1e-4", group_size=5)
    assert args.algo.advantage.estimator == "cdpa"
    assert args.cdpa.mode == "process" and args.cdpa.eps == 1e-4 and args.cdpa.failure_policy == "drop"
    assert args.rollout.n_samples_per_prompt == 5 and args.reward.remote_url == ["http://127.0.0.1:9/get_reward"]
    assert args.critic.model_name_or_path is None  # host validation ran (no critic for group estimators)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--no_such_option", "1"], "unrecognized arguments: --no_such_option"),
        (["--cdpa.mode", "bogus"], "--cdpa.mode must be one of token_position, group_steps, process, min_form"),
        (["--algo.advantage.estimator", "cdpa"], "n_samples_per_prompt >= 2"),
        (["--algo.advantage.estimator", "cdpa", "--rollout.n_samples_per_prompt", "4"], "--reward.remote_url"),
        (["--algo.advantage.estimator", "nope"], "invalid choice: 'nope'"),
        (["--cdpa.eps", "-1"], "--cdpa.eps must be >= 0"),
        (["--cdpa.trace_sample_rate", "2"], "--cdpa.trace_sample_rate must be within [0, 1]"),
        (["--cdpa.trace_max_mb", "0"], "--cdpa.trace_max_mb must be > 0"),
        (["--cdpa.outcome_aggregation", "max"], "--cdpa.outcome_aggregation must be one of min, mean, weighted_mean"),
        (["--cdpa.reward_aggregation", "mean"], "unknown option --cdpa.reward_aggregation; the CDPA options are"),
        (["--cdpa.mod", "process"], "unknown option --cdpa.mod"),
        (["--algo.advantage.estimator", "group_norm", "--cdpa.mode", "process"], "--cdpa.mode applies only with"),
    ],
)
def test_cli_errors_name_the_option(monkeypatch, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        host_args(monkeypatch, argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_one_config_owns_the_cdpa_options(monkeypatch, tiny_model_path):
    from cdra_plugin.cdpa import advantage, aggregation
    from cdra_plugin.cdpa.config import CDPAConfig
    from cdra_plugin.openrlhf.train import build_cdpa_parser

    fields = {f.name: f for f in dataclasses.fields(CDPAConfig)}
    assert fields["mode"].metadata["choices"] is advantage.MODES
    assert fields["outcome_aggregation"].metadata["choices"] is aggregation.AGGREGATIONS
    options = {a.dest: a for a in build_cdpa_parser()._actions}
    assert sorted(options) == sorted(f"cdpa.{name}" for name in fields)
    assert all(options[f"cdpa.{name}"].default == f.default for name, f in fields.items())
    assert CDPAConfig(eps=0.0).eps == 0.0  # the rule of cdpa_advantages: sigma = 0 already gives A = 0
    args = cdpa_args(monkeypatch, tiny_model_path, "--cdpa.eps", "0", "--cdpa.outcome_aggregation", "mean")
    assert args.cdpa == CDPAConfig(eps=0.0, outcome_aggregation="mean")


def test_old_aggregation_name_and_options_of_the_other_host(monkeypatch, tiny_model_path):
    from cdra_plugin.cdpa.config import CDPAConfig
    from cdra_plugin.openrlhf.train import build_cdpa_parser

    with pytest.warns(FutureWarning, match="--cdpa.outcome_aggregation token_mean is now called weighted_mean"):
        args = cdpa_args(monkeypatch, tiny_model_path, "--cdpa.outcome_aggregation", "token_mean")
    assert args.cdpa.outcome_aggregation == "weighted_mean"
    traced = CDPAConfig(trace_path="traces.jsonl")
    traced.check_host("openrlhf")
    with pytest.raises(ValueError, match=r"^--cdpa.trace_path is honoured only by cdra-train \(OpenRLHF\), not by"):
        traced.check_host("trl")
    CDPAConfig().check_host("trl")  # defaults are fine everywhere
    helps = {a.dest: a.help for a in build_cdpa_parser()._actions}
    for name in ("mode", "eps", "outcome_aggregation", "failure_policy", "trace_path", "trace_sample_rate"):
        assert ("; cdra-train (OpenRLHF) only (default: " in helps[f"cdpa.{name}"]) is name.startswith("trace")


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_through_host_experiences(monkeypatch, tiny_model_path, tiny_tokenizer, prompt_text, mode):
    """Each --cdpa.mode on samples split into micro-batches of one: the advantages the host gets are those of
    cdpa_advantages on a batch built here response by response (one align_steps call each)."""
    args = cdpa_args(monkeypatch, tiny_model_path, "--cdpa.mode", mode, "--rollout.micro_batch_size", "1")
    texts = ["Step 1: gardens.\nStep 2: a zoo.\nStep 3: lakes.", "Step 1: parks far away.", "Step 1: a farm.\n"
             "Step 2: quiet trails.", "Step 1: museums.\nStep 2: the beach at noon."]  # fmt: skip
    scores = [[0.9, -0.4, 0.6], [0.2], [-0.3, 0.8], [0.5, 0.1]]
    samples = [
        make_experience(tiny_tokenizer, prompt_text, t + EOT, reward(r), LABEL)
        for t, r in zip(texts, scores, strict=True)
    ]
    exps = run_advantages(cdpa_maker(args, tiny_tokenizer), samples)
    assert len(exps) == 4
    ids = [tiny_tokenizer(t + EOT, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, ids))
    rewards, step_ids = torch.zeros(4, width), torch.zeros(4, width, dtype=torch.long)
    mask = torch.zeros(4, width, dtype=torch.bool)
    for i, (row_ids, row_scores) in enumerate(zip(ids, scores, strict=True)):
        ((_, steps, of_token),) = align_steps(tiny_tokenizer, [row_ids], max_steps=8)
        assert len(steps) == len(row_scores)
        n = len(row_ids)
        rewards[i, :n], step_ids[i, :n], mask[i, :n] = torch.tensor(row_scores)[of_token], of_token, True
    expected, _ = cdpa_advantages(rewards, mask, 2, mode, step_ids=step_ids)
    for i, exp in enumerate(exps):
        got = exp.advantages[0][exp.action_mask[0].bool()]
        torch.testing.assert_close(got, expected[i, : len(ids[i])], atol=1e-6, rtol=0)
    assert any(bool(e.advantages.abs().max() > 0.1) for e in exps)


def test_the_manual_lists_every_cdpa_option_with_its_default():
    from pathlib import Path

    from cdra_plugin.cdpa.config import CDPAConfig

    manual = (Path(__file__).parents[1] / "docs" / "training.md").read_text()
    for f in dataclasses.fields(CDPAConfig):
        default = "off" if f.default is None else f.default
        assert f"| `--cdpa.{f.name}` | `{default}` |" in manual, f"docs/training.md: no table row for --cdpa.{f.name}"
    documented = set(re.findall(r"--cdpa\.(\w+)", manual))
    assert documented == {f.name for f in dataclasses.fields(CDPAConfig)}, "docs/training.md: a gone --cdpa option"


def test_help_prints_the_cdpa_options_before_loading_the_host(monkeypatch):
    """The CDPA part is flushed before the host module runs, and getting there imports no part of the host."""
    import io
    import subprocess
    import sys

    from cdra_plugin.openrlhf import train

    class Recorder(io.StringIO):
        """Keeps what had been written at each flush: what a pipe or a terminal had received by then."""

        def __init__(self):
            super().__init__()
            self.flushed = []

        def flush(self):
            self.flushed.append(self.getvalue())
            super().flush()

    out = Recorder()
    monkeypatch.setattr(sys, "stdout", out)
    with pytest.raises(SystemExit) as exit_info:
        train.run(["--algo.advantage.estimator", "cdpa", "--help"])
    assert exit_info.value.code == 0
    assert "--cdpa.mode" in out.flushed[0] and "--actor.model_name_or_path" not in out.flushed[0]
    assert "--actor.model_name_or_path" in out.getvalue()  # then the host's options

    code = (
        "import sys; from cdra_plugin.train import main; from cdra_plugin.openrlhf.train import build_cdpa_parser; "
        "build_cdpa_parser().format_help(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('openrlhf', 'deepspeed', 'vllm', 'ray')))"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_help_read_in_part_ends_quietly():
    """`cdra-train --help | head`: the reader closes the pipe after a few lines; no traceback, exit status 0."""
    import subprocess
    import sys

    help_run = subprocess.Popen(
        [sys.executable, "-m", "cdra_plugin.train", "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert help_run.stdout.readline().startswith(b"usage: cdra-train")
    help_run.stdout.close()  # what `head` does after its lines, long before the host's options are printed
    assert help_run.wait(timeout=120) == 0
    assert b"Traceback" not in help_run.stderr.read()


def test_other_estimators_run_the_host_code_unchanged(monkeypatch, tiny_model_path, tiny_tokenizer, prompt_text):
    from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker
    from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController

    argv = ["--actor.model_name_or_path", str(tiny_model_path), "--algo.advantage.estimator", "group_norm"]
    args = host_args(monkeypatch, [*argv, "--rollout.n_samples_per_prompt", "2", "--reward.remote_url", "x.py"])
    texts = ["Step 1: a.\nStep 2: b." + EOT, "Step 1: c." + EOT]
    rewards = [[0.9, 0.1], [0.3]]

    def build():
        return [
            make_experience(tiny_tokenizer, prompt_text, t, reward(r), LABEL)
            for t, r in zip(texts, rewards, strict=True)
        ]

    ours = run_advantages(cdpa_maker(args, tiny_tokenizer), build())
    strategy = SimpleNamespace(args=args)
    host = RemoteExperienceMaker(None, None, None, None, FixedKLController(0.0), strategy, tiny_tokenizer)
    theirs = run_advantages(host, build())
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.advantages, b.advantages)
        assert STEP_KEY.format(0) in a.info  # the carrier is left alone when the estimator is not cdpa


def test_hand_worked_eq3_through_host_experiences(monkeypatch, tiny_model_path, tiny_tokenizer, prompt_text):
    """G = 2: A = (0.8, 0.2), B = (0.4). Where both have a token: two values, unbiased std = |a - b| / sqrt(2), so
    A = +-(a - b)/2 / (|a - b|/sqrt(2)) = +-1/sqrt(2); where only A has a token: a lone position, A = 0."""
    args = cdpa_args(monkeypatch, tiny_model_path)
    text_a = "Step 1: quiet botanical gardens.\nStep 2: a petting zoo with many animals and a long queue." + EOT
    text_b = "Step 1: a walk on paved trails, far from the farm." + EOT
    samples = [
        make_experience(tiny_tokenizer, prompt_text, text_a, reward([0.8, 0.2]), LABEL),
        make_experience(tiny_tokenizer, prompt_text, text_b, reward([0.4]), LABEL),
    ]
    (exp,) = run_advantages(cdpa_maker(args, tiny_tokenizer), samples)

    boundary = text_a.index("Step 2")
    starts_a, n_b = char_starts(tiny_tokenizer, text_a), len(char_starts(tiny_tokenizer, text_b))
    expected_a = [
        0.0 if t >= n_b else (1 if start < boundary else -1) / math.sqrt(2) for t, start in enumerate(starts_a)
    ]
    expected_b = [-1 / math.sqrt(2) if starts_a[t] < boundary else 1 / math.sqrt(2) for t in range(n_b)]
    adv, mask = exp.advantages, exp.action_mask.bool()
    torch.testing.assert_close(adv[0][mask[0]], torch.tensor(expected_a), atol=1e-5, rtol=0)
    torch.testing.assert_close(adv[1][mask[1]], torch.tensor(expected_b), atol=1e-5, rtol=0)
    assert (adv[~mask] == 0).all()
    torch.testing.assert_close(exp.returns, exp.advantages)
    assert STEP_KEY.format(0) not in exp.info  # the carrier is consumed
    assert exp.info["cdpa_num_steps"].tolist() == [2.0, 1.0]
    assert exp.info[FAILED_KEY].tolist() == [0.0, 0.0]
    assert exp.info["cdpa_mean_steps"][0].item() == pytest.approx(1.5)


def test_failed_and_mismatched_samples_are_dropped_and_counted(
    monkeypatch, tiny_model_path, tiny_tokenizer, prompt_text
):
    args = cdpa_args(monkeypatch, tiny_model_path, "--rollout.micro_batch_size", "1", group_size=3)
    good = "Step 1: gardens.\nStep 2: lakes." + EOT
    samples = [
        make_experience(tiny_tokenizer, prompt_text, good, reward([0.9, 0.5]), LABEL),
        make_experience(tiny_tokenizer, prompt_text, good, reward([0.1, 0.2]), LABEL),
        make_experience(tiny_tokenizer, prompt_text, good, reward(None), LABEL),  # PRM failed, policy drop
        make_experience(tiny_tokenizer, prompt_text, good, reward([0.3, 0.3, 0.3]), LABEL),  # 3 scores, 2 steps
        make_experience(tiny_tokenizer, prompt_text, good, reward([0.2, 0.6]), LABEL),
        make_experience(tiny_tokenizer, prompt_text, good, reward([0.4, 0.1]), LABEL),
    ]
    exps = run_advantages(cdpa_maker(args, tiny_tokenizer), samples)
    failed = torch.cat([e.info[FAILED_KEY] for e in exps]).tolist()
    mismatch = torch.cat([e.info["cdpa_mismatch"] for e in exps]).tolist()
    assert failed == [0.0, 0.0, 1.0, 1.0, 0.0, 0.0] and mismatch == [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    adv = [row for e in exps for row in e.advantages]
    assert (adv[2] == 0).all() and (adv[3] == 0).all()
    # Group 0 is then samples 0 and 1 only: two values per position -> +-1/sqrt(2), the failed one not counted.
    assert adv[0][adv[0] != 0].abs().sub(1 / math.sqrt(2)).abs().max() < 1e-5

    args.cdpa = dataclasses.replace(args.cdpa, failure_policy="fail")
    samples[2] = make_experience(tiny_tokenizer, prompt_text, good, reward(None), LABEL)
    with pytest.raises(RuntimeError, match="PRM scoring failed for 1 samples"):
        run_advantages(cdpa_maker(args, tiny_tokenizer), samples[:3] + samples[4:5] + samples[5:6])


def test_reward_call_that_never_returned(monkeypatch, tiny_model_path, tiny_tokenizer, prompt_text):
    args = cdpa_args(monkeypatch, tiny_model_path)
    text = "Step 1: gardens." + EOT
    samples = [
        make_experience(tiny_tokenizer, prompt_text, text, reward([0.5]), LABEL),
        make_experience(tiny_tokenizer, prompt_text, text, None, LABEL),  # the host logged the HTTP error, went on
    ]
    maker = cdpa_maker(args, tiny_tokenizer)
    maker._check_rewards(samples)
    assert set(samples[1].info) == set(samples[0].info) and samples[1].info[FAILED_KEY].item() == 1.0
    (exp,) = run_advantages(maker, samples)
    assert (exp.advantages == 0).all() and exp.info[FAILED_KEY].tolist() == [0.0, 1.0]
    lost = [make_experience(tiny_tokenizer, prompt_text, text, None, LABEL) for _ in range(2)]
    with pytest.raises(RuntimeError, match="2 of 2 samples .* even --cdpa.failure_policy drop leaves nothing"):
        maker.make_experience_batch(lost)  # under drop already: the message does not advise drop

    args.cdpa = dataclasses.replace(args.cdpa, failure_policy="fail")
    samples[1] = make_experience(tiny_tokenizer, prompt_text, text, None, LABEL)
    with pytest.raises(RuntimeError, match="1 of 2 samples came back without a PRM reward"):
        cdpa_maker(args, tiny_tokenizer).make_experience_batch(samples)


def test_kl_reward_is_added_as_in_the_host(monkeypatch, tiny_model_path, tiny_tokenizer, prompt_text):
    args = cdpa_args(monkeypatch, tiny_model_path, "--algo.kl.init_coef", "0.1")
    texts = ["Step 1: gardens.\nStep 2: lakes." + EOT, "Step 1: parks." + EOT]
    build = [
        make_experience(tiny_tokenizer, prompt_text, t, reward(r), LABEL)
        for t, r in zip(texts, [[0.9, 0.1], [0.5]], strict=True)
    ]
    plain = run_advantages(cdpa_maker(cdpa_args(monkeypatch, tiny_model_path), tiny_tokenizer), build)[0].advantages

    generator = torch.Generator().manual_seed(0)
    kl_values = {}

    def kl(exp):
        kl_values["kl"] = torch.rand(exp.action_mask.shape, generator=generator) * exp.action_mask
        return kl_values["kl"]

    build = [
        make_experience(tiny_tokenizer, prompt_text, t, reward(r), LABEL)
        for t, r in zip(texts, [[0.9, 0.1], [0.5]], strict=True)
    ]
    (exp,) = run_advantages(cdpa_maker(args, tiny_tokenizer), build, kl=kl)
    kl_return = (-0.1 * kl_values["kl"]).flip(1).cumsum(1).flip(1) * exp.action_mask
    torch.testing.assert_close(exp.advantages, plain + kl_return)


def test_trainer_variants_install_the_cdpa_experience_maker(monkeypatch, tiny_model_path, tiny_tokenizer):
    from openrlhf.trainer.ppo_trainer import PPOTrainer
    from openrlhf.trainer.ppo_trainer_async import PPOTrainerAsync
    from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker
    from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController

    from cdra_plugin.openrlhf.experience_maker import CDPAExperienceMaker
    from cdra_plugin.openrlhf.trainer import CDPAPPOTrainer, CDPAPPOTrainerAsync, install_cdpa_experience_maker

    assert issubclass(CDPAPPOTrainer.__ray_actor_class__, PPOTrainer.__ray_actor_class__)
    assert issubclass(CDPAPPOTrainerAsync.__ray_actor_class__, PPOTrainerAsync.__ray_actor_class__)
    args = cdpa_args(monkeypatch, tiny_model_path)
    kl = FixedKLController(0.0)
    host = RemoteExperienceMaker("actor", None, None, "ref", kl, SimpleNamespace(args=args), tiny_tokenizer)
    trainer = SimpleNamespace(experience_maker=host, args=args)
    install_cdpa_experience_maker(trainer)
    swapped = trainer.experience_maker
    assert isinstance(swapped, CDPAExperienceMaker) and swapped.tracer is None
    assert all(getattr(swapped, k) is v for k, v in vars(host).items())  # the host's state, shared (KL controller!)
    assert (swapped.actor_model_group, swapped.initial_model_group, swapped.kl_ctl) == ("actor", "ref", kl)

    class OtherPlugin(RemoteExperienceMaker):
        pass

    trainer.experience_maker = OtherPlugin(None, None, None, None, kl, SimpleNamespace(args=args), tiny_tokenizer)
    with pytest.raises(TypeError, match="OtherPlugin, not OpenRLHF's RemoteExperienceMaker"):
        install_cdpa_experience_maker(trainer)


def test_importing_the_plugin_changes_nothing_in_the_host():
    import openrlhf.trainer.ppo_trainer as sync_module

    before = sync_module.PPOTrainer
    import cdra_plugin.openrlhf.train  # noqa: F401
    import cdra_plugin.openrlhf.trainer  # noqa: F401
    import cdra_plugin.train  # noqa: F401

    assert sync_module.PPOTrainer is before


def test_one_policy_gradient_step_follows_the_step_advantages(
    monkeypatch, tiny_model_path, tiny_tokenizer, prompt_text
):
    """Real tiny model + OpenRLHF's PolicyLoss: tokens of high-advantage steps gain log-probability, low lose it."""
    from openrlhf.models.loss import PolicyLoss
    from transformers import AutoModelForCausalLM

    args = cdpa_args(monkeypatch, tiny_model_path)
    texts = [
        "Step 1: quiet gardens.\nStep 2: a petting zoo." + EOT,
        "Step 1: a farm visit.\nStep 2: lakeside walk." + EOT,
    ]
    samples = [
        make_experience(tiny_tokenizer, prompt_text, texts[0], reward([0.9, -0.6]), LABEL),
        make_experience(tiny_tokenizer, prompt_text, texts[1], reward([-0.2, 0.7]), LABEL),
    ]
    (exp,) = run_advantages(cdpa_maker(args, tiny_tokenizer), samples)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)

    def log_probs():
        # The host's log_probs_from_logits takes flash-attn's Triton kernel for float32, which needs CUDA.
        logits = model(exp.sequences, attention_mask=exp.attention_mask).logits[:, :-1]
        return logits.log_softmax(-1).gather(-1, exp.sequences[:, 1:, None]).squeeze(-1)

    old = log_probs().detach()
    loss = PolicyLoss()(log_probs(), old, exp.advantages, action_mask=exp.action_mask)[0]
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        delta = log_probs() - old
    mask = exp.action_mask.bool()
    up, down = mask & (exp.advantages > 0.1), mask & (exp.advantages < -0.1)
    assert up.any() and down.any()
    assert delta[up].mean() > 0 > delta[down].mean()
    for i in range(2):  # per response: its favoured step rises, its disfavoured step falls (on average)
        assert delta[i][up[i]].mean() > 0 > delta[i][down[i]].mean()


def test_host_length_penalty_shifts_the_step_scores(monkeypatch, tiny_model_path, tiny_tokenizer, prompt_text):
    """DAPO overlong penalty (host code): the long response's reward drops by 1.0, so do its step scores, and its
    better step scores (0.9 vs 0.5) turn into a lower token reward (-0.1 vs 0.5): the advantage sign flips."""
    short, long = "Step 1: ok." + EOT, "Step 1: a long, long, long answer.\nStep 2: and more, and more words." + EOT
    n_short, n_long = (len(tiny_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in (short, long))
    assert n_long >= n_short + 4
    penalty = ["--reward.overlong_buffer_len", "4", "--rollout.max_new_tokens", str(n_short + 4)]
    for extra, sign in (([], 1.0), (penalty, -1.0)):
        args = cdpa_args(monkeypatch, tiny_model_path, *extra)
        samples = [
            make_experience(tiny_tokenizer, prompt_text, long, reward([0.9, 0.9]), LABEL),
            make_experience(tiny_tokenizer, prompt_text, short, reward([0.5]), LABEL),
        ]
        (exp,) = run_advantages(cdpa_maker(args, tiny_tokenizer), samples)
        first = exp.advantages[0][exp.action_mask[0].bool()][:n_short]
        torch.testing.assert_close(first, torch.full((n_short,), sign / math.sqrt(2)), atol=1e-5, rtol=0)


def test_reward_clip_range_is_honoured_as_the_host_honours_it(
    monkeypatch, tiny_model_path, tiny_tokenizer, prompt_text
):
    """One-step responses of one length: Eq. 3 then equals group_norm token for token, so with a clip range and KL
    reward CDPA must give the host's own group_norm advantages: clamp(normalised reward) + KL return-to-go."""
    from openrlhf.trainer.ppo_utils.experience_maker import RemoteExperienceMaker
    from openrlhf.trainer.ppo_utils.kl_controller import FixedKLController

    text = "Step 1: quiet gardens far from the farm." + EOT
    common = ["--reward.clip_range", "-0.5", "0.5", "--algo.kl.init_coef", "0.1"]

    def advantages(maker):
        samples = [make_experience(tiny_tokenizer, prompt_text, text, reward([s]), LABEL) for s in (0.9, 0.3, 0.5)]
        generator = torch.Generator().manual_seed(0)
        (exp,) = run_advantages(maker, samples, kl=lambda e: torch.rand(e.action_mask.shape, generator=generator))
        return exp

    args = cdpa_args(monkeypatch, tiny_model_path, *common, group_size=3)
    ours = advantages(cdpa_maker(args, tiny_tokenizer))
    argv = ["--actor.model_name_or_path", str(tiny_model_path), "--algo.advantage.estimator", "group_norm"]
    argv += ["--rollout.n_samples_per_prompt", "3", "--rollout.micro_batch_size", "8", "--reward.remote_url", "x.py"]
    argv += common
    plain = host_args(monkeypatch, argv)
    kl = FixedKLController(plain.algo.kl.init_coef)
    theirs = advantages(RemoteExperienceMaker(None, None, None, None, kl, SimpleNamespace(args=plain), tiny_tokenizer))
    mask = ours.action_mask.bool()  # the host leaves its return-to-go on the prompt positions (masked in the loss)
    torch.testing.assert_close(ours.advantages[mask], theirs.advantages[mask], atol=1e-5, rtol=0)
    assert ours.advantages[mask].abs().max() > 0.5  # the KL return is added after the clamp, as in the host
    # 0.9 and 0.3 normalise to +1.09 and -0.87 (clamped to +-0.5), 0.5 to -0.22 (kept): 2 of 3 responses' tokens
    assert ours.info["cdpa_clipped_token_frac"][0].item() == pytest.approx(2 / 3)
