"""Host-device transfer share of end-to-end time, where the agent timed the transfer
(``extra.transfer_ms`` beside ``extra.compute_ms``); rows without both state nothing."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..findings import TRANSFER, Finding
from ..rows import Meas, latest_ok


def transfer_share(meas: list[Meas]) -> list[Finding]:
    per_device: dict[str, list[tuple[float, Meas]]] = defaultdict(list)
    for m in latest_ok(meas):
        if m.transfer_ms is not None and m.compute_ms is not None:
            per_device[m["device"]].append((m.transfer_ms / (m.transfer_ms + m.compute_ms), m))
    found = []
    for dev, items in sorted(per_device.items()):
        shares = np.array([s for s, _ in items])
        accel = any(m.is_accelerator for _, m in items)
        kind = "accelerator" if accel else "CPU: the copies stay in host memory"
        spread = f"; {100 * shares.min():.0f} % to {100 * shares.max():.0f} %" if len(items) > 1 else ""
        text = (f"On {dev} ({kind}), host-device transfer takes {100 * float(np.median(shares)):.0f} % of "
                f"end-to-end time (median over {len(items)} build(s){spread}).")
        found.append(Finding(TRANSFER, text, sorted(m.id for _, m in items), [], dev, False))
    return found
