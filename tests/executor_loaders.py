"""Model loaders that executor workers import by name (they must live in an importable module).

``hanging_loader``: the first worker to call it (while ``$ICL_LENS_TEST_HANG_FILE`` names a file
that does not exist yet) writes its pid into that file and hangs, so a test can kill it mid-cell;
every other call loads the tiny model like ``sweep_worker.loader``.
"""

from __future__ import annotations

import os
import time

from sweep_worker import loader


def hanging_loader(name, **kwargs):
    path = os.environ.get("ICL_LENS_TEST_HANG_FILE")
    if path:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            time.sleep(600)
    return loader(name, **kwargs)
