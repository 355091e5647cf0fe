"""Stand-ins for the Qt, CTK and qMRML *widget* classes of 3D Slicer (C++ classes of the
application, not available outside it), used by the test harness in ``slicer_framework.py``.

What they do, and nothing more:

- A widget is an object tree (``parent()``, ``children()``, ``findChildren``) with PythonQt-style
  properties (``button.enabled = False``, ``combo.currentIndex = 2``), dynamic properties
  (``property``/``setProperty``, where the ``.ui`` file's ``SlicerParameterName`` lives) and signals
  (``combo.currentIndexChanged.connect(slot)``, ``button.connect("clicked(bool)", slot)``; a slot that
  takes fewer arguments than the signal carries is called with fewer, as PythonQt does).
- ``QComboBox`` holds items with data and roles, ``currentIndex`` emits ``currentIndexChanged``;
  ``QSpinBox`` clamps to its range and emits ``valueChanged``; ``QCheckBox`` emits ``stateChanged``
  and ``toggled``; ``QPushButton.click()`` emits ``clicked``.
- ``qMRMLNodeComboBox`` holds the node it is given (``setCurrentNode``/``currentNode``, emitting
  ``currentNodeChanged``) and its ``nodeTypes``; unlike the real one it does not list the scene's nodes
  or select one by itself.
- ``QUiLoader`` builds these widgets from a real ``.ui`` file: class names, object names, the
  properties it sets (``text``, ``toolTip``, ``enabled``, ``nodeTypes``, ``noneEnabled``, dynamic
  ``SlicerParameterName``...) and the ``<connections>`` (``mrmlSceneChanged`` -> ``setMRMLScene``).
  Layouts are flattened (a child belongs to the widget whose layout holds it); nothing is drawn.
- ``QTimer`` runs on ``eventLoop``, the harness's main loop: ``eventLoop.run(until, timeout)`` fires
  due timers and posted calls on the calling thread, one at a time, and records how long each kept
  that thread busy (``eventLoop.busy``) - what a user waiting for the panel would wait.
- Every other name of ``qt`` / ``ctk`` (message boxes, dialogs, cursors, settings, icons) is a
  permissive object that accepts any call and returns another such object; ``QSettings`` is empty.
"""

import inspect
import types
import xml.etree.ElementTree as ElementTree


class Signal:
    def __init__(self):
        self._slots = []

    def connect(self, slot):
        self._slots.append(slot)

    def disconnect(self, slot=None):
        if slot is None:
            self._slots.clear()
        elif slot in self._slots:
            self._slots.remove(slot)

    def emit(self, *args):
        for slot in list(self._slots):
            slot(*args[:_acceptedArguments(slot, len(args))])


def _acceptedArguments(slot, available):
    try:
        parameters = inspect.signature(slot).parameters.values()
    except (TypeError, ValueError):
        return available
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return available
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return min(available, len(positional))


class SignalDescriptor:
    """A per-instance Signal, made on first access (``widget.clicked.connect``)."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, instance, owner):
        if instance is None:
            return self
        signals = instance.__dict__.setdefault("_signals", {})
        return signals.setdefault(self.name, Signal())


class Anything:
    """Accepts any attribute, call or item; what every unlisted Qt/CTK name stands in for."""

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return Anything()

    def __call__(self, *args, **kwargs):
        return Anything()

    def __bool__(self):
        return False

    def __or__(self, other):
        return self

    def __int__(self):
        return 0


class QObject:
    destroyed = SignalDescriptor()

    def __init__(self, parent=None):
        self._parent = None
        self._children = []
        self._properties = {}
        self._blocked = False
        self.name = ""
        self.objectName = ""
        if isinstance(parent, QObject):
            self.setParent(parent)

    def setParent(self, parent):
        if self._parent is not None and self in self._parent._children:
            self._parent._children.remove(self)
        self._parent = parent
        if parent is not None:
            parent._children.append(self)

    def parent(self):
        return self._parent

    def children(self):
        return list(self._children)

    def findChildren(self, className=None):
        found = []
        for child in self._children:
            if className is None or isinstance(child, className):
                found.append(child)
            found += child.findChildren(className)
        return found

    def property(self, name):
        return self._properties.get(name)

    def setProperty(self, name, value):
        self._properties[name] = value

    def blockSignals(self, block):
        previous, self._blocked = self._blocked, bool(block)
        return previous

    def signalsBlocked(self):
        return self._blocked

    def _emit(self, signalName, *args):
        if not self._blocked:
            getattr(self, signalName).emit(*args)

    def connect(self, signature, slot):
        """PythonQt's ``obj.connect("clicked(bool)", slot)``."""
        getattr(self, signature.split("(", 1)[0]).connect(slot)
        return True

    def disconnect(self, signature, slot=None):
        getattr(self, signature.split("(", 1)[0]).disconnect(slot)
        return True

    def deleteLater(self):
        pass

    def className(self):
        return type(self).__name__

    def isWidgetType(self):
        return False


class QWidget(QObject):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.enabled = True
        self.visible = True
        self.toolTip = ""
        self.text = ""
        self._layout = None

    def isWidgetType(self):
        return True

    def setLayout(self, layout):
        self._layout = layout
        layout._owner = self

    def layout(self):
        return self._layout

    def show(self):
        self.visible = True

    def hide(self):
        self.visible = False

    def setEnabled(self, enabled):
        self.enabled = bool(enabled)

    def setVisible(self, visible):
        self.visible = bool(visible)

    def setToolTip(self, text):
        self.toolTip = text

    def __getattr__(self, name):  # size policies, style sheets, fonts...: accepted, not modelled
        if name.startswith("_"):
            raise AttributeError(name)
        return Anything()


class QLayout:
    def __init__(self, parent=None):
        self._owner = None
        if isinstance(parent, QWidget):
            parent.setLayout(self)

    def addWidget(self, widget, *args):
        if self._owner is not None:
            widget.setParent(self._owner)

    def addRow(self, *items):
        for item in items:
            if isinstance(item, QWidget):
                self.addWidget(item)

    def addLayout(self, *args):
        pass

    def addStretch(self, *args):
        pass

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return Anything()


class QVBoxLayout(QLayout):
    pass


class QHBoxLayout(QLayout):
    pass


class QFormLayout(QLayout):
    pass


class QGridLayout(QLayout):
    pass


class QLabel(QWidget):
    def __init__(self, text="", parent=None):
        super().__init__(parent if isinstance(parent, QObject) else None)
        self.text = text if isinstance(text, str) else ""


class QAbstractButton(QWidget):
    clicked = SignalDescriptor()
    toggled = SignalDescriptor()

    def __init__(self, text="", parent=None):
        super().__init__(parent if isinstance(parent, QObject) else None)
        self.text = text if isinstance(text, str) else ""
        self.checkable = False
        self._checked = False

    @property
    def checked(self):
        return self._checked

    @checked.setter
    def checked(self, value):
        value = bool(value)
        if value != self._checked:
            self._checked = value
            self._emit("toggled", value)
            self._onCheckedChanged(value)

    def _onCheckedChanged(self, value):
        pass

    def isChecked(self):
        return self._checked

    def setChecked(self, value):
        self.checked = value

    def click(self):
        """What a user's click does: ignored when disabled, toggles a checkable button."""
        if not self.enabled:
            return
        if self.checkable:
            self.checked = not self._checked
        self._emit("clicked", self._checked)


class QPushButton(QAbstractButton):
    pass


class QToolButton(QAbstractButton):
    pass


class QCheckBox(QAbstractButton):
    stateChanged = SignalDescriptor()

    def __init__(self, text="", parent=None):
        super().__init__(text, parent)
        self.checkable = True

    def _onCheckedChanged(self, value):
        self._emit("stateChanged", 2 if value else 0)


class QComboBox(QWidget):
    currentIndexChanged = SignalDescriptor()
    activated = SignalDescriptor()
    currentTextChanged = SignalDescriptor()

    DisplayRole, ToolTipRole, UserRole = 0, 3, 256

    def __init__(self, parent=None):
        super().__init__(parent)
        self._items = []  # [{role: value}]
        self._currentIndex = -1

    @property
    def count(self):
        return len(self._items)

    @property
    def currentIndex(self):
        return self._currentIndex

    @currentIndex.setter
    def currentIndex(self, index):
        index = int(index)
        if not -1 <= index < len(self._items):
            index = -1
        if index != self._currentIndex:
            self._currentIndex = index
            self._emit("currentIndexChanged", index)

    def setCurrentIndex(self, index):
        self.currentIndex = index

    @property
    def currentText(self):
        return self._items[self._currentIndex][self.DisplayRole] if self._currentIndex >= 0 else ""

    def addItem(self, text, data=None):
        self.insertItem(len(self._items), text, data)

    def addItems(self, texts):
        for text in texts:
            self.addItem(text)

    def insertItem(self, index, text, data=None):
        index = max(0, min(int(index), len(self._items)))
        self._items.insert(index, {self.DisplayRole: text, self.UserRole: data})
        if self._currentIndex < 0:
            self.currentIndex = 0
        elif index <= self._currentIndex:
            self._currentIndex += 1

    def removeItem(self, index):
        del self._items[index]
        if self._currentIndex >= len(self._items):
            self.currentIndex = len(self._items) - 1

    def clear(self):
        self._items = []
        self.currentIndex = -1

    def itemText(self, index):
        return self._items[index][self.DisplayRole] if 0 <= index < len(self._items) else ""

    def itemData(self, index, role=UserRole):
        return self._items[index].get(role) if 0 <= index < len(self._items) else None

    def setItemData(self, index, value, role=UserRole):
        if 0 <= index < len(self._items):
            self._items[index][role] = value

    def findData(self, data, role=UserRole):
        for index, item in enumerate(self._items):
            if item.get(role) == data:
                return index
        return -1

    def findText(self, text):
        return self.findData(text, self.DisplayRole)

    def activate(self, index):
        """What a user's choice in the list does: sets the index, then emits ``activated``."""
        self.currentIndex = index
        self._emit("activated", index)


class QSpinBox(QWidget):
    valueChanged = SignalDescriptor()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.minimum, self.maximum, self.singleStep = 0, 99, 1
        self._value = 0

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, value):
        value = max(self.minimum, min(self.maximum, int(value)))
        if value != self._value:
            self._value = value
            self._emit("valueChanged", value)

    def setValue(self, value):
        self.value = value

    def setRange(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum
        self.value = self._value

    def setMinimum(self, minimum):
        self.setRange(minimum, max(minimum, self.maximum))

    def setMaximum(self, maximum):
        self.setRange(min(self.minimum, maximum), maximum)


class QProgressBar(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.minimum, self.maximum, self.value = 0, 100, 0
        self.textVisible = True
        self.format = "%p%"


class QTableWidgetItem:
    def __init__(self, text=""):
        self._text = text

    def text(self):
        return self._text

    def setText(self, text):
        self._text = text


class QTableWidget(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self._cells = {}
        self.rowCount = 0
        self.columnCount = 2

    def setRowCount(self, rows):
        self.rowCount = rows

    def setColumnCount(self, columns):
        self.columnCount = columns

    def setItem(self, row, column, item):
        self._cells[(row, column)] = item

    def item(self, row, column):
        return self._cells.get((row, column))


class QPlainTextEdit(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.plainText = ""
        self.readOnly = False

    def appendPlainText(self, text):
        self.plainText = f"{self.plainText}\n{text}" if self.plainText else text

    def toPlainText(self):
        return self.plainText

    def clear(self):
        self.plainText = ""


class QTextEdit(QPlainTextEdit):
    pass


class QLineEdit(QWidget):
    textChanged = SignalDescriptor()


class QSlider(QSpinBox):
    pass


class QDoubleSpinBox(QSpinBox):
    pass


class QFrame(QWidget):
    pass


class QGroupBox(QWidget):
    pass


class EventLoop:
    """The harness's main loop (a stand-in for Qt's): runs the callbacks of due ``QTimer``s and posted
    calls on the calling (main) thread, one at a time, and records how long each one kept the thread
    busy, so a test can state the panel's longest unresponsive interval while a run is in progress."""

    def __init__(self):
        self.timers = []
        self.posted = []
        self.busy = []  # (seconds, what) of every callback run by run()
        self.longestTurn = 0.0  # the longest time between the starts of two turns of run()'s loop

    def post(self, callback):
        self.posted.append(callback)

    def _call(self, callback, what):
        import time

        started = time.perf_counter()
        try:
            callback()
        finally:
            self.busy.append((time.perf_counter() - started, what))

    def run(self, until, timeout, tick=0.005):
        """Run posted calls and due timers until ``until()`` is true; ``TimeoutError`` after ``timeout`` s."""
        import time

        deadline = time.monotonic() + timeout
        previousTurn = time.perf_counter()
        while not until():
            turn = time.perf_counter()  # includes callbacks, the sleep, and waits for other threads (GIL)
            self.longestTurn = max(self.longestTurn, turn - previousTurn)
            previousTurn = turn
            if time.monotonic() > deadline:
                raise TimeoutError(f"the event loop ran {timeout} s without reaching its condition")
            while self.posted:
                callback = self.posted.pop(0)
                self._call(callback, getattr(callback, "__name__", "posted call"))
            now = time.monotonic()
            for timer in [t for t in self.timers if t.isActive() and t._due <= now]:
                timer._due = now + timer.interval / 1000.0
                if timer.singleShot_:
                    timer.stop()
                self._call(lambda timer=timer: timer._emit("timeout"), "QTimer.timeout")
            time.sleep(tick)

    def longestBusy(self):
        return max(self.busy, default=(0.0, ""))


eventLoop = EventLoop()


class QTimer(QObject):
    timeout = SignalDescriptor()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.interval = 0
        self.singleShot_ = False
        self._active = False
        self._due = 0.0

    def setInterval(self, milliseconds):
        self.interval = int(milliseconds)

    def setSingleShot(self, singleShot):
        self.singleShot_ = bool(singleShot)

    def start(self, milliseconds=None):
        import time

        if milliseconds is not None:
            self.interval = int(milliseconds)
        self._active = True
        self._due = time.monotonic() + self.interval / 1000.0
        if self not in eventLoop.timers:
            eventLoop.timers.append(self)

    def stop(self):
        self._active = False
        if self in eventLoop.timers:
            eventLoop.timers.remove(self)

    def isActive(self):
        return self._active

    @staticmethod
    def singleShot(milliseconds, callback):
        timer = QTimer()
        timer.setSingleShot(True)
        timer.timeout.connect(callback)
        timer.start(milliseconds)


class QColor:
    def __init__(self, *args):
        self.args = args


class QFileDialog:
    """``getOpenFileName`` returns what a test put in ``QFileDialog.nextOpenFileName`` (the user's choice)."""

    nextOpenFileName = ""

    @classmethod
    def getOpenFileName(cls, *args, **kwargs):
        chosen, cls.nextOpenFileName = cls.nextOpenFileName, ""
        return chosen


class QSettings:
    def __init__(self, *args):
        self._values = {}

    def contains(self, key):
        return key in self._values

    def value(self, key, default=None):
        return self._values.get(key, default)

    def setValue(self, key, value):
        self._values[key] = value


class _QtNamespace:
    """``qt.Qt``: the item roles the module uses; any other enum value (cursors, alignments) is 0."""

    DisplayRole, ToolTipRole, UserRole = 0, 3, 256
    ShiftModifier = 0x02000000
    NoModifier = 0

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return 0


Qt = _QtNamespace()


# --- CTK --------------------------------------------------------------------------------------------

class ctkCollapsibleButton(QAbstractButton):
    contentsCollapsed = SignalDescriptor()

    def __init__(self, text="", parent=None):
        super().__init__(text, parent)
        self._collapsed = False

    @property
    def collapsed(self):
        return self._collapsed

    @collapsed.setter
    def collapsed(self, value):
        value = bool(value)
        if value != self._collapsed:
            self._collapsed = value
            self._emit("contentsCollapsed", value)


class ctkCheckBox(QCheckBox):
    pass


class ctkComboBox(QComboBox):
    pass


class ctkCheckablePushButton(QPushButton):
    pass


def _distinctWidgetClass(name):
    return type(name, (QWidget,), {})


# --- qMRML ------------------------------------------------------------------------------------------

class qMRMLWidget(QWidget):
    mrmlSceneChanged = SignalDescriptor()

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene):
        self._scene = scene
        self._emit("mrmlSceneChanged", scene)

    def mrmlScene(self):
        return self._scene


class qSlicerWidget(qMRMLWidget):
    pass


class qMRMLNodeComboBox(qMRMLWidget):
    currentNodeChanged = SignalDescriptor()
    currentNodeIDChanged = SignalDescriptor()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.nodeTypes = ()
        self.noneEnabled = False
        self.addEnabled = True
        self.removeEnabled = True
        self.renameEnabled = False
        self.noneDisplay = "None"
        self.showChildNodeTypes = True
        self.selectNodeUponCreation = True
        self._node = None

    def currentNode(self):
        return self._node

    def setCurrentNode(self, node):
        if node is not self._node:
            self._node = node
            self._emit("currentNodeChanged", node)
            self._emit("currentNodeIDChanged", node.GetID() if node is not None else "")

    @property
    def currentNodeID(self):
        return self._node.GetID() if self._node is not None else ""


# --- .ui files --------------------------------------------------------------------------------------

def _propertyValue(element):
    value = next(iter(element), None)
    if value is None:
        return None
    tag = value.tag
    if tag == "string":
        return value.text or ""
    if tag == "bool":
        return value.text == "true"
    if tag == "number":
        return int(value.text)
    if tag == "double":
        return float(value.text)
    if tag == "stringlist":
        return tuple(item.text or "" for item in value.findall("string"))
    if tag in ("enum", "set", "cstring"):
        return value.text
    return None  # sizes, fonts, rectangles: not modelled


class QUiLoader:
    """Builds stand-in widgets from a Qt Designer ``.ui`` file (see the module docstring)."""

    def __init__(self, widgetClasses):
        self.widgetClasses = widgetClasses

    def load(self, qfile, parent=None):
        root = ElementTree.parse(qfile.path).getroot()
        widgets = {}
        top = self._build(root.find("widget"), None, widgets)
        for connection in root.iter("connection"):
            sender, receiver = widgets[connection.findtext("sender")], widgets[connection.findtext("receiver")]
            slotName = connection.findtext("slot").split("(", 1)[0]
            sender.connect(connection.findtext("signal"), getattr(receiver, slotName))
        return top

    def _build(self, element, parent, widgets):
        className = element.get("class")
        widgetClass = self.widgetClasses.get(className)
        if widgetClass is None:
            raise RuntimeError(f"the harness has no stand-in for the widget class {className} used in the .ui file")
        widget = widgetClass()
        widget.name = widget.objectName = element.get("name")
        if parent is not None:
            widget.setParent(parent)
        widgets[widget.name] = widget
        for item in element.findall("property"):
            value = _propertyValue(item)
            if item.get("stdset") == "0":
                widget.setProperty(item.get("name"), value)
            elif value is not None:
                self._setProperty(widget, item.get("name"), value)
        for child in self._childWidgets(element):
            self._build(child, widget, widgets)
        return widget

    @staticmethod
    def _setProperty(widget, name, value):
        if name in ("value", "minimum", "maximum") and isinstance(widget, QSpinBox):
            if name == "value":
                widget.value = value
            else:
                setattr(widget, name, value)
            return
        try:
            setattr(widget, name, value)
        except AttributeError:
            widget.setProperty(name, value)

    @staticmethod
    def _childWidgets(element):
        """Widgets directly inside ``element`` or inside its layouts (layouts are flattened)."""
        children = []
        stack = list(element)
        while stack:
            node = stack.pop(0)
            if node.tag == "widget":
                children.append(node)
            elif node.tag in ("layout", "item"):
                stack[0:0] = list(node)
        return children


class QFile:
    ReadOnly = 1

    def __init__(self, path):
        self.path = str(path)

    def exists(self):
        import os

        return os.path.isfile(self.path)

    def open(self, mode):
        return True

    def close(self):
        pass


def _anythingFor(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return Anything()


def makeModules():
    """The stand-in ``qt`` and ``ctk`` modules and the qMRML classes to put on ``slicer``."""
    qt = types.ModuleType("qt")
    qt.__doc__ = "Stand-in for PythonQt's qt module (Testing/Python/slicer_module/qt_standins.py)"
    for cls in (QObject, QWidget, QLayout, QVBoxLayout, QHBoxLayout, QFormLayout, QGridLayout, QLabel,
                QAbstractButton, QPushButton, QToolButton, QCheckBox, QComboBox, QSpinBox, QDoubleSpinBox, QSlider,
                QProgressBar, QTableWidget, QTableWidgetItem, QPlainTextEdit, QTextEdit, QLineEdit, QFrame,
                QGroupBox, QColor, QFileDialog, QSettings, QFile, QTimer):
        setattr(qt, cls.__name__, cls)
    qt.Qt = Qt
    qt.__getattr__ = _anythingFor

    ctk = types.ModuleType("ctk")
    ctk.__doc__ = "Stand-in for CTK's PythonQt module (Testing/Python/slicer_module/qt_standins.py)"
    for cls in (ctkCollapsibleButton, ctkCheckBox, ctkComboBox, ctkCheckablePushButton):
        setattr(ctk, cls.__name__, cls)
    for name in ("ctkSliderWidget", "ctkDoubleSlider", "ctkDoubleSpinBox", "ctkRangeWidget", "ctkDoubleRangeSlider",
                 "ctkPathLineEdit", "ctkDirectoryButton", "ctkColorPickerButton"):
        setattr(ctk, name, _distinctWidgetClass(name))
    ctk.__getattr__ = _anythingFor

    qmrml = {"qMRMLWidget": qMRMLWidget, "qSlicerWidget": qSlicerWidget, "qMRMLNodeComboBox": qMRMLNodeComboBox}
    for name in ("qMRMLSliderWidget", "qMRMLSpinBox", "qMRMLRangeWidget"):
        qmrml[name] = _distinctWidgetClass(name)

    widgetClasses = {name: getattr(qt, name) for name in dir(qt) if name.startswith("Q")}
    widgetClasses.update({name: getattr(ctk, name) for name in dir(ctk) if name.startswith("ctk")})
    widgetClasses.update(qmrml)
    qt.QUiLoader = lambda: QUiLoader(widgetClasses)
    return qt, ctk, qmrml
