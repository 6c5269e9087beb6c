"""docs/benchmarks.md and its plots, from the results of one run.

Every figure is shown as a ratio to a baseline measured in the same run on the same files, and
every target of issue 13 is judged from this run only: met, missed, or not measured (and why).
The raw results are written beside the plots as `results.json`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

MB = 1e6
REQUESTS = "push's XNAT requests / curl (time)"  # push.measure's ratio of that name


def _mb(kb: float) -> float:
    return kb * 1024 / MB


def _series_rows(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in series if "client" in s]


# -- targets ---------------------------------------------------------------------------------


def targets(results: dict[str, Any]) -> list[dict[str, str]]:
    """Each Done-when target of issue 13: the figures behind it and whether it was met."""
    rows: list[dict[str, str]] = []
    steps = _series_rows(results.get("size_series", [])) + _series_rows(
        results.get("files_series", [])
    )

    def add(name: str, values: list[tuple[str, float]], ok: Callable[[float], bool], fmt: str):
        if not values:
            rows.append({"target": name, "measured": "not measured", "verdict": "—"})
            return
        shown = "; ".join(f"{label}: {format(v, fmt)}" for label, v in values)
        verdict = "met" if all(ok(v) for _, v in values) else "**missed**"
        rows.append({"target": name, "measured": shown, "verdict": verdict})

    def ratio(key: str) -> list[tuple[str, float]]:
        return [(s["label"], s["client"]["ratios"][key]) for s in steps]

    add("check ≥ 0.5× cold 64 KiB read (same cores)", ratio("check / cold 64 KiB read"),
        lambda v: v >= 0.5, ".3f")  # fmt: skip
    add("check ≥ 5× full pydicom.dcmread", ratio("check / dcmread"), lambda v: v >= 5, ".1f")
    add("pack+send ≥ 0.8× read+MD5", ratio("pack+send / read+MD5"), lambda v: v >= 0.8, ".3f")
    pushes = [s for s in results.get("size_series", []) if s.get("push")]
    add(
        "push within 1.1× of curl: the same two XNAT requests (the upload, its zip streamed "
        "by xnatdrop and prebuilt for curl; the archive request), both from a cold cache",
        [(s["label"], s["push"]["ratios"][REQUESTS]) for s in pushes],
        lambda v: v <= 1.1,
        ".2f",
    )
    add(
        "push within 1.1× of curl: xnatdrop's whole job (it also checks before and verifies "
        "after) against curl's two requests",
        [(s["label"], s["push"]["ratios"]["push / curl (time)"]) for s in pushes],
        lambda v: v <= 1.1,
        ".2f",
    )
    add(
        "push ≥ 2× faster than xnatpy",
        [
            (s["label"], s["push"]["ratios"]["xnatpy / push (time)"])
            for s in pushes
            if "xnatpy / push (time)" in s["push"]["ratios"]
        ],
        lambda v: v >= 2,
        ".2f",
    )
    add(
        "sandbox ingest ≥ 0.5× disk write (the same entries written as N files)",
        [
            (s["label"], s["push"]["ratios"]["sandbox ingest / disk write (N files)"])
            for s in pushes
        ],
        lambda v: v >= 0.5,
        ".3f",
    )
    peaks = [
        (f"{name} {s['label']}", _mb(s[part][key]["peak_kb"]))
        for s in steps
        for part, key, name in (("client", "check", "check"), ("client", "pack_send", "pack+send"))
    ] + [(f"push {s['label']}", _mb(s["push"]["xnatdrop"]["peak_kb"])) for s in pushes]
    add("peak memory < 200 MB (check, pack+send, push; MB)", peaks, lambda v: v < 200, ".0f")
    sizes = _series_rows(results.get("size_series", []))
    if len(sizes) >= 2:
        first, last = sizes[0], sizes[-1]
        flat = [
            (
                f"{name} {last['label']} / {first['label']}",
                last["client"][key]["peak_kb"] / first["client"][key]["peak_kb"],
            )
            for key, name in (("check", "check"), ("pack_send", "pack+send"))
        ]
        if len(pushes) >= 2:
            flat.append(
                (
                    f"push {pushes[-1]['label']} / {pushes[0]['label']}",
                    pushes[-1]["push"]["xnatdrop"]["peak_kb"]
                    / pushes[0]["push"]["xnatdrop"]["peak_kb"],
                )
            )
        add("peak memory flat: largest within 1.2× of smallest", flat, lambda v: v <= 1.2, ".2f")
    idle = results.get("idle")
    add(
        "idle < 1% of a core (at the shortened interval measured)",
        [
            (
                f"{idle['folders']:,} folders, a scan every {idle['poll_seconds']:g} s",
                idle["core_percent"],
            )
        ]
        if idle
        else [],
        lambda v: v < 1,
        ".3f",
    )
    settle = results.get("settle")
    add(
        "settle latency ≤ quiet_seconds + one poll (s over the target; ≤ 0 is met)",
        [
            (f"quiet {t['quiet']:g} s", t["latency"] - t["quiet"] - t["poll"])
            for t in (settle["trials"] if settle else [])
        ],
        lambda v: v <= 0,
        "+.2f",
    )
    share = results.get("share")
    add(
        "1 ms share: check within 2× of the parallel read (time ratio)",
        [(f"{share['files']} files", share["ratios"]["share check / parallel read (time)"])]
        if share
        else [],
        lambda v: v <= 2,
        ".1f",
    )
    cstore = results.get("cstore")
    add(
        "C-STORE ≥ 0.8× storescu (issue 12)",
        [(f"{cstore['instances']} instances", cstore["ratios"]["C-STORE / storescu"])]
        if cstore
        else [],
        lambda v: v >= 0.8,
        ".2f",
    )
    return rows


# -- plots -----------------------------------------------------------------------------------

CLIENT_LINES = [
    ("check", "xnatdrop check", "C0", "-"),
    ("read64k", "cold 64 KiB read (baseline)", "C0", ":"),
    ("dcmread", "pydicom.dcmread (baseline)", "C0", "--"),
    ("pack_send", "pack+send → null sink", "C1", "-"),
    ("read_md5", "read+MD5 (baseline)", "C1", ":"),
]
PUSH_LINES = [
    ("xnatdrop", "xnatdrop push (whole job)", "C2", "-"),
    ("curl", "curl: prebuilt zip imported, then archived", "C2", ":"),
    ("xnatpy", "xnatpy: import_dir, then archive", "C2", "--"),
]


def _scaling_plot(series: list[dict[str, Any]], x_key: str, x_label: str, path: Path) -> None:
    rows = _series_rows(series)
    xs = [s[x_key] for s in rows]
    figure, (times, memory) = plt.subplots(1, 2, figsize=(12, 4.8))
    for key, label, color, style in CLIENT_LINES:
        times.plot(xs, [s["client"][key]["seconds"] for s in rows], style, color=color,
                   marker="o", label=label)  # fmt: skip
        memory.plot(xs, [_mb(s["client"][key]["peak_kb"]) for s in rows], style, color=color,
                    marker="o", label=label)  # fmt: skip
    workers = [_mb(s["client"]["check"]["children_peak_kb"]) for s in rows]
    memory.plot(xs, workers, "-.", color="C0", marker="x", label="check: largest worker")
    pushed = [s for s in rows if s.get("push")]
    if pushed:
        px = [s[x_key] for s in pushed]
        for key, label, color, style in PUSH_LINES:
            if all(key in s["push"] for s in pushed):
                times.plot(px, [s["push"][key]["seconds"] for s in pushed], style, color=color,
                           marker="s", label=label)  # fmt: skip
        memory.plot(px, [_mb(s["push"]["xnatdrop"]["peak_kb"]) for s in pushed], "-",
                    color="C2", marker="s", label="xnatdrop push")  # fmt: skip
        memory.plot(px, [_mb(s["push"]["curl"]["sandbox_peak_kb"]) for s in pushed], ":",
                    color="C3", marker="s", label="sandbox XNAT (server)")  # fmt: skip
    memory.axhline(200, color="red", linewidth=0.8, label="target: 200 MB")
    for axis in (times, memory):
        axis.set_xscale("log")
        axis.set_xlabel(x_label)
        axis.grid(True, which="both", alpha=0.3)
    times.set_yscale("log")
    times.set_ylabel("seconds (log)")
    times.set_title("time against size")
    memory.set_ylabel("peak memory, MB (VmHWM)")
    memory.set_title("peak memory against size")
    memory.set_ylim(bottom=0)
    times.legend(fontsize=7)
    memory.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _ratio_plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Each ratio of the run against its target, as (measured / target) oriented so that ≥ 1
    is met."""
    figure, axis = plt.subplots(figsize=(11, 0.42 * len(rows) + 1.5))
    positions = range(len(rows))
    values = [row["score"] for row in rows]
    colors = ["C2" if value >= 1 else "C3" for value in values]
    axis.barh(positions, values, color=colors)  # positions, not labels: labels may repeat
    axis.set_yticks(positions, [row["name"] for row in rows])
    axis.set_xlim(min(min(values), 0.5) / 2, max(max(values), 2) * 8)
    axis.axvline(1, color="black", linewidth=1)
    axis.set_xscale("log")
    axis.set_xlabel("measured ÷ target (≥ 1: target met), log scale")
    axis.invert_yaxis()
    for y, row in enumerate(rows):
        axis.text(row["score"], y, f"  {row['text']}", va="center", fontsize=7)
    axis.tick_params(axis="y", labelsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _scores(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One bar per ratio (at the largest step measured): measured, target, score ≥ 1 = met."""
    scores = []

    def add(name: str, value: float, target: float, higher_is_better: bool, text: str) -> None:
        if math.isnan(value):  # not measured (a push whose log did not say)
            return
        score = value / target if higher_is_better else target / value
        scores.append({"name": name, "score": score, "text": text})

    steps = _series_rows(results.get("size_series", []))
    files = _series_rows(results.get("files_series", []))
    for group in (steps, files):
        if not group:
            continue
        last = group[-1]
        r = last["client"]["ratios"]
        add(f"check / cold read ({last['label']})", r["check / cold 64 KiB read"], 0.5, True,
            f"{r['check / cold 64 KiB read']:.2f}× (target ≥ 0.5×)")  # fmt: skip
        add(f"check / dcmread ({last['label']})", r["check / dcmread"], 5, True,
            f"{r['check / dcmread']:.1f}× (target ≥ 5×)")  # fmt: skip
        add(f"pack+send / read+MD5 ({last['label']})", r["pack+send / read+MD5"], 0.8, True,
            f"{r['pack+send / read+MD5']:.2f}× (target ≥ 0.8×)")  # fmt: skip
    pushes = [s for s in results.get("size_series", []) if s.get("push")]
    if pushes:
        last = pushes[-1]
        r = last["push"]["ratios"]
        requests = r[REQUESTS]
        add(f"push's XNAT requests / curl ({last['label']})", requests, 1.1, False,
            f"{requests:.2f}× curl's time (target ≤ 1.1×)")  # fmt: skip
        whole = r["push / curl (time)"]
        add(f"push time / curl ({last['label']})", whole, 1.1, False,
            f"{whole:.2f}× curl's time, the whole job (target ≤ 1.1×)")  # fmt: skip
        if "xnatpy / push (time)" in r:
            add(f"xnatpy time / push ({last['label']})", r["xnatpy / push (time)"], 2, True,
                f"{r['xnatpy / push (time)']:.2f}× (target ≥ 2×)")  # fmt: skip
        ingest = r["sandbox ingest / disk write (N files)"]
        add(f"sandbox ingest / disk write, N files ({last['label']})", ingest, 0.5, True,
            f"{ingest:.3f}× (target ≥ 0.5×; issue 13 point 5)")  # fmt: skip
    for group in (steps, files):
        if group:
            peak = max(_mb(s["client"]["check"]["peak_kb"]) for s in group)
            add(f"check peak memory ({group[-1]['label']})", peak, 200, False,
                f"{peak:.0f} MB (target < 200 MB)")  # fmt: skip
    if pushes:
        peak = max(_mb(s["push"]["xnatdrop"]["peak_kb"]) for s in pushes)
        add("push peak memory", peak, 200, False, f"{peak:.0f} MB (target < 200 MB)")
    if results.get("idle"):
        pct = results["idle"]["core_percent"]
        add("daemon idle CPU", pct, 1.0, False, f"{pct:.3f} % of a core (target < 1 %)")
    if results.get("settle"):
        seen: dict[float, int] = {}
        for t in results["settle"]["trials"]:
            n = seen[t["quiet"]] = seen.get(t["quiet"], 0) + 1
            limit = t["quiet"] + t["poll"]
            add(f"settle latency, quiet {t['quiet']:g} s, trial {n}", t["latency"], limit, False,
                f"{t['latency']:.1f} s (target ≤ {limit:.1f} s)")  # fmt: skip
    if results.get("share"):
        r = results["share"]["ratios"]["share check / parallel read (time)"]
        add("1 ms share: check / parallel read", r, 2, False, f"{r:.1f}× the time (target ≤ 2×)")
    if results.get("cstore"):
        r = results["cstore"]["ratios"]["C-STORE / storescu"]
        add("C-STORE / storescu", r, 0.8, True, f"{r:.2f}× (target ≥ 0.8×)")
    return scores


def _share_plot(share: dict[str, Any], path: Path) -> None:
    names = [
        ("check", f"xnatdrop check ({share['cores']} workers)"),
        ("read_parallel", f"parallel 64 KiB read ({share['parallel']} threads)"),
        ("read_cores", f"64 KiB read ({share['cores']} threads)"),
        ("scan", "settle scan: full fingerprint"),
        ("stat_parallel", f"parallel stat ({share['parallel']} threads)"),
    ]
    figure, axis = plt.subplots(figsize=(9, 3.8))
    labels = [label for _, label in names] + ["settle scan: settled folder (shallow)"]
    values = [share[key]["seconds"] for key, _ in names] + [share["scan"]["shallow_first"]]
    axis.barh(labels, values, color=["C0", "C7", "C7", "C1", "C7", "C1"])
    axis.set_xscale("log")
    axis.set_xlabel(
        f"seconds for {share['files']} files on a share adding {share['delay_ms']:g} ms per "
        "operation (log)"
    )
    axis.invert_yaxis()
    for y, value in enumerate(values):
        axis.text(value, y, f"  {value:.2f} s", va="center", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _settle_plot(settle: dict[str, Any], path: Path) -> None:
    figure, axis = plt.subplots(figsize=(6, 4))
    quiet = sorted({t["quiet"] for t in settle["trials"]})
    axis.plot(quiet, quiet, ":", color="gray", label="quiet_seconds")
    axis.plot(quiet, [q + q / 3 for q in quiet], "--", color="red",
              label="target: quiet_seconds + one poll")  # fmt: skip
    axis.plot([t["quiet"] for t in settle["trials"]], [t["latency"] for t in settle["trials"]],
              "o", color="C0", label="measured: last byte → push starts")  # fmt: skip
    axis.set_xlabel("settle.quiet_seconds")
    axis.set_ylabel("seconds")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plots(results: dict[str, Any], folder: Path) -> list[tuple[str, str]]:
    """Write the PNGs into `folder`; (file name, caption) of each."""
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    if _series_rows(results.get("size_series", [])):
        _scaling_plot(results["size_series"], "gb", "session size, GB (log)",
                      folder / "scaling-size.png")  # fmt: skip
        made.append(("scaling-size.png", "Time and peak memory against session size"))
    if _series_rows(results.get("files_series", [])):
        _scaling_plot(results["files_series"], "count", "files in the session (log)",
                      folder / "scaling-files.png")  # fmt: skip
        made.append(("scaling-files.png", "Time and peak memory against the number of files"))
    scores = _scores(results)
    if scores:
        _ratio_plot(scores, folder / "targets.png")
        made.append(("targets.png", "Every ratio of this run against its target"))
    if results.get("share"):
        _share_plot(results["share"], folder / "share.png")
        made.append(("share.png", "The check and the settle scans on a 1 ms share"))
    if results.get("settle"):
        _settle_plot(results["settle"], folder / "settle.png")
        made.append(("settle.png", "Settle latency against quiet_seconds"))
    return made


# -- the markdown ----------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _client_rows(series: list[dict[str, Any]], x: str) -> list[list[str]]:
    rows = []
    for s in _series_rows(series):
        c = s["client"]
        rows.append(
            [
                s["label"],
                f"{s['count']:,}",
                f"{s['bytes'] / 1e9:.2f}",
                f"{c['check']['files_per_s']:,.0f}",
                f"{c['read64k']['files_per_s']:,.0f}",
                f"{c['dcmread']['files_per_s']:,.0f}",
                f"**{c['ratios']['check / cold 64 KiB read']:.2f}×** / "
                f"**{c['ratios']['check / dcmread']:.1f}×**",
                f"{c['pack_send']['mb_per_s']:,.0f}",
                f"{c['read_md5']['mb_per_s']:,.0f}",
                f"**{c['ratios']['pack+send / read+MD5']:.2f}×**",
                f"{_mb(c['check']['peak_kb']):.0f} (+{_mb(c['check']['children_peak_kb']):.0f})",
                f"{_mb(c['pack_send']['peak_kb']):.0f}",
            ]
        )
    return rows


CLIENT_HEADER = [
    "step", "files", "GB", "check files/s", "cold 64 KiB read files/s", "dcmread files/s",
    "check ÷ read / ÷ dcmread", "pack+send MB/s", "read+MD5 MB/s", "pack+send ÷ read+MD5",
    "check peak MB (+ worker)", "pack+send peak MB",
]  # fmt: skip


def markdown(results: dict[str, Any], images: list[tuple[str, str]], image_dir: str) -> str:
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `{results['command']}` on {results['started']} "
        f"({'quick steps' if results['quick'] else 'full series'}; the run took "
        f"{results['seconds'] / 60:.1f} min). Every figure is a ratio to a baseline measured in "
        "the same run on the same files; targets are those of issue 13. Regenerate with the "
        "same command; raw figures are in "
        f"[`{image_dir}/results.json`]({image_dir}/results.json).",
        "",
        "## Machine",
        "",
    ]
    load_before = ", ".join(f"{v:.2f}" for v in results["load_before"])
    load_after = ", ".join(f"{v:.2f}" for v in results["load_after"])
    lines += _table(
        ["", ""],
        [[k, v] for k, v in m.items()]
        + [["load average before (1, 5, 15 min)", load_before], ["load average after", load_after]],
    )
    lines += ["## Targets", ""]
    lines += _table(
        ["target", "measured in this run", "verdict"],
        [[r["target"], r["measured"], r["verdict"]] for r in targets(results)],
    )
    for name, caption in images:
        if name == "targets.png":
            lines += [f"![{caption}]({image_dir}/{name})", ""]
    lines += _method(results)
    lines += _sections(results, images, image_dir)
    return "\n".join(lines).rstrip() + "\n"


def _method(results: dict[str, Any]) -> list[str]:
    cores = results["cores"]
    return [
        "## How it was measured",
        "",
        "- **Workloads** are cloned from the real series in `../shared/dicom` "
        "(`bench/harness/workload.py`): GE SIGNA Premier classic MR files (about 44 KB each) "
        "for the file-count series, GE plus Siemens XA30 enhanced multi-frame files for the "
        "size series. A session keeps one folder per source series (8 in the file-count series, "
        "17 in the size series; a real session has 10 to 40) and fills each with copies of its "
        "files, each copy with a fresh SOP instance UID and the series' next InstanceNumber, as "
        "a long fMRI or diffusion series grows; every session has fresh study and series UIDs. "
        "They live in a temporary folder that is deleted at the end. (Until stop 32 each copy "
        "was a series of its own: about 150 series at 0.5 GB and 2,400 at 8 GB, whose per-scan "
        "reads in the push weighed far more than at a site.)",
        f"- **Cores**: {cores}. The check runs {cores} worker processes; the 64 KiB read and "
        f"read+MD5 baselines run {cores} threads; dcmread runs {cores} worker processes; "
        "pack+send uses xnatdrop's own reader threads (2) and one sending thread.",
        "- **Cold** means each file's page cache was dropped first with "
        "`posix_fadvise(POSIX_FADV_DONTNEED)` (no root needed, the rest of the machine's cache "
        "left alone; inodes and directory entries stay cached). The files are synced after "
        "they are written, so no page is dirty.",
        "- **Peak memory** is the process's VmHWM (its resident-set high-water mark), read by "
        "the process itself as it ends; for process pools the largest worker's is given too "
        "(`getrusage(RUSAGE_CHILDREN)`). Each measurement runs in its own child process "
        "(`bench/harness/probe.py`).",
        "- **Best of three rounds**: every client measurement runs in three interleaved "
        "rounds, each from a cold cache, and keeps its least time (every round's time is in "
        "results.json as `round_seconds`) and its highest peak memory; dcmread, the slow "
        "baseline, repeats only where its first round took under 10 s. A disturbance only "
        "slows a measurement; interleaving gives both sides of a ratio the same chances. Until "
        "stop 33 only workloads whose measurements took under 5 s in all were repeated.",
        "- **Null sink**: a loopback HTTP server process that takes every body off the socket "
        "with `os.splice` into /dev/null (no copy of its own; about 0.07-0.1 ns a byte of CPU, "
        "`sink_cpu_seconds` in results.json, which shares the cores with the client during "
        "pack+send only and is not in its `cpu_seconds`) and answers with the "
        "byte count (`bench/harness/nullsink.py`). pack+send streams `pack.Body` through "
        "requests into it, as the import step does (without XNAT's login round trips). Its "
        "clock covers the plan (a stat of every file), the upload and the manifest saved with "
        "fsync; the file list as the check hands it on (`FileEntry` per file) is made before. "
        "Both pack+send and read+MD5 read the same files, cold, and report their CPU time "
        "(`cpu_seconds` in results.json). read+MD5 reads as pack does: each thread has the "
        "kernel read its next 32 files ahead (`POSIX_FADV_WILLNEED`), so the baseline is the "
        "best read we know, not a naive one.",
        "- **Push end to end**: each client into its own fresh sandbox XNAT (a separate "
        "process, stock settings: site anonymisation on, checksums on). Every client does the "
        "same XNAT operations: **curl** POSTs the prebuilt zip (the bytes xnatdrop streams) to "
        "the import service into the prearchive, then POSTs `/data/services/archive` for the "
        "session the import named, as a person does by hand; **xnatpy** runs "
        "`services.import_dir` (it zips the folder itself, then uploads into the prearchive), "
        "then `.archive()` of the session it returns; **xnatdrop push** does the same two "
        "requests and *also* checks the folder first and verifies after each (catalogs read "
        "back, one file per scan downloaded and its pixel data compared), which the peers do "
        'not. "push / curl" compares whole jobs, "its two requests" the same two XNAT requests '
        "(xnatdrop's from its first byte sent to XNAT's answer, and its archive request), "
        '"curl import only" is curl\'s first request alone. Each client starts **cold**: '
        "curl's zip, or the folder's files for xnatpy and xnatdrop, dropped from the page cache "
        "just before it (until stop 30 curl read its zip from memory, at 8 GB the others "
        "mostly from disk). curl and xnatdrop run in up to three **interleaved rounds** (curl "
        "first, then xnatdrop first, then curl first), each into a fresh sandbox, and each keeps "
        "its least time, as many rounds as the disk holds with every sandbox kept until the "
        "step ends (the table says how many; results.json keeps each round as `round_seconds` "
        "and the push's two requests as `requests_seconds_each`); the push's peak memory is "
        "the highest of its rounds. xnatpy runs once. Until stop 33 each ran once.",
        "- **Sandbox ingest** is curl's import request alone: curl streams the prebuilt zip "
        "at little CPU of its own (about 0.3 s for 500 MB), so its rate is the sandbox's; a "
        "child such as curl is timed from its start to a blocking wait for its exit (until "
        "stop 35 a polling wait added 0-50 ms to each) "
        "(body read as it arrives, as XNAT's ZipInputStream reads it, "
        "every entry's CRC checked and stored in the prearchive, the site script applied; no "
        "MD5: XNAT computes the catalog digests at archive). Its "
        "baseline, **disk write (N files)**, writes the same zip's entries as N files on the "
        "same disk, each opened, written and closed, with the sandbox's file names, folder "
        "depth and sizes (`push.disk_write_files`): writing the same bytes the way an importer "
        "that stores N files must. Beside it, for context: **one stream**, the zip copied to "
        "one file (the "
        "disk's sequential rate, mostly the page cache), and the **store floor**, the N files "
        "with an MD5 of each entry, read from the zip in one pass, in Python on one thread "
        "(`push.store_floor`): the least an importer keeping files and checksums does; one "
        "core's MD5 (about 0.6 GB/s) caps it. Every timed writer of a push step (the N-file "
        "baseline, the store floor, curl's, xnatpy's and xnatdrop's imports) creates its files "
        "in the same state of the file system: nothing is deleted between them, the step waits "
        "until the last bulk deletion is six minutes old (the run's start counts as one), and "
        "before each the step's earlier output is written out and dropped from the page cache, "
        "so that each finds the same free memory (`bench/harness/deletions.py`: ext4 without a "
        "journal searches past recently deleted inodes on every file it creates, for six "
        "minutes once the writer has dirtied their inode table block; `push.release`). A full "
        "run also stops the VM's free page reporting and touches the free memory once, so "
        "that no writer lands in pages the host has taken back (the machine table says what "
        "was done; `bench/harness/hostmemory.py`). The ingest ratio is the **best of three** for "
        "both sides, interleaved (N-file write, import; import, N-file write; then the step's "
        "own N-file write ... import; the extra pairs kept until the step ends where the disk "
        "has room, else removed and their deletion waited out; the pairs' imports read the zip "
        "from memory, curl's job reads it cold, so that one is rarely the best): other "
        "processes' CPU "
        "and freed inodes only ever slow a writer, so each side's least time is its least "
        "disturbed one; every run is in results.json (`mb_per_s_each`).",
        "- **No fsync** in any of them: the sandbox does not fsync what it stores and neither "
        "does XNAT (its Tomcat writes files with `FileOutputStream`s it closes, never syncs), "
        "so the rates are to the page cache, for every column. The flush after each ingest "
        "writer (`os.sync`, timed apart) is kept too, and the ingest ratio is also given "
        '"until on disk" (both sides\' time with their flush), in results.json.',
        "- **Share**: a FUSE passthrough that sleeps 1 ms per lookup, getattr, listing, open "
        "and read (`bench/harness/latencyfs.py`, mfusepy over libfuse3; names and attributes "
        "cached 1 s like an SMB client, data never), chosen over NFS/SMB with `tc netem` "
        "because it needs no file server daemons and adds exactly the delay it says.",
        "",
    ]


def _rounds(side: dict[str, Any]) -> str:
    """The seconds of every round ("; best of N: a / b / c s") where there was more than one."""
    each = side.get("round_seconds", [])
    if len(each) < 2:
        return ""
    return f"; best of {len(each)}: {' / '.join(f'{v:.1f}' for v in each)} s"


def _push_row(step: dict[str, Any]) -> list[str]:
    p = step["push"]
    ratios = p["ratios"]
    drop = p["xnatdrop"]
    steps = drop["steps"]
    curl = p["curl"]
    xnatpy = (
        f"{p['xnatpy']['seconds']:.1f} (import {p['xnatpy']['import_seconds']:.1f}, archive "
        f"{p['xnatpy']['archive_seconds']:.1f}; **{ratios['xnatpy / push (time)']:.2f}×** push)"
        if "xnatpy" in p
        else "not run"
    )
    split = (
        f"import {steps.get('import', 0):.1f} (sending {drop['send_seconds'] or 0:.1f}, "
        f"server {drop['server_wait_seconds'] or 0:.1f}); check {steps.get('check', 0):.1f}, "
        f"verify {steps.get('verify', 0):.1f}, archive and verify {steps.get('archive', 0):.1f}"
    )
    if drop.get("archive_request_seconds") is not None:
        split += f" (archive request {drop['archive_request_seconds']:.1f})"
    if drop.get("outside_steps_seconds") is not None:
        split += f"; start-up and the rest {drop['outside_steps_seconds']:.1f}"
    files_each = p["disk_write_files"].get("mb_per_s_each", [])
    ingest_each = p.get("ingest", {}).get("mb_per_s_each", [])
    synced = ratios.get("sandbox ingest / disk write (N files), until on disk")
    return [
        step["label"],
        f"{p['disk_write_files']['mb_per_s']:,.0f} ({p['disk_write']['mb_per_s']:,.0f})"
        + (f"; runs {' / '.join(f'{v:,.0f}' for v in files_each)}" if files_each else ""),
        f"{p['store_floor']['mb_per_s']:,.0f}",
        f"{curl['import_mb_per_s']:.1f} (**{ratios['sandbox ingest / disk write (N files)']:.2f}×**"
        f" N files; {ratios['sandbox ingest / disk write (one stream)']:.3f}× one stream; "
        f"{ratios['sandbox ingest / store floor']:.2f}× floor"
        + (f"; {synced:.2f}× N files until on disk" if synced is not None else "")
        + ")"
        + (f"; runs {' / '.join(f'{v:,.0f}' for v in ingest_each)}" if ingest_each else ""),
        f"{curl['seconds']:.1f} (import {curl['import_seconds']:.1f}, archive "
        f"{curl['archive_seconds']:.1f})" + _rounds(curl),
        f"{drop['seconds']:.1f} (**{ratios['push / curl (time)']:.2f}×** curl; "
        f"{ratios['push / curl import only (time)']:.2f}× curl import only; its two requests "
        f"**{ratios[REQUESTS]:.2f}×** curl's)" + _rounds(drop),
        xnatpy,
        split,
        f"{_mb(drop['peak_kb']):.0f}",
        f"{_mb(curl['sandbox_peak_kb']):.0f}",
    ]


def _sections(results: dict[str, Any], images: list[tuple[str, str]], image_dir: str) -> list[str]:
    lines: list[str] = []
    shown = dict(images)

    def image(name: str) -> None:
        if name in shown:
            lines.extend([f"![{shown[name]}]({image_dir}/{name})", ""])

    if _series_rows(results.get("size_series", [])):
        lines += ["## Check and the client's own cost, by session size", ""]
        lines += _table(CLIENT_HEADER, _client_rows(results["size_series"], "gb"))
        image("scaling-size.png")
    if _series_rows(results.get("files_series", [])):
        lines += ["## Check and the client's own cost, by number of files", ""]
        lines += _table(CLIENT_HEADER, _client_rows(results["files_series"], "count"))
        image("scaling-files.png")
    pushes = [s for s in results.get("size_series", []) if s.get("push")]
    if pushes:
        lines += [
            "## Push end to end, against curl and xnatpy, with the sandbox's receive rate",
            "",
            "Each client imports and archives (curl and xnatpy as a person would by hand; "
            "xnatdrop also checks and verifies). The sandbox's ingest is curl's import alone, "
            "against writing the same entries to disk as N files.",
            "",
        ]
        rows = [_push_row(s) for s in pushes]
        lines += _table(
            ["step", "disk write MB/s, N files, best of 3 (one stream)", "store floor MB/s",
             "sandbox ingest MB/s (curl import; best of 3)", "curl s", "xnatdrop push s",
             "xnatpy s", "push split, s", "push peak MB", "sandbox peak MB"],
            rows,
        )  # fmt: skip
        for skipped in (results.get("push_skipped"), results.get("xnatpy_skipped")):
            if skipped:
                lines += [skipped, ""]
    share = results.get("share")
    if share:
        lines += [
            f"## On a share adding {share['delay_ms']:g} ms per file operation",
            "",
            f"{share['files']:,} files; one `stat` took {share['op_ms']:.2f} ms on average on one "
            "thread (the latency the share really added). Each figure starts after the share's "
            "name and attribute cache expired.",
            "",
        ]
        lines += _table(
            ["what", "on the share, s", "local disk, s"],
            [
                [f"xnatdrop check ({share['cores']} workers)", f"{share['check']['seconds']:.2f}",
                 f"{share['local_check']['seconds']:.2f} (cold)"],
                [f"parallel 64 KiB read ({share['parallel']} threads)",
                 f"{share['read_parallel']['seconds']:.2f}", ""],
                [f"64 KiB read ({share['cores']} threads)", f"{share['read_cores']['seconds']:.2f}",
                 ""],
                ["settle scan: full fingerprint (a folder still settling)",
                 f"{share['scan']['seconds']:.2f}", f"{share['local_scan']['seconds']:.3f}"],
                ["settle scan: settled folder, shallow signature (every poll)",
                 f"{share['scan']['shallow_first']:.3f}",
                 f"{share['local_scan']['shallow_first']:.4f}"],
                [f"parallel stat ({share['parallel']} threads)",
                 f"{share['stat_parallel']['seconds']:.2f}", ""],
                ["**check ÷ parallel read** (time)",
                 f"**{share['ratios']['share check / parallel read (time)']:.1f}×**", ""],
                ["**full scan ÷ parallel stat** (time)",
                 f"**{share['ratios']['share scan / parallel stat (time)']:.1f}×**", ""],
            ],
        )  # fmt: skip
        image("share.png")
    cstore = results.get("cstore")
    if cstore:
        lines += ["## C-STORE against storescu, same files, same Orthanc", ""]
        rates = cstore["inst_per_s"]
        lines += [
            f"{cstore['instances']} instances in {cstore['series']} series "
            f"({cstore['megabytes']:.0f} MB), one association per series, "
            f"median of {cstore['repeat']} run(s) each: xnatdrop {rates['xnatdrop']:.1f} inst/s, "
            f"storescu {rates['storescu']:.1f} inst/s: "
            f"**{cstore['ratios']['C-STORE / storescu']:.2f}×**.",
            "",
        ]
    idle = results.get("idle")
    if idle:
        lines += [
            "## Idle cost of the daemon",
            "",
            f"{idle['folders']:,} settled folders holding {idle['files']:,} files, upload window "
            f"closed: {idle['cpu_seconds']:.2f} s CPU over {idle['measured_seconds']:.0f} s "
            f"with a scan every {idle['poll_seconds']:g} s = {idle['per_scan_ms']:.0f} ms per "
            f"scan, **{idle['core_percent']:.3f} % of one core**; at the default interval (a "
            f"scan every 100 s) {idle['default_core_percent']:.4f} %.",
            "",
        ]
    settle = results.get("settle")
    if settle:
        lines += ["## Settle latency", ""]
        lines += _table(
            ["quiet_seconds", "poll, s", "last byte → push starts, s", "target, s"],
            [
                [f"{t['quiet']:g}", f"{t['poll']:.2f}", f"{t['latency']:.2f}",
                 f"≤ {t['quiet'] + t['poll']:.2f}"]
                for t in settle["trials"]
            ],
        )  # fmt: skip
        image("settle.png")
    return lines


def write(results: dict[str, Any], out: Path) -> Path:
    """Write `out`/benchmarks.md, `out`/benchmarks/*.png and results.json; the markdown's path."""
    image_dir = out / "benchmarks"
    images = plots(results, image_dir)
    (image_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    target = out / "benchmarks.md"
    target.write_text(markdown(results, images, "benchmarks"), encoding="utf-8")
    return target
