"""The comparison study of issue 5: every model family and the baselines, one protocol, one command.

    python -m Training.study --data ../shared/data/paired --out runs/study --minutes-per-model 3

:mod:`.protocol` (split rule, settings, the methods), :mod:`.budget` (minutes -> steps, measured),
:mod:`.baselines` (inverted intensities, intensity lookup), :mod:`.evaluate` (scores on whole test
volumes through the Synthesizer), :mod:`.figures` (PNGs), :mod:`.report` (``docs/results.md``) and
:mod:`.run` (the study: split, train, evaluate, write; resumable).
"""
