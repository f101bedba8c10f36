"""A tiny Qwen2-architecture causal LM and a byte-level BPE tokenizer, built offline in seconds.

Nothing can be downloaded in CI, so tests build a real Hugging Face checkpoint instead: the tokenizer is trained
in-process with ``tokenizers`` on text the project ships (the paper's prompts and ``assets/tokenizer_corpus.txt``),
with Qwen2's pre-tokenisation (its split pattern, byte-level, untrimmed offsets) and a ChatML chat template, so
offset mappings and chat formatting behave as they do with Qwen2.5; the model is randomly initialised (seed 0).
``AutoTokenizer``/``AutoModelForCausalLM.from_pretrained(path)`` and OpenRLHF load the result like any checkpoint.

    python -m cdra_plugin.stub.tiny_model /tmp/tiny-qwen2     # build one by hand
"""

import argparse
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ASSETS = Path(__file__).parent / "assets"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2's pre-tokenizer split pattern (contractions, letters, single digits, punctuation runs, newlines, spaces).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _corpus() -> list[str]:
    from cdra_plugin.cdpa.prompts import POLICY_TEMPLATE, PRM_TEMPLATE

    text = (ASSETS / "tokenizer_corpus.txt").read_text(encoding="utf-8")
    return [POLICY_TEMPLATE, PRM_TEMPLATE, *text.splitlines()]


def build_tokenizer(vocab_size: int = 1024):
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHATML_TEMPLATE,
    )


def build_tiny_model(out_dir: str | Path) -> Path:
    """Write tokenizer + randomly initialised Qwen2ForCausalLM to ``out_dir``; returns the path."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    tokenizer = build_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m cdra_plugin.stub.tiny_model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("path", nargs="?", default="tiny-qwen2", help="folder to write (default tiny-qwen2)")
    print(build_tiny_model(parser.parse_args().path))
