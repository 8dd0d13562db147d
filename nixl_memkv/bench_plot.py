"""`memkv bench --plot FILE.png`: the bench's figures as a chart, put of new
keys and get per value size for MemKV and each peer, with the raw loopback
socket measured in the same run drawn as the ceiling."""

from __future__ import annotations

import statistics

from .config import format_size


def _series(doc: dict) -> tuple[list[int], dict[str, dict[int, tuple[float, float]]], float]:
    """{store title: {size: (put new keys GB/s, get GB/s)}}, and the raw figure
    those rows are paired with. With peers, every store is the peers table's
    (the same loop for all); without, MemKV's one-thread rows."""
    peer_rows = doc.get("peers", {}).get("results") or []
    if peer_rows:
        rows = peer_rows
        raw = statistics.median(r["raw_gbps"] for r in rows)
        titles = [r["title"] for r in rows]
    else:
        rows = [dict(r, title="MemKV") for r in doc["results"] if r["threads"] == 1]
        raw = doc["raw_loopback_gbps"]
        titles = ["MemKV"]
    sizes = sorted({r["size"] for r in rows})
    series: dict[str, dict[int, tuple[float, float]]] = {t: {} for t in dict.fromkeys(titles)}
    for r in rows:
        series[r["title"]][r["size"]] = (r["put_new_gbps"], r["get_gbps"])
    return sizes, series, raw


def plot(doc: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    sizes, series, raw = _series(doc)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True)
    width = 0.8 / max(1, len(series))
    top = max([raw] + [v for by_size in series.values() for pair in by_size.values() for v in pair]) * 1.2
    for ax, which, label in ((axes[0], 0, "put of new keys"), (axes[1], 1, "get")):
        for i, (title, by_size) in enumerate(series.items()):
            xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(sizes))]
            ys = [by_size.get(sz, (0.0, 0.0))[which] for sz in sizes]
            bars = ax.bar(xs, ys, width, label=title)
            ax.bar_label(bars, labels=[f"{y / raw:.2f}x" for y in ys], fontsize=7, padding=1)
        ax.axhline(raw, color="black", linestyle="--", linewidth=1, label=f"raw loopback socket, {raw:.2f} GB/s")
        ax.set_xticks(range(len(sizes)), [format_size(sz) for sz in sizes])
        ax.set_xlabel("value size")
        ax.set_title(label + " (1 client thread)")
        ax.set_ylim(0, top or 1.0)
    axes[0].set_ylabel("GB/s (labels: ratio of the raw socket line)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8, frameon=False)
    fig.suptitle(f"memkv bench, {doc['node']} node", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))  # room for the legend below the panels
    fig.savefig(path, dpi=90)
    plt.close(fig)
