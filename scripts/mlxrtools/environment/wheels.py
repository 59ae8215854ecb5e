"""A folder that keeps one built wheel of a kind, stamped with the inputs it was built from."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WheelSlot:
    folder: Path
    pattern: str  # e.g. "mlx-*.whl"
    stamp_name: str  # the file beside the wheel that records its inputs' key

    @property
    def stamp(self) -> Path:
        return self.folder / self.stamp_name

    def current(self, key: str) -> Path | None:
        """The wheel, if it is the only one and was built from inputs with this key."""
        wheels = sorted(self.folder.glob(self.pattern))
        if len(wheels) != 1 or not self.stamp.exists():
            return None
        return wheels[0] if json.loads(self.stamp.read_text()).get("key") == key else None

    def keep(self, dist: Path, key: str) -> Path:
        """Move the one wheel pip wrote into dist here, replacing the older ones."""
        built = sorted(dist.glob(self.pattern))
        if len(built) != 1:
            raise RuntimeError(f"expected one {self.pattern} in {dist}, found {len(built)}")
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.glob(self.pattern):
            old.unlink()
        target = self.folder / built[0].name
        shutil.move(built[0], target)
        self.stamp.write_text(json.dumps({"key": key, "wheel": target.name}) + "\n")
        return target
