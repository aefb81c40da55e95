"""PatchDPO data reports: quality maps over sample outputs, and the weights' distribution."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

MAP_ROWS = 12


def write_reports(reports: Path, rows, images: list[np.ndarray], quality: np.ndarray, ref_w: np.ndarray,
                  gen_w: np.ndarray, metrics: dict, n: int = MAP_ROWS) -> None:
    """``maps.png`` (per sample: its references, each with its weight map, the output, its patch
    quality and its weights), ``weights.png`` (histograms) and ``weights.json`` (``metrics``)."""
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "weights.json").write_text(json.dumps(metrics, indent=2) + "\n")
    pick = np.linspace(0, len(images) - 1, min(n, len(images))).round().astype(int)
    cols = 4 + 3  # up to 4 references, then output | quality | weights
    fig, axes = plt.subplots(len(pick), cols, figsize=(cols * 1.3, len(pick) * 1.45), squeeze=False)
    lo = float(gen_w.min())
    for r, i in enumerate(pick):
        refs = rows.refs[i]
        for k in range(4):
            ax = axes[r, k]
            if k < len(refs):
                ax.imshow(refs[k])
                ax.imshow(np.ma.masked_equal(ref_w[i, k], 0), cmap="Reds", vmin=0, vmax=1.3, alpha=0.55)
            ax.axis("off")
        axes[r, 4].imshow(images[i])
        axes[r, 5].imshow(images[i])
        axes[r, 5].imshow(np.ma.masked_invalid(quality[i].astype(np.float32)), cmap="viridis", vmin=0,
                          vmax=1, alpha=0.7)
        axes[r, 6].imshow(gen_w[i], cmap="RdBu", vmin=min(lo, -1e-3), vmax=1)
        for ax in axes[r, 4:]:
            ax.axis("off")
        axes[r, 4].set_title(rows.prompts[i][:28], fontsize=5)
    for c, title in ((0, "references: weight (red)"), (5, "patch quality"), (6, "weights (blue +, red -)")):
        axes[0, c].set_title(title, fontsize=6)
    fig.tight_layout()
    fig.savefig(reports / "maps.png", dpi=110)
    plt.close(fig)

    q = quality.astype(np.float32)
    on = ~np.isnan(q)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    axes[0].hist(q[on], bins=50, color="tab:green")
    if metrics.get("threshold") is not None:
        axes[0].axvline(metrics["threshold"], color="k", ls="--", label="threshold")
        axes[0].legend(fontsize=7)
    axes[0].set_title("patch quality of generated subject pixels", fontsize=8)
    axes[1].hist(gen_w[on], bins=50, color="tab:blue")
    axes[1].set_title("generated-image weights on subjects", fontsize=8)
    ref = ref_w[ref_w > 0]
    axes[2].hist(ref, bins=50, color="tab:red")
    axes[2].set_title("reference weights (1 - M_ref) on subjects", fontsize=8)
    fig.tight_layout()
    fig.savefig(reports / "weights.png", dpi=110)
    plt.close(fig)
