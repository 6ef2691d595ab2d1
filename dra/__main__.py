from __future__ import annotations

import sys

from dra.main import main

sys.exit(main())
