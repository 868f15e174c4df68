"""Multi-reader multi-case (MRMC) reader studies: ratings in, Obuchowski-Rockette-Hillis analysis, agreement and
sample size out. Imports only numpy, scipy, pandas and lower ``cxrcore`` modules.

- :mod:`.ratings`: read and validate the long CSV (reader, modality, case, truth, rating); export it again or as
  an iMRMC input file.
- :mod:`.orh`: AUROCs, their jackknife / DeLong covariance, OR variance components, RRRC / FRRC / RRFC tests and
  intervals (Hillis's ddf), and readers vs a standalone model (single-treatment "1T-RRRC").
- :mod:`.agreement`: Cohen's and Fleiss' kappa with bootstrap intervals, sensitivity / specificity, AUROC CIs.
- :mod:`.power`: power and cases needed from a pilot's OR components (Hillis, Obuchowski & Berbaum 2011).
- :mod:`.analysis`: :func:`analyze`, the one entry point, and :func:`format_report`.
"""
from .analysis import analyze, format_report
from .power import PilotComponents, cases_needed, pilot_components, power, power_table
from .ratings import ReaderStudy, read_ratings, to_imrmc, to_long_csv

__all__ = ["PilotComponents", "ReaderStudy", "analyze", "cases_needed", "format_report", "pilot_components",
           "power", "power_table", "read_ratings", "to_imrmc", "to_long_csv"]
