"""The SecMoE paper's headline table on whole models: Switch-Base E = 8…128 and MoE-Small-8.

Each run is one ``secmoe bench model`` as two processes over TCP loopback (each party's CPU
time and peak RSS are its own process's), appended as one JSON line to the results file when
it finishes, with the load average beside it (times depend on the load of this shared machine;
bytes and rounds do not).

    python benchmarks/paper_table.py --run whole --out benchmarks/results/paper_table.jsonl
    python benchmarks/paper_table.py --run layers --out benchmarks/results/paper_table.jsonl
    python benchmarks/paper_table.py --table benchmarks/results/paper_table.jsonl \
        --moe-layers benchmarks/results/moe_t8.jsonl benchmarks/results/moe_e128.jsonl \
        --md benchmarks/results/paper_table.md --json-out benchmarks/results/paper_table.json \
        --png docs/paper_table

Run sets (``--run``, several allowed; ``--only`` filters by model/strategy substring):
- ``whole``: whole models: switch-base-8 (select, dispatch) and moe-small-8 (select, dispatch);
- ``layers``: the first two blocks (``--layers 2``: embedding, one dense block, one MoE block,
  final norm) of switch-base-E for every E and strategy (select, dispatch, all), from which the
  whole model is **composed**: embedding + head once, the dense block n_layers/2 times, the MoE
  block n_layers/2 times (every block of a kind has the same shapes, so the same bytes and
  rounds; time is the measured block's). Each composition is validated against a whole run of
  the same model and strategy where one exists (the table says by how much they differ);
- ``baseline``: ``all`` (every expert, BumbleBee-style) on the whole moe-small-8;
- ``layers-cf``: ``dispatch`` with Switch's training capacity factor 1.25 (C = ⌈1.25·8/E⌉:
  it drops tokens the model keeps, a different function, labelled ``dispatch cf=1.25``);
- ``layers-he``: ``select`` at E = 8 and 64 with the norms' row products by HE
  (``--norm-products he``: fewer bytes, more compute; labelled ``select, HE norms``).

An E with no run of its own (``select`` at E = 128 needs ~16 GB on the server for one MoE
layer's encoded experts: it ran only with the machine to itself) is composed for bytes and
rounds only from the largest smaller E with a run plus the growth of one MoE layer measured by
``secmoe bench moe`` between the two E (``--moe-layers``), labelled so; the same rule applied
to the E that have runs is shown as its validation. Its times are left empty.

The table puts the paper's figures (SecMoE, BumbleBee, Iron: GB and LAN/WAN minutes) beside
ours with the ratio ours/paper, and labels every figure "measured" or "composed".
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from moe_sweep import run_two

SECMOE = [sys.executable, "-m", "secmoe.cli", "bench", "model"]
EXPERTS = (8, 16, 32, 64, 128)

#: The paper's figures (SecMoE, arXiv 2601.06790, Tables: 8 tokens, two 64-vCPU hosts).
PAPER_GB = {  # Switch-Base communication, GB, by E
    "SecMoE": {16: 0.81, 32: 0.84, 64: 0.81, 128: 0.82},
    "BumbleBee": {16: 1.42, 32: 2.04, 64: 3.37, 128: 5.81},
    "Iron": {16: 7.13, 32: 9.44, 64: 17.19, 128: 24.17},
}
PAPER_MIN = {  # runtime, minutes (LAN, WAN)
    "moe-small-8": {"SecMoE": (2.52, 3.68), "BumbleBee": (9.76, 13.88), "Iron": (12.07, 59.14)},
    "switch-base": {"SecMoE": (12.1, 14.73), "BumbleBee": (32.3, 34.89), "Iron": (35.5, 143.78)},
}


def run_sets(name: str) -> list[dict]:
    """The runs of a set: ``{"model", "strategy", "layers"}`` each."""
    if name == "whole":
        return [
            {"model": m, "strategy": s, "layers": None}
            for m in ("switch-base-8", "moe-small-8")
            for s in ("select", "dispatch")
        ]
    if name == "layers":
        return [
            {"model": f"switch-base-{e}", "strategy": s, "layers": 2}
            for s in ("select", "dispatch", "all")
            for e in EXPERTS
        ]
    if name == "baseline":  # the BumbleBee-style baseline on the smaller whole model
        return [{"model": "moe-small-8", "strategy": "all", "layers": None}]
    if name == "layers-cf":  # dispatch with Switch's training capacity: drops tokens
        return [
            {"model": f"switch-base-{e}", "strategy": "dispatch", "layers": 2, "cf": 1.25}
            for e in EXPERTS
        ]
    if name == "layers-he":  # the norms' row products by HE (bench model --norm-products he)
        return [
            {"model": f"switch-base-{e}", "strategy": "select", "layers": 2, "norms": "he"}
            for e in (8, 64)
        ]
    raise SystemExit(f"unknown run set {name!r}: whole, layers, layers-cf, layers-he, baseline")


def label(run: dict) -> str:
    """The strategy as shown: with its capacity factor or HE norms when the run sets them."""
    if run.get("norms") == "he":
        return f"{run['strategy']}, HE norms"
    if not run.get("cf"):
        return run["strategy"]
    return f"{run['strategy']} cf={run['cf']} (drops tokens: another function)"


def run_pair(run: dict, timeout: float) -> dict:
    """One bench as two processes; the client's JSON (or the error), with the load average."""
    args = ["--preset", run["model"], "--tokens", "8", "--strategy", run["strategy"]]
    args += ["--layers", str(run["layers"])] if run["layers"] else []
    args += ["--capacity-factor", str(run["cf"])] if run.get("cf") else []
    args += ["--norm-products", run["norms"]] if run.get("norms") else []
    args += ["--json", f"--timeout={timeout}"]
    load0 = os.getloadavg()
    res, err, wall = run_two([*SECMOE, *args], 4 * timeout + 600)
    stamp = {
        "run": run,
        "wall": wall,
        "load_avg_before": list(load0),
        "load_avg_after": list(os.getloadavg()),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    return {**stamp, "error": err} if res is None else {**res, **stamp}


def do_runs(runs: list[dict], out: Path, timeout: float) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    for run in runs:
        res = run_pair(run, timeout)
        with out.open("a") as fh:
            fh.write(json.dumps(res, sort_keys=True) + "\n")
        brief = {k: res.get(k) for k in ("bytes_c2s", "bytes_s2c", "seconds", "error")}
        print(json.dumps({**run, **brief}), flush=True)


# --------------------------------------------------------------------------------------------
# Composition, table and plots
# --------------------------------------------------------------------------------------------


def load(paths: list[Path]) -> list[dict]:
    """The successful runs of several results files (the last of each configuration)."""
    rows = [json.loads(ln) for p in paths for ln in p.read_text().splitlines() if ln.strip()]
    last = {}
    for r in rows:
        if "error" not in r:
            last[json.dumps(r["run"], sort_keys=True)] = r
    return list(last.values())


def _bytes(f: dict) -> int:
    return f["bytes_c2s"] + f["bytes_s2c"]


def figures(r: dict) -> dict:
    """The whole-model figures of a whole run (measured)."""
    out = {
        "bytes": r["bytes_c2s"] + r["bytes_s2c"],
        "wire": r["bytes_c2s"] + r["bytes_s2c"] + r["framing_bytes"],
        "rounds": r["rounds"],
        "embed_bytes": _bytes(r["per_layer"]["embed"]),
        # a fingerprint of the code that ran: one block's attention bytes
        "attn_mb": next(_bytes(x) for x in r["layers"] if x["row"] == "layer0/attn") / 1e6,
        "seconds": r["seconds"],
        "client_cpu": r["client_cpu_seconds"],
        "server_cpu": r["server_cpu_seconds"],
        # the part in plain-weight HE products (rows from before it was reported: None)
        "server_linear_cpu": r.get("server_linear_cpu_seconds"),
        "setup_seconds": r["setup_seconds"],
        "rss_server_mb": r["peak_rss_mb"]["server"],
        "rss_client_mb": r["peak_rss_mb"]["client"],
        "load": _load(r),
        "source": "measured",
    }
    return with_estimates(out)


def compose(r: dict, n_layers: int, moe_layers: list[int]) -> dict:
    """Whole-model figures from a ``--layers 2`` run (block 0 dense, block 1 MoE): the run's
    figures plus, for each further block, the measured block of the same kind. Bytes, rounds,
    wall and CPU seconds (the server's in plain-weight HE products too, where the run has
    them) add; the setup adds each further block's weight encoding."""
    per = r["per_layer"]
    dense, moe = per["layer0"], per["layer1"]
    n_moe = len(moe_layers)
    extra_dense, extra_moe = n_layers - n_moe - 1, n_moe - 1
    enc = r["encode_seconds_per_layer"]

    def more(key: str) -> float:
        return extra_dense * dense[key] + extra_moe * moe[key]

    out = figures(r)
    out.update(
        bytes=out["bytes"] + more("bytes_c2s") + more("bytes_s2c"),
        wire=out["wire"] + more("bytes_c2s") + more("bytes_s2c") + more("framing_bytes"),
        rounds=out["rounds"] + more("rounds"),
        seconds=out["seconds"] + more("seconds"),
        client_cpu=out["client_cpu"] + more("client_cpu_seconds"),
        server_cpu=out["server_cpu"] + more("server_cpu_seconds"),
        setup_seconds=out["setup_seconds"] + extra_dense * enc["0"] + extra_moe * enc["1"],
        source="composed",
    )
    if out["server_linear_cpu"] is not None:
        out["server_linear_cpu"] += more("server_linear_cpu_seconds")
    return with_estimates(out)


def with_estimates(f: dict) -> dict:
    """``f`` with LAN/WAN estimates (seconds + bytes·8/bandwidth + rounds·RTT/2) from the wall
    time (``lan``, ``wan``: under this machine's load) and from the two parties' CPU seconds
    (``lan_cpu``, ``wan_cpu``: compute as if the parties never ran at once and nothing else
    ran: a proxy for an unloaded machine, not a measurement of one)."""
    for name, (bw, rtt) in PROFILES_BW.items():
        net = f["wire"] * 8 / bw + f["rounds"] * rtt / 2
        f[name] = f["seconds"] + net
        f[f"{name}_cpu"] = f["client_cpu"] + f["server_cpu"] + net
    return f


#: The paper's network settings (bandwidth bit/s, RTT s), as secmoe.net.shaping.PROFILES.
PROFILES_BW = {"lan": (1e9, 0.5e-3), "wan": (400e6, 4e-3)}


def whole_table(results: list[dict]) -> dict[tuple[str, str], dict]:
    """(model, strategy) → whole-model figures: measured where a whole run exists, else
    composed from the ``--layers 2`` run (with the validation against a whole run attached
    to the composed figure of the same model when both exist)."""
    whole = {(r["run"]["model"], label(r["run"])): r for r in results if not r["run"]["layers"]}
    two = {(r["run"]["model"], label(r["run"])): r for r in results if r["run"]["layers"] == 2}
    table = {}
    for key in sorted(set(whole) | set(two)):
        cfg = (whole.get(key) or two[key])["config"]
        if key in two:
            full = PRESET_LAYERS[key[0]]
            table[key] = comp = compose(two[key], *full)
            if key in whole:
                meas = figures(whole[key])
                comp["validation"] = {
                    k: (comp[k] - meas[k]) / meas[k]
                    for k in ("bytes", "rounds", "seconds", "lan", "lan_cpu")
                }
                table[key] = {**meas, "composed_check": comp}
        else:
            table[key] = figures(whole[key])
        table[key]["d_model"] = cfg["d_model"]
    return table


def add_moe_layer_deltas(table: dict[tuple[str, str], dict], layers: list[dict]) -> None:
    """Switch-Base ``select`` rows for the E with no run of their own, composed for **bytes and
    rounds only** from the largest smaller E that has one, plus 6 × the difference between two
    MoE layers measured by ``secmoe bench moe`` (T = 8, no capacity: the same layer) at the two
    E. The same rule applied to an E that has a run is its validation (attached). Times are
    not composed (those layer runs used older code): they stay empty."""
    per_layer = {
        r["params"]["experts"]: r
        for r in layers
        if r["params"]["strategy"] == "select" and r["params"]["tokens"] == 8 and "error" not in r
    }

    def predict(e: int) -> dict | None:
        bases = [b for b in per_layer if b < e and (f"switch-base-{b}", "select") in runs]
        if e not in per_layer or not bases:
            return None
        b = max(bases)
        base, lo, hi = table[(f"switch-base-{b}", "select")], per_layer[b], per_layer[e]
        n_moe = len(PRESET_LAYERS[f"switch-base-{e}"][1])
        grow = n_moe * (_bytes(hi) - _bytes(lo))
        out = {k: None for k in ("seconds", "lan", "wan", "lan_cpu", "wan_cpu", "setup_seconds")}
        checks = ("composed_check", "delta_check", "validation")
        return {
            **{k: v for k, v in base.items() if k not in checks},
            **out,
            "bytes": base["bytes"] + grow,
            "embed_bytes": base["embed_bytes"],
            "rounds": base["rounds"] + n_moe * (hi["rounds"] - lo["rounds"]),
            "rss_server_mb": None,
            "rss_client_mb": None,
            "load": None,
            "source": f"composed (bytes, rounds): switch-base-{b} + {n_moe} × the MoE layer's "
            f"growth from E = {b} to {e} (`secmoe bench moe`); time not measured",
        }

    runs = set(table)
    for e in EXPERTS:
        key = (f"switch-base-{e}", "select")
        guess = predict(e)
        if guess is None:
            continue
        if key in table:
            have = table[key]
            table[key]["delta_check"] = {
                k: (guess[k] - have[k]) / have[k] for k in ("bytes", "rounds")
            }
        else:
            table[key] = guess


def _preset_layers() -> dict[str, tuple[int, list[int]]]:
    from secmoe.model.config import PRESETS

    return {n: (c.n_layers, list(c.moe_layers)) for n, c in PRESETS.items()}


PRESET_LAYERS = _preset_layers()


def _experts(model: str) -> int:
    return int(model.rsplit("-", 1)[1])


def _load(r: dict) -> str:
    """The 1-minute load average at the run's start and end (the machine is shared)."""
    return f"{r['load_avg_before'][0]:.1f} → {r['load_avg_after'][0]:.1f}"


def _num(x: float | None, scale: float = 1, digits: int = 1) -> str:
    return "–" if x is None else f"{x / scale:.{digits}f}"


def markdown(table: dict[tuple[str, str], dict]) -> str:
    """The headline table: ours beside the paper's, every figure labelled."""
    out = [
        "| model | strategy | source | GB | GB w/o embedding | paper SecMoE GB "
        "| paper BumbleBee GB | ours / paper's counterpart | rounds "
        "| LAN min: wall / CPU-based | WAN min: wall / CPU-based "
        "| paper's counterpart LAN / WAN min | setup s | peak RSS MB server / client "
        "| load (1 min, start → end) | attn MB/block |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(table, key=lambda k: (k[0].startswith("moe"), _experts(k[0]), k[1]))
    for model, strat in order:
        f = table[(model, strat)]
        e, switch = _experts(model), model.startswith("switch")
        gb = f["bytes"] / 1e9
        paper = PAPER_GB["SecMoE"].get(e) if switch else None
        bb = PAPER_GB["BumbleBee"].get(e) if switch else None
        # `all` evaluates every expert, as the paper's BumbleBee baseline; the others: SecMoE
        ref, who = (bb, "BumbleBee") if strat == "all" else (paper, "SecMoE")
        ratio = f"{gb / ref:.2f} ({who})" if ref else "–"
        pl, pw = PAPER_MIN["switch-base" if switch else model][who]
        src = f["source"]
        if "composed_check" in f:
            v = f["composed_check"]["validation"]
            src += (
                f"; composed from 2 blocks: bytes {v['bytes']:+.2%}, rounds {v['rounds']:+.1%}, "
                f"wall time {v['seconds']:+.0%}, CPU-based LAN {v['lan_cpu']:+.0%}"
            )
        if "delta_check" in f:
            v = f["delta_check"]
            src += (
                f"; rule of the E-growth rows: bytes {v['bytes']:+.2%}, rounds {v['rounds']:+.1%}"
            )
        out.append(
            f"| {model} | {strat} | {src} | {gb:.3f} | {gb - f['embed_bytes'] / 1e9:.3f} "
            f"| {paper or '–'} | {bb or '–'} | {ratio} "
            f"| {f['rounds']:.0f} | {_num(f['lan'], 60)} / {_num(f['lan_cpu'], 60)} "
            f"| {_num(f['wan'], 60)} / {_num(f['wan_cpu'], 60)} | {pl} / {pw} "
            f"| {_num(f['setup_seconds'], 1, 0)} "
            f"| {_num(f['rss_server_mb'], 1, 0)} / {_num(f['rss_client_mb'], 1, 0)} "
            f"| {f['load'] or '–'} | {f['attn_mb']:.1f} |"
        )
    return "\n".join(out) + "\n"


#: Parts that run beside the others (the OT pool's refills; "other" in older results).
CONCURRENT = ("OT pool refills", "other")


def breakdown(r: dict) -> str:
    """Where a whole run's bytes and time go: its per-layer table summed by kind."""
    run = r["run"]
    tot = r["bytes_c2s"] + r["bytes_s2c"]
    out = [
        f"{run['model']}, {label(run)}, 8 tokens, measured (load {_load(r)}):",
        "",
        "| part | MB | share | rounds | wall s | client CPU s | server CPU s |",
        "|---|---|---|---|---|---|---|",
    ]
    rounds: dict[str, int] = {}  # the rows of a group run one after another: rounds add
    for row in r["layers"]:
        rounds[row["group"]] = rounds.get(row["group"], 0) + row["rounds"]
    for name, g in sorted(r["groups"].items(), key=lambda kv: -_bytes(kv[1])):
        cpu = f"{g['client_cpu_seconds']:.1f} | {g['server_cpu_seconds']:.1f}"
        shown = "OT pool refills" if name in CONCURRENT else name
        out.append(
            f"| {shown} | {_bytes(g) / 1e6:.1f} | {_bytes(g) / tot:.1%} "
            f"| {'beside the others' if name in CONCURRENT else rounds[name]} "
            f"| {g['seconds']:.1f} | {cpu} |"
        )
    enc = r["encode_seconds"]
    out.append(f"| (setup: weight encoding, server) | 0 | – | 0 | {enc:.1f} | – | – |")
    return "\n".join(out) + "\n"


def _switch_series(table: dict[tuple[str, str], dict], strategy: str) -> tuple[list, list]:
    """E and the figures of one strategy's Switch-Base rows, by E."""
    pts = sorted(
        (_experts(m), f) for (m, st), f in table.items() if st == strategy and "switch" in m
    )
    return [e for e, _ in pts], [f for _, f in pts]


def _save(fig: Any, ax: Any, title: str, ylabel: str, path: str) -> str:
    ax.set(xscale="log", yscale="log", xlabel="experts E", ylabel=ylabel)
    ax.set_xticks(EXPERTS, [str(e) for e in EXPERTS])
    ax.set_title(title)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot(table: dict[tuple[str, str], dict], prefix: str) -> list[str]:
    """GB against E and LAN/WAN minutes against E (Switch-Base), ours beside the paper's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    strategies = sorted({s for m, s in table if m.startswith("switch")})
    fig, ax = plt.subplots(figsize=(9.5, 4.4))
    for s in strategies:
        xs, pts = _switch_series(table, s)
        ax.plot(xs, [f["bytes"] / 1e9 for f in pts], "o-", label=f"secmoe {s}")
        for e, f in zip(xs, pts, strict=True):
            if f["source"].startswith("composed"):
                ax.annotate("c", (e, f["bytes"] / 1e9), textcoords="offset points", xytext=(3, 3))
    for name, style in (("SecMoE", "k--"), ("BumbleBee", "k:"), ("Iron", "k-.")):
        es = sorted(PAPER_GB[name])
        ax.plot(es, [PAPER_GB[name][e] for e in es], style, label=f"paper: {name}")
    title = "Switch-Base encoder, 8 tokens (c = composed from measured blocks)"
    written.append(_save(fig, ax, title, "communication, GB", f"{prefix}_gb.png"))
    fig, ax = plt.subplots(figsize=(9.5, 4.4))
    for s in strategies:
        xs, pts = _switch_series(table, s)
        timed = [(e, f) for e, f in zip(xs, pts, strict=True) if f["lan"] is not None]
        ex, c = [e for e, _ in timed], f"C{strategies.index(s)}"
        ax.plot(ex, [f["lan"] / 60 for _, f in timed], "o-", c=c, label=f"{s}: LAN, wall")
        ax.plot(ex, [f["wan"] / 60 for _, f in timed], "s:", c=c, label=f"{s}: WAN, wall")
        ax.plot(ex, [f["lan_cpu"] / 60 for _, f in timed], "^--", c=c, label=f"{s}: LAN, CPU")
    pl, pw = PAPER_MIN["switch-base"]["SecMoE"]
    ax.axhline(pl, color="k", ls="--", label=f"paper SecMoE LAN {pl} min")
    ax.axhline(pw, color="k", ls=":", label=f"paper SecMoE WAN {pw} min")
    title = "Switch-Base, 8 tokens: LAN/WAN estimates (2 shared cores)"
    written.append(_save(fig, ax, title, "minutes (estimate)", f"{prefix}_minutes.png"))
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", nargs="+", help="run sets: whole, layers")
    ap.add_argument("--only", nargs="*", default=[], help="keep runs whose model/strategy match")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/paper_table.jsonl"))
    ap.add_argument("--timeout", type=float, default=3600.0, help="per-wait deadline (s)")
    ap.add_argument("--table", nargs="+", type=Path, help="results files to tabulate")
    ap.add_argument(
        "--moe-layers",
        nargs="*",
        type=Path,
        default=[],
        help="`secmoe bench moe` results (moe_sweep.py) for E with no run of their own",
    )
    ap.add_argument("--md", type=Path, help="write the markdown table here")
    ap.add_argument("--json-out", type=Path, help="write the whole-model figures as JSON")
    ap.add_argument("--png", help="plot prefix (e.g. docs/paper_table)")
    args = ap.parse_args()
    if args.table:
        table = whole_table(load(args.table))
        layers = [json.loads(x) for p in args.moe_layers for x in p.read_text().splitlines() if x]
        add_moe_layer_deltas(table, layers)
        md = markdown(table)
        wholes = [r for r in load(args.table) if not r["run"]["layers"]]
        md += "".join("\n" + breakdown(r) for r in sorted(wholes, key=lambda r: str(r["run"])))
        print(md)
        if args.md:
            args.md.write_text(md)
        if args.json_out:
            rows = [{"model": m, "strategy": s, **f} for (m, s), f in sorted(table.items())]
            args.json_out.write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")
        if args.png:
            print("wrote", ", ".join(plot(table, args.png)))
    if args.run:
        runs = [r for s in args.run for r in run_sets(s)]
        for pat in args.only:
            runs = [r for r in runs if pat in f"{r['model']}/{r['strategy']}/{r['layers']}"]
        do_runs(runs, args.out, args.timeout)


if __name__ == "__main__":
    main()
