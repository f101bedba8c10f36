"""``python -m cdra_plugin.stub serve``: the scripted OpenAI-compatible server as a stand-in for ``vllm serve``.

It takes vLLM's ``serve MODEL``, ``--served-model-name``, ``--host`` and ``--port`` (other vLLM options are accepted
and ignored, so recipes can launch it in vLLM's place) and answers until SIGTERM or SIGINT. ``--role`` picks how it
answers:

- ``prm`` (default): as the Pers-GenPRM; tags in the step under judgement set its answer, ``[score=0.3]``,
  ``[http=500]``, ``[hang=5]``; an untagged step scores ``--default-score``.
- ``council``: as the DeepPref generator and evaluator of ``cdra build`` (``cdra_plugin.stub.council``).
- ``table``: as the Pers-GenPRM of ``cdra demo``, from a table of step text -> [score, critique] (``--table``;
  ``cdra_plugin.stub.prm_table``).
- ``policy`` / ``judge``: the model under evaluation and the LLM judge of ``cdra eval`` (rule-based answers, see
  ``cdra_plugin.stub.judge``).

    python -m cdra_plugin.stub serve pers-genprm --port 8000
    python -m cdra_plugin.stub serve council --role council --port 8001
    python -m cdra_plugin.stub serve judge --role judge --port 8302
"""

import argparse
import signal

from cdra_plugin.stub.council import ScriptedCouncil
from cdra_plugin.stub.judge import scripted_judge, scripted_policy
from cdra_plugin.stub.prm_table import load_table, table_judge
from cdra_plugin.stub.server import ScriptedLLM, prm_step_judge


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cdra_plugin.stub", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("model", help="model name it answers as (vllm serve's MODEL)")
    parser.add_argument("--served-model-name", help="name it reports instead of MODEL (as vLLM)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--role", choices=["prm", "council", "policy", "judge", "table"], default="prm",
                        help="how it answers (see above)")  # fmt: skip
    parser.add_argument("--default-score", type=float, default=0.5, help="prm role: score of an untagged step")
    parser.add_argument("--table", help="table role: the JSON file of step text -> [score, critique]")
    args, _ = parser.parse_known_args(argv)
    if args.role == "table" and not args.table:
        parser.error("--role table needs --table FILE")
    scripts = {"prm": lambda: prm_step_judge(args.default_score), "council": ScriptedCouncil,
               "policy": scripted_policy, "judge": scripted_judge,
               "table": lambda: table_judge(load_table(args.table))}  # fmt: skip
    script = scripts[args.role]()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        server = ScriptedLLM(script, model=args.served_model_name or args.model, host=args.host, port=args.port)
    except OSError as exc:  # a port in use: one line, as `cdra prm serve` says it
        where = f"{args.host}:{args.port}"
        parser.exit(2, f"{parser.prog}: error: cannot listen on {where} ({exc.strerror}); pick another --port\n")
    with server as llm:
        print(f"scripted LLM ({args.role}) serving {llm.model!r} on {llm.base_url}", flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})


if __name__ == "__main__":
    main()
