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


def start_hanging_sweep(run, hang_file, poll: float = 0.1, timeout: float = 300):
    """Start ``run()`` (a sweep whose ``hanging_loader`` cell blocks) in a thread and wait until the
    hanging worker wrote its pid to ``hang_file``; returns the thread and the list that receives the
    exception ``run`` ends with, if any."""
    import threading
    import time

    errors: list[BaseException] = []

    def submit():
        try:
            run()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=submit)
    thread.start()
    deadline = time.time() + timeout
    while not (hang_file.exists() and hang_file.read_text()) and time.time() < deadline:
        time.sleep(poll)
    return thread, errors
