"""HTTP/1.1 dissection throughput: ``podshark dissect`` against tshark on the same capture, in the same run.

tshark is the yardstick because both tools are measured on this machine, at this moment, on these bytes:
an absolute packets/s figure means little across machines, a ratio against tshark much more. The target
from the issue is podshark at least 8x tshark's packets per second.

Method: wall clock of whole commands (start-up included, as a user would see it), each tool gets one
untimed warm-up run whose output is counted (page cache, .pyc files, and the sanity counts), then
``runs`` timed runs with output to /dev/null, interleaved tshark / podshark so that a slow spell on the
machine hurts both; the reported figure is the median of the timed runs (the best is printed too).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import traffic
from bench.report import history_lines, keep, render_section

NAME = "http1"
TITLE = "HTTP/1.1 dissection throughput (podshark vs tshark)"
TARGET_RATIO = 8.0
REPO = Path(__file__).resolve().parent.parent

Log = Callable[[str], None]


# ------------------------------------------------------------------------------------------ machine


def machine() -> dict[str, str]:
    """What the figures depend on: CPUs, CPU model, Python and tshark versions."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")):
                model = line.split(":", 1)[1].strip()
                break
    try:
        ncpu = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        ncpu = os.cpu_count() or 0
    load = "?"
    with contextlib.suppress(OSError, IndexError):
        load = Path("/proc/loadavg").read_text().split()[0]
    return {
        "nproc": str(ncpu),
        "load": load,  # wall-clock figures are only as good as the machine is idle; say how idle it was
        "cpu": model,
        "python": platform.python_version(),
        "tshark": tshark_version(),
    }


def tshark_version() -> str:
    """e.g. "4.0.17", from the first line of ``tshark --version``."""
    try:
        out = subprocess.run(["tshark", "--version"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "not installed"
    m = re.search(r"TShark \(Wireshark\) (\S+)", out)
    return m.group(1).rstrip(".") if m else (out.splitlines() or ["unknown"])[0]


def podshark_revision() -> str:
    """The git commit measured, marked when the work tree has uncommitted changes (it usually does)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} + local changes" if dirty else head


# ------------------------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """Wall-clock seconds of each timed run, plus the children's CPU seconds (user + sys) of each."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def best(self) -> float:
        return min(self.wall)

    @property
    def ok(self) -> bool:
        return bool(self.wall) and self.error is None


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed_run(argv: list[str], timing: Timing, timeout: float = 900) -> None:
    """Run ``argv`` once with stdout to /dev/null and add its wall and CPU time to ``timing``."""
    if timing.error:
        return
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    r = subprocess.run(
        argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout, check=False
    )
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        timing.error = f"exit {r.returncode}: {_tail(r.stderr)}"
        return
    timing.wall.append(wall)
    timing.cpu.append(_children_cpu() - cpu0)


def _tail(stderr: bytes, n: int = 300) -> str:
    text = stderr.decode(errors="replace").strip().replace("\n", " // ")
    return text[-n:]


TSHARK_FIELDS = ("-T", "fields", "-e", "http.request.method", "-e", "http.response.code")


def tshark_argv(pcap: Path) -> list[str]:
    """Exactly the command named in the issue (fields mode is tshark's fastest useful output)."""
    return ["tshark", "-r", str(pcap), "-Y", "http", *TSHARK_FIELDS]


def podshark_argv(pcap: Path, json_mode: bool) -> list[str]:
    """Same interpreter as the bench, run as a module from the repo root (no install needed)."""
    return [sys.executable, "-m", "podshark", "dissect", str(pcap), *(["--json"] if json_mode else [])]


# ----------------------------------------------------------------------------------------- counting


@dataclass
class TsharkCounts:
    requests: int = 0
    responses: int = 0


@dataclass
class PodsharkCounts:
    lines: int = 0
    http: int = 0
    with_response: int = 0
    bad_lines: int = 0


def count_tshark(pcap: Path) -> TsharkCounts:
    """Untimed warm-up run of tshark; requests are lines with a method, responses lines with a code."""
    r = subprocess.run(tshark_argv(pcap), capture_output=True, text=True, check=True, timeout=900)
    counts = TsharkCounts()
    for line in r.stdout.splitlines():
        method, _, code = line.partition("\t")
        counts.requests += bool(method)
        counts.responses += bool(code.strip())
    return counts


def count_podshark(pcap: Path) -> PodsharkCounts:
    """Untimed warm-up run of ``podshark dissect --json``, streamed so huge outputs never sit in memory."""
    counts = PodsharkCounts()
    with subprocess.Popen(
        podshark_argv(pcap, json_mode=True), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if not line.strip():
                continue
            counts.lines += 1
            try:
                call = json.loads(line)
            except ValueError:
                counts.bad_lines += 1
                continue
            if call.get("protocol") == "http":
                counts.http += 1
                counts.with_response += call.get("response") is not None
        err = proc.stderr.read() if proc.stderr else b""
    if proc.returncode != 0:
        raise RuntimeError(f"podshark dissect --json failed (exit {proc.returncode}): {_tail(err)}")
    return counts


def podshark_works() -> str | None:
    """None when ``podshark dissect --json`` runs on a small fixture, else why not (one line)."""
    fixture = REPO / "fixtures" / "pcaps" / "http1__zeek_pipelined-requests.pcap"
    if not fixture.exists():
        return None  # nothing small to try; the real run will tell
    try:
        r = subprocess.run(
            podshark_argv(fixture, json_mode=True), cwd=REPO, capture_output=True, timeout=120, check=False
        )
    except subprocess.TimeoutExpired:
        return "podshark dissect timed out on a small fixture"
    if r.returncode != 0 or not r.stdout.strip():
        return f"podshark dissect --json does not work yet (exit {r.returncode}: {_tail(r.stderr, 160)})"
    return None


# -------------------------------------------------------------------------------------------- result


@dataclass
class Result:
    """Everything one run measured; rendered into BENCHMARKS.md and the stdout summary."""

    when: str
    machine: dict[str, str]
    revision: str
    capture: traffic.CaptureInfo
    runs: int
    tshark: Timing
    tshark_counts: TsharkCounts
    podshark_json: Timing | None = None
    podshark_table: Timing | None = None
    podshark_counts: PodsharkCounts | None = None
    podshark_missing: str | None = None

    def pps(self, t: Timing | None) -> float | None:
        return self.capture.packets / t.median if t and t.ok else None

    @property
    def ratio(self) -> float | None:
        """The headline: `podshark dissect FILE` (one table row per call, like tshark's one line of
        fields per message) against tshark, packets/s over packets/s, medians."""
        ours, theirs = self.pps(self.podshark_table), self.pps(self.tshark)
        return ours / theirs if ours and theirs else None

    @property
    def json_ratio(self) -> float | None:
        """The same with `--json`: full records, headers and base64 bodies, far more than tshark prints."""
        ours, theirs = self.pps(self.podshark_json), self.pps(self.tshark)
        return ours / theirs if ours and theirs else None

    @property
    def best_ratio(self) -> float | None:
        """Same ratio from the fastest runs: the least disturbed ones when the machine is shared."""
        ours, theirs = self.podshark_table, self.tshark
        return theirs.best / ours.best if ours and ours.ok and theirs.ok else None

    @property
    def cpu_ratio(self) -> float | None:
        """tshark CPU seconds / podshark CPU seconds: steadier than wall clock on a shared machine."""
        ours, theirs = self.podshark_table, self.tshark
        if not (ours and ours.ok and theirs.ok):
            return None
        mine = statistics.median(ours.cpu)
        return statistics.median(theirs.cpu) / mine if mine > 0 else None


def measure(runs: int = 3, regen: bool = False, log: Log = print) -> Result:
    """Make or reuse the capture, then time tshark and podshark on it, interleaved."""
    if shutil.which("tshark") is None:
        raise RuntimeError("tshark is not installed (apt-get install tshark)")
    cap = traffic.http1_capture(regen=regen, log=log)
    pcap = cap.pcap
    result = Result(
        when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        machine=machine(),
        revision=podshark_revision(),
        capture=cap,
        runs=runs,
        tshark=Timing(),
        tshark_counts=TsharkCounts(),
    )
    log(f"bench http1: warm-up tshark run on {pcap.name} ({cap.packets} packets)")
    result.tshark_counts = count_tshark(pcap)
    result.podshark_missing = podshark_works()
    if result.podshark_missing is None:
        log("bench http1: warm-up podshark dissect --json run (counts calls)")
        try:
            result.podshark_counts = count_podshark(pcap)
            result.podshark_json, result.podshark_table = Timing(), Timing()
        except RuntimeError as e:
            result.podshark_missing = str(e)
    if result.podshark_missing:
        log(f"bench http1: podshark not measured: {result.podshark_missing}")
    for i in range(runs):
        log(f"bench http1: timed round {i + 1}/{runs}")
        timed_run(tshark_argv(pcap), result.tshark)
        if result.podshark_json is not None:
            timed_run(podshark_argv(pcap, json_mode=True), result.podshark_json)
        if result.podshark_table is not None:
            timed_run(podshark_argv(pcap, json_mode=False), result.podshark_table)
    if result.tshark.error:
        raise RuntimeError(f"tshark failed: {result.tshark.error}")
    return result


# ------------------------------------------------------------------------------------------- render


def _n(x: int) -> str:
    return f"{x:,}"


def _pps(x: float | None) -> str:
    return f"{x:,.0f}" if x is not None else "-"


def _timing_cell(res: Result, t: Timing | None) -> str:
    if t is None:
        return "not yet measured"
    if not t.ok:
        return f"failed: {t.error}"
    cpu = statistics.median(t.cpu)
    return (
        f"{t.median:.2f} s (best {t.best:.2f} s; CPU {cpu:.2f} s) — **{_pps(res.pps(t))} packets/s**, "
        f"{res.capture.wire_bytes / t.median / 1e6:.1f} MB/s"
    )


_RATIO_RE = re.compile(r"ratio (\d+(?:\.\d+)?)x")


def history_line(res: Result, old: list[str]) -> str:
    """One line for this run, comparing its ratio with the last run that had one."""
    prev = next((float(m.group(1)) for ln in reversed(old) if (m := _RATIO_RE.search(ln))), None)
    head = f"- {res.when} ({res.revision}, {res.capture.version}): tshark {_pps(res.pps(res.tshark))} pps"
    ratio = res.ratio
    if res.podshark_json is not None and res.podshark_json.error:
        return f"{head}; podshark failed: {res.podshark_json.error[:120]}"
    if ratio is None:
        return f"{head}; podshark: not yet measured"
    line = f"{head}, podshark {_pps(res.pps(res.podshark_table))} pps, ratio {ratio:.1f}x"
    if prev:
        line += f" (previous {prev:.1f}x, {(ratio / prev - 1) * 100:+.0f}%)"
    else:
        line += " (first measurement)"
    if res.json_ratio is not None:
        line += f"; --json {res.json_ratio:.1f}x"
    return line


def render(res: Result, previous_section: str | None) -> str:
    """The markdown section (without its markers): description, table, history."""
    cap, m = res.capture, res.machine
    where = f"network namespace, loopback MTU {cap.mtu}" if cap.netns else "host loopback"
    tc = res.tshark_counts
    if res.podshark_counts:
        pc = res.podshark_counts
        calls = (
            f"podshark {_n(pc.http)} http calls ({_n(pc.with_response)} with a response; "
            f"{_n(pc.lines)} JSON lines) — tshark {_n(tc.requests)} requests, {_n(tc.responses)} responses"
        )
    else:
        calls = (
            f"tshark {_n(tc.requests)} requests, {_n(tc.responses)} responses — podshark: not yet measured"
        )
    ratio = res.ratio
    if ratio is None:
        ratio_cell = f"podshark: not yet measured ({res.podshark_missing or 'no figure'})"
    else:
        verdict = "met" if ratio >= TARGET_RATIO else "**not met**"
        ratio_cell = f"**{ratio:.1f}x** (target ≥ {TARGET_RATIO:.0f}x: {verdict})"
        if res.best_ratio is not None:
            ratio_cell += f"; best-of-{res.runs} times {res.best_ratio:.1f}x"
        if res.cpu_ratio is not None:
            ratio_cell += f"; CPU time (user+sys) {res.cpu_ratio:.1f}x"
    rows = [
        ("date", res.when),
        (
            "machine",
            f"{m['nproc']} CPUs, {m['cpu']}, Python {m['python']}, TShark {m['tshark']} "
            f"(load average {m['load']} at start)",
        ),
        ("podshark revision", res.revision),
        (
            "capture",
            f"`bench/out/{Path(cap.path).name}` ({cap.version}): nginx + wrk keep-alive HTTP/1.1, {where}; "
            f"wrk reported {_n(cap.requests_sent)} requests",
        ),
        ("packets", _n(cap.packets)),
        (
            "bytes",
            f"{_n(cap.wire_bytes)} on the wire ({cap.wire_bytes / cap.packets:.0f} B/packet); "
            f"file {_n(cap.file_bytes)}",
        ),
        ("tshark fields (`-Y http -T fields`)", _timing_cell(res, res.tshark)),
        ("podshark dissect --json", _timing_cell(res, res.podshark_json)),
        ("podshark dissect (table)", _timing_cell(res, res.podshark_table)),
        ("ratio (`podshark dissect` pps / tshark pps, medians)", ratio_cell),
        (
            "ratio with `--json` (full records with bodies)",
            "-" if res.json_ratio is None else f"{res.json_ratio:.1f}x",
        ),
        ("calls found (sanity check)", calls),
    ]
    old = history_lines(previous_section)
    history = keep(old, history_line(res, old))
    return render_section(
        f"## {NAME}: {TITLE}",
        (
            "`podshark dissect FILE > /dev/null` (a table row per call) and `podshark dissect FILE --json` "
            "against `tshark -r FILE -Y http -T fields -e http.request.method -e http.response.code "
            "> /dev/null` on the same capture in the same run. Wall clock of the whole command, "
            f"median of {res.runs} timed runs (interleaved, after one untimed warm-up run of each "
            "that also counts the output); "
            "packets/s = packets in the capture / median time. Made by `python -m bench http1`."
        ),
        rows,
        history,
    )


def summary(res: Result) -> str:
    """Plain-text summary for stdout."""
    cap = res.capture
    lines = [
        f"http1: {cap.packets:,} packets, {cap.wire_bytes:,} bytes ({cap.pcap})",
        f"  machine: {res.machine}",
    ]
    for label, t in (
        ("tshark -T fields", res.tshark),
        ("podshark --json", res.podshark_json),
        ("podshark table", res.podshark_table),
    ):
        if t is None:
            lines.append(f"  {label:17} not measured ({res.podshark_missing})")
        elif not t.ok:
            lines.append(f"  {label:17} FAILED: {t.error}")
        else:
            runs = ", ".join(f"{w:.2f}" for w in t.wall)
            lines.append(
                f"  {label:17} median {t.median:.2f} s, best {t.best:.2f} s ({runs})  "
                f"-> {_pps(res.pps(t))} packets/s"
            )
    tc = res.tshark_counts
    lines.append(f"  tshark: {tc.requests:,} requests, {tc.responses:,} responses")
    if res.podshark_counts:
        pc = res.podshark_counts
        lines.append(
            f"  podshark: {pc.http:,} http calls ({pc.with_response:,} with response), {pc.lines:,} lines"
            + (f", {pc.bad_lines} unparsable" if pc.bad_lines else "")
        )
        if pc.http != tc.requests:
            lines.append(f"  NOTE: call counts differ by {pc.http - tc.requests:+,}")
    ratio = res.ratio
    if ratio is not None:
        verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
        lines.append(f"  ratio podshark dissect/tshark: {ratio:.1f}x (target {TARGET_RATIO:.0f}x: {verdict})")
        if res.json_ratio is not None:
            lines.append(f"  ratio with --json: {res.json_ratio:.1f}x")
        if res.best_ratio is not None:
            lines.append(f"  ratio of best times: {res.best_ratio:.1f}x")
        if res.cpu_ratio is not None:
            lines.append(f"  ratio by CPU time (tshark CPU s / podshark CPU s): {res.cpu_ratio:.1f}x")
    else:
        lines.append("  ratio: podshark not yet measured")
    return "\n".join(lines)


def run(previous_section: str | None, runs: int = 3, regen: bool = False, log: Log = print) -> str:
    """Entry point used by ``python -m bench``: measure, print the summary, return the new section."""
    res = measure(runs=runs, regen=regen, log=log)
    print(summary(res), flush=True)
    return render(res, previous_section)
