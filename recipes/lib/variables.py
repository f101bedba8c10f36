"""A recipe's own variables, and the environment variables that look like a typo of one (run by checks.sh).

    python3 recipes/lib/variables.py RECIPE FILE...    # FILE: the recipe and the recipes/lib files it sourced

A recipe's own variables are those it gives a default, ``NAME=${NAME:-default}`` or ``NAME=${NAME-default}``
(``export`` in front allowed), in FILE.... Printed one per line, the recipe's first, when no environment variable
looks like a typo; otherwise one line naming each suspect and the closest own variable, and exit status 2.

An environment variable that is not one of them is a typo of one when
  1. it is one but for letter case (n_samples for N_SAMPLES), or
  2. it is a near miss: one edit (a character added, dropped or changed, or two neighbours swapped) from an own
     variable of 5 or more characters, or two edits from one of 10 or more (N_SAMPLE, CDPA_MDOE, GPUS_PER_NDOE), or
  3. it starts with a prefix the recipe owns: the first word of two or more of its variables (CDPA_ in
     train_cdpa.sh, so CDPA_EPS), unless the word is another program's (OTHER_PROGRAMS: RAY_, VLLM_, ...).
It never is when it is a name one of the recipe's ``*_ENV`` variables gives (it holds a key or token). So ordinary
variables (PATH, HOME, CUDA_VISIBLE_DEVICES, HF_*, RAY_* and VLLM_* other than the recipe's, PYTHONPATH, the
proxies) pass, and shorter names are only compared for case (LR, K, GPUS: one edit from many words).
"""

import os
import re
import sys

# First words of variables that other programs read (the launchers the recipes start, and their libraries): a
# recipe variable starting with one (RAY_ADDRESS, VLLM_HOST, MAX_STEPS, GPU_CHECK) does not make the prefix its own.
OTHER_PROGRAMS = {"ACCELERATE", "CUDA", "DEEPSPEED", "GPU", "HF", "MAX", "NCCL", "OMP", "RAY", "TORCH", "VLLM"}
DEFAULT = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=\$\{\1:?-([^}]*)\}", re.MULTILINE)
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def own_variables(files):
    """(names in the order the files give them, {name: default text})."""
    names, defaults = [], {}
    for path in files:
        with open(path, encoding="utf-8") as f:
            for name, default in DEFAULT.findall(f.read()):
                if name not in defaults:
                    names.append(name)
                    defaults[name] = default
    return names, defaults


def distance(a, b):
    """Edits from a to b: insertions, deletions, substitutions and swaps of two neighbours (optimal string
    alignment)."""
    previous2, previous = None, list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], previous2[j - 2] + 1)
        previous2, previous = previous, row
    return previous[-1]


def prefix(name):
    return name.split("_", 1)[0] if "_" in name.strip("_") else None


def typos(environment, names, defaults):
    """{suspect: the own variables it was probably meant to be, the closest first}."""
    own = set(names)
    words = [prefix(n) for n in names]
    owned = {w for w in words if w and words.count(w) >= 2 and w not in OTHER_PROGRAMS}
    secrets = {v for n, v in defaults.items() if n.endswith("_ENV")}  # the recipe's own default key names
    secrets |= {environment[n] for n in names if n.endswith("_ENV") and n in environment}
    found = {}
    for variable in environment:
        key = variable.upper()
        if variable in own or variable in secrets or not NAME.fullmatch(variable):
            continue
        closest = min(names, key=lambda n: (distance(key, n), n))
        near = distance(key, closest) <= (2 if len(closest) >= 10 else 1 if len(closest) >= 5 else 0)
        if key in own:
            found[variable] = [key]
        elif near:
            found[variable] = [closest]
        elif prefix(key) in owned:  # every variable with that prefix
            found[variable] = sorted((n for n in names if prefix(n) == prefix(key)), key=lambda n: distance(key, n))
    return found


def meant(candidates):
    return candidates[0] if len(candidates) == 1 else ", ".join(candidates[:-1]) + " or " + candidates[-1]


def main(argv):
    recipe, files = argv[0], argv[1:]
    names, defaults = own_variables(files)
    found = typos(os.environ, names, defaults)
    if len(found) == 1:
        [(variable, candidates)] = found.items()
        print(f"{variable} is not a variable of {recipe} (did you mean {meant(candidates)}?): it would be ignored; "
              f"unset it, or use one from the top of {files[0]}")  # fmt: skip
        return 2
    if found:
        suspects = " and ".join(f"{v} (did you mean {meant(found[v])}?)" for v in sorted(found))
        print(f"{suspects} are not variables of {recipe}: they would be ignored; unset them, or use ones from the "
              f"top of {files[0]}")  # fmt: skip
        return 2
    print("\n".join(names))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
