"""The config the supervisor runs, owned by one object (supervisor process).

Every role that needs the running config (device sync, reload, status) holds this one
`RunningConfig` and reads `.config` when it needs it; only `Reloader.apply_config` replaces it, in
one step that also stamps `loaded_at`, before the rescan that selects devices for it.
"""

from __future__ import annotations

import time

from common.config import Config


class RunningConfig:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.loaded_at = time.time()  # Unix time, shown by `status`

    def replace(self, new: Config) -> Config:
        """Run `new` from now on; the config it replaces."""
        old, self.config = self.config, new
        self.loaded_at = time.time()
        return old
