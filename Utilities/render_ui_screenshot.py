"""Render MRISynthesis.ui to Screenshots/MRISynthesis-ui.png without Slicer (layout preview).

Slicer's custom widgets (qMRMLWidget, ctkCollapsibleButton, qMRMLNodeComboBox) do not exist
outside Slicer; plain Qt stand-ins with the same class names take their place, and the combo
boxes show example entries. Qt warns that the stand-in has no mrmlSceneChanged signal: harmless. Needs PySide6 (pip install PySide6-Essentials).

    QT_QPA_PLATFORM=offscreen python Utilities/render_ui_screenshot.py
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import Property, QFile  # noqa: E402
from PySide6.QtUiTools import QUiLoader  # noqa: E402
from PySide6.QtWidgets import QApplication, QComboBox, QGroupBox, QLabel, QWidget  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
UI_FILE = REPO / "MRISynthesis" / "Resources" / "UI" / "MRISynthesis.ui"
OUTPUT = REPO / "Screenshots" / "MRISynthesis-ui.png"


class qMRMLWidget(QWidget):  # noqa: N801 - the class name must match the .ui
    pass


class ctkCollapsibleButton(QGroupBox):  # noqa: N801
    """Stand-in: a group box whose title is the collapsible button's text."""

    def _getText(self):
        return self.title()

    def _setText(self, text):
        self.setTitle(text)

    def _getCollapsed(self):
        return False

    def _setCollapsed(self, collapsed):
        pass  # always drawn expanded in the preview, so every option is visible

    text = Property(str, _getText, _setText)
    collapsed = Property(bool, _getCollapsed, _setCollapsed)


class qMRMLNodeComboBox(QComboBox):  # noqa: N801
    pass


EXAMPLE_ENTRIES = {
    "inputSelector": ["MRBrainT1"],
    "referenceSelector": ["None (no comparison)", "MRBrainT2"],
    "outputSelector": ["Create new volume"],
    "maskSelector": ["Automatic"],
    "directionComboBox": ["T1 \u2192 T2", "T2 \u2192 T1"],
    "modelComboBox": ["(models of the catalog for the direction)", "Load a checkpoint file\u2026"],
    "deviceComboBox": ["Auto", "GPU (CUDA)", "CPU"],
}


def render(output: Path = OUTPUT) -> Path:
    app = QApplication.instance() or QApplication(sys.argv)
    loader = QUiLoader()
    for cls in (qMRMLWidget, ctkCollapsibleButton, qMRMLNodeComboBox):
        loader.registerCustomWidget(cls)
    uiFile = QFile(str(UI_FILE))
    if not uiFile.open(QFile.ReadOnly):
        raise RuntimeError(f"cannot open {UI_FILE}")
    widget = loader.load(uiFile)
    uiFile.close()
    if widget is None:
        raise RuntimeError(f"QUiLoader could not load {UI_FILE}: {loader.errorString()}")

    for name, entries in EXAMPLE_ENTRIES.items():
        combo = widget.findChild(QComboBox, name)
        combo.clear()
        combo.addItems(entries)
    widget.findChild(QWidget, "applyButton").setEnabled(True)  # as when the inputs are complete
    widget.findChild(QLabel, "deviceStatusLabel").setText("(shows the device Auto picked)")
    widget.findChild(QLabel, "statusLabel").setText("Progress and status messages appear here.")
    widget.findChild(QLabel, "resultsLabel").setText(
        "After synthesis: output name, model, device; with a reference, the metrics below.")
    widget.findChild(QLabel, "conventionsLabel").setText("Conventions of the metrics (mask, normalisation, SSIM).")

    widget.resize(440, widget.sizeHint().height())
    widget.show()
    app.processEvents()
    output.parent.mkdir(parents=True, exist_ok=True)
    if not widget.grab().save(str(output)):
        raise RuntimeError(f"could not write {output}")
    return output


if __name__ == "__main__":
    print(render())
