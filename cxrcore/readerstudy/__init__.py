"""Reader studies: clinicians read cases blind, with and without a model, and the analysis says whether the model
helps (multi-reader multi-case ROC analysis, :mod:`cxrcore.eval.readers`).

``design`` declares the designs, scales and arms; ``store`` keeps studies, readers and every answer in SQLite;
``setup`` picks the cases and fixes the aided arm's content; ``session`` is a reader's way through a study;
``analysis`` turns the answers into the MRMC analysis, agreement and the figure of readers on the model's ROC.
"""
