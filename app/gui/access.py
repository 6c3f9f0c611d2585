"""Roles in the window: who is logged in, which controls an operator may not use, the log-in dialog, the audit log.

The rules are :mod:`inspection.access`'s (the command line uses the same). :class:`AccessController` holds the
current :class:`~inspection.access.Session` (an operator session at start), and every control that needs a
permission is registered with :meth:`AccessController.gate`: for an operator it is disabled, with a tooltip that
says why and how to get the permission; for an engineer it works. Logging in checks the password on a worker
thread (scrypt takes most of a second); an engineer who leaves the window untouched for
:data:`IDLE_LOGOUT_MIN` minutes is logged out. :meth:`AccessController.audit` writes the audit log and turns a
failure into a message (the caller then does not go on).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QEvent, QObject, QTimer, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import (
    QApplication,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QVBoxLayout,
    QWidget,
)

from app.gui.tasks import TaskRunner
from inspection.access import (
    AccessError,
    AuditAction,
    AuditLog,
    Permission,
    Session,
    audit,
    engineer_login,
    logout,
    operator_session,
)

log = logging.getLogger("plmapper.gui")

IDLE_LOGOUT_MIN = 30
"""An engineer session ends after this many minutes without a key press or mouse click in the window."""

LOGIN_HINT = "Access ▸ Log in as engineer… (Ctrl+E)"

_INPUT_EVENTS = {QEvent.Type.KeyPress, QEvent.Type.MouseButtonPress, QEvent.Type.Wheel}


def denied_tip(permission: Permission) -> str:
    """The tooltip of a control an operator may not use."""
    return f"Engineers only: only an engineer may {permission.value}. Log in as engineer: {LOGIN_HINT}."


class AccessController(QObject):
    """See the module docstring. ``changed(session)`` after every log-in and log-out; ``failed(title, text)`` for
    messages."""

    changed = Signal(object)
    failed = Signal(str, str)

    def __init__(self, runner: TaskRunner, parent: QObject | None = None, log_path: Any = None) -> None:
        super().__init__(parent)
        self.runner = runner
        self.session: Session = operator_session()
        # The operator session that was current when an engineer logged in: logging out returns to it. The log-out
        # of inspection.access keeps the engineer's name in the operator session it returns, which would show the
        # engineer as the operator (and write them into the audit entries of the operator's scans).
        self._operator: Session = self.session
        self.log = AuditLog(log_path) if log_path is not None else None
        self._gated: list[tuple[Any, Permission, str, Callable[[Any, bool], None] | None]] = []
        self._idle = QTimer(self, singleShot=True, interval=IDLE_LOGOUT_MIN * 60_000)
        self._idle.timeout.connect(self._idle_logout)
        app = QApplication.instance()
        if app is not None:
            app.installEventFilter(self)

    # -- permissions -------------------------------------------------------------------------------------------------
    def allows(self, permission: Permission) -> bool:
        return self.session.allows(permission)

    def gate(
        self,
        target: QWidget | QAction,
        permission: Permission,
        tip: str = "",
        apply: Callable[[Any, bool], None] | None = None,
    ) -> None:
        """Enable ``target`` only for sessions with ``permission``; ``tip`` is its tooltip when allowed (an operator
        sees why not instead). ``apply(target, allowed)`` replaces the default ``setEnabled``."""
        entry = (target, permission, tip, apply)
        self._gated.append(entry)
        # a gated control of a dialog that is deleted (the recipe form) must not be touched at the next log-in
        target.destroyed.connect(lambda *_: self._forget(entry))
        self._apply(target, permission, tip, apply)

    def _forget(self, entry: tuple) -> None:
        self._gated = [gated for gated in self._gated if gated is not entry]

    def _apply(self, target: Any, permission: Permission, tip: str, apply) -> None:
        allowed = self.allows(permission)
        text = tip if allowed else (f"{tip}\n\n" if tip else "") + denied_tip(permission)
        if apply is not None:
            apply(target, allowed)
        else:
            target.setEnabled(allowed)
        target.setToolTip(text)
        if isinstance(target, QAction):
            target.setStatusTip(text.replace("\n\n", " "))

    def require(self, permission: Permission) -> bool:
        """True if the session may do ``permission``; otherwise a message says why (for actions reached by keys)."""
        if self.allows(permission):
            return True
        self.failed.emit("Engineers only", denied_tip(permission))
        return False

    # -- sessions ----------------------------------------------------------------------------------------------------
    def set_session(self, session: Session) -> None:
        """Make ``session`` current: re-apply every gate, start (engineer) or stop the idle log-out timer, emit
        ``changed``."""
        if not session.is_engineer:
            self._operator = session
        elif not self.session.is_engineer:
            self._operator = self.session
        self.session = session
        for target, permission, tip, apply in self._gated:
            self._apply(target, permission, tip, apply)
        if session.is_engineer:
            self._idle.start()
        else:
            self._idle.stop()
        self.changed.emit(session)

    def login(self, user: str, password: str, done: Callable[[str], None]) -> None:
        """Check the password on a worker; ``done("")`` after a log-in, ``done(reason)`` when refused."""

        def work(progress, cancel) -> Session:
            return engineer_login(user, password, log=self.log)

        def refused(title: str, text: str) -> None:
            done(text[:1].upper() + text[1:])

        def accepted(session: Session) -> None:
            self.set_session(session)
            done("")

        self.runner.start(work, "Checking the password", done=accepted, failed=refused, visible=False)

    def logout(self) -> None:
        """End the engineer session (audited) and return to the operator session from before the log-in."""
        if not self.session.is_engineer:
            return
        try:
            logout(self.session, log=self.log)
        except AccessError as error:
            log.warning("log-out not audited: %s", error)
        self.set_session(self._operator)

    def _idle_logout(self) -> None:
        if self.session.is_engineer:
            self.logout()
            self.failed.emit("Logged out", f"The engineer session ended after {IDLE_LOGOUT_MIN} minutes without input.")

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt API
        if self.session.is_engineer and event.type() in _INPUT_EVENTS:
            self._idle.start()
        return False

    # -- the audit log -----------------------------------------------------------------------------------------------
    def audit(self, action: AuditAction, details: dict[str, Any] | None = None, *, user: str | None = None) -> bool:
        """Append to the audit log; False (and a message) if it cannot be written: the caller must not go on."""
        session = self.session if user is None else Session(user=user, role=self.session.role)
        try:
            audit(action, session, details, log=self.log)
        except AccessError as error:
            self.failed.emit(
                "Audit log not written",
                f"{error}\n\nWhat to do: free disk space or fix the permissions of the station's data directory; "
                "nothing was done.",
            )
            return False
        return True

    def describe(self) -> str:
        if self.session.is_engineer:
            return f"ENGINEER: {self.session.user}"
        return f"Operator: {self.session.user}"


class LoginDialog(QDialog):
    """Name and engineer password; the password is checked off the GUI thread."""

    def __init__(self, access: AccessController, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.access = access
        self.setWindowTitle("Log in as engineer")
        self.setObjectName("loginDialog")
        self.setModal(True)
        intro = QLabel(
            "Engineers may also edit recipes, the station configuration and bin tables, and deploy models. "
            "Every change is written to the station's audit log."
        )
        intro.setWordWrap(True)
        self.user = QLineEdit(access.session.user)
        self.user.setObjectName("loginUser")
        self.password = QLineEdit()
        self.password.setObjectName("loginPassword")
        self.password.setEchoMode(QLineEdit.EchoMode.Password)
        self.message = QLabel("")
        self.message.setObjectName("loginMessage")
        self.message.setWordWrap(True)
        self.message.setStyleSheet("color:#b3261e;")
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Log in")
        self.buttons.accepted.connect(self.submit)
        self.buttons.rejected.connect(self.reject)
        form = QFormLayout()
        form.addRow("Name:", self.user)
        form.addRow("Engineer password:", self.password)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addLayout(form)
        layout.addWidget(self.message)
        layout.addWidget(self.buttons)
        self.password.setFocus()
        self.resize(460, 220)

    def submit(self) -> None:
        if not self.user.text().strip():
            self.message.setText("Enter your name: it goes into the audit log with every change you make.")
            return
        self.buttons.setEnabled(False)
        self.message.setStyleSheet("color:#5f6368;")
        self.message.setText("checking …")
        self.access.login(self.user.text(), self.password.text(), self._checked)

    def _checked(self, reason: str) -> None:
        self.buttons.setEnabled(True)
        if not reason:
            self.accept()
            return
        self.message.setStyleSheet("color:#b3261e;")
        self.message.setText(reason)
        self.password.selectAll()
        self.password.setFocus()
