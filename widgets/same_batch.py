"""SameBatchView: one batch's credit under every method, side by side ("same tokens, different credit").

It draws a ``workbench.credit.Credit`` (``credit_by_method``) and computes nothing: a heat map of
responses x methods (the sequence advantage, the mean credit per token or its difference from
GRPO's), cells outlined where a response's credit differs from GRPO's on some token, columns in
groups of methods whose credit is the same on every token; then one chosen response as token
strips, one per group, coloured by the credit that reaches the loss (diverging, centred on 0),
tokens whose credit differs from GRPO's outlined, tokens the loss drops faded; and below, the
methods' own per-token values, each on its own range (ERPO's gate on viridis from 0, signed values
such as Policy Split's bonus on the diverging map). Model text is untrusted: everything from the
batch is escaped.
"""

from __future__ import annotations

import html

import ipywidgets as W
import numpy as np

from ._live import esc
from .live_figure import LiveFigure
from .style import DIVERGING, FONT_SIZE, GREY, PIVOT_OUTLINE, TOKEN_VALUES, panel_layout
from .token_text import TokenDecoder
from .tokens import ColorScale

HEAT_VALUES = ("sequence advantage", "mean credit per token", "difference from GRPO (mean per token)")
STRIP_VALUES = ("credit", "difference from GRPO", "token advantage")
CELL_HEIGHT = 22
PROMPT_SHOWN = 240  # characters of a prompt shown above the strips
CSS = f"""
.wb-credit {{ font-size:{FONT_SIZE}px; }}
.wb-credit table {{ border-collapse:collapse; }}
.wb-credit td {{ vertical-align:top; padding:3px 6px; border-bottom:1px solid #eee; }}
.wb-credit td.wb-who {{ width:230px; font-size:{FONT_SIZE - 2}px; color:#333; }}
.wb-credit .wb-strip {{ font-family:monospace; white-space:pre-wrap; word-break:break-all; }}
.wb-credit .wb-token {{ white-space:pre; padding:2px 1px; margin:0 1px 0 0; border-radius:2px; }}
.wb-credit .wb-differs {{ outline:2px solid {PIVOT_OUTLINE}; }}
.wb-credit .wb-dropped {{ opacity:0.35; text-decoration:underline dotted; }}
.wb-credit .wb-note {{ font-size:{FONT_SIZE - 2}px; color:#444; margin:2px 0 6px 12px; }}
"""


def column_order(credit) -> list[str]:
    """The methods in the order of their credit groups (GRPO's first)."""
    return [name for group in credit.groups() for name in group]


def _mean_per_token(values, mask) -> np.ndarray:
    valid = mask.float()
    return ((values * valid).sum(-1) / valid.sum(-1).clamp(min=1)).cpu().numpy()


def heat_values(credit, kind: str) -> np.ndarray:
    """[responses, methods] of ``kind`` (one of ``HEAT_VALUES``), methods in ``column_order``."""
    if kind not in HEAT_VALUES:
        raise ValueError(f"heat={kind!r} is not allowed: one of {', '.join(HEAT_VALUES)}")
    mask, columns = credit.batch.mask, []
    for name in column_order(credit):
        m = credit.methods[name]
        if kind == HEAT_VALUES[0]:
            columns.append(m.advantages.cpu().numpy())
        elif kind == HEAT_VALUES[1]:
            columns.append(_mean_per_token(m.credit, mask))
        else:
            columns.append(_mean_per_token(credit.difference(name), mask))
    return np.stack(columns, axis=1)


def differing_cells(credit) -> np.ndarray:
    """[responses, methods] bool: the response's credit differs from GRPO's on some token."""
    return np.stack([(credit.difference(n).abs() > 1e-6).any(-1).cpu().numpy() for n in column_order(credit)], 1)


def response_labels(credit) -> list[str]:
    """One short label per response: its prompt, its place in the group and its reward."""
    batch = credit.batch
    seen: dict[int, int] = {}  # responses of each prompt so far
    labels = []
    for row, group in enumerate(batch.group.tolist()):
        seen[group] = seen.get(group, -1) + 1
        labels.append(f"p{group} #{seen[group]} r={float(batch.scored_rewards[row]):g}")
    return labels


def groups_html(credit) -> str:
    """Which methods give this batch the same credit as GRPO (and as each other), and which were not run."""
    groups = credit.groups()
    others = ", ".join(f"<b>{esc(n)}</b>" for n in groups[0][1:]) or "none"
    parts = [
        f"<div>Same credit as <b>grpo</b> on every token of this batch: {others}. Where they differ is in how "
        "they sample or in loss terms that are not credit (the notes at the end).</div>"
    ]
    alike = [" = ".join(esc(n) for n in g) for g in groups[1:] if len(g) > 1]
    if alike:
        parts.append(f"<div>Also the same credit as each other: {'; '.join(alike)}.</div>")
    parts += [f"<div>Not run on this batch: <b>{esc(n)}</b>: {esc(why)}</div>" for n, why in credit.unavailable.items()]
    return f"<style>{CSS}</style><div class='wb-credit'>{''.join(parts)}</div>"


def notes_html(credit) -> str:
    """Each method's notes (how it differs beyond its credit), folded."""
    lines = "".join(
        f"<div class='wb-note'><b>{esc(n)}</b>: {esc('; '.join(m.notes))}</div>"
        for n, m in credit.methods.items()
        if m.notes
    )
    return (
        f"<style>{CSS}</style><details class='wb-credit'><summary>what each method changes beyond its credit"
        f"</summary>{lines}</details>"
    )


class SameBatchView(W.VBox):
    """One batch's credit under every method (a ``workbench.credit.Credit``): the heat map of
    responses x methods (``heat``, one of ``HEAT_VALUES``), and response ``row`` as token strips
    coloured by ``colour`` (one of ``STRIP_VALUES``)."""

    def __init__(self, credit, row: int = 0, heat: str = HEAT_VALUES[0], colour: str = STRIP_VALUES[0]):
        if not 0 <= row < len(credit.batch):
            raise ValueError(f"row={row!r} is not allowed: a response index in 0..{len(credit.batch) - 1}")
        heat_values(credit, heat)  # refuses an unknown kind here, naming the allowed ones
        if colour not in STRIP_VALUES:
            raise ValueError(f"colour={colour!r} is not allowed: one of {', '.join(STRIP_VALUES)}")
        self.credit, self.columns = credit, column_order(credit)
        self.decode = TokenDecoder(credit.tokenizer)
        self.labels = response_labels(credit)
        self.heat_control = W.Dropdown(options=HEAT_VALUES, value=heat, description="heat map")
        self.row_control = W.Dropdown(
            options=[(label, i) for i, label in enumerate(self.labels)], value=row, description="response"
        )
        self.colour_control = W.ToggleButtons(
            options=STRIP_VALUES, value=colour, description="colour by", style={"button_width": "180px"}
        )
        self.figure = self._heat_figure()
        self.strips = W.HTML()
        for control in (self.heat_control, self.row_control, self.colour_control):
            control.observe(lambda _change: self.render(), names="value")
        super().__init__(
            [
                W.HTML(groups_html(credit)),
                self.heat_control,
                self.figure,
                W.HBox([self.row_control, self.colour_control]),
                self.strips,
                W.HTML(notes_html(credit)),
            ]
        )
        self.add_class("wb-same-batch")
        self.render()

    def _heat_figure(self) -> LiveFigure:
        n = len(self.labels)
        fig = LiveFigure(
            layout=panel_layout(
                "each response's credit under each method (outlined: differs from GRPO's on some token)",
                height=150 + CELL_HEIGHT * n,
                hovermode="closest",
                xaxis={"side": "top", "tickangle": -40, "type": "category"},
                yaxis={"autorange": "reversed", "type": "category", "tickfont": {"size": FONT_SIZE - 3}},
                margin={"l": 110, "r": 20, "t": 170, "b": 20},
            )
        )
        fig.add_heatmap(
            z=[], x=self.columns, y=self.labels, zmid=0, colorscale=DIVERGING, xgap=1, ygap=1,
            texttemplate="%{z:.2f}", textfont={"size": FONT_SIZE - 5},
            hovertemplate="%{x} · %{y}<br>%{z:.4f}<extra></extra>",
        )  # fmt: skip
        return fig

    def render(self) -> None:
        self._draw_heat()
        self._draw_strips()

    def _draw_heat(self) -> None:
        kind, credit = self.heat_control.value, self.credit
        z = heat_values(credit, kind)
        differs = differing_cells(credit)
        shapes = [_cell(c, r, PIVOT_OUTLINE, 2) for r, c in zip(*np.nonzero(differs))]
        shapes += _group_boundaries(credit, len(self.labels))
        shapes.append(_row_band(self.row_control.value, len(self.columns)))
        with self.figure.batch_update():
            self.figure.data[0].z = z.tolist()
            self.figure.data[0].colorbar = {"title": {"text": kind.replace(" (", "<br>(")}}
            self.figure.layout.shapes = shapes

    def _draw_strips(self) -> None:
        credit, row, colour = self.credit, self.row_control.value, self.colour_control.value
        batch = credit.batch
        n = int(batch.mask[row].sum())
        shown = {name: _strip_values(credit, name, colour)[row, :n].cpu().numpy() for name in self.columns}
        scale = ColorScale(np.concatenate(list(shown.values())), np.ones(n * len(shown), bool), signed=True)
        grpo = credit.reference.credit[row, :n].cpu().numpy()
        ids = batch.ids[row, :n].tolist()
        lines = []
        for group in credit.groups():
            m = credit.methods[group[0]]
            differs = np.abs(m.credit[row, :n].cpu().numpy() - grpo) > 1e-6
            dropped = ~m.kept[row, :n].cpu().numpy()
            who = ", ".join(esc(name) for name in group)
            lines.append(_line(who, self._strip(ids, shown[group[0]], scale, grpo, differs, dropped)))
        for name in self.columns:
            for key, values in credit.methods[name].values.items():
                v = values[row, :n].cpu().numpy()
                own = ColorScale(v, np.ones(n, bool), signed=TOKEN_VALUES.get(key, ("", "", True))[2])
                lines.append(_line(f"{esc(name)}: {esc(key)}", self._strip(ids, v, own, None, None, None)))
        self.strips.value = (
            f"<style>{CSS}</style><div class='wb-credit'>{_row_head(batch, row)}"
            f"{_legend(colour, scale)}<table>{''.join(lines)}</table></div>"
        )

    def _strip(self, ids, values, scale, grpo, differs, dropped) -> str:
        spans = []
        for t, (token_id, value) in enumerate(zip(ids, values)):
            token = self.decode(token_id)
            background, color = scale(float(value))
            css = "wb-token" + (" wb-differs" if differs is not None and differs[t] else "")
            css += " wb-dropped" if dropped is not None and dropped[t] else ""
            title = f"{token.label()}\n{value:.4f}" + (f" (GRPO's credit {grpo[t]:.4f})" if grpo is not None else "")
            title += "\nthe loss drops this token" if dropped is not None and dropped[t] else ""
            spans.append(
                f"<span class='{css}' style='background:{background};color:{color}' "
                f"title='{html.escape(title)}'>{token.html}</span>"
            )
        return f"<div class='wb-strip'>{''.join(spans)}</div>"


def _strip_values(credit, name: str, colour: str):
    m = credit.methods[name]
    if colour == STRIP_VALUES[0]:
        return m.credit
    return credit.difference(name) if colour == STRIP_VALUES[1] else m.token_advantages


def _line(who: str, strip: str) -> str:
    return f"<tr><td class='wb-who'>{who}</td><td>{strip}</td></tr>"


def _row_head(batch, row: int) -> str:
    group = int(batch.group[row])
    prompt = " ".join(batch.problems[group].prompt.split())
    prompt = prompt if len(prompt) <= PROMPT_SHOWN else "…" + prompt[-PROMPT_SHOWN:]  # the question is at the end
    answer = batch.answers[row] if batch.answers is not None else None
    return (
        f"<div class='wb-note'>prompt {group}: {esc(prompt)} · reward <b>{float(batch.scored_rewards[row]):g}</b>"
        f" · answer <b>{esc(answer if answer is not None else 'unparsed')}</b></div>"
    )


def _legend(colour: str, scale: ColorScale) -> str:
    return (
        f"<div class='wb-note'>colour = {esc(colour)}: {scale.low:.3g} "
        f"<span style='display:inline-block;width:140px;height:11px;border:1px solid #999;"
        f"vertical-align:middle;background:{scale.gradient()}'></span> {scale.high:.3g} · "
        f"<span class='wb-token wb-differs'>outlined</span>: credit differs from GRPO's · "
        f"<span class='wb-token wb-dropped'>faded</span>: the loss drops the token · "
        f"below, each method's own values on their own scales · hover a token for its value</div>"
    )


def _cell(column: int, row: int, color: str, width: int) -> dict:
    return {
        "type": "rect", "xref": "x", "yref": "y", "x0": column - 0.5, "x1": column + 0.5,
        "y0": row - 0.5, "y1": row + 0.5, "line": {"color": color, "width": width},
    }  # fmt: skip


def _group_boundaries(credit, rows: int) -> list[dict]:
    """A dark line between credit groups, a grey one between prompts."""
    out, column = [], 0
    for group in credit.groups()[:-1]:
        column += len(group)
        out.append({"type": "line", "xref": "x", "yref": "y", "x0": column - 0.5, "x1": column - 0.5,
                    "y0": -0.5, "y1": rows - 0.5, "line": {"color": "#222", "width": 2}})  # fmt: skip
    groups = credit.batch.group.tolist()
    for r in range(1, rows):
        if groups[r] != groups[r - 1]:
            out.append({"type": "line", "xref": "paper", "yref": "y", "x0": 0, "x1": 1, "y0": r - 0.5,
                        "y1": r - 0.5, "line": {"color": GREY, "width": 1.5}})  # fmt: skip
    return out


def _row_band(row: int, columns: int) -> dict:
    """The response shown below as strips, framed across every column."""
    return {**_cell(0, row, "#000", 3), "x1": columns - 0.5, "line": {"color": "#000", "width": 3, "dash": "dot"}}
