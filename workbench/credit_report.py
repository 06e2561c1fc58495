"""A ``workbench.credit.Credit`` in words and tables: the notes that say how each method differs
from GRPO beyond its numbers, the summary (one row per method) and the tidy frame (one row per
method, response and token)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np
import pandas as pd
from torch import Tensor

from workbench.methods.base import Method
from workbench.step.batch import RolloutBatch

# how each loss coefficient acts, for a note where a method's differs from GRPO's
LOSS_WORDS = {
    "epsilon": "clips the ratio from below at 1 - {v}",
    "epsilon_high": "clips the ratio from above at 1 + {v}",
    "entropy_coef": "adds an entropy bonus, {v} x the mean entropy of the kept tokens (a gradient of its own)",
    "top_entropy_quantile": "its loss keeps only the highest-entropy {v} of tokens",
    "beta": "adds {v} x the KL to the reference",
    "loss_type": "aggregates the token losses as {v}",
    "num_iterations": "updates on each batch {v} times (the passes after the first see ratios away from 1)",
}
CLIP_SETTINGS = ("epsilon", "epsilon_high")
SHARES = ("top_entropy_quantile",)  # written as a percentage


def about(method: Method) -> str | None:
    """The first sentence of the method's own class docstring, if it has one, without its asides."""
    doc = vars(type(method)).get("__doc__")
    if not doc:
        return None
    sentence = " ".join(doc.split()).split(". ")[0].rstrip(".")
    return re.sub(r"\s+\([^()]*\)", "", sentence).replace("``", "")


def notes(method: Method, result, reference, batch: RolloutBatch, same: Callable[[Tensor, Tensor], bool]) -> list[str]:
    """What sets ``result`` (a ``MethodCredit``) apart from GRPO's ``reference`` beyond its credit."""
    out = [text] if (text := about(method)) else []
    if result.method != reference.method and same(result.credit, reference.credit):
        out.append("the same credit as GRPO on every token of this batch")
    if type(method).samples_on_its_own():
        phases = " → ".join(method.SAMPLE_PHASES)
        out.append(
            f"samples on its own ({phases}): that decides which responses a batch holds, not the credit of these"
        )
    missing = [m for m in method.MODES if m not in batch.mode]
    if missing:
        out.append(f"this batch has no responses sampled in its {' or '.join(missing)} mode")
    out += _loss_notes(method, result, reference, same)
    out += [
        f"also trains each response {key}, with the credit shown as '{key}'"
        for key in result.values
        if key.startswith("in ")
    ]
    return out


def _setting(settings: dict, key: str):
    return settings["epsilon"] if key == "epsilon_high" and settings[key] is None else settings[key]


def _shown(key: str, value) -> str:
    return f"{value:.0%}" if key in SHARES else f"{value:g}" if isinstance(value, float) else str(value)


def _loss_notes(method: Method, result, reference, same) -> list[str]:
    out = []
    for key, words in LOSS_WORDS.items():
        mine, grpo = _setting(result.loss_settings, key), _setting(reference.loss_settings, key)
        if mine != grpo:
            out.append(f"{words.format(v=_shown(key, mine))} (GRPO: {_shown(key, grpo)})")
            if key in CLIP_SETTINGS and not bool(result.clipped.any()):
                passes = result.loss_settings["num_iterations"]
                out[-1] += (
                    ": every ratio is 1 in this batch's update (num_iterations 1), so the clip never acts"
                    if passes == 1
                    else f": no ratio is clipped at the first of {passes} passes; later passes may be"
                )
    if type(method).loss_settings is not Method.loss_settings:
        out.append("sets its loss coefficients step by step (here as at this step of a run of its own)")
    if type(method).token_loss is not Method.token_loss:
        if same(result.credit, result.token_advantages * result.kept):
            out.append("its own token loss passes the token advantages on unchanged at the update's first pass")
        else:
            changed = int(((result.credit - result.token_advantages * result.kept).abs() > 1e-6).sum())
            out.append(f"its own token loss changes the credit of {changed} token(s) at the update's first pass")
    return out


def _valid(credit) -> np.ndarray:
    return credit.batch.mask.bool().cpu().numpy()


def summary_frame(credit) -> pd.DataFrame:
    """One row per method (those not run: with the reason): how much credit it gives and where it
    differs from GRPO's."""
    valid = _valid(credit)
    grpo = credit.reference.credit.cpu().numpy()
    grpo_rows = (np.abs(grpo) > 0).any(-1)
    group_of = {name: i for i, names in enumerate(credit.groups()) for name in names}
    rows = []
    for name, m in credit.methods.items():
        mine = m.credit.cpu().numpy()
        differs = (np.abs(mine - grpo) > 1e-6) & valid
        my_rows = (np.abs(mine) > 0).any(-1)
        rows.append(
            {
                "method": name,
                "credit_group": group_of[name],
                "mean_abs_advantage": float(m.advantages.abs().mean()),
                "mean_abs_credit": float(np.abs(mine)[valid].mean()),
                "kept_share": float(m.kept.cpu().numpy()[valid].mean()),
                "differs_from_grpo": float(differs[valid].mean()),
                "sign_flips": int(((mine * grpo) < 0).sum()),
                "rows_credited_grpo_gives_none": int((my_rows & ~grpo_rows).sum()),
                "rows_grpo_credits_it_gives_none": int((grpo_rows & ~my_rows).sum()),
                "notes": "; ".join(m.notes),
            }
        )
    for name, reason in credit.unavailable.items():
        rows.append({"method": name, "credit_group": -1, "notes": f"not run on this batch: {reason}"})
    return pd.DataFrame(rows).set_index("method")


def tidy_frame(credit) -> pd.DataFrame:
    """One row per (method, response, generated token): the token's text, the response's reward and
    sequence advantage, the token advantage, whether the loss keeps it, the credit, its difference
    from GRPO's, and the method's own values (NaN where a method has none of that name)."""
    batch = credit.batch
    valid = _valid(credit)
    row, position = np.nonzero(valid)
    text = {r: credit.tokens(r) for r in range(len(batch))}
    shared = {
        "row": row,
        "group": batch.group.cpu().numpy()[row],
        "reward": batch.scored_rewards.cpu().numpy()[row],
        "position": position,
        "token": [text[r][t] for r, t in zip(row.tolist(), position.tolist())],
    }
    grpo = credit.reference.credit.cpu().numpy()[valid]
    names = sorted({key for m in credit.methods.values() for key in m.values})
    parts = []
    for name, m in credit.methods.items():
        own = {key: m.values[key].cpu().numpy()[valid] if key in m.values else math.nan for key in names}
        mine = m.credit.cpu().numpy()[valid]
        parts.append(
            pd.DataFrame(
                {
                    "method": name,
                    **shared,
                    "advantage": m.advantages.cpu().numpy()[row],
                    "token_advantage": m.token_advantages.cpu().numpy()[valid],
                    "kept": m.kept.cpu().numpy()[valid],
                    "credit": mine,
                    "difference_from_grpo": mine - grpo,
                    **own,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)
