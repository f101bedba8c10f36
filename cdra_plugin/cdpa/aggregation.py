"""One vocabulary for turning a response's step scores r_1..r_T into one number, shared by the gateway's scalar reward
(``cdra prm serve --reward-aggregation``) and CDPA's outcome reward (``--cdpa.outcome_aggregation``).

A policy trained on the number learns whatever raises it, so each name says what it can be gamed by:

- ``min`` (default): the worst step's score, PURE's min-form credit ("Stop Summation: Min-Form Credit Assignment Is
  All Process Reward Model Needs for Reasoning", arXiv 2504.15275). Splitting, padding, repeating or reordering
  steps cannot raise it: a response is as good as its weakest step. It rewards removing a bad step, not hiding it.
- ``mean``: the plain mean over steps. Splitting good steps into many short ones dilutes a bad one; repeating the
  best step raises it.
- ``weighted_mean``: the mean weighted by each step's size (the gateway: its letters and digits; CDPA: its tokens).
  Splitting cannot change it, but padding the best step (with words in the gateway, with any tokens in CDPA) and
  shrinking the worst one raise it.
- ``sum``: the paper's R_dense = sum_j r_j (Sec. 2.3). More steps earn more: the policy learns to fragment. Use it
  to reproduce the paper's rows, knowingly.

The names of the previous release (``length_mean`` of the gateway, ``token_mean`` of CDPA) are read as
``weighted_mean`` with a deprecation warning, for one release.
"""

import warnings

AGGREGATIONS = ("min", "mean", "weighted_mean", "sum")
DEFAULT_AGGREGATION = "min"
_RENAMED = {"length_mean": "weighted_mean", "token_mean": "weighted_mean"}


def check_aggregation(name: str, option: str) -> str:
    """The aggregation ``name`` given to ``option`` (for errors and warnings), old names mapped to the new."""
    if name in _RENAMED:
        warnings.warn(
            f"{option} {name} is now called {_RENAMED[name]}; the old name goes in the next release",
            FutureWarning,
            stacklevel=2,
        )
        return _RENAMED[name]
    if name not in AGGREGATIONS:
        raise ValueError(f"{option} must be one of {', '.join(AGGREGATIONS)}; got {name!r}")
    return name
