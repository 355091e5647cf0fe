"""The module's Precision option: bound to a combo box, passed to the synthesizer, reported."""

import xml.etree.ElementTree as ElementTree

import pytest

pytest.importorskip("slicer")

from MRISynthesisLib.synthesis import Synthesizer  # noqa: E402
from MRISynthesisSlicer.SynthesisLogic import SynthesisLogic  # noqa: E402

from .test_slicer_extension_packaging import UI_FILE  # noqa: E402


def test_precision_is_an_advanced_combo_box():
    ui = ElementTree.parse(UI_FILE)
    advanced = next(w for w in ui.iter("widget") if w.get("name") == "advancedCollapsibleButton")
    bound = {w.findtext("property[@name='SlicerParameterName']/string"): w.get("class") for w in advanced.iter("widget")}
    assert bound.get("precision") == "QComboBox"


def test_precision_reaches_the_synthesizer_and_the_result(makeVolume, t1ToT2Checkpoint):
    calls = []

    def factory(checkpoint, device, batchSize, precision="auto"):
        calls.append(precision)
        return Synthesizer(checkpoint, device="cpu", batch_size=batchSize, precision=precision)

    logic = SynthesisLogic(createSynthesizer=factory)
    result = logic.process(makeVolume("T1"), None, str(t1ToT2Checkpoint), "t1-to-t2", device="cpu", precision="bf16")
    assert calls == ["bf16"] and result.precision == "bf16 + channels_last"
    result = logic.process(makeVolume("T1 again"), None, str(t1ToT2Checkpoint), "t1-to-t2", device="cpu")
    assert calls[-1] == "auto"
    assert result.precision == Synthesizer(t1ToT2Checkpoint, device="cpu").precision.describe()
