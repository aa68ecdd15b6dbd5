"""The `serve` executor: hands a run's model groups to the project's `pov serve`, whose workers stay loaded.

The run itself (retrieval, prompts, tracking, results) stays in `pov run`; only generation moves. Results
stream back batch by batch, as from local workers. If the server dies mid-run, the cells still in flight
are not recorded, so running again resumes them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import RunAborted
from runner.generation.jobs import JobResult

if TYPE_CHECKING:
    from runner.generation.jobs import Job
    from runner.spec import Generation, Limits, Model


class ServerGone(RunAborted):
    """The server ended (or could not be reached) before the run did."""


class ServeExecutor:
    name = "serve"

    def __init__(self, state_dir: Path, limits: Limits, info: dict[str, Any] | None = None) -> None:
        from runner.generation.server_info import find_server

        self.state_dir, self.limits = state_dir, limits
        self.info = info or find_server(state_dir)
        if self.info is None:
            from runner.errors import UserError

            raise UserError(
                f"executor.kind is serve, but no `pov serve` is running for {state_dir.parent}: start one "
                "(`pov serve SPEC &`) or use executor.kind local"
            )
        self.workers: list[Any] = []
        self.restarts = 0
        self.server_pid = int(self.info["pid"])
        self._conn: Any = None

    def describe(self) -> str:
        return f"pov serve (pid {self.server_pid}): workers that stay loaded between runs"

    def check(self) -> None:
        """The server answers: its socket takes a connection and the key is right (then it is closed; the
        server serves one client at a time, and this run may have nothing to do)."""
        from multiprocessing import AuthenticationError

        from runner.errors import UserError
        from runner.generation.server_info import connect

        try:
            connect(self.info or {}).close()
        except (OSError, EOFError, AuthenticationError) as e:
            raise UserError(
                f"pov serve (pid {self.server_pid}) does not answer ({type(e).__name__}: {e}): stop it and "
                "start it again, or run with --executor local"
            ) from None

    def prestart(self, models: Mapping[str, Model], log_dir: Path | None = None) -> None:
        """Connect now: the handshake overlaps the run's retrieval instead of delaying its first batch."""
        from runner.generation.server_info import connect

        if self._conn is None:
            try:
                self._conn = connect(self.info or {})
            except (OSError, EOFError):
                self._conn = None  # run() reports it

    def run(
        self,
        groups: dict[str, tuple[Model, list[Job]]],
        params: Generation,
        on_result: Callable[[list[JobResult]], None],
    ) -> None:
        from runner.generation.server_info import absolute_model, connect

        payload = {
            key: (absolute_model(model).model_dump(mode="json"), jobs)
            for key, (model, jobs) in groups.items()
        }
        gone = (
            f"pov serve (pid {self.server_pid}) ended before the run did; the cells it had not answered are "
            "not recorded: `pov run` again resumes them"
        )
        try:
            if self._conn is None:
                self._conn = connect(self.info or {})
            self._conn.send(
                ("run", payload, params.model_dump(mode="json"), self.limits.model_dump(mode="json"))
            )
        except (OSError, EOFError) as e:
            raise ServerGone(f"cannot reach pov serve (pid {self.server_pid}): {e}") from None
        try:
            while True:
                try:
                    message = self._conn.recv()
                except (EOFError, OSError):
                    raise ServerGone(gone) from None
                if message[0] == "results":
                    on_result(list(message[1]))
                elif message[0] == "done":
                    self.restarts = int(message[1].get("restarts", 0))
                    return
                else:
                    raise ServerGone(f"pov serve (pid {self.server_pid}) failed: {message[1]}")
        finally:
            self._close()

    def shutdown(self) -> None:
        """Tell the server to abandon this run (Ctrl-C): it kills the worker in flight and keeps the rest."""
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(OSError, ValueError):
                conn.send(("stop",))
        self._close()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()
