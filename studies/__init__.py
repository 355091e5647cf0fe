"""Research studies behind ``docs/results.md`` and the model cards (not part of the shipped packages).

Run from the repository root as ``python -m studies.NAME``; each module's docstring gives its command:

- :mod:`studies.compare_models`: every model family and the baselines under one protocol and one
  CPU budget (:mod:`studies.comparison_protocol`: split rule, settings, methods;
  :mod:`studies.training_budget`: minutes -> steps, measured; :mod:`studies.comparison_runner`:
  split, train, evaluate, write, resumable; :mod:`studies.comparison_report` and
  :mod:`studies.comparison_figures`: ``docs/results.md`` and its PNGs);
- :mod:`studies.subject_scoring`: whole test volumes through the Synthesizer, scored per subject
  (:func:`MRISynthesisLib.metrics.score`, plus texture and speed);
- :mod:`studies.recipe_ablation`: what each part of a training recipe adds;
- :mod:`studies.same_source_benefit`: does a training subject of the same source help an unseen one;
- :mod:`studies.output_calibration`: volume-level corrections of a model's output;
- :mod:`studies.final_scoring`: chosen models against the baselines on the test subjects;
- :mod:`studies.model_card_metrics`: the numbers of ``Resources/Models/*.md``;
- :mod:`studies.cross_validation`: k-fold cross-validation of recipes over every paired subject.

They use the core's public API and the ``Training`` package; neither imports them.
"""
