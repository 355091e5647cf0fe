"""Test harness: the module file ``MRISynthesis/MRISynthesis.py`` itself, on 3D Slicer 5.10's own
Python framework and the real MRML classes.

Runs for real:

- MRML: the ``slicer-core`` wheel (Slicer's C++ MRML scene, nodes, logics, scene writing/reading).
- Slicer 5.10.0's pure-Python framework from ``../shared/slicer-5.10-python`` (unchanged copy of
  ``Base/Python/slicer`` at tag v5.10.0): ``slicer.parameterNodeWrapper`` (wrapper, serializers,
  validators and the GUI connectors that bind the ``.ui`` widgets to the parameter node),
  ``slicer.ScriptedLoadableModule``, ``slicer.i18n`` and ``slicer.util`` (replacing the wheel's newer
  ``slicer.util``, so ``loadUI``, ``childWidgetVariables``, ``VTKObservationMixin``, ``NodeModify``,
  ``errorDisplay``... are 5.10's code).
- The module file, imported as Slicer imports it (module name ``MRISynthesis``, its folder on
  ``sys.path``), its classes used as Slicer uses them: ``MRISynthesis(parent)``,
  ``MRISynthesisWidget(parent).setup()`` / ``enter()`` / ``exit()``, ``MRISynthesisLogic``,
  ``MRISynthesisTest``; the panel is built from the real ``Resources/UI/MRISynthesis.ui``.

Stood in for (C++ classes of the Slicer application, which cannot be installed here), and why:

- Qt, CTK and qMRML *widget* classes and ``QUiLoader`` (``qt_standins.py``: what each one models is
  written there): they are compiled Qt classes. Nothing is drawn, there is no real event loop, and a
  ``qMRMLNodeComboBox`` holds the node it is given but does not list or auto-select scene nodes.
  Qt's event loop is stood in for by ``qt_standins.eventLoop``, which runs ``QTimer`` callbacks on the
  test's thread and records how long each one took.
- ``slicer.app`` (qSlicerApplication): version 5.10, testing mode on (as in Slicer's ctest, so message
  boxes are logged, not shown), ``processEvents()`` calls the harness's hook (tests use it to act while
  a run is in progress, like a user's click), ``layoutManager()`` wraps the test scene's real
  ``vtkMRMLLayoutLogic``, ``translate()`` returns the source text (no translation installed).
- ``slicer.modules.volumes`` (qSlicerVolumesModule): only its ``logic()``, a real vtkSlicerVolumesLogic.
- ``slicer.modules.mrisynthesis`` (qSlicerScriptedLoadableModule) and the module panel's parent widget
  (qSlicerScriptedLoadableModuleWidget): they hold the module's path, metadata, ``isEntered`` and
  ``self()``.

Tests using it skip with the reason when ``../shared/slicer-5.10-python`` is absent (a fresh clone).
"""

import importlib.util
import sys
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
MODULE_FILE = REPO / "MRISynthesis" / "MRISynthesis.py"
SLICER_FRAMEWORK = REPO.parent / "shared" / "slicer-5.10-python"
SLICER_FRAMEWORK_VERSION = (5, 10)

_installed = None  # the StandInApplication once install() ran


def frameworkProblem():
    """Why the harness cannot run here (None when it can)."""
    if not (SLICER_FRAMEWORK / "slicer" / "parameterNodeWrapper" / "wrapper.py").is_file():
        return (f"Slicer 5.10's Python framework is not at {SLICER_FRAMEWORK} (only present in CI and on developer "
                "machines; see its README)")
    try:
        import slicer
    except ImportError as error:
        return f"slicer-core is not installed ({error})"
    if not hasattr(slicer, "vtkMRMLScene"):
        return "'import slicer' is not the slicer-core wheel"
    return None


def _loadFrameworkModule(name):
    """Load ``slicer.<name>`` from Slicer 5.10's framework folder (replacing any loaded one)."""
    import slicer

    path = SLICER_FRAMEWORK / "slicer" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"slicer.{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"slicer.{name}"] = module
    spec.loader.exec_module(module)
    setattr(slicer, name, module)
    return module


class _StandInLayoutManager:
    """qSlicerLayoutManager: gives the test scene's real vtkMRMLLayoutLogic."""

    def __init__(self, layoutLogic):
        self._layoutLogic = layoutLogic
        self.resetSliceViewsCount = 0

    def layoutLogic(self):
        return self._layoutLogic

    def resetSliceViews(self):
        self.resetSliceViewsCount += 1

    def sliceWidget(self, name):
        return None


def _makeApplicationClass(qt):
    from qt_standins import SignalDescriptor

    class ModuleManager(qt.QObject):
        moduleAboutToBeUnloaded = SignalDescriptor()

    class StandInApplication(qt.QObject):
        """qSlicerApplication (see the module docstring)."""

        startupCompleted = SignalDescriptor()

        def __init__(self):
            super().__init__()
            self.majorVersion, self.minorVersion = SLICER_FRAMEWORK_VERSION
            self.applicationName = "Slicer"
            self.testing = True
            self.processEventsHook = None  # called by processEvents(): a test acts "during" a run
            self.processEventsCount = 0
            self._layoutManager = None
            self._moduleManager = ModuleManager()

        def testingEnabled(self):
            return self.testing

        def processEvents(self, *args):
            self.processEventsCount += 1
            if self.processEventsHook is not None:
                self.processEventsHook()

        def layoutManager(self):
            return self._layoutManager

        def setLayoutLogic(self, layoutLogic):
            self._layoutManager = _StandInLayoutManager(layoutLogic) if layoutLogic is not None else None

        def moduleManager(self):
            return self._moduleManager

        def translate(self, context, text):  # no translation installed: the source text
            return text

        def topLevelWidgets(self):
            return []

        def settings(self):
            return qt.QSettings()

        userSettings = settings

        def restart(self):
            raise RuntimeError("the harness cannot restart Slicer")

    return StandInApplication


class _ModuleRepresentation:
    """qSlicerScriptedLoadableModule: metadata the module sets, its path, its widget."""

    def __init__(self, path):
        self.path = str(path)
        self.name = Path(path).stem
        self.title, self.categories, self.dependencies, self.contributors = "", [], [], []
        self.helpText = self.acknowledgementText = ""
        self.icon = None
        self.widget = None  # the module's Python widget object once the panel was opened

    def widgetRepresentation(self):
        return self.widget.parent if self.widget is not None else None


def install():
    """Put the stand-ins and Slicer 5.10's framework in place (idempotent); returns ``slicer.app``."""
    global _installed
    if _installed is not None:
        return _installed
    problem = frameworkProblem()
    if problem:
        raise RuntimeError(problem)
    import slicer

    import qt_standins

    qt, ctk, qmrml = qt_standins.makeModules()
    sys.modules["qt"], sys.modules["ctk"] = qt, ctk
    for name, cls in qmrml.items():
        setattr(slicer, name, cls)
    # Modules of the 5.10 framework folder that the wheel does not have (i18n, ScriptedLoadableModule,
    # parameterNodeWrapper) are found through the package path; util replaces the wheel's.
    frameworkPackage = str(SLICER_FRAMEWORK / "slicer")
    if frameworkPackage not in slicer.__path__:
        slicer.__path__.append(frameworkPackage)
    _loadFrameworkModule("util")
    for name in [name for name in sys.modules if name == "slicer.parameterNodeWrapper"
                 or name.startswith("slicer.parameterNodeWrapper.")]:
        del sys.modules[name]
    import slicer.i18n  # noqa: F401
    import slicer.parameterNodeWrapper  # noqa: F401
    import slicer.ScriptedLoadableModule  # noqa: F401

    for name in ("parameterNodeWrapper", "ScriptedLoadableModule", "i18n"):
        origin = Path(sys.modules[f"slicer.{name}"].__file__).resolve()
        if not origin.is_relative_to(SLICER_FRAMEWORK.resolve()):
            raise RuntimeError(f"slicer.{name} was loaded from {origin}, not from Slicer 5.10's framework")
    slicer.app = _makeApplicationClass(qt)()
    slicer.modules = types.SimpleNamespace()
    slicer.qSlicerScriptedLoadableModule = _ModuleRepresentation
    _installed = slicer.app
    return slicer.app


def attachScene(appLikeScene):
    """Called by the folder's ``app`` fixture: the stand-in application uses the test's scene, and
    ``slicer.modules.volumes.logic()`` is a real vtkSlicerVolumesLogic on it."""
    if _installed is None:
        return
    import slicer

    import qt_standins

    qt_standins.eventLoop.__init__()  # no timer or recorded interval of an earlier test
    _installed.startupCompleted.disconnect()  # no module loaded by an earlier test is told of start-up
    _installed.setLayoutLogic(appLikeScene.layoutLogic if appLikeScene is not None else None)
    _installed.processEventsHook = None
    _installed.testing = True
    previous = getattr(slicer.modules, "volumes", None)
    if previous is not None:
        previous.logic().SetMRMLScene(None)
        del slicer.modules.volumes
    if appLikeScene is not None:
        volumesLogic = slicer.vtkSlicerVolumesLogic()
        volumesLogic.SetMRMLScene(appLikeScene.scene)
        slicer.modules.volumes = types.SimpleNamespace(logic=lambda: volumesLogic)


def loadModuleFile():
    """Import ``MRISynthesis/MRISynthesis.py`` as Slicer does (module name ``MRISynthesis``) and create
    the module object; returns the Python module. Re-imported on each call (a fresh module, like
    Slicer's reload)."""
    install()
    import slicer

    moduleFolder = str(MODULE_FILE.parent)
    if moduleFolder not in sys.path:
        sys.path.insert(0, moduleFolder)
    spec = importlib.util.spec_from_file_location("MRISynthesis", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["MRISynthesis"] = module
    spec.loader.exec_module(module)
    representation = _ModuleRepresentation(MODULE_FILE)
    module.MRISynthesis(representation)  # sets the title, categories, ... on the representation
    slicer.modules.mrisynthesis = representation
    return module


def openPanel(module):
    """Create the module's panel as Slicer does when the user opens the module: the widget with a
    qSlicerScriptedLoadableModuleWidget stand-in as parent, ``setup()``, then ``enter()``."""
    import qt
    import slicer

    parent = slicer.qMRMLWidget()
    parent.setLayout(qt.QVBoxLayout())
    parent.setMRMLScene(slicer.mrmlScene)
    parent.isEntered = False
    widget = module.MRISynthesisWidget(parent)
    parent.self = lambda: widget
    widget.setup()
    slicer.modules.mrisynthesis.widget = widget
    parent.isEntered = True
    widget.enter()
    return widget
