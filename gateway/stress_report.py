"""The report of `perpdex stress`: a self-contained HTML page (charts as inline SVG, no script,
no external URL; well-formed XML, so any XML parser reads it) and a short text summary."""
from __future__ import annotations

from html import escape

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf")
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 760, 220, 70, 16, 26, 30


def num(v) -> str:
    """A swept value as a person writes it: 2000000, 0.25."""
    return str(int(v)) if float(v).is_integer() else f"{float(v):.10g}"


def _fmt(v: float) -> str:
    a = abs(v)
    if a >= 1e9:
        return f"{v / 1e9:.2f}B"
    if a >= 1e6:
        return f"{v / 1e6:.2f}M"
    if a >= 1e4:
        return f"{v / 1e3:.1f}k"
    if a >= 100 or v == int(v):
        return f"{v:,.0f}"
    return f"{v:.2f}"


def chart(title: str, xs: list, series: list[tuple[str, list]], kind: str = "line") -> str:
    """An SVG chart of `series` (name, values) over `xs`: lines, or bars stacked ("bars")."""
    n = len(xs)
    if kind == "bars":
        tops = [sum(vals[i] for _, vals in series) for i in range(n)]
        lo, hi = 0.0, max(tops + [1])
    else:
        vals = [v for _, s in series for v in s if v is not None]
        lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
        if lo == hi:
            lo, hi = lo - 1, hi + 1
        pad = (hi - lo) * 0.05
        lo, hi = lo - pad, hi + pad
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    x0, x1 = xs[0], xs[-1] if xs[-1] != xs[0] else xs[0] + 1
    d0, d1 = x0, x1                                 # the ticks' range: the data's
    if kind == "bars":                              # room for the first and the last bar
        half = (x1 - x0) / (2 * max(n - 1, 1))
        x0, x1 = x0 - half, x1 + half

    def X(x):
        return PAD_L + (x - x0) / (x1 - x0) * pw

    def Y(y):
        return PAD_T + (1 - (y - lo) / (hi - lo)) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'viewBox="0 0 {W} {H}" role="img"><title>{escape(title)}</title>',
           f'<rect x="0" y="0" width="{W}" height="{H}" fill="#ffffff"/>',
           f'<text x="{PAD_L}" y="16" font-size="13" font-weight="bold">{escape(title)}</text>']
    for k in range(5):
        y = lo + (hi - lo) * k / 4
        out.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{Y(y):.1f}" y2="{Y(y):.1f}" '
                   f'stroke="#e0e0e0"/><text x="{PAD_L - 4}" y="{Y(y) + 4:.1f}" font-size="10" '
                   f'text-anchor="end">{escape(_fmt(y))}</text>')
    for k in range(5):
        x = d0 + (d1 - d0) * k / 4
        out.append(f'<text x="{X(x):.1f}" y="{H - 10}" font-size="10" text-anchor="middle">'
                   f'{escape(_fmt(x))}</text>')
    out.append(f'<rect x="{PAD_L}" y="{PAD_T}" width="{pw}" height="{ph}" fill="none" '
               f'stroke="#888888"/>')
    if kind == "bars":
        bw = max(1.0, pw / max(n, 1) * 0.8)
        base = [0.0] * n
        for ci, (name, vals) in enumerate(series):
            for i, v in enumerate(vals):
                if v:
                    out.append(f'<rect x="{X(xs[i]) - bw / 2:.1f}" y="{Y(base[i] + v):.1f}" '
                               f'width="{bw:.1f}" height="{Y(base[i]) - Y(base[i] + v):.1f}" '
                               f'fill="{COLORS[ci % len(COLORS)]}"/>')
                    base[i] += v
    else:
        for ci, (name, vals) in enumerate(series):
            pts = " ".join(f"{X(x):.1f},{Y(v):.1f}" for x, v in zip(xs, vals) if v is not None)
            out.append(f'<polyline fill="none" stroke="{COLORS[ci % len(COLORS)]}" '
                       f'stroke-width="1.5" points="{pts}"/>')
    lx = PAD_L + 8
    for ci, (name, _) in enumerate(series):
        out.append(f'<rect x="{lx}" y="{PAD_T + 6}" width="10" height="10" '
                   f'fill="{COLORS[ci % len(COLORS)]}"/><text x="{lx + 14}" y="{PAD_T + 15}" '
                   f'font-size="11">{escape(name)}</text>')
        lx += 24 + 7 * len(name)
    out.append("</svg>")
    return "".join(out)


def _table(rows: list[tuple]) -> str:
    return ("<table>" + "".join(
        "<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{escape(str(c))}</{'th' if i == 0 else 'td'}>"
                         for i, c in enumerate(r)) + "</tr>" for r in rows) + "</table>")


def summary_rows(r: dict) -> list[tuple]:
    s = r["summary"]
    liq, usd = s["liquidations"], s["liquidated_usd"]
    fund = s["insurance_fund_usd"]
    soc = s["socialised"]
    a = s["audit"]
    return [
        ("steps", f"{s['steps']:,} of {r['inputs']['step_seconds']} s"),
        ("accounts generated", f"{s['accounts']:,}"),
        ("accounts liquidated", f"{s['accounts_liquidated']:,}"),
        ("most accounts below maintenance at one step", f"{s['peak_below_maintenance']:,}"),
        ("liquidations into the book", f"{liq['book']:,} ({usd['book']:,.2f} USD)"),
        ("taken over by the insurance fund (backstop)",
         f"{liq['backstop']:,} ({usd['backstop']:,.2f} USD)"),
        ("auto-deleveraging matches", f"{liq['adl']:,} ({usd['adl']:,.2f} USD) against "
         f"{s['adl_accounts']:,} accounts"),
        ("share of the liquidated notional the book absorbed",
         "-" if s["book_share"] is None else f"{100 * s['book_share']:.1f} %"),
        ("liquidation fees to the fund", f"{s['liquidation_fees_usd']:,.2f} USD"),
        ("insurance fund (equity): start / low / end",
         f"{fund['start']:,.2f} / {fund['low']:,.2f} / {fund['end']:,.2f} USD"),
        ("socialised losses", f"{soc['events']:,} payments by {soc['accounts']:,} accounts, "
         f"{soc['usd']:,.2f} USD" + (f" ({soc['inexact_payers']} payers not separable)"
                                     if soc["inexact_payers"] else "")),
        ("bad debt (socialised + the fund's deficit)", f"{s['bad_debt_usd']:,.2f} USD"
         + (" - THE VENUE IS INSOLVENT" if s["insolvent"] else "")),
        ("margin calls / stops triggered", f"{s['margin_calls']:,} / {s['stops_triggered']:,}"),
        ("audit", f"{'balanced to the unit at every one of' if a['balanced_every_step'] else 'NOT BALANCED at some of'} "
         f"{a['steps_checked']:,} steps"),
    ]


def text(r: dict, seconds: float | None = None) -> str:
    lines = [f"perpdex stress: {r['inputs']['scenario']}, seed {r['inputs']['seed']}, "
             f"{r['inputs']['venue']}"]
    for name, m in r["markets"].items():
        lines.append(f"  {name}: {m['start_usd']:,} -> low {m['low_usd']:,} -> end "
                     f"{m['end_usd']:,} USD (path {m['path']}, oracle {m['oracle']}, mmf "
                     f"{m['parameters']['mmf_ppm']} ppm)")
    for k, v in summary_rows(r):
        lines.append(f"  {k}: {v}")
    if seconds is not None:
        lines.append(f"  ran in {seconds:.2f} s")
    return "\n".join(lines) + "\n"


CSS = ("body{font-family:sans-serif;margin:24px;max-width:820px;color:#222}"
       "table{border-collapse:collapse;margin:8px 0 18px}"
       "th,td{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}"
       "th{background:#f4f4f4;font-weight:normal}h2{margin-top:28px}.bad{color:#b00}")


def html(r: dict) -> str:
    s = r["series"]
    xs = [t / 60 for t in s["t_s"]]
    parts = ['<!DOCTYPE html>\n<html xmlns="http://www.w3.org/1999/xhtml" lang="en"><head>'
             '<meta charset="utf-8"/><title>perpdex stress report</title>'
             f'<style>{CSS}</style></head><body>',
             f"<h1>perpdex stress report</h1><p>{escape(r['inputs']['scenario'])}, seed "
             f"{r['inputs']['seed']}, {escape(r['inputs']['venue'])}; the x axis of every chart "
             f"is minutes from the start.</p>"]
    if not r["summary"]["audit"]["balanced_every_step"]:
        parts.append('<p class="bad">THE AUDIT DID NOT BALANCE AT EVERY STEP.</p>')
    parts.append("<h2>Summary</h2>" + _table(summary_rows(r)))
    for name, m in r["markets"].items():
        ms = m["series"]
        parts.append(f"<h2>{escape(name)}</h2>")
        parts.append(chart(f"{name}: index and mark (USD)", xs,
                           [("fair", ms["fair"]), ("index", ms["index"]), ("mark", ms["mark"])]))
        parts.append(chart(f"{name}: book depth within the band (USD) and book liquidations",
                           xs, [("bids", ms["bid_depth_usd"]), ("asks", ms["ask_depth_usd"]),
                                ("liquidated into the book", ms["book_liq_usd"])]))
        parts.append(chart(f"{name}: open interest (lots)", xs, [("open interest", ms["oi"])]))
        p = m["parameters"]
        parts.append(_table([("parameter", "value")] + [(k, str(v)) for k, v in p.items()]
                            + [("path", m["path"]), ("oracle", m["oracle"])]))
    parts.append("<h2>The venue</h2>")
    parts.append(chart("accounts below maintenance (at the step's mark, before and after "
                       "the liquidation pass)", xs,
                       [("before", s["below_before"]), ("after", s["below_after"])]))
    parts.append(chart("liquidations by kind (count per step)", xs,
                       [("book", s["book"]), ("backstop", s["backstop"]), ("adl", s["adl"])],
                       kind="bars"))
    parts.append(chart("insurance fund (USD)", xs, [("equity", s["fund_equity_usd"]),
                                                    ("cash", s["fund_cash_usd"])]))
    parts.append(chart("auto-deleveraged accounts (cumulative)", xs,
                       [("ADL'd accounts", s["adl_accounts"])]))
    parts.append(chart("bad debt (USD, cumulative)", xs,
                       [("socialised", s["socialised_usd"]), ("bad debt", s["bad_debt_usd"])]))
    victims = r["adl_victims"]
    parts.append(f"<h2>Auto-deleveraged ({r['adl_victims_total']:,} matches)</h2>")
    if victims:
        parts.append(_table([("account", "market", "step", "qty (lots)", "price (USD)",
                              "notional (USD)", "against")]
                            + [(v["account"], v["market"], v["step"], v["qty"], v["price"],
                                f"{v['notional_usd']:,.2f}", v["bankrupt"])
                               for v in victims[:50]]))
    else:
        parts.append("<p>Nobody.</p>")
    parts.append("</body></html>\n")
    return "".join(parts)


# ---- a sweep and a comparison (gateway/stress_sweep.py) ------------------------------------

def _page(title: str, body: list[str]) -> str:
    return ('<!DOCTYPE html>\n<html xmlns="http://www.w3.org/1999/xhtml" lang="en"><head>'
            f'<meta charset="utf-8"/><title>{escape(title)}</title><style>{CSS}</style></head>'
            f'<body><h1>{escape(title)}</h1>' + "".join(body) + "</body></html>\n")


def _sweep_rows(r: dict) -> list[tuple]:
    key = r["inputs"]["sweep"]["key"]
    rows = [(key, "accounts liquidated", "book", "backstop", "ADL matches", "ADL'd accounts",
             "fund low (USD)", "bad debt (USD)", "book share", "audit")]
    for p in r["points"]:
        liq = p["liquidations"]
        rows.append((num(p["value"]), f"{p['accounts_liquidated']:,}", f"{liq['book']:,}",
                     f"{liq['backstop']:,}", f"{liq['adl']:,}", f"{p['adl_accounts']:,}",
                     f"{p['insurance_fund_usd']['low']:,.2f}", f"{p['bad_debt_usd']:,.2f}",
                     "-" if p["book_share"] is None else f"{100 * p['book_share']:.1f} %",
                     "balanced" if p["audit_balanced"] else "NOT BALANCED"))
    return rows


def sweep_text(r: dict, seconds: float | None = None) -> str:
    i = r["inputs"]
    lines = [f"perpdex stress --sweep {i['sweep']['spec']}: {i['scenario']}, seed {i['seed']}, "
             f"{i['venue']}, {len(r['points'])} runs of {i['steps']:,} steps"]
    rows = _sweep_rows(r)
    widths = [max(len(str(row[c])) for row in rows) for c in range(len(rows[0]))]
    for row in rows:
        lines.append("  " + "  ".join(str(c).rjust(w) for c, w in zip(row, widths)))
    for a in r["answers"].values():
        lines.append(f"  {a['sentence']}")
    lines.append("  audit: " + ("balanced to the unit at every step of every run"
                                if r["audit_balanced_every_run"] else
                                "NOT BALANCED at some step of some run"))
    if seconds is not None:
        lines.append(f"  ran in {seconds:.2f} s")
    return "\n".join(lines) + "\n"


def sweep_html(r: dict) -> str:
    i, pts = r["inputs"], r["points"]
    key = (i["sweep"]["market"] + "." if i["sweep"]["market"] else "") + i["sweep"]["key"]
    xs = [p["value"] for p in pts]
    body = [f"<p>{escape(i['scenario'])}, seed {i['seed']}, {escape(i['venue'])}: "
            f"{len(pts)} runs of {i['steps']:,} steps of {i['step_seconds']} s, "
            f"<code>{escape(key)}</code> from {num(xs[0])} to {num(xs[-1])}; the x axis of every "
            f"chart is {escape(key)}.</p>",
            "<ul>" + "".join(f"<li><b>{escape(a['sentence'])}</b></li>"
                             for a in r["answers"].values()) + "</ul>"]
    if not r["audit_balanced_every_run"]:
        body.append('<p class="bad">THE AUDIT DID NOT BALANCE AT EVERY STEP OF EVERY RUN.</p>')
    body.append(chart(f"bad debt and the fund's low point (USD) against {key}", xs,
                      [("bad debt", [p["bad_debt_usd"] for p in pts]),
                       ("fund's low", [p["insurance_fund_usd"]["low"] for p in pts])]))
    body.append(chart(f"liquidations by kind (count) against {key}", xs,
                      [(k, [p["liquidations"][k] for p in pts])
                       for k in ("book", "backstop", "adl")], kind="bars"))
    body.append(chart(f"auto-deleveraging against {key}", xs,
                      [("ADL matches", [p["liquidations"]["adl"] for p in pts]),
                       ("ADL'd accounts", [p["adl_accounts"] for p in pts])]))
    body.append(chart(f"accounts liquidated against {key}", xs,
                      [("accounts liquidated", [p["accounts_liquidated"] for p in pts])]))
    body.append("<h2>Every run</h2>" + _table(_sweep_rows(r)))
    body.append("<h2>The crash</h2>" + _table(
        [("market", "path", "oracle", "start (USD)")]
        + [(m, v["path"], v["oracle"], f"{v['start_usd']:,}") for m, v in r["markets"].items()]))
    return _page("perpdex stress sweep", body)


def _compare_rows(r: dict) -> list[tuple]:
    a, b = summary_rows(r["a"]), summary_rows(r["b"])
    return [("", "A: " + r["labels"]["a"], "B: " + r["labels"]["b"])] + [
        (k, va, vb) for (k, va), (_, vb) in zip(a, b)]


def compare_text(r: dict, seconds: float | None = None) -> str:
    i = r["a"]["inputs"]
    lines = [f"perpdex stress --compare: {i['scenario']}, seed {i['seed']}, {i['venue']}"]
    rows = _compare_rows(r)
    rows[0] = ("", rows[0][1], rows[0][2])
    w = [max(len(row[c]) for row in rows) for c in range(3)]
    for k, va, vb in rows:
        lines.append(f"  {k.ljust(w[0])}  {va.ljust(w[1])}  {vb}".rstrip())
    if seconds is not None:
        lines.append(f"  ran in {seconds:.2f} s")
    return "\n".join(lines) + "\n"


def compare_html(r: dict) -> str:
    a, b = r["a"], r["b"]
    sa, sb = a["series"], b["series"]
    xs = [t / 60 for t in sa["t_s"]]
    la, lb = "A", "B"
    body = [f"<p>{escape(a['inputs']['scenario'])}, seed {a['inputs']['seed']}, "
            f"{escape(a['inputs']['venue'])}: the same crash under two parameter sets, A "
            f"({escape(r['labels']['a'])}) and B ({escape(r['labels']['b'])}); the x axis of "
            f"the charts is minutes from the start.</p>"]
    for side, rep in (("A", a), ("B", b)):
        if not rep["summary"]["audit"]["balanced_every_step"]:
            body.append(f'<p class="bad">{side}: THE AUDIT DID NOT BALANCE AT EVERY STEP.</p>')
    body.append("<h2>Side by side</h2>" + _table(_compare_rows(r)))

    def cum(v):
        out, t = [], 0
        for x in v:
            t += x
            out.append(t)
        return out

    for title, key in (("insurance fund equity (USD)", "fund_equity_usd"),
                       ("bad debt (USD, cumulative)", "bad_debt_usd"),
                       ("accounts below maintenance (before the pass)", "below_before"),
                       ("auto-deleveraged accounts (cumulative)", "adl_accounts")):
        body.append(chart(title, xs, [(la, sa[key]), (lb, sb[key])]))
    body.append(chart("liquidations, every kind (cumulative)", xs,
                      [(la, cum([x + y + z for x, y, z in zip(sa["book"], sa["backstop"],
                                                               sa["adl"])])),
                       (lb, cum([x + y + z for x, y, z in zip(sb["book"], sb["backstop"],
                                                               sb["adl"])]))]))
    for name in a["markets"]:
        pa, pb = a["markets"][name], b["markets"][name]
        body.append(f"<h2>{escape(name)}</h2>")
        body.append(chart(f"{name}: mark (USD)", xs, [(la, pa["series"]["mark"]),
                                                      (lb, pb["series"]["mark"])]))
        body.append(_table([("parameter", "A", "B")] + [
            (k, str(v), str(pb["parameters"][k])) for k, v in pa["parameters"].items()]))
    return _page("perpdex stress comparison", body)
