"""A PostgreSQL of our own for development, from the ``pgserver`` wheel's binaries."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("mfa_service.embedded_pg")


class EmbeddedPostgres:
    """Starts (or reuses) a cluster in ``data_dir/postgres``; ``stop()`` stops it."""

    def __init__(self, data_dir: Path) -> None:
        import pgserver  # imported here: only development needs it

        pgdata = (data_dir / "postgres").resolve()
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting embedded PostgreSQL in %s", pgdata)
        self._server: Any = pgserver.get_server(  # type: ignore[attr-defined]
            pgdata, cleanup_mode="stop"
        )
        self.url: str = self._server.get_uri()

    def stop(self) -> None:
        self._server.cleanup()
