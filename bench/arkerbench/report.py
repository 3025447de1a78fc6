"""The run's outputs: a table on stdout, a JSON document and a PNG chart."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from arkerbench.goals import Goal
from arkerbench.results import Results

__all__ = ["table", "write_json", "write_png"]


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{text} {unit}".strip()


def table(results: Results, goals: list[Goal]) -> str:
    """The figures with their floors, then the goals with PASS/MISS."""
    f = results.figures()
    d = results.details()
    rows = [
        ("fork a golden", "fork_golden", "floor_ioctl_golden"),
        ("fork an empty running VM", "fork_empty_vm", "floor_ioctl_empty_vm"),
        (f"fork a VM holding {d['big_vm_bytes'] / 1e6:,.0f} MB", "fork_big", "floor_ioctl_big"),
        ("create to first command", "create_to_first_command", None),
        (f"{d['burst_vms']} creates at once, each", "burst", None),
        ("run `true` in a running VM", "run_round_trip", None),
        ("fork, disk quota", "quota_on_fork", "quota_off_fork"),
        ("fork, no quota", "quota_off_fork", None),
        ("create to first command, disk quota", "quota_on_create", "quota_off_create"),
        ("create to first command, no quota", "quota_off_create", None),
        ("create to first command, no egress", "net_off_create", None),
        (
            f"run `true`, {d['deleted_vms']} VMs being deleted",
            "probe_during_deletes",
            "probe_quiet",
        ),
        ("run `true`, quiet", "probe_quiet", None),
        ("stdin line -> its echo's event", "stream_echo", "floor_stdin_post"),
        ("floor: the stdin POST alone", "floor_stdin_post", None),
        ("floor: snapshot ioctl (golden)", "floor_ioctl_golden", None),
        ("floor: subprocess.run(['true'])", "floor_subprocess_true", None),
        ("floor: HTTP GET /healthz", "floor_http_noop", None),
    ]
    lines = [f"{'latency':<36} {'median':>10} {'p99':>10} {'x floor':>8}"]
    for label, key, floor in rows:
        ratio = f[f"{key}_median_ms"] / f[f"{floor}_median_ms"] if floor else None
        lines.append(
            f"{label:<36} {_num(f[f'{key}_median_ms'], 'ms'):>10} "
            f"{_num(f[f'{key}_p99_ms'], 'ms'):>10} {_num(ratio):>8}"
        )
    lines.append(f"{d['burst_vms']} creates at once, wall: {_num(f['burst_wall_ms'], 'ms')}")
    lines.append(
        f"cost of a disk quota (with / without, same run): fork "
        f"{f['quota_cost_fork_ratio']:.2f}x, create to first command "
        f"{f['quota_cost_create_ratio']:.2f}x; of a VM's network: create to first command "
        f"{f['network_cost_create_ratio']:.2f}x; of user namespaces: fork "
        f"{f['userns_cost_fork_ratio']:.2f}x, create {f['userns_cost_create_ratio']:.2f}x"
    )
    lines.append(
        f"cost of a size asked on fork (sized / unsized, same server): fork "
        f"{f['sized_cost_fork_ratio']:.2f}x ({_num(f['sized_fork_median_ms'], 'ms')}), "
        f"create to first command {f['sized_cost_create_ratio']:.2f}x "
        f"({_num(f['sized_create_median_ms'], 'ms')})"
    )
    lines.append(
        f"{d['deleted_vms']} networked VMs deleted, 64 at a time: wall "
        f"{_num(f['delete_crowd_wall_ms'], 'ms')}; another VM's `true` meanwhile "
        f"{f['delete_crowd_probe_ratio']:.2f}x its quiet median, slowest "
        f"{_num(f['probe_during_deletes_max_ms'], 'ms')}"
    )
    mib = d["file_bytes"] / 2**20
    lines.append(
        f"file of {mib:g} MiB: write {_num(f['file_write_mb_per_s'], 'MB/s')}, "
        f"read {_num(f['file_read_mb_per_s'], 'MB/s')}"
    )
    lines.append(
        f"idle running VM ({d['idle_vms']} running): {_num(d['idle_vm_cgroup_mib'], 'MiB')} "
        f"in its cgroup, {_num(d['idle_vm_host_mib'], 'MiB')} of host MemAvailable; "
        f"{f['vms_in_20_gib']:,.0f} fit in 20 GiB"
    )
    lines.append("")
    lines.append(f"{'goal':<36} {'value':>11} {'target':<30} {'floor':>10} {'x floor':>8}  result")
    for g in goals:
        lines.append(
            f"{g.name:<36} {_num(g.value, g.unit):>11} {g.target:<30} "
            f"{_num(g.floor, g.unit):>10} {_num(g.ratio):>8}  {'PASS' if g.passed else 'MISS'}"
        )
    return "\n".join(lines)


def write_json(path: Path, results: Results, goals: list[Goal], meta: dict[str, Any]) -> None:
    doc = {
        **meta,
        "figures": results.figures(),
        "details": results.details(),
        "goals": [g.as_json() for g in goals],
        "series": results.series(),
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")


def write_png(path: Path, results: Results, goals: list[Goal], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: render straight to the file
    import matplotlib.pyplot as plt

    f = results.figures()
    d = results.details()
    fig, (lat, io, mem) = plt.subplots(
        1, 3, figsize=(15, 5), gridspec_kw={"width_ratios": [3, 1.2, 1.2]}
    )
    fig.suptitle(title)

    labels = ["fork golden", "fork empty VM", "fork big VM", "create+run", "run true"]
    keys = ["fork_golden", "fork_empty_vm", "fork_big", "create_to_first_command", "run_round_trip"]
    floors = [
        f["floor_ioctl_golden_median_ms"],
        f["floor_ioctl_empty_vm_median_ms"],
        f["floor_ioctl_big_median_ms"],
        next(g.floor for g in goals if g.name.startswith("create to first")) or 0.0,
        f["floor_http_noop_median_ms"] + f["floor_subprocess_true_median_ms"],
    ]
    ys = range(len(keys))
    medians = [f[f"{k}_median_ms"] for k in keys]
    p99s = [f[f"{k}_p99_ms"] for k in keys]
    lat.barh(ys, medians, color="#3b7dd8", label="Arker median")
    lat.barh(ys, floors, height=0.35, color="#999999", label="floor (same run)")
    lat.scatter(p99s, list(ys), marker="|", s=200, color="black", label="p99")
    targets = [  # NaN: no goal of its own (matplotlib leaves it out)
        15.0,
        math.nan,
        1.5 * f["fork_empty_vm_median_ms"],
        25.0,
        3 * floors[-1],
    ]
    lat.scatter(targets, list(ys), marker="D", s=30, color="red", label="goal for the median")
    lat.set_yticks(list(ys), labels)
    lat.invert_yaxis()
    lat.set_xlabel("milliseconds")
    lat.set_title("latency through the SDK")
    lat.legend(loc="lower right", fontsize="small")

    io.bar(["write", "read"], [f["file_write_mb_per_s"], f["file_read_mb_per_s"]], color="#3b7dd8")
    io.axhline(300, color="red", linestyle="--", label="goal 300 MB/s")
    io.set_title(f"file transfer, {d['file_bytes'] / 2**20:g} MiB")
    io.set_ylabel("MB/s")
    io.legend(fontsize="small")

    mem.bar(["cgroup", "host"], [d["idle_vm_cgroup_mib"], d["idle_vm_host_mib"]], color="#3b7dd8")
    mem.axhline(4, color="red", linestyle="--", label="goal 4 MiB")
    mem.set_title(f"idle running VM ({d['idle_vms']} running)")
    mem.set_ylabel("MiB per VM")
    mem.legend(fontsize="small")

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
