"""Progress bars for the backup and restore commands: one per phase, in bytes."""

from __future__ import annotations

from tqdm import tqdm

LABELS = {"media": "copying media", "verify": "verifying", "compare": "comparing media",
          "restore": "restoring media"}


class PhaseBars:
    def __init__(self, *, disable: bool) -> None:
        self.disable = disable
        self.bars: dict[str, tqdm] = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        bar = self.bars.get(phase)
        if bar is None:
            if not total:
                return
            bar = self.bars[phase] = tqdm(total=total, unit="B", unit_scale=True,
                                          desc=LABELS.get(phase, phase), disable=self.disable)
        bar.update(done - bar.n)
        if done >= bar.total:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
