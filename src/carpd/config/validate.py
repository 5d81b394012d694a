"""``python -m carpd.config.validate RESULT_FD``: the command line of an engine, validated in a
process of its own (:class:`carpd.engine.settings.Validation` runs it, on the carpd it imported).

The engine (:mod:`carpd.engine.cli`, :mod:`carpd.engine.daemon`) never loads pydantic: at start and
at each reload it runs this module (:func:`carpd.engine.settings.validated`), writes its command
line as JSON to its stdin (never in argv: it may hold the password), and reads from the pipe
``RESULT_FD`` one JSON object: ``{"ok": true, "config": <the engine's settings>}`` or
``{"ok": false, "error": TEXT}``, TEXT the problems as :class:`carpd.config.load.ConfigError`
words them.  ``--help`` is printed on stdout, which the engine shares, and no result written.
"""

from __future__ import annotations

import json
import os
import sys

from carpd.config.load import ConfigError, engine_config
from carpd.engine.settings import engine_settings_to_json


def result(argv: list[str]) -> dict[str, object]:
    try:
        config = engine_config(argv)
    except ConfigError as error:
        return {"ok": False, "error": str(error)}
    return {"ok": True, "config": json.loads(engine_settings_to_json(config))}


def main() -> int:
    fd = int(sys.argv[1])
    argv = json.load(sys.stdin)
    answer = json.dumps(result([str(a) for a in argv])).encode()
    with os.fdopen(fd, "wb") as out:
        out.write(answer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
