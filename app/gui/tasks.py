"""Work off the GUI thread: QRunnable tasks on the global QThreadPool, with progress, cancel and small signals.

A task is a plain function ``work(progress, cancel) -> result``: ``progress(fraction, message)`` reports, ``cancel``
is a :class:`threading.Event` it checks between pieces of work (raising :class:`~app.gui.mapdata.TaskCancelled`).
The result stays on the :class:`Task`; the signals carry only the task's id and short texts, and the
:class:`TaskRunner` (which lives in the GUI thread) calls the task's callbacks there.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

from app.gui.errors import describe_error
from app.gui.mapdata import TaskCancelled

log = logging.getLogger("plmapper.gui")

Work = Callable[[Callable[[float, str], None], threading.Event], Any]


class _Signals(QObject):
    progress = Signal(int, float, str)  # task id, fraction, message
    finished = Signal(int)  # task id: the result is on the task
    failed = Signal(int, str, str)  # task id, title, message (never a traceback)
    cancelled = Signal(int)


class Task(QRunnable):
    """One piece of background work; see the module docstring."""

    _ids = itertools.count(1)

    def __init__(self, work: Work, label: str) -> None:
        super().__init__()
        self.setAutoDelete(False)  # the runner keeps it until its result has been delivered
        self.id = next(self._ids)
        self.work, self.label = work, label
        self.cancel_event = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.signals = _Signals()

    def cancel(self) -> None:
        self.cancel_event.set()

    def run(self) -> None:
        def progress(fraction: float, message: str) -> None:
            self._emit(self.signals.progress, self.id, float(fraction), message)

        try:
            self.result = self.work(progress, self.cancel_event)
        except TaskCancelled:
            self._emit(self.signals.cancelled, self.id)
            return
        except BaseException as error:  # every failure becomes a message for the operator
            self.error = error
            log.debug("task %r failed", self.label, exc_info=error)
            title, text = describe_error(error)
            self._emit(self.signals.failed, self.id, title, text)
            return
        self._emit(self.signals.finished, self.id)

    @staticmethod
    def _emit(signal, *arguments) -> None:
        try:
            signal.emit(*arguments)
        except RuntimeError:  # the window is gone (quitting): nobody is waiting for this task any more
            log.debug("task outcome dropped: its receiver is gone")


class TaskRunner(QObject):
    """Starts tasks and delivers their outcome in the GUI thread.

    ``busy`` tells the main window to show (or hide) its progress indication for tasks started with
    ``visible=True``.
    """

    progress = Signal(str, float)  # label and message, fraction (of the latest visible task)
    busy = Signal(bool)
    error = Signal(str, str)  # title, message of a failed task that has no failure callback of its own

    def __init__(self, parent: QObject | None = None, pool: QThreadPool | None = None) -> None:
        super().__init__(parent)
        self.pool = pool or QThreadPool.globalInstance()
        self._tasks: dict[int, tuple[Task, Callable | None, Callable | None, bool]] = {}
        self._finally: dict[int, Callable[[], None]] = {}

    def start(
        self,
        work: Work,
        label: str,
        *,
        done: Callable[[Any], None] | None = None,
        failed: Callable[[str, str], None] | None = None,
        visible: bool = True,
        always: Callable[[], None] | None = None,
    ) -> Task:
        """Run ``work`` on the pool. ``done(result)`` or ``failed(title, message)`` is called in the GUI thread
        (without ``failed``, :attr:`error` is emitted); ``always()`` after any outcome, cancellation included."""
        task = Task(work, label)
        self._tasks[task.id] = (task, done, failed, visible)
        if always is not None:
            self._finally[task.id] = always
        task.signals.progress.connect(self._on_progress)
        task.signals.finished.connect(self._on_finished)
        task.signals.failed.connect(self._on_failed)
        task.signals.cancelled.connect(self._on_cancelled)
        if visible:
            self.busy.emit(True)
            self.progress.emit(label, 0.0)
        self.pool.start(task)
        return task

    def cancel_visible(self) -> None:
        """Cancel every task that shows progress (the Cancel button)."""
        for task, _, _, visible in self._tasks.values():
            if visible:
                task.cancel()

    def running(self, label_prefix: str = "") -> bool:
        return any(task.label.startswith(label_prefix) for task, *_ in self._tasks.values())

    def wait(self, timeout_ms: int = 30_000) -> bool:
        """Wait for every task (tests and shutdown)."""
        return self.pool.waitForDone(timeout_ms)

    def _pop(self, task_id: int):
        entry = self._tasks.pop(task_id, None)
        if entry is not None and entry[3] and not any(visible for *_, visible in self._tasks.values()):
            self.busy.emit(False)
        return entry

    def _always(self, task_id: int) -> None:
        always = self._finally.pop(task_id, None)
        if always is not None:
            always()

    def _on_progress(self, task_id: int, fraction: float, message: str) -> None:
        entry = self._tasks.get(task_id)
        if entry is not None and entry[3]:
            self.progress.emit(message or entry[0].label, fraction)

    def _on_finished(self, task_id: int) -> None:
        entry = self._pop(task_id)
        try:
            if entry is not None and entry[1] is not None:
                entry[1](entry[0].result)
        finally:
            self._always(task_id)

    def _on_failed(self, task_id: int, title: str, text: str) -> None:
        entry = self._pop(task_id)
        try:
            if entry is not None and entry[2] is not None:
                entry[2](title, text)
            elif entry is not None:
                self.error.emit(title, text)
        finally:
            self._always(task_id)

    def _on_cancelled(self, task_id: int) -> None:
        self._pop(task_id)
        self._always(task_id)


class DocumentKeeper:
    """Runs tasks that read an open scan document, and closes a document the views let go of only once no task
    reads it any more. One per window, shared by the views that show documents (Review, Compare)."""

    def __init__(self, runner: TaskRunner) -> None:
        self.runner = runner
        self._busy: dict[int, int] = {}
        self._retired: list[Any] = []

    def run(
        self,
        document: Any,
        work: Work,
        label: str,
        done: Callable[[Any], None],
        *,
        visible: bool = True,
        failed: Callable[[str, str], None] | None = None,
        after: Callable[[], None] | None = None,
        current: Callable[[], Any] | None = None,
    ) -> Task:
        """Run ``work`` keeping ``document`` open; ``done(result)`` only if ``current()`` (when given) is still
        ``document`` then; ``after()`` after any outcome."""
        key = id(document)
        self._busy[key] = self._busy.get(key, 0) + 1

        def always() -> None:
            self._busy[key] -= 1
            if self._busy[key] == 0:
                del self._busy[key]
                if any(entry is document for entry in self._retired):
                    self._retired = [entry for entry in self._retired if entry is not document]
                    document.close()
            if after is not None:
                after()

        def delivered(result: Any) -> None:
            if current is None or current() is document:
                done(result)

        return self.runner.start(work, label, done=delivered, visible=visible, always=always, failed=failed)

    def retire(self, document: Any) -> None:
        """Close ``document`` now, or when its last task ends."""
        if document is None:
            return
        if self._busy.get(id(document), 0) == 0:
            document.close()
        elif not any(entry is document for entry in self._retired):
            self._retired.append(document)
