"""The Station view: connect, instrument identities, live readouts, stage jog, laser power and emission."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.gui.access import AccessController
from app.gui.dialogs import FileKind, SettingsEditor
from app.gui.station import StationController, StationState
from drivers.interfaces import Axis
from inspection.access import Permission

STEPS_UM = (1.0, 10.0, 100.0, 1000.0, 10_000.0)
EMISSION_ON_STYLE = "background:#c62828; color:white; font-weight:bold; padding:8px; border-radius:4px;"
EMISSION_OFF_STYLE = "background:#5f6368; color:white; padding:8px; border-radius:4px;"


class JogPad(QFrame):
    """Stage jog buttons; with the keyboard focus: arrow keys move X/Y, Page Up/Down move Z."""

    jog = Signal(object, float)  # Axis, direction (+1 / −1)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setToolTip("Click here, then use the arrow keys (X/Y) and Page Up/Down (Z)")
        grid = QGridLayout(self)
        buttons = {
            (0, 1): ("Y +", Axis.Y, 1.0),
            (2, 1): ("Y −", Axis.Y, -1.0),
            (1, 0): ("X −", Axis.X, -1.0),
            (1, 2): ("X +", Axis.X, 1.0),
            (0, 4): ("Z + (up)", Axis.Z, 1.0),
            (2, 4): ("Z − (down)", Axis.Z, -1.0),
        }
        self.buttons: dict[tuple[Axis, float], QPushButton] = {}
        for (row, column), (text, axis, sign) in buttons.items():
            button = QPushButton(text)
            button.setObjectName(f"jog_{axis.value}_{'plus' if sign > 0 else 'minus'}")
            button.setAutoRepeat(False)
            button.clicked.connect(lambda _=False, a=axis, s=sign: self.jog.emit(a, s))
            button.setMinimumWidth(72)
            grid.addWidget(button, row, column)
            self.buttons[(axis, sign)] = button
        centre = QLabel("XY")
        centre.setAlignment(Qt.AlignmentFlag.AlignCenter)
        grid.addWidget(centre, 1, 1)
        grid.setColumnMinimumWidth(3, 16)

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 - Qt API
        keys = {
            Qt.Key.Key_Up: (Axis.Y, 1.0),
            Qt.Key.Key_Down: (Axis.Y, -1.0),
            Qt.Key.Key_Left: (Axis.X, -1.0),
            Qt.Key.Key_Right: (Axis.X, 1.0),
            Qt.Key.Key_PageUp: (Axis.Z, 1.0),
            Qt.Key.Key_PageDown: (Axis.Z, -1.0),
        }
        if event.key() in keys and not event.isAutoRepeat():
            self.jog.emit(*keys[Qt.Key(event.key())])
            return
        super().keyPressEvent(event)


class StationPanel(QWidget):
    """See the module docstring. ``go_to_chip_requested`` asks the window for a chip index to move to."""

    go_to_chip_requested = Signal()

    def __init__(
        self,
        controller: StationController,
        station_file: Path,
        parent: QWidget | None = None,
        access: AccessController | None = None,
    ) -> None:
        super().__init__(parent)
        self.controller = controller
        self.access = access or AccessController(None, self)
        self._build(station_file)
        controller.connected.connect(self._connected)
        controller.disconnected.connect(self._disconnected)
        controller.state.connect(self.show_state)
        controller.busy_changed.connect(lambda busy: self.activity.setText("working …" if busy else ""))
        self._set_enabled(False)

    def _build(self, station_file: Path) -> None:
        connection = QGroupBox("Station")
        row = QHBoxLayout(connection)
        self.station_file = QLineEdit(str(station_file))
        self.station_file.setObjectName("stationFile")
        browse = QPushButton("Browse…")
        browse.setObjectName("stationBrowse")
        browse.clicked.connect(self._browse)
        self.edit_station_button = QPushButton("Edit…")
        self.edit_station_button.setObjectName("editStationButton")
        self.edit_station_button.clicked.connect(self.edit_station_file)
        self.access.gate(
            self.station_file,
            Permission.EDIT_STATION,
            "The station file: which instruments, at which addresses",
            apply=lambda widget, allowed: widget.setReadOnly(not allowed),
        )
        self.access.gate(browse, Permission.EDIT_STATION, "Use another station file")
        self.access.gate(self.edit_station_button, Permission.EDIT_STATION, "Edit the station file (audited)")
        self.connect_button = QPushButton("Connect")
        self.connect_button.setObjectName("connectButton")
        self.connect_button.setToolTip("Connect to the station in the station file (Ctrl+K)")
        self.connect_button.clicked.connect(self.toggle_connection)
        self.connection_label = QLabel("not connected")
        self.connection_label.setObjectName("connectionLabel")
        self.activity = QLabel("")
        row.addWidget(QLabel("Station file:"))
        row.addWidget(self.station_file, 1)
        row.addWidget(browse)
        row.addWidget(self.edit_station_button)
        row.addWidget(self.connect_button)
        row.addWidget(self.connection_label)
        row.addWidget(self.activity)

        self.identities = QTableWidget(0, 2)
        self.identities.setObjectName("identities")
        self.identities.setHorizontalHeaderLabels(["Role", "Instrument"])
        self.identities.verticalHeader().hide()
        self.identities.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.identities.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        instruments = QGroupBox("Instruments")
        QVBoxLayout(instruments).addWidget(self.identities)

        stage = QGroupBox("Stage")
        stage_layout = QVBoxLayout(stage)
        self.position = QLabel("X —   Y —   Z —")
        self.position.setObjectName("stagePosition")
        self.position.setStyleSheet("font-family: monospace; font-size: 13pt;")
        self.step = QComboBox()
        self.step.setObjectName("jogStep")
        for step in STEPS_UM:
            self.step.addItem(f"{step:g} µm", step)
        self.step.setCurrentIndex(2)
        self.jog_pad = JogPad()
        self.jog_pad.setObjectName("jogPad")
        self.jog_pad.jog.connect(self._jog)
        self.go_to_chip_button = QPushButton("Go to chip… (Ctrl+G)")
        self.go_to_chip_button.setObjectName("goToChipButton")
        self.go_to_chip_button.setToolTip(
            "Move the spot to a chip by its index: through the open scan's alignment, or the nominal placement"
        )
        self.go_to_chip_button.clicked.connect(self.go_to_chip_requested.emit)
        step_row = QHBoxLayout()
        step_row.addWidget(QLabel("Step:"))
        step_row.addWidget(self.step)
        step_row.addStretch(1)
        step_row.addWidget(self.go_to_chip_button)
        stage_layout.addWidget(self.position)
        stage_layout.addLayout(step_row)
        stage_layout.addWidget(self.jog_pad)

        laser = QGroupBox("Laser")
        form = QFormLayout(laser)
        self.emission = QLabel("EMISSION OFF")
        self.emission.setObjectName("emissionIndicator")
        self.emission.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.emission.setStyleSheet(EMISSION_OFF_STYLE)
        self.interlock = QLabel("interlock —")
        self.interlock.setObjectName("interlockLabel")
        self.power = QDoubleSpinBox()
        self.power.setObjectName("laserPower")
        self.power.setRange(0.0, 1000.0)
        self.power.setDecimals(3)
        self.power.setSuffix(" mW")
        self.power.setValue(1.0)
        set_power = QPushButton("Set power")
        set_power.setObjectName("setPowerButton")
        set_power.clicked.connect(lambda: self.controller.set_laser_power(self.power.value() / 1000.0))
        power_row = QHBoxLayout()
        power_row.addWidget(self.power, 1)
        power_row.addWidget(set_power)
        self.laser_on = QPushButton("Laser ON")
        self.laser_on.setObjectName("laserOnButton")
        self.laser_on.clicked.connect(lambda: self.controller.set_emission(True))
        self.laser_off = QPushButton("Laser OFF (Ctrl+L)")
        self.laser_off.setObjectName("laserOffButton")
        self.laser_off.clicked.connect(self.controller.laser_off)
        switch_row = QHBoxLayout()
        switch_row.addWidget(self.laser_on)
        switch_row.addWidget(self.laser_off)
        self.readouts = QLabel("power meter —   detector —")
        self.readouts.setObjectName("readouts")
        self.readouts.setStyleSheet("font-family: monospace;")
        form.addRow(self.emission)
        form.addRow("Interlock:", self.interlock)
        form.addRow("Power:", power_row)
        form.addRow(switch_row)
        form.addRow("Readouts:", self.readouts)

        grid = QGridLayout()
        grid.addWidget(instruments, 0, 0, 1, 2)
        grid.addWidget(stage, 1, 0)
        grid.addWidget(laser, 1, 1)
        grid.setRowStretch(2, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(connection)
        layout.addLayout(grid, 1)
        self._controls = [stage, laser]

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Station file", self.station_file.text(), "Station files (*.toml)")
        if path:
            self.station_file.setText(path)

    def edit_station_file(self) -> None:
        """The station file as TOML (engineers; saved with an audit entry). Reconnect to use the change."""
        if not self.access.require(Permission.EDIT_STATION):
            return
        editor = SettingsEditor(FileKind.STATION, Path(self.station_file.text()), self.access, self)
        editor.exec()
        if editor.saved_path is not None:
            self.station_file.setText(str(editor.saved_path))
            if self.controller.is_connected:
                self.connection_label.setText("station file changed: reconnect to use it")

    def toggle_connection(self) -> None:
        if self.controller.is_connected:
            self.controller.disconnect_station()
            self.connection_label.setText("disconnecting …")
        else:
            self.controller.connect_station(self.station_file.text())
            self.connection_label.setText("connecting …")

    def _jog(self, axis: Axis, sign: float) -> None:
        self.controller.jog(axis, sign * float(self.step.currentData()))

    def _connected(self, name: str, identities: dict[str, str]) -> None:
        self.connection_label.setText(f"connected: {name}")
        self.connect_button.setText("Disconnect")
        self.identities.setRowCount(len(identities))
        for row, (role, identity) in enumerate(identities.items()):
            self.identities.setItem(row, 0, QTableWidgetItem(role.replace("_", " ")))
            self.identities.setItem(row, 1, QTableWidgetItem(identity))
        self.identities.resizeColumnToContents(0)
        self._set_enabled(True)

    def _disconnected(self) -> None:
        self.connection_label.setText("not connected")
        self.connect_button.setText("Connect")
        self.identities.setRowCount(0)
        self._set_enabled(False)
        self.emission.setText("EMISSION OFF")
        self.emission.setStyleSheet(EMISSION_OFF_STYLE)

    def _set_enabled(self, enabled: bool) -> None:
        for widget in self._controls:
            widget.setEnabled(enabled)

    def set_scanning(self, scanning: bool) -> None:
        """During a scan the stage and the laser belong to it: manual controls are off (Laser OFF stays)."""
        connected = self.controller.is_connected
        self.jog_pad.setEnabled(connected and not scanning)
        self.go_to_chip_button.setEnabled(connected and not scanning)
        self.laser_on.setEnabled(connected and not scanning)
        self.power.setEnabled(connected and not scanning)

    def show_state(self, state: StationState) -> None:
        self.position.setText(f"X {state.x_um:12,.1f} µm   Y {state.y_um:12,.1f} µm   Z {state.z_um:10,.1f} µm")
        if state.emission:
            self.emission.setText(
                f"LASER EMISSION ON · {state.laser_wavelength_nm:g} nm · {state.power_setpoint_w * 1e3:g} mW"
            )
            self.emission.setStyleSheet(EMISSION_ON_STYLE)
        else:
            self.emission.setText("emission off")
            self.emission.setStyleSheet(EMISSION_OFF_STYLE)
        self.interlock.setText("closed (emission allowed)" if state.interlock_closed else "OPEN: close the enclosure")
        self.interlock.setStyleSheet("" if state.interlock_closed else "color:#c62828; font-weight:bold;")
        self.readouts.setText(f"power meter {state.power_meter_w * 1e3:8.4f} mW   detector {state.detector_v:8.4f} V")
